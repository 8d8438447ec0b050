//! `recurrentd status` on PostgreSQL: the instances sharing the database, their leases and the
//! work they hold, read over a plain connection that neither migrates nor registers (a status
//! look is not an instance).

use chrono::{DateTime, Utc};
use postgres::NoTls;

use super::{PgContext, SCHEMA_VERSION, connection_config};
use crate::store::StoreError;

/// One instance as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub epoch: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub heartbeat_at: DateTime<Utc>,
    /// Its registration's lease: past it (on the database's clock) it is presumed gone.
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub lease_until: DateTime<Utc>,
    pub alive: bool,
    /// Unresolved attempts it holds under a live lease.
    pub holding: i64,
}

/// A named leader lease (the schedule sync's).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseStatus {
    pub name: String,
    pub owner: String,
    pub owner_epoch: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub until: DateTime<Utc>,
    pub live: bool,
}

/// What `status` reports of a shared database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SharedStatus {
    /// The database, without its password.
    pub database: String,
    pub schema_version: i32,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub database_now: DateTime<Utc>,
    pub instances: Vec<InstanceStatus>,
    pub leases: Vec<LeaseStatus>,
    pub active_subscriptions: i64,
    pub unresolved_attempts: i64,
    /// Unresolved attempts no live lease holds: the next instance to sweep takes them.
    pub unclaimed_attempts: i64,
    pub needs_operator: i64,
    pub breaker: Option<String>,
    pub clock_hold: Option<String>,
}

/// Reads the status of the shared database at `url`.
pub fn shared_status(
    url: &str,
    password: Option<&secrecy::SecretString>,
) -> Result<SharedStatus, StoreError> {
    let (location, config) = connection_config(url, password)?;
    let mut client = config.connect(NoTls).pg(&location, "connecting")?;
    let what = "reading the status";
    let known: bool = client
        .query_one(
            "SELECT to_regclass('schema_migrations') IS NOT NULL \
             AND to_regclass('instances') IS NOT NULL",
            &[],
        )
        .pg(&location, what)?
        .get(0);
    if !known {
        // No instance has created the tables (in this URL's schema) yet.
        return Err(StoreError::Missing { path: location });
    }
    let schema_version: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .pg(&location, what)?
        .get(0);
    if schema_version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: location,
            found: u32::try_from(schema_version).unwrap_or(u32::MAX),
            known: u32::try_from(SCHEMA_VERSION).unwrap_or(u32::MAX),
        });
    }
    let database_now: DateTime<Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .pg(&location, what)?
        .get(0);
    let instances = client
        .query(
            "SELECT i.name, i.epoch, i.started_at, i.heartbeat_at, i.lease_until, \
             i.lease_until > clock_timestamp(), \
             (SELECT count(*) FROM attempts a WHERE a.owner = i.name \
                 AND a.owner_epoch = i.epoch AND a.lease_until > clock_timestamp() \
                 AND a.state IN ('pending', 'not_sent', 'unknown', 'parked')) \
             FROM instances i ORDER BY i.name",
            &[],
        )
        .pg(&location, what)?
        .iter()
        .map(|row| InstanceStatus {
            name: row.get(0),
            epoch: row.get(1),
            started_at: row.get(2),
            heartbeat_at: row.get(3),
            lease_until: row.get(4),
            alive: row.get(5),
            holding: row.get(6),
        })
        .collect();
    let leases = client
        .query(
            "SELECT name, owner, owner_epoch, until, until > clock_timestamp() FROM leases \
             ORDER BY name",
            &[],
        )
        .pg(&location, what)?
        .iter()
        .map(|row| LeaseStatus {
            name: row.get(0),
            owner: row.get(1),
            owner_epoch: row.get(2),
            until: row.get(3),
            live: row.get(4),
        })
        .collect();
    let counts = client
        .query_one(
            "SELECT \
             (SELECT count(*) FROM subscriptions WHERE removed_at IS NULL), \
             (SELECT count(*) FROM attempts \
                 WHERE state IN ('pending', 'not_sent', 'unknown', 'parked')), \
             (SELECT count(*) FROM attempts \
                 WHERE state IN ('pending', 'not_sent', 'unknown', 'parked') \
                 AND (lease_until IS NULL OR lease_until <= clock_timestamp())), \
             (SELECT count(*) FROM attention), \
             (SELECT value FROM meta WHERE key = 'breaker'), \
             (SELECT value FROM meta WHERE key = 'clock_hold')",
            &[],
        )
        .pg(&location, what)?;
    Ok(SharedStatus {
        database: location.display().to_string(),
        schema_version,
        database_now,
        instances,
        leases,
        active_subscriptions: counts.get(0),
        unresolved_attempts: counts.get(1),
        unclaimed_attempts: counts.get(2),
        needs_operator: counts.get(3),
        breaker: counts.get(4),
        clock_hold: counts.get(5),
    })
}
