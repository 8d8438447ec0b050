//! Enrolments in progress (`recurrentd enroll`): an attempt is recorded `pending` before its
//! Token Pay request is sent, and settled only by what the gateway verifiably says: booked (the
//! `enrolments` row and its `enrolled` event, in the same transaction) or closed as not charged.
//! Every change is guarded by the state `pending`, so two runs can never settle one attempt
//! twice, and the unique index on pending attempts keeps a second one for the same subscription
//! from being recorded while one is pending.

use std::path::Path;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::json;

use super::charges::{EnrolmentRecord, append, corrupt, insert_enrolment};
use super::{
    Context, Store, StoreError, cached_query_row, date_text, parse_date, parse_timestamp, timestamp,
};
use crate::billing::Limits;
use crate::money::{Currency, Money};

/// Ledger event kinds of an enrolment attempt (`enrolled` is [`super::event::ENROLLED`]).
pub mod enrolment_event {
    /// Recorded before the Token Pay request was sent.
    pub const PENDING: &str = "enrolment_pending";
    /// Closed: the gateway verifiably did not charge it (declined, never filed, never sent, our
    /// configuration refused).
    pub const NOT_CHARGED: &str = "enrolment_not_charged";
}

/// Where an enrolment attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrolmentState {
    /// Recorded before sending; its outcome is not known yet.
    Pending,
    /// Paid, verified, booked in `enrolments`.
    Approved,
    /// Declined (a verified answer, or a fault the order's status confirmed).
    Declined,
    /// Not filed by the gateway: looked up after the settle window, never seen.
    NotFound,
    /// Provably never left this host.
    NotSent,
    /// Our configuration was refused (credentials, signature): not taken in.
    Rejected,
}

impl EnrolmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrolmentState::Pending => "pending",
            EnrolmentState::Approved => "approved",
            EnrolmentState::Declined => "declined",
            EnrolmentState::NotFound => "not_found",
            EnrolmentState::NotSent => "not_sent",
            EnrolmentState::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<EnrolmentState> {
        [
            EnrolmentState::Pending,
            EnrolmentState::Approved,
            EnrolmentState::Declined,
            EnrolmentState::NotFound,
            EnrolmentState::NotSent,
            EnrolmentState::Rejected,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One enrolment attempt: what was (or is about to be) sent, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentAttempt {
    pub order_number: String,
    pub subscription_id: String,
    pub state: EnrolmentState,
    pub customer: String,
    pub amount: Money,
    pub currency: Currency,
    /// The cadence, as a schedule file writes it (`1 month`).
    pub cadence: String,
    /// The first scheduled charge.
    pub start: NaiveDate,
    pub min_amount: Money,
    pub max_amount: Money,
    pub period_days: u32,
    pub max_date: NaiveDate,
    /// Real time just before the request was sent.
    pub created_at: DateTime<Utc>,
    /// The gateway has shown that it holds the order.
    pub seen: bool,
    pub bill_number: Option<String>,
    /// Why it is still pending, or why it was closed.
    pub reason: Option<String>,
}

impl EnrolmentAttempt {
    /// The limits sent with it, as a schedule file's.
    pub fn limits(&self) -> Limits {
        Limits {
            min_amount: Some(self.min_amount),
            max_amount: Some(self.max_amount),
            period_days: Some(self.period_days),
            max_date: Some(self.max_date),
        }
    }
}

/// Who holds an order number among enrolments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderUse {
    pub subscription_id: String,
    /// The attempt's state; `approved` also for an enrolment booked before attempts were kept.
    pub state: EnrolmentState,
}

const COLUMNS: &str = "order_number, subscription_id, state, customer, amount_cents, currency, \
    cadence, start_date, min_cents, max_cents, period_days, max_date, created_at, \
    seen_at IS NOT NULL, bill_number, reason";

type Row = (
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    String,
    bool,
    Option<String>,
    Option<String>,
);

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Row::try_from(row)
}

