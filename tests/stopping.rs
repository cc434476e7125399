//! A stopped handle (`Stopper::stop`) before it is closed. Alone in its test binary: it measures
//! the CPU time of the only engine thread in the process.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{Clinic, until, wait_for};
use nanopix_sync::EventKind;

/// CPU time (user + system, in clock ticks) the engine thread (`nanopix-sync-engine`, which
/// Linux names by its first 15 bytes) has used so far.
#[cfg(target_os = "linux")]
fn engine_thread_ticks() -> u64 {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else { continue };
        if name.trim_end() == "nanopix-sync-en" {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
            found.push(fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap());
        }
    }
    assert_eq!(found.len(), 1, "one engine thread in this test");
    found[0]
}

/// A live pass failed (DentalTID was locked), so the engine thread waits to try it again; then the
/// host stops the handle's work (`Stopper::stop`, say from a signal handler) before closing it.
/// A stopped handle starts no pass; its engine thread must then wait idle, not spin on the retry
/// it will never run, burning a core of the clinic PC (2 cores) until it is closed.
#[cfg(target_os = "linux")]
#[test]
fn a_stopped_handle_with_a_failed_pass_to_retry_does_not_spin() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, Duration::from_secs(30), |e| matches!(e, EventKind::Reconciled(_)));
    // DentalTID is writing, holding its lock past the sync's busy timeout: the next pass fails.
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    wait_for(&sync, Duration::from_secs(30), |e| matches!(e, EventKind::SyncError { code, .. } if code == "busy"));
    sync.stopper().stop();
    // The failed pass ends within a few busy timeouts (500 ms each) and is due again a second
    // later; measure past that, with DentalTID still locked: a CPU measure needs its window.
    let stopped_at = Instant::now();
    until(Duration::from_secs(10), "the retry is due", || stopped_at.elapsed() > Duration::from_secs(4));
    let (ticks, started) = (engine_thread_ticks(), Instant::now());
    until(Duration::from_secs(10), "two seconds of measure", || started.elapsed() > Duration::from_secs(2));
    let used = engine_thread_ticks() - ticks;
    dentaltid.execute_batch("ROLLBACK").unwrap();
    assert!(
        used < 20,
        "the stopped engine thread used {used} ticks of CPU in 2 s (100 ticks a second is a whole core)"
    );
}
