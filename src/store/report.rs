//! Read-only views for operators: the history of every attempt, and the daemon's status.
//! Aggregates are single SQL queries, so `status` stays fast on a million subscriptions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{
    AttemptState, ChargeState, Context, Store, StoreError, parse_date, parse_timestamp, timestamp,
};
use crate::money::{Currency, Money};

/// `period` of the history entry of an enrolment's initial payment.
pub const INITIAL_PERIOD: &str = "initial";

/// One entry of `history`: an attempt, a period settled without one, or the initial payment of
/// an enrolment (`period` = [`INITIAL_PERIOD`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRow {
    pub subscription: String,
    /// The billing period's due date (`YYYY-MM-DD`), `adhoc:<reference>` for an ad-hoc charge, or
    /// `initial` for an enrolment's payment.
    pub period: String,
    /// The period's index (0 = the first due date); `null` for an ad-hoc charge and the initial
    /// payment.
    pub period_index: Option<u32>,
    /// 1, 2, ... for attempts; `null` for a period blocked or skipped before any attempt, and for
    /// the initial payment.
    pub attempt: Option<u32>,
    pub order_number: Option<String>,
    pub amount: String,
    pub currency: String,
    /// pending, not_sent, unknown, approved, declined, not_received, quarantined, blocked,
    /// skipped, parked.
    pub state: &'static str,
    /// When the request was (last) sent, on the daemon's clock (RFC 3339, whole seconds); `null`
    /// if never sent.
    pub sent_at: Option<String>,
    pub response_code: Option<String>,
    /// verified, mismatch or absent.
    pub checkvalue: &'static str,
    /// Why a period was blocked or skipped, or what the last answer said.
    pub reason: Option<String>,
    /// When it happened (the attempt's intent, the period's settlement, the initial payment), on
    /// the daemon's clock (the enrolling command's clock for an initial payment); RFC 3339 with
    /// `Z`, whole seconds.
    pub at: String,
    /// How much of an approved charge was refunded (`recurrentd refund`, completed); `null`
    /// when nothing was. The charge stays `approved` and counts for the limits.
    pub refunded: Option<String>,
    /// A refund of it whose outcome is not known yet (its amount); `null` when none.
    pub refund_pending: Option<String>,
}

/// The state an operator sees for an attempt (the history's vocabulary).
fn shown_state(attempt_state: &str) -> &'static str {
    match attempt_state {
        "pending" => "pending",
        "not_sent" => "not_sent",
        "unknown" => "unknown",
        "parked" => "parked",
        "approved" => "approved",
        "declined" => "declined",
        "quarantined" => "quarantined",
        // Sent, and then shown never to have reached the gateway (two not-found lookups after
        // the settle window, or an operator's `resolve --not-charged`). Not `not_sent`: that
        // means provably never left this host.
        "not_received" => "not_received",
        // Refused before it was sent (a limit, a removed subscription).
        "rejected" => "blocked",
        _ => "unknown",
    }
}

/// Where one subscription's billing stands according to the ledger: what `forecast` starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    /// The first period without a row: the next one to settle or charge.
    pub next_period: u32,
    /// Instants of every attempt that charged or may have (the later of intent and latest send),
    /// and of the enrolment's initial payment: what the period limit is reckoned from.
    pub charged: Vec<DateTime<Utc>>,
    /// Engine-clock instants of every attempt (the 30-day attempt budget).
    pub attempts: Vec<DateTime<Utc>>,
    /// Every period row, oldest first (ad-hoc charges are not periods: they are in `charged` and
    /// `attempts`).
    pub periods: Vec<LedgerPeriod>,
    /// Why the subscription waits for an operator (a hard decline), and since when.
    pub attention: Option<(String, DateTime<Utc>)>,
}

/// One billing period as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPeriod {
    pub period: u32,
    pub due_date: NaiveDate,
    pub state: ChargeState,
    pub reason: Option<String>,
    pub amount: Money,
    pub currency: Currency,
    /// When the next attempt may start (an open period after a decline).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The latest attempt, if any.
    pub last_attempt: Option<LastAttempt>,
}

