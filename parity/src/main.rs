//! `ameide-parity`: the parity runner and harness server.
//!
//! ```text
//! ameide-parity run [--cases DIR] [--adapter "CMD ARGS…"] [--run TEXT] [--skip TEXT]
//!                   [--known-failing FILE] [--report FILE] [--junit FILE] [--break BEHAVIOUR]…
//!                   [--case-timeout SECONDS] [--jobs N] [--no-skip]
//! ameide-parity server                # the harness server alone, for adapter development
//! ```
//!
//! The cases are `--cases DIR`, else a `cases` directory next to the binary
//! (a release bundle), else the repository's `parity/cases`.
//!
//! ```text
//! ameide-parity descriptor-set FILE   # the bundle's FileDescriptorSet, for adapters
//! ```
//!
//! `run` serves the harness server on loopback, starts the adapter (default:
//! the Rust reference adapter next to this binary; `--break` flags go to it),
//! and for each case: scripts the server, sends the case, reads the outcome,
//! and checks it and the server's attempt log against the case's expectations.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ameide_parity::case::{AttemptReply, Case, Detail, H2Fault};
use ameide_parity::protocol::{Outcome, Request, Serve};
use ameide_parity::{check, inbound, wire};
use ameide_sdk::testkit::{
    H2FaultServer, MockServer, RawReply, RawTcpServer, Reply, StreamFault, serve_tcp,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

fn code(name: &str) -> Result<Code, String> {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| ameide_sdk::canonical_code_name(*c) == name)
        .ok_or_else(|| format!("unknown status code {name:?}"))
}

/// A compression the harness speaks, by its `grpc-encoding` name.
fn encoding(name: &str) -> Result<tonic::codec::CompressionEncoding, String> {
    match name {
        "gzip" => Ok(tonic::codec::CompressionEncoding::Gzip),
        "zstd" => Ok(tonic::codec::CompressionEncoding::Zstd),
        other => Err(format!("unknown compression {other:?} (known: gzip, zstd)")),
    }
}

/// The encodings of the `compression` axis.
const COMPRESSIONS: &[&str] = &["gzip", "zstd"];

/// A case and its variants along its axes (see [`Case::axes`]).
fn expand(case: Case) -> Result<Vec<Case>, String> {
    let mut out = vec![case.clone()];
    for axis in &case.axes {
        match axis.as_str() {
            "compression" => {
                for name in COMPRESSIONS {
                    let mut variant = case.clone();
                    variant.id = format!("{}@{name}", case.id);
                    variant.axes.clear();
                    variant.description = format!(
                        "{} (requests and responses compressed with {name})",
                        case.description
                    );
                    variant.client.compression = Some((*name).to_owned());
                    for attempt in &mut variant.server.attempts {
                        if attempt.http.is_none() {
                            attempt.compress = Some((*name).to_owned());
                        }
                    }
                    for check in [
                        serde_json::json!({"name": "grpc-encoding", "exact": name}),
                        serde_json::json!({"name": "grpc-accept-encoding", "contains": name}),
                    ] {
                        variant
                            .expect
                            .headers
                            .push(serde_json::from_value(check).map_err(|e| e.to_string())?);
                    }
                    out.push(variant);
                }
            }
            other => return Err(format!("unknown axis {other:?} (known: compression)")),
        }
    }
    Ok(out)
}

/// An attempt's scripted messages, encoded as the method's response type;
/// `one_at_least` (an OK unary reply) sends one empty message when none is
/// scripted: a valid response of every method.
fn encoded_messages(
    a: &AttemptReply,
    output: &prost_reflect::MessageDescriptor,
    one_at_least: bool,
) -> Result<Vec<bytes::Bytes>, String> {
    let mut messages = a
        .messages
        .iter()
        .map(|m| wire::encode(output.clone(), m))
        .collect::<Result<Vec<_>, _>>()?;
    if one_at_least && messages.is_empty() {
        messages.push(bytes::Bytes::new());
    }
    Ok(messages)
}

