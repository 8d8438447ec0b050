//! The built-in Assist sandbox: an in-process HTTP/1 server that emulates the Assist services
//! recurrentd uses (rp.cfm, orderstate.cfm, orderresult.cfm, token.cfm, rem_token.cfm,
//! tokenpay.cfm, resultbydate.cfm, wscancel.cfm), for tests, the README demo and operators'
//! rehearsals.
//!
//! The wire shapes and behaviours follow the sandbox spec (notes/sandbox-spec.md). Charges
//! against a bill number whose base starts with `999` behave as its last three digits say
//! ([`behaviour`]): declines, In Process orders that settle, hangs, dropped connections, HTTP
//! errors, garbage, wrong check values and a chaos mix. Everything the sandbox did is in its
//! [`book`](Sandbox::book).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
//! let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap()).await?;
//! println!("Assist sandbox at {}", sandbox.url());
//! sandbox.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::money::{Currency, Money};

pub mod behaviour;
pub mod book;
mod service;
pub mod wire;

#[cfg(test)]
mod books_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tokenpay_tests;

pub use behaviour::{Behaviour, DeclineCode};
pub use book::{
    Agreement, BookSnapshot, CancelRecord, Card, DuplicatePolicy, OrderRecord, OrderState,
    Recurring, RefundOperation, Refusal, RpOutcome, RpRequest, TokenPayment,
};

/// The built-in sandbox's Merchant_ID.
pub const BUILTIN_MERCHANT_ID: &str = "123456";
/// The built-in sandbox's web-service Login.
pub const BUILTIN_LOGIN: &str = "sandbox";
/// The built-in sandbox's web-service Password. Public on purpose: it guards nothing real.
pub const BUILTIN_PASSWORD: &str = "sandbox-password";
/// The built-in sandbox's checkvalue salt (the merchant's secret word).
pub const BUILTIN_SALT: &str = "sandbox-salt";
/// How long behaviour 408 holds its reply by default.
pub const BUILTIN_HANG: Duration = Duration::from_secs(120);
/// How many status queries an In Process order (300/301) survives by default before it settles.
pub const BUILTIN_SETTLE_AFTER: u32 = 2;
/// The largest request body accepted; beyond it the reply is HTTP 413.
pub const MAX_BODY: usize = 64 * 1024;
/// How long `shutdown` lets requests in flight finish before dropping their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How a sandbox behaves. [`SandboxConfig::builtin`] gives the documented defaults.
///
/// `Debug` shows the password and salt only as `[REDACTED]` (they are `SecretString`s).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub merchant_id: String,
    pub login: String,
    pub password: SecretString,
    /// The salt of the result check values.
    pub salt: SecretString,
    /// Whether orders are test orders (`testmode` 1).
    pub test_mode: bool,
    /// Every reply waits this long first.
    pub latency: Duration,
    /// Requests beyond this many in any one second (all services) get fault 1/3.
    pub requests_per_second: Option<u32>,
    /// What a reused OrderNumber does.
    pub duplicates: DuplicatePolicy,
    /// How long behaviour 408 holds its reply.
    pub hang: Duration,
    /// How many status queries say In Process before a 300/301 order settles.
    pub settle_after: u32,
    /// Stored cards the sandbox starts with: (customer number, card).
    pub tokens: Vec<(String, Card)>,
    /// The merchant's public key for request signatures (tokenpay.cfm). When set, a Signature
    /// is required and must verify (RSASSA-PKCS1-v1_5, MD5 DigestInfo, over
    /// `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency`); when unset, one is not checked.
    pub verify_key: Option<rsa::RsaPublicKey>,
}

impl SandboxConfig {
    /// The built-in sandbox: merchant [`BUILTIN_MERCHANT_ID`], login [`BUILTIN_LOGIN`], password
    /// [`BUILTIN_PASSWORD`], salt [`BUILTIN_SALT`], test mode, no latency, no rate limit,
    /// reused order numbers rejected, hang [`BUILTIN_HANG`], settle after
    /// [`BUILTIN_SETTLE_AFTER`] queries; customer `1234` has the two cards of Assist's token
    /// example (expiring 12.2027) and customer `1001` one card.
    pub fn builtin() -> Self {
        SandboxConfig {
            merchant_id: BUILTIN_MERCHANT_ID.to_string(),
            login: BUILTIN_LOGIN.to_string(),
            password: SecretString::from(BUILTIN_PASSWORD),
            salt: SecretString::from(BUILTIN_SALT),
            test_mode: true,
            latency: Duration::ZERO,
            requests_per_second: None,
            duplicates: DuplicatePolicy::Reject,
            hang: BUILTIN_HANG,
            settle_after: BUILTIN_SETTLE_AFTER,
            tokens: builtin_tokens(),
            verify_key: None,
        }
    }
}

