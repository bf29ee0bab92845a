//! The committed manifest, the roster, the bundle and the generated tables agree.

use ameide_build::Inputs;
use ameide_sdk::methods::{METHODS, ROSTER};
use ameide_tests::proto_crate_dir;
use serde_json::Value;

fn manifest() -> Value {
    let text =
        std::fs::read_to_string(proto_crate_dir().join(ameide_build::MANIFEST_PATH)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn committed_manifest_matches_the_bundle() {
    let inputs = Inputs::load(&proto_crate_dir()).unwrap();
    if let Err(diff) = inputs.check_manifest() {
        panic!("{diff}");
    }
}

#[test]
fn every_bundle_service_has_a_roster_key_and_every_key_names_a_service() {
    let inputs = Inputs::load(&proto_crate_dir()).unwrap();
    if let Err(err) = inputs.check_wiring() {
        panic!("{err}");
    }
    assert_eq!(inputs.services.len(), inputs.roster.entries().len());
}

#[test]
fn manifest_sections_come_in_contract_order() {
    let keys: Vec<String> = manifest().as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "schema",
            "bundle_digest",
            "defaults",
            "metadata",
            "layers",
            "services"
        ]
    );
    assert_eq!(manifest()["schema"], "ameide-client-manifest/v1");
    assert_eq!(
        manifest()["defaults"]["hedging"]["max_attempts_limit"],
        ameide_sdk::layers::retry::MAX_HEDGED_ATTEMPTS
    );
    assert_eq!(
        manifest()["bundle_digest"],
        ameide_sdk::contract::BUNDLE_DIGEST
    );
}

#[test]
fn generated_roster_and_method_table_match_the_manifest() {
    let manifest = manifest();
    let services = manifest["services"].as_object().unwrap();
    let roster_keys: Vec<&str> = ROSTER.iter().map(|r| r.key).collect();
    let manifest_keys: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(roster_keys, manifest_keys);

    let mut manifest_methods = 0;
    for (key, service) in services {
        let name = service["service"].as_str().unwrap();
        for method in service["methods"].as_array().unwrap() {
            manifest_methods += 1;
            let path = format!("/{name}/{}", method["name"].as_str().unwrap());
            let info = ameide_sdk::methods::method(&path)
                .unwrap_or_else(|| panic!("{path} is in the manifest but not in the method table"));
            assert_eq!(info.roster_key, key);
            let kind = match info.kind {
                ameide_sdk::methods::StreamingKind::Unary => "unary",
                ameide_sdk::methods::StreamingKind::ServerStreaming => "server_streaming",
                ameide_sdk::methods::StreamingKind::ClientStreaming => "client_streaming",
                ameide_sdk::methods::StreamingKind::BidiStreaming => "bidi_streaming",
            };
            assert_eq!(method["kind"], kind, "{path}");
            // The manifest's hedging eligibility is what the SDK enforces.
            let accepted = ameide_sdk::layers::RetryLayer::new(Default::default())
                .unwrap()
                .with_method_hedging(
                    &path,
                    ameide_sdk::layers::HedgingPolicy::new(2, std::time::Duration::ZERO),
                )
                .is_ok();
            assert_eq!(method["hedgeable"], accepted, "{path}");
        }
    }
    assert_eq!(manifest_methods, METHODS.len());
}

#[test]
fn contract_roster_is_complete() {
    // The roster of contract §2, by key and service: a drift here is a contract change.
    let expected = [
        ("agents", "ameide_core_proto.agents.v1.AgentsService", 8),
        (
            "agentsRuntime",
            "ameide_core_proto.agents_runtime.v1.AgentsRuntimeService",
            3,
        ),
        ("graph", "ameide_core_proto.graph.v1.GraphService", 22),
        (
            "inference",
            "ameide_core_proto.inference.v1.InferenceService",
            2,
        ),
        (
            "governance",
            "ameide_core_proto.governance.v1.GovernanceService",
            8,
        ),
        (
            "platform.organizations",
            "ameide_core_proto.platform.v1.OrganizationService",
            5,
        ),
        (
            "platform.organizationRoles",
            "ameide_core_proto.platform.v1.OrganizationRoleService",
            4,
        ),
        (
            "platform.teams",
            "ameide_core_proto.platform.v1.TeamService",
            5,
        ),
        (
            "platform.users",
            "ameide_core_proto.platform.v1.UserService",
            3,
        ),
        (
            "platform.invitations",
            "ameide_core_proto.platform.v1.InvitationService",
            4,
        ),
        (
            "platform.tenants",
            "ameide_core_proto.platform.v1.TenantService",
            3,
        ),
        (
            "transformation",
            "ameide_core_proto.transformation.v1.TransformationService",
            5,
        ),
        ("threads", "ameide_core_proto.threads.v1.ThreadsService", 5),
        (
            "workflows",
            "ameide_core_proto.workflows_runtime.v1.WorkflowService",
            15,
        ),
        (
            "extensions",
            "ameide_core_proto.extensions.v1.WasmExtensionRuntimeService",
            1,
        ),
    ];
    let actual: Vec<(&str, &str, usize)> = ROSTER
        .iter()
        .map(|r| {
            (
                r.key,
                r.service,
                METHODS.iter().filter(|m| m.service == r.service).count(),
            )
        })
        .collect();
    assert_eq!(actual, expected);
}
