//! The charge lifecycle's tables: periods (`charges`), attempts and the events that explain them.
//! The types are [`crate::lifecycle`]'s; this module reads and writes their rows.
//!
//! The engine decides; this module only reads what a decision needs and writes what was
//! decided, each write in one `BEGIN IMMEDIATE` transaction together with its ledger event. Limits
//! are checked inside the transaction that creates an intent: [`PlanTx`] holds the write lock
//! from the moment the history is read until the intent is committed.

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::json;

use super::{
    Context, Store, StoreError, StoredSubscription, cached_execute, cached_query_row, date_text,
    parse_date, parse_timestamp, timestamp,
};
use crate::billing::{Limits, Revisit};
use crate::lifecycle::{
    AdhocCharge, AttemptChange, AttemptState, ChargeState, Event, Flag, History, Job, OpenCharge,
    PeriodRow, Purpose, event, flag,
};
use crate::money::{Currency, Money};

const JOB_COLUMNS: &str = "a.id, a.charge_id, c.subscription_id, c.period, a.attempt, \
    a.order_number, c.bill_number, c.amount_cents, c.currency, a.state, a.created_at, a.wall_at, \
    a.sent, a.checks, a.not_found, a.test_mode, a.response_code, a.sent_at, c.reference, \
    a.seen_at IS NOT NULL";

type JobRow = (
    i64,
    i64,
    String,
    Option<i64>,
    i64,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
        row.get(13)?,
        row.get(14)?,
        row.get(15)?,
        row.get(16)?,
        row.get(17)?,
        row.get(18)?,
        row.get(19)?,
    ))
}

pub(super) fn corrupt(path: &Path, what: &str, value: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
        value: value.to_string(),
    }
}

/// A charge row's purpose from its `period` and `reference` columns (exactly one is set); both
/// backends decode it here.
pub(super) fn purpose_from_columns(
    path: &Path,
    period: Option<i64>,
    reference: Option<String>,
) -> Result<Purpose, StoreError> {
    match (period, reference) {
        (Some(n), None) => u32::try_from(n)
            .map(Purpose::Period)
            .map_err(|_| corrupt(path, "charges.period", n)),
        (None, Some(reference)) => Ok(Purpose::Adhoc(reference)),
        (period, reference) => Err(corrupt(
            path,
            "charges.period/reference",
            format!("{period:?}/{reference:?}"),
        )),
    }
}

fn decode_job(path: &Path, r: JobRow) -> Result<Job, StoreError> {
    let (
        attempt_id,
        charge_id,
        subscription_id,
        period,
        attempt,
        order_number,
        bill_number,
        amount_cents,
        currency,
        state,
        created_at,
        wall_at,
        sent,
        checks,
        not_found,
        test_mode,
        response_code,
        sent_at,
        reference,
        seen,
    ) = r;
    Ok(Job {
        attempt_id,
        charge_id,
        subscription_id,
        purpose: purpose_from_columns(path, period, reference)?,
        attempt: u32::try_from(attempt).map_err(|_| corrupt(path, "attempts.attempt", attempt))?,
        order_number,
        bill_number,
        amount: Money::from_cents(amount_cents)
            .ok_or_else(|| corrupt(path, "charges.amount_cents", amount_cents))?,
        currency: Currency::parse(&currency)
            .map_err(|_| corrupt(path, "charges.currency", &currency))?,
        state: AttemptState::parse(&state)
            .ok_or_else(|| corrupt(path, "attempts.state", &state))?,
        created_at: parse_timestamp(path, "attempts.created_at", &created_at)?,
        wall_at: parse_timestamp(path, "attempts.wall_at", &wall_at)?,
        sent: sent != 0,
        checks: u32::try_from(checks).unwrap_or(u32::MAX),
        not_found: u32::try_from(not_found).unwrap_or(u32::MAX),
        test_mode: test_mode.map(|t| t != 0),
        response_code,
        sent_at: sent_at
            .map(|t| parse_timestamp(path, "attempts.sent_at", &t))
            .transpose()?,
        seen,
        fence: super::UNFENCED,
    })
}

/// A write transaction for planning one subscription: read its history, record settled
/// periods and at most one new intent, commit. The write lock is held throughout, so the limits
/// checked on the history hold for the intent.
pub struct PlanTx<'a> {
    tx: Transaction<'a>,
    path: &'a Path,
    now: DateTime<Utc>,
}

