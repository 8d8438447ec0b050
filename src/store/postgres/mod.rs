//! The PostgreSQL store: the charge path's boundary ([`ChargeStore`], [`PlanTransaction`]) for
//! several recurrentd instances sharing one database, with leased work and fencing tokens.
//! SQLite stays the default store; this one is built with the `postgres` cargo feature (on by
//! default) and chosen by `database.url` (`recurrentd run` and `status`; the daemon's loop is
//! `daemon/shared.rs`).
//!
//! **Connection.** One synchronous connection per [`PgStore`] (like SQLite's `Store`), used from
//! blocking threads only: the `postgres` client runs its own runtime and must never be called
//! from async code directly. No TLS yet (`NoTls`): TLS is a follow-up, so use a local socket or a
//! trusted network. Error messages name the database by its URL without the password
//! ([`redact_url`]).
//!
//! **Schema** ([`schema`]): the final shape of SQLite's charge tables in PostgreSQL types
//! (`timestamptz`, `date`, `bigint` cents, `boolean`, `json` ledger detail), the same `CHECK`
//! lists and unique keys (one row per subscription and period or reference, unique OrderNumber,
//! one live attempt per charge), migrations in `schema_migrations` applied under
//! `pg_advisory_xact_lock` (N instances starting at once migrate once; a schema newer than this
//! binary is refused). `next_plan_at` is `-infinity` for "now" and `infinity` for "never". The
//! ledger is append-only by triggers refusing `UPDATE`, `DELETE` and `TRUNCATE`; an `AFTER INSERT`
//! trigger copies outbox kinds into `outbox` like SQLite's. Not here yet: enrolment attempts,
//! refunds, books (their tables come with their code).
//!
//! **Schedule sync** (`sync`): the sync's rules (`store::sync`, shared with SQLite) on this
//! store's primitives ([`PgSync`]); [`PgStore::sync_dir`], [`PgStore::sync_schedules`],
//! [`PgStore::remove_missing_file`]. Every sync transaction takes one advisory lock, so
//! instances syncing the same folder at once are serialised file by file and write each row
//! once. **Daemon** (`daemon`): [`DaemonStore`](super::DaemonStore) for [`PgStore`]: the
//! holder of the [`SCHEDULE_LEAD`] lease syncs the folder, ticks are heartbeats that fail once
//! another process took the instance's name ([`StoreError::TakenOver`]), and a clean stop
//! releases this instance's claims.
//!
//! **Instances and leases.** [`PgStore::connect`] registers the instance in `instances`, bumping
//! its `epoch`: a restarted process under the same name is a new holder, so claims are held by
//! (name, epoch). Every claim of an attempt takes a new value of the `fence_tokens` sequence
//! (kept when the same holder claims again, so its own work in flight stays valid) and a lease
//! on the **database's clock** (`clock_timestamp()`; the engine's clock may be a rehearsal
//! clock): [`ChargeStore::claim_due_attempts`] takes due attempts whose lease is free, expired
//! or ours, `FOR UPDATE SKIP LOCKED`, at most [`CLAIM_BATCH`] at a time, so instances claim
//! disjoint sets. A new intent is claimed by the instance that planned it. The lease must also
//! cover the wait between a claim and its send (the pacer's queue): past it `mark_sending`
//! refuses (safe: the attempt is claimed again at a later sweep), so a lease far shorter than
//! that wait only costs throughput. The instance's own row (`heartbeat`, `lease_until`) is
//! informational for now (`status`); claims are decided by each attempt's lease alone.
//!
//! **Fencing.** [`ChargeStore::mark_sending`] changes an attempt only if it is still in the
//! expected state, held under the job's fence by this holder, and the lease has not expired
//! (and it extends the lease to cover the request); each outcome of
//! [`ChargeStore::apply_outcomes`] only if the state and the fence still match. An instance
//! paused past its lease therefore finds its writes refused once another instance has claimed
//! the attempt. A settled attempt's owner and lease are cleared.
//!
//! **Planning.** [`PlanTransaction::history`] locks the subscription's row
//! (`FOR NO KEY UPDATE SKIP LOCKED`, READ COMMITTED) before reading anything else. Every write
//! this store makes to a subscription's charges, attempts or attention takes the same row lock
//! first (planning; [`ChargeStore::apply_outcomes`], which locks all its subscriptions in id
//! order; [`ChargeStore::flag_attempt`]) and holds it to its commit. So once the lock is held
//! nobody else can commit a change to that history, and each later statement of the
//! transaction (READ COMMITTED takes a fresh snapshot per statement, after the lock) reads it as
//! it will be when the intent commits: the limits checked hold. [`ChargeStore::mark_sending`]
//! needs no lock: it only acts on an unresolved attempt, and a planner that sees an unresolved
//! attempt plans nothing. A subscription whose row another transaction holds is skipped
//! (`history` returns `None`): that transaction is planning or recording it, and the next sweep
//! looks again. Skipping rather than waiting means planners never wait for each other, so two
//! planning batches that reach the same subscriptions in different orders cannot deadlock, and
//! the planner that comes second after the first committed sees its intent (unresolved) and
//! plans nothing. `FOR NO KEY UPDATE` (not `FOR UPDATE`) so the foreign-key checks of ledger
//! inserts elsewhere do not wait for a planner.
//!
//! **Residual risk.** The database cannot stop a process paused between its lease check
//! (`mark_sending`) and the moment its request leaves: its request may leave after the lease
//! expired and another instance claimed the attempt. That instance finds the attempt sent
//! (`sent = true`), so it only ever looks it up, never sends it again; and a "not found" answer
//! only counts once the settle window has passed since the send and after repeated spaced
//! queries. So a late request can only be lost to a new attempt if it leaves more than the
//! settle window after `mark_sending`. The lease must therefore be shorter than the settle
//! window ([`lease_fits_settle_window`]), so that every request sent inside its lease left
//! well inside the window; `connect` does not know the settle window: the configuration checks
//! it (`database.lease_secs` at most half of `engine.settle_minutes`).

mod daemon;
mod report;
mod schema;
mod sync;

pub use report::{InstanceStatus, LeaseStatus, SharedStatus, shared_status};
#[cfg(test)]
pub(crate) mod tests;

pub use daemon::{MIN_SCHEDULE_TTL, SCHEDULE_LEAD};
pub use sync::PgSync;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Transaction};
use serde_json::{Map, Value, json};

use super::charges::purpose_from_columns;
use super::{LedgerEntry, OutcomeWrite, StoreError, kind};
use crate::billing::{Cadence, CatchUp, Limits, Revisit, SubscriptionState, Terms};
use crate::lifecycle::{
    AttemptState, ChargeState, Event, Flag, History, Job, OpenCharge, PeriodRow, Purpose,
    StoredSubscription, event, flag,
};
use crate::money::{Currency, Money};

/// The schema version this binary writes and reads.
pub const SCHEMA_VERSION: i32 = schema::MIGRATIONS.len() as i32;

/// Most attempts one [`ChargeStore::claim_due_attempts`] call claims: small enough that a
/// sweep's claimed lookups finish well within a lease at the paced rate (100 at 5 requests/s:
/// 20 s, against the default lease of 90 s), so one instance does not take a backlog under its
/// lease while others idle; the rest are claimed at the next sweep.
pub const CLAIM_BATCH: i64 = 100;

