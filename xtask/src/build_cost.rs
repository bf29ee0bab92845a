//! `cargo xtask build-cost`: what depending on `ameide-sdk` costs a
//! consumer's build. Each variant is a fresh crate (a hello world with one
//! call) in `target/build-cost/<variant>/`, built cold in release mode with
//! a target directory of its own and the workspace's lockfile (so every
//! variant resolves the same versions); the wall time, the crates compiled
//! and the binary's size are reported as a Markdown table.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::{cargo, workspace_root};

struct Variant {
    name: &'static str,
    what: &'static str,
    main: &'static str,
}

const SDK_MAIN: &str = r#"use ameide_sdk::proto::graph::v1::GetRepositoryRequest;

#[tokio::main]
async fn main() {
    let client = ameide_sdk::AmeideClient::builder()
        .endpoint("http://127.0.0.1:9")
        .build()
        .expect("a client");
    let answer = client.graph().get_repository(GetRepositoryRequest::default()).await;
    println!("{:?}", answer.map(|_| ()).map_err(|e| e.code()));
}
"#;

const TONIC_MAIN: &str = r#"use tonic::codegen::http::uri::PathAndQuery;

/// The one message of the call, by hand: a plain tonic consumer's codegen
/// would write the same.
#[derive(Clone, PartialEq, prost::Message)]
struct GetRepositoryRequest {
    #[prost(string, tag = "2")]
    repository_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GetRepositoryResponse {}

#[tokio::main]
async fn main() {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let mut grpc = tonic::client::Grpc::new(channel);
    let answer = async {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<GetRepositoryRequest, GetRepositoryResponse>::default();
        grpc.unary(
            tonic::Request::new(GetRepositoryRequest::default()),
            PathAndQuery::from_static("/ameide_core_proto.graph.v1.GraphService/GetRepository"),
            codec,
        )
        .await
    }
    .await;
    println!("{:?}", answer.map(|_| ()).map_err(|e| e.code()));
}
"#;

fn variants(sdk: &Path) -> Vec<(Variant, String)> {
    let sdk = sdk.display();
    let tokio = r#"tokio = { version = "1", features = ["rt-multi-thread", "macros"] }"#;
    vec![
        (
            Variant {
                name: "default",
                what: "`ameide-sdk`, default features (client, `server`, `oauth2`, `dns`)",
                main: SDK_MAIN,
            },
            format!("ameide-sdk = {{ path = \"{sdk}\" }}\n{tokio}\n"),
        ),
        (
            Variant {
                name: "lean",
                what: "`ameide-sdk`, `default-features = false` (the client only: no server, no OAuth2, no `dns:` targets)",
                main: SDK_MAIN,
            },
            format!("ameide-sdk = {{ path = \"{sdk}\", default-features = false }}\n{tokio}\n"),
        ),
        (
            Variant {
                name: "tonic",
                what: "plain tonic + prost (default features: plaintext HTTP/2, no TLS, no compression, no telemetry, no DNS resolver of its own)",
                main: TONIC_MAIN,
            },
            format!("tonic = \"0.14\"\ntonic-prost = \"0.14\"\nprost = \"0.14\"\n{tokio}\n"),
        ),
    ]
}

/// `cargo xtask build-cost [VARIANT…]` (default: all of them).
pub(crate) fn build_cost(args: &[&str]) -> Result<(), String> {
    let root = workspace_root();
    let base = root.join("target/build-cost");
    let mut rows = Vec::new();
    for (variant, dependencies) in variants(&root.join("ameide-sdk")) {
        if !args.is_empty() && !args.contains(&variant.name) {
            continue;
        }
        let dir = base.join(variant.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"consumer-{}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\n{dependencies}\n[workspace]\n",
                variant.name
            ),
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("src/main.rs"), variant.main).map_err(|e| e.to_string())?;
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
            .map_err(|e| e.to_string())?;
        println!("build-cost: {} (cold, release)…", variant.name);
        let started = Instant::now();
        let output = cargo()
            .args(["build", "--release", "--target-dir"])
            .arg(dir.join("target"))
            .current_dir(&dir)
            .env("CARGO_INCREMENTAL", "0")
            .output()
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let log = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("{} did not build:\n{log}", variant.name));
        }
        let crates = log
            .lines()
            .filter(|l| l.trim_start().starts_with("Compiling "))
            .count();
        let binary = dir.join(format!("target/release/consumer-{}", variant.name));
        let size = std::fs::metadata(&binary).map_err(|e| e.to_string())?.len();
        let ran = Command::new(&binary).output().map_err(|e| e.to_string())?;
        println!(
            "  {:.0} s, {crates} crates, {:.1} MiB; it runs: {}",
            took.as_secs_f64(),
            size as f64 / (1024.0 * 1024.0),
            String::from_utf8_lossy(&ran.stdout).trim()
        );
        rows.push((variant, took, crates, size));
    }
    println!(
        "\n| Consumer | Cold release build | Crates compiled | Binary |\n|---|---:|---:|---:|"
    );
    for (variant, took, crates, size) in rows {
        println!(
            "| {} | {:.0} s | {crates} | {:.1} MiB |",
            variant.what,
            took.as_secs_f64(),
            size as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