fn decode(path: &Path, r: Row) -> Result<EnrolmentAttempt, StoreError> {
    let money =
        |what: &str, cents: i64| Money::from_cents(cents).ok_or_else(|| corrupt(path, what, cents));
    Ok(EnrolmentAttempt {
        order_number: r.0,
        subscription_id: r.1,
        state: EnrolmentState::parse(&r.2)
            .ok_or_else(|| corrupt(path, "enrolment_attempts.state", &r.2))?,
        customer: r.3,
        amount: money("enrolment_attempts.amount_cents", r.4)?,
        currency: Currency::parse(&r.5)
            .map_err(|_| corrupt(path, "enrolment_attempts.currency", &r.5))?,
        cadence: r.6,
        start: parse_date(path, "enrolment_attempts.start_date", &r.7)?,
        min_amount: money("enrolment_attempts.min_cents", r.8)?,
        max_amount: money("enrolment_attempts.max_cents", r.9)?,
        period_days: u32::try_from(r.10)
            .map_err(|_| corrupt(path, "enrolment_attempts.period_days", r.10))?,
        max_date: parse_date(path, "enrolment_attempts.max_date", &r.11)?,
        created_at: parse_timestamp(path, "enrolment_attempts.created_at", &r.12)?,
        seen: r.13,
        bill_number: r.14,
        reason: r.15,
    })
}

impl Store {
    /// The subscription's pending enrolment attempt, if it has one (at most one).
    pub fn pending_enrolment(
        &self,
        subscription_id: &str,
    ) -> Result<Option<EnrolmentAttempt>, StoreError> {
        let what = "reading pending enrolments";
        cached_query_row(
            &self.conn,
            &format!(
                "SELECT {COLUMNS} FROM enrolment_attempts \
                 WHERE subscription_id = ?1 AND state = 'pending'"
            ),
            [subscription_id],
            row,
        )
        .optional()
        .ctx(&self.path, what)?
        .map(|r| decode(&self.path, r))
        .transpose()
    }

    /// The attempt under an order number, if there is one.
    pub fn enrolment_attempt(
        &self,
        order_number: &str,
    ) -> Result<Option<EnrolmentAttempt>, StoreError> {
        cached_query_row(
            &self.conn,
            &format!("SELECT {COLUMNS} FROM enrolment_attempts WHERE order_number = ?1"),
            [order_number],
            row,
        )
        .optional()
        .ctx(&self.path, "reading an enrolment attempt")?
        .map(|r| decode(&self.path, r))
        .transpose()
    }

