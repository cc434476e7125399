//! Possible duplicates awaiting review: each `possible_duplicate` report is also kept in
//! `nanopix_sync_possible_duplicates`, written in the transaction that imports its patients (or
//! that finishes the export reported), so that neither a crash nor a host that missed the event
//! loses it. A report stays listed until the host dismisses it or its patient is deleted.
//!
//! A row holds the reports of one page of imports, or of one export: one line each, with the
//! reported patient's id, its NanoPix id, the reason, the candidates (comma-separated, each its
//! id and, after an `@`, its `createdAt` as [`candidate_entry`] writes it; lines written before
//! held the ids alone) and the patient's `createdAt` (left out by the first version of this
//! list), separated by spaces.
//! One row per page keeps a first sync that reports tens of thousands of patients from writing as
//! many rows. A later report on a patient replaces an earlier one. Dismissing a report records, in `nanopix_sync_dismissed_duplicates`, the last
//! row it covers, so a later report on the same patient is listed again. A pair of patients is
//! put to review once: an export does not report again a twin whose own report names it. The list reads the
//! patients as DentalTID holds them at that moment; a patient or candidate whose `createdAt`
//! changed is another one under the same id (a `patients` table without AUTOINCREMENT gives a
//! deleted last id again).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{Display, Write as _};

use rusqlite::{CachedStatement, Connection, OptionalExtension, params};
use serde::Serialize;

use super::DentalTid;
use super::patients::patients_sequence;
use crate::patient::{BirthDate, nanopix_date};
use crate::values::text_at;
use crate::{DuplicateCandidate, DuplicateReason, Error, Result};

/// Keeps a page of reports.
const RECORD: &str = "INSERT INTO nanopix_sync_possible_duplicates(reports) VALUES (?1)";

/// Every page of reports, oldest first.
const STORED: &str = "SELECT id, reports FROM nanopix_sync_possible_duplicates ORDER BY id";

/// One page of reports.
const STORED_IN: &str = "SELECT id, reports FROM nanopix_sync_possible_duplicates WHERE id = ?1";

/// A patient as a report shows it: names, birth date, and the `createdAt` that tells it apart.
const AS_CANDIDATE: &str = "SELECT name, familyName, dateOfBirth, createdAt FROM patients WHERE id = ?1";

/// The `createdAt` of a candidate as its report is kept, which tells it apart from another
/// patient given its id later.
const CANDIDATE_CREATED: &str = "SELECT createdAt FROM patients WHERE id = ?1";

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

/// One report to keep.
#[derive(Debug)]
pub struct Report<'a, E> {
    /// The DentalTID patient reported.
    pub patient_id: i64,
    /// Its `createdAt`, as written.
    pub created_at: &'a str,
    /// Its NanoPix id.
    pub external_id: E,
    /// Why it looks like the candidates.
    pub reason: DuplicateReason,
    /// The DentalTID patients it looks like.
    pub candidates: &'a [DuplicateCandidate],
}

/// Keeps `reports` as one row, in the open transaction on `conn`, and returns its id; writes
/// nothing without any. In a `patients` table without AUTOINCREMENT, which gives a deleted last id again, each
/// candidate is kept with its `createdAt` as DentalTID holds it now, and one DentalTID no longer
/// holds is left out: a patient given its id later is someone else. With AUTOINCREMENT (a
/// `sqlite_sequence` row, as DentalTID's own table has), no id is given twice, and the ids alone
/// name the candidates for good.
pub(super) fn record_possible_duplicates<'a, E: Display>(
    conn: &Connection,
    reports: impl IntoIterator<Item = Report<'a, E>>,
) -> rusqlite::Result<Option<i64>> {
    let mut created = match patients_sequence(conn)? {
        Some(_) => None,
        None => Some(conn.prepare_cached(CANDIDATE_CREATED)?),
    };
    let mut text = String::new();
    for report in reports {
        let entries = candidate_entries(created.as_mut(), report.candidates)?;
        let (patient_id, external_id, reason) = (report.patient_id, report.external_id, report.reason.as_str());
        // Writing to a String cannot fail.
        let _ =
            writeln!(text, "{patient_id} {external_id} {reason} {} {}", entries.join(","), one_line(report.created_at));
    }
    if text.is_empty() {
        return Ok(None);
    }
    conn.prepare_cached(RECORD)?.execute([text])?;
    Ok(Some(conn.last_insert_rowid()))
}