/// The states the due sweep works on (SQLite's `due_attempts`; also what blocks planning).
const DUE_STATES: &str = "('pending', 'not_sent', 'unknown', 'parked', 'quarantined')";
/// The unresolved states (as SQLite's `unresolved_attempts`: quarantined ones wait for an
/// operator or their next check).
const UNRESOLVED_STATES: &str = "('pending', 'not_sent', 'unknown', 'parked')";
/// States that have charged or may have (SQLite's `attempts_one_live`).
const LIVE_STATES: &str = "('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')";

/// Whether a lease is short enough for the settle window (see the module documentation): a
/// request sent inside its lease must leave well inside the window in which "not found" proves
/// nothing. Required: `lease < settle`.
pub fn lease_fits_settle_window(lease: Duration, settle: Duration) -> bool {
    !lease.is_zero() && lease < settle
}

/// The client configuration for `url` (its password, if any, from `password`, kept out of the
/// URL), with keepalives and a connect timeout so that a server or a network that vanished is
/// noticed, not waited on for hours; and the URL without its password, for messages.
pub(super) fn connection_config(
    url: &str,
    password: Option<&secrecy::SecretString>,
) -> Result<(PathBuf, postgres::Config), StoreError> {
    let location = PathBuf::from(redact_url(url));
    let mut config = postgres::Config::from_str(url).map_err(|source| StoreError::Postgres {
        location: location.display().to_string(),
        what: "reading the connection string".into(),
        source,
    })?;
    if let Some(password) = password {
        use secrecy::ExposeSecret;
        config.password(password.expose_secret());
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    Ok((location, config))
}

/// The connection string without its password, for messages: a URL loses its password and any
/// `password` query parameter; a `key=value` string is rebuilt from its host, port, user and
/// database name only.
pub fn redact_url(url: &str) -> String {
    if let Ok(mut parsed) = url::Url::parse(url)
        && matches!(parsed.scheme(), "postgres" | "postgresql")
    {
        let _ = parsed.set_password(None);
        if parsed.query().is_some() {
            let kept: Vec<(String, String)> = parsed
                .query_pairs()
                .filter(|(key, _)| !key.eq_ignore_ascii_case("password"))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                parsed.set_query(None);
            } else {
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        return parsed.to_string();
    }
    match postgres::Config::from_str(url) {
        Ok(config) => {
            let mut parts = Vec::new();
            for host in config.get_hosts() {
                match host {
                    postgres::config::Host::Tcp(name) => parts.push(format!("host={name}")),
                    postgres::config::Host::Unix(path) => {
                        parts.push(format!("host={}", path.display()))
                    }
                }
            }
            for port in config.get_ports() {
                parts.push(format!("port={port}"));
            }
            if let Some(user) = config.get_user() {
                parts.push(format!("user={user}"));
            }
            if let Some(db) = config.get_dbname() {
                parts.push(format!("dbname={db}"));
            }
            parts.join(" ")
        }
        Err(_) => "(unparsable PostgreSQL connection string)".to_string(),
    }
}

/// Adds the database's location and what was being done to a `postgres` error.
trait PgContext<T> {
    fn pg(self, location: &Path, what: &str) -> Result<T, StoreError>;
}

impl<T> PgContext<T> for Result<T, postgres::Error> {
    fn pg(self, location: &Path, what: &str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Postgres {
            location: location.display().to_string(),
            what: what.to_string(),
            source,
        })
    }
}

fn corrupt(location: &Path, what: &str, value: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: location.to_path_buf(),
        what: what.to_string(),
        value: value.to_string(),
    }
}

/// An instance registered in the database (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub name: String,
    /// Bumped at each connect under this name.
    pub epoch: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Database clock; past it the instance is presumed gone.
    pub lease_until: DateTime<Utc>,
}

/// The PostgreSQL store: one connection, one registered instance.
pub struct PgStore {
    /// Closed by [`PgStore`]'s `Drop`, off any async thread (see there).
    client: std::mem::ManuallyDrop<Client>,
    location: PathBuf,
    instance: String,
    epoch: i64,
    /// The lease length in microseconds (a claim lasts this long on the database's clock).
    lease_us: i64,
    /// The calendar the engine plans with, once recorded ([`PgStore::use_calendar`]).
    calendar: Option<crate::billing::Calendar>,
}

impl Drop for PgStore {
    /// The synchronous client closes its connection by blocking on a runtime of its own, which
    /// panics on a thread that drives async tasks. A store dropped there (a daemon stopping, a
    /// start-up cut short by a signal) hands its client to a plain thread to close.
    fn drop(&mut self) {
        // SAFETY: `client` is taken once, here, and never used again.
        let client = unsafe { std::mem::ManuallyDrop::take(&mut self.client) };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(client));
        } else {
            drop(client);
        }
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .field("instance", &self.instance)
            .field("epoch", &self.epoch)
            .field("lease_us", &self.lease_us)
            .finish_non_exhaustive()
    }
}

/// The columns a [`Job`] is read from (`a` the attempt, `c` its charge); see [`decode_job`].
const JOB_COLUMNS: &str = "a.id, a.charge_id, c.subscription_id, c.period, a.attempt, \
    a.order_number, c.bill_number, c.amount_cents, c.currency, a.state, a.created_at, a.wall_at, \
    a.sent, a.checks, a.not_found, a.test_mode, a.response_code, a.sent_at, c.reference, \
    a.seen_at IS NOT NULL, a.fence";

/// The columns a [`StoredSubscription`] is read from; see [`decode_subscription`].
const SUBSCRIPTION_COLUMNS: &str = "id, file, line, customer, bill_number, currency, \
    amount_cents, cadence, start_date, state, catch_up, min_cents, max_cents, period_days, \
    max_date, created_at, updated_at, removed_at";

/// The columns an [`OpenCharge`] is read from (`c` the charge); see [`decode_open_charge`].
const OPEN_CHARGE_COLUMNS: &str = "c.id, c.period, c.reference, c.due_date, c.amount_cents, \
    c.currency, c.bill_number, c.next_attempt_at, \
    (SELECT count(*) FROM attempts a WHERE a.charge_id = c.id), \
    EXISTS (SELECT 1 FROM attempts a WHERE a.charge_id = c.id AND a.state IN \
        ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')), \
    c.created_at";

fn money(location: &Path, what: &str, cents: i64) -> Result<Money, StoreError> {
    Money::from_cents(cents).ok_or_else(|| corrupt(location, what, cents))
}

fn currency(location: &Path, what: &str, text: &str) -> Result<Currency, StoreError> {
    Currency::parse(text).map_err(|_| corrupt(location, what, text))
}

fn attempt_state(location: &Path, text: &str) -> Result<AttemptState, StoreError> {
    AttemptState::parse(text).ok_or_else(|| corrupt(location, "attempts.state", text))
}

fn decode_job(location: &Path, row: &Row) -> Result<Job, StoreError> {
    let attempt: i64 = row.get(4);
    let cents: i64 = row.get(7);
    let currency_text: String = row.get(8);
    let state: String = row.get(9);
    let checks: i64 = row.get(13);
    let not_found: i64 = row.get(14);
    Ok(Job {
        attempt_id: row.get(0),
        charge_id: row.get(1),
        subscription_id: row.get(2),
        purpose: purpose_from_columns(location, row.get(3), row.get(18))?,
        attempt: u32::try_from(attempt)
            .map_err(|_| corrupt(location, "attempts.attempt", attempt))?,
        order_number: row.get(5),
        bill_number: row.get(6),
        amount: money(location, "charges.amount_cents", cents)?,
        currency: currency(location, "charges.currency", &currency_text)?,
        state: attempt_state(location, &state)?,
        created_at: row.get(10),
        wall_at: row.get(11),
        sent: row.get(12),
        checks: u32::try_from(checks).unwrap_or(u32::MAX),
        not_found: u32::try_from(not_found).unwrap_or(u32::MAX),
        test_mode: row.get(15),
        response_code: row.get(16),
        sent_at: row.get(17),
        seen: row.get(19),
        fence: row.get(20),
    })
}

