//! Outlier ejection (gRFC A50, its failure-percentage algorithm), opt-in:
//! a replica that fails most of its calls while the others do not is taken
//! out of the balancer's picks for a while, even though its connection is
//! READY (a replica whose process answers but whose dependencies are down).
//!
//! | Step | What happens |
//! |---|---|
//! | every call on a balanced replica (round-robin, least-loaded) | counted on its subchannel when it ends: OK (`grpc-status: 0`) a success; any other status, a non-gRPC answer, a stream or connection lost, a call whose deadline passed while it waited on the replica a failure; a call the client gave up before its deadline (cancelled, a hedge that lost) and a request never written are not counted |
//! | every [`interval`](OutlierEjection::interval) | the counts are taken and reset; when at least [`minimum_hosts`](OutlierEjection::minimum_hosts) replicas made [`request_volume`](OutlierEjection::request_volume) calls, each of those whose failures are more than [`failure_percentage_threshold`](OutlierEjection::failure_percentage_threshold) % of its calls is ejected, while the ejected stay under [`max_ejection_percent`](OutlierEjection::max_ejection_percent) % of the replicas (above 0 %, one always may be) |
//! | ejected | no new call picks it while another READY replica is not ejected (if every READY one is, they are used all the same); its calls in flight finish; it stays connected |
//! | back | after [`base_ejection_time`](OutlierEjection::base_ejection_time) × the times it was ejected (at most [`max_ejection_time`](OutlierEjection::max_ejection_time)); each interval it is not ejected lowers that count by one |
//!
//! Ejections and returns are `tracing` events (`info`), with the address.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// gRFC A50's failure-percentage ejection for a balanced target (`static:`,
/// `dns:` or a [`Resolver`](crate::Resolver)): off unless set in
/// [`TransportOptions::outlier_ejection`](crate::TransportOptions::outlier_ejection).
/// The defaults are A50's, except that the algorithm is on once configured
/// (A50's `enforcement_percentage` is 100 here).
///
/// ```
/// use std::time::Duration;
/// use ameide_sdk::{OutlierEjection, TransportOptions};
/// let ejection = OutlierEjection::default()
///     .with_interval(Duration::from_secs(5))
///     .with_minimum_hosts(3);
/// assert_eq!(ejection.failure_percentage_threshold, 85);
/// assert_eq!(ejection.request_volume, 50);
/// let options = TransportOptions::default().with_outlier_ejection(ejection);
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutlierEjection {
    /// How often the counts are judged (10 s).
    pub interval: Duration,
    /// How long a first ejection lasts; the n-th lasts n times as long (30 s).
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts (300 s, or `base_ejection_time` if longer).
    pub max_ejection_time: Duration,
    /// The most replicas ejected at once, as a percentage of them (10;
    /// above 0, one replica may always be ejected; 0 ejects none).
    pub max_ejection_percent: u8,
    /// The failure percentage above which a replica is ejected (85).
    pub failure_percentage_threshold: u8,
    /// How many replicas must have made `request_volume` calls in an
    /// interval for any to be judged (5).
    pub minimum_hosts: usize,
    /// The calls a replica must have made in an interval to be judged (50).
    pub request_volume: u64,
}

