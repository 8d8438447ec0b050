//! The sandbox's reply writers. XML is written by hand (every text escaped); JSON goes through
//! `serde_json`, with every order field a string as Assist sends them.

use serde_json::{Map, Value, json};

use super::book::Card;

/// The XML declaration every XML reply starts with.
const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// Reply format of the form services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Format=3` (and the default).
    Xml,
    /// `Format=5`.
    Json,
}

/// Escapes text for an XML element or attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// An ordered list of (tag, text) pairs: one order's or operation's fields.
pub type Fields = Vec<(&'static str, String)>;

/// Writes `fields` as `<tag>text</tag>` lines at `indent` spaces.
fn xml_fields(out: &mut String, fields: &Fields, indent: usize) {
    for (tag, text) in fields {
        out.push_str(&" ".repeat(indent));
        out.push_str(&format!("<{tag}>{}</{tag}>\n", escape(text)));
    }
}

/// The fields as a JSON object of strings.
fn json_fields(fields: &Fields) -> Map<String, Value> {
    fields
        .iter()
        .map(|(tag, text)| ((*tag).to_string(), Value::String(text.clone())))
        .collect()
}

/// A request-level fault.
pub fn fault(format: Format, firstcode: u32, secondcode: u32, detail: &str) -> String {
    match format {
        Format::Xml => format!(
            "{XML_DECL}<result firstcode=\"{firstcode}\" secondcode=\"{secondcode}\" count=\"0\"></result>"
        ),
        Format::Json => json!({
            "fault": {
                "faultcode": firstcode,
                "faultstring": secondcode,
                "detail": detail,
            }
        })
        .to_string(),
    }
}

/// The rp.cfm reply for one order.
pub fn rp(format: Format, order: &Fields) -> String {
    match format {
        Format::Xml => {
            let mut out = String::from(XML_DECL);
            out.push_str("<result firstcode=\"0\" secondcode=\"0\" count=\"1\">\n");
            out.push_str(" <orders>\n  <order>\n");
            xml_fields(&mut out, order, 3);
            out.push_str("  </order>\n </orders>\n</result>");
            out
        }
        Format::Json => json!({ "rp": Value::Object(json_fields(order)) }).to_string(),
    }
}

/// The wscancel.cfm reply for one order (the operation-result DTD, as rp.cfm's; in JSON under
/// `cancel` [U]).
pub fn cancel(format: Format, order: &Fields) -> String {
    match format {
        Format::Json => json!({ "cancel": Value::Object(json_fields(order)) }).to_string(),
        Format::Xml => rp(format, order),
    }
}

/// One order of an orderstate/orderresult reply: its fields and, for orderresult, its
/// operations.
#[derive(Debug, Clone)]
pub struct StatusOrder {
    pub fields: Fields,
    pub operations: Option<Vec<Fields>>,
}

/// An orderstate (`root = "orderstate"`) or orderresult (`root = "orderresult"`) reply with at
/// least one order. (None found is [`not_found`].)
pub fn status(format: Format, root: &str, orders: &[StatusOrder]) -> String {
    let count = orders.len();
    match format {
        Format::Xml => {
            let mut out = String::from(XML_DECL);
            out.push_str(&format!(
                "<result firstcode=\"0\" secondcode=\"0\" count=\"{count}\">\n"
            ));
            for order in orders {
                out.push_str(" <order>\n");
                xml_fields(&mut out, &order.fields, 2);
                for operation in order.operations.iter().flatten() {
                    out.push_str("  <operation>\n");
                    xml_fields(&mut out, operation, 3);
                    out.push_str("  </operation>\n");
                }
                out.push_str(" </order>\n");
            }
            out.push_str("</result>");
            out
        }
        Format::Json => {
            let list: Vec<Value> = orders
                .iter()
                .map(|order| {
                    let mut object = json_fields(&order.fields);
                    if let Some(operations) = &order.operations {
                        let operations = operations
                            .iter()
                            .map(|op| Value::Object(json_fields(op)))
                            .collect();
                        object.insert("operations".to_string(), Value::Array(operations));
                    }
                    Value::Object(object)
                })
                .collect();
            let mut body = Map::new();
            body.insert(
                root.to_string(),
                json!({
                    "firstcode": "0",
                    "secondcode": "0",
                    "count": count.to_string(),
                    "order": list,
                }),
            );
            Value::Object(body).to_string()
        }
    }
}

/// A status query that found nothing: an empty XML result, or JSON fault 10/107.
pub fn not_found(format: Format) -> String {
    match format {
        Format::Xml => {
            format!("{XML_DECL}<result firstcode=\"0\" secondcode=\"0\" count=\"0\"></result>")
        }
        Format::Json => fault(Format::Json, 10, 107, "order not found"),
    }
}

/// token.cfm: the customer's cards as a JSON array (empty for none).
pub fn tokens(cards: &[Card]) -> String {
    let list: Vec<Value> = cards
        .iter()
        .map(|card| {
            json!({
                "expire": card.expire,
                "token": card.token,
                "bank": card.bank,
                "brand": card.brand,
                "bin": card.bin,
                "active": card.active,
                "needCVC": card.need_cvc,
                "post": card.post,
                "assets": [],
            })
        })
        .collect();
    Value::Array(list).to_string()
}

/// rem_token.cfm's success reply.
pub fn token_removed(token: &str) -> String {
    json!({ "message": format!("Token {token} is removed") }).to_string()
}

/// The HTML page of an HTTP error (500, 503, 429).
pub fn error_page(status: u16, reason: &str) -> String {
    format!(
        "<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>"
    )
}

/// The garbage of behaviour 666: an HTML page cut off mid-sentence, with HTTP 200.
pub fn garbage() -> String {
    "<html><body>Service temporarily unavai".to_string()
}

/// tokenpay.cfm's reply (seed 004): `{"order": [{order fields..., "operations": [{...}]}],
/// "packetdate": ...}`, plus `firstcode`, `secondcode` and `continueurl` when the customer must
/// act (3-D Secure or CVC) before the payment can go on.
pub fn token_pay(
    order: &Fields,
    operation: &Fields,
    packet_date: &str,
    continuation: Option<(u32, u32, &str)>,
) -> String {
    let mut object = json_fields(order);
    object.insert(
        "operations".to_string(),
        Value::Array(vec![Value::Object(json_fields(operation))]),
    );
    let mut body = Map::new();
    body.insert(
        "order".to_string(),
        Value::Array(vec![Value::Object(object)]),
    );
    body.insert(
        "packetdate".to_string(),
        Value::String(packet_date.to_string()),
    );
    if let Some((firstcode, secondcode, url)) = continuation {
        body.insert(
            "firstcode".to_string(),
            Value::String(firstcode.to_string()),
        );
        body.insert(
            "secondcode".to_string(),
            Value::String(secondcode.to_string()),
        );
        body.insert("continueurl".to_string(), Value::String(url.to_string()));
    }
    Value::Object(body).to_string()
}
