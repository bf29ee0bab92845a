//! The fault matrix, through the public client on real loopback sockets:
//! UNAVAILABLE storm, slow server, GOAWAY mid-flight, stream cut, token
//! endpoint down and slow. For every row, a read (`ListRepositories`,
//! NO_SIDE_EFFECTS) and a write (`CreateElement`, not idempotent) in safe-retry
//! mode, each with a 400 ms deadline. Asserted per row:
//!
//! - the outcome is the expected code;
//! - no call outlives its deadline by more than 50 ms;
//! - the write reached the server at most once;
//! - nothing panicked (each call runs in its own task).
//!
//! Violations are collected over the whole matrix and reported as one table.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use ameide_sdk::auth::ClientCredentials;
use ameide_sdk::layers::RetryPolicy;
use ameide_sdk::proto::inference::v1::GenerateRequest;
use ameide_sdk::testkit::{H2FaultServer, MockServer, Reply, StreamFault, serve_tcp};
use ameide_sdk::{AmeideClient, AmeideClientBuilder, IntoAmeideResult};
use ameide_tests::{calls, closed_addr, paths};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

const DEADLINE: Duration = Duration::from_millis(400);
/// Room past the deadline for a loaded machine (the rows are real sockets).
const SLACK: Duration = Duration::from_millis(300);

fn builder(endpoint: String) -> AmeideClientBuilder {
    AmeideClient::builder()
        .endpoint(endpoint)
        .timeout(DEADLINE)
        .safe_retries(true)
        .retry_policy(RetryPolicy::default().with_initial_backoff(Duration::from_millis(20)))
}

/// A token endpoint that accepts connections and never answers.
async fn silent_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    url
}

type Call = Pin<Box<dyn Future<Output = Result<(), ameide_sdk::Error>> + Send>>;

fn read(client: &AmeideClient) -> Call {
    let client = client.clone();
    Box::pin(async move { calls::read(&client).await })
}

fn write(client: &AmeideClient) -> Call {
    let client = client.clone();
    Box::pin(async move { calls::write(&client).await })
}

fn stream_all(client: &AmeideClient) -> Call {
    let client = client.clone();
    Box::pin(async move {
        let mut stream = client
            .inference()
            .generate(GenerateRequest::default())
            .await
            .into_ameide()?
            .into_inner();
        while let Some(item) = stream.next().await {
            item.map_err(ameide_sdk::Error::from)?;
        }
        Ok(())
    })
}

struct Outcome {
    row: &'static str,
    call: &'static str,
    expected: Code,
    got: Code,
    elapsed: Duration,
    wire: Option<usize>,
    detail: String,
}

