//! The engine thread's loop: host jobs, watcher triggers and the periodic full reconcile.
//!
//! While Live Sync is on, the watcher runs and its triggers lead to sync passes; bursts of
//! triggers are drained together so they cost one pass. While it is off, only host calls do
//! work. A panicking job or pass becomes a `sync_error` event, never a dead thread, and a pass
//! that failed (or whose work a locked database refused) is tried again after a pause that grows
//! while it keeps failing.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::Error;
use crate::engine::Engine;
use crate::error::panic_message;
use crate::events::{EventBus, ReconcileReport};
use crate::watcher::{Trigger, Watcher};

/// A unit of host work for the engine thread. It returns the [`Answer`] that gives its result to
/// its caller, for the loop to give once the watcher follows a switch of Live Sync off. Its work
/// runs under [`run_call`], so a panic in it becomes its caller's error.
pub(crate) type Job = Box<dyn FnOnce(&mut Engine) -> Answer + Send>;

/// Gives a job's result to its caller.
pub(crate) type Answer = Box<dyn FnOnce() + Send>;

/// How many triggers may wait; more are dropped, since the queued pass covers them.
const TRIGGER_CAPACITY: usize = 64;

/// The pause before a failed automatic pass is tried again; it doubles with each failure in a
/// row, up to [`LONGEST_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between tries of a failing automatic pass.
const LONGEST_RETRY_PAUSE: Duration = Duration::from_secs(60);

/// The failure of a pass that ended, but whose work on a patient a locked database refused.
const REFUSED_WHILE_BUSY: &str = "work refused by a locked database";

/// The next try of an automatic pass that failed (a locked database, an unplugged share): the
/// change that woke it may not come again.
#[derive(Debug, Clone)]
struct Retry {
    at: Instant,
    pause: Duration,
    /// The failure, as reported: the same failure again is not reported again.
    failure: String,
}

/// The engine plus the watcher it runs while Live Sync is on.
struct LiveLoop {
    engine: Engine,
    bus: Arc<EventBus>,
    trigger_sender: Sender<Trigger>,
    watcher: Option<Watcher>,
    next_full_reconcile: Option<Instant>,
    retry: Option<Retry>,
}

/// Runs jobs and live passes until the handle drops its job sender.
pub(crate) fn run(engine: Engine, jobs: Receiver<Job>) {
    let (trigger_sender, triggers) = crossbeam_channel::bounded(TRIGGER_CAPACITY);
    let bus = engine.bus();
    let mut live = LiveLoop { engine, bus, trigger_sender, watcher: None, next_full_reconcile: None, retry: None };
    live.follow_live_sync();
    loop {
        let timeout = live.next_wake().map_or(Duration::MAX, |at| at.saturating_duration_since(Instant::now()));
        select! {
            recv(jobs) -> job => match job {
                Ok(job) => live.run_job(job),
                Err(_) => break,
            },
            recv(triggers) -> trigger => {
                let batch: Vec<Trigger> = trigger.into_iter().chain(triggers.try_iter()).collect();
                live.on_triggers(&batch);
            },
            default(timeout) => live.on_timer(),
        }
    }
    live.stop_watching();
}

/// Runs a host call's `work` on `engine`. A panic in it (a bug) becomes the call's
/// [`Error::Internal`], with the panic's message, and a `sync_error` event saying the same.
pub(crate) fn run_call<T>(engine: &mut Engine, work: impl FnOnce(&mut Engine) -> crate::Result<T>) -> crate::Result<T> {
    catch_unwind(AssertUnwindSafe(|| work(engine))).unwrap_or_else(|panic| {
        let error = panicked("a sync call", panic.as_ref());
        engine.bus().error(&error, None, None);
        Err(error)
    })
}

/// The error a panic in `work` becomes: [`Error::Internal`] with the panic's message.
fn panicked(work: &str, panic: &(dyn Any + Send)) -> Error {
    Error::Internal(format!("{work} panicked: {}", panic_message(panic)))
}

impl LiveLoop {
    /// Runs `job` and gives its answer. A call that switched Live Sync off answers once the
    /// watcher is stopped and joined, so that no watcher event follows its answer; a call that
    /// switched it on answers before the watcher starts, without waiting for its full reconcile.
    fn run_job(&mut self, job: Job) {
        let answer = job(&mut self.engine);
        if self.engine.take_switched_off() {
            self.stop_watching();
        }
        answer();
        self.follow_live_sync();
    }