/// The entries of `candidates` in a kept line: each id alone, or with its `createdAt` read by
/// `created` (see [`candidate_entry`]), leaving out a candidate it finds no longer held.
fn candidate_entries(
    created: Option<&mut CachedStatement<'_>>,
    candidates: &[DuplicateCandidate],
) -> rusqlite::Result<Vec<String>> {
    let Some(created) = created else {
        return Ok(candidates.iter().map(|candidate| candidate.patient_id.to_string()).collect());
    };
    let mut entries = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let patient_id = candidate.patient_id;
        let held = created.query_row([patient_id], |row| text_at(row, 0)).optional()?;
        entries.extend(held.map(|created_at| candidate_entry(patient_id, &created_at.unwrap_or_default())));
    }
    Ok(entries)
}

/// `text` on one line: a line break in a `createdAt` would end its report's line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// A candidate as a line keeps it: its id, `@`, and its `createdAt` on one line with `%`, space
/// and comma written as `%25`, `%20` and `%2C`, so that it ends neither the entry nor the field.
fn candidate_entry(patient_id: i64, created_at: &str) -> String {
    format!("{patient_id}@{}", kept_created_at(created_at))
}

/// A candidate's `createdAt` as [`candidate_entry`] writes it.
fn kept_created_at(created_at: &str) -> String {
    one_line(created_at).replace('%', "%25").replace(' ', "%20").replace(',', "%2C")
}

impl DentalTid {
    /// The reports not dismissed whose patient and at least one candidate DentalTID still holds,
    /// by patient id. A line this library did not write is left out.
    pub fn possible_duplicates(&self) -> Result<Vec<DuplicateToReview>> {
        let read = || {
            // One read transaction: one snapshot, and no lock taken and dropped per patient.
            let snapshot = self.conn.unchecked_transaction()?;
            let listed = listed(&snapshot, awaiting_review(&snapshot, None)?)?;
            snapshot.commit()?;
            Ok(listed)
        };
        read().map_err(Error::db(&self.path, "reading possible duplicates"))
    }

    /// Takes the report on patient `patient_id` off the list; returns whether it was listed.
    pub fn dismiss_possible_duplicate(&mut self, patient_id: i64) -> Result<bool> {
        self.write("dismissing a possible duplicate", |tx| {
            let awaiting = awaiting_review(tx, Some(patient_id))?;
            let Some(row) = awaiting.get(&patient_id).map(|stored| stored.row) else { return Ok(false) };
            if listed(tx, awaiting)?.is_empty() {
                return Ok(false);
            }
            tx.prepare_cached(DISMISS)?.execute(params![patient_id, row])?;
            Ok(true)
        })
    }
}

/// The reports of `awaiting` whose patient and at least one candidate DentalTID holds, as the
/// list shows them.
fn listed(conn: &Connection, awaiting: BTreeMap<i64, StoredReport>) -> rusqlite::Result<Vec<DuplicateToReview>> {
    let named = awaiting
        .values()
        .flat_map(|stored| [stored.patient_id].into_iter().chain(stored.candidates.iter().map(|(id, _)| *id)));
    let held = held_patients(conn, named.collect())?;
    Ok(awaiting.values().filter_map(|stored| stored.review(&held)).collect())
}

/// A report as it is stored, with the row holding it.
struct StoredReport {
    row: i64,
    patient_id: i64,
    external_id: String,
    reason: DuplicateReason,
    /// The candidates' ids, each with its `createdAt` as [`candidate_entry`] wrote it (`None` in
    /// a line written before it was kept).
    candidates: Vec<(i64, Option<String>)>,
    /// The patient's `createdAt`, on one line; `None` in a line written before it was kept.
    created_at: Option<String>,
}

