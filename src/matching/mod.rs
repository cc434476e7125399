//! Duplicate matching: name normalisation, the exact-match index and near-miss detection.
//!
//! Pure decisions on plain values: no SQL and no I/O. Matching is linear in the number of
//! patients: every lookup goes through a hash index, never a comparison of every pair.

mod normalise;
mod similar;

use std::collections::HashMap;

use chrono::NaiveDate;

pub use self::normalise::normalise_name;
use self::similar::BirthDateIndex;
use crate::events::DuplicateReason;
use crate::patient::{NanoPixPatient, Patient};

/// Most DentalTID patients named in one possible duplicate.
const MAX_CANDIDATES: usize = 20;

/// What to do with one unlinked NanoPix patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Link it to this existing DentalTID patient.
    Link { patient_id: i64 },
    /// Import it as a new DentalTID patient, reporting these look-alikes if any.
    Import { possible_duplicate: Option<(DuplicateReason, Vec<i64>)> },
}

/// Decides, for each unlinked NanoPix patient in `nanopix` (same order), whether to link or
/// import it. `dentaltid` is every DentalTID patient; those with an `external_id` are linked.
///
/// A patient links only on an exact match of normalised names and birth date, with auto-linking
/// on, one candidate on each side and the DentalTID patient not linked yet. Everything else is
/// imported, with the look-alikes found reported as a possible duplicate.
pub(crate) fn decide(nanopix: &[NanoPixPatient], dentaltid: &[Patient], auto_link: bool) -> Vec<Decision> {
    let dental_people: Vec<Option<Person>> =
        dentaltid.iter().map(|p| Person::new(&p.first_name, &p.last_name, p.date_of_birth)).collect();
    let nanopix_people: Vec<Option<Person>> =
        nanopix.iter().map(|p| Person::new(&p.first_name, &p.last_name, p.birth_date)).collect();
    let matcher = Matcher::new(dentaltid, &dental_people, &nanopix_people, auto_link);
    nanopix_people.iter().map(|person| person.as_ref().map_or(Decision::import(None), |p| matcher.decide(p))).collect()
}

impl Decision {
    /// An import, with or without a possible duplicate.
    fn import(possible_duplicate: Option<(DuplicateReason, Vec<i64>)>) -> Self {
        Self::Import { possible_duplicate }
    }
}

/// A patient's matching key: normalised first and last name (both non-empty) and birth date.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Person {
    first: String,
    last: String,
    born: Option<NaiveDate>,
    /// Characters in first and last name together.
    chars: usize,
}

/// Normalised names, ignoring the birth date.
type NameKey<'a> = (&'a str, &'a str);

/// Normalised names and a known birth date.
type ExactKey<'a> = (&'a str, &'a str, NaiveDate);

impl Person {
    /// The key of a patient, or `None` when either normalised name is empty.
    fn new(first: &str, last: &str, born: Option<NaiveDate>) -> Option<Self> {
        let (first, last) = (normalise_name(first), normalise_name(last));
        let chars = first.chars().count() + last.chars().count();
        (!first.is_empty() && !last.is_empty()).then_some(Self { first, last, born, chars })
    }

    /// The names alone, for look-ups that ignore the birth date.
    fn names(&self) -> NameKey<'_> {
        (&self.first, &self.last)
    }

    /// The exact key; a missing birth date has none.
    fn exact(&self) -> Option<ExactKey<'_>> {
        Some((&self.first, &self.last, self.born?))
    }

    /// The exact key with first and last name swapped.
    fn swapped(&self) -> Option<ExactKey<'_>> {
        Some((&self.last, &self.first, self.born?))
    }
}

/// A DentalTID patient with its matching key.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    patient: &'a Patient,
    person: &'a Person,
}

/// The indexes built once per call to [`decide`].
struct Matcher<'a> {
    by_exact: HashMap<ExactKey<'a>, Vec<Entry<'a>>>,
    by_names: HashMap<NameKey<'a>, Vec<Entry<'a>>>,
    by_birth_date: BirthDateIndex<'a>,
    /// How many NanoPix patients being decided have each exact key.
    nanopix_keys: HashMap<ExactKey<'a>, usize>,
    auto_link: bool,
}

impl<'a> Matcher<'a> {
    fn new(
        dentaltid: &'a [Patient],
        dental_people: &'a [Option<Person>],
        nanopix_people: &'a [Option<Person>],
        auto_link: bool,
    ) -> Self {
        let entries: Vec<Entry<'a>> = dentaltid
            .iter()
            .zip(dental_people)
            .filter_map(|(patient, person)| Some(Entry { patient, person: person.as_ref()? }))
            .collect();
        let mut nanopix_keys = HashMap::new();
        for key in nanopix_people.iter().flatten().filter_map(Person::exact) {
            *nanopix_keys.entry(key).or_insert(0) += 1;
        }
        Self {
            by_exact: group(&entries, |person| person.exact()),
            by_names: group(&entries, |person| Some(person.names())),
            by_birth_date: BirthDateIndex::build(entries.iter().copied()),
            nanopix_keys,
            auto_link,
        }
    }

