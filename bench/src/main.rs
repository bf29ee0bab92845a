//! `ameide-bench`: the harness behind `cargo xtask bench` and `cargo xtask soak`.
//!
//! ```text
//! ameide-bench run [--duration-ms N] [--rounds N] [--concurrency 1,64,256,1024]
//!                  [--clients raw,sdk,…] [--stream-messages N] [--pool N]
//!                  [--peers python,node|none] [--peer-cache DIR] [--build-cost FILE] [--out DIR]
//!                  [--target-rounds N] [--target-window-ms N] [--no-instructions]
//! ameide-bench soak [--calls N] [--concurrency C] [--max-growth-mib M]
//! ameide-bench count <client> <calls> <concurrency> <port> [stream]   # for callgrind / DHAT
//! ameide-bench server [addr]                                 # internal: prints its port, serves
//! ```
//!
//! One loopback server process (plain tonic, one worker thread, pinned to the
//! last core when `taskset` exists); the clients run in this process on a
//! single-threaded tokio runtime pinned to core 0, so rates are per client
//! core. A counting global allocator counts the client's heap allocations.
//! Under valgrind (unless `--no-instructions`), `count` runs give the exact
//! figures: instructions per call (callgrind) and, at 1 in flight, the
//! simulated I1/D1 cache misses of `raw+headers` and `sdk` (cachegrind).
//! See `docs/BENCHMARKS.md`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

mod alloc;
mod clients;
mod measure;
mod peers;
mod report;
mod run;
mod server;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

/// The workspace root (this crate sits in `bench/`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The machine's cores, read once: after `pin_client` the process's
/// affinity would make `available_parallelism` say 1.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub fn taskset_available() -> bool {
    Command::new("taskset").arg("-V").output().is_ok()
}

