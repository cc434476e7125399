//! The DentalTID side of matching, held compactly: every name in one text buffer, one small
//! fixed-size entry per patient, and groups that chain entries sharing a key.
//!
//! A group is keyed by a 64-bit hash of the key, so two different keys may share a group;
//! every lookup compares the real names before it trusts an entry. Nothing here allocates per
//! patient, so 100,000 DentalTID patients take a few MiB.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Range;

use chrono::NaiveDate;
use foldhash::fast::RandomState;

use super::DentalCandidate;
use super::normalise::normalise_into;
use super::similar::{BLOCK_KINDS, Block, BlockLetters, SMALL_BUCKET, block_letters, blocks_of};
use crate::events::DuplicateCandidate;
use crate::patient::nanopix_date;

/// Marks the end of a chain in [`Groups`].
const END: usize = usize::MAX;

/// Most patients of one birth date compared with a NanoPix patient who has only one name.
const MAX_ONE_NAME_COMPARISONS: usize = 1_024;

/// A person's matching key: normalised first and last name (both non-empty) and birth date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Person<'a> {
    /// Normalised first name.
    pub first: &'a str,
    /// Normalised last name.
    pub last: &'a str,
    /// Birth date, when known.
    pub born: Option<NaiveDate>,
    /// Characters in first and last name together.
    pub chars: usize,
}

impl<'a> Person<'a> {
    /// The key of these normalised names, or `None` when either is empty.
    pub fn new(first: &'a str, last: &'a str, born: Option<NaiveDate>) -> Option<Self> {
        let chars = first.chars().count() + last.chars().count();
        (!first.is_empty() && !last.is_empty()).then_some(Self { first, last, born, chars })
    }

    /// The name of a person with only one: the first name, or else the last.
    fn sole_name(&self) -> &'a str {
        if self.first.is_empty() { self.last } else { self.first }
    }
}

/// One DentalTID patient: its id, where its names sit in the text buffer, and its key facts.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: i64,
    /// Offsets into the text buffer: normalised first name from `start` to `ends[0]`, then
    /// normalised last name, first name as typed, last name as typed.
    start: usize,
    ends: [usize; 4],
    born: Option<NaiveDate>,
    /// Characters in its normalised names (at most `u16::MAX`).
    chars: u16,
    /// The letters of its blocks (see [`block_letters`]); zeros for a one-named patient.
    letters: BlockLetters,
    linked: bool,
}

impl Entry {
    /// Whether one of its names normalises to nothing: such a patient sits only in
    /// [`DentalIndex`]'s `one_named`.
    fn one_named(&self) -> bool {
        self.start == self.ends[0] || self.ends[0] == self.ends[1]
    }
}

/// Entries grouped by a hashed key: for each key the first and the last entry filed, and from
/// every entry the one filed after it with the same key.
#[derive(Debug, Default)]
struct Groups {
    ends: HashMap<u64, (usize, usize), RandomState>,
    next: Vec<usize>,
}

impl Groups {
    /// Groups for filing some of `entries` entries (see [`Groups::file`]).
    fn sparse(entries: usize, hasher: RandomState) -> Self {
        Self { ends: HashMap::with_hasher(hasher), next: vec![END; entries] }
    }

    /// Files `entry` under `key`, as the group's last.
    fn file(&mut self, entry: usize, key: u64) {
        if entry >= self.next.len() {
            return;
        }
        match self.ends.get_mut(&key) {
            Some((_, last)) => {
                if let Some(next) = self.next.get_mut(*last) {
                    *next = entry;
                }
                *last = entry;
            }
            None => {
                self.ends.insert(key, (entry, entry));
            }
        }
    }

    /// The entries filed under `key`, in the order filed.
    fn get(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let first = self.ends.get(&key).map_or(END, |&(first, _)| first);
        std::iter::successors(Some(first), |&entry| self.next.get(entry).copied()).take_while(|&entry| entry != END)
    }
}

/// A DentalTID patient with a birth date, as the bucket of its birth date lists it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Member {
    /// Its entry.
    pub entry: usize,
    /// Characters in its normalised first and last name together (at most `u16::MAX`).
    pub chars: u16,
    /// The letters of its blocks, see [`super::similar::block_letters`].
    pub letters: BlockLetters,
}

