//! Proves the live suite works by pointing it at a local server: the
//! harness server (`ameide-parity server`-style MockServer answering OK).

use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};

fn live_binary() -> std::path::PathBuf {
    // Integration test binaries of this package live next to each other.
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap();
    let mut candidates: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("live-") && !n.contains('.'))
        })
        .collect();
    candidates.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    candidates
        .pop()
        .expect("the live test binary is built alongside")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_suite_passes_against_a_local_server() {
    let server = MockServer::new();
    // Answers like a real endpoint across a network would: not within 1 ms.
    server.fallback(Reply::ok().after(Duration::from_millis(50)));
    let addr = serve_tcp(server.clone()).await.unwrap();
    let output = tokio::process::Command::new(live_binary())
        .env("AMEIDE_GRPC_BASE_URL", format!("http://{addr}"))
        .env("INTEGRATION_TENANT_ID", "tenant-local")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("live: 5 passed, 0 failed"), "{stdout}");
    assert!(
        server
            .attempts()
            .iter()
            .all(|a| a.header("x-tenant-id") == Some("tenant-local"))
    );
}

#[tokio::test]
async fn without_the_variables_every_check_is_reported_skipped_by_name() {
    let output = tokio::process::Command::new(live_binary())
        .env_remove("AMEIDE_GRPC_BASE_URL")
        .env_remove("INTEGRATION_TENANT_ID")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains(
            "test live::unary_call_reaches_the_endpoint_with_tenant_and_request_id ... skipped"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("live: 0 passed, 0 failed, 5 skipped"),
        "{stdout}"
    );
}
