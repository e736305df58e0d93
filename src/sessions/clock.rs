//! Maps tokio's monotonic clock onto the machine's absolute [`Time`].
//!
//! The machine wants absolute times (reports show them); timers want tokio `Instant`s (so
//! tests can pause time). One origin pair read at start-up links both, and a wall-clock step
//! after start-up cannot make a deadline fire early or late.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use endcall_core::domain::Time;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    origin_time: Time,
}

impl Clock {
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            origin: Instant::now(),
            origin_time: Time::from_micros(u64::try_from(since_epoch.as_micros()).unwrap_or(0)),
        }
    }

    pub fn now(&self) -> Time {
        self.origin_time + self.origin.elapsed()
    }

    /// The time at which tokio's `instant` is reached.
    pub fn time_at(&self, instant: Instant) -> Time {
        self.origin_time + instant.saturating_duration_since(self.origin)
    }

    /// The tokio instant at which `time` is reached.
    pub fn instant_at(&self, time: Time) -> Instant {
        self.origin + time.since(self.origin_time)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
