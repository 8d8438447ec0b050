//! Prometheus metrics: the registry the daemon's parts record into, and the opt-in loopback
//! listener (`[metrics] listen`) that serves it as OpenMetrics text on `GET /metrics`.
//!
//! One [`Metrics`] per daemon, handed to the gateway client and the engine (no global registry:
//! several engines in one test process never share counters). Counters and histograms move
//! where the data flows (each gateway request, each charge outcome, each new intent); gauges
//! are set from the store by [`Metrics::set_gauges`] once per tick.
//!
//! Exposition is prometheus-client's (the Prometheus project's Rust client): names, escaping,
//! `_total` suffixes and `# EOF` are its business, not hand-written here.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// Every metric name the daemon exports, as a scraper sees it (counters with `_total`;
/// histograms add `_bucket`, `_sum` and `_count`). The alert rules may name only these.
pub const EXPORTED: &[&str] = &[
    "recurrentd_charges_total",
    "recurrentd_gateway_requests_total",
    "recurrentd_gateway_request_duration_seconds",
    "recurrentd_pickup_delay_seconds",
    "recurrentd_unresolved_attempts",
    "recurrentd_unresolved_oldest_age_seconds",
    "recurrentd_subscriptions_needing_operator",
    "recurrentd_refused_schedule_files",
    "recurrentd_breaker_open",
    "recurrentd_clock_held",
    "recurrentd_last_successful_tick_timestamp_seconds",
    "recurrentd_outbox_backlog",
    "recurrentd_outbox_backlog_oldest_seconds",
    "recurrentd_start_time_seconds",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

/// How a gateway request ended at the transport level (what was said in the reply is the
/// charge outcome's business, not this one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// A 2xx reply was read in full.
    Answered,
    /// No connection was made (refused, DNS, TLS, connect timeout): provably not sent.
    NotSent,
    /// Sent, but no (whole) answer: a timeout, a lost connection, a reply cut short or too big.
    NoAnswer,
    /// HTTP 429.
    RateLimited,
    /// Another non-2xx HTTP status.
    HttpError,
}

impl RequestResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Answered => "answered",
            RequestResult::NotSent => "not_sent",
            RequestResult::NoAnswer => "no_answer",
            RequestResult::RateLimited => "rate_limited",
            RequestResult::HttpError => "http_error",
        }
    }
}

/// What the store says, once per tick (see [`Metrics::set_gauges`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Attempts whose outcome is not known (pending, not sent, unknown, parked, quarantined).
    pub unresolved: u64,
    /// Age of the oldest of them, in seconds (engine clock); 0 when there is none.
    pub unresolved_oldest_secs: i64,
    /// Subscriptions waiting for an operator (hard decline, possible double charge, parked or
    /// quarantined attempt, missing schedule file).
    pub needing_operator: u64,
    /// Schedule files whose latest version was refused (`schedule_files.last_error`).
    pub refused_files: u64,
    pub breaker_open: bool,
    pub clock_held: bool,
}

