//! The snapshot a full reconcile starts from: what both sides hold, read at once (NanoPix's ids
//! and folders on threads of their own, DentalTID's patients, links and journal on the engine's),
//! which NanoPix patients the sync does not know yet, the links DentalTID holds that the sync
//! has not recorded yet, and the odd rows, link rows and folder entries the reading finds.

use chrono::NaiveDateTime;
use crossbeam_channel::Receiver;
use foldhash::{HashMap, HashSet};

use super::{Engine, LINKS_PER_TRANSACTION, PAGE};
use crate::dentaltid::{DentalTid, LinkOrigin, LinkedRows, PatientRef, RecordedLinks, UnreadableLink, other_people};
use crate::events::{EventKind, ReconcileReport};
use crate::matching::Matcher;
use crate::nanopix::{FolderListing, FolderScan, IdRows, OddRow, RowStamp};
use crate::patient::Source;
use crate::{Error, NanoPixId, Result};

/// Reading a NanoPix row by its id costs about as much as reading this many rows page by page.
const ROWS_PER_LOOKUP: usize = 10;

/// What both sides hold, read once at the start of a reconcile, and what follows from it.
pub(super) struct Snapshot {
    pub(super) nanopix_row: Option<RowStamp>,
    pub(super) nanopix_rows: u64,
    pub(super) nanopix: Vec<NanoPixId>,
    /// The `created_datetime` of each NanoPix row that has one.
    pub(super) nanopix_created: HashMap<NanoPixId, NaiveDateTime>,
    /// The NanoPix rows each link was made with.
    pub(super) linked_rows: LinkedRows,
    /// The patient folders, once their listing has started. It starts with the snapshot, unless
    /// no link is recorded yet: a first sync, which usually imports many patients, starts it once
    /// they are written, so it runs while the links are written instead of competing with
    /// building the matcher and with the import.
    pub(super) folders: Option<FolderListing>,
    pub(super) dentaltid: Vec<PatientRef>,
    /// DentalTID's data version just before the snapshot read its patients.
    pub(super) dentaltid_version: i64,
    /// The highest `patients.id` DentalTID had issued just before the snapshot read its
    /// patients: a patient with a higher id was added since.
    dentaltid_issued: i64,
    /// Every link, and the link rows the sync cannot read, which still link what they name.
    pub(super) links: RecordedLinks,
    /// The NanoPix ids the sync does not know yet: neither linked, recorded, nor being exported.
    /// A pass imports or links only these: a row NanoPix saves during the pass is the next one's.
    pub(super) unknown: Vec<NanoPixId>,
    /// The `pk`s of the NanoPix rows read as odd (reported already), such as a second row with
    /// an id an earlier row has: reading pages of patients skips them.
    pub(super) odd_pks: HashSet<i64>,
    /// Whether the unknown are too many to read one by one, so every page of NanoPix is read.
    pub(super) many_unknown: bool,
    /// The matcher to decide the unknown: built when they are many, or when a first sync read
    /// DentalTID into the index anyway.
    pub(super) matcher: Option<Matcher>,
}

impl Snapshot {
    /// DentalTID's highest `patients.id` (or the highest it had issued before, when its last
    /// patients were deleted) and row count when the snapshot was read.
    pub(super) fn dentaltid_extent(&self) -> (i64, u64) {
        let highest = self.dentaltid.iter().map(|p| p.id).max().unwrap_or(0);
        (highest.max(self.dentaltid_issued), self.dentaltid.len() as u64)
    }
}

impl Engine {
    /// Reads both sides at once: NanoPix's ids on a second thread, its folders on a third (see
    /// [`Snapshot::folders`]); DentalTID's patients, links and journal on this one, which then
    /// builds the matcher if many NanoPix patients are unknown.
    pub(super) fn snapshot(&mut self, report: &mut ReconcileReport) -> Result<Snapshot> {
        let first_sync = !self.dentaltid.has_links()?;
        let written = self.exports_on_their_rows()?;
        let folders = (!first_sync).then(|| FolderListing::start(self.nanopix.root()));
        let (nanopix, dentaltid, auto_link) = (&mut self.nanopix, &self.dentaltid, self.config.auto_link);
        let (send_rows, rows) = crossbeam_channel::bounded(1);
        let (ids, snapshot) = std::thread::scope(|scope| {
            // If reading fails, the channel closes and the error is this thread's to report.
            let ids = scope.spawn(move || nanopix.patient_ids(!first_sync).map(|ids| drop(send_rows.send(ids))));
            let snapshot = read_dentaltid(dentaltid, &rows, (first_sync, &written), auto_link);
            (ids.join(), snapshot)
        });
        ids.map_err(|_| Error::Internal("reading NanoPix panicked".into()))??;
        let (mut snapshot, odd_rows) = snapshot?;
        self.report_odd_rows(odd_rows, report);
        self.report_unreadable_birth_dates(&snapshot.dentaltid, report);
        self.report_unreadable_links(&snapshot.links.unreadable, report);
        snapshot.folders = folders;
        Ok(snapshot)
    }

