//! The live pass: the work Live Sync does after a hint from the watcher, reading only the
//! NanoPix rows and DentalTID patients past the cursor the last pass left, and restoring the
//! links marked missing whose row or folder is back. A change it cannot follow so leads to a
//! full reconcile.

use foldhash::HashSet;

use super::{Engine, PAGE};
use crate::dentaltid::is_another_person;
use crate::events::ReconcileReport;
use crate::nanopix::{PatientRows, RowStamp};
use crate::patient::NanoPixPatient;
use crate::{NanoPixId, Result};

/// How far the last pass read each side, so a live pass reads only what is new.
#[derive(Debug, Clone)]
pub(super) struct LiveCursor {
    /// The NanoPix row with the highest `Patient.pk` read, as it was read (`None` without one):
    /// another row at its `pk` means rows changed behind the cursor (see [`RowStamp`]).
    pub(super) nanopix_row: Option<RowStamp>,
    /// How many NanoPix rows there were up to that `pk`.
    pub(super) nanopix_rows: u64,
    /// NanoPix's data version before the pass read it: while it stays the same, nobody else
    /// wrote to NanoPix, so it holds no patient the sync has not seen.
    pub(super) nanopix_version: i64,
    /// DentalTID's highest `patients.id` and row count, read together.
    pub(super) dentaltid: (i64, u64),
    /// The highest DentalTID patient id whose link a pass has checked: those a full reconcile
    /// found in DentalTID's links, and those up to the extent of each pass since (a patient of
    /// theirs deleted later is counted by the extent). A link or import past it that lost its
    /// patient was written by a pass the patient was deleted during.
    pub(super) links_checked_up_to: i64,
    /// DentalTID's data version before the pass read it: while it stays the same, nobody else
    /// wrote to DentalTID, so no patient was deleted there.
    pub(super) dentaltid_version: i64,
}

impl LiveCursor {
    /// The highest NanoPix `Patient.pk` read (0 when there was no row).
    fn nanopix_pk(&self) -> i64 {
        self.nanopix_row.as_ref().map_or(0, |row| row.pk)
    }
}

impl Engine {
    /// New work after a hint from the watcher: reads only NanoPix rows and DentalTID patients
    /// past the cursor. `NanoPix.db3` replaced by another file, a row removed on either side, a
    /// NanoPix row added below the cursor (SQLite picks a random `pk` once the largest is taken),
    /// another id in NanoPix's row at the cursor (NanoPix gave a deleted last row's `pk` to a new
    /// patient), or a whole page of new NanoPix rows (a bulk import, which a full reconcile
    /// writes in short transactions) leads to a full reconcile instead. After a pass that failed,
    /// the next pass reconciles fully, opening `NanoPix.db3` afresh: on Windows a share that
    /// dropped and came back leaves the old connection failing for good, in a file that was never
    /// replaced.
    pub fn sync_changes(&mut self) -> Result<ReconcileReport> {
        let pass = self.sync_changes_from_cursor();
        if pass.is_err() {
            self.cursor = None;
        }
        pass
    }

