//! The operator commands. `main.rs` parses [`Cli`] and calls [`run`]; everything else is here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Parser, Subcommand};

use crate::billing::Calendar;
use crate::config::{self, Config, SecretName};
use crate::forecast::{self, Source, Status};
use crate::schedule::{self, DirReport};
use crate::store::{Access, Store, StoreError};

mod books;
mod charge;
mod docs;
mod enroll;
mod events;
mod ops;
mod refund;
mod run;
mod sandbox;
mod tokens;

pub use books::BooksArgs;
pub use charge::ChargeArgs;
pub use docs::{CompletionsArgs, ManArgs};
pub use enroll::{EnrollArgs, Enrolment};
pub use events::EventsArgs;
pub use ops::{
    AuditArgs, BackupArgs, BreakerCommand, ClockCommand, HistoryArgs, RemoveFileArgs, ResolveArgs,
    ResumeArgs, StatusArgs,
};
pub use refund::RefundArgs;
pub use run::RunArgs;
pub use sandbox::SandboxArgs;
pub use tokens::TokensCommand;

/// Exit codes, sysexits-style where one fits.
pub mod exit {
    /// Everything is fine.
    pub const OK: u8 = 0;
    /// The command ran and found problems (invalid schedule files).
    pub const PROBLEMS: u8 = 1;
    /// The command line is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// The configuration is missing or invalid (EX_CONFIG); systemd must not restart on it.
    pub const CONFIG: u8 = 78;
    /// The gateway could not be reached or did not give a usable answer (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// An unexpected failure (EX_SOFTWARE); also the daemon giving up after
    /// `daemon.max_failed_ticks` failed ticks in a row (systemd restarts it).
    pub const INTERNAL: u8 = 70;
    /// The PostgreSQL server could not be reached (EX_TEMPFAIL): try again; systemd restarts.
    pub const TEMPFAIL: u8 = 75;
    /// The database file is damaged (EX_IOERR): `PRAGMA quick_check` failed at start, or SQLite
    /// found it corrupt. Restarting cannot fix it; systemd must not restart on it.
    pub const IO_ERROR: u8 = 74;

    /// The exit code of a local database problem — never [`UNAVAILABLE`], which is the
    /// gateway's: no database at `database.path`, a file system without WAL, a schema this
    /// binary cannot use, a second daemon: [`CONFIG`]; a damaged file, a value in it that is not
    /// valid, a file-system failure: [`IO_ERROR`]; anything else (a busy database, a bug):
    /// [`INTERNAL`].
    pub fn store(error: &crate::store::StoreError) -> u8 {
        use crate::store::StoreError as E;
        match error {
            E::Missing { .. }
            | E::NoDatabase { .. }
            | E::Locked { .. }
            | E::Pragma { .. }
            | E::TooNew { .. }
            | E::NotMigrated { .. } => CONFIG,
            e if e.must_stop() || e.is_login_refused() => CONFIG,
            e if e.is_unreachable() => TEMPFAIL,
            E::Corrupt { .. } => IO_ERROR,
            e if e.is_damaged() || e.is_io() => IO_ERROR,
            _ => INTERNAL,
        }
    }
}

const AFTER_HELP: &str = "\
Examples:
  recurrentd run --sandbox               months of billing against the built-in sandbox, in a minute
  recurrentd run                         the daemon (under systemd)
  recurrentd check                       validate config.toml and schedules/
  recurrentd forecast --days 60          what will be charged in the next 60 days

  recurrentd tokens list --customer 1234 a customer's saved cards at the gateway

Exit codes: 0 ok, 1 problems found (e.g. an invalid schedule file, or a rehearsal that left
due charges unmade at --until), 2 bad command line,
69 gateway unavailable or no usable answer (never a local database problem), 78 configuration
error (also no database at database.path, or a schema this binary cannot use), 74 the database
is damaged or the file system failed, 75 the PostgreSQL server (database.url) could not be
reached (try again), 70 internal error (and `run` after too many failed ticks).

The config file is --config, else $RECURRENTD_CONFIG, else $CONFIGURATION_DIRECTORY/config.toml
(under systemd), else ./config.toml. Keys can be overridden with RECURRENTD_SECTION__KEY.";

