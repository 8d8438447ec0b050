//! Several instances on one PostgreSQL database, against one sandbox: a year of monthly billing
//! for 200 subscriptions while instances are killed mid-tick (their runtime dropped, every task
//! of theirs gone at its next await, as a SIGKILL leaves it) and paused past their lease (every
//! thread of the instance frozen inside a clock read, as a SIGSTOP freezes it; it then wakes up
//! and goes on with what it held). Afterwards:
//!
//! - the sandbox's book holds at most one approval per (subscription, period);
//! - the ledger agrees with the book both ways (approved there ⇔ approved here);
//! - every period of every ordinary subscription is paid;
//! - a dead instance's attempts are taken over by the others once its lease expires.
//!
//! Needs a PostgreSQL server: `RECURRENTD_TEST_PG_URL` (see `.ci/pg-cluster`); skipped without
//! one, except in CI (`CI` set), where its absence fails the test.

#![cfg(feature = "postgres")]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use recurrentd::billing::{Cadence, Calendar, Limits, SubscriptionState, Terms, Unit};
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{DuplicatePolicy, Sandbox, SandboxConfig};
use recurrentd::money::{Currency, Money};
use recurrentd::store::postgres::PgStore;
use recurrentd::store::{AttemptState, ChargeState, StoredSubscription};
use secrecy::SecretString;

const PASSWORD: &str = "scale-out-password";
const SALT: &str = "scale-out-salt";
/// Each instance's lease on what it works on (real time, the database's clock).
const LEASE: StdDuration = StdDuration::from_secs(2);
const ORDINARY: usize = 180;
const CHAOTIC: usize = 20;

/// The test server's URL, or `None` (skipped) outside CI.
fn server() -> Option<String> {
    match std::env::var("RECURRENTD_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| !v.is_empty()) => {
            panic!("CI is set but RECURRENTD_TEST_PG_URL is not: the PostgreSQL tests must run")
        }
        _ => {
            eprintln!("skipped: RECURRENTD_TEST_PG_URL is not set");
            None
        }
    }
}

/// A schema of its own for one test, dropped at the end.
struct Schema {
    admin: postgres::Client,
    name: String,
    url: String,
}

impl Schema {
    fn new(server: &str, tag: &str) -> Schema {
        let mut admin = postgres::Client::connect(server, postgres::NoTls).unwrap();
        let name = format!(
            "t_{tag}_{}_{}",
            std::process::id(),
            Utc::now().timestamp_micros()
        );
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .unwrap();
        let separator = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{separator}options=-csearch_path%3D{name}");
        Schema { admin, name, url }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
    }
}

/// A clock every instance reads, which one instance at a time can be frozen in: a thread that
/// reads it while its instance is paused blocks until the pause ends.
#[derive(Clone)]
struct FreezableClock {
    time: ManualClock,
    paused: Arc<(Mutex<bool>, Condvar)>,
}

