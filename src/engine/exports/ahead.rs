//! Exports written ahead: exports made one after another ([`Engine::export_each`]) record the
//! journal rows of the next patients many at a time, in one DentalTID transaction, then write
//! their NanoPix rows in one NanoPix transaction, instead of a transaction of each per export
//! (each waits for the disk, and kept both databases locked nearly all the time: NanoPix's own
//! reads waited up to a second). Each export then makes its folder and link in turn. A row that
//! could not be written with the others (its id taken meanwhile, a folder of one of them made,
//! NanoPix changed or busy) is written by its own export, while DentalTID still holds the patient
//! as journaled (else her export starts again from her as she is now). The journal rows of the
//! exports that wrote nothing when the run ends (it stops, or NanoPix changed meanwhile) are
//! dropped together; a crash leaves them, and the rows written, to the repair.

use std::sync::atomic::Ordering;

use foldhash::HashSet;

use super::{Exported, IdsFrom, Twins};
use crate::engine::{Engine, crash_point};
use crate::events::ReconcileReport;
use crate::patient::{NewNanoPixPatient, Patient};
use crate::{NanoPixId, Result};

/// Most exports journaled, and written to NanoPix, in one transaction: a crash leaves at most
/// this many exports that wrote nothing yet for the repair at the next start, each of which
/// reads every NanoPix patient to look for the same person saved meanwhile.
const WRITTEN_AT_ONCE: usize = 16;

/// An export journaled ahead of its turn.
#[derive(Debug)]
pub(in crate::engine) struct JournaledAhead {
    /// The NanoPix row its journal row records.
    row: NewNanoPixPatient,
    /// Whether that row is written to NanoPix.
    written: bool,
}

impl Engine {
    /// Journals the exports of the first [`WRITTEN_AT_ONCE`] of `upcoming`, taken in their
    /// order, that are to be written now, then writes their NanoPix rows, unless no run of
    /// exports is under way, or the first of them is journaled already, or the work is stopped,
    /// or NanoPix changed since the sync read it. A patient whose row cannot be planned or
    /// journaled is left out, and rows that cannot be written together are left to each export:
    /// each meets the error and reports it.
    pub(super) fn write_ahead(&mut self, upcoming: &[&Patient], from: IdsFrom) {
        let Some(run) = &self.export_run else { return };
        let first_waits = upcoming.first().is_some_and(|first| run.journaled_ahead.contains_key(&first.id));
        if first_waits || self.cancelled() {
            return;
        }
        let Ok(Some(read)) = self.unchanged_nanopix_read() else { return };
        let journaled = self.journal_ahead(upcoming, from);
        let rows: Vec<&NewNanoPixPatient> = journaled.iter().map(|(_, row)| row).collect();
        let closing = &self.signals.closing;
        let written = match rows.is_empty() {
            true => None,
            false => self.nanopix.insert_patients(&rows, read, || closing.load(Ordering::Relaxed)).ok().flatten(),
        };
        if written.as_ref().is_some_and(|written| written.contains(&true)) {
            crash_point("row");
        }
        let written = written.unwrap_or_else(|| vec![false; journaled.len()]);
        let Some(run) = &mut self.export_run else { return };
        for ((patient_id, row), written) in journaled.into_iter().zip(written) {
            run.journaled_ahead.insert(patient_id, JournaledAhead { row, written });
        }
    }

    /// Journals the exports of the first [`WRITTEN_AT_ONCE`] of `upcoming` that may be, in one
    /// transaction; returns those journaled, by patient, with their rows.
    fn journal_ahead(&mut self, upcoming: &[&Patient], from: IdsFrom) -> Vec<(i64, NewNanoPixPatient)> {
        let Ok(now) = self.export_time() else { return Vec::new() };
        let mut planned: Vec<(&Patient, NewNanoPixPatient)> = Vec::with_capacity(WRITTEN_AT_ONCE);
        let mut reserved: HashSet<NanoPixId> = HashSet::default();
        for &patient in upcoming.iter().take(WRITTEN_AT_ONCE) {
            if !self.journals_ahead(patient) {
                continue;
            }
            if let Ok(row) = self.planned_row_besides(patient, from, &reserved, now) {
                reserved.insert(row.id);
                planned.push((patient, row));
            }
        }
        let rows: Vec<(&Patient, &NewNanoPixPatient)> = planned.iter().map(|(patient, row)| (*patient, row)).collect();
        let Ok(begun) = self.dentaltid.begin_exports(&rows) else { return Vec::new() };
        crash_point("journal");
        let journaled = planned.into_iter().zip(begun).filter(|(_, begun)| *begun);
        journaled.map(|((patient, row), _)| (patient.id, row)).collect()
    }

