use super::*;
use crate::store::timestamp;
use rusqlite::params;
use std::collections::BTreeMap;

use crate::store::test_support::{at, enrolment, store_with};

fn charge(store: &Store, id: &str, period: i64, state: &str, next: Option<DateTime<Utc>>) -> i64 {
    store
        .conn
        .execute(
            "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
             state, next_attempt_at, created_at) \
             VALUES (?1, ?2, date('2027-01-01', '+' || ?2 || ' months'), 49900, 'RUB', ?3, ?4, ?5)",
            params![id, period, state, next.map(timestamp), timestamp(at(1, 1))],
        )
        .unwrap();
    store.conn.last_insert_rowid()
}

fn adhoc(store: &Store, id: &str, reference: &str, state: &str) -> i64 {
    store
        .conn
        .execute(
            "INSERT INTO charges (subscription_id, reference, due_date, amount_cents, currency, \
             state, created_at) VALUES (?1, ?2, '2027-02-10', 10000, 'RUB', ?3, ?4)",
            params![id, reference, state, timestamp(at(2, 10))],
        )
        .unwrap();
    store.conn.last_insert_rowid()
}

/// An attempt with order number `O-<charge>-<n>`, changed last at `updated`.
fn attempt(store: &Store, charge: i64, n: i64, state: &str, updated: DateTime<Utc>) -> String {
    store
        .conn
        .execute(
            "INSERT INTO attempts (charge_id, attempt, order_number, state, created_at, wall_at, \
             sent, sent_at, updated_at) \
             VALUES (?1, ?2, 'O-' || ?1 || '-' || ?2, ?3, ?4, ?4, 1, ?4, ?4)",
            params![charge, n, state, timestamp(updated)],
        )
        .unwrap();
    format!("O-{charge}-{n}")
}

fn overview(store: &Store) -> BTreeMap<String, SubscriptionOverview> {
    let mut out = BTreeMap::new();
    let mut order = Vec::new();
    store
        .each_subscription_overview(|row| -> Result<(), StoreError> {
            order.push(row.subscription.id.clone());
            out.insert(row.subscription.id.clone(), row);
            Ok(())
        })
        .unwrap();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "rows come in id order");
    out
}

fn last(o: &SubscriptionOverview) -> (AttemptState, &str, bool) {
    let l = o.last_outcome.as_ref().expect("a last outcome");
    (l.state, l.order_number.as_str(), l.initial)
}

