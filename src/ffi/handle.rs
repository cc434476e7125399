//! `NpsHandle`, the opaque handle C hosts hold, and the registry of handles not yet freed.
//!
//! Each call borrows the sync by cloning an `Arc` out of the slot, so no lock is held during a
//! call. `close` empties the slot first (later calls get `NPS_CLOSED` at once, never wait), then
//! waits until the calls in flight have finished, and only then stops the threads. A closed handle
//! stays valid memory, even after `nps_free`: freeing empties it but keeps its memory for the life
//! of the process, so its address is never given to another handle and a stale copy of the pointer
//! only ever reaches a closed, empty handle.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::events::Event;
use crate::ffi::boundary::is_in_callback;
use crate::ffi::error::{FfiError, NPS_CLOSED};
use crate::ffi::events::{HostCallbacks, NpsEventCallback, NpsWakeupCallback, next_event};
use crate::{Config, NanoPixSync};

/// An open sync, as C hosts see it: an opaque pointer from `nps_open`, released by `nps_free`.
pub struct NpsHandle {
    sync: Mutex<Option<Arc<NanoPixSync>>>,
    call_ended: Condvar,
    events: Receiver<Event>,
    closed: Receiver<()>,
    close_signal: Mutex<Option<Sender<()>>>,
    /// Disconnects as soon as `close` starts: wakes a callback waiting in `nps_next_event`, which
    /// `close` may otherwise wait for (through a call replacing that callback).
    closing: Receiver<()>,
    closing_signal: Mutex<Option<Sender<()>>>,
    callbacks: Mutex<HostCallbacks>,
}

/// Addresses of the handles `nps_open` made and `nps_free` has not released yet.
static LIVE_HANDLES: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// The handles `nps_free` released: closed and emptied, kept so their addresses stay taken.
static RETIRED_HANDLES: Mutex<Vec<&'static NpsHandle>> = Mutex::new(Vec::new());

impl NpsHandle {
    /// Opens a sync and registers the new handle; the host owns the returned box.
    pub fn open(config: Config) -> Result<Box<Self>, FfiError> {
        let sync = NanoPixSync::open(config)?;
        let (close_signal, closed) = crossbeam_channel::bounded(0);
        let (closing_signal, closing) = crossbeam_channel::bounded(0);
        let handle = Box::new(Self {
            events: sync.events(),
            sync: Mutex::new(Some(Arc::new(sync))),
            call_ended: Condvar::new(),
            closed,
            close_signal: Mutex::new(Some(close_signal)),
            closing,
            closing_signal: Mutex::new(Some(closing_signal)),
            callbacks: Mutex::new(HostCallbacks::default()),
        });
        live_handles().push(handle.address());
        Ok(handle)
    }

    /// Runs `call` on the open sync, or fails with `NPS_CLOSED`. A `close` waiting for the call
    /// is woken when it ends, even by a panic.
    pub fn with_sync<T, E: Into<FfiError>>(
        &self,
        call: impl FnOnce(&NanoPixSync) -> Result<T, E>,
    ) -> Result<T, FfiError> {
        let sync = self.slot().clone().ok_or_else(|| FfiError::new(NPS_CLOSED, "the sync handle is closed"))?;
        let result = catch_unwind(AssertUnwindSafe(|| call(&sync)));
        drop(sync);
        // Taking the lock orders this wake-up after `close` has started waiting.
        let _slot = self.slot();
        self.call_ended.notify_all();
        result.unwrap_or_else(|panic| resume_unwind(panic)).map_err(Into::into)
    }

