use super::*;
use chrono_tz::Tz;
use proptest::prelude::*;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn calendar(tz: Tz, hh: u32, mm: u32) -> Calendar {
    Calendar {
        timezone: tz,
        charge_time: NaiveTime::from_hms_opt(hh, mm, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace: Duration::hours(24),
    }
}

fn moscow() -> Calendar {
    calendar(chrono_tz::Europe::Moscow, 10, 0)
}

fn terms(every: &str, start: NaiveDate) -> Terms {
    Terms {
        amount: money("499.00"),
        every: Cadence::parse(every).unwrap(),
        start,
        state: SubscriptionState::Active,
        catch_up: None,
        limits: Limits::default(),
    }
}

fn dates(terms: &Terms, n: u32) -> Vec<NaiveDate> {
    (0..n).map(|k| due_date(terms, k).unwrap()).collect()
}

#[test]
fn cadence_parsing() {
    assert_eq!(Cadence::parse("1 month").unwrap().to_string(), "1 month");
    assert_eq!(Cadence::parse("2 weeks").unwrap().to_string(), "2 weeks");
    assert_eq!(Cadence::parse("1 days").unwrap().to_string(), "1 day");
    for bad in [
        "month",
        "0 months",
        "1  month",
        "1 fortnight",
        "-1 day",
        "1000 days",
        " 1 day",
        "1 Month",
    ] {
        assert!(Cadence::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn month_end_anchor_clamps_and_returns() {
    let t = terms("1 month", date(2027, 1, 31));
    assert_eq!(
        dates(&t, 5),
        [
            date(2027, 1, 31),
            date(2027, 2, 28),
            date(2027, 3, 31),
            date(2027, 4, 30),
            date(2027, 5, 31)
        ]
    );
}

#[test]
fn leap_years_and_feb_29_anchors() {
    let monthly = terms("1 month", date(2028, 1, 31));
    assert_eq!(due_date(&monthly, 1), Some(date(2028, 2, 29)));
    let yearly = terms("1 year", date(2028, 2, 29));
    assert_eq!(
        dates(&yearly, 5),
        [
            date(2028, 2, 29),
            date(2029, 2, 28),
            date(2030, 2, 28),
            date(2031, 2, 28),
            date(2032, 2, 29)
        ]
    );
    // 2100 is not a leap year.
    let century = terms("4 years", date(2096, 2, 29));
    assert_eq!(due_date(&century, 1), Some(date(2100, 2, 28)));
    assert_eq!(due_date(&century, 2), Some(date(2104, 2, 29)));
}

#[test]
fn weeks_and_days() {
    let t = terms("2 weeks", date(2026, 12, 28));
    assert_eq!(due_date(&t, 1), Some(date(2027, 1, 11)));
    let t = terms("10 days", date(2027, 2, 25));
    assert_eq!(due_date(&t, 1), Some(date(2027, 3, 7)));
}

#[test]
fn due_instant_follows_dst() {
    let berlin = calendar(chrono_tz::Europe::Berlin, 10, 0);
    // Winter: UTC+1; summer: UTC+2.
    assert_eq!(
        berlin.due_instant(date(2027, 3, 27)),
        utc("2027-03-27T09:00:00Z")
    );
    assert_eq!(
        berlin.due_instant(date(2027, 3, 28)),
        utc("2027-03-28T08:00:00Z")
    );
    assert_eq!(
        berlin.due_instant(date(2027, 10, 31)),
        utc("2027-10-31T09:00:00Z")
    );
}

#[test]
fn charge_time_inside_a_dst_gap_or_overlap() {
    // 2027-03-28 02:30 does not exist in Berlin (02:00 → 03:00): due at the jump, 01:00Z.
    let gap = calendar(chrono_tz::Europe::Berlin, 2, 30);
    assert_eq!(
        gap.due_instant(date(2027, 3, 28)),
        utc("2027-03-28T01:00:00Z")
    );
    // 2027-10-31 02:30 happens twice: the earlier one (still UTC+2) is used.
    assert_eq!(
        gap.due_instant(date(2027, 10, 31)),
        utc("2027-10-31T00:30:00Z")
    );
    // New York's gap is 02:00–03:00 on 2027-03-14.
    let ny = calendar(chrono_tz::America::New_York, 2, 15);
    assert_eq!(
        ny.due_instant(date(2027, 3, 14)),
        utc("2027-03-14T07:00:00Z")
    );
}

#[test]
fn a_weekly_charge_is_not_blocked_by_an_hour_of_dst() {
    // Weekly with period_days = 7 across the spring change: 167 hours apart, 7 local days.
    let berlin = calendar(chrono_tz::Europe::Berlin, 10, 0);
    let mut t = terms("1 week", date(2027, 3, 21));
    t.limits.period_days = Some(7);
    let first = berlin.due_instant(date(2027, 3, 21));
    let second = berlin.due_instant(date(2027, 3, 28));
    assert_eq!(second - first, Duration::hours(167));
    assert_eq!(verdict(&t, &berlin, &[first], t.amount, second), Ok(()));
    // And across the autumn change (169 hours), one day early is still blocked.
    let early = berlin.due_instant(date(2027, 11, 5));
    let prev = berlin.due_instant(date(2027, 10, 30));
    assert!(matches!(
        verdict(&t, &berlin, &[prev], t.amount, early),
        Err(BlockReason::TooSoon { earliest, .. }) if earliest == date(2027, 11, 6)
    ));
}

#[test]
fn verdict_reasons() {
    let cal = moscow();
    let mut t = terms("1 month", date(2027, 1, 1));
    t.limits = Limits {
        min_amount: Some(money("100.00")),
        max_amount: Some(money("1000.00")),
        period_days: Some(28),
        max_date: Some(date(2027, 12, 1)),
    };
    let at = cal.due_instant(date(2027, 2, 1));
    assert_eq!(verdict(&t, &cal, &[], money("100.00"), at), Ok(()));
    assert_eq!(verdict(&t, &cal, &[], money("1000.00"), at), Ok(()));
    assert!(matches!(
        verdict(&t, &cal, &[], money("99.99"), at),
        Err(BlockReason::BelowMin { .. })
    ));
    assert!(matches!(
        verdict(&t, &cal, &[], money("1000.01"), at),
        Err(BlockReason::AboveMax { .. })
    ));
    let late = cal.due_instant(date(2027, 12, 2));
    assert!(matches!(
        verdict(&t, &cal, &[], t.amount, late),
        Err(BlockReason::AfterMaxDate { .. })
    ));
    // max_date is read in the configured zone: 23:30 Moscow on the last day is still allowed,
    // though it is the same day in UTC only until 21:00Z.
    let last_evening = utc("2027-12-01T20:30:00Z");
    assert_eq!(verdict(&t, &cal, &[], t.amount, last_evening), Ok(()));
    let prev = cal.due_instant(date(2027, 1, 10));
    assert!(matches!(
        verdict(&t, &cal, &[prev], t.amount, at),
        Err(BlockReason::TooSoon { .. })
    ));
    t.state = SubscriptionState::Paused;
    assert_eq!(
        verdict(&t, &cal, &[], t.amount, at),
        Err(BlockReason::Paused)
    );
}

#[test]
fn decide_waits_then_charges_on_time() {
    let cal = moscow();
    let t = terms("1 month", date(2027, 1, 31));
    let plan = decide(&t, &cal, 0, &[], utc("2027-01-01T00:00:00Z"));
    assert_eq!(
        plan.next,
        Next::Wait {
            period: 0,
            due_date: date(2027, 1, 31),
            due_at: utc("2027-01-31T07:00:00Z")
        }
    );
    let plan = decide(&t, &cal, 1, &[], utc("2027-02-28T07:00:00Z"));
    assert!(plan.settled.is_empty());
    assert_eq!(
        plan.next,
        Next::Charge {
            period: 1,
            due_date: date(2027, 2, 28)
        }
    );
}

/// A start date centuries ago: the latest due period is found exactly (it was capped at 10 000
/// periods by a scan, so a non-latest period was charged as the latest, again at every sweep),
/// and everything before it is one skipped run.
#[test]
fn catch_up_is_exact_whatever_the_gap() {
    let cal = moscow();
    let t = terms("1 day", date(1800, 1, 1));
    let now = utc("2026-12-06T12:00:00Z");
    let today = date(2026, 12, 6);
    let expected = u32::try_from((today - date(1800, 1, 1)).num_days()).unwrap();
    let plan = decide(&t, &cal, 0, &[], now);
    assert_eq!(
        plan.next,
        Next::Charge {
            period: expected,
            due_date: today
        }
    );
    assert_eq!(plan.settled.len(), 1, "one run, not {expected} rows");
    let run = &plan.settled[0];
    assert_eq!((run.first, run.period), (0, expected - 1));
    assert_eq!(run.first_due_date, date(1800, 1, 1));
    assert!(
        run.describe()
            .starts_with(&format!("{expected} periods, #0 (1800-01-01)"))
    );
    // The next sweep, after that charge, waits for tomorrow instead of charging again.
    let plan = decide(&t, &cal, expected + 1, &[now], now + Duration::minutes(1));
    assert!(plan.settled.is_empty());
    assert!(matches!(plan.next, Next::Wait { period, .. } if period == expected + 1));
}

#[test]
fn a_start_before_2000_is_a_problem() {
    let problems = check_terms(&terms("1 day", date(1800, 1, 1)));
    assert!(
        problems
            .iter()
            .any(|p| p.field == "start" && p.message.contains("before 2000-01-01")),
        "{problems:?}"
    );
    assert!(check_terms(&terms("1 day", date(2000, 1, 1))).is_empty());
}

#[test]
fn catch_up_latest_charges_only_the_latest_missed_period() {
    let cal = moscow();
    let t = terms("1 month", date(2027, 1, 1));
    let plan = decide(&t, &cal, 0, &[], utc("2027-04-15T12:00:00Z"));
    let skipped: Vec<(u32, u32)> = plan.settled.iter().map(|s| (s.first, s.period)).collect();
    assert_eq!(skipped, [(0, 2)], "one run: periods 0 to 2");
    assert!(plan.settled.iter().all(|s| matches!(
        s.outcome,
        SettledOutcome::Skipped(SkipReason::Superseded { by_period: 3 })
    )));
    assert_eq!(
        plan.next,
        Next::Charge {
            period: 3,
            due_date: date(2027, 4, 1)
        }
    );
}

#[test]
fn catch_up_none_skips_missed_periods_and_resumes_at_the_next() {
    let cal = moscow();
    let mut t = terms("1 month", date(2027, 1, 1));
    t.catch_up = Some(CatchUp::None);
    let plan = decide(&t, &cal, 0, &[], utc("2027-04-15T12:00:00Z"));
    assert_eq!(plan.settled.len(), 1);
    assert_eq!((plan.settled[0].first, plan.settled[0].period), (0, 3));
    assert_eq!(plan.settled[0].count(), 4);
    assert!(plan.settled.iter().all(|s| matches!(
        s.outcome,
        SettledOutcome::Skipped(SkipReason::Missed { .. })
    )));
    assert_eq!(
        plan.next,
        Next::Wait {
            period: 4,
            due_date: date(2027, 5, 1),
            due_at: utc("2027-05-01T07:00:00Z")
        }
    );
    // Within the grace time the latest period is still charged.
    let plan = decide(&t, &cal, 0, &[], utc("2027-04-01T20:00:00Z"));
    assert_eq!(plan.settled.len(), 1);
    assert_eq!(plan.settled[0].count(), 3);
    assert_eq!(
        plan.next,
        Next::Charge {
            period: 3,
            due_date: date(2027, 4, 1)
        }
    );
}

#[test]
fn a_charge_blocked_only_by_the_gap_is_deferred_or_skipped() {
    let cal = moscow();
    let mut t = terms("1 month", date(2027, 1, 1));
    t.limits.period_days = Some(20);
    // An ad-hoc charge on Jan 20 makes Feb 1 too early; Feb 9 is allowed, before Mar 1.
    let adhoc = cal.due_instant(date(2027, 1, 20));
    let plan = decide(&t, &cal, 1, &[adhoc], cal.due_instant(date(2027, 2, 1)));
    assert_eq!(
        plan.next,
        Next::Defer {
            period: 1,
            due_date: date(2027, 2, 1),
            until: cal.due_instant(date(2027, 2, 9))
        }
    );
    let plan = decide(&t, &cal, 1, &[adhoc], cal.due_instant(date(2027, 2, 9)));
    assert_eq!(
        plan.next,
        Next::Charge {
            period: 1,
            due_date: date(2027, 2, 1)
        }
    );

    // With period_days = 35 the earliest (Feb 24) is before Mar 1: deferred. With 45 it is
    // not: skipped, and the plan waits for March.
    t.limits.period_days = Some(45);
    let plan = decide(&t, &cal, 1, &[adhoc], cal.due_instant(date(2027, 2, 1)));
    assert!(matches!(
        &plan.settled[..],
        [Settled {
            period: 1,
            outcome: SettledOutcome::Skipped(SkipReason::TooSoon(_)),
            ..
        }]
    ));
    assert!(matches!(plan.next, Next::Wait { period: 2, .. }));
}

#[test]
fn other_blocks_settle_the_period_with_the_reason() {
    let cal = moscow();
    let mut t = terms("1 month", date(2027, 1, 1));
    t.state = SubscriptionState::Paused;
    let plan = decide(&t, &cal, 0, &[], cal.due_instant(date(2027, 1, 1)));
    assert_eq!(
        plan.settled[0].outcome,
        SettledOutcome::Blocked(BlockReason::Paused)
    );
    assert!(matches!(plan.next, Next::Wait { period: 1, .. }));
    t.state = SubscriptionState::Cancelled;
    assert_eq!(
        decide(&t, &cal, 0, &[], cal.due_instant(date(2027, 1, 1))).next,
        Next::Ended(EndReason::Cancelled)
    );
}

#[test]
fn ends_after_max_date() {
    let cal = moscow();
    let mut t = terms("1 month", date(2027, 1, 15));
    t.limits.max_date = Some(date(2027, 3, 1));
    let plan = decide(&t, &cal, 2, &[], cal.due_instant(date(2027, 2, 20)));
    assert_eq!(plan.next, Next::Ended(EndReason::PastMaxDate));
}

#[test]
fn check_terms_finds_cadences_that_break_their_limits() {
    let mut t = terms("1 month", date(2027, 1, 31));
    t.limits.period_days = Some(30);
    let problems = check_terms(&t);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "every");
    assert!(
        problems[0]
            .message
            .contains("28-day gap (2027-01-31 → 2027-02-28)"),
        "{}",
        problems[0].message
    );
    t.limits.period_days = Some(28);
    assert!(check_terms(&t).is_empty());

    let mut t = terms("1 year", date(2028, 2, 29));
    t.limits.period_days = Some(366);
    assert!(check_terms(&t)[0].message.contains("365-day gap"));

    let mut t = terms("1 month", date(2027, 6, 1));
    t.limits = Limits {
        min_amount: Some(money("500.00")),
        max_amount: Some(money("100.00")),
        period_days: None,
        max_date: Some(date(2027, 5, 1)),
    };
    let fields: Vec<&str> = check_terms(&t).iter().map(|p| p.field).collect();
    assert_eq!(fields, ["limits.min_amount", "amount", "amount", "start"]);
}

// Property tests.

const ZONES: &[Tz] = &[
    chrono_tz::Europe::Moscow,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::America::Santiago,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Asia::Kolkata,
    chrono_tz::Pacific::Chatham,
    chrono_tz::Pacific::Apia,
    chrono_tz::UTC,
];

fn any_date() -> impl Strategy<Value = NaiveDate> {
    let base = date(2010, 1, 1);
    let plain = (0u64..365 * 30).prop_map(move |d| base + Days::new(d));
    let month_end = (2010i32..2040, 1u32..=12).prop_map(|(y, m)| date(y, m, clamped_day(31, y, m)));
    prop_oneof![plain, month_end]
}

fn any_money() -> impl Strategy<Value = Money> {
    (1i64..=200_000).prop_map(|c| Money::from_cents(c).unwrap())
}

fn any_cadence() -> impl Strategy<Value = Cadence> {
    prop_oneof![
        (1u32..=45).prop_map(|n| Cadence::new(n, Unit::Day).unwrap()),
        (1u32..=6).prop_map(|n| Cadence::new(n, Unit::Week).unwrap()),
        (1u32..=4).prop_map(|n| Cadence::new(n, Unit::Month).unwrap()),
        (1u32..=2).prop_map(|n| Cadence::new(n, Unit::Year).unwrap()),
    ]
}

prop_compose! {
    fn any_terms()(
        amount in any_money(),
        every in any_cadence(),
        start in any_date(),
        paused in prop::bool::weighted(0.1),
        catch_up in prop_oneof![Just(None), Just(Some(CatchUp::Latest)), Just(Some(CatchUp::None))],
        min_amount in prop::option::of(any_money()),
        max_amount in prop::option::of(any_money()),
        period_days in prop::option::of(1u32..=120),
        max_date_after in prop::option::of(0u64..2000),
    ) -> Terms {
        Terms {
            amount,
            every,
            start,
            state: if paused { SubscriptionState::Paused } else { SubscriptionState::Active },
            catch_up,
            limits: Limits {
                min_amount,
                max_amount,
                period_days,
                max_date: max_date_after.map(|d| start + Days::new(d)),
            },
        }
    }
}

prop_compose! {
    fn any_calendar()(
        zone in 0..ZONES.len(),
        hh in 0u32..24,
        mm in prop_oneof![Just(0u32), Just(30), 0u32..60],
        catch_up in prop_oneof![Just(CatchUp::Latest), Just(CatchUp::None)],
        grace_hours in 1i64..=72,
    ) -> Calendar {
        Calendar {
            timezone: ZONES[zone],
            charge_time: NaiveTime::from_hms_opt(hh, mm, 0).unwrap(),
            catch_up,
            grace: Duration::hours(grace_hours),
        }
    }
}

/// Time steps between sweeps: mostly a minute to a day, sometimes weeks of downtime.
fn any_steps() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![
            6 => 1i64..=24 * 60,
            3 => 60i64..=3 * 24 * 60,
            1 => 7 * 24 * 60i64..=90 * 24 * 60,
        ],
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512)
    ))]

    /// Whatever the terms, calendar, history and downtime, every charge the core allows satisfies
    /// all four limits, and no two charges are fewer than `period_days` local days apart.
    #[test]
    fn allowed_charges_always_satisfy_the_limits(
        terms in any_terms(),
        calendar in any_calendar(),
        history_days in prop::collection::vec(1u64..400, 0..3),
        start_offset_minutes in -60i64 * 24 * 60..=60 * 24 * 60,
        steps in any_steps(),
    ) {
        let start_instant = calendar.due_instant(terms.start);
        let mut charges: Vec<DateTime<Utc>> = history_days
            .iter()
            .map(|d| start_instant - Duration::days(*d as i64))
            .collect();
        let prior = charges.len();
        let mut next_period = 0u32;
        let mut now = start_instant + Duration::minutes(start_offset_minutes);
        for step in steps {
            let plan = decide(&terms, &calendar, next_period, &charges, now);
            for settled in &plan.settled {
                prop_assert!(settled.first == next_period, "runs settle from the next period");
                prop_assert!(settled.period >= settled.first);
                next_period = settled.period + 1;
            }
            if let Next::Charge { period, due_date: _ } = plan.next {
                prop_assert!(period >= next_period);
                // The independent check of the four limits and the state.
                prop_assert_eq!(terms.state, SubscriptionState::Active);
                if let Some(min) = terms.limits.min_amount { prop_assert!(terms.amount >= min); }
                if let Some(max) = terms.limits.max_amount { prop_assert!(terms.amount <= max); }
                let local = calendar.local_date(now);
                if let Some(max_date) = terms.limits.max_date { prop_assert!(local <= max_date); }
                if let (Some(days), Some(last)) = (terms.limits.period_days, charges.iter().max()) {
                    let gap = (local - calendar.local_date(*last)).num_days();
                    prop_assert!(gap >= i64::from(days), "gap {} < {}", gap, days);
                }
                charges.push(now);
                next_period = period + 1;
            }
            now += Duration::minutes(step);
        }
        // Consecutive charges made here, starting from the latest earlier one, in order.
        if let Some(days) = terms.limits.period_days {
            let made = &charges[prior..];
            let sequence: Vec<DateTime<Utc>> =
                charges[..prior].iter().max().copied().into_iter().chain(made.iter().copied()).collect();
            for pair in sequence.windows(2) {
                prop_assert!(pair[0] < pair[1]);
                let gap = (calendar.local_date(pair[1]) - calendar.local_date(pair[0])).num_days();
                prop_assert!(gap >= i64::from(days), "gap {} < {}", gap, days);
            }
        }
    }

    /// Without downtime, each period is charged at most once and on or after its due instant.
    #[test]
    fn a_period_is_never_charged_twice_or_early(
        terms in any_terms(),
        calendar in any_calendar(),
        steps in any_steps(),
    ) {
        let mut charged: Vec<u32> = Vec::new();
        let mut charges = Vec::new();
        let mut next_period = 0;
        let mut now = calendar.due_instant(terms.start) - Duration::days(3);
        for step in steps {
            let plan = decide(&terms, &calendar, next_period, &charges, now);
            if let Some(last) = plan.settled.last() { next_period = last.period + 1; }
            if let Next::Charge { period, due_date } = plan.next {
                prop_assert!(!charged.contains(&period));
                prop_assert!(calendar.due_instant(due_date) <= now);
                charged.push(period);
                charges.push(now);
                next_period = period + 1;
            }
            now += Duration::minutes(step);
        }
    }

    /// Monthly and yearly due dates land on the anchor day, clamped to the month's end, and are
    /// exactly n months from the anchor.
    #[test]
    fn month_end_clamping_returns_to_the_anchor(start in any_date(), every in any_cadence(), n in 0u32..300) {
        let t = Terms { every, ..terms("1 month", start) };
        let due = due_date(&t, n).unwrap();
        match every.unit() {
            Unit::Month | Unit::Year => {
                let months = if every.unit() == Unit::Year { 12 } else { 1 } * every.count() * n;
                let total = start.year() * 12 + start.month0() as i32 + months as i32;
                prop_assert_eq!(due.year() * 12 + due.month0() as i32, total);
                prop_assert_eq!(due.day(), clamped_day(start.day(), due.year(), due.month()));
            }
            Unit::Day | Unit::Week => {
                let per = if every.unit() == Unit::Week { 7 } else { 1 } * every.count();
                prop_assert_eq!((due - start).num_days(), i64::from(per * n));
            }
        }
    }

    /// Terms that pass `check_terms` never have two consecutive due dates closer than period_days.
    #[test]
    fn checked_terms_keep_their_own_gap(t in any_terms()) {
        if check_terms(&t).is_empty()
            && let Some(days) = t.limits.period_days
        {
            let mut previous = due_date(&t, 0).unwrap();
            for k in 1..60 {
                let d = due_date(&t, k).unwrap();
                if t.limits.max_date.is_some_and(|m| d > m) { break; }
                prop_assert!((d - previous).num_days() >= i64::from(days));
                previous = d;
            }
        }
    }
}

