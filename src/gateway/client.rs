//! The HTTP client for Assist's services.
//!
//! Transport rules, all of them here and nowhere else:
//! - one request per call: no automatic retry and no redirect (a retry of a charge is the engine's
//!   decision, made after a status query);
//! - connect and total timeouts from config; replies larger than [`MAX_REPLY_BYTES`] are refused;
//! - credentials travel only in the POST body, never in a URL, a log line or an error message
//!   (errors are built from `reqwest::Error::without_url` and our own words);
//! - `https` unless the host is loopback; certificates are always verified (rustls with the
//!   system's roots).
//!
//! A transport failure is classified by what it proves: an error while connecting (refused,
//! DNS, TLS handshake, connect timeout) means the request never left, [`Outcome::NotSent`];
//! anything after that (timeout, lost connection, 5xx, garbage) is [`Outcome::Unknown`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Timelike, Utc};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::ResponseFormat;
use super::outcome::Outcome;
use super::reply::{self, Expected, Verified};
use super::wire::{self, MAX_REPLY_BYTES, Reply};
use crate::metrics::{Metrics, RequestResult};
use crate::money::{Currency, Money};

mod books;
mod cancel;
mod tokenpay;

pub use books::{BookRecord, BookState, MAX_ROWS_PER_REPLY};
pub use cancel::{CancelReply, CancelRequest};

pub use tokenpay::{
    RecurringLimits, TokenPayOutcome, TokenPayReply, TokenPayRequest, agreement_bill_number,
};

/// Longest OrderNumber Assist accepts.
pub const MAX_ORDER_NUMBER_LEN: usize = 128;

/// How far before our recorded send time a status search starts. The gateway files an order by
/// its own clock; a window that missed it would read as "not found", so the margin is generous
/// (the search is by our unique OrderNumber: a wide window costs nothing).
pub const STATUS_WINDOW_BEFORE_HOURS: i64 = 24;
/// How far past our "now" a status search ends: tolerance for our clock running behind the
/// gateway's.
pub const STATUS_WINDOW_AFTER_HOURS: i64 = 2;

/// Where and how to reach the gateway (`Settings::from_config` is in `config`).
pub struct Settings {
    pub url: String,
    pub merchant_id: String,
    pub login: String,
    pub password: SecretString,
    pub salt: SecretString,
    pub test_mode: bool,
    pub format: ResponseFormat,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// The gateway client. Cheap to share (`&Client` across tasks); `Debug` shows no secret.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    merchant_id: String,
    login: String,
    password: SecretString,
    salt: SecretString,
    test_mode: bool,
    format: ResponseFormat,
    /// Rows at which a resultbydate reply is taken as possibly cut ([`MAX_ROWS_PER_REPLY`]).
    books_page_rows: usize,
    /// Where requests are counted and timed (the daemon's); `None` in commands and tests.
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("merchant_id", &self.merchant_id)
            .field("login", &self.login)
            .field("test_mode", &self.test_mode)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Checks a gateway base URL: `https`, or `http` to a loopback address; no credentials, query
/// or fragment in it.
pub fn check_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password (credentials go in secrets)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => return Err("has no host".into()),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err("must use https:// (http:// only for a loopback test server)".into()),
        other => Err(format!("unsupported scheme {other:?}; use https://")),
    }
}

/// A recurring charge to send.
#[derive(Debug, Clone, Copy)]
pub struct ChargeRequest<'a> {
    /// The initial payment's billnumber.
    pub bill_number: &'a str,
    pub order_number: &'a str,
    pub amount: Money,
    pub currency: Currency,
    pub comment: Option<&'a str>,
}

/// What the gateway said to a charge request: a claim, to be confirmed by [`Client::order_status`]
/// before money is booked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeReply {
    pub claim: Outcome,
    /// `responsecode` (e.g. `AS000`), when the reply carried one.
    pub response_code: Option<String>,
    /// `testmode`, when the reply carried one (it does in the operation-result format).
    pub test_mode: Option<bool>,
    /// `Retry-After` of a rate-limit answer.
    pub retry_after: Option<Duration>,
    /// The body as received, truncated and with secrets masked, for the record.
    pub raw: Option<String>,
}

