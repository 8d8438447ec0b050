//! `recurrentd enroll`: start a subscription by making its initial recurring payment with a
//! customer's saved card (Token Pay), then append the subscription to a schedule file.
//!
//! Order of work, so that nothing is charged that could not be written afterwards, and nothing
//! is charged twice:
//! 1. every value is checked locally with the schedule-file rules (the new `[[subscription]]` is
//!    written as TOML and run through [`schedule::parse_text`], which also applies
//!    [`crate::billing::check_terms`]);
//! 2. the target schedule file is locked (`flock` on the sidecar `.NAME.lock`): a second
//!    `enroll` on the same file fails at once;
//! 3. a rerun: the subscription's pending attempt (an earlier run crashed, or its outcome was
//!    unknown) is looked up by its verified order status first, never sent again — approved:
//!    booked and written (step 7); declined, or not filed by the gateway after the settle window
//!    (and never seen): closed, and a new attempt (a new order number) may be made; anything
//!    else: the command ends, the attempt stays pending;
//! 4. the id must be unused in the schedules folder and the database, the order number new, and
//!    the file with the new subscription appended must still be valid; the operator confirms
//!    (unless `--yes`);
//! 5. the attempt is recorded as pending (order number, subscription, amount, limits) before
//!    the request is sent;
//! 6. the gateway is asked (tokenpay.cfm), and its answer verified or confirmed by a status
//!    query (a decline-type fault, which carries no check value, included);
//! 7. only on a verified approval: the enrolment is booked in the ledger (its instant counts for
//!    the period limit, its limits hold the schedule file to the agreement) and the subscription
//!    is appended to the schedule file atomically; a verified "not charged" closes the attempt;
//!    anything else leaves it pending for the rerun.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::exit;
use crate::billing::{self, Cadence, Limits, SubscriptionState, Terms};
use crate::config::{self, Config, SecretName};
use crate::gateway::client::{
    Client, MAX_ORDER_NUMBER_LEN, RecurringLimits, StatusQuery, TokenPayOutcome, TokenPayReply,
    TokenPayRequest, agreement_bill_number,
};
use crate::gateway::outcome::{DeclineKind, Outcome};
use crate::gateway::signature::SigningKey;
use crate::money::{Currency, Money};
use crate::schedule::{self, Diagnostic, Severity, Subscription};
use crate::store::{Access, EnrolmentAttempt, EnrolmentState, Store, StoreError};

/// A bill number that stands in for the real one while the new subscription is validated before
/// the payment; it is never written.
const PLACEHOLDER_BILL: &str = "0000000000000000";

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The new subscription's id (unique across the schedules folder; A-Z a-z 0-9 _ -).
    #[arg(long, value_name = "SUB")]
    pub id: String,
    /// The merchant's customer number (CustomerNumber at Assist).
    #[arg(long, value_name = "N")]
    pub customer: String,
    /// The customer's saved card, as `tokens list` shows it.
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
    /// The amount charged now (the initial payment) and every period, e.g. 499.00.
    #[arg(long, value_name = "AMOUNT")]
    pub amount: String,
    /// ISO 4217 currency, e.g. RUB.
    #[arg(long, value_name = "CUR")]
    pub currency: String,
    /// The cadence: "N day(s)", "N week(s)", "N month(s)" or "N year(s)".
    #[arg(long, value_name = "CADENCE")]
    pub every: String,
    /// RecurringMinAmount the customer agreed to.
    #[arg(long, value_name = "AMOUNT")]
    pub min_amount: String,
    /// RecurringMaxAmount the customer agreed to.
    #[arg(long, value_name = "AMOUNT")]
    pub max_amount: String,
    /// RecurringPeriod: the fewest days between two charges (1 to 999).
    #[arg(long, value_name = "DAYS")]
    pub period_days: u32,
    /// RecurringMaxDate: no charge after this date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub max_date: NaiveDate,
    /// The new attempt's OrderNumber. Default: enrol-<id> for the subscription's first attempt,
    /// enrol-<id>-<n> for its n-th (after attempts that were not charged), skipping any number
    /// an enrolment used. An order number is sent once: one an enrolment used before is refused
    /// (exit 1), so after a declined attempt run again without it, or with a new one. A rerun
    /// first looks up the subscription's pending attempt under that attempt's own number,
    /// whatever this option says.
    #[arg(long, value_name = "O")]
    pub order_number: Option<String>,
    /// The schedule file to append to (default: <schedules.dir>/enrolled-<id>.toml).
    #[arg(long, value_name = "PATH")]
    pub schedule_file: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Print JSON for scripts (on success and on failure).
    #[arg(long)]
    pub json: bool,
}

/// A verified initial payment: what the ledger will record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolment {
    pub subscription: String,
    pub order_number: String,
    /// The agreement's billnumber at Assist.
    pub bill_number: String,
    pub amount: Money,
    pub currency: Currency,
    /// When the initial payment was sent (in JSON: RFC 3339, `Z`, whole seconds).
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub at: DateTime<Utc>,
}

/// The values, checked by the schedule-file rules before anything else is done.
struct Checked {
    subscription: Subscription,
    start: NaiveDate,
    /// The new `[[subscription]]` as the command line gives it (placeholder bill number).
    block: String,
}

