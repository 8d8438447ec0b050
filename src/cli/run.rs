//! `recurrentd run`: the daemon, on the real clock or a rehearsal clock, against the configured
//! gateway or the built-in sandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use clap::Args;
use secrecy::SecretString;

use super::exit;
use crate::billing::Calendar;
use crate::clock::{Clock, RehearsalClock, SystemClock};
use crate::config::{self, Config, SecretName};
use crate::daemon::{self, DaemonError, RunOptions, Sweep};
use crate::engine::EngineError;
use crate::forecast;
use crate::gateway::client::{Settings, check_base_url};
use crate::gateway::sandbox::{self, Sandbox, SandboxConfig};
use crate::metrics::Metrics;
use crate::outbox::Webhook;
use crate::outbox::receiver::{Received, Receiver};
use crate::store::{Access, AttemptState, ChargeState, Store, StoreError};

/// Rehearsal speed of `--sandbox` when `--clock-speed` is not given: a 30-day month in ten
/// seconds.
pub const SANDBOX_SPEED: u32 = 30 * 86_400 / 10;

/// The pace `--sandbox` allows itself at least (the configured one is the real gateway's; at a
/// month per ten seconds a request paced at 5 per second is a virtual day late): requests per
/// second, and requests in flight.
const SANDBOX_RATE: u32 = 200;
const SANDBOX_IN_FLIGHT: u32 = 16;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run against the built-in sandbox (started on a free loopback port, with throwaway demo
    /// secrets and a fresh database in the temporary folder) on a rehearsal clock: months of
    /// billing in a minute.
    #[arg(long)]
    pub sandbox: bool,

    /// Rehearsal clock: the virtual instant the run starts at (RFC 3339). Only against the
    /// sandbox or a loopback gateway.
    #[arg(long, value_name = "RFC3339")]
    pub clock_start: Option<DateTime<Utc>>,

    /// Rehearsal clock: virtual seconds per real second (86400 = a day per second).
    #[arg(long, value_name = "FACTOR", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub clock_speed: Option<u32>,

    /// Rehearsal clock: stop creating charges once the virtual clock passes this instant, settle
    /// what is outstanding, and exit 0 — or exit 1 if charges that fell due during the rehearsal
    /// were left unmade (skipped because they were reached late, or never attempted: the pace,
    /// gateway.requests_per_second, could not keep up with the clock), said on stderr and in
    /// the log with the count. What fell due in the last 25 sweeps (at least a virtual day)
    /// before this instant is not counted.
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<DateTime<Utc>>,

    /// Create the database (`database.path`) because there is none: a new, empty database with
    /// a new order-number prefix. Only for the first start of a new installation; refused when
    /// the database exists. Never after losing a database: restore the backup instead, since a
    /// new database knows of no past charge and would charge every current period again. Under
    /// systemd, the first start in an empty state directory ($STATE_DIRECTORY) creates it
    /// without this flag.
    #[arg(long, conflicts_with = "sandbox")]
    pub init: bool,
}

pub fn run(config: &Config, args: &RunArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("recurrentd: cannot start the async runtime: {error}");
            return exit::INTERNAL;
        }
    };
    runtime.block_on(run_async(config, args))
}

