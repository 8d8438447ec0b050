//! The sandbox's book: the orders it created, every rp.cfm request it received, the recurring
//! agreements and the stored card tokens.
//!
//! The book is plain data behind a `std::sync::Mutex` in the server; every method here is
//! synchronous, so the lock is never held across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, NaiveDate, TimeDelta, Utc};

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
    /// Refunded in full (wscancel.cfm).
    Canceled,
    /// Refunded in part (wscancel.cfm).
    PartialCanceled,
}

impl OrderState {
    /// The `orderstate` text (`In Process` with its space).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::InProcess => "In Process",
            OrderState::Approved => "Approved",
            OrderState::Declined => "Declined",
            OrderState::Canceled => "Canceled",
            OrderState::PartialCanceled => "PartialCanceled",
        }
    }
}

/// One order the sandbox created (one rp.cfm charge or tokenpay.cfm payment that was applied).
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
    /// Its refunds (wscancel.cfm), oldest first: operation type 300 in orderresult.
    pub refunds: Vec<RefundOperation>,
}

/// One refund (cancel operation) of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOperation {
    pub amount: Money,
    /// Approved (applied) or Declined (refused; the order is unchanged).
    pub state: OrderState,
    pub response_code: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// One wscancel.cfm request the sandbox received (past authentication) and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRecord {
    pub time: DateTime<Utc>,
    /// `Billnumber` as received (empty if missing).
    pub bill_number: String,
    /// `OrderNumber` as received (empty if missing).
    pub order_number: String,
    /// `Amount` as received (empty if missing: the whole remainder).
    pub amount: String,
    /// `CancelReason` as received.
    pub reason: String,
    /// Applied: the refund operation's state and response code; refused: why.
    pub outcome: RpOutcome,
}

/// One wscancel.cfm request that passed authentication and parameter checks.
#[derive(Debug, Clone)]
pub struct Cancel<'a> {
    pub bill_number: &'a str,
    pub order_number: Option<&'a str>,
    /// `None`: the whole remainder.
    pub amount: Option<Money>,
    pub currency: Option<Currency>,
    pub reason: &'a str,
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
    /// RecurringPeriod of the initial payment (tokenpay.cfm). Recorded, not enforced: rehearsals
    /// charge on a simulated clock, so real days between charges mean nothing here.
    pub period_days: Option<u32>,
    /// RecurringMaxDate of the initial payment (tokenpay.cfm): charges on a later (UTC) date are
    /// Declined with AS100.
    pub max_date: Option<NaiveDate>,
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
    /// Every tokenpay.cfm request that passed authentication, in arrival order.
    pub token_payments: Vec<TokenPayment>,
    /// Every wscancel.cfm request that passed authentication, in arrival order.
    pub cancels: Vec<CancelRecord>,
}

/// The recurring parameters of an initial payment (tokenpay.cfm with `RecurringIndicator=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recurring {
    pub min: Money,
    pub max: Money,
    pub period_days: u32,
    pub max_date: NaiveDate,
}

/// One tokenpay.cfm payment that passed auth and parameter checks.
#[derive(Debug, Clone)]
pub struct TokenPay<'a> {
    pub order_number: &'a str,
    pub customer: &'a str,
    pub token: &'a str,
    pub amount: Money,
    pub currency: Currency,
    pub recurring: Option<Recurring>,
    /// Whether it carried a Signature (verified, when the sandbox has a public key).
    pub signed: bool,
    pub behaviour: Behaviour,
}

