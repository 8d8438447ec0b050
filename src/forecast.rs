//! Upcoming charges: the recurrence core's own decisions, played forward on a simulated clock.
//!
//! Each subscription is simulated from `from` to `until` by calling [`billing::decide`] at each
//! instant it names (and [`billing::verdict`] for the retry of an open period), assuming every
//! allowed charge is made. Nothing here decides anything itself, so the forecast shows what the
//! engine would do.
//!
//! With the ledger ([`forecast_from_ledger`]) each subscription starts from its real history, as
//! the engine does: the period after the last one with a row, the instants it charged (and its
//! enrolment's initial payment) for the period limit, its open period's scheduled retry, and
//! nothing at all while it waits for an operator. Periods the ledger already settled within the
//! window are shown with what happened to them. Without it ([`forecast`]) the simulation starts
//! at period 0 with no previous charge.
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{self, Calendar, Next, SettledOutcome};
use crate::money::{Currency, Money};
use crate::schedule::Subscription;
use crate::store::{AttemptState, ChargeState, LedgerPeriod, LedgerState};

/// Most events simulated per subscription, whatever the horizon (a daily plan over ten years).
const MAX_EVENTS: usize = 4_000;

/// What an entry is. The first three are forecasts from the schedule alone; the others need the
/// ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The charge would be made (counted in the totals).
    Charge,
    /// The limits (or the subscription's state) block it.
    Blocked,
    /// The period would be passed over (period gap, catch-up).
    Skipped,
    /// An open period tried again at its scheduled retry, after a decline (counted in the
    /// totals).
    Retry,
    /// The ledger: charged (approved) at `at`.
    Charged,
    /// The ledger: failed for good (declined, retry window or attempt budget exhausted), or
    /// forecast to fail that way.
    Failed,
    /// The ledger: an answer about its charge failed verification.
    Quarantined,
    /// The ledger: an attempt whose outcome is not known yet (counted as charged for the
    /// limits); the forecast assumes it charged.
    Unresolved,
    /// The subscription waits for an operator (hard decline, or an outcome unknown for too long:
    /// parked): nothing more is charged until it is resolved, so nothing more is forecast.
    Attention,
}

impl Status {
    /// As in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Charge => "charge",
            Status::Blocked => "blocked",
            Status::Skipped => "skipped",
            Status::Retry => "retry",
            Status::Charged => "charged",
            Status::Failed => "failed",
            Status::Quarantined => "quarantined",
            Status::Unresolved => "unresolved",
            Status::Attention => "attention",
        }
    }

    /// Money the forecast expects to move: counted in the totals.
    pub fn is_forecast_charge(self) -> bool {
        matches!(self, Status::Charge | Status::Retry)
    }
}

/// Where the history came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The database's ledger.
    Ledger,
    /// The schedule files alone (no database): every subscription from its first period.
    Schedules,
}

/// In JSON, `period` is the period's due date (`YYYY-MM-DD`, as in `history --json`) and
/// `period_index` its index (0 = the first due date); instants are RFC 3339, `Z`, whole seconds.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "EntryJson")]
pub struct Entry {
    pub subscription: String,
    pub period: u32,
    /// The billing period's due date.
    pub due_date: NaiveDate,
    /// When it happens: the charge instant, or the due instant of a blocked or skipped period.
    pub at: DateTime<Utc>,
    pub amount: Money,
    pub currency: Currency,
    pub status: Status,
    pub reason: Option<String>,
    /// The attempt's OrderNumber, for entries from the ledger that have one.
    pub order_number: Option<String>,
    /// How much of a charged entry was refunded since (`recurrentd refund`); omitted when
    /// nothing was. The entry stays `charged`: the refund changes no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded: Option<Money>,
}

/// An [`Entry`] as JSON: the same shape of `period` as `history --json`.
#[derive(Serialize)]
struct EntryJson {
    subscription: String,
    period: String,
    period_index: u32,
    due_date: NaiveDate,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    at: DateTime<Utc>,
    amount: Money,
    currency: Currency,
    status: Status,
    reason: Option<String>,
    order_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refunded: Option<Money>,
}

