//! A grpc-go server with grpc-go's own keepalive enforcement
//! (`tests/go/grpcserver`), built on first use from Debian's `golang-go` and
//! `golang-google-grpc-dev` (GOPATH mode, no module download) into
//! `target/ameide-go/`, started per test on loopback. `cargo xtask ci`
//! installs the packages.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

const GO: &str = "/usr/bin/go";
const GRPC_GO: &str = "/usr/share/gocode/src/google.golang.org/grpc/server.go";

/// One line the server printed: what, which connection, when (ms after its start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub what: String,
    pub conn: u64,
    pub at_ms: u64,
    /// What follows (a call's request id).
    pub detail: String,
}

/// The server binary, built once per test process; `None` (the test says
/// so by name) when Go or grpc-go is not installed outside CI.
pub fn binary(test: &str) -> Option<PathBuf> {
    if !Path::new(GO).exists() || !Path::new(GRPC_GO).exists() {
        let required =
            std::env::var_os("CI").is_some() || std::env::var_os("AMEIDE_REQUIRE_NGINX").is_some();
        if required {
            panic!(
                "{test}: Debian's golang-go and golang-google-grpc-dev are not installed; `cargo xtask ci` installs them"
            );
        }
        eprintln!("SKIPPED {test}: golang-go and golang-google-grpc-dev are not installed");
        return None;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(path) => Some(path.clone()),
        Err(e) => panic!("{test}: cannot build the grpc-go server: {e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let root = crate::workspace_root();
    let out_dir = root.join("target/ameide-go");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let bin = out_dir.join("grpcserver");
    // Several test processes may build at once: each writes its own file,
    // then renames it into place.
    let staging = out_dir.join(format!("grpcserver.{}", std::process::id()));
    let output = Command::new(GO)
        .args(["build", "-o"])
        .arg(&staging)
        .arg(".")
        .current_dir(root.join("tests/go/grpcserver"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", out_dir.join("cache"))
        .env("GOFLAGS", "")
        .output()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    std::fs::rename(&staging, &bin).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// A running server; killed when dropped.
pub struct GoServer {
    /// Where it listens over TCP (`0.0.0.0:0` for a Unix socket: see `listening`).
    pub addr: SocketAddr,
    /// Where it listens, as it printed it (an address or a socket path).
    pub listening: String,
    child: Child,
    _stdin: ChildStdin,
    events: Arc<Mutex<Vec<Event>>>,
}

impl GoServer {
    /// Starts the server with `args` (`-addr 127.0.0.2:0`, `-unix path`,
    /// `-cert f -key f`, `-min-time 15s`, `-permit-without-stream`).
    pub fn start(binary: &Path, args: &[&str]) -> GoServer {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the grpc-go server");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .expect("the server says where it listens")
            .expect("a line");
        let listening = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        let addr = listening
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let events = Arc::new(Mutex::new(Vec::new()));
        let record = events.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut parts = line.split_whitespace();
                let (Some(what), Some(conn), Some(at)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                record.lock().unwrap().push(Event {
                    what: what.to_owned(),
                    conn: conn.parse().unwrap_or(0),
                    at_ms: at.parse().unwrap_or(0),
                    detail: parts.next().unwrap_or_default().to_owned(),
                });
            }
        });
        GoServer {
            addr,
            listening,
            child,
            _stdin: stdin,
            events,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// When the client pinged on connection `conn`, in ms.
    pub fn pings(&self, conn: u64) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter(|e| e.what == "ping" && e.conn == conn)
            .map(|e| e.at_ms)
            .collect()
    }

    /// The connections accepted so far.
    pub fn connections(&self) -> Vec<u64> {
        self.events()
            .into_iter()
            .filter(|e| e.what == "open")
            .map(|e| e.conn)
            .collect()
    }

    /// The request ids of the calls that arrived so far.
    pub fn request_ids(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e.what == "call")
            .map(|e| e.detail)
            .collect()
    }

    /// The calls that arrived, once the server's printed events have all
    /// been read (the count unchanged for 100 ms; at most 2 s): what
    /// `calls` says right after a call may miss its line still in flight.
    pub async fn settled_calls(&self) -> usize {
        let mut last = self.calls();
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = self.calls();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    }

    /// The calls that arrived so far.
    pub fn calls(&self) -> usize {
        self.events().iter().filter(|e| e.what == "call").count()
    }

    /// The calls cancelled (RST_STREAM from the client) while they waited
    /// to answer (`-delay`, `x-test-delay-ms`).
    pub fn cancelled(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| e.what == "cancelled")
            .count()
    }

    /// SIGTERM: grpc-go's GracefulStop (GOAWAY; calls in flight finish,
    /// then the process exits).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL: the process dies at once, its connections reset.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let _ = self.child.wait();
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Whether connection `conn` ends within 5 s. After writing a closing
    /// GOAWAY, grpc-go waits up to 1 s for the client to hang up before it
    /// closes the socket itself, so the client can see the GOAWAY before
    /// the server reports the connection closed: a positive check waits.
    pub async fn closes(&self, conn: u64) -> bool {
        for _ in 0..50 {
            if self.closed(conn) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.closed(conn)
    }

    /// Whether connection `conn` has ended.
    pub fn closed(&self, conn: u64) -> bool {
        self.events()
            .iter()
            .any(|e| e.what == "closed" && e.conn == conn)
    }
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self._stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gaps between successive times, in ms.
pub fn gaps(times: &[u64]) -> Vec<u64> {
    times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect()
}
