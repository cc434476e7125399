//! Patients as each program keeps them, and the date and time formats of both sides.
//!
//! DentalTID writes local timestamps in Dart's `DateTime.toIso8601String()` form
//! (`2025-01-21T15:26:46.000`). NanoPix writes dates as `YYYY-MM-DD` and datetimes as
//! `YYYY-MM-DD HH:MM:SS`, also local. Parsing here is forgiving (odd values become `None`);
//! formatting always produces exactly what the owning program writes.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::Serialize;

use crate::NanoPixId;

/// Where a DentalTID patient was created. It serialises as the text of the `source` column
/// (`"internal"`, `"nanopix"`, or any other value as stored), so JSON readers always get a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Created in DentalTID (`'internal'`, also what a NULL `source` means).
    Internal,
    /// Imported from NanoPix (`'nanopix'`).
    NanoPix,
    /// Any other value found in the `source` column, kept as it is.
    Other(String),
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Source {
    /// Reads the `source` column.
    pub fn from_column(value: Option<&str>) -> Self {
        match value {
            None | Some("internal") => Self::Internal,
            Some("nanopix") => Self::NanoPix,
            Some(other) => Self::Other(other.to_owned()),
        }
    }

    /// The value stored in the `source` column.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Internal => "internal",
            Self::NanoPix => "nanopix",
            Self::Other(other) => other,
        }
    }
}

/// A row of DentalTID's `patients` table, as the patients screen shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Patient {
    /// `patients.id`.
    pub id: i64,
    /// `patients.name`: the first name.
    pub first_name: String,
    /// `patients.familyName`: the last name.
    pub last_name: String,
    /// `patients.age`.
    pub age: i64,
    /// `patients.dateOfBirth`, when it holds a readable date.
    pub date_of_birth: Option<NaiveDate>,
    /// `patients.createdAt`, as stored (Dart's format).
    pub created_at: String,
    /// `patients.phoneNumber`.
    pub phone: String,
    /// `patients.source`.
    pub source: Source,
    /// `patients.external_id`: the linked NanoPix id, if any.
    pub external_id: Option<String>,
}

/// A row of NanoPix's `Patient` table whose id is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NanoPixPatient {
    /// `Patient.pk`.
    pub pk: i64,
    /// `Patient.id`.
    pub id: NanoPixId,
    /// `Patient.last_name` (empty when NULL).
    pub last_name: String,
    /// `Patient.first_name` (empty when NULL).
    pub first_name: String,
    /// `Patient.sex`, as NanoPix wrote it.
    pub sex: Option<String>,
    /// `Patient.birthdate`, when readable.
    pub birth_date: Option<NaiveDate>,
    /// `Patient.phone`.
    pub phone: Option<String>,
    /// `Patient.created_datetime`, when readable.
    pub created: Option<NaiveDateTime>,
}

impl NanoPixPatient {
    /// Whether the birth date is the day NanoPix registered the patient (the day of its id, or
    /// of `created_datetime`): NanoPix's form starts with that date, so it is most likely a birth
    /// date nobody typed.
    pub fn born_on_registration_day(&self) -> bool {
        let registered = |born: NaiveDate| {
            born == self.id.datetime().date() || self.created.is_some_and(|created| created.date() == born)
        };
        self.birth_date.is_some_and(registered)
    }
}

/// A new NanoPix row, as the sync writes it for an exported patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNanoPixPatient {
    /// The new id.
    pub id: NanoPixId,
    /// `last_name`.
    pub last_name: String,
    /// `first_name`.
    pub first_name: String,
    /// `birthdate`, written as `YYYY-MM-DD`.
    pub birth_date: Option<NaiveDate>,
    /// `phone`.
    pub phone: Option<String>,
    /// `created_datetime` and `updated_datetime`.
    pub created: NaiveDateTime,
}

impl NewNanoPixPatient {
    /// The values that tell this row apart from other NanoPix rows, exactly as they are written.
    pub fn written(&self) -> WrittenRow {
        WrittenRow {
            last_name: self.last_name.clone(),
            first_name: self.first_name.clone(),
            birthdate: self.birth_date.map(nanopix_date),
            created: nanopix_datetime(self.created),
        }
    }
}

/// The values of a row the sync writes to NanoPix that tell it apart from other rows, each
/// exactly as the text written. The export journal keeps them, so a repair recognises the row
/// it wrote by them alone, whatever became of the DentalTID patient since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRow {
    /// `last_name`.
    pub last_name: String,
    /// `first_name`.
    pub first_name: String,
    /// `birthdate` as `YYYY-MM-DD`, or `None` when it was written as NULL.
    pub birthdate: Option<String>,
    /// `created_datetime` (and `updated_datetime`) as `YYYY-MM-DD HH:MM:SS`.
    pub created: String,
}