/// An order to look up.
#[derive(Debug, Clone, Copy)]
pub struct StatusQuery<'a> {
    pub order_number: &'a str,
    pub amount: Money,
    pub currency: Currency,
    /// When the charge request was first sent, by the wall clock (the gateway files the order
    /// by its own clock). The search window starts before it.
    pub sent_at: DateTime<Utc>,
    /// The order's test mode if an earlier reply (rp.cfm) carried it.
    pub known_test_mode: Option<bool>,
}

/// The answer to a status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusAnswer {
    pub verified: Verified,
    pub raw: Option<String>,
}

impl StatusAnswer {
    pub fn outcome(&self) -> &Outcome {
        &self.verified.outcome
    }
}

/// A saved card, as the token service lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CardToken {
    pub token: String,
    pub brand: String,
    /// First six digits.
    pub bin: String,
    /// Last four digits.
    pub last4: String,
    /// `MM.YYYY`.
    pub expire: String,
    pub bank: String,
    pub active: bool,
    pub need_cvc: bool,
}

/// A transport-level result: the body of a 2xx reply, or the outcome that replaces it.
enum Received {
    Body(Vec<u8>),
    Failed {
        outcome: Outcome,
        retry_after: Option<Duration>,
        raw: Option<String>,
    },
}

const RAW_KEEP_BYTES: usize = 8 * 1024;

