//! Each guardrail fires on a small temporary workspace that has the violation,
//! and stays quiet on a clean one.

use std::path::Path;

use xtask::policy::{Finding, check_locked, check_sources};

fn write(root: &Path, path: &str, text: &str) {
    let file = root.join(path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, text).unwrap();
}

/// A minimal workspace shaped like ours: ameide-proto, ameide-sdk (the only
/// crate depending on ameide-proto) and a service.
fn clean_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "Cargo.toml",
        "[workspace]\nresolver = \"3\"\nmembers = [\"ameide-proto\", \"ameide-sdk\", \"service\"]\n\n\
         [workspace.dependencies]\nameide-proto = { path = \"ameide-proto\", version = \"=0.1.0\" }\n\
         ameide-sdk = { path = \"ameide-sdk\", version = \"=0.1.0\" }\n",
    );
    for (name, deps) in [
        ("ameide-proto", ""),
        ("ameide-sdk", "ameide-proto.workspace = true\n"),
        ("service", "ameide-sdk.workspace = true\n"),
    ] {
        write(
            root,
            &format!("{name}/Cargo.toml"),
            &format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}"
            ),
        );
        write(root, &format!("{name}/src/lib.rs"), "");
    }
    write(
        root,
        "ameide-proto/build.rs",
        "fn main() { ameide_build::build_script::run(); }\n",
    );
    let status = std::process::Command::new(env!("CARGO"))
        .args(["generate-lockfile", "--offline"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    dir
}

fn only(findings: &[Finding], check: &str) -> Vec<Finding> {
    findings
        .iter()
        .filter(|f| f.check == check)
        .cloned()
        .collect()
}

#[test]
fn a_clean_workspace_passes_every_source_check() {
    let ws = clean_workspace();
    let findings = check_sources(ws.path()).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(check_locked(ws.path(), Path::new(env!("CARGO"))), None);
}

#[test]
fn a_service_depending_on_ameide_proto_is_named_with_its_line() {
    let ws = clean_workspace();
    write(
        ws.path(),
        "service/Cargo.toml",
        "[package]\nname = \"service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nameide-sdk.workspace = true\nameide-proto.workspace = true\n",
    );
    let findings = only(&check_sources(ws.path()).unwrap(), "proto-dependency");
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(findings[0].file.ends_with("service/Cargo.toml"));
    assert_eq!(findings[0].line, Some(8));
    assert!(
        findings[0]
            .to_string()
            .contains("service depends on ameide-proto"),
        "{}",
        findings[0]
    );
}

#[test]
fn a_renamed_dev_dependency_on_ameide_proto_is_caught_too() {
    let ws = clean_workspace();
    write(
        ws.path(),
        "service/Cargo.toml",
        "[package]\nname = \"service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nameide-sdk.workspace = true\n\n[dev-dependencies]\nstubs = { package = \"ameide-proto\", path = \"../ameide-proto\" }\n",
    );
    let findings = only(&check_sources(ws.path()).unwrap(), "proto-dependency");
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].line, Some(10));
}

#[test]
fn a_build_script_running_codegen_outside_ameide_proto_is_named_with_its_line() {
    let ws = clean_workspace();
    write(
        ws.path(),
        "service/build.rs",
        "fn main() {\n    // regenerate our own stubs\n    tonic_prost_build::compile_protos(\"proto/x.proto\").unwrap();\n}\n",
    );
    let findings = only(&check_sources(ws.path()).unwrap(), "build-script-codegen");
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(findings[0].file.ends_with("service/build.rs"));
    assert_eq!(findings[0].line, Some(3));

    write(
        ws.path(),
        "service/Cargo.toml",
        "[package]\nname = \"service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nameide-sdk.workspace = true\n\n[build-dependencies]\nprotox = \"0.10\"\n",
    );
    let findings = only(&check_sources(ws.path()).unwrap(), "build-script-codegen");
    assert!(
        findings
            .iter()
            .any(|f| f.file.ends_with("service/Cargo.toml") && f.line == Some(10)),
        "{findings:#?}"
    );
}