/// A new DentalTID row for an imported NanoPix patient, with every value DentalTID needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDentalPatient {
    /// `name`.
    pub first_name: String,
    /// `familyName`.
    pub last_name: String,
    /// `age`, computed from the birth date (0 when unknown).
    pub age: i64,
    /// `dateOfBirth`, as DentalTID writes it.
    pub date_of_birth: Option<String>,
    /// `createdAt`, as DentalTID writes it: NanoPix's creation time.
    pub created_at: String,
    /// `phoneNumber` (empty when unknown).
    pub phone: String,
    /// `external_id`.
    pub external_id: NanoPixId,
    /// NanoPix's `created_datetime`, by which the sync knows the row the link is made with (see
    /// [`crate::dentaltid::LinkedRows`]).
    pub nanopix_created: Option<NaiveDateTime>,
}

impl NewDentalPatient {
    /// The DentalTID row for a NanoPix patient, with `age` counted on `today`.
    ///
    /// `createdAt` is NanoPix's `created_datetime`, or the time in the id when that is missing.
    pub fn from_nanopix(patient: &NanoPixPatient, today: NaiveDate) -> Self {
        Self {
            first_name: patient.first_name.trim().to_owned(),
            last_name: patient.last_name.trim().to_owned(),
            age: patient.birth_date.map_or(0, |born| age_on(born, today)),
            date_of_birth: patient.birth_date.map(dart_date),
            created_at: dart_timestamp(patient.created.unwrap_or_else(|| patient.id.datetime())),
            phone: patient.phone.clone().unwrap_or_default(),
            external_id: patient.id,
            nanopix_created: patient.created,
        }
    }
}

/// Which patients [`crate::NanoPixSync::patients`] returns, as on DentalTID's patients screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatientFilter {
    /// Every patient.
    All,
    /// Patients created today.
    Today,
    /// Patients imported from NanoPix and created today.
    TodayByExternal,
    /// Every patient imported from NanoPix.
    AllByExternal,
}

/// Whole years from `born` to `today` (0 for a birth date in the future).
pub fn age_on(born: NaiveDate, today: NaiveDate) -> i64 {
    let mut years = i64::from(today.year() - born.year());
    if (today.month(), today.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years.max(0)
}

/// Formats a local time the way Dart's `DateTime.toIso8601String()` does: `2025-01-21T15:26:46.000`.
pub fn dart_timestamp(at: NaiveDateTime) -> String {
    let mut text = String::with_capacity(23);
    push_date(&mut text, at.date());
    text.push('T');
    push_clock_time(&mut text, at);
    text.push('.');
    push_digits(&mut text, at.and_utc().timestamp_subsec_millis().min(999), 3);
    text
}

/// Formats a date as a Dart midnight timestamp, DentalTID's `dateOfBirth`.
pub fn dart_date(date: NaiveDate) -> String {
    dart_timestamp(date.and_time(NaiveTime::MIN))
}

/// Reads a timestamp Dart's `DateTime.parse` would accept in the forms DentalTID stores, with a
/// year of four digits: the only years written back as they were read.
pub fn parse_dart_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    let at = parse_usual_timestamp(text).or_else(|| parse_other_timestamp(text))?;
    (0..=9999).contains(&at.year()).then_some(at)
}

/// The forms both programs write, read without chrono's format machinery (the hot path of a
/// full reconcile): `YYYY-MM-DD`, then optionally `T` or a space and `HH:MM:SS`, then
/// optionally `.` and up to nine digits.
fn parse_usual_timestamp(text: &str) -> Option<NaiveDateTime> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = bytes.get(range)?;
        digits.iter().try_fold(0u32, |n, &b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    };
    let dashes = bytes.get(4) == Some(&b'-') && bytes.get(7) == Some(&b'-');
    let date = NaiveDate::from_ymd_opt(i32::try_from(number(0..4)?).ok()?, number(5..7)?, number(8..10)?)
        .filter(|_| dashes)?;
    if bytes.len() == 10 {
        return Some(date.and_time(NaiveTime::MIN));
    }
    let shape =
        matches!(bytes.get(10), Some(b'T' | b' ')) && bytes.get(13) == Some(&b':') && bytes.get(16) == Some(&b':');
    let time = NaiveTime::from_hms_opt(number(11..13)?, number(14..16)?, number(17..19)?).filter(|_| shape)?;
    let nanos = match bytes.get(19..) {
        Some([]) => 0,
        Some([b'.', fraction @ ..]) if (1..=9).contains(&fraction.len()) => {
            number(20..bytes.len())? * 10u32.pow(9 - u32::try_from(fraction.len()).ok()?)
        }
        _ => return None,
    };
    Some(date.and_time(time.with_nanosecond(nanos)?))
}

