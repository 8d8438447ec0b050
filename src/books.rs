//! The books sweep (R17): the gateway's own list of the orders it filed in a local day
//! (`Client::results_by_date`, every record's check value verified) compared with the ledger,
//! by OrderNumber under this database's prefix.
//!
//! Findings (ledger kind `books_<kind>`, a `book_findings` row shown by `status`):
//! - `late_booked`: the gateway charged an order whose attempt is still unresolved (pending,
//!   not sent, unknown, parked) or quarantined: booked now as a verified approval, through the
//!   engine's guarded apply (limits and periods stay right), once;
//! - `unbooked_charge`: the gateway charged an order the ledger settled otherwise (declined, not
//!   received, rejected: a late-filed order, a wrong `resolve`): held (`late_approval` flag);
//! - `double_approval`: two approved orders for one period: held (`double_approval` flag);
//! - `amount_mismatch`: amount or currency differ from the attempt's: never booked;
//! - `not_at_gateway`: approved in the ledger, absent or not approved in the books (a refunded
//!   order is not: see `refund_mismatch`);
//! - `refund_mismatch`: approved in the ledger, `Canceled` / `PartialCanceled` in the books, and
//!   the ledger's refunds (`recurrentd refund`) do not account for that state: a refund made
//!   outside recurrentd (the merchant portal, a reversal), or refunds that disagree;
//! - `unknown_order`: an order with our prefix that the ledger does not know;
//! - `integrity`: a record whose check value (or test mode) does not verify: never taken as
//!   paid.
//!
//! A day with no finding is a `books_clean` event. No network call is made with the store
//! locked; every write is its own short transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;

use crate::gateway::client::{BookRecord, BookState, Client};
use crate::gateway::outcome::Outcome;
use crate::store::{
    AttemptChange, AttemptState, BookFinding, ChargeChange, ChargeState, Event, Flag, Job,
    NewFinding, Store, StoreError, event, flag,
};

/// How far beyond the day the books are read to find an order of the ledger's day that the
/// gateway filed a little earlier or later (clocks differ; a send just before midnight).
pub const MARGIN: Duration = Duration::hours(2);

/// The kinds of findings: (kind, ledger kind).
pub mod kind {
    pub const LATE_BOOKED: (&str, &str) = ("late_booked", "books_late_booked");
    pub const UNBOOKED_CHARGE: (&str, &str) = ("unbooked_charge", "books_unbooked_charge");
    pub const DOUBLE_APPROVAL: (&str, &str) = ("double_approval", "books_double_approval");
    pub const AMOUNT_MISMATCH: (&str, &str) = ("amount_mismatch", "books_amount_mismatch");
    pub const NOT_AT_GATEWAY: (&str, &str) = ("not_at_gateway", "books_not_at_gateway");
    pub const REFUND_MISMATCH: (&str, &str) = ("refund_mismatch", "books_refund_mismatch");
    pub const UNKNOWN_ORDER: (&str, &str) = ("unknown_order", "books_unknown_order");
    pub const INTEGRITY: (&str, &str) = ("integrity", "books_integrity");
}

/// Why a books run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    /// The gateway did not give a usable answer: nothing was compared or recorded.
    #[error("the gateway's books could not be read: {0}")]
    Gateway(Outcome),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("a database task failed: {0}")]
    Task(String),
}

/// What a run found (every finding of the date, including earlier runs').
#[derive(Debug, Clone, Serialize)]
pub struct BooksReport {
    pub date: NaiveDate,
    /// The day's window in UTC, RFC 3339.
    pub window_start: String,
    pub window_end: String,
    /// Our orders the gateway listed for the day.
    pub gateway_orders: usize,
    /// Approved attempts of the ledger in the day.
    pub ledger_approved: usize,
    /// Findings new in this run.
    pub new_findings: usize,
    pub findings: Vec<BookFinding>,
}

impl BooksReport {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The UTC window of a local date: `[midnight, next midnight)` in `zone` (a skipped or doubled
/// midnight resolved to the earliest valid instant).
pub fn day_window(date: NaiveDate, zone: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start_of = |d: NaiveDate| -> DateTime<Utc> {
        let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
        match zone.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
                t.with_timezone(&Utc)
            }
            // Midnight skipped by a DST change: the hour after it.
            chrono::LocalResult::None => zone
                .from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
                .map_or_else(|| Utc.from_utc_datetime(&naive), |t| t.with_timezone(&Utc)),
        }
    };
    let next = date.succ_opt().unwrap_or(date);
    (start_of(date), start_of(next))
}

type Db = Arc<Mutex<Store>>;

async fn db<T, F>(store: &Db, f: F) -> Result<T, BooksError>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let mut guard = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| BooksError::Task(e.to_string()))?
    .map_err(BooksError::from)
}

/// One action the comparison decided.
#[derive(Debug, Clone)]
enum Action {
    Record(NewFinding),
    /// Book the attempt as paid (verified by the books), with its finding.
    LateBook(Box<Job>, NewFinding),
}

