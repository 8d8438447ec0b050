use super::*;
use crate::schedule::{DirReport, parse_text};
use crate::store::{Access, Purpose};
use chrono::{NaiveDate, TimeZone};
use std::path::Path;

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, month, day, 7, 0, 0).unwrap()
}

fn store_with(id: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
    let text = format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"5899110210000001\"\n\
         currency = \"RUB\"\namount = \"499.00\"\nevery = \"1 month\"\nstart = 2027-01-01\n\n"
    );
    let report = DirReport {
        files: vec![parse_text(Path::new("schedules/a.toml"), &text)],
    };
    store.sync_schedules(&report, at(1, 1)).unwrap();
    (dir, store)
}

/// Period 0 opened with one attempt `ORD-1`, sent, then unknown, then parked — through the
/// same store calls the engine makes.
fn parked(store: &mut Store) -> Job {
    let tx = store.plan(at(1, 1)).unwrap();
    let history = tx.history("s1").unwrap().unwrap();
    let open = tx
        .open_period(
            &history.subscription,
            0,
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
        )
        .unwrap();
    let job = tx
        .new_attempt(
            "s1",
            &open,
            "ORD-1",
            at(1, 1),
            Event {
                kind: event::INTENT,
                detail: json!({}),
            },
        )
        .unwrap();
    tx.commit().unwrap();
    assert!(
        store
            .mark_sending(job.attempt_id, AttemptState::Pending, at(1, 1), at(1, 1))
            .unwrap()
    );
    let mut unknown = AttemptChange::to(AttemptState::Unknown);
    unknown.sent = true;
    assert!(
        store
            .apply(job.attempt_id, AttemptState::Pending, &unknown, at(1, 1))
            .unwrap()
    );
    let mut park = AttemptChange::to(AttemptState::Parked);
    park.next_check_at = Some(at(1, 5));
    assert!(
        store
            .apply(job.attempt_id, AttemptState::Unknown, &park, at(1, 4))
            .unwrap()
    );
    store.attempt_by_order_number("ORD-1").unwrap().unwrap()
}

fn last_event(store: &Store) -> (String, serde_json::Value) {
    let entry = store.ledger(Some("s1")).unwrap().pop().unwrap();
    (entry.kind, entry.detail)
}

#[test]
fn paid_books_the_attempt_approved_unverified_and_the_period_paid() {
    let (_dir, mut store) = store_with("s1");
    let job = parked(&mut store);
    assert_eq!(
        store.plannable(at(12, 31)).unwrap(),
        Vec::<String>::new(),
        "parked blocks the subscription"
    );

    let resolved = store
        .resolve_parked(
            "ORD-1",
            Resolution::Paid,
            "alice",
            "portal: approved",
            at(1, 6),
        )
        .unwrap();
    assert_eq!(resolved, Resolved::Done(job.clone()));

    let now = store.attempt_by_order_number("ORD-1").unwrap().unwrap();
    assert_eq!(now.state, AttemptState::Approved);
    let history = store.history(Some("s1"), None).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].state, "approved");
    assert_eq!(history[0].checkvalue, "absent", "attested, never verified");
    assert!(
        history[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("attested by alice")
    );
    let periods = store.periods(Some("s1")).unwrap();
    assert_eq!(periods[0].state, ChargeState::Paid);
    assert!(store.unresolved_attempts().unwrap().is_empty());

    let (kind, detail) = last_event(&store);
    assert_eq!(kind, event::ATTESTED_PAID);
    assert_eq!(detail["verified"], json!(false));
    assert_eq!(detail["attested_by"], json!("alice"));
    assert_eq!(detail["why"], json!("portal: approved"));
    assert_eq!(detail["order_number"], json!("ORD-1"));
    assert_eq!(detail["amount"], json!("499.00"));
    // Still counted as a charge for the limits (it is approved).
    assert_eq!(store.charged_instants("s1", None).unwrap().len(), 1);
    assert_eq!(store.plannable(at(12, 31)).unwrap(), vec!["s1".to_string()]);
}

