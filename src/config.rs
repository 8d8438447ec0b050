//! `config.toml`: loading, validation, and the secrets it points at.
//!
//! The file is read with figment (the file, then `RECURRENTD_SECTION__KEY` environment
//! overrides) into raw structs with `deny_unknown_fields`, then checked into a [`Config`] whose
//! values are already parsed (time zone, charge time, paths resolved against the config file's
//! folder). Any problem is one [`ConfigError`] that names the file and the key.
//!
//! Secrets never pass through figment, whose error messages quote the offending value. They are
//! read by [`load_secret`] from a file named in config, from `$CREDENTIALS_DIRECTORY/<name>`
//! (systemd `LoadCredential=`), or from an environment variable in test mode only, and are held
//! as [`SecretString`], whose `Debug` is redacted. A secret file outside the credentials
//! directory must be the file itself (no symbolic link) and owned by the user running
//! recurrentd.
//!
//! Config depends on the domain, never the reverse: `CatchUp` is `billing`'s and
//! `ResponseFormat` is `gateway`'s (both re-exported here), and the conversions from config
//! sections into domain values (`Calendar`, the gateway client's `Settings`) are written here.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveTime;
use chrono_tz::Tz;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::billing::Calendar;
pub use crate::billing::CatchUp;
pub use crate::gateway::ResponseFormat;
use crate::gateway::client::Settings;

/// Prefix of the environment variables that override config keys: `RECURRENTD_GATEWAY__URL`.
pub const ENV_PREFIX: &str = "RECURRENTD_";

/// Environment variables under [`ENV_PREFIX`] that are not config keys (after the prefix).
const NON_CONFIG_ENV: &[&str] = &[
    "CONFIG",
    "SECRET_PASSWORD",
    "SECRET_SALT",
    "SECRET_PRIVATE_KEY",
    "SECRET_WEBHOOK",
    "SECRET_DATABASE",
    "LOG",
    // The crash tests' fail points (debug builds only; see `failpoint`).
    "FAILPOINT",
    // The PostgreSQL store tests' server (`store::postgres` tests, `.ci/run`): exported for the
    // whole test run, so the binaries the integration tests start see it too.
    "TEST_PG_URL",
];

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub source: PathBuf,
    pub database: DatabaseConfig,
    pub schedules: SchedulesConfig,
    pub gateway: GatewayConfig,
    pub billing: BillingConfig,
    pub engine: EngineConfig,
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub books: BooksConfig,
    /// The `[webhook]` section: outcomes POSTed to the merchant's systems. `None`: no webhook
    /// (the outbox is still kept, for `recurrentd events`).
    pub webhook: Option<WebhookConfig>,
    pub metrics: MetricsConfig,
}

/// Where and how ledger events are delivered (the `[webhook]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// The endpoint (https, or http to a loopback address). Never logged: it may hold a token.
    pub url: String,
    /// The signing secret's file (else `$CREDENTIALS_DIRECTORY/webhook-secret`, else, in test
    /// mode only, `RECURRENTD_SECRET_WEBHOOK`).
    pub secret_file: Option<PathBuf>,
    /// Seconds one delivery may take (connect included).
    pub timeout_secs: u32,
    /// An event still not delivered this long after its first attempt is given up on (shown in
    /// `status`, listed by `events`, re-queued by `events --redeliver-dead`).
    pub dead_letter_after_days: u32,
}

impl WebhookConfig {
    pub const DEFAULT_TIMEOUT_SECS: u32 = 10;
    pub const DEFAULT_DEAD_LETTER_AFTER_DAYS: u32 = 3;
}

/// The daily comparison of the gateway's books with the ledger (the `[books]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BooksConfig {
    /// Whether the daemon compares each local day once it has ended.
    pub enabled: bool,
    /// The local time (billing.timezone) after which the previous day is compared: the day
    /// has ended and the gateway has filed its last orders.
    pub run_after: NaiveTime,
}

impl Default for BooksConfig {
    fn default() -> Self {
        BooksConfig {
            enabled: true,
            run_after: NaiveTime::from_hms_opt(3, 0, 0).unwrap_or_default(),
        }
    }
}

/// The Prometheus metrics endpoint (the `[metrics]` section). Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A loopback address and port on which `GET /metrics` is served (OpenMetrics text);
    /// `None`: no listener.
    pub listen: Option<std::net::SocketAddr>,
}

/// How `recurrentd run` paces itself (the `[daemon]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// When the due sweep runs: a 6-field cron expression (seconds first), read in UTC. Only a
    /// tick: what is due comes from the database and the clock, so a missed or extra tick can
    /// neither lose nor double a charge.
    pub sweep_cron: String,
    /// Re-read the schedule files when one changes (polled, debounced), besides on SIGHUP.
    pub watch_schedules: bool,
    /// How long a stopping daemon lets outstanding charges settle before exiting (below
    /// systemd's `TimeoutStopSec`).
    pub shutdown_deadline_secs: u32,
    /// Ticks failing in a row (a storage error, say) after which the daemon exits with an error
    /// (70) instead of retrying for ever; systemd restarts it.
    pub max_failed_ticks: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            sweep_cron: "0 * * * * *".to_string(),
            watch_schedules: true,
            shutdown_deadline_secs: 50,
            max_failed_ticks: 5,
        }
    }
}

/// How the charge engine retries, waits and gives up (see the README's "Charge lifecycle").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// How long after a send a "not found" answer proves nothing yet (the gateway may not have
    /// filed the order); after it, two not-found answers mean the charge was never made.
    pub settle_minutes: u32,
    /// An attempt whose outcome is still unknown after this long is parked for an operator.
    pub park_after_hours: u32,
    /// Days after a soft decline at which the period is tried again (one retry per entry), never
    /// past the next period or the agreement's end date.
    pub dunning_days: Vec<u32>,
    /// Most attempts (all periods) per subscription in any 30 days (card-scheme rules).
    pub max_attempts_per_30_days: u32,
    /// Integrity failures (wrong checkvalue, a reply about another order) within
    /// `breaker_window_minutes` that stop all new charges until an operator clears it.
    pub breaker_failures: u32,
    pub breaker_window_minutes: u32,
    /// Most periods of one subscription one sweep may settle as skipped among those that fell
    /// due since the previous sweep; more means the clock jumped or the daemon was down a long
    /// time, and new charges stop until an operator acknowledges the clock.
    pub max_skipped_periods: u32,
    /// An ad-hoc charge (`recurrentd charge`) still not sent this long after it was requested is
    /// closed as failed when the engine next looks at it, instead of being made late.
    pub adhoc_max_age_hours: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            settle_minutes: 30,
            park_after_hours: 72,
            dunning_days: vec![1, 3, 7],
            max_attempts_per_30_days: 8,
            breaker_failures: 5,
            breaker_window_minutes: 60,
            max_skipped_periods: 31,
            adhoc_max_age_hours: 24,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// SQLite database file (the default store: one daemon per file).
    pub path: PathBuf,
    /// PostgreSQL instead (`database.url`): several instances sharing one database.
    pub postgres: Option<PostgresConfig>,
}