    /// Whether an enrolment attempt or a booked enrolment already used this order number.
    pub fn enrolment_order_use(&self, order_number: &str) -> Result<Option<OrderUse>, StoreError> {
        let found: Option<(String, String)> = cached_query_row(
            &self.conn,
            "SELECT subscription_id, state FROM enrolment_attempts WHERE order_number = ?1 \
             UNION ALL SELECT subscription_id, 'approved' FROM enrolments \
             WHERE order_number = ?1 LIMIT 1",
            [order_number],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .ctx(&self.path, "reading enrolment order numbers")?;
        found
            .map(|(subscription_id, state)| {
                Ok(OrderUse {
                    subscription_id,
                    state: EnrolmentState::parse(&state)
                        .ok_or_else(|| corrupt(&self.path, "enrolment_attempts.state", &state))?,
                })
            })
            .transpose()
    }

    /// How many enrolment attempts a subscription has had.
    pub fn enrolment_attempt_count(&self, subscription_id: &str) -> Result<u32, StoreError> {
        let count: i64 = cached_query_row(
            &self.conn,
            "SELECT count(*) FROM enrolment_attempts WHERE subscription_id = ?1",
            [subscription_id],
            |row| row.get(0),
        )
        .ctx(&self.path, "counting enrolment attempts")?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Records an attempt as pending, with its ledger event, before its request is sent. Fails
    /// (nothing recorded) if the order number was used or the subscription has a pending one.
    pub fn record_pending_enrolment(
        &mut self,
        attempt: &EnrolmentAttempt,
    ) -> Result<(), StoreError> {
        self.require_write("recording an enrolment attempt")?;
        let what = "recording an enrolment attempt";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let at = timestamp(attempt.created_at);
        tx.execute(
            "INSERT INTO enrolment_attempts (order_number, subscription_id, state, customer, \
             amount_cents, currency, cadence, start_date, min_cents, max_cents, period_days, \
             max_date, created_at, updated_at) \
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)",
            params![
                attempt.order_number,
                attempt.subscription_id,
                attempt.customer,
                attempt.amount.cents(),
                attempt.currency.as_str(),
                attempt.cadence,
                date_text(attempt.start),
                attempt.min_amount.cents(),
                attempt.max_amount.cents(),
                i64::from(attempt.period_days),
                date_text(attempt.max_date),
                at,
            ],
        )
        .ctx(&path, what)?;
        let event = super::Event {
            kind: enrolment_event::PENDING,
            detail: json!({
                "subscription": attempt.subscription_id,
                "order_number": attempt.order_number,
                "customer": attempt.customer,
                "amount": attempt.amount.to_string(),
                "currency": attempt.currency.as_str(),
                "limits": {
                    "min_amount": attempt.min_amount.to_string(),
                    "max_amount": attempt.max_amount.to_string(),
                    "period_days": attempt.period_days,
                    "max_date": date_text(attempt.max_date),
                },
            }),
        };
        append(&tx, &path, &at, None, None, &event)?;
        tx.commit().ctx(&path, what)
    }

    /// Keeps a pending attempt pending: notes why, and that the gateway showed the order when it
    /// did. Nothing changes if it is no longer pending.
    pub fn keep_enrolment_pending(
        &mut self,
        order_number: &str,
        seen: bool,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.require_write("updating an enrolment attempt")?;
        let at = timestamp(at);
        self.conn
            .execute(
                "UPDATE enrolment_attempts SET reason = ?2, updated_at = ?3, \
                 seen_at = CASE WHEN ?4 THEN COALESCE(seen_at, ?3) ELSE seen_at END \
                 WHERE order_number = ?1 AND state = 'pending'",
                params![order_number, reason, at, seen],
            )
            .ctx(&self.path, "updating an enrolment attempt")?;
        Ok(())
    }

    /// Books a pending attempt as paid (verified): its `enrolments` row (with the limits sent)
    /// and `enrolled` event, in one transaction guarded by the state `pending`. `Ok(false)`:
    /// it was no longer pending (another run settled it), nothing written.
    pub fn book_enrolment(
        &mut self,
        order_number: &str,
        bill_number: &str,
        paid_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("booking an enrolment")?;
        let what = "booking an enrolment";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let attempt = tx
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM enrolment_attempts \
                     WHERE order_number = ?1 AND state = 'pending'"
                ),
                [order_number],
                row,
            )
            .optional()
            .ctx(&path, what)?
            .map(|r| decode(&path, r))
            .transpose()?;
        let Some(attempt) = attempt else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE enrolment_attempts SET state = 'approved', bill_number = ?2, \
             reason = NULL, updated_at = ?3, seen_at = COALESCE(seen_at, ?3) \
             WHERE order_number = ?1 AND state = 'pending'",
            params![order_number, bill_number, timestamp(now)],
        )
        .ctx(&path, what)?;
        insert_enrolment(
            &tx,
            &path,
            &EnrolmentRecord {
                subscription_id: attempt.subscription_id.clone(),
                order_number: attempt.order_number.clone(),
                bill_number: bill_number.to_string(),
                amount: attempt.amount,
                currency: attempt.currency,
                limits: attempt.limits(),
                at: paid_at,
            },
        )?;
        tx.commit().ctx(&path, what)?;
        Ok(true)
    }

    /// Closes a pending attempt as not charged (`state`: declined, not found, not sent or
    /// rejected) with its reason and an `enrolment_not_charged` event, guarded by the state
    /// `pending`. `Ok(false)`: it was no longer pending, nothing written.
    pub fn close_enrolment(
        &mut self,
        order_number: &str,
        state: EnrolmentState,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("closing an enrolment attempt")?;
        let what = "closing an enrolment attempt";
        if matches!(state, EnrolmentState::Pending | EnrolmentState::Approved) {
            return Err(corrupt(&self.path, what, state.as_str()));
        }
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let subscription: Option<String> = tx
            .query_row(
                "SELECT subscription_id FROM enrolment_attempts \
                 WHERE order_number = ?1 AND state = 'pending'",
                [order_number],
                |row| row.get(0),
            )
            .optional()
            .ctx(&path, what)?;
        let Some(subscription) = subscription else {
            return Ok(false);
        };
        let at = timestamp(now);
        tx.execute(
            "UPDATE enrolment_attempts SET state = ?2, reason = ?3, updated_at = ?4 \
             WHERE order_number = ?1 AND state = 'pending'",
            params![order_number, state.as_str(), reason, at],
        )
        .ctx(&path, what)?;
        let event = super::Event {
            kind: enrolment_event::NOT_CHARGED,
            detail: json!({
                "subscription": subscription,
                "order_number": order_number,
                "state": state.as_str(),
                "reason": reason,
            }),
        };
        append(&tx, &path, &at, None, None, &event)?;
        tx.commit().ctx(&path, what)?;
        Ok(true)
    }
}