fn finding(
    (kind, ledger_kind): (&'static str, &'static str),
    order_number: &str,
    job: Option<&Job>,
    detail: serde_json::Value,
) -> NewFinding {
    NewFinding {
        ledger_kind,
        kind,
        order_number: order_number.to_string(),
        subscription_id: job.map(|j| j.subscription_id.clone()),
        charge_id: job.map(|j| j.charge_id),
        detail,
        hold: None,
    }
}

/// A verified paid record for an attempt the ledger settled otherwise (`state`): a possible
/// second charge for its period, held for an operator (`late_approval`).
fn unbooked(number: &str, job: &Job, state: AttemptState, detail: serde_json::Value) -> NewFinding {
    let mut unbooked = finding(kind::UNBOOKED_CHARGE, number, Some(job), detail);
    unbooked.hold = Some(Flag {
        kind: flag::LATE_APPROVAL,
        reason: format!(
            "the gateway's books show {number} ({} {}) APPROVED, but the ledger has it \
             {state}: check for a second charge for the same period, refund it, then resume",
            job.amount, job.currency
        ),
    });
    unbooked
}

fn record_detail(record: &BookRecord) -> serde_json::Value {
    json!({
        "gateway_state": record.state_text,
        "gateway_amount": record.amount_text,
        "gateway_currency": record.currency_text,
        "gateway_bill_number": record.bill_number,
    })
}

/// What the ledger knows of an order's refunds, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Refunded {
    completed: i64,
    pending: i64,
}

/// Whether a verified `Canceled` / `PartialCanceled` record of an order the ledger has approved
/// for `amount_cents` is explained by the ledger's refunds. What the gateway has refunded is
/// either the completed refunds, or those plus the pending one (at most one is pending: its
/// request may or may not have been applied when the books were read, which happens before the
/// ledger is read): the state must fit one of the two. `Canceled`: all of it refunded;
/// `PartialCanceled`: some of it, not all.
fn refunds_explain(state: BookState, refunded: Refunded, amount_cents: i64) -> bool {
    let fits = |cents: i64| match state {
        BookState::Reversed => cents == amount_cents,
        BookState::PartlyReversed => cents > 0 && cents < amount_cents,
        _ => false,
    };
    fits(refunded.completed) || fits(refunded.completed.saturating_add(refunded.pending))
}

/// Minor units as an amount string (`0.00` for none).
fn cents_text(cents: i64) -> String {
    rust_decimal::Decimal::new(cents, 2).to_string()
}