/// The entries with a birth date, grouped by it: the members of each date side by side,
/// newest first, so a bucket is read in one sweep.
#[derive(Debug, Default)]
struct Buckets {
    /// Where the members of each birth date sit in `members`.
    ranges: HashMap<NaiveDate, Range<usize>, RandomState>,
    members: Vec<Member>,
}

impl Buckets {
    /// The buckets of `entries`.
    fn of(entries: &[Entry], hasher: RandomState) -> Self {
        let named = entries.iter().enumerate().filter(|(_, e)| !e.one_named());
        let mut born: Vec<(NaiveDate, Reverse<usize>, u16, BlockLetters)> =
            named.filter_map(|(entry, e)| Some((e.born?, Reverse(entry), e.chars, e.letters))).collect();
        born.sort_unstable();
        let mut ranges = HashMap::with_hasher(hasher);
        let mut start = 0;
        for bucket in born.chunk_by(|a, b| a.0 == b.0) {
            if let Some(&(date, ..)) = bucket.first() {
                ranges.insert(date, start..start + bucket.len());
            }
            start += bucket.len();
        }
        let members =
            born.into_iter().map(|(_, Reverse(entry), chars, letters)| Member { entry, chars, letters }).collect();
        Self { ranges, members }
    }

    /// The members born on `born`, newest first.
    fn get(&self, born: NaiveDate) -> &[Member] {
        self.ranges.get(&born).and_then(|range| self.members.get(range.clone())).unwrap_or_default()
    }
}

/// Every DentalTID patient a NanoPix patient could match, with the indexes matching looks them up by.
///
/// Patients are [added](DentalIndex::add) one by one; once all are in, [`DentalIndex::group`]
/// puts them in id order and groups them by names and by birth date, and the patients of crowded
/// birth dates by block.
#[derive(Debug, Default)]
pub(crate) struct DentalIndex {
    text: String,
    entries: Vec<Entry>,
    hasher: RandomState,
    by_exact: Groups,
    by_names: Groups,
    /// Like `by_names`, for entries without a birth date only.
    unborn_by_names: Groups,
    by_birth_date: Buckets,
    /// Patients of birth dates shared by more than [`SMALL_BUCKET`] patients, by each kind of
    /// block (see [`Block::kind`]).
    by_block: [Groups; BLOCK_KINDS],
    /// The patients with a birth date and only one name, by that name and birth date, in id
    /// order; they sit in no other group.
    one_named: HashMap<u64, Vec<usize>, RandomState>,
}

impl DentalIndex {
    /// Counts the patients `patient_ids` holds as linked.
    pub(super) fn mark_linked(&mut self, patient_ids: &foldhash::HashSet<i64>) {
        if patient_ids.is_empty() {
            return;
        }
        for entry in &mut self.entries {
            entry.linked |= patient_ids.contains(&entry.id);
        }
    }

    /// The ids of the patients not counted as linked.
    pub fn unlinked_ids(&self) -> Vec<i64> {
        self.entries.iter().filter(|entry| !entry.linked).map(|entry| entry.id).collect()
    }

    /// Adds a patient. One with only one name is a candidate only for [`DentalIndex::one_named`];
    /// one without a name, or with one name and no birth date, is never a candidate.
    pub fn add(&mut self, candidate: DentalCandidate<'_>) {
        let start = self.text.len();
        let ends = [candidate.first_name, candidate.last_name].map(|name| {
            normalise_into(name, &mut self.text);
            self.text.len()
        });
        let shown = [candidate.first_name, candidate.last_name].map(|name| {
            self.text.push_str(name);
            self.text.len()
        });
        let born = candidate.date_of_birth;
        let Some(person) = Person::new(&self.text[start..ends[0]], &self.text[ends[0]..ends[1]], born) else {
            self.add_one_named(candidate, start, [ends[0], ends[1], shown[0], shown[1]]);
            return;
        };
        let (chars, letters) = (u16::try_from(person.chars).unwrap_or(u16::MAX), block_letters(&person));
        self.entries.push(Entry {
            id: candidate.id,
            start,
            ends: [ends[0], ends[1], shown[0], shown[1]],
            born,
            chars,
            letters,
            linked: candidate.linked,
        });
    }

