//! Exports: DentalTID patients written to NanoPix (journal row, NanoPix row, folder, then the
//! link), and the exports Live Sync owes. The ids they are given are in [`ids`], the linked twins
//! kept with their links in [`twins`], the repair of exports that a crash or an error
//! interrupted in [`repairs`], and how exports made one after another share their transactions
//! in [`ahead`] (journal and NanoPix rows) and [`linking`] (folders and links).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::{NaiveDate, NaiveDateTime};
use foldhash::{HashMap, HashSet};

use super::{Engine, Turns, crash_point};
use crate::dentaltid::PendingExport;
use crate::events::{EventKind, ReconcileReport};
use crate::matching::{MatchedLink, Matcher};
use crate::nanopix::Insertion;
use crate::patient::{NewNanoPixPatient, Patient, Source};
use crate::{Error, NanoPixId, Result};

mod ahead;
mod ids;
mod linking;
mod repairs;
mod twins;

use ahead::JournaledAhead;
use ids::{IdsFrom, past_ids_from};
use linking::LinksDue;
pub(super) use repairs::OpenRepairs;
use twins::{Twins, linked_twins_of};

/// How many ids one export tries before giving up, when other NanoPix patients keep taking them first.
const EXPORT_ATTEMPTS: usize = 3;

/// A run of searches for past ids (see [`Engine::free_past_id`]), each search starting at or
/// after where the one before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PastRun {
    /// From each patient's creation time, the patients taken in that order.
    Creation = 0,
    /// From the start of the [`ids::PAST_IDS`], once no other second is free.
    DayBefore = 1,
}

/// What exports made one after another share while their run lasts (see
/// [`Engine::export_in_order`]): set up as the run begins, taken as it ends.
#[derive(Debug, Default)]
pub(super) struct ExportRun {
    /// The exports whose links wait to be recorded together (see [`LinksDue`]).
    links_due: LinksDue,
    /// The exports journaled ahead of their turn, by patient (see [`JournaledAhead`]).
    journaled_ahead: HashMap<i64, JournaledAhead>,
    /// The NanoPix ids import batches record, read once for all the ids the exports try: only
    /// imports write batches, and none runs meanwhile. `None` when they could not be read.
    ids_in_batches: Option<HashSet<NanoPixId>>,
}

/// What became of one patient's export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exported {
    /// Written to NanoPix with this id.
    Written(NanoPixId),
    /// Not written: DentalTID deleted the patient before its export began.
    Deleted,
    /// Not written: another program wrote to NanoPix since the sync last read it, maybe the same
    /// person. The export waits until the sync has read NanoPix again (and linked that person).
    Deferred,
}

impl Engine {
    /// Exports one DentalTID patient now, whatever Live Sync says. NanoPix patients the sync has
    /// not seen yet are imported or linked first: when the matching links one of them, or one a
    /// deleted patient left behind, to this patient, its id is returned and nothing is exported.
    pub fn export_patient(&mut self, patient_id: i64) -> Result<NanoPixId> {
        // The patient is looked for in the file `dentaltid.db` names, not in one replaced since.
        self.dentaltid.check_still_open_file()?;
        let patient = self.dentaltid.patient(patient_id)?.ok_or(Error::PatientNotFound(patient_id))?;
        let recorded = self.dentaltid.linked_id(patient_id)?;
        if let Some(external_id) = patient.external_id.clone().or(recorded) {
            return Err(Error::AlreadyLinked { patient_id, external_id });
        }
        let exported = self.holding_delete_requests(|engine| engine.export_once_caught_up(patient_id));
        self.extend_cursor_past_exports();
        exported
    }

    /// Catches up with NanoPix, then exports the patient, unless the catch-up linked it; again,
    /// up to [`EXPORT_ATTEMPTS`] times, while NanoPix changes in between (a patient saved there
    /// meanwhile may be this very person).
    fn export_once_caught_up(&mut self, patient_id: i64) -> Result<NanoPixId> {
        for _ in 0..EXPORT_ATTEMPTS {
            self.catch_up_with_nanopix()?;
            // A catch-up cut short by closing may not have linked the patient to its NanoPix match.
            if self.cancelled() {
                return Err(Error::Closed);
            }
            let patient = self.dentaltid.patient(patient_id)?.ok_or(Error::PatientNotFound(patient_id))?;
            if let Some(linked) = patient.external_id.as_deref().map(NanoPixId::parse) {
                return linked;
            }
            let given_back =
                self.give_back_left_behind(std::slice::from_ref(&patient), &mut ReconcileReport::default())?;
            if let Some(&external_id) = given_back.get(&patient_id) {
                return Ok(external_id);
            }
            let twins = self.twins_of(&patient, &mut ReconcileReport::default());
            match self.export_or_resume(&patient, IdsFrom::Now, twins.as_ref())? {
                Exported::Written(external_id) => {
                    self.report_twins(patient.id, external_id, &mut ReconcileReport::default());
                    return Ok(external_id);
                }
                Exported::Deleted => return Err(Error::PatientNotFound(patient_id)),
                Exported::Deferred => {}
            }
        }
        Err(Error::KeptChanging { path: self.nanopix.database().to_path_buf(), step: "exporting" })
    }

