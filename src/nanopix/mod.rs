//! The NanoPix side: `PatientData/database/NanoPix.db3` and one folder per patient.
//!
//! This module never changes NanoPix's journal mode, `user_version`, page size or schema, never
//! opens `User.db3`, writes only in short `BEGIN IMMEDIATE` transactions (no file I/O while
//! holding the lock), inserts only into columns that exist, and never builds a path from
//! anything but a validated [`NanoPixId`]. All SQL and file I/O about NanoPix lives here.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::patient::{NanoPixPatient, NewNanoPixPatient};
use crate::{Error, NanoPixId, Result};
use database::{Deletion, Selection};

mod database;
mod folders;

/// The folder under `PatientData` that holds NanoPix's databases: never a patient folder.
const DATABASE_FOLDER: &str = "database";
/// NanoPix's patient database inside [`DATABASE_FOLDER`] (its neighbour `User.db3` is never opened).
const DATABASE_FILE: &str = "NanoPix.db3";

/// A `Patient` row that could not be read as a patient (for example an invalid id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OddRow {
    pub pk: i64,
    pub raw_id: String,
    pub problem: String,
}

/// The patients read from `NanoPix.db3`, and the rows that could not be read.
#[derive(Debug, Default)]
pub(crate) struct PatientRows {
    pub patients: Vec<NanoPixPatient>,
    pub odd_rows: Vec<OddRow>,
}

/// The patient folders found under `PatientData`.
#[derive(Debug, Default)]
pub(crate) struct FolderScan {
    pub patient_folders: HashSet<NanoPixId>,
    pub odd_names: Vec<OsString>,
}

/// What NanoPix holds for one patient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PatientContents {
    pub studies: u64,
    pub reports: u64,
    pub files: u64,
}

/// An open NanoPix data folder.
#[derive(Debug)]
pub(crate) struct NanoPix {
    root: PathBuf,
    db_path: PathBuf,
    conn: Connection,
    patient_columns: HashSet<String>,
}

impl NanoPix {
    /// Opens `root` (`PatientData`), checks `database/NanoPix.db3` and its `Patient` table
    /// (`id` and `last_name` must exist), without writing anything.
    pub fn open(root: &Path, busy_timeout: Duration) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::NanoPixRootMissing(root.to_path_buf()));
        }
        let db_path = root.join(DATABASE_FOLDER).join(DATABASE_FILE);
        if !db_path.is_file() {
            return Err(Error::NanoPixDatabaseMissing(db_path));
        }
        let conn = database::connect(&db_path, busy_timeout)?;
        let patient_columns = database::patient_columns(&conn, &db_path)?;
        Ok(Self { root: root.to_path_buf(), db_path, conn, patient_columns })
    }

    /// The `PatientData` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every patient row, in `pk` order.
    pub fn read_patients(&self) -> Result<PatientRows> {
        self.select(Selection::All)
    }

    /// Patient rows with `pk` greater than `pk`, in `pk` order.
    pub fn patients_after(&self, pk: i64) -> Result<PatientRows> {
        self.select(Selection::AfterPk(pk))
    }

    /// The row with this id, if it exists and is readable.
    pub fn patient(&self, id: NanoPixId) -> Result<Option<NanoPixPatient>> {
        Ok(self.select(Selection::WithId(id))?.patients.into_iter().next())
    }

    /// Whether a row with this id exists.
    pub fn id_exists(&self, id: NanoPixId) -> Result<bool> {
        database::id_exists(&self.conn, id).map_err(self.sql_error("look up patient id"))
    }

    /// Inserts a patient row, unless a row with its id already exists (so repair can repeat it).
    pub fn insert_patient(&self, patient: &NewNanoPixPatient) -> Result<()> {
        database::write(&self.conn, &self.db_path, "insert patient", |conn| {
            database::insert_patient(conn, &self.patient_columns, patient)
        })
    }

    /// The folder of a patient: `PatientData/<id>`.
    pub fn folder_path(&self, id: NanoPixId) -> PathBuf {
        folders::patient_folder(&self.root, id)
    }

    /// Whether the patient's folder exists as a real folder (not a symlink).
    pub fn folder_exists(&self, id: NanoPixId) -> bool {
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

    /// Lists the patient folders (names that are valid ids) and the other names found.
    pub fn scan_folders(&self) -> Result<FolderScan> {
        folders::scan(&self.root)
    }

    /// Counts the studies, reports and files NanoPix holds for a patient.
    pub fn contents(&self, id: NanoPixId) -> Result<PatientContents> {
        let studies = database::count_for_patient(&self.conn, "Study", id).map_err(self.sql_error("count studies"))?;
        let reports = database::count_for_patient(&self.conn, "Report", id).map_err(self.sql_error("count reports"))?;
        let files = folders::count_entries(&self.folder_path(id))?;
        Ok(PatientContents { studies, reports, files })
    }

    /// Deletes the patient's row and its empty folder; refuses if it holds anything.
    ///
    /// # Failure
    /// [`Error::NanoPixPatientNotFound`] without a row, [`Error::NanoPixPatientNotEmpty`] while
    /// any study, report or file is left.
    pub fn delete_patient(&self, id: NanoPixId) -> Result<()> {
        if !self.id_exists(id)? {
            return Err(Error::NanoPixPatientNotFound(id.to_string()));
        }
        let contents = self.contents(id)?;
        if contents != PatientContents::default() {
            return Err(not_empty(id, contents));
        }
        match database::write(&self.conn, &self.db_path, "delete patient", |conn| database::delete_patient(conn, id))? {
            Deletion::Deleted => folders::remove_empty_folder(&self.folder_path(id)),
            Deletion::Missing => Err(Error::NanoPixPatientNotFound(id.to_string())),
            Deletion::Holds { studies, reports } => Err(not_empty(id, PatientContents { studies, reports, files: 0 })),
        }
    }

    /// `PRAGMA data_version` of the kept connection: changes when NanoPix commits.
    pub fn data_version(&self) -> Result<i64> {
        database::data_version(&self.conn).map_err(self.sql_error("read data_version"))
    }

    fn select(&self, selection: Selection) -> Result<PatientRows> {
        database::read_patients(&self.conn, &self.patient_columns, selection).map_err(self.sql_error("read patients"))
    }

    fn sql_error(&self, step: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        database::sql_error(&self.db_path, step)
    }
}

/// The refusal to delete a patient NanoPix still holds something for.
fn not_empty(id: NanoPixId, contents: PatientContents) -> Error {
    let PatientContents { studies, reports, files } = contents;
    Error::NanoPixPatientNotEmpty { external_id: id.to_string(), studies, reports, files }
}
