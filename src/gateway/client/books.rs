//! The gateway's books: every order filed in a time window (`POST /resultbydate/resultbydate.cfm`,
//! assist-api.md §1, [L]), each record verified on its own, for the daily comparison with the
//! ledger (`crate::books`).
//!
//! What the reference does not settle, and what is assumed here ([U], conservative):
//! - the window is the orderstate fields `StartYear`..`StartMin` / `EndYear`..`EndMin` in GMT,
//!   at most one day ([`MAX_WINDOW`]), both ends inclusive to the minute; a longer window is
//!   asked for as several;
//! - the reply is orderstate's shape (`result/order*`, each with `orderamount`, `ordercurrency`,
//!   `orderstate` and a `checkvalue` by §5.2), in XML or JSON as `Format` says;
//! - the service may cap the rows of one reply without saying so: a reply with
//!   [`MAX_ROWS_PER_REPLY`] rows or more is taken as possibly cut, and its window is asked for
//!   again as two halves, down to one minute ([`MIN_WINDOW`]), where a full reply is an error;
//! - fault `10/107` or `10/201` ("missing object") is an empty window.
//!
//! A record whose check value does not verify with our salt and merchant id is returned as
//! such ([`BookRecord::verified`] false): the caller reports it and never takes it as paid.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, Timelike, Utc};
use secrecy::ExposeSecret;

use super::{Client, Received};
use crate::gateway::checkvalue::{self, ResultFields};
use crate::gateway::outcome::{self, Outcome, StateClass};
use crate::gateway::reply;
use crate::gateway::wire::{self, OrderRecord, Reply};
use crate::money::{Currency, Money};

/// The longest window one request may cover (the service's rule).
pub const MAX_WINDOW: ChronoDuration = ChronoDuration::days(1);
/// Rows per reply at which a reply is taken as possibly cut by the service ([U]: no public
/// number; chosen well below any reply near [`wire::MAX_REPLY_BYTES`]).
pub const MAX_ROWS_PER_REPLY: usize = 500;
/// The narrowest window asked for when splitting a full reply.
pub const MIN_WINDOW: ChronoDuration = ChronoDuration::minutes(1);
/// The most requests one call makes (a bound on a gateway that always answers full pages).
const MAX_REQUESTS: usize = 2000;

/// What the gateway's books say an order became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BookState {
    /// `Approved`: paid.
    Paid,
    /// Closed without payment (`Declined`, `Canceled`, `Timeout`...).
    NotPaid,
    /// `In Process` and the like.
    InProgress,
    /// `Canceled`: cancelled or refunded (in full) after approval.
    Reversed,
    /// `PartialCanceled`: approved, then part of it refunded.
    PartlyReversed,
    /// Anything else (other partial states, unknown words): never paid, always reported.
    Other,
}

/// One order of the gateway's books.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BookRecord {
    pub order_number: String,
    pub bill_number: String,
    /// `orderamount` as a [`Money`], if it reads as one.
    pub amount: Option<Money>,
    /// `orderamount` as sent.
    pub amount_text: String,
    pub currency: Option<Currency>,
    pub currency_text: String,
    /// `orderstate` as sent.
    pub state_text: String,
    pub state: BookState,
    /// `testmode`, when the record carries one.
    pub test_mode: Option<bool>,
    /// The check value verified with our salt and merchant id.
    pub verified: bool,
}

impl BookRecord {
    /// Paid, verified: the only record that proves money was taken.
    pub fn paid(&self) -> bool {
        self.verified && self.state == BookState::Paid
    }
}

