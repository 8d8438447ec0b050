//! IPS Assist's wire format: check values, request signatures and outcome classification.
//!
//! `gateway` is the only module that knows Assist's wire format. Everything else in recurrentd
//! deals in [`Money`], [`Currency`] and its own types; the strings Assist hashes, signs and
//! returns are built and checked here.
//!
//! - [`checkvalue`]: the MD5 check value Assist puts on `orderstate`/`orderresult` replies (which
//!   recurrentd verifies) and the request form of the same value.
//! - [`signature`]: the RSA-MD5 request `Signature`, for services that define one (Token Pay).
//! - [`outcome`]: what a reply means, as exactly one classified outcome.
//! - [`wire`]: reading XML and JSON replies into one neutral shape (faults or order records).
//! - [`reply`]: what a parsed reply means for one of our orders: charge claims, and the "paid"
//!   rule for status answers (checkvalue, order number, amount, currency, test mode).
//! - [`client`]: the HTTP client and its transport rules (no retry, no redirect, timeouts, size
//!   cap, https unless loopback); the only code that talks to Assist.
//! - [`sandbox`]: an Assist emulator on loopback with deterministic faults, for tests, demos and
//!   rehearsals. It writes the wire format by hand, independently of the parser.
//!
//! Only `client` and `sandbox` do I/O; secrets come in as [`secrecy::SecretString`] and stay
//! inside them.

use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};

pub mod checkvalue;
pub mod client;
pub mod outcome;
pub mod reply;
pub mod sandbox;
pub mod signature;
pub mod wire;

/// The reply format asked of Assist (`Format`): `gateway.format` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// `Format=3`.
    Xml,
    /// `Format=5`.
    Json,
}

/// The request string `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency` (assist-api.md §5.1,
/// §6.1), hashed for the request check value and signed for the request `Signature`.
///
/// The amount is written by [`Money`]'s `Display`, which is the wire form (`100.00`), so the
/// string signed is the string sent. The optional trailing fields (`;CustomerNumber`, ...) are
/// not supported: recurrentd never sends them with a non-zero value.
pub(crate) fn request_string(
    merchant_id: &str,
    order_number: &str,
    amount: Money,
    currency: Currency,
) -> String {
    format!("{merchant_id};{order_number};{amount};{currency}")
}