/// Pins this process's current thread (and so the threads it starts later)
/// to core 0 when the machine has more than one core; returns whether it did.
pub fn pin_client() -> bool {
    if cores() < 2 || !taskset_available() {
        return false;
    }
    Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The server process; killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Server {
    /// Starts `ameide-bench server` on the last core and reads its port.
    pub fn start() -> Result<Server, ameide_sdk::layers::BoxError> {
        Server::start_at("127.0.0.1:0")
    }

    /// [`start`](Self::start) bound to `addr`.
    pub fn start_at(addr: &str) -> Result<Server, ameide_sdk::layers::BoxError> {
        Server::start_with(addr, None)
    }

    /// [`start_at`](Self::start_at), delaying every `every`-th unary call by `ms`.
    pub fn start_slow(
        addr: &str,
        every: u64,
        ms: u64,
    ) -> Result<Server, ameide_sdk::layers::BoxError> {
        Server::start_with(addr, Some(format!("{every}:{ms}")))
    }

    fn start_with(
        addr: &str,
        slow: Option<String>,
    ) -> Result<Server, ameide_sdk::layers::BoxError> {
        let exe = std::env::current_exe()?;
        let mut command = if cores() > 1 && taskset_available() {
            let mut c = Command::new("taskset");
            c.arg("-c").arg((cores() - 1).to_string()).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let mut child = command
            .args(["server", addr])
            .args(slow)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("server has no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let mut server = Server {
            child,
            port: 0,
            stdout: Some(stdout),
        };
        server.port = line
            .trim()
            .parse()
            .map_err(|_| format!("the server printed {line:?}, not a port"))?;
        Ok(server)
    }
}

impl Server {
    /// The unary calls the server has served so far.
    pub fn calls(&mut self) -> Result<u64, ameide_sdk::layers::BoxError> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().ok_or("server has no stdin")?;
        stdin.write_all(b"calls\n")?;
        stdin.flush()?;
        let stdout = self.stdout.as_mut().ok_or("server has no stdout")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(line.trim().parse()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `soak [--calls N] [--concurrency C] [--max-growth-mib M]`: N calls through
/// one AmeideClient with tracing exported in process (every tenth fails
/// NOT_FOUND, exercising the error path); RSS after a warm-up and at the end.
/// Fails when it grew more than M MiB (default 10: a leak of 50 bytes per
/// call over 200k calls would already show).
fn soak(args: &[String]) -> Result<(), ameide_sdk::layers::BoxError> {
    let (mut calls, mut concurrency, mut max_growth_mib) = (200_000u64, 64u64, 10u64);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value: u64 = it.next().ok_or(format!("{arg} needs a value"))?.parse()?;
        match arg.as_str() {
            "--calls" => calls = value,
            "--concurrency" => concurrency = value,
            "--max-growth-mib" => max_growth_mib = value,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let server = Server::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        let otel = clients::Otel::new();
        let client = clients::build("sdk+otel", server.port, &otel, 1).await?;
        let run = |total: u64, offset: u64| {
            let client = client.clone();
            async move {
                let next = Arc::new(AtomicU64::new(0));
                let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                let tasks: Vec<_> = (0..concurrency)
                    .map(|_| {
                        let (mut client, next, ok, failed) =
                            (client.clone(), next.clone(), ok.clone(), failed.clone());
                        tokio::task::spawn_local(async move {
                            loop {
                                let n = next.fetch_add(1, Ordering::Relaxed);
                                if n >= total {
                                    break;
                                }
                                let id = format!("soak-{}", n + offset);
                                match client.get_repository(id, n).await {
                                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("no soak task panics");
                }
                (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
            }
        };
        let warmup = (calls / 20).max(1000);
        run(warmup, 0).await;
        let start_rss = rss_kib();
        let started = Instant::now();
        let (ok, failed) = run(calls, warmup).await;
        let elapsed = started.elapsed();
        let end_rss = rss_kib();
        let _ = otel.provider.shutdown();
        Ok::<_, ameide_sdk::layers::BoxError>((ok, failed, start_rss, end_rss, elapsed))
    }));
    drop(server);
    let (ok, failed, start_rss, end_rss, elapsed) = result?;
    let growth = end_rss.saturating_sub(start_rss);
    println!(
        "soak: {} calls ({ok} ok, {failed} NOT_FOUND) in {elapsed:.1?} ({:.0}/s); RSS {start_rss} KiB -> {end_rss} KiB (growth {growth} KiB, bound {} KiB)",
        ok + failed,
        (ok + failed) as f64 / elapsed.as_secs_f64(),
        max_growth_mib * 1024
    );
    if ok + failed != calls {
        return Err(format!("{} calls did not finish", calls - ok - failed).into());
    }
    if failed != calls / 10 {
        return Err(format!("expected {} NOT_FOUND answers, got {failed}", calls / 10).into());
    }
    if growth > max_growth_mib * 1024 {
        return Err(format!(
            "RSS grew {growth} KiB, more than the {max_growth_mib} MiB bound: a leak?"
        )
        .into());
    }
    Ok(())
}

/// `count <client> <calls> <concurrency> <port> [stream]`: makes exactly
/// `calls` unary calls (or `Generate` streams of 64 messages) and exits, for callgrind / DHAT (run it with N and 2N calls; the
/// difference divided by N is the cost of one call). Prints the counting
/// allocator's allocations per call.
fn count(args: &[String]) -> Result<(), ameide_sdk::layers::BoxError> {
    let (name, calls, concurrency, port, stream) = match args {
        [name, calls, concurrency, port] => (name, calls, concurrency, port, false),
        [name, calls, concurrency, port, kind] if kind == "stream" => {
            (name, calls, concurrency, port, true)
        }
        _ => {
            return Err(
                "usage: ameide-bench count <client> <calls> <concurrency> <port> [stream]".into(),
            );
        }
    };
    let calls: u64 = calls.parse()?;
    let concurrency: u64 = concurrency.parse()?;
    let port: u16 = port.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        let otel = clients::Otel::new();
        let client = clients::build(name, port, &otel, 4).await?;
        client.clone().unary(0).await?;
        let next = Arc::new(AtomicU64::new(0));
        let before = alloc::snapshot().0;
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (mut client, next) = (client.clone(), next.clone());
            tasks.push(tokio::task::spawn_local(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= calls {
                        return Ok::<_, tonic::Status>(());
                    }
                    if stream {
                        client.stream(n, 64).await?;
                    } else {
                        client.unary(n).await?;
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let allocs = alloc::snapshot().0 - before;
        eprintln!(
            "{name}: {calls} calls, {:.1} allocations/call",
            allocs as f64 / calls.max(1) as f64
        );
        Ok::<_, ameide_sdk::layers::BoxError>(())
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("count") => count(&args[1..]),
        Some("server") => server::serve(
            args.get(1).map(String::as_str),
            args.get(2).map(String::as_str),
        ),
        Some("soak") => soak(&args[1..]),
        Some("run") => run::parse(&args[1..])
            .map_err(Into::into)
            .and_then(run::run),
        _ => Err("usage: ameide-bench run|soak|count|server (see the crate docs)".into()),
    };
    if let Err(e) = result {
        eprintln!("ameide-bench: {e}");
        std::process::exit(1);
    }
}
