//! The [`NanoPixSync`] handle: one engine thread that owns both databases, fed with jobs over a
//! channel, plus the watcher while Live Sync is on.
//!
//! Every public call is a job with its own reply channel, so writes are serial without locks.
//! `close()` and `Drop` stop and join every thread; nothing here panics on a closed channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::dispatch::{Dispatcher, EventCallback};
use crate::engine::{Engine, Signals};
use crate::events::{Event, EventBus, EventKind, ReconcileReport};
use crate::live::{self, Job};
use crate::patient::{Patient, PatientFilter, Source};
use crate::{Config, DuplicateToReview, Error, LinkState, NanoPixId, Result};

/// Where a DentalTID patient comes from and what NanoPix holds for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceInfo {
    /// DentalTID `patients.id`.
    pub patient_id: i64,
    /// Where the patient was created.
    pub source: Source,
    /// The linked NanoPix id, if any: the patient's `external_id`, or, when DentalTID cleared
    /// that column, the id of the link the sync recorded while both sides exist.
    pub external_id: Option<String>,
    /// The patient's NanoPix folder, if linked, whether it is there or not (see `link_state`);
    /// none while another person's row holds the id (see the README's "Deletes"), or while a
    /// symlink or a file sits where the folder belongs: the sync never follows one.
    pub folder: Option<PathBuf>,
    /// NanoPix's `created_datetime`, `YYYY-MM-DD HH:MM:SS`, if NanoPix has the patient.
    pub nanopix_created: Option<String>,
    /// When the sync linked, imported or exported the patient (Dart's format); none when the time
    /// it recorded cannot be read (edited by hand).
    pub synced_at: Option<String>,
    /// The state of the link, if the sync recorded one.
    pub link_state: Option<LinkState>,
    /// How many images (NanoPix studies) the patient has.
    pub image_count: u64,
}

/// A delete the host was asked for that still stands: see [`NanoPixSync::delete_requests`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteRequest {
    /// The NanoPix id of the patient NanoPix still holds.
    pub external_id: String,
    /// The DentalTID `patients.id`s deleted that held it, in order: one, unless several
    /// patients held the NanoPix id (the `delete_requested` event named one of them).
    pub patient_ids: Vec<i64>,
}

/// Cuts short the work of a [`NanoPixSync`] from any thread; see [`NanoPixSync::stopper`].
///
/// # Example
/// ```no_run
/// use nanopix_sync::{Config, NanoPixSync};
///
/// let mut sync = NanoPixSync::open(Config::new("PatientData", "dentaltid.db"))?;
/// let stopper = sync.stopper();
/// // On Ctrl-C, from the handler's thread: "Sync Now" stops at the next patient.
/// std::thread::spawn(move || stopper.stop());
/// let report = sync.reconcile()?;
/// println!("stopped early: {}", report.stopped_early);
/// sync.close();
/// # Ok::<(), nanopix_sync::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Stopper(Arc<Signals>);

impl Stopper {
    /// Asks the handle's work to stop early, as closing does: a reconcile or an export stops at
    /// the next patient (a reconcile then reports `stopped_early`), Live Sync's automatic work
    /// stops, and later reconciles and exports stop at once (`export_patient` and
    /// `export_existing`, also when cut short, give [`crate::Error::Closed`]). Calls that sync
    /// nothing (`patients`, `set_live_sync`, `delete_in_nanopix`) still do their work. What was written stays written, and the next
    /// reconcile goes on from there. Close the handle next.
    pub fn stop(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }
}

/// A live sync between one NanoPix data folder and one DentalTID database.
///
/// `NanoPixSync` is `Send` and `Sync`: share it between threads behind an `Arc`.
///
/// # Example
/// ```no_run
/// use nanopix_sync::{Config, NanoPixSync, PatientFilter};
///
/// let sync = NanoPixSync::open(Config::new("PatientData", "dentaltid.db"))?;
/// sync.set_live_sync(true)?;
/// let today = sync.patients(PatientFilter::TodayByExternal)?;
/// println!("{} patients came from NanoPix today", today.len());
/// # Ok::<(), nanopix_sync::Error>(())
/// ```
#[derive(Debug)]
pub struct NanoPixSync {
    jobs: Option<Sender<Job>>,
    events: Receiver<Event>,
    bus: Arc<EventBus>,
    signals: Arc<Signals>,
    engine: Option<JoinHandle<()>>,
    dispatcher: Dispatcher,
}

