//! Result codes of the C API and the thread-local last error.
//!
//! Every code is a fixed `u32` that is never reused for another meaning. Library errors map
//! from [`Error::code`], one number per kind. This module must never let a C caller see a Rust
//! enum: codes cross the boundary as plain integers.

use std::cell::RefCell;
use std::ffi::CString;

use crate::Error;
use crate::ffi::strings::to_c_string;

/// Success.
pub const NPS_OK: u32 = 0;
/// A required pointer argument was NULL.
pub const NPS_NULL_ARGUMENT: u32 = 1;
/// A string argument was not valid UTF-8.
pub const NPS_INVALID_UTF8: u32 = 2;
/// A JSON argument could not be parsed as JSON.
pub const NPS_INVALID_JSON: u32 = 3;
/// An integer argument was out of range (for example an unknown patient filter).
pub const NPS_INVALID_ARGUMENT: u32 = 4;
/// A bug inside the library was caught at the boundary; the handle is still usable.
pub const NPS_PANIC: u32 = 5;
/// The handle is closed.
pub const NPS_CLOSED: u32 = 6;
/// `nps_next_event` found no event within the timeout.
pub const NPS_TIMEOUT: u32 = 7;
/// The call is not allowed on this thread (for example `nps_close` from inside a callback).
pub const NPS_WRONG_THREAD: u32 = 8;
/// `nps_find_open_handle` found no handle: every handle opened in this process has been freed.
pub const NPS_NO_HANDLE: u32 = 9;
/// A folder or file does not exist (`not_found`).
pub const NPS_NOT_FOUND: u32 = 100;
/// A table or column is missing, or not what the program's own schema makes it, or the database
/// is the other program's (`schema`).
pub const NPS_SCHEMA: u32 = 101;
/// A string is not a valid NanoPix id (`invalid_id`).
pub const NPS_INVALID_ID: u32 = 102;
/// No patient has this id (`no_such_patient`).
pub const NPS_NO_SUCH_PATIENT: u32 = 103;
/// The patient is already linked (`already_linked`).
pub const NPS_ALREADY_LINKED: u32 = 104;
/// NanoPix still holds images or files for the patient (`not_empty`).
pub const NPS_NOT_EMPTY: u32 = 105;
/// A path would leave the NanoPix data folder (`unsafe_path`).
pub const NPS_UNSAFE_PATH: u32 = 106;
/// No free NanoPix id was found (`no_free_id`).
pub const NPS_NO_FREE_ID: u32 = 107;
/// A database stayed locked by another program, or NanoPix kept changing while an export
/// waited for it to be still (`busy`).
pub const NPS_BUSY: u32 = 108;
/// An SQLite call failed (`database`).
pub const NPS_DATABASE: u32 = 109;
/// A file or folder operation failed (`io`).
pub const NPS_IO: u32 = 110;
/// The file watcher could not be set up (`watcher`).
pub const NPS_WATCHER: u32 = 111;
/// The configuration is invalid (`invalid_config`).
pub const NPS_INVALID_CONFIG: u32 = 112;
/// An internal error stopped the call (`internal`).
pub const NPS_INTERNAL: u32 = 113;
/// Another sync handle already syncs this DentalTID database (`in_use`).
pub const NPS_IN_USE: u32 = 114;
/// `nps_delete_in_nanopix` was called for a patient whose deletion DentalTID did not request
/// (`delete_not_requested`).
pub const NPS_DELETE_NOT_REQUESTED: u32 = 115;
/// `nps_delete_in_nanopix` found several NanoPix rows with the patient's id (`id_shared`).
pub const NPS_ID_SHARED: u32 = 116;
/// A write found no room: the disk that holds `dentaltid.db`, `PatientData` or SQLite's
/// temporary folder is full (`disk_full`).
pub const NPS_DISK_FULL: u32 = 117;

