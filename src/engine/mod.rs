//! The charge engine: due sweep → charge intent → gateway → verified outcome → ledger.
//!
//! One [`Engine::tick`] at the engine's clock's "now":
//! 1. **Reconcile and resend.** Attempts whose next check is due are worked on: unknown ones (and
//!    intents found without an answer, e.g. after a crash) are looked up with a status query,
//!    never sent again; not-sent ones are sent again under their own OrderNumber.
//! 2. **Plan.** Unless the circuit breaker is open, every subscription without an unresolved
//!    attempt or an operator flag is planned in its own write transaction: periods `billing::decide`
//!    settles are recorded (skipped / blocked, with the reason), and at most one new intent is
//!    committed — its limits checked against the ledger inside that transaction.
//! 3. **Send.** Each new intent is checked against the limits again just before it leaves (a
//!    queued intent that has become too early is held), sent, and its claim confirmed by a status
//!    query; the verified outcome is committed with its ledger event.
//!
//! The rules that keep a customer from being charged twice: an OrderNumber is committed before
//! its request leaves; a request is sent again only after it provably never left; a new attempt
//! (new OrderNumber) starts only after the previous one is known not to have charged — an
//! explicit, verified decline, or "not found" repeated after the settle window; anything else is
//! resolved by asking the gateway. No network call happens inside a database transaction, and
//! the database is only touched from blocking threads.

mod adhoc;
mod conclusion;
mod pacer;
mod planning;
mod progress;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::billing::{self, BlockReason, Calendar};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::gateway::client::{ChargeRequest, Client, StatusAnswer, StatusQuery};
use crate::gateway::outcome::{DeclineKind, Outcome};
use crate::metrics::Metrics;
use crate::store::{
    AttemptChange, AttemptState, ChargeChange, ChargeState, ChargeStore, Event, Flag, Job,
    OutcomeWrite, PlanTransaction, Purpose, Store, StoreError, event, flag,
};

pub use adhoc::{
    AdhocError, AdhocRequest, CancelError, CancelRequest, Queued, cancel_adhoc, queue_adhoc,
};
pub use pacer::Pacer;

use conclusion::{Decided, Notice};
use progress::Progress;

/// Why a tick could not finish. Gateway trouble is never an error here: it is an outcome.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("a database task failed: {0}")]
    Task(String),
}

/// What one tick did, for the periodic summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub intents: u32,
    pub approved: u32,
    pub declined: u32,
    pub unknown: u32,
    pub not_sent: u32,
    pub quarantined: u32,
    pub settled: u32,
    pub checked: u32,
    pub held: u32,
    pub breaker_open: bool,
    /// No planning: the clock jumped (or would skip too many periods) and an operator has not
    /// acknowledged it yet.
    pub clock_held: bool,
}

impl TickReport {
    /// Adds another report's counts (a flag is kept if either has it).
    pub fn merge(&mut self, other: &TickReport) {
        self.intents += other.intents;
        self.approved += other.approved;
        self.declined += other.declined;
        self.unknown += other.unknown;
        self.not_sent += other.not_sent;
        self.quarantined += other.quarantined;
        self.settled += other.settled;
        self.checked += other.checked;
        self.held += other.held;
        self.breaker_open |= other.breaker_open;
        self.clock_held |= other.clock_held;
    }

    fn add(&mut self, step: Step) {
        match step {
            Step::Approved => self.approved += 1,
            Step::Declined => self.declined += 1,
            Step::Unknown => self.unknown += 1,
            Step::NotSent => self.not_sent += 1,
            Step::Quarantined => self.quarantined += 1,
            Step::Held => self.held += 1,
            Step::Other => {}
        }
    }
}

/// What one piece of work ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Approved,
    Declined,
    Unknown,
    NotSent,
    Quarantined,
    Held,
    Other,
}

/// Retry and wait policy (from `[engine]` config).
#[derive(Debug, Clone)]
pub struct Policy {
    pub settle: Duration,
    pub park_after: Duration,
    pub dunning_days: Vec<u32>,
    pub max_attempts_per_30_days: u32,
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    /// See `EngineConfig::max_skipped_periods`.
    pub max_skipped_periods: u32,
    /// An ad-hoc charge not sent this long after it was requested is closed as failed.
    pub adhoc_max_age: Duration,
}

impl From<&EngineConfig> for Policy {
    fn from(c: &EngineConfig) -> Policy {
        Policy {
            settle: Duration::minutes(i64::from(c.settle_minutes)),
            park_after: Duration::hours(i64::from(c.park_after_hours)),
            dunning_days: c.dunning_days.clone(),
            max_attempts_per_30_days: c.max_attempts_per_30_days,
            breaker_failures: c.breaker_failures,
            breaker_window: Duration::minutes(i64::from(c.breaker_window_minutes)),
            max_skipped_periods: c.max_skipped_periods,
            adhoc_max_age: Duration::hours(i64::from(c.adhoc_max_age_hours)),
        }
    }
}

/// The engine, over any backend of the charge path's store boundary (SQLite by default). One
/// tick at a time; the work inside a tick runs concurrently.
pub struct Engine<S: ChargeStore = Store> {
    inner: Arc<Inner<S>>,
    /// Ticks, reconciliation and draining never overlap.
    gate: tokio::sync::Mutex<()>,
}

/// The engine's shared parts, held by every task it spawns.
struct Inner<S> {
    store: Arc<Mutex<S>>,
    client: Client,
    clock: Arc<dyn Clock>,
    calendar: Calendar,
    policy: Policy,
    pacer: Pacer,
    prefix: String,
    /// Attempts some task is working on right now (one task per attempt).
    busy: Mutex<HashSet<i64>>,
    /// Outcomes waiting for the next group commit (see `Inner::apply`).
    outcomes: Arc<Mutex<Vec<QueuedOutcome>>>,
    /// Set when the daemon is stopping: no new intent is planned from then on.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The last sends of earlier ticks that did not wait for them
    /// ([`Engine::tick_without_waiting`]); their steps go into a later tick's report.
    trailing: Mutex<Vec<tokio::task::JoinHandle<Vec<Step>>>>,
    /// The clock's instant and the monotonic instant at the previous sweep (clock jumps).
    last_sweep: Mutex<Option<(DateTime<Utc>, std::time::Instant)>>,
    /// Where charge outcomes and pickup delays are counted (the daemon's), if anywhere.
    metrics: Option<Arc<Metrics>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the books comparison with the engine's client and store, from any task.
pub struct BooksRunner {
    inner: Arc<Inner<Store>>,
}

impl BooksRunner {
    /// See [`Engine::books`].
    pub async fn run(
        &self,
        date: chrono::NaiveDate,
    ) -> Result<crate::books::BooksReport, crate::books::BooksError> {
        crate::books::run(
            &self.inner.client,
            Arc::clone(&self.inner.store),
            date,
            self.inner.calendar.timezone,
            self.inner.clock.now(),
        )
        .await
    }