    /// Links those of `exporting` that the matching links, as a first sync would, to a NanoPix
    /// patient a patient deleted in DentalTID left behind: its delete asked for and not done, and
    /// no patient holding its id again. A person deleted by mistake and added again gets their
    /// NanoPix patient, and its images, back instead of a second one. Only those born on the
    /// birth date of one of `exporting` are read. Returns the links written, by patient id.
    fn give_back_left_behind(
        &mut self,
        exporting: &[Patient],
        report: &mut ReconcileReport,
    ) -> Result<HashMap<i64, NanoPixId>> {
        let dates: HashSet<NaiveDate> = exporting.iter().filter_map(|patient| patient.date_of_birth).collect();
        if dates.is_empty() {
            return Ok(HashMap::default());
        }
        let requests: Vec<NanoPixId> = self.dentaltid.delete_requests()?.into_iter().map(|(id, _)| id).collect();
        let born = self.nanopix.born_on(&requests, &dates)?;
        let imported = self.dentaltid.imported_under(&born)?;
        let holders = self.dentaltid.id_holders(&born, &imported)?;
        let mut left = Vec::new();
        for id in born {
            let Some(patient) = self.nanopix.patient(id)? else { continue };
            if patient.birth_date.is_some_and(|born| dates.contains(&born))
                && holders.delete_requested(id, patient.created)
            {
                left.push(patient);
            }
        }
        if left.is_empty() {
            return Ok(HashMap::default());
        }
        self.ensure_indexes()?;
        let mut matcher = self.matcher(&left)?;
        let mut imports = Vec::new();
        for patient in left {
            matcher.offer(patient, &mut imports);
        }
        let exporting: HashSet<i64> = exporting.iter().map(|patient| patient.id).collect();
        let links: Vec<MatchedLink> =
            matcher.finish().into_iter().filter(|link| exporting.contains(&link.patient_id)).collect();
        // The sync knew these NanoPix patients, folders and all: none is awaited. One whose
        // patient DentalTID changed meanwhile stays behind, and the patient is exported.
        self.link_all(links, (false, None), report).map(|(linked, _)| linked)
    }

    /// Exports every DentalTID patient that has no NanoPix link yet; returns how many. NanoPix
    /// patients the sync has not seen yet are imported or linked first, so a patient the matching
    /// links exactly is linked, not exported a second time.
    pub fn export_existing(&mut self) -> Result<u64> {
        self.holding_delete_requests(Self::export_unlinked)
    }

    /// Exports every patient without a NanoPix link, catching up with NanoPix first, and again
    /// while NanoPix changes meanwhile (see [`Engine::export_existing`]), as long as one of the
    /// last [`EXPORT_ATTEMPTS`] tries exported someone: NanoPix saves now and then during the
    /// minutes a clinic's old patients take.
    fn export_unlinked(&mut self) -> Result<u64> {
        let mut report = ReconcileReport::default();
        let mut refused_by = None;
        let mut fruitless = 0;
        while fruitless < EXPORT_ATTEMPTS {
            let exported_before = report.exported;
            // The exports the catch-up ended (or made, with Live Sync on) are this call's too.
            let catch_up = self.catch_up_with_nanopix()?;
            report.exported += catch_up.exported + catch_up.repaired;
            // A catch-up that left NanoPix patients for exports to end left no cursor either.
            let caught_up = self.cursor.is_some() || self.left_for_exports;
            let unlinked = self.without_recorded_link(self.dentaltid.all_patients()?)?;
            refused_by = self.export_each_refused_by(&unlinked, &mut report);
            // Cut short by closing: the patients not reached yet are not exported, which success
            // would hide (Live Sync never exports them: they are older than its cursor). Stopped
            // as the last export ended, none is left: the work is done.
            if self.cancelled() {
                self.extend_cursor_past_exports();
                let left = self.without_recorded_link(self.dentaltid.all_patients()?)?;
                return if left.is_empty() { Ok(report.exported) } else { Err(Error::Closed) };
            }
            // Exports held back because NanoPix changed are tried again once it is read again, and
            // those a locked database refused, once more. So is an export ended that left its
            // reserved id, which dropped the cursor (see [`Engine::export_or_resume`]): the next
            // catch-up reads the NanoPix row there, maybe the same person, and links her.
            let left_an_id = caught_up && self.cursor.is_none();
            if refused_by.is_none() && !left_an_id && Some(self.nanopix.data_version()?) == self.nanopix_read {
                self.extend_cursor_past_exports();
                return Ok(report.exported);
            }
            fruitless = if report.exported > exported_before { 0 } else { fruitless + 1 };
        }
        self.extend_cursor_past_exports();
        // Live Sync would never export them: they are older than its cursor.
        Err(match refused_by {
            Some(path) => Error::Busy { path, step: "exporting: some patients are not exported yet" },
            None => Error::KeptChanging {
                path: self.nanopix.database().to_path_buf(),
                step: "exporting: some patients are not exported yet",
            },
        })
    }