    /// Whether the export of `patient` may be journaled ahead: not journaled yet, and not left
    /// alone for the link DentalTID refused her.
    fn journals_ahead(&self, patient: &Patient) -> bool {
        self.journaled_ahead(patient.id).is_none()
            && !self.refused_links.contains_key(&patient.id)
            && matches!(self.dentaltid.pending_export(patient.id), Ok(None))
    }

    /// The export of `patient_id` journaled ahead of its turn in the run of exports under way,
    /// if it is.
    pub(super) fn journaled_ahead(&self, patient_id: i64) -> Option<&JournaledAhead> {
        self.export_run.as_ref()?.journaled_ahead.get(&patient_id)
    }

    /// Whether the NanoPix row of the export of `patient_id` is written ahead of its turn.
    pub(super) fn written_ahead(&self, patient_id: i64) -> bool {
        self.journaled_ahead(patient_id).is_some_and(|ahead| ahead.written)
    }

    /// Whether the NanoPix row of some export journaled ahead is written, its folder and link
    /// still to be made.
    pub(super) fn any_written_ahead(&self) -> bool {
        self.export_run.as_ref().is_some_and(|run| run.journaled_ahead.values().any(|ahead| ahead.written))
    }

    /// Goes on with the export of `patient` that [`Engine::write_ahead`] journaled: its folder
    /// and link once its NanoPix row is written, else that row first (see
    /// [`Engine::write_journaled`]).
    pub(super) fn export_journaled(
        &mut self,
        patient: &Patient,
        from: IdsFrom,
        twins: Option<&Twins>,
    ) -> Result<Exported> {
        let Some(ahead) = self.export_run.as_mut().and_then(|run| run.journaled_ahead.remove(&patient.id)) else {
            return self.export(patient, from, twins);
        };
        self.journaled = Some((patient.id, ahead.row.id));
        if !ahead.written {
            return self.write_journaled(patient, ahead.row, from, twins);
        }
        self.link_export(patient, ahead.row.id, twins)?;
        Ok(Exported::Written(ahead.row.id))
    }

    /// Writes `row`, which the journal records for the export of `patient` and which could not be
    /// written with the others, as [`Engine::export`] goes on once its journal row is written:
    /// only while NanoPix is unchanged since the sync read it (else the export is deferred, its
    /// journal row left to be dropped with the others not written), and DentalTID holds the
    /// patient as journaled (else her export starts again from her as she is now).
    fn write_journaled(
        &mut self,
        patient: &Patient,
        row: NewNanoPixPatient,
        from: IdsFrom,
        twins: Option<&Twins>,
    ) -> Result<Exported> {
        let Some(read) = self.unchanged_nanopix_read()? else {
            if let Some(run) = &mut self.export_run {
                run.journaled_ahead.insert(patient.id, JournaledAhead { row, written: false });
            }
            return Ok(Exported::Deferred);
        };
        if self.dentaltid.patient(patient.id)?.as_ref() != Some(patient) {
            self.dentaltid.abandon_export(patient.id)?;
            return self.export(patient, from, twins);
        }
        match self.write_export(patient, row, (from, Some(read)), twins)? {
            Some(external_id) => Ok(Exported::Written(external_id)),
            None => {
                self.dentaltid.abandon_export(patient.id)?;
                Ok(Exported::Deferred)
            }
        }
    }

    /// Drops together the journal rows of the exports journaled ahead that wrote nothing to
    /// NanoPix; an error doing so goes to `report`, and the repair ends them later. An export
    /// whose row is written keeps its journal row, for the repair to make its folder and link.
    pub(super) fn drop_journaled_ahead(&mut self, report: &mut ReconcileReport) {
        let Some(run) = &mut self.export_run else { return };
        let unwritten: Vec<i64> =
            run.journaled_ahead.drain().filter(|(_, ahead)| !ahead.written).map(|(patient_id, _)| patient_id).collect();
        if unwritten.is_empty() {
            return;
        }
        if let Err(error) = self.dentaltid.abandon_exports(&unwritten) {
            self.report_error(&error, None, None, report);
        }
    }
}
