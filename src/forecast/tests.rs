use std::path::Path;

use chrono::{Duration, TimeZone};

use super::*;
use crate::config::CatchUp;
use crate::schedule::parse_text;
use crate::store::{AttemptState, LastAttempt};

fn calendar() -> Calendar {
    Calendar {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace: Duration::hours(24),
    }
}

/// 07:00 UTC (10:00 in Moscow) on a day of 2027.
fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, month, day, 7, 0, 0).unwrap()
}

fn date(month: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, month, day).unwrap()
}

fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

/// Monthly from 2027-01-01, 100.00 RUB, at least 28 days between charges.
fn subscription() -> Subscription {
    let text = "[[subscription]]\nid = \"s1\"\nbill_number = \"5899110210668265\"\n\
                currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\n\
                start = 2027-01-01\n[subscription.limits]\nperiod_days = 28\n";
    let report = parse_text(Path::new("s.toml"), text);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    report.subscriptions[0].clone()
}

fn period(
    n: u32,
    due: NaiveDate,
    state: ChargeState,
    attempt: Option<(AttemptState, DateTime<Utc>)>,
) -> LedgerPeriod {
    LedgerPeriod {
        period: n,
        due_date: due,
        state,
        reason: None,
        amount: money("100.00"),
        currency: Currency::parse("RUB").unwrap(),
        next_attempt_at: None,
        last_attempt: attempt.map(|(state, at)| LastAttempt {
            attempt: 1,
            state,
            order_number: format!("P-s1-{n}-1"),
            at,
            detail: Some("AS102: declined, try again later".into()),
            refunded: None,
        }),
    }
}

/// Periods 0 and 1 charged on their due instants.
fn two_charged() -> LedgerState {
    LedgerState {
        next_period: 2,
        charged: vec![at(1, 1), at(2, 1)],
        attempts: vec![at(1, 1), at(2, 1)],
        periods: vec![
            period(
                0,
                date(1, 1),
                ChargeState::Paid,
                Some((AttemptState::Approved, at(1, 1))),
            ),
            period(
                1,
                date(2, 1),
                ChargeState::Paid,
                Some((AttemptState::Approved, at(2, 1))),
            ),
        ],
        attention: None,
    }
}

fn run(ledger: &LedgerState, from: DateTime<Utc>, days: i64) -> Forecast {
    let sub = subscription();
    forecast_from_ledger(
        [(&sub, ledger)],
        &calendar(),
        8,
        from,
        from + Duration::days(days),
    )
}

fn summary(forecast: &Forecast) -> Vec<(u32, &'static str, DateTime<Utc>)> {
    forecast
        .entries
        .iter()
        .map(|e| (e.period, e.status.as_str(), e.at))
        .collect()
}

#[test]
fn without_a_ledger_every_subscription_starts_at_its_first_period() {
    let sub = subscription();
    let f = forecast(
        [&sub],
        &calendar(),
        at(1, 1) - Duration::hours(1),
        at(3, 10),
    );
    assert_eq!(f.source, Source::Schedules);
    assert_eq!(
        summary(&f),
        [
            (0, "charge", at(1, 1)),
            (1, "charge", at(2, 1)),
            (2, "charge", at(3, 1))
        ]
    );
    assert_eq!(f.totals["RUB"], "300.00");
}

#[test]
fn the_ledger_starts_after_the_last_settled_period_and_shows_what_it_recorded() {
    let f = run(&two_charged(), at(1, 15), 60);
    assert_eq!(f.source, Source::Ledger);
    // Period 0 is before the window; period 1 is history, not forecast; period 2 comes next.
    assert_eq!(
        summary(&f),
        [(1, "charged", at(2, 1)), (2, "charge", at(3, 1))]
    );
    assert_eq!(f.entries[0].order_number.as_deref(), Some("P-s1-1-1"));
    assert_eq!(f.entries[1].order_number, None);
    assert_eq!(f.totals["RUB"], "100.00", "only what is still to come");
    // An empty ledger (a subscription the daemon has not charged yet) is the schedule alone.
    let f = run(&LedgerState::default(), at(1, 1) - Duration::hours(1), 40);
    assert_eq!(
        summary(&f),
        [(0, "charge", at(1, 1)), (1, "charge", at(2, 1))]
    );
}

