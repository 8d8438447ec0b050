//! The sandbox's book: the orders it created, every rp.cfm request it received, the recurring
//! agreements and the stored card tokens.
//!
//! The book is plain data behind a `std::sync::Mutex` in the server; every method here is
//! synchronous, so the lock is never held across an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::behaviour::{Behaviour, bill_base};
use crate::money::{Currency, Money};

/// What the sandbox does with a reused `OrderNumber`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DuplicatePolicy {
    /// Fault 11/201, nothing applied (the default).
    #[default]
    Reject,
    /// A new order with the same number is created and processed normally.
    Accept,
}

/// The state of an order, in Assist's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderState {
    InProcess,
    Approved,
    Declined,
}

impl OrderState {
    /// The `orderstate` text (`In Process` with its space).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::InProcess => "In Process",
            OrderState::Approved => "Approved",
            OrderState::Declined => "Declined",
        }
    }
}

/// One order the sandbox created (one rp.cfm charge that was applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    /// The merchant's OrderNumber, as received.
    pub order_number: String,
    /// The agreement's bill number base (the part before the `.`).
    pub bill_base: String,
    /// The extended bill number `BASE.k` (k: 1-based operation index within the agreement).
    pub bill_number: String,
    pub amount: Money,
    pub currency: Currency,
    /// The state as it stands in the book (what the next status query starts from).
    pub state: OrderState,
    /// The response code of the order's (only) operation, e.g. `AS000`.
    pub response_code: String,
    /// The message that goes with the response code.
    pub message: String,
    pub created_at: DateTime<Utc>,
    pub test_mode: bool,
    /// How many orderstate/orderresult replies have included this order.
    pub status_queries: u32,
    /// The behaviour the magic bill number chose for this order.
    pub behaviour: Behaviour,
}

/// One rp.cfm request the sandbox received and what it did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpRequest {
    pub time: DateTime<Utc>,
    /// `OrderNumber` as received (empty if missing).
    pub order_number: String,
    /// `BillNumber` as received (empty if missing).
    pub bill_number: String,
    /// `Amount` as received, unparsed (empty if missing).
    pub amount: String,
    /// `Currency` as received (empty if missing).
    pub currency: String,
    pub outcome: RpOutcome,
}

/// Whether an rp.cfm request created an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpOutcome {
    /// An order was created, in this state with this response code (as first booked, before
    /// any settling).
    Applied {
        state: OrderState,
        response_code: String,
    },
    /// Nothing was applied.
    Refused(Refusal),
}

/// Why an rp.cfm request was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Beyond `requests_per_second`: fault 1/3.
    RateLimited,
    /// A request-level fault (auth, parameters, a reused order number under `Reject`).
    Fault {
        firstcode: u32,
        secondcode: u32,
        detail: String,
    },
    /// A magic bill number answered with this HTTP status before applying (503, 429).
    Http(u16),
}

/// A recurring agreement: the limits charges against one bill number base must respect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub base: String,
    /// Fixed by `add_agreement`, or else by the first charge that created an order.
    pub currency: Option<Currency>,
    pub min: Option<Money>,
    pub max: Option<Money>,
    /// Orders created against it so far (the k of the next `BASE.k` is this plus one).
    pub operations: u32,
}

/// A stored card, as token.cfm lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The token, UUID-like (`49D902C6-1CCF-4605-9228-11D0E8115C77`).
    pub token: String,
    /// `VISA`, `MasterCard`, ...
    pub brand: String,
    /// The card's first six digits.
    pub bin: u32,
    /// The card's last four digits, as text (`0028`).
    pub post: String,
    /// `MM.YYYY`.
    pub expire: String,
    pub bank: String,
    pub active: bool,
    pub need_cvc: bool,
}

/// A copy of the whole book, for tests and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookSnapshot {
    /// Every order, in creation order.
    pub orders: Vec<OrderRecord>,
    /// Every rp.cfm request, in arrival order.
    pub rp_requests: Vec<RpRequest>,
    /// Requests (all services) refused by the rate limit.
    pub rate_limited: u64,
    /// Agreements by bill number base.
    pub agreements: BTreeMap<String, Agreement>,
    /// Stored cards: (customer number, card).
    pub tokens: Vec<(String, Card)>,
}

