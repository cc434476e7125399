//! DentalTID's `patients` table: reading rows as the patients screen shows them, filtering them
//! as DentalTID does, and writing imported patients exactly as DentalTID writes one.
//!
//! Reading is lenient: NULLs and odd values become defaults, never a failed query. Writing fills
//! every column `Patient.fromJson` needs, so a row the sync writes never breaks DentalTID's
//! screen. Nothing here deletes a patient or changes a patient's `source`.

use std::iter;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use foldhash::HashMap;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{
    Connection, OptionalExtension, Params, Row, Rows, Transaction, TransactionBehavior, params, params_from_iter,
};

use super::awaited_folders::note_unsettled_links;
use super::candidates::{still_fits, unlinked_keys_after};
use super::link_batches::record_imported_links;
use super::linked_rows::record_linked_rows;
use super::links::id_past_links;
use super::possible_duplicates::{Report, record_possible_duplicates};
use super::{DentalTid, LinkOrigin, LinkState, PatientRef};
use crate::matching::{MatchKey, MatchedLink, PossibleDuplicate};
use crate::patient::{BirthDate, NewDentalPatient, Patient, PatientFilter, Source, dart_date, dart_timestamp};
use crate::values::{
    IDS_PER_READ, WHITESPACE, data_version, integer_at, padded_with_null, read_text, starting_with, text_at,
};
use crate::{Error, NanoPixId, Result};

/// The columns [`patient_from_row`] reads, in its order.
const PATIENT_COLUMNS: &str = "id, name, familyName, age, dateOfBirth, createdAt, phoneNumber, source, external_id";

/// Newest first, as DentalTID's patients screen lists them.
const NEWEST_FIRST: &str = "ORDER BY createdAt DESC, id DESC";

/// Rows created on one day: `createdAt` compared as text, as DentalTID compares it.
const ON_DAY: &str = "createdAt >= ?1 AND createdAt < ?2";

/// Every column DentalTID's `Patient.toJson` writes, with its defaults for a new patient, and
/// the id: NULL lets SQLite give the next one.
const INSERT_IMPORTED: &str = "INSERT INTO patients(id, name, familyName, age, dateOfBirth, healthState, diagnosis,
        treatment, payment, createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted, source,
        external_id)
    VALUES (?1, ?2, ?3, ?4, ?5, '', '', '', 0.0, ?6, 0, 'EmergencySeverity.low', '', ?7, 0, 'nanopix', ?8)";

/// Whether a link row, or an import batch's run of ids, past `?1` names a patient `patients`
/// no longer holds. Only the part of a batch past `?1` is counted; a link whose delete was
/// asked for is left out (its patient is gone by definition).
const LOST_LINKED_AFTER: &str = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_links l
    WHERE l.patient_id > ?1 AND l.state != ?2 AND NOT EXISTS(SELECT 1 FROM patients p WHERE p.id = l.patient_id))
    OR EXISTS(SELECT 1 FROM nanopix_sync_imports b WHERE b.last_patient_id > ?1
        AND (SELECT COUNT(*) FROM patients p WHERE p.id BETWEEN max(b.first_patient_id, ?1 + 1) AND b.last_patient_id)
            < b.last_patient_id - max(b.first_patient_id, ?1 + 1) + 1)";

/// How long one import transaction may hold DentalTID's write lock before it is due to be
/// committed, so DentalTID itself waits at most about this long to save a patient.
const IMPORT_LOCK_HOLD: Duration = Duration::from_millis(100);

/// Sets `external_id` only on a patient that has none yet (blank as Rust's `trim` sees it:
/// bind [`WHITESPACE`] to `?3`).
pub(super) const SET_EXTERNAL_ID: &str =
    "UPDATE patients SET external_id = ?1 WHERE id = ?2 AND (external_id IS NULL OR trim(external_id, ?3) = '')";

/// Records (or replaces) the link of one patient.
pub(super) const UPSERT_LINK: &str = "INSERT INTO nanopix_sync_links(patient_id, external_id, origin, state, synced_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT(patient_id) DO UPDATE SET external_id = excluded.external_id, origin = excluded.origin,
        state = excluded.state, synced_at = excluded.synced_at";

/// Imported patients being written: pages of rows share a `BEGIN IMMEDIATE` transaction until
/// the caller commits it, which it should do once [`Importing::due`] has passed. Dropping it
/// rolls back whatever was not committed.
pub struct Importing<'a> {
    dentaltid: &'a DentalTid,
    /// The open transaction and when it took the write lock.
    open: Option<(Transaction<'a>, Instant)>,
    /// When watched for (see [`Importing::watching_saved_meanwhile`]): the keys of the unlinked
    /// patients other programs saved since, and the highest id read for them.
    saved_meanwhile: Option<(Vec<MatchKey>, i64)>,
}

