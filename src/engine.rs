//! The engine: reconcile, import, export and repair, run on the one thread that owns both
//! database connections. A reconcile lends the NanoPix connection to scoped helper threads, so
//! NanoPix is read (and matched) while DentalTID is read (or written) on the two cores.
//!
//! Decisions are made on plain values (see [`crate::matching`]); SQL and file I/O stay in
//! [`crate::dentaltid`] and [`crate::nanopix`]. The engine never deletes a patient on its own.
//! Exports, the ids they get and their repair are in [`exports`].

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{NaiveDate, NaiveDateTime};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use foldhash::{HashMap, HashSet};

use crate::dentaltid::{
    DentalTid, ImportedUnder, Importing, LastNames, Link, LinkOrigin, LinkOutcome, LinkState, LinkedRows, PatientRef,
    is_another_person, other_people,
};
use crate::events::{EventBus, EventKind, ReconcileReport};
use crate::matching::{DentalIndex, Import, MatchKey, MatchedLink, Matcher, PossibleDuplicate};
use crate::nanopix::{FolderListing, FolderScan, IdRows, NanoPix, OddRow, RowStamp};
use crate::patient::{BirthDate, NanoPixPatient, NewDentalPatient, Patient, PatientFilter, Source};
use crate::sync::SourceInfo;
use crate::{Clock, Config, DuplicateToReview, Error, NanoPixId, Result};

mod exports;
mod odd_findings;

use odd_findings::OddFindings;

/// Most links one transaction writes or changes, so DentalTID never waits long to save a patient.
const LINKS_PER_TRANSACTION: usize = 2_000;

/// How many NanoPix rows one read takes.
const PAGE: u32 = 5_000;

/// Most imports a first sync holds, written but not committed, before it commits them: they
/// wait in memory to be reported.
const MAX_UNREPORTED: usize = 2 * PAGE as usize;

/// Reading a NanoPix row by its id costs about as much as reading this many rows page by page.
const ROWS_PER_LOOKUP: usize = 10;

/// From how many patients an import is a bulk import, written without the sync's own indexes,
/// which are built again at the end.
const BULK_IMPORT: usize = 10_000;

/// Up to how many distinct birth dates the candidates for matching are read by date; beyond it
/// reading every DentalTID patient is cheaper.
const MAX_CANDIDATE_DATES: usize = 500;

/// Flags the handle sets from other threads, read by the engine between steps.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// The handle is closing: stop as soon as the current step is done.
    pub closing: AtomicBool,
    /// Live Sync is on; cleared at once when the host switches it off, so automatic work stops.
    pub live: AtomicBool,
}

/// Owns both sides and does the work of every command.
#[derive(Debug)]
pub(crate) struct Engine {
    config: Config,
    nanopix: NanoPix,
    dentaltid: DentalTid,
    bus: Arc<EventBus>,
    signals: Arc<Signals>,
    automatic: bool,
    cursor: Option<LiveCursor>,
    /// NanoPix's data version when the sync last began reading its rows (a reconcile or a live
    /// pass). An export writes its row only while it is still so: a patient another program
    /// saved in NanoPix since may be the same person, whom a pass must read, and link, first.
    nanopix_read: Option<i64>,
    /// Whether DentalTID holds the sync's indexes, which live passes need.
    indexed: bool,
    /// For each run of searches for past ids (see [`exports::PastRun`]), the second the run
    /// started at and the first second its searches have not found taken: every second from the
    /// one up to the other is taken (by the ids given, or found in use). The run's next search
    /// looks from there when it starts between the two, so `export_existing`, which takes
    /// patients in the order of their creation, does not probe again every id the earlier ones
    /// took or found taken.
    past_probed: [Option<(NaiveDateTime, NaiveDateTime)>; 2],
    /// The Live Sync setting as last read or stored: only this handle writes it, so it is what
    /// automatic work follows when a switch can be neither stored nor read back.
    live_stored: bool,
    /// Whether the last call switched Live Sync off (or found it off): the live loop stops the
    /// watcher before the call answers.
    switched_off: bool,
    /// Where the next live pass takes up ending interrupted exports, in journal order.
    next_repair: usize,
    /// The links marked missing whose NanoPix row is there but not their folder, as the last full
    /// reconcile (or a live pass that found the row back) left them: a live pass restores those
    /// whose folder is back.
    missing_folders: Vec<Link>,
    /// Whether the current automatic pass reported work a database refused while locked past the
    /// busy timeout (an export, say), as the database that did: the live loop tries the pass
    /// again soon, as a failed one.
    refused_while_busy: Option<PathBuf>,
    /// Delete requests written but not announced yet, as patient and NanoPix id: the work that
    /// found the deletion may still give the NanoPix patient back to a patient added again (see
    /// [`Engine::announce_delete_requests`]). DentalTID notes them too, so that a crash before
    /// they are announced does not lose them: they are read back at `open`. They are announced
    /// at the end of the next reconcile, live pass or export call that succeeds, never by other
    /// calls: work that fails may not have given NanoPix patients back yet.
    unannounced_deletes: Vec<(i64, String)>,
    /// Whether an export call is under way: the delete requests wait until it ends.
    holding_delete_requests: bool,
    /// DentalTID's patients by last name, once a pass needed them; dropped by each full
    /// reconcile, so that the next read finds renamed patients under their new names.
    last_names: Option<LastNames>,
    /// The odd rows and folder entries reported, so that automatic work reports each once.
    odd_findings: OddFindings,
    /// The linked twins the last export to finish kept on the review list, with its patient:
    /// what the export reports.
    kept_twins: Option<(i64, PossibleDuplicate)>,
    /// The patient of the export under way, with the NanoPix id its journal row holds, as this
    /// handle last wrote or read it: what a failed export reports, without reading the journal
    /// again (a database locked past the busy timeout would refuse that read too).
    journaled: Option<(i64, NanoPixId)>,
    /// The DentalTID patients whose link to the NanoPix patient the matching gave them DentalTID
    /// refused since the last full reconcile began, with that NanoPix patient's id: an export of
    /// one would give NanoPix the person twice, so exports leave them alone until a link is written.
    refused_links: HashMap<i64, NanoPixId>,
    /// Whether the current pass left a NanoPix patient undecided because the matching links it
    /// to a patient whose export waits in the journal (see [`Engine::without_pending_exports`]):
    /// the pass leaves no cursor, so the next pass reconciles fully and decides it again. Each
    /// pass starts from none.
    left_for_exports: bool,
}

/// How far the last pass read each side, so a live pass reads only what is new.
#[derive(Debug, Clone)]
struct LiveCursor {
    /// The NanoPix row with the highest `Patient.pk` read, as it was read (`None` without one):
    /// another row at its `pk` means rows changed behind the cursor (see [`RowStamp`]).
    nanopix_row: Option<RowStamp>,
    /// How many NanoPix rows there were up to that `pk`.
    nanopix_rows: u64,
    /// NanoPix's data version before the pass read it: while it stays the same, nobody else
    /// wrote to NanoPix, so it holds no patient the sync has not seen.
    nanopix_version: i64,
    /// DentalTID's highest `patients.id` and row count, read together.
    dentaltid: (i64, u64),
    /// The highest DentalTID patient id whose link a pass has checked: those a full reconcile
    /// found in DentalTID's links, and those up to the extent of each pass since (a patient of
    /// theirs deleted later is counted by the extent). A link or import past it that lost its
    /// patient was written by a pass the patient was deleted during.
    links_checked_up_to: i64,
    /// DentalTID's data version before the pass read it: while it stays the same, nobody else
    /// wrote to DentalTID, so no patient was deleted there.
    dentaltid_version: i64,
}

