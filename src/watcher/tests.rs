//! The watcher against real folders and real SQLite files in a temporary directory, with real
//! native events and real polling.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::Connection;
use tempfile::TempDir;

use super::*;
use crate::events::Event;
use crate::{Config, SystemClock, WatchMode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures");

/// How long a test waits for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// A copy of NanoPix's `PatientData` and a DentalTID database, each in its own folder.
struct Clinic {
    _dir: TempDir,
    root: PathBuf,
    dentaltid_db: PathBuf,
}

impl Clinic {
    fn new() -> Self {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let dentaltid_folder = dir.path().join("DentalTid");
        fs::create_dir(&dentaltid_folder).unwrap();
        let dentaltid_db = dentaltid_folder.join("dentaltid.db");
        let schema = fs::read_to_string(Path::new(FIXTURES).join("dentaltid/schema_v29.sql")).unwrap();
        Connection::open(&dentaltid_db).unwrap().execute_batch(&schema).unwrap();
        Self { _dir: dir, root, dentaltid_db }
    }

    fn config(&self, mode: WatchMode, poll_interval: Duration) -> Config {
        let mut config = Config::new(&self.root, &self.dentaltid_db);
        config.watch_mode = mode;
        config.poll_interval = poll_interval;
        config
    }

    fn add_nanopix_patient(&self, id: &str) {
        let connection = Connection::open(self.root.join("database/NanoPix.db3")).unwrap();
        connection
            .execute("INSERT INTO Patient (id, last_name, first_name) VALUES (?1, 'NEW', 'Patient')", [id])
            .unwrap();
    }

    fn add_dentaltid_patient(&self) {
        let connection = Connection::open(&self.dentaltid_db).unwrap();
        connection
            .execute(
                "INSERT INTO patients (name, familyName, age, healthState, diagnosis, treatment, createdAt) \
                 VALUES ('Amina', 'Benali', 40, '', '', '', '2025-01-21T15:26:46.000')",
                [],
            )
            .unwrap();
    }
}

/// A started watcher with the receiving ends of its trigger queue and its event bus.
struct Running {
    watcher: Watcher,
    triggers: Receiver<Trigger>,
    events: Receiver<Event>,
}

fn start(config: &Config) -> Running {
    let (bus, events) = EventBus::new(Arc::new(SystemClock));
    let (sender, triggers) = crossbeam_channel::bounded(1024);
    let watcher = Watcher::start(config, sender, Arc::new(bus)).unwrap();
    Running { watcher, triggers, events }
}

/// Waits for the first event that `wanted` accepts, skipping the others.
fn wait_event(events: &Receiver<Event>, wanted: impl Fn(&EventKind) -> bool) -> EventKind {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match events.recv_deadline(deadline) {
            Ok(event) if wanted(&event.kind) => return event.kind,
            Ok(_) => {}
            Err(error) => panic!("no matching event within {PATIENCE:?}: {error}"),
        }
    }
}

/// Waits for the `watcher_mode` event and returns its mode.
fn wait_mode(events: &Receiver<Event>) -> String {
    match wait_event(events, |kind| matches!(kind, EventKind::WatcherMode { .. })) {
        EventKind::WatcherMode { mode, .. } => mode,
        other => panic!("not a watcher_mode event: {other:?}"),
    }
}

/// Waits for `wanted`, skipping other triggers.
fn wait_trigger(triggers: &Receiver<Trigger>, wanted: &Trigger) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match triggers.recv_deadline(deadline) {
            Ok(trigger) if &trigger == wanted => return,
            Ok(_) => {}
            Err(error) => panic!("no {wanted:?} within {PATIENCE:?}: {error}"),
        }
    }
}

/// Every trigger that arrives until none has come for `quiet`.
fn drain(triggers: &Receiver<Trigger>, quiet: Duration) -> Vec<Trigger> {
    let mut received = Vec::new();
    while let Ok(trigger) = triggers.recv_timeout(quiet) {
        received.push(trigger);
    }
    received
}

fn new_patient_folder_is_noticed(mode: WatchMode) {
    let clinic = Clinic::new();
    let running = start(&clinic.config(mode, Duration::from_millis(50)));
    wait_mode(&running.events);
    fs::create_dir(clinic.root.join("20250122_090000")).unwrap();
    wait_trigger(&running.triggers, &Trigger::NanoPixChanged);
    running.watcher.stop();
}