impl From<Entry> for EntryJson {
    fn from(e: Entry) -> EntryJson {
        EntryJson {
            subscription: e.subscription,
            period: e.due_date.format("%Y-%m-%d").to_string(),
            period_index: e.period,
            due_date: e.due_date,
            at: e.at,
            amount: e.amount,
            currency: e.currency,
            status: e.status,
            reason: e.reason,
            order_number: e.order_number,
            refunded: e.refunded,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    /// `ledger` or `schedules`.
    pub source: Source,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub until: DateTime<Utc>,
    pub timezone: String,
    pub entries: Vec<Entry>,
    /// Sum of the forecast charges (`charge` and `retry`) per currency, as decimal strings with
    /// two decimals: money in JSON is never a number.
    pub totals: BTreeMap<String, String>,
}

/// The forecast of every subscription between `from` and `until` from the schedule files alone,
/// ordered by instant.
pub fn forecast<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    calendar: &Calendar,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Forecast {
    let mut entries = Vec::new();
    for subscription in subscriptions {
        Simulation::new(subscription, calendar, from, until, u32::MAX).run(None, &mut entries);
    }
    finish(Source::Schedules, calendar, from, until, entries)
}

/// The forecast of every subscription, each from its history in the ledger, between `from` and
/// `until`; `max_attempts_per_30_days` is the engine's attempt budget (`engine.*`).
pub fn forecast_from_ledger<'a>(
    subscriptions: impl IntoIterator<Item = (&'a Subscription, &'a LedgerState)>,
    calendar: &Calendar,
    max_attempts_per_30_days: u32,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Forecast {
    let mut entries = Vec::new();
    for (subscription, ledger) in subscriptions {
        Simulation::new(
            subscription,
            calendar,
            from,
            until,
            max_attempts_per_30_days,
        )
        .run(Some(ledger), &mut entries);
    }
    finish(Source::Ledger, calendar, from, until, entries)
}

/// Due charges a rehearsal left unmade (see [`unmade`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unmade {
    /// Periods that fell due at or after the rehearsal's start and were skipped for lateness
    /// (catch-up: a later period was due too, or it was due longer ago than the grace time).
    pub skipped: u32,
    /// Charges (a period, or an open period's retry) due at or after the start and by the cutoff
    /// that were never attempted, and periods the engine would skip for lateness at the cutoff.
    pub not_attempted: u32,
}

impl Unmade {
    pub fn total(&self) -> u32 {
        self.skipped.saturating_add(self.not_attempted)
    }