/// The rarer forms DentalTID may hold (minutes only), read with chrono.
fn parse_other_timestamp(text: &str) -> Option<NaiveDateTime> {
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(|d| d.and_time(NaiveTime::MIN)))
}

/// Reads a date written exactly `YYYY-MM-DD`, nothing before or after.
pub fn parse_plain_date(text: &str) -> Option<NaiveDate> {
    (text.len() == 10).then(|| parse_usual_timestamp(text)).flatten().map(|at| at.date())
}

/// DentalTID's `dateOfBirth`, read alike everywhere: by matching, whether it reads every patient
/// or only those an index range finds (exactly the born and the missing), and for exports and
/// the patients screen.
#[derive(Debug, PartialEq)]
pub enum BirthDate {
    /// The text starts with this date, `YYYY-MM-DD` (DentalTID writes a timestamp after it).
    Born(NaiveDate),
    /// NULL, or a value whose text does not start with a digit (empty, blank, words).
    Missing,
    /// A text that starts with a digit but not with a real date: no date for exports, and no
    /// candidate for matching.
    Unreadable,
}

impl BirthDate {
    /// Reads the text of a `dateOfBirth` cell.
    pub fn of(text: Option<&str>) -> Self {
        match text {
            Some(text) if text.starts_with(|c: char| c.is_ascii_digit()) => {
                text.get(..10).and_then(parse_plain_date).map_or(Self::Unreadable, Self::Born)
            }
            _ => Self::Missing,
        }
    }

    /// The date, when there is one.
    pub fn date(&self) -> Option<NaiveDate> {
        match self {
            Self::Born(date) => Some(*date),
            Self::Missing | Self::Unreadable => None,
        }
    }
}

/// Formats a date the way NanoPix does: `2025-01-21`.
pub fn nanopix_date(date: NaiveDate) -> String {
    let mut text = String::with_capacity(10);
    push_date(&mut text, date);
    text
}

/// Formats a datetime the way NanoPix does: `2025-01-21 15:26:46`.
pub fn nanopix_datetime(at: NaiveDateTime) -> String {
    let mut text = String::with_capacity(19);
    push_date(&mut text, at.date());
    text.push(' ');
    push_clock_time(&mut text, at);
    text
}

/// Appends `YYYY-MM-DD`. Written digit by digit: this runs for every event and every row, and
/// chrono's format strings are parsed anew on each call.
fn push_date(text: &mut String, date: NaiveDate) {
    push_digits(text, u32::try_from(date.year()).unwrap_or(0), 4);
    text.push('-');
    push_digits(text, date.month(), 2);
    text.push('-');
    push_digits(text, date.day(), 2);
}

/// Appends `HH:MM:SS` (a leap second shows as :59).
fn push_clock_time(text: &mut String, at: NaiveDateTime) {
    push_digits(text, at.hour(), 2);
    text.push(':');
    push_digits(text, at.minute(), 2);
    text.push(':');
    push_digits(text, at.second().min(59), 2);
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(text: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u32.pow(place) % 10;
        text.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
    }
}

/// Reads NanoPix's `birthdate`; a datetime or ISO timestamp keeps its date part.
pub fn parse_nanopix_date(text: &str) -> Option<NaiveDate> {
    let text = text.trim();
    // Only `YYYY-MM-DD` exactly: another shape cut to ten bytes may name another day.
    let date = parse_plain_date(text.get(..10)?)?;
    // The time after the date only needs to be one: the year floor of creation times is not a birth date's.
    let rest_ok = text.len() == 10 || parse_dart_timestamp(text).is_some();
    (rest_ok && date.year() >= 1850).then_some(date)
}