impl NanoPixSync {
    /// Opens both sides, checks them, migrates DentalTID, repairs interrupted exports, and
    /// starts the engine thread (and the watcher, if Live Sync is on).
    ///
    /// Only one handle at a time syncs a DentalTID database, in this process or any other: the
    /// handle holds a lock on it until it is closed.
    ///
    /// # Failure
    /// A missing folder or file, a missing table or column, or an unreadable database gives a
    /// specific [`Error`]; nothing is written then. [`Error::InUse`] while another handle syncs
    /// the same DentalTID database.
    pub fn open(config: Config) -> Result<Self> {
        let (bus, events) = EventBus::new(config.clock.clone());
        let bus = Arc::new(bus);
        let signals = Arc::new(Signals::default());
        let engine = Engine::open(config, bus.clone(), signals.clone())?;
        let dispatcher = Dispatcher::start(bus.clone()).map_err(|source| Error::Io {
            path: PathBuf::new(),
            step: "starting the event thread",
            source,
        })?;
        let (jobs, job_queue) = crossbeam_channel::unbounded::<Job>();
        let last_events = bus.clone();
        // The engine thread queues `closed` itself, once its work has ended: the thread that
        // closes the handle may be in its exit cleanup, with no thread-local data (the local
        // clock's among it) left to stamp an event with.
        let thread = std::thread::Builder::new()
            .name("nanopix-sync-engine".into())
            .spawn(move || {
                live::run(engine, job_queue);
                last_events.emit_last(EventKind::Closed);
            })
            .map_err(|source| Error::Io { path: PathBuf::new(), step: "starting the engine thread", source })?;
        Ok(Self { jobs: Some(jobs), events, bus, engine: Some(thread), dispatcher, signals })
    }

    /// The queue of events. Clones share one queue: each event is received once, by whichever
    /// clone takes it first.
    pub fn events(&self) -> Receiver<Event> {
        self.events.clone()
    }

    /// Sets (or, with `None`, clears) a callback that receives every later event on a library
    /// thread. Returns once no call of the previous callback is in flight. A slow callback delays
    /// delivery, never the sync. From inside a callback of another handle it waits for this
    /// handle's callback, as [`NanoPixSync::close`] does: two handles whose callbacks set each
    /// other's callback or close each other wait for each other forever.
    pub fn set_callback(&self, callback: Option<EventCallback>) {
        self.dispatcher.set(callback);
    }

    /// Sets a callback that carries on the one before it (see [`Dispatcher::carry_on`]): the C
    /// API's, whose event and wakeup callbacks change one at a time.
    pub(crate) fn carry_on_callback(&self, callback: EventCallback) {
        self.dispatcher.carry_on(callback);
    }

    /// The `seq` the next event will have.
    pub(crate) fn next_event_seq(&self) -> u64 {
        self.bus.next_seq()
    }

    /// "Sync Now": a full reconcile of both sides.
    pub fn reconcile(&self) -> Result<ReconcileReport> {
        self.call(Engine::reconcile)
    }

    /// Switches Live Sync on or off. The setting is kept in DentalTID's file.
    ///
    /// Switching it off returns once the watcher is stopped and its thread joined: no watcher
    /// event (`watcher_mode`, or a watcher's `sync_error`) is made after it returns. The watcher
    /// never waits for the event callback's thread, so a callback may switch it off too.
    pub fn set_live_sync(&self, enabled: bool) -> Result<()> {
        if !enabled {
            self.signals.live.store(false, Ordering::Relaxed);
        }
        self.call(move |engine| engine.set_live_sync(enabled))
    }

