//! Refunds (`recurrentd refund`): a refund of an approved attempt is recorded `pending` with its
//! `refund_requested` event before its wscancel.cfm request is sent, and settled only by what the
//! order's verified status shows: `completed` or `failed`. Every settlement is guarded by the state
//! `pending`, so two runs never settle one refund twice; the unique index on pending refunds
//! keeps a second refund of the same order from being recorded while one is pending; and the
//! recording transaction refuses a refund beyond what remains of the charge (completed and
//! pending refunds count against it).
//!
//! A refund never changes the attempt (it stays `approved`) nor its charge (`paid`): the ledger
//! keeps the approval and adds the refund, and every limit still counts the charge.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::json;

use super::charges::{append, corrupt};
use super::{AttemptState, Context, Store, StoreError, parse_timestamp, timestamp};
use crate::money::{Currency, Money};

/// Ledger event kinds of a refund.
pub mod refund_event {
    /// Recorded before the wscancel.cfm request was sent.
    pub const REQUESTED: &str = "refund_requested";
    /// The outcome is not known yet (no usable answer, or the order's status does not show it
    /// yet): still pending, looked up by the next run, never sent again.
    pub const PENDING: &str = "refund_pending";
    /// The order's verified status shows the refund.
    pub const COMPLETED: &str = "refund_completed";
    /// Verifiably not refunded (refused, never sent, not applied): a new request may be made.
    pub const FAILED: &str = "refund_failed";
}

/// Where a refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundState {
    Pending,
    Completed,
    Failed,
}

impl RefundState {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Pending => "pending",
            RefundState::Completed => "completed",
            RefundState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RefundState> {
        match text {
            "pending" => Some(RefundState::Pending),
            "completed" => Some(RefundState::Completed),
            "failed" => Some(RefundState::Failed),
            _ => None,
        }
    }
}

/// An attempt a refund could be for, as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundTarget {
    pub attempt_id: i64,
    pub order_number: String,
    pub subscription_id: String,
    pub charge_id: i64,
    /// The period's due date, or `adhoc:<reference>`.
    pub purpose: String,
    pub state: AttemptState,
    /// `verified`, `absent` (an operator attested it paid), `mismatch` or none.
    pub checkvalue: Option<String>,
    pub amount: Money,
    pub currency: Currency,
    /// Real time of the attempt's latest send: the order's status is searched around it.
    pub wall_at: DateTime<Utc>,
}

/// One refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// `<order number>-R<n>`.
    pub reference: String,
    pub attempt_id: i64,
    pub order_number: String,
    pub state: RefundState,
    pub amount: Money,
    pub currency: Currency,
    pub reason: String,
    pub operator: Option<String>,
    pub bill_number: Option<String>,
    /// Real time just before the request was sent.
    pub created_at: DateTime<Utc>,
    /// The last outcome noted.
    pub detail: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What `record_pending_refund` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded pending: send it now.
    Pending(Refund),
    /// The attempt is not (or no longer) approved: nothing recorded.
    NotApproved(AttemptState),
    /// More than remains (the completed and pending refunds counted): nothing recorded.
    BeyondRemaining { remaining_cents: i64 },
    /// Another refund of this order is pending: nothing recorded.
    OtherPending(String),
}

const COLUMNS: &str = "r.reference, r.attempt_id, a.order_number, r.state, r.amount_cents, \
    r.currency, r.reason, r.operator, r.bill_number, r.created_at, r.detail, r.updated_at";

fn decode(path: &std::path::Path, row: &rusqlite::Row<'_>) -> Result<Refund, StoreError> {
    let get = |source: rusqlite::Error| StoreError::Sqlite {
        path: path.to_path_buf(),
        what: "reading refunds".to_string(),
        source,
    };
    let state: String = row.get(3).map_err(get)?;
    let cents: i64 = row.get(4).map_err(get)?;
    let currency: String = row.get(5).map_err(get)?;
    let created: String = row.get(9).map_err(get)?;
    let updated: String = row.get(11).map_err(get)?;
    Ok(Refund {
        reference: row.get(0).map_err(get)?,
        attempt_id: row.get(1).map_err(get)?,
        order_number: row.get(2).map_err(get)?,
        state: RefundState::parse(&state).ok_or_else(|| corrupt(path, "refunds.state", &state))?,
        amount: Money::from_cents(cents)
            .ok_or_else(|| corrupt(path, "refunds.amount_cents", cents))?,
        currency: Currency::parse(&currency)
            .map_err(|_| corrupt(path, "refunds.currency", &currency))?,
        reason: row.get(6).map_err(get)?,
        operator: row.get(7).map_err(get)?,
        bill_number: row.get(8).map_err(get)?,
        created_at: parse_timestamp(path, "refunds.created_at", &created)?,
        detail: row.get(10).map_err(get)?,
        updated_at: parse_timestamp(path, "refunds.updated_at", &updated)?,
    })
}

