//! The crate's one error type.
//!
//! Every variant names what a caller can act on and keeps its context: the file, the
//! patient id or the SQL step. Errors are never flattened into bare strings.

use std::path::PathBuf;

/// Everything that can go wrong in nanopix-sync.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The NanoPix `PatientData` folder does not exist or is not a folder.
    #[error("NanoPix data folder not found: {0}")]
    NanoPixRootMissing(PathBuf),

    /// `PatientData/database/NanoPix.db3` does not exist.
    #[error("NanoPix database not found: {0}")]
    NanoPixDatabaseMissing(PathBuf),

    /// The DentalTID database file does not exist.
    #[error("DentalTID database not found: {0}")]
    DentalTidDatabaseMissing(PathBuf),

    /// A table the sync needs is missing from a database.
    #[error("table `{table}` is missing from {path}")]
    MissingTable {
        /// The database file.
        path: PathBuf,
        /// The table that was expected.
        table: &'static str,
    },

    /// A table the sync needs is a view in the database: the sync can neither migrate it nor
    /// write to it as to the program's own table.
    #[error("`{table}` in {path} is a view, not a table: the program's own `{table}` table must be there")]
    TableIsAView {
        /// The database file.
        path: PathBuf,
        /// The table that was expected.
        table: &'static str,
    },

    /// A column the sync needs is missing from a table.
    #[error("column `{column}` is missing from table `{table}` in {path}")]
    MissingColumn {
        /// The database file.
        path: PathBuf,
        /// The table that was inspected.
        table: &'static str,
        /// The column that was expected.
        column: &'static str,
    },

    /// A column the sync needs is there, but not as the program's own schema makes it.
    #[error("column `{column}` of table `{table}` in {path} must be {expected}")]
    UnexpectedColumn {
        /// The database file.
        path: PathBuf,
        /// The table that was inspected.
        table: &'static str,
        /// The column.
        column: &'static str,
        /// What it must be.
        expected: &'static str,
    },

    /// The file given as DentalTID's database is NanoPix's: it holds NanoPix's `Patient` table
    /// and no `patients`. Its code is `schema`, as for any missing table.
    #[error(
        "{0} is NanoPix's database, not DentalTID's: it holds NanoPix's `Patient` table and no `patients`; give \
         DentalTID's own database file, dentaltid.db"
    )]
    NanoPixDatabaseAsDentalTid(PathBuf),

    /// NanoPix's `database/NanoPix.db3` is a DentalTID database: it holds DentalTID's
    /// `patients` table and no `Patient`. Its code is `schema`, as for any missing table.
    #[error(
        "{0} is a DentalTID database, not NanoPix's: it holds DentalTID's `patients` table and no `Patient`; give \
         the PatientData folder whose database/NanoPix.db3 is NanoPix's own, or put NanoPix's own file back there"
    )]
    DentalTidDatabaseAsNanoPix(PathBuf),

    /// A string is not a valid NanoPix patient id (`YYYYMMDD_HHMMSS`, a real date and time).
    #[error("invalid NanoPix patient id {0:?}")]
    InvalidNanoPixId(String),

    /// No DentalTID patient has this id.
    #[error("no DentalTID patient with id {0}")]
    PatientNotFound(i64),

    /// No NanoPix patient has this id.
    #[error("no NanoPix patient with id {0}")]
    NanoPixPatientNotFound(String),

    /// Several NanoPix rows hold this id (a `NanoPix.db3` whose ids are not unique): deleting the
    /// patient would delete them all, so nothing is deleted.
    #[error(
        "{rows} NanoPix patient rows hold id {external_id}: not deleted; the clinic must set them apart in NanoPix"
    )]
    NanoPixIdShared {
        /// The NanoPix id.
        external_id: String,
        /// How many rows hold it.
        rows: usize,
    },

    /// The DentalTID patient is already linked to a NanoPix patient.
    #[error("DentalTID patient {patient_id} is already linked to NanoPix patient {external_id}")]
    AlreadyLinked {
        /// The DentalTID patient.
        patient_id: i64,
        /// The NanoPix id it is linked to.
        external_id: String,
    },

    /// NanoPix still holds images, studies, other records or files for this patient, so it is not deleted.
    #[error(
        "NanoPix patient {external_id} still has {studies} studies, {reports} reports, {other_records} other \
         records and {files} files: not deleted"
    )]
    NanoPixPatientNotEmpty {
        /// The NanoPix id.
        external_id: String,
        /// Rows in `Study` for this patient.
        studies: u64,
        /// Rows in `Report` for this patient.
        reports: u64,
        /// Rows of NanoPix's other tables whose foreign keys name this patient.
        other_records: u64,
        /// Entries in the patient's folder.
        files: u64,
    },

    /// `delete_in_nanopix` was asked for a NanoPix patient whose deletion no sent
    /// `delete_requested` stands for: its DentalTID patient still exists or was added again, the
    /// sync never linked it, a newer request for it waits to be sent, or NanoPix saved another
    /// person under the id since.
    #[error(
        "NanoPix patient {0} not deleted: no delete_requested sent for it stands (its DentalTID patient still exists \
         or was added again, it was never linked, a newer request for it waits to be sent, or NanoPix saved another \
         person under its id)"
    )]
    DeleteNotRequested(String),

    /// A path built from data would leave the `PatientData` root or pass through a symlink, a
    /// file stands where a patient folder belongs, or `NanoPix.db3` resolves (through a symlink)
    /// to a place outside the root.
    #[error(
        "refusing path {0}: it leaves the NanoPix data folder, passes through a symlink, or a file stands where a \
         folder belongs"
    )]
    UnsafePath(PathBuf),

    /// No free NanoPix id was found for a new patient.
    #[error("no free NanoPix id near {0}")]
    NoFreeId(String),

    /// A database stayed locked by another program for longer than the retries allow.
    #[error("{path} stayed locked during {step}")]
    Busy {
        /// The database file.
        path: PathBuf,
        /// What the sync was doing.
        step: &'static str,
    },

    /// NanoPix's database kept changing while an export waited for it to be still before it
    /// wrote (another program saving all the time), for longer than the tries allow; nothing held
    /// it locked. Its code is `busy`, as for a lock: calling again goes on with the work left.
    #[error("{path} kept changing while {step}")]
    KeptChanging {
        /// The database file.
        path: PathBuf,
        /// What the sync was doing.
        step: &'static str,
    },

    /// An SQLite call failed.
    #[error("{step} failed on {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What the sync was doing.
        step: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// A file or folder operation failed.
    #[error("{step} failed on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the sync was doing.
        step: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file watcher could not be set up.
    #[error("file watcher failed on {path}: {source}")]
    Watcher {
        /// The watched path.
        path: PathBuf,
        /// The watcher's error.
        #[source]
        source: notify::Error,
    },

    /// Another sync handle, in this process or another one, already syncs this DentalTID
    /// database: two at once could import the same NanoPix patient twice.
    #[error("another nanopix-sync already syncs {0}: close it first")]
    InUse(PathBuf),

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A bug stopped this call; the sync itself goes on.
    #[error("internal error: {0}")]
    Internal(String),

    /// The handle is closed (or its engine thread stopped).
    #[error("the sync handle is closed")]
    Closed,
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable code for this kind of error, used in `sync_error` events and by the C API.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NanoPixRootMissing(_) | Error::NanoPixDatabaseMissing(_) | Error::DentalTidDatabaseMissing(_) => {
                "not_found"
            }
            Error::MissingTable { .. }
            | Error::TableIsAView { .. }
            | Error::MissingColumn { .. }
            | Error::UnexpectedColumn { .. }
            | Error::NanoPixDatabaseAsDentalTid(_)
            | Error::DentalTidDatabaseAsNanoPix(_) => "schema",
            Error::InvalidNanoPixId(_) => "invalid_id",
            Error::PatientNotFound(_) | Error::NanoPixPatientNotFound(_) => "no_such_patient",
            Error::AlreadyLinked { .. } => "already_linked",
            Error::NanoPixPatientNotEmpty { .. } => "not_empty",
            Error::DeleteNotRequested(_) => "delete_not_requested",
            Error::NanoPixIdShared { .. } => "id_shared",
            Error::UnsafePath(_) => "unsafe_path",
            Error::NoFreeId(_) => "no_free_id",
            Error::Busy { .. } | Error::KeptChanging { .. } => "busy",
            Error::Database { source, .. } if is_full(source) => "disk_full",
            Error::Io { source, .. } if is_out_of_room(source) => "disk_full",
            Error::Database { .. } => "database",
            Error::Io { .. } => "io",
            Error::Watcher { .. } => "watcher",
            Error::InvalidConfig(_) => "invalid_config",
            Error::InUse(_) => "in_use",
            Error::Internal(_) => "internal",
            Error::Closed => "closed",
        }
    }

    /// The file or folder this error is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::NanoPixRootMissing(path)
            | Error::NanoPixDatabaseMissing(path)
            | Error::DentalTidDatabaseMissing(path)
            | Error::NanoPixDatabaseAsDentalTid(path)
            | Error::DentalTidDatabaseAsNanoPix(path)
            | Error::UnsafePath(path)
            | Error::InUse(path)
            | Error::MissingTable { path, .. }
            | Error::TableIsAView { path, .. }
            | Error::MissingColumn { path, .. }
            | Error::UnexpectedColumn { path, .. }
            | Error::Busy { path, .. }
            | Error::KeptChanging { path, .. }
            | Error::Database { path, .. }
            | Error::Io { path, .. }
            | Error::Watcher { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Wraps an SQLite error with the file and the step that failed; a database that stayed
    /// locked becomes [`Error::Busy`].
    pub(crate) fn db(path: &std::path::Path, step: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
        let path = path.to_path_buf();
        move |source| if is_busy(&source) { Error::Busy { path, step } } else { Error::Database { path, step, source } }
    }

    /// Wraps an I/O error with the path and the step that failed.
    pub(crate) fn io(path: &std::path::Path, step: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { path, step, source }
    }
}

