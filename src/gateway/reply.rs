//! What a parsed reply means for one of our orders: the "paid" rule and the checks that go with it.
//!
//! - An rp.cfm reply is a **claim**: it carries no check value, so even "AS000, Approved" only
//!   says the charge was probably made. Money is booked on a verified status answer.
//! - A status answer (orderstate/orderresult) is **verified**: each order in it must carry a
//!   check value that verifies with our salt and merchant id, name our order number, amount and
//!   currency, and (when it says) our test mode. Any failure is an integrity failure: never paid,
//!   never declined.

use secrecy::SecretString;

use super::checkvalue::{self, ResultFields};
use super::outcome::{self, CodeClass, Decline, DeclineKind, Outcome, StateClass};
use super::wire::{OrderRecord, Reply};
use crate::money::{Currency, Money};

/// The order a reply should be about.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub merchant_id: &'a str,
    pub order_number: &'a str,
    pub amount: Money,
    pub currency: Currency,
    /// `gateway.test_mode`.
    pub test_mode: bool,
}

/// What an order-status reply says, after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub outcome: Outcome,
    /// The order's `testmode`, when the reply carried one.
    pub test_mode: Option<bool>,
    /// The response code of the order (orderresult, or an operation's), when carried.
    pub response_code: Option<String>,
    /// Assist's billnumber for the order, when carried.
    pub bill_number: Option<String>,
    /// How many orders with our number the gateway says were approved (more than one means the
    /// gateway charged the same order number twice: an operator must look).
    pub approved_orders: usize,
    /// How many orders with our number are still in process: beside an approved one, a second
    /// charge that may yet be taken.
    pub pending_orders: usize,
    /// Whether every order's check value verified (`false` only with an integrity failure).
    pub checkvalue_verified: bool,
    /// What the one verified order says about cancellations and refunds; `None` unless the
    /// reply carried exactly one order and it verified.
    pub reversals: Option<Reversals>,
}

/// A verified order's cancellations and refunds (`wscancel.cfm`, operation type 300 [U]).
///
/// The order state (`Canceled`, `PartialCanceled`) is covered by the check value; the amounts of
/// the operations are not (§5.2 covers only the order's fields), so they are believed only when
/// they agree with that state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversals {
    /// The verified `orderstate`, as sent.
    pub order_state: String,
    /// Whether the order carried an operations list at all (orderresult does; orderstate not).
    pub listed: bool,
    /// Sum of the approved cancel/refund operations in minor units (zero when none is listed;
    /// `Money` is never zero).
    pub refunded_cents: i64,
    /// How many approved cancel/refund operations are listed.
    pub refunds: usize,
    /// Cancel/refund operations still in process.
    pub in_process: usize,
    /// Cancel/refund operations declined or failed.
    pub declined: usize,
    /// Cancel/refund operations that could not be read (amount, state): an operator must look.
    pub unreadable: usize,
    /// The billnumber of the payment operation (the first non-refund operation), else the
    /// order's: what `wscancel.cfm` is asked to cancel [U].
    pub payment_bill_number: Option<String>,
}

/// Operation type of a cancel or refund (§4.3, from one enum only) [U].
pub const OPERATION_CANCEL: &str = "300";

impl Reversals {
    /// Reads the operations of one verified order.
    fn of(record: &OrderRecord) -> Reversals {
        let mut view = Reversals {
            order_state: record.text("orderstate").trim().to_string(),
            listed: !record.operations.is_empty(),
            refunded_cents: 0,
            refunds: 0,
            in_process: 0,
            declined: 0,
            unreadable: 0,
            payment_bill_number: None,
        };
        for op in &record.operations {
            let field = |name: &str| op.get(name).map(|v| v.trim()).unwrap_or("");
            if field("operationtype") != OPERATION_CANCEL {
                if view.payment_bill_number.is_none() && !field("billnumber").is_empty() {
                    view.payment_bill_number = Some(field("billnumber").to_string());
                }
                continue;
            }
            let state = match field("operationstate") {
                "" => field("orderstate"),
                s => s,
            };
            let code = field("responsecode");
            match (outcome::order_state(state), Money::parse(field("amount"))) {
                // An approved (or, as some answers put it, Canceled) refund operation.
                (StateClass::Paid | StateClass::Reversed, Ok(amount))
                    if code.is_empty() || code.eq_ignore_ascii_case("AS000") =>
                {
                    view.refunded_cents = view.refunded_cents.saturating_add(amount.cents());
                    view.refunds += 1;
                }
                (StateClass::InProgress, _) => view.in_process += 1,
                (StateClass::Failed, _) => view.declined += 1,
                _ if matches!(outcome::response_code(code), CodeClass::Decline(..)) => {
                    view.declined += 1
                }
                _ => view.unreadable += 1,
            }
        }
        if view.payment_bill_number.is_none() {
            view.payment_bill_number = record
                .get("billnumber")
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_string);
        }
        view
    }

    /// The verified order state's class.
    pub fn state(&self) -> StateClass {
        outcome::order_state(&self.order_state)
    }
}

