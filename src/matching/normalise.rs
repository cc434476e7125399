//! Name normalisation for matching: the one place that decides when two spellings of a name
//! are the same.
//!
//! Pure text work: it never fails, never panics and never looks at anything but the name.

use caseless::Caseless;
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// The Arabic tatweel (kashida), a stretching stroke with no meaning of its own.
const TATWEEL: char = '\u{0640}';

/// Normalises a name for matching: compatibility decomposition, combining marks (and Arabic
/// harakat) dropped, tatweel removed, case-folded, trimmed, inner whitespace collapsed.
///
/// Invisible formatting characters that copy-pasted right-to-left names often carry
/// (direction marks, zero-width spaces and joiners, soft hyphens) are dropped as well. A name
/// without a letter or a digit, such as the `-`, `?` or `.` clinics type where a name is unknown,
/// normalises to nothing: it names nobody, as an empty name does.
///
/// # Example
/// ```
/// use nanopix_sync::normalise_name;
/// assert_eq!(normalise_name("  Zoé  LEFÈVRE "), "zoe lefevre");
/// assert_eq!(normalise_name("مُحَمَّد"), "محمد");
/// assert_eq!(normalise_name(" ? "), "");
/// ```
pub fn normalise_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    normalise_into(name, &mut out);
    out
}

/// Appends `name`, normalised as [`normalise_name`] says, to `out`.
pub(crate) fn normalise_into(name: &str, out: &mut String) {
    let start = out.len();
    fold_into(name, out);
    if !out[start..].chars().any(char::is_alphanumeric) {
        out.truncate(start);
    }
}

/// Appends `name` to `out` decomposed, with marks and invisible characters dropped, case-folded
/// and with its whitespace collapsed.
fn fold_into(name: &str, out: &mut String) {
    if name.is_ascii() {
        // Nothing to decompose: only case and spaces to fold (most names, at clinic scale).
        let start = out.len();
        for word in name.split(char::is_whitespace).filter(|word| !word.is_empty()) {
            if out.len() > start {
                out.push(' ');
            }
            out.push_str(word);
        }
        out[start..].make_ascii_lowercase();
        return;
    }
    let mut words = Words { start: out.len(), out, space_pending: false };
    for c in name.chars() {
        decompose_compatible(c, |part| match part {
            // Folding ASCII only lowers it, and Arabic script has no case.
            _ if part.is_ascii() => words.push(part.to_ascii_lowercase()),
            '\u{0600}'..='\u{06FF}' => words.push(part),
            _ => {
                for folded in std::iter::once(part).default_case_fold() {
                    decompose_compatible(folded, |part| words.push(part));
                }
            }
        });
    }
}

/// Text being appended from single characters: marks and invisible characters dropped, runs
/// of whitespace written as one space, none at either end.
struct Words<'a> {
    out: &'a mut String,
    /// Where this text starts in `out`.
    start: usize,
    space_pending: bool,
}

impl Words<'_> {
    fn push(&mut self, c: char) {
        if c.is_whitespace() {
            self.space_pending = self.out.len() > self.start;
        } else if is_kept(c) {
            if std::mem::take(&mut self.space_pending) {
                self.out.push(' ');
            }
            self.out.push(c);
        }
    }
}

/// Whether a decomposed, case-folded character carries meaning for matching.
fn is_kept(c: char) -> bool {
    !is_combining_mark(c) && c != TATWEEL && !is_invisible_format(c)
}