/// The search window of a status query: creation instants truncated to the minute, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// Whether an order created at `created` is inside the window.
    pub fn contains(&self, created: DateTime<Utc>) -> bool {
        let minute = truncate_to_minute(created);
        self.start <= minute && minute <= self.end
    }
}

/// The instant at the start of its minute.
pub fn truncate_to_minute(instant: DateTime<Utc>) -> DateTime<Utc> {
    instant
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap_or(instant)
}

/// One rp.cfm charge that passed auth and parameter checks.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub order_number: &'a str,
    pub bill_number: &'a str,
    pub amount: Money,
    pub currency: Currency,
    pub behaviour: Behaviour,
}

/// Response code and message of a charge outside its agreement.
pub const OUTSIDE_AGREEMENT: (&str, &str) = ("AS100", "outside the recurring agreement");

/// The book itself.
#[derive(Debug, Default)]
pub struct Book {
    orders: Vec<OrderRecord>,
    rp_requests: Vec<RpRequest>,
    rate_limited: u64,
    agreements: BTreeMap<String, Agreement>,
    tokens: Vec<(String, Card)>,
    /// Arrival instants of the requests admitted in the last second.
    recent: VecDeque<Instant>,
}

impl Book {
    /// A copy of everything.
    pub fn snapshot(&self) -> BookSnapshot {
        BookSnapshot {
            orders: self.orders.clone(),
            rp_requests: self.rp_requests.clone(),
            rate_limited: self.rate_limited,
            agreements: self.agreements.clone(),
            tokens: self.tokens.clone(),
        }
    }

