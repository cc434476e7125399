//! Duplicate matching: name normalisation, the exact-match index and near-miss detection.
//!
//! Pure decisions on plain values: no SQL and no I/O. Matching is linear in the number of
//! patients: every lookup goes through a hash index, never a comparison of every pair. NanoPix
//! patients are decided one at a time, so a caller can stream them; only the few that would
//! link are held until no other NanoPix patient can claim the same DentalTID patient.

mod index;
mod normalise;
mod similar;

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};

pub(crate) use self::index::DentalIndex;
use self::index::Person;
pub(crate) use self::normalise::normalise_into;
pub use self::normalise::normalise_name;
use crate::NanoPixId;
use crate::events::{DuplicateCandidate, DuplicateReason};
use crate::patient::NanoPixPatient;

/// Most DentalTID patients named in one possible duplicate.
const MAX_CANDIDATES: usize = 20;

/// A DentalTID patient as matching reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DentalCandidate<'a> {
    /// `patients.id`.
    pub id: i64,
    /// First name, as stored.
    pub first_name: &'a str,
    /// Last name, as stored.
    pub last_name: &'a str,
    /// Birth date, when readable.
    pub date_of_birth: Option<NaiveDate>,
    /// Whether the patient already has a NanoPix id.
    pub linked: bool,
}

/// Look-alikes reported with an imported NanoPix patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PossibleDuplicate {
    /// Why they look alike.
    pub reason: DuplicateReason,
    /// The DentalTID patients, by id, at most [`MAX_CANDIDATES`].
    pub candidates: Vec<DuplicateCandidate>,
}

/// A NanoPix patient to import as a new DentalTID patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Import {
    /// The NanoPix patient.
    pub patient: NanoPixPatient,
    /// The look-alikes to report, if any.
    pub possible_duplicate: Option<PossibleDuplicate>,
}

/// A NanoPix patient to link to an existing DentalTID patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MatchedLink {
    /// The NanoPix id.
    pub external_id: NanoPixId,
    /// The DentalTID patient.
    pub patient_id: i64,
    /// The DentalTID patient's first name, as stored.
    pub first_name: String,
    /// The DentalTID patient's last name, as stored.
    pub last_name: String,
    /// What both were matched on: the link stands only while the DentalTID patient has it.
    pub key: MatchKey,
    /// NanoPix's `created_datetime`, by which the sync knows the row the link is made with.
    pub nanopix_created: Option<NaiveDateTime>,
}

/// What a link is matched on: both names, normalised, and the birth date.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MatchKey {
    first: String,
    last: String,
    born: NaiveDate,
}

impl MatchKey {
    /// The key of a person with these names, born on `born`.
    pub fn of(first_name: &str, last_name: &str, born: NaiveDate) -> Self {
        Self { first: normalise_name(first_name), last: normalise_name(last_name), born }
    }

    /// Whether a DentalTID patient, as matching reads it, still has this key: a patient renamed
    /// or given another birth date since it was matched is no longer the same person's.
    pub fn fits(&self, candidate: &DentalCandidate<'_>) -> bool {
        self.is_of(candidate.first_name, candidate.last_name, candidate.date_of_birth)
    }

    /// Whether a person with these names and birth date has this key.
    pub fn is_of(&self, first_name: &str, last_name: &str, born: Option<NaiveDate>) -> bool {
        born == Some(self.born) && *self == Self::of(first_name, last_name, self.born)
    }
}

/// What the index says of one NanoPix patient.
enum Verdict {
    /// Its key matches exactly one unlinked DentalTID patient (an entry of the index).
    Link(usize),
    /// Import it, reporting these entries if any.
    Import(Option<(DuplicateReason, Vec<usize>)>),
}

/// How far NanoPix patients went in claiming a DentalTID patient for a link.
#[derive(Debug, Clone, Copy)]
enum Claim {
    /// One NanoPix patient (held at this position) claims it so far.
    Held(usize),
    /// Several did: none of them links.
    Contested,
}

/// Decides, one NanoPix patient at a time, whether to link or import.
///
/// A patient links only on an exact match of normalised names and birth date, with auto-linking
/// on, one candidate on each side and the DentalTID patient not linked yet. Everything else is
/// imported, with the look-alikes found reported as a possible duplicate.
#[derive(Debug)]
pub(crate) struct Matcher {
    dentaltid: DentalIndex,
    auto_link: bool,
    claims: HashMap<usize, Claim>,
    held: Vec<Option<NanoPixPatient>>,
    /// The normalised names of the patient being decided, kept to reuse its memory.
    names: String,
}

impl Matcher {
    /// A matcher against `dentaltid`, which holds at least every patient the NanoPix patients
    /// to decide could match. The patients `linked` holds count as linked whatever their
    /// `external_id` says: those the sync recorded a link for (DentalTID may have cleared the
    /// column since), and any others the caller names.
    pub fn new(mut dentaltid: DentalIndex, linked: &foldhash::HashSet<i64>, auto_link: bool) -> Self {
        dentaltid.mark_linked(linked);
        dentaltid.group();
        Self { dentaltid, auto_link, claims: HashMap::new(), held: Vec::new(), names: String::new() }
    }

    /// Decides one NanoPix patient. Those known to need importing (it, or a held patient it
    /// contests) are pushed to `imports`; a patient that would link is held until [`Matcher::finish`].
    pub fn offer(&mut self, patient: NanoPixPatient, imports: &mut Vec<Import>) {
        let mut names = std::mem::take(&mut self.names);
        names.clear();
        normalise_into(&patient.first_name, &mut names);
        let first_end = names.len();
        normalise_into(&patient.last_name, &mut names);
        let (first, last) = names.split_at(first_end);
        let doubtful_birth_date = patient.born_on_registration_day();
        let verdict = match Person::new(first, last, patient.birth_date) {
            Some(person) => self.verdict(&person, doubtful_birth_date),
            None => Verdict::Import(self.one_name_missing(first, last, patient.birth_date, doubtful_birth_date)),
        };
        self.names = names;
        match verdict {
            Verdict::Link(entry) => self.claim(entry, patient, imports),
            Verdict::Import(found) => imports.push(self.import(patient, found)),
        }
    }