/// The seeded cards of [`SandboxConfig::builtin`].
fn builtin_tokens() -> Vec<(String, Card)> {
    let card = |token: &str, brand: &str, bin: u32, post: &str| Card {
        token: token.to_string(),
        brand: brand.to_string(),
        bin,
        post: post.to_string(),
        expire: "12.2027".to_string(),
        bank: String::new(),
        active: true,
        need_cvc: false,
    };
    vec![
        (
            "1234".to_string(),
            card(
                "49D902C6-1CCF-4605-9228-11D0E8115C77",
                "VISA",
                412362,
                "0028",
            ),
        ),
        (
            "1234".to_string(),
            card(
                "4D7F0B0D-B701-47B0-779A-BB0CB5F25A14",
                "MasterCard",
                518615,
                "1030",
            ),
        ),
        (
            "1001".to_string(),
            card(
                "5A0C4E2B-7D1F-4C3A-8E9B-2F6D1A0B3C4D",
                "VISA",
                411111,
                "1111",
            ),
        ),
    ]
}

/// What the connection tasks share.
struct Shared {
    config: SandboxConfig,
    book: Mutex<book::Book>,
}

impl Shared {
    /// The book, recovered if a panic poisoned its lock (it is plain data, always consistent
    /// between method calls).
    fn book(&self) -> MutexGuard<'_, book::Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running sandbox. Dropping it stops it too, without waiting; [`Sandbox::shutdown`] waits.
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `listen` (`127.0.0.1:0` for a free port) and serves in a spawned task.
    pub async fn start(config: SandboxConfig, listen: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut book = book::Book::default();
        for (customer, card) in &config.tokens {
            book.add_token(customer, card.clone());
        }
        let shared = Arc::new(Shared {
            config,
            book: Mutex::new(book),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        tracing::debug!(%addr, "assist sandbox listening");
        Ok(Sandbox {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// Runs a sandbox on `listen` until `shutdown` resolves (the CLI passes Ctrl-C), then stops
    /// it.
    pub async fn serve_until(
        config: SandboxConfig,
        listen: SocketAddr,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let sandbox = Sandbox::start(config, listen).await?;
        tracing::info!(url = %sandbox.url(), "assist sandbox running");
        shutdown.await;
        tracing::info!("assist sandbox stopping");
        sandbox.shutdown().await;
        Ok(())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The config it runs with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.config
    }

    /// Registers a recurring agreement: charges against `base_bill` (its base, before any `.`)
    /// must be in `currency` and within `[min, max]`, else their order is Declined with AS100.
    /// Registering again replaces the limits.
    pub fn add_agreement(
        &self,
        base_bill: &str,
        currency: Currency,
        min: Option<Money>,
        max: Option<Money>,
    ) {
        self.shared
            .book()
            .add_agreement(base_bill, currency, min, max);
    }

    /// Stores a card for a customer (token.cfm lists it, rem_token.cfm removes it).
    pub fn add_token(&self, customer: &str, card: Card) {
        self.shared.book().add_token(customer, card);
    }

    /// From now on the status services answer "not found" for this order number, though the
    /// order stays in the book: a gateway that loses sight of an order it showed before.
    pub fn hide_from_status(&self, order_number: &str) {
        self.shared.book().hide_from_status(order_number);
    }

    /// Caps the rows of one resultbydate reply (the rest left out silently, as a capped service
    /// would), to exercise the client's paging; `None` lifts the cap.
    pub fn set_result_cap(&self, cap: Option<usize>) {
        self.shared.book().set_result_cap(cap);
    }

    /// A copy of the book: every order, every rp.cfm request, the rate-limited count, the
    /// agreements and the stored cards.
    pub fn book(&self) -> BookSnapshot {
        self.shared.book().snapshot()
    }

    /// Stops accepting connections, lets requests in flight finish for up to
    /// [`SHUTDOWN_GRACE`], then drops what is left (a 408 hang, for one) and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "assist sandbox server task failed");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves once a stop is signalled (or the sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Accepts connections until stopped, then winds them down.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let stop_signal = stopped(stop.clone());
    tokio::pin!(stop_signal);
    loop {
        tokio::select! {
            () = &mut stop_signal => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&shared),
                        stop.clone(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "assist sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = connections.len(),
            "assist sandbox dropping connections still busy at shutdown"
        );
    }
    connections.shutdown().await;
}

/// Serves one connection until the client closes it or the sandbox stops.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let svc = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { service::handle(&shared, request).await }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Includes the deliberate drop of behaviour 409.
        tracing::debug!(%peer, %error, "assist sandbox connection ended with an error");
    }
}