    /// Adds a patient whose names (in the text buffer from `start` to `ends`) are not both
    /// usable, to be filed under its one name and birth date, or drops it.
    fn add_one_named(&mut self, candidate: DentalCandidate<'_>, start: usize, ends: [usize; 4]) {
        let (first, last) = (&self.text[start..ends[0]], &self.text[ends[0]..ends[1]]);
        let name = if first.is_empty() { last } else { first };
        let Some(born) = candidate.date_of_birth.filter(|_| !name.is_empty()) else {
            self.text.truncate(start);
            return;
        };
        let chars = u16::try_from(name.chars().count()).unwrap_or(u16::MAX);
        let (id, linked, born) = (candidate.id, candidate.linked, Some(born));
        self.entries.push(Entry { id, start, ends, born, chars, letters: BlockLetters::default(), linked });
    }

    /// Puts the patients in id order and files them in every group lookups read. Call it once
    /// all patients are added. Each group then lists its patients by id, so a lookup that takes
    /// the first few of a crowd sharing one key takes those with the lowest ids, whatever order
    /// the patients were read in.
    pub fn group(&mut self) {
        self.entries.sort_unstable_by_key(|entry| entry.id);
        self.group_by_names();
        self.group_by_birth_date();
    }

    /// Files every patient under its names (and birth date, or the lack of one), or one with
    /// only one name under that name and birth date.
    fn group_by_names(&mut self) {
        let mut groups = [(); 3].map(|()| Groups::sparse(self.entries.len(), self.hasher));
        let mut one_named: HashMap<u64, Vec<usize>, RandomState> = HashMap::with_hasher(self.hasher);
        for entry in 0..self.entries.len() {
            let Some(person) = self.person(entry) else { continue };
            let [by_exact, by_names, unborn_by_names] = &mut groups;
            match (person.born, self.entries.get(entry).is_some_and(Entry::one_named)) {
                (Some(born), true) => {
                    one_named.entry(self.one_name_key(person.sole_name(), born)).or_default().push(entry)
                }
                (None, true) => {}
                (born, false) => {
                    let names = self.names_key(person.first, person.last);
                    by_names.file(entry, names);
                    match born {
                        Some(born) => by_exact.file(entry, self.exact_key(person.first, person.last, born)),
                        None => unborn_by_names.file(entry, names),
                    }
                }
            }
        }
        [self.by_exact, self.by_names, self.unborn_by_names] = groups;
        self.one_named = one_named;
    }

    /// Groups the patients by birth date, and files those of every birth date shared by more
    /// than [`SMALL_BUCKET`] patients by block, newest first.
    fn group_by_birth_date(&mut self) {
        self.by_birth_date = Buckets::of(&self.entries, self.hasher);
        let mut by_block = [(); BLOCK_KINDS].map(|()| Groups::sparse(self.entries.len(), self.hasher));
        let big = self.by_birth_date.ranges.values().filter(|range| range.len() > SMALL_BUCKET);
        for range in big {
            let bucket = self.by_birth_date.members.get(range.clone()).unwrap_or_default();
            for entry in bucket.iter().map(|member| member.entry) {
                let Some(person) = self.person(entry) else { continue };
                let Some(born) = person.born else { continue };
                for (groups, block) in by_block.iter_mut().zip(blocks_of(&person, person.chars)) {
                    if let Some(block) = block {
                        groups.file(entry, self.block_key(born, block));
                    }
                }
            }
        }
        self.by_block = by_block;
    }

    fn exact_key(&self, first: &str, last: &str, born: NaiveDate) -> u64 {
        self.hasher.hash_one((first, last, born))
    }

    fn names_key(&self, first: &str, last: &str) -> u64 {
        self.hasher.hash_one((first, last))
    }

    fn one_name_key(&self, name: &str, born: NaiveDate) -> u64 {
        self.hasher.hash_one((name, born))
    }

    fn block_key(&self, born: NaiveDate, block: Block) -> u64 {
        self.hasher.hash_one((born, block))
    }

