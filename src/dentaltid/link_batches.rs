//! The links of imported patients, kept compact in `nanopix_sync_imports`. Patients written by
//! one [`super::Importing::insert`] have their links there, one row per run of at least
//! [`SMALLEST_BATCH`] consecutive patient ids holding their NanoPix ids end to end (15 characters
//! each): patient `first_patient_id + k` is linked, as imported, to the k-th id. The row also
//! holds, end to end, the creation times of the NanoPix rows the links were made with (19
//! characters each, blank for none; see [`super::linked_rows`]). A shorter run gets link rows
//! instead (see [`super::links`]), and a readable link row overrides a batch entry for the same
//! patient. Of batch rows that overlap, the one starting last covers the patients from its start.
//!
//! Batch rows and entries this library cannot read back are skipped, never fatal. A batch row's
//! `synced_at` only dates its links: one that cannot be read leaves them undated, not unlinked.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::ops::ControlFlow;

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::awaited_folders::note_unsettled_links;
use super::linked_rows::record_linked_rows;
use super::patients::UPSERT_LINK;
use super::{DentalTid, Link, LinkOrigin, LinkState};
use crate::patient::{nanopix_datetime, parse_dart_timestamp, parse_nanopix_datetime};
use crate::values::{integer_at, read_text};
use crate::{Error, NanoPixId, Result};

/// The fewest consecutive imported patients recorded as a batch row; a shorter run gets link
/// rows. A live pass imports a patient or two: a batch row each would leave, after years of
/// passes, tens of thousands of rows that every look-up of a NanoPix id among the imports (each
/// export, each live import, each delete request) reads through, as no index finds an id there.
/// Link rows are found by their index on `external_id`.
const SMALLEST_BATCH: usize = 4;

/// The length of every NanoPix id in `nanopix_sync_imports.external_ids`.
const ID_LEN: usize = 15;

/// The text of NanoPix id `id` as an entry of `nanopix_sync_imports.external_ids`.
pub(super) fn batch_key(id: NanoPixId) -> Option<[u8; ID_LEN]> {
    <[u8; ID_LEN]>::try_from(id.to_string().as_bytes()).ok()
}

/// The length of every entry in `nanopix_sync_imports.created_times`: `YYYY-MM-DD HH:MM:SS`.
const CREATED_LEN: usize = 19;

/// The columns [`read_batch`] reads, in its order (`external_ids` last, so a row rejected on
/// its range is never read in full).
const BATCH_COLUMNS: &str = "first_patient_id, last_patient_id, synced_at, external_ids";

/// Records the links of one run of consecutive imported patients, and the rows they were made with.
const INSERT_BATCH: &str =
    "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids, created_times)
    VALUES (?1, ?2, ?3, ?4, ?5)";

/// Forgets the rows recorded for links of patients `?1 ..= ?2` that have none: left by patients
/// deleted before their ids were used again, they would hide the rows a new batch records.
const FORGET_ROWS_OF_RANGE: &str = "DELETE FROM nanopix_sync_linked_rows WHERE patient_id BETWEEN ?1 AND ?2";

/// Selects every batch row, as [`BATCH_COLUMNS`] and `created_times`, in patient id order; the
/// ids and times only of those whose range reaches some patient of `?1 ..= ?2` (one whose range
/// cannot be read is read in full).
const BATCH_LINKED_ROWS: &str = "SELECT first_patient_id, last_patient_id, synced_at,
        CASE WHEN first_patient_id <= ?2 AND last_patient_id >= ?1 THEN external_ids END,
        CASE WHEN first_patient_id <= ?2 AND last_patient_id >= ?1 THEN created_times END
    FROM nanopix_sync_imports ORDER BY first_patient_id";

/// Selects the batch row that covers patient `?1`, if any: the one starting last at or before it.
const COVERING_BATCH: &str =
    "WHERE first_patient_id = (SELECT MAX(first_patient_id) FROM nanopix_sync_imports WHERE first_patient_id <= ?1)
        AND last_patient_id >= ?1";

/// Whether any patient of `?1 ..= ?2` already has a link, in a link row or a batch row.
const RANGE_LINKED: &str = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_links WHERE patient_id BETWEEN ?1 AND ?2)
    OR EXISTS(SELECT 1 FROM nanopix_sync_imports WHERE first_patient_id BETWEEN ?1 AND ?2)
    OR EXISTS(SELECT 1 FROM nanopix_sync_imports
        WHERE first_patient_id = (SELECT MAX(first_patient_id) FROM nanopix_sync_imports WHERE first_patient_id < ?1)
            AND last_patient_id >= ?1)";

