//! The PostgreSQL side of schedule sync: [`SyncStore`] for [`PgStore`] and [`SyncTransaction`]
//! for [`PgSync`]. The rules are in `store::sync` (the same code SQLite runs); this file only
//! gives them their primitives, with SQLite's semantics (`store::sync_sqlite` is the reference).
//!
//! **Concurrency.** Several instances may sync the same folder at once. Each file's transaction
//! takes a transaction-level advisory lock first ([`SYNC_LOCK`], per schema), so sync
//! transactions are serialised across every connection, as SQLite's `BEGIN IMMEDIATE` serialises
//! them: a file's checks read rows other files own (refused ids, bill-number holders), so row
//! locks alone would not do. Transactions are READ COMMITTED: every statement after the lock
//! sees what the previous sync transaction committed. A sync that comes second finds the file's
//! record (digest) written by the first and skips it, so the rows and ledger events are written
//! once. The reads outside a transaction (`known_files`, `missing_files`, `file_records`) may be
//! stale by the time a file's transaction runs; the rules re-read the file's record inside it.
//!
//! The charge path does not take that lock: it locks a subscription's row
//! (`FOR NO KEY UPDATE`) for every change of its charges. So [`SyncTransaction::subscription_row`]
//! and [`SyncTransaction::bill_holders`] lock the rows they read (waiting for a planner that
//! holds them): "has charges" and the agreed terms checked stay true until the sync commits.
//! Residual: the sync locks rows in file order, while recording outcomes locks them in id
//! order, so the two can deadlock; PostgreSQL then aborts one of them (the sync of that file
//! fails and is retried at the next sync; an outcome write fails like any store error).
//!
//! **Types.** Instants cross the boundary as text in the store's format (`store::timestamp`),
//! dates as `YYYY-MM-DD` (`to_char`), `next_plan_at` as `-infinity` (now) / `infinity`
//! (never). Ledger details are written as `$n::text::json`, so the `json` column keeps the text
//! byte for byte, and every ledger insert goes through the outbox trigger.
//!
//! **Calendar.** [`SyncStore::planning_calendar`] is the calendar [`PgStore::use_calendar`]
//! recorded (as SQLite's): a new subscription is first planned at its first due instant; before
//! any is recorded, at once (the planner finds nothing due yet and sets its next instant).
//! Instances sharing a database must plan with the same calendar: one that records another
//! sets every active subscription back to "plan now", as a changed calendar does on SQLite.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use postgres::types::ToSql;
use postgres::{Row, Transaction};

use super::{PgContext, PgStore};
use crate::billing::{Calendar, Revisit};
use crate::schedule::DirReport;
use crate::store::sync_boundary::{
    BillHolder, Def, Enrolled, FileRecord, NewSubscription, SubRow, SyncStore, SyncTransaction,
};
use crate::store::{RemovedFile, StoreError, SyncDirError, SyncSummary, kind, timestamp};

/// The advisory lock every sync transaction takes (with `hashtext(current_schema())` as its
/// second key, so schemas on one server do not wait for each other). Not the migration lock's
/// key (1919250).
pub(super) const SYNC_LOCK: i32 = 1919251;

/// The columns a [`SubRow`] is read from; see [`sub_row`].
const SUB_ROW_COLUMNS: &str = "id, file, line, customer, bill_number, currency, amount_cents, \
    cadence, to_char(start_date, 'YYYY-MM-DD'), state, catch_up, min_cents, max_cents, \
    period_days, to_char(max_date, 'YYYY-MM-DD'), created_at, updated_at, removed_at";

/// One file's sync transaction on PostgreSQL (READ COMMITTED, under [`SYNC_LOCK`]).
pub struct PgSync<'a> {
    tx: Transaction<'a>,
    location: &'a Path,
    /// What the transaction does, for errors.
    what: String,
    /// The instant of everything it writes (microseconds, as stored).
    now: DateTime<Utc>,
}

