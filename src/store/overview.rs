//! `status --all`: every subscription with where its billing stands, read by ONE streaming query.
//!
//! The query walks `subscriptions` in id order and finds everything else per row through indexes
//! (the latest period by `UNIQUE (subscription_id, period)`, its attempts by
//! `UNIQUE (charge_id, attempt)`, ad-hoc charges by `UNIQUE (subscription_id, reference)`, the
//! attention row and enrolment by primary key). The two rare flags are collected once before
//! the walk: parked attempts through the partial index `attempts_unresolved`, quarantined periods
//! by one sequential pass over `charges` (no index holds `charges.state`). Rows are handed to the
//! caller as they are read, so memory does not grow with the number of subscriptions. What the
//! rows mean for billing (the next due instant) is computed by the caller with `billing`.

use chrono::{DateTime, NaiveDate, Utc};

use super::{
    AttemptState, ChargeState, Context, SUBSCRIPTION_COLUMNS, Store, StoreError,
    StoredSubscription, parse_date, parse_timestamp, sync_sqlite,
};

/// One subscription as `status --all` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOverview {
    pub subscription: StoredSubscription,
    /// Why it waits for an operator (a hard decline, a possible double charge), and since when
    /// (`resume` clears it).
    pub flagged: Option<(String, DateTime<Utc>)>,
    /// The flag's kind (`attention.kind`: hard_decline, double_approval, late_approval).
    pub flag_kind: Option<String>,
    /// The OrderNumber of its parked attempt (outcome unknown for too long; `resolve` settles it).
    pub parked: Option<String>,
    /// How many of its periods an answer that failed verification quarantined.
    pub quarantined: u32,
    /// Its latest period row (ad-hoc charges are not periods), if any.
    pub last_period: Option<PeriodPosition>,
    /// Its latest attempt (period or ad-hoc), else its enrolment's initial payment.
    pub last_outcome: Option<LastOutcome>,
}

/// The latest period row of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodPosition {
    pub period: u32,
    pub due_date: NaiveDate,
    pub state: ChargeState,
    /// A scheduled retry of an open period.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// An attempt of it has charged or may have (pending, unknown, parked, approved, ...).
    pub live_attempt: bool,
}

/// The latest attempt of a subscription (or its enrolment's initial payment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastOutcome {
    pub state: AttemptState,
    pub order_number: String,
    /// When it reached that state (the attempt's `updated_at`, daemon's clock), or when the
    /// initial payment was made.
    pub at: DateTime<Utc>,
    /// The enrolment's initial payment (no attempt yet).
    pub initial: bool,
}

/// Parked attempts and quarantined periods are rare: collected once, joined by an automatic
/// index. `a.state IN (...)` repeats the partial index's condition so that SQLite may use it.
const OVERVIEW_SQL: &str = "\
WITH parked AS MATERIALIZED ( \
    SELECT c.subscription_id AS sub, max(a.order_number) AS order_number \
    FROM attempts a JOIN charges c ON c.id = a.charge_id \
    WHERE a.state IN ('pending', 'not_sent', 'unknown', 'parked') AND a.state = 'parked' \
    GROUP BY c.subscription_id), \
quarantined AS MATERIALIZED ( \
    SELECT subscription_id AS sub, count(*) AS n FROM charges NOT INDEXED \
    WHERE state = 'quarantined' GROUP BY subscription_id) \
SELECT {COLUMNS}, t.reason, t.since, \
    lc.period, lc.due_date, lc.state, lc.next_attempt_at, \
    CASE WHEN lc.state = 'open' THEN EXISTS (SELECT 1 FROM attempts x WHERE x.charge_id = lc.id \
        AND x.state IN ('pending', 'not_sent', 'unknown', 'parked', 'approved', 'quarantined')) \
        ELSE 0 END, \
    la.state, la.order_number, la.updated_at, e.order_number, e.at, \
    p.order_number, COALESCE(q.n, 0), t.kind \
FROM subscriptions s \
LEFT JOIN attention t ON t.subscription_id = s.id \
LEFT JOIN charges lc ON lc.id = (SELECT id FROM charges \
    WHERE subscription_id = s.id AND period IS NOT NULL ORDER BY period DESC LIMIT 1) \
LEFT JOIN attempts la ON la.id = max( \
    COALESCE( \
        (SELECT max(a.id) FROM attempts a WHERE a.charge_id = lc.id), \
        (SELECT max(a.id) FROM attempts a WHERE a.charge_id = (SELECT c.id FROM charges c \
            WHERE c.subscription_id = s.id AND c.period IS NOT NULL \
            AND EXISTS (SELECT 1 FROM attempts x WHERE x.charge_id = c.id) \
            ORDER BY c.period DESC LIMIT 1)), \
        0), \
    COALESCE((SELECT max(a.id) FROM charges c JOIN attempts a ON a.charge_id = c.id \
        WHERE c.subscription_id = s.id AND c.reference IS NOT NULL), 0)) \
LEFT JOIN enrolments e ON e.subscription_id = s.id \
LEFT JOIN parked p ON p.sub = s.id \
LEFT JOIN quarantined q ON q.sub = s.id \
{WHERE} \
ORDER BY s.id";