    /// Every DentalTID patient the matcher knows, as a possible duplicate names it.
    #[cfg(test)]
    pub(crate) fn candidates_known(&self) -> Vec<DuplicateCandidate> {
        self.dentaltid.candidates()
    }

    /// The links of every held patient nobody contested.
    pub fn finish(self) -> Vec<MatchedLink> {
        let mut links = Vec::new();
        for (entry, claim) in &self.claims {
            let Claim::Held(position) = *claim else { continue };
            let (Some(Some(patient)), Some(dental)) = (self.held.get(position), self.dentaltid.candidate(*entry))
            else {
                continue;
            };
            // A held patient matched exactly, birth date included.
            let Some(born) = patient.birth_date else { continue };
            links.push(MatchedLink {
                external_id: patient.id,
                patient_id: dental.patient_id,
                first_name: dental.first_name,
                last_name: dental.last_name,
                key: MatchKey::of(&patient.first_name, &patient.last_name, born),
                nanopix_created: patient.created,
            });
        }
        links.sort_by_key(|link| link.external_id);
        links
    }

    /// The DentalTID patients other than `patient_id`, counted as linked or among `linked_since`,
    /// who may be this person, and why: NanoPix holds them already. The reason is the first of
    /// these that finds any, and the patients are those each finds (see [`Matcher::first_reason`]):
    /// the same names and birth date, or one name left out on either side and the other the same,
    /// as [`DuplicateReason::MissingName`] compares them (`already_linked`); then the near misses
    /// an import of this person would report (see [`Matcher::near_misses`]): the names swapped or
    /// a small edit away with the same birth date, or the same names, or the names swapped, with a
    /// birth date missing on either side. None for a patient without names.
    pub fn linked_twins(
        &self,
        (first_name, last_name, born): (&str, &str, Option<NaiveDate>),
        patient_id: i64,
        linked_since: &foldhash::HashSet<i64>,
    ) -> Option<PossibleDuplicate> {
        let (first, last) = (normalise_name(first_name), normalise_name(last_name));
        if first.is_empty() && last.is_empty() {
            return None;
        }
        let index = &self.dentaltid;
        let linked = |entry: &usize| {
            index.candidate(*entry).is_some_and(|twin| {
                twin.patient_id != patient_id && (index.is_linked(*entry) || linked_since.contains(&twin.patient_id))
            })
        };
        let same =
            born.map(|born| (DuplicateReason::AlreadyLinked, self.same_person_born_on(&first, &last, born, linked)));
        let mut found: Vec<_> = same.into_iter().collect();
        if let Some(person) = Person::new(&first, &last, born) {
            found.extend(self.near_misses(&person, false, linked));
        }
        let (reason, entries) = self.first_reason(found)?;
        Some(PossibleDuplicate { reason, candidates: self.candidates(entries) })
    }

    /// The entries `wanted` accepts born on `born` with the normalised names `first` and `last`
    /// (not both empty), or with one name left out on either side and the other the same, as
    /// [`DuplicateReason::MissingName`] compares them; at most [`MAX_CANDIDATES`] of each lookup
    /// (see [`gather_each`]).
    fn same_person_born_on(
        &self,
        first: &str,
        last: &str,
        born: NaiveDate,
        wanted: impl Fn(&usize) -> bool,
    ) -> Vec<usize> {
        let index = &self.dentaltid;
        match (first.is_empty(), last.is_empty()) {
            (false, false) => gather_each(
                [
                    &mut index.exact(first, last, born),
                    &mut index.one_named(first, born),
                    &mut index.one_named(last, born),
                ],
                wanted,
            ),
            _ => {
                let name = if first.is_empty() { last } else { first };
                gather_each([&mut index.one_named(name, born), &mut index.named_on(name, born)], wanted)
            }
        }
    }

    /// Holds `patient` as the one linking to `entry`, unless another NanoPix patient has the
    /// same key: then none of them links and all are imported as several candidates.
    fn claim(&mut self, entry: usize, patient: NanoPixPatient, imports: &mut Vec<Import>) {
        let several = Some((DuplicateReason::SeveralCandidates, vec![entry]));
        match self.claims.get(&entry).copied() {
            None => {
                self.claims.insert(entry, Claim::Held(self.held.len()));
                self.held.push(Some(patient));
            }
            Some(Claim::Held(position)) => {
                self.claims.insert(entry, Claim::Contested);
                if let Some(first) = self.held.get_mut(position).and_then(Option::take) {
                    imports.push(self.import(first, several.clone()));
                }
                imports.push(self.import(patient, several));
            }
            Some(Claim::Contested) => imports.push(self.import(patient, several)),
        }
    }

    fn import(&self, patient: NanoPixPatient, found: Option<(DuplicateReason, Vec<usize>)>) -> Import {
        let possible_duplicate =
            found.map(|(reason, entries)| PossibleDuplicate { reason, candidates: self.candidates(entries) });
        Import { patient, possible_duplicate }
    }

    /// The DentalTID patients of `entries`: by id, without repeats, at most [`MAX_CANDIDATES`].
    /// They are cut to that many by id before any name is copied: a crowd sharing a key
    /// (thousands of "Mohamed Ali" born on one day) costs no copy of its names per report, and
    /// each report holds only the candidates it names.
    fn candidates(&self, entries: Vec<usize>) -> Vec<DuplicateCandidate> {
        let mut by_id: Vec<(i64, usize)> =
            entries.into_iter().filter_map(|entry| Some((self.dentaltid.patient_id(entry)?, entry))).collect();
        by_id.sort_by_key(|&(patient_id, _)| patient_id);
        by_id.dedup_by_key(|&mut (patient_id, _)| patient_id);
        by_id.truncate(MAX_CANDIDATES);
        let mut candidates = Vec::with_capacity(by_id.len());
        candidates.extend(by_id.into_iter().filter_map(|(_, entry)| self.dentaltid.candidate(entry)));
        candidates
    }

    /// Step one, an exact key match, else step two, the first near miss that applies.
    /// `doubtful_birth_date` says the birth date may be one nobody typed (see
    /// [`NanoPixPatient::born_on_registration_day`]).
    fn verdict(&self, person: &Person<'_>, doubtful_birth_date: bool) -> Verdict {
        self.exact_match(person).unwrap_or_else(|| Verdict::Import(self.near_miss(person, doubtful_birth_date)))
    }