impl PgStore {
    /// Records the calendar the engine plans with (as SQLite's `Store::use_calendar`): new
    /// subscriptions are then first planned at their first due instant. If the calendar recorded
    /// in `meta` (`plan_calendar`) is another, every active subscription is set back to "plan
    /// now", so none is looked at later than this calendar requires.
    pub fn use_calendar(&mut self, calendar: &Calendar) -> Result<(), StoreError> {
        self.calendar = Some(*calendar);
        let what = "recording the planning calendar";
        let basis = format!("{calendar:?}");
        let location = &self.location;
        let mut tx = self.client.transaction().pg(location, what)?;
        // Serialised with the syncs (which plan new subscriptions with a calendar).
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&SYNC_LOCK],
        )
        .pg(location, what)?;
        let stored: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'plan_calendar'", &[])
            .pg(location, what)?
            .map(|row| row.get(0));
        if stored.as_deref() != Some(basis.as_str()) {
            tx.execute(
                "UPDATE subscriptions SET next_plan_at = '-infinity' \
                 WHERE removed_at IS NULL AND next_plan_at <> '-infinity'",
                &[],
            )
            .pg(location, what)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('plan_calendar', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&basis],
            )
            .pg(location, what)?;
        }
        tx.commit().pg(location, what)
    }

    /// Brings the store in line with a parsed schedule folder (`store::sync`'s rules, as
    /// SQLite's `Store::sync_schedules`). Safe while other instances sync the same folder.
    pub fn sync_schedules(
        &mut self,
        report: &DirReport,
        now: DateTime<Utc>,
    ) -> Result<SyncSummary, StoreError> {
        crate::store::sync::sync_schedules(self, report, now)
    }

    /// Reads the schedule folder `dir` and syncs it (as SQLite's `Store::sync_dir`). Safe while
    /// other instances sync the same folder.
    pub fn sync_dir(
        &mut self,
        dir: &Path,
        now: DateTime<Utc>,
    ) -> Result<SyncSummary, SyncDirError> {
        crate::store::sync::sync_dir(self, dir, now)
    }

    /// An operator removes a file found missing (as SQLite's `Store::remove_missing_file`).
    pub fn remove_missing_file(
        &mut self,
        name: &str,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<RemovedFile, StoreError> {
        crate::store::sync::remove_missing_file(self, name, by, why, now)
    }
}

fn file_record_of(row: &Row, first: usize) -> FileRecord {
    FileRecord {
        digest: row.get(first),
        last_error: row.get(first + 1),
        missing_since: row
            .get::<_, Option<DateTime<Utc>>>(first + 2)
            .map(timestamp),
    }
}

impl SyncStore for PgStore {
    type Sync<'a> = PgSync<'a>;

    fn planning_calendar(&self) -> Option<Calendar> {
        self.calendar
    }

    fn begin_sync(&mut self, now: DateTime<Utc>, what: &str) -> Result<PgSync<'_>, StoreError> {
        let location = &self.location;
        let mut tx = self.client.transaction().pg(location, what)?;
        // Every sync transaction of this schema, on every connection, one at a time.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&SYNC_LOCK],
        )
        .pg(location, what)?;
        Ok(PgSync {
            tx,
            location,
            what: what.to_string(),
            now: now.trunc_subsecs(6),
        })
    }

    fn known_files(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT file FROM schedule_files ORDER BY file COLLATE \"C\"",
                &[],
            )
            .pg(&self.location, "reading schedule_files")?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn missing_files(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT file FROM schedule_files WHERE missing_since IS NOT NULL",
                &[],
            )
            .pg(&self.location, "marking returned schedule files")?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn file_records(&mut self) -> Result<HashMap<String, FileRecord>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT file, digest, last_error, missing_since FROM schedule_files",
                &[],
            )
            .pg(&self.location, "reading schedule_files")?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), file_record_of(row, 1)))
            .collect())
    }
}

/// Reads the columns of [`SUB_ROW_COLUMNS`].
fn sub_row(row: &Row) -> SubRow {
    SubRow {
        def: Def {
            id: row.get(0),
            customer: row.get(3),
            bill_number: row.get(4),
            currency: row.get(5),
            amount_cents: row.get(6),
            cadence: row.get(7),
            start_date: row.get(8),
            state: row.get(9),
            catch_up: row.get(10),
            min_cents: row.get(11),
            max_cents: row.get(12),
            period_days: row.get(13),
            max_date: row.get(14),
        },
        file: row.get(1),
        line: row.get(2),
        created_at: timestamp(row.get(15)),
        updated_at: timestamp(row.get(16)),
        removed_at: row.get::<_, Option<DateTime<Utc>>>(17).map(timestamp),
    }
}

/// `next_plan_at` as text PostgreSQL reads as a `timestamptz` (SQLite's `revisit_text`).
fn revisit_text(revisit: Revisit) -> String {
    match revisit {
        Revisit::Now => "-infinity".to_string(),
        // Past year 9999 as good as never (as SQLite's).
        Revisit::At(at) if at.year() <= 9999 => timestamp(at),
        Revisit::At(_) | Revisit::Never => "infinity".to_string(),
    }
}

impl PgSync<'_> {
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.tx.execute(sql, params).pg(self.location, &self.what)
    }

    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.tx.query(sql, params).pg(self.location, &self.what)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.tx.query_opt(sql, params).pg(self.location, &self.what)
    }
}

