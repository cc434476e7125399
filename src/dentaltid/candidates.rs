//! Reading DentalTID patients straight into the matching index: only the columns matching
//! needs, borrowed from each row, so no patient is held twice. Indexing every patient takes
//! two threads: this one reads rows in batches (and each patient's [`PatientRef`] on the way)
//! while a second normalises and files them.
//!
//! Reading is lenient like the rest of this module: a row without an integer id is skipped. A
//! birth date is read the same way whether every patient is read or only those born on some
//! dates: [`BirthDate`] finds exactly the patients the index ranges find.

use chrono::NaiveDate;
use crossbeam_channel::Sender;
use rusqlite::{Connection, Params, Row, params};

use super::patients::patient_ref_at;
use super::{DentalTid, PatientRef};
use crate::events::DuplicateCandidate;
use crate::matching::{DentalCandidate, DentalIndex, MatchKey, normalise_name};
use crate::patient::{BirthDate, nanopix_date};
use crate::values::{WHITESPACE, integer_at, starting_with, text_ref};
use crate::{Error, Result};

/// The columns [`read_candidate`] reads, in its order.
pub(super) const CANDIDATE_COLUMNS: &str = "id, name, familyName, dateOfBirth, external_id";

/// The columns [`DentalTid::index_all_candidates`] reads: those of [`read_candidate`], then
/// `source` for each patient's [`PatientRef`].
const INDEXED_COLUMNS: &str = "id, name, familyName, dateOfBirth, external_id, source";

/// Where [`INDEXED_COLUMNS`] has a patient's id, source, NanoPix id and birth date.
const REF_COLUMNS: [usize; 4] = [0, 5, 4, 3];

/// Rows per batch handed to the indexing thread.
const BATCH_ROWS: usize = 4_096;

impl DentalTid {
    /// Adds every patient to `index`.
    pub fn add_all_candidates(&self, index: &mut DentalIndex) -> Result<()> {
        self.add_candidates("reading patients for matching", "", [], index)
    }

    /// Every patient, as a [`PatientRef`] in id order and in an index: this thread reads the
    /// rows in batches while a second one normalises and files them.
    pub fn index_all_candidates(&self) -> Result<(Vec<PatientRef>, DentalIndex)> {
        let (send, batches) = crossbeam_channel::bounded::<Batch>(2);
        std::thread::scope(|scope| {
            let indexer = scope.spawn(move || {
                let mut index = DentalIndex::default();
                batches.iter().for_each(|batch| batch.add_to(&mut index));
                index
            });
            let refs = self.read_batches(&send);
            drop(send);
            let index = indexer.join().map_err(|_| Error::Internal("indexing DentalTID patients panicked".into()))?;
            refs.map(|refs| (refs, index))
        })
    }

    /// Reads every patient in id order, sends them to `send` in batches until the last or until
    /// the receiver hangs up, and returns the references of those read.
    fn read_batches(&self, send: &Sender<Batch>) -> Result<Vec<PatientRef>> {
        let read = || {
            let sql = format!("SELECT {INDEXED_COLUMNS} FROM patients ORDER BY id");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut rows = statement.query([])?;
            let (mut refs, mut batch) = (Vec::new(), Batch::default());
            while let Some(row) = rows.next()? {
                read_candidate(row, |candidate| batch.push(candidate))?;
                refs.extend(patient_ref_at(row, REF_COLUMNS)?);
                if batch.rows.len() == BATCH_ROWS && send.send(std::mem::take(&mut batch)).is_err() {
                    return Ok(refs);
                }
            }
            let _ = send.send(batch);
            Ok(refs)
        };
        read().map_err(Error::db(&self.path, "reading patients for matching"))
    }

    /// Adds to `index` the patients born on one of `dates`, one index range each, and those
    /// whose `dateOfBirth` is a blob (matching reads the date a blob holds, if any): those a
    /// NanoPix patient born on one of `dates` could match or resemble by birth date. Those
    /// without a birth date are found by name (see [`DentalTid::add_candidates_named`]).
    pub fn add_candidates_born_on(&self, dates: &[NaiveDate], index: &mut DentalIndex) -> Result<()> {
        for date in dates {
            let born_on = "WHERE dateOfBirth >= ?1 AND dateOfBirth < ?2";
            self.add_candidates("reading match candidates", born_on, starting_with(nanopix_date(*date)), index)?;
        }
        self.add_candidates("reading match candidates", "WHERE dateOfBirth >= x''", [], index)
    }

