//! The DentalTID side: `dentaltid.db`, opened, checked and migrated; patients read and written
//! exactly as DentalTID itself writes them; the library's own state in `nanopix_sync_*` tables.
//!
//! This module never changes `PRAGMA user_version`, never creates DentalTID's own tables, and
//! never deletes a patient. All SQL about DentalTID lives here.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::events::DuplicateCandidate;
use crate::file_identity::FileIdentity;
use crate::matching::PossibleDuplicate;
use crate::patient::{Source, WrittenRow};
use crate::{Error, NanoPixId, Result};

mod awaited_folders;
mod candidates;
mod export_journal;
mod id_holders;
mod last_names;
mod link_batches;
mod linked_rows;
mod links;
mod migration;
mod patients;
mod possible_duplicates;
mod state;
#[cfg(test)]
pub(crate) mod testing;

pub use id_holders::IdHolders;
pub use last_names::LastNames;
pub use link_batches::ImportedUnder;
pub use linked_rows::{LinkedRows, is_another_person, other_people};
pub use patients::{Importing, LinkOutcome};
pub use possible_duplicates::DuplicateToReview;

/// The state of a link between a DentalTID patient and a NanoPix patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Both sides exist.
    Linked,
    /// The NanoPix row or folder is gone; the DentalTID patient is kept.
    Missing,
    /// The DentalTID patient was deleted; a `delete_requested` event was sent.
    DeleteRequested,
}

impl LinkState {
    /// The value stored in `nanopix_sync_links.state`.
    fn as_str(self) -> &'static str {
        match self {
            Self::Linked => "linked",
            Self::Missing => "missing",
            Self::DeleteRequested => "delete_requested",
        }
    }

    /// Reads `nanopix_sync_links.state`; `None` for a value this library never writes.
    fn from_column(text: &str) -> Option<Self> {
        [Self::Linked, Self::Missing, Self::DeleteRequested].into_iter().find(|state| state.as_str() == text)
    }
}

/// How a link came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkOrigin {
    /// The DentalTID patient was created by importing the NanoPix patient.
    Imported,
    /// An existing DentalTID patient was matched to the NanoPix patient.
    Matched,
    /// The NanoPix patient was created by exporting the DentalTID patient.
    Exported,
}

impl LinkOrigin {
    /// The value stored in `nanopix_sync_links.origin`.
    fn as_str(self) -> &'static str {
        match self {
            Self::Imported => "imported",
            Self::Matched => "matched",
            Self::Exported => "exported",
        }
    }

    /// Reads `nanopix_sync_links.origin`; `None` for a value this library never writes.
    fn from_column(text: &str) -> Option<Self> {
        [Self::Imported, Self::Matched, Self::Exported].into_iter().find(|origin| origin.as_str() == text)
    }
}

/// What a reconcile needs of every DentalTID patient when nothing changed: its id, where it came
/// from and its NanoPix id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatientRef {
    /// `patients.id`.
    pub id: i64,
    /// `patients.source`.
    pub source: Source,
    /// `patients.external_id`, if it holds a valid NanoPix id.
    pub external_id: Option<NanoPixId>,
    /// Whether `patients.dateOfBirth` starts with a digit but is no real date
    /// ([`crate::patient::BirthDate::Unreadable`]): matching leaves the patient out. A flag, not
    /// the text, keeps every patient's reference as small as it was.
    pub birth_date_unreadable: bool,
}

/// A link, as `nanopix_sync_links` or an import batch of `nanopix_sync_imports` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// The DentalTID patient (`patients.id`); the patient may have been deleted since.
    pub patient_id: i64,
    /// The NanoPix id, as stored.
    pub external_id: String,
    /// How the link came to be; `None` when the value stored is not one this library writes
    /// (edited by hand): it only describes the link, which holds all the same.
    pub origin: Option<LinkOrigin>,
    /// Whether both sides still exist.
    pub state: LinkState,
    /// When the link was recorded (local time); `None` when the time stored cannot be read (edited
    /// by hand): it only dates the link, which holds all the same.
    pub synced_at: Option<NaiveDateTime>,
}

