//! Crash safety: the real binary, on a rehearsal clock against the in-process sandbox, killed
//! with SIGKILL at each named step of the charge path (intent committed, reply received, status
//! received, outcome committed) and at random instants, restarted each time. At the end the
//! invariants hold: at most one approved charge per (subscription, period) at the gateway, the
//! ledger and the gateway's book agree, every request was within the limits.
//!
//! The named steps use the debug-build fail points (`RECURRENTD_FAILPOINT`).

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
use recurrentd::money::Money;
use recurrentd::store::{Access, AttemptState, Store};
use secrecy::SecretString;

const PASSWORD: &str = "crash-test-password";
const SALT: &str = "crash-test-salt";
/// Four virtual days per real second: a tick (250 ms) is a virtual day.
const SPEED: i64 = 4 * 86_400;

fn subscription(id: &str, bill: &str, amount: &str, start: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"{amount}\"\nevery = \"1 month\"\nstart = {start}\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    )
}

struct Rig {
    dir: tempfile::TempDir,
    /// Where the virtual clock got to.
    virtual_now: DateTime<Utc>,
    runs: u32,
}

impl Rig {
    fn new(sandbox_url: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        let mut subs = String::new();
        for i in 0..3 {
            subs += &subscription(
                &format!("plain-{i}"),
                &format!("51111120000{i:04}"),
                "99.00",
                &format!("2027-01-{:02}", 2 + i * 3),
            );
        }
        for i in 0..6 {
            subs += &subscription(
                &format!("chaos-{i}"),
                &format!("999{i:09}999"),
                "120.00",
                &format!("2027-01-{:02}", 1 + i * 2),
            );
        }
        subs += &subscription("slow", "999000000002300", "75.00", "2027-01-04");
        std::fs::write(dir.path().join("schedules/subs.toml"), subs).unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[gateway]\nurl = \"{sandbox_url}\"\nmerchant_id = \"123456\"\nlogin = \"sandbox\"\n\
                 test_mode = true\nconnect_timeout_secs = 1\ntimeout_secs = 1\nmax_in_flight = 4\n\
                 requests_per_second = 200\n"
            ),
        )
        .unwrap();
        Rig {
            dir,
            virtual_now: "2027-01-01T00:00:00Z".parse().unwrap(),
            runs: 0,
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("recurrentd.db")
    }

    fn spawn(&mut self, until: DateTime<Utc>, failpoint: Option<&str>) -> (Child, Instant) {
        self.runs += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("run-{}.log", self.runs))).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_recurrentd"));
        command
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .args(["run", "--clock-start", &self.virtual_now.to_rfc3339()])
            .args(["--clock-speed", &SPEED.to_string()])
            .args(["--until", &until.to_rfc3339()])
            .env("RECURRENTD_SECRET_PASSWORD", PASSWORD)
            .env("RECURRENTD_SECRET_SALT", SALT)
            .env("RUST_LOG", "info")
            .env_remove("RECURRENTD_FAILPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(failpoint) = failpoint {
            command.env("RECURRENTD_FAILPOINT", failpoint);
        }
        // The first run is a new installation's: `--init` creates the database.
        if !self.db().exists() {
            command.arg("--init");
        }
        (command.spawn().unwrap(), Instant::now())
    }

    /// Moves the virtual clock on by what the run covered (an upper bound: the child's clock
    /// started a little after the spawn), so the next run continues where this one stopped.
    fn advance(&mut self, started: Instant) {
        let real = started.elapsed();
        self.virtual_now += Duration::milliseconds(real.as_millis() as i64 * SPEED);
    }

    fn log(&self, run: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("run-{run}.log"))).unwrap_or_default()
    }
}

