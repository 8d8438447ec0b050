//! What operators see of a running daemon: the daemon's own record in `meta` (pid, version,
//! start, last successful tick, and in a rehearsal its clock), the figures behind the metrics'
//! gauges, refused schedule files, one subscription in full (`status SUB`) and the ledger as an
//! audit trail (`audit`). Reads are for other processes (read-only connections); only the
//! daemon writes its record.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::{Context, Store, StoreError, cached_execute, parse_timestamp, timestamp};
use crate::metrics::StoreGauges;

/// `meta` keys of the daemon's record.
const PID: &str = "daemon_pid";
const VERSION: &str = "daemon_version";
const STARTED_AT: &str = "daemon_started_at";
const REHEARSAL: &str = "daemon_rehearsal";
const LAST_TICK_AT: &str = "daemon_last_tick_at";
const LAST_TICK_CLOCK: &str = "daemon_last_tick_clock";

/// Attempt states whose outcome is not known (the partial index `attempts_unresolved` covers
/// them).
const UNRESOLVED: &str = "('pending', 'not_sent', 'unknown', 'parked', 'quarantined')";

/// What the last daemon on this database recorded about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonRecord {
    pub pid: Option<u32>,
    pub version: Option<String>,
    /// Real time.
    pub started_at: Option<DateTime<Utc>>,
    /// Its clock runs apart from real time (`--clock-start`, `--clock-speed`, `--sandbox`), at
    /// this many seconds per real second.
    pub rehearsal: Option<u32>,
    /// Real time of the last tick that finished without error.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// The daemon's clock at that tick.
    pub last_tick_clock: Option<DateTime<Utc>>,
}

/// A schedule file whose latest version was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedFile {
    pub file: String,
    /// Its first diagnostic (`path:line:column: field: message`).
    pub first_error: String,
    /// How many diagnostics it has.
    pub errors: usize,
}

/// An attempt whose outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAttempt {
    pub order_number: String,
    /// `period N` or `adhoc:REFERENCE`.
    pub purpose: String,
    pub state: String,
    pub amount: crate::money::Money,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub detail: Option<String>,
}

/// One ledger event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub subscription: Option<String>,
    pub kind: String,
    pub detail: Value,
}

impl Store {
    /// Records the daemon that now holds the lock: pid, version, start (real time), and
    /// whether its clock is a rehearsal's (its rate). The previous daemon's last tick is
    /// forgotten.
    pub fn record_daemon_start(
        &mut self,
        pid: u32,
        version: &str,
        started_at: DateTime<Utc>,
        rehearsal: Option<u32>,
    ) -> Result<(), StoreError> {
        self.require_write("recording the daemon's start")?;
        let what = "recording the daemon's start";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        tx.execute(
            "DELETE FROM meta WHERE key IN (?1, ?2, ?3)",
            params![LAST_TICK_AT, LAST_TICK_CLOCK, REHEARSAL],
        )
        .ctx(&self.path, what)?;
        let mut rows = vec![
            (PID, pid.to_string()),
            (VERSION, version.to_string()),
            (STARTED_AT, timestamp(started_at)),
        ];
        if let Some(rate) = rehearsal {
            rows.push((REHEARSAL, rate.to_string()));
        }
        for (key, value) in rows {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .ctx(&self.path, what)?;
        }
        tx.commit().ctx(&self.path, what)
    }

