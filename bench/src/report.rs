//! The markdown form of `report.json`: the tables `docs/BENCHMARKS.md` embeds.

use serde_json::Value;

fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

struct Table<'a> {
    rows: Vec<&'a Value>,
    levels: Vec<u64>,
    /// This kind's levels in the paired target phase (null without one).
    target_phase: &'a Value,
}

impl<'a> Table<'a> {
    fn new(report: &'a Value, kind: &str) -> Self {
        let rows: Vec<&Value> = report[kind]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let levels = rows
            .iter()
            .filter_map(|r| r["concurrency"].as_u64())
            .collect();
        let target_phase = &report["targets_paired"]["by_kind"][kind];
        Table {
            rows,
            levels,
            target_phase,
        }
    }

    fn cell(&self, level: u64, client: &str) -> &'a Value {
        self.rows
            .iter()
            .find(|r| r["concurrency"].as_u64() == Some(level))
            .map(|r| {
                let c = &r["clients"][client];
                if c.is_null() {
                    &r["clients"]["peers"][client]
                } else {
                    c
                }
            })
            .unwrap_or(&Value::Null)
    }

    /// `client` over the floor at `level`: from the paired target phase when
    /// the run had one (`sdk` only), else the median of the main rounds'
    /// round-by-round ratios, else the ratio of the two medians.
    fn over_floor(&self, level: u64, client: &str, field: &str, paired: &str) -> f64 {
        let floor = crate::run::FLOOR;
        if client == "sdk" {
            let p = f(&self.target_phase[level.to_string()][paired]);
            if p.is_finite() {
                return p;
            }
        }
        let cell = self.cell(level, client);
        let p = f(&cell[format!("paired_to_{floor}")][paired]);
        if p.is_finite() {
            return p;
        }
        f(&cell[field]) / f(&self.cell(level, floor)[field])
    }

    /// 64 when measured, else the highest level.
    fn reference(&self) -> u64 {
        if self.levels.contains(&64) {
            64
        } else {
            self.levels.iter().copied().max().unwrap_or(0)
        }
    }

    fn header(&self, first: &str, extra: &[&str]) -> String {
        let mut h = format!("| {first} |");
        let mut rule = String::from("|---|");
        for l in &self.levels {
            h.push_str(&format!(" {l} in flight |"));
            rule.push_str("---:|");
        }
        for e in extra {
            h.push_str(&format!(" {e} |"));
            rule.push_str("---:|");
        }
        format!("{h}\n{rule}\n")
    }
}