fn nanopix_commit_is_noticed(mode: WatchMode) {
    let clinic = Clinic::new();
    let running = start(&clinic.config(mode, Duration::from_millis(50)));
    wait_mode(&running.events);
    clinic.add_nanopix_patient("20250122_091500");
    wait_trigger(&running.triggers, &Trigger::NanoPixChanged);
    running.watcher.stop();
}

fn dentaltid_insert_is_noticed(mode: WatchMode) {
    let clinic = Clinic::new();
    let running = start(&clinic.config(mode, Duration::from_millis(50)));
    wait_mode(&running.events);
    clinic.add_dentaltid_patient();
    wait_trigger(&running.triggers, &Trigger::DentalTidChanged);
    running.watcher.stop();
}

#[test]
fn native_mode_is_announced_for_a_local_folder() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Auto, Duration::from_secs(2)));
    assert_eq!(wait_mode(&running.events), "native");
    running.watcher.stop();
}

#[test]
fn native_a_new_patient_folder_triggers_nanopix_changed() {
    new_patient_folder_is_noticed(WatchMode::Auto);
}

#[test]
fn native_a_nanopix_commit_triggers_nanopix_changed() {
    nanopix_commit_is_noticed(WatchMode::Auto);
}

#[test]
fn native_a_dentaltid_insert_triggers_dentaltid_changed() {
    dentaltid_insert_is_noticed(WatchMode::Auto);
}

#[test]
fn native_a_dentaltid_insert_does_not_look_like_a_nanopix_change() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Auto, Duration::from_secs(2)));
    wait_mode(&running.events);
    clinic.add_dentaltid_patient();
    wait_trigger(&running.triggers, &Trigger::DentalTidChanged);
    let later = drain(&running.triggers, Duration::from_millis(1500));
    assert!(!later.contains(&Trigger::NanoPixChanged), "unexpected triggers: {later:?}");
    running.watcher.stop();
}

#[test]
fn polling_mode_is_announced_when_configured() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Polling, Duration::from_millis(50)));
    match wait_event(&running.events, |kind| matches!(kind, EventKind::WatcherMode { .. })) {
        EventKind::WatcherMode { mode, reason } => {
            assert_eq!(mode, "polling");
            assert!(reason.contains("configured"), "reason: {reason}");
        }
        other => panic!("not a watcher_mode event: {other:?}"),
    }
    running.watcher.stop();
}

#[test]
fn polling_stays_quiet_while_nothing_changes() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Polling, Duration::from_millis(50)));
    wait_mode(&running.events);
    assert_eq!(running.triggers.recv_timeout(Duration::from_millis(400)), Err(RecvTimeoutError::Timeout));
    running.watcher.stop();
}

#[test]
fn polling_a_new_patient_folder_triggers_nanopix_changed() {
    new_patient_folder_is_noticed(WatchMode::Polling);
}

#[test]
fn polling_a_nanopix_commit_triggers_nanopix_changed() {
    nanopix_commit_is_noticed(WatchMode::Polling);
}

#[test]
fn polling_a_dentaltid_insert_triggers_dentaltid_changed() {
    dentaltid_insert_is_noticed(WatchMode::Polling);
}

fn vanishing_root_is_reported_and_recovered(mode: WatchMode) {
    let clinic = Clinic::new();
    let running = start(&clinic.config(mode, Duration::from_millis(50)));
    let first_mode = wait_mode(&running.events);
    let away = clinic.root.with_file_name("PatientData-unplugged");
    fs::rename(&clinic.root, &away).unwrap();
    match wait_event(&running.events, |kind| matches!(kind, EventKind::SyncError { .. })) {
        EventKind::SyncError { code, path, .. } => {
            assert_eq!(code, "not_found");
            assert_eq!(path.as_deref(), Some(clinic.root.display().to_string().as_str()));
        }
        other => panic!("not a sync_error event: {other:?}"),
    }
    fs::rename(&away, &clinic.root).unwrap();
    wait_trigger(&running.triggers, &Trigger::FullReconcile { reason: "root came back".into() });
    assert_eq!(wait_mode(&running.events), first_mode);
    fs::create_dir(clinic.root.join("20250122_093000")).unwrap();
    wait_trigger(&running.triggers, &Trigger::NanoPixChanged);
    running.watcher.stop();
}

#[test]
fn native_a_vanished_root_is_reported_then_watched_again() {
    vanishing_root_is_reported_and_recovered(WatchMode::Auto);
}

