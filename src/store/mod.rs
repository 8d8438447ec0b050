//! The store: the SQLite database, and the only module that knows SQL.
//!
//! [`Store::open`] opens the database in one of three [`Access`] modes, sets the pragmas the
//! ledger's guarantees rest on (`journal_mode=WAL`, `synchronous=FULL`, `foreign_keys=ON`, a 5 s
//! busy timeout), **reads each back and refuses to run if it is not what was asked**, and applies
//! the [`schema`] migrations (daemon only). Every write is a `BEGIN IMMEDIATE` transaction.
//!
//! One daemon per database: [`Access::Daemon`] holds an exclusive OS lock (`flock`) on the sidecar
//! file `<db>.lock` for the store's whole life. The OS drops the lock when the process ends, however
//! it ends, so a killed daemon never leaves a stale lock behind.
//!
//! The store is synchronous and never async: the engine calls it from a dedicated thread or
//! `spawn_blocking`. [`Store`] is `Send` (not `Sync`).
//!
//! The ledger is append-only (triggers refuse UPDATE and DELETE); state tables are changed in the
//! same transaction as the ledger event that explains the change.

mod books;
pub mod boundary;
mod charges;
#[cfg(test)]
mod conformance;
mod enrolment;
mod operate;
mod outbox;
mod overview;
/// The PostgreSQL store (cargo feature `postgres`): several instances on one database, with
/// leased work and fencing. Not wired into the daemon yet.
#[cfg(feature = "postgres")]
pub mod postgres;
mod refund;
mod report;
mod resolve;
mod schema;
mod sync;
mod sync_boundary;
#[cfg(test)]
mod sync_conformance;
mod sync_sqlite;
#[cfg(test)]
mod test_support;

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::billing::CatchUp;
use crate::billing::{Cadence, Calendar, Limits, Revisit, SubscriptionState, Terms};
use crate::money::Money;

pub use books::{BOOKS_ACKNOWLEDGED, BOOKS_CLEAN, BookFinding, NewFinding, RunRecorded};
pub use boundary::{ChargeStore, DaemonStore, OutcomeWrite, PlanTransaction, UNFENCED};
pub use charges::{EnrolmentRecord, PlanTx};
// The lifecycle's data lives in `crate::lifecycle`; the store persists it.
pub use crate::lifecycle::{
    AdhocCharge, AttemptChange, AttemptState, ChargeChange, ChargeState, Event, Flag, History, Job,
    OpenCharge, PeriodRow, Purpose, StoredSubscription, event, flag,
};
pub use enrolment::{EnrolmentAttempt, EnrolmentState, OrderUse, enrolment_event};
pub use operate::{AuditEvent, DaemonRecord, OpenAttempt, RefusedFile};
pub use outbox::{Delivery, OutboxBacklog, OutboxEvent, WebhookStatus};
pub use overview::{LastOutcome, PeriodPosition, SubscriptionOverview};
pub use refund::{Recorded, Refund, RefundState, RefundTarget, refund_event};
pub use report::{
    Attention, HistoryRow, INITIAL_PERIOD, LastAttempt, LedgerPeriod, LedgerState, StatusReport,
    daemon_running,
};
pub use report::{CopyReport, verify_copy};
pub use resolve::{Resolution, Resolved};
pub use sync::{Changes, FileOutcome, FileSync, RemovedFile, SyncDirError, SyncSummary};

/// How long a statement waits for another connection's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema version this binary writes and reads.
pub const SCHEMA_VERSION: u32 = schema::MIGRATIONS.len() as u32;

/// Characters of the order-number prefix (Crockford base32: no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of the order-number prefix: 8 characters, 40 random bits.
pub const ORDER_PREFIX_LEN: usize = 8;

/// How a process uses the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The daemon: read-write, creates and migrates the database, and holds the exclusive
    /// `<db>.lock` so that a second daemon on the same database refuses to start.
    Daemon,
    /// An operator command that must write: the database must exist and be migrated; no daemon
    /// lock (it runs beside the daemon), writes wait up to [`BUSY_TIMEOUT`] for the write lock.
    Write,
    /// Operator commands that only read (`SQLITE_OPEN_READ_ONLY`).
    ReadOnly,
}

