//! `buf breaking` of the bundle against the bundle at an earlier commit,
//! taken from local git history (offline).
//!
//! A breaking finding in package `<domain>.vN` is accepted when the change
//! also adds `<domain>.v(N+1)`: a new major version is the sanctioned way to
//! break an API; changing `vN` in place is not.

use std::path::Path;
use std::process::Command;

use crate::git;

/// The bundle inside the workspace.
const BUNDLE: &str = "ameide-proto/proto";

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No commit, or no bundle at it (why).
    NoBaseline(String),
    /// Nothing breaking.
    Clean,
    /// Breaking findings, each in a package whose next major version is new.
    CoveredByMajorBump(String),
    /// Breaking findings (buf's lines).
    Breaking(String),
}

/// `ameide-proto/proto/ameide_core_proto/<domain>/vN/x.proto` → `ameide_core_proto/<domain>/vN`.
pub fn version_dir(path: &str) -> Option<String> {
    let rest = path.strip_prefix("ameide-proto/proto/")?;
    let dir = rest.rsplit_once('/')?.0;
    let last = dir.rsplit('/').next()?;
    (last.len() > 1 && last.starts_with('v') && last[1..].bytes().all(|b| b.is_ascii_digit()))
        .then(|| dir.to_owned())
}

/// Compares the bundle in `root` with the bundle at `rev`.
pub fn check(root: &Path, rev: &str, buf: &Path) -> Result<Outcome, String> {
    if git(
        root,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .is_err()
    {
        return Ok(Outcome::NoBaseline(format!(
            "no commit {rev} in this clone"
        )));
    }
    let listed = git(
        root,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            rev,
            BUNDLE,
            "ameide-proto/buf.yaml",
        ],
    )?;
    if !listed.lines().any(|l| l.ends_with(".proto")) {
        return Ok(Outcome::NoBaseline(format!("{rev} has no bundle")));
    }
    let against = tempdir_for(rev)?;
    for path in listed.lines() {
        let content = Command::new("git")
            .args(["show", &format!("{rev}:{path}")])
            .current_dir(root)
            .output()
            .map_err(|e| format!("cannot run git show: {e}"))?;
        if !content.status.success() {
            return Err(format!("git show {rev}:{path} failed"));
        }
        let target = against.join(path);
        std::fs::create_dir_all(target.parent().expect("a file path has a parent"))
            .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
        std::fs::write(&target, content.stdout)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    let output = Command::new(buf)
        .arg("breaking")
        .arg("ameide-proto")
        .arg("--against")
        .arg(against.join("ameide-proto"))
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run buf breaking: {e}"));
    let _ = std::fs::remove_dir_all(&against);
    let output = output?;
    if output.status.success() {
        return Ok(Outcome::Clean);
    }
    let findings = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let previous: Vec<String> = listed.lines().filter_map(version_dir).collect();
    let current: Vec<String> = ameide_build::Bundle::compile(&root.join(BUNDLE))
        .map_err(|e| e.to_string())?
        .files()
        .iter()
        .filter_map(|f| version_dir(&format!("{BUNDLE}/{f}")))
        .collect();
    // buf names files from the workspace root: ameide-proto/proto/….
    let covered = |line: &str| {
        let Some(dir) = version_dir(line.split(':').next().unwrap_or_default()) else {
            return false;
        };
        let Some((domain, major)) = dir
            .rsplit_once("/v")
            .and_then(|(d, v)| Some((d, v.parse::<u64>().ok()?)))
        else {
            return false;
        };
        let next = format!("{domain}/v{}", major + 1);
        current.contains(&next) && !previous.contains(&next)
    };
    let lines: Vec<&str> = findings.lines().filter(|l| !l.trim().is_empty()).collect();
    if !lines.is_empty() && lines.iter().all(|l| covered(l)) {
        Ok(Outcome::CoveredByMajorBump(findings))
    } else {
        Ok(Outcome::Breaking(findings))
    }
}

fn tempdir_for(rev: &str) -> Result<std::path::PathBuf, String> {
    let safe: String = rev
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "ameide-buf-against-{}-{safe}-{}",
        std::process::id(),
        fastid()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn fastid() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