    /// [`Engine::export_each`] with ids from the patients' creation, for `export_existing`; returns
    /// the database that refused one of the exports while it stayed locked past the busy timeout
    /// (a `sync_error` reports each refusal), if one did. The flag it reads is automatic work's,
    /// which `export_existing` never is: each automatic pass starts from none.
    fn export_each_refused_by(&mut self, patients: &[Patient], report: &mut ReconcileReport) -> Option<PathBuf> {
        self.refused_while_busy = None;
        self.export_each(patients, IdsFrom::Creation, report);
        self.refused_while_busy.take()
    }

    /// Imports or links the NanoPix patients the sync has not seen yet, unless NanoPix's data
    /// version shows that nobody else wrote to it since the cursor was set (in the same file)
    /// and DentalTID lost no patient since (counted only when another program wrote to it): a
    /// patient just deleted there may have left a NanoPix patient behind that the patient being
    /// exported should get back. Returns the report of the pass that caught up, empty without one.
    fn catch_up_with_nanopix(&mut self) -> Result<ReconcileReport> {
        self.ready_connections()?;
        let unchanged = match &self.cursor {
            Some(cursor) => {
                !self.nanopix.replaced()
                    && self.nanopix.data_version()? == cursor.nanopix_version
                    && (self.dentaltid.data_version()? == cursor.dentaltid_version
                        || !self.dentaltid_lost_rows(cursor)?)
            }
            None => false,
        };
        if unchanged { Ok(ReconcileReport::default()) } else { self.sync_changes() }
    }

    /// Exports the patients still due from before Live Sync was last switched off, then those
    /// added past the Live Sync cursor, and moves the cursor past them, or up to the first whose
    /// export failed, so the next pass tries it again.
    pub(super) fn export_new(&mut self, report: &mut ReconcileReport) -> Result<()> {
        self.export_due(report)?;
        let Some(cursor) = self.dentaltid.export_cursor()? else { return self.retake_export_cursor(report) };
        let (added, last) = self.dentaltid.created_here_after(cursor)?;
        let Some(last) = last else { return Ok(()) };
        let to_export = self.awaiting_export(added)?;
        let failed = self.export_each(&to_export, IdsFrom::Creation, report);
        if !self.cancelled() {
            let cursor = failed.map_or(last, |patient_id| patient_id.saturating_sub(1));
            self.dentaltid.set_export_cursor(cursor)?;
        }
        Ok(())
    }

    /// Takes the export cursor again, at the newest patient, when Live Sync is on but the cursor
    /// cannot be read (its state row lost or edited), so that patients added from now on are
    /// exported again. Those added since it was lost cannot be told from older ones: a
    /// `sync_error` says they wait for `export_existing` or `export_patient`.
    fn retake_export_cursor(&mut self, report: &mut ReconcileReport) -> Result<()> {
        let newest = self.dentaltid.retake_export_cursor()?;
        report.errors += 1;
        self.bus.emit(EventKind::SyncError {
            code: "export_cursor".into(),
            message: format!(
                "Live Sync's export cursor could not be read; taken again after patient {newest}: \
                 patients added before that are exported only by export_existing or export_patient"
            ),
            external_id: None,
            patient_id: None,
            path: None,
        });
        Ok(())
    }

    /// Exports the patients [`crate::dentaltid::DentalTid::exports_due`] names, and keeps there
    /// those still due.
    fn export_due(&mut self, report: &mut ReconcileReport) -> Result<()> {
        let due = self.dentaltid.exports_due()?;
        if due.is_empty() {
            return Ok(());
        }
        let mut patients = Vec::with_capacity(due.len());
        for id in due {
            patients.extend(self.dentaltid.patient(id)?);
        }
        let patients = self.awaiting_export(patients)?;
        self.export_each(&patients, IdsFrom::Creation, report);
        let mut still_due = Vec::new();
        for patient in patients {
            still_due.extend(self.dentaltid.patient(patient.id)?.filter(|p| p.external_id.is_none()).map(|p| p.id));
        }
        self.dentaltid.set_exports_due(&still_due)
    }

    /// Patients added past the export cursor that still wait for their export.
    pub(super) fn due_after_cursor(&self) -> Result<Vec<Patient>> {
        let cursor = self.dentaltid.export_cursor()?.unwrap_or(i64::MAX);
        self.awaiting_export(self.dentaltid.created_here_after(cursor)?.0)
    }

    /// Those of `patients` an export should write: created in DentalTID, with no NanoPix id and
    /// no recorded link, and not in the journal (a repair ends those).
    fn awaiting_export(&self, patients: Vec<Patient>) -> Result<Vec<Patient>> {
        let pending: HashSet<i64> = self.dentaltid.pending_exports()?.iter().map(|p| p.patient_id).collect();
        let created_here = patients.into_iter().filter(|p| p.source == Source::Internal && !pending.contains(&p.id));
        self.without_recorded_link(created_here.collect())
    }

