//! The PostgreSQL store against a real server: `RECURRENTD_TEST_PG_URL` (e.g. from
//! `.ci/pg-cluster start DIR`). Without it each test prints that it was skipped and passes,
//! except under CI (`CI` set), where it fails: CI must really test PostgreSQL. Each test works in
//! a schema of its own (random name, dropped at the end), so tests run in parallel.
//!
//! Plain `#[test]`s: the synchronous client runs its own runtime and must not be called from
//! async code.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::billing::{Cadence, Limits, SubscriptionState, Terms};
use crate::lifecycle::{AttemptChange, ChargeChange};
use crate::store::{ChargeStore, DaemonStore, PlanTransaction, UNFENCED};

const LONG: Duration = Duration::from_secs(60);
/// A lease that expires within a test (the sleeps past it assert behaviour, not timing; long
/// enough that a loaded machine does not expire it before the next statement).
const SHORT: Duration = Duration::from_secs(2);

/// A schema of its own on the test server, dropped when this is dropped.
pub(crate) struct TestDb {
    base: String,
    schema: String,
    /// The base URL with `search_path` set to the schema.
    url: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.base, NoTls) {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

impl TestDb {
    pub(crate) fn store(&self, instance: &str, lease: Duration) -> PgStore {
        PgStore::connect(&self.url, instance, lease).unwrap()
    }

    /// A plain client in the schema, to look at rows the store has no reader for.
    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, NoTls).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

/// A new empty schema on the server named by `RECURRENTD_TEST_PG_URL`; `None` (the test is
/// skipped) when it is not set, except under CI.
pub(crate) fn fresh_schema() -> Option<TestDb> {
    let base = match std::env::var("RECURRENTD_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("CI").is_ok_and(|ci| !ci.is_empty()) {
                panic!("RECURRENTD_TEST_PG_URL is not set, and CI must test PostgreSQL");
            }
            println!("skipped: RECURRENTD_TEST_PG_URL is not set");
            return None;
        }
    };
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    let schema = format!(
        "rt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut admin = postgres::Client::connect(&base, NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    Some(TestDb { base, schema, url })
}

fn at(month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, month, day, 7, 0, 0).unwrap()
}

/// A monthly subscription of 499.00 RUB from 2027-01-01.
fn subscription(id: &str) -> StoredSubscription {
    StoredSubscription {
        id: id.to_string(),
        file: "a.toml".into(),
        line: 1,
        customer: None,
        bill_number: format!("5899{id}"),
        currency: Currency::parse("RUB").unwrap(),
        terms: Terms {
            amount: Money::parse("499.00").unwrap(),
            every: Cadence::parse("1 month").unwrap(),
            start: NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
            state: SubscriptionState::Active,
            catch_up: None,
            limits: Limits::default(),
        },
        created_at: at(1, 1),
        updated_at: at(1, 1),
        removed_at: None,
    }
}

fn intent(order_number: &str) -> Event {
    Event {
        kind: event::INTENT,
        detail: json!({ "order_number": order_number }),
    }
}

/// Plans the subscription's next period as the engine does when a charge is due: history,
/// open the period, one intent, revisit now, commit. `None` if the history says there is
/// nothing to plan (held elsewhere, unresolved attempt, flagged).
fn plan_intent(store: &mut PgStore, id: &str, now: DateTime<Utc>) -> Option<Job> {
    let mut tx = store.begin_plan(now).unwrap();
    let history = tx.history(id).unwrap()?;
    if history.unresolved || history.attention.is_some() {
        return None;
    }
    let period = history.next_period;
    let open = tx
        .open_period(
            &history.subscription,
            period,
            NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
        )
        .unwrap();
    let number = format!("PFX-{id}-{period}-1");
    let job = tx
        .new_attempt(id, &open, &number, Utc::now(), intent(&number))
        .unwrap();
    tx.revisit(id, Revisit::Now).unwrap();
    tx.commit().unwrap();
    Some(job)
}

fn approved() -> AttemptChange {
    let mut change = AttemptChange::to(AttemptState::Approved);
    change.sent = true;
    change.seen = true;
    change.response_code = Some("AS000".into());
    change.checkvalue = Some("verified");
    change.charge = Some(ChargeChange {
        state: ChargeState::Paid,
        reason: None,
        next_attempt_at: None,
    });
    change.event = Some(Event {
        kind: event::APPROVED,
        detail: json!({ "order_number": "x" }),
    });
    change
}

fn outcome<'a>(
    job: &Job,
    fence: i64,
    change: &'a AttemptChange,
    now: DateTime<Utc>,
) -> OutcomeWrite<'a> {
    OutcomeWrite {
        attempt_id: job.attempt_id,
        expected: AttemptState::Pending,
        fence,
        change,
        now,
    }
}