/// A PostgreSQL database shared by several instances (`database.url` and its keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The server, as a `postgres://` URL without a password.
    pub url: String,
    /// A file holding the password (else `$CREDENTIALS_DIRECTORY/database-password`, else none:
    /// a local socket with peer authentication, say).
    pub password_file: Option<PathBuf>,
    /// This instance's name among those sharing the database (leases, `status`): by default
    /// the host name. Two instances must never share one.
    pub instance: String,
    /// How long an instance's claim on work lasts without being renewed: after it dies, others
    /// take its work over within this long. Shorter than `engine.settle_minutes`.
    pub lease: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct SchedulesConfig {
    /// Folder whose `*.toml` files hold the subscriptions.
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Base URL of the Assist server, e.g. `https://payments.demo.paysecure.ru`.
    pub url: String,
    /// Assist's Merchant_ID. A string: it is an identifier, not a number to compute with.
    pub merchant_id: String,
    /// Web-service login (not secret on its own; the password is).
    pub login: String,
    pub password_file: Option<PathBuf>,
    pub salt_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// Whether the merchant's Assist account is in test mode; results must agree with it.
    pub test_mode: bool,
    /// Whether requests that define a `Signature` (Token Pay) carry one.
    pub sign_requests: bool,
    /// Response format asked of the gateway.
    pub format: ResponseFormat,
    pub connect_timeout_secs: u64,
    pub timeout_secs: u64,
    /// Most requests to the gateway at once.
    pub max_in_flight: u32,
    /// Most requests to the gateway per second.
    pub requests_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct BillingConfig {
    /// Time zone in which due dates, `charge_time`, `period_days` and `max_date` are read.
    pub timezone: Tz,
    /// Local time of day at which a period's charge becomes due.
    pub charge_time: NaiveTime,
    /// What to do with periods missed while the daemon was not running.
    pub catch_up: CatchUp,
    /// How long after its due instant a period still counts as on time, not missed.
    pub grace_hours: u32,
}

impl From<&BillingConfig> for Calendar {
    fn from(billing: &BillingConfig) -> Calendar {
        Calendar {
            timezone: billing.timezone,
            charge_time: billing.charge_time,
            catch_up: billing.catch_up,
            grace: chrono::Duration::hours(i64::from(billing.grace_hours)),
        }
    }
}

// The gateway client's settings from its config section, here so that `gateway` never reads
// config: config depends on the domain, not the other way round.
impl Settings {
    pub fn from_config(
        config: &GatewayConfig,
        password: SecretString,
        salt: SecretString,
    ) -> Settings {
        Settings {
            url: config.url.clone(),
            merchant_id: config.merchant_id.clone(),
            login: config.login.clone(),
            password,
            salt,
            test_mode: config.test_mode,
            format: config.format,
            connect_timeout: std::time::Duration::from_secs(config.connect_timeout_secs),
            timeout: std::time::Duration::from_secs(config.timeout_secs),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration problem: one readable message that names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

// The raw shape of the file. Every section and key is listed; anything else is an error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    schedules: RawSchedules,
    gateway: RawGateway,
    #[serde(default)]
    billing: RawBilling,
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    webhook: Option<RawWebhook>,
    #[serde(default)]
    books: RawBooks,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret_file: Option<PathBuf>,
    #[serde(default = "default_webhook_timeout")]
    timeout_secs: u32,
    #[serde(default = "default_dead_letter_after_days")]
    dead_letter_after_days: u32,
}

fn default_webhook_timeout() -> u32 {
    WebhookConfig::DEFAULT_TIMEOUT_SECS
}

fn default_dead_letter_after_days() -> u32 {
    WebhookConfig::DEFAULT_DEAD_LETTER_AFTER_DAYS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBooks {
    enabled: bool,
    run_after: String,
}

impl Default for RawBooks {
    fn default() -> Self {
        let d = BooksConfig::default();
        RawBooks {
            enabled: d.enabled,
            run_after: d.run_after.format("%H:%M").to_string(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    sweep_cron: String,
    watch_schedules: bool,
    shutdown_deadline_secs: u32,
    max_failed_ticks: u32,
}

impl Default for RawDaemon {
    fn default() -> Self {
        let d = DaemonConfig::default();
        RawDaemon {
            sweep_cron: d.sweep_cron,
            watch_schedules: d.watch_schedules,
            shutdown_deadline_secs: d.shutdown_deadline_secs,
            max_failed_ticks: d.max_failed_ticks,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEngine {
    settle_minutes: u32,
    park_after_hours: u32,
    dunning_days: Vec<u32>,
    max_attempts_per_30_days: u32,
    breaker_failures: u32,
    breaker_window_minutes: u32,
    max_skipped_periods: u32,
    adhoc_max_age_hours: u32,
}

impl Default for RawEngine {
    fn default() -> Self {
        let d = EngineConfig::default();
        RawEngine {
            settle_minutes: d.settle_minutes,
            park_after_hours: d.park_after_hours,
            dunning_days: d.dunning_days,
            max_attempts_per_30_days: d.max_attempts_per_30_days,
            breaker_failures: d.breaker_failures,
            breaker_window_minutes: d.breaker_window_minutes,
            max_skipped_periods: d.max_skipped_periods,
            adhoc_max_age_hours: d.adhoc_max_age_hours,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    #[serde(default = "default_database_path")]
    path: PathBuf,
    url: Option<String>,
    password_file: Option<PathBuf>,
    instance: Option<String>,
    #[serde(default = "default_lease_secs")]
    lease_secs: u32,
}

impl Default for RawDatabase {
    fn default() -> Self {
        RawDatabase {
            path: default_database_path(),
            url: None,
            password_file: None,
            instance: None,
            lease_secs: default_lease_secs(),
        }
    }
}

fn default_lease_secs() -> u32 {
    // At least a charge and its status query (2 × gateway.timeout_secs, 60 by default), so an
    // attempt is not taken over while its own instance still waits for the answer; at most half
    // the settle window (30 minutes by default).
    150
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedules {
    #[serde(default = "default_schedules_dir")]
    dir: PathBuf,
}

impl Default for RawSchedules {
    fn default() -> Self {
        RawSchedules {
            dir: default_schedules_dir(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    url: String,
    #[serde(deserialize_with = "string_or_integer")]
    merchant_id: String,
    #[serde(deserialize_with = "string_or_integer")]
    login: String,
    password_file: Option<PathBuf>,
    salt_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    #[serde(default)]
    test_mode: bool,
    #[serde(default)]
    sign_requests: bool,
    #[serde(default = "default_format")]
    format: ResponseFormat,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: u64,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: u32,
    #[serde(default = "default_requests_per_second")]
    requests_per_second: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_charge_time")]
    charge_time: String,
    #[serde(default = "default_catch_up")]
    catch_up: CatchUp,
    #[serde(default = "default_grace_hours")]
    grace_hours: u32,
}

impl Default for RawBilling {
    fn default() -> Self {
        RawBilling {
            timezone: default_timezone(),
            charge_time: default_charge_time(),
            catch_up: default_catch_up(),
            grace_hours: default_grace_hours(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_format")]
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: default_log_format(),
        }
    }
}

fn default_database_path() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several directories separated by ':'; the first is ours.
        Some(dirs) => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            PathBuf::from(first).join("recurrentd.db")
        }
        None => PathBuf::from("recurrentd.db"),
    }
}
fn default_schedules_dir() -> PathBuf {
    PathBuf::from("schedules")
}
fn default_format() -> ResponseFormat {
    ResponseFormat::Xml
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_timeout() -> u64 {
    60
}
fn default_max_in_flight() -> u32 {
    4
}
fn default_requests_per_second() -> u32 {
    5
}
fn default_timezone() -> String {
    "Europe/Moscow".to_string()
}
fn default_charge_time() -> String {
    "10:00".to_string()
}
fn default_catch_up() -> CatchUp {
    CatchUp::Latest
}
fn default_grace_hours() -> u32 {
    24
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}

/// Accepts `"987654"` and `987654` alike for identifier keys: an environment override such as
/// `RECURRENTD_GATEWAY__MERCHANT_ID=987654` reaches figment as an integer.
fn string_or_integer<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrInteger {
        String(String),
        Integer(u64),
    }
    Ok(match StringOrInteger::deserialize(deserializer)? {
        StringOrInteger::String(text) => text,
        StringOrInteger::Integer(number) => number.to_string(),
    })
}

/// Where the config file is looked for when `--config` is not given.
pub fn default_config_path() -> PathBuf {
    match std::env::var_os("CONFIGURATION_DIRECTORY") {
        Some(dirs) => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            PathBuf::from(first).join("config.toml")
        }
        None => PathBuf::from("config.toml"),
    }
}

/// Keys that would hold a secret inline; refused with a pointer to the right place.
const INLINE_SECRET_KEYS: &[(&str, &str)] = &[
    ("gateway.password", "gateway.password_file"),
    ("gateway.salt", "gateway.salt_file"),
    ("gateway.checkvalue_salt", "gateway.salt_file"),
    ("gateway.private_key", "gateway.private_key_file"),
];

impl Config {
    /// Reads and checks the config file at `path`, with environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(path: &Path, env: Env) -> Result<Config, ConfigError> {
        let shown = path.display();
        // figment silently ignores a missing file; we do not.
        let meta = std::fs::metadata(path)
            .map_err(|e| err(format!("config file {shown}: cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(err(format!("config file {shown}: not a regular file")));
        }
        // file_exact: a relative path must not be searched for in parent folders.
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(env.ignore(NON_CONFIG_ENV).split("__"));
        for (inline, instead) in INLINE_SECRET_KEYS {
            if figment.find_value(inline).is_ok() {
                return Err(err(format!(
                    "config file {shown}: `{inline}` must not be set: secrets are never inline; \
                     name a file with `{instead}`, or use $CREDENTIALS_DIRECTORY or the \
                     environment (see the README)"
                )));
            }
        }
        let raw: RawConfig = figment.extract().map_err(|e| {
            // figment may hold several errors; each names its key and its source. Secrets are
            // not read through figment, but a syntax error quotes the offending line, which may
            // be an inline secret (`password = "…`): the source text is never shown.
            let all: Vec<String> = e
                .into_iter()
                .map(|one| {
                    // A misspelt key: the nearest known one, as `check` does for schedules.
                    let hint = match &one.kind {
                        figment::error::Kind::UnknownField(field, expected) => {
                            crate::schedule::did_you_mean(field, expected)
                                .map(|k| format!(" (did you mean `{k}`?)"))
                        }
                        _ => None,
                    };
                    format!(
                        "{}{}",
                        without_source_text(&one.to_string()),
                        hint.unwrap_or_default()
                    )
                })
                .collect();
            err(format!("config file {shown}: {}", all.join("; ")))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::check(raw, path, base)
    }

    fn check(raw: RawConfig, source: &Path, base: &Path) -> Result<Config, ConfigError> {
        let shown = source.display();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let url = raw.gateway.url.trim().to_string();
        // The URL is not echoed: a mistyped one may carry a password in its user info or query.
        match crate::gateway::client::check_base_url(&url) {
            Err(why) => {
                return Err(err(format!("config file {shown}: gateway.url: {why}")));
            }
            Ok(parsed) if parsed.scheme() == "http" && !raw.gateway.test_mode => {
                return Err(err(format!(
                    "config file {shown}: gateway.url: http:// (a loopback test server) is \
                     allowed only with gateway.test_mode = true"
                )));
            }
            Ok(_) => {}
        }
        if raw.gateway.merchant_id.is_empty()
            || !raw.gateway.merchant_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err(format!(
                "config file {shown}: gateway.merchant_id: must be Assist's numeric merchant id, \
                 written as a string, got {:?}",
                raw.gateway.merchant_id
            )));
        }
        if raw.gateway.login.is_empty() {
            return Err(err(format!("config file {shown}: gateway.login: is empty")));
        }
        if raw.gateway.connect_timeout_secs == 0 || raw.gateway.timeout_secs == 0 {
            return Err(err(format!(
                "config file {shown}: gateway.connect_timeout_secs and gateway.timeout_secs \
                 must be at least 1"
            )));
        }
        let timezone: Tz = raw.billing.timezone.parse().map_err(|_| {
            err(format!(
                "config file {shown}: billing.timezone: unknown IANA time zone {:?} \
                 (for example \"Europe/Moscow\")",
                raw.billing.timezone
            ))
        })?;
        let charge_time = parse_charge_time(&raw.billing.charge_time).ok_or_else(|| {
            err(format!(
                "config file {shown}: billing.charge_time: must be \"HH:MM\" (24-hour), got {:?}",
                raw.billing.charge_time
            ))
        })?;
        if !(1..=256).contains(&raw.gateway.max_in_flight)
            || !(1..=1000).contains(&raw.gateway.requests_per_second)
        {
            return Err(err(format!(
                "config file {shown}: gateway.max_in_flight must be 1..=256 and \
                 gateway.requests_per_second 1..=1000, got {} and {}",
                raw.gateway.max_in_flight, raw.gateway.requests_per_second
            )));
        }
        if raw.billing.grace_hours == 0 || raw.billing.grace_hours > 24 * 31 {
            return Err(err(format!(
                "config file {shown}: billing.grace_hours: must be 1..=744, got {}",
                raw.billing.grace_hours
            )));
        }
        let engine =
            check_engine(raw.engine).map_err(|e| err(format!("config file {shown}: {e}")))?;
        let daemon =
            check_daemon(raw.daemon).map_err(|e| err(format!("config file {shown}: {e}")))?;
        let webhook = raw
            .webhook
            .map(|w| check_webhook(w, resolve))
            .transpose()
            .map_err(|e| err(format!("config file {shown}: {e}")))?;
        let books = BooksConfig {
            enabled: raw.books.enabled,
            run_after: parse_charge_time(&raw.books.run_after).ok_or_else(|| {
                err(format!(
                    "config file {shown}: books.run_after: must be \"HH:MM\" (24-hour, local \
                     time in billing.timezone), got {:?}",
                    raw.books.run_after
                ))
            })?,
        };
        let metrics =
            check_metrics(raw.metrics).map_err(|e| err(format!("config file {shown}: {e}")))?;
        let postgres = check_postgres(&raw.database, &engine)
            .map_err(|e| err(format!("config file {shown}: {e}")))?;
        if postgres.is_some() {
            // What does not run on PostgreSQL yet is refused, not silently skipped.
            let unsupported = [
                (books.enabled, "books.enabled = true (set it to false)"),
                (webhook.is_some(), "a [webhook] section"),
                (metrics.listen.is_some(), "metrics.listen"),
            ];
            if let Some((_, what)) = unsupported.iter().find(|(on, _)| *on) {
                return Err(err(format!(
                    "config file {shown}: database.url: {what} is not available with PostgreSQL \
                     yet; only the charge engine and schedule sync run on it"
                )));
            }
        }
        Ok(Config {
            books,
            engine,
            daemon,
            source: source.to_path_buf(),
            database: DatabaseConfig {
                postgres: postgres.map(|mut p| {
                    p.password_file = p.password_file.map(&resolve);
                    p
                }),
                path: resolve(raw.database.path),
            },
            schedules: SchedulesConfig {
                dir: resolve(raw.schedules.dir),
            },
            gateway: GatewayConfig {
                url,
                merchant_id: raw.gateway.merchant_id,
                login: raw.gateway.login,
                password_file: raw.gateway.password_file.map(resolve),
                salt_file: raw.gateway.salt_file.map(resolve),
                private_key_file: raw.gateway.private_key_file.map(resolve),
                test_mode: raw.gateway.test_mode,
                sign_requests: raw.gateway.sign_requests,
                format: raw.gateway.format,
                connect_timeout_secs: raw.gateway.connect_timeout_secs,
                timeout_secs: raw.gateway.timeout_secs,
                max_in_flight: raw.gateway.max_in_flight,
                requests_per_second: raw.gateway.requests_per_second,
            },
            billing: BillingConfig {
                timezone,
                charge_time,
                catch_up: raw.billing.catch_up,
                grace_hours: raw.billing.grace_hours,
            },
            log: LogConfig {
                format: raw.log.format,
            },
            webhook,
            metrics,
        })
    }
}

/// `database.url` and its keys: a `postgres://` URL without a password, the instance's name
/// (default: the host name), a lease shorter than the settle window. `None` without a URL.
fn check_postgres(
    raw: &RawDatabase,
    engine: &EngineConfig,
) -> Result<Option<PostgresConfig>, String> {
    let Some(url) = raw.url.as_deref() else {
        for (set, key) in [
            (raw.password_file.is_some(), "database.password_file"),
            (raw.instance.is_some(), "database.instance"),
        ] {
            if set {
                return Err(format!("{key}: set only with database.url (PostgreSQL)"));
            }
        }
        return Ok(None);
    };
    let parsed = url::Url::parse(url).map_err(|_| {
        "database.url: must be a URL such as \"postgres://recurrentd@db.internal/recurrentd\""
            .to_string()
    })?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "database.url: must start with postgres:// (SQLite is database.path), got a {}:// URL",
            parsed.scheme()
        ));
    }
    let password_in_query = parsed
        .query_pairs()
        .any(|(key, _)| key.eq_ignore_ascii_case("password"));
    if parsed.password().is_some() || password_in_query {
        // Never echo the URL: it holds the password.
        return Err(
            "database.url: holds a password; put it in a file named by database.password_file \
             (mode 0600) or in $CREDENTIALS_DIRECTORY/database-password, and remove it from the \
             URL"
            .into(),
        );
    }
    let instance = match &raw.instance {
        Some(name) => name.clone(),
        None => host_name().ok_or(
            "database.instance: not set, and the host name could not be read; name this \
             instance (e.g. \"billing-1\")",
        )?,
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if instance.is_empty() || instance.len() > 64 || !instance.chars().all(valid) {
        return Err(format!(
            "database.instance: must be 1 to 64 letters, digits, '.', '-' or '_', got {instance:?}"
        ));
    }
    if !(5..=3600).contains(&raw.lease_secs) {
        return Err(format!(
            "database.lease_secs: must be 5..=3600, got {}",
            raw.lease_secs
        ));
    }
    if u64::from(raw.lease_secs) * 2 > u64::from(engine.settle_minutes) * 60 {
        return Err(format!(
            "database.lease_secs: {} s is more than half of engine.settle_minutes ({} min): a \
             request sent at the end of a lease must leave well inside the window in which \"not \
             found\" proves nothing",
            raw.lease_secs, engine.settle_minutes
        ));
    }
    Ok(Some(PostgresConfig {
        url: url.to_string(),
        password_file: raw.password_file.clone(),
        instance,
        lease: std::time::Duration::from_secs(u64::from(raw.lease_secs)),
    }))
}

/// This host's name (the default instance name), if it can be read.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = std::str::from_utf8(&buffer[..end]).ok()?.trim().to_string();
    (!name.is_empty()).then_some(name)
}

fn check_webhook(
    raw: RawWebhook,
    resolve: impl Fn(PathBuf) -> PathBuf,
) -> Result<WebhookConfig, String> {
    let url = raw.url.trim().to_string();
    // The URL is not echoed: it may carry a token.
    crate::gateway::client::check_base_url(&url).map_err(|why| format!("webhook.url: {why}"))?;
    if !(1..=60).contains(&raw.timeout_secs) {
        return Err(format!(
            "webhook.timeout_secs: must be 1..=60, got {}",
            raw.timeout_secs
        ));
    }
    if !(1..=30).contains(&raw.dead_letter_after_days) {
        return Err(format!(
            "webhook.dead_letter_after_days: must be 1..=30, got {}",
            raw.dead_letter_after_days
        ));
    }
    Ok(WebhookConfig {
        url,
        secret_file: raw.secret_file.map(resolve),
        timeout_secs: raw.timeout_secs,
        dead_letter_after_days: raw.dead_letter_after_days,
    })
}

fn check_engine(raw: RawEngine) -> Result<EngineConfig, String> {
    let range = |key: &str, value: u32, low: u32, high: u32| {
        if (low..=high).contains(&value) {
            Ok(value)
        } else {
            Err(format!("engine.{key}: must be {low}..={high}, got {value}"))
        }
    };
    range("settle_minutes", raw.settle_minutes, 1, 7 * 24 * 60)?;
    range("park_after_hours", raw.park_after_hours, 1, 24 * 90)?;
    range(
        "max_attempts_per_30_days",
        raw.max_attempts_per_30_days,
        1,
        15,
    )?;
    range("breaker_failures", raw.breaker_failures, 1, 1000)?;
    range(
        "breaker_window_minutes",
        raw.breaker_window_minutes,
        1,
        7 * 24 * 60,
    )?;
    range("max_skipped_periods", raw.max_skipped_periods, 1, 100_000)?;
    range("adhoc_max_age_hours", raw.adhoc_max_age_hours, 1, 24 * 30)?;
    if raw.dunning_days.len() > 10 || raw.dunning_days.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "engine.dunning_days: at most 10 strictly increasing day counts, got {:?}",
            raw.dunning_days
        ));
    }
    for day in &raw.dunning_days {
        range("dunning_days", *day, 1, 366)?;
    }
    Ok(EngineConfig {
        settle_minutes: raw.settle_minutes,
        park_after_hours: raw.park_after_hours,
        dunning_days: raw.dunning_days,
        max_attempts_per_30_days: raw.max_attempts_per_30_days,
        breaker_failures: raw.breaker_failures,
        breaker_window_minutes: raw.breaker_window_minutes,
        max_skipped_periods: raw.max_skipped_periods,
        adhoc_max_age_hours: raw.adhoc_max_age_hours,
    })
}

/// `metrics.listen`: an `IP:PORT` on a loopback address. The endpoint has no authentication
/// and shows business figures, so it is never exposed on a network interface: a scraper on
/// another host goes through a reverse proxy or an SSH tunnel of the operator's choice.
fn check_metrics(raw: RawMetrics) -> Result<MetricsConfig, String> {
    let Some(text) = raw.listen else {
        return Ok(MetricsConfig::default());
    };
    let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
        format!(
            "metrics.listen: must be a loopback IP:PORT such as \"127.0.0.1:9464\" or              \"[::1]:9464\", got {text:?}"
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "metrics.listen: {addr} is not a loopback address: the metrics endpoint has no              authentication, so it listens only on 127.0.0.0/8 or [::1] (put a proxy in front              to scrape it from elsewhere)"
        ));
    }
    if addr.port() == 0 {
        return Err("metrics.listen: the port must not be 0".into());
    }
    Ok(MetricsConfig { listen: Some(addr) })
}

fn check_daemon(raw: RawDaemon) -> Result<DaemonConfig, String> {
    // The scheduler's own parser decides, so `check` accepts exactly what `run` will.
    let expression = raw.sweep_cron.trim().to_string();
    if tokio_cron_scheduler::Job::new_async(expression.as_str(), |_, _| Box::pin(async {})).is_err()
    {
        return Err(format!(
            "daemon.sweep_cron: not a 6-field cron expression (seconds minutes hours \
             day-of-month month day-of-week, in UTC; e.g. \"0 * * * * *\" for every minute), \
             got {:?}",
            raw.sweep_cron
        ));
    }
    if !(5..=3600).contains(&raw.shutdown_deadline_secs) {
        return Err(format!(
            "daemon.shutdown_deadline_secs: must be 5..=3600, got {}",
            raw.shutdown_deadline_secs
        ));
    }
    if !(1..=1000).contains(&raw.max_failed_ticks) {
        return Err(format!(
            "daemon.max_failed_ticks: must be 1..=1000, got {}",
            raw.max_failed_ticks
        ));
    }
    Ok(DaemonConfig {
        sweep_cron: expression,
        watch_schedules: raw.watch_schedules,
        shutdown_deadline_secs: raw.shutdown_deadline_secs,
        max_failed_ticks: raw.max_failed_ticks,
    })
}

/// `"HH:MM"`, 24-hour, two digits each.
fn parse_charge_time(text: &str) -> Option<NaiveTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    NaiveTime::parse_from_str(text, "%H:%M").ok()
}

/// The secrets recurrentd can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretName {
    /// The web-service password sent with every request.
    Password,
    /// The merchant's checkvalue salt, used to verify results.
    Salt,
    /// The RSA private key (PEM) for request signatures.
    PrivateKey,
    /// The webhook's signing secret (not in [`SecretName::ALL`], the gateway's secrets).
    WebhookSecret,
    /// The PostgreSQL password (`database.password_file`; not in [`SecretName::ALL`]).
    DatabasePassword,
}

impl SecretName {
    pub const ALL: [SecretName; 3] = [
        SecretName::Password,
        SecretName::Salt,
        SecretName::PrivateKey,
    ];

    /// The file name under `$CREDENTIALS_DIRECTORY` (the `LoadCredential=` id).
    pub fn credential(self) -> &'static str {
        match self {
            SecretName::Password => "assist-password",
            SecretName::Salt => "assist-salt",
            SecretName::PrivateKey => "assist-private-key",
            SecretName::WebhookSecret => "webhook-secret",
            SecretName::DatabasePassword => "database-password",
        }
    }

    /// The environment variable holding the value itself: in test mode only (the sandbox).
    pub fn env_var(self) -> &'static str {
        match self {
            SecretName::Password => "RECURRENTD_SECRET_PASSWORD",
            SecretName::Salt => "RECURRENTD_SECRET_SALT",
            SecretName::PrivateKey => "RECURRENTD_SECRET_PRIVATE_KEY",
            SecretName::WebhookSecret => "RECURRENTD_SECRET_WEBHOOK",
            SecretName::DatabasePassword => "RECURRENTD_SECRET_DATABASE",
        }
    }

    /// The config key naming a file that holds it.
    pub fn config_key(self) -> &'static str {
        match self {
            SecretName::Password => "gateway.password_file",
            SecretName::Salt => "gateway.salt_file",
            SecretName::PrivateKey => "gateway.private_key_file",
            SecretName::WebhookSecret => "webhook.secret_file",
            SecretName::DatabasePassword => "database.password_file",
        }
    }

    fn configured_file(self, gateway: &GatewayConfig) -> Option<&Path> {
        match self {
            SecretName::Password => gateway.password_file.as_deref(),
            SecretName::Salt => gateway.salt_file.as_deref(),
            SecretName::PrivateKey => gateway.private_key_file.as_deref(),
            // Read by `load_webhook_secret`, from the `[webhook]` section.
            SecretName::WebhookSecret => None,
            // Read by `load_database_password`, from the `[database]` section.
            SecretName::DatabasePassword => None,
        }
    }
}

/// A figment/toml error on one line, without the source lines it quotes (a TOML syntax error
/// shows the offending line under a `|` gutter, and that line may hold a secret: `password =
/// "hunter2` with its quote missing). Line and column stay: `TOML parse error at line 5,
/// column 27: invalid basic string: in config.toml TOML file`.
fn without_source_text(message: &str) -> String {
    let gutter = |line: &str| {
        let trimmed = line.trim_start();
        let digits = trimmed.trim_start_matches(|c: char| c.is_ascii_digit());
        digits.trim_start().starts_with('|')
    };
    message
        .lines()
        .filter(|line| !gutter(line))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretName::Password => "gateway password",
            SecretName::Salt => "checkvalue salt",
            SecretName::PrivateKey => "RSA private key",
            SecretName::WebhookSecret => "webhook secret",
            SecretName::DatabasePassword => "database password",
        })
    }
}

