//! The books comparison's tables (`book_runs`, `book_findings`): what the ledger says for a
//! window, and the findings, each written with its ledger event in one transaction.
//!
//! The comparison itself is `crate::books`; this module only reads what it needs and records
//! what it found. A finding is unique per (date, kind, order number): running the same date
//! again records nothing twice, and a late approval is booked through the same guarded path as
//! the engine's outcomes ([`Store::book_late_approval`]: only from the state it was read in).

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::charges::{append, apply_one, raise_flag};
use super::{Context, Store, StoreError, cached_query_row, date_text, parse_timestamp, timestamp};
use crate::lifecycle::{AttemptChange, AttemptState, Event, Flag, Job};

/// Ledger kind of a day whose books matched the ledger.
pub const BOOKS_CLEAN: &str = "books_clean";
/// Ledger kind of an operator's acknowledgement of a finding.
pub const BOOKS_ACKNOWLEDGED: &str = "books_acknowledged";

/// A mismatch to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFinding {
    /// Ledger kind `books_<kind>`.
    pub ledger_kind: &'static str,
    /// The finding's kind without the prefix.
    pub kind: &'static str,
    pub order_number: String,
    pub subscription_id: Option<String>,
    pub charge_id: Option<i64>,
    pub detail: Value,
    /// Hold the subscription for an operator (a possible double charge).
    pub hold: Option<Flag>,
}

/// A recorded finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BookFinding {
    pub id: i64,
    /// The local date compared.
    pub date: String,
    pub kind: String,
    pub order_number: String,
    pub subscription_id: Option<String>,
    pub detail: Value,
    /// RFC 3339 UTC.
    pub found_at: String,
    pub acknowledged: bool,
}

/// What a run recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRecorded {
    /// Findings new in this run.
    pub new_findings: usize,
    /// Whether this run wrote the day's `books_clean` event.
    pub clean_event: bool,
}

impl Store {
    /// Attempts the ledger shows approved whose latest request left inside `[start, end)` (real
    /// time), with an OrderNumber under this database's prefix (through the partial index
    /// `attempts_approved_by_wall`).
    pub fn approved_attempts_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<Job>, StoreError> {
        let prefix = format!("{}-", self.order_prefix()?);
        self.jobs(
            "WHERE a.state = 'approved' AND a.wall_at >= ?1 AND a.wall_at < ?2 \
             AND substr(a.order_number, 1, length(?3)) = ?3 ORDER BY a.id",
            params![timestamp(start), timestamp(end), prefix],
        )
    }

    /// The last date the daemon's daily sweep compared (`meta.books_through`).
    pub fn books_through(&self) -> Result<Option<NaiveDate>, StoreError> {
        let text: Option<String> = cached_query_row(
            &self.conn,
            "SELECT value FROM meta WHERE key = 'books_through'",
            [],
            |row| row.get(0),
        )
        .optional()
        .ctx(&self.path, "reading meta.books_through")?;
        Ok(text.and_then(|t| NaiveDate::parse_from_str(&t, "%Y-%m-%d").ok()))
    }

    /// Records that the daemon's daily sweep compared `date` (never moves back).
    pub fn set_books_through(&mut self, date: NaiveDate) -> Result<(), StoreError> {
        self.require_write("recording the books sweep's progress")?;
        cached_query_row(
            &self.conn,
            "INSERT INTO meta (key, value) VALUES ('books_through', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value) RETURNING value",
            [date_text(date)],
            |row| row.get::<_, String>(0),
        )
        .ctx(&self.path, "recording the books sweep's progress")
        .map(|_| ())
    }

    /// Whether the daemon (or an operator) already compared this date.
    pub fn book_run_exists(&self, date: NaiveDate) -> Result<bool, StoreError> {
        cached_query_row(
            &self.conn,
            "SELECT EXISTS (SELECT 1 FROM book_runs WHERE date = ?1)",
            [date_text(date)],
            |row| row.get(0),
        )
        .ctx(&self.path, "reading the books runs")
    }