async fn run_async(config: &Config, args: &RunArgs) -> u8 {
    // A sandbox run keeps to a fresh SQLite database of its own, whatever database.url says.
    let own;
    let config = if args.sandbox && config.database.postgres.is_some() {
        let mut copy = config.clone();
        copy.database.postgres = None;
        own = copy;
        &own
    } else {
        config
    };
    let rehearsal = args.sandbox || args.clock_start.is_some() || args.clock_speed.is_some();
    let start = args.clock_start.unwrap_or_else(Utc::now);
    let speed = args
        .clock_speed
        .unwrap_or(if args.sandbox { SANDBOX_SPEED } else { 1 });
    let until = args
        .until
        .or_else(|| args.sandbox.then(|| start + Duration::days(182)));
    let clock: Arc<dyn Clock> = if rehearsal {
        Arc::new(RehearsalClock::new(start, speed))
    } else {
        if args.until.is_some() {
            eprintln!("recurrentd: --until needs a rehearsal clock (--clock-start/--clock-speed)");
            return exit::USAGE;
        }
        Arc::new(SystemClock)
    };

    // The gateway: the built-in sandbox, or the configured one with its secrets. (No timeout in
    // the demo: a request waits out its real timeout, which at this speed is days of billing.)
    let mut sandbox_handle = None;
    let mut sandbox_config_override = None;
    let (settings, database) = if args.sandbox {
        let sandbox_config = SandboxConfig {
            hang: StdDuration::from_secs(5),
            ..SandboxConfig::builtin()
        };
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let sandbox = match Sandbox::start(sandbox_config, loopback).await {
            Ok(sandbox) => sandbox,
            Err(error) => {
                eprintln!("recurrentd: cannot start the sandbox: {error}");
                return exit::UNAVAILABLE;
            }
        };
        let settings = Settings {
            url: sandbox.url(),
            merchant_id: sandbox::BUILTIN_MERCHANT_ID.into(),
            login: sandbox::BUILTIN_LOGIN.into(),
            password: SecretString::from(sandbox::BUILTIN_PASSWORD),
            salt: SecretString::from(sandbox::BUILTIN_SALT),
            test_mode: true,
            format: config.gateway.format,
            connect_timeout: StdDuration::from_secs(2),
            timeout: StdDuration::from_secs(3),
        };
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.3f");
        let database = std::env::temp_dir().join(format!("recurrentd-sandbox-{stamp}.db"));
        // The sample schedules plus a few subscriptions whose magic bill numbers make the sandbox
        // decline or answer late, so the run shows retries and status lookups too.
        let schedules = std::env::temp_dir().join(format!("recurrentd-sandbox-{stamp}-schedules"));
        let local_start = Calendar::from(&config.billing).local_date(start);
        if let Err(error) = demo_schedules(&config.schedules.dir, &schedules, local_start) {
            eprintln!("recurrentd: cannot prepare the sandbox's schedules: {error}");
            return exit::INTERNAL;
        }
        sandbox_config_override = Some(schedules);
        tracing::info!(
            gateway = %sandbox.url(),
            database = %database.display(),
            speed,
            requests_per_second = config.gateway.requests_per_second.max(SANDBOX_RATE),
            max_in_flight = config.gateway.max_in_flight.max(SANDBOX_IN_FLIGHT),
            "sandbox run: the built-in Assist sandbox, demo secrets, a fresh database; the pace \
             is raised for the sandbox (gateway.requests_per_second {} and gateway.max_in_flight \
             {} are the real gateway's)",
            config.gateway.requests_per_second,
            config.gateway.max_in_flight
        );
        sandbox_handle = Some(sandbox);
        (settings, database)
    } else {
        if rehearsal {
            let loopback = check_base_url(&config.gateway.url)
                .ok()
                .is_some_and(|url| url.scheme() == "http");
            if !loopback || !config.gateway.test_mode {
                eprintln!(
                    "recurrentd: a rehearsal clock runs only against the sandbox or a loopback \
                     gateway in test mode (gateway.url is {})",
                    config.gateway.url
                );
                return exit::USAGE;
            }
        }
        let secret = |name| {
            config::require_secret(&config.gateway, name).map_err(|error| {
                eprintln!("recurrentd: configuration error: {error}");
                exit::CONFIG
            })
        };
        let password = match secret(SecretName::Password) {
            Ok(p) => p,
            Err(code) => return code,
        };
        let salt = match secret(SecretName::Salt) {
            Ok(s) => s,
            Err(code) => return code,
        };
        (
            Settings::from_config(&config.gateway, password, salt),
            config.database.path.clone(),
        )
    };

    // A missing database is created only when that is what was meant: a sandbox run's own, an
    // explicit --init, or the first start under systemd in an empty state directory.
    let create = if args.sandbox {
        Some("a sandbox run's own database".to_string())
    } else if args.init {
        if database_exists(&database) {
            eprintln!(
                "recurrentd: --init creates a new database, but {} already exists: run without \
                 --init",
                database.display()
            );
            return exit::CONFIG;
        }
        Some("run --init".to_string())
    } else {
        first_start_under_systemd(&database, std::env::var_os("STATE_DIRECTORY").as_deref())
    };

    let options = RunOptions {
        clock: Arc::clone(&clock),
        // A rehearsal sweeps on a real-time interval (the cron expression reads the wall clock,
        // which a rehearsal does not follow): about one virtual hour, between 20 and 250 ms of
        // real time, so that charges fall due within the hour even at a month per ten seconds.
        sweep: if rehearsal {
            Sweep::Every(rehearsal_sweep(speed))
        } else {
            Sweep::Cron(config.daemon.sweep_cron.clone())
        },
        watch_schedules: config.daemon.watch_schedules && !args.sandbox,
        until,
        drain_deadline: StdDuration::from_secs(if rehearsal {
            20
        } else {
            u64::from(config.daemon.shutdown_deadline_secs)
        }),
        summary_every: StdDuration::from_secs(if rehearsal { 5 } else { 600 }),
        database: database.clone(),
        create,
        max_failed_ticks: config.daemon.max_failed_ticks,
        webhook: None,
        rehearsal: rehearsal.then_some(speed),
        metrics: None,
    };
    // The webhook: the configured one, or, in a sandbox run, a local receiver that checks every
    // signature (unless one is configured).
    let mut options = options;
    let mut receiver = None;
    match webhook(config) {
        Ok(Some(webhook)) => options.webhook = Some(webhook),
        Ok(None) if args.sandbox => {
            let secret = SecretString::from(sandbox_webhook_secret());
            match Receiver::start(secret.clone()).await {
                Ok(started) => {
                    options.webhook = Some(Webhook {
                        url: started.url(),
                        secret,
                        timeout: StdDuration::from_secs(5),
                        dead_after: Duration::days(3),
                    });
                    tracing::info!(
                        url = %started.url(),
                        "sandbox run: events are delivered to a local webhook receiver that checks their signatures"
                    );
                    receiver = Some(started);
                }
                Err(error) => tracing::warn!(%error, "sandbox run: no webhook receiver"),
            }
        }
        Ok(None) => {}
        Err(code) => return code,
    }
    let mut sandbox_config = None;
    if let Some(schedules) = sandbox_config_override {
        tracing::info!(
            schedules = %schedules.display(),
            "sandbox run: the sample schedules and sandbox-demo.toml (declines, a late answer)"
        );
        let mut copy = config.clone();
        copy.schedules.dir = schedules;
        // The configured pace is the real gateway's; the built-in sandbox takes more, and at a
        // month per ten seconds a request paced at 5 per second is a virtual day late.
        copy.gateway.max_in_flight = copy.gateway.max_in_flight.max(SANDBOX_IN_FLIGHT);
        copy.gateway.requests_per_second = copy.gateway.requests_per_second.max(SANDBOX_RATE);
        // Metrics on a free loopback port unless configured (the log says where), and their
        // figures printed at the end.
        copy.metrics
            .listen
            .get_or_insert(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        options.metrics = Some(Arc::new(Metrics::new()));
        sandbox_config = Some(copy);
    }
    let config = sandbox_config.as_ref().unwrap_or(config);
    let metrics = options.metrics.clone();
    let result = daemon::run(config, settings, options).await;
    let code = match (result, until) {
        // A rehearsal that reached --until (not one stopped early by a signal): was everything
        // that fell due made?
        (Ok(()), Some(until))
            if rehearsal && clock.now() >= until && config.database.postgres.is_none() =>
        {
            let config = config.clone();
            let database = database.clone();
            tokio::task::spawn_blocking(move || {
                rehearsal_shortfall(&config, &database, start, until, speed)
            })
            .await
            .unwrap_or(exit::INTERNAL)
        }
        (Ok(()), _) => exit::OK,
        (Err(error), _) => report_failure(&error),
    };
    if let Some(sandbox) = sandbox_handle {
        print_sandbox_summary(&sandbox, &database);
        sandbox.shutdown().await;
    }
    if let Some(receiver) = receiver {
        print_webhook_summary(&receiver.received(), &database);
        receiver.shutdown().await;
    }
    if let Some(metrics) = metrics {
        print_metrics_summary(&metrics);
    }
    code
}

/// The sandbox run's main Prometheus figures, from the text its `/metrics` endpoint served.
fn print_metrics_summary(metrics: &Metrics) {
    let text = metrics.encode();
    let wanted = [
        "recurrentd_charges_total{",
        "recurrentd_gateway_requests_total{",
        "recurrentd_unresolved_attempts ",
        "recurrentd_subscriptions_needing_operator ",
        "recurrentd_outbox_backlog ",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| wanted.iter().any(|w| line.starts_with(w)))
        .collect();
    println!(
        "Metrics (what /metrics served at the end; gauges as of the last tick; the log's \
         \"serving metrics\" line gives the address, metrics.listen chooses it):"
    );
    for line in lines {
        println!("  {line}");
    }
}

/// The configured webhook with its secret, if `[webhook]` is set; exit 78 when its secret is
/// missing or unreadable.
fn webhook(config: &Config) -> Result<Option<Webhook>, u8> {
    let Some(section) = &config.webhook else {
        return Ok(None);
    };
    let secret = match config::load_webhook_secret(config) {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            eprintln!(
                "recurrentd: configuration error: [webhook] is set but its secret is not: set \
                 webhook.secret_file, or provide $CREDENTIALS_DIRECTORY/webhook-secret, or (in \
                 test mode only) RECURRENTD_SECRET_WEBHOOK"
            );
            return Err(exit::CONFIG);
        }
        Err(error) => {
            eprintln!("recurrentd: configuration error: {error}");
            return Err(exit::CONFIG);
        }
    };
    Ok(Some(Webhook {
        url: section.url.clone(),
        secret,
        timeout: StdDuration::from_secs(u64::from(section.timeout_secs)),
        dead_after: Duration::days(i64::from(section.dead_letter_after_days)),
    }))
}