#[test]
fn every_subscription_with_its_position_flags_and_last_outcome() {
    let ids = [
        "fresh", "paid", "retry", "parked", "hard", "quar", "skipped", "adhoc", "enrolled", "gone",
    ];
    let (_dir, mut store) = store_with(&ids);

    // paid: two periods paid.
    let c = charge(&store, "paid", 0, "paid", None);
    attempt(&store, c, 1, "approved", at(1, 1));
    let c = charge(&store, "paid", 1, "paid", None);
    let paid_order = attempt(&store, c, 1, "approved", at(2, 1));

    // retry: period 0 open after a soft decline, retry scheduled.
    let c = charge(&store, "retry", 0, "open", Some(at(1, 4)));
    let retry_order = attempt(&store, c, 1, "declined", at(1, 1));

    // parked: period 0 open with a parked attempt (a second, older attempt was not received).
    let c = charge(&store, "parked", 0, "open", None);
    attempt(&store, c, 1, "not_received", at(1, 1));
    let parked_order = attempt(&store, c, 2, "parked", at(1, 3));

    // hard: hard decline, period failed, attention row.
    let c = charge(&store, "hard", 0, "failed", None);
    attempt(&store, c, 1, "declined", at(1, 1));
    store
        .conn
        .execute(
            "INSERT INTO attention (subscription_id, reason, since) VALUES ('hard', 'hard decline 05', ?1)",
            [timestamp(at(1, 1))],
        )
        .unwrap();

    // quar: period 0 quarantined, period 1 paid later.
    let c = charge(&store, "quar", 0, "quarantined", None);
    attempt(&store, c, 1, "quarantined", at(1, 1));
    let c = charge(&store, "quar", 1, "paid", None);
    let quar_last = attempt(&store, c, 1, "approved", at(2, 1));

    // skipped: period 0 paid, period 1 skipped (no attempt): the last outcome is period 0's.
    let c = charge(&store, "skipped", 0, "paid", None);
    let skipped_last = attempt(&store, c, 1, "approved", at(1, 1));
    charge(&store, "skipped", 1, "skipped", None);

    // adhoc: period 0 paid, then an ad-hoc charge declined later (a newer attempt).
    let c = charge(&store, "adhoc", 0, "paid", None);
    attempt(&store, c, 1, "approved", at(1, 1));
    let a = adhoc(&store, "adhoc", "T-1", "failed");
    let adhoc_last = attempt(&store, a, 1, "declined", at(2, 10));

    // enrolled: no attempt yet, only the enrolment's initial payment.
    store
        .record_enrolment(&enrolment(
            "enrolled",
            "ORD-E1",
            "5899000000000001",
            "250.00",
            at(1, 1),
        ))
        .unwrap();

    // gone: removed from the schedule files.
    store
        .conn
        .execute(
            "UPDATE subscriptions SET removed_at = ?1 WHERE id = 'gone'",
            [timestamp(at(1, 5))],
        )
        .unwrap();

    let rows = overview(&store);
    assert_eq!(rows.len(), ids.len());

    let fresh = &rows["fresh"];
    assert!(fresh.subscription.is_active());
    assert_eq!(fresh.last_period, None);
    assert_eq!(fresh.last_outcome, None);
    assert_eq!(
        (
            fresh.flagged.clone(),
            fresh.parked.clone(),
            fresh.quarantined
        ),
        (None, None, 0)
    );

    let paid = &rows["paid"];
    let p = paid.last_period.as_ref().unwrap();
    assert_eq!(
        (p.period, p.state, p.live_attempt),
        (1, ChargeState::Paid, false)
    );
    assert_eq!(p.due_date, NaiveDate::from_ymd_opt(2027, 2, 1).unwrap());
    assert_eq!(
        last(paid),
        (AttemptState::Approved, paid_order.as_str(), false)
    );
    assert_eq!(paid.last_outcome.as_ref().unwrap().at, at(2, 1));

    let retry = &rows["retry"];
    let p = retry.last_period.as_ref().unwrap();
    assert_eq!(
        (p.state, p.next_attempt_at, p.live_attempt),
        (ChargeState::Open, Some(at(1, 4)), false)
    );
    assert_eq!(
        last(retry),
        (AttemptState::Declined, retry_order.as_str(), false)
    );

    let parked = &rows["parked"];
    assert_eq!(parked.parked.as_deref(), Some(parked_order.as_str()));
    let p = parked.last_period.as_ref().unwrap();
    assert_eq!((p.state, p.live_attempt), (ChargeState::Open, true));
    assert_eq!(
        last(parked),
        (AttemptState::Parked, parked_order.as_str(), false)
    );

    let hard = &rows["hard"];
    assert_eq!(
        hard.flagged,
        Some(("hard decline 05".to_string(), at(1, 1)))
    );
    assert_eq!(last(hard).0, AttemptState::Declined);

    let quar = &rows["quar"];
    assert_eq!(quar.quarantined, 1);
    assert_eq!(
        last(quar),
        (AttemptState::Approved, quar_last.as_str(), false)
    );

    let skipped = &rows["skipped"];
    let p = skipped.last_period.as_ref().unwrap();
    assert_eq!((p.period, p.state), (1, ChargeState::Skipped));
    assert_eq!(
        last(skipped),
        (AttemptState::Approved, skipped_last.as_str(), false)
    );

    let adhoc = &rows["adhoc"];
    assert_eq!(
        adhoc.last_period.as_ref().unwrap().period,
        0,
        "an ad-hoc charge is not a period"
    );
    assert_eq!(
        last(adhoc),
        (AttemptState::Declined, adhoc_last.as_str(), false)
    );

    let enrolled = &rows["enrolled"];
    assert_eq!(last(enrolled), (AttemptState::Approved, "ORD-E1", true));

    let gone = &rows["gone"];
    assert_eq!(gone.subscription.removed_at, Some(at(1, 5)));
}

#[test]
fn an_error_from_the_caller_stops_the_walk() {
    let (_dir, store) = store_with(&["a", "b", "c"]);
    let mut seen = 0;
    let result = store.each_subscription_overview(|_| {
        seen += 1;
        if seen == 2 {
            Err(StoreError::Missing {
                path: "stop".into(),
            })
        } else {
            Ok(())
        }
    });
    assert!(result.is_err());
    assert_eq!(seen, 2);
}
