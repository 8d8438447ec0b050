//! What a status answer decides for an attempt, as a pure function: [`conclusion`] takes the
//! attempt as the store holds it, the gateway's verified answer (and the charge reply it follows,
//! if the request was just sent), the engine clock's now, the policy, the calendar and (for a
//! soft decline's dunning) the subscription, and returns the [`AttemptChange`] to record, the
//! step it counts as, and what to log — or that the answer failed verification and the attempt
//! is quarantined. No I/O, no clock, no store: the engine's async `conclude` does those.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{
    Claim, PARKED_EVERY, Policy, RESEND_BASE, RESEND_CAP, STATUS_BASE, STATUS_CAP, Step,
    adhoc_reference, backoff,
};
use crate::billing::{self, Calendar};
use crate::gateway::outcome::{DeclineKind, Outcome};
use crate::gateway::reply::Verified;
use crate::lifecycle::{
    AttemptChange, AttemptState, ChargeChange, ChargeState, Event, Flag, Job, StoredSubscription,
    event, flag,
};

/// What a status answer decides. (Made and consumed once per answer, never stored: the size of
/// the `Record` variant costs nothing worth a box.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Decided {
    /// Record `change` (guarded by the state the step started from) and count `step`.
    Record {
        change: AttemptChange,
        step: Step,
        /// The charge outcome line to log and count, if this settles or reports one.
        outcome: Option<OutcomeLine>,
        /// A warning for the operator beside it.
        notice: Option<Notice>,
    },
    /// The answer failed verification: the attempt is quarantined (see the engine's
    /// `quarantine`, which also counts it for the circuit breaker).
    Quarantine { why: String },
}

/// The one log line (and metrics count) of a charge outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OutcomeLine {
    pub label: &'static str,
    pub outcome: Outcome,
    pub response_code: Option<String>,
    pub checkvalue: &'static str,
}

/// A warning that goes with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Notice {
    /// Other orders under the same number are approved or in process beside the approved one.
    DoubleApproval { approved: usize, pending: usize },
    /// Not found after the gateway had shown the order: parked, never re-sent.
    VanishedAfterSeen,
    /// Still unknown after `park_after`: parked for an operator.
    ParkedTooLong,
}

/// The ledger detail of an attempt's outcome.
pub(super) fn event_detail(job: &Job, outcome: &Outcome, code: Option<&str>) -> serde_json::Value {
    json!({
        "order_number": job.order_number,
        "period": job.purpose.period(),
        "reference": adhoc_reference(&job.purpose),
        "attempt": job.attempt,
        "amount": job.amount.to_string(),
        "currency": job.currency.as_str(),
        "outcome": outcome.to_string(),
        "response_code": code,
    })
}

/// The ledger event of an attempt's outcome.
pub(super) fn outcome_event(
    kind: &'static str,
    job: &Job,
    outcome: &Outcome,
    code: Option<&str>,
) -> Event {
    Event {
        kind,
        detail: event_detail(job, outcome, code),
    }
}