    /// Those of `patients` with no NanoPix id and no recorded link, readable or not. A patient
    /// whose `external_id` DentalTID cleared keeps its link row: exporting it again would give
    /// the person a second NanoPix patient, and the first would come back as an import.
    fn without_recorded_link(&self, patients: Vec<Patient>) -> Result<Vec<Patient>> {
        let mut unlinked = Vec::with_capacity(patients.len());
        for patient in patients.into_iter().filter(|p| p.external_id.is_none()) {
            if self.dentaltid.linked_id(patient.id)?.is_none() {
                unlinked.push(patient);
            }
        }
        Ok(unlinked)
    }

    /// Exports `patients` with ids `from`, reporting each failure; returns the lowest patient id
    /// among those that failed or were deferred (see [`Exported::Deferred`]). With ids from their
    /// creation, patients are taken in that order, so each id is looked for after the last one
    /// given; else in the order given. A patient the matching links to a NanoPix patient a deleted
    /// one left behind is linked to it instead.
    fn export_each(&mut self, patients: &[Patient], from: IdsFrom, report: &mut ReconcileReport) -> Option<i64> {
        // Work cut short may have skipped links the matching held: giving back or exporting now
        // could give a person a second NanoPix patient.
        if patients.is_empty() || self.cancelled() {
            return None;
        }
        let given_back = match self.give_back_left_behind(patients, report) {
            Ok(given_back) => given_back,
            Err(error) => {
                // Exporting now could give a person a second NanoPix patient: the next pass tries again.
                self.report_error(&error, None, None, report);
                return patients.iter().map(|patient| patient.id).min();
            }
        };
        let mut ordered: Vec<&Patient> = patients.iter().collect();
        if from == IdsFrom::Creation {
            let now = self.config.clock.now();
            ordered.sort_by_cached_key(|patient| past_ids_from(patient, now));
            self.past_probed = [None; 2];
        }
        let twins = self.twin_finder(patients).map(Some).unwrap_or_else(|error| {
            self.report_error(&error, None, None, report);
            None
        });
        ordered.retain(|patient| !given_back.contains_key(&patient.id));
        self.export_in_order(&ordered, from, twins.as_ref(), report)
    }

    /// Exports `patients` in their order, with ids `from`, in one run (see [`ExportRun`]),
    /// reporting each failure, their links recorded many at a time (see
    /// [`Engine::link_due_exports`]); returns the lowest patient id among those that failed or
    /// were deferred. `twins` finds the linked twins of each. A panic (a bug) ends the run as it
    /// stands: links are recorded at once again, and the exports it journaled are the repair's.
    fn export_in_order(
        &mut self,
        patients: &[&Patient],
        from: IdsFrom,
        twins: Option<&Matcher>,
        report: &mut ReconcileReport,
    ) -> Option<i64> {
        self.begin_export_run();
        let run = || {
            let lowest_failed = self.export_each_in_run(patients, from, twins, report);
            lowest(lowest_failed, self.end_export_run(report))
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(lowest_failed) => lowest_failed,
            Err(panic) => {
                self.export_run = None;
                resume_unwind(panic)
            }
        }
    }

    /// The exports of [`Engine::export_in_order`], in the run it began. Between two patients,
    /// DentalTID gets a turn to save now and then (see [`Turns`]).
    fn export_each_in_run(
        &mut self,
        patients: &[&Patient],
        from: IdsFrom,
        twins: Option<&Matcher>,
        report: &mut ReconcileReport,
    ) -> Option<i64> {
        let mut exported_now = HashSet::default();
        let mut lowest_failed = None;
        let mut turns = Turns::begin();
        for (place, &patient) in patients.iter().enumerate() {
            turns.between_units();
            // Stopped, the exports whose NanoPix rows are written still get their folders and links,
            // also those of patients after one that was not written ahead.
            if self.cancelled() && !self.written_ahead(patient.id) {
                if self.any_written_ahead() {
                    continue;
                }
                break;
            }
            self.write_ahead(&patients[place..], from);
            let found = linked_twins_of(twins, patient, &exported_now);
            match self.export_or_resume(patient, from, found.as_ref()) {
                Ok(Exported::Written(_)) => {
                    exported_now.insert(patient.id);
                }
                Ok(Exported::Deleted) => {}
                // A deferred export is the next pass's, once it has read NanoPix: no failure to report.
                Ok(Exported::Deferred) => lowest_failed = lowest(lowest_failed, Some(patient.id)),
                Err(error) => {
                    // A patient left alone for its refused link names the NanoPix patient it matches.
                    let matched = self.refused_links.get(&patient.id).map(NanoPixId::to_string);
                    let external_id = self.journaled_id(patient.id).or(matched);
                    self.report_error(&error, external_id, Some(patient.id), report);
                    lowest_failed = lowest(lowest_failed, Some(patient.id));
                }
            }
            lowest_failed = lowest(lowest_failed, self.link_due_exports(report));
        }
        lowest_failed
    }

