//! wscancel.cfm: a refund (cancel) of the whole or part of an approved order, in XML or JSON like
//! rp.cfm, against the book: the order becomes PartialCanceled, or Canceled once nothing remains,
//! and orderresult lists the refund as an operation of type 300.
//!
//! Checked in this order, each with its own fault: format, auth, `Billnumber` (3/143 missing),
//! `Amount` (4/108 badly formed; optional, the whole remainder without it), `Currency` (4/105),
//! then against the book: no such billnumber (10/143), another OrderNumber (10/201), an order
//! that is not Approved or PartialCanceled (15/216), another currency (5/105), more than remains
//! (5/108).
//!
//! Magic: when the first word of `CancelReason` is a magic number (`999…`, as bill numbers are),
//! its last three digits choose the behaviour: `408` applies the refund and answers after `hang`
//! (a timeout after the refund was applied), `409` applies it and drops the connection, `500`
//! applies it and answers HTTP 500, `666` applies it and answers garbage, `503` answers HTTP 503
//! and applies nothing, the decline codes (`102`, `105`, ...) refuse it (a Declined operation;
//! the order is unchanged). Anything else refunds normally.

use chrono::Utc;
use hyper::StatusCode;

use super::super::Shared;
use super::super::behaviour::{self, Behaviour};
use super::super::book::{Cancel, CancelRecord, OrderRecord, RefundOperation, Refusal, RpOutcome};
use super::super::wire::{self, Fields, Format};
use super::{
    DATE_TIME, DropConnection, Fault, MEAN_NUMBER, Params, Reply, check_form_auth, error_page,
    respond, test_mode, with_type,
};
use crate::money::{Currency, Money};

/// Handles one wscancel.cfm request (`admitted`: within the rate limit).
pub(super) async fn handle(
    shared: &Shared,
    params: &Params,
    admitted: bool,
) -> Result<Reply, DropConnection> {
    let config = &shared.config;
    let format = params.format();
    let reply_format = *format.as_ref().unwrap_or(&Format::Xml);
    let checked = if admitted {
        format
            .and_then(|_| check_form_auth(shared, params))
            .and_then(|()| cancel_params(params))
    } else {
        Err(Fault::new(1, 3, "request rate exceeded"))
    };
    let (bill_number, amount, currency) = match checked {
        Ok(checked) => checked,
        Err(fault) => {
            if admitted {
                shared.book().record_cancel(record(params, fault.refusal()));
            }
            return Ok(fault.reply(reply_format));
        }
    };
    let reason = params.get("CancelReason").unwrap_or("");
    let order_number = params.get("OrderNumber");
    let behaviour = magic(reason, order_number.unwrap_or(bill_number));
    let cancel = Cancel {
        bill_number,
        order_number,
        amount,
        currency,
        reason,
        behaviour,
    };
    let applied = shared.book().cancel(&cancel, Utc::now());
    let (order, op) = match applied {
        Ok(applied) => applied,
        Err(Refusal::Http(503)) => return Ok(error_page(StatusCode::SERVICE_UNAVAILABLE)),
        Err(Refusal::Http(_)) => return Ok(error_page(StatusCode::TOO_MANY_REQUESTS)),
        Err(Refusal::Fault {
            firstcode,
            secondcode,
            detail,
        }) => {
            let body = wire::fault(reply_format, firstcode, secondcode, &detail);
            return Ok(respond(StatusCode::OK, reply_format, body));
        }
        Err(Refusal::RateLimited) => {
            return Ok(Fault::new(1, 3, "request rate exceeded").reply(reply_format));
        }
    };
    tracing::debug!(
        order_number = %order.order_number,
        bill_number = %order.bill_number,
        amount = %op.amount,
        state = order.state.as_str(),
        ?behaviour,
        "assist sandbox refund"
    );
    match behaviour {
        Behaviour::DropConnection => return Err(DropConnection),
        Behaviour::ServerError => return Ok(error_page(StatusCode::INTERNAL_SERVER_ERROR)),
        Behaviour::Garbage => {
            return Ok(with_type(
                StatusCode::OK,
                "text/html; charset=UTF-8",
                wire::garbage(),
            ));
        }
        Behaviour::Hang => tokio::time::sleep(config.hang).await,
        _ => {}
    }
    Ok(respond(
        StatusCode::OK,
        reply_format,
        wire::cancel(reply_format, &fields(&order, &op)),
    ))
}

/// `Billnumber`, `Amount` (optional) and `Currency` (optional), checked.
fn cancel_params(params: &Params) -> Result<(&str, Option<Money>, Option<Currency>), Fault> {
    let bill = params
        .get("Billnumber")
        .ok_or(Fault::new(3, 143, "Billnumber is missing"))?;
    let amount = params
        .get("Amount")
        .map(|text| {
            let two_decimals = text
                .split_once('.')
                .is_some_and(|(_, decimals)| decimals.len() == 2);
            two_decimals
                .then(|| Money::parse(text).ok())
                .flatten()
                .ok_or(Fault::new(
                    4,
                    108,
                    "Amount must be digits with exactly two decimals",
                ))
        })
        .transpose()?;
    let currency = params
        .get("Currency")
        .map(|text| {
            Currency::parse(text)
                .map_err(|_| Fault::new(4, 105, "Currency must be three capital letters"))
        })
        .transpose()?;
    Ok((bill, amount, currency))
}

/// The behaviour a `CancelReason` asks for: its first word, when magic.
fn magic(reason: &str, key: &str) -> Behaviour {
    let word = reason.split_whitespace().next().unwrap_or("");
    if word.starts_with("999") && word.bytes().all(|b| b.is_ascii_digit()) {
        behaviour::of_bill(word).for_order(key)
    } else {
        Behaviour::Approve
    }
}

/// The book's record of a refused request.
fn record(params: &Params, refusal: Refusal) -> CancelRecord {
    let text = |name: &str| params.get(name).unwrap_or("").to_string();
    CancelRecord {
        time: Utc::now(),
        bill_number: text("Billnumber"),
        order_number: text("OrderNumber"),
        amount: text("Amount"),
        reason: text("CancelReason"),
        outcome: RpOutcome::Refused(refusal),
    }
}

/// The reply's fields: the order (its amount, its new state) and the refund operation.
fn fields(order: &OrderRecord, op: &RefundOperation) -> Fields {
    let now = Utc::now();
    vec![
        ("ordernumber", order.order_number.clone()),
        ("billnumber", order.bill_number.clone()),
        ("responsecode", op.response_code.clone()),
        ("message", op.message.clone()),
        ("recommendation", String::new()),
        ("orderdate", order.created_at.format(DATE_TIME).to_string()),
        ("amount", op.amount.to_string()),
        ("currency", order.currency.to_string()),
        ("orderamount", order.amount.to_string()),
        ("ordercurrency", order.currency.to_string()),
        ("orderstate", order.state.as_str().to_string()),
        ("testmode", test_mode(order.test_mode)),
        ("meannumber", MEAN_NUMBER.to_string()),
        ("operationtype", "300".to_string()),
        ("packetdate", now.format(DATE_TIME).to_string()),
    ]
}
