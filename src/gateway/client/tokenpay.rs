//! Token Pay (`POST /pay/tokenpay.cfm`, seeds 001 and 004): the initial payment of a recurring
//! agreement, made by the merchant with a card the customer saved through One Click.
//!
//! The reply is checked as strictly as a status answer: exactly one order, our order number,
//! amount and currency, a check value that verifies with our salt and merchant id, our test mode.
//! Whatever is not conclusive (a lost or broken reply, an unknown code, In Process, no test mode
//! or billnumber) is settled by [`Client::order_status`], never by sending again.
//!
//! A fault reply (`firstcode`/`secondcode`) carries no check value: one that says the payment
//! was declined or the request refused (for this request's values, not our configuration) is
//! only believed once a verified status answer agrees — no such order, or the order declined.
//! A status answer that shows the order paid wins (enrolled); one that cannot confirm leaves
//! the outcome unknown.

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use super::{Client, Received, StatusQuery, check_order_number};
use crate::gateway::outcome::{Decline, Outcome};
use crate::gateway::reply;
use crate::gateway::signature::SigningKey;
use crate::gateway::wire::{self, Reply};
use crate::money::{Currency, Money, assist_date};

/// The recurring limits the customer agreed to, sent with the initial payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecurringLimits {
    /// RecurringMinAmount.
    pub min_amount: Money,
    /// RecurringMaxAmount.
    pub max_amount: Money,
    /// RecurringPeriod: fewest days between charges, 1 to 999.
    pub period_days: u32,
    /// RecurringMaxDate: no charge after it.
    pub max_date: NaiveDate,
}

/// An initial recurring payment with a saved card.
#[derive(Debug, Clone, Copy)]
pub struct TokenPayRequest<'a> {
    pub order_number: &'a str,
    pub amount: Money,
    pub currency: Currency,
    /// The merchant's CustomerNumber; sent only inside PaymentToken (Assist refuses a top-level
    /// CustomerNumber together with RecurringIndicator=1).
    pub customer: &'a str,
    /// The saved card's token, as `tokens list` shows it.
    pub token: &'a str,
    pub limits: RecurringLimits,
    pub comment: Option<&'a str>,
    /// Signs the request (`Signature`) when given (`gateway.sign_requests`).
    pub signing_key: Option<&'a SigningKey>,
}

/// What became of an initial payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPayOutcome {
    /// Paid, verified: the agreement exists under this billnumber (the base, without `.k`).
    Enrolled { bill_number: String },
    /// Not final: the customer must complete 3-D Secure or enter the CVC on `continue_url`.
    /// Nothing is enrolled.
    NeedsCustomer {
        continue_url: Option<String>,
        reason: String,
    },
    /// Refused by the issuer or the gateway.
    Declined(Decline),
    /// The payment may or may not have been made, and the status query could not tell.
    Unknown(String),
    /// Provably never sent (connection refused, DNS, TLS; or the request could not be built).
    NotSent(String),
    /// The gateway refused the request itself. `config` when our configuration is the cause
    /// (credentials, merchant id, the signature key), not this request's values.
    Rejected { reason: String, config: bool },
    /// An answer failed verification (check value, another order, amount, currency, mode).
    IntegrityFailure(String),
}

impl std::fmt::Display for TokenPayOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenPayOutcome::Enrolled { bill_number } => {
                write!(f, "enrolled (billnumber {bill_number})")
            }
            TokenPayOutcome::NeedsCustomer { reason, .. } => {
                write!(f, "needs the customer ({reason})")
            }
            TokenPayOutcome::Declined(d) => write!(f, "{}", Outcome::Declined(d.clone())),
            TokenPayOutcome::Unknown(why) => write!(f, "unknown ({why})"),
            TokenPayOutcome::NotSent(why) => write!(f, "not sent ({why})"),
            TokenPayOutcome::Rejected { reason, .. } => write!(f, "rejected ({reason})"),
            TokenPayOutcome::IntegrityFailure(why) => write!(f, "integrity failure ({why})"),
        }
    }
}

/// The answer to [`Client::token_pay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPayReply {
    pub outcome: TokenPayOutcome,
    /// The operation's `responsecode`, when an answer carried one.
    pub response_code: Option<String>,
    /// When the request was sent (the status window starts before it).
    pub sent_at: DateTime<Utc>,
    /// Whether an order-status query settled the outcome.
    pub confirmed_by_status: bool,
    /// Whether the gateway showed that it holds the order (a reply or status answer carried it:
    /// approved, declined, in process, or failing verification). A later "not found" then
    /// proves nothing.
    pub seen: bool,
    /// The tokenpay body as received, truncated and masked, for the record.
    pub raw: Option<String>,
}

