//! The sync's own record of links: the link rows of `nanopix_sync_links` and their states, read
//! together with the links of import batches (see [`super::link_batches`]), and the delete
//! requests of links whose DentalTID patient was deleted.
//!
//! A link is stored in one of two ways. Patients written by one [`super::Importing::insert`] have
//! their links in an import batch, a row of `nanopix_sync_imports`. Every other link (among them
//! those of shorter runs, such as a live pass imports), and every change of state of an imported
//! one, is a row of `nanopix_sync_links`; a readable row there overrides a batch entry for the
//! same patient. A delete request stays noted in `nanopix_sync_unannounced_deletes` until it is
//! announced.
//!
//! Rows this library cannot read back are never fatal, and never rewritten: a row whose state,
//! patient or NanoPix id cannot be read is set apart (see [`UnreadableLink`]) and still links
//! what it names, overriding a batch entry as a readable row does; an `origin` or a `synced_at`
//! only describes its link, so one that cannot be read leaves that unknown, not the patient
//! unlinked. Nothing here deletes a patient.

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};
use rusqlite::types::Value;
use rusqlite::{Row, Transaction, params, params_from_iter};

use super::awaited_folders::note_unsettled_links;
use super::link_batches::{batch_key, batch_link};
use super::patients::patients_sequence;
use super::{DentalTid, Link, LinkOrigin, LinkState, RecordedLinks, UnreadableLink};
use crate::patient::{dart_timestamp, parse_dart_timestamp};
use crate::values::{IDS_PER_READ, integer_at, numbered_places, padded_with_null, read_text, text_at};
use crate::{Error, NanoPixId, Result};

/// The columns [`link_from_row`] reads, in its order.
const LINK_COLUMNS: &str = "patient_id, external_id, origin, state, synced_at";

/// Records a link row, unless the patient already has one.
const ADOPT_LINK: &str = "INSERT INTO nanopix_sync_links(patient_id, external_id, origin, state, synced_at)
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(patient_id) DO NOTHING";

/// Notes the delete request of a link, written in the same transaction as its state: it stays
/// noted until it is announced, so a crash in between does not lose it.
const NOTE_UNANNOUNCED_DELETE: &str = "INSERT OR REPLACE INTO nanopix_sync_unannounced_deletes(patient_id, external_id)
    SELECT patient_id, external_id FROM nanopix_sync_links WHERE patient_id = ?1";

/// Above this many patients, [`DentalTid::linked_patients`] first narrows them to those a link
/// row or an import batch names, then looks those up one by one.
const FEW_PATIENTS: usize = 256;

/// Whether a link row records NanoPix id `?1`.
const LINK_ROW_OF_ID: &str = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_links WHERE external_id = ?1)";

impl DentalTid {
    /// Every link, in patient id order: readable link rows and the links of imported batches,
    /// read with the link rows that cannot be read, in the same pass.
    pub fn links(&self) -> Result<RecordedLinks> {
        let mut links = self.query_links("reading links", "ORDER BY patient_id", [])?;
        let imported = self.batch_links().map_err(Error::db(&self.path, "reading the links of imports"))?;
        links.readable = merge_links(std::mem::take(&mut links.readable), imported, &links.unreadable);
        Ok(links)
    }