async fn run(row: &'static str, call: &'static str, expected: Code, future: Call) -> Outcome {
    let started = Instant::now();
    let joined = tokio::spawn(future).await;
    let elapsed = started.elapsed();
    let (got, detail) = match joined {
        Ok(Ok(())) => (Code::Ok, String::new()),
        Ok(Err(e)) => (e.code(), e.to_string()),
        Err(panic) => (Code::Unknown, format!("PANIC: {panic}")),
    };
    Outcome {
        row,
        call,
        expected,
        got,
        elapsed,
        wire: None,
        detail,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let mut outcomes = Vec::new();

    // UNAVAILABLE storm: every attempt fails; reads retry until the budget
    // would be outlived, the write is not retried (the server answered).
    {
        let server = MockServer::new();
        server.fallback(Reply::status(Status::unavailable("storm")));
        let addr = serve_tcp(server.clone()).await.unwrap();
        let client = builder(format!("http://{addr}")).build().unwrap();
        outcomes.push(
            run(
                "unavailable storm",
                "read",
                Code::Unavailable,
                read(&client),
            )
            .await,
        );
        let mut o = run(
            "unavailable storm",
            "write",
            Code::Unavailable,
            write(&client),
        )
        .await;
        o.wire = Some(server.attempts_for(paths::CREATE_ELEMENT).len());
        outcomes.push(o);
    }

    // Slow server: answers after 2 s.
    {
        let server = MockServer::new();
        server.fallback(Reply::ok().after(Duration::from_secs(2)));
        let addr = serve_tcp(server.clone()).await.unwrap();
        let client = builder(format!("http://{addr}")).build().unwrap();
        outcomes.push(run("slow server", "read", Code::DeadlineExceeded, read(&client)).await);
        let mut o = run(
            "slow server",
            "write",
            Code::DeadlineExceeded,
            write(&client),
        )
        .await;
        o.wire = Some(server.attempts_for(paths::CREATE_ELEMENT).len());
        outcomes.push(o);
    }

    // GOAWAY mid-flight (abrupt: the server had taken the stream): the read
    // is replayed on a new connection, the write is not.
    {
        let server = H2FaultServer::start().await.unwrap();
        let client = builder(server.endpoint()).build().unwrap();
        server.push(StreamFault::GoAwayAbrupt);
        outcomes.push(run("goaway mid-flight", "read", Code::Ok, read(&client)).await);
        let before = server.seen().len();
        server.push(StreamFault::GoAwayAbrupt);
        let mut o = run(
            "goaway mid-flight",
            "write",
            Code::Unavailable,
            write(&client),
        )
        .await;
        o.wire = Some(server.seen().len() - before);
        outcomes.push(o);
    }

    // Refused stream: never processed, so even the write goes again.
    {
        let server = H2FaultServer::start().await.unwrap();
        let client = builder(server.endpoint()).build().unwrap();
        server.push(StreamFault::Refuse);
        let mut o = run("refused stream", "write", Code::Ok, write(&client)).await;
        // Two streams, one processed.
        o.wire = Some(server.seen().len() - 1);
        outcomes.push(o);
    }

    // Stream cut after one message of a server stream: INTERNAL, no replay.
    {
        let server = H2FaultServer::start().await.unwrap();
        let client = builder(server.endpoint()).build().unwrap();
        server.push(StreamFault::CutAfter(1));
        let mut o = run("stream cut", "stream", Code::Internal, stream_all(&client)).await;
        o.wire = Some(server.seen().len());
        outcomes.push(o);
    }

    // Connection dropped before any answer: the write is not resent.
    {
        let server = H2FaultServer::start().await.unwrap();
        let client = builder(server.endpoint()).build().unwrap();
        server.push(StreamFault::Drop);
        let mut o = run(
            "connection dropped",
            "write",
            Code::Unavailable,
            write(&client),
        )
        .await;
        o.wire = Some(server.seen().len());
        outcomes.push(o);
    }

    // Token endpoint down / slow: a provider that is down is UNAVAILABLE, one
    // still silent at the call's deadline DEADLINE_EXCEEDED (issue 25 item 8,
    // gRFC A54), within the call's budget; nothing reaches the server.
    for (row, url, code) in [
        (
            "token endpoint down",
            format!("http://{}/token", closed_addr()),
            Code::Unavailable,
        ),
        (
            "token endpoint slow",
            silent_endpoint().await,
            Code::DeadlineExceeded,
        ),
    ] {
        let server = MockServer::new();
        let addr = serve_tcp(server.clone()).await.unwrap();
        let provider = ClientCredentials::new(&url, "client", "secret")
            .unwrap()
            .timeout(Duration::from_secs(10));
        let client = builder(format!("http://{addr}"))
            .token_provider(provider)
            .build()
            .unwrap();
        outcomes.push(run(row, "read", code, read(&client)).await);
        let mut o = run(row, "write", code, write(&client)).await;
        o.wire = Some(server.attempts_for(paths::CREATE_ELEMENT).len());
        outcomes.push(o);
    }

    let mut table = String::from("row | call | expected | got | elapsed | write on the wire\n");
    let mut bad = Vec::new();
    for o in &outcomes {
        table.push_str(&format!(
            "{} | {} | {:?} | {:?} | {} ms | {:?}\n",
            o.row,
            o.call,
            o.expected,
            o.got,
            o.elapsed.as_millis(),
            o.wire
        ));
        if o.got != o.expected {
            bad.push(format!(
                "{} {}: expected {:?}, got {:?} ({})",
                o.row, o.call, o.expected, o.got, o.detail
            ));
        }
        if o.elapsed > DEADLINE + SLACK {
            bad.push(format!(
                "{} {}: took {} ms, past the {} ms deadline by more than {} ms",
                o.row,
                o.call,
                o.elapsed.as_millis(),
                DEADLINE.as_millis(),
                SLACK.as_millis()
            ));
        }
        if o.wire.is_some_and(|n| n > 1) {
            bad.push(format!(
                "{} {}: the write reached the server {:?} times",
                o.row, o.call, o.wire
            ));
        }
        if o.detail.contains("PANIC") {
            bad.push(format!("{} {}: {}", o.row, o.call, o.detail));
        }
    }
    println!("{table}");
    assert!(bad.is_empty(), "{}\n{table}", bad.join("\n"));
}
