use super::*;
use proptest::prelude::*;

fn orders(body: &str) -> Vec<OrderRecord> {
    match parse_reply(body.as_bytes()) {
        Ok(Reply::Orders(orders)) => orders,
        other => panic!("expected orders, got {other:?}"),
    }
}

fn fault(body: &str) -> (u32, u32) {
    match parse_reply(body.as_bytes()) {
        Ok(Reply::Fault {
            firstcode,
            secondcode,
            ..
        }) => (firstcode, secondcode),
        other => panic!("expected a fault, got {other:?}"),
    }
}

/// The shape of assist-api.md §4.1 (the C5 public fixture), padded as the docs pad it.
const ORDERSTATE_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<result firstcode="0" secondcode="0" count="1">
  <order>
    <ordernumber>ok</ordernumber>
    <billnumber>5775486650107611</billnumber>
    <orderamount>  4.00 </orderamount>
    <ordercurrency>RUB</ordercurrency>
    <orderstate>Canceled</orderstate>
    <packetdate>27.09.2016 23:24</packetdate>
    <signature/>
    <checkvalue>74DEB154081757F1E8097DDFAC35FC5C</checkvalue>
  </order>
</result>"#;

#[test]
fn orderstate_xml_without_orders_wrapper() {
    let list = orders(ORDERSTATE_XML);
    assert_eq!(list.len(), 1);
    let o = &list[0];
    assert_eq!(o.get("ordernumber"), Some("ok"));
    assert_eq!(o.get("OrderAmount"), Some("4.00"));
    assert_eq!(o.get("orderstate"), Some("Canceled"));
    assert_eq!(o.get("signature"), Some(""));
    assert_eq!(o.get("testmode"), None);
}

#[test]
fn rp_xml_with_orders_wrapper_and_odd_case() {
    let body = r#"<RESULT FirstCode='0' SecondCode='0' Count='1'><Orders><Order>
        <OrderNumber>A1_R1</OrderNumber><ResponseCode>AS000</ResponseCode>
        <OrderState>In Process</OrderState><TestMode>1</TestMode>
        <orderamount>100.00</orderamount><ordercurrency>RUB</ordercurrency>
        </Order></Orders></RESULT>"#;
    let list = orders(body);
    assert_eq!(list[0].get("orderstate"), Some("In Process"));
    assert_eq!(list[0].get("responsecode"), Some("AS000"));
}

#[test]
fn xml_faults_and_not_found() {
    assert_eq!(
        fault(r#"<result firstcode='10' secondcode='100' count='0'></result>"#),
        (10, 100)
    );
    assert_eq!(
        fault(r#"<result firstcode="7" secondcode="141"/>"#),
        (7, 141)
    );
    assert!(orders(r#"<result firstcode="0" secondcode="0" count="0"/>"#).is_empty());
}

#[test]
fn orderresult_operations() {
    let body = r#"<result firstcode="0" secondcode="0" count="1"><order>
        <ordernumber>A1</ordernumber><testmode>0</testmode><orderstate>Declined</orderstate>
        <operation><operationtype>100</operationtype><responsecode>AS102</responsecode></operation>
        <operation><operationtype>100</operationtype><responsecode>AS104</responsecode></operation>
        </order></result>"#;
    let o = &orders(body)[0];
    assert_eq!(o.operations.len(), 2);
    assert_eq!(o.operations[1]["responsecode"], "AS104");
}

#[test]
fn json_shapes() {
    let rp = r#"{"rp":{"ordernumber":"A1_R1","responsecode":"AS000","orderstate":"Approved",
        "orderamount":"100.00","ordercurrency":"RUB","testmode":"1"}}"#;
    assert_eq!(orders(rp)[0].get("responsecode"), Some("AS000"));
    let state = r#"{"orderstate":{"firstcode":"0","secondcode":"0","count":"2","order":[
        {"ordernumber":"A","orderamount":100.50,"orderstate":"Approved"},
        {"ordernumber":"A","orderamount":"100.50","orderstate":"Declined"}]}}"#;
    let list = orders(state);
    assert_eq!(list.len(), 2);
    // A JSON number keeps its own text: no binary float in between.
    assert_eq!(list[0].get("orderamount"), Some("100.50"));
    let nested = r#"{"result":{"orders":{"order":{"ordernumber":"B","operations":[{"responsecode":"AS101"}]}}}}"#;
    let o = &orders(nested)[0];
    assert_eq!(o.operations[0]["responsecode"], "AS101");
}