impl Importing<'_> {
    /// Keeps track of the unlinked patients other programs save past patient `after` while the
    /// import goes on: the NanoPix patients were matched against DentalTID up to it.
    pub fn watching_saved_meanwhile(mut self, after: i64) -> Self {
        self.saved_meanwhile = Some((Vec::new(), after));
        self
    }

    /// The keys of the unlinked patients with a birth date that other programs saved since the
    /// import began, when watched for; read in the open transaction (begun if none is open), so
    /// none can be saved between this and the next [`Importing::insert`].
    pub fn saved_meanwhile(&mut self) -> Result<&[MatchKey]> {
        let path = &self.dentaltid.path;
        let tx = Self::transaction(&mut self.open, &self.dentaltid.conn, path)?;
        let Some((keys, after)) = &mut self.saved_meanwhile else { return Ok(&[]) };
        let (fresh, highest) = unlinked_keys_after(tx, *after).map_err(Error::db(path, "reading new patients"))?;
        keys.extend(fresh);
        *after = highest;
        Ok(keys)
    }

    /// Inserts `rows` and records their links in the open transaction, beginning one if none is
    /// open; returns, in order, each row's new id or why DentalTID's table refused it (a
    /// constraint or a trigger of its own): the other rows are written all the same.
    pub fn insert(&mut self, rows: &[NewDentalPatient], synced_at: NaiveDateTime) -> Result<Vec<Result<i64>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let path = &self.dentaltid.path;
        let synced_at = dart_timestamp(synced_at);
        let tx = Self::transaction(&mut self.open, &self.dentaltid.conn, path)?;
        let inserted = insert_imported(tx, rows, &synced_at).map_err(Error::db(path, "importing patients"))?;
        // The next look for patients saved meanwhile starts past these.
        if let Some((_, after)) = &mut self.saved_meanwhile {
            *after = inserted.iter().flatten().fold(*after, |highest, &id| highest.max(id));
        }
        Ok(inserted
            .into_iter()
            .map(|id| id.map_err(Error::db(path, "importing a patient DentalTID refuses")))
            .collect())
    }

    /// Keeps the possible duplicates among `rows` in the open transaction: `duplicates` and
    /// `ids` hold, in order, each row's report (if any) and what [`Importing::insert`] returned
    /// for it. Rows DentalTID refused have nothing kept.
    pub fn record_possible_duplicates(
        &mut self,
        rows: &[NewDentalPatient],
        duplicates: &[Option<PossibleDuplicate>],
        ids: &[Result<i64>],
    ) -> Result<()> {
        let reported: Vec<Report<'_, NanoPixId>> = rows
            .iter()
            .zip(duplicates)
            .zip(ids)
            .filter_map(|((row, duplicate), id)| {
                let duplicate = duplicate.as_ref()?;
                Some(Report {
                    patient_id: *id.as_ref().ok()?,
                    created_at: &row.created_at,
                    external_id: row.external_id,
                    reason: duplicate.reason,
                    candidates: &duplicate.candidates,
                })
            })
            .collect();
        if reported.is_empty() {
            return Ok(());
        }
        let path = &self.dentaltid.path;
        let tx = Self::transaction(&mut self.open, &self.dentaltid.conn, path)?;
        record_possible_duplicates(tx, reported).map(drop).map_err(Error::db(path, "recording possible duplicates"))
    }

    /// The open transaction, begun if none is open.
    fn transaction<'t, 'c>(
        open: &'t mut Option<(Transaction<'c>, Instant)>,
        conn: &'c Connection,
        path: &Path,
    ) -> Result<&'t Transaction<'c>> {
        Ok(match open {
            Some((tx, _)) => tx,
            None => {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
                    .map_err(Error::db(path, "importing patients"))?;
                &open.insert((tx, Instant::now())).0
            }
        })
    }

    /// When the open transaction is due to be committed; `None` when none is open.
    pub fn due(&self) -> Option<Instant> {
        self.open.as_ref().map(|(_, began)| *began + IMPORT_LOCK_HOLD)
    }

    /// Commits the open transaction, if any: every row inserted so far is then written.
    pub fn commit(&mut self) -> Result<()> {
        let Some((tx, _)) = self.open.take() else { return Ok(()) };
        tx.commit().map_err(Error::db(&self.dentaltid.path, "importing patients"))
    }
}

/// Inserts `rows` and records the links of those inserted, with the rows they were made with (as
/// batches, see [`super::links`]); returns each row's new id, or the error of a row the table
/// refused.
fn insert_imported(
    tx: &Transaction<'_>,
    rows: &[NewDentalPatient],
    synced_at: &str,
) -> rusqlite::Result<Vec<rusqlite::Result<i64>>> {
    let mut insert = tx.prepare_cached(INSERT_IMPORTED)?;
    let (mut imported, mut outcomes) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    // Once one row took it, the ids SQLite gives the next ones are past it too; a row the table
    // refused took none, so the next row is given it.
    let mut first_id = id_past_links(tx)?;
    // Every row an insert writes takes an id past this one.
    let mut written_up_to =
        tx.prepare_cached("SELECT MAX(id) FROM patients")?.query_row([], |row| integer_at(row, 0))?;
    for row in rows {
        let external_id = row.external_id.to_string();
        let inserted = match insert.insert(params![
            first_id,
            row.first_name,
            row.last_name,
            row.age,
            row.date_of_birth,
            row.created_at,
            row.phone,
            external_id,
        ]) {
            Err(error) if is_refusal(&error) && !tx.is_autocommit() => {
                row_written_holding(tx, written_up_to, &external_id)?.ok_or(error)
            }
            inserted => inserted,
        };
        match inserted {
            Ok(id) => {
                first_id = None;
                written_up_to = Some(written_up_to.map_or(id, |highest| highest.max(id)));
                imported.push((id, row.external_id, row.nanopix_created));
            }
            Err(error) if !is_refusal(&error) || tx.is_autocommit() => return Err(error),
            Err(_) => {}
        }
        outcomes.push(inserted);
    }
    record_imported_links(tx, &imported, synced_at)?;
    Ok(outcomes)
}

/// Whether `error` is the table refusing one row (a constraint, a trigger's `RAISE`, a strict
/// column's type, or a trigger's `RAISE(IGNORE)`, which changes no row), which leaves the
/// transaction open: `tx.is_autocommit()` tells whether a trigger rolled it back instead.
fn is_refusal(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::StatementChangedRows(0))
        || matches!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation | rusqlite::ErrorCode::TypeMismatch)
        )
}

/// The id of the row the insert just refused wrote, if it wrote one holding `external_id`: a row
/// a trigger refused after it was written (`RAISE(FAIL)` after the insert) stays written, with
/// an id past `written_up_to`, the highest id before it. A patient holding `external_id` already
/// (the one whose NanoPix id NanoPix gave to another person) is not that row.
fn row_written_holding(
    tx: &Transaction<'_>,
    written_up_to: Option<i64>,
    external_id: &str,
) -> rusqlite::Result<Option<i64>> {
    let sql = "SELECT id FROM patients WHERE id > ?1 AND external_id = ?2 ORDER BY id DESC LIMIT 1";
    let past = written_up_to.unwrap_or(i64::MIN);
    tx.prepare_cached(sql)?.query_row(params![past, external_id], |row| row.get(0)).optional()
}