    /// The key of entry `entry`.
    pub(super) fn person(&self, entry: usize) -> Option<Person<'_>> {
        let entry = self.entries.get(entry)?;
        let first = self.text.get(entry.start..entry.ends[0])?;
        let last = self.text.get(entry.ends[0]..entry.ends[1])?;
        Some(Person { first, last, born: entry.born, chars: usize::from(entry.chars) })
    }

    /// The entries whose names are `first` and `last` and who were born on `born`, by id.
    pub(super) fn exact(&self, first: &str, last: &str, born: NaiveDate) -> impl Iterator<Item = usize> {
        let same = move |entry: &usize| {
            self.person(*entry).is_some_and(|p| p.first == first && p.last == last && p.born == Some(born))
        };
        self.by_exact.get(self.exact_key(first, last, born)).filter(same)
    }

    /// The entries with the same names as `person` where one side's birth date is missing (all
    /// of them when `person`'s birth date counts as missing too), by id.
    pub(super) fn same_names_one_unborn(
        &self,
        person: &Person<'_>,
        born_counts_as_missing: bool,
    ) -> impl Iterator<Item = usize> {
        let group =
            if person.born.is_some() && !born_counts_as_missing { &self.unborn_by_names } else { &self.by_names };
        let (first, last) = (person.first, person.last);
        let same = move |entry: &usize| self.person(*entry).is_some_and(|p| p.first == first && p.last == last);
        group.get(self.names_key(first, last)).filter(same)
    }

    /// The entries with only one name, `name` (as first or last name), born on `born`, by id.
    pub(super) fn one_named(&self, name: &str, born: NaiveDate) -> impl Iterator<Item = usize> {
        let same = move |entry: &usize| {
            self.person(*entry).is_some_and(|p| p.sole_name() == name) && self.born(*entry) == Some(born)
        };
        let group = self.one_named.get(&self.one_name_key(name, born));
        group.into_iter().flatten().copied().filter(same)
    }

    /// The entries with both names born on `born` whose first or last name is `name`, by id; of
    /// a crowded birth date, only the newest [`MAX_ONE_NAME_COMPARISONS`] are compared.
    pub(super) fn named_on(&self, name: &str, born: NaiveDate) -> impl Iterator<Item = usize> {
        let bucket = self.born_on(born);
        let newest = bucket.get(..MAX_ONE_NAME_COMPARISONS).unwrap_or(bucket);
        let named = move |entry: &usize| self.person(*entry).is_some_and(|p| p.first == name || p.last == name);
        newest.iter().rev().map(|member| member.entry).filter(named)
    }

    /// The patients born on `born`, newest first.
    pub(super) fn born_on(&self, born: NaiveDate) -> &[Member] {
        self.by_birth_date.get(born)
    }

    /// The entries born on `born` that sit in `block`.
    pub(super) fn in_block(&self, born: NaiveDate, block: Block) -> impl Iterator<Item = usize> + '_ {
        let group = &self.by_block[block.kind()];
        group.get(self.block_key(born, block)).filter(move |&entry| self.born(entry) == Some(born))
    }

    fn born(&self, entry: usize) -> Option<NaiveDate> {
        self.entries.get(entry).and_then(|entry| entry.born)
    }

    /// Whether the patient of entry `entry` already has a NanoPix id.
    pub(super) fn is_linked(&self, entry: usize) -> bool {
        self.entries.get(entry).is_some_and(|entry| entry.linked)
    }

    /// Every entry as a possible duplicate names it, in the order added.
    #[cfg(test)]
    pub(crate) fn candidates(&self) -> Vec<DuplicateCandidate> {
        (0..self.entries.len()).filter_map(|entry| self.candidate(entry)).collect()
    }

    /// The `patients.id` of entry `entry`.
    pub(super) fn patient_id(&self, entry: usize) -> Option<i64> {
        self.entries.get(entry).map(|entry| entry.id)
    }

    /// Entry `entry` as a possible duplicate names it: id, names as typed and birth date.
    pub(super) fn candidate(&self, entry: usize) -> Option<DuplicateCandidate> {
        let entry = self.entries.get(entry)?;
        Some(DuplicateCandidate {
            patient_id: entry.id,
            first_name: self.text.get(entry.ends[1]..entry.ends[2])?.to_owned(),
            last_name: self.text.get(entry.ends[2]..entry.ends[3])?.to_owned(),
            date_of_birth: entry.born.map(nanopix_date),
        })
    }
}