    /// Starts or stops the watcher to match the Live Sync setting; a start reconciles fully.
    /// When the setting cannot be read (a database locked past the busy timeout), the watcher
    /// follows the setting as this handle last stored or read it: only this handle writes it. A
    /// handle configured without automatic work never starts it.
    fn follow_live_sync(&mut self) {
        if !self.engine.config().automatic_work {
            return;
        }
        let enabled = self.engine.live_sync_setting().unwrap_or_else(|error| {
            self.bus.error(&error, None, None);
            self.engine.live_sync_stored()
        });
        match (enabled, self.watcher.is_some()) {
            (true, false) => self.start_watching(),
            (false, true) => self.stop_watching(),
            _ => {}
        }
    }

    /// Stops the watcher and joins its thread, if it runs, and drops the timers of its work.
    fn stop_watching(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            (self.next_full_reconcile, self.retry) = (None, None);
            watcher.stop();
        }
    }

    fn start_watching(&mut self) {
        match Watcher::start(self.engine.config(), self.trigger_sender.clone(), self.bus.clone()) {
            Ok(watcher) => self.watcher = Some(watcher),
            Err(error) => self.bus.error(&error, None, None),
        }
        self.full_reconcile();
    }

    fn on_triggers(&mut self, batch: &[Trigger]) {
        if self.watcher.is_none() {
            return;
        }
        if batch.iter().any(|t| matches!(t, Trigger::FullReconcile { .. })) {
            return self.full_reconcile();
        }
        self.automatic_pass(Engine::sync_changes);
    }

    fn full_reconcile(&mut self) {
        self.automatic_pass(Engine::reconcile);
        let interval = self.engine.config().full_reconcile_interval;
        self.next_full_reconcile = Instant::now().checked_add(interval);
    }

    /// When the loop must wake without a job or a trigger: for the next full reconcile, or to
    /// try a failed pass again.
    fn next_wake(&self) -> Option<Instant> {
        self.next_full_reconcile.into_iter().chain(self.retry.as_ref().map(|retry| retry.at)).min()
    }

    /// Runs the full reconcile when it is due, else tries the failed pass again (a live pass,
    /// which reconciles fully after any pass that failed: see [`Engine::sync_changes`]).
    fn on_timer(&mut self) {
        if self.next_full_reconcile.is_some_and(|at| at <= Instant::now()) {
            self.full_reconcile();
        } else {
            self.automatic_pass(Engine::sync_changes);
        }
    }

    /// Runs a pass as automatic work; its error or panic becomes a `sync_error` event (once
    /// while it fails the same way), and the pass is tried again after a pause that grows while
    /// it keeps failing. So is a pass whose work on a patient a locked database refused (its
    /// `sync_error` names the patient): a lock released without a commit wakes no pass. Once the
    /// handle's work is stopped, no pass starts.
    fn automatic_pass(&mut self, pass: fn(&mut Engine) -> crate::Result<ReconcileReport>) {
        if self.engine.stopping() {
            // Nothing left to wake for: a retry or a full reconcile due would never run.
            (self.retry, self.next_full_reconcile) = (None, None);
            return;
        }
        let engine = &mut self.engine;
        let (failure, stopped_early) = match catch_unwind(AssertUnwindSafe(|| engine.automatically(pass))) {
            Ok(Ok(report)) => (None, report.stopped_early),
            Ok(Err(error)) => (Some(error), false),
            Err(panic) => (Some(panicked("a live sync pass", panic.as_ref())), false),
        };
        // A pass that failed or stopped early may not have given NanoPix patients back yet: the
        // next one announces.
        if failure.is_none() && !stopped_early {
            self.engine.announce_delete_requests();
        }
        let refused = self.engine.take_refused_while_busy();
        let previous = self.retry.take();
        self.retry = match failure {
            Some(error) => {
                let failure = error.to_string();
                if previous.as_ref().is_none_or(|retry| retry.failure != failure) {
                    self.bus.error(&error, None, None);
                }
                Some(Retry::after(previous, failure))
            }
            None if refused => Some(Retry::after(previous, REFUSED_WHILE_BUSY.into())),
            None => None,
        };
    }
}

impl Retry {
    /// The next try of a pass that failed with `failure`: after [`FIRST_RETRY_PAUSE`], or twice
    /// the `previous` pause, up to [`LONGEST_RETRY_PAUSE`].
    fn after(previous: Option<Retry>, failure: String) -> Self {
        let pause = previous.map_or(FIRST_RETRY_PAUSE, |retry| (retry.pause * 2).min(LONGEST_RETRY_PAUSE));
        Retry { at: Instant::now() + pause, pause, failure }
    }
}
