//! Patient folders under `PatientData`: creating, scanning, counting and removing them.
//!
//! A folder path is only ever `root/<NanoPixId>` (plus configured subfolder names that are one
//! plain path component). This module never creates anything above or outside the root, never
//! uses `create_dir_all`, never follows a symlink, and never removes a folder that is not empty.

use std::ffi::OsStr;
use std::fs::{self, DirEntry};
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::{DATABASE_FOLDER, FolderScan};
use crate::file_identity::same_entry_name;
use crate::{Error, NanoPixId, Result};

/// Characters refused in a subfolder name: path separators, and those Windows does not allow in
/// a name (control characters are refused as well).
const FORBIDDEN_NAME_CHARS: [char; 9] = ['/', '\\', ':', '<', '>', '"', '|', '?', '*'];

/// The longest subfolder name, in UTF-8 bytes: what file systems hold in one name (255 bytes,
/// and 255 UTF-16 units on Windows, which this never exceeds).
const MAX_NAME_BYTES: usize = 255;

/// Names Windows keeps for devices, whatever their case and extension (`con`, `NUL.txt`).
const WINDOWS_DEVICE_NAMES: [&str; 30] = [
    "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "COM¹",
    "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²",
    "LPT³",
];

/// `root/<id>`.
pub(super) fn patient_folder(root: &Path, id: NanoPixId) -> PathBuf {
    root.join(id.to_string())
}

/// Whether `path` is a real folder: a symlink to a folder is not one.
pub(super) fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir())
}

/// Whether something other than a real folder (a symlink, a file) sits at `path`.
pub(super) fn holds_other_than_folder(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| !metadata.is_dir())
}

/// Creates `root/<id>` and its `subfolders` where missing; returns the patient folder.
pub(super) fn create_patient_folder(root: &Path, id: NanoPixId, subfolders: &[String]) -> Result<PathBuf> {
    for name in subfolders {
        check_subfolder_name(name)?;
    }
    let folder = patient_folder(root, id);
    ensure_real_dir(&folder)?;
    for name in subfolders {
        ensure_real_dir(&folder.join(name))?;
    }
    Ok(folder)
}

/// Accepts only one plain folder name that every system can hold as given: not empty, no
/// separator, not `.` or `..`, not absolute, at most [`MAX_NAME_BYTES`] long, and none of what
/// Windows refuses or changes (the characters of [`FORBIDDEN_NAME_CHARS`], control characters, a
/// device name, a trailing dot or space, which Windows drops): the patient folders may be reached
/// from Windows over a share.
pub(crate) fn check_subfolder_name(name: &str) -> Result<()> {
    let mut components = Path::new(name).components();
    let single_plain = matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(part)), None) if part == OsStr::new(name)
    );
    let portable = name.len() <= MAX_NAME_BYTES
        && !name.contains(FORBIDDEN_NAME_CHARS)
        && !name.contains(char::is_control)
        && !name.ends_with(['.', ' '])
        && !is_windows_device_name(name);
    if single_plain && portable {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "patient subfolder {name:?} must be one plain folder name that Windows can hold as given"
        )))
    }
}

/// Whether Windows takes `name` for a device: its part before the first dot, without trailing
/// spaces, is one of [`WINDOWS_DEVICE_NAMES`] in any ASCII case.
fn is_windows_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    WINDOWS_DEVICE_NAMES.iter().any(|device| device.eq_ignore_ascii_case(stem))
}

/// Makes `path` a real folder: creates it (only its last component) or accepts an existing
/// real folder; anything else there (a symlink, a file) is refused.
fn ensure_real_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            if is_real_dir(path) {
                Ok(())
            } else {
                Err(Error::UnsafePath(path.to_path_buf()))
            }
        }
        Err(error) => Err(Error::io(path, "creating the patient folder")(error)),
    }
}

/// Lists `root` once, sorting names into patient folders and odd names (the database folder
/// is neither). A listing that fails part of the way (a network share going away) fails as a
/// whole, so that no patient folder is ever taken for a missing one.
pub(super) fn scan(root: &Path) -> Result<FolderScan> {
    let failed = || Error::io(root, "listing the patient folders");
    let mut found = FolderScan::default();
    for entry in fs::read_dir(root).map_err(failed())? {
        let entry = entry.map_err(failed())?;
        let is_dir = entry.file_type().map_err(failed())?.is_dir();
        sort_entry(&entry, is_dir, &mut found);
    }
    Ok(found)
}

/// A real folder named by a valid id is a patient folder; any other name is odd.
fn sort_entry(entry: &DirEntry, is_dir: bool, found: &mut FolderScan) {
    let name = entry.file_name();
    if is_database_folder(&name) {
        return;
    }
    match name.to_str().and_then(|text| NanoPixId::parse(text).ok()) {
        Some(id) if is_dir => {
            found.patient_folders.insert(id);
        }
        _ => found.odd_names.push(name),
    }
}

/// Whether `name` is NanoPix's database folder: on Windows, whose names ignore case, also when
/// spelled in another case (`Database`), since `NanoPix.db3` is found through it all the same.
fn is_database_folder(name: &OsStr) -> bool {
    same_entry_name(name, OsStr::new(DATABASE_FOLDER))
}

