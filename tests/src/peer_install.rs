//! Installs the real gRPC peers (Python grpcio, Node @grpc/grpc-js) into a
//! project-local cache, once per machine. Std-only, so both the interop tests
//! (`ameide-tests`) and the benchmark harness (`ameide-bench`, which must not
//! pull the tests' dependencies into a timed binary) include this file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// grpcio release the Python peer runs.
pub const GRPCIO: &str = "1.85.1";
/// @grpc/grpc-js release the Node peer runs.
pub const GRPC_JS: &str = "1.14.7";
/// @grpc/proto-loader release the Node peer runs.
pub const PROTO_LOADER: &str = "0.8.1";

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// The Python peer: the venv's interpreter and the generated stubs.
pub struct PythonPeer {
    /// `venv/bin/python`.
    pub python: PathBuf,
    /// Directory of the generated `ameide_core_proto` stubs.
    pub stubs: PathBuf,
}

/// Creates (once) a venv with grpcio under `cache`, and Python stubs for the
/// bundle in `proto_dir`, keyed by `digest` so a bundle edit regenerates them.
pub fn install_python(cache: &Path, proto_dir: &Path, digest: &str) -> Result<PythonPeer, String> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let venv = cache.join(format!("venv-grpcio-{GRPCIO}"));
    let python = venv.join("bin/python");
    let stamp = venv.join(".installed");
    if !stamp.exists() {
        std::fs::create_dir_all(cache).map_err(|e| io("create the peer cache", e))?;
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args([
                    format!("grpcio=={GRPCIO}"),
                    format!("grpcio-tools=={GRPCIO}"),
                    format!("grpcio-status=={GRPCIO}"),
                ]),
            "pip install grpcio",
        )?;
        std::fs::write(&stamp, "ok").map_err(|e| io("write the venv stamp", e))?;
    }
    let stubs = cache.join(format!("python-stubs-{digest}"));
    if !stubs.join(".complete").exists() {
        let staging = cache.join(format!("python-stubs-{digest}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| io("create the stubs dir", e))?;
        let mut files = Vec::new();
        collect_protos(proto_dir, &mut files).map_err(|e| io("read the bundle", e))?;
        run(
            Command::new(&python)
                .args(["-m", "grpc_tools.protoc"])
                .arg(format!("-I{}", proto_dir.display()))
                .arg(format!("--python_out={}", staging.display()))
                .arg(format!("--grpc_python_out={}", staging.display()))
                .args(&files),
            "grpc_tools.protoc",
        )?;
        std::fs::write(staging.join(".complete"), "ok")
            .map_err(|e| io("mark the stubs complete", e))?;
        let _ = std::fs::remove_dir_all(&stubs);
        std::fs::rename(&staging, &stubs).map_err(|e| io("publish the stubs", e))?;
    }
    Ok(PythonPeer { python, stubs })
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// Installs (once) @grpc/grpc-js and @grpc/proto-loader under `cache`;
/// returns the directory holding `node_modules`.
pub fn install_node(cache: &Path) -> Result<PathBuf, String> {
    let dir = cache.join(format!("node-grpc-js-{GRPC_JS}"));
    if !dir.join(".installed").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("create the node cache: {e}"))?;
        run(
            Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--loglevel=error",
                    "--prefix",
                ])
                .arg(&dir)
                .arg(format!("@grpc/grpc-js@{GRPC_JS}"))
                .arg(format!("@grpc/proto-loader@{PROTO_LOADER}")),
            "npm install @grpc/grpc-js",
        )?;
        std::fs::write(dir.join(".installed"), "ok")
            .map_err(|e| format!("write the node stamp: {e}"))?;
    }
    Ok(dir)
}