/// Compares the books with the ledger (pure). `day`: our records created in the day; `margin`:
/// ours around it; `attempts`: the ledger's attempts by order number; `enrolment_orders`:
/// order numbers of enrolments' initial payments (not compared); `ledger_approved`: the
/// ledger's approved attempts of the day; `refunds`: the ledger's refunds by order number (an
/// order without any is absent).
fn compare(
    day: &[BookRecord],
    margin: &[BookRecord],
    attempts: &HashMap<String, Job>,
    enrolment_orders: &BTreeSet<String>,
    ledger_approved: &[Job],
    refunds: &HashMap<String, Refunded>,
    test_mode: bool,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut unverified: BTreeSet<&str> = BTreeSet::new();
    // Paid, verified records per charge row (two for one period is a double approval).
    let mut paid_by_charge: BTreeMap<i64, Vec<&BookRecord>> = BTreeMap::new();
    for record in day {
        let number = record.order_number.as_str();
        if !record.verified {
            unverified.insert(number);
            let mut detail = record_detail(record);
            detail["reason"] = json!("checkvalue does not verify with our salt and merchant id");
            actions.push(Action::Record(finding(
                kind::INTEGRITY,
                number,
                attempts.get(number),
                detail,
            )));
            continue;
        }
        if enrolment_orders.contains(number) {
            continue;
        }
        let Some(job) = attempts.get(number) else {
            actions.push(Action::Record(finding(
                kind::UNKNOWN_ORDER,
                number,
                None,
                record_detail(record),
            )));
            continue;
        };
        if record.state != BookState::Paid {
            continue;
        }
        if record
            .test_mode
            .or(job.test_mode)
            .is_some_and(|m| m != test_mode)
        {
            let mut detail = record_detail(record);
            detail["reason"] = json!(format!(
                "the order is in {} mode but gateway.test_mode is {test_mode}",
                if test_mode { "live" } else { "test" }
            ));
            actions.push(Action::Record(finding(
                kind::INTEGRITY,
                number,
                Some(job),
                detail,
            )));
            continue;
        }
        if record.amount != Some(job.amount) || record.currency != Some(job.currency) {
            let mut detail = record_detail(record);
            detail["ledger_amount"] = json!(job.amount.to_string());
            detail["ledger_currency"] = json!(job.currency.as_str());
            detail["ledger_state"] = json!(job.state.as_str());
            actions.push(Action::Record(finding(
                kind::AMOUNT_MISMATCH,
                number,
                Some(job),
                detail,
            )));
            continue;
        }
        paid_by_charge
            .entry(job.charge_id)
            .or_default()
            .push(record);
        let mut detail = record_detail(record);
        detail["ledger_state"] = json!(job.state.as_str());
        match job.state {
            AttemptState::Approved => {}
            state
                if (state.unresolved() || state == AttemptState::Quarantined)
                    && record.test_mode.or(job.test_mode).is_none() =>
            {
                // Paid, but in which mode is not known: the engine would not book that either.
                detail["reason"] = json!(
                    "the books show it paid but carry no test mode, and none is known for the \
                     attempt: not booked; look it up and `resolve` it"
                );
                actions.push(Action::Record(finding(
                    kind::INTEGRITY,
                    number,
                    Some(job),
                    detail,
                )));
            }
            state if state.unresolved() || state == AttemptState::Quarantined => {
                actions.push(Action::LateBook(
                    Box::new(job.clone()),
                    finding(kind::LATE_BOOKED, number, Some(job), detail),
                ));
            }
            state => actions.push(Action::Record(unbooked(number, job, state, detail))),
        }
    }
    // A period charged twice: paid records of other attempts of the same charge row in the
    // margin count too (a retry just after midnight).
    for record in margin.iter().filter(|r| r.paid()) {
        if let Some(job) = attempts.get(&record.order_number)
            && paid_by_charge.contains_key(&job.charge_id)
            && record.amount == Some(job.amount)
        {
            paid_by_charge
                .entry(job.charge_id)
                .or_default()
                .push(record);
        }
    }
    for (charge_id, records) in &paid_by_charge {
        let numbers: BTreeSet<&str> = records.iter().map(|r| r.order_number.as_str()).collect();
        if records.len() < 2 {
            continue;
        }
        let Some(job) = records.iter().find_map(|r| attempts.get(&r.order_number)) else {
            continue;
        };
        let list: Vec<&str> = numbers.iter().copied().collect();
        let key = list.join(",");
        let mut double = finding(
            kind::DOUBLE_APPROVAL,
            &key,
            Some(job),
            json!({
                "charge_id": charge_id,
                "period": job.purpose.period(),
                "orders": list,
                "approved_orders": records.len(),
            }),
        );
        double.hold = Some(Flag {
            kind: flag::DOUBLE_APPROVAL,
            reason: format!(
                "the gateway's books show {} approved orders for one period ({key}): the \
                 customer was charged twice; refund the extra one, then resume",
                records.len()
            ),
        });
        actions.push(Action::Record(double));
    }
    // Approved in the ledger: the books must show it paid (in the day or its margins).
    let mut seen: HashMap<&str, Vec<&BookRecord>> = HashMap::new();
    for record in day.iter().chain(margin) {
        seen.entry(record.order_number.as_str())
            .or_default()
            .push(record);
    }
    for job in ledger_approved {
        let number = job.order_number.as_str();
        if unverified.contains(number) {
            continue;
        }
        let records = seen.get(number).cloned().unwrap_or_default();
        if records.iter().any(|r| r.paid()) {
            continue;
        }
        if records.iter().any(|r| !r.verified) {
            // Its own integrity finding says it (or the margin's record could not be read).
            continue;
        }
        // Refunded at the gateway (a verified record): fine when the ledger's refunds say so.
        if let Some(reversed) = records
            .iter()
            .find(|r| matches!(r.state, BookState::Reversed | BookState::PartlyReversed))
        {
            let refunded = refunds.get(number).copied().unwrap_or_default();
            if refunds_explain(reversed.state, refunded, job.amount.cents()) {
                continue;
            }
            let mut detail = record_detail(reversed);
            detail["ledger_state"] = json!("approved");
            detail["ledger_amount"] = json!(job.amount.to_string());
            detail["ledger_currency"] = json!(job.currency.as_str());
            detail["ledger_refunded"] = json!(cents_text(refunded.completed));
            detail["ledger_refund_pending"] = json!(cents_text(refunded.pending));
            detail["reason"] = json!(if refunded == Refunded::default() {
                "reversed at the gateway but the ledger has no refund: a refund made outside \
                 recurrentd?"
            } else {
                "the ledger's refunds do not match the gateway's state"
            });
            actions.push(Action::Record(finding(
                kind::REFUND_MISMATCH,
                number,
                Some(job),
                detail,
            )));
            continue;
        }
        let states: Vec<&str> = records.iter().map(|r| r.state_text.as_str()).collect();
        actions.push(Action::Record(finding(
            kind::NOT_AT_GATEWAY,
            number,
            Some(job),
            json!({
                "ledger_state": "approved",
                "ledger_amount": job.amount.to_string(),
                "ledger_currency": job.currency.as_str(),
                "gateway_states": states,
                "reason": if states.is_empty() { "absent from the gateway's books" }
                    else { "not approved in the gateway's books" },
            }),
        )));
    }
    actions
}

