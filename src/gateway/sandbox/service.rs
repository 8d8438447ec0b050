//! One request: routing, body, rate limit, format, auth and the six services.

use std::fmt;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::Shared;
use super::behaviour::{self, Behaviour};
use super::book::{
    Charge, OrderRecord, OrderState, Refusal, RpOutcome, RpRequest, Window, truncate_to_minute,
};
use super::wire::{self, Fields, Format, StatusOrder};
use crate::gateway::checkvalue::{ResultFields, result_checkvalue};
use crate::money::{Currency, Money};

mod cancel;
mod tokenpay;

/// Longest OrderNumber accepted.
const MAX_ORDER_NUMBER: usize = 128;
/// The masked card number every order shows.
const MEAN_NUMBER: &str = "411111****1111";
/// Assist's date-time form in replies (UTC here).
const DATE_TIME: &str = "%d.%m.%Y %H:%M:%S";
/// The default books (resultbydate) window reaches back this far.
const RESULTS_DEFAULT_HOURS: i64 = 3;
/// The default status window reaches back this far.
const DEFAULT_WINDOW_DAYS: i64 = 3;

/// The reply type of the service.
pub type Reply = Response<Full<Bytes>>;

/// The error a request ends with when the connection must be closed without a response
/// (behaviour 409). hyper closes the connection when the service fails.
#[derive(Debug)]
pub struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sandbox behaviour 409: connection dropped after the charge was applied")
    }
}

impl std::error::Error for DropConnection {}

/// The services, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Rp,
    OrderState,
    OrderResult,
    Token,
    RemToken,
    TokenPay,
    ResultByDate,
    Cancel,
}

impl Service {
    fn of_path(path: &str) -> Option<Service> {
        match path {
            "/recurrent/rp.cfm" => Some(Service::Rp),
            "/orderstate/orderstate.cfm" => Some(Service::OrderState),
            "/orderresult/orderresult.cfm" => Some(Service::OrderResult),
            "/pay/oneclick/v1/token.cfm" => Some(Service::Token),
            "/pay/oneclick/v1/rem_token.cfm" => Some(Service::RemToken),
            "/pay/tokenpay.cfm" => Some(Service::TokenPay),
            "/resultbydate/resultbydate.cfm" => Some(Service::ResultByDate),
            "/cancel/wscancel.cfm" => Some(Service::Cancel),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Rp => "rp",
            Service::OrderState => "orderstate",
            Service::OrderResult => "orderresult",
            Service::Token => "token",
            Service::RemToken => "rem_token",
            Service::TokenPay => "tokenpay",
            Service::ResultByDate => "resultbydate",
            Service::Cancel => "wscancel",
        }
    }
}

/// Handles one request. Only behaviour 409 fails (to drop the connection).
pub(super) async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Reply, DropConnection> {
    let config = &shared.config;
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let Some(service) = Service::of_path(request.uri().path()) else {
        tracing::debug!(method = %request.method(), path = request.uri().path(), "assist sandbox: no such service");
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    };
    if request.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "POST only"));
    }
    // For the continueurl of tokenpay answers that need the customer.
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(status) => return Ok(plain(status, "request body refused")),
    };
    let arrived = Instant::now();
    match service {
        Service::Rp | Service::OrderState | Service::OrderResult | Service::ResultByDate => {
            let params = Params::from_form(&body);
            let format = params.format();
            tracing::debug!(
                service = service.name(),
                format = ?format,
                order_number = params.get("OrderNumber").unwrap_or(""),
                bill_number = params.get("BillNumber").unwrap_or(""),
                merchant_id = params.get("Merchant_ID").unwrap_or(""),
                "assist sandbox request"
            );
            let admitted = shared.book().admit(arrived, config.requests_per_second);
            let reply_format = *format.as_ref().unwrap_or(&Format::Xml);
            let result = if admitted {
                format.and_then(|_| check_form_auth(shared, &params))
            } else {
                Err(Fault::new(1, 3, "request rate exceeded"))
            };
            if let Err(fault) = result {
                if service == Service::Rp {
                    let refusal = if admitted {
                        fault.refusal()
                    } else {
                        Refusal::RateLimited
                    };
                    shared.book().record_rp(rp_request(&params, refusal));
                }
                return Ok(fault.reply(reply_format));
            }
            match service {
                Service::Rp => rp(shared, &params, reply_format).await,
                Service::ResultByDate => Ok(results(shared, &params, reply_format)),
                _ => Ok(status(shared, &params, reply_format, service)),
            }
        }
        Service::Token | Service::RemToken => {
            let admitted = shared.book().admit(arrived, config.requests_per_second);
            Ok(token(shared, &body, service, admitted))
        }
        Service::TokenPay => {
            let params = Params::from_form(&body);
            let admitted = shared.book().admit(arrived, config.requests_per_second);
            tokenpay::handle(shared, &params, admitted, &host).await
        }
        Service::Cancel => {
            let params = Params::from_form(&body);
            let admitted = shared.book().admit(arrived, config.requests_per_second);
            cancel::handle(shared, &params, admitted).await
        }
    }
}

