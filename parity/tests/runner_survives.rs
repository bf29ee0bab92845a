//! The runner survives its adapter: a misbehaving adapter
//! (`tests/adapters/misbehaving.py`, wrapping the reference adapter) fails
//! only the case it misbehaves on, with a clear reason, and the run still
//! ends with a summary, a report and an exit code.

use std::time::{Duration, Instant};

mod common;

const CASES: [&str; 3] = [
    "defaults-unary-ok",
    "retry-unavailable-then-ok",
    "tenant-sent-when-configured",
];
const TARGET: &str = "retry-unavailable-then-ok";

struct Run {
    ok: bool,
    stdout: String,
    verdicts: Vec<(String, String, String)>,
    took: Duration,
}

fn run(mode: &str) -> Run {
    run_with(mode, &CASES, TARGET, &[])
}

/// Runs `cases` (not their axis variants) with the adapter misbehaving as
/// `mode` on `target`; `extra` goes to the runner.
fn run_with(mode: &str, cases: &[&str], target: &str, extra: &[&str]) -> Run {
    let report = common::report_path(&format!("runner-{mode}-{}", extra.len()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/adapters/misbehaving.py");
    let adapter = format!(
        "python3 {script} {mode} {target} {}",
        env!("CARGO_BIN_EXE_parity-adapter-rust")
    );
    let mut command = common::runner(&report);
    command.args(["--adapter", &adapter, "--case-timeout", "3"]);
    command.args(extra);
    for id in cases {
        command.args(["--run", id]);
    }
    // Not their compression-axis variants (`<id>@gzip`, `<id>@zstd`).
    command.args(["--skip", "@"]);
    let started = Instant::now();
    let output = command.output().expect("run ameide-parity");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let rows = common::read_report(&report, &output);
    let verdicts = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
                r["problems"].to_string(),
            )
        })
        .collect();
    Run {
        ok: output.status.success(),
        stdout,
        verdicts,
        took,
    }
}

/// The target case fails with a reason containing `why`; the others pass.
fn only_the_target_fails(mode: &str, why: &str) -> Run {
    let r = run(mode);
    assert!(!r.ok, "{mode}: the run must fail: {}", r.stdout);
    assert!(
        r.stdout.contains("2 passed, 1 failed"),
        "{mode}: {}",
        r.stdout
    );
    assert_eq!(r.verdicts.len(), 3, "{mode}: {:?}", r.verdicts);
    for (id, result, problems) in &r.verdicts {
        if id == TARGET {
            assert_eq!(result, "FAIL", "{mode}: {id}");
            assert!(problems.contains(why), "{mode}: {id}: {problems}");
        } else {
            assert_eq!(result, "pass", "{mode}: {id}: {problems}");
        }
    }
    r
}

#[test]
fn a_garbage_line_fails_that_case_only() {
    only_the_target_fails("garbage", "unreadable outcome line");
}

#[test]
fn an_outcome_with_the_wrong_id_fails_that_case_only() {
    // The wrong id is read as a stray line; the case then waits out its limit.
    only_the_target_fails("wrong-id", "some-other-case");
}

#[test]
fn an_extra_line_fails_that_case_and_the_rest_stay_in_step() {
    only_the_target_fails("extra", "an extra line after the outcome");
}

#[test]
fn an_adapter_that_exits_fails_that_case_and_is_restarted() {
    only_the_target_fails("exit", "the adapter exited");
}

#[test]
fn a_slow_case_fails_at_the_case_timeout_and_the_adapter_is_restarted() {
    let r = only_the_target_fails("slow", "no outcome within 3s");
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

#[test]
fn float_numbers_are_accepted() {
    let r = run("float");
    assert!(r.ok, "{}", r.stdout);
    assert!(r.stdout.contains("3 passed, 0 failed"), "{}", r.stdout);
}

#[test]
fn a_lingering_adapter_is_stopped_after_a_bounded_wait() {
    let r = run("linger");
    assert!(r.ok, "{}", r.stdout);
    assert!(
        r.stdout.contains("still running"),
        "the note says so: {}",
        r.stdout
    );
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}

/// Inbound cases, the first one the target.
const INBOUND: [&str; 3] = [
    "inbound-request-id-is-echoed-and-carried-downstream",
    "inbound-identity-is-not-forwarded",
    "defaults-unary-ok",
];

fn verdict<'a>(r: &'a Run, id: &str) -> &'a (String, String, String) {
    r.verdicts
        .iter()
        .find(|v| v.0 == id)
        .unwrap_or_else(|| panic!("{id} did not run: {}", r.stdout))
}

#[test]
fn an_inbound_case_the_adapter_skips_is_a_skip_unless_no_skip() {
    let r = run_with("skip", &INBOUND, INBOUND[0], &[]);
    assert!(r.ok, "a skip is not a failure: {}", r.stdout);
    assert_eq!(verdict(&r, INBOUND[0]).1, "skip", "{}", r.stdout);
    assert!(
        r.stdout.contains("1 skipped by the adapter"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("inbound 1/1 (1 skipped)"), "{}", r.stdout);
    assert!(r.stdout.contains("2 passed, 0 failed"), "{}", r.stdout);

    let r = run_with("skip", &INBOUND, INBOUND[0], &["--no-skip"]);
    assert!(!r.ok, "{}", r.stdout);
    let (_, result, problems) = verdict(&r, INBOUND[0]);
    assert_eq!(result, "FAIL");
    assert!(problems.contains("--no-skip"), "{problems}");
    assert!(r.stdout.contains("2 passed, 1 failed"), "{}", r.stdout);
}

#[test]
fn a_serve_endpoint_off_loopback_is_not_called() {
    let r = run_with("elsewhere", &INBOUND, INBOUND[0], &[]);
    assert!(!r.ok, "{}", r.stdout);
    let (_, result, problems) = verdict(&r, INBOUND[0]);
    assert_eq!(result, "FAIL");
    assert!(problems.contains("on loopback"), "{problems}");
    assert!(r.stdout.contains("2 passed, 1 failed"), "{}", r.stdout);
}

#[test]
fn a_silent_adapter_server_fails_at_the_case_timeout() {
    let r = run_with("silent", &INBOUND, INBOUND[0], &[]);
    assert!(!r.ok, "{}", r.stdout);
    let (_, result, problems) = verdict(&r, INBOUND[0]);
    assert_eq!(result, "FAIL");
    assert!(problems.contains("did not answer within 3s"), "{problems}");
    assert!(r.stdout.contains("2 passed, 1 failed"), "{}", r.stdout);
    assert!(r.took < Duration::from_secs(20), "took {:?}", r.took);
}