/// A throwaway signing secret for the sandbox's receiver.
fn sandbox_webhook_secret() -> String {
    let mut bytes = [0u8; 24];
    let _ = getrandom::getrandom(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("whsec_{hex}")
}

/// What the sandbox's webhook receiver got, against the outbox.
fn print_webhook_summary(received: &Received, database: &Path) {
    let backlog = Store::open(database, Access::ReadOnly)
        .and_then(|store| store.outbox_backlog())
        .ok();
    println!(
        "Webhook: {} event(s) delivered to the local receiver, {} delivery(ies) with a verified \
         signature ({} refused, {} duplicate(s), {} out of order); {} still pending, {} dead. \
         See them with `recurrentd events` (RECURRENTD_DATABASE__PATH set as above).",
        received.events,
        received.verified,
        received.rejected,
        received.duplicates,
        received.out_of_order,
        backlog.as_ref().map_or(0, |b| b.undelivered),
        backlog.as_ref().map_or(0, |b| b.dead),
    );
}

/// At `--until`: the charges that fell due during the rehearsal and were left unmade (skipped
/// for lateness, or never attempted by the cutoff), said in the log and on stderr, exit 1; else
/// exit 0. The cutoff is the daemon's last sweep, or `until` less an allowance (25 virtual sweep
/// intervals, at least a virtual day) if that is later: what fell due in that last stretch the
/// next sweep would have made, had the rehearsal gone on.
fn rehearsal_shortfall(
    config: &Config,
    database: &Path,
    start: DateTime<Utc>,
    until: DateTime<Utc>,
    speed: u32,
) -> u8 {
    let store = match Store::open(database, Access::ReadOnly) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("recurrentd: cannot check what the rehearsal made: {error}");
            return exit::store(&error);
        }
    };
    let report = match crate::schedule::load_dir(&config.schedules.dir) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("recurrentd: cannot check what the rehearsal made: {error}");
            return exit::CONFIG;
        }
    };
    let calendar = Calendar::from(&config.billing);
    let cutoff = shortfall_cutoff(start, until, speed, store.last_sweep_at().ok().flatten());
    let mut unmade = forecast::Unmade::default();
    let mut subscriptions = 0u32;
    for subscription in report.subscriptions() {
        match store.ledger_state(&subscription.id) {
            Ok(ledger) => {
                let one = forecast::unmade(subscription, &ledger, &calendar, start, cutoff);
                if one.total() > 0 {
                    subscriptions += 1;
                }
                unmade.add(one);
            }
            Err(error) => {
                eprintln!("recurrentd: cannot check what the rehearsal made: {error}");
                return exit::store(&error);
            }
        }
    }
    if unmade.total() == 0 {
        tracing::info!(
            clock = %crate::timefmt::rfc3339(cutoff),
            "rehearsal complete: every charge that fell due was made"
        );
        return exit::OK;
    }
    let message = format!(
        "the rehearsal left {} due charge(s) of {subscriptions} subscription(s) unmade by {} \
         ({} period(s) skipped because they were reached late, {} due and not attempted): \
         the daemon could not keep up at --clock-speed {speed} with gateway.requests_per_second \
         = {} and gateway.max_in_flight = {}; slow the clock down or raise the rate (exit 1)",
        unmade.total(),
        crate::timefmt::rfc3339(cutoff),
        unmade.skipped,
        unmade.not_attempted,
        config.gateway.requests_per_second,
        config.gateway.max_in_flight,
    );
    tracing::error!(
        unmade = unmade.total(),
        skipped = unmade.skipped,
        not_attempted = unmade.not_attempted,
        clock = %crate::timefmt::rfc3339(cutoff),
        "rehearsal incomplete: due charges were left unmade"
    );
    eprintln!("recurrentd: {message}");
    exit::PROBLEMS
}