/// What both sides hold, read once at the start of a reconcile, and what follows from it.
struct Snapshot {
    nanopix_row: Option<RowStamp>,
    nanopix_rows: u64,
    nanopix: Vec<NanoPixId>,
    /// The `created_datetime` of each NanoPix row that has one.
    nanopix_created: HashMap<NanoPixId, NaiveDateTime>,
    /// The NanoPix rows each link was made with.
    linked_rows: LinkedRows,
    /// The patient folders, once their listing has started. It starts with the snapshot, unless
    /// no link is recorded yet: a first sync, which usually imports many patients, starts it once
    /// they are written, so it runs while the links are written instead of competing with
    /// building the matcher and with the import.
    folders: Option<FolderListing>,
    dentaltid: Vec<PatientRef>,
    /// DentalTID's data version just before the snapshot read its patients.
    dentaltid_version: i64,
    /// The highest `patients.id` DentalTID had issued just before the snapshot read its
    /// patients: a patient with a higher id was added since.
    dentaltid_issued: i64,
    links: Vec<Link>,
    /// The NanoPix ids the sync does not know yet: neither linked, recorded, nor being exported.
    /// A pass imports or links only these: a row NanoPix saves during the pass is the next one's.
    unknown: Vec<NanoPixId>,
    /// The `pk`s of the NanoPix rows read as odd (reported already), such as a second row with
    /// an id an earlier row has: reading pages of patients skips them.
    odd_pks: HashSet<i64>,
    /// Whether the unknown are too many to read one by one, so every page of NanoPix is read.
    many_unknown: bool,
    /// The matcher to decide the unknown: built when they are many, or when a first sync read
    /// DentalTID into the index anyway.
    matcher: Option<Matcher>,
}

impl LiveCursor {
    /// The highest NanoPix `Patient.pk` read (0 when there was no row).
    fn nanopix_pk(&self) -> i64 {
        self.nanopix_row.as_ref().map_or(0, |row| row.pk)
    }
}

impl Snapshot {
    /// DentalTID's highest `patients.id` (or the highest it had issued before, when its last
    /// patients were deleted) and row count when the snapshot was read.
    fn dentaltid_extent(&self) -> (i64, u64) {
        let highest = self.dentaltid.iter().map(|p| p.id).max().unwrap_or(0);
        (highest.max(self.dentaltid_issued), self.dentaltid.len() as u64)
    }
}

impl Signals {
    /// Whether work should stop: the handle is closing, or it is automatic work and Live Sync
    /// was switched off.
    fn stop(&self, automatic: bool) -> bool {
        self.closing.load(Ordering::Relaxed) || (automatic && !self.live.load(Ordering::Relaxed))
    }
}