    /// The patient folders of `snapshot`, listed if their listing has not started yet; reports
    /// the odd names found among them.
    pub(super) fn folders(&mut self, snapshot: &mut Snapshot, report: &mut ReconcileReport) -> Result<FolderScan> {
        let listing = snapshot.folders.take().unwrap_or_else(|| FolderListing::start(self.nanopix.root()));
        let folders = listing.finish()?;
        for name in &folders.odd_names {
            self.report_odd_folder(name, report);
        }
        Ok(folders)
    }

    /// Records link rows for patients DentalTID already links, and adds them to the snapshot's
    /// links, so this pass checks them too (a NanoPix patient gone already is reported now);
    /// returns their NanoPix ids.
    pub(super) fn adopt_existing_links(&mut self, snapshot: &mut Snapshot) -> Result<Vec<NanoPixId>> {
        let recorded: HashSet<i64> = snapshot.links.patient_ids().collect();
        let adopt: Vec<(i64, NanoPixId, LinkOrigin)> = snapshot
            .dentaltid
            .iter()
            .filter(|p| !recorded.contains(&p.id))
            .filter_map(|p| {
                let id = p.external_id?;
                let origin = if p.source == Source::NanoPix { LinkOrigin::Imported } else { LinkOrigin::Matched };
                Some((p.id, id, origin))
            })
            .collect();
        for chunk in adopt.chunks(LINKS_PER_TRANSACTION) {
            self.dentaltid.adopt_links(chunk, self.config.clock.now())?;
        }
        if !adopt.is_empty() {
            snapshot.links = self.dentaltid.links()?;
        }
        Ok(adopt.into_iter().map(|(_, id, _)| id).collect())
    }

    pub(super) fn report_odd_rows(&mut self, odd_rows: Vec<OddRow>, report: &mut ReconcileReport) {
        for odd in odd_rows {
            let message = match odd.pk {
                Some(pk) => format!("NanoPix patient row pk {pk} skipped: {}", odd.problem),
                None => format!("NanoPix patient row skipped: {}", odd.problem),
            };
            let database = Some(self.nanopix.database().display().to_string());
            self.report_odd("odd_row", message, (odd.raw_id, None, database), report);
        }
    }

    /// Reports the DentalTID patients whose birth date cannot be read: matching leaves them out,
    /// so NanoPix's patient of the same person is imported apart, and an export writes none.
    fn report_unreadable_birth_dates(&mut self, patients: &[PatientRef], report: &mut ReconcileReport) {
        let database = self.config.dentaltid_db.display().to_string();
        for patient in patients.iter().filter(|patient| patient.birth_date_unreadable) {
            let message = format!(
                "DentalTID patient {} left out of matching: its dateOfBirth is no date, so NanoPix's patient of the \
                 same person is imported apart, and an export writes no birth date; correct it in DentalTID",
                patient.id
            );
            self.report_odd("odd_row", message, (None, Some(patient.id), Some(database.clone())), report);
        }
    }

    /// Reports the link rows the sync cannot read (see [`UnreadableLink`]), which it leaves as
    /// they are and takes for links, so support staff can correct them.
    fn report_unreadable_links(&mut self, rows: &[UnreadableLink], report: &mut ReconcileReport) {
        let database = self.config.dentaltid_db.display().to_string();
        for row in rows {
            let named = |text: Option<String>| text.unwrap_or_else(|| "(none)".to_owned());
            let message = format!(
                "the sync's link row of DentalTID patient {} to NanoPix patient {} cannot be read (state {}), as a \
                 newer version of the sync or an edit may leave it: left as it is and taken for a link, so the NanoPix \
                 patient is not imported again, the DentalTID patient neither linked again nor exported, and no delete \
                 is asked for",
                named(row.patient_id.map(|id| id.to_string())),
                named(row.external_id.clone()),
                named(row.state.as_ref().map(|state| format!("'{state}'"))),
            );
            let names = (row.external_id.clone(), row.patient_id, Some(database.clone()));
            self.report_odd("odd_row", message, names, report);
        }
    }

