//! Time as the engine sees it. The engine reads "now" only through a [`Clock`] it is given, so
//! tests can run months of billing in seconds with a [`ManualClock`].
//!
//! One thing is deliberately *not* read from the engine's clock: the wall-clock instant a request
//! left, which bounds the gateway's order search window (the gateway files orders by its own,
//! real clock). The store keeps both.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// How many of this clock's seconds pass per second of monotonic time, when that is fixed
    /// (1 for the system clock, the factor of a rehearsal): the engine compares the two between
    /// ticks to see the clock jump. `None`: the clock moves only when told (tests).
    fn rate(&self) -> Option<u32> {
        None
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn rate(&self) -> Option<u32> {
        Some(1)
    }
}

/// A clock that moves only when told to (tests, rehearsals). Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn set(&self, to: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The rehearsal clock: virtual now = `start` + `factor` × (real time since it was made). Every
/// billing timer follows it; transport timers (HTTP timeouts, the rate limiter) stay real.
#[derive(Debug, Clone, Copy)]
pub struct RehearsalClock {
    start: DateTime<Utc>,
    real_start: std::time::Instant,
    factor: u32,
}

impl RehearsalClock {
    pub fn new(start: DateTime<Utc>, factor: u32) -> RehearsalClock {
        RehearsalClock {
            start,
            real_start: std::time::Instant::now(),
            factor: factor.max(1),
        }
    }

    pub fn factor(&self) -> u32 {
        self.factor
    }
}

impl Clock for RehearsalClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.real_start.elapsed();
        let virtual_micros = real
            .as_micros()
            .saturating_mul(u128::from(self.factor))
            .min(i64::MAX as u128) as i64;
        self.start + Duration::microseconds(virtual_micros)
    }

    fn rate(&self) -> Option<u32> {
        Some(self.factor)
    }
}