#[test]
fn redacted_locations_never_hold_the_password() {
    let url =
        "postgres://billing:s3cret-pw@db.example:5433/recurrentd?password=other-pw&sslmode=disable";
    let redacted = redact_url(url);
    assert!(
        !redacted.contains("s3cret-pw") && !redacted.contains("other-pw"),
        "{redacted}"
    );
    assert_eq!(
        redacted,
        "postgres://billing@db.example:5433/recurrentd?sslmode=disable"
    );
    let keywords = "host=db.example port=5433 user=billing password=s3cret-pw dbname=recurrentd";
    let redacted = redact_url(keywords);
    assert!(!redacted.contains("s3cret-pw"), "{redacted}");
    assert_eq!(
        redacted,
        "host=db.example port=5433 user=billing dbname=recurrentd"
    );
    assert_eq!(
        redact_url("postgres://billing@localhost/db"),
        "postgres://billing@localhost/db"
    );
}

#[test]
fn a_failed_connect_names_the_database_without_its_password() {
    // Port 1 on the loopback: refused at once, no server needed.
    let err =
        PgStore::connect("postgres://billing:s3cret-pw@127.0.0.1:1/db", "a", LONG).unwrap_err();
    let message = err.to_string();
    let debug = format!("{err:?}");
    assert!(
        message.contains("postgres://billing@127.0.0.1:1/db"),
        "{message}"
    );
    assert!(
        !message.contains("s3cret-pw") && !debug.contains("s3cret-pw"),
        "{debug}"
    );
    assert!(
        err.is_io(),
        "a refused connection is an I/O failure: {debug}"
    );
}

#[test]
fn the_lease_must_be_shorter_than_the_settle_window() {
    let minute = Duration::from_secs(60);
    assert!(lease_fits_settle_window(minute, 30 * minute));
    assert!(!lease_fits_settle_window(30 * minute, 30 * minute));
    assert!(!lease_fits_settle_window(Duration::ZERO, 30 * minute));
}

#[test]
fn migrations_run_once_under_concurrent_connects_and_again_change_nothing() {
    let Some(db) = fresh_schema() else { return };
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = db.url.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&url, &format!("i{i}"), LONG).map(|s| s.epoch())
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap().unwrap(), 1);
    }
    assert_eq!(db.count("SELECT count(*) FROM schema_migrations"), 1);
    let mut store = db.store("i0", LONG);
    assert_eq!(
        store.epoch(),
        2,
        "a reconnect under the same name is a new epoch"
    );
    assert_eq!(db.count("SELECT count(*) FROM schema_migrations"), 1);
    let names: Vec<_> = store
        .instances()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["i0", "i1", "i2", "i3"]);
    let prefix = store.order_prefix().unwrap();
    assert_eq!(prefix.len(), crate::store::ORDER_PREFIX_LEN);
    assert_eq!(db.store("i9", LONG).order_prefix().unwrap(), prefix);

    // A schema from a newer recurrentd is refused.
    store
        .execute_for_tests("INSERT INTO schema_migrations (version) VALUES (99)")
        .unwrap();
    match PgStore::connect(&db.url, "i0", LONG) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn a_heartbeat_renews_until_another_process_takes_the_name() {
    let Some(db) = fresh_schema() else { return };
    let mut old = db.store("a", LONG);
    assert!(old.heartbeat().unwrap());
    let _new = db.store("a", LONG);
    assert!(!old.heartbeat().unwrap(), "superseded by a newer epoch");
}

#[test]
fn the_database_refuses_a_second_period_a_reused_order_number_and_a_second_live_attempt() {
    let Some(db) = fresh_schema() else { return };
    let mut store = db.store("a", LONG);
    store
        .insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    store
        .insert_subscription(&subscription("s2"), at(1, 1))
        .unwrap();
    let job = plan_intent(&mut store, "s1", at(1, 1)).unwrap();
    let due = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();

    // The same period again.
    let mut tx = store.begin_plan(at(1, 1)).unwrap();
    let history = tx.history("s1").unwrap().unwrap();
    let err = tx.open_period(&history.subscription, 0, due).unwrap_err();
    assert!(
        err.to_string()
            .contains("charges_subscription_id_period_key"),
        "{err}"
    );
    drop(tx);

    // A second live attempt for the same charge.
    let mut tx = store.begin_plan(at(1, 1)).unwrap();
    let history = tx.history("s1").unwrap().unwrap();
    let open = history.open.clone().unwrap();
    assert!(open.live_attempt);
    let err = tx
        .new_attempt("s1", &open, "PFX-s1-0-2", Utc::now(), intent("PFX-s1-0-2"))
        .unwrap_err();
    assert!(err.to_string().contains("attempts_one_live"), "{err}");
    drop(tx);

    // Another subscription's attempt under the same OrderNumber.
    let mut tx = store.begin_plan(at(1, 1)).unwrap();
    let history = tx.history("s2").unwrap().unwrap();
    let open = tx.open_period(&history.subscription, 0, due).unwrap();
    let err = tx
        .new_attempt("s2", &open, &job.order_number, Utc::now(), intent("x"))
        .unwrap_err();
    assert!(
        err.to_string().contains("attempts_order_number_key"),
        "{err}"
    );
    drop(tx);

    // Exactly one of period and reference.
    let err = store
        .execute_for_tests(
            "INSERT INTO charges (subscription_id, period, reference, due_date, amount_cents, \
             currency, state, created_at) VALUES ('s2', 5, 'inv-1', '2027-01-01', 100, 'RUB', \
             'open', now())",
        )
        .unwrap_err();
    assert!(err.to_string().contains("check"), "{err}");
    assert_eq!(store.attempts().unwrap().len(), 1);
    assert_eq!(
        store.periods(None).unwrap().len(),
        1,
        "rolled back: no s2 period"
    );
}