/// The secondcode Assist gives with firstcode 3 when the card needs its CVC entered.
const SECONDCODE_CVC_REQUIRED: u32 = 115;

impl Client {
    /// Makes the initial recurring payment with a saved card: `POST /pay/tokenpay.cfm`,
    /// `Format=5`. Never retried; an inconclusive answer is settled by an order-status query.
    pub async fn token_pay(&self, request: &TokenPayRequest<'_>) -> TokenPayReply {
        let sent_at = Utc::now();
        let early = |outcome| TokenPayReply {
            outcome,
            response_code: None,
            sent_at,
            confirmed_by_status: false,
            seen: false,
            raw: None,
        };
        if let Err(why) = check_order_number(request.order_number) {
            return early(TokenPayOutcome::NotSent(why));
        }
        let limits = request.limits;
        if !(1..=999).contains(&limits.period_days) {
            return early(TokenPayOutcome::NotSent(format!(
                "RecurringPeriod {} is not 1 to 999 days",
                limits.period_days
            )));
        }
        let signature = match request.signing_key {
            None => None,
            Some(key) => match key.sign(
                &self.merchant_id,
                request.order_number,
                request.amount,
                request.currency,
            ) {
                Ok(signature) => Some(signature),
                Err(error) => return early(TokenPayOutcome::NotSent(error.to_string())),
            },
        };
        let amount = request.amount.to_string();
        let min = limits.min_amount.to_string();
        let max = limits.max_amount.to_string();
        let period = limits.period_days.to_string();
        let max_date = assist_date(limits.max_date);
        let payment_token = json!({
            "Token": request.token,
            "CustomerNumber": request.customer,
        })
        .to_string();
        let mut form: Vec<(&str, &str)> = vec![
            ("Merchant_ID", &self.merchant_id),
            ("Login", &self.login),
            ("Password", self.password.expose_secret()),
            ("OrderNumber", request.order_number),
            ("OrderAmount", &amount),
            ("OrderCurrency", request.currency.as_str()),
            ("TokenType", "5"),
            ("PaymentToken", &payment_token),
            ("RecurringIndicator", "1"),
            ("RecurringMinAmount", &min),
            ("RecurringMaxAmount", &max),
            ("RecurringPeriod", &period),
            ("RecurringMaxDate", &max_date),
            ("Language", "EN"),
            ("Format", "5"),
        ];
        if let Some(comment) = request.comment {
            form.push(("OrderComment", comment));
        }
        if let Some(signature) = &signature {
            form.push(("Signature", signature));
        }
        tracing::debug!(
            service = "tokenpay.cfm",
            order_number = request.order_number,
            customer = request.customer,
            amount = %request.amount,
            currency = %request.currency,
            signed = signature.is_some(),
            "sending initial recurring payment"
        );
        let received = self.post_form("pay/tokenpay.cfm", &form).await;
        let body = match received {
            Received::Body(body) => body,
            Received::Failed { outcome, raw, .. } => {
                if let Outcome::NotSent(why) = outcome {
                    return early(TokenPayOutcome::NotSent(why));
                }
                return self
                    .confirm(request, sent_at, reason(&outcome), None, None, raw)
                    .await;
            }
        };
        let raw = Some(self.mask(&body));
        let wire = match wire::parse_token_pay(&body) {
            Ok(wire) => wire,
            Err(error) => {
                return self
                    .confirm(
                        request,
                        sent_at,
                        format!("unreadable reply: {error}"),
                        None,
                        None,
                        raw,
                    )
                    .await;
            }
        };
        self.classify(request, sent_at, wire, raw).await
    }