/// What was checked before anything is sent.
struct Plan {
    subscription: Subscription,
    start: NaiveDate,
    order_number: String,
    target: PathBuf,
}

/// A failure before or after the payment: the exit code (messages already printed).
type Exit = u8;

/// What looking up a rerun's pending attempt came to.
enum Rerun {
    /// Settled for good (booked, or it cannot be settled now): the command ends with this code.
    Done(u8),
    /// Verifiably not charged and closed: a new attempt may be made.
    Cleared,
}

pub fn run(config: &Config, args: &EnrollArgs) -> u8 {
    match enroll(config, args) {
        Ok(code) | Err(code) => code,
    }
}

fn enroll(config: &Config, args: &EnrollArgs) -> Result<u8, Exit> {
    let now = Utc::now();
    let checked = check_values(config, args, now)?;
    let target = args.schedule_file.clone().unwrap_or_else(|| {
        config
            .schedules
            .dir
            .join(format!("enrolled-{}.toml", args.id))
    });
    // One enrolment at a time per schedule file, held until the command ends (also while the
    // operator confirms and while the gateway answers).
    let _lock = lock_schedule_file(&target)?;
    let mut store = open_store(config)?;
    let mut gateway = None;

    // A rerun: the subscription's earlier attempt whose outcome is not known is looked up first
    // (verified order status), never sent again.
    if let Some(order) = &args.order_number
        && let Some(other) = store.enrolment_attempt(order).map_err(store_failed)?
        && other.state == EnrolmentState::Pending
        && other.subscription_id != args.id
    {
        eprintln!(
            "recurrentd: --order-number: order {order} is the pending enrolment of subscription \
             {}, not {}; run `recurrentd enroll --id {}` with its values to look it up. Not \
             enrolled; nothing was sent",
            other.subscription_id, args.id, other.subscription_id
        );
        return Err(exit::PROBLEMS);
    }
    if let Some(pending) = store.pending_enrolment(&args.id).map_err(store_failed)? {
        let (client, runtime) = gateway.insert(connect(config)?);
        match settle_pending(config, args, &mut store, client, runtime, &pending, &target) {
            Rerun::Done(code) => return Ok(code),
            Rerun::Cleared => {}
        }
    }

    let plan = plan(config, args, &store, checked, target)?;
    if !args.yes {
        match confirm(args, &plan) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("recurrentd: not enrolled; nothing was sent");
                return Err(exit::PROBLEMS);
            }
            Err(code) => return Err(code),
        }
    }
    let key = signing_key(config)?;
    let (client, runtime) = match gateway {
        Some(gateway) => gateway,
        None => connect(config)?,
    };
    let sub = &plan.subscription;
    let limits = &sub.terms.limits;
    let (Some(min_amount), Some(max_amount), Some(period_days), Some(max_date)) = (
        limits.min_amount,
        limits.max_amount,
        limits.period_days,
        limits.max_date,
    ) else {
        // `check_values` built the subscription with all four limits.
        eprintln!("recurrentd: internal error: a limit went missing after validation");
        return Err(exit::INTERNAL);
    };
    let attempt = EnrolmentAttempt {
        order_number: plan.order_number.clone(),
        subscription_id: sub.id.clone(),
        state: EnrolmentState::Pending,
        customer: args.customer.clone(),
        amount: sub.terms.amount,
        currency: sub.currency,
        cadence: sub.terms.every.to_string(),
        start: plan.start,
        min_amount,
        max_amount,
        period_days,
        max_date,
        created_at: Utc::now(),
        seen: false,
        bill_number: None,
        reason: None,
    };
    // Durable before the request leaves: a rerun after a crash or an unknown outcome finds it
    // and looks the order up instead of paying again.
    if let Err(error) = store.record_pending_enrolment(&attempt) {
        eprintln!(
            "recurrentd: the enrolment attempt (order {}) could not be recorded before sending: \
             {error}. Not enrolled; nothing was sent",
            attempt.order_number
        );
        return Err(match store.pending_enrolment(&sub.id) {
            // Another run recorded one meanwhile (with another schedule file).
            Ok(Some(_)) => exit::PROBLEMS,
            _ => exit::INTERNAL,
        });
    }
    let request = TokenPayRequest {
        order_number: &attempt.order_number,
        amount: attempt.amount,
        currency: attempt.currency,
        customer: &args.customer,
        token: &args.token,
        limits: RecurringLimits {
            min_amount,
            max_amount,
            period_days,
            max_date,
        },
        comment: Some(&sub.id),
        signing_key: key.as_ref(),
    };
    let reply = runtime.block_on(client.token_pay(&request));
    Ok(conclude(args, &mut store, &attempt, &reply, &plan.target))
}

