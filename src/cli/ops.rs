//! Operator commands on the database, safe while the daemon runs: `status`, `history`,
//! `resume`, `breaker reset`, `backup`. Reads open the database read-only; the two commands that
//! change something record who ran them and why.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::exit;
use crate::config::Config;
use crate::store::{self, Access, Store, StoreError};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// A stopped daemon is not a problem (exit 0 if nothing else is): for looking at a copy or
    /// at a database on purpose left without a daemon. The report still says it is not running.
    #[arg(long)]
    pub offline_ok: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this subscription's history.
    pub subscription: Option<String>,
    /// Only entries from this instant on (RFC 3339, daemon's clock).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<DateTime<Utc>>,
    /// Print JSON (one array) for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The subscription to charge again after a hard decline.
    pub subscription: String,
    /// Why (recorded in the ledger with your user name).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Close the circuit breaker so new charges are made again.
    Reset {
        /// Why (recorded in the ledger with your user name).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (must not exist).
    pub path: PathBuf,
}

pub(super) fn open(config: &Config, access: Access) -> Result<Store, u8> {
    Store::open(&config.database.path, access).map_err(|error| {
        eprintln!("recurrentd: {error}");
        match error {
            StoreError::Missing { .. } => exit::PROBLEMS,
            _ => exit::UNAVAILABLE,
        }
    })
}

pub(super) fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn finish(result: std::io::Result<()>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("recurrentd: cannot write: {e}");
            exit::INTERNAL
        }
    }
}

pub fn status(config: &Config, args: &StatusArgs) -> u8 {
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let running = store::daemon_running(&config.database.path);
    let report = match store.status(running) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::UNAVAILABLE;
        }
    };
    if !running {
        // On stderr too, so that it is seen whatever is done with stdout (`--json | jq`).
        eprintln!(
            "recurrentd: THE DAEMON IS NOT RUNNING: no process holds the lock of {}; nothing is \
             charged or reconciled until it is started{}",
            config.database.path.display(),
            if args.offline_ok {
                ""
            } else {
                " (exit 1; --offline-ok if that is intended)"
            }
        );
    }
    let printed = (|| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &report)?;
            return writeln!(out);
        }
        writeln!(out, "database: {}", report.database.display())?;
        writeln!(
            out,
            "daemon: {}",
            if report.daemon_running {
                "running"
            } else {
                "NOT RUNNING — nothing is charged or reconciled until it is started"
            }
        )?;
        let line = |map: &std::collections::BTreeMap<String, u64>| {
            if map.is_empty() {
                "none".to_string()
            } else {
                map.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        writeln!(out, "subscriptions: {}", line(&report.subscriptions))?;
        writeln!(out, "periods: {}", line(&report.periods))?;
        writeln!(out, "attempts: {}", line(&report.attempts))?;
        writeln!(
            out,
            "oldest unresolved: {}",
            report.oldest_unresolved.as_deref().unwrap_or("none")
        )?;
        match &report.breaker {
            Some(reason) => writeln!(
                out,
                "circuit breaker: OPEN — {reason}\n  (no new charges; `recurrentd breaker reset --reason ...` once fixed)"
            )?,
            None => writeln!(out, "circuit breaker: closed")?,
        }
        if report.needs_attention.is_empty() {
            writeln!(out, "needs attention: nothing")?;
        } else {
            writeln!(out, "needs attention:")?;
            for a in &report.needs_attention {
                writeln!(
                    out,
                    "  {:<20} {:<12} since {}  {}{}",
                    a.subscription,
                    a.kind,
                    a.since,
                    a.order_number
                        .as_deref()
                        .map(|o| format!("{o}: "))
                        .unwrap_or_default(),
                    a.detail
                )?;
            }
        }
        Ok(())
    })();
    let code = finish(printed);
    if code != exit::OK {
        return code;
    }
    let stopped = !report.daemon_running && !args.offline_ok;
    if stopped || report.breaker.is_some() || !report.needs_attention.is_empty() {
        exit::PROBLEMS
    } else {
        exit::OK
    }
}

pub fn history(config: &Config, args: &HistoryArgs) -> u8 {
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let rows = match store.history(args.subscription.as_deref(), args.since) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::UNAVAILABLE;
        }
    };
    let printed = (|| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &rows)?;
            return writeln!(out);
        }
        writeln!(
            out,
            "{:<20} {:<10} {:>3} {:<34} {:>12} {:<3} {:<11} {:<27} {:<5} {:<8} NOTE",
            "SUBSCRIPTION",
            "PERIOD",
            "#",
            "ORDER",
            "AMOUNT",
            "CUR",
            "STATE",
            "SENT",
            "CODE",
            "CHECK"
        )?;
        for r in &rows {
            writeln!(
                out,
                "{:<20} {:<10} {:>3} {:<34} {:>12} {:<3} {:<11} {:<27} {:<5} {:<8} {}",
                r.subscription,
                r.period,
                r.attempt.map(|a| a.to_string()).unwrap_or_default(),
                r.order_number.as_deref().unwrap_or("-"),
                r.amount,
                r.currency,
                r.state,
                r.sent_at.as_deref().unwrap_or("-"),
                r.response_code.as_deref().unwrap_or("-"),
                r.checkvalue,
                r.reason.as_deref().unwrap_or(""),
            )?;
        }
        Ok(())
    })();
    finish(printed)
}

pub fn resume(config: &Config, args: &ResumeArgs) -> u8 {
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.clear_attention(&args.subscription, &operator(), &args.reason, Utc::now()) {
        Ok(true) => {
            println!(
                "{} will be charged again from its next due period.",
                args.subscription
            );
            exit::OK
        }
        Ok(false) => {
            eprintln!(
                "recurrentd: {} is not waiting for an operator (see `recurrentd status`)",
                args.subscription
            );
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::UNAVAILABLE
        }
    }
}

pub fn breaker(config: &Config, command: &BreakerCommand) -> u8 {
    let BreakerCommand::Reset { reason } = command;
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.clear_breaker(&operator(), reason, Utc::now()) {
        Ok(true) => {
            println!("Circuit breaker closed: new charges resume at the daemon's next tick.");
            exit::OK
        }
        Ok(false) => {
            eprintln!("recurrentd: the circuit breaker is not open");
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::UNAVAILABLE
        }
    }
}

pub fn backup(config: &Config, args: &BackupArgs) -> u8 {
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.backup_to(&args.path) {
        Ok(()) => {
            println!("Backup written to {}", args.path.display());
            exit::OK
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::PROBLEMS
        }
    }
}