/// recurrentd charges subscriptions by merchant-initiated recurring card payments (MIT COF)
/// through the IPS Assist gateway, within the limits each customer agreed to.
#[derive(Debug, Parser)]
#[command(name = "recurrentd", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "RECURRENTD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: charge every subscription when it falls due.
    ///
    /// Opens the database (one daemon per database), syncs the schedule files, reconciles every
    /// charge whose outcome is not known yet, then sweeps for due charges every minute. SIGHUP
    /// re-reads the schedule files; SIGTERM or Ctrl-C stops creating charges, settles what is
    /// in flight, and exits 0.
    ///
    /// It never creates a missing database by itself (a new one would charge every current
    /// period again): only with --init, or on the first start under systemd in an empty
    /// $STATE_DIRECTORY. After losing a database, restore the backup instead.
    ///
    /// --sandbox runs it against the built-in Assist sandbox with demo secrets and a fresh
    /// database, on a rehearsal clock where a month passes in about ten seconds.
    ///
    /// Examples:
    ///   recurrentd run
    ///   recurrentd run --init      (a new installation's first start, outside systemd)
    ///   recurrentd run --sandbox
    ///   recurrentd run --clock-start 2027-01-01T00:00:00Z --clock-speed 86400 --until 2028-01-01T00:00:00Z
    #[command(verbatim_doc_comment)]
    Run(RunArgs),

    /// Show the daemon's health: whether it runs (pid, version, start), its last successful
    /// tick and, in a rehearsal, its clock; counts per state, the oldest unresolved charge, the
    /// circuit breaker, refused schedule files (with their first problem), the subscriptions
    /// that need an operator (hard decline, parked, quarantined, held by a missing file), and
    /// the books findings not yet acknowledged (kind books; see `recurrentd books`). Times in
    /// UTC and in billing.timezone.
    ///
    /// With a [webhook]: its backlog (undelivered events, the oldest one's age, dead letters;
    /// "webhook" in --json). Safe while the daemon runs (the database is opened read-only).
    /// Exit 1 when something needs attention (a refused schedule file or a dead letter
    /// included), and when the daemon is not running (no process holds the database's lock)
    /// unless --offline-ok. In --json the breaker is "closed" or "open" (its reason in
    /// "breaker_reason"), the daemon an object.
    ///
    /// status SUBSCRIPTION shows one subscription in full: state, file, terms, the four limits,
    /// what needs an operator, next due, open attempts with their order numbers and the last
    /// --last N charges (exit 1 if it needs an operator or is unknown).
    ///
    /// --all then lists every subscription: its state (active, paused, cancelled, removed), what
    /// needs an operator (hard_decline, double_approval, late_approval, parked with the order
    /// number to resolve, quarantined),
    /// its next due charge (when the daemon next tries: a scheduled retry, else its next
    /// period's due instant; an instant in the past means the next sweep; "-" when it will
    /// not without a change: paused, cancelled, removed, ended, or waiting for an operator) and
    /// its last outcome (the latest attempt's state, order number and when).
    /// Rows are written as they are read, by id. With --json: the summary's object plus an
    /// "all_subscriptions" array, one subscription per line.
    ///
    /// Examples:
    ///   recurrentd status --json | jq .needs_attention
    ///   recurrentd status acme-1001
    ///   recurrentd status --all
    ///   recurrentd status --all --json | jq -c '.all_subscriptions[] | select(.needs_attention != [])'
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),

    /// The ledger: every attempt (and every period blocked or skipped, and every enrolment's
    /// initial payment), oldest first.
    ///
    /// Each entry: subscription, period (due date YYYY-MM-DD as in forecast --json,
    /// "adhoc:REF", or "initial" for an enrolment), period_index, attempt, order number,
    /// amount, currency, state (pending, not_sent, unknown, approved, declined, not_received,
    /// quarantined, blocked, skipped, parked), sent_at, response code, checkvalue (verified,
    /// mismatch, absent), reason, at. Times are RFC 3339 UTC, whole seconds. A subscription the
    /// database does not know: exit 1.
    ///
    /// Examples:
    ///   recurrentd history acme-1001
    ///   recurrentd history --since 2027-01-01T00:00:00Z --until 2027-02-01T00:00:00Z --json
    ///   recurrentd history --state declined,quarantined --limit 20
    ///   recurrentd history acme-1001 --events     (every ledger event: see `audit`)
    #[command(verbatim_doc_comment)]
    History(HistoryArgs),

    /// The outcomes for the merchant's systems: charge approved, declined, failed for good,
    /// waiting for an operator, refunds, subscription changes — the ledger's merchant-facing
    /// events, exactly as recorded, oldest first.
    ///
    /// Each event has a cursor (increasing); --since CURSOR prints only the events after it, so
    /// a script that keeps the last cursor it saw resumes without gaps or repeats. --follow keeps
    /// printing new events as the daemon records them (like `stripe listen`). --json prints one
    /// object per line, the same body the webhook POSTs: id (evt_<prefix>_<cursor>, stable),
    /// cursor, type (the ledger event's kind), created_at, subscription, data (amounts are
    /// strings). The table shows each event's webhook delivery (pending, delivered, dead).
    /// Safe while the daemon runs (read-only). --redeliver-dead queues the webhook's dead letters
    /// again.
    ///
    /// Examples:
    ///   recurrentd events --since 1200
    ///   recurrentd events --json --follow | jq -c 'select(.type == "charge_declined")'
    ///   recurrentd events --redeliver-dead
    #[command(verbatim_doc_comment)]
    Events(EventsArgs),

    /// The audit trail: every ledger event, oldest first, with who and why.
    ///
    /// Each event: sequence number, time (UTC and billing.timezone), kind, subscription, who
    /// (the operator's user name for resume, resolve, remove-file, charge, breaker reset and
    /// clock ack; `file NAME` for schedule changes; `enroll`; else `daemon`), why (the --reason
    /// given, or the recorded reason or outcome), and for a schedule change each changed
    /// field before -> after. --json prints one array; each object also has the event's whole
    /// record ("detail"). Safe while the daemon runs (read-only).
    ///
    /// Examples:
    ///   recurrentd audit acme-1001
    ///   recurrentd audit --since 2027-01-01T00:00:00Z --json | jq -c '.[] | select(.who != "daemon")'
    #[command(verbatim_doc_comment)]
    Audit(AuditArgs),

    /// Queue an ad-hoc charge (a balance top-up, say) for the daemon to make.
    ///
    /// The MIT COF agreement lets the merchant charge any amount at any time, within the limits
    /// the customer agreed to: they are checked now (a charge they forbid is refused at once with
    /// the reason, exit 1), again when the daemon makes the attempt, and once more just before it
    /// leaves. --reference is your unique reference (a ticket number): running the same command
    /// again shows the first request and never charges twice. The daemon's next sweep sends it;
    /// `history SUBSCRIPTION` shows it as period `adhoc:<reference>`. Not retried after a
    /// decline. It counts as a charge for the agreement's period limit: a scheduled period that
    /// falls due within period_days after it is deferred or skipped. Exit 0 queued or already requested; 1 refused (limits, unknown subscription,
    /// reference used for another amount).
    ///
    /// A request the daemon has not made within engine.adhoc_max_age_hours (default 24) of
    /// being queued is closed as failed instead of being charged late (ledger event
    /// adhoc_expired). --cancel REF closes a queued request before the daemon makes its attempt
    /// (ledger event adhoc_cancelled, with your user name and --reason); it is refused (exit 1)
    /// once an attempt was sent or is being sent, or when the request is already settled.
    ///
    /// Examples:
    ///   recurrentd charge acme-1001 --amount 250.00 --reference TICKET-4711 --reason "top-up"
    ///   recurrentd charge acme-1001 --cancel TICKET-4711 --reason "customer changed their mind"
    #[command(verbatim_doc_comment)]
    Charge(ChargeArgs),

    /// Charge a subscription again after a hard decline (the customer fixed the card).
    ///
    /// Example:
    ///   recurrentd resume acme-1001 --reason "customer updated the card, ticket 4711"
    #[command(verbatim_doc_comment)]
    Resume(ResumeArgs),

    /// Settle a parked or quarantined charge by hand (outcome still unknown after
    /// engine.park_after_hours, or answers that failed verification), after looking the order
    /// up at Assist's merchant portal.
    ///
    /// --paid: the portal shows it approved; it is booked as paid (checkvalue absent: attested
    /// by you, not verified) and the subscription goes on from its next period. --not-charged:
    /// the portal has no charge for it; the attempt becomes not_received and its period is open
    /// again, so the daemon's next sweep charges it under a NEW order number, within every limit
    /// and the period's retry window. Only a parked or quarantined attempt can be resolved. Your
    /// user name and
    /// --reason go into the ledger, in the same transaction as the change. If the daemon settles
    /// the attempt first, nothing is written and you are told what it became. Exit 0 recorded;
    /// 1 not found, not parked, or settled by the daemon meanwhile.
    ///
    /// Examples:
    ///   recurrentd resolve 7KQ2M9XA-acme-1001-3-1 --paid --reason "portal: approved, ticket 4711"
    ///   recurrentd resolve 7KQ2M9XA-acme-1001-3-1 --not-charged --reason "portal: no such order"
    #[command(verbatim_doc_comment)]
    Resolve(ResolveArgs),

    /// Compare the gateway's books for a day with the ledger (the daemon does it daily).
    ///
    /// Reads every order the gateway filed in the local day (billing.timezone; default
    /// yesterday) through resultbydate, verifies each record's checkvalue, and compares them
    /// with the ledger by order number under this database's prefix. Findings: late_booked (the
    /// gateway charged an order still unresolved or quarantined here: booked now as a verified
    /// approval), unbooked_charge (charged, but settled otherwise here: the subscription is held),
    /// double_approval (two approved orders for one period: held), amount_mismatch,
    /// not_at_gateway (approved here, absent or not approved there), refund_mismatch (approved
    /// here, Canceled / PartialCanceled there, and this database's refunds do not account for
    /// it: a refund made outside recurrentd?), unknown_order (our prefix,
    /// unknown here), integrity (a record whose checkvalue does not verify: never taken as paid).
    /// Each is a ledger event books_<kind> and an item in `status` until --ack; a clean day is a
    /// books_clean event. Running a day again records nothing twice. Safe while the daemon runs.
    /// Exit 0 clean; 1 findings (this run's or earlier ones for that day); 69 the gateway's
    /// books could not be read (nothing compared).
    ///
    /// Examples:
    ///   recurrentd books --date 2027-03-14
    ///   recurrentd books --json | jq '.findings[] | {kind, order_number}'
    ///   recurrentd books --ack 12 --reason "refunded the second charge, ticket 4711"
    #[command(verbatim_doc_comment)]
    Books(BooksArgs),

    /// Confirm that a missing schedule file is gone for good, removing its subscriptions.
    ///
    /// When a schedule file the daemon had accepted disappears from the folder (a rename, a
    /// deploy that emptied the folder, a wrong schedules.dir), its subscriptions are held: not
    /// charged and not removed, with an error in the log and an item in `status`. If the file
    /// comes back they resume. If it is gone on purpose, this removes them for good (their ids
    /// stay reserved: a new agreement needs a new id); your user name and --reason go into the
    /// ledger. Refused while the file is in the folder. Exit 0 removed; 1 not missing or unknown.
    ///
    /// Example:
    ///   recurrentd remove-file old-plans.toml --reason "plans moved to 2027.toml, ticket 88"
    #[command(verbatim_doc_comment)]
    RemoveFile(RemoveFileArgs),

    /// The circuit breaker that stops new charges after repeated integrity failures.
    #[command(subcommand)]
    Breaker(BreakerCommand),

    /// The clock hold that stops new charges when the clock jumped (forward or back between two
    /// sweeps, behind the last sweep, or a sweep that would skip more than
    /// engine.max_skipped_periods periods of one subscription at once).
    ///
    /// Example:
    ///   recurrentd clock ack --reason "NTP fixed; date checked against two sources"
    #[command(subcommand, verbatim_doc_comment)]
    Clock(ClockCommand),

    /// Write a consistent copy of the database (safe while the daemon runs), or check one.
    ///
    /// The copy is owner-only, synced, checked with PRAGMA integrity_check, and never written
    /// over an existing file (exit 1: choose another name). It is one self-contained file that
    /// status, history and forecast read directly, read-only (RECURRENTD_DATABASE__PATH=copy).
    /// --verify checks an existing copy without changing it: exit 0 usable, 1 not a recurrentd
    /// database (or a newer schema), 74 damaged.
    ///
    /// Examples:
    ///   recurrentd backup /var/backups/recurrentd-$(date +%F).db
    ///   recurrentd backup --verify /var/backups/recurrentd-2027-01-31.db
    ///   RECURRENTD_DATABASE__PATH=/var/backups/recurrentd-2027-01-31.db recurrentd history acme-1001
    #[command(verbatim_doc_comment)]
    Backup(BackupArgs),

    /// Validate the config and every schedule file.
    ///
    /// Reports every problem of every file as `path:line:column: field: message` on stderr,
    /// sorted by line, with "did you mean" for a misspelt key; warns about missing limits and
    /// secrets, and exits 0 only when everything is valid (1 otherwise, 78 for a broken config).
    /// --json prints one object on stdout instead: every file accepted or refused, with its
    /// diagnostics (severity, file, line, column, field, message).
    ///
    /// Examples:
    ///   recurrentd --config /etc/recurrentd/config.toml check
    ///   recurrentd check --json | jq '.files[] | select(.accepted | not)'
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),

    /// List the upcoming charges of every subscription.
    ///
    /// Shows each charge's date and instant, amount and currency, marks those the agreed limits
    /// would block or skip with the reason, and totals the charges per currency. Files with errors
    /// are left out (and reported on stderr, with exit code 1).
    ///
    /// With a database (database.path; opened read-only) each subscription continues from its
    /// ledger: after its last recorded period, the period limit counted from its real last
    /// charge; recorded periods in the window are shown (charged, failed, blocked, skipped,
    /// quarantined, unresolved), an open period's retry as "retry", and a subscription waiting
    /// for an operator as "attention" with nothing after it. Without one: the files alone.
    ///
    /// Examples:
    ///   recurrentd forecast --days 90
    ///   recurrentd forecast --json | jq '.totals'
    #[command(verbatim_doc_comment)]
    Forecast(ForecastArgs),

    /// Customers' saved cards at the gateway (One Click tokens): list or remove.
    #[command(subcommand)]
    Tokens(TokensCommand),

    /// Run the built-in Assist sandbox on loopback, for demos and rehearsals.
    ///
    /// It speaks Assist's wire formats (rp.cfm, orderstate.cfm, orderresult.cfm, the token
    /// services, wscancel.cfm refunds; XML and JSON), computes real check values, keeps its own book of orders and
    /// produces faults on request: bill numbers starting with 999 choose a behaviour by their
    /// last three digits (102 soft decline, 101 hard decline, 300 In Process, 408 timeout after
    /// the charge, 500 HTTP 500, 666 garbage, 777 wrong checkvalue, 999 a mix; see the README).
    /// It uses the configured merchant id, login, test mode and secrets, or its own password and
    /// salt when none are configured (and prints them, with the lines to point recurrentd at it).
    ///
    /// Example:
    ///   recurrentd sandbox --listen 127.0.0.1:8089 --latency-ms 200
    #[command(verbatim_doc_comment)]
    Sandbox(SandboxArgs),

    /// Start a subscription: make its initial recurring payment with a customer's saved card
    /// (Token Pay), then append the subscription to a schedule file.
    ///
    /// Everything is checked first with the schedule-file rules (limits consistent with the
    /// cadence and the amount, the id unused); the payment is verified (checkvalue, order,
    /// amount, currency, test mode) or confirmed by an order-status query. Only an approved
    /// payment writes the subscription (bill_number from the gateway, start one period from
    /// today), atomically, to --schedule-file (default <schedules.dir>/enrolled-<id>.toml).
    /// Asks for confirmation unless --yes. The attempt is recorded as pending in the database
    /// before the request is sent; running the same command again (same --id) first looks that
    /// order up at the gateway and never sends it again: approved, it is enrolled; declined, or
    /// not filed after engine.settle_minutes, a new attempt is made under a new order number;
    /// otherwise nothing happens (exit 69). The schedule file is locked while enroll runs: a
    /// second enroll on the same file fails at once. Exit 0 enrolled; 1 declined, the customer
    /// must act (3-D Secure, CVC), invalid input, or the file is locked; 69 unknown outcome (run
    /// the same command again later; never with another id or order number); 78 configuration.
    ///
    /// Example:
    ///   recurrentd enroll --id acme-2001 --customer 1234 \
    ///     --token 49D902C6-1CCF-4605-9228-11D0E8115C77 --amount 499.00 --currency RUB \
    ///     --every "1 month" --min-amount 100.00 --max-amount 1000.00 --period-days 28 \
    ///     --max-date 2027-12-01
    #[command(verbatim_doc_comment)]
    Enroll(EnrollArgs),

    /// Refund the whole or part of an approved charge through the gateway's cancel service.
    ///
    /// Only an approved charge of this database (by its order number, as `history` shows it),
    /// in its own currency, never more than what remains after earlier refunds; --amount
    /// defaults to all that remains. The gateway's verified view of the order must agree with
    /// the ledger before anything is sent. The refund is recorded as pending in the database
    /// before the request leaves; the gateway's reply is only a claim, and the refund is
    /// completed only when the order's verified result shows it. An unknown outcome leaves it
    /// pending (exit 69): running the same command again looks it up first and never sends it
    /// twice; the same command after its refund completed reports it and sends nothing (to
    /// refund the same amount again, give another --reason). One refund command runs at a time
    /// per database. The ledger keeps the charge's approval and adds the refund
    /// (refund_requested, refund_pending, refund_completed, refund_failed); the charge still
    /// counts for the subscription's limits. Exit 0 refunded; 1 refused (not ours, not
    /// approved, more than remains, refused by the gateway, another refund running); 69 outcome
    /// unknown (run the same command again later).
    ///
    /// Examples:
    ///   recurrentd refund 7KQ2M9XA-acme-1001-3-1 --reason "charged twice by mistake"
    ///   recurrentd refund 7KQ2M9XA-acme-1001-3-1 --amount 50.00 --reason "goodwill" --json
    #[command(verbatim_doc_comment)]
    Refund(RefundArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); no config needed.
    ///
    /// Examples:
    ///   recurrentd completions bash > /etc/bash_completion.d/recurrentd
    ///   recurrentd completions zsh > "${fpath[1]}/_recurrentd"
    ///   recurrentd completions fish > ~/.config/fish/completions/recurrentd.fish
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),

    /// Print the man page (roff) to stdout, or write one page per command into --dir; no config
    /// needed.
    ///
    /// Examples:
    ///   recurrentd man | man -l -
    ///   recurrentd man --dir /usr/local/share/man/man1
    #[command(verbatim_doc_comment)]
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON for scripts (on stdout) instead of lines on stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// How many days ahead to look.
    #[arg(long, default_value_t = 31, value_parser = clap::value_parser!(u32).range(1..=3660))]
    pub days: u32,

    /// Start from this instant instead of now (RFC 3339, e.g. 2027-01-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<DateTime<Utc>>,

    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    // Generated from the command line's definitions alone: no config needed.
    match &cli.command {
        Command::Completions(args) => return ExitCode::from(docs::completions(args)),
        Command::Man(args) => return ExitCode::from(docs::man(args)),
        _ => {}
    }
    let config_path = cli.config.unwrap_or_else(config::default_config_path);
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("recurrentd: configuration error: {error}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    init_logging(config.log.format);
    if let Some(postgres) = &config.database.postgres
        && !works_on_postgres(&cli.command)
    {
        eprintln!(
            "recurrentd: {}: not available with database.url (PostgreSQL, instance {}) yet; \
             only `run`, `status`, `check`, `tokens` and `sandbox` are. The SQLite database \
             (database.path) is not used when database.url is set.",
            command_name(&cli.command),
            postgres.instance
        );
        return ExitCode::from(exit::CONFIG);
    }
    let code = match cli.command {
        Command::Run(args) => run::run(&config, &args),
        Command::Check(args) => check(&config, &args),
        Command::Status(args) => ops::status(&config, &args),
        Command::History(args) => ops::history(&config, &args),
        Command::Events(args) => events::run(&config, &args),
        Command::Audit(args) => ops::audit(&config, &args),
        Command::Resume(args) => ops::resume(&config, &args),
        Command::Resolve(args) => ops::resolve(&config, &args),
        Command::RemoveFile(args) => ops::remove_file(&config, &args),
        Command::Charge(args) => charge::run(&config, &args),
        Command::Books(args) => books::run(&config, &args),
        Command::Breaker(command) => ops::breaker(&config, &command),
        Command::Clock(command) => ops::clock(&config, &command),
        Command::Backup(args) => ops::backup(&config, &args),
        Command::Forecast(args) => forecast(&config, &args),
        Command::Tokens(command) => tokens::run(&config, &command),
        Command::Sandbox(args) => sandbox::run(&config, &args),
        Command::Enroll(args) => enroll::run(&config, &args),
        Command::Refund(args) => refund::run(&config, &args),
        Command::Completions(_) | Command::Man(_) => exit::OK,
    };
    ExitCode::from(code)
}

