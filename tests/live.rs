//! Live Sync with the real watcher on real folders: both directions, bursts, the toggle,
//! polling, a vanishing root, no echo, and shutdown.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Clinic, HookedClock, another_program, archive_link_then, copy_tree, drain, numbered_nanopix_id,
    reports_unreadable_link, until, wait_for,
};
use nanopix_sync::{Config, EventKind, LinkState, NanoPixSync, PatientFilter, WatchMode};

const DEADLINE: Duration = Duration::from_secs(10);

fn live(clinic: &Clinic) -> NanoPixSync {
    live_watching(clinic, false)
}

/// A handle with Live Sync on and its first reconcile done, polling every 50 ms if `polling`.
fn live_watching(clinic: &Clinic, polling: bool) -> NanoPixSync {
    let mut config = clinic.config();
    if polling {
        (config.watch_mode, config.poll_interval) = (WatchMode::Polling, Duration::from_millis(50));
    }
    live_with(config)
}

/// A handle like [`live`]'s whose engine runs `clock`'s hook.
fn live_on(clinic: &Clinic, clock: &HookedClock) -> NanoPixSync {
    let mut config = clinic.config();
    config.clock = Arc::new(clock.clone());
    live_with(config)
}

/// A handle on `config` with Live Sync on and its first reconcile done.
fn live_with(config: Config) -> NanoPixSync {
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    sync
}

/// Waits for the fixture patient's folder to be reported removed.
fn fixture_folder_removal_reported(sync: &NanoPixSync) {
    let removed = wait_for(sync, DEADLINE, |e| matches!(e, EventKind::ExternalPatientRemoved { .. }));
    let EventKind::ExternalPatientRemoved { external_id, missing, .. } = removed.kind else { unreachable!() };
    assert_eq!((external_id.as_str(), missing.as_str()), ("20250121_152638", "folder"));
}

fn imported(sync: &NanoPixSync, external: &str) -> i64 {
    let event = wait_for(
        sync,
        DEADLINE,
        |e| matches!(e, EventKind::PatientImported { external_id, .. } if external_id == external),
    );
    match event.kind {
        EventKind::PatientImported { patient_id, .. } => patient_id,
        _ => unreachable!(),
    }
}

#[test]
fn a_nanopix_patient_arrives_without_a_host_call() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let patient_id = imported(&sync, "20250122_091500");
    assert_eq!(sync.source_info(patient_id).unwrap().external_id.as_deref(), Some("20250122_091500"));
}

/// A bug that panics in a live pass (here in the clock the host gave, asked the time as the pass
/// imports a patient) is reported with the panic's own message, all support staff have to go on,
/// and the pass is tried again.
#[test]
fn a_live_pass_that_panics_is_reported_with_the_panics_message_and_tried_again() {
    let clinic = Clinic::new("v29");
    let clock = HookedClock::of_the_engine();
    let mut config = clinic.config();
    config.clock = Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    clock.arm(Box::new(|| panic!("the clock's battery is flat")));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));

    let event = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { code, .. } if code == "internal"));
    let EventKind::SyncError { message, .. } = event.kind else { unreachable!() };
    assert!(message.contains("the clock's battery is flat"), "{message}");
    until(DEADLINE, "Yacine imported by the pass tried again", || {
        common::dentaltid_named(&clinic, "Yacine", "Mansouri").len() == 1
    });
}

#[test]
fn a_dentaltid_patient_reaches_nanopix_without_a_host_call() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let event = wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id),
    );
    let EventKind::PatientExported { external_id, folder, .. } = event.kind else { unreachable!() };
    assert!(clinic.root.join(&external_id).is_dir());
    assert_eq!(folder, clinic.root.join(&external_id).display().to_string(), "the event names her NanoPix folder");
    let rows: Vec<String> =
        clinic.nanopix_rows(&format!("SELECT last_name FROM Patient WHERE id = '{external_id}'"), |r| r.get(0));
    assert_eq!(rows, vec!["Cherif"]);
}

#[test]
fn a_burst_of_500_arrives_once_each() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    drain(&sync);
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    let ids: Vec<String> =
        (0..500).map(|i| format!("20250123_{:02}{:02}{:02}", i / 3600, (i / 60) % 60, i % 60)).collect();
    for (i, id) in ids.iter().enumerate() {
        conn.execute(
            "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime) VALUES (?1, ?2, 'Burst', '1990-01-01', '2025-01-23 08:00:00')",
            (id, format!("Patient{i}")),
        )
        .unwrap();
        std::fs::create_dir(clinic.root.join(id)).unwrap();
    }
    let until = Instant::now() + DEADLINE * 3;
    while sync.patients(PatientFilter::AllByExternal).unwrap().len() < 501 && Instant::now() < until {
        let _ = sync.events().recv_timeout(Duration::from_millis(50));
    }
    let external: Vec<String> =
        sync.patients(PatientFilter::AllByExternal).unwrap().into_iter().filter_map(|p| p.external_id).collect();
    assert_eq!(external.len(), 501, "500 new and the fixture patient, no duplicates");
    let distinct: std::collections::HashSet<&String> = external.iter().collect();
    assert_eq!(distinct.len(), 501);
}

#[test]
fn switching_live_sync_off_stops_automatic_work_and_on_resumes_it() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    sync.set_live_sync(false).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::LiveSyncChanged { enabled: false }));
    assert!(!sync.live_sync().unwrap());
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    // Proof that nothing happens while off: a manual call made after the change is the first to see it.
    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 1, "the off switch left the new patient for the manual sync");

    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::LiveSyncChanged { enabled: true }));
    clinic.add_nanopix("20250122_091600", "Haddad", "Sami", Some("1999-09-09"));
    imported(&sync, "20250122_091600");
    drop(sync);
    assert!(clinic.open().live_sync().unwrap(), "the toggle is kept across restarts");
}

/// A patient folder removed while Live Sync is off makes no event the watcher sees once it is on
/// again: switching Live Sync on starts with a full reconcile, which reports the removal.
#[test]
fn switching_live_sync_on_starts_with_a_full_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    sync.set_live_sync(false).unwrap();
    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    drain(&sync);
    sync.set_live_sync(true).unwrap();
    fixture_folder_removal_reported(&sync);
}

/// Live Sync stored off behind the handle's back (a `dentaltid.db` put back from a backup, say),
/// so that switching it off makes no event of its own, while the watcher stamps the
/// `watcher_mode` of a root replaced by a copy. The watcher is held there until the switch
/// returns, or for two seconds: a switch that returns only once the watcher is joined returns
/// after the watcher's last event.
///
/// Unix only: on Windows the watcher does not tell a folder from another under its name (README,
/// "Live Sync"), so it sees no root replaced by a copy.
#[cfg(unix)]
#[test]
fn switching_live_sync_off_returns_once_the_watcher_has_made_its_last_event() {
    let clinic = Clinic::new("v29");
    let clock = HookedClock::new(|thread| thread.name() == Some("nanopix-sync-watcher"));
    let mut config = clinic.config();
    (config.clock, config.watch_mode, config.poll_interval) =
        (Arc::new(clock.clone()), WatchMode::Polling, Duration::from_millis(10));
    let sync = Arc::new(NanoPixSync::open(config).unwrap());
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    let (stamping, watcher_stamps) = crossbeam_channel::bounded(1);
    let (returned, switch_returned) = crossbeam_channel::bounded(1);
    let (made, watcher_made) = crossbeam_channel::bounded(1);
    clock.arm(Box::new(move || {
        stamping.send(()).unwrap();
        made.send(switch_returned.recv_timeout(Duration::from_secs(2)).is_ok()).unwrap();
    }));
    let (copy, old) = (clinic.dir.path().join("PatientData.copy"), clinic.dir.path().join("PatientData.old"));
    copy_tree(&clinic.root, &copy);
    std::fs::rename(&clinic.root, &old).unwrap();
    std::fs::rename(&copy, &clinic.root).unwrap();
    watcher_stamps.recv_timeout(DEADLINE).expect("the watcher stamps the watcher_mode of the copy");
    another_program(&clinic.dentaltid)
        .execute("UPDATE nanopix_sync_state SET value = '0' WHERE key = 'live_sync'", [])
        .unwrap();
    let switching = sync.clone();
    let switch = std::thread::spawn(move || {
        switching.set_live_sync(false).unwrap();
        // The watcher stops waiting for this once it has made its event.
        let _ = returned.send(());
    });
    let after_return = watcher_made.recv_timeout(DEADLINE).expect("the watcher makes its event");
    switch.join().unwrap();
    assert!(!after_return, "the watcher made its watcher_mode after set_live_sync(false) returned");
    // The switch made no event of its own (passes the watcher asked for may have made theirs).
    let events: Vec<EventKind> = drain(&sync).into_iter().map(|event| event.kind).collect();
    assert!(!events.iter().any(|kind| matches!(kind, EventKind::LiveSyncChanged { .. })), "{events:#?}");
}

/// Live Sync stored on behind the handle's back while the handle has it off (a backup taken while
/// it was on, copied into `dentaltid.db` in place, say): the watcher follows the setting at the
/// next call, and so does the work it wakes, instead of every pass stopping early at once; a
/// `live_sync_changed` tells the host, whose switch would show it off.
#[test]
fn live_sync_stored_on_behind_the_handles_back_syncs_once_the_watcher_follows_it() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    sync.set_live_sync(false).unwrap();
    another_program(&clinic.dentaltid)
        .execute("UPDATE nanopix_sync_state SET value = '1' WHERE key = 'live_sync'", [])
        .unwrap();
    assert!(sync.live_sync().unwrap(), "the call reads the setting stored");
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::LiveSyncChanged { enabled: true }));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::WatcherMode { .. }));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
}

#[test]
fn a_switch_off_that_cannot_be_stored_leaves_live_sync_working() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let holder = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    for (lock, patient) in [("IMMEDIATE", "20250122_091500"), ("EXCLUSIVE", "20250122_091600")] {
        holder.execute_batch(&format!("BEGIN {lock}")).unwrap();
        let switched = sync.set_live_sync(false);
        holder.execute_batch("ROLLBACK").unwrap();
        assert_eq!(switched.map_err(|error| error.code()), Err("busy"), "{lock}");
        assert!(sync.live_sync().unwrap(), "the setting stayed on");
        clinic.add_nanopix(patient, "Mansouri", "Yacine", Some("2001-05-19"));
        imported(&sync, patient);
    }
}

#[test]
fn an_export_still_due_when_live_sync_goes_off_is_done_when_it_comes_back_on() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    let block =
        "CREATE TRIGGER block_exports BEFORE INSERT ON nanopix_sync_exports BEGIN SELECT RAISE(ABORT, 'blocked'); END";
    dentaltid.execute_batch(block).unwrap();
    let due = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { patient_id: Some(p), .. } if *p == due));
    sync.set_live_sync(false).unwrap();
    dentaltid.execute_batch("DROP TRIGGER block_exports").unwrap();
    let while_off = clinic.add_dentaltid("Added", "WhileOff", None);

    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == due));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    assert_eq!(sync.source_info(while_off).unwrap().external_id, None, "added while Live Sync was off");
}

