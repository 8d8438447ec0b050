//! Delivering the outbox to the merchant's systems: the webhook.
//!
//! The outbox itself is in the store (`store/outbox.rs`: one row per merchant-facing ledger
//! event, made by a trigger in the ledger event's own transaction). Here: the signature
//! ([`sign`], [`verify`]: HMAC-SHA256 over `"<unix time>.<body>"`, Stripe's scheme), the retry
//! schedule ([`backoff`]: exponential with jitter, capped) and the [`Deliverer`], a task of the
//! daemon with its own store connection. It picks the due head event of each subscription
//! (`Store::outbox_due`), POSTs a few at once, and records each result in a short write of its
//! own — never holding the store, or anything the engine needs, while it waits for the
//! endpoint. At-least-once: an event is marked delivered only after a 2xx answer, so one sent
//! just before a crash is sent again after the restart (the receiver deduplicates by the
//! `Idempotency-Key`, the event id). In order per subscription: an event waits while an earlier
//! one of its subscription is pending. An event still failing `webhook.dead_letter_after_days`
//! after its first attempt is dead: it no longer holds its subscription's later events back,
//! and `status` counts it.

pub mod receiver;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::store::{Access, Delivery, Store, StoreError};

/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "Recurrentd-Signature";
/// The event id, the same on every attempt: receivers deduplicate by it.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// The first retry comes after about this long; each further one doubles it.
pub const BACKOFF_BASE: StdDuration = StdDuration::from_secs(10);
/// The longest wait between two attempts.
pub const BACKOFF_CAP: StdDuration = StdDuration::from_secs(3600);
/// Deliveries in flight at once (each to a different subscription).
pub const IN_FLIGHT: usize = 4;
/// How often an idle deliverer looks for new events (real time).
pub const POLL: StdDuration = StdDuration::from_millis(250);

/// Real time between rounds that had a failure (backoff is on the daemon's clock, which a
/// rehearsal runs fast).
const FAILED_PAUSE: StdDuration = StdDuration::from_millis(100);

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &SecretString, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// Checks a signature header against `body`: a `v1` tag that matches (compared in constant
/// time), with a timestamp within `tolerance` seconds of `now` (replays of old deliveries are
/// refused). What a receiver does; the sandbox's receiver uses it.
pub fn verify(
    secret: &SecretString,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", tag)) => tags.push(tag),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("no timestamp (t=) in the signature header")?;
    // `abs_diff`: a hostile `t=` (i64::MIN) must not overflow the subtraction.
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(format!(
            "timestamp {timestamp} is more than {tolerance} s from now"
        ));
    }
    let matches = tags.iter().any(|tag| {
        decode_hex(tag)
            .is_some_and(|bytes| mac(secret, timestamp, body).verify_slice(&bytes).is_ok())
    });
    if matches {
        Ok(())
    } else {
        Err("no v1 signature matches the body".into())
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How long to wait after the `attempt`-th failed attempt (1-based): `BACKOFF_BASE ×
/// 2^(attempt-1)`, capped at [`BACKOFF_CAP`], then a random part of it taken off (full range
/// `[d/2, d]`, from `random`), so receivers coming back up are not hit by every retry at once.
pub fn backoff(attempt: u32, random: u64) -> StdDuration {
    let doublings = attempt.saturating_sub(1).min(20);
    let full = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
    let half = full / 2;
    let millis = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + StdDuration::from_millis(if millis == 0 {
        0
    } else {
        random % (millis + 1)
    })
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Jitter only: without OS randomness the delay is simply the shortest.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Where and how events are delivered.
pub struct Webhook {
    /// Never logged (it may carry a token).
    pub url: String,
    pub secret: SecretString,
    /// One delivery's timeout, connect included.
    pub timeout: StdDuration,
    /// An event still failing this long after its first attempt is dead.
    pub dead_after: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("timeout", &self.timeout)
            .field("dead_after", &self.dead_after)
            .finish_non_exhaustive()
    }
}

/// The deliverer task, running beside the engine; [`Deliverer::stop`] ends it.
pub struct Deliverer {
    /// `Some(deadline)`: stopping — deliver what is due until nothing is, or the deadline.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Deliverer {
    /// Starts delivering the outbox of the database at `database` (already migrated by the
    /// daemon's store) on the daemon's `clock` (backoff and dead letters are reckoned on it,
    /// like the ledger's instants).
    pub fn start(
        webhook: Webhook,
        database: PathBuf,
        clock: Arc<dyn Clock>,
    ) -> Result<Deliverer, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(webhook.timeout.min(StdDuration::from_secs(5)))
            .timeout(webhook.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("recurrentd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                format!(
                    "cannot build the webhook's HTTP client: {}",
                    e.without_url()
                )
            })?;
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(deliver(Arc::new(webhook), http, database, clock, stopped));
        Ok(Deliverer { stop, task })
    }

    /// Stops it: what is due is still delivered for up to `grace` (real time), then deliveries
    /// in flight are abandoned (their events stay pending and are sent again by the next start:
    /// at-least-once).
    pub async fn stop(self, grace: StdDuration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "the webhook deliverer failed");
        }
    }
}

/// The result of one attempt.
enum Attempt {
    Delivered,
    Failed(String),
}

