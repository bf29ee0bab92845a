//! `cargo xtask`: the project's automation, one subcommand per job.
//!
//! | Command | What it does |
//! |---|---|
//! | `manifest` | regenerates `ameide-proto/manifest/ameide-client.json` from the bundle and roster |
//! | `manifest --check` | fails with a diff when the committed manifest is stale, or the roster and bundle disagree |
//! | `buf-lint` | runs `buf lint` on the bundle (installs `@bufbuild/buf` from npm into `.cache/buf` on first use) |
//! | `bench [--smoke] [args…]` | unary throughput of raw tonic vs `AmeideClient` (release build); `--smoke` runs a short debug pass that proves the harness works |
//! | `ci` | everything CI runs: fmt, clippy, tests, manifest check, buf lint, bench smoke |

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use ameide_build::Inputs;

/// The `@bufbuild/buf` release the lint gate runs; bump deliberately.
const BUF_VERSION: &str = "1.75.0";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["manifest"] => manifest(false),
        ["manifest", "--check"] => manifest(true),
        ["buf-lint"] => buf_lint(),
        ["ci"] => ci(),
        ["bench", rest @ ..] => bench(rest),
        [] | ["help"] | ["--help"] | ["-h"] => {
            print_help();
            Ok(())
        }
        other => Err(format!(
            "unknown arguments {other:?}; run `cargo xtask help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!(
        "cargo xtask <command>\n\n\
         manifest            regenerate ameide-proto/manifest/ameide-client.json\n\
         manifest --check    fail with a diff when the manifest is stale or unwired\n\
         buf-lint            buf lint the proto bundle (installs buf from npm into .cache/buf)\n\
         bench [--smoke] [args]  unary calls/s: raw tonic vs AmeideClient (release build; see bench/)\n\
         ci                  fmt, clippy, tests, manifest --check, buf-lint, bench --smoke"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_owned()
}

fn proto_inputs() -> Result<Inputs, String> {
    Inputs::load(&workspace_root().join("ameide-proto")).map_err(|e| e.to_string())
}

fn manifest(check: bool) -> Result<(), String> {
    let inputs = proto_inputs()?;
    inputs.check_wiring().map_err(|e| e.to_string())?;
    if check {
        inputs.check_manifest()?;
        println!("manifest is up to date ({})", inputs.bundle.digest());
        return Ok(());
    }
    let path = inputs.manifest_path();
    let rendered = inputs.render_manifest();
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == rendered);
    if !unchanged {
        std::fs::write(&path, rendered)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "{} {} ({} services, {} methods)",
        if unchanged { "unchanged" } else { "wrote" },
        path.display(),
        inputs.roster.entries().len(),
        inputs
            .services
            .iter()
            .map(|s| s.methods.len())
            .sum::<usize>()
    );
    Ok(())
}

/// Path of the project-local `buf` binary, installing it from npm when missing.
fn buf_binary() -> Result<PathBuf, String> {
    let cache = workspace_root().join(".cache").join("buf");
    let bin = cache.join("node_modules").join(".bin").join("buf");
    let installed = Command::new(&bin).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == BUF_VERSION
    });
    if !installed {
        std::fs::create_dir_all(&cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
        println!(
            "installing @bufbuild/buf@{BUF_VERSION} into {}",
            cache.display()
        );
        run(
            Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&cache)
                .arg(format!("@bufbuild/buf@{BUF_VERSION}")),
            "npm install @bufbuild/buf",
        )?;
    }
    Ok(bin)
}

fn buf_lint() -> Result<(), String> {
    let buf = buf_binary()?;
    run(
        Command::new(buf)
            .arg("lint")
            .current_dir(workspace_root().join("ameide-proto")),
        "buf lint",
    )?;
    println!("buf lint: no findings");
    Ok(())
}

/// Builds and runs `ameide-bench run`. Reports, never gates: timing is not
/// asserted anywhere. `--smoke` uses a debug build and a tiny duration.
fn bench(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    let smoke = args.first() == Some(&"--smoke");
    let profile = if smoke { "debug" } else { "release" };
    let mut build = cargo();
    build.args(["build", "--locked"]).current_dir(&root);
    if smoke {
        // The whole workspace, so features (and artifacts) match the test
        // build CI has just made: no rebuild.
        build.arg("--workspace");
    } else {
        build.args(["--release", "-p", "ameide-bench"]);
    }
    run(&mut build, "cargo build (ameide-bench)")?;
    let binary = root.join("target").join(profile).join("ameide-bench");
    let mut command = Command::new(binary);
    command.arg("run").current_dir(&root);
    if smoke {
        command.args([
            "--duration-ms",
            "100",
            "--rounds",
            "1",
            "--out",
            "target/bench-smoke",
        ]);
    } else {
        command.args(args);
    }
    run(&mut command, "ameide-bench run")
}

/// A `cargo` command without the package variables `cargo run` set for xtask
/// itself: leaked into a nested build they change build-script fingerprints
/// and force a full rebuild.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            command.env_remove(name.as_ref());
        }
    }
    command
}

fn ci() -> Result<(), String> {
    let root = workspace_root();
    type Step = (&'static str, Box<dyn Fn() -> Result<(), String>>);
    let steps: Vec<Step> = vec![
        (
            "fmt",
            Box::new(|| {
                run(
                    cargo()
                        .args(["fmt", "--all", "--", "--check"])
                        .current_dir(workspace_root()),
                    "cargo fmt --check",
                )
            }),
        ),
        (
            "clippy",
            Box::new(|| {
                run(
                    cargo()
                        .args([
                            "clippy",
                            "--workspace",
                            "--all-targets",
                            "--locked",
                            "--",
                            "-D",
                            "warnings",
                        ])
                        .current_dir(workspace_root()),
                    "cargo clippy",
                )
            }),
        ),
        (
            "test",
            Box::new(|| {
                run(
                    cargo()
                        .args(["test", "--workspace", "--locked"])
                        .current_dir(workspace_root()),
                    "cargo test",
                )
            }),
        ),
        ("manifest --check", Box::new(|| manifest(true))),
        ("buf-lint", Box::new(buf_lint)),
        ("bench --smoke", Box::new(|| bench(&["--smoke"]))),
    ];
    let started = Instant::now();
    let mut report = Vec::new();
    for (name, step) in &steps {
        println!("\n=== xtask ci: {name}");
        let t = Instant::now();
        let outcome = step();
        report.push((*name, t.elapsed(), outcome.is_ok()));
        if let Err(e) = outcome {
            print_report(&report);
            return Err(format!("step `{name}` failed: {e}"));
        }
    }
    print_report(&report);
    println!(
        "xtask ci: all {} steps passed in {:.1?} ({})",
        steps.len(),
        started.elapsed(),
        root.display()
    );
    Ok(())
}

fn print_report(report: &[(&str, std::time::Duration, bool)]) {
    println!("\n--- xtask ci summary");
    for (name, took, ok) in report {
        println!(
            "{:<18} {:>8.1?}  {}",
            name,
            took,
            if *ok { "ok" } else { "FAILED" }
        );
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} exited with {status}"))
    }
}