/// Settles the attempt by the gateway's reply: booked and written when it was paid, closed when
/// it verifiably was not charged, kept pending (for the rerun) otherwise.
fn conclude(
    args: &EnrollArgs,
    store: &mut Store,
    attempt: &EnrolmentAttempt,
    reply: &TokenPayReply,
    target: &Path,
) -> u8 {
    let order = &attempt.order_number;
    let now = Utc::now();
    let closed = match &reply.outcome {
        TokenPayOutcome::Enrolled { bill_number } => {
            return book_and_write(args, store, attempt, bill_number, reply.sent_at, target);
        }
        TokenPayOutcome::NotSent(why) => Some((EnrolmentState::NotSent, why.clone())),
        TokenPayOutcome::Declined(decline) => Some((
            EnrolmentState::Declined,
            format!("declined ({}: {})", decline.code, decline.reason),
        )),
        TokenPayOutcome::Rejected { reason, .. } => {
            Some((EnrolmentState::Rejected, format!("rejected: {reason}")))
        }
        TokenPayOutcome::NeedsCustomer { .. }
        | TokenPayOutcome::Unknown(_)
        | TokenPayOutcome::IntegrityFailure(_) => None,
    };
    let recorded = match closed {
        Some((state, reason)) => store
            .close_enrolment(order, state, &reason, now)
            .map(|_| ()),
        None => {
            let seen = reply.seen || matches!(reply.outcome, TokenPayOutcome::NeedsCustomer { .. });
            store.keep_enrolment_pending(order, seen, &reply.outcome.to_string(), now)
        }
    };
    if let Err(error) = recorded {
        // The attempt stays pending: a rerun looks the order up, which is safe either way.
        eprintln!("recurrentd: warning: the attempt's outcome could not be recorded: {error}");
    }
    failed(args, order, reply)
}

/// Books a verified approval and appends the subscription to the schedule file. The enrolment
/// is recorded before the file is written: the money was taken whether or not the file can be
/// written, and the period limit counts from it.
fn book_and_write(
    args: &EnrollArgs,
    store: &mut Store,
    attempt: &EnrolmentAttempt,
    bill_number: &str,
    paid_at: DateTime<Utc>,
    target: &Path,
) -> u8 {
    let enrolment = Enrolment {
        subscription: attempt.subscription_id.clone(),
        order_number: attempt.order_number.clone(),
        bill_number: bill_number.to_string(),
        amount: attempt.amount,
        currency: attempt.currency,
        at: paid_at,
    };
    let recorded = match store.book_enrolment(
        &attempt.order_number,
        bill_number,
        paid_at,
        Utc::now(),
    ) {
        Ok(true) => Ok(()),
        Ok(false) => {
            eprintln!(
                "recurrentd: order {} (APPROVED, billnumber {bill_number}) was settled by another \
                 run of `recurrentd enroll` meanwhile; this run writes nothing (see `recurrentd \
                 history {}`)",
                attempt.order_number, attempt.subscription_id
            );
            return exit::PROBLEMS;
        }
        Err(error) => {
            eprintln!(
                "recurrentd: the initial payment was APPROVED (order {}, bill number \
                 {bill_number}) but could not be recorded in the ledger: {error}",
                attempt.order_number
            );
            Err(exit::INTERNAL)
        }
    };
    // The schedule file is written either way: the customer paid and agreed.
    let code = write_and_print(args.json, &Draft::from_attempt(attempt), target, &enrolment);
    match recorded {
        Err(failed) if code == exit::OK => failed,
        _ => code,
    }
}

