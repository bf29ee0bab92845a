//! The `buf` CLI, installed from npm into the project-local `.cache/buf` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `@bufbuild/buf` release the lint and breaking gates run; bump deliberately.
pub const VERSION: &str = "1.75.0";

/// Path of the project-local `buf` under `root`, installing it from npm when missing.
pub fn binary(root: &Path) -> Result<PathBuf, String> {
    let cache = root.join(".cache").join("buf");
    let bin = cache.join("node_modules").join(".bin").join("buf");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VERSION);
    if installed {
        return Ok(bin);
    }
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    println!(
        "installing @bufbuild/buf@{VERSION} into {}",
        cache.display()
    );
    let status = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&cache)
        .arg(format!("@bufbuild/buf@{VERSION}"))
        .status()
        .map_err(|e| format!("cannot run npm (Node.js is needed for the buf gate): {e}"))?;
    if !status.success() {
        return Err(format!(
            "npm install @bufbuild/buf@{VERSION} failed with {status}"
        ));
    }
    Ok(bin)
}
