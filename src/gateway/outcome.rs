//! What a gateway answer means: every reply becomes exactly one [`Outcome`].
//!
//! The tables below are Assist's response codes (`responsecode`, §7 of the wire reference), order
//! states (`orderstate`, §4.2) and request-level errors (`firstcode`/`secondcode`, §8). They are
//! data, not code paths, so a code the tables do not know lands in the safe default: an unknown
//! outcome, resolved by asking the gateway, never a decline and never a success.
//!
//! Classification here says only what the gateway *claims*. Whether a claim of payment is
//! believed (checkvalue, our order number, amount, currency, test mode) is decided by the caller
//! before it books anything; a failed check is [`Outcome::IntegrityFailure`].

use std::fmt;

/// The one meaning of a gateway reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Paid: only ever taken from a verified order-status answer.
    Approved,
    /// Explicitly refused by the issuer or the gateway.
    Declined(Decline),
    /// Accepted and still being processed (`In Process`, `AS300`): ask again later, never resend.
    Pending,
    /// The request may or may not have been acted on: ask the gateway before anything else.
    Unknown(String),
    /// The gateway's request-rate limit: treated as unknown until a status query settles it, and
    /// all sends pause.
    RateLimited,
    /// Provably never left this host (connect refused, DNS, TLS handshake): safe to send again
    /// under the same order number.
    NotSent(String),
    /// A request-level error that means our configuration is wrong (authentication, parameters).
    Rejected(String),
    /// The answer failed verification (checkvalue, another order, wrong amount or mode).
    IntegrityFailure(String),
    /// A status query found no order with our number in its window. Soon after a send this
    /// proves nothing (the gateway may not have filed it yet); only repeated answers after the
    /// settle window mean the charge was never made.
    NotFound,
}

/// Whether retrying a decline can ever succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineKind {
    /// The card or the agreement cannot be charged again as it is (invalid, expired, fraud,
    /// 3-D Secure required, no such payment): stop and flag for an operator.
    Hard,
    /// May succeed later (insufficient funds, limits, generic): retry on the dunning schedule.
    Soft,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    pub kind: DeclineKind,
    /// The gateway's code, e.g. `AS102` or `firstcode 18/secondcode 203`.
    pub code: String,
    /// What it means, for logs and operators.
    pub reason: &'static str,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Approved => write!(f, "approved"),
            Outcome::Declined(d) => {
                let kind = match d.kind {
                    DeclineKind::Hard => "hard",
                    DeclineKind::Soft => "soft",
                };
                write!(f, "declined ({kind}, {}: {})", d.code, d.reason)
            }
            Outcome::Pending => write!(f, "pending"),
            Outcome::Unknown(why) => write!(f, "unknown ({why})"),
            Outcome::RateLimited => write!(f, "rate limited"),
            Outcome::NotSent(why) => write!(f, "not sent ({why})"),
            Outcome::Rejected(why) => write!(f, "rejected ({why})"),
            Outcome::IntegrityFailure(why) => write!(f, "integrity failure ({why})"),
            Outcome::NotFound => write!(f, "not found"),
        }
    }
}