/// A rerun's pending attempt, looked up by its verified order status: booked if approved,
/// closed if declined or (after the settle window, never seen) not found, kept otherwise.
/// Nothing is sent again.
fn settle_pending(
    config: &Config,
    args: &EnrollArgs,
    store: &mut Store,
    client: &Client,
    runtime: &tokio::runtime::Runtime,
    pending: &EnrolmentAttempt,
    target: &Path,
) -> Rerun {
    let order = &pending.order_number;
    let sent = pending
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    eprintln!(
        "recurrentd: subscription {} has a pending enrolment: order {order}, sent at {sent}, \
         outcome not known yet{}. Looking it up at the gateway first; nothing is sent again.",
        pending.subscription_id,
        pending
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let answer = runtime.block_on(client.order_status(&StatusQuery {
        order_number: order,
        amount: pending.amount,
        currency: pending.currency,
        sent_at: pending.created_at,
        known_test_mode: None,
    }));
    let now = Utc::now();
    let verified = answer.verified;
    let keep = |store: &mut Store, seen: bool, why: &str| {
        if let Err(error) = store.keep_enrolment_pending(order, seen, why, now) {
            eprintln!("recurrentd: warning: {error}");
        }
    };
    let still_open = |message: String| {
        let message = format!(
            "{message} Nothing was sent; order {order} stays a pending enrolment. Do not enroll \
             again with another id or order number (that could charge the customer twice): run \
             this same command again later."
        );
        report_failure(args, "unknown", order, None, None, &message);
        Rerun::Done(exit::UNAVAILABLE)
    };
    let close = |store: &mut Store, state: EnrolmentState, reason: &str| match store
        .close_enrolment(order, state, reason, now)
    {
        Ok(true) => {
            eprintln!(
                "recurrentd: order {order}: {reason}; nothing was charged. A new attempt may be \
                 made."
            );
            Rerun::Cleared
        }
        Ok(false) => {
            eprintln!(
                "recurrentd: order {order} was settled by another run of `recurrentd enroll` \
                 meanwhile; run this command again"
            );
            Rerun::Done(exit::PROBLEMS)
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            Rerun::Done(exit::INTERNAL)
        }
    };
    match verified.outcome {
        Outcome::Approved => match agreement_bill_number(verified.bill_number.as_deref()) {
            Ok(bill_number) => {
                eprintln!(
                    "recurrentd: order {order} is APPROVED (verified): enrolling {} with the \
                     terms that attempt was sent with.",
                    pending.subscription_id
                );
                Rerun::Done(book_and_write(
                    args,
                    store,
                    pending,
                    &bill_number,
                    pending.created_at,
                    target,
                ))
            }
            Err(problem) => {
                keep(store, true, &problem);
                still_open(format!("order {order} answered approved, but {problem}."))
            }
        },
        Outcome::Declined(decline) => close(
            store,
            EnrolmentState::Declined,
            &format!("declined ({}: {})", decline.code, decline.reason),
        ),
        Outcome::NotFound if pending.seen => {
            keep(store, true, "not found after the gateway had shown it");
            still_open(format!(
                "the gateway showed order {order} before but does not find it now: it may have \
                 been charged. Look it up in the gateway's back office; if it is Approved, add \
                 the subscription by hand with its billnumber."
            ))
        }
        Outcome::NotFound => {
            let settle = Duration::minutes(i64::from(config.engine.settle_minutes));
            let settled_at = pending.created_at + settle;
            if now < settled_at {
                keep(store, false, "not found yet");
                still_open(format!(
                    "the gateway does not show order {order} yet, which proves nothing so soon \
                     after it was sent (engine.settle_minutes = {}): run again after {}.",
                    config.engine.settle_minutes,
                    settled_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))
            } else {
                close(
                    store,
                    EnrolmentState::NotFound,
                    &format!(
                        "the gateway has no such order {} minutes after it was sent",
                        (now - pending.created_at).num_minutes()
                    ),
                )
            }
        }
        Outcome::Pending => {
            keep(store, true, "In Process at the gateway");
            still_open(format!(
                "order {order} is still In Process at the gateway (the customer may still have \
                 to complete 3-D Secure or enter the CVC on the gateway's page)."
            ))
        }
        Outcome::IntegrityFailure(problem) => {
            keep(store, true, &problem);
            still_open(format!(
                "the gateway's answer about order {order} failed verification ({problem}); \
                 check gateway.merchant_id, the salt and gateway.test_mode."
            ))
        }
        other => {
            keep(store, false, &other.to_string());
            still_open(format!("order {order} could not be looked up ({other})."))
        }
    }
}

/// The daemon's database, for writing (the daemon has run once: it creates it).
fn open_store(config: &Config) -> Result<Store, Exit> {
    Store::open(&config.database.path, Access::Write).map_err(|error| {
        eprintln!(
            "recurrentd: {error}\nrecurrentd: enrolment needs the daemon's database (set \
             database.path to it, e.g. /var/lib/recurrentd/recurrentd.db under systemd); not \
             enrolled, nothing was sent"
        );
        exit::store(&error)
    })
}

fn store_failed(error: StoreError) -> Exit {
    eprintln!("recurrentd: {error}; not enrolled, nothing was sent");
    exit::store(&error)
}

fn connect(config: &Config) -> Result<(Client, tokio::runtime::Runtime), Exit> {
    Ok((super::tokens::client(config)?, super::runtime()?))
}

/// An exclusive `flock` on the sidecar `.NAME.lock` next to the schedule file `target`, so that
/// two enrolments never write one file at once (nor pay while the other writes). Held until the
/// returned file is dropped; never blocks: a second `enroll` on the same file fails at once. The
/// lock file stays (removing it would let a third run lock a new file beside a held one); the
/// folder scan reads only `*.toml` files, so it never sees it.
fn lock_schedule_file(target: &Path) -> Result<File, Exit> {
    use std::os::unix::fs::OpenOptionsExt;

    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = target.file_name() else {
        eprintln!(
            "recurrentd: --schedule-file: {} names no file; not enrolled, nothing was sent",
            target.display()
        );
        return Err(exit::PROBLEMS);
    };
    let lock = dir.join(format!(".{}.lock", name.to_string_lossy()));
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock)
    };
    // Another operator's lock file may be read-only to us: a read-only descriptor locks too.
    let file = match open(true) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => open(false),
        other => other,
    }
    .map_err(|error| {
        eprintln!(
            "recurrentd: --schedule-file: cannot lock {}: {}: {error}; not enrolled, nothing was \
             sent",
            target.display(),
            lock.display()
        );
        exit::PROBLEMS
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "recurrentd: another `recurrentd enroll` is enrolling into {} right now (it holds \
                 {}); not enrolled, nothing was sent. Run this command again once it has \
                 finished: if it was the same subscription, this finds its payment.",
                target.display(),
                lock.display()
            );
            Err(exit::PROBLEMS)
        }
        Err(std::fs::TryLockError::Error(error)) => {
            eprintln!(
                "recurrentd: --schedule-file: cannot lock {}: {error}; not enrolled, nothing \
                 was sent",
                lock.display()
            );
            Err(exit::PROBLEMS)
        }
    }
}