impl Store {
    /// Starts planning at `now` (engine clock).
    pub fn plan(&mut self, now: DateTime<Utc>) -> Result<PlanTx<'_>, StoreError> {
        self.require_write("planning charges")?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, "starting a planning transaction")?;
        Ok(PlanTx {
            tx,
            path: &self.path,
            now,
        })
    }

    /// Ids of subscriptions the due sweep must plan at `now`: defined by a file, their
    /// `next_plan_at` reached (read through its index, oldest first), not flagged for an
    /// operator, without an unresolved attempt. One flagged or with an attempt in flight keeps
    /// its `next_plan_at` (already reached), so it is planned again as soon as that clears.
    pub fn plannable(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let what = "listing subscriptions to plan";
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT s.id FROM subscriptions s INDEXED BY subscriptions_to_plan \
                 WHERE s.removed_at IS NULL AND s.next_plan_at <= ?1 \
                 AND NOT EXISTS (SELECT 1 FROM attention t WHERE t.subscription_id = s.id) \
                 AND NOT EXISTS (SELECT 1 FROM schedule_files f WHERE f.file = s.file \
                     AND f.missing_since IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM charges c JOIN attempts a ON a.charge_id = c.id \
                     WHERE c.subscription_id = s.id \
                     AND a.state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined')) \
                 ORDER BY s.next_plan_at",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([timestamp(now)], |row| row.get::<_, String>(0))
            .ctx(&self.path, what)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .ctx(&self.path, what)
    }

    /// A subscription's `next_plan_at` (the due sweep's index), for tests and reports: `None`
    /// for "now".
    pub fn next_plan_at(&self, subscription_id: &str) -> Result<Option<String>, StoreError> {
        let text: String = cached_query_row(
            &self.conn,
            "SELECT next_plan_at FROM subscriptions WHERE id = ?1",
            [subscription_id],
            |row| row.get(0),
        )
        .ctx(&self.path, "reading next_plan_at")?;
        Ok((!text.is_empty()).then_some(text))
    }

    /// Attempts due for work at `now`: never-answered intents, unknown and quarantined ones to
    /// look up, and not-sent ones to send again, oldest first.
    pub fn due_attempts(&self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.jobs(
            "WHERE a.state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined') \
             AND (a.next_check_at IS NULL OR a.next_check_at <= ?1) ORDER BY a.id",
            params![timestamp(now)],
        )
    }

    /// Every unresolved attempt, whenever its next check is due (reconciliation at start).
    pub fn unresolved_attempts(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs(
            "WHERE a.state IN ('pending', 'not_sent', 'unknown', 'parked') ORDER BY a.id",
            [],
        )
    }

    /// One attempt by id.
    pub fn attempt(&self, attempt_id: i64) -> Result<Option<Job>, StoreError> {
        Ok(self
            .jobs("WHERE a.id = ?1", params![attempt_id])?
            .into_iter()
            .next())
    }

    /// One attempt by its OrderNumber.
    pub fn attempt_by_order_number(&self, order_number: &str) -> Result<Option<Job>, StoreError> {
        Ok(self
            .jobs("WHERE a.order_number = ?1", params![order_number])?
            .into_iter()
            .next())
    }

    /// Every attempt (for reports and tests), oldest first.
    pub fn attempts(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs("ORDER BY a.id", [])
    }

    pub(super) fn jobs<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<Job>, StoreError> {
        let what = "reading attempts";
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM attempts a JOIN charges c ON c.id = a.charge_id {filter}"
        );
        let mut statement = self.conn.prepare_cached(&sql).ctx(&self.path, what)?;
        let rows = statement.query_map(params, job_row).ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_job(&self.path, row.ctx(&self.path, what)?)?);
        }
        Ok(out)
    }

    /// Engine-clock instants of the attempts of a subscription that charged or may have (the
    /// later of the intent and the latest send: a resend days later moved the money later),
    /// excluding one attempt (the one about to be sent).
    pub fn charged_instants(
        &self,
        subscription_id: &str,
        except_attempt: Option<i64>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        charged_instants(&self.conn, &self.path, subscription_id, except_attempt)
    }

    /// Applies one step's outcome for an attempt, with its ledger event, in one transaction —
    /// only if the attempt is still in the state `expected` (the one the step started from).
    /// Returns `false`, changing nothing, if it is not: someone else moved it meanwhile.
    pub fn apply(
        &mut self,
        attempt_id: i64,
        expected: AttemptState,
        change: &AttemptChange,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut results = self.apply_all(&[(attempt_id, expected, change, now)])?;
        results.pop().unwrap_or(Ok(false))
    }

    /// Applies several steps' outcomes (of different attempts) in one transaction: a group
    /// commit. Each is applied as [`Store::apply`] would, inside its own savepoint, so one that
    /// fails is rolled back alone and the others are committed; each outcome is committed with
    /// its ledger event. The outer error is for the transaction itself (nothing committed).
    pub fn apply_all(
        &mut self,
        changes: &[(i64, AttemptState, &AttemptChange, DateTime<Utc>)],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        self.require_write("recording a charge outcome")?;
        let what = "recording a charge outcome";
        let path = self.path.clone();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let mut results = Vec::with_capacity(changes.len());
        for (attempt_id, expected, change, now) in changes {
            let savepoint = tx.savepoint().ctx(&path, what)?;
            let result = apply_one(&savepoint, &path, *attempt_id, *expected, change, *now);
            if result.is_ok() {
                savepoint.commit().ctx(&path, what)?;
            }
            // Dropped without a commit: rolled back.
            results.push(result);
        }
        tx.commit().ctx(&path, what)?;
        Ok(results)
    }

    /// Marks an attempt as (possibly) sent, durably, right before its request leaves: from here
    /// on a crash or a lost reply leaves it `pending` with `sent = 1`, which is only ever looked
    /// up, never sent again. `false` if it was no longer in `expected`.
    pub fn mark_sending(
        &mut self,
        attempt_id: i64,
        expected: AttemptState,
        now: DateTime<Utc>,
        wall: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("recording a send")?;
        let changed = cached_execute(
            &self.conn,
            "UPDATE attempts SET state = 'pending', sent = 1, sent_at = ?2, wall_at = ?3, \
                 updated_at = ?2 WHERE id = ?1 AND state = ?4",
            params![
                attempt_id,
                timestamp(now),
                timestamp(wall),
                expected.as_str()
            ],
        )
        .ctx(&self.path, "recording a send")?;
        Ok(changed > 0)
    }

    /// Integrity failures recorded since `since` (for the circuit breaker).
    pub fn quarantines_since(&self, since: DateTime<Utc>) -> Result<u32, StoreError> {
        let count: i64 = cached_query_row(
            &self.conn,
            "SELECT count(*) FROM ledger WHERE kind = ?1 AND at >= ?2",
            params![event::QUARANTINED, timestamp(since)],
            |row| row.get(0),
        )
        .ctx(&self.path, "counting quarantines")?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Why new charges are stopped, if the circuit breaker is open.
    pub fn breaker(&self) -> Result<Option<String>, StoreError> {
        cached_query_row(
            &self.conn,
            "SELECT value FROM meta WHERE key = 'breaker'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ctx(&self.path, "reading the circuit breaker")
    }

    /// Runs one statement in its own write transaction and, if it changed anything, appends
    /// `event` in the same transaction. Returns whether anything changed.
    fn change_with_event(
        &mut self,
        what: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
        subscription_id: Option<&str>,
        event: Event,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write(what)?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let changed = cached_execute(&tx, sql, params).ctx(&path, what)? > 0;
        if changed {
            append(&tx, &path, &timestamp(now), subscription_id, None, &event)?;
        }
        tx.commit().ctx(&path, what)?;
        Ok(changed)
    }

    /// Opens the circuit breaker (idempotent), with a ledger event.
    pub fn open_breaker(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.change_with_event(
            "opening the circuit breaker",
            "INSERT INTO meta (key, value) VALUES ('breaker', ?1) ON CONFLICT (key) DO NOTHING",
            [reason],
            None,
            Event {
                kind: event::BREAKER_OPENED,
                detail: json!({ "reason": reason }),
            },
            now,
        )
        .map(|_| ())
    }

    /// Closes the circuit breaker (an operator's decision), recording who and why.
    pub fn clear_breaker(
        &mut self,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.change_with_event(
            "clearing the circuit breaker",
            "DELETE FROM meta WHERE key = 'breaker'",
            [],
            None,
            Event {
                kind: event::BREAKER_CLEARED,
                detail: json!({ "by": by, "why": why }),
            },
            now,
        )
    }

    /// Why new charges are stopped for the clock, if they are (`meta.clock_hold`).
    pub fn clock_hold(&self) -> Result<Option<String>, StoreError> {
        cached_query_row(
            &self.conn,
            "SELECT value FROM meta WHERE key = 'clock_hold'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ctx(&self.path, "reading the clock hold")
    }

    /// Stops new charges until an operator acknowledges the clock (idempotent: the first
    /// reason stays), with a ledger event.
    pub fn hold_for_clock(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.change_with_event(
            "stopping new charges for a clock jump",
            "INSERT INTO meta (key, value) VALUES ('clock_hold', ?1) ON CONFLICT (key) DO NOTHING",
            [reason],
            None,
            Event {
                kind: event::CLOCK_JUMP,
                detail: json!({ "reason": reason }),
            },
            now,
        )
        .map(|_| ())
    }

    /// The operator's word that the clock is right now: the hold is lifted and the last sweep's
    /// instant forgotten (the next sweep starts from the clock as it is).
    pub fn acknowledge_clock(
        &mut self,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.change_with_event(
            "acknowledging the clock",
            "DELETE FROM meta WHERE key IN ('clock_hold', 'last_sweep_at')",
            [],
            None,
            Event {
                kind: event::CLOCK_ACKNOWLEDGED,
                detail: json!({ "by": by, "why": why }),
            },
            now,
        )
    }

    /// The engine clock's instant at the latest sweep that planned, if any.
    pub fn last_sweep_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let text: Option<String> = cached_query_row(
            &self.conn,
            "SELECT value FROM meta WHERE key = 'last_sweep_at'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ctx(&self.path, "reading the last sweep's instant")?;
        text.map(|t| super::parse_timestamp(&self.path, "meta.last_sweep_at", &t))
            .transpose()
    }

    /// Records the instant of a sweep that planned; never moves it back.
    pub fn set_last_sweep_at(&mut self, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.require_write("recording the sweep's instant")?;
        let at = timestamp(at);
        cached_execute(
            &self.conn,
            "INSERT INTO meta (key, value) VALUES ('last_sweep_at', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            [at],
        )
        .ctx(&self.path, "recording the sweep's instant")
        .map(|_| ())
    }

    /// Why a subscription waits for an operator, if it does.
    pub fn attention(&self, subscription_id: &str) -> Result<Option<String>, StoreError> {
        cached_query_row(
            &self.conn,
            "SELECT reason FROM attention WHERE subscription_id = ?1",
            [subscription_id],
            |row| row.get(0),
        )
        .optional()
        .ctx(&self.path, "reading attention")
    }

    /// Flags the subscription of an attempt for an operator, with its ledger event, in a
    /// transaction of its own (a verified approval that arrived after the attempt was settled
    /// otherwise: a possible double charge).
    pub fn flag_attempt(
        &mut self,
        attempt_id: i64,
        flag: &Flag,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.require_write("flagging a subscription")?;
        let what = "flagging a subscription for an operator";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let (charge_id, subscription_id): (i64, String) = cached_query_row(
            &tx,
            "SELECT a.charge_id, c.subscription_id FROM attempts a \
                 JOIN charges c ON c.id = a.charge_id WHERE a.id = ?1",
            [attempt_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .ctx(&path, what)?;
        raise_flag(
            &tx,
            &path,
            &subscription_id,
            Some(charge_id),
            flag,
            &timestamp(now),
        )?;
        tx.commit().ctx(&path, what)
    }

    /// Lets a flagged subscription be charged again (an operator's decision).
    pub fn clear_attention(
        &mut self,
        subscription_id: &str,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let resumed = self.change_with_event(
            "resuming a subscription",
            "DELETE FROM attention WHERE subscription_id = ?1",
            [subscription_id],
            Some(subscription_id),
            Event {
                kind: event::ATTENTION_CLEARED,
                detail: json!({ "by": by, "why": why }),
            },
            now,
        )?;
        // Planned at the next sweep (a flagged subscription keeps a reached `next_plan_at`
        // anyway; this makes it explicit).
        cached_execute(
            &self.conn,
            "UPDATE subscriptions SET next_plan_at = '' WHERE id = ?1",
            [subscription_id],
        )
        .ctx(&self.path, "resuming a subscription")?;
        Ok(resumed)
    }

    /// Every period row of a subscription (or all), for reports and tests.
    pub fn periods(&self, subscription_id: Option<&str>) -> Result<Vec<PeriodRow>, StoreError> {
        let what = "reading charges";
        let mut statement = self
            .conn
            .prepare(
                "SELECT subscription_id, period, state, reason FROM charges \
                 WHERE (?1 IS NULL OR subscription_id = ?1) AND period IS NOT NULL \
                 ORDER BY subscription_id, period",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([subscription_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, period, state, reason) = row.ctx(&self.path, what)?;
            out.push(PeriodRow {
                subscription_id: id,
                period: u32::try_from(period)
                    .map_err(|_| corrupt(&self.path, "charges.period", period))?,
                state: ChargeState::parse(&state)
                    .ok_or_else(|| corrupt(&self.path, "charges.state", &state))?,
                reason,
            });
        }
        Ok(out)
    }
}

/// One outcome, inside the caller's transaction (see [`Store::apply`]).
pub(super) fn apply_one(
    tx: &rusqlite::Connection,
    path: &Path,
    attempt_id: i64,
    expected: AttemptState,
    change: &AttemptChange,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let what = "recording a charge outcome";
    let path = path.to_path_buf();
    let (charge_id, subscription_id): (i64, String) = cached_query_row(
        tx,
        "SELECT a.charge_id, c.subscription_id FROM attempts a \
             JOIN charges c ON c.id = a.charge_id WHERE a.id = ?1",
        [attempt_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .ctx(&path, what)?;
    let at = timestamp(now);
    let changed = cached_execute(
        tx,
        "UPDATE attempts SET state = ?2, \
             sent = MAX(sent, ?3), \
             sent_at = COALESCE(?14, sent_at), \
             wall_at = COALESCE(?4, wall_at), \
             next_check_at = ?5, \
             checks = checks + ?6, \
             not_found = COALESCE(?7, not_found), \
             test_mode = COALESCE(?8, test_mode), \
             response_code = COALESCE(?9, response_code), \
             checkvalue = COALESCE(?10, checkvalue), \
             detail = COALESCE(?11, detail), \
             seen_at = CASE WHEN ?15 THEN COALESCE(seen_at, ?12) ELSE seen_at END, \
             updated_at = ?12 \
         WHERE id = ?1 AND state = ?13",
        params![
            attempt_id,
            change.state.as_str(),
            i64::from(change.sent),
            change.wall_at.map(timestamp),
            change.next_check_at.map(timestamp),
            i64::from(change.checked),
            change.not_found.map(i64::from),
            change.test_mode.map(i64::from),
            change.response_code,
            change.checkvalue,
            change.detail,
            at,
            expected.as_str(),
            change.sent_at.map(timestamp),
            change.seen,
        ],
    )
    .ctx(&path, what)?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some(charge) = &change.charge {
        cached_execute(
            tx,
            "UPDATE charges SET state = ?2, reason = COALESCE(?3, reason), \
             next_attempt_at = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                charge_id,
                charge.state.as_str(),
                charge.reason,
                charge.next_attempt_at.map(timestamp),
                at
            ],
        )
        .ctx(&path, what)?;
    }
    if !change.state.unresolved() {
        // The attempt is settled: the subscription may be chargeable again (a retry, the
        // next period); the sweep looks at it at once.
        cached_execute(
            tx,
            "UPDATE subscriptions SET next_plan_at = '' WHERE id = ?1",
            [&subscription_id],
        )
        .ctx(&path, what)?;
    }
    if let Some(flag) = &change.attention {
        raise_flag(tx, &path, &subscription_id, Some(charge_id), flag, &at)?;
    }
    if let Some(event) = &change.event {
        append(
            tx,
            &path,
            &at,
            Some(&subscription_id),
            Some(charge_id),
            event,
        )?;
    }
    Ok(true)
}

/// Flags a subscription for an operator. A hard decline does not replace an existing flag; a
/// possible double charge does (keeping the earlier reason in its text), and is also a ledger
/// event of its kind.
pub(super) fn raise_flag(
    tx: &rusqlite::Connection,
    path: &Path,
    subscription_id: &str,
    charge_id: Option<i64>,
    flag: &Flag,
    at: &str,
) -> Result<(), StoreError> {
    let what = "flagging a subscription for an operator";
    if flag.kind == flag::HARD_DECLINE {
        cached_execute(
            tx,
            "INSERT INTO attention (subscription_id, kind, reason, since) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (subscription_id) DO NOTHING",
            params![subscription_id, flag.kind, flag.reason, at],
        )
        .ctx(path, what)?;
        return Ok(());
    }
    cached_execute(
        tx,
        "INSERT INTO attention (subscription_id, kind, reason, since) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (subscription_id) DO UPDATE SET kind = excluded.kind, \
         reason = excluded.reason || ' (flagged before: ' || attention.reason || ')', \
         since = excluded.since",
        params![subscription_id, flag.kind, flag.reason, at],
    )
    .ctx(path, what)?;
    append(
        tx,
        path,
        at,
        Some(subscription_id),
        charge_id,
        &Event {
            kind: flag.kind,
            detail: json!({ "reason": flag.reason }),
        },
    )
}

/// Whether a schedule file was found missing (its subscriptions are held).
pub(super) fn file_missing(
    conn: &rusqlite::Connection,
    path: &Path,
    file: &str,
) -> Result<bool, StoreError> {
    cached_query_row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM schedule_files WHERE file = ?1 \
             AND missing_since IS NOT NULL)",
        [file],
        |row| row.get(0),
    )
    .ctx(path, "reading whether a schedule file is missing")
}

fn charged_instants(
    conn: &rusqlite::Connection,
    path: &Path,
    subscription_id: &str,
    except_attempt: Option<i64>,
) -> Result<Vec<DateTime<Utc>>, StoreError> {
    let what = "reading charge instants";
    let mut statement = conn
        .prepare_cached(
            "SELECT MAX(a.created_at, COALESCE(a.sent_at, a.created_at)) FROM attempts a \
             JOIN charges c ON c.id = a.charge_id \
             WHERE c.subscription_id = ?1 AND a.id IS NOT ?2 \
             AND a.state IN ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined') \
             UNION ALL SELECT at FROM enrolments WHERE subscription_id = ?1 \
             ORDER BY 1",
        )
        .ctx(path, what)?;
    let rows = statement
        .query_map(params![subscription_id, except_attempt], |row| {
            row.get::<_, String>(0)
        })
        .ctx(path, what)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(parse_timestamp(
            path,
            "attempts.created_at",
            &row.ctx(path, what)?,
        )?);
    }
    Ok(out)
}

/// An enrolment's verified initial payment (`recurrentd enroll`), as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentRecord {
    pub subscription_id: String,
    pub order_number: String,
    /// The agreement's billnumber at Assist.
    pub bill_number: String,
    pub amount: Money,
    pub currency: Currency,
    /// The limits sent with the initial payment: what the customer agreed to.
    pub limits: Limits,
    /// When the initial payment was sent.
    pub at: DateTime<Utc>,
}

/// Inserts an enrolment with its ledger event, and has its subscription planned again (its
/// history changed), inside the caller's transaction.
pub(super) fn insert_enrolment(
    tx: &rusqlite::Connection,
    path: &Path,
    enrolment: &EnrolmentRecord,
) -> Result<(), StoreError> {
    let what = "recording an enrolment";
    let limits = &enrolment.limits;
    cached_execute(
        tx,
        "INSERT INTO enrolments (subscription_id, order_number, bill_number, amount_cents, \
         currency, at, min_cents, max_cents, period_days, max_date) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            enrolment.subscription_id,
            enrolment.order_number,
            enrolment.bill_number,
            enrolment.amount.cents(),
            enrolment.currency.as_str(),
            timestamp(enrolment.at),
            limits.min_amount.map(Money::cents),
            limits.max_amount.map(Money::cents),
            limits.period_days.map(i64::from),
            limits.max_date.map(date_text),
        ],
    )
    .ctx(path, what)?;
    let event = Event {
        kind: event::ENROLLED,
        detail: json!({
            "subscription": enrolment.subscription_id,
            "order_number": enrolment.order_number,
            "bill_number": enrolment.bill_number,
            "amount": enrolment.amount.to_string(),
            "currency": enrolment.currency.as_str(),
            "limits": {
                "min_amount": limits.min_amount.map(|m| m.to_string()),
                "max_amount": limits.max_amount.map(|m| m.to_string()),
                "period_days": limits.period_days,
                "max_date": limits.max_date.map(date_text),
            },
        }),
    };
    append(tx, path, &timestamp(enrolment.at), None, None, &event)?;
    // Its history changed: planned again at the next sweep (if its row exists yet).
    cached_execute(
        tx,
        "UPDATE subscriptions SET next_plan_at = '' WHERE id = ?1",
        [&enrolment.subscription_id],
    )
    .ctx(path, what)?;
    Ok(())
}

impl Store {
    /// Whether a subscription id was used by an enrolment.
    pub fn enrolment_exists(&self, subscription_id: &str) -> Result<bool, StoreError> {
        cached_query_row(
            &self.conn,
            "SELECT EXISTS (SELECT 1 FROM enrolments WHERE subscription_id = ?1)",
            [subscription_id],
            |row| row.get(0),
        )
        .ctx(&self.path, "reading enrolments")
    }

    /// Records an enrolment's verified initial payment, so that the agreement's period limit
    /// counts from it and schedule sync holds the subscription to the terms it agreed to (bill
    /// number, currency, limits), with a ledger event.
    pub fn record_enrolment(&mut self, enrolment: &EnrolmentRecord) -> Result<(), StoreError> {
        self.require_write("recording an enrolment")?;
        let what = "recording an enrolment";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        insert_enrolment(&tx, &path, enrolment)?;
        tx.commit().ctx(&path, what)
    }
}

pub(super) fn append(
    tx: &rusqlite::Connection,
    path: &Path,
    at: &str,
    subscription_id: Option<&str>,
    charge_id: Option<i64>,
    event: &Event,
) -> Result<(), StoreError> {
    cached_execute(
        tx,
        "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            at,
            subscription_id,
            charge_id,
            event.kind,
            event.detail.to_string()
        ],
    )
    .ctx(path, "appending to the ledger")?;
    Ok(())
}

