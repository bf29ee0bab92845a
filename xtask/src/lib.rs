//! The logic behind `cargo xtask`, as a library so it can be tested on
//! temporary workspaces and git repositories.

pub mod breaking;
pub mod buf;
pub mod layering;
pub mod policy;
pub mod system;
pub mod version;

use std::path::Path;
use std::process::Command;

/// Runs `git` in `repo` and returns its trimmed stdout; an error with stderr otherwise.
pub fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
