//! Events: what the sync tells its host, as Rust values that serialise to one JSON vocabulary.
//!
//! Every event carries `type`, `seq` (increasing per handle, from 1) and `at` (local time,
//! Dart's format). The [`EventBus`] stamps them and hands them to a bounded queue; it never
//! blocks the sync and never grows without bound: when the host stops draining, events are
//! counted and dropped, and an `events_dropped` event says how many once there is room again.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::Clock;
use crate::patient::dart_timestamp;

/// How many events wait for the host before new ones are dropped.
pub const EVENT_QUEUE_CAPACITY: usize = 65_536;

/// One thing that happened, stamped with its sequence number and time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increases by one for each event of a handle, starting at 1.
    pub seq: u64,
    /// When the event was made: local time, `2025-01-21T15:26:46.000`.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| {
            let message = error.to_string();
            serde_json::json!({
                "type": "sync_error", "seq": self.seq, "at": self.at, "code": "internal", "message": message,
                "external_id": null, "patient_id": null, "path": null,
            })
            .to_string()
        })
    }
}

/// What happened. Serialised with a `type` field in snake case.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A NanoPix patient was added to DentalTID.
    PatientImported {
        /// The new DentalTID `patients.id`.
        patient_id: i64,
        /// The NanoPix id.
        external_id: String,
        /// First name.
        first_name: String,
        /// Last name.
        last_name: String,
    },
    /// A NanoPix patient was linked to the DentalTID patient that is the same person.
    PatientLinked {
        /// The existing DentalTID `patients.id`, which now has `external_id` set.
        patient_id: i64,
        /// The NanoPix id.
        external_id: String,
        /// First name, as in DentalTID.
        first_name: String,
        /// Last name, as in DentalTID.
        last_name: String,
    },
    /// A NanoPix patient looks like one or more DentalTID patients but was not linked.
    PossibleDuplicate {
        /// The NanoPix id.
        external_id: String,
        /// The DentalTID patient: the one its import made, or the one exported as it.
        patient_id: i64,
        /// Why the patients look alike.
        reason: DuplicateReason,
        /// The DentalTID patients it looks like.
        candidates: Vec<DuplicateCandidate>,
    },
    /// A DentalTID patient was written to NanoPix.
    PatientExported {
        /// The DentalTID `patients.id`.
        patient_id: i64,
        /// The new NanoPix id.
        external_id: String,
        /// The patient's NanoPix folder.
        folder: String,
    },
    /// A linked NanoPix patient's row or folder is gone. Nothing was deleted in DentalTID.
    ExternalPatientRemoved {
        /// The DentalTID `patients.id`, kept.
        patient_id: i64,
        /// The NanoPix id that disappeared.
        external_id: String,
        /// What is missing: `row`, `folder` or `row_and_folder`.
        missing: String,
    },
    /// A NanoPix patient reported as removed is back.
    ExternalPatientRestored {
        /// The DentalTID `patients.id`.
        patient_id: i64,
        /// The NanoPix id.
        external_id: String,
    },
    /// A linked patient was deleted in DentalTID. The host may ask the user and call `delete_in_nanopix`.
    DeleteRequested {
        /// The DentalTID `patients.id` that was deleted.
        patient_id: i64,
        /// The NanoPix id that still exists.
        external_id: String,
    },
    /// Something went wrong; the rest of the sync went on.
    SyncError {
        /// A stable short code: see the README.
        code: String,
        /// What went wrong, for people.
        message: String,
        /// The NanoPix id concerned, if any.
        external_id: Option<String>,
        /// The DentalTID patient concerned, if any.
        patient_id: Option<i64>,
        /// The file or folder concerned, if any.
        path: Option<String>,
    },
    /// How the watcher notices changes now.
    WatcherMode {
        /// `native` or `polling`.
        mode: String,
        /// Why this mode.
        reason: String,
    },
    /// A full reconcile finished.
    Reconciled(ReconcileReport),
    /// Live Sync was switched on or off.
    LiveSyncChanged {
        /// Whether Live Sync is now on.
        enabled: bool,
    },
    /// The host did not drain events fast enough and some were dropped. A callback that fell
    /// 65,536 events behind gets one of its own, which the queue never sees.
    EventsDropped {
        /// How many events were dropped.
        count: u64,
    },
    /// The handle closed. This is always the last event.
    Closed,
}