impl StoredReport {
    /// The report as the list shows it, with the candidates `held` holds; `None` when `held`
    /// lacks its patient (with the `createdAt` it had) or holds none of its candidates.
    fn review(&self, held: &HashMap<i64, HeldPatient>) -> Option<DuplicateToReview> {
        let patient = held.get(&self.patient_id)?;
        if self.created_at.as_ref().is_some_and(|created_at| *created_at != one_line(&patient.created_at)) {
            return None;
        }
        let candidates: Vec<DuplicateCandidate> = self
            .candidates
            .iter()
            .filter_map(|(id, created_at)| {
                let patient = held.get(id)?;
                let same = created_at.as_ref().is_none_or(|kept| *kept == kept_created_at(&patient.created_at));
                same.then(|| patient.candidate.clone())
            })
            .collect();
        let (patient_id, external_id, reason) = (self.patient_id, self.external_id.clone(), self.reason);
        (!candidates.is_empty()).then_some(DuplicateToReview { patient_id, external_id, reason, candidates })
    }

    /// The patient a line reports on, read alone; `None` for a line this library did not write.
    fn patient_of(line: &[u8]) -> Option<i64> {
        std::str::from_utf8(line.split(|&byte| byte == b' ').next()?).ok()?.parse().ok()
    }

    /// Reads one line of row `row`; `None` for a line this library did not write.
    fn parse(row: i64, line: &[u8]) -> Option<Self> {
        let mut fields = std::str::from_utf8(line).ok()?.splitn(5, ' ');
        let patient_id = fields.next()?.parse().ok()?;
        let external_id = fields.next()?.to_owned();
        let reason = DuplicateReason::from_name(fields.next()?)?;
        let candidates = fields.next()?.split(',').filter_map(parse_candidate).collect();
        let created_at = fields.next().map(str::to_owned);
        Some(Self { row, patient_id, external_id, reason, candidates, created_at })
    }
}

/// Reads a candidate entry written by [`candidate_entry`], or a bare id of an older line;
/// `None` for an entry this library did not write.
fn parse_candidate(entry: &str) -> Option<(i64, Option<String>)> {
    match entry.split_once('@') {
        Some((id, created_at)) => Some((id.parse().ok()?, Some(created_at.to_owned()))),
        None => Some((entry.parse().ok()?, None)),
    }
}

/// The latest reports kept on some patients, listed or dismissed, read once for many look-ups
/// ([`ReportsOn::name_together`]) in one transaction, and told of the reports it keeps meanwhile
/// ([`ReportsOn::kept_in`]): reading the whole list for each look-up made each export of a patient
/// with linked twins read it all, megabytes once a first sync of a large clinic has reported
/// thousands of possible duplicates.
pub(super) struct ReportsOn {
    patients: BTreeSet<i64>,
    latest: BTreeMap<i64, StoredReport>,
}

impl ReportsOn {
    /// Reads the latest report on each of `patients`, in one pass over the list (none without
    /// patients).
    pub(super) fn read(conn: &Connection, patients: BTreeSet<i64>) -> rusqlite::Result<Self> {
        let latest = if patients.is_empty() { BTreeMap::new() } else { latest_reports(conn, Some(&patients))? };
        Ok(Self { patients, latest })
    }

    /// Whether the latest report kept on patient `reported` (one of those read) names patient
    /// `candidate`, both still the patients the report was kept for: the pair was put to review
    /// already.
    pub(super) fn name_together(&self, conn: &Connection, reported: i64, candidate: i64) -> rusqlite::Result<bool> {
        let Some(stored) = self.latest.get(&reported) else { return Ok(false) };
        let held = held_patients(conn, BTreeSet::from([reported, candidate]))?;
        Ok(stored.review(&held).is_some_and(|review| review.candidates.iter().any(|c| c.patient_id == candidate)))
    }

