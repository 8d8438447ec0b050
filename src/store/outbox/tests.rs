use super::*;
use crate::store::Access;
use crate::store::test_support::{at, store_with};
use chrono::Duration;
use serde_json::json;

/// Appends a ledger event the plain way (as any future code path might).
fn append(store: &mut Store, subscription: Option<&str>, kind: &str, detail: serde_json::Value) {
    store
        .conn
        .execute(
            "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
             VALUES (?1, ?2, NULL, ?3, ?4)",
            params![timestamp(at(2, 1)), subscription, kind, detail.to_string()],
        )
        .unwrap();
}

fn kinds(events: &[OutboxEvent]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| (e.kind.clone(), e.subscription.clone()))
        .collect()
}

#[test]
fn merchant_events_enter_the_outbox_with_the_ledger_and_internal_ones_do_not() {
    let (_dir, mut store) = store_with(&["s1", "s2"]);
    let prefix = store.order_prefix().unwrap();
    let events = store.events_after(0, 100).unwrap();
    assert_eq!(
        kinds(&events),
        [
            ("subscription_added".to_string(), Some("s1".to_string())),
            ("subscription_added".to_string(), Some("s2".to_string())),
        ]
    );
    assert_eq!(events[0].id, format!("evt_{prefix}_{}", events[0].cursor));
    assert_eq!(events[0].data["subscription"]["amount"], "499.00");
    assert_eq!(events[0].delivery, "pending");
    let wire = events[0].to_json();
    assert_eq!(wire["type"], "subscription_added");
    assert_eq!(wire["created_at"], "2027-01-01T07:00:00Z");
    assert_eq!(wire["cursor"], events[0].cursor);

    // Internal bookkeeping stays out; refunds and reconciliation findings (kinds added by later
    // versions) are in by prefix; an enrolment names its subscription in the detail only.
    append(&mut store, Some("s1"), "charge_intent", json!({}));
    append(&mut store, None, "breaker_opened", json!({}));
    append(
        &mut store,
        Some("s1"),
        "refund_requested",
        json!({"amount": "10.00"}),
    );
    append(
        &mut store,
        None,
        "books_mismatch",
        json!({"day": "2027-02-01"}),
    );
    append(&mut store, None, "enrolled", json!({"subscription": "s9"}));
    append(
        &mut store,
        Some("s2"),
        "charge_approved",
        json!({"amount": "499.00"}),
    );
    let last = events[1].cursor;
    let rest = store.events_after(last, 100).unwrap();
    assert_eq!(
        kinds(&rest),
        [
            ("refund_requested".to_string(), Some("s1".to_string())),
            ("books_mismatch".to_string(), None),
            ("enrolled".to_string(), Some("s9".to_string())),
            ("charge_approved".to_string(), Some("s2".to_string())),
        ]
    );
    // The cursor is exclusive and monotonic; the limit holds.
    assert!(rest.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(
        store.events_after(rest[1].cursor, 1).unwrap()[0].kind,
        "enrolled"
    );

    // A rolled-back ledger event leaves no outbox row behind: same transaction.
    let tx = store.conn.transaction().unwrap();
    tx.execute(
        "INSERT INTO ledger (at, subscription_id, charge_id, kind, detail) \
         VALUES ('2027-02-01T07:00:00.000000Z', 's1', NULL, 'charge_declined', '{}')",
        [],
    )
    .unwrap();
    drop(tx);
    assert_eq!(store.events_after(rest[3].cursor, 10).unwrap(), []);
}

#[test]
fn delivery_goes_in_order_per_subscription_with_backoff_and_dead_letters() {
    let (_dir, mut store) = store_with(&["s1", "s2"]);
    let now = at(2, 1);
    append(&mut store, Some("s1"), "charge_approved", json!({}));
    append(&mut store, Some("s1"), "charge_declined", json!({}));
    let heads = |store: &Store, now| {
        store
            .outbox_due(now, 100)
            .unwrap()
            .into_iter()
            .map(|d| (d.event.kind, d.event.subscription.unwrap(), d.attempts))
            .collect::<Vec<_>>()
    };
    // One head per subscription: s1's added event, s2's added event.
    let due = store.outbox_due(now, 100).unwrap();
    assert_eq!(due.len(), 2);
    let (s1_added, s2_added) = (due[0].event.cursor, due[1].event.cursor);

    // s1's head fails: s1 waits for its backoff (its later events too), s2 goes on.
    assert!(
        store
            .outbox_failed(s1_added, now, "HTTP 500", now + Duration::minutes(1), false)
            .unwrap()
    );
    assert_eq!(
        heads(&store, now),
        [("subscription_added".into(), "s2".into(), 0)]
    );
    assert!(store.outbox_delivered(s2_added, now).unwrap());
    assert!(!store.outbox_delivered(s2_added, now).unwrap(), "only once");
    assert_eq!(heads(&store, now), []);
    let backlog = store.outbox_backlog().unwrap();
    assert_eq!(backlog.undelivered, 3);
    assert_eq!(backlog.dead, 0);
    assert_eq!(backlog.oldest_undelivered_at, Some(at(1, 1)));

    // After the backoff, the same head again, with its attempt count and first attempt.
    let later = now + Duration::minutes(1);
    let due = store.outbox_due(later, 100).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event.cursor, s1_added);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].first_attempt_at, Some(now));
    // Delivered: the next of s1 is due.
    store.outbox_delivered(s1_added, later).unwrap();
    assert_eq!(
        heads(&store, later),
        [("charge_approved".into(), "s1".into(), 0)]
    );
    // Given up on: it no longer holds s1 back, and it is counted as dead.
    let approved = store.outbox_due(later, 1).unwrap()[0].event.cursor;
    store
        .outbox_failed(approved, later, "timed out", later, true)
        .unwrap();
    assert_eq!(
        heads(&store, later),
        [("charge_declined".into(), "s1".into(), 0)]
    );
    let backlog = store.outbox_backlog().unwrap();
    assert_eq!((backlog.undelivered, backlog.dead), (1, 1));
    let events = store.events_after(0, 10).unwrap();
    let states: Vec<&str> = events.iter().map(|e| e.delivery.as_str()).collect();
    assert_eq!(states, ["delivered", "delivered", "dead", "pending"]);

    // An operator re-queues the dead letter; it is pending again and due at once (it precedes
    // the declined event of the same subscription, so it goes first).
    assert_eq!(store.outbox_revive_dead().unwrap(), 1);
    assert_eq!(
        heads(&store, later),
        [("charge_approved".into(), "s1".into(), 1)]
    );

    // Read-only stores read the outbox but cannot record deliveries.
    let path = store.path().to_path_buf();
    let mut read_only = Store::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(read_only.events_after(0, 10).unwrap().len(), 4);
    assert!(read_only.outbox_delivered(approved, later).is_err());
}