fn clients(report: &Value) -> Vec<String> {
    report["settings"]["clients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn peers(report: &Value) -> Vec<String> {
    report["versions"]["peers"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn rate_table(report: &Value, kind: &str, item: &str, names: &[String]) -> String {
    let t = Table::new(report, kind);
    let (lo, hi) = (64, t.levels.iter().copied().max().unwrap_or(0));
    let scaling = format!("own @{hi} ÷ own @{lo}");
    let show_scaling = t.levels.contains(&lo) && hi > lo;
    let extra: &[&str] = if show_scaling { &[&scaling] } else { &[] };
    let mut md = t.header(&format!("client ({item}/s, × raw)"), extra);
    for name in names {
        let mut line = format!("| {name} |");
        for &l in &t.levels {
            let c = t.cell(l, name);
            line.push_str(&format!(
                " {} ({:.2}×) |",
                thousands(f(&c[format!("{item}_per_s")])),
                f(&c["ratio_to_raw"])
            ));
        }
        if show_scaling {
            let own = f(&t.cell(hi, name)[format!("{item}_per_s")])
                / f(&t.cell(lo, name)[format!("{item}_per_s")]);
            line.push_str(&if own.is_finite() {
                format!(" {own:.2} |")
            } else {
                " – |".into()
            });
        }
        md.push_str(&line);
        md.push('\n');
    }
    md
}

/// Every table, from a `report.json` value.
pub fn markdown(report: &Value) -> String {
    let names = clients(report);
    let peer_names = peers(report);
    let unary = Table::new(report, "unary");
    let reference = unary.reference();
    let mut md = String::new();

    md.push_str(&format!(
        "Date: {}. Machine: {} cores ({}), {}, kernel {}; client and server pinned to different cores: {}.\n\
         Versions: {}; {}.\nCommand: `{}` ({} ms windows, {} rounds interleaved, median reported).\n\n",
        report["date"].as_str().unwrap_or(""),
        report["machine"]["cores"],
        report["machine"]["cpu"].as_str().unwrap_or(""),
        report["machine"]["memory"].as_str().unwrap_or(""),
        report["machine"]["kernel"].as_str().unwrap_or(""),
        report["machine"]["pinned"],
        report["versions"]["rustc"].as_str().unwrap_or(""),
        report["versions"]["crates"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        report["command"].as_str().unwrap_or(""),
        report["settings"]["duration_ms"],
        report["settings"]["rounds"],
    ));
    for (name, version) in report["versions"]["peers"]
        .as_object()
        .into_iter()
        .flatten()
    {
        md.push_str(&format!(
            "Peer {name}: {}.\n",
            version.as_str().unwrap_or("")
        ));
    }

    md.push_str("\n#### Unary calls/s (× raw tonic in the same run)\n\n");
    let mut all = names.clone();
    all.extend(peer_names.iter().cloned());
    md.push_str(&rate_table(report, "unary", "calls", &all));

    md.push_str("\n#### Unary latency, p50 / p99 µs\n\n");
    md.push_str(&unary.header("client", &[]));
    for name in &names {
        let mut line = format!("| {name} |");
        for &l in &unary.levels {
            let c = unary.cell(l, name);
            line.push_str(&format!(
                " {:.0} / {:.0} |",
                f(&c["p50_us"]),
                f(&c["p99_us"])
            ));
        }
        md.push_str(&line);
        md.push('\n');
    }

    md.push_str(&format!(
        "\n#### Client cost per unary call at {reference} in flight\n\n\
         | client | CPU µs/call | × raw | heap allocations/call | − raw | bytes allocated/call |\n|---|---:|---:|---:|---:|---:|\n"
    ));
    for name in names.iter().chain(peer_names.iter()) {
        let c = unary.cell(reference, name);
        let allocs = if c["allocs_per_call"].is_null() {
            "–".into()
        } else {
            format!("{:.1}", f(&c["allocs_per_call"]))
        };
        let minus = if c["allocs_per_call_minus_raw"].is_null() {
            "–".into()
        } else {
            format!("{:+.1}", f(&c["allocs_per_call_minus_raw"]))
        };
        let bytes = if c["bytes_allocated_per_call"].is_null() {
            "–".into()
        } else {
            thousands(f(&c["bytes_allocated_per_call"]))
        };
        let raw_cpu = f(&unary.cell(reference, "raw")["cpu_us_per_call"]);
        md.push_str(&format!(
            "| {name} | {:.2} | {:.2} | {allocs} | {minus} | {bytes} |\n",
            f(&c["cpu_us_per_call"]),
            f(&c["cpu_us_per_call"]) / raw_cpu,
        ));
    }

    let layers: Vec<&str> = crate::clients::LAYERS
        .iter()
        .copied()
        .filter(|l| names.iter().any(|n| n == l))
        .collect();
    if !layers.is_empty() && names.iter().any(|n| n == "raw-boxed") {
        md.push_str(&format!(
            "\n#### Per-layer cost at {reference} in flight (each layer alone on a raw channel, minus `raw-boxed`)\n\n\
             | layer | + CPU µs/call | + allocations/call | calls/s × raw-boxed |\n|---|---:|---:|---:|\n"
        ));
        let base = unary.cell(reference, "raw-boxed");
        for layer in layers {
            let c = unary.cell(reference, layer);
            md.push_str(&format!(
                "| {layer} | {:+.2} | {:+.1} | {:.2} |\n",
                f(&c["cpu_us_per_call"]) - f(&base["cpu_us_per_call"]),
                f(&c["allocs_per_call"]) - f(&base["allocs_per_call"]),
                f(&c["calls_per_s"]) / f(&base["calls_per_s"]),
            ));
        }
    }

    if let Some(counts) = report["instructions_per_call"].as_object() {
        let raw = counts.get("raw").map(f).unwrap_or(f64::NAN);
        let boxed = counts.get("raw-boxed").map(f).unwrap_or(f64::NAN);
        md.push_str(
            "\n#### Instructions per unary call (callgrind, 16 in flight; deterministic)\n\n\
             | client | instructions | × raw | over `raw-boxed` (per-layer rows) |\n|---|---:|---:|---:|\n",
        );
        for name in &names {
            let Some(n) = counts.get(name).map(f) else {
                continue;
            };
            let over = if crate::clients::LAYERS.contains(&name.as_str()) {
                format!("{:+.1}k", (n - boxed) / 1000.0)
            } else {
                "".into()
            };
            md.push_str(&format!(
                "| {name} | {:.1}k | {:.2} | {over} |\n",
                n / 1000.0,
                n / raw
            ));
        }
    }

    if let Some(footprint) = report["footprint_at_1"].as_object() {
        md.push_str(&footprint_table(footprint));
    }

    if report["stream"].is_array() {
        md.push_str(&format!(
            "\n#### Server streaming: messages/s ({} messages per `Generate` stream, × raw)\n\n",
            report["settings"]["stream_messages"]
        ));
        md.push_str(&rate_table(report, "stream", "messages", &names));
        let stream = Table::new(report, "stream");
        let r = stream.reference();
        md.push_str(&format!(
            "\nPer message at {r} in flight: {}.\n",
            names
                .iter()
                .map(|n| {
                    let c = stream.cell(r, n);
                    format!(
                        "{n} {:.2} µs CPU, {:.2} allocations",
                        f(&c["cpu_us_per_message"]),
                        f(&c["allocs_per_message"])
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }

    if report["build"].is_object() {
        let b = &report["build"];
        md.push_str(&format!(
            "\n#### Build cost\n\n| step | seconds |\n|---|---:|\n\
             | cold `cargo build -p ameide-sdk` (empty target dir, registry sources downloaded) | {:.1} |\n\
             | rebuild after touching one `.proto` | {:.1} |\n",
            f(&b["cold_build_s"]),
            f(&b["touch_proto_rebuild_s"]),
        ));
    }

    let b = &report["balancing"];
    if !b.is_null() {
        md.push_str(&format!(
            "\n#### Balancing (issue 26)\n\n`sdk` through a `static:` target, round-robin, {} in flight, {} ABBA rounds; \
             the 4 backend processes (127.0.0.2–5) share the server core that the single one has alone, \
             so the ratio is the cost of balancing over 4 connections, not added capacity.\n\n\
             | target | calls/s | CPU µs/call | calls per backend | max from even |\n|---|---:|---:|---|---:|\n\
             | 1 backend | {} | {:.2} | — | — |\n\
             | 4 backends | {} ({:.2}x) | {:.2} | {} | {:.1} % |\n",
            b["concurrency"],
            b["rounds"],
            thousands(f(&b["one_backend_calls_per_s"])),
            f(&b["cpu_us_per_call_one"]),
            thousands(f(&b["four_backends_calls_per_s"])),
            f(&b["ratio"]),
            f(&b["cpu_us_per_call_four"]),
            b["calls_per_backend"],
            f(&b["max_deviation_pct"]),
        ));
    }

    let t = &report["tail_latency"];
    if !t.is_null() {
        let row = |name: &str, r: &Value| {
            format!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} |\n",
                thousands(f(&r["calls_per_s"])),
                f(&r["p50_us"]),
                f(&r["p95_us"]),
                f(&r["p99_us"]),
                f(&r["p999_us"]),
                f(&r["backend_load"]),
            )
        };
        md.push_str(&format!(
            "\n#### Tail latency and hedging (issue 27)\n\n`sdk` round-robin over 4 loopback backends, {} callers, {} rounds \
             (medians); the slow backend delays every {}th of its calls by {} ms (1.25 % of all calls); hedging: \
             2 attempts, the hedging delay the baseline's p90 of the round (median {:.0} µs). Backend load: attempts the \
             backends served per call completed.\n\n\
             | run | calls/s | p50 µs | p95 µs | p99 µs | p99.9 µs | backend load |\n|---|---:|---:|---:|---:|---:|---:|\n{}{}{}\n\
             p99 with hedging / p99 with no slow backend: **{:.2}x** (goal ≤ 1.5x); backend load: **{:.3}x** (goal ≤ 1.1x).\n",
            t["callers"],
            t["rounds"],
            t["slow_every"],
            t["slow_ms"],
            f(&t["hedging_delay_us"]),
            row("4 backends, none slow", &t["no_slow_backend"]),
            row("one slow, no hedging", &t["slow_without_hedging"]),
            row("one slow, hedging", &t["slow_with_hedging"]),
            f(&t["p99_hedged_over_no_slow"]),
            f(&t["load_hedged_over_no_slow"]),
        ));
    }

    let phase = &report["targets_paired"];
    let method = if phase.is_null() {
        "the median of the main rounds' round-by-round ratios".to_owned()
    } else {
        format!(
            "from the paired target phase: `sdk` and `{}` alone, {} rounds of {} ms windows in ABBA order, \
             the median of the {} round-by-round ratios",
            crate::run::FLOOR,
            phase["rounds"],
            phase["window_ms"],
            phase["rounds"]
        )
    };
    md.push_str(&format!(
        "\n#### Targets\n\nRates and CPU against `{}` are {method}; instructions and allocations are exact counts.\n\n\
         | target | measured | met |\n|---|---:|:---:|\n",
        crate::run::FLOOR
    ));
    for (target, measured, met) in targets(report) {
        md.push_str(&format!(
            "| {target} | {measured} | {} |\n",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    md
}

/// (target, measured, met) for each target the benchmark issues set. The
/// floor is `raw+headers`: raw tonic sending the contract's headers by hand
/// (issue 16); the ratios to plain raw tonic stay as reference rows, which
/// have no goal (`None`: shown as "—", never as met).
pub fn targets(report: &Value) -> Vec<(String, String, Option<bool>)> {
    let unary = Table::new(report, "unary");
    let stream = Table::new(report, "stream");
    let mut out = Vec::new();
    let floor = crate::run::FLOOR;
    let at64 = 64;
    let cpu = unary.over_floor(at64, "sdk", "cpu_us_per_call", "cpu_ratio");
    if cpu.is_finite() {
        out.push((
            format!("client CPU per unary call ≤ 1.05× {floor} (at {at64} in flight)"),
            format!("{cpu:.2}×"),
            Some(cpu <= 1.05),
        ));
    }
    let allocs = f(&unary.cell(at64, "sdk")["allocs_per_call"])
        - f(&unary.cell(at64, floor)["allocs_per_call"]);
    if allocs.is_finite() {
        out.push((
            format!("heap allocations per unary call ≤ {floor} + 6 (at {at64} in flight)"),
            format!("{floor} {allocs:+.1}"),
            Some(allocs <= 6.0),
        ));
    }
    for level in [1, 64] {
        let r = unary.over_floor(level, "sdk", "calls_per_s", "rate_ratio");
        if r.is_finite() {
            out.push((
                format!("unary calls/s ≥ 0.95× {floor} at {level} in flight"),
                format!("{r:.2}×"),
                Some(r >= 0.95),
            ));
        }
        let m = stream.over_floor(level, "sdk", "messages_per_s", "rate_ratio");
        if m.is_finite() {
            out.push((
                format!("streaming messages/s ≥ 0.95× {floor} at {level} in flight"),
                format!("{m:.2}×"),
                Some(m >= 0.95),
            ));
        }
    }
    let counts = &report["instructions_per_call"];
    let instructions = f(&counts["sdk"]) / f(&counts[floor]);
    if instructions.is_finite() {
        out.push((
            format!("instructions per unary call (callgrind) ≤ 1.03× {floor}"),
            format!("{instructions:.3}×"),
            Some(instructions <= 1.03),
        ));
    }
    for level in [1, 64] {
        let r = f(&unary.cell(level, "sdk")["ratio_to_raw"]);
        if r.is_finite() {
            out.push((
                format!("(reference, not a target) AmeideClient × raw tonic at {level} in flight"),
                format!("{r:.2}×"),
                None,
            ));
        }
    }
    for name in ["raw", "sdk", "sdk-limited", "sdk-pool"] {
        let own =
            f(&unary.cell(1024, name)["calls_per_s"]) / f(&unary.cell(64, name)["calls_per_s"]);
        if own.is_finite() {
            // raw tonic and the unlimited default are reference rows (no goal).
            let (what, target) = match name {
                "raw" => ("(reference, not a target) raw tonic", false),
                "sdk" => (
                    "(reference, not a target) AmeideClient with no in-flight limit (the default)",
                    false,
                ),
                "sdk-limited" => (
                    "AmeideClient with the opt-in in-flight limit of 128 (1 connection)",
                    true,
                ),
                _ => ("AmeideClient over the pool", true),
            };
            out.push((
                format!("{what} at 1,024 in flight ≥ 0.9× its own rate at 64"),
                format!("{own:.2}×"),
                target.then_some(own >= 0.9),
            ));
        }
    }
    let reference = unary.reference();
    let extra = f(&unary.cell(reference, "sdk")["allocs_per_call_minus_raw"]);
    if extra.is_finite() {
        out.push((
            format!("(reference) allocations per call ≤ raw + 20 (at {reference} in flight)"),
            format!("raw {extra:+.1}"),
            Some(extra <= 20.0),
        ));
    }
    let sdk_cpu = f(&unary.cell(reference, "sdk")["cpu_us_per_call"]);
    for (peer, label, goal) in [
        ("python", "grpcio (aio)", 2.5),
        ("node", "@grpc/grpc-js", 6.0),
    ] {
        let peer_cpu = f(&unary.cell(reference, peer)["cpu_us_per_call"]);
        let x = peer_cpu / sdk_cpu;
        if x.is_finite() {
            out.push((
                format!("≥ {goal}× the {label} client per client core (calls per CPU-second at {reference} in flight)"),
                format!("{x:.1}×"),
                Some(x >= goal),
            ));
        }
    }
    out
}

/// The footprint table: per unary call and per stream at 1 in flight, the
/// floor's and `sdk`'s instructions and simulated I1/D1 misses, and their
/// ratio.
fn footprint_table(footprint: &serde_json::Map<String, Value>) -> String {
    let floor = crate::run::FLOOR;
    let (Some(a), Some(b)) = (footprint.get(floor), footprint.get("sdk")) else {
        return String::new();
    };
    let mut md = format!(
        "\n#### Footprint at 1 in flight (cachegrind's simulated caches; deterministic)\n\n\
         Per unary call and per stream, what a call running on cold caches has to fetch. \
         A simulation: the kernel's own use of the caches is not in it.\n\n\
         | | `{floor}` | `sdk` | ratio |\n|---|---:|---:|---:|\n"
    );
    for kind in ["unary", "stream"] {
        for (key, what) in [
            ("instructions", "instructions"),
            ("i1_misses", "I1 misses"),
            ("d1_misses", "D1 misses"),
        ] {
            let (x, y) = (f(&a[kind][key]), f(&b[kind][key]));
            if x.is_finite() && y.is_finite() {
                md.push_str(&format!(
                    "| {what} per {} | {x:.0} | {y:.0} | {:.3}× |\n",
                    if kind == "unary" { "call" } else { "stream" },
                    y / x
                ));
            }
        }
    }
    md
}
