//! The recurrence core: pure functions, no I/O, time always passed in.
//!
//! Periods of a subscription are numbered from 0. Period `k` is due on
//! `start + k × every` (months clamped to the month end and always computed from `start`, so an
//! anchor of the 31st returns to the 31st), at `charge_time` local time in the configured zone.
//!
//! [`verdict`] says whether one proposed charge is allowed by the agreed limits; [`decide`] says
//! what to do at an instant given which periods are settled and which charges were made (approved
//! or of unknown outcome: both count as charged). The engine and `forecast` both act only on what
//! `decide` returns, so they cannot disagree.

use std::fmt;

use chrono::{DateTime, Datelike, Days, Duration, Months, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// Most periods `check_terms` looks through for the smallest gap between due dates (about 27
/// years of daily charges; the gaps of monthly and yearly cadences repeat every eight years).
const MAX_PERIOD_SCAN: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Day,
    Week,
    Month,
    Year,
}

/// How often a subscription is charged: `"N day(s)" | "N week(s)" | "N month(s)" | "N year(s)"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    count: u32,
    unit: Unit,
}

impl Cadence {
    pub const MAX_COUNT: u32 = 999;

    pub fn new(count: u32, unit: Unit) -> Option<Cadence> {
        (1..=Cadence::MAX_COUNT)
            .contains(&count)
            .then_some(Cadence { count, unit })
    }

    pub fn parse(text: &str) -> Result<Cadence, String> {
        let usage = "must be \"N day(s)\", \"N week(s)\", \"N month(s)\" or \"N year(s)\", \
                     such as \"1 month\"";
        let mut words = text.split(' ');
        let (Some(count), Some(unit), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{usage}, got {text:?}"));
        };
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{usage}, got {text:?}"));
        }
        let unit = match unit {
            "day" | "days" => Unit::Day,
            "week" | "weeks" => Unit::Week,
            "month" | "months" => Unit::Month,
            "year" | "years" => Unit::Year,
            _ => return Err(format!("{usage}, got {text:?}")),
        };
        let count: u32 = count
            .parse()
            .ok()
            .filter(|n| (1..=Cadence::MAX_COUNT).contains(n))
            .ok_or_else(|| format!("the count must be 1..={}, got {text:?}", Cadence::MAX_COUNT))?;
        Ok(Cadence { count, unit })
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn unit(self) -> Unit {
        self.unit
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        };
        let plural = if self.count == 1 { "" } else { "s" };
        write!(f, "{} {unit}{plural}", self.count)
    }
}

/// The recurrence limits the customer agreed to at the initial payment. Each is optional (MIT COF
/// makes them optional at Assist) and enforced when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// RecurringMinAmount.
    pub min_amount: Option<Money>,
    /// RecurringMaxAmount.
    pub max_amount: Option<Money>,
    /// RecurringPeriod: fewest local calendar days between two charges (1..=999).
    pub period_days: Option<u32>,
    /// RecurringMaxDate: no charge on a later local date.
    pub max_date: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    Active,
    Paused,
    Cancelled,
}

impl SubscriptionState {
    pub fn parse(text: &str) -> Option<SubscriptionState> {
        match text {
            "active" => Some(SubscriptionState::Active),
            "paused" => Some(SubscriptionState::Paused),
            "cancelled" => Some(SubscriptionState::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubscriptionState::Active => "active",
            SubscriptionState::Paused => "paused",
            SubscriptionState::Cancelled => "cancelled",
        })
    }
}

/// What the core needs to know of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub amount: Money,
    pub every: Cadence,
    /// Due date of period 0, the anchor of every later due date.
    pub start: NaiveDate,
    pub state: SubscriptionState,
    /// Overrides the configured catch-up policy.
    pub catch_up: Option<CatchUp>,
    pub limits: Limits,
}

/// Catch-up policy after downtime (see the README's billing rules): `billing.catch_up` in the
/// config, `catch_up` in a schedule file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Charge only the most recent missed period; report older ones as skipped.
    Latest,
    /// Skip missed periods; resume at the next period that is still on time.
    None,
}

