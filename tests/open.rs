//! `open` checks both sides and fails with a specific error, leaving files untouched.

mod common;

use common::Clinic;
use nanopix_sync::{Error, NanoPixSync};

fn open_error(clinic: &Clinic) -> Error {
    NanoPixSync::open(clinic.config()).unwrap_err()
}

#[test]
fn a_missing_nanopix_folder_is_named() {
    let clinic = Clinic::new("v29");
    std::fs::remove_dir_all(&clinic.root).unwrap();
    assert!(matches!(open_error(&clinic), Error::NanoPixRootMissing(path) if path == clinic.root));
}

#[test]
fn a_missing_nanopix_database_is_named() {
    let clinic = Clinic::new("v29");
    std::fs::remove_file(clinic.nanopix_db()).unwrap();
    assert!(matches!(open_error(&clinic), Error::NanoPixDatabaseMissing(_)));
    assert!(!clinic.nanopix_db().exists(), "open never creates NanoPix.db3");
}

/// `nanopix_root` one folder off `PatientData`: its `database` folder, a patient folder, or the
/// folder that holds it. The message names the folder to give instead: "NanoPix database not
/// found" at a `database/database/NanoPix.db3` that was never there would send support staff
/// looking for a file that is in its place.
#[test]
fn a_nanopix_folder_one_level_off_is_refused_naming_the_patientdata_folder_to_give() {
    let clinic = Clinic::new("v29");
    let before = std::fs::read(&clinic.dentaltid).unwrap();
    for given in [clinic.root.join("database"), clinic.root.join("20250121_152638"), clinic.dir.path().to_path_buf()] {
        let mut config = clinic.config();
        config.nanopix_root = given.clone();
        let error = NanoPixSync::open(config).unwrap_err();
        assert_eq!(error.code(), "invalid_config", "{error}");
        let hint = format!("give {}", clinic.root.display());
        assert!(error.to_string().contains(&hint), "{given:?}: {error}");
    }
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), before, "not even migrated");
}

#[test]
fn a_nanopix_database_without_last_name_is_refused() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(
        "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250) NOT NULL UNIQUE, first_name TEXT);",
    );
    assert!(matches!(open_error(&clinic), Error::MissingColumn { column: "last_name", .. }));
}

#[test]
fn a_patient_table_without_pk_or_rowid_is_refused() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(
        "CREATE TABLE Patient (id TEXT PRIMARY KEY, last_name TEXT NOT NULL) WITHOUT ROWID;
         INSERT INTO Patient(id, last_name) VALUES ('20250121_152638', 'DSSSSFSFS');",
    );
    assert!(matches!(open_error(&clinic), Error::MissingColumn { column: "pk", .. }));
}

#[cfg(unix)]
#[test]
fn a_database_folder_linked_from_outside_the_root_is_refused() {
    let clinic = Clinic::new("v29");
    let outside = clinic.dir.path().join("elsewhere");
    std::fs::rename(clinic.root.join("database"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, clinic.root.join("database")).unwrap();
    let before = std::fs::read(outside.join("NanoPix.db3")).unwrap();
    assert!(matches!(open_error(&clinic), Error::UnsafePath(path) if path == clinic.nanopix_db()));
    assert_eq!(std::fs::read(outside.join("NanoPix.db3")).unwrap(), before);
}

#[test]
fn a_dentaltid_file_without_patients_is_refused_and_left_byte_for_byte() {
    let clinic = Clinic::new("v29");
    std::fs::remove_file(&clinic.dentaltid).unwrap();
    rusqlite::Connection::open(&clinic.dentaltid)
        .unwrap()
        .execute_batch("PRAGMA user_version = 29; CREATE TABLE other(x);")
        .unwrap();
    let folder = || listing(clinic.dentaltid.parent().unwrap());
    let (before, before_folder) = (std::fs::read(&clinic.dentaltid).unwrap(), folder());
    assert!(matches!(open_error(&clinic), Error::MissingTable { table: "patients", .. }));
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), before);
    assert_eq!(folder(), before_folder, "nothing is added beside it either");
}

