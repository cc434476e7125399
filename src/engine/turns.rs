//! Turns for DentalTID: bulk work that writes to `dentaltid.db` one unit after another (exports,
//! changes of link states) pauses now and then, long enough for DentalTID, waiting to save a
//! patient, to get the write lock.
//!
//! SQLite keeps no queue of writers. One that finds the database locked sleeps in its busy
//! handler and tries again: after 1 ms, then 2, 5, 10, 15, 20 and 25 ms, 50 ms once it has waited
//! 128 ms and 100 ms once it has waited 228 ms (`sqliteDefaultBusyCallback`). It gets the lock
//! only if the lock is free at one of its tries, so transactions run back to back, a fraction of a
//! millisecond apart, let it in by chance alone: a save waited seconds while the sync asked for
//! thousands of deletes. A turn lasts longer than the sleep such a writer can be in, so that it
//! tries, and gets the lock, during the turn. Turns are taken between units of work only, never
//! while a transaction is open.

use std::time::{Duration, Instant};

/// How long bulk work goes on between two turns: about what a save in DentalTID waits at most,
/// less the turn.
const WORK_BETWEEN_TURNS: Duration = Duration::from_millis(100);

/// How much longer than asked a sleep of DentalTID's busy handler may last: on Windows, a tick of
/// the default system timer (15.6 ms); elsewhere, where sleeps are precise, a little slack.
const TIMER_TICK: Duration = Duration::from_millis(if cfg!(windows) { 16 } else { 2 });

/// The turns one run of bulk work gives DentalTID.
#[derive(Debug)]
pub(super) struct Turns {
    /// When the work began, or its last turn ended.
    since: Instant,
}

impl Turns {
    /// Bulk work begins now.
    pub fn begin() -> Self {
        Self { since: Instant::now() }
    }

    /// Called between two units of work: takes a turn once the work has gone on for
    /// [`WORK_BETWEEN_TURNS`] since the last one.
    pub fn between_units(&mut self) {
        if let Some(turn) = turn_due(self.since.elapsed()) {
            std::thread::sleep(turn);
            self.since = Instant::now();
        }
    }
}

/// The turn due after `worked` since the last one: none before [`WORK_BETWEEN_TURNS`], then a
/// tick longer than the sleep between two tries of a writer who has waited as long.
fn turn_due(worked: Duration) -> Option<Duration> {
    (worked >= WORK_BETWEEN_TURNS).then(|| longest_busy_sleep(worked) + TIMER_TICK)
}

/// The longest sleep SQLite's busy handler takes between two tries of a writer who has waited up
/// to `waited`.
fn longest_busy_sleep(waited: Duration) -> Duration {
    let millis = match waited.as_millis() {
        0..128 => 25,
        128..228 => 50,
        _ => 100,
    };
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sleeps of SQLite's busy handler between two tries (`sqliteDefaultBusyCallback`); the
    /// last one repeats.
    const BUSY_SLEEPS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

    /// The first try at or after `from` (ms) of a writer who began waiting at `start`, each of
    /// its sleeps lasting `late` ms more than asked.
    fn first_try_from(from: u64, start: u64, late: u64) -> u64 {
        let mut sleeps = BUSY_SLEEPS.into_iter().chain(std::iter::repeat(100));
        let mut at = start;
        while at < from {
            at += sleeps.next().unwrap_or(100) + late;
        }
        at
    }

    #[test]
    fn work_shorter_than_the_time_between_turns_takes_none() {
        assert_eq!(turn_due(Duration::ZERO), None);
        assert_eq!(turn_due(Duration::from_millis(99)), None);
        assert!(turn_due(WORK_BETWEEN_TURNS).is_some());
    }

    #[test]
    fn a_writer_who_began_waiting_during_the_work_tries_the_lock_during_the_turn() {
        // A sleep lasts as asked, or up to a timer tick more.
        let tick = TIMER_TICK.as_millis() as u64;
        for late in [0, tick - 1] {
            for worked in 100..=2_000 {
                let turn = turn_due(Duration::from_millis(worked)).unwrap().as_millis() as u64;
                for start in 0..=worked {
                    let tried = first_try_from(worked, start, late);
                    assert!(tried < worked + turn, "worked {worked} ms, waited from {start} ms, {late} ms late");
                }
            }
        }
    }
}