impl CatchUp {
    pub fn parse(text: &str) -> Option<CatchUp> {
        match text {
            "latest" => Some(CatchUp::Latest),
            "none" => Some(CatchUp::None),
            _ => None,
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CatchUp::Latest => "latest",
            CatchUp::None => "none",
        })
    }
}

/// How local time is read: the billing part of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub timezone: Tz,
    pub charge_time: NaiveTime,
    pub catch_up: CatchUp,
    /// How long after its due instant a period is still on time (not "missed").
    pub grace: Duration,
}

impl Calendar {
    /// The local date of an instant in the configured zone.
    pub fn local_date(&self, instant: DateTime<Utc>) -> NaiveDate {
        instant.with_timezone(&self.timezone).date_naive()
    }

    /// The instant at which a charge dated `date` becomes due: `charge_time` on that local date.
    /// A time that does not exist (clocks jump forward over it) becomes the first local time that
    /// does, i.e. the moment of the jump; a time that happens twice is the earlier one.
    pub fn due_instant(&self, date: NaiveDate) -> DateTime<Utc> {
        let naive = date.and_time(self.charge_time);
        let mut probe = naive;
        // A gap is at most a day long (Samoa, 2011); look minute by minute past it.
        for _ in 0..=(26 * 60) {
            if let Some(earliest) = self.timezone.from_local_datetime(&probe).earliest() {
                return earliest.with_timezone(&Utc);
            }
            probe += Duration::minutes(1);
        }
        Utc.from_utc_datetime(&naive)
    }
}

/// The due date of period `period`, or `None` past the calendar's end.
pub fn due_date(terms: &Terms, period: u32) -> Option<NaiveDate> {
    let steps = period.checked_mul(terms.every.count)?;
    match terms.every.unit {
        Unit::Day => terms.start.checked_add_days(Days::new(u64::from(steps))),
        Unit::Week => terms
            .start
            .checked_add_days(Days::new(u64::from(steps) * 7)),
        // Always from the anchor: chaining month additions would drift (31 → 28 → 28 …).
        Unit::Month => terms.start.checked_add_months(Months::new(steps)),
        Unit::Year => terms
            .start
            .checked_add_months(Months::new(steps.checked_mul(12)?)),
    }
}

/// Why a charge may not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockReason {
    Paused,
    Cancelled,
    BelowMin {
        amount: Money,
        min: Money,
    },
    AboveMax {
        amount: Money,
        max: Money,
    },
    AfterMaxDate {
        date: NaiveDate,
        max_date: NaiveDate,
    },
    /// Fewer than `period_days` local calendar days since the previous charge.
    TooSoon {
        previous: NaiveDate,
        earliest: NaiveDate,
        period_days: u32,
    },
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::Paused => write!(f, "subscription is paused"),
            BlockReason::Cancelled => write!(f, "subscription is cancelled"),
            BlockReason::BelowMin { amount, min } => {
                write!(f, "amount {amount} is below the agreed minimum {min}")
            }
            BlockReason::AboveMax { amount, max } => {
                write!(f, "amount {amount} is above the agreed maximum {max}")
            }
            BlockReason::AfterMaxDate { date, max_date } => {
                write!(f, "{date} is after the agreed end date {max_date}")
            }
            BlockReason::TooSoon {
                previous,
                earliest,
                period_days,
            } => write!(
                f,
                "fewer than {period_days} days since the previous charge on {previous} \
                 (earliest allowed {earliest})"
            ),
        }
    }
}

