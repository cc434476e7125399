//! DentalTID's patients by normalised last name, kept between passes: a live pass or an export
//! that must find the patients of a few last names (those without a birth date, or, see
//! [`crate::patient::NanoPixPatient::born_on_registration_day`], those born on any day) reads
//! the rows added since the last pass, not every patient.
//!
//! A patient renamed in DentalTID after it was read (or, among those without a birth date, one
//! whose birth date was cleared since) is not found under its new name until the engine reads
//! the names again (after a full reconcile). Each patient found is read again and kept only if
//! its last name still matches.

use std::hash::BuildHasher;

use chrono::NaiveDate;
use foldhash::HashSet;
use foldhash::fast::RandomState;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::DentalTid;
use super::candidates::{CANDIDATE_COLUMNS, read_candidate};
use crate::matching::{DentalIndex, normalise_name};
use crate::patient::BirthDate;
use crate::values::text_ref;
use crate::{Error, Result};

/// The `dateOfBirth` of the patients without a birth date, as index ranges read one statement
/// each: NULL, numbers (which sort before every text), and texts that start with no digit.
/// Blobs sort after every text; they are read with the birth dates, since a blob may hold one.
const UNBORN: [&str; 3] = ["dateOfBirth IS NULL", "dateOfBirth < '0'", "dateOfBirth >= ':' AND dateOfBirth < x''"];

/// The hash of each patient's normalised last name, with its id: of every patient, or only of
/// those without a birth date (see [`LastNames::of_unborn`]).
#[derive(Debug, Default)]
pub struct LastNames {
    /// The patients read at once, sorted by hash.
    sorted: Vec<(u64, i64)>,
    /// The patients added since, in id order.
    added: Vec<(u64, i64)>,
    /// The highest patient id read.
    read_up_to: i64,
    hasher: RandomState,
    /// Whether only the patients without a birth date are kept.
    unborn_only: bool,
}

impl LastNames {
    /// The last names of the patients without a birth date only, read at first in the index
    /// ranges of their birth dates: finding the few of some names costs what those cost, however
    /// many patients DentalTID holds without a birth date.
    pub fn of_unborn() -> Self {
        Self { unborn_only: true, ..Self::default() }
    }

    /// The ids of the patients whose normalised last name may be `normalised` (two names can
    /// share a hash: the caller checks each patient's name).
    fn ids_named(&self, normalised: &str) -> impl Iterator<Item = i64> + '_ {
        let key = self.hasher.hash_one(normalised);
        let start = self.sorted.partition_point(|(hash, _)| *hash < key);
        let sorted = self.sorted.get(start..).unwrap_or_default().iter().take_while(move |(hash, _)| *hash == key);
        let added = self.added.iter().filter(move |(hash, _)| *hash == key);
        sorted.chain(added).map(|(_, id)| *id)
    }

    /// Keeps the patient of a row of `id, familyName, dateOfBirth` (unless it has a birth date
    /// and only those without one are kept), among those read at once when `first`.
    fn keep(&mut self, row: &Row<'_>, first: bool, normalised: &mut String) -> rusqlite::Result<()> {
        let Ok(id) = row.get::<_, i64>(0) else { return Ok(()) };
        self.read_up_to = self.read_up_to.max(id);
        let unborn = !matches!(row.get_ref(2)?, ValueRef::Blob(_))
            && matches!(BirthDate::of(text_ref(row, 2)?.as_deref()), BirthDate::Missing);
        if self.unborn_only && !unborn {
            return Ok(());
        }
        normalised.clear();
        crate::matching::normalise_into(text_ref(row, 1)?.as_deref().unwrap_or_default(), normalised);
        let entry = (self.hasher.hash_one(normalised.as_str()), id);
        if first {
            self.sorted.push(entry)
        } else {
            self.added.push(entry)
        }
        Ok(())
    }
}

impl DentalTid {
    /// Adds to `names` the patients added since it last read (every patient the first time, or,
    /// for the last names of the patients without a birth date, those in their index ranges).
    pub fn read_last_names(&self, names: &mut LastNames) -> Result<()> {
        let first = names.sorted.is_empty() && names.added.is_empty();
        let read = |conn: &Connection, names: &mut LastNames| {
            let mut normalised = String::new();
            if first && names.unborn_only {
                let highest: Option<i64> = conn.query_row("SELECT MAX(id) FROM patients", [], |row| row.get(0))?;
                for unborn in UNBORN {
                    // `+id`: the bound on ids must not keep SQLite off the `dateOfBirth` index.
                    let sql = format!("SELECT id, familyName, dateOfBirth FROM patients WHERE {unborn} AND +id <= ?1");
                    let mut statement = conn.prepare_cached(&sql)?;
                    let mut rows = statement.query([highest.unwrap_or_default()])?;
                    while let Some(row) = rows.next()? {
                        names.keep(row, first, &mut normalised)?;
                    }
                }
                names.read_up_to = names.read_up_to.max(highest.unwrap_or_default());
            } else {
                let sql = "SELECT id, familyName, dateOfBirth FROM patients WHERE id > ?1 ORDER BY id";
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query([names.read_up_to])?;
                while let Some(row) = rows.next()? {
                    names.keep(row, first, &mut normalised)?;
                }
            }
            names.sorted.sort_unstable();
            Ok(())
        };
        read(&self.conn, names).map_err(Error::db(&self.path, "reading patients' last names"))
    }