/// A failed C call: its result code and a message for people.
#[derive(Debug)]
pub(crate) struct FfiError {
    /// One of the `NPS_` codes, never `NPS_OK`.
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl FfiError {
    /// An error with the given code and message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

impl From<Error> for FfiError {
    fn from(error: Error) -> Self {
        Self { code: code_of(error.code()), message: error.to_string() }
    }
}

/// The C result code for an [`Error::code`] kind.
fn code_of(kind: &str) -> u32 {
    match kind {
        "not_found" => NPS_NOT_FOUND,
        "schema" => NPS_SCHEMA,
        "invalid_id" => NPS_INVALID_ID,
        "no_such_patient" => NPS_NO_SUCH_PATIENT,
        "already_linked" => NPS_ALREADY_LINKED,
        "not_empty" => NPS_NOT_EMPTY,
        "unsafe_path" => NPS_UNSAFE_PATH,
        "no_free_id" => NPS_NO_FREE_ID,
        "busy" => NPS_BUSY,
        "database" => NPS_DATABASE,
        "io" => NPS_IO,
        "watcher" => NPS_WATCHER,
        "invalid_config" => NPS_INVALID_CONFIG,
        "closed" => NPS_CLOSED,
        "in_use" => NPS_IN_USE,
        "delete_not_requested" => NPS_DELETE_NOT_REQUESTED,
        "id_shared" => NPS_ID_SHARED,
        "disk_full" => NPS_DISK_FULL,
        _ => NPS_INTERNAL,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `error` as this thread's last error. In a thread's exit cleanup, once its
/// thread-local data is gone, nothing is recorded (the result code still tells).
pub(crate) fn set_last_error(error: &FfiError) {
    let message = to_c_string(error.message.clone());
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = Some(message));
}

/// Forgets this thread's last error.
pub(crate) fn clear_last_error() {
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = None);
}

/// A copy of this thread's last error message, if there is one.
pub(crate) fn last_error() -> Option<CString> {
    LAST_ERROR.try_with(|last| last.borrow().clone()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn every_kind() -> Vec<Error> {
        let path = PathBuf::from("x");
        vec![
            Error::NanoPixRootMissing(path.clone()),
            Error::MissingTable { path: path.clone(), table: "patients" },
            Error::InvalidNanoPixId("x".into()),
            Error::PatientNotFound(1),
            Error::AlreadyLinked { patient_id: 1, external_id: "x".into() },
            Error::NanoPixPatientNotEmpty {
                external_id: "x".into(),
                studies: 1,
                reports: 0,
                other_records: 0,
                files: 0,
            },
            Error::DeleteNotRequested("x".into()),
            Error::UnsafePath(path.clone()),
            Error::NoFreeId("x".into()),
            Error::Busy { path: path.clone(), step: "x" },
            Error::Database { path: path.clone(), step: "x", source: rusqlite::Error::InvalidQuery },
            Error::Io { path: path.clone(), step: "x", source: std::io::Error::other("x") },
            Error::Io { path: path.clone(), step: "x", source: std::io::ErrorKind::StorageFull.into() },
            Error::Watcher { path, source: notify::Error::generic("x") },
            Error::InvalidConfig("x".into()),
            Error::InUse(PathBuf::from("x")),
            Error::Internal("x".into()),
            Error::Closed,
        ]
    }

    #[test]
    fn every_error_kind_has_its_own_code() {
        let codes: Vec<u32> = every_kind().into_iter().map(|error| FfiError::from(error).code).collect();
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        assert!(codes.iter().all(|&code| code != NPS_OK));
        assert_eq!(codes.iter().filter(|&&code| code == NPS_INTERNAL).count(), 1);
    }

    #[test]
    fn last_error_is_per_thread_and_clearable() {
        set_last_error(&FfiError::new(NPS_NULL_ARGUMENT, "handle is NULL"));
        assert_eq!(last_error().unwrap().to_str().unwrap(), "handle is NULL");
        std::thread::spawn(|| assert!(last_error().is_none())).join().unwrap();
        clear_last_error();
        assert!(last_error().is_none());
    }
}
