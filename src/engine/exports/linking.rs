//! Linking exports: the last steps of an export, which make the folder of a patient whose NanoPix
//! row is written and then record the link in DentalTID. Exports made one after another
//! ([`Engine::export_each`]) have their links recorded many at a time, in one transaction: each of
//! DentalTID's transactions waits for its writes to reach the disk, and one per patient kept
//! DentalTID locked most of the time during a bulk export. Any other export is linked at once.
//! A link is never recorded before its folder is made.

use std::path::PathBuf;

use super::Twins;
use crate::dentaltid::ExportToFinish;
use crate::engine::{Engine, crash_point};
use crate::events::{EventKind, ReconcileReport};
use crate::matching::PossibleDuplicate;
use crate::patient::Patient;
use crate::{Error, NanoPixId, Result};

/// Most exports whose links one transaction records: DentalTID waits a few milliseconds for it,
/// and a `patient_exported` comes well under a second after its NanoPix row and folder are made.
const LINKS_AT_ONCE: usize = 100;

/// An export whose NanoPix row and folder are made, its link not recorded yet.
#[derive(Debug)]
struct MadeExport {
    patient_id: i64,
    /// The patient's `createdAt`, which its report of linked twins on the review list keeps.
    created_at: String,
    external_id: NanoPixId,
    folder: PathBuf,
    twins: Option<Twins>,
}

impl MadeExport {
    /// What [`crate::dentaltid::DentalTid::finish_exports`] needs to link it.
    fn to_finish(&self) -> ExportToFinish<'_> {
        ExportToFinish {
            patient_id: self.patient_id,
            external_id: self.external_id,
            twins: self.twins.as_ref().map(|twins| (self.created_at.as_str(), &twins.found_for, &twins.found)),
        }
    }
}

/// The exports made one after another whose links wait to be recorded together.
#[derive(Debug, Default)]
pub(in crate::engine) struct LinksDue {
    made: Vec<MadeExport>,
}

impl Engine {
    /// Creates the folder of an exported patient whose row NanoPix holds, then records the link
    /// (with the patient's linked `twins` on the review list, while it has the names and birth
    /// date they were found for) and reports the export; while exports are made one after
    /// another, the link waits to be recorded with others instead (see
    /// [`Engine::link_due_exports`]).
    pub(super) fn link_export(&mut self, patient: &Patient, id: NanoPixId, twins: Option<&Twins>) -> Result<()> {
        let folder = self.nanopix.create_folder(id, &self.config.patient_subfolders)?;
        crash_point("folder");
        let made = MadeExport {
            patient_id: patient.id,
            created_at: patient.created_at.clone(),
            external_id: id,
            folder,
            twins: twins.cloned(),
        };
        if let Some(run) = &mut self.export_run {
            run.links_due.made.push(made);
            return Ok(());
        }
        let kept =
            self.dentaltid.finish_export(made.patient_id, id, self.config.clock.now(), made.to_finish().twins)?;
        self.announce_export(made, kept);
        Ok(())
    }

    /// Records the links that wait in the run of exports under way, once [`LINKS_AT_ONCE`] wait
    /// (see [`Engine::record_links`]); those left are recorded as the run ends. Returns the
    /// lowest patient id among those whose link failed.
    pub(super) fn link_due_exports(&mut self, report: &mut ReconcileReport) -> Option<i64> {
        let due = self.export_run.as_mut().and_then(|run| take_if_due(&mut run.links_due))?;
        self.record_links(due, report)
    }

    /// Records the links of the exports `due` holds. Reports each export (its `patient_exported`
    /// and linked twins, counted in `report`), or the failure of its link; returns the lowest
    /// patient id among those whose link failed. An export whose link failed stays in the
    /// journal, for the next pass to link it.
    pub(super) fn record_links(&mut self, due: LinksDue, report: &mut ReconcileReport) -> Option<i64> {
        if due.made.is_empty() {
            return None;
        }
        let exports: Vec<ExportToFinish<'_>> = due.made.iter().map(MadeExport::to_finish).collect();
        let finished = self.dentaltid.finish_exports(&exports, self.config.clock.now());
        match finished {
            Ok(kept) => {
                for (made, kept) in due.made.into_iter().zip(kept) {
                    self.report_linked(made, kept, report);
                }
                None
            }
            // One patient's link that DentalTID refuses (a trigger of its own, say) fails the others'
            // with it: each is tried alone. A database locked past the busy timeout refuses them all.
            Err(error) if due.made.len() > 1 && !matches!(error, Error::Busy { .. }) => {
                due.made.into_iter().filter_map(|made| self.link_alone(made, report)).min()
            }
            Err(error) => due.made.iter().map(|made| self.report_unlinked(&error, made, report)).min(),
        }
    }

    /// Records the link of `made` in a transaction of its own, and reports it; returns its patient
    /// when the link failed.
    fn link_alone(&mut self, made: MadeExport, report: &mut ReconcileReport) -> Option<i64> {
        let now = self.config.clock.now();
        match self.dentaltid.finish_export(made.patient_id, made.external_id, now, made.to_finish().twins) {
            Ok(kept) => {
                self.report_linked(made, kept, report);
                None
            }
            Err(error) => Some(self.report_unlinked(&error, &made, report)),
        }
    }

    /// Reports `made`, whose link is recorded with its linked twins `kept` on the review list.
    fn report_linked(&mut self, made: MadeExport, kept: Option<PossibleDuplicate>, report: &mut ReconcileReport) {
        let (patient_id, external_id) = (made.patient_id, made.external_id);
        self.announce_export(made, kept);
        report.exported += 1;
        self.report_twins(patient_id, external_id, report);
    }

    /// Reports the failure of the link of `made`; returns its patient.
    fn report_unlinked(&mut self, error: &Error, made: &MadeExport, report: &mut ReconcileReport) -> i64 {
        self.report_error(error, Some(made.external_id.to_string()), Some(made.patient_id), report);
        made.patient_id
    }

    /// Sends the `patient_exported` of `made`, whose link is recorded with its linked twins `kept`
    /// on the review list, and keeps those for [`Engine::report_twins`].
    fn announce_export(&mut self, made: MadeExport, kept: Option<PossibleDuplicate>) {
        let patient_id = made.patient_id;
        self.kept_twins = kept.map(|found| (patient_id, found));
        crash_point("linked");
        let (external_id, folder) = (made.external_id.to_string(), made.folder.display().to_string());
        self.bus.emit(EventKind::PatientExported { patient_id, external_id, folder });
    }
}

/// The links `due` holds when they are due to be recorded, leaving none; `None` otherwise.
fn take_if_due(due: &mut LinksDue) -> Option<LinksDue> {
    (due.made.len() >= LINKS_AT_ONCE).then(|| std::mem::take(due))
}
