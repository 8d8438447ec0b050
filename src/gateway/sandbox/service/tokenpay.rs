//! tokenpay.cfm (seeds 001 and 004): a payment with a customer's saved card (TokenType 5), here
//! the initial payment of a recurring agreement.
//!
//! Checked in this order, each with its own fault: format (JSON only), auth, OrderNumber,
//! OrderAmount, OrderCurrency (default RUB), TokenType (must be 5), RecurringIndicator, a top-level
//! CustomerNumber together with RecurringIndicator=1 (15/320: Assist forbids it), the recurring
//! parameters, PaymentToken, the Signature (when the sandbox has the merchant's public key), and
//! the token's owner. A token starting with `999` is magic for any customer: its last three
//! digits choose a [`Behaviour`] like a magic bill number's, plus `115` (CVC required) and the
//! decline-type faults (firstcode 17, "limits exceeded", which carry no check value): `117`
//! applies nothing, `217` applies the payment (Approved) and `317` applies it In Process
//! (settled Approved after `settle_after` status queries), each answering the fault.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use hyper::StatusCode;
use md5::{Digest, Md5};
use rsa::Pkcs1v15Sign;
use serde_json::Value;

use super::super::Shared;
use super::super::behaviour::{self, Behaviour, DeclineCode};
use super::super::book::{
    OrderRecord, OrderState, Recurring, Refusal, RpOutcome, TokenPay, TokenPayment,
};
use super::super::wire::{self, Fields, Format};
use super::{
    DATE_TIME, DropConnection, Fault, MEAN_NUMBER, Params, Reply, approval_code, check_form_auth,
    error_page, json_get, json_text, order_number, respond, test_mode, told_order_number,
    with_type,
};
use crate::gateway::checkvalue::{ResultFields, result_checkvalue};
use crate::money::{Currency, Money, parse_assist_date};

/// The currency of an order that names none (the sandbox merchant's own).
const DEFAULT_CURRENCY: &str = "RUB";
/// The last three digits of a magic token that asks for the CVC (firstcode 3 / secondcode 115).
const CVC_REQUIRED: &str = "115";

/// A magic token that answers a decline-type fault (firstcode 17 / secondcode 0): `Some(None)`
/// applies nothing (`117`), `Some(Some(b))` applies the payment as `b` first (`217`: Approved,
/// `317`: In Process, then Approved), `None` for any other token.
fn fault_after(token: &str) -> Option<Option<Behaviour>> {
    if !is_magic(token) {
        return None;
    }
    match token.get(token.len().saturating_sub(3)..)? {
        "117" => Some(None),
        "217" => Some(Some(Behaviour::Approve)),
        "317" => Some(Some(Behaviour::InProcess {
            then_approved: true,
        })),
        _ => None,
    }
}

/// A checked tokenpay request.
struct Checked {
    order_number: String,
    amount: Money,
    currency: Currency,
    customer: String,
    token: String,
    recurring: Option<Recurring>,
    signed: bool,
}

