//! `recurrentd tokens list|remove`: the customer-card token services of seed 000.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};

use super::exit;
use crate::config::{self, Config, SecretName};
use crate::gateway::client::{CardToken, Client, Settings};
use crate::gateway::outcome::Outcome;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List a customer's saved cards (token, brand, first six and last four digits, expiry).
    ///
    /// Example:
    ///   recurrentd tokens list --customer 1234 --json
    #[command(verbatim_doc_comment)]
    List(ListArgs),

    /// Remove one of a customer's saved cards at the gateway.
    ///
    /// Asks for confirmation unless --yes is given; without a terminal, --yes is required.
    /// Subscriptions charged through an agreement made with this card are not affected by the
    /// removal of its token.
    ///
    /// Example:
    ///   recurrentd tokens remove --customer 1234 --token 49D902C6-1CCF-4605-9228-11D0E8115C77
    #[command(verbatim_doc_comment)]
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The merchant's customer number (CustomerNumber at Assist).
    #[arg(long, value_name = "N")]
    pub customer: String,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The merchant's customer number.
    #[arg(long, value_name = "N")]
    pub customer: String,
    /// The token to remove, as `tokens list` shows it.
    #[arg(long, value_name = "TOKEN")]
    pub token: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

/// Builds a gateway client from config and secrets, or says why not (exit code included).
pub(super) fn client(config: &Config) -> Result<Client, u8> {
    let secret = |name| {
        config::require_secret(&config.gateway, name).map_err(|error| {
            eprintln!("recurrentd: configuration error: {error}");
            exit::CONFIG
        })
    };
    let password = secret(SecretName::Password)?;
    let salt = secret(SecretName::Salt)?;
    Client::new(Settings::from_config(&config.gateway, password, salt)).map_err(|error| {
        eprintln!("recurrentd: configuration error: {error}");
        exit::CONFIG
    })
}

/// Exit code and message for a gateway call that did not succeed.
pub(super) fn gateway_failure(what: &str, outcome: &Outcome) -> u8 {
    eprintln!("recurrentd: {what}: {outcome}");
    match outcome {
        // Our credentials or merchant id: configuration, not worth retrying.
        Outcome::Rejected(why) if why.contains("authentication") => {
            eprintln!("recurrentd: check gateway.merchant_id, gateway.login and the password");
            exit::CONFIG
        }
        // The gateway understood and refused this request (no such token, bad value).
        Outcome::Rejected(_) | Outcome::NotFound | Outcome::Declined(_) => exit::PROBLEMS,
        _ => exit::UNAVAILABLE,
    }
}

pub fn run(config: &Config, command: &TokensCommand) -> u8 {
    let client = match client(config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match command {
        TokensCommand::List(args) => match runtime.block_on(client.tokens(&args.customer)) {
            Ok(cards) => print_cards(&args.customer, &cards, args.json),
            Err(outcome) => gateway_failure("cannot list tokens", &outcome),
        },
        TokensCommand::Remove(args) => {
            if !args.yes {
                match confirm(&args.customer, &args.token) {
                    Ok(true) => {}
                    Ok(false) => {
                        eprintln!("recurrentd: not removed");
                        return exit::PROBLEMS;
                    }
                    Err(code) => return code,
                }
            }
            match runtime.block_on(client.remove_token(&args.customer, &args.token)) {
                Ok(message) => {
                    println!("{message}");
                    exit::OK
                }
                Err(outcome) => gateway_failure("cannot remove the token", &outcome),
            }
        }
    }
}

fn confirm(customer: &str, token: &str) -> Result<bool, u8> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!(
            "recurrentd: refusing to remove a token without a terminal to confirm; add --yes"
        );
        return Err(exit::USAGE);
    }
    eprint!("Remove card token {token} of customer {customer} at the gateway? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if stdin.lock().read_line(&mut answer).is_err() {
        return Ok(false);
    }
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn print_cards(customer: &str, cards: &[CardToken], json: bool) -> u8 {
    let printed = (|| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut out, cards)?;
            return writeln!(out);
        }
        if cards.is_empty() {
            return writeln!(out, "Customer {customer} has no saved cards.");
        }
        writeln!(
            out,
            "{:<38}  {:<10}  {:<16}  {:<7}  {:<6}  CVC",
            "TOKEN", "BRAND", "CARD", "EXPIRES", "ACTIVE"
        )?;
        for card in cards {
            writeln!(
                out,
                "{:<38}  {:<10}  {:<16}  {:<7}  {:<6}  {}",
                card.token,
                card.brand,
                format!("{}…{}", card.bin, card.last4),
                card.expire,
                if card.active { "yes" } else { "no" },
                if card.need_cvc { "needed" } else { "-" },
            )?;
        }
        Ok(())
    })();
    match printed {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => {
            eprintln!("recurrentd: cannot write: {e}");
            exit::INTERNAL
        }
    }
}