    /// Begins a run of exports: from now on [`Engine::link_export`] leaves links to be recorded
    /// together, and [`Engine::id_taken`] looks for ids in the import batches as read now.
    fn begin_export_run(&mut self) {
        // Unread, each id tried reads the batches itself, and meets the same error if any.
        let ids_in_batches = self.dentaltid.ids_in_batches().ok();
        self.export_run = Some(ExportRun { ids_in_batches, ..ExportRun::default() });
    }

    /// Ends the run of exports: drops the journal rows of the exports journaled ahead that wrote
    /// nothing (see [`Engine::drop_journaled_ahead`]), then records the links that still wait;
    /// links are recorded at once again from then on. Returns the lowest patient id among those
    /// whose link failed.
    fn end_export_run(&mut self, report: &mut ReconcileReport) -> Option<i64> {
        self.drop_journaled_ahead(report);
        let run = self.export_run.take()?;
        self.record_links(run.links_due, report)
    }

    /// Records in the journal that the export of `patient_id` now writes `row`, and remembers its
    /// id for a failure to report (see [`Engine::journaled_id`]).
    fn replan_export(&mut self, patient_id: i64, row: &NewNanoPixPatient) -> Result<()> {
        self.dentaltid.replan_export(patient_id, row)?;
        self.journaled = Some((patient_id, row.id));
        Ok(())
    }

    /// The NanoPix id the export journal holds for patient `patient_id`, as the export that just
    /// ended wrote or read it: the one it reserved, and may have written NanoPix's row under.
    fn journaled_id(&self, patient_id: i64) -> Option<String> {
        self.journaled.filter(|(journaled, _)| *journaled == patient_id).map(|(_, id)| id.to_string())
    }

    /// Exports `patient`, or ends its export the journal already holds (one a crash or an
    /// earlier error interrupted), as a repair would. `twins` are its linked twins, kept on the
    /// review list with the link. An export ended so that leaves the id it reserved (moved off
    /// it, or dropped for the same person NanoPix saved) drops the live cursor: a live pass may
    /// have skipped the NanoPix row there as this export's, and only a full reconcile reads it
    /// again, before a next try writes the person a second NanoPix patient.
    fn export_or_resume(&mut self, patient: &Patient, from: IdsFrom, twins: Option<&Twins>) -> Result<Exported> {
        self.journaled = None;
        if self.journaled_ahead(patient.id).is_some() {
            return self.export_journaled(patient, from, twins);
        }
        let Some(pending) = self.dentaltid.pending_export(patient.id)? else {
            return self.export(patient, from, twins);
        };
        self.journaled = Some((patient.id, pending.external_id));
        let resumed = self.resume_export(patient, &pending, twins);
        if matches!(resumed, Ok(Exported::Deferred)) || self.left_reserved_id(&pending) {
            self.cursor = None;
        }
        resumed
    }

    /// NanoPix's data version as the sync last read it, while NanoPix is still so: an export may
    /// write its row. `None` when another program wrote to NanoPix since, or it was never read.
    fn unchanged_nanopix_read(&self) -> Result<Option<i64>> {
        let Some(read) = self.nanopix_read else { return Ok(None) };
        Ok((self.nanopix.data_version()? == read).then_some(read))
    }

    /// Whether the journal moved the export `pending` records off the id it reserved, as the
    /// export that just ended left it (see [`Engine::journaled_id`]).
    fn left_reserved_id(&self, pending: &PendingExport) -> bool {
        self.journaled_id(pending.patient_id) != Some(pending.external_id.to_string())
    }

    /// Writes the journal row, then the NanoPix row, then the folder, then the link. The row
    /// written is the patient as DentalTID holds it when the journal row is written: one DentalTID
    /// changed since `patient` was read is read again, up to [`EXPORT_ATTEMPTS`] times. The NanoPix
    /// row is written only if no other program wrote to NanoPix since the sync last read it;
    /// else the export is deferred, with nothing written (its journal row goes, should NanoPix
    /// change once it is written).
    ///
    /// # Failure
    /// [`Error::Database`], writing nothing, for a patient whose link to the NanoPix patient it
    /// matches DentalTID refused (see [`Engine::link_all`]): NanoPix would hold the person twice.
    fn export(&mut self, patient: &Patient, from: IdsFrom, twins: Option<&Twins>) -> Result<Exported> {
        if let Some(&external_id) = self.refused_links.get(&patient.id) {
            return Err(link_refused(&self.config.dentaltid_db, patient.id, external_id));
        }
        // NanoPix would refuse the row (see `complete_export`): no journal row is written and
        // dropped for it, nor NanoPix's write lock taken, for each patient a bulk export has left.
        let Some(read) = self.unchanged_nanopix_read()? else { return Ok(Exported::Deferred) };
        let mut patient = patient.clone();
        for _ in 0..EXPORT_ATTEMPTS {
            let row = self.planned_row(&patient, from)?;
            if self.dentaltid.begin_export(&patient, &row, row.created)? {
                self.journaled = Some((patient.id, row.id));
                crash_point("journal");
                return match self.write_export(&patient, row, (from, Some(read)), twins)? {
                    Some(external_id) => Ok(Exported::Written(external_id)),
                    None => {
                        self.dentaltid.abandon_export(patient.id)?;
                        Ok(Exported::Deferred)
                    }
                };
            }
            patient = match self.dentaltid.patient(patient.id)? {
                None => return Ok(Exported::Deleted),
                Some(now) => match now.external_id {
                    Some(external_id) => return Err(Error::AlreadyLinked { patient_id: now.id, external_id }),
                    None => now,
                },
            };
        }
        Err(Error::Busy {
            path: self.config.dentaltid_db.clone(),
            step: "exporting a patient DentalTID keeps changing",
        })
    }