/// Entries in a real folder (0 when it is missing) besides the empty real `subfolders` the sync
/// makes in every patient folder (on Windows, named in any case); an entry that cannot be read
/// still counts. Anything else in the folder's place (a symlink, a file) counts as one entry:
/// what it holds is not looked into, so it is never taken for empty.
pub(super) fn count_entries(folder: &Path, subfolders: &[String]) -> Result<u64> {
    if !is_real_dir(folder) {
        return Ok(u64::from(fs::symlink_metadata(folder).is_ok()));
    }
    let entries = fs::read_dir(folder).map_err(Error::io(folder, "listing a patient folder"))?;
    let ours = |entry: &DirEntry| {
        let name = entry.file_name();
        subfolders.iter().any(|subfolder| same_entry_name(&name, OsStr::new(subfolder)))
            && is_empty_real_dir(&entry.path())
    };
    Ok(entries.filter(|entry| !entry.as_ref().is_ok_and(ours)).count() as u64)
}

/// Whether `path` is a real folder with nothing in it.
fn is_empty_real_dir(path: &Path) -> bool {
    is_real_dir(path) && fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

/// Removes the folder, and the empty real `subfolders` in it, if it is then a real, empty
/// folder; a missing folder or a symlink is left alone. A folder that cannot be removed (say
/// a file appeared in it) gets back the subfolders removed from it.
pub(super) fn remove_empty_folder(folder: &Path, subfolders: &[String]) -> Result<()> {
    if !is_real_dir(folder) {
        return Ok(());
    }
    let mut removed = Vec::new();
    let mut remove = || {
        for subfolder in subfolders.iter().map(|name| folder.join(name)) {
            if is_empty_real_dir(&subfolder) {
                fs::remove_dir(&subfolder).map_err(Error::io(&subfolder, "removing a patient subfolder"))?;
                removed.push(subfolder);
            }
        }
        fs::remove_dir(folder).map_err(Error::io(folder, "removing the patient folder"))
    };
    let outcome = remove();
    if outcome.is_err() {
        // Empty folders only: making one again cannot lose anything, and failing to leaves less.
        for subfolder in removed {
            let _ = fs::create_dir(subfolder);
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subfolder_names_must_be_one_plain_component() {
        let longest = "é".repeat(MAX_NAME_BYTES / 2);
        for good in ["images", "Radios 2025", "a.b", ".hidden", "Console", "COM10", "nul-files", "Zoé", &longest] {
            assert!(check_subfolder_name(good).is_ok(), "{good:?} must be accepted");
        }
        for bad in ["", ".", "..", "...", "a/b", "a\\b", "/abs", "images/", "C:x", "a\0b", "./a"] {
            assert!(matches!(check_subfolder_name(bad), Err(Error::InvalidConfig(_))), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_database_folder_is_known_by_its_name_in_the_case_the_system_gives_it() {
        assert!(is_database_folder(OsStr::new("database")));
        assert_eq!(is_database_folder(OsStr::new("Database")), cfg!(windows));
        assert!(!is_database_folder(OsStr::new("databases")));
    }

    #[test]
    fn an_empty_subfolder_named_in_another_case_is_ours_where_names_ignore_case() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("20250122_100000");
        fs::create_dir_all(folder.join("Images")).unwrap();
        let entries = count_entries(&folder, &["images".to_owned()]).unwrap();
        assert_eq!(entries, u64::from(!cfg!(windows)));
    }

    #[test]
    fn a_folder_that_cannot_go_gets_back_the_subfolders_removed_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("20250122_100000");
        fs::create_dir_all(folder.join("xrays")).unwrap();
        fs::write(folder.join("20250122_100500.iosb"), b"image").unwrap();
        let subfolders = ["xrays".to_owned(), "reports".to_owned()];
        assert!(matches!(remove_empty_folder(&folder, &subfolders), Err(Error::Io { .. })));
        let mut left: Vec<_> = fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["20250122_100500.iosb", "xrays"], "no subfolder made that was not there");
        fs::remove_file(folder.join("20250122_100500.iosb")).unwrap();
        remove_empty_folder(&folder, &subfolders).unwrap();
        assert!(!folder.exists());
    }

    #[test]
    fn a_patient_folder_under_a_root_that_is_gone_is_an_io_error_not_an_unsafe_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("PatientData");
        let id = NanoPixId::parse("20250122_100000").unwrap();
        let result = create_patient_folder(&gone, id, &[]);
        assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
        assert!(!gone.exists());
    }

    #[test]
    fn subfolder_names_systems_cannot_hold_as_given_are_refused() {
        let refused =
            ["CON", "nul", "Aux.txt", "com1", "LPT9.log", "COM¹", "con .txt", "images.", "images ", "a<b", "a>b"];
        let also = ["a\"b", "a|b", "a?b", "a*b", "a\tb", "a\u{1f}b"];
        let too_long = "a".repeat(MAX_NAME_BYTES + 1);
        for bad in refused.into_iter().chain(also).chain([too_long.as_str()]) {
            assert!(matches!(check_subfolder_name(bad), Err(Error::InvalidConfig(_))), "{bad:?} must be refused");
        }
    }
}
