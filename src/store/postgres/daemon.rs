//! [`DaemonStore`](crate::store::DaemonStore) for [`PgStore`]: what a daemon needs besides the
//! charge path, when several instances share one database.
//!
//! - **Schedule sync** (`sync_folder`): one instance at a time does it, the holder of the
//!   leader lease [`SCHEDULE_LEAD`] (taken or renewed at each sync for [`PgStore::schedule_ttl`]:
//!   the store's lease, at least [`MIN_SCHEDULE_TTL`]); the others get `None`. The lease only
//!   avoids duplicate work: concurrent syncs are safe anyway (every sync transaction takes the
//!   same advisory lock, so the second finds the files applied and writes nothing; see
//!   `postgres::sync`). If the leader stops or hangs, another instance takes over once its
//!   lease has expired (or at once after a clean stop: `release_claims` gives it up).
//! - **Heartbeat** (`record_tick`, `health`): renews this instance's registration; if another
//!   process has since registered under the same name (a newer epoch), it is an error
//!   ([`StoreError::TakenOver`]): this process must stop, its claims are no longer its own.
//! - **Clean stop** (`release_claims`): the unresolved attempts this instance holds get a lease
//!   that has already expired, so other instances claim them at their next sweep instead of
//!   after the lease; and the schedule lead is given up.
//! - Not kept here yet: the daemon's start record (pid, version: `instances` has no columns for
//!   them; `connect` registered the instance and its start), the metrics' gauges and the
//!   outbox backlog (`None`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{DUE_STATES, PgContext, PgStore};
use crate::metrics::StoreGauges;
use crate::store::{DaemonStore, OutboxBacklog, StoreError, SyncDirError, SyncSummary};

/// The name of the schedule sync's leader lease (`leases.name`).
pub const SCHEDULE_LEAD: &str = "schedules";

/// The shortest schedule lead: a leader renews it at each of its syncs, so it must outlast the
/// time between two (the daemon's sync interval) or leadership would change hands needlessly.
pub const MIN_SCHEDULE_TTL: Duration = Duration::from_secs(30);

impl PgStore {
    /// How long the schedule lead lasts once taken or renewed: the store's lease, at least
    /// [`MIN_SCHEDULE_TTL`].
    pub fn schedule_ttl(&self) -> Duration {
        Duration::from_micros(self.lease_us.max(0) as u64).max(MIN_SCHEDULE_TTL)
    }

    /// Renews the registration; [`StoreError::TakenOver`] if another process holds the name.
    fn require_registration(&mut self) -> Result<(), StoreError> {
        if self.heartbeat()? {
            return Ok(());
        }
        Err(StoreError::TakenOver {
            location: self.location.display().to_string(),
            instance: self.instance.clone(),
            epoch: self.epoch,
        })
    }
}

impl DaemonStore for PgStore {
    fn sync_folder(
        &mut self,
        dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<Option<SyncSummary>, SyncDirError> {
        let ttl = self.schedule_ttl();
        if self.try_lead(SCHEDULE_LEAD, ttl)?.is_none() {
            return Ok(None);
        }
        self.sync_dir(dir, now).map(Some)
    }

    fn active_subscription_count(&mut self) -> Result<u64, StoreError> {
        let count: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM subscriptions WHERE removed_at IS NULL",
                &[],
            )
            .pg(&self.location, "counting subscriptions")?
            .get(0);
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn record_start(
        &mut self,
        _pid: u32,
        _version: &str,
        _started_at: DateTime<Utc>,
        _rehearsal: Option<u32>,
    ) -> Result<(), StoreError> {
        // `connect` registered the instance (name, epoch, start on the database's clock);
        // `instances` has no columns for the rest yet.
        Ok(())
    }

    fn record_tick(
        &mut self,
        _real: DateTime<Utc>,
        _clock: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.require_registration()
    }

    fn health(&mut self) -> Result<(), StoreError> {
        self.require_registration()
    }

    fn gauge_figures(&mut self, _now: DateTime<Utc>) -> Result<Option<StoreGauges>, StoreError> {
        Ok(None)
    }

    fn outbox_figures(&mut self) -> Result<Option<OutboxBacklog>, StoreError> {
        Ok(None)
    }

    fn release_claims(&mut self) -> Result<(), StoreError> {
        // Expired already (a microsecond in the past on the database's clock), so the claim
        // query of any instance (`lease_until < clock_timestamp()`) takes them at once. The
        // fence is kept: a new holder takes a new one.
        self.client
            .execute(
                &format!(
                    "UPDATE attempts \
                     SET lease_until = clock_timestamp() - interval '1 microsecond' \
                     WHERE owner = $1 AND owner_epoch = $2 AND state IN {DUE_STATES}"
                ),
                &[&self.instance, &self.epoch],
            )
            .pg(&self.location, "releasing this instance's claims")?;
        self.release_lead(SCHEDULE_LEAD)?;
        // Gone, for `status`: its registration expires now rather than a lease later.
        self.client
            .execute(
                "UPDATE instances SET lease_until = clock_timestamp() \
                 WHERE name = $1 AND epoch = $2",
                &[&self.instance, &self.epoch],
            )
            .pg(&self.location, "marking this instance stopped")?;
        Ok(())
    }
}
