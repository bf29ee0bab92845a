//! Negative controls: the reference adapter broken on purpose in one
//! behaviour (`--break <mode>`) must fail exactly the cases about that
//! behaviour, over the whole suite; the unbroken adapter passes everything.
//! A case set that a broken client passes proves nothing.
//!
//! Each mode lists the cases it must fail and the few it may fail too (a
//! broken budget can push a timing case either way on a loaded machine);
//! any other failure, or a missing one, fails the test.

use std::collections::BTreeSet;

mod common;

/// Runs the whole suite; returns whether the run passed and the failed ids.
fn run(breaks: &[&str]) -> (bool, BTreeSet<String>, usize) {
    let report = common::report_path(&breaks.join("_"));
    let mut command = common::runner(&report);
    for b in breaks {
        command.args(["--break", b]);
    }
    let output = command.output().expect("run ameide-parity");
    let rows = common::read_report(&report, &output);
    let failed = rows
        .iter()
        .filter(|r| r["result"] != "pass")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    (output.status.success(), failed, rows.len())
}

/// Every case file, parsed.
fn case_files() -> Vec<serde_json::Value> {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect()
}

/// A case's id and the ids of its variants along its axes.
fn ids_of(case: &serde_json::Value) -> Vec<String> {
    let id = case["id"].as_str().unwrap().to_owned();
    let mut ids = vec![id.clone()];
    let axes = case["axes"].as_array().cloned().unwrap_or_default();
    if axes.iter().any(|a| a == "compression") {
        ids.extend(["gzip", "zstd"].map(|e| format!("{id}@{e}")));
    }
    ids
}

fn all_cases() -> BTreeSet<String> {
    case_files().iter().flat_map(ids_of).collect()
}

/// Cases whose call sends a request other than the empty message (the
/// adapter's; an inbound case's request is the runner's, handed on) to a
/// gRPC server (an HTTP/1.1 one reads none).
fn cases_with_a_request() -> Vec<String> {
    case_files()
        .iter()
        .filter(|c| {
            c["suite"] != "inbound"
                && c["server"]["http1"].is_null()
                && c["call"]["request"]
                    .as_object()
                    .is_some_and(|o| !o.is_empty())
        })
        .flat_map(ids_of)
        .collect()
}

enum Must<'a> {
    Exactly(&'a [&'a str]),
    AllBut(&'a [&'a str]),
    These(Vec<String>),
}