/// Handles one tokenpay.cfm request (the body already read and form-decoded).
pub(super) async fn handle(
    shared: &Shared,
    params: &Params,
    admitted: bool,
    host: &str,
) -> Result<Reply, DropConnection> {
    let config = &shared.config;
    tracing::debug!(
        service = "tokenpay",
        order_number = params.get("OrderNumber").unwrap_or(""),
        merchant_id = params.get("Merchant_ID").unwrap_or(""),
        "assist sandbox request"
    );
    let checked = if admitted {
        check(shared, params)
    } else {
        Err(Fault::new(1, 3, "request rate exceeded"))
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(fault) => {
            let refusal = if admitted {
                fault.refusal()
            } else {
                Refusal::RateLimited
            };
            shared.book().record_token_payment(refused(params, refusal));
            return Ok(fault.reply(Format::Json));
        }
    };
    if let Some(applied) = fault_after(&checked.token) {
        let fault = Fault::new(17, 0, "limits exceeded");
        match applied {
            None => shared
                .book()
                .record_token_payment(refused(params, fault.refusal())),
            Some(behaviour) => {
                let payment = TokenPay {
                    order_number: &checked.order_number,
                    customer: &checked.customer,
                    token: &checked.token,
                    amount: checked.amount,
                    currency: checked.currency,
                    recurring: checked.recurring,
                    signed: checked.signed,
                    behaviour,
                };
                // Applied (or refused as a duplicate: the fault is the answer either way).
                let _ = shared.book().token_pay(
                    &payment,
                    config.duplicates,
                    config.test_mode,
                    Utc::now(),
                );
            }
        }
        return Ok(fault.reply(Format::Json));
    }
    let cvc_required = is_magic(&checked.token) && checked.token.ends_with(CVC_REQUIRED);
    let behaviour = if cvc_required {
        Behaviour::Decline(DeclineCode::ThreeDsRequired)
    } else if is_magic(&checked.token) {
        behaviour::of_bill(&checked.token).for_order(&checked.order_number)
    } else {
        Behaviour::Approve
    };
    let payment = TokenPay {
        order_number: &checked.order_number,
        customer: &checked.customer,
        token: &checked.token,
        amount: checked.amount,
        currency: checked.currency,
        recurring: checked.recurring,
        signed: checked.signed,
        behaviour,
    };
    let paid = shared
        .book()
        .token_pay(&payment, config.duplicates, config.test_mode, Utc::now());
    let order = match paid {
        Ok(order) => order,
        Err(Refusal::Http(503)) => return Ok(error_page(StatusCode::SERVICE_UNAVAILABLE)),
        Err(Refusal::Http(_)) => return Ok(error_page(StatusCode::TOO_MANY_REQUESTS)),
        Err(Refusal::Fault {
            firstcode,
            secondcode,
            detail,
        }) => {
            let body = wire::fault(Format::Json, firstcode, secondcode, &detail);
            return Ok(respond(StatusCode::OK, Format::Json, body));
        }
        Err(Refusal::RateLimited) => {
            return Ok(Fault::new(1, 3, "request rate exceeded").reply(Format::Json));
        }
    };
    tracing::debug!(
        order_number = %order.order_number,
        bill_number = %order.bill_base,
        state = order.state.as_str(),
        ?behaviour,
        "assist sandbox token payment applied"
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
    let continuation = if order.response_code == "AS110" {
        let url = format!(
            "http://{host}/pay/pay.cfm?CFSID={}",
            STANDARD.encode(format!(
                "{:016x}",
                behaviour::fnv1a64(order.order_number.as_bytes())
            ))
        );
        Some((if cvc_required { (3, 115) } else { (0, 0) }, url))
    } else {
        None
    };
    let (order_fields, operation) = reply_fields(shared, &order);
    let packet_date = Utc::now().format(DATE_TIME).to_string();
    let body = wire::token_pay(
        &order_fields,
        &operation,
        &packet_date,
        continuation
            .as_ref()
            .map(|((first, second), url)| (*first, *second, url.as_str())),
    );
    Ok(respond(StatusCode::OK, Format::Json, body))
}

/// Whether a token is one of the magic test tokens (any customer may use them).
fn is_magic(token: &str) -> bool {
    token.starts_with("999")
}

/// The book's record of a request refused before it was applied.
fn refused(params: &Params, refusal: Refusal) -> TokenPayment {
    let text = |name: &str| params.get(name).unwrap_or("").to_string();
    let token = params
        .get("PaymentToken")
        .and_then(|t| serde_json::from_str::<Value>(t).ok());
    let token_field = |name: &str| {
        token
            .as_ref()
            .and_then(Value::as_object)
            .and_then(|object| json_get(object, name))
            .and_then(json_text)
            .unwrap_or_default()
    };
    TokenPayment {
        time: Utc::now(),
        order_number: text("OrderNumber"),
        customer: token_field("CustomerNumber"),
        token: token_field("Token"),
        amount: text("OrderAmount"),
        currency: text("OrderCurrency"),
        signed: params.get("Signature").is_some(),
        bill_number: None,
        outcome: RpOutcome::Refused(refusal),
    }
}

/// An amount with exactly two decimals (3/`secondcode` missing, 4/`secondcode` malformed).
fn amount(params: &Params, name: &str, secondcode: u32) -> Result<Money, Fault> {
    let text = params
        .get(name)
        .ok_or(Fault::new(3, secondcode, "an amount is missing"))?;
    let bad = Fault::new(
        4,
        secondcode,
        "amounts must be digits with exactly two decimals",
    );
    let two_decimals = text
        .split_once('.')
        .is_some_and(|(_, decimals)| decimals.len() == 2);
    if !two_decimals {
        return Err(bad);
    }
    Money::parse(text).map_err(|_| bad)
}

fn check(shared: &Shared, params: &Params) -> Result<Checked, Fault> {
    let config = &shared.config;
    match params.get("Format") {
        None | Some("5") => {}
        Some(_) => {
            return Err(Fault::new(
                4,
                103,
                "Format must be 5 (JSON); the sandbox does not speak SOAP",
            ));
        }
    }
    check_form_auth(shared, params)?;
    let order = order_number(params)?.to_string();
    let amount = amount(params, "OrderAmount", 108)?;
    let currency = Currency::parse(params.get("OrderCurrency").unwrap_or(DEFAULT_CURRENCY))
        .map_err(|_| Fault::new(4, 105, "OrderCurrency must be three capital letters"))?;
    if params.get("TokenType") != Some("5") {
        return Err(Fault::new(
            5,
            0,
            "TokenType must be 5 (Assist token); the sandbox has no Apple, Google or Samsung Pay",
        ));
    }
    let recurring = match params.get("RecurringIndicator") {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Err(Fault::new(4, 320, "RecurringIndicator must be 0 or 1")),
    };
    if recurring && params.get("CustomerNumber").is_some() {
        return Err(Fault::new(
            15,
            320,
            "CustomerNumber must not be sent together with RecurringIndicator=1; put it in PaymentToken",
        ));
    }
    let recurring = if recurring {
        Some(recurring_params(params)?)
    } else {
        None
    };
    let (token, customer) = payment_token(params)?;
    let signed = match &config.verify_key {
        Some(key) => {
            verify_signature(key, params, &config.merchant_id, &order)?;
            true
        }
        None => params.get("Signature").is_some(),
    };
    if !is_magic(&token) {
        let cards = shared.book().tokens_of(&customer);
        match cards.iter().find(|card| card.token == token) {
            None => return Err(Fault::new(10, 203, "no such token for this customer")),
            Some(card) if !card.active => {
                return Err(Fault::new(15, 203, "the card token is not active"));
            }
            Some(_) => {}
        }
    }
    Ok(Checked {
        order_number: order,
        amount,
        currency,
        customer,
        token,
        recurring,
        signed,
    })
}

/// RecurringMinAmount ≤ RecurringMaxAmount, RecurringPeriod of 1 to 3 digits (1..=999),
/// RecurringMaxDate `DD.MM.YYYY` after today (UTC). Faults 3/320 (missing), 4/320 (malformed),
/// 5/320 (inconsistent). The initial amount itself is not held to the limits: they bind the
/// recurring charges that follow, and Assist's pages say nothing about the first.
fn recurring_params(params: &Params) -> Result<Recurring, Fault> {
    let min = amount(params, "RecurringMinAmount", 320)?;
    let max = amount(params, "RecurringMaxAmount", 320)?;
    if min > max {
        return Err(Fault::new(
            5,
            320,
            "RecurringMinAmount is above RecurringMaxAmount",
        ));
    }
    let period =
        params
            .get("RecurringPeriod")
            .ok_or(Fault::new(3, 320, "RecurringPeriod is missing"))?;
    let period_days = Some(period)
        .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|days| *days >= 1)
        .ok_or(Fault::new(
            4,
            320,
            "RecurringPeriod must be a number of days, 1 to 999",
        ))?;
    let max_date =
        params
            .get("RecurringMaxDate")
            .ok_or(Fault::new(3, 320, "RecurringMaxDate is missing"))?;
    let max_date = parse_assist_date(max_date).ok_or(Fault::new(
        4,
        320,
        "RecurringMaxDate must be DD.MM.YYYY",
    ))?;
    if max_date <= Utc::now().date_naive() {
        return Err(Fault::new(5, 320, "RecurringMaxDate must be in the future"));
    }
    Ok(Recurring {
        min,
        max,
        period_days,
        max_date,
    })
}

