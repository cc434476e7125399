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
use crate::{NanoPixId, Result};

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
    busy_timeout: Duration,
}

#[allow(unused_variables, dead_code)]
impl NanoPix {
    /// Opens `root` (`PatientData`), checks `database/NanoPix.db3` and its `Patient` table
    /// (`id` and `last_name` must exist), without writing anything.
    pub fn open(root: &Path, busy_timeout: Duration) -> Result<Self> {
        todo!()
    }

    /// The `PatientData` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every patient row, in `pk` order.
    pub fn read_patients(&self) -> Result<PatientRows> {
        todo!()
    }

    /// Patient rows with `pk` greater than `pk`, in `pk` order.
    pub fn patients_after(&self, pk: i64) -> Result<PatientRows> {
        todo!()
    }

    /// The row with this id, if it exists and is readable.
    pub fn patient(&self, id: NanoPixId) -> Result<Option<NanoPixPatient>> {
        todo!()
    }

    /// Whether a row with this id exists.
    pub fn id_exists(&self, id: NanoPixId) -> Result<bool> {
        todo!()
    }

    /// Inserts a patient row, unless a row with its id already exists (so repair can repeat it).
    pub fn insert_patient(&self, patient: &NewNanoPixPatient) -> Result<()> {
        todo!()
    }

    /// The folder of a patient: `PatientData/<id>`.
    pub fn folder_path(&self, id: NanoPixId) -> PathBuf {
        todo!()
    }

    /// Whether the patient's folder exists as a real folder (not a symlink).
    pub fn folder_exists(&self, id: NanoPixId) -> bool {
        todo!()
    }

    /// Creates the patient's folder (and the configured subfolders) if missing; returns its path.
    pub fn create_folder(&self, id: NanoPixId, subfolders: &[String]) -> Result<PathBuf> {
        todo!()
    }

    /// Lists the patient folders (names that are valid ids) and the other names found.
    pub fn scan_folders(&self) -> Result<FolderScan> {
        todo!()
    }

    /// Counts the studies, reports and files NanoPix holds for a patient.
    pub fn contents(&self, id: NanoPixId) -> Result<PatientContents> {
        todo!()
    }

    /// Deletes the patient's row and its empty folder; refuses if it holds anything.
    pub fn delete_patient(&self, id: NanoPixId) -> Result<()> {
        todo!()
    }

    /// `PRAGMA data_version` of the kept connection: changes when NanoPix commits.
    pub fn data_version(&self) -> Result<i64> {
        todo!()
    }
}
