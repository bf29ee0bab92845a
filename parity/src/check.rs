//! Compares an adapter's [`Outcome`] and the server's attempt log with a
//! case's [`Expect`]. Every check looks at the wire where it can: what the
//! server decoded, what headers arrived, when; what the adapter reports is
//! compared with that, never trusted alone.

use std::time::Duration;

use ameide_sdk::testkit::{RecordedAttempt, SeenStream, StreamFault};
use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::case::{Case, HeaderCheck};
use crate::protocol::Outcome;

/// How much longer the runner's clock may see a call than `max_elapsed_ms`:
/// it also counts writing the request line, the adapter's set-up and
/// reading the outcome line.
pub const RUNNER_SLACK_MS: u64 = 400;

/// One attempt as a server saw it: the recording gRPC server's or the raw
/// HTTP/2 server's.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Every header that arrived.
    pub headers: http::HeaderMap,
    /// Arrival time.
    pub at: tokio::time::Instant,
    /// The request messages, when the server read them.
    pub messages: Option<Vec<bytes::Bytes>>,
    /// Whether the client reset the stream before the reply was done, when
    /// the server can tell.
    pub cancelled: Option<bool>,
    /// The server refused the stream unprocessed (`REFUSED_STREAM`): a
    /// transparent retry sends it again without it being an attempt of the
    /// retry policy.
    pub refused: bool,
    /// Which connection carried it.
    pub connection: u64,
}

impl Attempt {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl From<&RecordedAttempt> for Attempt {
    fn from(a: &RecordedAttempt) -> Self {
        Attempt {
            headers: a.headers.clone(),
            at: a.at,
            messages: Some(a.messages.clone()),
            cancelled: Some(a.cancelled),
            refused: false,
            connection: a.connection,
        }
    }
}

impl From<&SeenStream> for Attempt {
    fn from(s: &SeenStream) -> Self {
        Attempt {
            headers: s.headers.clone(),
            at: s.at,
            messages: s.messages.clone(),
            cancelled: None,
            refused: s.fault == StreamFault::Refuse,
            connection: s.connection as u64,
        }
    }
}

/// What a case is judged on.
pub struct Evidence<'a> {
    /// The case.
    pub case: &'a Case,
    /// What the adapter wrote.
    pub outcome: &'a Outcome,
    /// What the server saw, in order.
    pub attempts: &'a [Attempt],
    /// From writing the request line to reading the outcome, runner clock.
    pub runner_elapsed: Duration,
    /// The method's request type.
    pub input: &'a MessageDescriptor,
    /// The method's response type.
    pub output: &'a MessageDescriptor,
}