/// Why a NanoPix patient was reported as a possible duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateReason {
    /// Same names and birth date, but auto-linking is off.
    AutoLinkOff,
    /// Same names and birth date, but more than one patient on a side.
    SeveralCandidates,
    /// Same names and birth date, but the DentalTID patient is already linked.
    AlreadyLinked,
    /// First and last name swapped, same birth date.
    SwappedNames,
    /// Names a small edit away, same birth date.
    SimilarNames,
    /// Same names, birth date missing on one side.
    MissingBirthDate,
    /// Same birth date; one side has only one name, which the other has as its first or last
    /// name.
    MissingName,
}

impl DuplicateReason {
    /// Every reason, in the order above.
    const ALL: [Self; 7] = [
        Self::AutoLinkOff,
        Self::SeveralCandidates,
        Self::AlreadyLinked,
        Self::SwappedNames,
        Self::SimilarNames,
        Self::MissingBirthDate,
        Self::MissingName,
    ];

    /// The reason's name, as events spell it and the sync's own tables store it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::AutoLinkOff => "auto_link_off",
            Self::SeveralCandidates => "several_candidates",
            Self::AlreadyLinked => "already_linked",
            Self::SwappedNames => "swapped_names",
            Self::SimilarNames => "similar_names",
            Self::MissingBirthDate => "missing_birth_date",
            Self::MissingName => "missing_name",
        }
    }

    /// The reason named `name`; `None` for a name this library never writes.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

/// A DentalTID patient named in a `possible_duplicate` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateCandidate {
    /// DentalTID `patients.id`.
    pub patient_id: i64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Birth date, `YYYY-MM-DD`, if known.
    pub date_of_birth: Option<String>,
}

/// What a reconcile did: the payload of the `reconciled` event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// NanoPix patients added to DentalTID.
    pub imported: u64,
    /// NanoPix patients linked to an existing DentalTID patient.
    pub linked: u64,
    /// DentalTID patients written to NanoPix.
    pub exported: u64,
    /// `possible_duplicate` events sent.
    pub possible_duplicates: u64,
    /// Linked NanoPix patients newly found missing.
    pub removed: u64,
    /// Interrupted exports completed; the first reconcile after `open` to succeed also counts
    /// those `open` completed.
    pub repaired: u64,
    /// `sync_error` events sent; the first reconcile after `open` to succeed also counts those of
    /// the repairs `open` tried.
    pub errors: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Whether it stopped before it was done: the handle was closing or stopped (its
    /// [`crate::Stopper`]), or Live Sync was switched off during automatic work. What it left is
    /// done by the next reconcile.
    pub stopped_early: bool,
}

/// Stamps events and queues them for the host.
#[derive(Debug)]
pub struct EventBus {
    clock: Arc<dyn Clock>,
    seq: AtomicU64,
    sender: Sender<Event>,
    dropped: AtomicU64,
    listener: Mutex<Option<Sender<Event>>>,
    /// Copies the listener had no room for since it last heard of drops.
    listener_dropped: AtomicU64,
}

impl EventBus {
    /// A bus and the receiving end of its queue.
    pub fn new(clock: Arc<dyn Clock>) -> (Self, Receiver<Event>) {
        // Unbounded in the channel's terms, bounded by `push`: the memory follows the events
        // actually waiting instead of being set aside for a full queue up front.
        let (sender, receiver) = crossbeam_channel::unbounded();
        let bus = Self {
            clock,
            seq: AtomicU64::new(0),
            sender,
            dropped: AtomicU64::new(0),
            listener: Mutex::new(None),
            listener_dropped: AtomicU64::new(0),
        };
        (bus, receiver)
    }