impl Client {
    pub fn new(settings: Settings) -> Result<Client, String> {
        let base = check_base_url(&settings.url).map_err(|e| format!("gateway.url: {e}"))?;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("recurrentd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", e.without_url()))?;
        Ok(Client {
            http,
            base,
            merchant_id: settings.merchant_id,
            login: settings.login,
            password: settings.password,
            salt: settings.salt,
            test_mode: settings.test_mode,
            format: settings.format,
            books_page_rows: MAX_ROWS_PER_REPLY,
            metrics: None,
        })
    }

    /// The same client, taking a resultbydate reply of `rows` rows or more as possibly cut (for
    /// tests of the paging against a sandbox with a small cap).
    pub fn with_books_page_rows(mut self, rows: usize) -> Client {
        self.books_page_rows = rows.max(1);
        self
    }

    /// Counts and times every request in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Client {
        self.metrics = Some(metrics);
        self
    }

    pub fn merchant_id(&self) -> &str {
        &self.merchant_id
    }

    pub fn test_mode(&self) -> bool {
        self.test_mode
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    fn format_code(&self) -> &'static str {
        match self.format {
            ResponseFormat::Xml => "3",
            ResponseFormat::Json => "5",
        }
    }

    fn expected<'a>(
        &'a self,
        order_number: &'a str,
        amount: Money,
        currency: Currency,
    ) -> Expected<'a> {
        Expected {
            merchant_id: &self.merchant_id,
            order_number,
            amount,
            currency,
            test_mode: self.test_mode,
        }
    }

    /// Sends a recurring (MIT COF) charge: `POST /recurrent/rp.cfm`. Never retried here.
    pub async fn charge(&self, request: &ChargeRequest<'_>) -> ChargeReply {
        if let Err(why) = check_order_number(request.order_number) {
            // Never "not sent": that would invite sending the same invalid request forever.
            return ChargeReply {
                claim: Outcome::Rejected(why),
                response_code: None,
                test_mode: None,
                retry_after: None,
                raw: None,
            };
        }
        let amount = request.amount.to_string();
        let mut form = vec![
            ("BillNumber", request.bill_number),
            ("OrderNumber", request.order_number),
            ("Merchant_ID", self.merchant_id.as_str()),
            ("Login", self.login.as_str()),
            ("Password", self.password.expose_secret()),
            ("Amount", amount.as_str()),
            ("Currency", request.currency.as_str()),
            ("Language", "EN"),
            ("Format", self.format_code()),
        ];
        if let Some(comment) = request.comment {
            form.push(("OrderComment", comment));
        }
        tracing::debug!(
            service = "rp.cfm",
            order_number = request.order_number,
            bill_number = request.bill_number,
            amount = %request.amount,
            currency = %request.currency,
            "sending recurring charge"
        );
        let received = self.post_form("recurrent/rp.cfm", &form).await;
        let body = match received {
            Received::Body(body) => body,
            Received::Failed {
                outcome,
                retry_after,
                raw,
            } => {
                return ChargeReply {
                    claim: outcome,
                    response_code: None,
                    test_mode: None,
                    retry_after,
                    raw,
                };
            }
        };
        let raw = Some(self.mask(&body));
        let expected = self.expected(request.order_number, request.amount, request.currency);
        match wire::parse_reply(&body) {
            Ok(reply) => {
                let (claim, response_code) = reply::charge_claim(&reply, &expected);
                // The reply's test mode is worth keeping only if the reply is about our order.
                let test_mode = match (&reply, &claim) {
                    (_, Outcome::IntegrityFailure(_)) | (Reply::Fault { .. }, _) => None,
                    (Reply::Orders(orders), _) => orders
                        .first()
                        .and_then(|o| o.get("testmode"))
                        .and_then(reply::parse_test_mode),
                };
                ChargeReply {
                    claim,
                    response_code,
                    test_mode,
                    retry_after: None,
                    raw,
                }
            }
            Err(e) => ChargeReply {
                claim: Outcome::Unknown(format!("unreadable charge reply: {e}")),
                response_code: None,
                test_mode: None,
                retry_after: None,
                raw,
            },
        }
    }

    /// Asks the gateway what became of an order: `orderstate.cfm` with an explicit GMT window
    /// from before `sent_at` to just after now, then — when the verified answer needs it (paid
    /// but no test mode known yet, or failed without a response code) — `orderresult.cfm`.
    pub async fn order_status(&self, query: &StatusQuery<'_>) -> StatusAnswer {
        let first = self.status_call("orderstate/orderstate.cfm", query).await;
        let needs_mode = *first.outcome() == Outcome::Approved
            && first.verified.test_mode.is_none()
            && query.known_test_mode.is_none();
        let needs_code = matches!(first.outcome(), Outcome::Declined(_))
            && first.verified.response_code.is_none();
        if !(needs_mode || needs_code) {
            return self.settle_test_mode(first, query);
        }
        let second = self.status_call("orderresult/orderresult.cfm", query).await;
        match second.outcome() {
            // orderresult agrees on the state and adds what orderstate lacked.
            o if std::mem::discriminant(o) == std::mem::discriminant(first.outcome()) => {
                self.settle_test_mode(second, query)
            }
            Outcome::IntegrityFailure(_) => second,
            // It failed, or the two services disagree (the order moved on between them): the
            // outcome is not known yet; ask again later.
            other => {
                let why = if matches!(
                    other,
                    Outcome::Approved | Outcome::Declined(_) | Outcome::Pending | Outcome::NotFound
                ) {
                    format!(
                        "orderstate says {} but orderresult says {other}",
                        first.outcome()
                    )
                } else if needs_mode {
                    format!("paid, but its test mode could not be confirmed ({other})")
                } else {
                    format!("declined, but the decline code could not be read ({other})")
                };
                StatusAnswer {
                    verified: Verified {
                        outcome: Outcome::Unknown(why),
                        ..first.verified
                    },
                    raw: first.raw,
                }
            }
        }
    }

    /// An approved answer whose test mode is known only from the charge reply is checked
    /// against config here.
    fn settle_test_mode(&self, mut answer: StatusAnswer, query: &StatusQuery<'_>) -> StatusAnswer {
        if answer.verified.outcome == Outcome::Approved && answer.verified.test_mode.is_none() {
            match query.known_test_mode {
                Some(mode) if mode != self.test_mode => {
                    answer.verified.outcome = Outcome::IntegrityFailure(format!(
                        "order was made in {} mode but gateway.test_mode is {}",
                        if mode { "test" } else { "live" },
                        self.test_mode
                    ));
                }
                Some(mode) => answer.verified.test_mode = Some(mode),
                None => {
                    answer.verified.outcome =
                        Outcome::Unknown("paid, but its test mode is unknown".into());
                }
            }
        }
        answer
    }

    async fn status_call(&self, path: &'static str, query: &StatusQuery<'_>) -> StatusAnswer {
        let window = status_window(query.sent_at, Utc::now());
        let mut form: Vec<(&str, &str)> = vec![
            ("Ordernumber", query.order_number),
            ("Merchant_ID", &self.merchant_id),
            ("Login", &self.login),
            ("Password", self.password.expose_secret()),
            ("Language", "EN"),
            ("Format", self.format_code()),
        ];
        form.extend(window.iter().map(|(name, value)| (*name, value.as_str())));
        tracing::debug!(
            service = path,
            order_number = query.order_number,
            "querying order status"
        );
        let received = self.post_form(path, &form).await;
        let failed = |outcome: Outcome, raw: Option<String>| StatusAnswer {
            verified: Verified {
                outcome,
                test_mode: None,
                response_code: None,
                bill_number: None,
                approved_orders: 0,
                pending_orders: 0,
                checkvalue_verified: false,
                reversals: None,
            },
            raw,
        };
        let body = match received {
            Received::Body(body) => body,
            // A failed status query proves nothing about the order; a status request that never
            // left is as good as one that got no answer.
            Received::Failed { outcome, raw, .. } => {
                let outcome = match outcome {
                    Outcome::NotSent(why) => {
                        Outcome::Unknown(format!("status query not sent: {why}"))
                    }
                    other => other,
                };
                return failed(outcome, raw);
            }
        };
        let raw = Some(self.mask(&body));
        match wire::parse_reply(&body) {
            Ok(reply) => {
                let expected = self.expected(query.order_number, query.amount, query.currency);
                StatusAnswer {
                    verified: reply::status(&reply, &expected, &self.salt),
                    raw,
                }
            }
            Err(e) => failed(
                Outcome::Unknown(format!("unreadable status reply: {e}")),
                raw,
            ),
        }
    }

    /// Lists a customer's saved cards (`/pay/oneclick/v1/token.cfm`).
    pub async fn tokens(&self, customer: &str) -> Result<Vec<CardToken>, Outcome> {
        let body = self
            .token_call("pay/oneclick/v1/token.cfm", customer, None)
            .await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Outcome::Unknown(format!("unreadable token list: {e}")))?;
        if let Some(fault) = wire::json_fault(&value) {
            return Err(fault_outcome(fault));
        }
        let Value::Array(items) = value else {
            return Err(Outcome::Unknown("token list is not a JSON array".into()));
        };
        items.iter().map(card_token).collect()
    }

    /// Removes a saved card (`/pay/oneclick/v1/rem_token.cfm`); returns the gateway's message.
    pub async fn remove_token(&self, customer: &str, token: &str) -> Result<String, Outcome> {
        let body = self
            .token_call("pay/oneclick/v1/rem_token.cfm", customer, Some(token))
            .await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| Outcome::Unknown(format!("unreadable reply: {e}")))?;
        if let Some(fault) = wire::json_fault(&value) {
            return Err(fault_outcome(fault));
        }
        value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Outcome::Unknown("reply has no message".into()))
    }

    async fn token_call(
        &self,
        path: &'static str,
        customer: &str,
        token: Option<&str>,
    ) -> Result<Vec<u8>, Outcome> {
        let mut body = json!({
            "merchant": {
                "merchant_id": self.merchant_id,
                "login": self.login,
                "password": self.password.expose_secret(),
            },
            "customernumber": customer,
            "language": "EN",
        });
        if let Some(token) = token {
            body["token"] = Value::String(token.to_string());
        }
        let request = self
            .http
            .post(self.endpoint(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        tracing::debug!(service = path, customer, "calling the token service");
        match self.post(path, request).await {
            Received::Body(body) => Ok(body),
            Received::Failed { outcome, .. } => Err(outcome),
        }
    }

    /// POSTs `form` (form-encoded) to the service at `path`: [`Client::post`].
    async fn post_form<T: serde::Serialize + ?Sized>(
        &self,
        path: &'static str,
        form: &T,
    ) -> Received {
        self.post(path, self.http.post(self.endpoint(path)).form(form))
            .await
    }

    /// Sends one request to `path` (its last segment names it in the metrics) and reads at most
    /// [`MAX_REPLY_BYTES`] of a 2xx reply.
    async fn post(&self, path: &'static str, request: reqwest::RequestBuilder) -> Received {
        let started = std::time::Instant::now();
        let received = self.post_unmeasured(request).await;
        if let Some(metrics) = &self.metrics {
            let result = match &received {
                Received::Body(_) => RequestResult::Answered,
                Received::Failed { outcome, .. } => match outcome {
                    Outcome::NotSent(_) => RequestResult::NotSent,
                    Outcome::RateLimited => RequestResult::RateLimited,
                    Outcome::Unknown(why) if why.starts_with("HTTP ") => RequestResult::HttpError,
                    _ => RequestResult::NoAnswer,
                },
            };
            let endpoint = path.rsplit('/').next().unwrap_or(path);
            metrics.request(endpoint, result, started.elapsed());
        }
        received
    }

    async fn post_unmeasured(&self, request: reqwest::RequestBuilder) -> Received {
        let failed = |outcome| Received::Failed {
            outcome,
            retry_after: None,
            raw: None,
        };
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(transport_outcome(&e)),
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Received::Failed {
                outcome: Outcome::RateLimited,
                retry_after,
                raw: None,
            };
        }
        if !status.is_success() {
            let raw = read_capped(&mut response).await.ok().map(|b| self.mask(&b));
            return Received::Failed {
                outcome: Outcome::Unknown(format!("HTTP {status} from the gateway")),
                retry_after: None,
                raw,
            };
        }
        match read_capped(&mut response).await {
            Ok(body) => Received::Body(body),
            Err(outcome) => failed(outcome),
        }
    }

    /// A reply body fit for the record: at most 8 KiB, lossy UTF-8, the password and salt
    /// replaced by `***` should a hostile or broken gateway echo them.
    fn mask(&self, body: &[u8]) -> String {
        let end = body.len().min(RAW_KEEP_BYTES);
        let mut text = String::from_utf8_lossy(&body[..end]).into_owned();
        for secret in [self.password.expose_secret(), self.salt.expose_secret()] {
            if !secret.is_empty() {
                let encoded: String =
                    url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                text = text.replace(secret, "***").replace(&encoded, "***");
            }
        }
        text
    }
}