/// Why the store could not do what was asked. Every message names the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path}: another recurrentd holds its lock {lock}; only one daemon may run per \
         database (stop the other one first)"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("database {path}: lock file {lock}: {source}")]
    LockFile {
        path: PathBuf,
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("no database at {path}; has the daemon ever run?")]
    Missing { path: PathBuf },
    /// The daemon was not allowed to create a database ([`Store::open`] with
    /// [`Access::Daemon`]) and there is none: no file, or an empty one.
    #[error("no recurrentd database at {path}{}", if *.empty { " (the file is empty)" } else { "" })]
    NoDatabase { path: PathBuf, empty: bool },
    /// `PRAGMA quick_check` (at the daemon's start) or `PRAGMA integrity_check` (of a backup)
    /// found the file damaged.
    #[error("database {path} is damaged: PRAGMA {check}: {problem}")]
    Damaged {
        path: PathBuf,
        check: &'static str,
        problem: String,
    },
    #[error("database {path}: PRAGMA {pragma} reads back {got:?}, expected {wanted:?}{hint}")]
    Pragma {
        path: PathBuf,
        pragma: &'static str,
        wanted: String,
        got: String,
        hint: &'static str,
    },
    #[error(
        "database {path} has schema version {found}, newer than version {known} that this \
         recurrentd knows; run the newer recurrentd that wrote it"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "database {path} has schema version {found}, this recurrentd needs {known}; start the \
         daemon once so it migrates the database"
    )]
    NotMigrated {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("database {path} is open read-only; {what} needs write access")]
    ReadOnly { path: PathBuf, what: &'static str },
    #[error("database {path}: {what}: {source}")]
    Sqlite {
        path: PathBuf,
        what: String,
        source: rusqlite::Error,
    },
    #[error("database {path}: {what}: stored value {value:?} is not valid")]
    Corrupt {
        path: PathBuf,
        what: String,
        value: String,
    },
    #[error("database {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("database {path}: no OS randomness for the order-number prefix: {message}")]
    Random { path: PathBuf, message: String },
    /// Writing a backup copy failed on the file system (the target exists, no space...).
    #[error("database {path}: backup {target}: {what}: {source}")]
    Backup {
        path: PathBuf,
        target: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// `backup --verify`: the file is an SQLite database, but not one recurrentd wrote.
    #[error("{path} is not a recurrentd database: {why}")]
    NotOurs { path: PathBuf, why: String },
    /// A PostgreSQL store's statement or connection failed. `location` is the database's URL
    /// without its password (`postgres::redact_url`).
    #[cfg(feature = "postgres")]
    #[error("database {location}: {what}: {}", postgres::describe(source))]
    Postgres {
        location: String,
        what: String,
        source: ::postgres::Error,
    },
    /// A PostgreSQL instance's heartbeat found its name registered by another process since (a
    /// newer epoch): its claims are no longer its own, so it must stop.
    #[cfg(feature = "postgres")]
    #[error(
        "database {location}: instance {instance} was taken over by another process \
         (our epoch {epoch} is no longer the registered one): stop this one"
    )]
    TakenOver {
        location: String,
        instance: String,
        epoch: i64,
    },
}

impl StoreError {
    /// The file itself is damaged: `quick_check`/`integrity_check` failed, or SQLite said it is
    /// corrupt or not a database. Restarting cannot fix that; restoring a backup can.
    pub fn is_damaged(&self) -> bool {
        match self {
            StoreError::Damaged { .. } => true,
            StoreError::Sqlite { source, .. } => is_damage(source),
            _ => false,
        }
    }

    /// The PostgreSQL server could not be reached, or dropped the connection (it may be back in
    /// a moment: a restart tries again).
    pub fn is_unreachable(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let StoreError::Postgres { source, .. } = self {
            return postgres::is_io(source);
        }
        false
    }

    /// The PostgreSQL server refused our credentials (SQLSTATE class 28): a configuration
    /// problem, not worth a restart.
    pub fn is_login_refused(&self) -> bool {
        #[cfg(feature = "postgres")]
        if let StoreError::Postgres { source, .. } = self {
            return source.code().is_some_and(|c| c.code().starts_with("28"));
        }
        false
    }

