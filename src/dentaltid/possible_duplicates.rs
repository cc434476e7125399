//! Possible duplicates awaiting review: each `possible_duplicate` report is also kept in
//! `nanopix_sync_possible_duplicates`, written in the transaction that imports its patients (or
//! just before an export's report is sent), so that neither a crash nor a host that missed the
//! event loses it. A report stays listed until the host dismisses it or its patient is deleted.
//!
//! A row holds the reports of one page of imports, or of one export: one line each, with the
//! reported patient's id, its NanoPix id, the reason and the candidates' ids (comma-separated),
//! separated by spaces. One row per page keeps a first sync that reports tens of thousands of
//! patients from writing as many rows. A later report on a patient replaces an earlier one.
//! Dismissing a report records, in `nanopix_sync_dismissed_duplicates`, the last row it covers,
//! so a later report on the same patient is listed again. The list reads the candidates as
//! DentalTID holds them at that moment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{Display, Write as _};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::DentalTid;
use crate::patient::{BirthDate, nanopix_date};
use crate::values::text_at;
use crate::{DuplicateCandidate, DuplicateReason, Error, Result};

/// Keeps a page of reports.
const RECORD: &str = "INSERT INTO nanopix_sync_possible_duplicates(reports) VALUES (?1)";

/// Every page of reports, oldest first.
const STORED: &str = "SELECT id, reports FROM nanopix_sync_possible_duplicates ORDER BY id";

/// A patient as a report shows it: names and birth date.
const AS_CANDIDATE: &str = "SELECT name, familyName, dateOfBirth FROM patients WHERE id = ?1";

/// Every dismissal: the patient, and the last row of reports it covers.
const DISMISSED: &str = "SELECT patient_id, through_row FROM nanopix_sync_dismissed_duplicates";

/// Records (or moves on) the dismissal of a patient's reports.
const DISMISS: &str =
    "INSERT OR REPLACE INTO nanopix_sync_dismissed_duplicates(patient_id, through_row) VALUES (?1, ?2)";

/// A `possible_duplicate` report awaiting review, with its candidates as DentalTID holds them now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateToReview {
    /// The DentalTID `patients.id` reported: the patient an import made, or the patient exported.
    pub patient_id: i64,
    /// Its NanoPix id.
    pub external_id: String,
    /// Why it looks like the candidates.
    pub reason: DuplicateReason,
    /// The DentalTID patients it looks like that DentalTID still holds, with their names and
    /// birth dates as they are now; never empty.
    pub candidates: Vec<DuplicateCandidate>,
}

/// One report to keep: the reported patient's id and NanoPix id, why, and the candidates.
pub(super) type Report<'a, E> = (i64, E, DuplicateReason, &'a [DuplicateCandidate]);

/// Keeps `reports` as one row, in the open transaction on `conn`; writes nothing without any.
pub(super) fn record_possible_duplicates<'a, E: Display>(
    conn: &Connection,
    reports: impl IntoIterator<Item = Report<'a, E>>,
) -> rusqlite::Result<()> {
    let mut text = String::new();
    for (patient_id, external_id, reason, candidates) in reports {
        // Writing to a String cannot fail.
        let _ = write!(text, "{patient_id} {external_id} {}", reason.as_str());
        for (n, candidate) in candidates.iter().enumerate() {
            let _ = write!(text, "{}{}", if n == 0 { ' ' } else { ',' }, candidate.patient_id);
        }
        text.push('\n');
    }
    if !text.is_empty() {
        conn.prepare_cached(RECORD)?.execute([text])?;
    }
    Ok(())
}

impl DentalTid {
    /// Keeps the report that patient `patient_id` (NanoPix id `external_id`) looks like
    /// `candidates`, in a transaction of its own.
    pub fn record_possible_duplicate(
        &mut self,
        (patient_id, external_id): (i64, &str),
        reason: DuplicateReason,
        candidates: &[DuplicateCandidate],
    ) -> Result<()> {
        self.write("recording a possible duplicate", |tx| {
            record_possible_duplicates(tx, [(patient_id, external_id, reason, candidates)])
        })
    }

