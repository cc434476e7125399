//! NanoPix patient ids: `YYYYMMDD_HHMMSS`, the local time at which the patient was created.
//!
//! A [`NanoPixId`] is the only way a string from a database or a folder name becomes a path
//! under `PatientData`, so parsing is strict: fifteen ASCII characters, an underscore at
//! position eight, and a real calendar date and time.

use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

use crate::{Error, Result};

/// How far past the wanted second [`NanoPixId::first_free`] looks before giving up.
const MAX_ID_PROBES: u32 = 86_400;

/// Most characters of a refused id an error repeats: twice an id's length.
const SHOWN_CHARS: usize = 30;

/// A validated NanoPix patient id, such as `20250121_152638`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NanoPixId(NaiveDateTime);

impl NanoPixId {
    /// Parses and validates an id.
    ///
    /// # Failure
    /// [`Error::InvalidNanoPixId`] unless `text` matches `^\d{8}_\d{6}$` and names a real date and time.
    ///
    /// # Example
    /// ```
    /// use nanopix_sync::NanoPixId;
    /// assert!(NanoPixId::parse("20250121_152638").is_ok());
    /// assert!(NanoPixId::parse("20250230_152638").is_err());
    /// assert!(NanoPixId::parse("../../etc").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_strict(text).ok_or_else(|| Error::InvalidNanoPixId(shown(text)))
    }

    fn parse_strict(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let shape_ok = bytes.len() == 15
            && bytes[8] == b'_'
            && bytes.iter().enumerate().all(|(i, b)| i == 8 || b.is_ascii_digit());
        if !shape_ok {
            return None;
        }
        let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().ok();
        let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(4..6)?, number(6..8)?)?;
        let time = NaiveTime::from_hms_opt(number(9..11)?, number(11..13)?, number(13..15)?)?;
        Some(Self(date.and_time(time)))
    }

    /// The id NanoPix would give a patient created at `at` (sub-second parts are dropped).
    pub fn from_datetime(at: NaiveDateTime) -> Self {
        Self(at.with_nanosecond(0).unwrap_or(at))
    }

    /// The local date and time the id names.
    pub fn datetime(self) -> NaiveDateTime {
        self.0
    }

    /// Whether the id is written `YYYYMMDD_HHMMSS`: its year has four digits.
    fn is_writable(self) -> bool {
        (0..=9999).contains(&self.0.year())
    }

    /// The id one second later; the same id at the latest time a date can hold.
    pub fn next_second(self) -> Self {
        self.0.checked_add_signed(Duration::seconds(1)).map_or(self, Self)
    }

    /// The first id at or after `at` for which `taken` says `false`.
    ///
    /// `taken` must check every place an id can be in use: the NanoPix database, the folders
    /// on disk, exports in flight, and the DentalTID patients and links that still hold one.
    ///
    /// # Failure
    /// [`Error::NoFreeId`] if a whole day of seconds is taken, or holds no id of a year from 0
    /// to 9999 (see [`NanoPixId::first_free_before`]); or the first error of `taken`.
    pub fn first_free(at: NaiveDateTime, taken: impl FnMut(Self) -> Result<bool>) -> Result<Self> {
        let day_later =
            at.checked_add_signed(Duration::seconds(i64::from(MAX_ID_PROBES))).unwrap_or(NaiveDateTime::MAX);
        Self::first_free_before(at, day_later, taken)?
            .ok_or_else(|| Error::NoFreeId(Self::from_datetime(at).to_string()))
    }

    /// The first id at or after `at`, and before `end`, for which `taken` says `false`; `None`
    /// when every one of them is taken. Only ids of years 0 to 9999 are given: no other is
    /// written `YYYYMMDD_HHMMSS`.
    ///
    /// # Failure
    /// The first error of `taken`.
    pub fn first_free_before(
        at: NaiveDateTime,
        end: NaiveDateTime,
        mut taken: impl FnMut(Self) -> Result<bool>,
    ) -> Result<Option<Self>> {
        let mut candidate = Self::from_datetime(at);
        // An end inside a second leaves that second out.
        let end = Self::from_datetime(end).0;
        while candidate.0 < end {
            if candidate.is_writable() && !taken(candidate)? {
                return Ok(Some(candidate));
            }
            candidate = candidate.next_second();
        }
        Ok(None)
    }
}

