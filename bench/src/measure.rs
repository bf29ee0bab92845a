//! One measurement window: `concurrency` tasks call in a loop on a
//! single-threaded runtime; after a warm-up of a fifth of the window, calls
//! (or stream messages), latencies, client CPU and heap allocations are
//! counted over the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clients::Typed;

/// What a window measures.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `GetRepository` calls.
    Unary,
    /// `Generate` streams of this many messages each; items are messages.
    Stream(i32),
}

/// One window's figures. "Items" are calls (unary) or messages (streams).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rate: f64,
    pub cpu_us_per_item: f64,
    pub allocs_per_item: f64,
    pub bytes_per_item: f64,
    /// Per-call latency (unary) or whole-stream time (streams), µs.
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Every call (or stream) completed, the warm-up's included.
    pub completed: u64,
}

/// CPU time of this whole process (every thread), in ns, from
/// `/proc/self/task/*/schedstat`; 0 where that does not exist.
pub fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs one window. A failed call ends the window with its status message.
pub async fn window(
    client: &Typed,
    kind: Kind,
    concurrency: usize,
    duration: Duration,
) -> Result<Sample, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(false));
    let items = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut client = client.clone();
        let (stop, recording, items) = (stop.clone(), recording.clone(), items.clone());
        let completed = completed.clone();
        tasks.push(tokio::task::spawn_local(async move {
            // Reserved up front so that the window counts no growth of it.
            let mut latencies: Vec<u32> = Vec::with_capacity((1 << 20) / concurrency.max(1));
            let mut n = worker as u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let done = match kind {
                    Kind::Unary => client.unary(n).await.map(|()| 1),
                    Kind::Stream(messages) => client.stream(n, messages).await,
                };
                let done = done.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                completed.fetch_add(1, Ordering::Relaxed);
                if recording.load(Ordering::Relaxed) {
                    items.fetch_add(done, Ordering::Relaxed);
                    if latencies.len() < latencies.capacity() {
                        let ns = started.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                        latencies.push(ns);
                    }
                }
                n += concurrency as u64;
            }
            Ok::<_, String>(latencies)
        }));
    }
    tokio::time::sleep(duration / 5).await;
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = process_cpu_ns();
    let (allocs_before, bytes_before) = crate::alloc::snapshot();
    tokio::time::sleep(duration).await;
    let (allocs_after, bytes_after) = crate::alloc::snapshot();
    let cpu = process_cpu_ns().saturating_sub(cpu_before);
    let count = items.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    recording.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        let worker = task
            .await
            .map_err(|e| format!("a worker panicked: {e}"))??;
        latencies.extend(worker);
    }
    latencies.sort_unstable();
    let per = |x: u64| x as f64 / count.max(1) as f64;
    Ok(Sample {
        rate: count as f64 / elapsed.as_secs_f64(),
        cpu_us_per_item: per(cpu) / 1000.0,
        allocs_per_item: per(allocs_after - allocs_before),
        bytes_per_item: per(bytes_after - bytes_before),
        p50_us: percentile(&latencies, 0.50),
        p90_us: percentile(&latencies, 0.90),
        p95_us: percentile(&latencies, 0.95),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        completed: completed.load(Ordering::Relaxed),
    })
}

/// The median of `values` (the upper one of an even count; NaN when empty).
pub fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of each field over several windows.
pub fn median(samples: &[Sample]) -> Sample {
    let m = |f: fn(&Sample) -> f64| median_of(samples.iter().map(f).collect());
    Sample {
        rate: m(|s| s.rate),
        cpu_us_per_item: m(|s| s.cpu_us_per_item),
        allocs_per_item: m(|s| s.allocs_per_item),
        bytes_per_item: m(|s| s.bytes_per_item),
        p50_us: m(|s| s.p50_us),
        p90_us: m(|s| s.p90_us),
        p95_us: m(|s| s.p95_us),
        p99_us: m(|s| s.p99_us),
        p999_us: m(|s| s.p999_us),
        completed: m(|s| s.completed as f64) as u64,
    }
}
