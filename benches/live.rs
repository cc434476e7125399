//! Live Sync latency and cost: a NanoPix commit to `patient_imported` (native events and
//! polling), a DentalTID insert to `patient_exported`, the CPU an idle watcher burns, and how a
//! steady reconcile and a live import scale from 1,000 to 100,000 patients. Each latency is set
//! against a bare notify watcher's latency for the same file operation, measured in this run.
//!
//! Live imports are also timed beside 5,000 links whose NanoPix folder alone is gone.
//!
//! Run with `cargo bench --bench live` (add `-- import_latency`, `-- export_latency`,
//! `-- latency`, `-- missing_folders`, `-- idle` or `-- scaling` for one part).

mod clinic;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use crossbeam_channel::Receiver;
use nanopix_sync::{Event, EventKind, ManualClock, NanoPixSync, WatchMode};
use notify::{RecursiveMode, Watcher};
use rusqlite::Connection;

use clinic::{Clinic, FileCopy, clinic_now, ms, percentile, percentile_line};

/// Patients the latency runs add one at a time.
const LATENCY_PATIENTS: usize = 500;
/// Live imports timed per scale in the scaling table.
const SCALING_IMPORTS: usize = 50;
/// Steady reconciles timed per scale in the scaling table.
const SCALING_RECONCILES: usize = 10;
/// How long a single change may take before the bench gives up on it.
const DEADLINE: Duration = Duration::from_secs(30);
/// Linked patients whose folder alone the missing-folders run removes.
const MISSING_FOLDERS: usize = 5_000;
/// How long the idle watcher is observed.
const IDLE: Duration = Duration::from_secs(60);

/// A live handle on a copy of a clinic's DentalTID file, with the clock it reads.
struct LiveSync {
    sync: NanoPixSync,
    events: Receiver<Event>,
    clock: ManualClock,
    dentaltid: FileCopy,
}

impl LiveSync {
    /// Opens the sync in `mode`, switches Live Sync on and waits for the first reconcile.
    fn start(clinic: &Clinic, mode: WatchMode, poll_interval: Duration) -> Self {
        let dentaltid = clinic.copy_dentaltid();
        let clock = ManualClock::new(clinic_now());
        let mut config = clinic.config(&dentaltid.path, &clock);
        config.watch_mode = mode;
        config.poll_interval = poll_interval;
        let sync = NanoPixSync::open(config).expect("open");
        let events = sync.events();
        sync.set_live_sync(true).expect("live sync on");
        wait_for(&events, Duration::from_secs(600), |kind| matches!(kind, EventKind::Reconciled(_)))
            .expect("first reconcile");
        settle(&events);
        Self { sync, events, clock, dentaltid }
    }
}

/// Waits until no event has arrived for half a second, dropping what came.
fn settle(events: &Receiver<Event>) {
    while events.recv_timeout(Duration::from_millis(500)).is_ok() {}
}

/// Waits up to `deadline` for an event `wanted` accepts.
fn wait_for(events: &Receiver<Event>, deadline: Duration, mut wanted: impl FnMut(&EventKind) -> bool) -> Option<Event> {
    let until = Instant::now() + deadline;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event.kind) => return Some(event),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Writes patients the way NanoPix does, from its own connection: the row, then the folder.
struct NanoPixWriter {
    conn: Connection,
    root: PathBuf,
    next: NaiveDateTime,
}

impl NanoPixWriter {
    /// A writer whose ids start at `first` and go up one second per patient.
    fn new(clinic: &Clinic, first: NaiveDateTime) -> Self {
        let conn = Connection::open(clinic.nanopix_db()).expect("open NanoPix");
        conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
        Self { conn, root: clinic.root.clone(), next: first }
    }

    /// Adds one patient; returns its id and the moment its row was committed.
    fn add(&mut self, n: usize) -> (String, Instant) {
        let id = self.next.format("%Y%m%d_%H%M%S").to_string();
        let created = self.next.format("%Y-%m-%d %H:%M:%S").to_string();
        self.next += chrono::Duration::seconds(1);
        self.conn
            .prepare_cached(
                "INSERT INTO Patient(id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime)
                 VALUES (?1, ?2, 'Hélène', 'Female', '1988-04-17', ?3, ?3)",
            )
            .and_then(|mut insert| insert.execute((&id, format!("Benali-Lefèvre {n}"), &created)))
            .expect("insert NanoPix patient");
        let committed = Instant::now();
        std::fs::create_dir(self.root.join(&id)).expect("patient folder");
        (id, committed)
    }
}

