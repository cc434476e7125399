//! The sync's own record of links (`nanopix_sync_links`) and the export journal
//! (`nanopix_sync_exports`).
//!
//! The journal row is written before NanoPix is touched and removed in the same transaction
//! that stores the new id on the patient, so a crash in between can be repaired. Rows this
//! library cannot read back are skipped, never fatal. Nothing here deletes a patient.

use chrono::NaiveDateTime;
use rusqlite::{Row, params};

use super::patients::{SET_EXTERNAL_ID, UPSERT_LINK};
use super::values::{integer_at, read_text, text_at};
use super::{DentalTid, Link, LinkOrigin, LinkState, PendingExport};
use crate::patient::{dart_timestamp, parse_dart_timestamp};
use crate::{Error, NanoPixId, Result};

/// The columns [`link_from_row`] reads, in its order.
const LINK_COLUMNS: &str = "patient_id, external_id, origin, state, synced_at";

/// Records a link DentalTID already had, unless the patient already has a link row.
const ADOPT_LINK: &str = "INSERT INTO nanopix_sync_links(patient_id, external_id, origin, state, synced_at)
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(patient_id) DO NOTHING";

impl DentalTid {
    /// Every link, in patient id order.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.query_links("reading links", "ORDER BY patient_id", [])
    }

    /// The link of one patient, if any.
    pub fn link(&self, patient_id: i64) -> Result<Option<Link>> {
        Ok(self.query_links("reading a link", "WHERE patient_id = ?1", [patient_id])?.pop())
    }

    /// Records links DentalTID already had (an `external_id` set without a link row), in one transaction.
    pub fn adopt_links(&mut self, links: &[(i64, NanoPixId, LinkOrigin)], synced_at: NaiveDateTime) -> Result<()> {
        let synced_at = dart_timestamp(synced_at);
        self.write("recording existing links", |tx| {
            let mut adopt = tx.prepare_cached(ADOPT_LINK)?;
            for (patient_id, external_id, origin) in links {
                let state = LinkState::Linked.as_str();
                adopt.execute(params![patient_id, external_id.to_string(), origin.as_str(), state, synced_at])?;
            }
            Ok(())
        })
    }

    /// Changes the state of an existing link (a patient without a link row is left alone).
    pub fn set_link_state(&mut self, patient_id: i64, state: LinkState) -> Result<()> {
        self.write("changing a link state", |tx| {
            let sql = "UPDATE nanopix_sync_links SET state = ?1 WHERE patient_id = ?2";
            tx.execute(sql, params![state.as_str(), patient_id]).map(drop)
        })
    }

    /// Unfinished exports, oldest first. Rows whose id is not a valid NanoPix id are skipped.
    pub fn pending_exports(&self) -> Result<Vec<PendingExport>> {
        let read = || {
            let sql = "SELECT patient_id, external_id, started_at FROM nanopix_sync_exports
                ORDER BY started_at, patient_id";
            let mut statement = self.conn.prepare_cached(sql)?;
            let rows = statement.query_map([], pending_export_from_row)?;
            rows.filter_map(|row| row.transpose()).collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map_err(Error::db(&self.path, "reading the export journal"))
    }

    /// Records the intent to export `patient_id` as `external_id`, before NanoPix is touched.
    pub fn begin_export(&mut self, patient_id: i64, external_id: NanoPixId, at: NaiveDateTime) -> Result<()> {
        let (external_id, at) = (external_id.to_string(), dart_timestamp(at));
        self.write("recording an export", |tx| {
            let sql = "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at) VALUES (?1, ?2, ?3)";
            tx.execute(sql, params![patient_id, external_id, at]).map(drop)
        })
    }

    /// Finishes an export in one transaction: sets `external_id`, records the link, clears the journal row.
    ///
    /// The patient may have been deleted meanwhile: the link is still recorded, so the engine
    /// can report the deletion.
    pub fn finish_export(&mut self, patient_id: i64, external_id: NanoPixId, synced_at: NaiveDateTime) -> Result<()> {
        let (external_id, synced_at) = (external_id.to_string(), dart_timestamp(synced_at));
        self.write("finishing an export", |tx| {
            tx.execute(SET_EXTERNAL_ID, params![external_id, patient_id])?;
            let (origin, state) = (LinkOrigin::Exported.as_str(), LinkState::Linked.as_str());
            tx.execute(UPSERT_LINK, params![patient_id, external_id, origin, state, synced_at])?;
            tx.execute("DELETE FROM nanopix_sync_exports WHERE patient_id = ?1", [patient_id]).map(drop)
        })
    }

    /// Drops a journal row whose export cannot go on (the patient was deleted before NanoPix was written).
    pub fn abandon_export(&mut self, patient_id: i64) -> Result<()> {
        self.write("abandoning an export", |tx| {
            tx.execute("DELETE FROM nanopix_sync_exports WHERE patient_id = ?1", [patient_id]).map(drop)
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

/// Reads a journal row; `None` when its id is no valid NanoPix id. An unreadable `started_at`
/// falls back to the time the id names (ids are made from the export's start time).
fn pending_export_from_row(row: &Row<'_>) -> rusqlite::Result<Option<PendingExport>> {
    let Some(patient_id) = integer_at(row, 0)? else { return Ok(None) };
    let Some(external_id) = text_at(row, 1)?.and_then(|text| NanoPixId::parse(&text).ok()) else { return Ok(None) };
    let started_at = text_at(row, 2)?.as_deref().and_then(parse_dart_timestamp).unwrap_or(external_id.datetime());
    Ok(Some(PendingExport { patient_id, external_id, started_at }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{at, link_one, nanopix_id, sample_database};
    use super::*;

    #[test]
    fn an_export_is_journaled_then_finished() {
        let (_dir, mut dentaltid) = sample_database();
        let id = nanopix_id("20250121_152638");
        dentaltid.begin_export(3, id, at(2025, 1, 21, 15, 26)).unwrap();
        let pending = dentaltid.pending_exports().unwrap();
        assert_eq!(pending, [PendingExport { patient_id: 3, external_id: id, started_at: at(2025, 1, 21, 15, 26) }]);
        assert_eq!(dentaltid.patient(3).unwrap().unwrap().external_id, None);
        dentaltid.finish_export(3, id, at(2025, 1, 21, 15, 27)).unwrap();
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
        dentaltid.begin_export(4, id, at(2025, 1, 21, 15, 26)).unwrap();
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id = 4").unwrap();
        dentaltid.finish_export(4, id, at(2025, 1, 21, 15, 27)).unwrap();
        assert!(dentaltid.pending_exports().unwrap().is_empty());
        assert_eq!(dentaltid.link(4).unwrap().map(|l| l.external_id), Some("20250121_152638".to_owned()));
        assert_eq!(dentaltid.all_patients().unwrap().len(), 5);
    }

    #[test]
    fn an_abandoned_export_leaves_the_patient_alone() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.begin_export(5, nanopix_id("20250121_152638"), at(2025, 1, 21, 15, 26)).unwrap();
        dentaltid.abandon_export(5).unwrap();
        assert!(dentaltid.pending_exports().unwrap().is_empty());
        assert_eq!(dentaltid.patient(5).unwrap().unwrap().external_id, None);
        assert_eq!(dentaltid.link(5).unwrap(), None);
    }

    #[test]
    fn pending_exports_come_oldest_first_and_skip_unreadable_ids() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.begin_export(2, nanopix_id("20250121_100001"), at(2025, 1, 21, 10, 1)).unwrap();
        dentaltid.begin_export(1, nanopix_id("20250121_090000"), at(2025, 1, 21, 9, 0)).unwrap();
        let sql = "INSERT INTO nanopix_sync_exports VALUES (3, '../../etc', '2025-01-21T08:00:00.000'),
            (4, '20250121_070000', 'whenever')";
        dentaltid.conn.execute_batch(sql).unwrap();
        let pending = dentaltid.pending_exports().unwrap();
        let order: Vec<(i64, NaiveDateTime)> = pending.iter().map(|p| (p.patient_id, p.started_at)).collect();
        assert_eq!(order, [(1, at(2025, 1, 21, 9, 0)), (2, at(2025, 1, 21, 10, 1)), (4, at(2025, 1, 21, 7, 0))]);
    }

    #[test]
    fn the_journal_refuses_the_same_id_twice() {
        let (_dir, mut dentaltid) = sample_database();
        let id = nanopix_id("20250121_152638");
        dentaltid.begin_export(1, id, at(2025, 1, 21, 15, 26)).unwrap();
        let error = dentaltid.begin_export(2, id, at(2025, 1, 21, 15, 26)).unwrap_err();
        assert!(matches!(error, Error::Database { step: "recording an export", .. }), "{error:?}");
        assert_eq!(dentaltid.pending_exports().unwrap().len(), 1);
    }

    #[test]
    fn adopted_links_never_replace_recorded_ones() {
        let (_dir, mut dentaltid) = sample_database();
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0)).unwrap();
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
        link_one(&mut dentaltid, 1, "20250121_152638", at(2025, 1, 21, 12, 0)).unwrap();
        dentaltid.set_link_state(1, LinkState::Missing).unwrap();
        assert_eq!(dentaltid.link(1).unwrap().unwrap().state, LinkState::Missing);
        dentaltid.set_link_state(1, LinkState::DeleteRequested).unwrap();
        assert_eq!(dentaltid.link(1).unwrap().unwrap().state, LinkState::DeleteRequested);
        dentaltid.set_link_state(2, LinkState::Missing).unwrap();
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
}
