//! `recurrentd enroll`: start a subscription by making its initial recurring payment with a
//! customer's saved card (Token Pay), then append the subscription to a schedule file.
//!
//! Order of work, so that nothing is charged that could not be written afterwards:
//! 1. every value is checked locally with the schedule-file rules (the new `[[subscription]]` is
//!    written as TOML and run through [`schedule::parse_text`], which also applies
//!    [`crate::billing::check_terms`]), the id must be unused in the schedules folder, and the file
//!    with the new subscription appended must still be valid;
//! 2. the operator confirms (unless `--yes`);
//! 3. the gateway is asked (tokenpay.cfm), and its answer verified or confirmed by a status query;
//! 4. only on a verified approval: the enrolment is recorded in the ledger (its instant counts for
//!    the period limit) and the subscription is appended to the schedule file atomically.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::exit;
use crate::billing::{self, Cadence, Limits, SubscriptionState, Terms};
use crate::config::{self, Config, SecretName};
use crate::gateway::client::{
    MAX_ORDER_NUMBER_LEN, RecurringLimits, TokenPayOutcome, TokenPayReply, TokenPayRequest,
};
use crate::gateway::outcome::DeclineKind;
use crate::gateway::signature::SigningKey;
use crate::money::{Currency, Money};
use crate::schedule::{self, Diagnostic, Severity, Subscription};

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
    /// The initial payment's OrderNumber (default: enrol-<id>-<UTC timestamp to the millisecond>).
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
    /// When the initial payment was sent.
    pub at: DateTime<Utc>,
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