    /// Runs `f` with the store on a blocking thread.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.db(f).await
    }
}

/// The OrderNumber of an attempt: the database's random prefix, the subscription, the period and
/// the attempt. ASCII, at most 8 + 1 + 40 + 1 + 10 + 1 + 10 characters.
pub fn order_number(prefix: &str, subscription: &str, period: u32, attempt: u32) -> String {
    format!("{prefix}-{subscription}-{period}-{attempt}")
}

/// The OrderNumber of an attempt at an ad-hoc charge: `x` and the charge's row id in place of
/// the period (the operator's reference is free text, so it is not put on the wire).
pub fn adhoc_order_number(
    prefix: &str,
    subscription: &str,
    charge_id: i64,
    attempt: u32,
) -> String {
    format!("{prefix}-{subscription}-x{charge_id}-{attempt}")
}

/// A stable number in 0..1000 from a string and a counter: jitter without a random source, so a
/// replayed scenario behaves the same.
fn per_mille(key: &str, n: u32) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(n.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % 1000) as i64
}

/// `base × 2^n`, capped, then jittered to 80–120 %.
fn backoff(base: Duration, cap: Duration, n: u32, key: &str) -> Duration {
    let factor = 1i32 << n.min(20);
    let raw = base.checked_mul(factor).unwrap_or(cap).min(cap);
    Duration::milliseconds(raw.num_milliseconds() * (800 + per_mille(key, n) * 400 / 1000) / 1000)
}

const STATUS_BASE: Duration = Duration::minutes(1);
const STATUS_CAP: Duration = Duration::hours(1);
const PARKED_EVERY: Duration = Duration::hours(6);
const RESEND_BASE: Duration = Duration::minutes(5);
const RESEND_CAP: Duration = Duration::hours(6);
/// How long all sends pause after a rate-limit answer without `Retry-After`.
const RATE_PAUSE: StdDuration = StdDuration::from_secs(30);
/// How far the clock may run ahead of monotonic time between two sweeps before it counts as a
/// jump (a VM paused for a while is not one).
const CLOCK_AHEAD: Duration = Duration::hours(6);
/// How far it may fall behind (NTP steps are seconds).
const CLOCK_BEHIND: Duration = Duration::minutes(5);
/// The longest pause a gateway's `Retry-After` can impose.
const MAX_PAUSE: StdDuration = StdDuration::from_secs(600);

impl Engine<Store> {
    pub fn new(
        store: Store,
        client: Client,
        clock: Arc<dyn Clock>,
        calendar: Calendar,
        policy: Policy,
        pacer: Pacer,
    ) -> Result<Engine, EngineError> {
        let prefix = store.order_prefix()?;
        let mut store = store;
        // The due sweep's index is computed with this calendar from now on.
        store.use_calendar(&calendar)?;
        Ok(Engine::with_backend(
            store, prefix, client, clock, calendar, policy, pacer,
        ))
    }

    /// Compares the gateway's books for a local date (in the billing time zone) with the ledger
    /// and records the findings (`crate::books`). Runs beside the ticks, without their gate:
    /// the store is held only for short reads and writes, never across a request.
    pub async fn books(
        &self,
        date: chrono::NaiveDate,
    ) -> Result<crate::books::BooksReport, crate::books::BooksError> {
        self.books_runner().run(date).await
    }

