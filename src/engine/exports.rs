//! Exports: DentalTID patients written to NanoPix (journal row, NanoPix row, folder, then the
//! link), the ids they are given, the exports Live Sync owes, and the repair of exports that a
//! crash or an error interrupted.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::{NaiveDate, NaiveDateTime};
use foldhash::{HashMap, HashSet};

use super::{Engine, crash_point};
use crate::dentaltid::{PendingExport, is_another_person};
use crate::events::{EventKind, ReconcileReport};
use crate::matching::{DentalIndex, MatchKey, MatchedLink, Matcher, PossibleDuplicate};
use crate::nanopix::Insertion;
use crate::patient::{NanoPixPatient, NewNanoPixPatient, Patient, Source, parse_nanopix_datetime};
use crate::{Error, NanoPixId, Result};

/// Most interrupted exports a live pass tries to end (in turns); a full reconcile tries them all.
const REPAIRS_PER_LIVE_PASS: usize = 8;

/// How many ids one export tries before giving up, when other NanoPix patients keep taking them first.
const EXPORT_ATTEMPTS: usize = 3;

/// NanoPix rows read at a time when a repair looks for a patient NanoPix saved itself.
const TWIN_PAGE: u32 = 5_000;

/// How far back from now ids stay clear of a bulk export: NanoPix names a new patient after the
/// second its form was opened, and a form may stay open a while before it is saved. An hour,
/// and one more for the hour a change to summer time skips on the local clock.
const RECENT_IDS: chrono::Duration = chrono::Duration::hours(2);

/// The earliest creation time a bulk export takes an id from: an older `createdAt` is not a
/// real one (a default or a bad import), and the patient counts as undated.
const EARLIEST_CREATION: NaiveDateTime = match chrono::NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(date) => date.and_time(chrono::NaiveTime::MIN),
    None => NaiveDateTime::MIN,
};

/// How far before the [`RECENT_IDS`] an export looks for an id when the patient has no real
/// `createdAt`, or when no second near now is free: a day of seconds, clear of NanoPix's own new
/// patients.
const PAST_IDS: chrono::Duration = chrono::Duration::days(1);

/// The seconds an export takes its id in when it takes the current time: the current second and
/// the next two. Later ones are left to NanoPix's own new patients (named after the second their
/// form is opened), so a run of exports goes on with past ids instead.
const NOW_IDS: chrono::Duration = chrono::Duration::seconds(3);

/// Where an export looks for a free NanoPix id first. When it finds none there, it takes one
/// from the current second (within [`NOW_IDS`]), then from the [`PAST_IDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdsFrom {
    /// The current second: a patient exported now gets the id of its time.
    Now,
    /// The second the patient was created in DentalTID (see [`past_ids_from`]) when that is
    /// over [`RECENT_IDS`] ago, then the next ones up to then: many patients exported at once
    /// (`export_existing`, or Live Sync catching up on patients added while the library was not
    /// running) keep the ids of their own time, and leave NanoPix the seconds from now on.
    Creation,
}

/// A run of searches for past ids (see [`Engine::free_past_id`]), each search starting at or
/// after where the one before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PastRun {
    /// From each patient's creation time, the patients taken in that order.
    Creation = 0,
    /// From the start of the [`PAST_IDS`], once no other second is free.
    DayBefore = 1,
}