/// The latest attempt of a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAttempt {
    pub attempt: u32,
    pub state: AttemptState,
    pub order_number: String,
    /// The later of its intent and its latest send (engine clock).
    pub at: DateTime<Utc>,
    pub detail: Option<String>,
    /// How much of it was refunded (completed refunds, `recurrentd refund`), if any.
    pub refunded: Option<Money>,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub database: PathBuf,
    /// Whether a daemon holds the database's lock right now.
    pub daemon_running: bool,
    pub subscriptions: BTreeMap<String, u64>,
    pub attempts: BTreeMap<String, u64>,
    pub periods: BTreeMap<String, u64>,
    /// When the oldest attempt whose outcome is not known yet (pending, not sent, unknown,
    /// parked) was made (RFC 3339 UTC, whole seconds).
    pub oldest_unresolved: Option<String>,
    /// The circuit breaker's state: "closed", or "open" (no new charges).
    pub breaker: &'static str,
    /// Why it is open.
    pub breaker_reason: Option<String>,
    /// Why new charges are stopped for the clock (a jump), until `recurrentd clock ack`.
    pub clock_hold: Option<String>,
    pub needs_attention: Vec<Attention>,
    /// The webhook's backlog (`status` fills it in when `[webhook]` is configured).
    pub webhook: Option<super::WebhookStatus>,
}

/// A subscription an operator must look at.
#[derive(Debug, Clone, Serialize)]
pub struct Attention {
    pub subscription: String,
    /// hard_decline, double_approval, late_approval, parked, quarantined, file_missing, books
    /// (a finding of the books comparison, until acknowledged) or refund_pending (a refund whose
    /// outcome is not known yet).
    pub kind: &'static str,
    pub since: String,
    pub detail: String,
    pub order_number: Option<String>,
}