/// Finds a secret: the file named in config first, then `$CREDENTIALS_DIRECTORY/<credential>`,
/// then the environment variable (only with `gateway.test_mode`: outside test mode a set
/// variable is an error). `Ok(None)` when none of them is set. One trailing newline (`\n` or
/// `\r\n`) of a file is removed. Errors name the file and the problem, never the value.
pub fn load_secret(
    gateway: &GatewayConfig,
    name: SecretName,
) -> Result<Option<SecretString>, ConfigError> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let env_value = std::env::var(name.env_var()).ok();
    load_secret_from(gateway, name, credentials.as_deref(), env_value)
}

fn load_secret_from(
    gateway: &GatewayConfig,
    name: SecretName,
    credentials_dir: Option<&Path>,
    env_value: Option<String>,
) -> Result<Option<SecretString>, ConfigError> {
    // R36: a secret in the environment is visible to every process of the user and in
    // /proc/<pid>/environ; it is for the sandbox and test mode only. Refused outside test mode
    // even when a file would be found first: the value is in the environment all the same.
    let env_value = env_value.filter(|value| !value.is_empty());
    if env_value.is_some() && !gateway.test_mode {
        return Err(err(format!(
            "the {name} is in the environment variable {}, which is accepted only in test \
             mode (gateway.test_mode = true, as for the sandbox); unset it and put the {name} in \
             a file named by {} (mode 0600), or in $CREDENTIALS_DIRECTORY/{} (systemd \
             LoadCredential=)",
            name.env_var(),
            name.config_key(),
            name.credential()
        )));
    }
    if let Some(file) = name.configured_file(gateway) {
        return read_secret_file(file, name, name.config_key(), credentials_dir).map(Some);
    }
    if let Some(dir) = credentials_dir {
        let file = dir.join(name.credential());
        if file.symlink_metadata().is_ok() {
            return read_secret_file(&file, name, "$CREDENTIALS_DIRECTORY", credentials_dir)
                .map(Some);
        }
    }
    Ok(env_value.map(SecretString::from))
}

