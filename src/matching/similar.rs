//! Similar-names detection: DentalTID patients born the same day whose names are a small edit
//! away from a NanoPix patient's.
//!
//! Comparisons happen only inside one birth-date bucket. Big buckets (NanoPix often stores the
//! visit date as the birth date) are blocked further by first or last letter of either name and
//! by name length, and each
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

/// Most DentalTID patients one lookup compares names with, through the blocks of initials, and
/// again through the blocks of last letters: a crowd sharing a last letter never keeps a lookup
/// from the patients sharing an initial.
const MAX_COMPARISONS: usize = 256;

/// A block inside a big bucket: the first or last letter of one name, and the combined name
/// length. Two names at most [`MAX_EDITS`] edits apart share at least one of the four letters
/// (each edit changes at most one of them, in names of two letters or more), so a lookup in all
/// four blocks finds every similar name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Block {
    /// First character of the last name, combined length.
    LastInitial(char, usize),
    /// First character of the first name, combined length.
    FirstInitial(char, usize),
    /// Last character of the last name, combined length.
    LastFinal(char, usize),
    /// Last character of the first name, combined length.
    FirstFinal(char, usize),
}

/// How many kinds of [`Block`] there are: each patient of a big bucket sits in one of each.
pub(super) const BLOCK_KINDS: usize = 4;

impl Block {
    /// Whether the block is one of an initial, not of a last letter.
    fn is_initial(self) -> bool {
        matches!(self, Self::LastInitial(..) | Self::FirstInitial(..))
    }

    /// The position of this block's kind among the [`BLOCK_KINDS`].
    pub(super) fn kind(self) -> usize {
        match self {
            Self::LastInitial(..) => 0,
            Self::FirstInitial(..) => 1,
            Self::LastFinal(..) => 2,
            Self::FirstFinal(..) => 3,
        }
    }
}

/// The entries among those `wanted` accepts of DentalTID patients born the same day as `person`
/// whose names are similar but not equal. The comparisons a big bucket allows are spent on wanted
/// entries only.
pub(super) fn similar(index: &DentalIndex, person: &Person<'_>, wanted: impl Fn(&usize) -> bool) -> Vec<usize> {
    let Some(born) = person.born else { return Vec::new() };
    let similar_entry = |entry: &usize| index.person(*entry).is_some_and(|other| is_similar(person, &other));
    let bucket = index.born_on(born);
    if bucket.len() <= SMALL_BUCKET {
        // Lengths and letters sit in the bucket: names are only read for members within reach.
        let letters = block_letters(person);
        let in_reach = bucket.iter().filter(|member| {
            within_reach(person.chars, usize::from(member.chars)) && shares_a_block_letter(letters, member.letters)
        });
        return in_reach.map(|member| member.entry).filter(&wanted).filter(similar_entry).collect();
    }
    let by_initial = lookup_blocks(index, person, born, true).filter(&wanted).take(MAX_COMPARISONS);
    let by_last_letter = lookup_blocks(index, person, born, false).filter(&wanted).take(MAX_COMPARISONS);
    by_initial.chain(by_last_letter).filter(similar_entry).collect()
}

/// The members of a big bucket worth comparing with `person`: the blocks that share an initial
/// (or, without `by_initial`, a last letter) with it and whose length is within reach.
fn lookup_blocks<'i>(
    index: &'i DentalIndex,
    person: &Person<'_>,
    born: NaiveDate,
    by_initial: bool,
) -> impl Iterator<Item = usize> + 'i {
    let lengths = person.chars.saturating_sub(MAX_EDITS)..=person.chars + MAX_EDITS;
    let blocks = lengths.flat_map(|chars| blocks_of(person, chars)).flatten();
    let blocks: Vec<Block> = blocks.filter(|block| block.is_initial() == by_initial).collect();
    blocks.into_iter().flat_map(move |block| index.in_block(born, block))
}

/// The blocks, in the order of [`Block::kind`], a person with these names would sit in if their
/// combined length were `chars`.
pub(super) fn blocks_of(person: &Person<'_>, chars: usize) -> [Option<Block>; BLOCK_KINDS] {
    [
        person.last.chars().next().map(|initial| Block::LastInitial(initial, chars)),
        person.first.chars().next().map(|initial| Block::FirstInitial(initial, chars)),
        person.last.chars().next_back().map(|last| Block::LastFinal(last, chars)),
        person.first.chars().next_back().map(|last| Block::FirstFinal(last, chars)),
    ]
}