/// What a `responsecode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    Success,
    Decline(DeclineKind, &'static str),
    Pending,
    /// Technical: the outcome must be found out by a status query.
    Unknown(&'static str),
}

/// Assist's response codes. Anything not listed is unknown.
const RESPONSE_CODES: &[(&str, CodeClass)] = &[
    ("AS000", CodeClass::Success),
    // Legacy success codes (CVC2, pre-authorisation, post-authorisation).
    ("AS001", CodeClass::Success),
    ("AS010", CodeClass::Success),
    ("AS011", CodeClass::Success),
    ("AS020", CodeClass::Success),
    (
        "AS100",
        CodeClass::Decline(DeclineKind::Soft, "declined by the issuer"),
    ),
    (
        "AS101",
        CodeClass::Decline(DeclineKind::Hard, "card details invalid"),
    ),
    (
        "AS102",
        CodeClass::Decline(DeclineKind::Soft, "insufficient funds"),
    ),
    (
        "AS104",
        CodeClass::Decline(DeclineKind::Hard, "card expired"),
    ),
    (
        "AS105",
        CodeClass::Decline(DeclineKind::Soft, "card operation limit exceeded"),
    ),
    ("AS106", CodeClass::Decline(DeclineKind::Hard, "wrong PIN")),
    ("AS107", CodeClass::Unknown("data reception error (AS107)")),
    (
        "AS108",
        CodeClass::Decline(DeclineKind::Hard, "suspected fraud"),
    ),
    (
        "AS109",
        CodeClass::Decline(DeclineKind::Soft, "merchant operation limit exceeded"),
    ),
    (
        "AS110",
        CodeClass::Decline(
            DeclineKind::Hard,
            "3-D Secure authentication required; the customer must pay interactively",
        ),
    ),
    (
        "AS200",
        CodeClass::Unknown("gateway asks to repeat the authorisation (AS200)"),
    ),
    ("AS300", CodeClass::Pending),
    (
        "AS400",
        CodeClass::Decline(
            DeclineKind::Hard,
            "no payment with such parameters (check bill_number)",
        ),
    ),
    ("AS998", CodeClass::Unknown("gateway system error (AS998)")),
];

/// Classifies a `responsecode` (case and surrounding whitespace ignored).
pub fn response_code(code: &str) -> CodeClass {
    let code = code.trim();
    RESPONSE_CODES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(code))
        .map_or(
            CodeClass::Unknown("unrecognised response code"),
            |(_, class)| *class,
        )
}

/// What an `orderstate` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateClass {
    Paid,
    /// Final and not paid.
    Failed,
    /// Not final yet.
    InProgress,
    /// Partial states recurrentd never asks for: an operator must look.
    Anomalous,
    /// Cancelled at the gateway, which includes "refunded after approval": neither paid nor a
    /// decline to retry; an operator must look.
    Reversed,
    Unrecognised,
}

const ORDER_STATES: &[(&str, StateClass)] = &[
    ("Approved", StateClass::Paid),
    ("In Process", StateClass::InProgress),
    ("Delayed", StateClass::InProgress),
    ("Declined", StateClass::Failed),
    ("Timeout", StateClass::Failed),
    ("Canceled", StateClass::Reversed),
    ("PartialApproved", StateClass::Anomalous),
    ("PartialDelayed", StateClass::Anomalous),
    ("PartialCanceled", StateClass::Anomalous),
];

/// Classifies an `orderstate` (English names; case and surrounding whitespace ignored).
pub fn order_state(state: &str) -> StateClass {
    let state = state.trim();
    ORDER_STATES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(state))
        .map_or(StateClass::Unrecognised, |(_, class)| *class)
}

/// The `secondcode` that means "request rate exceeded", whatever the first code.
pub const SECONDCODE_RATE_EXCEEDED: u32 = 3;