    /// The reports not dismissed whose patient and at least one candidate DentalTID still holds,
    /// by patient id. A line this library did not write is left out.
    pub fn possible_duplicates(&self) -> Result<Vec<DuplicateToReview>> {
        let read = || {
            // One read transaction: one snapshot, and no lock taken and dropped per patient.
            let snapshot = self.conn.unchecked_transaction()?;
            let reports = awaiting_review(&snapshot)?;
            let named = reports
                .values()
                .flat_map(|stored| [stored.patient_id].into_iter().chain(stored.candidate_ids.iter().copied()));
            let held = as_candidates(&snapshot, named.collect())?;
            snapshot.commit()?;
            Ok(reports.into_values().filter_map(|stored| stored.into_review(&held)).collect())
        };
        read().map_err(Error::db(&self.path, "reading possible duplicates"))
    }

    /// Takes the report on patient `patient_id` off the list; returns whether one awaited
    /// review.
    pub fn dismiss_possible_duplicate(&mut self, patient_id: i64) -> Result<bool> {
        self.write("dismissing a possible duplicate", |tx| {
            let Some(stored) = awaiting_review(tx)?.remove(&patient_id) else { return Ok(false) };
            tx.prepare_cached(DISMISS)?.execute(params![patient_id, stored.row])?;
            Ok(true)
        })
    }
}

/// A report as it is stored, with the row holding it.
struct StoredReport {
    row: i64,
    patient_id: i64,
    external_id: String,
    reason: DuplicateReason,
    candidate_ids: Vec<i64>,
}

impl StoredReport {
    /// The report as the list shows it, with the candidates `held` holds; `None` when `held`
    /// holds neither its patient nor any candidate.
    fn into_review(self, held: &HashMap<i64, DuplicateCandidate>) -> Option<DuplicateToReview> {
        held.get(&self.patient_id)?;
        let candidates: Vec<DuplicateCandidate> =
            self.candidate_ids.iter().filter_map(|id| held.get(id).cloned()).collect();
        let Self { patient_id, external_id, reason, .. } = self;
        (!candidates.is_empty()).then_some(DuplicateToReview { patient_id, external_id, reason, candidates })
    }

    /// Reads one line of row `row`; `None` for a line this library did not write.
    fn parse(row: i64, line: &str) -> Option<Self> {
        let mut fields = line.split(' ');
        let patient_id = fields.next()?.parse().ok()?;
        let external_id = fields.next()?.to_owned();
        let reason = DuplicateReason::from_name(fields.next()?)?;
        let candidate_ids = fields.next().unwrap_or_default().split(',').filter_map(|id| id.parse().ok()).collect();
        Some(Self { row, patient_id, external_id, reason, candidate_ids })
    }
}

/// The latest report on each patient that is not dismissed, by patient id.
fn awaiting_review(conn: &Connection) -> rusqlite::Result<BTreeMap<i64, StoredReport>> {
    let dismissed: BTreeMap<i64, i64> = conn
        .prepare_cached(DISMISSED)?
        .query_map([], |row| Ok((row.get(0).ok(), row.get(1).ok())))?
        .filter_map(|read| read.map(|(patient_id, through)| patient_id.zip(through)).transpose())
        .collect::<rusqlite::Result<_>>()?;
    let mut latest = BTreeMap::new();
    let mut statement = conn.prepare_cached(STORED)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (Ok(id), Ok(reports)) = (row.get::<_, i64>(0), row.get::<_, String>(1)) else { continue };
        for stored in reports.lines().filter_map(|line| StoredReport::parse(id, line)) {
            latest.insert(stored.patient_id, stored);
        }
    }
    latest.retain(|patient_id, stored| dismissed.get(patient_id).is_none_or(|&through| through < stored.row));
    Ok(latest)
}

/// The patients among `ids` that DentalTID holds, as a report names them now. They are
/// read in id order, so the table's pages are read in order too.
fn as_candidates(conn: &Connection, ids: BTreeSet<i64>) -> rusqlite::Result<HashMap<i64, DuplicateCandidate>> {
    let mut held = HashMap::with_capacity(ids.len());
    for id in ids {
        if let Some(candidate) = as_candidate(conn, id)? {
            held.insert(id, candidate);
        }
    }
    Ok(held)
}

