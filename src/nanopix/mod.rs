//! The NanoPix side: `PatientData/database/NanoPix.db3` and one folder per patient.
//!
//! This module never changes NanoPix's journal mode, `user_version`, page size or schema, never
//! opens `User.db3`, writes only in short `BEGIN IMMEDIATE` transactions (no file I/O while
//! holding the lock), inserts only into columns that exist, and never builds a path from
//! anything but a validated [`NanoPixId`]. All SQL and file I/O about NanoPix lives here.

use std::collections::HashSet;
use std::ffi::OsString;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use rusqlite::Connection;

use crate::file_identity::FileIdentity;
use crate::patient::{NanoPixPatient, NewNanoPixPatient, WrittenRow};
use crate::{Error, NanoPixId, Result};
pub use database::Insertion;
use database::{Deletion, Selection};

mod database;
mod folders;

pub(crate) use folders::check_subfolder_name;

/// The folder under `PatientData` that holds NanoPix's databases: never a patient folder.
const DATABASE_FOLDER: &str = "database";
/// NanoPix's patient database inside [`DATABASE_FOLDER`] (its neighbour `User.db3` is never opened).
const DATABASE_FILE: &str = "NanoPix.db3";

/// A `Patient` row that could not be read as a patient (for example an invalid id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OddRow {
    /// `Patient.pk`; `None` when even that is not an integer.
    pub pk: Option<i64>,
    /// The stored id as text (invalid UTF-8 replaced); `None` for NULL.
    pub raw_id: Option<String>,
    /// Why the row is not a patient.
    pub problem: String,
}

/// The patients read from `NanoPix.db3`, and the rows that could not be read.
#[derive(Debug, Default)]
pub(crate) struct PatientRows {
    /// Rows with a valid id, in `pk` order.
    pub patients: Vec<NanoPixPatient>,
    /// Rows skipped, in `pk` order.
    pub odd_rows: Vec<OddRow>,
}

impl PatientRows {
    /// The highest `pk` read, odd rows included.
    pub fn last_pk(&self) -> Option<i64> {
        highest_pk(self.patients.iter().map(|p| p.pk), &self.odd_rows)
    }

    /// The row with the highest `pk`, odd rows included.
    pub fn last_row(&self) -> Option<RowStamp> {
        highest_row(self.patients.iter().map(|p| (p.pk, p.id, p.created)), &self.odd_rows)
    }
}

/// The `pk` and id of every `Patient` row, and the rows that could not be read.
#[derive(Debug, Default)]
pub(crate) struct IdRows {
    /// `(pk, id)` of each readable row, in `pk` order.
    pub ids: Vec<(i64, NanoPixId)>,
    /// The rows whose id (or `pk`) could not be read.
    pub odd_rows: Vec<OddRow>,
    /// The `created_datetime` of each readable row that has one, when read.
    pub created: foldhash::HashMap<NanoPixId, NaiveDateTime>,
}

impl IdRows {
    /// The row with the highest `pk`, odd rows included.
    pub fn last_row(&self) -> Option<RowStamp> {
        highest_row(self.ids.iter().map(|&(pk, id)| (pk, id, self.created.get(&id).copied())), &self.odd_rows)
    }
}

/// The highest of `pks` and of the odd rows' integer `pk`s.
fn highest_pk(pks: impl Iterator<Item = i64>, odd_rows: &[OddRow]) -> Option<i64> {
    pks.chain(odd_rows.iter().filter_map(|odd| odd.pk)).max()
}

/// A row as a live pass finds it at the `pk` it read up to. NanoPix gives the `pk` of a deleted
/// last row to its next patient, so another id or creation time there means rows changed behind
/// the pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowStamp {
    /// `pk`.
    pub pk: i64,
    /// The id, as stored (so as text).
    pub id: String,
    /// `created_datetime`, when the row is readable and has one.
    pub created: Option<NaiveDateTime>,
}

impl RowStamp {
    /// Whether `now`, read at this stamp's `pk`, is another row: another id, or another creation
    /// time where this stamp has one.
    pub fn is_replaced_by(&self, now: Option<&RowStamp>) -> bool {
        now.is_none_or(|now| now.id != self.id || self.created.is_some_and(|created| now.created != Some(created)))
    }
}

/// The row with the highest `pk` among `rows` (`pk`, id, creation time) and the odd rows.
fn highest_row(
    rows: impl Iterator<Item = (i64, NanoPixId, Option<NaiveDateTime>)>,
    odd_rows: &[OddRow],
) -> Option<RowStamp> {
    let readable =
        rows.max_by_key(|(pk, ..)| *pk).map(|(pk, id, created)| RowStamp { pk, id: id.to_string(), created });
    let odd = odd_rows
        .iter()
        .filter_map(|odd| Some(RowStamp { pk: odd.pk?, id: odd.raw_id.clone().unwrap_or_default(), created: None }));
    readable.into_iter().chain(odd).max_by_key(|row| row.pk)
}

/// The patient folders found under `PatientData`.
#[derive(Debug, Default)]
pub(crate) struct FolderScan {
    /// Real folders named by a valid id.
    pub patient_folders: foldhash::HashSet<NanoPixId>,
    /// Every other name in the root except `database`: files, symlinks, other or non-UTF-8 names.
    pub odd_names: Vec<OsString>,
}

/// The patient folders being listed on a thread of their own, so the engine goes on meanwhile.
#[derive(Debug)]
pub(crate) struct FolderListing(Listing);

/// Where a [`FolderListing`] stands.
#[derive(Debug)]
enum Listing {
    /// The listing thread is running.
    Running(JoinHandle<Result<FolderScan>>),
    /// No thread could be started, so the folders were listed at once (or the listing was taken).
    Listed(Result<FolderScan>),
}

impl FolderListing {
    /// Starts listing the patient folders (names that are valid ids) and the other names found
    /// under `root`, on a thread of its own; lists them at once if no thread can be started.
    pub fn start(root: &Path) -> Self {
        let owned = root.to_path_buf();
        let thread = std::thread::Builder::new().name("nanopix-sync-folders".into());
        match thread.spawn(move || folders::scan(&owned)) {
            Ok(running) => Self(Listing::Running(running)),
            Err(_) => Self(Listing::Listed(folders::scan(root))),
        }
    }

    /// Waits for the listing to end and returns what it found.
    pub fn finish(mut self) -> Result<FolderScan> {
        match self.take() {
            Listing::Running(thread) => {
                thread.join().map_err(|_| Error::Internal("listing NanoPix's folders panicked".into()))?
            }
            Listing::Listed(scan) => scan,
        }
    }

    /// Takes the listing out, leaving an empty one in its place.
    fn take(&mut self) -> Listing {
        std::mem::replace(&mut self.0, Listing::Listed(Ok(FolderScan::default())))
    }
}

impl Drop for FolderListing {
    /// A listing left unfinished (its reconcile failed first) is still waited for, so its
    /// thread never outlives the handle.
    fn drop(&mut self) {
        if let Listing::Running(thread) = self.take() {
            let _ = thread.join();
        }
    }
}

/// What NanoPix holds for one patient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PatientContents {
    /// `Study` rows (images) for the patient.
    pub studies: u64,
    /// `Report` rows for the patient.
    pub reports: u64,
    /// Rows of NanoPix's other tables whose foreign keys name the patient.
    pub other_records: u64,
    /// Entries in the patient's folder.
    pub files: u64,
}

/// Whether SQLite could open the database of `conn` only for reading.
fn is_read_only(conn: &Connection) -> bool {
    conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false)
}

/// Refuses `root`'s `database/NanoPix.db3` with [`Error::UnsafePath`] unless it resolves,
/// through any symlinks, to a place inside `root`. Where the system cannot resolve paths (some
/// Windows drives), neither the folder nor the file may be a symlink.
fn ensure_inside(root: &Path, db_path: &Path) -> Result<()> {
    let inside = match (std::fs::canonicalize(db_path), std::fs::canonicalize(root)) {
        (Ok(db_path), Ok(root)) => db_path.starts_with(root),
        _ => [root.join(DATABASE_FOLDER), db_path.to_path_buf()]
            .iter()
            .all(|path| std::fs::symlink_metadata(path).is_ok_and(|metadata| !metadata.file_type().is_symlink())),
    };
    if inside { Ok(()) } else { Err(Error::UnsafePath(db_path.to_path_buf())) }
}