/// The values checked by the schedule-file rules (no I/O): what is wrong is refused before
/// anything is locked, looked up or sent.
fn check_values(config: &Config, args: &EnrollArgs, now: DateTime<Utc>) -> Result<Checked, Exit> {
    let today = now.with_timezone(&config.billing.timezone).date_naive();
    // The first scheduled charge is one period after the initial payment (today, local time).
    let start = first_charge_date(today, &args.every).unwrap_or(today);
    let mut problems = Vec::new();
    if let Some(order_number) = &args.order_number
        && !valid_order_number(order_number)
    {
        problems.push(format!(
            "--order-number: must be 1 to {MAX_ORDER_NUMBER_LEN} printable ASCII characters \
             without spaces, got {order_number:?}"
        ));
    }
    if args.token.is_empty()
        || args.token.len() > 128
        || !args.token.bytes().all(|b| b.is_ascii_graphic())
    {
        problems.push(format!(
            "--token: must be the card token as `recurrentd tokens list --customer {}` shows it",
            args.customer
        ));
    }
    // The values, by the schedule-file rules (check_terms included), on the block alone.
    let block = subscription_block(&Draft::from_args(args, start), PLACEHOLDER_BILL, None);
    let alone = schedule::parse_text(Path::new("<enroll>"), &block);
    for diagnostic in alone
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
    {
        problems.push(as_flag_problem(diagnostic));
    }
    if let Some(period_days) = Some(args.period_days).filter(|d| (1..=999).contains(d)) {
        let gap = (start - today).num_days();
        if alone.diagnostics.is_empty() && gap < i64::from(period_days) {
            problems.push(format!(
                "--period-days: the first charge ({start}) is only {gap} days after today's \
                 initial payment, fewer than {period_days}"
            ));
        }
    }
    let subscription = alone.subscriptions.into_iter().next();
    match subscription {
        Some(subscription) if problems.is_empty() => Ok(Checked {
            subscription,
            start,
            block,
        }),
        _ => {
            if problems.is_empty() {
                problems.push("the subscription is not valid".to_string());
            }
            for problem in &problems {
                eprintln!("recurrentd: {problem}");
            }
            eprintln!("recurrentd: not enrolled; nothing was sent");
            Err(exit::PROBLEMS)
        }
    }
}

fn valid_order_number(order_number: &str) -> bool {
    !order_number.is_empty()
        && order_number.len() <= MAX_ORDER_NUMBER_LEN
        && order_number.bytes().all(|b| b.is_ascii_graphic())
}

/// Everything else checked before a new attempt: the id unused, its order number (new: never
/// used by an enrolment), the file with the subscription appended.
fn plan(
    config: &Config,
    args: &EnrollArgs,
    store: &Store,
    checked: Checked,
    target: PathBuf,
) -> Result<Plan, Exit> {
    // Ids the database has reserved (current or removed subscriptions, earlier enrolments) are
    // never reused.
    let reserved = store
        .subscription(&args.id)
        .map(|s| s.is_some())
        .and_then(|used| Ok(used || store.enrolment_exists(&args.id)?))
        .map_err(store_failed)?;
    if reserved {
        eprintln!(
            "recurrentd: --id: subscription id {:?} is already known to the database (a current \
             or removed subscription, or an earlier enrolment); ids are never reused, choose \
             another",
            args.id
        );
        return Err(exit::PROBLEMS);
    }
    let order_number = order_number(args, store)?;

    // The id must be unused in the folder, and the target file must stay valid with the
    // subscription added.
    let dir = &config.schedules.dir;
    let report = schedule::load_dir(dir).map_err(|error| {
        eprintln!("recurrentd: {error}");
        exit::PROBLEMS
    })?;
    if let Some(used) = report.subscriptions().find(|s| s.id == args.id) {
        eprintln!(
            "recurrentd: --id: subscription id {:?} is already used at {}; ids are never reused, \
             choose another",
            args.id, used.origin
        );
        return Err(exit::PROBLEMS);
    }
    for file in report.files.iter().filter(|f| f.has_errors()) {
        eprintln!(
            "recurrentd: warning: {} has errors (see `recurrentd check`); ids in it were not \
             checked against {:?}",
            file.path.display(),
            args.id
        );
    }
    if !in_dir(&target, dir) {
        eprintln!(
            "recurrentd: warning: {} is not directly in the schedules folder {}; recurrentd \
             will not read it there",
            target.display(),
            dir.display()
        );
    }
    let existing = read_existing(&target).inspect_err(|message| {
        eprintln!("recurrentd: --schedule-file: {message}");
    });
    let existing = existing.map_err(|_| exit::PROBLEMS)?;
    let content = appended(existing.as_deref(), &checked.block);
    let whole = schedule::parse_text(&target, &content);
    if whole.has_errors() {
        for diagnostic in whole
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            eprintln!("{diagnostic}");
        }
        eprintln!(
            "recurrentd: {} would not be valid with the new subscription appended; fix it or \
             choose another --schedule-file. Not enrolled; nothing was sent",
            target.display()
        );
        return Err(exit::PROBLEMS);
    }
    Ok(Plan {
        subscription: checked.subscription,
        start: checked.start,
        order_number,
        target,
    })
}

