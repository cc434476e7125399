//! Checking and migrating `dentaltid.db`: the `patients` table must be DentalTID's, then the
//! sync's two columns and its own `nanopix_sync_*` tables are added if missing. The sync's two
//! indexes on `patients` serve live passes, so they are added once Live Sync is on.
//!
//! The checks never write. The migration is additive and idempotent, runs in one `BEGIN
//! IMMEDIATE` transaction, and writes nothing at all when everything already exists. It never
//! changes `PRAGMA user_version`, the journal mode or the page size, never creates DentalTID's
//! own tables, never adds a UNIQUE constraint DentalTID's existing rows could break, and never
//! removes a row.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::DentalTid;
use crate::values::{column_is_rowid, table_columns};
use crate::{Error, Result};

/// The `patients` columns the sync reads or writes (DentalTID's `Patient.toJson`, plus `id`).
const REQUIRED_COLUMNS: [&str; 15] = [
    "id",
    "name",
    "familyName",
    "age",
    "dateOfBirth",
    "healthState",
    "diagnosis",
    "treatment",
    "payment",
    "createdAt",
    "isEmergency",
    "severity",
    "healthAlerts",
    "phoneNumber",
    "isBlacklisted",
];

/// DentalTID's own definition of `source` (its migration to version 25).
const ADD_SOURCE: &str = "ALTER TABLE patients ADD COLUMN source TEXT DEFAULT 'internal'";

/// DentalTID's own definition of `external_id` (its migration to version 25).
const ADD_EXTERNAL_ID: &str = "ALTER TABLE patients ADD COLUMN external_id TEXT";

/// The sync's indexes on `patients`. The `external_id` index is not UNIQUE: older versions may
/// have written duplicate `external_id`s, and every row must be kept. The `dateOfBirth` index lets
/// a live pass find the few patients a new NanoPix patient could match without a full scan.
///
/// A full reconcile reads every patient and needs neither, so they exist only from the moment
/// Live Sync is on (the engine adds them after the first reconcile with Live Sync on), the first
/// export (a new NanoPix id is looked up by `external_id`) or the first delete request announced
/// (checked the same way): a clinic that only ever imports on demand does not pay for keeping them.
const OWN_INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS nanopix_sync_patients_external_id ON patients(external_id);
    CREATE INDEX IF NOT EXISTS nanopix_sync_patients_date_of_birth ON patients(dateOfBirth);
";

/// Drops [`OWN_INDEXES`] (and nothing else) for a bulk import.
const DROP_OWN_INDEXES: &str = "
    DROP INDEX IF EXISTS nanopix_sync_patients_external_id;
    DROP INDEX IF EXISTS nanopix_sync_patients_date_of_birth;
";

