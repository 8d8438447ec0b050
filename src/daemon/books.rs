//! The daemon's daily books sweep: once the local day has ended and `books.run_after` has
//! passed, compare the previous day (`crate::books`), in a task of its own.
//!
//! Progress is `meta.books_through` (set only after a day was compared and recorded), so a
//! restart neither skips a day (the next not compared, up to a week back) nor repeats one. The
//! time is real time: the gateway files orders by its own (real) clock, whatever clock the
//! engine charges by.

use std::time::Duration;

use chrono::{NaiveTime, Utc};
use chrono_tz::Tz;

use crate::books::{self, BooksError};
use crate::engine::BooksRunner;

/// How long after start the first check waits: start-up reconciles and charges first.
pub const FIRST_CHECK_AFTER: Duration = Duration::from_secs(300);
/// How often the task looks whether a day is due.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// How long it waits after a run that failed (the gateway unavailable, a store error).
pub const RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// Runs for ever (the daemon aborts it when stopping).
pub async fn daily(runner: BooksRunner, zone: Tz, run_after: NaiveTime) {
    tokio::time::sleep(FIRST_CHECK_AFTER).await;
    loop {
        let pause = match run_due(&runner, zone, run_after).await {
            Ok(_) => CHECK_EVERY,
            Err(error) => {
                tracing::warn!(%error, "books: the daily comparison failed; trying again later");
                RETRY_AFTER
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Compares the next due day, if one is due (real time now), and records the progress; returns
/// the day compared.
pub async fn run_due(
    runner: &BooksRunner,
    zone: Tz,
    run_after: NaiveTime,
) -> Result<Option<chrono::NaiveDate>, BooksError> {
    let through = runner
        .with_store(|s| s.books_through())
        .await
        .map_err(|e| BooksError::Task(e.to_string()))?;
    let Some(date) = books::due_date(Utc::now(), zone, run_after, through) else {
        return Ok(None);
    };
    let report = runner.run(date).await?;
    runner
        .with_store(move |s| s.set_books_through(date))
        .await
        .map_err(|e| BooksError::Task(e.to_string()))?;
    if report.clean() {
        tracing::info!(%date, orders = report.gateway_orders, "books: the day's books match the ledger");
    } else {
        tracing::error!(
            %date,
            findings = report.findings.len(),
            new = report.new_findings,
            "books: the gateway's books and the ledger disagree; see `recurrentd status` and \
             `recurrentd books --date {date}`"
        );
    }
    Ok(Some(date))
}
