//! Outcomes delivered to the merchant's systems: the real binary on a rehearsal clock against
//! the in-process sandbox, its webhook pointed at a receiver in this process that checks every
//! signature by its own HMAC-SHA256 (not recurrentd's code) and can be told to fail or hang.
//! Every event of the outbox reaches it at least once, in order per subscription, across a
//! SIGKILL and a restart and a receiver that fails for a while; a receiver that never recovers
//! dead-letters the events (shown by `status`, re-queued by `events --redeliver-dead`) while
//! charging goes on; `events --since` resumes exactly after its cursor, `--follow` keeps going.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Rig, until, wait};
use hmac::{Hmac, Mac};
use recurrentd::gateway::sandbox::{Sandbox, SandboxConfig};
use recurrentd::store::{Access, Store};
use sha2::Sha256;

const SECRET: &str = "whsec_test_0123456789";

/// How the receiver answers.
const OK: u8 = 0;
const FAIL: u8 = 1;
/// Holds the request longer than the daemon's webhook timeout, then fails.
const HANG: u8 = 2;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    verified: bool,
    idempotency_key: String,
    event: serde_json::Value,
    answered: u16,
}

/// A webhook endpoint on loopback, HTTP/1.1 parsed by hand, one thread per connection.
struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(OK));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (m, g) = (Arc::clone(&mode), Arc::clone(&got));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (m, g) = (Arc::clone(&m), Arc::clone(&g));
                std::thread::spawn(move || serve(stream, &m, &g));
            }
        });
        Receiver { port, mode, got }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/recurrentd", self.port)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Distinct event ids accepted (answered 200, signature verified).
    fn delivered_ids(&self) -> BTreeSet<String> {
        self.got()
            .into_iter()
            .filter(|g| g.answered == 200 && g.verified)
            .map(|g| g.idempotency_key)
            .collect()
    }
}