impl Store {
    /// Every attempt and every period settled without one, oldest first; optionally one
    /// subscription's, optionally only from `since` (engine clock).
    pub fn history(
        &self,
        subscription: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let what = "reading the history";
        let mut statement = self
            .conn
            .prepare(
                "SELECT sub, due, period, attempt, order_number, cents, currency, charge_state, \
                 attempt_state, sent_at, sent, response_code, checkvalue, reason, at, reference, \
                 refunded, refund_pending \
                 FROM ( \
                 SELECT c.subscription_id AS sub, c.due_date AS due, c.period AS period, \
                 a.attempt AS attempt, a.order_number AS order_number, c.amount_cents AS cents, \
                 c.currency AS currency, c.state AS charge_state, a.state AS attempt_state, \
                 a.sent_at AS sent_at, a.sent AS sent, a.response_code AS response_code, \
                 a.checkvalue AS checkvalue, COALESCE(a.detail, c.reason) AS reason, \
                 COALESCE(a.created_at, c.created_at) AS at, c.reference AS reference, \
                 (SELECT SUM(amount_cents) FROM refunds r WHERE r.attempt_id = a.id \
                  AND r.state = 'completed') AS refunded, \
                 (SELECT SUM(amount_cents) FROM refunds r WHERE r.attempt_id = a.id \
                  AND r.state = 'pending') AS refund_pending \
                 FROM charges c LEFT JOIN attempts a ON a.charge_id = c.id \
                 WHERE a.id IS NOT NULL OR c.state IN ('blocked', 'skipped', 'failed') \
                 OR c.reference IS NOT NULL \
                 UNION ALL \
                 SELECT subscription_id, 'initial', NULL, NULL, order_number, amount_cents, \
                 currency, 'paid', 'approved', at, 1, NULL, 'verified', \
                 'initial payment (enrolment); bill number ' || bill_number, at, NULL, NULL, NULL \
                 FROM enrolments) \
                 WHERE (?1 IS NULL OR sub = ?1) AND (?2 IS NULL OR at >= ?2) \
                 ORDER BY at, sub, period, attempt",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map(params![subscription, since.map(timestamp)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, Option<String>>(9)?,
                    row.get::<_, Option<i64>>(10)?,
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, Option<String>>(12)?,
                    row.get::<_, Option<String>>(13)?,
                    row.get::<_, String>(14)?,
                    row.get::<_, Option<String>>(15)?,
                    row.get::<_, Option<i64>>(16)?,
                    row.get::<_, Option<i64>>(17)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                subscription,
                due_date,
                period,
                attempt,
                order_number,
                cents,
                currency,
                charge_state,
                attempt_state,
                sent_at,
                sent,
                response_code,
                checkvalue,
                reason,
                at,
                reference,
                refunded,
                refund_pending,
            ) = row.ctx(&self.path, what)?;
            let refund_text =
                |cents: Option<i64>| cents.and_then(Money::from_cents).map(|m| m.to_string());
            let amount = Money::from_cents(cents).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                what: "charges.amount_cents".into(),
                value: cents.to_string(),
            })?;
            let state = match &attempt_state {
                Some(s) => shown_state(s),
                None if charge_state == "skipped" => "skipped",
                // An ad-hoc charge queued for the daemon, no attempt made yet.
                None if charge_state == "open" => "pending",
                None => "blocked",
            };
            let reason = reason.or_else(|| {
                (attempt_state.is_none() && charge_state == "open")
                    .then(|| "queued: the daemon makes the attempt at its next sweep".to_string())
            });
            out.push(HistoryRow {
                subscription,
                period: match &reference {
                    Some(reference) => format!("adhoc:{reference}"),
                    None => due_date,
                },
                period_index: period.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
                attempt: attempt.map(|a| u32::try_from(a).unwrap_or(u32::MAX)),
                order_number,
                amount: amount.to_string(),
                currency,
                state,
                sent_at: sent_at
                    .filter(|_| sent == Some(1))
                    .map(|t| crate::timefmt::normalise(&t)),
                response_code,
                checkvalue: match checkvalue.as_deref() {
                    Some("verified") => "verified",
                    Some("mismatch") => "mismatch",
                    _ => "absent",
                },
                reason,
                at: crate::timefmt::normalise(&at),
                refunded: refund_text(refunded),
                refund_pending: refund_text(refund_pending),
            });
        }
        Ok(out)
    }

    /// Where a subscription's billing stands (for `forecast`); empty for an id the ledger does
    /// not know (save an enrolment's initial payment).
    pub fn ledger_state(&self, subscription_id: &str) -> Result<LedgerState, StoreError> {
        let what = "reading a subscription's ledger";
        let path = &self.path;
        let corrupt = |what: &str, value: String| StoreError::Corrupt {
            path: path.clone(),
            what: what.into(),
            value,
        };
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT c.period, c.due_date, c.state, c.reason, c.amount_cents, c.currency, \
                 c.next_attempt_at, a.attempt, a.state, a.order_number, \
                 MAX(a.created_at, COALESCE(a.sent_at, a.created_at)), a.detail, \
                 (SELECT SUM(amount_cents) FROM refunds r WHERE r.attempt_id = a.id \
                  AND r.state = 'completed') \
                 FROM charges c LEFT JOIN attempts a ON a.id = \
                 (SELECT id FROM attempts WHERE charge_id = c.id ORDER BY attempt DESC LIMIT 1) \
                 WHERE c.subscription_id = ?1 AND c.period IS NOT NULL ORDER BY c.period",
            )
            .ctx(path, what)?;
        let rows = statement
            .query_map([subscription_id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, Option<String>>(6)?,
                    row.get::<_, Option<i64>>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, Option<String>>(9)?,
                    row.get::<_, Option<String>>(10)?,
                    row.get::<_, Option<String>>(11)?,
                    row.get::<_, Option<i64>>(12)?,
                ))
            })
            .ctx(path, what)?;
        let mut periods = Vec::new();
        for row in rows {
            let (
                period,
                due,
                state,
                reason,
                cents,
                currency,
                next,
                attempt,
                a_state,
                order,
                at,
                detail,
                refunded,
            ) = row.ctx(path, what)?;
            let last_attempt = match (attempt, a_state, order, at) {
                (Some(attempt), Some(a_state), Some(order_number), Some(at)) => Some(LastAttempt {
                    attempt: u32::try_from(attempt)
                        .map_err(|_| corrupt("attempts.attempt", attempt.to_string()))?,
                    state: AttemptState::parse(&a_state)
                        .ok_or_else(|| corrupt("attempts.state", a_state.clone()))?,
                    order_number,
                    at: parse_timestamp(path, "attempts.created_at", &at)?,
                    detail,
                    refunded: refunded.and_then(Money::from_cents),
                }),
                _ => None,
            };
            periods.push(LedgerPeriod {
                period: u32::try_from(period)
                    .map_err(|_| corrupt("charges.period", period.to_string()))?,
                due_date: parse_date(path, "charges.due_date", &due)?,
                state: ChargeState::parse(&state)
                    .ok_or_else(|| corrupt("charges.state", state.clone()))?,
                reason,
                amount: Money::from_cents(cents)
                    .ok_or_else(|| corrupt("charges.amount_cents", cents.to_string()))?,
                currency: Currency::parse(&currency)
                    .map_err(|_| corrupt("charges.currency", currency.clone()))?,
                next_attempt_at: next
                    .map(|t| parse_timestamp(path, "charges.next_attempt_at", &t))
                    .transpose()?,
                last_attempt,
            });
        }
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT a.created_at FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = ?1 ORDER BY a.created_at",
            )
            .ctx(path, what)?;
        let attempts = statement
            .query_map([subscription_id], |row| row.get::<_, String>(0))
            .ctx(path, what)?
            .map(|t| parse_timestamp(path, "attempts.created_at", &t.ctx(path, what)?))
            .collect::<Result<Vec<_>, _>>()?;
        let attention = self
            .conn
            .query_row(
                "SELECT reason, since FROM attention WHERE subscription_id = ?1",
                [subscription_id],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
            .ctx(path, what)?
            .map(|(reason, since)| {
                parse_timestamp(path, "attention.since", &since).map(|since| (reason, since))
            })
            .transpose()?;
        Ok(LedgerState {
            next_period: periods.last().map_or(0, |p| p.period.saturating_add(1)),
            charged: self.charged_instants(subscription_id, None)?,
            attempts,
            periods,
            attention,
        })
    }

    /// The daemon's status: counts per state, the oldest unresolved attempt, the breaker, and
    /// what needs an operator.
    pub fn status(&self, daemon_running: bool) -> Result<StatusReport, StoreError> {
        let what = "reading the status";
        let counts = |sql: &str| -> Result<BTreeMap<String, u64>, StoreError> {
            let mut statement = self.conn.prepare(sql).ctx(&self.path, what)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .ctx(&self.path, what)?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (key, n) = row.ctx(&self.path, what)?;
                out.insert(key, u64::try_from(n).unwrap_or(0));
            }
            Ok(out)
        };
        let subscriptions = counts(
            "SELECT CASE WHEN removed_at IS NOT NULL THEN 'removed' ELSE state END, count(*) \
             FROM subscriptions GROUP BY 1",
        )?;
        let attempts = counts("SELECT state, count(*) FROM attempts GROUP BY state")?;
        let periods = counts("SELECT state, count(*) FROM charges GROUP BY state")?;
        let oldest_unresolved: Option<String> = self
            .conn
            .query_row(
                "SELECT min(created_at) FROM attempts \
                 WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined') \
                 AND state IN ('pending', 'not_sent', 'unknown', 'parked')",
                [],
                |row| row.get::<_, Option<String>>(0),
            )
            .optional()
            .ctx(&self.path, what)?
            .flatten()
            .map(|t| crate::timefmt::normalise(&t));
        let breaker = self.breaker()?;
        let clock_hold = self.clock_hold()?;
        let mut needs_attention = Vec::new();
        let mut statement = self
            .conn
            .prepare(
                "SELECT subscription_id, kind, since, reason, NULL FROM attention \
                 UNION ALL \
                 SELECT c.subscription_id, a.state, a.updated_at, COALESCE(a.detail, ''), \
                 a.order_number FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE a.state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined') \
                 AND a.state IN ('parked', 'quarantined') \
                 UNION ALL \
                 SELECT s.id, 'file_missing', f.missing_since, \
                 'held: its schedule file ' || f.file || ' is missing from the folder (restore \
                 it, or confirm with `recurrentd remove-file ' || f.file || '`)', NULL \
                 FROM schedule_files f CROSS JOIN subscriptions s ON s.file = f.file \
                 WHERE f.missing_since IS NOT NULL AND s.removed_at IS NULL \
                 UNION ALL \
                 SELECT c.subscription_id, 'refund_pending', r.created_at, \
                 'refund ' || r.reference || ' of ' || printf('%d.%02d', r.amount_cents / 100, \
                 r.amount_cents % 100) || ' ' || r.currency || ': outcome not known yet (' || \
                 COALESCE(r.detail, 'requested') || '); run the same `recurrentd refund` again', \
                 a.order_number \
                 FROM refunds r JOIN attempts a ON a.id = r.attempt_id \
                 JOIN charges c ON c.id = a.charge_id WHERE r.state = 'pending' \
                 ORDER BY 3",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                ))
            })
            .ctx(&self.path, what)?;
        for row in rows {
            let (subscription, kind, since, detail, order_number) = row.ctx(&self.path, what)?;
            needs_attention.push(Attention {
                subscription,
                kind: match kind.as_str() {
                    "parked" => "parked",
                    "quarantined" => "quarantined",
                    "file_missing" => "file_missing",
                    "double_approval" => "double_approval",
                    "late_approval" => "late_approval",
                    "refund_pending" => "refund_pending",
                    _ => "hard_decline",
                },
                since: crate::timefmt::normalise(&since),
                detail,
                order_number,
            });
        }
        for found in self.book_findings(None)? {
            needs_attention.push(Attention {
                subscription: found.subscription_id.unwrap_or_else(|| "-".to_string()),
                kind: "books",
                since: found.found_at,
                detail: format!(
                    "books {} of {}: {} (finding {}; `recurrentd books --ack {}` once handled)",
                    found.kind, found.date, found.detail, found.id, found.id
                ),
                order_number: Some(found.order_number),
            });
        }
        Ok(StatusReport {
            database: self.path.clone(),
            daemon_running,
            subscriptions,
            attempts,
            periods,
            oldest_unresolved,
            breaker: if breaker.is_some() { "open" } else { "closed" },
            breaker_reason: breaker,
            clock_hold,
            needs_attention,
            webhook: None,
        })
    }

    /// A consistent copy of the database at `target` (`VACUUM INTO`), which must not exist:
    /// created owner-only (it holds the whole ledger), synced to disk with its folder, then
    /// opened again and checked with `PRAGMA integrity_check`. A copy that fails the check, or
    /// that could not be finished, is removed: a backup is either whole and checked or absent.
    pub fn backup_to(&self, target: &Path) -> Result<(), StoreError> {
        self.backup_checked(target, check_copy)
    }

    /// [`Store::backup_to`] with the check of the copy given (tests damage the copy first).
    fn backup_checked(
        &self,
        target: &Path,
        check: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        // An empty file, made here with mode 0600, is what VACUUM INTO fills.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .map_err(|e| self.backup_io(target, "cannot create it", e))?;
        let result = self.write_backup(target).and_then(|()| check(target));
        if result.is_err() {
            // Ours (made above with create_new): never a file someone else put there.
            let _ = std::fs::remove_file(target);
        }
        result
    }

    fn write_backup(&self, target: &Path) -> Result<(), StoreError> {
        let text = target.to_string_lossy().into_owned();
        self.conn
            .execute("VACUUM INTO ?1", [text])
            .ctx(&self.path, "writing the backup")?;
        std::fs::File::open(target)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.backup_io(target, "cannot sync it", e))?;
        if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.backup_io(target, "cannot sync its folder", e))?;
        }
        Ok(())
    }

    fn backup_io(&self, target: &Path, what: &'static str, e: std::io::Error) -> StoreError {
        StoreError::Backup {
            path: self.path.clone(),
            target: target.to_path_buf(),
            what,
            source: e,
        }
    }

    /// When the oldest unresolved attempt was created, as an instant.
    pub fn oldest_unresolved(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT min(created_at) FROM attempts \
                 WHERE state IN ('pending', 'not_sent', 'unknown', 'parked', 'quarantined') \
                 AND state IN ('pending', 'not_sent', 'unknown', 'parked')",
                [],
                |row| row.get(0),
            )
            .ctx(&self.path, "reading the oldest unresolved attempt")?;
        text.map(|t| parse_timestamp(&self.path, "attempts.created_at", &t))
            .transpose()
    }
}