#[test]
fn polling_a_vanished_root_is_reported_then_watched_again() {
    vanishing_root_is_reported_and_recovered(WatchMode::Polling);
}

#[test]
fn a_vanished_root_is_reported_once() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Polling, Duration::from_millis(20)));
    wait_mode(&running.events);
    let away = clinic.root.with_file_name("PatientData-unplugged");
    fs::rename(&clinic.root, &away).unwrap();
    wait_event(&running.events, |kind| matches!(kind, EventKind::SyncError { .. }));
    let more_errors = std::iter::from_fn(|| running.events.recv_timeout(Duration::from_millis(800)).ok())
        .filter(|event| matches!(event.kind, EventKind::SyncError { .. }))
        .count();
    assert_eq!(more_errors, 0);
    running.watcher.stop();
}

#[test]
fn a_burst_of_folders_gives_few_triggers() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Auto, Duration::from_secs(2)));
    assert_eq!(wait_mode(&running.events), "native");
    for second in 0..200 {
        fs::create_dir(clinic.root.join(format!("20250123_10{:02}{:02}", second / 60, second % 60))).unwrap();
    }
    wait_trigger(&running.triggers, &Trigger::NanoPixChanged);
    let count = 1 + drain(&running.triggers, Duration::from_millis(1500)).len();
    eprintln!("200 folder creations gave {count} triggers");
    assert!(count < 50, "{count} triggers for one burst");
    running.watcher.stop();
}

fn stop_is_prompt(mode: WatchMode) {
    let clinic = Clinic::new();
    let running = start(&clinic.config(mode, Duration::from_secs(3600)));
    wait_mode(&running.events);
    let started = Instant::now();
    running.watcher.stop();
    let took = started.elapsed();
    eprintln!("stop() in {mode:?} mode took {took:?}");
    assert!(took < Duration::from_secs(1), "stop() took {took:?}");
    assert_eq!(running.triggers.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected));
}

#[test]
fn polling_stop_returns_promptly_with_an_hourly_interval() {
    stop_is_prompt(WatchMode::Polling);
}

#[test]
fn native_stop_returns_promptly() {
    stop_is_prompt(WatchMode::Auto);
}

#[test]
fn stop_returns_promptly_while_waiting_for_a_missing_root() {
    let clinic = Clinic::new();
    let mut config = clinic.config(WatchMode::Auto, Duration::from_secs(3600));
    config.nanopix_root = clinic.root.with_file_name("NotThere");
    let running = start(&config);
    wait_event(&running.events, |kind| matches!(kind, EventKind::SyncError { .. }));
    let started = Instant::now();
    running.watcher.stop();
    let took = started.elapsed();
    eprintln!("stop() while waiting for the root took {took:?}");
    assert!(took < Duration::from_secs(1), "stop() took {took:?}");
}

#[test]
fn dropping_the_watcher_ends_its_thread() {
    let clinic = Clinic::new();
    let Running { watcher, triggers, events } = start(&clinic.config(WatchMode::Polling, Duration::from_secs(3600)));
    wait_mode(&events);
    drop(watcher);
    assert_eq!(triggers.recv_timeout(PATIENCE), Err(RecvTimeoutError::Disconnected));
}

#[test]
fn the_thread_ends_quietly_when_the_engine_is_gone() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Polling, Duration::from_millis(20)));
    wait_mode(&running.events);
    let Running { watcher, triggers, events } = running;
    drop(triggers);
    // The thread owns the only bus, so its queue closes when the thread ends. It ends when it
    // has a change to report; a change made while it took its first look is not one, so make
    // a new one every poll until it does.
    let deadline = Instant::now() + PATIENCE;
    let mut folder = 0;
    let ended = loop {
        fs::create_dir(clinic.root.join(format!("20250122_0945{folder:02}"))).unwrap();
        folder += 1;
        match events.recv_timeout(Duration::from_millis(100)) {
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline && folder < 60 => continue,
            other => break other.map(|event| event.kind),
        }
    };
    assert_eq!(ended, Err(RecvTimeoutError::Disconnected));
    watcher.stop();
}

#[test]
fn a_panic_becomes_an_internal_sync_error() {
    let (bus, events) = EventBus::new(Arc::new(SystemClock));
    guarded(&bus, || panic!("boom"));
    match events.try_recv().unwrap().kind {
        EventKind::SyncError { code, message, .. } => {
            assert_eq!(code, "internal");
            assert!(message.contains("boom"), "message: {message}");
        }
        other => panic!("not a sync_error event: {other:?}"),
    }
}

