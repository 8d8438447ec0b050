//! Operator commands on the database, safe while the daemon runs: `status`, `history`,
//! `resume`, `resolve`, `breaker reset`, `backup`. Reads open the database read-only; the
//! commands that change something record who ran them and why.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;

use super::exit;
use crate::billing::{self, Calendar, Next, SubscriptionState};
use crate::config::Config;
use crate::store::{
    self, Access, ChargeState, DaemonRecord, RemovedFile, Resolution, Resolved, Store, StoreError,
    SubscriptionOverview,
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Show this one subscription in full instead: state, file, terms, the four limits, what
    /// needs an operator, next due, open attempts with their order numbers, last charges.
    /// Exit 1 if it needs an operator, or if the database does not know it.
    #[arg(conflicts_with = "all", value_name = "SUBSCRIPTION")]
    pub subscription: Option<String>,
    /// With SUBSCRIPTION: how many of its latest charges to show.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub last: usize,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// A stopped daemon is not a problem (exit 0 if nothing else is): for looking at a copy or
    /// at a database on purpose left without a daemon. The report still says it is not running.
    #[arg(long)]
    pub offline_ok: bool,
    /// After the summary, list every subscription (active, paused, cancelled, removed): what
    /// needs an operator, its next due charge and its last outcome. With --json, the same JSON
    /// object with an "all_subscriptions" array, one subscription per line.
    #[arg(long)]
    pub all: bool,
}

/// The states a history entry can be in (`history --state`).
const HISTORY_STATES: [&str; 10] = [
    "pending",
    "not_sent",
    "unknown",
    "approved",
    "declined",
    "not_received",
    "quarantined",
    "blocked",
    "skipped",
    "parked",
];

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this subscription's history (exit 1 if the database knows no such subscription).
    pub subscription: Option<String>,
    /// Only entries from this instant on (RFC 3339, daemon's clock).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this instant (RFC 3339, daemon's clock; --since A --until B tile).
    #[arg(long, value_name = "RFC3339")]
    pub until: Option<DateTime<Utc>>,
    /// Only entries in these states (repeat it, or a comma-separated list).
    #[arg(
        long,
        value_name = "STATE",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(HISTORY_STATES)
    )]
    pub state: Vec<String>,
    /// At most this many entries: the latest ones (still printed oldest first).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Print JSON (one array) for scripts.
    #[arg(long)]
    pub json: bool,
    /// Show every ledger event instead (who, why, before/after): the same as `recurrentd
    /// audit`.
    #[arg(long)]
    pub events: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The subscription to charge again after a hard decline.
    pub subscription: String,
    /// Why (recorded in the ledger with your user name).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("found").required(true).args(["paid", "not_charged"])))]