impl Default for OutlierEjection {
    fn default() -> Self {
        OutlierEjection {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            failure_percentage_threshold: 85,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

impl OutlierEjection {
    /// Sets [`interval`](Self::interval).
    pub fn with_interval(mut self, value: Duration) -> Self {
        self.interval = value;
        self
    }

    /// Sets [`base_ejection_time`](Self::base_ejection_time).
    pub fn with_base_ejection_time(mut self, value: Duration) -> Self {
        self.base_ejection_time = value;
        self
    }

    /// Sets [`max_ejection_time`](Self::max_ejection_time).
    pub fn with_max_ejection_time(mut self, value: Duration) -> Self {
        self.max_ejection_time = value;
        self
    }

    /// Sets [`max_ejection_percent`](Self::max_ejection_percent).
    pub fn with_max_ejection_percent(mut self, value: u8) -> Self {
        self.max_ejection_percent = value;
        self
    }

    /// Sets [`failure_percentage_threshold`](Self::failure_percentage_threshold).
    pub fn with_failure_percentage_threshold(mut self, value: u8) -> Self {
        self.failure_percentage_threshold = value;
        self
    }

    /// Sets [`minimum_hosts`](Self::minimum_hosts).
    pub fn with_minimum_hosts(mut self, value: usize) -> Self {
        self.minimum_hosts = value;
        self
    }

    /// Sets [`request_volume`](Self::request_volume).
    pub fn with_request_volume(mut self, value: u64) -> Self {
        self.request_volume = value;
        self
    }

    /// What is wrong with the settings, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        let day = Duration::from_secs(24 * 3600);
        let ms10 = Duration::from_millis(10);
        if !(ms10..=day).contains(&self.interval) {
            return Some(format!(
                "outlier_ejection.interval {:?} must be within 10ms..=24h",
                self.interval
            ));
        }
        for (name, value) in [
            ("base_ejection_time", self.base_ejection_time),
            ("max_ejection_time", self.max_ejection_time),
        ] {
            if !(ms10..=day).contains(&value) {
                return Some(format!(
                    "outlier_ejection.{name} {value:?} must be within 10ms..=24h"
                ));
            }
        }
        for (name, value) in [
            ("max_ejection_percent", self.max_ejection_percent),
            (
                "failure_percentage_threshold",
                self.failure_percentage_threshold,
            ),
        ] {
            if value > 100 {
                return Some(format!(
                    "outlier_ejection.{name} {value} must be at most 100"
                ));
            }
        }
        if self.minimum_hosts == 0 || self.request_volume == 0 {
            return Some(
                "outlier_ejection.minimum_hosts and request_volume must be at least 1".to_owned(),
            );
        }
        None
    }
}

/// A call's outcome not yet known: counted as a failure if it is dropped
/// at or past its deadline (a replica that never answers is the outlier
/// A50 is for), not at all if dropped before (the caller gave up).
pub(crate) struct Pending {
    tally: Option<Arc<Tally>>,
    deadline: Option<Instant>,
}

impl Pending {
    pub(crate) fn new(tally: Option<Arc<Tally>>, deadline: Option<Instant>) -> Self {
        Pending { tally, deadline }
    }

    /// Records `ok` once; later calls and the drop do nothing.
    pub(crate) fn record(&mut self, ok: bool) {
        if let Some(tally) = self.tally.take() {
            tally.record(ok);
        }
    }

    /// Whether the outcome is still to be counted.
    pub(crate) fn is_open(&self) -> bool {
        self.tally.is_some()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // No tally (ejection off): nothing to count, no clock read.
        if self.tally.is_some() && self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.record(false);
        }
    }
}

/// One replica's calls in the current interval, and its ejection.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Ejected until then.
    ejected_until: Mutex<Option<Instant>>,
    /// A50's ejection multiplier: ejections not yet forgiven.
    multiplier: AtomicU32,
}

impl Tally {
    /// Counts one call that ended.
    pub(crate) fn record(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether no new call should pick it now.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| now < until)
    }
}

/// The outcome of a call from its response head: `Some` when the head
/// decides it (an HTTP status other than 200, or a Trailers-Only answer,
/// whose `grpc-status` is in the headers and ends the stream), `None` when
/// the trailers will.
pub(crate) fn outcome_of_head(parts: &http::response::Parts, ends_stream: bool) -> Option<bool> {
    if parts.status != http::StatusCode::OK {
        return Some(false);
    }
    ends_stream.then(|| status_is_ok(&parts.headers))
}

/// Whether `grpc-status` in these trailers (or Trailers-Only headers) is
/// OK, read as the call's status is ([`crate::grpc_headers::grpc_code`]).
pub(crate) fn status_is_ok(headers: &http::HeaderMap) -> bool {
    crate::grpc_headers::grpc_code(headers) == Some(tonic::Code::Ok)
}

