//! `ameide-bench`: unary throughput of `AmeideClient` (every layer on, tracing
//! recorded and exported to a no-op exporter) against a raw tonic client on a
//! plain `Channel`, in one run, against one loopback server process.
//!
//! ```text
//! ameide-bench run [--duration-ms N] [--rounds N] [--concurrency 1,64] [--pool N] [--out DIR]
//! ameide-bench server            # internal: serves GraphService.GetRepository, prints the port
//! ```
//!
//! Each (client, concurrency) cell is measured `rounds` times, interleaved
//! (raw, sdk, raw, sdk, …) so drift on a shared machine hits both alike; the
//! median calls/s is reported with the ratio SDK / raw. When `taskset` exists
//! the server is pinned to the last core and the client to the first.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ameide_sdk::proto::graph::v1::graph_service_client::GraphServiceClient;
use ameide_sdk::proto::graph::v1::graph_service_server::{GraphService, GraphServiceServer};
use ameide_sdk::proto::graph::v1::{GetRepositoryRequest, GetRepositoryResponse, Repository};
use ameide_sdk::{AmeideChannel, AmeideClient};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The measured client: every layer on, tracing into `provider` unless
/// `AMEIDE_BENCH_VARIANT` contains `notrace`; no retry with `noretry`.
fn sdk_client(
    endpoint: &str,
    provider: &SdkTracerProvider,
    connections: Option<usize>,
) -> Result<AmeideClient, ameide_sdk::ConfigError> {
    let variant = std::env::var("AMEIDE_BENCH_VARIANT").unwrap_or_default();
    let mut builder = AmeideClient::builder()
        .endpoint(endpoint)
        .tenant_id("bench-tenant")
        .user_id("bench-user")
        .session_id("bench-session")
        .bearer_token("bench-token");
    if !variant.contains("notrace") {
        builder = builder.tracer_provider(provider);
    }
    if variant.contains("noretry") {
        builder = builder.retry_policy(ameide_sdk::layers::RetryPolicy::disabled());
    }
    if let Some(n) = connections.or_else(|| {
        std::env::var("AMEIDE_BENCH_CONNECTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
    }) {
        builder = builder.transport_options(ameide_sdk::TransportOptions {
            connections: n,
            ..Default::default()
        });
    }
    builder.build()
}

struct Echo;

#[tonic::async_trait]
impl GraphService for Echo {
    async fn get_repository(
        &self,
        request: Request<GetRepositoryRequest>,
    ) -> Result<Response<GetRepositoryResponse>, Status> {
        let id = request.into_inner().repository_id;
        if id.starts_with("soak-") && id.ends_with('0') {
            return Err(Status::not_found(format!("repository {id} does not exist")));
        }
        Ok(Response::new(GetRepositoryResponse {
            repository: Some(Repository {
                repository_id: id,
                key: "bench".into(),
                display_name: "Benchmark repository".into(),
                ..Default::default()
            }),
        }))
    }
}

fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        tonic::transport::Server::builder()
            .add_service(GraphServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    })
}

/// Exports nothing: spans are still created, recorded and handed to the processor.
#[derive(Debug)]
struct NoopExporter;

impl SpanExporter for NoopExporter {
    async fn export(&self, _batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

#[derive(Clone)]
enum Client {
    Raw(GraphServiceClient<Channel>),
    /// Raw tonic sending, by hand, the metadata the contract puts on the wire.
    RawHeaders(GraphServiceClient<Channel>),
    Sdk(GraphServiceClient<AmeideChannel>),
}

fn sensitive(value: String) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    let mut v: tonic::metadata::MetadataValue<_> = value.parse().expect("ascii");
    v.set_sensitive(true);
    v
}

impl Client {
    async fn call(&mut self, n: u64) -> Result<(), Status> {
        let request = GetRepositoryRequest {
            repository_id: format!("repo-{n}"),
            ..Default::default()
        };
        match self {
            Client::Raw(c) if std::env::var_os("AMEIDE_BENCH_RAW_TIMEOUT").is_some() => {
                let mut request = Request::new(request);
                request.set_timeout(Duration::from_secs(5));
                c.get_repository(request).await.map(|_| ())
            }
            Client::Raw(c) => c.get_repository(request).await.map(|_| ()),
            Client::RawHeaders(c) => {
                let mut request = Request::new(request);
                request.set_timeout(Duration::from_secs(5));
                let m = request.metadata_mut();
                m.insert("x-tenant-id", "bench-tenant".parse().expect("ascii"));
                m.insert("x-user-id", "bench-user".parse().expect("ascii"));
                m.insert("authorization", sensitive("Bearer bench-token".into()));
                m.insert(
                    "x-request-id",
                    sensitive(format!("{:032x}", n as u128 * 0x9e3779b97f4a7c15)),
                );
                m.insert(
                    "traceparent",
                    sensitive(format!(
                        "00-{:032x}-{:016x}-01",
                        n as u128 * 0x9e37_79b9_7f4a_7c15,
                        n + 1
                    )),
                );
                m.insert(
                    "baggage",
                    "ameide.session_id=bench-session".parse().expect("ascii"),
                );
                c.get_repository(request).await.map(|_| ())
            }
            Client::Sdk(c) => c.get_repository(request).await.map(|_| ()),
        }
    }
}

/// CPU time of the calling thread, in ns (Linux; 0 elsewhere). The client
/// runtime is single-threaded, so this is all of the client's work: layers,
/// tonic, h2 and the socket writes.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One measurement window: calls/s and client CPU µs per call.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rate: f64,
    cpu_us_per_call: f64,
}