impl fmt::Display for NanoPixId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (date, time) = (self.0.date(), self.0.time());
        let year = u32::try_from(date.year()).ok().filter(|year| *year <= 9999);
        let Some(year) = year else {
            write!(f, "{:04}{:02}{:02}_", date.year(), date.month(), date.day())?;
            return write!(f, "{:02}{:02}{:02}", time.hour(), time.minute(), time.second());
        };
        // Written digit by digit: an id is written several times per imported patient.
        let mut text = *b"00000000_000000";
        let fields = [
            (0..4, year),
            (4..6, date.month()),
            (6..8, date.day()),
            (9..11, time.hour()),
            (11..13, time.minute()),
            (13..15, time.second()),
        ];
        for (range, value) in fields {
            fill_digits(&mut text[range], value);
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// `text`, refused as an id, as an error shows it: its first [`SHOWN_CHARS`] characters, then an
/// ellipsis if there is more, so that a huge argument makes no huge message.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Writes the last `digits.len()` decimal digits of `value` into `digits`.
fn fill_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl std::str::FromStr for NanoPixId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl serde::Serialize for NanoPixId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_real_fixture_id() {
        let id = NanoPixId::parse("20250121_152638").expect("valid id");
        assert_eq!(id.to_string(), "20250121_152638");
    }

    #[test]
    fn a_refused_id_is_shown_short() {
        let huge = "1".repeat(1 << 20);
        let message = NanoPixId::parse(&huge).unwrap_err().to_string();
        assert_eq!(message, format!("invalid NanoPix patient id \"{}…\"", "1".repeat(SHOWN_CHARS)));
        let short = "é".repeat(SHOWN_CHARS);
        assert_eq!(NanoPixId::parse(&short).unwrap_err().to_string(), format!("invalid NanoPix patient id {short:?}"));
    }

    #[test]
    fn rejects_odd_shapes_and_impossible_times() {
        for bad in [
            "",
            "20250121152638",
            "20250121-152638",
            "2025012_1152638",
            "20250121_15263",
            "20250121_1526388",
            "20251321_152638",
            "20250230_152638",
            "20250121_246000",
            "20250121_235960",
            "00000000_000000",
            "+0250121_152638",
            "２0250121_152638",
            "../20250121_15",
            "20250121_15263a",
        ] {
            assert!(NanoPixId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn first_free_skips_taken_seconds() {
        let start = NanoPixId::parse("20250121_235959").unwrap();
        let taken = [start, start.next_second()];
        let free = NanoPixId::first_free(start.datetime(), |id| Ok(taken.contains(&id))).unwrap();
        assert_eq!(free.to_string(), "20250122_000001");
    }

    #[test]
    fn first_free_gives_up_after_a_full_day() {
        let start = NanoPixId::parse("20250121_000000").unwrap().datetime();
        assert!(matches!(NanoPixId::first_free(start, |_| Ok(true)), Err(Error::NoFreeId(_))));
    }

    #[test]
    fn first_free_at_the_end_of_time_gives_no_id_instead_of_panicking() {
        let latest = NaiveDateTime::MAX;
        assert!(matches!(NanoPixId::first_free(latest, |_| Ok(false)), Err(Error::NoFreeId(_))));
        let last = NanoPixId::from_datetime(latest);
        assert_eq!(last.next_second(), last, "no second comes after the latest one");
    }

    #[test]
    fn first_free_before_stops_short_of_its_end() {
        let start = NanoPixId::parse("20250121_100000").unwrap();
        let end = start.datetime() + Duration::seconds(2);
        let taken = [start];
        let free = NanoPixId::first_free_before(start.datetime(), end, |id| Ok(taken.contains(&id))).unwrap();
        assert_eq!(free.map(|id| id.to_string()).as_deref(), Some("20250121_100001"));
        assert_eq!(NanoPixId::first_free_before(start.datetime(), end, |_| Ok(true)).unwrap(), None);
    }

    #[test]
    fn first_free_stops_at_the_first_failed_lookup() {
        let start = NanoPixId::parse("20250121_000000").unwrap();
        let mut lookups = 0;
        let found = NanoPixId::first_free(start.datetime(), |_| {
            lookups += 1;
            Err(Error::Closed)
        });
        assert!(matches!(found, Err(Error::Closed)));
        assert_eq!(lookups, 1);
    }

    fn any_datetime() -> impl Strategy<Value = NaiveDateTime> {
        (1900i32..2200, 1u32..=12, 1u32..=31, 0u32..24, 0u32..60, 0u32..60)
            .prop_filter_map("real date", |(y, mo, d, h, mi, s)| {
                NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_opt(h, mi, s)
            })
    }

    /// Any text, or an id with one character replaced, often by one a lenient reading of numbers
    /// takes for part of a number (a sign, a space, a digit of another script).
    fn id_like_text() -> impl Strategy<Value = String> {
        let replacements = vec!['+', '-', ' ', '.', '_', 'a', '0', '9', '\u{0663}', '\u{FF13}', 'é'];
        let near_id = (any_datetime(), 0..15usize, prop::sample::select(replacements)).prop_map(|(at, position, c)| {
            let mut text: Vec<char> = NanoPixId::from_datetime(at).to_string().chars().collect();
            text[position] = c;
            text.into_iter().collect::<String>()
        });
        prop_oneof![near_id, "\\PC{0,20}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn parse_never_panics_and_only_accepts_the_shape(text in id_like_text()) {
            if let Ok(id) = NanoPixId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(at in any_datetime()) {
            let id = NanoPixId::from_datetime(at);
            prop_assert_eq!(NanoPixId::parse(&id.to_string()).unwrap(), id);
            prop_assert_eq!(id.datetime(), at);
        }

        #[test]
        fn display_writes_every_field_zero_padded(y in -262_000i32..262_000, day in 0u32..366, second in 0u32..86_400) {
            let date = NaiveDate::from_yo_opt(y, 1).unwrap() + Duration::days(i64::from(day));
            let at = date.and_hms_opt(second / 3600, second / 60 % 60, second % 60).unwrap();
            let expected = format!(
                "{:04}{:02}{:02}_{:02}{:02}{:02}",
                at.year(), at.month(), at.day(), at.hour(), at.minute(), at.second()
            );
            prop_assert_eq!(NanoPixId::from_datetime(at).to_string(), expected);
        }

        #[test]
        fn first_free_is_never_taken(at in any_datetime(), taken_count in 0usize..50) {
            let taken: std::collections::HashSet<NanoPixId> =
                (0..taken_count as i64).map(|s| NanoPixId::from_datetime(at + Duration::seconds(s))).collect();
            let free = NanoPixId::first_free(at, |id| Ok(taken.contains(&id))).unwrap();
            prop_assert!(!taken.contains(&free));
            prop_assert!(free.datetime() >= NanoPixId::from_datetime(at).datetime());
        }
    }
}
