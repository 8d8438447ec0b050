//! The charge lifecycle's data: where an attempt and a billing period stand, what a charge row
//! is for, what the engine needs to decide about a subscription ([`History`]) and to send or
//! look up one attempt ([`Job`]), and the change it decides for an attempt ([`AttemptChange`],
//! with its [`ChargeChange`], [`Flag`] and ledger [`Event`]).
//!
//! Plain data and pure methods only: no SQL, no I/O. The store persists these types (its row
//! decoding and the state columns' texts go through [`AttemptState::as_str`] /
//! [`AttemptState::parse`] and their [`ChargeState`] twins); the engine decides with them.
//! `crate::store` re-exports every item, so `crate::store::Job` and `crate::lifecycle::Job` are
//! the same type.

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use crate::billing::Terms;
use crate::money::{Currency, Money};

/// A subscription as the store holds it: the last accepted definition, active or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub id: String,
    /// Name of the schedule file (inside the schedules folder) that last defined it.
    pub file: String,
    pub line: usize,
    pub customer: Option<String>,
    pub bill_number: String,
    pub currency: Currency,
    pub terms: Terms,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once it is no longer defined by any file; its id stays reserved.
    pub removed_at: Option<DateTime<Utc>>,
}

impl StoredSubscription {
    pub fn is_active(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptState {
    /// Intent committed, no answer yet. Found at start, it is treated as unknown.
    Pending,
    /// Provably never left: sent again under the same OrderNumber.
    NotSent,
    /// May or may not have charged: resolved only by status queries.
    Unknown,
    /// Unknown for too long: an operator must look. Still queried, rarely.
    Parked,
    Approved,
    Declined,
    /// The gateway never filed it (repeated not-found after the settle window).
    NotReceived,
    /// A request-level error: the gateway did not process it.
    Rejected,
    /// An answer about it failed verification.
    Quarantined,
}

impl AttemptState {
    pub const ALL: [AttemptState; 9] = [
        AttemptState::Pending,
        AttemptState::NotSent,
        AttemptState::Unknown,
        AttemptState::Parked,
        AttemptState::Approved,
        AttemptState::Declined,
        AttemptState::NotReceived,
        AttemptState::Rejected,
        AttemptState::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Pending => "pending",
            AttemptState::NotSent => "not_sent",
            AttemptState::Unknown => "unknown",
            AttemptState::Parked => "parked",
            AttemptState::Approved => "approved",
            AttemptState::Declined => "declined",
            AttemptState::NotReceived => "not_received",
            AttemptState::Rejected => "rejected",
            AttemptState::Quarantined => "quarantined",
        }
    }

    pub fn parse(text: &str) -> Option<AttemptState> {
        AttemptState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Has charged, or may have: counts as a charge for every limit.
    pub fn may_have_charged(self) -> bool {
        matches!(
            self,
            AttemptState::Pending
                | AttemptState::NotSent
                | AttemptState::Unknown
                | AttemptState::Parked
                | AttemptState::Approved
                | AttemptState::Quarantined
        )
    }

    /// Not settled yet: the reconciler or the sender still has work with it.
    pub fn unresolved(self) -> bool {
        matches!(
            self,
            AttemptState::Pending
                | AttemptState::NotSent
                | AttemptState::Unknown
                | AttemptState::Parked
        )
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a billing period stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeState {
    Open,
    Paid,
    Failed,
    Blocked,
    Skipped,
    Quarantined,
}

impl ChargeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeState::Open => "open",
            ChargeState::Paid => "paid",
            ChargeState::Failed => "failed",
            ChargeState::Blocked => "blocked",
            ChargeState::Skipped => "skipped",
            ChargeState::Quarantined => "quarantined",
        }
    }

    pub fn parse(text: &str) -> Option<ChargeState> {
        [
            ChargeState::Open,
            ChargeState::Paid,
            ChargeState::Failed,
            ChargeState::Blocked,
            ChargeState::Skipped,
            ChargeState::Quarantined,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What a charge row is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A billing period of the subscription's schedule (numbered from 0).
    Period(u32),
    /// An ad-hoc charge an operator asked for (`recurrentd charge`), by its unique reference.
    Adhoc(String),
}

impl Purpose {
    /// The period number, for a scheduled charge.
    pub fn period(&self) -> Option<u32> {
        match self {
            Purpose::Period(n) => Some(*n),
            Purpose::Adhoc(_) => None,
        }
    }
}

/// `12` for a period, `adhoc:<reference>` for an ad-hoc charge (logs and reports).
impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Purpose::Period(n) => write!(f, "{n}"),
            Purpose::Adhoc(reference) => write!(f, "adhoc:{reference}"),
        }
    }
}

