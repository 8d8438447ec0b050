//! The planning rules as a pure function: [`decide_plan`] takes one subscription's history (and
//! the ad-hoc charge waiting first, if any) as read inside its planning transaction, the engine
//! clock's now, the previous sweep's instant, the calendar, the policy and the order-number
//! prefix, and returns a [`SubscriptionPlan`]: what to close, what to settle without a charge, at
//! most one intent, and when to look again. [`apply_plan`] writes it through a
//! [`PlanTransaction`], the same transaction the history was read in, so the limits checked on
//! the history hold for the intent. No I/O in the rules; no rules in the writes.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;

use super::{Policy, adhoc_order_number, adhoc_reference, intent_event, order_number};
use crate::billing::{self, Calendar, Next, Revisit, SettledOutcome};
use crate::lifecycle::{
    ChargeState, Event, History, Job, OpenCharge, Purpose, StoredSubscription, event,
};
use crate::store::{PlanTransaction, StoreError};

/// An open charge (period or ad-hoc) closed without a new attempt.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Close {
    pub charge_id: i64,
    pub state: ChargeState,
    pub reason: String,
    pub event: Event,
    /// A warning to log (ad-hoc charges only: one made when asked or not at all).
    pub warn: bool,
    /// What it was, for the log line.
    pub purpose: Purpose,
}

/// A period (or a run of periods, recorded under the last) settled without a charge.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Settle {
    pub period: u32,
    pub due_date: NaiveDate,
    pub state: ChargeState,
    pub reason: String,
    pub event: Event,
    pub periods: u32,
}

/// The one attempt to make.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Intent {
    /// Another attempt at a charge already open (a period's retry, an ad-hoc charge).
    Again {
        charge: OpenCharge,
        order_number: String,
    },
    /// The first attempt at a period not opened yet; `pickup` is how long after its due instant
    /// it is made (a metric).
    First {
        period: u32,
        due_date: NaiveDate,
        order_number: String,
        pickup: Duration,
    },
}

/// What planning one subscription decides.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct SubscriptionPlan {
    /// Open charges to close first.
    pub close: Vec<Close>,
    pub settle: Vec<Settle>,
    pub intent: Option<Intent>,
    /// When the due sweep must look again; `None`: leave `next_plan_at` as it is (reached), so
    /// it is planned again as soon as what holds it clears.
    pub revisit: Option<Revisit>,
    /// Periods settled without a charge (closed or settled), for the tick's report.
    pub settled: u32,
    /// Why planning stopped for the clock: nothing after the closes was settled (see
    /// [`too_many_skipped`]).
    pub jump: Option<String>,
}