#[test]
fn a_new_patient_on_the_pk_of_nanopix_s_deleted_last_patient_is_imported() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let pk_of = |id: &str| clinic.nanopix_rows(&format!("SELECT pk FROM Patient WHERE id = '{id}'"), |r| r.get(0));
    let old_pk: Vec<i64> = pk_of("20250121_152638");
    let mut conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    let replace = conn.transaction().unwrap();
    replace.execute("DELETE FROM Patient WHERE id = '20250121_152638'", []).unwrap();
    replace
        .execute(
            "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime)
             VALUES ('20250122_091500', 'Mansouri', 'Yacine', '2001-05-19', '2025-01-22 09:15:08')",
            [],
        )
        .unwrap();
    replace.commit().unwrap();
    std::fs::create_dir(clinic.root.join("20250122_091500")).unwrap();
    assert_eq!(pk_of("20250122_091500"), old_pk, "NanoPix gave the new patient the deleted row's pk");
    imported(&sync, "20250122_091500");
}

#[test]
fn polling_mode_is_announced_and_syncs() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config();
    config.watch_mode = WatchMode::Polling;
    config.poll_interval = Duration::from_millis(50);
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::WatcherMode { mode, .. } if mode == "polling"));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
}

#[test]
fn a_vanished_root_is_reported_and_recovered_without_restart() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let away = clinic.unplug_nanopix();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { .. }));
    std::fs::rename(&away, &clinic.root).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::WatcherMode { .. }));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
}

/// The clinic keeps a copy of NanoPix's `database` folder beside `PatientData` (made before an
/// update), and NanoPix's own `database` folder is gone for a moment (a restore under way). The
/// root was `PatientData` when the sync opened it: its database is missing (`not_found`, as on an
/// unplugged share), and the sync goes on once it is back. Taking the root for a folder inside
/// `PatientData` would tell support staff to point the sync at the copy, an old database.
#[test]
fn a_nanopix_database_gone_for_a_moment_is_missing_not_a_sign_of_the_wrong_root() {
    let clinic = Clinic::new("v29");
    let sync = live_watching(&clinic, true);
    copy_tree(&clinic.root.join("database"), &clinic.dir.path().join("database"));
    let restoring = clinic.dir.path().join("restoring");
    std::fs::rename(clinic.root.join("database"), &restoring).unwrap();
    let reported = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { .. }));
    let EventKind::SyncError { code, message, .. } = reported.kind else { unreachable!() };
    assert_eq!(code, "not_found", "{message}");
    let error = sync.reconcile().unwrap_err();
    assert_eq!(error.code(), "not_found", "{error}");
    std::fs::rename(&restoring, clinic.root.join("database")).unwrap();
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
}

/// The root replaced by a copy under its name faster than the watcher looks (a restore, data
/// moved back from another disk): the watcher starts watching the copy, so a patient folder
/// removed from it is reported without waiting for the hourly reconcile.
#[cfg(unix)]
#[test]
fn a_root_replaced_by_a_copy_under_its_name_is_watched_again() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let away = clinic.dir.path().join("PatientData.old");
    std::fs::rename(&clinic.root, &away).unwrap();
    copy_tree(&away, &clinic.root);
    std::fs::remove_dir_all(&away).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::WatcherMode { .. }));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    fixture_folder_removal_reported(&sync);
}

#[test]
fn a_root_that_comes_back_as_another_copy_is_synced_from_that_copy() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let away = clinic.unplug_nanopix();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { .. }));
    copy_tree(&away, &clinic.root);
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::WatcherMode { .. }));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let exported = wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id),
    );
    let EventKind::PatientExported { external_id, .. } = exported.kind else { unreachable!() };
    let rows: Vec<String> =
        clinic.nanopix_rows(&format!("SELECT last_name FROM Patient WHERE id = '{external_id}'"), |r| r.get(0));
    assert_eq!(rows, vec!["Cherif"], "the export went into the copy NanoPix now uses");
}

#[test]
fn exports_and_imports_never_echo() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.exported, report.linked), (0, 0, 0));
    let nanopix: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    let dentaltid: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM patients", |r| r.get(0));
    assert_eq!((nanopix, dentaltid), (vec![3], vec![9]));
}

/// NanoPix rows enough for a first sync that goes on for seconds after its first import, even
/// on an idle machine: a test stopping it there never finds it ended.
const MANY: u32 = 100_000;

/// Adds `count` NanoPix rows in one transaction, enough for a pass that takes a while.
fn add_many_nanopix_rows(clinic: &Clinic, count: u32) {
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..count {
        let id = numbered_nanopix_id(i);
        conn.execute(
            "INSERT OR IGNORE INTO Patient(id, last_name, first_name) VALUES (?1, 'Many', ?2)",
            (&id, i.to_string()),
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
}

/// Closing in the middle of a first sync of [`MANY`] NanoPix patients cuts it short: its
/// `reconciled` says it stopped early, and `closed` comes last. What the close did is checked,
/// not how long it took: on a loaded machine that tells too little.
#[test]
fn close_mid_reconcile_cuts_it_short_and_ends_with_closed() {
    let clinic = Clinic::new("v29");
    add_many_nanopix_rows(&clinic, MANY);
    let mut sync = clinic.open();
    let events = sync.events();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientImported { .. }));
    let started = Instant::now();
    sync.close();
    let took = started.elapsed();
    assert!(took < DEADLINE, "close took {took:?}");
    let after: Vec<EventKind> = events.try_iter().map(|event| event.kind).collect();
    assert_eq!(after.last(), Some(&EventKind::Closed));
    let cut_short = after.iter().find_map(|kind| match kind {
        EventKind::Reconciled(report) => Some(report.stopped_early),
        _ => None,
    });
    assert_eq!(cut_short, Some(true), "the reconcile says it stopped early");
}

/// Switching Live Sync off in the middle of its first sync of [`MANY`] NanoPix patients returns
/// with that sync cut short, not run to its end.
#[test]
fn switching_live_sync_off_mid_pass_cuts_the_pass_short() {
    let clinic = Clinic::new("v29");
    add_many_nanopix_rows(&clinic, MANY);
    let sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientImported { .. }));
    let started = Instant::now();
    sync.set_live_sync(false).unwrap();
    let took = started.elapsed();
    assert!(took < DEADLINE, "switching off took {took:?}");
    let imported = sync.patients(PatientFilter::AllByExternal).unwrap().len();
    assert!(imported < MANY as usize, "the automatic pass stopped early ({imported} imported)");
}

#[test]
fn a_rust_callback_receives_events_until_it_is_cleared() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let (seen, received) = crossbeam_channel::unbounded();
    sync.set_callback(Some(Box::new(move |event| {
        let _ = seen.send(event.kind.clone());
    })));
    sync.reconcile().unwrap();
    let first = received.recv_timeout(DEADLINE).unwrap();
    assert!(matches!(first, EventKind::PatientImported { .. }), "{first:?}");
    sync.set_callback(None);
    while received.try_recv().is_ok() {}
    sync.set_live_sync(true).unwrap();
    drop(sync);
    assert!(received.try_recv().is_err(), "a cleared callback is never called again, even for `closed`");
}

#[test]
fn a_rust_callback_may_close_the_last_handle_itself() {
    let clinic = Clinic::new("v29");
    let shared = Arc::new(Mutex::new(Some(clinic.open())));
    let (seen, received) = crossbeam_channel::unbounded();
    let (closed, closings) = crossbeam_channel::unbounded();
    let inside = shared.clone();
    let callback = move |event: &nanopix_sync::Event| {
        let _ = seen.send(event.kind.clone());
        let last_handle = inside.lock().unwrap().take();
        if let Some(sync) = last_handle {
            let _ = closed.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(sync))).is_ok());
        }
    };
    {
        let guard = shared.lock().unwrap();
        let sync = guard.as_ref().unwrap();
        sync.set_callback(Some(Box::new(callback)));
        sync.reconcile().unwrap();
    }
    let mut heard = Vec::new();
    until(DEADLINE, "the callback hears `closed`", || {
        heard.extend(received.try_iter());
        heard.contains(&EventKind::Closed)
    });
    assert_eq!(closings.try_iter().collect::<Vec<_>>(), [true], "closing inside the callback does not panic");
}

/// A callback closes the handle it shares (keeping it), then clears itself from there: the
/// call returns, as it does inside a callback of an open handle, instead of waiting forever
/// for the callback's own call to end.
#[test]
fn a_rust_callback_that_closed_its_handle_may_still_clear_itself() {
    let clinic = Clinic::new("v29");
    let shared = Arc::new(Mutex::new(clinic.open()));
    let (cleared, clearings) = crossbeam_channel::bounded(1);
    let inside = shared.clone();
    let callback = move |event: &nanopix_sync::Event| {
        if matches!(event.kind, EventKind::Reconciled(_)) {
            let mut sync = inside.lock().unwrap();
            sync.close();
            sync.set_callback(None);
            let _ = cleared.send(());
        }
    };
    shared.lock().unwrap().set_callback(Some(Box::new(callback)));
    shared.lock().unwrap().reconcile().unwrap();
    assert!(clearings.recv_timeout(DEADLINE).is_ok(), "set_callback returns inside the callback after close");
    let sync = shared.lock().unwrap();
    assert!(matches!(sync.live_sync(), Err(nanopix_sync::Error::Closed)), "the handle is closed");
}

/// The host's callback switches Live Sync off as it hears of a patient Live Sync imported: the
/// switch returns (the watcher never waits for the callback's thread), and the watcher is off.
#[test]
fn a_rust_callback_may_switch_live_sync_off() {
    let clinic = Clinic::new("v29");
    let sync = Arc::new(live(&clinic));
    let (switched, switches) = crossbeam_channel::bounded(1);
    let inside = Arc::downgrade(&sync);
    sync.set_callback(Some(Box::new(move |event| {
        if let (EventKind::PatientImported { .. }, Some(sync)) = (&event.kind, inside.upgrade()) {
            let _ = switched.try_send(sync.set_live_sync(false).map_err(|error| error.code()));
        }
    })));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let switch = switches.recv_timeout(DEADLINE).expect("the switch inside the callback returns");
    assert_eq!(switch, Ok(()));
    assert!(!sync.live_sync().unwrap());
    drain(&sync);
    clinic.add_nanopix("20250122_091600", "Haddad", "Sami", Some("1999-09-09"));
    assert_eq!(sync.reconcile().unwrap().imported, 1, "nothing synced Sami while Live Sync was off");
}

