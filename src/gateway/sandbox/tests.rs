//! The sandbox over real HTTP: each test starts one on 127.0.0.1:0 and posts with reqwest.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;

use super::behaviour::{self, Behaviour, DeclineCode};
use super::*;
use crate::gateway::checkvalue::{ResultFields, verify_result};

const RP: &str = "/recurrent/rp.cfm";
const STATE: &str = "/orderstate/orderstate.cfm";
const RESULT: &str = "/orderresult/orderresult.cfm";
const TOKEN: &str = "/pay/oneclick/v1/token.cfm";
const REM_TOKEN: &str = "/pay/oneclick/v1/rem_token.cfm";

const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// The built-in config with a short hang, as the tests use it.
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

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Posts a form and returns (status, body).
async fn post(sandbox: &Sandbox, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let reply = client()
        .post(format!("{}{path}", sandbox.url()))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.text().await.unwrap())
}

async fn post_json(sandbox: &Sandbox, path: &str, body: &Value) -> (u16, Value) {
    let reply = client()
        .post(format!("{}{path}", sandbox.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn auth() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Merchant_ID", BUILTIN_MERCHANT_ID),
        ("Login", BUILTIN_LOGIN),
        ("Password", BUILTIN_PASSWORD),
    ]
}

/// An rp.cfm form: the auth plus these fields.
fn rp_form<'a>(
    bill: &'a str,
    order: &'a str,
    amount: &'a str,
    format: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut form = auth();
    form.extend([
        ("BillNumber", bill),
        ("OrderNumber", order),
        ("Amount", amount),
        ("Currency", "RUB"),
        ("Language", "EN"),
        ("Format", format),
    ]);
    form
}

async fn charge(sandbox: &Sandbox, bill: &str, order: &str, format: &str) -> (u16, String) {
    post(sandbox, RP, &rp_form(bill, order, "100.00", format)).await
}

fn status_form<'a>(order: &'a str, format: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut form = auth();
    form.extend([("Ordernumber", order), ("Format", format)]);
    form
}

/// The fields of every `<order>` in an XML reply, and the `<result>` attributes.
struct Xml {
    first: String,
    second: String,
    count: String,
    orders: Vec<Vec<(String, String)>>,
}