/// The new attempt's OrderNumber: `--order-number` if it was never used by an enrolment, else
/// `enrol-<id>` for a subscription's first attempt and `enrol-<id>-<n>` for its n-th (each
/// attempt has its own: one that was declined or never filed is not sent again).
fn order_number(args: &EnrollArgs, store: &Store) -> Result<String, Exit> {
    if let Some(order_number) = &args.order_number {
        return match store
            .enrolment_order_use(order_number)
            .map_err(store_failed)?
        {
            None => Ok(order_number.clone()),
            Some(used) => {
                eprintln!(
                    "recurrentd: --order-number: order {order_number} was already used by an \
                     enrolment attempt of subscription {} ({}); an order number is sent once. \
                     Leave --order-number out (a new one is chosen) or choose another. Not \
                     enrolled; nothing was sent",
                    used.subscription_id,
                    used.state.as_str()
                );
                Err(exit::PROBLEMS)
            }
        };
    }
    let earlier = store
        .enrolment_attempt_count(&args.id)
        .map_err(store_failed)?;
    for n in earlier + 1.. {
        let candidate = if n == 1 {
            format!("enrol-{}", args.id)
        } else {
            format!("enrol-{}-{n}", args.id)
        };
        if store
            .enrolment_order_use(&candidate)
            .map_err(store_failed)?
            .is_none()
        {
            return Ok(candidate);
        }
    }
    eprintln!("recurrentd: no unused order number for {}", args.id);
    Err(exit::INTERNAL)
}

/// `today` plus one cadence, computed as the billing core computes due dates.
fn first_charge_date(today: NaiveDate, every: &str) -> Option<NaiveDate> {
    let terms = Terms {
        amount: Money::from_cents(100)?,
        every: Cadence::parse(every).ok()?,
        start: today,
        state: SubscriptionState::Active,
        catch_up: None,
        limits: Limits::default(),
    };
    billing::due_date(&terms, 1)
}

/// A schedule-file diagnostic about the new subscription, named by the flag that set it.
fn as_flag_problem(diagnostic: &Diagnostic) -> String {
    let flag = match diagnostic.field.as_str() {
        "id" => "--id",
        "customer" => "--customer",
        "currency" => "--currency",
        "amount" => "--amount",
        "every" => "--every",
        "start" => "--max-date",
        "limits.min_amount" => "--min-amount",
        "limits.max_amount" => "--max-amount",
        "limits.period_days" => "--period-days",
        "limits.max_date" => "--max-date",
        other => other,
    };
    format!("{flag}: {}", diagnostic.message)
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The values of a new `[[subscription]]`, as the command line gives them (to be validated) or
/// as an enrolment attempt recorded them (validated, canonical).
struct Draft {
    id: String,
    customer: String,
    currency: String,
    amount: String,
    every: String,
    start: NaiveDate,
    min_amount: String,
    max_amount: String,
    period_days: u32,
    max_date: NaiveDate,
}

impl Draft {
    fn from_args(args: &EnrollArgs, start: NaiveDate) -> Draft {
        Draft {
            id: args.id.clone(),
            customer: args.customer.clone(),
            currency: args.currency.clone(),
            amount: args.amount.clone(),
            every: args.every.clone(),
            start,
            min_amount: args.min_amount.clone(),
            max_amount: args.max_amount.clone(),
            period_days: args.period_days,
            max_date: args.max_date,
        }
    }

    /// What the attempt was sent with: the file says what the customer agreed to.
    fn from_attempt(attempt: &EnrolmentAttempt) -> Draft {
        Draft {
            id: attempt.subscription_id.clone(),
            customer: attempt.customer.clone(),
            currency: attempt.currency.to_string(),
            amount: attempt.amount.to_string(),
            every: attempt.cadence.clone(),
            start: attempt.start,
            min_amount: attempt.min_amount.to_string(),
            max_amount: attempt.max_amount.to_string(),
            period_days: attempt.period_days,
            max_date: attempt.max_date,
        }
    }
}

/// The new `[[subscription]]`, as it is validated and written.
fn subscription_block(draft: &Draft, bill_number: &str, enrolment: Option<&Enrolment>) -> String {
    let comment = match enrolment {
        Some(e) => format!(
            "# Enrolled by `recurrentd enroll` at {}: initial payment {} {} approved, order {}.\n",
            e.at.format("%Y-%m-%dT%H:%M:%SZ"),
            e.amount,
            e.currency,
            e.order_number
        ),
        None => String::new(),
    };
    format!(
        "{comment}[[subscription]]\n\
         id = {}\n\
         customer = {}\n\
         bill_number = {}\n\
         currency = {}\n\
         amount = {}\n\
         every = {}\n\
         start = {}\n\
         \n\
         [subscription.limits]\n\
         min_amount = {}\n\
         max_amount = {}\n\
         period_days = {}\n\
         max_date = {}\n",
        quoted(&draft.id),
        quoted(&draft.customer),
        quoted(bill_number),
        quoted(&draft.currency),
        quoted(&draft.amount),
        quoted(&draft.every),
        draft.start,
        quoted(&draft.min_amount),
        quoted(&draft.max_amount),
        draft.period_days,
        draft.max_date,
    )
}

/// The existing content plus the block, separated by one blank line.
fn appended(existing: Option<&str>, block: &str) -> String {
    match existing {
        None | Some("") => block.to_string(),
        Some(text) if text.ends_with('\n') => format!("{text}\n{block}"),
        Some(text) => format!("{text}\n\n{block}"),
    }
}

/// Whether `path` sits directly in `dir` (both resolved as far as they exist).
fn in_dir(path: &Path, dir: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The target's text if it exists; a symbolic link or a non-file is refused.
fn read_existing(path: &Path) -> Result<Option<String>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(meta) if !meta.is_file() => Err(format!(
            "{} is not a regular file (symbolic links are refused)",
            path.display()
        )),
        Ok(_) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("cannot read {}: {e}", path.display())),
    }
}

