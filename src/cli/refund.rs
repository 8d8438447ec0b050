//! `recurrentd refund`: give back the whole or part of an approved charge through the gateway's
//! cancel service (wscancel.cfm).
//!
//! Order of work, so that no refund is sent twice and none is booked that did not happen:
//! 1. one refund command at a time per database (`flock` on `<db>.refund.lock`, non-blocking: a
//!    second one fails at once);
//! 2. the order must be an attempt of this database that is approved (verified, or attested by
//!    `resolve --paid`); anything else is refused before anything is sent;
//! 3. a refund of it still pending (an earlier run crashed, or its outcome was unknown) is looked
//!    up first — the order's verified result, never the request again: shown refunded, it is
//!    completed; verifiably not applied (refused, or not shown `engine.settle_minutes` after it
//!    was sent), it is failed and a new request may be made; anything else: the command ends
//!    and the refund stays pending;
//! 4. the same command run again after its refund completed (same order, same reason, and the
//!    same --amount if one was given) reports that refund and sends nothing;
//! 5. the amount (default: what remains) must be no more than what remains once completed
//!    refunds are counted, and the gateway's verified view of the order (its state and refund
//!    operations) must agree with the ledger before anything is sent;
//! 6. the refund is recorded pending with a `refund_requested` ledger event, then sent; the reply
//!    is only a claim: the outcome is what the order's verified result shows afterwards.
//!
//! A refund changes neither the attempt (approved) nor its period (paid), nor any limit: a
//! refunded charge still counts as a charge for the period and amount limits.

use std::fs::{File, OpenOptions};
use std::path::Path;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use clap::Args;
use serde_json::json;

use super::exit;
use super::ops::{open, operator};
use crate::config::Config;
use crate::gateway::client::{CancelRequest, Client, StatusAnswer, StatusQuery};
use crate::gateway::outcome::{Outcome, StateClass};
use crate::gateway::reply::Reversals;
use crate::money::Money;
use crate::store::{
    Access, AttemptState, Recorded, Refund, RefundState, RefundTarget, Store, StoreError,
};

/// Longest `--reason`.
const MAX_REASON: usize = 200;

#[derive(Debug, Args)]
pub struct RefundArgs {
    /// The OrderNumber of the approved charge (as `history` shows it).
    #[arg(value_name = "ORDER_NUMBER")]
    pub order_number: String,

    /// Refund only this much (e.g. 50.00); default: all that remains of the charge.
    #[arg(long, value_parser = parse_amount)]
    pub amount: Option<Money>,

    /// Why (kept in the ledger and sent as CancelReason); required.
    #[arg(long)]
    pub reason: String,

    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

fn parse_amount(text: &str) -> Result<Money, String> {
    Money::parse(text).map_err(|e| e.to_string())
}

/// What the gateway's verified view of the order says about one refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Look {
    /// Refunded by this refund's amount on top of the ledger's completed refunds.
    Applied,
    /// Shows exactly the ledger's completed refunds: this one is not (or not yet) applied.
    NotApplied,
    /// A refund operation is still in process at the gateway.
    InProcess,
    /// The gateway shows something the ledger cannot explain: an operator must look.
    Mismatch(String),
    /// No verified answer (not found, a failed query, a check value that does not verify).
    NoAnswer(String),
}

/// Whether an order state fits `refunded_cents` of `charge_cents` refunded.
fn state_fits(reversals: &Reversals, refunded_cents: i64, charge_cents: i64) -> bool {
    match reversals.state() {
        StateClass::Paid => refunded_cents == 0,
        StateClass::Reversed => refunded_cents == charge_cents,
        _ => {
            reversals
                .order_state
                .eq_ignore_ascii_case("PartialCanceled")
                && refunded_cents > 0
                && refunded_cents < charge_cents
        }
    }
}