#[test]
fn the_database_refuses_to_update_delete_or_truncate_the_ledger() {
    let Some(db) = fresh_schema() else { return };
    let mut store = db.store("a", LONG);
    store
        .insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    for sql in [
        "UPDATE ledger SET kind = 'x'",
        "DELETE FROM ledger",
        "TRUNCATE ledger CASCADE",
    ] {
        let err = store.execute_for_tests(sql).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(store.ledger(None).unwrap().len(), 1);
}

#[test]
fn a_plan_sends_and_records_an_approval_with_its_ledger_and_outbox() {
    let Some(db) = fresh_schema() else { return };
    let mut store = db.store("a", LONG);
    store
        .insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    assert_eq!(
        store.stored_subscription("s1").unwrap().unwrap(),
        subscription("s1")
    );
    assert_eq!(store.plannable(at(1, 1)).unwrap(), ["s1"]);

    let job = plan_intent(&mut store, "s1", at(1, 1)).unwrap();
    assert!(job.fence > UNFENCED);
    assert_eq!(store.attempt_by_id(job.attempt_id).unwrap().unwrap(), job);
    assert!(
        store.plannable(at(1, 1)).unwrap().is_empty(),
        "an attempt is unresolved"
    );

    // Our own claim keeps its fence: our work in flight stays valid.
    let claimed = store.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(claimed, std::slice::from_ref(&job));

    assert!(
        store
            .mark_sending(&job, AttemptState::Pending, at(1, 1), Utc::now())
            .unwrap()
    );
    let sent = store.attempt_by_id(job.attempt_id).unwrap().unwrap();
    assert!(sent.sent);
    assert_eq!(sent.sent_at, Some(at(1, 1)));
    assert_eq!(
        store.charged_instants("s1", None).unwrap(),
        [at(1, 1)],
        "a sent attempt counts for the limits"
    );
    assert!(
        store
            .charged_instants("s1", Some(job.attempt_id))
            .unwrap()
            .is_empty()
    );

    let change = approved();
    let results = store
        .apply_outcomes(&[outcome(&job, job.fence, &change, at(1, 1))])
        .unwrap();
    assert!(matches!(results[..], [Ok(true)]), "{results:?}");
    let done = store.attempt_by_id(job.attempt_id).unwrap().unwrap();
    assert_eq!(done.state, AttemptState::Approved);
    assert!(done.seen);
    assert_eq!(
        store.periods(Some("s1")).unwrap()[0].state,
        ChargeState::Paid
    );
    // Settled: nobody holds it any more, and the subscription is planned again.
    assert_eq!(
        db.count("SELECT count(*) FROM attempts WHERE owner IS NULL AND lease_until IS NULL"),
        1
    );
    assert_eq!(store.plannable(at(1, 1)).unwrap(), ["s1"]);
    assert!(store.claim_due_attempts(at(1, 1)).unwrap().is_empty());

    // The same outcome again changes nothing (no longer pending).
    let again = store
        .apply_outcomes(&[outcome(&job, job.fence, &change, at(1, 1))])
        .unwrap();
    assert!(matches!(again[..], [Ok(false)]), "{again:?}");

    let kinds: Vec<_> = store
        .ledger(Some("s1"))
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["subscription_added", "charge_intent", "charge_approved"]
    );
    let added = &store.ledger(None).unwrap()[0];
    assert_eq!(added.detail["subscription"]["every"], "1 month");
    // One outbox row per ledger row of an outbox kind (the intent is not one), in order.
    let mut client = db.client();
    let rows = client
        .query(
            "SELECT l.kind, o.stream FROM outbox o JOIN ledger l ON l.seq = o.ledger_seq \
             ORDER BY o.id",
            &[],
        )
        .unwrap();
    let outbox: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        outbox,
        [
            ("subscription_added".to_string(), "s1".to_string()),
            ("charge_approved".to_string(), "s1".to_string())
        ]
    );
    // The outbox prefixes, and a stream from the detail.
    store
        .execute_for_tests(
            "INSERT INTO ledger (at, kind, detail) VALUES \
             (now(), 'refund_requested', '{\"subscription\": \"s1\"}'), \
             (now(), 'books_clean', '{}'), (now(), 'breaker_opened', '{}')",
        )
        .unwrap();
    assert_eq!(db.count("SELECT count(*) FROM outbox"), 4);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE stream = 's1'"),
        3,
        "refund_requested is streamed by its detail's subscription"
    );
}