    /// Sets (or, with `None`, removes) a second queue that receives a copy of every later
    /// event: the callback thread's, while a callback is set. Returns the `seq` of the first
    /// event made after this call: copies with a lower one were made before it.
    pub fn set_listener(&self, listener: Option<Sender<Event>>) -> u64 {
        let mut current = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        *current = listener;
        self.listener_dropped.store(0, Ordering::Relaxed);
        // Every event is stamped under this lock, so none can take a `seq` in between.
        self.seq.load(Ordering::Relaxed) + 1
    }

    /// The `seq` the next event will have.
    pub fn next_seq(&self) -> u64 {
        // Taken under the lock every event is stamped under, as `set_listener` does.
        let _listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        self.seq.load(Ordering::Relaxed) + 1
    }

    /// Stamps `kind` and queues it. Never blocks.
    pub fn emit(&self, kind: EventKind) {
        self.push(kind, Room::Bounded);
    }

    /// Stamps `kind` and queues it even past the queue's capacity, after an `events_dropped`
    /// for the drops not reported yet. For `closed`, the last event: a host that never drained
    /// the queue still learns that the handle closed, and how many events it missed.
    pub fn emit_last(&self, kind: EventKind) {
        self.push(kind, Room::Unbounded);
    }

    /// Sends a `sync_error` event for `error`.
    pub fn error(&self, error: &crate::Error, external_id: Option<String>, patient_id: Option<i64>) {
        self.emit(EventKind::SyncError {
            code: error.code().to_owned(),
            message: error.to_string(),
            external_id,
            patient_id,
            path: error.path().map(|p| p.display().to_string()),
        });
    }

    /// Stamps `kind` and queues it for the queue and, while one is set, the listener, within
    /// `room`, each first told of the events it had no room for since it last heard of drops.
    fn push(&self, kind: EventKind, room: Room) {
        // Stamping and queueing under one lock keeps `seq` in queue order across threads, and
        // keeps the room a notice finds there for it: a count taken is never dropped with it.
        let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        self.report_drops(&self.sender, &self.dropped, room);
        if let Some(listener) = listener.as_ref() {
            self.report_drops(listener, &self.listener_dropped, room);
        }
        let event = self.stamp(kind);
        let copy = listener.as_ref().map(|_| event.clone());
        // The queue first: a listener's wakeup must find the event already queued. Every push
        // holds the lock, so no other push can fill the queue between the check and the send.
        if !room.send(&self.sender, event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(listener), Some(copy)) = (listener.as_ref(), copy)
            && !room.send(listener, copy)
        {
            self.listener_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells `queue` alone, when it has `room`, of the `dropped` events it had no room for: the
    /// other queue skips this event's `seq`. Only under the lock every push holds.
    fn report_drops(&self, queue: &Sender<Event>, dropped: &AtomicU64, room: Room) {
        if dropped.load(Ordering::Relaxed) == 0 || !room.fits(queue) {
            return;
        }
        let count = dropped.swap(0, Ordering::Relaxed);
        room.send(queue, self.stamp(EventKind::EventsDropped { count }));
    }

    /// The next event: `kind` with the next `seq` and the clock's time.
    fn stamp(&self, kind: EventKind) -> Event {
        Event { seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1, at: dart_timestamp(self.clock.now()), kind }
    }
}

/// How many events a queue may hold for an event to join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Fewer than [`EVENT_QUEUE_CAPACITY`].
    Bounded,
    /// Any number: for the last event of a handle only.
    Unbounded,
}

impl Room {
    /// Whether `queue` has room for one more event.
    fn fits(self, queue: &Sender<Event>) -> bool {
        self == Self::Unbounded || queue.len() < EVENT_QUEUE_CAPACITY
    }

