//! Imports: the NanoPix patients the sync does not know, matched against DentalTID's patients,
//! then linked to the one each matches or written to DentalTID as new patients. A few are read
//! by id; many are read page by page, matched and written on three threads at once. Each import
//! is reported once its transaction is committed.

use std::time::Instant;

use chrono::{NaiveDate, NaiveDateTime};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use foldhash::HashSet;

use super::{Engine, MAX_CANDIDATE_DATES, PAGE, Snapshot, crash_point};
use crate::dentaltid::{DentalTid, Importing, LastNames};
use crate::events::{EventBus, EventKind, ReconcileReport};
use crate::matching::{DentalIndex, Import, MatchKey, Matcher, PossibleDuplicate};
use crate::nanopix::{FolderListing, NanoPix};
use crate::patient::{BirthDate, NanoPixPatient, NewDentalPatient};
use crate::{Clock, Error, NanoPixId, Result};

/// Most imports a first sync holds, written but not committed, before it commits them: they
/// wait in memory to be reported.
const MAX_UNREPORTED: usize = 2 * PAGE as usize;

/// From how many patients an import is a bulk import, written without the sync's own indexes,
/// which are built again at the end.
const BULK_IMPORT: usize = 10_000;

impl Engine {
    /// A matcher over the DentalTID patients the NanoPix patients `unknown` could match: those
    /// born on their birth dates and those of their names (see [`Engine::add_candidates_of_names`]),
    /// or all of them when a NanoPix birth date is missing, there are many dates, or there is no
    /// index to find them by. A patient whose export waits in the journal counts as unlinked, so
    /// a link to her is left for the export to end (see [`Engine::without_pending_exports`]),
    /// unless the export wrote her NanoPix row already (see [`Engine::exports_on_their_rows`]).
    pub(super) fn matcher(&mut self, unknown: &[NanoPixPatient]) -> Result<Matcher> {
        let mut index = DentalIndex::default();
        let dates: Option<HashSet<_>> = unknown.iter().map(|p| p.birth_date).collect();
        match dates {
            Some(dates) if self.indexed && dates.len() <= MAX_CANDIDATE_DATES => {
                self.dentaltid.add_candidates_born_on(&dates.iter().copied().collect::<Vec<_>>(), &mut index)?;
                let people = unknown
                    .iter()
                    .map(|p| ((p.first_name.as_str(), p.last_name.as_str()), p.born_on_registration_day()));
                self.add_candidates_of_names(people, &dates, &mut index)?;
            }
            _ => self.dentaltid.add_all_candidates(&mut index)?,
        }
        let written = self.exports_on_their_rows()?;
        self.matcher_over(index, written)
    }

    /// A matcher over `index`, counting as linked the patients of the links the sync recorded
    /// (DentalTID may have cleared their `external_id`) and `also_linked`.
    pub(super) fn matcher_over(
        &self,
        index: DentalIndex,
        also_linked: impl IntoIterator<Item = i64>,
    ) -> Result<Matcher> {
        let mut linked = self.dentaltid.linked_patients(&index.unlinked_ids())?;
        linked.extend(also_linked);
        Ok(Matcher::new(index, &linked, self.config.auto_link))
    }