    /// Writes the export of `patient` as `row`, which the journal records. When another NanoPix
    /// patient takes the id first, the journal row moves to a new free id and the export goes on
    /// there, up to [`EXPORT_ATTEMPTS`] ids; the journal row stays, so the export is never lost.
    /// `None` when NanoPix changed since `unchanged_since` (see [`crate::nanopix::NanoPix::insert_patient`]).
    fn write_export(
        &mut self,
        patient: &Patient,
        mut row: NewNanoPixPatient,
        (from, unchanged_since): (IdsFrom, Option<i64>),
        twins: Option<&Twins>,
    ) -> Result<Option<NanoPixId>> {
        for attempt in 1..=EXPORT_ATTEMPTS {
            match self.complete_export(patient, &row, unchanged_since, twins)? {
                Insertion::Inserted => return Ok(Some(row.id)),
                Insertion::NanoPixChanged => return Ok(None),
                Insertion::IdTaken if attempt < EXPORT_ATTEMPTS => {
                    row = self.planned_row(patient, from)?;
                    self.replan_export(patient.id, &row)?;
                }
                Insertion::IdTaken => {}
            }
        }
        Err(Error::NoFreeId(NanoPixId::from_datetime(self.config.clock.now()).to_string()))
    }

    /// Writes `row`, which the journal records, to NanoPix, then the folder, then the link.
    /// Writes nothing when a row with its id (or a folder with its name) is there already: it is
    /// another NanoPix patient's, saved since the id was found free (a repair recognises a row
    /// the export wrote before this, see [`Engine::is_our_row`]), and the export must not link
    /// to it; nor when NanoPix changed since `unchanged_since`. A `NanoPix.db3` replaced under
    /// the connection (a backup restored) is such a change: the sync has not read the file
    /// NanoPix uses now, and forgets what it read, so the export waits for a pass to read it.
    fn complete_export(
        &mut self,
        patient: &Patient,
        row: &NewNanoPixPatient,
        unchanged_since: Option<i64>,
        twins: Option<&Twins>,
    ) -> Result<Insertion> {
        if self.nanopix.replaced() {
            self.nanopix_read = None;
            return Ok(Insertion::NanoPixChanged);
        }
        let closing = &self.signals.closing;
        let inserted = self.nanopix.insert_patient(row, unchanged_since, || closing.load(Ordering::Relaxed))?;
        if inserted == Insertion::Inserted {
            crash_point("row");
            self.link_export(patient, row.id, twins)?;
        }
        Ok(inserted)
    }
}

/// Why patient `patient_id` of the DentalTID database at `path` is not exported: DentalTID
/// refused its link to NanoPix patient `external_id`, the same person.
fn link_refused(path: &std::path::Path, patient_id: i64, external_id: NanoPixId) -> Error {
    let message = format!(
        "DentalTID refused to link patient {patient_id} to NanoPix patient {external_id}, who matches it: \
         not exported, so that NanoPix does not hold the person twice"
    );
    let refused = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT);
    Error::db(path, "exporting a patient")(rusqlite::Error::SqliteFailure(refused, Some(message)))
}

/// The lower of two patient ids, either of which may be missing.
fn lowest(one: Option<i64>, other: Option<i64>) -> Option<i64> {
    one.into_iter().chain(other).min()
}

