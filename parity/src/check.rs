//! Compares an adapter's [`Outcome`] and the server's attempt log with a case's [`Expect`].

use std::time::Duration;

use ameide_sdk::testkit::RecordedAttempt;

use crate::case::Expect;
use crate::protocol::Outcome;

/// Every expectation the outcome or the attempt log violates, as readable lines.
pub fn failures(expect: &Expect, outcome: &Outcome, attempts: &[RecordedAttempt]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(err) = &outcome.adapter_error {
        out.push(format!("adapter could not run the case: {err}"));
        return out;
    }
    if outcome.code != expect.code {
        out.push(format!(
            "code: expected {}, got {} ({:?})",
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
    if let Some(n) = expect.attempts
        && attempts.len() != n
    {
        out.push(format!(
            "attempts on the wire: expected {n}, got {}",
            attempts.len()
        ));
    }
    if let Some(n) = expect.messages
        && outcome.messages != n
    {
        out.push(format!(
            "messages received: expected {n}, got {}",
            outcome.messages
        ));
    }
    for detail in &expect.details {
        if !outcome.details.contains(detail) {
            out.push(format!(
                "detail {detail:?} not decoded (got {:?})",
                outcome.details
            ));
        }
    }
    if let Some(max) = expect.max_elapsed_ms
        && outcome.elapsed_ms > max
    {
        out.push(format!("elapsed {} ms > {max} ms", outcome.elapsed_ms));
    }
    if let Some(min) = expect.min_elapsed_ms
        && outcome.elapsed_ms < min
    {
        out.push(format!("elapsed {} ms < {min} ms", outcome.elapsed_ms));
    }
    for check in &expect.headers {
        let which: Vec<usize> = if check.attempts.is_empty() {
            (1..=attempts.len()).collect()
        } else {
            check.attempts.clone()
        };
        for n in which {
            let Some(attempt) = attempts.get(n - 1) else {
                out.push(format!("header {}: attempt {n} never arrived", check.name));
                continue;
            };
            let value = attempt.header(&check.name);
            let at = format!("attempt {n}: {}", check.name);
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
                    Err(e) => out.push(format!("{at}: bad pattern {pattern:?}: {e}")),
                }
            }
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
    if let Some(t) = &expect.grpc_timeout
        && let Some(first) = attempts.first()
    {
        let budget = Duration::from_millis(t.budget_ms);
        let tolerance = Duration::from_millis(t.tolerance_ms);
        for (n, attempt) in attempts.iter().enumerate() {
            let left = budget.saturating_sub(attempt.at - first.at);
            match attempt.header("grpc-timeout").and_then(ameide_sdk::testkit::decode_grpc_timeout) {
                Some(sent) if sent <= left + tolerance => {}
                Some(sent) => out.push(format!(
                    "attempt {}: grpc-timeout {sent:?} exceeds the budget left ({left:?} ± {tolerance:?})",
                    n + 1
                )),
                None => out.push(format!("attempt {}: no valid grpc-timeout", n + 1)),
            }
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
