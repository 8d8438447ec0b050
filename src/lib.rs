//! recurrentd: merchant-initiated recurring card charges (MIT COF) through IPS Assist.
//!
//! # Layout
//!
//! - [`money`]: the amount and currency types and Assist's formats; amounts are never floating point.
//! - [`config`]: `config.toml`, environment overrides and secrets.
//! - [`schedule`]: schedule files → validated subscriptions, with every problem located.
//! - [`billing`]: the pure recurrence core: due dates, due instants, limit verdicts, catch-up.
//! - [`books`]: the daily comparison of the gateway's books (resultbydate) with the ledger.
//! - [`forecast`]: upcoming charges, computed by the same decisions the engine makes.
//! - [`gateway`]: the IPS Assist wire format and the only code that talks to Assist: check
//!   values, request signatures, reply parsing and classification, the HTTP client, and the
//!   built-in sandbox.
//! - [`store`]: the SQLite database (the only module that knows SQL): open modes and the daemon
//!   lock, checked pragmas, migrations, the append-only ledger, and schedule sync.
//! - [`lifecycle`]: the charge lifecycle's data: attempt and period states, `Purpose`, `Job`,
//!   `History`, `AttemptChange` and its ledger events (plain data; the store persists it).
//! - [`engine`]: the charge lifecycle: due sweep → intent → gateway → verified outcome → ledger,
//!   with reconciliation, retries, dunning, parking, the circuit breaker and pacing.
//! - [`clock`]: the engine's time source (the system clock, or a manual one in tests).
//! - [`outbox`]: delivering the ledger's merchant-facing events: the signed webhook.
//! - [`daemon`]: `run`: the store, schedule sync, reconciliation and the tick loop, signals.
//! - [`metrics`]: Prometheus metrics and their opt-in loopback listener.
//! - [`failpoint`]: named crash points for the crash tests (debug builds only).
//! - [`cli`]: the operator commands behind `main.rs`.
//! - [`timefmt`]: the one time format of every JSON output (RFC 3339, `Z`, whole seconds).
//!
//! See ARCHITECTURE.md for the data's path and the invariants.

pub mod billing;
pub mod books;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod failpoint;
pub mod forecast;
pub mod gateway;
pub mod lifecycle;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod schedule;
pub mod store;
pub mod timefmt;