/// Whether a command works with `database.url` (PostgreSQL). The others refuse, rather than
/// read or write the SQLite database beside it.
fn works_on_postgres(command: &Command) -> bool {
    matches!(
        command,
        Command::Run(_)
            | Command::Status(_)
            | Command::Check(_)
            | Command::Tokens(_)
            | Command::Sandbox(_)
            | Command::Completions(_)
            | Command::Man(_)
    )
}

/// The command's name as typed.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Run(_) => "run",
        Command::Check(_) => "check",
        Command::Status(_) => "status",
        Command::History(_) => "history",
        Command::Events(_) => "events",
        Command::Audit(_) => "audit",
        Command::Resume(_) => "resume",
        Command::Resolve(_) => "resolve",
        Command::RemoveFile(_) => "remove-file",
        Command::Charge(_) => "charge",
        Command::Books(_) => "books",
        Command::Breaker(_) => "breaker",
        Command::Clock(_) => "clock",
        Command::Backup(_) => "backup",
        Command::Forecast(_) => "forecast",
        Command::Tokens(_) => "tokens",
        Command::Sandbox(_) => "sandbox",
        Command::Enroll(_) => "enroll",
        Command::Refund(_) => "refund",
        Command::Completions(_) => "completions",
        Command::Man(_) => "man",
    }
}