/// The instant a rehearsal's due charges are reckoned to (see [`rehearsal_shortfall`]).
fn shortfall_cutoff(
    start: DateTime<Utc>,
    until: DateTime<Utc>,
    speed: u32,
    last_sweep: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let interval = rehearsal_sweep(speed) * speed.max(1);
    let allowance = Duration::from_std(interval * 25)
        .unwrap_or(Duration::days(1))
        .max(Duration::days(1));
    last_sweep
        .unwrap_or(start)
        .max(until - allowance)
        .min(until)
}

/// Says why the daemon stopped (one line on stderr) and returns the exit code.
fn report_failure(error: &DaemonError) -> u8 {
    match error {
        DaemonError::Store(StoreError::NoDatabase { path, .. }) => {
            eprintln!(
                "recurrentd: {error}, and `run` creates one only when told to. On the first start \
                 of a new installation, run `recurrentd run --init` once: it creates an empty \
                 database with a new order-number prefix (under systemd, the first start in an \
                 empty state directory does that by itself). Never use --init after losing a \
                 database: restore the latest backup to {} instead, since a new database knows of \
                 no past charge and would charge every current period again",
                path.display()
            );
            exit::CONFIG
        }
        _ if error.is_damaged() => {
            eprintln!(
                "recurrentd: {error}; refusing to run on it (a restart cannot repair the file): \
                 restore the latest backup in its place"
            );
            exit::IO_ERROR
        }
        DaemonError::TicksFailed { .. } => {
            eprintln!("recurrentd: {error}");
            exit::INTERNAL
        }
        // A local database problem is never "gateway unavailable" (69).
        DaemonError::Store(store) | DaemonError::Engine(EngineError::Store(store)) => {
            eprintln!("recurrentd: {error}");
            exit::store(store)
        }
        _ => {
            eprintln!("recurrentd: {error}");
            match error {
                DaemonError::Gateway(_) | DaemonError::Schedules(_) => exit::CONFIG,
                _ if error.is_permanent() => exit::CONFIG,
                _ => exit::INTERNAL,
            }
        }
    }
}

