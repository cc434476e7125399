//! First sync, steady-state reconcile, the review list of possible duplicates and one-by-one
//! exports at clinic scale (100,000 patients on each side), the exports also beside thousands of
//! delete requests, the list of those requests, and `export_existing` beside 100,000 imported
//! NanoPix patients, each against a bare-rusqlite baseline measured in the same run.
//!
//! The generated clinic is made once; every run that writes gets its own copy of the DentalTID
//! file (copying is not measured). Run with `cargo bench --bench first_sync`.

mod clinic;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use nanopix_sync::{EventKind, ManualClock, NanoPixSync, ReconcileReport};
use rusqlite::Connection;

use clinic::{Clinic, FileCopy, clinic_now, ms, percentile, percentile_line};

/// Patients on each side.
const SCALE: usize = 100_000;
/// Patients exported one by one.
const EXPORTS: usize = 1_000;
/// Imported patients deleted in DentalTID before the second round of exports.
const DELETED: usize = 5_000;
/// DentalTID patients of the clinic whose old patients `export_existing` exports at once.
const EXISTING: usize = 1_000;
/// Criterion's smallest sample count; each sample of the first sync is a single run.
const SAMPLES: usize = 10;

/// The duration of every timed run of one bench function, grouped by criterion call, so the
/// warm-up calls can be left out.
#[derive(Default)]
struct Timings(RefCell<Vec<Vec<Duration>>>);

impl Timings {
    /// Starts a criterion call.
    fn call(&self) {
        self.0.borrow_mut().push(Vec::new());
    }

    /// Records one timed run.
    fn record(&self, duration: Duration) -> Duration {
        if let Some(call) = self.0.borrow_mut().last_mut() {
            call.push(duration);
        }
        duration
    }

    /// The runs of the last `SAMPLES` calls: criterion's measured samples, without warm-up.
    fn measured(&self) -> Vec<Duration> {
        let calls = self.0.borrow();
        calls.iter().skip(calls.len().saturating_sub(SAMPLES)).flatten().copied().collect()
    }
}

/// Opens the sync on `dentaltid` and reconciles; returns the handle (to close unmeasured) and the
/// report, once it says every NanoPix patient (the generated ones and the fixture's) was imported
/// or linked, with no error: a first sync that failed part way is not timed as one.
fn open_and_reconcile(clinic: &Clinic, dentaltid: &Path) -> (NanoPixSync, ReconcileReport) {
    let sync = NanoPixSync::open(clinic.config(dentaltid, &ManualClock::new(clinic_now()))).expect("open");
    let report = sync.reconcile().expect("reconcile");
    assert_eq!(report.errors, 0, "a first sync without errors: {report:?}");
    let decided = usize::try_from(report.imported + report.linked).expect("a count");
    assert_eq!(decided, clinic.nanopix_count + 1, "every NanoPix patient imported or linked: {report:?}");
    (sync, report)
}

/// Opens the sync on `dentaltid`, switches Live Sync on and waits for the full reconcile that
/// follows (the sync's indexes are built first, and the bulk import drops and rebuilds them).
fn open_live_and_wait(clinic: &Clinic, dentaltid: &Path) -> NanoPixSync {
    let sync = NanoPixSync::open(clinic.config(dentaltid, &ManualClock::new(clinic_now()))).expect("open");
    let events = sync.events();
    sync.set_live_sync(true).expect("live sync on");
    let reconciled = events.iter().find(|event| matches!(event.kind, EventKind::Reconciled(_)));
    assert!(reconciled.is_some(), "the first live reconcile ends");
    sync
}

/// Runs `iters` times `run` on a fresh copy of the DentalTID file, timing only `run`: making
/// the copy and dropping what `run` returns (for example closing a handle) are not measured.
fn time_on_copies<T>(clinic: &Clinic, timings: &Timings, iters: u64, run: impl Fn(&Path) -> T) -> Duration {
    timings.call();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let copy = clinic.copy_dentaltid();
        let start = Instant::now();
        let output = run(&copy.path);
        total += timings.record(start.elapsed());
        drop(output);
    }
    total
}

