//! The sync's own record of links and the export journal (`nanopix_sync_exports`).
//!
//! A link is stored in one of two ways. Patients written by one [`super::Importing::insert`] have
//! their links in `nanopix_sync_imports`, one row per run of at least [`SMALLEST_BATCH`]
//! consecutive patient ids holding their NanoPix ids end to end (15 characters each): patient
//! `first_patient_id + k` is linked, as imported, to the k-th id. The row also holds, end to end,
//! the creation times of the NanoPix rows the links were made with (19 characters each, blank for
//! none; see [`super::linked_rows`]). Every other link (among them those of shorter runs, such as
//! a live pass imports), and every change of state of an imported one, is a row of
//! `nanopix_sync_links`; a readable row there overrides a batch entry for the same patient. Of
//! batch rows that overlap, the one starting last covers the patients from its start.
//!
//! The journal row is written before NanoPix is touched and removed in the same transaction
//! that stores the new id on the patient, so a crash in between can be repaired. Rows and batch
//! entries this library cannot read back are skipped, never fatal. Nothing here deletes a patient.

use std::fmt::Write;
use std::ops::ControlFlow;

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::awaited_folders::note_unsettled_links;
use super::candidates::still_fits;
use super::linked_rows::record_linked_rows;
use super::patients::{SET_EXTERNAL_ID, UPSERT_LINK, patient_in, patients_sequence};
use super::possible_duplicates::{Report, record_possible_duplicates};
use super::state::add_exports_due;
use super::{DentalTid, Link, LinkOrigin, LinkState, PendingExport};
use crate::matching::{MatchKey, PossibleDuplicate};
use crate::patient::{
    NewNanoPixPatient, Patient, WrittenRow, dart_timestamp, nanopix_datetime, parse_dart_timestamp,
    parse_nanopix_datetime,
};
use crate::values::{WHITESPACE, integer_at, read_text, text_at};
use crate::{Error, NanoPixId, Result};

/// The columns [`link_from_row`] reads, in its order.
const LINK_COLUMNS: &str = "patient_id, external_id, origin, state, synced_at";

/// Records a link row, unless the patient already has one.
const ADOPT_LINK: &str = "INSERT INTO nanopix_sync_links(patient_id, external_id, origin, state, synced_at)
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(patient_id) DO NOTHING";

/// The columns [`pending_export_from_row`] reads, in its order.
const JOURNAL_COLUMNS: &str =
    "patient_id, external_id, written_last_name, written_first_name, written_birthdate, written_created";

/// Records an export about to start.
const BEGIN_EXPORT: &str = "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at,
        written_last_name, written_first_name, written_birthdate, written_created)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// The NanoPix id of patient `?1`'s journal row, as stored.
const JOURNALED_ID: &str = "SELECT external_id FROM nanopix_sync_exports WHERE patient_id = ?1";

/// Drops patient `?1`'s journal row.
const DROP_JOURNAL_ROW: &str = "DELETE FROM nanopix_sync_exports WHERE patient_id = ?1";

/// Gives an export in flight a new id and new values to write; its start time stays.
const REPLAN_EXPORT: &str = "UPDATE nanopix_sync_exports SET external_id = ?2,
        written_last_name = ?3, written_first_name = ?4, written_birthdate = ?5, written_created = ?6
    WHERE patient_id = ?1";

/// Records the row an export wrote for patient `?1` under NanoPix id `?2` as the one its link is
/// made with (see [`super::linked_rows`]), by the creation time its journal row holds.
const RECORD_EXPORTED_ROW: &str = "INSERT OR REPLACE INTO nanopix_sync_linked_rows(patient_id, external_id, created)
    SELECT patient_id, ?2, written_created FROM nanopix_sync_exports
    WHERE patient_id = ?1 AND typeof(written_created) = 'text'";

/// Notes the delete request of a link, written in the same transaction as its state: it stays
/// noted until it is announced, so a crash in between does not lose it.
const NOTE_UNANNOUNCED_DELETE: &str = "INSERT OR REPLACE INTO nanopix_sync_unannounced_deletes(patient_id, external_id)
    SELECT patient_id, external_id FROM nanopix_sync_links WHERE patient_id = ?1";

/// Above this many patients, [`DentalTid::linked_patients`] first narrows them to those a link
/// row or an import batch names, then looks those up one by one.
const FEW_PATIENTS: usize = 256;

/// The fewest consecutive imported patients recorded as a batch row; a shorter run gets link
/// rows. A live pass imports a patient or two: a batch row each would leave, after years of
/// passes, tens of thousands of rows that every look-up of a NanoPix id among the imports (each
/// export, each live import, each delete request) reads through, as no index finds an id there.
/// Link rows are found by their index on `external_id`.
const SMALLEST_BATCH: usize = 4;

/// The length of every NanoPix id in `nanopix_sync_imports.external_ids`.
const ID_LEN: usize = 15;

