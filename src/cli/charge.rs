//! `recurrentd charge`: queue an ad-hoc MIT COF charge for the daemon (see `engine::adhoc`).

use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::exit;
use super::ops::{open, operator};
use crate::billing::Calendar;
use crate::config::Config;
use crate::engine::{AdhocError, AdhocRequest, Policy, Queued, queue_adhoc};
use crate::money::Money;
use crate::store::{self, Access};

#[derive(Debug, Args)]
pub struct ChargeArgs {
    /// The subscription to charge (its agreement's limits apply).
    pub subscription: String,
    /// The amount, in the subscription's currency (e.g. 150.00).
    #[arg(long, value_parser = parse_amount)]
    pub amount: Money,
    /// Your unique reference for this charge (a ticket number): running the same command again
    /// finds the first request and never charges twice.
    #[arg(long)]
    pub reference: String,
    /// Why (recorded in the ledger with your user name).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

fn parse_amount(text: &str) -> Result<Money, String> {
    Money::parse(text).map_err(|e| e.to_string())
}

pub fn run(config: &Config, args: &ChargeArgs) -> u8 {
    let mut store = match open(config, Access::Write) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let by = operator();
    let request = AdhocRequest {
        subscription: &args.subscription,
        reference: &args.reference,
        amount: args.amount,
        reason: args.reason.as_deref(),
        by: &by,
    };
    let result = queue_adhoc(
        &mut store,
        &request,
        &Calendar::from(&config.billing),
        &Policy::from(&config.engine),
        Utc::now(),
    );
    let sub = &args.subscription;
    let reference = &args.reference;
    let (code, status, state, detail, message) = match &result {
        Ok(Queued::New { .. }) => (
            exit::OK,
            "queued",
            Some("open".to_string()),
            None,
            format!(
                "Queued: {sub}, {} under reference {reference}. The daemon makes the charge at \
                 its next sweep (within a minute while it runs), checking the limits again just \
                 before it leaves. Follow it with `recurrentd history {sub}`.",
                args.amount
            ),
        ),
        Ok(Queued::Existing(found)) => (
            exit::OK,
            "exists",
            Some(found.state.as_str().to_string()),
            found.order_number.clone(),
            format!(
                "Already requested: {sub}, {} {} under reference {reference}, now {}{}{}. \
                 Nothing new was queued.",
                found.amount,
                found.currency,
                found.state.as_str(),
                found
                    .order_number
                    .as_ref()
                    .map(|o| format!(" (order {o})"))
                    .unwrap_or_default(),
                found
                    .reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default(),
            ),
        ),
        Err(AdhocError::Store(error)) => {
            eprintln!("recurrentd: {error}");
            return exit::UNAVAILABLE;
        }
        Err(error) => (
            exit::PROBLEMS,
            "refused",
            None,
            None,
            format!("recurrentd: {sub}: {error}"),
        ),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "status": status,
                "subscription": sub,
                "reference": reference,
                "amount": args.amount.to_string(),
                "state": state,
                "order_number": detail,
                "message": message,
            })
        );
    } else if code == exit::OK {
        println!("{message}");
        if status == "queued" && !store::daemon_running(&config.database.path) {
            eprintln!(
                "recurrentd: note: no daemon is running on {}: nothing is sent until it starts",
                config.database.path.display()
            );
        }
    } else {
        eprintln!("{message}");
    }
    code
}