#[test]
fn patch_sections_and_git_dependencies_for_our_crates_are_named() {
    let ws = clean_workspace();
    let root_manifest = std::fs::read_to_string(ws.path().join("Cargo.toml")).unwrap();
    write(
        ws.path(),
        "Cargo.toml",
        &format!(
            "{root_manifest}\n[patch.crates-io]\nameide-sdk = {{ path = \"../elsewhere\" }}\nserde = {{ path = \"../serde\" }}\n"
        ),
    );
    write(
        ws.path(),
        "service/Cargo.toml",
        "[package]\nname = \"service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nameide-sdk = { git = \"https://example.invalid/ameide-sdk\" }\n",
    );
    let findings = only(&check_sources(ws.path()).unwrap(), "patch-or-git");
    assert_eq!(findings.len(), 2, "{findings:#?}");
    assert!(findings.iter().any(|f| {
        f.file.ends_with("Cargo.toml")
            && f.message
                .contains("[patch.crates-io] overrides our crate ameide-sdk")
    }));
    assert!(
        findings
            .iter()
            .any(|f| f.file.ends_with("service/Cargo.toml")
                && f.line == Some(7)
                && f.message.contains("from git"))
    );
}

#[test]
fn a_missing_or_stale_lockfile_is_named() {
    let ws = clean_workspace();
    write(
        ws.path(),
        "service/Cargo.toml",
        "[package]\nname = \"service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nameide-sdk.workspace = true\nameide-proto-local = { package = \"ameide-proto\", path = \"../ameide-proto\", optional = true }\n",
    );
    // ameide-proto was already in the lock; a new member changes it.
    write(
        ws.path(),
        "extra/Cargo.toml",
        "[package]\nname = \"extra\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    write(ws.path(), "extra/src/lib.rs", "");
    let root_manifest = std::fs::read_to_string(ws.path().join("Cargo.toml")).unwrap();
    write(
        ws.path(),
        "Cargo.toml",
        &root_manifest.replace("\"service\"]", "\"service\", \"extra\"]"),
    );
    let stale =
        check_locked(ws.path(), Path::new(env!("CARGO"))).expect("a stale lockfile is a finding");
    assert_eq!(stale.check, "lockfile");
    assert!(stale.message.contains("out of date"), "{stale}");

    std::fs::remove_file(ws.path().join("Cargo.lock")).unwrap();
    let findings = only(&check_sources(ws.path()).unwrap(), "lockfile");
    assert_eq!(findings.len(), 1);
    assert!(findings[0].message.contains("missing"));
}

#[test]
fn the_real_workspace_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let findings = check_sources(root).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}

/// A copy of the real proto crate (bundle, roster, manifest, buf.yaml).
fn proto_copy() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("ameide-proto");
    let dir = tempfile::tempdir().unwrap();
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
    copy(&src.join("proto"), &dir.path().join("proto"));
    copy(&src.join("manifest"), &dir.path().join("manifest"));
    std::fs::copy(src.join("buf.yaml"), dir.path().join("buf.yaml")).unwrap();
    dir
}

#[test]
fn a_stale_manifest_is_named() {
    let copy = proto_copy();
    assert!(xtask::policy::check_manifest_fresh(copy.path()).is_empty());
    let graph = copy
        .path()
        .join("proto/ameide_core_proto/graph/v1/graph.proto");
    let text = std::fs::read_to_string(&graph).unwrap();
    std::fs::write(
        &graph,
        text.replacen("service GraphService {\n", "service GraphService {\n  // Ping is new.\n  rpc Ping(PingRequest) returns (PingResponse);\n", 1)
            + "\n// PingRequest is new.\nmessage PingRequest {\n  // Who.\n  ameide_core_proto.common.v1.RequestContext context = 1;\n}\n\n// PingResponse is new.\nmessage PingResponse {}\n",
    )
    .unwrap();
    let findings = xtask::policy::check_manifest_fresh(copy.path());
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0].check, "manifest-fresh");
    assert!(findings[0].message.contains("\"Ping\""), "{}", findings[0]);
}

#[test]
fn a_lint_finding_in_the_bundle_is_named_with_bufs_location() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let buf = xtask::buf::binary(root).expect("buf from npm");
    let copy = proto_copy();
    assert_eq!(xtask::policy::check_bundle_lint(copy.path(), &buf), None);
    let file = copy
        .path()
        .join("proto/ameide_core_proto/extensions/v1/extensions.proto");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("int64 fuel_limit = 6;", "int64 FuelLimit = 6;"),
    )
    .unwrap();
    let finding = xtask::policy::check_bundle_lint(copy.path(), &buf).expect("a lint finding");
    assert_eq!(finding.check, "bundle-lint");
    assert!(
        finding
            .message
            .contains("extensions/v1/extensions.proto:26:"),
        "{finding}"
    );
    assert!(finding.message.contains("FuelLimit"), "{finding}");
}
