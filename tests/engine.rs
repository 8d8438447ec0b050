//! The charge engine end to end against the in-process sandbox, with a controllable clock: a
//! year of monthly billing for many subscriptions with random declines, timeouts, lost
//! connections, pending orders, garbage, wrong checkvalues and restarts. After quiescing, the
//! invariants that make the product trustworthy must hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use recurrentd::billing::Calendar;
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, Pacer, Policy};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::{DuplicatePolicy, Sandbox, SandboxConfig};
use recurrentd::money::Money;
use recurrentd::schedule;
use recurrentd::store::{Access, AttemptState, ChargeState, Purpose, Store};
use secrecy::SecretString;

const PASSWORD: &str = "engine-test-password";
const SALT: &str = "engine-test-salt";

struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    clock: ManualClock,
    calendar: Calendar,
    policy: EngineConfig,
    format: ResponseFormat,
}

impl World {
    async fn new(
        subscriptions: &str,
        duplicates: DuplicatePolicy,
        format: ResponseFormat,
    ) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(dir.path().join("schedules/subs.toml"), subscriptions).unwrap();
        let sandbox = Sandbox::start(
            SandboxConfig {
                password: SecretString::from(PASSWORD),
                salt: SecretString::from(SALT),
                hang: StdDuration::from_millis(1500),
                duplicates,
                ..SandboxConfig::builtin()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let calendar = Calendar::from(&BillingConfig {
            timezone: "Europe/Moscow".parse().unwrap(),
            charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
            catch_up: CatchUp::Latest,
            grace_hours: 24,
        });
        World {
            dir,
            sandbox,
            clock: ManualClock::new("2027-01-01T00:00:00Z".parse().unwrap()),
            calendar,
            policy: EngineConfig {
                // Integrity failures are part of the scenario; the breaker has its own test.
                breaker_failures: 1000,
                ..EngineConfig::default()
            },
            format,
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("recurrentd.db")
    }

    /// Starts (or restarts) the daemon's engine: open the store, sync the files, reconcile.
    async fn start(&self) -> Engine {
        self.start_with(Arc::new(self.clock.clone()) as Arc<dyn Clock>)
            .await
    }

    /// [`World::start`] with another clock.
    async fn start_with(&self, clock: Arc<dyn Clock>) -> Engine {
        let mut store = Store::open_or_create(&self.db()).unwrap();
        let report = schedule::load_dir(&self.dir.path().join("schedules")).unwrap();
        assert_eq!(
            report.error_count(),
            0,
            "{:?}",
            report.diagnostics().collect::<Vec<_>>()
        );
        store.sync_schedules(&report, self.clock.now()).unwrap();
        let client = Client::new(Settings {
            url: self.sandbox.url(),
            merchant_id: "123456".into(),
            login: "sandbox".into(),
            password: SecretString::from(PASSWORD),
            salt: SecretString::from(SALT),
            test_mode: true,
            format: self.format,
            connect_timeout: StdDuration::from_secs(2),
            timeout: StdDuration::from_secs(1),
        })
        .unwrap();
        let engine = Engine::new(
            store,
            client,
            clock,
            self.calendar,
            Policy::from(&self.policy),
            Pacer::new(8, 1000),
        )
        .unwrap();
        engine.reconcile().await.unwrap();
        engine
    }
}

fn subscription(id: &str, bill: &str, amount: &str, start: &str) -> String {
    format!(
        "[[subscription]]\nid = \"{id}\"\nbill_number = \"{bill}\"\ncurrency = \"RUB\"\n\
         amount = \"{amount}\"\nevery = \"1 month\"\nstart = {start}\n\n\
         [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
         period_days = 28\nmax_date = 2027-12-31\n\n"
    )
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

/// Runs the clock forward in `step`s until `until`, ticking at each, restarting the engine
/// every `restart_every` ticks.
async fn run(
    world: &World,
    mut engine: Engine,
    until: DateTime<Utc>,
    step: Duration,
    restart_every: usize,
) -> Engine {
    let mut ticks = 0;
    while world.clock.now() < until {
        world.clock.advance(step);
        engine.tick().await.unwrap();
        ticks += 1;
        if restart_every > 0 && ticks % restart_every == 0 {
            drop(engine);
            engine = world.start().await;
        }
    }
    engine
}

/// Ticks (an hour apart) until no attempt is unresolved.
async fn quiesce(world: &World, engine: &Engine) {
    for _ in 0..500 {
        let unresolved = engine
            .with_store(|s| s.unresolved_attempts())
            .await
            .unwrap();
        if unresolved.is_empty() {
            return;
        }
        world.clock.advance(Duration::hours(1));
        engine.tick().await.unwrap();
    }
    panic!("attempts still unresolved after quiescing");
}

/// The invariants: at most one approved charge per (subscription, period) at the gateway;
/// every approved charge at the gateway is paid (or quarantined for an operator) in the ledger
/// and nothing is paid in the ledger that the gateway does not hold; every request the gateway
/// received satisfied the limits when it was made.
async fn check_invariants(world: &World, engine: &Engine) -> Summary {
    let book = world.sandbox.book();
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
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
        if attempt.state == AttemptState::Approved {
            assert!(
                book_approved.contains(&attempt.order_number),
                "{} is paid in the ledger but not at the gateway",
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

    // Limits, checked independently of the engine: amounts within [min, max], dates within
    // max_date, and approved charges at least period_days local days apart.
    let min = Money::parse("50.00").unwrap();
    let max = Money::parse("150.00").unwrap();
    let max_date = NaiveDate::from_ymd_opt(2027, 12, 31).unwrap();
    for request in &book.rp_requests {
        let attempt = by_order
            .get(request.order_number.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "the gateway got {}, unknown to the ledger",
                    request.order_number
                )
            });
        // What the gateway received, not what the ledger says it sent.
        let amount = Money::parse(&request.amount).expect("a well-formed amount on the wire");
        assert!(
            amount >= min && amount <= max,
            "{} sent {amount}",
            request.order_number
        );
        assert_eq!(amount, attempt.amount);
        assert_eq!(request.currency, "RUB");
        assert!(world.calendar.local_date(attempt.created_at) <= max_date);
        assert!(
            attempt
                .sent_at
                .is_some_and(|t| world.calendar.local_date(t) <= max_date)
        );
    }
    let mut charged: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for attempt in &attempts {
        if book_approved.contains(&attempt.order_number) {
            // When the money moved: the latest send (a resend may come days after the intent).
            charged
                .entry(attempt.subscription_id.as_str())
                .or_default()
                .push(attempt.sent_at.unwrap_or(attempt.created_at));
        }
    }
    for (sub, mut instants) in charged {
        instants.sort();
        for pair in instants.windows(2) {
            let gap = world.calendar.local_date(pair[1]) - world.calendar.local_date(pair[0]);
            assert!(
                gap.num_days() >= 28,
                "{sub}: charges {} and {} are too close",
                pair[0],
                pair[1]
            );
        }
    }

    let periods = engine.with_store(|s| s.periods(None)).await.unwrap();
    let mut summary = Summary::default();
    for row in periods {
        match row.state {
            ChargeState::Paid => summary.paid += 1,
            ChargeState::Failed => summary.failed += 1,
            ChargeState::Quarantined => summary.quarantined += 1,
            ChargeState::Blocked | ChargeState::Skipped => summary.settled += 1,
            ChargeState::Open => summary.open += 1,
        }
    }
    summary.requests = book.rp_requests.len();
    summary
}

#[derive(Debug, Default)]
struct Summary {
    paid: u32,
    failed: u32,
    quarantined: u32,
    settled: u32,
    open: u32,
    requests: usize,
}

fn scenario() -> String {
    let mut text = String::new();
    // Plain approvals, one per start day.
    for i in 0..4 {
        text += &subscription(
            &format!("plain-{i}"),
            &format!("51111110000{i:04}"),
            "99.00",
            &format!("2027-01-{:02}", 1 + i * 7),
        );
    }
    // A gateway mix per OrderNumber: declines, timeouts, lost connections, pending, garbage,
    // wrong checkvalues, 5xx.
    for i in 0..16 {
        text += &subscription(
            &format!("chaos-{i}"),
            &format!("999{i:09}999"),
            "120.00",
            &format!("2027-01-{:02}", 1 + (i % 28)),
        );
    }
    // Always soft-declined (dunning, then the period fails), and a hard decline (stops and flags).
    text += &subscription("soft", "999000000001102", "60.00", "2027-01-10");
    text += &subscription("hard", "999000000001104", "60.00", "2027-01-10");
    // In Process that settles later.
    text += &subscription("slow", "999000000001300", "75.00", "2027-01-15");
    text
}

async fn year_of_billing(duplicates: DuplicatePolicy, format: ResponseFormat) {
    let world = World::new(&scenario(), duplicates, format).await;
    let engine = world.start().await;
    let until = "2028-01-15T00:00:00Z".parse().unwrap();
    let engine = run(&world, engine, until, Duration::hours(6), 97).await;
    quiesce(&world, &engine).await;
    let summary = check_invariants(&world, &engine).await;
    eprintln!("{duplicates:?}/{format:?}: {summary:?}");
    // The scenario really exercised the paths.
    assert!(summary.paid >= 100, "{summary:?}");
    assert!(summary.failed >= 10, "{summary:?}");
    assert!(summary.requests > summary.paid as usize, "{summary:?}");
    let attention = engine.with_store(|s| s.attention("hard")).await.unwrap();
    assert!(attention.is_some_and(|a| a.contains("AS104")));
    let soft = engine
        .with_store(|s| s.periods(Some("soft")))
        .await
        .unwrap();
    assert!(
        soft.iter().all(|p| p.state == ChargeState::Failed),
        "{soft:?}"
    );
    // Dunning: each soft-declined period was tried more than once, within the period.
    let soft_requests = world
        .sandbox
        .book()
        .rp_requests
        .iter()
        .filter(|r| r.order_number.contains("-soft-"))
        .count();
    assert!(
        soft_requests >= 2 * soft.len(),
        "{soft_requests} for {} periods",
        soft.len()
    );
    let slow = engine
        .with_store(|s| s.periods(Some("slow")))
        .await
        .unwrap();
    assert!(
        slow.iter().filter(|p| p.state == ChargeState::Paid).count() >= 11,
        "{slow:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_billing_keeps_the_invariants_xml_reused_numbers_refused() {
    year_of_billing(DuplicatePolicy::Reject, ResponseFormat::Xml).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_billing_keeps_the_invariants_json_reused_numbers_accepted() {
    year_of_billing(DuplicatePolicy::Accept, ResponseFormat::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_failures_open_the_circuit_breaker() {
    let mut text = String::new();
    for i in 0..3 {
        text += &subscription(
            &format!("forged-{i}"),
            &format!("999{i:09}777"),
            "100.00",
            "2027-01-05",
        );
    }
    text += &subscription("innocent", "511111100000777", "100.00", "2027-02-05");
    let mut world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    world.policy.breaker_failures = 3;
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2027-01-06T00:00:00Z".parse().unwrap(),
        Duration::hours(6),
        0,
    )
    .await;
    let breaker = engine.with_store(|s| s.breaker()).await.unwrap();
    assert!(
        breaker.is_some(),
        "three quarantines should open the breaker"
    );
    // No new charge while it is open, even when due.
    let engine = run(
        &world,
        engine,
        "2027-02-10T00:00:00Z".parse().unwrap(),
        Duration::hours(6),
        0,
    )
    .await;
    let innocent = engine
        .with_store(|s| s.periods(Some("innocent")))
        .await
        .unwrap();
    assert!(innocent.is_empty(), "{innocent:?}");
    // An operator clears it; charging resumes.
    let now = world.clock.now();
    engine
        .with_store(move |s| s.clear_breaker("ops", "salt rotated", now))
        .await
        .unwrap();
    let engine = run(
        &world,
        engine,
        "2027-02-11T00:00:00Z".parse().unwrap(),
        Duration::hours(6),
        0,
    )
    .await;
    let innocent = engine
        .with_store(|s| s.periods(Some("innocent")))
        .await
        .unwrap();
    assert_eq!(innocent.len(), 1);
    assert_eq!(innocent[0].state, ChargeState::Paid);
    let forged = engine
        .with_store(|s| s.periods(Some("forged-0")))
        .await
        .unwrap();
    assert_eq!(forged[0].state, ChargeState::Quarantined);
    let ledger = engine
        .with_store(|s| s.ledger(Some("forged-0")))
        .await
        .unwrap();
    let raw = ledger
        .iter()
        .find(|e| e.kind == "charge_quarantined")
        .and_then(|e| e.detail["raw"].as_str().map(str::to_string))
        .expect("the raw reply is kept");
    assert!(!raw.contains(PASSWORD) && !raw.contains(SALT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_is_down_gets_the_same_order_number_again_and_nothing_is_charged_twice() {
    let text = subscription("down", "511111100000042", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    // Point the engine at a closed port first: every send is "not sent".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut store = Store::open_or_create(&world.db()).unwrap();
    let report = schedule::load_dir(&world.dir.path().join("schedules")).unwrap();
    store.sync_schedules(&report, world.clock.now()).unwrap();
    let client = Client::new(Settings {
        url: dead,
        merchant_id: "123456".into(),
        login: "sandbox".into(),
        password: SecretString::from(PASSWORD),
        salt: SecretString::from(SALT),
        test_mode: true,
        format: ResponseFormat::Xml,
        connect_timeout: StdDuration::from_secs(1),
        timeout: StdDuration::from_secs(1),
    })
    .unwrap();
    let engine = Engine::new(
        store,
        client,
        Arc::new(world.clock.clone()) as Arc<dyn Clock>,
        world.calendar,
        Policy::from(&world.policy),
        Pacer::new(4, 1000),
    )
    .unwrap();
    let engine = run(
        &world,
        engine,
        "2027-01-06T00:00:00Z".parse().unwrap(),
        Duration::hours(1),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::NotSent);
    let order = attempts[0].order_number.clone();
    drop(engine);
    // The gateway is back: the same OrderNumber is sent, once, and paid.
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2027-01-07T00:00:00Z".parse().unwrap(),
        Duration::hours(1),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].order_number, order);
    assert_eq!(attempts[0].state, AttemptState::Approved);
    assert_eq!(world.sandbox.book().rp_requests.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_gateway_never_filed_gets_a_new_attempt_only_after_the_settle_window() {
    // 503: the gateway applies nothing. The engine must ask, wait out the settle window, ask
    // again, and only then try a new OrderNumber.
    let text = subscription("lost", "999000000042503", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    // Due at 10:00 Moscow = 07:00 UTC; the settle window is 30 minutes.
    let engine = run(
        &world,
        engine,
        "2027-01-05T07:25:00Z".parse().unwrap(),
        Duration::minutes(5),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "no second attempt before the settle window"
    );
    assert_eq!(attempts[0].state, AttemptState::Unknown);
    assert!(
        attempts[0].checks >= 2,
        "it was looked up inside the window"
    );
    assert_eq!(
        attempts[0].not_found, 0,
        "not-found answers inside the window prove nothing"
    );
    let _engine = run(
        &world,
        engine,
        "2027-01-05T12:00:00Z".parse().unwrap(),
        Duration::minutes(10),
        0,
    )
    .await;
    let db = Store::open(&world.db(), Access::ReadOnly).unwrap();
    let attempts = db.attempts().unwrap();
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert_eq!(attempts[0].state, AttemptState::NotReceived);
    assert!(attempts[0].not_found >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adhoc_charge_is_checked_against_the_limits_made_once_and_counted_for_the_next() {
    use recurrentd::engine::{AdhocError, AdhocRequest, Queued, queue_adhoc};

    let text = subscription("topup", "4100000000000001", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    // Period 0, due 2027-01-05 10:00 Moscow.
    let engine = run(
        &world,
        engine,
        "2027-01-06T00:00:00Z".parse().unwrap(),
        Duration::hours(1),
        0,
    )
    .await;
    let policy = Policy::from(&world.policy);
    let request = |reference: &'static str, amount: &str| AdhocRequest {
        subscription: "topup",
        reference,
        amount: Money::parse(amount).unwrap(),
        reason: Some("balance top-up"),
        by: "tester",
    };
    let queue = |request: AdhocRequest<'static>, at: &str| {
        let calendar = world.calendar;
        let policy = policy.clone();
        let at: DateTime<Utc> = at.parse().unwrap();
        engine.with_store(move |s| Ok(queue_adhoc(s, &request, &calendar, &policy, at)))
    };

    // 15 days after the last charge: the agreement's 28-day gap forbids it, at once.
    let refused = queue(request("T-1", "120.00"), "2027-01-20T09:00:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(AdhocError::Refused(why)) if why.contains("28 days")),
        "{refused:?}"
    );
    // Above the agreed maximum, whenever.
    let refused = queue(request("T-2", "150.01"), "2027-02-03T09:00:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(AdhocError::Refused(why)) if why.contains("maximum")),
        "{refused:?}"
    );
    // Allowed: queued once; the same command again finds it; the reference cannot be reused
    // for another amount; a second ad-hoc charge right behind it would break the gap.
    let queued = queue(request("T-3", "120.00"), "2027-02-03T09:00:00Z")
        .await
        .unwrap();
    assert!(matches!(queued, Ok(Queued::New { .. })), "{queued:?}");
    let again = queue(request("T-3", "120.00"), "2027-02-03T09:01:00Z")
        .await
        .unwrap();
    assert!(matches!(again, Ok(Queued::Existing(_))), "{again:?}");
    let reused = queue(request("T-3", "99.00"), "2027-02-03T09:02:00Z")
        .await
        .unwrap();
    assert!(
        matches!(reused, Err(AdhocError::ReferenceReused { .. })),
        "{reused:?}"
    );
    let behind = queue(request("T-4", "60.00"), "2027-02-03T09:03:00Z")
        .await
        .unwrap();
    assert!(matches!(behind, Err(AdhocError::Refused(_))), "{behind:?}");

    // The daemon's sweep makes it: one request at the gateway, approved and verified.
    world.clock.set("2027-02-03T09:05:00Z".parse().unwrap());
    engine.tick().await.unwrap();
    quiesce(&world, &engine).await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    let adhoc: Vec<_> = attempts
        .iter()
        .filter(|a| a.purpose == Purpose::Adhoc("T-3".into()))
        .collect();
    assert_eq!(adhoc.len(), 1, "{attempts:?}");
    assert_eq!(adhoc[0].state, AttemptState::Approved);
    assert_eq!(adhoc[0].amount, Money::parse("120.00").unwrap());
    let book = world.sandbox.book();
    let at_gateway: Vec<_> = book
        .rp_requests
        .iter()
        .filter(|r| r.order_number == adhoc[0].order_number)
        .collect();
    assert_eq!(at_gateway.len(), 1, "sent once");
    let again = queue(request("T-3", "120.00"), "2027-02-03T12:00:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&again, Ok(Queued::Existing(found)) if found.state == ChargeState::Paid),
        "{again:?}"
    );

    // The next scheduled period (due 2027-02-05) counts the ad-hoc charge: nothing is charged
    // within 28 days of it.
    let engine = run(
        &world,
        engine,
        "2027-04-01T00:00:00Z".parse().unwrap(),
        Duration::hours(6),
        0,
    )
    .await;
    quiesce(&world, &engine).await;
    let history = engine
        .with_store(|s| s.history(Some("topup"), None))
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.period == "adhoc:T-3" && h.state == "approved" && h.period_index.is_none()),
        "{history:?}"
    );
    let mut sent: Vec<DateTime<Utc>> = engine
        .with_store(|s| s.attempts())
        .await
        .unwrap()
        .iter()
        .filter(|a| a.state == AttemptState::Approved)
        .map(|a| a.sent_at.unwrap())
        .collect();
    sent.sort();
    assert!(sent.len() >= 3, "{sent:?}");
    for pair in sent.windows(2) {
        let gap = world.calendar.local_date(pair[1]) - world.calendar.local_date(pair[0]);
        assert!(gap.num_days() >= 28, "charges {pair:?} only {gap} apart");
    }
}

/// Issue 12, item 10: a queued ad-hoc charge never waits for ever. One the engine comes to make
/// more than `engine.adhoc_max_age_hours` after it was requested (the daemon was down) is closed
/// as failed with an `adhoc_expired` ledger event and never sent; one within the age is made. An
/// operator may cancel a queued one (`adhoc_cancelled`, never sent), not one already made (sent
/// and still in process, or settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_adhoc_charge_expires_unsent_and_is_cancelled_only_before_it_is_sent() {
    use recurrentd::engine::{
        AdhocRequest, CancelError, CancelRequest, Queued, cancel_adhoc, queue_adhoc,
    };

    // Scheduled periods start in March: nothing but the ad-hoc charges is due in January.
    let text = subscription("topup", "4100000000000002", "100.00", "2027-03-01")
        + &subscription("slow", "999000000043300", "100.00", "2027-03-01");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    let policy = Policy::from(&world.policy);
    assert_eq!(policy.adhoc_max_age, Duration::hours(24));
    let queue = |subscription: &'static str, reference: &'static str, at: &str| {
        let calendar = world.calendar;
        let policy = policy.clone();
        let at: DateTime<Utc> = at.parse().unwrap();
        let request = AdhocRequest {
            subscription,
            reference,
            amount: Money::parse("120.00").unwrap(),
            reason: Some("top-up"),
            by: "tester",
        };
        engine.with_store(move |s| Ok(queue_adhoc(s, &request, &calendar, &policy, at)))
    };
    let cancel = |subscription: &'static str, reference: &'static str, at: &str| {
        let at: DateTime<Utc> = at.parse().unwrap();
        let request = CancelRequest {
            subscription,
            reference,
            reason: "asked by the customer",
            by: "tester",
        };
        engine.with_store(move |s| Ok(cancel_adhoc(s, &request, at)))
    };
    let sent = || world.sandbox.book().rp_requests.len();

    // Queued, then the daemon is down for 25 hours: the next sweep closes it, unsent.
    let queued = queue("topup", "T-old", "2027-01-10T09:00:00Z")
        .await
        .unwrap();
    assert!(matches!(queued, Ok(Queued::New { .. })), "{queued:?}");
    world.clock.set("2027-01-11T10:00:00Z".parse().unwrap());
    engine.tick().await.unwrap();
    assert_eq!(sent(), 0, "nothing reached the gateway");
    let found = queue("topup", "T-old", "2027-01-11T10:01:00Z")
        .await
        .unwrap();
    match &found {
        Ok(Queued::Existing(found)) => {
            assert_eq!(found.state, ChargeState::Failed);
            let reason = found.reason.as_deref().unwrap_or("");
            assert!(
                reason.contains("expired") && reason.contains("engine.adhoc_max_age_hours (24 h)"),
                "{reason}"
            );
            assert!(found.order_number.is_none(), "no attempt was made");
        }
        other => panic!("{other:?}"),
    }
    let ledger = engine
        .with_store(|s| s.ledger(Some("topup")))
        .await
        .unwrap();
    let expired: Vec<_> = ledger
        .iter()
        .filter(|e| e.kind == "adhoc_expired")
        .collect();
    assert_eq!(expired.len(), 1, "{ledger:?}");
    assert_eq!(expired[0].detail["reference"], "T-old");
    assert_eq!(expired[0].detail["max_age_hours"], 24);

    // Queued and cancelled before the daemon made it: never sent; a second cancel is refused.
    let queued = queue("topup", "T-cancel", "2027-01-11T11:00:00Z")
        .await
        .unwrap();
    assert!(matches!(queued, Ok(Queued::New { .. })), "{queued:?}");
    let cancelled = cancel("topup", "T-cancel", "2027-01-11T11:01:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&cancelled, Ok(found) if found.state == ChargeState::Blocked
            && found.reason.as_deref() == Some("cancelled by tester: asked by the customer")),
        "{cancelled:?}"
    );
    let again = cancel("topup", "T-cancel", "2027-01-11T11:02:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&again, Err(CancelError::Settled { .. })),
        "{again:?}"
    );
    let unknown = cancel("topup", "T-none", "2027-01-11T11:02:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&unknown, Err(CancelError::Unknown { .. })),
        "{unknown:?}"
    );
    world.clock.set("2027-01-11T11:05:00Z".parse().unwrap());
    engine.tick().await.unwrap();
    assert_eq!(sent(), 0, "nothing reached the gateway");
    let ledger = engine
        .with_store(|s| s.ledger(Some("topup")))
        .await
        .unwrap();
    let event = ledger
        .iter()
        .find(|e| e.kind == "adhoc_cancelled")
        .expect("an adhoc_cancelled event");
    assert_eq!(event.detail["reference"], "T-cancel");
    assert_eq!(event.detail["by"], "tester");
    assert_eq!(event.detail["reason"], "asked by the customer");

    // Within its age: made at the next sweep, approved; then it cannot be cancelled.
    let queued = queue("topup", "T-new", "2027-01-12T09:00:00Z")
        .await
        .unwrap();
    assert!(matches!(queued, Ok(Queued::New { .. })), "{queued:?}");
    world.clock.set("2027-01-12T09:05:00Z".parse().unwrap());
    engine.tick().await.unwrap();
    quiesce(&world, &engine).await;
    let found = queue("topup", "T-new", "2027-01-12T12:00:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&found, Ok(Queued::Existing(found)) if found.state == ChargeState::Paid),
        "{found:?}"
    );
    assert_eq!(sent(), 1);
    let settled = cancel("topup", "T-new", "2027-01-12T12:01:00Z")
        .await
        .unwrap();
    assert!(
        matches!(&settled, Err(CancelError::Settled { state, .. }) if state.starts_with("paid, order ")),
        "{settled:?}"
    );

    // Sent and still In Process at the gateway: refused, the attempt goes on.
    let queued = queue("slow", "S-1", "2027-01-12T12:00:00Z").await.unwrap();
    assert!(matches!(queued, Ok(Queued::New { .. })), "{queued:?}");
    world.clock.set("2027-01-12T12:05:00Z".parse().unwrap());
    engine.tick().await.unwrap();
    let refused = cancel("slow", "S-1", "2027-01-12T12:06:00Z").await.unwrap();
    match &refused {
        Err(CancelError::Sent { order_number, .. }) => {
            let message = refused.as_ref().unwrap_err().to_string();
            assert!(message.contains("was sent or is being sent"), "{message}");
            assert!(message.contains(order_number.as_str()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    quiesce(&world, &engine).await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    let slow: Vec<_> = attempts
        .iter()
        .filter(|a| a.purpose == Purpose::Adhoc("S-1".into()))
        .collect();
    assert_eq!(slow.len(), 1, "{attempts:?}");
    assert_eq!(slow[0].state, AttemptState::Approved);
}

/// A daily plan that started long ago: the first sweep skips the missed periods as one run
/// (one row, one ledger event) and charges today's period; later sweeps that day charge
/// nothing (a period cap once made the engine charge a non-latest period as the latest, again
/// at every sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_date_decades_ago_is_caught_up_exactly_in_one_run() {
    let text = "[[subscription]]\nid = \"old\"\nbill_number = \"5800000000000001\"\n\
                currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 day\"\nstart = 2000-01-01\n\n\
                [subscription.limits]\nmin_amount = \"50.00\"\nmax_amount = \"150.00\"\n\
                period_days = 1\nmax_date = 2030-12-31\n\n";
    let world = World::new(text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    world.clock.set("2028-01-01T08:00:00Z".parse().unwrap());
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2028-01-01T16:00:00Z".parse().unwrap(),
        Duration::minutes(30),
        4,
    )
    .await;
    quiesce(&world, &engine).await;
    let today = NaiveDate::from_ymd_opt(2028, 1, 1).unwrap();
    let start = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
    let expected = u32::try_from((today - start).num_days()).unwrap();
    let book = world.sandbox.book();
    let approved: Vec<_> = book
        .orders
        .iter()
        .filter(|o| o.state.as_str() == "Approved")
        .map(|o| parse_order(&o.order_number))
        .collect();
    assert_eq!(
        approved,
        [("old".to_string(), expected)],
        "today's period, once"
    );
    let ledger = engine.with_store(|s| s.ledger(Some("old"))).await.unwrap();
    let skipped: Vec<_> = ledger
        .iter()
        .filter(|e| e.kind == "period_skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "one event for the run: {skipped:?}");
    assert!(ledger.len() < 20, "{} ledger rows", ledger.len());
}

/// An order the gateway showed In Process (AS300) and then stops finding is never taken as
/// "not received": it is parked for an operator and its period is never sent again under a new
/// OrderNumber (two not-found answers used to reopen the period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_seen_in_process_then_not_found_is_parked_not_sent_again() {
    let text = subscription("seen", "999000000042300", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Accept, ResponseFormat::Xml).await;
    let engine = world.start().await;
    // Due at 07:00 UTC: the charge is sent, answered AS300, and looked up: In Process.
    let engine = run(
        &world,
        engine,
        "2027-01-05T07:05:00Z".parse().unwrap(),
        Duration::minutes(5),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].state.unresolved(), "{:?}", attempts[0].state);
    world.sandbox.hide_from_status(&attempts[0].order_number);
    // Well past the settle window, with restarts: every lookup now says "not found".
    let engine = run(
        &world,
        engine,
        "2027-01-06T07:00:00Z".parse().unwrap(),
        Duration::minutes(20),
        10,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1, "no new OrderNumber: {attempts:?}");
    assert_eq!(attempts[0].state, AttemptState::Parked);
    assert_eq!(world.sandbox.book().rp_requests.len(), 1, "sent once");
}

/// A charge reply that names another order proves nothing (rp.cfm has no checkvalue): the order
/// is looked up, and the verified status answer books it (it was quarantined at once, unpaid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_reply_failing_a_field_check_is_looked_up_not_quarantined() {
    let text = subscription("mism", "999000000042887", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2027-01-05T08:00:00Z".parse().unwrap(),
        Duration::minutes(10),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::Approved, "{attempts:?}");
}

/// A quarantined attempt (its status answers fail verification) holds its subscription: it is
/// looked up again, no later period is charged while it is unsettled, and an operator's
/// `resolve` (which accepts it) lets billing go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_attempt_is_looked_up_and_holds_its_subscription_until_resolved() {
    let text = subscription("quar", "999000000042777", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2027-01-05T08:00:00Z".parse().unwrap(),
        Duration::minutes(10),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::Quarantined);
    let checks = attempts[0].checks;
    // Past the next period's due date (Feb 5), with restarts.
    let engine = run(
        &world,
        engine,
        "2027-02-10T08:00:00Z".parse().unwrap(),
        Duration::hours(2),
        50,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1, "held: no new period while quarantined");
    assert_eq!(attempts[0].state, AttemptState::Quarantined);
    assert!(
        attempts[0].checks > checks + 3,
        "looked up again: {} checks",
        attempts[0].checks
    );
    assert_eq!(world.sandbox.book().rp_requests.len(), 1);
    let order = attempts[0].order_number.clone();
    let resolved = engine
        .with_store(move |s| {
            s.resolve_parked(
                &order,
                recurrentd::store::Resolution::Paid,
                "test",
                "portal: approved",
                "2027-02-10T08:00:00Z".parse().unwrap(),
            )
        })
        .await
        .unwrap();
    assert!(
        matches!(resolved, recurrentd::store::Resolved::Done(_)),
        "{resolved:?}"
    );
    let engine = run(
        &world,
        engine,
        "2027-02-10T12:00:00Z".parse().unwrap(),
        Duration::minutes(30),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts[0].state, AttemptState::Approved, "attested paid");
    assert_eq!(attempts.len(), 2, "billing goes on: {attempts:?}");
}

/// A second order under one OrderNumber at the gateway (it accepted a duplicate, still in
/// process when the first is approved) is booked once, and becomes a ledger event and a flag
/// that holds the subscription for an operator (it was only logged, and only once both were
/// approved). A late approval after the attempt was settled otherwise is flagged the
/// same way, and `status` names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_approval_at_the_gateway_is_a_ledger_event_and_a_flag() {
    let text = subscription("dup", "999000000042300", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Accept, ResponseFormat::Xml).await;
    let engine = world.start().await;
    // Up to the tick that sends period 0 (an In Process order, bill ending 300).
    let engine = run(
        &world,
        engine,
        "2027-01-05T07:00:00Z".parse().unwrap(),
        Duration::minutes(5),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_ne!(attempts[0].state, AttemptState::Approved, "not settled yet");
    let order = attempts[0].order_number.clone();
    // The same request again, straight to the gateway: a second order under the same number.
    let client = Client::new(Settings {
        url: world.sandbox.url(),
        merchant_id: "123456".into(),
        login: "sandbox".into(),
        password: SecretString::from(PASSWORD),
        salt: SecretString::from(SALT),
        test_mode: true,
        format: ResponseFormat::Xml,
        connect_timeout: StdDuration::from_secs(2),
        timeout: StdDuration::from_secs(1),
    })
    .unwrap();
    client
        .charge(&recurrentd::gateway::client::ChargeRequest {
            bill_number: "999000000042300",
            order_number: &order,
            amount: Money::parse("100.00").unwrap(),
            currency: recurrentd::money::Currency::parse("RUB").unwrap(),
            comment: None,
        })
        .await;
    let engine = run(
        &world,
        engine,
        "2027-02-10T08:00:00Z".parse().unwrap(),
        Duration::hours(2),
        0,
    )
    .await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts.len(), 1, "held: no new period: {attempts:?}");
    assert_eq!(attempts[0].state, AttemptState::Approved, "booked once");
    let ledger = engine.with_store(|s| s.ledger(Some("dup"))).await.unwrap();
    assert!(
        ledger.iter().any(|e| e.kind == "double_approval"),
        "{ledger:#?}"
    );
    let status = engine.with_store(|s| s.status(true)).await.unwrap();
    let flagged: Vec<_> = status
        .needs_attention
        .iter()
        .map(|a| (a.subscription.as_str(), a.kind))
        .collect();
    assert_eq!(flagged, [("dup", "double_approval")]);

    // A verified approval arriving after the attempt was settled otherwise: flagged too.
    let attempt_id = attempts[0].attempt_id;
    engine
        .with_store(move |s| {
            s.flag_attempt(
                attempt_id,
                &recurrentd::store::Flag {
                    kind: recurrentd::store::flag::LATE_APPROVAL,
                    reason: "late".into(),
                },
                "2027-02-10T08:00:00Z".parse().unwrap(),
            )
        })
        .await
        .unwrap();
    let status = engine.with_store(|s| s.status(true)).await.unwrap();
    assert_eq!(status.needs_attention[0].kind, "late_approval");
    assert!(
        status.needs_attention[0]
            .detail
            .contains("flagged before: the gateway shows 2 orders under"),
        "{:?}",
        status.needs_attention[0]
    );
}

/// Issue 12, item 5: the daemon's tick does not wait for a slow send. It returns once its
/// intents are handed to their tasks; a tick meanwhile leaves the attempt in flight alone (the
/// busy set: no second request); `finish_in_flight` waits for it and counts what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_does_not_wait_leaves_a_slow_send_to_finish_on_its_own() {
    // `408`: the gateway applies the charge but answers only after 1.5 s (the client gives up
    // after 1 s: unknown, then looked up).
    let text = subscription("slow", "999000000042408", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let engine = world.start().await;
    world.clock.set("2027-01-05T07:00:00Z".parse().unwrap());
    let report = engine.tick_without_waiting().await.unwrap();
    assert_eq!(report.intents, 1);
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(
        attempts[0].state,
        AttemptState::Pending,
        "the tick returned before the reply"
    );
    // Another tick while it is in flight: it is busy, so nothing is sent or looked up for it.
    world.clock.advance(Duration::minutes(5));
    let again = engine.tick_without_waiting().await.unwrap();
    assert_eq!((again.intents, again.approved, again.unknown), (0, 0, 0));
    let finished = engine.finish_in_flight().await;
    assert_eq!(finished.unknown + finished.approved, 1, "{finished:?}");
    assert_eq!(
        world.sandbox.book().orders.len(),
        1,
        "one request, never two"
    );
    quiesce(&world, &engine).await;
    let attempts = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(attempts[0].state, AttemptState::Approved, "{attempts:?}");
    check_invariants(&world, &engine).await;
}

/// A clock that runs at real speed from `start` (rate 1, like the system clock) and can be made
/// to jump by an offset, as a host's clock does when set by hand or by a bad NTP step.
#[derive(Clone)]
struct JumpingClock {
    start: DateTime<Utc>,
    real_start: std::time::Instant,
    offset: Arc<std::sync::Mutex<Duration>>,
}

impl JumpingClock {
    fn new(start: &str) -> JumpingClock {
        JumpingClock {
            start: start.parse().unwrap(),
            real_start: std::time::Instant::now(),
            offset: Arc::new(std::sync::Mutex::new(Duration::zero())),
        }
    }

    fn jump(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for JumpingClock {
    fn now(&self) -> DateTime<Utc> {
        self.start
            + Duration::from_std(self.real_start.elapsed()).unwrap()
            + *self.offset.lock().unwrap()
    }

    fn rate(&self) -> Option<u32> {
        Some(1)
    }
}

/// Issue 12, item 7: a forward clock jump (to 2031) settled every period since as skipped and
/// ended billing for every subscription, and a backward jump went unseen. Both are now seen
/// between two sweeps (the clock against monotonic time): new charges stop, with a
/// `clock_jump` ledger event and a `status` flag, until an operator acknowledges the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_jump_stops_new_charges_until_an_operator_acknowledges_it() {
    let text = subscription("jump", "5111112000000001", "100.00", "2027-01-05");
    let world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    let clock = JumpingClock::new("2027-01-05T07:00:01Z");
    let engine = world.start_with(Arc::new(clock.clone())).await;
    let report = engine.tick().await.unwrap();
    assert_eq!((report.intents, report.approved), (1, 1), "{report:?}");

    // Forward four years: nothing is settled or charged, the jump is held.
    clock.jump(Duration::days(4 * 365));
    let report = engine.tick().await.unwrap();
    assert!(report.clock_held, "{report:?}");
    assert_eq!((report.intents, report.settled), (0, 0));
    let held = engine.with_store(|s| s.clock_hold()).await.unwrap();
    assert!(
        held.as_deref()
            .is_some_and(|r| r.contains("jumped forward")),
        "{held:?}"
    );
    let status = engine.with_store(|s| s.status(false)).await.unwrap();
    assert!(status.clock_hold.is_some());
    let ledger = engine.with_store(|s| s.ledger(None)).await.unwrap();
    assert_eq!(
        ledger.iter().filter(|e| e.kind == "clock_jump").count(),
        1,
        "{ledger:#?}"
    );
    // Held until acknowledged, sweep after sweep.
    assert!(engine.tick().await.unwrap().clock_held);
    let rows = engine.with_store(|s| s.attempts()).await.unwrap();
    assert_eq!(rows.len(), 1);

    // The operator sets the clock right and acknowledges: billing goes on from the real date.
    clock.jump(-Duration::days(4 * 365));
    let acknowledged = engine
        .with_store(|s| s.acknowledge_clock("ops", "NTP fixed", Utc::now()))
        .await
        .unwrap();
    assert!(acknowledged);
    let report = engine.tick().await.unwrap();
    assert!(!report.clock_held, "{report:?}");

    // Back an hour: seen too.
    clock.jump(-Duration::hours(1));
    let report = engine.tick().await.unwrap();
    assert!(report.clock_held, "{report:?}");
    let held = engine.with_store(|s| s.clock_hold()).await.unwrap();
    assert!(
        held.as_deref().is_some_and(|r| r.contains("back")),
        "{held:?}"
    );
}

/// Issue 12, item 7: across a restart there is no monotonic time to compare with, so a clock
/// behind the last sweep is a jump back, and one sweep may settle at most
/// `engine.max_skipped_periods` periods of a subscription as skipped among those that fell due
/// since the last sweep; more stops new charges until the clock is acknowledged. A new
/// subscription's catch-up from an old start is not capped (issue 12, item 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_clock_far_ahead_or_behind_is_held() {
    let text = subscription("far", "5111112000000001", "100.00", "2027-01-05");
    let mut world = World::new(&text, DuplicatePolicy::Reject, ResponseFormat::Xml).await;
    world.policy.max_skipped_periods = 5;
    let engine = world.start().await;
    let engine = run(
        &world,
        engine,
        "2027-01-05T08:00:00Z".parse().unwrap(),
        Duration::hours(1),
        0,
    )
    .await;
    assert_eq!(engine.with_store(|s| s.attempts()).await.unwrap().len(), 1);
    drop(engine);

    // Restarted with the clock ten months on: nine periods would be skipped at once.
    world.clock.set("2027-11-06T08:00:00Z".parse().unwrap());
    let engine = world.start().await;
    let report = engine.tick().await.unwrap();
    assert!(report.clock_held, "{report:?}");
    assert_eq!((report.intents, report.settled), (0, 0), "{report:?}");
    let held = engine
        .with_store(|s| s.clock_hold())
        .await
        .unwrap()
        .unwrap();
    assert!(held.contains("would skip 9 periods"), "{held}");
    // Acknowledged (the daemon really was stopped that long): the catch-up goes on.
    engine
        .with_store(|s| s.acknowledge_clock("ops", "maintenance", Utc::now()))
        .await
        .unwrap();
    let report = engine.tick().await.unwrap();
    assert!(!report.clock_held);
    assert_eq!((report.intents, report.settled), (1, 9), "{report:?}");
    quiesce(&world, &engine).await;
    drop(engine);

    // Restarted with the clock a day behind the last sweep: held.
    world.clock.set("2027-11-05T08:00:00Z".parse().unwrap());
    let engine = world.start().await;
    let report = engine.tick().await.unwrap();
    assert!(report.clock_held, "{report:?}");
    let held = engine
        .with_store(|s| s.clock_hold())
        .await
        .unwrap()
        .unwrap();
    assert!(held.contains("before the last sweep"), "{held}");
}