/// The sync's own tables, the index that finds a link row by its NanoPix id (every new NanoPix
/// id is looked up there), and the one that finds the links asking for a delete (every export
/// looks at them).
const OWN_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS nanopix_sync_state(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS nanopix_sync_links(
        patient_id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        state TEXT NOT NULL,
        synced_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_exports(
        patient_id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL UNIQUE,
        started_at TEXT NOT NULL,
        written_last_name TEXT,
        written_first_name TEXT,
        written_birthdate TEXT,
        written_created TEXT
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_imports(
        first_patient_id INTEGER PRIMARY KEY,
        last_patient_id INTEGER NOT NULL,
        synced_at TEXT NOT NULL,
        external_ids TEXT NOT NULL,
        created_times TEXT
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_awaited_folders(external_id TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS nanopix_sync_unsettled_links(
        first_patient_id INTEGER NOT NULL,
        last_patient_id INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_unannounced_deletes(patient_id INTEGER PRIMARY KEY, external_id TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS nanopix_sync_linked_rows(
        patient_id INTEGER PRIMARY KEY,
        external_id TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_possible_duplicates(id INTEGER PRIMARY KEY, reports TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS nanopix_sync_dismissed_duplicates(
        patient_id INTEGER PRIMARY KEY,
        through_row INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS nanopix_sync_dismissed_deletes(patient_id INTEGER PRIMARY KEY, external_id TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS nanopix_sync_links_external_id ON nanopix_sync_links(external_id);
    CREATE INDEX IF NOT EXISTS nanopix_sync_links_delete_requested ON nanopix_sync_links(external_id)
        WHERE state = 'delete_requested';
";

/// The columns of the sync's own tables that their first versions lacked, as `(table, column,
/// the statement that adds it)`. Rows written before a column existed hold NULL there:
/// - the export journal's values an export writes to NanoPix, by which a repair recognises its
///   own row;
/// - the creation times of the NanoPix rows an import batch's links were made with.
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("nanopix_sync_exports", "written_last_name", "ALTER TABLE nanopix_sync_exports ADD COLUMN written_last_name TEXT"),
    (
        "nanopix_sync_exports",
        "written_first_name",
        "ALTER TABLE nanopix_sync_exports ADD COLUMN written_first_name TEXT",
    ),
    ("nanopix_sync_exports", "written_birthdate", "ALTER TABLE nanopix_sync_exports ADD COLUMN written_birthdate TEXT"),
    ("nanopix_sync_exports", "written_created", "ALTER TABLE nanopix_sync_exports ADD COLUMN written_created TEXT"),
    ("nanopix_sync_imports", "created_times", "ALTER TABLE nanopix_sync_imports ADD COLUMN created_times TEXT"),
];

/// The indexes [`OWN_INDEXES`] creates, as `(type, name)` in `sqlite_master`.
const OWN_INDEX_OBJECTS: [(&str, &str); 2] =
    [("index", "nanopix_sync_patients_external_id"), ("index", "nanopix_sync_patients_date_of_birth")];

/// The tables and the index [`OWN_TABLES`] creates, as `(type, name)` in `sqlite_master`.
const OWN_OBJECTS: [(&str, &str); 13] = [
    ("table", "nanopix_sync_state"),
    ("table", "nanopix_sync_links"),
    ("table", "nanopix_sync_exports"),
    ("table", "nanopix_sync_imports"),
    ("table", "nanopix_sync_awaited_folders"),
    ("table", "nanopix_sync_unsettled_links"),
    ("table", "nanopix_sync_unannounced_deletes"),
    ("table", "nanopix_sync_linked_rows"),
    ("table", "nanopix_sync_possible_duplicates"),
    ("table", "nanopix_sync_dismissed_duplicates"),
    ("table", "nanopix_sync_dismissed_deletes"),
    ("index", "nanopix_sync_links_external_id"),
    ("index", "nanopix_sync_links_delete_requested"),
];

impl DentalTid {
    /// Adds what is missing; does not write at all when nothing is.
    pub(super) fn migrate(&mut self) -> Result<()> {
        let up_to_date = is_migrated(&self.conn).map_err(Error::db(&self.path, "checking the migration"))?;
        if up_to_date {
            return Ok(());
        }
        self.write("migrating the database", |tx| {
            let columns = table_columns(tx, "patients")?;
            if !columns.contains("source") {
                tx.execute_batch(ADD_SOURCE)?;
            }
            if !columns.contains("external_id") {
                tx.execute_batch(ADD_EXTERNAL_ID)?;
            }
            tx.execute_batch(OWN_TABLES)?;
            for (table, column, add) in ADDED_COLUMNS {
                if !table_columns(tx, table)?.contains(column) {
                    tx.execute_batch(add)?;
                }
            }
            Ok(())
        })
    }

    /// Whether the sync's indexes on `patients` exist.
    pub fn has_own_indexes(&self) -> Result<bool> {
        all_exist(&self.conn, &OWN_INDEX_OBJECTS).map_err(Error::db(&self.path, "looking for the sync's indexes"))
    }

    /// Adds the sync's indexes on `patients` if either is missing; writes nothing otherwise.
    pub fn ensure_own_indexes(&mut self) -> Result<()> {
        if self.has_own_indexes()? {
            return Ok(());
        }
        self.build_own_indexes()
    }

    /// Drops the sync's own indexes before a bulk import: building them once afterwards is far
    /// cheaper than keeping them up to date row by row. [`DentalTid::build_own_indexes`] puts
    /// them back; after a crash in between, [`DentalTid::ensure_own_indexes`] does, before the
    /// next live pass or at the end of the next reconcile with Live Sync on.
    pub fn drop_own_indexes(&mut self) -> Result<()> {
        self.write("dropping the sync's indexes for a bulk import", |tx| tx.execute_batch(DROP_OWN_INDEXES))
    }

    /// Builds the sync's own indexes (again, after a bulk import).
    pub fn build_own_indexes(&mut self) -> Result<()> {
        self.write("building the sync's indexes", |tx| tx.execute_batch(OWN_INDEXES))
    }
}

/// Checks, without writing, that the database at `path` has a `patients` table with every
/// column the sync uses.
pub(super) fn check_patients_table(conn: &Connection, path: &Path) -> Result<()> {
    let step = "checking the patients table";
    if !schema_object_exists(conn, "table", "patients").map_err(Error::db(path, step))? {
        if holds_nanopix_patients(conn).map_err(Error::db(path, step))? {
            return Err(Error::NanoPixDatabaseAsDentalTid(path.to_path_buf()));
        }
        if schema_object_exists(conn, "view", "patients").map_err(Error::db(path, step))? {
            return Err(Error::TableIsAView { path: path.to_path_buf(), table: "patients" });
        }
        return Err(Error::MissingTable { path: path.to_path_buf(), table: "patients" });
    }
    let columns = table_columns(conn, "patients").map_err(Error::db(path, step))?;
    if let Some(column) = REQUIRED_COLUMNS.into_iter().find(|column| !columns.contains(&column.to_lowercase())) {
        return Err(Error::MissingColumn { path: path.to_path_buf(), table: "patients", column });
    }
    // Links and imports are kept by that id, which SQLite gives to every new row.
    if !column_is_rowid(conn, "patients", "id").map_err(Error::db(path, step))? {
        let expected = "the row id (`INTEGER PRIMARY KEY` in a table with row ids), as in DentalTID's schema";
        return Err(Error::UnexpectedColumn { path: path.to_path_buf(), table: "patients", column: "id", expected });
    }
    Ok(())
}

/// Whether the database holds NanoPix's `Patient` table, with its `id` and `last_name`: a
/// `NanoPix.db3` given for DentalTID's database.
fn holds_nanopix_patients(conn: &Connection) -> rusqlite::Result<bool> {
    let columns = table_columns(conn, "Patient")?;
    Ok(columns.contains("id") && columns.contains("last_name"))
}

/// Whether both columns, every table of [`OWN_TABLES`] and every column of
/// [`ADDED_COLUMNS`] exist.
fn is_migrated(conn: &Connection) -> rusqlite::Result<bool> {
    let columns = table_columns(conn, "patients")?;
    if !(columns.contains("source") && columns.contains("external_id") && all_exist(conn, &OWN_OBJECTS)?) {
        return Ok(false);
    }
    for (table, column, _) in ADDED_COLUMNS {
        if !table_columns(conn, table)?.contains(column) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every `(type, name)` of `objects` is in `sqlite_master`.
fn all_exist(conn: &Connection, objects: &[(&str, &str)]) -> rusqlite::Result<bool> {
    for (kind, name) in objects {
        if !schema_object_exists(conn, kind, name)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `sqlite_master` lists a `kind` object called `name` (names compare as SQLite does).
pub(super) fn schema_object_exists(conn: &Connection, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2 COLLATE NOCASE LIMIT 1",
        [kind, name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use rusqlite::Connection;
    use tempfile::TempDir;

    use super::super::testing::{SCHEMA_V24, SCHEMA_V29, build_database, nanopix_id, open};
    use super::*;
    use crate::patient::{PatientFilter, Source};
    use crate::values::text_at;

    fn pragma(path: &Path, name: &str) -> String {
        let conn = Connection::open(path).unwrap();
        conn.query_row(&format!("PRAGMA {name}"), [], |row| text_at(row, 0)).unwrap().unwrap()
    }

    fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2025, 1, 21).unwrap()
    }

    #[test]
    fn both_schemas_migrate_and_keep_the_sample_patients() {
        for (schema, version) in [(SCHEMA_V24, "24"), (SCHEMA_V29, "29")] {
            let dir = TempDir::new().unwrap();
            let path = build_database(&dir, schema, true);
            let (journal, page_size) = (pragma(&path, "journal_mode"), pragma(&path, "page_size"));
            let dentaltid = open(&path);
            let patients = dentaltid.patients(PatientFilter::All, today()).unwrap();
            assert_eq!(patients.len(), 6, "{schema}");
            assert!(patients.iter().all(|p| p.source == Source::Internal && p.external_id.is_none()), "{schema}");
            drop(dentaltid);
            assert_eq!(pragma(&path, "user_version"), version);
            assert_eq!(pragma(&path, "journal_mode"), journal);
            assert_eq!(pragma(&path, "page_size"), page_size);
            let conn = Connection::open(&path).unwrap();
            assert!(is_migrated(&conn).unwrap(), "{schema}");
        }
    }

    #[test]
    fn reopening_a_migrated_file_leaves_its_bytes_identical() {
        for schema in [SCHEMA_V24, SCHEMA_V29] {
            let dir = TempDir::new().unwrap();
            let path = build_database(&dir, schema, true);
            let before_migration = std::fs::read(&path).unwrap();
            drop(open(&path));
            let migrated = std::fs::read(&path).unwrap();
            assert_ne!(before_migration, migrated, "the first open must migrate {schema}");
            drop(open(&path));
            assert_eq!(std::fs::read(&path).unwrap(), migrated, "{schema}");
        }
    }

    #[test]
    fn opening_a_migrated_file_takes_no_write_lock() {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V29, true);
        drop(open(&path));
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        let reopened = DentalTid::open(&path, Duration::from_millis(50));
        assert!(reopened.is_ok(), "{reopened:?}");
        writer.execute_batch("ROLLBACK").unwrap();
    }

    /// Another program's `Patient` table without `last_name` is not NanoPix's: the file is
    /// refused for lacking `patients`, as one without any such table.
    #[test]
    fn a_file_without_patients_is_refused_and_left_untouched() {
        for other in ["CREATE TABLE other(x);", "CREATE TABLE Patient(id INTEGER PRIMARY KEY, name TEXT);"] {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("dentaltid.db");
            Connection::open(&path).unwrap().execute_batch(&format!("PRAGMA user_version = 29; {other}")).unwrap();
            let before = std::fs::read(&path).unwrap();
            let error = DentalTid::open(&path, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(error, Error::MissingTable { table: "patients", .. }), "{other}: {error:?}");
            assert_eq!(std::fs::read(&path).unwrap(), before, "{other}");
        }
    }

    #[test]
    fn a_patients_table_without_created_at_is_refused_and_left_untouched() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("dentaltid.db");
        let sql = "CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT, familyName TEXT, age INTEGER);";
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = DentalTid::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, Error::MissingColumn { column: "dateOfBirth", .. }), "{error:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// A `patients` view over another table is not DentalTID's table (the migration cannot add a
    /// column to it): refused as a view, never as missing, which a look at the file would belie.
    #[test]
    fn a_patients_view_is_refused_as_a_view_and_left_untouched() {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V24, true);
        let view = "ALTER TABLE patients RENAME TO old_patients; CREATE VIEW patients AS SELECT * FROM old_patients;";
        Connection::open(&path).unwrap().execute_batch(view).unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = DentalTid::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(error, Error::TableIsAView { table: "patients", .. }), "{error:?}");
        assert_eq!(error.code(), "schema");
        assert!(error.to_string().contains("is a view, not a table"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_patients_table_whose_id_is_not_its_row_id_is_refused_and_left_untouched() {
        let rest = REQUIRED_COLUMNS[1..].join(", ");
        let tables = [
            format!("CREATE TABLE patients(id INT PRIMARY KEY, {rest})"),
            format!("CREATE TABLE patients(id INTEGER PRIMARY KEY DESC, {rest})"),
            format!("CREATE TABLE patients(id INTEGER PRIMARY KEY, {rest}) WITHOUT ROWID"),
            format!("CREATE TABLE patients(id INTEGER, {rest}, PRIMARY KEY(id, name))"),
        ];
        for sql in &tables {
            let dir = TempDir::new().unwrap();
            let path = dir.path().join("dentaltid.db");
            Connection::open(&path).unwrap().execute_batch(sql).unwrap();
            let before = std::fs::read(&path).unwrap();
            let error = DentalTid::open(&path, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(error, Error::UnexpectedColumn { column: "id", .. }), "{sql}: {error:?}");
            assert_eq!(std::fs::read(&path).unwrap(), before, "{sql}");
        }
    }

    #[test]
    fn a_file_migrated_without_the_index_of_delete_requests_gains_it() {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V29, true);
        drop(open(&path));
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP INDEX nanopix_sync_links_delete_requested").unwrap();
        assert!(!is_migrated(&conn).unwrap());
        drop(conn);
        let dentaltid = open(&path);
        assert!(schema_object_exists(&dentaltid.conn, "index", "nanopix_sync_links_delete_requested").unwrap());
    }

    #[test]
    fn a_missing_file_is_reported_and_not_created() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("dentaltid.db");
        let error = DentalTid::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(&error, Error::DentalTidDatabaseMissing(missing) if missing == &path), "{error:?}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn duplicate_external_ids_survive_the_migration() {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V29, true);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("UPDATE patients SET external_id = '20250121_152638' WHERE id IN (1, 2, 3)").unwrap();
        drop(conn);
        let mut dentaltid = open(&path);
        dentaltid.ensure_own_indexes().unwrap();
        let patients = dentaltid.all_patients().unwrap();
        assert_eq!(patients.len(), 6);
        let linked = patients.iter().filter(|p| p.external_id.as_deref() == Some("20250121_152638")).count();
        assert_eq!(linked, 3);
        let index_sql: String = dentaltid
            .conn
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'nanopix_sync_patients_external_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!index_sql.to_uppercase().contains("UNIQUE"), "{index_sql}");
    }

    /// A v29 file migrated, then turned by `older` into what an older version left; returns it
    /// opened (so migrated) again, with its folder and path.
    fn migrated_again_after(older: &str) -> (TempDir, PathBuf, DentalTid) {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V29, true);
        drop(open(&path));
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(older).unwrap();
        assert!(!is_migrated(&conn).unwrap());
        drop(conn);
        let dentaltid = open(&path);
        assert!(is_migrated(&dentaltid.conn).unwrap());
        (dir, path, dentaltid)
    }

    /// Closes `dentaltid` and checks that opening its file again writes nothing.
    fn assert_a_second_open_writes_nothing(dentaltid: DentalTid, path: &Path) {
        drop(dentaltid);
        let migrated = std::fs::read(path).unwrap();
        drop(open(path));
        assert_eq!(std::fs::read(path).unwrap(), migrated, "a second open writes nothing");
    }

    #[test]
    fn a_file_migrated_without_the_imports_table_gains_it_and_keeps_its_links() {
        let older = "DROP TABLE nanopix_sync_imports; INSERT INTO nanopix_sync_links
            VALUES (1, '20250121_152638', 'matched', 'linked', '2025-01-21T12:00:00.000')";
        let (_dir, _, dentaltid) = migrated_again_after(older);
        assert!(schema_object_exists(&dentaltid.conn, "table", "nanopix_sync_imports").unwrap());
        let links: Vec<i64> = dentaltid.links().unwrap().readable.iter().map(|link| link.patient_id).collect();
        assert_eq!(links, [1]);
    }

    #[test]
    fn a_file_migrated_before_delete_requests_could_be_dismissed_gains_their_table() {
        let (_dir, path, dentaltid) = migrated_again_after("DROP TABLE nanopix_sync_dismissed_deletes");
        assert!(schema_object_exists(&dentaltid.conn, "table", "nanopix_sync_dismissed_deletes").unwrap());
        assert_a_second_open_writes_nothing(dentaltid, &path);
    }

    #[test]
    fn an_export_journal_of_an_older_version_gains_its_columns_and_keeps_its_rows() {
        let older = "DROP TABLE nanopix_sync_exports;
            CREATE TABLE nanopix_sync_exports(
                patient_id INTEGER PRIMARY KEY, external_id TEXT NOT NULL UNIQUE, started_at TEXT NOT NULL);
            INSERT INTO nanopix_sync_exports VALUES (1, '20250122_100000', '2025-01-22T10:00:00.000')";
        let (_dir, path, dentaltid) = migrated_again_after(older);
        let external_id = nanopix_id("20250122_100000");
        let pending = dentaltid.pending_exports().unwrap();
        assert_eq!(pending, [super::super::PendingExport { patient_id: 1, external_id, written: None }]);
        assert_a_second_open_writes_nothing(dentaltid, &path);
    }

    #[test]
    fn import_batches_of_an_older_version_gain_creation_times_and_keep_their_links() {
        let older = "DROP TABLE nanopix_sync_imports;
            CREATE TABLE nanopix_sync_imports(first_patient_id INTEGER PRIMARY KEY, last_patient_id INTEGER NOT NULL,
                synced_at TEXT NOT NULL, external_ids TEXT NOT NULL);
            INSERT INTO nanopix_sync_imports VALUES (1, 1, '2025-01-21T12:00:00.000', '20250121_152638')";
        let (_dir, path, dentaltid) = migrated_again_after(older);
        let links: Vec<(i64, String)> =
            dentaltid.links().unwrap().readable.into_iter().map(|link| (link.patient_id, link.external_id)).collect();
        assert_eq!(links, [(1, "20250121_152638".to_owned())]);
        assert_eq!(dentaltid.linked_rows().unwrap().created(1, nanopix_id("20250121_152638")), None, "not recorded");
        assert_a_second_open_writes_nothing(dentaltid, &path);
    }

    #[test]
    fn a_v24_file_gets_dentaltids_own_column_definitions() {
        let dir = TempDir::new().unwrap();
        let path = build_database(&dir, SCHEMA_V24, true);
        drop(open(&path));
        let conn = Connection::open(&path).unwrap();
        let sql = "SELECT type, dflt_value FROM pragma_table_info('patients') WHERE name = ?1";
        let read = |column: &str| conn.query_row(sql, [column], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(read("source"), ("TEXT".to_owned(), Some("'internal'".to_owned())));
        assert_eq!(read("external_id"), ("TEXT".to_owned(), None::<String>));
    }
}