/// Decides what `verified` (and `claim`, the charge reply it confirms, when the request was
/// just sent) means for `job` at `now`. `subscription` is read only for a soft decline's next
/// dunning day (`None` there: no retry).
pub(super) fn conclusion(
    job: &Job,
    verified: &Verified,
    claim: Option<&Claim>,
    now: DateTime<Utc>,
    policy: &Policy,
    calendar: &Calendar,
    subscription: Option<&StoredSubscription>,
) -> Decided {
    let response_code = verified
        .response_code
        .clone()
        .or_else(|| claim.and_then(|c| c.response_code.clone()));
    let test_mode = verified.test_mode.or(claim.and_then(|c| c.test_mode));
    let sent_now = claim.is_some();
    // The gateway has the order: it was sent, even if this process never saw it leave (an
    // intent recovered after a crash). Its send instant is then the intent's.
    let found = matches!(
        verified.outcome,
        Outcome::Approved | Outcome::Declined(_) | Outcome::Pending
    ) || (verified.checkvalue_verified && verified.outcome != Outcome::NotFound);
    let sent_at = claim
        .map(|c| c.sent_at)
        .or_else(|| (found && job.sent_at.is_none()).then_some(job.created_at));
    // Evidence that the gateway holds the order: a status answer found it, or the charge
    // reply (unverified, but only ever trusted in the cautious direction) said it was
    // approved, declined or in process (AS300). Once seen, not-found answers never make it
    // "not received".
    let seen_now = found
        || claim.is_some_and(|c| {
            matches!(
                c.outcome,
                Outcome::Approved | Outcome::Declined(_) | Outcome::Pending
            )
        });
    let base = |state| {
        let mut change = AttemptChange::to(state);
        change.seen = seen_now;
        change.checked = !sent_now;
        change.sent = sent_now || found;
        change.sent_at = sent_at;
        change.wall_at = claim.map(|c| c.wall);
        change.test_mode = test_mode;
        change.response_code = response_code.clone();
        change
    };
    let line = |label, outcome: &Outcome, checkvalue| OutcomeLine {
        label,
        outcome: outcome.clone(),
        response_code: response_code.clone(),
        checkvalue,
    };
    match &verified.outcome {
        Outcome::Approved => {
            let mut change = base(AttemptState::Approved);
            change.checkvalue = Some("verified");
            change.charge = Some(ChargeChange {
                state: ChargeState::Paid,
                reason: None,
                next_attempt_at: None,
            });
            change.event = Some(outcome_event(
                event::APPROVED,
                job,
                &verified.outcome,
                response_code.as_deref(),
            ));
            // Booked once (one attempt, one period), but another order under the same number is
            // paid too, or may yet be: the customer may pay twice. Flagged, in the same
            // transaction, until an operator refunds and resumes.
            let others = verified.approved_orders.saturating_sub(1) + verified.pending_orders;
            let mut notice = None;
            if others > 0 {
                change.attention = Some(Flag {
                    kind: flag::DOUBLE_APPROVAL,
                    reason: format!(
                        "the gateway shows {} orders under {} ({} approved, {} in process): the \
                         customer may have been charged twice; refund the extra one, then resume",
                        others + 1,
                        job.order_number,
                        verified.approved_orders,
                        verified.pending_orders
                    ),
                });
                notice = Some(Notice::DoubleApproval {
                    approved: verified.approved_orders,
                    pending: verified.pending_orders,
                });
            }
            Decided::Record {
                change,
                step: Step::Approved,
                outcome: Some(line("approved", &verified.outcome, "verified")),
                notice,
            }
        }
        Outcome::Declined(decline) => {
            let mut change = base(AttemptState::Declined);
            change.checkvalue = Some("verified");
            let reason = format!("declined ({}): {}", decline.code, decline.reason);
            let retry_at = match decline.kind {
                DeclineKind::Hard => None,
                DeclineKind::Soft => {
                    subscription.and_then(|sub| dunning_retry(policy, calendar, sub, job, now))
                }
            };
            change.charge = Some(match retry_at {
                Some(at) => ChargeChange {
                    state: ChargeState::Open,
                    reason: Some(reason.clone()),
                    next_attempt_at: Some(at),
                },
                None => ChargeChange {
                    state: ChargeState::Failed,
                    reason: Some(reason.clone()),
                    next_attempt_at: None,
                },
            });
            if decline.kind == DeclineKind::Hard {
                change.attention = Some(Flag {
                    kind: flag::HARD_DECLINE,
                    reason: format!(
                        "hard decline {} ({}); resume once the customer has fixed the card",
                        decline.code, decline.reason
                    ),
                });
            }
            change.event = Some(outcome_event(
                event::DECLINED,
                job,
                &verified.outcome,
                response_code.as_deref(),
            ));
            Decided::Record {
                change,
                step: Step::Declined,
                outcome: Some(line("declined", &verified.outcome, "verified")),
                notice: None,
            }
        }
        Outcome::IntegrityFailure(why) => Decided::Quarantine { why: why.clone() },
        Outcome::NotFound if job.seen || seen_now => {
            // The gateway showed this order before (in process, say) and now says it has none:
            // that contradiction is not "never received". Sending the period again under a new
            // OrderNumber could charge twice, so an operator decides; it is still looked up
            // meanwhile, and settles if the order shows up.
            let mut change = base(AttemptState::Parked);
            change.not_found = Some(job.not_found.saturating_add(1));
            change.next_check_at = Some(now + PARKED_EVERY);
            change.detail = Some(
                "not found at the gateway after it showed the order: parked, never re-sent".into(),
            );
            let mut notice = None;
            if job.state != AttemptState::Parked {
                change.event = Some(outcome_event(event::PARKED, job, &verified.outcome, None));
                notice = Some(Notice::VanishedAfterSeen);
            }
            Decided::Record {
                change,
                step: Step::Unknown,
                outcome: None,
                notice,
            }
        }
        Outcome::NotFound => {
            // Only answers after the settle window count: before it, the gateway may simply not
            // have filed the order yet.
            let since = job.sent_at.unwrap_or(job.created_at);
            let settled = !sent_now && now - since >= policy.settle;
            let not_found = job.not_found.saturating_add(u32::from(settled));
            if settled && not_found >= 2 {
                let mut change = base(AttemptState::NotReceived);
                change.not_found = Some(not_found);
                change.charge = Some(ChargeChange {
                    state: ChargeState::Open,
                    reason: Some("the gateway never received the previous attempt".into()),
                    next_attempt_at: Some(
                        now + backoff(RESEND_BASE, RESEND_CAP, job.attempt, &job.order_number),
                    ),
                });
                change.event = Some(outcome_event(
                    event::NOT_RECEIVED,
                    job,
                    &verified.outcome,
                    None,
                ));
                return Decided::Record {
                    change,
                    step: Step::Other,
                    outcome: Some(OutcomeLine {
                        label: "not_received",
                        outcome: verified.outcome.clone(),
                        response_code: None,
                        checkvalue: "absent",
                    }),
                    notice: None,
                };
            }
            let (mut change, notice) = still_unknown(policy, job, base, now);
            change.not_found = Some(not_found);
            Decided::Record {
                change,
                step: Step::Unknown,
                outcome: None,
                notice,
            }
        }
        _ => {
            let (change, notice) = still_unknown(policy, job, base, now);
            Decided::Record {
                change,
                step: Step::Unknown,
                outcome: claim.map(|c| line("unknown", &c.outcome, "absent")),
                notice,
            }
        }
    }
}