fn signing_key(config: &Config) -> Result<Option<SigningKey>, Exit> {
    if !config.gateway.sign_requests {
        return Ok(None);
    }
    let pem = config::require_secret(&config.gateway, SecretName::PrivateKey).map_err(|error| {
        eprintln!("recurrentd: configuration error: {error}");
        exit::CONFIG
    })?;
    SigningKey::from_pem(&pem).map(Some).map_err(|error| {
        eprintln!("recurrentd: configuration error: {error}");
        exit::CONFIG
    })
}

fn confirm(args: &EnrollArgs, plan: &Plan) -> Result<bool, Exit> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!(
            "recurrentd: refusing to charge a customer without a terminal to confirm; add --yes"
        );
        return Err(exit::USAGE);
    }
    let sub = &plan.subscription;
    eprint!(
        "Charge {} {} now to customer {}'s card {} (order {}) as the initial payment of \
         subscription {}, then {} {} every {} from {} until {}? [y/N] ",
        sub.terms.amount,
        sub.currency,
        args.customer,
        args.token,
        plan.order_number,
        sub.id,
        sub.terms.amount,
        sub.currency,
        sub.terms.every,
        plan.start,
        args.max_date
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        return Ok(false);
    }
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Appends the subscription to the target file atomically, and prints it.
fn write_and_print(json: bool, draft: &Draft, target: &Path, enrolment: &Enrolment) -> u8 {
    let block = subscription_block(draft, &enrolment.bill_number, Some(enrolment));
    let written = (|| -> Result<(), String> {
        // Read again: the file may have changed while the payment was made.
        let existing = read_existing(target)?;
        let content = appended(existing.as_deref(), &block);
        let report = schedule::parse_text(target, &content);
        if report.has_errors() {
            let first = report
                .diagnostics
                .iter()
                .find(|d| d.severity == Severity::Error)
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(format!(
                "{} would not be valid with the subscription appended ({first})",
                target.display()
            ));
        }
        let permissions = std::fs::metadata(target).ok().map(|m| m.permissions());
        write_atomic(target, &content, permissions)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))
    })();
    if let Err(problem) = written {
        eprintln!(
            "recurrentd: the initial payment was APPROVED (order {}, billnumber {}), but the \
             schedule file was not written: {problem}",
            enrolment.order_number, enrolment.bill_number
        );
        eprintln!(
            "recurrentd: do not enroll again (that would charge the customer again); add this \
             subscription to a schedule file by hand:"
        );
        println!("{block}");
        return exit::INTERNAL;
    }
    let printed = (|| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            let value = json!({
                "status": "enrolled",
                "enrolment": enrolment,
                "schedule_file": target,
                "subscription": block,
            });
            serde_json::to_writer_pretty(&mut out, &value)?;
            return writeln!(out);
        }
        writeln!(
            out,
            "Enrolled {}: initial payment {} {} approved (order {}, billnumber {}).",
            enrolment.subscription,
            enrolment.amount,
            enrolment.currency,
            enrolment.order_number,
            enrolment.bill_number
        )?;
        writeln!(out, "Appended to {}:\n", target.display())?;
        write!(out, "{block}")
    })();
    match printed {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("recurrentd: cannot write: {e}");
            exit::INTERNAL
        }
    }
}