impl SyncTransaction for PgSync<'_> {
    fn file_record(&mut self, file: &str) -> Result<Option<FileRecord>, StoreError> {
        let row = self.query_opt(
            "SELECT digest, last_error, missing_since FROM schedule_files WHERE file = $1",
            &[&file],
        )?;
        Ok(row.map(|row| file_record_of(&row, 0)))
    }

    fn any_enrolments(&mut self) -> Result<bool, StoreError> {
        let row = self.query_opt("SELECT EXISTS (SELECT 1 FROM enrolments)", &[])?;
        Ok(row.is_some_and(|row| row.get(0)))
    }

    fn enrolled_terms(&mut self, subscription_id: &str) -> Result<Option<Enrolled>, StoreError> {
        let row = self.query_opt(
            "SELECT order_number, bill_number, currency, min_cents, max_cents, period_days, \
             to_char(max_date, 'YYYY-MM-DD') FROM enrolments WHERE subscription_id = $1",
            &[&subscription_id],
        )?;
        Ok(row.map(|row| Enrolled {
            order_number: row.get(0),
            bill_number: row.get(1),
            currency: row.get(2),
            min_cents: row.get(3),
            max_cents: row.get(4),
            period_days: row.get(5),
            max_date: row.get(6),
        }))
    }

    fn subscription_row(&mut self, subscription_id: &str) -> Result<Option<SubRow>, StoreError> {
        // Locked (waiting for a planner that holds it) so what is checked against it (its
        // charges, its agreed terms) holds until this transaction commits.
        let row = self.query_opt(
            &format!("SELECT {SUB_ROW_COLUMNS} FROM subscriptions WHERE id = $1 FOR NO KEY UPDATE"),
            &[&subscription_id],
        )?;
        Ok(row.as_ref().map(sub_row))
    }

    fn has_charges(&mut self, subscription_id: &str) -> Result<bool, StoreError> {
        let row = self.query_opt(
            "SELECT EXISTS (SELECT 1 FROM charges WHERE subscription_id = $1)",
            &[&subscription_id],
        )?;
        Ok(row.is_some_and(|row| row.get(0)))
    }

    fn bill_holders(
        &mut self,
        bill_number: &str,
        except_id: &str,
    ) -> Result<Vec<BillHolder>, StoreError> {
        let rows = self.query(
            "SELECT s.id, s.file, s.line, s.removed_at IS NULL, \
             EXISTS (SELECT 1 FROM charges c WHERE c.subscription_id = s.id) \
             FROM subscriptions s WHERE s.bill_number = $1 AND s.id <> $2 \
             FOR NO KEY UPDATE OF s",
            &[&bill_number, &except_id],
        )?;
        Ok(rows
            .iter()
            .map(|row| BillHolder {
                id: row.get(0),
                file: row.get(1),
                line: row.get(2),
                in_force: row.get(3),
                has_charges: row.get(4),
            })
            .collect())
    }

    fn active_ids(&mut self, file: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.query(
            "SELECT id FROM subscriptions WHERE file = $1 AND removed_at IS NULL \
             ORDER BY id COLLATE \"C\"",
            &[&file],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn insert_subscriptions(
        &mut self,
        file: &str,
        new: &[NewSubscription<'_>],
    ) -> Result<(), StoreError> {
        // The sync hands at most ADD_CHUNK (64) at a time: one statement each for the rows and
        // for their events (15 and 2 parameters a row, far below PostgreSQL's 65535).
        if new.is_empty() {
            return Ok(());
        }
        let plans: Vec<String> = new.iter().map(|n| revisit_text(n.first_plan)).collect();
        let now = self.now;
        let mut rows = Vec::with_capacity(new.len());
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&now, &file];
        for (i, (n, plan)) in new.iter().zip(&plans).enumerate() {
            let def = n.def;
            let k = 3 + 15 * i;
            rows.push(format!(
                "(${}, $2, ${}, ${}, ${}, ${}, ${}, ${}, ${}::text::date, ${}, ${}, ${}, ${}, \
                 ${}, ${}::text::date, $1, $1, NULL, ${}::text::timestamptz)",
                k,
                k + 1,
                k + 2,
                k + 3,
                k + 4,
                k + 5,
                k + 6,
                k + 7,
                k + 8,
                k + 9,
                k + 10,
                k + 11,
                k + 12,
                k + 13,
                k + 14,
            ));
            values.extend_from_slice(&[
                &def.id,
                &n.line,
                &def.customer,
                &def.bill_number,
                &def.currency,
                &def.amount_cents,
                &def.cadence,
                &def.start_date,
                &def.state,
                &def.catch_up,
                &def.min_cents,
                &def.max_cents,
                &def.period_days,
                &def.max_date,
                plan,
            ]);
        }
        let insert = format!(
            "INSERT INTO subscriptions (id, file, line, customer, bill_number, currency, \
             amount_cents, cadence, start_date, state, catch_up, min_cents, max_cents, \
             period_days, max_date, created_at, updated_at, removed_at, next_plan_at) VALUES {}",
            rows.join(", ")
        );
        self.tx
            .execute(&insert, &values)
            .pg(self.location, &self.what)?;

        // Their events, in the same order (seq follows the VALUES order).
        let added = kind::SUBSCRIPTION_ADDED;
        let mut events = Vec::with_capacity(new.len());
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&now, &added];
        for (i, n) in new.iter().enumerate() {
            let k = 3 + 2 * i;
            events.push(format!("($1, ${k}, NULL, $2, ${}::text::json)", k + 1));
            values.extend_from_slice(&[&n.def.id, &n.added_detail]);
        }
        let append = format!(
            "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) VALUES {}",
            events.join(", ")
        );
        self.tx
            .execute(&append, &values)
            .pg(self.location, &self.what)?;
        Ok(())
    }

    fn update_subscription(&mut self, file: &str, line: i64, def: &Def) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "UPDATE subscriptions SET file = $2, line = $3, customer = $4, bill_number = $5, \
             currency = $6, amount_cents = $7, cadence = $8, start_date = $9::text::date, \
             state = $10, catch_up = $11, min_cents = $12, max_cents = $13, \
             period_days = $14, max_date = $15::text::date, updated_at = $16, \
             next_plan_at = '-infinity' WHERE id = $1",
            &[
                &def.id,
                &file,
                &line,
                &def.customer,
                &def.bill_number,
                &def.currency,
                &def.amount_cents,
                &def.cadence,
                &def.start_date,
                &def.state,
                &def.catch_up,
                &def.min_cents,
                &def.max_cents,
                &def.period_days,
                &def.max_date,
                &now,
            ],
        )
        .map(drop)
    }

    fn move_line(&mut self, subscription_id: &str, line: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE subscriptions SET line = $2 WHERE id = $1",
            &[&subscription_id, &line],
        )
        .map(drop)
    }

    fn remove_subscription(&mut self, subscription_id: &str) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "UPDATE subscriptions SET removed_at = $2, updated_at = $2 WHERE id = $1",
            &[&subscription_id, &now],
        )
        .map(drop)
    }

    fn record_refusal(&mut self, file: &str, last_error: &str) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO schedule_files (file, last_error) VALUES ($1, $2) \
             ON CONFLICT (file) DO UPDATE SET last_error = excluded.last_error",
            &[&file, &last_error],
        )
        .map(drop)
    }

    fn record_applied(
        &mut self,
        file: &str,
        digest: Option<&str>,
        content_changed: bool,
    ) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "INSERT INTO schedule_files (file, digest, accepted_at, last_error) \
             VALUES ($1, $2, $3, NULL) \
             ON CONFLICT (file) DO UPDATE SET digest = excluded.digest, last_error = NULL, \
             accepted_at = CASE WHEN $4::boolean OR schedule_files.accepted_at IS NULL \
                           THEN excluded.accepted_at ELSE schedule_files.accepted_at END",
            &[&file, &digest, &now, &content_changed],
        )
        .map(drop)
    }

    fn refresh_digest(&mut self, file: &str, digest: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE schedule_files SET digest = $2 WHERE file = $1 AND last_error IS NULL",
            &[&file, &digest],
        )
        .map(drop)
    }

    fn record_missing(&mut self, file: &str) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "UPDATE schedule_files SET missing_since = $2 WHERE file = $1",
            &[&file, &now],
        )
        .map(drop)
    }

    fn record_returned(&mut self, file: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE schedule_files SET missing_since = NULL WHERE file = $1",
            &[&file],
        )?;
        self.execute(
            "UPDATE subscriptions SET next_plan_at = '-infinity' \
             WHERE file = $1 AND removed_at IS NULL",
            &[&file],
        )
        .map(drop)
    }

    fn record_awaiting_handover(&mut self, file: &str, last_error: &str) -> Result<(), StoreError> {
        self.execute(
            "UPDATE schedule_files SET digest = NULL, last_error = $2 WHERE file = $1",
            &[&file, &last_error],
        )
        .map(drop)
    }

    fn forget_file(&mut self, file: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM schedule_files WHERE file = $1", &[&file])
            .map(drop)
    }

    fn append_event(
        &mut self,
        subscription_id: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let now = self.now;
        self.execute(
            "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
             VALUES ($1, $2, NULL, $3, $4::text::json)",
            &[&now, &subscription_id, &kind, &detail],
        )
        .map(drop)
    }

    fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().pg(self.location, &self.what)
    }
}