/// Whether a charge of `amount` at instant `at` is allowed, given the instants of previous charges
/// (approved or of unknown outcome). Reasons other than the period gap are reported first, so a
/// `TooSoon` verdict means the gap is the only obstacle.
pub fn verdict(
    terms: &Terms,
    calendar: &Calendar,
    charges: &[DateTime<Utc>],
    amount: Money,
    at: DateTime<Utc>,
) -> Result<(), BlockReason> {
    match terms.state {
        SubscriptionState::Active => {}
        SubscriptionState::Paused => return Err(BlockReason::Paused),
        SubscriptionState::Cancelled => return Err(BlockReason::Cancelled),
    }
    let limits = &terms.limits;
    if let Some(min) = limits.min_amount.filter(|min| amount < *min) {
        return Err(BlockReason::BelowMin { amount, min });
    }
    if let Some(max) = limits.max_amount.filter(|max| amount > *max) {
        return Err(BlockReason::AboveMax { amount, max });
    }
    let date = calendar.local_date(at);
    if let Some(max_date) = limits.max_date.filter(|max_date| date > *max_date) {
        return Err(BlockReason::AfterMaxDate { date, max_date });
    }
    if let (Some(period_days), Some(last)) = (limits.period_days, charges.iter().max()) {
        let previous = calendar.local_date(*last);
        let earliest = previous
            .checked_add_days(Days::new(u64::from(period_days)))
            .unwrap_or(NaiveDate::MAX);
        if date < earliest {
            return Err(BlockReason::TooSoon {
                previous,
                earliest,
                period_days,
            });
        }
    }
    Ok(())
}

/// How the reason of a period skipped for lateness begins ([`SkipReason::Superseded`],
/// [`SkipReason::Missed`]): the charge fell due while nothing charged it.
pub const MISSED: &str = "missed while not running";

/// Whether a recorded skip reason (a period row's, or a run's) says the period was missed for
/// lateness, not passed over by the limits.
pub fn is_missed(reason: &str) -> bool {
    reason.contains(MISSED)
}

/// Why a period was passed over without a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `catch_up = "latest"`: a later period was also due, and only the latest is charged.
    Superseded { by_period: u32 },
    /// `catch_up = "none"`: the period was due longer ago than the grace time.
    Missed { due_at: DateTime<Utc> },
    /// Blocked by the period gap until after the next period is due (or after `max_date`).
    TooSoon(BlockReason),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Superseded { by_period } => write!(
                f,
                "{MISSED}; only the latest due period (#{by_period}) is charged (catch_up = \
                 latest)"
            ),
            SkipReason::Missed { due_at } => write!(
                f,
                "{MISSED} (due {}); catch_up = none",
                crate::timefmt::rfc3339(*due_at)
            ),
            SkipReason::TooSoon(reason) => write!(f, "{reason}, and not before the next period"),
        }
    }
}

/// A period, or a run of consecutive periods, settled without a charge by [`decide`]. A run
/// (`first < period`) is settled by one reason (superseded by the same latest period, or all
/// missed) and recorded as one row under its last period: a gap of 80 000 daily periods is one
/// record, not 80 000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The first period of the run (`== period` for a single period).
    pub first: u32,
    /// The first period's due date.
    pub first_due_date: NaiveDate,
    /// The last period of the run: the one recorded, and the one after which billing continues.
    pub period: u32,
    pub due_date: NaiveDate,
    pub outcome: SettledOutcome,
}

impl Settled {
    fn one(period: u32, due_date: NaiveDate, outcome: SettledOutcome) -> Settled {
        Settled {
            first: period,
            first_due_date: due_date,
            period,
            due_date,
            outcome,
        }
    }

    /// How many periods this settles.
    pub fn count(&self) -> u32 {
        self.period - self.first + 1
    }

    /// The reason as an operator reads it: for a run, which periods and how many.
    pub fn describe(&self) -> String {
        let reason = match &self.outcome {
            SettledOutcome::Skipped(r) => r.to_string(),
            SettledOutcome::Blocked(r) => r.to_string(),
        };
        if self.first == self.period {
            reason
        } else {
            format!(
                "{} periods, #{} ({}) to #{} ({}): {reason}",
                self.count(),
                self.first,
                self.first_due_date,
                self.period,
                self.due_date
            )
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettledOutcome {
    Skipped(SkipReason),
    Blocked(BlockReason),
}

/// What to do next for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Charge this period now.
    Charge { period: u32, due_date: NaiveDate },
    /// This period is due but blocked only by the period gap: charge it at `until`.
    Defer {
        period: u32,
        due_date: NaiveDate,
        until: DateTime<Utc>,
    },
    /// Nothing is due before `due_at`, when `period` falls due.
    Wait {
        period: u32,
        due_date: NaiveDate,
        due_at: DateTime<Utc>,
    },
    /// No period will ever be charged again.
    Ended(EndReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Cancelled,
    /// The next period's due date is after `max_date`.
    PastMaxDate,
    /// The calendar ran out (a due date beyond what chrono can represent).
    Calendar,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Cancelled => "cancelled",
            EndReason::PastMaxDate => "the agreed end date has passed",
            EndReason::Calendar => "no further due dates",
        })
    }
}

