//! `recurrentd charge`: queue an ad-hoc MIT COF charge for the daemon (see `engine::adhoc`).

use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::exit;
use super::ops::{open, operator};
use crate::billing::Calendar;
use crate::config::Config;
use crate::engine::{
    AdhocError, AdhocRequest, CancelError, CancelRequest, Policy, Queued, cancel_adhoc, queue_adhoc,
};
use crate::money::Money;
use crate::store::{self, Access};

#[derive(Debug, Args)]
pub struct ChargeArgs {
    /// The subscription to charge (its agreement's limits apply).
    pub subscription: String,
    /// The amount, in the subscription's currency (e.g. 150.00).
    #[arg(long, value_parser = parse_amount, required_unless_present = "cancel")]
    pub amount: Option<Money>,
    /// Your unique reference for this charge (a ticket number): running the same command again
    /// finds the first request and never charges twice.
    #[arg(long, required_unless_present = "cancel")]
    pub reference: Option<String>,
    /// Cancel the queued request with this reference instead (refused once its attempt was sent
    /// or is being sent, or when it is settled); needs --reason.
    #[arg(
        long,
        value_name = "REF",
        conflicts_with_all = ["amount", "reference"],
        requires = "reason"
    )]
    pub cancel: Option<String>,
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
    if let Some(reference) = &args.cancel {
        return cancel(&mut store, args, reference, &by);
    }
    let (Some(amount), Some(reference)) = (args.amount, args.reference.as_deref()) else {
        // clap requires both unless --cancel.
        eprintln!("recurrentd: charge needs --amount and --reference (or --cancel REF)");
        return exit::USAGE;
    };
    let request = AdhocRequest {
        subscription: &args.subscription,
        reference,
        amount,
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
                amount
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
            return exit::store(error);
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
                "amount": amount.to_string(),
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

/// `charge SUBSCRIPTION --cancel REF --reason TEXT`: closes a queued request (see
/// [`cancel_adhoc`]). Exit 0 cancelled, 1 refused (unknown, sent, settled).
fn cancel(store: &mut store::Store, args: &ChargeArgs, reference: &str, by: &str) -> u8 {
    let sub = &args.subscription;
    let reason = args.reason.as_deref().unwrap_or_default();
    let request = CancelRequest {
        subscription: sub,
        reference,
        reason,
        by,
    };
    let result = cancel_adhoc(store, &request, Utc::now());
    let (code, status, found, message) = match &result {
        Ok(found) => (
            exit::OK,
            "cancelled",
            Some(found),
            format!(
                "Cancelled: {sub}, {} {} under reference {reference}; it will not be charged.",
                found.amount, found.currency
            ),
        ),
        Err(CancelError::Store(error)) => {
            eprintln!("recurrentd: {error}");
            return exit::store(error);
        }
        Err(error) => {
            let found = match error {
                CancelError::Sent { found, .. } | CancelError::Settled { found, .. } => {
                    Some(found.as_ref())
                }
                _ => None,
            };
            (
                exit::PROBLEMS,
                "refused",
                found,
                format!("recurrentd: {sub}: {error}"),
            )
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "status": status,
                "subscription": sub,
                "reference": reference,
                "amount": found.map(|f| f.amount.to_string()),
                "state": found.map(|f| f.state.as_str()),
                "order_number": found.and_then(|f| f.order_number.clone()),
                "message": message,
            })
        );
    } else if code == exit::OK {
        println!("{message}");
    } else {
        eprintln!("{message}");
    }
    code
}