    /// Adds to `index` the patients whose last name is the last or first name (the names swapped)
    /// of one of `people` (first and last names as typed, and whether any birth date counts):
    /// those without a birth date, whom a person is compared with by names alone, and, for a
    /// person whose own birth date is missing or may be one nobody typed (see
    /// [`NanoPixPatient::born_on_registration_day`]), those born on a day not among `dates`, which
    /// [`crate::dentaltid::DentalTid::add_candidates_born_on`] reads: such a person is compared
    /// with every patient of its names, whatever their birth date. Only patients of these names
    /// are read, however many DentalTID holds without a birth date.
    pub(super) fn add_candidates_of_names<'p>(
        &mut self,
        people: impl Iterator<Item = ((&'p str, &'p str), bool)>,
        dates: &HashSet<NaiveDate>,
        index: &mut DentalIndex,
    ) -> Result<()> {
        let (mut unborn, mut any_day) = (HashSet::default(), HashSet::default());
        for ((first_name, last_name), any_birth_date) in people {
            let names = [last_name, first_name].map(crate::matching::normalise_name);
            let wanted = if any_birth_date { &mut any_day } else { &mut unborn };
            wanted.extend(names.into_iter().filter(|name| !name.is_empty()));
        }
        // The patients of a name read for any birth date include those without one.
        unborn.retain(|name| !any_day.contains(name));
        if !any_day.is_empty() {
            let names = self.last_names.get_or_insert_with(LastNames::default);
            self.dentaltid.read_last_names(names)?;
            self.dentaltid.add_candidates_named(names, &any_day, dates, index)?;
        }
        if !unborn.is_empty() {
            let names = self.unborn_names.get_or_insert_with(LastNames::of_unborn);
            self.dentaltid.read_last_names(names)?;
            self.dentaltid.add_candidates_named(names, &unborn, dates, index)?;
        }
        Ok(())
    }

    /// Links or imports a few NanoPix patients no DentalTID patient, link or export holds yet,
    /// reading each by its id instead of reading every page.
    pub(super) fn import_few(
        &mut self,
        ids: &[NanoPixId],
        matcher: Option<(Matcher, i64)>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let mut patients = Vec::with_capacity(ids.len());
        for &id in ids {
            patients.extend(self.nanopix.patient(id)?);
        }
        self.link_or_import(patients, matcher, report)
    }

    /// Links or imports `patients`, matched by `matcher` (which knows DentalTID's patients up to
    /// the id given with it), or else against the DentalTID patients they could match. Imports
    /// that a DentalTID patient saved since matches exactly are decided again, knowing it.
    pub(super) fn link_or_import(
        &mut self,
        patients: Vec<NanoPixPatient>,
        matcher: Option<(Matcher, i64)>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        if patients.is_empty() {
            return Ok(());
        }
        let (mut matcher, matched_up_to) = match matcher {
            Some(matcher) => matcher,
            None => {
                let matched_up_to = self.dentaltid.highest_id()?;
                (self.matcher(&patients)?, matched_up_to)
            }
        };
        let set_aside = self.decide_and_import(&mut matcher, patients, Some(matched_up_to), report)?;
        self.link_held(matcher, None, report)?;
        if self.cancelled() {
            return Ok(());
        }
        for link in self.decide_again(set_aside, report)? {
            self.report_stale_link(&link, report);
        }
        Ok(())
    }

    /// Reads NanoPix page by page and has `matcher` decide the patients the snapshot does not
    /// know. A bulk import is written without the sync's indexes, which are built again at the end.
    pub(super) fn import_unknown_rows(
        &mut self,
        snapshot: &mut Snapshot,
        matcher: Matcher,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let bulk = self.indexed && snapshot.unknown.len() >= BULK_IMPORT;
        if bulk {
            self.dentaltid.drop_own_indexes()?;
            self.indexed = false;
        }
        // The pass needs the unknown ids only as this set from here on.
        let unknown: HashSet<NanoPixId> = std::mem::take(&mut snapshot.unknown).into_iter().collect();
        let matched_up_to = snapshot.dentaltid_extent().0;
        let imported = self.import_pages(unknown, &snapshot.odd_pks, matcher, matched_up_to, report);
        let linked = imported.and_then(|(matcher, set_aside)| {
            snapshot.folders.get_or_insert_with(|| FolderListing::start(self.nanopix.root()));
            self.link_held(matcher, Some(snapshot.dentaltid_version), report).map(|()| set_aside)
        });
        if bulk {
            self.dentaltid.build_own_indexes()?;
            self.indexed = true;
        }
        // Imports a DentalTID patient saved during the pass matches: decided again, knowing it.
        if self.cancelled() {
            return linked.map(drop);
        }
        for link in self.decide_again(linked?, report)? {
            self.report_stale_link(&link, report);
        }
        Ok(())
    }

    /// Reads NanoPix page by page on one thread and decides every patient on a second, while
    /// this one writes the imports of the pages already decided: reading, matching and writing
    /// overlap. Each channel holds one page, so memory stays a few pages whatever the clinic's size.
    /// Each NanoPix id of `unknown` is decided once. The matcher knows DentalTID's patients up
    /// to id `matched_up_to`: an import that one saved since matches exactly is set aside (see
    /// [`without_saved_meanwhile`]). Returns the matcher with the links it holds, and the NanoPix
    /// ids set aside.
    fn import_pages(
        &mut self,
        mut unknown: HashSet<NanoPixId>,
        odd_pks: &HashSet<i64>,
        matcher: Matcher,
        matched_up_to: i64,
        report: &mut ReconcileReport,
    ) -> Result<(Matcher, Vec<NanoPixId>)> {
        let (signals, automatic) = (&*self.signals, self.automatic);
        let stop = move || signals.stop(automatic);
        let (nanopix, dentaltid, bus, clock) = (&mut self.nanopix, &mut self.dentaltid, &self.bus, &self.config.clock);
        let (read, pages) = crossbeam_channel::bounded(1);
        let (decided, imports) = crossbeam_channel::bounded(1);
        let (all_read, matcher, written) = std::thread::scope(|scope| {
            let reader = scope.spawn(move || read_pages(nanopix, (&mut unknown, odd_pks), stop, &read));
            let decider = scope.spawn(move || decide_pages(matcher, clock.as_ref(), &pages, &decided));
            let written = write_pages(dentaltid, (bus, clock.as_ref()), (&imports, matched_up_to), stop, report);
            drop(imports);
            (reader.join(), decider.join(), written)
        });
        let panicked = |_| Error::Internal("reading or matching NanoPix patients panicked".into());
        all_read.map_err(panicked)??;
        let matcher = matcher.map_err(panicked)?;
        written.map(|set_aside| (matcher, set_aside))
    }

    /// Offers `patients` to `matcher` and imports, in one transaction, those it says to import.
    pub(super) fn decide_and_import(
        &mut self,
        matcher: &mut Matcher,
        patients: Vec<NanoPixPatient>,
        matched_up_to: Option<i64>,
        report: &mut ReconcileReport,
    ) -> Result<Vec<NanoPixId>> {
        let mut imports = Vec::with_capacity(patients.len());
        for patient in patients {
            matcher.offer(patient, &mut imports);
        }
        import_all(&mut self.dentaltid, (&self.bus, self.config.clock.now()), imports, matched_up_to, report)
    }
}

