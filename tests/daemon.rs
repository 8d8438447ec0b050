//! The daemon as operators run it: the real binary as a child process, on a rehearsal clock,
//! against an in-process sandbox. A SIGHUP reload puts an edited schedule file in force (and a
//! broken edit keeps the last good version, with the problem's file:line:field in the log);
//! SIGTERM while a charge is in flight lets it finish and records its outcome, and exits 0.
//!
//! (READY=1 over a fake NOTIFY_SOCKET and a broken config under systemd are in tests/notify.rs,
//! a second daemon refused in tests/crash.rs, a broken config's one line in tests/cli.rs.)

mod common;

use std::time::Duration;

use common::{Rig, signal, subscription, until, wait};
use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
use recurrentd::store::{Access, AttemptState, Store};

fn approved<'a>(
    history: &'a [serde_json::Value],
    subscription: &str,
    period: &str,
) -> Option<&'a serde_json::Value> {
    history.iter().find(|e| {
        e["subscription"] == subscription && e["period"] == period && e["state"] == "approved"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_an_edited_schedule_in_force_and_a_broken_edit_keeps_the_last_good_one() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = Rig::new(&sandbox, "");
    let s1 = |amount| subscription("s1", "5111112000000001", amount, "2027-01-02");
    rig.write_schedule("subs.toml", &s1("99.00"));
    // Eight virtual days per real second: a month in about four seconds.
    let mut child = rig.spawn(
        "2027-01-01T00:00:00Z",
        8 * 86_400,
        Some("2027-03-20T00:00:00Z"),
    );
    let log = rig.log();

    // The first period is charged at the amount of the first version.
    let history = until(Duration::from_secs(30), &log, "s1's first charge", || {
        let history = rig.try_history(None)?;
        approved(&history, "s1", "2027-01-02")
            .is_some()
            .then_some(history)
    });
    assert_eq!(
        approved(&history, "s1", "2027-01-02").unwrap()["amount"],
        "99.00"
    );

    // An edit: a new amount for s1 and a new subscription, put in force by SIGHUP.
    let edited = s1("120.00") + &subscription("s2", "5111112000000002", "77.00", "2027-02-10");
    rig.write_schedule("subs.toml", &edited);
    signal(&child, "HUP");
    let history = until(Duration::from_secs(30), &log, "the edit in force", || {
        let history = rig.history(None);
        (approved(&history, "s1", "2027-02-02").is_some()
            && approved(&history, "s2", "2027-02-10").is_some())
        .then_some(history)
    });
    assert_eq!(
        approved(&history, "s1", "2027-02-02").unwrap()["amount"],
        "120.00"
    );
    assert_eq!(
        approved(&history, "s2", "2027-02-10").unwrap()["amount"],
        "77.00"
    );
    assert!(log_has(&rig, "SIGHUP: re-reading the schedule files"));

    // A broken edit (an amount with three decimals, and a new s3 beside it): refused whole, its
    // problem logged as file:line:column: field, and the last good version stays in force.
    let broken = s1("120.00")
        + &subscription("s2", "5111112000000002", "77.00", "2027-02-10")
        + &subscription("s3", "5111112000000003", "88.00", "2027-02-20");
    let broken = broken.replacen("amount = \"120.00\"", "amount = \"120.005\"", 1);
    let line = broken.lines().position(|l| l.contains("120.005")).unwrap() + 1;
    rig.write_schedule("subs.toml", &broken);
    signal(&child, "HUP");
    let logged = until(Duration::from_secs(30), &log, "the refusal logged", || {
        rig.log_text()
            .lines()
            .find(|l| l.contains("last accepted version stays in force"))
            .map(str::to_string)
    });
    assert!(
        logged.contains(&format!("subs.toml:{line}:")) && logged.contains(": amount: "),
        "{logged}"
    );
    let status = wait(&mut child, Duration::from_secs(60), &log);
    assert!(status.success(), "{status:?}\n{}", rig.log_text());
    let history = rig.history(None);
    let third = approved(&history, "s1", "2027-03-02")
        .unwrap_or_else(|| panic!("s1 not charged in March: {history:#?}"));
    assert_eq!(third["amount"], "120.00", "the last good version");
    assert!(
        history.iter().all(|e| e["subscription"] != "s3"),
        "s3 of the refused version was charged: {history:#?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_in_flight_charge_records_its_outcome_and_exits_0() {
    // Every reply takes 3 s: a charge (rp.cfm, then the status query) is in flight for 6 s.
    let sandbox = Sandbox::start(
        SandboxConfig {
            latency: Duration::from_secs(3),
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let rig = Rig::new(&sandbox, "");
    rig.write_schedule(
        "subs.toml",
        &subscription("slow-1", "5111112000000001", "99.00", "2027-01-02"),
    );
    // A real-time clock a second before the due instant (10:00 Moscow), so nothing else falls
    // due meanwhile.
    let mut child = rig.spawn("2027-01-02T06:59:59Z", 1, None);
    let log = rig.log();

    // In flight: the intent is committed (state pending), the request leaves right after it,
    // and the sandbox has not answered yet (it takes 3 s before it even files the order).
    let order = until(Duration::from_secs(30), &log, "a charge in flight", || {
        let store = Store::open(&rig.db(), Access::ReadOnly).ok()?;
        store
            .attempts()
            .ok()?
            .into_iter()
            .find(|a| a.state == AttemptState::Pending)
            .map(|a| a.order_number)
    });
    std::thread::sleep(Duration::from_millis(500));
    // While it runs, `status` finds it (and nothing that needs an operator).
    let out = rig.run(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["daemon_running"], true);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        sandbox.book().orders.is_empty(),
        "answered before SIGTERM: not in flight"
    );
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(60), &log);
    assert_eq!(status.code(), Some(0), "{}", rig.log_text());
    // Now no daemon holds the lock: `status` says so and exits 1, 0 with --offline-ok.
    let out = rig.run(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("THE DAEMON IS NOT RUNNING"), "{stderr}");
    assert_eq!(rig.run(&["status", "--offline-ok"]).status.code(), Some(0));
    assert!(log_has(&rig, "SIGTERM: stopping"), "{}", rig.log_text());

    let history = rig.history(Some("slow-1"));
    let entry = history
        .iter()
        .find(|e| e["order_number"] == order.as_str())
        .unwrap_or_else(|| panic!("{order} not in the history: {history:#?}"));
    assert_eq!(entry["state"], "approved", "{entry}\n{}", rig.log_text());
    assert_eq!(entry["checkvalue"], "verified");
    assert!(entry["sent_at"].is_string());
    // What the gateway holds agrees: one approved order, this one.
    let book = sandbox.book();
    let paid: Vec<_> = book
        .orders
        .iter()
        .filter(|o| o.state.as_str() == "Approved")
        .map(|o| o.order_number.clone())
        .collect();
    assert_eq!(paid, [order]);
    sandbox.shutdown().await;
}

fn log_has(rig: &Rig, text: &str) -> bool {
    rig.log_text().contains(text)
}

/// `run` on a short rehearsal (nine virtual days at ten days per second) with `extra`
/// arguments and, when given, `$STATE_DIRECTORY`; run to the end.
fn run_briefly(rig: &Rig, extra: &[&str], state: Option<&std::path::Path>) -> std::process::Output {
    let mut command = rig.command();
    command
        .args(["run", "--clock-start", "2027-01-01T00:00:00Z"])
        .args(["--clock-speed", "864000", "--until", "2027-01-10T00:00:00Z"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    if let Some(state) = state {
        command.env("STATE_DIRECTORY", state);
    }
    command.output().unwrap()
}

/// Issue 12, item 6: a fresh database would charge every current period again, so `run`
/// creates one only when told to: `--init`, or the first start under systemd in an empty state
/// directory. Otherwise it refuses (78) before touching anything, and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_creates_a_database_only_when_told_to() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = Rig::new(&sandbox, "");
    rig.write_schedule(
        "subs.toml",
        &subscription("s1", "5111112000000001", "99.00", "2027-01-02"),
    );
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let db = rig.db();

    // No database and no flag: refused, nothing created, nothing sent.
    let out = run_briefly(&rig, &[], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("no recurrentd database"))
        .unwrap_or_else(|| panic!("no refusal line:\n{stderr}"));
    assert!(
        line.contains(&db.display().to_string())
            && line.contains("--init")
            && line.contains("Never use --init after losing a database")
            && line.contains("backup"),
        "{line}"
    );
    assert!(!db.exists(), "a database was created");
    assert!(!rig.dir.path().join("recurrentd.db.lock").exists());
    assert!(sandbox.book().rp_requests.is_empty());

    // Under systemd with a state directory that is not empty (a lost database's leftovers,
    // here its WAL): refused too.
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("recurrentd.db-wal"), "").unwrap();
    let out = run_briefly(&rig, &[], Some(state.path()));
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(!state.path().join("recurrentd.db").exists());

    // Under systemd, the first start in an empty state directory creates it, and says why.
    let state = tempfile::tempdir().unwrap();
    let out = run_briefly(&rig, &[], Some(state.path()));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(state.path().join("recurrentd.db").exists());
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("created a new, empty database")
                && l.contains("first start under systemd")),
        "{stderr}"
    );

    // --init creates it (and says so), once; a second --init is refused; a plain restart runs.
    let out = run_briefly(&rig, &["--init"], None);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("created a new, empty database") && l.contains("run --init")),
        "{stderr}"
    );
    let prefix = Store::open(&db, Access::ReadOnly)
        .unwrap()
        .order_prefix()
        .unwrap();
    let out = run_briefly(&rig, &["--init"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    let out = run_briefly(&rig, &[], None);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("created a new"), "{stderr}");
    let same = Store::open(&db, Access::ReadOnly)
        .unwrap()
        .order_prefix()
        .unwrap();
    assert_eq!(
        same, prefix,
        "the order-number prefix is the database's for good"
    );
    sandbox.shutdown().await;
}

