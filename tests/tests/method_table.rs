//! The run-time method table carries the right kind and idempotency.

use ameide_sdk::methods::{Idempotency, METHODS, StreamingKind, method};

fn info(path: &str) -> (StreamingKind, Idempotency) {
    let m = method(path).unwrap_or_else(|| panic!("{path} missing from the method table"));
    (m.kind, m.idempotency)
}

#[test]
fn sample_methods_have_the_right_kind_and_idempotency() {
    use Idempotency::*;
    use StreamingKind::*;
    let cases = [
        (
            "/ameide_core_proto.inference.v1.InferenceService/Generate",
            (ServerStreaming, Unknown),
        ),
        (
            "/ameide_core_proto.threads.v1.ThreadsService/SendMessage",
            (ServerStreaming, Unknown),
        ),
        (
            "/ameide_core_proto.agents.v1.AgentsService/StreamCatalog",
            (ServerStreaming, Unknown),
        ),
        (
            "/ameide_core_proto.agents_runtime.v1.AgentsRuntimeService/Stream",
            (ServerStreaming, Unknown),
        ),
        (
            "/ameide_core_proto.graph.v1.GraphService/GetElement",
            (Unary, NoSideEffects),
        ),
        (
            "/ameide_core_proto.graph.v1.GraphService/SearchNodes",
            (Unary, NoSideEffects),
        ),
        (
            "/ameide_core_proto.graph.v1.GraphService/UpdateElement",
            (Unary, Idempotent),
        ),
        (
            "/ameide_core_proto.graph.v1.GraphService/DeleteRelationship",
            (Unary, Idempotent),
        ),
        (
            "/ameide_core_proto.graph.v1.GraphService/CreateElement",
            (Unary, Unknown),
        ),
        (
            "/ameide_core_proto.workflows_runtime.v1.WorkflowService/DescribeWorkflowRun",
            (Unary, NoSideEffects),
        ),
        (
            "/ameide_core_proto.workflows_runtime.v1.WorkflowService/StartWorkflowRun",
            (Unary, Unknown),
        ),
        (
            "/ameide_core_proto.platform.v1.TeamService/DeleteTeam",
            (Unary, Idempotent),
        ),
        (
            "/ameide_core_proto.agents.v1.AgentsService/PublishAgent",
            (Unary, Unknown),
        ),
    ];
    for (path, expected) in cases {
        assert_eq!(info(path), expected, "{path}");
    }
}

#[test]
fn table_is_sorted_unique_and_every_path_resolves() {
    assert!(METHODS.windows(2).all(|w| w[0].path < w[1].path));
    for m in METHODS {
        assert_eq!(method(m.path).map(|found| found.path), Some(m.path));
        assert_eq!(m.path, format!("/{}/{}", m.service, m.method));
    }
    assert!(method("/ameide_core_proto.graph.v1.GraphService/Nope").is_none());
    assert!(method("").is_none());
}

#[test]
fn idempotency_options_follow_the_contract_naming_rule() {
    let inputs = ameide_build::Inputs::load(&ameide_tests::proto_crate_dir()).unwrap();
    let findings = ameide_build::model::idempotency_findings(&inputs.services);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

#[test]
fn every_request_starts_with_the_request_context() {
    let inputs = ameide_build::Inputs::load(&ameide_tests::proto_crate_dir()).unwrap();
    let files = &inputs.bundle.descriptors().file;
    for file in files {
        for service in &file.service {
            for m in &service.method {
                let input = m.input_type().trim_start_matches('.');
                let message = files
                    .iter()
                    .flat_map(|f| f.message_type.iter().map(move |msg| (f.package(), msg)))
                    .find(|(pkg, msg)| format!("{pkg}.{}", msg.name()) == input)
                    .map(|(_, msg)| msg)
                    .unwrap_or_else(|| panic!("{input} not found"));
                let first = message.field.iter().find(|f| f.number() == 1);
                let ok = first.is_some_and(|f| {
                    f.name() == "context"
                        && f.type_name() == ".ameide_core_proto.common.v1.RequestContext"
                });
                assert!(ok, "{input}: field 1 must be `RequestContext context = 1`");
            }
        }
    }
}