impl Client {
    /// Every order the gateway filed between `start` and `end` (inclusive, to the minute), in
    /// windows of at most a day, each full reply asked for again in halves. Records come back
    /// deduplicated and sorted. Any failed request fails the whole call (the books of a day are
    /// compared whole or not at all): `Err` is an outcome that says why (unknown, rate limited,
    /// rejected).
    pub async fn results_by_date(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<BookRecord>, Outcome> {
        let mut windows: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        let mut from = start;
        while from <= end {
            let to = (from + MAX_WINDOW - MIN_WINDOW).min(end);
            windows.push((from, to));
            from = to + MIN_WINDOW;
        }
        let mut found = BTreeSet::new();
        let mut requests = 0;
        while let Some((from, to)) = windows.pop() {
            requests += 1;
            if requests > MAX_REQUESTS {
                return Err(Outcome::Unknown(format!(
                    "resultbydate: more than {MAX_REQUESTS} requests for one window"
                )));
            }
            let records = self.result_window(from, to).await?;
            if records.len() >= self.books_page_rows {
                if to - from < MIN_WINDOW {
                    return Err(Outcome::Unknown(format!(
                        "resultbydate: {} or more orders within one minute ({from}); the reply \
                         may be cut",
                        self.books_page_rows
                    )));
                }
                let minutes = (to - from).num_minutes();
                let middle = from + ChronoDuration::minutes(minutes / 2);
                windows.push((from, middle));
                windows.push((middle + MIN_WINDOW, to));
                continue;
            }
            found.extend(records);
        }
        Ok(found.into_iter().collect())
    }

    async fn result_window(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<BookRecord>, Outcome> {
        let mut fields: Vec<(&str, String)> = Vec::new();
        for (prefix, t) in [("Start", from), ("End", to)] {
            let names: [&str; 5] = if prefix == "Start" {
                [
                    "StartYear",
                    "StartMonth",
                    "StartDay",
                    "StartHour",
                    "StartMin",
                ]
            } else {
                ["EndYear", "EndMonth", "EndDay", "EndHour", "EndMin"]
            };
            let values = [t.year() as u32, t.month(), t.day(), t.hour(), t.minute()];
            for (name, value) in names.into_iter().zip(values) {
                fields.push((name, value.to_string()));
            }
        }
        let mut form: Vec<(&str, &str)> = vec![
            ("Merchant_ID", self.merchant_id.as_str()),
            ("Login", self.login.as_str()),
            ("Password", self.password.expose_secret()),
            ("Language", "EN"),
            ("Format", self.format_code()),
        ];
        form.extend(fields.iter().map(|(n, v)| (*n, v.as_str())));
        tracing::debug!(service = "resultbydate.cfm", %from, %to, "reading the gateway's books");
        let body = match self.post_form("resultbydate/resultbydate.cfm", &form).await {
            Received::Body(body) => body,
            Received::Failed { outcome, .. } => {
                return Err(match outcome {
                    Outcome::NotSent(why) => Outcome::Unknown(format!("not sent: {why}")),
                    other => other,
                });
            }
        };
        let reply = wire::parse_reply(&body)
            .map_err(|e| Outcome::Unknown(format!("unreadable resultbydate reply: {e}")))?;
        match reply {
            Reply::Fault {
                firstcode: 10,
                secondcode: 107 | 201,
                ..
            } => Ok(Vec::new()),
            Reply::Fault {
                firstcode,
                secondcode,
                ..
            } => Err(match outcome::request_error(firstcode, secondcode) {
                Some(o @ (Outcome::RateLimited | Outcome::Rejected(_))) => o,
                _ => Outcome::Unknown(format!(
                    "resultbydate failed: firstcode {firstcode}/secondcode {secondcode}"
                )),
            }),
            Reply::Orders(orders) => Ok(orders.iter().map(|o| self.book_record(o)).collect()),
        }
    }

    /// One record, its check value verified over the strings exactly as sent.
    fn book_record(&self, record: &OrderRecord) -> BookRecord {
        let fields = ResultFields {
            merchant_id: &self.merchant_id,
            order_number: record.text("ordernumber"),
            order_amount: record.text("orderamount"),
            order_currency: record.text("ordercurrency"),
            order_state: record.text("orderstate"),
        };
        let received = record.text("checkvalue");
        let verified =
            !received.is_empty() && checkvalue::verify_result(&self.salt, &fields, received);
        let state_text = record.text("orderstate").to_string();
        let state = match outcome::order_state(&state_text) {
            StateClass::Paid => BookState::Paid,
            StateClass::Failed => BookState::NotPaid,
            StateClass::InProgress => BookState::InProgress,
            StateClass::Reversed => BookState::Reversed,
            StateClass::Anomalous if state_text.trim().eq_ignore_ascii_case("PartialCanceled") => {
                BookState::PartlyReversed
            }
            _ => BookState::Other,
        };
        BookRecord {
            order_number: record.text("ordernumber").to_string(),
            bill_number: record.text("billnumber").to_string(),
            amount: Money::parse(record.text("orderamount")).ok(),
            amount_text: record.text("orderamount").to_string(),
            currency: Currency::parse(record.text("ordercurrency")).ok(),
            currency_text: record.text("ordercurrency").to_string(),
            state_text,
            state,
            test_mode: record.get("testmode").and_then(reply::parse_test_mode),
            verified,
        }
    }
}
