//! Proto edits break at once: an edited copy of the bundle fails the wiring and
//! drift checks, and a broken bundle is reported by file and line.

use ameide_build::{Inputs, LoadError, build_script};
use ameide_tests::copy_proto_crate;

const NEW_SERVICE_FILE: &str = "proto/ameide_core_proto/billing/v1/billing.proto";
const NEW_SERVICE: &str = "syntax = \"proto3\";

package ameide_core_proto.billing.v1;

import \"ameide_core_proto/common/v1/request_context.proto\";

// BillingService is new and has no roster key yet.
service BillingService {
  // GetInvoice returns one invoice.
  rpc GetInvoice(GetInvoiceRequest) returns (GetInvoiceResponse) {
    option idempotency_level = NO_SIDE_EFFECTS;
  }
}

// GetInvoiceRequest is the request of BillingService.GetInvoice.
message GetInvoiceRequest {
  // Who the call acts for.
  ameide_core_proto.common.v1.RequestContext context = 1;
  // The invoice.
  string invoice_id = 2;
}

// GetInvoiceResponse is the response of BillingService.GetInvoice.
message GetInvoiceResponse {
  // Amount in cents.
  int64 amount_cents = 1;
}
";

fn add_method_to_graph(dir: &std::path::Path) {
    let path = dir.join("proto/ameide_core_proto/graph/v1/graph.proto");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "service GraphService {\n",
        "service GraphService {\n  // ArchiveRepository is new.\n  rpc ArchiveRepository(ArchiveRepositoryRequest) returns (ArchiveRepositoryResponse);\n",
        1,
    ) + "\n// ArchiveRepositoryRequest is new.\nmessage ArchiveRepositoryRequest {\n  // Who.\n  ameide_core_proto.common.v1.RequestContext context = 1;\n}\n\n// ArchiveRepositoryResponse is new.\nmessage ArchiveRepositoryResponse {}\n";
    std::fs::write(path, text).unwrap();
}

#[test]
fn unchanged_copy_passes_every_check_and_generates() {
    let dir = copy_proto_crate();
    let inputs = Inputs::load(dir.path()).unwrap();
    inputs.check_wiring().unwrap();
    inputs.check_manifest().unwrap();
    let out = tempfile::tempdir().unwrap();
    build_script::generate(dir.path(), out.path()).unwrap();
    for file in [
        "_includes.rs",
        "method_table.rs",
        "contract.rs",
        "descriptor_set.bin",
        "ameide_core_proto.graph.v1.rs",
    ] {
        assert!(out.path().join(file).exists(), "{file} not generated");
    }
}

#[test]
fn new_service_and_method_fail_the_wiring_and_drift_checks() {
    let dir = copy_proto_crate();
    std::fs::create_dir_all(dir.path().join("proto/ameide_core_proto/billing/v1")).unwrap();
    std::fs::write(dir.path().join(NEW_SERVICE_FILE), NEW_SERVICE).unwrap();
    add_method_to_graph(dir.path());

    let inputs = Inputs::load(dir.path()).unwrap();

    let wiring = inputs.check_wiring().unwrap_err().to_string();
    assert!(
        wiring.contains("ameide_core_proto.billing.v1.BillingService"),
        "{wiring}"
    );
    assert!(wiring.contains("billing/v1/billing.proto"), "{wiring}");
    assert!(wiring.contains("not wired"), "{wiring}");

    let drift = inputs.check_manifest().unwrap_err();
    assert!(drift.contains("stale"), "{drift}");
    assert!(
        drift.contains("+          \"name\": \"ArchiveRepository\""),
        "{drift}"
    );
    assert!(drift.contains("cargo xtask manifest"), "{drift}");

    // The build script refuses too, with the same message, before generating anything.
    let out = tempfile::tempdir().unwrap();
    let build = build_script::generate(dir.path(), out.path()).unwrap_err();
    assert!(
        build.contains("ameide_core_proto.billing.v1.BillingService"),
        "{build}"
    );
    assert!(!out.path().join("_includes.rs").exists());
}

#[test]
fn roster_key_for_a_missing_service_fails_the_wiring_check() {
    let dir = copy_proto_crate();
    std::fs::remove_file(
        dir.path()
            .join("proto/ameide_core_proto/extensions/v1/extensions.proto"),
    )
    .unwrap();
    let err = Inputs::load(dir.path())
        .unwrap()
        .check_wiring()
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"extensions\""), "{err}");
    assert!(err.contains("not in the bundle"), "{err}");
}

#[test]
fn broken_bundle_reports_file_and_line() {
    let dir = copy_proto_crate();
    let path = dir
        .path()
        .join("proto/ameide_core_proto/threads/v1/threads.proto");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let broken = lines
        .iter()
        .position(|l| l.contains("string title = 2;"))
        .unwrap();
    // The parser notices the missing ';' at the next token: the next line holding code.
    let next_code_line = (broken + 1..lines.len())
        .find(|&i| !lines[i].trim().is_empty() && !lines[i].trim_start().starts_with("//"))
        .unwrap()
        + 1;
    std::fs::write(&path, text.replace("string title = 2;", "string title = 2")).unwrap();
    let Err(LoadError::Bundle(err)) = Inputs::load(dir.path()) else {
        panic!("a syntax error must fail the load");
    };
    assert_eq!(
        err.file.as_deref(),
        Some("ameide_core_proto/threads/v1/threads.proto"),
        "{err}"
    );
    assert_eq!(err.line, Some(next_code_line), "{err}");
    assert!(err.message.contains("expected ';'"), "{err}");
}

#[test]
fn missing_import_reports_the_importing_file_and_line() {
    let dir = copy_proto_crate();
    let path = dir
        .path()
        .join("proto/ameide_core_proto/extensions/v1/extensions.proto");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("common/v1/request_context.proto", "common/v1/nope.proto"),
    )
    .unwrap();
    let Err(LoadError::Bundle(err)) = Inputs::load(dir.path()) else {
        panic!("a missing import must fail the load");
    };
    let shown = err.to_string();
    assert!(
        shown.starts_with("ameide_core_proto/extensions/v1/extensions.proto:5:"),
        "{shown}"
    );
    assert!(shown.contains("nope.proto"), "{shown}");
}