    pub fn add(&mut self, other: Unmade) {
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.not_attempted = self.not_attempted.saturating_add(other.not_attempted);
    }
}

/// What one subscription's ledger shows undone at `cutoff` of a rehearsal that started at
/// `start`: periods due in `[start, cutoff]` that were skipped for lateness or never attempted.
/// Only charges the engine itself should have made count: a period blocked by the limits or a
/// paused subscription is not a charge; one waiting for an operator (a hard decline, a parked
/// attempt) and one held by an attempt whose outcome is not known yet (unknown, parked,
/// quarantined: the due sweep passes it by) are not counted either. The decision is
/// [`billing::decide`]'s at `cutoff`, as a sweep then would have made it.
pub fn unmade(
    subscription: &Subscription,
    ledger: &LedgerState,
    calendar: &Calendar,
    start: DateTime<Utc>,
    cutoff: DateTime<Utc>,
) -> Unmade {
    let terms = &subscription.terms;
    let due_in_run = |first: u32, last: u32| -> u32 {
        let count = (first..=last)
            .filter_map(|p| billing::due_date(terms, p))
            .map(|d| calendar.due_instant(d))
            .filter(|at| *at >= start && *at <= cutoff)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    };
    let mut unmade = Unmade::default();
    // Recorded skips for lateness (a run is one row, under its last period).
    let mut first = 0;
    for row in &ledger.periods {
        if row.state == ChargeState::Skipped
            && row.reason.as_deref().is_some_and(billing::is_missed)
        {
            unmade.skipped = unmade.skipped.saturating_add(due_in_run(first, row.period));
        }
        first = row.period.saturating_add(1);
    }
    if ledger.attention.is_some() {
        return unmade;
    }
    // A period whose latest attempt is not settled (its outcome unknown, parked or quarantined)
    // holds the subscription: the due sweep passes it by until the attempt settles, so later
    // periods are rightly not attempted.
    let unsettled = ledger.periods.iter().any(|p| {
        p.state == ChargeState::Quarantined
            || p.last_attempt
                .as_ref()
                .is_some_and(|a| a.state.unresolved() || a.state == AttemptState::Quarantined)
    });
    if unsettled {
        return unmade;
    }
    // An open period: its retry, if it is due and nothing is in flight.
    if let Some(open) = ledger
        .periods
        .iter()
        .rev()
        .find(|p| p.state == ChargeState::Open)
    {
        let settled_last = open
            .last_attempt
            .as_ref()
            .is_none_or(|a| !a.state.unresolved() && !a.state.may_have_charged());
        if settled_last
            && open
                .next_attempt_at
                .is_some_and(|at| at >= start && at <= cutoff)
        {
            unmade.not_attempted = unmade.not_attempted.saturating_add(1);
        }
    }
    let plan = billing::decide(terms, calendar, ledger.next_period, &ledger.charged, cutoff);
    for settled in &plan.settled {
        if let SettledOutcome::Skipped(reason) = &settled.outcome
            && billing::is_missed(&reason.to_string())
        {
            unmade.not_attempted = unmade
                .not_attempted
                .saturating_add(due_in_run(settled.first, settled.period));
        }
    }
    if let Next::Charge { period, .. } = plan.next {
        unmade.not_attempted = unmade
            .not_attempted
            .saturating_add(due_in_run(period, period));
    }
    unmade
}

fn finish(
    source: Source,
    calendar: &Calendar,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    mut entries: Vec<Entry>,
) -> Forecast {
    entries
        .sort_by(|a, b| (a.at, &a.subscription, a.period).cmp(&(b.at, &b.subscription, b.period)));
    let mut totals = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.status.is_forecast_charge()) {
        *totals
            .entry(entry.currency.to_string())
            .or_insert(Decimal::ZERO) += entry.amount.as_decimal();
    }
    let totals = totals
        .into_iter()
        .map(|(currency, sum): (String, Decimal)| (currency, sum.to_string()))
        .collect();
    Forecast {
        source,
        from,
        until,
        timezone: calendar.timezone.name().to_string(),
        entries,
        totals,
    }
}

/// One subscription played forward.
struct Simulation<'a> {
    subscription: &'a Subscription,
    calendar: &'a Calendar,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    max_attempts_per_30_days: u32,
    /// The simulated clock.
    now: DateTime<Utc>,
    next_period: u32,
    /// Instants that count as charges for the limits (real ones from the ledger, then simulated).
    charges: Vec<DateTime<Utc>>,
    /// Instants of attempts (the 30-day budget).
    attempts: Vec<DateTime<Utc>>,
}

