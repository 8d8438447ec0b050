//! A webhook receiver on loopback, for the sandbox quick start (`run --sandbox`): it checks
//! every delivery's signature as a merchant's endpoint would ([`super::verify`]), deduplicates by
//! the idempotency key and counts what it saw, answering 200 to a good delivery and 400 to one
//! whose signature fails.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify};

/// What the receiver saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Requests received.
    pub requests: u64,
    /// Deliveries whose signature verified.
    pub verified: u64,
    /// Deliveries refused: bad or missing signature, or not an event.
    pub rejected: u64,
    /// Distinct events (by idempotency key) verified.
    pub events: u64,
    /// Verified deliveries of an event seen before (at-least-once: after a restart).
    pub duplicates: u64,
    /// Events that arrived before an earlier event of their subscription (never expected).
    pub out_of_order: u64,
}

#[derive(Default)]
struct State {
    received: Received,
    seen: HashSet<String>,
    /// The highest cursor seen per subscription.
    last: HashMap<String, i64>,
}

pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Listens on a free loopback port, verifying with `secret`.
    pub async fn start(secret: SecretString) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = watch::channel(false);
        let shared = (Arc::new(secret), Arc::clone(&state));
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (secret, state) = (Arc::clone(&shared.0), Arc::clone(&shared.1));
                        tokio::spawn(async move {
                            let svc = service_fn(move |request| {
                                let (secret, state) = (Arc::clone(&secret), Arc::clone(&state));
                                async move { Ok::<_, std::convert::Infallible>(handle(&secret, &state, request).await) }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Ok(Receiver {
            addr,
            state,
            stop,
            task,
        })
    }

    /// `http://127.0.0.1:PORT/webhook`.
    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    pub fn received(&self) -> Received {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .received
            .clone()
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn handle(
    secret: &SecretString,
    state: &Mutex<State>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (signature, key) = (header(SIGNATURE_HEADER), header(IDEMPOTENCY_HEADER));
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST),
    };
    let now = chrono::Utc::now().timestamp();
    let checked = signature
        .ok_or_else(|| "no signature".to_string())
        .and_then(|s| verify(secret, &s, &body, now, 300));
    let event: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    state.received.requests += 1;
    let (Ok(()), Some(event), Some(key)) = (checked, event, key) else {
        state.received.rejected += 1;
        return reply(StatusCode::BAD_REQUEST);
    };
    state.received.verified += 1;
    if !state.seen.insert(key) {
        state.received.duplicates += 1;
        return reply(StatusCode::OK);
    }
    state.received.events += 1;
    if let (Some(subscription), Some(cursor)) =
        (event["subscription"].as_str(), event["cursor"].as_i64())
    {
        let state = &mut *state;
        let last = state.last.entry(subscription.to_string()).or_insert(cursor);
        if cursor < *last {
            state.received.out_of_order += 1;
        }
        *last = (*last).max(cursor);
    }
    reply(StatusCode::OK)
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