    /// Whether Live Sync is on.
    pub fn live_sync(&self) -> Result<bool> {
        self.call(|engine| engine.live_sync())
    }

    /// Exports one DentalTID patient to NanoPix now; returns its new NanoPix id. NanoPix patients
    /// the sync has not seen yet are imported or linked first: when the matching links one of them
    /// to this patient (an exact match, with auto-linking on), that id is returned. When an earlier export of the patient
    /// was interrupted (a crash or an error), that export is ended instead.
    ///
    /// # Failure
    /// [`Error::PatientNotFound`] without such a patient, [`Error::AlreadyLinked`] for a patient
    /// with a NanoPix id, or with a recorded link (its `external_id` cleared by DentalTID).
    /// [`Error::Database`], with nothing exported, while DentalTID refuses the patient's link to
    /// the NanoPix patient the matching gave it: NanoPix would hold the person twice.
    /// [`Error::KeptChanging`], with nothing exported, when NanoPix changed again before each of
    /// three tries (a patient saved there meanwhile may be this very person).
    pub fn export_patient(&self, patient_id: i64) -> Result<NanoPixId> {
        self.call(move |engine| engine.export_patient(patient_id))
    }

    /// Exports every DentalTID patient that has no NanoPix id and no recorded link yet; returns
    /// how many were exported, the interrupted exports it ended among them.
    /// NanoPix patients the sync has not seen yet are imported or linked first, and an interrupted
    /// export of one of them is ended, as [`NanoPixSync::export_patient`] does.
    ///
    /// A patient whose export fails for another reason than those below (NanoPix refusing her
    /// row, say) is not counted, and the others are exported all the same: a `sync_error` event
    /// reports it, and the call still returns `Ok`; calling again tries her again.
    ///
    /// # Failure
    /// [`Error::Closed`] when the handle closes (or is stopped) before every patient was exported:
    /// `export_existing` on the next handle exports those left. [`Error::KeptChanging`] when
    /// NanoPix kept changing, and some patients were held back each time, or [`Error::Busy`] when
    /// a database stayed locked past the busy timeout on some patient's export each time, for
    /// three tries in a row that exported nobody (calling again exports those left): a try cut
    /// short by a change that exported someone is followed by another.
    pub fn export_existing(&self) -> Result<u64> {
        self.call(Engine::export_existing)
    }

    /// Deletes a NanoPix patient's row and empty folder, after a `delete_requested` event and
    /// after the host asked the user. Called again after a delete cut short (the row deleted, the
    /// folder not), it removes the folder.
    ///
    /// # Failure
    /// [`Error::DeleteNotRequested`] unless a `delete_requested` event was sent for the patient, no
    /// DentalTID patient holds its id again (in its `external_id` or by a recorded link), no newer
    /// request for it waits to be sent (the host gets that one once it is sent) and NanoPix did not
    /// save another person under the id since; [`Error::NanoPixPatientNotEmpty`] if NanoPix holds
    /// any image, study, report, file or other record for it (a row of another table whose foreign
    /// key names it); [`Error::NanoPixIdShared`] if several NanoPix rows hold its id (nothing is
    /// deleted); [`Error::NanoPixPatientNotFound`] when neither its row nor its folder is left;
    /// [`Error::InvalidNanoPixId`] for a text that is no NanoPix id.
    pub fn delete_in_nanopix(&self, external_id: &str) -> Result<()> {
        let external_id = external_id.to_owned();
        self.call(move |engine| engine.delete_in_nanopix(&external_id))
    }

    /// The delete requests sent (as `delete_requested` events) that still stand, oldest NanoPix
    /// id first: no DentalTID patient holds the id again and NanoPix still holds the patient
    /// DentalTID's deleted patient was linked to, so [`NanoPixSync::delete_in_nanopix`] would
    /// delete it unless NanoPix holds records for it. A request stays listed until then, kept
    /// across closing and crashes: a host that missed the event (it was closed, or another
    /// program using the library synced the deletion) finds it here. A request not sent yet
    /// is not listed; it comes as an event once the work that found it ends well. A request the
    /// host dismissed ([`NanoPixSync::dismiss_delete_request`]) is not listed either.
    pub fn delete_requests(&self) -> Result<Vec<DeleteRequest>> {
        self.call(|engine| engine.delete_requests())
    }