/// The outcome is still open: look again later with backoff; park it for an operator once it
/// has been open too long. A failed status query changes nothing else.
fn still_unknown(
    policy: &Policy,
    job: &Job,
    base: impl Fn(AttemptState) -> AttemptChange,
    now: DateTime<Utc>,
) -> (AttemptChange, Option<Notice>) {
    let parked = now - job.created_at > policy.park_after;
    let state = if parked {
        AttemptState::Parked
    } else {
        AttemptState::Unknown
    };
    let mut change = base(state);
    change.next_check_at = Some(
        now + if parked {
            PARKED_EVERY
        } else {
            backoff(STATUS_BASE, STATUS_CAP, job.checks, &job.order_number)
        },
    );
    let mut notice = None;
    if state != job.state {
        let kind = if parked {
            event::PARKED
        } else {
            event::UNKNOWN
        };
        change.event = Some(outcome_event(kind, job, &Outcome::Pending, None));
        if parked {
            notice = Some(Notice::ParkedTooLong);
        }
    }
    (change, notice)
}

/// When a soft-declined period is tried again: the next dunning day, if it comes before the
/// next period is due, within the agreement's end date and the 30-day attempt budget.
fn dunning_retry(
    policy: &Policy,
    calendar: &Calendar,
    subscription: &StoredSubscription,
    job: &Job,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // An ad-hoc charge is not retried: the operator asks again (with a new reference).
    let period = job.purpose.period()?;
    let index = usize::try_from(job.attempt.saturating_sub(1)).ok()?;
    let days = *policy.dunning_days.get(index)?;
    let at = now + Duration::days(i64::from(days));
    let terms = &subscription.terms;
    let next_due = billing::due_date(terms, period + 1).map(|date| calendar.due_instant(date));
    if next_due.is_some_and(|next| at >= next) {
        return None;
    }
    if terms
        .limits
        .max_date
        .is_some_and(|max| calendar.local_date(at) > max)
    {
        return None;
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Cadence, CatchUp, Limits, SubscriptionState, Terms, Unit};
    use crate::config::{BillingConfig, EngineConfig};
    use crate::gateway::outcome::Decline;
    use crate::lifecycle::Purpose;
    use crate::money::{Currency, Money};
    use chrono::{NaiveDate, NaiveTime};

    fn t(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::from(&EngineConfig::default())
    }

    fn calendar() -> Calendar {
        Calendar::from(&BillingConfig {
            timezone: "Europe/Moscow".parse().unwrap(),
            charge_time: NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace_hours: 24,
        })
    }

    /// Period 2's first attempt, sent at 07:00 on 2027-03-01 (intent the same instant).
    fn job() -> Job {
        let at = t("2027-03-01T07:00:00Z");
        Job {
            attempt_id: 7,
            charge_id: 3,
            subscription_id: "s1".into(),
            purpose: Purpose::Period(2),
            attempt: 1,
            order_number: "P-s1-2-1".into(),
            bill_number: "5100000000000001".into(),
            amount: Money::parse("499.00").unwrap(),
            currency: Currency::parse("RUB").unwrap(),
            state: AttemptState::Unknown,
            created_at: at,
            wall_at: at,
            sent: true,
            checks: 1,
            not_found: 0,
            test_mode: Some(true),
            response_code: None,
            sent_at: Some(at),
            seen: false,
            fence: 0,
        }
    }

    fn subscription() -> StoredSubscription {
        let at = t("2027-01-01T00:00:00Z");
        StoredSubscription {
            id: "s1".into(),
            file: "a.toml".into(),
            line: 1,
            customer: None,
            bill_number: "5100000000000001".into(),
            currency: Currency::parse("RUB").unwrap(),
            terms: Terms {
                amount: Money::parse("499.00").unwrap(),
                every: Cadence::new(1, Unit::Month).unwrap(),
                start: NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
                state: SubscriptionState::Active,
                catch_up: None,
                limits: Limits::default(),
            },
            created_at: at,
            updated_at: at,
            removed_at: None,
        }
    }

    fn verified(outcome: Outcome) -> Verified {
        Verified {
            checkvalue_verified: matches!(outcome, Outcome::Approved | Outcome::Declined(_)),
            approved_orders: usize::from(outcome == Outcome::Approved),
            outcome,
            test_mode: Some(true),
            response_code: None,
            bill_number: None,
            pending_orders: 0,
            reversals: None,
        }
    }

    fn decide(job: &Job, verified: &Verified, now: DateTime<Utc>) -> Decided {
        let sub = subscription();
        conclusion(job, verified, None, now, &policy(), &calendar(), Some(&sub))
    }

    fn recorded(decided: Decided) -> (AttemptChange, Step, Option<OutcomeLine>, Option<Notice>) {
        match decided {
            Decided::Record {
                change,
                step,
                outcome,
                notice,
            } => (change, step, outcome, notice),
            Decided::Quarantine { why } => panic!("quarantined: {why}"),
        }
    }

    #[test]
    fn a_verified_approval_pays_the_period_once_with_its_event() {
        let (change, step, outcome, notice) = recorded(decide(
            &job(),
            &verified(Outcome::Approved),
            t("2027-03-01T08:00:00Z"),
        ));
        assert_eq!(change.state, AttemptState::Approved);
        assert_eq!(change.charge.unwrap().state, ChargeState::Paid);
        assert_eq!(change.event.unwrap().kind, event::APPROVED);
        assert!(change.attention.is_none());
        assert_eq!(step, Step::Approved);
        assert_eq!(outcome.unwrap().label, "approved");
        assert_eq!(notice, None);
    }

    #[test]
    fn a_second_order_under_the_same_number_is_booked_once_and_flagged() {
        let mut answer = verified(Outcome::Approved);
        answer.approved_orders = 2;
        let (change, _, _, notice) = recorded(decide(&job(), &answer, t("2027-03-01T08:00:00Z")));
        assert_eq!(change.state, AttemptState::Approved);
        assert_eq!(change.attention.unwrap().kind, flag::DOUBLE_APPROVAL);
        assert_eq!(
            notice,
            Some(Notice::DoubleApproval {
                approved: 2,
                pending: 0
            })
        );
    }

    #[test]
    fn a_soft_decline_is_retried_on_the_first_dunning_day_and_a_hard_one_flags() {
        let now = t("2027-03-01T08:00:00Z");
        let soft = Outcome::Declined(Decline {
            kind: DeclineKind::Soft,
            code: "AS102".into(),
            reason: "insufficient funds",
        });
        let (change, step, _, _) = recorded(decide(&job(), &verified(soft), now));
        let charge = change.charge.unwrap();
        assert_eq!(step, Step::Declined);
        assert_eq!(charge.state, ChargeState::Open);
        assert_eq!(charge.next_attempt_at, Some(now + Duration::days(1)));
        assert!(change.attention.is_none());

        let hard = Outcome::Declined(Decline {
            kind: DeclineKind::Hard,
            code: "AS104".into(),
            reason: "card expired",
        });
        let (change, _, _, _) = recorded(decide(&job(), &verified(hard), now));
        assert_eq!(change.charge.unwrap().state, ChargeState::Failed);
        assert_eq!(change.attention.unwrap().kind, flag::HARD_DECLINE);
    }

    #[test]
    fn not_found_proves_nothing_inside_the_settle_window_and_twice_after_it() {
        let job = job();
        // Inside the settle window (30 min): still unknown, not counted.
        let (change, step, _, _) = recorded(decide(
            &job,
            &verified(Outcome::NotFound),
            t("2027-03-01T07:10:00Z"),
        ));
        assert_eq!(change.state, AttemptState::Unknown);
        assert_eq!(change.not_found, Some(0));
        assert_eq!(step, Step::Unknown);
        // After it: counted once, still unknown.
        let after = t("2027-03-01T08:00:00Z");
        let (change, _, _, _) = recorded(decide(&job, &verified(Outcome::NotFound), after));
        assert_eq!(change.state, AttemptState::Unknown);
        assert_eq!(change.not_found, Some(1));
        // A second one after it: never received, the period open again for a new attempt.
        let mut again = job.clone();
        again.not_found = 1;
        let (change, step, outcome, _) =
            recorded(decide(&again, &verified(Outcome::NotFound), after));
        assert_eq!(change.state, AttemptState::NotReceived);
        assert_eq!(change.charge.unwrap().state, ChargeState::Open);
        assert_eq!(step, Step::Other);
        assert_eq!(outcome.unwrap().label, "not_received");
    }

    #[test]
    fn an_order_the_gateway_showed_is_parked_not_re_sent_when_it_vanishes() {
        let mut seen = job();
        seen.seen = true;
        seen.not_found = 5;
        let (change, _, _, notice) = recorded(decide(
            &seen,
            &verified(Outcome::NotFound),
            t("2027-03-02T07:00:00Z"),
        ));
        assert_eq!(change.state, AttemptState::Parked);
        assert!(change.charge.is_none());
        assert_eq!(notice, Some(Notice::VanishedAfterSeen));
    }

    #[test]
    fn an_answer_failing_verification_quarantines_and_pending_long_enough_parks() {
        let failed = verified(Outcome::IntegrityFailure("checkvalue mismatch".into()));
        assert!(matches!(
            decide(&job(), &failed, t("2027-03-01T08:00:00Z")),
            Decided::Quarantine { .. }
        ));
        // In process for longer than park_after (72 h): parked for an operator.
        let (change, _, _, notice) = recorded(decide(
            &job(),
            &verified(Outcome::Pending),
            t("2027-03-05T08:00:00Z"),
        ));
        assert_eq!(change.state, AttemptState::Parked);
        assert_eq!(notice, Some(Notice::ParkedTooLong));
        assert!(change.seen, "in process is evidence the gateway holds it");
    }
}
