//! The outbox: the ledger events a merchant's systems are told about, read for `recurrentd
//! events` and delivered by the webhook (`crate::outbox`).
//!
//! Rows are made by the trigger `ledger_to_outbox` (migration 8), in the transaction that
//! inserts the ledger event, so no path that writes the ledger can forget one. An event is read
//! from its ledger row, exactly as recorded; its cursor is the outbox row id (monotonic). The
//! webhook's delivery state lives beside it: `pending` (with its backoff), `delivered`, `dead`.

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{TransactionBehavior, params};

use super::{Context, Store, StoreError, cached_query_row, parse_timestamp, timestamp};

/// One event of the outbox, as consumers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The outbox row id: `events --since CURSOR` resumes after it.
    pub cursor: i64,
    /// Stable and unique across databases: `evt_<order-number prefix>_<cursor>`.
    pub id: String,
    /// The ledger event's kind (`charge_approved`, `subscription_updated`, …).
    pub kind: String,
    /// The ledger event's instant (the engine's clock).
    pub created_at: DateTime<Utc>,
    pub subscription: Option<String>,
    /// The ledger event's detail, as recorded (amounts are strings).
    pub data: serde_json::Value,
    /// Webhook delivery: `pending`, `delivered` or `dead`.
    pub delivery: String,
}

impl OutboxEvent {
    /// The event as JSON: one line of `events --json`, and the webhook's body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "cursor": self.cursor,
            "type": self.kind,
            "created_at": self.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "subscription": self.subscription,
            "data": self.data,
        })
    }
}

/// An event due for a webhook delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event: OutboxEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the first attempt was made (dead-lettering counts from it).
    pub first_attempt_at: Option<DateTime<Utc>>,
}

/// The webhook's backlog, for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Events not delivered yet (and not dead).
    pub undelivered: u64,
    /// Events given up on (`webhook.dead_letter_after_days`).
    pub dead: u64,
    /// The instant of the oldest undelivered event.
    pub oldest_undelivered_at: Option<DateTime<Utc>>,
}

impl OutboxBacklog {
    /// What `status` shows, at `now`.
    pub fn status(&self, now: DateTime<Utc>) -> WebhookStatus {
        WebhookStatus {
            undelivered: self.undelivered,
            dead: self.dead,
            oldest_undelivered_at: self
                .oldest_undelivered_at
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            oldest_undelivered_age_seconds: self
                .oldest_undelivered_at
                .map(|t| (now - t).num_seconds().max(0)),
        }
    }
}

/// The webhook's backlog as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookStatus {
    pub undelivered: u64,
    /// Given up on after `webhook.dead_letter_after_days`: `events --redeliver-dead`.
    pub dead: u64,
    pub oldest_undelivered_at: Option<String>,
    pub oldest_undelivered_age_seconds: Option<i64>,
}

const EVENT_COLUMNS: &str = "o.id, l.kind, l.at, coalesce(l.subscription_id, json_extract(l.detail, '$.subscription')), \
     l.detail, o.state";

type EventRow = (i64, String, String, Option<String>, String, String);

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

