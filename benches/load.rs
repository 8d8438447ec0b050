//! The load benchmark: `cargo bench --bench load` (see README, "Benchmark").
//!
//! The engine runs in-process against the built-in sandbox, on a database on the local disk
//! (a temporary folder under `<target>/bench/`). Every figure is printed as `name: value unit`
//! and written to `<target>/bench/load.json` as one flat JSON object (name → number).
//!
//! 1. **Burst**: `LOAD_SUBSCRIPTIONS` (default 20 000) subscriptions all due at the same instant,
//!    zero sandbox latency, the pacer open (`LOAD_BURST_IN_FLIGHT`, `LOAD_BURST_RPS`): ticks until
//!    every one is charged; then the sandbox's book must hold exactly one approved order per
//!    subscription, for the OrderNumber the store holds, and nothing else (else the run fails).
//!    Beside it, in the same run and on the same filesystem, the raw SQLite limit: single-row
//!    autocommit inserts with the store's pragmas, before and after the burst.
//! 2. **Latency-bound**: `LOAD_LATENCY_CHARGES` (default 1 000) charges, sandbox latency 200 ms and
//!    its own rate limit of 110 requests/s, pacer 32 in flight and 100 requests/s.
//! 3. **Scale** (`LOAD_SCALE=1`): `LOAD_SCALE_SUBSCRIPTIONS` (default 1 000 000) subscriptions in
//!    1 000 files, 1 % due; measured in a child process (this binary again) so that its peak
//!    resident memory is the daemon's alone, not the generator's or the burst's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use recurrentd::billing::Calendar;
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{
    BUILTIN_LOGIN, BUILTIN_MERCHANT_ID, BUILTIN_PASSWORD, BUILTIN_SALT, OrderState, Refusal,
    RpOutcome, Sandbox, SandboxConfig,
};
use recurrentd::store::{Access, AttemptState, Store};
use secrecy::SecretString;

/// Whether this process is the scale part's child.
static CHILD: AtomicBool = AtomicBool::new(false);

/// The first (and, in the burst, only) due date of every subscription.
const DUE: &str = "2027-01-01";

type Fail = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    // Warnings and errors only: the figures are the output. (A daemon logging one info line per
    // charge would pay for it; this measures the engine and the store, not the log sink.)
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = if std::env::var("LOAD_PART").as_deref() == Ok("scale-child") {
        scale_child()
    } else {
        run()
    };
    if let Err(e) = result {
        eprintln!("load benchmark FAILED: {e}");
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
        if CHILD.load(Ordering::Relaxed) {
            // The parent re-prints stdout at the end; this shows progress meanwhile.
            eprintln!("  scale: {name}: {} {unit}", show(value));
        }
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

/// The filesystem type a path is on (from /proc/mounts: the longest mount point above it).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best = (0, String::from("unknown"));
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 3 && path.starts_with(fields[1]) && fields[1].len() >= best.0 {
            best = (fields[1].len(), fields[2].to_string());
        }
    }
    best.1
}

