//! `recurrentd run`: the long-running daemon around the engine.
//!
//! Start: open the store (the daemon lock), sync the schedule files, reconcile every unresolved
//! attempt. Then tick: each tick syncs nothing and decides nothing by itself — due-ness comes
//! from the database and the clock, so a missed or doubled tick can neither lose nor double a
//! charge. SIGHUP re-reads the schedule files. SIGTERM/SIGINT, or the rehearsal clock passing
//! `until`: stop creating intents, finish what is outstanding within a deadline, exit.
//!
//! Under systemd (`Type=notify`), the [`Notifier`] tells the service manager READY=1 once the
//! store is open, the schedules synced and the unresolved attempts reconciled; a STATUS= line
//! after each tick; RELOADING=1/READY=1 around a SIGHUP reload; STOPPING=1 when stopping; and
//! WATCHDOG=1 from the loop's health path (see [`run`]).

pub mod books;
mod notify;
#[cfg(feature = "postgres")]
mod shared;
mod watch;

use notify::Notifier;
use watch::{Fingerprint, Watch};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Interval;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::billing::Calendar;
use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{Engine, EngineError, Pacer, Policy, TickReport};
use crate::gateway::client::{Client, Settings};
use crate::metrics::{Metrics, MetricsServer};
use crate::store::{Access, DaemonStore, FileOutcome, Store, StoreError, SyncDirError};

/// What wakes the due sweep.
#[derive(Debug, Clone)]
pub enum Sweep {
    /// A 6-field cron expression in UTC, run by tokio-cron-scheduler (production).
    Cron(String),
    /// A fixed real-time interval (rehearsals: the virtual clock decides what is due, and a
    /// virtual minute passes in a few real milliseconds).
    Every(StdDuration),
}

/// How the daemon runs.
pub struct RunOptions {
    pub clock: Arc<dyn Clock>,
    /// When ticks happen.
    pub sweep: Sweep,
    /// Re-read the schedule files when they change (besides SIGHUP).
    pub watch_schedules: bool,
    /// Stop once the clock passes this instant (rehearsals).
    pub until: Option<DateTime<Utc>>,
    /// How long outstanding attempts may take to settle when stopping.
    pub drain_deadline: StdDuration,
    /// Real time between summary lines.
    pub summary_every: StdDuration,
    pub database: PathBuf,
    /// Why the daemon may create the database if there is none (`run --init`, a first start
    /// in an empty systemd state directory, a sandbox run): logged when it does. `None`: a
    /// missing database is refused ([`StoreError::NoDatabase`]).
    pub create: Option<String>,
    /// Consecutive failed ticks after which the daemon gives up ([`DaemonError::TicksFailed`]).
    pub max_failed_ticks: u32,
    /// Deliver the outbox to this webhook (a task of its own beside the engine).
    pub webhook: Option<crate::outbox::Webhook>,
    /// A rehearsal clock's rate (virtual seconds per real second), recorded for `status`;
    /// `None` on the real clock.
    pub rehearsal: Option<u32>,
    /// The registry the daemon counts in (a sandbox run prints it at the end); `None`: one of
    /// its own.
    pub metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("schedules: {0}")]
    Schedules(String),
    #[error("gateway: {0}")]
    Gateway(String),
    #[error("database: {0}")]
    Database(String),
    #[error("configuration error: {0}")]
    Config(String),
    #[error("signals: {0}")]
    Signals(std::io::Error),
    #[error("the sweep scheduler: {0}")]
    Scheduler(String),
    #[error("metrics.listen: cannot listen on {addr}: {error}")]
    Metrics {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "{count} ticks in a row failed (daemon.max_failed_ticks), the last with: {last}; \
         stopping instead of retrying for ever"
    )]
    TicksFailed { count: u32, last: EngineError },
}

impl DaemonError {
    /// The database file is damaged (see [`StoreError::is_damaged`]): restarting cannot help.
    pub fn is_damaged(&self) -> bool {
        match self {
            DaemonError::Store(e) | DaemonError::Engine(EngineError::Store(e)) => e.is_damaged(),
            _ => false,
        }
    }