/// The columns an [`OpenCharge`] is read from (`c` is the charge row).
const OPEN_CHARGE_COLUMNS: &str = "c.id, c.period, c.reference, c.due_date, c.amount_cents, \
    c.currency, c.bill_number, c.next_attempt_at, \
    (SELECT count(*) FROM attempts a WHERE a.charge_id = c.id), \
    EXISTS (SELECT 1 FROM attempts a WHERE a.charge_id = c.id AND a.state IN \
        ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')), \
    c.created_at";

type OpenChargeRow = (
    i64,
    Option<i64>,
    Option<String>,
    String,
    i64,
    String,
    String,
    Option<String>,
    i64,
    bool,
    String,
);

fn open_charge_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpenChargeRow> {
    OpenChargeRow::try_from(row)
}

fn decode_open_charge(path: &Path, row: OpenChargeRow) -> Result<OpenCharge, StoreError> {
    let (id, period, reference, due, cents, currency, bill, next, attempts, live, created) = row;
    Ok(OpenCharge {
        id,
        purpose: purpose_from_columns(path, period, reference)?,
        due_date: parse_date(path, "charges.due_date", &due)?,
        amount: Money::from_cents(cents)
            .ok_or_else(|| corrupt(path, "charges.amount_cents", cents))?,
        currency: Currency::parse(&currency)
            .map_err(|_| corrupt(path, "charges.currency", &currency))?,
        bill_number: bill,
        next_attempt_at: next
            .map(|t| parse_timestamp(path, "charges.next_attempt_at", &t))
            .transpose()?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        live_attempt: live,
        created_at: parse_timestamp(path, "charges.created_at", &created)?,
    })
}