/// (a) A first sync of 100,000 NanoPix patients into a DentalTID file holding 100,000, on demand
/// and with Live Sync switched on at once.
fn first_sync(criterion: &mut Criterion, clinic: &Clinic) {
    let (library, live, baseline) = (Timings::default(), Timings::default(), Timings::default());
    let (floor, links) = (Timings::default(), first_sync_links(clinic));
    let mut group = criterion.benchmark_group("first_sync_100k");
    group.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(30));
    group.bench_function("library_open_reconcile", |b| {
        b.iter_custom(|iters| time_on_copies(clinic, &library, iters, |path| open_and_reconcile(clinic, path)))
    });
    group.bench_function("library_open_live_sync_on", |b| {
        b.iter_custom(|iters| time_on_copies(clinic, &live, iters, |path| open_live_and_wait(clinic, path)))
    });
    group.bench_function("baseline_rusqlite_copy", |b| {
        b.iter_custom(|iters| {
            time_on_copies(clinic, &baseline, iters, |path| clinic::baseline_copy(&clinic.nanopix_db(), path))
        })
    });
    group.bench_function("floor_rusqlite_read_copy_and_link", |b| {
        b.iter_custom(|iters| {
            time_on_copies(clinic, &floor, iters, |path| {
                (clinic::read_dentaltid_names(path), clinic::copy_and_link(&clinic.nanopix_db(), path, &links))
            })
        })
    });
    group.finish();
    report_ratio("first sync 100k/100k", &library, &baseline, 1.5);
    report_ratio("first sync 100k/100k with Live Sync switched on", &live, &baseline, 1.5);
    report_floor(&floor, &baseline);
}

/// Prints the floor's median and its ratio to the baseline: what any first sync must do in
/// order, as bare SQL: read DentalTID's names before the first import, then copy the imported
/// rows and update the linked ones; no matching, no events.
fn report_floor(floor: &Timings, baseline: &Timings) {
    let (floor, baseline) = (floor.measured(), baseline.measured());
    if floor.is_empty() || baseline.is_empty() {
        return;
    }
    let (floor, baseline) = (clinic::median(&floor), clinic::median(&baseline));
    let ratio = floor.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "first sync floor (bare read of DentalTID, then copy of the imported rows and the link updates): median {}, {ratio:.2}x the baseline",
        ms(floor)
    );
}

/// The links a first sync of the clinic makes, from one untimed run on a copy.
fn first_sync_links(clinic: &Clinic) -> Vec<(i64, String)> {
    let copy = clinic.copy_dentaltid();
    drop(open_and_reconcile(clinic, &copy.path));
    let links = clinic::matched_links(&copy.path);
    println!("first sync links {} existing DentalTID patients", links.len());
    links
}

/// Prints the median ratio of library to baseline and whether it is within `budget` times.
fn report_ratio(name: &str, library: &Timings, baseline: &Timings, budget: f64) {
    let (library, baseline) = (library.measured(), baseline.measured());
    if library.is_empty() || baseline.is_empty() {
        return;
    }
    let ratio = clinic::median(&library).as_secs_f64() / clinic::median(&baseline).as_secs_f64();
    let verdict = if ratio <= budget { "met" } else { "NOT met" };
    println!("{}", clinic::ratio_line(name, &library, &baseline, &format!("budget {budget}x: {verdict}")));
}

/// The DentalTID and NanoPix files' sizes and modification times, to show a run wrote nothing.
fn fingerprint(paths: &[&Path]) -> Vec<(u64, std::time::SystemTime)> {
    paths
        .iter()
        .map(|path| {
            let metadata = std::fs::metadata(path).expect("metadata");
            (metadata.len(), metadata.modified().expect("mtime"))
        })
        .collect()
}