/// One interval's judgement over the replicas' tallies (A50's
/// failure-percentage algorithm, then the ejections that ran out).
fn sweep(config: &OutlierEjection, tallies: &[(&str, &Tally)], now: Instant) {
    let counts: Vec<(u64, u64)> = tallies
        .iter()
        .map(|(_, t)| {
            (
                t.ok.swap(0, Ordering::Relaxed),
                t.failed.swap(0, Ordering::Relaxed),
            )
        })
        .collect();
    let mut ejected = tallies.iter().filter(|(_, t)| t.is_ejected(now)).count();
    let judged = counts
        .iter()
        .filter(|(ok, failed)| ok + failed >= config.request_volume)
        .count();
    if judged >= config.minimum_hosts {
        for ((address, tally), &(ok, failed)) in tallies.iter().zip(&counts) {
            let volume = ok + failed;
            if volume < config.request_volume || tally.is_ejected(now) {
                continue;
            }
            // Under the cap before each ejection (so that, above 0 %, one
            // always may go; 0 % ejects nobody), as grpc-go checks it.
            let total = tallies.len() as u64;
            if (ejected as u64) * 100 >= u64::from(config.max_ejection_percent) * total {
                break;
            }
            // More than the threshold (A50, grpc-go): 85 % exactly stays.
            if failed * 100 > u64::from(config.failure_percentage_threshold) * volume {
                let times = tally
                    .multiplier
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                let longest = config.max_ejection_time.max(config.base_ejection_time);
                let lasts = config.base_ejection_time.saturating_mul(times).min(longest);
                *tally
                    .ejected_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(crate::time::add(now, lasts));
                ejected += 1;
                tracing::info!(
                    address,
                    failed,
                    calls = volume,
                    ejected_for_ms = lasts.as_millis() as u64,
                    "replica ejected: it failed most of its calls (outlier ejection, gRFC A50)"
                );
            }
        }
    }
    for (address, tally) in tallies {
        let mut until = tally
            .ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(at) if at <= now => {
                *until = None;
                tracing::info!(address, "ejected replica back in the picks");
            }
            Some(_) => {}
            None => {
                // Forgiven by one for an interval not ejected.
                let _ = tally
                    .multiplier
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(1));
            }
        }
    }
}