    /// Takes the delete request of NanoPix patient `external_id` off the list
    /// [`NanoPixSync::delete_requests`] gives, once the user chose to keep the patient in NanoPix
    /// (kept across closing). Returns whether one was listed. `delete_in_nanopix` still deletes
    /// the patient if asked; another DentalTID patient later deleted while linked to it lists it
    /// again.
    ///
    /// # Failure
    /// [`Error::InvalidNanoPixId`] for a text that is no NanoPix id (nothing is listed under it).
    pub fn dismiss_delete_request(&self, external_id: &str) -> Result<bool> {
        let external_id = external_id.to_owned();
        self.call(move |engine| engine.dismiss_delete_request(&external_id))
    }

    /// DentalTID patients, as the patients screen filters them.
    pub fn patients(&self, filter: PatientFilter) -> Result<Vec<Patient>> {
        self.call(move |engine| engine.patients(filter))
    }

    /// The possible duplicates awaiting review, oldest patient first: every `possible_duplicate`
    /// report not dismissed yet, kept across closing and crashes, whose patient DentalTID still
    /// holds. Each lists the candidates DentalTID still holds, as they are now; a report none of
    /// whose candidates is left is not listed.
    pub fn possible_duplicates(&self) -> Result<Vec<DuplicateToReview>> {
        self.call(|engine| engine.possible_duplicates())
    }

    /// Takes patient `patient_id`'s possible duplicate off the review list, once the user has
    /// dealt with it (merged the patients, or found them to be different people). Returns
    /// whether one was listed; a later report on the patient lists it again.
    pub fn dismiss_possible_duplicate(&self, patient_id: i64) -> Result<bool> {
        self.call(move |engine| engine.dismiss_possible_duplicate(patient_id))
    }

    /// Where a patient comes from and what NanoPix holds for it.
    pub fn source_info(&self, patient_id: i64) -> Result<SourceInfo> {
        self.call(move |engine| engine.source_info(patient_id))
    }

    /// Stops and joins every thread; the last event is `closed`. Calling it again does nothing.
    pub fn close(&mut self) {
        self.stop_engine();
        self.dispatcher.stop();
    }

    /// A [`Stopper`] for this handle: it cuts the handle's work short from another thread, such
    /// as a signal handler, while a call is in flight.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.signals.clone())
    }

    /// Tells the work under way to stop early, as closing does (see [`Stopper::stop`]). For a C
    /// host closing while another of its threads waits on a call.
    pub(crate) fn stop_early(&self) {
        self.stopper().stop();
    }

    /// The first half of [`NanoPixSync::close`]: stops and joins the engine thread, which queues
    /// `closed`, the last event. The callback thread goes on delivering until `close`.
    pub(crate) fn stop_engine(&mut self) {
        self.stop_early();
        self.jobs = None;
        // A panicked engine thread queued no `closed`.
        if let Some(engine) = self.engine.take()
            && engine.join().is_err()
        {
            self.bus.error(&Error::Internal("the engine thread panicked".into()), None, None);
            self.bus.emit_last(EventKind::Closed);
        }
    }

    fn call<T: Send + 'static>(&self, job: impl FnOnce(&mut Engine) -> Result<T> + Send + 'static) -> Result<T> {
        let jobs = self.jobs.as_ref().ok_or(Error::Closed)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |engine| {
            let result = live::run_call(engine, job);
            // The caller may have gone away; then nobody needs the answer.
            Box::new(move || {
                let _ = reply.send(result);
            })
        });
        jobs.send(job).map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Internal("the call stopped before it answered".into()))?
    }
}

impl Drop for NanoPixSync {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NanoPixSync>();
    }
}
