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
            serde_json::json!({"type": "sync_error", "seq": self.seq, "code": "internal", "message": message})
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
    /// Interrupted exports completed.
    pub repaired: u64,
    /// `sync_error` events sent.
    pub errors: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Whether it stopped before it was done: the handle was closing, or Live Sync was switched
    /// off during automatic work. What it left is done by the next reconcile.
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
        if self.dropped.load(Ordering::Relaxed) > 0 && self.sender.len() < EVENT_QUEUE_CAPACITY {
            // Taken whole, so two threads never report the same drops.
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.push(EventKind::EventsDropped { count: dropped }, Audience::Queue, Room::Bounded);
            }
        }
        if self.listener_dropped.load(Ordering::Relaxed) > 0 {
            self.report_listener_drops(Room::Bounded);
        }
        self.push(kind, Audience::Everyone, Room::Bounded);
    }

    /// Stamps `kind` and queues it even past the queue's capacity, after an `events_dropped`
    /// for the drops not reported yet. For `closed`, the last event: a host that never drained
    /// the queue still learns that the handle closed, and how many events it missed.
    pub fn emit_last(&self, kind: EventKind) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.push(EventKind::EventsDropped { count: dropped }, Audience::Queue, Room::Unbounded);
        }
        self.report_listener_drops(Room::Unbounded);
        self.push(kind, Audience::Everyone, Room::Unbounded);
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

    /// Stamps `kind` and queues it for `audience`, within `room`.
    fn push(&self, kind: EventKind, audience: Audience, room: Room) {
        // Stamping and queueing under one lock keeps `seq` in queue order across threads.
        let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        let listener = listener.as_ref().filter(|_| audience == Audience::Everyone);
        let event = self.stamp(kind);
        let copy = listener.map(|_| event.clone());
        // The queue first: a listener's wakeup must find the event already queued. Every push
        // holds the lock, so no other push can fill the queue between the check and the send.
        if !room.send(&self.sender, event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(listener), Some(copy)) = (listener, copy)
            && !room.send(listener, copy)
        {
            self.listener_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the listener alone, when it has `room`, how many copies it had no room for (the
    /// queue skips this event's `seq`; it has an `events_dropped` of its own).
    fn report_listener_drops(&self, room: Room) {
        let listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(listener) = listener.as_ref() else { return };
        if room == Room::Bounded && listener.len() >= EVENT_QUEUE_CAPACITY {
            return;
        }
        let count = self.listener_dropped.swap(0, Ordering::Relaxed);
        if count > 0 {
            room.send(listener, self.stamp(EventKind::EventsDropped { count }));
        }
    }

    /// The next event: `kind` with the next `seq` and the clock's time.
    fn stamp(&self, kind: EventKind) -> Event {
        Event { seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1, at: dart_timestamp(self.clock.now()), kind }
    }
}

/// Who receives an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// The queue and, while one is set, the listener.
    Everyone,
    /// The queue alone: the `events_dropped` event about the queue's own losses.
    Queue,
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
    /// Queues `event` if `queue` has room for it; says whether it did.
    fn send(self, queue: &Sender<Event>, event: Event) -> bool {
        (self == Self::Unbounded || queue.len() < EVENT_QUEUE_CAPACITY) && queue.send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use chrono::NaiveDate;

    fn bus() -> (EventBus, Receiver<Event>) {
        let now = NaiveDate::from_ymd_opt(2025, 1, 21).unwrap().and_hms_opt(15, 26, 46).unwrap();
        EventBus::new(Arc::new(ManualClock::new(now)))
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