/// Whether a database file is there to open (an empty file is not one yet).
fn database_exists(database: &Path) -> bool {
    std::fs::metadata(database).is_ok_and(|meta| meta.len() > 0)
}

/// The first start under systemd: `$STATE_DIRECTORY` (one directory, or several separated by
/// colons) names a directory the database is inside, and that directory holds nothing at all.
/// Then the database may be created, and the reason is what the log says.
fn first_start_under_systemd(
    database: &Path,
    state_directory: Option<&std::ffi::OsStr>,
) -> Option<String> {
    let dirs = state_directory?.to_str()?;
    let parent = database.parent()?.canonicalize().ok()?;
    dirs.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let canonical = Path::new(dir).canonicalize().ok()?;
        let empty = std::fs::read_dir(&canonical).ok()?.next().is_none();
        (parent.starts_with(&canonical) && empty).then(|| {
            format!(
                "first start under systemd: the state directory {dir} ($STATE_DIRECTORY) was \
                 empty"
            )
        })
    })
}

/// What a sandbox run did, checked against the sandbox's own book.
fn print_sandbox_summary(sandbox: &Sandbox, database: &std::path::Path) {
    let book = sandbox.book();
    let approved_at_gateway = book
        .orders
        .iter()
        .filter(|o| o.state.as_str() == "Approved")
        .count();
    let Ok(store) = Store::open(database, Access::ReadOnly) else {
        return;
    };
    let Ok(periods) = store.periods(None) else {
        return;
    };
    let Ok(attempts) = store.attempts() else {
        return;
    };
    let count = |state| periods.iter().filter(|p| p.state == state).count();
    let attempts_in = |state| attempts.iter().filter(|a| a.state == state).count();
    let looked_up = attempts.iter().filter(|a| a.checks > 0).count();
    println!(
        "\nSandbox run finished: {} charge request(s) reached the sandbox; {} approved there.\n\
         Ledger: {} period(s) paid, {} failed, {} blocked or skipped, {} quarantined, {} open.\n\
         Attempts: {} approved, {} declined (retries included), {} looked up again after an \
         unclear answer, {} still unresolved.\n\
         Database: {} (try `recurrentd status` and `recurrentd history` with \
         RECURRENTD_DATABASE__PATH set to it)",
        book.rp_requests.len(),
        approved_at_gateway,
        count(ChargeState::Paid),
        count(ChargeState::Failed),
        count(ChargeState::Blocked) + count(ChargeState::Skipped),
        count(ChargeState::Quarantined),
        count(ChargeState::Open),
        attempts_in(AttemptState::Approved),
        attempts_in(AttemptState::Declined),
        looked_up,
        attempts
            .iter()
            .filter(|a| {
                matches!(
                    a.state,
                    AttemptState::Pending
                        | AttemptState::NotSent
                        | AttemptState::Unknown
                        | AttemptState::Parked
                )
            })
            .count(),
        database.display()
    );
}

