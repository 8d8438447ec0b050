//! Ad-hoc charges (`recurrentd charge`): the MIT COF agreement lets the merchant charge any amount
//! at any time (a balance top-up, say), within the same agreed limits as every scheduled charge.
//!
//! The operator's command *queues* the charge ([`queue_adhoc`]): in one write transaction it
//! finds an earlier request with the same reference (then nothing new is queued: running the
//! command twice never charges twice), checks every limit against the ledger, and records the
//! request with its ledger event. The daemon's next sweep makes the attempt ([`plan_adhoc`],
//! limits checked again inside the planning transaction, and once more just before sending), and
//! from there it is an attempt like any other: verified outcome, status lookups, never resent
//! blindly. It is not retried after a decline; a lost attempt (never received) is made again.
//!
//! A request never waits for ever: one the engine comes to make (or make again) more than
//! `engine.adhoc_max_age_hours` after it was requested is closed as failed instead
//! (`adhoc_expired`): a top-up asked for yesterday is not charged today. Until the daemon has
//! made its attempt, an operator may cancel it ([`cancel_adhoc`], `charge --cancel`); once an
//! attempt may have left, only its outcome settles it.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Policy;
use crate::billing::{self, Calendar, Revisit};
use crate::money::Money;
use crate::store::{AdhocCharge, ChargeState, Event, Store, StoreError, event};

/// An operator's ad-hoc charge.
#[derive(Debug, Clone)]
pub struct AdhocRequest<'a> {
    pub subscription: &'a str,
    /// The operator's unique reference (a ticket number): the request's identity.
    pub reference: &'a str,
    pub amount: Money,
    pub reason: Option<&'a str>,
    /// Who asked (recorded in the ledger).
    pub by: &'a str,
}

/// What queueing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Queued now, for the daemon's next sweep.
    New { charge_id: i64 },
    /// This reference was used before, for the same amount: nothing new was queued.
    Existing(AdhocCharge),
}

/// Why an ad-hoc charge was not queued.
#[derive(Debug, thiserror::Error)]
pub enum AdhocError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("reference {reference:?}: 1 to 64 printable ASCII characters without spaces")]
    BadReference { reference: String },
    #[error("no subscription {0:?} in the database (or it was removed from the schedule files)")]
    UnknownSubscription(String),
    #[error(
        "reference {reference:?} was already used for a charge of {amount} {currency} ({state})"
    )]
    ReferenceReused {
        reference: String,
        amount: Money,
        currency: String,
        state: String,
    },
    #[error("refused: {0}")]
    Refused(String),
}

/// Queues an ad-hoc charge at `now` (see the module documentation).
pub fn queue_adhoc(
    store: &mut Store,
    request: &AdhocRequest<'_>,
    calendar: &Calendar,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Queued, AdhocError> {
    let reference = request.reference;
    if reference.is_empty()
        || reference.len() > 64
        || !reference.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AdhocError::BadReference {
            reference: reference.to_string(),
        });
    }
    let tx = store.plan(now)?;
    if let Some(existing) = tx.adhoc_by_reference(request.subscription, reference)? {
        if existing.amount != request.amount {
            return Err(AdhocError::ReferenceReused {
                reference: reference.to_string(),
                amount: existing.amount,
                currency: existing.currency.as_str().to_string(),
                state: existing.state.as_str().to_string(),
            });
        }
        return Ok(Queued::Existing(existing));
    }
    let Some(history) = tx.history(request.subscription)? else {
        return Err(AdhocError::UnknownSubscription(
            request.subscription.to_string(),
        ));
    };
    if let Some(reason) = &history.attention {
        return Err(AdhocError::Refused(format!(
            "the subscription waits for an operator ({reason}); `recurrentd resume` it first"
        )));
    }
    if history.attempts_last_30_days >= policy.max_attempts_per_30_days {
        return Err(AdhocError::Refused(
            "no attempts left in the 30-day budget".into(),
        ));
    }
    // Another ad-hoc charge still waiting for its attempt counts as made now.
    let mut charged = history.charged.clone();
    if tx.adhoc_open(request.subscription)?.is_some() {
        charged.push(now);
    }
    let sub = &history.subscription;
    billing::verdict(&sub.terms, calendar, &charged, request.amount, now)
        .map_err(|reason| AdhocError::Refused(reason.to_string()))?;
    let charge_id = tx.queue_adhoc(
        sub,
        reference,
        request.amount,
        calendar.local_date(now),
        Event {
            kind: event::ADHOC_REQUESTED,
            detail: json!({
                "reference": reference,
                "amount": request.amount.to_string(),
                "currency": sub.currency.as_str(),
                "reason": request.reason,
                "by": request.by,
            }),
        },
    )?;
    // The due sweep looks at the subscription at its next tick.
    tx.revisit(request.subscription, Revisit::Now)?;
    tx.commit()?;
    Ok(Queued::New { charge_id })
}

