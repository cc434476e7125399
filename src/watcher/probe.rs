//! `PRAGMA data_version` probes: notice commits made by other programs.
//!
//! Each probe owns one read-only connection (no create, no busy wait) and only ever runs
//! `PRAGMA data_version`, which changes when another connection commits. A probe never writes,
//! never sets a PRAGMA, and never waits on a lock: a locked or unreadable file counts as
//! "unknown", and the next successful read after a failure counts as a change. A file replaced
//! under its name (a restore, a copy renamed over it) is opened afresh and counts as a change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Context, End, Trigger};
use crate::file_identity::FileIdentity;

/// What a probe saw since its last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// The same data version as last time.
    Same,
    /// Another connection committed (or the probe could not compare, after a failure).
    Changed,
    /// The database could not be read now (locked, gone, or not a database).
    Unknown,
}

/// Watches one database's `data_version` on a read-only connection of its own.
#[derive(Debug)]
pub(super) struct DataVersion {
    path: PathBuf,
    connection: Option<Connection>,
    /// The file the connection opened.
    identity: Option<FileIdentity>,
    last: Option<i64>,
}

impl DataVersion {
    /// Opens a probe on `path` and reads its first version; failures are retried on each check.
    pub(super) fn open(path: &Path) -> Self {
        let mut probe = Self { path: path.to_path_buf(), connection: None, identity: None, last: None };
        probe.connect();
        probe.last = probe.read();
        probe
    }

    /// Reads the version now and compares it with the last one read.
    pub(super) fn check(&mut self) -> Change {
        if FileIdentity::of(&self.path) != self.identity {
            self.last = None;
            self.connect();
        } else if self.connection.is_none() {
            self.connect();
        }
        match self.read() {
            Some(now) if self.last.replace(now) == Some(now) => Change::Same,
            Some(_) => Change::Changed,
            None => {
                self.connection = None;
                self.last = None;
                Change::Unknown
            }
        }
    }

    /// Opens the file `path` names now.
    fn connect(&mut self) {
        self.identity = FileIdentity::of(&self.path);
        self.connection = connect(&self.path);
    }

    fn read(&self) -> Option<i64> {
        let connection = self.connection.as_ref()?;
        crate::values::data_version(connection).ok()
    }
}

/// Opens `path` read-only, never creating it, and never waiting on another program's lock.
fn connect(path: &Path) -> Option<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).ok()?;
    connection.busy_timeout(Duration::ZERO).ok()?;
    Some(connection)
}

/// The probes of both databases.
#[derive(Debug)]
pub(super) struct Probes {
    /// NanoPix's `NanoPix.db3`.
    pub(super) nanopix: DataVersion,
    /// DentalTID's database.
    pub(super) dentaltid: DataVersion,
}

impl Probes {
    /// Opens a probe on each database.
    pub(super) fn open(nanopix_db: &Path, dentaltid_db: &Path) -> Self {
        Self { nanopix: DataVersion::open(nanopix_db), dentaltid: DataVersion::open(dentaltid_db) }
    }

    /// Checks both versions on a timer and sends one trigger for each side that changed;
    /// `folders_changed` says the NanoPix side changed anyway.
    pub(super) fn poll(&mut self, context: &Context, folders_changed: bool) -> Result<(), End> {
        if self.nanopix.check() == Change::Changed || folders_changed {
            context.send(Trigger::NanoPixChanged)?;
        }
        if self.dentaltid.check() == Change::Changed {
            context.send(Trigger::DentalTidChanged)?;
        }
        Ok(())
    }
}
