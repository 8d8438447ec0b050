//! Progress lines for long work (a catch-up after downtime, a first sweep over many due
//! subscriptions): nothing for work that ends within [`EVERY`], then one line per [`EVERY`] with
//! the count, the total when known, and the rate, so an operator watching the journal sees that
//! the daemon is moving and how far it has to go.

use std::time::{Duration, Instant};

/// Real time between progress lines.
pub const EVERY: Duration = Duration::from_secs(5);

/// One piece of long work being counted.
pub struct Progress {
    what: &'static str,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        Progress::every(what, EVERY)
    }

    /// A `Progress` with its own interval (tests).
    pub fn every(what: &'static str, every: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            started: now,
            last: now,
            every,
        }
    }

    /// Counts `done` of `total` (if known); logs a line if the interval has passed since the
    /// last one. Returns whether it logged.
    pub fn update(&mut self, done: u64, total: Option<u64>) -> bool {
        if self.last.elapsed() < self.every {
            return false;
        }
        self.last = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let per_second = (done as f64 / seconds).round() as u64;
        match total {
            Some(total) => tracing::info!(
                done,
                total,
                per_second,
                "{}: {done} of {total} ({per_second}/s)",
                self.what
            ),
            None => tracing::info!(done, per_second, "{}: {done} ({per_second}/s)", self.what),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_until_the_interval_then_once_per_interval() {
        let mut progress = Progress::every("planning", Duration::from_millis(30));
        assert!(!progress.update(1, Some(10)), "short work says nothing");
        std::thread::sleep(Duration::from_millis(40));
        assert!(progress.update(5, Some(10)));
        assert!(!progress.update(6, Some(10)), "not twice in one interval");
        std::thread::sleep(Duration::from_millis(40));
        assert!(progress.update(7, None));
    }
}
