//! Callback delivery: a library thread that hands each event to the host's callback.
//!
//! The engine only queues events, so a slow or blocking callback delays delivery but never the
//! sync. A panicking callback is caught. Replacing the callback waits until no call of the old
//! one is in flight (unless it is replaced from inside the callback itself).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};

use crossbeam_channel::{Receiver, Sender, select};

use crate::events::{Event, EventBus};

/// A host callback for events.
pub type EventCallback = Box<dyn Fn(&Event) + Send + Sync>;

#[derive(Default)]
struct Slot {
    callback: Mutex<Option<Arc<EventCallback>>>,
    in_flight: Mutex<()>,
}

/// The callback thread and the slot holding the current callback.
pub(crate) struct Dispatcher {
    bus: Arc<EventBus>,
    feed: Sender<Event>,
    slot: Arc<Slot>,
    done: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Starts the callback thread; it receives copies of `bus`'s events while a callback is set.
    pub fn start(bus: Arc<EventBus>) -> std::io::Result<Self> {
        let (feed, events) = crossbeam_channel::unbounded();
        let slot = Arc::new(Slot::default());
        let (done, done_signal) = crossbeam_channel::bounded(0);
        let thread_slot = slot.clone();
        let thread = std::thread::Builder::new()
            .name("nanopix-sync-events".into())
            .spawn(move || deliver(&thread_slot, &events, &done_signal))?;
        Ok(Self { bus, feed, slot, done: Some(done), thread: Some(thread) })
    }

    /// Sets or clears the callback; returns once no call of the previous one is in flight.
    pub fn set(&self, callback: Option<EventCallback>) {
        let listening = callback.is_some();
        if !listening {
            self.bus.set_listener(None);
        }
        *self.slot.callback.lock().unwrap_or_else(PoisonError::into_inner) = callback.map(Arc::new);
        if listening {
            self.bus.set_listener(Some(self.feed.clone()));
        }
        if self.thread_id() != Some(std::thread::current().id()) {
            drop(self.slot.in_flight.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Delivers the events already queued, then stops and joins the thread.
    pub fn stop(&mut self) {
        self.bus.set_listener(None);
        self.done = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn thread_id(&self) -> Option<ThreadId> {
        self.thread.as_ref().map(|thread| thread.thread().id())
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn deliver(slot: &Slot, events: &Receiver<Event>, done: &Receiver<()>) {
    loop {
        select! {
            recv(events) -> event => match event {
                Ok(event) => call(slot, &event),
                Err(_) => return,
            },
            recv(done) -> _ => {
                events.try_iter().for_each(|event| call(slot, &event));
                return;
            }
        }
    }
}

fn call(slot: &Slot, event: &Event) {
    let _in_flight = slot.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
    let callback = slot.callback.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(callback) = callback {
        // A panicking host callback loses this one delivery, never the thread.
        let _ = catch_unwind(AssertUnwindSafe(|| callback(event)));
    }
}
