//! A clinic for tests: temporary copies of both programs' files, and helpers that write
//! patients the way each program does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use nanopix_sync::{Clock, Config, Event, EventKind, ManualClock, NanoPixSync};
use rusqlite::Connection;
use tempfile::TempDir;

/// The shared fixtures, read-only.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// 2025-01-22 10:00:00, the day after the fixture patient was created.
pub fn clinic_morning() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2025, 1, 22).unwrap().and_hms_opt(10, 0, 0).unwrap()
}

/// The `i`-th of a run of distinct, valid NanoPix ids in 2024 (distinct for `i` below 86,400).
pub fn numbered_nanopix_id(i: u32) -> String {
    format!("2024{:02}{:02}_{:02}{:02}{:02}", 1 + i / 2000 % 12, 1 + i / 80 % 25, i / 3600 % 24, i / 60 % 60, i % 60)
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            let mut permissions = std::fs::metadata(&target).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            permissions.set_readonly(false);
            std::fs::set_permissions(&target, permissions).unwrap();
        }
    }
}

/// A temporary NanoPix `PatientData` folder and DentalTID database.
pub struct Clinic {
    pub dir: TempDir,
    pub root: PathBuf,
    pub dentaltid: PathBuf,
    pub clock: ManualClock,
}

impl Clinic {
    /// The real NanoPix folder and a DentalTID database at `schema` (`"v24"` or `"v29"`) with the sample patients.
    pub fn new(schema: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("PatientData");
        copy_tree(&fixtures().join("nanopix/PatientData"), &root);
        let dentaltid = dir.path().join("dentaltid.db");
        let conn = Connection::open(&dentaltid).unwrap();
        let sql = |name: &str| std::fs::read_to_string(fixtures().join("dentaltid").join(name)).unwrap();
        conn.execute_batch(&sql(&format!("schema_{schema}.sql"))).unwrap();
        conn.execute_batch(&sql("sample_patients.sql")).unwrap();
        Self { dir, root, dentaltid, clock: ManualClock::new(clinic_morning()) }
    }

    /// A config on this clinic with its manual clock.
    pub fn config(&self) -> Config {
        let mut config = Config::new(&self.root, &self.dentaltid);
        config.clock = Arc::new(self.clock.clone());
        config.busy_timeout = Duration::from_millis(500);
        config
    }

    pub fn open(&self) -> NanoPixSync {
        NanoPixSync::open(self.config()).unwrap()
    }

    /// [`Clinic::config`] without automatic work: no watcher, so only the calls a test makes
    /// do work.
    pub fn config_without_automatic_work(&self) -> Config {
        let mut config = self.config();
        config.automatic_work = false;
        config
    }

    /// Opens the clinic with [`Clinic::config_without_automatic_work`].
    pub fn open_without_automatic_work(&self) -> NanoPixSync {
        NanoPixSync::open(self.config_without_automatic_work()).unwrap()
    }

    /// Opens the clinic with [`Clinic::config_without_automatic_work`] and `clock`.
    pub fn open_without_automatic_work_on(&self, clock: &HookedClock) -> NanoPixSync {
        let mut config = self.config_without_automatic_work();
        config.clock = Arc::new(clock.clone());
        NanoPixSync::open(config).unwrap()
    }

    pub fn nanopix_db(&self) -> PathBuf {
        self.root.join("database").join("NanoPix.db3")
    }

    /// Adds a NanoPix patient as NanoPix does: the row, then the folder.
    pub fn add_nanopix(&self, id: &str, last: &str, first: &str, birthdate: Option<&str>) {
        self.add_nanopix_row(id, last, first, birthdate);
        std::fs::create_dir(self.root.join(id)).unwrap();
    }

    /// Saves a NanoPix patient's row as NanoPix does, without its folder (NanoPix makes it later).
    pub fn add_nanopix_row(&self, id: &str, last: &str, first: &str, birthdate: Option<&str>) {
        let conn = Connection::open(self.nanopix_db()).unwrap();
        conn.busy_timeout(Duration::from_secs(30)).unwrap();
        let created =
            format!("{}-{}-{} {}:{}:{}", &id[0..4], &id[4..6], &id[6..8], &id[9..11], &id[11..13], &id[13..15]);
        insert_nanopix_patient(&conn, id, (last, first), birthdate, &created);
    }