fn control(mode: &str, must: Must<'_>, may: &[&str]) {
    let must: BTreeSet<String> = match must {
        Must::Exactly(ids) => ids.iter().map(|s| s.to_string()).collect(),
        Must::AllBut(ids) => {
            let mut all = all_cases();
            for id in ids {
                assert!(all.remove(*id), "{id} is not a case");
            }
            all
        }
        Must::These(ids) => ids.into_iter().collect(),
    };
    let (ok, failed, ran) = run(&[mode]);
    assert!(ran >= 50, "--break {mode}: only {ran} cases ran");
    assert!(!ok, "--break {mode} must fail the run");
    let missing: Vec<&String> = must.difference(&failed).collect();
    assert!(
        missing.is_empty(),
        "--break {mode}: these cases must fail and passed: {missing:?}"
    );
    let extra: Vec<&String> = failed
        .iter()
        .filter(|id| !must.contains(*id) && !may.contains(&id.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "--break {mode}: these cases failed but are not about this behaviour: {extra:?}"
    );
}

/// Cases whose budget decides the outcome, for modes that change the budget.
const DEADLINE_CASES: &[&str] = &[
    "deadline-exceeded-when-server-is-slow",
    "deadline-spans-all-attempts",
    "default-budget-on-a-stream",
    "defaults-unary-ok",
    "grpc-timeout-carries-the-client-timeout",
    "grpc-timeout-shrinks-across-attempts",
    "no-backoff-past-the-deadline",
    "per-call-timeout-overrides",
    "stream-cut-by-the-deadline",
    "defaults-unary-ok@gzip",
    "defaults-unary-ok@zstd",
    "stream-cut-by-the-deadline@gzip",
    "stream-cut-by-the-deadline@zstd",
    "deadline-before-the-headers-resets-the-stream",
];

/// Deadlines that cut a reply halfway: with no deadline at all the call
/// succeeds late, and a budget cut in half still cuts it.
const CUT_REPLY_CASES: &[&str] = &[
    "deadline-before-the-trailers-of-a-stream",
    "deadline-before-the-trailers-of-a-unary-call",
    "deadline-between-stream-messages-resets-the-stream",
];

/// The paginated calls (many calls each: they report no per-call facts).
const PAGINATION_CASES: &[&str] = &[
    "a-failed-page-ends-the-items",
    "a-page-is-retried-like-any-call",
    "a-repeated-token-ends-the-items-with-internal",
    "empty-pages-are-followed",
    "items-of-every-page-in-order",
    "one-page-is-one-call",
    "pages-start-from-the-requests-token",
];

/// Cases served by an HTTP/1.1 server: no gRPC attempt arrives, so the
/// reported request id and attempts have nothing on the wire to match.
const HTTP1_CASES: &[&str] = &[
    "http1-answer-held-open-is-unavailable-before-the-deadline",
    "http1-answer-to-a-stream-is-unavailable",
    "http1-answer-to-the-http2-preface-is-unavailable",
];

/// The inbound cases: the adapter serves, the runner calls it.
fn inbound_cases() -> Vec<String> {
    case_files()
        .iter()
        .filter(|c| c["suite"] == "inbound")
        .flat_map(ids_of)
        .collect()
}

/// Inbound cases where the downstream client's own timeout decides the
/// downstream budget (the caller's deadline is longer, or unreadable).
const INBOUND_CLIENT_BUDGET_CASES: &[&str] = &[
    "inbound-client-timeout-shorter-than-the-inbound-deadline-wins",
    "inbound-malformed-trace-headers-are-ignored",
];

/// Cases the caller cancels (the adapter then reports no call facts when
/// the call was cancelled before its response headers).
const CANCEL_CASES: &[&str] = &[
    "cancel-a-stream-after-two-messages",
    "cancel-a-stream-before-its-first-message",
    "cancel-a-stream-waiting-for-its-trailers",
    "cancel-during-a-retry-backoff-stops-the-retries",
    "cancel-while-the-server-is-slow",
];

/// Cases that last long enough (slow replies, backoffs) that a shorter
/// budget may or may not cut them. Three attempts under the default policy
/// wait two jittered backoffs, 125–375 ms and 250–750 ms: 0.4–1.1 s in all,
/// so a 1 s budget cuts them or not by the draw.
const LONG_CASES: &[&str] = &[
    "previous-attempts-header-counts",
    "request-id-same-on-every-retry",
    "server-deadline-exceeded-retried-while-budget-remains",
    "exhausted-returns-last-status",
    "aborted-exhausted",
    "backoff-within-jitter-bounds",
    "retry-max-attempts-override",
    "error-details-retryinfo",
    "session-baggage-on-every-retry",
    "reported-facts-of-a-failed-call-match-the-wire",
    "non-idempotent-method-retried-by-default",
    "retry-aborted-then-ok",
    "retry-deadline-exceeded-then-ok",
    "retry-resource-exhausted-then-ok",
    "retry-unavailable-then-ok",
    "reported-request-id-and-attempts-match-the-wire",
    "stream-retried-before-first-message",
];

#[test]
fn the_reference_adapter_passes_every_case() {
    let (ok, failed, ran) = run(&[]);
    assert!(ok && failed.is_empty(), "failed: {failed:?}");
    assert_eq!(ran, all_cases().len());
}

#[test]
fn dropping_the_request_id() {
    // The reported id is then never on the wire: every case that reaches
    // the server fails, the id cases among them.
    let not_failing = [
        &[
            "auth-provider-error-is-unavailable",
            "auth-provider-refusal-is-unauthenticated",
            // Cancelled before the response headers: no id is reported.
            "cancel-a-stream-before-its-first-message",
            "cancel-a-stream-waiting-for-its-trailers",
            "cancel-during-a-retry-backoff-stops-the-retries",
            "cancel-while-the-server-is-slow",
        ][..],
        PAGINATION_CASES,
        HTTP1_CASES,
    ]
    .concat();
    control("drop-request-id", Must::AllBut(&not_failing), &[]);
}

#[test]
fn misreporting_the_request_id_and_attempts() {
    // Every case but the paginated ones, which report no facts, those no
    // gRPC server answers, and the inbound ones (the caller is the runner).
    let inbound = inbound_cases();
    let inbound: Vec<&str> = inbound.iter().map(String::as_str).collect();
    control(
        "misreport",
        Must::AllBut(&[PAGINATION_CASES, HTTP1_CASES, &inbound].concat()),
        &[],
    );
}

#[test]
fn an_http1_answer_taken_for_a_silent_server() {
    control("http1-hangs", Must::Exactly(HTTP1_CASES), &[]);
}

#[test]
fn retrying_non_retryable_codes() {
    control(
        "retry-non-retryable",
        Must::Exactly(&[
            "error-details-errorinfo-and-badrequest",
            "no-retry-internal",
            "no-retry-invalid-argument",
            "no-retry-not-found",
            "no-retry-permission-denied",
            "no-retry-unauthenticated",
            "error-details-errorinfo-and-badrequest@gzip",
            "error-details-errorinfo-and-badrequest@zstd",
            "a-failed-page-ends-the-items",
            // HTTP/2 resets of those codes.
            "rst-stream-inadequate-security-is-permission-denied",
            "rst-stream-internal-error-is-internal",
            // Proxy pages that map to those codes.
            "http-400-page-is-internal",
            "http-401-page-is-unauthenticated",
            "http-403-page-is-permission-denied",
        ]),
        &[],
    );
}

/// The pages whose HTTP status maps to a code of its own (contract §8).
const MAPPED_PAGES: &[&str] = &[
    "http-400-page-is-internal",
    "http-401-page-is-unauthenticated",
    "http-403-page-is-permission-denied",
    "http-404-page-is-unimplemented",
    "http-429-page-is-unavailable",
    "http-502-page-is-unavailable",
    "http-502-page-keeps-the-request-id-on-every-attempt",
    "http-502-page-without-a-body-is-unavailable",
    "http-503-page-is-unavailable",
    "http-503-page-then-ok-succeeds",
    "http-504-page-is-unavailable",
];

#[test]
fn accepting_malformed_responses() {
    control(
        "accept-malformed",
        Must::Exactly(&[
            "bad-compression-flag-is-internal",
            "compressed-flag-without-grpc-encoding-is-internal",
            "empty-trailers-are-unknown",
            "message-cut-short-is-internal",
            "message-past-the-receive-limit-is-resource-exhausted",
            "message-that-is-not-the-response-type-is-internal",
            "missing-grpc-status-among-other-trailers-is-unknown",
            "no-message-on-a-unary-call-is-internal",
            "two-messages-on-a-unary-call-is-internal",
            "trailers-only-ok-on-a-unary-call-is-internal",
            // The client's own receive limits.
            "declared-length-over-4-mib-fails-before-the-body",
            "message-over-a-configured-limit-is-resource-exhausted",
            "own-limit-is-not-retried",
            "stream-message-over-the-limit-after-one-in-bounds",
        ]),
        &[],
    );
}

#[test]
fn no_http_to_grpc_mapping() {
    control("no-http-mapping", Must::Exactly(MAPPED_PAGES), &[]);
}

#[test]
fn every_other_page_taken_for_an_outage() {
    control(
        "http-else-unavailable",
        Must::Exactly(&[
            "http-200-html-is-unknown",
            "http-200-json-is-unknown",
            "http-408-page-is-unknown",
            "http-409-page-is-unknown",
            "http-412-page-is-unknown",
            "http-413-page-is-unknown",
            "http-418-page-is-unknown",
            "http-431-page-is-unknown",
            "http-500-page-is-unknown",
            "http-501-page-is-unknown",
            "http-505-page-is-unknown",
        ]),
        &[],
    );
}

#[test]
fn ignoring_the_deadline() {
    let mut must: Vec<String> = DEADLINE_CASES.iter().map(|s| s.to_string()).collect();
    must.extend(CUT_REPLY_CASES.iter().map(|s| s.to_string()));
    must.extend(INBOUND_CLIENT_BUDGET_CASES.iter().map(|s| s.to_string()));
    control("ignore-deadline", Must::These(must), &[]);
}

#[test]
fn a_scaled_budget() {
    control(
        "scaled-budget",
        Must::Exactly(&[DEADLINE_CASES, INBOUND_CLIENT_BUDGET_CASES].concat()),
        LONG_CASES,
    );
}

#[test]
fn a_deadline_that_only_stops_waiting() {
    // The deadline passes as it should, but the stream is left open.
    control(
        "abandon-on-deadline",
        Must::These(
            CUT_REPLY_CASES
                .iter()
                .chain(&["deadline-before-the-headers-resets-the-stream"])
                .map(|s| s.to_string())
                .collect(),
        ),
        &[],
    );
}

#[test]
fn ignoring_cancellation() {
    control("ignore-cancel", Must::Exactly(CANCEL_CASES), &[]);
}

/// The cases of the compression axis, and `extra`.
fn axis_cases_and(extra: &[&str]) -> Vec<String> {
    all_cases()
        .into_iter()
        .filter(|id| id.contains('@'))
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

#[test]
fn sending_uncompressed() {
    let must = axis_cases_and(&[
        "compressed-request-kept-on-retry",
        "gzip-request-when-configured",
        "zstd-request-when-configured",
    ]);
    control("no-compression", Must::These(must), &[]);
}

#[test]
fn accepting_no_compression() {
    let must = axis_cases_and(&[
        "corrupt-gzip-message-is-internal",
        "gzip-accepted-by-default",
        "gzip-response-is-decoded",
        "limit-applies-to-the-decompressed-size",
        "uncompressed-message-in-a-compressed-response-is-read",
        "zstd-response-is-decoded",
    ]);
    control("no-accept-compression", Must::These(must), &[]);
}

#[test]
fn no_receive_limit() {
    control(
        "no-decode-limit",
        Must::Exactly(&[
            "declared-length-over-4-mib-fails-before-the-body",
            "limit-applies-to-the-decompressed-size",
            "message-over-a-configured-limit-is-resource-exhausted",
            "message-past-the-receive-limit-is-resource-exhausted",
            "own-limit-is-not-retried",
            "stream-message-over-the-limit-after-one-in-bounds",
        ]),
        &[],
    );
}

#[test]
fn a_receive_limit_off_by_one() {
    control(
        "decode-limit-exclusive",
        Must::Exactly(&[
            // Refused at the limit, and the limit named is not the one configured.
            "declared-length-over-4-mib-fails-before-the-body",
            "message-at-a-configured-limit-is-read",
            "message-over-a-configured-limit-is-resource-exhausted",
            "stream-message-over-the-limit-after-one-in-bounds",
        ]),
        &[],
    );
}

#[test]
fn a_one_second_default_timeout() {
    control(
        "default-timeout-1s",
        Must::Exactly(&[
            "default-budget-on-a-stream",
            "defaults-unary-ok",
            "defaults-unary-ok@gzip",
            "defaults-unary-ok@zstd",
            // The downstream client's default against a 2.5 s inbound
            // deadline, and against none.
            "inbound-deadline-is-carried-downstream",
            "inbound-malformed-trace-headers-are-ignored",
        ]),
        LONG_CASES,
    );
}

#[test]
fn ignoring_the_request() {
    // The server decodes every attempt's request: every case that sends one
    // other than the empty message fails.
    control("ignore-request", Must::These(cases_with_a_request()), &[]);
}

#[test]
fn decoding_responses_as_the_wrong_type() {
    // Every case whose responses decode differently as the request type
    // (a stream's messages, a unary response with fields).
    control(
        "wrong-response-type",
        Must::Exactly(&[
            "cancel-a-stream-after-two-messages",
            "cancel-a-stream-waiting-for-its-trailers",
            "completed-call-is-not-reset",
            "compressed-request-kept-on-retry",
            "deadline-before-the-trailers-of-a-stream",
            "deadline-between-stream-messages-resets-the-stream",
            "default-budget-on-a-stream",
            "gzip-request-when-configured",
            "gzip-response-is-decoded",
            "message-at-a-configured-limit-is-read",
            "response-message-is-received",
            "response-message-is-received@gzip",
            "response-message-is-received@zstd",
            "stream-cut-by-the-deadline",
            "stream-cut-by-the-deadline@gzip",
            "stream-cut-by-the-deadline@zstd",
            "stream-message-over-the-limit-after-one-in-bounds",
            "stream-metadata-same-as-unary",
            "stream-metadata-same-as-unary@gzip",
            "stream-metadata-same-as-unary@zstd",
            "stream-not-retried-after-a-message",
            "stream-not-retried-after-a-message@gzip",
            "stream-not-retried-after-a-message@zstd",
            "stream-retried-before-first-message",
            "uncompressed-message-in-a-compressed-response-is-read",
            "zstd-request-when-configured",
            "zstd-response-is-decoded",
            "dropped-connection-under-a-stream",
            "refused-stream-on-a-stream-method",
            "a-silent-stream-ends-at-the-idle-timeout",
            "a-stream-outlives-the-client-budget-while-it-sends",
            "idle-timeout-sends-no-grpc-timeout",
        ]),
        &[],
    );
}

#[test]
fn no_roster() {
    control("no-roster", Must::Exactly(&["platform-key-resolves"]), &[]);
}

#[test]
fn forwarding_the_callers_traceparent() {
    control(
        "forward-traceparent",
        Must::Exactly(&["traceparent-continues-the-callers-trace"]),
        &[],
    );
}

#[test]
fn a_rest_style_http_mapping() {
    control(
        "rest-http-mapping",
        Must::Exactly(&[
            "http-408-page-is-unknown",
            "http-409-page-is-unknown",
            "http-412-page-is-unknown",
            "http-413-page-is-unknown",
            "http-501-page-is-unknown",
        ]),
        &[],
    );
}

#[test]
fn a_status_taken_from_leading_headers() {
    control(
        "status-from-leading-headers",
        Must::Exactly(&["status-in-the-trailers-wins-over-the-headers"]),
        &[],
    );
}

#[test]
fn grpc_message_not_decoded() {
    control(
        "raw-grpc-message",
        Must::Exactly(&[
            "grpc-message-is-percent-decoded",
            // Failures whose message, sent after headers, needs decoding.
            "error-details-errorinfo-and-badrequest",
            "error-details-errorinfo-and-badrequest@gzip",
            "error-details-errorinfo-and-badrequest@zstd",
            "exhausted-returns-last-status",
            "no-backoff-past-the-deadline",
            "status-message-survives-unicode-and-controls",
            // A downstream failure handed on with its message as it came.
            "inbound-handed-on-failure-carries-no-sdk-facts",
        ]),
        &[],
    );
}

#[test]
fn grpc_message_decoded_strictly() {
    control(
        "strict-grpc-message",
        Must::Exactly(&["grpc-message-with-a-stray-percent-is-kept"]),
        &[],
    );
}

#[test]
fn a_grpc_status_that_is_no_code_taken_for_ok() {
    control(
        "lenient-grpc-status",
        Must::Exactly(&[
            "grpc-status-not-a-number-is-internal",
            "grpc-status-out-of-range-is-unknown",
        ]),
        &[],
    );
}

#[test]
fn http2_errors_not_read() {
    control(
        "no-h2-error-mapping",
        Must::Exactly(&[
            "abrupt-goaway-retried-on-a-new-connection",
            "dropped-connection-retried-on-a-new-connection",
            "dropped-connection-under-a-stream",
            "dropped-connection-without-retries-is-unavailable",
            "refused-stream-on-a-stream-method",
            "refused-stream-resent-transparently",
            "refused-stream-spends-no-attempt",
            "refused-twice-falls-to-the-retry-policy",
            "refused-twice-without-retries-is-unavailable",
            "rst-stream-cancel-is-cancelled",
            "rst-stream-enhance-your-calm-exhausted",
            "rst-stream-enhance-your-calm-is-resource-exhausted",
            "rst-stream-inadequate-security-is-permission-denied",
            "rst-stream-internal-error-is-internal",
            // An HTTP/1 answer is a transport failure too.
            "http1-answer-held-open-is-unavailable-before-the-deadline",
            "http1-answer-to-a-stream-is-unavailable",
            "http1-answer-to-the-http2-preface-is-unavailable",
        ]),
        &[],
    );
}

/// The pagination cases of more than one page.
fn multi_page_cases() -> Vec<String> {
    PAGINATION_CASES
        .iter()
        .filter(|id| **id != "one-page-is-one-call")
        .map(|id| id.to_string())
        .collect()
}

#[test]
fn the_first_page_only() {
    control("no-pagination", Must::These(multi_page_cases()), &[]);
}

#[test]
fn the_page_size_dropped_after_the_first_page() {
    control("drop-page-size", Must::These(multi_page_cases()), &[]);
}

#[test]
fn no_guard_against_a_repeated_token() {
    control(
        "no-loop-guard",
        Must::Exactly(&["a-repeated-token-ends-the-items-with-internal"]),
        &[],
    );
}

#[test]
fn long_lived_calls_kept_on_the_whole_call_deadline() {
    control(
        "ignore-idle-timeout",
        Must::Exactly(&[
            "a-silent-stream-ends-at-the-idle-timeout",
            "a-stream-outlives-the-client-budget-while-it-sends",
            "idle-timeout-sends-no-grpc-timeout",
            "no-headers-within-the-idle-timeout",
        ]),
        &[],
    );
}

#[test]
fn a_server_without_the_inbound_layer() {
    // Everything the layer does fails, the request id's echo first.
    control("inbound-no-layer", Must::These(inbound_cases()), &[]);
}

#[test]
fn identity_forwarded_on_its_own() {
    control(
        "inbound-forward-identity",
        Must::Exactly(&["inbound-identity-is-not-forwarded"]),
        &[],
    );
}

#[test]
fn the_sdks_facts_handed_on() {
    control(
        "inbound-hand-on-facts",
        Must::Exactly(&["inbound-handed-on-failure-carries-no-sdk-facts"]),
        &[],
    );
}

#[test]
fn malformed_inbound_headers_refused() {
    control(
        "inbound-strict",
        Must::Exactly(&["inbound-malformed-trace-headers-are-ignored"]),
        &[],
    );
}

#[test]
fn a_handler_that_never_calls_downstream() {
    control("inbound-no-downstream", Must::These(inbound_cases()), &[]);
}