/// The server's reply for one attempt. An `OK` unary reply without scripted
/// messages sends one empty message: a valid response of every method.
fn reply(
    a: &AttemptReply,
    output: &prost_reflect::MessageDescriptor,
    unary: bool,
) -> Result<Reply, String> {
    if let Some(page) = &a.http {
        let body = match &page.body_hex {
            Some(hex) => (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                        .ok_or_else(|| format!("body_hex {hex:?} is not hex bytes"))
                })
                .collect::<Result<Vec<u8>, String>>()?,
            None => page.body.clone().into_bytes(),
        };
        let mut r = Reply::http(page.status)
            .body(body)
            .after(Duration::from_millis(a.delay_ms));
        if let Some(trailers) = &page.trailers {
            r = r.trailers(
                trailers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(content_type) = &page.content_type {
            r = r.header("content-type", content_type);
        }
        for (k, v) in &a.headers {
            r = r.header(k, v);
        }
        return Ok(r);
    }
    let code = code(&a.status)?;
    let messages = encoded_messages(a, output, unary && code == Code::Ok)?;
    let status = if a.details.is_empty() {
        Status::new(code, a.message.clone())
    } else {
        let mut details = ErrorDetails::new();
        for d in &a.details {
            match d {
                Detail::ErrorInfo {
                    reason,
                    domain,
                    metadata,
                } => {
                    details.set_error_info(
                        reason.clone(),
                        domain.clone(),
                        metadata
                            .clone()
                            .into_iter()
                            .collect::<std::collections::HashMap<_, _>>(),
                    );
                }
                Detail::RetryInfo { retry_delay_ms } => {
                    details.set_retry_info(Some(Duration::from_millis(*retry_delay_ms)));
                }
                Detail::BadRequest { violations } => {
                    for (field, description) in violations {
                        details.add_bad_request_violation(field.clone(), description.clone());
                    }
                }
            }
        }
        Status::with_error_details(code, a.message.clone(), details)
    };
    let mut r = if code == Code::Ok {
        Reply::messages(messages)
    } else if a.after_headers {
        Reply::messages(messages).then_status(status)
    } else {
        Reply::status(status)
    };
    r = r
        .after(Duration::from_millis(a.delay_ms))
        .every(Duration::from_millis(a.message_interval_ms))
        .trailers_after(Duration::from_millis(a.trailers_delay_ms));
    if let Some(name) = &a.compress {
        r = r.compressed(encoding(name)?);
    }
    for (k, v) in &a.headers {
        r = r.header(k, v);
    }
    if let Some(p) = &a.pushback_ms {
        r = r.header("grpc-retry-pushback-ms", p);
    }
    Ok(r)
}

/// Scripts one attempt of a case served on raw HTTP/2 (one with an `h2`
/// fault): the fault, or a plain gRPC answer written out frame by frame.
fn script_h2(
    server: &H2FaultServer,
    a: &AttemptReply,
    output: &prost_reflect::MessageDescriptor,
    unary: bool,
) -> Result<(), String> {
    let fault = match a.h2 {
        Some(H2Fault::RefusedStream) => Some(StreamFault::Refuse),
        Some(H2Fault::RstCancel) => Some(StreamFault::Reset(0x8)),
        Some(H2Fault::RstInternalError) => Some(StreamFault::Reset(0x2)),
        Some(H2Fault::RstEnhanceYourCalm) => Some(StreamFault::Reset(0xb)),
        Some(H2Fault::RstInadequateSecurity) => Some(StreamFault::Reset(0xc)),
        Some(H2Fault::GoawayAfterAnswer) => Some(StreamFault::GoAway),
        Some(H2Fault::GoawayAbrupt) => Some(StreamFault::GoAwayAbrupt),
        Some(H2Fault::DropConnection) => Some(StreamFault::Drop),
        None => None,
    };
    if let Some(fault) = fault {
        server.push(fault);
        return Ok(());
    }
    let code = code(&a.status)?;
    let mut reply = RawReply::grpc().delay(Duration::from_millis(a.delay_ms));
    if code == Code::Ok {
        for m in &encoded_messages(a, output, unary)? {
            reply = reply.message(m);
        }
        reply = reply.trailer("grpc-status", "0");
    } else {
        reply = reply
            .header("grpc-status", (code as i32).to_string())
            .header("grpc-message", &a.message)
            .trailers_only();
    }
    server.push_reply(reply);
    Ok(())
}

struct Options {
    cases: PathBuf,
    adapter: Vec<String>,
    run: Vec<String>,
    skip: Vec<String>,
    known_failing: Option<PathBuf>,
    report: Option<PathBuf>,
    junit: Option<PathBuf>,
    breaks: Vec<String>,
    case_timeout: Duration,
    jobs: usize,
    /// A case the adapter skips fails (an SDK with a server side).
    no_skip: bool,
}

/// How many more times a raw HTTP/2 server repeats a case's last entry.
const RAW_SPARE_ATTEMPTS: usize = 8;

/// How long an adapter may take to exit once its input has ended.
const LINGER: Duration = Duration::from_secs(5);

fn parse(args: &[String]) -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let sibling = exe.with_file_name("parity-adapter-rust");
    // A release bundle keeps the cases next to the binary; a build from
    // the repository finds them in its source tree.
    let beside = exe.with_file_name("cases");
    let cases = if beside.is_dir() {
        beside
    } else {
        root.join("cases")
    };
    let mut o = Options {
        cases,
        adapter: vec![sibling.display().to_string()],
        run: Vec::new(),
        skip: Vec::new(),
        known_failing: Some(root.join("known-failing.txt")).filter(|p| p.exists()),
        report: None,
        junit: None,
        breaks: Vec::new(),
        case_timeout: Duration::from_secs(60),
        jobs: 4,
        no_skip: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--cases" => o.cases = value()?.into(),
            // Split on whitespace, no quoting: put a command with spaces in a script.
            "--adapter" => o.adapter = value()?.split_whitespace().map(str::to_owned).collect(),
            "--run" => o.run.push(value()?),
            "--skip" => o.skip.push(value()?),
            "--known-failing" => o.known_failing = Some(value()?.into()),
            "--report" => o.report = Some(value()?.into()),
            "--junit" => o.junit = Some(value()?.into()),
            "--no-skip" => o.no_skip = true,
            "--break" => o.breaks.push(value()?),
            "--case-timeout" => {
                let text = value()?;
                let secs: f64 = text
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| format!("--case-timeout {text:?}: seconds in (0, 3600]"))?;
                o.case_timeout = Duration::from_secs_f64(secs);
            }
            "--jobs" => {
                let text = value()?;
                o.jobs = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("--jobs {text:?}: a number of workers in 1..=64"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.adapter.is_empty() {
        return Err("--adapter is empty".into());
    }
    Ok(o)
}

fn load_cases(dir: &std::path::Path) -> Result<Vec<Case>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut ids = BTreeSet::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let case: Case =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        if !ids.insert(case.id.clone()) {
            return Err(format!("{}: duplicate case id {}", file.display(), case.id));
        }
        validate(&case).map_err(|e| format!("{}: {e}", file.display()))?;
        let variants = expand(case).map_err(|e| format!("{}: {e}", file.display()))?;
        for variant in variants.iter().skip(1) {
            validate(variant).map_err(|e| format!("{} ({}): {e}", file.display(), variant.id))?;
            if !ids.insert(variant.id.clone()) {
                return Err(format!(
                    "{}: duplicate case id {}",
                    file.display(),
                    variant.id
                ));
            }
        }
        cases.extend(variants);
    }
    Ok(cases)
}

