//! Reading Assist's replies: XML (`Format=3`) and JSON (`Format=5`) into one neutral shape.
//!
//! A reply is either a request-level [`Reply::Fault`] (`firstcode`/`secondcode` attributes on
//! `<result>`, or a JSON `fault` object, bare or wrapped) or zero or more [`OrderRecord`]s. Field
//! names are matched without regard to case, values are trimmed of surrounding whitespace and
//! otherwise kept exactly as sent (check values are computed over them). Nothing here decides what
//! a reply *means*; that is [`super::reply`].
//!
//! The parser is strict where leniency could hide a forgery or a truncation: a body that is not
//! well-formed, names a field twice in one order, or whose `count` disagrees with the orders it
//! carries is an error, and an error is never a decline or a success. DTDs are refused, so a
//! hostile reply cannot expand entities; the caller caps the body's size before parsing.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Longest reply body read from the gateway. Real replies are a few kilobytes.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Most XML nodes a reply may hold (a bound on work for hostile input).
const MAX_XML_NODES: u32 = 50_000;

/// One order as a reply describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderRecord {
    fields: BTreeMap<String, String>,
    /// `operation` blocks (orderresult), each a set of fields.
    pub operations: Vec<BTreeMap<String, String>>,
}

impl OrderRecord {
    /// A field's value (name in any case), trimmed; `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// A field's value, or `""` when absent.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    pub(crate) fn insert(&mut self, name: &str, value: String) -> Result<(), ParseError> {
        let key = name.to_ascii_lowercase();
        if self.fields.contains_key(&key) {
            return Err(ParseError(format!(
                "field {key:?} appears twice in one order"
            )));
        }
        self.fields.insert(key, value);
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> OrderRecord {
        let mut record = OrderRecord::default();
        for (name, value) in pairs {
            record
                .fields
                .insert(name.to_ascii_lowercase(), value.to_string());
        }
        record
    }
}

/// What a reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A request-level error (never `0/0`).
    Fault {
        firstcode: u32,
        secondcode: u32,
        /// The gateway's own words, if any (JSON `detail`).
        detail: Option<String>,
    },
    /// Orders (possibly none: "not found").
    Orders(Vec<OrderRecord>),
}

/// Why a reply could not be read. Its message never quotes more than a short, sanitised
/// excerpt of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn bad(message: impl Into<String>) -> ParseError {
    ParseError(message.into())
}

/// Parses a reply of an order service (rp.cfm, orderstate.cfm, orderresult.cfm); tokenpay.cfm
/// has [`parse_token_pay`].
///
/// The format is taken from the body itself (`<` is XML, `{` is JSON), not from what was asked:
/// a gateway that answers an error page in another format is still understood.
pub fn parse_reply(body: &[u8]) -> Result<Reply, ParseError> {
    // Assist answers in UTF-8; a body in another charset (windows-1251 names in orderresult)
    // is read lossily: every field recurrentd relies on is ASCII, and the check value covers
    // them, so a mangled name cannot make a forged order pass.
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    match trimmed.as_bytes().first() {
        Some(b'<') => parse_xml(trimmed),
        Some(b'{') => parse_json(trimmed),
        Some(_) => Err(bad(format!(
            "reply is neither XML nor JSON (starts with {:?})",
            excerpt(trimmed)
        ))),
        None => Err(bad("reply is empty")),
    }
}

/// A short, printable excerpt of a body for error messages.
pub fn excerpt(text: &str) -> String {
    text.chars()
        .take(40)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn parse_code(what: &str, text: &str) -> Result<u32, ParseError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u32>()
        .map_err(|_| bad(format!("{what} {:?} is not a number", excerpt(text))))
}

// --- XML -------------------------------------------------------------------------------------