/// The interrupted exports a live pass tried to end (see [`Engine::repair_some_exports`]).
#[derive(Debug, Default)]
pub(super) struct LiveRepairs {
    /// The patients whose exports it tried.
    pub tried: Vec<i64>,
    /// The patients whose exports wait in the journal for a later pass.
    pub untried: Vec<i64>,
    /// Whether a repair left the id its export reserved (see [`Engine::repair_each`]).
    pub left_a_reserved_id: bool,
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
        let recorded = self.dentaltid.link(patient_id)?.map(|link| link.external_id);
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
        Err(Error::Busy { path: self.config.nanopix_root.clone(), step: "exporting while NanoPix keeps changing" })
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
        let requests = self.dentaltid.delete_requests()?;
        let born = self.nanopix.born_on(&requests, &dates)?;
        let imported = self.dentaltid.imported_under(&born)?;
        let mut left = Vec::new();
        for id in born {
            let Some(patient) = self.nanopix.patient(id)? else { continue };
            if patient.birth_date.is_some_and(|born| dates.contains(&born))
                && self.dentaltid.delete_requested(id, patient.created, &imported)?
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
    /// while NanoPix changes meanwhile (see [`Engine::export_existing`]).
    fn export_unlinked(&mut self) -> Result<u64> {
        let mut report = ReconcileReport::default();
        let mut refused_by = None;
        for _ in 0..EXPORT_ATTEMPTS {
            self.catch_up_with_nanopix()?;
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
        }
        self.extend_cursor_past_exports();
        // Live Sync would never export them: they are older than its cursor.
        Err(match refused_by {
            Some(path) => Error::Busy { path, step: "exporting: some patients are not exported yet" },
            None => Error::Busy {
                path: self.config.nanopix_root.clone(),
                step: "exporting while NanoPix keeps changing: some patients are not exported yet",
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
    /// exported should get back.
    fn catch_up_with_nanopix(&mut self) -> Result<()> {
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
        if unchanged { Ok(()) } else { self.sync_changes().map(drop) }
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

    /// Those of `patients` with no NanoPix id and no recorded link. A patient whose
    /// `external_id` DentalTID cleared keeps its link row: exporting it again would give the
    /// person a second NanoPix patient, and the first would come back as an import.
    fn without_recorded_link(&self, patients: Vec<Patient>) -> Result<Vec<Patient>> {
        let mut unlinked = Vec::with_capacity(patients.len());
        for patient in patients.into_iter().filter(|p| p.external_id.is_none()) {
            if self.dentaltid.link(patient.id)?.is_none() {
                unlinked.push(patient);
            }
        }
        Ok(unlinked)
    }

    /// Exports `patients` with ids `from`, reporting each failure; returns the lowest patient id
    /// among those that failed or were deferred (see [`Exported::Deferred`]). With ids from their creation, patients are taken in that order,
    /// so each id is looked for after the last one given; else in the order given. A patient the
    /// matching links to a NanoPix patient a deleted one left behind is linked to it instead.
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
        let twins = self.twin_finder(patients).unwrap_or_else(|error| {
            self.report_error(&error, None, None, report);
            None
        });
        let mut exported_now = HashSet::default();
        let mut lowest_failed: Option<i64> = None;
        for patient in ordered {
            if self.cancelled() {
                break;
            }
            if given_back.contains_key(&patient.id) {
                continue;
            }
            let found = linked_twins_of(twins.as_ref(), patient, &exported_now);
            let exported = self.export_or_resume(patient, from, found.as_ref());
            if !matches!(exported, Ok(Exported::Written(_) | Exported::Deleted)) {
                lowest_failed = Some(lowest_failed.map_or(patient.id, |lowest| lowest.min(patient.id)));
            }
            match exported {
                Ok(Exported::Written(external_id)) => {
                    report.exported += 1;
                    self.report_twins(patient.id, external_id, report);
                    exported_now.insert(patient.id);
                }
                // A deferred export is the next pass's, once it has read NanoPix: no failure.
                Ok(Exported::Deleted | Exported::Deferred) => {}
                Err(error) => {
                    // A patient left alone for its refused link names the NanoPix patient it matches.
                    let matched = self.refused_links.get(&patient.id).map(NanoPixId::to_string);
                    let external_id = self.journaled_id(patient.id).or(matched);
                    self.report_error(&error, external_id, Some(patient.id), report);
                }
            }
        }
        lowest_failed
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

    /// The DentalTID patients an export of one of `patients` may duplicate, in a matcher: those
    /// born on their birth dates (or every patient, for many dates), with those linked to
    /// NanoPix marked. `None` when none of `patients` has a birth date.
    fn twin_finder(&mut self, patients: &[Patient]) -> Result<Option<Matcher>> {
        let dates: Vec<NaiveDate> =
            patients.iter().filter_map(|patient| patient.date_of_birth).collect::<HashSet<_>>().into_iter().collect();
        if dates.is_empty() {
            return Ok(None);
        }
        self.ensure_indexes()?;
        let mut index = DentalIndex::default();
        match dates.len() {
            ..=super::MAX_CANDIDATE_DATES => self.dentaltid.add_candidates_born_on_only(&dates, &mut index)?,
            _ => self.dentaltid.add_all_candidates(&mut index)?,
        }
        self.matcher_over(index, []).map(Some)
    }

    /// The linked twins of `patient`, exported alone (see [`linked_twins_of`]); an error reading
    /// them goes to `report`, and none are given.
    fn twins_of(&mut self, patient: &Patient, report: &mut ReconcileReport) -> Option<Twins> {
        match self.twin_finder(std::slice::from_ref(patient)) {
            Ok(twins) => linked_twins_of(twins.as_ref(), patient, &HashSet::default()),
            Err(error) => {
                self.report_error(&error, None, Some(patient.id), report);
                None
            }
        }
    }

    /// Reports the linked twins the export of patient `patient_id` as `external_id` kept on the
    /// review list when it linked the patient (`possible_duplicate`), as an import of such a
    /// person is reported: just those the list holds, see [`crate::dentaltid::DentalTid::finish_export`].
    fn report_twins(&mut self, patient_id: i64, external_id: NanoPixId, report: &mut ReconcileReport) {
        let Some((kept_for, found)) = self.kept_twins.take() else { return };
        if kept_for != patient_id {
            return;
        }
        report.possible_duplicates += 1;
        self.bus.emit(EventKind::PossibleDuplicate {
            external_id: external_id.to_string(),
            patient_id,
            reason: found.reason,
            candidates: found.candidates,
        });
    }

    /// Exports `patient`, or ends its export the journal already holds (one a crash or an
    /// earlier error interrupted), as a repair would. `twins` are its linked twins, kept on the
    /// review list with the link. An export ended so that leaves the id it reserved (moved off
    /// it, or dropped for the same person NanoPix saved) drops the live cursor: a live pass may
    /// have skipped the NanoPix row there as this export's, and only a full reconcile reads it
    /// again, before a next try writes the person a second NanoPix patient.
    fn export_or_resume(&mut self, patient: &Patient, from: IdsFrom, twins: Option<&Twins>) -> Result<Exported> {
        self.journaled = None;
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

    /// Whether the journal moved the export `pending` records off the id it reserved, as the
    /// export that just ended left it (see [`Engine::journaled_id`]).
    fn left_reserved_id(&self, pending: &PendingExport) -> bool {
        self.journaled_id(pending.patient_id) != Some(pending.external_id.to_string())
    }

    /// Writes the journal row, then the NanoPix row, then the folder, then the link. The row
    /// written is the patient as DentalTID holds it when the journal row is written: one DentalTID
    /// changed since `patient` was read is read again, up to [`EXPORT_ATTEMPTS`] times. The NanoPix
    /// row is written only if no other program wrote to NanoPix since the sync last read it;
    /// else the journal row goes and the export is deferred.
    ///
    /// # Failure
    /// [`Error::Database`], writing nothing, for a patient whose link to the NanoPix patient it
    /// matches DentalTID refused (see [`Engine::link_all`]): NanoPix would hold the person twice.
    fn export(&mut self, patient: &Patient, from: IdsFrom, twins: Option<&Twins>) -> Result<Exported> {
        if let Some(&external_id) = self.refused_links.get(&patient.id) {
            return Err(link_refused(&self.config.dentaltid_db, patient.id, external_id));
        }
        let Some(read) = self.nanopix_read else { return Ok(Exported::Deferred) };
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

    /// The row an export of `patient` would write now, at the first free id looked for `from`
    /// where it says, then in the seconds [`NOW_IDS`] names, then in the [`PAST_IDS`]. The sync's
    /// indexes are built first if missing: every id tried is looked up among DentalTID's patients.
    ///
    /// # Failure
    /// [`Error::NoFreeId`] when none of these seconds is free; see [`Engine::export_time`].
    fn planned_row(&mut self, patient: &Patient, from: IdsFrom) -> Result<NewNanoPixPatient> {
        let now = self.export_time()?;
        self.ensure_indexes()?;
        self.nanopix.refresh_record_ids()?;
        let in_flight = self.in_flight_ids()?;
        let mut id = match from {
            IdsFrom::Creation => self.free_past_id(PastRun::Creation, past_ids_from(patient, now), now, &in_flight)?,
            IdsFrom::Now => None,
        };
        if id.is_none() {
            id = self.free_now_id(now, &in_flight)?;
        }
        if id.is_none() {
            id = self.free_past_id(PastRun::DayBefore, now - RECENT_IDS - PAST_IDS, now, &in_flight)?;
        }
        let id = id.ok_or_else(|| Error::NoFreeId(NanoPixId::from_datetime(now).to_string()))?;
        Ok(new_nanopix_row(patient, id, now))
    }

    /// The first free id from `from` up to [`RECENT_IDS`] before `now`, looked for from where
    /// the earlier searches of `run` left off when `from` lies between where the run started and
    /// there (`export_existing` takes patients in the order of their creation, and the day
    /// before starts where it did): every second in between is taken, and probing them again
    /// would make a run of exports that fills those hours cost the square of its length.
    /// `None` when `from` is within those hours or no id is free before then.
    fn free_past_id(
        &mut self,
        run: PastRun,
        from: NaiveDateTime,
        now: NaiveDateTime,
        in_flight: &HashSet<NanoPixId>,
    ) -> Result<Option<NanoPixId>> {
        let end = now - RECENT_IDS;
        let first = NanoPixId::from_datetime(from).datetime();
        // Only the seconds from where the run started are known taken: a search that starts
        // before it (the clock put back, or a patient out of order) looks from `from` again.
        let resumed = self.past_probed[run as usize].filter(|&(started, probed)| started <= first && probed > first);
        let (started, start) = resumed.unwrap_or((first, first));
        let free = NanoPixId::first_free_before(start, end, |id| self.id_taken(id, in_flight))?;
        // Every second from `start` up to the one given, or up to `end`, is taken now.
        let probed = match free {
            Some(id) => Some(id.next_second().datetime()),
            None => Some(NanoPixId::from_datetime(end).datetime()).filter(|end| *end > start),
        };
        if let Some(probed) = probed {
            self.past_probed[run as usize] = Some((started, probed));
        }
        Ok(free)
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
    /// to it; nor when NanoPix changed since `unchanged_since`.
    fn complete_export(
        &mut self,
        patient: &Patient,
        row: &NewNanoPixPatient,
        unchanged_since: Option<i64>,
        twins: Option<&Twins>,
    ) -> Result<Insertion> {
        let closing = &self.signals.closing;
        let inserted = self.nanopix.insert_patient(row, unchanged_since, || closing.load(Ordering::Relaxed))?;
        if inserted == Insertion::Inserted {
            crash_point("row");
            self.link_export(patient, row.id, twins)?;
        }
        Ok(inserted)
    }

    /// Creates the folder of an exported patient whose row NanoPix holds, then records the link
    /// (with the patient's linked `twins` on the review list, while it has the names and birth
    /// date they were found for) and reports the export.
    fn link_export(&mut self, patient: &Patient, id: NanoPixId, twins: Option<&Twins>) -> Result<()> {
        let folder = self.nanopix.create_folder(id, &self.config.patient_subfolders)?;
        crash_point("folder");
        let patient_id = patient.id;
        let twins = twins.map(|twins| (patient.created_at.as_str(), &twins.key, &twins.found));
        let kept = self.dentaltid.finish_export(patient_id, id, self.config.clock.now(), twins)?;
        self.kept_twins = kept.map(|found| (patient_id, found));
        crash_point("linked");
        let (external_id, folder) = (id.to_string(), folder.display().to_string());
        self.bus.emit(EventKind::PatientExported { patient_id, external_id, folder });
        Ok(())
    }

    /// Ends the export of `patient` that `pending` records: on NanoPix's row at the reserved id
    /// when it is the row the export wrote; else by writing the patient as it is now, at the
    /// reserved id when nothing else uses it (no row, no folder), or else at a new free id. The journal records the row
    /// first, in the one transaction that moves it to its new id if need be. An export that wrote
    /// no row while NanoPix got one of its own with the patient's names and birth date (the same
    /// person, saved meanwhile) is dropped instead, for a pass to link the two; the patient stays
    /// due, for Live Sync to export her should that link not happen.
    fn resume_export(&mut self, patient: &Patient, pending: &PendingExport, twins: Option<&Twins>) -> Result<Exported> {
        let id = pending.external_id;
        if self.is_our_row(pending, Some(patient))? {
            self.link_export(patient, id, twins)?;
            return Ok(Exported::Written(id));
        }
        let in_nanopix = self.unknown_twins_in_nanopix(patient, id)?;
        if !in_nanopix.is_empty() && self.matching_links(patient, in_nanopix)? {
            self.dentaltid.give_export_up_for_link(patient.id)?;
            return Ok(Exported::Deferred);
        }
        self.nanopix.refresh_record_ids()?;
        let mut others = self.in_flight_ids()?;
        others.remove(&id);
        let row = if self.id_taken(id, &others)? {
            self.planned_row(patient, IdsFrom::Now)?
        } else {
            // The creation time the journal recorded, if any: an export that fails the same way
            // again then leaves the journal as it was, and a pass that changed nothing writes nothing.
            let recorded = pending.written.as_ref().and_then(|written| parse_nanopix_datetime(&written.created));
            new_nanopix_row(patient, id, recorded.map_or_else(|| self.export_time(), Ok)?)
        };
        if pending.written.as_ref() != Some(&row.written()) || row.id != id {
            self.replan_export(patient.id, &row)?;
        }
        // A repair ends what the journal began; no twin was there a moment ago.
        let written = self.write_export(patient, row, (IdsFrom::Now, None), twins)?;
        written.map(Exported::Written).ok_or_else(|| Error::Internal("a repair was deferred".into()))
    }

    /// The NanoPix patients with the names and birth date of `patient` that are new to the sync
    /// (see [`Engine::is_new_to_sync`]) and no other export reserved: ones NanoPix saved itself,
    /// also at `reserved`, the id the export of `patient` reserved and wrote no row at (NanoPix
    /// names a patient after the second its form was opened, which may be that one). Reads every
    /// NanoPix patient: for repairs, which are rare.
    fn unknown_twins_in_nanopix(&self, patient: &Patient, reserved: NanoPixId) -> Result<Vec<NanoPixPatient>> {
        let Some(born) = patient.date_of_birth else { return Ok(Vec::new()) };
        let key = MatchKey::of(&patient.first_name, &patient.last_name, born);
        let mut in_flight = self.in_flight_ids()?;
        in_flight.remove(&reserved);
        let (mut twins, mut after) = (Vec::new(), None);
        loop {
            let page = self.nanopix.patients_after(after, TWIN_PAGE)?;
            let Some(last) = page.last_pk().filter(|&pk| after.is_none_or(|after| pk > after)) else {
                return Ok(twins);
            };
            after = Some(last);
            for other in page.patients.into_iter().filter(|other| other.birth_date == Some(born)) {
                let twin = MatchKey::of(&other.first_name, &other.last_name, born) == key
                    && !in_flight.contains(&other.id)
                    && self.is_new_to_sync(&other)?;
                if twin {
                    twins.push(other);
                }
            }
        }
    }

    /// Whether no DentalTID patient shows NanoPix patient `row`'s id and no link records it, or
    /// the row is another person than the patients linked to the id (see [`is_another_person`]).
    fn is_new_to_sync(&self, row: &NanoPixPatient) -> Result<bool> {
        let known = self.dentaltid.shows_external_id(row.id)? || self.dentaltid.has_recorded_link(row.id)?;
        Ok(!known || is_another_person(row.created, &self.dentaltid.linked_rows_of(row.id)?))
    }

    /// Whether the matching links one of NanoPix patients `twins` to `patient`, whose export is
    /// in the journal (which otherwise keeps `patient` from linking): auto-linking on, and one
    /// exact match on each side.
    fn matching_links(&self, patient: &Patient, twins: Vec<NanoPixPatient>) -> Result<bool> {
        let mut index = DentalIndex::default();
        self.dentaltid.add_all_candidates(&mut index)?;
        let pending = self.dentaltid.pending_exports()?;
        let exporting = pending.iter().map(|p| p.patient_id).filter(|&id| id != patient.id);
        let mut matcher = self.matcher_over(index, exporting)?;
        for twin in twins {
            matcher.offer(twin, &mut Vec::new());
        }
        Ok(matcher.finish().iter().any(|link| link.patient_id == patient.id))
    }

    /// The patients whose export waits in the journal on the NanoPix row it wrote (see
    /// [`Engine::is_our_row`]), its folder or link not made yet: its repair ends on that row and
    /// never gives way to a patient NanoPix saved (see [`Engine::resume_export`]), so the
    /// matching counts them as linked, and imports and reports such a patient beside them.
    pub(super) fn exports_on_their_rows(&self) -> Result<Vec<i64>> {
        let mut written = Vec::new();
        for pending in self.dentaltid.pending_exports()? {
            // A journal row of an older version records no values: its row is compared with the patient.
            let patient = match pending.written {
                Some(_) => None,
                None => self.dentaltid.patient(pending.patient_id)?,
            };
            if self.is_our_row(&pending, patient.as_ref())? {
                written.push(pending.patient_id);
            }
        }
        Ok(written)
    }

    /// Whether NanoPix's row at the id `pending` reserved is the one the export wrote: it holds
    /// the values the journal recorded. A journal row of an older version records none; its row
    /// is then compared with `patient` as it is now (same names and birth date), and without the
    /// patient it cannot be told from another's.
    fn is_our_row(&self, pending: &PendingExport, patient: Option<&Patient>) -> Result<bool> {
        match (&pending.written, patient) {
            (Some(written), _) => self.nanopix.holds_written_row(pending.external_id, written),
            (None, Some(patient)) => self.describes(pending.external_id, patient),
            (None, None) => Ok(false),
        }
    }

    /// Whether NanoPix's row with `id` has the names and birth date of `patient`.
    fn describes(&self, id: NanoPixId, patient: &Patient) -> Result<bool> {
        let row = new_nanopix_row(patient, id, self.config.clock.now());
        let stored = self.nanopix.patient(row.id)?;
        Ok(stored.is_some_and(|stored| {
            stored.last_name.trim() == row.last_name
                && stored.first_name.trim() == row.first_name
                && stored.birth_date == row.birth_date
        }))
    }

    /// The time an export writes into NanoPix's row: the clock's, which NanoPix's dates must be
    /// able to name.
    ///
    /// # Failure
    /// [`Error::InvalidConfig`] when the clock's year has not four digits (a host's clock set
    /// at either end of time).
    fn export_time(&self) -> Result<NaiveDateTime> {
        let now = self.config.clock.now();
        match chrono::Datelike::year(&now) {
            1..=9999 => Ok(now),
            _ => Err(Error::InvalidConfig(format!("the clock says {now}: NanoPix's dates need a four-digit year"))),
        }
    }

    /// The first free id among the seconds [`NOW_IDS`] names.
    fn free_now_id(&self, now: NaiveDateTime, in_flight: &HashSet<NanoPixId>) -> Result<Option<NanoPixId>> {
        NanoPixId::first_free_before(now, now + NOW_IDS, |id| self.id_taken(id, in_flight))
    }

    /// Whether `id` is in use: by an export in `in_flight`, on disk, in NanoPix's database (a
    /// `Patient` row, or `Study` or `Report` rows as last read), or in DentalTID: a patient or a
    /// recorded link may still hold an id whose row and folder NanoPix lost.
    fn id_taken(&self, id: NanoPixId, in_flight: &HashSet<NanoPixId>) -> Result<bool> {
        #[cfg(test)]
        tests::ID_PROBES.with(|probes| probes.set(probes.get() + 1));
        Ok(in_flight.contains(&id)
            || self.nanopix.folder_path(id).symlink_metadata().is_ok()
            || self.nanopix.records_name(id)
            || self.nanopix.id_exists(id)?
            || self.dentaltid.shows_external_id(id)?
            || self.dentaltid.has_recorded_link(id)?)
    }

    /// The NanoPix ids of exports in flight (in the journal).
    pub(super) fn in_flight_ids(&self) -> Result<HashSet<NanoPixId>> {
        Ok(self.dentaltid.pending_exports()?.into_iter().map(|p| p.external_id).collect())
    }

    /// Finishes exports a crash or an error interrupted, using the journal, but those of patients
    /// `tried`: the live pass that goes on as this reconcile tried them a moment ago, and reported
    /// each failure.
    pub(super) fn repair_exports(&mut self, tried: &[i64], report: &mut ReconcileReport) -> Result<()> {
        let mut pending = self.dentaltid.pending_exports()?;
        pending.retain(|pending| !tried.contains(&pending.patient_id));
        self.repair_each(pending, report);
        Ok(())
    }

    /// Finishes up to [`REPAIRS_PER_LIVE_PASS`] interrupted exports, taking up where the last
    /// live pass left off. A NanoPix that refuses every new patient (a newer schema, a full disk)
    /// leaves one journal row per export tried, and each repair reads the whole journal: a live
    /// pass takes them in turns, and a full reconcile tries them all. Returns the patients whose
    /// exports it tried, for a full reconcile the pass may become not to try them again.
    pub(super) fn repair_some_exports(&mut self, report: &mut ReconcileReport) -> Result<LiveRepairs> {
        let mut pending = self.dentaltid.pending_exports()?;
        if pending.is_empty() {
            return Ok(LiveRepairs::default());
        }
        let start = self.next_repair % pending.len();
        pending.rotate_left(start);
        let untried = pending.split_off(pending.len().min(REPAIRS_PER_LIVE_PASS));
        self.next_repair = start + pending.len();
        let tried = pending.iter().map(|pending| pending.patient_id).collect();
        let left_a_reserved_id = self.repair_each(pending, report);
        Ok(LiveRepairs {
            tried,
            untried: untried.iter().map(|pending| pending.patient_id).collect(),
            left_a_reserved_id,
        })
    }

    /// Whether one of the NanoPix patients `read` past the live cursor is new to the sync (see
    /// [`Engine::unknown`]) and has the names and birth date of a patient whose export waits in
    /// the journal for a later pass (`untried`). The pass would leave the row undecided while
    /// her export waits (see [`Engine::without_pending_exports`]): a full reconcile tries her
    /// export first, which gives way to the row (see [`Engine::resume_export`]), and links the two.
    pub(super) fn saves_a_patient_left_to_repair(&self, read: &[NanoPixPatient], untried: &[i64]) -> Result<bool> {
        if untried.is_empty() || read.iter().all(|row| row.birth_date.is_none()) {
            return Ok(false);
        }
        let waiting = self.keys_of(untried)?;
        let waits = |row: &&NanoPixPatient| {
            row.birth_date.is_some_and(|born| waiting.contains(&MatchKey::of(&row.first_name, &row.last_name, born)))
        };
        let alike: Vec<NanoPixPatient> = read.iter().filter(waits).cloned().collect();
        Ok(!alike.is_empty() && !self.unknown(alike)?.is_empty())
    }

    /// The names and birth dates of those of the DentalTID `patients` that have a birth date.
    fn keys_of(&self, patients: &[i64]) -> Result<HashSet<MatchKey>> {
        let mut keys = HashSet::default();
        for &id in patients {
            if let Some(patient) = self.dentaltid.patient(id)? {
                keys.extend(
                    patient.date_of_birth.map(|born| MatchKey::of(&patient.first_name, &patient.last_name, born)),
                );
            }
        }
        Ok(keys)
    }

    /// Ends or drops each of the interrupted exports `pending` records, reporting each failure
    /// with the NanoPix id the journal holds once it failed: a repair may have moved the export
    /// off an id another NanoPix patient took meanwhile. Returns whether a repair left the id its
    /// export reserved, moved or dropped: a NanoPix row there is no export's any more, and a live
    /// pass that read it before may have skipped it as one.
    fn repair_each(&mut self, pending: Vec<PendingExport>, report: &mut ReconcileReport) -> bool {
        let mut left_a_reserved_id = false;
        for pending in pending {
            self.journaled = Some((pending.patient_id, pending.external_id));
            let repaired = self.repair_export(&pending, report);
            left_a_reserved_id |= self.left_reserved_id(&pending) || matches!(repaired, Ok(false));
            match repaired {
                Ok(true) => report.repaired += 1,
                Ok(false) => {}
                Err(error) => {
                    let external_id = self.journaled_id(pending.patient_id);
                    self.report_error(&error, external_id, Some(pending.patient_id), report)
                }
            }
        }
        left_a_reserved_id
    }

    /// Completes or drops one interrupted export, reporting in `report` the linked twins of a
    /// patient it exports; returns whether it was completed. With the DentalTID patient deleted
    /// meanwhile, the export is completed only on a NanoPix row it provably wrote; any other row
    /// at the reserved id is another NanoPix patient's, left to be imported. Its folder is created
    /// first, so NanoPix's files are whole, and the link's `delete_requested` then lets the host
    /// remove both.
    fn repair_export(&mut self, pending: &PendingExport, report: &mut ReconcileReport) -> Result<bool> {
        match self.dentaltid.patient(pending.patient_id)? {
            Some(patient) if patient.external_id.is_none() => {
                let twins = self.twins_of(&patient, report);
                match self.resume_export(&patient, pending, twins.as_ref())? {
                    Exported::Written(external_id) => {
                        self.report_twins(patient.id, external_id, report);
                        Ok(true)
                    }
                    Exported::Deleted | Exported::Deferred => Ok(false),
                }
            }
            Some(_) => {
                self.dentaltid.abandon_export(pending.patient_id)?;
                Ok(false)
            }
            None if self.is_our_row(pending, None)? => {
                self.nanopix.create_folder(pending.external_id, &self.config.patient_subfolders)?;
                self.dentaltid.finish_export(pending.patient_id, pending.external_id, self.config.clock.now(), None)?;
                Ok(true)
            }
            None => {
                self.dentaltid.abandon_export(pending.patient_id)?;
                Ok(false)
            }
        }
    }
}

/// The other DentalTID patients `twins` counts as linked to NanoPix (or `linked_since` holds) with
/// the same names and birth date as `patient`: the same person, typed again in DentalTID after
/// NanoPix's patient was imported, whom an export of `patient` gives NanoPix twice.
fn linked_twins_of(twins: Option<&Matcher>, patient: &Patient, linked_since: &HashSet<i64>) -> Option<Twins> {
    let (Some(twins), Some(born)) = (twins, patient.date_of_birth) else { return None };
    let (first, last) = (patient.first_name.as_str(), patient.last_name.as_str());
    let found = twins.linked_twins((first, last, born), patient.id, linked_since)?;
    Some(Twins { key: MatchKey::of(first, last, born), found })
}

/// The linked twins found for a patient an export writes, and the names and birth date (of the
/// patient as then read) they were found for.
#[derive(Debug)]
struct Twins {
    key: MatchKey,
    found: PossibleDuplicate,
}

/// Where a bulk export at `now` looks for a past id for `patient`: the second it was created in
/// DentalTID, or [`PAST_IDS`] before the [`RECENT_IDS`] when its `createdAt` cannot be read
/// or is before [`EARLIEST_CREATION`].
fn past_ids_from(patient: &Patient, now: NaiveDateTime) -> NaiveDateTime {
    crate::patient::parse_dart_timestamp(&patient.created_at)
        .filter(|created| *created >= EARLIEST_CREATION)
        .unwrap_or_else(|| now.checked_sub_signed(RECENT_IDS + PAST_IDS).unwrap_or(NaiveDateTime::MIN))
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
    use std::cell::Cell;
    use std::sync::Arc;

    use rusqlite::Connection;

    use super::*;
    use crate::dentaltid::testing::{SCHEMA_V29, build_database};
    use crate::engine::Signals;
    use crate::events::EventBus;
    use crate::{Config, ManualClock};

    thread_local! {
        /// How many ids [`Engine::id_taken`] looked up on this thread.
        pub(super) static ID_PROBES: Cell<usize> = const { Cell::new(0) };
    }

    /// A data import put 300 patients into DentalTID in one second, two hours and 100 seconds
    /// ago: the 100 seconds from then up to the recent hours are soon taken, and the 200
    /// patients left get ids from the day before. Each of those must not probe those 100
    /// seconds again: a run that fills its hours would cost the square of its length (20,000
    /// patients created three hours and a half before `export_existing` took minutes more).
    #[test]
    fn export_existing_does_not_probe_again_the_seconds_a_run_filled() {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let now = NaiveDate::from_ymd_opt(2025, 6, 2).and_then(|day| day.and_hms_opt(10, 0, 0)).unwrap();
        let db = build_database(&dir, SCHEMA_V29, false);
        let conn = Connection::open(&db).unwrap();
        let created = (now - RECENT_IDS - chrono::Duration::seconds(100)).format("%Y-%m-%dT%H:%M:%S.000").to_string();
        for n in 0..300 {
            conn.execute(
                "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                      payment, createdAt, isEmergency, severity, healthAlerts, phoneNumber,
                                      isBlacklisted)
                 VALUES (?1, 'Benali', 40, '1985-03-12T00:00:00.000', '', '', '', 0.0, ?2, 0,
                         'EmergencySeverity.low', '', '', 0)",
                (format!("Amina{n}"), &created),
            )
            .unwrap();
        }
        drop(conn);
        let clock = ManualClock::new(now);
        let mut config = Config::new(&root, &db);
        config.clock = Arc::new(clock.clone());
        let (bus, _events) = EventBus::new(config.clock.clone());
        let mut engine = Engine::open(config, Arc::new(bus), Arc::new(Signals::default())).unwrap();
        ID_PROBES.with(|probes| probes.set(0));
        assert_eq!(engine.export_existing().unwrap(), 300);
        let probes = ID_PROBES.with(Cell::get);
        // The 100 seconds once, and for each of the 200 others the seconds near now (three,
        // all taken) and one from the day before: about 900 in all, against 20,000 and more.
        assert!(probes <= 1_000, "{probes} ids looked up for 300 exports");
    }
}