    /// This process must stop: another one took over its instance (several instances on
    /// PostgreSQL, a second process started under the same `database.instance`).
    pub fn must_stop(&self) -> bool {
        #[cfg(feature = "postgres")]
        if matches!(self, StoreError::TakenOver { .. }) {
            return true;
        }
        false
    }

    /// The file system failed us (the lock file, a backup's target, SQLite's own I/O, a
    /// database it cannot open, a full disk, a read-only file for a write).
    pub fn is_io(&self) -> bool {
        use rusqlite::ErrorCode as C;
        match self {
            StoreError::LockFile { .. } | StoreError::Io { .. } | StoreError::Backup { .. } => true,
            StoreError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(
                    C::SystemIoFailure
                        | C::CannotOpen
                        | C::DiskFull
                        | C::ReadOnly
                        | C::PermissionDenied
                        | C::FileLockingProtocolFailed
                )
            ),
            #[cfg(feature = "postgres")]
            StoreError::Postgres { source, .. } => postgres::is_io(source),
            _ => false,
        }
    }
}

/// Adds the database path and what was being done to a rusqlite error.
trait Context<T> {
    fn ctx(self, path: &Path, what: &str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, path: &Path, what: &str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            what: what.to_string(),
            source,
        })
    }
}

/// The database. Fields drop in order: the connection closes before the lock is released.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    access: Access,
    /// Write transactions committed on this connection (explicit and autocommit), counted by a
    /// commit hook.
    commits: Arc<AtomicU64>,
    /// The billing calendar the engine plans with (set by [`Store::use_calendar`]): a new
    /// subscription's first `next_plan_at` is then its first due instant, else "now".
    calendar: Option<Calendar>,
    /// This open created the database (see [`Store::open_or_create`]).
    created: bool,
    _lock: Option<File>,
}

/// What the store knows of one schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub file: String,
    /// Digest of the version in force (see `sync`); `None` if none was ever accepted or the file
    /// must be looked at again.
    pub digest: Option<String>,
    pub accepted_at: Option<DateTime<Utc>>,
    /// Why the file's current content is refused; `None` when the current content is in force.
    pub last_error: Option<String>,
}

/// One ledger event.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub subscription_id: Option<String>,
    pub charge_id: Option<i64>,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// Ledger event kinds written by the store.
pub mod kind {
    pub const SUBSCRIPTION_ADDED: &str = "subscription_added";
    pub const SUBSCRIPTION_UPDATED: &str = "subscription_updated";
    pub const SUBSCRIPTION_REMOVED: &str = "subscription_removed";
    pub const SCHEDULE_REFUSED: &str = "schedule_refused";
    pub const SCHEDULE_FILE_MISSING: &str = "schedule_file_missing";
    pub const SCHEDULE_FILE_RETURNED: &str = "schedule_file_returned";
}

impl Store {
    /// Opens the database at `path`. See [`Access`]. The daemon's access never creates a
    /// database: a missing or empty file is [`StoreError::NoDatabase`] (see
    /// [`Store::open_or_create`]). The daemon's open also runs `PRAGMA quick_check` and refuses
    /// a damaged file ([`StoreError::Damaged`]) before it migrates or writes anything.
    pub fn open(path: &Path, access: Access) -> Result<Store, StoreError> {
        Store::open_with(path, access, false)
    }

