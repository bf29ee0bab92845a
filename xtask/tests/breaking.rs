//! `buf breaking` against the previous commit, on a temporary git repository
//! holding a copy of the bundle.

use std::path::Path;
use std::process::Command;

use xtask::breaking::{Outcome, check};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A repository whose first commit holds the real bundle.
fn repo() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("ameide-proto");
    let dir = tempfile::tempdir().unwrap();
    copy(&src.join("proto"), &dir.path().join("ameide-proto/proto"));
    std::fs::copy(
        src.join("buf.yaml"),
        dir.path().join("ameide-proto/buf.yaml"),
    )
    .unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "bundle"]);
    dir
}

const EXTENSIONS: &str = "ameide-proto/proto/ameide_core_proto/extensions/v1/extensions.proto";

fn drop_field(root: &Path) {
    let file = root.join(EXTENSIONS);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("  int64 fuel_limit = 6;\n", "")).unwrap();
}

fn buf() -> std::path::PathBuf {
    xtask::buf::binary(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap())
        .expect("buf from npm")
}

#[test]
fn no_previous_commit_means_nothing_to_compare() {
    let r = repo();
    assert!(matches!(
        check(r.path(), "HEAD~1", &buf()).unwrap(),
        Outcome::NoBaseline(_)
    ));
}

#[test]
fn an_additive_change_is_clean() {
    let r = repo();
    let file = r.path().join(EXTENSIONS);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace(
            "  int64 fuel_limit = 6;\n",
            "  int64 fuel_limit = 6;\n  // A new field.\n  string trace_label = 7;\n",
        ),
    )
    .unwrap();
    git(r.path(), &["commit", "-q", "-am", "add a field"]);
    assert_eq!(check(r.path(), "HEAD~1", &buf()).unwrap(), Outcome::Clean);
}

#[test]
fn deleting_a_field_in_v1_fails_with_bufs_finding() {
    let r = repo();
    drop_field(r.path());
    git(r.path(), &["commit", "-q", "-am", "drop a field"]);
    match check(r.path(), "HEAD~1", &buf()).unwrap() {
        Outcome::Breaking(findings) => {
            assert!(
                findings.contains("extensions/v1/extensions.proto"),
                "{findings}"
            );
            assert!(findings.contains("fuel_limit"), "{findings}");
        }
        other => panic!("expected a breaking finding, got {other:?}"),
    }
}

#[test]
fn the_same_change_with_a_new_major_version_package_is_accepted() {
    let r = repo();
    let v1 = std::fs::read_to_string(r.path().join(EXTENSIONS)).unwrap();
    let v2 = r
        .path()
        .join("ameide-proto/proto/ameide_core_proto/extensions/v2/extensions.proto");
    std::fs::create_dir_all(v2.parent().unwrap()).unwrap();
    std::fs::write(
        &v2,
        v1.replace(
            "ameide_core_proto.extensions.v1",
            "ameide_core_proto.extensions.v2",
        ),
    )
    .unwrap();
    drop_field(r.path());
    git(r.path(), &["add", "-A"]);
    git(r.path(), &["commit", "-q", "-m", "v2, and v1 changed"]);
    assert!(matches!(
        check(r.path(), "HEAD~1", &buf()).unwrap(),
        Outcome::CoveredByMajorBump(_)
    ));
}