/// Writes `content` to a temporary file in the same folder, syncs it, renames it over `path`
/// and syncs the folder: readers see the old file or the new one, never a part.
fn write_atomic(
    path: &Path,
    content: &str,
    permissions: Option<Permissions>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    // Hidden, so a schedules-folder scan never reads it half-written.
    let temporary = dir.join(format!(
        ".{}.enroll-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        // A new schedule file is world-readable (0644) whatever the umask: the daemon may run as
        // another user (systemd's DynamicUser) and must read it. Schedule files hold no secrets.
        let permissions = permissions.unwrap_or_else(|| {
            use std::os::unix::fs::PermissionsExt;
            Permissions::from_mode(0o644)
        });
        file.set_permissions(permissions)?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Reports a payment that did not enrol: what happened, what to do, the exit code. A decline or
/// a refusal of the request reaches here only verified (an order record with its check value),
/// or confirmed by the order's status (a fault reply carries none: see `Client::token_pay`).
fn failed(args: &EnrollArgs, order: &str, reply: &TokenPayReply) -> u8 {
    let nothing = "Nothing was enrolled and no schedule file was written.";
    let pending = format!(
        "Order {order} is kept as a pending enrolment: run this same command again later; it \
         looks the order up first (it never sends it again), enrols the subscription if the \
         payment was approved, and makes a new attempt only once the gateway shows that nothing \
         was charged."
    );
    let (status, code, message, continue_url) = match &reply.outcome {
        TokenPayOutcome::Enrolled { .. } => ("enrolled", exit::OK, String::new(), None),
        TokenPayOutcome::NeedsCustomer {
            continue_url,
            reason,
        } => (
            "needs_customer",
            exit::PROBLEMS,
            format!(
                "the payment needs the customer: {reason}. {nothing} The customer must complete \
                 it on the gateway's page{}. {pending} Do not enroll again with another id or \
                 order number (that would charge the customer twice).",
                continue_url
                    .as_deref()
                    .map(|url| format!(" {url}"))
                    .unwrap_or_else(|| " (the gateway gave no address)".to_string())
            ),
            continue_url.clone(),
        ),
        TokenPayOutcome::Declined(decline) => {
            let todo = match decline.kind {
                DeclineKind::Hard => "Ask the customer for another card (or to pay interactively).",
                DeclineKind::Soft => {
                    "The customer may try again later; run this command again then (a new order \
                     number is used)."
                }
            };
            let confirmed = if reply.confirmed_by_status {
                "the gateway's order status confirms it"
            } else {
                "the gateway's verified answer says so"
            };
            (
                "declined",
                exit::PROBLEMS,
                format!(
                    "the initial payment was declined ({}: {}); nothing was charged ({confirmed}). \
                     {nothing} {todo}",
                    decline.code, decline.reason
                ),
                None,
            )
        }
        TokenPayOutcome::Rejected { reason, config } => {
            if *config {
                (
                    "rejected",
                    exit::CONFIG,
                    format!(
                        "the gateway refused our credentials or signature: {reason}. {nothing} \
                         Check gateway.merchant_id, gateway.login, the password, and (with \
                         gateway.sign_requests) that the public key of the private key is the \
                         one uploaded to the gateway."
                    ),
                    None,
                )
            } else {
                (
                    "rejected",
                    exit::PROBLEMS,
                    format!(
                        "the gateway refused the request: {reason}. Nothing was charged (the \
                         gateway's order status shows no such order). {nothing} Check the \
                         customer number and the token (`recurrentd tokens list --customer {}`).",
                        args.customer
                    ),
                    None,
                )
            }
        }
        TokenPayOutcome::NotSent(why) => (
            "not_sent",
            exit::UNAVAILABLE,
            format!(
                "the initial payment was not sent: {why}. Nothing was charged. {nothing} It is \
                 safe to run the same command again."
            ),
            None,
        ),
        TokenPayOutcome::Unknown(why) => (
            "unknown",
            exit::UNAVAILABLE,
            format!(
                "the outcome of the initial payment is UNKNOWN: {why}. {nothing} Do not retry \
                 blindly: the customer may have been charged. {pending}"
            ),
            None,
        ),
        TokenPayOutcome::IntegrityFailure(why) => (
            "integrity_failure",
            exit::UNAVAILABLE,
            format!(
                "the gateway's answer failed verification: {why}. {nothing} Treat the payment \
                 as unknown: do not retry blindly; check gateway.merchant_id, the salt and \
                 gateway.test_mode. {pending}"
            ),
            None,
        ),
    };
    report_failure(
        args,
        status,
        order,
        reply.response_code.as_deref(),
        continue_url.as_deref(),
        &message,
    );
    code
}

/// The message on stderr and, with `--json`, the failure object on stdout.
fn report_failure(
    args: &EnrollArgs,
    status: &str,
    order: &str,
    response_code: Option<&str>,
    continue_url: Option<&str>,
    message: &str,
) {
    eprintln!("recurrentd: {message}");
    if args.json {
        let value = json!({
            "status": status,
            "subscription": args.id,
            "order_number": order,
            "response_code": response_code,
            "continue_url": continue_url,
            "message": message,
        });
        println!("{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn the_first_charge_is_one_period_after_today_as_the_core_counts() {
        assert_eq!(
            first_charge_date(date("2027-01-31"), "1 month"),
            Some(date("2027-02-28"))
        );
        assert_eq!(
            first_charge_date(date("2027-01-31"), "2 weeks"),
            Some(date("2027-02-14"))
        );
        assert_eq!(
            first_charge_date(date("2028-02-29"), "1 year"),
            Some(date("2029-02-28"))
        );
        assert_eq!(first_charge_date(date("2027-01-31"), "monthly"), None);
    }

    #[test]
    fn values_are_quoted_so_a_bad_one_is_a_field_error_not_a_syntax_error() {
        assert_eq!(quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        let text = format!("[[subscription]]\nid = {}\n", quoted("x\" = 1\n[evil]"));
        let report = schedule::parse_text(Path::new("t.toml"), &text);
        assert!(
            report.diagnostics.iter().any(|d| d.field == "id"),
            "{:?}",
            report.diagnostics
        );
        assert!(report.diagnostics.iter().all(|d| d.field != "toml"));
    }

    #[test]
    fn appending_keeps_one_blank_line_between_tables() {
        assert_eq!(appended(None, "B\n"), "B\n");
        assert_eq!(appended(Some("A\n"), "B\n"), "A\n\nB\n");
        assert_eq!(appended(Some("A"), "B\n"), "A\n\nB\n");
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "old\n").unwrap();
        let permissions = std::fs::metadata(&path).unwrap().permissions();
        write_atomic(&path, "new\n", Some(permissions)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.toml"]);
        // A folder that does not exist: an error, nothing half-written anywhere.
        assert!(write_atomic(&dir.path().join("no/s.toml"), "x", None).is_err());
    }
}