impl DentalTid {
    /// Patients for the patients screen, newest first, with 'today' being `today`.
    pub fn patients(&self, filter: PatientFilter, today: NaiveDate) -> Result<Vec<Patient>> {
        let step = "listing patients";
        let day = (dart_date(today), dart_date(today.succ_opt().unwrap_or(NaiveDate::MAX)));
        match filter {
            PatientFilter::All => self.query_patients(step, NEWEST_FIRST, []),
            PatientFilter::Today => self.query_patients(step, &format!("WHERE {ON_DAY} {NEWEST_FIRST}"), day),
            PatientFilter::TodayByExternal => {
                self.query_patients(step, &format!("WHERE {ON_DAY} AND source = 'nanopix' {NEWEST_FIRST}"), day)
            }
            PatientFilter::AllByExternal => {
                self.query_patients(step, &format!("WHERE source = 'nanopix' {NEWEST_FIRST}"), [])
            }
        }
    }

    /// One patient, if it exists.
    pub fn patient(&self, id: i64) -> Result<Option<Patient>> {
        Ok(self.query_patients("reading a patient", "WHERE id = ?1", [id])?.pop())
    }

    /// Every patient, in id order (for a full reconcile).
    pub fn all_patients(&self) -> Result<Vec<Patient>> {
        self.query_patients("reading every patient", "ORDER BY id", [])
    }

    /// The patients created in DentalTID (`source` NULL or `'internal'`) whose id is greater than
    /// `cursor`, in id order, and the highest id past `cursor` of any patient: the imported
    /// patients past it (a whole first import, say) are not read.
    pub fn created_here_after(&self, cursor: i64) -> Result<(Vec<Patient>, Option<i64>)> {
        let step = "reading new patients";
        // Both reads in one read transaction: a patient DentalTID added between them would count
        // in the highest id without being in the list, and a cursor moved there would pass it by.
        let snapshot = self.conn.unchecked_transaction().map_err(Error::db(&self.path, step))?;
        // `source` as text, as `Source::from_column` reads it (a BLOB 'internal' is internal).
        let tail = "WHERE id > ?1 AND (source IS NULL OR CAST(source AS TEXT) = 'internal') ORDER BY id";
        let created_here = self.query_patients(step, tail, [cursor])?;
        let highest = |conn: &Connection| {
            conn.prepare_cached("SELECT MAX(id) FROM patients WHERE id > ?1")?
                .query_row([cursor], |row| integer_at(row, 0))
        };
        let highest = highest(&self.conn).map_err(Error::db(&self.path, step))?;
        snapshot.commit().map_err(Error::db(&self.path, step))?;
        Ok((created_here, highest))
    }

    /// How many rows have an id up to `max_id`: all rows less the few past it, since SQLite
    /// counts a whole table from its smallest index but a range only by walking the table.
    pub fn rows_up_to(&self, max_id: i64) -> Result<u64> {
        let count = |conn: &Connection| {
            conn.prepare_cached(
                "SELECT (SELECT COUNT(*) FROM patients) - (SELECT COUNT(*) FROM patients WHERE id > ?1)",
            )?
            .query_row([max_id], |row| row.get::<_, i64>(0))
        };
        count(&self.conn).map(i64::unsigned_abs).map_err(Error::db(&self.path, "counting patients"))
    }

    /// `previous`, a highest `patients.id` and the number of rows up to it, moved on past the
    /// rows added since: the new highest id, and the number plus those rows. Rows deleted
    /// meanwhile are not taken off, so [`DentalTid::rows_up_to`] still finds them gone. Reads
    /// only the new rows.
    pub fn extent_after(&self, (max_id, rows): (i64, u64)) -> Result<(i64, u64)> {
        let read = |conn: &Connection| {
            let sql = "SELECT MAX(id), COUNT(*) FROM patients WHERE id > ?1";
            conn.prepare_cached(sql)?.query_row([max_id], |row| Ok((integer_at(row, 0)?, integer_at(row, 1)?)))
        };
        let (highest, added) = read(&self.conn).map_err(Error::db(&self.path, "counting new patients"))?;
        Ok((highest.map_or(max_id, |id| id.max(max_id)), rows + added.unwrap_or(0).unsigned_abs()))
    }

    /// Whether a patient with an id past `after` that the sync linked, imported or exported is
    /// gone: its link row, or the run of ids of its import batch, names it, and `patients` does
    /// not hold it. Reads only the links and import batches past `after`.
    pub fn lost_linked_after(&self, after: i64) -> Result<bool> {
        let read = |conn: &Connection| {
            conn.prepare_cached(LOST_LINKED_AFTER)?
                .query_row(params![after, LinkState::DeleteRequested.as_str()], |row| row.get(0))
        };
        read(&self.conn).map_err(Error::db(&self.path, "looking for linked patients deleted meanwhile"))
    }

    /// The highest `patients.id` DentalTID has issued: the highest there is, or a higher one
    /// `sqlite_sequence` remembers for a table with `AUTOINCREMENT` (as DentalTID's) whose last
    /// patients were deleted. Ids it issues later are all higher.
    pub fn highest_issued_id(&self) -> Result<i64> {
        highest_patient_id(&self.conn).map_err(Error::db(&self.path, "reading the highest patient id issued"))
    }

    /// The highest `patients.id` there is (0 for none).
    pub fn highest_id(&self) -> Result<i64> {
        let read = |conn: &Connection| conn.query_row("SELECT MAX(id) FROM patients", [], |row| integer_at(row, 0));
        read(&self.conn).map(Option::unwrap_or_default).map_err(Error::db(&self.path, "reading the highest patient id"))
    }