/// An operator's cancellation of an ad-hoc charge.
#[derive(Debug, Clone)]
pub struct CancelRequest<'a> {
    pub subscription: &'a str,
    pub reference: &'a str,
    pub reason: &'a str,
    /// Who asked (recorded in the ledger).
    pub by: &'a str,
}

/// Why an ad-hoc charge was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no ad-hoc charge with reference {reference:?} for subscription {subscription:?}")]
    Unknown {
        subscription: String,
        reference: String,
    },
    /// An attempt has left or is about to (pending, not sent, unknown, parked, approved,
    /// quarantined): only its outcome settles it.
    #[error(
        "reference {reference:?} cannot be cancelled: the daemon has made its attempt (order \
         {order_number}, now {state}), which was sent or is being sent and may charge; follow it \
         with `recurrentd history`"
    )]
    Sent {
        reference: String,
        order_number: String,
        state: String,
        found: Box<AdhocCharge>,
    },
    #[error("reference {reference:?} cannot be cancelled: it is already settled ({state}{})",
        reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Settled {
        reference: String,
        state: String,
        reason: Option<String>,
        found: Box<AdhocCharge>,
    },
}

/// Cancels a queued ad-hoc charge at `now`: in one write transaction, the request is read and,
/// if it is still open and no attempt of it has charged or may have, closed (`blocked`, with
/// the operator and the reason) with an `adhoc_cancelled` ledger event. The daemon plans in
/// write transactions too, so it either made its attempt before (refused here) or finds the
/// request closed.
pub fn cancel_adhoc(
    store: &mut Store,
    request: &CancelRequest<'_>,
    now: DateTime<Utc>,
) -> Result<AdhocCharge, CancelError> {
    let tx = store.plan(now)?;
    let Some(found) = tx.adhoc_by_reference(request.subscription, request.reference)? else {
        return Err(CancelError::Unknown {
            subscription: request.subscription.to_string(),
            reference: request.reference.to_string(),
        });
    };
    if found.state != ChargeState::Open {
        let mut state = found.state.as_str().to_string();
        if let (Some(order), Some(attempt)) = (&found.order_number, found.attempt_state) {
            state += &format!(", order {order} {}", attempt.as_str());
        }
        return Err(CancelError::Settled {
            reference: request.reference.to_string(),
            state,
            reason: found.reason.clone(),
            found: Box::new(found),
        });
    }
    if found.live_attempt {
        return Err(CancelError::Sent {
            reference: request.reference.to_string(),
            order_number: found.order_number.clone().unwrap_or_default(),
            state: found
                .attempt_state
                .map_or("pending", |s| s.as_str())
                .to_string(),
            found: Box::new(found),
        });
    }
    let reason = format!("cancelled by {}: {}", request.by, request.reason);
    tx.close_period(
        request.subscription,
        found.charge_id,
        ChargeState::Blocked,
        &reason,
        Event {
            kind: event::ADHOC_CANCELLED,
            detail: json!({
                "reference": request.reference,
                "amount": found.amount.to_string(),
                "currency": found.currency.as_str(),
                "by": request.by,
                "reason": request.reason,
            }),
        },
    )?;
    // Whatever the schedule waited for behind it is planned at the next sweep.
    tx.revisit(request.subscription, Revisit::Now)?;
    tx.commit()?;
    Ok(AdhocCharge {
        state: ChargeState::Blocked,
        reason: Some(reason),
        ..found
    })
}