impl DentalTid {
    /// Adds to `found` the ids of `wanted` (keyed by [`batch_key`]) that an import batch holds;
    /// stops once it found them all.
    pub(super) fn find_in_batches(
        &self,
        wanted: &HashMap<[u8; ID_LEN], NanoPixId>,
        found: &mut HashSet<NanoPixId>,
    ) -> rusqlite::Result<()> {
        let mut left = wanted.len();
        self.walk_batches(wanted, |id, _| {
            if found.insert(id) {
                left -= 1;
            }
            if left == 0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
    }

    /// Calls `held` with each import batch entry that holds one of `wanted` (keyed by
    /// [`batch_key`]) and the patient the entry gives it to, until `held` breaks. A batch holds
    /// its ids end to end, so an id's place, a multiple of [`ID_LEN`], says which patient of its
    /// range it belongs to (none for a batch without a readable first patient id).
    fn walk_batches(
        &self,
        wanted: &HashMap<[u8; ID_LEN], NanoPixId>,
        mut held: impl FnMut(NanoPixId, Option<i64>) -> ControlFlow<()>,
    ) -> rusqlite::Result<()> {
        let mut batches =
            self.conn.prepare_cached("SELECT first_patient_id, external_ids FROM nanopix_sync_imports")?;
        let mut rows = batches.query([])?;
        while let Some(row) = rows.next()? {
            let ValueRef::Text(entries) = row.get_ref(1)? else { continue };
            let first = integer_at(row, 0)?;
            for (entry, place) in entries.chunks_exact(ID_LEN).zip(0i64..) {
                let Some(&id) = <[u8; ID_LEN]>::try_from(entry).ok().and_then(|entry| wanted.get(&entry)) else {
                    continue;
                };
                if held(id, first.and_then(|first| first.checked_add(place))).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Every NanoPix id an import batch records, read in one pass: for a run of exports, whose
    /// every id tried would read all the batches (see [`DentalTid::recorded_links`]).
    pub fn ids_in_batches(&self) -> Result<HashSet<NanoPixId>> {
        let read = || {
            let mut ids = HashSet::default();
            let mut batches = self.conn.prepare_cached("SELECT external_ids FROM nanopix_sync_imports")?;
            let mut rows = batches.query([])?;
            while let Some(row) = rows.next()? {
                let ValueRef::Text(entries) = row.get_ref(0)? else { continue };
                let valid = entries.chunks_exact(ID_LEN).filter_map(|entry| std::str::from_utf8(entry).ok());
                ids.extend(valid.filter_map(|entry| NanoPixId::parse(entry).ok()));
            }
            Ok(ids)
        };
        read().map_err(Error::db(&self.path, "looking up links"))
    }

    /// The patients import batches give each of the NanoPix `ids` to, in one pass over the
    /// batches (see [`DentalTid::walk_batches`]).
    pub fn imported_under(&self, ids: &[NanoPixId]) -> Result<ImportedUnder> {
        let wanted: HashMap<[u8; ID_LEN], NanoPixId> =
            ids.iter().filter_map(|&id| Some((batch_key(id)?, id))).collect();
        let mut named: HashMap<NanoPixId, Vec<i64>> = HashMap::default();
        if !wanted.is_empty() {
            let read = self.walk_batches(&wanted, |id, patient_id| {
                named.entry(id).or_default().extend(patient_id);
                ControlFlow::Continue(())
            });
            read.map_err(Error::db(&self.path, "looking up the links to an id"))?;
        }
        Ok(ImportedUnder(named))
    }

    /// The links batch rows record, in patient id order. A row covers the patients from its
    /// first id on, so it replaces what rows starting earlier gave for them.
    pub(super) fn batch_links(&self) -> rusqlite::Result<Vec<Link>> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM nanopix_sync_imports ORDER BY first_patient_id");
        let mut statement = self.conn.prepare_cached(&sql)?;
        let mut rows = statement.query([])?;
        let mut links = Vec::new();
        while let Some(row) = rows.next()? {
            if let Some(first) = integer_at(row, 0)? {
                links.truncate(links.partition_point(|link: &Link| link.patient_id < first));
            }
            read_batch(row, |batch| batch.expand_into(&mut links))?;
        }
        Ok(links)
    }
}

/// Records the links of the patients one [`super::Importing::insert`] wrote, given as `(patient id,
/// NanoPix id, creation time of the NanoPix row)` in the order written: one batch row per run of
/// consecutive patient ids, or link rows for a short one (see [`record_run`]).
pub(super) fn record_imported_links(
    tx: &Transaction<'_>,
    imported: &[ImportedLink],
    synced_at: &str,
) -> rusqlite::Result<()> {
    for run in imported.chunk_by(|(previous, ..), (next, ..)| previous.checked_add(1) == Some(*next)) {
        record_run(tx, run, synced_at)?;
        if let (Some((first, ..)), Some((last, ..))) = (run.first(), run.last()) {
            note_unsettled_links(tx, *first, *last)?;
        }
    }
    Ok(())
}

/// The patients import batches give some NanoPix ids to, by id: see [`DentalTid::imported_under`].
#[derive(Debug, Default)]
pub struct ImportedUnder(pub(super) HashMap<NanoPixId, Vec<i64>>);

/// The link of one imported patient: its id, its NanoPix id and the creation time of the NanoPix
/// row it was imported from.
pub(super) type ImportedLink = (i64, NanoPixId, Option<NaiveDateTime>);

/// Records one run of consecutive patient ids as a batch row, with the rows their links were
/// made with. A run shorter than [`SMALLEST_BATCH`] gets link rows and rows of
/// `nanopix_sync_linked_rows` instead, and so does a run one of whose ids already has a link
/// (imports take no id a readable link names, see [`super::links::id_past_links`], but a batch row whose range
/// cannot be read reaches every patient after its start): they replace what is recorded for
/// those ids.
fn record_run(tx: &Transaction<'_>, run: &[ImportedLink], synced_at: &str) -> rusqlite::Result<()> {
    let (Some((first, ..)), Some((last, ..))) = (run.first(), run.last()) else { return Ok(()) };
    let linked = tx.prepare_cached(RANGE_LINKED)?.query_row([first, last], |row| row.get::<_, bool>(0))?;
    if !linked {
        tx.prepare_cached(FORGET_ROWS_OF_RANGE)?.execute([first, last])?;
    }
    if linked || run.len() < SMALLEST_BATCH {
        replace_links(tx, run, synced_at)?;
        return record_linked_rows(tx, run.iter().copied());
    }
    let mut external_ids = String::with_capacity(run.len().saturating_mul(ID_LEN));
    let mut created_times = String::with_capacity(run.len().saturating_mul(CREATED_LEN));
    for (_, external_id, created) in run {
        write!(external_ids, "{external_id}").map_err(|error| rusqlite::Error::ToSqlConversionFailure(error.into()))?;
        push_created(&mut created_times, *created);
    }
    tx.prepare_cached(INSERT_BATCH)?.execute(params![first, last, synced_at, external_ids, created_times]).map(drop)
}

/// Records each imported link of `run` as a link row, replacing the patient's link row if any.
fn replace_links(tx: &Transaction<'_>, run: &[ImportedLink], synced_at: &str) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(UPSERT_LINK)?;
    let (origin, state) = (LinkOrigin::Imported.as_str(), LinkState::Linked.as_str());
    for (patient_id, external_id, _) in run {
        upsert.execute(params![patient_id, external_id.to_string(), origin, state, synced_at])?;
    }
    Ok(())
}

/// Appends a batch entry of `created_times`: the creation time as NanoPix writes it, or blanks
/// for a row without one (or one that does not fit an entry).
fn push_created(created_times: &mut String, created: Option<NaiveDateTime>) {
    match created.map(nanopix_datetime).filter(|text| text.len() == CREATED_LEN) {
        Some(text) => created_times.push_str(&text),
        None => created_times.extend(std::iter::repeat_n(' ', CREATED_LEN)),
    }
}

/// The link the batch row covering `patient_id` records for it, if any.
pub(super) fn batch_link(conn: &Connection, patient_id: i64) -> rusqlite::Result<Option<Link>> {
    let mut statement =
        conn.prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM nanopix_sync_imports {COVERING_BATCH}"))?;
    let link = statement.query_row([patient_id], |row| read_batch(row, |batch| batch.link(patient_id))).optional()?;
    Ok(link.flatten().flatten())
}

/// The patients a read of import batches is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum BatchPatients<'a> {
    /// Every patient a batch covers.
    Every,
    /// Only these: the ids and times of a batch row whose range lies outside theirs, from the
    /// lowest to the highest, are not read (a batch holds up to 5,000 entries, and the first a
    /// whole first sync).
    Among(&'a BTreeSet<i64>),
}

impl BatchPatients<'_> {
    /// The lowest and the highest of the patients.
    fn bounds(self) -> (i64, i64) {
        match self {
            Self::Every => (i64::MIN, i64::MAX),
            Self::Among(patients) => {
                (patients.first().copied().unwrap_or(i64::MAX), patients.last().copied().unwrap_or(i64::MIN))
            }
        }
    }

    /// Whether `patient_id` is one of the patients.
    fn holds(self, patient_id: i64) -> bool {
        match self {
            Self::Every => true,
            Self::Among(patients) => patients.contains(&patient_id),
        }
    }
}

/// The rows import batches record the links of `patients` were made with, as `(patient id,
/// NanoPix id, creation time)` in patient id order: every entry with a valid NanoPix id and a
/// creation time, of the batch rows that cover it (as [`DentalTid::links`] reads them).
pub(super) fn batch_linked_rows(
    conn: &Connection,
    patients: BatchPatients<'_>,
) -> rusqlite::Result<Vec<(i64, NanoPixId, NaiveDateTime)>> {
    let mut statement = conn.prepare_cached(BATCH_LINKED_ROWS)?;
    let mut rows = statement.query(patients.bounds())?;
    let mut linked: Vec<(i64, NanoPixId, NaiveDateTime)> = Vec::new();
    while let Some(row) = rows.next()? {
        if let Some(first) = integer_at(row, 0)? {
            linked.truncate(linked.partition_point(|(patient_id, ..)| *patient_id < first));
        }
        let expanded = read_batch(row, |batch| -> rusqlite::Result<()> {
            let Some(times) = created_times(row, &batch)? else { return Ok(()) };
            let entries = (batch.first..=batch.last).zip(0..).filter(|&(patient_id, _)| patients.holds(patient_id));
            linked.extend(entries.filter_map(|(patient_id, place)| {
                let (id, created) = batch.linked_row(place, times)?;
                Some((patient_id, id, created))
            }));
            Ok(())
        })?;
        expanded.transpose()?;
    }
    Ok(linked)
}

/// The row the batch row covering `patient_id` records its link was made with, if any: its
/// NanoPix id and creation time.
pub(super) fn batch_linked_row(
    conn: &Connection,
    patient_id: i64,
) -> rusqlite::Result<Option<(NanoPixId, NaiveDateTime)>> {
    let sql = format!("SELECT {BATCH_COLUMNS}, created_times FROM nanopix_sync_imports {COVERING_BATCH}");
    let mut statement = conn.prepare_cached(&sql)?;
    let read = |row: &Row<'_>| {
        let found = read_batch(row, |batch| -> rusqlite::Result<_> {
            let Some(times) = created_times(row, &batch)? else { return Ok(None) };
            let place = usize::try_from(patient_id.saturating_sub(batch.first)).ok();
            Ok(place.and_then(|place| batch.linked_row(place, times)))
        })?;
        Ok(found.transpose()?.flatten())
    };
    Ok(statement.query_row([patient_id], read).optional()?.flatten())
}

/// The `created_times` of a batch row read with [`BATCH_COLUMNS`] and it, when it holds one
/// entry per NanoPix id of `batch`.
fn created_times<'row>(row: &'row Row<'_>, batch: &Batch<'_>) -> rusqlite::Result<Option<&'row [u8]>> {
    let ValueRef::Text(times) = row.get_ref(4)? else { return Ok(None) };
    let entries = batch.external_ids.len() / ID_LEN;
    Ok((entries.checked_mul(CREATED_LEN) == Some(times.len())).then_some(times))
}