    /// A second daemon on the same database, or a configuration problem: not worth restarting.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DaemonError::Store(StoreError::Locked { .. })
                | DaemonError::Store(StoreError::TooNew { .. })
                | DaemonError::Store(StoreError::NoDatabase { .. })
                | DaemonError::Gateway(_)
                | DaemonError::Config(_)
                | DaemonError::Metrics { .. }
        )
    }
}

/// Totals since the last summary line.
#[derive(Debug, Default)]
struct Totals {
    ticks: u32,
    report: TickReport,
}

impl Totals {
    fn add(&mut self, r: &TickReport) {
        self.ticks += 1;
        self.report.merge(r);
    }
}

/// What a sync did: the active subscriptions, and whether this instance synced (with several
/// instances, the holder of the schedule lease does).
struct Synced {
    subscriptions: usize,
    here: bool,
}

/// Re-reads the schedule files into the store; problems are logged with their location and the
/// last good version of a broken file stays in force.
async fn sync<S: DaemonStore>(
    engine: &Engine<S>,
    config: &Config,
    clock: &Arc<dyn Clock>,
) -> Result<Synced, DaemonError> {
    let dir = config.schedules.dir.clone();
    let now = clock.now();
    let started = Instant::now();
    tracing::info!(dir = %dir.display(), "syncing the schedule files");
    // One file at a time, unchanged files skipped (see `Store::sync_dir`).
    let summary = engine
        .with_store(move |s| Ok(s.sync_folder(&dir, now)))
        .await?
        .map_err(|e| match e {
            SyncDirError::Dir(message) => DaemonError::Schedules(message),
            SyncDirError::Store(e) => DaemonError::Store(e),
        })?;
    let Some(summary) = summary else {
        // Several instances share the database: the holder of the schedule lease syncs.
        let subscriptions = engine
            .with_store(|s| s.active_subscription_count())
            .await?
            .try_into()
            .unwrap_or(usize::MAX);
        tracing::info!(
            subscriptions,
            "schedules: another instance holds the schedule lease and syncs the folder"
        );
        return Ok(Synced {
            subscriptions,
            here: false,
        });
    };
    for diagnostic in &summary.warnings {
        tracing::warn!("{diagnostic}");
    }
    for diagnostic in summary.diagnostics() {
        tracing::error!("{diagnostic} (the file's last accepted version stays in force)");
    }
    let subscriptions = engine
        .with_store(|s| s.active_subscription_count())
        .await?
        .try_into()
        .unwrap_or(usize::MAX);
    let (mut unchanged, mut applied, mut refused, mut gone, mut missing) = (0, 0, 0, 0, 0);
    let (mut added, mut updated, mut removed) = (0, 0, 0);
    for file in &summary.files {
        match &file.outcome {
            FileOutcome::Unchanged => unchanged += 1,
            FileOutcome::Applied(c) | FileOutcome::Gone(c) => {
                if matches!(file.outcome, FileOutcome::Gone(_)) {
                    gone += 1;
                } else {
                    applied += 1;
                }
                added += c.added.len();
                updated += c.updated.len();
                removed += c.removed.len();
            }
            FileOutcome::Refused { .. } => refused += 1,
            FileOutcome::Missing { held, since, new } => {
                missing += 1;
                let message = "schedule file missing from the folder: its subscriptions are \
                               held (not charged, not removed) until it returns; if it is gone \
                               for good, confirm with `recurrentd remove-file`";
                if *new {
                    tracing::error!(file = %file.file, held = held.len(), "{message}");
                } else {
                    tracing::warn!(file = %file.file, held = held.len(), %since, "{message}");
                }
            }
        }
    }
    tracing::info!(
        subscriptions,
        files_applied = applied,
        files_unchanged = unchanged,
        files_refused = refused,
        files_gone = gone,
        files_missing = missing,
        added,
        updated,
        removed,
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "schedules synced"
    );
    Ok(Synced {
        subscriptions,
        here: true,
    })
}