impl Xml {
    fn parse(text: &str) -> Xml {
        let doc = roxmltree::Document::parse(text).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "result");
        let attr = |name: &str| root.attribute(name).unwrap().to_string();
        let orders = root
            .descendants()
            .filter(|n| n.has_tag_name("order"))
            .map(|order| {
                order
                    .children()
                    .filter(|n| n.is_element() && !n.has_tag_name("operation"))
                    .map(|n| {
                        (
                            n.tag_name().name().to_string(),
                            n.text().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .collect();
        Xml {
            first: attr("firstcode"),
            second: attr("secondcode"),
            count: attr("count"),
            orders,
        }
    }

    fn field(&self, index: usize, name: &str) -> &str {
        self.orders[index]
            .iter()
            .find(|(tag, _)| tag == name)
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| panic!("no <{name}> in order {index}"))
    }
}

fn xml_fault(first: u32, second: u32) -> String {
    format!("{XML_DECL}<result firstcode=\"{first}\" secondcode=\"{second}\" count=\"0\"></result>")
}

fn json_fault(text: &str) -> (u64, u64) {
    let value: Value = serde_json::from_str(text).unwrap();
    let fault = &value["fault"];
    assert!(fault["detail"].is_string(), "{text}");
    (
        fault["faultcode"].as_u64().unwrap(),
        fault["faultstring"].as_u64().unwrap(),
    )
}

fn rp_json(text: &str) -> serde_json::Map<String, Value> {
    let value: Value = serde_json::from_str(text).unwrap();
    let rp = value["rp"].as_object().unwrap().clone();
    assert!(!rp.contains_key("firstcode"));
    for (key, value) in &rp {
        assert!(value.is_string(), "{key} is not a string in {text}");
    }
    rp
}

/// Verifies the check value of order `index` of an XML status reply with the built-in salt.
fn checkvalue_verifies(xml: &Xml, index: usize) -> bool {
    let fields = ResultFields {
        merchant_id: BUILTIN_MERCHANT_ID,
        order_number: xml.field(index, "ordernumber"),
        order_amount: xml.field(index, "orderamount"),
        order_currency: xml.field(index, "ordercurrency"),
        order_state: xml.field(index, "orderstate"),
    };
    verify_result(
        &SecretString::from(BUILTIN_SALT),
        &fields,
        xml.field(index, "checkvalue"),
    )
}

#[tokio::test]
async fn approve_in_xml_with_the_spec_shape() {
    let sandbox = start(config()).await;
    let (status, text) = charge(&sandbox, "5111111000001", "A1_R1", "3").await;
    assert_eq!(status, 200);
    assert!(text.starts_with(XML_DECL), "{text}");
    assert!(text.contains("<result firstcode=\"0\" secondcode=\"0\" count=\"1\">\n <orders>\n  <order>\n   <ordernumber>A1_R1</ordernumber>\n"), "{text}");
    let xml = Xml::parse(&text);
    assert_eq!(
        (xml.first.as_str(), xml.second.as_str(), xml.count.as_str()),
        ("0", "0", "1")
    );
    let tags: Vec<&str> = xml.orders[0].iter().map(|(tag, _)| tag.as_str()).collect();
    assert_eq!(
        tags,
        [
            "ordernumber",
            "billnumber",
            "responsecode",
            "message",
            "recommendation",
            "orderdate",
            "amount",
            "currency",
            "orderamount",
            "ordercurrency",
            "orderstate",
            "testmode",
            "meannumber",
            "approvalcode",
            "operationtype",
            "packetdate",
        ]
    );
    assert_eq!(xml.field(0, "billnumber"), "5111111000001.1");
    assert_eq!(xml.field(0, "responsecode"), "AS000");
    assert_eq!(xml.field(0, "orderstate"), "Approved");
    assert_eq!(xml.field(0, "amount"), "100.00");
    assert_eq!(xml.field(0, "orderamount"), "100.00");
    assert_eq!(xml.field(0, "currency"), "RUB");
    assert_eq!(xml.field(0, "testmode"), "1");
    assert_eq!(xml.field(0, "operationtype"), "100");
    assert_eq!(xml.field(0, "approvalcode").len(), 6);
    let date = xml.field(0, "orderdate");
    assert!(
        chrono::NaiveDateTime::parse_from_str(date, "%d.%m.%Y %H:%M:%S").is_ok(),
        "{date}"
    );

    // The second charge of the same agreement is operation 2, also when sent in extended form.
    let (_, text) = charge(&sandbox, "5111111000001.1", "A1_R2", "3").await;
    assert_eq!(Xml::parse(&text).field(0, "billnumber"), "5111111000001.2");

    let book = sandbox.book();
    assert_eq!(book.orders.len(), 2);
    let order = &book.orders[0];
    assert_eq!(order.order_number, "A1_R1");
    assert_eq!(order.bill_base, "5111111000001");
    assert_eq!(order.bill_number, "5111111000001.1");
    assert_eq!(order.amount, Money::parse("100.00").unwrap());
    assert_eq!(order.state, OrderState::Approved);
    assert_eq!(order.response_code, "AS000");
    assert!(order.test_mode);
    assert_eq!(book.rp_requests.len(), 2);
    assert_eq!(book.rp_requests[0].amount, "100.00");
    assert!(matches!(
        book.rp_requests[0].outcome,
        RpOutcome::Applied {
            state: OrderState::Approved,
            ..
        }
    ));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn approve_in_json_with_string_fields() {
    let sandbox = start(SandboxConfig {
        test_mode: false,
        ..config()
    })
    .await;
    let (status, text) = charge(&sandbox, "9990000000", "J1", "5").await;
    assert_eq!(status, 200);
    let rp = rp_json(&text);
    assert_eq!(rp["ordernumber"], "J1");
    assert_eq!(rp["billnumber"], "9990000000.1");
    assert_eq!(rp["responsecode"], "AS000");
    assert_eq!(rp["orderstate"], "Approved");
    assert_eq!(rp["orderamount"], "100.00");
    assert_eq!(rp["testmode"], "0");
}

#[tokio::test]
async fn magic_declines_in_both_formats() {
    let sandbox = start(config()).await;
    for (suffix, code) in [
        ("102", "AS102"),
        ("105", "AS105"),
        ("101", "AS101"),
        ("104", "AS104"),
        ("110", "AS110"),
        ("400", "AS400"),
    ] {
        let bill = format!("9990000{suffix}");
        let (_, text) = charge(&sandbox, &bill, &format!("D{suffix}-x"), "3").await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.field(0, "responsecode"), code, "{text}");
        assert_eq!(xml.field(0, "orderstate"), "Declined");
        assert_eq!(xml.field(0, "approvalcode"), "");
        let (_, text) = charge(&sandbox, &bill, &format!("D{suffix}-j"), "5").await;
        let rp = rp_json(&text);
        assert_eq!(rp["responsecode"], code, "{text}");
        assert_eq!(rp["orderstate"], "Declined");
    }
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 12);
    assert!(book.orders.iter().all(|o| o.state == OrderState::Declined));
}

#[tokio::test]
async fn in_process_settles_after_the_configured_queries() {
    let sandbox = start(config()).await;
    let (_, text) = charge(&sandbox, "9990000300", "P300", "3").await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.field(0, "responsecode"), "AS300");
    assert_eq!(xml.field(0, "orderstate"), "In Process");
    let (_, text) = charge(&sandbox, "9990000301", "P301", "5").await;
    let rp = rp_json(&text);
    assert_eq!(rp["responsecode"], "AS300");
    assert_eq!(rp["orderstate"], "In Process");

    // BUILTIN_SETTLE_AFTER = 2: two queries still say In Process, the third the final state.
    for expected in ["In Process", "In Process", "Approved"] {
        let (_, text) = post(&sandbox, STATE, &status_form("P300", "3")).await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.field(0, "orderstate"), expected);
        assert!(checkvalue_verifies(&xml, 0));
    }
    for expected in ["In Process", "In Process", "Declined"] {
        let (_, text) = post(&sandbox, RESULT, &status_form("P301", "3")).await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.field(0, "orderstate"), expected);
        let code = if expected == "Declined" {
            "AS100"
        } else {
            "AS300"
        };
        assert_eq!(xml.field(0, "responsecode"), code);
    }
    let book = sandbox.book();
    assert_eq!(book.orders[0].status_queries, 3);
    assert_eq!(book.orders[0].state, OrderState::Approved);
    assert_eq!(book.orders[1].state, OrderState::Declined);
    assert_eq!(book.orders[1].response_code, "AS100");
}