/// Reads the verified order result against the ledger: `done_cents` refunded (completed) before
/// this refund of `amount_cents`, of a charge of `charge_cents`.
pub(crate) fn look(
    answer: &StatusAnswer,
    done_cents: i64,
    amount_cents: i64,
    charge_cents: i64,
) -> Look {
    let verified = &answer.verified;
    if !verified.checkvalue_verified {
        return Look::NoAnswer(verified.outcome.to_string());
    }
    let Some(r) = verified.reversals.as_ref() else {
        return Look::Mismatch(format!(
            "the gateway shows {} orders under this order number",
            verified.approved_orders.max(2)
        ));
    };
    if r.in_process > 0 {
        return Look::InProcess;
    }
    if r.unreadable > 0 {
        return Look::Mismatch(format!(
            "{} refund operation(s) at the gateway could not be read",
            r.unreadable
        ));
    }
    let after = done_cents + amount_cents;
    if !r.listed {
        // No operations listed: the verified state alone, where it is conclusive.
        if after == charge_cents && r.state() == StateClass::Reversed {
            return Look::Applied;
        }
        if done_cents == 0 && r.state() == StateClass::Paid {
            return Look::NotApplied;
        }
        return Look::Mismatch(format!(
            "order state {:?} and no operations listed",
            r.order_state
        ));
    }
    if r.refunded_cents == after && state_fits(r, after, charge_cents) {
        return Look::Applied;
    }
    if r.refunded_cents == done_cents && state_fits(r, done_cents, charge_cents) {
        return Look::NotApplied;
    }
    Look::Mismatch(format!(
        "the gateway shows {} refunded (order state {:?}) where the ledger has {} refunded \
         before this refund",
        cents_text(r.refunded_cents),
        r.order_state,
        cents_text(done_cents)
    ))
}

/// What becomes of a pending refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Completed(String),
    /// Verifiably not refunded: closed, a new request may be made.
    Failed(String),
    /// Still pending (unknown): exit 69.
    Pending(String),
    /// Still pending, and the gateway shows what the ledger cannot explain: exit 1.
    Attention(String),
}

/// Settles a refund by what the gateway verifiably shows (`look`) and, right after sending,
/// what its reply claimed (`claim`; `None` when a rerun looks it up). Only a verified "applied"
/// completes it; only a verified "not applied" fails it — at once when the reply refused it,
/// else once `settle` has passed since it was sent (the gateway may not show it yet).
pub(crate) fn judge(
    look: &Look,
    claim: Option<&Outcome>,
    sent_at: DateTime<Utc>,
    now: DateTime<Utc>,
    settle: Duration,
) -> Verdict {
    match look {
        Look::Applied => Verdict::Completed("the order's verified result shows it".into()),
        Look::NotApplied => match claim {
            Some(Outcome::Declined(decline)) => Verdict::Failed(format!(
                "refused by the gateway ({}: {}); the order shows no refund",
                decline.code, decline.reason
            )),
            Some(Outcome::Rejected(why)) => Verdict::Failed(format!(
                "refused by the gateway ({why}); the order shows no refund"
            )),
            _ if now >= sent_at + settle => Verdict::Failed(format!(
                "the order shows no refund {} minutes after it was sent",
                (now - sent_at).num_minutes()
            )),
            _ => Verdict::Pending(format!(
                "the order does not show it yet, which proves nothing so soon after it was sent; \
                 run the same command again after {}",
                rfc3339(sent_at + settle)
            )),
        },
        Look::InProcess => Verdict::Pending("a refund is still in process at the gateway".into()),
        Look::Mismatch(why) => Verdict::Attention(why.clone()),
        Look::NoAnswer(why) => Verdict::Pending(format!("the order could not be looked up: {why}")),
    }
}

/// Reports a refund refused or left undone before one was recorded or sent: the message on
/// stderr and, with --json, `{status, order_number, message}` on stdout. Returns `code`.
fn refused(args: &RefundArgs, code: u8, message: String) -> u8 {
    eprintln!("recurrentd: {message}");
    if args.json {
        let status = if code == exit::UNAVAILABLE {
            "unknown"
        } else {
            "refused"
        };
        println!(
            "{}",
            json!({
                "status": status,
                "order_number": args.order_number,
                "message": message,
            })
        );
    }
    code
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn cents_text(cents: i64) -> String {
    Money::from_cents(cents).map_or_else(|| "0.00".to_string(), |m| m.to_string())
}

pub fn run(config: &Config, args: &RefundArgs) -> u8 {
    match refund(config, args) {
        Ok(code) | Err(code) => code,
    }
}

/// The command's report, printed once.
struct Report<'a> {
    args: &'a RefundArgs,
    target: &'a RefundTarget,
}