/// A row of `nanopix_sync_imports` whose ids fit its range of patients, borrowing its ids.
struct Batch<'row> {
    /// The patient of the first id.
    first: i64,
    /// The patient of the last id.
    last: i64,
    /// When the batch was imported (local time), when readable.
    synced_at: Option<NaiveDateTime>,
    /// The NanoPix ids, [`ID_LEN`] bytes each, one per patient of `first ..= last`.
    external_ids: &'row [u8],
}

impl<'row> Batch<'row> {
    /// A batch, when `external_ids` holds exactly one id's length per patient of `first ..= last`.
    fn new(first: i64, last: i64, synced_at: Option<NaiveDateTime>, external_ids: &'row str) -> Option<Self> {
        let patients = usize::try_from(last.checked_sub(first)?.checked_add(1)?).ok()?;
        let fits = patients.checked_mul(ID_LEN)? == external_ids.len();
        fits.then_some(Self { first, last, synced_at, external_ids: external_ids.as_bytes() })
    }

    /// The link of `patient_id`, when the batch covers it with a valid NanoPix id.
    fn link(&self, patient_id: i64) -> Option<Link> {
        let start = usize::try_from(patient_id.checked_sub(self.first)?).ok()?.checked_mul(ID_LEN)?;
        let entry = self.external_ids.get(start..start.checked_add(ID_LEN)?)?;
        self.entry_link(patient_id, entry)
    }