#[test]
fn the_thread_has_its_name() {
    let clinic = Clinic::new();
    let running = start(&clinic.config(WatchMode::Polling, Duration::from_secs(3600)));
    assert_eq!(running.watcher.thread.thread().name(), Some(THREAD_NAME));
    running.watcher.stop();
}

#[test]
fn a_full_reconcile_waits_for_room_in_a_full_queue_and_a_change_does_not() {
    let clinic = Clinic::new();
    let (bus, _events) = EventBus::new(Arc::new(SystemClock));
    let (sender, triggers) = crossbeam_channel::bounded(1);
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let (looked, _first_look) = crossbeam_channel::bounded(1);
    let config = clinic.config(WatchMode::Auto, Duration::from_secs(1));
    let context = Context::new(&config, sender, Arc::new(bus), stopped, looked);
    context.send(Trigger::NanoPixChanged).unwrap();
    assert!(context.send(Trigger::DentalTidChanged).is_ok(), "a change is covered by the pass already queued");
    std::thread::scope(|scope| {
        let full = scope.spawn(|| context.send(Trigger::FullReconcile { reason: "overflow".into() }));
        assert_eq!(triggers.recv_timeout(PATIENCE), Ok(Trigger::NanoPixChanged));
        let reason = "overflow".to_owned();
        assert_eq!(triggers.recv_timeout(PATIENCE), Ok(Trigger::FullReconcile { reason }));
        assert!(full.join().unwrap().is_ok());
    });
    context.send(Trigger::NanoPixChanged).unwrap();
    let waiting = std::thread::scope(|scope| {
        let full = scope.spawn(|| context.send(Trigger::FullReconcile { reason: "rescan".into() }));
        drop(stop);
        full.join().unwrap()
    });
    assert!(matches!(waiting, Err(End::Stopped)), "a stopped watcher stops waiting");
}

#[test]
fn start_returns_once_the_watcher_took_its_first_look() {
    let clinic = Clinic::new();
    for mode in [WatchMode::Auto, WatchMode::Polling] {
        let running = start(&clinic.config(mode, Duration::from_secs(3600)));
        let first = running.events.try_recv().map(|event| event.kind);
        assert!(matches!(first, Ok(EventKind::WatcherMode { .. })), "{mode:?}: {first:?}");
        running.watcher.stop();
    }
}

/// Deletes the root and makes it again under its name, moving its entries into the new folder
/// through `aside`; returns whether the new folder got the old one's identity.
#[cfg(target_os = "linux")]
fn make_the_root_again(root: &Path, aside: &Path) -> bool {
    let before = FileIdentity::of(root);
    let entries: Vec<_> = fs::read_dir(root).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    for name in &entries {
        fs::rename(root.join(name), aside.join(name)).unwrap();
    }
    fs::remove_dir(root).unwrap();
    fs::create_dir(root).unwrap();
    for name in &entries {
        fs::rename(aside.join(name), root.join(name)).unwrap();
    }
    FileIdentity::of(root) == before
}

/// The root deleted and made again under its name, with its entries moved into the new folder
/// before the watcher looks (a restore into an emptied folder, say). The system may give the new
/// folder the old one's inode (ext4 does, for a folder made again at once), so only the end of
/// the root's own watch tells: the new root is watched again, and reconciled fully.
#[cfg(target_os = "linux")]
#[test]
fn native_a_root_deleted_and_made_again_under_its_name_is_watched_again() {
    let clinic = Clinic::new();
    let aside = clinic.root.with_file_name("PatientData-aside");
    fs::create_dir(&aside).unwrap();
    // Made once before watching, so that the folder made again below sits where the old one did.
    make_the_root_again(&clinic.root, &aside);
    let running = start(&clinic.config(WatchMode::Auto, Duration::from_secs(2)));
    assert_eq!(wait_mode(&running.events), "native");
    let same = make_the_root_again(&clinic.root, &aside);
    eprintln!("the new root has the old one's identity: {same}");
    wait_trigger(&running.triggers, &Trigger::FullReconcile { reason: "root came back".into() });
    fs::create_dir(clinic.root.join("20250122_093000")).unwrap();
    wait_trigger(&running.triggers, &Trigger::NanoPixChanged);
    running.watcher.stop();
}