/// Patient `patient_id` as a report names it, read leniently; `None` when DentalTID does not
/// hold it.
fn as_candidate(conn: &Connection, patient_id: i64) -> rusqlite::Result<Option<DuplicateCandidate>> {
    let mut statement = conn.prepare_cached(AS_CANDIDATE)?;
    statement
        .query_row([patient_id], |row| {
            Ok(DuplicateCandidate {
                patient_id,
                first_name: text_at(row, 0)?.unwrap_or_default(),
                last_name: text_at(row, 1)?.unwrap_or_default(),
                date_of_birth: BirthDate::of(text_at(row, 2)?.as_deref()).date().map(nanopix_date),
            })
        })
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dentaltid::testing::sample_database;

    fn candidates(ids: &[i64]) -> Vec<DuplicateCandidate> {
        let candidate = |&patient_id: &i64| DuplicateCandidate {
            patient_id,
            first_name: String::new(),
            last_name: String::new(),
            date_of_birth: None,
        };
        ids.iter().map(candidate).collect()
    }

    fn listed(dentaltid: &DentalTid) -> Vec<(i64, DuplicateReason, Vec<i64>)> {
        let listed = dentaltid.possible_duplicates().unwrap().into_iter();
        listed.map(|d| (d.patient_id, d.reason, d.candidates.iter().map(|c| c.patient_id).collect())).collect()
    }

    #[test]
    fn a_page_of_reports_is_one_row_and_reads_back_by_patient() {
        let (_dir, dentaltid) = sample_database();
        let (similar, swapped) = (DuplicateReason::SimilarNames, DuplicateReason::SwappedNames);
        let (two_and_four, one) = (candidates(&[2, 4]), candidates(&[1]));
        let page =
            [(3, "20250121_152639", swapped, one.as_slice()), (1, "20250121_152638", similar, two_and_four.as_slice())];
        record_possible_duplicates(&dentaltid.conn, page).unwrap();
        record_possible_duplicates(&dentaltid.conn, [] as [Report<'_, &str>; 0]).unwrap();
        let rows: i64 = dentaltid
            .conn
            .query_row("SELECT count(*) FROM nanopix_sync_possible_duplicates", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "one row for the page, none for an empty one");
        assert_eq!(listed(&dentaltid), [(1, similar, vec![2, 4]), (3, swapped, vec![1])]);
    }

    #[test]
    fn lines_this_library_did_not_write_are_left_out_and_stray_ids_ignored() {
        let (_dir, dentaltid) = sample_database();
        let odd = "INSERT INTO nanopix_sync_possible_duplicates(reports) VALUES
            ('1 20250121_152638 similar_names x,,2,99,4' || char(10) || '2 20250121_152640 a_hunch 1'
             || char(10) || 'three 20250121_152641 swapped_names 1' || char(10) || '4 20250121_152642 swapped_names'
             || char(10) || char(10) || '5 20250121_152643 swapped_names 1'),
            (x'00'), (7)";
        dentaltid.conn.execute_batch(odd).unwrap();
        let similar = DuplicateReason::SimilarNames;
        assert_eq!(listed(&dentaltid), [(1, similar, vec![2, 4]), (5, DuplicateReason::SwappedNames, vec![1])]);
    }

    #[test]
    fn a_dismissal_hides_the_reports_it_covers_and_a_later_report_shows_again() {
        let (_dir, mut dentaltid) = sample_database();
        let reported = (1, "20250121_152638");
        dentaltid.record_possible_duplicate(reported, DuplicateReason::SimilarNames, &candidates(&[2])).unwrap();
        dentaltid.record_possible_duplicate(reported, DuplicateReason::AlreadyLinked, &candidates(&[3])).unwrap();
        assert_eq!(listed(&dentaltid), [(1, DuplicateReason::AlreadyLinked, vec![3])], "the later report");
        assert!(dentaltid.dismiss_possible_duplicate(1).unwrap());
        assert!(!dentaltid.dismiss_possible_duplicate(1).unwrap(), "dismissed already");
        assert!(!dentaltid.dismiss_possible_duplicate(2).unwrap(), "never reported");
        assert_eq!(listed(&dentaltid), []);
        dentaltid.record_possible_duplicate(reported, DuplicateReason::SwappedNames, &candidates(&[4])).unwrap();
        assert_eq!(listed(&dentaltid), [(1, DuplicateReason::SwappedNames, vec![4])]);
    }
}
