//! The SQLite side of schedule sync: [`SyncStore`] for [`Store`] and [`SyncTransaction`] for
//! [`SyncTx`], one `BEGIN IMMEDIATE` transaction, each primitive one or two statements through
//! the connection's prepared-statement cache. The rules are in `store::sync`.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use super::sync_boundary::{
    ADD_CHUNK, BillHolder, Def, Enrolled, FileRecord, NewSubscription, SubRow, SyncStore,
    SyncTransaction,
};
use super::{
    Context, SUBSCRIPTION_COLUMNS, Store, StoreError, cached_execute, cached_query_row, kind,
    revisit_text, timestamp,
};
use crate::billing::Calendar;

/// One write transaction of schedule sync on SQLite (`BEGIN IMMEDIATE`: the database's one
/// writer until it commits or is dropped).
pub struct SyncTx<'a> {
    tx: Transaction<'a>,
    path: &'a Path,
    /// What the transaction does, for errors.
    what: String,
    /// The instant of everything it writes, as stored.
    at: String,
}

impl SyncStore for Store {
    type Sync<'a> = SyncTx<'a>;

    fn planning_calendar(&self) -> Option<Calendar> {
        self.calendar
    }

    fn begin_sync(&mut self, now: DateTime<Utc>, what: &str) -> Result<SyncTx<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        Ok(SyncTx {
            tx,
            path: &self.path,
            what: what.to_string(),
            at: timestamp(now),
        })
    }

    fn known_files(&mut self) -> Result<Vec<String>, StoreError> {
        let what = "reading schedule_files";
        let mut statement = self
            .conn
            .prepare("SELECT file FROM schedule_files ORDER BY file")
            .ctx(&self.path, what)?;
        let names = statement
            .query_map([], |row| row.get(0))
            .ctx(&self.path, what)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .ctx(&self.path, what)?;
        Ok(names)
    }

    fn missing_files(&mut self) -> Result<Vec<String>, StoreError> {
        let what = "marking returned schedule files";
        let mut statement = self
            .conn
            .prepare_cached("SELECT file FROM schedule_files WHERE missing_since IS NOT NULL")
            .ctx(&self.path, what)?;
        statement
            .query_map([], |row| row.get(0))
            .ctx(&self.path, what)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .ctx(&self.path, what)
    }

    fn file_records(&mut self) -> Result<HashMap<String, FileRecord>, StoreError> {
        let what = "reading schedule_files";
        let mut statement = self
            .conn
            .prepare("SELECT file, digest, last_error, missing_since FROM schedule_files")
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    FileRecord {
                        digest: row.get(1)?,
                        last_error: row.get(2)?,
                        missing_since: row.get(3)?,
                    },
                ))
            })
            .ctx(&self.path, what)?;
        rows.collect::<rusqlite::Result<HashMap<_, _>>>()
            .ctx(&self.path, what)
    }
}

impl SyncTx<'_> {
    /// Adds the database and what the transaction does to a rusqlite error.
    fn ctx<T>(&self, result: rusqlite::Result<T>) -> Result<T, StoreError> {
        result.ctx(self.path, &self.what)
    }
}