    /// The work of [`Engine::sync_changes`].
    fn sync_changes_from_cursor(&mut self) -> Result<ReconcileReport> {
        self.ready_connections()?;
        self.ensure_indexes()?;
        let Some(cursor) = self.cursor.clone().filter(|_| !self.nanopix.replaced()) else { return self.reconcile() };
        // A pass that failed after writing links left them unsettled: a full reconcile settles them.
        if self.dentaltid.has_unsettled_links()? {
            return self.reconcile();
        }
        let versions = (self.nanopix.data_version()?, self.dentaltid.data_version()?);
        self.nanopix_read = Some(versions.0);
        self.left_for_exports = false;
        let mut report = ReconcileReport::default();
        // A NanoPix row at an id a repair left may be behind the cursor: skipped as an export's.
        let repairs = self.repair_some_exports(&mut report)?;
        if repairs.left_a_reserved_id {
            return self.reconcile_after(report, &repairs.tried);
        }
        let rows = self.nanopix.patients_after(Some(cursor.nanopix_pk()), PAGE)?;
        let read = (rows.patients.len() + rows.odd_rows.len()) as u64;
        if read >= u64::from(PAGE) || self.changed_behind(&cursor, read)? {
            return self.reconcile_after(report, &repairs.tried);
        }
        let nanopix_row = match rows.last_row() {
            Some(row) if row.pk > cursor.nanopix_pk() => Some(row),
            _ => cursor.nanopix_row,
        };
        let (unheld, recorded) = self.unheld(rows.patients.clone())?;
        if self.left_to_decide_fully(&rows.patients, &recorded, &repairs.untried)? {
            return self.reconcile_after(report, &repairs.tried);
        }
        self.take_in(rows, not_recorded(unheld, &recorded), &mut report)?;
        if self.cancelled() {
            self.cursor = None;
            report.stopped_early = true;
            return Ok(report);
        }
        // NanoPix patients left for exports to end are behind the rows read: a full reconcile's.
        self.cursor = match self.left_for_exports {
            true => None,
            false => {
                let dentaltid = (cursor.dentaltid, cursor.links_checked_up_to);
                self.cursor_at((nanopix_row, cursor.nanopix_rows + read), dentaltid, versions)?
            }
        };
        Ok(report)
    }

    /// Whether NanoPix or DentalTID changed behind the `cursor` in a way a live pass cannot
    /// follow: NanoPix holds another number of rows than the cursor's and the `read` past it, its
    /// row at the cursor is another one, or DentalTID lost a row.
    fn changed_behind(&self, cursor: &LiveCursor, read: u64) -> Result<bool> {
        Ok(self.nanopix.patient_count()? != cursor.nanopix_rows + read
            || self.rows_changed_behind(cursor)?
            || self.dentaltid_lost_rows(cursor)?)
    }

    /// Whether the rows `read` past the cursor hold a patient only a full reconcile decides: a
    /// deleted patient's NanoPix patient given back, or one under an id a recorded link names
    /// (`recorded`, see [`Engine::unheld`]), asks for a delete; another person under a linked id
    /// is imported apart; and the same person as a patient whose export waits its turn
    /// (`untried`) has her export tried first.
    fn left_to_decide_fully(
        &self,
        read: &[NanoPixPatient],
        recorded: &HashSet<NanoPixId>,
        untried: &[i64],
    ) -> Result<bool> {
        Ok(self.gives_back_a_deleted_patient(read, recorded)?
            || self.holds_another_person(read)?
            || self.saves_a_patient_left_to_repair(read, untried)?)
    }

    /// Takes in the `rows` a live pass read: reports the odd ones, restores the links of
    /// patients back in NanoPix, links or imports the `unknown` patients and awaits their
    /// folders, restores the links whose folder is back, and, while Live Sync is on, exports
    /// DentalTID's new patients.
    fn take_in(&mut self, rows: PatientRows, unknown: Vec<NanoPixPatient>, report: &mut ReconcileReport) -> Result<()> {
        self.report_odd_rows(rows.odd_rows, report);
        self.restore_links(&rows.patients, report)?;
        let new_ids: Vec<NanoPixId> = unknown.iter().map(|patient| patient.id).collect();
        self.link_or_import(unknown, None, report)?;
        self.await_folders(&new_ids)?;
        self.restore_put_back_folders(report)?;
        if self.dentaltid.live_sync()? {
            self.export_new(report)?;
        }
        Ok(())
    }