    /// A handle that runs [`Engine::books`] from a task of its own (the daemon's daily sweep).
    pub fn books_runner(&self) -> BooksRunner {
        BooksRunner {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: ChargeStore + 'static> Engine<S> {
    /// An engine over any backend of the store boundary; `prefix` is the database's
    /// order-number prefix.
    pub fn with_backend(
        store: S,
        prefix: String,
        client: Client,
        clock: Arc<dyn Clock>,
        calendar: Calendar,
        policy: Policy,
        pacer: Pacer,
    ) -> Engine<S> {
        Engine {
            inner: Arc::new(Inner {
                store: Arc::new(Mutex::new(store)),
                client,
                clock,
                calendar,
                policy,
                pacer,
                prefix,
                busy: Mutex::new(HashSet::new()),
                outcomes: Arc::new(Mutex::new(Vec::new())),
                stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                trailing: Mutex::new(Vec::new()),
                last_sweep: Mutex::new(None),
                metrics: None,
            }),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts charge outcomes and pickup delays in `metrics` (call before the first tick).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Engine<S> {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.metrics = Some(metrics);
        }
        self
    }

    /// Runs `f` with the store on a blocking thread, for callers (the daemon, tests) that need
    /// it between ticks.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.db(f).await
    }

    /// Looks up every unresolved attempt now, whenever its next check was due. Run at start,
    /// before the first tick creates anything.
    pub async fn reconcile(&self) -> Result<TickReport, EngineError> {
        let _gate = self.gate.lock().await;
        let jobs = self.inner.db(|s| s.claim_unresolved_attempts()).await?;
        let checks: Vec<Job> = jobs
            .into_iter()
            .filter(|job| job.state != AttemptState::NotSent)
            .collect();
        let mut report = TickReport {
            checked: checks.len() as u32,
            ..TickReport::default()
        };
        for step in Arc::clone(&self.inner).run_all(checks, false).await? {
            report.add(step);
        }
        Ok(report)
    }

    /// Works on the attempts that are due (status queries, resends) without creating any new
    /// intent: what a stopping daemon does with what is outstanding.
    pub async fn work_due(&self) -> Result<TickReport, EngineError> {
        let _gate = self.gate.lock().await;
        self.work_due_unlocked().await
    }

    async fn work_due_unlocked(&self) -> Result<TickReport, EngineError> {
        let inner = &self.inner;
        let mut report = TickReport::default();
        let now = inner.clock.now();
        let due = inner.db(move |s| s.claim_due_attempts(now)).await?;
        report.checked = due.len() as u32;
        for step in Arc::clone(inner).run_all(due, false).await? {
            report.add(step);
        }
        Ok(report)
    }

    /// Stops planning new intents, also in the middle of a tick (a stop signal): what is already
    /// committed or in flight finishes.
    pub fn stop_creating(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many attempts are still unresolved.
    pub async fn outstanding(&self) -> Result<usize, EngineError> {
        self.inner.db(|s| s.count_unresolved()).await
    }

    /// One sweep at the clock's now (see the module documentation), returning once every
    /// charge it started has its outcome recorded.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let mut report = self.sweep(true).await?;
        report.merge(&self.finish_in_flight().await);
        Ok(report)
    }

    /// One sweep that returns once its last intents are handed to their tasks, without waiting
    /// for the slowest sends (the daemon's tick: the next tick is never late because of a hung
    /// request). The busy set keeps a later tick off the attempts still being worked on; their
    /// steps are counted in a later tick's report, or by [`Engine::finish_in_flight`].
    pub async fn tick_without_waiting(&self) -> Result<TickReport, EngineError> {
        self.sweep(false).await
    }

    /// Waits for the sends that earlier ticks left running (before stopping), and what they
    /// did.
    pub async fn finish_in_flight(&self) -> TickReport {
        let handles = std::mem::take(&mut *lock(&self.inner.trailing));
        let mut report = TickReport::default();
        for handle in handles {
            report.merge(&trailing_steps(handle.await));
        }
        report
    }

    /// The steps of the trailing sends that have finished since the last look.
    async fn finished_trailing(&self) -> TickReport {
        let finished: Vec<_> = {
            let mut trailing = lock(&self.inner.trailing);
            let (finished, running) = trailing.drain(..).partition(|h| h.is_finished());
            *trailing = running;
            finished
        };
        let mut report = TickReport::default();
        for handle in finished {
            // Finished: awaiting it does not wait.
            report.merge(&trailing_steps(handle.await));
        }
        report
    }

    /// Checks the clock against the monotonic time since the previous sweep, and against the
    /// last sweep the store recorded; a jump (forward more than `CLOCK_AHEAD`, back more than
    /// `CLOCK_BEHIND`, both scaled by a rehearsal's rate) holds new charges, with a ledger event,
    /// until an operator acknowledges the clock. Returns the hold, if any, and the previous
    /// sweep's instant (for the cap on skipped periods).
    async fn check_clock(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Option<String>, Option<DateTime<Utc>>), EngineError> {
        let inner = &self.inner;
        let previous = lock(&inner.last_sweep).replace((now, std::time::Instant::now()));
        let (hold, last) = inner
            .db(|s| Ok((s.clock_hold_reason()?, s.last_planned_sweep()?)))
            .await?;
        if hold.is_some() {
            // Held: the next comparison starts after the operator's acknowledgement, from the
            // clock as it reads then.
            *lock(&inner.last_sweep) = None;
            return Ok((hold, last));
        }
        let mut jump = None;
        if let (Some((then, at)), Some(rate)) = (previous, inner.clock.rate()) {
            let real = Duration::from_std(at.elapsed()).unwrap_or(Duration::MAX);
            let expected = real.checked_mul(rate.min(i32::MAX as u32) as i32);
            let moved = now - then;
            let rate = rate.min(i32::MAX as u32) as i32;
            if let Some(expected) = expected {
                let drift = moved - expected;
                let ahead = CLOCK_AHEAD.checked_mul(rate).unwrap_or(Duration::MAX);
                let behind = CLOCK_BEHIND.checked_mul(rate).unwrap_or(Duration::MAX);
                if drift > ahead || drift < -behind {
                    jump = Some(format!(
                        "the clock jumped {} by {} s between two sweeps (it moved {} s while {} s \
                         of monotonic time passed{})",
                        if drift > Duration::zero() {
                            "forward"
                        } else {
                            "back"
                        },
                        drift.num_seconds().abs(),
                        moved.num_seconds(),
                        real.num_seconds(),
                        if rate > 1 {
                            format!(", at {rate}x")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        // Against the store's last sweep only where this daemon is the only one sweeping: with
        // several instances that sweep is any instance's, on another host's clock, and a few
        // minutes of skew between hosts must not stop every instance. Each still checks its
        // own clock against monotonic time above.
        if jump.is_none()
            && !S::SHARED
            && let Some(last) = last.filter(|last| now < *last - CLOCK_BEHIND)
        {
            jump = Some(format!(
                "the clock reads {}, before the last sweep at {}: it went back",
                now.to_rfc3339(),
                last.to_rfc3339()
            ));
        }
        let Some(reason) = jump else {
            return Ok((None, last));
        };
        *lock(&inner.last_sweep) = None;
        let held = reason.clone();
        inner.db(move |s| s.hold_clock(&held, now)).await?;
        Ok((Some(reason), last))
    }

    async fn sweep(&self, wait: bool) -> Result<TickReport, EngineError> {
        let _gate = self.gate.lock().await;
        let inner = &self.inner;
        // 1. Reconcile and resend.
        let mut report = self.work_due_unlocked().await?;
        report.merge(&self.finished_trailing().await);

        // 2. Plan.
        if let Some(reason) = inner.db(|s| s.breaker_reason()).await? {
            report.breaker_open = true;
            tracing::warn!(%reason, "circuit breaker open: no new charges until an operator clears it");
            return Ok(report);
        }
        let now = inner.clock.now();
        let (held, since) = self.check_clock(now).await?;
        if let Some(reason) = held {
            report.clock_held = true;
            tracing::error!(
                %reason,
                "clock hold: no new charges until an operator checks the clock and runs \
                 `recurrentd clock ack --reason ...`"
            );
            return Ok(report);
        }
        // 2 and 3, pipelined: intents are planned in small batches, each committed before it
        // is handed over, and sent while the next batch is planned. At most about two batches
        // wait to be sent (the planner blocks on the channel), so what is committed but not
        // yet sent stays small, as do the intents a crash would leave to be looked up.
        let calendar = inner.calendar;
        let policy = inner.policy.clone();
        let prefix = inner.prefix.clone();
        let stopping = Arc::clone(&inner.stopping);
        let store = Arc::clone(&inner.store);
        let metrics = inner.metrics.clone();
        let batch = inner.pacer.max_in_flight().clamp(8, 64);
        let (ready, mut batches) = tokio::sync::mpsc::channel::<Vec<Job>>(1);
        let planner = tokio::task::spawn_blocking(move || {
            plan_all(
                &store,
                now,
                since,
                &calendar,
                &policy,
                &prefix,
                &stopping,
                batch,
                metrics.as_deref(),
                |jobs| ready.blocking_send(jobs).is_ok(),
            )
        });
        let mut tasks = tokio::task::JoinSet::new();
        let mut steps = Vec::new();
        let mut progress = Progress::new("charges made (intent, send, verified outcome)");
        while let Some(jobs) = batches.recv().await {
            report.intents += jobs.len() as u32;
            for job in jobs {
                Arc::clone(inner).spawn_work(&mut tasks, job, true);
            }
            // Back-pressure: take the next batch once the sends in progress are few.
            while tasks.len() > 2 * batch {
                if let Some(joined) = tasks.join_next().await {
                    steps.extend(joined_step(joined));
                    progress.update(steps.len() as u64, None);
                }
            }
        }
        let planned = planner
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?;
        let intents = u64::from(report.intents);
        if wait {
            while let Some(joined) = tasks.join_next().await {
                steps.extend(joined_step(joined));
                progress.update(steps.len() as u64, Some(intents));
            }
        } else if !tasks.is_empty() {
            // The last sends go on by themselves; the next tick does not wait behind them.
            lock(&inner.trailing).push(tokio::spawn(async move {
                let mut steps = Vec::new();
                while let Some(joined) = tasks.join_next().await {
                    steps.extend(joined_step(joined));
                }
                steps
            }));
        }
        let (settled, jump) = planned?;
        report.settled = settled;
        match jump {
            Some(reason) => {
                // Nothing of that subscription was settled; no more is planned until an
                // operator has looked at the clock.
                tracing::error!(%reason, "clock hold: no new charges until an operator acknowledges the clock");
                let at = now;
                inner.db(move |s| s.hold_clock(&reason, at)).await?;
                report.clock_held = true;
            }
            None => inner.db(move |s| s.record_planned_sweep(now)).await?,
        }
        for step in steps {
            report.add(step);
        }
        Ok(report)
    }
}

/// The steps of a finished trailing task (a panic is logged: its attempts are picked up again).
fn trailing_steps(joined: Result<Vec<Step>, tokio::task::JoinError>) -> TickReport {
    let mut report = TickReport::default();
    match joined {
        Ok(steps) => {
            for step in steps {
                report.add(step);
            }
        }
        Err(e) => tracing::error!(error = %e, "the task finishing a tick's last sends failed"),
    }
    report
}

/// What a finished charge task gave; a failed one is logged, and its attempt is picked up
/// again later.
fn joined_step(
    joined: Result<Result<Step, (String, EngineError)>, tokio::task::JoinError>,
) -> Option<Step> {
    match joined {
        Ok(Ok(step)) => Some(step),
        Ok(Err((order_number, e))) => {
            tracing::error!(
                %order_number,
                error = %e,
                "charge work failed; the attempt is picked up again at a later tick"
            );
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "a charge task failed");
            None
        }
    }
}

impl<S: ChargeStore + 'static> Inner<S> {
    /// Runs `f` on the store on a blocking thread: the database never blocks the runtime.
    async fn db<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut S) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&mut lock(&store)))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
            .map_err(EngineError::from)
    }

    /// Works on jobs concurrently (bounded by the pacer), one task per attempt. A failed task is
    /// logged and its attempt is picked up again later; the others go on.
    async fn run_all(
        self: Arc<Self>,
        jobs: Vec<Job>,
        fresh: bool,
    ) -> Result<Vec<Step>, EngineError> {
        let mut tasks = tokio::task::JoinSet::new();
        for job in jobs {
            Arc::clone(&self).spawn_work(&mut tasks, job, fresh);
        }
        let mut steps = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            steps.extend(joined_step(joined));
        }
        Ok(steps)
    }

    /// Spawns the task that works on one attempt, unless another task has it.
    fn spawn_work(
        self: Arc<Self>,
        tasks: &mut tokio::task::JoinSet<Result<Step, (String, EngineError)>>,
        job: Job,
        fresh: bool,
    ) {
        if !lock(&self.busy).insert(job.attempt_id) {
            return;
        }
        let guard = BusyGuard {
            attempt_id: job.attempt_id,
            inner: self,
        };
        tasks.spawn(async move {
            let order_number = job.order_number.clone();
            let result = guard.inner.work(job, fresh).await;
            drop(guard);
            result.map_err(|e| (order_number, e))
        });
    }

    /// One attempt, one step: send it (a fresh intent, or one that provably never left) or ask
    /// the gateway about it.
    async fn work(&self, job: Job, fresh: bool) -> Result<Step, EngineError> {
        match job.state {
            AttemptState::Pending if fresh => self.send(job).await,
            AttemptState::NotSent => self.send(job).await,
            AttemptState::Pending
            | AttemptState::Unknown
            | AttemptState::Parked
            | AttemptState::Quarantined => self.check(job).await,
            _ => Ok(Step::Other),
        }
    }

    /// Sends a charge: a slot from the pacer, the limits and the breaker checked once more, the
    /// send made durable (for a resend), then rp.cfm, then a status query to confirm the claim,
    /// then the verified outcome committed.
    async fn send(&self, mut job: Job) -> Result<Step, EngineError> {
        if job.state == AttemptState::Pending {
            crate::failpoint::hit(crate::failpoint::INTENT_COMMITTED);
        }
        // The slot first: the checks below must hold at the moment the request leaves, not
        // before a wait for the rate limit.
        let permit = self.pacer.acquire().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            // Stopping: nothing new leaves. An intent stays pending (looked up, never sent
            // blindly, at the next start); a not-sent attempt stays not sent.
            return Ok(Step::Other);
        }
        let now = self.clock.now();
        let id = job.subscription_id.clone();
        let attempt_id = job.attempt_id;
        let (subscription, charged, breaker) = self
            .db(move |s| {
                Ok((
                    s.stored_subscription(&id)?,
                    s.charged_instants(&id, Some(attempt_id))?,
                    s.breaker_reason()?,
                ))
            })
            .await?;
        if breaker.is_some() {
            // Never left: it waits, as not sent, until an operator clears the breaker.
            let mut change = AttemptChange::to(AttemptState::NotSent);
            change.next_check_at = Some(now + RESEND_BASE);
            self.apply(&job, change).await?;
            return Ok(Step::Held);
        }
        let blocked = match &subscription {
            None => Some("the subscription is not in the database".to_string()),
            Some(sub) if sub.removed_at.is_some() => {
                Some("the subscription was removed from the schedule files".to_string())
            }
            Some(sub) => {
                match billing::verdict(&sub.terms, &self.calendar, &charged, job.amount, now) {
                    Ok(()) => None,
                    Err(reason @ BlockReason::TooSoon { .. }) if job.purpose.period().is_none() => {
                        // An ad-hoc charge is made when asked or not at all: never held.
                        Some(reason.to_string())
                    }
                    Err(BlockReason::TooSoon { earliest, .. }) => {
                        let until = self.calendar.due_instant(earliest);
                        let next_due = job
                            .purpose
                            .period()
                            .and_then(|period| billing::due_date(&sub.terms, period + 1))
                            .map(|d| self.calendar.due_instant(d));
                        if next_due.is_some_and(|next| until >= next) {
                            Some(format!(
                                "too early until {}, when the next period is already due",
                                until.to_rfc3339()
                            ))
                        } else {
                            // Too early now (the clock moved back, or a retry came early): held.
                            return self.hold(&job, until).await;
                        }
                    }
                    Err(reason) => Some(reason.to_string()),
                }
            }
        };
        if let Some(reason) = blocked {
            let mut change = AttemptChange::to(AttemptState::Rejected);
            change.detail = Some(format!("refused before sending: {reason}"));
            change.charge = Some(ChargeState::Blocked.with(&reason));
            change.event = Some(Event {
                kind: event::PERIOD_BLOCKED,
                detail: json!({ "order_number": job.order_number, "reason": reason }),
            });
            self.apply(&job, change).await?;
            self.count("blocked");
            tracing::warn!(
                subscription = %job.subscription_id,
                period = %job.purpose,
                order_number = %job.order_number,
                clock = %crate::timefmt::rfc3339(self.clock.now()),
                %reason,
                "charge blocked before sending"
            );
            return Ok(Step::Other);
        }

        let wall = Utc::now();
        let sent_at = now;
        if job.state == AttemptState::NotSent || S::SHARED {
            // A resend: recorded as sent before it leaves, so that a crash or a lost reply from
            // here on leads to status queries, never to another blind resend. Where several
            // instances share the database a fresh intent is marked too: the mark checks that
            // this instance still holds the attempt, so one that paused past its lease does not
            // send what another instance has taken over.
            let expected = job.state;
            let claimed = job.clone();
            let marked = self
                .db(move |s| s.mark_sending(&claimed, expected, now, wall))
                .await?;
            if !marked {
                return Ok(Step::Other);
            }
            job.state = AttemptState::Pending;
        }
        let reply = self
            .client
            .charge(&ChargeRequest {
                bill_number: &job.bill_number,
                order_number: &job.order_number,
                amount: job.amount,
                currency: job.currency,
                comment: None,
            })
            .await;
        drop(permit);
        crate::failpoint::hit(crate::failpoint::REPLY_RECEIVED);
        let now = self.clock.now();
        match &reply.claim {
            Outcome::NotSent(why) => {
                let mut change = AttemptChange::to(AttemptState::NotSent);
                change.checked = true;
                change.next_check_at =
                    Some(now + backoff(RESEND_BASE, RESEND_CAP, job.checks, &job.order_number));
                change.detail = Some(why.clone());
                change.event = Some(conclusion::outcome_event(
                    event::NOT_SENT,
                    &job,
                    &reply.claim,
                    None,
                ));
                self.apply(&job, change).await?;
                self.log_outcome(&job, "not_sent", &reply.claim, None, "absent");
                Ok(Step::NotSent)
            }
            _ => {
                match &reply.claim {
                    // The charge reply carries no checkvalue: a field that does not match
                    // proves nothing either way. The order is looked up like any unknown one,
                    // and quarantined only if a status answer fails verification.
                    Outcome::IntegrityFailure(why) => tracing::warn!(
                        subscription = %job.subscription_id,
                        order_number = %job.order_number,
                        clock = %crate::timefmt::rfc3339(self.clock.now()),
                        reason = %why,
                        "the charge reply does not match the request; looking the order up"
                    ),
                    Outcome::RateLimited => {
                        self.pacer
                            .pause(reply.retry_after.unwrap_or(RATE_PAUSE).min(MAX_PAUSE));
                    }
                    Outcome::Rejected(why) => tracing::error!(
                        subscription = %job.subscription_id,
                        order_number = %job.order_number,
                        clock = %crate::timefmt::rfc3339(self.clock.now()),
                        reason = %why,
                        "the gateway rejected a charge request: check the configuration; \
                         the order is looked up before anything else is tried"
                    ),
                    _ => {}
                }
                // Whatever the claim (even a rejection, which is unverified), the outcome is
                // taken from a verified status answer.
                let permit = self.pacer.acquire().await;
                let answer = self
                    .client
                    .order_status(&StatusQuery {
                        order_number: &job.order_number,
                        amount: job.amount,
                        currency: job.currency,
                        sent_at: wall,
                        known_test_mode: reply.test_mode,
                    })
                    .await;
                drop(permit);
                let claim = Claim {
                    outcome: reply.claim.clone(),
                    response_code: reply.response_code.clone(),
                    test_mode: reply.test_mode,
                    wall,
                    sent_at,
                };
                self.conclude(job, answer, Some(claim)).await
            }
        }
    }