/// The letters of a person's four [`Block`]s, in the order of [`Block::kind`], each cut to its
/// lowest byte. Two names within [`MAX_EDITS`] edits of each other share the letter of at
/// least one kind of block (see [`Block`]); letters cut to a byte may also be shared by chance,
/// which only costs a comparison.
pub(super) type BlockLetters = [u8; BLOCK_KINDS];

/// The [`BlockLetters`] of `person` (0 for a letter of an empty name).
pub(super) fn block_letters(person: &Person<'_>) -> BlockLetters {
    blocks_of(person, person.chars).map(|block| match block {
        Some(
            Block::LastInitial(c, _) | Block::FirstInitial(c, _) | Block::LastFinal(c, _) | Block::FirstFinal(c, _),
        ) => u32::from(c).to_le_bytes()[0],
        None => 0,
    })
}

/// Whether the block letters of two people share the letter of one kind of block: unless they
/// do, their names are more than [`MAX_EDITS`] edits apart.
fn shares_a_block_letter(a: BlockLetters, b: BlockLetters) -> bool {
    a.iter().zip(&b).any(|(a, b)| a == b)
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
    let Some(first_edits) = edits(a.first, b.first, MAX_EDITS) else { return false };
    edits(a.last, b.last, MAX_EDITS - first_edits).is_some()
}

/// The edit distance between `a` and `b` (characters inserted, deleted or replaced) when it is
/// at most `budget`; `None` when it is more, or when a name is longer than any name within
/// reach ([`MAX_COMBINED_CHARS`]), so that both fit on the stack.
fn edits(a: &str, b: &str, budget: usize) -> Option<usize> {
    if a.is_ascii() && b.is_ascii() {
        // One byte per character: nothing to decode.
        return edits_between(a.as_bytes(), b.as_bytes(), budget);
    }
    let (mut a_chars, mut b_chars) = (['\0'; MAX_COMBINED_CHARS], ['\0'; MAX_COMBINED_CHARS]);
    edits_between(chars_into(a, &mut a_chars)?, chars_into(b, &mut b_chars)?, budget)
}

/// [`edits`] between two sequences of characters.
fn edits_between<T: PartialEq + Copy>(a: &[T], b: &[T], budget: usize) -> Option<usize> {
    if a.len().max(b.len()) > MAX_COMBINED_CHARS {
        return None;
    }
    // What both share at either end costs no edit.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    let suffix = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[..a.len() - suffix], &b[..b.len() - suffix]);
    if a.len().abs_diff(b.len()) > budget {
        return None;
    }
    // One row of the edit table at a time: `row[j]` is the distance from the part of `a` read
    // so far to the first `j` characters of `b`. No row's least cell ever goes down again.
    let mut row = [0; MAX_COMBINED_CHARS + 1];
    for (j, cell) in row.iter_mut().enumerate().take(b.len() + 1) {
        *cell = j;
    }
    for (i, &x) in a.iter().enumerate() {
        let mut diagonal = std::mem::replace(&mut row[0], i + 1);
        let mut least = row[0];
        for (j, &y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(x != y)).min(above + 1).min(row[j] + 1);
            diagonal = above;
            least = least.min(row[j + 1]);
        }
        if least > budget {
            return None;
        }
    }
    Some(row[b.len()]).filter(|&distance| distance <= budget)
}