#[test]
fn a_live_pass_links_exact_matches_and_reports_near_misses() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_091500", "BENALI", "Amina", Some("1985-03-12"));
    let linked = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientLinked { .. }));
    assert!(
        matches!(linked.kind, EventKind::PatientLinked { patient_id: 1, ref external_id, .. } if external_id == "20250122_091500")
    );

    clinic.add_nanopix("20250122_091600", "Haddad", "Karim", Some("1970-06-01"));
    let reported = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PossibleDuplicate { .. }));
    let EventKind::PossibleDuplicate { reason, candidates, .. } = reported.kind else { unreachable!() };
    assert_eq!(reason, nanopix_sync::DuplicateReason::MissingBirthDate, "Karim has no birth date in DentalTID");
    assert_eq!(candidates.iter().map(|c| c.patient_id).collect::<Vec<_>>(), vec![6]);
}

/// DentalTID saves a linked patient from a stale model, clearing her `external_id`; then NanoPix
/// registers her again. The live pass that finds the new NanoPix patient counts her as linked,
/// as a full reconcile does: it reports her beside the new patient instead of linking her to it.
#[test]
fn a_live_pass_never_links_a_patient_whose_external_id_dentaltid_cleared_to_another_nanopix_patient() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_091500", "BENALI", "Amina", Some("1985-03-12"));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientLinked { patient_id: 1, .. }));
    another_program(&clinic.dentaltid).execute("UPDATE patients SET external_id = NULL WHERE id = 1", []).unwrap();
    clinic.add_nanopix("20250122_093000", "Benali", "Amina", Some("1985-03-12"));
    let reported = wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::PossibleDuplicate { external_id, .. } if external_id == "20250122_093000"),
    );
    let EventKind::PossibleDuplicate { reason, candidates, .. } = reported.kind else { unreachable!() };
    assert_eq!(reason, nanopix_sync::DuplicateReason::AlreadyLinked);
    assert_eq!(candidates.iter().map(|c| c.patient_id).collect::<Vec<_>>(), vec![1]);
    let links = clinic
        .dentaltid_rows("SELECT external_id FROM nanopix_sync_links WHERE patient_id = 1", |r| r.get::<_, String>(0));
    assert_eq!(links, ["20250122_091500"]);
}

/// Deletes in DentalTID the patient the fixture's NanoPix patient was imported as; returns its id.
fn delete_the_imported_patient(clinic: &Clinic, sync: &NanoPixSync) -> i64 {
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    rusqlite::Connection::open(&clinic.dentaltid)
        .unwrap()
        .execute("DELETE FROM patients WHERE id = ?1", [patient_id])
        .unwrap();
    patient_id
}

#[test]
fn a_linked_patient_deleted_in_dentaltid_is_noticed_live() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let patient_id = delete_the_imported_patient(&clinic, &sync);
    let asked = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { .. }));
    assert_eq!(asked.kind, EventKind::DeleteRequested { patient_id, external_id: "20250121_152638".into() });
}

/// Support staff edit the state of the imported patient's link into a word the sync never writes
/// (or a newer version wrote it), and the patient is deleted in DentalTID while Live Sync runs:
/// the pass that notices the deletion and "Sync Now" after it agree, as a live pass that reads the
/// id does, and leave her NanoPix patient alone, neither imported back nor asked to be deleted.
#[test]
fn a_deleted_patient_whose_link_state_was_edited_unreadable_is_left_alone_by_live_sync() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    archive_link_then(&clinic.dentaltid, patient_id, "DELETE FROM patients WHERE id = ?1");
    let mut seen = Vec::new();
    let imported_back = |e: &EventKind| matches!(e, EventKind::PatientImported { .. });
    record_until(&sync, &mut seen, |e| reports_unreadable_link(e, patient_id) || imported_back(e));
    record_until(&sync, &mut seen, |e| matches!(e, EventKind::Reconciled(_)));
    let sync_now = sync.reconcile().unwrap();
    seen.extend(drain(&sync).into_iter().map(|event| event.kind));

    let touched: Vec<&EventKind> =
        seen.iter().filter(|e| imported_back(e) || matches!(e, EventKind::DeleteRequested { .. })).collect();
    assert!(touched.is_empty(), "{touched:#?}");
    assert_eq!((sync_now.imported, sync_now.errors), (0, 1), "Sync Now reports the row again");
}

/// A patient deleted by mistake in DentalTID, whose NanoPix patient holds an image so it stays,
/// is added again exactly as before: Live Sync links the new patient to that NanoPix patient
/// instead of exporting a second one.
#[test]
fn a_patient_added_again_after_its_deletion_gets_its_nanopix_patient_back() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    delete_the_imported_patient(&clinic, &sync);
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { .. }));
    assert_eq!(sync.delete_in_nanopix("20250121_152638").map_err(|e| e.code()), Err("not_empty"));
    let again = clinic.add_dentaltid("FSFFS", "DSSSSFSFS", Some("2025-01-21"));
    let outcome = wait_for(&sync, DEADLINE, |e| match e {
        EventKind::PatientExported { patient_id, .. } | EventKind::PatientLinked { patient_id, .. } => {
            *patient_id == again
        }
        _ => false,
    });
    assert!(matches!(outcome.kind, EventKind::PatientLinked { .. }), "{:?}", outcome.kind);
    let people: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient", |r| r.get(0));
    assert_eq!(people, ["20250121_152638"]);
    let info = sync.source_info(again).unwrap();
    assert_eq!((info.external_id.as_deref(), info.image_count), (Some("20250121_152638"), 1));
    assert_eq!(sync.delete_in_nanopix("20250121_152638").map_err(|e| e.code()), Err("delete_not_requested"));
}

#[test]
fn a_patient_folder_removed_while_watching_is_reported_without_waiting_for_the_hourly_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    fixture_folder_removal_reported(&sync);
}

/// NanoPix may save a new patient's row before it makes the folder: a full reconcile in
/// between (the hourly one, "Sync Now", or one a folder removed elsewhere leads to) finds the row
/// without its folder, which is not a removal.
#[test]
fn a_nanopix_patient_whose_folder_is_not_made_yet_is_not_reported_removed() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix_row("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let patient_id = imported(&sync, "20250122_091500");
    let report = sync.reconcile().unwrap();
    // The reconcile's events are queued before it returns.
    let removed: Vec<EventKind> = drain(&sync)
        .into_iter()
        .map(|e| e.kind)
        .filter(|e| matches!(e, EventKind::ExternalPatientRemoved { .. }))
        .collect();
    let state = sync.source_info(patient_id).unwrap().link_state;
    assert!(
        report.removed == 0 && removed.is_empty() && state == Some(LinkState::Linked),
        "a patient NanoPix just created (row saved, folder not yet made) is reported removed: \
         report.removed = {}, events = {removed:#?}, link state = {state:?}",
        report.removed
    );
}

#[test]
fn a_patient_folder_made_again_restores_its_link_without_waiting_for_the_hourly_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let patient_id = imported(&sync, "20250122_091500");
    // A full reconcile sees the folder: from then on, it can go missing.
    sync.reconcile().unwrap();
    std::fs::remove_dir(clinic.root.join("20250122_091500")).unwrap();
    let removed = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::ExternalPatientRemoved { .. }));
    assert_eq!(
        removed.kind,
        EventKind::ExternalPatientRemoved {
            patient_id,
            external_id: "20250122_091500".into(),
            missing: "folder".into()
        }
    );
    std::fs::create_dir(clinic.root.join("20250122_091500")).unwrap();
    wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::ExternalPatientRestored { patient_id: p, .. } if *p == patient_id),
    );
    assert_eq!(sync.source_info(patient_id).unwrap().link_state, Some(LinkState::Linked));
}

/// Two DentalTID patients show one NanoPix id (an older version wrote such duplicates): when
/// NanoPix deletes the row and adds it back, a live pass restores both links, not one.
#[test]
fn a_nanopix_row_added_back_restores_every_link_to_it_live() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let holders = [(); 2].map(|()| clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19")));
    rusqlite::Connection::open(&clinic.dentaltid)
        .unwrap()
        .execute("UPDATE patients SET external_id = '20250122_091500' WHERE id IN (?1, ?2)", holders)
        .unwrap();
    let sync = live(&clinic);
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute("DELETE FROM Patient WHERE id = '20250122_091500'", []).unwrap();
    let changed = |sync: &NanoPixSync, restored: bool| {
        let mut patients: Vec<i64> = [(); 2]
            .map(|()| {
                let event = wait_for(sync, DEADLINE, |e| match e {
                    EventKind::ExternalPatientRestored { .. } => restored,
                    EventKind::ExternalPatientRemoved { .. } => !restored,
                    _ => false,
                });
                match event.kind {
                    EventKind::ExternalPatientRestored { patient_id, .. }
                    | EventKind::ExternalPatientRemoved { patient_id, .. } => patient_id,
                    _ => unreachable!("wait_for returns what was waited for"),
                }
            })
            .into();
        patients.sort_unstable();
        patients
    };
    assert_eq!(changed(&sync, false), holders, "both are removed");
    nanopix
        .execute("INSERT INTO Patient(id, last_name, first_name) VALUES ('20250122_091500', 'Mansouri', 'Yacine')", [])
        .unwrap();
    assert_eq!(changed(&sync, true), holders, "both are restored");
    for patient in holders {
        assert_eq!(sync.source_info(patient).unwrap().link_state, Some(LinkState::Linked));
    }
}

/// Live Sync on, the sync's indexes gone (a crash in a bulk import) and `dentaltid.db` read-only
/// when the handle opened: once it is writable, a live pass connects again before it builds the
/// indexes, and a new NanoPix patient arrives without waiting for the hourly reconcile.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_live_pass_connects_again_to_a_dentaltid_made_writable_before_building_the_indexes() {
    use std::os::unix::fs::PermissionsExt;
    let clinic = Clinic::new("v29");
    {
        let sync = clinic.open_without_automatic_work();
        sync.set_live_sync(true).unwrap();
        sync.reconcile().unwrap();
    }
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid
        .execute_batch("DROP INDEX nanopix_sync_patients_external_id; DROP INDEX nanopix_sync_patients_date_of_birth;")
        .unwrap();
    let set_mode = |mode| std::fs::set_permissions(&clinic.dentaltid, std::fs::Permissions::from_mode(mode)).unwrap();
    common::obey_file_modes_on_this_thread();
    set_mode(0o444);
    let sync = clinic.open();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { .. }));
    set_mode(0o644);
    clinic.add_nanopix("20250122_094500", "Noor", "Lina", Some("1990-02-03"));
    imported(&sync, "20250122_094500");
}