    /// Replaces NanoPix patient `id` with another person, Lina, in one transaction, as NanoPix
    /// would after deleting her if its clock went back to the second her form was opened.
    pub fn save_another_person_under(&self, id: &str) {
        another_program(&self.nanopix_db())
            .execute_batch(&format!(
                "BEGIN;
                 DELETE FROM Patient WHERE id = '{id}';
                 INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime)
                    VALUES ('{id}', 'Haddad', 'Lina', '1990-04-02', '2025-03-02 10:00:00');
                 COMMIT;"
            ))
            .unwrap();
    }

    /// Adds a DentalTID patient as DentalTID does; returns its id.
    pub fn add_dentaltid(&self, first: &str, last: &str, birth: Option<&str>) -> i64 {
        insert_dentaltid_patient(&Connection::open(&self.dentaltid).unwrap(), first, last, birth)
    }

    /// Replaces `NanoPix.db3` with a database that `sql` makes.
    pub fn replace_nanopix(&self, sql: &str) {
        std::fs::remove_file(self.nanopix_db()).unwrap();
        Connection::open(self.nanopix_db()).unwrap().execute_batch(sql).unwrap();
    }

    /// Adds `count` NanoPix patients in one transaction, one second apart from 2023-01-01 00:00:00,
    /// so never on an id of [`numbered_nanopix_id`] (rows only: a folder is not needed for an import).
    pub fn add_bulk_nanopix(&self, count: i64) {
        let start = NaiveDate::from_ymd_opt(2023, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap();
        let conn = Connection::open(self.nanopix_db()).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..count {
            let id = (start + chrono::Duration::seconds(i)).format("%Y%m%d_%H%M%S").to_string();
            conn.execute(
                "INSERT INTO Patient(id, last_name, first_name) VALUES (?1, 'Bulk', ?2)",
                (&id, i.to_string()),
            )
            .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    /// Adds `count` patients to both programs, each pair an exact match that a sync links: a
    /// NanoPix patient (row and folder) with a [`numbered_nanopix_id`], and a DentalTID patient.
    pub fn add_linkable_pairs(&self, count: u32) {
        let nanopix = Connection::open(self.nanopix_db()).unwrap();
        let dentaltid = Connection::open(&self.dentaltid).unwrap();
        nanopix.execute_batch("BEGIN").unwrap();
        dentaltid.execute_batch("BEGIN").unwrap();
        for i in 0..count {
            let id = numbered_nanopix_id(i);
            let (first, last) = (format!("Given{i}"), format!("Family{i}"));
            nanopix
                .execute(
                    "INSERT INTO Patient(id, last_name, first_name, birthdate) VALUES (?1, ?2, ?3, '1980-05-17')",
                    (&id, &last, &first),
                )
                .unwrap();
            std::fs::create_dir(self.root.join(&id)).unwrap();
            dentaltid
                .execute(
                    "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                          payment, createdAt, isEmergency, severity, healthAlerts, phoneNumber,
                                          isBlacklisted)
                     VALUES (?1, ?2, 45, '1980-05-17T00:00:00.000', '', '', '', 0.0, '2025-01-22T09:00:00.000', 0,
                             'EmergencySeverity.low', '', '', 0)",
                    (&first, &last),
                )
                .unwrap();
        }
        nanopix.execute_batch("COMMIT").unwrap();
        dentaltid.execute_batch("COMMIT").unwrap();
    }

    /// Runs a query on the DentalTID database.
    pub fn dentaltid_rows<T>(&self, sql: &str, map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Vec<T> {
        let conn = Connection::open(&self.dentaltid).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        statement.query_map((), map).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Takes NanoPix's `PatientData` folder away, as an unplugged share does; returns where it
    /// went, to plug it back.
    pub fn unplug_nanopix(&self) -> PathBuf {
        let away = self.dir.path().join("unplugged");
        std::fs::rename(&self.root, &away).unwrap();
        away
    }

    /// Runs a query on the NanoPix database.
    pub fn nanopix_rows<T>(&self, sql: &str, map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Vec<T> {
        let conn = Connection::open(self.nanopix_db()).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        statement.query_map((), map).unwrap().collect::<Result<_, _>>().unwrap()
    }
}

/// How a child process of [`child_process`] is told its parent's clinic time.
const CHILD_CLOCK_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

/// This test binary run again as a child process that runs only the ignored test `child_test`,
/// on `clinic`, at the time `clinic`'s clock shows (see [`open_parents_clinic`]).
pub fn child_process(child_test: &str, clinic: &Clinic) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", child_test, "--ignored", "--nocapture", "--test-threads=1"]);
    command.env("NPS_TEST_CLINIC", clinic.dir.path());
    command.env("NPS_TEST_NOW", clinic.clock.now().format(CHILD_CLOCK_FORMAT).to_string());
    command
}

/// In a child process of [`child_process`]: the sync opened on its parent's clinic, with the
/// default configuration but for a manual clock at its parent's clinic time.
pub fn open_parents_clinic() -> NanoPixSync {
    let dir = PathBuf::from(std::env::var("NPS_TEST_CLINIC").unwrap());
    let now = NaiveDateTime::parse_from_str(&std::env::var("NPS_TEST_NOW").unwrap(), CHILD_CLOCK_FORMAT).unwrap();
    let mut config = Config::new(dir.join("PatientData"), dir.join("dentaltid.db"));
    config.clock = Arc::new(ManualClock::new(now));
    NanoPixSync::open(config).unwrap()
}

/// A connection to a database as another program opens one: it waits up to 30 s for a lock.
pub fn another_program(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

/// Waits up to `deadline` until `done` holds, looking every few milliseconds; panics otherwise.
pub fn until(deadline: Duration, what: &str, done: impl FnMut() -> bool) {
    assert!(within(deadline, done), "not within {deadline:?}: {what}");
}

/// Waits up to `deadline` until `done` holds, looking every few milliseconds; returns whether it
/// did (for a change that a correct sync makes, and that a test then goes on without).
pub fn within(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while !done() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Edits patient `patient_id`'s link row into a state the sync never writes (`archived`, as
/// support staff, or a newer version, might) and then runs `then` (a delete, say), in one
/// DentalTID transaction; returns the link row as it then stands (see [`link_row`]).
pub fn archive_link_then(dentaltid: &Path, patient_id: i64, then: &str) -> Vec<String> {
    let mut conn = another_program(dentaltid);
    let tx = conn.transaction().unwrap();
    let archived = tx.execute("UPDATE nanopix_sync_links SET state = 'archived' WHERE patient_id = ?1", [patient_id]);
    assert_eq!(archived.unwrap(), 1, "patient {patient_id} has a link row");
    tx.execute(then, [patient_id]).unwrap();
    tx.commit().unwrap();
    link_row(&conn, patient_id)
}

/// Patient `patient_id`'s link row, each column's type and value (empty without a row).
pub fn link_row(conn: &Connection, patient_id: i64) -> Vec<String> {
    let sql = "SELECT patient_id, external_id, origin, state, synced_at FROM nanopix_sync_links WHERE patient_id = ?1";
    let mut statement = conn.prepare(sql).unwrap();
    let mut rows = statement.query([patient_id]).unwrap();
    let Some(row) = rows.next().unwrap() else { return Vec::new() };
    (0..5)
        .map(|column| row.get::<_, rusqlite::types::Value>(column).map(|value| format!("{value:?}")).unwrap())
        .collect()
}

/// Inserts a patient as DentalTID does, on `conn` (DentalTID's connection, maybe in a
/// transaction of its own); returns its id.
pub fn insert_dentaltid_patient(conn: &Connection, first: &str, last: &str, birth: Option<&str>) -> i64 {
    conn.execute(
        "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                              createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
         VALUES (?1, ?2, 30, ?3, '', '', '', 0.0, '2025-01-22T09:00:00.000', 0, 'EmergencySeverity.low', '', '', 0)",
        (first, last, birth.map(|b| format!("{b}T00:00:00.000"))),
    )
    .unwrap();
    conn.last_insert_rowid()
}

/// Saves Nadia Saidi (born 1982-04-09) in NanoPix, row and folder, under `id` as NanoPix's form
/// does when it was opened in that second: saved eight seconds later, which is not the time an
/// export of hers would write.
pub fn nanopix_saves_nadia_under(clinic: &Clinic, id: &str) {
    let opened = NaiveDateTime::parse_from_str(id, "%Y%m%d_%H%M%S").unwrap();
    let saved = (opened + chrono::Duration::seconds(8)).format("%Y-%m-%d %H:%M:%S").to_string();
    insert_nanopix_patient(&another_program(&clinic.nanopix_db()), id, ("Saidi", "Nadia"), Some("1982-04-09"), &saved);
    std::fs::create_dir(clinic.root.join(id)).unwrap();
}

/// Inserts a NanoPix patient's row as NanoPix saves one, on `conn` (NanoPix's connection, maybe
/// in a transaction of its own): `(last, first)` names, `birthdate` `YYYY-MM-DD`, created and
/// updated at `saved` (`YYYY-MM-DD HH:MM:SS`).
pub fn insert_nanopix_patient(
    conn: &Connection,
    id: &str,
    (last, first): (&str, &str),
    birthdate: Option<&str>,
    saved: &str,
) {
    conn.execute(
        "INSERT INTO Patient(id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime)
         VALUES (?1, ?2, ?3, 'Female', ?4, ?5, ?5)",
        (id, last, first, birthdate, saved),
    )
    .unwrap();
}

/// The NanoPix ids of every NanoPix patient with these names.
pub fn nanopix_ids_named(clinic: &Clinic, first: &str, last: &str) -> Vec<String> {
    clinic.nanopix_rows(
        &format!("SELECT id FROM Patient WHERE first_name = '{first}' AND last_name = '{last}' ORDER BY pk"),
        |r| r.get(0),
    )
}

/// `(id, external_id)` of every DentalTID patient with these names.
pub fn dentaltid_named(clinic: &Clinic, first: &str, last: &str) -> Vec<(i64, Option<String>)> {
    clinic.dentaltid_rows(
        &format!("SELECT id, external_id FROM patients WHERE name = '{first}' AND familyName = '{last}' ORDER BY id"),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Checks that Nadia Saidi is in each program once: DentalTID's `nadia`, linked to NanoPix's
/// `20250122_095950`; `what` says what ran, for the message.
pub fn assert_nadia_once_on_each_side(clinic: &Clinic, nadia: i64, what: &str) {
    let (in_nanopix, in_dentaltid) =
        (nanopix_ids_named(clinic, "Nadia", "Saidi"), dentaltid_named(clinic, "Nadia", "Saidi"));
    assert_eq!(
        (in_nanopix.len(), in_dentaltid.len()),
        (1, 1),
        "Nadia Saidi is in NanoPix {in_nanopix:?} and in DentalTID {in_dentaltid:?} ({what})"
    );
    assert_eq!(in_dentaltid[0], (nadia, Some("20250122_095950".to_owned())));
}

/// Whether `event` reports patient `patient_id`'s link row as one the sync cannot read.
pub fn reports_unreadable_link(event: &EventKind, patient_id: i64) -> bool {
    matches!(event, EventKind::SyncError { code, patient_id: Some(p), path: Some(path), .. }
        if code == "odd_row" && *p == patient_id && path.ends_with("dentaltid.db"))
}

/// Every event queued so far.
pub fn drain(sync: &NanoPixSync) -> Vec<Event> {
    sync.events().try_iter().collect()
}

/// Waits up to `deadline` for an event that `wanted` accepts; panics with what arrived otherwise.
pub fn wait_for(sync: &NanoPixSync, deadline: Duration, mut wanted: impl FnMut(&EventKind) -> bool) -> Event {
    let until = Instant::now() + deadline;
    let events = sync.events();
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) if wanted(&event.kind) => return event,
            Ok(event) => seen.push(event.kind),
            Err(_) => break,
        }
    }
    panic!("no matching event within {deadline:?}; saw {seen:#?}");
}

/// Makes file modes bind this thread, and the threads it starts from now on, even when the tests
/// run as root: drops from the thread's effective capabilities the two that let root read and
/// write any file (`CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`). Other users are bound already.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn obey_file_modes_on_this_thread() {
    /// `struct __user_cap_header_struct`.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    /// `struct __user_cap_data_struct`.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    unsafe extern "C" {
        fn syscall(number: std::ffi::c_long, ...) -> std::ffi::c_long;
    }
    const CAPGET: std::ffi::c_long = 125;
    const CAPSET: std::ffi::c_long = 126;
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const DAC_OVERRIDE_AND_READ_SEARCH: u32 = (1 << 1) | (1 << 2);
    // `pid` 0 is the calling thread; version 3 takes two data words.
    let mut header = Header { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: both system calls get pointers to structs laid out as the kernel's, for this thread.
    unsafe {
        assert_eq!(syscall(CAPGET, &raw mut header, data.as_mut_ptr()), 0, "capget");
        data[0].effective &= !DAC_OVERRIDE_AND_READ_SEARCH;
        assert_eq!(syscall(CAPSET, &raw mut header, data.as_ptr()), 0, "capset");
    }
}

/// Sends once inotify reports an event of `mask` on `path`, from now on.
#[cfg(target_os = "linux")]
pub fn first_inotify_event(path: &std::path::Path, mask: u32) -> crossbeam_channel::Receiver<()> {
    use std::ffi::{CString, c_char, c_int, c_void};
    use std::os::unix::ffi::OsStrExt;
    unsafe extern "C" {
        fn inotify_init1(flags: c_int) -> c_int;
        fn inotify_add_watch(fd: c_int, path: *const c_char, mask: u32) -> c_int;
        fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    }
    const IN_CLOEXEC: c_int = 0o2_000_000;
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain system calls on a fresh inotify descriptor and a NUL-terminated path.
    let fd = unsafe { inotify_init1(IN_CLOEXEC) };
    assert!(fd >= 0, "inotify_init1");
    assert!(unsafe { inotify_add_watch(fd, path.as_ptr(), mask) } >= 0, "inotify_add_watch");
    let (happened, first) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // SAFETY: reads into a buffer of the length given; blocks until an event comes.
        let read = unsafe { read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read > 0 {
            let _ = happened.send(());
        }
    });
    first
}

/// What [`HookedClock`] runs once.
pub type Hook = Box<dyn FnOnce() + Send>;

/// A clock that stands still at [`clinic_morning`], and runs the hook it is armed with once, the
/// next time a thread `asks` accepts asks it the time: another program acting at a moment the
/// sync reaches.
#[derive(Clone)]
pub struct HookedClock {
    hook: Arc<Mutex<Option<Hook>>>,
    asks: fn(&std::thread::Thread) -> bool,
}

impl HookedClock {
    /// A clock with no hook yet, that runs one for the threads `asks` accepts.
    pub fn new(asks: fn(&std::thread::Thread) -> bool) -> Self {
        Self { hook: Arc::new(Mutex::new(None)), asks }
    }

    /// A clock that runs its hook for the sync's engine thread, which does all its work.
    pub fn of_the_engine() -> Self {
        Self::new(|thread| thread.name() == Some("nanopix-sync-engine"))
    }

    /// Has the clock run `hook` the next time a thread it runs hooks for asks the time.
    pub fn arm(&self, hook: Hook) {
        *self.hook.lock().unwrap() = Some(hook);
    }

    /// Whether the hook it was armed with has run.
    pub fn ran(&self) -> bool {
        self.hook.lock().unwrap().is_none()
    }
}

impl std::fmt::Debug for HookedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedClock").finish_non_exhaustive()
    }
}

impl Clock for HookedClock {
    fn now(&self) -> NaiveDateTime {
        if (self.asks)(&std::thread::current()) {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        clinic_morning()
    }
}