fn run() -> Result<(), Fail> {
    let target = target_dir();
    let bench_dir = target.join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    let fs = fs_type(&bench_dir);
    if fs == "tmpfs" || fs == "ramfs" {
        return Err(format!(
            "{} is on {fs}: the figures need a real disk (set CARGO_TARGET_DIR)",
            bench_dir.display()
        )
        .into());
    }
    let work = tempfile::Builder::new()
        .prefix("load-")
        .tempdir_in(&bench_dir)?;
    eprintln!(
        "load benchmark: databases in {} ({fs}), {} cores",
        work.path().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut figures = Figures::default();
    let started = Instant::now();

    runtime.block_on(burst(work.path(), &mut figures))?;
    runtime.block_on(latency_bound(work.path(), &mut figures))?;
    drop(runtime);
    if std::env::var("LOAD_SCALE").is_ok_and(|v| v == "1") {
        scale(work.path(), &mut figures)?;
    }
    figures.add("total_run_secs", started.elapsed().as_secs_f64(), "s");

    let json = bench_dir.join("load.json");
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
    DUE.parse().unwrap()
}

/// One monthly subscription in schedule-file syntax; its bill number is plain (the sandbox
/// approves it) and unique per `n`.
fn subscription(out: &mut String, id: &str, n: u64, amount: &str, start: &str) {
    let _ = write!(
        out,
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"58{n:014}\"\ncurrency = \"RUB\"\n\
         amount = \"{amount}\"\nevery = \"1 month\"\nstart = {start}\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    );
}

/// `total` subscriptions in `files` files; `start(n)` is subscription n's start date.
fn write_schedules(
    dir: &Path,
    total: u64,
    files: u64,
    start: impl Fn(u64) -> String,
) -> Result<(), Fail> {
    std::fs::create_dir_all(dir)?;
    let files = files.clamp(1, total.max(1));
    let per_file = total.div_ceil(files);
    let mut n = 0;
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..per_file {
            if n == total {
                break;
            }
            subscription(&mut text, &format!("s{n:07}"), n, "100.00", &start(n));
            n += 1;
        }
        std::fs::write(dir.join(format!("f{f:04}.toml")), text)?;
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

/// Opens the daemon's store on `db` and syncs `schedules` into it at `now`, as the daemon does
/// (its `Engine::new` records the calendar before the first sync).
fn open_and_sync(db: &Path, schedules: &Path, now: DateTime<Utc>) -> Result<Store, Fail> {
    let mut store = Store::open_or_create(db)?;
    store.use_calendar(&calendar())?;
    sync(&mut store, schedules, now)?;
    Ok(store)
}

/// What the daemon does at start and on SIGHUP: read the folder and apply it, file by file.
fn sync(store: &mut Store, schedules: &Path, now: DateTime<Utc>) -> Result<(), Fail> {
    let summary = store.sync_dir(schedules, now)?;
    let errors: Vec<_> = summary.diagnostics().take(3).collect();
    if !errors.is_empty() {
        return Err(format!("schedule errors: {errors:?}").into());
    }
    Ok(())
}

fn engine(
    store: Store,
    sandbox: &Sandbox,
    clock: &ManualClock,
    pacer: Pacer,
) -> Result<Engine, Fail> {
    Ok(Engine::new(
        store,
        client(sandbox)?,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        calendar(),
        Policy::from(&EngineConfig::default()),
        pacer,
    )?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Watches the attempts table from its own read-only connection (WAL: readers do not block the
/// writer) and records the real instant each new intent became visible, i.e. committed. The
/// attempts' row ids are 1, 2, 3…, so `max(id)` counts the intents.
struct IntentWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, i64)>>,
}

impl IntentWatch {
    fn start(db: &Path) -> Result<IntentWatch, Fail> {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = 0;
            let mut query = conn
                .prepare("SELECT COALESCE(MAX(id), 0) FROM attempts")
                .unwrap();
            loop {
                let done = flag.load(Ordering::Relaxed);
                let now = Instant::now();
                let count: i64 = query.query_row([], |row| row.get(0)).unwrap_or(last);
                if count > last {
                    seen.push((now, count));
                    last = count;
                }
                if done {
                    return seen;
                }
                std::thread::sleep(StdDuration::from_millis(1));
            }
        });
        Ok(IntentWatch { stop, thread })
    }

    /// Delay of each intent after `t0`, in ms, sorted: intent k was first seen in the first
    /// sample whose count reached k.
    fn finish(self, t0: Instant) -> Vec<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().unwrap_or_default();
        let mut delays = Vec::new();
        let mut before = 0;
        for (at, count) in seen {
            let ms = at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
            delays.extend(std::iter::repeat_n(ms, (count - before) as usize));
            before = count;
        }
        delays
    }
}

// ----------------------------------------------------------------------------------------------
// 1. Burst

/// Single-row autocommit inserts for `secs` seconds, with the store's pragmas, in `dir`.
fn sqlite_full_commits_per_sec(dir: &Path, secs: f64) -> Result<f64, Fail> {
    let path = dir.join("sqlite-limit.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = rusqlite::Connection::open(&path)?;
    conn.busy_timeout(StdDuration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if mode != "wal" || sync != 2 {
        return Err(format!("sqlite limit: journal_mode {mode}, synchronous {sync}").into());
    }
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT NOT NULL, v INTEGER NOT NULL) STRICT",
    )?;
    let mut insert = conn.prepare("INSERT INTO t (at, v) VALUES (?1, ?2)")?;
    // Warm-up past the first automatic checkpoint (1 000 WAL pages, one page a commit here):
    // from then on the WAL file is rewritten in place, as the store's is in steady state. While
    // it still grows, every sync must also make the new file size durable, which is slower.
    let t = Instant::now();
    for n in 0..1_200i64 {
        insert.execute(rusqlite::params![Utc::now().to_rfc3339(), n])?;
    }
    eprintln!(
        "  sqlite limit: {:.0} commits/s while the WAL grows (warm-up, not a figure)",
        1_200.0 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        insert.execute(rusqlite::params![Utc::now().to_rfc3339(), n as i64])?;
        n += 1;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

async fn burst(work: &Path, figures: &mut Figures) -> Result<(), Fail> {
    let n = env_u32("LOAD_SUBSCRIPTIONS", 20_000);
    let files = env_u32("LOAD_BURST_FILES", 100);
    let in_flight = env_u32("LOAD_BURST_IN_FLIGHT", 32);
    let rps = env_u32("LOAD_BURST_RPS", 1_000_000);
    let limit_secs = f64::from(env_u32("LOAD_SQLITE_MS", 3_000)) / 1000.0;
    eprintln!(
        "burst: {n} subscriptions in {files} files, all due {DUE}; pacer {in_flight} in flight, \
         {rps}/s"
    );
    let dir = work.join("burst");
    let schedules = dir.join("schedules");
    write_schedules(&schedules, u64::from(n), u64::from(files), |_| DUE.into())?;
    let db = dir.join("recurrentd.db");

    let limit_before = sqlite_full_commits_per_sec(&dir, limit_secs)?;

    let due = calendar().due_instant(due_date());
    let clock = ManualClock::new(due - Duration::days(1));
    let store = open_and_sync(&db, &schedules, clock.now())?;
    let sandbox = sandbox(StdDuration::ZERO, None).await?;
    let engine = engine(store, &sandbox, &clock, Pacer::new(in_flight, rps))?;
    engine.reconcile().await?;
    clock.set(due);

    let watch = IntentWatch::start(&db)?;
    let commits_before = engine.with_store(|s| Ok(s.commits())).await?;
    let t0 = Instant::now();
    let mut ticks = 0;
    let mut approved = 0;
    while ticks < 20 {
        let report = engine.tick().await?;
        ticks += 1;
        approved += report.approved;
        if approved >= n && engine.outstanding().await? == 0 {
            break;
        }
        // Anything left open is looked up at its next check: move the engine's clock there.
        clock.advance(Duration::minutes(5));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let commits = engine.with_store(|s| Ok(s.commits())).await? - commits_before;
    let mut delays = watch.finish(t0);
    delays.sort_by(f64::total_cmp);

    let limit_after = sqlite_full_commits_per_sec(&dir, limit_secs)?;
    let limit = (limit_before + limit_after) / 2.0;

    // The book: one approved order per subscription, for the OrderNumber the store holds as
    // approved, and no other order.
    let attempts = engine.with_store(|s| s.attempts()).await?;
    let book = sandbox.book();
    let mut problems = Vec::new();
    let approved_attempts: Vec<_> = attempts
        .iter()
        .filter(|a| a.state == AttemptState::Approved)
        .collect();
    if approved_attempts.len() != n as usize || attempts.len() != n as usize {
        problems.push(format!(
            "{} attempts, {} approved in the store; expected {n}",
            attempts.len(),
            approved_attempts.len()
        ));
    }
    let mut per_order: HashMap<&str, (u32, u32)> = HashMap::new();
    for order in &book.orders {
        let entry = per_order.entry(order.order_number.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u32::from(order.state == OrderState::Approved);
    }
    let mut per_subscription: HashMap<&str, u32> = HashMap::new();
    for attempt in &approved_attempts {
        *per_subscription
            .entry(attempt.subscription_id.as_str())
            .or_default() += 1;
        match per_order.get(attempt.order_number.as_str()) {
            Some((1, 1)) => {}
            other => problems.push(format!(
                "{}: (orders, approved) in the book = {other:?}",
                attempt.order_number
            )),
        }
    }
    if per_subscription.len() != n as usize || per_subscription.values().any(|&c| c != 1) {
        problems.push("a subscription is not approved exactly once".into());
    }
    if book.orders.len() != n as usize {
        problems.push(format!(
            "{} orders in the book, expected {n}",
            book.orders.len()
        ));
    }
    if !problems.is_empty() {
        problems.truncate(10);
        return Err(format!(
            "burst: the book does not check out:\n{}",
            problems.join("\n")
        )
        .into());
    }
    sandbox.shutdown().await;

    let charges_per_sec = f64::from(n) / elapsed;
    figures.add("burst_subscriptions", f64::from(n), "subscriptions");
    figures.add("burst_ticks", f64::from(ticks), "ticks");
    figures.add("burst_secs", elapsed, "s");
    figures.add("charges_per_sec", charges_per_sec, "charges/s");
    figures.add(
        "durable_commits_per_charge",
        commits as f64 / f64::from(n),
        "commits/charge",
    );
    figures.add("pickup_delay_p50_ms", percentile(&delays, 50.0), "ms");
    figures.add("pickup_delay_p99_ms", percentile(&delays, 99.0), "ms");
    figures.add("pickup_delay_max_ms", percentile(&delays, 100.0), "ms");
    figures.add(
        "sqlite_full_commits_per_sec_before",
        limit_before,
        "commits/s",
    );
    figures.add(
        "sqlite_full_commits_per_sec_after",
        limit_after,
        "commits/s",
    );
    figures.add("sqlite_full_commits_per_sec", limit, "commits/s");
    figures.add(
        "commit_efficiency",
        charges_per_sec / (limit / 2.0),
        "ratio",
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// 2. Latency-bound

async fn latency_bound(work: &Path, figures: &mut Figures) -> Result<(), Fail> {
    let n = env_u32("LOAD_LATENCY_CHARGES", 1_000);
    let latency = StdDuration::from_millis(u64::from(env_u32("LOAD_LATENCY_MS", 200)));
    let configured = env_u32("LOAD_LATENCY_RPS", 100);
    let in_flight = env_u32("LOAD_LATENCY_IN_FLIGHT", 32);
    let gateway_rps = env_u32("LOAD_LATENCY_GATEWAY_RPS", 110);
    eprintln!(
        "latency-bound: {n} charges, sandbox latency {latency:?} and limit {gateway_rps}/s; \
         pacer {in_flight} in flight, {configured}/s"
    );
    let dir = work.join("latency");
    let schedules = dir.join("schedules");
    write_schedules(&schedules, u64::from(n), 10, |_| DUE.into())?;
    let due = calendar().due_instant(due_date());
    let clock = ManualClock::new(due - Duration::days(1));
    let store = open_and_sync(&dir.join("recurrentd.db"), &schedules, clock.now())?;
    let sandbox = sandbox(latency, Some(gateway_rps)).await?;
    let engine = engine(store, &sandbox, &clock, Pacer::new(in_flight, configured))?;
    engine.reconcile().await?;
    clock.set(due);

    let report = engine.tick().await?;
    let end = Utc::now();
    let book = sandbox.book();
    sandbox.shutdown().await;

    // Requests the sandbox answered: rp.cfm ones that were not refused for rate, and every
    // status reply (each counted on its order). Refused ones: its rate-limit counter.
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
    // The sandbox sleeps its latency before it takes a request in, so its arrival instants (and
    // its rate limit) see the instants requests were sent, shifted by the latency. The window:
    // from the first rp.cfm arrival to the tick's end (the last arrival plus its reply's
    // handling and one commit).
    let first = book
        .rp_requests
        .iter()
        .map(|r| r.time)
        .min()
        .ok_or("latency-bound: the sandbox received nothing")?;
    let window = ((end - first).num_microseconds().unwrap_or(0) as f64 / 1e6).max(1e-3);
    // n arrivals span n - 1 intervals.
    let achieved = (admitted - 1.0).max(0.0) / window;
    figures.add(
        "latency_charges_approved",
        f64::from(report.approved),
        "charges",
    );
    figures.add("latency_requests", admitted + refused, "requests");
    figures.add("latency_window_secs", window, "s");
    figures.add("latency_achieved_rate", achieved, "requests/s");
    figures.add(
        "latency_achieved_over_configured",
        achieved / f64::from(configured),
        "ratio",
    );
    figures.add(
        "latency_rate_limited_share",
        refused / (admitted + refused).max(1.0),
        "ratio",
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// 3. Scale

fn scale(work: &Path, figures: &mut Figures) -> Result<(), Fail> {
    let n = env_u32("LOAD_SCALE_SUBSCRIPTIONS", 1_000_000);
    let files = env_u32("LOAD_SCALE_FILES", 1_000);
    let dir = work.join("scale");
    let schedules = dir.join("schedules");
    eprintln!("scale: writing {n} subscriptions in {files} files (1 % due {DUE})");
    // 1 % start on the due date; the rest later in January, so they are not due yet.
    write_schedules(&schedules, u64::from(n), u64::from(files), |i| {
        if i % 100 == 0 {
            DUE.to_string()
        } else {
            format!("2027-01-{:02}", 2 + i % 27)
        }
    })?;
    eprintln!("scale: measuring in a child process");
    let output = std::process::Command::new(std::env::current_exe()?)
        .env("LOAD_PART", "scale-child")
        .env("LOAD_SCALE_DIR", &dir)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("scale child failed: {}", output.status).into());
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((name, rest)) = line.split_once(": ") else {
            continue;
        };
        let mut parts = rest.splitn(2, ' ');
        let value: f64 = parts.next().unwrap_or("").parse()?;
        figures.add(name, value, parts.next().unwrap_or(""));
    }
    Ok(())
}

fn max_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn ms(d: StdDuration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The scale measurements, in a process of their own (see `scale`).
fn scale_child() -> Result<(), Fail> {
    CHILD.store(true, Ordering::Relaxed);
    let dir = PathBuf::from(std::env::var("LOAD_SCALE_DIR")?);
    let schedules = dir.join("schedules");
    let db = dir.join("recurrentd.db");
    let mut figures = Figures::default();
    let due = calendar().due_instant(due_date());
    let clock = ManualClock::new(due - Duration::days(2));

    // Cold sync: an empty database, every file read and applied.
    let t = Instant::now();
    let mut store = open_and_sync(&db, &schedules, clock.now())?;
    figures.add("scale_cold_sync_ms", ms(t.elapsed()), "ms");
    figures.add("scale_rss_after_cold_sync_mib", max_rss_mib(), "MiB");

    // One file changes (one amount), then the daemon's re-sync: read the folder, apply.
    let files = env_u32("LOAD_SCALE_FILES", 1_000);
    let changed = schedules.join(format!("f{:04}.toml", files / 2));
    let text = std::fs::read_to_string(&changed)?;
    std::fs::write(
        &changed,
        text.replacen("amount = \"100.00\"", "amount = \"101.00\"", 1),
    )?;
    let t = Instant::now();
    sync(&mut store, &schedules, clock.now())?;
    figures.add("scale_resync_one_file_ms", ms(t.elapsed()), "ms");
    // And once more with nothing changed.
    let t = Instant::now();
    sync(&mut store, &schedules, clock.now())?;
    figures.add("scale_resync_unchanged_ms", ms(t.elapsed()), "ms");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sandbox = sandbox(StdDuration::ZERO, None).await?;
        let engine = engine(store, &sandbox, &clock, Pacer::new(32, 1_000_000))?;
        engine.reconcile().await?;

        // A tick where nothing is due: one hour before the due instant.
        clock.set(due - Duration::hours(1));
        let t = Instant::now();
        let report = engine.tick().await?;
        figures.add("scale_sweep_nothing_due_ms", ms(t.elapsed()), "ms");
        if report.intents != 0 {
            return Err(
                format!("{} intents an hour before the due instant", report.intents).into(),
            );
        }

        // The tick at the due instant: 1 % due, each planned, sent, confirmed and committed.
        clock.set(due);
        let watch = IntentWatch::start(&db)?;
        let t0 = Instant::now();
        let report = engine.tick().await?;
        let tick = t0.elapsed();
        let delays = watch.finish(t0);
        figures.add("scale_tick_due_ms", ms(tick), "ms");
        figures.add(
            "scale_tick_due_intents",
            f64::from(report.intents),
            "intents",
        );
        figures.add(
            "scale_tick_due_approved",
            f64::from(report.approved),
            "charges",
        );
        figures.add(
            "scale_tick_due_last_intent_ms",
            delays.iter().copied().fold(f64::NAN, f64::max),
            "ms",
        );

        // A second tick at the same instant: nothing new is due (every due one is charged).
        let t = Instant::now();
        engine.tick().await?;
        figures.add("scale_sweep_after_due_ms", ms(t.elapsed()), "ms");

        // `recurrentd status`: its own read-only connection, beside the running daemon's.
        let db = db.clone();
        let status = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let reader = Store::open(&db, Access::ReadOnly)?;
            reader.status(true)?;
            Ok::<_, Fail>(t.elapsed())
        })
        .await?
        .map_err(|e| e.to_string())?;
        figures.add("scale_status_ms", ms(status), "ms");
        sandbox.shutdown().await;
        Ok::<(), Fail>(())
    })?;
    drop(runtime);
    figures.add("max_rss_mib", max_rss_mib(), "MiB");
    Ok(())
}
