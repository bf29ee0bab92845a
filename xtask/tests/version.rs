//! Versions from tags, on a temporary git repository with controlled commit times.

use std::path::Path;
use std::process::Command;

use xtask::version::{Computed, compute};

fn git(dir: &Path, args: &[&str], time: &str) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_DATE", time)
        .env("GIT_COMMITTER_DATE", time)
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

fn commit(dir: &Path, time: &str) {
    git(dir, &["commit", "--allow-empty", "-q", "-m", "c"], time);
}

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(
        dir.path(),
        &["init", "-q", "-b", "main"],
        "2026-01-01T00:00:00Z",
    );
    dir
}

fn sha7(dir: &Path) -> String {
    let out = Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn no_tag_gives_a_dev_build_of_0_0_1() {
    let r = repo();
    commit(r.path(), "2026-03-04T05:06:07Z");
    let v = compute(r.path()).unwrap();
    assert_eq!(
        v.version(),
        format!("0.0.1-dev.20260304050607+g{}", sha7(r.path()))
    );
}

#[test]
fn a_tagged_head_is_a_release() {
    let r = repo();
    commit(r.path(), "2026-03-04T05:06:07Z");
    git(r.path(), &["tag", "v1.4.2"], "2026-03-04T05:06:07Z");
    assert_eq!(
        compute(r.path()).unwrap(),
        Computed::Release(xtask::version::Release {
            major: 1,
            minor: 4,
            patch: 2
        })
    );
}

#[test]
fn commits_after_a_tag_are_dev_builds_of_the_next_patch_in_utc() {
    let r = repo();
    commit(r.path(), "2026-03-04T05:06:07Z");
    git(r.path(), &["tag", "v1.4.2"], "2026-03-04T05:06:07Z");
    commit(r.path(), "2026-03-05T23:30:00+02:00");
    let v = compute(r.path()).unwrap();
    assert_eq!(
        v.version(),
        format!("1.4.3-dev.20260305213000+g{}", sha7(r.path()))
    );
    assert!(!v.is_release());
}

#[test]
fn the_latest_tag_wins_and_other_tags_are_ignored() {
    let r = repo();
    commit(r.path(), "2026-03-01T00:00:00Z");
    git(r.path(), &["tag", "v1.9.0"], "2026-03-01T00:00:00Z");
    commit(r.path(), "2026-03-02T00:00:00Z");
    git(r.path(), &["tag", "v1.10.0"], "2026-03-02T00:00:00Z");
    git(r.path(), &["tag", "nightly"], "2026-03-02T00:00:00Z");
    git(r.path(), &["tag", "v2.0.0-rc1"], "2026-03-02T00:00:00Z");
    commit(r.path(), "2026-03-03T00:00:00Z");
    assert!(
        compute(r.path())
            .unwrap()
            .version()
            .starts_with("1.10.1-dev.20260303000000+g")
    );
}

#[test]
fn releasing_a_tag_older_than_the_latest_is_refused() {
    let r = repo();
    commit(r.path(), "2026-03-01T00:00:00Z");
    git(r.path(), &["tag", "v1.0.0"], "2026-03-01T00:00:00Z");
    git(r.path(), &["branch", "old"], "2026-03-01T00:00:00Z");
    commit(r.path(), "2026-03-02T00:00:00Z");
    git(r.path(), &["tag", "v1.1.0"], "2026-03-02T00:00:00Z");
    git(r.path(), &["checkout", "-q", "old"], "2026-03-02T00:00:00Z");
    commit(r.path(), "2026-03-03T00:00:00Z");
    git(r.path(), &["tag", "v1.0.1"], "2026-03-03T00:00:00Z");
    let err = compute(r.path()).unwrap_err();
    assert!(
        err.contains("refusing to release v1.0.1") && err.contains("v1.1.0"),
        "{err}"
    );
}

#[test]
fn a_dev_build_sorts_after_its_release_and_before_the_next() {
    // Semver: 1.4.2 < 1.4.3-dev.… < 1.4.3 (pre-release sorts before its release).
    let r = repo();
    commit(r.path(), "2026-03-04T05:06:07Z");
    git(r.path(), &["tag", "v1.4.2"], "2026-03-04T05:06:07Z");
    commit(r.path(), "2026-03-05T00:00:00Z");
    let dev = compute(r.path()).unwrap().version();
    assert!(dev.starts_with("1.4.3-"), "{dev}");
}