/// The verified approval a late booking applies (as the engine's `conclude` would).
fn late_change(job: &Job, record: &BookRecord, test_mode: bool, date: NaiveDate) -> AttemptChange {
    let mut change = AttemptChange::to(AttemptState::Approved);
    change.seen = true;
    change.sent = true;
    change.sent_at = job.sent_at.is_none().then_some(job.created_at);
    change.checked = true;
    // Known here (`compare` books nothing else), and equal to ours when the record says it.
    change.test_mode = record.test_mode.or(job.test_mode).or(Some(test_mode));
    change.checkvalue = Some("verified");
    change.charge = Some(ChargeChange {
        state: ChargeState::Paid,
        reason: None,
        next_attempt_at: None,
    });
    change.event = Some(Event {
        kind: event::APPROVED,
        detail: json!({
            "order_number": job.order_number,
            "period": job.purpose.period(),
            "reference": crate::engine::adhoc_reference(&job.purpose),
            "attempt": job.attempt,
            "amount": job.amount.to_string(),
            "currency": job.currency.as_str(),
            "outcome": Outcome::Approved.to_string(),
            "response_code": null,
            "source": "books",
            "books_date": date.to_string(),
            "previous_state": job.state.as_str(),
        }),
    });
    change
}

/// Runs the comparison for a local `date` in `zone` and records it; `now` stamps the ledger.
pub async fn run(
    client: &Client,
    store: Arc<Mutex<Store>>,
    date: NaiveDate,
    zone: Tz,
    now: DateTime<Utc>,
) -> Result<BooksReport, BooksError> {
    let (start, end) = day_window(date, zone);
    let last_minute = end - Duration::minutes(1);
    let prefix = db(&store, |s| s.order_prefix()).await?;
    let ours = format!("{prefix}-");
    let read = |from, to| async move {
        client
            .results_by_date(from, to)
            .await
            .map_err(BooksError::Gateway)
    };
    let keep = |records: Vec<BookRecord>| -> Vec<BookRecord> {
        records
            .into_iter()
            .filter(|r| r.order_number.starts_with(&ours))
            .collect()
    };
    let day = keep(read(start, last_minute).await?);
    let mut margin = keep(read(start - MARGIN, start - Duration::minutes(1)).await?);
    margin.extend(keep(read(end, end + MARGIN - Duration::minutes(1)).await?));
    let numbers: Vec<String> = day
        .iter()
        .chain(&margin)
        .map(|r| r.order_number.clone())
        .collect();
    // Read after the books, so a refund the books show is already in the ledger (recorded
    // pending before its request left).
    let (attempts, enrolment_orders, ledger_approved, refunds) = db(&store, move |s| {
        let mut attempts = HashMap::new();
        let mut enrolments = BTreeSet::new();
        for number in numbers {
            if let Some(job) = s.attempt_by_order_number(&number)? {
                attempts.insert(number, job);
            } else if s.enrolment_order_use(&number)?.is_some() {
                enrolments.insert(number);
            }
        }
        let approved = s.approved_attempts_between(start, end)?;
        let mut refunds = HashMap::new();
        let ours: BTreeSet<&str> = approved
            .iter()
            .map(|j| j.order_number.as_str())
            .chain(attempts.keys().map(String::as_str))
            .collect();
        for number in ours {
            let (completed, pending) = s.refunded_cents(number)?;
            if completed != 0 || pending != 0 {
                refunds.insert(number.to_string(), Refunded { completed, pending });
            }
        }
        Ok((attempts, enrolments, approved, refunds))
    })
    .await?;
    let test_mode = client.test_mode();
    let actions = compare(
        &day,
        &margin,
        &attempts,
        &enrolment_orders,
        &ledger_approved,
        &refunds,
        test_mode,
    );
    let (findings, booked) = act(&store, actions, &day, test_mode, date, now).await?;
    for found in &findings {
        tracing::error!(
            kind = found.kind,
            order_number = %found.order_number,
            subscription = found.subscription_id.as_deref().unwrap_or("-"),
            detail = %found.detail,
            "books: the gateway's books and the ledger disagree"
        );
    }
    let gateway_orders = day.len();
    let recorded = db(&store, move |s| {
        s.record_book_run(date, (start, end), gateway_orders, &findings, now)
    })
    .await?;
    let all = db(&store, move |s| s.book_findings(Some(date))).await?;
    if all.is_empty() {
        tracing::info!(%date, orders = gateway_orders, "books: the gateway's books match the ledger");
    }
    Ok(BooksReport {
        date,
        window_start: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        window_end: end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gateway_orders,
        ledger_approved: ledger_approved.len(),
        new_findings: recorded.new_findings + booked,
        findings: all,
    })
}