/// A `testmode` value: `1`/`0` (also `true`/`false`, `yes`/`no`).
pub(crate) fn parse_test_mode(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Checks that a record names our order, amount and currency (`orderamount`/`ordercurrency`,
/// or the operation's `amount`/`currency` when the order fields are absent).
fn check_identity(
    record: &OrderRecord,
    expected: &Expected<'_>,
    order_fields_only: bool,
) -> Result<(), String> {
    let number = record.text("ordernumber");
    if number != expected.order_number {
        return Err(format!(
            "reply is about order {:?}, not ours ({:?})",
            super::wire::excerpt(number),
            expected.order_number
        ));
    }
    // A status answer's check value covers `orderamount`/`ordercurrency`: only those count there.
    let amount = record
        .get("orderamount")
        .or_else(|| (!order_fields_only).then(|| record.get("amount")).flatten())
        .unwrap_or("");
    match Money::parse(amount) {
        Ok(m) if m == expected.amount => {}
        _ => {
            return Err(format!(
                "reply amount {:?} is not our {}",
                super::wire::excerpt(amount),
                expected.amount
            ));
        }
    }
    let currency = record
        .get("ordercurrency")
        .or_else(|| {
            (!order_fields_only)
                .then(|| record.get("currency"))
                .flatten()
        })
        .unwrap_or("");
    if currency != expected.currency.as_str() {
        return Err(format!(
            "reply currency {:?} is not our {}",
            super::wire::excerpt(currency),
            expected.currency
        ));
    }
    Ok(())
}

fn check_test_mode(record: &OrderRecord, expected: &Expected<'_>) -> Result<Option<bool>, String> {
    match record.get("testmode").filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(text) => match parse_test_mode(text) {
            Some(mode) if mode == expected.test_mode => Ok(Some(mode)),
            Some(mode) => Err(format!(
                "order is in {} mode but gateway.test_mode is {}",
                if mode { "test" } else { "live" },
                expected.test_mode
            )),
            None => Err(format!(
                "unreadable testmode {:?}",
                super::wire::excerpt(text)
            )),
        },
    }
}

/// The one order a claim (an rp.cfm or wscancel.cfm reply) is about, or the claim that the reply
/// makes instead: a fault's outcome, or an unknown outcome when it lists no order or several.
fn claimed_order<'r>(
    reply: &'r Reply,
    what: &str,
) -> Result<&'r OrderRecord, (Outcome, Option<String>)> {
    match reply {
        Reply::Fault {
            firstcode,
            secondcode,
            ..
        } => Err((
            outcome::request_error(*firstcode, *secondcode)
                .unwrap_or_else(|| Outcome::Unknown("fault with codes 0/0".into())),
            None,
        )),
        Reply::Orders(orders) => match orders.as_slice() {
            [record] => Ok(record),
            _ => Err((
                Outcome::Unknown(format!(
                    "{what} reply carries {} orders, expected one",
                    orders.len()
                )),
                None,
            )),
        },
    }
}