/// Imports NanoPix patients as new DentalTID patients, in one transaction, and reports them.
fn import_all(
    dentaltid: &mut DentalTid,
    (bus, now): (&EventBus, NaiveDateTime),
    imports: Vec<Import>,
    matched_up_to: Option<i64>,
    report: &mut ReconcileReport,
) -> Result<Vec<NanoPixId>> {
    let mut importing = dentaltid.importing();
    let mut set_aside = Vec::new();
    let mut page = import_page(imports, now.date());
    if let Some(matched_up_to) = matched_up_to.filter(|_| !page.0.is_empty()) {
        importing = importing.watching_saved_meanwhile(matched_up_to);
        page = without_saved_meanwhile(&mut importing, page, &mut set_aside)?;
    }
    let written = insert_page(&mut importing, now, page)?;
    importing.commit()?;
    report_imported(bus, [written], report);
    Ok(set_aside)
}

/// Writes the pages of imports `pages` brings until it hangs up or `stop` says so. Pages share
/// a transaction until it is due or holds [`MAX_UNREPORTED`] imports, or until no page came by
/// then (so DentalTID's lock never waits on NanoPix); each transaction's patients are reported
/// once it is committed.
fn write_pages(
    dentaltid: &mut DentalTid,
    (bus, clock): (&EventBus, &dyn Clock),
    (pages, matched_up_to): (&Receiver<ImportPage>, i64),
    stop: impl Fn() -> bool,
    report: &mut ReconcileReport,
) -> Result<Vec<NanoPixId>> {
    let mut importing = dentaltid.importing().watching_saved_meanwhile(matched_up_to);
    let (mut written, mut set_aside) = (Vec::new(), Vec::new());
    while !stop() {
        let page = match importing.due() {
            Some(due) if Instant::now() >= due || unreported(&written) >= MAX_UNREPORTED => {
                Err(RecvTimeoutError::Timeout)
            }
            Some(due) => pages.recv_deadline(due),
            None => pages.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match page {
            Ok(imports) => {
                let imports = without_saved_meanwhile(&mut importing, imports, &mut set_aside)?;
                written.push(insert_page(&mut importing, clock.now(), imports)?);
            }
            Err(RecvTimeoutError::Timeout) => {
                importing.commit()?;
                crash_point("imports_committed");
                report_imported(bus, written.drain(..), report);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    importing.commit()?;
    report_imported(bus, written, report);
    Ok(set_aside)
}

/// `imports` less those a DentalTID patient other programs saved since the matching read
/// DentalTID matches exactly (the same person typed into both programs at once); their NanoPix
/// ids go to `set_aside`, to be decided again once the pass knows that patient.
fn without_saved_meanwhile(
    importing: &mut Importing<'_>,
    (rows, duplicates): ImportPage,
    set_aside: &mut Vec<NanoPixId>,
) -> Result<ImportPage> {
    let saved = importing.saved_meanwhile()?;
    if saved.is_empty() {
        return Ok((rows, duplicates));
    }
    let mut kept: ImportPage = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for (row, duplicate) in rows.into_iter().zip(duplicates) {
        let born = BirthDate::of(row.date_of_birth.as_deref()).date();
        if born.is_some_and(|born| saved.contains(&MatchKey::of(&row.first_name, &row.last_name, born))) {
            set_aside.push(row.external_id);
        } else {
            kept.0.push(row);
            kept.1.push(duplicate);
        }
    }
    Ok(kept)
}

/// Imports ready for DentalTID: the rows, and the possible duplicate each may be. The NanoPix
/// patients themselves are dropped once their rows are made.
type ImportPage = (Vec<NewDentalPatient>, Vec<Option<PossibleDuplicate>>);

/// Imports inserted in DentalTID: the rows, the possible duplicate each may be, and their new
/// ids (or why DentalTID refused them).
type Written = (Vec<NewDentalPatient>, Vec<Option<PossibleDuplicate>>, Vec<Result<i64>>);

/// How many imports are waiting for their transaction to commit before they are reported.
fn unreported(written: &[Written]) -> usize {
    written.iter().map(|(rows, _, _)| rows.len()).sum()
}

/// The DentalTID rows of `imports`, with ages counted on `today`.
fn import_page(imports: Vec<Import>, today: NaiveDate) -> ImportPage {
    imports
        .into_iter()
        .map(|import| (NewDentalPatient::from_nanopix(&import.patient, today), import.possible_duplicate))
        .unzip()
}

/// Inserts a page of imports in the open import transaction, synced at `now`.
fn insert_page(importing: &mut Importing<'_>, now: NaiveDateTime, (rows, duplicates): ImportPage) -> Result<Written> {
    let ids = importing.insert(&rows, now)?;
    importing.record_possible_duplicates(&rows, &duplicates, &ids)?;
    Ok((rows, duplicates, ids))
}

/// Reports committed imports, each followed by its `possible_duplicate`, if any; a patient
/// DentalTID refused gets a `sync_error`, and is tried again at the next full reconcile.
fn report_imported(bus: &EventBus, written: impl IntoIterator<Item = Written>, report: &mut ReconcileReport) {
    for (rows, duplicates, ids) in written {
        for ((row, duplicate), patient_id) in rows.into_iter().zip(duplicates).zip(ids) {
            let external_id = row.external_id.to_string();
            let patient_id = match patient_id {
                Ok(patient_id) => patient_id,
                Err(refused) => {
                    report.errors += 1;
                    bus.error(&refused, Some(external_id), None);
                    continue;
                }
            };
            report.imported += 1;
            let unreadable_name = row.first_name.contains(char::REPLACEMENT_CHARACTER)
                || row.last_name.contains(char::REPLACEMENT_CHARACTER);
            bus.emit(EventKind::PatientImported {
                patient_id,
                external_id: external_id.clone(),
                first_name: row.first_name,
                last_name: row.last_name,
            });
            if let Some(duplicate) = duplicate {
                report.possible_duplicates += 1;
                bus.emit(EventKind::PossibleDuplicate {
                    external_id: external_id.clone(),
                    patient_id,
                    reason: duplicate.reason,
                    candidates: duplicate.candidates,
                });
            }
            if unreadable_name {
                report_unreadable_name(bus, external_id, patient_id, report);
            }
        }
    }
}

/// Reports an imported patient whose name NanoPix stored as bytes that are not UTF-8 text (in a
/// Windows code page, say): it was imported with U+FFFD in place of each unreadable letter.
fn report_unreadable_name(bus: &EventBus, external_id: String, patient_id: i64, report: &mut ReconcileReport) {
    report.errors += 1;
    bus.emit(EventKind::SyncError {
        code: "odd_name".into(),
        message: format!(
            "NanoPix patient {external_id} has letters in its name that are not UTF-8 text: imported as \
             DentalTID patient {patient_id} with \u{FFFD} in their place; correct the name in both programs"
        ),
        external_id: Some(external_id),
        patient_id: Some(patient_id),
        path: None,
    });
}

/// Reads NanoPix page by page from the start and sends the patients in `unknown` (but not in a
/// row of `odd_pks`) to `read`, until the last page, `stop` says so, or the receiver hangs up
/// (it failed: it reports why). Each id is taken out of `unknown` as it is sent: a patient
/// NanoPix saved again meanwhile, under a `pk` the reader has yet to reach, is sent once.
fn read_pages(
    nanopix: &mut NanoPix,
    (unknown, odd_pks): (&mut HashSet<NanoPixId>, &HashSet<i64>),
    stop: impl Fn() -> bool,
    read: &Sender<Vec<NanoPixPatient>>,
) -> Result<()> {
    let mut after = None;
    while !stop() {
        let page = nanopix.patients_after(after, PAGE)?;
        let Some(last) = page.last_pk().filter(|&pk| after.is_none_or(|after| pk > after)) else { break };
        after = Some(last);
        let unknown: Vec<NanoPixPatient> =
            page.patients.into_iter().filter(|p| !odd_pks.contains(&p.pk) && unknown.remove(&p.id)).collect();
        if !unknown.is_empty() && read.send(unknown).is_err() {
            break;
        }
    }
    Ok(())
}

/// Offers every page of patients `pages` brings to `matcher` and sends each page's imports to
/// `decided`, as DentalTID rows made on `clock`'s day; returns the matcher with the links it
/// holds.
fn decide_pages(
    mut matcher: Matcher,
    clock: &dyn Clock,
    pages: &Receiver<Vec<NanoPixPatient>>,
    decided: &Sender<ImportPage>,
) -> Matcher {
    for page in pages {
        let mut imports = Vec::with_capacity(page.len());
        for patient in page {
            matcher.offer(patient, &mut imports);
        }
        if !imports.is_empty() && decided.send(import_page(imports, clock.now().date())).is_err() {
            break;
        }
    }
    matcher
}