/// `PRAGMA integrity_check` on a backup just written, opened read-only on its own.
fn check_copy(target: &Path) -> Result<(), StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        target,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ctx(target, "opening the backup to check it")?;
    super::check_file(&conn, target, "integrity_check")
}

/// What `backup --verify` found in a copy (see [`verify_copy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// `PRAGMA user_version`: at most [`super::SCHEMA_VERSION`] (an older one is migrated by the
    /// daemon that starts on it).
    pub schema_version: u32,
    /// `wal`, or `delete` for a copy made by `backup`.
    pub journal_mode: String,
    pub order_prefix: String,
    pub created_at: String,
    pub subscriptions: u64,
    pub attempts: u64,
    pub ledger_events: u64,
    /// When the latest ledger event was written (RFC 3339, whole seconds).
    pub last_event_at: Option<String>,
}

/// Checks a backup copy without changing it (opened read-only; never needs write access): the
/// whole file's `PRAGMA integrity_check` ([`StoreError::Damaged`]), that recurrentd wrote it (its
/// `meta` order-number prefix, [`StoreError::NotOurs`]) and a schema version this binary knows
/// ([`StoreError::TooNew`]); then what it holds.
pub fn verify_copy(path: &Path) -> Result<CopyReport, StoreError> {
    if !path.try_exists().unwrap_or(true) {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ctx(path, "opening the copy to verify it")?;
    super::check_file(&conn, path, "integrity_check")?;
    let not_ours = |why: &str| StoreError::NotOurs {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .ctx(path, "reading user_version")?;
    let schema_version =
        u32::try_from(version).map_err(|_| not_ours("a negative schema version"))?;
    if schema_version == 0 {
        return Err(not_ours(
            "no schema version (an empty or foreign SQLite file)",
        ));
    }
    if schema_version > super::SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: schema_version,
            known: super::SCHEMA_VERSION,
        });
    }
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()
        .map_err(|_| not_ours("it has no recurrentd meta table"))
    };
    let order_prefix =
        meta("order_prefix")?.ok_or_else(|| not_ours("it has no order-number prefix"))?;
    let created_at =
        meta("created_at")?.map_or_else(|| "-".into(), |t| crate::timefmt::normalise(&t));
    let count = |table: &str| -> Result<u64, StoreError> {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|_| not_ours(&format!("it has no {table} table")))
    };
    let last_event_at: Option<String> = conn
        .query_row("SELECT max(at) FROM ledger", [], |row| row.get(0))
        .map_err(|_| not_ours("it has no ledger table"))?;
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .ctx(path, "reading journal_mode")?;
    Ok(CopyReport {
        schema_version,
        journal_mode,
        order_prefix,
        created_at,
        subscriptions: count("subscriptions")?,
        attempts: count("attempts")?,
        ledger_events: count("ledger")?,
        last_event_at: last_event_at.map(|t| crate::timefmt::normalise(&t)),
    })
}

/// Whether a daemon holds the lock of the database at `path` right now.
pub fn daemon_running(path: &Path) -> bool {
    let mut lock = path.as_os_str().to_owned();
    lock.push(".lock");
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(PathBuf::from(lock))
    {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;