impl FreezableClock {
    fn for_instance(time: &ManualClock) -> FreezableClock {
        FreezableClock {
            time: time.clone(),
            paused: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    fn pause(&self, paused: bool) {
        let (lock, wake) = &*self.paused;
        *lock.lock().unwrap() = paused;
        wake.notify_all();
    }
}

impl Clock for FreezableClock {
    fn now(&self) -> DateTime<Utc> {
        let (lock, wake) = &*self.paused;
        let mut paused = lock.lock().unwrap();
        while *paused {
            paused = wake.wait(paused).unwrap();
        }
        self.time.now()
    }
}

enum Command {
    Tick(std::sync::mpsc::Sender<()>),
}

/// One instance: an engine on its own thread and runtime, with its own connection.
struct Instance {
    name: String,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    kill: Arc<tokio::sync::Notify>,
    clock: FreezableClock,
    thread: Option<JoinHandle<()>>,
    /// The reply of a tick in progress.
    ticking: Option<std::sync::mpsc::Receiver<()>>,
}

struct World {
    sandbox: Sandbox,
    time: ManualClock,
    calendar: Calendar,
    url: String,
    /// Serves the sandbox for as long as the world lives.
    _runtime: tokio::runtime::Runtime,
}

impl World {
    fn client(&self) -> Client {
        Client::new(Settings {
            url: self.sandbox.url(),
            merchant_id: "123456".into(),
            login: "sandbox".into(),
            password: SecretString::from(PASSWORD),
            salt: SecretString::from(SALT),
            test_mode: true,
            format: ResponseFormat::Json,
            connect_timeout: StdDuration::from_secs(2),
            timeout: StdDuration::from_secs(1),
        })
        .unwrap()
    }

    fn start(&self, name: &str) -> Instance {
        let clock = FreezableClock::for_instance(&self.time);
        let (commands, mut inbox) = tokio::sync::mpsc::unbounded_channel::<Command>();
        let kill = Arc::new(tokio::sync::Notify::new());
        let (url, calendar, client) = (self.url.clone(), self.calendar, self.client());
        let (engine_clock, killed, instance) = (clock.clone(), Arc::clone(&kill), name.to_string());
        let (started, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut store = PgStore::connect(&url, &instance, LEASE).unwrap();
            let prefix = store.order_prefix().unwrap();
            let engine = Engine::with_backend(
                store,
                prefix,
                client,
                Arc::new(engine_clock) as Arc<dyn Clock>,
                calendar,
                Policy::from(&EngineConfig {
                    breaker_failures: 1000,
                    ..EngineConfig::default()
                }),
                Pacer::new(8, 1000),
            );
            runtime.block_on(async {
                tokio::select! {
                    _ = killed.notified() => return,
                    _ = engine.reconcile() => {}
                }
                started.send(()).unwrap();
                loop {
                    let done = tokio::select! {
                        _ = killed.notified() => return,
                        command = inbox.recv() => match command {
                            Some(Command::Tick(done)) => done,
                            None => return,
                        },
                    };
                    tokio::select! {
                        _ = killed.notified() => return,
                        result = engine.tick() => {
                            result.unwrap();
                            let _ = done.send(());
                        }
                    }
                }
            });
            // Dropping the runtime drops every task of this instance where it stands.
        });
        ready
            .recv_timeout(StdDuration::from_secs(120))
            .expect("an instance started");
        Instance {
            name: name.to_string(),
            commands,
            kill,
            clock,
            thread: Some(thread),
            ticking: None,
        }
    }
}

impl Instance {
    fn tick(&mut self) {
        if self.ticking.is_none() {
            let (done, wait) = std::sync::mpsc::channel();
            self.commands.send(Command::Tick(done)).unwrap();
            self.ticking = Some(wait);
        }
    }

    /// Waits for the tick in progress, if any.
    fn settle(&mut self) {
        if let Some(wait) = self.ticking.take() {
            wait.recv_timeout(StdDuration::from_secs(300))
                .unwrap_or_else(|_| panic!("{}: a tick did not finish", self.name));
        }
    }