    /// Adds to `index` the patients `names` finds under one of `last_names` (normalised) that
    /// still have that last name and have no birth date or were born on a day not among `dates`,
    /// which [`DentalTid::add_candidates_born_on`] reads (with every `dateOfBirth` held as a blob).
    pub fn add_candidates_named(
        &self,
        names: &LastNames,
        last_names: &HashSet<String>,
        dates: &HashSet<NaiveDate>,
        index: &mut DentalIndex,
    ) -> Result<()> {
        let read = |index: &mut DentalIndex| {
            let sql = format!("SELECT {CANDIDATE_COLUMNS} FROM patients WHERE id = ?1");
            let mut statement = self.conn.prepare_cached(&sql)?;
            for last_name in last_names {
                for id in names.ids_named(last_name) {
                    let mut rows = statement.query([id])?;
                    let Some(row) = rows.next()? else { continue };
                    if matches!(row.get_ref(3)?, ValueRef::Blob(_)) {
                        continue;
                    }
                    read_candidate(row, |candidate| {
                        let read_apart = candidate.date_of_birth.is_some_and(|born| dates.contains(&born));
                        if !read_apart && normalise_name(candidate.last_name) == *last_name {
                            index.add(candidate);
                        }
                    })?;
                }
            }
            Ok(())
        };
        read(index).map_err(Error::db(&self.path, "reading patients of the same last names"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::sample_database;
    use super::*;

    /// The ids of the patients the index holds.
    fn indexed(index: &DentalIndex) -> Vec<i64> {
        index.candidates().iter().map(|candidate| candidate.patient_id).collect()
    }

    #[test]
    fn patients_are_found_by_normalised_last_name_once_read_and_as_added() {
        let (_dir, dentaltid) = sample_database();
        let add = |first: &str, last: &str, born: Option<&str>| {
            let sql = "INSERT INTO patients(name, familyName, dateOfBirth) VALUES (?1, ?2, ?3)";
            dentaltid.conn.execute(sql, (first, last, born)).unwrap();
            dentaltid.conn.last_insert_rowid()
        };
        let yasmine = add("Yasmine", "Haddou", Some("1985-03-12T00:00:00.000"));
        let mut names = LastNames::default();
        dentaltid.read_last_names(&mut names).unwrap();
        let later = add("Sara", "HADDOU ", Some("1990-01-01T00:00:00.000"));
        let born_that_day = add("Lina", "Haddou", Some("2025-01-22T00:00:00.000"));
        let unborn = add("Nour", "Haddou", None);
        dentaltid.read_last_names(&mut names).unwrap();
        dentaltid.conn.execute("UPDATE patients SET familyName = 'Mansouri' WHERE id = ?1", [yasmine]).unwrap();

        let mut index = DentalIndex::default();
        let haddou = HashSet::from_iter(["haddou".to_owned()]);
        dentaltid.add_candidates_named(&names, &haddou, &HashSet::default(), &mut index).unwrap();
        assert_eq!(indexed(&index), [later, born_that_day, unborn], "one renamed since it was read is left out");
        let mut index = DentalIndex::default();
        let on_the_day = HashSet::from_iter([born(2025, 1, 22)]);
        dentaltid.add_candidates_named(&names, &haddou, &on_the_day, &mut index).unwrap();
        assert_eq!(indexed(&index), [later, unborn], "one born on a day read apart is left out");
        let mut unborn_names = LastNames::of_unborn();
        dentaltid.read_last_names(&mut unborn_names).unwrap();
        let unborn_later = add("Rym", "Haddou", None);
        add("Ines", "Haddou", Some("1991-01-01T00:00:00.000"));
        dentaltid.read_last_names(&mut unborn_names).unwrap();
        let mut index = DentalIndex::default();
        dentaltid.add_candidates_named(&unborn_names, &haddou, &on_the_day, &mut index).unwrap();
        let only_unborn = "the last names of those without a birth date hold only those, once read and as added";
        assert_eq!(indexed(&index), [unborn, unborn_later], "{only_unborn}");
    }

    /// A live pass's matcher reads the patients born on the NanoPix dates, with every blob
    /// birth date, then the patients of doubtful last names: a patient whose birth date is a
    /// blob holding another day is in the index once.
    #[test]
    fn a_patient_with_a_blob_birth_date_is_indexed_once_by_a_live_pass() {
        let (_dir, dentaltid) = sample_database();
        let sql = "INSERT INTO patients(name, familyName, dateOfBirth)
                   VALUES ('Nadia', 'Saidi', CAST('1990-03-04T00:00:00.000' AS BLOB))";
        dentaltid.conn.execute(sql, []).unwrap();
        let nadia = dentaltid.conn.last_insert_rowid();
        let mut names = LastNames::default();
        dentaltid.read_last_names(&mut names).unwrap();
        // A doubtful NanoPix Saidi, born on its registration day.
        let dates = HashSet::from_iter([born(2025, 1, 22)]);
        let saidi = HashSet::from_iter(["saidi".to_owned()]);
        let mut index = DentalIndex::default();
        dentaltid.add_candidates_born_on(&dates.iter().copied().collect::<Vec<_>>(), &mut index).unwrap();
        dentaltid.add_candidates_named(&names, &saidi, &dates, &mut index).unwrap();
        assert_eq!(indexed(&index).into_iter().filter(|id| *id == nadia).count(), 1);
    }

    fn born(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }
}