    /// Whether a patient's `external_id` shows this NanoPix id, even with blanks around it (a
    /// folder path made of it on Windows drops trailing ones): no other patient may be given it,
    /// nor its NanoPix patient be deleted. Read in three index ranges: texts that start with the
    /// id, and those that start with anything but a digit.
    pub fn shows_external_id(&self, external_id: NanoPixId) -> Result<bool> {
        Ok(!self.patients_showing(external_id)?.is_empty())
    }

    /// The patients whose `external_id` shows this NanoPix id, as
    /// [`DentalTid::shows_external_id`] reads it.
    pub fn patients_showing(&self, external_id: NanoPixId) -> Result<Vec<i64>> {
        Ok(self.patients_showing_any(&[external_id])?.remove(&external_id).unwrap_or_default())
    }

    /// The patients whose `external_id` shows one of `ids`, as
    /// [`DentalTid::shows_external_id`] reads it, by id: the texts that start with one of them, a
    /// read of index ranges per [`IDS_PER_READ`] ids, and those that start with anything but a
    /// digit, in one read for all.
    pub(super) fn patients_showing_any(&self, ids: &[NanoPixId]) -> Result<HashMap<NanoPixId, Vec<i64>>> {
        if ids.is_empty() {
            return Ok(HashMap::default());
        }
        let by_text: HashMap<String, NanoPixId> = ids.iter().map(|&id| (id.to_string(), id)).collect();
        let read = || {
            let mut statement = self.conn.prepare_cached(&showing_any_sql())?;
            let mut showing = HashMap::default();
            for some in ids.chunks(IDS_PER_READ) {
                let bounds = some.iter().flat_map(|id| {
                    let (from, to) = starting_with(id.to_string());
                    [Value::Text(from), Value::Text(to)]
                });
                let values = padded_with_null(
                    iter::once(Value::Text(WHITESPACE.to_owned())).chain(bounds),
                    1 + 2 * IDS_PER_READ,
                );
                showing_into(statement.query(params_from_iter(values))?, &by_text, &mut showing)?;
            }
            let odd = "SELECT id, trim(external_id, ?1) FROM patients WHERE external_id < '0'
                UNION ALL SELECT id, trim(external_id, ?1) FROM patients WHERE external_id >= ':'";
            showing_into(self.conn.prepare_cached(odd)?.query([WHITESPACE])?, &by_text, &mut showing)?;
            Ok(showing)
        };
        read().map_err(Error::db(&self.path, "looking up an external id"))
    }

    /// Whether a patient holds exactly this NanoPix id.
    pub fn holds_external_id(&self, external_id: NanoPixId) -> Result<bool> {
        let holds = |conn: &Connection| {
            conn.prepare_cached("SELECT 1 FROM patients WHERE external_id = ?1 LIMIT 1")?
                .exists([external_id.to_string()])
        };
        holds(&self.conn).map_err(Error::db(&self.path, "looking up an external id"))
    }

    /// Inserts imported patients and records their links in one transaction; returns their new
    /// ids in order.
    #[cfg(test)]
    pub fn import(&mut self, rows: &[NewDentalPatient], synced_at: NaiveDateTime) -> Result<Vec<i64>> {
        let mut importing = self.importing();
        let ids = importing.insert(rows, synced_at)?.into_iter().collect::<Result<_>>()?;
        importing.commit()?;
        Ok(ids)
    }

    /// Starts importing patients over one or more transactions; nothing is written until the
    /// first [`Importing::insert`], and nothing stays written without [`Importing::commit`].
    pub fn importing(&mut self) -> Importing<'_> {
        Importing { dentaltid: self, open: None, saved_meanwhile: None }
    }

    /// Links existing patients to the NanoPix patients they matched, in one transaction: sets
    /// `external_id` (only where it is still NULL or blank) and records each link, for each
    /// patient that still has the names and birth date it was matched on. Returns one outcome
    /// per link, in order. `new_to_sync` says the NanoPix patients are new to the sync, so
    /// NanoPix may not have made their folders yet: each link is then noted unsettled (see
    /// [`super::awaited_folders`]), for the caller to clear once it recorded the folders it awaits.
    ///
    /// `read_at` is this connection's data version just before the matching read the patients,
    /// when it read them all: while it is still the version, no other program has committed since
    /// (and the sync never renames, re-dates or deletes a patient), so no patient is read again.
    pub fn link_all(
        &mut self,
        links: &[MatchedLink],
        synced_at: NaiveDateTime,
        (new_to_sync, read_at): (bool, Option<i64>),
    ) -> Result<Vec<LinkOutcome>> {
        let (synced_at, path) = (dart_timestamp(synced_at), self.path.clone());
        self.write("linking patients", |tx| {
            let unchanged = match read_at {
                Some(read_at) => data_version(tx)? == read_at,
                None => false,
            };
            let mut set_external_id = tx.prepare_cached(SET_EXTERNAL_ID)?;
            let mut record = tx.prepare_cached(UPSERT_LINK)?;
            let (origin, state) = (LinkOrigin::Matched.as_str(), LinkState::Linked.as_str());
            let mut outcomes = Vec::with_capacity(links.len());
            for link in links {
                let patient_id = link.patient_id;
                if !unchanged && still_fits(tx, patient_id, &link.key)? != Some(true) {
                    outcomes.push(LinkOutcome::Stale);
                    continue;
                }
                let external_id = link.external_id.to_string();
                let changed = match set_external_id.execute(params![external_id, patient_id, WHITESPACE]) {
                    Err(error) if is_refusal(&error) && !tx.is_autocommit() => {
                        let refused = Error::db(&path, "linking a patient DentalTID refuses")(error);
                        outcomes.push(LinkOutcome::Refused(refused));
                        continue;
                    }
                    changed => changed?,
                };
                if changed == 0 {
                    outcomes.push(LinkOutcome::Refused(refusal(tx, patient_id, &path)?));
                    continue;
                }
                record.execute(params![patient_id, external_id, origin, state, synced_at])?;
                record_linked_rows(tx, [(patient_id, link.external_id, link.nanopix_created)])?;
                if new_to_sync {
                    note_unsettled_links(tx, patient_id, patient_id)?;
                }
                outcomes.push(LinkOutcome::Linked);
            }
            Ok(outcomes)
        })
    }

    /// The id, source, NanoPix id and birth-date flag of every patient, in id order.
    pub fn patient_refs(&self) -> Result<Vec<PatientRef>> {
        let read = || {
            let sql = "SELECT id, source, external_id, dateOfBirth FROM patients ORDER BY id";
            let mut statement = self.conn.prepare_cached(sql)?;
            let rows = statement.query_map([], |row| patient_ref_at(row, [0, 1, 2, 3]))?;
            rows.filter_map(|row| row.transpose()).collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map_err(Error::db(&self.path, "reading patient links"))
    }

    /// Runs `SELECT <patient columns> FROM patients <tail>` and reads every row whose id is an integer.
    fn query_patients(&self, step: &'static str, tail: &str, params: impl Params) -> Result<Vec<Patient>> {
        patients_in(&self.conn, tail, params).map_err(Error::db(&self.path, step))
    }
}