/// Latencies from NanoPix commits to `patient_imported`, for `count` patients.
fn import_latencies(live: &LiveSync, writer: &mut NanoPixWriter, count: usize) -> Vec<Duration> {
    (0..count)
        .map(|n| {
            let (id, committed) = writer.add(n);
            let wanted =
                |kind: &EventKind| matches!(kind, EventKind::PatientImported { external_id, .. } if *external_id == id);
            wait_for(&live.events, DEADLINE, wanted).expect("patient_imported in time");
            committed.elapsed()
        })
        .collect()
}

/// Latencies from the same NanoPix commits to a bare notify watcher's event for the new folder.
fn notify_import_latencies(
    watcher: &mut dyn Watcher,
    events: &mpsc::Receiver<notify::Result<notify::Event>>,
    writer: &mut NanoPixWriter,
) -> Vec<Duration> {
    let root = writer.root.clone();
    watcher.watch(&root, RecursiveMode::NonRecursive).expect("watch root");
    watcher.watch(&root.join("database"), RecursiveMode::NonRecursive).expect("watch database");
    std::thread::sleep(Duration::from_millis(300));
    while events.try_recv().is_ok() {}
    (0..LATENCY_PATIENTS)
        .map(|n| {
            let (id, committed) = writer.add(n);
            wait_for_path(events, &root.join(&id)).expect("notify event in time");
            committed.elapsed()
        })
        .collect()
}

/// Waits for a notify event naming `path`.
fn wait_for_path(events: &mpsc::Receiver<notify::Result<notify::Event>>, path: &Path) -> Option<()> {
    let until = Instant::now() + DEADLINE;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let event = events.recv_timeout(left).ok()?;
        if event.is_ok_and(|event| event.paths.iter().any(|p| p == path)) {
            return Some(());
        }
    }
    None
}

/// NanoPix → DentalTID latency with native events and with 100 ms polling, each against notify.
fn import_latency(clinic: &Clinic) {
    let start = clinic_now() - chrono::Duration::hours(1);
    let mut writer = NanoPixWriter::new(clinic, start);
    let live = LiveSync::start(clinic, WatchMode::Auto, Duration::from_secs(2));
    let mut native = import_latencies(&live, &mut writer, LATENCY_PATIENTS);
    drop(live);
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender).expect("notify watcher");
    let mut bare = notify_import_latencies(&mut watcher, &events, &mut writer);
    drop(watcher);
    println!("{}", percentile_line("live import, native events, 1k/1k clinic", &mut native, &mut bare, ""));

    let live = LiveSync::start(clinic, WatchMode::Polling, Duration::from_millis(100));
    let mut polling = import_latencies(&live, &mut writer, LATENCY_PATIENTS);
    drop(live);
    let (sender, events) = mpsc::channel();
    let config = notify::Config::default().with_poll_interval(Duration::from_millis(100));
    let mut watcher = notify::PollWatcher::new(sender, config).expect("poll watcher");
    let mut bare = notify_import_latencies(&mut watcher, &events, &mut writer);
    println!("{}", percentile_line("live import, polling 100 ms, 1k/1k clinic", &mut polling, &mut bare, ""));
}

/// Live import latency with native events beside links whose NanoPix folder alone is gone,
/// against the same imports before those folders went, in the same clinic and run.
fn missing_folders_latency() {
    let clinic = Clinic::generate(MISSING_FOLDERS + 1_000, 1_000);
    let mut writer = NanoPixWriter::new(&clinic, clinic_now() - chrono::Duration::hours(1));
    let live = LiveSync::start(&clinic, WatchMode::Auto, Duration::from_secs(2));
    let mut whole = import_latencies(&live, &mut writer, LATENCY_PATIENTS);
    // Empty patient folders only: the fixture patient's holds her images.
    let folders = std::fs::read_dir(&clinic.root).expect("read PatientData").map(|entry| entry.expect("entry").path());
    let patient_folders = folders.filter(|path| path.file_name().is_some_and(|name| name.len() == 15));
    let removed = patient_folders.filter(|folder| std::fs::remove_dir(folder).is_ok()).take(MISSING_FOLDERS).count();
    assert_eq!(removed, MISSING_FOLDERS, "empty patient folders removed");
    // The watcher's own full reconcile may mark some of them first.
    live.sync.reconcile().expect("reconcile");
    settle(&live.events);
    let count = "SELECT count(*) FROM nanopix_sync_links WHERE state = 'missing'";
    let marked: usize = Connection::open(&live.dentaltid.path)
        .and_then(|conn| conn.query_row(count, [], |row| row.get(0)))
        .expect("count missing links");
    assert_eq!(marked, MISSING_FOLDERS, "links marked missing");
    let mut missing = import_latencies(&live, &mut writer, LATENCY_PATIENTS);
    let line =
        format!("live import, native events, beside {MISSING_FOLDERS} missing folders (baseline: before they went)");
    println!("{}", percentile_line(&line, &mut missing, &mut whole, ""));
}

