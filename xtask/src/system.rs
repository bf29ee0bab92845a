//! Debian packages the test suite runs against: `nginx` (a real HTTP/2 gRPC
//! proxy, `tests/tests/proxy_nginx.rs`, `tests/tests/subchannel.rs`),
//! `openssl` (the command line that makes the tests' certificates), and
//! `golang-go` with `golang-google-grpc-dev` (a grpc-go server with grpc-go's
//! own keepalive enforcement, `tests/go/grpcserver`, built in GOPATH mode from
//! the packaged sources: `tests/tests/keepalive.rs`) and `tinyproxy` (a real
//! HTTP CONNECT proxy, `tests/tests/tls_and_proxy.rs`) and `dnsmasq-base` (a
//! real DNS server, the binary alone without the system service:
//! `tests/tests/balancing.rs`). Installed with apt when missing.
//!
//! The tests start their own nginx on loopback with their own folders; the
//! install must not start the system service, so a `policy-rc.d` that denies
//! every service start is in place for the duration of `apt-get install`
//! (the Debian mechanism for exactly this), and removed afterwards.

use std::path::Path;
use std::process::Command;

/// (package, a file it installs).
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "/usr/sbin/nginx"),
    ("openssl", "/usr/bin/openssl"),
    ("golang-go", "/usr/bin/go"),
    (
        "golang-google-grpc-dev",
        "/usr/share/gocode/src/google.golang.org/grpc/server.go",
    ),
    ("tinyproxy", "/usr/bin/tinyproxy"),
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Installs whichever of [`PACKAGES`] is missing; an error names the package.
pub fn install() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        println!(
            "system packages: nginx, openssl, golang-go, golang-google-grpc-dev, tinyproxy and dnsmasq-base present"
        );
        return Ok(());
    }
    let names = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "Debian packages missing: {names}; the proxy tests need them. Run as root (apt-get) or install them: apt-get install {names}"
        ));
    }
    println!("system packages: installing {names} with apt-get");
    let ours = !Path::new(POLICY_RC_D).exists();
    if ours {
        std::fs::write(POLICY_RC_D, "#!/bin/sh\n# written by cargo xtask ci: no service starts during its apt-get install\nexit 101\n")
            .map_err(|e| format!("cannot write {POLICY_RC_D}: {e}"))?;
        let _ = Command::new("chmod").args(["755", POLICY_RC_D]).status();
    }
    let result = apt(&["update", "-qq"]).and_then(|()| {
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(missing.iter().copied());
        apt(&args)
    });
    if ours {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result.map_err(|e| format!("cannot install Debian packages {names}: {e}"))?;
    for (package, file) in PACKAGES {
        if !Path::new(file).exists() {
            return Err(format!(
                "apt-get installed {package} but {file} is not there"
            ));
        }
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("apt-get {} exited with {status}", args.join(" ")))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