fn parse_xml(text: &str) -> Result<Reply, ParseError> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|e| bad(format!("malformed XML: {e}")))?;
    let root = doc.root_element();
    if !root.tag_name().name().eq_ignore_ascii_case("result") {
        return Err(bad(format!(
            "XML root is <{}>, expected <result>",
            excerpt(root.tag_name().name())
        )));
    }
    let attribute = |name: &str| {
        root.attributes()
            .find(|a| a.name().eq_ignore_ascii_case(name))
            .map(|a| a.value())
    };
    let firstcode = parse_code("firstcode", attribute("firstcode").unwrap_or(""))?;
    let secondcode = parse_code("secondcode", attribute("secondcode").unwrap_or(""))?;
    if firstcode != 0 || secondcode != 0 {
        return Ok(Reply::Fault {
            firstcode,
            secondcode,
            detail: None,
        });
    }
    let mut orders = Vec::new();
    collect_xml_orders(root, &mut orders)?;
    let explicit_empty = root
        .children()
        .any(|n| is_element(&n, "orders") && !n.children().any(|c| c.is_element()));
    check_count(attribute("count"), orders.len(), explicit_empty)?;
    Ok(Reply::Orders(orders))
}

fn is_element(node: &roxmltree::Node<'_, '_>, name: &str) -> bool {
    node.is_element() && node.tag_name().name().eq_ignore_ascii_case(name)
}

fn collect_xml_orders(
    node: roxmltree::Node<'_, '_>,
    orders: &mut Vec<OrderRecord>,
) -> Result<(), ParseError> {
    for child in node.children().filter(|n| n.is_element()) {
        if is_element(&child, "order") {
            orders.push(xml_order(child)?);
        } else {
            collect_xml_orders(child, orders)?;
        }
    }
    Ok(())
}

fn xml_text(node: roxmltree::Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<String>()
        .trim()
        .to_string()
}

fn xml_order(node: roxmltree::Node<'_, '_>) -> Result<OrderRecord, ParseError> {
    let mut record = OrderRecord::default();
    for field in node.children().filter(|n| n.is_element()) {
        if is_element(&field, "operation") {
            let mut operation = BTreeMap::new();
            for op_field in field.children().filter(|n| n.is_element()) {
                operation.insert(
                    op_field.tag_name().name().to_ascii_lowercase(),
                    xml_text(op_field),
                );
            }
            record.operations.push(operation);
        } else if field.children().any(|n| n.is_element()) {
            // A wrapper such as <operations>: its operation children are what count.
            for op in field.children().filter(|n| is_element(n, "operation")) {
                let mut operation = BTreeMap::new();
                for op_field in op.children().filter(|n| n.is_element()) {
                    operation.insert(
                        op_field.tag_name().name().to_ascii_lowercase(),
                        xml_text(op_field),
                    );
                }
                record.operations.push(operation);
            }
        } else {
            record.insert(field.tag_name().name(), xml_text(field))?;
        }
    }
    Ok(record)
}

/// What the reply's `count` and the orders found say together. An empty list is taken as
/// "not found" only on explicit evidence (`count` of 0, or an explicitly empty order list): a
/// reply of an unfamiliar shape must never read as "not found", which after the settle window
/// lets a new attempt start.
fn check_count(count: Option<&str>, found: usize, explicit_empty: bool) -> Result<(), ParseError> {
    let count = count.map(|c| parse_code("count", c)).transpose()?;
    match (count, found) {
        (Some(0), 0) => Ok(()),
        (None, 0) if explicit_empty => Ok(()),
        (_, 0) => Err(bad(
            "reply carries no order and does not say that none was found (count=0)",
        )),
        (Some(0), n) => Err(bad(format!("reply says count=0 but carries {n} order(s)"))),
        // A positive count that differs (orderresult may count operations) is not held against
        // an otherwise well-formed reply; every order in it is verified on its own.
        _ => Ok(()),
    }
}

// --- JSON ------------------------------------------------------------------------------------

/// A JSON scalar as the gateway wrote it. Numbers keep their own text (`arbitrary_precision`).
fn json_scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

