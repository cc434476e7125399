//! Similar-names detection: DentalTID patients born the same day whose names are a small edit
//! away from a NanoPix patient's.
//!
//! Comparisons happen only inside one birth-date bucket. Big buckets (NanoPix often stores the
//! visit date as the birth date) are blocked further by initial and name length, and each
//! lookup compares at most [`MAX_COMPARISONS`] patients, so the whole check stays linear. It
//! never compares every pair.

use chrono::NaiveDate;

use super::index::{DentalIndex, Person};

/// Most edits (over first and last name together) for two names to count as similar.
const MAX_EDITS: usize = 2;

/// Fewest characters the longer combined name needs before edits are allowed at all.
const MIN_COMBINED_CHARS: usize = 6;

/// Most characters a combined name may have to be compared by edits: no person's name is
/// longer, and the edit distance takes time in the product of both lengths, so an odd row
/// holding a huge text never stalls the sync.
const MAX_COMBINED_CHARS: usize = 128;

/// Buckets up to this size are scanned whole; bigger ones are looked up by block.
pub(super) const SMALL_BUCKET: usize = 32;

/// Most DentalTID patients one lookup compares names with.
const MAX_COMPARISONS: usize = 256;

/// A block inside a big bucket: an initial and the combined name length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Block {
    /// First character of the last name, combined length.
    LastInitial(char, usize),
    /// First character of the first name, combined length.
    FirstInitial(char, usize),
}

/// The entries of DentalTID patients born the same day as `person` whose names are similar
/// but not equal.
pub(super) fn similar(index: &DentalIndex, person: &Person<'_>) -> Vec<usize> {
    let Some(born) = person.born else { return Vec::new() };
    let similar_entry = |entry: &usize| index.person(*entry).is_some_and(|other| is_similar(person, &other));
    let bucket = index.born_on(born);
    if bucket.len() <= SMALL_BUCKET {
        // Lengths sit in the bucket: names are only read for members within reach.
        let in_reach = bucket.iter().filter(|member| within_reach(person.chars, member.chars));
        return in_reach.map(|member| member.entry).filter(similar_entry).collect();
    }
    lookup_blocks(index, person, born).take(MAX_COMPARISONS).filter(similar_entry).collect()
}

/// The members of a big bucket worth comparing with `person`: the blocks that share an initial
/// with it and whose length is within reach.
fn lookup_blocks<'i>(index: &'i DentalIndex, person: &Person<'_>, born: NaiveDate) -> impl Iterator<Item = usize> + 'i {
    let lengths = person.chars.saturating_sub(MAX_EDITS)..=person.chars + MAX_EDITS;
    let blocks: Vec<Block> = lengths.flat_map(|chars| blocks_of(person, chars)).flatten().collect();
    blocks.into_iter().flat_map(move |block| index.in_block(born, block))
}

/// The blocks, last-name initial then first-name initial, a person with these names would sit
/// in if their combined length were `chars`.
pub(super) fn blocks_of(person: &Person<'_>, chars: usize) -> [Option<Block>; 2] {
    [
        person.last.chars().next().map(|initial| Block::LastInitial(initial, chars)),
        person.first.chars().next().map(|initial| Block::FirstInitial(initial, chars)),
    ]
}

/// Whether names of `a` and `b` characters in all are long enough, short enough, and close
/// enough in length to be compared by edits, which are at most [`MAX_EDITS`].
fn within_reach(a: usize, b: usize) -> bool {
    a.abs_diff(b) <= MAX_EDITS && (MIN_COMBINED_CHARS..=MAX_COMBINED_CHARS).contains(&a.max(b))
}

/// Whether two people's names differ, but by at most [`MAX_EDITS`] edits in total.
fn is_similar(a: &Person<'_>, b: &Person<'_>) -> bool {
    if !within_reach(a.chars, b.chars) {
        return false;
    }
    if a.first == b.first && a.last == b.last {
        return false;
    }
    let first_edits = strsim::levenshtein(a.first, b.first);
    first_edits <= MAX_EDITS && first_edits + strsim::levenshtein(a.last, b.last) <= MAX_EDITS
}

#[cfg(test)]
mod tests {
    use super::super::normalise_name;
    use super::*;

    fn is_similar(a: (&str, &str), b: (&str, &str)) -> bool {
        let (a, b) = ([a.0, a.1].map(normalise_name), [b.0, b.1].map(normalise_name));
        let (a, b) = (Person::new(&a[0], &a[1], None).unwrap(), Person::new(&b[0], &b[1], None).unwrap());
        super::is_similar(&a, &b)
    }

    #[test]
    fn up_to_two_edits_over_both_names_are_similar() {
        assert!(is_similar(("Zoe", "Lefevre"), ("Zoe", "Lefebvre")));
        assert!(is_similar(("Zoe", "Lefevre"), ("Zou", "Lefebvre")));
        assert!(!is_similar(("Zoe", "Lefevre"), ("Zou", "Lefebvra")));
        assert!(!is_similar(("Zoe", "Lefevre"), ("Zoé", "LEFEVRE")));
    }

    #[test]
    fn short_names_need_an_exact_match() {
        assert!(!is_similar(("Al", "Bo"), ("Al", "Bu")));
        assert!(!is_similar(("Ali", "Bo"), ("Ali", "Bu")));
        assert!(is_similar(("Ali", "Ben"), ("Ali", "Bin")));
    }

    #[test]
    fn a_huge_text_is_not_compared_by_edits() {
        let huge = "a".repeat(100_000);
        let other = format!("{huge}b");
        assert!(!is_similar(("Ali", &huge), ("Ali", &other)));
        let longest = "a".repeat(MAX_COMBINED_CHARS - 3);
        assert!(is_similar(("Ali", &longest), ("Alo", &longest)));
    }
}
