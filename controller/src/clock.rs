//! The controller's clocks. Durations (idleness, drains, Lease expiry) are measured on a
//! monotonic clock, as client-go does: a step of the wall clock (NTP) must neither let a
//! follower take the Lease early nor commit a sleep although a request just arrived. The wall
//! clock is only for what is written for people (annotations, Events).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where monotonic readings start: far from 0, so "0" keeps meaning "never" in the idle
/// decisions, and far below any real wall-clock reading, so the two are never confused.
const ORIGIN_MS: u64 = 1 << 30;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds on this process's monotonic clock.
pub fn mono_ms() -> u64 {
    ORIGIN_MS.saturating_add(u64::try_from(start().elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch on the wall clock.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of a monotonic reading `mono` taken earlier, given both clocks now.
pub fn wall_of(mono: u64, mono_now: u64, wall_now: u64) -> u64 {
    wall_now.saturating_sub(mono_now.saturating_sub(mono))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_readings_never_go_back_and_are_not_wall_time() {
        let a = mono_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_ms();
        assert!(b >= a + 5, "{a} {b}");
        assert!(b < wall_ms() / 100, "never mistaken for a wall-clock time");
    }

    #[test]
    fn a_past_monotonic_reading_maps_to_the_wall_clock() {
        assert_eq!(wall_of(1_000, 4_000, 1_700_000_003_000), 1_700_000_000_000);
        assert_eq!(
            wall_of(5_000, 4_000, 10),
            10,
            "a reading from the future is now"
        );
    }
}