/// Adds a DentalTID patient the way DentalTID does, from its own connection; returns its id
/// and the moment the row was committed.
fn add_dentaltid(conn: &Connection, n: usize) -> (i64, Instant) {
    conn.prepare_cached(
        "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                              createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
         VALUES ('فاطمة', ?1, 36, '1989-02-11T00:00:00.000', '', '', '', 0.0, '2025-06-02T10:00:00.000', 0,
                 'EmergencySeverity.low', '', '0550000000', 0)",
    )
    .and_then(|mut insert| insert.execute([format!("بن علي {n}")]))
    .expect("insert DentalTID patient");
    (conn.last_insert_rowid(), Instant::now())
}

/// DentalTID → NanoPix latency (no host call) against notify's event for the DentalTID file.
fn export_latency(clinic: &Clinic) {
    let live = LiveSync::start(clinic, WatchMode::Auto, Duration::from_secs(2));
    let conn = Connection::open(&live.dentaltid.path).expect("open DentalTID");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    let mut library = Vec::with_capacity(LATENCY_PATIENTS);
    for n in 0..LATENCY_PATIENTS {
        live.clock.advance(chrono::Duration::seconds(1));
        let (patient_id, committed) = add_dentaltid(&conn, n);
        let wanted =
            |kind: &EventKind| matches!(kind, EventKind::PatientExported { patient_id: p, .. } if *p == patient_id);
        let event = wait_for(&live.events, DEADLINE, wanted).expect("patient_exported in time");
        library.push(committed.elapsed());
        check_exported(clinic, &event);
    }
    let LiveSync { sync, dentaltid, .. } = live;
    drop(sync);
    let mut bare = notify_dentaltid_latencies(&conn, &dentaltid.path);
    println!(
        "{}",
        percentile_line(
            "live export (DentalTID insert to patient_exported), 1k/1k clinic",
            &mut library,
            &mut bare,
            ""
        )
    );
}

/// Checks that an exported patient's NanoPix folder and row exist.
fn check_exported(clinic: &Clinic, event: &Event) {
    let EventKind::PatientExported { external_id, .. } = &event.kind else { return };
    assert!(clinic.root.join(external_id).is_dir(), "folder of {external_id} exists");
    let conn = Connection::open(clinic.nanopix_db()).expect("open NanoPix");
    let rows: i64 =
        conn.query_row("SELECT count(*) FROM Patient WHERE id = ?1", [external_id], |row| row.get(0)).expect("count");
    assert_eq!(rows, 1, "row of {external_id} exists");
}

/// A bare notify watcher's latency for the same DentalTID inserts: commit to an event on the file.
fn notify_dentaltid_latencies(conn: &Connection, dentaltid: &Path) -> Vec<Duration> {
    let (sender, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender).expect("notify watcher");
    let folder = dentaltid.parent().expect("DentalTID folder");
    watcher.watch(folder, RecursiveMode::NonRecursive).expect("watch DentalTID folder");
    std::thread::sleep(Duration::from_millis(300));
    while events.try_recv().is_ok() {}
    (0..LATENCY_PATIENTS)
        .map(|n| {
            let (_, committed) = add_dentaltid(conn, LATENCY_PATIENTS + n);
            wait_for_path(&events, dentaltid).expect("notify event in time");
            let latency = committed.elapsed();
            std::thread::sleep(Duration::from_millis(20));
            while events.try_recv().is_ok() {}
            latency
        })
        .collect()
}

/// CPU time (user + system) of this process so far: clock ticks from /proc/self/stat, and
/// nanoseconds summed from every thread's /proc/self/task/*/schedstat.
fn cpu_time() -> (u64, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read stat");
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let mut nanos = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("list tasks").flatten() {
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        nanos += schedstat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    (ticks(11) + ticks(12), Duration::from_nanos(nanos))
}

/// Clock ticks per second, from `getconf CLK_TCK`.
fn ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("CLK_TCK")
}

/// CPU this process uses while idle for [`IDLE`], in (stat-based, schedstat-based) form.
fn idle_cpu() -> (Duration, Duration) {
    let (ticks_before, nanos_before) = cpu_time();
    std::thread::sleep(IDLE);
    let (ticks_after, nanos_after) = cpu_time();
    let per_tick = Duration::from_secs(1) / ticks_per_second() as u32;
    (per_tick * (ticks_after - ticks_before) as u32, nanos_after.saturating_sub(nanos_before))
}