/// (b) A steady-state reconcile at 100,000/100,000 after a first sync; it must write nothing.
fn steady_reconcile(criterion: &mut Criterion, clinic: &Clinic, synced: &FileCopy) {
    let (sync, first) = open_and_reconcile(clinic, &synced.path);
    println!("first sync before the steady runs: {first:?}");
    let nanopix_db = clinic.nanopix_db();
    let before = fingerprint(&[&synced.path, &nanopix_db]);
    let (library, baseline) = (Timings::default(), Timings::default());
    let changes = RefCell::new(ReconcileReport::default());
    let mut group = criterion.benchmark_group("steady_reconcile_100k");
    group.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(10));
    group.bench_function("library_reconcile", |b| {
        b.iter_custom(|iters| timed_reconciles(&sync, &library, iters, &changes))
    });
    group.bench_function("baseline_read_both_and_list_root", |b| {
        b.iter_custom(|iters| time_each(&baseline, iters, || clinic::baseline_read(&clinic.root, &synced.path)))
    });
    group.finish();
    drop(sync);
    let wrote_nothing = before == fingerprint(&[&synced.path, &nanopix_db]);
    println!("steady reconcile: changes summed over all runs {:?}; files untouched: {wrote_nothing}", changes.borrow());
    report_steady(&library, &baseline);
    assert_eq!(*changes.borrow(), ReconcileReport::default(), "a steady reconcile changes nothing");
    assert!(wrote_nothing, "a steady reconcile leaves dentaltid.db and NanoPix.db3 untouched");
}

/// Times `iters` runs of `run` one by one, keeping what each returns from being optimised away.
fn time_each<T>(timings: &Timings, iters: u64, run: impl Fn() -> T) -> Duration {
    timings.call();
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(run());
            timings.record(start.elapsed())
        })
        .sum()
}

/// (d) The review list a first sync leaves (every `possible_duplicate` it reported), read on an
/// open handle, against a bare read of every DentalTID patient's names and birth date: the list
/// reads each patient it names as DentalTID holds it now.
fn review_list(criterion: &mut Criterion, clinic: &Clinic, synced: &FileCopy) {
    let sync = NanoPixSync::open(clinic.config(&synced.path, &ManualClock::new(clinic_now()))).expect("open");
    println!(
        "review list after the first sync: {} possible duplicates",
        sync.possible_duplicates().expect("list").len()
    );
    let (library, baseline) = (Timings::default(), Timings::default());
    let mut group = criterion.benchmark_group("review_list_100k");
    group.sample_size(SAMPLES).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(5));
    group.bench_function("library_possible_duplicates", |b| {
        b.iter_custom(|iters| time_each(&library, iters, || sync.possible_duplicates().expect("list")))
    });
    group.bench_function("baseline_read_every_patient", |b| {
        b.iter_custom(|iters| time_each(&baseline, iters, || clinic::read_dentaltid_names(&synced.path)))
    });
    group.finish();
    let (library, baseline) = (library.measured(), baseline.measured());
    if !library.is_empty() && !baseline.is_empty() {
        println!("{}", clinic::ratio_line("review list 100k", &library, &baseline, "no budget set"));
    }
}

/// Times `iters` reconciles on an open handle, adding up whatever they changed.
fn timed_reconciles(sync: &NanoPixSync, timings: &Timings, iters: u64, changes: &RefCell<ReconcileReport>) -> Duration {
    timings.call();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let report = sync.reconcile().expect("reconcile");
        total += timings.record(start.elapsed());
        let mut sum = changes.borrow_mut();
        sum.imported += report.imported;
        sum.linked += report.linked;
        sum.exported += report.exported;
        sum.removed += report.removed;
        sum.repaired += report.repaired;
        sum.errors += report.errors;
        sum.possible_duplicates += report.possible_duplicates;
    }
    total
}

/// Prints the steady reconcile's ratio, its p99 and whether it stayed under 300 ms.
fn report_steady(library: &Timings, baseline: &Timings) {
    let (mut measured, base) = (library.measured(), baseline.measured());
    if measured.is_empty() || base.is_empty() {
        return;
    }
    measured.sort();
    let worst = measured.last().copied().unwrap_or_default();
    let verdict = if worst < Duration::from_millis(300) { "met" } else { "NOT met" };
    let budget = format!("slowest run {}, budget < 300 ms: {verdict}", ms(worst));
    println!("{}", clinic::ratio_line("steady reconcile 100k/100k", &measured, &base, &budget));
}

