//! A TCP relay on loopback that plays a slow, silent or rude network in
//! front of a real server, and records every connection it accepted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// What the relay does with each connection it accepts.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Waits `delay`, then relays both ways to `upstream` (a slow handshake:
    /// nothing the server says reaches the client before `delay`).
    Forward {
        upstream: SocketAddr,
        delay: Duration,
    },
    /// Relays like `Forward` (no delay), but closes the `nth` connection
    /// (counting from 1) at once: one failed connect among good ones.
    ForwardClosing { upstream: SocketAddr, nth: usize },
    /// Accepts and never sends a byte (a handshake that never completes).
    Hang,
    /// Accepts and closes at once.
    Close,
}

/// A running relay; stops accepting when dropped (connections it holds end too).
pub struct Relay {
    pub addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(mode: Mode) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let record = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let count = {
                    let mut accepted = record.lock().unwrap();
                    accepted.push(Instant::now());
                    accepted.len()
                };
                match mode {
                    Mode::ForwardClosing { nth, .. } if nth == count => drop(client),
                    Mode::ForwardClosing { upstream, .. } => {
                        tokio::spawn(forward(client, upstream, Duration::ZERO));
                    }
                    Mode::Close => drop(client),
                    Mode::Hang => held.push(client),
                    Mode::Forward { upstream, delay } => {
                        tokio::spawn(forward(client, upstream, delay));
                    }
                }
            }
        });
        Relay {
            addr,
            accepted,
            task,
        }
    }

    /// When each connection was accepted, in order.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, delay: Duration) {
    tokio::time::sleep(delay).await;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