/// Runs the daemon until a signal or `until`.
///
/// The watchdog (when systemd set `WATCHDOG_USEC`): WATCHDOG=1 after every tick that succeeded,
/// and from a timer at half the watchdog interval that runs inside the loop — also while a long
/// tick is in progress — and pings only after a round-trip to the store succeeded. So a wedged
/// runtime (the timer never fires), a wedged store (a held lock, a hung disk) or a loop that
/// stopped turning all stop the pings, and systemd restarts the daemon; the charge path is
/// crash-safe, so the restart reconciles whatever was in flight.
pub async fn run(
    config: &Config,
    gateway: Settings,
    mut options: RunOptions,
) -> Result<(), DaemonError> {
    match &config.database.postgres {
        None => {}
        #[cfg(feature = "postgres")]
        Some(postgres) => return shared::run(config, gateway, options, postgres).await,
        #[cfg(not(feature = "postgres"))]
        Some(_) => {
            return Err(DaemonError::Config(
                "database.url: this recurrentd was built without PostgreSQL (cargo feature \
                 `postgres`)"
                    .into(),
            ));
        }
    }
    let notifier = Notifier::from_env();
    // The signal handlers first: a SIGTERM during start-up (a long reconciliation) stops the
    // daemon cleanly instead of killing it with the default action.
    let mut signals = Signals::install()?;
    let metrics = options
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(Metrics::new()));
    let startup = start(config, gateway, &options, &notifier, &metrics);
    let (engine, subscriptions, watch, _metrics_server) = tokio::select! {
        started = startup => started?,
        signal = stopped(&mut signals.terminate, &mut signals.interrupt) => {
            tracing::info!("{signal} during start-up: stopping before anything was charged");
            notifier.stopping(&format!("stopping ({signal}) during start-up"));
            return Ok(());
        }
    };

    // The webhook: its own task and store connection, so a slow or failing endpoint never
    // holds up a charge. Stopped after the drain (the drain's outcomes are delivered too).
    let webhook_on = options.webhook.is_some();
    let deliverer = match options.webhook.take() {
        Some(webhook) => Some(
            crate::outbox::Deliverer::start(
                webhook,
                options.database.clone(),
                Arc::clone(&options.clock),
            )
            .map_err(DaemonError::Gateway)?,
        ),
        None => None,
    };
    let books = config.books.enabled.then(|| engine.books_runner());
    let result = run_loop(
        config,
        &options,
        &mut signals,
        &engine,
        books,
        subscriptions,
        watch,
        Reporting {
            notifier: &notifier,
            metrics: &metrics,
            webhook_on,
        },
    )
    .await;
    if let Some(deliverer) = deliverer {
        // What is due goes out for up to two more seconds; the rest at the next start.
        deliverer.stop(StdDuration::from_secs(2)).await;
    }
    result
}

/// Where the loop reports: systemd, and the metrics (gauges refreshed after each good tick).
struct Reporting<'a> {
    notifier: &'a Notifier,
    metrics: &'a Arc<Metrics>,
    /// Whether a webhook consumes the outbox (its backlog is a gauge only then).
    webhook_on: bool,
}

