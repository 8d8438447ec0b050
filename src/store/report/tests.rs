use super::*;
use crate::store::Access;
use chrono::TimeZone;

use crate::store::test_support::{at, enrolment, store_with};

fn charge(store: &Store, id: &str, period: i64, due: &str, state: &str, next: Option<&str>) -> i64 {
    store
        .conn
        .execute(
            "INSERT INTO charges (subscription_id, period, due_date, amount_cents, currency, \
             state, next_attempt_at, created_at) VALUES (?1, ?2, ?3, 49900, 'RUB', ?4, ?5, ?6)",
            params![id, period, due, state, next, timestamp(at(1, 1))],
        )
        .unwrap();
    store.conn.last_insert_rowid()
}

fn attempt(
    store: &Store,
    charge: i64,
    n: i64,
    state: &str,
    created: DateTime<Utc>,
    sent: Option<DateTime<Utc>>,
) {
    store
        .conn
        .execute(
            "INSERT INTO attempts (charge_id, attempt, order_number, state, created_at, wall_at, \
             sent, sent_at, checkvalue, detail, updated_at) \
             VALUES (?1, ?2, 'P-' || ?1 || '-' || ?2, ?3, ?4, ?4, ?5, ?6, 'verified', 'AS' || ?2, ?4)",
            params![
                charge,
                n,
                state,
                timestamp(created),
                sent.is_some(),
                sent.map(timestamp)
            ],
        )
        .unwrap();
}