#[test]
fn the_period_limit_counts_from_the_real_last_charge() {
    // Period 1 was charged late, on 20 February: period 2 (due 1 March) is deferred to the 28th
    // day after it, 20 March, which is still before period 3 is due.
    let mut ledger = two_charged();
    ledger.charged[1] = at(2, 20);
    ledger.periods[1].last_attempt.as_mut().unwrap().at = at(2, 20);
    let f = run(&ledger, at(2, 25), 60);
    // And period 3 (due 1 April) in turn waits for 28 days after 20 March.
    assert_eq!(
        summary(&f),
        [(2, "charge", at(3, 20)), (3, "charge", at(4, 17))]
    );
    let reason = f.entries[0].reason.as_deref().unwrap();
    assert!(
        reason.starts_with("deferred from 2027-03-01T07:00:00"),
        "{reason}"
    );
    assert!(
        reason.contains("fewer than 28 days since the previous charge on 2027-02-20"),
        "{reason}"
    );
    // An enrolment's initial payment counts the same way.
    let enrolled = LedgerState {
        charged: vec![at(1, 1) - Duration::days(10)],
        ..LedgerState::default()
    };
    let f = run(&enrolled, at(1, 1) - Duration::hours(1), 40);
    assert_eq!(summary(&f)[0], (0, "charge", at(1, 19)));
}

#[test]
fn a_subscription_waiting_for_an_operator_is_not_forecast() {
    let mut ledger = two_charged();
    ledger.periods[1].state = ChargeState::Failed;
    ledger.periods[1].last_attempt.as_mut().unwrap().state = AttemptState::Declined;
    ledger.charged.pop();
    ledger.attention = Some(("hard decline AS101".into(), at(2, 1)));
    let f = run(&ledger, at(1, 15), 90);
    assert_eq!(
        summary(&f),
        [(1, "failed", at(2, 1)), (2, "attention", at(2, 1))]
    );
    let reason = f.entries[1].reason.as_deref().unwrap();
    assert!(
        reason.contains("hard decline AS101") && reason.contains("recurrentd resume"),
        "{reason}"
    );
    assert!(f.totals.is_empty());
}