    /// Records a run for `date` and its findings, in one transaction: each finding not recorded
    /// before for this date is a `book_findings` row, a ledger event of its kind and, with a
    /// hold, an attention flag on its subscription. A date with no finding at all gets one
    /// `books_clean` event, on its first run.
    pub fn record_book_run(
        &mut self,
        date: NaiveDate,
        window: (DateTime<Utc>, DateTime<Utc>),
        records: usize,
        findings: &[NewFinding],
        now: DateTime<Utc>,
    ) -> Result<RunRecorded, StoreError> {
        self.require_write("recording the books comparison")?;
        let what = "recording the books comparison";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let at = timestamp(now);
        let day = date_text(date);
        let first_run: bool = !tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM book_runs WHERE date = ?1)",
                [&day],
                |row| row.get(0),
            )
            .ctx(&path, what)?;
        tx.execute(
            "INSERT INTO book_runs (date, window_start, window_end, first_run_at, last_run_at, \
                 runs, records) VALUES (?1, ?2, ?3, ?4, ?4, 1, ?5) \
             ON CONFLICT (date) DO UPDATE SET last_run_at = excluded.last_run_at, \
                 runs = runs + 1, records = excluded.records",
            params![
                day,
                timestamp(window.0),
                timestamp(window.1),
                at,
                i64::try_from(records).unwrap_or(i64::MAX)
            ],
        )
        .ctx(&path, what)?;
        let mut new_findings = 0;
        for finding in findings {
            if insert_finding(&tx, &path, &day, finding, &at)? {
                new_findings += 1;
            }
        }
        let total: i64 = tx
            .query_row(
                "SELECT count(*) FROM book_findings WHERE date = ?1",
                [&day],
                |row| row.get(0),
            )
            .ctx(&path, what)?;
        let clean_event = first_run && total == 0;
        if clean_event {
            append(
                &tx,
                &path,
                &at,
                None,
                None,
                &Event {
                    kind: BOOKS_CLEAN,
                    detail: json!({
                        "date": day,
                        "window_start": timestamp(window.0),
                        "window_end": timestamp(window.1),
                        "orders": records,
                    }),
                },
            )?;
        }
        tx.commit().ctx(&path, what)?;
        Ok(RunRecorded {
            new_findings,
            clean_event,
        })
    }

    /// Books a verified late approval the gateway's books show for an attempt still unresolved
    /// or quarantined, with its finding, in one transaction — only if the attempt is still in
    /// `expected` (the engine's guard). `false`, changing nothing, if it moved meanwhile.
    pub fn book_late_approval(
        &mut self,
        date: NaiveDate,
        attempt_id: i64,
        expected: AttemptState,
        change: &AttemptChange,
        finding: &NewFinding,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("booking a late approval")?;
        let what = "booking a late approval from the gateway's books";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        if !apply_one(&tx, &path, attempt_id, expected, change, now)? {
            return Ok(false);
        }
        insert_finding(&tx, &path, &date_text(date), finding, &timestamp(now))?;
        tx.commit().ctx(&path, what)?;
        Ok(true)
    }

    /// The findings of one date, or every unacknowledged one (`None`), oldest first.
    pub fn book_findings(&self, date: Option<NaiveDate>) -> Result<Vec<BookFinding>, StoreError> {
        let what = "reading the books findings";
        let mut statement = self
            .conn
            .prepare(
                "SELECT id, date, kind, order_number, subscription_id, detail, found_at, \
                     acknowledged_at IS NOT NULL FROM book_findings \
                 WHERE (?1 IS NULL AND acknowledged_at IS NULL) OR date = ?1 ORDER BY id",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([date.map(date_text)], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, bool>(7)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, date, kind, order_number, subscription_id, detail, found_at, acknowledged) =
                row.ctx(&self.path, what)?;
            parse_timestamp(&self.path, "book_findings.found_at", &found_at)?;
            out.push(BookFinding {
                id,
                date,
                kind,
                order_number,
                subscription_id,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                found_at,
                acknowledged,
            });
        }
        Ok(out)
    }

    /// An operator has looked at a finding: it leaves `status`. `false` if there is no such
    /// unacknowledged finding.
    pub fn acknowledge_book_finding(
        &mut self,
        id: i64,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("acknowledging a books finding")?;
        let what = "acknowledging a books finding";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let at = timestamp(now);
        let found: Option<(String, String, Option<String>)> = tx
            .query_row(
                "SELECT kind, order_number, subscription_id FROM book_findings \
                 WHERE id = ?1 AND acknowledged_at IS NULL",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .ctx(&path, what)?;
        let Some((kind, order_number, subscription_id)) = found else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE book_findings SET acknowledged_at = ?2, acknowledged_by = ?3 WHERE id = ?1",
            params![id, at, by],
        )
        .ctx(&path, what)?;
        let known: bool = match &subscription_id {
            Some(s) => tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE id = ?1)",
                    [s],
                    |row| row.get(0),
                )
                .ctx(&path, what)?,
            None => false,
        };
        append(
            &tx,
            &path,
            &at,
            subscription_id.as_deref().filter(|_| known),
            None,
            &Event {
                kind: BOOKS_ACKNOWLEDGED,
                detail: json!({
                    "finding": id,
                    "kind": kind,
                    "order_number": order_number,
                    "by": by,
                    "why": why,
                }),
            },
        )?;
        tx.commit().ctx(&path, what)?;
        Ok(true)
    }
}

/// Inserts a finding unless this date already has it; with it, its ledger event and hold.
fn insert_finding(
    tx: &rusqlite::Connection,
    path: &std::path::Path,
    day: &str,
    finding: &NewFinding,
    at: &str,
) -> Result<bool, StoreError> {
    let what = "recording a books finding";
    let inserted = tx
        .execute(
            "INSERT INTO book_findings (date, kind, order_number, subscription_id, detail, \
                 found_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (date, kind, order_number) DO NOTHING",
            params![
                day,
                finding.kind,
                finding.order_number,
                finding.subscription_id,
                finding.detail.to_string(),
                at
            ],
        )
        .ctx(path, what)?;
    if inserted == 0 {
        return Ok(false);
    }
    let mut detail = finding.detail.clone();
    if let Value::Object(map) = &mut detail {
        map.insert("date".into(), json!(day));
        map.insert("order_number".into(), json!(finding.order_number));
    }
    append(
        tx,
        path,
        at,
        finding.subscription_id.as_deref(),
        finding.charge_id,
        &Event {
            kind: finding.ledger_kind,
            detail,
        },
    )?;
    if let (Some(flag), Some(subscription)) = (&finding.hold, &finding.subscription_id) {
        raise_flag(tx, path, subscription, finding.charge_id, flag, at)?;
    }
    Ok(true)
}