/// The loop of [`run`], once started: ticks, reloads, the watchdog, until a stop.
// The body is the loop as it was inside `run`, unchanged (its `&options` and `&notifier` are
// references to references now).
#[allow(clippy::needless_borrow)]
#[allow(clippy::too_many_arguments)]
async fn run_loop<S: DaemonStore>(
    config: &Config,
    options: &RunOptions,
    signals: &mut Signals,
    engine: &Engine<S>,
    books: Option<crate::engine::BooksRunner>,
    mut subscriptions: usize,
    mut watch: Watch,
    reporting: Reporting<'_>,
) -> Result<(), DaemonError> {
    let Reporting {
        notifier,
        metrics,
        webhook_on,
    } = reporting;
    // The daily books comparison: its own task, never in the way of charging.
    let books_task = books.map(|runner| {
        tokio::spawn(books::daily(
            runner,
            config.billing.timezone,
            config.books.run_after,
        ))
    });
    let mut sweep = Sweeper::start(&options.sweep).await?;
    let mut watch_timer = tokio::time::interval(watch::POLL);
    watch_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = notifier.watchdog_every().map(|every| {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    if let Some(every) = notifier.watchdog_every() {
        tracing::info!(
            ping_every_ms = every.as_millis() as u64,
            "systemd watchdog enabled"
        );
    }
    let mut totals = Totals::default();
    let mut last_summary = Instant::now();
    let mut last_tick: Option<(DateTime<Utc>, TickReport)> = None;
    let mut failed_ticks = FailedTicks::new(options.max_failed_ticks);
    let mut gave_up: Option<EngineError> = None;
    tracing::info!(sweep = %sweep.describe(), "running");
    notifier.ready(&status_line(subscriptions, last_tick.as_ref()));
    let stop_reason = loop {
        tokio::select! {
            _ = sweep.next() => {
                if options.until.is_some_and(|until| options.clock.now() >= until) {
                    tracing::info!("the rehearsal clock reached its end");
                    break "the rehearsal clock reached its end";
                }
                // The tick runs while the watchdog timer keeps being served, a stop signal
                // arriving meanwhile is acknowledged (STOPPING=1) at once, and a reload (SIGHUP,
                // the folder watcher) is applied at once: the planner takes it from its next
                // batch, and every intent is checked against the terms in force just before it
                // leaves. The tick itself is never cut short: its charges finish and record
                // their outcomes — the last of them in the background, so that a slow send
                // never makes the next tick late (the busy set keeps it off their attempts).
                let tick = engine.tick_without_waiting();
                tokio::pin!(tick);
                let mut stop = None;
                let result = loop {
                    tokio::select! {
                        result = &mut tick => break result,
                        _ = next_ping(&mut watchdog) => ping_if_healthy(&engine, &notifier).await,
                        _ = signals.hangup.recv() => {
                            tracing::info!("SIGHUP: re-reading the schedule files (during a tick: in force from its next batch)");
                            reload(&engine, config, &options, &notifier, &mut watch, &mut subscriptions, last_tick.as_ref()).await;
                        }
                        _ = watch_timer.tick(), if options.watch_schedules => {
                            if folder_changed(config, &mut watch).await {
                                tracing::info!(dir = %config.schedules.dir.display(), "a schedule file changed: re-reading the schedule files (during a tick: in force from its next batch)");
                                reload(&engine, config, &options, &notifier, &mut watch, &mut subscriptions, last_tick.as_ref()).await;
                            }
                        }
                        signal = stopped(&mut signals.terminate, &mut signals.interrupt), if stop.is_none() => {
                            stop = Some(signal);
                            engine.stop_creating();
                            notifier.stopping(&format!("stopping ({signal}): finishing the current tick"));
                        }
                    }
                };
                match result {
                    Ok(report) => {
                        failed_ticks.succeeded();
                        notifier.watchdog();
                        totals.add(&report);
                        last_tick = Some((options.clock.now(), report));
                        if let Err(e) = tick_succeeded(&engine, metrics, &options.clock, webhook_on).await {
                            // Another process registered under this instance's name: it owns
                            // this instance's claims now; this one must not go on.
                            tracing::error!(error = %e, "stopping: this instance was taken over");
                            gave_up = Some(EngineError::Store(e));
                        }
                    }
                    // A database or task failure: logged, and the next tick tries again (the
                    // state in the database is always consistent) — but not for ever: after
                    // `daemon.max_failed_ticks` in a row the daemon stops with an error.
                    Err(e) => {
                        let in_a_row = failed_ticks.failed();
                        if in_a_row >= failed_ticks.max {
                            tracing::error!(
                                error = %e,
                                failed_in_a_row = in_a_row,
                                "tick failed; too many in a row (daemon.max_failed_ticks): stopping"
                            );
                            gave_up = Some(e);
                        } else {
                            tracing::error!(
                                error = %e,
                                failed_in_a_row = in_a_row,
                                max_failed_ticks = failed_ticks.max,
                                "tick failed; the next tick tries again"
                            );
                        }
                    }
                }
                if last_summary.elapsed() >= options.summary_every {
                    log_summary(&totals, options.clock.now());
                    totals = Totals::default();
                    last_summary = Instant::now();
                }
                if gave_up.is_some() {
                    break "too many failed ticks";
                }
                if let Some(signal) = stop {
                    tracing::info!("{signal}: stopping");
                    break signal;
                }
                notifier.status(&status_line(subscriptions, last_tick.as_ref()));
            }
            _ = next_ping(&mut watchdog) => ping_if_healthy(&engine, &notifier).await,
            _ = signals.hangup.recv() => {
                tracing::info!("SIGHUP: re-reading the schedule files");
                reload(&engine, config, &options, &notifier, &mut watch, &mut subscriptions, last_tick.as_ref()).await;
            }
            _ = watch_timer.tick(), if options.watch_schedules => {
                if folder_changed(config, &mut watch).await {
                    tracing::info!(dir = %config.schedules.dir.display(), "a schedule file changed: re-reading the schedule files");
                    reload(&engine, config, &options, &notifier, &mut watch, &mut subscriptions, last_tick.as_ref()).await;
                }
            }
            signal = stopped(&mut signals.terminate, &mut signals.interrupt) => { tracing::info!("{signal}: stopping"); break signal; }
        }
    };
    sweep.shutdown().await;
    if let Some(task) = books_task {
        // Cut between requests or writes: a run is recorded whole or not at all, and the day
        // is compared again after the restart.
        task.abort();
    }
    // The last sends of the last tick finish and record their outcomes first.
    let trailing = engine.finish_in_flight().await;
    if trailing != TickReport::default() {
        totals.report.merge(&trailing);
    }
    let taken_over = |e: &EngineError| matches!(e, EngineError::Store(error) if error.must_stop());
    if let Some(EngineError::Store(error)) = gave_up.take_if(|e| taken_over(e)) {
        // Taken over: no drain (the other process owns this instance's claims now).
        engine.stop_creating();
        notifier.stopping("stopping: this instance was taken over by another process");
        return Err(DaemonError::Store(error));
    }
    if let Some(last) = gave_up {
        // No drain: with the store failing, nothing more is sent (the next start reconciles
        // whatever is outstanding). The non-zero exit makes systemd restart the daemon, and
        // shows the failure to the operator.
        engine.stop_creating();
        notifier.stopping(&format!(
            "stopping: {} failed ticks in a row",
            failed_ticks.count
        ));
        if totals.ticks > 0 {
            log_summary(&totals, options.clock.now());
        }
        return Err(DaemonError::TicksFailed {
            count: failed_ticks.count,
            last,
        });
    }
    notifier.stopping(&format!(
        "stopping ({stop_reason}): settling outstanding attempts (up to {} s)",
        options.drain_deadline.as_secs()
    ));
    if totals.ticks > 0 {
        // What the last summary line did not cover yet.
        log_summary(&totals, options.clock.now());
    }
    drain(&engine, &options).await;
    Ok(())
}

/// Consecutive failed ticks: a storage error that keeps failing stops the daemon instead of
/// being retried silently for ever (R29: no commit retried in a loop).
#[derive(Debug)]
struct FailedTicks {
    /// How many in a row stop the daemon (at least 1).
    max: u32,
    /// Failed ticks since the last one that succeeded.
    count: u32,
}

impl FailedTicks {
    fn new(max: u32) -> FailedTicks {
        FailedTicks {
            max: max.max(1),
            count: 0,
        }
    }

    /// A tick succeeded: the count starts again.
    fn succeeded(&mut self) {
        self.count = 0;
    }

    /// A tick failed: how many have failed in a row now.
    fn failed(&mut self) -> u32 {
        self.count = self.count.saturating_add(1);
        self.count
    }
}

/// Start-up: open the store (the daemon lock), sync the schedule files, reconcile every
/// unresolved attempt. Nothing is charged before this has finished.
async fn start(
    config: &Config,
    gateway: Settings,
    options: &RunOptions,
    notifier: &Notifier,
    metrics: &Arc<Metrics>,
) -> Result<(Engine, usize, Watch, Option<MetricsServer>), DaemonError> {
    notifier.status("opening the store");
    let database = options.database.clone();
    let create = options.create.is_some();
    // The daemon's open checks the file (`PRAGMA quick_check`) before anything else.
    let store = tokio::task::spawn_blocking(move || {
        if create {
            Store::open_or_create(&database)
        } else {
            Store::open(&database, Access::Daemon)
        }
    })
    .await
    .map_err(|e| DaemonError::Schedules(e.to_string()))??;
    if store.created() {
        tracing::warn!(
            database = %options.database.display(),
            order_prefix = %store.order_prefix()?,
            reason = options.create.as_deref().unwrap_or_default(),
            "created a new, empty database: it knows of no past charge"
        );
    }
    let client = Client::new(gateway)
        .map_err(DaemonError::Gateway)?
        .with_metrics(Arc::clone(metrics));
    let engine = Engine::new(
        store,
        client,
        Arc::clone(&options.clock),
        Calendar::from(&config.billing),
        Policy::from(&config.engine),
        Pacer::new(
            config.gateway.max_in_flight,
            config.gateway.requests_per_second,
        ),
    )?
    .with_metrics(Arc::clone(metrics));
    tracing::info!(database = %options.database.display(), "store open");
    // Who holds the lock, for `status` (a separate process): pid, version, start, clock.
    let rehearsal = options.rehearsal;
    engine
        .with_store(move |s| {
            s.record_daemon_start(
                std::process::id(),
                env!("CARGO_PKG_VERSION"),
                Utc::now(),
                rehearsal,
            )
        })
        .await?;
    let server = match config.metrics.listen {
        Some(addr) => {
            let server = MetricsServer::start(addr, Arc::clone(metrics))
                .await
                .map_err(|error| DaemonError::Metrics { addr, error })?;
            tracing::info!(listen = %server.local_addr(), "serving metrics at /metrics");
            Some(server)
        }
        None => None,
    };
    notifier.status("syncing the schedule files");
    let seen = fingerprint(config).await;
    let subscriptions = sync(&engine, config, &options.clock).await?.subscriptions;
    notifier.status("reconciling unresolved attempts with the gateway");
    let reconciled = engine.reconcile().await?;
    tracing::info!(
        checked = reconciled.checked,
        approved = reconciled.approved,
        declined = reconciled.declined,
        still_unknown = reconciled.unknown,
        "reconciled unresolved attempts before charging anything"
    );
    refresh_gauges(&engine, metrics, &options.clock, options.webhook.is_some()).await;
    Ok((engine, subscriptions, Watch::new(seen), server))
}

/// After a tick that finished without error: its time (real and the daemon's clock) recorded
/// for `status`, and the metrics' gauges refreshed. A failure here is logged, never fatal.
///
/// Returns the error that means this instance must stop (with several instances: another
/// process registered under its name).
async fn tick_succeeded<S: DaemonStore>(
    engine: &Engine<S>,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    webhook: bool,
) -> Result<(), StoreError> {
    let real = Utc::now();
    let at = clock.now();
    metrics.tick_succeeded(real);
    match engine.with_store(move |s| s.record_tick(real, at)).await {
        Err(EngineError::Store(error)) if error.must_stop() => return Err(error),
        Err(error) => tracing::warn!(%error, "cannot record the tick for `status`"),
        Ok(()) => {}
    }
    refresh_gauges(engine, metrics, clock, webhook).await;
    Ok(())
}

/// The metrics' gauges, from the store; the outbox's backlog only when a webhook delivers it
/// (without one, nothing consumes the outbox but `recurrentd events`, and 0 is shown).
async fn refresh_gauges<S: DaemonStore>(
    engine: &Engine<S>,
    metrics: &Metrics,
    clock: &Arc<dyn Clock>,
    webhook: bool,
) {
    let now = clock.now();
    match engine.with_store(move |s| s.gauge_figures(now)).await {
        Ok(Some(gauges)) => metrics.set_gauges(&gauges),
        Ok(None) => return,
        Err(error) => tracing::warn!(%error, "cannot read the figures for the metrics"),
    }
    if !webhook {
        metrics.set_outbox(0, 0);
        return;
    }
    match engine.with_store(|s| s.outbox_figures()).await {
        Ok(None) => metrics.set_outbox(0, 0),
        Ok(Some(backlog)) => {
            let oldest = backlog
                .oldest_undelivered_at
                .map_or(0, |at| (now - at).num_seconds());
            metrics.set_outbox(backlog.undelivered, oldest);
        }
        Err(error) => tracing::warn!(%error, "cannot read the outbox backlog for the metrics"),
    }
}

/// Whether the watcher sees the schedule folder changed since it was last read.
async fn folder_changed(config: &Config, watch: &mut Watch) -> bool {
    let dir = config.schedules.dir.clone();
    let now = tokio::task::spawn_blocking(move || Fingerprint::of(&dir))
        .await
        .unwrap_or_default();
    watch.poll(now)
}

/// The schedule folder as it looks now (taken before reading it: see [`Watch::reloaded`]).
async fn fingerprint(config: &Config) -> Fingerprint {
    let dir = config.schedules.dir.clone();
    tokio::task::spawn_blocking(move || Fingerprint::of(&dir))
        .await
        .unwrap_or_default()
}

/// Re-reads the schedule files (SIGHUP or a change seen by the watcher), telling systemd.
async fn reload<S: DaemonStore>(
    engine: &Engine<S>,
    config: &Config,
    options: &RunOptions,
    notifier: &Notifier,
    watch: &mut Watch,
    subscriptions: &mut usize,
    last_tick: Option<&(DateTime<Utc>, TickReport)>,
) {
    notifier.reloading();
    let seen = fingerprint(config).await;
    match sync(engine, config, &options.clock).await {
        Ok(Synced {
            subscriptions: active,
            here: true,
        }) => {
            *subscriptions = active;
            watch.reloaded(seen);
        }
        // Another instance holds the schedule lease: it syncs. Not marked as read, so this one
        // tries again at the watcher's next poll and syncs itself if that instance is gone.
        Ok(Synced {
            subscriptions: active,
            here: false,
        }) => {
            *subscriptions = active;
            watch.failed();
        }
        // Not marked as read: the watcher tries again at its next poll (a cancellation in the
        // file must not wait for the next edit).
        Err(e) => {
            tracing::error!(
                error = %e,
                "schedule reload failed; the previous schedules stay in force and the reload is \
                 tried again in {} s",
                watch::RETRY.as_secs()
            );
            watch.failed();
        }
    }
    notifier.ready(&status_line(*subscriptions, last_tick));
}

/// The signals the daemon acts on, installed once at start.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        let install = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Signals {
            hangup: install(SignalKind::hangup())?,
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
        })
    }
}