#[test]
fn no_later_than_brings_a_revisit_forward_never_back() {
    let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let early = t("2027-01-01T00:00:00Z");
    let late = t("2027-02-01T00:00:00Z");
    assert_eq!(no_later_than(Revisit::Now, Some(early)), Revisit::Now);
    assert_eq!(
        no_later_than(Revisit::At(late), Some(early)),
        Revisit::At(early)
    );
    assert_eq!(
        no_later_than(Revisit::At(early), Some(late)),
        Revisit::At(early)
    );
    assert_eq!(no_later_than(Revisit::Never, Some(late)), Revisit::At(late));
    assert_eq!(no_later_than(Revisit::Never, None), Revisit::Never);
    assert_eq!(no_later_than(Revisit::At(late), None), Revisit::At(late));
}

proptest! {
    /// The galloping search finds exactly the period a scan finds: the last one due at `now`
    /// within `max_date`.
    #[test]
    fn latest_due_matches_a_scan(
        terms in any_terms(),
        calendar in any_calendar(),
        from in 0u32..50,
        later_days in 0i64..3_000,
    ) {
        let Some(from_date) = due_date(&terms, from) else { return Ok(()) };
        prop_assume!(terms.limits.max_date.is_none_or(|max| from_date <= max));
        let now = calendar.due_instant(from_date) + Duration::days(later_days);
        let mut scanned = from;
        while let Some(date) = due_date(&terms, scanned + 1) {
            if terms.limits.max_date.is_some_and(|max| date > max) || calendar.due_instant(date) > now {
                break;
            }
            scanned += 1;
        }
        prop_assert_eq!(latest_due(&terms, &calendar, from, now), scanned);
    }
}