/// (c) Exports 1,000 DentalTID patients one by one; prints p50/p99 against bare inserts. Then
/// (e) the same once staff have deleted [`DELETED`] imported patients in DentalTID whose NanoPix
/// patients stay: each export looks among their delete requests for a patient to give back.
fn exports(clinic: &Clinic, synced: &FileCopy) {
    let clock = ManualClock::new(clinic_now());
    let library = timed_exports(clinic, synced, &clock);
    let baseline = baseline_exports(clinic);
    print_exports("export_patient x1000 at 100k", library, baseline.clone());
    let requests = delete_imported_patients(&synced.path, DELETED);
    let sync = NanoPixSync::open(clinic.config(&synced.path, &clock)).expect("open");
    sync.reconcile().expect("reconcile");
    list_delete_requests(&sync, clinic, &synced.path, requests);
    drop(sync);
    let library = timed_exports(clinic, synced, &clock);
    print_exports(&format!("export_patient x1000 at 100k, {requests} delete requests held"), library, baseline);
}

/// (f) Lists the `requests` delete requests [`exports`] left standing with `delete_requests()`, as
/// a host does at each start, [`SAMPLES`] times, against a bare read of their link rows and of
/// NanoPix's row under each id; each run must list every request.
fn list_delete_requests(sync: &NanoPixSync, clinic: &Clinic, dentaltid: &Path, requests: usize) {
    let library: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            let listed = sync.delete_requests().expect("delete requests").len();
            let elapsed = start.elapsed();
            assert_eq!(listed, requests, "every delete request listed");
            elapsed
        })
        .collect();
    let baseline: Vec<Duration> = (0..SAMPLES).map(|_| bare_delete_requests(clinic, dentaltid, requests)).collect();
    let name = format!("delete_requests() with {requests} standing");
    println!("{}", clinic::ratio_line(&name, &library, &baseline, "no budget set"));
}

/// One bare read of the delete requests' link rows, then of NanoPix's row under each id; checks
/// that it finds all `requests`.
fn bare_delete_requests(clinic: &Clinic, dentaltid: &Path, requests: usize) -> Duration {
    let dentaltid = Connection::open(dentaltid).expect("open DentalTID");
    let nanopix = Connection::open(clinic.nanopix_db()).expect("open NanoPix");
    let start = Instant::now();
    let sql = "SELECT external_id FROM nanopix_sync_links WHERE state = 'delete_requested' ORDER BY external_id";
    let mut links = dentaltid.prepare(sql).expect("prepare");
    let ids: Vec<String> =
        links.query_map([], |row| row.get(0)).expect("query").collect::<Result<_, _>>().expect("ids");
    let mut row = nanopix.prepare("SELECT created_datetime FROM Patient WHERE id = ?1").expect("prepare");
    let found = ids.iter().filter(|id| row.exists([id]).expect("lookup")).count();
    let elapsed = start.elapsed();
    assert_eq!(found, requests, "every delete request read");
    elapsed
}

/// Exports the first [`EXPORTS`] DentalTID patients without a link one by one, a second apart;
/// returns how long each took.
fn timed_exports(clinic: &Clinic, synced: &FileCopy, clock: &ManualClock) -> Vec<Duration> {
    let unlinked = unlinked_patients(&synced.path, EXPORTS);
    let sync = NanoPixSync::open(clinic.config(&synced.path, clock)).expect("open");
    let mut library = Vec::with_capacity(EXPORTS);
    for patient_id in unlinked {
        clock.advance(chrono::Duration::seconds(1));
        let start = Instant::now();
        sync.export_patient(patient_id).expect("export");
        library.push(start.elapsed());
    }
    library
}

/// Prints one export line: p50/p99 against the bare inserts, and the budget's verdict.
fn print_exports(name: &str, mut library: Vec<Duration>, mut baseline: Vec<Duration>) {
    library.sort();
    let verdict = if percentile(&library, 99.0) < Duration::from_millis(20) { "met" } else { "NOT met" };
    let budget = format!("; budget p99 < 20 ms: {verdict}");
    println!("{}", percentile_line(name, &mut library, &mut baseline, &budget));
}

/// Deletes the first `count` patients the sync imported from NanoPix, as DentalTID deletes a
/// patient; returns how many it deleted.
fn delete_imported_patients(dentaltid: &Path, count: usize) -> usize {
    let conn = Connection::open(dentaltid).expect("open DentalTID");
    let sql =
        "DELETE FROM patients WHERE id IN (SELECT id FROM patients WHERE source = 'nanopix' ORDER BY id LIMIT ?1)";
    conn.execute(sql, [count as i64]).expect("delete")
}