/// Every expectation the evidence violates, as readable lines.
pub fn failures(e: &Evidence<'_>) -> Vec<String> {
    let (expect, outcome, attempts) = (&e.case.expect, e.outcome, e.attempts);
    let mut out = Vec::new();
    if let Some(err) = &outcome.adapter_error {
        out.push(format!("adapter could not run the case: {err}"));
        return out;
    }
    if outcome.code != expect.code {
        out.push(format!(
            "code: expected {}, got {:?} ({:?})",
            expect.code, outcome.code, outcome.message
        ));
    }
    if let Some(message) = &expect.message
        && &outcome.message != message
    {
        out.push(format!(
            "message: expected {message:?}, got {:?}",
            outcome.message
        ));
    }
    if let Some(needle) = &expect.message_contains
        && !outcome.message.contains(needle.as_str())
    {
        out.push(format!(
            "message: expected to contain {needle:?}, got {:?}",
            outcome.message
        ));
    }
    if e.case.inbound.is_some() && attempts.is_empty() {
        out.push("the handler's downstream call never reached the harness server".into());
    }
    if let Some(n) = expect.attempts
        && attempts.len() != n
    {
        out.push(format!(
            "attempts on the wire: expected {n}, got {}",
            attempts.len()
        ));
    }
    if let Some(n) = expect.messages
        && outcome.responses.len() != n
    {
        out.push(format!(
            "messages received: expected {n}, got {}",
            outcome.responses.len()
        ));
    }
    out.extend(request_checks(e));
    out.extend(response_checks(e));
    out.extend(fact_checks(e));
    for detail in &expect.details {
        if !outcome.details.contains(detail) {
            out.push(format!(
                "detail {detail:?} not decoded (got {:?})",
                outcome.details
            ));
        }
    }
    out.extend(elapsed_checks(e));
    out.extend(header_checks(e));
    if expect.continues_trace {
        out.extend(trace_checks(e));
    }
    out.extend(timeout_checks(e));
    if let Some(n) = expect.connections {
        let seen: std::collections::BTreeSet<u64> = attempts.iter().map(|a| a.connection).collect();
        if seen.len() != n {
            out.push(format!(
                "the attempts came on {} connection(s), expected {n}",
                seen.len()
            ));
        }
    }
    if let Some(want) = expect.reset_by_client {
        match attempts.last() {
            Some(last) if last.cancelled.is_none() => {
                out.push("case: this server cannot tell whether the client reset a stream".into())
            }
            Some(last) if last.cancelled != Some(want) => out.push(if want {
                "the server finished the last attempt (or is still on it): the client never reset its stream (RST_STREAM)".to_owned()
            } else {
                "the client reset the last attempt's stream before the server finished".to_owned()
            }),
            Some(_) => {}
            None => out.push("no attempt reached the server".into()),
        }
    }
    for delay in &expect.delays {
        let (Some(before), Some(after)) = (
            attempts.get(delay.before_attempt.wrapping_sub(2)),
            attempts.get(delay.before_attempt.wrapping_sub(1)),
        ) else {
            out.push(format!(
                "delay before attempt {}: attempt missing",
                delay.before_attempt
            ));
            continue;
        };
        let gap = (after.at - before.at).as_millis() as u64;
        if gap < delay.min_ms || gap > delay.max_ms {
            out.push(format!(
                "delay before attempt {}: {gap} ms outside [{}, {}] ms",
                delay.before_attempt, delay.min_ms, delay.max_ms
            ));
        }
    }
    out
}

/// Every attempt carried exactly one request message, equal (field by
/// field, as the server decodes it) to the case's request.
fn request_checks(e: &Evidence<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let decode = |json: &serde_json::Value, what: &str| {
        DynamicMessage::deserialize(e.input.clone(), json)
            .map_err(|err| format!("case: {what} is not a {}: {err}", e.input.full_name()))
    };
    // One expected request per attempt, or the call's on every attempt.
    let expected: Vec<DynamicMessage> = match &e.case.expect.requests {
        Some(list) => {
            if list.len() != e.attempts.len() {
                out.push(format!(
                    "{} requests arrived, the case expects {}",
                    e.attempts.len(),
                    list.len()
                ));
            }
            match list
                .iter()
                .enumerate()
                .map(|(n, r)| decode(r, &format!("expect.requests[{n}]")))
                .collect()
            {
                Ok(v) => v,
                Err(err) => return vec![err],
            }
        }
        None => match decode(&e.case.call.request, "call.request") {
            Ok(m) => vec![m; e.attempts.len()],
            Err(err) => return vec![err],
        },
    };
    for (n, (attempt, expected)) in e.attempts.iter().zip(&expected).enumerate() {
        let n = n + 1;
        let Some(messages) = &attempt.messages else {
            // Refused or dropped unread: nothing to compare.
            continue;
        };
        match messages.as_slice() {
            [one] => match DynamicMessage::decode(e.input.clone(), one.as_ref()) {
                Ok(got) if same(&got, expected) => {}
                Ok(got) => out.push(format!(
                    "attempt {n}: the server decoded request {} but the case's request is {}",
                    json(&got),
                    json(expected)
                )),
                Err(err) => out.push(format!(
                    "attempt {n}: the request is not a {}: {err}",
                    e.input.full_name()
                )),
            },
            other => out.push(format!(
                "attempt {n}: {} request messages arrived, expected 1",
                other.len()
            )),
        }
    }
    out
}

