//! Refunds (issue 14, item 2): the cancel client against the in-process sandbox (full, partial,
//! beyond what remains, every fault), and the real binary's `refund` end to end (not ours, not
//! approved, reruns, a crash mid-request, two runs at once, history, forecast, and the daemon
//! that never charges a refunded period again).

mod common;

use std::process::Output;
use std::time::Duration;

use chrono::Utc;
use recurrentd::config::ResponseFormat;
use recurrentd::gateway::client::{
    CancelRequest, ChargeRequest, Client, Settings, StatusAnswer, StatusQuery,
};
use recurrentd::gateway::outcome::Outcome;
use recurrentd::gateway::sandbox::{self, OrderState, RpOutcome, Sandbox, SandboxConfig};
use recurrentd::money::{Currency, Money};
use secrecy::SecretString;

fn money(text: &str) -> Money {
    Money::parse(text).unwrap()
}

fn rub() -> Currency {
    Currency::parse("RUB").unwrap()
}

async fn start(hang: Duration) -> Sandbox {
    let config = SandboxConfig {
        hang,
        ..SandboxConfig::builtin()
    };
    Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn client(url: &str, format: ResponseFormat) -> Client {
    Client::new(Settings {
        url: url.to_string(),
        merchant_id: sandbox::BUILTIN_MERCHANT_ID.into(),
        login: sandbox::BUILTIN_LOGIN.into(),
        password: SecretString::from(sandbox::BUILTIN_PASSWORD),
        salt: SecretString::from(sandbox::BUILTIN_SALT),
        test_mode: true,
        format,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
    })
    .unwrap()
}

/// A 100.00 RUB charge, approved; returns its order result.
async fn charged(client: &Client, order: &str) -> StatusAnswer {
    let reply = client
        .charge(&ChargeRequest {
            bill_number: "5800000000000001",
            order_number: order,
            amount: money("100.00"),
            currency: rub(),
            comment: None,
        })
        .await;
    assert_eq!(reply.claim, Outcome::Approved);
    result(client, order).await
}

async fn result(client: &Client, order: &str) -> StatusAnswer {
    client
        .order_result(&StatusQuery {
            order_number: order,
            amount: money("100.00"),
            currency: rub(),
            sent_at: Utc::now(),
            known_test_mode: None,
        })
        .await
}

fn cancel<'a>(order: &'a str, bill: &'a str, amount: &str, reason: &'a str) -> CancelRequest<'a> {
    CancelRequest {
        order_number: order,
        bill_number: bill,
        order_amount: money("100.00"),
        amount: money(amount),
        currency: rub(),
        reason,
    }
}

/// (verified state, refunded cents, payment billnumber) of an order result.
fn reversals(answer: &StatusAnswer) -> (String, i64, String) {
    assert!(answer.verified.checkvalue_verified, "{answer:?}");
    let r = answer.verified.reversals.as_ref().unwrap();
    (
        r.order_state.clone(),
        r.refunded_cents,
        r.payment_bill_number.clone().unwrap(),
    )
}