/// The result of [`decide`]: periods settled without a charge (to record, oldest first), then
/// what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub settled: Vec<Settled>,
    pub next: Next,
}

/// Decides what to do at `now` for a subscription whose periods before `next_period` are
/// settled, given the instants of its previous charges (approved or of unknown outcome).
///
/// Rules (the README has them for operators):
/// - Of the unsettled periods already due, `catch_up = "latest"` charges only the latest and
///   skips the others; `"none"` skips every one whose due instant is more than the grace time
///   ago and charges the latest only if it is still on time.
/// - A period blocked only by the period gap is deferred to the earliest allowed instant if that
///   is before the next period's due instant (and not after `max_date`), otherwise skipped.
/// - Any other block (paused, amounts, `max_date`) settles the period as blocked, with its reason.
pub fn decide(
    terms: &Terms,
    calendar: &Calendar,
    next_period: u32,
    charges: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Plan {
    let mut settled = Vec::new();
    if terms.state == SubscriptionState::Cancelled {
        return Plan {
            settled,
            next: Next::Ended(EndReason::Cancelled),
        };
    }
    let catch_up = terms.catch_up.unwrap_or(calendar.catch_up);
    let mut period = next_period;
    loop {
        let Some(date) = due_date(terms, period) else {
            return Plan {
                settled,
                next: Next::Ended(EndReason::Calendar),
            };
        };
        if terms
            .limits
            .max_date
            .is_some_and(|max_date| date > max_date)
        {
            return Plan {
                settled,
                next: Next::Ended(EndReason::PastMaxDate),
            };
        }
        let due_at = calendar.due_instant(date);
        if due_at > now {
            return Plan {
                settled,
                next: Next::Wait {
                    period,
                    due_date: date,
                    due_at,
                },
            };
        }

        // `period` is due. Find the latest period that is also due (within max_date): exact
        // whatever the gap, in a logarithmic number of steps (a start date centuries ago costs
        // no more than last month).
        let latest = latest_due(terms, calendar, period, now);
        let latest_date = due_date(terms, latest).unwrap_or(date);
        let latest_due_at = calendar.due_instant(latest_date);
        let on_time = now - latest_due_at <= calendar.grace;
        // Only ever the latest due period is charged; "none" drops it too once it is late.
        let charge_latest = catch_up == CatchUp::Latest || on_time;
        let first_kept = if charge_latest { latest } else { latest + 1 };
        if first_kept > period {
            let last = first_kept - 1;
            let reason = match catch_up {
                CatchUp::Latest => SkipReason::Superseded { by_period: latest },
                CatchUp::None => SkipReason::Missed {
                    due_at: calendar.due_instant(date),
                },
            };
            settled.push(Settled {
                first: period,
                first_due_date: date,
                period: last,
                due_date: due_date(terms, last).unwrap_or(date),
                outcome: SettledOutcome::Skipped(reason),
            });
        }
        if !charge_latest {
            period = latest + 1;
            continue;
        }
        let target = latest;

        match verdict(terms, calendar, charges, terms.amount, now) {
            Ok(()) => {
                return Plan {
                    settled,
                    next: Next::Charge {
                        period: target,
                        due_date: latest_date,
                    },
                };
            }
            Err(reason @ BlockReason::TooSoon { earliest, .. }) => {
                let until = calendar.due_instant(earliest);
                let next_due_at = due_date(terms, target + 1).map(|d| calendar.due_instant(d));
                let before_next = next_due_at.is_none_or(|next| until < next);
                let within_end = terms
                    .limits
                    .max_date
                    .is_none_or(|max_date| earliest <= max_date);
                if before_next && within_end {
                    return Plan {
                        settled,
                        next: Next::Defer {
                            period: target,
                            due_date: latest_date,
                            until,
                        },
                    };
                }
                settled.push(Settled::one(
                    target,
                    latest_date,
                    SettledOutcome::Skipped(SkipReason::TooSoon(reason)),
                ));
            }
            Err(reason) => settled.push(Settled::one(
                target,
                latest_date,
                SettledOutcome::Blocked(reason),
            )),
        }
        period = target + 1;
    }
}

/// The latest period at or after `from` (which is due) that is due at `now` and within
/// `max_date`. Due dates and their instants only grow with the period, so "due" holds for a
/// prefix of the periods: gallop up from `from`, then bisect.
fn latest_due(terms: &Terms, calendar: &Calendar, from: u32, now: DateTime<Utc>) -> u32 {
    let is_due = |period: u32| {
        due_date(terms, period).is_some_and(|date| {
            terms
                .limits
                .max_date
                .is_none_or(|max_date| date <= max_date)
                && calendar.due_instant(date) <= now
        })
    };
    // Invariant: `due` is due; `not_due` (when known) is not.
    let mut due = from;
    let mut step: u32 = 1;
    let mut not_due = loop {
        match due.checked_add(step) {
            Some(probe) if is_due(probe) => {
                due = probe;
                step = step.saturating_mul(2);
            }
            Some(probe) => break probe,
            None if step == 1 => return due,
            None => step = 1,
        }
    };
    while not_due - due > 1 {
        let mid = due + (not_due - due) / 2;
        if is_due(mid) {
            due = mid;
        } else {
            not_due = mid;
        }
    }
    due
}

/// When [`decide`] must be asked again about a subscription whose terms and history do not
/// change meanwhile: the earliest instant at which its answer can differ from `next`. The due
/// sweep looks at a subscription only from then on, so this must never be late (a late answer
/// would charge late or miss a period); early is harmless (`decide` says the same again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revisit {
    /// At the next sweep (something is to be done now, or an attempt is in flight).
    Now,
    /// Not before this instant.
    At(DateTime<Utc>),
    /// Never, unless the terms or the history change.
    Never,
}