/// Logs to stderr: human-readable text (colour only on a terminal, so journald gets plain
/// lines), or one JSON object per line for log shippers. `RUST_LOG` overrides the level (info).
fn init_logging(format: config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
    };
}

/// A small runtime for commands that make a few gateway calls and exit.
fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("recurrentd: cannot start the async runtime: {error}");
            exit::INTERNAL
        })
}

fn load_schedules(config: &Config) -> Result<DirReport, u8> {
    schedule::load_dir(&config.schedules.dir).map_err(|error| {
        eprintln!("recurrentd: {error}");
        exit::PROBLEMS
    })
}

/// One problem in `check --json`.
#[derive(serde::Serialize)]
struct CheckProblem {
    /// `error` or `warning`.
    severity: schedule::Severity,
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    field: Option<String>,
    message: String,
}

/// One schedule file in `check --json`.
#[derive(serde::Serialize)]
struct CheckedFile {
    file: String,
    /// No error: its subscriptions are in force once the daemon reads it.
    accepted: bool,
    subscriptions: usize,
    diagnostics: Vec<CheckProblem>,
}

fn check(config: &Config, args: &CheckArgs) -> u8 {
    let mut code = exit::OK;
    let mut config_problems = Vec::new();
    for name in SecretName::ALL {
        if name == SecretName::PrivateKey && !config.gateway.sign_requests {
            continue;
        }
        let (severity, message) = match config::load_secret(&config.gateway, name) {
            Ok(Some(_)) => continue,
            Ok(None) => (
                schedule::Severity::Warning,
                format!(
                    "the {name} is not configured ({}, $CREDENTIALS_DIRECTORY/{}, or {} in test \
                     mode); commands that talk to the gateway will refuse to start",
                    name.config_key(),
                    name.credential(),
                    name.env_var()
                ),
            ),
            Err(error) => {
                code = exit::PROBLEMS;
                (schedule::Severity::Error, error.to_string())
            }
        };
        config_problems.push(CheckProblem {
            severity,
            file: config.source.display().to_string(),
            line: None,
            column: None,
            field: None,
            message,
        });
    }
    // The webhook's secret, when a webhook is configured: `run` refuses to start without it.
    if config.webhook.is_some() {
        match config::load_webhook_secret(config) {
            Ok(Some(_)) => {}
            Ok(None) => {
                eprintln!(
                    "{}: [webhook] is set but its secret is not (webhook.secret_file, \
                     $CREDENTIALS_DIRECTORY/webhook-secret, or RECURRENTD_SECRET_WEBHOOK in test \
                     mode); `run` will refuse to start",
                    config.source.display()
                );
                code = exit::PROBLEMS;
            }
            Err(error) => {
                eprintln!("{}: {error}", config.source.display());
                code = exit::PROBLEMS;
            }
        }
    }
    let secret_warnings = config_problems
        .iter()
        .filter(|p| p.severity == schedule::Severity::Warning)
        .count();
    let report = match load_schedules(config) {
        Ok(report) => report,
        Err(code) => return code,
    };
    let subscriptions = report.subscriptions().count();
    let errors = report.error_count();
    let warnings = report.warning_count() + secret_warnings;
    let bad_files = report.files.iter().filter(|f| f.has_errors()).count();
    let code = if errors > 0 { exit::PROBLEMS } else { code };
    if args.json {
        let files: Vec<CheckedFile> = report
            .files
            .iter()
            .map(|f| CheckedFile {
                file: f.path.display().to_string(),
                accepted: !f.has_errors(),
                subscriptions: if f.has_errors() {
                    0
                } else {
                    f.subscriptions.len()
                },
                diagnostics: f
                    .diagnostics
                    .iter()
                    .map(|d| CheckProblem {
                        severity: d.severity,
                        file: d.path.display().to_string(),
                        line: Some(d.line),
                        column: Some(d.column),
                        field: Some(d.field.clone()),
                        message: d.message.clone(),
                    })
                    .collect(),
            })
            .collect();
        let json = serde_json::json!({
            "valid": code == exit::OK,
            "config": {
                "file": config.source.display().to_string(),
                "diagnostics": config_problems,
            },
            "files": files,
            "subscriptions": subscriptions,
            "errors": errors,
            "warnings": warnings,
            "refused_files": bad_files,
        });
        let mut out = std::io::stdout().lock();
        let printed = serde_json::to_writer_pretty(&mut out, &json)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out));
        if let Err(error) = printed
            && error.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("recurrentd: cannot write: {error}");
            return exit::INTERNAL;
        }
        return code;
    }
    for problem in &config_problems {
        let warning = if problem.severity == schedule::Severity::Warning {
            "warning: "
        } else {
            ""
        };
        eprintln!("{}: {warning}{}", problem.file, problem.message);
    }
    for diagnostic in report.diagnostics() {
        eprintln!("{diagnostic}");
    }
    println!(
        "{} file(s), {subscriptions} valid subscription(s), {errors} error(s) in {bad_files} file(s), {warnings} warning(s)",
        report.files.len()
    );
    code
}