/// The next stop signal's name (the two signals passed apart from SIGHUP, so that a loop can
/// wait for both kinds at once).
async fn stopped(terminate: &mut Signal, interrupt: &mut Signal) -> &'static str {
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    }
}

/// Wakes the due sweep: tokio-cron-scheduler in production, an interval in rehearsals.
enum Sweeper {
    Cron {
        scheduler: JobScheduler,
        wake: Arc<tokio::sync::Notify>,
        expression: String,
    },
    Every(Interval, StdDuration),
}

impl Sweeper {
    async fn start(sweep: &Sweep) -> Result<Sweeper, DaemonError> {
        match sweep {
            Sweep::Every(every) => {
                let mut interval = tokio::time::interval(*every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Ok(Sweeper::Every(interval, *every))
            }
            Sweep::Cron(expression) => {
                let failed = |e: tokio_cron_scheduler::JobSchedulerError| {
                    DaemonError::Scheduler(format!("{expression:?}: {e}"))
                };
                let scheduler = JobScheduler::new().await.map_err(failed)?;
                let wake = Arc::new(tokio::sync::Notify::new());
                let waker = Arc::clone(&wake);
                // The job only wakes the loop: the sweep itself runs there, one at a time. A
                // wake-up during a running sweep is kept (one permit) and runs right after it.
                let job = Job::new_async(expression.as_str(), move |_, _| {
                    let waker = Arc::clone(&waker);
                    Box::pin(async move { waker.notify_one() })
                })
                .map_err(failed)?;
                scheduler.add(job).await.map_err(failed)?;
                scheduler.start().await.map_err(failed)?;
                // The first sweep at once: what fell due while the daemon was down is not left
                // waiting for the first cron occurrence.
                wake.notify_one();
                Ok(Sweeper::Cron {
                    scheduler,
                    wake,
                    expression: expression.clone(),
                })
            }
        }
    }

    async fn next(&mut self) {
        match self {
            Sweeper::Cron { wake, .. } => wake.notified().await,
            Sweeper::Every(interval, _) => {
                interval.tick().await;
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Sweeper::Cron { expression, .. } => format!("cron {expression:?} (UTC)"),
            Sweeper::Every(_, every) => format!("every {} ms (rehearsal)", every.as_millis()),
        }
    }

    async fn shutdown(self) {
        if let Sweeper::Cron { mut scheduler, .. } = self
            && let Err(error) = scheduler.shutdown().await
        {
            tracing::warn!(%error, "stopping the sweep scheduler");
        }
    }
}

/// Waits for the next watchdog ping, or forever when there is no watchdog.
async fn next_ping(watchdog: &mut Option<Interval>) {
    match watchdog {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// WATCHDOG=1, but only if the store answers: the health path goes through the same lock and
/// blocking pool the engine uses.
async fn ping_if_healthy<S: DaemonStore>(engine: &Engine<S>, notifier: &Notifier) {
    match engine.with_store(|s| s.health()).await {
        Ok(_) => notifier.watchdog(),
        Err(error) => tracing::warn!(%error, "health check failed; no watchdog ping"),
    }
}

/// The one-line STATUS= shown by `systemctl status`.
fn status_line(subscriptions: usize, last_tick: Option<&(DateTime<Utc>, TickReport)>) -> String {
    let mut line = format!("running: {subscriptions} active subscription(s)");
    match last_tick {
        None => line.push_str("; no tick yet"),
        Some((at, r)) => {
            line.push_str(&format!(
                "; last tick {}: {} new charge(s), {} approved, {} declined, {} unknown",
                at.format("%Y-%m-%d %H:%M UTC"),
                r.intents,
                r.approved,
                r.declined,
                r.unknown
            ));
            if r.breaker_open {
                line.push_str("; CIRCUIT BREAKER OPEN");
            }
        }
    }
    line
}

/// Real time between looks at what is outstanding while stopping.
const DRAIN_POLL: StdDuration = StdDuration::from_millis(250);

/// Settles what is outstanding (status queries, resends) without creating intents, until
/// nothing is left or the deadline passes; the reconciler picks up the rest at the next start.
async fn drain<S: DaemonStore>(engine: &Engine<S>, options: &RunOptions) {
    if S::SHARED {
        // Several instances: what is outstanding may be another's. One pass over what is due
        // (within the drain deadline), then this instance lets go of its claims, so the others
        // take them over at once.
        match tokio::time::timeout(options.drain_deadline, engine.work_due()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "settling outstanding attempts failed"),
            Err(_) => tracing::warn!(
                "the drain deadline passed; what is left is released to the other instances"
            ),
        }
        match engine.with_store(|s| s.release_claims()).await {
            Ok(()) => tracing::info!("claims released to the other instances; stopped"),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot release this instance's claims: the others take them over when its \
                 leases expire"
            ),
        }
        return;
    }
    let started = Instant::now();
    loop {
        let outstanding = match engine.outstanding().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot read outstanding attempts");
                return;
            }
        };
        if outstanding == 0 {
            tracing::info!("nothing outstanding; stopped");
            return;
        }
        if started.elapsed() >= options.drain_deadline {
            tracing::warn!(
                outstanding,
                "stopping with attempts unresolved; they are reconciled at the next start"
            );
            return;
        }
        if let Err(e) = engine.work_due().await {
            tracing::error!(error = %e, "settling outstanding attempts failed");
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

fn log_summary(totals: &Totals, now: DateTime<Utc>) {
    let r = &totals.report;
    tracing::info!(
        clock = %now.to_rfc3339(),
        ticks = totals.ticks,
        intents = r.intents,
        approved = r.approved,
        declined = r.declined,
        unknown = r.unknown,
        not_sent = r.not_sent,
        quarantined = r.quarantined,
        settled = r.settled,
        held = r.held,
        breaker_open = r.breaker_open,
        "summary"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_ticks_count_in_a_row_and_a_success_starts_again() {
        let mut failed = FailedTicks::new(3);
        assert_eq!(failed.failed(), 1);
        assert_eq!(failed.failed(), 2);
        failed.succeeded();
        assert_eq!(failed.failed(), 1);
        assert_eq!(failed.failed(), 2);
        assert_eq!(failed.failed(), 3, "the third in a row stops the daemon");
        // A limit of 0 would never stop it: at least one.
        assert_eq!(FailedTicks::new(0).max, 1);
    }
}
