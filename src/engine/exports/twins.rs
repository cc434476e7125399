//! Twins: the DentalTID patients linked to NanoPix that a patient an export writes may duplicate,
//! kept on the review list with its link and reported.

use chrono::NaiveDate;
use foldhash::HashSet;

use crate::engine::{Engine, MAX_CANDIDATE_DATES};
use crate::events::{DuplicateCandidate, EventKind, ReconcileReport};
use crate::matching::{DentalIndex, Matcher, PossibleDuplicate};
use crate::patient::{Patient, nanopix_date};
use crate::{NanoPixId, Result};

impl Engine {
    /// The DentalTID patients an export of one of `patients` may duplicate, in a matcher, with
    /// those linked to NanoPix marked: those an import of each would be compared with (those
    /// born on their birth dates and those without one; for a patient without a birth date,
    /// those of its names born on any day; every patient, for many dates or many patients
    /// without one).
    pub(super) fn twin_finder(&mut self, patients: &[Patient]) -> Result<Matcher> {
        let dates: HashSet<NaiveDate> = patients.iter().filter_map(|patient| patient.date_of_birth).collect();
        let unborn: Vec<&Patient> = patients.iter().filter(|patient| patient.date_of_birth.is_none()).collect();
        self.ensure_indexes()?;
        let mut index = DentalIndex::default();
        if dates.len() + unborn.len() > MAX_CANDIDATE_DATES {
            self.dentaltid.add_all_candidates(&mut index)?;
        } else {
            self.dentaltid.add_candidates_born_on(&dates.iter().copied().collect::<Vec<_>>(), &mut index)?;
            let names = unborn.iter().map(|patient| (patient.first_name.as_str(), patient.last_name.as_str()));
            self.add_candidates_of_names(names, &dates, &mut index)?;
        }
        self.matcher_over(index, [])
    }

    /// The linked twins of `patient`, exported alone (see [`linked_twins_of`]); an error reading
    /// them goes to `report`, and none are given.
    pub(super) fn twins_of(&mut self, patient: &Patient, report: &mut ReconcileReport) -> Option<Twins> {
        match self.twin_finder(std::slice::from_ref(patient)) {
            Ok(twins) => linked_twins_of(Some(&twins), patient, &HashSet::default()),
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

/// The other DentalTID patients `twins` counts as linked to NanoPix (or `linked_since` holds) that
/// `patient` may duplicate (see [`Matcher::linked_twins`]): the same person, typed again in
/// DentalTID after NanoPix's patient was imported, whom an export of `patient` gives NanoPix twice.
pub(super) fn linked_twins_of(
    twins: Option<&Matcher>,
    patient: &Patient,
    linked_since: &HashSet<i64>,
) -> Option<Twins> {
    let (first, last, born) = (patient.first_name.as_str(), patient.last_name.as_str(), patient.date_of_birth);
    let found = twins?.linked_twins((first, last, born), patient.id, linked_since)?;
    let found_for = DuplicateCandidate {
        patient_id: patient.id,
        first_name: first.to_owned(),
        last_name: last.to_owned(),
        date_of_birth: born.map(nanopix_date),
    };
    Some(Twins { found_for, found })
}

/// The linked twins found for a patient an export writes, and that patient as then read.
#[derive(Debug)]
pub(super) struct Twins {
    /// The patient, with the names and birth date the twins were found for.
    pub(super) found_for: DuplicateCandidate,
    /// The twins, and why.
    pub(super) found: PossibleDuplicate,
}
