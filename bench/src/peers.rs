//! The peer clients: Python grpcio (asyncio API) and Node @grpc/grpc-js, one
//! client process each, pinned to the client core, calling the same server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::measure::Sample;

#[path = "../../tests/src/peer_install.rs"]
mod install;

pub use install::{GRPC_JS, GRPCIO};

/// A peer ready to run: the command before its per-run arguments.
pub struct Peer {
    pub name: &'static str,
    program: PathBuf,
    script: PathBuf,
    first_arg: PathBuf,
    env: Vec<(String, PathBuf)>,
    /// `python --version` / `node --version`, for the report.
    pub runtime_version: String,
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Installs (once, into `cache`) and describes the peer called `name`.
pub fn prepare(name: &str, root: &Path, cache: &Path) -> Result<Peer, String> {
    let proto_dir = root.join("ameide-proto/proto");
    match name {
        "python" => {
            let digest = &ameide_sdk::contract::BUNDLE_DIGEST["sha256:".len()..][..12];
            let python = install::install_python(cache, &proto_dir, digest)?;
            Ok(Peer {
                name: "python",
                runtime_version: format!("{}, grpcio {GRPCIO}", version(&python.python)),
                program: python.python,
                script: root.join("bench/peers/grpcio_aio_client.py"),
                first_arg: python.stubs,
                env: Vec::new(),
            })
        }
        "node" => {
            let modules = install::install_node(cache)?.join("node_modules");
            Ok(Peer {
                name: "node",
                runtime_version: format!(
                    "node {}, @grpc/grpc-js {GRPC_JS}",
                    version(Path::new("node"))
                ),
                program: PathBuf::from("node"),
                script: root.join("bench/peers/grpc_js_client.js"),
                first_arg: proto_dir,
                env: vec![("NODE_PATH".into(), modules)],
            })
        }
        other => Err(format!("unknown peer {other:?} (known: python, node)")),
    }
}

impl Peer {
    /// Runs `rounds` windows at `concurrency` in one client process.
    pub fn run(
        &self,
        port: u16,
        concurrency: usize,
        duration: Duration,
        rounds: usize,
        core: Option<usize>,
    ) -> Result<Vec<Sample>, String> {
        let mut command = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command
            .arg(&self.script)
            .arg(&self.first_arg)
            .args([
                port.to_string(),
                concurrency.to_string(),
                duration.as_millis().to_string(),
                rounds.to_string(),
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let output = command
            .output()
            .map_err(|e| format!("cannot start the {} client: {e}", self.name))?;
        if !output.status.success() {
            return Err(format!(
                "the {} client failed ({}): {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let mut samples = Vec::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("the {} client printed {line:?}: {e}", self.name))?;
            let number = |k: &str| {
                v[k].as_f64()
                    .ok_or_else(|| format!("the {} client's line lacks {k}: {line}", self.name))
            };
            if number("errors")? > 0.0 {
                return Err(format!(
                    "the {} client saw errors: {}",
                    self.name, v["error"]
                ));
            }
            let calls = number("calls")?;
            // Only what the peer scripts measure; the rest is not known.
            samples.push(Sample {
                rate: calls / number("seconds")?,
                cpu_us_per_item: number("cpu_seconds")? * 1e6 / calls.max(1.0),
                allocs_per_item: f64::NAN,
                bytes_per_item: f64::NAN,
                p50_us: f64::NAN,
                p90_us: f64::NAN,
                p95_us: f64::NAN,
                p99_us: f64::NAN,
                p999_us: f64::NAN,
                completed: calls as u64,
            });
        }
        if samples.len() != rounds {
            return Err(format!(
                "the {} client printed {} windows, expected {rounds}",
                self.name,
                samples.len()
            ));
        }
        Ok(samples)
    }
}
