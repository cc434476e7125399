//! The engine: reconcile, import, export and repair, run on the one thread that owns both
//! database connections. A reconcile lends the NanoPix connection to scoped helper threads, so
//! NanoPix is read (and matched) while DentalTID is read (or written) on the two cores.
//!
//! Decisions are made on plain values (see [`crate::matching`]); SQL and file I/O stay in
//! [`crate::dentaltid`] and [`crate::nanopix`]. The engine never deletes a patient on its own.
//! A full reconcile starts from a [`snapshot`] of both sides; a live pass ([`live_pass`]) reads
//! only what is new. Both go on through [`imports`], [`links`] and [`deletes`]; exports, the ids
//! they get and their repair are in [`exports`]. Bulk work leaves DentalTID [`turns`] to save.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use chrono::NaiveDateTime;
use foldhash::HashMap;

use crate::dentaltid::{DentalTid, LastNames, Link, LinkState};
use crate::events::{EventBus, EventKind, ReconcileReport};
use crate::matching::PossibleDuplicate;
use crate::nanopix::NanoPix;
use crate::patient::{Patient, PatientFilter};
use crate::sync::SourceInfo;
use crate::{Config, DuplicateToReview, Error, NanoPixId, Result};

mod deletes;
mod exports;
mod imports;
mod links;
mod live_pass;
mod odd_findings;
mod snapshot;
mod turns;

use exports::OpenRepairs;
use live_pass::LiveCursor;
use odd_findings::OddFindings;
use snapshot::Snapshot;
use turns::Turns;

/// Most links one transaction writes or changes, so DentalTID never waits long to save a patient.
const LINKS_PER_TRANSACTION: usize = 2_000;