    /// The NanoPix id and row creation time of the entry at `place`, when it holds a valid NanoPix
    /// id and `created_times` (see [`created_times`]) a creation time.
    fn linked_row(&self, place: usize, created_times: &[u8]) -> Option<(NanoPixId, NaiveDateTime)> {
        let id = NanoPixId::parse(entry_at(self.external_ids, place, ID_LEN)?).ok()?;
        let created = entry_at(created_times, place, CREATED_LEN).and_then(parse_nanopix_datetime)?;
        Some((id, created))
    }

    /// Appends the link of every entry that holds a valid NanoPix id, in patient id order.
    fn expand_into(&self, links: &mut Vec<Link>) {
        links.reserve(self.external_ids.len() / ID_LEN);
        let entries = (self.first..=self.last).zip(self.external_ids.chunks_exact(ID_LEN));
        links.extend(entries.filter_map(|(patient_id, entry)| self.entry_link(patient_id, entry)));
    }

    /// The imported link of one entry; `None` unless the entry is a valid NanoPix id.
    fn entry_link(&self, patient_id: i64, entry: &[u8]) -> Option<Link> {
        let external_id = std::str::from_utf8(entry).ok()?;
        NanoPixId::parse(external_id).ok()?;
        let (origin, state, synced_at) = (Some(LinkOrigin::Imported), LinkState::Linked, self.synced_at);
        Some(Link { patient_id, external_id: external_id.to_owned(), origin, state, synced_at })
    }
}

