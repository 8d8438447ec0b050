//! The scale-out benchmark: `cargo bench --bench scale_out` (README, "Benchmark"), against the
//! PostgreSQL server named by `RECURRENTD_TEST_PG_URL` (`.ci/pg-cluster start DIR` gives one).
//!
//! Every instance is an engine on its own thread, runtime and connection, all on one database
//! (a schema of its own per part) and one in-process sandbox. Figures are printed as
//! `name: value unit` and written to `<target>/bench/scale_out.json`.
//!
//! 1. **Burst**: `SCALE_OUT_SUBSCRIPTIONS` (default 3 000) subscriptions all due at one instant,
//!    zero sandbox latency, each instance's pacer open; with 1 and then 3 instances, ticking
//!    until every subscription is charged. The sandbox's book must then hold exactly one
//!    approved order per subscription and nothing else (else the run fails).
//! 2. **Latency-bound**: `SCALE_OUT_LATENCY_CHARGES` (default 600) charges by 3 instances
//!    sharing one gateway rate limit (`SCALE_OUT_RPS`, default 99 requests/s: each instance's
//!    pacer takes a third), sandbox latency 200 ms and its own limit of 110 requests/s. The
//!    figure is the achieved request rate over the configured one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use recurrentd::billing::{Cadence, Calendar, Limits, SubscriptionState, Terms, Unit};
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{
    BUILTIN_LOGIN, BUILTIN_MERCHANT_ID, BUILTIN_PASSWORD, BUILTIN_SALT, OrderState, Refusal,
    RpOutcome, Sandbox, SandboxConfig,
};
use recurrentd::money::{Currency, Money};
use recurrentd::store::postgres::PgStore;
use recurrentd::store::{AttemptState, StoredSubscription};
use secrecy::SecretString;

type Fail = Box<dyn std::error::Error + Send + Sync>;

/// The lease each instance takes on its work.
const LEASE: StdDuration = StdDuration::from_secs(30);

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(server) = std::env::var("RECURRENTD_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!(
            "scale_out benchmark: set RECURRENTD_TEST_PG_URL to a PostgreSQL server \
             (export RECURRENTD_TEST_PG_URL=$(.ci/pg-cluster start /tmp/rpg))"
        );
        std::process::exit(2);
    };
    if let Err(e) = run(&server) {
        eprintln!("scale_out benchmark FAILED: {e}");
        std::process::exit(1);
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// The figures of a run, in the order measured.
#[derive(Default)]
struct Figures(Vec<(String, f64, String)>);

impl Figures {
    fn add(&mut self, name: &str, value: f64, unit: &str) {
        println!("{name}: {} {unit}", show(value));
        self.0.push((name.to_string(), value, unit.to_string()));
    }

    fn json(&self) -> String {
        let mut out = String::from("{\n");
        for (i, (name, value, _)) in self.0.iter().enumerate() {
            let sep = if i + 1 == self.0.len() { "" } else { "," };
            let number = if value.is_finite() {
                show(*value)
            } else {
                "null".into()
            };
            let _ = writeln!(out, "  \"{name}\": {number}{sep}");
        }
        out.push_str("}\n");
        out
    }
}

/// Three decimals at most, no trailing zeros.
fn show(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// `<target>`: the folder holding `release/deps/<this bench>`, so `CARGO_TARGET_DIR` is honoured.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|dir| dir.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn run(server: &str) -> Result<(), Fail> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    eprintln!(
        "scale_out benchmark: PostgreSQL at {}, {} cores",
        recurrentd::store::postgres::redact_url(server),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut figures = Figures::default();
    let started = Instant::now();
    for instances in [1, 3] {
        burst(server, &runtime, instances, &mut figures)?;
    }
    latency_bound(server, &runtime, &mut figures)?;
    figures.add("total_run_secs", started.elapsed().as_secs_f64(), "s");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let json = dir.join("scale_out.json");
    std::fs::write(&json, figures.json())?;
    eprintln!("figures written to {}", json.display());
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// Shared set-up

fn calendar() -> Calendar {
    Calendar::from(&BillingConfig {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace_hours: 24,
    })
}

fn due_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
}

/// A schema of its own, dropped at the end.
struct Schema {
    admin: postgres::Client,
    name: String,
    url: String,
}

impl Schema {
    fn new(server: &str, tag: &str) -> Result<Schema, Fail> {
        let mut admin = postgres::Client::connect(server, postgres::NoTls)?;
        let name = format!("bench_{tag}_{}", std::process::id());
        admin.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ))?;
        let separator = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{separator}options=-csearch_path%3D{name}");
        Ok(Schema { admin, name, url })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// `n` monthly subscriptions of 100.00 RUB due on [`due_date`], plain bill numbers (approved).
fn seed(url: &str, n: u32, now: DateTime<Utc>) -> Result<(), Fail> {
    let mut store = PgStore::connect(url, "seed", LEASE)?;
    for i in 0..n {
        store.insert_subscription(
            &StoredSubscription {
                id: format!("s{i:07}"),
                file: "bench.toml".into(),
                line: 1,
                customer: None,
                bill_number: format!("58{i:014}"),
                currency: Currency::parse("RUB")?,
                terms: Terms {
                    amount: Money::parse("100.00")?,
                    every: Cadence::new(1, Unit::Month).ok_or("cadence")?,
                    start: due_date(),
                    state: SubscriptionState::Active,
                    catch_up: None,
                    limits: Limits {
                        min_amount: Some(Money::parse("50.00")?),
                        max_amount: Some(Money::parse("150.00")?),
                        period_days: Some(28),
                        max_date: NaiveDate::from_ymd_opt(2027, 12, 31),
                    },
                },
                created_at: now,
                updated_at: now,
                removed_at: None,
            },
            now,
        )?;
    }
    Ok(())
}

async fn sandbox(latency: StdDuration, rate: Option<u32>) -> Result<Sandbox, Fail> {
    Ok(Sandbox::start(
        SandboxConfig {
            latency,
            requests_per_second: rate,
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await?)
}

fn client(sandbox: &Sandbox) -> Result<Client, Fail> {
    Ok(Client::new(Settings {
        url: sandbox.url(),
        merchant_id: BUILTIN_MERCHANT_ID.into(),
        login: BUILTIN_LOGIN.into(),
        password: SecretString::from(BUILTIN_PASSWORD),
        salt: SecretString::from(BUILTIN_SALT),
        test_mode: true,
        format: ResponseFormat::Xml,
        connect_timeout: StdDuration::from_secs(5),
        timeout: StdDuration::from_secs(30),
    })?)
}

/// Approved attempts in the database, on the watcher's own connection (one for the whole
/// watch: a connection per look would cost the server a new backend process each time).
fn approved(client: &mut postgres::Client) -> Result<i64, Fail> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM attempts WHERE state = 'approved'",
            &[],
        )?
        .get(0))
}