/// NanoPix's own `NanoPix.db3` given as DentalTID's database, and a DentalTID database in the
/// place of `NanoPix.db3`: "table `patients` is missing" (or `Patient`) would send support staff
/// looking for another version of the program, when the file is the other program's. The message
/// says whose file it is and what to give instead; the code stays `schema`, and the file and its
/// folder are left as they were.
#[test]
fn the_other_programs_database_is_refused_naming_whose_it_is() {
    let nanopix_given = Clinic::new("v29");
    let mut config = nanopix_given.config();
    config.dentaltid_db = nanopix_given.nanopix_db();
    let dentaltid_in_place = Clinic::new("v29");
    std::fs::copy(&dentaltid_in_place.dentaltid, dentaltid_in_place.nanopix_db()).unwrap();
    let cases = [
        (config, nanopix_given.nanopix_db(), "is NanoPix's database, not DentalTID's", "give DentalTID's own"),
        (
            dentaltid_in_place.config(),
            dentaltid_in_place.nanopix_db(),
            "is a DentalTID database, not NanoPix's",
            "give the PatientData folder",
        ),
    ];
    for (config, file, whose, give) in cases {
        let folder = || listing(file.parent().unwrap());
        let (before, before_folder) = (std::fs::read(&file).unwrap(), folder());
        let error = NanoPixSync::open(config).unwrap_err();
        assert_eq!(error.code(), "schema", "{error}");
        assert!(error.to_string().contains(whose) && error.to_string().contains(give), "{error}");
        assert_eq!(error.path(), Some(file.as_path()));
        assert!(std::fs::read(&file).unwrap() == before, "{file:?}: the file's bytes changed");
        assert_eq!(folder(), before_folder, "nothing is added beside {file:?}");
    }
}

/// Replaces the database at `path` with one in WAL mode that `sql` makes, as a program that
/// closed it without a checkpoint leaves it: what `sql` wrote is still in the WAL.
fn replace_with_wal_database(path: &std::path::Path, sql: &str) {
    std::fs::remove_file(path).unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).unwrap();
    conn.execute_batch(&format!("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; {sql}")).unwrap();
    drop(conn);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(std::fs::metadata(wal).unwrap().len() > 0, "the tables are still in the WAL");
}

/// The same file in WAL mode, its last write still in the WAL (DentalTID closed without a
/// checkpoint): refusing it must not move that write into the file either.
#[test]
fn a_dentaltid_file_without_patients_in_wal_mode_is_refused_and_left_byte_for_byte() {
    let clinic = Clinic::new("v29");
    replace_with_wal_database(&clinic.dentaltid, "CREATE TABLE other(x);");
    let before = std::fs::read(&clinic.dentaltid).unwrap();
    assert!(matches!(open_error(&clinic), Error::MissingTable { table: "patients", .. }));
    assert!(std::fs::read(&clinic.dentaltid).unwrap() == before, "the file's bytes changed");
}

/// A DentalTID database in WAL mode, its last write still in the WAL, in the place of
/// `NanoPix.db3`: refusing it must not move that write into the file.
#[test]
fn a_dentaltid_database_in_wal_mode_in_the_place_of_nanopix_s_is_refused_and_left_byte_for_byte() {
    let clinic = Clinic::new("v29");
    let schema = std::fs::read_to_string(common::fixtures().join("dentaltid/schema_v29.sql")).unwrap();
    replace_with_wal_database(&clinic.nanopix_db(), &schema);
    let before = std::fs::read(clinic.nanopix_db()).unwrap();
    assert!(matches!(open_error(&clinic), Error::DentalTidDatabaseAsNanoPix(_)));
    assert!(std::fs::read(clinic.nanopix_db()).unwrap() == before, "the file's bytes changed");
}