impl Report<'_> {
    /// Prints the outcome of `refund` (status: completed, exists, failed, pending, attention)
    /// with the charge's refunded total, and returns `code`.
    fn print(&self, store: &Store, status: &str, refund: &Refund, detail: &str, code: u8) -> u8 {
        let refunds = store.refunds_of(self.target.attempt_id).unwrap_or_default();
        let done: i64 = refunds
            .iter()
            .filter(|r| r.state == RefundState::Completed)
            .map(|r| r.amount.cents())
            .sum();
        let remaining = self.target.amount.cents() - done;
        if self.args.json {
            let value = json!({
                "status": status,
                "refund": refund.reference,
                "order_number": self.target.order_number,
                "subscription": self.target.subscription_id,
                "period": self.target.purpose,
                "amount": refund.amount.to_string(),
                "currency": refund.currency.as_str(),
                "state": refund_state_now(&refunds, &refund.reference),
                "reason": refund.reason,
                "charged": self.target.amount.to_string(),
                "refunded": cents_text(done),
                "remaining": cents_text(remaining),
                "requested_at": rfc3339(refund.created_at),
                "detail": detail,
            });
            println!("{value}");
        } else {
            let line = match status {
                "completed" => format!(
                    "Refunded {} {} of order {} ({}): {detail}.",
                    refund.amount, refund.currency, self.target.order_number, refund.reference
                ),
                "exists" => format!(
                    "Already refunded: {} {} of order {} ({}, requested {}); nothing was sent.",
                    refund.amount,
                    refund.currency,
                    self.target.order_number,
                    refund.reference,
                    rfc3339(refund.created_at)
                ),
                "failed" => format!(
                    "Not refunded: {} {} of order {} ({}): {detail}.",
                    refund.amount, refund.currency, self.target.order_number, refund.reference
                ),
                _ => format!(
                    "Refund {} of {} {} of order {} is still pending: {detail}. Do not refund \
                     it another way: run this same command again later; it looks the refund up \
                     and never sends it twice.",
                    refund.reference, refund.amount, refund.currency, self.target.order_number
                ),
            };
            if code == exit::OK {
                println!("{line}");
                println!(
                    "Charged {} {}, refunded {} in all, {} remains. The charge stays counted for \
                     the subscription's limits.",
                    self.target.amount,
                    self.target.currency,
                    cents_text(done),
                    cents_text(remaining)
                );
            } else {
                eprintln!("recurrentd: {line}");
            }
        }
        code
    }
}

fn refund_state_now(refunds: &[Refund], reference: &str) -> &'static str {
    refunds
        .iter()
        .find(|r| r.reference == reference)
        .map_or("unknown", |r| r.state.as_str())
}