/// The NanoPix row an export of `patient` writes with `id`, created `now`.
fn new_nanopix_row(patient: &Patient, id: NanoPixId, now: NaiveDateTime) -> NewNanoPixPatient {
    NewNanoPixPatient {
        id,
        last_name: patient.last_name.trim().to_owned(),
        first_name: patient.first_name.trim().to_owned(),
        birth_date: patient.date_of_birth,
        phone: Some(patient.phone.trim().to_owned()).filter(|phone| !phone.is_empty()),
        created: now,
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::engine::tests::{clinic_engine, statements_run};

    /// Adds `count` patients to the DentalTID database at `db`, created in DentalTID last year.
    fn add_old_patients(db: &std::path::Path, count: u32) {
        let conn = Connection::open(db).unwrap();
        let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
            INSERT INTO patients(name, familyName, age, healthState, diagnosis, treatment, createdAt)
            SELECT 'Given' || i, 'Family' || i, 0, '', '', '', '2024-03-0' || (i % 9 + 1) || 'T09:00:00.000' FROM n";
        conn.execute(sql, [count]).unwrap();
    }

    /// NanoPix saves an image while `export_existing` exports a clinic's old patients: the export
    /// that finds NanoPix changed since the sync read it is deferred, and so is every export after
    /// it, until the sync has read NanoPix again. None of them may write anything: each wrote a
    /// journal row, took NanoPix's write lock and dropped the journal row again, for every patient
    /// left (at 100,000 patients, minutes of DentalTID and NanoPix kept locked for nothing).
    #[test]
    fn exports_after_nanopix_changed_write_nothing_until_it_is_read_again() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        engine.reconcile().unwrap();
        add_old_patients(&db, 20);
        let unlinked = engine.without_recorded_link(engine.dentaltid.all_patients().unwrap()).unwrap();
        let old: Vec<Patient> =
            unlinked.into_iter().filter(|patient| patient.last_name.starts_with("Family")).collect();
        assert_eq!(old.len(), 20);
        let nanopix = Connection::open(engine.config.nanopix_root.join("database/NanoPix.db3")).unwrap();
        nanopix.execute("UPDATE Patient SET updated_datetime = '2025-01-22 10:00:01' WHERE pk = 1", []).unwrap();

        let mut report = ReconcileReport::default();
        let (statements, failed) =
            statements_run(&mut engine, |engine| engine.export_each(&old, IdsFrom::Creation, &mut report));
        let journaled = statements.iter().filter(|sql| sql.contains("INSERT INTO nanopix_sync_exports")).count();
        assert_eq!(journaled, 0, "journal rows written for exports NanoPix would refuse");
        assert_eq!(failed, old.iter().map(|patient| patient.id).min(), "every export waits for the next pass");
        assert_eq!((report.exported, report.errors), (0, 0));
    }

    /// Two exports are journaled ahead while NanoPix saves a study (its write lock held, so their
    /// rows wait for their own exports); before those begin, the receptionist deletes one patient
    /// and corrects the other's name. The first export writes nothing and drops its journal row;
    /// the second starts again from the patient as she is now, and NanoPix gets her corrected name.
    #[test]
    fn exports_journaled_ahead_follow_what_dentaltid_did_before_they_write() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        engine.reconcile().unwrap();
        let dentaltid = Connection::open(&db).unwrap();
        let [deleted, corrected] = [("Nadia", "Cherif"), ("Amine", "Belkacem")].map(|(first, last)| {
            let sql = "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                            createdAt)
                VALUES (?1, ?2, 30, '1992-02-14T00:00:00.000', '', '', '', '2025-01-22T09:00:00.000')";
            dentaltid.execute(sql, [first, last]).unwrap();
            engine.dentaltid.patient(dentaltid.last_insert_rowid()).unwrap().unwrap()
        });
        let nanopix = Connection::open(engine.config.nanopix_root.join("database/NanoPix.db3")).unwrap();
        engine.begin_export_run();
        nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
        engine.write_ahead(&[&deleted, &corrected], IdsFrom::Now);
        nanopix.execute_batch("ROLLBACK").unwrap();
        assert_eq!(engine.dentaltid.pending_exports().unwrap().len(), 2, "both exports journaled ahead");
        dentaltid.execute("DELETE FROM patients WHERE id = ?1", [deleted.id]).unwrap();
        dentaltid.execute("UPDATE patients SET name = 'Amina' WHERE id = ?1", [corrected.id]).unwrap();

        assert_eq!(engine.export_or_resume(&deleted, IdsFrom::Now, None).unwrap(), Exported::Deleted);
        let Exported::Written(id) = engine.export_or_resume(&corrected, IdsFrom::Now, None).unwrap() else {
            panic!("the corrected patient is not exported")
        };
        assert_eq!(engine.end_export_run(&mut ReconcileReport::default()), None);
        let written = engine.nanopix.patient(id).unwrap().unwrap();
        assert_eq!((written.first_name.as_str(), written.last_name.as_str()), ("Amina", "Belkacem"));
        let named = "SELECT COUNT(*) FROM Patient WHERE first_name IN ('Nadia', 'Amine')";
        assert_eq!(nanopix.query_row(named, [], |row| row.get::<_, i64>(0)).unwrap(), 0, "rows as journaled");
        assert!(engine.dentaltid.pending_exports().unwrap().is_empty(), "journal rows left");
    }

    /// How many of `statements` start with `prefix` in each transaction that runs one or more,
    /// in order.
    fn per_transaction(statements: &[String], prefix: &str) -> Vec<usize> {
        let (mut counts, mut in_transaction) = (Vec::new(), 0);
        for sql in statements {
            if sql.starts_with("BEGIN") {
                in_transaction = 0;
            } else if sql.starts_with(prefix) {
                in_transaction += 1;
            } else if sql.starts_with("COMMIT") && in_transaction > 0 {
                counts.push(in_transaction);
            }
        }
        counts
    }

    /// Adds ten NanoPix patients, rows and folders, as NanoPix saves them, and reconciles: a first
    /// sync imports them, with the fixture's patient, in an import batch.
    fn import_ten_nanopix_patients(engine: &mut Engine) {
        let root = engine.config.nanopix_root.clone();
        let nanopix = Connection::open(root.join("database/NanoPix.db3")).unwrap();
        let people =
            ["Ouali", "Ferhat", "Lounes", "Djebbar", "Mebarki", "Rahmani", "Slimani", "Yahiaoui", "Ziani", "Bouzid"];
        for (n, last_name) in people.into_iter().enumerate() {
            let id = format!("20250121_09{n:02}00");
            nanopix
                .execute(
                    "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime, updated_datetime)
                     VALUES (?1, ?2, 'Yacine', ?3, '2025-01-21 09:00:30', '2025-01-21 09:00:30')",
                    (&id, last_name, format!("19{}-05-19", 50 + n)),
                )
                .unwrap();
            std::fs::create_dir(root.join(&id)).unwrap();
        }
        assert_eq!(engine.reconcile().unwrap().imported, 11);
    }

    /// A clinic typed again into DentalTID people whose NanoPix patients a first sync imported
    /// (thousands of them in a large clinic, whose first sync also leaves thousands of reports on
    /// the review list). Each export of one finds the imported patient as a linked twin, and
    /// looks on the review list whether that pair was put to review already: the list is read
    /// once for the exports whose links one transaction records, not once for each.
    #[test]
    fn exports_of_patients_with_linked_twins_read_the_review_list_once_together() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        import_ten_nanopix_patients(&mut engine);
        let dentaltid = Connection::open(&db).unwrap();
        let typed_again = "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                                createdAt)
            SELECT name, familyName, age, dateOfBirth, '', '', '', '2024-03-01T09:00:00.000' FROM patients
            WHERE source = 'nanopix' AND name = 'Yacine'";
        assert_eq!(dentaltid.execute(typed_again, []).unwrap(), 10);

        let (statements, exported) = statements_run(&mut engine, |engine| engine.export_existing().unwrap());
        let list_reads = statements.iter().filter(|sql| sql.contains("FROM nanopix_sync_possible_duplicates ORDER BY"));
        assert_eq!(exported, 16, "the six sample patients and the ten typed again");
        assert_eq!(list_reads.count(), 1, "reads of the whole review list");
        let reported = engine.possible_duplicates().unwrap();
        assert_eq!(reported.iter().filter(|report| report.candidates.len() == 1).count(), 10, "{reported:#?}");
    }

    /// The ids `export_existing` tries are each looked for among the links the sync recorded,
    /// import batches among them, which no index finds an id in: the batches (a first sync of
    /// 100,000 patients keeps their 100,000 ids there) are read once for all the ids tried, not
    /// once for each (a tenth of `export_existing`'s time beside 100,000 imported patients).
    #[test]
    fn ids_export_existing_tries_read_the_import_batches_once() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        import_ten_nanopix_patients(&mut engine);
        add_old_patients(&db, 20);
        let (statements, exported) = statements_run(&mut engine, |engine| engine.export_existing().unwrap());
        let every_batch =
            |sql: &&String| sql.contains("external_ids FROM nanopix_sync_imports") && !sql.contains("WHERE");
        assert_eq!(exported, 26, "the six sample patients and the twenty old ones");
        assert_eq!(statements.iter().filter(every_batch).count(), 1, "reads of every import batch");
        // The ids the batch holds were not given again.
        let exported_ids: Vec<String> = Connection::open(&db)
            .unwrap()
            .prepare("SELECT external_id FROM nanopix_sync_links")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(exported_ids.iter().all(|id| !id.starts_with("20250121_09")), "{exported_ids:?}");
    }

    /// `export_existing` of a clinic's old patients journals its exports, writes their NanoPix
    /// rows and records their links many at a time: a transaction of each for each export (each
    /// waits for the disk) kept DentalTID locked most of the time, its own saves waiting up to
    /// seconds behind them, and NanoPix locked nearly all the time once the rest of an export cost
    /// little, so that NanoPix's own reads of its patients waited up to a second.
    #[test]
    fn export_existing_journals_writes_and_links_many_exports_in_one_transaction() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        engine.reconcile().unwrap();
        add_old_patients(&db, 30);
        let (statements, exported) = statements_run(&mut engine, |engine| engine.export_existing().unwrap());
        assert_eq!(exported, 36, "the six sample patients and the thirty old ones");
        let journaling = per_transaction(&statements, "INSERT INTO nanopix_sync_exports");
        assert_eq!(journaling, [16, 16, 4], "exports journaled by each transaction that journaled some");
        let writing = per_transaction(&statements, "INSERT INTO Patient");
        assert_eq!(writing, [16, 16, 4], "NanoPix rows written by each transaction that wrote some");
        let linking = per_transaction(&statements, "UPDATE patients SET external_id");
        assert_eq!(linking, [36], "links recorded by each transaction that recorded some");
    }
}