/// The characters of `text`, written into `buffer`; `None` when there are more than it holds.
fn chars_into<'b>(text: &str, buffer: &'b mut [char; MAX_COMBINED_CHARS]) -> Option<&'b [char]> {
    let mut count = 0;
    for c in text.chars() {
        *buffer.get_mut(count)? = c;
        count += 1;
    }
    buffer.get(..count)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{DentalCandidate, normalise_name};
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

    proptest! {
        #[test]
        fn edits_are_the_edit_distance_up_to_the_budget(
            a in "[abé\u{0645}]{0,9}",
            b in "[abé\u{0645}]{0,9}",
            budget in 0..=MAX_EDITS,
        ) {
            let distance = strsim::levenshtein(&a, &b);
            prop_assert_eq!(edits(&a, &b, budget), Some(distance).filter(|&d| d <= budget));
        }
    }

    /// `name` with one edit: `op` 0 inserts `letter` before the character at `at` (wrapped
    /// around), 1 deletes that character (unless it is the only one), 2 replaces it by `letter`.
    fn edited(name: &str, (op, at, letter): (u8, usize, char)) -> String {
        let mut chars: Vec<char> = name.chars().collect();
        match op {
            0 => chars.insert(at % (chars.len() + 1), letter),
            1 if chars.len() > 1 => drop(chars.remove(at % chars.len())),
            _ => {
                let at = at % chars.len();
                chars[at] = letter;
            }
        }
        chars.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn names_within_two_edits_share_a_block_letter(
            first in "[ab\u{0645}]{1,6}",
            last in "[ab\u{0645}]{1,6}",
            edits in proptest::collection::vec((any::<bool>(), 0..3u8, 0..8usize, "[ab\u{0645}]"), 0..=MAX_EDITS),
        ) {
            let (mut other_first, mut other_last) = (first.clone(), last.clone());
            for (in_first, op, at, letter) in edits {
                let name = if in_first { &mut other_first } else { &mut other_last };
                *name = edited(name, (op, at, letter.chars().next().unwrap_or('a')));
            }
            let a = Person::new(&first, &last, None).unwrap();
            let b = Person::new(&other_first, &other_last, None).unwrap();
            if super::is_similar(&a, &b) {
                prop_assert!(shares_a_block_letter(block_letters(&a), block_letters(&b)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// A small bucket of the NanoPix patient's names typed again with up to three edits
        /// (spaces, marks, tatweel, Arabic, a letter whose lowest byte is `a`'s): `similar`
        /// finds exactly the members whose names are similar.
        #[test]
        fn a_small_bucket_yields_every_similar_member(
            first in "[a \u{0301}\u{0645}\u{0640}\u{0161}]{1,5}",
            last in "[ab \u{0301}\u{0645}\u{0161}]{1,6}",
            typed in proptest::collection::vec(
                proptest::collection::vec((any::<bool>(), 0..3u8, 0..8usize, "[a \u{0301}\u{0645}\u{0161}]"), 0..=3),
                1..=SMALL_BUCKET,
            ),
        ) {
            let born = NaiveDate::from_ymd_opt(1990, 5, 6);
            let (mut index, added) = (DentalIndex::default(), typed.len());
            for (id, edits) in (1..).zip(typed) {
                let (mut first_name, mut last_name) = (first.clone(), last.clone());
                for (in_first, op, at, letter) in edits {
                    let name = if in_first { &mut first_name } else { &mut last_name };
                    *name = edited(name, (op, at, letter.chars().next().unwrap_or('a')));
                }
                let candidate = DentalCandidate {
                    id, first_name: &first_name, last_name: &last_name, date_of_birth: born, linked: false,
                };
                index.add(candidate);
            }
            index.group();
            let (first, last) = (normalise_name(&first), normalise_name(&last));
            let Some(person) = Person::new(&first, &last, born) else { return Ok(()) };
            let mut found = similar(&index, &person, |_| true);
            let both_named = |other: &Person<'_>| !other.first.is_empty() && !other.last.is_empty();
            let similar_entry = |entry: &usize| {
                index.person(*entry).is_some_and(|other| both_named(&other) && super::is_similar(&person, &other))
            };
            let expected: Vec<usize> = (0..added).filter(similar_entry).collect();
            found.sort_unstable();
            prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn block_letters_keep_the_lowest_byte_of_each_letter() {
        let (first, last) = (normalise_name("Zoé"), normalise_name("محمد"));
        let person = Person::new(&first, &last, None).unwrap();
        assert_eq!(block_letters(&person), [0x45, b'z', 0x2F, b'e']);
    }

    #[test]
    fn names_longer_than_any_within_reach_have_no_edit_count() {
        let longest = "a".repeat(MAX_COMBINED_CHARS);
        assert_eq!(edits(&longest, &format!("{longest}b"), MAX_EDITS), None);
        assert_eq!(edits(&longest, &longest.replacen('a', "b", 1), MAX_EDITS), Some(1));
        let arabic = "\u{0645}".repeat(MAX_COMBINED_CHARS);
        assert_eq!(edits(&arabic, &format!("{arabic}\u{0645}"), MAX_EDITS), None);
        assert_eq!(edits(&arabic, &arabic.replacen('\u{0645}', "b", 1), MAX_EDITS), Some(1));
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