    /// The decision for one NanoPix patient with a usable key.
    fn decide(&self, person: &Person) -> Decision {
        self.exact_match(person).unwrap_or_else(|| Decision::import(self.near_miss(person)))
    }

    /// Step one: an exact key match links, or is reported when linking is not safe.
    fn exact_match(&self, person: &Person) -> Option<Decision> {
        let key = person.exact()?;
        let found = self.by_exact.get(&key)?;
        let several_nanopix = self.nanopix_keys.get(&key).is_some_and(|&count| count > 1);
        let reason = match found.as_slice() {
            _ if !self.auto_link => DuplicateReason::AutoLinkOff,
            [_] if several_nanopix => DuplicateReason::SeveralCandidates,
            [only] if only.patient.external_id.is_some() => DuplicateReason::AlreadyLinked,
            [only] => return Some(Decision::Link { patient_id: only.patient.id }),
            _ => DuplicateReason::SeveralCandidates,
        };
        Some(Decision::import(Some((reason, candidate_ids(found)))))
    }

    /// Step two: the first near miss that applies, if any.
    fn near_miss(&self, person: &Person) -> Option<(DuplicateReason, Vec<i64>)> {
        let swapped = person.swapped().and_then(|key| self.by_exact.get(&key)).map(Vec::as_slice).unwrap_or_default();
        let similar = self.by_birth_date.similar(person);
        let missing_birth_date = self.missing_birth_date(person);
        [
            (DuplicateReason::SwappedNames, swapped),
            (DuplicateReason::SimilarNames, similar.as_slice()),
            (DuplicateReason::MissingBirthDate, missing_birth_date.as_slice()),
        ]
        .into_iter()
        .find(|(_, found)| !found.is_empty())
        .map(|(reason, found)| (reason, candidate_ids(found)))
    }

    /// DentalTID patients with the same names where one side's birth date is missing.
    fn missing_birth_date(&self, person: &Person) -> Vec<Entry<'a>> {
        let same_names = self.by_names.get(&person.names()).map(Vec::as_slice).unwrap_or_default();
        same_names.iter().filter(|entry| person.born.is_none() || entry.person.born.is_none()).copied().collect()
    }
}

/// Groups entries by a key their person may have.
fn group<'a, K: std::hash::Hash + Eq>(
    entries: &[Entry<'a>],
    key: impl Fn(&'a Person) -> Option<K>,
) -> HashMap<K, Vec<Entry<'a>>> {
    let mut groups: HashMap<K, Vec<Entry<'a>>> = HashMap::new();
    for entry in entries {
        if let Some(key) = key(entry.person) {
            groups.entry(key).or_default().push(*entry);
        }
    }
    groups
}