fn check_order_number(order_number: &str) -> Result<(), String> {
    if order_number.is_empty()
        || order_number.len() > MAX_ORDER_NUMBER_LEN
        || !order_number.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "order number {:?} is not 1..={MAX_ORDER_NUMBER_LEN} printable ASCII characters",
            wire::excerpt(order_number)
        ));
    }
    Ok(())
}

/// What a transport error proves.
fn transport_outcome(e: &reqwest::Error) -> Outcome {
    let shown = describe(e);
    if e.is_connect() || e.is_builder() {
        // Refused, DNS, TLS handshake or connect timeout: no request bytes were written.
        Outcome::NotSent(shown)
    } else if e.is_timeout() {
        Outcome::Unknown(format!("no answer in time ({shown})"))
    } else {
        Outcome::Unknown(format!("connection lost ({shown})"))
    }
}

/// An error's text without the URL, with its causes (what went wrong at the socket).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
        text = text.replace(url.as_str(), "<gateway>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, Outcome> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_REPLY_BYTES as u64)
    {
        return Err(Outcome::Unknown(format!(
            "reply larger than {MAX_REPLY_BYTES} bytes"
        )));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(Outcome::Unknown(format!(
                        "reply larger than {MAX_REPLY_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Outcome::Unknown(format!(
                    "reply cut short ({})",
                    describe(&e)
                )));
            }
        }
    }
}