/// The client's decoded responses equal the case's, field by field.
fn response_checks(e: &Evidence<'_>) -> Vec<String> {
    let Some(expected) = &e.case.expect.responses else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if e.outcome.responses.len() != expected.len() {
        out.push(format!(
            "responses: expected {}, got {}",
            expected.len(),
            e.outcome.responses.len()
        ));
    }
    for (n, (want, got)) in expected.iter().zip(&e.outcome.responses).enumerate() {
        let want = match DynamicMessage::deserialize(e.output.clone(), want) {
            Ok(m) => m,
            Err(err) => {
                out.push(format!(
                    "case: responses[{n}] is not a {}: {err}",
                    e.output.full_name()
                ));
                continue;
            }
        };
        match DynamicMessage::deserialize(e.output.clone(), got) {
            Ok(got) if same(&got, &want) => {}
            Ok(got) => out.push(format!(
                "response {}: expected {}, the client decoded {}",
                n + 1,
                json(&want),
                json(&got)
            )),
            Err(err) => out.push(format!(
                "response {}: {got} is not proto-JSON of {}: {err}",
                n + 1,
                e.output.full_name()
            )),
        }
    }
    out
}

/// The request id and attempts the adapter reports match the wire.
fn fact_checks(e: &Evidence<'_>) -> Vec<String> {
    let (outcome, attempts) = (e.outcome, e.attempts);
    let mut out = Vec::new();
    match (&outcome.request_id, attempts.last()) {
        (Some(reported), Some(last)) => {
            let wire = last.header("x-request-id");
            if wire != Some(reported.as_str()) {
                out.push(format!(
                    "reported request id {reported:?}, but {wire:?} went on the wire"
                ));
            }
        }
        // An inbound answer always echoes the request id (contract §6).
        (None, _) if e.case.inbound.is_some() => {
            out.push("the server's answer echoes no x-request-id".into());
        }
        (None, _) if e.case.expect.reports_call_facts => {
            out.push("the client reports no request id".into());
        }
        _ => {}
    }
    // A stream the server refused unprocessed and that was sent again as
    // the same attempt (the next stream counts the same previous attempts)
    // was a transparent resend, not an attempt of the retry policy.
    let previous = |a: &Attempt| a.header("grpc-previous-rpc-attempts").map(str::to_owned);
    let resent = attempts
        .windows(2)
        .filter(|w| w[0].refused && previous(&w[0]) == previous(&w[1]))
        .count();
    let counted = attempts.len() - resent;
    match outcome.attempts {
        // No gRPC server to count them: an HTTP/1.1 server answered.
        Some(_) if e.case.server.http1.is_some() => {}
        Some(reported) if reported != counted as u64 => out.push(format!(
            "reported {reported} attempts, the server saw {counted}{}",
            if counted == attempts.len() {
                String::new()
            } else {
                format!(" (and {resent} refused unprocessed, resent as the same attempt)")
            }
        )),
        // Inbound: the caller is the runner; only the echoed request id is reported.
        None if e.case.expect.reports_call_facts && e.case.inbound.is_none() => {
            out.push("the client reports no attempt count".into());
        }
        _ => {}
    }
    out
}