    /// Opens the database at `path` as the daemon ([`Access::Daemon`]), creating it when there
    /// is none: owner-only (0600, whatever the umask; SQLite gives the `-wal` and `-shm` files
    /// it makes the database's mode), with a new random order-number prefix. [`Store::created`] then
    /// says so. Only for a database that is meant to be new (`run --init`, a first start under
    /// systemd in an empty state directory, a sandbox run, tests): a new database knows
    /// nothing of past charges, so every current period would be charged again.
    pub fn open_or_create(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, Access::Daemon, true)
    }

    fn open_with(path: &Path, access: Access, create: bool) -> Result<Store, StoreError> {
        let exists = path.try_exists().unwrap_or(true);
        let lock = match access {
            Access::Daemon => {
                // Before the lock file: a refused start leaves nothing behind.
                if !exists && !create {
                    return Err(StoreError::NoDatabase {
                        path: path.to_path_buf(),
                        empty: false,
                    });
                }
                let lock = take_daemon_lock(path)?;
                if !exists {
                    create_private(path)?;
                }
                Some(lock)
            }
            Access::Write | Access::ReadOnly => {
                if !exists {
                    return Err(StoreError::Missing {
                        path: path.to_path_buf(),
                    });
                }
                None
            }
        };
        let flags = match access {
            // The file exists by now (made above, owner-only): SQLite never creates it.
            Access::Daemon | Access::Write => {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
            }
            Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        };
        let conn = Connection::open_with_flags(path, flags).ctx(path, "cannot open it")?;
        // Enough for every statement of the sync and the charge path (the default is 16).
        conn.set_prepared_statement_cache_capacity(128);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&commits);
        // SQLite calls the hook for every committed write transaction (never for a read), just
        // before the commit; returning false lets the commit go ahead.
        conn.commit_hook(Some(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            false
        }))
        .ctx(path, "installing the commit hook")?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            access,
            commits,
            calendar: None,
            created: false,
            _lock: lock,
        };
        // Read before any pragma writes to the file: an empty file (version 0) is not a
        // database the daemon may take over unless it was allowed to create one.
        let version = store.schema_version()?;
        if access == Access::Daemon && version == 0 && !create {
            return Err(StoreError::NoDatabase {
                path: store.path,
                empty: true,
            });
        }
        store.set_pragmas()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: store.path,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if access == Access::Daemon {
            // Nothing is migrated, written or charged from a damaged file.
            if version > 0 {
                store.check("quick_check")?;
            }
            store.migrate(version)?;
            store.created = store.ensure_meta(create)?;
        } else if version < SCHEMA_VERSION {
            return Err(StoreError::NotMigrated {
                path: store.path,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        Ok(store)
    }

    /// Whether this open created the database (only [`Store::open_or_create`] does).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Runs `PRAGMA quick_check` or `PRAGMA integrity_check` (see [`check_file`]).
    fn check(&self, pragma: &'static str) -> Result<(), StoreError> {
        check_file(&self.conn, &self.path, pragma)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// How many write transactions this store has committed since it was opened (each explicit
    /// transaction and each autocommit write counts once; migrations included). For the load
    /// benchmark's commits-per-charge figure.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Records the calendar the engine plans with. Every stored `next_plan_at` (the due sweep's
    /// index) was computed with the calendar recorded in `meta` at that time; if that is not
    /// this one (the zone, charge time, catch-up or grace changed), every active subscription is
    /// set back to "plan now", so none is looked at later than the new calendar requires.
    pub fn use_calendar(&mut self, calendar: &Calendar) -> Result<(), StoreError> {
        self.calendar = Some(*calendar);
        if self.access == Access::ReadOnly {
            return Ok(());
        }
        let what = "recording the planning calendar";
        let basis = format!("{calendar:?}");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'plan_calendar'",
                [],
                |row| row.get(0),
            )
            .optional()
            .ctx(&self.path, what)?;
        if stored.as_deref() != Some(basis.as_str()) {
            tx.execute(
                "UPDATE subscriptions SET next_plan_at = '' \
                 WHERE removed_at IS NULL AND next_plan_at <> ''",
                [],
            )
            .ctx(&self.path, what)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('plan_calendar', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [basis],
            )
            .ctx(&self.path, what)?;
        }
        tx.commit().ctx(&self.path, what)
    }

    /// Sets the pragmas, then reads every one back: a database that does not give us what we
    /// asked for (WAL refused by the filesystem, say) is refused.
    fn set_pragmas(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let conn = &self.conn;
        conn.busy_timeout(BUSY_TIMEOUT)
            .ctx(&path, "setting busy_timeout")?;
        conn.pragma_update(None, "foreign_keys", true)
            .ctx(&path, "setting foreign_keys")?;
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx(&path, "setting synchronous")?;
        // Performance only: the daemon's page cache is 16 MiB (the default, kept by operator
        // commands, is 2 MiB), so the indexes a sync or a sweep walks stay in memory.
        if self.access == Access::Daemon {
            conn.pragma_update(None, "cache_size", -16_384)
                .ctx(&path, "setting cache_size")?;
        }
        // WAL is a property of the file: the daemon sets it, the others only check it.
        if self.access != Access::ReadOnly {
            conn.pragma_update(None, "journal_mode", "WAL")
                .ctx(&path, "setting journal_mode")?;
        }
        let check = |pragma: &'static str, wanted: &str, hint: &'static str| {
            let got: String = conn
                .query_row(&format!("PRAGMA {pragma}"), [], |row| {
                    let value: rusqlite::types::Value = row.get(0)?;
                    Ok(match value {
                        rusqlite::types::Value::Integer(n) => n.to_string(),
                        rusqlite::types::Value::Text(text) => text,
                        other => format!("{other:?}"),
                    })
                })
                .ctx(&path, &format!("reading PRAGMA {pragma}"))?;
            if got.eq_ignore_ascii_case(wanted) {
                Ok(())
            } else {
                Err(StoreError::Pragma {
                    path: path.clone(),
                    pragma,
                    wanted: wanted.to_string(),
                    got,
                    hint,
                })
            }
        };
        // A read-only open also takes a copy in rollback-journal mode (`backup` writes one with
        // VACUUM INTO: a single self-contained file), which it reads without ever needing write
        // access; whoever opens it to write (a restore) switches it to WAL above.
        let copy = self.access == Access::ReadOnly
            && conn
                .query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))
                .is_ok_and(|mode| mode.eq_ignore_ascii_case("delete"));
        if !copy {
            check(
                "journal_mode",
                "wal",
                "; the database must be on a local filesystem that supports WAL",
            )?;
        }
        // 2 = FULL: every commit is synced, so a committed intent survives a power cut.
        check("synchronous", "2", "")?;
        check("foreign_keys", "1", "")?;
        check("busy_timeout", &BUSY_TIMEOUT.as_millis().to_string(), "")?;
        Ok(())
    }

    /// The schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .ctx(&self.path, "reading user_version")?;
        u32::try_from(version).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: "PRAGMA user_version".to_string(),
            value: version.to_string(),
        })
    }

    /// Applies the migrations after `from`, each in its own transaction with its version bump.
    ///
    /// Foreign keys are off while migrations run (a migration may rebuild a table others refer
    /// to, which SQLite only allows that way) and every reference is checked before each commit;
    /// they are switched back on, and read back, afterwards.
    fn migrate(&mut self, from: u32) -> Result<(), StoreError> {
        if from as usize >= schema::MIGRATIONS.len() {
            return Ok(());
        }
        self.conn
            .pragma_update(None, "foreign_keys", false)
            .ctx(&self.path, "switching foreign keys off to migrate")?;
        let result = self.run_migrations(from);
        self.conn
            .pragma_update(None, "foreign_keys", true)
            .ctx(&self.path, "switching foreign keys back on")?;
        let on: bool = self
            .conn
            .query_row("PRAGMA foreign_keys", [], |row| row.get(0))
            .ctx(&self.path, "reading PRAGMA foreign_keys")?;
        if !on {
            return Err(StoreError::Pragma {
                path: self.path.clone(),
                pragma: "foreign_keys",
                wanted: "1".into(),
                got: "0".into(),
                hint: " after migrating",
            });
        }
        result
    }

    fn run_migrations(&mut self, from: u32) -> Result<(), StoreError> {
        for (index, sql) in schema::MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = index + 1;
            let what = format!("migrating to schema version {version}");
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx(&self.path, &what)?;
            tx.execute_batch(sql).ctx(&self.path, &what)?;
            let dangling: Option<String> = tx
                .query_row("PRAGMA foreign_key_check", [], |row| row.get(0))
                .optional()
                .ctx(&self.path, &what)?;
            if let Some(table) = dangling {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("{what}: a reference from table {table}"),
                    value: "points at a missing row".into(),
                });
            }
            tx.pragma_update(None, "user_version", version as i64)
                .ctx(&self.path, &what)?;
            tx.commit().ctx(&self.path, &what)?;
        }
        Ok(())
    }

    /// Writes the order-number prefix and the creation time once, when the database is new
    /// (`create`); returns whether it did. A database without its prefix that may not be
    /// created is refused: a new prefix would make every period's order numbers new.
    fn ensure_meta(&mut self, create: bool) -> Result<bool, StoreError> {
        let what = "initialising meta";
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&self.path, what)?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'order_prefix')",
                [],
                |row| row.get(0),
            )
            .ctx(&self.path, what)?;
        if !exists && !create {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: "meta.order_prefix".into(),
                value: "missing".into(),
            });
        }
        if !exists {
            let prefix = random_order_prefix().map_err(|message| StoreError::Random {
                path: self.path.clone(),
                message,
            })?;
            // When the file was created, in real time: metadata for operators, not billing time.
            let created_at = timestamp(Utc::now());
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('order_prefix', ?1), ('created_at', ?2)",
                params![prefix, created_at],
            )
            .ctx(&self.path, what)?;
        }
        tx.commit().ctx(&self.path, what)?;
        Ok(!exists)
    }

    fn require_write(&self, what: &'static str) -> Result<(), StoreError> {
        match self.access {
            Access::ReadOnly => Err(StoreError::ReadOnly {
                path: self.path.clone(),
                what,
            }),
            Access::Daemon | Access::Write => Ok(()),
        }
    }

    /// The random prefix of every OrderNumber made from this database, fixed at its creation.
    pub fn order_prefix(&self) -> Result<String, StoreError> {
        self.meta("order_prefix")
    }

    /// When the database was created.
    pub fn created_at(&self) -> Result<DateTime<Utc>, StoreError> {
        let text = self.meta("created_at")?;
        parse_timestamp(&self.path, "meta.created_at", &text)
    }

    fn meta(&self, key: &str) -> Result<String, StoreError> {
        let what = format!("reading meta.{key}");
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .ctx(&self.path, &what)?
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                what,
                value: String::new(),
            })
    }

    /// Every subscription the store knows, active and removed, by id.
    pub fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        self.query_subscriptions("", [])
    }

    /// How many subscriptions are in force (defined by a file).
    pub fn active_subscriptions(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM subscriptions INDEXED BY subscriptions_to_plan \
                 WHERE removed_at IS NULL",
                [],
                |row| row.get(0),
            )
            .ctx(&self.path, "counting subscriptions")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// One subscription by id, active or removed.
    pub fn subscription(&self, id: &str) -> Result<Option<StoredSubscription>, StoreError> {
        Ok(self
            .query_subscriptions("WHERE id = ?1", [id])?
            .into_iter()
            .next())
    }

    fn query_subscriptions<P: rusqlite::Params>(
        &self,
        filter: &str,
        params: P,
    ) -> Result<Vec<StoredSubscription>, StoreError> {
        query_subscriptions(&self.conn, &self.path, filter, params)
    }

    /// What the store knows of every schedule file, by name.
    pub fn schedule_files(&self) -> Result<Vec<StoredFile>, StoreError> {
        let what = "reading schedule_files";
        let mut statement = self
            .conn
            .prepare(
                "SELECT file, digest, accepted_at, last_error FROM schedule_files ORDER BY file",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (file, digest, accepted_at, last_error) = row.ctx(&self.path, what)?;
            let accepted_at = accepted_at
                .map(|t| parse_timestamp(&self.path, "schedule_files.accepted_at", &t))
                .transpose()?;
            out.push(StoredFile {
                file,
                digest,
                accepted_at,
                last_error,
            });
        }
        Ok(out)
    }

    /// The ledger in order, optionally only one subscription's events.
    pub fn ledger(&self, subscription_id: Option<&str>) -> Result<Vec<LedgerEntry>, StoreError> {
        let what = "reading the ledger";
        let mut statement = self
            .conn
            .prepare(
                "SELECT seq, at, subscription_id, charge_id, kind, detail FROM ledger \
                 WHERE ?1 IS NULL OR subscription_id = ?1 ORDER BY seq",
            )
            .ctx(&self.path, what)?;
        let rows = statement
            .query_map([subscription_id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .ctx(&self.path, what)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, subscription_id, charge_id, kind, detail) = row.ctx(&self.path, what)?;
            let detail = serde_json::from_str(&detail).map_err(|_| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("ledger {seq} detail"),
                value: detail.clone(),
            })?;
            out.push(LedgerEntry {
                seq,
                at: parse_timestamp(&self.path, "ledger.at", &at)?,
                subscription_id,
                charge_id,
                kind,
                detail,
            });
        }
        Ok(out)
    }

    /// Whether a subscription has any charges row.
    pub fn has_charges(&self, subscription_id: &str) -> Result<bool, StoreError> {
        sync_sqlite::has_charges(&self.conn, subscription_id).ctx(&self.path, "reading charges")
    }
}

