//! A property test of the charge lifecycle against a small reference model.
//!
//! Each case is a small world (1–4 subscriptions, each bound to a sandbox behaviour by its bill
//! number) and a sequence of operations on it: ticks after the clock moved forward by minutes to
//! days, the clock jumping back, restarts (the engine dropped, the store reopened, reconciled)
//! and reconciliations. After the sequence the world is quiesced (ticks until nothing is
//! unresolved; a clock hold that a jump back set is acknowledged first, as an operator would) and the model below, written from the README's rules and the sandbox's documented
//! behaviours and not from the engine's code, states what must hold:
//!
//! 1. at most one Approved order per (subscription, period) in the sandbox's book;
//! 2. the book and the store agree both ways on what was paid;
//! 3. every request the sandbox received was within the agreed limits when it was sent, and
//!    approved charges are `period_days` local days apart;
//! 4. per period, attempts are numbered 1..n without gaps, at most one may have charged, and a new
//!    attempt follows only a verified "did not charge";
//! 5. what each attempt's sandbox behaviour predicts (approved, declined, not received,
//!    quarantined), what soft and hard declines do to a subscription, and that every due period
//!    is accounted for (paid when nothing could stop it).
//!
//! `PROPTEST_CASES` runs more cases (the default keeps the file well under a minute).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use recurrentd::billing::Calendar;
use recurrentd::clock::{Clock, ManualClock};
use recurrentd::config::{BillingConfig, CatchUp, EngineConfig, ResponseFormat};
use recurrentd::engine::{Engine, EngineError, Pacer, Policy, TickReport};
use recurrentd::gateway::client::{Client, Settings};
use recurrentd::gateway::sandbox::behaviour::of_bill;
use recurrentd::gateway::sandbox::{
    Behaviour, DeclineCode, DuplicatePolicy, OrderState, Sandbox, SandboxConfig,
};
use recurrentd::money::Money;
use recurrentd::schedule;
use recurrentd::store::{AttemptState, ChargeState, Job, PeriodRow, Store};
use secrecy::SecretString;

const PASSWORD: &str = "model-test-password";
const SALT: &str = "model-test-salt";
/// Cases run when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 48;
/// The engine's dunning schedule and 30-day attempt budget (the defaults, restated here).
const DUNNING_DAYS: [i64; 3] = [1, 3, 7];
const MAX_ATTEMPTS_PER_30_DAYS: usize = 8;
/// The first instant of every case.
const EPOCH: &str = "2027-01-01T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// The case: subscriptions and operations.

/// What a subscription's bill number makes the sandbox do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Approve,
    SoftDecline,
    HardDecline,
    InProcess,
    Hang,
    DropConnection,
    ServerError,
    Unavailable,
    Garbage,
    WrongCheckvalue,
    SystemError,
    Chaos,
}

impl Kind {
    /// The magic suffix (`None`: an ordinary bill number).
    fn suffix(self) -> Option<&'static str> {
        Some(match self {
            Kind::Approve => return None,
            Kind::SoftDecline => "102",
            Kind::HardDecline => "104",
            Kind::InProcess => "300",
            Kind::Hang => "408",
            Kind::DropConnection => "409",
            Kind::ServerError => "500",
            Kind::Unavailable => "503",
            Kind::Garbage => "666",
            Kind::WrongCheckvalue => "777",
            Kind::SystemError => "998",
            Kind::Chaos => "999",
        })
    }

    /// The gateway eventually approves every charge (whatever happens to the reply).
    fn always_approved(self) -> bool {
        matches!(
            self,
            Kind::Approve
                | Kind::InProcess
                | Kind::Hang
                | Kind::DropConnection
                | Kind::ServerError
                | Kind::Garbage
                | Kind::SystemError
        )
    }
}

#[derive(Clone)]
struct SubSpec {
    kind: Kind,
    weekly: bool,
    /// Days after the epoch's date.
    start: u32,
    currency: &'static str,
    amount: i64,
    min: Option<i64>,
    max: Option<i64>,
    period_days: Option<u32>,
    /// Days after `start`.
    max_date: Option<u32>,
}

impl SubSpec {
    fn start_date(&self) -> NaiveDate {
        epoch_date() + Duration::days(i64::from(self.start))
    }

    fn max_date(&self) -> Option<NaiveDate> {
        self.max_date
            .map(|d| self.start_date() + Duration::days(i64::from(d)))
    }

    fn due_date(&self, period: u32) -> NaiveDate {
        if self.weekly {
            self.start_date() + Duration::days(7 * i64::from(period))
        } else {
            self.start_date()
                .checked_add_months(chrono::Months::new(period))
                .unwrap()
        }
    }
}