/// Classifies a request-level error. `None` for `0/0` (no error).
///
/// - secondcode 3 (request rate exceeded): rate limited.
/// - 1 error, 2 internal error, 12 object locked, 16 timed out: unknown — the request may have been
///   acted on.
/// - 11 duplicate object: the order number exists already, so an earlier request *was* received;
///   unknown, to be settled by a status query, never by switching to a new order number.
/// - 3–9, 14, 15, 19: our request or configuration is wrong: rejected.
/// - 10 missing object: rejected (for a charge: the initial payment is not found).
/// - 17 limits, 21 operation rejected: soft decline; 18 suspected fraud and 20 3-D Secure: hard.
/// - Anything else: unknown.
pub fn request_error(firstcode: u32, secondcode: u32) -> Option<Outcome> {
    if firstcode == 0 && secondcode == 0 {
        return None;
    }
    let code = format!("firstcode {firstcode}/secondcode {secondcode}");
    if secondcode == SECONDCODE_RATE_EXCEEDED {
        return Some(Outcome::RateLimited);
    }
    let decline = |kind, reason| {
        Some(Outcome::Declined(Decline {
            kind,
            code: code.clone(),
            reason,
        }))
    };
    let what = match secondcode {
        100 => " (Merchant_ID)",
        101 | 102 | 141 => " (login or password)",
        105 | 208 => " (currency)",
        107 => " (OrderNumber)",
        108 => " (amount)",
        143 => " (BillNumber)",
        201 => " (order)",
        212 => " (test mode)",
        320 => " (recurring payment)",
        _ => "",
    };
    match firstcode {
        1 | 2 | 12 | 16 => Some(Outcome::Unknown(format!("gateway error {code}"))),
        11 => Some(Outcome::Unknown(format!(
            "{code}: duplicate{what}; an earlier request with this order number was received"
        ))),
        3 => Some(Outcome::Rejected(format!(
            "{code}: a required parameter is missing{what}"
        ))),
        4 => Some(Outcome::Rejected(format!(
            "{code}: a parameter is badly formatted{what}"
        ))),
        5 => Some(Outcome::Rejected(format!(
            "{code}: a parameter value is invalid{what}"
        ))),
        6 => Some(Outcome::Rejected(format!(
            "{code}: unsupported interface version"
        ))),
        7 | 8 | 19 => Some(Outcome::Rejected(format!(
            "{code}: authentication or authorisation failed{what}; check gateway.login, the \
             password and gateway.merchant_id"
        ))),
        9 => Some(Outcome::Rejected(format!("{code}: encryption error"))),
        10 => Some(Outcome::Rejected(format!("{code}: no such object{what}"))),
        14 | 15 => Some(Outcome::Rejected(format!(
            "{code}: operation not allowed{what}"
        ))),
        17 => decline(DeclineKind::Soft, "limits exceeded"),
        21 => decline(DeclineKind::Soft, "operation rejected"),
        18 => decline(DeclineKind::Hard, "suspected fraud"),
        20 => decline(DeclineKind::Hard, "3-D Secure authentication error"),
        _ => Some(Outcome::Unknown(format!(
            "unrecognised gateway error {code}"
        ))),
    }
}

