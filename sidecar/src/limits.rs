//! Sidecar-wide rate limits over fixed one-second windows: cheap, shared by every connection,
//! and strict enough for what they guard (a flood of client events), unlike Realtime's 60 s
//! rolling averages which let a burst through for up to a minute.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Default)]
pub struct PerSecond {
    /// Start of the current window and the events counted in it.
    window: Mutex<(Option<Instant>, u32)>,
}

impl PerSecond {
    /// Count one event at `now`; false once the current second has seen more than `max`.
    pub fn admit(&self, max: u32, now: Instant) -> bool {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        match window.0 {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => window.1 += 1,
            _ => *window = (Some(now), 1),
        }
        window.1 <= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_reset_each_second() {
        let limit = PerSecond::default();
        let t0 = Instant::now();
        assert!(limit.admit(2, t0));
        assert!(limit.admit(2, t0));
        assert!(!limit.admit(2, t0 + Duration::from_millis(999)));
        assert!(limit.admit(2, t0 + Duration::from_secs(1)));
    }
}
