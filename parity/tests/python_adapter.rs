//! The protocol from a second language: the thin Python adapter over plain
//! grpcio (`parity/examples/python/adapter.py`) runs the whole suite with its
//! known-failing list, which must be exact: no unexpected FAIL, no XPASS.
//! grpcio is installed into the project-local cache the interop tests use.

use std::path::PathBuf;
use std::process::Command;

#[path = "../../tests/src/peer_install.rs"]
#[allow(dead_code)]
mod peer_install;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

#[test]
fn the_thin_python_adapter_fails_exactly_its_known_failing_cases() {
    let root = root();
    let digest = &ameide_sdk::contract::BUNDLE_DIGEST["sha256:".len().."sha256:".len() + 12];
    let python = peer_install::install_python(
        &root.join(".cache/interop"),
        &root.join("ameide-proto/proto"),
        digest,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("parity-python-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let descriptors = dir.join("bundle.binpb");
    let status = Command::new(env!("CARGO_BIN_EXE_ameide-parity"))
        .arg("descriptor-set")
        .arg(&descriptors)
        .status()
        .unwrap();
    assert!(status.success());
    let example = root.join("parity/examples/python");
    let adapter = format!(
        "{} {} --descriptors {}",
        python.python.display(),
        example.join("adapter.py").display(),
        descriptors.display()
    );
    let report = dir.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ameide-parity"))
        .args(["run", "--adapter", &adapter, "--known-failing"])
        .arg(example.join("known-failing.txt"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "the thin adapter's results differ from its known-failing list:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let known = std::fs::read_to_string(example.join("known-failing.txt")).unwrap();
    let listed = known
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert!(
        stdout.contains(&format!("{listed} known failing")),
        "every listed case ran and failed: {stdout}"
    );
    // Plain grpcio has no server side: it skips the inbound cases, all of them.
    let inbound = std::fs::read_dir(root.join("parity/cases"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("\"suite\": \"inbound\""))
        })
        .count();
    assert!(inbound > 0);
    assert!(
        stdout.contains(&format!("{inbound} skipped by the adapter")),
        "the inbound cases are skipped: {stdout}"
    );
}
