//! Exports journaled ahead: exports made one after another ([`Engine::export_each`]) record the
//! journal rows of the next patients many at a time, in one DentalTID transaction, instead of a
//! transaction per export (each waits for the disk, and kept DentalTID locked). Each export then
//! writes its NanoPix row as its journal row records it, while DentalTID still holds the patient
//! as it was read; one DentalTID changed or deleted since starts again from the patient as she is
//! now. The journal rows of the exports the run does not write (it stops, or NanoPix changed
//! meanwhile) are dropped together when it ends; a crash leaves them to the repair, as any export
//! it cuts short.

use foldhash::HashSet;

use super::{Exported, IdsFrom, Twins};
use crate::engine::{Engine, crash_point};
use crate::events::ReconcileReport;
use crate::patient::{NewNanoPixPatient, Patient};
use crate::{NanoPixId, Result};

/// Most exports journaled in one transaction: a crash leaves at most this many exports that
/// wrote nothing yet for the repair at the next start, each of which reads every NanoPix
/// patient to look for the same person saved meanwhile.
const JOURNALED_AT_ONCE: usize = 16;

impl Engine {
    /// Journals the exports of the first [`JOURNALED_AT_ONCE`] of `upcoming`, taken in their
    /// order, that are to be written now, unless the first of them is journaled already or
    /// NanoPix changed since the sync read it. A patient whose row cannot be planned, or whose
    /// journal row cannot be written, is left out: her own export meets the error and reports it.
    pub(super) fn journal_ahead(&mut self, upcoming: &[&Patient], from: IdsFrom) {
        let first_waits = upcoming.first().is_some_and(|first| self.journaled_ahead.contains_key(&first.id));
        if first_waits || !matches!(self.unchanged_nanopix_read(), Ok(Some(_))) {
            return;
        }
        let Ok(now) = self.export_time() else { return };
        let mut planned: Vec<(&Patient, NewNanoPixPatient)> = Vec::with_capacity(JOURNALED_AT_ONCE);
        let mut reserved: HashSet<NanoPixId> = HashSet::default();
        for &patient in upcoming.iter().take(JOURNALED_AT_ONCE) {
            if !self.journals_ahead(patient) {
                continue;
            }
            if let Ok(row) = self.planned_row_besides(patient, from, &reserved, now) {
                reserved.insert(row.id);
                planned.push((patient, row));
            }
        }
        let rows: Vec<(&Patient, &NewNanoPixPatient)> = planned.iter().map(|(patient, row)| (*patient, row)).collect();
        let Ok(begun) = self.dentaltid.begin_exports(&rows) else { return };
        crash_point("journal");
        for ((patient, row), begun) in planned.into_iter().zip(begun) {
            if begun {
                self.journaled_ahead.insert(patient.id, row);
            }
        }
    }

    /// Whether the export of `patient` may be journaled ahead: not journaled yet, and not left
    /// alone for the link DentalTID refused her.
    fn journals_ahead(&self, patient: &Patient) -> bool {
        !self.journaled_ahead.contains_key(&patient.id)
            && !self.refused_links.contains_key(&patient.id)
            && matches!(self.dentaltid.pending_export(patient.id), Ok(None))
    }

    /// Writes the export of `patient` that [`Engine::journal_ahead`] journaled (as
    /// [`Engine::export`] goes on once its journal row is written), while NanoPix is unchanged
    /// since the sync read it and DentalTID holds the patient as read; else the export is
    /// deferred, its journal row left to be dropped with the others not written, or, for a
    /// patient DentalTID changed, started again.
    pub(super) fn export_journaled(
        &mut self,
        patient: &Patient,
        from: IdsFrom,
        twins: Option<&Twins>,
    ) -> Result<Exported> {
        let Some(read) = self.unchanged_nanopix_read()? else { return Ok(Exported::Deferred) };
        let Some(row) = self.journaled_ahead.remove(&patient.id) else { return self.export(patient, from, twins) };
        self.journaled = Some((patient.id, row.id));
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

    /// Drops together the journal rows of the exports journaled ahead that were not written;
    /// an error doing so goes to `report`, and the repair ends them later.
    pub(super) fn drop_journaled_ahead(&mut self, report: &mut ReconcileReport) {
        let unwritten: Vec<i64> = self.journaled_ahead.drain().map(|(patient_id, _)| patient_id).collect();
        if unwritten.is_empty() {
            return;
        }
        if let Err(error) = self.dentaltid.abandon_exports(&unwritten) {
            self.report_error(&error, None, None, report);
        }
    }
}
