//! The books sweep end to end: the engine charges against the in-process sandbox on a manual
//! clock (magic `55x` bill numbers make the gateway's books disagree with what its other
//! services said), then `Engine::books` compares the day's resultbydate with the ledger.
//!
//! The gateway files orders by real time, so the day compared is today's (UTC).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDate, Utc};
use recurrentd::billing::Calendar;
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
use recurrentd::schedule;
use recurrentd::store::{Access, AttemptState, ChargeState, Store};
use secrecy::SecretString;

const PASSWORD: &str = "books-test-password";
const SALT: &str = "books-test-salt";

struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    clock: ManualClock,
    format: ResponseFormat,
}

fn subscription(id: &str, bill: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"100.00\"\nevery = \"1 month\"\nstart = 2027-01-01\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    )
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

impl World {
    async fn new(subscriptions: &[(&str, &str)], format: ResponseFormat) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        let text: String = subscriptions
            .iter()
            .map(|(id, bill)| subscription(id, bill))
            .collect();
        std::fs::write(dir.path().join("schedules/subs.toml"), text).unwrap();
        let sandbox = Sandbox::start(
            SandboxConfig {
                password: SecretString::from(PASSWORD),
                salt: SecretString::from(SALT),
                ..SandboxConfig::builtin()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        World {
            dir,
            sandbox,
            clock: ManualClock::new("2027-01-01T10:00:00Z".parse().unwrap()),
            format,
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("recurrentd.db")
    }

    fn client(&self) -> Client {
        Client::new(Settings {
            url: self.sandbox.url(),
            merchant_id: "123456".into(),
            login: "sandbox".into(),
            password: SecretString::from(PASSWORD),
            salt: SecretString::from(SALT),
            test_mode: true,
            format: self.format,
            connect_timeout: StdDuration::from_secs(2),
            timeout: StdDuration::from_secs(2),
        })
        .unwrap()
    }

    async fn start(&self) -> Engine {
        let mut store = Store::open_or_create(&self.db()).unwrap();
        let report = schedule::load_dir(&self.dir.path().join("schedules")).unwrap();
        assert_eq!(
            report.error_count(),
            0,
            "{:?}",
            report.diagnostics().collect::<Vec<_>>()
        );
        store.sync_schedules(&report, self.clock.now()).unwrap();
        let calendar = Calendar::from(&BillingConfig {
            timezone: "UTC".parse().unwrap(),
            charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace_hours: 24,
        });
        let engine = Engine::new(
            store,
            self.client(),
            Arc::new(self.clock.clone()) as Arc<dyn Clock>,
            calendar,
            Policy::from(&EngineConfig {
                breaker_failures: 1000,
                ..EngineConfig::default()
            }),
            Pacer::new(8, 1000),
        )
        .unwrap();
        engine.reconcile().await.unwrap();
        engine
    }

    fn store(&self) -> Store {
        Store::open(&self.db(), Access::ReadOnly).unwrap()
    }

    fn attempts(&self, subscription: &str) -> Vec<(String, AttemptState)> {
        self.store()
            .attempts()
            .unwrap()
            .into_iter()
            .filter(|a| a.subscription_id == subscription)
            .map(|a| (a.order_number, a.state))
            .collect()
    }

    fn kinds(&self, subscription: Option<&str>) -> Vec<String> {
        self.store()
            .ledger(subscription)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.kinds(None).iter().filter(|k| *k == kind).count()
    }
}

fn finding_kinds(report: &recurrentd::books::BooksReport) -> Vec<String> {
    let mut kinds: Vec<String> = report.findings.iter().map(|f| f.kind.clone()).collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn a_clean_day_is_one_ledger_event_however_often_it_is_run() {
    for format in [ResponseFormat::Xml, ResponseFormat::Json] {
        let world = World::new(
            &[("ok-1", "5111111111111111"), ("ok-2", "5222222222222222")],
            format,
        )
        .await;
        let engine = world.start().await;
        engine.tick().await.unwrap();
        assert_eq!(world.attempts("ok-1")[0].1, AttemptState::Approved);
        let report = engine.books(today()).await.unwrap();
        assert!(report.clean(), "{format:?}: {:?}", report.findings);
        assert_eq!(report.gateway_orders, 2);
        assert_eq!(report.ledger_approved, 2);
        let again = engine.books(today()).await.unwrap();
        assert!(again.clean());
        assert_eq!(world.count("books_clean"), 1, "{format:?}");
    }
}

#[tokio::test]
async fn a_quarantined_charge_the_books_show_paid_is_booked_once() {
    // 777: every status answer fails verification, the books show the order right.
    let world = World::new(&[("q-1", "9990000777")], ResponseFormat::Xml).await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    assert_eq!(world.attempts("q-1")[0].1, AttemptState::Quarantined);
    let report = engine.books(today()).await.unwrap();
    assert_eq!(finding_kinds(&report), ["late_booked"]);
    assert_eq!(report.new_findings, 1);
    assert_eq!(world.attempts("q-1")[0].1, AttemptState::Approved);
    let periods = world.store().periods(Some("q-1")).unwrap();
    assert_eq!(periods[0].state, ChargeState::Paid);
    let approved: Vec<_> = world
        .store()
        .ledger(Some("q-1"))
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "charge_approved")
        .collect();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].detail["source"], "books");
    assert_eq!(world.count("books_late_booked"), 1);
    // Again: nothing new, nothing booked twice.
    let again = engine.books(today()).await.unwrap();
    assert_eq!(again.new_findings, 0);
    assert_eq!(finding_kinds(&again), ["late_booked"]);
    assert_eq!(world.count("charge_approved"), 1);
    assert_eq!(world.count("books_late_booked"), 1);
    assert_eq!(world.count("books_clean"), 0);
}

#[tokio::test]
async fn an_unresolved_charge_the_books_show_paid_is_booked() {
    // 552: rp.cfm and the status services say In Process for ever.
    let world = World::new(&[("p-1", "9990000552")], ResponseFormat::Json).await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    let state = world.attempts("p-1")[0].1;
    assert!(state.unresolved(), "{state:?}");
    let report = engine.books(today()).await.unwrap();
    assert_eq!(finding_kinds(&report), ["late_booked"]);
    assert_eq!(world.attempts("p-1")[0].1, AttemptState::Approved);
    // The engine's next look at it changes nothing and raises nothing.
    world.clock.advance(Duration::hours(1));
    engine.tick().await.unwrap();
    assert_eq!(world.attempts("p-1")[0].1, AttemptState::Approved);
    assert_eq!(world.count("charge_approved"), 1);
    assert_eq!(world.count("late_approval"), 0);
}

#[tokio::test]
async fn a_late_filed_first_charge_is_an_unbooked_charge_and_a_double_approval() {
    // 551: the first charge is made, its reply lost, and the status services never find it: the
    // engine takes it as not received and charges the period again.
    let world = World::new(&[("h-1", "9990000551")], ResponseFormat::Xml).await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    for _ in 0..40 {
        if world.attempts("h-1").len() == 2 && world.attempts("h-1")[1].1 == AttemptState::Approved
        {
            break;
        }
        world.clock.advance(Duration::minutes(20));
        engine.tick().await.unwrap();
    }
    let attempts = world.attempts("h-1");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].1, AttemptState::NotReceived);
    assert_eq!(attempts[1].1, AttemptState::Approved);
    let report = engine.books(today()).await.unwrap();
    assert_eq!(
        finding_kinds(&report),
        ["double_approval", "unbooked_charge"]
    );
    let unbooked = report
        .findings
        .iter()
        .find(|f| f.kind == "unbooked_charge")
        .unwrap();
    assert_eq!(unbooked.order_number, attempts[0].0);
    // Held: a possible double charge waits for an operator.
    let status = world.store().status(false).unwrap();
    let kinds: Vec<&str> = status.needs_attention.iter().map(|a| a.kind).collect();
    assert!(kinds.contains(&"double_approval"), "{kinds:?}");
    assert!(kinds.contains(&"books"), "{kinds:?}");
    assert!(world.store().attention("h-1").unwrap().is_some());
    // Nothing was booked: the not-received attempt stays as it was.
    assert_eq!(world.attempts("h-1")[0].1, AttemptState::NotReceived);
    let again = engine.books(today()).await.unwrap();
    assert_eq!(again.new_findings, 0);
    assert_eq!(world.count("books_unbooked_charge"), 1);
    assert_eq!(world.count("books_double_approval"), 1);
}