    /// The live cursor after a pass: at NanoPix's `(row, rows)` up to it, with DentalTID's
    /// `(extent, links checked up to)` as the pass began, moved on (see
    /// [`Engine::dentaltid_cursor_after`]), and the data `versions` read before the pass read
    /// either side. `None` when DentalTID's side cannot move on.
    pub(super) fn cursor_at(
        &self,
        (nanopix_row, nanopix_rows): (Option<RowStamp>, u64),
        (extent, checked): ((i64, u64), i64),
        (nanopix_version, dentaltid_version): (i64, i64),
    ) -> Result<Option<LiveCursor>> {
        let dentaltid = self.dentaltid_cursor_after(extent, checked)?;
        Ok(dentaltid.map(|(dentaltid, links_checked_up_to)| LiveCursor {
            nanopix_row,
            nanopix_rows,
            nanopix_version,
            dentaltid,
            links_checked_up_to,
            dentaltid_version,
        }))
    }

    /// Moves the live cursor's DentalTID extent past the rows added since, after an export made
    /// outside a pass: a patient exported then deleted is then found gone by the next pass or
    /// export, whose catch-up counts the rows up to the extent. When the rows cannot be counted,
    /// the cursor goes, so the next pass reconciles fully; the export's own outcome stands.
    pub(super) fn extend_cursor_past_exports(&mut self) {
        let Some(cursor) = &self.cursor else { return };
        let moved = self.dentaltid_cursor_after(cursor.dentaltid, cursor.links_checked_up_to);
        match (moved, &mut self.cursor) {
            (Ok(Some((extent, checked))), Some(cursor)) => {
                (cursor.dentaltid, cursor.links_checked_up_to) = (extent, checked)
            }
            _ => self.cursor = None,
        }
    }

    /// The live cursor's DentalTID side moved on: the extent `previous` past the rows added
    /// since (see [`crate::dentaltid::DentalTid::extent_after`]), and the links checked up to
    /// its new highest id. `None` when a patient the sync linked, imported or exported past
    /// `checked` is gone already: the extent cannot count it, so only a full reconcile would
    /// find it deleted, and the next pass is then one.
    fn dentaltid_cursor_after(&self, previous: (i64, u64), checked: i64) -> Result<Option<((i64, u64), i64)>> {
        let extent = self.dentaltid.extent_after(previous)?;
        Ok((!self.dentaltid.lost_linked_after(checked)?).then_some((extent, checked.max(extent.0))))
    }

    /// `row`, read by a snapshot that read no creation times (a first sync), with its creation
    /// time read now, while the row at its `pk` still has its id.
    pub(super) fn with_creation_time(&self, row: Option<RowStamp>) -> Result<Option<RowStamp>> {
        Ok(match row {
            Some(read) if read.created.is_none() => match self.nanopix.row_at(read.pk)? {
                Some(now) if now.id == read.id => Some(now),
                _ => Some(read),
            },
            row => row,
        })
    }

    /// Whether NanoPix's row at the cursor is another one than the pass read there.
    fn rows_changed_behind(&self, cursor: &LiveCursor) -> Result<bool> {
        let now = self.nanopix.row_at(cursor.nanopix_pk())?;
        Ok(match &cursor.nanopix_row {
            Some(read) => read.is_replaced_by(now.as_ref()),
            None => now.is_some(),
        })
    }

    /// Whether DentalTID lost a row the cursor counted (ids never come back, so fewer rows up to
    /// the cursor's highest id means one was deleted).
    pub(super) fn dentaltid_lost_rows(&self, cursor: &LiveCursor) -> Result<bool> {
        let (max_id, rows) = cursor.dentaltid;
        Ok(self.dentaltid.rows_up_to(max_id)? < rows)
    }

    /// The new NanoPix patients that no DentalTID patient holds, no export in flight reserved
    /// and no recorded link (a link row or an import batch) names.
    pub(super) fn unknown(&self, patients: Vec<NanoPixPatient>) -> Result<Vec<NanoPixPatient>> {
        let (unheld, recorded) = self.unheld(patients)?;
        Ok(not_recorded(unheld, &recorded))
    }