impl SyncTransaction for SyncTx<'_> {
    fn file_record(&mut self, file: &str) -> Result<Option<FileRecord>, StoreError> {
        let record = cached_query_row(
            &self.tx,
            "SELECT digest, last_error, missing_since FROM schedule_files WHERE file = ?1",
            [file],
            |row| {
                Ok(FileRecord {
                    digest: row.get(0)?,
                    last_error: row.get(1)?,
                    missing_since: row.get(2)?,
                })
            },
        )
        .optional();
        self.ctx(record)
    }

    fn any_enrolments(&mut self) -> Result<bool, StoreError> {
        let any = cached_query_row(
            &self.tx,
            "SELECT EXISTS (SELECT 1 FROM enrolments)",
            [],
            |row| row.get(0),
        );
        self.ctx(any)
    }

    fn enrolled_terms(&mut self, subscription_id: &str) -> Result<Option<Enrolled>, StoreError> {
        let terms = cached_query_row(
            &self.tx,
            "SELECT order_number, bill_number, currency, min_cents, max_cents, period_days, \
             max_date FROM enrolments WHERE subscription_id = ?1",
            [subscription_id],
            |row| {
                Ok(Enrolled {
                    order_number: row.get(0)?,
                    bill_number: row.get(1)?,
                    currency: row.get(2)?,
                    min_cents: row.get(3)?,
                    max_cents: row.get(4)?,
                    period_days: row.get(5)?,
                    max_date: row.get(6)?,
                })
            },
        )
        .optional();
        self.ctx(terms)
    }

    fn subscription_row(&mut self, subscription_id: &str) -> Result<Option<SubRow>, StoreError> {
        let row = cached_query_row(
            &self.tx,
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"),
            [subscription_id],
            sub_row,
        )
        .optional();
        self.ctx(row)
    }

    fn has_charges(&mut self, subscription_id: &str) -> Result<bool, StoreError> {
        let charged = has_charges(&self.tx, subscription_id);
        self.ctx(charged)
    }

    fn bill_holders(
        &mut self,
        bill_number: &str,
        except_id: &str,
    ) -> Result<Vec<BillHolder>, StoreError> {
        let holders = self
            .tx
            .prepare_cached(
                "SELECT s.id, s.file, s.line, s.removed_at IS NULL, \
                 EXISTS (SELECT 1 FROM charges c WHERE c.subscription_id = s.id) \
                 FROM subscriptions s WHERE s.bill_number = ?1 AND s.id <> ?2",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![bill_number, except_id], |row| {
                        Ok(BillHolder {
                            id: row.get(0)?,
                            file: row.get(1)?,
                            line: row.get(2)?,
                            in_force: row.get(3)?,
                            has_charges: row.get(4)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            });
        self.ctx(holders)
    }

    fn active_ids(&mut self, file: &str) -> Result<Vec<String>, StoreError> {
        let ids = self
            .tx
            .prepare(
                "SELECT id FROM subscriptions WHERE file = ?1 AND removed_at IS NULL ORDER BY id",
            )
            .and_then(|mut statement| {
                statement
                    .query_map([file], |row| row.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            });
        self.ctx(ids)
    }

    fn insert_subscriptions(
        &mut self,
        file: &str,
        new: &[NewSubscription<'_>],
    ) -> Result<(), StoreError> {
        let added = add_all(&self.tx, file, new, &self.at);
        self.ctx(added)
    }

    fn update_subscription(&mut self, file: &str, line: i64, def: &Def) -> Result<(), StoreError> {
        let updated = cached_execute(
            &self.tx,
            "UPDATE subscriptions SET file = ?2, line = ?3, customer = ?4, bill_number = ?5, \
             currency = ?6, amount_cents = ?7, cadence = ?8, start_date = ?9, state = ?10, \
             catch_up = ?11, min_cents = ?12, max_cents = ?13, period_days = ?14, \
             max_date = ?15, updated_at = ?16, next_plan_at = '' WHERE id = ?1",
            params![
                def.id,
                file,
                line,
                def.customer,
                def.bill_number,
                def.currency,
                def.amount_cents,
                def.cadence,
                def.start_date,
                def.state,
                def.catch_up,
                def.min_cents,
                def.max_cents,
                def.period_days,
                def.max_date,
                self.at,
            ],
        );
        self.ctx(updated).map(drop)
    }

    fn move_line(&mut self, subscription_id: &str, line: i64) -> Result<(), StoreError> {
        let moved = cached_execute(
            &self.tx,
            "UPDATE subscriptions SET line = ?2 WHERE id = ?1",
            params![subscription_id, line],
        );
        self.ctx(moved).map(drop)
    }

    fn remove_subscription(&mut self, subscription_id: &str) -> Result<(), StoreError> {
        let removed = cached_execute(
            &self.tx,
            "UPDATE subscriptions SET removed_at = ?2, updated_at = ?2 WHERE id = ?1",
            params![subscription_id, self.at],
        );
        self.ctx(removed).map(drop)
    }

    fn record_refusal(&mut self, file: &str, last_error: &str) -> Result<(), StoreError> {
        let recorded = cached_execute(
            &self.tx,
            "INSERT INTO schedule_files (file, last_error) VALUES (?1, ?2) \
             ON CONFLICT (file) DO UPDATE SET last_error = excluded.last_error",
            params![file, last_error],
        );
        self.ctx(recorded).map(drop)
    }

    fn record_applied(
        &mut self,
        file: &str,
        digest: Option<&str>,
        content_changed: bool,
    ) -> Result<(), StoreError> {
        let recorded = cached_execute(
            &self.tx,
            "INSERT INTO schedule_files (file, digest, accepted_at, last_error) \
             VALUES (?1, ?2, ?3, NULL) \
             ON CONFLICT (file) DO UPDATE SET digest = excluded.digest, last_error = NULL, \
             accepted_at = CASE WHEN ?4 OR accepted_at IS NULL THEN excluded.accepted_at \
                           ELSE accepted_at END",
            params![file, digest, self.at, content_changed],
        );
        self.ctx(recorded).map(drop)
    }

    fn refresh_digest(&mut self, file: &str, digest: &str) -> Result<(), StoreError> {
        let refreshed = cached_execute(
            &self.tx,
            "UPDATE schedule_files SET digest = ?2 WHERE file = ?1 AND last_error IS NULL",
            params![file, digest],
        );
        self.ctx(refreshed).map(drop)
    }

    fn record_missing(&mut self, file: &str) -> Result<(), StoreError> {
        let recorded = cached_execute(
            &self.tx,
            "UPDATE schedule_files SET missing_since = ?2 WHERE file = ?1",
            params![file, self.at],
        );
        self.ctx(recorded).map(drop)
    }

    fn record_returned(&mut self, file: &str) -> Result<(), StoreError> {
        let recorded = cached_execute(
            &self.tx,
            "UPDATE schedule_files SET missing_since = NULL WHERE file = ?1",
            [file],
        )
        .and_then(|_| {
            cached_execute(
                &self.tx,
                "UPDATE subscriptions SET next_plan_at = '' WHERE file = ?1 AND removed_at IS NULL",
                [file],
            )
        });
        self.ctx(recorded).map(drop)
    }

    fn record_awaiting_handover(&mut self, file: &str, last_error: &str) -> Result<(), StoreError> {
        let recorded = cached_execute(
            &self.tx,
            "UPDATE schedule_files SET digest = NULL, last_error = ?2 WHERE file = ?1",
            params![file, last_error],
        );
        self.ctx(recorded).map(drop)
    }

    fn forget_file(&mut self, file: &str) -> Result<(), StoreError> {
        let forgotten = cached_execute(
            &self.tx,
            "DELETE FROM schedule_files WHERE file = ?1",
            [file],
        );
        self.ctx(forgotten).map(drop)
    }

    fn append_event(
        &mut self,
        subscription_id: Option<&str>,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let appended = cached_execute(
            &self.tx,
            "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
             VALUES (?1, ?2, NULL, ?3, ?4)",
            params![self.at, subscription_id, kind, detail],
        );
        self.ctx(appended).map(drop)
    }

    fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().ctx(self.path, &self.what)
    }
}

/// Reads the columns of [`SUBSCRIPTION_COLUMNS`].
pub(super) fn sub_row(row: &Row<'_>) -> rusqlite::Result<SubRow> {
    Ok(SubRow {
        def: Def {
            id: row.get(0)?,
            customer: row.get(3)?,
            bill_number: row.get(4)?,
            currency: row.get(5)?,
            amount_cents: row.get(6)?,
            cadence: row.get(7)?,
            start_date: row.get(8)?,
            state: row.get(9)?,
            catch_up: row.get(10)?,
            min_cents: row.get(11)?,
            max_cents: row.get(12)?,
            period_days: row.get(13)?,
            max_date: row.get(14)?,
        },
        file: row.get(1)?,
        line: row.get(2)?,
        created_at: row.get(15)?,
        updated_at: row.get(16)?,
        removed_at: row.get(17)?,
    })
}

pub(super) fn has_charges(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    cached_query_row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM charges WHERE subscription_id = ?1)",
        [id],
        |row| row.get(0),
    )
}

