//! The store boundary of the charge path: what the engine needs from a database to plan intents
//! and record verified outcomes, as two traits every backend implements.
//!
//! - [`PlanTransaction`]: one write transaction planning subscriptions. The history it reads and
//!   the intent it records are in the same transaction, so the limits checked on the history
//!   still hold when the intent commits (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the
//!   subscription's row locked `FOR UPDATE` before its history is read).
//! - [`ChargeStore`]: the due sweep (which subscriptions to plan, which attempts to work on),
//!   the durable "about to send" mark, outcome writes, and the engine's own guards (breaker,
//!   clock hold).
//!
//! **Fencing.** Every [`Job`] carries the fencing token of the claim it was read under
//! ([`Job::fence`]). [`ChargeStore::mark_sending`] and [`ChargeStore::apply_outcomes`] change an
//! attempt only while it is still in the state the step started from *and* still held under
//! that token. With one daemon per database (SQLite, guarded by a `flock`) there is nobody to
//! fence off and the token is always [`UNFENCED`]; with several instances on one database
//! (PostgreSQL) an instance paused past its lease finds its token stale and its writes refused,
//! so it cannot overwrite what the attempt's newer owner recorded.
//!
//! Everything here is synchronous: the engine calls it from blocking threads, never from async
//! code, and never while a request is on the wire.

use chrono::{DateTime, NaiveDate, Utc};

use super::StoreError;
use crate::billing::Revisit;
use crate::lifecycle::{
    AttemptChange, AttemptState, ChargeState, Event, Flag, History, Job, OpenCharge,
    StoredSubscription,
};

/// The fencing token of a job read where nobody else can claim it (one daemon per database).
pub const UNFENCED: i64 = 0;

/// One outcome to record: the attempt, the state and claim the step started from, the change.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeWrite<'a> {
    pub attempt_id: i64,
    /// Recorded only if the attempt is still in this state.
    pub expected: AttemptState,
    /// ... and still held under this fencing token ([`Job::fence`]).
    pub fence: i64,
    pub change: &'a AttemptChange,
    /// The engine clock's instant of the write.
    pub now: DateTime<Utc>,
}

/// A write transaction planning subscriptions: each read sees, and each write is made under,
/// the transaction's locks; nothing is visible to others before [`PlanTransaction::commit`], and
/// dropping it uncommitted rolls everything back.
pub trait PlanTransaction {
    /// Where the data lives, for error messages (a file, or a URL without its password).
    fn location(&self) -> &std::path::Path;

    /// The subscription's history as of now, under the transaction's lock on it; `None` if it
    /// is unknown, removed, or held while its schedule file is missing.
    fn history(&mut self, subscription_id: &str) -> Result<Option<History>, StoreError>;

    /// The ad-hoc charge of a subscription to attempt first, if any (see the SQLite store's
    /// `PlanTx::adhoc_open` for the order).
    fn adhoc_open(&mut self, subscription_id: &str) -> Result<Option<OpenCharge>, StoreError>;