#[tokio::test]
async fn amounts_extra_orders_missing_and_declined_orders_are_findings() {
    let world = World::new(
        &[
            ("amt-1", "9990000553"),
            ("extra-1", "9990000554"),
            ("gone-1", "9990000555"),
            ("decl-1", "9990000556"),
            ("fine-1", "5333333333333333"),
        ],
        ResponseFormat::Xml,
    )
    .await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    for id in ["amt-1", "extra-1", "gone-1", "decl-1", "fine-1"] {
        assert_eq!(world.attempts(id)[0].1, AttemptState::Approved, "{id}");
    }
    let report = engine.books(today()).await.unwrap();
    assert_eq!(
        finding_kinds(&report),
        [
            "amount_mismatch",
            "not_at_gateway",
            "not_at_gateway",
            "unknown_order"
        ]
    );
    let by_kind = |kind: &str| -> Vec<&recurrentd::store::BookFinding> {
        report.findings.iter().filter(|f| f.kind == kind).collect()
    };
    assert_eq!(
        by_kind("amount_mismatch")[0].subscription_id.as_deref(),
        Some("amt-1")
    );
    assert_eq!(
        by_kind("amount_mismatch")[0].detail["gateway_amount"],
        "101.00"
    );
    assert_eq!(
        by_kind("unknown_order")[0].order_number,
        format!("{}-E", world.attempts("extra-1")[0].0)
    );
    let mut missing: Vec<_> = by_kind("not_at_gateway")
        .iter()
        .map(|f| {
            (
                f.subscription_id.clone().unwrap(),
                f.detail["gateway_states"].clone(),
            )
        })
        .collect();
    missing.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(missing[0].0, "decl-1");
    assert_eq!(missing[0].1, serde_json::json!(["Declined"]));
    assert_eq!(missing[1].0, "gone-1");
    assert_eq!(missing[1].1, serde_json::json!([]));
    for kind in [
        "books_amount_mismatch",
        "books_unknown_order",
        "books_not_at_gateway",
    ] {
        assert!(world.count(kind) >= 1, "{kind}");
    }
    // Nothing here is booked or held: the ledger's approvals stand.
    assert!(world.store().attention("amt-1").unwrap().is_none());
    let again = engine.books(today()).await.unwrap();
    assert_eq!(again.new_findings, 0);
    assert_eq!(again.findings.len(), 4);
}