    fn kill(mut self) {
        self.kill.notify_one();
        self.clock.pause(false);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn subscription(id: &str, bill: &str, amount: &str, start: NaiveDate) -> StoredSubscription {
    let at: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
    StoredSubscription {
        id: id.to_string(),
        file: "subs.toml".into(),
        line: 1,
        customer: None,
        bill_number: bill.to_string(),
        currency: Currency::parse("RUB").unwrap(),
        terms: Terms {
            amount: Money::parse(amount).unwrap(),
            every: Cadence::new(1, Unit::Month).unwrap(),
            start,
            state: SubscriptionState::Active,
            catch_up: None,
            limits: Limits {
                min_amount: Some(Money::parse("50.00").unwrap()),
                max_amount: Some(Money::parse("150.00").unwrap()),
                period_days: Some(28),
                max_date: NaiveDate::from_ymd_opt(2027, 12, 31),
            },
        },
        created_at: at,
        updated_at: at,
        removed_at: None,
    }
}

/// The subscription and period an OrderNumber names (`PREFIX-SUB-PERIOD-ATTEMPT`).
fn parse_order(order: &str) -> (String, u32) {
    let mut parts = order.rsplitn(3, '-');
    let _attempt = parts.next().unwrap();
    let period: u32 = parts.next().unwrap().parse().unwrap();
    let rest = parts.next().unwrap();
    let sub = rest.split_once('-').unwrap().1.to_string();
    (sub, period)
}

/// A small deterministic generator: the same chaos on every run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

/// The two tests of this file each load the machine fully: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn three_instances_bill_a_year_through_kills_and_pauses_without_a_double_charge() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(server) = server() else { return };
    let schema = Schema::new(&server, "scale");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = runtime.block_on(async {
        Sandbox::start(
            SandboxConfig {
                password: SecretString::from(PASSWORD),
                salt: SecretString::from(SALT),
                hang: StdDuration::from_millis(1500),
                // Every answer takes a while, so a kill lands while requests are on the wire.
                latency: StdDuration::from_millis(60),
                duplicates: DuplicatePolicy::Reject,
                ..SandboxConfig::builtin()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap()
    });
    let world = World {
        sandbox,
        time: ManualClock::new("2027-01-01T00:00:00Z".parse().unwrap()),
        calendar: Calendar::from(&BillingConfig {
            timezone: "Europe/Moscow".parse().unwrap(),
            charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace_hours: 24,
        }),
        url: schema.url.clone(),
        _runtime: runtime,
    };

    // The subscriptions, as the leader's schedule sync would write them.
    {
        let mut store = PgStore::connect(&world.url, "seed", LEASE).unwrap();
        let now = world.time.now();
        for i in 0..ORDINARY {
            let start = NaiveDate::from_ymd_opt(2027, 1, 1 + (i % 28) as u32).unwrap();
            let sub = subscription(&format!("o{i}"), &format!("5111111{i:09}"), "99.00", start);
            store.insert_subscription(&sub, now).unwrap();
        }
        for i in 0..CHAOTIC {
            let start = NaiveDate::from_ymd_opt(2027, 1, 1 + (i % 28) as u32).unwrap();
            let sub = subscription(&format!("c{i}"), &format!("999{i:09}999"), "120.00", start);
            store.insert_subscription(&sub, now).unwrap();
        }
    }

    let mut instances: Vec<Instance> = (0..3).map(|n| world.start(&format!("i{n}"))).collect();
    let mut dice = Dice(0x5eed_cafe_f00d_d00d);
    let until: DateTime<Utc> = "2028-01-10T00:00:00Z".parse().unwrap();
    let step = Duration::hours(12);
    let mut kills = 0;
    let mut pauses = 0;
    let mut takeovers = Vec::new();
    // Kills that left due work behind under a live lease, for the others to take over.
    let mut left_behind = 0;
    while world.time.now() < until {
        world.time.advance(step);
        for instance in &mut instances {
            instance.tick();
        }
        match dice.roll(100) {
            0 => {
                // SIGKILL one instance in the middle of its tick, then start it again (a new
                // epoch) once the others have taken over its work.
                let victim = dice.roll(3) as usize;
                std::thread::sleep(StdDuration::from_millis(dice.roll(60)));
                let dead = instances.remove(victim);
                let name = dead.name.clone();
                dead.kill();
                kills += 1;
                let since = Instant::now();
                if held_by(&world.url, &name, world.time.now()) > 0 {
                    left_behind += 1;
                }
                for instance in &mut instances {
                    instance.settle();
                }
                // The survivors tick (the clock standing still) until nothing is left held by
                // the dead instance.
                loop {
                    let held = held_by(&world.url, &name, world.time.now());
                    if held == 0 {
                        break;
                    }
                    assert!(
                        since.elapsed() < LEASE * 10,
                        "{held} attempt(s) of the dead {name} not taken over after {:?}",
                        since.elapsed()
                    );
                    std::thread::sleep(StdDuration::from_millis(200));
                    for instance in &mut instances {
                        instance.tick();
                        instance.settle();
                    }
                }
                takeovers.push(since.elapsed());
                instances.insert(victim, world.start(&name));
            }
            1 => {
                // SIGSTOP one instance for longer than its lease while the others go on, then
                // SIGCONT: it finishes what it was doing with its stale claims.
                let victim = dice.roll(3) as usize;
                std::thread::sleep(StdDuration::from_millis(dice.roll(200)));
                instances[victim].clock.pause(true);
                pauses += 1;
                let frozen_until = Instant::now() + LEASE * 2;
                while Instant::now() < frozen_until {
                    for (n, instance) in instances.iter_mut().enumerate() {
                        if n != victim {
                            instance.settle();
                            instance.tick();
                        }
                    }
                    std::thread::sleep(StdDuration::from_millis(100));
                }
                instances[victim].clock.pause(false);
            }
            _ => {}
        }
        for instance in &mut instances {
            instance.settle();
        }
    }

    // Quiesce: every instance ticks an hour apart until nothing is unresolved.
    let mut rounds = 0;
    while unresolved(&world.url) > 0 {
        rounds += 1;
        assert!(rounds < 500, "attempts still unresolved after quiescing");
        world.time.advance(Duration::hours(1));
        for instance in &mut instances {
            instance.tick();
        }
        for instance in &mut instances {
            instance.settle();
        }
    }
    eprintln!(
        "{kills} kill(s) ({left_behind} leaving work behind), {pauses} pause(s); taken over \
         after {takeovers:?}"
    );
    assert!(
        kills >= 3 && pauses >= 3,
        "the chaos ran: {kills} kills, {pauses} pauses"
    );
    assert!(
        left_behind >= 1,
        "no kill left work for the others to take over"
    );

    // The invariants, from the sandbox's book and the database.
    let book = world.sandbox.book();
    let mut store = PgStore::connect(&world.url, "check", LEASE).unwrap();
    let attempts = store.attempts().unwrap();
    let by_order: HashMap<&str, _> = attempts
        .iter()
        .map(|a| (a.order_number.as_str(), a))
        .collect();
    let mut approved_per_period: HashMap<(String, u32), u32> = HashMap::new();
    let mut book_approved = HashSet::new();
    for order in &book.orders {
        if order.state.as_str() == "Approved" {
            *approved_per_period
                .entry(parse_order(&order.order_number))
                .or_default() += 1;
            book_approved.insert(order.order_number.clone());
        }
    }
    for (period, count) in &approved_per_period {
        assert_eq!(*count, 1, "charged {count} times for {period:?}");
    }
    for order in &book_approved {
        let attempt = by_order
            .get(order.as_str())
            .unwrap_or_else(|| panic!("the gateway holds {order}, unknown to the ledger"));
        assert!(
            matches!(
                attempt.state,
                AttemptState::Approved | AttemptState::Quarantined
            ),
            "{order} is approved at the gateway but {} in the ledger",
            attempt.state
        );
    }
    for attempt in &attempts {
        assert!(
            !attempt.state.unresolved(),
            "{} unresolved",
            attempt.order_number
        );
        if attempt.state == AttemptState::Approved {
            assert!(
                book_approved.contains(&attempt.order_number),
                "{} is paid in the ledger but not at the gateway",
                attempt.order_number
            );
        }
    }
    // Every period of every ordinary subscription is paid, once: January to December 2027.
    let periods = store.periods(None).unwrap();
    for i in 0..ORDINARY {
        let id = format!("o{i}");
        let paid: Vec<u32> = periods
            .iter()
            .filter(|p| p.subscription_id == id && p.state == ChargeState::Paid)
            .map(|p| p.period)
            .collect();
        assert_eq!(paid, (0..12).collect::<Vec<_>>(), "{id}: paid periods");
    }
    for instance in instances {
        instance.kill();
    }
}

/// Unresolved attempts, whoever holds them.
fn unresolved(url: &str) -> i64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query_one(
            "SELECT count(*) FROM attempts WHERE state IN \
             ('pending', 'not_sent', 'unknown', 'parked')",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Unresolved attempts due for work at `now` (engine clock) still held by `owner`.
fn held_by(url: &str, owner: &str, now: DateTime<Utc>) -> i64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query_one(
            "SELECT count(*) FROM attempts WHERE owner = $1 AND state IN \
             ('pending', 'not_sent', 'unknown', 'parked') \
             AND (next_check_at IS NULL OR next_check_at <= $2)",
            &[&owner, &now],
        )
        .unwrap()
        .get(0)
}

mod common;

/// The real binary: three daemons (`recurrentd run` with `database.url`, instances `d1`, `d2`,
/// `d3`) billing 60 subscriptions on one database and one sandbox, on a rehearsal clock (a virtual day per real second). `d1`
/// is SIGKILLed and started again (a new epoch, its clock continuing the same timeline); `d2`
/// is SIGSTOPped for longer than its lease, then continued. The book holds one approval per
/// period, every approval there is one here (or still being looked up), nothing is paid here
/// that the gateway does not hold, every period due is charged, and `status` lists both
/// instances.
#[test]
fn three_daemons_share_one_database_through_a_sigkill_and_a_sigstop() {
    use common::{Rig, signal, wait};
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(server) = server() else { return };
    let schema = Schema::new(&server, "daemons");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sandbox = runtime.block_on(async {
        Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    });
    let rig = Rig::new(&sandbox, "");
    let mut config = std::fs::read_to_string(rig.config()).unwrap();
    config += &format!(
        "\n[database]\nurl = \"{}\"\nlease_secs = 5\n\n[books]\nenabled = false\n",
        schema.url
    );
    std::fs::write(rig.config(), config).unwrap();
    let mut schedules = String::new();
    for i in 0..60 {
        schedules += &common::subscription(
            &format!("s{i}"),
            &format!("51111130000{i:05}"),
            "99.00",
            &format!("2027-01-{:02}", 2 + i % 20),
        );
    }
    rig.write_schedule("subs.toml", &schedules);

    let start: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
    let speed = 86_400;
    let t0 = Instant::now();
    let logs = |name: &str, n: u32| rig.dir.path().join(format!("{name}-{n}.log"));
    // Each daemon's clock continues the one timeline, whenever it starts.
    let spawn = |name: &str, n: u32| {
        let now = start + Duration::milliseconds(t0.elapsed().as_millis() as i64 * speed);
        rig.command()
            .args(["run", "--clock-start", &now.to_rfc3339()])
            .args(["--clock-speed", &speed.to_string()])
            .env("RECURRENTD_DATABASE__INSTANCE", name)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(logs(name, n)).unwrap())
            .spawn()
            .unwrap()
    };
    let mut d1 = spawn("d1", 1);
    let mut d2 = spawn("d2", 1);
    let mut d3 = spawn("d3", 1);
    std::thread::sleep(StdDuration::from_secs(8));
    // SIGKILL d1, and start it again a few (virtual) days later.
    signal(&d1, "KILL");
    let _ = d1.wait();
    std::thread::sleep(StdDuration::from_secs(4));
    let mut d1 = spawn("d1", 2);
    std::thread::sleep(StdDuration::from_secs(6));
    // SIGSTOP d2 for longer than its lease, while d1 goes on; then let it continue.
    signal(&d2, "STOP");
    std::thread::sleep(StdDuration::from_secs(8));
    signal(&d2, "CONT");
    std::thread::sleep(StdDuration::from_secs(14));

    let status = rig.run(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|_| panic!("status --json: {}", String::from_utf8_lossy(&status.stderr)));
    let instances = report["instances"].as_array().unwrap();
    let names: Vec<_> = instances
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d1", "d2", "d3"], "{report}");
    assert_eq!(instances[0]["epoch"], 2, "d1 was started twice: {report}");
    assert!(instances.iter().all(|i| i["alive"] == true), "{report}");

    signal(&d1, "TERM");
    signal(&d2, "TERM");
    signal(&d3, "TERM");
    for (child, log) in [
        (&mut d1, logs("d1", 2)),
        (&mut d2, logs("d2", 1)),
        (&mut d3, logs("d3", 1)),
    ] {
        let exit = wait(child, StdDuration::from_secs(60), &log);
        assert!(
            exit.success(),
            "{exit}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let end = start + Duration::milliseconds(t0.elapsed().as_millis() as i64 * speed);

    // The daemons' logs, for a failure's message.
    let tails = || {
        let mut text = String::new();
        for (name, n) in [("d1", 1), ("d1", 2), ("d2", 1), ("d3", 1)] {
            let log = std::fs::read_to_string(logs(name, n)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text += &format!("--- {name} ({n}), last lines:\n");
            for line in &lines[lines.len().saturating_sub(25)..] {
                text += line;
                text.push('\n');
            }
        }
        text
    };
    // The book against the database.
    let book = sandbox.book();
    let mut store = PgStore::connect(&schema.url, "check", LEASE).unwrap();
    let attempts = store.attempts().unwrap();
    let by_order: HashMap<&str, _> = attempts
        .iter()
        .map(|a| (a.order_number.as_str(), a))
        .collect();
    let mut approved_per_period: HashMap<(String, u32), u32> = HashMap::new();
    for order in book
        .orders
        .iter()
        .filter(|o| o.state.as_str() == "Approved")
    {
        *approved_per_period
            .entry(parse_order(&order.order_number))
            .or_default() += 1;
        let attempt = by_order
            .get(order.order_number.as_str())
            .unwrap_or_else(|| panic!("the gateway holds {}, unknown here", order.order_number));
        assert!(
            attempt.state == AttemptState::Approved || attempt.state.unresolved(),
            "{} approved at the gateway, {} here",
            order.order_number,
            attempt.state
        );
    }
    for (period, count) in &approved_per_period {
        assert_eq!(*count, 1, "charged {count} times for {period:?}");
    }
    for attempt in attempts
        .iter()
        .filter(|a| a.state == AttemptState::Approved)
    {
        assert!(
            book.orders
                .iter()
                .any(|o| o.order_number == attempt.order_number && o.state.as_str() == "Approved"),
            "{} is paid here but not at the gateway",
            attempt.order_number
        );
    }
    // Every period due more than eight days before the end was charged (a lease and a lookup
    // are five days here; the rest is slack for a loaded machine, where a second of delay is a
    // virtual day).
    let calendar = Calendar::from(&BillingConfig {
        timezone: "Europe/Moscow".parse().unwrap(),
        charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
        catch_up: CatchUp::Latest,
        grace_hours: 24,
    });
    let mut due = 0;
    for i in 0..60u32 {
        let first = NaiveDate::from_ymd_opt(2027, 1, 2 + i % 20).unwrap();
        for period in 0..3u32 {
            let date = first
                .checked_add_months(chrono::Months::new(period))
                .unwrap();
            if calendar.due_instant(date) + Duration::days(8) > end {
                continue;
            }
            due += 1;
            assert_eq!(
                approved_per_period.get(&(format!("s{i}"), period)),
                Some(&1),
                "s{i} period {period} (due {date}) was not charged by {end}\n{}",
                tails()
            );
        }
    }
    assert!(
        due >= 60,
        "only {due} periods fell due: the run was too short"
    );
}