/// The webhook's signing secret, as [`load_secret`] finds the others: `webhook.secret_file`,
/// then `$CREDENTIALS_DIRECTORY/webhook-secret`, then (test mode only) `RECURRENTD_SECRET_WEBHOOK`.
pub fn load_webhook_secret(config: &Config) -> Result<Option<SecretString>, ConfigError> {
    let name = SecretName::WebhookSecret;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let env_value = std::env::var(name.env_var()).ok();
    match config
        .webhook
        .as_ref()
        .and_then(|w| w.secret_file.as_deref())
    {
        Some(file) => {
            // The environment is refused outside test mode even when a file is named.
            load_secret_from(&config.gateway, name, None, env_value)?;
            read_secret_file(file, name, name.config_key(), credentials.as_deref()).map(Some)
        }
        None => load_secret_from(&config.gateway, name, credentials.as_deref(), env_value),
    }
}

/// The PostgreSQL password, as [`load_secret`] finds the others: `database.password_file`, then
/// `$CREDENTIALS_DIRECTORY/database-password`, then (test mode only)
/// `RECURRENTD_SECRET_DATABASE`; `None` if there is none (peer or trust authentication).
pub fn load_database_password(config: &Config) -> Result<Option<SecretString>, ConfigError> {
    let name = SecretName::DatabasePassword;
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let env_value = std::env::var(name.env_var()).ok();
    match config
        .database
        .postgres
        .as_ref()
        .and_then(|p| p.password_file.as_deref())
    {
        Some(file) => {
            // The environment is refused outside test mode even when a file is named.
            load_secret_from(&config.gateway, name, None, env_value)?;
            read_secret_file(file, name, name.config_key(), credentials.as_deref()).map(Some)
        }
        None => load_secret_from(&config.gateway, name, credentials.as_deref(), env_value),
    }
}

