//! Helpers shared by the integration tests: workspace paths and bundle copies.

use std::path::{Path, PathBuf};

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

/// A builder wired to `server` over the in-memory HTTP/2 transport.
pub fn mock_client(server: &MockServer) -> AmeideClientBuilder {
    ameide_sdk::AmeideClient::builder()
        .endpoint("http://mock.test:9000")
        .transport(duplex_transport(server.clone()))
}

/// Decodes a `grpc-timeout` header value as a server would.
pub fn grpc_timeout(value: &str) -> std::time::Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().expect("grpc-timeout digits");
    match unit {
        "n" => std::time::Duration::from_nanos(n),
        "u" => std::time::Duration::from_micros(n),
        "m" => std::time::Duration::from_millis(n),
        "S" => std::time::Duration::from_secs(n),
        "M" => std::time::Duration::from_secs(n * 60),
        "H" => std::time::Duration::from_secs(n * 3600),
        other => panic!("bad grpc-timeout unit {other}"),
    }
}

/// A retry layer whose jitter factor is always `factor`.
pub fn fixed_jitter(factor: f64) -> ameide_sdk::layers::RetryLayer {
    ameide_sdk::layers::RetryLayer::new(ameide_sdk::layers::RetryPolicy::default())
        .expect("default policy is valid")
        .with_jitter(move |_min: f64, _max: f64| factor)
}
