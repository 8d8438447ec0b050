//! Bounded pressure on the gateway: at most `max_in_flight` requests at once, at most
//! `requests_per_second`, and a pause of every send after a rate-limit answer.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Hands out permission to send one request.
#[derive(Debug)]
pub struct Pacer {
    slots: Semaphore,
    max_in_flight: usize,
    interval: Duration,
    /// The earliest instant the next request may start, and the end of a pause.
    schedule: Mutex<Schedule>,
}

#[derive(Debug)]
struct Schedule {
    next: Instant,
    paused_until: Option<Instant>,
}

impl Pacer {
    pub fn new(max_in_flight: u32, requests_per_second: u32) -> Pacer {
        Pacer {
            slots: Semaphore::new(max_in_flight.max(1) as usize),
            max_in_flight: max_in_flight.max(1) as usize,
            interval: Duration::from_secs(1) / requests_per_second.max(1),
            schedule: Mutex::new(Schedule {
                next: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// How many requests may be in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Waits for a free slot and the next start time; the permit is held for the request.
    pub async fn acquire(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.slots.acquire().await.ok();
        let start = {
            let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let mut start = schedule.next.max(now);
            if let Some(until) = schedule.paused_until {
                if until > start {
                    start = until;
                } else {
                    schedule.paused_until = None;
                }
            }
            schedule.next = start + self.interval;
            start
        };
        tokio::time::sleep_until(start).await;
        permit
    }

    /// Stops every send for `duration` (a rate-limit answer).
    pub fn pause(&self, duration: Duration) {
        let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + duration;
        if schedule.paused_until.is_none_or(|current| current < until) {
            schedule.paused_until = Some(until);
        }
        tracing::warn!(
            seconds = duration.as_secs(),
            "the gateway asked us to slow down: all sends paused"
        );
    }
}