/// Like [`load_secret`], but a missing secret is an error that says where it was looked for.
pub fn require_secret(
    gateway: &GatewayConfig,
    name: SecretName,
) -> Result<SecretString, ConfigError> {
    load_secret(gateway, name)?.ok_or_else(|| {
        err(format!(
            "the {name} is not configured: set {}, or provide $CREDENTIALS_DIRECTORY/{}, or (in \
             test mode only) the environment variable {}",
            name.config_key(),
            name.credential(),
            name.env_var()
        ))
    })
}

/// The effective user id of this process: a secret file outside `$CREDENTIALS_DIRECTORY`
/// must be owned by it.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Reads one secret file, refusing what R37 refuses; errors name the file and the problem,
/// never the content.
///
/// Outside `$CREDENTIALS_DIRECTORY` (`credentials_dir`) the file must be the file itself, not
/// a symbolic link (opened with `O_NOFOLLOW`), and owned by this process's effective user.
/// Inside it, systemd made the files (owned as systemd chose): a link is followed only if it
/// stays inside the directory. Everywhere: a regular file, mode 0600 or 0400, at most 64 KiB,
/// UTF-8, not empty. The checks are made on the opened file (`fstat`), which is then read.
fn read_secret_file(
    file: &Path,
    name: SecretName,
    origin: &str,
    credentials_dir: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let shown = file.display();
    let problem = |what: String| err(format!("{name} file {shown} (from {origin}): {what}"));
    let in_credentials = credentials_dir.and_then(|dir| {
        let dir = dir.canonicalize().ok()?;
        let parent = file.parent()?.canonicalize().ok()?;
        parent.starts_with(&dir).then_some(dir)
    });
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    match &in_credentials {
        Some(dir) => {
            let target = file
                .canonicalize()
                .map_err(|e| problem(format!("cannot read it: {e}")))?;
            if !target.starts_with(dir) {
                return Err(problem(
                    "a symbolic link out of $CREDENTIALS_DIRECTORY; refused".to_string(),
                ));
            }
        }
        None => {
            options.custom_flags(libc::O_NOFOLLOW);
        }
    }
    let mut opened = options.open(file).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            problem(
                "is a symbolic link; outside $CREDENTIALS_DIRECTORY a secret file must be the \
                 file itself (name the target, or use LoadCredential=)"
                    .to_string(),
            )
        } else {
            problem(format!("cannot read it: {e}"))
        }
    })?;
    let meta = opened
        .metadata()
        .map_err(|e| problem(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(problem("not a regular file".to_string()));
    }
    if in_credentials.is_none() {
        let euid = effective_uid();
        if meta.uid() != euid {
            return Err(problem(format!(
                "owned by uid {}, not by the user running recurrentd (uid {euid}); run `chown` \
                 on it, or provide it through $CREDENTIALS_DIRECTORY (LoadCredential=)",
                meta.uid()
            )));
        }
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(problem(format!(
            "group or others may access it (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        )));
    }
    const MAX_SECRET_BYTES: u64 = 64 * 1024;
    if meta.len() > MAX_SECRET_BYTES {
        return Err(problem(format!("larger than {MAX_SECRET_BYTES} bytes")));
    }
    let mut bytes = Vec::new();
    (&mut opened)
        .take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(problem(format!("larger than {MAX_SECRET_BYTES} bytes")));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| problem("not UTF-8 text".to_string()))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    if text.is_empty() {
        return Err(problem("is empty".to_string()));
    }
    Ok(SecretString::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = r#"
[database]
path = "state/recurrentd.db"

[schedules]
dir = "schedules"

[gateway]
url = "https://payments.demo.paysecure.ru"
merchant_id = "987654"
login = "billing_ws"
password_file = "secrets/password"
salt_file = "secrets/salt"
test_mode = true

[billing]
timezone = "Europe/Berlin"
charge_time = "09:30"
catch_up = "none"
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = write(dir, name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Loads with no environment overrides, so tests do not see the developer's variables.
    fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, Env::prefixed("RECURRENTD_TEST_NOTHING_"))
    }

    #[test]
    fn loads_and_resolves_paths_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        assert_eq!(config.database.path, dir.path().join("state/recurrentd.db"));
        assert_eq!(config.schedules.dir, dir.path().join("schedules"));
        assert_eq!(config.gateway.merchant_id, "987654");
        assert_eq!(config.billing.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(
            config.billing.charge_time,
            NaiveTime::from_hms_opt(9, 30, 0).unwrap()
        );
        assert_eq!(config.billing.catch_up, CatchUp::None);
        assert!(config.gateway.test_mode);
        assert!(!config.gateway.sign_requests);
        assert_eq!(config.gateway.format, ResponseFormat::Xml);
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_only_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n";
        let path = write(dir.path(), "config.toml", base);
        assert_eq!(load(&path).unwrap().metrics.listen, None);
        for (listen, ok) in [
            ("127.0.0.1:9464", true),
            ("[::1]:9464", true),
            ("127.0.0.2:1", true),
            ("0.0.0.0:9464", false),
            ("192.168.1.10:9464", false),
            ("localhost:9464", false),
            ("127.0.0.1:0", false),
        ] {
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{base}[metrics]\nlisten = \"{listen}\"\n"),
            );
            match load(&path) {
                Ok(config) => {
                    assert!(ok, "{listen} accepted");
                    assert_eq!(config.metrics.listen, Some(listen.parse().unwrap()));
                }
                Err(e) => {
                    assert!(!ok, "{listen} refused: {e}");
                    assert!(e.0.contains("metrics.listen"), "{e}");
                }
            }
        }
        let path = write(
            dir.path(),
            "config.toml",
            &format!("{base}[metrics]\nlisten = \"0.0.0.0:9464\"\n"),
        );
        let e = load(&path).unwrap_err();
        assert!(e.0.contains("not a loopback address"), "{e}");
    }

    #[test]
    fn defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "config.toml",
            "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n",
        );
        let config = load(&path).unwrap();
        assert_eq!(config.billing.timezone, chrono_tz::Europe::Moscow);
        assert_eq!(config.billing.catch_up, CatchUp::Latest);
        assert_eq!(config.billing.grace_hours, 24);
        assert!(!config.gateway.test_mode);
        assert!(!config.gateway.sign_requests);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.daemon, DaemonConfig::default());
        assert_eq!(config.daemon.sweep_cron, "0 * * * * *");
        assert_eq!(config.daemon.max_failed_ticks, 5);
        assert_eq!(config.books, BooksConfig::default());
        assert!(config.books.enabled);
        assert_eq!(
            config.books.run_after,
            NaiveTime::from_hms_opt(3, 0, 0).unwrap()
        );
    }

    #[test]
    fn database_url_chooses_postgres_with_a_checked_instance_lease_and_no_password_inside() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n\
                    [books]\nenabled = false\n";
        let with = |database: &str| {
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{base}[database]\n{database}\n"),
            );
            load(&path)
        };
        assert_eq!(
            load(&write(dir.path(), "c.toml", base))
                .unwrap()
                .database
                .postgres,
            None
        );
        let config = with(
            "url = \"postgres://billing@db.internal:5432/recurrentd\"\ninstance = \"billing-1\"\n\
             lease_secs = 20\npassword_file = \"secrets/db\"",
        )
        .unwrap();
        let pg = config.database.postgres.unwrap();
        assert_eq!(pg.url, "postgres://billing@db.internal:5432/recurrentd");
        assert_eq!(pg.instance, "billing-1");
        assert_eq!(pg.lease, std::time::Duration::from_secs(20));
        assert_eq!(pg.password_file, Some(dir.path().join("secrets/db")));
        // The host name by default.
        let config = with("url = \"postgres://billing@db.internal/recurrentd\"").unwrap();
        assert!(!config.database.postgres.unwrap().instance.is_empty());

        for (database, wanted) in [
            ("url = \"postgres://u:hunter2@db/r\"", "holds a password"),
            (
                "url = \"postgres://u@db/r?password=hunter2\"",
                "holds a password",
            ),
            ("url = \"mysql://u@db/r\"", "must start with postgres://"),
            ("url = \"not a url\"", "must be a URL"),
            (
                "url = \"postgres://u@db/r\"\ninstance = \"a b\"",
                "database.instance",
            ),
            ("url = \"postgres://u@db/r\"\nlease_secs = 2", "5..=3600"),
            (
                "url = \"postgres://u@db/r\"\nlease_secs = 901",
                "more than half",
            ),
            ("instance = \"billing-1\"", "only with database.url"),
        ] {
            let message = with(database).unwrap_err().to_string();
            assert!(message.contains(wanted), "{database}: {message}");
            assert!(!message.contains("hunter2"), "{database}: {message}");
        }
        // What does not run on PostgreSQL yet is refused, not skipped.
        let path = write(
            dir.path(),
            "config.toml",
            "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n\
             [database]\nurl = \"postgres://u@db/r\"\n",
        );
        let message = load(&path).unwrap_err().to_string();
        assert!(message.contains("books.enabled"), "{message}");
    }

    #[test]
    fn books_keys_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n";
        let path = write(
            dir.path(),
            "config.toml",
            &format!("{base}[books]\nenabled = false\nrun_after = \"05:30\"\n"),
        );
        let config = load(&path).unwrap();
        assert!(!config.books.enabled);
        assert_eq!(
            config.books.run_after,
            NaiveTime::from_hms_opt(5, 30, 0).unwrap()
        );
        for bad in ["run_after = \"5:30\"", "run_after = \"25:00\"", "every = 1"] {
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{base}[books]\n{bad}\n"),
            );
            let error = load(&path).unwrap_err().to_string();
            assert!(error.contains("books"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_webhook_section_has_defaults_ranges_and_its_own_secret() {
        let dir = tempfile::tempdir().unwrap();
        let base = "[gateway]\nurl = \"https://x.test\"\nmerchant_id = \"1\"\nlogin = \"l\"\n";
        let path = write(dir.path(), "config.toml", base);
        assert_eq!(load(&path).unwrap().webhook, None);
        let path = write(
            dir.path(),
            "config.toml",
            &format!(
                "{base}[webhook]\nurl = \"https://hooks.example.com/recurrentd\"\nsecret_file = \"whsec\"\n"
            ),
        );
        let config = load(&path).unwrap();
        let webhook = config.webhook.clone().unwrap();
        assert_eq!(webhook.url, "https://hooks.example.com/recurrentd");
        assert_eq!(webhook.secret_file, Some(dir.path().join("whsec")));
        assert_eq!(webhook.timeout_secs, 10);
        assert_eq!(webhook.dead_letter_after_days, 3);
        secret_file(dir.path(), "whsec", "whsec_abc\n", 0o600);
        let secret = load_webhook_secret(&config).unwrap().unwrap();
        assert_eq!(secret.expose_secret(), "whsec_abc");
        std::fs::set_permissions(
            dir.path().join("whsec"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let message = load_webhook_secret(&config).unwrap_err().0;
        assert!(message.contains("webhook secret file"), "{message}");
        assert!(!message.contains("whsec_abc"), "{message}");

        for (table, wanted) in [
            (
                "url = \"http://hooks.example.com/x\"",
                "webhook.url: must use https://",
            ),
            (
                "url = \"https://a.test\"\ntimeout_secs = 0",
                "webhook.timeout_secs",
            ),
            (
                "url = \"https://a.test\"\ndead_letter_after_days = 31",
                "webhook.dead_letter_after_days",
            ),
            (
                "url = \"https://a.test\"\nsecret = \"inline\"",
                "unknown field",
            ),
            ("secret_file = \"x\"", "missing field"),
        ] {
            let path = write(
                dir.path(),
                "config.toml",
                &format!("{base}[webhook]\n{table}\n"),
            );
            let message = load(&path).unwrap_err().0;
            assert!(message.contains(wanted), "{table}: {message}");
            assert!(!message.contains("inline"), "{message}");
        }
        // http to a loopback receiver is fine (the sandbox's, tests').
        let path = write(
            dir.path(),
            "config.toml",
            &format!("{base}[webhook]\nurl = \"http://127.0.0.1:9/hook\"\n"),
        );
        assert!(load(&path).is_ok());
    }

    #[test]
    fn the_sweep_cron_is_checked_by_the_schedulers_own_parser() {
        let dir = tempfile::tempdir().unwrap();
        let good = GOOD.to_string() + "\n[daemon]\nsweep_cron = \"*/15 * * * * *\"\n";
        let config = load(&write(dir.path(), "config.toml", &good)).unwrap();
        assert_eq!(config.daemon.sweep_cron, "*/15 * * * * *");
        for (bad, key) in [
            ("sweep_cron = \"0 3 * * *\"", "daemon.sweep_cron"),
            ("sweep_cron = \"every minute\"", "daemon.sweep_cron"),
            (
                "shutdown_deadline_secs = 0",
                "daemon.shutdown_deadline_secs",
            ),
            ("max_failed_ticks = 0", "daemon.max_failed_ticks"),
            ("watch = true", "watch"),
        ] {
            let text = GOOD.to_string() + "\n[daemon]\n" + bad + "\n";
            let message = load(&write(dir.path(), "config.toml", &text))
                .unwrap_err()
                .to_string();
            assert!(message.contains(key), "{bad}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn engine_keys_have_defaults_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(&write(dir.path(), "config.toml", GOOD)).unwrap();
        assert_eq!(config.engine, EngineConfig::default());
        assert_eq!(config.engine.adhoc_max_age_hours, 24);
        let text = GOOD.to_string() + "\n[engine]\nadhoc_max_age_hours = 2\n";
        let config = load(&write(dir.path(), "config.toml", &text)).unwrap();
        assert_eq!(config.engine.adhoc_max_age_hours, 2);
        for bad in ["adhoc_max_age_hours = 0", "adhoc_max_age_hours = 721"] {
            let text = GOOD.to_string() + "\n[engine]\n" + bad + "\n";
            let message = load(&write(dir.path(), "config.toml", &text))
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("engine.adhoc_max_age_hours: must be 1..=720, got"),
                "{bad}: {message}"
            );
            assert!(message.contains("config.toml"), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_not_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let message = load(&dir.path().join("nope.toml")).unwrap_err().to_string();
        assert!(
            message.contains("nope.toml") && message.contains("cannot read"),
            "{message}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (replace, with, expect) in [
            (
                "timezone = \"Europe/Berlin\"",
                "timezone = \"Mars/Base\"",
                "billing.timezone",
            ),
            (
                "charge_time = \"09:30\"",
                "charge_time = \"9:30\"",
                "billing.charge_time",
            ),
            ("catch_up = \"none\"", "catch_up = \"all\"", "catch_up"),
            (
                "test_mode = true",
                "test_mode = true\ntimeuot_secs = 3",
                "did you mean `timeout_secs`?",
            ),
            ("url = \"https://", "url = \"ftp://", "gateway.url"),
            (
                "merchant_id = \"987654\"",
                "merchant_id = \"98x\"",
                "gateway.merchant_id",
            ),
            ("[billing]", "[billing\n", "TOML"),
        ] {
            let text = GOOD.replace(replace, with);
            assert_ne!(text, GOOD);
            let path = write(dir.path(), "config.toml", &text);
            let message = load(&path).unwrap_err().to_string();
            assert!(message.contains(expect), "{expect}: {message}");
            assert!(message.contains("config.toml"), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn a_syntax_error_never_echoes_the_line_it_is_on() {
        let dir = tempfile::tempdir().unwrap();
        for broken in [
            "password = \"hunter2-xyz",
            "salt = 'hunter2-xyz",
            "webhook_secret = hunter2-xyz",
            "api_token = \"\"\"hunter2-xyz",
            "private_key = { pem = \"hunter2-xyz\"",
        ] {
            let text = GOOD.replace("test_mode = true", &format!("test_mode = true\n{broken}"));
            let path = write(dir.path(), "config.toml", &text);
            let message = load(&path).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{broken}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
            assert!(
                message.contains("config.toml") && message.contains("TOML parse error at line"),
                "{message}"
            );
        }
    }

    #[test]
    fn inline_secrets_are_refused_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "test_mode = true",
            "test_mode = true\npassword = \"hunter2-xyz\"",
        );
        let path = write(dir.path(), "config.toml", &text);
        let message = load(&path).unwrap_err().to_string();
        assert!(message.contains("gateway.password_file"), "{message}");
        assert!(!message.contains("hunter2-xyz"), "{message}");
    }

    #[test]
    fn secrets_come_from_files_credentials_or_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        secret_file(dir.path(), "secrets/password", "pa55word-file\n", 0o600);
        let password = load_secret_from(&config.gateway, SecretName::Password, None, None)
            .unwrap()
            .unwrap();
        assert_eq!(password.expose_secret(), "pa55word-file");

        // Not named in config: credentials directory, then the environment.
        let creds = dir.path().join("creds");
        secret_file(&creds, "assist-private-key", "KEY\r\n", 0o400);
        let key = load_secret_from(&config.gateway, SecretName::PrivateKey, Some(&creds), None)
            .unwrap()
            .unwrap();
        assert_eq!(key.expose_secret(), "KEY");
        let mut gateway = config.gateway.clone();
        gateway.salt_file = None;
        let salt = load_secret_from(
            &gateway,
            SecretName::Salt,
            Some(&creds),
            Some("s-env".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(salt.expose_secret(), "s-env");
        assert!(
            load_secret_from(&gateway, SecretName::Salt, None, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn readable_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        secret_file(dir.path(), "secrets/salt", "very-secret-salt", 0o644);
        let message = load_secret_from(&config.gateway, SecretName::Salt, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("chmod 600") && message.contains("secrets/salt"),
            "{message}"
        );
        assert!(!message.contains("very-secret-salt"));
    }

    /// R37: outside `$CREDENTIALS_DIRECTORY` a secret file must be the file itself (not a
    /// symbolic link: its metadata would be the target's) and owned by the user running
    /// recurrentd. Inside it, systemd made the files: a link within the directory is followed
    /// and the owner is systemd's choice, but a link out of the directory is refused.
    #[test]
    fn symlinked_or_foreign_secret_files_are_refused_outside_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        let real = secret_file(dir.path(), "elsewhere/password", "linked-secret", 0o600);
        std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("secrets/password")).unwrap();
        let message = load_secret_from(&config.gateway, SecretName::Password, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("secrets/password") && message.contains("symbolic link"),
            "{message}"
        );
        assert!(!message.contains("linked-secret"), "{message}");

        // Owned by another user (a file someone else could rewrite): refused. Only root can
        // give a file away, so without root this part is skipped.
        let foreign = secret_file(dir.path(), "secrets/salt", "foreign-salt", 0o600);
        let euid = effective_uid();
        let other = 65_534;
        if euid == 0 {
            std::os::unix::fs::chown(&foreign, Some(other), None).unwrap();
            let message = load_secret_from(&config.gateway, SecretName::Salt, None, None)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("secrets/salt")
                    && message.contains(&format!("owned by uid {other}"))
                    && message.contains(&format!("uid {euid}")),
                "{message}"
            );
            assert!(!message.contains("foreign-salt"), "{message}");
        } else {
            eprintln!("skipped the foreign-owner case: it needs root to chown a file");
        }

        // In the credentials directory: a link within it is followed, a foreign owner is
        // systemd's business, a link out of it is refused.
        let creds = dir.path().join("creds");
        let mut gateway = config.gateway.clone();
        gateway.password_file = None;
        gateway.salt_file = None;
        secret_file(&creds, "real-password", "cred-password", 0o400);
        std::os::unix::fs::symlink("real-password", creds.join("assist-password")).unwrap();
        let password = load_secret_from(&gateway, SecretName::Password, Some(&creds), None)
            .unwrap()
            .unwrap();
        assert_eq!(password.expose_secret(), "cred-password");
        let salt = secret_file(&creds, "assist-salt", "cred-salt", 0o400);
        if euid == 0 {
            std::os::unix::fs::chown(&salt, Some(other), None).unwrap();
        }
        let salt = load_secret_from(&gateway, SecretName::Salt, Some(&creds), None)
            .unwrap()
            .unwrap();
        assert_eq!(salt.expose_secret(), "cred-salt");
        std::os::unix::fs::symlink(&real, creds.join("assist-private-key")).unwrap();
        let message = load_secret_from(&gateway, SecretName::PrivateKey, Some(&creds), None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("assist-private-key")
                && message.contains("symbolic link out of $CREDENTIALS_DIRECTORY"),
            "{message}"
        );
    }

    /// R36: a secret in an environment variable is for the sandbox and test mode only.
    #[test]
    fn environment_secrets_are_refused_outside_test_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        let mut gateway = config.gateway.clone();
        gateway.password_file = None;
        assert!(gateway.test_mode);
        let password = load_secret_from(
            &gateway,
            SecretName::Password,
            None,
            Some("env-pa55".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(password.expose_secret(), "env-pa55");

        gateway.test_mode = false;
        let message = load_secret_from(
            &gateway,
            SecretName::Password,
            None,
            Some("env-pa55".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("RECURRENTD_SECRET_PASSWORD")
                && message.contains("test mode")
                && message.contains("gateway.password_file")
                && message.contains("$CREDENTIALS_DIRECTORY/assist-password"),
            "{message}"
        );
        assert!(!message.contains("env-pa55"), "{message}");
        // Refused even when a file would be found first: the secret is in the environment.
        secret_file(dir.path(), "secrets/password", "pa55word-file", 0o600);
        gateway.password_file = config.gateway.password_file.clone();
        load_secret_from(
            &gateway,
            SecretName::Password,
            None,
            Some("env-pa55".into()),
        )
        .unwrap_err();
        // An empty variable is no secret at all.
        gateway.password_file = None;
        assert!(
            load_secret_from(&gateway, SecretName::Password, None, Some(String::new()))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn debug_of_config_and_secrets_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "config.toml", GOOD);
        let config = load(&path).unwrap();
        secret_file(dir.path(), "secrets/password", "P4ssw0rd-visible?", 0o600);
        secret_file(dir.path(), "secrets/salt", "S4lt-visible?", 0o600);
        let password = load_secret_from(&config.gateway, SecretName::Password, None, None).unwrap();
        let salt = load_secret_from(&config.gateway, SecretName::Salt, None, None).unwrap();
        let shown = format!("{config:?} {config:#?} {password:?} {salt:?} {password:#?}");
        assert!(!shown.contains("P4ssw0rd"), "{shown}");
        assert!(!shown.contains("S4lt"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }
}