/// The suites a case may name (a typo would start a suite of its own).
const SUITES: &[&str] = &[
    "core",
    "http-errors",
    "malformed-responses",
    "compression",
    "message-limits",
    "cancellation",
    "timeouts",
    "transport",
    "pagination",
    "long-lived-streams",
    "inbound",
];

/// What the case format cannot say by itself: a known suite, and raw HTTP
/// replies the server can send as written (checked before any case runs).
fn validate(case: &Case) -> Result<(), String> {
    if !SUITES.contains(&case.suite.as_str()) {
        return Err(format!(
            "unknown suite {:?} (known: {})",
            case.suite,
            SUITES.join(", ")
        ));
    }
    if let Some(name) = &case.client.compression {
        encoding(name).map_err(|e| format!("client.compression: {e}"))?;
    }
    if (case.suite == "inbound") != case.inbound.is_some() {
        return Err("the inbound suite's cases, and only they, have an `inbound` section".into());
    }
    if case.inbound.is_none()
        && (!case.expect.response_headers.is_empty()
            || case.expect.response_metadata_only.is_some())
    {
        return Err(
            "expect.response_headers and response_metadata_only are for inbound cases".into(),
        );
    }
    if let Some(inbound) = &case.inbound {
        let c = &case.call;
        if c.cancel_after_ms.is_some()
            || c.cancel_after_messages.is_some()
            || c.idle_timeout_ms.is_some()
            || c.paginate
            || case.server.http1.is_some()
            || case.server.attempts.iter().any(|a| a.h2.is_some())
        {
            return Err(
                "an inbound case calls the adapter's server once: no cancel, idle timeout, pagination, http1 or h2"
                    .into(),
            );
        }
        if case
            .expect
            .response_headers
            .iter()
            .any(|h| !h.attempts.is_empty() || h.same_as_previous)
        {
            return Err(
                "expect.response_headers: one answer, no attempts or same_as_previous".into(),
            );
        }
        let names = case
            .expect
            .response_headers
            .iter()
            .map(|h| &h.name)
            .chain(case.expect.response_metadata_only.iter().flatten())
            .chain(inbound.headers.keys());
        for name in names {
            if name.to_ascii_lowercase() != *name {
                return Err(format!(
                    "{name:?}: metadata names are lower case on the wire"
                ));
            }
        }
        for (name, set_by) in [
            (
                "x-request-id",
                c.request_id.is_some().then_some("call.request_id"),
            ),
            (
                "traceparent",
                c.traceparent.is_some().then_some("call.traceparent"),
            ),
            (
                "grpc-timeout",
                c.timeout_ms.is_some().then_some("call.timeout_ms"),
            ),
            ("te", Some("the transport")),
            ("content-type", Some("the transport")),
            ("user-agent", Some("the transport")),
            ("grpc-status", Some("the transport")),
            ("grpc-message", Some("the transport")),
            ("grpc-message-type", Some("the transport")),
        ] {
            if let Some(by) = set_by
                && inbound.headers.contains_key(name)
            {
                return Err(format!(
                    "inbound.headers.{name}: already written by {by}; it would not go as written"
                ));
            }
        }
        if !case.expect.details.is_empty() {
            return Err(
                "expect.details: the runner does not decode an inbound answer's details".into(),
            );
        }
        inbound::headers(c, &inbound.headers)?;
    }
    if let Some(http1) = &case.server.http1 {
        if !case.server.attempts.is_empty() {
            return Err(
                "server.http1 and server.attempts together: an HTTP/1.1 server serves no gRPC attempt"
                    .into(),
            );
        }
        if !http1.answer.starts_with("HTTP/1.") {
            return Err(
                "server.http1.answer must start with an HTTP/1 status line (HTTP/1.x …)".into(),
            );
        }
    }
    if case.client.max_decoding_bytes == Some(0) {
        return Err("client.max_decoding_bytes must be at least 1".into());
    }
    if case.call.cancel_after_messages.is_some() && case.call.cancel_after_ms.is_some() {
        return Err("call: cancel_after_ms and cancel_after_messages together; give one".into());
    }
    if case.server.attempts.iter().any(|a| a.h2.is_some()) {
        for (n, a) in case.server.attempts.iter().enumerate() {
            let at = format!("server.attempts[{n}]");
            let other = [
                (a.http.is_some(), "http"),
                (!a.details.is_empty(), "details"),
                (a.after_headers, "after_headers"),
                (a.pushback_ms.is_some(), "pushback_ms"),
                (!a.headers.is_empty(), "headers"),
                (a.message_interval_ms != 0, "message_interval_ms"),
                (a.trailers_delay_ms != 0, "trailers_delay_ms"),
                (a.compress.is_some(), "compress"),
                (
                    a.status != "OK" && !a.messages.is_empty(),
                    "messages with a failure",
                ),
            ];
            if let Some((_, name)) = other.iter().find(|(set, _)| *set) {
                return Err(format!(
                    "{at}: {name} is not served on raw HTTP/2 (a case with an h2 fault)"
                ));
            }
            if !a
                .message
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'%')
            {
                return Err(format!(
                    "{at}.message: printable ASCII without '%' on raw HTTP/2 (sent as written)"
                ));
            }
            if a.h2.is_some() && (a.status != "OK" || !a.messages.is_empty() || a.delay_ms != 0) {
                return Err(format!(
                    "{at}: an h2 fault replaces the answer; give nothing else"
                ));
            }
        }
    }
    for (n, attempt) in case.server.attempts.iter().enumerate() {
        if let Some(name) = &attempt.compress {
            encoding(name).map_err(|e| format!("server.attempts[{n}].compress: {e}"))?;
        }
        let Some(page) = &attempt.http else { continue };
        let at = format!("server.attempts[{n}].http");
        if !(200..=599).contains(&page.status) {
            return Err(format!(
                "{at}.status {} is not a final HTTP status (200..=599)",
                page.status
            ));
        }
        if let Some(hex) = &page.body_hex {
            if !page.body.is_empty() {
                return Err(format!("{at}: body and body_hex together; give one"));
            }
            if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{at}.body_hex is not hex bytes"));
            }
        }
        let fields = [
            (attempt.status != "OK", "status"),
            (!attempt.messages.is_empty(), "messages"),
            (!attempt.details.is_empty(), "details"),
            (attempt.after_headers, "after_headers"),
            (attempt.pushback_ms.is_some(), "pushback_ms"),
            (attempt.message_interval_ms != 0, "message_interval_ms"),
            (attempt.trailers_delay_ms != 0, "trailers_delay_ms"),
            (attempt.compress.is_some(), "compress"),
        ];
        if let Some((_, name)) = fields.iter().find(|(set, _)| *set) {
            return Err(format!(
                "{at}: {name} is gRPC's and means nothing for an http reply"
            ));
        }
        let names = attempt
            .headers
            .keys()
            .chain(page.trailers.iter().flat_map(|t| t.keys()));
        for name in names {
            if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
                return Err(format!("{at}: {name:?} is not a header name"));
            }
        }
    }
    Ok(())
}