/// The NanoPix ids records name (see [`NanoPix::refresh_record_ids`]), as read when `NanoPix.db3`'s data version
/// was `version`: read again whole once another program wrote to it (rows are not read by
/// `rowid` from the last one: NanoPix's tables give a deleted last row's `rowid` to the next).
#[derive(Debug, Default)]
struct RecordIds {
    ids: foldhash::HashSet<NanoPixId>,
    /// The connection's data version when `ids` was read; `None` before the first read.
    version: Option<i64>,
}

/// The birth dates of `Patient` rows read by [`NanoPix::born_on`], as read when `NanoPix.db3`'s
/// data version was `version`: read again once another program wrote to it.
#[derive(Debug, Default)]
struct BirthDates {
    /// Each id read, with its row's birth date: `None` without a row or a birth date.
    by_id: foldhash::HashMap<NanoPixId, Option<NaiveDate>>,
    /// The connection's data version when they were read; `None` before the first read.
    version: Option<i64>,
}

/// The tables whose rows name a patient by its NanoPix id in `patient_id`, with or without a
/// foreign key.
const RECORD_TABLES: [&str; 2] = ["Study", "Report"];

/// An open NanoPix data folder.
#[derive(Debug)]
pub(crate) struct NanoPix {
    root: PathBuf,
    db_path: PathBuf,
    /// The file `db_path` named when it was opened.
    identity: Option<FileIdentity>,
    conn: Connection,
    busy_timeout: Duration,
    patient_columns: HashSet<String>,
    records: RecordIds,
    birth_dates: BirthDates,
}

/// The path of `NanoPix.db3` under `root`, once the folder and the file are there. A missing one
/// is [`Error::NanoPixRootMissing`] or [`Error::NanoPixDatabaseMissing`]; one the system refuses
/// to look into (access denied) is an [`Error::Io`], not a missing one; a file at the root's
/// path is an [`Error::InvalidConfig`].
pub(crate) fn database_under(root: &Path) -> Result<PathBuf> {
    if root.is_file() {
        let named = format!("nanopix_root names a file, not the PatientData folder: {}", root.display());
        return Err(Error::InvalidConfig(named));
    }
    if !root.is_dir() {
        crate::error::refused_access(root, "looking for the NanoPix data folder")?;
        return Err(Error::NanoPixRootMissing(root.to_path_buf()));
    }
    let db_path = root.join(DATABASE_FOLDER).join(DATABASE_FILE);
    if !db_path.is_file() {
        crate::error::refused_access(&db_path, "looking for the NanoPix database")?;
        return Err(Error::NanoPixDatabaseMissing(db_path));
    }
    Ok(db_path)
}

/// The [`Error::InvalidConfig`] naming the folder to give instead when `root`, which holds no
/// `database/NanoPix.db3`, is one folder off `PatientData`: a folder inside it (its `database`
/// folder, a patient folder), or the folder that holds it.
fn one_level_off(root: &Path) -> Option<Error> {
    let inner = root.join("PatientData");
    let (what, patient_data) = match root.parent() {
        Some(outer) if holds_database(outer) => ("a folder inside PatientData", outer),
        _ if holds_database(&inner) => ("the folder that holds PatientData", inner.as_path()),
        _ => return None,
    };
    let (given, wanted) = (root.display(), patient_data.display());
    Some(Error::InvalidConfig(format!("nanopix_root names {what}, not PatientData itself: {given}; give {wanted}")))
}

/// Whether `folder` holds `database/NanoPix.db3`, as `PatientData` does.
fn holds_database(folder: &Path) -> bool {
    folder.join(DATABASE_FOLDER).join(DATABASE_FILE).is_file()
}

impl NanoPix {
    /// Opens `root` (`PatientData`), checks `database/NanoPix.db3` and its `Patient` table
    /// (`id` and `last_name` must exist), without writing anything. A folder or file the system
    /// refuses to look into (access denied) is an [`Error::Io`], not a missing one; a DentalTID
    /// database there is an [`Error::DentalTidDatabaseAsNanoPix`]. A file refused is left byte
    /// for byte.
    pub fn open(root: &Path, busy_timeout: Duration) -> Result<Self> {
        let db_path = database_under(root)?;
        ensure_inside(root, &db_path)?;
        let identity = FileIdentity::of(&db_path);
        let conn = database::connect(&db_path, busy_timeout)?;
        let patient_columns =
            crate::values::check_without_checkpoint(&conn, &db_path, |conn| database::patient_columns(conn, &db_path))?;
        let (records, birth_dates) = (RecordIds::default(), BirthDates::default());
        let root = root.to_path_buf();
        Ok(Self { root, db_path, identity, conn, busy_timeout, patient_columns, records, birth_dates })
    }

    /// [`NanoPix::open`] for the root the configuration gives, as the handle opens: a root that
    /// holds no `database/NanoPix.db3` and is one folder off `PatientData` (see [`one_level_off`])
    /// is an [`Error::InvalidConfig`] naming the folder to give. Once open, the root was
    /// `PatientData`: its database missing later (a restore under way, an unplugged share) is
    /// missing, whatever lies beside the root.
    pub fn open_configured(root: &Path, busy_timeout: Duration) -> Result<Self> {
        Self::open(root, busy_timeout).map_err(|error| match error {
            Error::NanoPixDatabaseMissing(_) => one_level_off(root).unwrap_or(error),
            error => error,
        })
    }

    /// Whether `NanoPix.db3` now names another file than the one opened (a restore, a copy
    /// renamed over it), or none: the connection still reads the old one.
    pub fn replaced(&self) -> bool {
        FileIdentity::of(&self.db_path) != self.identity
    }

    /// Connects again when this connection could only open the file read-only: SQLite falls
    /// back to reading a file it may not write (a read-only attribute, a backup tool holding it)
    /// and stays so, though the file may be writable by now.
    ///
    /// Returns whether it connected again: the new connection's data versions then start anew.
    pub fn reconnect_if_read_only(&mut self) -> Result<bool> {
        if !is_read_only(&self.conn) {
            return Ok(false);
        }
        let conn = database::connect(&self.db_path, self.busy_timeout)?;
        if is_read_only(&conn) {
            return Ok(false);
        }
        (self.conn, self.records, self.birth_dates) = (conn, RecordIds::default(), BirthDates::default());
        Ok(true)
    }

    /// The `PatientData` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `NanoPix.db3`.
    pub fn database(&self) -> &Path {
        &self.db_path
    }

    /// The connection to `NanoPix.db3`.
    #[cfg(test)]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The `pk` and id of every row, in `pk` order: what a reconcile needs when nothing changed;
    /// with their creation times when `with_created` (a first sync has no link to compare them
    /// with, and keeps the memory).
    pub fn patient_ids(&self, with_created: bool) -> Result<IdRows> {
        database::read_ids(&self.conn, &self.patient_columns, with_created)
            .map_err(self.sql_error("reading patient ids"))
    }

    /// Those of `ids` whose row was born on one of `dates`, from the birth dates read since
    /// another program last wrote to `NanoPix.db3`: only the ids not read since are read. Rows
    /// this connection wrote since are not read again: one it deleted may still be named, one
    /// it added under an id read without a row is not. Read a named row again before acting.
    pub fn born_on<S: BuildHasher>(
        &mut self,
        ids: &[NanoPixId],
        dates: &HashSet<NaiveDate, S>,
    ) -> Result<Vec<NanoPixId>> {
        let version = self.data_version()?;
        if self.birth_dates.version != Some(version) {
            self.birth_dates = BirthDates { by_id: foldhash::HashMap::default(), version: Some(version) };
        }
        let unread: Vec<NanoPixId> =
            ids.iter().copied().filter(|id| !self.birth_dates.by_id.contains_key(id)).collect();
        let found = self.patients_with_ids(&unread)?;
        let known = &mut self.birth_dates.by_id;
        known.extend(unread.into_iter().map(|id| (id, None)));
        known.extend(found.into_iter().map(|patient| (patient.id, patient.birth_date)));
        let born_on = |id: &NanoPixId| known.get(id).copied().flatten().is_some_and(|born| dates.contains(&born));
        Ok(ids.iter().copied().filter(born_on).collect())
    }

