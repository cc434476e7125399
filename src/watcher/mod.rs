//! The live watcher: turns file events, NanoPix commits and polling into [`Trigger`]s for the
//! engine thread.
//!
//! File events are hints, not the truth: the watcher only says *that* something may have
//! changed, and the engine reads both databases to find out *what*. It never touches either
//! database beyond `PRAGMA data_version` on its own read-only connections, never opens
//! `User.db3`, never lists the patient folders, and never panics the process.
//!
//! One thread runs a *session* at a time: it opens the probes, picks native events or polling
//! (see [`native`] and [`polling`]), says which in a `watcher_mode` event, and watches until it
//! is stopped or the root vanishes. A vanished root is reported once, awaited with backoff, and
//! followed by a new session and a full reconcile. So is a root replaced under its name (a copy
//! moved in its place, or the folder deleted and made again), without the wait: native events
//! still watch the folder moved away, or nothing at all.

mod native;
mod network;
mod polling;
mod probe;
#[cfg(test)]
mod tests;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, select};

use crate::events::{EventBus, EventKind};
use crate::file_identity::FileIdentity;
use crate::{Config, Error, Result, WatchMode};
use probe::Probes;

/// The name of the watcher thread, as debuggers and `top -H` show it.
const THREAD_NAME: &str = "nanopix-sync-watcher";

/// The longest wait between two looks for a vanished root.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The first wait before looking for a vanished root again (unless polling is faster).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest [`Watcher::start`] waits for the thread's first look at both databases and the
/// root (a hung network share should not hold the engine forever).
const FIRST_LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the engine should look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// NanoPix committed, or a patient folder appeared or vanished.
    NanoPixChanged,
    /// DentalTID's database changed.
    DentalTidChanged,
    /// Events may have been lost (overflow, rescan flag, the root came back): reconcile fully.
    FullReconcile {
        /// Why, for the log.
        reason: String,
    },
}

/// A running watcher thread.
///
/// Dropping it closes its stop channel, which the thread takes as the signal to end; only
/// [`Watcher::stop`] also waits for the thread.
#[derive(Debug)]
pub(crate) struct Watcher {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Watcher {
    /// Starts watching the folders of `config`, sending triggers to `triggers` and
    /// `watcher_mode` / `sync_error` events to `bus`. Returns once the thread took its first
    /// look (or found the root missing), so every change made after this returns is noticed:
    /// a full reconcile started then misses nothing.
    pub fn start(config: &Config, triggers: Sender<Trigger>, bus: Arc<EventBus>) -> Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let (looked, first_look) = crossbeam_channel::bounded(1);
        let context = Context::new(config, triggers, bus, stopped, looked);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || context.run_guarded())
            .map_err(Error::io(&config.nanopix_root, "starting the watcher thread"))?;
        // A thread that ends early drops its sender, which ends the wait as well.
        let _ = first_look.recv_timeout(FIRST_LOOK_TIMEOUT);
        Ok(Self { stop, thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        let Self { stop, thread } = self;
        drop(stop);
        // Panics are caught inside the thread and reported there, so there is nothing left to report.
        let _ = thread.join();
    }
}

/// Why a watching session ended.
#[derive(Debug)]
enum End {
    /// The watcher was stopped, or the engine is gone.
    Stopped,
    /// The NanoPix root or its database vanished, or refuses the sync.
    RootMissing(Error),
    /// Another folder is at the root's path than the one the session watches, or the root's
    /// own watch ended (it was deleted or moved away, and a folder stands at its path again).
    RootReplaced,
}

/// What the watcher thread knows and owns, apart from the probes and the native watcher.
#[derive(Debug)]
struct Context {
    root: PathBuf,
    nanopix_db: PathBuf,
    dentaltid_db: PathBuf,
    watch_mode: WatchMode,
    poll_interval: Duration,
    triggers: Sender<Trigger>,
    bus: Arc<EventBus>,
    stop: Receiver<()>,
    /// Told once the first session took its first look, or the root was found missing.
    looked: Sender<()>,
    /// The root folder the current session watches, where the system tells folders apart.
    watched_root: Mutex<Option<FileIdentity>>,
}

impl Context {
    fn new(
        config: &Config,
        triggers: Sender<Trigger>,
        bus: Arc<EventBus>,
        stop: Receiver<()>,
        looked: Sender<()>,
    ) -> Self {
        Self {
            root: config.nanopix_root.clone(),
            nanopix_db: config.nanopix_root.join("database").join("NanoPix.db3"),
            dentaltid_db: config.dentaltid_db.clone(),
            watch_mode: config.watch_mode,
            poll_interval: config.poll_interval,
            triggers,
            bus,
            stop,
            looked,
            watched_root: Mutex::new(None),
        }
    }