/// The call's duration on the adapter's clock and on the runner's.
fn elapsed_checks(e: &Evidence<'_>) -> Vec<String> {
    let (expect, outcome) = (&e.case.expect, e.outcome);
    let mut out = Vec::new();
    let runner = e.runner_elapsed.as_secs_f64() * 1000.0;
    let reported = outcome.elapsed_ms;
    if let Some(r) = reported {
        // A call cannot take longer than the runner waited for it, nor less
        // than the span over which its attempts arrived.
        if r > runner + 5.0 {
            out.push(format!(
                "reported elapsed {r:.0} ms is more than the runner's {runner:.0} ms"
            ));
        }
        if let (Some(first), Some(last)) = (e.attempts.first(), e.attempts.last()) {
            let span = (last.at - first.at).as_secs_f64() * 1000.0;
            if r + 5.0 < span {
                out.push(format!(
                    "reported elapsed {r:.0} ms is less than the {span:.0} ms between the first and last attempt"
                ));
            }
        }
    }
    if let Some(max) = expect.max_elapsed_ms {
        match reported {
            Some(r) if r > max as f64 => out.push(format!("elapsed {r:.0} ms > {max} ms")),
            None => out.push("elapsed_ms not reported".into()),
            _ => {}
        }
        if runner > (max + RUNNER_SLACK_MS) as f64 {
            out.push(format!(
                "the runner waited {runner:.0} ms > {max} ms + {RUNNER_SLACK_MS} ms"
            ));
        }
    }
    if let Some(min) = expect.min_elapsed_ms {
        match reported {
            Some(r) if r < min as f64 => out.push(format!("elapsed {r:.0} ms < {min} ms")),
            None => out.push("elapsed_ms not reported".into()),
            _ => {}
        }
        if runner < min as f64 {
            out.push(format!("the runner waited only {runner:.0} ms < {min} ms"));
        }
    }
    out
}

fn header_checks(e: &Evidence<'_>) -> Vec<String> {
    let attempts = e.attempts;
    let mut out = Vec::new();
    for check in &e.case.expect.headers {
        if check.attempts.is_empty() && attempts.is_empty() {
            out.push(format!(
                "header {}: no attempt arrived to carry it",
                check.name
            ));
            continue;
        }
        let which: Vec<usize> = if check.attempts.is_empty() {
            (1..=attempts.len()).collect()
        } else {
            check.attempts.clone()
        };
        for n in which {
            let Some(attempt) = attempts.get(n.wrapping_sub(1)) else {
                out.push(format!("header {}: attempt {n} never arrived", check.name));
                continue;
            };
            let value = attempt.header(&check.name);
            let at = format!("attempt {n}: {}", check.name);
            value_checks(check, value, &at, &mut out);
            if check.same_as_previous && n > 1 {
                let previous = attempts.get(n - 2).and_then(|a| a.header(&check.name));
                if value != previous || value.is_none() {
                    out.push(format!(
                        "{at} = {value:?} differs from attempt {}'s {previous:?}",
                        n - 1
                    ));
                }
            }
        }
    }
    out
}

/// One header check's verdicts on one value.
fn value_checks(check: &HeaderCheck, value: Option<&str>, at: &str, out: &mut Vec<String>) {
    if check.absent && value.is_some() {
        out.push(format!("{at} must be absent, got {value:?}"));
    }
    if check.present && value.is_none() {
        out.push(format!("{at} must be present"));
    }
    if let Some(exact) = &check.exact
        && value != Some(exact.as_str())
    {
        out.push(format!("{at} expected {exact:?}, got {value:?}"));
    }
    if let Some(needle) = &check.contains
        && !value.is_some_and(|v| v.contains(needle.as_str()))
    {
        out.push(format!("{at} must contain {needle:?}, got {value:?}"));
    }
    if let Some(pattern) = &check.pattern {
        match regex::Regex::new(&format!("^(?:{pattern})$")) {
            Ok(re) if value.is_some_and(|v| re.is_match(v)) => {}
            Ok(_) => out.push(format!("{at} must match /{pattern}/, got {value:?}")),
            Err(err) => out.push(format!("{at}: bad pattern {pattern:?}: {err}")),
        }
    }
}

/// Inbound cases: the checks on the metadata (headers, then trailers) of
/// the adapter's server's answer, as the runner received it.
pub fn response_failures(case: &Case, metadata: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for check in &case.expect.response_headers {
        let value = metadata
            .iter()
            .find(|(name, _)| *name == check.name)
            .map(|(_, v)| v.as_str());
        let at = format!("the server's answer: {}", check.name);
        value_checks(check, value, &at, &mut out);
    }
    if let Some(only) = &case.expect.response_metadata_only {
        let mut extra: Vec<&str> = metadata
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !only.iter().any(|o| o == name))
            .collect();
        extra.dedup();
        if !extra.is_empty() {
            out.push(format!(
                "the server's answer carries metadata beyond gRPC's and the request id: {extra:?}"
            ));
        }
    }
    out
}

