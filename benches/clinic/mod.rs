//! A clinic at scale for the benches: a NanoPix `PatientData` folder and a DentalTID database
//! filled with deterministic, realistic patients, plus the bare-rusqlite baselines the benches
//! compare the library against.
//!
//! Everything is generated from a fixed seed, so every run measures the same clinic. The
//! generator writes rows exactly as each program does. It never touches the shared fixtures in
//! place: they are copied into a temporary folder first.
// Each bench file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

mod names;
mod rng;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use nanopix_sync::{Config, ManualClock};
use rusqlite::Connection;
use tempfile::TempDir;

use self::names::Person;
use self::rng::Rng;

/// The seed every clinic is generated from.
const SEED: u64 = 0x05EE_D0FC_111C;

/// The day the benches pretend it is: 2025-06-02 10:00:00, after every generated patient.
pub fn clinic_now() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2025, 6, 2).and_then(|d| d.and_hms_opt(10, 0, 0)).expect("a valid date")
}

/// The shared, read-only fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// How many patients of each kind a generated clinic holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mix {
    /// DentalTID rows that are a NanoPix patient with case, accent or space differences.
    pub true_duplicates: usize,
    /// DentalTID rows with first and last name swapped.
    pub swapped: usize,
    /// DentalTID rows with a one-letter typo in the last name.
    pub typos: usize,
    /// DentalTID rows of a NanoPix patient without the birth date.
    pub missing_birth: usize,
}

/// A generated clinic in a temporary folder.
pub struct Clinic {
    /// Keeps the folder alive.
    pub dir: TempDir,
    /// NanoPix's `PatientData`.
    pub root: PathBuf,
    /// The pristine DentalTID database: copy it before a run that writes.
    pub dentaltid: PathBuf,
    /// NanoPix patients generated.
    pub nanopix_count: usize,
    /// DentalTID patients generated.
    pub dentaltid_count: usize,
    /// What the DentalTID side holds besides fresh patients.
    pub mix: Mix,
}

impl Clinic {
    /// Generates `nanopix` NanoPix patients (plus the fixture's one) and `dentaltid` DentalTID patients.
    pub fn generate(nanopix: usize, dentaltid: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let root = dir.path().join("PatientData");
        copy_tree(&fixtures().join("nanopix/PatientData"), &root);
        let mut rng = Rng::new(SEED);
        let nanopix_people = write_nanopix(&root, nanopix, &mut rng);
        let dentaltid_path = dir.path().join("dentaltid.db");
        let mix = write_dentaltid(&dentaltid_path, &nanopix_people, dentaltid, &mut rng);
        Self { dir, root, dentaltid: dentaltid_path, nanopix_count: nanopix, dentaltid_count: dentaltid, mix }
    }

    /// NanoPix's database file.
    pub fn nanopix_db(&self) -> PathBuf {
        self.root.join("database/NanoPix.db3")
    }

    /// A fresh copy of the pristine DentalTID database, deleted when dropped.
    pub fn copy_dentaltid(&self) -> FileCopy {
        FileCopy::of(&self.dentaltid)
    }

    /// A sync config on this clinic's NanoPix folder and the given DentalTID file, reading the
    /// time from `clock`.
    pub fn config(&self, dentaltid: &Path, clock: &ManualClock) -> Config {
        config_for(&self.root, dentaltid, clock)
    }
}

/// A sync config on the given NanoPix folder and DentalTID file, reading the time from `clock`.
pub fn config_for(root: &Path, dentaltid: &Path, clock: &ManualClock) -> Config {
    let mut config = Config::new(root, dentaltid);
    config.clock = Arc::new(clock.clone());
    config.busy_timeout = Duration::from_secs(5);
    config
}

/// A copy of a database file beside the original, removed (with its journals) when dropped.
pub struct FileCopy {
    /// Where the copy is.
    pub path: PathBuf,
}

impl FileCopy {
    /// Copies `original` to a new unique name in the same folder.
    pub fn of(original: &Path) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = original.with_extension(format!("copy{n}.db"));
        std::fs::copy(original, &path).expect("copy the database");
        Self { path }
    }
}

impl Drop for FileCopy {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

/// Copies a folder tree (the fixture's files are read-only; the copies are not).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read fixture folder") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
            let mut permissions = std::fs::metadata(&target).expect("metadata").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions).expect("make writable");
        }
    }
}