/// Judges the replicas every interval: `replicas` names each with its
/// tally, `None` once the target's client is gone (the task ends).
pub(crate) fn start<F>(config: OutlierEjection, replicas: F)
where
    F: Fn() -> Option<Vec<(String, Arc<Tally>)>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(replicas) = replicas() else { return };
            let tallies: Vec<(&str, &Tally)> = replicas
                .iter()
                .map(|(key, tally)| (key.as_str(), &**tally))
                .collect();
            sweep(&config, &tallies, Instant::now());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tallies(n: usize) -> Vec<Tally> {
        (0..n).map(|_| Tally::default()).collect()
    }

    fn feed(t: &Tally, ok: u64, failed: u64) {
        t.ok.store(ok, Ordering::Relaxed);
        t.failed.store(failed, Ordering::Relaxed);
    }

    fn named(ts: &[Tally]) -> Vec<(&str, &Tally)> {
        ts.iter().map(|t| ("r", t)).collect()
    }

    #[test]
    fn a_replica_failing_most_calls_is_ejected_and_comes_back() {
        let config = OutlierEjection::default()
            .with_request_volume(10)
            .with_minimum_hosts(5)
            .with_base_ejection_time(Duration::from_secs(30));
        let ts = tallies(5);
        for t in &ts[..4] {
            feed(t, 20, 0);
        }
        feed(&ts[4], 2, 18);
        let now = Instant::now();
        sweep(&config, &named(&ts), now);
        assert!(ts[4].is_ejected(now));
        assert!(ts[..4].iter().all(|t| !t.is_ejected(now)));
        // The counts were taken.
        assert_eq!(ts[4].failed.load(Ordering::Relaxed), 0);
        // Back after base × 1.
        let later = now + Duration::from_secs(31);
        sweep(&config, &named(&ts), later);
        assert!(!ts[4].is_ejected(later));
        // Ejected again at once: twice as long.
        feed(&ts[4], 0, 20);
        for t in &ts[..4] {
            feed(t, 20, 0);
        }
        sweep(&config, &named(&ts), later);
        assert!(ts[4].is_ejected(later + Duration::from_secs(59)));
        assert!(!ts[4].is_ejected(later + Duration::from_secs(61)));
    }

    #[test]
    fn too_few_judged_replicas_eject_nobody() {
        let config = OutlierEjection::default().with_request_volume(10);
        let ts = tallies(5);
        for t in &ts[..3] {
            feed(t, 20, 0);
        }
        feed(&ts[3], 0, 5); // under the volume
        feed(&ts[4], 0, 20);
        let now = Instant::now();
        sweep(&config, &named(&ts), now);
        assert!(ts.iter().all(|t| !t.is_ejected(now)), "4 judged < 5");
    }

    #[test]
    fn the_cap_stops_ejections_but_one_always_may_go() {
        let config = OutlierEjection::default()
            .with_request_volume(10)
            .with_minimum_hosts(3)
            .with_max_ejection_percent(10);
        let ts = tallies(3);
        for t in &ts {
            feed(t, 0, 20);
        }
        let now = Instant::now();
        sweep(&config, &named(&ts), now);
        assert_eq!(ts.iter().filter(|t| t.is_ejected(now)).count(), 1);
    }

    #[test]
    fn exactly_the_threshold_stays_and_zero_percent_ejects_nobody() {
        let config = OutlierEjection::default()
            .with_request_volume(10)
            .with_minimum_hosts(2);
        let ts = tallies(2);
        feed(&ts[0], 20, 0);
        feed(&ts[1], 3, 17); // 85 % exactly
        let now = Instant::now();
        sweep(&config, &named(&ts), now);
        assert!(!ts[1].is_ejected(now));
        let none = config.with_max_ejection_percent(0);
        feed(&ts[0], 20, 0);
        feed(&ts[1], 0, 20);
        sweep(&none, &named(&ts), now);
        assert!(!ts[1].is_ejected(now));
    }

    #[test]
    fn a_call_dropped_at_its_deadline_is_a_failure_before_it_nothing() {
        let tally = Arc::new(Tally::default());
        let now = Instant::now();
        drop(Pending::new(Some(tally.clone()), Some(now)));
        drop(Pending::new(
            Some(tally.clone()),
            Some(now + Duration::from_secs(60)),
        ));
        drop(Pending::new(Some(tally.clone()), None));
        let mut done = Pending::new(Some(tally.clone()), Some(now));
        done.record(true);
        drop(done);
        assert_eq!(tally.failed.load(Ordering::Relaxed), 1);
        assert_eq!(tally.ok.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn under_the_threshold_stays() {
        let config = OutlierEjection::default()
            .with_request_volume(10)
            .with_minimum_hosts(2);
        let ts = tallies(2);
        feed(&ts[0], 20, 0);
        feed(&ts[1], 4, 16); // 80 % < 85 %
        let now = Instant::now();
        sweep(&config, &named(&ts), now);
        assert!(!ts[1].is_ejected(now));
    }

    #[test]
    fn settings_out_of_range_are_named() {
        assert!(OutlierEjection::default().problem().is_none());
        let bad = OutlierEjection::default().with_failure_percentage_threshold(101);
        assert!(
            bad.problem()
                .unwrap()
                .contains("failure_percentage_threshold")
        );
        let bad = OutlierEjection::default().with_interval(Duration::ZERO);
        assert!(bad.problem().unwrap().contains("interval"));
        let bad = OutlierEjection::default().with_minimum_hosts(0);
        assert!(bad.problem().unwrap().contains("minimum_hosts"));
    }

    #[test]
    fn outcomes_from_the_head_and_the_trailers() {
        let head = |status: u16, grpc: Option<&str>| {
            let mut b = http::Response::builder().status(status);
            if let Some(g) = grpc {
                b = b.header("grpc-status", g);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(outcome_of_head(&head(502, None), false), Some(false));
        assert_eq!(outcome_of_head(&head(200, None), false), None);
        assert_eq!(outcome_of_head(&head(200, Some("14")), true), Some(false));
        assert_eq!(outcome_of_head(&head(200, Some("0")), true), Some(true));
        assert_eq!(outcome_of_head(&head(200, None), true), Some(false));
        // As the caller reads it: "00" and "+0" are OK, "ok" is not.
        assert_eq!(outcome_of_head(&head(200, Some("+0")), true), Some(true));
        assert_eq!(outcome_of_head(&head(200, Some("00")), true), Some(true));
        assert_eq!(outcome_of_head(&head(200, Some("ok")), true), Some(false));
    }
}
