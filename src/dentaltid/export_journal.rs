//! The export journal, `nanopix_sync_exports`: a row for each export of a DentalTID patient to
//! NanoPix that has not finished, with the NanoPix id reserved for it and what it writes.
//!
//! The journal row is written before NanoPix is touched and removed in the same transaction
//! that stores the new id on the patient and records its link, so a crash in between can be
//! repaired. Rows this library cannot read back are skipped, never fatal. Nothing here deletes a
//! patient.

use chrono::NaiveDateTime;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::candidates::still_named_as;
use super::patients::{SET_EXTERNAL_ID, UPSERT_LINK, patient_in};
use super::possible_duplicates::{Report, ReportsOn, record_possible_duplicates};
use super::state::add_exports_due;
use super::{DentalTid, ExportToFinish, LinkOrigin, LinkState, PendingExport};
use crate::events::DuplicateCandidate;
use crate::matching::PossibleDuplicate;
use crate::patient::{NewNanoPixPatient, Patient, WrittenRow, dart_timestamp};
use crate::values::{WHITESPACE, integer_at, text_at};
use crate::{Error, NanoPixId, Result};

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

impl DentalTid {
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
        let at = dart_timestamp(at);
        self.write("recording an export", |tx| begin_in(tx, patient, row, &at))
    }

    /// Records the intent to export each of `planned` in one transaction, as
    /// [`DentalTid::begin_export`] does, each started at the creation time its row writes;
    /// returns, in order, whether each was recorded.
    pub fn begin_exports(&mut self, planned: &[(&Patient, &NewNanoPixPatient)]) -> Result<Vec<bool>> {
        self.write("recording an export", |tx| {
            planned.iter().map(|(patient, row)| begin_in(tx, patient, row, &dart_timestamp(row.created))).collect()
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

    /// Finishes an export in one transaction: see [`DentalTid::finish_exports`]. Returns its linked
    /// twins kept on the review list.
    pub fn finish_export(
        &mut self,
        patient_id: i64,
        external_id: NanoPixId,
        synced_at: NaiveDateTime,
        twins: Option<(&str, &DuplicateCandidate, &PossibleDuplicate)>,
    ) -> Result<Option<PossibleDuplicate>> {
        let export = ExportToFinish { patient_id, external_id, twins };
        self.finish_exports(&[export], synced_at).map(|mut kept| kept.pop().flatten())
    }

    /// Finishes `exports` in one transaction: for each, sets `external_id`, records the link and
    /// the row it is made with (see [`super::linked_rows`]), keeps the patient's linked twins on the
    /// review list, and clears the journal row. The twins kept are those DentalTID still holds
    /// with the names and birth date they were found with, while the patient still has those it
    /// was found for (one renamed or given another birth date since may be another person), less
    /// those whose own report names the patient already (listed or dismissed: the pair was put to
    /// review). Returns them for each export, in order, for it to report just what the list holds.
    ///
    /// A patient may have been deleted meanwhile: the link is still recorded, so the engine
    /// can report the deletion.
    pub fn finish_exports(
        &mut self,
        exports: &[ExportToFinish<'_>],
        synced_at: NaiveDateTime,
    ) -> Result<Vec<Option<PossibleDuplicate>>> {
        let synced_at = dart_timestamp(synced_at);
        let twins = exports.iter().filter_map(|export| export.twins).flat_map(|(_, _, found)| &found.candidates);
        let twins = twins.map(|twin| twin.patient_id).collect();
        self.write("finishing an export", |tx| {
            let mut reports_on_twins = ReportsOn::read(tx, twins)?;
            exports.iter().map(|export| finish_in(tx, export, &synced_at, &mut reports_on_twins)).collect()
        })
    }

    /// Drops a journal row whose export cannot go on (the patient was deleted before NanoPix was written).
    pub fn abandon_export(&mut self, patient_id: i64) -> Result<()> {
        self.abandon_exports(&[patient_id])
    }

    /// Drops the journal rows of the exports of `patient_ids` in one transaction: exports that
    /// wrote nothing to NanoPix and do not go on.
    pub fn abandon_exports(&mut self, patient_ids: &[i64]) -> Result<()> {
        self.write("abandoning an export", |tx| {
            let mut drop_row = tx.prepare_cached(DROP_JOURNAL_ROW)?;
            patient_ids.iter().try_for_each(|&patient_id| drop_row.execute([patient_id]).map(drop))
        })
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
}

/// Records in `tx` the intent to export `patient` as `row`, started `at` (see
/// [`DentalTid::begin_export`]); returns whether it was recorded.
fn begin_in(tx: &Connection, patient: &Patient, row: &NewNanoPixPatient, at: &str) -> rusqlite::Result<bool> {
    if patient_in(tx, patient.id)?.as_ref() != Some(patient) {
        return Ok(false);
    }
    // A journal row whose id is no valid NanoPix id (edited by hand) is never read as an
    // export in flight, and no export wrote NanoPix anything under it: it gives way.
    let journaled = tx.prepare_cached(JOURNALED_ID)?.query_row([patient.id], |row| text_at(row, 0)).optional()?;
    if journaled.is_some_and(|id| id.is_none_or(|id| NanoPixId::parse(&id).is_err())) {
        tx.prepare_cached(DROP_JOURNAL_ROW)?.execute([patient.id])?;
    }
    let written = row.written();
    let values = params![
        patient.id,
        row.id.to_string(),
        at,
        written.last_name,
        written.first_name,
        written.birthdate,
        written.created
    ];
    tx.prepare_cached(BEGIN_EXPORT)?.execute(values).map(|_| true)
}

/// Finishes `export` in `tx`, its link recorded at `synced_at` (see [`DentalTid::finish_exports`]);
/// returns its linked twins kept on the review list. `reports_on_twins` holds the latest reports
/// on its twins, and is told of the report it keeps.
fn finish_in(
    tx: &Connection,
    export: &ExportToFinish<'_>,
    synced_at: &str,
    reports_on_twins: &mut ReportsOn,
) -> rusqlite::Result<Option<PossibleDuplicate>> {
    let (patient_id, external_id) = (export.patient_id, export.external_id);
    let id = external_id.to_string();
    tx.prepare_cached(SET_EXTERNAL_ID)?.execute(params![id, patient_id, WHITESPACE])?;
    let (origin, state) = (LinkOrigin::Exported.as_str(), LinkState::Linked.as_str());
    tx.prepare_cached(UPSERT_LINK)?.execute(params![patient_id, id, origin, state, synced_at])?;
    tx.prepare_cached(RECORD_EXPORTED_ROW)?.execute(params![patient_id, id])?;
    let mut kept = None;
    if let Some((created_at, found_for, found)) = export.twins {
        kept = twins_still_alike(tx, found_for, found, reports_on_twins)?;
        let reported = kept.as_ref().map(|kept| Report {
            patient_id,
            created_at,
            external_id,
            reason: kept.reason,
            candidates: &kept.candidates,
        });
        if let Some(row) = record_possible_duplicates(tx, reported)? {
            reports_on_twins.kept_in(tx, row)?;
        }
    }
    tx.prepare_cached(DROP_JOURNAL_ROW)?.execute([patient_id])?;
    Ok(kept)
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

/// Those of `found`, the linked twins of the patient `found_for` names, that DentalTID still holds
/// with the names and birth date they were found with and whose own report (as `reports` holds
/// it) does not name the patient, while the patient still has those it was found for; `None`
/// when none is left.
fn twins_still_alike(
    conn: &Connection,
    found_for: &DuplicateCandidate,
    found: &PossibleDuplicate,
    reports: &ReportsOn,
) -> rusqlite::Result<Option<PossibleDuplicate>> {
    if !still_named_as(conn, found_for)? {
        return Ok(None);
    }
    let mut candidates = Vec::with_capacity(found.candidates.len());
    for twin in &found.candidates {
        if still_named_as(conn, twin)? && !reports.name_together(conn, twin.patient_id, found_for.patient_id)? {
            candidates.push(twin.clone());
        }
    }
    Ok((!candidates.is_empty()).then_some(PossibleDuplicate { reason: found.reason, candidates }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{at, exported_row, nanopix_id, sample_database};
    use super::*;

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
            (Some(LinkOrigin::Exported), LinkState::Linked, Some(at(2025, 1, 21, 15, 27)))
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
}