#[tokio::test]
async fn settle_after_zero_settles_on_the_first_query() {
    let sandbox = start(SandboxConfig {
        settle_after: 0,
        ..config()
    })
    .await;
    charge(&sandbox, "9990000300", "Z", "3").await;
    let (_, text) = post(&sandbox, STATE, &status_form("Z", "5")).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["orderstate"]["order"][0]["orderstate"], "Approved");
}

#[tokio::test]
async fn hang_408_times_out_the_client_but_applies_and_blocks_no_one() {
    let sandbox = start(config()).await;
    let url = format!("{}{RP}", sandbox.url());
    let hung = tokio::spawn(async move {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap()
            .post(url)
            .form(&rp_form("9990000408", "H1", "100.00", "3"))
            .send()
            .await
    });
    // While that request hangs, another connection is served at once.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let begun = Instant::now();
    let (status, _) = charge(&sandbox, "5000", "quick", "3").await;
    assert_eq!(status, 200);
    assert!(
        begun.elapsed() < Duration::from_millis(250),
        "blocked by the hang"
    );
    let error = hung.await.unwrap().unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    let book = sandbox.book();
    let order = book.orders.iter().find(|o| o.order_number == "H1").unwrap();
    assert_eq!(order.state, OrderState::Approved);

    // A patient client gets the normal reply after the hang.
    let begun = Instant::now();
    let (status, text) = charge(&sandbox, "9990000408", "H2", "3").await;
    assert_eq!(status, 200);
    assert!(begun.elapsed() >= Duration::from_millis(300));
    assert_eq!(Xml::parse(&text).field(0, "orderstate"), "Approved");
    // Shutdown does not wait for a hang longer than the grace.
    sandbox.shutdown().await;
}

#[tokio::test]
async fn drop_409_closes_the_connection_without_a_response() {
    let sandbox = start(config()).await;
    let result = client()
        .post(format!("{}{RP}", sandbox.url()))
        .form(&rp_form("9990000409", "C1", "100.00", "3"))
        .send()
        .await;
    let error = result.unwrap_err();
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1, "applied once, not retried");
    assert_eq!(book.orders[0].state, OrderState::Approved);
}

#[tokio::test]
async fn http_errors_500_503_429() {
    let sandbox = start(config()).await;
    let (status, text) = charge(&sandbox, "9990000500", "E500", "3").await;
    assert_eq!(status, 500);
    assert!(text.starts_with("<html>"), "{text}");
    let (status, text) = charge(&sandbox, "9990000503", "E503", "5").await;
    assert_eq!(status, 503);
    assert!(text.starts_with("<html>"), "{text}");
    let (status, _) = charge(&sandbox, "9990000429", "E429", "3").await;
    assert_eq!(status, 429);
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1);
    assert_eq!(book.orders[0].order_number, "E500");
    assert_eq!(book.orders[0].state, OrderState::Approved);
    let outcomes: Vec<&RpOutcome> = book.rp_requests.iter().map(|r| &r.outcome).collect();
    assert!(matches!(outcomes[0], RpOutcome::Applied { .. }));
    assert_eq!(outcomes[1], &RpOutcome::Refused(Refusal::Http(503)));
    assert_eq!(outcomes[2], &RpOutcome::Refused(Refusal::Http(429)));
    // Nothing was applied, so the same order number can go again (to another agreement).
    let (status, _) = charge(&sandbox, "5000", "E503", "3").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn garbage_666_is_applied() {
    let sandbox = start(config()).await;
    let (status, text) = charge(&sandbox, "9990000666", "G1", "5").await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with("<html><body>Service temporarily"),
        "{text}"
    );
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert!(roxmltree::Document::parse(&text).is_err());
    assert_eq!(sandbox.book().orders[0].state, OrderState::Approved);
}

