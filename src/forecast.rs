//! Upcoming charges: the recurrence core's own decisions, played forward on a simulated clock.
//!
//! Each subscription is simulated from `from` to `until` by calling [`billing::decide`] at each
//! instant it names, assuming every allowed charge is made. Nothing here decides anything itself,
//! so the forecast shows what the engine would do. (Until the ledger exists the simulation starts
//! with no previous charges and no settled period.)

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{self, Calendar, Next, SettledOutcome};
use crate::money::{Currency, Money};
use crate::schedule::Subscription;

/// Most events simulated per subscription, whatever the horizon (a daily plan over ten years).
const MAX_EVENTS: usize = 4_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The charge would be made.
    Charge,
    /// The limits (or the subscription's state) block it.
    Blocked,
    /// The period would be passed over (period gap, catch-up).
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Forecast {
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub timezone: String,
    pub entries: Vec<Entry>,
    /// Sum of the charges per currency (blocked and skipped ones not counted), as decimal
    /// strings with two decimals: money in JSON is never a number.
    pub totals: BTreeMap<String, String>,
}

/// The forecast of every subscription between `from` and `until`, ordered by instant.
pub fn forecast<'a>(
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
    calendar: &Calendar,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Forecast {
    let mut entries = Vec::new();
    for subscription in subscriptions {
        simulate(subscription, calendar, from, until, &mut entries);
    }
    entries
        .sort_by(|a, b| (a.at, &a.subscription, a.period).cmp(&(b.at, &b.subscription, b.period)));
    let mut totals = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.status == Status::Charge) {
        *totals
            .entry(entry.currency.to_string())
            .or_insert(Decimal::ZERO) += entry.amount.as_decimal();
    }
    let totals = totals
        .into_iter()
        .map(|(currency, sum): (String, Decimal)| (currency, sum.to_string()))
        .collect();
    Forecast {
        from,
        until,
        timezone: calendar.timezone.name().to_string(),
        entries,
        totals,
    }
}

fn simulate(
    subscription: &Subscription,
    calendar: &Calendar,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    entries: &mut Vec<Entry>,
) {
    let terms = &subscription.terms;
    let entry = |period, due_date, at, status, reason| Entry {
        subscription: subscription.id.clone(),
        period,
        due_date,
        at,
        amount: terms.amount,
        currency: subscription.currency,
        status,
        reason,
    };
    let mut now = from;
    let mut next_period = 0;
    let mut charges: Vec<DateTime<Utc>> = Vec::new();
    for _ in 0..MAX_EVENTS {
        let plan = billing::decide(terms, calendar, next_period, &charges, now);
        for settled in plan.settled {
            next_period = settled.period + 1;
            let due_at = calendar.due_instant(settled.due_date);
            // Periods missed before the forecast starts are history, not forecast.
            if due_at < from {
                continue;
            }
            let (status, reason) = match settled.outcome {
                SettledOutcome::Blocked(reason) => (Status::Blocked, reason.to_string()),
                SettledOutcome::Skipped(reason) => (Status::Skipped, reason.to_string()),
            };
            entries.push(entry(
                settled.period,
                settled.due_date,
                due_at,
                status,
                Some(reason),
            ));
        }
        match plan.next {
            Next::Charge { period, due_date } => {
                let reason = (calendar.due_instant(due_date) < now).then(|| {
                    format!(
                        "due {}; charged late",
                        calendar.due_instant(due_date).to_rfc3339()
                    )
                });
                entries.push(entry(period, due_date, now, Status::Charge, reason));
                charges.push(now);
                next_period = period + 1;
            }
            Next::Defer { until: at, .. } | Next::Wait { due_at: at, .. } => {
                if at > until {
                    return;
                }
                now = at;
            }
            Next::Ended(_) => return,
        }
    }
}
