//! Helpers shared by the integration tests: workspace paths and bundle copies.

use std::path::{Path, PathBuf};

pub mod dnsmasq;
pub mod grpc_go;
pub mod nginx;
mod peer_install;
pub mod relay;
pub mod tinyproxy;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned()
}

/// The `ameide-proto` crate directory.
pub fn proto_crate_dir() -> PathBuf {
    workspace_root().join("ameide-proto")
}

/// Copies the proto crate's bundle, roster and manifest into a fresh temp dir
/// laid out like the crate, so a test can edit it freely.
pub fn copy_proto_crate() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = proto_crate_dir();
    for sub in ["proto", "manifest"] {
        copy_dir(&src.join(sub), &dir.path().join(sub));
    }
    std::fs::copy(src.join("buf.yaml"), dir.path().join("buf.yaml")).expect("copy buf.yaml");
    dir
}

/// Recursively copies a directory.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("create dir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

use ameide_sdk::AmeideClientBuilder;
use ameide_sdk::testkit::{MockServer, duplex_transport};

/// Paths used across the client tests.
pub mod paths {
    /// Unary, `NO_SIDE_EFFECTS`.
    pub const LIST_REPOSITORIES: &str = "/ameide_core_proto.graph.v1.GraphService/ListRepositories";
    /// Unary, `IDEMPOTENCY_UNKNOWN`.
    pub const CREATE_ELEMENT: &str = "/ameide_core_proto.graph.v1.GraphService/CreateElement";
    /// Server streaming.
    pub const GENERATE: &str = "/ameide_core_proto.inference.v1.InferenceService/Generate";
}

/// A builder wired to `server` over the in-memory HTTP/2 transport. Each
/// builder gets its own target name, so clients of different tests never
/// share a retry-throttling bucket.
pub fn mock_client(server: &MockServer) -> AmeideClientBuilder {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ameide_sdk::AmeideClient::builder()
        .endpoint(format!("http://mock-{n}.test:9000"))
        .transport(duplex_transport(server.clone()))
}

/// One call of each kind the tests need.
pub mod calls {
    use std::time::Duration;

    use ameide_sdk::proto::graph::v1::{CreateElementRequest, ListRepositoriesRequest};
    use ameide_sdk::proto::inference::v1::{GenerateRequest, GenerateResponse};
    use ameide_sdk::{AmeideClient, CallOptions, Error, IntoAmeideResult};
    use tonic::Code;

    /// `GraphService.ListRepositories` (NO_SIDE_EFFECTS).
    pub async fn read(client: &AmeideClient) -> Result<(), Error> {
        client
            .graph()
            .list_repositories(ListRepositoriesRequest::default())
            .await
            .into_ameide()
            .map(drop)
    }

    /// `GraphService.CreateElement` (has side effects).
    pub async fn create(client: &AmeideClient) -> Result<(), Error> {
        client
            .graph()
            .create_element(CreateElementRequest::default())
            .await
            .into_ameide()
            .map(drop)
    }

    /// `GraphService.ListRepositories` with request id `id` (and a per-call
    /// `timeout`, if given): its code and how long it took on tokio's clock.
    pub async fn read_as(
        client: &AmeideClient,
        id: &str,
        timeout: Option<Duration>,
    ) -> (Code, Duration) {
        let started = tokio::time::Instant::now();
        let mut options = CallOptions::new().request_id(id);
        if let Some(timeout) = timeout {
            options = options.timeout(timeout);
        }
        let request = options
            .into_request(ListRepositoriesRequest::default())
            .expect("a valid request id");
        let result = client
            .graph()
            .list_repositories(request)
            .await
            .into_ameide();
        (
            result.as_ref().map_or_else(|e| e.code(), |_| Code::Ok),
            started.elapsed(),
        )
    }

    /// `InferenceService.Generate`, whose response headers must arrive: the stream.
    pub async fn generate(client: &AmeideClient) -> tonic::Streaming<GenerateResponse> {
        client
            .inference()
            .generate(GenerateRequest::default())
            .await
            .expect("the stream starts")
            .into_inner()
    }

    /// Encoded `GenerateResponse` messages for a scripted stream, one per
    /// token, `index` counting from 0.
    pub fn tokens<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<bytes::Bytes> {
        texts
            .into_iter()
            .enumerate()
            .map(|(i, token)| {
                bytes::Bytes::from(prost::Message::encode_to_vec(&GenerateResponse {
                    token: token.to_owned(),
                    index: i32::try_from(i).unwrap_or(i32::MAX),
                    ..Default::default()
                }))
            })
            .collect()
    }

