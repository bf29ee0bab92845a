//! Negative controls: an adapter broken on purpose in one behaviour must fail
//! the cases about that behaviour, and a correct adapter must pass them.

use std::process::Command;

fn run(breaks: &[&str], ids: &[&str]) -> (bool, Vec<(String, String)>) {
    let report = std::env::temp_dir().join(format!(
        "parity-report-{}-{}.json",
        std::process::id(),
        breaks.join("_")
    ));
    let mut command = Command::new(env!("CARGO_BIN_EXE_ameide-parity"));
    command.arg("run").arg("--report").arg(&report);
    for b in breaks {
        command.args(["--break", b]);
    }
    for id in ids {
        command.args(["--run", id]);
    }
    let output = command.output().expect("run ameide-parity");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&report);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let results = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (output.status.success(), results)
}

fn assert_broken_fails_and_correct_passes(behaviour: &str, ids: &[&str]) {
    let (ok, results) = run(&[behaviour], ids);
    assert!(!ok, "--break {behaviour} must fail the run");
    for id in ids {
        let result = results
            .iter()
            .find(|(r, _)| r == id)
            .map(|(_, v)| v.as_str());
        assert_eq!(
            result,
            Some("FAIL"),
            "--break {behaviour}: case {id} must fail, results {results:?}"
        );
    }
    let (ok, results) = run(&[], ids);
    assert!(ok, "the reference adapter must pass {ids:?}: {results:?}");
    assert_eq!(results.len(), ids.len(), "{results:?}");
}

#[test]
fn dropping_the_request_id_fails_the_request_id_cases() {
    assert_broken_fails_and_correct_passes(
        "drop-request-id",
        &[
            "defaults-unary-ok",
            "request-id-preset-is-kept",
            "request-id-same-on-every-retry",
            "request-id-preset-same-on-retry",
        ],
    );
}

#[test]
fn retrying_non_retryable_codes_fails_the_no_retry_cases() {
    assert_broken_fails_and_correct_passes(
        "retry-non-retryable",
        &[
            "no-retry-invalid-argument",
            "no-retry-internal",
            "no-retry-unauthenticated",
            "no-retry-not-found",
            "no-retry-permission-denied",
        ],
    );
}

#[test]
fn ignoring_the_deadline_fails_the_deadline_cases() {
    assert_broken_fails_and_correct_passes(
        "ignore-deadline",
        &[
            "deadline-exceeded-when-server-is-slow",
            "per-call-timeout-overrides",
            "stream-cut-by-the-deadline",
            "no-backoff-past-the-deadline",
        ],
    );
}
