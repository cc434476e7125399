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
    /// born on their birth dates and those of their names without one; for a patient without a
    /// birth date, those of its names born on any day; every patient, for many dates or many
    /// patients without one).
    pub(super) fn twin_finder(&mut self, patients: &[Patient]) -> Result<Matcher> {
        let dates: HashSet<NaiveDate> = patients.iter().filter_map(|patient| patient.date_of_birth).collect();
        let unborn = patients.iter().filter(|patient| patient.date_of_birth.is_none()).count();
        self.ensure_indexes()?;
        let mut index = DentalIndex::default();
        if dates.len() + unborn > MAX_CANDIDATE_DATES {
            self.dentaltid.add_all_candidates(&mut index)?;
        } else {
            self.dentaltid.add_candidates_born_on(&dates.iter().copied().collect::<Vec<_>>(), &mut index)?;
            let people = patients.iter().map(|patient| {
                ((patient.first_name.as_str(), patient.last_name.as_str()), patient.date_of_birth.is_none())
            });
            self.add_candidates_of_names(people, &dates, &mut index)?;
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
#[derive(Debug, Clone)]
pub(super) struct Twins {
    /// The patient, with the names and birth date the twins were found for.
    pub(super) found_for: DuplicateCandidate,
    /// The twins, and why.
    pub(super) found: PossibleDuplicate,
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use rusqlite::Connection;

    use super::*;
    use crate::engine::tests::clinic_engine;
    use crate::events::DuplicateReason;
    use crate::patient::NanoPixPatient;

    /// A clinic that left out the birth date of hundreds of patients (a third of them, at some
    /// clinics): matching one patient born on a known day, to export her or to import her, looks
    /// only at the patients without a birth date who bear one of her names, and still finds
    /// those: an export of Nadia Saidi finds the Nadia Saidi linked to NanoPix without a birth
    /// date, and NanoPix's Karim Haddad finds the sample's Karim Haddad, who has none.
    #[test]
    fn matching_one_patient_reads_only_the_patients_without_a_birth_date_who_bear_her_names() {
        let (_dir, db, mut engine, _signals) = clinic_engine();
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO patients(name, familyName, age, healthState, diagnosis, treatment, createdAt)
             SELECT 'Given' || i, 'Family' || i, 0, '', '', '', '2025-01-20T09:00:00.000' FROM n;
             INSERT INTO patients(name, familyName, age, healthState, diagnosis, treatment, createdAt, external_id)
             VALUES ('Nadia', 'Saidi', 0, '', '', '', '2025-01-20T09:00:00.000', '20250120_090000');",
        )
        .unwrap();
        let linked_twin = conn.last_insert_rowid();
        conn.execute_batch(
            "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, createdAt)
             VALUES ('Nadia', 'Saidi', 34, '1990-03-04T00:00:00.000', '', '', '', '2025-01-21T09:00:00.000');",
        )
        .unwrap();
        let nadia = conn.last_insert_rowid();
        let nadia = engine.dentaltid.patient(nadia).unwrap().unwrap();
        let twins = engine.twin_finder(std::slice::from_ref(&nadia)).unwrap();
        let found = linked_twins_of(Some(&twins), &nadia, &foldhash::HashSet::default()).unwrap();
        assert_eq!(found.found.reason, DuplicateReason::MissingBirthDate);
        assert_eq!(found.found.candidates.iter().map(|c| c.patient_id).collect::<Vec<_>>(), [linked_twin]);
        let karim = NanoPixPatient {
            pk: 2,
            id: NanoPixId::parse("20250122_093000").unwrap(),
            last_name: "Haddad".into(),
            first_name: "Karim".into(),
            sex: None,
            birth_date: NaiveDate::from_ymd_opt(1980, 2, 2),
            phone: None,
            created: None,
        };
        let mut matcher = engine.matcher(std::slice::from_ref(&karim)).unwrap();
        for (what, indexed) in [("the export", twins.candidates_known()), ("the import", matcher.candidates_known())] {
            let others = indexed.iter().filter(|c| c.last_name.starts_with("Family")).count();
            assert_eq!(others, 0, "{what} read {others} patients of other names without a birth date");
        }
        let mut imports = Vec::new();
        matcher.offer(karim, &mut imports);
        let reported = imports.pop().and_then(|import| import.possible_duplicate).unwrap();
        assert_eq!(reported.reason, DuplicateReason::MissingBirthDate);
        assert_eq!(reported.candidates.iter().map(|c| c.last_name.as_str()).collect::<Vec<_>>(), ["Haddad"]);
    }
}