    async fn classify(
        &self,
        request: &TokenPayRequest<'_>,
        sent_at: DateTime<Utc>,
        wire: wire::TokenPayWire,
        raw: Option<String>,
    ) -> TokenPayReply {
        let done = |outcome, response_code| TokenPayReply {
            outcome,
            response_code,
            sent_at,
            confirmed_by_status: false,
            // Only replies that carry the order come back through here, and faults about 3-D
            // Secure or the CVC, which the gateway sends with the order In Process.
            seen: true,
            raw: raw.clone(),
        };
        let cvc_required = wire.firstcode == 3 && wire.secondcode == SECONDCODE_CVC_REQUIRED;
        let orders = match &wire.reply {
            Reply::Fault { .. } if cvc_required => {
                return done(needs_cvc(wire.continue_url.clone()), None);
            }
            Reply::Fault {
                firstcode,
                secondcode,
                detail,
            } => {
                let detail = detail
                    .as_deref()
                    .map(|d| format!(": {}", wire::excerpt(d)))
                    .unwrap_or_default();
                return match super::super::outcome::request_error(*firstcode, *secondcode) {
                    // Our credentials, merchant id or signature refused: the gateway did not
                    // take the request in.
                    Some(Outcome::Rejected(reason)) if is_config_fault(*firstcode, *secondcode) => {
                        TokenPayReply {
                            seen: false,
                            ..done(
                                TokenPayOutcome::Rejected {
                                    reason: format!("{reason}{detail}"),
                                    config: true,
                                },
                                None,
                            )
                        }
                    }
                    // A refusal or a decline of this payment: a claim without a check value,
                    // believed once the order's status agrees.
                    Some(Outcome::Rejected(reason)) => {
                        let claimed = TokenPayOutcome::Rejected {
                            reason: format!("{reason}{detail}"),
                            config: false,
                        };
                        self.confirm_fault(request, sent_at, claimed, raw.clone())
                            .await
                    }
                    Some(Outcome::Declined(decline)) => {
                        let claimed = TokenPayOutcome::Declined(decline);
                        self.confirm_fault(request, sent_at, claimed, raw.clone())
                            .await
                    }
                    other => {
                        let why = other.map_or_else(
                            || "fault with codes 0/0".to_string(),
                            |o| format!("{}{detail}", reason(&o)),
                        );
                        self.confirm(request, sent_at, why, None, None, raw.clone())
                            .await
                    }
                };
            }
            Reply::Orders(orders) => orders,
        };
        let [record] = orders.as_slice() else {
            let why = format!("reply carries {} orders, expected one", orders.len());
            return self.confirm(request, sent_at, why, None, None, raw).await;
        };
        let expected = self.expected(request.order_number, request.amount, request.currency);
        let verified = reply::status(&Reply::Orders(vec![record.clone()]), &expected, &self.salt);
        let code = verified.response_code.clone();
        if let Outcome::IntegrityFailure(why) = &verified.outcome {
            return done(TokenPayOutcome::IntegrityFailure(why.clone()), code);
        }
        let needs_customer = cvc_required
            || wire.continue_url.is_some()
            || code
                .as_deref()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("AS110"));
        if needs_customer && verified.outcome != Outcome::Approved {
            let outcome = if cvc_required {
                needs_cvc(wire.continue_url)
            } else {
                TokenPayOutcome::NeedsCustomer {
                    continue_url: wire.continue_url,
                    reason: "the card needs 3-D Secure authentication (AS110)".to_string(),
                }
            };
            return done(outcome, code);
        }
        match verified.outcome {
            Outcome::Approved if verified.test_mode.is_some() => {
                match agreement_bill_number(verified.bill_number.as_deref()) {
                    Ok(bill_number) => done(TokenPayOutcome::Enrolled { bill_number }, code),
                    Err(why) => done(TokenPayOutcome::IntegrityFailure(why), code),
                }
            }
            Outcome::Declined(decline) => done(TokenPayOutcome::Declined(decline), code),
            Outcome::Approved => {
                let why = "approved, but the reply does not say its test mode".to_string();
                self.confirm(request, sent_at, why, None, code, raw).await
            }
            other => {
                let mode = verified.test_mode;
                self.confirm(request, sent_at, reason(&other), mode, code, raw)
                    .await
            }
        }
    }

    /// Settles an inconclusive answer by asking for the order's status.
    async fn confirm(
        &self,
        request: &TokenPayRequest<'_>,
        sent_at: DateTime<Utc>,
        why: String,
        known_test_mode: Option<bool>,
        response_code: Option<String>,
        raw: Option<String>,
    ) -> TokenPayReply {
        tracing::debug!(
            order_number = request.order_number,
            reason = %why,
            "token payment not conclusive; asking for its status"
        );
        let answer = self
            .order_status(&StatusQuery {
                order_number: request.order_number,
                amount: request.amount,
                currency: request.currency,
                sent_at,
                known_test_mode,
            })
            .await;
        let verified = answer.verified;
        let seen = shows_order(&verified.outcome);
        let outcome = match verified.outcome {
            Outcome::Approved => match agreement_bill_number(verified.bill_number.as_deref()) {
                Ok(bill_number) => TokenPayOutcome::Enrolled { bill_number },
                Err(problem) => TokenPayOutcome::IntegrityFailure(problem),
            },
            Outcome::Declined(decline) => TokenPayOutcome::Declined(decline),
            Outcome::IntegrityFailure(problem) => TokenPayOutcome::IntegrityFailure(problem),
            Outcome::Pending => {
                TokenPayOutcome::Unknown(format!("{why}; the gateway shows the order In Process"))
            }
            Outcome::NotFound => TokenPayOutcome::Unknown(format!(
                "{why}; the gateway does not show the order (yet)"
            )),
            other => TokenPayOutcome::Unknown(format!("{why}; status query: {other}")),
        };
        TokenPayReply {
            outcome,
            response_code: verified.response_code.or(response_code),
            sent_at,
            confirmed_by_status: true,
            seen,
            raw,
        }
    }

    /// Confirms a fault that says the payment was declined or refused (`claimed`) by asking for
    /// the order's status: no such order, or the order declined, confirm it; the order paid
    /// means it was enrolled after all; anything else leaves the outcome unknown.
    async fn confirm_fault(
        &self,
        request: &TokenPayRequest<'_>,
        sent_at: DateTime<Utc>,
        claimed: TokenPayOutcome,
        raw: Option<String>,
    ) -> TokenPayReply {
        tracing::debug!(
            order_number = request.order_number,
            fault = %claimed,
            "token payment refused by a fault; confirming by its status"
        );
        let answer = self
            .order_status(&StatusQuery {
                order_number: request.order_number,
                amount: request.amount,
                currency: request.currency,
                sent_at,
                known_test_mode: None,
            })
            .await;
        let verified = answer.verified;
        let seen = shows_order(&verified.outcome);
        let outcome = match verified.outcome {
            // The gateway answered that it refused, and holds no such order.
            Outcome::NotFound => claimed,
            Outcome::Declined(decline) => TokenPayOutcome::Declined(decline),
            Outcome::Approved => match agreement_bill_number(verified.bill_number.as_deref()) {
                Ok(bill_number) => TokenPayOutcome::Enrolled { bill_number },
                Err(problem) => TokenPayOutcome::IntegrityFailure(problem),
            },
            Outcome::IntegrityFailure(problem) => TokenPayOutcome::IntegrityFailure(problem),
            Outcome::Pending => TokenPayOutcome::Unknown(format!(
                "the gateway answered {claimed}, but shows the order In Process: it may still \
                 be charged"
            )),
            other => TokenPayOutcome::Unknown(format!(
                "the gateway answered {claimed}, but its order status could not confirm that \
                 nothing was charged ({other})"
            )),
        };
        TokenPayReply {
            outcome,
            response_code: verified.response_code,
            sent_at,
            confirmed_by_status: true,
            seen,
            raw,
        }
    }
}

