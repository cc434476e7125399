//! A host may unload the library once `close` returns: no thread the library started, the file
//! watcher's included, runs on. The only test of its binary, so that no other test's threads
//! are counted.
#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Clinic, wait_for};
use nanopix_sync::EventKind;

/// The process's threads: each one's id and name.
fn threads() -> BTreeMap<String, String> {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .map(|task| {
            let task = task.unwrap();
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            (task.file_name().to_string_lossy().into_owned(), name.trim_end().to_owned())
        })
        .collect()
}

#[test]
fn closing_a_handle_with_live_sync_on_leaves_no_thread_of_the_library_running() {
    let clinic = Clinic::new("v29");
    let before = threads();
    let mut sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, Duration::from_secs(10), |event| matches!(event, EventKind::WatcherMode { .. }));
    assert!(threads().len() > before.len(), "Live Sync runs threads of its own");
    sync.close();
    assert_eq!(threads(), before, "threads still running once close returned");
}
