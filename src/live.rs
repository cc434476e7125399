//! The engine thread's loop: host jobs, watcher triggers and the periodic full reconcile.
//!
//! While Live Sync is on, the watcher runs and its triggers lead to sync passes; bursts of
//! triggers are drained together so they cost one pass. While it is off, only host calls do
//! work. A panicking job or pass becomes a `sync_error` event, never a dead thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::Error;
use crate::engine::Engine;
use crate::events::{EventBus, ReconcileReport};
use crate::watcher::{Trigger, Watcher};

/// A unit of host work for the engine thread.
pub(crate) type Job = Box<dyn FnOnce(&mut Engine) + Send>;

/// How many triggers may wait; more are dropped, since the queued pass covers them.
const TRIGGER_CAPACITY: usize = 64;

/// The engine plus the watcher it runs while Live Sync is on.
struct LiveLoop {
    engine: Engine,
    bus: Arc<EventBus>,
    trigger_sender: Sender<Trigger>,
    watcher: Option<Watcher>,
    next_full_reconcile: Option<Instant>,
}

/// Runs jobs and live passes until the handle drops its job sender.
pub(crate) fn run(engine: Engine, jobs: Receiver<Job>) {
    let (trigger_sender, triggers) = crossbeam_channel::bounded(TRIGGER_CAPACITY);
    let bus = engine.bus();
    let mut live = LiveLoop { engine, bus, trigger_sender, watcher: None, next_full_reconcile: None };
    live.follow_live_sync();
    loop {
        let timeout = live.next_full_reconcile.map_or(Duration::MAX, |at| at.saturating_duration_since(Instant::now()));
        select! {
            recv(jobs) -> job => match job {
                Ok(job) => live.run_job(job),
                Err(_) => break,
            },
            recv(triggers) -> trigger => {
                let batch: Vec<Trigger> = trigger.into_iter().chain(triggers.try_iter()).collect();
                live.on_triggers(&batch);
            },
            default(timeout) => live.full_reconcile(),
        }
    }
    if let Some(watcher) = live.watcher.take() {
        watcher.stop();
    }
}

impl LiveLoop {
    fn run_job(&mut self, job: Job) {
        let engine = &mut self.engine;
        if catch_unwind(AssertUnwindSafe(|| job(engine))).is_err() {
            self.bus.error(&Error::Internal("a sync call panicked".into()), None, None);
        }
        self.follow_live_sync();
    }

    /// Starts or stops the watcher to match the Live Sync setting; a start reconciles fully.
    /// When the setting cannot be read, the watcher stays as it is.
    fn follow_live_sync(&mut self) {
        let enabled = self.engine.live_sync().unwrap_or_else(|error| {
            self.bus.error(&error, None, None);
            self.watcher.is_some()
        });
        match (enabled, self.watcher.is_some()) {
            (true, false) => self.start_watching(),
            (false, true) => {
                self.next_full_reconcile = None;
                if let Some(watcher) = self.watcher.take() {
                    watcher.stop();
                }
            }
            _ => {}
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

    /// Runs a pass as automatic work; its error or panic becomes a `sync_error` event.
    fn automatic_pass(&mut self, pass: fn(&mut Engine) -> crate::Result<ReconcileReport>) {
        let engine = &mut self.engine;
        match catch_unwind(AssertUnwindSafe(|| engine.automatically(pass))) {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => self.bus.error(&error, None, None),
            Err(_) => self.bus.error(&Error::Internal("a live sync pass panicked".into()), None, None),
        }
    }
}