fn query_subscriptions<P: rusqlite::Params>(
    conn: &Connection,
    path: &Path,
    filter: &str,
    params: P,
) -> Result<Vec<StoredSubscription>, StoreError> {
    let what = "reading subscriptions";
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions {filter} ORDER BY id");
    let mut statement = conn.prepare_cached(&sql).ctx(path, what)?;
    let rows = statement
        .query_map(params, sync_sqlite::sub_row)
        .ctx(path, what)?;
    let mut out = Vec::new();
    for row in rows {
        let row = row.ctx(path, what)?;
        out.push(row.decode(path)?);
    }
    Ok(out)
}

/// One subscription by id, through any connection or transaction.
fn read_subscription(
    conn: &Connection,
    path: &Path,
    id: &str,
) -> Result<Option<StoredSubscription>, StoreError> {
    Ok(query_subscriptions(conn, path, "WHERE id = ?1", [id])?
        .into_iter()
        .next())
}

/// The columns `sync_sqlite::sub_row` reads, in its order.
const SUBSCRIPTION_COLUMNS: &str = "id, file, line, customer, bill_number, currency, \
    amount_cents, cadence, start_date, state, catch_up, min_cents, max_cents, period_days, \
    max_date, created_at, updated_at, removed_at";

/// Takes the daemon's exclusive lock on `<db>.lock`, creating the file (0600) if needed. The lock is an
/// OS lock (`flock`): it is released when the file is closed or the process dies, so it is never
/// stale; the file itself may stay behind and means nothing when no one holds it.
fn take_daemon_lock(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| StoreError::LockFile {
            path: path.to_path_buf(),
            lock: lock_path.clone(),
            source,
        })?;
    // An operator command that peeks at the lock (`status`) holds it for an instant: a daemon
    // starting at that moment tries again briefly before giving up.
    let mut result = file.try_lock();
    for _ in 0..20 {
        if !matches!(result, Err(TryLockError::WouldBlock)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        result = file.try_lock();
    }
    match result {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock: lock_path,
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::LockFile {
            path: path.to_path_buf(),
            lock: lock_path,
            source,
        }),
    }
}