impl PlanTx<'_> {
    /// The database file (for error messages).
    pub fn path(&self) -> &Path {
        self.path
    }

    /// The subscription's history as of now; `None` if it is unknown or removed.
    pub fn history(&self, subscription_id: &str) -> Result<Option<History>, StoreError> {
        let what = "reading a subscription's history";
        let path = self.path;
        let tx = &self.tx;
        let Some(subscription) = super::read_subscription(tx, path, subscription_id)? else {
            return Ok(None);
        };
        if subscription.removed_at.is_some() || file_missing(tx, path, &subscription.file)? {
            // Removed, or held while its schedule file is missing: not planned.
            return Ok(None);
        }
        let next_period: i64 = cached_query_row(
            tx,
            "SELECT COALESCE(MAX(period) + 1, 0) FROM charges WHERE subscription_id = ?1",
            [subscription_id],
            |row| row.get(0),
        )
        .ctx(path, what)?;
        let charged = charged_instants(tx, path, subscription_id, None)?;
        let open = cached_query_row(
            tx,
            &format!(
                "SELECT {OPEN_CHARGE_COLUMNS} FROM charges c WHERE c.subscription_id = ?1 \
                 AND c.state = 'open' AND c.period IS NOT NULL ORDER BY c.period DESC LIMIT 1"
            ),
            [subscription_id],
            open_charge_row,
        )
        .optional()
        .ctx(path, what)?
        .map(|row| decode_open_charge(path, row))
        .transpose()?;
        let unresolved: bool = cached_query_row(
            tx,
            "SELECT EXISTS (SELECT 1 FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = ?1 AND a.state IN \
                 ('pending', 'not_sent', 'unknown', 'parked', 'quarantined'))",
            [subscription_id],
            |row| row.get(0),
        )
        .ctx(path, what)?;
        let attention: Option<String> = cached_query_row(
            tx,
            "SELECT reason FROM attention WHERE subscription_id = ?1",
            [subscription_id],
            |row| row.get(0),
        )
        .optional()
        .ctx(path, what)?;
        let attempts_last_30_days: i64 = cached_query_row(
            tx,
            "SELECT count(*) FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = ?1 AND a.created_at > ?2",
            params![subscription_id, timestamp(self.now - Duration::days(30))],
            |row| row.get(0),
        )
        .ctx(path, what)?;
        Ok(Some(History {
            subscription,
            next_period: u32::try_from(next_period)
                .map_err(|_| corrupt(path, "charges.period", next_period))?,
            charged,
            open,
            unresolved,
            attention,
            attempts_last_30_days: u32::try_from(attempts_last_30_days).unwrap_or(u32::MAX),
        }))
    }

    /// Records a period settled without a charge (blocked or skipped), with its reason.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError> {
        let what = "recording a settled period";
        let at = timestamp(self.now);
        cached_execute(
            &self.tx,
            "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
                 bill_number, state, reason, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            params![
                subscription.id,
                i64::from(period),
                date_text(due_date),
                subscription.terms.amount.cents(),
                subscription.currency.as_str(),
                subscription.bill_number,
                state.as_str(),
                reason,
                at
            ],
        )
        .ctx(self.path, what)?;
        let charge_id = self.tx.last_insert_rowid();
        append(
            &self.tx,
            self.path,
            &at,
            Some(&subscription.id),
            Some(charge_id),
            &event,
        )
    }

    /// Opens a period for charging: its row, with the amount, currency and bill number copied
    /// from the subscription as it is now.
    pub fn open_period(
        &self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
    ) -> Result<OpenCharge, StoreError> {
        let at = timestamp(self.now);
        cached_execute(
            &self.tx,
            "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
                 bill_number, state, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?7)",
            params![
                subscription.id,
                i64::from(period),
                date_text(due_date),
                subscription.terms.amount.cents(),
                subscription.currency.as_str(),
                subscription.bill_number,
                at
            ],
        )
        .ctx(self.path, "opening a period")?;
        Ok(OpenCharge {
            id: self.tx.last_insert_rowid(),
            purpose: Purpose::Period(period),
            due_date,
            amount: subscription.terms.amount,
            currency: subscription.currency,
            bill_number: subscription.bill_number.clone(),
            next_attempt_at: None,
            attempts: 0,
            live_attempt: false,
            created_at: self.now,
        })
    }

    /// Commits a new attempt for an open period: its OrderNumber is durable before anything is
    /// sent. `wall_at` is the real time now.
    pub fn new_attempt(
        &self,
        subscription_id: &str,
        charge: &OpenCharge,
        order_number: &str,
        wall_at: DateTime<Utc>,
        event: Event,
    ) -> Result<Job, StoreError> {
        let what = "recording a charge intent";
        let at = timestamp(self.now);
        let attempt = charge.attempts + 1;
        cached_execute(
            &self.tx,
            "INSERT INTO attempts (charge_id, attempt, order_number, state, created_at, \
                 wall_at, updated_at) VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?4)",
            params![
                charge.id,
                i64::from(attempt),
                order_number,
                at,
                timestamp(wall_at)
            ],
        )
        .ctx(self.path, what)?;
        let attempt_id = self.tx.last_insert_rowid();
        cached_execute(
            &self.tx,
            "UPDATE charges SET next_attempt_at = NULL, updated_at = ?2 WHERE id = ?1",
            params![charge.id, at],
        )
        .ctx(self.path, what)?;
        append(
            &self.tx,
            self.path,
            &at,
            Some(subscription_id),
            Some(charge.id),
            &event,
        )?;
        Ok(Job {
            attempt_id,
            charge_id: charge.id,
            subscription_id: subscription_id.to_string(),
            purpose: charge.purpose.clone(),
            attempt,
            order_number: order_number.to_string(),
            bill_number: charge.bill_number.clone(),
            amount: charge.amount,
            currency: charge.currency,
            state: AttemptState::Pending,
            created_at: self.now,
            wall_at,
            sent: false,
            checks: 0,
            not_found: 0,
            test_mode: None,
            response_code: None,
            sent_at: None,
            seen: false,
            fence: super::UNFENCED,
        })
    }

    /// Closes an open period that will not be charged (its retry window ended).
    pub fn close_period(
        &self,
        subscription_id: &str,
        charge_id: i64,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError> {
        let at = timestamp(self.now);
        cached_execute(
            &self.tx,
            "UPDATE charges SET state = ?2, reason = ?3, next_attempt_at = NULL, \
                 updated_at = ?4 WHERE id = ?1",
            params![charge_id, state.as_str(), reason, at],
        )
        .ctx(self.path, "closing a period")?;
        append(
            &self.tx,
            self.path,
            &at,
            Some(subscription_id),
            Some(charge_id),
            &event,
        )
    }

    /// The ad-hoc charge of a subscription to attempt first: queued ones (oldest first) before
    /// those open again after an attempt was not received (not before their `next_attempt_at`,
    /// earliest first), so a ready one never waits behind one that is backing off.
    pub fn adhoc_open(&self, subscription_id: &str) -> Result<Option<OpenCharge>, StoreError> {
        let path = self.path;
        cached_query_row(
            &self.tx,
            &format!(
                "SELECT {OPEN_CHARGE_COLUMNS} FROM charges c WHERE c.subscription_id = ?1 \
                 AND c.state = 'open' AND c.reference IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.charge_id = c.id AND a.state IN \
                     ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')) \
                 ORDER BY COALESCE(c.next_attempt_at, ''), c.id LIMIT 1"
            ),
            [subscription_id],
            open_charge_row,
        )
        .optional()
        .ctx(path, "reading queued ad-hoc charges")?
        .map(|row| decode_open_charge(path, row))
        .transpose()
    }

    /// The ad-hoc charge a subscription already has under `reference`, if any.
    pub fn adhoc_by_reference(
        &self,
        subscription_id: &str,
        reference: &str,
    ) -> Result<Option<AdhocCharge>, StoreError> {
        let what = "reading an ad-hoc charge";
        let path = self.path;
        self.tx
            .query_row(
                "SELECT c.amount_cents, c.currency, c.state, c.reason, \
                 (SELECT a.order_number FROM attempts a WHERE a.charge_id = c.id \
                  ORDER BY a.attempt DESC LIMIT 1), \
                 (SELECT a.state FROM attempts a WHERE a.charge_id = c.id \
                  ORDER BY a.attempt DESC LIMIT 1), \
                 EXISTS (SELECT 1 FROM attempts a WHERE a.charge_id = c.id AND a.state IN \
                     ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')), \
                 c.id \
                 FROM charges c WHERE c.subscription_id = ?1 AND c.reference = ?2",
                params![subscription_id, reference],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, bool>(6)?,
                        row.get::<_, i64>(7)?,
                    ))
                },
            )
            .optional()
            .ctx(path, what)?
            .map(
                |(cents, currency, state, reason, order_number, attempt_state, live, id)| {
                    Ok(AdhocCharge {
                        charge_id: id,
                        amount: Money::from_cents(cents)
                            .ok_or_else(|| corrupt(path, "charges.amount_cents", cents))?,
                        currency: Currency::parse(&currency)
                            .map_err(|_| corrupt(path, "charges.currency", &currency))?,
                        state: ChargeState::parse(&state)
                            .ok_or_else(|| corrupt(path, "charges.state", &state))?,
                        reason,
                        order_number,
                        attempt_state: attempt_state
                            .map(|s| {
                                AttemptState::parse(&s)
                                    .ok_or_else(|| corrupt(path, "attempts.state", &s))
                            })
                            .transpose()?,
                        live_attempt: live,
                    })
                },
            )
            .transpose()
    }

    /// Queues an ad-hoc charge (state `open`, no attempt yet) with the subscription's currency
    /// and bill number, and its ledger event. The caller has checked the limits in this same
    /// transaction; the engine checks them again before the attempt is made and before it is
    /// sent.
    pub fn queue_adhoc(
        &self,
        subscription: &StoredSubscription,
        reference: &str,
        amount: Money,
        local_date: NaiveDate,
        event: Event,
    ) -> Result<i64, StoreError> {
        let what = "queueing an ad-hoc charge";
        let at = timestamp(self.now);
        self.tx
            .execute(
                "INSERT INTO charges (subscription_id, reference, due_date, amount_cents, \
                 currency, bill_number, state, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7, ?7)",
                params![
                    subscription.id,
                    reference,
                    date_text(local_date),
                    amount.cents(),
                    subscription.currency.as_str(),
                    subscription.bill_number,
                    at
                ],
            )
            .ctx(self.path, what)?;
        let charge_id = self.tx.last_insert_rowid();
        append(
            &self.tx,
            self.path,
            &at,
            Some(&subscription.id),
            Some(charge_id),
            &event,
        )?;
        Ok(charge_id)
    }

    /// When the due sweep must look at this subscription again (see [`Revisit`]).
    pub fn revisit(&self, subscription_id: &str, revisit: Revisit) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE subscriptions SET next_plan_at = ?2 WHERE id = ?1")
            .and_then(|mut statement| {
                statement.execute(params![subscription_id, super::revisit_text(revisit)])
            })
            .ctx(self.path, "recording when to plan again")?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().ctx(self.path, "committing a plan")
    }
}