#[test]
fn json_faults_both_shapes() {
    assert_eq!(
        fault(r#"{"fault":{"detail":"bad login","faultcode":7,"faultstring":141}}"#),
        (7, 141)
    );
    assert_eq!(
        fault(r#"{"faultcode":"10","faultstring":"107","detail":"not found"}"#),
        (10, 107)
    );
    assert_eq!(
        fault(r#"{"orderstate":{"firstcode":1,"secondcode":3}}"#),
        (1, 3)
    );
    assert!(parse_reply(br#"{"fault":{"faultcode":"Server","faultstring":"oops"}}"#).is_err());
    assert_eq!(
        fault(r#"{"fault":{"faultcode":10,"faultstring":"order not found"}}"#),
        (10, 0)
    );
    assert!(parse_reply(br#"{"fault":"text"}"#).is_err());
}

#[test]
fn malformed_truncated_and_hostile_replies_are_errors() {
    let cut = &ORDERSTATE_XML[..ORDERSTATE_XML.len() / 2];
    let billion_laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<result firstcode="0" secondcode="0" count="1"><order><ordernumber>&lol2;</ordernumber></order></result>"#;
    let external = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<result><order><ordernumber>&x;</ordernumber></order></result>"#;
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let many_nodes = format!("<result>{}</result>", "<x/>".repeat(60_000));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("whitespace", b"  \n ".to_vec()),
        ("html", b"<html><body>502 Bad Gateway</body></html>".to_vec()),
        ("plain text", b"Service temporarily unavailable".to_vec()),
        ("truncated xml", cut.as_bytes().to_vec()),
        ("truncated json", br#"{"rp":{"ordernumber":"A1","respons"#.to_vec()),
        ("dtd entity expansion", billion_laughs.as_bytes().to_vec()),
        ("external entity", external.as_bytes().to_vec()),
        ("deep json", deep_json.into_bytes()),
        ("too many nodes", many_nodes.into_bytes()),
        ("count zero with an order", br#"<result firstcode="0" secondcode="0" count="0"><order><ordernumber>A</ordernumber></order></result>"#.to_vec()),
        ("field twice", br#"<result><order><orderstate>Declined</orderstate><orderstate>Approved</orderstate></order></result>"#.to_vec()),
        ("json field twice by case", br#"{"rp":{"ordernumber":"A","orderstate":"Declined","OrderState":"Approved"}}"#.to_vec()),
        ("non-numeric code", br#"<result firstcode="zero" secondcode="0"/>"#.to_vec()),
        ("json array", b"[1,2]".to_vec()),
        ("json scalar", b"\"Approved\"".to_vec()),
    ];
    for (name, body) in cases {
        assert!(parse_reply(&body).is_err(), "{name} was accepted");
    }
}

/// An empty list reads as "not found" only on explicit evidence: an unfamiliar shape must never
/// let the engine conclude that an order does not exist.
#[test]
fn not_found_needs_explicit_evidence() {
    for body in [
        "{}",
        r#"{"message":"Service unavailable"}"#,
        "<result/>",
        r#"<result firstcode="0" secondcode="0"/>"#,
        "<result><error>x</error></result>",
        r#"{"orderstate":{"firstcode":"0"}}"#,
        r#"{"rp":{}}"#,
    ] {
        assert!(
            parse_reply(body.as_bytes()).is_err(),
            "{body} read as a reply"
        );
    }
    for body in [
        r#"<result firstcode="0" secondcode="0" count="0"/>"#,
        r#"<result firstcode="0" secondcode="0"><orders/></result>"#,
        r#"{"orderstate":{"count":"0"}}"#,
        r#"{"orderstate":{"order":[]}}"#,
    ] {
        assert!(orders(body).is_empty(), "{body}");
    }
}

#[test]
fn json_wrappers_of_unknown_depth() {
    let nested = r#"{"orderstate":{"result":{"count":"1","order":[{"ordernumber":"A","orderstate":"Approved"}]}}}"#;
    assert_eq!(orders(nested)[0].get("orderstate"), Some("Approved"));
    let codes_beside =
        r#"{"firstcode":0,"secondcode":0,"orderstate":{"order":[{"ordernumber":"A"}]}}"#;
    assert_eq!(orders(codes_beside).len(), 1);
    let fault_beside =
        r#"{"firstcode":7,"secondcode":141,"orderstate":{"order":[{"ordernumber":"A"}]}}"#;
    assert_eq!(fault(fault_beside), (7, 141));
    let soap_style = r#"{"fault":{"faultcode":2,"faultstring":"Internal error","detail":""}}"#;
    assert_eq!(fault(soap_style), (2, 0));
}

#[test]
fn a_body_in_another_charset_is_read_lossily() {
    let mut body = br#"<result firstcode="0" secondcode="0" count="1"><order><ordernumber>A</ordernumber><lastname>"#.to_vec();
    body.extend([0xc8, 0xe2, 0xe0, 0xed, 0xee, 0xe2]); // windows-1251
    body.extend(b"</lastname><orderstate>Approved</orderstate></order></result>");
    assert_eq!(
        orders(
            std::str::from_utf8(&String::from_utf8_lossy(&body).into_owned().into_bytes()).unwrap()
        )[0]
        .get("orderstate"),
        Some("Approved")
    );
    assert!(parse_reply(&body).is_ok());
}

proptest! {
    /// Whatever bytes arrive, parsing neither panics nor invents an order that the body does
    /// not name.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_reply(&body);
    }

    /// Any prefix of a good reply is either an error or (for the whole body) the reply itself:
    /// a truncation never yields a different, valid answer.
    #[test]
    fn truncations_are_errors(cut in 0usize..ORDERSTATE_XML.len()) {
        let prefix = &ORDERSTATE_XML.as_bytes()[..cut];
        prop_assert!(parse_reply(prefix).is_err());
    }
}