/// A `dentaltid.db` or `NanoPix.db3` of 0 bytes, as a copy cut short or a restore that failed
/// leaves it, is said to be empty, like any file that is not a database: "table missing" would
/// send support staff looking for another program's or another version's file instead of a
/// backup. Nothing is written to it or beside it.
#[test]
fn an_empty_database_file_is_refused_as_empty_not_as_missing_a_table() {
    let dentaltid = Clinic::new("v29");
    std::fs::write(&dentaltid.dentaltid, b"").unwrap();
    let nanopix = Clinic::new("v29");
    std::fs::write(nanopix.nanopix_db(), b"").unwrap();
    for (clinic, empty) in [(&dentaltid, dentaltid.dentaltid.clone()), (&nanopix, nanopix.nanopix_db())] {
        let before = listing(empty.parent().unwrap());
        let error = open_error(clinic);
        assert_eq!(error.code(), "database", "{error}");
        assert!(error.to_string().contains("is empty (0 bytes)"), "{error}");
        assert_eq!(error.path(), Some(empty.as_path()));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "{empty:?} is left empty");
        assert_eq!(listing(empty.parent().unwrap()), before, "nothing is added beside {empty:?}");
    }
}

#[test]
fn a_missing_dentaltid_file_is_not_created() {
    let clinic = Clinic::new("v29");
    std::fs::remove_file(&clinic.dentaltid).unwrap();
    assert!(matches!(open_error(&clinic), Error::DentalTidDatabaseMissing(_)));
    assert!(!clinic.dentaltid.exists());
}

#[test]
fn duplicate_external_ids_from_older_versions_survive_the_migration() {
    let clinic = Clinic::new("v29");
    rusqlite::Connection::open(&clinic.dentaltid)
        .unwrap()
        .execute_batch("UPDATE patients SET external_id = '20250121_152638' WHERE id IN (1, 2);")
        .unwrap();
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 0, "the NanoPix patient is already known");
    let rows: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM patients", |r| r.get(0));
    assert_eq!(rows, vec![6], "no row lost, none added");
}

#[test]
fn settings_sqlite_or_a_folder_cannot_take_are_refused_before_anything_is_opened() {
    let clinic = Clinic::new("v29");
    let before = std::fs::read(&clinic.dentaltid).unwrap();
    let mut config = clinic.config();
    config.busy_timeout = std::time::Duration::from_secs(30 * 24 * 3600);
    assert!(
        matches!(NanoPixSync::open(config), Err(Error::InvalidConfig(message)) if message.contains("busy timeout"))
    );
    let mut config = clinic.config();
    config.patient_subfolders = vec!["images/../..".to_owned()];
    assert!(matches!(NanoPixSync::open(config), Err(Error::InvalidConfig(message)) if message.contains("subfolder")));
    let mut config = clinic.config();
    config.nanopix_root = std::path::PathBuf::new();
    let refused = NanoPixSync::open(config);
    assert!(
        matches!(&refused, Err(Error::InvalidConfig(message)) if message == "nanopix_root is empty: it must name a path"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), before, "not even migrated");
}

#[test]
fn a_second_sync_on_the_same_dentaltid_database_waits_for_the_first_to_close() {
    let clinic = Clinic::new("v29");
    let first = clinic.open();
    assert!(matches!(NanoPixSync::open(clinic.config()), Err(Error::InUse(path)) if path == clinic.dentaltid));
    drop(first);
    let second = clinic.open();
    assert_eq!(second.reconcile().unwrap().imported, 1);
}

/// A handle that lets the sync's lock go while another one opens (a host closing its handle as it
/// opens a new one, or a process it started holding the lock file a moment after the close): the
/// new handle waits for it and opens, instead of failing with `in_use`.
#[cfg(target_os = "linux")]
#[test]
fn open_waits_a_moment_for_a_sync_lock_let_go_meanwhile() {
    const IN_OPEN: u32 = 0x20;
    let clinic = Clinic::new("v29");
    let first = clinic.open_without_automatic_work();
    let lock = clinic.dentaltid.with_file_name("dentaltid.db.nanopix-sync.lock");
    let opening = common::first_inotify_event(&lock, IN_OPEN);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| NanoPixSync::open(clinic.config_without_automatic_work()));
        opening.recv_timeout(std::time::Duration::from_secs(10)).expect("the second handle opens the lock file");
        drop(first);
        let opened = second.join().unwrap();
        assert!(opened.is_ok(), "{:?}", opened.err());
    });
}