/// NanoPix's `database` folder refuses the sync while Live Sync runs (its permissions changed, a
/// share that no longer lets this user in): the watcher reports it as refused, not as missing,
/// and syncs again once the folder lets the sync in.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_nanopix_folder_that_refuses_the_watcher_is_reported_as_refused_and_watched_again() {
    use std::os::unix::fs::PermissionsExt;
    common::obey_file_modes_on_this_thread();
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let database_folder = clinic.root.join("database");
    let set_mode = |mode| std::fs::set_permissions(&database_folder, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o000);
    let reported = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { .. }));
    set_mode(0o755);
    let EventKind::SyncError { code, path, .. } = reported.kind else { unreachable!() };
    let database = clinic.nanopix_db().display().to_string();
    assert_eq!((code.as_str(), path.as_deref()), ("io", Some(database.as_str())));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    clinic.add_nanopix("20250122_094500", "Noor", "Lina", Some("1990-02-03"));
    imported(&sync, "20250122_094500");
}

#[test]
fn a_page_or_more_of_new_nanopix_patients_while_watching_is_synced_by_a_full_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    add_many_nanopix_rows(&clinic, 6_000);
    let reconciled = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(report) if report.imported > 0));
    let EventKind::Reconciled(report) = reconciled.kind else { unreachable!() };
    assert_eq!(report.imported, 6_000, "all of them, in the full reconcile's short transactions");
    assert_eq!(
        sync.patients(PatientFilter::AllByExternal).unwrap().len(),
        6_001,
        "the fixture patient and each new one once"
    );
}

/// Every event that arrives within `span`: for checking what does not happen while nothing
/// changes.
fn events_within(sync: &NanoPixSync, span: Duration) -> Vec<EventKind> {
    let until = Instant::now() + span;
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match sync.events().recv_timeout(left) {
            Ok(event) => seen.push(event.kind),
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn an_export_that_keeps_failing_is_not_retried_while_nothing_changes() {
    let clinic = Clinic::new("v29");
    // A NanoPix whose `Patient` table has a NOT NULL column the sync does not fill: every
    // export fails.
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("ALTER TABLE Patient RENAME TO Patient_old").unwrap();
    nanopix
        .execute_batch(
            "CREATE TABLE Patient(pk INTEGER PRIMARY KEY, id VARCHAR(250) NOT NULL UNIQUE,
                 last_name VARCHAR(250) NOT NULL, first_name VARCHAR(250), birthdate DATE,
                 created_datetime DATETIME, clinic_id INTEGER NOT NULL);
             INSERT INTO Patient SELECT pk, id, last_name, first_name, birthdate, created_datetime, 1 FROM Patient_old;",
        )
        .unwrap();
    let sync = live(&clinic);
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { patient_id: Some(p), .. } if *p == patient_id));
    // The first attempt's own writes (its journal row, the export cursor) wake a pass for each
    // batch the watcher sees them in, one or a few, and each pass tries again; after that,
    // nothing changes, so nothing is tried again: the tries end, 3 s pass without an event.
    let mut retries = Vec::new();
    until(DEADLINE * 2, "the tries end", || {
        let meanwhile = events_within(&sync, Duration::from_secs(3));
        retries.extend_from_slice(&meanwhile);
        meanwhile.is_empty()
    });
    let tried_again = |e: &EventKind| matches!(e, EventKind::SyncError { patient_id: Some(p), .. } if *p == patient_id);
    assert!(retries.iter().all(tried_again), "only her export was tried again: {retries:#?}");
}

#[test]
fn a_live_pass_that_failed_on_a_locked_dentaltid_is_tried_again_once_the_lock_is_gone() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    // DentalTID keeps a write transaction open past the sync's busy timeout, then rolls it back.
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { code, .. } if code == "busy"));
    // Tried again after 1 s and 2 s meanwhile, failing the same way: reported once.
    let meanwhile = events_within(&sync, Duration::from_secs(3));
    assert!(meanwhile.iter().all(|e| !matches!(e, EventKind::SyncError { .. })), "{meanwhile:#?}");
    dentaltid.execute_batch("ROLLBACK").unwrap();
    imported(&sync, "20250122_091500");
}

/// NanoPix holds its write lock past the sync's busy timeout while a DentalTID patient is added,
/// then lets go without committing: no change wakes a pass, so the export is tried again on its own.
#[test]
fn an_export_refused_by_a_busy_nanopix_is_tried_again_once_the_lock_is_gone() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::SyncError { code, patient_id: Some(p), .. } if code == "busy" && *p == patient_id),
    );
    // The passes the first attempt's own writes wake fail the same way while the lock is held:
    // wait until 3 s pass without an event (each attempt takes about 2.4 s to give up).
    loop {
        let meanwhile = events_within(&sync, Duration::from_secs(3));
        assert!(!meanwhile.iter().any(|e| matches!(e, EventKind::PatientExported { .. })), "{meanwhile:#?}");
        if meanwhile.is_empty() {
            break;
        }
    }
    nanopix.execute_batch("ROLLBACK").unwrap();
    wait_for(
        &sync,
        Duration::from_secs(15),
        |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id),
    );
}

/// NanoPix holds its write lock past the sync's busy timeout from before `open` until after the
/// reconcile Live Sync starts with, then lets go without committing. The export `open` found
/// waiting in the journal is refused while locked at `open`, and left alone by that reconcile,
/// which comes right after: it is still tried again on its own once the lock is gone.
#[test]
fn a_repair_refused_by_a_busy_nanopix_at_open_is_tried_again_once_the_lock_is_gone() {
    let clinic = Clinic::new("v29");
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    assert!(matches!(sync.export_patient(1), Err(nanopix_sync::Error::Busy { .. })));
    drop(sync);
    let sync = clinic.open();
    let mut refusals = 0;
    wait_for(&sync, DEADLINE, |e| {
        refusals += usize::from(matches!(e, EventKind::SyncError { code, patient_id: Some(1), .. } if code == "busy"));
        matches!(e, EventKind::Reconciled(_))
    });
    assert_eq!(refusals, 1, "refused at open, left alone by the reconcile right after");
    // Passes woken meanwhile fail the same way while the lock is held: wait until 3 s pass
    // without an event.
    while !events_within(&sync, Duration::from_secs(3)).is_empty() {}
    nanopix.execute_batch("ROLLBACK").unwrap();
    wait_for(&sync, Duration::from_secs(15), |e| matches!(e, EventKind::PatientExported { patient_id: 1, .. }));
}

#[test]
fn a_nanopix_row_added_back_restores_its_link_live_and_a_folder_put_back_at_the_next_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
    let removed = |e: &EventKind| matches!(e, EventKind::ExternalPatientRemoved { external_id, .. } if external_id == "20250122_091500");
    let restored = |e: &EventKind| matches!(e, EventKind::ExternalPatientRestored { external_id, .. } if external_id == "20250122_091500");
    // The row, deleted, then added back with its id (it gets a new `pk`).
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute("DELETE FROM Patient WHERE id = '20250122_091500'", []).unwrap();
    wait_for(&sync, DEADLINE, removed);
    nanopix
        .execute("INSERT INTO Patient(id, last_name, first_name) VALUES ('20250122_091500', 'Mansouri', 'Yacine')", [])
        .unwrap();
    wait_for(&sync, DEADLINE, restored);
    // The folder, moved away, then put back.
    let away = clinic.dir.path().join("moved");
    std::fs::rename(clinic.root.join("20250122_091500"), &away).unwrap();
    wait_for(&sync, DEADLINE, removed);
    std::fs::rename(&away, clinic.root.join("20250122_091500")).unwrap();
    assert_eq!(sync.reconcile().unwrap().removed, 0);
    wait_for(&sync, DEADLINE, restored);
}

/// Replaces `NanoPix.db3` as a restore or a "save a copy, then rename it" does: a copy of the
/// file with one more patient (`id`), renamed over it.
#[cfg(unix)]
fn replace_nanopix_db_by_rename(clinic: &Clinic, id: &str) {
    let copy = clinic.root.join("database/NanoPix.db3.restore");
    std::fs::copy(clinic.nanopix_db(), &copy).unwrap();
    let sql = "INSERT INTO Patient(id, last_name, first_name) VALUES (?1, 'Restored', 'Patient')";
    rusqlite::Connection::open(&copy).unwrap().execute(sql, [id]).unwrap();
    std::fs::rename(&copy, clinic.nanopix_db()).unwrap();
    std::fs::create_dir(clinic.root.join(id)).unwrap();
}

/// Unix only: on Windows an open database file cannot be replaced (README, "Restoring a backup").
#[cfg(unix)]
#[test]
fn a_nanopix_db_replaced_under_its_name_is_synced_from_the_new_file() {
    for polling in [false, true] {
        let clinic = Clinic::new("v29");
        let sync = live_watching(&clinic, polling);
        replace_nanopix_db_by_rename(&clinic, "20250122_091500");
        imported(&sync, "20250122_091500");
        clinic.add_nanopix("20250122_091600", "Haddad", "Sami", Some("1999-09-09"));
        imported(&sync, "20250122_091600");
        let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
        wait_for(
            &sync,
            DEADLINE,
            |e| matches!(e, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id),
        );
        let rows: Vec<String> =
            clinic.nanopix_rows("SELECT last_name FROM Patient WHERE last_name = 'Cherif'", |r| r.get(0));
        assert_eq!(rows, ["Cherif"], "polling {polling}: the export is in the file NanoPix uses");
    }
}