#[tokio::test]
async fn a_record_failing_its_checkvalue_is_an_integrity_finding_never_paid() {
    // 557: approved, but the books give the order a wrong checkvalue: reported, neither taken
    // as paid nor as absent.
    let world = World::new(&[("bad-1", "9990000557")], ResponseFormat::Json).await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    let report = engine.books(today()).await.unwrap();
    assert_eq!(finding_kinds(&report), ["integrity"]);
    assert_eq!(
        report.findings[0].detail["reason"],
        "checkvalue does not verify with our salt and merchant id"
    );
    assert_eq!(world.count("books_integrity"), 1);
}

#[tokio::test]
async fn a_reply_that_may_be_cut_is_an_error_never_a_short_list() {
    // Three orders in one minute, a service that caps replies at two: the client narrows the
    // window down to a minute, where a full reply is an error (the day is not compared).
    let world = World::new(
        &[
            ("c-1", "5100000000000001"),
            ("c-2", "5100000000000002"),
            ("c-3", "5100000000000003"),
        ],
        ResponseFormat::Xml,
    )
    .await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    world.sandbox.set_result_cap(Some(2));
    let client = world.client().with_books_page_rows(2);
    let records = client
        .results_by_date(Utc::now() - Duration::hours(1), Utc::now())
        .await;
    assert!(records.is_err(), "{records:?}");
    // An uncapped service and the client's own page size: all three, over two day windows.
    world.sandbox.set_result_cap(None);
    let records = world
        .client()
        .results_by_date(Utc::now() - Duration::hours(30), Utc::now())
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.paid()));
}

/// `recurrentd books` through the real binary, against the database the engine wrote.
fn books_command(world: &World, args: &[&str]) -> std::process::Output {
    books_command_at(world, &world.sandbox.url(), args)
}