/// Creates an empty database file readable and writable by its owner only, whatever the
/// umask: the mode is set again after creation, since the umask can only take bits away and
/// SQLite itself would make the file 0644. SQLite gives the `-wal` and `-shm` files it makes the
/// database file's mode (it `fchmod`s them to it), so they are 0600 too.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |source| StoreError::Io {
        path: path.to_path_buf(),
        what: "cannot create it",
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(failed)?;
    file.sync_all().map_err(failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
    }
    Ok(())
}

/// `PRAGMA quick_check` or `integrity_check` on `conn`: anything but one `ok` row is
/// [`StoreError::Damaged`], with the first problem SQLite names; so is a file too damaged for
/// the check to run at all (SQLite's "malformed" or "not a database").
fn check_file(conn: &Connection, path: &Path, pragma: &'static str) -> Result<(), StoreError> {
    let what = format!("PRAGMA {pragma}");
    let rows = conn.prepare(&what).and_then(|mut statement| {
        statement
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()
    });
    let damaged = |problem: String| StoreError::Damaged {
        path: path.to_path_buf(),
        check: pragma,
        problem,
    };
    match rows {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
        Ok(rows) => Err(damaged(format!(
            "{} problem(s), the first: {}",
            rows.len(),
            rows.first().map_or("no answer", String::as_str)
        ))),
        Err(source) if is_damage(&source) => Err(damaged(source.to_string())),
        Err(source) => Err(StoreError::Sqlite {
            path: path.to_path_buf(),
            what,
            source,
        }),
    }
}