fn decode_subscription(location: &Path, row: &Row) -> Result<StoredSubscription, StoreError> {
    let id: String = row.get(0);
    let bad = |field: &str, value: String| {
        corrupt(location, &format!("subscription {id} {field}"), value)
    };
    let line: i64 = row.get(2);
    let currency_text: String = row.get(5);
    let cents: i64 = row.get(6);
    let cadence: String = row.get(7);
    let state: String = row.get(9);
    let catch_up: Option<String> = row.get(10);
    let min_cents: Option<i64> = row.get(11);
    let max_cents: Option<i64> = row.get(12);
    let period_days: Option<i64> = row.get(13);
    let money = |field: &str, cents: i64| {
        Money::from_cents(cents).ok_or_else(|| bad(field, cents.to_string()))
    };
    let terms = Terms {
        amount: money("amount_cents", cents)?,
        every: Cadence::parse(&cadence).map_err(|_| bad("cadence", cadence.clone()))?,
        start: row.get(8),
        state: SubscriptionState::parse(&state).ok_or_else(|| bad("state", state.clone()))?,
        catch_up: catch_up
            .map(|c| CatchUp::parse(&c).ok_or_else(|| bad("catch_up", c.clone())))
            .transpose()?,
        limits: Limits {
            min_amount: min_cents.map(|c| money("min_cents", c)).transpose()?,
            max_amount: max_cents.map(|c| money("max_cents", c)).transpose()?,
            period_days: period_days
                .map(|d| u32::try_from(d).map_err(|_| bad("period_days", d.to_string())))
                .transpose()?,
            max_date: row.get(14),
        },
    };
    Ok(StoredSubscription {
        file: row.get(1),
        line: usize::try_from(line).map_err(|_| bad("line", line.to_string()))?,
        customer: row.get(3),
        bill_number: row.get(4),
        currency: Currency::parse(&currency_text)
            .map_err(|_| bad("currency", currency_text.clone()))?,
        terms,
        created_at: row.get(15),
        updated_at: row.get(16),
        removed_at: row.get(17),
        id,
    })
}

fn decode_open_charge(location: &Path, row: &Row) -> Result<OpenCharge, StoreError> {
    let cents: i64 = row.get(4);
    let currency_text: String = row.get(5);
    let attempts: i64 = row.get(8);
    Ok(OpenCharge {
        id: row.get(0),
        purpose: purpose_from_columns(location, row.get(1), row.get(2))?,
        due_date: row.get(3),
        amount: money(location, "charges.amount_cents", cents)?,
        currency: currency(location, "charges.currency", &currency_text)?,
        bill_number: row.get(6),
        next_attempt_at: row.get(7),
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        live_attempt: row.get(9),
        created_at: row.get(10),
    })
}

/// Appends a ledger event (the outbox trigger copies the outbox kinds).
fn append(
    conn: &mut impl GenericClient,
    location: &Path,
    at: DateTime<Utc>,
    subscription_id: Option<&str>,
    charge_id: Option<i64>,
    event: &Event,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &at,
            &subscription_id,
            &charge_id,
            &event.kind,
            &event.detail,
        ],
    )
    .pg(location, "appending to the ledger")?;
    Ok(())
}

/// Locks a subscription's row for a change of its history (waits for a holder).
fn lock_subscription(
    conn: &mut impl GenericClient,
    location: &Path,
    id: &str,
) -> Result<(), StoreError> {
    conn.query(
        "SELECT 1 FROM subscriptions WHERE id = $1 FOR NO KEY UPDATE",
        &[&id],
    )
    .pg(location, "locking a subscription")?;
    Ok(())
}

/// Flags a subscription for an operator (SQLite's `raise_flag`): a hard decline does not
/// replace an existing flag; a possible double charge does, keeping the earlier reason, and is
/// a ledger event of its kind.
fn raise_flag(
    conn: &mut impl GenericClient,
    location: &Path,
    subscription_id: &str,
    charge_id: Option<i64>,
    flag: &Flag,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let what = "flagging a subscription for an operator";
    if flag.kind == flag::HARD_DECLINE {
        conn.execute(
            "INSERT INTO attention (subscription_id, kind, reason, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subscription_id) DO NOTHING",
            &[&subscription_id, &flag.kind, &flag.reason, &at],
        )
        .pg(location, what)?;
        return Ok(());
    }
    conn.execute(
        "INSERT INTO attention (subscription_id, kind, reason, since) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subscription_id) DO UPDATE SET kind = excluded.kind, \
         reason = excluded.reason || ' (flagged before: ' || attention.reason || ')', \
         since = excluded.since",
        &[&subscription_id, &flag.kind, &flag.reason, &at],
    )
    .pg(location, what)?;
    append(
        conn,
        location,
        at,
        Some(subscription_id),
        charge_id,
        &Event {
            kind: flag.kind,
            detail: json!({ "reason": flag.reason }),
        },
    )
}

fn charged_instants(
    conn: &mut impl GenericClient,
    location: &Path,
    subscription_id: &str,
    except_attempt: Option<i64>,
) -> Result<Vec<DateTime<Utc>>, StoreError> {
    let rows = conn
        .query(
            &format!(
                "SELECT GREATEST(a.created_at, COALESCE(a.sent_at, a.created_at)) FROM attempts a \
                 JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = $1 AND a.id IS DISTINCT FROM $2 \
                 AND a.state IN {LIVE_STATES} \
                 UNION ALL SELECT at FROM enrolments WHERE subscription_id = $1 \
                 ORDER BY 1"
            ),
            &[&subscription_id, &except_attempt],
        )
        .pg(location, "reading charge instants")?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

fn query_jobs(
    conn: &mut impl GenericClient,
    location: &Path,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Job>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM attempts a JOIN charges c ON c.id = a.charge_id {filter}"
    );
    let rows = conn.query(&sql, params).pg(location, "reading attempts")?;
    rows.iter().map(|row| decode_job(location, row)).collect()
}

fn read_subscription(
    conn: &mut impl GenericClient,
    location: &Path,
    id: &str,
) -> Result<Option<StoredSubscription>, StoreError> {
    let row = conn
        .query_opt(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1"),
            &[&id],
        )
        .pg(location, "reading a subscription")?;
    row.map(|row| decode_subscription(location, &row))
        .transpose()
}