fn forecast(config: &Config, args: &ForecastArgs) -> u8 {
    let report = match load_schedules(config) {
        Ok(report) => report,
        Err(code) => return code,
    };
    for diagnostic in report.diagnostics() {
        eprintln!("{diagnostic}");
    }
    let calendar = Calendar::from(&config.billing);
    let from = args.from.unwrap_or_else(Utc::now);
    let until = from + Duration::days(i64::from(args.days));
    let database = &config.database.path;
    let forecast = match Store::open(database, Access::ReadOnly) {
        Ok(store) => {
            let mut ledgers = Vec::new();
            for subscription in report.subscriptions() {
                match store.ledger_state(&subscription.id) {
                    Ok(ledger) => ledgers.push((subscription, ledger)),
                    Err(error) => {
                        eprintln!("recurrentd: {error}");
                        return exit::store(&error);
                    }
                }
            }
            forecast::forecast_from_ledger(
                ledgers.iter().map(|(s, l)| (*s, l)),
                &calendar,
                config.engine.max_attempts_per_30_days,
                from,
                until,
            )
        }
        Err(StoreError::Missing { .. }) => {
            eprintln!(
                "recurrentd: no database at {}: forecasting from the schedule files alone, as if \
                 nothing had been charged yet",
                database.display()
            );
            forecast::forecast(report.subscriptions(), &calendar, from, until)
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
    };
    let printed = if args.json {
        print_json(&forecast)
    } else {
        print_table(&forecast, &calendar, database)
    };
    if let Err(error) = printed {
        // A closed pipe (`| head`) is not worth a complaint; anything else is.
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("recurrentd: cannot write the forecast: {error}");
            return exit::INTERNAL;
        }
    }
    if report.error_count() > 0 {
        exit::PROBLEMS
    } else {
        exit::OK
    }
}