/// SQLite says the file is corrupt or not a database.
fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// 8 characters of Crockford base32 from 40 bits of OS randomness.
fn random_order_prefix() -> Result<String, String> {
    let mut bytes = [0u8; 5];
    getrandom::getrandom(&mut bytes).map_err(|e| e.to_string())?;
    let bits = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Ok(crockford(bits, ORDER_PREFIX_LEN))
}

/// The low `5 × len` bits of `bits` in Crockford base32, most significant first.
fn crockford(bits: u64, len: usize) -> String {
    (0..len)
        .rev()
        .map(|i| char::from(CROCKFORD[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

/// `Connection::execute` through the statement cache: the sync and the planner run the same few
/// statements hundreds of thousands of times, and preparing one costs more than running it.
fn cached_execute<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `Connection::query_row` through the statement cache (see [`cached_execute`]).
fn cached_query_row<
    T,
    P: rusqlite::Params,
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: F,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// `subscriptions.next_plan_at` for "never": after every instant as stored.
const PLAN_NEVER: &str = "9999-12-31T23:59:59.999999Z";

/// A [`Revisit`] as stored in `subscriptions.next_plan_at` (`''` sorts before every instant).
fn revisit_text(revisit: Revisit) -> String {
    match revisit {
        Revisit::Now => String::new(),
        // Past year 9999 the text would not sort (`+10000-…`): as good as never.
        Revisit::At(at) if at.year() <= 9999 => timestamp(at),
        Revisit::At(_) | Revisit::Never => PLAN_NEVER.to_string(),
    }
}

/// An instant as stored: RFC 3339 UTC with microseconds, which sorts as it reads.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(path: &Path, what: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt {
            path: path.to_path_buf(),
            what: what.to_string(),
            value: text.to_string(),
        })
}

fn date_text(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn parse_date(path: &Path, what: &str, text: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
        value: text.to_string(),
    })
}