#[test]
fn two_instances_claim_disjoint_attempts() {
    let Some(db) = fresh_schema() else { return };
    let mut planner = db.store("planner", SHORT);
    for i in 0..6 {
        let id = format!("s{i}");
        planner
            .insert_subscription(&subscription(&id), at(1, 1))
            .unwrap();
        plan_intent(&mut planner, &id, at(1, 1)).unwrap();
    }
    let mut a = db.store("a", LONG);
    let mut b = db.store("b", LONG);
    thread::sleep(SHORT + Duration::from_millis(300));

    // An attempt locked by a transaction in progress is skipped, not waited for.
    let ids: Vec<i64> = planner
        .attempts()
        .unwrap()
        .iter()
        .map(|j| j.attempt_id)
        .collect();
    let mut holder = db.client();
    let mut holding = holder.transaction().unwrap();
    holding
        .query(
            "SELECT 1 FROM attempts WHERE id = $1 FOR UPDATE",
            &[&ids[0]],
        )
        .unwrap();
    let by_a: Vec<i64> = a
        .claim_due_attempts(at(1, 1))
        .unwrap()
        .iter()
        .map(|j| j.attempt_id)
        .collect();
    assert_eq!(by_a, ids[1..]);
    holding.rollback().unwrap();
    // B gets only the one A could not take: A's leases are running.
    let by_b = b.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(
        by_b.iter().map(|j| j.attempt_id).collect::<Vec<_>>(),
        [ids[0]]
    );
    assert!(
        b.claim_due_attempts(at(1, 1)).unwrap().len() == 1,
        "B's own claim again"
    );
    assert!(a.claim_due_attempts(at(1, 1)).unwrap().len() == 5);

    // Claiming at the same moment from two threads: every attempt exactly once.
    let mut more = db.store("planner2", SHORT);
    for i in 6..40 {
        let id = format!("s{i}");
        more.insert_subscription(&subscription(&id), at(1, 1))
            .unwrap();
        plan_intent(&mut more, &id, at(1, 1)).unwrap();
    }
    thread::sleep(SHORT + Duration::from_millis(300));
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = ["c", "d"]
        .into_iter()
        .map(|name| {
            let url = db.url.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut store = PgStore::connect(&url, name, LONG).unwrap();
                barrier.wait();
                let mut got = Vec::new();
                for _ in 0..20 {
                    got.extend(store.claim_due_attempts(at(1, 1)).unwrap());
                }
                got
            })
        })
        .collect();
    let mut all: Vec<Job> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_by_key(|j| j.attempt_id);
    let claimed: Vec<i64> = all.iter().map(|j| j.attempt_id).collect();
    let mut expected: Vec<i64> = more
        .attempts()
        .unwrap()
        .iter()
        .map(|j| j.attempt_id)
        .collect();
    expected.retain(|id| !ids.contains(id));
    // Each claimed by one of them only (an instance's repeated claims of its own return it
    // again with the same fence: count distinct holders per attempt).
    let mut holders: Vec<(i64, i64)> = all.iter().map(|j| (j.attempt_id, j.fence)).collect();
    holders.dedup();
    let mut distinct = claimed.clone();
    distinct.dedup();
    assert_eq!(distinct, expected);
    assert_eq!(
        holders.len(),
        distinct.len(),
        "one holder (one fence) per attempt"
    );
}

