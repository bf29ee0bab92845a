//! A real HTTP CONNECT proxy (Debian's tinyproxy) on loopback, with its own
//! config, pid and log under a temporary directory. `cargo xtask ci`
//! installs the package.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TINYPROXY: &str = "/usr/bin/tinyproxy";

/// The binary, or `None` outside CI when it is not installed (the test then
/// says so by name); in CI a missing tinyproxy fails the test.
pub fn binary(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(TINYPROXY);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("AMEIDE_REQUIRE_NGINX").is_some() {
        panic!(
            "{test}: tinyproxy is not installed; `cargo xtask ci` installs it (apt-get install tinyproxy)"
        );
    }
    eprintln!("SKIPPED {test}: tinyproxy is not installed");
    None
}

/// A running tinyproxy; stopped when dropped.
pub struct TinyProxy {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

impl TinyProxy {
    /// Starts tinyproxy on a free loopback port with `extra` config lines
    /// (`ConnectPort 443` to allow only that port, say).
    pub fn start(binary: &std::path::Path, extra: &str) -> TinyProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::nginx::free_port();
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{log}\"\nLogLevel Info\nPidFile \"{pid}\"\nMaxClients 50\nAllow 127.0.0.1\n{extra}\n",
                log = dir.path().join("tinyproxy.log").display(),
                pid = dir.path().join("tinyproxy.pid").display(),
            ),
        )
        .expect("write the config");
        let mut child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return TinyProxy { dir, child, port };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("tinyproxy did not listen on {port}");
    }

    /// The proxy's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