    /// Runs the thread's loop; a panic becomes a `sync_error` event instead of killing the process.
    fn run_guarded(self) {
        let bus = self.bus.clone();
        guarded(&bus, || self.run());
    }

    /// Watches session after session until stopped, waiting out every vanished root.
    fn run(&self) {
        let mut came_back = false;
        loop {
            let end = match self.root_present() {
                Ok(()) => self.session(came_back),
                Err(end) => end,
            };
            match end {
                End::Stopped => return,
                End::RootMissing(error) => {
                    self.bus.error(&error, None, None);
                    let _ = self.looked.try_send(());
                    if self.wait_for_root().is_err() {
                        return;
                    }
                }
                End::RootReplaced => {}
            }
            came_back = true;
        }
    }

    /// Opens the probes, picks the mode, says so, and watches until the session ends.
    fn session(&self, came_back: bool) -> End {
        *self.watched_root.lock().unwrap_or_else(PoisonError::into_inner) = FileIdentity::of(&self.root);
        let probes = Probes::open(&self.nanopix_db, &self.dentaltid_db);
        let native = self.native_or_why_not();
        let (mode, reason) = match &native {
            Ok(_) => ("native", "native file events".to_owned()),
            Err(reason) => ("polling", reason.clone()),
        };
        // Both ways of watching take their first look before saying which runs, so a change
        // made once `watcher_mode` is out is always noticed.
        let root_modified = polling::modified(&self.root);
        self.bus.emit(EventKind::WatcherMode { mode: mode.to_owned(), reason });
        let _ = self.looked.try_send(());
        if came_back && let Err(end) = self.send(Trigger::FullReconcile { reason: "root came back".into() }) {
            return end;
        }
        match native {
            Ok(watch) => native::run(self, watch, probes),
            Err(_) => polling::run(self, probes, root_modified),
        }
    }

    /// A native watcher, or why polling is used instead.
    fn native_or_why_not(&self) -> Result<native::NativeWatch, String> {
        if self.watch_mode == WatchMode::Polling {
            return Err("polling is configured".into());
        }
        if let Some(filesystem) = network::network_filesystem(&self.root) {
            return Err(format!("{} is on a network filesystem ({filesystem})", self.root.display()));
        }
        native::NativeWatch::start(self).map_err(|error| format!("native file events failed: {error}"))
    }

    /// Sends `trigger`. A change never waits: a full queue already holds a pass that covers it.
    /// A full reconcile is covered by no live pass, so it waits for room, unless the watcher is
    /// stopped first.
    fn send(&self, trigger: Trigger) -> Result<(), End> {
        match self.triggers.try_send(trigger) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(trigger @ Trigger::FullReconcile { .. })) => select! {
                send(self.triggers, trigger) -> sent => sent.map_err(|_| End::Stopped),
                recv(self.stop) -> _ => Err(End::Stopped),
            },
            Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => Err(End::Stopped),
        }
    }

    /// Whether the root folder the session watches and NanoPix's database are still there.
    fn check_root(&self) -> Result<(), End> {
        self.root_present()?;
        if FileIdentity::of(&self.root) != *self.watched_root.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(End::RootReplaced);
        }
        Ok(())
    }

    /// Whether a root folder and NanoPix's database are there, as opening NanoPix checks them:
    /// one the system refuses to look into is reported as refused, not as missing.
    fn root_present(&self) -> Result<(), End> {
        crate::nanopix::database_under(&self.root).map(drop).map_err(End::RootMissing)
    }

    /// Waits, with doubling pauses, until the root is back or the watcher is stopped.
    fn wait_for_root(&self) -> Result<(), End> {
        let mut pause = self.poll_interval.min(FIRST_BACKOFF).max(Duration::from_millis(1));
        loop {
            self.pause(pause)?;
            if self.root_present().is_ok() {
                return Ok(());
            }
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits for `duration` unless the watcher is stopped first.
    fn pause(&self, duration: Duration) -> Result<(), End> {
        match self.stop.recv_timeout(duration) {
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => Err(End::Stopped),
        }
    }
}

/// Runs `body`; a panic in it becomes a `sync_error` event (code `internal`).
fn guarded(bus: &EventBus, body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        let message = format!("the watcher stopped: {}", crate::error::panic_message(payload.as_ref()));
        bus.error(&Error::Internal(message), None, None);
    }
}