/// Classifies the reply to a recurring charge request (rp.cfm) as a claim.
///
/// `Approved` here means only "the gateway says it charged"; the caller confirms it with
/// [`status`] before booking money.
pub(crate) fn charge_claim(reply: &Reply, expected: &Expected<'_>) -> (Outcome, Option<String>) {
    let record = match claimed_order(reply, "charge") {
        Ok(record) => record,
        Err(claim) => return claim,
    };
    let code = record.get("responsecode").map(str::to_string);
    if let Err(why) = check_identity(record, expected, false)
        .and_then(|()| check_test_mode(record, expected).map(|_| ()))
    {
        return (Outcome::IntegrityFailure(why), code);
    }
    let state = record.get("orderstate").unwrap_or("");
    let state_class = outcome::order_state(state);
    let outcome = match code.as_deref().map(outcome::response_code) {
        Some(CodeClass::Success) => match state_class {
            StateClass::Paid => Outcome::Approved,
            StateClass::Unrecognised if state.is_empty() => Outcome::Approved,
            StateClass::InProgress => Outcome::Pending,
            _ => Outcome::Unknown(format!(
                "response code says success but order state is {:?}",
                super::wire::excerpt(state)
            )),
        },
        Some(CodeClass::Decline(kind, reason)) => {
            if state_class == StateClass::Paid {
                Outcome::Unknown("response code says declined but order state is Approved".into())
            } else {
                Outcome::Declined(Decline {
                    kind,
                    code: code.clone().unwrap_or_default(),
                    reason,
                })
            }
        }
        Some(CodeClass::Pending) => Outcome::Pending,
        Some(CodeClass::Unknown(why)) => Outcome::Unknown(why.to_string()),
        // No response code: the state alone, unverified, as a claim.
        None => match state_class {
            StateClass::Paid => Outcome::Approved,
            StateClass::InProgress => Outcome::Pending,
            StateClass::Failed => Outcome::Declined(Decline {
                kind: DeclineKind::Soft,
                code: state.to_string(),
                reason: "order closed without payment",
            }),
            _ => Outcome::Unknown(format!(
                "charge reply without a response code, order state {:?}",
                super::wire::excerpt(state)
            )),
        },
    };
    (outcome, code)
}

/// Classifies the reply to a cancel/refund request (`wscancel.cfm`, the operation-result DTD of
/// §3.2 [L]) as a claim about the refund: `Approved` means only "the gateway says it refunded";
/// the caller confirms it by the order's verified status before booking it. The reply names the
/// original order (`ordernumber`, `orderamount`, `ordercurrency`) and the refund (`amount`,
/// `currency`) [U]; a reply about another order is an integrity failure.
pub(crate) fn cancel_claim(
    reply: &Reply,
    expected: &Expected<'_>,
    refund: Money,
) -> (Outcome, Option<String>) {
    let record = match claimed_order(reply, "cancel") {
        Ok(record) => record,
        Err(claim) => return claim,
    };
    let code = record.get("responsecode").map(str::to_string);
    if let Err(why) = check_identity(record, expected, true)
        .and_then(|()| check_test_mode(record, expected).map(|_| ()))
    {
        return (Outcome::IntegrityFailure(why), code);
    }
    if let Some(amount) = record.get("amount").filter(|a| !a.trim().is_empty())
        && Money::parse(amount.trim()).ok() != Some(refund)
    {
        return (
            Outcome::Unknown(format!(
                "cancel reply amount {:?} is not the refund's {refund}",
                super::wire::excerpt(amount)
            )),
            code,
        );
    }
    let state = record.get("orderstate").unwrap_or("");
    let state_class = outcome::order_state(state);
    let outcome = match code.as_deref().map(outcome::response_code) {
        Some(CodeClass::Success) => match state_class {
            StateClass::Reversed | StateClass::Anomalous => Outcome::Approved,
            StateClass::InProgress => Outcome::Pending,
            _ => Outcome::Unknown(format!(
                "cancel reply says success but order state is {:?}",
                super::wire::excerpt(state)
            )),
        },
        Some(CodeClass::Decline(kind, reason)) => Outcome::Declined(Decline {
            kind,
            code: code.clone().unwrap_or_default(),
            reason,
        }),
        Some(CodeClass::Pending) => Outcome::Pending,
        Some(CodeClass::Unknown(why)) => Outcome::Unknown(why.to_string()),
        None => Outcome::Unknown(format!(
            "cancel reply without a response code, order state {:?}",
            super::wire::excerpt(state)
        )),
    };
    (outcome, code)
}

