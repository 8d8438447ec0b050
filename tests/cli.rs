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