    /// The links to this NanoPix id that are marked missing (DentalTID may hold it twice).
    pub fn missing_links(&self, external_id: NanoPixId) -> Result<Vec<Link>> {
        let tail = "WHERE external_id = ?1 AND state = 'missing'";
        Ok(self.query_links("reading missing links", tail, [external_id.to_string()])?.readable)
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

    /// Whether a link row records this NanoPix id (see [`DentalTid::recorded_links`], which also
    /// reads the import batches).
    pub fn has_link_row(&self, external_id: NanoPixId) -> Result<bool> {
        let read = || self.conn.prepare_cached(LINK_ROW_OF_ID)?.query_row([external_id.to_string()], |row| row.get(0));
        read().map_err(Error::db(&self.path, "looking up links"))
    }

    /// Those of `ids` the sync recorded a link to, in a link row or an import batch, whatever
    /// became of the patient: a patient deleted in DentalTID after its import, or while its
    /// export finished, still counts, so its NanoPix patient is never imported back and its id
    /// never given again. Link rows are found by index; the batches are read once for all `ids`.
    pub fn recorded_links(&self, ids: &[NanoPixId]) -> Result<HashSet<NanoPixId>> {
        let read = || {
            let mut in_rows = self.conn.prepare_cached(LINK_ROW_OF_ID)?;
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

    /// The NanoPix ids of the links that ask for a delete, each once, oldest id first, with the
    /// DentalTID patients whose links ask for it: they were deleted while NanoPix still held its
    /// row. Found by a partial index (`state` is written out in the statement so that SQLite uses
    /// it).
    pub fn delete_requests(&self) -> Result<Vec<(NanoPixId, Vec<i64>)>> {
        let read = || {
            let sql = "SELECT external_id, patient_id FROM nanopix_sync_links
                WHERE state = 'delete_requested' ORDER BY external_id, patient_id";
            let mut rows = self.conn.prepare_cached(sql)?;
            let requests = rows.query_map([], |row| Ok((text_at(row, 0)?, integer_at(row, 1)?)))?;
            requests.collect::<rusqlite::Result<Vec<_>>>()
        };
        let requests = read().map_err(Error::db(&self.path, "reading delete requests"))?;
        let mut by_id: Vec<(NanoPixId, Vec<i64>)> = Vec::new();
        for (id, patient_id) in requests {
            let (Some(Ok(id)), Some(patient_id)) = (id.as_deref().map(NanoPixId::parse), patient_id) else { continue };
            match by_id.last_mut() {
                Some((last, patients)) if *last == id => patients.push(patient_id),
                _ => by_id.push((id, vec![patient_id])),
            }
        }
        Ok(by_id)
    }

    /// The delete requests the host dismissed, as the deleted patient and the NanoPix id its
    /// link asked to delete.
    pub fn dismissed_deletes(&self) -> Result<HashSet<(i64, String)>> {
        let read = || -> rusqlite::Result<HashSet<(i64, String)>> {
            let mut rows =
                self.conn.prepare_cached("SELECT patient_id, external_id FROM nanopix_sync_dismissed_deletes")?;
            let dismissed = rows.query_map([], |row| Ok((integer_at(row, 0)?, text_at(row, 1)?)))?;
            let pairs = dismissed.filter_map(|pair| pair.map(|(patient_id, id)| patient_id.zip(id)).transpose());
            pairs.collect()
        };
        read().map_err(Error::db(&self.path, "reading the delete requests dismissed"))
    }

    /// Notes the delete requests of `patient_ids` for NanoPix id `external_id` dismissed.
    pub fn dismiss_delete_requests(&mut self, external_id: NanoPixId, patient_ids: &[i64]) -> Result<()> {
        self.write("dismissing a delete request", |tx| {
            let sql = "INSERT OR REPLACE INTO nanopix_sync_dismissed_deletes(patient_id, external_id) VALUES (?1, ?2)";
            let mut dismiss = tx.prepare_cached(sql)?;
            for patient_id in patient_ids {
                dismiss.execute(params![patient_id, external_id.to_string()])?;
            }
            Ok(())
        })
    }

    /// The link rows naming any of `ids`, whatever their state: a read per [`IDS_PER_READ`]
    /// ids, found by the index on `external_id`.
    pub(super) fn link_rows_naming_any(&self, ids: &[NanoPixId]) -> Result<Vec<NamingRow>> {
        let read = || {
            let places = numbered_places(1, IDS_PER_READ).join(", ");
            let sql = format!(
                "SELECT {LINK_COLUMNS}, state = ?{} FROM nanopix_sync_links WHERE external_id IN ({places})",
                IDS_PER_READ + 1
            );
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut naming = Vec::new();
            for some in ids.chunks(IDS_PER_READ) {
                let named = some.iter().map(|id| Value::Text(id.to_string()));
                let mut values = padded_with_null(named, IDS_PER_READ);
                values.push(Value::Text(LinkState::DeleteRequested.as_str().to_owned()));
                let rows = statement.query_map(params_from_iter(values), naming_row)?;
                naming.extend(rows.filter_map(|row| row.transpose()).collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(naming)
        };
        read().map_err(Error::db(&self.path, "looking up the links to an id"))
    }

    /// Those of `patient_ids` the sync recorded a link for, whatever its state, and whether or
    /// not its row can be read (see [`DentalTid::linked_id`]): many are first narrowed to those a
    /// link row or an import batch names.
    pub fn linked_patients(&self, patient_ids: &[i64]) -> Result<HashSet<i64>> {
        if patient_ids.len() > FEW_PATIENTS {
            return self.linked_among_all(patient_ids);
        }
        let mut linked = HashSet::default();
        for &patient_id in patient_ids {
            if self.recorded_link(patient_id)?.is_some() {
                linked.insert(patient_id);
            }
        }
        Ok(linked)
    }

    /// Those of `patient_ids` that [`DentalTid::linked_id`] finds a link for. Only those a link
    /// row names or a batch row's range holds can have one: those few are then looked up one by
    /// one.
    fn linked_among_all(&self, patient_ids: &[i64]) -> Result<HashSet<i64>> {
        let wanted: HashSet<i64> = patient_ids.iter().copied().collect();
        let maybe = self.maybe_linked(&wanted).map_err(Error::db(&self.path, "looking up links"))?;
        let mut linked = HashSet::default();
        for id in maybe {
            if self.recorded_link(id)?.is_some() {
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

    /// The link of one patient, if any: its link row, or else its batch entry. A row that cannot
    /// be read gives none, though the patient is linked (see [`DentalTid::linked_id`]).
    pub fn link(&self, patient_id: i64) -> Result<Option<Link>> {
        Ok(self.recorded_link(patient_id)?.and_then(LinkRow::readable))
    }

    /// The NanoPix id, as stored, of the link the sync recorded for one patient, whatever its
    /// state, also when its row cannot be read (see [`UnreadableLink`]): such a patient is linked
    /// all the same. `None` without a link.
    pub fn linked_id(&self, patient_id: i64) -> Result<Option<String>> {
        Ok(self.recorded_link(patient_id)?.map(LinkRow::external_id))
    }

    /// The link row of one patient, readable or not, or else its batch entry.
    fn recorded_link(&self, patient_id: i64) -> Result<Option<LinkRow>> {
        let RecordedLinks { mut readable, mut unreadable } =
            self.query_links("reading a link", "WHERE patient_id = ?1", [patient_id])?;
        match (readable.pop(), unreadable.pop()) {
            (Some(link), _) => Ok(Some(LinkRow::Readable(link))),
            (None, Some(row)) => Ok(Some(LinkRow::Unreadable(row))),
            (None, None) => {
                let batch = batch_link(&self.conn, patient_id);
                Ok(batch.map_err(Error::db(&self.path, "reading the link of an import"))?.map(LinkRow::Readable))
            }
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
                    // What the batch does not tell is written `''`, which reads back as unknown.
                    let origin = link.origin.map_or("", LinkOrigin::as_str);
                    let synced_at = link.synced_at.map(dart_timestamp).unwrap_or_default();
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

    /// Runs `SELECT <link columns> FROM nanopix_sync_links <tail>`, setting the rows that cannot
    /// be read apart.
    fn query_links(&self, step: &'static str, tail: &str, params: impl rusqlite::Params) -> Result<RecordedLinks> {
        let read = || {
            let sql = format!("SELECT {LINK_COLUMNS} FROM nanopix_sync_links {tail}");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut rows = statement.query(params)?;
            let mut links = RecordedLinks::default();
            while let Some(row) = rows.next()? {
                match link_from_row(row)? {
                    LinkRow::Readable(link) => links.readable.push(link),
                    LinkRow::Unreadable(row) => links.unreadable.push(row),
                }
            }
            Ok(links)
        };
        read().map_err(Error::db(&self.path, step))
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

/// A link row naming one of the NanoPix ids [`DentalTid::link_rows_naming_any`] looked up.
pub(super) struct NamingRow {
    /// The patient the row links.
    pub patient_id: i64,
    /// The NanoPix id it names.
    pub external_id: NanoPixId,
    /// Its link, when the row is readable (see [`link_from_row`]).
    pub link: Option<Link>,
    /// Whether its state asks for a delete.
    pub requested: bool,
}

/// Reads a row of [`LINK_COLUMNS`] and whether it asks for a delete as a [`NamingRow`]; `None`
/// for a NanoPix id this library does not write, or a row naming no patient.
fn naming_row(row: &Row<'_>) -> rusqlite::Result<Option<NamingRow>> {
    let Some(Ok(external_id)) = text_at(row, 1)?.as_deref().map(NanoPixId::parse) else { return Ok(None) };
    let Some(patient_id) = integer_at(row, 0)? else { return Ok(None) };
    let link = link_from_row(row)?.readable();
    let requested = row.get::<_, Option<bool>>(5)?.unwrap_or(false);
    Ok(Some(NamingRow { patient_id, external_id, link, requested }))
}

/// Link rows and batch links, each in patient id order, merged in that order; a link row wins
/// over the batch entry of the same patient, and so does a row that cannot be read
/// (`unreadable`): that patient's batch entry is left out.
fn merge_links(recorded: Vec<Link>, mut imported: Vec<Link>, unreadable: &[UnreadableLink]) -> Vec<Link> {
    if !unreadable.is_empty() {
        let overridden: HashSet<i64> = unreadable.iter().filter_map(|row| row.patient_id).collect();
        imported.retain(|entry| !overridden.contains(&entry.patient_id));
    }
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

/// A link row (or a batch entry), as this version reads it.
enum LinkRow {
    /// A link it can read.
    Readable(Link),
    /// A row it cannot read.
    Unreadable(UnreadableLink),
}

impl LinkRow {
    /// The link, if it can be read.
    fn readable(self) -> Option<Link> {
        match self {
            Self::Readable(link) => Some(link),
            Self::Unreadable(_) => None,
        }
    }

    /// The NanoPix id it names, as stored (empty for none).
    fn external_id(self) -> String {
        match self {
            Self::Readable(link) => link.external_id,
            Self::Unreadable(row) => row.external_id.unwrap_or_default(),
        }
    }
}

/// Reads a row of [`LINK_COLUMNS`]; unreadable when its patient, NanoPix id or state is not one
/// this library writes.
fn link_from_row(row: &Row<'_>) -> rusqlite::Result<LinkRow> {
    let (patient_id, external_id) = (integer_at(row, 0)?, text_at(row, 1)?);
    let state = read_text(row, 3, |text| text.and_then(LinkState::from_column))?;
    match (patient_id, external_id, state) {
        (Some(patient_id), Some(external_id), Some(state)) => {
            let origin = read_text(row, 2, |text| text.and_then(LinkOrigin::from_column))?;
            let synced_at = read_text(row, 4, |text| text.and_then(parse_dart_timestamp))?;
            Ok(LinkRow::Readable(Link { patient_id, external_id, origin, state, synced_at }))
        }
        (patient_id, external_id, _) => {
            Ok(LinkRow::Unreadable(UnreadableLink { patient_id, external_id, state: text_at(row, 3)? }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        assert_link_agrees_with_links, at, import_ids, imported, link_one, nanopix_id, sample_database,
    };
    use super::*;

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
        assert!(!found.contains(&imported[150]));
        assert!(found.contains(&(last + 1)), "a link row of unknown state still links its patient");
    }

    #[test]
    fn adopted_links_never_replace_recorded_ones() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0));
        let first_unsettled = dentaltid.unsettled_links().unwrap().contains(1);
        let adopt = [
            (1, nanopix_id("20250101_000000"), LinkOrigin::Imported),
            (2, nanopix_id("20250102_000000"), LinkOrigin::Imported),
        ];
        dentaltid.adopt_links(&adopt, at(2025, 1, 22, 8, 0)).unwrap();
        let unsettled = dentaltid.unsettled_links().unwrap();
        assert!(unsettled.contains(2), "an adopted link awaits the record of its folder");
        assert_eq!(unsettled.contains(1), first_unsettled, "a link kept as it was is not adopted");
        let links = dentaltid.links().unwrap().readable;
        let summary: Vec<(i64, &str, Option<LinkOrigin>)> =
            links.iter().map(|l| (l.patient_id, l.external_id.as_str(), l.origin)).collect();
        assert_eq!(
            summary,
            [(1, "20250121_152638", Some(LinkOrigin::Matched)), (2, "20250102_000000", Some(LinkOrigin::Imported))]
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
    fn unreadable_link_rows_are_skipped_and_an_unreadable_origin_or_time_leaves_a_link_linked() {
        let (_dir, dentaltid) = sample_database();
        let sql = "INSERT INTO nanopix_sync_links VALUES
            (1, '20250121_152638', 'imported', 'linked', '2025-01-21T12:00:00.000'),
            (2, '20250121_152639', 'teleported', 'linked', '2025-01-21T12:00:00.000'),
            (3, '20250121_152640', 'matched', 'linked', 'someday'),
            (4, '20250121_152641', 'matched', 'archived', '2025-01-21T12:00:00.000')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let read: Vec<(i64, Option<LinkOrigin>, Option<NaiveDateTime>)> =
            dentaltid.links().unwrap().readable.iter().map(|l| (l.patient_id, l.origin, l.synced_at)).collect();
        let synced_at = Some(at(2025, 1, 21, 12, 0));
        let matched = Some(LinkOrigin::Matched);
        assert_eq!(read, [(1, Some(LinkOrigin::Imported), synced_at), (2, None, synced_at), (3, matched, None)]);
        assert_eq!(dentaltid.link(3).unwrap().map(|link| link.external_id).as_deref(), Some("20250121_152640"));
    }

    /// A link row whose state support staff (or a newer version) wrote is set apart with what it
    /// names, never dropped: its patient stays linked, as does an imported patient's whose batch
    /// entry it overrides, as a readable row does, and its NanoPix id stays named.
    #[test]
    fn a_link_row_that_cannot_be_read_still_links_what_it_names_and_overrides_its_batch_entry() {
        let (_dir, mut dentaltid) = sample_database();
        let ids =
            import_ids(&mut dentaltid, &["20240603_090500", "20240603_090501", "20240603_090502", "20240603_090503"]);
        let archived = format!(
            "INSERT INTO nanopix_sync_links VALUES
             (1, '20250121_152641', 'matched', 'archived', '2025-01-21T12:00:00.000'),
             ({}, '20240603_090501', 'imported', 'archived', '2025-01-21T12:00:00.000')",
            ids[1]
        );
        dentaltid.conn.execute_batch(&archived).unwrap();
        let links = dentaltid.links().unwrap();
        let readable: Vec<i64> = links.readable.iter().map(|link| link.patient_id).collect();
        assert_eq!(readable, [ids[0], ids[2], ids[3]]);
        let named: Vec<(Option<i64>, Option<NanoPixId>)> =
            links.unreadable.iter().map(|row| (row.patient_id, row.nanopix_id())).collect();
        assert_eq!(
            named,
            [(Some(1), Some(nanopix_id("20250121_152641"))), (Some(ids[1]), Some(nanopix_id("20240603_090501")))]
        );
        assert_eq!(dentaltid.link(ids[1]).unwrap(), None, "the row overrides the batch entry");
        assert_eq!(dentaltid.linked_id(ids[1]).unwrap().as_deref(), Some("20240603_090501"));
        let linked = dentaltid.linked_patients(&[1, 2, ids[1]]).unwrap();
        assert_eq!(linked, [1, ids[1]].into_iter().collect());
        assert_link_agrees_with_links(&dentaltid, 1..=ids[3]);
    }

    /// A table made before this library's, without its primary key, may hold a link row that
    /// names no patient: it names no holder of its NanoPix id, and judging that id goes on.
    #[test]
    fn a_link_row_naming_no_patient_is_no_holder_of_its_id() {
        let (_dir, dentaltid) = sample_database();
        dentaltid
            .conn
            .execute_batch(
                "DROP TABLE nanopix_sync_links;
                 CREATE TABLE nanopix_sync_links(patient_id, external_id, origin, state, synced_at);
                 INSERT INTO nanopix_sync_links VALUES
                 ('someone', '20250121_152638', 'matched', 'linked', '2025-01-21T12:00:00.000'),
                 (42, '20250121_152638', 'imported', 'delete_requested', '2025-01-21T12:00:00.000')",
            )
            .unwrap();
        let id = nanopix_id("20250121_152638");
        let holders = dentaltid.id_holders(&[id], &super::super::ImportedUnder::default()).unwrap();
        assert!(holders.delete_requested(id, None), "deleted patient 42 asks for it, and no patient holds it");
        let links = dentaltid.links().unwrap();
        let unreadable: Vec<Option<i64>> = links.unreadable.iter().map(|row| row.patient_id).collect();
        assert_eq!(unreadable, [None]);
        assert_eq!(links.nanopix_ids().collect::<Vec<_>>(), [id, id]);
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
        let mut links = dentaltid.links().unwrap().readable;
        let forget = "DELETE FROM patients WHERE id >= 6; DELETE FROM sqlite_sequence WHERE name = 'patients'";
        dentaltid.conn.execute_batch(forget).unwrap();
        let ids = import_ids(&mut dentaltid, &["20250505_050505", "20250505_050506", "20250505_050507"]);
        assert_eq!(ids, [9, 10, 11]);
        links.extend([
            imported(9, "20250505_050505"),
            imported(10, "20250505_050506"),
            imported(11, "20250505_050507"),
        ]);
        assert_eq!(dentaltid.links().unwrap().readable, links);
        assert_link_agrees_with_links(&dentaltid, 5..=12);
    }
}