// Why the latest attempt is found this way: attempts of a later period are always newer than
// those of an earlier one (a period is closed before the next is opened, and only the latest
// period is ever retried), so the newest period attempt is on the latest period row that has
// attempts — usually the latest period row itself, which COALESCE tries first; ad-hoc charges
// interleave, so their newest attempt is looked up separately and the larger id wins.

impl Store {
    /// Every subscription (active and removed), by id, with where its billing stands; each row
    /// is handed to `each` as it is read. Stops at the first error `each` returns.
    pub fn each_subscription_overview<E: From<StoreError>>(
        &self,
        each: impl FnMut(SubscriptionOverview) -> Result<(), E>,
    ) -> Result<(), E> {
        self.overviews(None, each)
    }

    /// One subscription (active or removed) with where its billing stands; `None` for an id
    /// the store does not know.
    pub fn subscription_overview(
        &self,
        id: &str,
    ) -> Result<Option<SubscriptionOverview>, StoreError> {
        let mut found = None;
        self.overviews(Some(id), |o| -> Result<(), StoreError> {
            found = Some(o);
            Ok(())
        })?;
        Ok(found)
    }

    fn overviews<E: From<StoreError>>(
        &self,
        only: Option<&str>,
        mut each: impl FnMut(SubscriptionOverview) -> Result<(), E>,
    ) -> Result<(), E> {
        let what = "reading every subscription's status";
        let path = &self.path;
        let columns: Vec<String> = SUBSCRIPTION_COLUMNS
            .split(',')
            .map(|c| format!("s.{}", c.trim()))
            .collect();
        // The subscription's columns come first, in `SubRow::from_row`'s order.
        let n = columns.len();
        let columns = columns.join(", ");
        let sql = OVERVIEW_SQL.replace("{COLUMNS}", &columns).replace(
            "{WHERE}",
            if only.is_some() {
                "WHERE s.id = ?1"
            } else {
                ""
            },
        );
        let mut statement = self.conn.prepare(&sql).ctx(path, what)?;
        let mut rows = match only {
            Some(id) => statement.query([id]),
            None => statement.query([]),
        }
        .ctx(path, what)?;
        let corrupt = |what: &str, value: String| StoreError::Corrupt {
            path: path.clone(),
            what: what.into(),
            value,
        };
        while let Some(row) = rows.next().ctx(path, what)? {
            let subscription = sync_sqlite::sub_row(row).ctx(path, what)?.decode(path)?;
            let get_text = |i: usize| row.get::<_, Option<String>>(n + i).ctx(path, what);
            let flagged = match (get_text(0)?, get_text(1)?) {
                (Some(reason), Some(since)) => {
                    Some((reason, parse_timestamp(path, "attention.since", &since)?))
                }
                _ => None,
            };
            let period: Option<i64> = row.get(n + 2).ctx(path, what)?;
            let last_period = match (period, get_text(3)?, get_text(4)?) {
                (Some(period), Some(due), Some(state)) => Some(PeriodPosition {
                    period: u32::try_from(period)
                        .map_err(|_| corrupt("charges.period", period.to_string()))?,
                    due_date: parse_date(path, "charges.due_date", &due)?,
                    state: ChargeState::parse(&state)
                        .ok_or_else(|| corrupt("charges.state", state.clone()))?,
                    next_attempt_at: get_text(5)?
                        .map(|t| parse_timestamp(path, "charges.next_attempt_at", &t))
                        .transpose()?,
                    live_attempt: row.get::<_, bool>(n + 6).ctx(path, what)?,
                }),
                _ => None,
            };
            let last_outcome = match (get_text(7)?, get_text(8)?, get_text(9)?) {
                (Some(state), Some(order_number), Some(at)) => Some(LastOutcome {
                    state: AttemptState::parse(&state)
                        .ok_or_else(|| corrupt("attempts.state", state.clone()))?,
                    order_number,
                    at: parse_timestamp(path, "attempts.updated_at", &at)?,
                    initial: false,
                }),
                _ => match (get_text(10)?, get_text(11)?) {
                    (Some(order_number), Some(at)) => Some(LastOutcome {
                        state: AttemptState::Approved,
                        order_number,
                        at: parse_timestamp(path, "enrolments.at", &at)?,
                        initial: true,
                    }),
                    _ => None,
                },
            };
            let quarantined: i64 = row.get(n + 13).ctx(path, what)?;
            each(SubscriptionOverview {
                subscription,
                flagged,
                flag_kind: get_text(14)?,
                parked: get_text(12)?,
                quarantined: u32::try_from(quarantined).unwrap_or(u32::MAX),
                last_period,
                last_outcome,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