/// A row of `nanopix_sync_links` this version cannot read back: its state is not one this
/// library writes (edited by hand, or written by a newer version), or it names no patient or no
/// NanoPix id at all (a table made before this library's). The sync never rewrites it, and what
/// it names stays linked: its patient is never matched or exported again, and its NanoPix id
/// never imported or given again, nor deleted while that patient is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnreadableLink {
    /// The DentalTID patient it names, if it names one.
    pub patient_id: Option<i64>,
    /// The NanoPix id it names, as stored.
    pub external_id: Option<String>,
    /// Its state, as stored.
    pub state: Option<String>,
}

impl UnreadableLink {
    /// The NanoPix id it names, if the text stored is one.
    pub fn nanopix_id(&self) -> Option<NanoPixId> {
        self.external_id.as_deref().and_then(|text| NanoPixId::parse(text).ok())
    }
}

/// The links the sync recorded, as [`DentalTid::links`] reads them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RecordedLinks {
    /// The links it can read, in patient id order.
    pub readable: Vec<Link>,
    /// The link rows it cannot read (see [`UnreadableLink`]).
    pub unreadable: Vec<UnreadableLink>,
}

impl RecordedLinks {
    /// The patients of every link, readable or not.
    pub fn patient_ids(&self) -> impl Iterator<Item = i64> {
        let unreadable = self.unreadable.iter().filter_map(|row| row.patient_id);
        self.readable.iter().map(|link| link.patient_id).chain(unreadable)
    }

    /// The NanoPix ids of every link, readable or not.
    pub fn nanopix_ids(&self) -> impl Iterator<Item = NanoPixId> {
        let unreadable = self.unreadable.iter().filter_map(UnreadableLink::nanopix_id);
        self.readable.iter().filter_map(|link| NanoPixId::parse(&link.external_id).ok()).chain(unreadable)
    }

    /// The patient and the NanoPix id of every link, readable or not, that names both.
    pub fn pairs(&self) -> impl Iterator<Item = (i64, NanoPixId)> {
        let readable =
            self.readable.iter().filter_map(|link| Some((link.patient_id, NanoPixId::parse(&link.external_id).ok()?)));
        readable.chain(self.unreadable.iter().filter_map(|row| Some((row.patient_id?, row.nanopix_id()?))))
    }
}

/// A row of the export journal, `nanopix_sync_exports`: an export that has not finished yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingExport {
    /// The DentalTID patient being exported.
    pub patient_id: i64,
    /// The NanoPix id reserved for it.
    pub external_id: NanoPixId,
    /// What the export writes to NanoPix's row, by which its row is recognised; `None` in a
    /// journal row written by a version that did not record it.
    pub written: Option<WrittenRow>,
}

/// An export whose NanoPix row and folder are made, for [`DentalTid::finish_exports`] to link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExportToFinish<'a> {
    /// The DentalTID patient exported.
    pub patient_id: i64,
    /// The NanoPix id it was written under.
    pub external_id: NanoPixId,
    /// The patient's `createdAt`, the patient with the names and birth date its linked twins
    /// were found for, and them, if any (see [`DentalTid::finish_exports`]).
    pub twins: Option<(&'a str, &'a DuplicateCandidate, &'a PossibleDuplicate)>,
}

/// An open, migrated DentalTID database.
#[derive(Debug)]
pub(crate) struct DentalTid {
    conn: Connection,
    path: PathBuf,
    /// The file `path` named when it was opened.
    identity: Option<FileIdentity>,
    /// The lock file beside the database, locked while this is open (see [`take_sync_lock`]).
    _lock: File,
}