/// The outcome of an order-status answer whose integrity has already been verified: the state
/// decides, and the response code qualifies a failure.
pub fn verified_order(state: &str, response_code_text: Option<&str>) -> Outcome {
    match order_state(state) {
        StateClass::Paid => Outcome::Approved,
        StateClass::InProgress => Outcome::Pending,
        StateClass::Failed => {
            let code = response_code_text.map(str::trim).filter(|c| !c.is_empty());
            let (kind, reason) = match code.map(response_code) {
                Some(CodeClass::Decline(kind, reason)) => (kind, reason),
                // A final failed state without a decline code (Timeout, Canceled, or an empty
                // code) is not paid; retrying it is a soft decision.
                _ => (DeclineKind::Soft, "order closed without payment"),
            };
            Outcome::Declined(Decline {
                kind,
                code: code.map_or_else(|| state.trim().to_string(), str::to_string),
                reason,
            })
        }
        StateClass::Reversed => Outcome::Unknown(
            "the order was cancelled at the gateway (possibly refunded after approval); an \
             operator must check it before the period is charged again"
                .into(),
        ),
        StateClass::Anomalous => Outcome::Unknown(format!(
            "order state {:?} is partial; an operator must check it",
            state.trim()
        )),
        StateClass::Unrecognised => {
            Outcome::Unknown(format!("unrecognised order state {:?}", state.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn response_codes_follow_the_table() {
        assert_eq!(response_code("AS000"), CodeClass::Success);
        assert_eq!(response_code(" as000 \n"), CodeClass::Success);
        assert!(matches!(
            response_code("AS102"),
            CodeClass::Decline(DeclineKind::Soft, "insufficient funds")
        ));
        assert!(matches!(
            response_code("AS104"),
            CodeClass::Decline(DeclineKind::Hard, _)
        ));
        assert!(matches!(
            response_code("AS110"),
            CodeClass::Decline(DeclineKind::Hard, _)
        ));
        assert_eq!(response_code("AS300"), CodeClass::Pending);
        for technical in ["AS107", "AS200", "AS998", "AS999", "", "garbage"] {
            assert!(
                matches!(response_code(technical), CodeClass::Unknown(_)),
                "{technical}"
            );
        }
    }

    #[test]
    fn order_states_follow_the_table() {
        assert_eq!(verified_order("Approved", Some("AS000")), Outcome::Approved);
        assert_eq!(verified_order(" in process ", None), Outcome::Pending);
        assert_eq!(verified_order("Delayed", None), Outcome::Pending);
        let Outcome::Declined(d) = verified_order("Declined", Some("AS101")) else {
            panic!()
        };
        assert_eq!((d.kind, d.code.as_str()), (DeclineKind::Hard, "AS101"));
        let Outcome::Declined(d) = verified_order("Declined", Some("AS102")) else {
            panic!()
        };
        assert_eq!(d.kind, DeclineKind::Soft);
        let Outcome::Declined(d) = verified_order("Timeout", None) else {
            panic!()
        };
        assert_eq!((d.kind, d.code.as_str()), (DeclineKind::Soft, "Timeout"));
        assert!(matches!(
            verified_order("PartialApproved", None),
            Outcome::Unknown(_)
        ));
        assert!(matches!(
            verified_order("Утверждён", None),
            Outcome::Unknown(_)
        ));
        // A success code never turns a non-approved state into a payment.
        assert!(!matches!(
            verified_order("Declined", Some("AS000")),
            Outcome::Approved
        ));
        assert!(!matches!(
            verified_order("In Process", Some("AS000")),
            Outcome::Approved
        ));
    }

    #[test]
    fn request_errors_follow_the_table() {
        assert_eq!(request_error(0, 0), None);
        assert_eq!(request_error(5, 3), Some(Outcome::RateLimited));
        assert_eq!(request_error(19, 3), Some(Outcome::RateLimited));
        assert!(
            matches!(request_error(7, 141), Some(Outcome::Rejected(m)) if m.contains("gateway.login"))
        );
        assert!(
            matches!(request_error(5, 108), Some(Outcome::Rejected(m)) if m.contains("(amount)"))
        );
        assert!(
            matches!(request_error(3, 143), Some(Outcome::Rejected(m)) if m.contains("BillNumber"))
        );
        assert!(
            matches!(request_error(11, 201), Some(Outcome::Unknown(m)) if m.contains("earlier request"))
        );
        for unknown in [(1, 0), (2, 1), (16, 0), (12, 201), (99, 0)] {
            assert!(
                matches!(
                    request_error(unknown.0, unknown.1),
                    Some(Outcome::Unknown(_))
                ),
                "{unknown:?}"
            );
        }
        assert!(matches!(
            request_error(18, 203),
            Some(Outcome::Declined(Decline {
                kind: DeclineKind::Hard,
                ..
            }))
        ));
        assert!(matches!(
            request_error(17, 211),
            Some(Outcome::Declined(Decline {
                kind: DeclineKind::Soft,
                ..
            }))
        ));
    }

    proptest! {
        /// No code, state or error pair that the tables do not know is ever taken as paid, and
        /// nothing but `Approved` is.
        #[test]
        fn only_the_approved_state_is_paid(state in "\\PC{0,20}", code in proptest::option::of("\\PC{0,8}")) {
            let outcome = verified_order(&state, code.as_deref());
            prop_assert_eq!(outcome == Outcome::Approved, state.trim().eq_ignore_ascii_case("approved"));
        }

        #[test]
        fn request_errors_are_never_success(first in 0u32..400, second in 0u32..400) {
            let outcome = request_error(first, second);
            prop_assert_eq!(outcome.is_none(), first == 0 && second == 0);
            prop_assert!(outcome != Some(Outcome::Approved));
        }
    }
}