/// NanoPix as a busy clinic uses it: 15 transactions of 8 new patients, each row's folder a
/// little later; now and then a name corrected, a row deleted and added back with its id.
fn busy_nanopix(clinic: &Clinic) {
    let mut conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    for batch in 0..15u32 {
        let tx = conn.transaction().unwrap();
        for i in 0..8u32 {
            let sql = "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime)
                       VALUES (?1, ?2, 'Np', '1990-01-01', '2025-01-23 08:00:00')";
            tx.execute(sql, (format!("20250123_{batch:02}{i:02}00"), format!("Batch{batch}x{i}"))).unwrap();
        }
        tx.commit().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        for i in 0..8u32 {
            std::fs::create_dir(clinic.root.join(format!("20250123_{batch:02}{i:02}00"))).unwrap();
        }
        if batch % 3 == 1 {
            let id = format!("20250123_{:02}0000", batch - 1);
            conn.execute("UPDATE Patient SET last_name = 'Corrected' WHERE id = ?1", [&id]).unwrap();
            conn.execute("DELETE FROM Patient WHERE id = ?1", [&id]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let sql = "INSERT INTO Patient(id, last_name, first_name) VALUES (?1, 'Readded', 'Np')";
            conn.execute(sql, [&id]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// DentalTID as a busy front desk uses it: 40 new patients, some edited, some deleted again.
fn busy_dentaltid(clinic: &Clinic) {
    let conn = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut added = Vec::new();
    for i in 0..40 {
        conn.execute(
            "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                                  createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
             VALUES (?1, 'Dt', 30, NULL, '', '', '', 0.0, '2025-01-22T09:00:00.000', 0, 'EmergencySeverity.low', '', '', 0)",
            [format!("Dt{i}")],
        )
        .unwrap();
        added.push(conn.last_insert_rowid());
        if i % 5 == 0 {
            conn.execute("UPDATE patients SET diagnosis = 'edited' WHERE id = ?1", [conn.last_insert_rowid()]).unwrap();
        }
        if i % 7 == 3 {
            conn.execute("DELETE FROM patients WHERE id = ?1", [added[added.len() - 2]]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How many `patient_imported`, `patient_linked` and `patient_exported` events name each NanoPix id.
fn reports_per_external_id(events: &[nanopix_sync::Event]) -> std::collections::HashMap<String, usize> {
    let mut reports = std::collections::HashMap::new();
    for event in events {
        if let EventKind::PatientImported { external_id, .. }
        | EventKind::PatientLinked { external_id, .. }
        | EventKind::PatientExported { external_id, .. } = &event.kind
        {
            *reports.entry(external_id.clone()).or_default() += 1;
        }
    }
    reports
}

#[test]
fn both_programs_writing_while_live_sync_is_switched_off_and_on_keep_each_patient_once() {
    let clinic = Clinic::new("v29");
    // Both writers wait up to 5 s for a lock, and so does the sync here: on a loaded machine a
    // wait of the tests' usual half second can run out, which is a `busy` error, not a defect.
    let mut config = clinic.config();
    config.busy_timeout = Duration::from_secs(5);
    let mut sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    let (copies, called) = crossbeam_channel::unbounded();
    sync.set_callback(Some(Box::new(move |event| drop(copies.send(event.clone())))));
    let events = sync.events();
    std::thread::scope(|scope| {
        scope.spawn(|| busy_nanopix(&clinic));
        scope.spawn(|| busy_dentaltid(&clinic));
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(120));
            sync.set_live_sync(false).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            sync.set_live_sync(true).unwrap();
        }
    });
    sync.reconcile().unwrap();
    sync.close();
    let queued: Vec<nanopix_sync::Event> = events.try_iter().collect();
    assert_eq!(queued.last().map(|e| &e.kind), Some(&EventKind::Closed));
    assert!(queued.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1), "seq goes up by one");
    let called: Vec<u64> = called.try_iter().map(|event| event.seq).collect();
    assert_eq!(queued.iter().map(|event| event.seq).collect::<Vec<_>>(), called, "the callback saw the same events");
    let errors: Vec<&EventKind> =
        queued.iter().map(|e| &e.kind).filter(|k| matches!(k, EventKind::SyncError { .. })).collect();
    assert!(errors.is_empty(), "no error: {errors:#?}");

    let held: Vec<(String, i64)> = clinic.dentaltid_rows(
        "SELECT external_id, count(*) FROM patients WHERE external_id IS NOT NULL GROUP BY external_id",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    let reports = reports_per_external_id(&queued);
    for (external_id, holders) in &held {
        assert_eq!(*holders, 1, "{external_id} is held once");
        // The fixture patient was imported before the events were read here.
        let reported = reports.get(external_id).copied().unwrap_or(0);
        assert!(reported == 1 || external_id == "20250121_152638", "{external_id} reported {reported} times");
    }
    let nanopix: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient", |r| r.get(0));
    let asked: Vec<String> = queued
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::DeleteRequested { external_id, .. } => Some(external_id.clone()),
            _ => None,
        })
        .collect();
    for id in nanopix {
        assert!(held.iter().any(|(held, _)| *held == id) || asked.contains(&id), "{id} reached DentalTID");
    }
    let exported_twice: Vec<String> = clinic.nanopix_rows(
        "SELECT first_name FROM Patient WHERE last_name = 'Dt' GROUP BY first_name HAVING count(*) > 1",
        |r| r.get(0),
    );
    assert_eq!(exported_twice, Vec::<String>::new(), "no DentalTID patient exported twice");
}

/// NanoPix.db3 is replaced by a backup copy (renamed over it) while Live Sync polls, and the host
/// then confirms a `delete_requested` (for an empty NanoPix patient): the delete must act on the
/// NanoPix.db3 that is there now, as every reconcile and export opens it afresh.
///
/// Unix only: on Windows an open database file cannot be moved or replaced (README, "Restoring a
/// backup").
#[cfg(unix)]
#[test]
fn a_delete_confirmed_just_after_nanopix_db_was_restored_from_a_backup_deletes_the_patient() {
    let clinic = Clinic::new("v29");
    let id = "20250122_091500";
    clinic.add_nanopix(id, "Mansouri", "Yacine", Some("2001-05-19"));
    let mut config = clinic.config();
    config.watch_mode = nanopix_sync::WatchMode::Polling;
    config.poll_interval = Duration::from_secs(30);
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    let imported =
        wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientImported { external_id, .. } if external_id == id));
    let EventKind::PatientImported { patient_id, .. } = imported.kind else { unreachable!() };
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient_id]).unwrap();
    sync.reconcile().unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { external_id, .. } if external_id == id));
    // Last night's backup of NanoPix.db3 (it holds the patient) is restored: a copy renamed over the file.
    let backup = clinic.root.join("database/NanoPix.backup.db3");
    std::fs::copy(clinic.nanopix_db(), &backup).unwrap();
    std::fs::rename(&backup, clinic.nanopix_db()).unwrap();
    let deleted = sync.delete_in_nanopix(id);
    assert!(deleted.is_ok(), "delete_in_nanopix: {deleted:?}");
    let rows = clinic.nanopix_rows(&format!("SELECT COUNT(*) FROM Patient WHERE id = '{id}'"), |r| r.get::<_, i64>(0));
    assert_eq!(rows, vec![0]);
    assert!(!clinic.root.join(id).exists());
}

/// A NanoPix patient is imported by the same live pass that exports a DentalTID patient, and the
/// receptionist deletes the imported patient before that pass ends (here while the export waits
/// for NanoPix's lock). NanoPix still holds the patient: `delete_requested` is due, as a full
/// reconcile sends it.
#[test]
fn an_imported_patient_deleted_before_its_live_pass_ends_gets_a_delete_requested() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    drain(&sync);
    let x = "20250122_091500";
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    let nadia = common::insert_dentaltid_patient(&dentaltid, "Nadia", "Cherif", Some("1992-02-14"));
    clinic.add_nanopix(x, "Mansouri", "Yacine", Some("2001-05-19"));
    let nanopix_lock = another_program(&clinic.nanopix_db());
    nanopix_lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    dentaltid.execute_batch("COMMIT").unwrap();
    let imported =
        wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientImported { external_id, .. } if external_id == x));
    let EventKind::PatientImported { patient_id: yacine, .. } = imported.kind else { unreachable!() };
    let journaled = "SELECT COUNT(*) FROM nanopix_sync_exports WHERE patient_id = ?1";
    until(DEADLINE, "Nadia's export is journaled", || {
        dentaltid.query_row(journaled, [nadia], |r| r.get::<_, i64>(0)).unwrap() == 1
    });
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [yacine]).unwrap();
    nanopix_lock.execute_batch("ROLLBACK").unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { patient_id, .. } if *patient_id == nadia));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { external_id, .. } if external_id == x));
}

/// Holds NanoPix's write lock (NanoPix saving a study in a long transaction, say) while
/// DentalTID adds Nadia Cherif, and waits until Live Sync journaled her export, which then waits
/// for that lock. Then lets the export go on, and has DentalTID run `meanwhile` once the export
/// has written her NanoPix row, when the engine asks `clock` the time to record her link: a
/// change DentalTID makes while the export waits, made where the export can no longer see it
/// before it writes (one seen before is another case: the export starts again from the patient
/// as she is). Returns her id.
fn export_waiting_for_nanopix(
    clinic: &Clinic,
    clock: &HookedClock,
    meanwhile: impl FnOnce(&rusqlite::Connection, i64) + Send + 'static,
) -> i64 {
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    let patient = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let journaled = "SELECT COUNT(*) FROM nanopix_sync_exports WHERE patient_id = ?1";
    until(DEADLINE, "the export is journaled", || {
        dentaltid.query_row(journaled, [patient], |r| r.get::<_, i64>(0)).unwrap() == 1
    });
    let path = clinic.dentaltid.clone();
    clock.arm(Box::new(move || meanwhile(&another_program(&path), patient)));
    nanopix.execute_batch("ROLLBACK").unwrap();
    patient
}

/// Deletes DentalTID patient `patient_id`.
fn delete_patient(dentaltid: &rusqlite::Connection, patient_id: i64) {
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [patient_id]).unwrap();
}

/// DentalTID deletes a patient while Live Sync's export of it, held up by NanoPix's lock, writes
/// her row. The export ends on the NanoPix row it writes (as documented), so NanoPix holds a
/// patient whose DentalTID patient is gone: the host must get `delete_requested`, as a full
/// reconcile gives it at once (`sync.reconcile()` here sends it), not an hour later.
#[test]
fn a_patient_deleted_while_its_live_export_waits_for_nanopix_gets_a_delete_requested() {
    let clinic = Clinic::new("v29");
    let clock = HookedClock::of_the_engine();
    let sync = live_on(&clinic, &clock);
    drain(&sync);
    let patient = export_waiting_for_nanopix(&clinic, &clock, delete_patient);
    let exported = wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::PatientExported { patient_id, .. } if *patient_id == patient),
    );
    let EventKind::PatientExported { external_id, .. } = exported.kind else { unreachable!() };
    let rows = clinic
        .nanopix_rows(&format!("SELECT COUNT(*) FROM Patient WHERE id = '{external_id}'"), |r| r.get::<_, i64>(0));
    assert_eq!(rows, vec![1], "NanoPix holds the exported row");
    // The deletion's commit wakes a live pass; the hourly reconcile is far away.
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { patient_id, .. } if *patient_id == patient));
}

/// The same, and the receptionist adds her again at once with the same names and birth date.
/// README: "A patient deleted by mistake and added again with the same names and birth date gets
/// the NanoPix patient it left behind back when it is exported ... instead of a second one."
#[test]
fn a_patient_deleted_and_added_again_while_her_export_waits_gets_one_nanopix_patient() {
    let clinic = Clinic::new("v29");
    let clock = HookedClock::of_the_engine();
    let sync = live_on(&clinic, &clock);
    drain(&sync);
    let (added_again, again) = std::sync::mpsc::channel();
    let first = export_waiting_for_nanopix(&clinic, &clock, move |dentaltid, first| {
        delete_patient(dentaltid, first);
        let id = common::insert_dentaltid_patient(dentaltid, "Nadia", "Cherif", Some("1992-02-14"));
        added_again.send(id).unwrap();
    });
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { patient_id, .. } if *patient_id == first));
    let again = again.recv_timeout(DEADLINE).unwrap();
    wait_for(&sync, DEADLINE, |e| {
        matches!(e, EventKind::PatientExported { patient_id, .. } | EventKind::PatientLinked { patient_id, .. }
            if *patient_id == again)
    });
    let in_nanopix = common::nanopix_ids_named(&clinic, "Nadia", "Cherif");
    assert_eq!(in_nanopix.len(), 1, "Nadia Cherif is in NanoPix {in_nanopix:?}");
}