impl DentalTid {
    /// Opens an existing `dentaltid.db`, checks it has a `patients` table (before writing
    /// anything), takes the sync's lock on it, and runs the additive migration.
    ///
    /// # Failure
    /// [`Error::DentalTidDatabaseMissing`] if the file does not exist (it is never created),
    /// [`Error::Io`] if the system refuses to say whether it exists (access denied),
    /// [`Error::InvalidConfig`] if the path names a folder, [`Error::MissingTable`],
    /// [`Error::TableIsAView`], [`Error::MissingColumn`] or [`Error::UnexpectedColumn`] if
    /// `patients` is not DentalTID's table, [`Error::NanoPixDatabaseAsDentalTid`] if the file is
    /// NanoPix's database (the file and its folder are then left untouched),
    /// [`Error::InUse`] if another sync handle has it open.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self> {
        if path.is_dir() {
            let named = format!("dentaltid_db names a folder, not the DentalTID database file: {}", path.display());
            return Err(Error::InvalidConfig(named));
        }
        if !path.is_file() {
            crate::error::refused_access(path, "looking for the DentalTID database")?;
            return Err(Error::DentalTidDatabaseMissing(path.to_path_buf()));
        }
        let identity = FileIdentity::of(path);
        let conn = connect(path, busy_timeout)?;
        let mut dentaltid = Self { conn, path: path.to_path_buf(), identity, _lock: take_sync_lock(path)? };
        dentaltid.migrate()?;
        Ok(dentaltid)
    }

    /// `PRAGMA data_version` on this connection: it changes when another connection commits.
    pub fn data_version(&self) -> Result<i64> {
        crate::values::data_version(&self.conn).map_err(Error::db(&self.path, "reading the data version"))
    }

    /// Fails when `dentaltid.db` now names another file than the one opened, or none: DentalTID
    /// restored a backup (it deletes the file and copies the backup in) while this handle was
    /// open, and the connection still reads and writes the old file, which nobody sees any more.
    /// Never on Windows, where an open database file cannot be deleted.
    pub fn check_still_open_file(&self) -> Result<()> {
        if FileIdentity::of(&self.path) == self.identity {
            return Ok(());
        }
        let replaced = std::io::Error::other(
            "it was replaced or removed while the sync had it open (a restore?): close this handle, and open a new \
             one once the file is back",
        );
        Err(Error::io(&self.path, "checking the DentalTID database file")(replaced))
    }

    /// Connects again when this connection could only open the file read-only (SQLite falls
    /// back to reading a file it may not write: a read-only attribute, a backup tool holding it)
    /// and the file is writable now, checking it as `open` does (another program may have
    /// replaced it meanwhile, with a backup, say). Returns whether it connected again.
    pub fn reconnect_if_read_only(&mut self, busy_timeout: Duration) -> Result<bool> {
        if !is_read_only(&self.conn) {
            return Ok(false);
        }
        let conn = connect(&self.path, busy_timeout)?;
        if is_read_only(&conn) {
            return Ok(false);
        }
        self.conn = conn;
        self.migrate()?;
        Ok(true)
    }

    /// The database file.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection to the database file.
    #[cfg(test)]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction and commits it; rolls back on any error.
    fn write<T>(
        &mut self,
        step: &'static str,
        work: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let tx =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::db(&self.path, step))?;
        let value = work(&tx).map_err(Error::db(&self.path, step))?;
        tx.commit().map_err(Error::db(&self.path, step))?;
        Ok(value)
    }
}

/// How many prepared statements the connection to DentalTID keeps: more than the sync runs there,
/// so that none is parsed again on every use (some look up a hundred values at once).
const CACHED_STATEMENTS: usize = 96;

/// Opens `path` for reading and writing (SQLite falls back to reading only when it may not
/// write), with `busy_timeout`, and checks its `patients` table before anything is written; an
/// empty file (0 bytes) is refused (see [`crate::error::refuse_empty`]).
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    crate::error::refuse_empty(path, "opening the database")?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(Error::db(path, "opening the database"))?;
    conn.busy_timeout(busy_timeout).map_err(Error::db(path, "setting the busy timeout"))?;
    conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
    // Lets SQLite's sorter use one more core for large sorts, such as building the sync's
    // indexes after a first sync, which then holds DentalTID's write lock for less time.
    conn.pragma_update(None, "threads", 1).map_err(Error::db(path, "setting the sorter's threads"))?;
    crate::values::check_without_checkpoint(&conn, path, |conn| migration::check_patients_table(conn, path))?;
    Ok(conn)
}

/// Whether `conn` can only read its file.
fn is_read_only(conn: &Connection) -> bool {
    conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false)
}

/// How long `open` waits for the sync's lock that another holder has: a handle closed just
/// before has let it go, but a process the host started meanwhile (on Unix, between its fork
/// and its exec) may still hold the lock file's description a moment longer.
const LOCK_PATIENCE: Duration = Duration::from_secs(1);

