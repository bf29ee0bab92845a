//! TLS material that rotates, against Debian's nginx requiring a client
//! certificate: files replaced while the client runs are used by its next
//! connection; a rotation caught half-way keeps the last good pair. An IP
//! endpoint whose certificate names a host, reached with an authority
//! override. And `https` through a real HTTP CONNECT proxy (Debian's
//! tinyproxy), and its refusal.

use std::path::Path;
use std::time::Duration;

use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use ameide_sdk::{AmeideClient, ClientIdentity, Proxy, TransportOptions};
use ameide_tests::calls;
use ameide_tests::nginx::{self, Certs, Nginx};
use ameide_tests::relay::{Mode, Relay};
use ameide_tests::tinyproxy::{self, TinyProxy};
use tonic::Code;

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
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    certs.client("rotated", "ameide rotated client");
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("tls.crt"), live.path().join("tls.key"));
    replace(&certs.path("client.pem"), &cert);
    replace(&certs.path("client.key"), &key);
    let (server, proxy) = tls_upstream(
        &bin,
        &certs,
        &format!(
            "ssl_verify_client on; ssl_client_certificate {};",
            certs.path("ca.pem").display()
        ),
        "grpc_set_header x-client-dn $ssl_client_s_dn;",
    )
    .await;
    // Counts the client's connections.
    let relay = Relay::start(Mode::Forward {
        upstream: format!("127.0.0.1:{}", proxy.port).parse().unwrap(),
        delay: Duration::ZERO,
    })
    .await;
    let client = AmeideClient::builder()
        .endpoint(format!("https://localhost:{}", relay.addr.port()))
        .transport_options(
            TransportOptions::default()
                .with_ca_certificate_file(certs.path("ca.pem"))
                .unwrap()
                .with_client_identity(ClientIdentity::from_files(&cert, &key).unwrap()),
        )
        .build()
        .unwrap();
    // One call on a connection made after a reload: the subject nginx saw.
    let call_on_a_new_connection = |connections: usize, what: &'static str| {
        let (client, proxy, relay, server) = (&client, &proxy, &relay, &server);
        async move {
            if connections > 1 {
                proxy.reload();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            calls::read(client).await.expect(what);
            // The old worker may still hold the idle connection a moment
            // after the reload: call again until a new one is made (5 s).
            for _ in 0..25 {
                if relay.accepted().len() >= connections {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                calls::read(client).await.expect(what);
            }
            assert_eq!(
                relay.accepted().len(),
                connections,
                "{what}: a new connection"
            );
            last_subject(server)
        }
    };
    let subject = call_on_a_new_connection(1, "mutual TLS").await;
    assert!(subject.contains("CN=ameide test client"), "{subject}");

    // Half a rotation: the new certificate beside the old key. The next
    // connection keeps the last good pair.
    replace(&certs.path("rotated.pem"), &cert);
    let subject = call_on_a_new_connection(2, "the last good pair").await;
    assert!(subject.contains("CN=ameide test client"), "{subject}");

    // The key follows: the next connection presents the new certificate.
    replace(&certs.path("rotated.key"), &key);
    let subject = call_on_a_new_connection(3, "the rotated pair").await;
    assert!(subject.contains("CN=ameide rotated client"), "{subject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_endpoint_with_a_named_certificate_needs_the_authority_override() {
    let Some(bin) =
        nginx::binary("an_ip_endpoint_with_a_named_certificate_needs_the_authority_override")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let (server, proxy) =
        tls_upstream(&bin, &certs, "", "grpc_set_header x-authority $http_host;").await;
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

/// nginx terminating TLS for `localhost` in front of a recording upstream.
/// `server` and `location` are extra nginx directives (see `Certs::grpc_tls_server`).
async fn tls_upstream(
    bin: &Path,
    certs: &Certs,
    server_extra: &str,
    location_extra: &str,
) -> (MockServer, Nginx) {
    let server = MockServer::new();
    server.fallback(Reply::ok());
    let upstream = serve_tcp(server.clone()).await.unwrap();
    let proxy = Nginx::start(
        bin,
        &certs.grpc_tls_server(upstream, server_extra, location_extra),
    );
    (server, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_through_an_http_connect_proxy_and_its_refusal_is_named() {
    let test = "https_goes_through_an_http_connect_proxy_and_its_refusal_is_named";
    let (Some(bin), Some(tiny)) = (nginx::binary(test), tinyproxy::binary(test)) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let (server, nginx) = tls_upstream(&bin, &certs, "", "").await;
    let client = |proxy: Proxy| {
        AmeideClient::builder()
            .endpoint(format!("https://127.0.0.1:{}", nginx.port))
            .transport_options(
                TransportOptions::default()
                    .with_ca_certificate_pem(certs.read("ca.pem"))
                    .with_authority(format!("localhost:{}", nginx.port))
                    .with_proxy(proxy),
            )
            .build()
            .unwrap()
    };

    let open = TinyProxy::start(&tiny, "");
    calls::read(&client(Proxy::Url {
        url: open.url(),
        no_proxy: String::new(),
    }))
    .await
    .expect("TLS through the tunnel");
    assert_eq!(server.attempts().len(), 1);
    let log = open.log();
    assert!(
        log.contains(&format!("127.0.0.1:{}", nginx.port)) && log.contains("CONNECT"),
        "the proxy carried the connection: {log}"
    );

    // NO_PROXY's syntax: this endpoint is exempt, the proxy sees nothing new.
    let before = open.log().len();
    calls::read(&client(Proxy::Url {
        url: open.url(),
        no_proxy: "example.com, 127.0.0.0/8".to_owned(),
    }))
    .await
    .expect("directly");
    assert!(!open.log()[before..].contains("CONNECT"), "{}", open.log());

    // A proxy that allows CONNECT to port 443 only refuses this one: the
    // call fails at once (the proxy's policy stands) with UNAVAILABLE naming
    // the proxy and its answer.
    let strict = TinyProxy::start(&tiny, "ConnectPort 443");
    let started = std::time::Instant::now();
    let err = calls::read(&client(Proxy::Url {
        url: strict.url(),
        no_proxy: String::new(),
    }))
    .await
    .expect_err("the proxy refuses the port");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().contains("refused the tunnel") && err.message().contains("403"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.attempts().len(), 2);
}