/// A tokenpay.cfm request the sandbox received and what it did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPayment {
    pub time: DateTime<Utc>,
    pub order_number: String,
    /// The CustomerNumber inside PaymentToken (empty if the request did not get that far).
    pub customer: String,
    pub token: String,
    /// `OrderAmount` as received.
    pub amount: String,
    /// `OrderCurrency` as received.
    pub currency: String,
    /// Whether a `Signature` was sent (and, when the sandbox has a public key, verified).
    pub signed: bool,
    /// The billnumber given to the order, when one was created.
    pub bill_number: Option<String>,
    pub outcome: RpOutcome,
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
    /// Positions in `orders` by order number: a status query or a duplicate check looks at
    /// that number's orders only (a load test books tens of thousands).
    by_number: HashMap<String, Vec<usize>>,
    rp_requests: Vec<RpRequest>,
    rate_limited: u64,
    agreements: BTreeMap<String, Agreement>,
    tokens: Vec<(String, Card)>,
    token_payments: Vec<TokenPayment>,
    cancels: Vec<CancelRecord>,
    /// Arrival instants of the requests admitted in the last second.
    recent: VecDeque<Instant>,
    /// Order numbers the status services stop finding (a fault for tests: the gateway loses
    /// sight of an order it showed before).
    hidden: std::collections::HashSet<String>,
    /// Most rows of one resultbydate reply, if capped.
    result_cap: Option<usize>,
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
            token_payments: self.token_payments.clone(),
            cancels: self.cancels.clone(),
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
                period_days: None,
                max_date: None,
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
        if policy == DuplicatePolicy::Reject && self.by_number.contains_key(charge.order_number) {
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
                period_days: None,
                max_date: None,
                operations: 0,
            });
        let currency_fixed = *agreement.currency.get_or_insert(charge.currency);
        let inside = currency_fixed == charge.currency
            && agreement.min.is_none_or(|min| charge.amount >= min)
            && agreement.max.is_none_or(|max| charge.amount <= max)
            && agreement
                .max_date
                .is_none_or(|max_date| now.date_naive() <= max_date);
        agreement.operations += 1;
        let bill_number = format!("{base}.{}", agreement.operations);
        // 551 hides only the agreement's first charge; the later ones approve.
        let behaviour = match charge.behaviour {
            Behaviour::FirstHidden if agreement.operations > 1 => Behaviour::Approve,
            other => other,
        };
        let charge = &Charge {
            behaviour,
            ..charge.clone()
        };

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
            refunds: Vec::new(),
        };
        self.push_order(order.clone());
        if behaviour == Behaviour::FirstHidden {
            self.hidden.insert(order.order_number.clone());
        }
        if behaviour == Behaviour::ExtraOrder && state == OrderState::Approved {
            // A second order under a number beside ours, approved: only the books show it.
            let extra = OrderRecord {
                order_number: format!("{}-E", order.order_number),
                behaviour: Behaviour::Approve,
                ..order.clone()
            };
            self.hidden.insert(extra.order_number.clone());
            self.push_order(extra);
        }
        Ok(order)
    }

    /// Caps the rows of one resultbydate reply (the rest are left out silently, as a capped
    /// service would); `None` for no cap.
    pub fn set_result_cap(&mut self, cap: Option<usize>) {
        self.result_cap = cap;
    }

    /// The orders created inside the window, as the books (resultbydate) list them: every
    /// order, hidden from the status services or not, up to the row cap.
    pub fn results(&self, window: Window) -> Vec<OrderRecord> {
        let mut found: Vec<OrderRecord> = self
            .orders
            .iter()
            .filter(|order| window.contains(order.created_at))
            .filter(|order| order.behaviour != Behaviour::BooksMissing)
            .cloned()
            .collect();
        if let Some(cap) = self.result_cap {
            found.truncate(cap);
        }
        found
    }

    fn push_order(&mut self, order: OrderRecord) {
        self.by_number
            .entry(order.order_number.clone())
            .or_default()
            .push(self.orders.len());
        self.orders.push(order);
    }

    /// Records a tokenpay.cfm request refused before reaching [`Book::token_pay`].
    pub fn record_token_payment(&mut self, payment: TokenPayment) {
        self.token_payments.push(payment);
    }

    /// Applies one tokenpay.cfm payment: refuses a reused order number (under `Reject`) and the
    /// behaviours that apply nothing, else creates an order under a new, unique 16-digit
    /// billnumber. An initial recurring payment that is (or will be) approved registers a new
    /// agreement with its limits under that billnumber. Returns the order as created.
    pub fn token_pay(
        &mut self,
        payment: &TokenPay<'_>,
        policy: DuplicatePolicy,
        test_mode: bool,
        now: DateTime<Utc>,
    ) -> Result<OrderRecord, Refusal> {
        let result = self.apply_token_pay(payment, policy, test_mode, now);
        let (outcome, bill_number) = match &result {
            Ok(order) => (
                RpOutcome::Applied {
                    state: order.state,
                    response_code: order.response_code.clone(),
                },
                Some(order.bill_base.clone()),
            ),
            Err(refusal) => (RpOutcome::Refused(refusal.clone()), None),
        };
        self.token_payments.push(TokenPayment {
            time: now,
            order_number: payment.order_number.to_string(),
            customer: payment.customer.to_string(),
            token: payment.token.to_string(),
            amount: payment.amount.to_string(),
            currency: payment.currency.to_string(),
            signed: payment.signed,
            bill_number,
            outcome,
        });
        result
    }

    fn apply_token_pay(
        &mut self,
        payment: &TokenPay<'_>,
        policy: DuplicatePolicy,
        test_mode: bool,
        now: DateTime<Utc>,
    ) -> Result<OrderRecord, Refusal> {
        if policy == DuplicatePolicy::Reject
            && self
                .orders
                .iter()
                .any(|order| order.order_number == payment.order_number)
        {
            return Err(Refusal::Fault {
                firstcode: 11,
                secondcode: 201,
                detail: "order number already used".to_string(),
            });
        }
        match payment.behaviour {
            Behaviour::Unavailable => return Err(Refusal::Http(503)),
            Behaviour::TooManyRequests => return Err(Refusal::Http(429)),
            _ => {}
        }
        let base = self.new_bill_number();
        let (state, code, message) = match payment.behaviour {
            // Not final: the customer must complete 3-D Secure (or enter the CVC) on the
            // continueurl page, which never happens in the sandbox.
            Behaviour::Decline(super::behaviour::DeclineCode::ThreeDsRequired) => (
                OrderState::InProcess,
                "AS110",
                "3-D Secure authorization required",
            ),
            other => first_result(other),
        };
        let will_be_approved = state == OrderState::Approved
            || payment.behaviour
                == (Behaviour::InProcess {
                    then_approved: true,
                });
        if let (Some(recurring), true) = (payment.recurring, will_be_approved) {
            self.agreements.insert(
                base.clone(),
                Agreement {
                    base: base.clone(),
                    currency: Some(payment.currency),
                    min: Some(recurring.min),
                    max: Some(recurring.max),
                    period_days: Some(recurring.period_days),
                    max_date: Some(recurring.max_date),
                    // The initial payment is operation 1; recurring charges are .2, .3, ...
                    operations: 1,
                },
            );
        }
        let order = OrderRecord {
            order_number: payment.order_number.to_string(),
            bill_base: base.clone(),
            bill_number: format!("{base}.1"),
            amount: payment.amount,
            currency: payment.currency,
            state,
            response_code: code.to_string(),
            message: message.to_string(),
            created_at: now,
            test_mode,
            status_queries: 0,
            behaviour: payment.behaviour,
            refunds: Vec::new(),
        };
        self.push_order(order.clone());
        Ok(order)
    }

    /// A billnumber no order or agreement has: 16 digits starting with `58` (never a magic
    /// `999`), the rest random, so sandboxes restarted between enrolments do not repeat one.
    fn new_bill_number(&self) -> String {
        let mut attempt: u64 = 0;
        loop {
            let mut bytes = [0u8; 8];
            let random = match getrandom::getrandom(&mut bytes) {
                Ok(()) => u64::from_le_bytes(bytes),
                // No OS randomness: the clock and a counter still give distinct numbers.
                Err(_) => Utc::now()
                    .timestamp_nanos_opt()
                    .unwrap_or_default()
                    .unsigned_abs()
                    .wrapping_add(attempt),
            };
            let candidate = format!("58{:014}", random % 100_000_000_000_000);
            let taken = self.agreements.contains_key(&candidate)
                || self.orders.iter().any(|o| o.bill_base == candidate);
            if !taken {
                return candidate;
            }
            attempt += 1;
        }
    }

    /// Records a wscancel.cfm request refused before reaching [`Book::cancel`].
    pub fn record_cancel(&mut self, record: CancelRecord) {
        self.cancels.push(record);
    }

    /// Applies one refund: the order is found by its (extended) billnumber, must be ours (the
    /// OrderNumber, when sent, must match), Approved or PartialCanceled, in the same currency,
    /// and the amount (default: the whole remainder) no more than what remains. A refused
    /// refund (magic decline) adds a Declined operation and leaves the order as it was; an
    /// applied one makes it PartialCanceled, or Canceled once nothing remains. 503/429 apply
    /// nothing. Returns the order as it now stands and the operation.
    pub fn cancel(
        &mut self,
        cancel: &Cancel<'_>,
        now: DateTime<Utc>,
    ) -> Result<(OrderRecord, RefundOperation), Refusal> {
        let result = self.apply_cancel(cancel, now);
        let outcome = match &result {
            Ok((_, op)) => RpOutcome::Applied {
                state: op.state,
                response_code: op.response_code.clone(),
            },
            Err(refusal) => RpOutcome::Refused(refusal.clone()),
        };
        self.cancels.push(CancelRecord {
            time: now,
            bill_number: cancel.bill_number.to_string(),
            order_number: cancel.order_number.unwrap_or("").to_string(),
            amount: cancel.amount.map(|a| a.to_string()).unwrap_or_default(),
            reason: cancel.reason.to_string(),
            outcome,
        });
        result
    }

    fn apply_cancel(
        &mut self,
        cancel: &Cancel<'_>,
        now: DateTime<Utc>,
    ) -> Result<(OrderRecord, RefundOperation), Refusal> {
        let fault = |firstcode, secondcode, detail: &str| Refusal::Fault {
            firstcode,
            secondcode,
            detail: detail.to_string(),
        };
        match cancel.behaviour {
            Behaviour::Unavailable => return Err(Refusal::Http(503)),
            Behaviour::TooManyRequests => return Err(Refusal::Http(429)),
            _ => {}
        }
        let Some(order) = self
            .orders
            .iter_mut()
            .rev()
            .find(|o| o.bill_number == cancel.bill_number)
        else {
            return Err(fault(10, 143, "no order with this billnumber"));
        };
        if cancel
            .order_number
            .is_some_and(|number| number != order.order_number)
        {
            return Err(fault(10, 201, "billnumber and order number do not match"));
        }
        if !matches!(
            order.state,
            OrderState::Approved | OrderState::PartialCanceled
        ) {
            return Err(fault(15, 216, "the order cannot be cancelled in its state"));
        }
        if cancel.currency.is_some_and(|c| c != order.currency) {
            return Err(fault(5, 105, "not the order's currency"));
        }
        let refunded: i64 = order
            .refunds
            .iter()
            .filter(|r| r.state == OrderState::Approved)
            .map(|r| r.amount.cents())
            .sum();
        let remaining = order.amount.cents() - refunded;
        let amount = match cancel.amount {
            Some(amount) => amount,
            None => Money::from_cents(remaining).ok_or(fault(15, 216, "nothing left"))?,
        };
        if amount.cents() > remaining {
            return Err(fault(5, 108, "more than remains of the order"));
        }
        let (state, code, message) = match cancel.behaviour {
            Behaviour::Decline(code) => {
                (OrderState::Declined, code.response_code(), code.message())
            }
            _ => APPROVED,
        };
        let op = RefundOperation {
            amount,
            state,
            response_code: code.to_string(),
            message: message.to_string(),
            created_at: now,
        };
        if state == OrderState::Approved {
            order.state = if amount.cents() == remaining {
                OrderState::Canceled
            } else {
                OrderState::PartialCanceled
            };
        }
        order.refunds.push(op.clone());
        Ok((order.clone(), op))
    }

    /// Makes the status services answer "not found" for `order_number` from now on; the order
    /// stays in the book.
    pub fn hide_from_status(&mut self, order_number: &str) {
        self.hidden.insert(order_number.to_string());
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
        if self.hidden.contains(order_number) {
            return found;
        }
        let positions = self
            .by_number
            .get(order_number)
            .cloned()
            .unwrap_or_default();
        for position in positions {
            let order = &mut self.orders[position];
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
        | Behaviour::ChargeReplyMismatch
        | Behaviour::SystemError
        | Behaviour::FirstHidden
        | Behaviour::StuckInProcess
        | Behaviour::BooksAmount
        | Behaviour::ExtraOrder
        | Behaviour::BooksMissing
        | Behaviour::BooksDeclined
        | Behaviour::BooksWrongCheckvalue
        // Never reached: these are refused before an order exists.
        | Behaviour::Unavailable
        | Behaviour::TooManyRequests => APPROVED,
    }
}