impl Engine {
    /// Opens and checks both sides, migrates DentalTID, and repairs interrupted exports.
    pub fn open(config: Config, bus: Arc<EventBus>, signals: Arc<Signals>) -> Result<Self> {
        config.check()?;
        let config = config.anchored()?;
        let nanopix = NanoPix::open(&config.nanopix_root, config.busy_timeout)?;
        let dentaltid = DentalTid::open(&config.dentaltid_db, config.busy_timeout)?;
        let live_stored = dentaltid.live_sync()?;
        signals.live.store(live_stored, Ordering::Relaxed);
        let indexed = dentaltid.has_own_indexes()?;
        let unannounced_deletes = dentaltid.unannounced_deletes()?;
        let mut engine = Self {
            config,
            nanopix,
            dentaltid,
            bus,
            signals,
            automatic: false,
            cursor: None,
            nanopix_read: None,
            indexed,
            past_probed: [None; 2],
            live_stored,
            switched_off: false,
            next_repair: 0,
            missing_folders: Vec::new(),
            refused_while_busy: None,
            unannounced_deletes,
            holding_delete_requests: false,
            last_names: None,
            odd_findings: OddFindings::default(),
            kept_twins: None,
            journaled: None,
            refused_links: HashMap::default(),
            left_for_exports: false,
        };
        engine.repair_exports(&[], &mut ReconcileReport::default())?;
        Ok(engine)
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The event bus the engine reports to.
    pub fn bus(&self) -> Arc<EventBus> {
        self.bus.clone()
    }

    /// Imports or links the unknown NanoPix patients of `snapshot`, then checks every link
    /// against NanoPix's rows and folders; `linked_now` are the patients this reconcile links.
    fn import_and_check_links(
        &mut self,
        snapshot: &mut Snapshot,
        linked_now: &[NanoPixId],
        report: &mut ReconcileReport,
    ) -> Result<()> {
        match snapshot.matcher.take() {
            Some(matcher) if snapshot.many_unknown => self.import_unknown_rows(snapshot, matcher, report)?,
            matcher => {
                let matched_up_to = snapshot.dentaltid_extent().0;
                self.import_few(&snapshot.unknown, matcher.map(|matcher| (matcher, matched_up_to)), report)?
            }
        }
        crash_point("imported");
        let folders = self.folders(snapshot, report)?;
        self.check_links(snapshot, &folders, linked_now, report)
    }

    /// Full reconcile ("Sync Now"): repair, import, link, report removals, export.
    ///
    /// NanoPix is opened afresh first: its folder may have come back as other files (a drive
    /// plugged in again, a share mounted again, a restore), which the old connection cannot see.
    pub fn reconcile(&mut self) -> Result<ReconcileReport> {
        self.reconcile_after(ReconcileReport::default(), &[])
    }

    /// [`Engine::reconcile`], going on from the work `begun` reports: a live pass's, whose
    /// repairs of the exports of patients `tried` were just tried and are not tried again.
    fn reconcile_after(&mut self, begun: ReconcileReport, tried: &[i64]) -> Result<ReconcileReport> {
        if self.cancelled() {
            // Rows behind the cursor may wait for this reconcile: the next pass reconciles fully.
            self.cursor = None;
            let report = ReconcileReport { stopped_early: true, ..begun };
            self.bus.emit(EventKind::Reconciled(report.clone()));
            return Ok(report);
        }
        let started = Instant::now();
        let mut report = self.reconcile_fully(begun, tried)?;
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        report.stopped_early = self.cancelled();
        if !report.stopped_early {
            self.announce_delete_requests();
        }
        self.bus.emit(EventKind::Reconciled(report.clone()));
        Ok(report)
    }

    /// The work of [`Engine::reconcile`], without its announcements. A reconcile that fails or
    /// stops early announces no delete request: it may not have given NanoPix patients back yet.
    /// It goes on from `begun`, and leaves alone the exports of patients `tried` (see
    /// [`Engine::reconcile_after`]).
    fn reconcile_fully(&mut self, begun: ReconcileReport, tried: &[i64]) -> Result<ReconcileReport> {
        // The cursor described the file opened before; only a whole reconcile gives a new one.
        // Dropped first, so that a reconcile failing even to open NanoPix (locked, gone for a
        // moment) is tried again as a full one, not as a live pass that never looks at folders.
        self.cursor = None;
        self.nanopix = NanoPix::open(&self.config.nanopix_root, self.config.busy_timeout)?;
        self.ready_connections()?;
        self.last_names = None;
        self.odd_findings.full_reconcile_began();
        // The unknown NanoPix patients are all decided again, and their links tried again.
        self.refused_links.clear();
        self.left_for_exports = false;
        let (nanopix_version, dentaltid_version) = (self.nanopix.data_version()?, self.dentaltid.data_version()?);
        self.nanopix_read = Some(nanopix_version);
        let mut report = begun;
        // Left by a pass that crashed or failed before it recorded the folders it awaits.
        let unsettled = self.dentaltid.unsettled_links()?;
        self.repair_exports(tried, &mut report)?;
        let mut snapshot = self.snapshot(&mut report)?;
        let adopted = self.adopt_existing_links(&mut snapshot)?;
        let unsettled = snapshot.links.iter().filter(|link| unsettled.contains(link.patient_id));
        let unsettled = unsettled.filter_map(|link| NanoPixId::parse(&link.external_id).ok());
        let linked_now: Vec<NanoPixId> = snapshot.unknown.iter().copied().chain(adopted).chain(unsettled).collect();
        if let Err(error) = self.import_and_check_links(&mut snapshot, &linked_now, &mut report) {
            // What was imported before the error still waits for its folder, not a removal. The
            // error to report is the first one.
            let _ = self.await_folders(&linked_now);
            return Err(error);
        }
        if self.dentaltid.live_sync()? {
            self.export_new(&mut report)?;
            // Built after the imports, so a first sync builds them once, on every row.
            if !self.cancelled() {
                self.ensure_indexes()?;
            }
        }
        // A pass stopped early, or that left NanoPix patients for exports to end, leaves no
        // cursor, so the next live pass reconciles fully. The DentalTID extent is the snapshot's
        // moved past the rows added since, so a patient deleted during the pass is still found
        // gone by the next live pass.
        self.cursor = match self.cancelled() || self.left_for_exports {
            true => None,
            false => {
                let extent = snapshot.dentaltid_extent();
                let checked = snapshot.links.iter().map(|link| link.patient_id).fold(extent.0, i64::max);
                let nanopix_row = self.with_creation_time(snapshot.nanopix_row.take())?;
                self.dentaltid_cursor_after(extent, checked)?.map(|(dentaltid, links_checked_up_to)| LiveCursor {
                    nanopix_row,
                    nanopix_rows: snapshot.nanopix_rows,
                    nanopix_version,
                    dentaltid,
                    links_checked_up_to,
                    dentaltid_version,
                })
            }
        };
        if !self.cancelled() {
            self.odd_findings.full_reconcile_ended();
        }
        Ok(report)
    }

    /// Whether Live Sync is on, as the DentalTID file the handle opened says: fails once that
    /// file was replaced (see [`DentalTid::check_still_open_file`]), as every call then does.
    pub fn live_sync(&self) -> Result<bool> {
        self.dentaltid.check_still_open_file()?;
        self.live_sync_setting()
    }

    /// The Live Sync setting as the open connection reads it, also from a file replaced since:
    /// what automatic work follows. Its passes report a replaced file, once while it stays so.
    pub fn live_sync_setting(&self) -> Result<bool> {
        self.dentaltid.live_sync()
    }

    /// The Live Sync setting as this handle last stored or read it, for when it cannot be read.
    pub fn live_sync_stored(&self) -> bool {
        self.live_stored
    }

    /// Switches Live Sync and says so with a `live_sync_changed` event when it changed. When
    /// the setting cannot be stored, automatic work follows the setting still stored.
    pub fn set_live_sync(&mut self, enabled: bool) -> Result<()> {
        self.signals.live.store(enabled, Ordering::Relaxed);
        let switched = self.switch_live_sync(enabled);
        if switched.is_err() {
            self.live_stored = self.dentaltid.live_sync().unwrap_or(self.live_stored);
            self.signals.live.store(self.live_stored, Ordering::Relaxed);
        }
        self.switched_off = !enabled && switched.is_ok();
        switched
    }

    /// Whether the last call switched Live Sync off, or found it off (see
    /// [`Engine::set_live_sync`]); clears it.
    pub fn take_switched_off(&mut self) -> bool {
        std::mem::take(&mut self.switched_off)
    }

    /// Stores the switch. Switching off keeps the patients whose export is still due, since
    /// switching on again moves the export cursor past every patient.
    fn switch_live_sync(&mut self, enabled: bool) -> Result<()> {
        self.ready_connections()?;
        self.live_stored = self.dentaltid.live_sync()?;
        if self.live_stored != enabled {
            let due: Vec<i64> =
                if enabled { Vec::new() } else { self.due_after_cursor()?.iter().map(|p| p.id).collect() };
            self.dentaltid.set_live_sync(enabled, &due)?;
            self.live_stored = enabled;
            self.bus.emit(EventKind::LiveSyncChanged { enabled });
        }
        Ok(())
    }

    /// New work after a hint from the watcher: reads only NanoPix rows and DentalTID patients
    /// past the cursor. `NanoPix.db3` replaced by another file, a row removed on either side, a
    /// NanoPix row added below the cursor (SQLite picks a random `pk` once the largest is taken),
    /// another id in NanoPix's row at the cursor (NanoPix gave a deleted last row's `pk` to a new
    /// patient), or a whole page of new NanoPix rows (a bulk import, which a full reconcile
    /// writes in short transactions) leads to a full reconcile instead.
    pub fn sync_changes(&mut self) -> Result<ReconcileReport> {
        self.ready_connections()?;
        self.ensure_indexes()?;
        let Some(cursor) = self.cursor.clone().filter(|_| !self.nanopix.replaced()) else { return self.reconcile() };
        // A pass that failed after writing links left them unsettled: a full reconcile settles them.
        if self.dentaltid.has_unsettled_links()? {
            return self.reconcile();
        }
        let (nanopix_version, dentaltid_version) = (self.nanopix.data_version()?, self.dentaltid.data_version()?);
        self.nanopix_read = Some(nanopix_version);
        self.left_for_exports = false;
        let mut report = ReconcileReport::default();
        // A NanoPix row at an id a repair left may be behind the cursor: skipped as an export's.
        let repairs = self.repair_some_exports(&mut report)?;
        if repairs.left_a_reserved_id {
            return self.reconcile_after(report, &repairs.tried);
        }
        let rows = self.nanopix.patients_after(Some(cursor.nanopix_pk()), PAGE)?;
        let read = (rows.patients.len() + rows.odd_rows.len()) as u64;
        if read >= u64::from(PAGE)
            || self.nanopix.patient_count()? != cursor.nanopix_rows + read
            || self.rows_changed_behind(&cursor)?
            || self.dentaltid_lost_rows(&cursor)?
        {
            return self.reconcile_after(report, &repairs.tried);
        }
        let nanopix_row = match rows.last_row() {
            Some(row) if row.pk > cursor.nanopix_pk() => Some(row),
            _ => cursor.nanopix_row,
        };
        // A deleted patient's NanoPix patient given back asks for a delete, and another person
        // under a linked id is imported apart: a full reconcile's to decide.
        if self.gives_back_a_deleted_patient(&rows.patients)? || self.holds_another_person(&rows.patients)? {
            return self.reconcile_after(report, &repairs.tried);
        }
        // The same person as a patient whose export waits its turn: a full reconcile tries it.
        if self.saves_a_patient_left_to_repair(&rows.patients, &repairs.untried)? {
            return self.reconcile_after(report, &repairs.tried);
        }
        self.report_odd_rows(rows.odd_rows, &mut report);
        self.restore_links(&rows.patients, &mut report)?;
        let unknown = self.unknown(rows.patients)?;
        let new_ids: Vec<NanoPixId> = unknown.iter().map(|patient| patient.id).collect();
        self.link_or_import(unknown, None, &mut report)?;
        self.await_folders(&new_ids)?;
        self.restore_put_back_folders(&mut report)?;
        if self.dentaltid.live_sync()? {
            self.export_new(&mut report)?;
        }
        if self.cancelled() {
            self.cursor = None;
            report.stopped_early = true;
            return Ok(report);
        }
        // NanoPix patients left for exports to end are behind the rows read: a full reconcile's.
        if self.left_for_exports {
            self.cursor = None;
            return Ok(report);
        }
        let dentaltid = self.dentaltid_cursor_after(cursor.dentaltid, cursor.links_checked_up_to)?;
        self.cursor = dentaltid.map(|(dentaltid, links_checked_up_to)| LiveCursor {
            nanopix_row,
            nanopix_rows: cursor.nanopix_rows + read,
            nanopix_version,
            dentaltid,
            links_checked_up_to,
            dentaltid_version,
        });
        Ok(report)
    }

    /// Readies both connections for work: fails when DentalTID's database file was replaced
    /// under this handle (see [`DentalTid::check_still_open_file`]); connects to `NanoPix.db3`,
    /// and to DentalTID's database, again when the connection could only read it and the file is
    /// writable now. The live cursor goes with the old connection: its data versions mean
    /// nothing to the new one, so the next pass reconciles fully.
    fn ready_connections(&mut self) -> Result<()> {
        self.dentaltid.check_still_open_file()?;
        let nanopix = self.nanopix.reconnect_if_read_only()?;
        if nanopix {
            self.nanopix_read = None;
        }
        if self.dentaltid.reconnect_if_read_only(self.config.busy_timeout)? || nanopix {
            self.cursor = None;
        }
        Ok(())
    }

    /// Moves the live cursor's DentalTID extent past the rows added since, after an export made
    /// outside a pass: a patient exported then deleted is then found gone by the next pass or
    /// export, whose catch-up counts the rows up to the extent. When the rows cannot be counted,
    /// the cursor goes, so the next pass reconciles fully; the export's own outcome stands.
    fn extend_cursor_past_exports(&mut self) {
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

    /// Adds the indexes live passes, exports and delete requests need, once: at the end of the
    /// first full reconcile with Live Sync on (the live loop starts with one), or before a live
    /// pass, an export or the announcement of delete requests that finds them missing.
    fn ensure_indexes(&mut self) -> Result<()> {
        if !self.indexed {
            self.dentaltid.ensure_own_indexes()?;
            self.indexed = true;
        }
        Ok(())
    }

    /// `row`, read by a snapshot that read no creation times (a first sync), with its creation
    /// time read now, while the row at its `pk` still has its id.
    fn with_creation_time(&self, row: Option<RowStamp>) -> Result<Option<RowStamp>> {
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
    fn dentaltid_lost_rows(&self, cursor: &LiveCursor) -> Result<bool> {
        let (max_id, rows) = cursor.dentaltid;
        Ok(self.dentaltid.rows_up_to(max_id)? < rows)
    }

    /// The new NanoPix patients that no DentalTID patient holds, no export in flight reserved
    /// and no recorded link (a link row or an import batch) names.
    fn unknown(&self, patients: Vec<NanoPixPatient>) -> Result<Vec<NanoPixPatient>> {
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
        Ok(unheld.into_iter().filter(|patient| !recorded.contains(&patient.id)).collect())
    }

    /// A matcher over the DentalTID patients the NanoPix patients `unknown` could match: those
    /// born on their birth dates, or all of them when a NanoPix birth date is missing, there are
    /// many dates, or there is no index to find them by. A patient whose export waits in the
    /// journal counts as unlinked, so a link to her is left for the export to end (see
    /// [`Engine::without_pending_exports`]), unless the export wrote her NanoPix row already
    /// (see [`Engine::exports_on_their_rows`]).
    fn matcher(&mut self, unknown: &[NanoPixPatient]) -> Result<Matcher> {
        let mut index = DentalIndex::default();
        let dates: Option<HashSet<_>> = unknown.iter().map(|p| p.birth_date).collect();
        match dates {
            Some(dates) if self.indexed && dates.len() <= MAX_CANDIDATE_DATES => {
                self.dentaltid.add_candidates_born_on(&dates.iter().copied().collect::<Vec<_>>(), &mut index)?;
                self.add_candidates_of_doubtful_birth_dates(unknown, &dates, &mut index)?;
            }
            _ => self.dentaltid.add_all_candidates(&mut index)?,
        }
        let written = self.exports_on_their_rows()?;
        self.matcher_over(index, written)
    }

    /// A matcher over `index`, counting as linked the patients of the links the sync recorded
    /// (DentalTID may have cleared their `external_id`) and `also_linked`.
    fn matcher_over(&self, index: DentalIndex, also_linked: impl IntoIterator<Item = i64>) -> Result<Matcher> {
        let mut linked = self.dentaltid.linked_patients(&index.unlinked_ids())?;
        linked.extend(also_linked);
        Ok(Matcher::new(index, &linked, self.config.auto_link))
    }

    /// Adds to `index` the patients whose last name is the last or first name (the names
    /// swapped) of one of `unknown` whose birth date may be one nobody typed (see
    /// [`NanoPixPatient::born_on_registration_day`]), born on a day not among `dates`: such a
    /// NanoPix patient is compared with every patient of its names.
    fn add_candidates_of_doubtful_birth_dates(
        &mut self,
        unknown: &[NanoPixPatient],
        dates: &HashSet<NaiveDate>,
        index: &mut DentalIndex,
    ) -> Result<()> {
        let doubtful = unknown.iter().filter(|p| p.born_on_registration_day());
        let wanted: HashSet<String> = doubtful
            .flat_map(|p| [&p.last_name, &p.first_name])
            .map(|name| crate::matching::normalise_name(name))
            .filter(|name| !name.is_empty())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let names = self.last_names.get_or_insert_with(LastNames::default);
        self.dentaltid.read_last_names(names)?;
        self.dentaltid.add_candidates_named(names, &wanted, dates, index)
    }

    /// Deletes a NanoPix patient's row and empty folder once DentalTID asked for it: a
    /// `delete_requested` was sent and no DentalTID patient holds the id again. The live cursor is dropped: NanoPix may give the deleted row's `pk` to its next patient,
    /// which a read past the cursor would miss, so the next live pass reconciles fully.
    pub fn delete_in_nanopix(&mut self, external_id: &str) -> Result<()> {
        let id = NanoPixId::parse(external_id)?;
        // A NanoPix.db3 replaced meanwhile (a backup restored) is the one to judge and delete from.
        if self.nanopix.replaced() {
            self.nanopix = NanoPix::open(&self.config.nanopix_root, self.config.busy_timeout)?;
            self.nanopix_read = None;
        }
        self.ready_connections()?;
        // A request not sent yet may still be withdrawn: the patient added again may get it back.
        // An older request sent for the same id does not count; the host gets this one once sent.
        let unannounced = self.unannounced_deletes.iter().any(|(_, noted)| *noted == id.to_string());
        if unannounced || !self.delete_asked_for_row(id, &self.dentaltid.imported_under(&[id])?)? {
            return Err(Error::DeleteNotRequested(id.to_string()));
        }
        self.cursor = None;
        self.nanopix.delete_patient(id, &self.config.patient_subfolders)
    }

    /// Patients for the patients screen.
    pub fn patients(&self, filter: PatientFilter) -> Result<Vec<Patient>> {
        self.dentaltid.check_still_open_file()?;
        self.dentaltid.patients(filter, self.config.clock.now().date())
    }

    /// The possible duplicates awaiting review.
    pub fn possible_duplicates(&self) -> Result<Vec<DuplicateToReview>> {
        self.dentaltid.check_still_open_file()?;
        self.dentaltid.possible_duplicates()
    }

    /// Takes patient `patient_id`'s possible duplicate off the review list; returns whether it
    /// was listed.
    pub fn dismiss_possible_duplicate(&mut self, patient_id: i64) -> Result<bool> {
        self.ready_connections()?;
        self.dentaltid.dismiss_possible_duplicate(patient_id)
    }

    /// Where a patient comes from and what NanoPix holds for it.
    pub fn source_info(&self, patient_id: i64) -> Result<SourceInfo> {
        self.dentaltid.check_still_open_file()?;
        let patient = self.dentaltid.patient(patient_id)?.ok_or(Error::PatientNotFound(patient_id))?;
        let link = self.dentaltid.link(patient_id)?;
        // A link the sync recorded outlives an `external_id` DentalTID cleared, while both sides
        // exist: a missing link's id may be another patient's by now.
        let recorded =
            link.as_ref().filter(|link| link.state == LinkState::Linked).map(|link| link.external_id.clone());
        let external_id = patient.external_id.clone().or(recorded);
        let id = external_id.as_deref().and_then(|text| NanoPixId::parse(text).ok());
        let row = id.map(|id| self.nanopix.patient(id)).transpose()?.flatten();
        // Another person saved under the id holds nothing of this patient's.
        let another = match (id, &row) {
            (Some(id), Some(row)) => self.dentaltid.linked_to_another_row(patient_id, id, row.created)?,
            _ => false,
        };
        let nanopix_patient = row.filter(|_| !another);
        let subfolders = &self.config.patient_subfolders;
        let ours = id.filter(|_| !another);
        let contents = ours.map(|id| self.nanopix.contents(id, subfolders)).transpose()?.unwrap_or_default();
        Ok(SourceInfo {
            patient_id,
            source: patient.source,
            external_id,
            folder: ours.map(|id| self.nanopix.folder_path(id)),
            nanopix_created: nanopix_patient.and_then(|p| p.created).map(crate::patient::nanopix_datetime),
            synced_at: link.as_ref().map(|l| crate::patient::dart_timestamp(l.synced_at)),
            link_state: link.map(|l| l.state),
            image_count: contents.studies,
        })
    }

    /// Runs `pass` as automatic work, which stops early when Live Sync is switched off. Work
    /// after it is not automatic, even when `pass` panics.
    pub fn automatically<T>(&mut self, pass: impl FnOnce(&mut Self) -> T) -> T {
        self.automatic = true;
        self.refused_while_busy = None;
        let result = catch_unwind(AssertUnwindSafe(|| pass(self)));
        self.automatic = false;
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Announces the delete requests written since the last announcement (see
    /// [`Engine::announce_held_deletes`]), unless an export call is under way: it announces them
    /// once it ends well, after it has given NanoPix patients back (see
    /// [`Engine::holding_delete_requests`]).
    pub fn announce_delete_requests(&mut self) {
        if !self.holding_delete_requests {
            self.announce_held_deletes();
        }
    }

    /// Announces the delete requests written since the last announcement whose delete still
    /// stands, of a NanoPix patient NanoPix still holds: a NanoPix patient given back meanwhile to
    /// a patient added again asks for none, nor does one deleted meanwhile (by the host, say,
    /// after the same request was announced before a restart). One whose standing cannot be
    /// read is announced: `delete_in_nanopix` checks it again. The import batches are read once
    /// for all of them (see [`DentalTid::imported_under`]). Then DentalTID notes them announced;
    /// if it cannot, they are announced again after the next `open`, which is better than never.
    fn announce_held_deletes(&mut self) {
        let held = std::mem::take(&mut self.unannounced_deletes);
        if held.is_empty() {
            return;
        }
        // Each request is checked by its NanoPix id in `external_id`: without the sync's indexes,
        // twice a scan of every patient per request. Failing to build them (DentalTID locked)
        // only makes the checks slower.
        let _ = self.ensure_indexes();
        let announced: Vec<i64> = held.iter().map(|(patient_id, _)| *patient_id).collect();
        let ids: Vec<NanoPixId> =
            held.iter().filter_map(|(_, external_id)| NanoPixId::parse(external_id).ok()).collect();
        let imported = self.dentaltid.imported_under(&ids);
        for (patient_id, external_id) in held {
            let stands = match (NanoPixId::parse(&external_id), &imported) {
                (Ok(id), Ok(imported)) => self.delete_stands(id, imported),
                _ => Ok(true),
            };
            if stands.unwrap_or(true) {
                self.bus.emit(EventKind::DeleteRequested { patient_id, external_id });
            }
        }
        let _ = self.dentaltid.delete_requests_announced(&announced);
    }

    /// Whether a delete of NanoPix patient `id` is still asked for, and NanoPix still holds it;
    /// `imported` holds the patients import batches give `id` to.
    fn delete_stands(&self, id: NanoPixId, imported: &ImportedUnder) -> Result<bool> {
        Ok(self.delete_asked_for_row(id, imported)? && self.nanopix.id_exists(id)?)
    }

    /// Whether a delete of NanoPix patient `id` is asked for (see [`DentalTid::delete_requested`])
    /// and NanoPix's row under it is not another person saved there since; `imported` holds the
    /// patients import batches give `id` to.
    fn delete_asked_for_row(&self, id: NanoPixId, imported: &ImportedUnder) -> Result<bool> {
        let row = self.nanopix.patient(id)?;
        let created = row.as_ref().and_then(|row| row.created);
        Ok(self.dentaltid.delete_requested(id, created, imported)? && !self.holds_another_person(row.as_slice())?)
    }

    /// Runs `work`, an export call, holding back the delete requests its catch-up with NanoPix
    /// finds until it has given NanoPix patients back; then announces them, if it succeeded and
    /// was not cut short.
    fn holding_delete_requests<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let held = std::mem::replace(&mut self.holding_delete_requests, true);
        let result = catch_unwind(AssertUnwindSafe(|| work(self)));
        self.holding_delete_requests = held;
        if matches!(result, Ok(Ok(_))) && !self.cancelled() {
            self.announce_delete_requests();
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Whether the last automatic pass reported work refused by a locked database; clears it.
    pub fn take_refused_while_busy(&mut self) -> bool {
        self.refused_while_busy.take().is_some()
    }

    /// Whether the handle is closing, or its work was stopped (see [`crate::Stopper`]).
    pub fn stopping(&self) -> bool {
        self.signals.closing.load(Ordering::Relaxed)
    }

    /// Whether the current work should stop: the handle is closing, or automatic work lost Live Sync.
    fn cancelled(&self) -> bool {
        self.signals.stop(self.automatic)
    }

    /// Reads both sides at once: NanoPix's ids on a second thread, its folders on a third (see
    /// [`Snapshot::folders`]); DentalTID's patients, links and journal on this one, which then
    /// builds the matcher if many NanoPix patients are unknown.
    fn snapshot(&mut self, report: &mut ReconcileReport) -> Result<Snapshot> {
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
        snapshot.folders = folders;
        Ok(snapshot)
    }

    /// The patient folders of `snapshot`, listed if their listing has not started yet; reports
    /// the odd names found among them.
    fn folders(&mut self, snapshot: &mut Snapshot, report: &mut ReconcileReport) -> Result<FolderScan> {
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
    fn adopt_existing_links(&mut self, snapshot: &mut Snapshot) -> Result<Vec<NanoPixId>> {
        let recorded: HashSet<i64> = snapshot.links.iter().map(|l| l.patient_id).collect();
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

    fn report_odd_rows(&mut self, odd_rows: Vec<OddRow>, report: &mut ReconcileReport) {
        for odd in odd_rows {
            let message = match odd.pk {
                Some(pk) => format!("NanoPix patient row pk {pk} skipped: {}", odd.problem),
                None => format!("NanoPix patient row skipped: {}", odd.problem),
            };
            let database = Some(self.nanopix.database().display().to_string());
            self.report_odd("odd_row", message, (odd.raw_id, database), report);
        }
    }

    fn report_odd_folder(&mut self, name: &std::ffi::OsStr, report: &mut ReconcileReport) {
        let path = self.nanopix.root().join(name);
        let message = format!("{} is not a NanoPix patient folder: skipped", path.display());
        self.report_odd("odd_folder", message, (None, Some(path.display().to_string())), report);
    }

    /// Reports an odd row or folder entry, unless automatic work reported it already (see
    /// [`OddFindings`]).
    fn report_odd(
        &mut self,
        code: &str,
        message: String,
        (external_id, path): (Option<String>, Option<String>),
        report: &mut ReconcileReport,
    ) {
        // The message names a row by its `pk`, which SQLite gives again once the last row is gone:
        // the row's id tells another odd row there from the one reported.
        let finding = format!("{message}\n{}", external_id.as_deref().unwrap_or_default());
        if self.odd_findings.note(&finding, self.automatic) {
            report.errors += 1;
            let code = code.into();
            self.bus.emit(EventKind::SyncError { code, message, external_id, patient_id: None, path });
        }
    }

    /// Links or imports a few NanoPix patients no DentalTID patient, link or export holds yet,
    /// reading each by its id instead of reading every page.
    fn import_few(
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
    fn link_or_import(
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
    fn import_unknown_rows(
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
    fn decide_and_import(
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

    /// Writes the links `matcher` holds, once every NanoPix patient was offered to it. A pass
    /// stopped early writes none: a NanoPix patient not read yet could have contested one.
    ///
    /// DentalTID may have renamed, re-dated or deleted a matched patient since it was read: the
    /// NanoPix patient of such a stale link is decided again, once, against DentalTID as it is
    /// now. One whose new match went stale too is reported and left to the next reconcile.
    /// `read_at` is the data version at which `matcher` read every DentalTID patient, if it did.
    fn link_held(&mut self, matcher: Matcher, read_at: Option<i64>, report: &mut ReconcileReport) -> Result<()> {
        if self.cancelled() {
            return Ok(());
        }
        let (_, stale) = self.link_all(matcher.finish(), (true, read_at), report)?;
        for link in self.decide_again(stale.iter().map(|link| link.external_id).collect(), report)? {
            self.report_stale_link(&link, report);
        }
        Ok(())
    }

    /// Decides the NanoPix patients `ids` again, against DentalTID as it is now; returns the
    /// links of that decision whose patient DentalTID changed meanwhile too. An id some patient
    /// shows now is left alone: it has its holder, and importing it would make a second.
    fn decide_again(&mut self, ids: Vec<NanoPixId>, report: &mut ReconcileReport) -> Result<Vec<MatchedLink>> {
        let mut patients = Vec::with_capacity(ids.len());
        for id in ids {
            if !self.dentaltid.shows_external_id(id)? {
                patients.extend(self.nanopix.patient(id)?);
            }
        }
        if patients.is_empty() {
            return Ok(Vec::new());
        }
        let mut matcher = self.matcher(&patients)?;
        // A second decision does not look for patients saved meanwhile again: it ends here.
        self.decide_and_import(&mut matcher, patients, None, report)?;
        Ok(self.link_all(matcher.finish(), (true, None), report)?.1)
    }

    /// Reports a link left unwritten because DentalTID changed its patient while it was decided.
    fn report_stale_link(&self, link: &MatchedLink, report: &mut ReconcileReport) {
        report.errors += 1;
        self.bus.emit(EventKind::SyncError {
            code: "patient_changed".into(),
            message: format!(
                "DentalTID patient {} or NanoPix patient {} changed while they were being linked: \
                 left to the next reconcile",
                link.patient_id, link.external_id
            ),
            external_id: Some(link.external_id.to_string()),
            patient_id: Some(link.patient_id),
            path: None,
        });
    }

    /// Links NanoPix patients to the DentalTID patients they match, [`LINKS_PER_TRANSACTION`]
    /// at a time in patient order (so each transaction keeps to one stretch of the table), and
    /// reports each transaction's links once it is committed. Returns the links written, by
    /// patient id, and the stale ones: those whose patient DentalTID (or NanoPix) changed or
    /// deleted since it was matched, left for the caller. `new_to_sync` says the NanoPix patients
    /// are new to the sync, and `read_at` gives the data version at which the matching read every
    /// DentalTID patient, if it did (see [`crate::dentaltid::DentalTid::link_all`]). A link
    /// DentalTID refuses is reported, and its patient is not exported until a link is written.
    fn link_all(
        &mut self,
        links: Vec<MatchedLink>,
        (new_to_sync, read_at): (bool, Option<i64>),
        report: &mut ReconcileReport,
    ) -> Result<(HashMap<i64, NanoPixId>, Vec<MatchedLink>)> {
        let (mut linked, mut stale) = (HashMap::default(), Vec::new());
        let links = self.without_pending_exports(links)?;
        let mut links = self.renamed_in_nanopix_apart(links, &mut stale)?;
        links.sort_by_key(|link| link.patient_id);
        for chunk in links.chunks(LINKS_PER_TRANSACTION) {
            let outcomes = self.dentaltid.link_all(chunk, self.config.clock.now(), (new_to_sync, read_at))?;
            for (link, outcome) in chunk.iter().zip(outcomes) {
                let (patient_id, external_id) = (link.patient_id, link.external_id.to_string());
                match outcome {
                    LinkOutcome::Linked => {
                        self.refused_links.remove(&patient_id);
                    }
                    LinkOutcome::Stale => {
                        stale.push(link.clone());
                        continue;
                    }
                    LinkOutcome::Refused(error) => {
                        self.refused_links.insert(patient_id, link.external_id);
                        self.report_error(&error, Some(external_id), Some(patient_id), report);
                        continue;
                    }
                }
                report.linked += 1;
                linked.insert(patient_id, link.external_id);
                let (first_name, last_name) = (link.first_name.clone(), link.last_name.clone());
                self.bus.emit(EventKind::PatientLinked { patient_id, external_id, first_name, last_name });
            }
        }
        Ok((linked, stale))
    }

    /// `links` less those to a DentalTID patient whose export waits in the journal: the NanoPix
    /// patient is the same person, saved in NanoPix while her export could not end. Linking it
    /// would leave the export to write her again; importing it, as the matching does with a
    /// patient already linked, would give DentalTID a second one. It stays undecided (see
    /// [`Engine::left_for_exports`]): the repair of her export gives way to it, and the pass
    /// that follows links the two (see [`Engine::resume_export`]). An export that wrote her row
    /// never gives way: the matching counts her as linked (see [`Engine::exports_on_their_rows`]).
    /// The journal is read only when there are links.
    fn without_pending_exports(&mut self, links: Vec<MatchedLink>) -> Result<Vec<MatchedLink>> {
        if links.is_empty() {
            return Ok(links);
        }
        let pending: HashSet<i64> = self.dentaltid.pending_exports()?.iter().map(|p| p.patient_id).collect();
        if pending.is_empty() {
            return Ok(links);
        }
        let (left, links): (Vec<MatchedLink>, _) =
            links.into_iter().partition(|link| pending.contains(&link.patient_id));
        self.left_for_exports |= !left.is_empty();
        Ok(links)
    }

    /// `links` less those whose NanoPix patient NanoPix renamed, re-dated, deleted or replaced
    /// since the pass read it, which go to `stale`: each side's patient must still be the one it
    /// was matched as. Their rows are read again only when another program wrote to NanoPix
    /// since the pass began reading it.
    fn renamed_in_nanopix_apart(
        &self,
        links: Vec<MatchedLink>,
        stale: &mut Vec<MatchedLink>,
    ) -> Result<Vec<MatchedLink>> {
        if links.is_empty() || self.nanopix_read == Some(self.nanopix.data_version()?) {
            return Ok(links);
        }
        let mut kept = Vec::with_capacity(links.len());
        for link in links {
            let row = self.nanopix.patient(link.external_id)?;
            let still = row.is_some_and(|row| {
                row.created == link.nanopix_created && link.key.is_of(&row.first_name, &row.last_name, row.birth_date)
            });
            if still { kept.push(link) } else { stale.push(link) }
        }
        Ok(kept)
    }

    /// Marks links whose NanoPix patient vanished (or came back), and links whose DentalTID
    /// patient was deleted; a folder NanoPix has not made yet (see [`Engine::awaited_folders`])
    /// is not missing, and a row another person holds under the id is missing (see
    /// [`LinkedRows`]). Records the row of a link made without one. `linked_now` are the NanoPix
    /// patients this reconcile linked or imported. Writes only on a change of state,
    /// [`LINKS_PER_TRANSACTION`] changes per transaction, and reports them once they are written.
    /// Keeps the links left missing only their folder for live passes (see
    /// [`Engine::restore_put_back_folders`]).
    fn check_links(
        &mut self,
        snapshot: &Snapshot,
        folders: &FolderScan,
        linked_now: &[NanoPixId],
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let rows: HashSet<NanoPixId> = snapshot.nanopix.iter().copied().collect();
        let patients: HashSet<i64> = snapshot.dentaltid.iter().map(|p| p.id).collect();
        // Needed only for a link whose patient was deleted, which is rare.
        let mut held = None;
        let awaited = self.awaited_folders(&folders.patient_folders, &rows, linked_now)?;
        let (mut changes, mut made_with) = (Vec::new(), Vec::new());
        self.missing_folders.clear();
        for link in &snapshot.links {
            let Ok(id) = NanoPixId::parse(&link.external_id) else { continue };
            // Another person's row under the id is not the link's.
            let (recorded, created) =
                (snapshot.linked_rows.created(link.patient_id, id), snapshot.nanopix_created.get(&id));
            let row = rows.contains(&id) && !is_another_person(created.copied(), &[recorded]);
            if row && recorded.is_none() && created.is_some() {
                made_with.push((link.patient_id, id, created.copied()));
            }
            // A folder is awaited only beside its row: with the row gone, no folder is coming.
            let folder = folders.patient_folders.contains(&id) || (row && awaited.contains(&id));
            let nanopix = NanoPixSide { row, folder };
            let patient_exists = patients.contains(&link.patient_id);
            // A patient deleted while another still holds its NanoPix id asks for no delete.
            let change = link_change(link, patient_exists, nanopix).filter(|_| {
                patient_exists || !held.get_or_insert_with(|| held_by_patients(snapshot, &patients)).contains(&id)
            });
            let state = change.as_ref().map_or(link.state, |(_, state, _)| *state);
            if state == LinkState::Missing && nanopix.row && !nanopix.folder {
                self.missing_folders.push(Link { state, ..link.clone() });
            }
            changes.extend(change);
        }
        self.dentaltid.record_linked_rows(&made_with)?;
        self.change_links(&changes, report)
    }

    /// The NanoPix ids whose folder the sync waits for: NanoPix may save a new patient's row
    /// before it makes the folder, so a linked patient whose folder the sync has never seen has
    /// not lost it. These are the ids waited for before and those of `linked_now` without a
    /// folder, less those in `folders` now and those without a row in `rows` (with the row gone,
    /// no folder is coming); the changes are recorded.
    fn awaited_folders(
        &mut self,
        folders: &HashSet<NanoPixId>,
        rows: &HashSet<NanoPixId>,
        linked_now: &[NanoPixId],
    ) -> Result<HashSet<NanoPixId>> {
        let mut awaited = self.dentaltid.awaited_folders()?;
        let settled = |id: &NanoPixId| folders.contains(id) || !rows.contains(id);
        let seen: Vec<NanoPixId> = awaited.iter().copied().filter(|id| settled(id)).collect();
        let new: Vec<NanoPixId> =
            linked_now.iter().copied().filter(|id| !settled(id) && !awaited.contains(id)).collect();
        self.dentaltid.update_awaited_folders(&new, &seen)?;
        awaited.retain(|id| !settled(id));
        awaited.extend(new);
        Ok(awaited)
    }

    /// Records that NanoPix has not made the folders of the patients a live pass `linked` (or
    /// imported) yet, when it has not, and that it has made those awaited before: from then on,
    /// their absence is a removal. See [`Engine::awaited_folders`].
    fn await_folders(&mut self, linked: &[NanoPixId]) -> Result<()> {
        let awaited: Vec<NanoPixId> = linked.iter().copied().filter(|&id| !self.nanopix.has_folder(id)).collect();
        let made: Vec<NanoPixId> =
            self.dentaltid.awaited_folders()?.into_iter().filter(|&id| self.nanopix.has_folder(id)).collect();
        self.dentaltid.update_awaited_folders(&awaited, &made)
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
    /// whose DentalTID patient was deleted meanwhile.
    fn gives_back_a_deleted_patient(&self, read: &[NanoPixPatient]) -> Result<bool> {
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
    fn holds_another_person(&self, read: &[NanoPixPatient]) -> Result<bool> {
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

    /// The change that restores `link`, marked missing, now that NanoPix holds its row and folder
    /// again; `None` when its DentalTID patient was deleted meanwhile (a full reconcile's to find)
    /// or the row is another person's.
    fn restoration(&self, link: &Link) -> Result<Option<(i64, LinkState, EventKind)>> {
        // Another person's row under the id gives no link back.
        let Ok(id) = NanoPixId::parse(&link.external_id) else { return Ok(None) };
        let created = self.nanopix.patient(id)?.and_then(|row| row.created);
        if self.dentaltid.linked_to_another_row(link.patient_id, id, created)? {
            return Ok(None);
        }
        let patient_exists = self.dentaltid.patient(link.patient_id)?.is_some();
        let change = link_change(link, patient_exists, NanoPixSide { row: true, folder: true });
        Ok(change.filter(|(_, state, _)| *state == LinkState::Linked))
    }

    /// Writes link state `changes`, [`LINKS_PER_TRANSACTION`] per transaction, and reports
    /// each once it is written.
    fn change_links(&mut self, changes: &[(i64, LinkState, EventKind)], report: &mut ReconcileReport) -> Result<()> {
        for chunk in changes.chunks(LINKS_PER_TRANSACTION) {
            let states: Vec<(i64, LinkState)> =
                chunk.iter().map(|(patient_id, state, _)| (*patient_id, *state)).collect();
            self.dentaltid.set_link_states(&states)?;
            for (_, _, event) in chunk {
                match event {
                    EventKind::DeleteRequested { patient_id, external_id } => {
                        self.unannounced_deletes.push((*patient_id, external_id.clone()));
                    }
                    EventKind::ExternalPatientRemoved { .. } => {
                        report.removed += 1;
                        self.bus.emit(event.clone());
                    }
                    _ => self.bus.emit(event.clone()),
                }
            }
        }
        Ok(())
    }

    /// Reports `error`, met by the work on one patient; notes a locked database (see
    /// [`Engine::take_refused_while_busy`]).
    fn report_error(
        &mut self,
        error: &Error,
        external_id: Option<String>,
        patient_id: Option<i64>,
        report: &mut ReconcileReport,
    ) {
        if let Error::Busy { path, .. } = error {
            self.refused_while_busy = Some(path.clone());
        }
        report.errors += 1;
        self.bus.error(error, external_id, patient_id);
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

/// Reports committed imports, and the possible duplicates among them; a patient DentalTID
/// refused gets a `sync_error`, and is tried again at the next full reconcile.
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
            if let Some(duplicate) = duplicate {
                report.possible_duplicates += 1;
                bus.emit(EventKind::PossibleDuplicate {
                    external_id: external_id.clone(),
                    patient_id,
                    reason: duplicate.reason,
                    candidates: duplicate.candidates,
                });
            }
            let unreadable_name = row.first_name.contains(char::REPLACEMENT_CHARACTER)
                || row.last_name.contains(char::REPLACEMENT_CHARACTER);
            bus.emit(EventKind::PatientImported {
                patient_id,
                external_id: external_id.clone(),
                first_name: row.first_name,
                last_name: row.last_name,
            });
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
    known.extend(links.iter().filter_map(|l| NanoPixId::parse(&l.external_id).ok()));
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
    let linked: HashSet<i64> = links.iter().map(|l| l.patient_id).chain(written.iter().copied()).collect();
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

/// The NanoPix ids DentalTID's patients in `patients` hold: in their `external_id`, or by a link
/// that asks for no delete. A patient whose link was made with another person's row than
/// NanoPix's (see [`LinkedRows`]) holds no id.
fn held_by_patients(snapshot: &Snapshot, patients: &HashSet<i64>) -> HashSet<NanoPixId> {
    let holds = |&(patient_id, id): &(i64, NanoPixId)| {
        !is_another_person(snapshot.nanopix_created.get(&id).copied(), &[snapshot.linked_rows.created(patient_id, id)])
    };
    let kept = |link: &&Link| link.state != LinkState::DeleteRequested && patients.contains(&link.patient_id);
    let linked = snapshot.links.iter().filter(kept);
    let linked = linked.filter_map(|link| Some((link.patient_id, NanoPixId::parse(&link.external_id).ok()?)));
    let shown = snapshot.dentaltid.iter().filter_map(|patient| Some((patient.id, patient.external_id?)));
    shown.chain(linked).filter(holds).map(|(_, id)| id).collect()
}

/// Stops the process at a named step (of an export, or of a reconcile) when
/// `NANOPIX_SYNC_CRASH_AT` names it.
///
/// Only in debug builds: the crash-repair tests run the work in a child process and let it die here.
fn crash_point(step: &str) {
    if cfg!(debug_assertions) && std::env::var("NANOPIX_SYNC_CRASH_AT").is_ok_and(|at| at == step) {
        std::process::abort();
    }
}

/// What NanoPix still holds of a linked patient.
#[derive(Debug, Clone, Copy)]
struct NanoPixSide {
    /// Its `Patient` row.
    row: bool,
    /// Its folder.
    folder: bool,
}

impl NanoPixSide {
    /// What is gone, as the `missing` field of `external_patient_removed` says it; `None` when
    /// nothing is.
    fn missing(self) -> Option<&'static str> {
        match (self.row, self.folder) {
            (true, true) => None,
            (false, true) => Some("row"),
            (true, false) => Some("folder"),
            (false, false) => Some("row_and_folder"),
        }
    }
}

/// The new state of `link` and the event that says so, when its sides changed. A DentalTID
/// patient deleted while NanoPix still holds its row asks for a delete, whatever the folder
/// says; with the row gone too there is nothing left to delete.
fn link_change(link: &Link, patient_exists: bool, nanopix: NanoPixSide) -> Option<(i64, LinkState, EventKind)> {
    let (patient_id, external_id) = (link.patient_id, link.external_id.clone());
    let (state, event) = match (patient_exists, nanopix.missing(), link.state) {
        (false, _, LinkState::Linked | LinkState::Missing) if nanopix.row => {
            (LinkState::DeleteRequested, EventKind::DeleteRequested { patient_id, external_id })
        }
        (true, Some(missing), LinkState::Linked) => {
            let missing = missing.into();
            (LinkState::Missing, EventKind::ExternalPatientRemoved { patient_id, external_id, missing })
        }
        (true, None, LinkState::Missing) => {
            (LinkState::Linked, EventKind::ExternalPatientRestored { patient_id, external_id })
        }
        _ => return None,
    };
    Some((patient_id, state, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(state: LinkState) -> Link {
        let (patient_id, external_id) = (7, "20250122_100000".to_owned());
        let synced_at = chrono::NaiveDate::from_ymd_opt(2025, 1, 22).and_then(|d| d.and_hms_opt(10, 0, 1)).unwrap();
        Link { patient_id, external_id, origin: LinkOrigin::Exported, state, synced_at }
    }

    /// The state `link_change` moves a link in `state` to, if any.
    fn next_state(patient_exists: bool, row: bool, folder: bool, state: LinkState) -> Option<LinkState> {
        link_change(&link(state), patient_exists, NanoPixSide { row, folder }).map(|(_, state, _)| state)
    }

    /// A live pass that goes on as a full reconcile (a repair left its reserved id, say) just as
    /// Live Sync is switched off: the reconcile stops before it begins, and the pass must leave
    /// no cursor, since rows behind it wait for that reconcile; `export_patient`, whose
    /// catch-up goes on from the cursor, would export again a patient NanoPix saved there.
    #[test]
    fn a_pass_that_becomes_a_full_reconcile_stopped_at_once_leaves_no_cursor() {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let db = crate::dentaltid::testing::build_database(&dir, crate::dentaltid::testing::SCHEMA_V29, true);
        let morning = chrono::NaiveDate::from_ymd_opt(2025, 1, 22).and_then(|d| d.and_hms_opt(10, 0, 0)).unwrap();
        let mut config = Config::new(&root, &db);
        config.clock = Arc::new(crate::ManualClock::new(morning));
        let (bus, _events) = EventBus::new(config.clock.clone());
        let signals = Arc::new(Signals::default());
        signals.live.store(true, Ordering::Relaxed);
        let mut engine = Engine::open(config, Arc::new(bus), signals.clone()).unwrap();
        engine.reconcile().unwrap();
        assert!(engine.cursor.is_some(), "a full reconcile leaves a cursor");
        signals.live.store(false, Ordering::Relaxed);
        let report = engine.automatically(|engine| engine.reconcile_after(ReconcileReport::default(), &[])).unwrap();
        assert!(report.stopped_early);
        assert!(engine.cursor.is_none(), "the pass stopped early leaves no cursor");
    }

    #[test]
    fn a_patient_deleted_in_dentaltid_asks_for_a_delete_while_nanopix_holds_its_row() {
        use LinkState::{DeleteRequested, Linked, Missing};
        for state in [Linked, Missing] {
            assert_eq!(next_state(false, true, true, state), Some(DeleteRequested), "{state:?}, whole");
            assert_eq!(next_state(false, true, false, state), Some(DeleteRequested), "{state:?}, no folder");
            assert_eq!(next_state(false, false, true, state), None, "{state:?}, no row");
            assert_eq!(next_state(false, false, false, state), None, "{state:?}, nothing left");
        }
        assert_eq!(next_state(false, true, false, DeleteRequested), None, "asked once");
    }

    #[test]
    fn a_nanopix_patient_that_vanishes_or_comes_back_changes_its_link() {
        use LinkState::{Linked, Missing};
        assert_eq!(next_state(true, true, false, Linked), Some(Missing));
        assert_eq!(next_state(true, false, true, Linked), Some(Missing));
        assert_eq!(next_state(true, true, true, Missing), Some(Linked));
        assert_eq!(next_state(true, true, true, Linked), None);
        assert_eq!(next_state(true, false, false, Missing), None);
    }
}