    /// Up to `limit` patient rows with `pk` greater than `after` (from the first row without
    /// it), in `pk` order: short reads, so NanoPix is never kept waiting to write.
    pub fn patients_after(&self, after: Option<i64>, limit: u32) -> Result<PatientRows> {
        self.select(Selection::AfterPk { after, limit })
    }

    /// The row with this id, if it exists and is readable.
    pub fn patient(&self, id: NanoPixId) -> Result<Option<NanoPixPatient>> {
        Ok(self.select(Selection::WithId(id))?.patients.into_iter().next())
    }

    /// The rows with these ids that exist and are readable, each id's as [`NanoPix::patient`]
    /// gives it, in `pk` order within each read of [`crate::values::IDS_PER_READ`] ids: one short
    /// read per so many ids instead of one per id.
    pub fn patients_with_ids(&self, ids: &[NanoPixId]) -> Result<Vec<NanoPixPatient>> {
        Ok(self.rows_with_ids(ids)?.0)
    }

    /// The rows with these ids that exist and are readable, as [`NanoPix::patients_with_ids`]
    /// gives them, and those of `ids` that any row has, readable or not (as
    /// [`NanoPix::id_exists`] finds them), in the same reads.
    pub fn rows_with_ids(&self, ids: &[NanoPixId]) -> Result<(Vec<NanoPixPatient>, HashSet<NanoPixId>)> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        let mut unreadable = HashSet::new();
        for some in ids.chunks(crate::values::IDS_PER_READ) {
            let rows = self.select(Selection::WithIds(some))?;
            let odd_ids = rows.odd_rows.iter().filter_map(|odd| NanoPixId::parse(odd.raw_id.as_deref()?).ok());
            unreadable.extend(odd_ids);
            found.extend(rows.patients.into_iter().filter(|patient| seen.insert(patient.id)));
        }
        seen.extend(unreadable);
        Ok((found, seen))
    }

    /// The row with this `pk` (see [`IdRows::last_row`]), if there is one.
    pub fn row_at(&self, pk: i64) -> Result<Option<RowStamp>> {
        database::row_at(&self.conn, &self.patient_columns, pk).map_err(self.sql_error("reading a patient id"))
    }

    /// A number that changes whenever another program (NanoPix) commits to `NanoPix.db3`, and
    /// never for this connection's own writes.
    pub fn data_version(&self) -> Result<i64> {
        crate::values::data_version(&self.conn).map_err(self.sql_error("reading the data version"))
    }

    /// How many rows `Patient` holds.
    pub fn patient_count(&self) -> Result<u64> {
        database::patient_count(&self.conn).map_err(self.sql_error("counting patients"))
    }

    /// Whether a row with this id exists.
    pub fn id_exists(&self, id: NanoPixId) -> Result<bool> {
        database::id_exists(&self.conn, id).map_err(self.sql_error("looking up a patient id"))
    }

    /// Inserts a patient row, unless a row with its id already exists (so repair can repeat it),
    /// or unless another program wrote to NanoPix since [`NanoPix::data_version`] gave
    /// `unchanged_since` (when given): it may have saved the same person, whom the sync must
    /// read first.
    ///
    /// The id must also be free on disk when the row is written: NanoPix makes a new patient's
    /// folder before or after its row, and may make it (and save images in it) while the insert
    /// waits for its lock, then roll its row back. So the lock is never waited for: before each
    /// try, outside the lock, and again under it just before the commit, the folder is looked for,
    /// and a folder there gives [`Insertion::IdTaken`], having written nothing. Once `stopping`
    /// says so (the handle is closing), the tries end with [`Error::Closed`], having written
    /// nothing, instead of going on for the busy timeouts.
    pub fn insert_patient(
        &self,
        patient: &NewNanoPixPatient,
        unchanged_since: Option<i64>,
        stopping: impl Fn() -> bool,
    ) -> Result<Insertion> {
        let folder = self.folder_path(patient.id);
        let still_free = || if stopping() { Err(Error::Closed) } else { Ok(folder.symlink_metadata().is_err()) };
        let inserted =
            database::write_while(self.write_step("inserting a patient"), (&still_free, &still_free), |conn| {
                database::insert_patient(conn, &self.patient_columns, patient, unchanged_since)
            })?;
        Ok(inserted.unwrap_or(Insertion::IdTaken))
    }

    /// Inserts the rows of `patients` in one transaction, as [`NanoPix::insert_patient`] inserts
    /// one (the folder of each looked for before and under the lock, `stopping` heeded), but
    /// tries once: while NanoPix is busy, each row is better written on its own, by an export that
    /// waits for it. Returns whether each was written (a row with its id there already is left
    /// alone). `None`, with nothing written, when the folder of one of them is there (another
    /// NanoPix patient's, made meanwhile), or another program wrote to NanoPix since
    /// [`NanoPix::data_version`] gave `unchanged_since`.
    ///
    /// # Failure
    /// [`Error::Busy`], with nothing written, when NanoPix was busy.
    pub fn insert_patients(
        &self,
        patients: &[&NewNanoPixPatient],
        unchanged_since: i64,
        stopping: impl Fn() -> bool,
    ) -> Result<Option<Vec<bool>>> {
        let folders: Vec<PathBuf> = patients.iter().map(|patient| self.folder_path(patient.id)).collect();
        let all_free = || match stopping() {
            true => Err(Error::Closed),
            false => Ok(folders.iter().all(|folder| folder.symlink_metadata().is_err())),
        };
        let inserted =
            database::write_once_while(self.write_step("inserting patients"), (&all_free, &all_free), |conn| {
                database::insert_patients(conn, &self.patient_columns, patients, unchanged_since)
            })?;
        Ok(inserted.flatten())
    }

    /// Whether the row with this id is one the sync wrote with `written`'s values: each of the
    /// columns that identify it and that exist holds exactly the text written.
    pub fn holds_written_row(&self, id: NanoPixId, written: &WrittenRow) -> Result<bool> {
        database::holds_written_row(&self.conn, &self.patient_columns, id, written)
            .map_err(self.sql_error("comparing a patient row with the one written"))
    }

    /// The folder of a patient: `PatientData/<id>`.
    pub fn folder_path(&self, id: NanoPixId) -> PathBuf {
        folders::patient_folder(&self.root, id)
    }

    /// The patient's folder path, whether the folder is there or not; none when a symlink or a
    /// file sits where it belongs: the sync never follows one, and a host given the path would.
    pub fn folder_to_show(&self, id: NanoPixId) -> Option<PathBuf> {
        let path = self.folder_path(id);
        (!folders::holds_other_than_folder(&path)).then_some(path)
    }

    /// Whether the patient's folder is there (a real folder, not a symlink).
    pub fn has_folder(&self, id: NanoPixId) -> bool {
        folders::is_real_dir(&self.folder_path(id))
    }

    /// Creates the patient's folder (and the configured subfolders) if missing; returns its path.
    ///
    /// # Failure
    /// [`Error::UnsafePath`] if a symlink or a file sits where a folder belongs, and
    /// [`Error::InvalidConfig`] for a subfolder name that is not one plain folder name.
    pub fn create_folder(&self, id: NanoPixId, subfolders: &[String]) -> Result<PathBuf> {
        folders::create_patient_folder(&self.root, id, subfolders)
    }

    /// Counts the studies, reports, other records and files NanoPix holds for a patient; the
    /// empty `subfolders` an export made are not files.
    pub fn contents(&self, id: NanoPixId, subfolders: &[String]) -> Result<PatientContents> {
        let (studies, reports, other_records) = self.records(id)?;
        let files = folders::count_entries(&self.folder_path(id), subfolders)?;
        Ok(PatientContents { studies, reports, other_records, files })
    }

    /// Reads the ids records name (`Study` and `Report` rows, and rows of other tables whose
    /// foreign keys name `Patient.id`), for [`NanoPix::records_name`], unless they were read
    /// since another program last wrote to `NanoPix.db3`. Without an index on those rows'
    /// columns, a read goes through each of those tables.
    pub fn refresh_record_ids(&mut self) -> Result<()> {
        let version = self.data_version()?;
        if self.records.version == Some(version) {
            return Ok(());
        }
        let mut ids = foldhash::HashSet::default();
        database::record_ids(&self.conn, &mut ids).map_err(self.sql_error("reading the ids records name"))?;
        self.records = RecordIds { ids, version: Some(version) };
        Ok(())
    }

    /// Whether records read by [`NanoPix::refresh_record_ids`] name this id, with or without a
    /// `Patient` row: images and other records of a patient NanoPix deleted without them still
    /// point at it.
    pub fn records_name(&self, id: NanoPixId) -> bool {
        self.records.ids.contains(&id)
    }

    /// The `Study` and `Report` rows that name this id, and the rows of other tables whose
    /// foreign keys name its `Patient` row.
    fn records(&self, id: NanoPixId) -> Result<(u64, u64, u64)> {
        let studies =
            database::count_for_patient(&self.conn, "Study", id).map_err(self.sql_error("counting studies"))?;
        let reports =
            database::count_for_patient(&self.conn, "Report", id).map_err(self.sql_error("counting reports"))?;
        let others = database::count_other_records(&self.conn, id).map_err(self.sql_error("counting other records"))?;
        Ok((studies, reports, others))
    }

    /// Deletes the patient's row and its empty folder (with the empty `subfolders` an export
    /// made in it); refuses if it holds anything. Without a row, removes the folder alone, if
    /// empty: a delete cut short after its commit (the process killed, the folder held open)
    /// ends when asked again.
    ///
    /// No file is touched under NanoPix's write lock, and the lock is never waited for while
    /// holding it: the folder is looked into before each try, a try that finds NanoPix busy
    /// (saving, or reading when the delete commits) starts again, looking again (NanoPix may
    /// save an image meanwhile), and the folder is removed after the commit.
    ///
    /// # Failure
    /// [`Error::NanoPixPatientNotFound`] with neither a row nor a folder,
    /// [`Error::NanoPixPatientNotEmpty`] while any study, report, other record (a row of another
    /// table whose foreign key names the patient, which the delete would cascade to) or file is
    /// left (the records are counted again under the write lock), [`Error::Busy`] when no try got
    /// through within the busy timeout. The folder is removed after the commit; if NanoPix saved a
    /// file in it in the few milliseconds of the delete's own transaction, the row is put back
    /// (with a new `pk`) and the delete refused; if it cannot be removed for another reason, the
    /// error is [`Error::Io`] and the row stays deleted.
    pub fn delete_patient(&self, id: NanoPixId, subfolders: &[String]) -> Result<()> {
        let row = self.id_exists(id)?;
        if !row && !self.has_folder(id) {
            return Err(Error::NanoPixPatientNotFound(id.to_string()));
        }
        if !row {
            let contents = self.contents(id, subfolders)?;
            if contents != PatientContents::default() {
                return Err(not_empty(id, contents));
            }
            return folders::remove_empty_folder(&self.folder_path(id), subfolders);
        }
        let empty = || self.contents(id, subfolders).map(|contents| contents == PatientContents::default());
        // Under the lock the delete itself has just counted the records: only the folder is left.
        let folder_empty = || folders::count_entries(&self.folder_path(id), subfolders).map(|files| files == 0);
        let deletion = database::write_while(self.write_step("deleting a patient"), (empty, folder_empty), |conn| {
            database::delete_patient(conn, &self.patient_columns, id)
        })?;
        match deletion {
            None => Err(not_empty(id, self.contents(id, subfolders)?)),
            Some(Deletion::Deleted(rows)) => match folders::remove_empty_folder(&self.folder_path(id), subfolders) {
                Err(error) => self.put_back_if_filled(id, subfolders, &rows, error),
                removed => removed,
            },
            Some(Deletion::Missing) => Err(Error::NanoPixPatientNotFound(id.to_string())),
            Some(Deletion::Shared(rows)) => Err(Error::NanoPixIdShared { external_id: id.to_string(), rows }),
            Some(Deletion::Holds { studies, reports, other_records }) => {
                Err(not_empty(id, PatientContents { studies, reports, other_records, files: 0 }))
            }
        }
    }

    /// After the folder of a patient whose `rows` were deleted could not be removed (`error`):
    /// puts the rows back if NanoPix saved a file in the folder during the delete's own
    /// transaction, and refuses the delete; else gives `error` (the row stays deleted, and the
    /// delete asked again removes the folder).
    fn put_back_if_filled(
        &self,
        id: NanoPixId,
        subfolders: &[String],
        rows: &database::DeletedRows,
        error: Error,
    ) -> Result<()> {
        let contents = self.contents(id, subfolders)?;
        if contents.files == 0 {
            return Err(error);
        }
        let step = "putting back a patient NanoPix saved a file for while it was deleted";
        database::write(&self.conn, &self.db_path, step, |conn| database::put_back(conn, rows))?;
        Err(not_empty(id, contents))
    }

    fn select(&self, selection: Selection) -> Result<PatientRows> {
        database::read_patients(&self.conn, &self.patient_columns, selection)
            .map_err(self.sql_error("reading patients"))
    }

    /// `step`, as a write to the database that never waits for its lock (see
    /// [`database::write_while`]).
    fn write_step(&self, step: &'static str) -> database::WriteStep<'_> {
        database::WriteStep { conn: &self.conn, db_path: &self.db_path, busy_timeout: self.busy_timeout, step }
    }

    fn sql_error(&self, step: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        Error::db(&self.db_path, step)
    }
}