/// The DentalTID ids of a possible duplicate: sorted, without repeats, at most [`MAX_CANDIDATES`].
fn candidate_ids(found: &[Entry<'_>]) -> Vec<i64> {
    let mut ids: Vec<i64> = found.iter().map(|entry| entry.patient.id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(MAX_CANDIDATES);
    ids
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, NaiveDateTime};
    use proptest::prelude::*;

    use super::*;
    use crate::NanoPixId;
    use crate::patient::Source;

    fn born(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(y, m, d)
    }

    fn dental(id: i64, first: &str, last: &str, date_of_birth: Option<NaiveDate>) -> Patient {
        Patient {
            id,
            first_name: first.to_owned(),
            last_name: last.to_owned(),
            age: 0,
            date_of_birth,
            created_at: "2025-01-21T15:26:46.000".to_owned(),
            phone: String::new(),
            source: Source::Internal,
            external_id: None,
        }
    }

    fn linked(mut patient: Patient) -> Patient {
        patient.external_id = Some("20240101_120000".to_owned());
        patient
    }

    fn nanopix(pk: i64, first: &str, last: &str, birth_date: Option<NaiveDate>) -> NanoPixPatient {
        let base = NaiveDateTime::parse_from_str("2025-01-21 08:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        NanoPixPatient {
            pk,
            id: NanoPixId::from_datetime(base + Duration::seconds(pk)),
            last_name: last.to_owned(),
            first_name: first.to_owned(),
            sex: None,
            birth_date,
            phone: None,
            created: None,
        }
    }

    fn duplicate(reason: DuplicateReason, ids: &[i64]) -> Decision {
        Decision::import(Some((reason, ids.to_vec())))
    }

    fn decide_one(patient: NanoPixPatient, dentaltid: &[Patient]) -> Decision {
        let decisions = decide(&[patient], dentaltid, true);
        assert_eq!(decisions.len(), 1);
        decisions.into_iter().next().unwrap()
    }

    #[test]
    fn exact_match_links() {
        let dentaltid = [dental(1, "Ali", "Benali", born(1980, 1, 1)), dental(2, "Zoe", "Doe", born(1990, 5, 6))];
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, Decision::Link { patient_id: 2 });
    }

    #[test]
    fn accents_case_and_stray_spaces_still_link() {
        let dentaltid = [dental(7, " Zoe ", "lefevre", born(1990, 5, 6))];
        let decision = decide_one(nanopix(1, "ZOÉ", "  LEFÈVRE ", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, Decision::Link { patient_id: 7 });
    }

    #[test]
    fn arabic_with_harakat_and_tatweel_links() {
        let dentaltid = [dental(3, "محمد", "بن علي", born(1975, 3, 2))];
        let decision = decide_one(nanopix(1, "مُحَمَّد", "بن عـــلي", born(1975, 3, 2)), &dentaltid);
        assert_eq!(decision, Decision::Link { patient_id: 3 });
    }

    #[test]
    fn swapped_names_are_reported() {
        let dentaltid = [dental(4, "Doe", "Zoe", born(1990, 5, 6))];
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SwappedNames, &[4]));
    }

    #[test]
    fn missing_birth_date_on_either_side_is_reported() {
        let dentaltid = [dental(5, "Zoe", "Doe", None), dental(6, "Sara", "Amrani", born(1985, 2, 3))];
        let nanopix_missing = decide_one(nanopix(1, "Sara", "Amrani", None), &dentaltid);
        assert_eq!(nanopix_missing, duplicate(DuplicateReason::MissingBirthDate, &[6]));
        let dental_missing = decide_one(nanopix(2, "zoe", "DOE", born(1990, 5, 6)), &dentaltid);
        assert_eq!(dental_missing, duplicate(DuplicateReason::MissingBirthDate, &[5]));
        let both_missing = decide_one(nanopix(3, "Zoe", "Doe", None), &dentaltid);
        assert_eq!(both_missing, duplicate(DuplicateReason::MissingBirthDate, &[5]));
    }

    #[test]
    fn different_birth_dates_are_not_duplicates() {
        let dentaltid = [dental(6, "Sara", "Amrani", born(1985, 2, 3))];
        let decision = decide_one(nanopix(1, "Sara", "Amrani", born(1985, 2, 4)), &dentaltid);
        assert_eq!(decision, Decision::import(None));
    }

    #[test]
    fn already_linked_dentaltid_patient_is_reported() {
        let dentaltid = [linked(dental(8, "Zoe", "Doe", born(1990, 5, 6)))];
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::AlreadyLinked, &[8]));
    }

    #[test]
    fn two_dentaltid_candidates_are_reported() {
        let dentaltid = [dental(12, "Zoe", "Doe", born(1990, 5, 6)), dental(9, "ZOE", "doe", born(1990, 5, 6))];
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SeveralCandidates, &[9, 12]));
    }

    #[test]
    fn two_nanopix_patients_with_the_same_key_do_not_link() {
        let dentaltid = [dental(10, "Zoe", "Doe", born(1990, 5, 6))];
        let nanopix = [nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), nanopix(2, "zoé", "DOE", born(1990, 5, 6))];
        let expected = duplicate(DuplicateReason::SeveralCandidates, &[10]);
        assert_eq!(decide(&nanopix, &dentaltid, true), vec![expected.clone(), expected]);
    }

    #[test]
    fn auto_link_off_reports_instead_of_linking() {
        let dentaltid = [dental(11, "Zoe", "Doe", born(1990, 5, 6))];
        let decisions = decide(&[nanopix(1, "Zoe", "Doe", born(1990, 5, 6))], &dentaltid, false);
        assert_eq!(decisions, vec![duplicate(DuplicateReason::AutoLinkOff, &[11])]);
    }

    #[test]
    fn one_typo_with_the_same_birth_date_is_reported() {
        let dentaltid = [dental(13, "Zoe", "Lefebvre", born(1990, 5, 6))];
        let same_date = decide_one(nanopix(1, "Zoe", "Lefevre", born(1990, 5, 6)), &dentaltid);
        assert_eq!(same_date, duplicate(DuplicateReason::SimilarNames, &[13]));
        let other_date = decide_one(nanopix(2, "Zoe", "Lefevre", born(1990, 5, 7)), &dentaltid);
        assert_eq!(other_date, Decision::import(None));
    }

    #[test]
    fn empty_names_never_link_and_are_never_candidates() {
        let dentaltid = [dental(14, "", "Doe", born(1990, 5, 6)), dental(15, "Zoe", " \u{0640} ", born(1990, 5, 6))];
        let nanopix = [
            nanopix(1, "", "Doe", born(1990, 5, 6)),
            nanopix(2, "Zoe", "", born(1990, 5, 6)),
            nanopix(3, "Zoe", "Doe", born(1990, 5, 6)),
            nanopix(4, "Zoe", "Doe", None),
        ];
        assert_eq!(decide(&nanopix, &dentaltid, true), vec![Decision::import(None); 4]);
    }

    #[test]
    fn candidate_lists_are_capped() {
        let dentaltid: Vec<Patient> = (0..30).rev().map(|id| dental(id, "Zoe", "Doe", born(1990, 5, 6))).collect();
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SeveralCandidates, &(0..20).collect::<Vec<_>>()));
    }

    #[test]
    fn a_typo_is_found_in_a_crowded_birth_date() {
        let visit_day = born(2024, 3, 4);
        let mut dentaltid: Vec<Patient> =
            (0..5_000).map(|id| dental(id, &format!("first{id}"), &format!("last{id}"), visit_day)).collect();
        dentaltid.push(dental(9_999, "Zoe", "Lefebvre", visit_day));
        let crowd: Vec<NanoPixPatient> =
            (0..5_000).map(|pk| nanopix(pk, &format!("other{pk}"), &format!("name{pk}"), visit_day)).collect();
        let typo = decide_one(nanopix(6_000, "Zoe", "Lefevre", visit_day), &dentaltid);
        assert_eq!(typo, duplicate(DuplicateReason::SimilarNames, &[9_999]));
        let decisions = decide(&crowd, &dentaltid, true);
        assert_eq!(decisions, vec![Decision::import(None); 5_000]);
    }

    fn any_patients() -> impl Strategy<Value = (Vec<NanoPixPatient>, Vec<Patient>)> {
        let names = prop::sample::select(vec!["Zoe", "zoé ", "Doe", "DOE", "Dou", "Lefevre", "Lefebvre", "", " "]);
        let date = prop::option::of(prop::sample::select(vec![born(1990, 5, 6), born(1991, 1, 1)]));
        let person = (names.clone(), names, date.prop_map(Option::flatten));
        let nanopix_side = prop::collection::vec(person.clone(), 0..8).prop_map(|people| {
            let to_patient = |(pk, (f, l, b)): (usize, (&str, &str, _))| nanopix(pk as i64, f, l, b);
            people.into_iter().enumerate().map(to_patient).collect()
        });
        let dental_side = prop::collection::vec((person, any::<bool>()), 0..8).prop_map(|people| {
            let to_patient = |(id, ((f, l, b), is_linked)): (usize, ((&str, &str, _), bool))| {
                let patient = dental(id as i64, f, l, b);
                if is_linked { linked(patient) } else { patient }
            };
            people.into_iter().enumerate().map(to_patient).collect()
        });
        (nanopix_side, dental_side)
    }

    proptest! {
        #[test]
        fn one_decision_per_nanopix_patient((nanopix, dentaltid) in any_patients(), auto_link in any::<bool>()) {
            prop_assert_eq!(decide(&nanopix, &dentaltid, auto_link).len(), nanopix.len());
        }

        #[test]
        fn links_are_exact_unique_and_to_unlinked_patients((nanopix, dentaltid) in any_patients()) {
            let mut targets = Vec::new();
            for (patient, decision) in nanopix.iter().zip(decide(&nanopix, &dentaltid, true)) {
                let Decision::Link { patient_id } = decision else { continue };
                let target = dentaltid.iter().find(|p| p.id == patient_id).unwrap();
                prop_assert!(target.external_id.is_none());
                prop_assert!(patient.birth_date.is_some());
                prop_assert_eq!(patient.birth_date, target.date_of_birth);
                prop_assert_eq!(normalise_name(&patient.first_name), normalise_name(&target.first_name));
                prop_assert_eq!(normalise_name(&patient.last_name), normalise_name(&target.last_name));
                prop_assert!(!targets.contains(&patient_id));
                targets.push(patient_id);
            }
        }

        #[test]
        fn candidates_are_sorted_unique_and_known((nanopix, dentaltid) in any_patients(), auto_link in any::<bool>()) {
            for decision in decide(&nanopix, &dentaltid, auto_link) {
                let Decision::Import { possible_duplicate: Some((_, ids)) } = decision else { continue };
                prop_assert!(!ids.is_empty() && ids.len() <= MAX_CANDIDATES);
                prop_assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
                prop_assert!(ids.iter().all(|id| dentaltid.iter().any(|p| p.id == *id)));
            }
        }
    }
}