/// The period currently being charged (state `open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCharge {
    pub id: i64,
    pub purpose: Purpose,
    pub due_date: NaiveDate,
    pub amount: Money,
    pub currency: Currency,
    pub bill_number: String,
    /// When the next attempt may start (a retry after a decline or a lost attempt).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Attempts made for it so far.
    pub attempts: u32,
    /// Whether one of its attempts is still live (pending, unknown, ...).
    pub live_attempt: bool,
    /// When the row was made (engine clock): the period opened, or the ad-hoc charge requested.
    pub created_at: DateTime<Utc>,
}

/// What the engine needs to decide about one subscription.
#[derive(Debug, Clone)]
pub struct History {
    pub subscription: StoredSubscription,
    /// The first period without a row.
    pub next_period: u32,
    /// Engine-clock instants of every attempt that charged or may have (for the limits).
    pub charged: Vec<DateTime<Utc>>,
    pub open: Option<OpenCharge>,
    /// Any attempt of any period still unresolved.
    pub unresolved: bool,
    /// Why an operator must look before the next charge (a hard decline).
    pub attention: Option<String>,
    /// Attempts created in the 30 days before now.
    pub attempts_last_30_days: u32,
}

/// Everything needed to send or look up one attempt: the request is rebuilt from here, never
/// from the live schedule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub attempt_id: i64,
    pub charge_id: i64,
    pub subscription_id: String,
    pub purpose: Purpose,
    pub attempt: u32,
    pub order_number: String,
    pub bill_number: String,
    pub amount: Money,
    pub currency: Currency,
    pub state: AttemptState,
    pub created_at: DateTime<Utc>,
    pub wall_at: DateTime<Utc>,
    /// Whether a request for it may have left (false only for intents never tried).
    pub sent: bool,
    pub checks: u32,
    pub not_found: u32,
    pub test_mode: Option<bool>,
    pub response_code: Option<String>,
    /// Engine-clock instant of the latest send, if one was made.
    pub sent_at: Option<DateTime<Utc>>,
    /// The gateway has shown that it holds this order (`attempts.seen_at`): not-found answers
    /// no longer prove it was never received.
    pub seen: bool,
    /// The fencing token of the claim this job was read under (see `store::boundary`): writes
    /// for it are refused once another instance has claimed the attempt. Always
    /// `store::UNFENCED` where one daemon owns the database.
    pub fence: i64,
}

/// One billing period's row, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodRow {
    pub subscription_id: String,
    pub period: u32,
    pub state: ChargeState,
    pub reason: Option<String>,
}

/// An ad-hoc charge as `recurrentd charge` finds it when its reference was used before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdhocCharge {
    /// The `charges` row.
    pub charge_id: i64,
    pub amount: Money,
    pub currency: Currency,
    pub state: ChargeState,
    pub reason: Option<String>,
    /// The latest attempt's OrderNumber, once the daemon made one.
    pub order_number: Option<String>,
    /// The latest attempt's state, once the daemon made one.
    pub attempt_state: Option<AttemptState>,
    /// Whether an attempt of it has charged or may have (pending, not sent, unknown, parked,
    /// approved, quarantined): then it has been sent, or is about to be.
    pub live_attempt: bool,
}

/// A ledger event to append with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub detail: Value,
}

/// What to change in one charge row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeChange {
    pub state: ChargeState,
    pub reason: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The outcome of one step for an attempt, as the engine decided it; applied atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptChange {
    pub state: AttemptState,
    /// The request left (or may have) in this step, or the gateway showed it had.
    pub sent: bool,
    /// The gateway showed in this step that it holds the order (sets `seen_at` once).
    pub seen: bool,
    /// When it was sent (engine clock), when this step knows.
    pub sent_at: Option<DateTime<Utc>>,
    /// The real time of this send, when one was made.
    pub wall_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    /// This step was a status query.
    pub checked: bool,
    pub not_found: Option<u32>,
    pub test_mode: Option<bool>,
    pub response_code: Option<String>,
    pub checkvalue: Option<&'static str>,
    pub detail: Option<String>,
    pub charge: Option<ChargeChange>,
    /// Flag the subscription for an operator.
    pub attention: Option<Flag>,
    pub event: Option<Event>,
}