#[test]
fn a_settlement_as_never_received_or_rejected_reaches_the_merchant() {
    let (_dir, mut store) = store_with(&["s1"]);
    let last = store.events_after(0, 100).unwrap().last().unwrap().cursor;
    append(&mut store, Some("s1"), "charge_quarantined", json!({}));
    append(&mut store, Some("s1"), "charge_not_received", json!({}));
    append(&mut store, Some("s1"), "charge_rejected", json!({}));
    let kinds: Vec<String> = store
        .events_after(last, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "charge_quarantined",
            "charge_not_received",
            "charge_rejected"
        ]
    );
}

#[test]
fn the_due_query_walks_pending_events_by_id_without_sorting_them_all() {
    let (_dir, store) = store_with(&["s1"]);
    let plan: Vec<String> = {
        let mut statement = store
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT o.id FROM outbox o JOIN ledger l ON l.seq = o.ledger_seq \
                 WHERE o.state = 'pending' AND +o.next_attempt_at <= '9' \
                   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' \
                                   AND p.stream = o.stream AND p.id < o.id) \
                 ORDER BY o.id LIMIT 4",
            )
            .unwrap();
        statement
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        plan.iter()
            .any(|step| step.contains("outbox_pending_by_id")),
        "{plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.contains("TEMP B-TREE")),
        "{plan:?}"
    );
}