/// `run` on a rehearsal from `from` to `until` at ten virtual days per second; run to the end.
fn rehearse(rig: &Rig, from: &str, until: &str, extra: &[&str]) -> std::process::Output {
    rig.command()
        .args(["run", "--clock-start", from, "--clock-speed", "864000"])
        .args(["--until", until])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

/// Issue 12, item 11: a database with a scrambled ledger page started and charged. The daemon
/// now runs `PRAGMA quick_check` when it opens the store and refuses a damaged file with one
/// line and exit 74 (EX_IOERR) before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_at_start_with_74_and_nothing_is_sent() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = Rig::new(&sandbox, "");
    let subs: String = (0..40)
        .map(|i| {
            subscription(
                &format!("s{i}"),
                &format!("51111120000{i:05}"),
                "99.00",
                "2027-01-02",
            )
        })
        .collect();
    rig.write_schedule("subs.toml", &subs);
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    // January is charged: a real database with ledger rows over several pages.
    let out = rehearse(
        &rig,
        "2027-01-01T00:00:00Z",
        "2027-01-10T00:00:00Z",
        &["--init"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sent = sandbox.book().rp_requests.len();
    assert_eq!(sent, 40, "{}", text(&out.stderr));

    // Scramble one of the ledger's pages in the middle of the file (everything checkpointed
    // into the file first, so the WAL does not hide the damage).
    let db = rig.db();
    let (page_size, page, pages) = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let ledger: Vec<i64> = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = 'ledger' ORDER BY pageno")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            ledger.len() >= 3,
            "the ledger spans {} page(s)",
            ledger.len()
        );
        (
            page_size as u64,
            ledger[ledger.len() / 2] as u64,
            pages as u64,
        )
    };
    assert!(page > 1 && page < pages, "page {page} of {pages}");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        file.seek(SeekFrom::Start((page - 1) * page_size)).unwrap();
        let garbage: Vec<u8> = (0..page_size)
            .map(|i| (i * 151 % 251) as u8 ^ 0xA5)
            .collect();
        file.write_all(&garbage).unwrap();
        file.sync_all().unwrap();
    }

    // February falls due in this run: refused at start, nothing sent.
    let out = rehearse(&rig, "2027-02-01T00:00:00Z", "2027-02-10T00:00:00Z", &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("recurrentd: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        line.contains(&db.display().to_string())
            && line.contains("damaged")
            && line.contains("quick_check")
            && line.contains("backup"),
        "{line}"
    );
    assert_eq!(
        sandbox.book().rp_requests.len(),
        sent,
        "a charge was sent from a damaged database"
    );
    sandbox.shutdown().await;
}

