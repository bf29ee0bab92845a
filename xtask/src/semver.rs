//! `cargo xtask semver`: the published crates' public API against a
//! baseline, with cargo-semver-checks (installed into the tools cache on
//! first use). A change that semver calls breaking fails unless the
//! workspace version says so: a major bump, or for a 0.x version a minor
//! one (cargo-semver-checks reads versions as Cargo does, leading zeros
//! ignored). The failure names each item.

use std::process::Command;

use super::{PUBLISHED, cargo_tool, run, workspace_root};

/// The cargo-semver-checks release `cargo xtask semver` runs.
pub(crate) const CARGO_SEMVER_CHECKS_VERSION: &str = "0.51.0";

/// `cargo xtask semver [--baseline REV]`.
pub(crate) fn semver(args: &[&str]) -> Result<(), String> {
    let baseline = match args {
        [] => baseline()?,
        ["--baseline", rev] => (*rev).to_owned(),
        _ => return Err("usage: cargo xtask semver [--baseline REV]".into()),
    };
    let tool = cargo_tool(
        "cargo-semver-checks",
        "cargo-semver-checks",
        CARGO_SEMVER_CHECKS_VERSION,
    )?;
    println!("semver: {} against {baseline}", PUBLISHED.join(", "));
    let mut command = Command::new(tool);
    command.args([
        "semver-checks",
        "check-release",
        "--baseline-rev",
        &baseline,
    ]);
    for krate in PUBLISHED {
        command.args(["--package", krate]);
    }
    run(
        command.current_dir(workspace_root()),
        "cargo semver-checks (a breaking change needs a version bump: see above for the items)",
    )
}

/// The latest release tag before `HEAD` (on a release commit, the release
/// before it); without one, the last commit that changed the workspace
/// version (the API was promised from there).
pub(crate) fn baseline() -> Result<String, String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))
    };
    let tag = git(&[
        "describe",
        "--tags",
        "--abbrev=0",
        "--match",
        "v[0-9]*.[0-9]*.[0-9]*",
        "HEAD^",
    ])?;
    if tag.status.success() {
        let tag = String::from_utf8_lossy(&tag.stdout).trim().to_owned();
        if !tag.is_empty() {
            return Ok(tag);
        }
    }
    let bump = git(&[
        "log",
        "-n1",
        "--format=%H",
        "-G",
        "^version = \"",
        "--",
        "Cargo.toml",
    ])?;
    let rev = String::from_utf8_lossy(&bump.stdout).trim().to_owned();
    if !bump.status.success() || rev.is_empty() {
        return Err(
            "no release tag and no commit that set the workspace version: no baseline (a shallow clone? fetch the history)"
                .into(),
        );
    }
    Ok(rev)
}
