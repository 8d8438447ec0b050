//! The real binary, run as an operator would run it.

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
        use recurrentd::store::{Access, Store};
        let mut store = Store::open(&dir.path().join("recurrentd.db"), Access::Daemon).unwrap();
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
