//! The NanoPix row each link was made with, kept as the row's `created_datetime`. A NanoPix id
//! is the second a form was opened, so NanoPix can give a deleted patient's id to another person
//! (its clock went back): a row under a linked id created at another time is that person, not
//! the linked patient renamed.
//!
//! The rows of patients imported in a batch are kept in their import batch row
//! (`nanopix_sync_imports.created_times`), the others in `nanopix_sync_linked_rows`, whose
//! readable rows win over a batch's. A link's row is recorded in the transaction that makes the
//! link (an import, a match, an export), or by the first full reconcile after a first sync
//! (which reads no creation times) that sees it, for a link made without one (by an older
//! version, or by DentalTID itself). A row without a creation time is recorded as nothing, and
//! nothing tells it apart. Rows this library cannot read back count as not recorded.

use std::collections::BTreeSet;

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, Rows, params_from_iter};

use super::link_batches::{BatchPatients, batch_linked_row, batch_linked_rows};
use super::{DentalTid, ImportedUnder, PatientRef, PendingExport, RecordedLinks};
use crate::patient::{nanopix_datetime, parse_nanopix_datetime};
use crate::values::{IDS_PER_READ, integer_at, numbered_places, padded_with_null, text_at};
use crate::{Error, NanoPixId, Result};

/// Records the row patient `?1`'s link to NanoPix id `?2` was made with, created at `?3`.
const RECORD: &str = "INSERT OR REPLACE INTO nanopix_sync_linked_rows(patient_id, external_id, created)
    VALUES (?1, ?2, ?3)";

/// The creation time of the NanoPix row each patient's link was made with, and the NanoPix id
/// it was made to; a link to another id was made with another row.
#[derive(Debug, Default)]
pub struct LinkedRows(HashMap<i64, (NanoPixId, NaiveDateTime)>);

impl LinkedRows {
    /// When the row of patient `patient_id`'s link to `external_id` was created, if recorded.
    pub fn created(&self, patient_id: i64, external_id: NanoPixId) -> Option<NaiveDateTime> {
        self.0.get(&patient_id).filter(|(id, _)| *id == external_id).map(|(_, created)| *created)
    }
}

/// Whether a NanoPix row created at `created` is another person than the patients linked to its
/// id, whose links were made with rows created at `recorded`: each was recorded, and none at
/// that time. A row or a link without a time is never told apart.
pub fn is_another_person(created: Option<NaiveDateTime>, recorded: &[Option<NaiveDateTime>]) -> bool {
    created.is_some_and(|created| {
        !recorded.is_empty() && recorded.iter().all(|r| r.is_some_and(|r| !same_second(r, created)))
    })
}

/// Whether `a` and `b` fall in the same second: the rows are recorded to the second, as NanoPix
/// writes them, and a fraction another program wrote is dropped.
fn same_second(a: NaiveDateTime, b: NaiveDateTime) -> bool {
    a.and_utc().timestamp() == b.and_utc().timestamp()
}

/// The NanoPix ids whose row, created at the time `created` gives, is another person than the
/// patients holding the id (see [`is_another_person`]). `links` are every link, readable or not;
/// a patient of `patients` showing an id in its `external_id`, or exporting under it
/// (`pending`), counts as not recorded unless one of `links` is its link to that id.
pub fn other_people(
    links: &RecordedLinks,
    recorded: &LinkedRows,
    created: &HashMap<NanoPixId, NaiveDateTime>,
    (patients, pending): (&[PatientRef], &[PendingExport]),
) -> HashSet<NanoPixId> {
    let links: Vec<(i64, NanoPixId)> = links.pairs().collect();
    // The few ids a link was made to with another row than NanoPix holds, and their holders' rows.
    let mut rows_of: HashMap<NanoPixId, Vec<Option<NaiveDateTime>>> = HashMap::default();
    for &(patient_id, id) in &links {
        let made_with = recorded.created(patient_id, id);
        if made_with.is_some_and(|made_with| created.get(&id).is_some_and(|&now| !same_second(now, made_with))) {
            rows_of.insert(id, Vec::new());
        }
    }
    if rows_of.is_empty() {
        return HashSet::default();
    }
    let mut linked = HashSet::default();
    for &(patient_id, id) in &links {
        if let Some(rows) = rows_of.get_mut(&id) {
            rows.push(recorded.created(patient_id, id));
            linked.insert((patient_id, id));
        }
    }
    let shown = patients.iter().filter_map(|patient| Some((patient.id, patient.external_id?)));
    for (patient_id, id) in shown.chain(pending.iter().map(|export| (export.patient_id, export.external_id))) {
        if let Some(rows) = rows_of.get_mut(&id).filter(|_| !linked.contains(&(patient_id, id))) {
            rows.push(None);
        }
    }
    rows_of
        .into_iter()
        .filter(|(id, rows)| is_another_person(created.get(id).copied(), rows))
        .map(|(id, _)| id)
        .collect()
}

