//! Test databases for the DentalTID side, built in a `TempDir` from the read-only SQL fixtures.
//!
//! Fixtures are only read here, never opened as databases in place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use tempfile::TempDir;

use super::{DentalTid, Link, LinkOrigin, LinkState};

/// DentalTID's schema at version 24 (no `source` or `external_id`).
pub(super) const SCHEMA_V24: &str = "schema_v24.sql";

/// DentalTID's schema at version 29.
pub(crate) const SCHEMA_V29: &str = "schema_v29.sql";

/// The text of a file in the DentalTID fixtures folder.
fn fixture_sql(name: &str) -> String {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/dentaltid")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// Builds `dentaltid.db` in `dir` from `schema`, with the six sample patients when `samples`.
pub(crate) fn build_database(dir: &TempDir, schema: &str, samples: bool) -> PathBuf {
    let path = dir.path().join("dentaltid.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&fixture_sql(schema)).unwrap();
    if samples {
        conn.execute_batch(&fixture_sql("sample_patients.sql")).unwrap();
    }
    path
}

/// Opens (and migrates) a test database.
pub(super) fn open(path: &Path) -> DentalTid {
    DentalTid::open(path, Duration::from_secs(5)).unwrap()
}

/// A migrated v29 database with the sample patients.
pub(super) fn sample_database() -> (TempDir, DentalTid) {
    let dir = TempDir::new().unwrap();
    let path = build_database(&dir, SCHEMA_V29, true);
    let dentaltid = open(&path);
    (dir, dentaltid)
}

/// A local date and time.
pub(super) fn at(y: i32, m: u32, d: u32, hour: u32, minute: u32) -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(hour, minute, 0).unwrap()
}

/// A NanoPix id.
pub(super) fn nanopix_id(text: &str) -> crate::NanoPixId {
    crate::NanoPixId::parse(text).unwrap()
}

/// An imported patient as the engine would build it.
pub(super) fn new_patient(
    first_name: &str,
    created_at: chrono::NaiveDateTime,
    id: &str,
) -> crate::patient::NewDentalPatient {
    crate::patient::NewDentalPatient {
        first_name: first_name.to_owned(),
        last_name: "Nanopix".to_owned(),
        age: 40,
        date_of_birth: Some("1985-03-12T00:00:00.000".to_owned()),
        created_at: crate::patient::dart_timestamp(created_at),
        phone: "0550000000".to_owned(),
        external_id: nanopix_id(id),
        nanopix_created: Some(created_at),
    }
}

/// A NanoPix row as an export of Amina Benali, born 1985-03-12, writes it with `id`.
pub(super) fn exported_row(id: &str) -> crate::patient::NewNanoPixPatient {
    crate::patient::NewNanoPixPatient {
        id: nanopix_id(id),
        last_name: "Benali".to_owned(),
        first_name: "Amina".to_owned(),
        birth_date: chrono::NaiveDate::from_ymd_opt(1985, 3, 12),
        phone: None,
        created: at(2025, 1, 21, 15, 26),
    }
}

/// Links one patient, as [`link_outcome`] does, and checks that it was linked.
pub(super) fn link_one(
    dentaltid: &mut DentalTid,
    patient_id: i64,
    external_id: &str,
    synced_at: chrono::NaiveDateTime,
) {
    let outcome = link_outcome(dentaltid, patient_id, external_id, synced_at);
    assert!(matches!(outcome, super::LinkOutcome::Linked), "{outcome:?}");
}

/// Links one patient, matched on the names and birth date it has (or on nothing that fits,
/// when there is no such patient), through [`DentalTid::link_all`] and returns its outcome.
pub(super) fn link_outcome(
    dentaltid: &mut DentalTid,
    patient_id: i64,
    external_id: &str,
    synced_at: chrono::NaiveDateTime,
) -> super::LinkOutcome {
    let patient = dentaltid.patient(patient_id).unwrap();
    let (first_name, last_name, born) = patient.map_or_else(
        || (String::new(), String::new(), chrono::NaiveDate::MIN),
        |p| (p.first_name, p.last_name, p.date_of_birth.unwrap_or(chrono::NaiveDate::MIN)),
    );
    let key = crate::matching::MatchKey::of(&first_name, &last_name, born);
    let external_id = nanopix_id(external_id);
    let nanopix_created = Some(external_id.datetime());
    let link = crate::matching::MatchedLink { external_id, patient_id, first_name, last_name, key, nanopix_created };
    dentaltid.link_all(&[link], synced_at, (true, None)).unwrap().pop().unwrap()
}

/// Imports one patient per NanoPix id, all synced at 2025-01-21 12:00; returns their ids.
pub(super) fn import_ids(dentaltid: &mut DentalTid, external_ids: &[&str]) -> Vec<i64> {
    let rows: Vec<_> = external_ids.iter().map(|id| new_patient("Imported", at(2024, 6, 3, 9, 5), id)).collect();
    dentaltid.import(&rows, at(2025, 1, 21, 12, 0)).unwrap()
}

/// The link an import at 2025-01-21 12:00 gives `patient_id`.
pub(super) fn imported(patient_id: i64, external_id: &str) -> Link {
    let (origin, state, synced_at) = (Some(LinkOrigin::Imported), LinkState::Linked, Some(at(2025, 1, 21, 12, 0)));
    Link { patient_id, external_id: external_id.to_owned(), origin, state, synced_at }
}

/// Checks that `link` gives, for every patient of `patient_ids`, what `links` lists for it,
/// and that `links` lists each patient once, in order.
pub(super) fn assert_link_agrees_with_links(dentaltid: &DentalTid, patient_ids: std::ops::RangeInclusive<i64>) {
    let links = dentaltid.links().unwrap().readable;
    assert!(links.windows(2).all(|pair| pair[0].patient_id < pair[1].patient_id), "{links:?}");
    for patient_id in patient_ids {
        let listed = links.iter().find(|link| link.patient_id == patient_id);
        assert_eq!(dentaltid.link(patient_id).unwrap().as_ref(), listed, "patient {patient_id}");
    }
}