fn json_get<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// A `{fault: {...}}` or bare `{faultcode, faultstring, detail}` object, if `value` is one.
pub(crate) fn json_fault(value: &Value) -> Option<Result<Reply, ParseError>> {
    let object = value.as_object()?;
    let fault = match json_get(object, "fault") {
        Some(Value::Object(inner)) => inner,
        Some(_) => return Some(Err(bad("JSON fault is not an object"))),
        None if json_get(object, "faultcode").is_some() => object,
        None => return None,
    };
    let code = |name: &str| -> Result<u32, ParseError> {
        match json_get(fault, name) {
            None => Ok(0),
            Some(v) => match json_scalar(v) {
                Some(text) => parse_code(name, &text),
                None => Err(bad(format!("JSON fault {name} is not a scalar"))),
            },
        }
    };
    let result = (|| {
        let firstcode = code("faultcode")?;
        // `faultstring` is the second code in Assist's JSON faults, but SOAP-style faults put
        // text there: then it is detail, and the second code is unknown (0).
        let (secondcode, text) = match code("faultstring") {
            Ok(code) => (code, None),
            Err(_) => (0, json_get(fault, "faultstring").and_then(json_scalar)),
        };
        let detail = json_get(fault, "detail").and_then(json_scalar).or(text);
        if firstcode == 0 && secondcode == 0 {
            return Err(bad("JSON fault with codes 0/0"));
        }
        Ok(Reply::Fault {
            firstcode,
            secondcode,
            detail,
        })
    })();
    Some(result)
}

fn parse_json(text: &str) -> Result<Reply, ParseError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    if let Some(fault) = json_fault(&value) {
        return fault;
    }
    let Value::Object(top) = value else {
        return Err(bad("JSON reply is not an object"));
    };
    // The order service's own wrappers (`rp`, `orderstate`, `result`, ...): descend while the
    // object holds exactly one object (beside scalar codes) and nothing that is order data.
    let mut body = &top;
    let mut codes: Vec<&serde_json::Map<String, Value>> = vec![&top];
    for _ in 0..4 {
        let is_data = ["ordernumber", "order", "orders", "count"]
            .iter()
            .any(|k| json_get(body, k).is_some());
        let objects: Vec<&serde_json::Map<String, Value>> =
            body.values().filter_map(Value::as_object).collect();
        match objects.as_slice() {
            [inner] if !is_data => {
                body = inner;
                codes.push(inner);
            }
            _ => break,
        }
    }
    if let Some(fault) = json_fault(&Value::Object(body.clone())) {
        return fault;
    }
    let scalar_code = |name: &str| -> Result<u32, ParseError> {
        let mut code = 0;
        for level in &codes {
            if let Some(v) = json_get(level, name) {
                let text = json_scalar(v).ok_or_else(|| bad(format!("{name} is not a scalar")))?;
                code = code.max(parse_code(name, &text)?);
            }
        }
        Ok(code)
    };
    let firstcode = scalar_code("firstcode")?;
    let secondcode = scalar_code("secondcode")?;
    if firstcode != 0 || secondcode != 0 {
        return Ok(Reply::Fault {
            firstcode,
            secondcode,
            detail: None,
        });
    }
    let mut orders = Vec::new();
    let mut explicit_empty = false;
    if json_get(body, "ordernumber").is_some() {
        orders.push(json_order(body)?);
    } else {
        let list = json_get(body, "orders").or_else(|| json_get(body, "order"));
        explicit_empty = match list {
            Some(Value::Null) => true,
            Some(Value::Array(items)) => items.is_empty(),
            _ => false,
        };
        collect_json_orders(list, &mut orders, 0)?;
    }
    let count = json_get(body, "count").and_then(json_scalar);
    check_count(count.as_deref(), orders.len(), explicit_empty)?;
    Ok(Reply::Orders(orders))
}

/// A tokenpay.cfm reply (seed 004). Unlike the other services, a non-zero
/// `firstcode`/`secondcode` may come *with* an order: `3`/`115` (CVC required) carries the order
/// and a `continueurl` where the customer must go on. So the codes, the orders and the URL are
/// all kept, and a fault is a [`Reply::Fault`] only when no order came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPayWire {
    pub reply: Reply,
    /// The top-level codes (`0`/`0` when absent).
    pub firstcode: u32,
    pub secondcode: u32,
    /// Where the customer completes 3-D Secure or enters the CVC, when the reply gives one.
    pub continue_url: Option<String>,
}