    /// A `ListRepositoriesResponse` of `count` repositories of about 220
    /// bytes each (24,000 are a little over 5 MiB), for message-size tests.
    pub fn repositories(count: usize) -> ameide_sdk::proto::graph::v1::ListRepositoriesResponse {
        ameide_sdk::proto::graph::v1::ListRepositoriesResponse {
            repositories: (0..count)
                .map(|i| ameide_sdk::proto::graph::v1::Repository {
                    repository_id: format!("repo-{i:08}"),
                    key: "k".repeat(200),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// `GraphService.CreateElement` (not idempotent).
    pub async fn write(client: &AmeideClient) -> Result<(), Error> {
        client
            .graph()
            .create_element(CreateElementRequest::default())
            .await
            .into_ameide()
            .map(drop)
    }
}

/// A loopback address where nothing listens (bound, then released), for
/// connection-refused cases.
/// A recording backend answering OK on its own loopback address
/// (`127.0.0.<last_octet>`, a free port): one replica of a target.
pub async fn replica(last_octet: u8) -> (MockServer, std::net::SocketAddr) {
    let server = MockServer::new();
    server.fallback(ameide_sdk::testkit::Reply::ok());
    let addr = ameide_sdk::testkit::serve_tcp_at(
        server.clone(),
        std::net::SocketAddr::from(([127, 0, 0, last_octet], 0)),
    )
    .await
    .expect("a backend on its own loopback address");
    (server, addr)
}

pub fn closed_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address")
}

/// Decodes a `grpc-timeout` header value as a server would; panics when malformed.
pub fn grpc_timeout(value: &str) -> std::time::Duration {
    ameide_sdk::testkit::decode_grpc_timeout(value)
        .unwrap_or_else(|| panic!("malformed grpc-timeout {value:?}"))
}

/// A retry layer whose jitter factor is always `factor`.
pub fn fixed_jitter(factor: f64) -> ameide_sdk::layers::RetryLayer {
    ameide_sdk::layers::RetryLayer::new(ameide_sdk::layers::RetryPolicy::default())
        .expect("default policy is valid")
        .with_jitter(move |_min: f64, _max: f64| factor)
}

/// Real gRPC peers for interop tests, installed on first use into the
/// project-local `.cache/interop` (or `$AMEIDE_INTEROP_CACHE`):
/// a Python venv with grpcio and stubs generated from the bundle, and a
/// node_modules with @grpc/grpc-js.
pub mod interop {
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;

    use crate::peer_install as install;
    pub use install::{GRPC_JS, GRPCIO, PROTO_LOADER, PythonPeer as Python};

    /// The project-local cache (`.cache/interop`, git-ignored), or `$AMEIDE_INTEROP_CACHE`.
    pub fn cache() -> PathBuf {
        std::env::var_os("AMEIDE_INTEROP_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::workspace_root().join(".cache/interop"))
    }

    /// Installs (once per machine) and returns the Python peer.
    pub fn python() -> &'static Python {
        static PYTHON: OnceLock<Python> = OnceLock::new();
        PYTHON.get_or_init(|| {
            let digest =
                &ameide_sdk::contract::BUNDLE_DIGEST["sha256:".len().."sha256:".len() + 12];
            install::install_python(&cache(), &super::proto_crate_dir().join("proto"), digest)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// Installs (once per machine) and returns the `node_modules` parent for the Node peer.
    pub fn node() -> &'static PathBuf {
        static NODE: OnceLock<PathBuf> = OnceLock::new();
        NODE.get_or_init(|| install::install_node(&cache()).unwrap_or_else(|e| panic!("{e}")))
    }

    /// A running peer server; killed when dropped.
    pub struct Peer {
        child: Child,
        /// Its loopback port.
        pub port: u16,
        log: tempfile::NamedTempFile,
    }

    impl Peer {
        fn start(mut command: Command, log: tempfile::NamedTempFile) -> Peer {
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the peer server");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("peer stdout"))
                .read_line(&mut line)
                .expect("read the peer's port");
            let port = line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("the peer printed {line:?}, not a port"));
            Peer { child, port, log }
        }

        /// The grpcio server of `interop/python/server.py`.
        pub fn python() -> Peer {
            let p = python();
            let log = tempfile::NamedTempFile::new().expect("log file");
            let mut command = Command::new(&p.python);
            command
                .arg(super::workspace_root().join("interop/python/server.py"))
                .arg(&p.stubs)
                .arg(log.path());
            Self::start(command, log)
        }

        /// The @grpc/grpc-js server of `interop/node/server.js`.
        pub fn node() -> Peer {
            let modules = node();
            let log = tempfile::NamedTempFile::new().expect("log file");
            let mut command = Command::new("node");
            command
                .arg(super::workspace_root().join("interop/node/server.js"))
                .arg(super::proto_crate_dir().join("proto"))
                .arg(log.path())
                .env("NODE_PATH", modules.join("node_modules"));
            Self::start(command, log)
        }

        /// Every call the peer recorded, in order, for `method` (a line
        /// the peer is still writing is not read yet).
        pub fn calls(&self, method: &str) -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(self.log.path()).expect("read the peer log");
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            complete
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
                .filter(|e| e["method"] == method)
                .collect()
        }

        /// The calls for `method` once at least `n` are recorded (the peer
        /// logs in its handler, which may run after the client gave up),
        /// waiting up to 3 s; fewer if they never come.
        pub async fn calls_at_least(&self, method: &str, n: usize) -> Vec<serde_json::Value> {
            for _ in 0..60 {
                let calls = self.calls(method);
                if calls.len() >= n {
                    return calls;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            self.calls(method)
        }

        /// `http://127.0.0.1:<port>`.
        pub fn endpoint(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Serves `service` behind `inbound` (the SDK's inbound layer) on a loopback
/// port, on the current runtime; returns the address.
pub async fn serve_inbound<S>(
    inbound: ameide_sdk::server::InboundLayer,
    service: S,
) -> std::net::SocketAddr
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let router = tonic::transport::Server::builder()
        .layer(inbound)
        .add_service(service);
    tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}