impl Store {
    /// The attempt under an order number, for a refund; `None` if no attempt has it.
    pub fn refund_target(&self, order_number: &str) -> Result<Option<RefundTarget>, StoreError> {
        let what = "reading an attempt for a refund";
        let found = self
            .conn
            .query_row(
                "SELECT a.id, a.order_number, c.subscription_id, c.id, \
                 COALESCE('adhoc:' || c.reference, c.due_date), a.state, a.checkvalue, \
                 c.amount_cents, c.currency, a.wall_at \
                 FROM attempts a JOIN charges c ON c.id = a.charge_id \
                 WHERE a.order_number = ?1",
                [order_number],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                        row.get::<_, Option<String>>(6)?,
                        row.get::<_, i64>(7)?,
                        row.get::<_, String>(8)?,
                        row.get::<_, String>(9)?,
                    ))
                },
            )
            .optional()
            .ctx(&self.path, what)?;
        let Some(r) = found else {
            return Ok(None);
        };
        let path = &self.path;
        Ok(Some(RefundTarget {
            attempt_id: r.0,
            order_number: r.1,
            subscription_id: r.2,
            charge_id: r.3,
            purpose: r.4,
            state: AttemptState::parse(&r.5)
                .ok_or_else(|| corrupt(path, "attempts.state", &r.5))?,
            checkvalue: r.6,
            amount: Money::from_cents(r.7)
                .ok_or_else(|| corrupt(path, "charges.amount_cents", r.7))?,
            currency: Currency::parse(&r.8).map_err(|_| corrupt(path, "charges.currency", &r.8))?,
            wall_at: parse_timestamp(path, "attempts.wall_at", &r.9)?,
        }))
    }

    /// How much of the attempt under `order_number` was refunded (completed refunds) and how
    /// much is pending, in minor units: `(0, 0)` for an order without refunds or unknown here.
    /// For the books: an order of ours the gateway shows `Canceled` / `PartialCanceled` is
    /// refunded, not unpaid, when these account for it.
    pub fn refunded_cents(&self, order_number: &str) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(CASE WHEN r.state = 'completed' THEN r.amount_cents END), 0), \
                 COALESCE(SUM(CASE WHEN r.state = 'pending' THEN r.amount_cents END), 0) \
                 FROM refunds r JOIN attempts a ON a.id = r.attempt_id \
                 WHERE a.order_number = ?1",
                [order_number],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .ctx(&self.path, "reading refunds")
    }

    /// Every refund of an attempt, oldest first.
    pub fn refunds_of(&self, attempt_id: i64) -> Result<Vec<Refund>, StoreError> {
        let what = "reading refunds";
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM refunds r JOIN attempts a ON a.id = r.attempt_id \
                 WHERE r.attempt_id = ?1 ORDER BY r.created_at, r.reference"
            ))
            .ctx(&self.path, what)?;
        let mut rows = statement.query([attempt_id]).ctx(&self.path, what)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().ctx(&self.path, what)? {
            out.push(decode(&self.path, row)?);
        }
        Ok(out)
    }

    /// Records a refund of `amount` of the attempt as pending, with its `refund_requested`
    /// event, before its request is sent, in one transaction that checks again that the attempt
    /// is approved, that no other refund of it is pending, and that the amount is no more than
    /// what remains once every completed and pending refund is counted.
    pub fn record_pending_refund(
        &mut self,
        target: &RefundTarget,
        amount: Money,
        reason: &str,
        operator: &str,
        bill_number: &str,
        now: DateTime<Utc>,
    ) -> Result<Recorded, StoreError> {
        self.require_write("recording a refund")?;
        let what = "recording a refund";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let (state, charge_cents): (String, i64) = tx
            .query_row(
                "SELECT a.state, c.amount_cents FROM attempts a \
                 JOIN charges c ON c.id = a.charge_id WHERE a.id = ?1",
                [target.attempt_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .ctx(&path, what)?;
        let state =
            AttemptState::parse(&state).ok_or_else(|| corrupt(&path, "attempts.state", &state))?;
        if state != AttemptState::Approved {
            return Ok(Recorded::NotApproved(state));
        }
        let pending: Option<String> = tx
            .query_row(
                "SELECT reference FROM refunds WHERE attempt_id = ?1 AND state = 'pending'",
                [target.attempt_id],
                |row| row.get(0),
            )
            .optional()
            .ctx(&path, what)?;
        if let Some(reference) = pending {
            return Ok(Recorded::OtherPending(reference));
        }
        let (taken, count): (i64, i64) = tx
            .query_row(
                "SELECT COALESCE(SUM(CASE WHEN state IN ('pending', 'completed') \
                 THEN amount_cents ELSE 0 END), 0), count(*) FROM refunds WHERE attempt_id = ?1",
                [target.attempt_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .ctx(&path, what)?;
        let remaining_cents = charge_cents - taken;
        if amount.cents() > remaining_cents {
            return Ok(Recorded::BeyondRemaining { remaining_cents });
        }
        let reference = format!("{}-R{}", target.order_number, count + 1);
        let at = timestamp(now);
        tx.execute(
            "INSERT INTO refunds (reference, attempt_id, state, amount_cents, currency, reason, \
             operator, bill_number, created_at, updated_at) \
             VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                reference,
                target.attempt_id,
                amount.cents(),
                target.currency.as_str(),
                reason,
                operator,
                bill_number,
                at,
            ],
        )
        .ctx(&path, what)?;
        let event = super::Event {
            kind: refund_event::REQUESTED,
            detail: json!({
                "refund": reference,
                "order_number": target.order_number,
                "amount": amount.to_string(),
                "currency": target.currency.as_str(),
                "charge_amount": target.amount.to_string(),
                "remaining_after": Money::from_cents(remaining_cents - amount.cents())
                    .map_or_else(|| "0.00".to_string(), |m| m.to_string()),
                "reason": reason,
                "operator": operator,
                "bill_number": bill_number,
            }),
        };
        append(
            &tx,
            &path,
            &at,
            Some(&target.subscription_id),
            Some(target.charge_id),
            &event,
        )?;
        tx.commit().ctx(&path, what)?;
        Ok(Recorded::Pending(Refund {
            reference,
            attempt_id: target.attempt_id,
            order_number: target.order_number.clone(),
            state: RefundState::Pending,
            amount,
            currency: target.currency,
            reason: reason.to_string(),
            operator: Some(operator.to_string()),
            bill_number: Some(bill_number.to_string()),
            created_at: now,
            detail: None,
            updated_at: now,
        }))
    }

    /// Settles a pending refund as `completed` or `failed` with its ledger event, or keeps it
    /// pending with a `refund_pending` event noting why (`state` pending). Guarded by the state
    /// `pending`: `Ok(false)` when it no longer is (another run settled it), nothing written.
    pub fn settle_refund(
        &mut self,
        reference: &str,
        state: RefundState,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.require_write("settling a refund")?;
        let what = "settling a refund";
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(&path, what)?;
        let found: Option<(String, i64, i64, String, String)> = tx
            .query_row(
                "SELECT c.subscription_id, c.id, r.amount_cents, r.currency, a.order_number \
                 FROM refunds r JOIN attempts a ON a.id = r.attempt_id \
                 JOIN charges c ON c.id = a.charge_id \
                 WHERE r.reference = ?1 AND r.state = 'pending'",
                [reference],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()
            .ctx(&path, what)?;
        let Some((subscription, charge_id, cents, currency, order_number)) = found else {
            return Ok(false);
        };
        let at = timestamp(now);
        tx.execute(
            "UPDATE refunds SET state = ?2, detail = ?3, updated_at = ?4 \
             WHERE reference = ?1 AND state = 'pending'",
            params![reference, state.as_str(), detail, at],
        )
        .ctx(&path, what)?;
        let kind = match state {
            RefundState::Pending => refund_event::PENDING,
            RefundState::Completed => refund_event::COMPLETED,
            RefundState::Failed => refund_event::FAILED,
        };
        let amount = Money::from_cents(cents)
            .ok_or_else(|| corrupt(&path, "refunds.amount_cents", cents))?;
        let event = super::Event {
            kind,
            detail: json!({
                "refund": reference,
                "order_number": order_number,
                "amount": amount.to_string(),
                "currency": currency,
                "detail": detail,
            }),
        };
        append(
            &tx,
            &path,
            &at,
            Some(&subscription),
            Some(charge_id),
            &event,
        )?;
        tx.commit().ctx(&path, what)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use serde_json::json;

    use super::*;
    use crate::schedule::{DirReport, parse_text};
    use crate::store::{AttemptChange, ChargeChange, ChargeState, Event, event};

    fn at(month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, month, day, 7, 0, 0).unwrap()
    }

    /// A store whose subscription `s1` has period 0 charged (100.00 RUB) by attempt `ORD-1`,
    /// through the calls the engine makes; `approve` false leaves it unknown.
    fn charged(approve: bool) -> (tempfile::TempDir, Store, RefundTarget) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_or_create(&dir.path().join("recurrentd.db")).unwrap();
        let text = "[[subscription]]\nid = \"s1\"\nbill_number = \"5899110210000001\"\n\
                    currency = \"RUB\"\namount = \"100.00\"\nevery = \"1 month\"\n\
                    start = 2027-01-01\n\n";
        let report = DirReport {
            files: vec![parse_text(std::path::Path::new("schedules/a.toml"), text)],
        };
        store.sync_schedules(&report, at(1, 1)).unwrap();
        let tx = store.plan(at(1, 1)).unwrap();
        let history = tx.history("s1").unwrap().unwrap();
        let open = tx
            .open_period(
                &history.subscription,
                0,
                NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
            )
            .unwrap();
        let job = tx
            .new_attempt(
                "s1",
                &open,
                "ORD-1",
                at(1, 1),
                Event {
                    kind: event::INTENT,
                    detail: json!({}),
                },
            )
            .unwrap();
        tx.commit().unwrap();
        assert!(
            store
                .mark_sending(job.attempt_id, AttemptState::Pending, at(1, 1), at(1, 1))
                .unwrap()
        );
        let mut change = AttemptChange::to(if approve {
            AttemptState::Approved
        } else {
            AttemptState::Unknown
        });
        change.sent = true;
        if approve {
            change.checkvalue = Some("verified");
            change.charge = Some(ChargeChange {
                state: ChargeState::Paid,
                reason: None,
                next_attempt_at: None,
            });
        }
        assert!(
            store
                .apply(job.attempt_id, AttemptState::Pending, &change, at(1, 1))
                .unwrap()
        );
        let target = store.refund_target("ORD-1").unwrap().unwrap();
        (dir, store, target)
    }

    fn money(text: &str) -> Money {
        Money::parse(text).unwrap()
    }

    #[test]
    fn a_refund_is_recorded_once_and_never_beyond_what_remains() {
        let (_dir, mut store, target) = charged(true);
        assert_eq!(target.state, AttemptState::Approved);
        assert_eq!(target.amount, money("100.00"));
        let record = |store: &mut Store, amount: &str| {
            store
                .record_pending_refund(&target, money(amount), "why", "bob", "5899.1", at(1, 2))
                .unwrap()
        };
        assert_eq!(
            record(&mut store, "100.01"),
            Recorded::BeyondRemaining {
                remaining_cents: 10000
            }
        );
        let Recorded::Pending(first) = record(&mut store, "60.00") else {
            panic!("not recorded");
        };
        assert_eq!(first.reference, "ORD-1-R1");
        // One pending refund per attempt.
        assert_eq!(
            record(&mut store, "10.00"),
            Recorded::OtherPending("ORD-1-R1".into())
        );
        // Settled once: a second settlement finds it no longer pending and writes nothing.
        assert!(
            store
                .settle_refund(&first.reference, RefundState::Completed, "shown", at(1, 2))
                .unwrap()
        );
        assert!(
            !store
                .settle_refund(&first.reference, RefundState::Failed, "late", at(1, 3))
                .unwrap()
        );
        // The completed refund counts against what remains.
        assert_eq!(
            record(&mut store, "40.01"),
            Recorded::BeyondRemaining {
                remaining_cents: 4000
            }
        );
        let Recorded::Pending(second) = record(&mut store, "40.00") else {
            panic!("not recorded");
        };
        assert_eq!(second.reference, "ORD-1-R2");
        let refunds = store.refunds_of(target.attempt_id).unwrap();
        assert_eq!(refunds.len(), 2);
        assert_eq!(refunds[0].state, RefundState::Completed);
        assert_eq!(refunds[1].state, RefundState::Pending);
        // The attempt stays approved, the period paid; the ledger adds the refund events.
        assert_eq!(
            store.refund_target("ORD-1").unwrap().unwrap().state,
            AttemptState::Approved
        );
        assert_eq!(
            store.periods(Some("s1")).unwrap()[0].state,
            ChargeState::Paid
        );
        let kinds: Vec<_> = store
            .ledger(Some("s1"))
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .filter(|k| k.starts_with("refund_"))
            .collect();
        assert_eq!(
            kinds,
            [
                refund_event::REQUESTED,
                refund_event::COMPLETED,
                refund_event::REQUESTED
            ]
        );
        assert_eq!(store.refunded_cents("ORD-1").unwrap(), (6000, 4000));
        assert_eq!(store.refunded_cents("nobody").unwrap(), (0, 0));
        let history = store.history(Some("s1"), None).unwrap();
        assert_eq!(history[0].refunded.as_deref(), Some("60.00"));
        assert_eq!(history[0].refund_pending.as_deref(), Some("40.00"));
    }

    #[test]
    fn only_an_approved_attempt_is_refunded() {
        let (_dir, mut store, target) = charged(false);
        assert_eq!(
            store
                .record_pending_refund(&target, money("1.00"), "why", "bob", "b", at(1, 2))
                .unwrap(),
            Recorded::NotApproved(AttemptState::Unknown)
        );
        assert!(store.refunds_of(target.attempt_id).unwrap().is_empty());
    }
}