/// Carries out the comparison's actions: late bookings now (each its own guarded transaction),
/// the findings to record returned with how many were booked. A late booking that finds its
/// attempt moved meanwhile (the engine or an operator settled it while the books were read) is
/// decided again from the state it moved to: still unsettled, booked from that state; approved,
/// nothing to do; settled otherwise, the verified payment is an `unbooked_charge` held for an
/// operator, as `compare` would have found it — never dropped (this date is not compared again).
async fn act(
    store: &Db,
    actions: Vec<Action>,
    day: &[BookRecord],
    test_mode: bool,
    date: NaiveDate,
    now: DateTime<Utc>,
) -> Result<(Vec<NewFinding>, usize), BooksError> {
    /// Tries at booking one attempt whose state keeps moving between unsettled states.
    const TRIES: usize = 3;
    let mut findings = Vec::new();
    let mut booked = 0;
    for action in actions {
        let (mut job, found) = match action {
            Action::Record(found) => {
                findings.push(found);
                continue;
            }
            Action::LateBook(job, found) => (*job, found),
        };
        let Some(record) = day.iter().find(|r| r.order_number == job.order_number) else {
            continue;
        };
        for tried in 1..=TRIES {
            let mut found = found.clone();
            found.detail["ledger_state"] = json!(job.state.as_str());
            let change = late_change(&job, record, test_mode, date);
            let (attempt_id, expected) = (job.attempt_id, job.state);
            let applied = db(store, move |s| {
                s.book_late_approval(date, attempt_id, expected, &change, &found, now)
            })
            .await?;
            if applied {
                booked += 1;
                tracing::warn!(
                    subscription = %job.subscription_id,
                    order_number = %job.order_number,
                    previous_state = job.state.as_str(),
                    "books: the gateway's books show this order paid; booked as a verified \
                     late approval"
                );
                break;
            }
            let number = job.order_number.clone();
            let current = db(store, move |s| s.attempt_by_order_number(&number)).await?;
            let moved_to = current.as_ref().map(|c| c.state);
            match current {
                Some(current) if current.state == AttemptState::Approved => break,
                Some(current)
                    if tried < TRIES
                        && (current.state.unresolved()
                            || current.state == AttemptState::Quarantined)
                        && record
                            .test_mode
                            .or(current.test_mode)
                            .is_some_and(|m| m == test_mode) =>
                {
                    job = current;
                }
                _ => {
                    let state = moved_to.unwrap_or(job.state);
                    let mut detail = record_detail(record);
                    detail["ledger_state"] = json!(state.as_str());
                    tracing::error!(
                        subscription = %job.subscription_id,
                        order_number = %job.order_number,
                        state = state.as_str(),
                        "books: the gateway's books show this order paid, but the attempt was \
                         settled otherwise while the books were read: held for an operator"
                    );
                    findings.push(unbooked(&job.order_number, &job, state, detail));
                    break;
                }
            }
        }
    }
    Ok((findings, booked))
}

