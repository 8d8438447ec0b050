//! The real binary, run as an operator would run it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn recurrentd(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config in a temporary folder with its own schedules folder.
fn setup(schedules: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[gateway]\nurl = \"https://payments.demo.paysecure.ru\"\nmerchant_id = \"1\"\nlogin = \"l\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("schedules")).unwrap();
    for (name, body) in schedules {
        std::fs::write(dir.path().join("schedules").join(name), body).unwrap();
    }
    (dir, config)
}

#[test]
fn check_passes_on_the_sample_files() {
    let out = recurrentd(&repo().join("config.toml"), &["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 file(s), 6 valid subscription(s), 0 error(s)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_reports_every_problem_with_its_location_and_fails() {
    let broken = "[[subscription]]\nid = \"a\"\nbill_number = \"5899110210668265\"\ncurrency = \"RUB\"\namount = \"10.345\"\nevery = \"1 month\"\nstart = 2027-01-31\n[subscription.limits]\nperiod_days = 30\n";
    let good = std::fs::read_to_string(repo().join("schedules/gym-weekly.toml")).unwrap();
    let (_dir, config) = setup(&[("broken.toml", broken), ("good.toml", &good)]);
    let out = recurrentd(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("broken.toml:5:10: amount: amount has more than two decimals"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("2 valid subscription(s), 1 error(s) in 1 file(s)"),
        "{}",
        text(&out.stdout)
    );
    // The good file is still forecast; the broken one is reported and the exit code says so.
    let out = recurrentd(
        &config,
        &["forecast", "--from", "2026-11-23T00:00:00Z", "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["subscription"].as_str().unwrap().starts_with("gym-"))
    );
}

#[test]
fn a_cadence_that_breaks_its_limits_is_explained() {
    let body = "[[subscription]]\nid = \"a\"\nbill_number = \"5899110210668265\"\ncurrency = \"RUB\"\namount = \"10.00\"\nevery = \"1 month\"\nstart = 2027-01-31\n[subscription.limits]\nperiod_days = 30\n";
    let (_dir, config) = setup(&[("a.toml", body)]);
    let stderr = text(&recurrentd(&config, &["check"]).stderr);
    assert!(stderr.contains("every: every = \"1 month\" gives a 28-day gap (2027-01-31 → 2027-02-28), fewer than limits.period_days = 30"), "{stderr}");
}

#[test]
fn forecast_json_lists_charges_and_totals() {
    let out = recurrentd(
        &repo().join("config.toml"),
        &[
            "forecast",
            "--from",
            "2026-11-23T00:00:00Z",
            "--days",
            "45",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["timezone"], "Europe/Moscow");
    assert_eq!(json["totals"]["RUB"], "4388.00");
    let first_charge = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "charge")
        .unwrap();
    assert_eq!(first_charge["subscription"], "gym-w-0042");
    assert_eq!(first_charge["at"], "2026-11-27T07:00:00Z");
    assert_eq!(first_charge["amount"], "350.00");
    let paused = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subscription"] == "gym-w-0043")
        .unwrap();
    assert_eq!(paused["status"], "blocked");
    assert_eq!(paused["reason"], "subscription is paused");
}

#[test]
fn a_broken_config_is_one_line_and_exit_78() {
    let (dir, config) = setup(&[]);
    std::fs::write(&config, "[gateway]\nurl = \"https://x\"\nmerchant_id = \"1\"\nlogin = \"l\"\n[billing]\ntimezone = \"Moon/Base\"\n").unwrap();
    let out = recurrentd(&config, &["check"]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("billing.timezone") && stderr.contains("Moon/Base"),
        "{stderr}"
    );
    let out = recurrentd(&dir.path().join("missing.toml"), &["check"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("missing.toml"));
}

/// Issue 12, item 12 (R36): outside test mode a secret in the environment is refused, with
/// one line that says where to put it instead; the value is never echoed.
#[test]
fn environment_secrets_are_refused_outside_test_mode() {
    let (_dir, config) = setup(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env("RECURRENTD_SECRET_PASSWORD", "env-pa55-visible")
        .env("RECURRENTD_SECRET_SALT", "env-s4lt-visible")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("RECURRENTD_SECRET_PASSWORD")
            && stderr.contains("test mode")
            && stderr.contains("$CREDENTIALS_DIRECTORY"),
        "{stderr}"
    );
    assert!(!stderr.contains("visible"), "{stderr}");
}

#[test]
fn environment_overrides_config_keys_even_numeric_ids() {
    let (_dir, config) = setup(&[]);
    let run = |vars: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recurrentd"));
        command
            .arg("--config")
            .arg(&config)
            .args(["forecast", "--json"]);
        for (key, value) in vars {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    // A bare number for a string id is accepted (figment reads it as an integer).
    let out = run(&[
        ("RECURRENTD_GATEWAY__MERCHANT_ID", "987654"),
        ("RECURRENTD_BILLING__TIMEZONE", "Europe/Berlin"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["timezone"], "Europe/Berlin");
    // An override with a typo in the key is an error, not silently ignored.
    let out = run(&[("RECURRENTD_BILLING__TIMEZNE", "Europe/Berlin")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        text(&out.stderr).contains("timezne"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_teaches_and_usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .args(["forecast", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("recurrentd forecast --days 90") && help.contains("--json"),
        "{help}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .args(["forecast", "--days", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn charge_queues_an_adhoc_charge_once_and_refuses_what_the_limits_forbid() {
    let sub = "[[subscription]]\nid = \"acme-1\"\nbill_number = \"4100000000000001\"\n\
               currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\nstart = 2027-01-05\n\n\
               [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
               period_days = 28\nmax_date = 2099-12-31\n";
    let (dir, config) = setup(&[("subs.toml", sub)]);
    // The database as the daemon leaves it after its first sync.
    {
        use recurrentd::store::Store;
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let report = recurrentd::schedule::load_dir(&dir.path().join("schedules")).unwrap();
        store.sync_schedules(&report, chrono::Utc::now()).unwrap();
    }
    let charge = |args: &[&str]| {
        let mut all = vec!["charge", "acme-1"];
        all.extend_from_slice(args);
        recurrentd(&config, &all)
    };

    let above = charge(&["--amount", "150.01", "--reference", "T-1"]);
    assert_eq!(above.status.code(), Some(1), "{above:?}");
    let message = text(&above.stderr);
    assert!(
        message.contains("above the agreed maximum 150.00"),
        "{message}"
    );

    let queued = charge(&[
        "--amount",
        "120.00",
        "--reference",
        "T-2",
        "--reason",
        "top-up",
    ]);
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    assert!(text(&queued.stdout).contains("Queued"), "{queued:?}");

    let again = charge(&["--amount", "120.00", "--reference", "T-2", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["status"], "exists", "{json}");
    assert_eq!(json["state"], "open", "{json}");
    assert_eq!(json["amount"], "120.00", "{json}");

    let reused = charge(&["--amount", "99.00", "--reference", "T-2"]);
    assert_eq!(reused.status.code(), Some(1), "{reused:?}");
    assert!(text(&reused.stderr).contains("already used"), "{reused:?}");

    let unknown = recurrentd(
        &config,
        &[
            "charge",
            "nobody",
            "--amount",
            "60.00",
            "--reference",
            "T-3",
        ],
    );
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    let bad_amount = charge(&["--amount", "1e2", "--reference", "T-4"]);
    assert_eq!(bad_amount.status.code(), Some(2), "{bad_amount:?}");

    let history = recurrentd(&config, &["history", "acme-1", "--json"]);
    assert_eq!(history.status.code(), Some(0), "{history:?}");
    let rows: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["period"], "adhoc:T-2");
    assert_eq!(rows[0]["state"], "pending");
    assert_eq!(rows[0]["amount"], "120.00");
    assert!(rows[0]["order_number"].is_null());
}

/// Issue 12, item 10: `charge SUBSCRIPTION --cancel REF --reason TEXT` closes a queued ad-hoc
/// request before the daemon makes it (ledger event with who and why), and refuses, with the
/// reason, one that is settled or unknown; --cancel needs --reason and takes no amount.
#[test]
fn charge_cancel_closes_a_queued_request_and_refuses_a_settled_one() {
    let sub = "[[subscription]]\nid = \"acme-1\"\nbill_number = \"4100000000000001\"\n\
               currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\nstart = 2027-01-05\n\n\
               [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
               period_days = 28\nmax_date = 2099-12-31\n";
    let (dir, config) = setup(&[("subs.toml", sub)]);
    {
        use recurrentd::store::Store;
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let report = recurrentd::schedule::load_dir(&dir.path().join("schedules")).unwrap();
        store.sync_schedules(&report, chrono::Utc::now()).unwrap();
    }
    let charge = |args: &[&str]| {
        let mut all = vec!["charge", "acme-1"];
        all.extend_from_slice(args);
        recurrentd(&config, &all)
    };
    let queued = charge(&["--amount", "120.00", "--reference", "T-1"]);
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");

    // Usage: --cancel needs --reason, and is not combined with a new request.
    let no_reason = charge(&["--cancel", "T-1"]);
    assert_eq!(no_reason.status.code(), Some(2), "{no_reason:?}");
    let with_amount = charge(&["--cancel", "T-1", "--amount", "120.00", "--reason", "x"]);
    assert_eq!(with_amount.status.code(), Some(2), "{with_amount:?}");

    let cancelled = charge(&["--cancel", "T-1", "--reason", "customer asked", "--json"]);
    assert_eq!(cancelled.status.code(), Some(0), "{cancelled:?}");
    let json: serde_json::Value = serde_json::from_slice(&cancelled.stdout).unwrap();
    assert_eq!(json["status"], "cancelled", "{json}");
    assert_eq!(json["reference"], "T-1", "{json}");
    assert_eq!(json["amount"], "120.00", "{json}");
    assert_eq!(json["state"], "blocked", "{json}");

    // Settled now: a second cancel is refused and says why.
    let again = charge(&["--cancel", "T-1", "--reason", "again"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let message = text(&again.stderr);
    assert!(
        message.contains("cannot be cancelled: it is already settled (blocked: cancelled by")
            && message.contains("customer asked"),
        "{message}"
    );
    let unknown = charge(&["--cancel", "T-9", "--reason", "typo"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        text(&unknown.stderr).contains("no ad-hoc charge with reference \"T-9\""),
        "{unknown:?}"
    );
    // The request itself shows it.
    let shown = charge(&["--amount", "120.00", "--reference", "T-1", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(json["status"], "exists", "{json}");
    assert_eq!(json["state"], "blocked", "{json}");

    let store = recurrentd::store::Store::open(
        &dir.path().join("recurrentd.db"),
        recurrentd::store::Access::ReadOnly,
    )
    .unwrap();
    let ledger = store.ledger(Some("acme-1")).unwrap();
    let events: Vec<_> = ledger
        .iter()
        .filter(|e| e.kind == "adhoc_cancelled")
        .collect();
    assert_eq!(events.len(), 1, "{ledger:?}");
    assert_eq!(events[0].detail["reference"], "T-1");
    assert_eq!(events[0].detail["reason"], "customer asked");
    assert!(events[0].detail["by"].is_string());
    // Nothing is left for the daemon to make.
    let history = recurrentd(&config, &["history", "acme-1", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "blocked", "{rows:?}");
    assert!(
        rows[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("cancelled by ")),
        "{rows:?}"
    );
}

/// `forecast` on a database with history made by a rehearsal run of the real daemon: each
/// subscription continues from its ledger (charged periods shown as such, the next charge after
/// the last one), a hard decline waits for an operator, an open period shows its retry. Without
/// the database it forecasts from the files alone and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_continues_from_the_ledger() {
    use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // A soft decline is retried ten days later: still open at the end of the run.
    let rig = common::Rig::new(&sandbox, "\n[engine]\ndunning_days = [10]\n");
    rig.write_schedule(
        "subs.toml",
        &(common::subscription("ok-1", "5111112000000001", "99.00", "2027-01-05")
            + &common::subscription("hard-1", "999000000001101", "99.00", "2027-01-05")
            + &common::subscription("soft-1", "999000000001102", "99.00", "2027-02-18")),
    );
    let forecast = |extra: &[&str]| {
        let mut args = vec![
            "forecast",
            "--from",
            "2027-01-01T00:00:00Z",
            "--days",
            "120",
        ];
        args.extend(extra);
        rig.run(&args)
    };
    let entries = |out: &Output| -> (serde_json::Value, Vec<serde_json::Value>) {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entries = json["entries"].as_array().unwrap().clone();
        (json, entries)
    };
    let of = |entries: &[serde_json::Value], id: &str| -> Vec<(u64, String, String)> {
        entries
            .iter()
            .filter(|e| e["subscription"] == id)
            .map(|e| {
                (
                    e["period_index"].as_u64().unwrap(),
                    e["status"].as_str().unwrap().to_string(),
                    e["at"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };

    // No database yet: the schedule files alone, said on stderr.
    let out = forecast(&["--json"]);
    assert!(
        text(&out.stderr).contains("no database at")
            && text(&out.stderr).contains("schedule files alone"),
        "{}",
        text(&out.stderr)
    );
    let (json, before) = entries(&out);
    assert_eq!(json["source"], "schedules");
    assert_eq!(
        of(&before, "ok-1")[0],
        (0, "charge".into(), "2027-01-05T07:00:00Z".into())
    );

    // Seven virtual weeks at eight days per second.
    let mut child = rig.spawn(
        "2027-01-01T00:00:00Z",
        8 * 86_400,
        Some("2027-02-22T00:00:00Z"),
    );
    let status = common::wait(&mut child, std::time::Duration::from_secs(90), &rig.log());
    assert!(status.success(), "{status:?}\n{}", rig.log_text());

    let out = forecast(&["--json"]);
    assert_eq!(text(&out.stderr), "", "nothing to say with a database");
    let (json, after) = entries(&out);
    assert_eq!(json["source"], "ledger");
    for entry in &after {
        for key in [
            "subscription",
            "period",
            "due_date",
            "at",
            "amount",
            "currency",
            "status",
            "reason",
            "order_number",
        ] {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
    }
    // ok-1: two periods charged (with their order numbers), then the forecast from period 2.
    let ok = of(&after, "ok-1");
    assert_eq!(ok[0].0, 0);
    assert_eq!(ok[0].1, "charged");
    assert_eq!(ok[1].0, 1);
    assert_eq!(ok[1].1, "charged");
    // Period 2 is due on 5 March, and is charged then unless the rehearsal charged period 1
    // late (its ticks are coarse): the 28 days are counted from the real last charge.
    let last: chrono::DateTime<chrono::Utc> = ok[1].2.parse().unwrap();
    let moscow: chrono_tz::Tz = "Europe/Moscow".parse().unwrap();
    let earliest = (last.with_timezone(&moscow).date_naive() + chrono::Days::new(28))
        .and_hms_opt(10, 0, 0)
        .unwrap()
        .and_local_timezone(moscow)
        .unwrap()
        .with_timezone(&chrono::Utc);
    let due: chrono::DateTime<chrono::Utc> = "2027-03-05T07:00:00Z".parse().unwrap();
    let expected = due.max(earliest);
    assert_eq!((ok[2].0, ok[2].1.as_str()), (2, "charge"), "{ok:?}");
    assert_eq!(
        ok[2].2.parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        expected,
        "{ok:?}"
    );
    let reason = &after
        .iter()
        .find(|e| e["subscription"] == "ok-1" && e["status"] == "charge")
        .unwrap()["reason"];
    assert_eq!(
        reason.as_str().is_some_and(|r| r.starts_with("deferred")),
        expected > due,
        "{reason}"
    );
    assert!(
        ok[3..].iter().all(|(_, status, _)| status == "charge"),
        "{ok:?}"
    );
    let charged = after
        .iter()
        .find(|e| e["subscription"] == "ok-1" && e["status"] == "charged")
        .unwrap();
    assert!(
        charged["order_number"]
            .as_str()
            .unwrap()
            .contains("-ok-1-0-1"),
        "{charged}"
    );
    // hard-1: its period failed, and it waits for an operator: nothing forecast after that.
    let hard = of(&after, "hard-1");
    assert_eq!(hard.len(), 2, "{hard:?}");
    assert_eq!((hard[0].0, hard[0].1.as_str()), (0, "failed"));
    assert_eq!(hard[1].1, "attention");
    // soft-1: its open period is retried at the scheduled retry, ten days after the decline.
    let soft = of(&after, "soft-1");
    assert_eq!((soft[0].0, soft[0].1.as_str()), (0, "retry"), "{soft:?}");
    assert!(soft[0].2.as_str() > "2027-02-27", "{soft:?}");
    // Only what is still to come is in the totals.
    let to_come = after
        .iter()
        .filter(|e| e["status"] == "charge" || e["status"] == "retry")
        .count();
    assert_eq!(
        json["totals"]["RUB"],
        format!("{}.00", 99 * to_come),
        "{:#?}",
        json["totals"]
    );

    // The table says where its history comes from and marks what needs an operator.
    let out = forecast(&[]);
    let table = text(&out.stdout);
    assert!(table.contains("history from the ledger in"), "{table}");
    assert!(
        table.contains("ATTENTION") && table.contains("charged"),
        "{table}"
    );

    // The daemon is not running: `status` says so and exits 1.
    let out = rig.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("daemon: NOT RUNNING"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("THE DAEMON IS NOT RUNNING"),
        "{}",
        text(&out.stderr)
    );
    sandbox.shutdown().await;
}

/// `status --all` and `resolve` on a live database: the real daemon on a rehearsal clock charges
/// an approved subscription, a hard decline, a paused one and two whose orders stay In Process
/// until they are parked (engine.park_after_hours = 1). `status --all` lists every one with what
/// needs an operator, its next due charge and its last outcome; `resolve` settles one parked
/// attempt as paid and the other as not charged, after which the daemon charges that period
/// again under a new order number. Refusals exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_all_and_resolving_parked_charges_on_a_live_database() {
    use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
    let mut config = SandboxConfig::builtin();
    config.settle_after = 1_000_000; // In Process for good: only an operator can settle it.
    let sandbox = Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rig = common::Rig::new(
        &sandbox,
        &format!("\n[engine]\npark_after_hours = 1\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let paused = common::subscription("pause-1", "5111112000000002", "99.00", "2027-01-05")
        .replace("currency = ", "state = \"paused\"\ncurrency = ");
    rig.write_schedule(
        "subs.toml",
        &(common::subscription("ok-1", "5111112000000001", "99.00", "2027-01-05")
            + &common::subscription("hard-1", "999000000001101", "99.00", "2027-01-05")
            + &common::subscription("park-1", "999000000001300", "99.00", "2027-01-05")
            + &common::subscription("park-2", "999000000002300", "99.00", "2027-01-05")
            + &paused),
    );
    // The charges fall due at 07:00Z; a virtual hour passes in 0.18 s.
    let mut daemon = rig.spawn("2027-01-05T06:50:00Z", 20_000, None);
    let status_all = || -> Option<serde_json::Value> {
        let out = rig.run(&["status", "--all", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    };
    let by_id = |json: &serde_json::Value, id: &str| -> serde_json::Value {
        json["all_subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subscription"] == id)
            .unwrap_or_else(|| panic!("{id} missing in {json:#}"))
            .clone()
    };
    let json = common::until(
        std::time::Duration::from_secs(60),
        &rig.log(),
        "both In Process charges parked",
        || {
            let json = status_all()?;
            // Before the daemon's first sync the list is empty.
            if json["all_subscriptions"].as_array()?.len() < 5 {
                return None;
            }
            let parked = ["park-1", "park-2"]
                .iter()
                .all(|id| by_id(&json, id)["needs_attention"] == serde_json::json!(["parked"]));
            // The summary is read before the list (not one snapshot): both must show it.
            let summarised = json["needs_attention"].as_array()?.len() >= 3;
            (parked
                && summarised
                && by_id(&json, "hard-1")["last_state"] == "declined"
                && by_id(&json, "ok-1")["last_state"] == "approved")
                .then_some(json)
        },
    );
    // The metrics say the same: two attempts parked, unresolved for over an hour (daemon's
    // clock), two subscriptions and the hard decline waiting for an operator.
    // (Counters move just after each commit and gauges after each tick: polled.)
    let value = |metrics: &str, series: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let started = std::time::Instant::now();
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v = |series: &str| value(&metrics, series);
        if v("recurrentd_charges_total{outcome=\"parked\"}") == Some(2.0)
            && v("recurrentd_charges_total{outcome=\"approved\"}") == Some(1.0)
            && v("recurrentd_charges_total{outcome=\"declined\"}") == Some(1.0)
            && v("recurrentd_unresolved_attempts").is_some_and(|n| n >= 2.0)
            && v("recurrentd_unresolved_oldest_age_seconds").is_some_and(|age| age > 3600.0)
            && v("recurrentd_subscriptions_needing_operator") == Some(3.0)
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the metrics do not show the parked charges:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The summary's fields are still there, with the list after them.
    assert_eq!(json["daemon_running"], true);
    // Its times are RFC 3339 UTC in whole seconds.
    let whole_seconds = |t: &serde_json::Value| {
        let t = t.as_str().unwrap();
        t.len() == 20 && t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok()
    };
    assert!(whole_seconds(&json["oldest_unresolved"]), "{json:#}");
    assert!(
        json["needs_attention"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| whole_seconds(&a["since"])),
        "{json:#}"
    );
    assert!(
        json["needs_attention"].as_array().unwrap().len() >= 3,
        "{json:#}"
    );
    let ids: Vec<&str> = json["all_subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hard-1", "ok-1", "park-1", "park-2", "pause-1"]);

    let ok = by_id(&json, "ok-1");
    assert_eq!(ok["state"], "active");
    assert_eq!(ok["needs_attention"], serde_json::json!([]));
    assert_eq!(ok["last_state"], "approved");
    assert!(
        ok["last_order_number"]
            .as_str()
            .unwrap()
            .ends_with("-ok-1-0-1"),
        "{ok}"
    );
    assert_eq!(
        ok["next_due"], "2027-02-05T07:00:00Z",
        "the next period's due instant"
    );
    let hard = by_id(&json, "hard-1");
    assert_eq!(hard["needs_attention"], serde_json::json!(["hard_decline"]));
    let pause = by_id(&json, "pause-1");
    assert_eq!(pause["state"], "paused");
    assert!(
        pause["last_state"].is_null(),
        "a blocked period has no attempt: {pause}"
    );
    assert!(pause["next_due"].is_null(), "paused: no next due: {pause}");
    assert!(hard["next_due"].is_null(), "waits for an operator: {hard}");
    let park1 = by_id(&json, "park-1");
    let order1 = park1["parked_order_number"].as_str().unwrap().to_string();
    assert_eq!(park1["last_state"], "parked");
    assert_eq!(park1["last_order_number"], order1.as_str());
    assert!(park1["next_due"].is_null(), "parked: no next due: {park1}");

    // `status SUB`: one subscription in full, with the parked attempt's order number.
    let out = rig.run(&["status", "park-1", "--json"]);
    assert_eq!(out.status.code(), Some(1), "it needs an operator");
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["subscription"], "park-1");
    assert_eq!(one["state"], "active");
    assert_eq!(one["file"], "subs.toml");
    assert_eq!(one["bill_number"], "999000000001300");
    assert_eq!(one["amount"], "99.00");
    assert_eq!(one["every"], "1 month");
    assert_eq!(one["limits"]["min_amount"], "50.00");
    assert_eq!(one["limits"]["max_amount"], "150.00");
    assert_eq!(one["limits"]["period_days"], 28);
    assert_eq!(one["limits"]["max_date"], "2027-12-31");
    assert!(one["next_due"].is_null());
    assert_eq!(one["needs_attention"], serde_json::json!(["parked"]));
    assert_eq!(one["open_attempts"][0]["order_number"], order1.as_str());
    assert_eq!(one["open_attempts"][0]["state"], "parked");
    assert_eq!(one["last_charges"][0]["order_number"], order1.as_str());
    let out = rig.run(&["status", "ok-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for expected in [
        "subscription: ok-1",
        "state: active",
        "file: subs.toml",
        "limits: min_amount 50.00, max_amount 150.00, period_days 28, max_date 2027-12-31",
        "next due: 2027-02-05 07:00:00 UTC (",
        "open attempts: none",
        "-ok-1-0-1",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    let out = rig.run(&["status", "no-such-sub"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no subscription \"no-such-sub\""),
        "{}",
        text(&out.stderr)
    );
    let out = rig.run(&["status", "ok-1", "--all"]);
    assert_eq!(out.status.code(), Some(2), "SUB and --all conflict");

    // `status --json`: the daemon that holds the lock, the breaker as a state.
    let out = rig.run(&["status", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["breaker"], "closed", "{summary:#}");
    assert_eq!(summary["daemon"]["running"], true);
    assert_eq!(summary["daemon"]["pid"], daemon.id());
    assert_eq!(summary["daemon"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(summary["daemon"]["rehearsal_rate"], 20_000);
    assert!(summary["daemon"]["last_tick_at"].is_string(), "{summary:#}");
    let clock = summary["daemon"]["clock"].as_str().unwrap();
    assert!(clock.starts_with("2027-"), "the rehearsal's clock: {clock}");
    let out = rig.run(&["status"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!(
            "daemon: running (pid {}, recurrentd ",
            daemon.id()
        )),
        "{shown}"
    );
    assert!(
        shown.contains("daemon clock: REHEARSAL at 20000x"),
        "{shown}"
    );
    assert!(shown.contains("last tick: "), "{shown}");
    let order2 = by_id(&json, "park-2")["parked_order_number"]
        .as_str()
        .unwrap()
        .to_string();

    // The table: every subscription, and the order number to resolve.
    let out = rig.run(&["status", "--all"]);
    assert_eq!(out.status.code(), Some(1), "things need attention");
    let table = text(&out.stdout);
    assert!(
        table.contains("SUBSCRIPTION") && table.contains("NEXT DUE"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("park-1") && l.contains("parked") && l.contains(&order1)),
        "{table}"
    );
    assert!(table.contains("(5 subscriptions)"), "{table}");
    // Without --all, nothing changes: no list.
    let out = rig.run(&["status", "--json"]);
    let plain: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plain.get("all_subscriptions").is_none());
    assert!(plain["subscriptions"].is_object(), "the counts per state");

    // Refusals: unknown order, an attempt that is not parked, a missing choice.
    let out = rig.run(&["resolve", "NO-SUCH-ORDER", "--paid", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no attempt has the order number"));
    let hard_order = hard["last_order_number"].as_str().unwrap();
    let out = rig.run(&["resolve", hard_order, "--not-charged", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is declined, not parked"),
        "{}",
        text(&out.stderr)
    );
    let out = rig.run(&["resolve", &order1, "--reason", "x"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--paid or --not-charged is required"
    );
    let out = rig.run(&[
        "resolve",
        &order1,
        "--paid",
        "--not-charged",
        "--reason",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "not both");

    // park-2: paid, as attested by the operator (not verified).
    let out = rig.run(&["resolve", &order2, "--paid", "--reason", "portal: approved"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("booked as paid"),
        "{}",
        text(&out.stdout)
    );
    let rows = rig.history(Some("park-2"));
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["state"], "approved");
    assert_eq!(rows[0]["checkvalue"], "absent");
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("attested by"),
        "{rows:#?}"
    );
    // A second resolution is refused: it is no longer parked.
    let out = rig.run(&["resolve", &order2, "--not-charged", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is approved, not parked"));

    // park-1: not charged; the daemon's next sweep makes attempt 2 under a new order number.
    let out = rig.run(&[
        "resolve",
        &order1,
        "--not-charged",
        "--reason",
        "portal: no order",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = common::until(
        std::time::Duration::from_secs(30),
        &rig.log(),
        "a new attempt for park-1's period",
        || {
            let rows = rig.history(Some("park-1"));
            (rows.len() == 2).then_some(rows)
        },
    );
    assert_eq!(rows[0]["order_number"], order1.as_str());
    assert_eq!(
        rows[0]["state"], "not_received",
        "sent, then attested never charged: not received (not_sent means it never left)"
    );
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not charged as attested")
    );
    assert_eq!(rows[1]["attempt"], 2);
    assert_eq!(rows[1]["period"], rows[0]["period"]);
    assert_ne!(rows[1]["order_number"], order1.as_str());

    let json = status_all().unwrap();
    let park2 = by_id(&json, "park-2");
    assert_eq!(park2["needs_attention"], serde_json::json!([]));
    assert_eq!(park2["last_state"], "approved");
    assert_eq!(
        park2["next_due"], "2027-02-05T07:00:00Z",
        "settled: due again"
    );

    // The ledger names who and why.
    let db = rusqlite::Connection::open(rig.db()).unwrap();
    let events: Vec<(String, String)> = db
        .prepare("SELECT kind, detail FROM ledger WHERE kind LIKE 'charge_attested%' ORDER BY seq")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "charge_attested_paid");
    assert!(
        events[0].1.contains("\"verified\":false"),
        "{}",
        events[0].1
    );
    assert!(events[0].1.contains("portal: approved"), "{}", events[0].1);
    assert_eq!(events[1].0, "charge_attested_not_charged");

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    sandbox.shutdown().await;
}

/// A schedule file that disappears while the daemon runs holds its subscriptions (not charged,
/// not removed, named by `status`); when it returns they resume; `remove-file` confirms a
/// removal. (A vanished file used to remove its subscriptions for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_schedule_file_holds_its_subscriptions_until_it_returns() {
    use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = common::Rig::new(&sandbox, "");
    let keep = common::subscription("keep-1", "5111113000000001", "99.00", "2027-01-05");
    let gone = common::subscription("gone-1", "5111113000000002", "99.00", "2027-01-05");
    rig.write_schedule("a.toml", &keep);
    rig.write_schedule("b.toml", &gone);
    // A virtual month in about 13 s of real time; the first charges fall due at 07:00Z.
    let mut daemon = rig.spawn("2027-01-05T06:00:00Z", 200_000, None);
    let approved = |id: &str| -> usize {
        rig.try_history(Some(id))
            .unwrap_or_default()
            .iter()
            .filter(|r| r["state"] == "approved")
            .count()
    };
    common::until(
        std::time::Duration::from_secs(60),
        &rig.log(),
        "both first periods approved",
        || (approved("keep-1") == 1 && approved("gone-1") == 1).then_some(()),
    );
    std::fs::remove_file(rig.dir.path().join("schedules/b.toml")).unwrap();
    let status = common::until(
        std::time::Duration::from_secs(30),
        &rig.log(),
        "status names the held subscription",
        || {
            let out = rig.run(&["status", "--json"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let held = json["needs_attention"]
                .as_array()?
                .iter()
                .any(|a| a["subscription"] == "gone-1" && a["kind"] == "file_missing");
            held.then_some(out)
        },
    );
    assert_eq!(status.status.code(), Some(1), "needs attention");
    // The next period (2027-02-05) is charged for keep-1 only.
    common::until(
        std::time::Duration::from_secs(90),
        &rig.log(),
        "keep-1's second period",
        || (approved("keep-1") == 2).then_some(()),
    );
    assert_eq!(approved("gone-1"), 1, "held: not charged");
    let out = rig.run(&["remove-file", "a.toml", "--reason", "not missing"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a file in the folder is refused"
    );
    // The identical file returns: gone-1 resumes and its due period is charged.
    rig.write_schedule("b.toml", &gone);
    common::until(
        std::time::Duration::from_secs(60),
        &rig.log(),
        "gone-1 resumes",
        || (approved("gone-1") == 2).then_some(()),
    );
    // Gone again, on purpose this time: the operator confirms.
    std::fs::remove_file(rig.dir.path().join("schedules/b.toml")).unwrap();
    common::until(
        std::time::Duration::from_secs(30),
        &rig.log(),
        "the file found missing again",
        || {
            let out = rig.run(&["remove-file", "b.toml", "--reason", "customer left"]);
            out.status.success().then_some(())
        },
    );
    let out = rig.run(&["status", "--all", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = json["all_subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subscription"] == "gone-1")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "removed", "{row}");
    common::signal(&daemon, "TERM");
    common::wait(&mut daemon, std::time::Duration::from_secs(60), &rig.log());
}