    /// Keeps an attempt that is too early now (it never left) until `until`.
    async fn hold(&self, job: &Job, until: DateTime<Utc>) -> Result<Step, EngineError> {
        let mut change = AttemptChange::to(AttemptState::NotSent);
        change.next_check_at = Some(until);
        change.event = Some(Event {
            kind: event::HELD,
            detail: json!({
                "order_number": job.order_number,
                "until": until.to_rfc3339(),
            }),
        });
        self.apply(job, change).await?;
        tracing::info!(
            subscription = %job.subscription_id,
            order_number = %job.order_number,
            clock = %crate::timefmt::rfc3339(self.clock.now()),
            until = %until.to_rfc3339(),
            "charge held: too early for the agreed period"
        );
        Ok(Step::Held)
    }

    /// Asks the gateway what became of an attempt whose outcome is not known.
    async fn check(&self, job: Job) -> Result<Step, EngineError> {
        let permit = self.pacer.acquire().await;
        let answer = self
            .client
            .order_status(&StatusQuery {
                order_number: &job.order_number,
                amount: job.amount,
                currency: job.currency,
                sent_at: job.wall_at,
                known_test_mode: job.test_mode,
            })
            .await;
        drop(permit);
        self.conclude(job, answer, None).await
    }

    /// Commits what a status answer says about an attempt (`claim`: the charge reply it follows,
    /// when it was just sent): [`conclusion::conclusion`] decides, this records it and logs.
    async fn conclude(
        &self,
        job: Job,
        answer: StatusAnswer,
        claim: Option<Claim>,
    ) -> Result<Step, EngineError> {
        crate::failpoint::hit(crate::failpoint::STATUS_RECEIVED);
        let now = self.clock.now();
        let verified = &answer.verified;
        // The subscription is read only where the decision needs it: a soft decline's dunning.
        let subscription = match &verified.outcome {
            Outcome::Declined(decline) if decline.kind == DeclineKind::Soft => {
                let id = job.subscription_id.clone();
                self.db(move |s| s.stored_subscription(&id)).await?
            }
            _ => None,
        };
        if verified.outcome == Outcome::RateLimited {
            self.pacer.pause(RATE_PAUSE);
        }
        let decided = conclusion::conclusion(
            &job,
            verified,
            claim.as_ref(),
            now,
            &self.policy,
            &self.calendar,
            subscription.as_ref(),
        );
        let (change, step, outcome, notice) = match decided {
            Decided::Quarantine { why } => {
                return self
                    .quarantine(&job, &why, answer.raw.as_deref(), claim.map(|c| c.wall))
                    .await;
            }
            Decided::Record {
                change,
                step,
                outcome,
                notice,
            } => (change, step, outcome, notice),
        };
        self.apply_counting_park(&job, change).await?;
        let clock = crate::timefmt::rfc3339(self.clock.now());
        match notice {
            Some(Notice::DoubleApproval { approved, pending }) => tracing::error!(
                subscription = %job.subscription_id,
                order_number = %job.order_number,
                %clock,
                approved_orders = approved,
                pending_orders = pending,
                "the gateway shows more than one order with this OrderNumber beside the \
                 approved one: the customer may have been charged twice; refund per the \
                 runbook"
            ),
            Some(Notice::VanishedAfterSeen) => tracing::warn!(
                subscription = %job.subscription_id,
                order_number = %job.order_number,
                %clock,
                "the gateway now says it has no such order, after it showed the order \
                 earlier: parked for an operator (resolve it once the order is checked \
                 at the merchant portal); it is never sent again under a new number"
            ),
            Some(Notice::ParkedTooLong) => tracing::warn!(
                subscription = %job.subscription_id,
                order_number = %job.order_number,
                %clock,
                "charge outcome still unknown after {} hours: parked for an operator",
                self.policy.park_after.num_hours()
            ),
            None => {}
        }
        if let Some(line) = outcome {
            self.log_outcome(
                &job,
                line.label,
                &line.outcome,
                line.response_code.as_deref(),
                line.checkvalue,
            );
        }
        Ok(step)
    }