/// Removes the fixture's NanoPix patient, row and folder, from NanoPix while Live Sync is off,
/// switches it on again and waits for the end of the full reconcile that reports the patient
/// gone; returns the DentalTID patient it was imported as. Removed while watched, the row and
/// the folder may wake two full reconciles, the second at a moment the test cannot tell.
fn remove_the_nanopix_patient(clinic: &Clinic, sync: &NanoPixSync) -> i64 {
    let id = "20250121_152638";
    let patient: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{id}'"), |r| r.get(0))[0];
    sync.set_live_sync(false).unwrap();
    another_program(&clinic.nanopix_db()).execute("DELETE FROM Patient WHERE id = ?1", [id]).unwrap();
    std::fs::remove_dir_all(clinic.root.join(id)).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(
        sync,
        DEADLINE,
        |e| matches!(e, EventKind::ExternalPatientRemoved { patient_id, .. } if *patient_id == patient),
    );
    wait_for(sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    patient
}

/// The newest DentalTID patient, imported, loses its NanoPix patient (row and folder) and is then
/// deleted: nothing is left to delete. The passes after the full reconcile that finds it gone
/// are live passes again, though the highest id left is below that patient's.
#[test]
fn a_deleted_newest_patient_whose_nanopix_patient_is_gone_does_not_make_every_pass_a_full_reconcile() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let patient = remove_the_nanopix_patient(&clinic, &sync);
    assert_eq!(clinic.dentaltid_rows("SELECT MAX(id) FROM patients", |r| r.get::<_, i64>(0)), [patient]);
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient]).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    for (i, new) in ["20250122_091500", "20250122_091600"].into_iter().enumerate() {
        clinic.add_nanopix(new, "Mansouri", &format!("Yacine{i}"), Some("2001-05-19"));
        let mut seen = Vec::new();
        wait_for(&sync, DEADLINE, |e| {
            seen.push(e.clone());
            matches!(e, EventKind::PatientImported { external_id, .. } if external_id == new)
        });
        assert!(!seen.iter().any(|e| matches!(e, EventKind::Reconciled(_))), "a full reconcile: {seen:?}");
    }
}

/// The names, birth date and creation time of NanoPix patient `id`, as NanoPix holds them.
fn nanopix_row(clinic: &Clinic, id: &str) -> (String, String, String, String) {
    let sql = format!("SELECT last_name, first_name, birthdate, created_datetime FROM Patient WHERE id = '{id}'");
    clinic.nanopix_rows(&sql, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).remove(0)
}

/// NanoPix gets patient `id` back (a restore): its row as `saved` held it, and its folder.
fn put_back_in_nanopix(clinic: &Clinic, id: &str, saved: &(String, String, String, String)) {
    let (last, first, birth, created) = saved;
    another_program(&clinic.nanopix_db())
        .execute(
            "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime) VALUES (?1, ?2, ?3, ?4, ?5)",
            [id, last, first, birth, created],
        )
        .unwrap();
    std::fs::create_dir(clinic.root.join(id)).unwrap();
}

/// Waits for a live pass to send `delete_requested` for NanoPix patient `id`; failing that, says
/// what the live passes sent and what a full reconcile then sends.
fn assert_a_live_pass_asks_for_the_delete_of(sync: &NanoPixSync, id: &str) {
    let asked = |e: &EventKind| matches!(e, EventKind::DeleteRequested { external_id, .. } if external_id == id);
    let end = Instant::now() + DEADLINE;
    let mut live = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match sync.events().recv_timeout(left) {
            Ok(event) if asked(&event.kind) => return,
            Ok(event) => live.push(event.kind),
            Err(_) => break,
        }
    }
    sync.reconcile().unwrap();
    let full: Vec<EventKind> = drain(sync).into_iter().map(|e| e.kind).collect();
    panic!("live passes within {DEADLINE:?} said {live:?}; a full reconcile then said {full:?}");
}

/// NanoPix loses an imported patient (row and folder: `external_patient_removed`), DentalTID then
/// deletes her too, and NanoPix gets her back under the same id (a restore). A full reconcile
/// then sends `delete_requested` for her; the live pass that reads her row back must decide the
/// same, not leave it to the hourly reconcile.
#[test]
fn a_nanopix_patient_back_after_its_dentaltid_patient_was_deleted_is_decided_live_as_fully() {
    let clinic = Clinic::new("v29");
    let id = "20250121_152638";
    let sync = live(&clinic);
    let saved = nanopix_row(&clinic, id);
    let patient = remove_the_nanopix_patient(&clinic, &sync);
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient]).unwrap();
    // "Sync Now" after the deletion: NanoPix holds no row of hers, so nothing is asked.
    let report = sync.reconcile().unwrap();
    assert_eq!(report.removed, 0);
    assert!(!drain(&sync).iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. })));
    put_back_in_nanopix(&clinic, id, &saved);
    assert_a_live_pass_asks_for_the_delete_of(&sync, id);
}

/// Waits up to `deadline` for an event `wanted` accepts, keeping every event received in `seen`.
fn record_until(sync: &NanoPixSync, seen: &mut Vec<EventKind>, mut wanted: impl FnMut(&EventKind) -> bool) {
    let end = std::time::Instant::now() + DEADLINE;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match sync.events().recv_timeout(left) {
            Ok(event) => {
                let done = wanted(&event.kind);
                seen.push(event.kind);
                if done {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no matching event within {DEADLINE:?}; saw {seen:#?}");
}

/// DentalTID's database rebuilt with a `patients` table declared without AUTOINCREMENT (the
/// README allows it: the sync then takes a new patient for a deleted one), same sample patients.
fn clinic_without_autoincrement() -> Clinic {
    let clinic = Clinic::new("v29");
    std::fs::remove_file(&clinic.dentaltid).unwrap();
    let conn = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    let sql = |name: &str| std::fs::read_to_string(common::fixtures().join("dentaltid").join(name)).unwrap();
    let schema = sql("schema_v29.sql").replacen("id INTEGER PRIMARY KEY AUTOINCREMENT", "id INTEGER PRIMARY KEY", 1);
    conn.execute_batch(&schema).unwrap();
    conn.execute_batch(&sql("sample_patients.sql")).unwrap();
    clinic
}

/// The newest DentalTID patient (imported from NanoPix) is deleted; NanoPix keeps her, so a full
/// reconcile sends `delete_requested`. After that, NanoPix patients that link to existing
/// DentalTID patients (no DentalTID row is added) must be handled by live passes: counting the
/// `reconciled` events (only full reconciles send one) until an explicit "Sync Now" shows
/// whether each pass became a full reconcile.
#[test]
fn without_autoincrement_a_deleted_newest_imported_patient_makes_every_pass_a_full_reconcile() {
    let clinic = clinic_without_autoincrement();
    let sync = live(&clinic);
    let id = "20250121_152638";
    let patient: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{id}'"), |r| r.get(0))[0];
    assert_eq!(patient, 7, "the imported fixture patient is the newest");
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient]).unwrap();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::DeleteRequested { external_id, .. } if external_id == id));
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    drain(&sync);
    // Exact matches of sample patients Amina Benali and Zoé Lefèvre: each links, adds no row.
    let pairs =
        [("20250122_091500", "Benali", "Amina", "1985-03-12"), ("20250122_091600", "Lefèvre", "Zoé", "1990-07-04")];
    let mut seen = Vec::new();
    for (new, last, first, born) in pairs {
        clinic.add_nanopix(new, last, first, Some(born));
        record_until(
            &sync,
            &mut seen,
            |e| matches!(e, EventKind::PatientLinked { external_id, .. } if external_id == new),
        );
    }
    sync.reconcile().unwrap();
    seen.extend(drain(&sync).into_iter().map(|e| e.kind));
    let full = seen.iter().filter(|e| matches!(e, EventKind::Reconciled(_))).count();
    assert_eq!(full, 1, "only the explicit Sync Now reconciles fully; events: {seen:#?}");
}

/// NanoPix saves Nadia, the live pass imports her, then the receptionist types the same person
/// into DentalTID. Live Sync exports the new DentalTID patient (the matching never links two
/// DentalTID patients to one NanoPix patient), and reports her beside the imported one, as an
/// import of such a person is reported: a person decides.
#[test]
fn the_same_person_typed_in_dentaltid_after_her_nanopix_patient_was_imported_is_reported() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    clinic.add_nanopix("20250122_095950", "Saidi", "Nadia", Some("1990-03-04"));
    let first = imported(&sync, "20250122_095950");
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    let reported = wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PossibleDuplicate { .. }));
    let EventKind::PossibleDuplicate { external_id, patient_id, reason, candidates } = reported.kind else {
        unreachable!()
    };
    assert_eq!((patient_id, reason), (typed, nanopix_sync::DuplicateReason::AlreadyLinked));
    assert_eq!(candidates.iter().map(|c| c.patient_id).collect::<Vec<_>>(), [first]);
    assert_eq!(sync.source_info(typed).unwrap().external_id, Some(external_id), "her export");
}

/// A `pk` that is a plain column may hold text, which sorts after every number: the rows are
/// read in `rowid` order instead, so live passes stay live passes. New patients are imported
/// without any full reconcile (whose `reconciled` the host's own reconcile at the end follows).
#[test]
fn a_row_with_a_text_pk_does_not_make_every_live_pass_a_full_reconcile() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(
        "CREATE TABLE Patient (pk INTEGER, id VARCHAR(250), last_name VARCHAR(250), first_name VARCHAR(250),
             sex, birthdate DATE, phone, created_datetime DATETIME);
         INSERT INTO Patient(pk, id, last_name, first_name) VALUES (1, '20240101_000000', 'First', 'P');
         INSERT INTO Patient(pk, id, last_name, first_name) VALUES ('x', '20240101_000001', 'Text', 'Pk');",
    );
    let sync = live(&clinic);
    drain(&sync);
    let nanopix = another_program(&clinic.nanopix_db());
    for (pk, id) in [(2, "20250122_091500"), (3, "20250122_091600"), (4, "20250122_091700")] {
        let insert = "INSERT INTO Patient(pk, id, last_name, first_name) VALUES (?1, ?2, 'New', 'Patient')";
        nanopix.execute(insert, rusqlite::params![pk, id]).unwrap();
        std::fs::create_dir(clinic.root.join(id)).unwrap();
        imported(&sync, id);
    }
    sync.reconcile().unwrap();
    let full = drain(&sync).into_iter().filter(|e| matches!(e.kind, EventKind::Reconciled(_))).count();
    assert_eq!(full, 1, "only the host's own reconcile");
}

