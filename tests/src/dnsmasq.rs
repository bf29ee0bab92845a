//! A real DNS server (Debian's dnsmasq, package `dnsmasq-base`: the binary
//! alone, no system service) on a loopback port, answering from its own
//! hosts file, with its own pid and log under a temporary directory.
//! `cargo xtask ci` installs the package.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The binary, or `None` outside CI when it is not installed (the test then
/// says so by name); in CI a missing dnsmasq fails the test.
pub fn binary(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(DNSMASQ);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("AMEIDE_REQUIRE_NGINX").is_some() {
        panic!(
            "{test}: dnsmasq is not installed; `cargo xtask ci` installs it (apt-get install dnsmasq-base)"
        );
    }
    eprintln!("SKIPPED {test}: dnsmasq is not installed");
    None
}

/// A running dnsmasq; stopped when dropped.
pub struct Dnsmasq {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `name` with `addrs` (TTL 0: every answer is fresh).
    pub fn start(binary: &std::path::Path, name: &str, addrs: &[Ipv4Addr]) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("temp dir");
        // The server drops to `nobody`: it must read its hosts file.
        let _ = Command::new("chmod").arg("a+rx").arg(dir.path()).status();
        let port = crate::nginx::free_port();
        let dns = Dnsmasq {
            dir,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        dns.write_hosts(name, addrs);
        let child = Command::new(binary)
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--addn-hosts={}", dns.hosts().display()))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg(format!("--port={port}"))
            .arg(format!(
                "--pid-file={}",
                dns.dir.path().join("dnsmasq.pid").display()
            ))
            .arg(format!(
                "--log-facility={}",
                dns.dir.path().join("dnsmasq.log").display()
            ))
            .arg("--log-queries")
            .arg("--local-ttl=0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dnsmasq");
        let mut dns = dns;
        dns.child = Some(child);
        dns.wait_answering();
        dns
    }

    fn hosts(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn write_hosts(&self, name: &str, addrs: &[Ipv4Addr]) {
        let lines: String = addrs.iter().map(|a| format!("{a} {name}\n")).collect();
        let path = self.hosts();
        std::fs::write(&path, lines).expect("write the hosts file");
        let _ = Command::new("chmod").arg("a+r").arg(&path).status();
    }

    /// Answers `name` with `addrs` from now on (the hosts file rewritten,
    /// then SIGHUP, which makes dnsmasq read it again).
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.write_hosts(name, addrs);
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Stops the server (SIGKILL): no answers any more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The query log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    fn wait_answering(&self) {
        // A TCP connect to its port: dnsmasq listens on TCP too.
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("dnsmasq did not listen on {}: {}", self.addr, self.log());
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