/// The SQLite store behind the charge path's boundary. One daemon holds the database (its
/// `flock`), so nobody else can claim an attempt: every job is [`super::UNFENCED`], and the
/// state guard of each write is the whole guard.
impl super::ChargeStore for Store {
    type Plan<'a> = PlanTx<'a>;
    const SHARED: bool = false;

    fn location(&self) -> &Path {
        &self.path
    }

    fn plannable(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        Store::plannable(self, now)
    }

    fn begin_plan(&mut self, now: DateTime<Utc>) -> Result<PlanTx<'_>, StoreError> {
        self.plan(now)
    }

    fn claim_due_attempts(&mut self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.due_attempts(now)
    }

    fn claim_unresolved_attempts(&mut self) -> Result<Vec<Job>, StoreError> {
        self.unresolved_attempts()
    }

    fn count_unresolved(&mut self) -> Result<usize, StoreError> {
        Ok(self.unresolved_attempts()?.len())
    }

    fn attempt_by_id(&mut self, attempt_id: i64) -> Result<Option<Job>, StoreError> {
        self.attempt(attempt_id)
    }

    fn mark_sending(
        &mut self,
        job: &Job,
        expected: AttemptState,
        now: DateTime<Utc>,
        wall: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Store::mark_sending(self, job.attempt_id, expected, now, wall)
    }

    fn apply_outcomes(
        &mut self,
        outcomes: &[super::OutcomeWrite<'_>],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let items: Vec<_> = outcomes
            .iter()
            .map(|o| (o.attempt_id, o.expected, o.change, o.now))
            .collect();
        self.apply_all(&items)
    }

    fn charged_instants(
        &mut self,
        subscription_id: &str,
        except_attempt: Option<i64>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        Store::charged_instants(self, subscription_id, except_attempt)
    }

    fn flag_attempt(
        &mut self,
        attempt_id: i64,
        flag: &Flag,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Store::flag_attempt(self, attempt_id, flag, now)
    }

    fn stored_subscription(
        &mut self,
        subscription_id: &str,
    ) -> Result<Option<StoredSubscription>, StoreError> {
        self.subscription(subscription_id)
    }

    fn breaker_reason(&mut self) -> Result<Option<String>, StoreError> {
        self.breaker()
    }

    fn trip_breaker(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.open_breaker(reason, now)
    }

    fn count_quarantines_since(&mut self, since: DateTime<Utc>) -> Result<u32, StoreError> {
        self.quarantines_since(since)
    }

    fn clock_hold_reason(&mut self) -> Result<Option<String>, StoreError> {
        self.clock_hold()
    }

    fn hold_clock(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.hold_for_clock(reason, now)
    }

    fn last_planned_sweep(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.last_sweep_at()
    }

    fn record_planned_sweep(&mut self, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.set_last_sweep_at(at)
    }
}