    /// Takes in the reports on the patients read that row `row` keeps, kept since they were read.
    pub(super) fn kept_in(&mut self, conn: &Connection, row: i64) -> rusqlite::Result<()> {
        let mut statement = conn.prepare_cached(STORED_IN)?;
        let mut rows = statement.query([row])?;
        while let Some(row) = rows.next()? {
            take_latest(row, Some(&Wanted::of(&self.patients)), &mut self.latest)?;
        }
        Ok(())
    }
}

/// The latest report on each patient that is not dismissed, by patient id; on patient `only`
/// alone, when given (see [`latest_reports`]).
fn awaiting_review(conn: &Connection, only: Option<i64>) -> rusqlite::Result<BTreeMap<i64, StoredReport>> {
    let dismissed: BTreeMap<i64, i64> = conn
        .prepare_cached(DISMISSED)?
        .query_map([], |row| Ok((row.get(0).ok(), row.get(1).ok())))?
        .filter_map(|read| read.map(|(patient_id, through)| patient_id.zip(through)).transpose())
        .collect::<rusqlite::Result<_>>()?;
    let mut latest = latest_reports(conn, only.map(|patient_id| BTreeSet::from([patient_id])).as_ref())?;
    latest.retain(|patient_id, stored| dismissed.get(patient_id).is_none_or(|&through| through < stored.row));
    Ok(latest)
}

/// The latest report on each patient, dismissed or not, by patient id; on the patients `only`
/// names alone, when given (only their lines are read whole, so looking at a few patients'
/// reports does not parse the whole list).
fn latest_reports(conn: &Connection, only: Option<&BTreeSet<i64>>) -> rusqlite::Result<BTreeMap<i64, StoredReport>> {
    let mut latest = BTreeMap::new();
    let wanted = only.map(Wanted::of);
    let mut statement = conn.prepare_cached(STORED)?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        take_latest(row, wanted.as_ref(), &mut latest)?;
    }
    Ok(latest)
}

/// Takes into `latest` the reports a row of [`STORED`]'s columns keeps, on the patients `only`
/// wants alone when given, each over any earlier one on its patient.
fn take_latest(
    row: &rusqlite::Row<'_>,
    only: Option<&Wanted<'_>>,
    latest: &mut BTreeMap<i64, StoredReport>,
) -> rusqlite::Result<()> {
    let (Ok(id), Some(reports)) = (row.get::<_, i64>(0), row.get_ref(1)?.as_bytes_or_null().ok().flatten()) else {
        return Ok(());
    };
    if only.is_some_and(|only| !only.may_be_in(reports)) {
        return Ok(());
    }
    let lines = reports.split(|&byte| byte == b'\n');
    let wanted = lines.filter(|line| only.is_none_or(|only| only.wants(line)));
    for stored in wanted.filter_map(|line| StoredReport::parse(id, line)) {
        latest.insert(stored.patient_id, stored);
    }
    Ok(())
}

/// Up to how many patients a read of the list looks for their lines in each row (see
/// [`LinesOn`]) before it reads the row; for more, it reads every row line by line, once.
const SEARCHED_PATIENTS: usize = 8;

/// The patients a read of the list takes the reports on, with a quick search for the lines of
/// each when they are few.
struct Wanted<'a> {
    patients: &'a BTreeSet<i64>,
    searches: Option<Vec<LinesOn>>,
}

impl<'a> Wanted<'a> {
    /// The reports on `patients`.
    fn of(patients: &'a BTreeSet<i64>) -> Self {
        let few = patients.len() <= SEARCHED_PATIENTS;
        Self { patients, searches: few.then(|| patients.iter().map(|&patient_id| LinesOn::new(patient_id)).collect()) }
    }