/// Invisible formatting characters: soft hyphen, Arabic letter mark, zero-width spaces and
/// joiners, direction marks, embeddings and isolates, word joiner, byte order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use unicode_normalization::UnicodeNormalization;

    use super::*;

    /// The definition, step by step over the whole name: decompose, case-fold, decompose what
    /// folding composed, drop, then collapse whitespace; nothing for a name without a letter or
    /// a digit.
    fn by_definition(name: &str) -> String {
        let folded: String = name.nfkd().default_case_fold().nfkd().filter(|&c| is_kept(c)).collect();
        let collapsed = folded.split_whitespace().collect::<Vec<_>>().join(" ");
        if collapsed.chars().any(char::is_alphanumeric) { collapsed } else { String::new() }
    }

    #[test]
    fn every_character_folds_as_the_definition_says() {
        let planes = (0..=0x3_FFFF).chain(0xE_0000..=0xE_0FFF);
        for c in planes.filter_map(char::from_u32) {
            let name = format!("a{c}\u{301}b {c}");
            assert_eq!(normalise_name(&name), by_definition(&name), "U+{:04X}", u32::from(c));
        }
    }

    #[test]
    fn latin_accents_case_and_spaces() {
        assert_eq!(normalise_name("  Zoé  LEFÈVRE "), "zoe lefevre");
        assert_eq!(normalise_name("DOE "), "doe");
        assert_eq!(normalise_name("Seán"), "sean");
        assert_eq!(normalise_name("François\t\u{00A0}\u{3000}Pérez"), "francois perez");
        assert_eq!(normalise_name("İlknur"), "ilknur");
    }

    #[test]
    fn case_folding_is_more_than_lower_case() {
        assert_eq!(normalise_name("Strauß"), normalise_name("STRAUSS"));
        assert_eq!(normalise_name("STRAUẞ"), "strauss");
        assert_eq!(normalise_name("Παπαδόπουλος"), normalise_name("ΠΑΠΑΔΟΠΟΥΛΟΣ"));
    }

    #[test]
    fn fullwidth_letters_fold_to_ascii() {
        assert_eq!(normalise_name("ＺＯＥ　Ｄｏｅ"), "zoe doe");
    }

    #[test]
    fn arabic_harakat_and_tatweel_are_dropped() {
        assert_eq!(normalise_name("مُحَمَّد"), "محمد");
        assert_eq!(normalise_name("محـــمد"), "محمد");
        assert_eq!(normalise_name("\u{200F}فاطِمة الزَّهراء\u{200F} "), "فاطمة الزهراء");
    }

    #[test]
    fn every_arabic_haraka_is_a_combining_mark() {
        let harakat = ('\u{064B}'..='\u{065F}').chain(['\u{0670}']);
        for haraka in harakat {
            assert!(is_combining_mark(haraka), "U+{:04X}", u32::from(haraka));
            assert_eq!(normalise_name(&format!("ب{haraka}ب")), "بب", "U+{:04X}", u32::from(haraka));
        }
    }

    #[test]
    fn blank_names_normalise_to_empty() {
        for blank in ["", "   ", "\u{0640}\u{0640}", "\u{064E} \u{200B}", "\u{0301}"] {
            assert_eq!(normalise_name(blank), "", "{blank:?}");
        }
    }

    #[test]
    fn placeholders_without_a_letter_or_digit_normalise_to_empty() {
        for placeholder in ["-", "?", ".", " - ", "--", "?!", "(...)", "\u{2026}", "\u{061F}", "-\u{0640}-"] {
            assert_eq!(normalise_name(placeholder), "", "{placeholder:?}");
        }
        assert_eq!(normalise_name("O'Brien"), "o'brien");
        assert_eq!(normalise_name(" Jean-Pierre "), "jean-pierre");
        assert_eq!(normalise_name("X"), "x");
        assert_eq!(normalise_name("- 2"), "- 2");
    }

    #[test]
    fn idempotent_on_every_assigned_plane_character() {
        let planes = (0..=0x3_FFFF).chain(0xE_0000..=0xE_0FFF);
        for c in planes.filter_map(char::from_u32) {
            let once = normalise_name(&c.to_string());
            assert_eq!(normalise_name(&once), once, "U+{:04X}", u32::from(c));
        }
    }

    proptest! {
        #[test]
        fn names_fold_as_the_definition_says(name in any::<String>()) {
            prop_assert_eq!(normalise_name(&name), by_definition(&name));
        }

        #[test]
        fn normalise_is_idempotent(name in any::<String>()) {
            let once = normalise_name(&name);
            prop_assert_eq!(normalise_name(&once), once);
        }

        #[test]
        fn output_has_no_stray_spaces(name in "(\\PC|\\s){0,40}") {
            let out = normalise_name(&name);
            prop_assert_eq!(out.trim(), out.as_str());
            prop_assert!(!out.contains("  "));
            prop_assert!(out.chars().all(|c| c == ' ' || !c.is_whitespace()));
        }
    }
}
