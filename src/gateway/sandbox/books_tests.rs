//! resultbydate.cfm over real HTTP, read by the real parser: the window rule, both formats,
//! every record's checkvalue, and the `55x` faults as the books show them.

use chrono::{Datelike, Duration as ChronoDuration, Timelike, Utc};
use secrecy::SecretString;

use super::*;
use crate::gateway::checkvalue::{ResultFields, verify_result};
use crate::gateway::wire::{self, Reply};

const RESULTS: &str = "/resultbydate/resultbydate.cfm";

async fn post(sandbox: &Sandbox, path: &str, form: &[(&str, String)]) -> String {
    reqwest::Client::new()
        .post(format!("{}{path}", sandbox.url()))
        .form(form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn auth() -> Vec<(&'static str, String)> {
    vec![
        ("Merchant_ID", BUILTIN_MERCHANT_ID.to_string()),
        ("Login", BUILTIN_LOGIN.to_string()),
        ("Password", BUILTIN_PASSWORD.to_string()),
    ]
}

fn window(hours_back: i64, format: &str) -> Vec<(&'static str, String)> {
    let end = Utc::now() + ChronoDuration::minutes(1);
    let start = end - ChronoDuration::hours(hours_back);
    let mut form = auth();
    form.push(("Format", format.to_string()));
    for (names, t) in [
        (
            [
                "StartYear",
                "StartMonth",
                "StartDay",
                "StartHour",
                "StartMin",
            ],
            start,
        ),
        (["EndYear", "EndMonth", "EndDay", "EndHour", "EndMin"], end),
    ] {
        let values = [t.year() as u32, t.month(), t.day(), t.hour(), t.minute()];
        for (name, value) in names.into_iter().zip(values) {
            form.push((name, value.to_string()));
        }
    }
    form
}

async fn charge(sandbox: &Sandbox, bill: &str, order: &str) {
    let mut form = auth();
    form.extend([
        ("BillNumber", bill.to_string()),
        ("OrderNumber", order.to_string()),
        ("Amount", "100.00".to_string()),
        ("Currency", "RUB".to_string()),
        ("Format", "3".to_string()),
    ]);
    let _ = reqwest::Client::new()
        .post(format!("{}/recurrent/rp.cfm", sandbox.url()))
        .form(&form)
        .send()
        .await;
}

fn verified(record: &wire::OrderRecord) -> bool {
    let fields = ResultFields {
        merchant_id: BUILTIN_MERCHANT_ID,
        order_number: record.text("ordernumber"),
        order_amount: record.text("orderamount"),
        order_currency: record.text("ordercurrency"),
        order_state: record.text("orderstate"),
    };
    verify_result(
        &SecretString::from(BUILTIN_SALT),
        &fields,
        record.text("checkvalue"),
    )
}

#[tokio::test]
async fn the_books_list_every_order_of_the_window_in_both_formats() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Nothing yet: an explicitly empty list, in both formats.
    for format in ["3", "5"] {
        let body = post(&sandbox, RESULTS, &window(2, format)).await;
        assert_eq!(
            wire::parse_reply(body.as_bytes()),
            Ok(Reply::Orders(vec![]))
        );
    }
    charge(&sandbox, "5100000000000001", "o-ok").await;
    charge(&sandbox, "9990000553", "o-553").await;
    charge(&sandbox, "9990000554", "o-554").await;
    charge(&sandbox, "9990000555", "o-555").await;
    charge(&sandbox, "9990000556", "o-556").await;
    charge(&sandbox, "9990000557", "o-557").await;
    charge(&sandbox, "9990000777", "o-777").await;
    for format in ["3", "5"] {
        let body = post(&sandbox, RESULTS, &window(2, format)).await;
        let Ok(Reply::Orders(orders)) = wire::parse_reply(body.as_bytes()) else {
            panic!("{body}");
        };
        let by = |n: &str| orders.iter().find(|o| o.text("ordernumber") == n).cloned();
        assert!(by("o-555").is_none(), "555 is left out");
        assert_eq!(orders.len(), 7, "{body}");
        for (order, state, amount, ok) in [
            ("o-ok", "Approved", "100.00", true),
            ("o-553", "Approved", "101.00", true),
            ("o-554", "Approved", "100.00", true),
            ("o-554-E", "Approved", "100.00", true),
            ("o-556", "Declined", "100.00", true),
            ("o-557", "Approved", "100.00", false),
            ("o-777", "Approved", "100.00", true),
        ] {
            let record = by(order).unwrap_or_else(|| panic!("{order}: {body}"));
            assert_eq!(record.text("orderstate"), state, "{order}");
            assert_eq!(record.text("orderamount"), amount, "{order}");
            assert_eq!(verified(&record), ok, "{order}");
            assert_eq!(record.text("testmode"), "1");
        }
    }
    // More than a day: fault 4/130; wrong password: 7/141.
    let body = post(&sandbox, RESULTS, &window(25, "3")).await;
    assert!(
        matches!(
            wire::parse_reply(body.as_bytes()),
            Ok(Reply::Fault {
                firstcode: 4,
                secondcode: 130,
                ..
            })
        ),
        "{body}"
    );
    let mut bad = window(2, "5");
    bad[2].1 = "wrong".to_string();
    let body = post(&sandbox, RESULTS, &bad).await;
    assert!(
        matches!(
            wire::parse_reply(body.as_bytes()),
            Ok(Reply::Fault {
                firstcode: 7,
                secondcode: 141,
                ..
            })
        ),
        "{body}"
    );
    // The cap leaves rows out silently.
    sandbox.set_result_cap(Some(2));
    let body = post(&sandbox, RESULTS, &window(2, "3")).await;
    let Ok(Reply::Orders(orders)) = wire::parse_reply(body.as_bytes()) else {
        panic!("{body}");
    };
    assert_eq!(orders.len(), 2);
}

#[tokio::test]
async fn a_551_order_is_in_the_books_but_never_found_by_status() {
    let sandbox = Sandbox::start(SandboxConfig::builtin(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    charge(&sandbox, "9990000551", "h-1").await;
    charge(&sandbox, "9990000551", "h-2").await;
    let mut form = auth();
    form.push(("Ordernumber", "h-1".to_string()));
    let body = post(&sandbox, "/orderstate/orderstate.cfm", &form).await;
    assert_eq!(
        wire::parse_reply(body.as_bytes()),
        Ok(Reply::Orders(vec![]))
    );
    let mut form = auth();
    form.push(("Ordernumber", "h-2".to_string()));
    let body = post(&sandbox, "/orderstate/orderstate.cfm", &form).await;
    let Ok(Reply::Orders(orders)) = wire::parse_reply(body.as_bytes()) else {
        panic!("{body}");
    };
    assert_eq!(orders.len(), 1, "the later charges are found");
    let body = post(&sandbox, RESULTS, &window(2, "3")).await;
    let Ok(Reply::Orders(orders)) = wire::parse_reply(body.as_bytes()) else {
        panic!("{body}");
    };
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().all(|o| o.text("orderstate") == "Approved"));
}
