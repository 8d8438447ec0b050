//! `recurrentd run` with `database.url`: one of several instances sharing a PostgreSQL database.
//!
//! The same loop as with SQLite ([`super::run_loop`]) over an `Engine<PgStore>`. What differs:
//! - no `flock`: the instance registers under `database.instance` (a new epoch at each start),
//!   and every attempt it works on is claimed under a lease (`database.lease_secs`) with a
//!   fencing token, so a dead or paused instance's work passes to the others and its late
//!   writes are refused;
//! - schedule sync is done by the holder of the schedule lease (any instance may take it when
//!   it is free); a reload on another instance waits for its turn;
//! - each tick renews the instance's registration; a clean stop lets go of its claims at once;
//! - the books sweep, the webhook and the metrics are not available on PostgreSQL yet (the
//!   configuration refuses them).

use std::sync::Arc;

use chrono::Utc;

use super::notify::Notifier;
use super::{DaemonError, Reporting, RunOptions, Signals, fingerprint, run_loop, stopped, sync};
use crate::billing::Calendar;
use crate::config::{Config, PostgresConfig};
use crate::engine::{Engine, EngineError, Pacer, Policy};
use crate::gateway::client::{Client, Settings};
use crate::metrics::Metrics;
use crate::store::postgres::PgStore;
use crate::store::{DaemonStore, StoreError};

/// Runs this instance until a signal or `until` (see [`super::run`]).
pub async fn run(
    config: &Config,
    gateway: Settings,
    options: RunOptions,
    postgres: &PostgresConfig,
) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let mut signals = Signals::install()?;
    let metrics = options
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(Metrics::new()));
    let startup = start(config, gateway, &options, &notifier, &metrics, postgres);
    let (engine, subscriptions, watch) = tokio::select! {
        started = startup => started?,
        signal = stopped(&mut signals.terminate, &mut signals.interrupt) => {
            tracing::info!("{signal} during start-up: stopping before anything was charged");
            notifier.stopping(&format!("stopping ({signal}) during start-up"));
            return Ok(());
        }
    };
    let running = run_loop(
        config,
        &options,
        &mut signals,
        &engine,
        None,
        subscriptions,
        watch,
        Reporting {
            notifier: &notifier,
            metrics: &metrics,
            webhook_on: false,
        },
    );
    // The instance's registration is renewed between ticks too (a sweep may come less often
    // than the lease), so `status` sees it alive; a takeover stops this process at once.
    let result = tokio::select! {
        result = running => result,
        error = heartbeat(&engine, postgres.lease) => {
            notifier.stopping("stopping: this instance was taken over by another process");
            Err(DaemonError::Store(error))
        }
    };
    // The PostgreSQL client closes its connection on its own runtime: dropped off the async
    // threads.
    let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
    result
}

/// Connects (migrating the schema if this is the first instance of a new version), registers
/// the instance, syncs the schedules if it holds the schedule lease, and reconciles the
/// unresolved attempts no other instance holds.
async fn start(
    config: &Config,
    gateway: Settings,
    options: &RunOptions,
    notifier: &Notifier,
    metrics: &Arc<Metrics>,
    postgres: &PostgresConfig,
) -> Result<(Engine<PgStore>, usize, super::Watch), DaemonError> {
    notifier.status("connecting to PostgreSQL");
    let password = crate::config::load_database_password(config)
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let (url, instance, lease) = (
        postgres.url.clone(),
        postgres.instance.clone(),
        postgres.lease,
    );
    let calendar = Calendar::from(&config.billing);
    let (store, prefix) = tokio::task::spawn_blocking(move || {
        let mut store = PgStore::connect_with_password(&url, password.as_ref(), &instance, lease)?;
        // The due sweep's index is computed with this calendar from now on (every instance
        // must have the same `[billing]`).
        store.use_calendar(&calendar)?;
        let prefix = store.order_prefix()?;
        Ok::<_, crate::store::StoreError>((store, prefix))
    })
    .await
    .map_err(|e| DaemonError::Database(e.to_string()))??;
    let location = store.location().display().to_string();
    let epoch = store.epoch();
    let client = Client::new(gateway)
        .map_err(DaemonError::Gateway)?
        .with_metrics(Arc::clone(metrics));
    let engine = Engine::with_backend(
        store,
        prefix,
        client,
        Arc::clone(&options.clock),
        calendar,
        Policy::from(&config.engine),
        Pacer::new(
            config.gateway.max_in_flight,
            config.gateway.requests_per_second,
        ),
    )
    .with_metrics(Arc::clone(metrics));
    tracing::info!(
        database = %location,
        instance = %postgres.instance,
        epoch,
        lease_secs = postgres.lease.as_secs(),
        "connected to PostgreSQL as one of several instances"
    );
    let rehearsal = options.rehearsal;
    engine
        .with_store(move |s| {
            s.record_start(
                std::process::id(),
                env!("CARGO_PKG_VERSION"),
                Utc::now(),
                rehearsal,
            )
        })
        .await?;
    notifier.status("syncing the schedule files (if this instance holds the schedule lease)");
    let seen = fingerprint(config).await;
    let synced = sync(&engine, config, &options.clock).await?;
    notifier.status("reconciling unresolved attempts with the gateway");
    let reconciled = engine.reconcile().await?;
    tracing::info!(
        checked = reconciled.checked,
        approved = reconciled.approved,
        declined = reconciled.declined,
        still_unknown = reconciled.unknown,
        "reconciled the unresolved attempts no other instance holds"
    );
    // Synced by another instance: the folder counts as not read yet, so the watcher tries
    // again (and syncs here if that instance is gone before it did).
    let watch = if synced.here {
        super::Watch::new(seen)
    } else {
        super::Watch::new(super::Fingerprint::default())
    };
    Ok((engine, synced.subscriptions, watch))
}

/// Renews the instance's registration every third of its lease, for as long as the daemon runs;
/// returns only when the instance was taken over (another process registered under its name).
async fn heartbeat(engine: &Engine<PgStore>, lease: std::time::Duration) -> StoreError {
    let mut every = tokio::time::interval((lease / 3).max(std::time::Duration::from_secs(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match engine.with_store(|s| s.health()).await {
            Ok(()) => {}
            Err(EngineError::Store(error)) if error.must_stop() => {
                tracing::error!(%error, "stopping: this instance was taken over");
                return error;
            }
            Err(error) => tracing::warn!(%error, "cannot renew this instance's registration"),
        }
    }
}