#[tokio::test]
async fn status_checkvalue_verifies_except_for_777() {
    let sandbox = start(config()).await;
    charge(&sandbox, "5000", "OK1", "3").await;
    let (_, text) = charge(&sandbox, "9990000777", "W1", "3").await;
    assert_eq!(Xml::parse(&text).field(0, "orderstate"), "Approved");
    for path in [STATE, RESULT] {
        let (_, text) = post(&sandbox, path, &status_form("OK1", "3")).await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.field(0, "checkvalue").len(), 32);
        assert!(checkvalue_verifies(&xml, 0), "{text}");
        let (_, text) = post(&sandbox, path, &status_form("W1", "3")).await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.field(0, "checkvalue").len(), 32);
        assert!(!checkvalue_verifies(&xml, 0), "{text}");
    }
    // The JSON reply carries the same check value.
    let (_, text) = post(&sandbox, STATE, &status_form("OK1", "5")).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    let order = &value["orderstate"]["order"][0];
    let fields = ResultFields {
        merchant_id: BUILTIN_MERCHANT_ID,
        order_number: order["ordernumber"].as_str().unwrap(),
        order_amount: order["orderamount"].as_str().unwrap(),
        order_currency: order["ordercurrency"].as_str().unwrap(),
        order_state: order["orderstate"].as_str().unwrap(),
    };
    let salt = SecretString::from(BUILTIN_SALT);
    assert!(verify_result(
        &salt,
        &fields,
        order["checkvalue"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn other_order_number_888() {
    let sandbox = start(config()).await;
    let (_, text) = charge(&sandbox, "9990000888", "N1", "3").await;
    assert_eq!(Xml::parse(&text).field(0, "ordernumber"), "N1-X");
    let (_, text) = charge(&sandbox, "9990000888", "N2", "5").await;
    assert_eq!(rp_json(&text)["ordernumber"], "N2-X");
    let (_, text) = post(&sandbox, STATE, &status_form("N1", "3")).await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.field(0, "ordernumber"), "N1-X");
    // The check value covers the strings sent, so it verifies: the mismatch is the client's to see.
    assert!(checkvalue_verifies(&xml, 0));
    assert_eq!(sandbox.book().orders[0].order_number, "N1");
}

#[tokio::test]
async fn system_error_998_is_approved_in_the_book() {
    let sandbox = start(config()).await;
    let (_, text) = charge(&sandbox, "9990000998", "S1", "3").await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.field(0, "responsecode"), "AS998");
    assert_eq!(xml.field(0, "orderstate"), "In Process");
    let (_, text) = charge(&sandbox, "9990000998", "S2", "5").await;
    assert_eq!(rp_json(&text)["responsecode"], "AS998");
    assert_eq!(sandbox.book().orders[0].state, OrderState::Approved);
    let (_, text) = post(&sandbox, STATE, &status_form("S1", "3")).await;
    assert_eq!(Xml::parse(&text).field(0, "orderstate"), "Approved");
}

#[tokio::test]
async fn chaos_999_is_stable_and_roughly_distributed() {
    let mut counts = std::collections::HashMap::new();
    for i in 0..2000 {
        *counts
            .entry(behaviour::chaos(&format!("order-{i}")))
            .or_insert(0u32) += 1;
    }
    let expected = [
        Behaviour::Approve,
        Behaviour::Decline(DeclineCode::InsufficientFunds),
        Behaviour::Decline(DeclineCode::CardInvalid),
        Behaviour::InProcess {
            then_approved: true,
        },
        Behaviour::Hang,
        Behaviour::DropConnection,
        Behaviour::ServerError,
        Behaviour::Unavailable,
        Behaviour::Garbage,
        Behaviour::WrongCheckvalue,
        Behaviour::SystemError,
    ];
    for behaviour in expected {
        assert!(
            counts.get(&behaviour).copied().unwrap_or(0) > 0,
            "{behaviour:?} never chosen"
        );
    }
    assert_eq!(counts.len(), expected.len());
    let approved = counts[&Behaviour::Approve];
    assert!(
        (1000..1400).contains(&approved),
        "{approved} of 2000 approved"
    );
    let soft = counts[&Behaviour::Decline(DeclineCode::InsufficientFunds)];
    assert!((150..340).contains(&soft), "{soft} of 2000 AS102");

    // Over HTTP the 999 agreement does what the hash says, every time.
    let pick = |wanted: Behaviour| {
        (0..)
            .map(|i| format!("chaos-{i}"))
            .find(|order| behaviour::chaos(order) == wanted)
            .unwrap()
    };
    let sandbox = start(config()).await;
    let approve = pick(Behaviour::Approve);
    let decline = pick(Behaviour::Decline(DeclineCode::InsufficientFunds));
    let unavailable = pick(Behaviour::Unavailable);
    let (_, text) = charge(&sandbox, "999", &approve, "3").await;
    assert_eq!(Xml::parse(&text).field(0, "responsecode"), "AS000");
    let (_, text) = charge(&sandbox, "9991999", &decline, "3").await;
    assert_eq!(Xml::parse(&text).field(0, "responsecode"), "AS102");
    let (status, _) = charge(&sandbox, "999", &unavailable, "3").await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn auth_faults_in_both_formats() {
    let sandbox = start(config()).await;
    let cases: [(&str, Option<&str>, u32, u32); 6] = [
        ("Merchant_ID", None, 3, 100),
        ("Login", None, 3, 101),
        ("Password", None, 3, 102),
        ("Merchant_ID", Some("654321"), 5, 100),
        ("Login", Some("intruder"), 7, 141),
        ("Password", Some("guess"), 7, 141),
    ];
    for path in [RP, STATE, RESULT] {
        for (name, value, first, second) in cases {
            for format in ["3", "5"] {
                let mut form: Vec<(&str, &str)> = rp_form("5000", "AUTH", "100.00", format)
                    .into_iter()
                    .filter(|(key, _)| *key != name)
                    .collect();
                form.push(("Ordernumber", "AUTH"));
                if let Some(value) = value {
                    form.push((name, value));
                }
                let (status, text) = post(&sandbox, path, &form).await;
                assert_eq!(status, 200);
                if format == "3" {
                    assert_eq!(text, xml_fault(first, second), "{path} {name}");
                } else {
                    assert_eq!(
                        json_fault(&text),
                        (first.into(), second.into()),
                        "{path} {name}"
                    );
                }
            }
        }
    }
    // Parameter names are case-insensitive.
    let form = [
        ("merchant_id", BUILTIN_MERCHANT_ID),
        ("LOGIN", BUILTIN_LOGIN),
        ("password", BUILTIN_PASSWORD),
        ("billnumber", "5000"),
        ("ORDERNUMBER", "case"),
        ("amount", "1.00"),
        ("currency", "RUB"),
    ];
    let (_, text) = post(&sandbox, RP, &form).await;
    assert_eq!(Xml::parse(&text).field(0, "responsecode"), "AS000");
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1);
    assert_eq!(book.rp_requests.len(), 13);
    assert!(matches!(
        &book.rp_requests[0].outcome,
        RpOutcome::Refused(Refusal::Fault {
            firstcode: 3,
            secondcode: 100,
            ..
        })
    ));
}

#[tokio::test]
async fn parameter_faults_apply_nothing() {
    let sandbox = start(config()).await;
    let long = "L".repeat(129);
    let cases: Vec<(&str, Option<&str>, u32, u32)> = vec![
        ("BillNumber", None, 3, 143),
        ("OrderNumber", None, 3, 107),
        ("Amount", None, 3, 108),
        ("Currency", None, 3, 105),
        ("OrderNumber", Some(long.as_str()), 4, 107),
        ("Amount", Some("100"), 4, 108),
        ("Amount", Some("100.0"), 4, 108),
        ("Amount", Some("100.000"), 4, 108),
        ("Amount", Some("1e2.00"), 4, 108),
        ("Amount", Some("-1.00"), 4, 108),
        ("Amount", Some("0.00"), 4, 108),
        ("Amount", Some("10,00"), 4, 108),
        ("Currency", Some("rub"), 4, 105),
        ("Currency", Some("RUBL"), 4, 105),
        ("Format", Some("4"), 4, 103),
        ("Format", Some("json"), 4, 103),
    ];
    for (name, value, first, second) in cases {
        for format in ["3", "5"] {
            let mut form: Vec<(&str, &str)> = rp_form("5000", "PARAM", "100.00", format)
                .into_iter()
                .filter(|(key, _)| *key != name)
                .collect();
            if let Some(value) = value {
                form.push((name, value));
            }
            let (_, text) = post(&sandbox, RP, &form).await;
            // A bad Format is always answered in XML.
            if format == "3" || name == "Format" {
                assert_eq!(text, xml_fault(first, second), "{name}={value:?}");
            } else {
                assert_eq!(
                    json_fault(&text),
                    (first.into(), second.into()),
                    "{name}={value:?}"
                );
            }
        }
    }
    // An order number of exactly 128 characters is fine; so is a missing Format (XML).
    let ok = "K".repeat(128);
    let form: Vec<(&str, &str)> = rp_form("5000", &ok, "100.00", "3")
        .into_iter()
        .filter(|(key, _)| *key != "Format")
        .collect();
    let (_, text) = post(&sandbox, RP, &form).await;
    assert_eq!(Xml::parse(&text).field(0, "ordernumber"), ok);
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1);
    assert_eq!(book.rp_requests.len(), 33);
    assert!(
        book.rp_requests[..32]
            .iter()
            .all(|r| matches!(r.outcome, RpOutcome::Refused(_)))
    );
}