/// CPU of an idle watching process over 60 s against an idle bare notify watcher.
fn idle(clinic: &Clinic, scale: usize) {
    let live = LiveSync::start(clinic, WatchMode::Auto, Duration::from_secs(2));
    let (library_stat, library_sched) = idle_cpu();
    assert!(live.sync.live_sync().expect("live sync state"), "Live Sync stayed on");
    let woke = live.events.try_iter().count();
    assert_eq!(woke, 0, "nothing changed, so an idle watching process sends no event");
    drop(live);
    let (sender, _events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(sender).expect("notify watcher");
    watcher.watch(&clinic.root, RecursiveMode::NonRecursive).expect("watch root");
    let (bare_stat, bare_sched) = idle_cpu();
    let verdict = if library_stat <= Duration::from_millis(20) { "met" } else { "NOT met" };
    println!(
        "idle CPU over {IDLE:?}, Live Sync on (native), {scale}/{scale} clinic: utime+stime {} (threads' schedstat {}), \
         {woke} events; bare notify watcher: utime+stime {} (schedstat {}); budget <= 20 ms: {verdict}",
        ms(library_stat),
        ms(library_sched),
        ms(bare_stat),
        ms(bare_sched),
    );
}

/// One row of the scaling table.
struct ScaleRow {
    scale: usize,
    first_sync: Duration,
    steady: Vec<Duration>,
    baseline_read: Vec<Duration>,
    imports: Vec<Duration>,
}

/// Measures a first sync, steady reconciles and live imports on a `scale`/`scale` clinic.
fn scale_row(clinic: &Clinic, scale: usize) -> ScaleRow {
    let dentaltid = clinic.copy_dentaltid();
    let clock = ManualClock::new(clinic_now());
    let start = Instant::now();
    let sync = NanoPixSync::open(clinic.config(&dentaltid.path, &clock)).expect("open");
    sync.reconcile().expect("first sync");
    let first_sync = start.elapsed();
    let steady = (0..SCALING_RECONCILES)
        .map(|_| {
            timed(|| {
                sync.reconcile().expect("reconcile");
            })
        })
        .collect();
    let baseline_read = (0..SCALING_RECONCILES)
        .map(|_| {
            timed(|| {
                std::hint::black_box(clinic::baseline_read(&clinic.root, &dentaltid.path));
            })
        })
        .collect();
    drop(sync);
    drop(dentaltid);
    let live = LiveSync::start(clinic, WatchMode::Auto, Duration::from_secs(2));
    let mut writer = NanoPixWriter::new(clinic, clinic_now() - chrono::Duration::hours(2));
    let imports = import_latencies(&live, &mut writer, SCALING_IMPORTS);
    ScaleRow { scale, first_sync, steady, baseline_read, imports }
}

/// How long `run` takes.
fn timed(run: impl FnOnce()) -> Duration {
    let start = Instant::now();
    run();
    start.elapsed()
}

/// Prints the scaling table.
fn print_scaling(rows: &mut [ScaleRow]) {
    println!(
        "| patients (each side) | first sync | steady reconcile p50 | bare read p50 | ratio | live import p50 | live import p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        row.steady.sort();
        row.baseline_read.sort();
        if let Some((slowest, took)) = row.imports.iter().enumerate().max_by_key(|(_, took)| **took) {
            println!(
                "at {}: the slowest live import was number {} of {}, {}",
                row.scale,
                slowest + 1,
                row.imports.len(),
                ms(*took)
            );
        }
        row.imports.sort();
        let (steady, read) = (percentile(&row.steady, 50.0), percentile(&row.baseline_read, 50.0));
        println!(
            "| {} | {} | {} | {} | {:.2}x | {} | {} |",
            row.scale,
            ms(row.first_sync),
            ms(steady),
            ms(read),
            steady.as_secs_f64() / read.as_secs_f64(),
            ms(percentile(&row.imports, 50.0)),
            ms(percentile(&row.imports, 99.0)),
        );
    }
}

fn main() {
    let (imports, exports) = (clinic::filter_allows("import_latency"), clinic::filter_allows("export_latency"));
    if imports || exports {
        let clinic = Clinic::generate(1_000, 1_000);
        if imports {
            import_latency(&clinic);
        }
        if exports {
            export_latency(&clinic);
        }
    }
    if clinic::filter_allows("missing_folders") {
        missing_folders_latency();
    }
    let (scaling, idle_wanted) = (clinic::filter_allows("scaling"), clinic::filter_allows("idle"));
    let scales: &[usize] = if scaling { &[1_000, 10_000, 100_000] } else { &[100_000] };
    if !(scaling || idle_wanted) {
        return;
    }
    let mut rows = Vec::new();
    let mut largest = None;
    for &scale in scales {
        let clinic = Clinic::generate(scale, scale);
        if scaling {
            rows.push(scale_row(&clinic, scale));
        }
        largest = Some(clinic);
    }
    if scaling {
        print_scaling(&mut rows);
    }
    if let Some(clinic) = largest.filter(|_| idle_wanted) {
        idle(&clinic, clinic.nanopix_count);
    }
}