/// How many NanoPix rows one read takes.
const PAGE: u32 = 5_000;

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
    /// Like `last_names`, DentalTID's patients without a birth date only.
    unborn_names: Option<LastNames>,
    /// The odd rows and folder entries reported, so that automatic work reports each once.
    odd_findings: OddFindings,
    /// The linked twins the last export to finish kept on the review list, with its patient:
    /// what the export reports.
    kept_twins: Option<(i64, PossibleDuplicate)>,
    /// While exports are made one after another, what they share (see [`exports::ExportRun`]):
    /// set as their run begins, taken as it ends.
    export_run: Option<exports::ExportRun>,
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
    /// What `open` did repairing interrupted exports, until a reconcile that succeeds reports it.
    open_repairs: Option<OpenRepairs>,
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
        let nanopix = NanoPix::open_configured(&config.nanopix_root, config.busy_timeout)?;
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
            unborn_names: None,
            odd_findings: OddFindings::default(),
            kept_twins: None,
            export_run: None,
            journaled: None,
            refused_links: HashMap::default(),
            left_for_exports: false,
            open_repairs: None,
        };
        engine.repair_at_open()?;
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

    /// Full reconcile ("Sync Now"): repair, import, link, report removals, export. The first one
    /// after `open` to succeed counts the repairs `open` did as its own (see
    /// [`Engine::repairs_at_open`]).
    ///
    /// NanoPix is opened afresh first: its folder may have come back as other files (a drive
    /// plugged in again, a share mounted again, a restore), which the old connection cannot see.
    pub fn reconcile(&mut self) -> Result<ReconcileReport> {
        let (begun, tried) = self.repairs_at_open();
        let reconciled = self.reconcile_after(begun, &tried);
        // One that failed reported nothing: the next one counts what `open` did.
        if reconciled.is_ok() {
            self.open_repairs = None;
        }
        reconciled
    }

    /// [`Engine::reconcile`], going on from the work `begun` reports: a live pass's (or `open`'s),
    /// whose repairs of the exports of patients `tried` were just tried and are not tried again.
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
        let versions = self.begin_full_reconcile()?;
        let mut report = begun;
        // Left by a pass that crashed or failed before it recorded the folders it awaits.
        let unsettled = self.dentaltid.unsettled_links()?;
        self.repair_exports(tried, &mut report)?;
        let mut snapshot = self.snapshot(&mut report)?;
        let adopted = self.adopt_existing_links(&mut snapshot)?;
        let unsettled = snapshot.links.readable.iter().filter(|link| unsettled.contains(link.patient_id));
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
        // cursor, so the next live pass reconciles fully.
        self.cursor = match self.cancelled() || self.left_for_exports {
            true => None,
            false => self.cursor_after_snapshot(&mut snapshot, versions)?,
        };
        if !self.cancelled() {
            self.odd_findings.full_reconcile_ended();
        }
        Ok(report)
    }

    /// Opens `NanoPix.db3` afresh and forgets what passes kept of either side, for a full
    /// reconcile; returns NanoPix's and DentalTID's data versions, read before it reads anything.
    fn begin_full_reconcile(&mut self) -> Result<(i64, i64)> {
        // The cursor described the file opened before; only a whole reconcile gives a new one.
        // Dropped first, so that a reconcile failing even to open NanoPix (locked, gone for a
        // moment) is tried again as a full one, not as a live pass that never looks at folders.
        self.cursor = None;
        self.nanopix = NanoPix::open(&self.config.nanopix_root, self.config.busy_timeout)?;
        self.ready_connections()?;
        self.last_names = None;
        self.unborn_names = None;
        self.odd_findings.full_reconcile_began();
        // The unknown NanoPix patients are all decided again, and their links tried again.
        self.refused_links.clear();
        self.left_for_exports = false;
        let versions = (self.nanopix.data_version()?, self.dentaltid.data_version()?);
        self.nanopix_read = Some(versions.0);
        Ok(versions)
    }

    /// The live cursor a full reconcile leaves, from its `snapshot` and the data `versions` read
    /// before it: the DentalTID extent is the snapshot's moved past the rows added since, so a
    /// patient deleted during the pass is still found gone by the next live pass.
    fn cursor_after_snapshot(&self, snapshot: &mut Snapshot, versions: (i64, i64)) -> Result<Option<LiveCursor>> {
        let extent = snapshot.dentaltid_extent();
        let checked = snapshot.links.patient_ids().fold(extent.0, i64::max);
        let nanopix_row = self.with_creation_time(snapshot.nanopix_row.take())?;
        self.cursor_at((nanopix_row, snapshot.nanopix_rows), (extent, checked), versions)
    }

    /// Whether Live Sync is on, as the DentalTID file the handle opened says: fails once that
    /// file was replaced (see [`DentalTid::check_still_open_file`]), as every call then does.
    pub fn live_sync(&self) -> Result<bool> {
        self.dentaltid.check_still_open_file()?;
        self.dentaltid.live_sync()
    }

    /// The Live Sync setting as the open connection reads it, also from a file replaced since:
    /// what automatic work follows. Its passes report a replaced file, once while it stays so. A
    /// setting stored behind the handle's back (a backup copied into the file in place, say)
    /// becomes the handle's own, so automatic work runs, or stops, as the watcher does, and a
    /// `live_sync_changed` says so, for the host's switch to show it.
    pub fn live_sync_setting(&mut self) -> Result<bool> {
        let enabled = self.dentaltid.live_sync()?;
        if enabled != self.live_stored {
            self.live_stored = enabled;
            self.signals.live.store(enabled, Ordering::Relaxed);
            self.bus.emit(EventKind::LiveSyncChanged { enabled });
        }
        Ok(enabled)
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

    /// Opens `NanoPix.db3` afresh when its name now holds another file than the one the
    /// connection reads (a backup restored, NanoPix reinstalled): that is the file NanoPix uses.
    /// The live cursor described the file opened before: the next pass reconciles fully.
    fn reopen_nanopix_if_replaced(&mut self) -> Result<()> {
        if self.nanopix.replaced() {
            self.nanopix = NanoPix::open(&self.config.nanopix_root, self.config.busy_timeout)?;
            (self.cursor, self.nanopix_read) = (None, None);
        }
        Ok(())
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

    /// Where a patient comes from and what NanoPix holds for it, read from the file NanoPix
    /// uses now (see [`Engine::reopen_nanopix_if_replaced`]). A patient without a NanoPix id
    /// needs nothing of NanoPix: it is answered from DentalTID alone, also while NanoPix's
    /// folder cannot be reached (an unplugged share).
    pub fn source_info(&mut self, patient_id: i64) -> Result<SourceInfo> {
        self.dentaltid.check_still_open_file()?;
        let patient = self.dentaltid.patient(patient_id)?.ok_or(Error::PatientNotFound(patient_id))?;
        let link = self.dentaltid.link(patient_id)?;
        // A link the sync recorded outlives an `external_id` DentalTID cleared, while both sides
        // exist: a missing link's id may be another patient's by now.
        let recorded =
            link.as_ref().filter(|link| link.state == LinkState::Linked).map(|link| link.external_id.clone());
        let external_id = patient.external_id.clone().or(recorded);
        let id = external_id.as_deref().and_then(|text| NanoPixId::parse(text).ok());
        if id.is_some() {
            self.reopen_nanopix_if_replaced()?;
        }
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
            folder: ours.and_then(|id| self.nanopix.folder_to_show(id)),
            nanopix_created: nanopix_patient.and_then(|p| p.created).map(crate::patient::nanopix_datetime),
            synced_at: link.as_ref().and_then(|l| l.synced_at).map(crate::patient::dart_timestamp),
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

/// Stops the process at a named step (of an export, or of a reconcile) when
/// `NANOPIX_SYNC_CRASH_AT` names it: the first time the step is reached, or, for `step#n`, the
/// n-th time.
///
/// Only in debug builds: the crash-repair tests run the work in a child process and let it die here.
fn crash_point(step: &str) {
    static REACHED: AtomicU32 = AtomicU32::new(0);
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(at) = std::env::var("NANOPIX_SYNC_CRASH_AT") else { return };
    let (named, nth) = at.split_once('#').map_or((at.as_str(), Some(1)), |(named, nth)| (named, nth.parse().ok()));
    if named == step && nth == Some(REACHED.fetch_add(1, Ordering::Relaxed) + 1) {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use chrono::NaiveDate;
    use rusqlite::trace::{TraceEvent, TraceEventCodes};
    use tempfile::TempDir;

    use super::*;

    thread_local! {
        /// The SQL of each statement the connections [`statements_run`] traces started on this thread.
        static STATEMENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// Runs `work` on `engine`; returns what it returned, with the SQL of each statement it
    /// started on either database, in order.
    pub(super) fn statements_run<T>(engine: &mut Engine, work: impl FnOnce(&mut Engine) -> T) -> (Vec<String>, T) {
        let traced: fn(TraceEvent<'_>) = |event| {
            if let TraceEvent::Stmt(_, sql) = event {
                STATEMENTS.with(|started| started.borrow_mut().push(sql.to_owned()));
            }
        };
        for conn in [engine.dentaltid.connection(), engine.nanopix.connection()] {
            conn.trace_v2(TraceEventCodes::SQLITE_TRACE_STMT, Some(traced));
        }
        STATEMENTS.with(|started| started.borrow_mut().clear());
        let done = work(engine);
        for conn in [engine.dentaltid.connection(), engine.nanopix.connection()] {
            conn.trace_v2(TraceEventCodes::empty(), None);
        }
        (STATEMENTS.with(RefCell::take), done)
    }

    /// An engine on a copy of the NanoPix fixture and a DentalTID database with the sample
    /// patients, with Live Sync on, its clock on the morning of 2025-01-22; the folder, the
    /// DentalTID file and the engine's signals.
    pub(super) fn clinic_engine() -> (TempDir, PathBuf, Engine, Arc<Signals>) {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let db = crate::dentaltid::testing::build_database(&dir, crate::dentaltid::testing::SCHEMA_V29, true);
        let morning = NaiveDate::from_ymd_opt(2025, 1, 22).and_then(|d| d.and_hms_opt(10, 0, 0)).unwrap();
        let mut config = Config::new(&root, &db);
        config.clock = Arc::new(crate::ManualClock::new(morning));
        let (bus, _events) = EventBus::new(config.clock.clone());
        let signals = Arc::new(Signals::default());
        signals.live.store(true, Ordering::Relaxed);
        let engine = Engine::open(config, Arc::new(bus), signals.clone()).unwrap();
        (dir, db, engine, signals)
    }

    /// A live pass that goes on as a full reconcile (a repair left its reserved id, say) just as
    /// Live Sync is switched off: the reconcile stops before it begins, and the pass must leave
    /// no cursor, since rows behind it wait for that reconcile; `export_patient`, whose
    /// catch-up goes on from the cursor, would export again a patient NanoPix saved there.
    #[test]
    fn a_pass_that_becomes_a_full_reconcile_stopped_at_once_leaves_no_cursor() {
        let (_dir, _db, mut engine, signals) = clinic_engine();
        engine.reconcile().unwrap();
        assert!(engine.cursor.is_some(), "a full reconcile leaves a cursor");
        signals.live.store(false, Ordering::Relaxed);
        let report = engine.automatically(|engine| engine.reconcile_after(ReconcileReport::default(), &[])).unwrap();
        assert!(report.stopped_early);
        assert!(engine.cursor.is_none(), "the pass stopped early leaves no cursor");
    }
}
