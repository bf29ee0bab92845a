//! `ameide-bench run`: every client at every concurrency, unary and
//! streaming, interleaved in rounds, plus the peer clients; writes
//! `report.json` and `report.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients::{self, Otel};
use crate::measure::{self, Kind, Sample};
use crate::peers;

pub struct Options {
    pub duration: Duration,
    pub rounds: usize,
    pub concurrency: Vec<usize>,
    pub clients: Vec<String>,
    /// Messages per `Generate` stream; 0 skips the streaming table.
    pub stream_messages: i32,
    pub pool: usize,
    pub peers: Vec<String>,
    /// Where the peers are installed (project-local).
    pub peer_cache: PathBuf,
    /// A JSON file with build timings (written by `cargo xtask bench`).
    pub build_cost: Option<PathBuf>,
    pub out: PathBuf,
    pub command: String,
    /// Also count instructions per unary call under callgrind (when valgrind exists).
    pub instructions: bool,
    /// Rounds of the paired target phase (`raw+headers` and `sdk` alone,
    /// ABBA); 0 skips it.
    pub target_rounds: usize,
    /// The window of one client in one round of the target phase.
    pub target_window: Duration,
    /// Rounds of the balancing phase (`sdk` over 1 and over 4 backends,
    /// ABBA); 0 skips it.
    pub balancing_rounds: usize,
    /// Rounds of the tail-latency phase (issue 27); 0 skips it.
    pub tail_rounds: usize,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .map(str::to_owned)
        .collect()
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let root = crate::workspace_root();
    let mut options = Options {
        duration: Duration::from_millis(1500),
        rounds: 3,
        concurrency: vec![1, 64, 256, 1024],
        clients: clients::ALL.iter().map(|s| s.to_string()).collect(),
        stream_messages: 64,
        pool: 4,
        peers: vec!["python".into(), "node".into()],
        peer_cache: root.join(".cache/interop"),
        build_cost: None,
        out: root.join("target/bench"),
        command: std::env::var("AMEIDE_BENCH_COMMAND")
            .unwrap_or_else(|_| format!("ameide-bench run {}", args.join(" "))),
        instructions: true,
        target_rounds: 31,
        target_window: Duration::from_millis(500),
        balancing_rounds: 3,
        tail_rounds: 3,
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
                options.concurrency = list(value()?)
                    .iter()
                    .map(|c| match c.parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(format!("bad concurrency {c:?}: a count ≥ 1")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--clients" => {
                options.clients = list(value()?);
                if let Some(bad) = options
                    .clients
                    .iter()
                    .find(|c| !clients::ALL.contains(&c.as_str()))
                {
                    return Err(format!(
                        "unknown client {bad:?} (known: {})",
                        clients::ALL.join(", ")
                    ));
                }
            }
            "--stream-messages" => {
                options.stream_messages = match value()?.parse::<i32>() {
                    Ok(n) if (0..=100_000).contains(&n) => n,
                    _ => return Err("--stream-messages takes 0..=100000".into()),
                }
            }
            "--pool" => {
                options.pool = match value()?.parse::<usize>() {
                    Ok(n) if (1..=64).contains(&n) => n,
                    _ => return Err("--pool takes a connection count within 1..=64".into()),
                }
            }
            "--peers" => {
                options.peers = list(value()?);
                if let Some(bad) = options
                    .peers
                    .iter()
                    .find(|p| *p != "python" && *p != "node")
                {
                    return Err(format!("unknown peer {bad:?} (known: python, node, none)"));
                }
            }
            "--peer-cache" => options.peer_cache = value()?.into(),
            "--build-cost" => options.build_cost = Some(value()?.into()),
            "--out" => options.out = value()?.into(),
            "--no-instructions" => options.instructions = false,
            "--balancing-rounds" => {
                options.balancing_rounds = value()?
                    .parse()
                    .map_err(|_| "--balancing-rounds takes a count (0 skips the phase)")?
            }
            "--tail-rounds" => {
                options.tail_rounds = value()?
                    .parse()
                    .map_err(|_| "--tail-rounds takes a count (0 skips the phase)")?
            }
            "--target-rounds" => {
                options.target_rounds = value()?
                    .parse()
                    .map_err(|_| "--target-rounds takes a count (0 skips the phase)")?
            }
            "--target-window-ms" => {
                let ms: u64 = value()?
                    .parse()
                    .map_err(|_| "--target-window-ms takes milliseconds")?;
                options.target_window = Duration::from_millis(ms.max(50));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.rounds == 0 || options.concurrency.is_empty() || options.clients.is_empty() {
        return Err("need at least one round, one concurrency level and one client".into());
    }
    if !options.clients.iter().any(|c| c == "raw") {
        return Err("--clients must include raw: every figure is a ratio to it".into());
    }
    Ok(options)
}

fn sample_json(s: &Sample, raw: &Sample, items: &str, item: &str) -> Value {
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        format!("{items}_per_s"): s.rate.round(),
        "ratio_to_raw": r3(s.rate / raw.rate),
        format!("cpu_us_per_{item}"): r2(s.cpu_us_per_item),
        "cpu_ratio_to_raw": r3(s.cpu_us_per_item / raw.cpu_us_per_item),
        format!("allocs_per_{item}"): r2(s.allocs_per_item),
        format!("allocs_per_{item}_minus_raw"): r2(s.allocs_per_item - raw.allocs_per_item),
        format!("bytes_allocated_per_{item}"): s.bytes_per_item.round(),
        "p50_us": r2(s.p50_us),
        "p99_us": r2(s.p99_us),
    })
}

/// The levels the targets are set at.
const TARGET_LEVELS: [usize; 2] = [1, 64];

/// The target phase: `sdk` and the floor alone, `target_rounds` rounds of
/// one window each in ABBA order (floor first in even rounds, `sdk` first in
/// odd ones), at the target levels, for each kind. Two windows of one round
/// run back to back, so the machine's drift (minutes) cancels out of their
/// ratio, and the median of many such ratios is what the targets report.
/// Skipped unless both clients are measured.
async fn target_phase(
    options: &Options,
    built: &[(&str, clients::Typed)],
    kinds: &[(&'static str, Kind)],
    out: &mut serde_json::Map<String, Value>,
) -> Result<(), ameide_sdk::layers::BoxError> {
    let find = |name: &str| built.iter().position(|(n, _)| *n == name);
    let (Some(floor), Some(sdk)) = (find(FLOOR), find("sdk")) else {
        return Ok(());
    };
    if options.target_rounds == 0 {
        return Ok(());
    }
    for &(kind_name, kind) in kinds {
        let mut levels = serde_json::Map::new();
        for level in TARGET_LEVELS {
            let (mut floor_runs, mut sdk_runs) = (Vec::new(), Vec::new());
            for round in 0..options.target_rounds {
                let order = if round % 2 == 0 {
                    [floor, sdk]
                } else {
                    [sdk, floor]
                };
                for k in order {
                    let (name, client) = &built[k];
                    let sample = measure::window(client, kind, level, options.target_window)
                        .await
                        .map_err(|e| format!("target phase: {name} {kind_name} at {level}: {e}"))?;
                    if k == floor {
                        floor_runs.push(sample);
                    } else {
                        sdk_runs.push(sample);
                    }
                }
            }
            let paired = paired_json(&sdk_runs, &floor_runs);
            eprintln!(
                "target {kind_name:>6} c={level:<3} sdk ÷ {FLOOR}: rate {} cpu {} ({} rounds)",
                paired["rate_ratio"], paired["cpu_ratio"], options.target_rounds
            );
            levels.insert(level.to_string(), paired);
        }
        out.insert(kind_name.to_owned(), Value::Object(levels));
    }
    Ok(())
}

/// The balancing phase (issue 26): the `sdk` client through a `static:`
/// target over 4 backend processes (127.0.0.2–5) against the same client
/// over 1 (a one-entry list, so both go through the balancer), round-robin,
/// at 64 in flight, ABBA rounds; and how evenly the 4 backends shared the
/// calls. The backends share the server core, as the single one has it alone:
/// the ratio is the cost of balancing over 4 connections, not 4x capacity.
async fn balancing_phase(options: &Options) -> Result<Value, ameide_sdk::layers::BoxError> {
    const IN_FLIGHT: usize = 64;
    if options.balancing_rounds == 0 {
        return Ok(Value::Null);
    }
    let mut servers = Vec::new();
    for octet in 2..=5 {
        servers.push(crate::Server::start_at(&format!("127.0.0.{octet}:0"))?);
    }
    let entries: Vec<String> = servers
        .iter()
        .zip(2..)
        .map(|(s, octet)| format!("127.0.0.{octet}:{}", s.port))
        .collect();
    let one = clients::sdk_at(&format!("static:///{}", entries[0]))?;
    let four = clients::sdk_at(&format!("static:///{}", entries.join(",")))?;
    let warm = Duration::from_millis(300);
    for client in [&one, &four] {
        measure::window(client, Kind::Unary, 8, warm)
            .await
            .map_err(|e| format!("balancing warm-up: {e}"))?;
    }
    let (mut one_runs, mut four_runs) = (Vec::new(), Vec::new());
    let mut spread = [0u64; 4];
    for round in 0..options.balancing_rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for is_four in order {
            let before: Vec<u64> = servers
                .iter_mut()
                .map(crate::Server::calls)
                .collect::<Result<_, _>>()?;
            let client = if is_four { &four } else { &one };
            let sample = measure::window(client, Kind::Unary, IN_FLIGHT, options.duration)
                .await
                .map_err(|e| format!("balancing phase: {e}"))?;
            if is_four {
                for (k, server) in servers.iter_mut().enumerate() {
                    spread[k] += server.calls()? - before[k];
                }
                four_runs.push(sample);
            } else {
                one_runs.push(sample);
            }
        }
    }
    let (one, four) = (measure::median(&one_runs), measure::median(&four_runs));
    let mean = spread.iter().sum::<u64>() as f64 / 4.0;
    let deviation = spread
        .iter()
        .map(|&n| (n as f64 - mean).abs() / mean.max(1.0) * 100.0)
        .fold(0.0, f64::max);
    let ratio = four.rate / one.rate.max(1.0);
    eprintln!(
        "balancing c={IN_FLIGHT}: 1 backend {:.0}/s, 4 backends {:.0}/s ({ratio:.2}x), spread {spread:?} (max {deviation:.1} % from even)",
        one.rate, four.rate
    );
    Ok(json!({
        "concurrency": IN_FLIGHT,
        "rounds": options.balancing_rounds,
        "one_backend_calls_per_s": one.rate.round(),
        "four_backends_calls_per_s": four.rate.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "cpu_us_per_call_one": (one.cpu_us_per_item * 100.0).round() / 100.0,
        "cpu_us_per_call_four": (four.cpu_us_per_item * 100.0).round() / 100.0,
        "calls_per_backend": spread,
        "max_deviation_pct": (deviation * 10.0).round() / 10.0,
    }))
}

/// The tail-latency phase (issue 27): the `sdk` client, round-robin over 4
/// loopback backends, `CALLERS` in flight, three ways in each round: over 4
/// ordinary backends (the baseline); with one of them replaced by a slow
/// one (every `SLOW_EVERY`-th of its calls waits `SLOW_MS`: 5 % of its
/// calls, 1.25 % of all); and the same with hedging (2 attempts, the
/// hedging delay the baseline's p90 of that round). Latency percentiles
/// and the backend load (attempts the backends served per call completed).
async fn tail_phase(options: &Options) -> Result<Value, ameide_sdk::layers::BoxError> {
    const CALLERS: usize = 8;
    const SLOW_EVERY: u64 = 20;
    const SLOW_MS: u64 = 20;
    if options.tail_rounds == 0 {
        return Ok(Value::Null);
    }
    let mut servers = Vec::new();
    for octet in 2..=5 {
        servers.push(crate::Server::start_at(&format!("127.0.0.{octet}:0"))?);
    }
    servers.push(crate::Server::start_slow(
        "127.0.0.6:0",
        SLOW_EVERY,
        SLOW_MS,
    )?);
    let entry = |i: usize| format!("127.0.0.{}:{}", i + 2, servers[i].port);
    let even = format!(
        "static:///{}",
        (0..4).map(entry).collect::<Vec<_>>().join(",")
    );
    let with_slow = format!("static:///{}", [0, 1, 2, 4].map(entry).join(","));
    let baseline = clients::sdk_at(&even)?;
    let slow = clients::sdk_at(&with_slow)?;
    let warm = Duration::from_millis(300);
    for client in [&baseline, &slow] {
        measure::window(client, Kind::Unary, CALLERS, warm)
            .await
            .map_err(|e| format!("tail warm-up: {e}"))?;
    }
    let served = |servers: &mut Vec<crate::Server>| -> Result<u64, ameide_sdk::layers::BoxError> {
        let mut total = 0;
        for server in servers.iter_mut() {
            total += server.calls()?;
        }
        Ok(total)
    };
    let (mut base_runs, mut slow_runs, mut hedged_runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut base_load, mut slow_load, mut hedged_load) = (Vec::new(), Vec::new(), Vec::new());
    let mut delays = Vec::new();
    for _ in 0..options.tail_rounds {
        let before = served(&mut servers)?;
        let sample = measure::window(&baseline, Kind::Unary, CALLERS, options.duration)
            .await
            .map_err(|e| format!("tail baseline: {e}"))?;
        base_load.push((served(&mut servers)? - before) as f64 / sample.completed.max(1) as f64);
        // The hedging delay: the baseline's p90 of this round (µs), at least 50 µs.
        let delay = Duration::from_micros((sample.p90_us.max(50.0)) as u64);
        delays.push(delay.as_micros() as f64);
        base_runs.push(sample);

        let before = served(&mut servers)?;
        let sample = measure::window(&slow, Kind::Unary, CALLERS, options.duration)
            .await
            .map_err(|e| format!("tail without hedging: {e}"))?;
        slow_load.push((served(&mut servers)? - before) as f64 / sample.completed.max(1) as f64);
        slow_runs.push(sample);

        let hedged =
            clients::sdk_hedged(&with_slow, ameide_sdk::layers::HedgingPolicy::new(2, delay))?;
        measure::window(&hedged, Kind::Unary, CALLERS, warm)
            .await
            .map_err(|e| format!("tail hedged warm-up: {e}"))?;
        let before = served(&mut servers)?;
        let sample = measure::window(&hedged, Kind::Unary, CALLERS, options.duration)
            .await
            .map_err(|e| format!("tail with hedging: {e}"))?;
        hedged_load.push((served(&mut servers)? - before) as f64 / sample.completed.max(1) as f64);
        hedged_runs.push(sample);
    }
    let (base, without, with) = (
        measure::median(&base_runs),
        measure::median(&slow_runs),
        measure::median(&hedged_runs),
    );
    let load = |v: Vec<f64>| (measure::median_of(v) * 1000.0).round() / 1000.0;
    let (base_load, slow_load, hedged_load) = (load(base_load), load(slow_load), load(hedged_load));
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let row = |s: &Sample, load: f64| {
        json!({
            "calls_per_s": s.rate.round(),
            "p50_us": r2(s.p50_us),
            "p95_us": r2(s.p95_us),
            "p99_us": r2(s.p99_us),
            "p999_us": r2(s.p999_us),
            "backend_load": load,
        })
    };
    let p99_ratio = with.p99_us / base.p99_us.max(1.0);
    let load_ratio = hedged_load / base_load.max(0.001);
    eprintln!(
        "tail c={CALLERS}: p99 {:.0} µs (no slow backend), {:.0} µs (slow, no hedging), {:.0} µs (slow, hedging: {p99_ratio:.2}x); load {base_load} / {slow_load} / {hedged_load} ({load_ratio:.3}x)",
        base.p99_us, without.p99_us, with.p99_us
    );
    Ok(json!({
        "callers": CALLERS,
        "rounds": options.tail_rounds,
        "slow_every": SLOW_EVERY,
        "slow_ms": SLOW_MS,
        "hedging_delay_us": measure::median_of(delays).round(),
        "no_slow_backend": row(&base, base_load),
        "slow_without_hedging": row(&without, slow_load),
        "slow_with_hedging": row(&with, hedged_load),
        "p99_hedged_over_no_slow": (p99_ratio * 1000.0).round() / 1000.0,
        "load_hedged_over_no_slow": (load_ratio * 1000.0).round() / 1000.0,
    }))
}

/// The floor the targets are measured against (issue 16).
pub const FLOOR: &str = "raw+headers";

/// The client's rate and CPU over `floor`'s, round by round (the two windows
/// of one round ran seconds apart at most), and the median of those ratios:
/// less moved by the machine's drift between rounds than the ratio of the
/// two medians.
fn paired_json(client: &[Sample], floor: &[Sample]) -> Value {
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let rate: Vec<f64> = client
        .iter()
        .zip(floor)
        .map(|(c, f)| c.rate / f.rate)
        .collect();
    let cpu: Vec<f64> = client
        .iter()
        .zip(floor)
        .map(|(c, f)| c.cpu_us_per_item / f.cpu_us_per_item)
        .collect();
    json!({
        "rate_ratio": r3(measure::median_of(rate.clone())),
        "cpu_ratio": r3(measure::median_of(cpu.clone())),
        "rate_ratios": rate.into_iter().map(r3).collect::<Vec<_>>(),
        "cpu_ratios": cpu.into_iter().map(r3).collect::<Vec<_>>(),
    })
}

fn read_first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

fn machine(pinned: bool) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let memory = read_first_line("/proc/meminfo");
    json!({
        "cores": crate::cores(),
        "cpu": cpu,
        "memory": memory
            .split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB RAM", kb / 1024.0 / 1024.0))
            .unwrap_or_default(),
        "kernel": read_first_line("/proc/sys/kernel/osrelease"),
        "pinned": pinned,
    })
}

const CRATES: &[&str] = &[
    "tonic",
    "h2",
    "hyper",
    "tokio",
    "prost",
    "opentelemetry_sdk",
    "tower",
];

/// Versions of the crates that matter, from the workspace's Cargo.lock.
fn crate_versions() -> Value {
    let lock =
        std::fs::read_to_string(crate::workspace_root().join("Cargo.lock")).unwrap_or_default();
    let mut found = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && CRATES.contains(&n.as_str())
        {
            found.insert(n, v.trim_matches('"').to_owned());
        }
    }
    json!(found)
}