impl fmt::Debug for SubSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} from {} {} {}",
            self.kind,
            if self.weekly { "weekly" } else { "monthly" },
            self.start_date(),
            cents(self.amount),
            self.currency
        )?;
        if let Some(min) = self.min {
            write!(f, " min {}", cents(min))?;
        }
        if let Some(max) = self.max {
            write!(f, " max {}", cents(max))?;
        }
        if let Some(days) = self.period_days {
            write!(f, " period_days {days}")?;
        }
        if let Some(date) = self.max_date() {
            write!(f, " max_date {date}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Advance the clock by this many minutes, then tick.
    Tick(i64),
    /// Move the clock back by this many minutes, then tick.
    JumpBack(i64),
    /// Drop the engine, reopen the store as the daemon, sync, reconcile.
    Restart,
    /// Reconcile every unresolved attempt.
    Reconcile,
}

#[derive(Clone)]
struct Case {
    subs: Vec<SubSpec>,
    ops: Vec<Op>,
    format: ResponseFormat,
    duplicates: DuplicatePolicy,
}

impl Case {
    /// No clock jump back and no forward step over 12 hours: every period is looked at on its
    /// due date (10:00 + 12 h is still the same local day).
    fn gap_free(&self) -> bool {
        self.ops.iter().all(|op| match op {
            Op::Tick(minutes) => *minutes <= 12 * 60,
            Op::JumpBack(_) => false,
            Op::Restart | Op::Reconcile => true,
        })
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?} / {:?}", self.format, self.duplicates)?;
        for (i, sub) in self.subs.iter().enumerate() {
            writeln!(f, "  s{i}: {sub:?}")?;
        }
        for op in &self.ops {
            match op {
                Op::Tick(m) => writeln!(f, "  tick +{}", minutes_text(*m))?,
                Op::JumpBack(m) => writeln!(f, "  jump back -{}", minutes_text(*m))?,
                Op::Restart => writeln!(f, "  restart")?,
                Op::Reconcile => writeln!(f, "  reconcile")?,
            }
        }
        Ok(())
    }
}

fn minutes_text(m: i64) -> String {
    format!("{}d{:02}h{:02}m", m / 1440, m % 1440 / 60, m % 60)
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn epoch() -> DateTime<Utc> {
    EPOCH.parse().unwrap()
}

fn epoch_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2027, 1, 1).unwrap()
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Approve),
        2 => Just(Kind::SoftDecline),
        1 => Just(Kind::HardDecline),
        2 => Just(Kind::InProcess),
        1 => Just(Kind::Hang),
        1 => Just(Kind::DropConnection),
        1 => Just(Kind::ServerError),
        2 => Just(Kind::Unavailable),
        1 => Just(Kind::Garbage),
        1 => Just(Kind::WrongCheckvalue),
        1 => Just(Kind::SystemError),
        3 => Just(Kind::Chaos),
    ]
}

fn sub_strategy() -> impl Strategy<Value = SubSpec> {
    (
        kind_strategy(),
        any::<bool>(),
        0u32..14,
        prop::sample::select(vec!["RUB", "USD", "EUR"]),
        (100i64..50_000, 0i64..10_000, 0i64..10_000),
        (any::<bool>(), any::<bool>()),
        prop::option::of(0u32..=28),
        prop::option::of(0u32..70),
    )
        .prop_map(
            |(kind, weekly, start, currency, (min, over, under), (has_min, has_max), pd, end)| {
                // A hanging reply costs real seconds: keep them to a monthly few per case.
                let weekly = weekly && kind != Kind::Hang;
                let gap = if weekly { 7 } else { 28 };
                SubSpec {
                    kind,
                    weekly,
                    start,
                    currency,
                    amount: min + over,
                    min: has_min.then_some(min),
                    max: has_max.then_some(min + over + under),
                    // Never more than the cadence's shortest gap (a schedule check refuses it).
                    period_days: pd.map(|d| d.clamp(1, gap)),
                    max_date: end,
                }
            },
        )
}