#[tokio::test]
async fn orderstate_window() {
    let sandbox = start(config()).await;
    charge(&sandbox, "5000", "WIN", "3").await;

    // The default window (last three days) finds it.
    let (_, text) = post(&sandbox, STATE, &status_form("WIN", "3")).await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.count, "1");
    assert!(
        text.contains("<result firstcode=\"0\" secondcode=\"0\" count=\"1\">\n <order>\n"),
        "{text}"
    );
    assert!(!text.contains("<orders>"));
    let tags: Vec<&str> = xml.orders[0].iter().map(|(tag, _)| tag.as_str()).collect();
    assert_eq!(
        tags,
        [
            "ordernumber",
            "billnumber",
            "orderamount",
            "ordercurrency",
            "orderstate",
            "packetdate",
            "signature",
            "checkvalue"
        ]
    );
    assert_eq!(xml.field(0, "billnumber"), "5000");

    // An explicit window in 2020 does not.
    let mut form = status_form("WIN", "3");
    let old = [
        ("StartYear", "2020"),
        ("StartMonth", "1"),
        ("StartDay", "1"),
        ("StartHour", "0"),
        ("StartMin", "0"),
        ("EndYear", "2020"),
        ("EndMonth", "12"),
        ("EndDay", "31"),
        ("EndHour", "23"),
        ("EndMin", "59"),
    ];
    form.extend(old);
    let (_, text) = post(&sandbox, STATE, &form).await;
    assert_eq!(text, xml_fault(0, 0));
    let mut form = status_form("WIN", "5");
    form.extend(old);
    let (_, text) = post(&sandbox, STATE, &form).await;
    assert_eq!(json_fault(&text), (10, 107));
    let (_, text) = post(&sandbox, RESULT, &form).await;
    assert_eq!(json_fault(&text), (10, 107));

    // An explicit window around now (GMT, minutes, inclusive) finds it.
    let now = chrono::Utc::now();
    let start = now - chrono::TimeDelta::minutes(1);
    let texts: Vec<String> = [start, now]
        .iter()
        .flat_map(|t| {
            [
                t.format("%Y"),
                t.format("%m"),
                t.format("%d"),
                t.format("%H"),
                t.format("%M"),
            ]
            .map(|f| f.to_string())
        })
        .collect();
    let names = [
        "StartYear",
        "StartMonth",
        "StartDay",
        "StartHour",
        "StartMin",
        "EndYear",
        "EndMonth",
        "EndDay",
        "EndHour",
        "EndMin",
    ];
    let mut form = status_form("WIN", "5");
    form.extend(names.iter().copied().zip(texts.iter().map(String::as_str)));
    let (_, text) = post(&sandbox, STATE, &form).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["orderstate"]["count"], "1", "{text}");

    // Partly given windows and impossible dates.
    for (extra, second) in [
        (vec![("StartYear", "2020")], 129),
        (vec![("EndYear", "2020"), ("EndMonth", "1")], 130),
        (
            names[..5]
                .iter()
                .copied()
                .zip(["2020", "2", "30", "0", "0"])
                .collect(),
            129,
        ),
    ] {
        let mut form = status_form("WIN", "3");
        form.extend(extra);
        let (_, text) = post(&sandbox, STATE, &form).await;
        assert_eq!(text, xml_fault(4, second));
    }
    // A missing order number.
    let (_, text) = post(&sandbox, STATE, &auth()).await;
    assert_eq!(text, xml_fault(3, 107));
}