fn refund(config: &Config, args: &RefundArgs) -> Result<u8, u8> {
    let reason = args.reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON
        || reason.chars().any(char::is_control)
    {
        return Err(refused(
            args,
            exit::USAGE,
            format!(
                "--reason must be 1 to {MAX_REASON} characters on one line; nothing was \
             sent"
            ),
        ));
    }
    let _lock = lock(&config.database.path)?;
    let mut store = open(config, Access::Write)?;
    let order = args.order_number.as_str();
    let Some(target) = store.refund_target(order).map_err(store_failed)? else {
        let prefix = store.order_prefix().unwrap_or_default();
        let message = if prefix.is_empty() || !order.starts_with(&prefix) {
            format!(
                "order {order} is not an order of this database (its order numbers start with \
                 {prefix}); only our own charges can be refunded here. Nothing was sent"
            )
        } else {
            format!(
                "no charge attempt has order number {order} (an enrolment's initial payment is \
                 not refunded by this command); nothing was sent"
            )
        };
        return Err(refused(args, exit::PROBLEMS, message));
    };
    if target.state != AttemptState::Approved {
        return Err(refused(
            args,
            exit::PROBLEMS,
            format!(
                "order {order} is {}: only an approved charge can be refunded; nothing was sent",
                target.state
            ),
        ));
    }
    let report = Report {
        args,
        target: &target,
    };
    let (client, runtime) = connect(config)?;
    let window = Duration::minutes(i64::from(config.engine.settle_minutes));
    let query = StatusQuery {
        order_number: &target.order_number,
        amount: target.amount,
        currency: target.currency,
        sent_at: target.wall_at,
        known_test_mode: None,
    };
    let charge_cents = target.amount.cents();

    // 3. A pending refund (an earlier run) is looked up first, never sent again.
    let refunds = store.refunds_of(target.attempt_id).map_err(store_failed)?;
    let done_cents = completed_cents(&refunds);
    if let Some(pending) = refunds.iter().find(|r| r.state == RefundState::Pending) {
        eprintln!(
            "recurrentd: refund {} ({} {}) of order {order} is pending since {}; looking it up at \
             the gateway first, nothing is sent again.",
            pending.reference,
            pending.amount,
            pending.currency,
            rfc3339(pending.created_at)
        );
        let answer = runtime.block_on(client.order_result(&query));
        let seen = look(&answer, done_cents, pending.amount.cents(), charge_cents);
        let verdict = judge(&seen, None, pending.created_at, Utc::now(), window);
        if let Some(code) = settle(&mut store, &report, pending, &verdict, true)? {
            let same = pending.reason == reason && args.amount.is_none_or(|a| a == pending.amount);
            if !same {
                eprintln!(
                    "recurrentd: this command's own refund was not sent while refund {} was \
                     pending: run it again.",
                    pending.reference
                );
            }
            return Ok(code);
        }
    }

    // 4. The same command again after its refund completed: report it, send nothing.
    let refunds = store.refunds_of(target.attempt_id).map_err(store_failed)?;
    let done_cents = completed_cents(&refunds);
    if let Some(done) = refunds.iter().rev().find(|r| {
        r.state == RefundState::Completed
            && r.reason == reason
            && args.amount.is_none_or(|a| a == r.amount)
    }) {
        return Ok(report.print(&store, "exists", done, "already refunded", exit::OK));
    }

    // 5. Never more than remains.
    let remaining = charge_cents - done_cents;
    let Some(left) = Money::from_cents(remaining) else {
        return Err(refused(
            args,
            exit::PROBLEMS,
            format!(
                "order {order} is refunded in full already ({} {}); nothing was sent",
                target.amount, target.currency
            ),
        ));
    };
    let amount = args.amount.unwrap_or(left);
    if amount > left {
        return Err(refused(
            args,
            exit::PROBLEMS,
            format!(
                "--amount {amount} is more than remains of order {order}: {left} {} \
             (charged {}, refunded {}); nothing was sent",
                target.currency,
                target.amount,
                cents_text(done_cents)
            ),
        ));
    }
    // The gateway must see the order as the ledger does before anything is sent.
    let answer = runtime.block_on(client.order_result(&query));
    match look(&answer, done_cents, amount.cents(), charge_cents) {
        Look::NotApplied => {}
        Look::NoAnswer(why) => {
            return Err(refused(
                args,
                exit::UNAVAILABLE,
                format!(
                    "order {order} could not be looked up before refunding ({why}); \
                 nothing was sent"
                ),
            ));
        }
        Look::InProcess => {
            return Err(refused(
                args,
                exit::UNAVAILABLE,
                format!(
                    "a refund of order {order} is in process at the gateway; nothing was \
                 sent. Run this command again later."
                ),
            ));
        }
        other => {
            let why = match other {
                Look::Mismatch(why) => why,
                _ => "the gateway already shows this refund".to_string(),
            };
            return Err(refused(
                args,
                exit::PROBLEMS,
                format!(
                    "order {order}: {why}; an operator must check it in the gateway's \
                 back office. Nothing was sent"
                ),
            ));
        }
    }
    let Some(bill_number) = answer
        .verified
        .reversals
        .as_ref()
        .and_then(|r| r.payment_bill_number.clone())
    else {
        return Err(refused(
            args,
            exit::UNAVAILABLE,
            format!(
                "the gateway's result for order {order} carries no billnumber to cancel; \
             nothing was sent"
            ),
        ));
    };

    // 6. Durable before the request leaves.
    let by = operator();
    let recorded = store
        .record_pending_refund(&target, amount, reason, &by, &bill_number, Utc::now())
        .map_err(store_failed)?;
    let pending = match recorded {
        Recorded::Pending(refund) => refund,
        Recorded::NotApproved(state) => {
            return Err(refused(
                args,
                exit::PROBLEMS,
                format!("order {order} is {state} now; nothing was sent"),
            ));
        }
        Recorded::BeyondRemaining { remaining_cents } => {
            return Err(refused(
                args,
                exit::PROBLEMS,
                format!(
                    "only {} remains of order {order}; nothing was sent",
                    cents_text(remaining_cents)
                ),
            ));
        }
        Recorded::OtherPending(reference) => {
            return Err(refused(
                args,
                exit::PROBLEMS,
                format!(
                    "refund {reference} of order {order} is pending; run this command \
                 again to look it up. Nothing was sent"
                ),
            ));
        }
    };
    let reply = runtime.block_on(client.cancel(&CancelRequest {
        order_number: &target.order_number,
        bill_number: &bill_number,
        order_amount: target.amount,
        amount,
        currency: target.currency,
        reason,
    }));
    let verdict = if let Outcome::NotSent(why) = &reply.claim {
        Verdict::Failed(format!("never sent ({why})"))
    } else {
        let answer = runtime.block_on(client.order_result(&query));
        let seen = look(&answer, done_cents, amount.cents(), charge_cents);
        judge(
            &seen,
            Some(&reply.claim),
            pending.created_at,
            Utc::now(),
            window,
        )
    };
    Ok(settle(&mut store, &report, &pending, &verdict, false)?.unwrap_or(exit::PROBLEMS))
}

