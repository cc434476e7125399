//! Similar-names detection: DentalTID patients born the same day whose names are a small edit
//! away from a NanoPix patient's.
//!
//! Comparisons happen only inside one birth-date bucket. Big buckets (NanoPix often stores the
//! visit date as the birth date) are blocked further by initial and name length, and each
//! lookup compares at most [`MAX_COMPARISONS`] patients, so the whole check stays linear. It
//! never compares every pair.

use std::collections::HashMap;

use chrono::NaiveDate;

use super::{Entry, Person};

/// Most edits (over first and last name together) for two names to count as similar.
const MAX_EDITS: usize = 2;

/// Fewest characters the longer combined name needs before edits are allowed at all.
const MIN_COMBINED_CHARS: usize = 6;

/// Buckets up to this size are scanned whole; bigger ones are looked up by block.
const SMALL_BUCKET: usize = 32;

/// Most DentalTID patients one lookup compares names with.
const MAX_COMPARISONS: usize = 256;

/// DentalTID patients grouped by birth date, for the similar-names check.
pub(super) struct BirthDateIndex<'a> {
    buckets: HashMap<NaiveDate, Bucket<'a>>,
}

/// The DentalTID patients born on one day.
#[derive(Default)]
struct Bucket<'a> {
    members: Vec<Entry<'a>>,
    blocks: HashMap<Block, Vec<Entry<'a>>>,
}

/// A block inside a big bucket: an initial and the combined name length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Block {
    /// First character of the last name, combined length.
    LastInitial(char, usize),
    /// First character of the first name, combined length.
    FirstInitial(char, usize),
}

impl<'a> BirthDateIndex<'a> {
    /// Groups the patients that have a birth date, blocking the big buckets.
    pub(super) fn build(entries: impl Iterator<Item = Entry<'a>>) -> Self {
        let mut buckets: HashMap<NaiveDate, Bucket<'a>> = HashMap::new();
        for entry in entries {
            if let Some(born) = entry.person.born {
                buckets.entry(born).or_default().members.push(entry);
            }
        }
        buckets.values_mut().filter(|bucket| bucket.members.len() > SMALL_BUCKET).for_each(Bucket::block);
        Self { buckets }
    }

    /// The DentalTID patients born the same day as `person` whose names are similar but not equal.
    pub(super) fn similar(&self, person: &Person) -> Vec<Entry<'a>> {
        let Some(bucket) = person.born.and_then(|born| self.buckets.get(&born)) else {
            return Vec::new();
        };
        bucket.lookup(person).take(MAX_COMPARISONS).filter(|entry| is_similar(person, entry.person)).collect()
    }
}

impl<'a> Bucket<'a> {
    /// Files every member under its two blocks.
    fn block(&mut self) {
        for entry in &self.members {
            for block in blocks_of(entry.person, entry.person.chars) {
                self.blocks.entry(block).or_default().push(*entry);
            }
        }
    }

    /// The members worth comparing with `person`: all of a small bucket, else the blocks that
    /// share an initial with it and whose length is within reach.
    fn lookup<'s>(&'s self, person: &'s Person) -> Box<dyn Iterator<Item = Entry<'a>> + 's> {
        if self.blocks.is_empty() {
            return Box::new(self.members.iter().copied());
        }
        let lengths = person.chars.saturating_sub(MAX_EDITS)..=person.chars + MAX_EDITS;
        let blocks = lengths.flat_map(move |chars| blocks_of(person, chars));
        Box::new(blocks.filter_map(|block| self.blocks.get(&block)).flatten().copied())
    }
}

/// The blocks a person with these names would sit in if their combined length were `chars`.
fn blocks_of(person: &Person, chars: usize) -> impl Iterator<Item = Block> {
    let last = person.last.chars().next().map(|initial| Block::LastInitial(initial, chars));
    let first = person.first.chars().next().map(|initial| Block::FirstInitial(initial, chars));
    last.into_iter().chain(first)
}

/// Whether two people's names differ, but by at most [`MAX_EDITS`] edits in total.
fn is_similar(a: &Person, b: &Person) -> bool {
    let same = a.first == b.first && a.last == b.last;
    if same || a.chars.max(b.chars) < MIN_COMBINED_CHARS || a.chars.abs_diff(b.chars) > MAX_EDITS {
        return false;
    }
    let first_edits = strsim::levenshtein(&a.first, &b.first);
    first_edits <= MAX_EDITS && first_edits + strsim::levenshtein(&a.last, &b.last) <= MAX_EDITS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(first: &str, last: &str) -> Person {
        Person::new(first, last, None).unwrap()
    }

    #[test]
    fn up_to_two_edits_over_both_names_are_similar() {
        assert!(is_similar(&person("Zoe", "Lefevre"), &person("Zoe", "Lefebvre")));
        assert!(is_similar(&person("Zoe", "Lefevre"), &person("Zou", "Lefebvre")));
        assert!(!is_similar(&person("Zoe", "Lefevre"), &person("Zou", "Lefebvra")));
        assert!(!is_similar(&person("Zoe", "Lefevre"), &person("Zoé", "LEFEVRE")));
    }

    #[test]
    fn short_names_need_an_exact_match() {
        assert!(!is_similar(&person("Al", "Bo"), &person("Al", "Bu")));
        assert!(!is_similar(&person("Ali", "Bo"), &person("Ali", "Bu")));
        assert!(is_similar(&person("Ali", "Ben"), &person("Ali", "Bin")));
    }
}
