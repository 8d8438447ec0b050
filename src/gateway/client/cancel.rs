//! Cancel / refund (`POST /cancel/wscancel.cfm` [L]): the whole amount or part of an approved
//! order goes back to the customer, and `orderresult.cfm`, whose operations list shows it.
//!
//! What is known of the service comes from public clients (§1, C1 php-core's `wscancel`, C5's
//! `cancel_order` and its fixture), not from Assist's reference:
//! - parameters `Billnumber` (the order's billnumber at Assist), `Merchant_ID`, `Login`,
//!   `Password`, `Amount` (the part to cancel; the whole order without it), `Currency`,
//!   `CancelReason`, `Language`, `Format` [L]; `OrderNumber` is sent as well, so that a gateway
//!   that keys on it finds the order [U];
//! - the reply is the operation-result DTD shared with rp.cfm (§3.2) with `operationtype` 300 and
//!   the order's new state (`Canceled`, or `PartialCanceled` for part of it) [U]. It carries no
//!   check value: like rp.cfm's, it is only a claim, confirmed by the order's verified status.
//!
//! Nothing here ever sends a cancel twice: a lost or broken reply is [`Outcome::Unknown`], and
//! only `Outcome::NotSent` (no connection was ever made) means the request did not leave.

use secrecy::ExposeSecret;

use super::{Client, Received, StatusAnswer, StatusQuery, check_order_number};
use crate::gateway::outcome::Outcome;
use crate::gateway::reply;
use crate::gateway::wire;
use crate::money::{Currency, Money};

/// One refund of (part of) an approved order.
#[derive(Debug, Clone, Copy)]
pub struct CancelRequest<'a> {
    /// Our OrderNumber of the approved order.
    pub order_number: &'a str,
    /// Assist's billnumber of that order (from its verified order result).
    pub bill_number: &'a str,
    /// The amount the order was approved for.
    pub order_amount: Money,
    /// The part to refund (never more than what remains).
    pub amount: Money,
    /// The order's currency.
    pub currency: Currency,
    /// The operator's reason (`CancelReason` [U]).
    pub reason: &'a str,
}

/// What the gateway said to a cancel request: a claim, never booked as such.
#[derive(Debug, Clone)]
pub struct CancelReply {
    /// `Approved`: the gateway claims it refunded; `Declined`: it claims it refused; `NotSent`:
    /// the request never left; anything else: the outcome is unknown.
    pub claim: Outcome,
    pub response_code: Option<String>,
    /// The reply body, masked, for the record.
    pub raw: Option<String>,
}

impl Client {
    /// Asks the gateway to refund `request.amount` of an approved order. Never retried here.
    pub async fn cancel(&self, request: &CancelRequest<'_>) -> CancelReply {
        if let Err(why) = check_order_number(request.order_number) {
            return CancelReply {
                claim: Outcome::Rejected(why),
                response_code: None,
                raw: None,
            };
        }
        let amount = request.amount.to_string();
        let form = [
            ("Billnumber", request.bill_number),
            ("OrderNumber", request.order_number),
            ("Merchant_ID", self.merchant_id.as_str()),
            ("Login", self.login.as_str()),
            ("Password", self.password.expose_secret()),
            ("Amount", amount.as_str()),
            ("Currency", request.currency.as_str()),
            ("CancelReason", request.reason),
            ("Language", "EN"),
            ("Format", self.format_code()),
        ];
        tracing::debug!(
            service = "wscancel.cfm",
            order_number = request.order_number,
            bill_number = request.bill_number,
            amount = %request.amount,
            currency = %request.currency,
            "sending a refund"
        );
        let received = self.post_form("cancel/wscancel.cfm", &form).await;
        let body = match received {
            Received::Body(body) => body,
            Received::Failed { outcome, raw, .. } => {
                return CancelReply {
                    claim: outcome,
                    response_code: None,
                    raw,
                };
            }
        };
        let raw = Some(self.mask(&body));
        let expected = self.expected(request.order_number, request.order_amount, request.currency);
        match wire::parse_reply(&body) {
            Ok(reply) => {
                let (claim, response_code) = reply::cancel_claim(&reply, &expected, request.amount);
                CancelReply {
                    claim,
                    response_code,
                    raw,
                }
            }
            Err(e) => CancelReply {
                claim: Outcome::Unknown(format!("unreadable cancel reply: {e}")),
                response_code: None,
                raw,
            },
        }
    }

    /// The order's verified result with its operations (`orderresult.cfm` only): what a refund
    /// is checked against before it is sent and confirmed by after. `query.amount` is the
    /// amount the order was approved for; `query.sent_at` when it was charged (the search
    /// window is built around it).
    pub async fn order_result(&self, query: &StatusQuery<'_>) -> StatusAnswer {
        self.status_call("orderresult/orderresult.cfm", query).await
    }
}