    /// Queues `event` if `queue` has room for it; says whether it did.
    fn send(self, queue: &Sender<Event>, event: Event) -> bool {
        self.fits(queue) && queue.send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use chrono::{NaiveDate, NaiveDateTime};
    use std::time::{Duration, Instant};

    /// How long a test waits for something that should happen.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// The name of the thread [`HoldingClock`] holds.
    const HELD: &str = "held-emitter";

    fn morning() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 1, 21).unwrap().and_hms_opt(15, 26, 46).unwrap()
    }

    fn bus() -> (EventBus, Receiver<Event>) {
        EventBus::new(Arc::new(ManualClock::new(morning())))
    }

    /// A clock that holds the thread named [`HELD`] each time it asks the time (while it stamps
    /// an event, under the bus's lock), until it is let go.
    #[derive(Debug)]
    struct HoldingClock {
        held: Sender<()>,
        let_go: Receiver<()>,
    }

    impl Clock for HoldingClock {
        fn now(&self) -> NaiveDateTime {
            if std::thread::current().name() == Some(HELD) {
                self.held.send(()).unwrap();
                self.let_go.recv_timeout(PATIENCE).unwrap();
            }
            morning()
        }
    }

    /// Every event `events` holds, each `events_dropped` counted as the events it stands for.
    fn events_accounted_for(events: &Receiver<Event>) -> u64 {
        events
            .try_iter()
            .map(|event| match event.kind {
                EventKind::EventsDropped { count } => count,
                _ => 1,
            })
            .sum()
    }