#[tokio::test]
async fn orderresult_has_operations() {
    let sandbox = start(config()).await;
    charge(&sandbox, "7000", "R1", "3").await;
    let (_, text) = post(&sandbox, RESULT, &status_form("R1", "3")).await;
    let doc = roxmltree::Document::parse(&text).unwrap();
    let order = doc.descendants().find(|n| n.has_tag_name("order")).unwrap();
    let child = |node: roxmltree::Node, name: &str| {
        node.children()
            .find(|n| n.has_tag_name(name))
            .and_then(|n| n.text().map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(child(order, "testmode"), "1");
    assert_eq!(child(order, "responsecode"), "AS000");
    assert!(!child(order, "orderdate").is_empty());
    assert!(!child(order, "checkvalue").is_empty());
    let operation = order
        .children()
        .find(|n| n.has_tag_name("operation"))
        .unwrap();
    assert_eq!(child(operation, "billnumber"), "7000.1");
    assert_eq!(child(operation, "operationtype"), "100");
    assert_eq!(child(operation, "operationstate"), "Approved");
    assert_eq!(child(operation, "amount"), "100.00");
    assert_eq!(child(operation, "currency"), "RUB");
    assert_eq!(child(operation, "responsecode"), "AS000");
    assert!(!child(operation, "operationdate").is_empty());

    let (_, text) = post(&sandbox, RESULT, &status_form("R1", "5")).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    let result = &value["orderresult"];
    assert_eq!(result["firstcode"], "0");
    assert_eq!(result["count"], "1");
    let operations = result["order"][0]["operations"].as_array().unwrap();
    assert_eq!(operations[0]["billnumber"], "7000.1");
    assert_eq!(operations[0]["operationstate"], "Approved");
}

#[tokio::test]
async fn duplicate_order_numbers_reject_or_accept() {
    let sandbox = start(config()).await;
    charge(&sandbox, "5000", "DUP", "3").await;
    let (_, text) = charge(&sandbox, "5000", "DUP", "3").await;
    assert_eq!(text, xml_fault(11, 201));
    let (_, text) = charge(&sandbox, "6000", "DUP", "5").await;
    assert_eq!(json_fault(&text), (11, 201));
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 1);
    assert_eq!(book.agreements["5000"].operations, 1);
    sandbox.shutdown().await;

    let sandbox = start(SandboxConfig {
        duplicates: DuplicatePolicy::Accept,
        ..config()
    })
    .await;
    charge(&sandbox, "5000", "DUP", "3").await;
    let (_, text) = charge(&sandbox, "5000", "DUP", "3").await;
    assert_eq!(Xml::parse(&text).field(0, "billnumber"), "5000.2");
    let (_, text) = post(&sandbox, STATE, &status_form("DUP", "3")).await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.count, "2");
    assert_eq!(xml.orders.len(), 2);
    assert!(checkvalue_verifies(&xml, 0) && checkvalue_verifies(&xml, 1));
    let (_, text) = post(&sandbox, STATE, &status_form("DUP", "5")).await;
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["orderstate"]["count"], "2");
    assert_eq!(value["orderstate"]["order"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn agreement_limits_and_currency() {
    let sandbox = start(config()).await;
    let rub = Currency::parse("RUB").unwrap();
    sandbox.add_agreement(
        "8000",
        rub,
        Some(Money::parse("10.00").unwrap()),
        Some(Money::parse("500.00").unwrap()),
    );
    for (amount, currency, expected) in [
        ("10.00", "RUB", "AS000"),
        ("500.00", "RUB", "AS000"),
        ("9.99", "RUB", "AS100"),
        ("500.01", "RUB", "AS100"),
        ("100.00", "USD", "AS100"),
    ] {
        let mut form = rp_form("8000", "", amount, "3");
        let order = format!("AG-{amount}-{currency}");
        form.retain(|(key, _)| *key != "OrderNumber" && *key != "Currency");
        form.extend([("OrderNumber", order.as_str()), ("Currency", currency)]);
        let (_, text) = post(&sandbox, RP, &form).await;
        let xml = Xml::parse(&text);
        assert_eq!(
            xml.field(0, "responsecode"),
            expected,
            "{amount} {currency}"
        );
        if expected == "AS100" {
            assert_eq!(xml.field(0, "orderstate"), "Declined");
            assert_eq!(xml.field(0, "message"), "outside the recurring agreement");
        }
    }
    // An unknown bill number takes the currency of its first charge.
    charge(&sandbox, "8100", "FIRST", "3").await;
    let mut form = rp_form("8100", "SECOND", "100.00", "3");
    form.retain(|(key, _)| *key != "Currency");
    form.push(("Currency", "EUR"));
    let (_, text) = post(&sandbox, RP, &form).await;
    assert_eq!(Xml::parse(&text).field(0, "responsecode"), "AS100");
    let book = sandbox.book();
    assert_eq!(book.agreements["8100"].currency, Some(rub));
    assert_eq!(book.agreements["8000"].operations, 5);
}

#[tokio::test]
async fn rate_limit_refuses_and_applies_nothing() {
    let sandbox = start(SandboxConfig {
        requests_per_second: Some(3),
        ..config()
    })
    .await;
    let mut texts = Vec::new();
    for i in 0..5 {
        let (status, text) = charge(&sandbox, "5000", &format!("RL{i}"), "3").await;
        assert_eq!(status, 200);
        texts.push(text);
    }
    assert!(texts[..3].iter().all(|t| Xml::parse(t).count == "1"));
    assert_eq!(texts[3], xml_fault(1, 3));
    assert_eq!(texts[4], xml_fault(1, 3));
    // Token services count too, and say it in JSON.
    let (_, value) = post_json(&sandbox, TOKEN, &token_request("1234")).await;
    assert_eq!(value["fault"]["faultcode"], 1);
    assert_eq!(value["fault"]["faultstring"], 3);
    let book = sandbox.book();
    assert_eq!(book.orders.len(), 3);
    assert_eq!(book.rate_limited, 3);
    assert_eq!(
        book.rp_requests[3].outcome,
        RpOutcome::Refused(Refusal::RateLimited)
    );
    // A second later the window has room again.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (_, text) = charge(&sandbox, "5000", "RL3", "5").await;
    assert_eq!(rp_json(&text)["responsecode"], "AS000");
}

#[tokio::test]
async fn latency_delays_every_reply() {
    let sandbox = start(SandboxConfig {
        latency: Duration::from_millis(200),
        ..config()
    })
    .await;
    let begun = Instant::now();
    let (status, _) = charge(&sandbox, "5000", "LAT", "3").await;
    assert_eq!(status, 200);
    assert!(begun.elapsed() >= Duration::from_millis(200));
    let begun = Instant::now();
    let (status, _) = post(&sandbox, "/nowhere", &[]).await;
    assert_eq!(status, 404);
    assert!(begun.elapsed() >= Duration::from_millis(200));
}

fn token_request(customer: &str) -> Value {
    serde_json::json!({
        "merchant": {"merchant_id": BUILTIN_MERCHANT_ID, "login": BUILTIN_LOGIN, "password": BUILTIN_PASSWORD},
        "customernumber": customer,
        "language": "EN",
    })
}

#[tokio::test]
async fn token_list_and_remove() {
    let sandbox = start(config()).await;
    let (status, cards) = post_json(&sandbox, TOKEN, &token_request("1234")).await;
    assert_eq!(status, 200);
    assert_eq!(
        cards,
        serde_json::json!([
            {"expire": "12.2027", "token": "49D902C6-1CCF-4605-9228-11D0E8115C77", "bank": "",
             "brand": "VISA", "bin": 412362, "active": true, "needCVC": false, "post": "0028", "assets": []},
            {"expire": "12.2027", "token": "4D7F0B0D-B701-47B0-779A-BB0CB5F25A14", "bank": "",
             "brand": "MasterCard", "bin": 518615, "active": true, "needCVC": false, "post": "1030", "assets": []},
        ])
    );
    let (_, cards) = post_json(&sandbox, TOKEN, &token_request("1001")).await;
    assert_eq!(cards.as_array().unwrap().len(), 1);
    let (_, cards) = post_json(&sandbox, TOKEN, &token_request("4242")).await;
    assert_eq!(cards, serde_json::json!([]));

    let mut remove = token_request("1234");
    remove["token"] = "49D902C6-1CCF-4605-9228-11D0E8115C77".into();
    let (_, reply) = post_json(&sandbox, REM_TOKEN, &remove).await;
    assert_eq!(
        reply,
        serde_json::json!({"message": "Token 49D902C6-1CCF-4605-9228-11D0E8115C77 is removed"})
    );
    let (_, cards) = post_json(&sandbox, TOKEN, &token_request("1234")).await;
    assert_eq!(cards.as_array().unwrap().len(), 1);
    let (_, reply) = post_json(&sandbox, REM_TOKEN, &remove).await;
    assert_eq!(json_fault(&reply.to_string()), (10, 203));
    assert_eq!(sandbox.book().tokens.len(), 2);

    // Faults.
    let mut no_customer = token_request("1234");
    no_customer
        .as_object_mut()
        .unwrap()
        .remove("customernumber");
    let (_, reply) = post_json(&sandbox, TOKEN, &no_customer).await;
    assert_eq!(json_fault(&reply.to_string()), (3, 202));
    let mut wrong = token_request("1234");
    wrong["merchant"]["password"] = "guess".into();
    let (_, reply) = post_json(&sandbox, TOKEN, &wrong).await;
    assert_eq!(json_fault(&reply.to_string()), (7, 141));
    let mut wrong = token_request("1234");
    wrong["merchant"]["merchant_id"] = "1".into();
    let (_, reply) = post_json(&sandbox, REM_TOKEN, &wrong).await;
    assert_eq!(json_fault(&reply.to_string()), (5, 100));
    let mut missing = token_request("1234");
    missing["merchant"].as_object_mut().unwrap().remove("login");
    let (_, reply) = post_json(&sandbox, TOKEN, &missing).await;
    assert_eq!(json_fault(&reply.to_string()), (3, 101));

    // add_token adds to the seeded ones.
    let card = sandbox.book().tokens[0].1.clone();
    sandbox.add_token("4242", card);
    let (_, cards) = post_json(&sandbox, TOKEN, &token_request("4242")).await;
    assert_eq!(cards.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn hostile_order_numbers_are_escaped() {
    let sandbox = start(SandboxConfig {
        duplicates: DuplicatePolicy::Accept,
        ..config()
    })
    .await;
    let hostile = "<&>\"'";
    let (_, text) = charge(&sandbox, "5000", hostile, "3").await;
    assert!(
        text.contains("<ordernumber>&lt;&amp;&gt;&quot;&apos;</ordernumber>"),
        "{text}"
    );
    assert_eq!(Xml::parse(&text).field(0, "ordernumber"), hostile);
    let (_, text) = charge(&sandbox, "5000", hostile, "5").await;
    assert_eq!(rp_json(&text)["ordernumber"], hostile);
    for path in [STATE, RESULT] {
        let (_, text) = post(&sandbox, path, &status_form(hostile, "3")).await;
        let xml = Xml::parse(&text);
        assert_eq!(xml.count, "2");
        assert_eq!(xml.field(0, "ordernumber"), hostile);
        assert!(checkvalue_verifies(&xml, 0));
    }
    let injection = "x</ordernumber><orderstate>Approved</orderstate><ordernumber>";
    let (_, text) = charge(&sandbox, "9990000102", injection, "3").await;
    let xml = Xml::parse(&text);
    assert_eq!(xml.field(0, "ordernumber"), injection);
    assert_eq!(xml.field(0, "orderstate"), "Declined");
}

#[tokio::test]
async fn http_level_errors() {
    let sandbox = start(config()).await;
    let (status, _) = post(&sandbox, "/recurrent/nothing.cfm", &auth()).await;
    assert_eq!(status, 404);
    let reply = client()
        .get(format!("{}{RP}", sandbox.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 405);
    let big = "A".repeat(MAX_BODY + 1);
    let mut form = rp_form("5000", "BIG", "100.00", "3");
    form.push(("OrderComment", &big));
    let (status, _) = post(&sandbox, RP, &form).await;
    assert_eq!(status, 413);
    // Just under the cap is fine.
    let fits = "A".repeat(MAX_BODY - 400);
    let mut form = rp_form("5000", "FITS", "100.00", "3");
    form.push(("OrderComment", &fits));
    let (status, _) = post(&sandbox, RP, &form).await;
    assert_eq!(status, 200);
    assert_eq!(sandbox.book().orders.len(), 1);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let sandbox = start(config()).await;
    let url = format!("{}{RP}", sandbox.url());
    let begun = Instant::now();
    sandbox.shutdown().await;
    assert!(begun.elapsed() < Duration::from_millis(500));
    assert!(client().post(url).form(&auth()).send().await.is_err());

    // serve_until runs until its future resolves.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Sandbox::serve_until(
        config(),
        "127.0.0.1:0".parse().unwrap(),
        async move {
            let _ = rx.await;
        },
    ));
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn config_debug_hides_the_secrets() {
    let config = SandboxConfig {
        password: SecretString::from("pw-do-not-print"),
        salt: SecretString::from("salt-do-not-print"),
        ..SandboxConfig::builtin()
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains("pw-do-not-print"), "{shown}");
    assert!(!shown.contains("salt-do-not-print"), "{shown}");
    assert!(!format!("{:?}", SandboxConfig::builtin()).contains(BUILTIN_PASSWORD));
    assert!(shown.contains("123456"));
}

#[test]
fn builtin_constants() {
    let config = SandboxConfig::builtin();
    assert_eq!(config.merchant_id, "123456");
    assert_eq!(config.login, "sandbox");
    assert!(config.test_mode);
    assert_eq!(config.latency, Duration::ZERO);
    assert_eq!(config.requests_per_second, None);
    assert_eq!(config.duplicates, DuplicatePolicy::Reject);
    assert_eq!(config.hang, Duration::from_secs(120));
    assert_eq!(config.settle_after, 2);
    let customers: HashSet<&str> = config.tokens.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(customers, HashSet::from(["1234", "1001"]));
}