/// `revisit`, brought forward to `at` if that is earlier (something else waits then).
pub fn no_later_than(revisit: Revisit, at: Option<DateTime<Utc>>) -> Revisit {
    match (revisit, at) {
        (revisit, None) | (revisit @ Revisit::Now, _) => revisit,
        (Revisit::At(when), Some(at)) => Revisit::At(when.min(at)),
        (Revisit::Never, Some(at)) => Revisit::At(at),
    }
}

/// [`Revisit`] for what [`decide`] returned:
/// - `Wait`: `decide` answers the same until `due_at`, when the period falls due.
/// - `Defer`: the period gap frees at the start of the local day of `until` (the verdict reads
///   local dates), and with `catch_up = "none"` the period turns late at its due instant plus
///   the grace time; the earlier of those and `until` itself.
/// - `Ended`: never (only a change of terms, which sets the subscription back to `Now`, can
///   change it).
/// - `Charge`: now.
pub fn revisit(next: &Next, calendar: &Calendar) -> Revisit {
    match next {
        Next::Charge { .. } => Revisit::Now,
        Next::Wait { due_at, .. } => Revisit::At(*due_at),
        Next::Defer {
            due_date, until, ..
        } => {
            // `until` is the due instant of the earliest allowed date; a DST gap can push it
            // into the next day, so then take the day before.
            let mut day = calendar.local_date(*until);
            if calendar.due_instant(day) != *until {
                day = day.pred_opt().unwrap_or(day);
            }
            let midnight = Calendar {
                charge_time: NaiveTime::MIN,
                ..*calendar
            }
            .due_instant(day);
            let late = calendar.due_instant(*due_date) + calendar.grace;
            Revisit::At((*until).min(midnight).min(late))
        }
        Next::Ended(_) => Revisit::Never,
    }
}