fn op_strategy(wild: bool) -> BoxedStrategy<Op> {
    if wild {
        prop_oneof![
            3 => (1i64..180).prop_map(Op::Tick),
            5 => (60i64..48 * 60).prop_map(Op::Tick),
            2 => (2 * 1440i64..5 * 1440).prop_map(Op::Tick),
            2 => (1i64..3 * 1440).prop_map(Op::JumpBack),
            1 => Just(Op::Restart),
            1 => Just(Op::Reconcile),
        ]
        .boxed()
    } else {
        prop_oneof![
            10 => (30i64..=12 * 60).prop_map(Op::Tick),
            1 => Just(Op::Restart),
            1 => Just(Op::Reconcile),
        ]
        .boxed()
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let ops = prop_oneof![
        prop::collection::vec(op_strategy(false), 10..120),
        prop::collection::vec(op_strategy(true), 5..40),
    ];
    (
        prop::collection::vec(sub_strategy(), 1..=4),
        ops,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(subs, ops, json, accept)| Case {
            subs,
            ops,
            format: if json {
                ResponseFormat::Json
            } else {
                ResponseFormat::Xml
            },
            duplicates: if accept {
                DuplicatePolicy::Accept
            } else {
                DuplicatePolicy::Reject
            },
        })
}

fn sub_id(i: usize) -> String {
    format!("s{i}")
}

fn bill_number(i: usize, kind: Kind) -> String {
    match kind.suffix() {
        Some(suffix) => format!("999{i:09}{suffix}"),
        None => format!("511111{i:09}"),
    }
}

fn schedule_text(subs: &[SubSpec]) -> String {
    let mut text = String::new();
    for (i, s) in subs.iter().enumerate() {
        text += &format!(
            "[[subscription]]\nid = \"{}\"\nbill_number = \"{}\"\ncurrency = \"{}\"\n\
             amount = \"{}\"\nevery = \"{}\"\nstart = {}\n\n[subscription.limits]\n",
            sub_id(i),
            bill_number(i, s.kind),
            s.currency,
            cents(s.amount),
            if s.weekly { "1 week" } else { "1 month" },
            s.start_date(),
        );
        if let Some(min) = s.min {
            text += &format!("min_amount = \"{}\"\n", cents(min));
        }
        if let Some(max) = s.max {
            text += &format!("max_amount = \"{}\"\n", cents(max));
        }
        if let Some(days) = s.period_days {
            text += &format!("period_days = {days}\n");
        }
        if let Some(date) = s.max_date() {
            text += &format!("max_date = {date}\n");
        }
        text += "\n";
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The world: sandbox, clock, store, engine.

struct World {
    dir: tempfile::TempDir,
    sandbox: Sandbox,
    clock: ManualClock,
    calendar: Calendar,
    format: ResponseFormat,
}

impl World {
    async fn new(case: &Case) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("schedules")).unwrap();
        std::fs::write(
            dir.path().join("schedules/subs.toml"),
            schedule_text(&case.subs),
        )
        .unwrap();
        let sandbox = Sandbox::start(
            SandboxConfig {
                password: SecretString::from(PASSWORD),
                salt: SecretString::from(SALT),
                // Longer than the client's timeout: the reply never arrives.
                hang: StdDuration::from_millis(1200),
                duplicates: case.duplicates,
                ..SandboxConfig::builtin()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        World {
            dir,
            sandbox,
            clock: ManualClock::new(epoch()),
            calendar: Calendar::from(&BillingConfig {
                timezone: "Europe/Moscow".parse().unwrap(),
                charge_time: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
                catch_up: CatchUp::Latest,
                grace_hours: 24,
            }),
            format: case.format,
        }
    }

    /// Opens the store as the daemon does, syncs the schedule files, reconciles.
    async fn start(&self) -> Result<Engine, String> {
        let mut store = Store::open_or_create(&self.dir.path().join("recurrentd.db"))
            .map_err(|e| format!("opening the store: {e}"))?;
        let report = schedule::load_dir(&self.dir.path().join("schedules")).unwrap();
        if report.error_count() != 0 {
            return Err(format!(
                "the generated schedule was refused: {:?}",
                report.diagnostics().collect::<Vec<_>>()
            ));
        }
        store
            .sync_schedules(&report, self.clock.now())
            .map_err(|e| format!("sync: {e}"))?;
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
            Arc::new(self.clock.clone()) as Arc<dyn Clock>,
            self.calendar,
            Policy::from(&EngineConfig {
                // Integrity failures are part of the mix; the breaker has its own test.
                breaker_failures: 1000,
                ..EngineConfig::default()
            }),
            Pacer::new(8, 1000),
        )
        .map_err(|e| format!("engine: {e}"))?;
        engine
            .reconcile()
            .await
            .map_err(|e| format!("reconcile at start: {e}"))?;
        Ok(engine)
    }

    fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.calendar.timezone)
            .format("%Y-%m-%d %H:%M MSK")
            .to_string()
    }
}

/// A tick's report without its zeroes.
fn brief(r: &TickReport) -> String {
    let fields = [
        ("intents", r.intents),
        ("approved", r.approved),
        ("declined", r.declined),
        ("unknown", r.unknown),
        ("not_sent", r.not_sent),
        ("quarantined", r.quarantined),
        ("settled", r.settled),
        ("checked", r.checked),
        ("held", r.held),
    ];
    let mut out: Vec<String> = fields
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if r.breaker_open {
        out.push("breaker open".into());
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(", ")
    }
}

