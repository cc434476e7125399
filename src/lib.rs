//! nanopix-sync keeps DentalTID (a dental practice-management app) and NanoPix (an intraoral
//! X-ray program) in live, two-way sync of their patients.
//!
//! Open a [`NanoPixSync`] handle on NanoPix's `PatientData` folder and DentalTID's database,
//! then call [`NanoPixSync::reconcile`] ("Sync Now") or switch Live Sync on. Everything the
//! sync does is reported as an [`Event`]. The same handle is offered to C hosts through the
//! `nps_` functions of `include/nanopix_sync.h`.
//!
//! # Example
//! ```no_run
//! use nanopix_sync::{Config, NanoPixSync};
//!
//! let sync = NanoPixSync::open(Config::new("C:/NanoPix/PatientData", "dentaltid.db"))?;
//! let report = sync.reconcile()?;
//! println!("{} imported, {} exported", report.imported, report.exported);
//! for event in sync.events().try_iter() {
//!     println!("{}", event.to_json());
//! }
//! # Ok::<(), nanopix_sync::Error>(())
//! ```

#![warn(missing_docs)]

mod clock;
mod config;
mod dentaltid;
mod dispatch;
mod engine;
mod error;
mod events;
mod ffi;
mod file_identity;
mod id;
mod live;
mod matching;
mod nanopix;
mod patient;
mod sync;
mod values;
mod watcher;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, WatchMode};
pub use dentaltid::{DuplicateToReview, LinkState};
pub use dispatch::EventCallback;
pub use error::{Error, Result};
pub use events::{DuplicateCandidate, DuplicateReason, Event, EventKind, ReconcileReport};
pub use id::NanoPixId;
pub use matching::normalise_name;
pub use patient::{Patient, PatientFilter, Source};
pub use sync::{DeleteRequest, NanoPixSync, SourceInfo, Stopper};

/// The README, whose Rust example `cargo test` compiles, so that it keeps up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct Readme;
