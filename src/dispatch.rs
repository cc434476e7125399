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

/// The callback set, with the `seq` of the first event it may be given: copies of earlier
/// events still on their way to the callback thread were made for the callback before it.
struct Current {
    callback: Arc<EventCallback>,
    from_seq: u64,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Current>>,
    in_flight: Mutex<()>,
}

/// The callback thread and the slot holding the current callback.
pub(crate) struct Dispatcher {
    bus: Arc<EventBus>,
    feed: Sender<Event>,
    slot: Arc<Slot>,
    done: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The callback thread's id, kept once the thread is stopped: a callback that closed the
    /// handle is still called on it until it returns.
    thread_id: ThreadId,
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
        let thread_id = thread.thread().id();
        Ok(Self { bus, feed, slot, done: Some(done), thread: Some(thread), thread_id })
    }

    /// Sets or clears the callback; returns once no call of the previous one is in flight. A
    /// new callback is given only the events made from then on.
    pub fn set(&self, callback: Option<EventCallback>) {
        self.install(callback, false);
    }

    /// Sets the callback as the one before it carried on: it is also given the events already on
    /// their way to the one before (it decides itself what to do with them). Returns once no call
    /// of the one before is in flight.
    pub fn carry_on(&self, callback: EventCallback) {
        self.install(Some(callback), true);
    }

    fn install(&self, callback: Option<EventCallback>, carrying_on: bool) {
        // No call is in flight while the callback changes (unless it changes from inside one).
        let _in_flight =
            (!self.on_callback_thread()).then(|| self.slot.in_flight.lock().unwrap_or_else(PoisonError::into_inner));
        let mut current = self.slot.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = match callback {
            Some(callback) => {
                let before = current.as_ref().filter(|_| carrying_on).map(|current| current.from_seq);
                // A callback carried on keeps the feed as it is: it is still owed an
                // `events_dropped` for the copies it had no room for.
                let from_seq = match before {
                    Some(from_seq) => from_seq,
                    None => self.bus.set_listener(Some(self.feed.clone())),
                };
                Some(Current { callback: Arc::new(callback), from_seq })
            }
            None => {
                self.bus.set_listener(None);
                None
            }
        };
    }

    /// Delivers the events already queued, then stops and joins the thread. Stopped from inside
    /// the callback (a host closing its last handle there), the thread cannot join itself: it
    /// ends on its own once the callback returns.
    pub fn stop(&mut self) {
        self.bus.set_listener(None);
        self.done = None;
        let on_callback_thread = self.on_callback_thread();
        if let Some(thread) = self.thread.take()
            && !on_callback_thread
        {
            let _ = thread.join();
        }
    }

    /// Whether the caller is the callback thread, inside a call of the callback (also once the
    /// handle was closed from there).
    fn on_callback_thread(&self) -> bool {
        self.thread_id == std::thread::current().id()
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
    let current = slot.current.lock().unwrap_or_else(PoisonError::into_inner);
    let callback = current.as_ref().filter(|current| event.seq >= current.from_seq).map(|c| c.callback.clone());
    drop(current);
    if let Some(callback) = callback {
        // A panicking host callback loses this one delivery, never the thread.
        let _ = catch_unwind(AssertUnwindSafe(|| callback(event)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use crate::events::{EVENT_QUEUE_CAPACITY, EventKind};
    use chrono::NaiveDate;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_callback_carried_on_still_hears_of_the_copies_it_had_no_room_for() {
        let now = NaiveDate::from_ymd_opt(2025, 1, 21).unwrap().and_hms_opt(15, 26, 46).unwrap();
        let (bus, _queue) = EventBus::new(Arc::new(ManualClock::new(now)));
        let bus = Arc::new(bus);
        let mut dispatcher = Dispatcher::start(bus.clone()).unwrap();
        let (seen, heard) = crossbeam_channel::unbounded();
        let (entered, first_call) = crossbeam_channel::bounded(1);
        let (release, released) = crossbeam_channel::bounded::<()>(1);
        let held = AtomicBool::new(false);
        let recorder = seen.clone();
        dispatcher.set(Some(Box::new(move |event: &Event| {
            if !held.swap(true, Ordering::Relaxed) {
                let _ = entered.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
            }
            let _ = recorder.send(event.kind.clone());
        })));
        bus.emit(EventKind::LiveSyncChanged { enabled: true });
        first_call.recv_timeout(Duration::from_secs(30)).expect("the callback is called");
        for _ in 0..EVENT_QUEUE_CAPACITY + 3 {
            bus.emit(EventKind::LiveSyncChanged { enabled: true });
        }
        release.send(()).unwrap();
        // The same callback, carried on as the C API does when the wakeup callback is set.
        dispatcher.carry_on(Box::new(move |event: &Event| {
            let _ = seen.send(event.kind.clone());
        }));
        // The last event, as the handle queues it at close: it reports copies not reported yet.
        bus.emit_last(EventKind::Closed);
        dispatcher.stop();
        let notices: Vec<EventKind> =
            heard.try_iter().filter(|kind| matches!(kind, EventKind::EventsDropped { .. })).collect();
        assert_eq!(notices, [EventKind::EventsDropped { count: 3 }], "the callback hears of the copies it missed");
    }
}