    /// The new NanoPix patients that no DentalTID patient holds and no export in flight
    /// reserved, each id once; and those of their ids a recorded link (a link row or an import
    /// batch) names.
    fn unheld(&self, patients: Vec<NanoPixPatient>) -> Result<(Vec<NanoPixPatient>, HashSet<NanoPixId>)> {
        let in_flight = self.in_flight_ids()?;
        let mut unheld = Vec::new();
        let mut seen = HashSet::default();
        for patient in patients {
            // A second new row with the same id is skipped: the next full reconcile reports it.
            if seen.insert(patient.id)
                && !in_flight.contains(&patient.id)
                && !self.dentaltid.holds_external_id(patient.id)?
            {
                unheld.push(patient);
            }
        }
        let ids: Vec<NanoPixId> = unheld.iter().map(|patient| patient.id).collect();
        let recorded = self.dentaltid.recorded_links(&ids)?;
        Ok((unheld, recorded))
    }

    /// Restores every link marked missing of NanoPix patients `read` past the cursor (a row added
    /// back with its id) whose folder is there too, without waiting for a full reconcile: a live
    /// pass looks only at the rows it read. A link whose folder is still missing waits for it
    /// among [`Engine::missing_folders`]. Other changes (a DentalTID patient deleted meanwhile)
    /// are a full reconcile's to find.
    fn restore_links(&mut self, read: &[NanoPixPatient], report: &mut ReconcileReport) -> Result<()> {
        let mut changes = Vec::new();
        for patient in read {
            for link in self.dentaltid.missing_links(patient.id)? {
                if self.nanopix.has_folder(patient.id) {
                    changes.extend(self.restoration(&link)?);
                } else if !self.missing_folders.contains(&link) {
                    self.missing_folders.push(link);
                }
            }
        }
        self.change_links(&changes, report)
    }

    /// Whether NanoPix gives back, among the rows `read` past the cursor, a patient marked missing
    /// whose DentalTID patient was deleted meanwhile, or a patient under an id a recorded link
    /// names that no DentalTID patient holds (`recorded`, see [`Engine::unheld`]): her DentalTID
    /// patient may have been deleted while NanoPix held no row of hers, and her link, marked
    /// missing or not, then asks for no delete yet.
    fn gives_back_a_deleted_patient(&self, read: &[NanoPixPatient], recorded: &HashSet<NanoPixId>) -> Result<bool> {
        if !recorded.is_empty() {
            return Ok(true);
        }
        for patient in read {
            for link in self.dentaltid.missing_links(patient.id)? {
                if self.dentaltid.patient(link.patient_id)?.is_none() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether one of the rows `read` past the cursor is another person than the patients linked
    /// to its id (see [`is_another_person`]).
    pub(super) fn holds_another_person(&self, read: &[NanoPixPatient]) -> Result<bool> {
        for patient in read.iter().filter(|patient| patient.created.is_some()) {
            if is_another_person(patient.created, &self.dentaltid.linked_rows_of(patient.id)?) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Restores the links of [`Engine::missing_folders`] whose folder is back while their row is
    /// still there, without waiting for a full reconcile; the others stay on the list.
    fn restore_put_back_folders(&mut self, report: &mut ReconcileReport) -> Result<()> {
        let mut back = Vec::new();
        for link in &self.missing_folders {
            let Ok(id) = NanoPixId::parse(&link.external_id) else { continue };
            if self.nanopix.has_folder(id) && self.nanopix.id_exists(id)? {
                back.push(link.clone());
            }
        }
        self.missing_folders.retain(|link| !back.contains(link));
        let mut changes = Vec::new();
        for link in &back {
            changes.extend(self.restoration(link)?);
        }
        self.change_links(&changes, report)
    }
}

/// Those of `patients` whose id is not among the `recorded` ones.
fn not_recorded(patients: Vec<NanoPixPatient>, recorded: &HashSet<NanoPixId>) -> Vec<NanoPixPatient> {
    patients.into_iter().filter(|patient| !recorded.contains(&patient.id)).collect()
}