    /// An answer failed verification: the attempt blocks its period, nothing is booked, the raw
    /// reply is kept (masked), and enough of these open the circuit breaker.
    async fn quarantine(
        &self,
        job: &Job,
        why: &str,
        raw: Option<&str>,
        wall: Option<DateTime<Utc>>,
    ) -> Result<Step, EngineError> {
        let now = self.clock.now();
        let mut change = AttemptChange::to(AttemptState::Quarantined);
        // Looked up again later (with backoff, at least every few hours) until a verified
        // answer settles it or an operator resolves it; its subscription is held meanwhile.
        change.next_check_at =
            Some(now + backoff(STATUS_BASE, PARKED_EVERY, job.checks, &job.order_number));
        if job.state == AttemptState::Quarantined {
            // A lookup of a quarantined attempt failed verification again: nothing new to
            // record, and not another quarantine for the breaker.
            change.checked = true;
            self.apply(job, change).await?;
            return Ok(Step::Other);
        }
        // A reply that failed verification names an order: taken as evidence that the gateway
        // may hold it, so later not-found answers park it instead of re-sending the period.
        change.seen = true;
        change.sent = wall.is_some();
        change.sent_at = wall.map(|_| now);
        change.wall_at = wall;
        change.checked = wall.is_none();
        change.checkvalue = if why.contains("no checkvalue") {
            Some("absent")
        } else if why.contains("checkvalue") {
            Some("mismatch")
        } else {
            None
        };
        change.detail = Some(why.to_string());
        change.charge = Some(ChargeState::Quarantined.with(why));
        let mut detail =
            conclusion::event_detail(job, &Outcome::IntegrityFailure(why.into()), None);
        detail["raw"] = json!(raw);
        change.event = Some(Event {
            kind: event::QUARANTINED,
            detail,
        });
        self.apply(job, change).await?;
        self.count("quarantined");
        tracing::error!(
            subscription = %job.subscription_id,
            period = %job.purpose,
            order_number = %job.order_number,
            clock = %crate::timefmt::rfc3339(self.clock.now()),
            reason = %why,
            "charge quarantined: a gateway answer failed verification; nothing is booked"
        );
        let window = now - self.policy.breaker_window;
        let failures = self.policy.breaker_failures;
        let opened = self
            .db(move |s| {
                let count = s.count_quarantines_since(window)?;
                if count >= failures {
                    s.trip_breaker(
                        &format!(
                            "{count} gateway answers failed verification within the window; \
                             check the salt, the gateway URL and the merchant id"
                        ),
                        now,
                    )?;
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        if opened {
            tracing::error!("circuit breaker opened: no new charges until an operator clears it");
        }
        Ok(Step::Quarantined)
    }

    /// Commits a step's outcome, provided the attempt is still where this step found it.
    ///
    /// Group commit: the outcome is queued, then whichever task next holds the store commits
    /// every queued outcome in one transaction (each with its ledger event, each in its own
    /// savepoint). This returns only once this outcome's transaction is committed.
    async fn apply(&self, job: &Job, change: AttemptChange) -> Result<(), EngineError> {
        let approved = change.state == AttemptState::Approved;
        let (reply, answer) = tokio::sync::oneshot::channel();
        lock(&self.outcomes).push(QueuedOutcome {
            attempt_id: job.attempt_id,
            expected: job.state,
            fence: job.fence,
            change,
            now: self.clock.now(),
            reply,
        });
        let queue = Arc::clone(&self.outcomes);
        self.db(move |s| {
            let batch = std::mem::take(&mut *lock(&queue));
            commit_outcomes(s, batch);
            Ok(())
        })
        .await?;
        // Our outcome was in this batch or in one committed before it (under the same lock).
        let applied = answer
            .await
            .map_err(|_| EngineError::Task("an outcome was dropped unrecorded".into()))??;
        if !applied {
            let id = job.attempt_id;
            let now = self
                .db(move |s| s.attempt_by_id(id))
                .await?
                .map(|a| a.state);
            let now_state = now.map(AttemptState::as_str);
            // Still unresolved: another instance took the attempt over (its claim is newer) and
            // will look it up itself; the gateway's answer is not lost, and nothing was settled
            // against it.
            let taken_over = now.is_some_and(AttemptState::unresolved);
            if taken_over {
                tracing::warn!(
                    order_number = %job.order_number,
                    clock = %crate::timefmt::rfc3339(self.clock.now()),
                    "this instance's claim on the attempt was taken over while this step ran; \
                     the instance that holds it now looks it up"
                );
            } else if approved && now_state != Some(AttemptState::Approved.as_str()) {
                // Someone else settled it meanwhile (an operator's `resolve --not-charged`, say)
                // while the gateway says it was paid: a new attempt could charge twice. That is
                // a ledger event and a flag on the subscription (no new charge until an
                // operator has looked), not only a log line.
                let flag = Flag {
                    kind: flag::LATE_APPROVAL,
                    reason: format!(
                        "the gateway verified {} ({} {}) as APPROVED after it was settled as {}: \
                         check for a second charge for the same period, refund it, then resume",
                        job.order_number,
                        job.amount,
                        job.currency,
                        now_state.unwrap_or("missing")
                    ),
                };
                let attempt_id = job.attempt_id;
                let now = self.clock.now();
                self.db(move |s| s.flag_attempt(attempt_id, &flag, now))
                    .await?;
                tracing::error!(
                    subscription = %job.subscription_id,
                    order_number = %job.order_number,
                    clock = %crate::timefmt::rfc3339(self.clock.now()),
                    state = now_state.unwrap_or("missing"),
                    "the gateway says this order was APPROVED, but the attempt was settled \
                     otherwise while the answer was on its way: check the order at the gateway \
                     and refund a second charge for the same period if one was made"
                );
            } else {
                tracing::warn!(
                    order_number = %job.order_number,
                    clock = %crate::timefmt::rfc3339(self.clock.now()),
                    "attempt changed while this step ran; its result was not recorded"
                );
            }
        }
        crate::failpoint::hit(crate::failpoint::OUTCOME_COMMITTED);
        Ok(())
    }

    /// [`Inner::apply`], counting an attempt that becomes parked (`outcome="parked"`).
    async fn apply_counting_park(
        &self,
        job: &Job,
        change: AttemptChange,
    ) -> Result<(), EngineError> {
        let parks = change.state == AttemptState::Parked && job.state != AttemptState::Parked;
        self.apply(job, change).await?;
        if parks {
            self.count("parked");
        }
        Ok(())
    }

    /// One charge outcome in the metrics (`recurrentd_charges_total`).
    fn count(&self, outcome: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.charge(outcome);
        }
    }

    /// The one log line per charge outcome.
    fn log_outcome(
        &self,
        job: &Job,
        outcome: &'static str,
        detail: &Outcome,
        code: Option<&str>,
        checkvalue: &str,
    ) {
        self.count(outcome);
        tracing::info!(
            subscription = %job.subscription_id,
            period = %job.purpose,
            order_number = %job.order_number,
            clock = %crate::timefmt::rfc3339(self.clock.now()),
            amount = %job.amount,
            currency = %job.currency,
            outcome,
            response_code = code.unwrap_or(""),
            checkvalue,
            detail = %detail,
            "charge outcome"
        );
    }
}

/// An outcome waiting for the next group commit.
struct QueuedOutcome {
    attempt_id: i64,
    expected: AttemptState,
    fence: i64,
    change: AttemptChange,
    now: DateTime<Utc>,
    reply: tokio::sync::oneshot::Sender<Result<bool, EngineError>>,
}

/// Commits queued outcomes in one transaction and tells each waiting task how its went.
fn commit_outcomes<S: ChargeStore>(store: &mut S, batch: Vec<QueuedOutcome>) {
    if batch.is_empty() {
        return;
    }
    let items: Vec<_> = batch
        .iter()
        .map(|q| OutcomeWrite {
            attempt_id: q.attempt_id,
            expected: q.expected,
            fence: q.fence,
            change: &q.change,
            now: q.now,
        })
        .collect();
    match store.apply_outcomes(&items) {
        Ok(results) => {
            for (queued, result) in batch.into_iter().zip(results) {
                let _ = queued.reply.send(result.map_err(EngineError::from));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for queued in batch {
                let _ = queued.reply.send(Err(EngineError::Task(message.clone())));
            }
        }
    }
}

/// Releases an attempt from the busy set however its task ends (a panic included).
struct BusyGuard<S: ChargeStore + 'static> {
    inner: Arc<Inner<S>>,
    attempt_id: i64,
}

impl<S: ChargeStore + 'static> Drop for BusyGuard<S> {
    fn drop(&mut self) {
        lock(&self.inner.busy).remove(&self.attempt_id);
    }
}

/// The charge reply a status answer confirms.
struct Claim {
    outcome: Outcome,
    response_code: Option<String>,
    test_mode: Option<bool>,
    wall: DateTime<Utc>,
    /// The engine's clock just before the request left.
    sent_at: DateTime<Utc>,
}

impl ChargeState {
    fn with(self, reason: &str) -> ChargeChange {
        ChargeChange {
            state: self,
            reason: Some(reason.to_string()),
            next_attempt_at: None,
        }
    }
}

/// Most subscriptions planned in one write transaction.
const PLAN_BATCH_SUBSCRIPTIONS: usize = 256;

/// Plans every subscription the due sweep returns at `now`, in small write transactions of
/// at most `max_intents` new intents (and [`PLAN_BATCH_SUBSCRIPTIONS`] subscriptions); each batch
/// is handed to `ready` only once it is committed. Returns how many periods were settled
/// without a charge, and why planning stopped for the clock (see [`too_many_skipped`]), if it
/// did.
#[allow(clippy::too_many_arguments)]
fn plan_all<S: ChargeStore>(
    store: &Mutex<S>,
    now: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
    calendar: &Calendar,
    policy: &Policy,
    prefix: &str,
    stopping: &std::sync::atomic::AtomicBool,
    max_intents: usize,
    metrics: Option<&Metrics>,
    mut ready: impl FnMut(Vec<Job>) -> bool,
) -> Result<(u32, Option<String>), StoreError> {
    let ids = lock(store).plannable(now)?;
    let total = ids.len() as u64;
    let mut progress = Progress::new("planning due subscriptions");
    let mut done = 0u64;
    let mut settled = 0;
    let mut jump = None;
    let mut ids = ids.iter().peekable();
    while ids.peek().is_some() {
        progress.update(done, Some(total));
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let mut jobs = Vec::new();
        let mut pickups = Vec::new();
        {
            let mut guard = lock(store);
            let mut tx = guard.begin_plan(now)?;
            let mut planned = 0;
            while jobs.len() < max_intents.max(1) && planned < PLAN_BATCH_SUBSCRIPTIONS {
                let Some(id) = ids.next() else { break };
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let mut pickup = None;
                let (job, n) = plan_one(
                    &mut tx,
                    id,
                    now,
                    since,
                    &mut jump,
                    &mut pickup,
                    calendar,
                    policy,
                    prefix,
                )?;
                pickups.extend(pickup);
                jobs.extend(job);
                settled += n;
                planned += 1;
                if jump.is_some() {
                    break;
                }
            }
            tx.commit()?;
            done += planned as u64;
        }
        if let Some(metrics) = metrics {
            for delay in pickups {
                metrics.pickup(delay);
            }
        }
        // Committed: only now may these intents be sent.
        if !jobs.is_empty() && !ready(jobs) {
            break;
        }
        if jump.is_some() {
            break;
        }
    }
    Ok((settled, jump))
}

/// Plans one subscription inside the batch's write transaction: reads its history (and the
/// ad-hoc charge waiting first), decides by the planning rules ([`planning::decide_plan`], pure)
/// and writes the decision in the same transaction ([`planning::apply_plan`]): what is settled,
/// at most one new intent with the limits checked on the history read here, and when the due
/// sweep must look again. A period's first intent sets `pickup` to how long after its due
/// instant it was made (a metric).
#[allow(clippy::too_many_arguments)]
fn plan_one<T: PlanTransaction>(
    tx: &mut T,
    id: &str,
    now: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
    jump: &mut Option<String>,
    pickup: &mut Option<Duration>,
    calendar: &Calendar,
    policy: &Policy,
    prefix: &str,
) -> Result<(Option<Job>, u32), StoreError> {
    let Some(history) = tx.history(id)? else {
        return Ok((None, 0));
    };
    if history.attention.is_some() || history.unresolved {
        // Its `next_plan_at` stays reached: planned again once this clears.
        return Ok((None, 0));
    }
    let adhoc = tx.adhoc_open(id)?;
    let plan = planning::decide_plan(
        &history,
        adhoc.as_ref(),
        now,
        since,
        calendar,
        policy,
        prefix,
    )
    .map_err(|value| StoreError::Corrupt {
        path: tx.location().to_path_buf(),
        what: "an open period".into(),
        value,
    })?;
    let job = planning::apply_plan(tx, &history.subscription, &plan, now)?;
    if let Some(planning::Intent::First { pickup: delay, .. }) = &plan.intent {
        *pickup = Some(*delay);
    }
    if plan.jump.is_some() {
        *jump = plan.jump;
    }
    Ok((job, plan.settled))
}

/// The reference of an ad-hoc charge, for ledger details (null for a period).
pub(crate) fn adhoc_reference(purpose: &Purpose) -> Option<&str> {
    match purpose {
        Purpose::Adhoc(reference) => Some(reference),
        Purpose::Period(_) => None,
    }
}

pub(crate) fn intent_event(
    order_number: &str,
    purpose: &Purpose,
    attempt: u32,
    amount: crate::money::Money,
    currency: crate::money::Currency,
) -> Event {
    Event {
        kind: event::INTENT,
        detail: json!({
            "order_number": order_number,
            "period": purpose.period(),
            "reference": adhoc_reference(purpose),
            "attempt": attempt,
            "amount": amount.to_string(),
            "currency": currency.as_str(),
        }),
    }
}