/// The same with the gateway at `url`.
fn books_command_at(world: &World, url: &str, args: &[&str]) -> std::process::Output {
    let config = world.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = \"{}\"\n\n[gateway]\nurl = \"{}\"\nmerchant_id = \"123456\"\n\
             login = \"sandbox\"\ntest_mode = true\nconnect_timeout_secs = 1\ntimeout_secs = 5\n\n\
             [billing]\ntimezone = \"UTC\"\n",
            world.db().display(),
            url
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("CONFIGURATION_DIRECTORY")
        .env("RECURRENTD_SECRET_PASSWORD", PASSWORD)
        .env("RECURRENTD_SECRET_SALT", SALT)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_command_prints_findings_and_exits_by_them() {
    let world = World::new(
        &[("cli-ok", "5444444444444444"), ("cli-amt", "9990000553")],
        ResponseFormat::Xml,
    )
    .await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    drop(engine);
    let date = today().to_string();

    // A day with no orders: clean, exit 0.
    let empty = today() - Duration::days(3);
    let out = books_command(&world, &["books", "--date", &empty.to_string(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["clean"], true);
    assert_eq!(json["findings"], serde_json::json!([]));

    // Today: the amount mismatch, exit 1, in JSON and in text; a re-run adds nothing.
    let out = books_command(&world, &["books", "--date", &date, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["clean"], false);
    assert_eq!(json["new_findings"], 1);
    assert_eq!(json["gateway_orders"], 2);
    assert_eq!(json["findings"][0]["kind"], "amount_mismatch");
    assert_eq!(json["findings"][0]["subscription_id"], "cli-amt");
    let id = json["findings"][0]["id"].as_i64().unwrap();
    let out = books_command(&world, &["books", "--date", &date]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("amount_mismatch"), "{text}");
    assert!(text.contains("0 new in this run"), "{text}");
    assert_eq!(world.count("books_amount_mismatch"), 1);

    // `status` shows it until acknowledged.
    let out = books_command(&world, &["status", "--json", "--offline-ok"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["needs_attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "books"),
        "{status}"
    );
    let out = books_command(
        &world,
        &["books", "--ack", &id.to_string(), "--reason", "checked"],
    );
    assert_eq!(out.status.code(), Some(0));
    let out = books_command(&world, &["status", "--json", "--offline-ok"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !status["needs_attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "books"),
        "{status}"
    );
    assert_eq!(world.count("books_acknowledged"), 1);

    // The gateway unreachable: exit 69, nothing recorded for that day.
    let other = (today() - Duration::days(5)).to_string();
    let out = books_command_at(&world, "http://127.0.0.1:9", &["books", "--date", &other]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = world.store();
    assert!(!store.book_run_exists(other.parse().unwrap()).unwrap());
}

#[tokio::test]
async fn the_daily_sweep_compares_yesterday_once_and_remembers_it() {
    let world = World::new(&[("d-1", "5555555555555555")], ResponseFormat::Xml).await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    let runner = engine.books_runner();
    let zone: chrono_tz::Tz = "UTC".parse().unwrap();
    let midnight = chrono::NaiveTime::from_hms_opt(0, 0, 0).unwrap();
    let yesterday = today().pred_opt().unwrap();
    let ran = recurrentd::daemon::books::run_due(&runner, zone, midnight)
        .await
        .unwrap();
    assert_eq!(ran, Some(yesterday));
    assert_eq!(world.store().books_through().unwrap(), Some(yesterday));
    assert!(world.store().book_run_exists(yesterday).unwrap());
    assert_eq!(world.count("books_clean"), 1);
    // Nothing more is due until tomorrow: a restart would not repeat the day.
    let again = recurrentd::daemon::books::run_due(&runner, zone, midnight)
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(world.count("books_clean"), 1);
}

/// `refund` / `books` through the real binary: exit 0 (the stderr in the message otherwise) and
/// the JSON it printed.
fn command_json(world: &World, args: &[&str]) -> serde_json::Value {
    let out = books_command(world, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_refunded_through_recurrentd_are_no_finding() {
    let world = World::new(
        &[
            ("full-1", "5611111111111111"),
            ("part-1", "5622222222222222"),
        ],
        ResponseFormat::Xml,
    )
    .await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    let full = world.attempts("full-1")[0].clone();
    let part = world.attempts("part-1")[0].clone();
    assert_eq!(
        (full.1, part.1),
        (AttemptState::Approved, AttemptState::Approved)
    );
    assert!(engine.books(today()).await.unwrap().clean());

    // The operator refunds one charge in full and 30.00 of the other.
    let json = command_json(
        &world,
        &["refund", &full.0, "--reason", "cancelled", "--json"],
    );
    assert_eq!(json["status"], "completed", "{json}");
    let json = command_json(
        &world,
        &[
            "refund", &part.0, "--amount", "30.00", "--reason", "goodwill", "--json",
        ],
    );
    assert_eq!(json["status"], "completed", "{json}");
    let states: Vec<_> = world
        .sandbox
        .book()
        .orders
        .iter()
        .map(|o| o.state)
        .collect();
    assert!(
        states.contains(&recurrentd::gateway::sandbox::OrderState::Canceled),
        "{states:?}"
    );

    // The day compared again (`books --date`, and the engine's own run): still clean.
    let date = today().to_string();
    let json = command_json(&world, &["books", "--date", &date, "--json"]);
    assert_eq!(json["clean"], true, "{json}");
    assert_eq!(json["gateway_orders"], 2);
    assert_eq!(json["ledger_approved"], 2);
    let report = engine.books(today()).await.unwrap();
    assert!(report.clean(), "{:?}", report.findings);
    assert_eq!(world.count("books_not_at_gateway"), 0);
    assert_eq!(world.count("books_refund_mismatch"), 0);
    assert_eq!(world.count("books_clean"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_refunded_outside_recurrentd_are_a_refund_mismatch() {
    let world = World::new(
        &[("out-1", "5633333333333333"), ("mix-1", "5644444444444444")],
        ResponseFormat::Json,
    )
    .await;
    let engine = world.start().await;
    engine.tick().await.unwrap();
    let out = world.attempts("out-1")[0].clone();
    let mix = world.attempts("mix-1")[0].clone();
    // mix-1: 30.00 refunded through recurrentd, then the rest in the merchant portal; out-1:
    // refunded in full in the portal.
    let json = command_json(
        &world,
        &[
            "refund", &mix.0, "--amount", "30.00", "--reason", "goodwill", "--json",
        ],
    );
    assert_eq!(json["status"], "completed", "{json}");
    let client = world.client();
    let records = client
        .results_by_date(Utc::now() - Duration::hours(1), Utc::now())
        .await
        .unwrap();
    let bill = |order: &str| {
        records
            .iter()
            .find(|r| r.order_number == order)
            .unwrap()
            .bill_number
            .clone()
    };
    let rub = recurrentd::money::Currency::parse("RUB").unwrap();
    let money = |text: &str| recurrentd::money::Money::parse(text).unwrap();
    for (order, amount) in [(&out.0, "100.00"), (&mix.0, "70.00")] {
        let bill = bill(order);
        let reply = client
            .cancel(&recurrentd::gateway::client::CancelRequest {
                order_number: order,
                bill_number: &bill,
                order_amount: money("100.00"),
                amount: money(amount),
                currency: rub,
                reason: "portal",
            })
            .await;
        assert_eq!(
            reply.claim,
            recurrentd::gateway::outcome::Outcome::Approved,
            "{reply:?}"
        );
    }

    let report = engine.books(today()).await.unwrap();
    assert_eq!(
        finding_kinds(&report),
        ["refund_mismatch", "refund_mismatch"]
    );
    let finding = |order: &str| {
        report
            .findings
            .iter()
            .find(|f| f.order_number == order)
            .unwrap()
            .clone()
    };
    let outside = finding(&out.0);
    assert_eq!(outside.subscription_id.as_deref(), Some("out-1"));
    assert_eq!(outside.detail["gateway_state"], "Canceled");
    assert_eq!(outside.detail["ledger_refunded"], "0.00");
    assert_eq!(outside.detail["ledger_refund_pending"], "0.00");
    assert_eq!(
        outside.detail["reason"],
        "reversed at the gateway but the ledger has no refund: a refund made outside recurrentd?"
    );
    let mixed = finding(&mix.0);
    assert_eq!(mixed.detail["gateway_state"], "Canceled");
    assert_eq!(mixed.detail["ledger_amount"], "100.00");
    assert_eq!(mixed.detail["ledger_refunded"], "30.00");
    assert_eq!(
        mixed.detail["reason"],
        "the ledger's refunds do not match the gateway's state"
    );
    assert_eq!(world.count("books_refund_mismatch"), 2);
    assert_eq!(world.count("books_not_at_gateway"), 0);

    // An item of `status` and an event for the merchant's systems, like every books finding.
    let out_status = books_command(&world, &["status", "--json", "--offline-ok"]);
    assert_eq!(out_status.status.code(), Some(1), "{out_status:?}");
    let status: serde_json::Value = serde_json::from_slice(&out_status.stdout).unwrap();
    let books: Vec<&serde_json::Value> = status["needs_attention"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "books")
        .collect();
    assert_eq!(books.len(), 2, "{status}");
    assert!(
        books
            .iter()
            .all(|a| a["detail"].as_str().unwrap().contains("refund_mismatch")),
        "{books:?}"
    );
    let out_events = books_command(&world, &["events", "--json"]);
    let events = String::from_utf8_lossy(&out_events.stdout);
    assert_eq!(
        events.matches("books_refund_mismatch").count(),
        2,
        "{events}"
    );

    // Again: nothing new.
    let again = engine.books(today()).await.unwrap();
    assert_eq!(again.new_findings, 0);
    assert_eq!(world.count("books_refund_mismatch"), 2);
}