#[test]
fn an_open_period_is_retried_at_its_scheduled_retry() {
    let mut ledger = two_charged();
    ledger.charged.pop();
    let open = &mut ledger.periods[1];
    open.state = ChargeState::Open;
    open.amount = money("90.00");
    open.next_attempt_at = Some(at(2, 4));
    open.last_attempt.as_mut().unwrap().state = AttemptState::Declined;
    let f = run(&ledger, at(2, 2), 40);
    // The retry on 4 February, then period 2 deferred to 28 days after the retry.
    assert_eq!(
        summary(&f),
        [(1, "retry", at(2, 4)), (2, "charge", at(3, 4))]
    );
    let retry = &f.entries[0];
    assert_eq!(retry.amount, money("90.00"), "the period's own amount");
    assert_eq!(
        retry.reason.as_deref(),
        Some("attempt 2 after: AS102: declined, try again later")
    );
    assert_eq!(retry.order_number.as_deref(), Some("P-s1-1-1"));
    assert_eq!(f.totals["RUB"], "190.00");

    // A retry that would come after the next period is due: the period fails, the next one is
    // charged on time.
    ledger.periods[1].next_attempt_at = Some(at(3, 2));
    let f = run(&ledger, at(2, 2), 40);
    assert_eq!(
        summary(&f),
        [(1, "failed", at(3, 1)), (2, "charge", at(3, 1))]
    );

    // No attempts left in the 30-day budget.
    ledger.periods[1].next_attempt_at = Some(at(2, 4));
    ledger.attempts = (0..8).map(|i| at(1, 10) + Duration::days(i)).collect();
    let f = run(&ledger, at(2, 2), 20);
    assert_eq!(summary(&f)[0], (1, "failed", at(2, 4)));
    assert!(
        f.entries[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("30-day budget")
    );
}

#[test]
fn unresolved_and_parked_attempts_are_shown_with_their_state() {
    let mut ledger = two_charged();
    ledger.periods[1].state = ChargeState::Open;
    ledger.periods[1].last_attempt.as_mut().unwrap().state = AttemptState::Unknown;
    let f = run(&ledger, at(2, 2), 40);
    // Counted as charged: the next period is charged as if it had been.
    assert_eq!(
        summary(&f),
        [(1, "unresolved", at(2, 2)), (2, "charge", at(3, 1))]
    );
    assert!(
        f.entries[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("attempt 1 is unknown")
    );
    assert_eq!(f.totals["RUB"], "100.00");

    ledger.periods[1].last_attempt.as_mut().unwrap().state = AttemptState::Parked;
    let f = run(&ledger, at(2, 2), 40);
    assert_eq!(summary(&f), [(1, "attention", at(2, 2))]);
    assert!(f.entries[0].reason.as_deref().unwrap().contains("parked"));
}

#[test]
fn periods_the_ledger_blocked_or_skipped_are_shown_as_such() {
    let mut ledger = two_charged();
    ledger.periods[0].state = ChargeState::Skipped;
    ledger.periods[0].last_attempt = None;
    ledger.periods[0].reason = Some("missed while not running".into());
    ledger.periods[1].state = ChargeState::Blocked;
    ledger.periods[1].last_attempt = None;
    ledger.periods[1].reason = Some("subscription is paused".into());
    ledger.charged.clear();
    let f = run(&ledger, at(1, 1) - Duration::hours(1), 70);
    assert_eq!(
        summary(&f),
        [
            (0, "skipped", at(1, 1)),
            (1, "blocked", at(2, 1)),
            (2, "charge", at(3, 1))
        ]
    );
    assert_eq!(
        f.entries[1].reason.as_deref(),
        Some("subscription is paused")
    );
}

/// A rehearsal from 1 Jan (before period 0's due instant) to a cutoff: what it left unmade.
#[test]
fn unmade_counts_due_charges_skipped_for_lateness_or_never_attempted() {
    let cal = calendar();
    let sub = subscription();
    let start = at(1, 1) - Duration::hours(1);
    // Two periods charged on time, nothing due after them by 15 February: nothing unmade.
    assert_eq!(
        unmade(&sub, &two_charged(), &cal, start, at(2, 15)).total(),
        0
    );
    // By 1 April, periods 2 (1 March) and 3 (1 April) were due and never attempted: a sweep
    // then skips period 2 (superseded) and charges period 3; both count.
    let behind = unmade(&sub, &two_charged(), &cal, start, at(4, 1));
    assert_eq!(
        behind,
        Unmade {
            skipped: 0,
            not_attempted: 2
        }
    );
    // The engine reached them late: period 2 skipped for lateness, period 3 charged.
    let mut late = two_charged();
    let mut skipped = period(2, date(3, 1), ChargeState::Skipped, None);
    skipped.reason = Some(billing::SkipReason::Superseded { by_period: 3 }.to_string());
    late.periods.push(skipped);
    late.periods.push(period(
        3,
        date(4, 1),
        ChargeState::Paid,
        Some((AttemptState::Approved, at(4, 2))),
    ));
    late.next_period = 4;
    late.charged.push(at(4, 2));
    assert_eq!(
        unmade(&sub, &late, &cal, start, at(4, 15)),
        Unmade {
            skipped: 1,
            not_attempted: 0
        }
    );
    // A skip for lateness of a period due before the rehearsal started is history: not counted.
    assert_eq!(unmade(&sub, &late, &cal, at(3, 2), at(4, 15)).total(), 0);
    // A period skipped by the limits is not a charge left unmade.
    let mut limited = two_charged();
    let mut too_soon = period(2, date(3, 1), ChargeState::Skipped, None);
    too_soon.reason = Some("too soon after the last charge, and not before the next period".into());
    limited.periods.push(too_soon);
    limited.next_period = 3;
    assert_eq!(unmade(&sub, &limited, &cal, start, at(3, 15)).total(), 0);
    // Waiting for an operator (a hard decline): the engine rightly charges nothing.
    let mut held = two_charged();
    held.attention = Some(("AS101 hard decline".into(), at(2, 1)));
    assert_eq!(unmade(&sub, &held, &cal, start, at(4, 1)).total(), 0);
    // An open period whose retry fell due and was not made counts once.
    let mut open = two_charged();
    let mut retry = period(
        2,
        date(3, 1),
        ChargeState::Open,
        Some((AttemptState::Declined, at(3, 1))),
    );
    retry.next_attempt_at = Some(at(3, 2));
    open.periods.push(retry);
    open.next_period = 3;
    assert_eq!(unmade(&sub, &open, &cal, start, at(3, 10)).not_attempted, 1);
    // A quarantined (or unknown, or parked) attempt holds the subscription: the periods due
    // after it are rightly not attempted until it settles.
    for state in [
        AttemptState::Quarantined,
        AttemptState::Unknown,
        AttemptState::Parked,
    ] {
        let mut held = two_charged();
        held.periods.push(period(
            2,
            date(3, 1),
            ChargeState::Open,
            Some((state, at(3, 1))),
        ));
        held.next_period = 3;
        held.charged.push(at(3, 1));
        assert_eq!(
            unmade(&sub, &held, &cal, start, at(5, 2)).total(),
            0,
            "{state}"
        );
    }
}