/// The refusal to delete a patient NanoPix still holds something for.
fn not_empty(id: NanoPixId, contents: PatientContents) -> Error {
    let PatientContents { studies, reports, other_records, files } = contents;
    Error::NanoPixPatientNotEmpty { external_id: id.to_string(), studies, reports, other_records, files }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use chrono::{NaiveDate, NaiveDateTime};
    use tempfile::TempDir;

    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/nanopix/PatientData");
    const FIXTURE_ID: &str = "20250121_152638";

    /// A writable copy of the fixture `PatientData`, as `(temp dir, root)`.
    pub(crate) fn fixture_copy() -> (TempDir, PathBuf) {
        let temp = TempDir::new().unwrap();
        let root = temp.path().join("PatientData");
        copy_tree(Path::new(FIXTURE), &root);
        (temp, root)
    }

    /// Copies contents, not permissions: the fixture files are read-only.
    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                fs::write(&target, fs::read(entry.path()).unwrap()).unwrap();
            }
        }
    }

    /// A `PatientData` whose `NanoPix.db3` holds only `schema`.
    fn root_with_schema(schema: &str) -> (TempDir, PathBuf) {
        let temp = TempDir::new().unwrap();
        let root = temp.path().join("PatientData");
        fs::create_dir_all(root.join(DATABASE_FOLDER)).unwrap();
        other_connection(&root).execute_batch(schema).unwrap();
        (temp, root)
    }

    fn open(root: &Path) -> NanoPix {
        NanoPix::open(root, Duration::from_secs(2)).unwrap()
    }

    /// A second connection, standing in for NanoPix itself.
    fn other_connection(root: &Path) -> Connection {
        Connection::open(root.join(DATABASE_FOLDER).join(DATABASE_FILE)).unwrap()
    }

    fn id(text: &str) -> NanoPixId {
        NanoPixId::parse(text).unwrap()
    }

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    /// A copy of the fixture holding a new patient, `20250301_093000`, without a folder, as
    /// `(temp dir, root, NanoPix opened on it, her id)`.
    fn fixture_with_new_patient() -> (TempDir, PathBuf, NanoPix, NanoPixId) {
        let (temp, root) = fixture_copy();
        let nanopix = open(&root);
        let new_id = id("20250301_093000");
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        (temp, root, nanopix, new_id)
    }

    fn new_patient(id_text: &str) -> NewNanoPixPatient {
        NewNanoPixPatient {
            id: id(id_text),
            last_name: "Benali".into(),
            first_name: "Amina".into(),
            birth_date: NaiveDate::from_ymd_opt(1985, 3, 12),
            phone: Some("0555 12 34 56".into()),
            created: at("2025-03-01 09:30:07"),
        }
    }

    fn row_count(root: &Path) -> i64 {
        other_connection(root).query_row("SELECT count(*) FROM Patient", [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn open_refuses_a_missing_root_and_names_a_file_given_as_one() {
        let temp = TempDir::new().unwrap();
        let missing = temp.path().join("PatientData");
        assert!(matches!(NanoPix::open(&missing, Duration::ZERO), Err(Error::NanoPixRootMissing(p)) if p == missing));
        fs::write(&missing, "not a folder").unwrap();
        let named = format!("nanopix_root names a file, not the PatientData folder: {}", missing.display());
        assert!(
            matches!(NanoPix::open(&missing, Duration::ZERO), Err(Error::InvalidConfig(message)) if message == named)
        );
    }

    #[test]
    fn open_refuses_a_root_without_database_and_creates_none() {
        let temp = TempDir::new().unwrap();
        let db_path = temp.path().join(DATABASE_FOLDER).join(DATABASE_FILE);
        fs::create_dir(temp.path().join(DATABASE_FOLDER)).unwrap();
        let result = NanoPix::open(temp.path(), Duration::ZERO);
        assert!(matches!(result, Err(Error::NanoPixDatabaseMissing(p)) if p == db_path));
        assert!(!db_path.exists());
    }

    #[test]
    fn open_refuses_a_database_without_patient_table() {
        let (_temp, root) = root_with_schema("CREATE TABLE Study (pk INTEGER PRIMARY KEY, patient_id VARCHAR);");
        let result = NanoPix::open(&root, Duration::ZERO);
        assert!(matches!(result, Err(Error::MissingTable { table: "Patient", .. })), "{result:?}");
    }

    #[test]
    fn open_refuses_a_patient_table_without_id_or_last_name() {
        let (_temp, root) = root_with_schema("CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250));");
        let result = NanoPix::open(&root, Duration::ZERO);
        assert!(matches!(result, Err(Error::MissingColumn { table: "Patient", column: "last_name", .. })));
        let (_temp, root) = root_with_schema("CREATE TABLE Patient (pk INTEGER PRIMARY KEY, last_name VARCHAR(250));");
        let result = NanoPix::open(&root, Duration::ZERO);
        assert!(matches!(result, Err(Error::MissingColumn { column: "id", .. })));
    }

    #[test]
    fn reads_the_fixture_patient_exactly() {
        let (_temp, root) = fixture_copy();
        let rows = open(&root).patients_after(None, u32::MAX).unwrap();
        assert!(rows.odd_rows.is_empty());
        let expected = NanoPixPatient {
            pk: 1,
            id: id(FIXTURE_ID),
            last_name: "DSSSSFSFS".into(),
            first_name: "FSFFS".into(),
            sex: Some("Male".into()),
            birth_date: NaiveDate::from_ymd_opt(2025, 1, 21),
            phone: Some(String::new()),
            created: Some(at("2025-01-21 15:26:46")),
        };
        assert_eq!(rows.patients, vec![expected.clone()]);
        let nanopix = open(&root);
        assert_eq!(nanopix.patient(id(FIXTURE_ID)).unwrap(), Some(expected));
        assert!(nanopix.id_exists(id(FIXTURE_ID)).unwrap());
        assert_eq!(nanopix.patient(id("20250121_152639")).unwrap(), None);
        assert!(!nanopix.id_exists(id("20250121_152639")).unwrap());
    }

    #[test]
    fn odd_rows_never_fail_the_read() {
        let (_temp, root) = fixture_copy();
        other_connection(&root)
            .execute_batch(
                "INSERT INTO Patient (pk, id, last_name, first_name, birthdate, created_datetime) VALUES
                   (2, '20250301_101010', 'Nofirst', NULL, '0000-00-00', 'yesterday'),
                   (3, '20250302_101010', 'Garbage', 'G', '', ''),
                   (4, '../evil', 'Evil', 'E', '2025-01-01', '2025-01-01 10:00:00'),
                   (5, '20251340_000000', 'Month13', 'M', NULL, NULL),
                   (6, '20250303_101010 ', 'Space', 'S', NULL, NULL),
                   (7, '20250304_101010', '', NULL, '2025-02-30', '2025-01-01 25:00:00');",
            )
            .unwrap();
        let rows = open(&root).patients_after(None, u32::MAX).unwrap();
        let read: Vec<_> =
            rows.patients.iter().map(|p| (p.pk, p.first_name.as_str(), p.birth_date, p.created)).collect();
        let fixture = (1, "FSFFS", NaiveDate::from_ymd_opt(2025, 1, 21), Some(at("2025-01-21 15:26:46")));
        assert_eq!(read, vec![fixture, (2, "", None, None), (3, "G", None, None), (7, "", None, None)]);
        let odd: Vec<_> = rows.odd_rows.iter().map(|o| (o.pk, o.raw_id.as_deref())).collect();
        let ids = [(Some(4), Some("../evil")), (Some(5), Some("20251340_000000")), (Some(6), Some("20250303_101010 "))];
        assert_eq!(odd, ids);
        assert!(rows.odd_rows.iter().all(|o| o.problem.contains("not a valid NanoPix id")));
    }

    #[test]
    fn reads_untyped_ids_nulls_and_bad_utf8_from_a_minimal_table() {
        let (_temp, root) = root_with_schema(
            "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id, last_name);
             INSERT INTO Patient VALUES (1, 20250101, 'Integer'), (2, NULL, 'Null'),
               (3, CAST('20250121_152638' AS BLOB), 'Blob'), (4, '20250122_000000', NULL),
               (5, '20250123_000000', CAST(x'4dfc6c6c6572' AS TEXT)), (6, 20250124.5, 'Real');",
        );
        let rows = open(&root).patients_after(None, u32::MAX).unwrap();
        let odd: Vec<_> = rows.odd_rows.iter().map(|o| (o.pk, o.raw_id.as_deref(), o.problem.as_str())).collect();
        assert_eq!(odd[0], (Some(1), Some("20250101"), "id is not a valid NanoPix id (YYYYMMDD_HHMMSS)"));
        assert_eq!(odd[1], (Some(2), None, "id is NULL"));
        assert_eq!(odd[2], (Some(3), Some(FIXTURE_ID), "id is stored as a blob"));
        assert_eq!(odd[3].0, Some(6));
        let names: Vec<_> = rows.patients.iter().map(|p| (p.pk, p.last_name.as_str(), p.sex.clone())).collect();
        assert_eq!(names, vec![(4, "", None), (5, "M\u{FFFD}ller", None)]);
    }

    #[test]
    fn patients_with_ids_gives_each_id_s_row_as_patient_does_over_several_reads() {
        let (_temp, root) = root_with_schema(
            "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250), last_name VARCHAR(250),
               birthdate VARCHAR(250));",
        );
        let conn = other_connection(&root);
        for n in 0..250 {
            let insert = "INSERT INTO Patient (id, last_name, birthdate) VALUES (?1, ?2, '1990-01-01')";
            conn.execute(insert, (format!("20250301_10{:02}{:02}", n / 60, n % 60), format!("Name {n}"))).unwrap();
        }
        // A second row under an id, which `patient` leaves out, and a birth date read as none.
        conn.execute_batch(
            "INSERT INTO Patient (id, last_name) VALUES ('20250301_100000', 'Again');
             UPDATE Patient SET birthdate = '0000-00-00' WHERE id = '20250301_100001';",
        )
        .unwrap();
        let nanopix = open(&root);
        let mut asked: Vec<NanoPixId> =
            (0..300).map(|n| id(&format!("20250301_10{:02}{:02}", n / 60, n % 60))).collect();
        asked.push(asked[7]);
        let expected: Vec<_> = asked[..300].iter().filter_map(|&asked| nanopix.patient(asked).unwrap()).collect();
        assert_eq!(expected.len(), 250);
        assert_eq!(nanopix.patients_with_ids(&asked).unwrap(), expected);
        assert_eq!(nanopix.patients_with_ids(&[]).unwrap(), Vec::new());
    }

    #[test]
    fn born_on_reads_birth_dates_again_only_once_another_program_wrote() {
        let (_temp, root) = fixture_copy();
        let mut nanopix = open(&root);
        let (first, second) = (id("20250301_093000"), id("20250301_093001"));
        for patient in [first, second] {
            nanopix.insert_patient(&new_patient(&patient.to_string()), None, || false).unwrap();
        }
        let born = new_patient("20250301_093000").birth_date.unwrap();
        let dates = HashSet::from([born]);
        let ids = [first, second, id(FIXTURE_ID), id("20250301_093002")];
        assert_eq!(nanopix.born_on(&ids, &dates).unwrap(), vec![first, second]);
        // Its own delete keeps what was read; the row is gone when read again.
        nanopix.delete_patient(second, &[]).unwrap();
        assert_eq!(nanopix.born_on(&ids, &dates).unwrap(), vec![first, second]);
        assert_eq!(nanopix.patient(second).unwrap(), None);
        other_connection(&root)
            .execute("UPDATE Patient SET birthdate = '1970-01-01' WHERE id = ?1", [first.to_string()])
            .unwrap();
        assert_eq!(nanopix.born_on(&ids, &dates).unwrap(), Vec::new());
        let dates = HashSet::from([
            NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(2025, 1, 21).unwrap(),
        ]);
        assert_eq!(nanopix.born_on(&ids, &dates).unwrap(), vec![first, id(FIXTURE_ID)]);
    }

    #[test]
    fn patients_after_returns_only_later_rows() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        nanopix.insert_patient(&new_patient("20250301_093001"), None, || false).unwrap();
        let pks = |rows: PatientRows| rows.patients.iter().map(|p| p.pk).collect::<Vec<_>>();
        assert_eq!(pks(nanopix.patients_after(Some(0), 10).unwrap()), vec![1, 2, 3]);
        assert_eq!(pks(nanopix.patients_after(Some(1), 10).unwrap()), vec![2, 3]);
        assert_eq!(pks(nanopix.patients_after(Some(0), 2).unwrap()), vec![1, 2]);
        assert_eq!(pks(nanopix.patients_after(Some(3), 10).unwrap()), Vec::<i64>::new());
    }

    #[test]
    fn insert_writes_exactly_nanopix_formats() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        let mut bare = new_patient("20250301_093001");
        (bare.birth_date, bare.phone) = (None, None);
        nanopix.insert_patient(&bare, None, || false).unwrap();
        let conn = other_connection(&root);
        let mut statement = conn
            .prepare(
                "SELECT pk, id, last_name, first_name, sex, birthdate, phone, created_datetime, updated_datetime,
                        doctor, typeof(id) FROM Patient WHERE pk > 1 ORDER BY pk",
            )
            .unwrap();
        let rows: Vec<Vec<rusqlite::types::Value>> = statement
            .query_map([], |row| (0..11).map(|i| row.get(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        use rusqlite::types::Value::{Integer, Null, Text};
        let text = |s: &str| Text(s.to_owned());
        let created = text("2025-03-01 09:30:07");
        let common = [text("Benali"), text("Amina"), text("")];
        let mut first = vec![Integer(2), text("20250301_093000")];
        first.extend(common.clone());
        first.extend([
            text("1985-03-12"),
            text("0555 12 34 56"),
            created.clone(),
            created.clone(),
            text(""),
            text("text"),
        ]);
        let mut second = vec![Integer(3), text("20250301_093001")];
        second.extend(common);
        second.extend([Null, text(""), created.clone(), created, text(""), text("text")]);
        assert_eq!(rows, vec![first, second]);
    }

    #[test]
    fn repeated_insert_is_a_no_op() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        let mut renamed = new_patient("20250301_093000");
        renamed.last_name = "Other".into();
        nanopix.insert_patient(&renamed, None, || false).unwrap();
        assert_eq!(row_count(&root), 2);
        assert_eq!(nanopix.patient(id("20250301_093000")).unwrap().unwrap().last_name, "Benali");
    }

    #[test]
    fn insert_names_only_existing_columns() {
        let (_temp, root) = root_with_schema(
            "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250) NOT NULL UNIQUE,
                                   last_name VARCHAR(250) NOT NULL, first_name VARCHAR(250), created_datetime DATETIME);",
        );
        let nanopix = open(&root);
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        let patient = nanopix.patient(id("20250301_093000")).unwrap().unwrap();
        assert_eq!((patient.pk, patient.last_name.as_str(), patient.first_name.as_str()), (1, "Benali", "Amina"));
        assert_eq!((patient.birth_date, patient.phone, patient.sex), (None, None, None));
        assert_eq!(patient.created, Some(at("2025-03-01 09:30:07")));
    }

    #[test]
    fn a_written_row_is_recognised_by_its_stored_text_alone() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let mut old = new_patient("20250301_093000");
        old.birth_date = NaiveDate::from_ymd_opt(1800, 3, 12);
        nanopix.insert_patient(&old, None, || false).unwrap();
        assert_eq!(nanopix.patient(old.id).unwrap().unwrap().birth_date, None, "read back as unknown");
        assert!(nanopix.holds_written_row(old.id, &old.written()).unwrap());
        other_connection(&root).execute_batch("UPDATE Patient SET updated_datetime = '2025-03-02 08:00:00'").unwrap();
        assert!(nanopix.holds_written_row(old.id, &old.written()).unwrap(), "NanoPix edited it: still ours");
        let mut other = old.clone();
        other.first_name = "Samira".into();
        assert!(nanopix.holds_written_row(old.id, &other.written()).unwrap(), "one field corrected: still ours");
        let unborn = NewNanoPixPatient { birth_date: None, ..new_patient("20250301_093002") };
        nanopix.insert_patient(&unborn, None, || false).unwrap();
        let mut swapped = unborn.clone();
        (swapped.first_name, swapped.last_name) = (unborn.last_name.clone(), unborn.first_name.clone());
        let corrected = "names swapped by a NanoPix user, no birth date written: still ours";
        assert!(nanopix.holds_written_row(unborn.id, &swapped.written()).unwrap(), "{corrected}");
        (other.last_name, other.birth_date) = ("Haddad".into(), None);
        assert!(!nanopix.holds_written_row(old.id, &other.written()).unwrap(), "every field differs");
        other = old.clone();
        other.created = at("2025-03-01 09:30:08");
        assert!(!nanopix.holds_written_row(old.id, &other.written()).unwrap());
        assert!(!nanopix.holds_written_row(id("20250301_093001"), &old.written()).unwrap());
    }

    #[test]
    fn a_written_row_is_compared_only_on_existing_columns() {
        let (_temp, root) = root_with_schema(
            "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250) NOT NULL UNIQUE,
                                   last_name VARCHAR(250) NOT NULL, created_datetime DATETIME);",
        );
        let nanopix = open(&root);
        let written = new_patient("20250301_093000");
        nanopix.insert_patient(&written, None, || false).unwrap();
        assert!(nanopix.holds_written_row(written.id, &written.written()).unwrap());
        let mut other = written.clone();
        other.last_name = "Other".into();
        assert!(!nanopix.holds_written_row(written.id, &other.written()).unwrap());
    }

    fn file_settings(root: &Path) -> (String, i64, i64, Vec<String>) {
        let conn = other_connection(root);
        let pragma = |name: &str| conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0)).unwrap();
        let journal: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
        let mut statement = conn.prepare("SELECT ifnull(sql, name) FROM sqlite_master ORDER BY name").unwrap();
        let schema = statement.query_map([], |row| row.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        (journal, pragma("user_version"), pragma("page_size"), schema)
    }

    #[test]
    fn writes_keep_nanopix_file_settings_and_never_touch_user_db() {
        let (_temp, root) = fixture_copy();
        let schema_before = file_settings(&root).3;
        let nanopix = open(&root);
        let new_id = id("20250301_093000");
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        nanopix.create_folder(new_id, &[]).unwrap();
        nanopix.delete_patient(new_id, &[]).unwrap();
        nanopix.insert_patient(&new_patient("20250301_093001"), None, || false).unwrap();
        drop(nanopix);
        let (journal, user_version, page_size, schema) = file_settings(&root);
        assert_eq!((journal.as_str(), user_version, page_size), ("delete", 1, 4096));
        assert_eq!(schema, schema_before);
        assert!(!root.join(DATABASE_FOLDER).join("NanoPix.db3-journal").exists());
        let user_db = fs::read(root.join(DATABASE_FOLDER).join("User.db3")).unwrap();
        assert_eq!(user_db, fs::read(Path::new(FIXTURE).join("database/User.db3")).unwrap());
    }

    #[test]
    fn create_folder_is_idempotent_and_keeps_contents() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let new_id = id("20250301_093000");
        assert!(!folders::is_real_dir(&nanopix.folder_path(new_id)));
        let subfolders = vec!["images".to_owned()];
        let folder = nanopix.create_folder(new_id, &subfolders).unwrap();
        assert_eq!(folder, root.join("20250301_093000"));
        fs::write(folder.join("images/scan.jpg"), b"jpeg").unwrap();
        assert_eq!(nanopix.create_folder(new_id, &subfolders).unwrap(), folder);
        assert!(folders::is_real_dir(&nanopix.folder_path(new_id)));
        assert_eq!(fs::read(folder.join("images/scan.jpg")).unwrap(), b"jpeg");
    }

    #[test]
    fn create_folder_refuses_bad_subfolder_names_before_creating_anything() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let new_id = id("20250301_093000");
        for bad in ["..", "../escape", "", "a/b", "/tmp"] {
            let result = nanopix.create_folder(new_id, &["ok".to_owned(), bad.to_owned()]);
            assert!(matches!(result, Err(Error::InvalidConfig(_))), "{bad:?}: {result:?}");
        }
        assert!(!nanopix.folder_path(new_id).exists());
        assert!(!root.join("escape").exists());
    }

    #[test]
    fn create_folder_refuses_a_file_in_its_place() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        fs::write(root.join("20250301_093000"), b"not a folder").unwrap();
        let result = nanopix.create_folder(id("20250301_093000"), &[]);
        assert!(matches!(&result, Err(Error::UnsafePath(p)) if *p == root.join("20250301_093000")));
        let message = result.unwrap_err().to_string();
        assert!(message.contains("a file stands where a folder belongs"), "{message}");
        assert_eq!(fs::read(root.join("20250301_093000")).unwrap(), b"not a folder");
    }

    #[cfg(unix)]
    #[test]
    fn create_folder_refuses_a_symlink_in_its_place() {
        let (temp, root) = fixture_copy();
        let outside = temp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("20250301_093000")).unwrap();
        std::os::unix::fs::symlink(temp.path().join("nowhere"), root.join("20250301_093001")).unwrap();
        let nanopix = open(&root);
        for (text, target) in [("20250301_093000", &outside), ("20250301_093001", &temp.path().join("nowhere"))] {
            let result = nanopix.create_folder(id(text), &["images".to_owned()]);
            assert!(matches!(result, Err(Error::UnsafePath(_))), "{text}: {result:?}");
            assert!(!folders::is_real_dir(&nanopix.folder_path(id(text))));
            assert!(!target.join("images").exists());
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!temp.path().join("nowhere").exists());
    }

    #[test]
    fn folder_listing_sorts_out_patient_folders_and_odd_names() {
        let (_temp, root) = fixture_copy();
        for folder in ["20250301_093000", "20251340_000000", "notes"] {
            fs::create_dir(root.join(folder)).unwrap();
        }
        fs::write(root.join("20250302_093000"), b"a file named like an id").unwrap();
        fs::write(root.join("readme.txt"), b"").unwrap();
        let scan = FolderListing::start(&root).finish().unwrap();
        let expected: foldhash::HashSet<NanoPixId> = [id(FIXTURE_ID), id("20250301_093000")].into_iter().collect();
        assert_eq!(scan.patient_folders, expected);
        let mut odd = scan.odd_names.clone();
        odd.sort();
        assert_eq!(odd, ["20250302_093000", "20251340_000000", "notes", "readme.txt"].map(OsString::from));
    }

    #[cfg(unix)]
    #[test]
    fn folder_listing_reports_symlinks_and_non_utf8_names_as_odd() {
        use std::os::unix::ffi::OsStrExt;
        let (temp, root) = fixture_copy();
        let non_utf8 = std::ffi::OsStr::from_bytes(b"pat\xffient");
        fs::create_dir(root.join(non_utf8)).unwrap();
        fs::create_dir(temp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(temp.path().join("outside"), root.join("20250303_093000")).unwrap();
        let scan = FolderListing::start(&root).finish().unwrap();
        assert_eq!(scan.patient_folders, [id(FIXTURE_ID)].into_iter().collect());
        let mut odd = scan.odd_names.clone();
        odd.sort();
        assert_eq!(odd, vec![OsString::from("20250303_093000"), non_utf8.to_owned()]);
    }

    #[test]
    fn delete_refuses_the_fixture_patient_with_its_study_and_thumbnail() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let fixture_id = id(FIXTURE_ID);
        let contents = PatientContents { studies: 1, reports: 0, other_records: 0, files: 1 };
        assert_eq!(nanopix.contents(fixture_id, &[]).unwrap(), contents);
        let result = nanopix.delete_patient(fixture_id, &[]);
        assert!(matches!(
            result,
            Err(Error::NanoPixPatientNotEmpty { ref external_id, studies: 1, reports: 0, other_records: 0, files: 1 })
                if external_id == FIXTURE_ID
        ));
        assert!(nanopix.id_exists(fixture_id).unwrap());
        assert!(root.join(FIXTURE_ID).join("20250121_153202_thumbnail.jpg").is_file());
        let studies: i64 = other_connection(&root).query_row("SELECT count(*) FROM Study", [], |r| r.get(0)).unwrap();
        assert_eq!(studies, 1);
    }

    #[test]
    fn delete_removes_an_empty_exported_patient_and_its_folder() {
        let (_temp, root, nanopix, new_id) = fixture_with_new_patient();
        let folder = nanopix.create_folder(new_id, &[]).unwrap();
        assert_eq!(nanopix.contents(new_id, &[]).unwrap(), PatientContents::default());
        nanopix.delete_patient(new_id, &[]).unwrap();
        assert!(!nanopix.id_exists(new_id).unwrap());
        assert!(!folder.exists());
        assert_eq!(row_count(&root), 1);
        assert!(
            matches!(nanopix.delete_patient(new_id, &[]), Err(Error::NanoPixPatientNotFound(t)) if t == "20250301_093000")
        );
    }

    #[test]
    fn an_insert_writes_nothing_once_another_program_changed_nanopix_since_the_version_given() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let read = nanopix.data_version().unwrap();
        other_connection(&root).execute("UPDATE Patient SET updated_datetime = '2026-01-01 09:00:00'", []).unwrap();
        let patient = new_patient("20250301_093000");
        assert_eq!(nanopix.insert_patient(&patient, Some(read), || false).unwrap(), Insertion::NanoPixChanged);
        assert!(!nanopix.id_exists(patient.id).unwrap());
        let now = nanopix.data_version().unwrap();
        assert_eq!(nanopix.insert_patient(&patient, Some(now), || false).unwrap(), Insertion::Inserted);
        assert_eq!(nanopix.insert_patient(&patient, Some(now), || false).unwrap(), Insertion::IdTaken);
    }

    #[test]
    fn a_delete_that_never_gets_the_write_lock_is_busy_and_deletes_nothing() {
        let (_temp, root) = fixture_copy();
        let nanopix = NanoPix::open(&root, Duration::from_millis(100)).unwrap();
        let new_id = id("20250301_093000");
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        let folder = nanopix.create_folder(new_id, &[]).unwrap();
        let saving = other_connection(&root);
        saving.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(matches!(nanopix.delete_patient(new_id, &[]), Err(Error::Busy { .. })));
        saving.execute_batch("ROLLBACK").unwrap();
        assert!(nanopix.id_exists(new_id).unwrap() && folder.exists());
    }

    #[test]
    fn delete_removes_the_empty_subfolders_an_export_made_and_keeps_one_that_holds_a_file() {
        let (_temp, root) = fixture_copy();
        let nanopix = open(&root);
        let subfolders = ["images".to_owned(), "reports".to_owned()];
        let (kept, removed) = (id("20250301_093000"), id("20250301_093001"));
        for patient in [kept, removed] {
            nanopix.insert_patient(&new_patient(&patient.to_string()), None, || false).unwrap();
            nanopix.create_folder(patient, &subfolders).unwrap();
        }
        fs::write(nanopix.folder_path(kept).join("images/20250301_094000.iosb"), b"image").unwrap();
        let refused = nanopix.delete_patient(kept, &subfolders);
        assert!(matches!(refused, Err(Error::NanoPixPatientNotEmpty { files: 1, .. })), "{refused:?}");
        assert!(nanopix.folder_path(kept).join("images/20250301_094000.iosb").is_file());
        assert_eq!(nanopix.contents(removed, &subfolders).unwrap(), PatientContents::default());
        nanopix.delete_patient(removed, &subfolders).unwrap();
        assert!(!nanopix.folder_path(removed).exists());
    }

    #[test]
    fn delete_refuses_a_patient_with_a_file_or_a_report() {
        let (_temp, root, nanopix, new_id) = fixture_with_new_patient();
        let folder = nanopix.create_folder(new_id, &[]).unwrap();
        fs::write(folder.join("20250301_094000_thumbnail.jpg"), b"jpeg").unwrap();
        assert!(matches!(nanopix.delete_patient(new_id, &[]), Err(Error::NanoPixPatientNotEmpty { files: 1, .. })));
        fs::remove_file(folder.join("20250301_094000_thumbnail.jpg")).unwrap();
        other_connection(&root)
            .execute("INSERT INTO Report (patient_id, project_name) VALUES ('20250301_093000', 'x')", [])
            .unwrap();
        let result = nanopix.delete_patient(new_id, &[]);
        assert!(matches!(result, Err(Error::NanoPixPatientNotEmpty { studies: 0, reports: 1, files: 0, .. })));
        assert!(nanopix.id_exists(new_id).unwrap());
        assert!(folder.is_dir());
    }

    #[test]
    fn delete_refuses_a_patient_another_nanopix_table_names_and_keeps_its_rows() {
        let (_temp, root, nanopix, new_id) = fixture_with_new_patient();
        nanopix.create_folder(new_id, &[]).unwrap();
        other_connection(&root)
            .execute_batch(
                "CREATE TABLE Implant (pk INTEGER PRIMARY KEY, tooth VARCHAR(250),
                   patient_id VARCHAR REFERENCES Patient(id) ON UPDATE CASCADE ON DELETE CASCADE);
                 CREATE TABLE Appointment (pk INTEGER PRIMARY KEY, patient_pk REFERENCES Patient ON DELETE CASCADE);
                 INSERT INTO Implant (tooth, patient_id) VALUES ('36', '20250301_093000');
                 INSERT INTO Appointment (patient_pk) SELECT pk FROM Patient WHERE id = '20250301_093000';",
            )
            .unwrap();
        let result = nanopix.delete_patient(new_id, &[]);
        assert!(matches!(result, Err(Error::NanoPixPatientNotEmpty { other_records: 2, .. })), "{result:?}");
        assert!(nanopix.id_exists(new_id).unwrap());
        let kept = "SELECT (SELECT count(*) FROM Implant) + (SELECT count(*) FROM Appointment)";
        assert_eq!(other_connection(&root).query_row(kept, [], |row| row.get::<_, i64>(0)).unwrap(), 2);
    }

    /// The count the delete makes under the write lock, on its own (NanoPix may save a record
    /// after the check before the lock): any one study, report or other record keeps the row.
    #[test]
    fn the_delete_under_the_lock_keeps_a_patient_any_one_record_names() {
        let records = [
            ("INSERT INTO Study (patient_id, modality) VALUES ('20250301_093000', 'IO')", (1, 0, 0)),
            ("INSERT INTO Report (patient_id, project_name) VALUES ('20250301_093000', 'x')", (0, 1, 0)),
            (
                "CREATE TABLE Implant (pk INTEGER PRIMARY KEY, patient_id VARCHAR REFERENCES Patient(id));
                 INSERT INTO Implant (patient_id) VALUES ('20250301_093000')",
                (0, 0, 1),
            ),
        ];
        for (record, (studies, reports, other_records)) in records {
            let (_temp, root, nanopix, new_id) = fixture_with_new_patient();
            other_connection(&root).execute_batch(record).unwrap();
            let deletion = database::delete_patient(&nanopix.conn, &nanopix.patient_columns, new_id).unwrap();
            assert_eq!(deletion, database::Deletion::Holds { studies, reports, other_records }, "{record}");
            assert!(nanopix.id_exists(new_id).unwrap(), "{record}");
        }
    }

    /// A deleted patient put back (NanoPix saved a file for her during the delete) holds every
    /// value she had.
    #[test]
    fn a_deleted_patient_put_back_holds_every_value_she_had() {
        use rusqlite::OptionalExtension;

        let (_temp, root, nanopix, new_id) = fixture_with_new_patient();
        let row = |conn: &Connection| {
            let sql = "SELECT id, last_name, first_name, sex, birthdate, phone, created_datetime, updated_datetime
                       FROM Patient WHERE id = '20250301_093000'";
            let values = |r: &rusqlite::Row<'_>| (0..8).map(|i| r.get::<_, Option<String>>(i)).collect();
            conn.query_row(sql, [], values).optional().unwrap()
        };
        let before: Option<Vec<Option<String>>> = row(&other_connection(&root));
        assert!(before.is_some());
        let database::Deletion::Deleted(rows) =
            database::delete_patient(&nanopix.conn, &nanopix.patient_columns, new_id).unwrap()
        else {
            panic!("the empty patient is deleted");
        };
        assert_eq!(row(&other_connection(&root)), None);
        database::put_back(&nanopix.conn, &rows).unwrap();
        assert_eq!(row(&other_connection(&root)), before);
    }

    #[test]
    fn a_write_while_nanopix_holds_the_lock_is_busy_until_released() {
        let (_temp, root) = fixture_copy();
        let nanopix = NanoPix::open(&root, Duration::from_millis(20)).unwrap();
        let holder = other_connection(&root);
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let result = nanopix.insert_patient(&new_patient("20250301_093000"), None, || false);
        let db_path = root.join(DATABASE_FOLDER).join(DATABASE_FILE);
        assert!(
            matches!(result, Err(Error::Busy { ref path, step: "inserting a patient" }) if *path == db_path),
            "{result:?}"
        );
        assert_eq!(nanopix.patients_after(None, u32::MAX).unwrap().patients.len(), 1);
        holder.execute_batch("COMMIT").unwrap();
        nanopix.insert_patient(&new_patient("20250301_093000"), None, || false).unwrap();
        assert!(nanopix.id_exists(id("20250301_093000")).unwrap());
    }
}