/// Runs `instances` engines, each ticking on its own thread until `done` is set.
fn run_instances(
    url: &str,
    sandbox: &Sandbox,
    clock: &ManualClock,
    instances: u32,
    pacer: impl Fn() -> Pacer,
    done: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<Result<(), String>>>, Fail> {
    let mut threads = Vec::new();
    for k in 0..instances {
        let (url, client, clock, pacer, done) = (
            url.to_string(),
            client(sandbox)?,
            clock.clone(),
            pacer(),
            Arc::clone(done),
        );
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let mut store =
                PgStore::connect(&url, &format!("bench-{k}"), LEASE).map_err(|e| e.to_string())?;
            let prefix = store.order_prefix().map_err(|e| e.to_string())?;
            let engine = Engine::with_backend(
                store,
                prefix,
                client,
                Arc::new(clock) as Arc<dyn Clock>,
                calendar(),
                Policy::from(&EngineConfig::default()),
                pacer,
            );
            runtime.block_on(async {
                engine.reconcile().await.map_err(|e| e.to_string())?;
                while !done.load(Ordering::SeqCst) {
                    engine.tick().await.map_err(|e| e.to_string())?;
                    tokio::time::sleep(StdDuration::from_millis(20)).await;
                }
                Ok(())
            })
        }));
    }
    Ok(threads)
}