/// Writes `count` NanoPix patients (rows in one transaction, then one folder each); returns them.
fn write_nanopix(root: &Path, count: usize, rng: &mut Rng) -> Vec<Person> {
    let mut when = NaiveDate::from_ymd_opt(2015, 1, 5).and_then(|d| d.and_hms_opt(8, 30, 0)).expect("a date");
    let mut people = Vec::with_capacity(count);
    let mut conn = Connection::open(root.join("database/NanoPix.db3")).expect("open NanoPix");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO Patient(id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            )
            .expect("prepare");
        for _ in 0..count {
            when += chrono::Duration::seconds(rng.between(60, 3000) as i64);
            let mut person = Person::random(rng);
            if rng.chance(1, 100) {
                person.birth = None;
            }
            person.nanopix_id = Some(when.format("%Y%m%d_%H%M%S").to_string());
            let saved = (when + chrono::Duration::seconds(8)).format("%Y-%m-%d %H:%M:%S").to_string();
            insert
                .execute((&person.nanopix_id, &person.last, &person.first, person.sex, person.birth_text(), &saved))
                .expect("insert NanoPix patient");
            people.push(person);
        }
    }
    tx.commit().expect("commit");
    for person in &people {
        std::fs::create_dir(root.join(person.nanopix_id.as_deref().unwrap_or_default())).expect("patient folder");
    }
    people
}

/// Writes the DentalTID database at schema 29 with `count` patients; returns the mix written.
fn write_dentaltid(path: &Path, nanopix: &[Person], count: usize, rng: &mut Rng) -> Mix {
    let mut conn = Connection::open(path).expect("open DentalTID");
    let schema = std::fs::read_to_string(fixtures().join("dentaltid/schema_v29.sql")).expect("schema");
    conn.execute_batch(&schema).expect("create schema");
    let mut mix = Mix::default();
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                                      createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .expect("prepare");
        for index in 0..count {
            let person = dentaltid_person(nanopix.get(index), rng, &mut mix);
            let record = names::DentalRecord::random(&person, rng);
            insert.execute(record.params()).expect("insert DentalTID patient");
        }
    }
    tx.commit().expect("commit");
    mix
}

/// The person for one DentalTID row: fresh, or derived from the NanoPix patient at the same index.
fn dentaltid_person(nanopix: Option<&Person>, rng: &mut Rng, mix: &mut Mix) -> Person {
    let roll = rng.between(0, 1000);
    match nanopix {
        Some(original) if roll < 50 => {
            mix.true_duplicates += 1;
            original.as_typed_again(rng)
        }
        Some(original) if roll < 60 && original.birth.is_some() => {
            mix.swapped += 1;
            original.swapped()
        }
        Some(original) if roll < 70 && original.birth.is_some() => {
            mix.typos += 1;
            original.with_typo(rng)
        }
        Some(original) if roll < 80 && original.birth.is_some() => {
            mix.missing_birth += 1;
            Person { birth: None, ..original.as_typed_again(rng) }
        }
        _ => Person::random(rng),
    }
}

/// The baseline for a first sync: reads every NanoPix patient with bare rusqlite and inserts
/// each into `dentaltid`'s patients table with every column, in one transaction with a
/// prepared statement. Returns how many rows were copied.
pub fn baseline_copy(nanopix_db: &Path, dentaltid: &Path) -> usize {
    copy_and_link(nanopix_db, dentaltid, &[])
}

/// The links between existing patients and NanoPix that a first sync wrote into `dentaltid`:
/// `(patients.id, external_id)` of every patient that has a NanoPix id but was not imported.
pub fn matched_links(dentaltid: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(dentaltid).expect("open DentalTID");
    let mut select = conn
        .prepare(
            "SELECT id, external_id FROM patients WHERE source <> 'nanopix' AND external_id IS NOT NULL ORDER BY id",
        )
        .expect("prepare links");
    let links = select.query_map((), |row| Ok((row.get(0)?, row.get(1)?))).expect("query links");
    links.collect::<Result<_, _>>().expect("read links")
}

/// Reads every DentalTID patient's id, names, birth date and NanoPix id with bare rusqlite, as
/// matching must before the first import; returns the row count.
pub fn read_dentaltid_names(dentaltid: &Path) -> usize {
    let conn = Connection::open(dentaltid).expect("open DentalTID");
    count_rows(&conn, "SELECT id, name, familyName, dateOfBirth, external_id FROM patients")
}

