//! `recurrentd events`: the outbox (the ledger's merchant-facing events) for scripts, with a
//! cursor to resume from.

use std::io::Write;
use std::time::Duration;

use chrono::SecondsFormat;
use clap::Args;

use super::exit;
use super::ops::open;
use crate::config::Config;
use crate::store::{Access, OutboxEvent, Store};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only the events after this cursor (exclusive): the last cursor a previous run printed.
    #[arg(long, value_name = "CURSOR", default_value_t = 0,
          value_parser = clap::value_parser!(i64).range(0..))]
    pub since: i64,

    /// Keep running and print each new event as it is recorded, until interrupted.
    #[arg(long)]
    pub follow: bool,

    /// One JSON object per line (the webhook's body) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Put every dead-lettered event (not delivered to the webhook within
    /// webhook.dead_letter_after_days) back in the webhook's queue, to be delivered again in
    /// order; prints how many.
    #[arg(long, conflicts_with_all = ["follow", "json", "since"])]
    pub redeliver_dead: bool,
}

/// How often `--follow` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// Events read per query.
const PAGE: usize = 500;

pub fn run(config: &Config, args: &EventsArgs) -> u8 {
    if args.redeliver_dead {
        let mut store = match open(config, Access::Write) {
            Ok(store) => store,
            Err(code) => return code,
        };
        return match store.outbox_revive_dead() {
            Ok(count) => {
                println!(
                    "{count} dead event(s) queued again for the webhook (the daemon delivers \
                     them again; later events of their subscriptions may have been delivered \
                     meanwhile: order by cursor)"
                );
                exit::OK
            }
            Err(error) => {
                eprintln!("recurrentd: {error}");
                exit::store(&error)
            }
        };
    }
    let store = match open(config, Access::ReadOnly) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match print(&store, args) {
        Ok(()) => exit::OK,
        Err(Failure::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(Failure::Io(e)) => {
            eprintln!("recurrentd: cannot write: {e}");
            exit::INTERNAL
        }
        Err(Failure::Store(error)) => {
            eprintln!("recurrentd: {error}");
            exit::store(&error)
        }
    }
}

enum Failure {
    Store(crate::store::StoreError),
    Io(std::io::Error),
}

impl From<crate::store::StoreError> for Failure {
    fn from(error: crate::store::StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::Io(error)
    }
}

fn print(store: &Store, args: &EventsArgs) -> Result<(), Failure> {
    let mut cursor = args.since;
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{:>8}  {:<20}  {:<28}  {:<20}  {:<9}  DATA",
            "CURSOR", "AT (UTC)", "TYPE", "SUBSCRIPTION", "WEBHOOK"
        )?;
    }
    let mut printed = 0u64;
    loop {
        let events = store.events_after(cursor, PAGE)?;
        for event in &events {
            if args.json {
                serde_json::to_writer(&mut out, &event.to_json()).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                write_row(&mut out, event)?;
            }
            cursor = event.cursor;
            printed += 1;
        }
        if events.len() == PAGE {
            continue;
        }
        if !args.follow {
            break;
        }
        out.flush()?;
        std::thread::sleep(FOLLOW_POLL);
    }
    if !args.json {
        writeln!(
            out,
            "\n{printed} event(s). Resume after the last one with: recurrentd events --since {cursor}"
        )?;
    }
    Ok(())
}

fn write_row(out: &mut impl Write, event: &OutboxEvent) -> std::io::Result<()> {
    let mut data = event.data.to_string();
    if data.len() > 100 {
        let cut = (0..=97)
            .rev()
            .find(|&i| data.is_char_boundary(i))
            .unwrap_or(0);
        data.truncate(cut);
        data.push_str("...");
    }
    writeln!(
        out,
        "{:>8}  {:<20}  {:<28}  {:<20}  {:<9}  {}",
        event.cursor,
        event.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        event.kind,
        event.subscription.as_deref().unwrap_or("-"),
        event.delivery,
        data
    )
}