#[test]
fn an_expired_lease_is_claimed_again_and_the_old_fence_changes_nothing() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", SHORT);
    let mut b = db.store("b", LONG);
    a.insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    let job = plan_intent(&mut a, "s1", at(1, 1)).unwrap();
    assert!(
        b.claim_due_attempts(at(1, 1)).unwrap().is_empty(),
        "A's lease runs"
    );

    thread::sleep(SHORT + Duration::from_millis(300));
    // Past its lease, A may not send even though nobody took the attempt yet.
    assert!(
        !a.mark_sending(&job, AttemptState::Pending, at(1, 1), Utc::now())
            .unwrap()
    );
    let taken = b.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].fence > job.fence, "a new holder, a new fence");
    assert_eq!(
        b.attempt_by_id(job.attempt_id).unwrap().unwrap().fence,
        taken[0].fence
    );

    // A, back from its pause, with its old fence: nothing changes.
    assert!(
        !a.mark_sending(&job, AttemptState::Pending, at(1, 2), Utc::now())
            .unwrap()
    );
    let change = approved();
    let results = a
        .apply_outcomes(&[outcome(&job, job.fence, &change, at(1, 2))])
        .unwrap();
    assert!(matches!(results[..], [Ok(false)]), "{results:?}");
    let now = b.attempt_by_id(job.attempt_id).unwrap().unwrap();
    assert_eq!(now.state, AttemptState::Pending);
    assert!(!now.sent);
    assert_eq!(b.periods(None).unwrap()[0].state, ChargeState::Open);
    assert_eq!(b.ledger(None).unwrap().len(), 2, "no approval recorded");
    assert!(
        a.claim_due_attempts(at(1, 2)).unwrap().is_empty(),
        "B's lease runs"
    );

    // B, the holder, sends and records.
    assert!(
        b.mark_sending(&taken[0], AttemptState::Pending, at(1, 2), Utc::now())
            .unwrap()
    );
    let results = b
        .apply_outcomes(&[outcome(&job, taken[0].fence, &change, at(1, 2))])
        .unwrap();
    assert!(matches!(results[..], [Ok(true)]), "{results:?}");
    assert_eq!(b.periods(None).unwrap()[0].state, ChargeState::Paid);
}

#[test]
fn a_group_commit_records_each_outcome_alone() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    let mut jobs = Vec::new();
    for id in ["s1", "s2"] {
        a.insert_subscription(&subscription(id), at(1, 1)).unwrap();
        jobs.push(plan_intent(&mut a, id, at(1, 1)).unwrap());
    }
    let change = approved();
    let results = a
        .apply_outcomes(&[
            outcome(&jobs[1], jobs[1].fence, &change, at(1, 1)),
            outcome(&jobs[0], jobs[0].fence + 1000, &change, at(1, 1)),
        ])
        .unwrap();
    assert!(matches!(results[..], [Ok(true), Ok(false)]), "{results:?}");
    let states: Vec<_> = a
        .periods(None)
        .unwrap()
        .into_iter()
        .map(|p| p.state)
        .collect();
    assert_eq!(states, [ChargeState::Open, ChargeState::Paid]);
}

#[test]
fn a_subscription_being_planned_is_skipped_and_then_seen_with_its_intent() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    let mut b = db.store("b", LONG);
    a.insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();

    let mut tx_a = a.begin_plan(at(1, 1)).unwrap();
    assert!(tx_a.history("s1").unwrap().is_some());
    {
        // Held by A: B does not wait, it skips.
        let mut tx_b = b.begin_plan(at(1, 1)).unwrap();
        assert!(tx_b.history("s1").unwrap().is_none());
    }
    drop(tx_a);
    assert!(plan_intent(&mut a, "s1", at(1, 1)).is_some());
    let mut tx_b = b.begin_plan(at(1, 1)).unwrap();
    let history = tx_b.history("s1").unwrap().unwrap();
    assert!(history.unresolved, "B sees A's intent");
    assert_eq!(history.charged.len(), 1);
}

#[test]
fn two_instances_planning_one_subscription_at_once_make_one_intent() {
    let Some(db) = fresh_schema() else { return };
    let mut setup = db.store("setup", LONG);
    let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for id in &ids {
        setup
            .insert_subscription(&subscription(id), at(1, 1))
            .unwrap();
    }
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let url = db.url.clone();
            let barrier = Arc::clone(&barrier);
            let ids = ids.clone();
            thread::spawn(move || {
                let mut store = PgStore::connect(&url, name, LONG).unwrap();
                let mut made = 0;
                for id in &ids {
                    barrier.wait();
                    made += usize::from(plan_intent(&mut store, id, at(1, 1)).is_some());
                }
                made
            })
        })
        .collect();
    let made: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(made, ids.len());
    let attempts = setup.attempts().unwrap();
    assert_eq!(attempts.len(), ids.len(), "one intent per subscription");
}