    /// Stops and joins every thread and wakes every waiter. Calling it again does nothing; a
    /// second `close` racing the first returns once the first has finished.
    ///
    /// Cuts short the calls in flight on other threads and waits for them; never call it from
    /// inside a callback.
    pub fn close(&self) {
        self.closing_signal.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut close_signal = self.close_signal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut sync) = self.take_when_idle() {
            sync.stop_engine();
            // `closed` is queued: waiters, a callback draining the queue among them, need not
            // wait for the callback thread to deliver the last events.
            close_signal.take();
            sync.close();
        }
        close_signal.take();
    }

    /// Empties the slot, tells the calls in flight to stop early, then waits until no call holds
    /// the sync any more.
    fn take_when_idle(&self) -> Option<NanoPixSync> {
        let mut slot = self.slot();
        let mut shared = slot.take()?;
        shared.stop_early();
        loop {
            match Arc::try_unwrap(shared) {
                Ok(sync) => return Some(sync),
                Err(still_shared) => shared = still_shared,
            }
            slot = self.call_ended.wait(slot).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<NanoPixSync>>> {
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next event, waiting at most `timeout`; `NPS_TIMEOUT` or `NPS_CLOSED` otherwise.
    pub fn next_event(&self, timeout: Duration) -> Result<Event, FfiError> {
        // A callback waiting here holds up whoever replaces it, and so a close waiting for that
        // call: it stops waiting as soon as the close starts.
        let closing = is_in_callback().then_some(&self.closing);
        next_event(&self.events, &self.closed, closing, timeout)
    }

    /// Replaces the event callback; returns once no call of the old one is in flight.
    pub fn set_event_callback(
        &self,
        callback: NpsEventCallback,
        userdata: *mut std::ffi::c_void,
    ) -> Result<(), FfiError> {
        self.update_callbacks(|callbacks, from_seq| callbacks.set_event(callback, userdata, from_seq))
    }

    /// Replaces the wakeup callback; returns once no call of the old one is in flight.
    pub fn set_wakeup_callback(
        &self,
        callback: NpsWakeupCallback,
        userdata: *mut std::ffi::c_void,
    ) -> Result<(), FfiError> {
        self.update_callbacks(|callbacks, from_seq| callbacks.set_wakeup(callback, userdata, from_seq))
    }

    /// Applies `change` to the host's callbacks, giving it the `seq` of the next event, and
    /// installs them.
    fn update_callbacks(&self, change: impl FnOnce(&mut HostCallbacks, u64)) -> Result<(), FfiError> {
        let mut callbacks = self.callbacks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut updated = *callbacks;
        let installed = self.with_sync(|sync| {
            change(&mut updated, sync.next_event_seq());
            updated.install(sync);
            Ok::<_, FfiError>(())
        });
        if installed.is_err() {
            // A close on another thread may still be delivering the last events to the old
            // callbacks: it holds this lock until the callback thread is joined.
            drop(self.close_signal.lock().unwrap_or_else(PoisonError::into_inner));
        }
        installed?;
        *callbacks = updated;
        Ok(())
    }

    fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Closes the handle, drops the events still queued and the host's callbacks, and keeps
    /// its memory for good (a few kilobytes), among the retired handles.
    pub fn retire(&'static self) {
        self.close();
        self.events.try_iter().for_each(drop);
        *self.callbacks.lock().unwrap_or_else(PoisonError::into_inner) = HostCallbacks::default();
        RETIRED_HANDLES.lock().unwrap_or_else(PoisonError::into_inner).push(self);
    }
}

/// Removes `handle` from the registry; returns whether it was there (made by `nps_open` and not
/// released yet).
pub(crate) fn unregister(handle: *mut NpsHandle) -> bool {
    let mut live = live_handles();
    let registered = live.len();
    live.retain(|&address| address != handle as usize);
    live.len() < registered
}

/// Whether `handle` was made by `nps_open` and not released by `nps_free` yet.
pub(crate) fn is_registered(handle: &NpsHandle) -> bool {
    live_handles().contains(&handle.address())
}

/// A handle that `nps_open` made and `nps_free` has not released yet, if any.
pub(crate) fn any_live_handle() -> Option<*mut NpsHandle> {
    live_handles().last().map(|&address| address as *mut NpsHandle)
}

fn live_handles() -> std::sync::MutexGuard<'static, Vec<usize>> {
    LIVE_HANDLES.lock().unwrap_or_else(PoisonError::into_inner)
}
