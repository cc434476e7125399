//! SQL on `NanoPix.db3`: opening it, reading `Patient` rows leniently, and short
//! `BEGIN IMMEDIATE` writes retried while another program holds the lock.
//!
//! This module never writes a PRAGMA (the busy timeout is set through the connection API),
//! never touches the schema, never names a column `PRAGMA table_info` did not list, and never
//! does file I/O inside a transaction.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params_from_iter};

use super::{IdRows, OddRow, PatientRows, RECORD_TABLES, RowStamp};
use crate::patient::{self, NanoPixPatient, NewNanoPixPatient, WrittenRow};
use crate::values::{
    IDS_PER_READ, column_is_rowid, lossy_text, numbered_places, padded_with_null, table_columns, text_at,
};
use crate::{Error, NanoPixId, Result};

/// Each foreign key that names a `Patient` column: the table, its column, and the `Patient` column
/// (the primary key when the key names none).
const PATIENT_REFERENCES: &str = "SELECT m.name, f.\"from\",
        ifnull(f.\"to\", (SELECT p.name FROM pragma_table_info('Patient') AS p WHERE p.pk = 1))
    FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f
    WHERE m.type = 'table' AND f.\"table\" = 'Patient' COLLATE NOCASE";

/// How many times a write is tried before it gives [`Error::Busy`].
const WRITE_ATTEMPTS: u32 = 4;
/// The pause after the first busy attempt; it doubles after each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The columns read from `Patient`, in the order [`patient_from_row`] expects them.
const READ_COLUMNS: [&str; 8] =
    ["pk", "id", "last_name", "first_name", "sex", "birthdate", "phone", "created_datetime"];

/// Which `Patient` rows to read.
#[derive(Debug, Clone, Copy)]
pub(super) enum Selection<'a> {
    /// Up to `limit` rows whose `pk` is greater than `after`, or from the first row without it;
    /// never a row whose `pk` is NULL.
    AfterPk { after: Option<i64>, limit: u32 },
    /// The row with this id.
    WithId(NanoPixId),
    /// The rows with one of these ids, at most [`IDS_PER_READ`] of them.
    WithIds(&'a [NanoPixId]),
}

/// What inserting an exported patient's row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insertion {
    /// The row was written.
    Inserted,
    /// A row with its id is there already, or a folder with its name; nothing was written.
    IdTaken,
    /// Another program wrote to NanoPix since the data version given; nothing was written.
    NanoPixChanged,
}

/// What the delete transaction found.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Deletion {
    /// The rows with the id were deleted: here they are, to put back if need be.
    Deleted(DeletedRows),
    /// No row had the id.
    Missing,
    /// Several rows had the id; nothing was deleted.
    Shared(usize),
    /// Studies, reports or other records still point at the patient; nothing was deleted.
    Holds { studies: u64, reports: u64, other_records: u64 },
}

/// Deleted `Patient` rows: the values of every column `PRAGMA table_info` shows but `pk`. A row
/// put back gets a new `pk`, since NanoPix may have given the old one to a new patient meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DeletedRows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

/// A step that writes to `NanoPix.db3` without waiting for its lock (see [`write_while`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct WriteStep<'a> {
    /// The connection the step writes through.
    pub conn: &'a Connection,
    /// The database's path, which its errors name.
    pub db_path: &'a Path,
    /// The connection's own busy timeout, put back after each try (which waits for nothing).
    pub busy_timeout: Duration,
    /// What the step does, which its errors name.
    pub step: &'static str,
}

/// Opens an existing `NanoPix.db3` read-write, never creating it, with a busy timeout; an empty
/// one (0 bytes) is refused (see [`crate::error::refuse_empty`]).
pub(super) fn connect(db_path: &Path, busy_timeout: Duration) -> Result<Connection> {
    crate::error::refuse_empty(db_path, "opening the NanoPix database")?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(db_path, flags).map_err(Error::db(db_path, "opening the NanoPix database"))?;
    conn.busy_timeout(busy_timeout).map_err(Error::db(db_path, "setting the busy timeout"))?;
    Ok(conn)
}

