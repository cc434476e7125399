//! Duplicate matching: name normalisation, the exact-match index and near-miss detection.
//!
//! Pure decisions on plain values: no SQL and no I/O. Matching is linear in the number of
//! patients: every lookup goes through a hash index, never a comparison of every pair.

use crate::events::DuplicateReason;
use crate::patient::{NanoPixPatient, Patient};

/// What to do with one unlinked NanoPix patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Link it to this existing DentalTID patient.
    Link { patient_id: i64 },
    /// Import it as a new DentalTID patient, reporting these look-alikes if any.
    Import { possible_duplicate: Option<(DuplicateReason, Vec<i64>)> },
}

/// Normalises a name for matching: compatibility decomposition, combining marks (and Arabic
/// harakat) dropped, tatweel removed, case-folded, trimmed, inner whitespace collapsed.
///
/// # Example
/// ```
/// use nanopix_sync::normalise_name;
/// assert_eq!(normalise_name("  Zoé  LEFÈVRE "), "zoe lefevre");
/// ```
pub fn normalise_name(_name: &str) -> String {
    todo!()
}

/// Decides, for each unlinked NanoPix patient in `nanopix` (same order), whether to link or
/// import it. `dentaltid` is every DentalTID patient; those with an `external_id` are linked.
#[allow(unused_variables)]
pub(crate) fn decide(nanopix: &[NanoPixPatient], dentaltid: &[Patient], auto_link: bool) -> Vec<Decision> {
    todo!()
}
