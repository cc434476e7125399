//! The live watcher: turns file events, NanoPix commits and polling into [`Trigger`]s for the
//! engine thread.
//!
//! File events are hints, not the truth: the watcher only says *that* something may have
//! changed, and the engine reads both databases to find out *what*. It never touches either
//! database beyond `PRAGMA data_version` on its own read connections.

use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::events::EventBus;
use crate::{Config, Result};

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

/// A running watcher thread. Dropping it signals the thread; [`Watcher::stop`] also joins it.
#[derive(Debug)]
pub(crate) struct Watcher {}

#[allow(unused_variables, dead_code)]
impl Watcher {
    /// Starts watching the folders of `config`, sending triggers to `triggers` and
    /// `watcher_mode` / `sync_error` events to `bus`.
    pub fn start(config: &Config, triggers: Sender<Trigger>, bus: Arc<EventBus>) -> Result<Self> {
        todo!()
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {}
}