pub fn run(config: &Config, args: &EnrollArgs) -> u8 {
    let now = Utc::now();
    let plan = match plan(config, args, now) {
        Ok(plan) => plan,
        Err(code) => return code,
    };
    if !args.yes {
        match confirm(args, &plan) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("recurrentd: not enrolled; nothing was sent");
                return exit::PROBLEMS;
            }
            Err(code) => return code,
        }
    }
    let key = match signing_key(config) {
        Ok(key) => key,
        Err(code) => return code,
    };
    let client = match super::tokens::client(config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let sub = &plan.subscription;
    let limits = &sub.terms.limits;
    let (Some(min_amount), Some(max_amount), Some(period_days), Some(max_date)) = (
        limits.min_amount,
        limits.max_amount,
        limits.period_days,
        limits.max_date,
    ) else {
        // `plan` built the subscription with all four limits.
        eprintln!("recurrentd: internal error: a limit went missing after validation");
        return exit::INTERNAL;
    };
    let request = TokenPayRequest {
        order_number: &plan.order_number,
        amount: sub.terms.amount,
        currency: sub.currency,
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
    let bill_number = match &reply.outcome {
        TokenPayOutcome::Enrolled { bill_number } => bill_number.clone(),
        _ => return failed(args, &plan, &reply),
    };
    let enrolment = Enrolment {
        subscription: sub.id.clone(),
        order_number: plan.order_number.clone(),
        bill_number,
        amount: sub.terms.amount,
        currency: sub.currency,
        at: reply.sent_at,
    };

    // The initial payment goes into the ledger before the schedule file is written: the money
    // was taken whether or not the file can be written, and the period limit counts from it.
    let recorded = record_in_ledger(config, &enrolment, &sub.terms.limits);
    // The schedule file is written either way: the customer paid and agreed.
    let code = write_and_print(args, &plan, &enrolment);
    match recorded {
        Err(failed) if code == exit::OK => failed,
        _ => code,
    }
}

/// Records the enrolment's initial payment in the ledger (the database was found before paying).
/// A failure is reported and makes the command fail: the payment was taken, and the operator must
/// know that the ledger does not show it.
fn record_in_ledger(config: &Config, enrolment: &Enrolment, limits: &Limits) -> Result<(), Exit> {
    crate::store::Store::open(&config.database.path, crate::store::Access::Write)
        .and_then(|mut store| {
            store.record_enrolment(&crate::store::EnrolmentRecord {
                subscription_id: enrolment.subscription.clone(),
                order_number: enrolment.order_number.clone(),
                bill_number: enrolment.bill_number.clone(),
                amount: enrolment.amount,
                currency: enrolment.currency,
                limits: *limits,
                at: enrolment.at,
            })
        })
        .map_err(|error| {
            eprintln!(
                "recurrentd: the initial payment was APPROVED (order {}, bill number {}) but could \
                 not be recorded in the ledger: {error}",
                enrolment.order_number, enrolment.bill_number
            );
            exit::INTERNAL
        })
}

/// Everything checked before the payment: values, id, the file with the subscription appended.
fn plan(config: &Config, args: &EnrollArgs, now: DateTime<Utc>) -> Result<Plan, Exit> {
    let today = now.with_timezone(&config.billing.timezone).date_naive();
    // The first scheduled charge is one period after the initial payment (today, local time).
    let start = first_charge_date(today, &args.every).unwrap_or(today);
    // The default OrderNumber is stable per subscription id: running the same enrolment again
    // (after an interruption or an unknown outcome) reuses it, so the gateway finds the first
    // payment instead of taking a second one. A new attempt after a decline needs an explicit
    // --order-number.
    let order_number = args
        .order_number
        .clone()
        .unwrap_or_else(|| format!("enrol-{}", args.id));
    let mut problems = Vec::new();
    if order_number.is_empty()
        || order_number.len() > MAX_ORDER_NUMBER_LEN
        || !order_number.bytes().all(|b| b.is_ascii_graphic())
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
    let block = subscription_block(args, PLACEHOLDER_BILL, start, None);
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
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("recurrentd: {problem}");
        }
        eprintln!("recurrentd: not enrolled; nothing was sent");
        return Err(exit::PROBLEMS);
    }

    // The id must be unused, and the target file must stay valid with the subscription added.
    let dir = &config.schedules.dir;
    let report = schedule::load_dir(dir).map_err(|error| {
        eprintln!("recurrentd: {error}");
        exit::PROBLEMS
    })?;
    let target = args
        .schedule_file
        .clone()
        .unwrap_or_else(|| dir.join(format!("enrolled-{}.toml", args.id)));
    // The database must exist (the daemon has run once): the payment is recorded there, and ids
    // it has reserved (removed subscriptions, earlier enrolments) are never reused.
    let path = &config.database.path;
    let store =
        crate::store::Store::open(path, crate::store::Access::ReadOnly).map_err(|error| {
            eprintln!(
                "recurrentd: {error}\nrecurrentd: enrolment needs the daemon's database (set \
             database.path to it, e.g. /var/lib/recurrentd/recurrentd.db under systemd); not \
             enrolled, nothing was sent"
            );
            exit::CONFIG
        })?;
    let reserved = store
        .subscription(&args.id)
        .map(|s| s.is_some())
        .and_then(|used| Ok(used || store.enrolment_exists(&args.id)?))
        .map_err(|error| {
            eprintln!("recurrentd: {error}");
            exit::UNAVAILABLE
        })?;
    if reserved {
        eprintln!(
            "recurrentd: --id: subscription id {:?} is already known to the database (a current \
             or removed subscription, or an earlier enrolment); ids are never reused, choose \
             another",
            args.id
        );
        return Err(exit::PROBLEMS);
    }
    drop(store);
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
    let subscription = alone.subscriptions.into_iter().next();
    let content = appended(existing.as_deref(), &block);
    let whole = schedule::parse_text(&target, &content);
    if whole.has_errors() || subscription.is_none() {
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
    let subscription = subscription.ok_or(exit::INTERNAL)?;
    Ok(Plan {
        subscription,
        start,
        order_number,
        target,
    })
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

/// The new `[[subscription]]`, as it is validated and written.
fn subscription_block(
    args: &EnrollArgs,
    bill_number: &str,
    start: NaiveDate,
    enrolment: Option<&Enrolment>,
) -> String {
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
         start = {start}\n\
         \n\
         [subscription.limits]\n\
         min_amount = {}\n\
         max_amount = {}\n\
         period_days = {}\n\
         max_date = {}\n",
        quoted(&args.id),
        quoted(&args.customer),
        quoted(bill_number),
        quoted(&args.currency),
        quoted(&args.amount),
        quoted(&args.every),
        quoted(&args.min_amount),
        quoted(&args.max_amount),
        args.period_days,
        args.max_date,
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
fn write_and_print(args: &EnrollArgs, plan: &Plan, enrolment: &Enrolment) -> u8 {
    let block = subscription_block(args, &enrolment.bill_number, plan.start, Some(enrolment));
    let target = &plan.target;
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
        if args.json {
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

/// Reports a payment that did not enrol: what happened, what to do, the exit code.
fn failed(args: &EnrollArgs, plan: &Plan, reply: &TokenPayReply) -> u8 {
    let order = &plan.order_number;
    let nothing = "Nothing was enrolled and no schedule file was written.";
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
                 it on the gateway's page{}. Afterwards, look up order {order} at the gateway: \
                 if it is Approved, add the subscription with its billnumber by hand; do not \
                 enroll again with a new order number (that would charge the customer twice).",
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
                DeclineKind::Soft => "The customer may try again later; enroll again then.",
            };
            (
                "declined",
                exit::PROBLEMS,
                format!(
                    "the initial payment was declined ({}: {}). {nothing} {todo}",
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
                        "the gateway refused the request: {reason}. Nothing was charged. {nothing} \
                         Check the customer number and the token (`recurrentd tokens list \
                         --customer {}`).",
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
                 blindly: the customer may have been charged. Check order {order} with the \
                 gateway (its back office or order status); if it is Approved, add the \
                 subscription with its billnumber by hand."
            ),
            None,
        ),
        TokenPayOutcome::IntegrityFailure(why) => (
            "integrity_failure",
            exit::UNAVAILABLE,
            format!(
                "the gateway's answer failed verification: {why}. {nothing} Treat the payment \
                 as unknown: do not retry blindly; check order {order} in the gateway's back \
                 office, and check gateway.merchant_id, the salt and gateway.test_mode."
            ),
            None,
        ),
    };
    eprintln!("recurrentd: {message}");
    if args.json {
        let value = json!({
            "status": status,
            "subscription": args.id,
            "order_number": order,
            "response_code": reply.response_code,
            "continue_url": continue_url,
            "message": message,
        });
        println!("{value}");
    }
    code
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