/// The planning rules for one subscription (see the module documentation). `adhoc` is the
/// ad-hoc charge to attempt first, if the store has one for it.
pub(super) fn decide_plan(
    history: &History,
    adhoc: Option<&OpenCharge>,
    now: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
    calendar: &Calendar,
    policy: &Policy,
    prefix: &str,
) -> Result<SubscriptionPlan, String> {
    let mut plan = SubscriptionPlan::default();
    if history.attention.is_some() || history.unresolved {
        // Its `next_plan_at` stays reached: planned again once this clears.
        return Ok(plan);
    }
    let sub = &history.subscription;
    let id = sub.id.as_str();
    // An ad-hoc charge an operator queued goes first; the schedule waits for its outcome. One
    // waiting to be tried again (its attempt was not received) is tried at its time: the sweep
    // comes back then, whatever the schedule says.
    let adhoc_retry_at = match adhoc {
        Some(adhoc) => match adhoc.next_attempt_at.filter(|at| *at > now) {
            None => return Ok(decide_adhoc(history, adhoc, now, calendar, policy, prefix)),
            later => later,
        },
        None => None,
    };
    // When to plan again: never later than an ad-hoc charge's retry.
    let later = |revisit: Revisit| Some(billing::no_later_than(revisit, adhoc_retry_at));
    let terms = &sub.terms;

    // A period still open (a retry is scheduled): retry it, or close it when its window ended.
    if let Some(open) = &history.open {
        let Purpose::Period(period) = open.purpose else {
            return Err(format!("an open period is {}", open.purpose));
        };
        if open.live_attempt {
            // Settled attempts only (none unresolved), yet one counts as live: an approved or
            // quarantined attempt on an open period, which only an operator resolves. Look
            // again in an hour.
            plan.revisit = later(Revisit::At(now + Duration::hours(1)));
            return Ok(plan);
        }
        let next_due = billing::due_date(terms, period + 1).map(|d| calendar.due_instant(d));
        let window_over = next_due.is_some_and(|next| next <= now);
        if !window_over {
            if let Some(retry_at) = open.next_attempt_at.filter(|at| *at > now) {
                // Nothing before the retry, or the end of its window, whichever comes first.
                let at = next_due.map_or(retry_at, |next| next.min(retry_at));
                plan.revisit = later(Revisit::At(at));
                return Ok(plan);
            }
            if history.attempts_last_30_days >= policy.max_attempts_per_30_days {
                plan.close.push(close_period(
                    open,
                    period,
                    ChargeState::Failed,
                    "no attempts left in the 30-day budget".into(),
                    "attempt budget",
                ));
                plan.settled = 1;
                plan.revisit = later(Revisit::Now);
                return Ok(plan);
            }
            match billing::verdict(terms, calendar, &history.charged, open.amount, now) {
                Ok(()) => {
                    plan.intent = Some(Intent::Again {
                        charge: open.clone(),
                        order_number: order_number(prefix, id, period, open.attempts + 1),
                    });
                }
                Err(reason) => {
                    let reason = reason.to_string();
                    plan.close.push(close_period(
                        open,
                        period,
                        ChargeState::Blocked,
                        reason.clone(),
                        &reason,
                    ));
                    plan.settled = 1;
                }
            }
            plan.revisit = later(Revisit::Now);
            return Ok(plan);
        }
        let reason = "its retry window ended: the next period is due";
        plan.close.push(close_period(
            open,
            period,
            ChargeState::Failed,
            reason.into(),
            reason,
        ));
        plan.settled += 1;
    }

    let decided = billing::decide(terms, calendar, history.next_period, &history.charged, now);
    if let Some(reason) = too_many_skipped(id, &decided, now, since, calendar, policy) {
        // Nothing more of it is settled: its `next_plan_at` stays reached, and it is planned
        // again once an operator has acknowledged the clock.
        plan.jump = Some(reason);
        return Ok(plan);
    }
    for s in &decided.settled {
        let (state, kind) = match &s.outcome {
            SettledOutcome::Skipped(_) => (ChargeState::Skipped, event::PERIOD_SKIPPED),
            SettledOutcome::Blocked(_) => (ChargeState::Blocked, event::PERIOD_BLOCKED),
        };
        let reason = s.describe();
        // A run of periods is one row (under its last period), one event and one log line.
        plan.settle.push(Settle {
            period: s.period,
            due_date: s.due_date,
            state,
            event: Event {
                kind,
                detail: json!({
                    "period": s.period,
                    "due_date": s.due_date.to_string(),
                    "first_period": s.first,
                    "first_due_date": s.first_due_date.to_string(),
                    "periods": s.count(),
                    "reason": reason,
                }),
            },
            reason,
            periods: s.count(),
        });
        plan.settled += s.count();
    }
    if let Next::Charge { period, due_date } = decided.next {
        plan.intent = Some(Intent::First {
            period,
            due_date,
            order_number: order_number(prefix, id, period, 1),
            pickup: now - calendar.due_instant(due_date),
        });
    }
    plan.revisit = later(billing::revisit(&decided.next, calendar));
    Ok(plan)
}

fn close_period(
    open: &OpenCharge,
    period: u32,
    state: ChargeState,
    reason: String,
    why: &str,
) -> Close {
    let kind = match state {
        ChargeState::Blocked => event::PERIOD_BLOCKED,
        _ => event::PERIOD_FAILED,
    };
    Close {
        charge_id: open.id,
        state,
        event: Event {
            kind,
            detail: json!({ "period": period, "reason": why }),
        },
        reason,
        warn: false,
        purpose: open.purpose.clone(),
    }
}