fn join(threads: Vec<std::thread::JoinHandle<Result<(), String>>>) -> Result<(), Fail> {
    for thread in threads {
        thread.join().map_err(|_| "an instance panicked")??;
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// 1. Burst

fn burst(
    server: &str,
    runtime: &tokio::runtime::Runtime,
    instances: u32,
    figures: &mut Figures,
) -> Result<(), Fail> {
    let n = env_u32("SCALE_OUT_SUBSCRIPTIONS", 3_000);
    let in_flight = env_u32("SCALE_OUT_BURST_IN_FLIGHT", 32);
    eprintln!("burst: {n} subscriptions all due at once, {instances} instance(s)");
    let schema = Schema::new(server, &format!("burst{instances}"))?;
    let due = calendar().due_instant(due_date());
    let clock = ManualClock::new(due - chrono::Duration::days(1));
    seed(&schema.url, n, clock.now())?;
    let sandbox = runtime.block_on(sandbox(StdDuration::ZERO, None))?;
    clock.set(due);
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let threads = run_instances(
        &schema.url,
        &sandbox,
        &clock,
        instances,
        || Pacer::new(in_flight, 1_000_000),
        &done,
    )?;
    let deadline = t0 + StdDuration::from_secs(600);
    let mut watcher = postgres::Client::connect(&schema.url, postgres::NoTls)?;
    while approved(&mut watcher)? < i64::from(n) {
        if Instant::now() > deadline || threads.iter().any(|t| t.is_finished()) {
            done.store(true, Ordering::SeqCst);
            join(threads)?;
            return Err(format!("burst with {instances}: not every charge approved").into());
        }
        std::thread::sleep(StdDuration::from_millis(50));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    join(threads)?;

    // The book: one approved order per subscription, the one the database holds, nothing else.
    let book = sandbox.book();
    let mut store = PgStore::connect(&schema.url, "check", LEASE)?;
    let attempts = store.attempts()?;
    let mut per_order: HashMap<&str, (u32, u32)> = HashMap::new();
    for order in &book.orders {
        let entry = per_order.entry(order.order_number.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u32::from(order.state == OrderState::Approved);
    }
    let mut problems = Vec::new();
    if attempts.len() != n as usize || book.orders.len() != n as usize {
        problems.push(format!(
            "{} attempts, {} orders in the book; expected {n} of each",
            attempts.len(),
            book.orders.len()
        ));
    }
    for attempt in &attempts {
        if attempt.state != AttemptState::Approved
            || per_order.get(attempt.order_number.as_str()) != Some(&(1, 1))
        {
            problems.push(format!("{}: {}", attempt.order_number, attempt.state));
        }
    }
    if !problems.is_empty() {
        problems.truncate(10);
        return Err(format!(
            "burst: the book does not check out:\n{}",
            problems.join("\n")
        )
        .into());
    }
    runtime.block_on(sandbox.shutdown());
    let tag = if instances == 1 { "1" } else { "3" };
    figures.add(&format!("pg_burst_{tag}_instances_secs"), elapsed, "s");
    figures.add(
        &format!("pg_charges_per_sec_{tag}_instances"),
        f64::from(n) / elapsed,
        "charges/s",
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// 2. Latency-bound, three instances sharing one gateway rate limit

fn latency_bound(
    server: &str,
    runtime: &tokio::runtime::Runtime,
    figures: &mut Figures,
) -> Result<(), Fail> {
    let n = env_u32("SCALE_OUT_LATENCY_CHARGES", 600);
    let configured = env_u32("SCALE_OUT_RPS", 99);
    let in_flight = env_u32("SCALE_OUT_LATENCY_IN_FLIGHT", 32);
    let instances = 3;
    eprintln!(
        "latency-bound: {n} charges by {instances} instances sharing {configured} requests/s \
         (sandbox latency 200 ms, limit 110/s)"
    );
    let schema = Schema::new(server, "latency")?;
    let due = calendar().due_instant(due_date());
    let clock = ManualClock::new(due - chrono::Duration::days(1));
    seed(&schema.url, n, clock.now())?;
    let sandbox = runtime.block_on(sandbox(StdDuration::from_millis(200), Some(110)))?;
    clock.set(due);
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let threads = run_instances(
        &schema.url,
        &sandbox,
        &clock,
        instances,
        || {
            Pacer::new(
                (in_flight / instances).max(1),
                (configured / instances).max(1),
            )
        },
        &done,
    )?;
    let deadline = t0 + StdDuration::from_secs(600);
    let mut watcher = postgres::Client::connect(&schema.url, postgres::NoTls)?;
    while approved(&mut watcher)? < i64::from(n) {
        if Instant::now() > deadline || threads.iter().any(|t| t.is_finished()) {
            done.store(true, Ordering::SeqCst);
            join(threads)?;
            return Err("latency-bound: not every charge approved".into());
        }
        std::thread::sleep(StdDuration::from_millis(50));
    }
    let end = Utc::now();
    done.store(true, Ordering::SeqCst);
    join(threads)?;
    let book = sandbox.book();
    runtime.block_on(sandbox.shutdown());
    let rp_admitted = book
        .rp_requests
        .iter()
        .filter(|r| !matches!(r.outcome, RpOutcome::Refused(Refusal::RateLimited)))
        .count() as f64;
    let status: f64 = book
        .orders
        .iter()
        .map(|o| f64::from(o.status_queries))
        .sum();
    let admitted = rp_admitted + status;
    let refused = book.rate_limited as f64;
    let first = book
        .rp_requests
        .iter()
        .map(|r| r.time)
        .min()
        .ok_or("latency-bound: the sandbox received nothing")?;
    let window = ((end - first).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-3);
    let achieved = (admitted - 1.0).max(0.0) / window;
    let configured_total = f64::from((configured / instances).max(1) * instances);
    figures.add("pg_latency_window_secs", window, "s");
    figures.add(
        "pg_latency_achieved_rate_3_instances",
        achieved,
        "requests/s",
    );
    figures.add(
        "pg_latency_achieved_over_configured_3_instances",
        achieved / configured_total,
        "ratio",
    );
    figures.add(
        "pg_latency_rate_limited_share",
        refused / (admitted + refused).max(1.0),
        "ratio",
    );
    Ok(())
}
