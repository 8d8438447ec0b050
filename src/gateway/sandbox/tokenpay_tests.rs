//! tokenpay.cfm over real HTTP: the initial recurring payment, its checks and faults, the
//! Signature, the magic tokens, and the agreement it leaves for rp.cfm.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{Days, Utc};
use md5::{Digest, Md5};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use secrecy::SecretString;
use serde_json::Value;

use super::*;
use crate::gateway::checkvalue::{ResultFields, verify_result};
use crate::money::assist_date;

const TOKENPAY: &str = "/pay/tokenpay.cfm";
const RP: &str = "/recurrent/rp.cfm";
const VISA_1234: &str = "49D902C6-1CCF-4605-9228-11D0E8115C77";
const CARD_1001: &str = "5A0C4E2B-7D1F-4C3A-8E9B-2F6D1A0B3C4D";

fn config() -> SandboxConfig {
    SandboxConfig {
        hang: Duration::from_millis(300),
        ..SandboxConfig::builtin()
    }
}

async fn start(config: SandboxConfig) -> Sandbox {
    Sandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn future_date() -> String {
    assist_date(Utc::now().date_naive() + Days::new(365))
}

/// A valid recurring tokenpay form for customer 1234's VISA, without a Signature.
fn form(order: &str, customer: &str, token: &str) -> Vec<(String, String)> {
    let token_json = serde_json::json!({"Token": token, "CustomerNumber": customer}).to_string();
    [
        ("Merchant_ID", BUILTIN_MERCHANT_ID),
        ("Login", BUILTIN_LOGIN),
        ("Password", BUILTIN_PASSWORD),
        ("OrderNumber", order),
        ("OrderAmount", "499.00"),
        ("OrderCurrency", "RUB"),
        ("TokenType", "5"),
        ("PaymentToken", &token_json),
        ("RecurringIndicator", "1"),
        ("RecurringMinAmount", "100.00"),
        ("RecurringMaxAmount", "1000.00"),
        ("RecurringPeriod", "28"),
        ("RecurringMaxDate", &future_date()),
        ("Language", "EN"),
        ("Format", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn set(form: &mut Vec<(String, String)>, name: &str, value: &str) {
    form.retain(|(k, _)| k != name);
    form.push((name.to_string(), value.to_string()));
}

async fn post(sandbox: &Sandbox, path: &str, form: &[(String, String)]) -> (u16, String) {
    let reply = reqwest::Client::new()
        .post(format!("{}{path}", sandbox.url()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap())
}

async fn pay(sandbox: &Sandbox, form: &[(String, String)]) -> Value {
    let (status, text) = post(sandbox, TOKENPAY, form).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn fault(value: &Value) -> (u64, u64) {
    let fault = &value["fault"];
    assert!(fault["detail"].is_string(), "{value}");
    (
        fault["faultcode"].as_u64().unwrap(),
        fault["faultstring"].as_u64().unwrap(),
    )
}

fn order(value: &Value) -> &serde_json::Map<String, Value> {
    let orders = value["order"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{value}");
    orders[0].as_object().unwrap()
}

fn text<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    object[name].as_str().unwrap()
}

fn checkvalue_verifies(order: &serde_json::Map<String, Value>) -> bool {
    verify_result(
        &SecretString::from(BUILTIN_SALT),
        &ResultFields {
            merchant_id: BUILTIN_MERCHANT_ID,
            order_number: text(order, "ordernumber"),
            order_amount: text(order, "orderamount"),
            order_currency: text(order, "ordercurrency"),
            order_state: text(order, "orderstate"),
        },
        text(order, "checkvalue"),
    )
}

fn rp_form(bill: &str, order: &str, amount: &str) -> Vec<(String, String)> {
    [
        ("Merchant_ID", BUILTIN_MERCHANT_ID),
        ("Login", BUILTIN_LOGIN),
        ("Password", BUILTIN_PASSWORD),
        ("BillNumber", bill),
        ("OrderNumber", order),
        ("Amount", amount),
        ("Currency", "RUB"),
        ("Format", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn an_initial_payment_creates_an_order_and_an_agreement_that_limits_rp() {
    let sandbox = start(config()).await;
    let reply = pay(&sandbox, &form("E1", "1234", VISA_1234)).await;
    assert!(reply["packetdate"].is_string(), "{reply}");
    assert!(reply.get("firstcode").is_none() && reply.get("continueurl").is_none());
    let o = order(&reply);
    let bill = text(o, "billnumber").to_string();
    assert_eq!(bill.len(), 16, "{bill}");
    assert!(bill.starts_with("58") && bill.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(text(o, "orderstate"), "Approved");
    assert_eq!(text(o, "testmode"), "1");
    assert_eq!(
        (text(o, "orderamount"), text(o, "ordercurrency")),
        ("499.00", "RUB")
    );
    assert!(checkvalue_verifies(o));
    let operation = o["operations"][0].as_object().unwrap();
    assert_eq!(text(operation, "responsecode"), "AS000");
    assert_eq!(text(operation, "billnumber"), format!("{bill}.1"));

    let book = sandbox.book();
    let agreement = &book.agreements[&bill];
    assert_eq!(
        (agreement.min, agreement.max, agreement.period_days),
        (
            Some(Money::parse("100.00").unwrap()),
            Some(Money::parse("1000.00").unwrap()),
            Some(28)
        )
    );
    assert_eq!(book.token_payments.len(), 1);
    assert_eq!(book.token_payments[0].bill_number.as_deref(), Some(&*bill));
    assert_eq!(book.token_payments[0].customer, "1234");
    assert!(!book.token_payments[0].signed);

    // The agreement binds rp.cfm: inside the limits approved (as operation .2), above declined.
    let (_, text_rp) = post(&sandbox, RP, &rp_form(&bill, "E1-R1", "999.00")).await;
    let rp: Value = serde_json::from_str(&text_rp).unwrap();
    assert_eq!(rp["rp"]["responsecode"], "AS000", "{rp}");
    assert_eq!(rp["rp"]["billnumber"], format!("{bill}.2"));
    let (_, text_rp) = post(&sandbox, RP, &rp_form(&bill, "E1-R2", "1000.01")).await;
    let rp: Value = serde_json::from_str(&text_rp).unwrap();
    assert_eq!(rp["rp"]["responsecode"], "AS100", "{rp}");

    // Every payment gets its own billnumber; a reused order number is refused.
    let second = pay(&sandbox, &form("E2", "1001", CARD_1001)).await;
    assert_ne!(text(order(&second), "billnumber"), bill);
    assert_eq!(
        fault(&pay(&sandbox, &form("E1", "1234", VISA_1234)).await),
        (11, 201)
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn requests_assist_would_refuse_are_faults_and_apply_nothing() {
    let sandbox = start(config()).await;
    let base = form("F", "1234", VISA_1234);
    let with = |name: &str, value: &str| {
        let mut f = base.clone();
        set(&mut f, name, value);
        f
    };
    let without = |name: &str| {
        let mut f = base.clone();
        f.retain(|(k, _)| k != name);
        f
    };
    let past = assist_date(Utc::now().date_naive());
    let mut with_customer = base.clone();
    with_customer.push(("CustomerNumber".into(), "1234".into()));
    type Form = Vec<(String, String)>;
    let cases: Vec<(&str, Form, (u64, u64))> = vec![
        ("wrong password", with("Password", "nope-nope"), (7, 141)),
        ("SOAP format", with("Format", "4"), (4, 103)),
        ("no TokenType", without("TokenType"), (5, 0)),
        ("top-level CustomerNumber", with_customer, (15, 320)),
        ("no PaymentToken", without("PaymentToken"), (3, 203)),
        (
            "PaymentToken not JSON",
            with("PaymentToken", "49D9"),
            (4, 203),
        ),
        (
            "another customer's token",
            form("F", "1001", VISA_1234),
            (10, 203),
        ),
        (
            "unknown token",
            form("F", "1234", "00000000-0000"),
            (10, 203),
        ),
        ("amount one decimal", with("OrderAmount", "499.0"), (4, 108)),
        (
            "min above max",
            with("RecurringMinAmount", "1000.01"),
            (5, 320),
        ),
        (
            "no RecurringMaxAmount",
            without("RecurringMaxAmount"),
            (3, 320),
        ),
        (
            "period four digits",
            with("RecurringPeriod", "1000"),
            (4, 320),
        ),
        ("period zero", with("RecurringPeriod", "0"), (4, 320)),
        (
            "max date ISO",
            with("RecurringMaxDate", "2030-01-01"),
            (4, 320),
        ),
        ("max date today", with("RecurringMaxDate", &past), (5, 320)),
        ("no RecurringPeriod", without("RecurringPeriod"), (3, 320)),
    ];
    for (name, form, expected) in &cases {
        assert_eq!(fault(&pay(&sandbox, form).await), *expected, "{name}");
    }
    let book = sandbox.book();
    assert!(book.orders.is_empty());
    assert_eq!(book.token_payments.len(), cases.len());
    assert!(
        book.token_payments
            .iter()
            .all(|p| matches!(p.outcome, RpOutcome::Refused(_)))
    );
    // Without RecurringIndicator it is a plain payment: no agreement.
    let plain = pay(&sandbox, &without("RecurringIndicator")).await;
    let bill = text(order(&plain), "billnumber").to_string();
    assert!(!sandbox.book().agreements.contains_key(&bill));
    sandbox.shutdown().await;
}

fn sign(key: &RsaPrivateKey, text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    STANDARD.encode(key.sign(Pkcs1v15Sign::new::<Md5>(), &digest).unwrap())
}

#[tokio::test]
async fn with_a_public_key_the_signature_is_required_and_verified() {
    let mut rng = rsa::rand_core::OsRng;
    let merchant = RsaPrivateKey::new(&mut rng, 1024).unwrap();
    let intruder = RsaPrivateKey::new(&mut rng, 1024).unwrap();
    let sandbox = start(SandboxConfig {
        verify_key: Some(RsaPublicKey::from(&merchant)),
        ..config()
    })
    .await;
    let signed = "123456;S1;499.00;RUB";
    let mut f = form("S1", "1234", VISA_1234);
    assert_eq!(fault(&pay(&sandbox, &f).await), (3, 0), "missing");
    set(&mut f, "Signature", &sign(&intruder, signed));
    assert_eq!(fault(&pay(&sandbox, &f).await), (9, 6), "another key");
    set(
        &mut f,
        "Signature",
        &sign(&merchant, "123456;S1;499.01;RUB"),
    );
    assert_eq!(fault(&pay(&sandbox, &f).await), (9, 6), "another amount");
    set(&mut f, "Signature", "not base64!");
    assert_eq!(fault(&pay(&sandbox, &f).await), (9, 6), "garbage");
    set(&mut f, "Signature", &sign(&merchant, signed));
    let reply = pay(&sandbox, &f).await;
    assert_eq!(text(order(&reply), "orderstate"), "Approved", "{reply}");
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1);
    assert!(book.token_payments.last().unwrap().signed);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn magic_tokens_choose_what_happens() {
    let sandbox = start(config()).await;
    let magic = |suffix: &str| format!("99900000-0000-0000-0000-000000000{suffix}");

    // 110: 3-D Secure required: AS110, In Process, codes 0/0 and a continueurl.
    let reply = pay(&sandbox, &form("M110", "5555", &magic("110"))).await;
    let o = order(&reply);
    assert_eq!(text(o, "orderstate"), "In Process");
    assert_eq!(o["operations"][0]["responsecode"], "AS110");
    assert_eq!(
        (&reply["firstcode"], &reply["secondcode"]),
        (&"0".into(), &"0".into())
    );
    assert!(
        reply["continueurl"]
            .as_str()
            .unwrap()
            .contains("/pay/pay.cfm?CFSID=")
    );
    assert!(checkvalue_verifies(o));

    // 115: CVC required: firstcode 3 / secondcode 115, with the order and a continueurl.
    let reply = pay(&sandbox, &form("M115", "5555", &magic("115"))).await;
    assert_eq!(
        (&reply["firstcode"], &reply["secondcode"]),
        (&"3".into(), &"115".into())
    );
    assert!(reply["continueurl"].is_string());
    assert_eq!(text(order(&reply), "orderstate"), "In Process");

    // 102: declined; no agreement.
    let reply = pay(&sandbox, &form("M102", "5555", &magic("102"))).await;
    let o = order(&reply);
    assert_eq!(text(o, "orderstate"), "Declined");
    assert_eq!(o["operations"][0]["responsecode"], "AS102");
    let bill = text(o, "billnumber").to_string();
    assert!(!sandbox.book().agreements.contains_key(&bill));

    // 500: applied, then HTTP 500; 503: nothing applied.
    let (status, _) = post(&sandbox, TOKENPAY, &form("M500", "5555", &magic("500"))).await;
    assert_eq!(status, 500);
    let (status, _) = post(&sandbox, TOKENPAY, &form("M503", "5555", &magic("503"))).await;
    assert_eq!(status, 503);
    let book = sandbox.book();
    let m500 = book
        .orders
        .iter()
        .find(|o| o.order_number == "M500")
        .unwrap();
    assert_eq!(m500.state, OrderState::Approved);
    assert!(book.agreements.contains_key(&m500.bill_base));
    assert!(!book.orders.iter().any(|o| o.order_number == "M503"));

    // 777: a well-formed but wrong check value.
    let reply = pay(&sandbox, &form("M777", "5555", &magic("777"))).await;
    assert!(!checkvalue_verifies(order(&reply)));
    sandbox.shutdown().await;
}

/// 117 / 217 / 317: a decline-type fault (firstcode 17, no check value), with nothing applied,
/// with the payment applied (Approved) or applied In Process.
#[tokio::test]
async fn magic_decline_faults_apply_nothing_or_the_payment() {
    let sandbox = start(config()).await;
    let magic = |suffix: &str| format!("99900000-0000-0000-0000-000000000{suffix}");
    for (order_number, suffix) in [("F117", "117"), ("F217", "217"), ("F317", "317")] {
        let reply = pay(&sandbox, &form(order_number, "5555", &magic(suffix))).await;
        assert_eq!(fault(&reply), (17, 0), "{suffix}: {reply}");
        assert!(reply.get("order").is_none(), "{suffix}: {reply}");
    }
    let book = sandbox.book();
    let state = |number: &str| {
        book.orders
            .iter()
            .find(|o| o.order_number == number)
            .map(|o| o.state)
    };
    assert_eq!(state("F117"), None);
    assert_eq!(state("F217"), Some(OrderState::Approved));
    assert_eq!(state("F317"), Some(OrderState::InProcess));
    assert_eq!(book.token_payments.len(), 3, "each request is in the book");
    sandbox.shutdown().await;
}