async fn measure(client: &Client, concurrency: usize, duration: Duration) -> Sample {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut client = client.clone();
        let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                match client.call(n).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        }));
    }
    // Warm up, then count only the measured window.
    tokio::time::sleep(duration / 5).await;
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = thread_cpu_ns();
    tokio::time::sleep(duration).await;
    let count = done.load(Ordering::Relaxed) - before;
    let cpu = thread_cpu_ns() - cpu_before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failed = errors.load(Ordering::Relaxed);
    assert!(failed == 0, "{failed} calls failed during the benchmark");
    Sample {
        rate: count as f64 / elapsed.as_secs_f64(),
        cpu_us_per_call: cpu as f64 / 1000.0 / count.max(1) as f64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct Options {
    duration: Duration,
    rounds: usize,
    concurrency: Vec<usize>,
    /// Also measure an `AmeideClient` over this many connections (`--pool N`).
    pool: Option<usize>,
    out: std::path::PathBuf,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        duration: Duration::from_millis(3000),
        rounds: 3,
        concurrency: vec![1, 64],
        pool: None,
        out: std::path::PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration-ms" => {
                let ms: u64 = value()?
                    .parse()
                    .map_err(|_| "--duration-ms takes milliseconds")?;
                options.duration = Duration::from_millis(ms.max(50));
            }
            "--rounds" => {
                options.rounds = value()?.parse().map_err(|_| "--rounds takes a count")?
            }
            "--concurrency" => {
                options.concurrency = value()?
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("bad concurrency {c:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--pool" => {
                let n: usize = value()?
                    .parse()
                    .map_err(|_| "--pool takes a connection count")?;
                if n == 0 {
                    return Err("--pool needs at least one connection".into());
                }
                options.pool = Some(n);
            }
            "--out" => options.out = value()?.into(),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.rounds == 0 || options.concurrency.is_empty() {
        return Err("need at least one round and one concurrency level".into());
    }
    Ok(options)
}

fn pinned(core: usize) -> Command {
    let exe = std::env::current_exe().expect("own executable");
    if Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let machine_cores = cores();
    let server_core = machine_cores.saturating_sub(1);
    let mut child = pinned(server_core)
        .arg("server")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("server has no stdout")?;
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .map_err(|_| format!("server printed {line:?}"))?;
    let endpoint = format!("http://127.0.0.1:{port}");

    // The client runs on one thread (pinned to core 0 when taskset exists), so
    // "calls/s" is per client core.
    if machine_cores > 1 && Command::new("taskset").arg("-V").output().is_ok() {
        let _ = Command::new("taskset")
            .args(["-p", "-c", "0", &std::process::id().to_string()])
            .output();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let channel = Endpoint::from_shared(endpoint.clone())?.tcp_nodelay(true).connect().await?;
        let raw = Client::Raw(GraphServiceClient::new(channel));
        let channel = Endpoint::from_shared(endpoint.clone())?.tcp_nodelay(true).connect().await?;
        let raw_headers = Client::RawHeaders(GraphServiceClient::new(channel));
        let provider = SdkTracerProvider::builder().with_simple_exporter(NoopExporter).build();
        let sdk = Client::Sdk(sdk_client(&endpoint, &provider, None)?.graph());
        let mut clients = vec![("raw", raw), ("raw+headers", raw_headers), ("sdk", sdk)];
        if let Some(n) = options.pool {
            let pooled = sdk_client(&endpoint, &provider, Some(n))?.graph();
            clients.push(("sdk-pool", Client::Sdk(pooled)));
        }
        // Connect every client before measuring.
        for (_, client) in &clients {
            client.clone().call(0).await?;
        }

        let mut rows = Vec::new();
        for &concurrency in &options.concurrency {
            let mut runs: Vec<Vec<Sample>> = vec![Vec::new(); clients.len()];
            for _ in 0..options.rounds {
                for (k, (_, client)) in clients.iter().enumerate() {
                    runs[k].push(measure(client, concurrency, options.duration).await);
                }
            }
            let rate = |k: usize| median(runs[k].iter().map(|r| r.rate).collect());
            let cpu = |k: usize| median(runs[k].iter().map(|r| r.cpu_us_per_call).collect());
            let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
            eprintln!(
                "concurrency {concurrency:>4}: raw {:>8.0}/s {:>6.2} µs | raw+headers {:>8.0}/s {:>6.2} µs | sdk {:>8.0}/s {:>6.2} µs | sdk/raw {:.3} sdk/raw+headers {:.3}",
                rate(0), cpu(0), rate(1), cpu(1), rate(2), cpu(2),
                rate(2) / rate(0), rate(2) / rate(1)
            );
            if let Some(n) = options.pool {
                eprintln!(
                    "concurrency {concurrency:>4}: sdk over {n} connections {:>8.0}/s | pool/sdk {:.3} pool/raw {:.3}",
                    rate(3), rate(3) / rate(2), rate(3) / rate(0)
                );
            }
            let pool_rate = options.pool.map(|_| rate(3).round());
            rows.push(serde_json::json!({
                "sdk_pool_calls_per_s": pool_rate,
                "concurrency": concurrency,
                "raw_calls_per_s": rate(0).round(),
                "raw_headers_calls_per_s": rate(1).round(),
                "sdk_calls_per_s": rate(2).round(),
                "ratio_sdk_to_raw": round3(rate(2) / rate(0)),
                "ratio_sdk_to_raw_headers": round3(rate(2) / rate(1)),
                "raw_client_cpu_us_per_call": (cpu(0) * 100.0).round() / 100.0,
                "raw_headers_client_cpu_us_per_call": (cpu(1) * 100.0).round() / 100.0,
                "sdk_client_cpu_us_per_call": (cpu(2) * 100.0).round() / 100.0,
                "runs_calls_per_s": clients.iter().enumerate().map(|(k, (name, _))| {
                    (name.to_string(), runs[k].iter().map(|r| r.rate.round()).collect::<Vec<_>>())
                }).collect::<std::collections::BTreeMap<_, _>>(),
            }));
        }
        let _ = provider.shutdown();
        Ok::<_, Box<dyn std::error::Error>>(rows)
    })?;
    drop(server);

    std::fs::create_dir_all(&options.out)?;
    let report = serde_json::json!({
        "benchmark": "unary GraphService.GetRepository, loopback, one server process",
        "cores": machine_cores,
        "pinned": Command::new("taskset").arg("-V").output().is_ok(),
        "duration_ms": options.duration.as_millis() as u64,
        "rounds": options.rounds,
        "pool_connections": options.pool,
        "results": results,
    });
    let json = options.out.join("unary.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let mut md = String::from(
        "| in flight | raw tonic calls/s | raw tonic + contract headers calls/s | AmeideClient calls/s | SDK / raw | SDK / raw + headers | client CPU µs/call (raw / +headers / SDK) |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in report["results"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} / {} / {} |\n",
            row["concurrency"],
            row["raw_calls_per_s"],
            row["raw_headers_calls_per_s"],
            row["sdk_calls_per_s"],
            row["ratio_sdk_to_raw"].as_f64().unwrap_or_default(),
            row["ratio_sdk_to_raw_headers"].as_f64().unwrap_or_default(),
            row["raw_client_cpu_us_per_call"],
            row["raw_headers_client_cpu_us_per_call"],
            row["sdk_client_cpu_us_per_call"],
        ));
    }
    if options.pool.is_some() {
        md.push_str(&pool_table(&report));
    }
    std::fs::write(options.out.join("unary.md"), &md)?;
    println!("{md}");
    println!("wrote {} and unary.md", json.display());
    Ok(())
}