/// Records, in an open transaction, the rows `links` were made with: `(patient id, NanoPix id,
/// the row's creation time)`; a row without one is not recorded.
pub(super) fn record_linked_rows(
    conn: &Connection,
    links: impl IntoIterator<Item = (i64, NanoPixId, Option<NaiveDateTime>)>,
) -> rusqlite::Result<()> {
    let mut record = conn.prepare_cached(RECORD)?;
    for (patient_id, external_id, created) in links {
        if let Some(created) = created {
            record.execute((patient_id, external_id.to_string(), nanopix_datetime(created)))?;
        }
    }
    Ok(())
}

/// Adds the readable rows of `nanopix_sync_linked_rows` that `rows` gives (`patient_id,
/// external_id, created`) to `recorded`, by patient.
fn recorded_rows_into(
    mut rows: Rows<'_>,
    recorded: &mut HashMap<i64, (NanoPixId, NaiveDateTime)>,
) -> rusqlite::Result<()> {
    while let Some(row) = rows.next()? {
        if let (Some(patient_id), Some(linked_row)) = (integer_at(row, 0)?, linked_row_at(row, [1, 2])?) {
            recorded.insert(patient_id, linked_row);
        }
    }
    Ok(())
}

/// Reads a linked row's NanoPix id and creation time from the columns at `[external_id,
/// created]`; `None` when either is not one this library writes.
fn linked_row_at(row: &Row<'_>, [id, created]: [usize; 2]) -> rusqlite::Result<Option<(NanoPixId, NaiveDateTime)>> {
    let (Some(id), Some(created)) = (text_at(row, id)?, text_at(row, created)?) else { return Ok(None) };
    Ok(NanoPixId::parse(&id).ok().zip(parse_nanopix_datetime(&created)))
}

impl DentalTid {
    /// Every recorded row: those of `nanopix_sync_linked_rows`, and those of import batches for
    /// the other patients.
    pub fn linked_rows(&self) -> Result<LinkedRows> {
        let read = || {
            let mut statement =
                self.conn.prepare_cached("SELECT patient_id, external_id, created FROM nanopix_sync_linked_rows")?;
            let mut recorded = HashMap::default();
            recorded_rows_into(statement.query([])?, &mut recorded)?;
            for (patient_id, id, created) in batch_linked_rows(&self.conn, BatchPatients::Every)? {
                recorded.entry(patient_id).or_insert((id, created));
            }
            Ok(LinkedRows(recorded))
        };
        read().map_err(Error::db(&self.path, "reading the rows links were made with"))
    }

