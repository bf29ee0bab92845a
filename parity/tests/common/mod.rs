//! What the parity runner's own tests share: running `ameide-parity` and
//! reading the JSON report it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A report path of this test process's own, named by `tag`.
pub fn report_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("parity-report-{}-{tag}.json", std::process::id()))
}

/// The runner, with `--report <report>` already given.
pub fn runner(report: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ameide-parity"));
    command.arg("run").arg("--report").arg(report);
    command
}

/// The report's rows; panics with the runner's output when it wrote none.
/// The file is removed.
pub fn read_report(report: &Path, output: &Output) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(report);
    serde_json::from_str(&text).unwrap()
}