fn print_json(forecast: &forecast::Forecast) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, forecast)?;
    writeln!(out)
}

fn print_table(
    forecast: &forecast::Forecast,
    calendar: &Calendar,
    database: &std::path::Path,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Forecast {} → {} (times in {}; {})",
        forecast
            .from
            .with_timezone(&calendar.timezone)
            .format("%Y-%m-%d %H:%M"),
        forecast
            .until
            .with_timezone(&calendar.timezone)
            .format("%Y-%m-%d %H:%M"),
        forecast.timezone,
        match forecast.source {
            Source::Ledger => format!("history from the ledger in {}", database.display()),
            Source::Schedules => "schedule files only, no history".to_string(),
        }
    )?;
    if forecast.entries.is_empty() {
        writeln!(out, "No charges in this period.")?;
        return Ok(());
    }
    let id_width = forecast
        .entries
        .iter()
        .map(|e| e.subscription.len())
        .max()
        .unwrap_or(12)
        .max(12);
    writeln!(
        out,
        "{:<16}  {:<20}  {:<id_width$}  {:>6}  {:>14}  {:<3}  {:<11}  NOTE",
        "LOCAL TIME", "INSTANT (UTC)", "SUBSCRIPTION", "PERIOD", "AMOUNT", "CUR", "STATUS"
    )?;
    for entry in &forecast.entries {
        let status = match entry.status {
            // What an operator must see at a glance.
            Status::Blocked => "BLOCKED",
            Status::Failed => "FAILED",
            Status::Quarantined => "QUARANTINED",
            Status::Attention => "ATTENTION",
            other => other.as_str(),
        };
        writeln!(
            out,
            "{:<16}  {:<20}  {:<id_width$}  {:>6}  {:>14}  {:<3}  {:<11}  {}",
            entry
                .at
                .with_timezone(&calendar.timezone)
                .format("%Y-%m-%d %H:%M"),
            entry.at.format("%Y-%m-%dT%H:%M:%SZ"),
            entry.subscription,
            format!("#{}", entry.period),
            entry.amount.to_string(),
            entry.currency.to_string(),
            status,
            entry.reason.as_deref().unwrap_or(""),
        )?;
    }
    let count = |wanted: &[Status]| {
        forecast
            .entries
            .iter()
            .filter(|e| wanted.contains(&e.status))
            .count()
    };
    let charges = count(&[Status::Charge, Status::Retry]);
    let blocked = count(&[Status::Blocked, Status::Skipped]);
    let recorded = count(&[
        Status::Charged,
        Status::Failed,
        Status::Quarantined,
        Status::Unresolved,
    ]);
    let attention = count(&[Status::Attention]);
    write!(
        out,
        "\n{charges} charge(s) to come, {blocked} blocked or skipped"
    )?;
    if forecast.source == Source::Ledger {
        write!(out, ", {recorded} already in the ledger")?;
    }
    if attention > 0 {
        write!(out, ", {attention} subscription(s) waiting for an operator")?;
    }
    writeln!(out, ". Totals of the charges to come:")?;
    for (currency, total) in &forecast.totals {
        writeln!(out, "  {currency} {total}")?;
    }
    Ok(())
}