    /// Records a period (or the last of a run of periods) settled without a charge, with its
    /// ledger event.
    fn settle(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError>;

    /// Opens a period for charging, its amount, currency and bill number copied from the
    /// subscription as it is now. A second row for the same (subscription, period) is refused by
    /// the database.
    fn open_period(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
    ) -> Result<OpenCharge, StoreError>;

    /// Records a new attempt (an intent) for an open charge, with its ledger event: its
    /// OrderNumber is durable once this transaction commits, before anything is sent. A second
    /// live attempt for the same charge, or a reused OrderNumber, is refused by the database.
    /// The returned job is held by this instance (its [`Job::fence`]).
    fn new_attempt(
        &mut self,
        subscription_id: &str,
        charge: &OpenCharge,
        order_number: &str,
        wall_at: DateTime<Utc>,
        event: Event,
    ) -> Result<Job, StoreError>;

    /// Closes an open charge that will not be charged, with its ledger event.
    fn close_period(
        &mut self,
        subscription_id: &str,
        charge_id: i64,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError>;

    /// When the due sweep must look at this subscription again.
    fn revisit(&mut self, subscription_id: &str, revisit: Revisit) -> Result<(), StoreError>;

    /// Makes everything durable, atomically.
    fn commit(self) -> Result<(), StoreError>;
}

/// The charge path's storage: due sweep, intents, sends, outcomes, and the engine's guards.
pub trait ChargeStore: Send {
    /// A planning transaction of this backend.
    type Plan<'a>: PlanTransaction
    where
        Self: 'a;

    /// Whether several instances may work on this database at once. Then even a fresh intent is
    /// marked sending ([`ChargeStore::mark_sending`], which checks its claim) before its request
    /// leaves, so an instance that paused past its lease never sends an attempt another instance
    /// has taken over; with one daemon per database that write is saved.
    const SHARED: bool;

    /// Where the data lives, for error messages.
    fn location(&self) -> &std::path::Path;

    /// Ids of subscriptions the due sweep must plan at `now`, oldest `next_plan_at` first: not
    /// removed, not flagged for an operator, without an unresolved attempt, their file not
    /// missing. Several instances may list the same id: planning locks it (see
    /// [`PlanTransaction::history`]), and the one that plans second finds nothing left to do.
    fn plannable(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;

    /// Starts planning at `now` (engine clock).
    fn begin_plan(&mut self, now: DateTime<Utc>) -> Result<Self::Plan<'_>, StoreError>;

    /// Claims the attempts due for work at `now` (intents never answered, unknown, parked and
    /// quarantined ones to look up, not-sent ones to send again), oldest first. With several
    /// instances each attempt is claimed by one of them, under a lease, and each returned job
    /// carries its claim's fencing token.
    fn claim_due_attempts(&mut self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError>;

    /// Claims every unresolved attempt (pending, not sent, unknown, parked) whenever its next
    /// check is due: the reconciliation at an instance's start. With several instances, only
    /// attempts nobody else holds under a live lease.
    fn claim_unresolved_attempts(&mut self) -> Result<Vec<Job>, StoreError>;

    /// How many attempts are unresolved (pending, not sent, unknown, parked), whoever holds
    /// them.
    fn count_unresolved(&mut self) -> Result<usize, StoreError>;

    /// One attempt by id, as it is now (its fence is the current holder's).
    fn attempt_by_id(&mut self, attempt_id: i64) -> Result<Option<Job>, StoreError>;

    /// Marks a job's attempt as (possibly) sent, durably, right before its request leaves: from
    /// then on it is only ever looked up, never sent again. `false` (nothing changed) if the
    /// attempt is no longer in `expected` or no longer held under `job.fence`.
    fn mark_sending(
        &mut self,
        job: &Job,
        expected: AttemptState,
        now: DateTime<Utc>,
        wall: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records outcomes (of different attempts) in one transaction, each with its ledger event,
    /// each only if its attempt is still in `expected` and held under `fence` (else `Ok(false)`
    /// for it, nothing changed). One that fails is rolled back alone; the outer error is for the
    /// transaction itself (nothing committed).
    fn apply_outcomes(
        &mut self,
        outcomes: &[OutcomeWrite<'_>],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError>;

    /// Engine-clock instants of a subscription's attempts that charged or may have (and its
    /// enrolment), except one attempt: the history the limits are checked against before a send.
    fn charged_instants(
        &mut self,
        subscription_id: &str,
        except_attempt: Option<i64>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError>;

    /// Flags an attempt's subscription for an operator, with its ledger event.
    fn flag_attempt(
        &mut self,
        attempt_id: i64,
        flag: &Flag,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// A subscription as stored now.
    fn stored_subscription(
        &mut self,
        subscription_id: &str,
    ) -> Result<Option<StoredSubscription>, StoreError>;

    /// Why new charges are stopped, if the circuit breaker is open.
    fn breaker_reason(&mut self) -> Result<Option<String>, StoreError>;

    /// Opens the circuit breaker (idempotent: the first reason stays), with a ledger event.
    fn trip_breaker(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Integrity failures (quarantines) recorded since `since`.
    fn count_quarantines_since(&mut self, since: DateTime<Utc>) -> Result<u32, StoreError>;

    /// Why new charges are stopped for the clock, if they are.
    fn clock_hold_reason(&mut self) -> Result<Option<String>, StoreError>;

    /// Stops new charges until an operator acknowledges the clock (idempotent).
    fn hold_clock(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// The engine clock's instant at the latest sweep that planned.
    fn last_planned_sweep(&mut self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Records the instant of a sweep that planned; never moves it back.
    fn record_planned_sweep(&mut self, at: DateTime<Utc>) -> Result<(), StoreError>;
}

/// What the daemon needs from its store besides the charge path: schedule sync, the records
/// `status` reads, a health check, the metrics' figures, and a clean stop.
pub trait DaemonStore: ChargeStore + 'static {
    /// Syncs the schedule folder into the store if this instance is the one to (always with one
    /// daemon per database; with several instances, the holder of the schedule lease).
    /// `Ok(None)`: another instance does it.
    fn sync_folder(
        &mut self,
        dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<Option<super::SyncSummary>, super::SyncDirError>;

    /// Subscriptions defined by a file and not removed.
    fn active_subscription_count(&mut self) -> Result<u64, StoreError>;

    /// Who runs (pid, version, start, a rehearsal's rate), for `status`.
    fn record_start(
        &mut self,
        pid: u32,
        version: &str,
        started_at: DateTime<Utc>,
        rehearsal: Option<u32>,
    ) -> Result<(), StoreError>;

    /// A tick that succeeded (real time and the daemon's clock), for `status`.
    fn record_tick(&mut self, real: DateTime<Utc>, clock: DateTime<Utc>) -> Result<(), StoreError>;

    /// A round trip that proves the store answers and this instance may still work on it (the
    /// watchdog's health path; with several instances also the heartbeat that keeps this
    /// instance registered). An error: no watchdog ping.
    fn health(&mut self) -> Result<(), StoreError>;

    /// The figures of the metrics' gauges; `None` where this backend does not keep them.
    fn gauge_figures(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Option<crate::metrics::StoreGauges>, StoreError>;

    /// The outbox's backlog for the metrics (only read when a webhook delivers it); `None`
    /// where this backend keeps no outbox consumer.
    fn outbox_figures(&mut self) -> Result<Option<super::OutboxBacklog>, StoreError>;

    /// Lets go of what this instance holds, at a clean stop: with several instances the others
    /// take its unresolved attempts over at once instead of after its lease.
    fn release_claims(&mut self) -> Result<(), StoreError>;
}