    fn report_odd_folder(&mut self, name: &std::ffi::OsStr, report: &mut ReconcileReport) {
        let path = self.nanopix.root().join(name);
        let message = format!("{} is not a NanoPix patient folder: skipped", path.display());
        self.report_odd("odd_folder", message, (None, None, Some(path.display().to_string())), report);
    }

    /// Reports an odd row or folder entry, unless automatic work reported it already (see
    /// [`super::odd_findings::OddFindings`]).
    fn report_odd(
        &mut self,
        code: &str,
        message: String,
        (external_id, patient_id, path): (Option<String>, Option<i64>, Option<String>),
        report: &mut ReconcileReport,
    ) {
        // The message names a row by its `pk`, which SQLite gives again once the last row is gone:
        // the row's id tells another odd row there from the one reported.
        let finding = format!("{message}\n{}", external_id.as_deref().unwrap_or_default());
        if self.odd_findings.note(&finding, self.automatic) {
            report.errors += 1;
            let code = code.into();
            self.bus.emit(EventKind::SyncError { code, message, external_id, patient_id, path });
        }
    }
}

/// DentalTID's side of a snapshot, completed once `rows` brings NanoPix's: what the sync
/// knows, what it does not, and the matcher when the unknown are many, which counts as linked
/// the patients `written` names (see [`Engine::exports_on_their_rows`]). Also returns NanoPix's
/// odd rows, to report.
///
/// A first sync usually imports many patients, so it reads DentalTID's patients once, into
/// their references and the matching index together, before knowing whether it needs the index.
fn read_dentaltid(
    dentaltid: &DentalTid,
    rows: &Receiver<IdRows>,
    (first_sync, written): (bool, &[i64]),
    auto_link: bool,
) -> Result<(Snapshot, Vec<OddRow>)> {
    let (dentaltid_version, dentaltid_issued) = (dentaltid.data_version()?, dentaltid.highest_issued_id()?);
    let (patients, index) = if first_sync {
        let (patients, index) = dentaltid.index_all_candidates()?;
        (patients, Some(index))
    } else {
        (dentaltid.patient_refs()?, None)
    };
    let (links, pending, linked_rows) = (dentaltid.links()?, dentaltid.pending_exports()?, dentaltid.linked_rows()?);
    let mut known: HashSet<NanoPixId> = patients.iter().filter_map(|p| p.external_id).collect();
    known.extend(links.nanopix_ids());
    known.extend(pending.iter().map(|p| p.external_id));
    let rows = rows.recv().map_err(|_| Error::Internal("NanoPix's ids were not read".into()))?;
    let nanopix_row = rows.last_row();
    let nanopix_rows = (rows.ids.len() + rows.odd_rows.len()) as u64;
    let odd_pks = rows.odd_rows.iter().filter_map(|odd| odd.pk).collect();
    let nanopix: Vec<NanoPixId> = rows.ids.into_iter().map(|(_, id)| id).collect();
    // Another person under a linked id is new to the sync too.
    let others = other_people(&links, &linked_rows, &rows.created, (&patients, &pending));
    let unknown: Vec<NanoPixId> =
        nanopix.iter().filter(|id| !known.contains(id) || others.contains(id)).copied().collect();
    let many_unknown = !unknown.is_empty() && !is_few(unknown.len(), nanopix.len());
    let index = match index {
        None if many_unknown => Some(dentaltid.index_all_candidates()?.1),
        index => index.filter(|_| !unknown.is_empty()),
    };
    // A patient whose export waits in the journal is not linked: a link to her is left for the
    // export to end (see [`Engine::without_pending_exports`]), unless it wrote her row already.
    let linked: HashSet<i64> = links.patient_ids().chain(written.iter().copied()).collect();
    let matcher = index.map(|index| Matcher::new(index, &linked, auto_link));
    let snapshot = Snapshot {
        nanopix_row,
        nanopix_rows,
        nanopix,
        nanopix_created: rows.created,
        linked_rows,
        folders: None,
        dentaltid: patients,
        dentaltid_version,
        dentaltid_issued,
        links,
        unknown,
        odd_pks,
        many_unknown,
        matcher,
    };
    Ok((snapshot, rows.odd_rows))
}

/// Whether `unknown` NanoPix patients among `rows` are few enough to read one by one by id
/// rather than reading every page.
fn is_few(unknown: usize, rows: usize) -> bool {
    unknown < PAGE as usize && unknown.saturating_mul(ROWS_PER_LOOKUP) < rows
}