/// A running adapter: its stdin, and its stdout lines through a channel (a
/// task reads them, so a timeout never loses half a line).
struct Adapter {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Adapter {
    fn start(o: &Options) -> Result<Adapter, String> {
        let mut command = tokio::process::Command::new(&o.adapter[0]);
        command.args(&o.adapter[1..]);
        for b in &o.breaks {
            command.args(["--break", b]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the adapter {:?}: {e}", o.adapter))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the adapter has no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Adapter {
            child,
            stdin,
            lines,
        })
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("the adapter's stdin is closed")?;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("cannot write to the adapter: {e}"))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("cannot write to the adapter: {e}"))
    }

    /// How it ended, if it did.
    fn exit(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!("the adapter exited ({status})"),
            _ => "the adapter closed its output".into(),
        }
    }

    /// Ends input and waits [`LINGER`] for the adapter to exit, then kills it.
    async fn finish(mut self) -> Option<String> {
        drop(self.stdin.take());
        match tokio::time::timeout(LINGER, self.child.wait()).await {
            Ok(_) => None,
            Err(_) => {
                let _ = self.child.kill().await;
                Some(format!(
                    "the adapter was still running {LINGER:?} after its input ended: stopped (an adapter must exit at end of input)"
                ))
            }
        }
    }
}