/// Parses a tokenpay.cfm reply. A reply that is not JSON is read like any other service's (an
/// XML fault page, say) and carries no continue URL.
pub fn parse_token_pay(body: &[u8]) -> Result<TokenPayWire, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("reply is not UTF-8"))?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('{') {
        let reply = parse_reply(body)?;
        let (firstcode, secondcode) = match &reply {
            Reply::Fault {
                firstcode,
                secondcode,
                ..
            } => (*firstcode, *secondcode),
            Reply::Orders(_) => (0, 0),
        };
        return Ok(TokenPayWire {
            reply,
            firstcode,
            secondcode,
            continue_url: None,
        });
    }
    let value: Value =
        serde_json::from_str(trimmed).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let fault_wire = |reply: Reply| -> TokenPayWire {
        let (firstcode, secondcode) = match &reply {
            Reply::Fault {
                firstcode,
                secondcode,
                ..
            } => (*firstcode, *secondcode),
            Reply::Orders(_) => (0, 0),
        };
        TokenPayWire {
            reply,
            firstcode,
            secondcode,
            continue_url: None,
        }
    };
    if let Some(fault) = json_fault(&value) {
        return fault.map(fault_wire);
    }
    let Value::Object(top) = value else {
        return Err(bad("JSON reply is not an object"));
    };
    let body = match top.iter().next() {
        Some((_, Value::Object(inner))) if top.len() == 1 => inner,
        _ => &top,
    };
    if let Some(fault) = json_fault(&Value::Object(body.clone())) {
        return fault.map(fault_wire);
    }
    let code = |name: &str| -> Result<u32, ParseError> {
        match json_get(body, name) {
            None => Ok(0),
            Some(v) => parse_code(
                name,
                &json_scalar(v).ok_or_else(|| bad(format!("{name} is not a scalar")))?,
            ),
        }
    };
    let firstcode = code("firstcode")?;
    let secondcode = code("secondcode")?;
    let continue_url = json_get(body, "continueurl")
        .and_then(json_scalar)
        .filter(|url| !url.is_empty());
    let mut orders = Vec::new();
    if json_get(body, "ordernumber").is_some() {
        orders.push(json_order(body)?);
    } else {
        let list = json_get(body, "orders").or_else(|| json_get(body, "order"));
        collect_json_orders(list, &mut orders, 0)?;
    }
    let reply = if orders.is_empty() {
        if firstcode == 0 && secondcode == 0 {
            // A payment reply always names its order; an empty one is not an answer.
            return Err(bad("tokenpay reply carries neither an order nor a fault"));
        }
        Reply::Fault {
            firstcode,
            secondcode,
            detail: None,
        }
    } else {
        let count = json_get(body, "count").and_then(json_scalar);
        check_count(count.as_deref(), orders.len(), false)?;
        Reply::Orders(orders)
    };
    Ok(TokenPayWire {
        reply,
        firstcode,
        secondcode,
        continue_url,
    })
}

fn collect_json_orders(
    value: Option<&Value>,
    orders: &mut Vec<OrderRecord>,
    depth: usize,
) -> Result<(), ParseError> {
    if depth > 3 {
        return Err(bad("JSON orders nested too deeply"));
    }
    match value {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for item in items {
                collect_json_orders(Some(item), orders, depth + 1)?;
            }
            Ok(())
        }
        Some(Value::Object(object)) => {
            if json_get(object, "ordernumber").is_some() {
                orders.push(json_order(object)?);
                Ok(())
            } else {
                // `{"orders": {"order": [...]}}`
                collect_json_orders(json_get(object, "order"), orders, depth + 1)
            }
        }
        Some(_) => Err(bad("JSON order list is not an object or array")),
    }
}

fn json_order(object: &serde_json::Map<String, Value>) -> Result<OrderRecord, ParseError> {
    let mut record = OrderRecord::default();
    for (name, value) in object {
        if let Some(text) = json_scalar(value) {
            record.insert(name, text)?;
            continue;
        }
        if !(name.eq_ignore_ascii_case("operations") || name.eq_ignore_ascii_case("operation")) {
            // Nested data we do not use (card assets, cheque items): ignored.
            continue;
        }
        let items: Vec<&Value> = match value {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in items {
            let Value::Object(op) = item else {
                return Err(bad("JSON operation is not an object"));
            };
            let operation = op
                .iter()
                .filter_map(|(k, v)| json_scalar(v).map(|s| (k.to_ascii_lowercase(), s)))
                .collect();
            record.operations.push(operation);
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests;