impl Store {
    fn outbox_event(&self, prefix: &str, row: EventRow) -> Result<OutboxEvent, StoreError> {
        let (cursor, kind, at, subscription, detail, delivery) = row;
        let what = "reading the outbox";
        let data = serde_json::from_str(&detail).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("{what}: ledger detail"),
            value: detail.clone(),
        })?;
        Ok(OutboxEvent {
            cursor,
            id: format!("evt_{prefix}_{cursor}"),
            kind,
            created_at: parse_timestamp(&self.path, what, &at)?,
            subscription,
            data,
            delivery,
        })
    }

    /// The events after `cursor` (exclusive), oldest first, at most `limit`.
    pub fn events_after(&self, cursor: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        let what = "reading the outbox";
        let prefix = self.order_prefix()?;
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM outbox o JOIN ledger l ON l.seq = o.ledger_seq \
                 WHERE o.id > ?1 ORDER BY o.id LIMIT ?2"
            ))
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map(
                params![cursor, i64::try_from(limit).unwrap_or(i64::MAX)],
                event_row,
            )
            .ctx(&self.path, what)?
            .collect::<Result<Vec<_>, _>>()
            .ctx(&self.path, what)?;
        rows.into_iter()
            .map(|row| self.outbox_event(&prefix, row))
            .collect()
    }

    /// The events the webhook may attempt at `now`: pending, their backoff over, and the first
    /// pending event of their stream (an event waits while an earlier one of its subscription
    /// is pending). So no two share a subscription. Oldest first, at most `limit`. The pending
    /// events are walked in id order (`outbox_pending_by_id`; the `+` keeps SQLite off the
    /// backoff index, which would sort every pending event to return a few).
    pub fn outbox_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let what = "reading the outbox";
        let prefix = self.order_prefix()?;
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS}, o.attempts, o.first_attempt_at \
                 FROM outbox o JOIN ledger l ON l.seq = o.ledger_seq \
                 WHERE o.state = 'pending' AND +o.next_attempt_at <= ?1 \
                   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' \
                                   AND p.stream = o.stream AND p.id < o.id) \
                 ORDER BY o.id LIMIT ?2"
            ))
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map(
                params![timestamp(now), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| Ok((event_row(row)?, row.get::<_, i64>(6)?, row.get(7)?)),
            )
            .ctx(&self.path, what)?
            .collect::<Result<Vec<(EventRow, i64, Option<String>)>, _>>()
            .ctx(&self.path, what)?;
        rows.into_iter()
            .map(|(row, attempts, first)| {
                Ok(Delivery {
                    event: self.outbox_event(&prefix, row)?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    first_attempt_at: first
                        .map(|t| parse_timestamp(&self.path, what, &t))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Records a delivered event (a 2xx answer). False when it was not pending any more.
    pub fn outbox_delivered(
        &mut self,
        cursor: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("recording a webhook delivery")?;
        let at = timestamp(now);
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET state = 'delivered', delivered_at = ?2, attempts = attempts + 1, \
                 first_attempt_at = coalesce(first_attempt_at, ?2), last_error = NULL \
                 WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut s| s.execute(params![cursor, at]))
            .ctx(&self.path, "recording a webhook delivery")?;
        Ok(changed == 1)
    }

    /// Records a failed attempt: tried again at `retry_at`, or, with `dead`, given up on (the
    /// dead letter). False when it was not pending any more.
    pub fn outbox_failed(
        &mut self,
        cursor: i64,
        now: DateTime<Utc>,
        error: &str,
        retry_at: DateTime<Utc>,
        dead: bool,
    ) -> Result<bool, StoreError> {
        self.require_write("recording a failed webhook delivery")?;
        let at = timestamp(now);
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, \
                 first_attempt_at = coalesce(first_attempt_at, ?2), last_error = ?3, \
                 next_attempt_at = ?4, \
                 state = CASE WHEN ?5 THEN 'dead' ELSE 'pending' END, \
                 dead_at = CASE WHEN ?5 THEN ?2 END \
                 WHERE id = ?1 AND state = 'pending'",
            )
            .and_then(|mut s| s.execute(params![cursor, at, error, timestamp(retry_at), dead]))
            .ctx(&self.path, "recording a failed webhook delivery")?;
        Ok(changed == 1)
    }

    /// Puts every dead event back to pending, due now (an operator's `events --redeliver-dead`).
    /// Returns how many.
    pub fn outbox_revive_dead(&mut self) -> Result<u64, StoreError> {
        self.require_write("re-queuing dead webhook events")?;
        let what = "re-queuing dead webhook events";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        let changed = tx
            .execute(
                "UPDATE outbox SET state = 'pending', dead_at = NULL, next_attempt_at = '', \
                 first_attempt_at = NULL WHERE state = 'dead'",
                [],
            )
            .ctx(&self.path, what)?;
        tx.commit().ctx(&self.path, what)?;
        Ok(changed as u64)
    }

    /// The webhook's backlog: events not delivered yet, dead ones, the oldest undelivered.
    pub fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let what = "reading the outbox backlog";
        let (undelivered, oldest): (i64, Option<String>) = cached_query_row(
            &self.conn,
            "SELECT count(*), (SELECT l.at FROM outbox o JOIN ledger l ON l.seq = o.ledger_seq \
                               WHERE o.state = 'pending' ORDER BY o.id LIMIT 1) \
             FROM outbox WHERE state = 'pending'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .ctx(&self.path, what)?;
        let dead: i64 = cached_query_row(
            &self.conn,
            "SELECT count(*) FROM outbox WHERE state = 'dead'",
            [],
            |row| row.get(0),
        )
        .ctx(&self.path, what)?;
        Ok(OutboxBacklog {
            undelivered: u64::try_from(undelivered).unwrap_or(0),
            dead: u64::try_from(dead).unwrap_or(0),
            oldest_undelivered_at: oldest
                .map(|t| parse_timestamp(&self.path, what, &t))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests;