/// Waits for the import of a NanoPix patient with first name `first`; returns her DentalTID id.
fn imported_named(sync: &NanoPixSync, first: &str) -> i64 {
    let event =
        wait_for(sync, DEADLINE, |e| matches!(e, EventKind::PatientImported { first_name, .. } if first_name == first));
    match event.kind {
        EventKind::PatientImported { patient_id, .. } => patient_id,
        _ => unreachable!("wait_for returns what was waited for"),
    }
}

/// Live Sync on over the fixture patient and Yacine, saved and imported after it: their
/// DentalTID ids, in that order.
fn live_with_two_patients(clinic: &Clinic) -> (NanoPixSync, i64, i64) {
    let sync = live(clinic);
    let first = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let yacine = imported(&sync, "20250122_091500");
    (sync, first, yacine)
}

/// Waits until Live Sync imports Lina apart from `first`, whose link goes missing.
fn assert_newcomer_imported_apart_from(sync: &NanoPixSync, first: i64) {
    assert_ne!(imported_named(sync, "Lina"), first);
    until(DEADLINE, "the first patient's link is marked missing", || {
        sync.source_info(first).unwrap().link_state == Some(LinkState::Missing)
    });
}

#[test]
fn another_person_saved_live_under_a_removed_patients_id_is_imported_apart() {
    let clinic = Clinic::new("v29");
    let (sync, first, _) = live_with_two_patients(&clinic);
    clinic.save_another_person_under("20250121_152638");
    assert_newcomer_imported_apart_from(&sync, first);
}

/// The removal is seen first: the newcomer, saved later, does not restore the removed patient.
#[test]
fn another_person_saved_live_under_a_patients_id_seen_removed_is_imported_apart() {
    let clinic = Clinic::new("v29");
    let (sync, first, _) = live_with_two_patients(&clinic);
    another_program(&clinic.nanopix_db()).execute("DELETE FROM Patient WHERE id = '20250121_152638'", []).unwrap();
    wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::ExternalPatientRemoved { patient_id, .. } if *patient_id == first),
    );
    clinic.save_another_person_under("20250121_152638");
    let mut restored = false;
    wait_for(&sync, DEADLINE, |e| {
        restored |= matches!(e, EventKind::ExternalPatientRestored { .. });
        matches!(e, EventKind::PatientImported { first_name, .. } if first_name == "Lina")
    });
    assert!(!restored, "the removed patient is restored by the newcomer");
    assert_eq!(sync.source_info(first).unwrap().link_state, Some(LinkState::Missing));
}

/// The patient replaced was NanoPix's last row: the newcomer gets her `pk` as well as her id.
#[test]
fn another_person_saved_live_under_the_last_rows_id_and_pk_is_imported_apart() {
    let clinic = Clinic::new("v29");
    let (sync, _, last) = live_with_two_patients(&clinic);
    clinic.save_another_person_under("20250122_091500");
    assert_newcomer_imported_apart_from(&sync, last);
}

/// The first patient's row is put back exactly as it was after another person, imported apart
/// under her id, was removed: the first patient's link is restored, the other person's is not.
#[test]
fn a_patients_row_put_back_after_another_person_held_its_id_restores_only_her_link() {
    let clinic = Clinic::new("v29");
    let (sync, first, _) = live_with_two_patients(&clinic);
    let id = "20250121_152638";
    let saved = nanopix_row(&clinic, id);
    clinic.save_another_person_under(id);
    let lina = imported_named(&sync, "Lina");
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute("DELETE FROM Patient WHERE id = ?1", [id]).unwrap();
    std::fs::remove_dir_all(clinic.root.join(id)).unwrap();
    wait_for(
        &sync,
        DEADLINE,
        |e| matches!(e, EventKind::ExternalPatientRemoved { patient_id, .. } if *patient_id == lina),
    );
    put_back_in_nanopix(&clinic, id, &saved);
    let mut lina_restored = false;
    wait_for(&sync, DEADLINE, |e| {
        lina_restored |= matches!(e, EventKind::ExternalPatientRestored { patient_id, .. } if *patient_id == lina);
        matches!(e, EventKind::ExternalPatientRestored { patient_id, .. } if *patient_id == first)
    });
    lina_restored |= drain(&sync)
        .iter()
        .any(|e| matches!(e.kind, EventKind::ExternalPatientRestored { patient_id, .. } if patient_id == lina));
    assert!(!lina_restored, "the other person's link is restored to the first patient's row");
    assert_eq!(sync.source_info(lina).unwrap().link_state, Some(LinkState::Missing));
}

/// Another person takes the `pk` and id of the last row a first sync read (which reads no
/// creation times): the next live pass tells her apart all the same.
#[test]
fn another_person_saved_under_the_last_row_a_first_sync_read_is_imported_apart() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    let first = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    clinic.save_another_person_under("20250121_152638");
    assert_newcomer_imported_apart_from(&sync, first);
}

/// The host switches Live Sync on; the switch is stored, and DentalTID then holds its database
/// locked past the busy timeout, before the sync has read the setting back. Once DentalTID lets
/// go, Live Sync must run (as it would after any pass a lock refused): a NanoPix patient saved
/// then reaches DentalTID without another host call.
#[test]
fn live_sync_switched_on_runs_even_when_dentaltid_is_locked_right_after_the_switch() {
    let clinic = Clinic::new("v29");
    let clock = HookedClock::new(|_| true);
    let mut config = clinic.config();
    config.clock = Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    // The next time the sync asks the time (to stamp `live_sync_changed`, once the switch is
    // stored), DentalTID takes its exclusive lock, and holds it until released.
    let (release, released) = crossbeam_channel::bounded(1);
    let (locked, is_locked) = crossbeam_channel::bounded(1);
    let dentaltid_db = clinic.dentaltid.clone();
    clock.arm(Box::new(move || {
        std::thread::spawn(move || {
            let dentaltid = another_program(&dentaltid_db);
            dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
            locked.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(60));
            dentaltid.execute_batch("COMMIT").unwrap();
        });
        is_locked.recv().unwrap();
    }));
    sync.set_live_sync(true).unwrap();
    assert!(clock.ran(), "DentalTID took its lock right after the switch");
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { code, .. } if code == "busy"));
    release.send(()).unwrap();
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    imported(&sync, "20250122_091500");
}

/// A patient folder removed while NanoPix holds its database exclusively (a long commit) past the
/// busy timeout. Watching natively, the full reconcile the removal calls for fails opening
/// `NanoPix.db3`; polling, where a folder removed on its own calls only for a live pass, that
/// pass fails. Either is tried again as a full reconcile once the lock is gone, opening
/// `NanoPix.db3` afresh (a connection a share's reconnection left dead is never used again), so
/// the removal is reported without waiting for the hourly reconcile.
#[test]
fn a_pass_that_failed_on_a_locked_nanopix_is_tried_again_as_a_full_reconcile() {
    for polling in [false, true] {
        let clinic = Clinic::new("v29");
        let sync = live_watching(&clinic, polling);
        let nanopix = another_program(&clinic.nanopix_db());
        nanopix.execute_batch("BEGIN EXCLUSIVE").unwrap();
        std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();

        wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::SyncError { code, .. } if code == "busy"));
        nanopix.execute_batch("ROLLBACK").unwrap();
        fixture_folder_removal_reported(&sync);
    }
}

/// Whether `event` reports the entry `name` of `PatientData` as odd.
fn reports_odd_entry(event: &EventKind, name: &str) -> bool {
    matches!(event, EventKind::SyncError { code, path: Some(path), .. } if code == "odd_folder" && path.ends_with(name))
}

#[test]
fn a_stray_file_is_reported_once_while_it_stays_and_again_when_the_host_reconciles() {
    let clinic = Clinic::new("v29");
    std::fs::write(clinic.root.join("desktop.ini"), "[.ShellClassInfo]\r\n").unwrap();
    let mut config = clinic.config();
    config.full_reconcile_interval = Duration::from_millis(100);
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| reports_odd_entry(e, "desktop.ini"));
    // Reconciles every 100 ms meanwhile: only the next one after this file is written finds it.
    std::fs::write(clinic.root.join("Thumbs.db"), [0u8; 16]).unwrap();
    let mut seen = Vec::new();
    record_until(&sync, &mut seen, |e| reports_odd_entry(e, "Thumbs.db"));
    let again: Vec<&EventKind> = seen.iter().filter(|e| reports_odd_entry(e, "desktop.ini")).collect();
    assert!(again.is_empty(), "the hourly reconciles reported it again: {again:?}");
    let report = sync.reconcile().unwrap();
    assert_eq!(report.errors, 2, "Sync Now reports both: {report:?}");
}

/// DentalTID restores a backup while a handle is open: its restore deletes `dentaltid.db` and
/// copies the backup in. The handle still has the old file open, which nobody sees any more: a
/// patient the receptionist then adds to the restored file is not exported by it, and Live Sync
/// says why instead of going quiet; calls fail the same way. A handle opened on the restored
/// file exports her.
#[cfg(unix)]
#[test]
fn a_dentaltid_file_restored_under_an_open_handle_is_reported_until_a_new_handle_syncs_it() {
    let clinic = Clinic::new("v29");
    let sync = live(&clinic);
    restore_a_backup(&clinic);
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let dentaltid = clinic.dentaltid.display().to_string();
    let told =
        wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { .. } | EventKind::SyncError { .. }));
    let replaced = |e: &EventKind| matches!(e, EventKind::SyncError { code, path: Some(path), .. } if code == "io" && *path == dentaltid);
    assert!(replaced(&told.kind), "{told:?}");
    let refused = sync.reconcile().unwrap_err();
    assert_eq!(refused.code(), "io", "{refused}");
    let setting = sync.live_sync().map_err(|error| error.code());
    assert_eq!(setting, Err("io"), "the setting is not read from the old file");
    drop(sync);
    let sync = clinic.open();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::PatientExported { patient_id, .. } if *patient_id == nadia));
}

/// Restores a backup of DentalTID's database as DentalTID does: deletes the file and copies the
/// backup in, under the same name.
#[cfg(unix)]
fn restore_a_backup(clinic: &Clinic) {
    let backup = clinic.dir.path().join("backup.db");
    std::fs::copy(&clinic.dentaltid, &backup).unwrap();
    std::fs::remove_file(&clinic.dentaltid).unwrap();
    std::fs::copy(&backup, &clinic.dentaltid).unwrap();
}

/// Whether `event` reports NanoPix's row with the id `raw_id` as odd.
fn reports_odd_row(event: &EventKind, raw_id: &str) -> bool {
    matches!(event, EventKind::SyncError { code, external_id: Some(id), .. } if code == "odd_row" && id == raw_id)
}

