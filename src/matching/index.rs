//! The DentalTID side of matching, held compactly: every name in one text buffer, one small
//! fixed-size entry per patient, and groups that chain entries sharing a key.
//!
//! A group is keyed by a 64-bit hash of the key, so two different keys may share a group;
//! every lookup compares the real names before it trusts an entry. Nothing here allocates per
//! patient, so 100,000 DentalTID patients take a few MiB.

use std::collections::HashMap;
use std::hash::BuildHasher;

use chrono::NaiveDate;
use foldhash::fast::RandomState;

use super::similar::Block;
use super::{DentalCandidate, normalise_name};
use crate::events::DuplicateCandidate;
use crate::patient::nanopix_date;

/// Marks the end of a chain in [`Groups`].
const END: usize = usize::MAX;

/// A person's matching key: normalised first and last name (both non-empty) and birth date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Person<'a> {
    pub first: &'a str,
    pub last: &'a str,
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
    chars: usize,
    linked: bool,
}

/// Entries grouped by a hashed key: the last entry added with each key, and from every entry
/// the one added before it with the same key.
#[derive(Debug, Default)]
struct Groups {
    heads: HashMap<u64, usize, RandomState>,
    previous: Vec<usize>,
}

impl Groups {
    /// Files entry number `previous.len()` under `key`, or under no key.
    fn push(&mut self, key: Option<u64>) {
        let entry = self.previous.len();
        let previous = key.and_then(|key| self.heads.insert(key, entry)).unwrap_or(END);
        self.previous.push(previous);
    }

    /// The entries filed under `key`, newest first.
    fn get(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let head = self.heads.get(&key).copied().unwrap_or(END);
        std::iter::successors(Some(head), |&entry| self.previous.get(entry).copied()).take_while(|&entry| entry != END)
    }
}

/// Every DentalTID patient a NanoPix patient could match, with the indexes matching looks them up by.
#[derive(Debug, Default)]
pub(crate) struct DentalIndex {
    text: String,
    entries: Vec<Entry>,
    hasher: RandomState,
    by_exact: Groups,
    by_names: Groups,
    /// Like `by_names`, for entries without a birth date only.
    unborn_by_names: Groups,
    by_birth_date: Groups,
    by_last_initial: Groups,
    by_first_initial: Groups,
    /// How many entries share each birth date.
    bucket_sizes: HashMap<NaiveDate, usize, RandomState>,
}

impl DentalIndex {
    /// Adds a patient; one without a usable first and last name is never a candidate.
    pub fn add(&mut self, candidate: DentalCandidate<'_>) {
        let start = self.text.len();
        let ends = [candidate.first_name, candidate.last_name].map(|name| {
            self.text.push_str(&normalise_name(name));
            self.text.len()
        });
        let shown = [candidate.first_name, candidate.last_name].map(|name| {
            self.text.push_str(name);
            self.text.len()
        });
        let born = candidate.date_of_birth;
        let Some(person) = Person::new(&self.text[start..ends[0]], &self.text[ends[0]..ends[1]], born) else {
            self.text.truncate(start);
            return;
        };
        let keys = self.keys(&person);
        self.entries.push(Entry {
            id: candidate.id,
            start,
            ends: [ends[0], ends[1], shown[0], shown[1]],
            born,
            chars: person.chars,
            linked: candidate.linked,
        });
        self.file(keys, born);
    }

    /// The hashed keys of a person in each group, in the order [`DentalIndex::file`] takes them.
    fn keys(&self, person: &Person<'_>) -> [Option<u64>; 6] {
        let blocks = super::similar::blocks_of(person, person.chars);
        let names = self.names_key(person);
        [
            person.born.map(|born| self.exact_key(person.first, person.last, born)),
            Some(names),
            person.born.is_none().then_some(names),
            person.born.map(|born| self.hasher.hash_one(born)),
            person.born.zip(blocks[0]).map(|(born, block)| self.block_key(born, block)),
            person.born.zip(blocks[1]).map(|(born, block)| self.block_key(born, block)),
        ]
    }

    fn file(&mut self, keys: [Option<u64>; 6], born: Option<NaiveDate>) {
        let groups = [
            &mut self.by_exact,
            &mut self.by_names,
            &mut self.unborn_by_names,
            &mut self.by_birth_date,
            &mut self.by_last_initial,
            &mut self.by_first_initial,
        ];
        for (group, key) in groups.into_iter().zip(keys) {
            group.push(key);
        }
        if let Some(born) = born {
            *self.bucket_sizes.entry(born).or_insert(0) += 1;
        }
    }

    fn exact_key(&self, first: &str, last: &str, born: NaiveDate) -> u64 {
        self.hasher.hash_one((first, last, born))
    }

    fn names_key(&self, person: &Person<'_>) -> u64 {
        self.hasher.hash_one((person.first, person.last))
    }

    fn block_key(&self, born: NaiveDate, block: Block) -> u64 {
        self.hasher.hash_one((born, block))
    }

    /// The key of entry `entry`.
    pub(super) fn person(&self, entry: usize) -> Option<Person<'_>> {
        let entry = self.entries.get(entry)?;
        let first = self.text.get(entry.start..entry.ends[0])?;
        let last = self.text.get(entry.ends[0]..entry.ends[1])?;
        Some(Person { first, last, born: entry.born, chars: entry.chars })
    }

    /// The entries whose names are `first` and `last` and who were born on `born`.
    pub(super) fn exact(&self, first: &str, last: &str, born: NaiveDate) -> Vec<usize> {
        let same = |entry: &usize| {
            self.person(*entry).is_some_and(|p| p.first == first && p.last == last && p.born == Some(born))
        };
        self.by_exact.get(self.exact_key(first, last, born)).filter(same).collect()
    }

    /// The entries with the same names as `person` where one side's birth date is missing.
    pub(super) fn same_names_one_unborn(&self, person: &Person<'_>) -> Vec<usize> {
        let group = if person.born.is_some() { &self.unborn_by_names } else { &self.by_names };
        let same =
            |entry: &usize| self.person(*entry).is_some_and(|p| p.first == person.first && p.last == person.last);
        group.get(self.names_key(person)).filter(same).collect()
    }

    /// How many entries were born on `born`.
    pub(super) fn bucket_size(&self, born: NaiveDate) -> usize {
        self.bucket_sizes.get(&born).copied().unwrap_or(0)
    }

    /// The entries born on `born`.
    pub(super) fn born_on(&self, born: NaiveDate) -> impl Iterator<Item = usize> + '_ {
        self.by_birth_date.get(self.hasher.hash_one(born)).filter(move |&entry| self.born(entry) == Some(born))
    }

    /// The entries born on `born` that sit in `block`.
    pub(super) fn in_block(&self, born: NaiveDate, block: Block) -> impl Iterator<Item = usize> + '_ {
        let group = match block {
            Block::LastInitial(..) => &self.by_last_initial,
            Block::FirstInitial(..) => &self.by_first_initial,
        };
        group.get(self.block_key(born, block)).filter(move |&entry| self.born(entry) == Some(born))
    }

    fn born(&self, entry: usize) -> Option<NaiveDate> {
        self.entries.get(entry).and_then(|entry| entry.born)
    }

    /// Whether the patient of entry `entry` already has a NanoPix id.
    pub(super) fn is_linked(&self, entry: usize) -> bool {
        self.entries.get(entry).is_some_and(|entry| entry.linked)
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