/// The first `count` DentalTID patients without a NanoPix link.
fn unlinked_patients(dentaltid: &Path, count: usize) -> Vec<i64> {
    let conn = Connection::open(dentaltid).expect("open DentalTID");
    let mut statement =
        conn.prepare("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id LIMIT ?1").expect("prepare");
    statement.query_map([count as i64], |row| row.get(0)).expect("query").collect::<Result<_, _>>().expect("ids")
}

/// 1,000 bare NanoPix inserts (each its own commit) plus a `create_dir`, on copies, with ids a
/// day after the library's exports.
fn baseline_exports(clinic: &Clinic) -> Vec<Duration> {
    let nanopix = FileCopy::of(&clinic.nanopix_db());
    let folders = clinic.dir.path().join("baseline_root");
    std::fs::create_dir_all(&folders).expect("baseline root");
    let conn = Connection::open(&nanopix.path).expect("open NanoPix copy");
    let mut durations = Vec::with_capacity(EXPORTS);
    for n in 0..EXPORTS {
        let when = clinic_now() + chrono::Duration::days(1) + chrono::Duration::seconds(n as i64);
        let id = when.format("%Y%m%d_%H%M%S").to_string();
        let stamp = when.format("%Y-%m-%d %H:%M:%S").to_string();
        let start = Instant::now();
        conn.prepare_cached(
            "INSERT INTO Patient(id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime)
             VALUES (?1, 'Lefèvre', 'Zoé', 'Female', '1990-07-04', ?2, ?2)",
        )
        .and_then(|mut insert| insert.execute((&id, &stamp)))
        .expect("insert");
        std::fs::create_dir(folders.join(&id)).expect("folder");
        durations.push(start.elapsed());
    }
    durations
}

/// (g) `export_existing` once a first sync imported 100,000 NanoPix patients (their ids in import
/// batches, thousands of reports on the review list) into a DentalTID file of [`EXISTING`]
/// patients: it exports those the first sync did not link, against as many bare NanoPix inserts
/// (each its own commit) and `create_dir`s, per export.
fn export_existing() {
    let clinic = Clinic::generate(SCALE, EXISTING);
    let dentaltid = clinic.copy_dentaltid();
    let (sync, first) = open_and_reconcile(&clinic, &dentaltid.path);
    let events = sync.events();
    let _ = events.try_iter().count();
    let start = Instant::now();
    let exported = sync.export_existing().expect("export_existing");
    let library = start.elapsed();
    let errors = events.try_iter().filter(|event| matches!(event.kind, EventKind::SyncError { .. })).count();
    assert_eq!(errors, 0, "export_existing without errors");
    println!("{}", export_existing_line(exported, first.linked, library, &baseline_exports(&clinic)));
}

/// The line (g) prints: the library's time for `exported` exports (`linked` patients were linked
/// by the first sync instead), and the bare inserts', per export, and their ratio.
fn export_existing_line(exported: u64, linked: u64, library: Duration, baseline: &[Duration]) -> String {
    let per_export = library.div_f64(exported.max(1) as f64);
    let baseline_total: Duration = baseline.iter().sum();
    let per_insert = baseline_total.div_f64(baseline.len().max(1) as f64);
    let ratio = per_export.as_secs_f64() / per_insert.as_secs_f64().max(f64::MIN_POSITIVE);
    format!(
        "export_existing of {exported} at 100k ({linked} linked by the first sync): library {} ({} per export); \
         baseline {} bare inserts + folders {} ({} each); ratio per export {ratio:.2}x (no budget set)",
        ms(library),
        ms(per_export),
        baseline.len(),
        ms(baseline_total),
        ms(per_insert),
    )
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let started = Instant::now();
    let clinic = Clinic::generate(SCALE, SCALE);
    println!("generated {SCALE}/{SCALE} clinic in {:?}: {:?}", started.elapsed(), clinic.mix);
    first_sync(&mut criterion, &clinic);
    let synced = clinic.copy_dentaltid();
    steady_reconcile(&mut criterion, &clinic, &synced);
    review_list(&mut criterion, &clinic, &synced);
    if clinic::filter_allows("export_patient") {
        exports(&clinic, &synced);
    }
    if clinic::filter_allows("export_existing") {
        export_existing();
    }
    criterion.final_summary();
}