/// `traceparent` on every attempt: the caller's trace id, a parent span id
/// that is not the caller's (the client's own span), valid W3C syntax.
fn trace_checks(e: &Evidence<'_>) -> Vec<String> {
    let Some(caller) = e.case.call.traceparent.as_deref() else {
        return vec!["case: continues_trace needs call.traceparent".into()];
    };
    let caller: Vec<&str> = caller.split('-').collect();
    let mut out = Vec::new();
    if e.attempts.is_empty() {
        out.push("no attempt arrived to carry a traceparent".into());
    }
    for (n, attempt) in e.attempts.iter().enumerate() {
        let n = n + 1;
        let Some(value) = attempt.header("traceparent") else {
            out.push(format!("attempt {n}: no traceparent"));
            continue;
        };
        let parts: Vec<&str> = value.split('-').collect();
        let valid = parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            out.push(format!(
                "attempt {n}: traceparent {value:?} is not W3C version 00"
            ));
            continue;
        }
        if caller.get(1) != Some(&parts[1]) {
            out.push(format!(
                "attempt {n}: trace id {} is not the caller's {:?}",
                parts[1],
                caller.get(1)
            ));
        }
        if caller.get(2) == Some(&parts[2]) {
            out.push(format!(
                "attempt {n}: parent span id {} is the caller's own: the client made no span (it forwarded the caller's traceparent)",
                parts[2]
            ));
        }
    }
    out
}

/// How much shorter than the budget left a `grpc-timeout` may be beyond
/// the case's tolerance: the client's budget starts before its connect
/// (a fresh client per case: TCP and the HTTP/2 handshake across two
/// processes), the server's measure at the first attempt's arrival.
pub const CONNECT_ALLOWANCE_MS: u64 = 200;

/// `grpc-timeout` within the budget left: at most `tolerance_ms` more, at
/// most `tolerance_ms` + [`CONNECT_ALLOWANCE_MS`] less.
fn timeout_checks(e: &Evidence<'_>) -> Vec<String> {
    let Some(t) = &e.case.expect.grpc_timeout else {
        return Vec::new();
    };
    let Some(first) = e.attempts.first() else {
        return vec!["grpc-timeout: no attempt arrived to carry it".into()];
    };
    let mut out = Vec::new();
    let budget = Duration::from_millis(t.budget_ms);
    let tolerance = Duration::from_millis(t.tolerance_ms);
    let below = tolerance + Duration::from_millis(CONNECT_ALLOWANCE_MS);
    for (n, attempt) in e.attempts.iter().enumerate() {
        let left = budget.saturating_sub(attempt.at - first.at);
        match attempt
            .header("grpc-timeout")
            .and_then(ameide_sdk::testkit::decode_grpc_timeout)
        {
            Some(sent) if sent > left + tolerance => out.push(format!(
                "attempt {}: grpc-timeout {sent:?} exceeds the budget left ({left:?} + {tolerance:?})",
                n + 1
            )),
            Some(sent) if sent + below < left => out.push(format!(
                "attempt {}: grpc-timeout {sent:?} is short of the budget left ({left:?} − {below:?})",
                n + 1
            )),
            Some(_) => {}
            None => out.push(format!("attempt {}: no valid grpc-timeout", n + 1)),
        }
    }
    out
}

/// Equal as proto-JSON (which leaves out fields at their default value,
/// so `{"index": 0}` and `{}` are the same message, as on the wire).
fn same(a: &DynamicMessage, b: &DynamicMessage) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

fn json(message: &DynamicMessage) -> String {
    serde_json::to_string(message).unwrap_or_else(|_| format!("{message:?}"))
}