/// Locks `<database>.nanopix-sync.lock`, created beside the database file (its path resolved
/// where the system can, so a symlink or another spelling of the path finds the same lock) if
/// missing, for as long as
/// the returned file stays open: the operating system lets only one handle hold it at a time,
/// and frees it when the holder closes it or dies; a holder that keeps it past
/// [`LOCK_PATIENCE`] makes it [`Error::InUse`]. Two syncs on one database could both import
/// the same new NanoPix patient. The file is never removed: another process may be about to lock
/// it, and removing it could then let two holders in.
fn take_sync_lock(database: &Path) -> Result<File> {
    let resolved = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_path_buf());
    let mut name = resolved.file_name().unwrap_or_default().to_os_string();
    name.push(".nanopix-sync.lock");
    let path = resolved.with_file_name(name);
    let file = open_lock_file(&path).map_err(Error::io(&path, "opening the sync's lock file"))?;
    let (deadline, mut pause) = (Instant::now() + LOCK_PATIENCE, Duration::from_millis(1));
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => return Err(Error::InUse(database.to_path_buf())),
            Err(TryLockError::Error(error)) => return Err(Error::io(&path, "locking the sync's lock file")(error)),
        }
    }
}

/// Opens the lock file at `path`, creating it (empty) if missing, for writing: over NFS, Linux
/// takes an exclusive lock only on a file open for writing; or else for reading (see
/// [`or_for_reading`]).
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    or_for_reading(path, lock_file_options().create(true).truncate(false).write(true).open(path))
}

/// `for_writing`, the lock file at `path` opened for writing, or the lock file opened for reading
/// when writing was refused: the sync may not write it (made by a run under another account, or
/// given a read-only attribute), or the file system is mounted read-only (a backup support staff
/// look into). Every file system but NFS locks a file open for reading all the same. A missing
/// one its folder refuses to make (a folder this user may only read, a read-only file system)
/// gives that refusal, not the missing file.
fn or_for_reading(path: &Path, for_writing: std::io::Result<File>) -> std::io::Result<File> {
    use std::io::ErrorKind::{NotFound, PermissionDenied, ReadOnlyFilesystem};
    match for_writing {
        Err(refused) if matches!(refused.kind(), PermissionDenied | ReadOnlyFilesystem) => {
            lock_file_options().read(true).open(path).map_err(|error| match error.kind() {
                NotFound => refused,
                _ => error,
            })
        }
        opened => opened,
    }
}

/// How the lock file is opened. On Windows, other programs may read and write it but not
/// delete it while it is open: a lock file deleted while held (taken for a stale one) would let
/// the next sync make a new one and lock that, beside the running one.
fn lock_file_options() -> OpenOptions {
    #[cfg_attr(not(windows), expect(unused_mut))]
    let mut options = OpenOptions::new();
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// `FILE_SHARE_READ | FILE_SHARE_WRITE`, without `FILE_SHARE_DELETE`.
        const SHARE_READ_AND_WRITE: u32 = 0x1 | 0x2;
        options.share_mode(SHARE_READ_AND_WRITE);
    }
    options
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    /// On a file system mounted read-only (a backup support staff run `status` on), opening the
    /// lock file for writing is refused with `ReadOnlyFilesystem`, not `PermissionDenied`: the
    /// lock file an earlier run made there is opened for reading, and locks; a missing one gives
    /// that refusal. A test cannot mount a file system read-only portably, so the refusal is the
    /// system's answer as it comes; the files and the lock are real.
    #[test]
    fn a_lock_file_on_a_read_only_file_system_is_opened_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("dentaltid.db.nanopix-sync.lock");
        let read_only = || Err(std::io::Error::from(ErrorKind::ReadOnlyFilesystem));
        let missing = or_for_reading(&lock, read_only()).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::ReadOnlyFilesystem, "{missing}");
        File::create(&lock).unwrap();
        let opened = or_for_reading(&lock, read_only()).unwrap();
        opened.try_lock().unwrap();
        let second = File::open(&lock).unwrap();
        assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)), "one holder at a time");
    }
}