/// Copies the schedule files of `from` into a new folder `to` and adds `sandbox-demo.toml`:
/// subscriptions on the sandbox's magic bill numbers, starting a few days after `today`.
fn demo_schedules(
    from: &std::path::Path,
    to: &std::path::Path,
    today: chrono::NaiveDate,
) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for path in crate::schedule::list_dir(from)
        .map_err(|e| e.to_string())?
        .1
    {
        let name = path.file_name().unwrap_or_default();
        std::fs::copy(&path, to.join(name)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let day = |n: u64| today + chrono::Days::new(n);
    let end = today + chrono::Days::new(2 * 366);
    let mut text = String::from(
        "# Written by `recurrentd run --sandbox`: bill numbers starting with 999 make the built-in\n\
         # sandbox misbehave (see the README's \"The sandbox\").\n\n",
    );
    for (id, bill, amount, start, what) in [
        (
            "demo-soft-decline",
            "999000000000102",
            "299.00",
            day(2),
            "AS102 insufficient funds every time: tried again after 1, 3 and 7 days, then the period fails",
        ),
        (
            "demo-hard-decline",
            "999000000000101",
            "199.00",
            day(4),
            "AS101 card invalid: no retry, the subscription waits for `recurrentd resume`",
        ),
        (
            "demo-late-answer",
            "999000000000300",
            "149.00",
            day(6),
            "In Process at first: looked up until it settles as approved",
        ),
    ] {
        text.push_str(&format!(
            "# {what}\n[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
             amount = \"{amount}\"\nevery = \"1 month\"\nstart = {start}\n\n[subscription.limits]\n\
             min_amount = \"50.00\"\nmax_amount = \"500.00\"\nperiod_days = 28\nmax_date = {end}\n\n"
        ));
    }
    let demo = to.join("sandbox-demo.toml");
    std::fs::write(&demo, text).map_err(|e| format!("{}: {e}", demo.display()))
}

/// The real time between rehearsal sweeps at `speed`: one virtual hour, kept within 20–250 ms.
fn rehearsal_sweep(speed: u32) -> StdDuration {
    let virtual_hour = StdDuration::from_secs(3600) / speed.max(1);
    virtual_hour.clamp(StdDuration::from_millis(20), StdDuration::from_millis(250))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehearsal_sweeps_about_every_virtual_hour_within_bounds() {
        assert_eq!(rehearsal_sweep(1), StdDuration::from_millis(250));
        assert_eq!(rehearsal_sweep(3600 * 4), StdDuration::from_millis(250));
        assert_eq!(rehearsal_sweep(86_400).as_micros(), 41_666);
        assert_eq!(rehearsal_sweep(SANDBOX_SPEED), StdDuration::from_millis(20));
    }

    #[test]
    fn only_an_empty_state_directory_holding_the_database_allows_creating_it() {
        let state = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let db = state.path().join("recurrentd.db");
        let var = |dirs: &[&Path]| std::env::join_paths(dirs.iter().copied()).unwrap();
        // Not under systemd, or the database elsewhere: no.
        assert_eq!(first_start_under_systemd(&db, None), None);
        assert_eq!(
            first_start_under_systemd(&db, Some(&var(&[other.path()]))),
            None
        );
        assert_eq!(
            first_start_under_systemd(&other.path().join("x.db"), Some(&var(&[state.path()]))),
            None,
            "the database is not inside the state directory"
        );
        // The first start: the state directory (one of several) is empty.
        let reason = first_start_under_systemd(&db, Some(&var(&[other.path(), state.path()])))
            .expect("an empty state directory");
        assert!(
            reason.contains("first start under systemd") && reason.contains("was empty"),
            "{reason}"
        );
        // Anything in it (a leftover lock, a WAL of a lost database): no.
        std::fs::write(state.path().join("recurrentd.db-wal"), "").unwrap();
        assert_eq!(
            first_start_under_systemd(&db, Some(&var(&[state.path()]))),
            None
        );
        std::fs::remove_file(state.path().join("recurrentd.db-wal")).unwrap();
        std::fs::create_dir(state.path().join("sub")).unwrap();
        assert_eq!(
            first_start_under_systemd(&db, Some(&var(&[state.path()]))),
            None
        );
    }
}