/// A problem with a subscription's terms found at check time, before any charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsProblem {
    /// The schedule-file key it is about, e.g. `limits.period_days`.
    pub field: &'static str,
    pub message: String,
}

/// The earliest start date a schedule may give. Card-on-file agreements are younger; a start
/// before it is a typo (1800 for 2800, say) whose catch-up would settle decades of periods.
pub const EARLIEST_START: NaiveDate = match NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(date) => date,
    None => NaiveDate::MIN,
};

/// Checks that the terms cannot violate their own limits: the amount within min/max, min ≤ max,
/// the start not after `max_date`, and no two consecutive due dates fewer than `period_days`
/// apart (month lengths and leap years included); and that the start is not before
/// [`EARLIEST_START`].
pub fn check_terms(terms: &Terms) -> Vec<TermsProblem> {
    let mut problems = Vec::new();
    if terms.start < EARLIEST_START {
        problems.push(TermsProblem {
            field: "start",
            message: format!(
                "{} is before {EARLIEST_START}: no card agreement is that old (a typo?); the \
                 catch-up would skip every period since",
                terms.start
            ),
        });
    }
    let limits = &terms.limits;
    if let (Some(min), Some(max)) = (limits.min_amount, limits.max_amount)
        && min > max
    {
        problems.push(TermsProblem {
            field: "limits.min_amount",
            message: format!("the minimum {min} is above the maximum {max}"),
        });
    }
    if let Some(min) = limits.min_amount.filter(|min| terms.amount < *min) {
        problems.push(TermsProblem {
            field: "amount",
            message: format!("{} is below limits.min_amount {min}", terms.amount),
        });
    }
    if let Some(max) = limits.max_amount.filter(|max| terms.amount > *max) {
        problems.push(TermsProblem {
            field: "amount",
            message: format!("{} is above limits.max_amount {max}", terms.amount),
        });
    }
    if let Some(max_date) = limits.max_date.filter(|max_date| terms.start > *max_date) {
        problems.push(TermsProblem {
            field: "start",
            message: format!(
                "{} is after limits.max_date {max_date}: nothing could be charged",
                terms.start
            ),
        });
    }
    if let Some(period_days) = limits.period_days
        && let Some((gap, from, to)) = smallest_gap(terms)
        && gap < i64::from(period_days)
    {
        problems.push(TermsProblem {
            field: "every",
            message: format!(
                "every = \"{}\" gives a {gap}-day gap ({from} → {to}), fewer than \
                 limits.period_days = {period_days}",
                terms.every
            ),
        });
    }
    problems
}

/// The smallest number of days between two consecutive due dates, with the first pair that has
/// it, over the subscription's life (to `max_date`, or eight years, which covers every month
/// length and leap-year combination the anchor can meet).
fn smallest_gap(terms: &Terms) -> Option<(i64, NaiveDate, NaiveDate)> {
    let horizon = terms
        .limits
        .max_date
        .or_else(|| terms.start.checked_add_months(Months::new(12 * 8)))?;
    let mut smallest: Option<(i64, NaiveDate, NaiveDate)> = None;
    let mut previous = due_date(terms, 0)?;
    for period in 1..MAX_PERIOD_SCAN {
        let Some(date) = due_date(terms, period) else {
            break;
        };
        if date > horizon {
            break;
        }
        let gap = (date - previous).num_days();
        if smallest.is_none_or(|(best, _, _)| gap < best) {
            smallest = Some((gap, previous, date));
        }
        previous = date;
    }
    smallest
}

/// The day of the month a monthly or yearly due date lands on: the anchor day, clamped.
pub fn clamped_day(anchor_day: u32, year: i32, month: u32) -> u32 {
    let first_of_next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    let last_day = first_of_next
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day());
    anchor_day.min(last_day)
}

#[cfg(test)]
mod tests;