/// For a `path` not found where it was looked for: [`Error::Io`] when the system refused to say
/// whether it exists (access denied to a folder on the way, a share that refuses this user), so
/// a file the sync may not reach is not reported missing; `Ok` when it is really missing.
pub(crate) fn refused_access(path: &std::path::Path, step: &'static str) -> Result<()> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::io(path, step)(error)),
        _ => Ok(()),
    }
}

/// Refuses the database file at `path` when it is empty (0 bytes), as a copy under way, one cut
/// short or a restore that failed leaves it, like any other file that is not a database ([`Error::Database`]):
/// SQLite would open it as a database without tables, and a missing table would send support
/// staff looking for another program's or another version's file instead of a backup.
pub(crate) fn refuse_empty(path: &std::path::Path, step: &'static str) -> Result<()> {
    if !std::fs::metadata(path).is_ok_and(|metadata| metadata.len() == 0) {
        return Ok(());
    }
    let empty = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB);
    let message =
        "the file is empty (0 bytes), as a copy under way or cut short leaves it: if it stays so, put back a backup"
            .to_owned();
    Err(Error::db(path, step)(rusqlite::Error::SqliteFailure(empty, Some(message))))
}

/// The text of a panic, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "a panic without a message"
    }
}

/// Whether SQLite found no room to write: the disk of the database file or of SQLite's temporary
/// folder is full (or, rarely, the file reached the largest size or row id SQLite allows).
fn is_full(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// Whether the system found no room for a write: a full disk, or a full quota of the user's.
fn is_out_of_room(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Whether SQLite gave up because another connection held a lock.
pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::path::Path;

    use rusqlite::Connection;

    use super::Error;

    /// A database that cannot grow, as on a full disk, and a write to a full device give
    /// `disk_full`, which a host can put in its user's language; other failures keep their kinds.
    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(x); PRAGMA max_page_count = 2;").unwrap();
        let full = conn.execute("INSERT INTO t VALUES (zeroblob(100000))", []).unwrap_err();
        assert_eq!(Error::db(Path::new("x.db"), "write")(full).code(), "disk_full");
        let refused = conn.execute("INSERT INTO missing VALUES (1)", []).unwrap_err();
        assert_eq!(Error::db(Path::new("x.db"), "write")(refused).code(), "database");
        let device = Path::new("/dev/full");
        assert_eq!(Error::io(device, "write")(std::fs::write(device, b"x").unwrap_err()).code(), "disk_full");
        let quota = std::io::Error::from_raw_os_error(122);
        assert_eq!(Error::io(Path::new("x"), "create folder")(quota).code(), "disk_full", "EDQUOT, a full quota");
        let missing = Path::new("/nonexistent/x");
        assert_eq!(Error::io(missing, "write")(std::fs::write(missing, b"x").unwrap_err()).code(), "io");
    }
}
