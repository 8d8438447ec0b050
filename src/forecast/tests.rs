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
