//! An operator settles a parked attempt by hand (`recurrentd resolve`), after looking the order up
//! at the gateway's merchant portal.
//!
//! Only a `parked` or `quarantined` attempt can be resolved (the daemon keeps looking both up,
//! and holds the subscription meanwhile): anything else is the daemon's to settle (or already
//! settled). The change and its ledger event are written by [`Store::apply`] in one transaction,
//! guarded by the state it was read in: if the daemon settled the attempt meanwhile (its rare
//! status lookup finally got an answer), nothing is written and [`Resolved::Raced`] says what it
//! became.
//!
//! - **Paid**: the attempt becomes `approved` and its period (or ad-hoc charge) `paid`, with
//!   checkvalue `absent`: recurrentd did not verify it, an operator attested it, and the ledger
//!   event (`charge_attested_paid`, `verified: false`) says so.
//! - **Not charged**: the attempt becomes `not_received` (it no longer counts for any limit) and
//!   its period is `open` again with no retry instant: the daemon's next sweep makes a new attempt
//!   under a NEW OrderNumber, subject to every limit, the retry window (the period fails once the
//!   next one is due) and the 30-day attempt budget — the same charge change the engine applies
//!   after two not-found answers, without its backoff (an operator has looked).

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{
    AttemptChange, AttemptState, ChargeChange, ChargeState, Event, Job, Store, StoreError, event,
};

/// What the operator found at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The order is paid (approved) at the gateway.
    Paid,
    /// The gateway has no charge for it (no order, or one that did not charge).
    NotCharged,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Paid => "paid",
            Resolution::NotCharged => "not_charged",
        }
    }
}

/// What `resolve_parked` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Recorded; the attempt as it was before (parked).
    Done(Job),
    /// No attempt has this OrderNumber.
    NotFound,
    /// The attempt is neither parked nor quarantined: nothing to resolve by hand.
    NotParked(Job),
    /// It was parked when read, but the daemon settled it before this change could be written:
    /// nothing was written; the attempt as it is now.
    Raced(Job),
}

impl Store {
    /// Settles the parked attempt `order_number` as an operator found it at the gateway, with a
    /// ledger event naming `by` and `why`. See the module documentation.
    pub fn resolve_parked(
        &mut self,
        order_number: &str,
        resolution: Resolution,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<Resolved, StoreError> {
        self.require_write("resolving a parked charge")?;
        let Some(job) = self.attempt_by_order_number(order_number)? else {
            return Ok(Resolved::NotFound);
        };
        if !matches!(job.state, AttemptState::Parked | AttemptState::Quarantined) {
            return Ok(Resolved::NotParked(job));
        }
        self.resolve_seen(job, resolution, by, why, now)
    }

    /// Writes the resolution of `job`, read as parked or quarantined, only if it still is.
    fn resolve_seen(
        &mut self,
        job: Job,
        resolution: Resolution,
        by: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<Resolved, StoreError> {
        let change = resolution_change(&job, resolution, by, why);
        if self.apply(job.attempt_id, job.state, &change, now)? {
            return Ok(Resolved::Done(job));
        }
        let current = self.attempt_by_order_number(&job.order_number)?;
        Ok(Resolved::Raced(current.unwrap_or(job)))
    }
}

/// The change an operator's resolution makes to a parked attempt.
fn resolution_change(job: &Job, resolution: Resolution, by: &str, why: &str) -> AttemptChange {
    let detail = json!({
        "order_number": job.order_number,
        "period": job.purpose.period(),
        "reference": match &job.purpose {
            super::Purpose::Adhoc(reference) => Some(reference.as_str()),
            super::Purpose::Period(_) => None,
        },
        "attempt": job.attempt,
        "amount": job.amount.to_string(),
        "currency": job.currency.as_str(),
        "resolution": resolution.as_str(),
        "verified": false,
        "checkvalue": "absent",
        "attested_by": by,
        "why": why,
    });
    match resolution {
        Resolution::Paid => {
            let mut change = AttemptChange::to(AttemptState::Approved);
            // The operator saw the order at the gateway: it was sent. A send instant unknown to
            // the ledger is taken to be the intent's, as when the engine finds an order.
            change.sent = true;
            change.sent_at = job.sent_at.is_none().then_some(job.created_at);
            change.checkvalue = Some("absent");
            change.detail = Some(format!(
                "paid as attested by {by} (checked at the gateway by hand; not verified by \
                 recurrentd): {why}"
            ));
            change.charge = Some(ChargeChange {
                state: ChargeState::Paid,
                reason: Some(format!(
                    "paid as attested by {by} (not verified by recurrentd)"
                )),
                next_attempt_at: None,
            });
            change.event = Some(Event {
                kind: event::ATTESTED_PAID,
                detail,
            });
            change
        }
        Resolution::NotCharged => {
            let mut change = AttemptChange::to(AttemptState::NotReceived);
            change.detail = Some(format!(
                "not charged as attested by {by} (checked at the gateway by hand): {why}"
            ));
            change.charge = Some(ChargeChange {
                state: ChargeState::Open,
                reason: Some(format!(
                    "{by} attested the previous attempt was not charged; the next sweep makes a \
                     new attempt under a new order number"
                )),
                next_attempt_at: None,
            });
            change.event = Some(Event {
                kind: event::ATTESTED_NOT_CHARGED,
                detail,
            });
            change
        }
    }
}

#[cfg(test)]
mod tests;