/// The lower-cased column names of `Patient`, after checking that `id` and `last_name` exist
/// (a file without `Patient` that holds DentalTID's `patients` is named as DentalTID's).
/// A `pk` that is not the table's `rowid` (a plain column, which may hold NULL, text or
/// repeats) is left out: rows are then read in `rowid` order, and written without it.
pub(super) fn patient_columns(conn: &Connection, db_path: &Path) -> Result<HashSet<String>> {
    let mut columns = table_columns(conn, "Patient").map_err(Error::db(db_path, "reading the Patient columns"))?;
    if columns.is_empty() {
        if holds_dentaltid_patients(conn).map_err(Error::db(db_path, "looking for DentalTID's patients table"))? {
            return Err(Error::DentalTidDatabaseAsNanoPix(db_path.to_path_buf()));
        }
        return Err(Error::MissingTable { path: db_path.to_path_buf(), table: "Patient" });
    }
    for column in ["id", "last_name"] {
        if !columns.contains(column) {
            return Err(Error::MissingColumn { path: db_path.to_path_buf(), table: "Patient", column });
        }
    }
    // Rows are read in `pk` order, or `rowid` order in a table without `pk`; a table without
    // either (WITHOUT ROWID, or a view) cannot be read page by page.
    let has_rowid = conn.prepare("SELECT rowid FROM Patient LIMIT 0").is_ok();
    if !columns.contains("pk") && !has_rowid {
        return Err(Error::MissingColumn { path: db_path.to_path_buf(), table: "Patient", column: "pk" });
    }
    if has_rowid
        && !column_is_rowid(conn, "Patient", "pk").map_err(Error::db(db_path, "reading the Patient columns"))?
    {
        columns.remove("pk");
    }
    Ok(columns)
}

/// Whether the database holds DentalTID's `patients` table, with its `familyName`: a
/// `dentaltid.db` in the place of `NanoPix.db3`.
fn holds_dentaltid_patients(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(table_columns(conn, "patients")?.contains("familyname"))
}

/// Runs `work` in a short `BEGIN IMMEDIATE` transaction, retrying with a growing pause while
/// the database is busy; gives [`Error::Busy`] once the attempts are used up.
pub(super) fn write<T>(
    conn: &Connection,
    db_path: &Path,
    step: &'static str,
    mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
) -> Result<T> {
    let mut backoff = FIRST_BACKOFF;
    for _ in 1..WRITE_ATTEMPTS {
        match immediate(conn, &mut work) {
            Err(error) if crate::error::is_busy(&error) => thread::sleep(backoff),
            result => return result.map_err(Error::db(db_path, step)),
        }
        backoff *= 2;
    }
    immediate(conn, &mut work).map_err(Error::db(db_path, step))
}

/// Runs `work` in a `BEGIN IMMEDIATE` transaction that never waits for a lock, and only while
/// `still` says so: its first check runs before each try, outside the lock; its second under the
/// lock, after `work` and just before the commit, so that what another program did on disk
/// meanwhile is seen (a try it says no to then rolls back). A try that finds the database busy,
/// taking the write lock or committing (while another program reads), rolls back; the tries go
/// on, with short pauses, for as long as [`write()`] would wait in all (the connection's
/// `busy_timeout` for each of its attempts). `Ok(None)` when `still` said no; [`Error::Busy`]
/// when no try got through.
pub(super) fn write_while<T>(
    write: WriteStep<'_>,
    (mut still, mut still_under_lock): (impl FnMut() -> Result<bool>, impl FnMut() -> Result<bool>),
    mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    let (deadline, mut pause) = (Instant::now() + write.busy_timeout * WRITE_ATTEMPTS, Duration::from_millis(1));
    loop {
        let checks = (&mut still, &mut still_under_lock);
        match write_once_while(write, checks, &mut work) {
            Err(Error::Busy { .. }) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(FIRST_BACKOFF);
            }
            written => return written,
        }
    }
}