/// Issue 12, item 11: a tick that fails on a storage error is not retried silently for ever.
/// Here every write of an attempt fails (a trigger added beside the running daemon makes the
/// database refuse them, as a failing disk would): after `daemon.max_failed_ticks` (3 here)
/// failed ticks in a row the daemon exits 70, so that systemd restarts it and it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_that_keep_failing_stop_the_daemon_with_70() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = Rig::new(&sandbox, "");
    let config = std::fs::read_to_string(rig.config()).unwrap();
    std::fs::write(rig.config(), config + "\n[daemon]\nmax_failed_ticks = 3\n").unwrap();
    // Charged every day: at a day per second something is due every second.
    rig.write_schedule(
        "daily.toml",
        "[[subscription]]\nid = \"daily\"\nbill_number = \"5111112000000001\"\n\
         currency = \"RUB\"\namount = \"99.00\"\nevery = \"1 day\"\nstart = 2027-01-02\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 1\nmax_date = 2027-12-31\n",
    );
    let mut child = rig.spawn("2027-01-01T00:00:00Z", 86_400, None);
    let log = rig.log();
    until(Duration::from_secs(30), &log, "a first charge", || {
        let history = rig.try_history(Some("daily"))?;
        history
            .iter()
            .any(|e| e["state"] == "approved")
            .then_some(())
    });
    {
        let conn = rusqlite::Connection::open(rig.db()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER failing_disk BEFORE INSERT ON attempts \
             BEGIN SELECT RAISE(ABORT, 'simulated storage failure'); END;",
        )
        .unwrap();
    }
    let sent = sandbox.book().rp_requests.len();
    let status = wait(&mut child, Duration::from_secs(30), &log);
    let logged = rig.log_text();
    assert_eq!(status.code(), Some(70), "{logged}");
    assert!(
        logged.contains("3 ticks in a row failed") && logged.contains("simulated storage failure"),
        "{logged}"
    );
    assert!(
        logged.contains("failed_in_a_row=1") && logged.contains("failed_in_a_row=2"),
        "each failed tick is logged with its count:\n{logged}"
    );
    assert_eq!(
        sandbox.book().rp_requests.len(),
        sent,
        "nothing new could be committed, so nothing new was sent"
    );
    sandbox.shutdown().await;
}