/// The rules for an ad-hoc charge, planned before the schedule: the attempt budget and every
/// limit checked on the history, then one intent — or the charge closed with the reason, never
/// held: it is made when asked or not at all.
fn decide_adhoc(
    history: &History,
    adhoc: &OpenCharge,
    now: DateTime<Utc>,
    calendar: &Calendar,
    policy: &Policy,
    prefix: &str,
) -> SubscriptionPlan {
    let id = history.subscription.id.as_str();
    let reference = adhoc_reference(&adhoc.purpose);
    let mut plan = SubscriptionPlan {
        revisit: Some(Revisit::Now),
        ..SubscriptionPlan::default()
    };
    // Only a request with no attempt that charged or may have reaches here (`adhoc_open`): one
    // older than its time is closed, not sent late.
    if now - adhoc.created_at > policy.adhoc_max_age {
        let hours = policy.adhoc_max_age.num_hours();
        let reason = format!(
            "expired: requested at {}, not sent within engine.adhoc_max_age_hours ({hours} h); \
             nothing was charged",
            adhoc
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        plan.close.push(Close {
            charge_id: adhoc.id,
            state: ChargeState::Failed,
            event: Event {
                kind: event::ADHOC_EXPIRED,
                detail: json!({
                    "reference": reference,
                    "amount": adhoc.amount.to_string(),
                    "currency": adhoc.currency.as_str(),
                    "requested_at": adhoc.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "max_age_hours": hours,
                    "reason": reason,
                }),
            },
            reason,
            warn: true,
            purpose: adhoc.purpose.clone(),
        });
        plan.settled = 1;
        return plan;
    }
    let refused = if history.attempts_last_30_days >= policy.max_attempts_per_30_days {
        Some((
            ChargeState::Failed,
            event::PERIOD_FAILED,
            "no attempts left in the 30-day budget".to_string(),
        ))
    } else {
        billing::verdict(
            &history.subscription.terms,
            calendar,
            &history.charged,
            adhoc.amount,
            now,
        )
        .err()
        .map(|reason| {
            (
                ChargeState::Blocked,
                event::PERIOD_BLOCKED,
                reason.to_string(),
            )
        })
    };
    if let Some((state, kind, reason)) = refused {
        plan.close.push(Close {
            charge_id: adhoc.id,
            state,
            event: Event {
                kind,
                detail: json!({ "reference": reference, "reason": reason }),
            },
            reason,
            warn: true,
            purpose: adhoc.purpose.clone(),
        });
        plan.settled = 1;
        return plan;
    }
    plan.intent = Some(Intent::Again {
        charge: adhoc.clone(),
        order_number: adhoc_order_number(prefix, id, adhoc.id, adhoc.attempts + 1),
    });
    plan
}

/// Why planning one subscription now would settle more than `max_skipped_periods` periods as
/// skipped that fell due since the previous sweep (`since`): a clock that jumped forward, or a
/// daemon down for a long time. Periods due before the previous sweep (a new subscription with
/// an old start) are an ordinary catch-up and do not count.
pub(super) fn too_many_skipped(
    id: &str,
    plan: &billing::Plan,
    now: DateTime<Utc>,
    since: Option<DateTime<Utc>>,
    calendar: &Calendar,
    policy: &Policy,
) -> Option<String> {
    let since = since?;
    let fresh: u32 = plan
        .settled
        .iter()
        .filter(|s| matches!(s.outcome, SettledOutcome::Skipped(_)))
        .filter(|s| calendar.due_instant(s.first_due_date) > since)
        .map(|s| s.count())
        .sum();
    (fresh > policy.max_skipped_periods).then(|| {
        format!(
            "planning {id} at {} would skip {fresh} periods that fell due since the last sweep \
             at {} (engine.max_skipped_periods = {}): the clock jumped forward, or the daemon was \
             stopped that long",
            now.to_rfc3339(),
            since.to_rfc3339(),
            policy.max_skipped_periods
        )
    })
}

/// Writes `plan` for `sub` through the planning transaction it was decided in, in the rules'
/// order: closes, settled periods, the intent (its OrderNumber durable once the transaction
/// commits), then when to look again. Returns the intent's job.
pub(super) fn apply_plan<T: PlanTransaction>(
    tx: &mut T,
    sub: &StoredSubscription,
    plan: &SubscriptionPlan,
    now: DateTime<Utc>,
) -> Result<Option<Job>, StoreError> {
    let id = sub.id.as_str();
    let clock = crate::timefmt::rfc3339(now);
    for close in &plan.close {
        tx.close_period(
            id,
            close.charge_id,
            close.state,
            &close.reason,
            close.event.clone(),
        )?;
        if close.warn {
            let what = if close.event.kind == event::ADHOC_EXPIRED {
                "expired".to_string()
            } else {
                close.state.as_str().to_string()
            };
            tracing::warn!(subscription = %id, period = %close.purpose, reason = %close.reason, %clock, "ad-hoc charge {what}");
        }
    }
    for s in &plan.settle {
        tx.settle(
            sub,
            s.period,
            s.due_date,
            s.state,
            &s.reason,
            s.event.clone(),
        )?;
        tracing::info!(subscription = %id, period = s.period, periods = s.periods, reason = %s.reason, %clock, "period {}", s.state.as_str());
    }
    let job = match &plan.intent {
        None => None,
        Some(Intent::Again {
            charge,
            order_number,
        }) => Some(tx.new_attempt(
            id,
            charge,
            order_number,
            Utc::now(),
            intent_event(
                order_number,
                &charge.purpose,
                charge.attempts + 1,
                charge.amount,
                charge.currency,
            ),
        )?),
        Some(Intent::First {
            period,
            due_date,
            order_number,
            ..
        }) => {
            let open = tx.open_period(sub, *period, *due_date)?;
            Some(tx.new_attempt(
                id,
                &open,
                order_number,
                Utc::now(),
                intent_event(order_number, &open.purpose, 1, open.amount, open.currency),
            )?)
        }
    };
    if let Some(revisit) = plan.revisit {
        tx.revisit(id, revisit)?;
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Cadence, CatchUp, Limits, SubscriptionState, Terms, Unit};
    use crate::config::{BillingConfig, EngineConfig};
    use crate::money::{Currency, Money};
    use chrono::NaiveTime;

    fn t(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::from(&EngineConfig::default())
    }

    fn calendar() -> Calendar {
        Calendar::from(&BillingConfig {
            timezone: "UTC".parse().unwrap(),
            charge_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace_hours: 24,
        })
    }

    /// Monthly 499.00 RUB from 2027-01-01, no period charged yet.
    fn history() -> History {
        let at = t("2027-01-01T00:00:00Z");
        History {
            subscription: StoredSubscription {
                id: "s1".into(),
                file: "a.toml".into(),
                line: 1,
                customer: None,
                bill_number: "5100000000000001".into(),
                currency: Currency::parse("RUB").unwrap(),
                terms: Terms {
                    amount: Money::parse("499.00").unwrap(),
                    every: Cadence::new(1, Unit::Month).unwrap(),
                    start: date("2027-01-01"),
                    state: SubscriptionState::Active,
                    catch_up: None,
                    limits: Limits::default(),
                },
                created_at: at,
                updated_at: at,
                removed_at: None,
            },
            next_period: 0,
            charged: Vec::new(),
            open: None,
            unresolved: false,
            attention: None,
            attempts_last_30_days: 0,
        }
    }

    fn open_period(period: u32, attempts: u32, retry_at: Option<DateTime<Utc>>) -> OpenCharge {
        OpenCharge {
            id: 42,
            purpose: Purpose::Period(period),
            due_date: date("2027-02-01"),
            amount: Money::parse("499.00").unwrap(),
            currency: Currency::parse("RUB").unwrap(),
            bill_number: "5100000000000001".into(),
            next_attempt_at: retry_at,
            attempts,
            live_attempt: false,
            created_at: t("2027-02-01T10:00:00Z"),
        }
    }

    fn decide(history: &History, now: &str, since: Option<&str>) -> SubscriptionPlan {
        decide_plan(
            history,
            None,
            t(now),
            since.map(t),
            &calendar(),
            &policy(),
            "P",
        )
        .unwrap()
    }

    #[test]
    fn a_held_subscription_is_left_as_it_is() {
        let mut held = history();
        held.unresolved = true;
        assert_eq!(
            decide(&held, "2027-01-01T12:00:00Z", None),
            SubscriptionPlan::default()
        );
        let mut flagged = history();
        flagged.attention = Some("hard decline".into());
        assert_eq!(
            decide(&flagged, "2027-01-01T12:00:00Z", None),
            SubscriptionPlan::default()
        );
    }

    #[test]
    fn a_due_period_gets_its_first_intent_and_a_later_one_waits() {
        let plan = decide(&history(), "2027-01-01T12:00:00Z", None);
        assert_eq!(
            plan.intent,
            Some(Intent::First {
                period: 0,
                due_date: date("2027-01-01"),
                order_number: "P-s1-0-1".into(),
                pickup: Duration::hours(2),
            })
        );
        assert_eq!(plan.revisit, Some(Revisit::Now));
        assert_eq!(plan.settled, 0);

        let plan = decide(&history(), "2026-12-31T12:00:00Z", None);
        assert_eq!(plan.intent, None);
        assert_eq!(plan.revisit, Some(Revisit::At(t("2027-01-01T10:00:00Z"))));
    }

    #[test]
    fn an_open_period_is_retried_at_its_time_or_closed_when_its_window_ends() {
        let mut waiting = history();
        waiting.next_period = 2;
        waiting.open = Some(open_period(1, 1, Some(t("2027-02-04T10:00:00Z"))));
        let plan = decide(&waiting, "2027-02-02T10:00:00Z", None);
        assert_eq!(plan.intent, None);
        assert_eq!(plan.revisit, Some(Revisit::At(t("2027-02-04T10:00:00Z"))));

        let plan = decide(&waiting, "2027-02-04T10:00:00Z", None);
        assert_eq!(
            plan.intent,
            Some(Intent::Again {
                charge: open_period(1, 1, Some(t("2027-02-04T10:00:00Z"))),
                order_number: "P-s1-1-2".into(),
            })
        );

        // Its window ended (period 2 is due): closed as failed, and period 2 gets its intent.
        let plan = decide(&waiting, "2027-03-01T11:00:00Z", None);
        assert_eq!(plan.close.len(), 1);
        assert_eq!(plan.close[0].state, ChargeState::Failed);
        assert_eq!(plan.close[0].event.kind, event::PERIOD_FAILED);
        assert!(matches!(plan.intent, Some(Intent::First { period: 2, .. })));
        assert_eq!(plan.settled, 1);
    }

    #[test]
    fn an_exhausted_attempt_budget_closes_the_period() {
        let mut spent = history();
        spent.next_period = 2;
        spent.open = Some(open_period(1, 8, None));
        spent.attempts_last_30_days = policy().max_attempts_per_30_days;
        let plan = decide(&spent, "2027-02-10T10:00:00Z", None);
        assert_eq!(plan.intent, None);
        assert_eq!(plan.close.len(), 1);
        assert_eq!(
            plan.close[0].reason,
            "no attempts left in the 30-day budget"
        );
        assert_eq!(plan.revisit, Some(Revisit::Now));
    }

    #[test]
    fn too_many_periods_skipped_since_the_last_sweep_stop_planning_for_the_clock() {
        // Three years of periods (more than max_skipped_periods = 31) fell due since a sweep
        // on 2026-12-31: a clock jump.
        let plan = decide(
            &history(),
            "2030-01-01T12:00:00Z",
            Some("2026-12-31T12:00:00Z"),
        );
        assert!(plan.jump.is_some_and(|why| why.contains("would skip")));
        assert_eq!(plan.intent, None);
        assert!(plan.settle.is_empty());
        assert_eq!(plan.revisit, None);
        // The same catch-up for a new subscription (no earlier sweep) is ordinary: the missed
        // periods are one skipped run, the latest is charged.
        let plan = decide(&history(), "2030-01-01T12:00:00Z", None);
        assert!(plan.jump.is_none());
        assert_eq!(plan.settle.len(), 1);
        assert_eq!(plan.settle[0].state, ChargeState::Skipped);
        assert_eq!(plan.settle[0].periods, 36);
        assert!(plan.intent.is_some());
    }
}
