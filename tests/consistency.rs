//! Issue 13, items 5–7 ("Operate it"), through the real binary: backups that can be used and
//! verified, honest rehearsals, and consistent exit codes, times, JSON shapes and help.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn recurrentd(config: &Path, args: &[&str]) -> Output {
    recurrentd_env(config, args, &[])
}

fn recurrentd_env(config: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recurrentd"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("RECURRENTD_DATABASE__PATH")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY");
    for (key, value) in vars {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SUB: &str = "[[subscription]]\nid = \"acme-1\"\nbill_number = \"4100000000000001\"\n\
    currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\nstart = 2027-01-05\n\n\
    [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
    period_days = 28\nmax_date = 2099-12-31\n";

/// A config in a temporary folder with a schedules folder holding `schedules`.
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

/// [`setup`] with `acme-1`, and the database as the daemon leaves it after its first sync, with
/// one ad-hoc charge queued (a history entry).
fn with_database() -> (tempfile::TempDir, PathBuf) {
    let (dir, config) = setup(&[("subs.toml", SUB)]);
    {
        use recurrentd::store::Store;
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let report = recurrentd::schedule::load_dir(&dir.path().join("schedules")).unwrap();
        store.sync_schedules(&report, chrono::Utc::now()).unwrap();
    }
    let out = recurrentd(
        &config,
        &[
            "charge",
            "acme-1",
            "--amount",
            "120.00",
            "--reference",
            "T-1",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    (dir, config)
}

/// Item 5: a copy made by `backup` is opened read-only by status, history and forecast (it is
/// in rollback-journal mode, which the read-only open used to refuse with exit 69).
#[test]
fn a_backup_copy_is_usable_by_the_read_only_commands() {
    let (dir, config) = with_database();
    let copy = dir.path().join("copy.db");
    let out = recurrentd(&config, &["backup", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let on_copy = |args: &[&str]| {
        recurrentd_env(
            &config,
            args,
            &[("RECURRENTD_DATABASE__PATH", copy.to_str().unwrap())],
        )
    };
    let history = on_copy(&["history", "--json"]);
    assert_eq!(history.status.code(), Some(0), "{history:?}");
    let rows: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let status = on_copy(&["status", "--offline-ok", "--json"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let forecast = on_copy(&["forecast", "--json", "--from", "2027-01-01T00:00:00Z"]);
    assert_eq!(forecast.status.code(), Some(0), "{forecast:?}");
    let json: serde_json::Value = serde_json::from_slice(&forecast.stdout).unwrap();
    assert_eq!(json["source"], "ledger", "{json}");
    // Read-only: nothing beside the copy was made (no -wal, -shm or lock file).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("copy.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["copy.db"]);
}

/// Item 5: a backup never overwrites a file, and says so in one clear line.
#[test]
fn a_backup_over_an_existing_file_is_refused_clearly() {
    let (dir, config) = with_database();
    let target = dir.path().join("taken.db");
    std::fs::write(&target, "someone's file").unwrap();
    let out = recurrentd(&config, &["backup", target.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("already exists") && stderr.contains("choose another name"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not valid") && !stderr.contains("os error"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "someone's file");
}

/// Item 5: `backup --verify` checks a copy: usable (0), not recurrentd's (1), damaged (74).
#[test]
fn backup_verify_checks_a_copy() {
    let (dir, config) = with_database();
    let copy = dir.path().join("copy.db");
    let out = recurrentd(&config, &["backup", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let verify = |path: &Path| recurrentd(&config, &["backup", "--verify", path.to_str().unwrap()]);
    let out = verify(&copy);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("usable recurrentd backup")
            && stdout.contains("integrity: ok")
            && stdout.contains(&format!(
                "schema version: {}",
                recurrentd::store::SCHEMA_VERSION
            ))
            && stdout.contains("1 subscription(s)"),
        "{stdout}"
    );
    // Verifying changes nothing and makes no file beside it.
    assert!(!dir.path().join("copy.db-wal").exists());

    let foreign = dir.path().join("foreign.db");
    foreign_sqlite(&foreign);
    let out = verify(&foreign);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("not a recurrentd database"),
        "{out:?}"
    );

    // Damage the copy: overwrite a page in the middle.
    let mut bytes = std::fs::read(&copy).unwrap();
    let page = 4096 * 2;
    for b in &mut bytes[page..page + 4096] {
        *b = 0xA5;
    }
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, bytes).unwrap();
    let out = verify(&damaged);
    assert_eq!(out.status.code(), Some(74), "{out:?}");
    assert!(text(&out.stderr).contains("damaged"), "{out:?}");

    let out = verify(&dir.path().join("absent.db"));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// An SQLite database recurrentd did not write (a schema version, no meta table).
fn foreign_sqlite(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 3;")
        .unwrap();
}

/// Item 7: 69 is the gateway's alone; a local database problem is 78 (configuration: no
/// database at database.path, a schema this binary cannot use) or 74 (a damaged file).
#[test]
fn database_problems_never_exit_69() {
    let (dir, config) = with_database();
    let db = dir.path().join("recurrentd.db");
    let with_db = |path: &Path, args: &[&str]| {
        recurrentd_env(
            &config,
            args,
            &[("RECURRENTD_DATABASE__PATH", path.to_str().unwrap())],
        )
    };
    let missing = dir.path().join("nothing-here.db");
    for args in [
        &["history"][..],
        &["status"],
        &["resume", "acme-1", "--reason", "r"],
        &["breaker", "reset", "--reason", "r"],
        &["backup", "x.db"],
    ] {
        let out = with_db(&missing, args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {out:?}");
        assert!(text(&out.stderr).contains("no database at"), "{out:?}");
    }

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5Au8; 8192]).unwrap();
    for args in [&["history"][..], &["status", "--offline-ok"], &["forecast"]] {
        let out = with_db(&junk, args);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {out:?}");
    }

    let newer = dir.path().join("newer.db");
    std::fs::copy(&db, &newer).unwrap();
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 9999;")
        .unwrap();
    for args in [&["history"][..], &["status", "--offline-ok"], &["forecast"]] {
        let out = with_db(&newer, args);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {out:?}");
        assert!(text(&out.stderr).contains("newer"), "{out:?}");
    }
}

/// RFC 3339 in UTC with `Z`, whole seconds: `2027-01-05T07:00:00Z`.
fn is_json_time(value: &serde_json::Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let b = text.as_bytes();
    b.len() == 20
        && b[19] == b'Z'
        && b[10] == b'T'
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// Two subscriptions, one ad-hoc charge queued on each (acme-2's second).
fn two_queued() -> (tempfile::TempDir, PathBuf) {
    let second = SUB
        .replace("acme-1", "acme-2")
        .replace("4100000000000001", "4100000000000002");
    let (dir, config) = setup(&[("subs.toml", SUB), ("more.toml", &second)]);
    {
        use recurrentd::store::Store;
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let report = recurrentd::schedule::load_dir(&dir.path().join("schedules")).unwrap();
        store.sync_schedules(&report, chrono::Utc::now()).unwrap();
    }
    for (sub, reference) in [("acme-1", "T-1"), ("acme-2", "T-2")] {
        let out = recurrentd(
            &config,
            &[
                "charge",
                sub,
                "--amount",
                "120.00",
                "--reference",
                reference,
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    (dir, config)
}

fn json_rows(out: &Output) -> Vec<serde_json::Value> {
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Item 7: `history` of an unknown subscription exits 1; --until, --state and --limit filter;
/// every time is RFC 3339 with `Z`, whole seconds.
#[test]
fn history_filters_and_refuses_an_unknown_subscription() {
    let (_dir, config) = two_queued();
    let out = recurrentd(&config, &["history", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("knows no subscription \"nobody\""),
        "{out:?}"
    );
    assert_eq!(
        json_rows(&recurrentd(&config, &["history", "acme-1", "--json"])).len(),
        1
    );

    let all = json_rows(&recurrentd(&config, &["history", "--json"]));
    assert_eq!(all.len(), 2, "{all:?}");
    for row in &all {
        assert!(is_json_time(&row["at"]), "{row}");
    }
    let state = |states: &[&str]| {
        let mut args = vec!["history", "--json"];
        for s in states {
            args.extend(["--state", s]);
        }
        json_rows(&recurrentd(&config, &args)).len()
    };
    assert_eq!(state(&["approved"]), 0);
    assert_eq!(state(&["pending"]), 2);
    assert_eq!(state(&["declined,pending"]), 2);
    assert_eq!(state(&["declined", "approved"]), 0);
    let out = recurrentd(&config, &["history", "--state", "paid"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let latest = json_rows(&recurrentd(&config, &["history", "--json", "--limit", "1"]));
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["subscription"], "acme-2", "the latest entry");
    let out = recurrentd(&config, &["history", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let until = |t: &str| json_rows(&recurrentd(&config, &["history", "--json", "--until", t]));
    assert!(until("2000-01-01T00:00:00Z").is_empty());
    assert_eq!(until("2999-01-01T00:00:00Z").len(), 2);
}

/// Item 7: `period` has one shape in `forecast --json` and `history --json` (the due date as
/// `YYYY-MM-DD`, with `period_index`), and every time is RFC 3339 with `Z`, whole seconds.
#[test]
fn forecast_and_history_share_the_period_shape_and_the_time_format() {
    let (_dir, config) = setup(&[("subs.toml", SUB)]);
    let out = recurrentd(
        &config,
        &[
            "forecast",
            "--json",
            "--from",
            "2027-01-01T00:00:00.123456Z",
            "--days",
            "70",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["from"], "2027-01-01T00:00:00Z", "{json}");
    assert!(is_json_time(&json["until"]), "{json}");
    let entries = json["entries"].as_array().unwrap();
    assert!(entries.len() >= 2, "{json}");
    for (i, e) in entries.iter().enumerate() {
        assert!(is_json_time(&e["at"]), "{e}");
        assert_eq!(e["period"], e["due_date"], "{e}");
        assert_eq!(e["period_index"], i, "{e}");
    }
    assert_eq!(entries[0]["period"], "2027-01-05");
}

/// Item 7: `check --json` says per file whether it is accepted, with every diagnostic located;
/// `check` lists a file's problems sorted by line, with "did you mean" for a misspelt key.
#[test]
fn check_json_and_sorted_problems_with_suggestions() {
    let broken = SUB
        .replace("amount = \"100.00\"", "amout = \"100.00\"")
        .replace("period_days = 28", "period_dyas = 28")
        .replace("currency = \"RUB\"", "currency = \"rub\"");
    let good = SUB
        .replace("acme-1", "acme-2")
        .replace("4100000000000001", "4100000000000002");
    let (_dir, config) = setup(&[("broken.toml", &broken), ("good.toml", &good)]);

    let out = recurrentd(&config, &["check"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let located: Vec<usize> = stderr
        .lines()
        .filter(|l| l.contains("broken.toml:"))
        .map(|l| l.split(':').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(located.len() >= 4, "{stderr}");
    assert!(located.is_sorted(), "{stderr}");
    assert!(
        stderr.contains("amout: unknown key; did you mean `amount`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains("limits.period_dyas: unknown key; did you mean `period_days`?"),
        "{stderr}"
    );

    let out = recurrentd(&config, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false, "{json}");
    assert_eq!(json["refused_files"], 1, "{json}");
    assert_eq!(json["subscriptions"], 1, "{json}");
    let files = json["files"].as_array().unwrap();
    let file = |name: &str| {
        files
            .iter()
            .find(|f| f["file"].as_str().unwrap().ends_with(name))
            .unwrap()
    };
    assert_eq!(file("good.toml")["accepted"], true);
    assert_eq!(file("good.toml")["subscriptions"], 1);
    let refused = file("broken.toml");
    assert_eq!(refused["accepted"], false);
    let diagnostics = refused["diagnostics"].as_array().unwrap();
    let amout = diagnostics.iter().find(|d| d["field"] == "amout").unwrap();
    assert_eq!(amout["severity"], "error");
    assert!(
        amout["line"].as_u64().unwrap() > 1 && amout["column"] == 1,
        "{amout}"
    );
    assert!(
        amout["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `amount`?")
    );
    assert!(amout["file"].as_str().unwrap().ends_with("broken.toml"));
    let lines: Vec<u64> = diagnostics
        .iter()
        .map(|d| d["line"].as_u64().unwrap())
        .collect();
    assert!(lines.is_sorted(), "{lines:?}");
    // No secrets configured: warnings about the config file, not errors.
    assert!(
        json["config"]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["severity"] == "warning"),
        "{json}"
    );

    // All valid: exit 0 and `valid: true`.
    let (_dir, config) = setup(&[("good.toml", &good)]);
    let out = recurrentd(&config, &["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true, "{json}");
}

/// Item 7: a config syntax error is one line that names the place, never the line's text (it
/// may be an inline secret).
#[test]
fn a_config_syntax_error_never_echoes_a_secret() {
    let (_dir, config) = setup(&[]);
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}password = \"hunter2-visible\n")).unwrap();
    let out = recurrentd(&config, &["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 5, column"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Item 7: shell completions and man pages generated from the clap definitions; neither needs a
/// config.
#[test]
fn completions_and_man_pages_are_generated_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let no_config = dir.path().join("no-such-config.toml");
    let out = recurrentd(&no_config, &["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bash = text(&out.stdout);
    assert!(
        bash.contains("_recurrentd()") && bash.contains("complete -F"),
        "{bash}"
    );
    for command in [
        "run", "status", "history", "backup", "forecast", "check", "enroll",
    ] {
        assert!(
            bash.contains(command),
            "{command} missing from the bash completions"
        );
    }
    assert!(
        bash.contains("--verify") && bash.contains("--limit"),
        "options complete too"
    );
    for shell in ["zsh", "fish"] {
        let out = recurrentd(&no_config, &["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(text(&out.stdout).contains("history"), "{shell}");
    }
    let out = recurrentd(&no_config, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let out = recurrentd(&no_config, &["man"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = text(&out.stdout);
    assert!(page.contains(".TH recurrentd 1"), "{page}");
    assert!(
        page.contains(".SH SUBCOMMANDS") || page.contains("SUBCOMMANDS"),
        "{page}"
    );
    for command in [
        "recurrentd\\-history",
        "recurrentd\\-backup",
        "recurrentd\\-completions",
    ] {
        assert!(
            page.contains(command),
            "{command} missing from the man page"
        );
    }
    let pages = dir.path().join("man1");
    let out = recurrentd(&no_config, &["man", "--dir", pages.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let history = std::fs::read_to_string(pages.join("recurrentd-history.1")).unwrap();
    assert!(
        history.contains(".TH recurrentd-history 1") && history.contains("\\-\\-state"),
        "{history}"
    );
    assert!(pages.join("recurrentd.1").exists());
}

/// Item 7: `enroll --help` says what the code does with --order-number: the default
/// enrol-<id> / enrol-<id>-<n>, and a used number refused (the behaviour is in tests/enroll.rs).
#[test]
fn enroll_help_says_the_order_number_default_the_code_uses() {
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .args(["enroll", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains(
            "Default: enrol-<id> for the subscription's first attempt, enrol-<id>-<n> for its n-th"
        ),
        "{help}"
    );
    assert!(
        help.contains("one an enrolment used before is refused"),
        "{help}"
    );
}

/// `n` daily subscriptions from 2 January 2027, in schedule-file syntax.
fn daily(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[subscription]]\nid = \"d-{i}\"\nbill_number = \"51111120000{i:05}\"\n\
                 currency = \"RUB\"\namount = \"10.00\"\nevery = \"1 day\"\nstart = 2027-01-02\n\n\
                 [subscription.limits]\nmin_amount = \"5.00\"\nmax_amount = \"50.00\"\n\
                 period_days = 1\nmax_date = 2027-12-31\n\n"
            )
        })
        .collect()
}

/// Item 6: a rehearsal whose pace cannot keep up with its clock says at --until how many due
/// charges it left unmade, and exits 1; one that kept up exits 0. Every charge line carries the
/// virtual instant (`clock=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_that_falls_behind_says_so_and_exits_1() {
    use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    // Six daily charges, one request per second, a virtual day per second: the first sweep's
    // sends take six virtual days, and --until comes first.
    let slow = common::Rig::new(&sandbox, "requests_per_second = 1\n");
    slow.write_schedule("daily.toml", &daily(6));
    let rehearse = |rig: &common::Rig, until: &str| {
        let mut command = rig.command();
        command
            .args(["run", "--init", "--clock-start", "2027-01-01T00:00:00Z"])
            .args(["--clock-speed", "86400", "--until", until])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET");
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let out = rehearse(&slow, "2027-01-06T00:00:00Z").await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("recurrentd: the rehearsal left"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let count: u32 = line
        .trim_start_matches("recurrentd: the rehearsal left ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= 6, "{line}");
    assert!(
        line.contains("unmade") && line.contains("gateway.requests_per_second = 1"),
        "{line}"
    );
    assert!(
        stderr.contains("rehearsal incomplete"),
        "the log says it too: {stderr}"
    );
    // Every charge outcome line names the virtual instant it happened at.
    let outcomes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("charge outcome"))
        .collect();
    assert!(!outcomes.is_empty(), "{stderr}");
    for line in outcomes {
        assert!(line.contains("clock=2027-01-"), "{line}");
    }

    // One subscription at the default pace keeps up: exit 0.
    let healthy = common::Rig::new(&sandbox, "");
    healthy.write_schedule("daily.toml", &daily(1));
    let out = rehearse(&healthy, "2027-01-06T00:00:00Z").await.unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("every charge that fell due was made"),
        "{stderr}"
    );
    sandbox.shutdown().await;
}

/// Item 6: the sandbox run's banner says the pace it uses instead of the configured one.
#[test]
fn the_sandbox_banner_prints_its_rate_override() {
    let (_dir, config) = setup(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(&config)
        .args(["run", "--sandbox", "--clock-start", "2027-01-01T00:00:00Z"])
        .args(["--until", "2027-01-03T00:00:00Z"])
        .env("RUST_LOG", "info")
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let banner = stderr
        .lines()
        .find(|l| l.contains("sandbox run: the built-in Assist sandbox"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        banner.contains("requests_per_second=200")
            && banner.contains("max_in_flight=16")
            && banner.contains("gateway.requests_per_second 5"),
        "{banner}"
    );
}