/// The GMT Start*/End* fields of a status query: from a day before the send to two hours after
/// now (minute precision; the end rounded up).
pub fn status_window(sent_at: DateTime<Utc>, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
    let start = sent_at.min(now) - ChronoDuration::hours(STATUS_WINDOW_BEFORE_HOURS);
    let end = now.max(sent_at)
        + ChronoDuration::hours(STATUS_WINDOW_AFTER_HOURS)
        + ChronoDuration::minutes(1);
    let fields = |prefix: &'static str, t: DateTime<Utc>| {
        let names: [&'static str; 5] = match prefix {
            "Start" => [
                "StartYear",
                "StartMonth",
                "StartDay",
                "StartHour",
                "StartMin",
            ],
            _ => ["EndYear", "EndMonth", "EndDay", "EndHour", "EndMin"],
        };
        [
            (names[0], t.year().to_string()),
            (names[1], t.month().to_string()),
            (names[2], t.day().to_string()),
            (names[3], t.hour().to_string()),
            (names[4], t.minute().to_string()),
        ]
    };
    let mut all = fields("Start", start).to_vec();
    all.extend(fields("End", end));
    all
}

fn fault_outcome(fault: Result<Reply, wire::ParseError>) -> Outcome {
    match fault {
        Ok(Reply::Fault {
            firstcode,
            secondcode,
            detail,
        }) => {
            let base = super::outcome::request_error(firstcode, secondcode)
                .unwrap_or_else(|| Outcome::Unknown("fault 0/0".into()));
            match (base, detail) {
                (Outcome::Rejected(m), Some(d)) => {
                    Outcome::Rejected(format!("{m}: {}", wire::excerpt(&d)))
                }
                (Outcome::Unknown(m), Some(d)) => {
                    Outcome::Unknown(format!("{m}: {}", wire::excerpt(&d)))
                }
                (other, _) => other,
            }
        }
        Ok(Reply::Orders(_)) => Outcome::Unknown("unexpected reply".into()),
        Err(e) => Outcome::Unknown(format!("unreadable fault: {e}")),
    }
}

