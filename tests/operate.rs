//! Operating the real daemon (issue 13): Prometheus metrics scraped over HTTP, `status` telling
//! the truth about refused schedule files, and the audit trail with who, why and before/after.

mod common;

use std::time::Duration;

use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The value of one sample line (`name{labels} value`), if the exposition has it.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The daemon on a rehearsal clock with `[metrics] listen` set: an HTTP client scrapes
/// `/metrics` while it charges one subscription (approved) and one that the sandbox declines
/// hard; the counters moved with the real charges, the gauges follow the store, and a broken
/// schedule file shows in the metrics and in `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_over_http_from_the_running_daemon() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = free_port();
    let rig = common::Rig::new(
        &sandbox,
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    rig.write_schedule(
        "subs.toml",
        &(common::subscription("ok-1", "5111112000000001", "99.00", "2027-01-05")
            + &common::subscription("hard-1", "999000000001101", "99.00", "2027-01-05")),
    );
    let mut daemon = rig.spawn("2027-01-05T06:50:00Z", 20_000, None);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();

    // Both charges made: one approved, one declined (verified), with the hard decline flagged.
    let mut exposition = String::new();
    let started = std::time::Instant::now();
    loop {
        if let Some(text) = scrape(&client, &url).await {
            let approved = sample(&text, "recurrentd_charges_total{outcome=\"approved\"}");
            let declined = sample(&text, "recurrentd_charges_total{outcome=\"declined\"}");
            // Gauges are refreshed after each tick: wait for one after both outcomes.
            let flagged = sample(&text, "recurrentd_subscriptions_needing_operator");
            let unresolved = sample(&text, "recurrentd_unresolved_attempts");
            if approved == Some(1.0)
                && declined == Some(1.0)
                && flagged == Some(1.0)
                && unresolved == Some(0.0)
            {
                exposition = text;
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no approved and declined charge in the metrics:\n{exposition}\n--- log:\n{}",
            rig.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = |series: &str| {
        sample(&exposition, series).unwrap_or_else(|| panic!("{series} in:\n{exposition}"))
    };
    // Two charges sent and each confirmed by a status query (orderstate; orderresult for the
    // decline's code or the approval's test mode): every request answered.
    assert!(m("recurrentd_gateway_requests_total{endpoint=\"rp.cfm\",result=\"answered\"}") >= 2.0);
    assert!(
        m("recurrentd_gateway_requests_total{endpoint=\"orderstate.cfm\",result=\"answered\"}")
            >= 2.0
    );
    assert!(
        m("recurrentd_gateway_request_duration_seconds_count{endpoint=\"rp.cfm\"}") >= 2.0,
        "latency observed per request"
    );
    // Two periods picked up: due at 07:00 on the virtual clock, planned at its next sweep.
    assert_eq!(m("recurrentd_pickup_delay_seconds_count"), 2.0);
    assert!(m("recurrentd_pickup_delay_seconds_sum") < 2.0 * 3600.0);
    assert_eq!(m("recurrentd_unresolved_attempts"), 0.0);
    assert_eq!(m("recurrentd_unresolved_oldest_age_seconds"), 0.0);
    assert_eq!(m("recurrentd_breaker_open"), 0.0);
    assert_eq!(m("recurrentd_refused_schedule_files"), 0.0);
    let now = chrono::Utc::now().timestamp() as f64;
    let tick = m("recurrentd_last_successful_tick_timestamp_seconds");
    assert!(
        now - tick < 30.0 && tick <= now + 1.0,
        "a real time: {tick}"
    );
    assert!(exposition.ends_with("# EOF\n"), "OpenMetrics text");
    // Anything but GET /metrics is refused.
    let other = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);

    // A broken schedule file: refused (the daemon sees it change), counted, and `status`
    // names it with its first diagnostic.
    rig.write_schedule(
        "broken.toml",
        "[[subscription]]\nid = \"b-1\"\namount = 12\n",
    );
    let started = std::time::Instant::now();
    loop {
        let refused = scrape(&client, &url)
            .await
            .and_then(|text| sample(&text, "recurrentd_refused_schedule_files"));
        if refused == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the refused file is not counted\n--- log:\n{}",
            rig.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = rig.run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "a refused file needs attention");
    let shown = text(&out.stdout);
    let line = shown
        .lines()
        .find(|l| l.trim_start().starts_with("broken.toml: "))
        .unwrap_or_else(|| panic!("no refused file in:\n{shown}"));
    assert!(line.contains("bill_number: missing"), "{line}");
    assert!(
        line.contains("more)"),
        "the other problems are counted: {line}"
    );
    let out = rig.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = &json["refused_schedule_files"][0];
    assert_eq!(refused["file"], "broken.toml", "{json:#}");
    assert!(
        refused["first_error"]
            .as_str()
            .unwrap()
            .contains("broken.toml:1:1: bill_number: missing"),
        "{refused}"
    );
    assert!(refused["errors"].as_u64().unwrap() >= 1);

    common::signal(&daemon, "TERM");
    let status = common::wait(&mut daemon, Duration::from_secs(30), &rig.log());
    assert!(status.success(), "{status:?}\n{}", rig.log_text());
    sandbox.shutdown().await;
}

/// `audit` shows every ledger event with who and why: a schedule change with each changed field
/// before and after, and an operator's `resume` under the real uid's name when `$USER` is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_shows_who_why_and_before_after() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = common::Rig::new(&sandbox, "");
    let subs = |amount: &str| {
        common::subscription("ok-1", "5111112000000001", amount, "2027-01-05")
            + &common::subscription("hard-1", "999000000001101", "99.00", "2027-01-05")
    };
    rig.write_schedule("subs.toml", &subs("99.00"));
    let mut daemon = rig.spawn("2027-01-05T06:50:00Z", 20_000, None);
    common::until(
        Duration::from_secs(60),
        &rig.log(),
        "hard-1 declined",
        || {
            let rows = rig.try_history(Some("hard-1"))?;
            rows.iter().any(|r| r["state"] == "declined").then_some(())
        },
    );
    // The schedule changes while the daemon runs: it reloads the file.
    rig.write_schedule("subs.toml", &subs("120.00"));
    let audit = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "--json"];
        all.extend(args);
        let out = rig.run(&all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let updated = common::until(
        Duration::from_secs(30),
        &rig.log(),
        "the schedule change in the ledger",
        || {
            audit(&["ok-1"])
                .into_iter()
                .find(|e| e["kind"] == "subscription_updated")
        },
    );
    assert_eq!(updated["who"], "file subs.toml", "{updated:#}");
    assert_eq!(
        updated["changes"],
        serde_json::json!([{ "field": "amount", "before": "99.00", "after": "120.00" }]),
        "{updated:#}"
    );

    // `resume` with an empty $USER: the real uid's name is recorded.
    let expected = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let expected = text(&expected.stdout).trim().to_string();
    assert!(!expected.is_empty());
    let out = rig
        .command()
        .args([
            "resume",
            "hard-1",
            "--reason",
            "customer fixed the card, ticket 4711",
        ])
        .env("USER", "")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = audit(&["hard-1"]);
    let resumed = events
        .iter()
        .find(|e| e["kind"] == "attention_cleared")
        .unwrap_or_else(|| panic!("no resume in {events:#?}"));
    assert_eq!(resumed["who"], expected.as_str(), "{resumed:#}");
    assert_eq!(resumed["why"], "customer fixed the card, ticket 4711");
    assert_eq!(resumed["subscription"], "hard-1");
    assert!(
        resumed["at"].as_str().unwrap().ends_with('Z'),
        "RFC 3339 UTC: {resumed}"
    );
    let declined = events
        .iter()
        .find(|e| e["kind"] == "charge_declined")
        .unwrap();
    assert_eq!(declined["who"], "daemon");
    // Only one subscription's events, in ledger order.
    assert!(events.iter().all(|e| e["subscription"] == "hard-1"));
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // The table: who and why, and the change's before -> after on its own line.
    let out = rig.run(&["audit"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.lines().any(|l| l.contains("attention_cleared")
            && l.contains(&expected)
            && l.contains("customer fixed the card")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.trim() == "amount: 99.00 -> 120.00"),
        "{table}"
    );
    // `history --events` is the same view.
    let out = rig.run(&["history", "--events", "--json", "hard-1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let same: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(same.as_array().unwrap().len(), events.len());
    // --since: nothing from the far future on.
    assert!(audit(&["--since", "2100-01-01T00:00:00Z"]).is_empty());

    common::signal(&daemon, "TERM");
    let status = common::wait(&mut daemon, Duration::from_secs(30), &rig.log());
    assert!(status.success(), "{status:?}\n{}", rig.log_text());
    sandbox.shutdown().await;
}