    /// Runs `SELECT <candidate columns> FROM patients <tail>` and adds every row to `index`.
    fn add_candidates(
        &self,
        step: &'static str,
        tail: &str,
        params: impl Params,
        index: &mut DentalIndex,
    ) -> Result<()> {
        let read = |index: &mut DentalIndex| {
            let sql = format!("SELECT {CANDIDATE_COLUMNS} FROM patients {tail}");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut rows = statement.query(params)?;
            while let Some(row) = rows.next()? {
                read_candidate(row, |candidate| index.add(candidate))?;
            }
            Ok(())
        };
        read(index).map_err(Error::db(&self.path, step))
    }
}

/// The keys of the unlinked patients with an id past `after` and a birth date, read as matching
/// reads them, and the highest id among them (`after` when there are none).
pub(super) fn unlinked_keys_after(conn: &Connection, after: i64) -> rusqlite::Result<(Vec<MatchKey>, i64)> {
    let sql = format!(
        "SELECT {CANDIDATE_COLUMNS} FROM patients WHERE id > ?1 AND (external_id IS NULL OR trim(external_id, ?2) = '')"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params![after, WHITESPACE])?;
    let (mut keys, mut highest) = (Vec::new(), after);
    while let Some(row) = rows.next()? {
        read_candidate(row, |candidate| {
            highest = highest.max(candidate.id);
            if let (false, Some(born)) = (candidate.linked, candidate.date_of_birth) {
                keys.push(MatchKey::of(candidate.first_name, candidate.last_name, born));
            }
        })?;
    }
    Ok((keys, highest))
}

/// Whether patient `patient_id`, read as matching reads it, still has `key`; `None` when there
/// is no such patient.
pub(super) fn still_fits(conn: &Connection, patient_id: i64, key: &MatchKey) -> rusqlite::Result<Option<bool>> {
    check_candidate(conn, patient_id, |candidate| key.fits(candidate))
}

/// Whether the patient `named` names, read as matching reads it, is still there with the names
/// (normalised) and the birth date (or none) `named` gives it.
pub(super) fn still_named_as(conn: &Connection, named: &DuplicateCandidate) -> rusqlite::Result<bool> {
    let same = |now: &DentalCandidate<'_>| {
        now.date_of_birth.map(nanopix_date) == named.date_of_birth
            && normalise_name(now.first_name) == normalise_name(&named.first_name)
            && normalise_name(now.last_name) == normalise_name(&named.last_name)
    };
    Ok(check_candidate(conn, named.patient_id, same)? == Some(true))
}

/// Whether patient `patient_id`, as matching reads it, passes `check` (false when matching leaves
/// it out); `None` when there is no such patient.
fn check_candidate(
    conn: &Connection,
    patient_id: i64,
    check: impl FnOnce(&DentalCandidate<'_>) -> bool,
) -> rusqlite::Result<Option<bool>> {
    let mut statement = conn.prepare_cached(&format!("SELECT {CANDIDATE_COLUMNS} FROM patients WHERE id = ?1"))?;
    let mut rows = statement.query([patient_id])?;
    let Some(row) = rows.next()? else { return Ok(None) };
    let mut passes = false;
    read_candidate(row, |candidate| passes = check(&candidate))?;
    Ok(Some(passes))
}

/// Reads one row of [`CANDIDATE_COLUMNS`] and hands it to `take`, unless its id is not an
/// integer or its birth date is unreadable.
pub(super) fn read_candidate(row: &Row<'_>, take: impl FnOnce(DentalCandidate<'_>)) -> rusqlite::Result<()> {
    let Some(id) = integer_at(row, 0)? else { return Ok(()) };
    let (first_name, last_name) = (text_ref(row, 1)?, text_ref(row, 2)?);
    let date_of_birth = match BirthDate::of(text_ref(row, 3)?.as_deref()) {
        BirthDate::Born(date) => Some(date),
        BirthDate::Missing => None,
        BirthDate::Unreadable => return Ok(()),
    };
    let linked = text_ref(row, 4)?.is_some_and(|external_id| !external_id.trim().is_empty());
    take(DentalCandidate {
        id,
        first_name: first_name.as_deref().unwrap_or_default(),
        last_name: last_name.as_deref().unwrap_or_default(),
        date_of_birth,
        linked,
    });
    Ok(())
}

/// Patients read for matching, on their way to the indexing thread: every name in one text,
/// and for each patient where its names end.
#[derive(Debug, Default)]
struct Batch {
    text: String,
    rows: Vec<BatchRow>,
}

/// One patient of a [`Batch`]; its names run from where the previous row's end to `ends`.
#[derive(Debug)]
struct BatchRow {
    id: i64,
    ends: [usize; 2],
    date_of_birth: Option<NaiveDate>,
    linked: bool,
}

