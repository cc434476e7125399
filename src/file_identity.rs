//! Which file a path names now, so that a database file replaced under the same name (a
//! restore, a copy renamed over it) is told from the one a connection opened, which a
//! connection keeps reading after the name moved on; and which names in one folder name the
//! same file.

use std::ffi::OsStr;
use std::path::Path;

/// Whether `name` and `other`, names of entries in one folder, name the same entry: on Windows,
/// whose names ignore case, also when spelled in another case (`Database`, `DentalTID.db`).
pub(crate) fn same_entry_name(name: &OsStr, other: &OsStr) -> bool {
    if cfg!(windows) { name.eq_ignore_ascii_case(other) } else { name == other }
}

/// A file's identity: its device and inode, unique among the files that exist at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    /// The identity of the file `path` names now; `None` when it cannot be read. Always `None`
    /// where an open database file cannot be replaced (on Windows, SQLite opens it without
    /// sharing its deletion), so nothing there ever looks replaced.
    pub(crate) fn of(path: &Path) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let metadata = std::fs::metadata(path).ok()?;
            Some(Self { device: metadata.dev(), inode: metadata.ino() })
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_file_renamed_over_another_has_another_identity() {
        let temp = tempfile::tempdir().unwrap();
        let (file, copy) = (temp.path().join("NanoPix.db3"), temp.path().join("copy"));
        std::fs::write(&file, b"first").unwrap();
        let first = FileIdentity::of(&file);
        assert!(first.is_some());
        std::fs::write(&file, b"written in place").unwrap();
        assert_eq!(FileIdentity::of(&file), first, "a write keeps the file");
        std::fs::copy(&file, &copy).unwrap();
        std::fs::rename(&copy, &file).unwrap();
        assert_ne!(FileIdentity::of(&file), first, "a copy renamed over it is another file");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(FileIdentity::of(&file), None);
    }
}