/// One try of [`write_while`], which never waits for the lock: [`Error::Busy`] when the database
/// is busy, taking the write lock or committing. The connection's own `busy_timeout` is put
/// back after the try.
pub(super) fn write_once_while<T>(
    write: WriteStep<'_>,
    (mut still, mut still_under_lock): (impl FnMut() -> Result<bool>, impl FnMut() -> Result<bool>),
    mut work: impl FnMut(&Connection) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    if !still()? {
        return Ok(None);
    }
    let WriteStep { conn, db_path, busy_timeout, step } = write;
    conn.busy_timeout(Duration::ZERO).map_err(Error::db(db_path, step))?;
    let attempt = immediate_while(conn, &mut still_under_lock, &mut work);
    conn.busy_timeout(busy_timeout).map_err(Error::db(db_path, step))?;
    attempt.map_err(Error::db(db_path, step))?
}

/// One try of [`write_while`]: `work` in a `BEGIN IMMEDIATE` transaction, committed only when
/// `still` says so under the lock; else rolled back, giving `Ok(Ok(None))`.
fn immediate_while<T>(
    conn: &Connection,
    still: &mut impl FnMut() -> Result<bool>,
    work: &mut impl FnMut(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<Result<Option<T>>> {
    let transaction = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let value = work(&transaction)?;
    match still() {
        Ok(true) => transaction.commit().map(|()| Ok(Some(value))),
        checked => Ok(checked.map(|_| None)),
    }
}

/// One attempt: the transaction rolls back when dropped unless `work` and the commit succeed.
fn immediate<T>(conn: &Connection, work: &mut impl FnMut(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let transaction = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let value = work(&transaction)?;
    transaction.commit()?;
    Ok(value)
}

/// Reads the selected `Patient` rows in `pk` order; a row that is not a patient becomes an [`OddRow`].
pub(super) fn read_patients(
    conn: &Connection,
    columns: &HashSet<String>,
    selection: Selection,
) -> rusqlite::Result<PatientRows> {
    let pk = pk_column(columns);
    let (tail, parameters) = match selection {
        Selection::AfterPk { after: Some(after), limit } => {
            (format!("WHERE {pk} > ?1 ORDER BY {pk} LIMIT {limit}"), vec![Value::Integer(after)])
        }
        // A NULL `pk` sorts first: left out, as `pk > ?1` leaves it out of the later pages.
        Selection::AfterPk { after: None, limit } => {
            (format!("WHERE {pk} IS NOT NULL ORDER BY {pk} LIMIT {limit}"), Vec::new())
        }
        Selection::WithId(id) => (format!("WHERE id = ?1 ORDER BY {pk}"), vec![Value::Text(id.to_string())]),
        // One statement for any number of ids up to the limit: the places left over hold NULL,
        // which no id equals.
        Selection::WithIds(ids) => {
            let places = numbered_places(1, IDS_PER_READ).join(", ");
            let named = ids.iter().map(|id| Value::Text(id.to_string()));
            (format!("WHERE id IN ({places}) ORDER BY {pk}"), padded_with_null(named, IDS_PER_READ))
        }
    };
    let select: Vec<&str> = READ_COLUMNS.iter().map(|&column| selected(columns, column)).collect();
    let sql = format!("SELECT {} FROM Patient {tail}", select.join(", "));
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(parameters))?;
    let mut found = PatientRows::default();
    while let Some(row) = rows.next()? {
        match patient_from_row(row)? {
            Ok(patient) => found.patients.push(patient),
            Err(odd) => found.odd_rows.push(odd),
        }
    }
    Ok(found)
}

/// `pk`, or `rowid` for a table without one.
fn pk_column(columns: &HashSet<String>) -> &'static str {
    if columns.contains("pk") { "pk" } else { "rowid" }
}

/// The expression that reads `column`: itself when it exists, else `NULL` (`rowid` for `pk`).
fn selected(columns: &HashSet<String>, column: &'static str) -> &'static str {
    match column {
        "pk" => pk_column(columns),
        _ if columns.contains(column) => column,
        _ => "NULL",
    }
}

/// Every row's `pk` and id, and its creation time when `with_created`, in `pk` order; a row
/// that is not a patient becomes an [`OddRow`].
pub(super) fn read_ids(conn: &Connection, columns: &HashSet<String>, with_created: bool) -> rusqlite::Result<IdRows> {
    let pk = pk_column(columns);
    let created = if with_created { selected(columns, "created_datetime") } else { "NULL" };
    let sql = format!("SELECT {pk}, id, {created} FROM Patient ORDER BY {pk}");
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query([])?;
    let mut found = IdRows::default();
    let mut first_pks = HashMap::new();
    while let Some(row) = rows.next()? {
        match row_key(row)? {
            Ok((pk, id)) => match first_pks.entry(id) {
                Entry::Vacant(first) => {
                    first.insert(pk);
                    found.ids.push((pk, id));
                    if let ValueRef::Text(text) = row.get_ref(2)?
                        && let Some(created) = std::str::from_utf8(text).ok().and_then(patient::parse_nanopix_datetime)
                    {
                        found.created.insert(id, created);
                    }
                }
                Entry::Occupied(first) => found.odd_rows.push(OddRow {
                    pk: Some(pk),
                    raw_id: Some(id.to_string()),
                    problem: format!("its id is already the patient of row pk {}", first.get()),
                }),
            },
            Err(odd) => found.odd_rows.push(odd),
        }
    }
    Ok(found)
}

/// The `pk` and id of a row whose first two columns are `pk` and `id`, or why it is odd.
fn row_key(row: &Row<'_>) -> rusqlite::Result<Result<(i64, NanoPixId), OddRow>> {
    let raw_id = row.get_ref(1)?;
    let odd = |pk: Option<i64>, problem: &str| OddRow { pk, raw_id: lossy_text(raw_id), problem: problem.to_owned() };
    let ValueRef::Integer(pk) = row.get_ref(0)? else {
        return Ok(Err(odd(None, "pk is not an integer")));
    };
    Ok(parse_id(raw_id).map(|id| (pk, id)).map_err(|problem| odd(Some(pk), problem)))
}

/// Reads one row of [`READ_COLUMNS`]; only a failure to reach a column is an error.
fn patient_from_row(row: &Row<'_>) -> rusqlite::Result<Result<NanoPixPatient, OddRow>> {
    let (pk, id) = match row_key(row)? {
        Ok(key) => key,
        Err(odd) => return Ok(Err(odd)),
    };
    let text = |index: usize| row.get_ref(index).map(lossy_text);
    Ok(Ok(NanoPixPatient {
        pk,
        id,
        last_name: text(2)?.unwrap_or_default(),
        first_name: text(3)?.unwrap_or_default(),
        sex: text(4)?,
        birth_date: text(5)?.as_deref().and_then(patient::parse_nanopix_date),
        phone: text(6)?,
        created: text(7)?.as_deref().and_then(patient::parse_nanopix_datetime),
    }))
}

/// The id of a row, exactly as stored: text or a number that must parse as a [`NanoPixId`].
fn parse_id(value: ValueRef<'_>) -> Result<NanoPixId, &'static str> {
    match value {
        ValueRef::Null => Err("id is NULL"),
        ValueRef::Blob(_) => Err("id is stored as a blob"),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| NanoPixId::parse(text).ok())
            .ok_or("id is not a valid NanoPix id (YYYYMMDD_HHMMSS)"),
        other => lossy_text(other)
            .and_then(|text| NanoPixId::parse(&text).ok())
            .ok_or("id is not a valid NanoPix id (YYYYMMDD_HHMMSS)"),
    }
}

/// The row with this `pk`: its id as text (empty for NULL) and its creation time, if there is one.
pub(super) fn row_at(conn: &Connection, columns: &HashSet<String>, pk: i64) -> rusqlite::Result<Option<RowStamp>> {
    let (pk_column, created) = (pk_column(columns), selected(columns, "created_datetime"));
    let sql = format!("SELECT id, {created} FROM Patient WHERE {pk_column} = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    statement
        .query_row([pk], |row| {
            let id = lossy_text(row.get_ref(0)?).unwrap_or_default();
            let created = lossy_text(row.get_ref(1)?).and_then(|text| patient::parse_nanopix_datetime(&text));
            Ok(RowStamp { pk, id, created })
        })
        .optional()
}

/// Whether a `Patient` row has this id.
pub(super) fn id_exists(conn: &Connection, id: NanoPixId) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM Patient WHERE id = ?1)")?
        .query_row([id.to_string()], |row| row.get(0))
}

/// Inserts the row unless its id exists, or unless another program wrote to NanoPix since its
/// data version was `unchanged_since` (when given); only columns in `columns` are named, `pk`
/// never is. Meant to run inside [`write()`], so the check and the insert share the write lock.
pub(super) fn insert_patient(
    conn: &Connection,
    columns: &HashSet<String>,
    patient: &NewNanoPixPatient,
    unchanged_since: Option<i64>,
) -> rusqlite::Result<Insertion> {
    if let Some(version) = unchanged_since
        && crate::values::data_version(conn)? != version
    {
        return Ok(Insertion::NanoPixChanged);
    }
    if id_exists(conn, patient.id)? {
        return Ok(Insertion::IdTaken);
    }
    let (names, values): (Vec<&str>, Vec<Option<String>>) =
        insert_values(patient).into_iter().filter(|(name, _)| columns.contains(*name)).unzip();
    let placeholders: Vec<String> = (1..=names.len()).map(|index| format!("?{index}")).collect();
    let sql = format!("INSERT INTO Patient ({}) VALUES ({})", names.join(", "), placeholders.join(", "));
    conn.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    Ok(Insertion::Inserted)
}

/// Inserts each of `patients` as [`insert_patient`] does, in the one transaction it runs in;
/// returns whether each was inserted (one whose id exists is not). `None`, having written
/// nothing, when another program wrote to NanoPix since its data version was `unchanged_since`.
pub(super) fn insert_patients(
    conn: &Connection,
    columns: &HashSet<String>,
    patients: &[&NewNanoPixPatient],
    unchanged_since: i64,
) -> rusqlite::Result<Option<Vec<bool>>> {
    if crate::values::data_version(conn)? != unchanged_since {
        return Ok(None);
    }
    let inserted = patients.iter().map(|patient| insert_patient(conn, columns, patient, None));
    inserted
        .map(|insertion| insertion.map(|insertion| insertion == Insertion::Inserted))
        .collect::<rusqlite::Result<_>>()
        .map(Some)
}

/// Every column the sync may fill, with the value NanoPix itself would write: its form saves
/// an empty text, not NULL, for a field left blank (DentalTID has no sex, doctor, social id,
/// e-mail, zip code or address).
fn insert_values(patient: &NewNanoPixPatient) -> [(&'static str, Option<String>); 13] {
    let WrittenRow { last_name, first_name, birthdate, created } = patient.written();
    let blank = || Some(String::new());
    [
        ("id", Some(patient.id.to_string())),
        ("last_name", Some(last_name)),
        ("first_name", Some(first_name)),
        ("sex", blank()),
        ("birthdate", birthdate),
        ("doctor", blank()),
        ("social_id", blank()),
        ("phone", Some(patient.phone.clone().unwrap_or_default())),
        ("email", blank()),
        ("zipcode", blank()),
        ("address", blank()),
        ("created_datetime", Some(created.clone())),
        ("updated_datetime", Some(created)),
    ]
}

/// Whether a row with `id` is the one the sync wrote with `written`'s values, compared as
/// stored text. With a `created_datetime` column, it must hold the second the export ran (which
/// NanoPix never rewrites, and which its own patients, saved after the second of their id, do
/// not share) and at least one of `last_name`, `first_name` and `birthdate` that exist must
/// still hold what was written: a NanoPix user correcting the others before the repair does
/// not make the row a stranger's. Without `created_datetime`, every one of them must. Only a
/// repair asks this: a fresh export never takes a row it finds at its id for its own.
/// `updated_datetime` is not compared: NanoPix rewrites it when its user edits the patient.
pub(super) fn holds_written_row(
    conn: &Connection,
    columns: &HashSet<String>,
    id: NanoPixId,
    written: &WrittenRow,
) -> rusqlite::Result<bool> {
    let compared: Vec<(&str, Option<&str>)> = [
        ("last_name", Some(written.last_name.as_str())),
        ("first_name", Some(written.first_name.as_str())),
        ("birthdate", written.birthdate.as_deref()),
        ("created_datetime", Some(written.created.as_str())),
    ]
    .into_iter()
    .filter(|(name, _)| columns.contains(*name))
    .collect();
    let names: Vec<&str> = compared.iter().map(|(name, _)| *name).collect();
    let sql = format!("SELECT {} FROM Patient WHERE id = ?1", names.join(", "));
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([id.to_string()])?;
    while let Some(row) = rows.next()? {
        if row_holds(row, &compared)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `row` holds the values `expected` gives, column by column, as
/// [`holds_written_row`] decides.
fn row_holds(row: &Row<'_>, expected: &[(&str, Option<&str>)]) -> rusqlite::Result<bool> {
    let mut created = None;
    let mut fields = Vec::with_capacity(expected.len());
    for (index, (name, value)) in expected.iter().enumerate() {
        let holds = lossy_text(row.get_ref(index)?).as_deref() == *value;
        if *name == "created_datetime" {
            created = Some(holds);
        } else {
            fields.push(holds);
        }
    }
    Ok(match created {
        Some(created) => created && (fields.is_empty() || fields.contains(&true)),
        None => !fields.contains(&false),
    })
}

/// How many rows `Patient` holds.
pub(super) fn patient_count(conn: &Connection) -> rusqlite::Result<u64> {
    let count: i64 = conn.query_row("SELECT count(*) FROM Patient", [], |row| row.get(0))?;
    Ok(count.unsigned_abs())
}

/// Whether `table` (`Study` or `Report`) exists with a `patient_id` column.
fn names_patients(conn: &Connection, table: &'static str) -> rusqlite::Result<bool> {
    Ok(table_columns(conn, table)?.contains("patient_id"))
}

/// Rows of `table` (`Study` or `Report`) whose `patient_id` is `id`; 0 when the table or column is missing.
pub(super) fn count_for_patient(conn: &Connection, table: &'static str, id: NanoPixId) -> rusqlite::Result<u64> {
    if !names_patients(conn, table)? {
        return Ok(0);
    }
    let sql = format!("SELECT count(*) FROM {table} WHERE patient_id = ?1");
    let count: i64 = conn.query_row(&sql, [id.to_string()], |row| row.get(0))?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// A foreign key of a NanoPix table that names a `Patient` column.
#[derive(Debug)]
struct PatientReference {
    /// The table that holds the key.
    table: String,
    /// The key's column.
    column: String,
    /// The `Patient` column it names.
    parent: String,
}

/// The foreign keys that name a `Patient` column, but the `patient_id` of `Study` and `Report`
/// (read as studies and reports).
fn other_patient_references(conn: &Connection) -> rusqlite::Result<Vec<PatientReference>> {
    let mut statement = conn.prepare_cached(PATIENT_REFERENCES)?;
    let rows = statement.query_map([], |row| Ok((text_at(row, 0)?, text_at(row, 1)?, text_at(row, 2)?)))?;
    let mut references = Vec::new();
    for row in rows {
        if let (Some(table), Some(column), Some(parent)) = row?
            && !is_record_column(&table, &column)
        {
            references.push(PatientReference { table, column, parent });
        }
    }
    Ok(references)
}

/// Rows whose foreign keys name the `Patient` row with this id, in NanoPix's tables, but the
/// `patient_id` of `Study` and `Report` (counted as studies and reports): a delete of the row
/// would cascade to them, clear their link or be refused.
pub(super) fn count_other_records(conn: &Connection, id: NanoPixId) -> rusqlite::Result<u64> {
    let mut count = 0;
    for PatientReference { table, column, parent } in other_patient_references(conn)? {
        let (table, column, parent) = (identifier(&table), identifier(&column), identifier(&parent));
        let sql =
            format!("SELECT count(*) FROM {table} WHERE {column} IN (SELECT {parent} FROM Patient WHERE id = ?1)");
        let rows: i64 = conn.query_row(&sql, [id.to_string()], |row| row.get(0))?;
        count += rows.unsigned_abs();
    }
    Ok(count)
}

/// Whether `table.column` is the `patient_id` of `Study` or `Report`.
fn is_record_column(table: &str, column: &str) -> bool {
    column.eq_ignore_ascii_case("patient_id") && RECORD_TABLES.iter().any(|record| record.eq_ignore_ascii_case(table))
}

/// Adds to `ids` the NanoPix ids that records name: the `patient_id` of `Study` and `Report`
/// rows, and each column of another table whose foreign key names `Patient.id`. A value that is
/// not a valid id is skipped.
pub(super) fn record_ids(conn: &Connection, ids: &mut foldhash::HashSet<NanoPixId>) -> rusqlite::Result<()> {
    for table in RECORD_TABLES {
        if names_patients(conn, table)? {
            ids_in(conn, table, "patient_id", ids)?;
        }
    }
    for reference in other_patient_references(conn)? {
        if reference.parent.eq_ignore_ascii_case("id") {
            ids_in(conn, &reference.table, &reference.column, ids)?;
        }
    }
    Ok(())
}

/// Adds to `ids` the valid NanoPix ids that `column` holds in the rows of `table`.
fn ids_in(
    conn: &Connection,
    table: &str,
    column: &str,
    ids: &mut foldhash::HashSet<NanoPixId>,
) -> rusqlite::Result<()> {
    let sql = format!("SELECT {} FROM {}", identifier(column), identifier(table));
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        ids.extend(parse_id(row.get_ref(0)?).ok());
    }
    Ok(())
}

/// Deletes the row if no study, report or other record points at it, checked again under the
/// write lock (NanoPix's foreign keys would otherwise cascade), and if no other row has its id,
/// and returns it. `columns` are `Patient`'s.
/// Meant to run inside a write transaction.
pub(super) fn delete_patient(
    conn: &Connection,
    columns: &HashSet<String>,
    id: NanoPixId,
) -> rusqlite::Result<Deletion> {
    let studies = count_for_patient(conn, "Study", id)?;
    let reports = count_for_patient(conn, "Report", id)?;
    let other_records = count_other_records(conn, id)?;
    if studies + reports + other_records > 0 {
        return Ok(Deletion::Holds { studies, reports, other_records });
    }
    let deleted = patient_rows(conn, columns, id)?;
    match deleted.rows.len() {
        0 => return Ok(Deletion::Missing),
        1 => {}
        rows => return Ok(Deletion::Shared(rows)),
    }
    conn.execute("DELETE FROM Patient WHERE id = ?1", [id.to_string()])?;
    Ok(Deletion::Deleted(deleted))
}

/// Every `Patient` row with this id, as [`DeletedRows`] keeps them.
fn patient_rows(conn: &Connection, columns: &HashSet<String>, id: NanoPixId) -> rusqlite::Result<DeletedRows> {
    let mut columns: Vec<String> = columns.iter().filter(|column| *column != "pk").cloned().collect();
    columns.sort();
    let sql = format!("SELECT {} FROM Patient WHERE id = ?1", quoted(&columns));
    let mut statement = conn.prepare(&sql)?;
    let rows = statement.query_map([id.to_string()], |row| (0..columns.len()).map(|index| row.get(index)).collect())?;
    let rows = rows.collect::<rusqlite::Result<_>>()?;
    Ok(DeletedRows { columns, rows })
}

/// Writes `deleted` back, each with a new `pk`. Meant to run inside [`write()`].
pub(super) fn put_back(conn: &Connection, deleted: &DeletedRows) -> rusqlite::Result<()> {
    let slots: Vec<String> = (1..=deleted.columns.len()).map(|slot| format!("?{slot}")).collect();
    let sql = format!("INSERT INTO Patient ({}) VALUES ({})", quoted(&deleted.columns), slots.join(", "));
    for row in &deleted.rows {
        conn.execute(&sql, params_from_iter(row))?;
    }
    Ok(())
}

/// Column names as SQL identifiers, quoted, separated by commas.
fn quoted(columns: &[String]) -> String {
    let quoted: Vec<String> = columns.iter().map(|name| identifier(name)).collect();
    quoted.join(", ")
}

/// A table or column name as an SQL identifier, quoted.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