    /// The rows recorded for the links of `patients`, as [`DentalTid::linked_rows`] reads them:
    /// those of `nanopix_sync_linked_rows` a few reads of [`IDS_PER_READ`] patients each, and
    /// those of import batches, in one pass, for the patients left.
    pub(super) fn linked_rows_among(&self, patients: &BTreeSet<i64>) -> Result<LinkedRows> {
        let read = || {
            let places = numbered_places(1, IDS_PER_READ).join(", ");
            let sql = format!(
                "SELECT patient_id, external_id, created FROM nanopix_sync_linked_rows WHERE patient_id IN ({places})"
            );
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut recorded = HashMap::default();
            for some in patients.iter().copied().collect::<Vec<i64>>().chunks(IDS_PER_READ) {
                let named = padded_with_null(some.iter().copied().map(Value::Integer), IDS_PER_READ);
                recorded_rows_into(statement.query(params_from_iter(named))?, &mut recorded)?;
            }
            let left: BTreeSet<i64> = patients.iter().copied().filter(|id| !recorded.contains_key(id)).collect();
            if !left.is_empty() {
                for (patient_id, id, created) in batch_linked_rows(&self.conn, BatchPatients::Among(&left))? {
                    recorded.entry(patient_id).or_insert((id, created));
                }
            }
            Ok(LinkedRows(recorded))
        };
        read().map_err(Error::db(&self.path, "reading the rows links were made with"))
    }

    /// When the rows were created that the links to NanoPix id `external_id` were made with, one
    /// per patient showing it (see [`DentalTid::patients_showing`]) or with a link row to it
    /// (`None` where not recorded): see [`super::IdHolders::linked_rows_of`].
    pub fn linked_rows_of(&self, external_id: NanoPixId) -> Result<Vec<Option<NaiveDateTime>>> {
        Ok(self.id_holders(&[external_id], &ImportedUnder::default())?.linked_rows_of(external_id))
    }

    /// When the row was created that patient `patient_id`'s link to `external_id` was made with,
    /// if recorded.
    fn linked_row(&self, patient_id: i64, external_id: NanoPixId) -> Result<Option<NaiveDateTime>> {
        let read = || {
            let sql = "SELECT external_id, created FROM nanopix_sync_linked_rows WHERE patient_id = ?1";
            let mut statement = self.conn.prepare_cached(sql)?;
            let recorded = statement.query_row([patient_id], |row| linked_row_at(row, [0, 1])).optional()?.flatten();
            let recorded = match recorded {
                Some(recorded) => Some(recorded),
                None => batch_linked_row(&self.conn, patient_id)?,
            };
            Ok(recorded.filter(|(id, _)| *id == external_id).map(|(_, created)| created))
        };
        read().map_err(Error::db(&self.path, "reading the row a link was made with"))
    }

    /// Whether patient `patient_id`'s link to `external_id` was made with another person's row
    /// than NanoPix's, created at `row_created` (see [`is_another_person`]).
    pub fn linked_to_another_row(
        &self,
        patient_id: i64,
        external_id: NanoPixId,
        row_created: Option<NaiveDateTime>,
    ) -> Result<bool> {
        Ok(is_another_person(row_created, &[self.linked_row(patient_id, external_id)?]))
    }