async fn wait(child: &mut Child, limit: StdDuration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the daemon did not finish within {limit:?}");
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

fn parse_order(order: &str) -> (String, u32) {
    let mut parts = order.rsplitn(3, '-');
    let _attempt = parts.next().unwrap();
    let period: u32 = parts.next().unwrap().parse().unwrap();
    let rest = parts.next().unwrap();
    (rest.split_once('-').unwrap().1.to_string(), period)
}

fn check_invariants(sandbox: &Sandbox, db: &Path) {
    let book = sandbox.book();
    let store = Store::open(db, Access::ReadOnly).unwrap();
    let attempts = store.attempts().unwrap();
    let by_order: HashMap<&str, _> = attempts
        .iter()
        .map(|a| (a.order_number.as_str(), a))
        .collect();
    let mut per_period: HashMap<(String, u32), u32> = HashMap::new();
    let mut approved = HashSet::new();
    for order in book
        .orders
        .iter()
        .filter(|o| o.state.as_str() == "Approved")
    {
        *per_period
            .entry(parse_order(&order.order_number))
            .or_default() += 1;
        approved.insert(order.order_number.clone());
    }
    for (period, count) in &per_period {
        assert_eq!(*count, 1, "charged {count} times for {period:?}");
    }
    for order in &approved {
        let attempt = by_order
            .get(order.as_str())
            .unwrap_or_else(|| panic!("{order} approved at the gateway, unknown to the ledger"));
        assert!(
            matches!(
                attempt.state,
                AttemptState::Approved | AttemptState::Quarantined
            ),
            "{order}: approved at the gateway, {} in the ledger",
            attempt.state
        );
    }
    for attempt in &attempts {
        if attempt.state == AttemptState::Approved {
            assert!(
                approved.contains(&attempt.order_number),
                "{} paid only in the ledger",
                attempt.order_number
            );
        }
        assert!(
            !attempt.state.unresolved(),
            "{} still {}",
            attempt.order_number,
            attempt.state
        );
    }
    let (min, max) = (
        Money::parse("50.00").unwrap(),
        Money::parse("150.00").unwrap(),
    );
    for request in &book.rp_requests {
        let amount = Money::parse(&request.amount).unwrap();
        assert!(amount >= min && amount <= max);
        assert!(
            by_order.contains_key(request.order_number.as_str()),
            "{} unknown to the ledger",
            request.order_number
        );
    }
    let mut instants: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    for attempt in attempts
        .iter()
        .filter(|a| approved.contains(&a.order_number))
    {
        instants
            .entry(attempt.subscription_id.as_str())
            .or_default()
            .push(attempt.sent_at.unwrap_or(attempt.created_at));
    }
    let moscow: chrono_tz::Tz = "Europe/Moscow".parse().unwrap();
    for (sub, mut list) in instants {
        list.sort();
        for pair in list.windows(2) {
            let days = pair[1].with_timezone(&moscow).date_naive()
                - pair[0].with_timezone(&moscow).date_naive();
            assert!(
                days.num_days() >= 28,
                "{sub}: charges {} and {} too close",
                pair[0],
                pair[1]
            );
        }
    }
    assert!(
        approved.len() >= 15,
        "the scenario charged too little: {}",
        approved.len()
    );
}

/// `history --json` and `status --json` on the database the runs left behind.
fn check_operator_views(rig: &Rig) {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
            .arg("--config")
            .arg(rig.dir.path().join("config.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let (code, history) = run(&["history", "--json"]);
    assert_eq!(code, Some(0));
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let entries = history.as_array().unwrap();
    assert!(!entries.is_empty());
    let states = [
        "pending",
        "not_sent",
        "unknown",
        "approved",
        "declined",
        "not_received",
        "quarantined",
        "blocked",
        "skipped",
        "parked",
    ];
    for entry in entries {
        for key in [
            "subscription",
            "period",
            "attempt",
            "order_number",
            "amount",
            "currency",
            "state",
            "sent_at",
            "response_code",
            "checkvalue",
        ] {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
        assert!(
            states.contains(&entry["state"].as_str().unwrap()),
            "{entry}"
        );
        assert!(
            ["verified", "mismatch", "absent"].contains(&entry["checkvalue"].as_str().unwrap())
        );
        if entry["state"] == "approved" {
            assert_eq!(entry["checkvalue"], "verified");
            assert!(entry["sent_at"].is_string());
        }
    }
    let (_, one) = run(&["history", "plain-0", "--json"]);
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert!(
        one.as_array()
            .unwrap()
            .iter()
            .all(|e| e["subscription"] == "plain-0")
    );
    // A backup is a consistent, owner-only copy that opens as a database of its own.
    let copy = rig.dir.path().join("backup.db");
    let (code, _) = run(&["backup", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // (A copy is in rollback-journal mode; a daemon started on it switches it to WAL.)
    let copied = Store::open(&copy, Access::Daemon).unwrap();
    assert_eq!(
        copied.attempts().unwrap().len(),
        Store::open(&rig.db(), Access::ReadOnly)
            .unwrap()
            .attempts()
            .unwrap()
            .len()
    );
    let (code, _) = run(&["backup", copy.to_str().unwrap()]);
    assert_eq!(code, Some(1), "an existing file is never overwritten");
    // Nothing to resume or reset: said so, exit 1.
    assert_eq!(run(&["resume", "plain-0", "--reason", "test"]).0, Some(1));
    assert_eq!(run(&["breaker", "reset", "--reason", "test"]).0, Some(1));
    // The daemon has stopped: a problem (exit 1) unless --offline-ok says it is intended.
    let (code, status) = run(&["status", "--json"]);
    assert_eq!(code, Some(1));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["daemon_running"], false);
    assert!(status["attempts"]["approved"].as_u64().unwrap() >= 15);
    let (code, _) = run(&["status", "--json", "--offline-ok"]);
    assert_eq!(
        code,
        Some(
            if status["needs_attention"].as_array().unwrap().is_empty() {
                0
            } else {
                1
            }
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_step_and_at_random_the_invariants_hold() {
    let sandbox = Sandbox::start(
        SandboxConfig {
            password: SecretString::from(PASSWORD),
            salt: SecretString::from(SALT),
            hang: StdDuration::from_millis(1500),
            latency: StdDuration::from_millis(15),
            ..SandboxConfig::builtin()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut rig = Rig::new(&sandbox.url());
    let end: DateTime<Utc> = "2027-05-01T00:00:00Z".parse().unwrap();

    // SIGKILL at each named step (the third time it is reached, so some work is done first).
    for failpoint in [
        "intent_committed",
        "reply_received",
        "status_received",
        "outcome_committed",
    ] {
        let (mut child, started) = rig.spawn(end, Some(&format!("{failpoint}:3")));
        let status = wait(&mut child, StdDuration::from_secs(60)).await;
        rig.advance(started);
        assert_eq!(
            status.signal(),
            Some(9),
            "{failpoint}: expected a SIGKILL, got {status:?}\n{}",
            rig.log(rig.runs)
        );
    }
    // SIGKILL at random instants.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = StdDuration::from_millis(300 + seed % 1500);
        let (mut child, started) = rig.spawn(end, None);
        tokio::time::sleep(after).await;
        let _ = child.kill();
        let _ = child.wait();
        rig.advance(started);
    }
    // A clean run to the end: it reconciles, charges what is left, settles and exits 0.
    let (mut child, _) = rig.spawn(end, None);
    let status = wait(&mut child, StdDuration::from_secs(120)).await;
    assert!(status.success(), "{status:?}\n{}", rig.log(rig.runs));
    check_invariants(&sandbox, &rig.db());
    check_operator_views(&rig);
    // A second daemon on the same database is refused while one runs.
    let (mut first, _) = rig.spawn(end + Duration::days(400), None);
    tokio::time::sleep(StdDuration::from_millis(700)).await;
    let second = Command::new(env!("CARGO_BIN_EXE_recurrentd"))
        .arg("--config")
        .arg(rig.dir.path().join("config.toml"))
        .args([
            "run",
            "--clock-start",
            &rig.virtual_now.to_rfc3339(),
            "--clock-speed",
            "1",
        ])
        .env("RECURRENTD_SECRET_PASSWORD", PASSWORD)
        .env("RECURRENTD_SECRET_SALT", SALT)
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("only one daemon"), "{stderr}");
}