#[test]
fn a_flag_stops_planning_and_breaker_and_clock_hold_are_recorded_once() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    a.insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    let job = plan_intent(&mut a, "s1", at(1, 1)).unwrap();
    a.flag_attempt(
        job.attempt_id,
        &Flag {
            kind: flag::LATE_APPROVAL,
            reason: "late".into(),
        },
        at(1, 2),
    )
    .unwrap();
    let mut tx = a.begin_plan(at(1, 2)).unwrap();
    assert_eq!(
        tx.history("s1").unwrap().unwrap().attention.as_deref(),
        Some("late")
    );
    drop(tx);

    assert_eq!(a.breaker_reason().unwrap(), None);
    a.trip_breaker("first", at(1, 2)).unwrap();
    a.trip_breaker("second", at(1, 2)).unwrap();
    assert_eq!(a.breaker_reason().unwrap().as_deref(), Some("first"));
    a.hold_clock("jump", at(1, 2)).unwrap();
    a.hold_clock("jump again", at(1, 2)).unwrap();
    assert_eq!(a.clock_hold_reason().unwrap().as_deref(), Some("jump"));
    let kinds: Vec<_> = a
        .ledger(None)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "subscription_added",
            "charge_intent",
            "late_approval",
            "breaker_opened",
            "clock_jump"
        ]
    );
    assert_eq!(a.count_quarantines_since(at(1, 1)).unwrap(), 0);

    assert_eq!(a.last_planned_sweep().unwrap(), None);
    a.record_planned_sweep(at(3, 1)).unwrap();
    a.record_planned_sweep(at(2, 1)).unwrap();
    assert_eq!(
        a.last_planned_sweep().unwrap(),
        Some(at(3, 1)),
        "never moves back"
    );
}

#[test]
fn the_leader_lease_is_exclusive_until_it_expires() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    let mut b = db.store("b", LONG);
    let fence = a.try_lead("schedule-sync", SHORT).unwrap().unwrap();
    assert_eq!(b.try_lead("schedule-sync", SHORT).unwrap(), None);
    assert_eq!(
        a.try_lead("schedule-sync", SHORT).unwrap(),
        Some(fence),
        "renewed, same fence"
    );
    assert!(
        b.try_lead("breaker", SHORT).unwrap().is_some(),
        "another lease is free"
    );
    thread::sleep(SHORT + Duration::from_millis(300));
    let taken = b.try_lead("schedule-sync", LONG).unwrap().unwrap();
    assert!(taken > fence);
    assert_eq!(a.try_lead("schedule-sync", SHORT).unwrap(), None);
    assert!(
        !a.release_lead("schedule-sync").unwrap(),
        "not A's to release"
    );
    assert!(b.release_lead("schedule-sync").unwrap());
    assert!(a.try_lead("schedule-sync", SHORT).unwrap().is_some());
}

#[test]
fn next_plan_at_and_next_check_at_decide_what_is_due() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    for id in ["s1", "s2", "s3"] {
        a.insert_subscription(&subscription(id), at(1, 1)).unwrap();
    }
    let mut tx = a.begin_plan(at(1, 1)).unwrap();
    tx.revisit("s1", Revisit::Never).unwrap();
    tx.revisit("s2", Revisit::At(at(2, 1))).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        a.plannable(at(1, 1)).unwrap(),
        ["s3"],
        "new is now; never and later are not"
    );
    assert_eq!(
        a.plannable(at(2, 1)).unwrap(),
        ["s3", "s2"],
        "oldest next_plan_at first: \"now\" before an instant"
    );

    // An unknown outcome waits for its next check.
    let job = plan_intent(&mut a, "s3", at(2, 1)).unwrap();
    let mut unknown = AttemptChange::to(AttemptState::Unknown);
    unknown.next_check_at = Some(at(2, 2));
    let results = a
        .apply_outcomes(&[outcome(&job, job.fence, &unknown, at(2, 1))])
        .unwrap();
    assert!(matches!(results[..], [Ok(true)]), "{results:?}");
    assert!(a.claim_due_attempts(at(2, 1)).unwrap().is_empty());
    let due = a.claim_due_attempts(at(2, 2)).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].state, AttemptState::Unknown);
    assert_eq!(due[0].fence, job.fence, "still ours");
}

#[test]
fn an_adhoc_charge_is_found_and_attempted() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    a.insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    a.execute_for_tests(
        "INSERT INTO charges (subscription_id, reference, due_date, amount_cents, currency, \
         bill_number, state, created_at) VALUES ('s1', 'inv-7', '2027-01-05', 1250, 'RUB', \
         '5899s1', 'open', '2027-01-05T07:00:00Z')",
    )
    .unwrap();
    let mut tx = a.begin_plan(at(1, 5)).unwrap();
    assert!(
        tx.history("s1").unwrap().unwrap().open.is_none(),
        "not a period"
    );
    let adhoc = tx.adhoc_open("s1").unwrap().unwrap();
    assert_eq!(adhoc.purpose, Purpose::Adhoc("inv-7".into()));
    assert_eq!(adhoc.amount, Money::parse("12.50").unwrap());
    let job = tx
        .new_attempt(
            "s1",
            &adhoc,
            "PFX-s1-x1-1",
            Utc::now(),
            intent("PFX-s1-x1-1"),
        )
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(job.purpose, Purpose::Adhoc("inv-7".into()));
    let mut tx = a.begin_plan(at(1, 5)).unwrap();
    assert!(
        tx.adhoc_open("s1").unwrap().is_none(),
        "its attempt is live"
    );
    assert!(a_periods_empty(&db));
}