#[test]
fn not_charged_reopens_the_period_for_a_new_order_number() {
    let (_dir, mut store) = store_with("s1");
    parked(&mut store);
    let resolved = store
        .resolve_parked(
            "ORD-1",
            Resolution::NotCharged,
            "bob",
            "portal: no such order",
            at(1, 6),
        )
        .unwrap();
    assert!(matches!(resolved, Resolved::Done(_)));

    let attempt = store.attempt_by_order_number("ORD-1").unwrap().unwrap();
    assert_eq!(attempt.state, AttemptState::NotReceived);
    assert!(
        store.charged_instants("s1", None).unwrap().is_empty(),
        "a not-charged attempt no longer counts for the limits"
    );
    let (kind, detail) = last_event(&store);
    assert_eq!(kind, event::ATTESTED_NOT_CHARGED);
    assert_eq!(detail["attested_by"], json!("bob"));

    // The engine sees period 0 open, without a live attempt and without a retry instant: its
    // next sweep makes attempt 2 (a new OrderNumber).
    assert_eq!(store.plannable(at(12, 31)).unwrap(), vec!["s1".to_string()]);
    let tx = store.plan(at(1, 7)).unwrap();
    let history = tx.history("s1").unwrap().unwrap();
    let open = history.open.unwrap();
    assert_eq!(open.purpose, Purpose::Period(0));
    assert_eq!(
        (open.attempts, open.live_attempt, open.next_attempt_at),
        (1, false, None)
    );
    assert!(!history.unresolved);
}

#[test]
fn only_a_parked_attempt_can_be_resolved() {
    let (_dir, mut store) = store_with("s1");
    assert_eq!(
        store
            .resolve_parked("NOPE", Resolution::Paid, "alice", "x", at(1, 6))
            .unwrap(),
        Resolved::NotFound
    );
    parked(&mut store);
    store
        .resolve_parked("ORD-1", Resolution::Paid, "alice", "x", at(1, 6))
        .unwrap();
    let ledger = store.ledger(Some("s1")).unwrap().len();
    // Approved now: a second resolution (either way) is refused and writes nothing.
    for resolution in [Resolution::Paid, Resolution::NotCharged] {
        match store
            .resolve_parked("ORD-1", resolution, "alice", "again", at(1, 7))
            .unwrap()
        {
            Resolved::NotParked(job) => assert_eq!(job.state, AttemptState::Approved),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(store.ledger(Some("s1")).unwrap().len(), ledger);
}

#[test]
fn the_daemon_settling_it_first_wins_and_nothing_is_written() {
    let (dir, mut store) = store_with("s1");
    let job = parked(&mut store);
    // The operator's command read the attempt as parked ...
    let mut operator = Store::open(&dir.path().join("recurrentd.db"), Access::Write).unwrap();
    let seen = operator.attempt_by_order_number("ORD-1").unwrap().unwrap();
    assert_eq!(seen.state, AttemptState::Parked);
    // ... then the daemon's lookup got a verified answer and committed it first.
    let mut approved = AttemptChange::to(AttemptState::Approved);
    approved.checkvalue = Some("verified");
    approved.charge = Some(ChargeChange {
        state: ChargeState::Paid,
        reason: None,
        next_attempt_at: None,
    });
    assert!(
        store
            .apply(job.attempt_id, AttemptState::Parked, &approved, at(1, 6))
            .unwrap()
    );
    // The guarded write finds it no longer parked: nothing is written, and the caller learns
    // what the daemon made of it.
    match operator
        .resolve_seen(seen, Resolution::NotCharged, "bob", "portal", at(1, 6))
        .unwrap()
    {
        Resolved::Raced(now) => assert_eq!(now.state, AttemptState::Approved),
        other => panic!("{other:?}"),
    }
    let ledger = operator.ledger(Some("s1")).unwrap();
    assert!(ledger.iter().all(|e| e.kind != event::ATTESTED_NOT_CHARGED));
    assert_eq!(
        store.periods(Some("s1")).unwrap()[0].state,
        ChargeState::Paid
    );
}