#[tokio::test]
async fn partial_then_full_refunds_show_in_the_verified_order_result_in_both_formats() {
    let sandbox = start(Duration::from_secs(3)).await;
    for (i, format) in [ResponseFormat::Xml, ResponseFormat::Json]
        .into_iter()
        .enumerate()
    {
        let client = client(&sandbox.url(), format);
        let order = format!("R{i}-1");
        let (state, refunded, bill) = reversals(&charged(&client, &order).await);
        assert_eq!((state.as_str(), refunded), ("Approved", 0));
        assert!(bill.starts_with("5800000000000001."), "{bill}");

        let reply = client
            .cancel(&cancel(&order, &bill, "30.00", "goodwill"))
            .await;
        assert_eq!(reply.claim, Outcome::Approved, "{reply:?}");
        assert_eq!(reply.response_code.as_deref(), Some("AS000"));
        let after = result(&client, &order).await;
        assert_eq!(
            reversals(&after),
            ("PartialCanceled".into(), 3000, bill.clone())
        );
        // For the engine's status path a partly refunded order is neither paid nor declined.
        assert!(matches!(after.verified.outcome, Outcome::Unknown(_)));

        // More than remains is refused by the gateway (a request-level error), nothing applied.
        let beyond = client
            .cancel(&cancel(&order, &bill, "70.01", "too much"))
            .await;
        assert!(matches!(beyond.claim, Outcome::Rejected(_)), "{beyond:?}");
        assert_eq!(reversals(&result(&client, &order).await).1, 3000);

        let rest = client.cancel(&cancel(&order, &bill, "70.00", "rest")).await;
        assert_eq!(rest.claim, Outcome::Approved, "{rest:?}");
        let full = result(&client, &order).await;
        assert_eq!(reversals(&full), ("Canceled".into(), 10000, bill.clone()));
        // A Canceled order is never "paid" nor a decline to retry for the engine.
        assert!(matches!(full.verified.outcome, Outcome::Unknown(_)));
        let order_status = client
            .order_status(&StatusQuery {
                order_number: &order,
                amount: money("100.00"),
                currency: rub(),
                sent_at: Utc::now(),
                known_test_mode: Some(true),
            })
            .await;
        assert!(
            matches!(order_status.outcome(), Outcome::Unknown(_)),
            "{order_status:?}"
        );
        // Nothing left: refused.
        let again = client.cancel(&cancel(&order, &bill, "1.00", "again")).await;
        assert!(matches!(again.claim, Outcome::Rejected(_)), "{again:?}");
    }
    let book = sandbox.book();
    assert_eq!(book.cancels.len(), 8);
    let orders: Vec<_> = book.orders.iter().map(|o| o.state).collect();
    assert_eq!(orders, [OrderState::Canceled, OrderState::Canceled]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cancel_fault_is_an_unknown_claim_and_the_order_result_tells_the_truth() {
    // The client waits 1 s; behaviour 408 answers after 3 s.
    let sandbox = start(Duration::from_secs(3)).await;
    let client = client(&sandbox.url(), ResponseFormat::Xml);
    // (magic reason, applied by the gateway?)
    let cases = [
        ("999408 timeout after the refund", true),
        ("999500 HTTP 500 after the refund", true),
        ("999666 garbage after the refund", true),
        ("999409 connection dropped after the refund", true),
        ("999503 HTTP 503, nothing applied", false),
    ];
    for (i, (reason, applied)) in cases.into_iter().enumerate() {
        let order = format!("F-{i}");
        let (_, _, bill) = reversals(&charged(&client, &order).await);
        let reply = client.cancel(&cancel(&order, &bill, "40.00", reason)).await;
        assert!(
            matches!(reply.claim, Outcome::Unknown(_)),
            "{reason}: {reply:?}"
        );
        let (state, refunded, _) = reversals(&result(&client, &order).await);
        if applied {
            assert_eq!(
                (state.as_str(), refunded),
                ("PartialCanceled", 4000),
                "{reason}"
            );
        } else {
            assert_eq!((state.as_str(), refunded), ("Approved", 0), "{reason}");
        }
    }
    // A refused refund: a claimed decline, and the order unchanged (a Declined operation).
    let (_, _, bill) = reversals(&charged(&client, "F-decline").await);
    let reply = client
        .cancel(&cancel("F-decline", &bill, "40.00", "999102 refused"))
        .await;
    assert!(matches!(reply.claim, Outcome::Declined(_)), "{reply:?}");
    let answer = result(&client, "F-decline").await;
    assert_eq!(reversals(&answer).0, "Approved");
    assert_eq!(answer.verified.reversals.as_ref().unwrap().declined, 1);
    // A cancel naming another order of ours is refused.
    let (_, _, other_bill) = reversals(&charged(&client, "F-other").await);
    let wrong = client
        .cancel(&cancel("F-decline", &other_bill, "1.00", "wrong order"))
        .await;
    assert!(matches!(wrong.claim, Outcome::Rejected(_)), "{wrong:?}");
    assert!(matches!(
        sandbox.book().cancels.last().unwrap().outcome,
        RpOutcome::Refused(_)
    ));
}

// ---------------------------------------------------------------------------------------------
// The real binary.

/// A rig whose gateway timeout is `timeout_secs`, with one subscription `acme-1` (100.00 RUB
/// monthly from 2027-01-05, limits 50.00..150.00) against `bill`.
fn rig(sandbox: &Sandbox, timeout_secs: u32, bill: &str) -> common::Rig {
    let rig = common::Rig::new(sandbox, "");
    let config = std::fs::read_to_string(rig.config()).unwrap();
    std::fs::write(
        rig.config(),
        config.replace(
            "timeout_secs = 10",
            &format!("timeout_secs = {timeout_secs}"),
        ),
    )
    .unwrap();
    rig.write_schedule(
        "acme.toml",
        &common::subscription("acme-1", bill, "100.00", "2027-01-05"),
    );
    rig
}

/// The daemon on a rehearsal clock from `from` to `until` (a virtual day a second, ten for a
/// month and more).
fn rehearse(rig: &common::Rig, from: &str, until: &str) {
    let mut command = rig.command();
    let speed = if until.starts_with("2027-01-06") {
        "86400"
    } else {
        "864000"
    };
    command.args(["run", "--clock-start", from, "--clock-speed", speed]);
    if !rig.db().exists() {
        command.arg("--init");
    }
    let out = command
        .args(["--until", until])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    if std::env::var_os("REFUND_TEST_LOG").is_some() {
        eprintln!("{}", text(&out.stderr));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The order number of acme-1's period 0, approved.
fn approved_order(rig: &common::Rig) -> String {
    let rows = rig.history(Some("acme-1"));
    let row = rows
        .iter()
        .find(|r| r["period_index"] == 0)
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row["state"], "approved", "{row}");
    row["order_number"].as_str().unwrap().to_string()
}

fn refund(rig: &common::Rig, order: &str, args: &[&str]) -> (Output, serde_json::Value) {
    let mut all = vec!["refund", order, "--json"];
    all.extend_from_slice(args);
    let out = rig.run(&all);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn cancels(sandbox: &Sandbox) -> usize {
    sandbox.book().cancels.len()
}

fn ledger_kinds(rig: &common::Rig) -> Vec<String> {
    let conn = rusqlite::Connection::open(rig.db()).unwrap();
    let mut statement = conn
        .prepare("SELECT kind FROM ledger WHERE kind LIKE 'refund_%' ORDER BY seq")
        .unwrap();
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_partial_then_the_rest_once_each_and_the_daemon_never_charges_that_period_again() {
    let sandbox = start(Duration::from_secs(3)).await;
    let rig = rig(&sandbox, 10, "5800000000000001");
    rehearse(&rig, "2027-01-05T06:00:00Z", "2027-01-06T00:00:00Z");
    let order = approved_order(&rig);

    let (out, json) = refund(&rig, &order, &["--amount", "30.00", "--reason", "goodwill"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json["status"], "completed", "{json}");
    assert_eq!(json["amount"], "30.00");
    assert_eq!(json["refunded"], "30.00");
    assert_eq!(json["remaining"], "70.00");
    assert_eq!(json["state"], "completed");
    assert_eq!(cancels(&sandbox), 1);

    // The same command again: the refund is reported, nothing is sent.
    let (out, json) = refund(&rig, &order, &["--amount", "30.00", "--reason", "goodwill"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json["status"], "exists", "{json}");
    assert_eq!(cancels(&sandbox), 1);

    // Never more than remains: refused before anything is sent.
    let (out, _) = refund(&rig, &order, &["--amount", "70.01", "--reason", "more"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("more than remains"), "{out:?}");
    assert_eq!(cancels(&sandbox), 1);

    // The rest (no --amount).
    let (out, json) = refund(&rig, &order, &["--reason", "cancelled by the customer"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json["amount"], "70.00", "{json}");
    assert_eq!(json["refunded"], "100.00");
    assert_eq!(json["remaining"], "0.00");
    assert_eq!(cancels(&sandbox), 2);
    assert_eq!(sandbox.book().orders[0].state, OrderState::Canceled);
    let (out, _) = refund(&rig, &order, &["--reason", "once more"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("refunded in full"), "{out:?}");
    assert_eq!(cancels(&sandbox), 2);

    // The ledger keeps the approval and adds the refunds.
    assert_eq!(
        ledger_kinds(&rig),
        [
            "refund_requested",
            "refund_completed",
            "refund_requested",
            "refund_completed"
        ]
    );
    let rows = rig.history(Some("acme-1"));
    let row = rows.iter().find(|r| r["order_number"] == order).unwrap();
    assert_eq!(row["state"], "approved", "{row}");
    assert_eq!(row["refunded"], "100.00", "{row}");

    // forecast: the period is charged, and refunded.
    let out = rig.run(&[
        "forecast",
        "--from",
        "2027-01-01T00:00:00Z",
        "--days",
        "20",
        "--json",
    ]);
    let forecast: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = forecast["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["period_index"] == 0)
        .unwrap()
        .clone();
    assert_eq!(entry["status"], "charged", "{entry}");
    assert_eq!(entry["refunded"], "100.00", "{entry}");
    let table = text(
        &rig.run(&["forecast", "--from", "2027-01-01T00:00:00Z", "--days", "20"])
            .stdout,
    );
    assert!(table.contains("refunded 100.00"), "{table}");

    // The daemon again, through the next period: period 0 (refunded, Canceled at the gateway)
    // is neither looked up again nor charged again; period 1 is charged as usual.
    rehearse(&rig, "2027-01-06T00:00:00Z", "2027-02-06T00:00:00Z");
    let book = sandbox.book();
    assert_eq!(book.rp_requests.len(), 2, "{:?}", book.rp_requests);
    assert_eq!(book.orders.len(), 2);
    let rows = rig.history(Some("acme-1"));
    let states: Vec<_> = rows
        .iter()
        .map(|r| (r["period_index"].clone(), r["state"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (serde_json::json!(0), serde_json::json!("approved")),
            (serde_json::json!(1), serde_json::json!("approved"))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_refuses_what_is_not_an_approved_charge_of_ours() {
    let sandbox = start(Duration::from_secs(3)).await;
    // 102: every charge is declined.
    let rig = rig(&sandbox, 10, "9990000102");
    rehearse(&rig, "2027-01-05T06:00:00Z", "2027-01-06T00:00:00Z");
    let rows = rig.history(Some("acme-1"));
    let declined = rows
        .iter()
        .find(|r| r["state"] == "declined")
        .unwrap_or_else(|| panic!("{rows:?}"));
    let order = declined["order_number"].as_str().unwrap();
    let (out, _) = refund(&rig, order, &["--reason", "mistake"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("only an approved charge"),
        "{out:?}"
    );
    let (out, json) = refund(&rig, "ZZZZZZZZ-acme-1-0-1", &["--reason", "mistake"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(json["status"], "refused", "{json}");
    assert_eq!(json["order_number"], "ZZZZZZZZ-acme-1-0-1", "{json}");
    assert!(
        text(&out.stderr).contains("not an order of this database"),
        "{out:?}"
    );
    let (out, _) = refund(&rig, order, &["--reason", " "]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(cancels(&sandbox), 0);
    assert!(ledger_kinds(&rig).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_faults_are_looked_up_never_sent_twice() {
    // The binary waits 1 s for an answer; 408 answers after 3 s.
    let sandbox = start(Duration::from_secs(3)).await;
    let rig = rig(&sandbox, 1, "5800000000000001");
    rehearse(&rig, "2027-01-05T06:00:00Z", "2027-01-06T00:00:00Z");
    let order = approved_order(&rig);

    // Timeout after the refund was applied, HTTP 500 after it, garbage after it: each is
    // looked up and completed by the order's verified result; the rerun sends nothing.
    let mut sent = 0;
    for (amount, reason, refunded) in [
        ("10.00", "999408 timeout", "10.00"),
        ("10.00", "999500 server error", "20.00"),
        ("10.00", "999666 garbage", "30.00"),
    ] {
        let (out, json) = refund(&rig, &order, &["--amount", amount, "--reason", reason]);
        sent += 1;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{reason}: {}",
            text(&out.stderr)
        );
        assert_eq!(json["status"], "completed", "{reason}: {json}");
        assert_eq!(json["refunded"], refunded, "{json}");
        assert_eq!(cancels(&sandbox), sent, "{reason}");
        let (out, json) = refund(&rig, &order, &["--amount", amount, "--reason", reason]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{reason}: {}",
            text(&out.stderr)
        );
        assert_eq!(json["status"], "exists", "{reason}: {json}");
        assert_eq!(cancels(&sandbox), sent, "{reason}: the rerun sent nothing");
    }

    // HTTP 503, nothing applied: unknown, the refund stays pending (69); the rerun looks it up
    // (still not applied, too soon to conclude) and sends nothing.
    let (out, json) = refund(
        &rig,
        &order,
        &["--amount", "10.00", "--reason", "999503 down"],
    );
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert_eq!(json["status"], "pending", "{json}");
    assert_eq!(cancels(&sandbox), sent + 1);
    let (out, _) = refund(
        &rig,
        &order,
        &["--amount", "10.00", "--reason", "999503 down"],
    );
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing is sent again"),
        "{out:?}"
    );
    assert_eq!(
        cancels(&sandbox),
        sent + 1,
        "a pending refund is never sent again"
    );
    // Another refund of the order while one is pending: not sent either.
    let (out, _) = refund(&rig, &order, &["--amount", "5.00", "--reason", "other"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert_eq!(cancels(&sandbox), sent + 1);
    // `status` names it among what needs an operator.
    let out = rig.run(&["status", "--json", "--offline-ok"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = status["needs_attention"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "refund_pending")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert_eq!(item["order_number"], order.as_str(), "{item}");
    assert!(
        item["detail"].as_str().unwrap().contains("of 10.00 RUB"),
        "{item}"
    );
    let refunded = sandbox.book().orders[0]
        .refunds
        .iter()
        .filter(|r| r.state == OrderState::Approved)
        .count();
    assert_eq!(
        refunded, 3,
        "the gateway refunded once per completed refund"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refund_fails_and_a_new_request_may_follow() {
    let sandbox = start(Duration::from_secs(3)).await;
    let rig = rig(&sandbox, 10, "5800000000000001");
    rehearse(&rig, "2027-01-05T06:00:00Z", "2027-01-06T00:00:00Z");
    let order = approved_order(&rig);
    let (out, json) = refund(&rig, &order, &["--reason", "999102 refused"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(json["status"], "failed", "{json}");
    assert_eq!(json["refunded"], "0.00");
    let (out, json) = refund(&rig, &order, &["--reason", "duplicate charge"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json["refunded"], "100.00", "{json}");
    assert_eq!(cancels(&sandbox), 2);
    assert_eq!(
        ledger_kinds(&rig),
        [
            "refund_requested",
            "refund_failed",
            "refund_requested",
            "refund_completed"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_killed_mid_request_is_looked_up_by_the_rerun_and_a_concurrent_run_sends_nothing()
{
    // The refund's answer takes 4 s (408 after applying it); the binary would wait 10 s.
    let sandbox = start(Duration::from_secs(4)).await;
    let rig = rig(&sandbox, 10, "5800000000000001");
    rehearse(&rig, "2027-01-05T06:00:00Z", "2027-01-06T00:00:00Z");
    let order = approved_order(&rig);
    let args = [
        "refund",
        order.as_str(),
        "--reason",
        "999408 slow",
        "--json",
    ];

    let mut first = rig.command().args(args).spawn().unwrap();
    common::until(
        Duration::from_secs(20),
        &rig.log(),
        "the cancel arrives",
        || (cancels(&sandbox) == 1).then_some(()),
    );
    // The same command while the first waits for its answer: refused at once, nothing sent.
    let second = rig.run(&args);
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    assert!(
        text(&second.stderr).contains("another `recurrentd refund` is running"),
        "{second:?}"
    );
    // The first dies before it learns the outcome: its refund stays pending.
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(ledger_kinds(&rig), ["refund_requested"]);

    // The rerun looks it up (applied at the gateway) and completes it without a second request.
    let (out, json) = refund(&rig, &order, &["--reason", "999408 slow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json["status"], "completed", "{json}");
    assert_eq!(json["refunded"], "100.00");
    assert!(
        text(&out.stderr).contains("nothing is sent again"),
        "{out:?}"
    );
    assert_eq!(cancels(&sandbox), 1, "one refund request in all");
    assert_eq!(ledger_kinds(&rig), ["refund_requested", "refund_completed"]);
}