fn a_periods_empty(db: &TestDb) -> bool {
    db.count("SELECT count(*) FROM charges WHERE period IS NOT NULL") == 0
}

#[test]
fn a_holder_keeps_its_fence_and_a_restart_under_the_same_name_is_a_new_holder() {
    let Some(db) = fresh_schema() else { return };
    let mut old = db.store("x", SHORT);
    old.insert_subscription(&subscription("s1"), at(1, 1))
        .unwrap();
    let job = plan_intent(&mut old, "s1", at(1, 1)).unwrap();
    thread::sleep(SHORT + Duration::from_millis(300));
    // Expired, but nobody took it: claiming it again keeps the fence (work in flight stays
    // valid).
    let again = old.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].fence, job.fence);

    // The same name from a new process (a new epoch) is another holder: it waits for the
    // lease, then takes the attempt under a new fence, and the old process is fenced off.
    let mut new = db.store("x", LONG);
    assert_eq!(new.epoch(), old.epoch() + 1);
    assert!(new.claim_due_attempts(at(1, 1)).unwrap().is_empty());
    thread::sleep(SHORT + Duration::from_millis(300));
    let taken = new.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(taken.len(), 1);
    assert!(taken[0].fence > job.fence);
    assert!(
        !old.mark_sending(&job, AttemptState::Pending, at(1, 1), Utc::now())
            .unwrap()
    );
    assert!(
        new.mark_sending(&taken[0], AttemptState::Pending, at(1, 1), Utc::now())
            .unwrap()
    );
}

// ---- schedule sync and the daemon's store ----

/// A schedule folder of `files` files of `per_file` monthly subscriptions each (ids `fIsJ`,
/// bill numbers unique).
fn schedule_folder(files: usize, per_file: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in 0..files {
        let mut text = String::new();
        for s in 0..per_file {
            text += &format!(
                "[[subscription]]\nid = \"f{f}s{s}\"\nbill_number = \"5899{f:03}{s:05}\"\n\
                 currency = \"RUB\"\namount = \"499.00\"\nevery = \"1 month\"\n\
                 start = 2027-01-01\n\n"
            );
        }
        std::fs::write(dir.path().join(format!("f{f}.toml")), text).unwrap();
    }
    dir
}