    /// An exact key match links, or is reported when linking is not safe.
    fn exact_match(&self, person: &Person<'_>) -> Option<Verdict> {
        let found = gather(self.dentaltid.exact(person.first, person.last, person.born?), |_| true);
        let reason = match found.as_slice() {
            [] => return None,
            _ if !self.auto_link => DuplicateReason::AutoLinkOff,
            [only] if self.dentaltid.is_linked(*only) => DuplicateReason::AlreadyLinked,
            [only] => return Some(Verdict::Link(*only)),
            _ => DuplicateReason::SeveralCandidates,
        };
        Some(Verdict::Import(Some((reason, found))))
    }

    /// The near misses that apply: the first one's reason, with the patients each one names
    /// (see [`Matcher::first_reason`]). A doubtful birth date counts as missing: patients with
    /// the same names, or the names swapped, and any other birth date are reported, and none
    /// with a name left out.
    fn near_miss(&self, person: &Person<'_>, doubtful_birth_date: bool) -> Option<(DuplicateReason, Vec<usize>)> {
        let found = self.near_misses(person, doubtful_birth_date, |_| true);
        let one_name_missing = self.one_name_missing(person.first, person.last, person.born, doubtful_birth_date);
        self.first_reason(found.into_iter().chain(one_name_missing))
    }

    /// What each near-miss rule with both names finds for `person` among the entries `wanted`
    /// accepts, in order: the names swapped, then names a small edit away, both on the same birth
    /// date; then the same names, then the names swapped, with a birth date missing on either
    /// side (or `doubtful_birth_date`, see [`Matcher::near_miss`]). A rule that finds patients
    /// of one key finds at most [`MAX_CANDIDATES`] (see [`gather`]).
    fn near_misses(
        &self,
        person: &Person<'_>,
        doubtful_birth_date: bool,
        wanted: impl Fn(&usize) -> bool,
    ) -> [(DuplicateReason, Vec<usize>); 4] {
        let index = &self.dentaltid;
        let exact_swapped = person.born.map(|born| gather(index.exact(person.last, person.first, born), &wanted));
        let swapped = Person { first: person.last, last: person.first, ..*person };
        [
            (DuplicateReason::SwappedNames, exact_swapped.unwrap_or_default()),
            (DuplicateReason::SimilarNames, similar::similar(index, person, &wanted)),
            (
                DuplicateReason::MissingBirthDate,
                gather(index.same_names_one_unborn(person, doubtful_birth_date), &wanted),
            ),
            // The names swapped, where a birth date is missing on either side (or doubtful): no
            // birth date tells the two apart, as for the same names.
            (
                DuplicateReason::SwappedNames,
                gather(index.same_names_one_unborn(&swapped, doubtful_birth_date), &wanted),
            ),
        ]
    }

    /// The reason of the first of `found` (what each rule found, in order) that names a patient,
    /// with the patients every rule names: the first rule's, then the others' in the room
    /// [`MAX_CANDIDATES`] leaves, each rule's by id. A person reviewing the report then sees
    /// every patient it may be, and a crowd one rule finds never hides another rule's patient.
    fn first_reason(
        &self,
        found: impl IntoIterator<Item = (DuplicateReason, Vec<usize>)>,
    ) -> Option<(DuplicateReason, Vec<usize>)> {
        let (mut reason, mut named) = (None, Vec::<(i64, usize)>::new());
        for (rule, entries) in found {
            let mut by_id: Vec<(i64, usize)> =
                entries.into_iter().filter_map(|entry| Some((self.dentaltid.patient_id(entry)?, entry))).collect();
            by_id.sort_by_key(|&(patient_id, _)| patient_id);
            by_id.dedup_by_key(|&mut (patient_id, _)| patient_id);
            let room = MAX_CANDIDATES.saturating_sub(named.len());
            let fresh: Vec<(i64, usize)> =
                by_id.into_iter().filter(|(id, _)| !named.iter().any(|(known, _)| known == id)).take(room).collect();
            if !fresh.is_empty() {
                reason.get_or_insert(rule);
                named.extend(fresh);
            }
        }
        Some((reason?, named.into_iter().map(|(_, entry)| entry).collect()))
    }

    /// The DentalTID patients who may be this person with one name left out on one side: the
    /// other name (as first or last name) and the birth date the same. A missing or doubtful
    /// birth date finds none, nor do two names left out.
    fn one_name_missing(
        &self,
        first: &str,
        last: &str,
        born: Option<NaiveDate>,
        doubtful_birth_date: bool,
    ) -> Option<(DuplicateReason, Vec<usize>)> {
        let born = born.filter(|_| !doubtful_birth_date)?;
        let index = &self.dentaltid;
        let found = match (first.is_empty(), last.is_empty()) {
            (false, false) => {
                gather_each([&mut index.one_named(first, born), &mut index.one_named(last, born)], |_| true)
            }
            (true, true) => return None,
            (true, false) => gather_each([&mut index.one_named(last, born), &mut index.named_on(last, born)], |_| true),
            (false, true) => {
                gather_each([&mut index.one_named(first, born), &mut index.named_on(first, born)], |_| true)
            }
        };
        (!found.is_empty()).then_some((DuplicateReason::MissingName, found))
    }
}

/// The first [`MAX_CANDIDATES`] of `entries` that `wanted` accepts: no report names more, so a
/// crowd sharing one key (thousands of "X Patient" born on a default date) costs each lookup no
/// more than that, and deciding one crowd beside another stays linear.
fn gather(entries: impl Iterator<Item = usize>, wanted: impl Fn(&usize) -> bool) -> Vec<usize> {
    entries.filter(wanted).take(MAX_CANDIDATES).collect()
}