/// The local date the daemon should compare next at `now`, if any: the day before today
/// (in `zone`) once `run_after` local time has passed, unless `last` already covers it.
pub fn due_date(
    now: DateTime<Utc>,
    zone: Tz,
    run_after: chrono::NaiveTime,
    last: Option<NaiveDate>,
) -> Option<NaiveDate> {
    let local = now.with_timezone(&zone);
    let today = local.date_naive();
    let yesterday = today.pred_opt()?;
    if local.time() < run_after {
        return None;
    }
    match last {
        Some(done) if done >= yesterday => None,
        // A restart after a gap: the next day not yet compared (never more than a week back).
        Some(done) => Some(done.succ_opt()?.max(yesterday - Duration::days(6))),
        None => Some(yesterday),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};
    use crate::store::Purpose;

    fn job(order: &str, state: AttemptState, charge_id: i64) -> Job {
        let at = "2026-12-06T10:00:00Z".parse().unwrap();
        Job {
            attempt_id: charge_id * 10,
            charge_id,
            subscription_id: "sub-1".into(),
            purpose: Purpose::Period(3),
            attempt: 1,
            order_number: order.into(),
            bill_number: "5100000000000001".into(),
            amount: Money::parse("100.00").unwrap(),
            currency: Currency::parse("RUB").unwrap(),
            state,
            created_at: at,
            wall_at: at,
            sent: true,
            checks: 0,
            not_found: 0,
            test_mode: Some(true),
            response_code: None,
            sent_at: Some(at),
            seen: false,
            fence: crate::store::UNFENCED,
        }
    }

    fn record(order: &str, state: BookState, verified: bool) -> BookRecord {
        BookRecord {
            order_number: order.into(),
            bill_number: "5100000000000001.2".into(),
            amount: Money::parse("100.00").ok(),
            amount_text: "100.00".into(),
            currency: Currency::parse("RUB").ok(),
            currency_text: "RUB".into(),
            state_text: "Approved".into(),
            state,
            test_mode: Some(true),
            verified,
        }
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Record(f) => f.kind,
                Action::LateBook(_, f) => f.kind,
            })
            .collect()
    }

    #[test]
    fn an_unverified_record_is_never_booked_whatever_the_ledger_says() {
        for state in [
            AttemptState::Unknown,
            AttemptState::Parked,
            AttemptState::Quarantined,
            AttemptState::Declined,
        ] {
            let attempts = HashMap::from([("P-a-3-1".to_string(), job("P-a-3-1", state, 1))]);
            let actions = compare(
                &[record("P-a-3-1", BookState::Paid, false)],
                &[],
                &attempts,
                &BTreeSet::new(),
                &[],
                &HashMap::new(),
                true,
            );
            assert_eq!(kinds(&actions), ["integrity"], "{state:?}");
        }
    }

    #[test]
    fn a_verified_paid_record_books_only_an_unsettled_attempt() {
        let case = |state| {
            let attempts = HashMap::from([("P-a-3-1".to_string(), job("P-a-3-1", state, 1))]);
            kinds(&compare(
                &[record("P-a-3-1", BookState::Paid, true)],
                &[],
                &attempts,
                &BTreeSet::new(),
                &[],
                &HashMap::new(),
                true,
            ))
        };
        assert_eq!(case(AttemptState::Unknown), ["late_booked"]);
        assert_eq!(case(AttemptState::Quarantined), ["late_booked"]);
        assert_eq!(case(AttemptState::NotReceived), ["unbooked_charge"]);
        assert_eq!(case(AttemptState::Approved), Vec::<&str>::new());
    }

    #[test]
    fn a_paid_record_without_a_known_mode_is_not_booked() {
        let mut unknown = job("P-a-3-1", AttemptState::Unknown, 1);
        unknown.test_mode = None;
        let attempts = HashMap::from([("P-a-3-1".to_string(), unknown)]);
        let mut paid = record("P-a-3-1", BookState::Paid, true);
        paid.test_mode = None;
        let actions = compare(
            &[paid],
            &[],
            &attempts,
            &BTreeSet::new(),
            &[],
            &HashMap::new(),
            true,
        );
        assert_eq!(kinds(&actions), ["integrity"]);
    }

    #[test]
    fn a_paid_record_in_the_wrong_mode_is_an_integrity_finding() {
        let attempts = HashMap::from([(
            "P-a-3-1".to_string(),
            job("P-a-3-1", AttemptState::Unknown, 1),
        )]);
        let actions = compare(
            &[record("P-a-3-1", BookState::Paid, true)],
            &[],
            &attempts,
            &BTreeSet::new(),
            &[],
            &HashMap::new(),
            false,
        );
        assert_eq!(kinds(&actions), ["integrity"]);
    }

    /// `compare` for one order approved in the ledger whose verified record is in `state`
    /// (`state_text`), the ledger's refunds `completed` / `pending` (cents).
    fn refunded_case(
        state: BookState,
        state_text: &str,
        completed: i64,
        pending: i64,
    ) -> Vec<Action> {
        let approved = job("P-a-3-1", AttemptState::Approved, 1);
        let attempts = HashMap::from([("P-a-3-1".to_string(), approved.clone())]);
        let mut reversed = record("P-a-3-1", state, true);
        reversed.state_text = state_text.into();
        let refunds = if completed == 0 && pending == 0 {
            HashMap::new()
        } else {
            HashMap::from([("P-a-3-1".to_string(), Refunded { completed, pending })])
        };
        compare(
            &[reversed],
            &[],
            &attempts,
            &BTreeSet::new(),
            &[approved],
            &refunds,
            true,
        )
    }

    fn only_finding(actions: &[Action]) -> &NewFinding {
        assert_eq!(actions.len(), 1, "{actions:?}");
        match &actions[0] {
            Action::Record(f) | Action::LateBook(_, f) => f,
        }
    }

    #[test]
    fn an_order_refunded_in_full_through_the_ledger_is_no_finding() {
        let canceled = |completed, pending| {
            kinds(&refunded_case(
                BookState::Reversed,
                "Canceled",
                completed,
                pending,
            ))
        };
        assert_eq!(canceled(10000, 0), Vec::<&str>::new());
        // Refunded in two parts; the last one still pending in the ledger (the books were read
        // after the gateway applied it, before its outcome was settled).
        assert_eq!(canceled(3000, 7000), Vec::<&str>::new());
        assert_eq!(canceled(0, 10000), Vec::<&str>::new());
    }

    #[test]
    fn an_order_refunded_in_part_through_the_ledger_is_no_finding() {
        let partial = |completed, pending| {
            kinds(&refunded_case(
                BookState::PartlyReversed,
                "PartialCanceled",
                completed,
                pending,
            ))
        };
        assert_eq!(partial(3000, 0), Vec::<&str>::new());
        assert_eq!(partial(0, 3000), Vec::<&str>::new());
        // 30.00 done, the remaining 70.00 pending and not applied yet when the books were read.
        assert_eq!(partial(3000, 7000), Vec::<&str>::new());
    }

    #[test]
    fn a_canceled_order_without_a_ledger_refund_is_a_refund_mismatch() {
        let actions = refunded_case(BookState::Reversed, "Canceled", 0, 0);
        assert_eq!(kinds(&actions), ["refund_mismatch"]);
        let found = only_finding(&actions);
        assert_eq!(found.ledger_kind, "books_refund_mismatch");
        assert_eq!(found.subscription_id.as_deref(), Some("sub-1"));
        assert!(found.hold.is_none());
        assert_eq!(found.detail["gateway_state"], "Canceled");
        assert_eq!(found.detail["ledger_amount"], "100.00");
        assert_eq!(found.detail["ledger_refunded"], "0.00");
        assert_eq!(found.detail["ledger_refund_pending"], "0.00");
        assert_eq!(
            found.detail["reason"],
            "reversed at the gateway but the ledger has no refund: a refund made outside \
             recurrentd?"
        );
        // The same for a partial refund made elsewhere.
        let actions = refunded_case(BookState::PartlyReversed, "PartialCanceled", 0, 0);
        assert_eq!(kinds(&actions), ["refund_mismatch"]);
    }

    #[test]
    fn refunds_that_do_not_fit_the_gateways_state_are_a_refund_mismatch() {
        // PartialCanceled, but the ledger refunded all of it.
        let actions = refunded_case(BookState::PartlyReversed, "PartialCanceled", 10000, 0);
        assert_eq!(kinds(&actions), ["refund_mismatch"]);
        let found = only_finding(&actions);
        assert_eq!(found.detail["gateway_state"], "PartialCanceled");
        assert_eq!(found.detail["ledger_refunded"], "100.00");
        assert_eq!(found.detail["ledger_refund_pending"], "0.00");
        assert_eq!(
            found.detail["reason"],
            "the ledger's refunds do not match the gateway's state"
        );
        assert!(found.detail["ledger_refunded"].is_string());
        // Canceled, but the ledger refunded only part (none pending that could make it whole).
        let actions = refunded_case(BookState::Reversed, "Canceled", 3000, 0);
        assert_eq!(kinds(&actions), ["refund_mismatch"]);
        assert_eq!(only_finding(&actions).detail["ledger_refunded"], "30.00");
        // A pending refund alone for all of it cannot make the order PartialCanceled.
        let actions = refunded_case(BookState::PartlyReversed, "PartialCanceled", 0, 10000);
        assert_eq!(kinds(&actions), ["refund_mismatch"]);
        assert_eq!(
            only_finding(&actions).detail["ledger_refund_pending"],
            "100.00"
        );
    }

    #[test]
    fn a_declined_or_unverified_record_of_a_refunded_order_is_not_believed() {
        // Declined at the gateway: not a refund, whatever the ledger refunded.
        let declined = refunded_case(BookState::NotPaid, "Declined", 10000, 0);
        assert_eq!(kinds(&declined), ["not_at_gateway"]);
        // An unverified Canceled record: only its integrity finding.
        let approved = job("P-a-3-1", AttemptState::Approved, 1);
        let attempts = HashMap::from([("P-a-3-1".to_string(), approved.clone())]);
        let mut forged = record("P-a-3-1", BookState::Reversed, false);
        forged.state_text = "Canceled".into();
        for refunds in [
            HashMap::new(),
            HashMap::from([(
                "P-a-3-1".to_string(),
                Refunded {
                    completed: 10000,
                    pending: 0,
                },
            )]),
        ] {
            let actions = compare(
                &[forged.clone()],
                &[],
                &attempts,
                &BTreeSet::new(),
                std::slice::from_ref(&approved),
                &refunds,
                true,
            );
            assert_eq!(kinds(&actions), ["integrity"]);
        }
    }

    /// A store whose subscription `s1` has period 0's attempt `ORD-1` (100.00 RUB, test mode)
    /// sent and unknown, through the calls the engine makes.
    fn unknown_attempt() -> (tempfile::TempDir, Store, Job) {
        use crate::schedule::{DirReport, parse_text};
        let at: DateTime<Utc> = "2027-01-01T07:00:00Z".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let text = "[[subscription]]\nid = \"s1\"\nbill_number = \"5899110210000001\"\n\
                    currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\n\
                    start = 2027-01-01\n\n";
        let report = DirReport {
            files: vec![parse_text(std::path::Path::new("schedules/a.toml"), text)],
        };
        store.sync_schedules(&report, at).unwrap();
        let tx = store.plan(at).unwrap();
        let history = tx.history("s1").unwrap().unwrap();
        let open = tx
            .open_period(&history.subscription, 0, "2027-01-01".parse().unwrap())
            .unwrap();
        let job = tx
            .new_attempt(
                "s1",
                &open,
                "ORD-1",
                at,
                Event {
                    kind: event::INTENT,
                    detail: json!({}),
                },
            )
            .unwrap();
        tx.commit().unwrap();
        assert!(
            store
                .mark_sending(job.attempt_id, AttemptState::Pending, at, at)
                .unwrap()
        );
        let mut change = AttemptChange::to(AttemptState::Unknown);
        change.sent = true;
        change.test_mode = Some(true);
        assert!(
            store
                .apply(job.attempt_id, AttemptState::Pending, &change, at)
                .unwrap()
        );
        let job = store.attempt_by_order_number("ORD-1").unwrap().unwrap();
        assert_eq!(job.state, AttemptState::Unknown);
        (dir, store, job)
    }

    #[tokio::test]
    async fn a_late_booking_that_loses_the_race_is_held_not_dropped() {
        let (_dir, mut store, job) = unknown_attempt();
        let now: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
        let day = [record("ORD-1", BookState::Paid, true)];
        let attempts = HashMap::from([("ORD-1".to_string(), job.clone())]);
        let actions = compare(
            &day,
            &[],
            &attempts,
            &BTreeSet::new(),
            &[],
            &HashMap::new(),
            true,
        );
        assert_eq!(kinds(&actions), ["late_booked"]);
        // Meanwhile (after the books were read) the engine settles the attempt otherwise: two
        // not-found answers, the period open for a new order number.
        let change = AttemptChange::to(AttemptState::NotReceived);
        assert!(
            store
                .apply(job.attempt_id, AttemptState::Unknown, &change, now)
                .unwrap()
        );
        let store = Arc::new(Mutex::new(store));
        let date = "2027-01-01".parse().unwrap();
        let (findings, booked) = act(&store, actions, &day, true, date, now).await.unwrap();
        assert_eq!(booked, 0);
        let kinds: Vec<_> = findings.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            ["unbooked_charge"],
            "a verified payment is never dropped"
        );
        assert_eq!(
            findings[0].hold.as_ref().map(|f| f.kind),
            Some(flag::LATE_APPROVAL)
        );
        assert_eq!(findings[0].detail["ledger_state"], json!("not_received"));
        let mut store = store.lock().unwrap();
        store
            .record_book_run(date, (now, now), 1, &findings, now)
            .unwrap();
        assert!(
            store.attention("s1").unwrap().is_some(),
            "held for an operator"
        );
    }

    #[tokio::test]
    async fn a_late_booking_follows_an_attempt_that_moved_to_another_unsettled_state() {
        let (_dir, mut store, job) = unknown_attempt();
        let now: DateTime<Utc> = "2027-01-02T00:00:00Z".parse().unwrap();
        let day = [record("ORD-1", BookState::Paid, true)];
        let attempts = HashMap::from([("ORD-1".to_string(), job.clone())]);
        let actions = compare(
            &day,
            &[],
            &attempts,
            &BTreeSet::new(),
            &[],
            &HashMap::new(),
            true,
        );
        // Meanwhile the engine parks it (still unsettled): booked from `parked`.
        let change = AttemptChange::to(AttemptState::Parked);
        assert!(
            store
                .apply(job.attempt_id, AttemptState::Unknown, &change, now)
                .unwrap()
        );
        let store = Arc::new(Mutex::new(store));
        let date = "2027-01-01".parse().unwrap();
        let (findings, booked) = act(&store, actions, &day, true, date, now).await.unwrap();
        assert!(findings.is_empty());
        assert_eq!(booked, 1);
        let store = store.lock().unwrap();
        let now_job = store.attempt_by_order_number("ORD-1").unwrap().unwrap();
        assert_eq!(now_job.state, AttemptState::Approved);
    }

    #[test]
    fn day_window_is_the_local_day_in_utc() {
        let zone: Tz = "Europe/Moscow".parse().unwrap();
        let (start, end) = day_window(NaiveDate::from_ymd_opt(2026, 12, 6).unwrap(), zone);
        assert_eq!(start.to_rfc3339(), "2026-12-05T21:00:00+00:00");
        assert_eq!(end.to_rfc3339(), "2026-12-06T21:00:00+00:00");
    }

    #[test]
    fn due_date_waits_for_run_after_and_never_repeats_or_skips() {
        let zone: Tz = "Europe/Moscow".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        let after = chrono::NaiveTime::from_hms_opt(2, 0, 0).unwrap();
        // 01:30 Moscow: too early.
        assert_eq!(
            due_date(at("2026-12-06T22:30:00Z"), zone, after, None),
            None
        );
        // 03:00 Moscow on the 7th: the 6th.
        let now = at("2026-12-07T00:00:00Z");
        assert_eq!(due_date(now, zone, after, None), Some(d("2026-12-06")));
        assert_eq!(due_date(now, zone, after, Some(d("2026-12-06"))), None);
        // Down for two days: the first day not compared, then the next.
        assert_eq!(
            due_date(now, zone, after, Some(d("2026-12-03"))),
            Some(d("2026-12-04"))
        );
        // Down for a month: a week back at most.
        assert_eq!(
            due_date(now, zone, after, Some(d("2026-11-01"))),
            Some(d("2026-11-30"))
        );
    }
}
