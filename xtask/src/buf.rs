//! The `buf` CLI, installed from npm into the project-local `.cache/buf` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `@bufbuild/buf` release the lint and breaking gates run; bump deliberately.
pub const VERSION: &str = "1.75.0";

/// Path of the project-local `buf` under `root`, installing it from npm when missing.
///
/// Safe to call from several threads or processes at once (the tests of
/// `xtask/tests/breaking.rs` do, on a fresh clone): each installer runs npm in
/// a folder of its own and then renames its `node_modules` into place; the
/// first rename wins, and a loser finds the winner's `buf` and uses it. Two
/// `npm install`s into one prefix at once fail (npm exits 1 or 254).
pub fn binary(root: &Path) -> Result<PathBuf, String> {
    let cache = root.join(".cache").join("buf");
    let bin = cache.join("node_modules").join(".bin").join("buf");
    if installed(&bin) {
        return Ok(bin);
    }
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let staging = cache.join(format!(
        ".install-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
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
        .arg(&staging)
        .arg(format!("@bufbuild/buf@{VERSION}"))
        .status()
        .map_err(|e| format!("cannot run npm (Node.js is needed for the buf gate): {e}"));
    let placed = match status {
        Ok(status) if status.success() => {
            // A stale or half-written install of another version goes first.
            if !installed(&bin) {
                let _ = std::fs::remove_dir_all(cache.join("node_modules"));
            }
            // Losing this race is fine: the winner's copy is the same release.
            let _ = std::fs::rename(staging.join("node_modules"), cache.join("node_modules"));
            Ok(())
        }
        Ok(status) => Err(format!(
            "npm install @bufbuild/buf@{VERSION} failed with {status}"
        )),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&staging);
    placed?;
    // Another installer may be swapping its copy in this very moment.
    for _ in 0..50 {
        if installed(&bin) {
            return Ok(bin);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!(
        "@bufbuild/buf@{VERSION} was installed but {} does not run",
        bin.display()
    ))
}

/// Whether `bin` is the pinned release of buf.
fn installed(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == VERSION)
}