/// Verifies and classifies an order-status reply (orderstate.cfm or orderresult.cfm).
///
/// Not found (no orders, or `firstcode 10` "missing object" qualified by secondcode 107
/// OrderNumber or 201 order) is [`Outcome::NotFound`]. A failed query (any other fault, a
/// missing Merchant_ID or card among them) is `Unknown`, `RateLimited` or `Rejected`: it says
/// nothing about the order, and only a proven absence may ever lead to a new OrderNumber.
pub(crate) fn status(reply: &Reply, expected: &Expected<'_>, salt: &SecretString) -> Verified {
    let failed = |outcome: Outcome| Verified {
        outcome,
        test_mode: None,
        response_code: None,
        bill_number: None,
        approved_orders: 0,
        pending_orders: 0,
        checkvalue_verified: false,
        reversals: None,
    };
    let orders = match reply {
        Reply::Fault {
            firstcode: 10,
            secondcode: 107 | 201,
            ..
        } => return failed(Outcome::NotFound),
        Reply::Fault {
            firstcode,
            secondcode,
            ..
        } => {
            return failed(match outcome::request_error(*firstcode, *secondcode) {
                Some(o @ (Outcome::RateLimited | Outcome::Rejected(_))) => o,
                _ => Outcome::Unknown(format!(
                    "status query failed: firstcode {firstcode}/secondcode {secondcode}"
                )),
            });
        }
        Reply::Orders(orders) if orders.is_empty() => return failed(Outcome::NotFound),
        Reply::Orders(orders) => orders,
    };

    let mut outcomes = Vec::with_capacity(orders.len());
    let mut modes = Vec::with_capacity(orders.len());
    let mut response_code = None;
    let mut bill_number = None;
    for record in orders {
        let checked = check_identity(record, expected, true)
            .and_then(|()| verify_checkvalue(record, expected, salt))
            .and_then(|()| check_test_mode(record, expected));
        let mode = match checked {
            Ok(mode) => mode,
            Err(why) => {
                let mut v = failed(Outcome::IntegrityFailure(why));
                v.response_code = record.get("responsecode").map(str::to_string);
                return v;
            }
        };
        let code = record
            .get("responsecode")
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .or_else(|| last_operation_code(record));
        let outcome = outcome::verified_order(record.text("orderstate"), code.as_deref());
        modes.push(mode);
        if code.is_some() {
            response_code = code;
        }
        bill_number = record.get("billnumber").map(str::to_string).or(bill_number);
        outcomes.push(outcome);
    }
    let reversals = match orders.as_slice() {
        [one] => Some(Reversals::of(one)),
        _ => None,
    };
    let approved_orders = outcomes.iter().filter(|o| **o == Outcome::Approved).count();
    let pending_orders = outcomes.iter().filter(|o| **o == Outcome::Pending).count();
    // The test mode that matters for a payment is the paid order's own: another order's says
    // nothing about it.
    let test_mode = match outcomes.iter().position(|o| *o == Outcome::Approved) {
        Some(paid) => modes[paid],
        None => modes.iter().flatten().next().copied(),
    };
    // Several orders with our number: paid if any is paid; otherwise still running if any is;
    // otherwise the most recent answer.
    let outcome = if approved_orders > 0 {
        Outcome::Approved
    } else if let Some(pending) = outcomes.iter().find(|o| **o == Outcome::Pending) {
        pending.clone()
    } else if let Some(unknown) = outcomes.iter().find(|o| matches!(o, Outcome::Unknown(_))) {
        unknown.clone()
    } else {
        outcomes.pop().unwrap_or(Outcome::NotFound)
    };
    Verified {
        outcome,
        test_mode,
        response_code,
        bill_number,
        approved_orders,
        pending_orders,
        checkvalue_verified: true,
        reversals,
    }
}

fn verify_checkvalue(
    record: &OrderRecord,
    expected: &Expected<'_>,
    salt: &SecretString,
) -> Result<(), String> {
    let received = record.get("checkvalue").unwrap_or("");
    if received.is_empty() {
        return Err(
            "reply carries no checkvalue (the merchant account must sign results \
                    with MD5, not PGP)"
                .into(),
        );
    }
    let fields = ResultFields {
        merchant_id: expected.merchant_id,
        order_number: record.text("ordernumber"),
        order_amount: record.text("orderamount"),
        order_currency: record.text("ordercurrency"),
        order_state: record.text("orderstate"),
    };
    if checkvalue::verify_result(salt, &fields, received) {
        Ok(())
    } else {
        Err("checkvalue mismatch".into())
    }
}