    /// Records a tick that finished without error: real time and the daemon's clock.
    pub fn record_tick(
        &mut self,
        real: DateTime<Utc>,
        clock: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.require_write("recording a tick")?;
        let what = "recording a tick";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        for (key, value) in [(LAST_TICK_AT, real), (LAST_TICK_CLOCK, clock)] {
            cached_execute(
                &tx,
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, timestamp(value)],
            )
            .ctx(&self.path, what)?;
        }
        tx.commit().ctx(&self.path, what)
    }

    /// What the last daemon recorded about itself (all `None` if none ever ran).
    pub fn daemon_record(&self) -> Result<DaemonRecord, StoreError> {
        let get = |key: &str| -> Result<Option<String>, StoreError> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()
                .ctx(&self.path, "reading the daemon's record")
        };
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
            get(key)?
                .map(|t| parse_timestamp(&self.path, &format!("meta.{key}"), &t))
                .transpose()
        };
        Ok(DaemonRecord {
            pid: get(PID)?.and_then(|p| p.parse().ok()),
            version: get(VERSION)?,
            started_at: time(STARTED_AT)?,
            rehearsal: get(REHEARSAL)?.and_then(|r| r.parse().ok()),
            last_tick_at: time(LAST_TICK_AT)?,
            last_tick_clock: time(LAST_TICK_CLOCK)?,
        })
    }

    /// The figures behind the metrics' gauges, at `now` (the daemon's clock: attempts are
    /// stamped with it). Read after every tick, so every part goes through an index and never
    /// walks the subscriptions: unresolved attempts by the partial index `attempts_unresolved`,
    /// the few missing files first (CROSS JOIN keeps that order), then their subscriptions by
    /// `subscriptions_by_file`.
    pub fn gauges(&self, now: DateTime<Utc>) -> Result<StoreGauges, StoreError> {
        let what = "reading the figures for the metrics";
        let (unresolved, oldest): (i64, Option<String>) = self
            .conn
            .query_row(
                &format!(
                    "SELECT count(*), min(created_at) FROM attempts WHERE state IN {UNRESOLVED}"
                ),
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .ctx(&self.path, what)?;
        let oldest = oldest
            .map(|t| parse_timestamp(&self.path, "attempts.created_at", &t))
            .transpose()?;
        let needing_operator: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM ( \
                     SELECT subscription_id FROM attention \
                     UNION SELECT c.subscription_id FROM attempts a \
                     JOIN charges c ON c.id = a.charge_id \
                     WHERE a.state IN {UNRESOLVED} AND a.state IN ('parked', 'quarantined') \
                     UNION SELECT s.id FROM schedule_files f \
                     CROSS JOIN subscriptions s ON s.file = f.file \
                     WHERE f.missing_since IS NOT NULL AND s.removed_at IS NULL)"
                ),
                [],
                |row| row.get(0),
            )
            .ctx(&self.path, what)?;
        let refused = self.refused_files()?.len();
        Ok(StoreGauges {
            unresolved: u64::try_from(unresolved).unwrap_or(0),
            unresolved_oldest_secs: oldest.map_or(0, |at| (now - at).num_seconds().max(0)),
            needing_operator: u64::try_from(needing_operator).unwrap_or(0),
            refused_files: refused as u64,
            breaker_open: self.breaker()?.is_some(),
            clock_held: self.clock_hold()?.is_some(),
        })
    }

    /// Schedule files whose latest version was refused (their last accepted version, if any,
    /// stays in force), by name. A missing file is not one (it holds its subscriptions; `status`
    /// lists those under what needs attention).
    pub fn refused_files(&self) -> Result<Vec<RefusedFile>, StoreError> {
        let what = "reading refused schedule files";
        let mut statement = self
            .conn
            .prepare(
                "SELECT file, last_error FROM schedule_files \
                 WHERE last_error IS NOT NULL AND missing_since IS NULL \
                 AND last_error <> 'the file is no longer in the schedules folder' ORDER BY file",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (file, error) = row.ctx(&self.path, what)?;
            out.push(RefusedFile {
                file,
                first_error: error.lines().next().unwrap_or_default().to_string(),
                errors: error.lines().filter(|l| !l.trim().is_empty()).count(),
            });
        }
        Ok(out)
    }

    /// A subscription's attempts whose outcome is not known yet, oldest first.
    pub fn open_attempts(&self, subscription_id: &str) -> Result<Vec<OpenAttempt>, StoreError> {
        let what = "reading a subscription's open attempts";
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT a.order_number, c.period, c.reference, a.state, c.amount_cents, \
                 c.currency, a.created_at, a.next_check_at, a.detail \
                 FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = ?1 AND a.state IN {UNRESOLVED} ORDER BY a.id"
            ))
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([subscription_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, Option<String>>(8)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (order_number, period, reference, state, cents, currency, created, next, detail) =
                row.ctx(&self.path, what)?;
            out.push(OpenAttempt {
                order_number,
                purpose: match (period, reference) {
                    (_, Some(reference)) => format!("adhoc:{reference}"),
                    (Some(period), None) => format!("period {period}"),
                    (None, None) => "-".into(),
                },
                state,
                amount: crate::money::Money::from_cents(cents).ok_or_else(|| {
                    StoreError::Corrupt {
                        path: self.path.clone(),
                        what: "charges.amount_cents".into(),
                        value: cents.to_string(),
                    }
                })?,
                currency,
                created_at: parse_timestamp(&self.path, "attempts.created_at", &created)?,
                next_check_at: next
                    .map(|t| parse_timestamp(&self.path, "attempts.next_check_at", &t))
                    .transpose()?,
                detail,
            });
        }
        Ok(out)
    }

    /// Every ledger event in order, optionally one subscription's, optionally from `since` on.
    pub fn audit(
        &self,
        subscription_id: Option<&str>,
        since: Option<DateTime<Utc>>,
        mut each: impl FnMut(AuditEvent) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, StoreError> {
        let what = "reading the ledger";
        let mut statement = self
            .conn
            .prepare(
                "SELECT seq, at, subscription_id, kind, detail FROM ledger \
                 WHERE (?1 IS NULL OR subscription_id = ?1) AND (?2 IS NULL OR at >= ?2) \
                 ORDER BY seq",
            )
            .ctx(&self.path, what)?;
        let mut rows = statement
            .query(params![subscription_id, since.map(timestamp)])
            .ctx(&self.path, what)?;
        while let Some(row) = rows.next().ctx(&self.path, what)? {
            let seq: i64 = row.get(0).ctx(&self.path, what)?;
            let at: String = row.get(1).ctx(&self.path, what)?;
            let detail: String = row.get(4).ctx(&self.path, what)?;
            let event = AuditEvent {
                seq,
                at: parse_timestamp(&self.path, "ledger.at", &at)?,
                subscription: row.get(2).ctx(&self.path, what)?,
                kind: row.get(3).ctx(&self.path, what)?,
                detail: serde_json::from_str(&detail).map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("ledger {seq} detail"),
                    value: detail.clone(),
                })?,
            };
            if let Err(e) = each(event) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

/// The SQLite store as the daemon's: it always syncs (one daemon per database), and holds
/// nothing another instance could take over.
impl super::DaemonStore for Store {
    fn sync_folder(
        &mut self,
        dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<Option<super::SyncSummary>, super::SyncDirError> {
        self.sync_dir(dir, now).map(Some)
    }

    fn active_subscription_count(&mut self) -> Result<u64, StoreError> {
        self.active_subscriptions()
    }

    fn record_start(
        &mut self,
        pid: u32,
        version: &str,
        started_at: DateTime<Utc>,
        rehearsal: Option<u32>,
    ) -> Result<(), StoreError> {
        self.record_daemon_start(pid, version, started_at, rehearsal)
    }

    fn record_tick(&mut self, real: DateTime<Utc>, clock: DateTime<Utc>) -> Result<(), StoreError> {
        Store::record_tick(self, real, clock)
    }

    fn health(&mut self) -> Result<(), StoreError> {
        self.schema_version().map(|_| ())
    }

    fn gauge_figures(&mut self, now: DateTime<Utc>) -> Result<Option<StoreGauges>, StoreError> {
        self.gauges(now).map(Some)
    }

    fn outbox_figures(&mut self) -> Result<Option<super::OutboxBacklog>, StoreError> {
        self.outbox_backlog().map(Some)
    }

    fn release_claims(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;
    use chrono::TimeZone;

    #[test]
    fn the_daemon_record_round_trips_and_a_new_start_forgets_the_last_tick() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut store = Store::open_or_create(&path).unwrap();
        assert_eq!(store.daemon_record().unwrap(), DaemonRecord::default());
        let t = |h| Utc.with_ymd_and_hms(2027, 1, 1, h, 0, 0).unwrap();
        store
            .record_daemon_start(42, "9.9.9", t(1), Some(8640))
            .unwrap();
        store.record_tick(t(2), t(20)).unwrap();
        let mut read = Store::open(&path, Access::ReadOnly).unwrap();
        assert_eq!(
            read.daemon_record().unwrap(),
            DaemonRecord {
                pid: Some(42),
                version: Some("9.9.9".into()),
                started_at: Some(t(1)),
                rehearsal: Some(8640),
                last_tick_at: Some(t(2)),
                last_tick_clock: Some(t(20)),
            }
        );
        store.record_daemon_start(43, "9.9.9", t(3), None).unwrap();
        let record = read.daemon_record().unwrap();
        assert_eq!(record.pid, Some(43));
        assert_eq!(record.rehearsal, None);
        assert_eq!(record.last_tick_at, None);
        assert!(read.record_tick(t(4), t(4)).is_err(), "read-only");
    }

    #[test]
    fn gauges_count_unresolved_attempts_and_their_age_and_what_waits() {
        use crate::store::test_support::{at, store_with};
        use crate::store::{Event, Flag, flag};
        let (_dir, mut store) = store_with(&["s1", "s2"]);
        let sub = store.subscription("s1").unwrap().unwrap();
        let tx = store.plan(at(1, 1)).unwrap();
        let open = tx.open_period(&sub, 0, sub.terms.start).unwrap();
        let job = tx
            .new_attempt(
                "s1",
                &open,
                "P-s1-0-1",
                at(1, 1),
                Event {
                    kind: "charge_intent",
                    detail: serde_json::json!({}),
                },
            )
            .unwrap();
        tx.commit().unwrap();
        let later = at(1, 1) + chrono::Duration::hours(2);
        let g = store.gauges(later).unwrap();
        assert_eq!(g.unresolved, 1);
        assert_eq!(g.unresolved_oldest_secs, 7200, "two hours old");
        assert_eq!(g.needing_operator, 0);
        // A flag on s1 (and only one row per subscription, however many reasons).
        let flagged = Flag {
            kind: flag::HARD_DECLINE,
            reason: "hard decline".into(),
        };
        store.flag_attempt(job.attempt_id, &flagged, later).unwrap();
        let g = store.gauges(later).unwrap();
        assert_eq!(g.needing_operator, 1);
        assert!(!g.breaker_open);
        store.open_breaker("test", later).unwrap();
        assert!(store.gauges(later).unwrap().breaker_open);
    }

    #[test]
    fn subscriptions_held_by_a_missing_file_wait_for_an_operator() {
        use crate::store::test_support::{at, store_with};
        let (_dir, mut store) = store_with(&["s1", "s2"]);
        assert_eq!(store.gauges(at(1, 2)).unwrap().needing_operator, 0);
        let empty = crate::schedule::DirReport { files: vec![] };
        store.sync_schedules(&empty, at(1, 2)).unwrap();
        let g = store.gauges(at(1, 2)).unwrap();
        assert_eq!(g.needing_operator, 2, "both held by the missing file");
        assert_eq!(g.refused_files, 0, "a missing file is not a refused one");
    }

    #[test]
    fn gauges_of_an_empty_database_are_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(&dir.path().join("g.db")).unwrap();
        assert_eq!(store.gauges(Utc::now()).unwrap(), StoreGauges::default());
    }
}
