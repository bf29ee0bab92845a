//! The entry point of `ameide-proto/build.rs`.
//!
//! Errors are printed as plain, located messages and end the build script with
//! exit code 1: a broken bundle reads `file:line:col: message`, not a panic
//! backtrace.

use std::path::{Path, PathBuf};

use crate::codegen;
use crate::{Inputs, MANIFEST_PATH, PROTO_DIR, ROSTER_PATH};

/// Runs the whole build step for the crate in `CARGO_MANIFEST_DIR`, writing to `OUT_DIR`.
pub fn run() {
    let crate_dir = env_path("CARGO_MANIFEST_DIR");
    let out_dir = env_path("OUT_DIR");
    if let Err(message) = generate(&crate_dir, &out_dir) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) => PathBuf::from(value),
        None => {
            eprintln!(
                "error: {name} is not set; ameide_build::build_script::run must run from a build script"
            );
            std::process::exit(1);
        }
    }
}

/// Generates every output of `crate_dir`'s bundle into `out_dir` and prints the
/// `cargo:` directives. Returns a readable message on failure.
pub fn generate(crate_dir: &Path, out_dir: &Path) -> Result<(), String> {
    emit_rerun_directives(crate_dir);
    let inputs = Inputs::load(crate_dir).map_err(|e| e.to_string())?;
    inputs.check_wiring().map_err(|e| e.to_string())?;

    codegen::generate_stubs(&inputs.bundle, out_dir)
        .map_err(|e| format!("tonic-prost-build failed: {e}"))?;
    write(
        &out_dir.join(codegen::METHOD_TABLE_FILE),
        codegen::render_method_table(&inputs.roster, &inputs.services).as_bytes(),
    )?;
    write(
        &out_dir.join(codegen::CONTRACT_FILE),
        codegen::render_contract(&inputs.bundle.digest()).as_bytes(),
    )?;
    write(
        &out_dir.join(codegen::CLIENT_SET_FILE),
        codegen::render_client_set(&inputs.roster)?.as_bytes(),
    )?;
    write(
        &out_dir.join(crate::pagination::PAGINATION_FILE),
        crate::pagination::render(&inputs.roster, &inputs.services)?.as_bytes(),
    )?;
    write(
        &out_dir.join(codegen::DESCRIPTOR_SET_FILE),
        inputs.bundle.reflection_descriptor_set(),
    )?;

    // A stale manifest does not stop the build (xtask regenerates it, CI fails
    // on it), but it is worth a warning at once.
    if inputs.check_manifest().is_err() {
        println!("cargo:warning=ameide-proto/{MANIFEST_PATH} is stale: run `cargo xtask manifest`");
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `rerun-if-changed` for the bundle directory, every proto file, the roster,
/// the manifest and `buf.yaml`. (tonic-prost-build's own flag is a no-op with
/// `compile_fds`, so we say it ourselves.)
fn emit_rerun_directives(crate_dir: &Path) {
    let proto_dir = crate_dir.join(PROTO_DIR);
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let mut stack = vec![proto_dir];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                println!("cargo:rerun-if-changed={}", path.display());
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for file in [ROSTER_PATH, MANIFEST_PATH, "buf.yaml"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(file).display());
    }
}
