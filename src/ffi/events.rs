//! Events for C hosts: the host's callbacks and the waiting queue behind `nps_next_event`.
//!
//! Both callbacks run on the library's event thread through [`NanoPixSync::set_callback`], which
//! already waits for in-flight calls when a callback is replaced. This module must never call a
//! host callback while holding a lock the host could need, and never block the sync.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError, select};

use crate::NanoPixSync;
use crate::events::Event;
use crate::ffi::boundary::in_callback;
use crate::ffi::error::{FfiError, NPS_CLOSED, NPS_TIMEOUT};
use crate::ffi::strings::to_c_string;

/// Receives one event as JSON; `event_json` is valid only during the call.
pub type NpsEventCallback = Option<unsafe extern "C" fn(userdata: *mut c_void, event_json: *const c_char)>;

/// Says that an event was queued for `nps_next_event`; it carries no payload.
pub type NpsWakeupCallback = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// The host's `userdata` pointer, carried to the event thread.
///
/// The library never dereferences it. The host promises, by passing it to
/// `nps_set_event_callback` or `nps_set_wakeup_callback`, that its callback may use it from
/// the library's event thread until the callback is replaced.
#[derive(Debug, Clone, Copy)]
struct Userdata(*mut c_void);

// SAFETY: the pointer is only handed back to the host's own callback; the host vouches that
// its callback may use it on another thread (see `Userdata`).
unsafe impl Send for Userdata {}
// SAFETY: as above; the library never reads or writes through the pointer.
unsafe impl Sync for Userdata {}

/// One callback a C host set, with its `userdata` and the `seq` of the first event it is given:
/// the first made once it was set.
#[derive(Debug, Clone, Copy)]
struct HostCallback<F> {
    function: F,
    userdata: Userdata,
    from_seq: u64,
}

impl<F: Copy> HostCallback<F> {
    /// `callback` with `userdata`, given events from `from_seq` on; `None` for a NULL callback.
    fn new(callback: Option<F>, userdata: *mut c_void, from_seq: u64) -> Option<Self> {
        callback.map(|function| Self { function, userdata: Userdata(userdata), from_seq })
    }

    /// The function and its userdata, if `event` was made once it was set.
    fn for_event(&self, event: &Event) -> Option<(F, *mut c_void)> {
        (event.seq >= self.from_seq).then_some((self.function, self.userdata.0))
    }
}

/// The callbacks a C host has set on one handle. Each is given the events made once it was set,
/// whatever becomes of the other.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostCallbacks {
    event: Option<HostCallback<unsafe extern "C" fn(*mut c_void, *const c_char)>>,
    wakeup: Option<HostCallback<unsafe extern "C" fn(*mut c_void)>>,
}

impl HostCallbacks {
    /// Replaces the event callback (`None` clears it); the new one is given events from `from_seq` on.
    pub fn set_event(&mut self, callback: NpsEventCallback, userdata: *mut c_void, from_seq: u64) {
        self.event = HostCallback::new(callback, userdata, from_seq);
    }

    /// Replaces the wakeup callback (`None` clears it); the new one is given events from `from_seq` on.
    pub fn set_wakeup(&mut self, callback: NpsWakeupCallback, userdata: *mut c_void, from_seq: u64) {
        self.wakeup = HostCallback::new(callback, userdata, from_seq);
    }

    /// Installs these callbacks on `sync`; returns once no call of the previous ones is in flight.
    /// Events already on their way to the previous ones go to these, each taking those made once
    /// it was set: the callback that did not change misses none.
    pub fn install(self, sync: &NanoPixSync) {
        if self.event.is_none() && self.wakeup.is_none() {
            sync.set_callback(None);
        } else {
            sync.carry_on_callback(Box::new(move |event: &Event| self.deliver(event)));
        }
    }

