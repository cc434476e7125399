//! Repairs: the exports a crash or an error interrupted, ended or dropped from the journal, by
//! `open` (the first reconcile after it to succeed reports what it did), by a full reconcile
//! or, a few at a time, by a live pass.

use std::path::PathBuf;

use chrono::{NaiveDateTime, TimeDelta};
use foldhash::HashSet;

use super::{Exported, IdsFrom, Twins, new_nanopix_row};
use crate::dentaltid::{PendingExport, is_another_person};
use crate::engine::Engine;
use crate::events::ReconcileReport;
use crate::matching::{DentalIndex, MatchKey};
use crate::patient::{NanoPixPatient, Patient, parse_nanopix_datetime};
use crate::{NanoPixId, Result};

/// Most interrupted exports a live pass tries to end (in turns); a full reconcile tries them all.
const REPAIRS_PER_LIVE_PASS: usize = 8;

/// NanoPix rows read at a time when a repair looks for a patient NanoPix saved itself.
const TWIN_PAGE: u32 = 5_000;

/// How long after `open` its repairs stand for those of the first reconcile: one that begins
/// sooner (the automatic one at start, the `sync` runner's `once`, a host's "Sync Now" at start)
/// does not try again the exports whose repair `open` saw fail, which would report each failure
/// twice. One that begins later ("Sync Now" long after, with Live Sync off) tries them again.
const OPEN_REPAIRS_STAND_FOR: TimeDelta = TimeDelta::seconds(5);

/// What the repairs of interrupted exports at `open` did, kept for the first reconcile after it
/// to succeed, whose report counts them (see [`Engine::repairs_at_open`]).
#[derive(Debug)]
pub(in crate::engine) struct OpenRepairs {
    /// What they did: the exports they completed, the errors they reported, and so on.
    report: ReconcileReport,
    /// The patients whose repair failed (each reported in a `sync_error`).
    failed: Vec<i64>,
    /// When they ended, by the handle's clock.
    ended: NaiveDateTime,
    /// The database that refused one of them while it stayed locked past the busy timeout, if
    /// one did: automatic work tries again soon what such a database refused.
    refused_while_busy: Option<PathBuf>,
}

/// What [`Engine::repair_each`] found besides what its report counts.
#[derive(Debug, Default)]
struct RepairsTried {
    /// Whether a repair left the id its export reserved (see [`Engine::repair_each`]).
    left_a_reserved_id: bool,
    /// The patients whose repair failed.
    failed: Vec<i64>,
}

/// The interrupted exports a live pass tried to end (see [`Engine::repair_some_exports`]).
#[derive(Debug, Default)]
pub(in crate::engine) struct LiveRepairs {
    /// The patients whose exports it tried.
    pub tried: Vec<i64>,
    /// The patients whose exports wait in the journal for a later pass.
    pub untried: Vec<i64>,
    /// Whether a repair left the id its export reserved (see [`Engine::repair_each`]).
    pub left_a_reserved_id: bool,
}

impl Engine {
    /// Finishes exports a crash or an error interrupted, using the journal, but those of patients
    /// `tried`: the live pass that goes on as this reconcile tried them a moment ago, or `open`
    /// just before, and reported each failure. Returns the patients whose repair failed.
    pub(in crate::engine) fn repair_exports(
        &mut self,
        tried: &[i64],
        report: &mut ReconcileReport,
    ) -> Result<Vec<i64>> {
        let mut pending = self.dentaltid.pending_exports()?;
        pending.retain(|pending| !tried.contains(&pending.patient_id));
        Ok(self.repair_each(pending, report).failed)
    }

    /// Finishes the exports a crash or an error interrupted, as `open` does, and keeps what it
    /// did for the first reconcile after it that succeeds (see [`Engine::repairs_at_open`]).
    pub(in crate::engine) fn repair_at_open(&mut self) -> Result<()> {
        let mut report = ReconcileReport::default();
        let failed = self.repair_exports(&[], &mut report)?;
        let refused_while_busy = self.refused_while_busy.take();
        self.open_repairs = Some(OpenRepairs { report, failed, ended: self.config.clock.now(), refused_while_busy });
        Ok(())
    }