/// Runs `SELECT <patient columns> FROM patients <tail>` on `conn` and reads every row whose id
/// is an integer.
fn patients_in(conn: &Connection, tail: &str, params: impl Params) -> rusqlite::Result<Vec<Patient>> {
    let mut statement = conn.prepare_cached(&format!("SELECT {PATIENT_COLUMNS} FROM patients {tail}"))?;
    let rows = statement.query_map(params, patient_from_row)?;
    rows.filter_map(|row| row.transpose()).collect()
}

/// Patient `id` as `conn` reads it now (in a transaction: as it will stay until the commit).
pub(super) fn patient_in(conn: &Connection, id: i64) -> rusqlite::Result<Option<Patient>> {
    Ok(patients_in(conn, "WHERE id = ?1", [id])?.pop())
}

/// Reads a patient's id, source, NanoPix id and whether its birth date is unreadable from the
/// columns at `[id, source, external_id, dateOfBirth]` leniently; `None` only when `id` is not an
/// integer.
pub(super) fn patient_ref_at(
    row: &Row<'_>,
    [id, source, external_id, date_of_birth]: [usize; 4],
) -> rusqlite::Result<Option<PatientRef>> {
    let Some(id) = integer_at(row, id)? else { return Ok(None) };
    let source = read_text(row, source, Source::from_column)?;
    let external_id = read_text(row, external_id, |text| text.and_then(|text| NanoPixId::parse(text).ok()))?;
    let birth_date_unreadable = read_text(row, date_of_birth, |text| BirthDate::of(text) == BirthDate::Unreadable)?;
    Ok(Some(PatientRef { id, source, external_id, birth_date_unreadable }))
}

/// Reads a row of [`PATIENT_COLUMNS`] leniently; `None` only when `id` is not an integer.
fn patient_from_row(row: &Row<'_>) -> rusqlite::Result<Option<Patient>> {
    let Some(id) = integer_at(row, 0)? else { return Ok(None) };
    Ok(Some(Patient {
        id,
        first_name: text_at(row, 1)?.unwrap_or_default(),
        last_name: text_at(row, 2)?.unwrap_or_default(),
        age: integer_at(row, 3)?.unwrap_or(0),
        date_of_birth: BirthDate::of(text_at(row, 4)?.as_deref()).date(),
        created_at: text_at(row, 5)?.unwrap_or_default(),
        phone: text_at(row, 6)?.unwrap_or_default(),
        source: read_text(row, 7, Source::from_column)?,
        external_id: external_id_at(row, 8)?,
    }))
}

/// What became of one link [`DentalTid::link_all`] was asked to write.
#[derive(Debug)]
pub enum LinkOutcome {
    /// Written.
    Linked,
    /// Not written: the patient is gone, or no longer has the names and birth date it was
    /// matched on (DentalTID changed it meanwhile).
    Stale,
    /// Not written: the patient is linked already ([`Error::AlreadyLinked`]), or DentalTID's
    /// table refuses the change, by a constraint or a trigger ([`Error::Database`]).
    Refused(Error),
}

/// Why [`SET_EXTERNAL_ID`] changed no row: the patient is gone or already linked, or else a
/// trigger of DentalTID's table dropped the change (`RAISE(IGNORE)`).
fn refusal(conn: &Connection, patient_id: i64, path: &Path) -> rusqlite::Result<Error> {
    let existing = conn
        .query_row("SELECT external_id FROM patients WHERE id = ?1", [patient_id], |row| text_at(row, 0))
        .optional()?;
    Ok(match existing {
        None => Error::PatientNotFound(patient_id),
        Some(Some(external_id)) if !external_id.trim().is_empty() => Error::AlreadyLinked { patient_id, external_id },
        Some(_) => Error::db(path, "linking a patient DentalTID refuses")(rusqlite::Error::StatementChangedRows(0)),
    })
}

/// An `external_id` cell: blank counts as unset.
fn external_id_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(text_at(row, index)?.filter(|id| !id.trim().is_empty()))
}

/// The larger of `sqlite_sequence`'s counter for `patients` (when there is one) and `MAX(id)`.
pub(super) fn highest_patient_id(conn: &Connection) -> rusqlite::Result<i64> {
    let max_id = conn.query_row("SELECT MAX(id) FROM patients", [], |row| integer_at(row, 0))?;
    Ok(max_id.into_iter().chain(patients_sequence(conn)?).max().unwrap_or(0).max(0))
}