async fn deliver(
    webhook: Arc<Webhook>,
    http: reqwest::Client,
    database: PathBuf,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let store = loop {
        let path = database.clone();
        match tokio::task::spawn_blocking(move || Store::open(&path, Access::Write)).await {
            Ok(Ok(store)) => break Arc::new(Mutex::new(store)),
            Ok(Err(error)) => {
                tracing::error!(%error, "webhook: cannot open the store; trying again")
            }
            Err(error) => tracing::error!(%error, "webhook: cannot open the store; trying again"),
        }
        if stop.borrow().is_some() {
            return;
        }
        wait(&mut stop, StdDuration::from_secs(5)).await;
    };
    tracing::info!(
        dead_letter_after_days = webhook.dead_after.num_days(),
        "webhook deliverer running"
    );
    loop {
        let stopping = *stop.borrow();
        if stopping.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let now = clock.now();
        let due = match with_store(&store, move |s| s.outbox_due(now, IN_FLIGHT)).await {
            Ok(due) if due.is_empty() => {
                if stopping.is_some() {
                    break;
                }
                wait(&mut stop, POLL).await;
                continue;
            }
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "webhook: cannot read the outbox; trying again");
                if stopping.is_some() {
                    break;
                }
                wait(&mut stop, StdDuration::from_secs(5)).await;
                continue;
            }
        };
        // No two of them share a subscription: they may go at once.
        let mut sends = JoinSet::new();
        for delivery in due {
            let (http, webhook) = (http.clone(), Arc::clone(&webhook));
            sends.spawn(async move {
                let attempt = post(&http, &webhook, &delivery).await;
                (delivery, attempt)
            });
        }
        let results = tokio::select! {
            results = sends.join_all() => results,
            () = deadline(&mut stop) => break,
        };
        let now = clock.now();
        let dead_after = webhook.dead_after;
        let failed = results
            .iter()
            .any(|(_, attempt)| matches!(attempt, Attempt::Failed(_)));
        let recorded = with_store(&store, move |s| {
            for (delivery, attempt) in results {
                record(s, &delivery, attempt, now, dead_after)?;
            }
            Ok(())
        })
        .await;
        if let Err(error) = recorded {
            tracing::error!(%error, "webhook: cannot record deliveries; they are sent again");
            if stopping.is_some() {
                break;
            }
            wait(&mut stop, StdDuration::from_secs(5)).await;
        } else if failed {
            if stopping.is_some() {
                break;
            }
            // A failing endpoint is never hammered, even on a fast rehearsal clock.
            wait(&mut stop, FAILED_PAUSE).await;
        }
    }
    tracing::info!("webhook deliverer stopped");
}

fn record(
    store: &mut Store,
    delivery: &Delivery,
    attempt: Attempt,
    now: DateTime<Utc>,
    dead_after: Duration,
) -> Result<(), StoreError> {
    let event = &delivery.event;
    match attempt {
        Attempt::Delivered => {
            store.outbox_delivered(event.cursor, now)?;
            tracing::debug!(event = %event.id, kind = %event.kind, "webhook delivered");
        }
        Attempt::Failed(error) => {
            let attempts = delivery.attempts.saturating_add(1);
            let first = delivery.first_attempt_at.unwrap_or(now);
            let dead = now - first >= dead_after;
            let wait =
                Duration::from_std(backoff(attempts, random_u64())).unwrap_or(Duration::hours(1));
            store.outbox_failed(event.cursor, now, &error, now + wait, dead)?;
            if dead {
                tracing::error!(
                    event = %event.id, kind = %event.kind, attempts, %error,
                    "webhook: event given up on (dead letter) after failing since {first}; \
                     `recurrentd events --redeliver-dead` queues it again"
                );
            } else if attempts == 1 {
                tracing::warn!(
                    event = %event.id, kind = %event.kind, %error,
                    "webhook delivery failed; retrying with backoff"
                );
            } else {
                tracing::debug!(event = %event.id, attempts, %error, "webhook delivery failed again");
            }
        }
    }
    Ok(())
}

/// One POST of one event: its JSON, signed, with its id as the idempotency key.
async fn post(http: &reqwest::Client, webhook: &Webhook, delivery: &Delivery) -> Attempt {
    let body = delivery.event.to_json().to_string();
    let timestamp = Utc::now().timestamp();
    let signature = sign(&webhook.secret, timestamp, body.as_bytes());
    let sent = http
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(IDEMPOTENCY_HEADER, &delivery.event.id)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Attempt::Delivered,
        Ok(response) => Attempt::Failed(format!("HTTP {}", response.status().as_u16())),
        // Errors are described without the URL.
        Err(error) => Attempt::Failed(if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_connect() {
            "cannot connect".to_string()
        } else {
            error.without_url().to_string()
        }),
    }
}

async fn with_store<T: Send + 'static>(
    store: &Arc<Mutex<Store>>,
    f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Sleeps `how_long`, or less if told to stop.
async fn wait(stop: &mut watch::Receiver<Option<Instant>>, how_long: StdDuration) {
    tokio::select! {
        _ = tokio::time::sleep(how_long) => {}
        _ = stop.changed() => {}
    }
}

/// Resolves once told to stop and the stop's deadline has passed.
async fn deadline(stop: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *stop.borrow();
        match deadline {
            Some(deadline) => return tokio::time::sleep_until(deadline).await,
            None => {
                if stop.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