fn last_operation_code(record: &OrderRecord) -> Option<String> {
    record
        .operations
        .iter()
        .rev()
        .find_map(|op| op.get("responsecode").filter(|c| !c.is_empty()).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::checkvalue::result_checkvalue;

    fn salt() -> SecretString {
        SecretString::from("secret")
    }

    fn expected() -> Expected<'static> {
        Expected {
            merchant_id: "123456",
            order_number: "A1_R1",
            amount: Money::parse("100.00").unwrap(),
            currency: Currency::parse("RUB").unwrap(),
            test_mode: true,
        }
    }

    fn status_order(state: &str, checkvalue: Option<&str>) -> OrderRecord {
        let computed = result_checkvalue(
            &salt(),
            &ResultFields {
                merchant_id: "123456",
                order_number: "A1_R1",
                order_amount: "100.00",
                order_currency: "RUB",
                order_state: state,
            },
        );
        OrderRecord::from_pairs(&[
            ("ordernumber", "A1_R1"),
            ("orderamount", "100.00"),
            ("ordercurrency", "RUB"),
            ("orderstate", state),
            ("checkvalue", checkvalue.unwrap_or(&computed)),
        ])
    }

    #[test]
    fn a_verified_approved_order_is_paid() {
        let v = status(
            &Reply::Orders(vec![status_order("Approved", None)]),
            &expected(),
            &salt(),
        );
        assert_eq!(v.outcome, Outcome::Approved);
        assert!(v.checkvalue_verified);
        // The §5.4 V2 vector is what the order above carries.
        assert_eq!(
            status_order("Approved", None).text("checkvalue"),
            "71B6B0CF622FC0272366E81326CB32CD"
        );
    }

    #[test]
    fn a_wrong_or_missing_checkvalue_is_an_integrity_failure() {
        for bad in [Some("78F82578B8FBA636DF073B7C305FD3CC"), Some("")] {
            let v = status(
                &Reply::Orders(vec![status_order("Approved", bad)]),
                &expected(),
                &salt(),
            );
            assert!(matches!(v.outcome, Outcome::IntegrityFailure(_)), "{bad:?}");
        }
        // Right check value but for another merchant (orderstate does not echo ours).
        let mut e = expected();
        e.merchant_id = "654321";
        let v = status(
            &Reply::Orders(vec![status_order("Approved", None)]),
            &e,
            &salt(),
        );
        assert!(matches!(v.outcome, Outcome::IntegrityFailure(_)));
    }

    #[test]
    fn another_amount_currency_order_or_mode_is_an_integrity_failure() {
        let mut e = expected();
        e.amount = Money::parse("100.01").unwrap();
        let reply = Reply::Orders(vec![status_order("Approved", None)]);
        assert!(matches!(
            status(&reply, &e, &salt()).outcome,
            Outcome::IntegrityFailure(m) if m.contains("amount")
        ));
        let mut e = expected();
        e.currency = Currency::parse("USD").unwrap();
        assert!(matches!(
            status(&reply, &e, &salt()).outcome,
            Outcome::IntegrityFailure(m) if m.contains("currency")
        ));
        let mut e = expected();
        e.order_number = "A1_R2";
        assert!(matches!(
            status(&reply, &e, &salt()).outcome,
            Outcome::IntegrityFailure(m) if m.contains("not ours")
        ));
        let mut live = status_order("Approved", None);
        live.insert("testmode", "0".into()).unwrap();
        assert!(matches!(
            status(&Reply::Orders(vec![live]), &expected(), &salt()).outcome,
            Outcome::IntegrityFailure(m) if m.contains("test_mode")
        ));
    }

    #[test]
    fn not_found_and_failed_queries_say_nothing_about_the_order() {
        assert_eq!(
            status(&Reply::Orders(vec![]), &expected(), &salt()).outcome,
            Outcome::NotFound
        );
        let fault = |firstcode, secondcode| Reply::Fault {
            firstcode,
            secondcode,
            detail: None,
        };
        for order in [107, 201] {
            assert_eq!(
                status(&fault(10, order), &expected(), &salt()).outcome,
                Outcome::NotFound
            );
        }
        // "Missing object" about something else (the merchant, a card, unqualified) says
        // nothing about our order: never a not-found that could lead to a new OrderNumber.
        for other in [0, 100, 203] {
            assert_ne!(
                status(&fault(10, other), &expected(), &salt()).outcome,
                Outcome::NotFound,
                "10/{other}"
            );
        }
        assert_eq!(
            status(&fault(1, 3), &expected(), &salt()).outcome,
            Outcome::RateLimited
        );
        assert!(matches!(
            status(&fault(7, 141), &expected(), &salt()).outcome,
            Outcome::Rejected(_)
        ));
        // A status query never produces a decline, whatever fault it gets.
        for (f, s) in [(17, 211), (18, 203), (2, 0), (16, 0)] {
            assert!(matches!(
                status(&fault(f, s), &expected(), &salt()).outcome,
                Outcome::Unknown(_)
            ));
        }
    }

    #[test]
    fn several_orders_with_our_number() {
        let reply = Reply::Orders(vec![
            status_order("Declined", None),
            status_order("Approved", None),
        ]);
        let v = status(&reply, &expected(), &salt());
        assert_eq!((v.outcome, v.approved_orders), (Outcome::Approved, 1));
        let reply = Reply::Orders(vec![
            status_order("Approved", None),
            status_order("Approved", None),
        ]);
        assert_eq!(status(&reply, &expected(), &salt()).approved_orders, 2);
        // A duplicate still in process beside the paid one: counted, it may yet be taken.
        let reply = Reply::Orders(vec![
            status_order("Approved", None),
            status_order("In Process", None),
        ]);
        let v = status(&reply, &expected(), &salt());
        assert_eq!(
            (v.outcome, v.approved_orders, v.pending_orders),
            (Outcome::Approved, 1, 1)
        );
        let reply = Reply::Orders(vec![
            status_order("Declined", None),
            status_order("In Process", None),
        ]);
        assert_eq!(
            status(&reply, &expected(), &salt()).outcome,
            Outcome::Pending
        );
        // One forged order among good ones spoils the answer.
        let reply = Reply::Orders(vec![
            status_order("Declined", None),
            status_order("Approved", Some("00000000000000000000000000000000")),
        ]);
        assert!(matches!(
            status(&reply, &expected(), &salt()).outcome,
            Outcome::IntegrityFailure(_)
        ));
    }

    #[test]
    fn a_declined_order_takes_its_kind_from_the_operation_code() {
        let mut record = status_order("Declined", None);
        record.operations.push(
            [("responsecode".to_string(), "AS104".to_string())]
                .into_iter()
                .collect(),
        );
        let v = status(&Reply::Orders(vec![record]), &expected(), &salt());
        assert!(matches!(
            v.outcome,
            Outcome::Declined(Decline {
                kind: DeclineKind::Hard,
                ..
            })
        ));
        assert_eq!(v.response_code.as_deref(), Some("AS104"));
    }

    fn rp(code: &str, state: &str) -> Reply {
        Reply::Orders(vec![OrderRecord::from_pairs(&[
            ("ordernumber", "A1_R1"),
            ("orderamount", "100.00"),
            ("ordercurrency", "RUB"),
            ("orderstate", state),
            ("responsecode", code),
            ("testmode", "1"),
        ])])
    }

    #[test]
    fn charge_claims() {
        let e = expected();
        assert_eq!(
            charge_claim(&rp("AS000", "Approved"), &e).0,
            Outcome::Approved
        );
        assert_eq!(
            charge_claim(&rp("AS300", "In Process"), &e).0,
            Outcome::Pending
        );
        assert!(matches!(
            charge_claim(&rp("AS102", "Declined"), &e).0,
            Outcome::Declined(Decline {
                kind: DeclineKind::Soft,
                ..
            })
        ));
        assert!(matches!(
            charge_claim(&rp("AS110", "Declined"), &e).0,
            Outcome::Declined(Decline {
                kind: DeclineKind::Hard,
                ..
            })
        ));
        for (code, state) in [
            ("AS998", "In Process"),
            ("AS000", "Declined"),
            ("AS102", "Approved"),
            ("ASXYZ", "Approved"),
        ] {
            assert!(
                matches!(charge_claim(&rp(code, state), &e).0, Outcome::Unknown(_)),
                "{code} {state}"
            );
        }
        let mut other = e;
        other.order_number = "someone-else";
        assert!(matches!(
            charge_claim(&rp("AS000", "Approved"), &other).0,
            Outcome::IntegrityFailure(_)
        ));
        let two = Reply::Orders(vec![OrderRecord::default(), OrderRecord::default()]);
        assert!(matches!(charge_claim(&two, &e).0, Outcome::Unknown(_)));
        let fault = Reply::Fault {
            firstcode: 11,
            secondcode: 201,
            detail: None,
        };
        assert!(matches!(charge_claim(&fault, &e).0, Outcome::Unknown(_)));
    }

    /// The cancel reply of the public fixture (C5 `cancel_order_ok.xml`): AS000, Canceled,
    /// operation type 300, the order's own amount.
    fn cancel_reply(state: &str, code: &str, amount: &str) -> Reply {
        Reply::Orders(vec![OrderRecord::from_pairs(&[
            ("ordernumber", "A1_R1"),
            ("responsecode", code),
            ("amount", amount),
            ("currency", "RUB"),
            ("orderamount", "100.00"),
            ("ordercurrency", "RUB"),
            ("orderstate", state),
            ("operationtype", "300"),
            ("testmode", "1"),
        ])])
    }

    #[test]
    fn a_cancel_reply_is_a_claim_about_the_refund() {
        let full = Money::parse("100.00").unwrap();
        let part = Money::parse("40.00").unwrap();
        let claim = |reply: &Reply, refund| cancel_claim(reply, &expected(), refund).0;
        assert_eq!(
            claim(&cancel_reply("Canceled", "AS000", "100.00"), full),
            Outcome::Approved
        );
        assert_eq!(
            claim(&cancel_reply("PartialCanceled", "AS000", "40.00"), part),
            Outcome::Approved
        );
        // Success with the order still Approved proves nothing; a decline code is a claimed
        // refusal; another amount is not our refund.
        assert!(matches!(
            claim(&cancel_reply("Approved", "AS000", "40.00"), part),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            claim(&cancel_reply("Approved", "AS102", "40.00"), part),
            Outcome::Declined(_)
        ));
        assert!(matches!(
            claim(&cancel_reply("PartialCanceled", "AS000", "41.00"), part),
            Outcome::Unknown(_)
        ));
        let mut e = expected();
        e.order_number = "A1_R2";
        assert!(matches!(
            cancel_claim(&cancel_reply("Canceled", "AS000", "100.00"), &e, full).0,
            Outcome::IntegrityFailure(_)
        ));
        let fault = Reply::Fault {
            firstcode: 5,
            secondcode: 108,
            detail: None,
        };
        assert!(matches!(claim(&fault, part), Outcome::Rejected(_)));
    }

    #[test]
    fn reversals_are_read_from_a_verified_order_result_only() {
        let mut record = status_order("PartialCanceled", None);
        let op = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        record.operations = vec![
            op(&[
                ("billnumber", "5800.2"),
                ("operationtype", "100"),
                ("operationstate", "Approved"),
                ("amount", "100.00"),
            ]),
            op(&[
                ("operationtype", "300"),
                ("operationstate", "Approved"),
                ("amount", "30.00"),
                ("responsecode", "AS000"),
            ]),
            op(&[
                ("operationtype", "300"),
                ("operationstate", "Declined"),
                ("amount", "10.00"),
                ("responsecode", "AS102"),
            ]),
            op(&[
                ("operationtype", "300"),
                ("operationstate", "In Process"),
                ("amount", "5.00"),
            ]),
        ];
        let v = status(&Reply::Orders(vec![record.clone()]), &expected(), &salt());
        assert!(v.checkvalue_verified);
        // For the engine a partly refunded order is neither paid nor declined.
        assert!(matches!(v.outcome, Outcome::Unknown(_)));
        let r = v.reversals.unwrap();
        assert_eq!(r.order_state, "PartialCanceled");
        assert_eq!(
            (r.refunded_cents, r.refunds, r.declined, r.in_process),
            (3000, 1, 1, 1)
        );
        assert_eq!(r.payment_bill_number.as_deref(), Some("5800.2"));
        // A check value that does not cover the state: nothing is read.
        let partial_checkvalue = record.text("checkvalue").to_string();
        let mut forged = status_order("Canceled", Some(&partial_checkvalue));
        forged.operations = record.operations;
        let v = status(&Reply::Orders(vec![forged]), &expected(), &salt());
        assert!(v.reversals.is_none() && !v.checkvalue_verified);
        assert!(matches!(v.outcome, Outcome::IntegrityFailure(_)));
    }
}