/// Why a subscription waits for an operator (`attention.kind`, `attention.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// [`flag::HARD_DECLINE`], [`flag::DOUBLE_APPROVAL`] or [`flag::LATE_APPROVAL`].
    pub kind: &'static str,
    pub reason: String,
}

/// Kinds of [`Flag`]. A possible double charge is also a ledger event of the same name.
pub mod flag {
    pub const HARD_DECLINE: &str = "hard_decline";
    pub const DOUBLE_APPROVAL: &str = "double_approval";
    pub const LATE_APPROVAL: &str = "late_approval";
}

impl AttemptChange {
    /// A change to `state` and nothing else.
    pub fn to(state: AttemptState) -> AttemptChange {
        AttemptChange {
            state,
            sent: false,
            seen: false,
            sent_at: None,
            wall_at: None,
            next_check_at: None,
            checked: false,
            not_found: None,
            test_mode: None,
            response_code: None,
            checkvalue: None,
            detail: None,
            charge: None,
            attention: None,
            event: None,
        }
    }
}

/// Ledger event kinds of the charge lifecycle.
pub mod event {
    pub const PERIOD_SKIPPED: &str = "period_skipped";
    pub const PERIOD_BLOCKED: &str = "period_blocked";
    pub const INTENT: &str = "charge_intent";
    pub const APPROVED: &str = "charge_approved";
    pub const DECLINED: &str = "charge_declined";
    pub const UNKNOWN: &str = "charge_unknown";
    pub const NOT_SENT: &str = "charge_not_sent";
    pub const NOT_RECEIVED: &str = "charge_not_received";
    pub const REJECTED: &str = "charge_rejected";
    pub const QUARANTINED: &str = "charge_quarantined";
    pub const PARKED: &str = "charge_parked";
    pub const HELD: &str = "charge_held";
    pub const PERIOD_FAILED: &str = "period_failed";
    pub const BREAKER_OPENED: &str = "breaker_opened";
    pub const BREAKER_CLEARED: &str = "breaker_cleared";
    /// The engine's clock jumped (or a sweep would skip too many periods at once): no new
    /// charges until an operator acknowledges the clock.
    pub const CLOCK_JUMP: &str = "clock_jump";
    pub const CLOCK_ACKNOWLEDGED: &str = "clock_acknowledged";
    pub const ATTENTION_CLEARED: &str = "attention_cleared";
    pub const ENROLLED: &str = "enrolled";
    pub const ADHOC_REQUESTED: &str = "adhoc_requested";
    /// An operator cancelled an ad-hoc charge before it was sent (`charge --cancel`).
    pub const ADHOC_CANCELLED: &str = "adhoc_cancelled";
    /// An ad-hoc charge still not sent after `engine.adhoc_max_age_hours` was closed as failed.
    pub const ADHOC_EXPIRED: &str = "adhoc_expired";
    /// An operator attested, after checking the gateway, that a parked attempt was paid (not
    /// verified by recurrentd: no checkvalue).
    pub const ATTESTED_PAID: &str = "charge_attested_paid";
    /// An operator attested that a parked attempt was not charged; its period is open again.
    pub const ATTESTED_NOT_CHARGED: &str = "charge_attested_not_charged";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_state_texts_round_trip() {
        for state in AttemptState::ALL {
            assert_eq!(AttemptState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
        }
        assert_eq!(AttemptState::parse("Approved"), None);
        assert_eq!(AttemptState::parse(""), None);
    }

    #[test]
    fn charge_state_texts_round_trip() {
        for state in [
            ChargeState::Open,
            ChargeState::Paid,
            ChargeState::Failed,
            ChargeState::Blocked,
            ChargeState::Skipped,
            ChargeState::Quarantined,
        ] {
            assert_eq!(ChargeState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ChargeState::parse("closed"), None);
    }

    #[test]
    fn unresolved_attempts_may_have_charged() {
        for state in AttemptState::ALL {
            if state.unresolved() {
                assert!(state.may_have_charged(), "{state}");
            }
        }
        assert!(!AttemptState::Declined.may_have_charged());
        assert!(AttemptState::Quarantined.may_have_charged());
        assert!(!AttemptState::Quarantined.unresolved());
    }

    #[test]
    fn purpose_prints_period_or_reference() {
        assert_eq!(Purpose::Period(12).to_string(), "12");
        assert_eq!(Purpose::Period(12).period(), Some(12));
        assert_eq!(Purpose::Adhoc("inv-7".into()).to_string(), "adhoc:inv-7");
        assert_eq!(Purpose::Adhoc("inv-7".into()).period(), None);
    }
}