/// PaymentToken `{"Token": ..., "CustomerNumber": ...}`: (token, customer).
fn payment_token(params: &Params) -> Result<(String, String), Fault> {
    let text = params
        .get("PaymentToken")
        .ok_or(Fault::new(3, 203, "PaymentToken is missing"))?;
    let bad = Fault::new(
        4,
        203,
        "PaymentToken must be {\"Token\": ..., \"CustomerNumber\": ...}",
    );
    let value: Value = serde_json::from_str(text).map_err(|_| bad.clone())?;
    let object = value.as_object().ok_or(bad.clone())?;
    let token = json_get(object, "Token").and_then(json_text);
    let customer = json_get(object, "CustomerNumber").and_then(json_text);
    match (token, customer) {
        (Some(token), Some(customer)) => Ok((token, customer)),
        _ => Err(bad),
    }
}

/// The Signature over `Merchant_ID;OrderNumber;OrderAmount;OrderCurrency` as received (the
/// currency as sent, or empty when none was). Missing: 3/0; not verifying: 9/6.
fn verify_signature(
    key: &rsa::RsaPublicKey,
    params: &Params,
    merchant_id: &str,
    order: &str,
) -> Result<(), Fault> {
    let signature = params.get("Signature").ok_or(Fault::new(
        3,
        0,
        "Signature is missing (the merchant's signature check is on)",
    ))?;
    let refused = Fault::new(9, 6, "Signature does not verify");
    let bytes = STANDARD.decode(signature).map_err(|_| refused.clone())?;
    let signed = format!(
        "{merchant_id};{order};{};{}",
        params.get("OrderAmount").unwrap_or(""),
        params.get("OrderCurrency").unwrap_or("")
    );
    let digest = Md5::digest(signed.as_bytes());
    key.verify(Pkcs1v15Sign::new::<Md5>(), &digest, &bytes)
        .map_err(|_| refused)
}