    /// Records the rows `links` were made with, in one transaction (see [`record_linked_rows`]).
    pub fn record_linked_rows(&mut self, links: &[(i64, NanoPixId, Option<NaiveDateTime>)]) -> Result<()> {
        if links.iter().all(|(_, _, created)| created.is_none()) {
            return Ok(());
        }
        self.write("recording the rows links were made with", |tx| record_linked_rows(tx, links.iter().copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dentaltid::testing::{at as at_time, nanopix_id, new_patient, sample_database};
    use crate::dentaltid::{Link, UnreadableLink};

    fn at(text: &str) -> Option<NaiveDateTime> {
        parse_nanopix_datetime(text)
    }

    #[test]
    fn a_row_is_another_person_only_when_every_link_was_made_with_another_recorded_row() {
        let (first, second) = (at("2025-01-21 15:26:46"), at("2025-03-02 10:00:00"));
        assert!(is_another_person(second, &[first]));
        assert!(is_another_person(second, &[first, first]));
        assert!(!is_another_person(first, &[first]));
        assert!(!is_another_person(second, &[first, second]), "one link was made with it");
        assert!(!is_another_person(second, &[first, None]), "one link's row is not recorded");
        assert!(!is_another_person(None, &[first]), "a row without a creation time");
        assert!(!is_another_person(second, &[]), "no link");
        let fraction = at("2025-01-21 15:26:46.500");
        assert!(!is_another_person(fraction, &[first]), "a fraction of a second is not recorded");
    }

    #[test]
    fn an_id_holds_another_person_only_when_no_holder_was_linked_with_its_row() {
        let id = nanopix_id("20250121_152638");
        let (first, second) = (at("2025-01-21 15:26:46"), at("2025-03-02 10:00:00"));
        let link = |patient_id| Link {
            patient_id,
            external_id: id.to_string(),
            origin: Some(super::super::LinkOrigin::Imported),
            state: super::super::LinkState::Linked,
            synced_at: None,
        };
        let recorded =
            LinkedRows([(1, first), (2, second)].into_iter().filter_map(|(p, c)| Some((p, (id, c?)))).collect());
        let created: HashMap<NanoPixId, NaiveDateTime> = second.map(|second| (id, second)).into_iter().collect();
        let showing = |patient_id| PatientRef {
            id: patient_id,
            source: crate::patient::Source::NanoPix,
            external_id: Some(id),
            birth_date_unreadable: false,
        };
        let readable = |links: &[Link]| RecordedLinks { readable: links.to_vec(), unreadable: Vec::new() };
        let others = |links: &RecordedLinks, patients: &[PatientRef]| {
            other_people(links, &recorded, &created, (patients, &[])).contains(&id)
        };
        assert!(others(&readable(&[link(1)]), &[showing(1)]), "the one link was made with another row");
        assert!(!others(&readable(&[link(1), link(2)]), &[]), "the second link was made with this row");
        assert!(!others(&readable(&[link(1)]), &[showing(7)]), "patient 7 holds the id without a link");
        assert!(!others(&readable(&[link(3)]), &[]), "patient 3's row is not recorded");
        let archived = UnreadableLink {
            patient_id: Some(2),
            external_id: Some(id.to_string()),
            state: Some("archived".to_owned()),
        };
        let with_unreadable = RecordedLinks { unreadable: vec![archived], ..readable(&[link(1)]) };
        assert!(!others(&with_unreadable, &[]), "a link row that cannot be read was made with this row");
        let exporting = PendingExport { patient_id: 8, external_id: id, written: None };
        assert!(
            !other_people(&readable(&[link(1)]), &recorded, &created, (&[], &[exporting])).contains(&id),
            "an export in flight"
        );
    }

    #[test]
    fn recorded_rows_are_read_back_for_their_id_only() {
        let (_dir, mut dentaltid) = sample_database();
        let (id, other) = (nanopix_id("20250121_152638"), nanopix_id("20250122_091500"));
        let created = at("2025-01-21 15:26:46");
        dentaltid.conn.execute("UPDATE patients SET external_id = ?1 WHERE id IN (1, 2)", [id.to_string()]).unwrap();
        dentaltid.record_linked_rows(&[(1, id, created), (2, other, created), (3, id, None)]).unwrap();
        let recorded = dentaltid.linked_rows().unwrap();
        assert_eq!((recorded.created(1, id), recorded.created(2, id), recorded.created(3, id)), (created, None, None));
        assert_eq!((dentaltid.linked_row(1, id).unwrap(), dentaltid.linked_row(2, id).unwrap()), (created, None));
        let mut of_id = dentaltid.linked_rows_of(id).unwrap();
        of_id.sort();
        assert_eq!(of_id, [None, created], "patient 2's row was recorded for another id");
        dentaltid
            .conn
            .execute("UPDATE patients SET external_id = ' ' || ?1 || ' ' WHERE id = 4", [id.to_string()])
            .unwrap();
        dentaltid.record_linked_rows(&[(4, id, created)]).unwrap();
        let mut of_id = dentaltid.linked_rows_of(id).unwrap();
        of_id.sort();
        assert_eq!(of_id, [None, created, created], "patient 4 shows the id with blanks around it");
    }

    #[test]
    fn an_import_records_its_rows_in_its_batch_and_a_recorded_row_wins() {
        let (_dir, mut dentaltid) = sample_database();
        // Left by a patient 8 deleted before the id was used again, without a link row.
        dentaltid
            .conn
            .execute("INSERT INTO nanopix_sync_linked_rows VALUES (8, '20240603_090501', '2020-01-01 00:00:00')", [])
            .unwrap();
        let mut unrecorded = new_patient("B", at_time(2024, 6, 3, 9, 5), "20240603_090501");
        unrecorded.nanopix_created = None;
        let rows = [
            new_patient("A", at_time(2024, 6, 3, 9, 5), "20240603_090500"),
            unrecorded,
            new_patient("C", at_time(2024, 6, 3, 9, 5), "20240603_090502"),
            new_patient("D", at_time(2024, 6, 3, 9, 5), "20240603_090503"),
        ];
        let ids = dentaltid.import(&rows, at_time(2025, 1, 21, 12, 0)).unwrap();
        assert_eq!(ids, [7, 8, 9, 10]);
        let (a, b) = (nanopix_id("20240603_090500"), nanopix_id("20240603_090501"));
        let created = at("2024-06-03 09:05:00");
        let rows_left: i64 =
            dentaltid.conn.query_row("SELECT COUNT(*) FROM nanopix_sync_linked_rows", [], |row| row.get(0)).unwrap();
        assert_eq!(rows_left, 0, "one import batch row holds them; the stale row is gone");
        let recorded = dentaltid.linked_rows().unwrap();
        assert_eq!((recorded.created(7, a), recorded.created(8, b), recorded.created(7, b)), (created, None, None));
        assert_eq!((dentaltid.linked_row(7, a).unwrap(), dentaltid.linked_row(8, b).unwrap()), (created, None));
        let later = at("2024-06-03 09:06:00");
        dentaltid.record_linked_rows(&[(7, a, later), (8, b, later)]).unwrap();
        let recorded = dentaltid.linked_rows().unwrap();
        assert_eq!((recorded.created(7, a), recorded.created(8, b)), (later, later));
        assert_eq!((dentaltid.linked_row(7, a).unwrap(), dentaltid.linked_row(8, b).unwrap()), (later, later));
    }

    #[test]
    fn batch_entries_without_a_readable_creation_time_record_none() {
        let (_dir, dentaltid) = sample_database();
        dentaltid
            .conn
            .execute_batch(
                "INSERT INTO nanopix_sync_imports VALUES
                 (10, 10, '2025-01-21T12:00:00.000', '20240101_000010', NULL),
                 (20, 21, '2025-01-21T12:00:00.000', '20240101_00002020240101_000021', '2024-01-01 00:00:20'),
                 (30, 31, '2025-01-21T12:00:00.000', '20240101_00003020240101_000031',
                     'soon               2024-01-01 00:00:31')",
            )
            .unwrap();
        let recorded = dentaltid.linked_rows().unwrap();
        assert_eq!(recorded.0.len(), 1, "{recorded:?}");
        assert_eq!(recorded.created(31, nanopix_id("20240101_000031")), at("2024-01-01 00:00:31"));
        for (patient_id, text) in [(10, "20240101_000010"), (20, "20240101_000020"), (30, "20240101_000030")] {
            assert_eq!(dentaltid.linked_row(patient_id, nanopix_id(text)).unwrap(), None, "patient {patient_id}");
        }
        assert_eq!(dentaltid.linked_row(31, nanopix_id("20240101_000031")).unwrap(), at("2024-01-01 00:00:31"));
    }

    #[test]
    fn unreadable_rows_count_as_not_recorded() {
        let (_dir, dentaltid) = sample_database();
        dentaltid
            .conn
            .execute_batch(
                "INSERT INTO nanopix_sync_linked_rows VALUES (1, '../x', '2025-01-21 15:26:46'), (2, '20250121_152638', 'soon')",
            )
            .unwrap();
        let recorded = dentaltid.linked_rows().unwrap();
        assert_eq!(recorded.0.len(), 0);
    }
}