/// Decodes the stored columns of a subscription into the domain types.
#[allow(clippy::too_many_arguments)]
fn decode_terms(
    path: &Path,
    id: &str,
    amount_cents: i64,
    cadence: &str,
    start: &str,
    state: &str,
    catch_up: Option<&str>,
    min_cents: Option<i64>,
    max_cents: Option<i64>,
    period_days: Option<i64>,
    max_date: Option<&str>,
) -> Result<Terms, StoreError> {
    let corrupt = |field: &str, value: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        what: format!("subscription {id} {field}"),
        value,
    };
    let money = |field: &str, cents: i64| {
        Money::from_cents(cents).ok_or_else(|| corrupt(field, cents.to_string()))
    };
    Ok(Terms {
        amount: money("amount_cents", amount_cents)?,
        every: Cadence::parse(cadence).map_err(|_| corrupt("cadence", cadence.to_string()))?,
        start: parse_date(path, &format!("subscription {id} start_date"), start)?,
        state: SubscriptionState::parse(state)
            .ok_or_else(|| corrupt("state", state.to_string()))?,
        catch_up: catch_up
            .map(|c| CatchUp::parse(c).ok_or_else(|| corrupt("catch_up", c.to_string())))
            .transpose()?,
        limits: Limits {
            min_amount: min_cents.map(|c| money("min_cents", c)).transpose()?,
            max_amount: max_cents.map(|c| money("max_cents", c)).transpose()?,
            period_days: period_days
                .map(|d| u32::try_from(d).map_err(|_| corrupt("period_days", d.to_string())))
                .transpose()?,
            max_date: max_date
                .map(|d| parse_date(path, &format!("subscription {id} max_date"), d))
                .transpose()?,
        },
    })
}

#[cfg(test)]
mod tests;