/// Issue 12, item 12: the database holds the whole ledger, so it is created owner-only (0600)
/// whatever the umask, and so are its `-wal` and `-shm` files and the daemon's lock file. Here
/// the daemon runs under umask 000, which would leave them writable by anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_and_its_sidecars_are_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rig = Rig::new(&sandbox, "");
    rig.write_schedule(
        "subs.toml",
        &subscription("s1", "5111112000000001", "99.00", "2027-01-02"),
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(rig.config())
        .args(["run", "--init", "--clock-start", "2027-01-01T00:00:00Z"])
        .args(["--clock-speed", "86400"])
        .env_remove("RECURRENTD_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env(
            "RECURRENTD_SECRET_PASSWORD",
            recurrentd::gateway::sandbox::BUILTIN_PASSWORD,
        )
        .env(
            "RECURRENTD_SECRET_SALT",
            recurrentd::gateway::sandbox::BUILTIN_SALT,
        )
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(rig.log()).unwrap())
        .spawn()
        .unwrap();
    let log = rig.log();
    // A file made under umask 000 by default is 0666: check that the umask really applies.
    let probe = std::process::Command::new("sh")
        .args(["-c", "umask 000 && : > \"$0\" && stat -c %a \"$0\""])
        .arg(rig.dir.path().join("probe"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "666");
    // All twelve intents are committed at once; once the first request has reached the gateway
    // the other eleven wait for the rate limit.
    until(Duration::from_secs(30), &log, "the first request", || {
        (!sandbox.book().orders.is_empty()).then_some(())
    });
    let mode = |suffix: &str| {
        let mut path = rig.db().into_os_string();
        path.push(suffix);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()))
            .permissions()
            .mode()
            & 0o777
    };
    for suffix in ["", "-wal", "-shm", ".lock"] {
        assert_eq!(
            mode(suffix),
            0o600,
            "recurrentd.db{suffix} is {:o}",
            mode(suffix)
        );
    }
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(60), &log);
    assert!(status.success(), "{status:?}\n{}", rig.log_text());
    sandbox.shutdown().await;
}

