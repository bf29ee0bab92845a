//! `TrustRoots::System` reads the operating system's store, which
//! `rustls-native-certs` lets `SSL_CERT_FILE` replace: pointed at the test
//! CA, the system roots trust the proxy's certificate and the bundled ones
//! do not. The checks run in a child process that has the variable set.

use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, TransportOptions, TrustRoots};
use ameide_tests::calls;
use ameide_tests::nginx::{self, Certs, Nginx};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_roots_come_from_the_operating_systems_store() {
    let Some(bin) = nginx::binary("system_roots_come_from_the_operating_systems_store") else {
        return;
    };
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let addr = serve_tcp(server.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let proxy = Nginx::start(&bin, &certs.grpc_tls_server(addr, "", ""));
    // The store is read from the process environment: the checks run in a
    // child (this test binary again) with SSL_CERT_FILE set.
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checks_in_a_process_with_ssl_cert_file",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", certs.path("ca.pem"))
        .env("AMEIDE_TEST_TLS_PORT", proxy.port.to_string())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    assert_eq!(server.attempts().len(), 2);
}

/// Runs only as the child of the test above (it sets `AMEIDE_TEST_TLS_PORT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_in_a_process_with_ssl_cert_file() {
    let Ok(port) = std::env::var("AMEIDE_TEST_TLS_PORT") else {
        return;
    };
    let client = |roots: TrustRoots| {
        AmeideClient::builder()
            .endpoint(format!("https://localhost:{port}"))
            .timeout(Duration::from_secs(5))
            .transport_options(TransportOptions::default().with_trust_roots(roots))
            .build()
            .unwrap()
    };
    calls::read(&client(TrustRoots::System))
        .await
        .expect("the system store (SSL_CERT_FILE) trusts the test CA");
    calls::read(&client(TrustRoots::BundledAndSystem))
        .await
        .expect("bundled and system");
    let err = calls::read(&client(TrustRoots::Bundled))
        .await
        .expect_err("the bundled roots do not know the test CA");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("UnknownIssuer"), "{err}");
}
