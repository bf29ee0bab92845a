//! TLS material that rotates, against Debian's nginx requiring a client
//! certificate: files replaced while the client runs are used by its next
//! connection; a rotation caught half-way keeps the last good pair. And an
//! IP endpoint whose certificate names a host, reached with an authority
//! override.

use std::path::Path;
use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, ClientIdentity, TransportOptions};
use ameide_tests::calls;
use ameide_tests::nginx::{self, Certs, Nginx};

/// Replaces `to` with `from`'s bytes the way a secret volume does: a new
/// file renamed over the old one.
fn replace(from: &Path, to: &Path) {
    let staging = to.with_extension("new");
    std::fs::copy(from, &staging).unwrap();
    std::fs::rename(&staging, to).unwrap();
}

/// The subject nginx saw on the connection of the last call.
fn last_subject(server: &MockServer) -> String {
    server
        .attempts()
        .last()
        .and_then(|a| a.header("x-client-dn").map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_used_by_the_next_connection() {
    let Some(bin) = nginx::binary("a_rotated_client_certificate_is_used_by_the_next_connection")
    else {
        return;
    };
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let upstream = serve_tcp(server.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    certs.client("rotated", "ameide rotated client");
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    replace(&certs.path("client.pem"), &cert);
    replace(&certs.path("client.key"), &key);

    let proxy = Nginx::start(
        &bin,
        &format!(
            "server {{ listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {}; ssl_certificate_key {};\n ssl_verify_client on; ssl_client_certificate {};\n location / {{ grpc_set_header x-client-dn $ssl_client_s_dn; grpc_pass grpc://{upstream}; }} }}",
            certs.path("server.pem").display(),
            certs.path("server.key").display(),
            certs.path("ca.pem").display(),
        ),
    );
    let client = AmeideClient::builder()
        .endpoint(format!("https://localhost:{}", proxy.port))
        .transport_options(
            TransportOptions::default()
                .with_ca_certificate_file(certs.path("ca.pem"))
                .unwrap()
                .with_client_identity(ClientIdentity::from_files(&cert, &key).unwrap()),
        )
        .build()
        .unwrap();
    calls::read(&client).await.expect("mutual TLS");
    assert!(
        last_subject(&server).contains("CN=ameide test client"),
        "{}",
        last_subject(&server)
    );

    // Half a rotation: the new certificate beside the old key. The next
    // connection keeps the last good pair.
    replace(&certs.path("rotated.pem"), &cert);
    proxy.reload();
    tokio::time::sleep(Duration::from_millis(500)).await;
    calls::read(&client).await.expect("the last good pair");
    assert!(
        last_subject(&server).contains("CN=ameide test client"),
        "{}",
        last_subject(&server)
    );

    // The key follows: the next connection presents the new certificate.
    replace(&certs.path("rotated.key"), &key);
    proxy.reload();
    tokio::time::sleep(Duration::from_millis(500)).await;
    calls::read(&client).await.expect("the rotated pair");
    assert!(
        last_subject(&server).contains("CN=ameide rotated client"),
        "{}",
        last_subject(&server)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_endpoint_with_a_named_certificate_needs_the_authority_override() {
    let Some(bin) =
        nginx::binary("an_ip_endpoint_with_a_named_certificate_needs_the_authority_override")
    else {
        return;
    };
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let upstream = serve_tcp(server.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let proxy = Nginx::start(
        &bin,
        &format!(
            "server {{ listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {}; ssl_certificate_key {};\n location / {{ grpc_set_header x-authority $http_host; grpc_pass grpc://{upstream}; }} }}",
            certs.path("server.pem").display(),
            certs.path("server.key").display(),
        ),
    );
    let client = |authority: Option<String>| {
        AmeideClient::builder()
            .endpoint(format!("https://127.0.0.1:{}", proxy.port))
            .transport_options(
                TransportOptions::default()
                    .with_ca_certificate_pem(certs.read("ca.pem"))
                    .with_authority(authority),
            )
            .build()
            .unwrap()
    };
    let err = calls::read(&client(None))
        .await
        .expect_err("the certificate names localhost, not 127.0.0.1");
    assert!(err.message().contains("not valid for name"), "{err}");
    let authority = format!("localhost:{}", proxy.port);
    calls::read(&client(Some(authority.clone())))
        .await
        .expect("the certificate's name, by the authority override");
    let seen = server.attempts();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-authority"), Some(authority.as_str()));
}