/// `sqlite_sequence`'s counter for `patients`: kept for a table with AUTOINCREMENT once it
/// issued an id, and never given again by it.
pub(super) fn patients_sequence(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    if !super::migration::schema_object_exists(conn, "table", "sqlite_sequence")? {
        return Ok(None);
    }
    // The row names the table as it was declared: `Patients` is DentalTID's `patients` too.
    let sql = "SELECT seq FROM sqlite_sequence WHERE name = 'patients' COLLATE NOCASE";
    Ok(conn.query_row(sql, [], |row| integer_at(row, 0)).optional()?.flatten())
}

/// Selects `id, trim(external_id, ?1)` of the patients whose `external_id` starts with one of
/// up to [`IDS_PER_READ`] NanoPix ids, each given as the bounds [`starting_with`] gives it in
/// `?2` and `?3`, `?4` and `?5`, and so on (NULL bounds hold none).
fn showing_any_sql() -> String {
    let ranges: Vec<String> = (0..IDS_PER_READ)
        .map(|n| format!("(external_id >= ?{} AND external_id < ?{})", 2 * n + 2, 2 * n + 3))
        .collect();
    format!("SELECT id, trim(external_id, ?1) FROM patients WHERE {}", ranges.join(" OR "))
}

/// Adds to `showing` the patients of `rows` (`id, trim(external_id)`) whose trimmed
/// `external_id` is the text of one of the NanoPix ids of `by_text`.
fn showing_into(
    mut rows: Rows<'_>,
    by_text: &HashMap<String, NanoPixId>,
    showing: &mut HashMap<NanoPixId, Vec<i64>>,
) -> rusqlite::Result<()> {
    while let Some(row) = rows.next()? {
        let ValueRef::Text(text) = row.get_ref(1)? else { continue };
        let Some(&id) = std::str::from_utf8(text).ok().and_then(|text| by_text.get(text)) else { continue };
        showing.entry(id).or_default().push(row.get(0)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{at, link_one, link_outcome, new_patient, sample_database};
    use super::*;

    fn names(patients: &[Patient]) -> Vec<&str> {
        patients.iter().map(|p| p.first_name.as_str()).collect()
    }

    #[test]
    fn import_writes_every_column_dentaltid_reads() {
        let (_dir, mut dentaltid) = sample_database();
        let created = at(2024, 6, 3, 9, 5);
        let ids = dentaltid.import(&[new_patient("Lina", created, "20240603_090500")], at(2025, 1, 21, 12, 0)).unwrap();
        assert_eq!(ids, vec![7]);
        let value = |expression: &str| {
            let sql = format!("SELECT {expression} FROM patients WHERE id = 7");
            dentaltid.conn.query_row(&sql, [], |row| text_at(row, 0)).unwrap().unwrap_or_default()
        };
        let needed = ["name", "familyName", "age", "healthState", "diagnosis", "treatment", "createdAt"];
        for column in needed {
            assert_eq!(value(&format!("{column} IS NOT NULL")), "1", "{column}");
        }
        assert_eq!(value("createdAt"), "2024-06-03T09:05:00.000");
        assert_eq!(value("dateOfBirth"), "1985-03-12T00:00:00.000");
        assert_eq!(value("severity || ' ' || isEmergency || ' ' || isBlacklisted"), "EmergencySeverity.low 0 0");
        assert_eq!(value("typeof(payment) || ' ' || payment"), "real 0.0");
        assert_eq!(value("source || ' ' || external_id || ' ' || age"), "nanopix 20240603_090500 40");
        let link = dentaltid.link(7).unwrap().unwrap();
        assert_eq!((link.origin, link.state), (Some(LinkOrigin::Imported), LinkState::Linked));
        assert_eq!((link.external_id.as_str(), link.synced_at), ("20240603_090500", Some(at(2025, 1, 21, 12, 0))));
    }

    #[test]
    fn the_extent_moves_past_new_rows_and_keeps_counting_deleted_ones() {
        let (_dir, mut dentaltid) = sample_database();
        assert_eq!(dentaltid.extent_after((6, 6)).unwrap(), (6, 6));
        let rows = [new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000")];
        dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap();
        dentaltid.conn.execute("DELETE FROM patients WHERE id = 3", []).unwrap();
        assert_eq!(dentaltid.extent_after((6, 6)).unwrap(), (7, 7), "the deleted row is still counted");
        assert_eq!(dentaltid.rows_up_to(7).unwrap(), 6, "so the next look finds it gone");
    }

    #[test]
    fn import_returns_ids_in_order_and_a_missing_birth_date_stays_null() {
        let (_dir, mut dentaltid) = sample_database();
        let mut unborn = new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000");
        unborn.date_of_birth = None;
        let rows = [new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000"), unborn];
        let ids = dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap();
        assert_eq!(ids, vec![7, 8]);
        let b = dentaltid.patient(8).unwrap().unwrap();
        assert_eq!((b.first_name.as_str(), b.date_of_birth, b.source), ("B", None, Source::NanoPix));
        let null_birth: bool = dentaltid
            .conn
            .query_row("SELECT dateOfBirth IS NULL FROM patients WHERE id = 8", [], |r| r.get(0))
            .unwrap();
        assert!(null_birth);
    }

    #[test]
    fn pages_of_an_import_share_a_transaction_until_it_is_committed() {
        let (_dir, mut dentaltid) = sample_database();
        let path = dentaltid.path().to_path_buf();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let count = |conn: &Connection| conn.query_row("SELECT count(*) FROM patients", [], |r| r.get::<_, i64>(0));
        let synced_at = at(2025, 1, 21, 12, 0);
        let mut importing = dentaltid.importing();
        assert_eq!(importing.due(), None, "nothing is locked before the first insert");
        importing.insert(&[new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000")], synced_at).unwrap();
        let due = importing.due().expect("the first insert took the write lock");
        importing.insert(&[new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000")], synced_at).unwrap();
        assert_eq!(importing.due(), Some(due), "the second page joined the open transaction");
        assert!(other.execute_batch("BEGIN IMMEDIATE").is_err(), "DentalTID waits for the commit");
        importing.commit().unwrap();
        assert_eq!((importing.due(), count(&other).unwrap()), (None, 8));
        importing.insert(&[new_patient("C", at(2025, 1, 3, 0, 0), "20250103_000000")], synced_at).unwrap();
        drop(importing);
        assert_eq!(count(&other).unwrap(), 8, "an import dropped before its commit is rolled back");
    }

    #[test]
    fn filters_compare_created_at_like_dentaltid() {
        let (_dir, mut dentaltid) = sample_database();
        let rows = [
            new_patient("Early", at(2025, 1, 21, 0, 0), "20250121_000000"),
            new_patient("Old", at(2019, 5, 5, 10, 0), "20190505_100000"),
            new_patient("Tomorrow", at(2025, 1, 22, 0, 0), "20250122_000000"),
        ];
        dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap();
        let today = chrono::NaiveDate::from_ymd_opt(2025, 1, 21).unwrap();
        let list = |filter| dentaltid.patients(filter, today).unwrap();
        assert_eq!(names(&list(PatientFilter::Today)), ["Karim", "Early"]);
        assert_eq!(names(&list(PatientFilter::TodayByExternal)), ["Early"]);
        assert_eq!(names(&list(PatientFilter::AllByExternal)), ["Tomorrow", "Early", "Old"]);
        let all = list(PatientFilter::All);
        assert_eq!(all.len(), 9);
        assert_eq!(names(&all[..3]), ["Tomorrow", "Karim", "Early"]);
        assert_eq!(all.last().map(|p| p.first_name.as_str()), Some("Old"));
    }

    #[test]
    fn equal_created_at_lists_the_newest_id_first() {
        let (_dir, mut dentaltid) = sample_database();
        let same = at(2025, 1, 21, 8, 30);
        dentaltid.import(&[new_patient("Twin", same, "20250121_083000")], same).unwrap();
        let today = chrono::NaiveDate::from_ymd_opt(2025, 1, 21).unwrap();
        let ids: Vec<i64> = dentaltid.patients(PatientFilter::Today, today).unwrap().iter().map(|p| p.id).collect();
        assert_eq!(ids, [7, 6]);
    }

    #[test]
    fn odd_values_read_without_error() {
        let (_dir, dentaltid) = sample_database();
        let sql =
            "INSERT INTO patients(id, name, familyName, age, dateOfBirth, createdAt, phoneNumber, source, external_id)
            VALUES (50, NULL, CAST(X'4FFF' AS TEXT), 'forty', 'garbage', NULL, 555123, 'csv', '  '),
                   (51, 'Ok', 'Ok', 33.0, 12345, 20250101, NULL, NULL, 20250121)";
        dentaltid.conn.execute_batch(sql).unwrap();
        let odd = dentaltid.patient(50).unwrap().unwrap();
        assert_eq!((odd.first_name.as_str(), odd.last_name.as_str(), odd.age), ("", "O\u{FFFD}", 0));
        assert_eq!((odd.date_of_birth, odd.created_at.as_str(), odd.phone.as_str()), (None, "", "555123"));
        assert_eq!((odd.source, odd.external_id), (Source::Other("csv".into()), None));
        let numeric = dentaltid.patient(51).unwrap().unwrap();
        assert_eq!((numeric.age, numeric.date_of_birth, numeric.created_at.as_str()), (33, None, "20250101"));
        assert_eq!((numeric.source, numeric.external_id.as_deref()), (Source::Internal, Some("20250121")));
        assert_eq!(dentaltid.all_patients().unwrap().len(), 8);
    }

    #[test]
    fn patients_created_here_after_a_cursor_come_in_id_order_with_the_highest_id() {
        let (_dir, dentaltid) = sample_database();
        dentaltid.conn.execute_batch("UPDATE patients SET source = 'nanopix' WHERE id = 5").unwrap();
        dentaltid.conn.execute_batch("UPDATE patients SET source = NULL WHERE id = 6").unwrap();
        dentaltid.conn.execute_batch("UPDATE patients SET source = CAST('internal' AS BLOB) WHERE id = 4").unwrap();
        let (patients, highest) = dentaltid.created_here_after(3).unwrap();
        let ids: Vec<i64> = patients.iter().map(|p| p.id).collect();
        assert_eq!((ids, highest), (vec![4, 6], Some(6)), "imported patient 5 is left out");
        assert_eq!(patients[0].source, Source::Internal, "read as the list reads it");
        dentaltid.conn.execute_batch("UPDATE patients SET source = 'nanopix' WHERE id = 6").unwrap();
        let (patients, highest) = dentaltid.created_here_after(4).unwrap();
        assert_eq!((patients.len(), highest), (0, Some(6)), "the cursor moves past imported patients");
        assert_eq!(dentaltid.created_here_after(6).unwrap(), (Vec::new(), None));
        assert_eq!(dentaltid.patient(99).unwrap(), None);
    }

    /// Patients 5 and 6 are deleted, 6 with its link left (in a link row or in an import batch)
    /// or its export in flight;
    /// `sqlite_sequence` says 8 ids were issued. The next import takes 9, as SQLite gives it, and
    /// with no `sqlite_sequence` row (a table without AUTOINCREMENT, which would give 5 and then
    /// 6) it takes 7: past the link, the next one after it too.
    #[test]
    fn an_import_takes_an_id_past_links_exports_in_flight_and_ids_issued() {
        let link_row =
            "INSERT INTO nanopix_sync_links VALUES (6, '20250121_152638', 'imported', 'delete_requested', '')";
        let batch_row = "INSERT INTO nanopix_sync_imports VALUES (5, 6, '', '20250121_15263820250121_152639', NULL)";
        let export =
            "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at) VALUES (6, '20250121_152638', '')";
        for link in [link_row, batch_row, export] {
            let (_dir, mut dentaltid) = sample_database();
            dentaltid.conn.execute_batch("DELETE FROM patients WHERE id >= 5").unwrap();
            dentaltid.conn.execute(link, []).unwrap();
            for (sequence, ids) in
                [("UPDATE sqlite_sequence SET seq = 8", [9, 10]), ("DELETE FROM sqlite_sequence", [7, 8])]
            {
                dentaltid.conn.execute_batch(sequence).unwrap();
                let rows = [
                    new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000"),
                    new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000"),
                ];
                let mut importing = dentaltid.importing();
                let inserted: Vec<i64> =
                    importing.insert(&rows, at(2025, 1, 21, 12, 0)).unwrap().into_iter().map(Result::unwrap).collect();
                drop(importing);
                assert_eq!(inserted, ids, "{link}, {sequence}");
            }
        }
    }

    /// A table without AUTOINCREMENT whose links name only patients below its newest one: the
    /// next import takes the id SQLite gives, past the newest patient, never one just past a link.
    #[test]
    fn without_autoincrement_an_import_takes_the_id_past_the_newest_patient_when_links_name_older_ones() {
        let (_dir, mut dentaltid) = sample_database();
        let link = "INSERT INTO nanopix_sync_links VALUES (3, '20250121_152638', 'imported', 'linked', '')";
        dentaltid.conn.execute_batch(&format!("{link}; DELETE FROM sqlite_sequence")).unwrap();
        let rows = [
            new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000"),
            new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000"),
        ];
        assert_eq!(dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap(), [7, 8]);
    }

    /// DentalTID's `patients` declared `Patients`, as `sqlite_sequence` then names it: patient 5
    /// was imported and deleted, patient 6 deleted, so the next import takes 7, as SQLite gives
    /// it, never the id of a patient DentalTID deleted.
    #[test]
    fn an_import_into_a_table_declared_in_other_case_takes_no_id_issued_before() {
        let (_dir, mut dentaltid) = sample_database();
        let rename = "ALTER TABLE patients RENAME TO renamed; ALTER TABLE renamed RENAME TO Patients;
            INSERT INTO nanopix_sync_links VALUES (5, '20250121_152638', 'imported', 'delete_requested', '');
            DELETE FROM patients WHERE id >= 5";
        dentaltid.conn.execute_batch(rename).unwrap();
        assert_eq!(highest_patient_id(&dentaltid.conn).unwrap(), 6);
        let ids =
            dentaltid.import(&[new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000")], at(2025, 1, 21, 12, 0));
        assert_eq!(ids.unwrap(), [7]);
    }

    /// DentalTID's table refuses a second patient holding an `external_id` (a UNIQUE index of its
    /// own), and NanoPix saved another person under the id of the newest patient: the import is
    /// refused, and that patient is neither taken for her nor given her link.
    #[test]
    fn an_import_refused_under_the_newest_patients_external_id_is_never_taken_for_that_patient() {
        let (_dir, mut dentaltid) = sample_database();
        let first = new_patient("Amina", at(2025, 1, 1, 0, 0), "20250101_000000");
        assert_eq!(dentaltid.import(&[first], at(2025, 1, 21, 12, 0)).unwrap(), [7]);
        dentaltid.conn.execute_batch("CREATE UNIQUE INDEX own_external_id ON patients(external_id)").unwrap();
        let other_person = new_patient("Lina", at(2025, 3, 2, 10, 0), "20250101_000000");
        let mut importing = dentaltid.importing();
        let outcomes = importing.insert(&[other_person], at(2025, 3, 2, 12, 0)).unwrap();
        importing.commit().unwrap();
        drop(importing);
        assert!(matches!(outcomes.as_slice(), [Err(Error::Database { .. })]), "{outcomes:?}");
        assert_eq!(dentaltid.link(7).unwrap().and_then(|link| link.synced_at), Some(at(2025, 1, 21, 12, 0)));
    }

    #[test]
    fn max_patient_id_remembers_deleted_ids() {
        let (_dir, dentaltid) = sample_database();
        assert_eq!(highest_patient_id(&dentaltid.conn).unwrap(), 6);
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id >= 5").unwrap();
        assert_eq!(highest_patient_id(&dentaltid.conn).unwrap(), 6);
        dentaltid.conn.execute_batch("DELETE FROM patients; DELETE FROM sqlite_sequence;").unwrap();
        assert_eq!(highest_patient_id(&dentaltid.conn).unwrap(), 0);
    }

    #[test]
    fn link_existing_sets_the_id_and_keeps_the_source() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0));
        let amina = dentaltid.patient(1).unwrap().unwrap();
        assert_eq!((amina.source, amina.external_id.as_deref()), (Source::Internal, Some("20250121_152638")));
        let link = dentaltid.link(1).unwrap().unwrap();
        assert_eq!((link.origin, link.state), (Some(LinkOrigin::Matched), LinkState::Linked));
    }

    #[test]
    fn link_existing_refuses_a_linked_or_missing_patient() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 2, "20250121_152638", at(2025, 1, 21, 12, 0));
        let outcome = link_outcome(&mut dentaltid, 2, "20250122_101010", at(2025, 1, 22, 12, 0));
        assert!(
            matches!(&outcome, LinkOutcome::Refused(Error::AlreadyLinked { patient_id: 2, external_id }) if external_id == "20250121_152638"),
            "{outcome:?}"
        );
        assert_eq!(dentaltid.patient(2).unwrap().unwrap().external_id.as_deref(), Some("20250121_152638"));
        assert_eq!(dentaltid.link(2).unwrap().unwrap().synced_at, Some(at(2025, 1, 21, 12, 0)));
        let outcome = link_outcome(&mut dentaltid, 42, "20250122_101010", at(2025, 1, 22, 12, 0));
        assert!(matches!(outcome, LinkOutcome::Stale), "{outcome:?}");
        assert_eq!(dentaltid.link(42).unwrap(), None);
    }
}