/// The text of NanoPix id `id` as an entry of `nanopix_sync_imports.external_ids`.
fn batch_key(id: NanoPixId) -> Option<[u8; ID_LEN]> {
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
    /// Every link, in patient id order: link rows and the links of imported batches.
    pub fn links(&self) -> Result<Vec<Link>> {
        let recorded = self.query_links("reading links", "ORDER BY patient_id", [])?;
        let imported = self.batch_links().map_err(Error::db(&self.path, "reading the links of imports"))?;
        Ok(merge_links(recorded, imported))
    }

    /// The links to this NanoPix id that are marked missing (DentalTID may hold it twice).
    pub fn missing_links(&self, external_id: NanoPixId) -> Result<Vec<Link>> {
        let tail = "WHERE external_id = ?1 AND state = 'missing'";
        self.query_links("reading missing links", tail, [external_id.to_string()])
    }

    /// Whether any link is recorded, in a link row or a batch row.
    pub fn has_links(&self) -> Result<bool> {
        let sql = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_links) OR EXISTS(SELECT 1 FROM nanopix_sync_imports)";
        self.conn.query_row(sql, [], |row| row.get(0)).map_err(Error::db(&self.path, "looking for links"))
    }

    /// Whether the sync recorded a link to this NanoPix id: see [`DentalTid::recorded_links`].
    pub fn has_recorded_link(&self, external_id: NanoPixId) -> Result<bool> {
        Ok(self.recorded_links(&[external_id])?.contains(&external_id))
    }

    /// Those of `ids` the sync recorded a link to, in a link row or an import batch, whatever
    /// became of the patient: a patient deleted in DentalTID after its import, or while its
    /// export finished, still counts, so its NanoPix patient is never imported back and its id
    /// never given again. Link rows are found by index; the batches are read once for all `ids`.
    pub fn recorded_links(&self, ids: &[NanoPixId]) -> Result<HashSet<NanoPixId>> {
        let read = || {
            let mut in_rows =
                self.conn.prepare_cached("SELECT EXISTS(SELECT 1 FROM nanopix_sync_links WHERE external_id = ?1)")?;
            let mut found = HashSet::default();
            let mut rest = HashMap::default();
            for &id in ids {
                let text = id.to_string();
                if in_rows.query_row([&text], |row| row.get(0))? {
                    found.insert(id);
                } else if let Some(key) = batch_key(id) {
                    rest.insert(key, id);
                }
            }
            if !rest.is_empty() {
                self.find_in_batches(&rest, &mut found)?;
            }
            Ok(found)
        };
        read().map_err(Error::db(&self.path, "looking up links"))
    }

    /// Adds to `found` the ids of `wanted` (keyed by [`batch_key`]) that an import batch holds;
    /// stops once it found them all.
    fn find_in_batches(
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

    /// The NanoPix ids of the links that ask for a delete, each once: their DentalTID patient was
    /// deleted while NanoPix still held its row. Found by a partial index (`state` is written out
    /// in the statement so that SQLite uses it).
    pub fn delete_requests(&self) -> Result<Vec<NanoPixId>> {
        let read = || {
            let sql = "SELECT DISTINCT external_id FROM nanopix_sync_links WHERE state = 'delete_requested'";
            let mut rows = self.conn.prepare_cached(sql)?;
            let ids = rows.query_map([], |row| text_at(row, 0))?;
            ids.collect::<rusqlite::Result<Vec<_>>>()
        };
        let ids = read().map_err(Error::db(&self.path, "reading delete requests"))?;
        Ok(ids.into_iter().flatten().filter_map(|id| NanoPixId::parse(&id).ok()).collect())
    }

    /// Whether a `delete_requested` link records this NanoPix id, and no DentalTID patient holds
    /// NanoPix's row under it, created at `row_created`: none shows the id any more
    /// ([`DentalTid::shows_external_id`]) nor keeps a link to it (one whose `external_id`
    /// DentalTID cleared), except those whose link was made with another person's row (see
    /// [`super::linked_rows`]). Only then may the NanoPix patient be deleted. `imported` holds the
    /// patients import batches give the id to, read by [`DentalTid::imported_under`] once for
    /// many requests: reading them takes a pass over every batch, whose first holds a whole first
    /// sync.
    pub fn delete_requested(
        &self,
        external_id: NanoPixId,
        row_created: Option<NaiveDateTime>,
        imported: &ImportedUnder,
    ) -> Result<bool> {
        let sql = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_links WHERE external_id = ?1 AND state = ?2)";
        let requested = LinkState::DeleteRequested.as_str();
        let found = self.conn.query_row(sql, params![external_id.to_string(), requested], |row| row.get(0));
        let found: bool = found.map_err(Error::db(&self.path, "looking up a delete request"))?;
        if !found {
            return Ok(false);
        }
        let mut holders = self.patients_showing(external_id)?;
        holders.extend(self.kept_linked(external_id, imported)?);
        for patient_id in holders {
            if !self.linked_to_another_row(patient_id, external_id, row_created)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The patients still there that keep a link to this NanoPix id that asks for no delete, as
    /// [`DentalTid::link`] finds it: the patients a link row or an import batch (as `imported`
    /// gives them) names with it are looked up one by one.
    fn kept_linked(&self, external_id: NanoPixId, imported: &ImportedUnder) -> Result<Vec<i64>> {
        let text = external_id.to_string();
        let mut named = self.link_rows_naming(external_id)?;
        named.extend(imported.0.get(&external_id).into_iter().flatten());
        let mut kept = Vec::new();
        for patient_id in named {
            let keeps = self
                .link(patient_id)?
                .is_some_and(|link| link.external_id == text && link.state != LinkState::DeleteRequested);
            if keeps && self.patient(patient_id)?.is_some() {
                kept.push(patient_id);
            }
        }
        Ok(kept)
    }

    /// The patients whose link row names NanoPix id `external_id`, whatever its state.
    pub(super) fn link_rows_naming(&self, external_id: NanoPixId) -> Result<Vec<i64>> {
        let read = || -> rusqlite::Result<Vec<i64>> {
            let mut rows =
                self.conn.prepare_cached("SELECT patient_id FROM nanopix_sync_links WHERE external_id = ?1")?;
            rows.query_map([external_id.to_string()], |row| row.get(0))?.collect()
        };
        read().map_err(Error::db(&self.path, "looking up the links to an id"))
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

    /// Those of `patient_ids` the sync recorded a link for, whatever its state, as
    /// [`DentalTid::link`] finds it: many are first narrowed to those a link row or an import
    /// batch names.
    pub fn linked_patients(&self, patient_ids: &[i64]) -> Result<HashSet<i64>> {
        if patient_ids.len() > FEW_PATIENTS {
            return self.linked_among_all(patient_ids);
        }
        let mut linked = HashSet::default();
        for &patient_id in patient_ids {
            if self.link(patient_id)?.is_some() {
                linked.insert(patient_id);
            }
        }
        Ok(linked)
    }

    /// Those of `patient_ids` that [`DentalTid::link`] finds a link for. Only those a link row
    /// names or a batch row's range holds can have one: those few are then looked up one by one.
    fn linked_among_all(&self, patient_ids: &[i64]) -> Result<HashSet<i64>> {
        let wanted: HashSet<i64> = patient_ids.iter().copied().collect();
        let maybe = self.maybe_linked(&wanted).map_err(Error::db(&self.path, "looking up links"))?;
        let mut linked = HashSet::default();
        for id in maybe {
            if self.link(id)?.is_some() {
                linked.insert(id);
            }
        }
        Ok(linked)
    }

    /// Those of `wanted` that a link row names or that lie in the range of a batch row (read
    /// loosely: a range that cannot be read reaches every patient after its start).
    fn maybe_linked(&self, wanted: &HashSet<i64>) -> rusqlite::Result<HashSet<i64>> {
        let mut maybe = HashSet::default();
        let mut statement = self.conn.prepare_cached("SELECT patient_id FROM nanopix_sync_links")?;
        for id in statement.query_map([], |row| integer_at(row, 0))? {
            maybe.extend(id?.filter(|id| wanted.contains(id)));
        }
        let sql = "SELECT first_patient_id, last_patient_id FROM nanopix_sync_imports";
        let mut statement = self.conn.prepare_cached(sql)?;
        let mut ranges = Vec::new();
        for range in statement.query_map([], |row| Ok((integer_at(row, 0)?, integer_at(row, 1)?)))? {
            if let (Some(first), last) = range? {
                ranges.push((first, last.unwrap_or(i64::MAX)));
            }
        }
        ranges.sort_unstable();
        // The furthest patient any range starting at or before each one reaches.
        let reaches: Vec<(i64, i64)> = ranges
            .iter()
            .scan(i64::MIN, |reach, &(first, last)| {
                *reach = (*reach).max(last);
                Some((first, *reach))
            })
            .collect();
        for &id in wanted {
            let started = reaches.partition_point(|&(first, _)| first <= id);
            if started.checked_sub(1).and_then(|at| reaches.get(at)).is_some_and(|&(_, reach)| reach >= id) {
                maybe.insert(id);
            }
        }
        Ok(maybe)
    }

    /// The link of one patient, if any: its link row, or else its batch entry.
    pub fn link(&self, patient_id: i64) -> Result<Option<Link>> {
        match self.query_links("reading a link", "WHERE patient_id = ?1", [patient_id])?.pop() {
            Some(link) => Ok(Some(link)),
            None => batch_link(&self.conn, patient_id).map_err(Error::db(&self.path, "reading the link of an import")),
        }
    }

    /// Records links DentalTID already had (an `external_id` set without a link), in one
    /// transaction; each link recorded is noted unsettled until the caller records the folders it
    /// awaits (see [`super::awaited_folders`]). A patient whose link a batch row already records
    /// is left as it is.
    pub fn adopt_links(&mut self, links: &[(i64, NanoPixId, LinkOrigin)], synced_at: NaiveDateTime) -> Result<()> {
        let synced_at = dart_timestamp(synced_at);
        self.write("recording existing links", |tx| {
            let mut adopt = tx.prepare_cached(ADOPT_LINK)?;
            for (patient_id, external_id, origin) in links {
                if batch_link(tx, *patient_id)?.is_some() {
                    continue;
                }
                let state = LinkState::Linked.as_str();
                if adopt.execute(params![patient_id, external_id.to_string(), origin.as_str(), state, synced_at])? > 0 {
                    note_unsettled_links(tx, *patient_id, *patient_id)?;
                }
            }
            Ok(())
        })
    }

    /// Changes the state of existing links, in one transaction: updates each link row, or writes
    /// one from its batch entry (a patient without a link is left alone). A delete request is
    /// also noted as not announced yet (see [`DentalTid::unannounced_deletes`]).
    pub fn set_link_states(&mut self, changes: &[(i64, LinkState)]) -> Result<()> {
        self.write("changing link states", |tx| {
            let mut update = tx.prepare_cached("UPDATE nanopix_sync_links SET state = ?1 WHERE patient_id = ?2")?;
            for &(patient_id, state) in changes {
                if update.execute(params![state.as_str(), patient_id])? == 0 {
                    let Some(link) = batch_link(tx, patient_id)? else { continue };
                    let (origin, synced_at) = (link.origin.as_str(), dart_timestamp(link.synced_at));
                    let values = params![patient_id, link.external_id, origin, state.as_str(), synced_at];
                    tx.prepare_cached(ADOPT_LINK)?.execute(values)?;
                }
                if state == LinkState::DeleteRequested {
                    tx.prepare_cached(NOTE_UNANNOUNCED_DELETE)?.execute([patient_id])?;
                }
            }
            Ok(())
        })
    }

    /// The delete requests written and not announced yet, as patient and NanoPix id, by patient.
    pub fn unannounced_deletes(&self) -> Result<Vec<(i64, String)>> {
        let read = || {
            let sql = "SELECT patient_id, external_id FROM nanopix_sync_unannounced_deletes ORDER BY patient_id";
            let mut statement = self.conn.prepare_cached(sql)?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, text_at(row, 1)?.unwrap_or_default())))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map_err(Error::db(&self.path, "reading the delete requests not announced yet"))
    }

    /// Notes the delete requests of `patient_ids` announced.
    pub fn delete_requests_announced(&mut self, patient_ids: &[i64]) -> Result<()> {
        self.write("noting delete requests announced", |tx| {
            let mut forget = tx.prepare_cached("DELETE FROM nanopix_sync_unannounced_deletes WHERE patient_id = ?1")?;
            for patient_id in patient_ids {
                forget.execute([patient_id])?;
            }
            Ok(())
        })
    }

    /// Unfinished exports, oldest first. Rows whose id is not a valid NanoPix id are skipped.
    pub fn pending_exports(&self) -> Result<Vec<PendingExport>> {
        let read = || {
            let sql = format!("SELECT {JOURNAL_COLUMNS} FROM nanopix_sync_exports ORDER BY started_at, patient_id");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let rows = statement.query_map([], pending_export_from_row)?;
            rows.filter_map(|row| row.transpose()).collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map_err(Error::db(&self.path, "reading the export journal"))
    }

    /// The unfinished export of one patient, if the journal holds one with a valid NanoPix id.
    pub fn pending_export(&self, patient_id: i64) -> Result<Option<PendingExport>> {
        let read = || {
            let sql = format!("SELECT {JOURNAL_COLUMNS} FROM nanopix_sync_exports WHERE patient_id = ?1");
            self.conn.prepare_cached(&sql)?.query_row([patient_id], pending_export_from_row).optional()
        };
        read().map(Option::flatten).map_err(Error::db(&self.path, "reading the export journal"))
    }

    /// Records the intent to export `patient` as `row`, before NanoPix is touched: the id
    /// reserved and the values written. Records nothing and returns `false` when DentalTID no
    /// longer holds `patient` as given: deleted, or changed since it was read, so `row` would
    /// not be what the patient is now.
    pub fn begin_export(&mut self, patient: &Patient, row: &NewNanoPixPatient, at: NaiveDateTime) -> Result<bool> {
        let (external_id, at, written) = (row.id.to_string(), dart_timestamp(at), row.written());
        self.write("recording an export", |tx| {
            if patient_in(tx, patient.id)?.as_ref() != Some(patient) {
                return Ok(false);
            }
            // A journal row whose id is no valid NanoPix id (edited by hand) is never read as an
            // export in flight, and no export wrote NanoPix anything under it: it gives way.
            let journaled =
                tx.prepare_cached(JOURNALED_ID)?.query_row([patient.id], |row| text_at(row, 0)).optional()?;
            if journaled.is_some_and(|id| id.is_none_or(|id| NanoPixId::parse(&id).is_err())) {
                tx.prepare_cached(DROP_JOURNAL_ROW)?.execute([patient.id])?;
            }
            let values = params![
                patient.id,
                external_id,
                at,
                written.last_name,
                written.first_name,
                written.birthdate,
                written.created
            ];
            tx.execute(BEGIN_EXPORT, values).map(|_| true)
        })
    }

    /// Records that the export of `patient_id` now writes `row` instead: its reserved id and
    /// the values written, before NanoPix is touched again.
    ///
    /// # Failure
    /// [`Error::Database`] when no export of `patient_id` is in the journal.
    pub fn replan_export(&mut self, patient_id: i64, row: &NewNanoPixPatient) -> Result<()> {
        let (external_id, written) = (row.id.to_string(), row.written());
        self.write("changing an export", |tx| {
            let values = params![
                patient_id,
                external_id,
                written.last_name,
                written.first_name,
                written.birthdate,
                written.created
            ];
            match tx.execute(REPLAN_EXPORT, values)? {
                0 => Err(rusqlite::Error::QueryReturnedNoRows),
                _ => Ok(()),
            }
        })
    }

    /// Finishes an export in one transaction: sets `external_id`, records the link and the row it
    /// is made with (see [`super::linked_rows`]), keeps the patient's linked twins on the review
    /// list, and clears the journal row. `twins` gives the patient's `createdAt`, the names and
    /// birth date the twins were found for, and them, if any: those kept are the twins DentalTID
    /// still holds with the names and birth date they were found with, while the patient still
    /// has those it was found for (one renamed or given another birth date since may be another
    /// person). Returns them, for the export to report just what the list holds.
    ///
    /// The patient may have been deleted meanwhile: the link is still recorded, so the engine
    /// can report the deletion.
    pub fn finish_export(
        &mut self,
        patient_id: i64,
        external_id: NanoPixId,
        synced_at: NaiveDateTime,
        twins: Option<(&str, &MatchKey, &PossibleDuplicate)>,
    ) -> Result<Option<PossibleDuplicate>> {
        let (id, synced_at) = (external_id.to_string(), dart_timestamp(synced_at));
        self.write("finishing an export", |tx| {
            tx.execute(SET_EXTERNAL_ID, params![id, patient_id, WHITESPACE])?;
            let (origin, state) = (LinkOrigin::Exported.as_str(), LinkState::Linked.as_str());
            tx.execute(UPSERT_LINK, params![patient_id, id, origin, state, synced_at])?;
            tx.execute(RECORD_EXPORTED_ROW, params![patient_id, id])?;
            let mut kept = None;
            if let Some((created_at, key, found)) = twins {
                kept = twins_still_alike(tx, patient_id, key, found)?;
                let reported = kept.as_ref().map(|kept| Report {
                    patient_id,
                    created_at,
                    external_id,
                    reason: kept.reason,
                    candidates: &kept.candidates,
                });
                record_possible_duplicates(tx, reported)?;
            }
            tx.execute(DROP_JOURNAL_ROW, [patient_id])?;
            Ok(kept)
        })
    }

    /// Drops a journal row whose export cannot go on (the patient was deleted before NanoPix was written).
    pub fn abandon_export(&mut self, patient_id: i64) -> Result<()> {
        self.write("abandoning an export", |tx| tx.execute(DROP_JOURNAL_ROW, [patient_id]).map(drop))
    }

    /// Drops the journal row of the export of `patient_id`, which gives way to a link with the
    /// patient NanoPix saved for the same person meanwhile, and keeps the patient among the
    /// exports due (see [`DentalTid::exports_due`]) in the same transaction: should that link not
    /// happen (NanoPix deleted or changed its patient first), the next pass that exports exports
    /// her, though she is behind the export cursor.
    pub fn give_export_up_for_link(&mut self, patient_id: i64) -> Result<()> {
        self.write("dropping an export for a link", |tx| {
            tx.execute(DROP_JOURNAL_ROW, [patient_id])?;
            add_exports_due(tx, &[patient_id])
        })
    }

    /// Runs `SELECT <link columns> FROM nanopix_sync_links <tail>`, skipping unreadable rows.
    fn query_links(&self, step: &'static str, tail: &str, params: impl rusqlite::Params) -> Result<Vec<Link>> {
        let read = || {
            let sql = format!("SELECT {LINK_COLUMNS} FROM nanopix_sync_links {tail}");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params, link_from_row)?;
            rows.filter_map(|row| row.transpose()).collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map_err(Error::db(&self.path, step))
    }

    /// The links batch rows record, in patient id order. A row covers the patients from its
    /// first id on, so it replaces what rows starting earlier gave for them.
    fn batch_links(&self) -> rusqlite::Result<Vec<Link>> {
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

/// The highest patient id a link or an import batch may name for [`id_past_links`] to take an id
/// past it: one past it would leave DentalTID's next patients no id in order (SQLite then picks
/// random ids, below the export cursor), so a link past it (edited by hand) is left out.
const LINKED_IDS_UP_TO: i64 = i64::MAX / 2;

/// The id the next imported patient is to take when the one SQLite would give it is a patient
/// id a link or an export in flight still names, else `None`. A `patients` table without
/// AUTOINCREMENT gives the highest id again once its patient is deleted: a new patient under
/// her link would be taken for her, her delete request lost and her NanoPix patient imported
/// back (and an export's repair would end her export with him). The id is then the one past
/// every id named.
///
/// A table whose `sqlite_sequence` row counts its ids (AUTOINCREMENT, as DentalTID's) gives no
/// id up to the count again, and every id a link names was issued: the id SQLite gives is kept,
/// as before. A link past the count names an id never issued (edited by hand): taking an id past
/// one near the end of the range would leave DentalTID unable to add a patient.
pub(super) fn id_past_links(tx: &Transaction<'_>) -> rusqlite::Result<Option<i64>> {
    if patients_sequence(tx)?.is_some() {
        return Ok(None);
    }
    // Ids past LINKED_IDS_UP_TO were named by hand: no clinic issues that many.
    let sql = "SELECT (SELECT MAX(id) FROM patients), (SELECT MAX(patient_id) FROM nanopix_sync_links
            WHERE patient_id <= ?1),
        (SELECT MAX(last_patient_id) FROM nanopix_sync_imports
            WHERE typeof(last_patient_id) = 'integer' AND last_patient_id <= ?1),
        (SELECT MAX(patient_id) FROM nanopix_sync_exports WHERE patient_id <= ?1)";
    let read = |row: &Row<'_>| {
        let named = [integer_at(row, 1)?, integer_at(row, 2)?, integer_at(row, 3)?];
        Ok((integer_at(row, 0)?, named.into_iter().flatten().max()))
    };
    let (highest, linked) = tx.prepare_cached(sql)?.query_row([LINKED_IDS_UP_TO], read)?;
    match linked {
        Some(linked) if highest.is_none_or(|highest| linked > highest) => Ok(linked.checked_add(1)),
        _ => Ok(None),
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
pub struct ImportedUnder(HashMap<NanoPixId, Vec<i64>>);

/// The link of one imported patient: its id, its NanoPix id and the creation time of the NanoPix
/// row it was imported from.
pub(super) type ImportedLink = (i64, NanoPixId, Option<NaiveDateTime>);

/// Records one run of consecutive patient ids as a batch row, with the rows their links were
/// made with. A run shorter than [`SMALLEST_BATCH`] gets link rows and rows of
/// `nanopix_sync_linked_rows` instead, and so does a run one of whose ids already has a link
/// (imports take no id a readable link names, see [`id_past_links`], but a batch row whose range
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
fn batch_link(conn: &Connection, patient_id: i64) -> rusqlite::Result<Option<Link>> {
    let mut statement =
        conn.prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM nanopix_sync_imports {COVERING_BATCH}"))?;
    let link = statement.query_row([patient_id], |row| read_batch(row, |batch| batch.link(patient_id))).optional()?;
    Ok(link.flatten().flatten())
}

/// The rows import batches record their links were made with, as `(patient id, NanoPix id,
/// creation time)` in patient id order: every entry with a valid NanoPix id and a creation time,
/// of the batch rows that cover it (as [`DentalTid::links`] reads them).
pub(super) fn batch_linked_rows(conn: &Connection) -> rusqlite::Result<Vec<(i64, NanoPixId, NaiveDateTime)>> {
    let sql = format!("SELECT {BATCH_COLUMNS}, created_times FROM nanopix_sync_imports ORDER BY first_patient_id");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([])?;
    let mut linked: Vec<(i64, NanoPixId, NaiveDateTime)> = Vec::new();
    while let Some(row) = rows.next()? {
        if let Some(first) = integer_at(row, 0)? {
            linked.truncate(linked.partition_point(|(patient_id, ..)| *patient_id < first));
        }
        let expanded = read_batch(row, |batch| -> rusqlite::Result<()> {
            let Some(times) = created_times(row, &batch)? else { return Ok(()) };
            let entries = (batch.first..=batch.last).zip(0..);
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

/// Link rows and batch links, each in patient id order, merged in that order; a link row wins
/// over the batch entry of the same patient.
fn merge_links(recorded: Vec<Link>, imported: Vec<Link>) -> Vec<Link> {
    let mut merged = Vec::with_capacity(recorded.len() + imported.len());
    let mut imported = imported.into_iter().peekable();
    for link in recorded {
        merged.extend(std::iter::from_fn(|| imported.next_if(|entry| entry.patient_id < link.patient_id)));
        imported.next_if(|entry| entry.patient_id == link.patient_id);
        merged.push(link);
    }
    merged.extend(imported);
    merged
}

/// A row of `nanopix_sync_imports` whose ids fit its range of patients, borrowing its ids.
struct Batch<'row> {
    /// The patient of the first id.
    first: i64,
    /// The patient of the last id.
    last: i64,
    /// When the batch was imported (local time).
    synced_at: NaiveDateTime,
    /// The NanoPix ids, [`ID_LEN`] bytes each, one per patient of `first ..= last`.
    external_ids: &'row [u8],
}

impl<'row> Batch<'row> {
    /// A batch, when `external_ids` holds exactly one id's length per patient of `first ..= last`.
    fn new(first: i64, last: i64, synced_at: NaiveDateTime, external_ids: &'row str) -> Option<Self> {
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
        let (origin, state, synced_at) = (LinkOrigin::Imported, LinkState::Linked, self.synced_at);
        Some(Link { patient_id, external_id: external_id.to_owned(), origin, state, synced_at })
    }
}

/// The text of the entry at `place` of `entries`, laid end to end `len` bytes each.
fn entry_at(entries: &[u8], place: usize, len: usize) -> Option<&str> {
    let start = place.checked_mul(len)?;
    std::str::from_utf8(entries.get(start..start.checked_add(len)?)?).ok()
}

/// Reads a row of [`BATCH_COLUMNS`] and hands it to `use_batch`; `None`, without calling it,
/// when the row is not one this library writes.
fn read_batch<T>(row: &Row<'_>, use_batch: impl FnOnce(Batch<'_>) -> T) -> rusqlite::Result<Option<T>> {
    let (Some(first), Some(last)) = (integer_at(row, 0)?, integer_at(row, 1)?) else { return Ok(None) };
    let Some(synced_at) = read_text(row, 2, |text| text.and_then(parse_dart_timestamp))? else { return Ok(None) };
    read_text(row, 3, |text| text.and_then(|ids| Batch::new(first, last, synced_at, ids)).map(use_batch))
}

/// Reads a row of [`LINK_COLUMNS`]; `None` when a value is not one this library writes.
fn link_from_row(row: &Row<'_>) -> rusqlite::Result<Option<Link>> {
    let (Some(patient_id), Some(external_id)) = (integer_at(row, 0)?, text_at(row, 1)?) else { return Ok(None) };
    let origin = read_text(row, 2, |text| text.and_then(LinkOrigin::from_column))?;
    let state = read_text(row, 3, |text| text.and_then(LinkState::from_column))?;
    let synced_at = read_text(row, 4, |text| text.and_then(parse_dart_timestamp))?;
    let (Some(origin), Some(state), Some(synced_at)) = (origin, state, synced_at) else { return Ok(None) };
    Ok(Some(Link { patient_id, external_id, origin, state, synced_at }))
}

/// Reads a journal row of [`JOURNAL_COLUMNS`]; `None` when its id is no valid NanoPix id.
fn pending_export_from_row(row: &Row<'_>) -> rusqlite::Result<Option<PendingExport>> {
    let Some(patient_id) = integer_at(row, 0)? else { return Ok(None) };
    let Some(external_id) = text_at(row, 1)?.and_then(|text| NanoPixId::parse(&text).ok()) else { return Ok(None) };
    Ok(Some(PendingExport { patient_id, external_id, written: written_from_row(row)? }))
}

/// The values a journal row of [`JOURNAL_COLUMNS`] records as written; `None` when it records
/// none (written by an older version: `written_created` is never NULL otherwise).
fn written_from_row(row: &Row<'_>) -> rusqlite::Result<Option<WrittenRow>> {
    let Some(created) = text_at(row, 5)? else { return Ok(None) };
    Ok(Some(WrittenRow {
        last_name: text_at(row, 2)?.unwrap_or_default(),
        first_name: text_at(row, 3)?.unwrap_or_default(),
        birthdate: text_at(row, 4)?,
        created,
    }))
}

/// Those of `found`, the linked twins of patient `patient_id` found for `key`, that DentalTID
/// still holds with the names and birth date they were found with, while the patient still has
/// `key`; `None` when none is left.
fn twins_still_alike(
    conn: &Connection,
    patient_id: i64,
    key: &MatchKey,
    found: &PossibleDuplicate,
) -> rusqlite::Result<Option<PossibleDuplicate>> {
    if still_fits(conn, patient_id, key)? != Some(true) {
        return Ok(None);
    }
    let mut candidates = Vec::with_capacity(found.candidates.len());
    for twin in &found.candidates {
        let twin_key = MatchKey::of(&twin.first_name, &twin.last_name, key.born());
        if still_fits(conn, twin.patient_id, &twin_key)? == Some(true) {
            candidates.push(twin.clone());
        }
    }
    Ok((!candidates.is_empty()).then_some(PossibleDuplicate { reason: found.reason, candidates }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{at, exported_row, link_one, nanopix_id, new_patient, sample_database};
    use super::*;

    /// Imports one patient per NanoPix id, all synced at 2025-01-21 12:00; returns their ids.
    fn import_ids(dentaltid: &mut DentalTid, external_ids: &[&str]) -> Vec<i64> {
        let rows: Vec<_> = external_ids.iter().map(|id| new_patient("Imported", at(2024, 6, 3, 9, 5), id)).collect();
        dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap()
    }

    /// The link an import at 2025-01-21 12:00 gives `patient_id`.
    fn imported(patient_id: i64, external_id: &str) -> Link {
        let (origin, state, synced_at) = (LinkOrigin::Imported, LinkState::Linked, at(2025, 1, 21, 12, 0));
        Link { patient_id, external_id: external_id.to_owned(), origin, state, synced_at }
    }

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

    /// The patients among `ids` found linked all at once, and those [`DentalTid::link`] finds.
    fn linked_at_once_and_one_by_one(dentaltid: &DentalTid, ids: std::ops::RangeInclusive<i64>) -> [Vec<i64>; 2] {
        let everyone: Vec<i64> = ids.collect();
        assert!(everyone.len() > FEW_PATIENTS);
        let mut at_once: Vec<i64> = dentaltid.linked_patients(&everyone).unwrap().into_iter().collect();
        at_once.sort_unstable();
        let one_by_one = everyone.into_iter().filter(|&id| dentaltid.link(id).unwrap().is_some()).collect();
        [at_once, one_by_one]
    }

    #[test]
    fn odd_batch_rows_are_read_alike_for_many_patients_and_one_by_one() {
        let (_dir, dentaltid) = sample_database();
        // Entries that are no NanoPix id, in rows whose length fits their range.
        dentaltid
            .conn
            .execute_batch(
                "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids) VALUES
                 (10, 12, '2025-01-21T12:00:00.000', '20240101_000000../../etc/passw20240101_000002'),
                 (20, 20, '2025-01-21T12:00:00.000', 'not_a_nanopixid'),
                 (30, 30, '2025-01-21T12:00:00.000', '20241399_000000')",
            )
            .unwrap();
        let [at_once, one_by_one] = linked_at_once_and_one_by_one(&dentaltid, 1..=300);
        assert_eq!((&at_once, one_by_one), (&vec![10, 12], vec![10, 12]));
        // A table made before this library's, without its primary key: a text first id, and two
        // rows starting at one patient.
        dentaltid
            .conn
            .execute_batch(
                "DROP TABLE nanopix_sync_imports;
                 CREATE TABLE nanopix_sync_imports(first_patient_id INTEGER, last_patient_id INTEGER,
                     synced_at TEXT, external_ids TEXT);
                 INSERT INTO nanopix_sync_imports VALUES
                 (200, 200, '2025-01-21T12:00:00.000', '20240101_000200'),
                 (char(160) || '1', 2, '2025-01-21T12:00:00.000', '20240101_00000120240101_000002'),
                 (250, 250, '2025-01-21T12:00:00.000', '20240101_000250'),
                 (250, 252, '2025-01-21T12:00:00.000', 'too short')",
            )
            .unwrap();
        let [at_once, one_by_one] = linked_at_once_and_one_by_one(&dentaltid, 1..=300);
        assert_eq!(at_once, one_by_one);
        assert!(at_once.contains(&200));
    }

    #[test]
    fn many_patients_are_found_linked_as_a_few_are_one_by_one() {
        let (_dir, mut dentaltid) = sample_database();
        let ids: Vec<String> = (0..300).map(|i| format!("20240603_09{:02}{:02}", i / 60, i % 60)).collect();
        let mut imported = Vec::new();
        for batch in ids.chunks(100) {
            imported.extend(import_ids(&mut dentaltid, &batch.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        link_one(&mut dentaltid, 2, "20250122_091500", at(2025, 1, 22, 10, 0));
        let last = imported.last().copied().unwrap();
        let everyone: Vec<i64> = (1..=last + 50).collect();
        assert!(everyone.len() > FEW_PATIENTS);
        let found_alike = |dentaltid: &DentalTid| {
            let many = dentaltid.linked_patients(&everyone).unwrap();
            let mut one_by_one = HashSet::default();
            for few in everyone.chunks(FEW_PATIENTS) {
                one_by_one.extend(dentaltid.linked_patients(few).unwrap());
            }
            assert_eq!(many, one_by_one);
            many
        };
        let expected: HashSet<i64> = imported.iter().copied().chain([2]).collect();
        assert_eq!(found_alike(&dentaltid), expected);
        // Rows this library would not write: a batch starting inside another (it covers from its
        // start on), one whose ids do not fit its range, and a link row of unknown state.
        let odd_rows = format!(
            "INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids) VALUES ({start}, {start}, '2025-01-21T12:00:00.000', '20240603_090000');
             INSERT INTO nanopix_sync_imports(first_patient_id, last_patient_id, synced_at, external_ids) VALUES ({odd}, {odd}, '2025-01-21T12:00:00.000', 'short');
             INSERT INTO nanopix_sync_links VALUES ({unknown}, '20250122_091600', 'matched', 'odd', '2025-01-21T12:00:00.000');",
            start = imported[10],
            odd = imported[150],
            unknown = last + 1,
        );
        dentaltid.conn.execute_batch(&odd_rows).unwrap();
        let found = found_alike(&dentaltid);
        assert!(
            found.contains(&imported[10]) && !found.contains(&imported[11]),
            "the later batch covers from its start"
        );
        assert!(!found.contains(&imported[150]) && !found.contains(&(last + 1)));
    }

    /// Journals the export of patient `patient_id`, as DentalTID holds it, as `row`; checks that
    /// it was journaled.
    fn begin_export(
        dentaltid: &mut DentalTid,
        patient_id: i64,
        row: &NewNanoPixPatient,
        at: NaiveDateTime,
    ) -> crate::Result<()> {
        let patient = dentaltid.patient(patient_id).unwrap().unwrap();
        dentaltid.begin_export(&patient, row, at).map(|journaled| assert!(journaled, "patient {patient_id}"))
    }

    /// Checks that `link` gives, for every patient of `patient_ids`, what `links` lists for it,
    /// and that `links` lists each patient once, in order.
    fn assert_link_agrees_with_links(dentaltid: &DentalTid, patient_ids: std::ops::RangeInclusive<i64>) {
        let links = dentaltid.links().unwrap();
        assert!(links.windows(2).all(|pair| pair[0].patient_id < pair[1].patient_id), "{links:?}");
        for patient_id in patient_ids {
            let listed = links.iter().find(|link| link.patient_id == patient_id);
            assert_eq!(dentaltid.link(patient_id).unwrap().as_ref(), listed, "patient {patient_id}");
        }
    }

    #[test]
    fn an_export_is_journaled_then_finished() {
        let (_dir, mut dentaltid) = sample_database();
        let (id, row) = (nanopix_id("20250121_152638"), exported_row("20250121_152638"));
        begin_export(&mut dentaltid, 3, &row, at(2025, 1, 21, 15, 26)).unwrap();
        let pending = dentaltid.pending_exports().unwrap();
        assert_eq!(pending, [PendingExport { patient_id: 3, external_id: id, written: Some(row.written()) }]);
        assert_eq!(dentaltid.pending_export(3).unwrap().as_ref(), pending.first());
        assert_eq!(dentaltid.pending_export(2).unwrap(), None);
        assert_eq!(dentaltid.patient(3).unwrap().unwrap().external_id, None);
        dentaltid.finish_export(3, id, at(2025, 1, 21, 15, 27), None).unwrap();
        assert!(dentaltid.pending_exports().unwrap().is_empty());
        assert_eq!(dentaltid.patient(3).unwrap().unwrap().external_id.as_deref(), Some("20250121_152638"));
        let link = dentaltid.link(3).unwrap().unwrap();
        assert_eq!(
            (link.origin, link.state, link.synced_at),
            (LinkOrigin::Exported, LinkState::Linked, at(2025, 1, 21, 15, 27))
        );
    }

    #[test]
    fn finishing_the_export_of_a_deleted_patient_still_records_the_link() {
        let (_dir, mut dentaltid) = sample_database();
        let id = nanopix_id("20250121_152638");
        begin_export(&mut dentaltid, 4, &exported_row("20250121_152638"), at(2025, 1, 21, 15, 26)).unwrap();
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id = 4").unwrap();
        dentaltid.finish_export(4, id, at(2025, 1, 21, 15, 27), None).unwrap();
        assert!(dentaltid.pending_exports().unwrap().is_empty());
        assert_eq!(dentaltid.link(4).unwrap().map(|l| l.external_id), Some("20250121_152638".to_owned()));
        assert_eq!(dentaltid.all_patients().unwrap().len(), 5);
        assert!(!dentaltid.holds_external_id(id).unwrap(), "no patient holds the id");
        assert!(dentaltid.has_recorded_link(id).unwrap(), "the link row still knows it, so it is never imported back");
        assert!(!dentaltid.has_recorded_link(nanopix_id("20250121_152639")).unwrap());
    }

    #[test]
    fn an_imported_patient_deleted_in_dentaltid_is_still_recorded_by_its_batch() {
        let (_dir, mut dentaltid) = sample_database();
        let rows = [
            new_patient("A", at(2025, 1, 1, 0, 0), "20250101_000000"),
            new_patient("B", at(2025, 1, 2, 0, 0), "20250102_000000"),
        ];
        let ids = dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap();
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
    fn an_abandoned_export_leaves_the_patient_alone() {
        let (_dir, mut dentaltid) = sample_database();
        begin_export(&mut dentaltid, 5, &exported_row("20250121_152638"), at(2025, 1, 21, 15, 26)).unwrap();
        dentaltid.abandon_export(5).unwrap();
        assert!(dentaltid.pending_exports().unwrap().is_empty());
        assert_eq!(dentaltid.patient(5).unwrap().unwrap().external_id, None);
        assert_eq!(dentaltid.link(5).unwrap(), None);
    }

    #[test]
    fn pending_exports_come_oldest_first_and_skip_unreadable_ids() {
        let (_dir, mut dentaltid) = sample_database();
        begin_export(&mut dentaltid, 2, &exported_row("20250121_100001"), at(2025, 1, 21, 10, 1)).unwrap();
        begin_export(&mut dentaltid, 1, &exported_row("20250121_090000"), at(2025, 1, 21, 9, 0)).unwrap();
        let sql = "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at)
            VALUES (3, '../../etc', '2025-01-21T08:00:00.000'), (4, '20250121_070000', 'whenever')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let pending = dentaltid.pending_exports().unwrap();
        let order: Vec<i64> = pending.iter().map(|p| p.patient_id).collect();
        assert_eq!(order, [1, 2, 4], "by start time; a start time that cannot be read sorts last");
    }

    #[test]
    fn a_replanned_export_keeps_its_start_and_records_its_new_id_and_values() {
        let (_dir, mut dentaltid) = sample_database();
        begin_export(&mut dentaltid, 2, &exported_row("20250121_100001"), at(2025, 1, 21, 10, 1)).unwrap();
        begin_export(&mut dentaltid, 1, &exported_row("20250121_090000"), at(2025, 1, 21, 9, 0)).unwrap();
        let mut moved = exported_row("20250121_090005");
        (moved.last_name, moved.birth_date) = ("Benalli".into(), None);
        dentaltid.replan_export(1, &moved).unwrap();
        let pending = dentaltid.pending_exports().unwrap();
        let expected = PendingExport { patient_id: 1, external_id: moved.id, written: Some(moved.written()) };
        assert_eq!(pending[0], expected, "still the oldest");
        assert_eq!(pending.len(), 2);
        let error = dentaltid.replan_export(3, &exported_row("20250121_090006")).unwrap_err();
        assert!(matches!(error, Error::Database { step: "changing an export", .. }), "{error:?}");
    }

    #[test]
    fn the_journal_refuses_the_same_id_twice() {
        let (_dir, mut dentaltid) = sample_database();
        let row = exported_row("20250121_152638");
        begin_export(&mut dentaltid, 1, &row, at(2025, 1, 21, 15, 26)).unwrap();
        let error = begin_export(&mut dentaltid, 2, &row, at(2025, 1, 21, 15, 26)).unwrap_err();
        assert!(matches!(error, Error::Database { step: "recording an export", .. }), "{error:?}");
        assert_eq!(dentaltid.pending_exports().unwrap().len(), 1);
    }

    #[test]
    fn adopted_links_never_replace_recorded_ones() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0));
        let adopt = [
            (1, nanopix_id("20250101_000000"), LinkOrigin::Imported),
            (2, nanopix_id("20250102_000000"), LinkOrigin::Imported),
        ];
        dentaltid.adopt_links(&adopt, at(2025, 1, 22, 8, 0)).unwrap();
        let links = dentaltid.links().unwrap();
        let summary: Vec<(i64, &str, LinkOrigin)> =
            links.iter().map(|l| (l.patient_id, l.external_id.as_str(), l.origin)).collect();
        assert_eq!(
            summary,
            [(1, "20250121_152638", LinkOrigin::Matched), (2, "20250102_000000", LinkOrigin::Imported)]
        );
        assert!(links.iter().all(|l| l.state == LinkState::Linked));
    }

    #[test]
    fn link_state_changes_only_existing_links() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0));
        dentaltid.set_link_states(&[(1, LinkState::Missing)]).unwrap();
        assert_eq!(dentaltid.link(1).unwrap().unwrap().state, LinkState::Missing);
        dentaltid.set_link_states(&[(1, LinkState::DeleteRequested)]).unwrap();
        assert_eq!(dentaltid.link(1).unwrap().unwrap().state, LinkState::DeleteRequested);
        dentaltid.set_link_states(&[(2, LinkState::Missing)]).unwrap();
        assert_eq!(dentaltid.link(2).unwrap(), None);
    }

    #[test]
    fn unreadable_link_rows_are_skipped() {
        let (_dir, dentaltid) = sample_database();
        let sql = "INSERT INTO nanopix_sync_links VALUES
            (1, '20250121_152638', 'imported', 'linked', '2025-01-21T12:00:00.000'),
            (2, '20250121_152639', 'teleported', 'linked', '2025-01-21T12:00:00.000'),
            (3, '20250121_152640', 'matched', 'linked', 'someday')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let ids: Vec<i64> = dentaltid.links().unwrap().iter().map(|l| l.patient_id).collect();
        assert_eq!(ids, [1]);
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
        assert_eq!(dentaltid.links().unwrap(), expected);
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
        let at_once: Vec<bool> =
            ids.iter().map(|&id| dentaltid.delete_requested(id, None, &imported).unwrap()).collect();
        let alone = |id| dentaltid.delete_requested(id, None, &dentaltid.imported_under(&[id]).unwrap()).unwrap();
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
        let matched = Link { origin: LinkOrigin::Matched, ..imported(2, "20250121_152638") };
        let expected =
            [matched, imported(7, "20240603_090500"), imported(8, "20240603_090501"), imported(9, "20240101_000000")];
        assert_eq!(dentaltid.links().unwrap(), expected);
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
        assert_eq!(dentaltid.links().unwrap(), expected);
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
        assert_eq!(dentaltid.links().unwrap(), expected);
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
        let (origin, state, synced_at) = (LinkOrigin::Matched, LinkState::Missing, at(2025, 2, 1, 8, 0));
        let recorded = Link { patient_id: 7, external_id: "20230303_030303".to_owned(), origin, state, synced_at };
        assert_eq!(dentaltid.link(7).unwrap(), Some(recorded.clone()));
        let batch = [imported(8, "20240603_090501"), imported(9, "20240603_090502"), imported(10, "20240603_090503")];
        assert_eq!(dentaltid.links().unwrap(), [[recorded].as_slice(), &batch].concat());
    }

    #[test]
    fn unreadable_batch_rows_and_entries_are_skipped() {
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
        let expected =
            [imported(10, "20240101_000000"), imported(12, "20240101_000002"), imported(70, "20240101_000000")];
        assert_eq!(dentaltid.links().unwrap()[..3], expected);
        let listed: Vec<i64> = dentaltid.links().unwrap().iter().map(|link| link.patient_id).collect();
        assert_eq!(listed, [10, 12, 70, 80]);
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
            dentaltid.links().unwrap().into_iter().map(|link| (link.patient_id, link.external_id)).collect();
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
        let listed: Vec<i64> = dentaltid.links().unwrap().iter().map(|link| link.patient_id).collect();
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

    /// Without AUTOINCREMENT (no `sqlite_sequence` row), SQLite would give the ids of the deleted
    /// patients 6 to 8 again: the import takes the ids past them, and their links stay.
    #[test]
    fn an_import_after_the_newest_linked_patients_were_deleted_keeps_their_links() {
        let (_dir, mut dentaltid) = sample_database();
        import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501"]);
        // Only a patient with a birth date links.
        dentaltid.conn.execute("UPDATE patients SET dateOfBirth = '1990-01-01T00:00:00.000' WHERE id = 6", []).unwrap();
        link_one(&mut dentaltid, 6, "20230303_030303", at(2025, 1, 21, 12, 0));
        let mut links = dentaltid.links().unwrap();
        let forget = "DELETE FROM patients WHERE id >= 6; DELETE FROM sqlite_sequence WHERE name = 'patients'";
        dentaltid.conn.execute_batch(forget).unwrap();
        let ids = import_ids(&mut dentaltid, &["20250505_050505", "20250505_050506", "20250505_050507"]);
        assert_eq!(ids, [9, 10, 11]);
        links.extend([
            imported(9, "20250505_050505"),
            imported(10, "20250505_050506"),
            imported(11, "20250505_050507"),
        ]);
        assert_eq!(dentaltid.links().unwrap(), links);
        assert_link_agrees_with_links(&dentaltid, 5..=12);
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
