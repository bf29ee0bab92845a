//! `ameide-parity`: the parity runner and harness server.
//!
//! ```text
//! ameide-parity run [--cases DIR] [--adapter "CMD ARGS…"] [--run TEXT] [--skip TEXT]
//!                   [--known-failing FILE] [--report FILE] [--break BEHAVIOUR]…
//! ameide-parity server                # the harness server alone, for adapter development
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

use ameide_parity::case::{AttemptReply, Case, Detail};
use ameide_parity::protocol::{Outcome, Request};
use ameide_parity::{check, wire};
use ameide_sdk::testkit::{MockServer, Reply, serve_tcp};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

fn code(name: &str) -> Result<Code, String> {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| ameide_sdk::canonical_code_name(*c) == name)
        .ok_or_else(|| format!("unknown status code {name:?}"))
}

/// The server's reply for one attempt. An `OK` unary reply without scripted
/// messages sends one empty message: a valid response of every method.
fn reply(
    a: &AttemptReply,
    output: &prost_reflect::MessageDescriptor,
    unary: bool,
) -> Result<Reply, String> {
    let code = code(&a.status)?;
    let mut messages = a
        .messages
        .iter()
        .map(|m| wire::encode(output.clone(), m))
        .collect::<Result<Vec<_>, _>>()?;
    if unary && code == Code::Ok && messages.is_empty() {
        messages.push(bytes::Bytes::new());
    }
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
        .every(Duration::from_millis(a.message_interval_ms));
    for (k, v) in &a.headers {
        r = r.header(k, v);
    }
    if let Some(p) = &a.pushback_ms {
        r = r.header("grpc-retry-pushback-ms", p);
    }
    Ok(r)
}

struct Options {
    cases: PathBuf,
    adapter: Vec<String>,
    run: Vec<String>,
    skip: Vec<String>,
    known_failing: Option<PathBuf>,
    report: Option<PathBuf>,
    breaks: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sibling = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("parity-adapter-rust");
    let mut o = Options {
        cases: root.join("cases"),
        adapter: vec![sibling.display().to_string()],
        run: Vec::new(),
        skip: Vec::new(),
        known_failing: Some(root.join("known-failing.txt")).filter(|p| p.exists()),
        report: None,
        breaks: Vec::new(),
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
            "--adapter" => o.adapter = value()?.split_whitespace().map(str::to_owned).collect(),
            "--run" => o.run.push(value()?),
            "--skip" => o.skip.push(value()?),
            "--known-failing" => o.known_failing = Some(value()?.into()),
            "--report" => o.report = Some(value()?.into()),
            "--break" => o.breaks.push(value()?),
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
        cases.push(case);
    }
    Ok(cases)
}

async fn run(o: Options) -> Result<bool, String> {
    let pool = wire::pool()?;
    let cases = load_cases(&o.cases)?;
    let known: BTreeSet<String> = match &o.known_failing {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        None => BTreeSet::new(),
    };
    let server = MockServer::new();
    let addr = serve_tcp(server.clone())
        .await
        .map_err(|e| format!("cannot serve: {e}"))?;
    let endpoint = format!("http://{addr}");

    let mut command = tokio::process::Command::new(&o.adapter[0]);
    command.args(&o.adapter[1..]);
    for b in &o.breaks {
        command.args(["--break", b]);
    }
    let mut adapter = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the adapter {:?}: {e}", o.adapter))?;
    let mut to_adapter = adapter.stdin.take().ok_or("adapter has no stdin")?;
    let mut from_adapter =
        BufReader::new(adapter.stdout.take().ok_or("adapter has no stdout")?).lines();

    let (mut passed, mut failed, mut xfail) = (0, 0, 0);
    let mut report = Vec::new();
    println!("{:<48} {:<8} notes", "case", "result");
    for case in cases {
        if (!o.run.is_empty() && !o.run.iter().any(|r| case.id.contains(r.as_str())))
            || o.skip.iter().any(|s| case.id.contains(s.as_str()))
        {
            continue;
        }
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
        let output = wire::method(&pool, &path)?.output();
        server.reset();
        for attempt in &case.server.attempts {
            server.push(&path, reply(attempt, &output, kind == "unary")?);
        }
        if let Some(last) = case.server.attempts.last() {
            server.fallback(reply(last, &output, kind == "unary")?);
        }
        let request = Request {
            endpoint: endpoint.clone(),
            path: path.clone(),
            kind: kind.to_owned(),
            case: case.clone(),
        };
        let mut line = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        line.push('\n');
        to_adapter
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("adapter stdin: {e}"))?;
        to_adapter
            .flush()
            .await
            .map_err(|e| format!("adapter stdin: {e}"))?;
        let answer = tokio::time::timeout(Duration::from_secs(60), from_adapter.next_line())
            .await
            .map_err(|_| format!("{}: the adapter did not answer within 60 s", case.id))?
            .map_err(|e| format!("adapter stdout: {e}"))?
            .ok_or_else(|| format!("{}: the adapter exited", case.id))?;
        let outcome: Outcome = serde_json::from_str(&answer)
            .map_err(|e| format!("{}: unreadable outcome {answer:?}: {e}", case.id))?;
        // Let late attempts (a retry after the response) land before judging.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let problems = check::failures(&case.expect, &outcome, &server.attempts_for(&path));
        let is_known = known.contains(&case.id);
        let result = match (problems.is_empty(), is_known) {
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
        let note = if result == "XPASS" {
            "listed as known-failing but passes: remove it from the list".to_owned()
        } else {
            problems.join("; ")
        };
        println!("{:<48} {:<8} {}", case.id, result, note);
        report.push(serde_json::json!({ "id": case.id, "result": result, "problems": problems }));
    }
    drop(to_adapter);
    let _ = adapter.wait().await;
    if let Some(file) = &o.report {
        std::fs::write(
            file,
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    println!();
    if passed + failed + xfail == 0 {
        return Err("no case ran: check --cases, --run and --skip".into());
    }
    if xfail > 0 {
        println!(
            "{xfail} known failing (see {})",
            o.known_failing
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
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
        _ => Err("usage: ameide-parity run [options] | ameide-parity server".into()),
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