/// The order and operation fields of the reply, in seed 004's order, with the check value over
/// the exact strings sent (777: under a wrong salt; 998: the reply says AS998, In Process).
fn reply_fields(shared: &Shared, order: &OrderRecord) -> (Fields, Fields) {
    let config = &shared.config;
    let (state, code, message) = match order.behaviour {
        Behaviour::SystemError if order.state == OrderState::Approved => (
            OrderState::InProcess.as_str(),
            "AS998".to_string(),
            "System error".to_string(),
        ),
        _ => (
            order.state.as_str(),
            order.response_code.clone(),
            order.message.clone(),
        ),
    };
    let number = told_order_number(order);
    let amount = order.amount.to_string();
    let currency = order.currency.to_string();
    let fields = ResultFields {
        merchant_id: &config.merchant_id,
        order_number: &number,
        order_amount: &amount,
        order_currency: &currency,
        order_state: state,
    };
    let checkvalue = if order.behaviour == Behaviour::WrongCheckvalue {
        let wrong = secrecy::SecretString::from(format!(
            "{}-777",
            secrecy::ExposeSecret::expose_secret(&config.salt)
        ));
        result_checkvalue(&wrong, &fields)
    } else {
        result_checkvalue(&config.salt, &fields)
    };
    let approval = if order.state == OrderState::Approved && code == "AS000" {
        approval_code(&order.order_number)
    } else {
        String::new()
    };
    let date = order.created_at.format(DATE_TIME).to_string();
    let order_fields: Fields = vec![
        ("ordernumber", number),
        ("billnumber", order.bill_base.clone()),
        ("testmode", test_mode(order.test_mode)),
        ("ordercomment", String::new()),
        ("orderamount", amount.clone()),
        ("ordercurrency", currency.clone()),
        ("firstname", String::new()),
        ("lastname", String::new()),
        ("middlename", String::new()),
        ("email", String::new()),
        ("orderdate", date.clone()),
        ("orderstate", state.to_string()),
        ("fraud_state", String::new()),
        ("fraud_reason", String::new()),
        ("checkvalue", checkvalue),
    ];
    let operation: Fields = vec![
        ("billnumber", order.bill_number.clone()),
        ("operationtype", "100".to_string()),
        ("operationstate", state.to_string()),
        ("amount", amount),
        ("currency", currency),
        ("clientip", String::new()),
        ("ipaddress", "127.0.0.1".to_string()),
        ("meantype_id", "1".to_string()),
        ("meantypename", "VISA".to_string()),
        ("meansubtype", String::new()),
        ("meannumber", MEAN_NUMBER.to_string()),
        ("cardholder", String::new()),
        ("issuebank", "SANDBOX BANK".to_string()),
        ("bankcountry", "Russia".to_string()),
        ("responsecode", code),
        ("message", message.clone()),
        ("customermessage", message),
        ("recommendation", String::new()),
        ("approvalcode", approval),
        ("protocoltypename", "NET".to_string()),
        ("processingname", "Sandbox".to_string()),
        ("operationdate", date),
        ("authresult", String::new()),
        ("authrequired", String::new()),
        ("slipno", String::new()),
    ];
    (order_fields, operation)
}