    /// Whether `reports`, a row of the list, may hold a line on one of the patients.
    fn may_be_in(&self, reports: &[u8]) -> bool {
        self.searches.as_ref().is_none_or(|searches| searches.iter().any(|search| search.may_be_in(reports)))
    }

    /// Whether `line` reports on one of the patients.
    fn wants(&self, line: &[u8]) -> bool {
        StoredReport::patient_of(line).is_some_and(|patient_id| self.patients.contains(&patient_id))
    }
}

/// A quick search for the lines of one patient's reports in a row of the list, so that looking
/// at one patient's report reads whole only the rows that may hold one: a line starts with the
/// patient's id and a space.
struct LinesOn {
    /// The start of such a line: `<id> `.
    start: Vec<u8>,
    /// Finds such a line after the first: `\n<id> `.
    later: memchr::memmem::Finder<'static>,
}

impl LinesOn {
    /// The search for the lines on patient `patient_id`.
    fn new(patient_id: i64) -> Self {
        let start = format!("{patient_id} ").into_bytes();
        let later = memchr::memmem::Finder::new(&[b"\n", start.as_slice()].concat()).into_owned();
        Self { start, later }
    }

    /// Whether `reports`, a row of the list, may hold a line on the patient.
    fn may_be_in(&self, reports: &[u8]) -> bool {
        reports.starts_with(&self.start) || self.later.find(reports).is_some()
    }
}

/// A patient a report names, as DentalTID holds it now.
struct HeldPatient {
    candidate: DuplicateCandidate,
    created_at: String,
}