/// Reads NanoPix's `created_datetime` and `updated_datetime`.
pub fn parse_nanopix_datetime(text: &str) -> Option<NaiveDateTime> {
    let at = parse_dart_timestamp(text)?;
    (at.year() >= 1900).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_source_serialises_as_the_text_of_its_column() {
        for text in ["internal", "nanopix", "csv"] {
            let json = serde_json::to_value(Source::from_column(Some(text))).unwrap();
            assert_eq!(json, serde_json::Value::from(text));
        }
        assert_eq!(serde_json::to_value(Source::from_column(None)).unwrap(), "internal");
    }

    #[test]
    fn dart_format_matches_to_iso8601_string() {
        let at = date(2025, 1, 21).and_hms_opt(15, 26, 46).unwrap();
        assert_eq!(dart_timestamp(at), "2025-01-21T15:26:46.000");
        assert_eq!(dart_date(date(1980, 1, 1)), "1980-01-01T00:00:00.000");
        assert_eq!(parse_dart_timestamp("2025-01-21T15:26:46.000"), Some(at));
    }

    #[test]
    fn nanopix_formats_round_trip() {
        let at = date(2025, 1, 21).and_hms_opt(15, 26, 46).unwrap();
        assert_eq!(nanopix_datetime(at), "2025-01-21 15:26:46");
        assert_eq!(parse_nanopix_datetime("2025-01-21 15:26:46"), Some(at));
        assert_eq!(parse_nanopix_date("2025-01-21"), Some(date(2025, 1, 21)));
    }

    #[test]
    fn odd_nanopix_dates_are_unreadable_not_fatal() {
        for odd in
            ["", "0000-00-00", "21/01/2025", "2025-02-30", "yesterday", "2025-01-21xyz", "0001-01-01", "+1985-03-12"]
        {
            assert_eq!(parse_nanopix_date(odd), None, "{odd:?}");
        }
        assert_eq!(parse_nanopix_date("2025-01-21 00:00:00"), Some(date(2025, 1, 21)));
    }

    proptest::proptest! {
        #[test]
        fn timestamps_read_as_chrono_reads_them(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?)?") {
            // The fast reader may leave a rare form (a leap second) to chrono, never read it otherwise.
            proptest::prop_assert_eq!(parse_dart_timestamp(&text), parse_other_timestamp(&text));
        }

        #[test]
        fn the_fast_timestamp_reader_reads_what_both_programs_write(seconds in 0i64..6_311_433_600, millis in 0i64..1_000) {
            let start = date(1900, 1, 1).and_time(NaiveTime::MIN);
            let at = start + chrono::Duration::seconds(seconds) + chrono::Duration::milliseconds(millis);
            proptest::prop_assert_eq!(parse_usual_timestamp(&dart_timestamp(at)), Some(at));
            let whole = start + chrono::Duration::seconds(seconds);
            proptest::prop_assert_eq!(parse_usual_timestamp(&nanopix_datetime(whole)), Some(whole));
        }

        #[test]
        fn the_fast_timestamp_reader_never_panics(text in "\\PC{0,30}") {
            if let Some(at) = parse_usual_timestamp(&text) {
                proptest::prop_assert_eq!(Some(at), parse_other_timestamp(&text));
            }
        }
    }

    #[test]
    fn age_counts_whole_years() {
        assert_eq!(age_on(date(1985, 3, 12), date(2025, 3, 11)), 39);
        assert_eq!(age_on(date(1985, 3, 12), date(2025, 3, 12)), 40);
        assert_eq!(age_on(date(2030, 1, 1), date(2025, 1, 1)), 0);
    }

    #[test]
    fn source_column_values() {
        assert_eq!(Source::from_column(None), Source::Internal);
        assert_eq!(Source::from_column(Some("nanopix")).as_str(), "nanopix");
        assert_eq!(Source::from_column(Some("csv")), Source::Other("csv".into()));
    }

    #[test]
    fn a_birth_date_is_the_real_date_its_text_starts_with() {
        let born = |y, m, d| BirthDate::Born(NaiveDate::from_ymd_opt(y, m, d).unwrap());
        assert_eq!(BirthDate::of(Some("1985-03-12T00:00:00.000")), born(1985, 3, 12));
        assert_eq!(BirthDate::of(Some("9999-12-31")), born(9999, 12, 31));
        for missing in [None, Some(""), Some(" "), Some(" 1985-03-12"), Some("né le 12/03/1985"), Some("-5")] {
            assert_eq!(BirthDate::of(missing), BirthDate::Missing, "{missing:?}");
        }
        for unreadable in ["1985-3-12", "1985-03-1 ", "12/03/1985", "1985-02-30", "19850312", "1985"] {
            assert_eq!(BirthDate::of(Some(unreadable)), BirthDate::Unreadable, "{unreadable}");
        }
    }
}