/// The writes a first sync cannot avoid, as bare SQL in one transaction: [`baseline_copy`] of
/// every NanoPix patient `links` does not name, then `external_id` set on each linked patient.
/// Returns how many rows were copied.
pub fn copy_and_link(nanopix_db: &Path, dentaltid: &Path, links: &[(i64, String)]) -> usize {
    let linked: std::collections::HashSet<&str> = links.iter().map(|(_, id)| id.as_str()).collect();
    let source = Connection::open(nanopix_db).expect("open NanoPix");
    let mut select = source
        .prepare("SELECT id, last_name, first_name, birthdate, created_datetime FROM Patient")
        .expect("prepare select");
    let mut rows = select.query(()).expect("query");
    let mut target = Connection::open(dentaltid).expect("open DentalTID");
    let tx = target.transaction().expect("begin");
    let mut copied = 0;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                                      createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted,
                                      source, external_id)
                 VALUES (?1, ?2, ?3, ?4, '', '', '', 0.0, ?5, 0, 'EmergencySeverity.low', '', '', 0, 'nanopix', ?6)",
            )
            .expect("prepare insert");
        while let Some(row) = rows.next().expect("row") {
            let id: String = row.get(0).expect("id");
            if linked.contains(id.as_str()) {
                continue;
            }
            let last: String = row.get(1).expect("last name");
            let first: Option<String> = row.get(2).expect("first name");
            let birth: Option<String> = row.get(3).expect("birthdate");
            let created: Option<String> = row.get(4).expect("created");
            let age =
                birth.as_deref().and_then(|b| b.get(0..4)).and_then(|y| y.parse::<i64>().ok()).map_or(0, |y| 2025 - y);
            let birth = birth.map(|b| format!("{b}T00:00:00.000"));
            let created = created.map(|c| format!("{}.000", c.replacen(' ', "T", 1)));
            insert.execute((first.unwrap_or_default(), last, age, birth, created, id)).expect("insert");
            copied += 1;
        }
        let mut link = tx.prepare("UPDATE patients SET external_id = ?1 WHERE id = ?2").expect("prepare update");
        for (patient_id, external_id) in links {
            link.execute((external_id, patient_id)).expect("link");
        }
    }
    tx.commit().expect("commit");
    copied
}

/// The baseline for a steady reconcile: reads both patient tables with bare rusqlite and lists
/// the `PatientData` root once. Returns the number of rows and folder entries seen.
pub fn baseline_read(root: &Path, dentaltid: &Path) -> usize {
    let nanopix = Connection::open(root.join("database/NanoPix.db3")).expect("open NanoPix");
    let mut seen = count_rows(
        &nanopix,
        "SELECT pk, id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime FROM Patient",
    );
    let dentaltid = Connection::open(dentaltid).expect("open DentalTID");
    seen += count_rows(
        &dentaltid,
        "SELECT id, name, familyName, dateOfBirth, createdAt, source, external_id FROM patients",
    );
    let entries = std::fs::read_dir(root).expect("list root");
    seen + entries.filter_map(|entry| entry.ok()).inspect(|entry| drop(std::hint::black_box(entry.file_name()))).count()
}

/// Reads every column of every row of `sql` as text-or-null; returns the row count.
fn count_rows(conn: &Connection, sql: &str) -> usize {
    let mut statement = conn.prepare(sql).expect("prepare");
    let columns = statement.column_count();
    let mut rows = statement.query(()).expect("query");
    let mut count = 0;
    while let Some(row) = rows.next().expect("row") {
        for column in 0..columns {
            std::hint::black_box(row.get_ref(column).expect("value"));
        }
        count += 1;
    }
    count
}

/// Percentile `p` (0..=100) of sorted durations, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Medians and ratio of two sets of timings, as one line for the bench output.
pub fn ratio_line(name: &str, library: &[Duration], baseline: &[Duration], budget: &str) -> String {
    let (library, baseline) = (median(library), median(baseline));
    let ratio = library.as_secs_f64() / baseline.as_secs_f64().max(f64::MIN_POSITIVE);
    format!("{name}: library median {}, baseline median {}, ratio {ratio:.2}x ({budget})", ms(library), ms(baseline))
}

/// p50 and p99 of the library and the baseline, and their ratios, as one line for the bench output.
pub fn percentile_line(name: &str, library: &mut [Duration], baseline: &mut [Duration], budget: &str) -> String {
    library.sort();
    baseline.sort();
    let (p50, p99) = (percentile(library, 50.0), percentile(library, 99.0));
    let (b50, b99) = (percentile(baseline, 50.0), percentile(baseline, 99.0));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE);
    format!(
        "{name}: library p50 {} p99 {} (n={}); baseline p50 {} p99 {} (n={}); ratio p50 {:.2}x p99 {:.2}x{budget}",
        ms(p50),
        ms(p99),
        library.len(),
        ms(b50),
        ms(b99),
        baseline.len(),
        ratio(p50, b50),
        ratio(p99, b99),
    )
}

/// The median of unsorted durations.
pub fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    percentile(&sorted, 50.0)
}

/// The first command-line word that is not a flag: the bench filter `cargo bench` passes on.
pub fn filter_allows(name: &str) -> bool {
    std::env::args().skip(1).find(|arg| !arg.starts_with('-')).is_none_or(|filter| name.contains(&filter))
}

/// Formats a duration in milliseconds with three decimals.
pub fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1000.0)
}
