//! Where "now" comes from.
//!
//! New NanoPix ids, the 'Today' filters and every timestamp the sync writes read the time
//! through [`Clock`], so tests can pin it. Both programs keep local time without a zone,
//! so a clock answers in local naive time.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{Duration, NaiveDateTime};

/// A source of the current local time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current local date and time.
    fn now(&self) -> NaiveDateTime;
}

/// The computer's own clock, in local time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> NaiveDateTime {
        chrono::Local::now().naive_local()
    }
}

/// A clock that only moves when told to: for tests and replays.
///
/// # Example
/// ```
/// use chrono::NaiveDate;
/// use nanopix_sync::{Clock, ManualClock};
///
/// let start = NaiveDate::from_ymd_opt(2025, 1, 21).unwrap().and_hms_opt(15, 26, 38).unwrap();
/// let clock = ManualClock::new(start);
/// clock.advance(chrono::Duration::seconds(2));
/// assert_eq!(clock.now(), start + chrono::Duration::seconds(2));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<NaiveDateTime>>,
}

impl ManualClock {
    /// A clock stopped at `now`.
    pub fn new(now: NaiveDateTime) -> Self {
        Self { now: Arc::new(Mutex::new(now)) }
    }

    /// Moves the clock to `now`.
    pub fn set(&self, now: NaiveDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Moves the clock forward by `by` (back, when negative); it stops at the earliest or latest
    /// time a date can hold.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        let past_the_end = if by < Duration::zero() { NaiveDateTime::MIN } else { NaiveDateTime::MAX };
        *now = now.checked_add_signed(by).unwrap_or(past_the_end);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> NaiveDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moved_past_the_range_of_dates_stops_at_its_end() {
        let clock = ManualClock::new(NaiveDateTime::MAX - Duration::seconds(1));
        clock.advance(Duration::days(1));
        assert_eq!(clock.now(), NaiveDateTime::MAX);
        clock.advance(Duration::MIN);
        assert_eq!(clock.now(), NaiveDateTime::MIN);
    }
}