impl Batch {
    fn push(&mut self, candidate: DentalCandidate<'_>) {
        let ends = [candidate.first_name, candidate.last_name].map(|name| {
            self.text.push_str(name);
            self.text.len()
        });
        let (id, date_of_birth, linked) = (candidate.id, candidate.date_of_birth, candidate.linked);
        self.rows.push(BatchRow { id, ends, date_of_birth, linked });
    }

    fn add_to(&self, index: &mut DentalIndex) {
        let mut start = 0;
        for row in &self.rows {
            let [first_end, last_end] = row.ends;
            index.add(DentalCandidate {
                id: row.id,
                first_name: self.text.get(start..first_end).unwrap_or_default(),
                last_name: self.text.get(first_end..last_end).unwrap_or_default(),
                date_of_birth: row.date_of_birth,
                linked: row.linked,
            });
            start = last_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use foldhash::HashSet;

    use super::super::LastNames;
    use super::super::testing::sample_database;
    use super::*;

    #[test]
    fn indexing_on_two_threads_reads_every_patient_as_one_thread_does() {
        let (_dir, dentaltid) = sample_database();
        let rows = BATCH_ROWS * 2 + 7;
        let insert = "INSERT INTO patients(name, familyName, age, dateOfBirth, createdAt)
            SELECT 'Zoé ' || value, 'Lefèvre', 40, CASE WHEN value % 3 = 0 THEN NULL ELSE '1985-03-12T00:00:00.000' END,
                   '2025-01-21T15:26:46.000'
            FROM (WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < ?1)
                  SELECT value FROM n)";
        dentaltid.conn.execute(insert, [rows]).unwrap();
        let mut one_thread = DentalIndex::default();
        dentaltid.add_all_candidates(&mut one_thread).unwrap();
        let (refs, two_threads) = dentaltid.index_all_candidates().unwrap();
        assert!(one_thread.candidates().len() > rows, "the sample patients and every inserted one");
        assert_eq!(two_threads.candidates(), one_thread.candidates());
        assert_eq!(refs, dentaltid.patient_refs().unwrap());
    }

    #[test]
    fn reading_the_patients_born_on_some_dates_finds_those_reading_every_patient_finds() {
        let (_dir, dentaltid) = sample_database();
        let births = "(NULL), (''), (' '), (' 1985-03-12T00:00:00.000'), ('1985-03-12'), ('1985-03-12T00:00:00.000'),
            ('1985-03-12T00:00:00.000Z'), ('1985-03-12 and more'), ('1985-3-12'), ('1985-03-1 '), ('12/03/1985'),
            ('1985-02-30'), ('19850312'), (19850312), (-5), (1.5), (x'31393835'), (x'41'), ('abc'), ('éé'),
            ('1985-03-11T23:59'), ('1985-03-13'), ('9999-12-31T00:00:00.000'), ('0000-01-01')";
        let insert = format!(
            "INSERT INTO patients(name, familyName, age, dateOfBirth, createdAt)
             SELECT 'Zoé', 'Lefèvre', 40, column1, '2025-01-21T15:26:46.000' FROM (VALUES {births})"
        );
        dentaltid.conn.execute(&insert, []).unwrap();
        let dates =
            ["1985-03-12", "9999-12-31", "1985-03-11"].map(|date| crate::patient::parse_plain_date(date).unwrap());
        let mut born_on = DentalIndex::default();
        dentaltid.add_candidates_born_on(&dates, &mut born_on).unwrap();
        let mut names = LastNames::of_unborn();
        dentaltid.read_last_names(&mut names).unwrap();
        let lefevre = HashSet::from_iter(["lefevre".to_owned()]);
        dentaltid.add_candidates_named(&names, &lefevre, &HashSet::from_iter(dates), &mut born_on).unwrap();
        let mut every = DentalIndex::default();
        dentaltid.add_all_candidates(&mut every).unwrap();
        let as_dates = dates.map(nanopix_date);
        // Those born on the dates, and those of the name without a birth date (not the sample's
        // Karim Haddad).
        let wanted = |c: &DuplicateCandidate| {
            c.date_of_birth.as_ref().map_or(normalise_name(&c.last_name) == "lefevre", |born| as_dates.contains(born))
        };
        let mut expected: Vec<_> = every.candidates().into_iter().filter(wanted).collect();
        let mut found = born_on.candidates();
        for candidates in [&mut expected, &mut found] {
            candidates.sort_by_key(|candidate| candidate.patient_id);
        }
        assert_eq!(found, expected);
        let born = |date: &str| expected.iter().filter(|c| c.date_of_birth.as_deref() == Some(date)).count();
        // The sample's Amina Benali, and four of those above.
        assert_eq!((born("1985-03-12"), born("1985-03-11"), born("9999-12-31")), (5, 1, 1));
    }
}