#[test]
fn history_shows_an_enrolment_as_its_initial_payment() {
    let (_dir, mut store) = store_with(&["s1"]);
    let paid = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
    store
        .record_enrolment(&enrolment(
            "e-1",
            "ORD-E1",
            "5899000000000001",
            "250.00",
            paid,
        ))
        .unwrap();
    let c = charge(&store, "s1", 0, "2027-01-01", "paid", None);
    attempt(&store, c, 1, "approved", at(1, 1), Some(at(1, 1)));

    let rows = store.history(None, None).unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let initial = &rows[0];
    assert_eq!(initial.subscription, "e-1");
    assert_eq!(initial.period, INITIAL_PERIOD);
    assert_eq!(initial.period_index, None);
    assert_eq!(initial.attempt, None);
    assert_eq!(initial.order_number.as_deref(), Some("ORD-E1"));
    assert_eq!(initial.amount, "250.00");
    assert_eq!(initial.currency, "RUB");
    assert_eq!(initial.state, "approved");
    assert_eq!(initial.checkvalue, "verified");
    // Shown as every JSON time is: RFC 3339, `Z`, whole seconds.
    assert_eq!(initial.at, crate::timefmt::rfc3339(paid));
    assert_eq!(
        initial.sent_at.as_deref(),
        Some(crate::timefmt::rfc3339(paid).as_str())
    );
    assert!(
        initial
            .reason
            .as_deref()
            .unwrap()
            .contains("5899000000000001")
    );
    // The attempt after it keeps its shape.
    assert_eq!(rows[1].period, "2027-01-01");
    assert_eq!(rows[1].period_index, Some(0));
    assert_eq!(rows[1].attempt, Some(1));
    assert_eq!(rows[1].at, crate::timefmt::rfc3339(at(1, 1)));

    // Filters apply to it like to any entry.
    assert_eq!(store.history(Some("e-1"), None).unwrap().len(), 1);
    assert_eq!(store.history(Some("s1"), None).unwrap().len(), 1);
    assert!(
        store
            .history(Some("e-1"), Some(at(1, 1)))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn ledger_state_says_where_each_subscription_stands() {
    let (_dir, mut store) = store_with(&["s1", "s2", "s3"]);
    // s1: period 0 paid (sent a day after its intent), period 1 open after a decline.
    let c0 = charge(&store, "s1", 0, "2027-01-01", "paid", None);
    attempt(&store, c0, 1, "approved", at(1, 1), Some(at(1, 2)));
    let c1 = charge(
        &store,
        "s1",
        1,
        "2027-02-01",
        "open",
        Some("2027-02-04T07:00:00.000000Z"),
    );
    attempt(&store, c1, 1, "declined", at(2, 1), Some(at(2, 1)));
    // s2: period 0 skipped, period 1 failed after a hard decline, waiting for an operator.
    charge(&store, "s2", 0, "2027-01-01", "skipped", None);
    let c = charge(&store, "s2", 1, "2027-02-01", "failed", None);
    attempt(&store, c, 1, "declined", at(2, 1), Some(at(2, 1)));
    store
        .conn
        .execute(
            "INSERT INTO attention (subscription_id, reason, since) VALUES ('s2', 'hard decline', ?1)",
            [timestamp(at(2, 1))],
        )
        .unwrap();
    // s3 enrolled: the initial payment counts for the limits.
    store
        .record_enrolment(&enrolment(
            "s3",
            "ORD-3",
            "5899000000000003",
            "499.00",
            at(1, 1) - chrono::Duration::days(30),
        ))
        .unwrap();
    let read = Store::open(&store.path.clone(), Access::ReadOnly).unwrap();

    let s1 = read.ledger_state("s1").unwrap();
    assert_eq!(s1.next_period, 2);
    assert_eq!(s1.charged, [at(1, 2)], "the later of intent and send");
    assert_eq!(s1.attempts, [at(1, 1), at(2, 1)]);
    assert_eq!(s1.attention, None);
    assert_eq!(s1.periods.len(), 2);
    assert_eq!(s1.periods[0].state, ChargeState::Paid);
    let open = &s1.periods[1];
    assert_eq!(open.state, ChargeState::Open);
    assert_eq!(open.next_attempt_at, Some(at(2, 4)));
    assert_eq!(open.amount, Money::parse("499.00").unwrap());
    let last = open.last_attempt.as_ref().unwrap();
    assert_eq!((last.attempt, last.state), (1, AttemptState::Declined));
    assert_eq!(last.detail.as_deref(), Some("AS1"));

    let s2 = read.ledger_state("s2").unwrap();
    assert_eq!(s2.next_period, 2);
    assert!(s2.charged.is_empty());
    assert_eq!(s2.attention, Some(("hard decline".into(), at(2, 1))));
    assert_eq!(s2.periods[0].state, ChargeState::Skipped);
    assert_eq!(s2.periods[0].last_attempt, None);

    let s3 = read.ledger_state("s3").unwrap();
    assert_eq!(s3.next_period, 0);
    assert_eq!(s3.charged, [at(1, 1) - chrono::Duration::days(30)]);
    assert_eq!(read.ledger_state("nobody").unwrap(), LedgerState::default());
}

/// Issue 12, item 11: `backup` checks the copy it made (`PRAGMA integrity_check`), and a copy
/// that fails the check is removed and the backup fails.
#[test]
fn a_backup_is_checked_and_a_damaged_copy_is_removed() {
    use crate::store::test_support::scramble_middle_page;
    use std::os::unix::fs::PermissionsExt;
    let ids: Vec<String> = (0..200).map(|i| format!("sub-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (dir, store) = store_with(&ids);

    let good = dir.path().join("good.db");
    store.backup_to(&good).unwrap();
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let copied: i64 = rusqlite::Connection::open(&good)
        .unwrap()
        .query_row("SELECT count(*) FROM subscriptions", [], |row| row.get(0))
        .unwrap();
    assert_eq!(copied, 200);

    // The same backup, but the copy is damaged between writing and checking it.
    let bad = dir.path().join("bad.db");
    let error = store
        .backup_checked(&bad, |copy| {
            scramble_middle_page(copy);
            check_copy(copy)
        })
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::Damaged {
                check: "integrity_check",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("bad.db"), "{error}");
    assert!(!bad.exists(), "the damaged copy was left behind");

    // A target that exists is never touched.
    std::fs::write(&bad, "mine").unwrap();
    store.backup_to(&bad).unwrap_err();
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "mine");
}
