//! `recurrentd books`: compare the gateway's books for a local day with the ledger now
//! (`crate::books`), or acknowledge a finding.

use std::sync::{Arc, Mutex};

use chrono::{NaiveDate, Utc};
use clap::Args;
use serde_json::json;

use super::exit;
use super::ops::{open, operator};
use super::tokens::{client, gateway_failure};
use crate::books::{self, BooksError};
use crate::config::Config;
use crate::store::Access;

#[derive(Debug, Args)]
pub struct BooksArgs {
    /// The local day to compare (billing.timezone), YYYY-MM-DD; default yesterday.
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with = "ack")]
    pub date: Option<NaiveDate>,
    /// Acknowledge the finding with this id (from `status` or the findings list): it leaves
    /// `status`. Needs --reason.
    #[arg(long, value_name = "ID", requires = "reason")]
    pub ack: Option<i64>,
    /// Why (recorded in the ledger with your user name).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: &BooksArgs) -> u8 {
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    if let Some(id) = args.ack {
        let reason = args.reason.as_deref().unwrap_or("");
        return match store.acknowledge_book_finding(id, &operator(), reason, Utc::now()) {
            Ok(true) => {
                println!("Finding {id} acknowledged.");
                exit::OK
            }
            Ok(false) => {
                eprintln!("recurrentd: no unacknowledged books finding {id}");
                exit::PROBLEMS
            }
            Err(error) => {
                eprintln!("recurrentd: {error}");
                exit::store(&error)
            }
        };
    }
    let zone = config.billing.timezone;
    let date = args.date.unwrap_or_else(|| {
        let today = Utc::now().with_timezone(&zone).date_naive();
        today.pred_opt().unwrap_or(today)
    });
    let client = match client(config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let store = Arc::new(Mutex::new(store));
    let result = runtime.block_on(books::run(&client, store, date, zone, Utc::now()));
    let report = match result {
        Ok(report) => report,
        Err(BooksError::Gateway(outcome)) => {
            let code =
                gateway_failure(&format!("reading the gateway's books for {date}"), &outcome);
            // Exit 1 means findings here: anything but our configuration is "unavailable".
            return if code == exit::CONFIG {
                code
            } else {
                exit::UNAVAILABLE
            };
        }
        Err(BooksError::Store(error)) => {
            eprintln!("recurrentd: {error}");
            return exit::store(&error);
        }
        Err(error) => {
            eprintln!("recurrentd: {error}");
            return exit::INTERNAL;
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
        value["clean"] = json!(report.clean());
        println!("{value}");
    } else {
        println!(
            "Books of {date} ({} to {}): {} of our orders at the gateway, {} approved in the \
             ledger.",
            report.window_start, report.window_end, report.gateway_orders, report.ledger_approved
        );
        if report.clean() {
            println!("Clean: the gateway's books match the ledger.");
        } else {
            println!(
                "{} finding(s) ({} new in this run):",
                report.findings.len(),
                report.new_findings
            );
            for f in &report.findings {
                println!(
                    "  #{:<4} {:<16} {:<40} {:<20} {}{}",
                    f.id,
                    f.kind,
                    f.order_number,
                    f.subscription_id.as_deref().unwrap_or("-"),
                    f.detail,
                    if f.acknowledged {
                        " (acknowledged)"
                    } else {
                        ""
                    }
                );
            }
            println!(
                "Look each one up at the gateway's portal; `recurrentd books --ack ID --reason ...` \
                 once handled."
            );
        }
    }
    if report.clean() {
        exit::OK
    } else {
        exit::PROBLEMS
    }
}