/// Writes a verdict on a pending refund and reports it: `Some(exit code)` when the command ends
/// here, `None` when a rerun's pending refund failed verifiably (a new request may be made: the
/// command goes on).
fn settle(
    store: &mut Store,
    report: &Report<'_>,
    refund: &Refund,
    verdict: &Verdict,
    rerun: bool,
) -> Result<Option<u8>, u8> {
    let now = Utc::now();
    let (state, detail, status, code) = match verdict {
        Verdict::Completed(d) => (RefundState::Completed, d, "completed", exit::OK),
        Verdict::Failed(d) => (RefundState::Failed, d, "failed", exit::PROBLEMS),
        Verdict::Pending(d) => (RefundState::Pending, d, "pending", exit::UNAVAILABLE),
        Verdict::Attention(d) => (RefundState::Pending, d, "attention", exit::PROBLEMS),
    };
    match store.settle_refund(&refund.reference, state, detail, now) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "recurrentd: refund {} was settled by another run meanwhile; run this command \
                 again to see it",
                refund.reference
            );
            return Err(exit::PROBLEMS);
        }
        Err(error) => return Err(settle_failed(&refund.reference, error)),
    }
    if rerun && state == RefundState::Failed {
        eprintln!(
            "recurrentd: refund {} was not applied: {detail}. A new request may be made.",
            refund.reference
        );
        return Ok(None);
    }
    Ok(Some(report.print(store, status, refund, detail, code)))
}

fn completed_cents(refunds: &[Refund]) -> i64 {
    refunds
        .iter()
        .filter(|r| r.state == RefundState::Completed)
        .map(|r| r.amount.cents())
        .sum()
}

/// A store error before a request of this run left: nothing was sent. The exit code is the
/// store's (`exit::store`): 69 is the gateway's alone.
fn store_failed(error: StoreError) -> u8 {
    eprintln!("recurrentd: {error}; nothing was sent");
    exit::store(&error)
}

/// A store error while settling a refund whose request has left (this run's or an earlier
/// one's): the outcome is not recorded, the refund stays pending, and a rerun looks it up.
fn settle_failed(reference: &str, error: StoreError) -> u8 {
    eprintln!(
        "recurrentd: {error}; refund {reference} was sent, but its outcome could not be \
         recorded: it stays pending. Do not refund it another way: run this same command again \
         once the database is writable; it looks the refund up and never sends it twice"
    );
    exit::store(&error)
}

fn connect(config: &Config) -> Result<(Client, tokio::runtime::Runtime), u8> {
    Ok((super::tokens::client(config)?, super::runtime()?))
}

/// An exclusive, non-blocking `flock` on `<db>.refund.lock`: one refund command at a time per
/// database, so two runs of the same command never both send. Held until the file is dropped;
/// the OS releases it however the process ends.
fn lock(database: &Path) -> Result<File, u8> {
    use std::os::unix::fs::OpenOptionsExt;

    let mut name = database.as_os_str().to_owned();
    name.push(".refund.lock");
    let path = std::path::PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|error| {
            eprintln!(
                "recurrentd: cannot lock {}: {error}; nothing was sent",
                path.display()
            );
            exit::PROBLEMS
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "recurrentd: another `recurrentd refund` is running on this database (it holds \
                 {}); nothing was sent. Run this command again once it has finished: it finds \
                 that refund and never sends it twice.",
                path.display()
            );
            Err(exit::PROBLEMS)
        }
        Err(std::fs::TryLockError::Error(error)) => {
            eprintln!(
                "recurrentd: cannot lock {}: {error}; nothing was sent",
                path.display()
            );
            Err(exit::PROBLEMS)
        }
    }
}

#[cfg(test)]
mod tests;