/// Rows per multi-row `INSERT` of [`add_all`], largest first: a statement's fixed cost (and the
/// ledger's `sqlite_sequence` update, and the ephemeral table SQLite builds for the `state IN
/// (...)` check) is paid once per batch instead of once per row. The largest is [`ADD_CHUNK`],
/// what the sync hands over at most per call.
const ADD_BATCHES: [usize; 3] = [ADD_CHUNK, 8, 1];

/// The `INSERT`s of `rows` new subscriptions and of their `subscription_added` events.
fn add_sql(rows: usize) -> (String, String) {
    let subscription = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)"; rows];
    let ledger = vec!["(?, ?, NULL, ?, ?)"; rows];
    (
        format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, next_plan_at) VALUES {}",
            subscription.join(", ")
        ),
        format!(
            "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) VALUES {}",
            ledger.join(", ")
        ),
    )
}

/// Adds new subscriptions in order, each with its `subscription_added` event, a batch of rows
/// per statement (the batches of [`ADD_BATCHES`], largest first).
fn add_all(
    tx: &Transaction<'_>,
    file: &str,
    adds: &[NewSubscription<'_>],
    at: &str,
) -> rusqlite::Result<()> {
    use rusqlite::ToSql;
    static SQL: std::sync::LazyLock<[(String, String); ADD_BATCHES.len()]> =
        std::sync::LazyLock::new(|| ADD_BATCHES.map(add_sql));
    let mut rest = adds;
    while !rest.is_empty() {
        let Some(size) = ADD_BATCHES.iter().position(|&size| size <= rest.len()) else {
            break;
        };
        let (batch, after) = rest.split_at(ADD_BATCHES[size]);
        let (insert, append) = &SQL[size];
        let plans: Vec<String> = batch
            .iter()
            .map(|new| revisit_text(new.first_plan))
            .collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(batch.len() * 18);
        for (new, next_plan_at) in batch.iter().zip(&plans) {
            let def = new.def;
            values.extend_from_slice(&[
                &def.id as &dyn ToSql,
                &file,
                &new.line,
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
                &at,
                &at,
                next_plan_at,
            ]);
        }
        tx.prepare_cached(insert)?
            .execute(rusqlite::params_from_iter(values))?;
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(batch.len() * 4);
        for new in batch {
            values.extend_from_slice(&[
                &at as &dyn ToSql,
                &new.def.id,
                &kind::SUBSCRIPTION_ADDED,
                &new.added_detail,
            ]);
        }
        tx.prepare_cached(append)?
            .execute(rusqlite::params_from_iter(values))?;
        rest = after;
    }
    Ok(())
}