/// What [`gather`] takes of each of `lookups`, one after the other. Each lookup lists its entries
/// by id, so together they hold the [`MAX_CANDIDATES`] lowest ids of all the lookups find, which a
/// report names once they are sorted by id.
fn gather_each<const LOOKUPS: usize>(
    lookups: [&mut dyn Iterator<Item = usize>; LOOKUPS],
    wanted: impl Fn(&usize) -> bool,
) -> Vec<usize> {
    lookups.into_iter().flat_map(|lookup| gather(lookup, &wanted)).collect()
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, NaiveDateTime};
    use proptest::prelude::*;

    use super::*;
    use crate::patient::{Patient, Source};

    /// What became of one NanoPix patient, with candidates by id.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Decision {
        Link { patient_id: i64 },
        Import { possible_duplicate: Option<(DuplicateReason, Vec<i64>)> },
    }

    impl Decision {
        fn import(possible_duplicate: Option<(DuplicateReason, Vec<i64>)>) -> Self {
            Self::Import { possible_duplicate }
        }
    }

    /// Offers every NanoPix patient, in order, to a matcher over `dentaltid`, and says what
    /// became of each; every patient must come out exactly once.
    fn decide(nanopix: &[NanoPixPatient], dentaltid: &[Patient], auto_link: bool) -> Vec<Decision> {
        let mut matcher = matcher_over(dentaltid, auto_link);
        let mut imports = Vec::new();
        for patient in nanopix {
            matcher.offer(patient.clone(), &mut imports);
        }
        let links = matcher.finish();
        assert_eq!(imports.len() + links.len(), nanopix.len());
        let decision = |patient: &NanoPixPatient| {
            if let Some(link) = links.iter().find(|link| link.external_id == patient.id) {
                return Decision::Link { patient_id: link.patient_id };
            }
            let import = imports.iter().find(|import| import.patient.pk == patient.pk).unwrap();
            let by_id = |d: &PossibleDuplicate| (d.reason, d.candidates.iter().map(|c| c.patient_id).collect());
            Decision::import(import.possible_duplicate.as_ref().map(by_id))
        };
        nanopix.iter().map(decision).collect()
    }

    /// A matcher over `dentaltid`, those with an `external_id` linked.
    fn matcher_over(dentaltid: &[Patient], auto_link: bool) -> Matcher {
        let mut index = DentalIndex::default();
        for p in dentaltid {
            let linked = p.external_id.is_some();
            let (first_name, last_name) = (p.first_name.as_str(), p.last_name.as_str());
            index.add(DentalCandidate { id: p.id, first_name, last_name, date_of_birth: p.date_of_birth, linked });
        }
        Matcher::new(index, &foldhash::HashSet::default(), auto_link)
    }

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
    fn a_name_left_out_never_links_and_is_reported_beside_the_other_name_and_birth_date() {
        let day = born(1990, 5, 6);
        let dentaltid = [
            dental(14, "", "Doe", day),
            dental(15, "Zoe", " \u{0640} ", day),
            dental(16, "Zoé", "Martin", day),
            dental(17, "", "Doe", born(1990, 5, 7)),
            dental(18, "", "", day),
            dental(19, "", "Doe", None),
        ];
        let nanopix = [
            nanopix(1, "", "Doe", day),
            nanopix(2, "Zoe", "", day),
            nanopix(3, "Zoe", "Doe", day),
            nanopix(4, "", "Martin", day),
            nanopix(5, "Zoe", "Doe", None),
            nanopix(6, "", "", day),
            nanopix(7, "Doe", "", None),
            nanopix(8, "", "Doe", born(1990, 5, 8)),
        ];
        let missing_name = |ids: &[i64]| duplicate(DuplicateReason::MissingName, ids);
        let expected = [missing_name(&[14]), missing_name(&[15, 16]), missing_name(&[14, 15]), missing_name(&[16])];
        let mut expected = expected.to_vec();
        expected.extend([
            Decision::import(None),
            Decision::import(None),
            Decision::import(None),
            Decision::import(None),
        ]);
        assert_eq!(decide(&nanopix, &dentaltid, true), expected);
    }

    #[test]
    fn a_name_left_out_beside_a_birth_date_on_the_registration_day_is_not_reported() {
        let registered = born(2025, 1, 21);
        let dentaltid = [dental(5, "Amina", "Benali", registered), dental(6, "", "Benali", registered)];
        assert_eq!(decide_one(nanopix(1, "", "Benali", registered), &dentaltid), Decision::import(None));
        assert_eq!(decide_one(nanopix(2, "Amina", "Benali", registered), &dentaltid[1..]), Decision::import(None));
    }

    #[test]
    fn a_name_left_out_is_found_among_the_newest_of_a_crowded_birth_date() {
        let visit_day = born(2024, 3, 4);
        let mut dentaltid: Vec<Patient> =
            (0..5_000).map(|id| dental(id, &format!("first{id}"), &format!("last{id}"), visit_day)).collect();
        dentaltid.push(dental(9_999, "Zoe", "Lefebvre", visit_day));
        let decision = decide_one(nanopix(1, "", "Lefebvre", visit_day), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::MissingName, &[9_999]));
    }

    /// Thirty patients born the same day bear the one name a NanoPix patient was given, some
    /// with both names and some with that one only: her report names the twenty with the lowest
    /// ids, as a report beside any crowd does, not the newest of those with both names. So does an
    /// export beside as many linked patients of the same names and birth date.
    #[test]
    fn a_name_left_out_beside_a_crowd_names_the_patients_with_the_lowest_ids() {
        let day = born(1990, 5, 6);
        let mut dentaltid: Vec<Patient> = (1..=25).map(|id| dental(id, "Karim", "Benali", day)).collect();
        dentaltid.extend((26..=30).map(|id| dental(id, "", "Benali", day)));
        let lowest: Vec<i64> = (1..=20).collect();
        let decision = decide_one(nanopix(1, "", "Benali", day), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::MissingName, &lowest));
        let mut linked_crowd: Vec<Patient> = (30..=50).map(|id| linked(dental(id, "Nadia", "Saidi", day))).collect();
        linked_crowd.push(linked(dental(1, "Nadia", "", day)));
        let nadia = matcher_over(&linked_crowd, true).linked_twins(("Nadia", "Saidi", day), 9, &Default::default());
        let named: Vec<i64> = nadia.unwrap().candidates.iter().map(|c| c.patient_id).collect();
        assert_eq!(named, [1].into_iter().chain(30..=48).collect::<Vec<_>>());
    }

    /// A typo born the same day comes first, but the same names without a birth date, and the
    /// names swapped without one, are named too: the person reviewing sees everyone it may be.
    #[test]
    fn a_near_miss_names_the_patients_of_every_rule_with_the_first_rules_reason() {
        let day = born(1990, 5, 1);
        let dentaltid = [
            dental(1, "Amina", "Benalli", day),
            dental(2, "Amina", "Benali", None),
            dental(3, "Benali", "Amina", None),
            dental(4, "Amina", "Benali", born(1991, 5, 1)),
        ];
        let decision = decide_one(nanopix(1, "Amina", "Benali", day), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SimilarNames, &[1, 2, 3]));
    }

    /// Thirty patients with the same names and no birth date do not crowd out the typo born the
    /// same day: the first rule's patient keeps its place among the twenty named.
    #[test]
    fn a_crowd_one_rule_finds_leaves_room_for_the_first_rules_patient() {
        let mut dentaltid: Vec<Patient> = (0..30).map(|id| dental(id, "Amina", "Benali", None)).collect();
        dentaltid.push(dental(100, "Amina", "Benalli", born(1990, 5, 1)));
        let decision = decide_one(nanopix(1, "Amina", "Benali", born(1990, 5, 1)), &dentaltid);
        let named: Vec<i64> = (0..19).chain([100]).collect();
        assert_eq!(decision, duplicate(DuplicateReason::SimilarNames, &named));
    }

    /// A typo born on a day hundreds of newer patients share (a visit day NanoPix stored as the
    /// birth date), none of them named like her: her block finds her, however many of the others
    /// a lookup may compare.
    #[test]
    fn a_typo_born_on_a_crowded_day_is_found_behind_hundreds_of_newer_patients() {
        let day = born(2024, 3, 4);
        let mut dentaltid = vec![dental(1, "Amina", "Benalli", day)];
        let crowd =
            (0..600).map(|n| dental(100 + n, "Karim", &format!("{}addad", char::from(b'c' + (n % 20) as u8)), day));
        dentaltid.extend(crowd);
        let decision = decide_one(nanopix(1, "Amina", "Benali", day), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SimilarNames, &[1]));
    }

    #[test]
    fn candidate_lists_are_capped() {
        let dentaltid: Vec<Patient> = (0..30).rev().map(|id| dental(id, "Zoe", "Doe", born(1990, 5, 6))).collect();
        let decision = decide_one(nanopix(1, "Zoe", "Doe", born(1990, 5, 6)), &dentaltid);
        assert_eq!(decision, duplicate(DuplicateReason::SeveralCandidates, &(0..20).collect::<Vec<_>>()));
    }

    /// Thousands of "Mohamed Ali" born on one day on both sides: every NanoPix one is reported
    /// beside the crowd, and each report holds room for the candidates it names only, not for
    /// the whole crowd (which, held until the import commits and in the event queue, took
    /// gigabytes: 5,000 x 5,000 candidates' worth at 50,000 patients a side).
    #[test]
    fn a_report_beside_a_crowd_holds_only_the_candidates_it_names() {
        let day = born(1990, 1, 1);
        let dentaltid: Vec<Patient> = (0..5_000).rev().map(|id| dental(id, "Mohamed", "Ali", day)).collect();
        let mut matcher = matcher_over(&dentaltid, true);
        let mut imports = Vec::new();
        for pk in 0..100 {
            matcher.offer(nanopix(pk, "Mohamed", "Ali", day), &mut imports);
        }
        assert_eq!(imports.len(), 100);
        for import in &imports {
            let reported = import.possible_duplicate.as_ref().expect("reported beside the crowd");
            assert_eq!(reported.reason, DuplicateReason::SeveralCandidates);
            let ids: Vec<i64> = reported.candidates.iter().map(|c| c.patient_id).collect();
            assert_eq!(ids, (0..20).collect::<Vec<_>>());
            assert!(reported.candidates.capacity() <= MAX_CANDIDATES, "room for {}", reported.candidates.capacity());
        }
    }

    /// The DentalTID patients deciding `patient` gathers, before they are cut to those its report
    /// names.
    fn gathered(matcher: &Matcher, patient: &NanoPixPatient) -> usize {
        let (first, last) = (normalise_name(&patient.first_name), normalise_name(&patient.last_name));
        let verdict = match Person::new(&first, &last, patient.birth_date) {
            Some(person) => matcher.verdict(&person, false),
            None => Verdict::Import(matcher.one_name_missing(&first, &last, patient.birth_date, false)),
        };
        match verdict {
            Verdict::Link(_) => 1,
            Verdict::Import(found) => found.map_or(0, |(_, entries)| entries.len()),
        }
    }

    /// Thousands of patients of one key, as clinics type them ("X Patient" born on a default date,
    /// "X Inconnu" without a birth date, "Inconnu" alone): deciding a NanoPix patient beside such a
    /// crowd gathers only as many patients as its report can name, not the whole crowd, so crowds
    /// on both sides are decided in time linear in their size, not in the product of both.
    #[test]
    fn deciding_a_patient_beside_a_crowd_gathers_only_the_patients_its_report_can_name() {
        let day = born(1900, 1, 1);
        let crowds = [
            (("X", "Patient", day), ("X", "Patient", day)),
            (("X", "Patient", day), ("Patient", "X", day)),
            (("X", "Inconnu", None), ("X", "Inconnu", None)),
            (("X", "Inconnu", None), ("Inconnu", "X", None)),
            (("", "Inconnu", day), ("", "Inconnu", day)),
            (("", "Inconnu", day), ("X", "Inconnu", day)),
            (("X", "Inconnu", day), ("", "Inconnu", day)),
        ];
        for ((first, last, date), typed) in crowds {
            let dentaltid: Vec<Patient> = (0..5_000).map(|id| dental(id, first, last, date)).collect();
            let matcher = matcher_over(&dentaltid, true);
            let found = gathered(&matcher, &nanopix(1, typed.0, typed.1, typed.2));
            assert!((1..=MAX_CANDIDATES).contains(&found), "{typed:?} beside {first} {last}: {found} gathered");
        }
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

    /// NanoPix's form leaves the registration day as the birth date, or none: a patient typed
    /// there with first and last name swapped is still reported beside the DentalTID patient.
    #[test]
    fn swapped_names_with_a_missing_or_doubtful_birth_date_are_reported() {
        let dentaltid = [dental(5, "Amina", "Benali", born(1985, 3, 12))];
        let unborn = decide_one(nanopix(1, "Benali", "Amina", None), &dentaltid);
        assert_eq!(unborn, duplicate(DuplicateReason::SwappedNames, &[5]));
        let registered = decide_one(nanopix(2, "Benali", "Amina", born(2025, 1, 21)), &dentaltid);
        assert_eq!(registered, duplicate(DuplicateReason::SwappedNames, &[5]));
        let dental_unborn = [dental(6, "Amina", "Benali", None)];
        let typed = decide_one(nanopix(3, "Benali", "Amina", born(1985, 3, 12)), &dental_unborn);
        assert_eq!(typed, duplicate(DuplicateReason::SwappedNames, &[6]));
        let other_day = decide_one(nanopix(4, "Benali", "Amina", born(1990, 1, 1)), &dentaltid);
        assert_eq!(other_day, Decision::import(None), "a typed birth date of another day is another person");
    }

    #[test]
    fn a_birth_date_on_the_registration_day_counts_as_missing_for_near_misses() {
        let dentaltid = [dental(5, "Amina", "Benali", born(1985, 3, 12)), dental(6, "Amina", "Benali", None)];
        let registered = born(2025, 1, 21);
        let by_id = decide_one(nanopix(1, "Amina", "Benali", registered), &dentaltid);
        assert_eq!(by_id, duplicate(DuplicateReason::MissingBirthDate, &[5, 6]));
        let mut by_creation = nanopix(2, "Amina", "Benali", born(2025, 1, 24));
        by_creation.created = born(2025, 1, 24).and_then(|day| day.and_hms_opt(9, 30, 0));
        assert_eq!(decide_one(by_creation, &dentaltid), duplicate(DuplicateReason::MissingBirthDate, &[5, 6]));
        let typed = decide_one(nanopix(3, "Amina", "Benali", born(1990, 1, 1)), &dentaltid);
        assert_eq!(typed, duplicate(DuplicateReason::MissingBirthDate, &[6]), "a typed date: only the unborn one");
        let same_day = [dental(7, "Amina", "Benali", registered)];
        assert_eq!(decide_one(nanopix(4, "Amina", "Benali", registered), &same_day), Decision::Link { patient_id: 7 });
        let near_same_day = [dental(8, "Amina", "Benaly", registered)];
        let near = decide_one(nanopix(5, "Amina", "Benali", registered), &near_same_day);
        assert_eq!(near, duplicate(DuplicateReason::SimilarNames, &[8]), "a small edit away, born that very day");
    }

    #[test]
    fn a_near_miss_at_the_start_of_both_names_is_found_in_a_crowded_birth_date() {
        let visit_day = born(2024, 3, 4);
        let mut dentaltid: Vec<Patient> =
            (0..40).map(|id| dental(id, &format!("first{id}"), &format!("last{id}"), visit_day)).collect();
        dentaltid.push(dental(9_999, "Elias", "Haddad", visit_day));
        let near_miss = decide_one(nanopix(1, "Ilias", "Addad", visit_day), &dentaltid);
        assert_eq!(near_miss, duplicate(DuplicateReason::SimilarNames, &[9_999]));
    }

    /// A crowded birth date (a default date, or the visit day): 300 women whose first names end
    /// in 'a' (Nadia, Samia, ...) and whose names are two letters shorter in all than the NanoPix
    /// patient's. A typo of "Amina Benali" that keeps both initials (and both last letters but
    /// one) must still be found, as it was before the blocks by last letter were added.
    #[test]
    fn a_typo_sharing_both_initials_is_still_found_beside_a_crowd_sharing_a_last_letter() {
        let visit_day = born(2024, 3, 4);
        let firsts = ["Nadia", "Samia", "Sonia", "Rania", "Dalia", "Lamia"];
        let (consonants, vowels) = (["k", "m", "t", "r", "s", "h", "n", "d", "f", "l"], ["a", "e", "o"]);
        let c = |n: usize| consonants[n % consonants.len()];
        let mut dentaltid = Vec::new();
        for (id, first) in (0..300usize).zip(firsts.iter().cycle()) {
            // Five letters, none starting with 'b' nor ending with 'i': "Kamek", "Marol", ...
            let last =
                format!("{}{}{}{}{}", c(id).to_uppercase(), vowels[id / 10 % 3], c(id / 30), vowels[id % 3], c(id + 3));
            dentaltid.push(dental(id as i64, first, &last, visit_day));
        }
        dentaltid.push(dental(9_999, "Amina", "Benali", visit_day));
        let typo = decide_one(nanopix(1, "Amina", "Benalli", visit_day), &dentaltid);
        assert_eq!(typo, duplicate(DuplicateReason::SimilarNames, &[9_999]));
    }

    /// Clinics of `sizes` patients a side, each with two of `names` and a birth date from `date`;
    /// a DentalTID patient is linked at the odds `linked_odds`.
    fn clinic(
        names: impl Strategy<Value = &'static str> + Clone,
        date: impl Strategy<Value = Option<NaiveDate>> + Clone,
        linked_odds: f64,
        sizes: std::ops::Range<usize>,
    ) -> impl Strategy<Value = (Vec<NanoPixPatient>, Vec<Patient>)> {
        let person = (names.clone(), names, date);
        let nanopix_side = prop::collection::vec(person.clone(), sizes.clone()).prop_map(|people| {
            let to_patient = |(pk, (f, l, b)): (usize, (&str, &str, _))| nanopix(pk as i64, f, l, b);
            people.into_iter().enumerate().map(to_patient).collect()
        });
        let dental_side =
            prop::collection::vec((person, prop::bool::weighted(linked_odds)), sizes).prop_map(|people| {
                let to_patient = |(id, ((f, l, b), is_linked)): (usize, ((&str, &str, _), bool))| {
                    let patient = dental(id as i64, f, l, b);
                    if is_linked { linked(patient) } else { patient }
                };
                people.into_iter().enumerate().map(to_patient).collect()
            });
        (nanopix_side, dental_side)
    }

    fn any_patients() -> impl Strategy<Value = (Vec<NanoPixPatient>, Vec<Patient>)> {
        let names = prop::sample::select(vec!["Zoe", "zoé ", "Doe", "DOE", "Dou", "Lefevre", "Lefebvre", "", " "]);
        let date = prop::option::of(prop::sample::select(vec![born(1990, 5, 6), born(1991, 1, 1)]));
        clinic(names, date.prop_map(Option::flatten), 0.5, 0..8)
    }

    /// Spellings of a few names: some normalise alike (accents, case, spaces, compatibility
    /// forms, harakat, tatweel), some are a letter or two away, some normalise to nothing.
    const COLLIDING_NAMES: [&[&str]; 8] = [
        &["Zoe", "zoé ", "\u{FF3A}\u{FF4F}\u{FF45}", "ZOU", "Zui", "Al"],
        &["Doe", " DOE", "Dou", "Do"],
        &["Lefevre", "LEFÈVRE", "Le  Fevre", "Lefebvre"],
        &["Amina", "Amína", "AMINE", "Benali", "Benalli"],
        &["Strauß", "STRAUSS", "Straus"],
        &["مُحَمَّد", "محمد", "مـحـمد", "محمود"],
        &["علي", "عـلي", " على "],
        &["", " ", "-", "\u{0640}"],
    ];

    /// Clinics of up to nine patients a side named from one to three of [`COLLIDING_NAMES`],
    /// born on one of two days, on the NanoPix patients' registration day, or on none. In half
    /// of them DentalTID also holds a crowd born on each of those days, named unlike them all,
    /// so that each day's patients are looked up by block rather than scanned whole.
    fn colliding_clinics() -> impl Strategy<Value = (Vec<NanoPixPatient>, Vec<Patient>)> {
        let days = [born(1990, 5, 6), born(1991, 1, 1), born(2025, 1, 21)];
        let clinics = prop::sample::subsequence(COLLIDING_NAMES.to_vec(), 1..=3).prop_flat_map(move |pools| {
            let date = prop::option::weighted(0.75, prop::sample::select(days.to_vec())).prop_map(Option::flatten);
            clinic(prop::sample::select(pools.concat()), date, 0.3, 0..10)
        });
        (clinics, any::<bool>()).prop_map(move |((nanopix, mut dentaltid), crowded)| {
            let crowd = (0..=similar::SMALL_BUCKET).flat_map(|n| days.map(|day| (n, day))).enumerate();
            let unlike = |(id, (n, day)): (usize, (usize, _))| {
                dental(100 + id as i64, "Karim", &format!("{}addad", char::from(b'a' + (n % 26) as u8)), day)
            };
            if crowded {
                dentaltid.extend(crowd.map(unlike));
            }
            (nanopix, dentaltid)
        })
    }

    /// Both names, normalised.
    fn names_of(first_name: &str, last_name: &str) -> [String; 2] {
        [normalise_name(first_name), normalise_name(last_name)]
    }

    /// What the rules of the README decide for each NanoPix patient, found by comparing it with
    /// every DentalTID patient, and with every other NanoPix patient for the one rule that looks
    /// at them: only a key no other NanoPix patient of the pass has links.
    fn by_the_rules(nanopix: &[NanoPixPatient], dentaltid: &[Patient], auto_link: bool) -> Vec<Decision> {
        let key = |p: &NanoPixPatient| (names_of(&p.first_name, &p.last_name), p.birth_date);
        let decide = |patient: &NanoPixPatient| {
            let (names, born) = key(patient);
            let twins: Vec<&Patient> = dentaltid
                .iter()
                .filter(|d| both_named(&names) && born.is_some() && d.date_of_birth == born)
                .filter(|d| names_of(&d.first_name, &d.last_name) == names)
                .collect();
            let alone = nanopix.iter().filter(|other| key(other) == key(patient)).count() == 1;
            let reason = match twins.as_slice() {
                [] => {
                    // NanoPix's form fills in the registration day: a birth date nobody may have typed.
                    let typed = born.filter(|_| !patient.born_on_registration_day());
                    let everyone: Vec<&Patient> = dentaltid.iter().collect();
                    return Decision::import(look_alikes_by_the_rules((&names, born, typed), &everyone, false));
                }
                _ if !auto_link => DuplicateReason::AutoLinkOff,
                [twin] if twin.external_id.is_some() => DuplicateReason::AlreadyLinked,
                [twin] if alone => return Decision::Link { patient_id: twin.id },
                _ => DuplicateReason::SeveralCandidates,
            };
            Decision::import(Some((reason, twins.iter().map(|twin| twin.id).collect())))
        };
        nanopix.iter().map(decide).collect()
    }

    fn both_named(names: &[String; 2]) -> bool {
        names.iter().all(|name| !name.is_empty())
    }

    /// A person as the rules compare one: both names normalised, the birth date, and the birth
    /// date as typed (none where it may be a registration day nobody typed).
    type Compared<'p> = (&'p [String; 2], Option<NaiveDate>, Option<NaiveDate>);

    /// The look-alikes among `others` the README's rules report beside a person: the reason of the
    /// first rule that finds one, with every patient any rule finds, by id (the clinics compared
    /// are too small for the cap of 20 to cut any). An export's rules start with the same person
    /// already linked.
    fn look_alikes_by_the_rules(
        (names, born, typed): Compared<'_>,
        others: &[&Patient],
        exported: bool,
    ) -> Option<(DuplicateReason, Vec<i64>)> {
        let swapped = [names[1].clone(), names[0].clone()];
        let born = born.filter(|_| both_named(names));
        let same_day = |day: Option<NaiveDate>| born.is_some() && day == born;
        let undated = |day: Option<NaiveDate>| both_named(names) && (day.is_none() || typed.is_none());
        let one_name_left_out_on =
            |other: &[String; 2], day| typed.is_some() && day == typed && one_name_left_out(names, other);
        type Rule<'r> = &'r dyn Fn(&[String; 2], Option<NaiveDate>) -> bool;
        let rules: [(DuplicateReason, Rule<'_>); 6] = [
            (DuplicateReason::AlreadyLinked, &|other, day| {
                exported && ((same_day(day) && other == names) || one_name_left_out_on(other, day))
            }),
            (DuplicateReason::SwappedNames, &|other, day| same_day(day) && *other == swapped),
            (DuplicateReason::SimilarNames, &|other, day| same_day(day) && similar_by_the_rules(names, other)),
            (DuplicateReason::MissingBirthDate, &|other, day| undated(day) && other == names),
            (DuplicateReason::SwappedNames, &|other, day| undated(day) && *other == swapped),
            (DuplicateReason::MissingName, &|other, day| one_name_left_out_on(other, day)),
        ];
        let found = rules.iter().flat_map(|(reason, applies)| {
            let look_alikes =
                others.iter().filter(|d| applies(&names_of(&d.first_name, &d.last_name), d.date_of_birth));
            look_alikes.map(|d| (*reason, d.id))
        });
        let found: Vec<(DuplicateReason, i64)> = found.collect();
        let mut ids: Vec<i64> = found.iter().map(|&(_, id)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        Some((found.first()?.0, ids))
    }

    /// Both names of both people given, not all the same, at most two edits apart over both
    /// names, and six characters or more in the longer.
    fn similar_by_the_rules(a: &[String; 2], b: &[String; 2]) -> bool {
        let edits: usize = a.iter().zip(b).map(|(x, y)| strsim::levenshtein(x, y)).sum();
        let chars = |names: &[String; 2]| names.iter().map(|name| name.chars().count()).sum::<usize>();
        both_named(a) && both_named(b) && a != b && edits <= 2 && chars(a).max(chars(b)) >= 6
    }

    /// One side has only one name, which the other has as its first or last name.
    fn one_name_left_out(a: &[String; 2], b: &[String; 2]) -> bool {
        let sole = |[first, last]: &[String; 2]| match (first.is_empty(), last.is_empty()) {
            (false, true) => Some(first.clone()),
            (true, false) => Some(last.clone()),
            _ => None,
        };
        sole(a).is_some_and(|name| b.contains(&name)) || sole(b).is_some_and(|name| a.contains(&name))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// The indexes decide every NanoPix patient of a clinic full of look-alikes as comparing
        /// every pair by the README's rules does.
        #[test]
        fn the_matcher_decides_as_comparing_every_pair_does(
            (nanopix, dentaltid) in colliding_clinics(),
            auto_link in prop::bool::weighted(0.8),
        ) {
            prop_assert_eq!(decide(&nanopix, &dentaltid, auto_link), by_the_rules(&nanopix, &dentaltid, auto_link));
        }

        /// An export of each DentalTID patient of such a clinic names the linked patients that
        /// comparing it with every other linked patient by the README's rules names.
        #[test]
        fn an_export_finds_the_linked_twins_comparing_every_pair_does((_, dentaltid) in colliding_clinics()) {
            let matcher = matcher_over(&dentaltid, true);
            for patient in &dentaltid {
                let person = (patient.first_name.as_str(), patient.last_name.as_str(), patient.date_of_birth);
                let twins = matcher.linked_twins(person, patient.id, &foldhash::HashSet::default());
                let found = twins.map(|twins| (twins.reason, twins.candidates.iter().map(|c| c.patient_id).collect()));
                let linked_others: Vec<&Patient> =
                    dentaltid.iter().filter(|d| d.external_id.is_some() && d.id != patient.id).collect();
                let names = names_of(&patient.first_name, &patient.last_name);
                let born = patient.date_of_birth;
                prop_assert_eq!(found, look_alikes_by_the_rules((&names, born, born), &linked_others, true));
            }
        }
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

    /// The linked twins an export of DentalTID patient 9 (Nadia Saidi, born 1990-03-04) reports,
    /// among `dentaltid`: reason and ids.
    fn twins_of_nadia(dentaltid: &[Patient]) -> Option<(DuplicateReason, Vec<i64>)> {
        let matcher = matcher_over(dentaltid, true);
        let found = matcher.linked_twins(("Nadia", "Saidi", born(1990, 3, 4)), 9, &foldhash::HashSet::default());
        found.map(|twins| (twins.reason, twins.candidates.iter().map(|c| c.patient_id).collect()))
    }

    #[test]
    fn an_export_names_every_linked_twin_with_the_reason_of_the_first_rule_that_finds_one() {
        let on_the_day = born(1990, 3, 4);
        let (same, swapped) =
            (linked(dental(1, "NADIA", "saidi", on_the_day)), linked(dental(2, "Saidi", "Nadia", on_the_day)));
        let similar = linked(dental(3, "Nadia", "Saydi", on_the_day));
        let (herself, unlinked) = (dental(9, "Nadia", "Saidi", on_the_day), dental(4, "Nadia", "Saidi", on_the_day));
        let other_day = linked(dental(5, "Nadia", "Saidi", born(1990, 3, 5)));
        let all = [same, swapped, similar, herself, unlinked, other_day];
        assert_eq!(twins_of_nadia(&all), Some((DuplicateReason::AlreadyLinked, vec![1, 2, 3])));
        assert_eq!(twins_of_nadia(&all[1..]), Some((DuplicateReason::SwappedNames, vec![2, 3])));
        assert_eq!(twins_of_nadia(&all[2..]), Some((DuplicateReason::SimilarNames, vec![3])));
        assert_eq!(twins_of_nadia(&all[3..]), None, "no linked patient born that day looks like her");
    }

    /// A birth date hundreds of unlinked patients share (a default date, say): the comparisons
    /// the look-alike search allows are spent on linked patients, so the linked one is found.
    #[test]
    fn an_export_finds_a_linked_look_alike_behind_a_crowd_born_the_same_day() {
        let day = born(1990, 3, 4);
        let mut all = vec![linked(dental(1, "Nadia", "Saydi", day))];
        let letters = ['b', 'c', 'f', 'g', 'h', 'j', 'k', 'm'];
        for n in 0..600 {
            let (a, b, c) = (letters[n / 64 % 8], letters[n / 8 % 8], letters[n % 8]);
            all.push(dental(10 + n as i64, &format!("N{a}{b}{c}a"), &format!("S{c}{b}{a}i"), day));
        }
        all.push(dental(9, "Nadia", "Saidi", day));
        assert_eq!(twins_of_nadia(&all), Some((DuplicateReason::SimilarNames, vec![1])));
    }
}