fn engine_err(what: &str) -> impl Fn(EngineError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Plays a case; returns the history of what happened, or the history with the first broken
/// rule.
async fn play(case: &Case) -> Result<String, String> {
    let world = World::new(case).await;
    let mut history = String::new();
    let fail = |history: &String, msg: String| format!("{msg}\n--- history ---\n{history}");
    let mut engine = world.start().await.map_err(|e| fail(&history, e))?;
    let mut latest = world.clock.now();
    for (n, op) in case.ops.iter().enumerate() {
        let line = match *op {
            Op::Tick(minutes) | Op::JumpBack(minutes) => {
                let by = Duration::minutes(minutes);
                world
                    .clock
                    .advance(if matches!(op, Op::Tick(_)) { by } else { -by });
                latest = latest.max(world.clock.now());
                let report = engine
                    .tick()
                    .await
                    .map_err(engine_err("tick"))
                    .map_err(|e| fail(&history, e))?;
                format!(
                    "{op:?} → {}: {}",
                    world.local(world.clock.now()),
                    brief(&report)
                )
            }
            Op::Restart => {
                drop(engine);
                engine = world.start().await.map_err(|e| fail(&history, e))?;
                "restart".to_string()
            }
            Op::Reconcile => {
                let report = engine
                    .reconcile()
                    .await
                    .map_err(engine_err("reconcile"))
                    .map_err(|e| fail(&history, e))?;
                format!("reconcile: {}", brief(&report))
            }
        };
        history += &format!("#{n} {line}\n");
    }

    // Quiesce: never behind the latest instant already seen, then hourly ticks until nothing is
    // unresolved after a tick (a tick that leaves nothing unresolved planned every subscription).
    if world.clock.now() < latest {
        world.clock.set(latest);
    }
    // A jump back stopped new charges (issue 12, item 7); the operator, the clock set right,
    // acknowledges it.
    let acknowledged = engine
        .with_store(|s| {
            let held = s.clock_hold()?.is_some();
            s.acknowledge_clock("model", "the clock is right again", Utc::now())?;
            Ok(held)
        })
        .await
        .map_err(engine_err("acknowledging the clock"))
        .map_err(|e| fail(&history, e))?;
    if acknowledged {
        history += "clock acknowledged\n";
    }
    let mut quiet = false;
    for _ in 0..600 {
        let report = engine
            .tick()
            .await
            .map_err(engine_err("quiesce"))
            .map_err(|e| fail(&history, e))?;
        let outstanding = engine
            .outstanding()
            .await
            .map_err(engine_err("outstanding"))
            .map_err(|e| fail(&history, e))?;
        if report != Default::default() {
            history += &format!(
                "quiesce → {}: {}\n",
                world.local(world.clock.now()),
                brief(&report)
            );
        }
        if outstanding == 0 {
            quiet = true;
            break;
        }
        world.clock.advance(Duration::hours(1));
    }
    if !quiet {
        return Err(fail(
            &history,
            "attempts still unresolved after quiescing".into(),
        ));
    }
    history += &format!("quiet at {}\n", world.local(world.clock.now()));

    let observed = Observed::read(&world, &engine)
        .await
        .map_err(|e| fail(&history, e))?;
    history += &observed.describe(&world);
    let model = Model::new(case, &world);
    match model.check(&observed) {
        Ok(()) => Ok(history),
        Err(problems) => Err(fail(&history, problems.join("\n"))),
    }
}

// ---------------------------------------------------------------------------------------------
// What the world looks like after quiescing.

struct Observed {
    now: DateTime<Utc>,
    attempts: Vec<Job>,
    periods: Vec<PeriodRow>,
    attention: BTreeMap<String, String>,
    book: recurrentd::gateway::sandbox::BookSnapshot,
}

impl Observed {
    async fn read(world: &World, engine: &Engine) -> Result<Observed, String> {
        let attempts = engine
            .with_store(|s| s.attempts())
            .await
            .map_err(engine_err("attempts"))?;
        let periods = engine
            .with_store(|s| s.periods(None))
            .await
            .map_err(engine_err("periods"))?;
        let attention = engine
            .with_store(|s| {
                let mut out = BTreeMap::new();
                for i in 0..4 {
                    if let Some(reason) = s.attention(&sub_id(i))? {
                        out.insert(sub_id(i), reason);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(engine_err("attention"))?;
        Ok(Observed {
            now: world.clock.now(),
            attempts,
            periods,
            attention,
            book: world.sandbox.book(),
        })
    }

    fn describe(&self, world: &World) -> String {
        let mut out = String::from("--- store ---\n");
        for p in &self.periods {
            out += &format!(
                "  {} period {}: {} ({})\n",
                p.subscription_id,
                p.period,
                p.state.as_str(),
                p.reason.as_deref().unwrap_or("")
            );
            for a in self
                .attempts
                .iter()
                .filter(|a| a.subscription_id == p.subscription_id && pn(a) == p.period)
            {
                out += &format!(
                    "    #{} {} {}, created {}, sent {}\n",
                    a.attempt,
                    a.order_number,
                    a.state,
                    world.local(a.created_at),
                    a.sent_at.map_or("-".into(), |t| world.local(t)),
                );
            }
        }
        for (sub, reason) in &self.attention {
            out += &format!("  attention {sub}: {reason}\n");
        }
        out += "--- book ---\n";
        for o in &self.book.orders {
            out += &format!(
                "  {} {} {:?}\n",
                o.order_number,
                o.state.as_str(),
                o.behaviour
            );
        }
        out
    }
}

/// `PREFIX-SUB-PERIOD-ATTEMPT`, read from the right (the prefix and the id may hold `-`).
fn parse_order(order: &str) -> Option<(String, u32, u32)> {
    let mut parts = order.rsplitn(3, '-');
    let attempt = parts.next()?.parse().ok()?;
    let period = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let sub = rest.split_once('-')?.1.to_string();
    Some((sub, period, attempt))
}

// ---------------------------------------------------------------------------------------------
// The reference model.

struct Model<'a> {
    case: &'a Case,
    calendar: Calendar,
}

/// What the sandbox did to an order, reduced to what the engine must conclude from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Approved,
    SoftDeclined,
    HardDeclined,
    NotReceived,
    Quarantined,
}

fn expect(behaviour: Behaviour) -> Option<Expect> {
    Some(match behaviour {
        Behaviour::Approve
        | Behaviour::InProcess {
            then_approved: true,
        }
        | Behaviour::Hang
        | Behaviour::DropConnection
        | Behaviour::ServerError
        | Behaviour::Garbage
        | Behaviour::SystemError => Expect::Approved,
        Behaviour::Decline(DeclineCode::InsufficientFunds | DeclineCode::CardLimit) => {
            Expect::SoftDeclined
        }
        Behaviour::Decline(DeclineCode::CardExpired | DeclineCode::CardInvalid) => {
            Expect::HardDeclined
        }
        Behaviour::Unavailable => Expect::NotReceived,
        Behaviour::WrongCheckvalue => Expect::Quarantined,
        _ => return None,
    })
}

impl Model<'_> {
    fn new<'a>(case: &'a Case, world: &World) -> Model<'a> {
        Model {
            case,
            calendar: world.calendar,
        }
    }

    fn spec(&self, sub: &str) -> Option<(usize, &SubSpec)> {
        let i: usize = sub.strip_prefix('s')?.parse().ok()?;
        self.case.subs.get(i).map(|s| (i, s))
    }

    fn due_instant(&self, spec: &SubSpec, period: u32) -> DateTime<Utc> {
        self.calendar.due_instant(spec.due_date(period))
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        self.calendar.local_date(t)
    }

    /// Every rule; all broken ones are reported.
    fn check(&self, o: &Observed) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut bad = |msg: String| problems.push(msg);

        let by_order: HashMap<&str, &Job> = o
            .attempts
            .iter()
            .map(|a| (a.order_number.as_str(), a))
            .collect();
        let book_approved: BTreeSet<&str> = o
            .book
            .orders
            .iter()
            .filter(|r| r.state == OrderState::Approved)
            .map(|r| r.order_number.as_str())
            .collect();
        let mut sends: HashMap<&str, usize> = HashMap::new();
        for r in &o.book.rp_requests {
            *sends.entry(r.order_number.as_str()).or_default() += 1;
        }

        // 1. At most one approved order per (subscription, period) at the gateway.
        let mut approved_per_period: BTreeMap<(String, u32), Vec<&str>> = BTreeMap::new();
        for order in &book_approved {
            match parse_order(order) {
                Some((sub, period, _)) => approved_per_period
                    .entry((sub, period))
                    .or_default()
                    .push(order),
                None => bad(format!("the book holds an unreadable order number {order}")),
            }
        }
        for ((sub, period), orders) in &approved_per_period {
            if orders.len() > 1 {
                bad(format!(
                    "{sub} period {period} charged {} times: {orders:?}",
                    orders.len()
                ));
            }
        }

        // 2. The book and the store agree on what was paid.
        for order in &book_approved {
            match by_order.get(order) {
                None => bad(format!(
                    "the gateway approved {order}, unknown to the store"
                )),
                Some(a)
                    if !matches!(a.state, AttemptState::Approved | AttemptState::Quarantined) =>
                {
                    bad(format!(
                        "{order} is approved at the gateway but {} in the store",
                        a.state
                    ))
                }
                Some(_) => {}
            }
        }
        for a in &o.attempts {
            if a.state == AttemptState::Approved && !book_approved.contains(a.order_number.as_str())
            {
                bad(format!(
                    "{} is approved in the store, not at the gateway",
                    a.order_number
                ));
            }
            if a.state.unresolved() {
                bad(format!(
                    "{} is still {} after quiescing",
                    a.order_number, a.state
                ));
            }
        }

        // 3. Every request within the limits when it was sent; approved charges spaced.
        for r in &o.book.rp_requests {
            let Some(a) = by_order.get(r.order_number.as_str()) else {
                bad(format!(
                    "the gateway got {}, unknown to the store",
                    r.order_number
                ));
                continue;
            };
            let Some((i, spec)) = self.spec(&a.subscription_id) else {
                bad(format!(
                    "{} belongs to no subscription of the case",
                    r.order_number
                ));
                continue;
            };
            if r.bill_number != bill_number(i, spec.kind) {
                bad(format!(
                    "{} sent with bill number {}",
                    r.order_number, r.bill_number
                ));
            }
            match Money::parse(&r.amount) {
                Ok(amount) => {
                    let cents = amount.cents();
                    if cents != spec.amount
                        || spec.min.is_some_and(|m| cents < m)
                        || spec.max.is_some_and(|m| cents > m)
                    {
                        bad(format!("{} sent amount {amount}: {spec:?}", r.order_number));
                    }
                }
                Err(_) => bad(format!(
                    "{} sent a malformed amount {:?}",
                    r.order_number, r.amount
                )),
            }
            if r.currency != spec.currency {
                bad(format!(
                    "{} sent in {}, agreed {}",
                    r.order_number, r.currency, spec.currency
                ));
            }
            match a.sent_at {
                None => bad(format!(
                    "{} reached the gateway but has no send instant",
                    r.order_number
                )),
                Some(sent) => {
                    if spec
                        .max_date()
                        .is_some_and(|max| self.local_date(sent) > max)
                    {
                        bad(format!(
                            "{} sent on {}, after max_date",
                            r.order_number,
                            self.local_date(sent)
                        ));
                    }
                    if sent < self.due_instant(spec, pn(a)) {
                        bad(format!(
                            "{} sent at {sent}, before its period was due",
                            r.order_number
                        ));
                    }
                }
            }
        }
        let mut charged: BTreeMap<&str, Vec<NaiveDate>> = BTreeMap::new();
        for a in &o.attempts {
            if book_approved.contains(a.order_number.as_str())
                && let Some(sent) = a.sent_at
            {
                charged
                    .entry(a.subscription_id.as_str())
                    .or_default()
                    .push(self.local_date(sent));
            }
        }
        for (sub, mut dates) in charged {
            let Some((_, spec)) = self.spec(sub) else {
                continue;
            };
            let Some(days) = spec.period_days else {
                continue;
            };
            dates.sort();
            for pair in dates.windows(2) {
                if (pair[1] - pair[0]).num_days() < i64::from(days) {
                    bad(format!(
                        "{sub}: charges on {} and {} are under {days} days apart",
                        pair[0], pair[1]
                    ));
                }
            }
        }

        // 4. Attempts per period.
        let mut per_period: BTreeMap<(&str, u32), Vec<&Job>> = BTreeMap::new();
        for a in &o.attempts {
            per_period
                .entry((a.subscription_id.as_str(), pn(a)))
                .or_default()
                .push(a);
        }
        for ((sub, period), attempts) in &mut per_period {
            attempts.sort_by_key(|a| a.attempt);
            let numbers: Vec<u32> = attempts.iter().map(|a| a.attempt).collect();
            let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
            if numbers != expected {
                bad(format!(
                    "{sub} period {period}: attempts numbered {numbers:?}"
                ));
            }
            let live = attempts
                .iter()
                .filter(|a| a.state.may_have_charged())
                .count();
            if live > 1 {
                bad(format!(
                    "{sub} period {period}: {live} attempts may have charged"
                ));
            }
            for a in attempts.iter() {
                match parse_order(&a.order_number) {
                    Some((s, p, n)) if s == *sub && p == *period && n == a.attempt => {}
                    _ => bad(format!(
                        "{} does not name {sub}/{period}/{}",
                        a.order_number, a.attempt
                    )),
                }
            }
            for pair in attempts.windows(2) {
                if !matches!(
                    pair[0].state,
                    AttemptState::Declined | AttemptState::NotReceived | AttemptState::Rejected
                ) {
                    bad(format!(
                        "{} started after {} which was {}",
                        pair[1].order_number, pair[0].order_number, pair[0].state
                    ));
                }
            }
        }

        // 5. What each attempt's behaviour predicts.
        let mut hard_declined: BTreeMap<&str, &Job> = BTreeMap::new();
        for a in &o.attempts {
            let Some((_, spec)) = self.spec(&a.subscription_id) else {
                continue;
            };
            let sent = sends.get(a.order_number.as_str()).copied().unwrap_or(0);
            if sent == 0 {
                // Never left: only a refusal before sending explains it.
                if a.state != AttemptState::Rejected {
                    bad(format!(
                        "{} never reached the gateway but is {}",
                        a.order_number, a.state
                    ));
                }
                continue;
            }
            if sent > 1 {
                // The gateway was always reachable: nothing was provably not sent.
                bad(format!(
                    "{} reached the gateway {sent} times",
                    a.order_number
                ));
            }
            let behaviour = of_bill(&a.bill_number).for_order(&a.order_number);
            if spec.kind != Kind::Chaos && spec.kind.suffix().is_some() {
                // The harness's own premise: the bill number picks the kind.
                let fixed = of_bill(&bill_number(0, spec.kind)).for_order("x");
                if behaviour != fixed {
                    bad(format!(
                        "{}: sandbox behaviour {behaviour:?}, case {:?}",
                        a.order_number, spec.kind
                    ));
                }
            }
            let got = a.state;
            let ok = match expect(behaviour) {
                Some(Expect::Approved) => got == AttemptState::Approved,
                Some(Expect::SoftDeclined) => got == AttemptState::Declined,
                Some(Expect::HardDeclined) => {
                    hard_declined.entry(a.subscription_id.as_str()).or_insert(a);
                    got == AttemptState::Declined
                }
                Some(Expect::NotReceived) => got == AttemptState::NotReceived && a.not_found >= 2,
                Some(Expect::Quarantined) => got == AttemptState::Quarantined,
                None => true,
            };
            if !ok {
                bad(format!(
                    "{}: the gateway did {behaviour:?}, the store says {got} (not found {}×)",
                    a.order_number, a.not_found
                ));
            }
        }

        // Per subscription: declines, budgets, periods.
        let rows_of = |sub: &str| -> Vec<&PeriodRow> {
            o.periods
                .iter()
                .filter(|p| p.subscription_id == sub)
                .collect()
        };
        for (i, spec) in self.case.subs.iter().enumerate() {
            let sub = sub_id(i);
            let mut attempts: Vec<&Job> = o
                .attempts
                .iter()
                .filter(|a| a.subscription_id == sub)
                .collect();
            attempts.sort_by_key(|a| a.attempt_id);
            let rows = rows_of(&sub);

            // A hard decline stops the subscription and flags it; nothing else flags one.
            match (hard_declined.get(sub.as_str()), o.attention.get(&sub)) {
                (Some(a), Some(_)) => {
                    if let Some(after) = attempts.iter().find(|b| b.attempt_id > a.attempt_id) {
                        bad(format!(
                            "{} was started after the hard decline of {}",
                            after.order_number, a.order_number
                        ));
                    }
                }
                (Some(a), None) => bad(format!(
                    "{sub}: hard decline {} but no attention flag",
                    a.order_number
                )),
                (None, Some(reason)) => {
                    bad(format!("{sub}: flagged ({reason}) without a hard decline"))
                }
                (None, None) => {}
            }
            if spec.kind == Kind::HardDecline {
                if attempts.len() > 1 {
                    bad(format!(
                        "{sub}: {} attempts after a hard decline",
                        attempts.len()
                    ));
                }
                if !attempts.is_empty()
                    && !o.attention.get(&sub).is_some_and(|r| r.contains("AS104"))
                {
                    bad(format!("{sub}: hard-declined but not flagged with AS104"));
                }
            }

            // Soft declines are retried on the dunning days, within the period and max_date.
            for a in &attempts {
                if a.attempt == 1 {
                    continue;
                }
                let Some(prev) = attempts
                    .iter()
                    .find(|b| pn(b) == pn(a) && b.attempt + 1 == a.attempt)
                else {
                    continue;
                };
                let next_due = self.due_instant(spec, pn(a) + 1);
                if a.created_at >= next_due {
                    bad(format!(
                        "{} started after the next period was due",
                        a.order_number
                    ));
                }
                if spec
                    .max_date()
                    .is_some_and(|max| self.local_date(a.created_at) > max)
                {
                    bad(format!("{} started after max_date", a.order_number));
                }
                if prev.state == AttemptState::Declined {
                    // A decline here is always concluded in the tick that sent it (the sandbox
                    // files it at once), so the retry is due `days` after that send.
                    match (DUNNING_DAYS.get(prev.attempt as usize - 1), prev.sent_at) {
                        (None, _) => bad(format!(
                            "{} follows {} declines, past the dunning schedule",
                            a.order_number, prev.attempt
                        )),
                        (Some(days), Some(sent)) if a.created_at < sent + Duration::days(*days) => {
                            bad(format!(
                                "{} retried {} after the decline, dunning says {days} days",
                                a.order_number,
                                minutes_text((a.created_at - sent).num_minutes())
                            ))
                        }
                        _ => {}
                    }
                }
                // The 30-day attempt budget (retries only).
                let recent = attempts
                    .iter()
                    .filter(|b| {
                        b.attempt_id < a.attempt_id
                            && b.created_at > a.created_at - Duration::days(30)
                    })
                    .count();
                if recent >= MAX_ATTEMPTS_PER_30_DAYS {
                    bad(format!(
                        "{} is beyond the 30-day budget ({recent} before it)",
                        a.order_number
                    ));
                }
            }

            // Periods: rows are the periods 0..=m (a run of skipped periods is one row, under
            // its last period), each consistent with its attempts.
            let numbers: Vec<u32> = rows.iter().map(|p| p.period).collect();
            let mut expected = 0;
            for row in &rows {
                let run = row.state == ChargeState::Skipped && row.period > expected;
                if row.period != expected && !run {
                    bad(format!("{sub}: period rows {numbers:?} are not 0..n"));
                }
                expected = row.period + 1;
            }
            for row in &rows {
                let mine: Vec<&&Job> = attempts.iter().filter(|a| pn(a) == row.period).collect();
                let last = mine.iter().max_by_key(|a| a.attempt).map(|a| a.state);
                let ok = match row.state {
                    ChargeState::Paid => last == Some(AttemptState::Approved),
                    // Still looked up: a later answer may leave it unknown or parked.
                    ChargeState::Quarantined => matches!(
                        last,
                        Some(
                            AttemptState::Quarantined
                                | AttemptState::Unknown
                                | AttemptState::Parked
                        )
                    ),
                    ChargeState::Failed | ChargeState::Open => matches!(
                        last,
                        Some(AttemptState::Declined | AttemptState::NotReceived)
                    ),
                    // Refused before sending, or a retry that the limits no longer allow.
                    ChargeState::Blocked => matches!(
                        last,
                        None | Some(
                            AttemptState::Rejected
                                | AttemptState::Declined
                                | AttemptState::NotReceived
                        )
                    ),
                    ChargeState::Skipped => last.is_none(),
                };
                if !ok {
                    bad(format!(
                        "{sub} period {} is {} but its last attempt is {last:?}",
                        row.period,
                        row.state.as_str()
                    ));
                }
                if row.state != ChargeState::Paid
                    && mine.iter().any(|a| a.state == AttemptState::Approved)
                {
                    bad(format!(
                        "{sub} period {} has an approved attempt but is {}",
                        row.period,
                        row.state.as_str()
                    ));
                }
            }
            for a in &attempts {
                if !rows.iter().any(|p| p.period == pn(a)) {
                    bad(format!("{} has no period row", a.order_number));
                }
            }

            // Every due period is accounted for. K: the last period due by now within max_date.
            let due = |k: u32| {
                self.due_instant(spec, k) <= o.now
                    && spec.max_date().is_none_or(|max| spec.due_date(k) <= max)
            };
            let due_count = (0..).take_while(|k| due(*k)).count() as u32;
            // A run of skipped periods is one row, under its last period: count periods.
            let rows_count = rows.iter().map(|r| r.period + 1).max().unwrap_or(0);
            // An unsettled (quarantined) attempt holds its subscription: no later period is
            // planned until it is settled or resolved.
            let held = attempts
                .iter()
                .any(|a| a.state == AttemptState::Quarantined);
            // A charge made after its due date (a retry, a late tick) may push the next period
            // to a later date (deferred: no row yet).
            let late_charge = attempts.iter().any(|a| {
                a.state.may_have_charged()
                    && self.local_date(a.sent_at.unwrap_or(a.created_at)) > spec.due_date(pn(a))
            });
            if rows_count > due_count {
                bad(format!(
                    "{sub}: {rows_count} period rows but only {due_count} periods due"
                ));
            }
            if !o.attention.contains_key(&sub) && !held && rows_count < due_count {
                let deferred = rows_count + 1 == due_count && late_charge;
                if !deferred {
                    bad(format!(
                        "{sub}: {due_count} periods due but {rows_count} rows (late charge: {late_charge})"
                    ));
                }
            }
            for (k, row) in rows.iter().enumerate() {
                if row.state == ChargeState::Skipped && k + 1 == rows.len() && !late_charge {
                    // Superseded by a later period (which has a row), or too soon after a late
                    // charge: nothing else skips.
                    bad(format!(
                        "{sub} period {k} skipped with nothing to explain it"
                    ));
                }
            }

            // Kinds the gateway always approves: every period paid, unless a late tick skipped
            // it or found it past max_date; with every period looked at on its due date, all.
            if spec.kind.always_approved() {
                for row in &rows {
                    let ok = match row.state {
                        ChargeState::Paid => true,
                        ChargeState::Skipped => !self.case.gap_free(),
                        ChargeState::Blocked => !self.case.gap_free() && spec.max_date.is_some(),
                        _ => false,
                    };
                    if !ok {
                        bad(format!(
                            "{sub} ({:?}) period {} is {} ({})",
                            spec.kind,
                            row.period,
                            row.state.as_str(),
                            row.reason.as_deref().unwrap_or("")
                        ));
                    }
                }
                if self.case.gap_free() && rows_count != due_count {
                    bad(format!(
                        "{sub}: gap-free run, {due_count} periods due, {rows_count} rows"
                    ));
                }
            }
            let paid = rows.iter().filter(|p| p.state == ChargeState::Paid).count();
            match spec.kind {
                Kind::SoftDecline
                | Kind::HardDecline
                | Kind::Unavailable
                | Kind::WrongCheckvalue
                    if paid > 0 =>
                {
                    bad(format!("{sub} ({:?}) has {paid} paid periods", spec.kind))
                }
                Kind::WrongCheckvalue => {
                    for row in &rows {
                        if attempts.iter().any(|a| pn(a) == row.period)
                            && row.state != ChargeState::Quarantined
                        {
                            bad(format!(
                                "{sub} period {} is {}",
                                row.period,
                                row.state.as_str()
                            ));
                        }
                    }
                }
                Kind::SoftDecline => {
                    for row in &rows {
                        let n = attempts.iter().filter(|a| pn(a) == row.period).count();
                        if n > 1 + DUNNING_DAYS.len() {
                            bad(format!("{sub} period {}: {n} attempts", row.period));
                        }
                    }
                }
                _ => {}
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        max_shrink_iters: 24,
        // Relative to the package root, where `cargo test` runs.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/lifecycle_model.txt",
        ))),
        ..Config::default()
    })]

    #[test]
    fn the_lifecycle_keeps_the_model(case in case_strategy()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(play(&case));
        if std::env::var_os("LIFECYCLE_MODEL_VERBOSE").is_some() {
            match &result {
                Ok(history) | Err(history) => eprintln!("=== case ===\n{case:?}{history}"),
            }
        }
        if let Err(report) = result {
            prop_assert!(false, "{}", report);
        }
    }
}

/// A scheduled attempt's period (this model has no ad-hoc charges).
fn pn(job: &Job) -> u32 {
    job.purpose
        .period()
        .expect("the model makes no ad-hoc charges")
}