impl<'a> Simulation<'a> {
    fn new(
        subscription: &'a Subscription,
        calendar: &'a Calendar,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        max_attempts_per_30_days: u32,
    ) -> Simulation<'a> {
        Simulation {
            subscription,
            calendar,
            from,
            until,
            max_attempts_per_30_days,
            now: from,
            next_period: 0,
            charges: Vec::new(),
            attempts: Vec::new(),
        }
    }

    fn entry(
        &self,
        period: u32,
        due_date: NaiveDate,
        at: DateTime<Utc>,
        status: Status,
        reason: Option<String>,
    ) -> Entry {
        Entry {
            subscription: self.subscription.id.clone(),
            period,
            due_date,
            at,
            amount: self.subscription.terms.amount,
            currency: self.subscription.currency,
            status,
            reason,
            order_number: None,
            refunded: None,
        }
    }

    fn in_window(&self, at: DateTime<Utc>) -> bool {
        self.from <= at && at <= self.until
    }

    /// The due date of a period, or the start date past the calendar's end (only for labels).
    fn due_date(&self, period: u32) -> NaiveDate {
        billing::due_date(&self.subscription.terms, period).unwrap_or(self.subscription.terms.start)
    }

    fn run(mut self, ledger: Option<&LedgerState>, entries: &mut Vec<Entry>) {
        if let Some(ledger) = ledger
            && !self.start_from_ledger(ledger, entries)
        {
            return;
        }
        self.play(entries);
    }

    /// Shows what the ledger recorded within the window and sets the simulation where the
    /// engine stands. Returns `false` when nothing more will be charged (an operator must act,
    /// or the next step is past the window).
    fn start_from_ledger(&mut self, ledger: &LedgerState, entries: &mut Vec<Entry>) -> bool {
        self.next_period = ledger.next_period;
        self.charges = ledger.charged.clone();
        self.attempts = ledger.attempts.clone();
        for period in &ledger.periods {
            if let Some(entry) = self.recorded(period) {
                entries.push(entry);
            }
        }
        if let Some((reason, since)) = &ledger.attention {
            entries.push(self.entry(
                self.next_period,
                self.due_date(self.next_period),
                self.from.max(*since).min(self.until),
                Status::Attention,
                Some(format!(
                    "waits for an operator since {}: {reason}; nothing is charged until \
                     `recurrentd resume`",
                    crate::timefmt::rfc3339(*since)
                )),
            ));
            return false;
        }
        let Some(open) = ledger
            .periods
            .iter()
            .rev()
            .find(|p| p.state == ChargeState::Open)
        else {
            return true;
        };
        self.next_period = self.next_period.max(open.period.saturating_add(1));
        if let Some(last) = open.last_attempt.as_ref().filter(|a| a.state.unresolved()) {
            let at = self.from.max(last.at);
            if last.state == crate::store::AttemptState::Parked {
                entries.push(self.open_entry(
                    open,
                    Status::Attention,
                    at,
                    format!(
                        "attempt {} parked: its outcome is still unknown; an operator must look \
                         before anything else is charged",
                        last.attempt
                    ),
                ));
                return false;
            }
            entries.push(self.open_entry(
                open,
                Status::Unresolved,
                at,
                format!(
                    "attempt {} is {}: its outcome is not known yet (counted as charged; the \
                     forecast assumes it was)",
                    last.attempt, last.state
                ),
            ));
            return true;
        }
        if open
            .last_attempt
            .as_ref()
            .is_some_and(|a| a.state.may_have_charged())
        {
            // Approved or quarantined, the period about to be closed: already in the charges.
            return true;
        }
        // A retry is scheduled (after a soft decline): the engine's rule for an open period.
        let terms = &self.subscription.terms;
        let retry_at = open.next_attempt_at.map_or(self.now, |t| t.max(self.now));
        let next_due = billing::due_date(terms, open.period.saturating_add(1))
            .map(|d| self.calendar.due_instant(d));
        if let Some(next_due) = next_due.filter(|next| *next <= retry_at) {
            let at = next_due.max(self.from);
            if self.in_window(at) {
                entries.push(self.open_entry(
                    open,
                    Status::Failed,
                    at,
                    "its retry window ends: the next period is due first".into(),
                ));
            }
            self.now = self.now.max(next_due);
            return true;
        }
        if retry_at > self.until {
            return false;
        }
        self.now = retry_at;
        let since = retry_at - Duration::days(30);
        let recent = self.attempts.iter().filter(|a| **a > since).count();
        if u32::try_from(recent).unwrap_or(u32::MAX) >= self.max_attempts_per_30_days {
            entries.push(self.open_entry(
                open,
                Status::Failed,
                retry_at,
                "no attempts left in the 30-day budget".into(),
            ));
            return true;
        }
        let attempt = open.last_attempt.as_ref().map_or(1, |a| a.attempt + 1);
        match billing::verdict(terms, self.calendar, &self.charges, open.amount, retry_at) {
            Ok(()) => {
                let after = open
                    .last_attempt
                    .as_ref()
                    .and_then(|a| a.detail.clone())
                    .map(|d| format!(" after: {d}"))
                    .unwrap_or_default();
                entries.push(self.open_entry(
                    open,
                    Status::Retry,
                    retry_at,
                    format!("attempt {attempt}{after}"),
                ));
                self.charges.push(retry_at);
                self.attempts.push(retry_at);
            }
            Err(reason) => {
                entries.push(self.open_entry(open, Status::Blocked, retry_at, reason.to_string()))
            }
        }
        true
    }

    /// An entry about the open period.
    fn open_entry(
        &self,
        open: &LedgerPeriod,
        status: Status,
        at: DateTime<Utc>,
        reason: String,
    ) -> Entry {
        Entry {
            order_number: open.last_attempt.as_ref().map(|a| a.order_number.clone()),
            amount: open.amount,
            currency: open.currency,
            ..self.entry(open.period, open.due_date, at, status, Some(reason))
        }
    }

    /// A period the ledger settled, as an entry if it falls within the window.
    fn recorded(&self, period: &LedgerPeriod) -> Option<Entry> {
        let status = match period.state {
            ChargeState::Paid => Status::Charged,
            ChargeState::Failed => Status::Failed,
            ChargeState::Blocked => Status::Blocked,
            ChargeState::Skipped => Status::Skipped,
            ChargeState::Quarantined => Status::Quarantined,
            ChargeState::Open => return None,
        };
        let attempt = period.last_attempt.as_ref();
        let at = attempt.map_or_else(|| self.calendar.due_instant(period.due_date), |a| a.at);
        if !self.in_window(at) {
            return None;
        }
        let reason = period
            .reason
            .clone()
            .or_else(|| attempt.and_then(|a| a.detail.clone()));
        let refunded = attempt.and_then(|a| a.refunded);
        let reason = match (refunded, reason) {
            (Some(r), Some(reason)) => Some(format!("refunded {r}; {reason}")),
            (Some(r), None) => Some(format!("refunded {r}")),
            (None, reason) => reason,
        };
        Some(Entry {
            amount: period.amount,
            currency: period.currency,
            order_number: attempt.map(|a| a.order_number.clone()),
            refunded,
            ..self.entry(period.period, period.due_date, at, status, reason)
        })
    }

    /// `decide` played forward from `now` to `until`.
    fn play(&mut self, entries: &mut Vec<Entry>) {
        let terms = &self.subscription.terms;
        let calendar = self.calendar;
        let mut deferred: Option<String> = None;
        for _ in 0..MAX_EVENTS {
            let plan = billing::decide(terms, calendar, self.next_period, &self.charges, self.now);
            for settled in plan.settled {
                self.next_period = settled.period + 1;
                let due_at = calendar.due_instant(settled.due_date);
                // Periods missed before the forecast starts are history, not forecast.
                if due_at < self.from {
                    continue;
                }
                let status = match settled.outcome {
                    SettledOutcome::Blocked(_) => Status::Blocked,
                    SettledOutcome::Skipped(_) => Status::Skipped,
                };
                entries.push(self.entry(
                    settled.period,
                    settled.due_date,
                    due_at,
                    status,
                    Some(settled.describe()),
                ));
            }
            match plan.next {
                Next::Charge { period, due_date } => {
                    let due_at = calendar.due_instant(due_date);
                    let reason = deferred.take().or_else(|| {
                        (due_at < self.now).then(|| {
                            format!("due {}; charged late", crate::timefmt::rfc3339(due_at))
                        })
                    });
                    entries.push(self.entry(period, due_date, self.now, Status::Charge, reason));
                    self.charges.push(self.now);
                    self.attempts.push(self.now);
                    self.next_period = period + 1;
                }
                Next::Defer { until: at, .. } => {
                    // Why: the verdict at the due instant (only the period gap blocks it).
                    let why =
                        billing::verdict(terms, calendar, &self.charges, terms.amount, self.now)
                            .err()
                            .map_or_else(String::new, |reason| format!(": {reason}"));
                    deferred = Some(format!(
                        "deferred from {}{why}",
                        crate::timefmt::rfc3339(self.now)
                    ));
                    if at > self.until {
                        return;
                    }
                    self.now = at;
                }
                Next::Wait { due_at: at, .. } => {
                    if at > self.until {
                        return;
                    }
                    self.now = at;
                }
                Next::Ended(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