impl super::PlanTransaction for PlanTx<'_> {
    fn location(&self) -> &Path {
        self.path
    }

    fn history(&mut self, subscription_id: &str) -> Result<Option<History>, StoreError> {
        PlanTx::history(self, subscription_id)
    }

    fn adhoc_open(&mut self, subscription_id: &str) -> Result<Option<OpenCharge>, StoreError> {
        PlanTx::adhoc_open(self, subscription_id)
    }

    fn settle(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError> {
        PlanTx::settle(self, subscription, period, due_date, state, reason, event)
    }

    fn open_period(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
    ) -> Result<OpenCharge, StoreError> {
        PlanTx::open_period(self, subscription, period, due_date)
    }

    fn new_attempt(
        &mut self,
        subscription_id: &str,
        charge: &OpenCharge,
        order_number: &str,
        wall_at: DateTime<Utc>,
        event: Event,
    ) -> Result<Job, StoreError> {
        PlanTx::new_attempt(self, subscription_id, charge, order_number, wall_at, event)
    }

    fn close_period(
        &mut self,
        subscription_id: &str,
        charge_id: i64,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError> {
        PlanTx::close_period(self, subscription_id, charge_id, state, reason, event)
    }

    fn revisit(&mut self, subscription_id: &str, revisit: Revisit) -> Result<(), StoreError> {
        PlanTx::revisit(self, subscription_id, revisit)
    }

    fn commit(self) -> Result<(), StoreError> {
        PlanTx::commit(self)
    }
}