/// The text of the entry at `place` of `entries`, laid end to end `len` bytes each.
fn entry_at(entries: &[u8], place: usize, len: usize) -> Option<&str> {
    let start = place.checked_mul(len)?;
    std::str::from_utf8(entries.get(start..start.checked_add(len)?)?).ok()
}

/// Reads a row of [`BATCH_COLUMNS`] and hands it to `use_batch`; `None`, without calling it,
/// when its range or ids are not ones this library writes.
fn read_batch<T>(row: &Row<'_>, use_batch: impl FnOnce(Batch<'_>) -> T) -> rusqlite::Result<Option<T>> {
    let (Some(first), Some(last)) = (integer_at(row, 0)?, integer_at(row, 1)?) else { return Ok(None) };
    let synced_at = read_text(row, 2, |text| text.and_then(parse_dart_timestamp))?;
    read_text(row, 3, |text| text.and_then(|ids| Batch::new(first, last, synced_at, ids)).map(use_batch))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_link_agrees_with_links, at, import_ids, imported, link_one, nanopix_id, new_patient, sample_database,
    };
    use super::*;

    /// The number of rows of `table`.
    fn count(dentaltid: &DentalTid, table: &str) -> i64 {
        dentaltid.conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)).unwrap()
    }

    /// `(first, last, external_ids)` of every batch row, in order.
    fn batch_rows(dentaltid: &DentalTid) -> Vec<(i64, i64, String)> {
        let sql = "SELECT first_patient_id, last_patient_id, external_ids FROM nanopix_sync_imports ORDER BY 1";
        let mut statement = dentaltid.conn.prepare(sql).unwrap();
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn an_imported_patient_deleted_in_dentaltid_is_still_recorded_by_its_batch() {
        let (_dir, mut dentaltid) = sample_database();
        let rows = [
            new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000"),
            new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000"),
            new_patient("C", at(2025, 1, 3, 0, 0), "20250103_000000"),
            new_patient("D", at(2025, 1, 4, 0, 0), "20250104_000000"),
        ];
        let ids = dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap();
        assert_eq!((count(&dentaltid, "nanopix_sync_imports"), count(&dentaltid, "nanopix_sync_links")), (1, 0));
        dentaltid.conn.execute("DELETE FROM patients WHERE id = ?1", [ids[1]]).unwrap();
        assert!(!dentaltid.holds_external_id(nanopix_id("20250102_000000")).unwrap());
        assert!(dentaltid.has_recorded_link(nanopix_id("20250102_000000")).unwrap(), "never imported back");
        assert!(dentaltid.has_recorded_link(nanopix_id("20250101_000000")).unwrap());
        assert!(!dentaltid.has_recorded_link(nanopix_id("20250101_000001")).unwrap());
        let asked = ["20250102_000000", "20250101_000001", "20250101_000000"].map(nanopix_id);
        let recorded = dentaltid.recorded_links(&asked).unwrap();
        assert_eq!(recorded, [asked[0], asked[2]].into_iter().collect(), "read once for all");
    }

    #[test]
    fn an_import_writes_one_batch_row_and_no_link_rows() {
        let (_dir, mut dentaltid) = sample_database();
        let ids =
            import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240101_000000", "20240101_000001"]);
        assert_eq!(ids, [7, 8, 9, 10]);
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 0);
        let ids = "20240603_09050020240603_09050120240101_00000020240101_000001".to_owned();
        assert_eq!(batch_rows(&dentaltid), [(7, 10, ids)]);
        let synced_at: String =
            dentaltid.conn.query_row("SELECT synced_at FROM nanopix_sync_imports", [], |row| row.get(0)).unwrap();
        assert_eq!(synced_at, "2025-01-21T12:00:00.000");
    }

    #[test]
    fn imports_of_fewer_than_a_batch_write_link_rows_found_by_their_ids() {
        let (_dir, mut dentaltid) = sample_database();
        // Left by a patient 8 deleted before the id was used again, without a link row.
        let stale = "INSERT INTO nanopix_sync_linked_rows VALUES (8, '20240603_090501', '2020-01-01 00:00:00')";
        dentaltid.conn.execute(stale, []).unwrap();
        // What live passes import: a patient or two at a time, many times over.
        assert_eq!(import_ids(&mut dentaltid, &["20240603_090500"]), [7]);
        assert_eq!(import_ids(&mut dentaltid, &["20240603_090501", "20240603_090502"]), [8, 9]);
        assert_eq!(count(&dentaltid, "nanopix_sync_imports"), 0, "no batch row per pass");
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 3);
        let expected = [imported(7, "20240603_090500"), imported(8, "20240603_090501"), imported(9, "20240603_090502")];
        assert_eq!(dentaltid.links().unwrap().readable, expected);
        assert_link_agrees_with_links(&dentaltid, 6..=10);
        let ids = [nanopix_id("20240603_090500"), nanopix_id("20240603_090502"), nanopix_id("20240101_000000")];
        let recorded = dentaltid.recorded_links(&ids).unwrap();
        assert_eq!(recorded, ids[..2].iter().copied().collect());
        let created = parse_nanopix_datetime("2024-06-03 09:05:00");
        let rows = dentaltid.linked_rows().unwrap();
        assert_eq!(rows.created(7, ids[0]), created, "the row each link was made with is kept");
        assert_eq!(rows.created(8, nanopix_id("20240603_090501")), created, "the stale row is replaced");
    }

    #[test]
    fn delete_requests_read_the_batches_once_for_many_ids_as_for_one() {
        let (_dir, mut dentaltid) = sample_database();
        let first = ["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503"];
        assert_eq!(import_ids(&mut dentaltid, &first), [7, 8, 9, 10]);
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id IN (8, 9)").unwrap();
        dentaltid.set_link_states(&[(8, LinkState::DeleteRequested), (9, LinkState::DeleteRequested)]).unwrap();
        // Patient 12 got patient 9's NanoPix id again, and DentalTID cleared its `external_id`
        // since: only its batch entry keeps the id.
        let second = ["20240101_000000", "20240603_090502", "20240101_000002", "20240101_000003"];
        assert_eq!(import_ids(&mut dentaltid, &second), [11, 12, 13, 14]);
        dentaltid.conn.execute_batch("UPDATE patients SET external_id = NULL WHERE id = 12").unwrap();
        let ids = [nanopix_id(first[1]), nanopix_id(first[2]), nanopix_id(first[3]), nanopix_id("20230101_000000")];
        let imported = dentaltid.imported_under(&ids).unwrap();
        let named = |id| imported.0.get(&id).cloned().unwrap_or_default();
        assert_eq!(ids.map(named), [vec![8], vec![9, 12], vec![10], vec![]]);
        let holders = dentaltid.id_holders(&ids, &imported).unwrap();
        let at_once: Vec<bool> = ids.iter().map(|&id| holders.delete_requested(id, None)).collect();
        let alone = |id| {
            let imported = dentaltid.imported_under(&[id]).unwrap();
            dentaltid.id_holders(&[id], &imported).unwrap().delete_requested(id, None)
        };
        let one_by_one: Vec<bool> = ids.iter().map(|&id| alone(id)).collect();
        assert_eq!(at_once, [true, false, false, false], "patient 12 keeps the second id; the third is no request");
        assert_eq!(at_once, one_by_one);
    }

    #[test]
    fn imported_links_read_as_link_rows_did() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 2, "20250121_152638", at(2025, 1, 21, 12, 0));
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501"]);
        import_ids(&mut dentaltid, &["20240101_000000"]);
        let matched = Link { origin: Some(LinkOrigin::Matched), ..imported(2, "20250121_152638") };
        let expected =
            [matched, imported(7, "20240603_090500"), imported(8, "20240603_090501"), imported(9, "20240101_000000")];
        assert_eq!(dentaltid.links().unwrap().readable, expected);
        assert_eq!(dentaltid.link(8).unwrap(), Some(imported(8, "20240603_090501")));
        assert_eq!(dentaltid.link(9).unwrap(), Some(imported(9, "20240101_000000")));
        assert_eq!(dentaltid.link(10).unwrap(), None);
        assert_eq!(dentaltid.link(1).unwrap(), None);
        assert_link_agrees_with_links(&dentaltid, 0..=11);
    }

    #[test]
    fn a_gap_in_ids_splits_the_batch() {
        let (_dir, mut dentaltid) = sample_database();
        let skip_ids = "CREATE TRIGGER skip_ids AFTER INSERT ON patients WHEN NEW.external_id = '20240603_090503'
            BEGIN
                INSERT INTO patients(id, name) VALUES (NEW.id + 10, 'placeholder');
                DELETE FROM patients WHERE id = NEW.id + 10;
            END";
        dentaltid.conn.execute_batch(skip_ids).unwrap();
        let external_ids =
            ["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503", "20240603_090504"];
        let ids = import_ids(&mut dentaltid, &external_ids);
        assert_eq!(ids, [7, 8, 9, 10, 21]);
        let batch = "20240603_09050020240603_09050120240603_09050220240603_090503".to_owned();
        assert_eq!(batch_rows(&dentaltid), [(7, 10, batch)], "the run of one after the gap gets a link row");
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 1);
        let expected: Vec<Link> =
            ids.iter().zip(external_ids).map(|(&id, external_id)| imported(id, external_id)).collect();
        assert_eq!(dentaltid.links().unwrap().readable, expected);
        assert_link_agrees_with_links(&dentaltid, 6..=22);
    }

    #[test]
    fn a_state_change_of_an_imported_link_is_written_as_a_link_row() {
        let (_dir, mut dentaltid) = sample_database();
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503"]);
        dentaltid.set_link_states(&[(8, LinkState::Missing)]).unwrap();
        let missing = Link { state: LinkState::Missing, ..imported(8, "20240603_090501") };
        assert_eq!(dentaltid.link(8).unwrap(), Some(missing.clone()));
        let expected =
            [imported(7, "20240603_090500"), missing, imported(9, "20240603_090502"), imported(10, "20240603_090503")];
        assert_eq!(dentaltid.links().unwrap().readable, expected);
        dentaltid.set_link_states(&[(8, LinkState::DeleteRequested)]).unwrap();
        assert_eq!(dentaltid.link(8).unwrap().map(|link| link.state), Some(LinkState::DeleteRequested));
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 1);
        dentaltid.set_link_states(&[(11, LinkState::Missing)]).unwrap();
        assert_eq!(dentaltid.link(11).unwrap(), None);
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 1);
        assert_link_agrees_with_links(&dentaltid, 6..=12);
    }

    #[test]
    fn a_link_row_overrides_the_batch_entry() {
        let (_dir, mut dentaltid) = sample_database();
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503"]);
        let sql = "INSERT INTO nanopix_sync_links VALUES
            (7, '20230303_030303', 'matched', 'missing', '2025-02-01T08:00:00.000')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let (origin, state, synced_at) = (Some(LinkOrigin::Matched), LinkState::Missing, Some(at(2025, 2, 1, 8, 0)));
        let recorded = Link { patient_id: 7, external_id: "20230303_030303".to_owned(), origin, state, synced_at };
        assert_eq!(dentaltid.link(7).unwrap(), Some(recorded.clone()));
        let batch = [imported(8, "20240603_090501"), imported(9, "20240603_090502"), imported(10, "20240603_090503")];
        assert_eq!(dentaltid.links().unwrap().readable, [[recorded].as_slice(), &batch].concat());
    }

    #[test]
    fn unreadable_batch_rows_and_entries_are_skipped_and_an_unreadable_time_leaves_links_undated() {
        let (_dir, dentaltid) = sample_database();
        let sql = "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids) VALUES
            (10, 12, '2025-01-21T12:00:00.000', '20240101_000000../../etc/passw20240101_000002'),
            (20, 22, '2025-01-21T12:00:00.000', '20240101_00000020240101_000001'),
            (30, 29, '2025-01-21T12:00:00.000', ''),
            (40, 9223372036854775807, '2025-01-21T12:00:00.000', '20240101_000000'),
            (50, 'fifty', '2025-01-21T12:00:00.000', '20240101_000000'),
            (60, 60, 'someday', '20240101_000000'),
            (70, 71, '2025-01-21T12:00:00.000', '20240101_000000202401é1_00000'),
            (80, 80, '2025-01-21T12:00:00.000', X'3230323430313031' || '_000000')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let undated = Link { synced_at: None, ..imported(60, "20240101_000000") };
        let expected = [
            imported(10, "20240101_000000"),
            imported(12, "20240101_000002"),
            undated,
            imported(70, "20240101_000000"),
        ];
        assert_eq!(dentaltid.links().unwrap().readable[..4], expected);
        let listed: Vec<i64> = dentaltid.links().unwrap().readable.iter().map(|link| link.patient_id).collect();
        assert_eq!(listed, [10, 12, 60, 70, 80]);
        assert_link_agrees_with_links(&dentaltid, 0..=90);
    }

    #[test]
    fn a_batch_row_starting_later_covers_the_patients_from_its_start() {
        let (_dir, dentaltid) = sample_database();
        let sql = "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids) VALUES
            (10, 13, '2025-01-21T12:00:00.000', '20240101_00001020240101_00001120240101_00001220240101_000013'),
            (11, 11, '2025-01-21T12:00:00.000', '20240202_000011')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let listed: Vec<(i64, String)> =
            dentaltid.links().unwrap().readable.into_iter().map(|link| (link.patient_id, link.external_id)).collect();
        assert_eq!(listed, [(10, "20240101_000010".to_owned()), (11, "20240202_000011".to_owned())]);
        assert_link_agrees_with_links(&dentaltid, 9..=14);
    }

    #[test]
    fn a_deleted_patient_keeps_its_imported_link() {
        let (_dir, mut dentaltid) = sample_database();
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240603_090502"]);
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id = 8").unwrap();
        assert_eq!(dentaltid.patient(8).unwrap(), None);
        assert_eq!(dentaltid.link(8).unwrap(), Some(imported(8, "20240603_090501")));
        let listed: Vec<i64> = dentaltid.links().unwrap().readable.iter().map(|link| link.patient_id).collect();
        assert_eq!(listed, [7, 8, 9]);
    }

    #[test]
    fn adopting_skips_patients_a_batch_already_links() {
        let (_dir, mut dentaltid) = sample_database();
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503"]);
        let adopt = [
            (7, nanopix_id("20240603_090500"), LinkOrigin::Imported),
            (2, nanopix_id("20250102_000000"), LinkOrigin::Matched),
        ];
        dentaltid.adopt_links(&adopt, at(2025, 1, 22, 8, 0)).unwrap();
        let recorded: String = dentaltid
            .conn
            .query_row("SELECT group_concat(patient_id) FROM nanopix_sync_links", [], |row| row.get(0))
            .unwrap();
        assert_eq!(recorded, "2");
        assert_eq!(dentaltid.link(7).unwrap(), Some(imported(7, "20240603_090500")));
    }

    /// A batch row whose range cannot be read reaches every patient from its start: an import
    /// over those ids records link rows, which replace its entries.
    #[test]
    fn an_import_over_ids_an_unreadable_batch_reaches_replaces_their_links() {
        let (_dir, mut dentaltid) = sample_database();
        let sql = "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids)
            VALUES (7, 'eight', '2025-01-21T12:00:00.000', '20240101_00000720240101_000008')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let external_ids = ["20250505_050505", "20250505_050506", "20250505_050507", "20250505_050508"];
        let ids = import_ids(&mut dentaltid, &external_ids);
        assert_eq!(ids, [7, 8, 9, 10]);
        for (patient_id, external_id) in ids.into_iter().zip(external_ids) {
            assert_eq!(dentaltid.link(patient_id).unwrap(), Some(imported(patient_id, external_id)));
        }
        assert_eq!(count(&dentaltid, "nanopix_sync_links"), 4, "link rows, not a second batch row");
        assert_link_agrees_with_links(&dentaltid, 6..=11);
    }
}