fn shorten(line: &str) -> String {
    let mut s: String = line.chars().take(160).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

/// Sends one case and reads its outcome: lines for other ids, unreadable
/// lines, an exit and a timeout are problems of this case; `restart` says
/// the adapter must be started again.
async fn exchange(
    adapter: &mut Adapter,
    request: &Request,
    timeout: Duration,
) -> (Option<Outcome>, Vec<String>, Duration, bool) {
    let mut problems = Vec::new();
    let mut line = match serde_json::to_string(request) {
        Ok(line) => line,
        Err(e) => {
            return (
                None,
                vec![format!("cannot encode the request: {e}")],
                Duration::ZERO,
                false,
            );
        }
    };
    line.push('\n');
    let started = tokio::time::Instant::now();
    if let Err(e) = adapter.send(&line).await {
        problems.push(format!("{e}; {}", adapter.exit()));
        return (None, problems, started.elapsed(), true);
    }
    let deadline = started + timeout;
    loop {
        match tokio::time::timeout_at(deadline, adapter.lines.recv()).await {
            Err(_) => {
                problems.push(format!(
                    "no outcome within {timeout:?} (--case-timeout): adapter stopped and restarted"
                ));
                return (None, problems, started.elapsed(), true);
            }
            Ok(None) => {
                // Give the exit status a moment to be collected.
                tokio::time::sleep(Duration::from_millis(50)).await;
                problems.push(format!("{} without an outcome", adapter.exit()));
                return (None, problems, started.elapsed(), true);
            }
            Ok(Some(text)) => match serde_json::from_str::<Outcome>(&text) {
                Ok(outcome) if outcome.id == request.id => {
                    return (Some(outcome), problems, started.elapsed(), false);
                }
                Ok(outcome) => problems.push(format!(
                    "a line for case {:?} arrived while waiting for this one: {}",
                    outcome.id,
                    shorten(&text)
                )),
                Err(e) => problems.push(format!("unreadable outcome line {}: {e}", shorten(&text))),
            },
        }
    }
}

/// One worker: a recording server of its own and an adapter of its own, so
/// that cases on different workers cannot see each other's attempts.
struct Worker {
    server: MockServer,
    endpoint: String,
    adapter: Option<Adapter>,
}

impl Worker {
    async fn start(o: &Options) -> Result<Worker, String> {
        let server = MockServer::new();
        let addr = serve_tcp(server.clone())
            .await
            .map_err(|e| format!("cannot serve: {e}"))?;
        Ok(Worker {
            server,
            endpoint: format!("http://{addr}"),
            adapter: Some(Adapter::start(o)?),
        })
    }
}

/// Whether a case's verdict depends on time (bounds, deadlines, delays,
/// cancellations): such cases run one at a time, after the others.
fn is_timed(case: &Case) -> bool {
    let e = &case.expect;
    e.max_elapsed_ms.is_some()
        || e.min_elapsed_ms.is_some()
        || !e.delays.is_empty()
        || e.grpc_timeout.is_some()
        || case.client.timeout_ms.is_some()
        || case.call.timeout_ms.is_some()
        || case.call.cancel_after_ms.is_some()
        || case.call.idle_timeout_ms.is_some()
        // Waiting to see that nothing more arrives is a measure of time too.
        || e.settle_ms > 0
        || case.call.cancel_after_messages.is_some()
        || case
            .server
            .attempts
            .iter()
            .any(|a| a.delay_ms > 0 || a.message_interval_ms > 0 || a.trailers_delay_ms > 0)
}

/// What running a case gave: its problems, the runner's clock, and why
/// the adapter skipped it (if it did).
type Ran = (Vec<String>, Duration, Option<String>);

/// Runs one case on `worker`.
async fn run_case(
    worker: &mut Worker,
    case: &Case,
    o: &Options,
    pool: &prost_reflect::DescriptorPool,
) -> Result<Ran, String> {
    let server = &worker.server;
    let endpoint = &worker.endpoint;
    let adapter = &mut worker.adapter;
    let entry = ameide_sdk::methods::ROSTER
        .iter()
        .find(|r| r.key == case.call.service)
        .ok_or_else(|| format!("{}: no roster key {:?}", case.id, case.call.service))?;
    let path = format!("/{}/{}", entry.service, case.call.method);
    let info = ameide_sdk::methods::method(&path)
        .ok_or_else(|| format!("{}: {path} is not in the bundle", case.id))?;
    let kind = match info.kind {
        ameide_sdk::methods::StreamingKind::ServerStreaming => "server_streaming",
        ameide_sdk::methods::StreamingKind::Unary => "unary",
        other => {
            return Err(format!(
                "{}: {other:?} calls are not supported by the harness yet",
                case.id
            ));
        }
    };
    if case.call.paginate
        && !ameide_sdk::pagination::PAGINATED
            .iter()
            .any(|m| m.path == path)
    {
        return Err(format!(
            "{}: call.paginate on {path}, which is not a paginated method",
            case.id
        ));
    }
    let method = wire::method(pool, &path)?;
    let (input, output) = (method.input(), method.output());
    server.reset();
    // A case with an HTTP/2 fault gets a raw HTTP/2 server of its own, an
    // HTTP/1.1 answer a raw TCP server.
    let http1 = match &case.server.http1 {
        Some(h) => {
            let bytes = h.answer.clone().into_bytes();
            let served = if h.hold_open {
                RawTcpServer::hold_open(bytes).await
            } else {
                RawTcpServer::start(bytes).await
            };
            Some(served.map_err(|e| format!("cannot serve HTTP/1.1: {e}"))?)
        }
        None => None,
    };
    let raw = if case.server.attempts.iter().any(|a| a.h2.is_some()) {
        let raw = H2FaultServer::start()
            .await
            .map_err(|e| format!("cannot serve raw HTTP/2: {e}"))?;
        for attempt in &case.server.attempts {
            script_h2(&raw, attempt, &output, kind == "unary")?;
        }
        // Attempts past the script get the last entry, as on the other server.
        if let Some(last) = case.server.attempts.last() {
            for _ in 0..RAW_SPARE_ATTEMPTS {
                script_h2(&raw, last, &output, kind == "unary")?;
            }
        }
        Some(raw)
    } else {
        for attempt in &case.server.attempts {
            server.push(&path, reply(attempt, &output, kind == "unary")?);
        }
        if let Some(last) = case.server.attempts.last() {
            server.fallback(reply(last, &output, kind == "unary")?);
        }
        None
    };
    let mut call = case.call.clone();
    if case.inbound.is_some() {
        // The inbound call's own settings go on the wire, never to the adapter.
        (call.request_id, call.timeout_ms, call.traceparent) = (None, None, None);
    }
    let request = Request {
        id: case.id.clone(),
        endpoint: match (&raw, &http1) {
            (Some(raw), _) => raw.endpoint(),
            (None, Some(http1)) => http1.endpoint(),
            (None, None) => endpoint.clone(),
        },
        kind: kind.to_owned(),
        client: case.client.clone(),
        call,
        serve: case.inbound.as_ref().map(|i| Serve {
            forward_identity: i.forward_identity,
        }),
    };
    let running = match adapter.as_mut() {
        Some(a) => a,
        None => adapter.insert(Adapter::start(o)?),
    };
    let (outcome, mut problems, runner_elapsed, restart) =
        exchange(running, &request, o.case_timeout).await;
    let mut skipped = None;
    let (outcome, runner_elapsed) = match (&case.inbound, outcome) {
        (_, Some(outcome)) if outcome.skipped.is_some() => {
            if case.inbound.is_none() {
                problems.push(format!(
                    "the adapter skipped a client case: {}",
                    outcome.skipped.as_deref().unwrap_or_default()
                ));
            }
            skipped = outcome.skipped;
            (None, runner_elapsed)
        }
        // The adapter serves; the runner is the caller.
        (Some(inbound), Some(outcome)) if outcome.adapter_error.is_none() => {
            match &outcome.serve_endpoint {
                Some(at) if *at == request.endpoint => {
                    problems.push(format!(
                        "serve_endpoint {at} is the harness server, not the adapter's own"
                    ));
                    (None, runner_elapsed)
                }
                Some(at) => {
                    let call = inbound::Inbound {
                        endpoint: at,
                        path: &path,
                        unary: kind == "unary",
                        request: wire::encode(input.clone(), &case.call.request)?,
                        call: &case.call,
                        metadata: inbound::headers(&case.call, &inbound.headers)?,
                        output: &output,
                    };
                    let answer = inbound::call(call, o.case_timeout).await;
                    match answer {
                        Ok(answer) => {
                            problems.extend(check::response_failures(case, &answer.metadata));
                            (Some(answer.outcome), answer.elapsed)
                        }
                        Err(e) => {
                            problems.push(e);
                            (None, runner_elapsed)
                        }
                    }
                }
                None => {
                    problems.push(
                        "no serve_endpoint in the outcome: an inbound case needs the adapter's server"
                            .into(),
                    );
                    (None, runner_elapsed)
                }
            }
        }
        (_, outcome) => (outcome, runner_elapsed),
    };
    // Let late attempts (a retry after the response), a reset and stray
    // extra lines land before judging.
    tokio::time::sleep(Duration::from_millis(20.max(case.expect.settle_ms))).await;
    // A reset the case expects may land a little after the outcome (the
    // adapter's connection task sends it): wait for it, up to 1 s.
    if case.expect.reset_by_client == Some(true) && raw.is_none() && http1.is_none() {
        for _ in 0..50 {
            if server
                .attempts_for(&path)
                .last()
                .is_none_or(|a| a.cancelled)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if restart {
        *adapter = None;
    } else if let Some(a) = adapter.as_mut() {
        while let Ok(extra) = a.lines.try_recv() {
            problems.push(format!(
                "an extra line after the outcome: {}",
                shorten(&extra)
            ));
        }
    }
    if let Some(outcome) = &outcome {
        let attempts: Vec<check::Attempt> = match &raw {
            // An HTTP/1.1 server serves no gRPC attempt.
            None if http1.is_some() => Vec::new(),
            Some(raw) => raw
                .seen()
                .iter()
                .filter(|s| s.path == path)
                .map(check::Attempt::from)
                .collect(),
            None => server
                .attempts_for(&path)
                .iter()
                .map(check::Attempt::from)
                .collect(),
        };
        // A paginated call's responses are the items of its pages.
        let items = match ameide_sdk::pagination::PAGINATED
            .iter()
            .find(|m| case.call.paginate && m.path == path)
        {
            Some(m) => match output.get_field_by_name(m.items_field).map(|f| f.kind()) {
                Some(prost_reflect::Kind::Message(item)) => Some(item),
                _ => return Err(format!("{path}: {} is not a message list", m.items_field)),
            },
            None => None,
        };
        problems.extend(check::failures(&check::Evidence {
            case,
            outcome,
            attempts: &attempts,
            runner_elapsed,
            input: &input,
            output: items.as_ref().unwrap_or(&output),
        }));
    }
    Ok((problems, runner_elapsed, skipped))
}

async fn run(o: Options) -> Result<bool, String> {
    let pool = wire::pool()?;
    let cases: Vec<Case> = load_cases(&o.cases)?
        .into_iter()
        .filter(|case| {
            (o.run.is_empty() || o.run.iter().any(|r| case.id.contains(r.as_str())))
                && !o.skip.iter().any(|s| case.id.contains(s.as_str()))
        })
        .collect();
    let known: BTreeSet<String> = match &o.known_failing {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        None => BTreeSet::new(),
    };
    let o = std::sync::Arc::new(o);
    let cases = std::sync::Arc::new(cases);
    // Untimed cases first, on `jobs` workers at once; then the timed ones,
    // one at a time, on the first worker.
    let (timed, untimed): (Vec<usize>, Vec<usize>) =
        (0..cases.len()).partition(|&i| is_timed(&cases[i]));
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        untimed
            .into_iter()
            .collect::<std::collections::VecDeque<usize>>(),
    ));
    let mut results: Vec<Option<Ran>> = vec![None; cases.len()];
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..o.jobs {
        let (o, cases, queue, pool) = (o.clone(), cases.clone(), queue.clone(), pool.clone());
        workers.spawn(async move {
            let mut worker = Worker::start(&o).await?;
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(i) = next else { break };
                done.push((i, run_case(&mut worker, &cases[i], &o, &pool).await?));
            }
            Ok::<_, String>((worker, done))
        });
    }
    let mut first = None;
    // The adapters of the workers done with, ending (each may linger).
    let mut ending = tokio::task::JoinSet::new();
    while let Some(joined) = workers.join_next().await {
        let (worker, done) = joined.map_err(|e| format!("a worker failed: {e}"))??;
        for (i, result) in done {
            results[i] = Some(result);
        }
        match first {
            None => first = Some(worker),
            Some(_) => {
                if let Some(adapter) = worker.adapter {
                    ending.spawn(adapter.finish());
                }
            }
        }
    }
    let mut worker = match first {
        Some(w) => w,
        None => Worker::start(&o).await?,
    };
    for i in timed {
        results[i] = Some(run_case(&mut worker, &cases[i], &o, &pool).await?);
    }

    let (mut passed, mut failed, mut xfail, mut skips) = (0, 0, 0, 0);
    let mut report = Vec::new();
    // Per suite: cases as expected (passed, or known failing) and cases run.
    let mut suites: std::collections::BTreeMap<String, (usize, usize, usize)> = Default::default();
    let mut junit = Vec::new();
    println!("{:<48} {:<8} notes", "case", "result");
    for (case, result) in cases.iter().zip(results) {
        let Some((mut problems, runner_elapsed, skipped)) = result else {
            return Err(format!("{}: never ran", case.id));
        };
        if let (Some(why), true) = (&skipped, o.no_skip) {
            problems.push(format!("skipped by the adapter ({why}), and --no-skip"));
        }
        let is_known = known.contains(&case.id);
        let result = match (problems.is_empty(), is_known) {
            (true, _) if skipped.is_some() => {
                skips += 1;
                "skip"
            }
            (true, false) => {
                passed += 1;
                "pass"
            }
            (false, true) => {
                xfail += 1;
                "xfail"
            }
            (true, true) => {
                failed += 1;
                "XPASS"
            }
            (false, false) => {
                failed += 1;
                "FAIL"
            }
        };
        let note = match (result, &skipped) {
            ("XPASS", _) => {
                "listed as known-failing but passes: remove it from the list".to_owned()
            }
            ("skip", Some(why)) => format!("skipped by the adapter: {why}"),
            _ => problems.join("; "),
        };
        println!("{:<48} {:<8} {}", case.id, result, note);
        let suite = suites.entry(case.suite.clone()).or_default();
        suite.0 += usize::from(result == "pass" || result == "xfail");
        suite.1 += usize::from(result != "skip");
        suite.2 += usize::from(result == "skip");
        junit.push((
            case.suite.clone(),
            case.id.clone(),
            result,
            note,
            runner_elapsed,
        ));
        report.push(serde_json::json!({
            "id": case.id,
            "suite": case.suite,
            "result": result,
            "problems": problems,
            "skipped": skipped,
        }));
    }
    if let Some(adapter) = worker.adapter {
        ending.spawn(adapter.finish());
    }
    let mut lingering = None;
    while let Some(note) = ending.join_next().await {
        lingering = lingering.or(note.ok().flatten());
    }
    if let Some(file) = &o.report {
        std::fs::write(
            file,
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if let Some(file) = &o.junit {
        std::fs::write(file, junit_xml(&junit)).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    println!();
    let summary: Vec<String> = suites
        .iter()
        .map(|(name, (ok, ran, skipped))| match skipped {
            0 => format!("{name} {ok}/{ran}"),
            n => format!("{name} {ok}/{ran} ({n} skipped)"),
        })
        .collect();
    println!("suites: {}", summary.join(", "));
    if let Some(note) = &lingering {
        println!("note: {note}");
    }
    if passed + failed + xfail + skips == 0 {
        return Err("no case ran: check --cases, --run and --skip".into());
    }
    if xfail > 0 {
        println!(
            "{xfail} known failing (see {})",
            o.known_failing
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    if skips > 0 {
        println!("{skips} skipped by the adapter (--no-skip makes a skip a failure)");
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The results as JUnit XML (one `testsuite` per suite), for the CI of an
/// SDK's own repository: a known failure is `skipped`, a failure or an
/// unexpected pass a `failure` with the notes.
fn junit_xml(results: &[(String, String, &str, String, Duration)]) -> String {
    let escape = |text: &str| {
        // XML 1.0 characters only.
        text.chars()
            .filter(|c| {
                (!c.is_control() || *c == '\n' || *c == '\t')
                    && !matches!(c, '\u{FFFE}' | '\u{FFFF}')
            })
            .collect::<String>()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut by_suite: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
    for row in results {
        by_suite.entry(row.0.as_str()).or_default().push(row);
    }
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"ameide-parity\">\n",
    );
    for (suite, rows) in by_suite {
        let failures = rows
            .iter()
            .filter(|r| r.2 == "FAIL" || r.2 == "XPASS")
            .count();
        let skipped = rows
            .iter()
            .filter(|r| r.2 == "xfail" || r.2 == "skip")
            .count();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            escape(suite),
            rows.len(),
            rows.iter().map(|r| r.4.as_secs_f64()).sum::<f64>()
        ));
        for (_, id, result, note, took) in rows {
            xml.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(suite),
                escape(id),
                took.as_secs_f64()
            ));
            match *result {
                "pass" => xml.push_str("/>\n"),
                "xfail" => xml.push_str(&format!(
                    "><skipped message=\"known failing\">{}</skipped></testcase>\n",
                    escape(note)
                )),
                "skip" => xml.push_str(&format!(
                    "><skipped message=\"skipped by the adapter\">{}</skipped></testcase>\n",
                    escape(note)
                )),
                _ => xml.push_str(&format!(
                    "><failure message=\"{}\">{}</failure></testcase>\n",
                    escape(result),
                    escape(note)
                )),
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

async fn serve(args: &[String]) -> Result<bool, String> {
    if !args.is_empty() {
        return Err("usage: ameide-parity server".into());
    }
    let bound = serve_tcp(MockServer::new())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "harness server on http://{bound}: answers OK with an empty message to any method (Ctrl-C stops it)"
    );
    std::future::pending::<()>().await;
    Ok(true)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => match parse(&args[1..]) {
            Ok(options) => run(options).await,
            Err(e) => Err(e),
        },
        Some("server") => serve(&args[1..]).await,
        Some("descriptor-set") => match args.get(1..) {
            Some([file]) => std::fs::write(file, ameide_sdk::proto::DESCRIPTOR_SET)
                .map(|()| true)
                .map_err(|e| format!("{file}: {e}")),
            _ => Err("usage: ameide-parity descriptor-set FILE".into()),
        },
        _ => Err(
            "usage: ameide-parity run [options] | ameide-parity server | ameide-parity descriptor-set FILE"
                .into(),
        ),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ameide-parity: {e}");
            std::process::exit(2);
        }
    }
}
