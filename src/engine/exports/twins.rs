//! Twins: the DentalTID patients linked to NanoPix with the names and birth date of a patient an
//! export writes, kept on the review list with its link and reported.

use chrono::NaiveDate;
use foldhash::HashSet;

use crate::engine::{Engine, MAX_CANDIDATE_DATES};
use crate::events::{EventKind, ReconcileReport};
use crate::matching::{DentalIndex, MatchKey, Matcher, PossibleDuplicate};
use crate::patient::Patient;
use crate::{NanoPixId, Result};

impl Engine {
    /// The DentalTID patients an export of one of `patients` may duplicate, in a matcher: those
    /// born on their birth dates (or every patient, for many dates), with those linked to
    /// NanoPix marked. `None` when none of `patients` has a birth date.
    pub(super) fn twin_finder(&mut self, patients: &[Patient]) -> Result<Option<Matcher>> {
        let dates: Vec<NaiveDate> =
            patients.iter().filter_map(|patient| patient.date_of_birth).collect::<HashSet<_>>().into_iter().collect();
        if dates.is_empty() {
            return Ok(None);
        }
        self.ensure_indexes()?;
        let mut index = DentalIndex::default();
        match dates.len() {
            ..=MAX_CANDIDATE_DATES => self.dentaltid.add_candidates_born_on_only(&dates, &mut index)?,
            _ => self.dentaltid.add_all_candidates(&mut index)?,
        }
        self.matcher_over(index, []).map(Some)
    }

    /// The linked twins of `patient`, exported alone (see [`linked_twins_of`]); an error reading
    /// them goes to `report`, and none are given.
    pub(super) fn twins_of(&mut self, patient: &Patient, report: &mut ReconcileReport) -> Option<Twins> {
        match self.twin_finder(std::slice::from_ref(patient)) {
            Ok(twins) => linked_twins_of(twins.as_ref(), patient, &HashSet::default()),
            Err(error) => {
                self.report_error(&error, None, Some(patient.id), report);
                None
            }
        }
    }

    /// Reports the linked twins the export of patient `patient_id` as `external_id` kept on the
    /// review list when it linked the patient (`possible_duplicate`), as an import of such a
    /// person is reported: just those the list holds, see [`crate::dentaltid::DentalTid::finish_export`].
    pub(super) fn report_twins(&mut self, patient_id: i64, external_id: NanoPixId, report: &mut ReconcileReport) {
        let Some((kept_for, found)) = self.kept_twins.take() else { return };
        if kept_for != patient_id {
            return;
        }
        report.possible_duplicates += 1;
        self.bus.emit(EventKind::PossibleDuplicate {
            external_id: external_id.to_string(),
            patient_id,
            reason: found.reason,
            candidates: found.candidates,
        });
    }
}

/// The other DentalTID patients `twins` counts as linked to NanoPix (or `linked_since` holds) with
/// the same names and birth date as `patient`: the same person, typed again in DentalTID after
/// NanoPix's patient was imported, whom an export of `patient` gives NanoPix twice.
pub(super) fn linked_twins_of(
    twins: Option<&Matcher>,
    patient: &Patient,
    linked_since: &HashSet<i64>,
) -> Option<Twins> {
    let (Some(twins), Some(born)) = (twins, patient.date_of_birth) else { return None };
    let (first, last) = (patient.first_name.as_str(), patient.last_name.as_str());
    let found = twins.linked_twins((first, last, born), patient.id, linked_since)?;
    Some(Twins { key: MatchKey::of(first, last, born), found })
}

/// The linked twins found for a patient an export writes, and the names and birth date (of the
/// patient as then read) they were found for.
#[derive(Debug)]
pub(super) struct Twins {
    pub(super) key: MatchKey,
    pub(super) found: PossibleDuplicate,
}