    /// Whether a request arriving at `now` is within `per_second` requests in the last second.
    /// A refused request is counted in `rate_limited` and does not use up the window.
    pub fn admit(&mut self, now: Instant, per_second: Option<u32>) -> bool {
        let Some(limit) = per_second else {
            return true;
        };
        while let Some(first) = self.recent.front() {
            if now.saturating_duration_since(*first) >= Duration::from_secs(1) {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
            self.rate_limited += 1;
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Registers (or replaces the limits of) an agreement. Its operation count is kept.
    pub fn add_agreement(
        &mut self,
        base_bill: &str,
        currency: Currency,
        min: Option<Money>,
        max: Option<Money>,
    ) {
        let base = bill_base(base_bill).to_string();
        let operations = self.agreements.get(&base).map_or(0, |a| a.operations);
        self.agreements.insert(
            base.clone(),
            Agreement {
                base,
                currency: Some(currency),
                min,
                max,
                operations,
            },
        );
    }

    pub fn add_token(&mut self, customer: &str, card: Card) {
        self.tokens.push((customer.to_string(), card));
    }

    /// The cards of a customer.
    pub fn tokens_of(&self, customer: &str) -> Vec<Card> {
        self.tokens
            .iter()
            .filter(|(owner, _)| owner == customer)
            .map(|(_, card)| card.clone())
            .collect()
    }

    /// Removes a customer's token; false if that customer has no such token.
    pub fn remove_token(&mut self, customer: &str, token: &str) -> bool {
        let before = self.tokens.len();
        self.tokens
            .retain(|(owner, card)| !(owner == customer && card.token == token));
        self.tokens.len() != before
    }

    /// Records an rp.cfm request that was refused before reaching [`Book::charge`].
    pub fn record_rp(&mut self, request: RpRequest) {
        self.rp_requests.push(request);
    }

    /// Applies one charge: refuses a reused order number (under `Reject`) and the behaviours
    /// that apply nothing, else creates an order (Declined with AS100 outside the agreement)
    /// and records the request. Returns the order as created.
    pub fn charge(
        &mut self,
        charge: &Charge<'_>,
        policy: DuplicatePolicy,
        test_mode: bool,
        now: DateTime<Utc>,
    ) -> Result<OrderRecord, Refusal> {
        let result = self.apply(charge, policy, test_mode, now);
        let outcome = match &result {
            Ok(order) => RpOutcome::Applied {
                state: order.state,
                response_code: order.response_code.clone(),
            },
            Err(refusal) => RpOutcome::Refused(refusal.clone()),
        };
        self.rp_requests.push(RpRequest {
            time: now,
            order_number: charge.order_number.to_string(),
            bill_number: charge.bill_number.to_string(),
            amount: charge.amount.to_string(),
            currency: charge.currency.to_string(),
            outcome,
        });
        result
    }

    fn apply(
        &mut self,
        charge: &Charge<'_>,
        policy: DuplicatePolicy,
        test_mode: bool,
        now: DateTime<Utc>,
    ) -> Result<OrderRecord, Refusal> {
        if policy == DuplicatePolicy::Reject
            && self
                .orders
                .iter()
                .any(|order| order.order_number == charge.order_number)
        {
            return Err(Refusal::Fault {
                firstcode: 11,
                secondcode: 201,
                detail: "order number already used".to_string(),
            });
        }
        match charge.behaviour {
            Behaviour::Unavailable => return Err(Refusal::Http(503)),
            Behaviour::TooManyRequests => return Err(Refusal::Http(429)),
            _ => {}
        }
        let base = bill_base(charge.bill_number).to_string();
        let agreement = self
            .agreements
            .entry(base.clone())
            .or_insert_with(|| Agreement {
                base: base.clone(),
                currency: None,
                min: None,
                max: None,
                operations: 0,
            });
        let currency_fixed = *agreement.currency.get_or_insert(charge.currency);
        let inside = currency_fixed == charge.currency
            && agreement.min.is_none_or(|min| charge.amount >= min)
            && agreement.max.is_none_or(|max| charge.amount <= max);
        agreement.operations += 1;
        let bill_number = format!("{base}.{}", agreement.operations);

        let (state, code, message) = if inside {
            first_result(charge.behaviour)
        } else {
            (
                OrderState::Declined,
                OUTSIDE_AGREEMENT.0,
                OUTSIDE_AGREEMENT.1,
            )
        };
        let order = OrderRecord {
            order_number: charge.order_number.to_string(),
            bill_base: base,
            bill_number,
            amount: charge.amount,
            currency: charge.currency,
            state,
            response_code: code.to_string(),
            message: message.to_string(),
            created_at: now,
            test_mode,
            status_queries: 0,
            behaviour: charge.behaviour,
        };
        self.orders.push(order.clone());
        Ok(order)
    }

    /// The orders with this number created inside the window, as a status query sees them:
    /// each one's query count goes up by one, and an In Process order settles once it has been
    /// queried more than `settle_after` times.
    pub fn status(
        &mut self,
        order_number: &str,
        window: Window,
        settle_after: u32,
    ) -> Vec<OrderRecord> {
        let mut found = Vec::new();
        for order in &mut self.orders {
            if order.order_number != order_number || !window.contains(order.created_at) {
                continue;
            }
            order.status_queries = order.status_queries.saturating_add(1);
            if order.state == OrderState::InProcess
                && order.status_queries > settle_after
                && let Behaviour::InProcess { then_approved } = order.behaviour
            {
                let (state, code, message) = if then_approved {
                    APPROVED
                } else {
                    (OrderState::Declined, "AS100", "Declined")
                };
                order.state = state;
                order.response_code = code.to_string();
                order.message = message.to_string();
            }
            found.push(order.clone());
        }
        found
    }
}

const APPROVED: (OrderState, &str, &str) = (OrderState::Approved, "AS000", "Approved");

/// The state an order is booked in when its charge is inside the agreement.
fn first_result(behaviour: Behaviour) -> (OrderState, &'static str, &'static str) {
    match behaviour {
        Behaviour::Decline(code) => (OrderState::Declined, code.response_code(), code.message()),
        Behaviour::InProcess { .. } => (OrderState::InProcess, "AS300", "Operation in progress"),
        // 998 is Approved in the book; only the rp.cfm reply says otherwise.
        Behaviour::Approve
        | Behaviour::Hang
        | Behaviour::DropConnection
        | Behaviour::ServerError
        | Behaviour::Garbage
        | Behaviour::WrongCheckvalue
        | Behaviour::OtherOrderNumber
        | Behaviour::SystemError
        // Never reached: these are refused before an order exists.
        | Behaviour::Unavailable
        | Behaviour::TooManyRequests => APPROVED,
    }
}