/// Single connection vs pool vs raw tonic, and each column's rate relative
/// to its own rate at 64 in flight (the issue's target: pool at 1,024 ≥ 0.9×).
fn pool_table(report: &serde_json::Value) -> String {
    let rows = report["results"].as_array().cloned().unwrap_or_default();
    let at = |key: &str, c: u64| {
        rows.iter()
            .find(|r| r["concurrency"].as_u64() == Some(c))
            .and_then(|r| r[key].as_f64())
    };
    let pool = report["pool_connections"].as_u64().unwrap_or(0);
    let mut md = format!(
        "\n| in flight | raw tonic calls/s | SDK, 1 connection | SDK, {pool} connections | raw ÷ own@64 | SDK 1 conn ÷ own@64 | SDK pool ÷ own@64 |\n|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for row in &rows {
        let c = row["concurrency"].as_u64().unwrap_or(0);
        let rel = |key: &str| match (at(key, c), at(key, 64)) {
            (Some(x), Some(base)) if base > 0.0 => format!("{:.3}", x / base),
            _ => "–".into(),
        };
        md.push_str(&format!(
            "| {c} | {} | {} | {} | {} | {} | {} |\n",
            row["raw_calls_per_s"],
            row["sdk_calls_per_s"],
            row["sdk_pool_calls_per_s"],
            rel("raw_calls_per_s"),
            rel("sdk_calls_per_s"),
            rel("sdk_pool_calls_per_s"),
        ));
    }
    md
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
/// one AmeideClient (every tenth fails NOT_FOUND, exercising the error path)
/// against the server process; RSS after a warm-up and at the end. Fails when
/// it grew more than M MiB (default 10: a leak of 50 bytes per call over
/// 200k calls would already show).
fn soak(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
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
    let mut child = pinned(cores().saturating_sub(1))
        .arg("server")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("server has no stdout")?;
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let endpoint = format!("http://127.0.0.1:{}", line.trim());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(NoopExporter)
            .build();
        let client = sdk_client(&endpoint, &provider, None)?.graph();
        let run = |total: u64, offset: u64| {
            let client = client.clone();
            async move {
                let next = Arc::new(AtomicU64::new(0));
                let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
                let tasks: Vec<_> = (0..concurrency)
                    .map(|_| {
                        let (mut client, next, ok, failed) =
                            (client.clone(), next.clone(), ok.clone(), failed.clone());
                        tokio::spawn(async move {
                            loop {
                                let n = next.fetch_add(1, Ordering::Relaxed);
                                if n >= total {
                                    break;
                                }
                                let request = GetRepositoryRequest {
                                    repository_id: format!("soak-{}", n + offset),
                                    ..Default::default()
                                };
                                match client.get_repository(request).await {
                                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
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
        let _ = provider.shutdown();
        Ok::<_, Box<dyn std::error::Error>>((ok, failed, start_rss, end_rss, elapsed))
    });
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

/// `count <raw|sdk> <calls> <concurrency> <port>`: makes exactly `calls` calls
/// and exits, for instruction counting under callgrind (run it twice with N and
/// 2N calls; the difference divided by N is the cost of one call).
fn count(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [kind, calls, concurrency, port] = args else {
        return Err("usage: ameide-bench count <raw|sdk> <calls> <concurrency> <port>".into());
    };
    let calls: u64 = calls.parse()?;
    let concurrency: u64 = concurrency.parse()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = match kind.as_str() {
            "rawh" => Client::RawHeaders(GraphServiceClient::new(
                Endpoint::from_shared(endpoint.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            )),
            "raw" => Client::Raw(GraphServiceClient::new(
                Endpoint::from_shared(endpoint.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            )),
            _ => {
                let provider = SdkTracerProvider::builder()
                    .with_simple_exporter(NoopExporter)
                    .build();
                Client::Sdk(sdk_client(&endpoint, &provider, None)?.graph())
            }
        };
        client.clone().call(0).await?;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (mut client, next) = (client.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= calls {
                        break;
                    }
                    client.call(n).await.expect("call");
                }
            }));
        }
        for task in tasks {
            task.await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("count") => count(&args[1..]),
        Some("server") => serve(),
        Some("soak") => soak(&args[1..]),
        Some("run") => parse(&args[1..]).map_err(Into::into).and_then(run),
        _ => Err("usage: ameide-bench run [--duration-ms N] [--rounds N] [--concurrency 1,64] [--out DIR]".into()),
    };
    if let Err(e) = result {
        eprintln!("ameide-bench: {e}");
        std::process::exit(1);
    }
}