/// The detail of a `subscription_added` event, in the shape SQLite's schedule sync writes:
/// `{"file", "line", "subscription": {field: text}}` with the schedule file's field names.
fn added_detail(sub: &StoredSubscription) -> Value {
    let terms = &sub.terms;
    let mut fields = Map::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            fields.insert(key.to_string(), Value::String(value));
        }
    };
    put("customer", sub.customer.clone());
    put("bill_number", Some(sub.bill_number.clone()));
    put("currency", Some(sub.currency.as_str().to_string()));
    put("amount", Some(terms.amount.to_string()));
    put("every", Some(terms.every.to_string()));
    put("start", Some(terms.start.format("%Y-%m-%d").to_string()));
    put("state", Some(terms.state.to_string()));
    put("catch_up", terms.catch_up.map(|c| c.to_string()));
    put(
        "limits.min_amount",
        terms.limits.min_amount.map(|m| m.to_string()),
    );
    put(
        "limits.max_amount",
        terms.limits.max_amount.map(|m| m.to_string()),
    );
    put(
        "limits.period_days",
        terms.limits.period_days.map(|d| d.to_string()),
    );
    put(
        "limits.max_date",
        terms
            .limits
            .max_date
            .map(|d| d.format("%Y-%m-%d").to_string()),
    );
    json!({ "file": sub.file, "line": sub.line, "subscription": Value::Object(fields) })
}

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` string; no TLS:
    /// a follow-up), applies the migrations this binary knows (once, under an advisory lock,
    /// however many instances start at once; a newer schema is refused with
    /// [`StoreError::TooNew`]), and registers `instance`, bumping its epoch. `lease` is how long
    /// a claim lasts on the database's clock (see [`lease_fits_settle_window`]). The objects
    /// live in the connection's `search_path` schema (set it with the URL's
    /// `options=-c search_path=...` to use another schema than `public`).
    pub fn connect(url: &str, instance: &str, lease: Duration) -> Result<PgStore, StoreError> {
        PgStore::open(url, None, instance, lease)
    }

    /// Bounds what a frozen or partitioned instance can hold up: its session is ended by the
    /// server once idle inside a transaction for half a lease, at least 10 s (its locks go with it), a wait
    /// for a row lock gives up after 10 s (a failed statement, so a failed tick, never a
    /// blocked instance), and TCP keepalives notice a vanished peer.
    fn limit_waits(&mut self) -> Result<(), StoreError> {
        let idle_ms = (self.lease_us / 2000).clamp(10_000, 600_000);
        self.client
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = {idle_ms}; SET lock_timeout = 10000"
            ))
            .pg(&self.location, "setting the session's time limits")
    }

    /// [`PgStore::connect`] with a password kept out of the URL (`database.password_file`, a
    /// systemd credential): it never appears in a message or in `Debug` output.
    pub fn connect_with_password(
        url: &str,
        password: Option<&secrecy::SecretString>,
        instance: &str,
        lease: Duration,
    ) -> Result<PgStore, StoreError> {
        PgStore::open(url, password, instance, lease)
    }

    fn open(
        url: &str,
        password: Option<&secrecy::SecretString>,
        instance: &str,
        lease: Duration,
    ) -> Result<PgStore, StoreError> {
        let (location, config) = connection_config(url, password)?;
        if instance.is_empty() {
            return Err(corrupt(&location, "instance name", "(empty)"));
        }
        let lease_us = i64::try_from(lease.as_micros())
            .ok()
            .filter(|us| *us > 0)
            .ok_or_else(|| corrupt(&location, "lease", format!("{lease:?}")))?;
        let client = config.connect(NoTls).pg(&location, "connecting")?;
        let mut store = PgStore {
            client: std::mem::ManuallyDrop::new(client),
            location,
            instance: instance.to_string(),
            epoch: 0,
            lease_us,
            calendar: None,
        };
        store.limit_waits()?;
        store.migrate()?;
        store.register()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let location = self.location.clone();
        let what = "migrating the schema";
        let mut tx = self.client.transaction().pg(&location, what)?;
        // One migrator per schema at a time: the others wait here, then find it done.
        tx.execute(
            "SELECT pg_advisory_xact_lock(1919250, hashtext(current_schema()))",
            &[],
        )
        .pg(&location, what)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .pg(&location, what)?;
        let found: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .pg(&location, what)?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: location,
                found: u32::try_from(found).unwrap_or(u32::MAX),
                known: SCHEMA_VERSION as u32,
            });
        }
        for (index, sql) in schema::MIGRATIONS
            .iter()
            .enumerate()
            .skip(found.max(0) as usize)
        {
            let version = index as i32 + 1;
            let what = format!("migrating to schema version {version}");
            tx.batch_execute(sql).pg(&location, &what)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .pg(&location, &what)?;
        }
        if found == 0 {
            // A new schema: its order-number prefix and creation time, once (as SQLite's
            // `ensure_meta` for a new file). A schema migrated before keeps what it has.
            let prefix = super::random_order_prefix().map_err(|message| StoreError::Random {
                path: location.clone(),
                message,
            })?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('order_prefix', $1), ('created_at', $2)",
                &[&prefix, &super::timestamp(Utc::now())],
            )
            .pg(&location, what)?;
        }
        tx.commit().pg(&location, what)
    }

    fn register(&mut self) -> Result<(), StoreError> {
        let row = self
            .client
            .query_one(
                "INSERT INTO instances (name, epoch, started_at, heartbeat_at, lease_until) \
                 VALUES ($1, 1, clock_timestamp(), clock_timestamp(), \
                         clock_timestamp() + $2 * interval '1 microsecond') \
                 ON CONFLICT (name) DO UPDATE SET epoch = instances.epoch + 1, \
                     started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
                     lease_until = excluded.lease_until \
                 RETURNING epoch",
                &[&self.instance, &(self.lease_us as f64)],
            )
            .pg(&self.location, "registering the instance")?;
        self.epoch = row.get(0);
        Ok(())
    }

    /// Renews this instance's registration (heartbeat and lease). `false` if another process
    /// has registered under the same name since (a newer epoch): this one should stop.
    pub fn heartbeat(&mut self) -> Result<bool, StoreError> {
        let changed = self
            .client
            .execute(
                "UPDATE instances SET heartbeat_at = clock_timestamp(), \
                 lease_until = clock_timestamp() + $3 * interval '1 microsecond' \
                 WHERE name = $1 AND epoch = $2",
                &[&self.instance, &self.epoch, &(self.lease_us as f64)],
            )
            .pg(&self.location, "renewing the instance's heartbeat")?;
        Ok(changed > 0)
    }

    /// The instances registered in this database, by name.
    pub fn instances(&mut self) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT name, epoch, started_at, heartbeat_at, lease_until FROM instances \
                 ORDER BY name",
                &[],
            )
            .pg(&self.location, "reading instances")?;
        Ok(rows
            .iter()
            .map(|row| InstanceRow {
                name: row.get(0),
                epoch: row.get(1),
                started_at: row.get(2),
                heartbeat_at: row.get(3),
                lease_until: row.get(4),
            })
            .collect())
    }

    /// The random prefix of every OrderNumber made from this database, fixed when its schema
    /// was created.
    pub fn order_prefix(&mut self) -> Result<String, StoreError> {
        self.meta_value("order_prefix", "reading meta.order_prefix")?
            .ok_or_else(|| corrupt(&self.location, "meta.order_prefix", "missing"))
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// This connection's epoch under its instance name.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The database's URL without its password.
    pub fn location(&self) -> &Path {
        &self.location
    }

    /// Takes or renews the leader lease `name` for `ttl` (database clock) if it is free,
    /// expired or already ours; returns its fencing token (kept while we hold it, new when it
    /// changes hands), or `None` if another holder's lease is still running.
    pub fn try_lead(&mut self, name: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        let ttl_us = ttl.as_micros() as f64;
        let row = self
            .client
            .query_opt(
                "INSERT INTO leases AS l (name, owner, owner_epoch, fence, until) \
                 VALUES ($1, $2, $3, nextval('fence_tokens'), \
                         clock_timestamp() + $4 * interval '1 microsecond') \
                 ON CONFLICT (name) DO UPDATE SET \
                     fence = CASE WHEN l.owner = excluded.owner \
                                   AND l.owner_epoch = excluded.owner_epoch \
                                  THEN l.fence ELSE excluded.fence END, \
                     owner = excluded.owner, owner_epoch = excluded.owner_epoch, \
                     until = excluded.until \
                 WHERE (l.owner = excluded.owner AND l.owner_epoch = excluded.owner_epoch) \
                    OR l.until < clock_timestamp() \
                 RETURNING fence",
                &[&name, &self.instance, &self.epoch, &ttl_us],
            )
            .pg(&self.location, "taking a leader lease")?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Gives up the leader lease `name` if we hold it (another instance may take it at once).
    pub fn release_lead(&mut self, name: &str) -> Result<bool, StoreError> {
        let changed = self
            .client
            .execute(
                "DELETE FROM leases WHERE name = $1 AND owner = $2 AND owner_epoch = $3",
                &[&name, &self.instance, &self.epoch],
            )
            .pg(&self.location, "releasing a leader lease")?;
        Ok(changed > 0)
    }

    /// Inserts a subscription row (planned "now") with its `subscription_added` ledger event,
    /// in one transaction; its timestamps are the given subscription's, the event's is `now`.
    /// A stop-gap writer outside schedule sync ([`PgStore::sync_dir`] is the real one), used by
    /// tests to set up subscriptions.
    pub fn insert_subscription(
        &mut self,
        sub: &StoredSubscription,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let what = "adding a subscription";
        let location = self.location.clone();
        let terms = &sub.terms;
        let mut tx = self.client.transaction().pg(&location, what)?;
        let line = i64::try_from(sub.line).unwrap_or(i64::MAX);
        tx.execute(
            &format!(
                "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}, next_plan_at) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
                  $18, '-infinity')"
            ),
            &[
                &sub.id,
                &sub.file,
                &line,
                &sub.customer,
                &sub.bill_number,
                &sub.currency.as_str(),
                &terms.amount.cents(),
                &terms.every.to_string(),
                &terms.start,
                &terms.state.to_string(),
                &terms.catch_up.map(|c| c.to_string()),
                &terms.limits.min_amount.map(Money::cents),
                &terms.limits.max_amount.map(Money::cents),
                &terms.limits.period_days.map(i64::from),
                &terms.limits.max_date,
                &sub.created_at,
                &sub.updated_at,
                &sub.removed_at,
            ],
        )
        .pg(&location, what)?;
        append(
            &mut tx,
            &location,
            now,
            Some(&sub.id),
            None,
            &Event {
                kind: kind::SUBSCRIPTION_ADDED,
                detail: added_detail(sub),
            },
        )?;
        tx.commit().pg(&location, what)
    }

    /// The ledger in order, optionally only one subscription's events.
    pub fn ledger(
        &mut self,
        subscription_id: Option<&str>,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT seq, at, subscription_id, charge_id, kind, detail FROM ledger \
                 WHERE $1::text IS NULL OR subscription_id = $1 ORDER BY seq",
                &[&subscription_id],
            )
            .pg(&self.location, "reading the ledger")?;
        Ok(rows
            .iter()
            .map(|row| LedgerEntry {
                seq: row.get(0),
                at: row.get(1),
                subscription_id: row.get(2),
                charge_id: row.get(3),
                kind: row.get(4),
                detail: row.get(5),
            })
            .collect())
    }

    /// Every period row of a subscription (or all), for reports and tests.
    pub fn periods(&mut self, subscription_id: Option<&str>) -> Result<Vec<PeriodRow>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT subscription_id, period, state, reason FROM charges \
                 WHERE ($1::text IS NULL OR subscription_id = $1) AND period IS NOT NULL \
                 ORDER BY subscription_id, period",
                &[&subscription_id],
            )
            .pg(&self.location, "reading charges")?;
        let location = &self.location;
        rows.iter()
            .map(|row| {
                let period: i64 = row.get(1);
                let state: String = row.get(2);
                Ok(PeriodRow {
                    subscription_id: row.get(0),
                    period: u32::try_from(period)
                        .map_err(|_| corrupt(location, "charges.period", period))?,
                    state: ChargeState::parse(&state)
                        .ok_or_else(|| corrupt(location, "charges.state", &state))?,
                    reason: row.get(3),
                })
            })
            .collect()
    }

    /// Every attempt, oldest first, each with its current fence.
    pub fn attempts(&mut self) -> Result<Vec<Job>, StoreError> {
        query_jobs(&mut *self.client, &self.location, "ORDER BY a.id", &[])
    }

    /// Runs SQL as it is (tests: to check what the database itself refuses).
    #[doc(hidden)]
    pub fn execute_for_tests(&mut self, sql: &str) -> Result<(), StoreError> {
        self.client
            .batch_execute(sql)
            .pg(&self.location, "running test SQL")
    }

    /// The lease length as a PostgreSQL interval expression's factor (microseconds).
    fn lease_factor(&self) -> f64 {
        self.lease_us as f64
    }

    fn meta_value(&mut self, key: &str, what: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .client
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .pg(&self.location, what)?
            .map(|row| row.get(0)))
    }

    /// Inserts a meta key if it is not there yet and, if it was inserted, appends `event`, in
    /// one transaction.
    fn meta_once_with_event(
        &mut self,
        what: &str,
        key: &str,
        value: &str,
        event: Event,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let location = self.location.clone();
        let mut tx = self.client.transaction().pg(&location, what)?;
        let inserted = tx
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .pg(&location, what)?;
        if inserted > 0 {
            append(&mut tx, &location, now, None, None, &event)?;
        }
        tx.commit().pg(&location, what)
    }
}

/// A planning transaction on PostgreSQL (READ COMMITTED, each subscription's row locked by
/// [`PlanTransaction::history`] before it is read; see the module documentation).
pub struct PgPlan<'a> {
    tx: Transaction<'a>,
    location: &'a Path,
    instance: &'a str,
    epoch: i64,
    lease: f64,
    now: DateTime<Utc>,
    /// Subscriptions whose rows this transaction holds.
    locked: HashSet<String>,
}

impl PgPlan<'_> {
    /// Every write of a subscription's history happens under its row lock: taken by
    /// `history`, or here (without waiting) if a write comes first.
    fn require_lock(&mut self, subscription_id: &str) -> Result<(), StoreError> {
        if self.locked.contains(subscription_id) {
            return Ok(());
        }
        if self.try_lock(subscription_id)? {
            return Ok(());
        }
        Err(corrupt(
            self.location,
            "planning a subscription another transaction holds",
            subscription_id,
        ))
    }

    /// Locks the subscription's row unless another transaction holds it; `false` if it does
    /// (or there is no such row).
    fn try_lock(&mut self, subscription_id: &str) -> Result<bool, StoreError> {
        let row = self
            .tx
            .query_opt(
                "SELECT 1 FROM subscriptions WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED",
                &[&subscription_id],
            )
            .pg(self.location, "locking a subscription to plan it")?;
        if row.is_some() {
            self.locked.insert(subscription_id.to_string());
        }
        Ok(row.is_some())
    }

    fn insert_charge(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
        state: ChargeState,
        reason: Option<&str>,
        what: &str,
    ) -> Result<i64, StoreError> {
        self.require_lock(&subscription.id)?;
        let row = self
            .tx
            .query_one(
                "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
                     bill_number, state, reason, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id",
                &[
                    &subscription.id,
                    &i64::from(period),
                    &due_date,
                    &subscription.terms.amount.cents(),
                    &subscription.currency.as_str(),
                    &subscription.bill_number,
                    &state.as_str(),
                    &reason,
                    &self.now,
                ],
            )
            .pg(self.location, what)?;
        Ok(row.get(0))
    }
}

impl super::PlanTransaction for PgPlan<'_> {
    fn location(&self) -> &Path {
        self.location
    }

    fn history(&mut self, subscription_id: &str) -> Result<Option<History>, StoreError> {
        let what = "reading a subscription's history";
        let location = self.location;
        // First the lock: every later statement sees the history as it will be at commit.
        if !self.locked.contains(subscription_id) && !self.try_lock(subscription_id)? {
            // Unknown, or another transaction is planning or recording it right now.
            return Ok(None);
        }
        let tx = &mut self.tx;
        let Some(subscription) = read_subscription(tx, location, subscription_id)? else {
            return Ok(None);
        };
        let missing: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM schedule_files WHERE file = $1 \
                     AND missing_since IS NOT NULL)",
                &[&subscription.file],
            )
            .pg(location, what)?
            .get(0);
        if subscription.removed_at.is_some() || missing {
            return Ok(None);
        }
        let next_period: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(period) + 1, 0) FROM charges WHERE subscription_id = $1",
                &[&subscription_id],
            )
            .pg(location, what)?
            .get(0);
        let charged = charged_instants(tx, location, subscription_id, None)?;
        let open = tx
            .query_opt(
                &format!(
                    "SELECT {OPEN_CHARGE_COLUMNS} FROM charges c WHERE c.subscription_id = $1 \
                     AND c.state = 'open' AND c.period IS NOT NULL ORDER BY c.period DESC LIMIT 1"
                ),
                &[&subscription_id],
            )
            .pg(location, what)?
            .map(|row| decode_open_charge(location, &row))
            .transpose()?;
        let unresolved: bool = tx
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM attempts a JOIN charges c ON c.id = a.charge_id \
                     WHERE c.subscription_id = $1 AND a.state IN {DUE_STATES})"
                ),
                &[&subscription_id],
            )
            .pg(location, what)?
            .get(0);
        let attention: Option<String> = tx
            .query_opt(
                "SELECT reason FROM attention WHERE subscription_id = $1",
                &[&subscription_id],
            )
            .pg(location, what)?
            .map(|row| row.get(0));
        let month_ago = self.now - chrono::Duration::days(30);
        let attempts_last_30_days: i64 = tx
            .query_one(
                "SELECT count(*) FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE c.subscription_id = $1 AND a.created_at > $2",
                &[&subscription_id, &month_ago],
            )
            .pg(location, what)?
            .get(0);
        Ok(Some(History {
            subscription,
            next_period: u32::try_from(next_period)
                .map_err(|_| corrupt(location, "charges.period", next_period))?,
            charged,
            open,
            unresolved,
            attention,
            attempts_last_30_days: u32::try_from(attempts_last_30_days).unwrap_or(u32::MAX),
        }))
    }

    fn adhoc_open(&mut self, subscription_id: &str) -> Result<Option<OpenCharge>, StoreError> {
        let location = self.location;
        self.tx
            .query_opt(
                &format!(
                    "SELECT {OPEN_CHARGE_COLUMNS} FROM charges c WHERE c.subscription_id = $1 \
                     AND c.state = 'open' AND c.reference IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.charge_id = c.id \
                         AND a.state IN {LIVE_STATES}) \
                     ORDER BY c.next_attempt_at NULLS FIRST, c.id LIMIT 1"
                ),
                &[&subscription_id],
            )
            .pg(location, "reading queued ad-hoc charges")?
            .map(|row| decode_open_charge(location, &row))
            .transpose()
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
        let what = "recording a settled period";
        let charge_id =
            self.insert_charge(subscription, period, due_date, state, Some(reason), what)?;
        append(
            &mut self.tx,
            self.location,
            self.now,
            Some(&subscription.id),
            Some(charge_id),
            &event,
        )
    }

    fn open_period(
        &mut self,
        subscription: &StoredSubscription,
        period: u32,
        due_date: NaiveDate,
    ) -> Result<OpenCharge, StoreError> {
        let id = self.insert_charge(
            subscription,
            period,
            due_date,
            ChargeState::Open,
            None,
            "opening a period",
        )?;
        Ok(OpenCharge {
            id,
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

    fn new_attempt(
        &mut self,
        subscription_id: &str,
        charge: &OpenCharge,
        order_number: &str,
        wall_at: DateTime<Utc>,
        event: Event,
    ) -> Result<Job, StoreError> {
        let what = "recording a charge intent";
        self.require_lock(subscription_id)?;
        let attempt = charge.attempts + 1;
        let row = self
            .tx
            .query_one(
                "INSERT INTO attempts (charge_id, attempt, order_number, state, created_at, \
                     wall_at, updated_at, owner, owner_epoch, fence, lease_until) \
                 VALUES ($1, $2, $3, 'pending', $4, $5, $4, $6, $7, nextval('fence_tokens'), \
                     clock_timestamp() + $8 * interval '1 microsecond') \
                 RETURNING id, fence, created_at, wall_at",
                &[
                    &charge.id,
                    &i64::from(attempt),
                    &order_number,
                    &self.now,
                    &wall_at,
                    &self.instance,
                    &self.epoch,
                    &self.lease,
                ],
            )
            .pg(self.location, what)?;
        // The instants as stored (microseconds), so the job is what a later read returns.
        let (attempt_id, fence): (i64, i64) = (row.get(0), row.get(1));
        let (created_at, wall_at): (DateTime<Utc>, DateTime<Utc>) = (row.get(2), row.get(3));
        self.tx
            .execute(
                "UPDATE charges SET next_attempt_at = NULL, updated_at = $2 WHERE id = $1",
                &[&charge.id, &self.now],
            )
            .pg(self.location, what)?;
        append(
            &mut self.tx,
            self.location,
            self.now,
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
            created_at,
            wall_at,
            sent: false,
            checks: 0,
            not_found: 0,
            test_mode: None,
            response_code: None,
            sent_at: None,
            seen: false,
            fence,
        })
    }

    fn close_period(
        &mut self,
        subscription_id: &str,
        charge_id: i64,
        state: ChargeState,
        reason: &str,
        event: Event,
    ) -> Result<(), StoreError> {
        self.require_lock(subscription_id)?;
        self.tx
            .execute(
                "UPDATE charges SET state = $2, reason = $3, next_attempt_at = NULL, \
                 updated_at = $4 WHERE id = $1",
                &[&charge_id, &state.as_str(), &reason, &self.now],
            )
            .pg(self.location, "closing a period")?;
        append(
            &mut self.tx,
            self.location,
            self.now,
            Some(subscription_id),
            Some(charge_id),
            &event,
        )
    }

    fn revisit(&mut self, subscription_id: &str, revisit: Revisit) -> Result<(), StoreError> {
        self.require_lock(subscription_id)?;
        let what = "recording when to plan again";
        match revisit {
            Revisit::Now => self.tx.execute(
                "UPDATE subscriptions SET next_plan_at = '-infinity' WHERE id = $1",
                &[&subscription_id],
            ),
            Revisit::At(at) => self.tx.execute(
                "UPDATE subscriptions SET next_plan_at = $2 WHERE id = $1",
                &[&subscription_id, &at],
            ),
            Revisit::Never => self.tx.execute(
                "UPDATE subscriptions SET next_plan_at = 'infinity' WHERE id = $1",
                &[&subscription_id],
            ),
        }
        .pg(self.location, what)?;
        Ok(())
    }

    fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().pg(self.location, "committing a plan")
    }
}

/// One outcome inside the caller's transaction (a savepoint): SQLite's `apply_one`, guarded by
/// the fence as well as the state.
fn apply_one(
    conn: &mut impl GenericClient,
    location: &Path,
    o: &OutcomeWrite<'_>,
) -> Result<bool, StoreError> {
    let what = "recording a charge outcome";
    let change = o.change;
    let row = conn
        .query_opt(
            "SELECT a.charge_id, c.subscription_id FROM attempts a \
             JOIN charges c ON c.id = a.charge_id WHERE a.id = $1",
            &[&o.attempt_id],
        )
        .pg(location, what)?
        .ok_or_else(|| {
            corrupt(
                location,
                "recording the outcome of an attempt",
                o.attempt_id,
            )
        })?;
    let (charge_id, subscription_id): (i64, String) = (row.get(0), row.get(1));
    let settled = !change.state.unresolved();
    let changed = conn
        .execute(
            "UPDATE attempts SET state = $2, \
                 sent = sent OR $3, \
                 sent_at = COALESCE($14, sent_at), \
                 wall_at = COALESCE($4, wall_at), \
                 next_check_at = $5, \
                 checks = checks + $6, \
                 not_found = COALESCE($7, not_found), \
                 test_mode = COALESCE($8, test_mode), \
                 response_code = COALESCE($9, response_code), \
                 checkvalue = COALESCE($10, checkvalue), \
                 detail = COALESCE($11, detail), \
                 seen_at = CASE WHEN $15 THEN COALESCE(seen_at, $12) ELSE seen_at END, \
                 updated_at = $12, \
                 owner = CASE WHEN $17 THEN NULL ELSE owner END, \
                 owner_epoch = CASE WHEN $17 THEN NULL ELSE owner_epoch END, \
                 lease_until = CASE WHEN $17 THEN NULL ELSE lease_until END \
             WHERE id = $1 AND state = $13 AND fence = $16",
            &[
                &o.attempt_id,
                &change.state.as_str(),
                &change.sent,
                &change.wall_at,
                &change.next_check_at,
                &i64::from(change.checked),
                &change.not_found.map(i64::from),
                &change.test_mode,
                &change.response_code,
                &change.checkvalue,
                &change.detail,
                &o.now,
                &o.expected.as_str(),
                &change.sent_at,
                &change.seen,
                &o.fence,
                &settled,
            ],
        )
        .pg(location, what)?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some(charge) = &change.charge {
        conn.execute(
            "UPDATE charges SET state = $2, reason = COALESCE($3, reason), \
             next_attempt_at = $4, updated_at = $5 WHERE id = $1",
            &[
                &charge_id,
                &charge.state.as_str(),
                &charge.reason,
                &charge.next_attempt_at,
                &o.now,
            ],
        )
        .pg(location, what)?;
    }
    if settled {
        // The subscription may be chargeable again (a retry, the next period): plan it now.
        conn.execute(
            "UPDATE subscriptions SET next_plan_at = '-infinity' WHERE id = $1",
            &[&subscription_id],
        )
        .pg(location, what)?;
    }
    if let Some(flag) = &change.attention {
        raise_flag(
            conn,
            location,
            &subscription_id,
            Some(charge_id),
            flag,
            o.now,
        )?;
    }
    if let Some(event) = &change.event {
        append(
            conn,
            location,
            o.now,
            Some(&subscription_id),
            Some(charge_id),
            event,
        )?;
    }
    Ok(true)
}

impl PgStore {
    /// Claims attempts in `states` (due at `due`, when given: their next check reached) that are
    /// free, expired or ours, at most [`CLAIM_BATCH`], `FOR UPDATE SKIP LOCKED`.
    fn claim(
        &mut self,
        states: &str,
        due: Option<DateTime<Utc>>,
        what: &str,
    ) -> Result<Vec<Job>, StoreError> {
        // Free, expired or ours; locked rows (another instance claiming or recording them
        // right now) are skipped. Our own claims keep their fence: our work in flight on them
        // stays valid; a claim that changes hands takes a new one.
        let sql = format!(
            "WITH due AS ( \
                 SELECT a.id FROM attempts a \
                 WHERE a.state IN {states} \
                 AND ($1::timestamptz IS NULL OR a.next_check_at IS NULL \
                      OR a.next_check_at <= $1) \
                 AND (a.lease_until IS NULL OR a.lease_until < clock_timestamp() \
                      OR (a.owner = $2 AND a.owner_epoch = $3)) \
                 ORDER BY a.id LIMIT $5 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
                 UPDATE attempts a SET \
                     fence = CASE WHEN a.owner = $2 AND a.owner_epoch = $3 THEN a.fence \
                                  ELSE nextval('fence_tokens') END, \
                     owner = $2, owner_epoch = $3, \
                     lease_until = clock_timestamp() + $4 * interval '1 microsecond' \
                 FROM due WHERE a.id = due.id \
                 RETURNING a.*) \
             SELECT {JOB_COLUMNS} FROM claimed a JOIN charges c ON c.id = a.charge_id \
             ORDER BY a.id"
        );
        let lease = self.lease_factor();
        let rows = self
            .client
            .query(
                &sql,
                &[&due, &self.instance, &self.epoch, &lease, &CLAIM_BATCH],
            )
            .pg(&self.location, what)?;
        rows.iter()
            .map(|row| decode_job(&self.location, row))
            .collect()
    }
}

impl super::ChargeStore for PgStore {
    const SHARED: bool = true;

    type Plan<'a> = PgPlan<'a>;

    fn location(&self) -> &Path {
        &self.location
    }

    fn plannable(&mut self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT s.id FROM subscriptions s \
                     WHERE s.removed_at IS NULL AND s.next_plan_at <= $1 \
                     AND NOT EXISTS (SELECT 1 FROM attention t WHERE t.subscription_id = s.id) \
                     AND NOT EXISTS (SELECT 1 FROM schedule_files f WHERE f.file = s.file \
                         AND f.missing_since IS NOT NULL) \
                     AND NOT EXISTS (SELECT 1 FROM charges c JOIN attempts a \
                         ON a.charge_id = c.id WHERE c.subscription_id = s.id \
                         AND a.state IN {DUE_STATES}) \
                     ORDER BY s.next_plan_at, s.id"
                ),
                &[&now],
            )
            .pg(&self.location, "listing subscriptions to plan")?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn begin_plan(&mut self, now: DateTime<Utc>) -> Result<PgPlan<'_>, StoreError> {
        let lease = self.lease_factor();
        let tx = self
            .client
            .transaction()
            .pg(&self.location, "starting a planning transaction")?;
        Ok(PgPlan {
            tx,
            location: &self.location,
            instance: &self.instance,
            epoch: self.epoch,
            lease,
            now,
            locked: HashSet::new(),
        })
    }

    fn claim_due_attempts(&mut self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.claim(DUE_STATES, Some(now), "claiming due attempts")
    }

    fn claim_unresolved_attempts(&mut self) -> Result<Vec<Job>, StoreError> {
        self.claim(UNRESOLVED_STATES, None, "claiming unresolved attempts")
    }

    fn count_unresolved(&mut self) -> Result<usize, StoreError> {
        let count: i64 = self
            .client
            .query_one(
                &format!("SELECT count(*) FROM attempts WHERE state IN {UNRESOLVED_STATES}"),
                &[],
            )
            .pg(&self.location, "counting unresolved attempts")?
            .get(0);
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    fn attempt_by_id(&mut self, attempt_id: i64) -> Result<Option<Job>, StoreError> {
        Ok(query_jobs(
            &mut *self.client,
            &self.location,
            "WHERE a.id = $1",
            &[&attempt_id],
        )?
        .into_iter()
        .next())
    }

    fn mark_sending(
        &mut self,
        job: &Job,
        expected: AttemptState,
        now: DateTime<Utc>,
        wall: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Inside our lease only, and the lease then covers the request.
        let lease = self.lease_factor();
        let changed = self
            .client
            .execute(
                "UPDATE attempts SET state = 'pending', sent = true, sent_at = $2, wall_at = $3, \
                     updated_at = $2, \
                     lease_until = clock_timestamp() + $8 * interval '1 microsecond' \
                 WHERE id = $1 AND state = $4 AND fence = $5 AND owner = $6 \
                 AND owner_epoch = $7 AND lease_until > clock_timestamp()",
                &[
                    &job.attempt_id,
                    &now,
                    &wall,
                    &expected.as_str(),
                    &job.fence,
                    &self.instance,
                    &self.epoch,
                    &lease,
                ],
            )
            .pg(&self.location, "recording a send")?;
        Ok(changed > 0)
    }

    fn apply_outcomes(
        &mut self,
        outcomes: &[OutcomeWrite<'_>],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let what = "recording a charge outcome";
        let location = self.location.clone();
        let mut tx = self.client.transaction().pg(&location, what)?;
        // The subscriptions' rows first, in id order: every writer of a history takes its
        // subscription's lock before anything else, in one order, so none can deadlock.
        let ids: Vec<i64> = outcomes.iter().map(|o| o.attempt_id).collect();
        tx.query(
            "SELECT s.id FROM subscriptions s WHERE s.id IN (SELECT c.subscription_id \
                 FROM attempts a JOIN charges c ON c.id = a.charge_id WHERE a.id = ANY($1)) \
             ORDER BY s.id FOR NO KEY UPDATE OF s",
            &[&ids],
        )
        .pg(&location, what)?;
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let mut savepoint = tx.transaction().pg(&location, what)?;
            let result = apply_one(&mut savepoint, &location, outcome);
            if result.is_ok() {
                savepoint.commit().pg(&location, what)?;
            }
            // Dropped without a commit: rolled back alone.
            results.push(result);
        }
        tx.commit().pg(&location, what)?;
        Ok(results)
    }

    fn charged_instants(
        &mut self,
        subscription_id: &str,
        except_attempt: Option<i64>,
    ) -> Result<Vec<DateTime<Utc>>, StoreError> {
        charged_instants(
            &mut *self.client,
            &self.location,
            subscription_id,
            except_attempt,
        )
    }

    fn flag_attempt(
        &mut self,
        attempt_id: i64,
        flag: &Flag,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let what = "flagging a subscription for an operator";
        let location = self.location.clone();
        let mut tx = self.client.transaction().pg(&location, what)?;
        let row = tx
            .query_opt(
                "SELECT a.charge_id, c.subscription_id FROM attempts a \
                 JOIN charges c ON c.id = a.charge_id WHERE a.id = $1",
                &[&attempt_id],
            )
            .pg(&location, what)?
            .ok_or_else(|| {
                corrupt(
                    &location,
                    "flagging the subscription of attempt",
                    attempt_id,
                )
            })?;
        let (charge_id, subscription_id): (i64, String) = (row.get(0), row.get(1));
        lock_subscription(&mut tx, &location, &subscription_id)?;
        raise_flag(
            &mut tx,
            &location,
            &subscription_id,
            Some(charge_id),
            flag,
            now,
        )?;
        tx.commit().pg(&location, what)
    }

    fn stored_subscription(
        &mut self,
        subscription_id: &str,
    ) -> Result<Option<StoredSubscription>, StoreError> {
        read_subscription(&mut *self.client, &self.location, subscription_id)
    }

    fn breaker_reason(&mut self) -> Result<Option<String>, StoreError> {
        self.meta_value("breaker", "reading the circuit breaker")
    }

    fn trip_breaker(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.meta_once_with_event(
            "opening the circuit breaker",
            "breaker",
            reason,
            Event {
                kind: event::BREAKER_OPENED,
                detail: json!({ "reason": reason }),
            },
            now,
        )
    }

    fn count_quarantines_since(&mut self, since: DateTime<Utc>) -> Result<u32, StoreError> {
        let count: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM ledger WHERE kind = $1 AND at >= $2",
                &[&event::QUARANTINED, &since],
            )
            .pg(&self.location, "counting quarantines")?
            .get(0);
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn clock_hold_reason(&mut self) -> Result<Option<String>, StoreError> {
        self.meta_value("clock_hold", "reading the clock hold")
    }

    fn hold_clock(&mut self, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.meta_once_with_event(
            "stopping new charges for a clock jump",
            "clock_hold",
            reason,
            Event {
                kind: event::CLOCK_JUMP,
                detail: json!({ "reason": reason }),
            },
            now,
        )
    }

    fn last_planned_sweep(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let text = self.meta_value("last_sweep_at", "reading the last sweep's instant")?;
        text.map(|t| super::parse_timestamp(&self.location, "meta.last_sweep_at", &t))
            .transpose()
    }

    fn record_planned_sweep(&mut self, at: DateTime<Utc>) -> Result<(), StoreError> {
        // RFC 3339 UTC text with microseconds sorts as it reads under the C collation.
        self.client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('last_sweep_at', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = \
                     GREATEST(meta.value COLLATE \"C\", excluded.value COLLATE \"C\")",
                &[&super::timestamp(at)],
            )
            .pg(&self.location, "recording the sweep's instant")?;
        Ok(())
    }
}

/// Whether a PostgreSQL error is the connection or the server's resources failing us (not a
/// statement refused): a closed connection, an I/O error, SQLSTATE class 08 (connection
/// exception), 53 (insufficient resources: disk full, out of memory, too many connections),
/// 57P01–57P03 (the server shutting down or not accepting connections), 58 (system error).
pub(super) fn is_io(error: &postgres::Error) -> bool {
    use std::error::Error as _;
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        let code = code.code();
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("58")
            || matches!(code, "57P01" | "57P02" | "57P03");
    }
    // No SQLSTATE: the client itself failed (connecting, reading, writing).
    let mut cause = error.source();
    while let Some(inner) = cause {
        if inner.is::<std::io::Error>() {
            return true;
        }
        cause = inner.source();
    }
    false
}

/// A PostgreSQL error as an operator needs it: the server's message, SQLSTATE and constraint
/// (the client's own `Display` says only "db error"), or the client's error with its causes.
pub(super) fn describe(error: &postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = error.as_db_error() {
        let mut text = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(constraint) = db.constraint() {
            text += &format!(", constraint {constraint}");
        }
        if let Some(detail) = db.detail() {
            text += &format!("; {detail}");
        }
        return text;
    }
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text += &format!(": {inner}");
        cause = inner.source();
    }
    text
}