/// The daemon's metrics. Cheap to share (`Arc<Metrics>`); every update is atomic.
pub struct Metrics {
    registry: Registry,
    charges: Family<OutcomeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabels, Histogram>,
    pickup_delay: Histogram,
    unresolved: Gauge,
    unresolved_oldest: Gauge,
    needing_operator: Gauge,
    refused_files: Gauge,
    breaker_open: Gauge,
    clock_held: Gauge,
    last_tick: Gauge,
    outbox_backlog: Gauge,
    outbox_oldest: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let charges = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "recurrentd_charges",
            "Charge outcomes recorded: approved, declined (verified), not_sent, not_received, \
             unknown (after a send), parked, quarantined, blocked (refused before sending)",
            charges.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "recurrentd_gateway_requests",
            "Requests to the gateway by endpoint and transport result",
            requests.clone(),
        );
        // 50 ms .. about 100 s.
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 12))
        });
        registry.register_with_unit(
            "recurrentd_gateway_request_duration",
            "Gateway request latency, request sent to reply read, by endpoint",
            Unit::Seconds,
            latency.clone(),
        );
        // 1 s .. about 12 days: a tick is a minute, a catch-up after downtime can be days.
        let pickup_delay = Histogram::new(exponential_buckets(1.0, 4.0, 12));
        registry.register_with_unit(
            "recurrentd_pickup_delay",
            "From a period's due instant to its first intent (engine clock)",
            Unit::Seconds,
            pickup_delay.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let unresolved = gauge(
            &mut registry,
            "recurrentd_unresolved_attempts",
            "Attempts whose outcome is not known yet (pending, not sent, unknown, parked, \
             quarantined)",
        );
        let unresolved_oldest = gauge(
            &mut registry,
            "recurrentd_unresolved_oldest_age_seconds",
            "Age of the oldest unresolved attempt (0 when there is none)",
        );
        let needing_operator = gauge(
            &mut registry,
            "recurrentd_subscriptions_needing_operator",
            "Subscriptions waiting for an operator (hard decline, possible double charge, \
             parked or quarantined attempt, missing schedule file)",
        );
        let refused_files = gauge(
            &mut registry,
            "recurrentd_refused_schedule_files",
            "Schedule files whose latest version was refused (the last accepted one stays in \
             force)",
        );
        let breaker_open = gauge(
            &mut registry,
            "recurrentd_breaker_open",
            "1 while the circuit breaker is open (no new charges)",
        );
        let clock_held = gauge(
            &mut registry,
            "recurrentd_clock_held",
            "1 while new charges are held for a clock jump (until `clock ack`)",
        );
        let last_tick = gauge(
            &mut registry,
            "recurrentd_last_successful_tick_timestamp_seconds",
            "Unix time (real clock) of the last tick that finished without error",
        );
        // The outbox's figures: see `set_outbox`.
        let outbox_backlog = gauge(
            &mut registry,
            "recurrentd_outbox_backlog",
            "Ledger events not yet delivered by the outbox",
        );
        let outbox_oldest = gauge(
            &mut registry,
            "recurrentd_outbox_backlog_oldest_seconds",
            "Age of the oldest undelivered outbox event (0 when there is none)",
        );
        gauge(
            &mut registry,
            "recurrentd_start_time_seconds",
            "Unix time at which the daemon started",
        )
        .set(chrono::Utc::now().timestamp());
        Metrics {
            registry,
            charges,
            requests,
            latency,
            pickup_delay,
            unresolved,
            unresolved_oldest,
            needing_operator,
            refused_files,
            breaker_open,
            clock_held,
            last_tick,
            outbox_backlog,
            outbox_oldest,
        }
    }

    /// One charge outcome recorded (see `recurrentd_charges_total`'s help for the names).
    pub fn charge(&self, outcome: &'static str) {
        self.charges.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// One gateway request and how long it took.
    pub fn request(
        &self,
        endpoint: &'static str,
        result: RequestResult,
        took: std::time::Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                result: result.as_str(),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
    }

    /// A period's first intent, `delay` after its due instant (negative: counted as 0).
    pub fn pickup(&self, delay: chrono::Duration) {
        let secs = delay.num_milliseconds().max(0) as f64 / 1000.0;
        self.pickup_delay.observe(secs);
    }

    /// The store's figures (once per tick).
    pub fn set_gauges(&self, g: &StoreGauges) {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.unresolved.set(int(g.unresolved));
        self.unresolved_oldest.set(g.unresolved_oldest_secs.max(0));
        self.needing_operator.set(int(g.needing_operator));
        self.refused_files.set(int(g.refused_files));
        self.breaker_open.set(i64::from(g.breaker_open));
        self.clock_held.set(i64::from(g.clock_held));
    }

    /// The outbox's undelivered events and the age of the oldest, in seconds.
    pub fn set_outbox(&self, backlog: u64, oldest_secs: i64) {
        self.outbox_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        self.outbox_oldest.set(oldest_secs.max(0));
    }

    /// A tick finished without error at `at` (real time).
    pub fn tick_succeeded(&self, at: chrono::DateTime<chrono::Utc>) {
        self.last_tick.set(at.timestamp());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The running listener; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` (a loopback address: config checks it) and serves `GET /metrics`.
    pub async fn start(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    let svc = service_fn(move |request| {
                        let metrics = Arc::clone(&metrics);
                        async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &request)) }
                    });
                    let connection = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "metrics connection ended");
                    }
                });
            }
        });
        Ok(MetricsServer { addr, task })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond<B>(metrics: &Metrics, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET only\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exported_name_is_in_the_exposition_and_nothing_else() {
        let m = Metrics::new();
        m.charge("approved");
        m.request(
            "rp.cfm",
            RequestResult::Answered,
            std::time::Duration::from_millis(120),
        );
        m.pickup(chrono::Duration::seconds(30));
        let text = m.encode();
        for name in EXPORTED {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing from:\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                EXPORTED.contains(&name) || EXPORTED.contains(&base),
                "{name} is exported but not listed in EXPORTED"
            );
        }
        assert!(text.contains("recurrentd_charges_total{outcome=\"approved\"} 1"));
        assert!(text.contains(
            "recurrentd_gateway_requests_total{endpoint=\"rp.cfm\",result=\"answered\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }

    /// The shipped alert rules parse, carry the alerts that page someone, and name only
    /// metrics the daemon exports.
    #[test]
    fn alert_rules_name_only_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/prometheus/recurrentd-alerts.yml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        let rules = docs[0]["groups"][0]["rules"]
            .as_vec()
            .expect("groups[0].rules");
        let mut alerts = Vec::new();
        for rule in rules {
            let name = rule["alert"].as_str().expect("alert name");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            // Every recurrentd_* name in the expression.
            let mut rest = expr;
            while let Some(at) = rest.find("recurrentd_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let metric = &tail[..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s))
                    .unwrap_or(metric);
                assert!(
                    EXPORTED.contains(&metric) || EXPORTED.contains(&base),
                    "alert {name} names {metric}, which the daemon does not export"
                );
                rest = &tail[end..];
            }
            alerts.push((
                name.to_string(),
                expr.to_string(),
                rule["labels"]["severity"].as_str().unwrap().to_string(),
            ));
        }
        let pages = |metric: &str, threshold: &str| {
            alerts.iter().any(|(_, expr, severity)| {
                expr.contains(metric) && expr.contains(threshold) && severity == "page"
            })
        };
        assert!(
            pages("recurrentd_unresolved_oldest_age_seconds", "3600"),
            "unresolved > 1 h"
        );
        assert!(
            pages("recurrentd_refused_schedule_files", "> 0"),
            "a refused file"
        );
        assert!(
            pages("recurrentd_last_successful_tick_timestamp_seconds", "300"),
            "no tick 5 min"
        );
        assert!(pages("recurrentd_breaker_open", "== 1"), "breaker open");
        assert!(
            alerts
                .iter()
                .any(|(_, e, _)| e.contains("recurrentd_subscriptions_needing_operator")),
            "subscriptions needing an operator"
        );
    }

    #[test]
    fn gauges_take_the_store_figures() {
        let m = Metrics::new();
        m.set_gauges(&StoreGauges {
            unresolved: 3,
            unresolved_oldest_secs: 4000,
            needing_operator: 2,
            refused_files: 1,
            breaker_open: true,
            clock_held: false,
        });
        let text = m.encode();
        assert!(
            text.contains("recurrentd_unresolved_attempts 3\n"),
            "{text}"
        );
        assert!(text.contains("recurrentd_unresolved_oldest_age_seconds 4000\n"));
        assert!(text.contains("recurrentd_subscriptions_needing_operator 2\n"));
        assert!(text.contains("recurrentd_refused_schedule_files 1\n"));
        assert!(text.contains("recurrentd_breaker_open 1\n"));
        assert!(text.contains("recurrentd_clock_held 0\n"));
    }
}