pub struct ResolveArgs {
    /// The OrderNumber of the parked attempt (`recurrentd status` shows it).
    pub order_number: String,
    /// The gateway's merchant portal shows the order approved: book it as paid (attested by
    /// you, not verified by recurrentd).
    #[arg(long)]
    pub paid: bool,
    /// The gateway has no charge for it (no such order, or not approved): open its period again
    /// so that the daemon charges it under a new order number, within the limits.
    #[arg(long)]
    pub not_charged: bool,
    /// What you checked (recorded in the ledger with your user name).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct RemoveFileArgs {
    /// The schedule file's name inside the schedules folder (as `status` and the log name it),
    /// or a path to it.
    pub file: std::path::PathBuf,
    /// Why it is gone for good (recorded in the ledger with your user name).
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

#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// Say the clock is right now: new charges resume at the daemon's next sweep, which
    /// starts from the clock as it reads then (periods it finds due are settled by
    /// `billing.catch_up`).
    Ack {
        /// What you checked (recorded in the ledger with your user name).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the copy (must not exist: a backup never overwrites a file), or with
    /// --verify the copy to check.
    pub path: PathBuf,
    /// Check an existing copy instead of writing one: the whole file's integrity, that
    /// recurrentd wrote it, its schema version; then what it holds. Read-only: the copy is never
    /// changed. Exit 0 usable, 1 not a recurrentd database or a newer schema, 74 damaged.
    #[arg(long)]
    pub verify: bool,
}

pub(super) fn open(config: &Config, access: Access) -> Result<Store, u8> {
    Store::open(&config.database.path, access).map_err(|error| {
        eprintln!("recurrentd: {error}");
        exit::store(&error)
    })
}

/// Who runs this command, for the ledger: `$SUDO_USER` (the person behind sudo), else `$USER`,
/// else the real uid's name from the password database, else `uid:N`. Empty variables do not
/// count (a service or `env -i` may leave `USER=` empty).
pub(super) fn operator() -> String {
    let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    var("SUDO_USER")
        .or_else(|| var("USER"))
        .unwrap_or_else(real_user)
}

/// The real uid's user name, else `uid:N`.
fn real_user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill (pointers null).
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf` outlives the use of the strings
    // `entry` points into (read below, before `buf` is dropped).
    let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc == 0 && !found.is_null() && !entry.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().trim().to_string();
        if !name.is_empty() {
            return name;
        }
    }
    format!("uid:{uid}")
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

/// A time for people: UTC, then the billing time zone's local time.
fn both(at: DateTime<Utc>, tz: Tz) -> String {
    format!(
        "{} ({})",
        at.format("%Y-%m-%d %H:%M:%S UTC"),
        at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
    )
}

/// [`both`] of a stored RFC 3339 text; the text itself if it does not parse.
fn both_text(text: &str, tz: Tz) -> String {
    DateTime::parse_from_rfc3339(text)
        .map(|t| both(t.with_timezone(&Utc), tz))
        .unwrap_or_else(|_| text.to_string())
}

/// "42 s", "5 min", "3 h", "2 d".
fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86400),
    }
}

/// The daemon as `status` shows it: from the lock and what it recorded in the database.
#[derive(Debug, Serialize)]
struct DaemonView {
    running: bool,
    /// The pid and version of the daemon that holds (or last held) the lock.
    pid: Option<u32>,
    version: Option<String>,
    /// When it started (real time).
    started_at: Option<String>,
    /// Its last tick that finished without error (real time), and how long ago.
    last_tick_at: Option<String>,
    last_tick_age_seconds: Option<i64>,
    /// In a rehearsal: its clock's rate (seconds per real second) and its clock now (estimated
    /// from its last tick while it runs; at its last tick once stopped). Null on the real clock.
    rehearsal_rate: Option<u32>,
    clock: Option<String>,
}

impl DaemonView {
    fn new(record: &DaemonRecord, running: bool, now: DateTime<Utc>) -> DaemonView {
        let clock = match (
            record.rehearsal,
            record.last_tick_clock,
            record.last_tick_at,
        ) {
            (Some(rate), Some(clock), Some(at)) if running => {
                let real = (now - at).num_milliseconds().max(0);
                Some(clock + chrono::Duration::milliseconds(real.saturating_mul(i64::from(rate))))
            }
            (Some(_), Some(clock), _) => Some(clock),
            _ => None,
        };
        DaemonView {
            running,
            pid: record.pid,
            version: record.version.clone(),
            started_at: record.started_at.map(rfc3339),
            last_tick_at: record.last_tick_at.map(rfc3339),
            last_tick_age_seconds: record.last_tick_at.map(|at| (now - at).num_seconds()),
            rehearsal_rate: record.rehearsal,
            clock: clock.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize)]
struct RefusedView {
    file: String,
    /// Its first diagnostic (`path:line:column: field: message`).
    first_error: String,
    /// How many diagnostics it has (`recurrentd check` lists them all).
    errors: usize,
}

/// `status --json`: the store's report, the daemon, refused schedule files.
#[derive(Debug, Serialize)]
struct StatusView<'a> {
    #[serde(flatten)]
    report: &'a store::StatusReport,
    daemon: DaemonView,
    refused_schedule_files: Vec<RefusedView>,
    /// `billing.timezone`: the text output shows times in it beside UTC.
    timezone: String,
}

pub fn status(config: &Config, args: &StatusArgs) -> u8 {
    if let Some(postgres) = &config.database.postgres {
        return shared_status(config, postgres, args);
    }
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    if let Some(id) = &args.subscription {
        return status_of(config, &store, id, args);
    }
    let running = store::daemon_running(&config.database.path);
    let read = || -> Result<_, StoreError> {
        Ok((
            store.status(running)?,
            store.daemon_record()?,
            store.refused_files()?,
        ))
    };
    let (mut report, record, refused) = match read() {
        Ok(read) => read,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    // The webhook's backlog, when one is configured.
    if config.webhook.is_some() {
        match store.outbox_backlog() {
            Ok(backlog) => report.webhook = Some(backlog.status(chrono::Utc::now())),
            Err(error) => {
                eprintln!("recurrentd: {error}");
                return exit::store(&error);
            }
        }
    }
    let tz = config.billing.timezone;
    let view = StatusView {
        report: &report,
        daemon: DaemonView::new(&record, running, Utc::now()),
        refused_schedule_files: refused
            .iter()
            .map(|r| RefusedView {
                file: r.file.clone(),
                first_error: r.first_error.clone(),
                errors: r.errors,
            })
            .collect(),
        timezone: tz.name().to_string(),
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
            if args.all {
                // The list follows the summary's fields inside the same object.
                return Ok(());
            }
            serde_json::to_writer_pretty(&mut out, &view)?;
            return writeln!(out);
        }
        let d = &view.daemon;
        writeln!(out, "database: {}", report.database.display())?;
        let who = match (d.pid, &d.version) {
            (Some(pid), Some(version)) => format!("pid {pid}, recurrentd {version}"),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "no daemon has recorded itself in this database yet".to_string(),
        };
        let started = record
            .started_at
            .map(|at| format!(", started {}", both(at, tz)))
            .unwrap_or_default();
        if report.daemon_running {
            writeln!(out, "daemon: running ({who}{started})")?;
        } else {
            writeln!(
                out,
                "daemon: NOT RUNNING — nothing is charged or reconciled until it is started \
                 (last: {who}{started})"
            )?;
        }
        match (record.last_tick_at, d.last_tick_age_seconds) {
            (Some(at), Some(seconds)) => writeln!(
                out,
                "last tick: {}, {} ago{}",
                both(at, tz),
                age(seconds),
                if report.daemon_running && seconds > 300 {
                    " — LATE: no successful tick for over 5 minutes (see the daemon's log)"
                } else {
                    ""
                }
            )?,
            _ => writeln!(out, "last tick: none yet")?,
        }
        if let (Some(rate), Some(clock)) = (record.rehearsal, &d.clock) {
            writeln!(
                out,
                "daemon clock: REHEARSAL at {rate}x real time: {}{}",
                both_text(clock, tz),
                if report.daemon_running {
                    " (estimated from its last tick)"
                } else {
                    " (at its last tick)"
                }
            )?;
        }
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
            report
                .oldest_unresolved
                .as_deref()
                .map(|t| both_text(t, tz))
                .unwrap_or_else(|| "none".into())
        )?;
        match &report.breaker_reason {
            Some(reason) => writeln!(
                out,
                "circuit breaker: OPEN — {reason}\n  (no new charges; `recurrentd breaker reset --reason ...` once fixed)"
            )?,
            None => writeln!(out, "circuit breaker: closed")?,
        }
        if let Some(reason) = &report.clock_hold {
            writeln!(
                out,
                "clock: HELD — {reason}\n  (no new charges; check the host's clock, then `recurrentd clock ack --reason ...`)"
            )?;
        }
        match &report.webhook {
            None => writeln!(out, "webhook: not configured")?,
            Some(w) => writeln!(
                out,
                "webhook: {} undelivered{}, {}",
                w.undelivered,
                w.oldest_undelivered_age_seconds
                    .map(|age| format!(" (oldest {} s old)", age))
                    .unwrap_or_default(),
                if w.dead == 0 {
                    "0 dead".to_string()
                } else {
                    format!(
                        "{} DEAD — not delivered within webhook.dead_letter_after_days; \
                         `recurrentd events --redeliver-dead` once the endpoint works",
                        w.dead
                    )
                }
            )?,
        }
        if refused.is_empty() {
            writeln!(out, "refused schedule files: none")?;
        } else {
            writeln!(
                out,
                "refused schedule files (each keeps its last accepted version in force; \
                 `recurrentd check` lists every problem):"
            )?;
            for r in &refused {
                let more = if r.errors > 1 {
                    format!(" (+{} more)", r.errors - 1)
                } else {
                    String::new()
                };
                writeln!(out, "  {}: {}{more}", r.file, r.first_error)?;
            }
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
                    both_text(&a.since, tz),
                    a.order_number
                        .as_deref()
                        .map(|o| format!("{o}: "))
                        .unwrap_or_default(),
                    a.detail
                )?;
            }
        }
        writeln!(out, "times: UTC, and {} in brackets", tz.name())?;
        Ok(())
    })();
    let code = finish(printed);
    if code != exit::OK {
        return code;
    }
    if args.all {
        let calendar = Calendar::from(&config.billing);
        let summary = match serde_json::to_value(&view) {
            Ok(summary) => summary,
            Err(error) => {
                eprintln!("recurrentd: {error}");
                return exit::INTERNAL;
            }
        };
        match list_all(&store, &summary, &calendar, args.json) {
            Ok(()) => {}
            Err(ListError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(ListError::Io(e)) => {
                eprintln!("recurrentd: cannot write: {e}");
                return exit::INTERNAL;
            }
            Err(ListError::Store(error)) => {
                eprintln!("recurrentd: {error}");
                return exit::store(&error);
            }
        }
    }
    let stopped = !report.daemon_running && !args.offline_ok;
    if stopped
        || report.breaker_reason.is_some()
        || report.clock_hold.is_some()
        || !report.needs_attention.is_empty()
        || report.webhook.as_ref().is_some_and(|w| w.dead > 0)
        || !refused.is_empty()
    {
        exit::PROBLEMS
    } else {
        exit::OK
    }
}

/// `status SUB --json`.
#[derive(Debug, Serialize)]
struct SubscriptionView<'a> {
    #[serde(flatten)]
    line: SubscriptionLine<'a>,
    file: &'a str,
    line_number: usize,
    customer: Option<&'a str>,
    bill_number: &'a str,
    currency: &'a str,
    /// The terms in force: amount, cadence ("1 month"), first due date, catch-up override.
    amount: String,
    every: String,
    start: String,
    catch_up: Option<&'static str>,
    /// The four limits the customer agreed to (null: not set).
    limits: LimitsView,
    /// Why it waits for an operator (a hard decline, a possible double charge), if it does.
    attention_reason: Option<&'a str>,
    attention_since: Option<String>,
    created_at: String,
    updated_at: String,
    removed_at: Option<String>,
    /// Attempts whose outcome is not known yet, with their OrderNumbers.
    open_attempts: Vec<OpenAttemptView>,
    /// Its latest charges (as `history` shows them), oldest first.
    last_charges: Vec<store::HistoryRow>,
    timezone: String,
}

#[derive(Debug, Serialize)]
struct LimitsView {
    min_amount: Option<String>,
    max_amount: Option<String>,
    period_days: Option<u32>,
    max_date: Option<String>,
}

#[derive(Debug, Serialize)]
struct OpenAttemptView {
    order_number: String,
    /// `period N` or `adhoc:REFERENCE`.
    purpose: String,
    state: String,
    amount: String,
    currency: String,
    created_at: String,
    next_check_at: Option<String>,
    detail: Option<String>,
}

/// `status SUB`: one subscription in full.
fn status_of(config: &Config, store: &Store, id: &str, args: &StatusArgs) -> u8 {
    let read = || -> Result<_, StoreError> {
        let Some(overview) = store.subscription_overview(id)? else {
            return Ok(None);
        };
        let open = store.open_attempts(id)?;
        let mut history = store.history(Some(id), None)?;
        let keep = history.len().saturating_sub(args.last);
        history.drain(..keep);
        Ok(Some((overview, open, history)))
    };
    let (overview, open, history) = match read() {
        Ok(Some(read)) => read,
        Ok(None) => {
            eprintln!(
                "recurrentd: no subscription {id:?} in the database (`recurrentd status --all` \
                 lists them all)"
            );
            return exit::PROBLEMS;
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    let calendar = Calendar::from(&config.billing);
    let tz = config.billing.timezone;
    let sub = &overview.subscription;
    let terms = &sub.terms;
    let view = SubscriptionView {
        line: line(&overview, &calendar),
        file: &sub.file,
        line_number: sub.line,
        customer: sub.customer.as_deref(),
        bill_number: &sub.bill_number,
        currency: sub.currency.as_str(),
        amount: terms.amount.to_string(),
        every: terms.every.to_string(),
        start: terms.start.to_string(),
        catch_up: terms.catch_up.map(|c| match c {
            crate::config::CatchUp::Latest => "latest",
            crate::config::CatchUp::None => "none",
        }),
        limits: LimitsView {
            min_amount: terms.limits.min_amount.map(|m| m.to_string()),
            max_amount: terms.limits.max_amount.map(|m| m.to_string()),
            period_days: terms.limits.period_days,
            max_date: terms.limits.max_date.map(|d| d.to_string()),
        },
        attention_reason: overview.flagged.as_ref().map(|(r, _)| r.as_str()),
        attention_since: overview.flagged.as_ref().map(|(_, at)| rfc3339(*at)),
        created_at: rfc3339(sub.created_at),
        updated_at: rfc3339(sub.updated_at),
        removed_at: sub.removed_at.map(rfc3339),
        open_attempts: open
            .iter()
            .map(|a| OpenAttemptView {
                order_number: a.order_number.clone(),
                purpose: a.purpose.clone(),
                state: a.state.clone(),
                amount: a.amount.to_string(),
                currency: a.currency.clone(),
                created_at: rfc3339(a.created_at),
                next_check_at: a.next_check_at.map(rfc3339),
                detail: a.detail.clone(),
            })
            .collect(),
        last_charges: history,
        timezone: tz.name().to_string(),
    };
    let printed = (|| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &view)?;
            return writeln!(out);
        }
        let v = &view;
        let or_dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        writeln!(out, "subscription: {}", v.line.subscription)?;
        writeln!(out, "state: {}", v.line.state)?;
        writeln!(out, "file: {} (line {})", v.file, v.line_number)?;
        writeln!(out, "customer: {}", v.customer.unwrap_or("-"))?;
        writeln!(out, "bill number: {}", v.bill_number)?;
        writeln!(
            out,
            "terms: {} {} every {}, from {}{}",
            v.amount,
            v.currency,
            v.every,
            v.start,
            v.catch_up
                .map(|c| format!(", catch_up {c}"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "limits: min_amount {}, max_amount {}, period_days {}, max_date {}",
            or_dash(v.limits.min_amount.clone()),
            or_dash(v.limits.max_amount.clone()),
            or_dash(v.limits.period_days.map(|d| d.to_string())),
            or_dash(v.limits.max_date.clone()),
        )?;
        if v.line.needs_attention.is_empty() {
            writeln!(out, "needs attention: nothing")?;
        } else {
            writeln!(
                out,
                "needs attention: {}{}",
                v.line.needs_attention.join(", "),
                match (v.attention_reason, overview.flagged.as_ref()) {
                    (Some(reason), Some((_, since))) =>
                        format!(" — {reason} (since {})", both(*since, tz)),
                    _ => String::new(),
                }
            )?;
        }
        let next_due = next_due(&overview, &calendar);
        writeln!(
            out,
            "next due: {}",
            match next_due {
                Some(at) => both(at, tz),
                None if v.line.state == "active" && !v.line.needs_attention.is_empty() =>
                    "none until an operator has acted (see above)".into(),
                None if v.line.state == "active" => "none: no period will be charged again".into(),
                None => format!("none while {}", v.line.state),
            }
        )?;
        if open.is_empty() {
            writeln!(out, "open attempts: none")?;
        } else {
            writeln!(out, "open attempts:")?;
            for a in &open {
                writeln!(
                    out,
                    "  {}  {}  {}  {} {}  since {}{}",
                    a.order_number,
                    a.purpose,
                    a.state,
                    a.amount,
                    a.currency,
                    both(a.created_at, tz),
                    a.next_check_at
                        .map(|at| format!(", next look-up {}", both(at, tz)))
                        .unwrap_or_default()
                )?;
            }
        }
        if v.last_charges.is_empty() {
            writeln!(out, "last charges: none")?;
        } else {
            writeln!(out, "last charges (oldest first):")?;
            for r in &v.last_charges {
                writeln!(
                    out,
                    "  {:<24} {:<10} {:>3} {:<34} {:>10} {:<3} {:<12} {}",
                    both_text(&r.at, tz).split(" (").next().unwrap_or_default(),
                    r.period,
                    r.attempt.map(|a| a.to_string()).unwrap_or_default(),
                    r.order_number.as_deref().unwrap_or("-"),
                    r.amount,
                    r.currency,
                    r.state,
                    r.reason.as_deref().unwrap_or(""),
                )?;
            }
        }
        writeln!(out, "times: UTC, and {} in brackets", tz.name())?;
        Ok(())
    })();
    let code = finish(printed);
    if code != exit::OK {
        code
    } else if view.line.needs_attention.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    }
}

/// Why listing every subscription stopped.
enum ListError {
    Store(StoreError),
    Io(std::io::Error),
}

impl From<StoreError> for ListError {
    fn from(error: StoreError) -> ListError {
        ListError::Store(error)
    }
}

impl From<std::io::Error> for ListError {
    fn from(error: std::io::Error) -> ListError {
        ListError::Io(error)
    }
}

/// One line of `status --all`.
#[derive(Debug, Serialize)]
struct SubscriptionLine<'a> {
    subscription: &'a str,
    /// active, paused, cancelled or removed.
    state: &'static str,
    /// hard_decline, double_approval, late_approval, parked, quarantined (empty: nothing to
    /// do).
    needs_attention: Vec<&'static str>,
    /// The parked attempt's OrderNumber, for `recurrentd resolve`.
    parked_order_number: Option<&'a str>,
    /// When the daemon next tries to charge it (RFC 3339, daemon's clock); null when it will
    /// not without a change: paused, cancelled, removed, past its end date, or waiting for an
    /// operator (needs_attention not empty).
    next_due: Option<String>,
    /// The latest attempt's state (an attempt state: pending, not_sent, unknown, parked,
    /// approved, declined, not_received, rejected, quarantined).
    last_state: Option<&'static str>,
    last_order_number: Option<&'a str>,
    /// When the latest attempt reached that state (daemon's clock).
    last_at: Option<String>,
    /// The last outcome is the enrolment's initial payment (no attempt yet).
    last_initial: bool,
}

use crate::timefmt::rfc3339;

/// When the daemon will next try to charge a subscription: an open period's scheduled retry
/// (or, with no retry instant and no live attempt, its own due instant: the next sweep); else
/// the due instant of its next period, as `billing::decide` sees it before anything is due;
/// `None` once no period will be charged again. An instant in the past means the next sweep.
/// A subscription that is paused, or waiting for an operator (a flag, a parked or quarantined
/// attempt), has none: nothing is charged until that changes.
pub(crate) fn next_due(o: &SubscriptionOverview, calendar: &Calendar) -> Option<DateTime<Utc>> {
    let sub = &o.subscription;
    if sub.removed_at.is_some()
        || sub.terms.state != SubscriptionState::Active
        || o.flagged.is_some()
        || o.parked.is_some()
        || o.quarantined > 0
    {
        return None;
    }
    if let Some(open) = o
        .last_period
        .as_ref()
        .filter(|p| p.state == ChargeState::Open && !p.live_attempt)
    {
        return Some(
            open.next_attempt_at
                .unwrap_or_else(|| calendar.due_instant(open.due_date)),
        );
    }
    let next_period = o
        .last_period
        .as_ref()
        .map_or(0, |p| p.period.saturating_add(1));
    // Before anything is due, `decide` answers with the next period's due instant, or that
    // none will come (past the end date, or the calendar ran out).
    match billing::decide(
        &sub.terms,
        calendar,
        next_period,
        &[],
        DateTime::<Utc>::MIN_UTC,
    )
    .next
    {
        Next::Wait { due_at, .. } => Some(due_at),
        Next::Charge { .. } | Next::Defer { .. } | Next::Ended(_) => None,
    }
}

fn line<'a>(o: &'a SubscriptionOverview, calendar: &Calendar) -> SubscriptionLine<'a> {
    let sub = &o.subscription;
    let mut needs_attention = Vec::new();
    if o.flagged.is_some() {
        needs_attention.push(match o.flag_kind.as_deref() {
            Some("double_approval") => "double_approval",
            Some("late_approval") => "late_approval",
            _ => "hard_decline",
        });
    }
    if o.parked.is_some() {
        needs_attention.push("parked");
    }
    if o.quarantined > 0 {
        needs_attention.push("quarantined");
    }
    SubscriptionLine {
        subscription: &sub.id,
        state: if sub.removed_at.is_some() {
            "removed"
        } else {
            match sub.terms.state {
                SubscriptionState::Active => "active",
                SubscriptionState::Paused => "paused",
                SubscriptionState::Cancelled => "cancelled",
            }
        },
        needs_attention,
        parked_order_number: o.parked.as_deref(),
        next_due: next_due(o, calendar).map(rfc3339),
        last_state: o.last_outcome.as_ref().map(|l| l.state.as_str()),
        last_order_number: o.last_outcome.as_ref().map(|l| l.order_number.as_str()),
        last_at: o.last_outcome.as_ref().map(|l| rfc3339(l.at)),
        last_initial: o.last_outcome.as_ref().is_some_and(|l| l.initial),
    }
}

/// Streams every subscription after the summary: a table, or (`json`) the summary's object with
/// an "all_subscriptions" array, one subscription per line, written as the rows are read.
fn list_all(
    store: &Store,
    summary: &serde_json::Value,
    calendar: &Calendar,
    json: bool,
) -> Result<(), ListError> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0u64;
    if json {
        write!(out, "{{")?;
        if let serde_json::Value::Object(fields) = summary {
            for (key, value) in fields {
                serde_json::to_writer(&mut out, &key).map_err(std::io::Error::from)?;
                write!(out, ": ")?;
                serde_json::to_writer(&mut out, &value).map_err(std::io::Error::from)?;
                writeln!(out, ",")?;
            }
        }
        writeln!(out, "\"all_subscriptions\": [")?;
        store.each_subscription_overview(|o| -> Result<(), ListError> {
            if count > 0 {
                writeln!(out, ",")?;
            }
            count += 1;
            serde_json::to_writer(&mut out, &line(&o, calendar)).map_err(std::io::Error::from)?;
            Ok(())
        })?;
        writeln!(out, "{}]}}", if count > 0 { "\n" } else { "" })?;
    } else {
        writeln!(out, "subscriptions:")?;
        writeln!(
            out,
            "  {:<20} {:<9} {:<16} {:<20} {:<22} {:<12} {:<34} LAST AT",
            "SUBSCRIPTION",
            "STATE",
            "ATTENTION",
            "NEXT DUE",
            format!("({})", calendar.timezone.name()),
            "LAST",
            "LAST ORDER"
        )?;
        store.each_subscription_overview(|o| -> Result<(), ListError> {
            let l = line(&o, calendar);
            count += 1;
            let attention = if l.needs_attention.is_empty() {
                "-".to_string()
            } else {
                l.needs_attention.join(",")
            };
            let last = match (l.last_state, l.last_initial) {
                (Some(_), true) => "initial",
                (Some(state), false) => state,
                (None, _) => "-",
            };
            let local = next_due(&o, calendar)
                .map(|at| {
                    at.with_timezone(&calendar.timezone)
                        .format("%Y-%m-%d %H:%M %Z")
                        .to_string()
                })
                .unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "  {:<20} {:<9} {:<16} {:<20} {:<22} {:<12} {:<34} {}",
                l.subscription,
                l.state,
                attention,
                l.next_due.as_deref().unwrap_or("-"),
                local,
                last,
                l.last_order_number.unwrap_or("-"),
                l.last_at.as_deref().unwrap_or("-"),
            )?;
            Ok(())
        })?;
        writeln!(out, "  ({count} subscriptions)")?;
    }
    out.flush()?;
    Ok(())
}

/// The refunds of a history row, for its NOTE (`recurrentd refund`).
fn refund_note(r: &store::HistoryRow) -> String {
    let mut note = String::new();
    if let Some(refunded) = &r.refunded {
        note.push_str(&format!("refunded {refunded}; "));
    }
    if let Some(pending) = &r.refund_pending {
        note.push_str(&format!("refund of {pending} pending; "));
    }
    note
}

pub fn history(config: &Config, args: &HistoryArgs) -> u8 {
    if args.events {
        return audit(
            config,
            &AuditArgs {
                subscription: args.subscription.clone(),
                since: args.since,
                json: args.json,
            },
        );
    }
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let mut rows = match store.history(args.subscription.as_deref(), args.since) {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    if let Some(id) = args.subscription.as_deref()
        && rows.is_empty()
    {
        match store.subscription(id) {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!(
                    "recurrentd: the database {} knows no subscription {id:?} (`recurrentd \
                     status --all` lists them)",
                    config.database.path.display()
                );
                return exit::PROBLEMS;
            }
            Err(error) => {
                eprintln!("recurrentd: {error}");
                return exit::store(&error);
            }
        }
    }
    if let Some(until) = args.until {
        // Entries' times are RFC 3339 (whole seconds), so a parse never fails; keep any that did.
        rows.retain(|r| DateTime::parse_from_rfc3339(&r.at).map_or(true, |at| at < until));
    }
    if !args.state.is_empty() {
        rows.retain(|r| args.state.iter().any(|s| s == r.state));
    }
    if let Some(limit) = args.limit {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if rows.len() > limit {
            rows.drain(..rows.len() - limit);
        }
    }
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
                refund_note(r) + r.reason.as_deref().unwrap_or(""),
            )?;
        }
        Ok(())
    })();
    finish(printed)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this subscription's events.
    pub subscription: Option<String>,
    /// Only events from this instant on (RFC 3339; the daemon's events carry its clock, an
    /// operator command's the real time).
    #[arg(long, value_name = "RFC3339")]
    pub since: Option<DateTime<Utc>>,
    /// Print JSON (one array) for scripts.
    #[arg(long)]
    pub json: bool,
}

/// One ledger event as `audit` shows it.
#[derive(Debug, Serialize)]
struct AuditRow {
    seq: i64,
    at: String,
    kind: String,
    subscription: Option<String>,
    /// An operator's name (a command that records who ran it), `file NAME` (schedule sync),
    /// `enroll` (the enroll command) or `daemon`.
    who: String,
    /// The reason given or recorded, if any.
    why: Option<String>,
    /// What a schedule change changed: each field before and after.
    changes: Vec<FieldChange>,
    /// The event's whole record.
    detail: serde_json::Value,
}

#[derive(Debug, Serialize)]
struct FieldChange {
    field: String,
    before: serde_json::Value,
    after: serde_json::Value,
}

fn audit_row(event: store::AuditEvent) -> AuditRow {
    let d = &event.detail;
    let text = |key: &str| d.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let who = text("by")
        .or_else(|| text("attested_by"))
        .or_else(|| match event.kind.as_str() {
            "subscription_added"
            | "subscription_updated"
            | "subscription_removed"
            | "schedule_refused"
            | "schedule_file_missing"
            | "schedule_file_returned" => Some(format!(
                "file {}",
                text("file").unwrap_or_else(|| "?".into())
            )),
            kind if kind.starts_with("enrol") => Some("enroll".into()),
            _ => None,
        })
        .unwrap_or_else(|| "daemon".into());
    let why = text("why")
        .or_else(|| text("reason"))
        .or_else(|| {
            d.get("errors")
                .and_then(|e| e.get(0))
                .and_then(|e| e.as_str())
                .map(str::to_string)
        })
        .or_else(|| text("outcome"));
    let changes = d
        .get("changes")
        .and_then(|c| c.as_object())
        .map(|fields| {
            fields
                .iter()
                .map(|(field, change)| FieldChange {
                    field: field.clone(),
                    before: change.get("from").cloned().unwrap_or_default(),
                    after: change.get("to").cloned().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    AuditRow {
        seq: event.seq,
        at: rfc3339(event.at),
        kind: event.kind,
        subscription: event.subscription,
        who,
        why,
        changes,
        detail: event.detail,
    }
}

/// What an event was about, in a few words (order number, amount, reference, file).
fn audit_what(d: &serde_json::Value) -> String {
    let text = |key: &str| d.get(key).and_then(|v| v.as_str());
    let mut parts = Vec::new();
    if let Some(order) = text("order_number") {
        parts.push(order.to_string());
    }
    if let (Some(amount), Some(currency)) = (text("amount"), text("currency")) {
        parts.push(format!("{amount} {currency}"));
    }
    if let Some(reference) = text("reference") {
        parts.push(format!("ref {reference}"));
    }
    parts.join(", ")
}

/// A JSON value as an operator reads it: strings bare, null as "-".
fn shown(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `audit` (and `history --events`): every ledger event with who, why and before/after.
pub fn audit(config: &Config, args: &AuditArgs) -> u8 {
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let tz = config.billing.timezone;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut count = 0u64;
    let json = args.json;
    let header = if json {
        write!(out, "[")
    } else {
        writeln!(
            out,
            "{:<6} {:<20} {:<22} {:<28} {:<20} {:<24} WHY / WHAT",
            "SEQ",
            "AT (UTC)",
            format!("({})", tz.name()),
            "KIND",
            "SUBSCRIPTION",
            "WHO"
        )
    };
    let walked = header.and_then(|()| {
        let read = store.audit(args.subscription.as_deref(), args.since, |event| {
            let row = audit_row(event);
            count += 1;
            if json {
                if count > 1 {
                    write!(out, ",")?;
                }
                writeln!(out)?;
                serde_json::to_writer(&mut out, &row).map_err(std::io::Error::from)?;
                return Ok(());
            }
            let at = DateTime::parse_from_rfc3339(&row.at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default();
            let what = audit_what(&row.detail);
            let mut said = row.why.clone().unwrap_or_default();
            if !what.is_empty() {
                said = if said.is_empty() {
                    what
                } else {
                    format!("{said} ({what})")
                };
            }
            writeln!(
                out,
                "{:<6} {:<20} {:<22} {:<28} {:<20} {:<24} {}",
                row.seq,
                at.format("%Y-%m-%d %H:%M:%S"),
                at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
                row.kind,
                row.subscription.as_deref().unwrap_or("-"),
                row.who,
                said
            )?;
            for c in &row.changes {
                writeln!(
                    out,
                    "{:>8}{}: {} -> {}",
                    "",
                    c.field,
                    shown(&c.before),
                    shown(&c.after)
                )?;
            }
            Ok(())
        });
        match read {
            Ok(result) => result,
            Err(error) => Err(std::io::Error::other(error)),
        }
    });
    let closed = walked.and_then(|()| {
        if json {
            writeln!(out, "{}]", if count > 0 { "\n" } else { "" })?;
        } else if count == 0 {
            writeln!(out, "(no events)")?;
        }
        out.flush()
    });
    match closed {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => match e.into_inner() {
            Some(inner) => match inner.downcast::<StoreError>() {
                Ok(error) => {
                    eprintln!("recurrentd: {error}");
                    exit::store(&error)
                }
                Err(other) => {
                    eprintln!("recurrentd: cannot write: {other}");
                    exit::INTERNAL
                }
            },
            None => {
                eprintln!("recurrentd: cannot write");
                exit::INTERNAL
            }
        },
    }
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
            exit::store(&error)
        }
    }
}

/// Confirms that a schedule file the daemon found missing is gone for good: its held
/// subscriptions are removed (their ids stay reserved).
pub fn remove_file(config: &Config, args: &RemoveFileArgs) -> u8 {
    let Some(name) = args.file.file_name().and_then(|n| n.to_str()) else {
        eprintln!(
            "recurrentd: {} does not name a schedule file",
            args.file.display()
        );
        return exit::USAGE;
    };
    let in_folder = config.schedules.dir.join(name);
    if in_folder.exists() {
        eprintln!(
            "recurrentd: {} is in the schedules folder: it is not missing; delete its \
             subscriptions from it instead (or remove the file, let the daemon notice, then run \
             this again)",
            in_folder.display()
        );
        return exit::PROBLEMS;
    }
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let by = operator();
    match store.remove_missing_file(name, &by, &args.reason, Utc::now()) {
        Ok(RemovedFile::Removed(ids)) => {
            println!(
                "{name}: removal confirmed by {by}; {} subscription(s) removed for good: {}",
                ids.len(),
                if ids.is_empty() {
                    "none".to_string()
                } else {
                    ids.join(", ")
                }
            );
            exit::OK
        }
        Ok(RemovedFile::Unknown) => {
            eprintln!("recurrentd: the database knows no schedule file named {name}");
            exit::PROBLEMS
        }
        Ok(RemovedFile::NotMissing) => {
            eprintln!(
                "recurrentd: {name} was in the folder at the daemon's last sync: it is not \
                 missing; nothing was changed"
            );
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::store(&error)
        }
    }
}

pub fn resolve(config: &Config, args: &ResolveArgs) -> u8 {
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let resolution = if args.paid {
        Resolution::Paid
    } else {
        Resolution::NotCharged
    };
    let order = &args.order_number;
    let by = operator();
    match store.resolve_parked(order, resolution, &by, &args.reason, Utc::now()) {
        Ok(Resolved::Done(job)) => {
            match resolution {
                Resolution::Paid => println!(
                    "{order} ({}, {} {} {}): booked as paid, attested by {by} (checkvalue absent: \
                     not verified by recurrentd); the subscription is charged again from its \
                     next due period.",
                    job.subscription_id,
                    describe(&job.purpose),
                    job.amount,
                    job.currency
                ),
                Resolution::NotCharged => println!(
                    "{order} ({}, {}): recorded as not charged, attested by {by}; the daemon's \
                     next sweep charges it again under a new order number, if the limits and \
                     the period's retry window still allow it.",
                    job.subscription_id,
                    describe(&job.purpose)
                ),
            }
            exit::OK
        }
        Ok(Resolved::NotFound) => {
            eprintln!("recurrentd: no attempt has the order number {order}");
            exit::PROBLEMS
        }
        Ok(Resolved::NotParked(job)) => {
            let hint = if job.state.unresolved() {
                "the daemon is still looking it up; it is parked for an operator after \
                 engine.park_after_hours"
            } else {
                "its outcome is already recorded"
            };
            eprintln!(
                "recurrentd: {order} ({}) is {}, not parked or quarantined: only those are \
                 resolved by hand ({hint}); nothing was changed",
                job.subscription_id, job.state
            );
            exit::PROBLEMS
        }
        Ok(Resolved::Raced(job)) => {
            eprintln!(
                "recurrentd: the daemon settled {order} ({}) while this command ran: it is now \
                 {}; nothing was recorded (see `recurrentd history {}`)",
                job.subscription_id, job.state, job.subscription_id
            );
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::store(&error)
        }
    }
}

fn describe(purpose: &store::Purpose) -> String {
    match purpose {
        store::Purpose::Period(n) => format!("period {n}"),
        store::Purpose::Adhoc(reference) => format!("ad-hoc charge {reference}"),
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
            exit::store(&error)
        }
    }
}

pub fn clock(config: &Config, command: &ClockCommand) -> u8 {
    let ClockCommand::Ack { reason } = command;
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let held = match store.clock_hold() {
        Ok(held) => held,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    match store.acknowledge_clock(&operator(), reason, Utc::now()) {
        Ok(_) if held.is_some() => {
            println!("Clock acknowledged: new charges resume at the daemon's next sweep.");
            exit::OK
        }
        Ok(_) => {
            eprintln!(
                "recurrentd: new charges were not held for the clock (nothing to acknowledge)"
            );
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            exit::store(&error)
        }
    }
}

pub fn backup(config: &Config, args: &BackupArgs) -> u8 {
    if args.verify {
        return verify_backup(&args.path);
    }
    // Checked again, atomically, when the file is created; this is for the clear message.
    if args.path.symlink_metadata().is_ok() {
        return target_exists(&args.path);
    }
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.backup_to(&args.path) {
        Ok(()) => {
            println!(
                "Backup written to {} (PRAGMA integrity_check: ok)",
                args.path.display()
            );
            exit::OK
        }
        // A copy that failed its check is removed.
        Err(error) if error.is_damaged() => {
            eprintln!("recurrentd: {error}; no backup was written");
            exit::IO_ERROR
        }
        Err(StoreError::Backup { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            target_exists(&args.path)
        }
        Err(error) => {
            eprintln!("recurrentd: {error}; no backup was written");
            exit::store(&error)
        }
    }
}

fn target_exists(path: &std::path::Path) -> u8 {
    eprintln!(
        "recurrentd: {} already exists; a backup never overwrites a file: choose another name \
         (or check that copy with `recurrentd backup --verify {}`)",
        path.display(),
        path.display()
    );
    exit::PROBLEMS
}

/// `backup --verify FILE`: what [`store::verify_copy`] found, one fact per line.
fn verify_backup(path: &std::path::Path) -> u8 {
    match store::verify_copy(path) {
        Ok(copy) => {
            println!("{}: a usable recurrentd backup", path.display());
            println!("  integrity: ok (PRAGMA integrity_check)");
            println!(
                "  schema version: {}{}",
                copy.schema_version,
                if copy.schema_version < store::SCHEMA_VERSION {
                    format!(
                        " (this recurrentd uses {}: the daemon migrates it when it starts on it)",
                        store::SCHEMA_VERSION
                    )
                } else {
                    String::new()
                }
            );
            println!("  order-number prefix: {}", copy.order_prefix);
            println!("  database created: {}", copy.created_at);
            println!(
                "  holds: {} subscription(s), {} attempt(s), {} ledger event(s); the latest at {}",
                copy.subscriptions,
                copy.attempts,
                copy.ledger_events,
                copy.last_event_at.as_deref().unwrap_or("-")
            );
            println!("  journal mode: {}", copy.journal_mode);
            exit::OK
        }
        Err(error @ (StoreError::NotOurs { .. } | StoreError::TooNew { .. })) => {
            eprintln!("recurrentd: {error}");
            exit::PROBLEMS
        }
        Err(StoreError::Missing { .. }) => {
            eprintln!("recurrentd: no file at {}", path.display());
            exit::PROBLEMS
        }
        Err(error) => {
            eprintln!("recurrentd: {error}; this copy cannot be restored");
            if error.is_damaged() {
                exit::IO_ERROR
            } else {
                exit::store(&error)
            }
        }
    }
}

/// `status` with `database.url`: the instances sharing the PostgreSQL database, their leases and
/// the work they hold. Exit 1 when no instance is alive (unless --offline-ok), the breaker is
/// open, the clock is held, or a subscription waits for an operator.
#[cfg(feature = "postgres")]
fn shared_status(
    config: &Config,
    postgres: &crate::config::PostgresConfig,
    args: &StatusArgs,
) -> u8 {
    if args.subscription.is_some() || args.all {
        eprintln!(
            "recurrentd: status SUBSCRIPTION and status --all are not available with database.url \
             (PostgreSQL) yet"
        );
        return exit::USAGE;
    }
    let password = match crate::config::load_database_password(config) {
        Ok(password) => password,
        Err(error) => {
            eprintln!("recurrentd: configuration error: {error}");
            return exit::CONFIG;
        }
    };
    let status = match store::postgres::shared_status(&postgres.url, password.as_ref()) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    let alive = status.instances.iter().filter(|i| i.alive).count();
    let attention = status.breaker.is_some()
        || status.clock_hold.is_some()
        || status.needs_operator > 0
        || (alive == 0 && !args.offline_ok);
    if alive == 0 {
        eprintln!(
            "recurrentd: NO INSTANCE IS RUNNING on {}: nothing is charged or reconciled until one \
             is started{}",
            status.database,
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
            serde_json::to_writer_pretty(&mut out, &status)?;
            return writeln!(out);
        }
        let tz = config.billing.timezone;
        writeln!(
            out,
            "database: {} (PostgreSQL, schema version {}), this host's instance: {}",
            status.database, status.schema_version, postgres.instance
        )?;
        writeln!(
            out,
            "instances: {alive} alive of {}",
            status.instances.len()
        )?;
        for i in &status.instances {
            writeln!(
                out,
                "  {:<20} epoch {:<4} {}  heartbeat {}  lease until {}  holding {} attempt(s)",
                i.name,
                i.epoch,
                if i.alive { "ALIVE" } else { "gone " },
                both(i.heartbeat_at, tz),
                both(i.lease_until, tz),
                i.holding
            )?;
        }
        for lease in &status.leases {
            writeln!(
                out,
                "lease {}: {} (epoch {}) until {}{}",
                lease.name,
                lease.owner,
                lease.owner_epoch,
                both(lease.until, tz),
                if lease.live { "" } else { " (expired: free)" }
            )?;
        }
        writeln!(
            out,
            "subscriptions: {} active; attempts unresolved: {} ({} unclaimed, taken by the next \
             sweep)",
            status.active_subscriptions, status.unresolved_attempts, status.unclaimed_attempts
        )?;
        writeln!(
            out,
            "needs an operator: {} subscription(s)",
            status.needs_operator
        )?;
        writeln!(
            out,
            "circuit breaker: {}",
            status
                .breaker
                .as_deref()
                .map_or("closed".to_string(), |why| format!("OPEN: {why}"))
        )?;
        if let Some(why) = &status.clock_hold {
            writeln!(out, "clock hold: {why}")?;
        }
        Ok(())
    })();
    if let Err(error) = printed
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("recurrentd: cannot write the status: {error}");
        return exit::INTERNAL;
    }
    if attention { exit::PROBLEMS } else { exit::OK }
}

#[cfg(not(feature = "postgres"))]
fn shared_status(_: &Config, _: &crate::config::PostgresConfig, _: &StatusArgs) -> u8 {
    eprintln!("recurrentd: database.url: this recurrentd was built without PostgreSQL");
    exit::CONFIG
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Cadence, Limits, Terms};
    use crate::config::CatchUp;
    use crate::money::{Currency, Money};
    use crate::store::{PeriodPosition, StoredSubscription};
    use chrono::{NaiveDate, NaiveTime, TimeZone};

    fn calendar() -> Calendar {
        Calendar {
            timezone: chrono_tz::Europe::Moscow,
            charge_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace: chrono::Duration::hours(24),
        }
    }

    fn date(m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, m, d).unwrap()
    }

    fn instant(m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, m, d, h, 0, 0).unwrap()
    }

    fn overview(state: SubscriptionState, max_date: Option<NaiveDate>) -> SubscriptionOverview {
        SubscriptionOverview {
            subscription: StoredSubscription {
                id: "s".into(),
                file: "a.toml".into(),
                line: 1,
                customer: None,
                bill_number: "5111".into(),
                currency: Currency::parse("RUB").unwrap(),
                terms: Terms {
                    amount: Money::parse("99.00").unwrap(),
                    every: Cadence::parse("1 month").unwrap(),
                    start: date(1, 5),
                    state,
                    catch_up: None,
                    limits: Limits {
                        max_date,
                        ..Limits::default()
                    },
                },
                created_at: instant(1, 1, 0),
                updated_at: instant(1, 1, 0),
                removed_at: None,
            },
            flagged: None,
            flag_kind: None,
            parked: None,
            quarantined: 0,
            last_period: None,
            last_outcome: None,
        }
    }

    fn period(
        n: u32,
        state: ChargeState,
        next: Option<DateTime<Utc>>,
        live: bool,
    ) -> PeriodPosition {
        PeriodPosition {
            period: n,
            due_date: date(1 + n, 5),
            state,
            next_attempt_at: next,
            live_attempt: live,
        }
    }

    #[test]
    fn next_due_follows_the_ledger_and_billing() {
        let cal = calendar();
        let mut o = overview(SubscriptionState::Active, None);
        assert_eq!(next_due(&o, &cal), Some(instant(1, 5, 7)), "period 0");
        o.last_period = Some(period(0, ChargeState::Paid, None, true));
        assert_eq!(next_due(&o, &cal), Some(instant(2, 5, 7)), "period 1");
        // An open period with a scheduled retry: the retry.
        o.last_period = Some(period(0, ChargeState::Open, Some(instant(1, 8, 7)), false));
        assert_eq!(next_due(&o, &cal), Some(instant(1, 8, 7)));
        // Open again without a retry instant (not received, resolved as not charged): its own
        // due instant, i.e. the next sweep.
        o.last_period = Some(period(0, ChargeState::Open, None, false));
        assert_eq!(next_due(&o, &cal), Some(instant(1, 5, 7)));
        // Open with a live attempt (unknown, parked): the next period.
        o.last_period = Some(period(0, ChargeState::Open, None, true));
        assert_eq!(next_due(&o, &cal), Some(instant(2, 5, 7)));
    }

    #[test]
    fn a_paused_or_waiting_subscription_has_no_next_due() {
        let cal = calendar();
        let mut paused = overview(SubscriptionState::Paused, None);
        paused.last_period = Some(period(0, ChargeState::Blocked, None, false));
        assert_eq!(next_due(&paused, &cal), None, "paused");
        let active = || {
            let mut o = overview(SubscriptionState::Active, None);
            o.last_period = Some(period(0, ChargeState::Paid, None, true));
            o
        };
        assert_eq!(next_due(&active(), &cal), Some(instant(2, 5, 7)));
        let mut flagged = active();
        flagged.flagged = Some(("hard decline 05".into(), instant(1, 5, 7)));
        assert_eq!(next_due(&flagged, &cal), None, "hard decline");
        let mut parked = active();
        parked.parked = Some("P-s-0-1".into());
        assert_eq!(next_due(&parked, &cal), None, "parked");
        let mut quarantined = active();
        quarantined.quarantined = 1;
        assert_eq!(next_due(&quarantined, &cal), None, "quarantined");
    }

    #[test]
    fn next_due_is_none_once_nothing_will_be_charged() {
        let cal = calendar();
        let mut cancelled = overview(SubscriptionState::Cancelled, None);
        cancelled.last_period = Some(period(0, ChargeState::Open, Some(instant(1, 8, 7)), false));
        assert_eq!(next_due(&cancelled, &cal), None);
        let mut ended = overview(SubscriptionState::Active, Some(date(2, 1)));
        ended.last_period = Some(period(0, ChargeState::Paid, None, true));
        assert_eq!(next_due(&ended, &cal), None, "period 1 is after max_date");
        let mut removed = overview(SubscriptionState::Active, None);
        removed.subscription.removed_at = Some(instant(1, 2, 0));
        assert_eq!(next_due(&removed, &cal), None);
    }
}