#[cfg(unix)]
#[test]
fn a_second_sync_on_the_same_dentaltid_database_through_a_symlink_is_refused() {
    let clinic = Clinic::new("v29");
    let first = clinic.open();
    let alias = clinic.dir.path().join("alias.db");
    std::os::unix::fs::symlink(&clinic.dentaltid, &alias).unwrap();
    let mut config = clinic.config();
    config.dentaltid_db = alias;
    assert!(matches!(NanoPixSync::open(config), Err(Error::InUse(_))));
    drop(first);
}

/// A folder the sync may not enter (its rights, a share that refuses this user) is an access
/// error, not a missing file: the message must send support staff to the rights, not looking for
/// a file that is there.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_folder_the_sync_may_not_enter_is_reported_as_refused_not_as_missing() {
    use std::os::unix::fs::PermissionsExt;
    common::obey_file_modes_on_this_thread();
    let set_mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |error: &Error| matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied);

    let clinic = Clinic::new("v29");
    let database_folder = clinic.root.join("database");
    set_mode(&database_folder, 0o000);
    let nanopix = open_error(&clinic);
    set_mode(&database_folder, 0o755);
    assert!(refused(&nanopix), "NanoPix.db3 behind a folder the sync may not enter: {nanopix:?}");

    let clinic = Clinic::new("v29");
    let databases = clinic.dir.path().join("databases");
    std::fs::create_dir(&databases).unwrap();
    let mut config = clinic.config();
    config.dentaltid_db = databases.join("dentaltid.db");
    std::fs::rename(&clinic.dentaltid, &config.dentaltid_db).unwrap();
    set_mode(&databases, 0o000);
    let dentaltid = NanoPixSync::open(config).unwrap_err();
    set_mode(&databases, 0o755);
    assert!(refused(&dentaltid), "dentaltid.db behind a folder the sync may not enter: {dentaltid:?}");
    assert_eq!(dentaltid.code(), "io");
}

/// The lock file beside `dentaltid.db` is one the sync may only read: support staff ran the
/// `sync` runner once under another account (root's, an administrator's), which made the file
/// that account's, or a backup put back with it gave it a read-only attribute. Locking needs no
/// writing: DentalTID's sync must still open, and still refuse a second sync while it is open.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_lock_file_the_sync_may_only_read_still_lets_one_sync_open_at_a_time() {
    use std::os::unix::fs::PermissionsExt;
    common::obey_file_modes_on_this_thread();
    let clinic = Clinic::new("v29");
    drop(clinic.open_without_automatic_work());
    let lock = clinic.dir.path().join("dentaltid.db.nanopix-sync.lock");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o444)).unwrap();
    let first = NanoPixSync::open(clinic.config_without_automatic_work());
    assert!(first.is_ok(), "a lock file the sync may only read: {first:?}");
    let second = NanoPixSync::open(clinic.config_without_automatic_work());
    assert!(matches!(second, Err(Error::InUse(_))), "{second:?}");
    drop(first);
    assert_eq!(clinic.open_without_automatic_work().reconcile().unwrap().imported, 1);
}

/// `dentaltid.db` sits in a folder the sync may read but not write to (its rights, a share that
/// lets this user only read), and no sync ever made the lock file there: `open` cannot make it,
/// and must say it was refused. "No such file or directory" would send support staff looking for
/// a file that only the sync itself makes, instead of at the folder's rights.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_lock_file_the_folder_refuses_to_make_is_reported_as_refused_not_as_missing() {
    use std::os::unix::fs::PermissionsExt;
    common::obey_file_modes_on_this_thread();
    let clinic = Clinic::new("v29");
    let folder = clinic.dir.path();
    let set_mode = |mode| std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o555);
    let error = open_error(&clinic);
    set_mode(0o755);
    let lock = folder.join("dentaltid.db.nanopix-sync.lock");
    assert!(
        matches!(&error, Error::Io { path, source, .. }
            if *path == lock && source.kind() == std::io::ErrorKind::PermissionDenied),
        "{error}"
    );
    assert_eq!(error.code(), "io");
    assert_eq!(clinic.open().reconcile().unwrap().imported, 1, "the folder writable again, the sync opens");
}

/// The names in `folder`, sorted.
fn listing(folder: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(folder).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    names.sort();
    names
}