fn serve(stream: TcpStream, mode: &AtomicU8, got: &Mutex<Vec<Got>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 || !line.starts_with("POST /hooks/recurrentd ")
    {
        return;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let verified = headers
        .get("recurrentd-signature")
        .is_some_and(|h| signature_matches(h, &body));
    let mode = mode.load(Ordering::SeqCst);
    if mode == HANG {
        std::thread::sleep(Duration::from_secs(3));
    }
    let answered = if mode == OK && verified { 200 } else { 500 };
    got.lock().unwrap().push(Got {
        verified,
        idempotency_key: headers.get("idempotency-key").cloned().unwrap_or_default(),
        event: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        answered,
    });
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// `t=<unix>,v1=<hex>`: HMAC-SHA256 of "<t>.<body>" with the shared secret, computed here.
fn signature_matches(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_string()),
            Some(("v1", value)) => v1 = Some(value.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let fresh = t
        .parse::<i64>()
        .is_ok_and(|t| (Utc::now().timestamp() - t).abs() < 300);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fresh && expected == v1
}

/// Four weekly subscriptions from 2027-01-04 (one declined every time: its declines and
/// failed periods are events too).
fn schedules() -> String {
    let mut text = String::new();
    for (id, bill) in [
        ("w-1", "5111112000000001"),
        ("w-2", "5111112000000002"),
        ("w-3", "5111112000000003"),
        ("w-decline", "999000000000102"),
    ] {
        text += &format!(
            "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
             amount = \"99.00\"\nevery = \"1 week\"\nstart = 2027-01-04\n\n\
             [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
             period_days = 7\nmax_date = 2027-12-31\n\n"
        );
    }
    text
}

fn rig(sandbox: &Sandbox, receiver: &Receiver, extra: &str) -> Rig {
    let rig = Rig::new(
        sandbox,
        &format!(
            // Paced only by the sandbox (the default 5 requests per second are real seconds,
            // virtual hours at these speeds).
            "max_in_flight = 16\nrequests_per_second = 1000\n\
             \n[webhook]\nurl = \"{}\"\nsecret_file = \"webhook-secret\"\n{extra}",
            receiver.url()
        ),
    );
    let secret = rig.dir.path().join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    rig.write_schedule("weekly.toml", &schedules());
    rig
}

/// `events --json` (after `since`), parsed.
fn events(rig: &Rig, since: Option<i64>) -> Vec<serde_json::Value> {
    let mut args = vec!["events".to_string(), "--json".to_string()];
    if let Some(since) = since {
        args.extend(["--since".to_string(), since.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = rig.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn approved_charges(rig: &Rig) -> usize {
    rig.try_history(None)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["state"] == "approved")
        .count()
}

/// The virtual instant a run reached: where the next run's clock starts (an upper bound, as in
/// tests/crash.rs).
fn advanced(from: DateTime<Utc>, speed: u32, started: Instant) -> DateTime<Utc> {
    from + chrono::Duration::milliseconds(started.elapsed().as_millis() as i64 * i64::from(speed))
}

fn spawn(rig: &Rig, start: DateTime<Utc>, speed: u32, until: Option<DateTime<Utc>>) -> Child {
    let start = start.to_rfc3339();
    let until = until.map(|u| u.to_rfc3339());
    rig.spawn(&start, speed, until.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_webhook_signed_in_order_across_a_kill_a_restart_and_an_outage() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let receiver = Receiver::start();
    // The outage is shorter than the dead-letter time.
    let rig = rig(&sandbox, &receiver, "dead_letter_after_days = 30\n");
    let log = rig.log();
    // A virtual day per second.
    let speed = 86_400;
    let start: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();

    // 1. The receiver answers: events arrive as they are recorded.
    let started = Instant::now();
    let mut child = spawn(&rig, start, speed, None);
    until(Duration::from_secs(60), &log, "first deliveries", || {
        (receiver.delivered_ids().len() >= 8).then_some(())
    });

    // 2. The receiver fails: nothing is delivered, but charging goes on, and the daemon keeps
    // retrying (with backoff).
    receiver.set(FAIL);
    let charged_before = approved_charges(&rig);
    let delivered_before = receiver.delivered_ids().len();
    let failures_before = receiver.got().iter().filter(|g| g.answered == 500).count();
    until(
        Duration::from_secs(60),
        &log,
        "charges during the outage",
        || (approved_charges(&rig) >= charged_before + 4).then_some(()),
    );
    until(
        Duration::from_secs(30),
        &log,
        "retries during the outage",
        || {
            let failures = receiver.got().iter().filter(|g| g.answered == 500).count();
            (failures >= failures_before + 3).then_some(())
        },
    );
    let pending = Store::open(&rig.db(), Access::ReadOnly)
        .unwrap()
        .outbox_backlog()
        .unwrap();
    assert!(pending.undelivered > 0, "{pending:?}");

    // 3. SIGKILL in the middle; the receiver recovers; the restarted daemon delivers the rest.
    child.kill().unwrap();
    child.wait().unwrap();
    let cursor_at_kill = events(&rig, None).last().unwrap()["cursor"]
        .as_i64()
        .unwrap();
    receiver.set(OK);
    let resumed_at = advanced(start, speed, started);
    let end = resumed_at + chrono::Duration::days(10);
    // A script following the outbox from the kill on.
    let mut follower = rig
        .command()
        .args([
            "events",
            "--json",
            "--follow",
            "--since",
            &cursor_at_kill.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = spawn(&rig, resumed_at, speed, Some(end));
    let status = wait(&mut child, Duration::from_secs(90), &log);
    assert_eq!(status.code(), Some(0), "{}", rig.log_text());
    std::thread::sleep(Duration::from_secs(1));
    follower.kill().unwrap();
    let mut followed = String::new();
    follower
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut followed)
        .unwrap();
    follower.wait().unwrap();
    assert!(
        receiver.delivered_ids().len() > delivered_before,
        "nothing delivered after the restart"
    );

    // Every event of the outbox was delivered (the outbox agrees), at least once, each with a
    // verified signature and its id as the idempotency key, and in order per subscription.
    let all = events(&rig, None);
    let ids: BTreeSet<String> = all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(receiver.delivered_ids(), ids, "lost or unknown events");
    let backlog = Store::open(&rig.db(), Access::ReadOnly)
        .unwrap()
        .outbox_backlog()
        .unwrap();
    assert_eq!((backlog.undelivered, backlog.dead), (0, 0), "{backlog:?}");
    let got = receiver.got();
    assert!(got.iter().all(|g| g.verified), "a signature failed");
    let mut last_cursor: BTreeMap<String, i64> = BTreeMap::new();
    for g in got.iter().filter(|g| g.answered == 200) {
        assert_eq!(g.event["id"], g.idempotency_key.as_str());
        let subscription = g.event["subscription"].as_str().unwrap().to_string();
        let cursor = g.event["cursor"].as_i64().unwrap();
        let last = last_cursor.entry(subscription.clone()).or_insert(cursor);
        assert!(
            cursor >= *last,
            "{subscription}: event {cursor} delivered after {last}"
        );
        *last = cursor;
        // What was delivered is the event as `events` shows it.
        let listed = all.iter().find(|e| e["cursor"] == cursor).unwrap();
        assert_eq!(&g.event, listed);
    }
    // The kinds a merchant needs, with amounts as strings.
    let kinds: BTreeSet<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in [
        "subscription_added",
        "charge_approved",
        "charge_declined",
        "period_failed",
    ] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
    assert!(!kinds.contains("charge_intent"), "internal events stay out");
    let approved = all.iter().find(|e| e["type"] == "charge_approved").unwrap();
    assert_eq!(approved["data"]["amount"], "99.00");
    assert!(approved["id"].as_str().unwrap().starts_with("evt_"));
    let created = approved["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");

    // `events --since` resumes exactly after its cursor; `--follow` printed the same.
    let rest = events(&rig, Some(cursor_at_kill));
    let expected: Vec<_> = all
        .iter()
        .filter(|e| e["cursor"].as_i64().unwrap() > cursor_at_kill)
        .cloned()
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(rest, expected);
    let followed: Vec<serde_json::Value> = followed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(followed, expected);
    // The table ends with the cursor to resume from.
    let out = rig.run(&["events", "--since", &cursor_at_kill.to_string()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let last = expected.last().unwrap()["cursor"].as_i64().unwrap();
    assert!(
        text.contains(&format!("recurrentd events --since {last}")),
        "{text}"
    );
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_never_holds_charging_and_its_events_are_dead_lettered_then_redelivered() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let receiver = Receiver::start();
    // The endpoint hangs past the timeout (1 s) and then fails; one virtual day until dead.
    receiver.set(HANG);
    let rig = rig(
        &sandbox,
        &receiver,
        "timeout_secs = 1\ndead_letter_after_days = 1\n",
    );
    let log = rig.log();
    let speed = 2 * 86_400;
    let mut child = spawn(&rig, "2027-01-03T00:00:00Z".parse().unwrap(), speed, None);

    // Charging goes on at its pace while every delivery hangs: the first week's charges are
    // made within about four real seconds of their virtual due time.
    until(
        Duration::from_secs(30),
        &log,
        "charges while the webhook hangs",
        || (approved_charges(&rig) >= 3).then_some(()),
    );
    assert!(receiver.delivered_ids().is_empty());
    // On time: each first charge left within a virtual day (half a real second) of its due
    // instant (2027-01-04 10:00 Moscow), although every delivery attempt hangs for a second.
    let due: DateTime<Utc> = "2027-01-04T07:00:00Z".parse().unwrap();
    for entry in rig
        .history(None)
        .iter()
        .filter(|e| e["state"] == "approved")
    {
        let sent: DateTime<Utc> = entry["sent_at"].as_str().unwrap().parse().unwrap();
        if entry["period"] == "2027-01-04" {
            assert!(
                sent >= due && sent - due < chrono::Duration::days(1),
                "charged late while the webhook hung: {entry}"
            );
        }
    }

    // Dead letters: `status` shows them and exits 1.
    let status = until(Duration::from_secs(60), &log, "dead letters", || {
        let out = rig.run(&["status", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (report["webhook"]["dead"].as_u64()? >= 1).then_some((out.status.code(), report))
    });
    assert_eq!(status.0, Some(1), "{}", status.1);
    assert!(status.1["webhook"]["undelivered"].is_u64());
    let out = rig.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DEAD"), "{text}");
    let table = String::from_utf8(rig.run(&["events"]).stdout).unwrap();
    assert!(table.contains(" dead "), "{table}");

    // The endpoint is fixed; the operator re-queues the dead letters; all arrive.
    receiver.set(OK);
    let out = rig.run(&["events", "--redeliver-dead"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: BTreeSet<String> = events(&rig, None)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    until(
        Duration::from_secs(60),
        &log,
        "every listed event delivered",
        || receiver.delivered_ids().is_superset(&listed).then_some(()),
    );
    assert!(receiver.got().iter().all(|g| g.verified));
    let out = rig.run(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["webhook"]["dead"], 0, "{report}");
    common::signal(&child, "TERM");
    let status = wait(&mut child, Duration::from_secs(60), &log);
    assert_eq!(status.code(), Some(0), "{}", rig.log_text());
    sandbox.shutdown().await;
}