/// Whether a verified status outcome shows that the gateway holds the order.
fn shows_order(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Approved | Outcome::Declined(_) | Outcome::Pending | Outcome::IntegrityFailure(_)
    )
}

/// An outcome as the reason a payment is not settled yet (without `unknown (...)` around it).
fn reason(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unknown(why) => why.clone(),
        Outcome::Pending => "the order is In Process".to_string(),
        other => other.to_string(),
    }
}

fn needs_cvc(continue_url: Option<String>) -> TokenPayOutcome {
    TokenPayOutcome::NeedsCustomer {
        continue_url,
        reason: "the card needs its CVC entered (firstcode 3/secondcode 115)".to_string(),
    }
}

/// Faults that mean our configuration is wrong rather than this request's values: version,
/// authentication, authorisation, the signature (encryption), access; or a credential named.
fn is_config_fault(firstcode: u32, secondcode: u32) -> bool {
    matches!(firstcode, 6..=9 | 19) || matches!(secondcode, 100..=102 | 141)
}

/// The agreement's billnumber from an approved answer: its base (before any `.k`), 8 to 20
/// digits.
pub fn agreement_bill_number(bill_number: Option<&str>) -> Result<String, String> {
    let text = bill_number.unwrap_or("").trim();
    let base = text.split_once('.').map_or(text, |(base, _)| base);
    if (8..=20).contains(&base.len()) && base.bytes().all(|b| b.is_ascii_digit()) {
        Ok(base.to_string())
    } else {
        Err(format!(
            "approved, but the billnumber {:?} is not one (digits expected)",
            wire::excerpt(text)
        ))
    }
}