/// The patients among `ids` that DentalTID holds. They are read in id order, so the table's
/// pages are read in order too.
fn held_patients(conn: &Connection, ids: BTreeSet<i64>) -> rusqlite::Result<HashMap<i64, HeldPatient>> {
    let mut held = HashMap::with_capacity(ids.len());
    let mut statement = conn.prepare_cached(AS_CANDIDATE)?;
    for patient_id in ids {
        let patient = statement
            .query_row([patient_id], |row| {
                let candidate = DuplicateCandidate {
                    patient_id,
                    first_name: text_at(row, 0)?.unwrap_or_default(),
                    last_name: text_at(row, 1)?.unwrap_or_default(),
                    date_of_birth: BirthDate::of(text_at(row, 2)?.as_deref()).date().map(nanopix_date),
                };
                Ok(HeldPatient { candidate, created_at: text_at(row, 3)?.unwrap_or_default() })
            })
            .optional()?;
        held.extend(patient.map(|patient| (patient_id, patient)));
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dentaltid::testing::sample_database;

    const SIMILAR: DuplicateReason = DuplicateReason::SimilarNames;

    fn candidates(ids: &[i64]) -> Vec<DuplicateCandidate> {
        let candidate = |&patient_id: &i64| DuplicateCandidate {
            patient_id,
            first_name: String::new(),
            last_name: String::new(),
            date_of_birth: None,
        };
        ids.iter().map(candidate).collect()
    }

    fn created_at(dentaltid: &DentalTid, patient_id: i64) -> String {
        let sql = "SELECT createdAt FROM patients WHERE id = ?1";
        dentaltid.conn.query_row(sql, [patient_id], |row| row.get(0)).unwrap()
    }

    /// Keeps, as one page, a report on each of `reported` (patient id, reason, candidate ids).
    fn record(dentaltid: &DentalTid, reported: &[(i64, DuplicateReason, &[i64])]) {
        let held: Vec<(String, Vec<DuplicateCandidate>)> =
            reported.iter().map(|(id, _, ids)| (created_at(dentaltid, *id), candidates(ids))).collect();
        let reports = reported.iter().zip(&held).map(|((patient_id, reason, _), (created_at, candidates))| Report {
            patient_id: *patient_id,
            created_at,
            external_id: format!("20250121_15263{patient_id}"),
            reason: *reason,
            candidates,
        });
        record_possible_duplicates(&dentaltid.conn, reports).unwrap();
    }

    fn listed(dentaltid: &DentalTid) -> Vec<(i64, DuplicateReason, Vec<i64>)> {
        let listed = dentaltid.possible_duplicates().unwrap().into_iter();
        listed.map(|d| (d.patient_id, d.reason, d.candidates.iter().map(|c| c.patient_id).collect())).collect()
    }

    fn rows(dentaltid: &DentalTid) -> i64 {
        let sql = "SELECT count(*) FROM nanopix_sync_possible_duplicates";
        dentaltid.conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    #[test]
    fn a_page_of_reports_is_one_row_and_reads_back_by_patient() {
        let (_dir, dentaltid) = sample_database();
        let swapped = DuplicateReason::SwappedNames;
        record(&dentaltid, &[(3, swapped, &[1]), (1, SIMILAR, &[2, 4])]);
        record(&dentaltid, &[]);
        assert_eq!(rows(&dentaltid), 1, "one row for the page, none for an empty one");
        assert_eq!(listed(&dentaltid), [(1, SIMILAR, vec![2, 4]), (3, swapped, vec![1])]);
    }

    #[test]
    fn odd_lines_are_left_out_stray_ids_ignored_and_lines_of_the_first_format_kept() {
        let (_dir, dentaltid) = sample_database();
        let (one, five) = (created_at(&dentaltid, 1), created_at(&dentaltid, 5));
        let lines = [
            format!("1 20250121_152638 similar_names x,,2,99,4 {one}"),
            format!("2 20250121_152640 a_hunch 1 {}", created_at(&dentaltid, 2)),
            format!("three 20250121_152641 swapped_names 1 {one}"),
            format!("4 20250121_152642 swapped_names  {}", created_at(&dentaltid, 4)),
            "6 20250121_152643 swapped_names 1".to_owned(),
            "7 20250121_152645 swapped_names".to_owned(),
            String::new(),
            format!("5 20250121_152644 swapped_names 1 {five}"),
        ];
        let insert = "INSERT INTO nanopix_sync_possible_duplicates(reports) VALUES (?1), (x'00'), (7)";
        dentaltid.conn.execute(insert, [lines.join("\n")]).unwrap();
        let swapped = DuplicateReason::SwappedNames;
        let listed_now = listed(&dentaltid);
        assert_eq!(listed_now, [(1, SIMILAR, vec![2, 4]), (5, swapped, vec![1]), (6, swapped, vec![1])]);
    }

    #[test]
    fn a_line_that_is_not_text_hides_only_itself() {
        let (_dir, dentaltid) = sample_database();
        let line = |id: i64| format!("{id} 20250121_15263{id} similar_names 4 {}\n", created_at(&dentaltid, id));
        let reports = [line(1).into_bytes(), vec![0xff, b'\n'], line(2).into_bytes()].concat();
        let insert = "INSERT INTO nanopix_sync_possible_duplicates(reports) VALUES (?1)";
        dentaltid.conn.execute(insert, [reports]).unwrap();
        assert_eq!(listed(&dentaltid), [(1, SIMILAR, vec![4]), (2, SIMILAR, vec![4])]);
    }

    #[test]
    fn another_patient_under_a_reported_id_is_not_listed() {
        let (_dir, dentaltid) = sample_database();
        record(&dentaltid, &[(1, SIMILAR, &[2])]);
        dentaltid.conn.execute("UPDATE patients SET createdAt = '2025-06-02T10:00:00.000' WHERE id = 1", []).unwrap();
        assert_eq!(listed(&dentaltid), []);
    }

    /// Turns the sample's `patients` table into one without AUTOINCREMENT, as far as the sync can
    /// tell: no `sqlite_sequence` row counts its ids.
    fn without_autoincrement(dentaltid: &DentalTid) {
        dentaltid.conn.execute("DELETE FROM sqlite_sequence WHERE name = 'patients'", []).unwrap();
    }

    /// A `patients` table without AUTOINCREMENT gives a deleted last patient's id to the next
    /// one: the report must not name that other person as the reported patient's look-alike.
    #[test]
    fn another_patient_under_a_candidates_id_is_not_named() {
        let (_dir, dentaltid) = sample_database();
        without_autoincrement(&dentaltid);
        record(&dentaltid, &[(1, SIMILAR, &[2, 4]), (3, SIMILAR, &[2])]);
        let other_person = "DELETE FROM patients WHERE id = 2;
            INSERT INTO patients(id, name, familyName, age, healthState, diagnosis, treatment, createdAt)
            VALUES (2, 'Nadia', 'Kaci', 30, '', '', '', '2025-06-02T10:00:00.000')";
        dentaltid.conn.execute_batch(other_person).unwrap();
        assert_eq!(listed(&dentaltid), [(1, SIMILAR, vec![4])], "patient 2 is another person now");
    }

    /// Without AUTOINCREMENT too.
    #[test]
    fn a_candidate_deleted_before_its_report_was_kept_is_left_out() {
        let (_dir, dentaltid) = sample_database();
        without_autoincrement(&dentaltid);
        dentaltid.conn.execute("DELETE FROM patients WHERE id = 2", []).unwrap();
        record(&dentaltid, &[(1, SIMILAR, &[2, 4])]);
        let back = "INSERT INTO patients(id, name, familyName, age, healthState, diagnosis, treatment, createdAt)
            VALUES (2, 'Nadia', 'Kaci', 30, '', '', '', '2025-06-02T10:00:00.000')";
        dentaltid.conn.execute(back, []).unwrap();
        assert_eq!(listed(&dentaltid), [(1, SIMILAR, vec![4])]);
    }

    #[test]
    fn a_dismissal_hides_the_reports_it_covers_and_a_later_report_shows_again() {
        let (_dir, mut dentaltid) = sample_database();
        record(&dentaltid, &[(1, SIMILAR, &[2])]);
        record(&dentaltid, &[(1, DuplicateReason::AlreadyLinked, &[3])]);
        assert_eq!(listed(&dentaltid), [(1, DuplicateReason::AlreadyLinked, vec![3])], "the later report");
        assert!(dentaltid.dismiss_possible_duplicate(1).unwrap());
        assert!(!dentaltid.dismiss_possible_duplicate(1).unwrap(), "dismissed already");
        assert!(!dentaltid.dismiss_possible_duplicate(2).unwrap(), "never reported");
        assert_eq!(listed(&dentaltid), []);
        record(&dentaltid, &[(1, DuplicateReason::SwappedNames, &[4])]);
        assert_eq!(listed(&dentaltid), [(1, DuplicateReason::SwappedNames, vec![4])]);
    }

    #[test]
    fn a_report_that_is_not_listed_is_not_dismissed() {
        let (_dir, mut dentaltid) = sample_database();
        record(&dentaltid, &[(1, SIMILAR, &[99])]);
        assert_eq!(listed(&dentaltid), [], "its only candidate is gone");
        assert!(!dentaltid.dismiss_possible_duplicate(1).unwrap());
        let dismissed = "SELECT count(*) FROM nanopix_sync_dismissed_duplicates";
        assert_eq!(dentaltid.conn.query_row(dismissed, [], |row| row.get::<_, i64>(0)).unwrap(), 0);
    }

    #[test]
    fn the_search_for_one_patients_lines_passes_over_rows_that_only_name_it_otherwise() {
        let on_five = LinesOn::new(5);
        let line =
            |patient_id: i64, candidate: i64| format!("{patient_id} 20250121_152638 similar_names {candidate}@x y\n");
        assert!(on_five.may_be_in(line(5, 6).as_bytes()), "its line first");
        assert!(on_five.may_be_in([line(7, 6), line(5, 6)].concat().as_bytes()), "its line later");
        let elsewhere = [line(55, 5), line(15, 6), line(7, 5)].concat();
        assert!(!on_five.may_be_in(elsewhere.as_bytes()), "other patients' lines, naming it as a candidate");
    }
}