fn rustc_version() -> String {
    std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn run(options: Options) -> Result<(), ameide_sdk::layers::BoxError> {
    let root = crate::workspace_root();
    // Peers first: an install failure is reported before minutes of measuring.
    let mut peers = Vec::new();
    for name in &options.peers {
        eprintln!(
            "preparing the {name} peer (installs once into {})",
            options.peer_cache.display()
        );
        peers.push(peers::prepare(name, &root, &options.peer_cache)?);
    }
    crate::cores(); // read before pinning
    let server = crate::Server::start()?;
    let port = server.port;
    let pinned = crate::pin_client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let otel = Otel::new();
    let mut kinds = vec![("unary", Kind::Unary)];
    if options.stream_messages > 0 {
        kinds.push(("stream", Kind::Stream(options.stream_messages)));
    }
    let mut report: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut spans_expected = 0u64;
    let mut paired_targets = serde_json::Map::new();
    let mut balancing = Value::Null;
    let mut tail = Value::Null;
    runtime.block_on(tokio::task::LocalSet::new().run_until(async {
        let mut built = Vec::new();
        for name in &options.clients {
            let mut client = clients::build(name, port, &otel, options.pool).await?;
            client.unary(0).await?; // connect before measuring
            if name.contains("otel") {
                spans_expected += 1;
            }
            built.push((name.as_str(), client));
        }
        for &(kind_name, kind) in &kinds {
            let (items, item) = if kind_name == "unary" {
                ("calls", "call")
            } else {
                ("messages", "message")
            };
            for &concurrency in &options.concurrency {
                let mut runs: Vec<Vec<Sample>> = vec![Vec::new(); built.len()];
                for round in 0..options.rounds {
                    // Every other round runs the clients in reverse order, so
                    // a drift of the machine during a round weighs on the
                    // first and last clients alike.
                    let order: Vec<usize> = if round % 2 == 0 {
                        (0..built.len()).collect()
                    } else {
                        (0..built.len()).rev().collect()
                    };
                    for k in order {
                        let (name, client) = &built[k];
                        let sample = measure::window(client, kind, concurrency, options.duration)
                            .await
                            .map_err(|e| format!("{name} {kind_name} at {concurrency}: {e}"))?;
                        runs[k].push(sample);
                    }
                }
                let medians: Vec<Sample> = runs.iter().map(|r| measure::median(r)).collect();
                let raw = medians[0];
                let mut row = serde_json::Map::new();
                let floor = built.iter().position(|(name, _)| *name == FLOOR);
                for (k, (name, _)) in built.iter().enumerate() {
                    let mut cell = sample_json(&medians[k], &raw, items, item);
                    if let Some(f) = floor {
                        cell[format!("paired_to_{FLOOR}")] = paired_json(&runs[k], &runs[f]);
                    }
                    row.insert(name.to_string(), cell);
                }
                let mut line = format!("{kind_name:>6} c={concurrency:<5}");
                for (k, (name, _)) in built.iter().enumerate() {
                    line.push_str(&format!(
                        " {name} {:.0}/s {:.2}µs {:.1}a",
                        medians[k].rate, medians[k].cpu_us_per_item, medians[k].allocs_per_item
                    ));
                }
                eprintln!("{line}");
                if kind_name == "unary" {
                    let mut peer_rows = serde_json::Map::new();
                    for peer in &peers {
                        let samples = peer.run(
                            port,
                            concurrency,
                            options.duration,
                            options.rounds,
                            pinned.then_some(0),
                        )?;
                        let median = measure::median(&samples);
                        let (rate, cpu) = (median.rate, median.cpu_us_per_item);
                        eprintln!("        {} {rate:.0}/s {cpu:.2}µs", peer.name);
                        peer_rows.insert(
                            peer.name.into(),
                            json!({
                                "calls_per_s": rate.round(),
                                "ratio_to_raw": (rate / raw.rate * 1000.0).round() / 1000.0,
                                "cpu_us_per_call": (cpu * 100.0).round() / 100.0,
                            }),
                        );
                    }
                    if !peer_rows.is_empty() {
                        row.insert("peers".into(), Value::Object(peer_rows));
                    }
                }
                report.entry(kind_name).or_default().push(json!({
                    "concurrency": concurrency,
                    "clients": row,
                }));
            }
        }
        target_phase(&options, &built, &kinds, &mut paired_targets).await?;
        balancing = balancing_phase(&options).await?;
        tail = tail_phase(&options).await?;
        Ok::<_, ameide_sdk::layers::BoxError>(())
    }))?;
    let (instructions, footprint) = if options.instructions && valgrind_available() {
        (
            instruction_counts(&options.clients, port),
            footprint_counts(&options.clients, port),
        )
    } else {
        if options.instructions {
            eprintln!("valgrind not found: no instruction counts, no footprint");
        }
        (Value::Null, Value::Null)
    };
    drop(server);
    let _ = otel.provider.force_flush();
    let build_cost = match &options.build_cost {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => Value::Null,
    };
    let report = json!({
        "benchmark": "ameide-bench run: loopback, one tonic server process (1 worker thread), one single-threaded client runtime",
        "date": utc_now(),
        "command": options.command,
        "machine": machine(pinned),
        "versions": {
            "rustc": rustc_version(),
            "crates": crate_versions(),
            "peers": peers.iter().map(|p| (p.name, p.runtime_version.clone())).collect::<BTreeMap<_, _>>(),
        },
        "settings": {
            "duration_ms": options.duration.as_millis() as u64,
            "rounds": options.rounds,
            "concurrency": options.concurrency,
            "stream_messages": options.stream_messages,
            "pool_connections": options.pool,
            "clients": options.clients,
        },
        "otel_spans_exported": otel.exported(),
        "otel_clients": spans_expected,
        "unary": report.get("unary"),
        "stream": report.get("stream"),
        "build": build_cost,
        "instructions_per_call": instructions,
        "footprint_at_1": footprint,
        "balancing": balancing,
        "tail_latency": tail,
        "targets_paired": if paired_targets.is_empty() {
            Value::Null
        } else {
            json!({
                "floor": FLOOR,
                "rounds": options.target_rounds,
                "window_ms": options.target_window.as_millis() as u64,
                "by_kind": Value::Object(paired_targets),
            })
        },
    });
    std::fs::create_dir_all(&options.out)?;
    let json_path = options.out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let md = crate::report::markdown(&report);
    std::fs::write(options.out.join("report.md"), &md)?;
    println!("{md}");
    println!("wrote {} and report.md", json_path.display());
    Ok(())
}

/// Runs `ameide-bench count <client> <calls> <in_flight> <port> [stream]`
/// under valgrind's `tool` and returns the summary counts it prints on
/// stderr (`I refs`, `I1  misses`, …: the first number of each line).
fn valgrind_summary(
    tool_args: &[&str],
    client: &str,
    calls: u64,
    in_flight: u64,
    port: u16,
    stream: bool,
) -> Option<BTreeMap<String, u64>> {
    let exe = std::env::current_exe().ok()?;
    let output = std::process::Command::new("valgrind")
        .args(tool_args)
        .arg(&exe)
        .args(["count", client, &calls.to_string(), &in_flight.to_string()])
        .arg(port.to_string())
        .args(stream.then_some("stream"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let counts: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|line| {
            // "==123== I1  misses:   2,250,854" or "… D1  misses: 574,428 ( 339,000 rd + …"
            let (label, rest) = line.split_once("== ")?.1.split_once(':')?;
            let first = rest.split_whitespace().next()?.replace(',', "");
            Some((
                label.split_whitespace().collect::<Vec<_>>().join(" "),
                first.parse().ok()?,
            ))
        })
        .collect();
    (!counts.is_empty()).then_some(counts)
}

/// Every summary count of `valgrind_summary` per call (or per stream): runs
/// of `n` and `3n` and the difference ÷ 2n, so start-up cancels out. Counts
/// that did not grow are left out.
fn per_call_counts(
    tool_args: &[&str],
    client: &str,
    n: u64,
    in_flight: u64,
    port: u16,
    stream: bool,
) -> Option<BTreeMap<String, f64>> {
    let a = valgrind_summary(tool_args, client, n, in_flight, port, stream)?;
    let b = valgrind_summary(tool_args, client, 3 * n, in_flight, port, stream)?;
    Some(
        b.into_iter()
            .filter_map(|(label, after)| {
                let grown = after.checked_sub(*a.get(&label)?).filter(|d| *d > 0)?;
                Some((label, grown as f64 / (2 * n) as f64))
            })
            .collect(),
    )
}

fn valgrind_available() -> bool {
    std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok()
}

/// Instructions per unary call of each client, from two `valgrind
/// --tool=callgrind` runs of `ameide-bench count` (N and 3N calls, 16 in
/// flight): the difference ÷ 2N, so start-up cancels out. Deterministic for
/// a given binary, unlike wall-clock rates on a shared machine.
fn instruction_counts(clients: &[String], port: u16) -> Value {
    const N: u64 = 500;
    let tool = ["--tool=callgrind", "--callgrind-out-file=/dev/null"];
    let mut out = serde_json::Map::new();
    for client in clients {
        match per_call_counts(&tool, client, N, 16, port, false)
            .and_then(|counts| counts.get("I refs").copied())
        {
            Some(per_call) => {
                eprintln!("instructions: {client} {per_call:.0}/call");
                out.insert(client.clone(), json!(per_call.round()));
            }
            None => eprintln!("instructions: {client}: callgrind gave no count"),
        }
    }
    Value::Object(out)
}

/// The code and data a call touches at 1 in flight, for the floor and
/// `sdk`: instructions and the misses of cachegrind's simulated first-level
/// caches (I1, D1) per unary call and per stream, from
/// two runs each (N and 3N) as above. A client that sleeps between calls
/// starts every call with cold caches, so at 1 in flight its time follows
/// these misses more than its instruction count. Exact like the instruction
/// counts, but a simulation: it models neither the kernel's own use of the
/// caches nor the real machine's prefetchers.
fn footprint_counts(clients: &[String], port: u16) -> Value {
    const EVENTS: [(&str, &str); 3] = [
        ("I refs", "instructions"),
        ("I1 misses", "i1_misses"),
        ("D1 misses", "d1_misses"),
    ];
    let tool = [
        "--tool=cachegrind",
        "--cache-sim=yes",
        "--cachegrind-out-file=/dev/null",
    ];
    let mut out = serde_json::Map::new();
    for client in [FLOOR, "sdk"] {
        if !clients.iter().any(|c| c == client) {
            continue;
        }
        let mut kinds = serde_json::Map::new();
        for (kind, n, stream) in [("unary", 500, false), ("stream", 100, true)] {
            let Some(counts) = per_call_counts(&tool, client, n, 1, port, stream) else {
                eprintln!("footprint: {client} {kind}: cachegrind gave no counts");
                continue;
            };
            let per: serde_json::Map<String, Value> = EVENTS
                .iter()
                .filter_map(|(label, key)| {
                    Some((key.to_string(), json!(counts.get(*label)?.round())))
                })
                .collect();
            eprintln!("footprint: {client} {kind} {}", Value::Object(per.clone()));
            kinds.insert(kind.into(), Value::Object(per));
        }
        out.insert(client.into(), Value::Object(kinds));
    }
    Value::Object(out)
}