    #[test]
    fn events_serialise_with_type_seq_and_at() {
        let (bus, events) = bus();
        bus.emit(EventKind::LiveSyncChanged { enabled: true });
        bus.emit(EventKind::Closed);
        let first: serde_json::Value = serde_json::from_str(&events.try_recv().unwrap().to_json()).unwrap();
        assert_eq!(first["type"], "live_sync_changed");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["at"], "2025-01-21T15:26:46.000");
        assert_eq!(first["enabled"], true);
        let second: serde_json::Value = serde_json::from_str(&events.try_recv().unwrap().to_json()).unwrap();
        assert_eq!(second["type"], "closed");
        assert_eq!(second["seq"], 2);
    }

    #[test]
    fn duplicate_reasons_are_stored_by_the_names_events_give_them() {
        for reason in DuplicateReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
            assert_eq!(DuplicateReason::from_name(reason.as_str()), Some(reason));
        }
        assert_eq!(DuplicateReason::from_name("similar"), None);
    }

    #[test]
    fn reconciled_report_fields_sit_at_the_top_level() {
        let (bus, events) = bus();
        bus.emit(EventKind::Reconciled(ReconcileReport { imported: 3, ..Default::default() }));
        let json: serde_json::Value = serde_json::from_str(&events.try_recv().unwrap().to_json()).unwrap();
        assert_eq!(json["type"], "reconciled");
        assert_eq!(json["imported"], 3);
    }

    #[test]
    fn a_full_queue_drops_and_then_says_how_many() {
        let (bus, events) = bus();
        for _ in 0..EVENT_QUEUE_CAPACITY + 5 {
            bus.emit(EventKind::Closed);
        }
        assert_eq!(events.len(), EVENT_QUEUE_CAPACITY);
        while events.try_recv().is_ok() {}
        bus.emit(EventKind::LiveSyncChanged { enabled: false });
        let notice = events.try_recv().unwrap();
        assert_eq!(notice.kind, EventKind::EventsDropped { count: 5 });
        assert_eq!(events.try_recv().unwrap().kind, EventKind::LiveSyncChanged { enabled: false });
    }

    /// The host takes one event from a full queue while one thread stamps its event (it found
    /// the queue full, so it has no drops to report) and another emits: that one finds the last
    /// free slot and the drops to report, but the slot is the first thread's once it has stamped.
    #[test]
    fn drops_reported_as_another_thread_takes_the_last_free_slot_are_still_counted() {
        let (held, holding) = crossbeam_channel::bounded(1);
        let (let_go, let_go_signal) = crossbeam_channel::bounded(1);
        let (bus, events) = EventBus::new(Arc::new(HoldingClock { held, let_go: let_go_signal }));
        let bus = Arc::new(bus);
        for _ in 0..EVENT_QUEUE_CAPACITY + 5 {
            bus.emit(EventKind::LiveSyncChanged { enabled: true });
        }
        let stamping = bus.clone();
        let stamping = std::thread::Builder::new()
            .name(HELD.into())
            .spawn(move || stamping.emit(EventKind::LiveSyncChanged { enabled: false }))
            .unwrap();
        holding.recv_timeout(PATIENCE).expect("the first thread stamps its event");
        events.try_recv().expect("the host takes an event");
        let racing = bus.clone();
        let racing = std::thread::spawn(move || racing.emit(EventKind::LiveSyncChanged { enabled: true }));
        // Drops taken outside the lock would be taken by now, before the racing thread waits for
        // the lock: wait a second for that, then go on either way.
        let end = Instant::now() + Duration::from_secs(1);
        while bus.dropped.load(Ordering::Relaxed) > 0 && Instant::now() < end {
            std::thread::yield_now();
        }
        let_go.send(()).unwrap();
        stamping.join().unwrap();
        racing.join().unwrap();
        let taken = 1;
        let queued = events_accounted_for(&events);
        bus.emit(EventKind::Closed);
        let received = taken + queued + events_accounted_for(&events);
        assert_eq!(received, EVENT_QUEUE_CAPACITY as u64 + 8, "every event is received or counted");
    }

    #[test]
    fn a_full_listener_drops_copies_and_then_tells_the_listener_alone() {
        let (bus, events) = bus();
        let (listener, copies) = crossbeam_channel::unbounded();
        bus.set_listener(Some(listener));
        for _ in 0..EVENT_QUEUE_CAPACITY + 3 {
            bus.emit(EventKind::Closed);
        }
        assert_eq!(copies.len(), EVENT_QUEUE_CAPACITY);
        while copies.try_recv().is_ok() {}
        while events.try_recv().is_ok() {}
        bus.emit(EventKind::LiveSyncChanged { enabled: true });
        let notice = copies.try_recv().unwrap();
        assert_eq!(notice.kind, EventKind::EventsDropped { count: 3 });
        let copy = copies.try_recv().unwrap();
        assert_eq!(copy.kind, EventKind::LiveSyncChanged { enabled: true });
        assert!(notice.seq < copy.seq);
        assert!(copies.try_recv().is_err(), "the queue's own notice is not copied");
        let queued: Vec<EventKind> = events.try_iter().map(|event| event.kind).collect();
        assert_eq!(queued, vec![EventKind::EventsDropped { count: 3 }, EventKind::LiveSyncChanged { enabled: true }]);
    }

    #[test]
    fn the_last_event_joins_a_full_queue_after_saying_what_was_dropped() {
        let (bus, events) = bus();
        let (listener, copies) = crossbeam_channel::unbounded();
        bus.set_listener(Some(listener));
        for _ in 0..EVENT_QUEUE_CAPACITY + 2 {
            bus.emit(EventKind::LiveSyncChanged { enabled: true });
        }
        bus.emit_last(EventKind::Closed);
        let tail: Vec<EventKind> = events.try_iter().skip(EVENT_QUEUE_CAPACITY).map(|event| event.kind).collect();
        assert_eq!(tail, [EventKind::EventsDropped { count: 2 }, EventKind::Closed]);
        let copies = copies.try_iter().skip(EVENT_QUEUE_CAPACITY).map(|event| event.kind).collect::<Vec<_>>();
        assert_eq!(copies, [EventKind::EventsDropped { count: 2 }, EventKind::Closed], "the listener too");
    }
}