/// Another program removes an odd NanoPix row, NanoPix's last, and saves another odd row, which
/// SQLite gives the same `pk`: another row that the sync skips, and reports, while the first is
/// not reported again.
#[test]
fn another_odd_row_at_the_pk_of_a_removed_one_is_reported() {
    let clinic = Clinic::new("v29");
    let nanopix = another_program(&clinic.nanopix_db());
    let insert_odd = "INSERT INTO Patient(id, last_name, first_name) VALUES (?1, 'Odd', 'Row')";
    nanopix.execute(insert_odd, ["2025-03-01 09:30"]).unwrap();
    let pk = nanopix.last_insert_rowid();
    let mut config = clinic.config();
    config.full_reconcile_interval = Duration::from_millis(100);
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    wait_for(&sync, DEADLINE, |e| reports_odd_row(e, "2025-03-01 09:30"));
    let tx = nanopix.unchecked_transaction().unwrap();
    tx.execute("DELETE FROM Patient WHERE pk = ?1", [pk]).unwrap();
    tx.execute(insert_odd, ["2025-03-02 11:00"]).unwrap();
    assert_eq!(tx.last_insert_rowid(), pk, "SQLite gives the new row the removed row's pk");
    tx.commit().unwrap();
    let mut seen = Vec::new();
    record_until(&sync, &mut seen, |e| reports_odd_row(e, "2025-03-02 11:00"));
    let again: Vec<&EventKind> = seen.iter().filter(|e| reports_odd_row(e, "2025-03-01 09:30")).collect();
    assert!(again.is_empty(), "the removed row was reported again: {again:?}");
}

/// DentalTID restores a backup under an open handle, and the receptionist adds Nadia Saidi to
/// the restored file; DentalTID asks for her export at once. The handle still has the old file
/// open, where she is not: the call fails with `io` naming the file, as every call of that
/// handle does, so that the host opens a new handle, not with `patient_not_found`.
#[cfg(unix)]
#[test]
fn exporting_a_patient_added_to_a_dentaltid_file_restored_under_an_open_handle_fails_with_io() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    restore_a_backup(&clinic);
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let refused = sync.export_patient(nadia).unwrap_err();
    assert_eq!(refused.code(), "io", "{refused}");
    assert!(refused.to_string().contains(&clinic.dentaltid.display().to_string()), "{refused}");
    drop(sync);
    let exported = clinic.open_without_automatic_work().export_patient(nadia);
    assert!(exported.is_ok(), "a new handle exports her: {exported:?}");
}

/// The fixture patient, imported alone and the newest, is deleted in DentalTID and her delete
/// request sent; NanoPix keeps her. Yacine, imported next, would get her DentalTID id again from
/// a `patients` table without AUTOINCREMENT: he is given the next one, so her link and her
/// delete request stay, and she is not imported back.
#[test]
fn without_autoincrement_an_import_after_a_delete_request_takes_no_deleted_patients_id() {
    let clinic = clinic_without_autoincrement();
    let sync = clinic.open();
    let (id, patient) = delete_the_imported_fixture_patient(&clinic, &sync);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    assert_eq!(sync.reconcile().unwrap().imported, 1, "Yacine");
    let yacine: i64 =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get(0))[0];
    assert_eq!(yacine, patient + 1, "Yacine is given the next id");
    assert_stays_deleted(&clinic, &sync, id);
}

/// As above, but Yacine is saved in NanoPix before any reconcile saw her gone: the reconcile that
/// imports him also asks for her delete, with her NanoPix id, and his link stays his.
#[test]
fn without_autoincrement_an_import_in_the_pass_that_finds_a_patient_deleted_takes_not_her_id() {
    let clinic = clinic_without_autoincrement();
    let sync = clinic.open();
    let (id, patient) = import_then_delete_the_fixture_patient(&clinic, &sync);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    drain(&sync);
    assert_eq!(sync.reconcile().unwrap().imported, 1, "Yacine");
    let yacine = sync.patients(PatientFilter::All).unwrap().into_iter().find(|p| p.last_name == "Mansouri").unwrap();
    assert_eq!(yacine.id, patient + 1, "Yacine is given the next id");
    let requests: Vec<(i64, String)> = drain(&sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::DeleteRequested { patient_id, external_id } => Some((patient_id, external_id)),
            _ => None,
        })
        .collect();
    assert_eq!(requests, [(patient, id.to_owned())], "her delete request");
    assert_eq!(sync.source_info(yacine.id).unwrap().link_state, Some(LinkState::Linked), "Yacine's link");
    assert_stays_deleted(&clinic, &sync, id);
}

/// Imports the fixture patient and deletes her in DentalTID (another program); returns her
/// NanoPix id and the DentalTID id she had.
fn import_then_delete_the_fixture_patient(clinic: &Clinic, sync: &NanoPixSync) -> (&'static str, i64) {
    let id = "20250121_152638";
    assert_eq!(sync.reconcile().unwrap().imported, 1);
    let patient: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{id}'"), |r| r.get(0))[0];
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient]).unwrap();
    (id, patient)
}

/// [`import_then_delete_the_fixture_patient`], then a reconcile that sends her delete request.
fn delete_the_imported_fixture_patient(clinic: &Clinic, sync: &NanoPixSync) -> (&'static str, i64) {
    let (id, patient) = import_then_delete_the_fixture_patient(clinic, sync);
    sync.reconcile().unwrap();
    let requested = drain(sync).into_iter().any(
        |e| matches!(&e.kind, EventKind::DeleteRequested { external_id, patient_id } if external_id == id && *patient_id == patient),
    );
    assert!(requested, "her delete request");
    (id, patient)
}

/// Reconciles twice: no DentalTID patient holds NanoPix id `id` again, and its delete is still
/// asked for, so the host may delete it.
fn assert_stays_deleted(clinic: &Clinic, sync: &NanoPixSync, id: &str) {
    for _ in 0..2 {
        let report = sync.reconcile().unwrap();
        let holders: Vec<i64> =
            clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{id}'"), |r| r.get(0));
        assert_eq!((report.imported, holders), (0, vec![]), "the deleted patient is not imported back");
    }
    let deleting = sync.delete_in_nanopix(id);
    let asked = matches!(deleting, Ok(()) | Err(nanopix_sync::Error::NanoPixPatientNotEmpty { .. }));
    assert!(asked, "her delete is still asked for: {deleting:?}");
}

/// As above, but DentalTID's table refuses the first NanoPix patient of the import (a trigger of
/// its own: no first name), so that row takes no id: Yacine, the next row, must still be given
/// an id past the deleted patient's, so her link and her delete request stay.
#[test]
fn without_autoincrement_an_import_whose_first_row_is_refused_takes_no_deleted_patients_id() {
    let clinic = clinic_without_autoincrement();
    let sync = clinic.open();
    let (id, patient) = delete_the_imported_fixture_patient(&clinic, &sync);
    let trigger = "CREATE TRIGGER patients_need_a_name BEFORE INSERT ON patients WHEN trim(NEW.name) = ''
         BEGIN SELECT RAISE(ABORT, 'a patient needs a name'); END";
    another_program(&clinic.dentaltid).execute_batch(trigger).unwrap();
    clinic.add_nanopix("20250122_091400", "Haddad", "", None);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (1, 1), "Yacine imported, the nameless patient refused");
    let yacine: i64 =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get(0))[0];
    assert!(yacine > patient, "Yacine ({yacine}) is given an id past hers ({patient})");
    assert_stays_deleted(&clinic, &sync, id);
}

/// A link row hand-edited to name a patient id near the end of SQLite's range, in a `patients`
/// table without AUTOINCREMENT. An import that took the id past it would leave SQLite giving
/// DentalTID's next patients random ids, all below the export cursor the import moved to the
/// end of the range: Live Sync would never export them.
#[test]
fn without_autoincrement_a_hand_edited_huge_link_id_leaves_new_patients_exported() {
    let clinic = clinic_without_autoincrement();
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    let link = "INSERT INTO nanopix_sync_links VALUES (?1, '20200101_000000', 'imported', 'delete_requested', '')";
    another_program(&clinic.dentaltid).execute(link, [i64::MAX - 1]).unwrap();
    assert_eq!(sync.reconcile().unwrap().imported, 1, "the fixture patient");
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    sync.reconcile().unwrap();
    let exported = sync.source_info(nadia).unwrap().external_id;
    assert!(exported.is_some(), "Nadia (patient {nadia}) is exported");
}

/// DentalTID restores a backup under a live handle: the failing pass says so once. The host's
/// calls then fail with `io` themselves; the loop that follows the Live Sync setting after each
/// call must not add a `sync_error` of its own for every call (a host that refreshes its
/// patients screen on events would call again at each one).
#[cfg(unix)]
#[test]
fn calls_on_a_handle_whose_dentaltid_file_was_restored_report_no_sync_error_each() {
    let clinic = Clinic::new("v29");
    let mut sync = live(&clinic);
    restore_a_backup(&clinic);
    clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let dentaltid = clinic.dentaltid.display().to_string();
    let replaced = |e: &EventKind| matches!(e, EventKind::SyncError { code, path: Some(path), .. } if code == "io" && *path == dentaltid);
    wait_for(&sync, DEADLINE, replaced);
    for _ in 0..3 {
        let refused = sync.patients(PatientFilter::All).unwrap_err();
        assert_eq!(refused.code(), "io", "{refused}");
    }
    sync.close();
    let mut seen = Vec::new();
    record_until(&sync, &mut seen, |e| matches!(e, EventKind::Closed));
    let again: Vec<&EventKind> = seen.iter().filter(|e| replaced(e)).collect();
    assert!(again.is_empty(), "reported again at each call: {again:#?}");
}

/// DentalTID deletes an imported patient and NanoPix loses her (row and folder) while the sync
/// is closed: the reconcile at `open` finds nothing left to delete and nothing to report, and
/// her link stays as it was. NanoPix then gets her back under the same id (a restore). A full
/// reconcile sends `delete_requested` for her; the live pass that reads her row back must decide
/// the same, not leave it to the hourly reconcile.
#[test]
fn a_nanopix_patient_back_after_both_sides_lost_her_while_closed_is_decided_live_as_fully() {
    let clinic = Clinic::new("v29");
    let id = "20250121_152638";
    let sync = live(&clinic);
    let patient: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{id}'"), |r| r.get(0))[0];
    drop(sync);
    let saved = nanopix_row(&clinic, id);
    another_program(&clinic.nanopix_db()).execute("DELETE FROM Patient WHERE id = ?1", [id]).unwrap();
    std::fs::remove_dir_all(clinic.root.join(id)).unwrap();
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient]).unwrap();
    let sync = clinic.open();
    wait_for(&sync, DEADLINE, |e| matches!(e, EventKind::Reconciled(_)));
    put_back_in_nanopix(&clinic, id, &saved);
    assert_a_live_pass_asks_for_the_delete_of(&sync, id);
}