    /// What the first reconcile after `open` to succeed starts from: the report of the repairs
    /// `open` did, and the patients whose exports it leaves alone, those whose repair `open` saw
    /// fail, when it begins within [`OPEN_REPAIRS_STAND_FOR`] of them (none otherwise, nor when
    /// the clock went back since: they are tried again). It then still notes a database that
    /// refused one of them while locked, for automatic work to try again soon. Once a reconcile
    /// succeeds, later ones start from nothing (see [`Engine::reconcile`]).
    pub(in crate::engine) fn repairs_at_open(&mut self) -> (ReconcileReport, Vec<i64>) {
        let Some(open) = &self.open_repairs else { return (ReconcileReport::default(), Vec::new()) };
        let since = self.config.clock.now().signed_duration_since(open.ended);
        if since < TimeDelta::zero() || since > OPEN_REPAIRS_STAND_FOR {
            return (open.report.clone(), Vec::new());
        }
        if let Some(path) = &open.refused_while_busy {
            self.refused_while_busy = Some(path.clone());
        }
        (open.report.clone(), open.failed.clone())
    }

    /// Finishes up to [`REPAIRS_PER_LIVE_PASS`] interrupted exports, taking up where the last
    /// live pass left off. A NanoPix that refuses every new patient (a newer schema, a full disk)
    /// leaves one journal row per export tried, and each repair reads the whole journal: a live
    /// pass takes them in turns, and a full reconcile tries them all. Returns the patients whose
    /// exports it tried, for a full reconcile the pass may become not to try them again.
    pub(in crate::engine) fn repair_some_exports(&mut self, report: &mut ReconcileReport) -> Result<LiveRepairs> {
        let mut pending = self.dentaltid.pending_exports()?;
        if pending.is_empty() {
            return Ok(LiveRepairs::default());
        }
        let start = self.next_repair % pending.len();
        pending.rotate_left(start);
        let untried = pending.split_off(pending.len().min(REPAIRS_PER_LIVE_PASS));
        self.next_repair = start + pending.len();
        let tried = pending.iter().map(|pending| pending.patient_id).collect();
        let left_a_reserved_id = self.repair_each(pending, report).left_a_reserved_id;
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
    pub(in crate::engine) fn saves_a_patient_left_to_repair(
        &self,
        read: &[NanoPixPatient],
        untried: &[i64],
    ) -> Result<bool> {
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
    /// off an id another NanoPix patient took meanwhile. Returns the patients whose repair failed,
    /// and whether a repair left the id its export reserved, moved or dropped: a NanoPix row
    /// there is no export's any more, and a live pass that read it before may have skipped it as one.
    fn repair_each(&mut self, pending: Vec<PendingExport>, report: &mut ReconcileReport) -> RepairsTried {
        let mut tried = RepairsTried::default();
        for pending in pending {
            self.journaled = Some((pending.patient_id, pending.external_id));
            let repaired = self.repair_export(&pending, report);
            tried.left_a_reserved_id |= self.left_reserved_id(&pending) || matches!(repaired, Ok(false));
            match repaired {
                Ok(true) => report.repaired += 1,
                Ok(false) => {}
                Err(error) => {
                    let external_id = self.journaled_id(pending.patient_id);
                    self.report_error(&error, external_id, Some(pending.patient_id), report);
                    tried.failed.push(pending.patient_id);
                }
            }
        }
        tried
    }

    /// Completes or drops one interrupted export, reporting in `report` the linked twins of a
    /// patient it exports; returns whether it was completed. With the DentalTID patient deleted
    /// meanwhile, the export is completed only on a NanoPix row it provably wrote; any other row
    /// at the reserved id is another NanoPix patient's, left to be imported. Its folder is created
    /// first, so NanoPix's files are whole, and the link's `delete_requested` then lets the host
    /// remove both. An export that wrote no row and gave way to nobody gives the patient the
    /// NanoPix patient a deleted one left behind, if any, before it writes her a row.
    fn repair_export(&mut self, pending: &PendingExport, report: &mut ReconcileReport) -> Result<bool> {
        match self.dentaltid.patient(pending.patient_id)? {
            Some(patient) if patient.external_id.is_none() => {
                let twins = self.twins_of(&patient, report);
                let read = self.nanopix.data_version()?;
                let exported = match self.end_or_give_way(&patient, pending, twins.as_ref())? {
                    Some(exported) => exported,
                    None if self.gave_back_left_behind(&patient, report)? => return Ok(false),
                    None => self.rewrite_export(&patient, pending, read, twins.as_ref())?,
                };
                match exported {
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

    /// Whether the NanoPix patient a patient deleted in DentalTID left behind was given back to
    /// `patient` (see [`Engine::give_back_left_behind`]), whose export wrote no NanoPix row and
    /// gave way to no patient NanoPix saved (see [`Engine::end_or_give_way`]): her export is then
    /// dropped, as a fresh export of her would not be written. A patient NanoPix saved comes
    /// first, as for a fresh export, whose catch-up links her before anything is given back.
    fn gave_back_left_behind(&mut self, patient: &Patient, report: &mut ReconcileReport) -> Result<bool> {
        if !self.give_back_left_behind(std::slice::from_ref(patient), report)?.contains_key(&patient.id) {
            return Ok(false);
        }
        self.dentaltid.abandon_export(patient.id)?;
        Ok(true)
    }

    /// Ends the export of `patient` that `pending` records: on NanoPix's row at the reserved id
    /// when it is the row the export wrote; else by writing the patient as it is now, at the
    /// reserved id when nothing else uses it (no row, no folder), or else at a new free id. The journal records the row
    /// first, in the one transaction that moves it to its new id if need be. An export that wrote
    /// no row while NanoPix got one of its own with the patient's names and birth date (the same
    /// person, saved meanwhile) is dropped instead, for a pass to link the two; the patient stays
    /// due, for Live Sync to export her should that link not happen.
    pub(super) fn resume_export(
        &mut self,
        patient: &Patient,
        pending: &PendingExport,
        twins: Option<&Twins>,
    ) -> Result<Exported> {
        let read = self.nanopix.data_version()?;
        match self.end_or_give_way(patient, pending, twins)? {
            Some(exported) => Ok(exported),
            None => self.rewrite_export(patient, pending, read, twins),
        }
    }

    /// The first steps of [`Engine::resume_export`]: ends the export of `patient` that `pending`
    /// records on the NanoPix row it wrote, or drops it for a patient NanoPix saved that the
    /// matching links to her. `None` when it did neither: the export is still to be written.
    fn end_or_give_way(
        &mut self,
        patient: &Patient,
        pending: &PendingExport,
        twins: Option<&Twins>,
    ) -> Result<Option<Exported>> {
        let id = pending.external_id;
        if self.is_our_row(pending, Some(patient))? {
            self.link_export(patient, id, twins)?;
            return Ok(Some(Exported::Written(id)));
        }
        let in_nanopix = self.unknown_twins_in_nanopix(patient, id)?;
        if !in_nanopix.is_empty() && self.matching_links(patient, in_nanopix)? {
            self.dentaltid.give_export_up_for_link(patient.id)?;
            return Ok(Some(Exported::Deferred));
        }
        Ok(None)
    }

    /// The last step of [`Engine::resume_export`]: writes `patient` as she is now for the export
    /// `pending` records, which wrote no row, at the reserved id when nothing else uses it, or
    /// else at a new free id; only while NanoPix's data version is still `read`, as it was before
    /// the repair looked there for a patient NanoPix saved itself. A patient NanoPix saved since
    /// (the same person, maybe, whose save held the lock the repair waited for) defers the export,
    /// which stays in the journal: the next pass reads her first, and the repair gives way to her.
    fn rewrite_export(
        &mut self,
        patient: &Patient,
        pending: &PendingExport,
        read: i64,
        twins: Option<&Twins>,
    ) -> Result<Exported> {
        let id = pending.external_id;
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
        let written = self.write_export(patient, row, (IdsFrom::Now, Some(read)), twins)?;
        Ok(written.map_or(Exported::Deferred, Exported::Written))
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
    pub(in crate::engine) fn exports_on_their_rows(&self) -> Result<Vec<i64>> {
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
}