/// The rows the sync writes (subscriptions, schedule files: every column as JSON, in key
/// order) and the ledger's kinds with their counts.
fn synced_state(db: &TestDb) -> (String, String, String) {
    let mut client = db.client();
    let mut text = |sql: &str| -> String {
        client
            .query_one(sql, &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_default()
    };
    (
        text(
            "SELECT string_agg(row_to_json(s)::text, E'\\n' ORDER BY id COLLATE \"C\") \
             FROM subscriptions s",
        ),
        text(
            "SELECT string_agg(row_to_json(f)::text, E'\\n' ORDER BY file COLLATE \"C\") \
             FROM schedule_files f",
        ),
        text(
            "SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind) FROM \
             (SELECT kind, count(*) AS n FROM ledger GROUP BY kind) k",
        ),
    )
}

#[test]
fn two_instances_syncing_one_folder_at_once_write_each_row_once() {
    let Some(reference) = fresh_schema() else {
        return;
    };
    let folder = schedule_folder(6, 20);
    let now = at(1, 1);
    let summary = reference
        .store("alone", LONG)
        .sync_dir(folder.path(), now)
        .unwrap();
    assert_eq!(summary.files.len(), 6);
    let expected = synced_state(&reference);
    assert_eq!(expected.2, "subscription_added 120");

    for round in 0..3 {
        let db = fresh_schema().expect("the server went away");
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let mut store = db.store(name, LONG);
                let barrier = Arc::clone(&barrier);
                let path = folder.path().to_path_buf();
                thread::spawn(move || {
                    barrier.wait();
                    store.sync_dir(&path, now).unwrap()
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(synced_state(&db), expected, "round {round}");
        assert_eq!(
            db.count(
                "SELECT count(*) FROM (SELECT subscription_id FROM ledger \
                 WHERE kind = 'subscription_added' GROUP BY subscription_id \
                 HAVING count(*) <> 1) x"
            ),
            0,
            "one subscription_added per id"
        );
        assert_eq!(
            db.count("SELECT count(*) FROM outbox"),
            120,
            "every event went through the outbox trigger"
        );
        // Synced again by either: nothing changes.
        db.store("b", LONG)
            .sync_dir(folder.path(), at(1, 2))
            .unwrap();
        assert_eq!(synced_state(&db), expected, "round {round}, again");
    }
}

#[test]
fn the_schedule_lead_lets_one_instance_sync_until_it_lets_go() {
    let Some(db) = fresh_schema() else { return };
    let folder = schedule_folder(1, 2);
    let mut a = db.store("a", LONG);
    let mut b = db.store("b", LONG);
    let summary = a.sync_folder(folder.path(), at(1, 1)).unwrap();
    assert_eq!(summary.expect("A leads").files.len(), 1);
    assert!(
        b.sync_folder(folder.path(), at(1, 1)).unwrap().is_none(),
        "A holds the lead"
    );
    assert!(a.sync_folder(folder.path(), at(1, 1)).unwrap().is_some());
    assert!(a.schedule_ttl() >= MIN_SCHEDULE_TTL);
    // A clean stop gives the lead up: B syncs at once.
    a.release_claims().unwrap();
    assert!(b.sync_folder(folder.path(), at(1, 1)).unwrap().is_some());
    assert!(a.sync_folder(folder.path(), at(1, 1)).unwrap().is_none());
    assert_eq!(a.active_subscription_count().unwrap(), 2);
}

#[test]
fn released_claims_are_taken_over_at_once() {
    let Some(db) = fresh_schema() else { return };
    let mut a = db.store("a", LONG);
    let mut b = db.store("b", LONG);
    for id in ["s1", "s2"] {
        a.insert_subscription(&subscription(id), at(1, 1)).unwrap();
        plan_intent(&mut a, id, at(1, 1)).unwrap();
    }
    // Another instance's claims stay its own: A's release does not touch them.
    let mut c = db.store("c", LONG);
    c.insert_subscription(&subscription("s3"), at(1, 1))
        .unwrap();
    let held_by_c = plan_intent(&mut c, "s3", at(1, 1)).unwrap();
    assert!(
        b.claim_due_attempts(at(1, 1)).unwrap().is_empty(),
        "A and C hold them"
    );
    a.release_claims().unwrap();
    let taken = b.claim_due_attempts(at(1, 1)).unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|j| j.subscription_id.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"],
        "A's claims, at once; C's stay C's"
    );
    assert!(
        taken.iter().all(|j| j.fence > held_by_c.fence),
        "new fences"
    );
    assert!(
        a.claim_due_attempts(at(1, 1)).unwrap().is_empty(),
        "B's now"
    );
}

#[test]
fn a_tick_of_a_taken_over_instance_is_an_error_that_says_to_stop() {
    let Some(db) = fresh_schema() else { return };
    let mut old = db.store("a", LONG);
    old.record_tick(at(1, 1), at(1, 1)).unwrap();
    old.health().unwrap();
    let _new = db.store("a", LONG);
    let error = old.record_tick(at(1, 1), at(1, 1)).unwrap_err();
    assert!(
        matches!(error, StoreError::TakenOver { epoch: 1, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("instance a was taken over") && message.contains("stop this one"),
        "{message}"
    );
    assert!(old.health().is_err());
}

#[test]
fn with_a_calendar_a_new_subscription_is_first_planned_at_its_first_due_instant() {
    use crate::billing::{Calendar, CatchUp};
    let Some(db) = fresh_schema() else { return };
    let folder = schedule_folder(1, 1);
    let mut store = db.store("a", LONG);
    let calendar = Calendar {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace: chrono::Duration::hours(24),
    };
    store.use_calendar(&calendar).unwrap();
    let before = Utc.with_ymd_and_hms(2026, 12, 1, 7, 0, 0).unwrap();
    store.sync_dir(folder.path(), before).unwrap();
    // Starts 2027-01-01: 10:00 in Moscow is 07:00 UTC.
    let next_plan_at = |db: &TestDb| -> String {
        db.client()
            .query_one(
                "SELECT to_char(next_plan_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
                 FROM subscriptions WHERE id = 'f0s0'",
                &[],
            )
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_else(|| "-infinity".into())
    };
    assert_eq!(next_plan_at(&db), "2027-01-01 07:00:00");
    let due = Utc.with_ymd_and_hms(2027, 1, 1, 7, 0, 0).unwrap();
    assert!(
        store
            .plannable(due - chrono::Duration::microseconds(1))
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.plannable(due).unwrap(), ["f0s0"]);
    // The same calendar again changes nothing; another sets every subscription back to now.
    store.use_calendar(&calendar).unwrap();
    assert_eq!(next_plan_at(&db), "2027-01-01 07:00:00");
    store
        .use_calendar(&Calendar {
            grace: chrono::Duration::hours(1),
            ..calendar
        })
        .unwrap();
    assert_eq!(store.plannable(at(1, 1)).unwrap(), ["f0s0"]);
}