/// The body, at most [`MAX_BODY`](super::MAX_BODY) bytes.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, StatusCode> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > super::MAX_BODY as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match Limited::new(request.into_body(), super::MAX_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// A request-level fault: firstcode, secondcode and a human text (JSON only).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fault {
    first: u32,
    second: u32,
    detail: &'static str,
}

impl Fault {
    fn new(first: u32, second: u32, detail: &'static str) -> Fault {
        Fault {
            first,
            second,
            detail,
        }
    }

    fn reply(&self, format: Format) -> Reply {
        let body = wire::fault(format, self.first, self.second, self.detail);
        respond(StatusCode::OK, format, body)
    }

    fn refusal(&self) -> Refusal {
        Refusal::Fault {
            firstcode: self.first,
            secondcode: self.second,
            detail: self.detail.to_string(),
        }
    }
}

/// Form parameters, looked up case-insensitively; an empty value counts as missing.
struct Params(Vec<(String, String)>);

impl Params {
    fn from_form(body: &[u8]) -> Params {
        let pairs = body
            .split(|b| *b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = match pair.iter().position(|b| *b == b'=') {
                    Some(at) => (&pair[..at], &pair[at + 1..]),
                    None => (pair, &pair[pair.len()..]),
                };
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Params(pairs)
    }

    /// The first non-empty value of the parameter `name` (any case).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, value)| key.eq_ignore_ascii_case(name) && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    /// `Format`: 3 (or missing) is XML, 5 is JSON, anything else fault 4/103 (said in XML).
    fn format(&self) -> Result<Format, Fault> {
        match self.get("Format") {
            None | Some("3") => Ok(Format::Xml),
            Some("5") => Ok(Format::Json),
            Some(_) => Err(Fault::new(4, 103, "Format must be 3 (XML) or 5 (JSON)")),
        }
    }
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte; a broken
/// escape is kept as it is, and bytes that are not UTF-8 become U+FFFD.
fn percent_decode(text: &[u8]) -> String {
    fn hex(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = text
                    .get(i + 1)
                    .and_then(|h| hex(*h))
                    .zip(text.get(i + 2).and_then(|l| hex(*l)));
                match pair {
                    Some((high, low)) => {
                        out.push(high << 4 | low);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Merchant_ID, Login and Password: missing 3/100, 3/101, 3/102; wrong merchant 5/100; wrong
/// login or password 7/141.
fn check_auth(
    shared: &Shared,
    merchant_id: Option<&str>,
    login: Option<&str>,
    password: Option<&str>,
) -> Result<(), Fault> {
    let config = &shared.config;
    let merchant_id = merchant_id.ok_or(Fault::new(3, 100, "Merchant_ID is missing"))?;
    let login = login.ok_or(Fault::new(3, 101, "Login is missing"))?;
    let password = password.ok_or(Fault::new(3, 102, "Password is missing"))?;
    if merchant_id != config.merchant_id {
        return Err(Fault::new(5, 100, "unknown Merchant_ID"));
    }
    let password_ok = password == config.password.expose_secret();
    if login != config.login || !password_ok {
        return Err(Fault::new(7, 141, "wrong Login and/or Password"));
    }
    Ok(())
}

fn check_form_auth(shared: &Shared, params: &Params) -> Result<(), Fault> {
    check_auth(
        shared,
        params.get("Merchant_ID"),
        params.get("Login"),
        params.get("Password"),
    )
}

/// The book's record of an rp.cfm request that was refused before it was charged.
fn rp_request(params: &Params, refusal: Refusal) -> RpRequest {
    let text = |name: &str| params.get(name).unwrap_or("").to_string();
    RpRequest {
        time: Utc::now(),
        order_number: text("OrderNumber"),
        bill_number: text("BillNumber"),
        amount: text("Amount"),
        currency: text("Currency"),
        outcome: RpOutcome::Refused(refusal),
    }
}

/// The rp.cfm parameters, checked: (BillNumber, OrderNumber, Amount, Currency).
fn rp_params(params: &Params) -> Result<(&str, &str, Money, Currency), Fault> {
    let bill = params
        .get("BillNumber")
        .ok_or(Fault::new(3, 143, "BillNumber is missing"))?;
    let order = order_number(params)?;
    let amount_text = params
        .get("Amount")
        .ok_or(Fault::new(3, 108, "Amount is missing"))?;
    let bad_amount = Fault::new(4, 108, "Amount must be digits with exactly two decimals");
    let two_decimals = amount_text
        .split_once('.')
        .is_some_and(|(_, decimals)| decimals.len() == 2);
    if !two_decimals {
        return Err(bad_amount);
    }
    let amount = Money::parse(amount_text).map_err(|_| bad_amount)?;
    let currency = params
        .get("Currency")
        .ok_or(Fault::new(3, 105, "Currency is missing"))?;
    let currency = Currency::parse(currency)
        .map_err(|_| Fault::new(4, 105, "Currency must be three capital letters"))?;
    Ok((bill, order, amount, currency))
}

/// `OrderNumber` (any case, so also orderstate's `Ordernumber`): 1 to 128 characters.
fn order_number(params: &Params) -> Result<&str, Fault> {
    let order = params
        .get("OrderNumber")
        .ok_or(Fault::new(3, 107, "OrderNumber is missing"))?;
    if order.chars().count() > MAX_ORDER_NUMBER {
        return Err(Fault::new(
            4,
            107,
            "OrderNumber is longer than 128 characters",
        ));
    }
    Ok(order)
}

/// rp.cfm: one recurring charge.
async fn rp(shared: &Shared, params: &Params, format: Format) -> Result<Reply, DropConnection> {
    let config = &shared.config;
    let (bill, order_number, amount, currency) = match rp_params(params) {
        Ok(checked) => checked,
        Err(fault) => {
            shared.book().record_rp(rp_request(params, fault.refusal()));
            return Ok(fault.reply(format));
        }
    };
    let behaviour = behaviour::of_bill(bill).for_order(order_number);
    let charge = Charge {
        order_number,
        bill_number: bill,
        amount,
        currency,
        behaviour,
    };
    let charged = shared
        .book()
        .charge(&charge, config.duplicates, config.test_mode, Utc::now());
    let order = match charged {
        Ok(order) => order,
        Err(Refusal::Http(503)) => return Ok(error_page(StatusCode::SERVICE_UNAVAILABLE)),
        Err(Refusal::Http(_)) => return Ok(error_page(StatusCode::TOO_MANY_REQUESTS)),
        Err(Refusal::Fault {
            firstcode,
            secondcode,
            detail,
        }) => {
            let body = wire::fault(format, firstcode, secondcode, &detail);
            return Ok(respond(StatusCode::OK, format, body));
        }
        Err(Refusal::RateLimited) => {
            return Ok(Fault::new(1, 3, "request rate exceeded").reply(format));
        }
    };
    tracing::debug!(
        order_number = %order.order_number,
        bill_number = %order.bill_number,
        state = order.state.as_str(),
        ?behaviour,
        "assist sandbox charge applied"
    );
    match order.behaviour {
        Behaviour::DropConnection | Behaviour::FirstHidden => return Err(DropConnection),
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
        format,
        wire::rp(format, &rp_fields(&order)),
    ))
}

/// The order fields of the rp.cfm reply (as the magic behaviour wants them told).
fn rp_fields(order: &OrderRecord) -> Fields {
    let now = Utc::now();
    let (state, code, message) = match order.behaviour {
        // 998: Approved in the book, but the reply says system error, In Process.
        Behaviour::SystemError if order.state == OrderState::Approved => (
            OrderState::InProcess.as_str(),
            "AS998".to_string(),
            "System error".to_string(),
        ),
        // 552: Approved in the book, In Process to rp.cfm and the status services.
        Behaviour::StuckInProcess => (
            OrderState::InProcess.as_str(),
            "AS300".to_string(),
            "Operation in progress".to_string(),
        ),
        _ => (
            order.state.as_str(),
            order.response_code.clone(),
            order.message.clone(),
        ),
    };
    let approval_code = if order.state == OrderState::Approved && code == "AS000" {
        approval_code(&order.order_number)
    } else {
        String::new()
    };
    vec![
        ("ordernumber", {
            // 887: only this reply (rp.cfm's) names another order.
            if order.behaviour == Behaviour::ChargeReplyMismatch {
                format!("{}-X", order.order_number)
            } else {
                told_order_number(order)
            }
        }),
        ("billnumber", order.bill_number.clone()),
        ("responsecode", code),
        ("message", message),
        ("recommendation", String::new()),
        ("orderdate", order.created_at.format(DATE_TIME).to_string()),
        ("amount", order.amount.to_string()),
        ("currency", order.currency.to_string()),
        ("orderamount", order.amount.to_string()),
        ("ordercurrency", order.currency.to_string()),
        ("orderstate", state.to_string()),
        ("testmode", test_mode(order.test_mode)),
        ("meannumber", MEAN_NUMBER.to_string()),
        ("approvalcode", approval_code),
        ("operationtype", "100".to_string()),
        ("packetdate", now.format(DATE_TIME).to_string()),
    ]
}

/// The order number a reply names: behaviour 888 names another one.
fn told_order_number(order: &OrderRecord) -> String {
    if order.behaviour == Behaviour::OtherOrderNumber {
        format!("{}-X", order.order_number)
    } else {
        order.order_number.clone()
    }
}

fn test_mode(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// A stable six-digit approval code for an order number.
fn approval_code(order_number: &str) -> String {
    format!(
        "{:06}",
        behaviour::fnv1a64(order_number.as_bytes()) % 1_000_000
    )
}

/// orderstate.cfm / orderresult.cfm.
fn status(shared: &Shared, params: &Params, format: Format, service: Service) -> Reply {
    let config = &shared.config;
    let found = order_number(params).and_then(|order| Ok((order, window(params, Utc::now())?)));
    let (order_number, window) = match found {
        Ok(found) => found,
        Err(fault) => return fault.reply(format),
    };
    let orders = shared
        .book()
        .status(order_number, window, config.settle_after);
    if orders.is_empty() {
        return respond(StatusCode::OK, format, wire::not_found(format));
    }
    let now = Utc::now();
    let listed: Vec<StatusOrder> = orders
        .iter()
        .map(|order| status_order(&config.merchant_id, &config.salt, order, now, service))
        .collect();
    let root = match service {
        Service::OrderResult => "orderresult",
        _ => "orderstate",
    };
    respond(StatusCode::OK, format, wire::status(format, root, &listed))
}

/// One order of a status reply, with its check value over the exact strings sent.
fn status_order(
    merchant_id: &str,
    salt: &SecretString,
    order: &OrderRecord,
    now: DateTime<Utc>,
    service: Service,
) -> StatusOrder {
    let order_number = told_order_number(order);
    let amount = order.amount.to_string();
    let currency = order.currency.to_string();
    let (state, response_code, message) = if order.behaviour == Behaviour::StuckInProcess {
        (
            "In Process",
            "AS300".to_string(),
            "Operation in progress".to_string(),
        )
    } else {
        (
            order.state.as_str(),
            order.response_code.clone(),
            order.message.clone(),
        )
    };
    let fields = ResultFields {
        merchant_id,
        order_number: &order_number,
        order_amount: &amount,
        order_currency: &currency,
        order_state: state,
    };
    let checkvalue = if order.behaviour == Behaviour::WrongCheckvalue {
        // 777: a well-formed check value under the wrong salt.
        let wrong = SecretString::from(format!("{}-777", salt.expose_secret()));
        result_checkvalue(&wrong, &fields)
    } else {
        result_checkvalue(salt, &fields)
    };
    let packet_date = now.format(DATE_TIME).to_string();
    let order_date = order.created_at.format(DATE_TIME).to_string();
    let mut out: Fields = vec![
        ("ordernumber", order_number.clone()),
        ("billnumber", order.bill_base.clone()),
    ];
    let operations = if service == Service::OrderResult {
        out.push(("testmode", test_mode(order.test_mode)));
        out.push(("orderdate", order_date.clone()));
        out.push(("responsecode", response_code.clone()));
        out.push(("message", message.clone()));
        let payment_state = match order.state {
            // The payment operation itself stays approved when the order is refunded.
            OrderState::Canceled | OrderState::PartialCanceled => OrderState::Approved.as_str(),
            _ => state,
        };
        let mut operations = vec![vec![
            ("billnumber", order.bill_number.clone()),
            ("operationtype", "100".to_string()),
            ("operationstate", payment_state.to_string()),
            ("amount", amount.clone()),
            ("currency", currency.clone()),
            ("responsecode", response_code.clone()),
            ("message", message.clone()),
            ("operationdate", order_date),
        ]];
        operations.extend(order.refunds.iter().map(|refund| {
            vec![
                ("billnumber", order.bill_number.clone()),
                ("operationtype", "300".to_string()),
                ("operationstate", refund.state.as_str().to_string()),
                ("amount", refund.amount.to_string()),
                ("currency", currency.clone()),
                ("responsecode", refund.response_code.clone()),
                ("message", refund.message.clone()),
                (
                    "operationdate",
                    refund.created_at.format(DATE_TIME).to_string(),
                ),
            ]
        }));
        Some(operations)
    } else {
        None
    };
    out.extend([
        ("orderamount", amount),
        ("ordercurrency", currency),
        ("orderstate", state.to_string()),
        ("packetdate", packet_date),
        ("signature", String::new()),
        ("checkvalue", checkvalue),
    ]);
    StatusOrder {
        fields: out,
        operations,
    }
}

/// resultbydate.cfm: every order created inside the window (at most a day; default the last
/// three hours), as the gateway's books show them, each with its check value; the `55x`
/// behaviours change what the books say about an order.
fn results(shared: &Shared, params: &Params, format: Format) -> Reply {
    let config = &shared.config;
    let now = Utc::now();
    let start = window_end(params, "Start", Fault::new(4, 129, "bad Start* window"));
    let end = window_end(params, "End", Fault::new(4, 130, "bad End* window"));
    let (start, end) = match (start, end) {
        (Ok(start), Ok(end)) => (
            start.unwrap_or(now - TimeDelta::hours(RESULTS_DEFAULT_HOURS)),
            end.unwrap_or(now),
        ),
        (Err(fault), _) | (_, Err(fault)) => return fault.reply(format),
    };
    if end < start || end - start > TimeDelta::days(1) {
        return Fault::new(4, 130, "the window must be at most one day").reply(format);
    }
    let window = Window {
        start: truncate_to_minute(start),
        end: truncate_to_minute(end),
    };
    let orders = shared.book().results(window);
    let listed: Vec<StatusOrder> = orders
        .iter()
        .map(|order| books_order(&config.merchant_id, &config.salt, order, now))
        .collect();
    respond(
        StatusCode::OK,
        format,
        wire::status(format, "resultbydate", &listed),
    )
}

/// One order as the books list it (orderresult's order fields, no operations).
fn books_order(
    merchant_id: &str,
    salt: &SecretString,
    order: &OrderRecord,
    now: DateTime<Utc>,
) -> StatusOrder {
    let mut amount = order.amount;
    let (mut state, mut code) = (order.state.as_str(), order.response_code.clone());
    match order.behaviour {
        Behaviour::BooksAmount => {
            amount = Money::from_cents(amount.cents().saturating_add(100)).unwrap_or(amount);
        }
        Behaviour::BooksDeclined => {
            state = OrderState::Declined.as_str();
            code = "AS100".to_string();
        }
        _ => {}
    }
    let amount = amount.to_string();
    let currency = order.currency.to_string();
    let fields = ResultFields {
        merchant_id,
        order_number: &order.order_number,
        order_amount: &amount,
        order_currency: &currency,
        order_state: state,
    };
    let checkvalue = if order.behaviour == Behaviour::BooksWrongCheckvalue {
        let wrong = SecretString::from(format!("{}-557", salt.expose_secret()));
        result_checkvalue(&wrong, &fields)
    } else {
        result_checkvalue(salt, &fields)
    };
    StatusOrder {
        fields: vec![
            ("ordernumber", order.order_number.clone()),
            ("billnumber", order.bill_number.clone()),
            ("testmode", test_mode(order.test_mode)),
            ("orderdate", order.created_at.format(DATE_TIME).to_string()),
            ("orderamount", amount),
            ("ordercurrency", currency),
            ("orderstate", state.to_string()),
            ("responsecode", code),
            ("packetdate", now.format(DATE_TIME).to_string()),
            ("signature", String::new()),
            ("checkvalue", checkvalue),
        ],
        operations: None,
    }
}

/// The search window: Start*/End* (GMT) if given in full, else now − 3 days .. now. Partly
/// given or impossible: 4/129 (start) or 4/130 (end).
fn window(params: &Params, now: DateTime<Utc>) -> Result<Window, Fault> {
    let start = window_end(params, "Start", Fault::new(4, 129, "bad Start* window"))?
        .unwrap_or(now - TimeDelta::days(DEFAULT_WINDOW_DAYS));
    let end = window_end(params, "End", Fault::new(4, 130, "bad End* window"))?.unwrap_or(now);
    Ok(Window {
        start: truncate_to_minute(start),
        end: truncate_to_minute(end),
    })
}

/// One end of the window from its five fields: None if none is given.
fn window_end(params: &Params, prefix: &str, fault: Fault) -> Result<Option<DateTime<Utc>>, Fault> {
    let values: Vec<Option<&str>> = ["Year", "Month", "Day", "Hour", "Min"]
        .iter()
        .map(|part| params.get(&format!("{prefix}{part}")))
        .collect();
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let numbers: Option<Vec<u32>> = values
        .iter()
        .map(|value| {
            value
                .filter(|text| !text.is_empty() && text.len() <= 4)
                .filter(|text| text.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|text| text.parse().ok())
        })
        .collect();
    let instant = numbers.and_then(|n| match n.as_slice() {
        [year, month, day, hour, minute] => {
            let date = NaiveDate::from_ymd_opt(i32::try_from(*year).ok()?, *month, *day)?;
            let naive = date.and_hms_opt(*hour, *minute, 0)?;
            Some(Utc.from_utc_datetime(&naive))
        }
        _ => None,
    });
    instant.map(Some).ok_or(fault)
}

/// token.cfm / rem_token.cfm: JSON in, JSON out, faults as JSON.
fn token(shared: &Shared, body: &[u8], service: Service, admitted: bool) -> Reply {
    let result = if admitted {
        token_reply(shared, body, service)
    } else {
        Err(Fault::new(1, 3, "request rate exceeded"))
    };
    match result {
        Ok(body) => respond(StatusCode::OK, Format::Json, body),
        Err(fault) => fault.reply(Format::Json),
    }
}

fn token_reply(shared: &Shared, body: &[u8], service: Service) -> Result<String, Fault> {
    let bad_body = Fault::new(4, 0, "the request body must be a JSON object");
    let request: Value = serde_json::from_slice(body).map_err(|_| bad_body.clone())?;
    let request = request.as_object().ok_or(bad_body)?;
    let merchant = json_get(request, "merchant").and_then(Value::as_object);
    let field = |name: &str| merchant.and_then(|m| json_text(json_get(m, name)?));
    let merchant_id = field("merchant_id");
    let login = field("login");
    let password = field("password");
    let customer = json_get(request, "customernumber").and_then(json_text);
    tracing::debug!(
        service = service.name(),
        merchant_id = merchant_id.as_deref().unwrap_or(""),
        customer = customer.as_deref().unwrap_or(""),
        "assist sandbox request"
    );
    check_auth(
        shared,
        merchant_id.as_deref(),
        login.as_deref(),
        password.as_deref(),
    )?;
    let customer = customer.ok_or(Fault::new(3, 202, "customernumber is missing"))?;
    match service {
        Service::RemToken => {
            let token = json_get(request, "token")
                .and_then(json_text)
                .ok_or(Fault::new(3, 203, "token is missing"))?;
            if shared.book().remove_token(&customer, &token) {
                Ok(wire::token_removed(&token))
            } else {
                Err(Fault::new(10, 203, "no such token for this customer"))
            }
        }
        _ => Ok(wire::tokens(&shared.book().tokens_of(&customer))),
    }
}

/// A key of a JSON object, any case.
fn json_get<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// A JSON string or number as text; empty strings and other kinds count as missing.
fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn respond(status: StatusCode, format: Format, body: String) -> Reply {
    let content_type = match format {
        Format::Xml => "application/xml; charset=UTF-8",
        Format::Json => "application/json; charset=UTF-8",
    };
    with_type(status, content_type, body)
}

fn plain(status: StatusCode, text: &str) -> Reply {
    with_type(status, "text/plain; charset=UTF-8", text.to_string())
}

fn error_page(status: StatusCode) -> Reply {
    let reason = status.canonical_reason().unwrap_or("Error");
    with_type(
        status,
        "text/html; charset=UTF-8",
        wire::error_page(status.as_u16(), reason),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}