/// Issue 12, item 5: edits and cancellations waited behind a long tick (SIGHUP and the folder
/// watcher were not served while it sent), so subscriptions cancelled seconds before their
/// charges were charged anyway. Now a reload is served during a tick, between batches, and every
/// intent is checked against the terms in force just before it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_during_a_long_tick_stops_the_charges_not_yet_sent() {
    // Every reply takes 300 ms and two requests leave per second: twelve charges (rp.cfm and a
    // status query each) take about twelve seconds in one tick.
    let sandbox = Sandbox::start(
        SandboxConfig {
            latency: Duration::from_millis(300),
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let rig = Rig::new(&sandbox, "max_in_flight = 1\nrequests_per_second = 2\n");
    let ids: Vec<String> = (1..=12).map(|n| format!("s{n:02}")).collect();
    let schedule = |cancelled: &[&str]| {
        ids.iter()
            .enumerate()
            .map(|(n, id)| {
                let text = subscription(
                    id,
                    &format!("51111120000000{:02}", n + 1),
                    "99.00",
                    "2027-01-02",
                );
                if cancelled.contains(&id.as_str()) {
                    text.replace("currency = ", "state = \"cancelled\"\ncurrency = ")
                } else {
                    text
                }
            })
            .collect::<String>()
    };
    rig.write_schedule("subs.toml", &schedule(&[]));
    // Real time, two seconds before the due instant (10:00 Moscow).
    let mut child = rig.spawn("2027-01-02T06:59:58Z", 1, None);
    let log = rig.log();
    // All twelve intents are committed at once; once the first request has reached the gateway
    // the other eleven wait for the rate limit.
    until(Duration::from_secs(30), &log, "the first request", || {
        (!sandbox.book().orders.is_empty()).then_some(())
    });
    let cancelled = ["s07", "s08", "s09", "s10", "s11", "s12"];
    rig.write_schedule("subs.toml", &schedule(&cancelled));
    signal(&child, "HUP");
    // Every period settles: paid, or blocked before sending.
    let history = until(
        Duration::from_secs(60),
        &log,
        "every period settled",
        || {
            let history = rig.try_history(None)?;
            let settled = ids.iter().all(|id| {
                history.iter().any(|e| {
                    e["subscription"] == id.as_str()
                        && (e["state"] == "approved" || e["state"] == "blocked")
                })
            });
            settled.then_some(history)
        },
    );
    signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(60), &log);
    assert_eq!(status.code(), Some(0), "{}", rig.log_text());
    let book = sandbox.book();
    let sent: Vec<&str> = book
        .orders
        .iter()
        .map(|o| o.order_number.as_str())
        .collect();
    // At most the charge in flight when the reload came may have left; the rest never did.
    let charged_cancelled: Vec<&&str> = cancelled
        .iter()
        .filter(|id| sent.iter().any(|o| o.contains(&format!("-{id}-"))))
        .collect();
    assert!(
        charged_cancelled.len() <= 1,
        "cancelled subscriptions were charged: {charged_cancelled:?}\n{history:#?}\n{}",
        rig.log_text()
    );
    for id in &ids[..6] {
        assert!(
            approved(&history, id, "2027-01-02").is_some(),
            "{id} not charged: {history:#?}"
        );
    }
    let text = rig.log_text();
    let reload = text
        .find("SIGHUP: re-reading the schedule files")
        .expect("the reload was served");
    assert!(
        text[reload..].contains("charge blocked before sending"),
        "{text}"
    );
    sandbox.shutdown().await;
}
