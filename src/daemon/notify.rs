//! The systemd notification protocol (`sd_notify(3)`), through the `sd-notify` crate.
//!
//! Everything here is a no-op unless systemd (or a test) set `NOTIFY_SOCKET`. A failed send is
//! logged once and otherwise ignored: the daemon's work never depends on systemd hearing it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Talks to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if any.
    watchdog: Option<Duration>,
    /// A send failure has been logged already.
    complained: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        Notifier {
            enabled,
            watchdog: if enabled {
                sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
            } else {
                None
            },
            complained: AtomicBool::new(false),
        }
    }

    /// How often to ping the watchdog: half the interval systemd enforces (as `sd_watchdog_enabled(3)`
    /// recommends). `None` when there is no watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|d| (d / 2).max(Duration::from_millis(1)))
    }

    /// READY=1: the store is open, schedules synced, unresolved attempts reconciled.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// STATUS=: one line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// RELOADING=1 (with the monotonic timestamp systemd ≥ 253 requires): re-reading schedules.
    /// Followed by [`Notifier::ready`] when done.
    pub fn reloading(&self) {
        if !self.enabled {
            return;
        }
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading schedules"),
        ];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    /// STOPPING=1: shutting down (stop creating charges, settle what is in flight).
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// WATCHDOG=1: the main loop is healthy. Only called from the loop's health path.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(error) = sd_notify::notify(states)
            && !self.complained.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET); carrying on without it");
        }
    }
}