fn card_token(item: &Value) -> Result<CardToken, Outcome> {
    let Value::Object(card) = item else {
        return Err(Outcome::Unknown("token list entry is not an object".into()));
    };
    let text = |name: &str| -> String {
        match card.get(name) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    };
    let flag = |name: &str| -> bool {
        match card.get(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.trim(), "1" | "true"),
            _ => false,
        }
    };
    let token = text("token");
    if token.is_empty() {
        return Err(Outcome::Unknown("token list entry without a token".into()));
    }
    Ok(CardToken {
        token,
        brand: text("brand"),
        bin: text("bin"),
        last4: text("post"),
        expire: text("expire"),
        bank: text("bank"),
        active: flag("active"),
        need_cvc: flag("needCVC"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(check_base_url("https://payments.demo.paysecure.ru").is_ok());
        assert!(check_base_url("http://127.0.0.1:8089").is_ok());
        assert!(check_base_url("http://[::1]:8089").is_ok());
        assert!(check_base_url("http://localhost:1").is_ok());
        for bad in [
            "http://payments.demo.paysecure.ru",
            "https://user:pw@payments.demo.paysecure.ru",
            "https://x.test/?Password=1",
            "ftp://x.test",
            "payments.demo.paysecure.ru",
            "http://10.0.0.1",
        ] {
            assert!(check_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_window_covers_the_send_with_margins() {
        let sent = "2026-03-01T23:59:30Z".parse::<DateTime<Utc>>().unwrap();
        let now = "2026-03-04T10:00:10Z".parse::<DateTime<Utc>>().unwrap();
        let w: std::collections::HashMap<_, _> = status_window(sent, now).into_iter().collect();
        let get = |k: &str| w[k].as_str();
        assert_eq!(
            (
                get("StartYear"),
                get("StartMonth"),
                get("StartDay"),
                get("StartHour"),
                get("StartMin")
            ),
            ("2026", "2", "28", "23", "59")
        );
        assert_eq!(
            (
                get("EndYear"),
                get("EndMonth"),
                get("EndDay"),
                get("EndHour"),
                get("EndMin")
            ),
            ("2026", "3", "4", "12", "1")
        );
    }

    #[test]
    fn order_numbers_are_checked_before_sending() {
        assert!(check_order_number("rcd7K3F9Q2M-acme-1001-p3-a1").is_ok());
        assert!(check_order_number(&"x".repeat(128)).is_ok());
        for bad in ["", "has space", "кириллица", &"x".repeat(129)] {
            assert!(check_order_number(bad).is_err(), "{bad}");
        }
    }
}