    fn deliver(&self, event: &Event) {
        in_callback(|| {
            if let Some((callback, userdata)) = self.event.and_then(|callback| callback.for_event(event)) {
                let json = to_c_string(event.to_json());
                // SAFETY: the host gave this function pointer and userdata for exactly this call.
                unsafe { callback(userdata, json.as_ptr()) };
            }
            if let Some((callback, userdata)) = self.wakeup.and_then(|callback| callback.for_event(event)) {
                // SAFETY: as above.
                unsafe { callback(userdata) };
            }
        });
    }
}

/// Takes the next event from `events`, waiting at most `timeout`.
///
/// Events still queued are returned even after close; then `closed` (which disconnects when the
/// handle closes) turns waiting into `NPS_CLOSED`. So does `closing`, when given (for a wait
/// inside a callback), as soon as it disconnects.
pub(crate) fn next_event(
    events: &Receiver<Event>,
    closed: &Receiver<()>,
    closing: Option<&Receiver<()>>,
    timeout: Duration,
) -> Result<Event, FfiError> {
    match events.try_recv() {
        Ok(event) => return Ok(event),
        Err(TryRecvError::Disconnected) => return Err(closed_error()),
        Err(TryRecvError::Empty) => {}
    }
    if is_closed(closed) || closing.is_some_and(is_closed) {
        // The close may have queued its last events (`closed` among them) since the look above.
        return events.try_recv().map_err(|_| closed_error());
    }
    if timeout.is_zero() {
        return Err(timeout_error(timeout));
    }
    let never = crossbeam_channel::never();
    select! {
        recv(events) -> event => event.map_err(|_| closed_error()),
        recv(closed) -> _ => events.try_recv().map_err(|_| closed_error()),
        recv(closing.unwrap_or(&never)) -> _ => events.try_recv().map_err(|_| closed_error()),
        default(timeout) => Err(timeout_error(timeout)),
    }
}

fn is_closed(closed: &Receiver<()>) -> bool {
    matches!(closed.try_recv(), Err(TryRecvError::Disconnected))
}

fn closed_error() -> FfiError {
    FfiError::new(NPS_CLOSED, "the sync handle is closed")
}

fn timeout_error(timeout: Duration) -> FfiError {
    FfiError::new(NPS_TIMEOUT, format!("no event within {} ms", timeout.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventBus;
    use crate::{EventKind, SystemClock};
    use std::sync::Arc;

    #[test]
    fn queued_events_come_first_then_timeout() {
        let (bus, events) = EventBus::new(Arc::new(SystemClock));
        let (_signal, closed) = crossbeam_channel::bounded::<()>(0);
        bus.emit(EventKind::LiveSyncChanged { enabled: true });
        let event = next_event(&events, &closed, None, Duration::ZERO).unwrap();
        assert_eq!(event.kind, EventKind::LiveSyncChanged { enabled: true });
        assert_eq!(next_event(&events, &closed, None, Duration::ZERO).unwrap_err().code, NPS_TIMEOUT);
        assert_eq!(next_event(&events, &closed, None, Duration::from_millis(20)).unwrap_err().code, NPS_TIMEOUT);
    }

    #[test]
    fn closing_wakes_every_waiter() {
        let (_bus, events) = EventBus::new(Arc::new(SystemClock));
        let (signal, closed) = crossbeam_channel::bounded::<()>(0);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (events, closed) = (events.clone(), closed.clone());
                std::thread::spawn(move || {
                    next_event(&events, &closed, None, Duration::from_secs(30)).unwrap_err().code
                })
            })
            .collect();
        drop(signal);
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), NPS_CLOSED);
        }
    }

    #[test]
    fn events_queued_before_close_are_still_delivered() {
        let (bus, events) = EventBus::new(Arc::new(SystemClock));
        let (signal, closed) = crossbeam_channel::bounded::<()>(0);
        bus.emit(EventKind::Closed);
        drop(signal);
        assert_eq!(next_event(&events, &closed, None, Duration::ZERO).unwrap().kind, EventKind::Closed);
        assert_eq!(next_event(&events, &closed, None, Duration::from_secs(5)).unwrap_err().code, NPS_CLOSED);
    }
}
