//! The due sweep's index (`subscriptions.next_plan_at`) against the in-process sandbox: a
//! subscription is planned exactly when it falls due — after a sync, after a soft decline (its
//! retry), after a resume, after its terms change — and not before.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use recurrentd::billing::Calendar;
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{
    BUILTIN_LOGIN, BUILTIN_MERCHANT_ID, BUILTIN_PASSWORD, BUILTIN_SALT, Sandbox, SandboxConfig,
};
use recurrentd::store::{FileOutcome, Store};
use secrecy::SecretString;

fn subscription(id: &str, bill: &str, start: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"100.00\"\nevery = \"1 month\"\nstart = {start}\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    )
}

fn instant(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

async fn next_plan(engine: &Engine, id: &'static str) -> Option<String> {
    engine
        .with_store(move |s| s.next_plan_at(id))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_plans_a_subscription_exactly_when_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("schedules");
    std::fs::create_dir(&folder).unwrap();
    let file = folder.join("subs.toml");
    let text = |later_start: &str| {
        [
            subscription("ok", "5800000000000001", "2027-01-10"),
            // AS102 (soft: retried after a dunning day), AS101 (hard: needs a resume).
            subscription("soft", "9990000000000102", "2027-01-10"),
            subscription("hard", "9990000000000101", "2027-01-10"),
            subscription("later", "5800000000000002", later_start),
        ]
        .concat()
    };
    std::fs::write(&file, text("2027-03-05")).unwrap();

    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let calendar = Calendar::from(&BillingConfig {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace_hours: 24,
    });
    let clock = ManualClock::new(instant("2027-01-01T00:00:00Z"));
    let store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
    let client = Client::new(Settings {
        url: sandbox.url(),
        merchant_id: BUILTIN_MERCHANT_ID.into(),
        login: BUILTIN_LOGIN.into(),
        password: SecretString::from(BUILTIN_PASSWORD),
        salt: SecretString::from(BUILTIN_SALT),
        test_mode: true,
        format: ResponseFormat::Xml,
        connect_timeout: StdDuration::from_secs(2),
        timeout: StdDuration::from_secs(5),
    })
    .unwrap();
    // As the daemon: the engine (which records the calendar) first, then the sync.
    let engine = Engine::new(
        store,
        client,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        calendar,
        Policy::from(&EngineConfig::default()),
        Pacer::new(8, 1000),
    )
    .unwrap();
    let sync = |now: DateTime<Utc>| {
        let folder = folder.clone();
        engine.with_store(move |s| {
            s.sync_dir(&folder, now).map_err(|e| match e {
                recurrentd::store::SyncDirError::Store(e) => e,
                other => panic!("{other}"),
            })
        })
    };
    sync(clock.now()).await.unwrap();
    engine.reconcile().await.unwrap();

    // 2027-01-10 10:00 in Moscow.
    let due = instant("2027-01-10T07:00:00Z");
    assert_eq!(
        next_plan(&engine, "ok").await.as_deref(),
        Some("2027-01-10T07:00:00.000000Z")
    );
    assert_eq!(
        next_plan(&engine, "later").await.as_deref(),
        Some("2027-03-05T07:00:00.000000Z")
    );

    // A minute before: nothing to plan.
    clock.set(due - Duration::minutes(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.intents, 0);
    let listed = engine
        .with_store(move |s| s.plannable(due - Duration::microseconds(1)))
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");

    // At the due instant: the three due ones, each once.
    clock.set(due);
    let report = engine.tick().await.unwrap();
    assert_eq!(report.intents, 3, "{report:?}");
    assert_eq!(report.approved, 1, "{report:?}");
    assert_eq!(report.declined, 2, "{report:?}");

    // The next sweep settles them: ok waits for February, soft for its retry (one dunning day
    // later), hard for an operator; `later` is not looked at.
    clock.set(due + Duration::minutes(1));
    let report = engine.tick().await.unwrap();
    assert_eq!(report.intents, 0);
    assert_eq!(
        next_plan(&engine, "ok").await.as_deref(),
        Some("2027-02-10T07:00:00.000000Z")
    );
    let retry = next_plan(&engine, "soft").await.unwrap();
    let retry: DateTime<Utc> = retry.parse().unwrap();
    assert!(
        retry > due + Duration::hours(23)
            && retry <= due + Duration::days(1) + Duration::minutes(1),
        "{retry}"
    );
    assert_eq!(next_plan(&engine, "hard").await, None);

    // Just before the retry: nothing; at it: the second attempt.
    clock.set(retry - Duration::minutes(1));
    assert_eq!(engine.tick().await.unwrap().intents, 0);
    clock.set(retry);
    let report = engine.tick().await.unwrap();
    assert_eq!(report.intents, 1, "{report:?}");

    // The hard-declined one stays out until it is resumed, then is planned at once (its period
    // failed: it waits for February).
    let now = clock.now();
    assert_eq!(engine.tick().await.unwrap().intents, 0);
    let resumed = engine
        .with_store(move |s| s.clear_attention("hard", "test", "card replaced", now))
        .await
        .unwrap();
    assert!(resumed);
    assert_eq!(next_plan(&engine, "hard").await, None);
    assert_eq!(engine.tick().await.unwrap().intents, 0);
    assert_eq!(
        next_plan(&engine, "hard").await.as_deref(),
        Some("2027-02-10T07:00:00.000000Z")
    );

    // Its start moves earlier: the change is planned at the next sweep, and charged when due.
    std::fs::write(&file, text("2027-01-20")).unwrap();
    let summary = sync(clock.now()).await.unwrap();
    match summary.outcome("subs.toml") {
        Some(FileOutcome::Applied(changes)) => assert_eq!(changes.updated, vec!["later"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_plan(&engine, "later").await, None);
    assert_eq!(engine.tick().await.unwrap().intents, 0);
    assert_eq!(
        next_plan(&engine, "later").await.as_deref(),
        Some("2027-01-20T07:00:00.000000Z")
    );
    clock.set(instant("2027-01-20T07:00:00Z"));
    let report = engine.tick().await.unwrap();
    // `later`, approved, and soft's third attempt (its retry three dunning days after the
    // second was due on 2027-01-14), declined again.
    assert_eq!(
        (report.intents, report.approved, report.declined),
        (2, 1, 1),
        "{report:?}"
    );

    // The same file again: skipped.
    let summary = sync(clock.now()).await.unwrap();
    assert_eq!(summary.outcome("subs.toml"), Some(&FileOutcome::Unchanged));
    sandbox.shutdown().await;
}
