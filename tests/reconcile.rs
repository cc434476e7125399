//! "Sync Now" end to end, on temporary copies of the real fixtures.

mod common;

use common::{
    Clinic, another_program, archive_link_then, drain, link_row, nanopix_ids_named, numbered_nanopix_id,
    reports_unreadable_link,
};
use nanopix_sync::{DeleteRequest, DuplicateReason, EventKind, LinkState, NanoPixSync, PatientFilter, Source};
use rusqlite::Connection;

type DentalRow = (i64, Option<String>, Option<String>, Option<i64>, Option<String>, Option<String>, Option<String>);

fn nanopix_rows_in_dentaltid(clinic: &Clinic) -> Vec<DentalRow> {
    clinic.dentaltid_rows(
        "SELECT id, name, familyName, age, createdAt, source, external_id FROM patients WHERE source = 'nanopix'",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
    )
}

#[test]
fn the_real_nanopix_patient_arrives_as_dentaltid_writes_patients() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.linked, report.errors), (1, 0, 0));

    let rows = nanopix_rows_in_dentaltid(&clinic);
    assert_eq!(rows.len(), 1);
    let (_, name, family, age, created, source, external) = rows[0].clone();
    assert_eq!(name.as_deref(), Some("FSFFS"));
    assert_eq!(family.as_deref(), Some("DSSSSFSFS"));
    assert_eq!(age, Some(0), "born 2025-01-21, synced 2025-01-22");
    assert_eq!(created.as_deref(), Some("2025-01-21T15:26:46.000"), "NanoPix's created_datetime in Dart's format");
    assert_eq!(source.as_deref(), Some("nanopix"));
    assert_eq!(external.as_deref(), Some("20250121_152638"));

    let non_null: Vec<i64> = clinic.dentaltid_rows(
        "SELECT COUNT(*) FROM patients WHERE source = 'nanopix' AND name IS NOT NULL AND familyName IS NOT NULL
           AND age IS NOT NULL AND healthState IS NOT NULL AND diagnosis IS NOT NULL AND treatment IS NOT NULL
           AND createdAt IS NOT NULL AND severity = 'EmergencySeverity.low' AND isEmergency = 0
           AND isBlacklisted = 0 AND dateOfBirth = '2025-01-21T00:00:00.000'",
        |r| r.get(0),
    );
    assert_eq!(non_null, vec![1], "every column Patient.fromJson reads is filled");
    let imported = drain(&sync).into_iter().find(|e| matches!(e.kind, EventKind::PatientImported { .. }));
    assert!(imported.is_some());
}

#[test]
fn both_schemas_migrate_and_keep_user_version() {
    for (schema, version) in [("v24", 24), ("v29", 29)] {
        let clinic = Clinic::new(schema);
        clinic.open().reconcile().unwrap();
        let user_version: Vec<i64> = clinic.dentaltid_rows("PRAGMA user_version", |r| r.get(0));
        assert_eq!(user_version, vec![version]);
        let internal: Vec<i64> =
            clinic.dentaltid_rows("SELECT COUNT(*) FROM patients WHERE source = 'internal'", |r| r.get(0));
        assert_eq!(internal, vec![6], "schema {schema}: the six sample patients are kept as internal");
    }
}

#[test]
fn pragmas_and_user_db_never_change() {
    let clinic = Clinic::new("v24");
    let user_db = std::fs::read(clinic.root.join("database/User.db3")).unwrap();
    let sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    sync.reconcile().unwrap();
    drop(sync);
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, vec![2], "the fixture patient and the exported one");

    let pragmas: Vec<(String, i64, i64, String)> = clinic.nanopix_rows(
        "SELECT (SELECT journal_mode FROM pragma_journal_mode), (SELECT user_version FROM pragma_user_version),
                (SELECT page_size FROM pragma_page_size), (SELECT encoding FROM pragma_encoding)",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    );
    assert_eq!(pragmas, vec![("delete".to_owned(), 1, 4096, "UTF-8".to_owned())]);
    let dental: Vec<(String, i64)> = clinic.dentaltid_rows(
        "SELECT (SELECT journal_mode FROM pragma_journal_mode), (SELECT user_version FROM pragma_user_version)",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(dental, vec![("delete".to_owned(), 24)]);
    assert_eq!(std::fs::read(clinic.root.join("database/User.db3")).unwrap(), user_db);
}

#[test]
fn a_second_reconcile_writes_nothing() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    clinic.add_nanopix("20250122_093000", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    sync.reconcile().unwrap();
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, vec![4], "three NanoPix patients and the exported one");
    let linked: Vec<i64> =
        clinic.dentaltid_rows("SELECT COUNT(*) FROM patients WHERE external_id IS NOT NULL", |r| r.get(0));
    assert_eq!(linked, vec![4], "two imported, one linked, one exported");

    let nanopix_before = std::fs::read(clinic.nanopix_db()).unwrap();
    let dentaltid_before = std::fs::read(&clinic.dentaltid).unwrap();
    let second = sync.reconcile().unwrap();
    assert_eq!((second.imported, second.linked, second.exported, second.removed, second.errors), (0, 0, 0, 0, 0));
    assert_eq!(std::fs::read(clinic.nanopix_db()).unwrap(), nanopix_before, "NanoPix.db3 is byte-identical");
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), dentaltid_before, "dentaltid.db is byte-identical");
}

/// A link row this version cannot read back (a state a newer version wrote) is skipped, and
/// adopting that patient's link again records nothing: a steady reconcile still writes nothing.
#[test]
fn a_reconcile_with_an_unreadable_link_row_writes_nothing() {
    let clinic = Clinic::new("v29");
    clinic.add_linkable_pairs(1);
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().linked, 1);
    let unreadable = "UPDATE nanopix_sync_links SET state = 'archived' WHERE origin = 'matched'";
    assert_eq!(another_program(&clinic.dentaltid).execute(unreadable, []).unwrap(), 1);
    sync.reconcile().unwrap();
    let dentaltid_before = std::fs::read(&clinic.dentaltid).unwrap();
    sync.reconcile().unwrap();
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), dentaltid_before);
}

fn reconcile_with(clinic: &Clinic) -> (NanoPixSync, Vec<EventKind>) {
    let sync = clinic.open();
    let events = reconciled_kinds(&sync);
    (sync, events)
}

/// What the next reconcile of `sync` sends, after the events waiting are drained.
fn reconciled_kinds(sync: &NanoPixSync) -> Vec<EventKind> {
    drain(sync);
    sync.reconcile().unwrap();
    drain(sync).into_iter().map(|e| e.kind).collect()
}

/// Yasmine Haddou, born 1985-03-12, in DentalTID; NanoPix patient `20250122_091500` with these
/// names and birth date, and twenty more, so that a later pass looks its few new patients up; a
/// handle with Live Sync on and no automatic work. Returns it with Yasmine's id.
fn yasmine_and_nanopix_patient(last: &str, first: &str, birth: &str) -> (Clinic, NanoPixSync, i64) {
    let clinic = Clinic::new("v29");
    let yasmine = clinic.add_dentaltid("Yasmine", "Haddou", Some("1985-03-12"));
    clinic.add_nanopix("20250122_091500", last, first, Some(birth));
    clinic.add_bulk_nanopix(20);
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    (clinic, sync, yasmine)
}

fn linked_to(events: &[EventKind], external: &str) -> Option<i64> {
    events.iter().find_map(|kind| match kind {
        EventKind::PatientLinked { patient_id, external_id, .. } if external_id == external => Some(*patient_id),
        _ => None,
    })
}

fn duplicate_reason(events: &[EventKind], external: &str) -> Option<(DuplicateReason, Vec<i64>)> {
    events.iter().find_map(|kind| match kind {
        EventKind::PossibleDuplicate { external_id, reason, candidates, .. } if external_id == external => {
            Some((*reason, candidates.iter().map(|c| c.patient_id).collect()))
        }
        _ => None,
    })
}

#[test]
fn exact_accented_and_arabic_names_link_to_the_existing_patient() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "BENALI", "amina", Some("1985-03-12"));
    clinic.add_nanopix("20250122_091600", "LEFEVRE", "Zoe", Some("1990-07-04"));
    clinic.add_nanopix("20250122_091700", "بن عليّ", "مُحَمَّد", Some("1977-11-30"));
    clinic.add_nanopix("20250122_091800", "Doe", "John", Some("1980-01-01"));
    let strauss = clinic.add_dentaltid("Johann", "Strauß", Some("1975-10-25"));
    clinic.add_nanopix("20250122_091900", "STRAUSS", "JOHANN", Some("1975-10-25"));
    let (sync, events) = reconcile_with(&clinic);

    let expected = [("20250122_091500", 1), ("20250122_091600", 2), ("20250122_091700", 3), ("20250122_091800", 4)];
    for (external, patient_id) in expected.into_iter().chain([("20250122_091900", strauss)]) {
        let (first_name, last_name) = clinic
            .dentaltid_rows(&format!("SELECT name, familyName FROM patients WHERE id = {patient_id}"), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })[0]
            .clone();
        let linked = EventKind::PatientLinked { patient_id, external_id: external.to_owned(), first_name, last_name };
        assert!(events.contains(&linked), "{external} is reported linked with its names as in DentalTID: {events:#?}");
        let info = sync.source_info(patient_id).unwrap();
        assert_eq!(info.external_id.as_deref(), Some(external));
        assert_eq!(info.source, Source::Internal, "a linked patient keeps its source");
        assert_eq!(info.link_state, Some(LinkState::Linked));
    }
    let total: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM patients", |r| r.get(0));
    assert_eq!(total, vec![8], "six samples, Strauß and the fixture patient: no second row for a linked patient");
}

/// The fixtures, with three NanoPix patients that look like sample DentalTID patients: names
/// swapped, and a birth date missing on either side.
fn clinic_with_near_misses() -> Clinic {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Amina", "Benali", Some("1985-03-12"));
    clinic.add_nanopix("20250122_091600", "Haddad", "Karim", Some("1970-06-01"));
    clinic.add_nanopix("20250122_091700", "O'Brien", "Sean", None);
    clinic
}

#[test]
fn near_misses_are_imported_and_reported() {
    let clinic = clinic_with_near_misses();
    let (_sync, events) = reconcile_with(&clinic);

    assert_eq!(duplicate_reason(&events, "20250122_091500"), Some((DuplicateReason::SwappedNames, vec![1])));
    assert_eq!(duplicate_reason(&events, "20250122_091600"), Some((DuplicateReason::MissingBirthDate, vec![6])));
    assert_eq!(duplicate_reason(&events, "20250122_091700"), Some((DuplicateReason::MissingBirthDate, vec![5])));
    let imported: Vec<i64> =
        clinic.dentaltid_rows("SELECT COUNT(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0));
    assert_eq!(imported, vec![4], "three near misses and the fixture patient are imported");
    assert!(events.iter().all(|e| !matches!(e, EventKind::PatientLinked { .. })));
}

/// A host that lists patients as their `patient_imported` comes, and marks them on
/// `possible_duplicate`, knows the patient a report names: the import is sent first, as an
/// export's `patient_exported` is sent before its report.
#[test]
fn a_possible_duplicate_follows_the_import_of_the_patient_it_names() {
    let clinic = clinic_with_near_misses();
    let (_sync, events) = reconcile_with(&clinic);
    let position = |wanted: &dyn Fn(&EventKind) -> bool| events.iter().position(wanted);
    for external in ["20250122_091500", "20250122_091600", "20250122_091700"] {
        let imported =
            position(&|kind| matches!(kind, EventKind::PatientImported { external_id, .. } if external_id == external));
        let reported = position(
            &|kind| matches!(kind, EventKind::PossibleDuplicate { external_id, .. } if external_id == external),
        );
        let (imported, reported) = (imported.expect("imported"), reported.expect("reported"));
        assert!(imported < reported, "{external} is announced before its report: {events:#?}");
    }
}

/// A possible duplicate as the review list shows it: the reported patient, its NanoPix id, the
/// reason and the candidates' ids.
type Listed = (i64, String, DuplicateReason, Vec<i64>);

fn review_list(sync: &NanoPixSync) -> Vec<Listed> {
    let listed = sync.possible_duplicates().unwrap().into_iter();
    listed
        .map(|d| (d.patient_id, d.external_id, d.reason, d.candidates.iter().map(|c| c.patient_id).collect()))
        .collect()
}

/// Every `possible_duplicate` report stays on the review list, across closing, until it is
/// dismissed, or until its patient or all its candidates are deleted; the list shows the
/// candidates as DentalTID holds them now.
#[test]
fn possible_duplicates_stay_listed_until_dismissed_or_deleted() {
    let clinic = clinic_with_near_misses();
    let (sync, events) = reconcile_with(&clinic);
    let reported: Vec<Listed> = events
        .iter()
        .filter_map(|kind| match kind {
            EventKind::PossibleDuplicate { external_id, patient_id, reason, candidates } => {
                Some((*patient_id, external_id.clone(), *reason, candidates.iter().map(|c| c.patient_id).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(reported.len(), 3, "{events:?}");
    assert_eq!(review_list(&sync), reported);
    drop(sync);
    let sync = clinic.open();
    assert_eq!(review_list(&sync), reported, "kept across closing");

    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute("UPDATE patients SET name = 'Corrected' WHERE id = ?1", [reported[0].3[0]]).unwrap();
    let listed = sync.possible_duplicates().unwrap();
    assert_eq!(listed[0].candidates[0].first_name, "Corrected", "the candidate as DentalTID holds it now");

    assert!(sync.dismiss_possible_duplicate(reported[0].0).unwrap());
    assert!(!sync.dismiss_possible_duplicate(reported[0].0).unwrap(), "dismissed already");
    assert_eq!(review_list(&sync), reported[1..]);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [reported[1].3[0]]).unwrap();
    assert_eq!(review_list(&sync), reported[2..], "its only candidate deleted");
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [reported[2].0]).unwrap();
    assert_eq!(review_list(&sync), [], "the reported patient deleted");
}

/// NanoPix's form starts with the day of registration as the birth date, and it is often left
/// so: a NanoPix patient born on the day NanoPix registered it, with the names of a DentalTID
/// patient born on another day, is imported and reported as a possible duplicate.
#[test]
fn a_nanopix_birth_date_left_at_the_registration_day_is_reported_as_missing() {
    let clinic = Clinic::new("v29");
    let yasmine = clinic.add_dentaltid("Yasmine", "Haddou", Some("1985-03-12"));
    clinic.add_nanopix("20250122_091500", "Haddou", "Yasmine", Some("2025-01-22"));
    let (_sync, events) = reconcile_with(&clinic);
    assert_eq!(duplicate_reason(&events, "20250122_091500"), Some((DuplicateReason::MissingBirthDate, vec![yasmine])));
}

/// A NanoPix patient saved with one name left out (empty, or NULL as an odd row has it), born the
/// day a DentalTID patient with that name was born, is imported and reported: by a first sync,
/// and by a later pass that looks its few new patients up by birth date.
#[test]
fn a_nanopix_patient_saved_without_a_first_name_is_reported_beside_the_patient_with_both() {
    let (clinic, sync, yasmine) = yasmine_and_nanopix_patient("Haddou", "", "1985-03-12");
    let first = reconciled_kinds(&sync);
    assert_eq!(duplicate_reason(&first, "20250122_091500"), Some((DuplicateReason::MissingName, vec![yasmine])));

    clinic.add_nanopix("20250122_091600", "Haddou", "", Some("1985-03-12"));
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute("UPDATE Patient SET first_name = NULL WHERE id = '20250122_091600'", []).unwrap();
    let later = reconciled_kinds(&sync);
    let imported = first.iter().find_map(|kind| match kind {
        EventKind::PatientImported { patient_id, external_id, .. } if external_id == "20250122_091500" => {
            Some(*patient_id)
        }
        _ => None,
    });
    let both = vec![yasmine, imported.expect("the first one was imported")];
    assert_eq!(duplicate_reason(&later, "20250122_091600"), Some((DuplicateReason::MissingName, both)));
}

/// Clinics type a placeholder where a name is unknown ("-", "?", "."): a name without a letter or
/// a digit is a name left out. Two unknown patients registered on one day, one in each program,
/// with that day as birth date, are not taken for one person; nor is a patient whose first name is
/// a placeholder linked to the DentalTID patient of the same placeholder, last name and birth
/// date: she is reported beside those with her last name born that day.
#[test]
fn a_name_of_punctuation_only_is_a_name_left_out_and_never_links() {
    let clinic = Clinic::new("v29");
    clinic.add_dentaltid("?", "?", Some("2025-01-22"));
    let benali = clinic.add_dentaltid("-", "Benali", Some("1985-03-12"));
    clinic.add_nanopix("20250122_091500", "?", "?", Some("2025-01-22"));
    clinic.add_nanopix("20250122_091600", "Benali", "-", Some("1985-03-12"));
    let (_sync, events) = reconcile_with(&clinic);
    assert_eq!(linked_to(&events, "20250122_091500"), None, "two unknown patients are not one person");
    assert_eq!(duplicate_reason(&events, "20250122_091500"), None, "a patient without any name is not reported");
    assert_eq!(linked_to(&events, "20250122_091600"), None, "a name left out never links");
    let amina = 1;
    assert_eq!(duplicate_reason(&events, "20250122_091600"), Some((DuplicateReason::MissingName, vec![amina, benali])));
    let imported: Vec<i64> =
        clinic.dentaltid_rows("SELECT COUNT(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0));
    assert_eq!(imported, vec![3], "both, and the fixture patient, are imported");
}

/// The same, for a patient a later pass finds among a few new ones, with the sync's indexes built.
#[test]
fn a_later_pass_reports_a_birth_date_left_at_the_registration_day_too() {
    let clinic = Clinic::new("v29");
    let yasmine = clinic.add_dentaltid("Yasmine", "Haddou", Some("1985-03-12"));
    // Enough NanoPix patients known that the pass looks up its few new ones by birth date.
    clinic.add_bulk_nanopix(20);
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_091500", "Haddou", "Yasmine", Some("2025-01-22"));
    let events = reconciled_kinds(&sync);
    assert_eq!(duplicate_reason(&events, "20250122_091500"), Some((DuplicateReason::MissingBirthDate, vec![yasmine])));
}

/// A NanoPix patient typed with first and last name swapped, and the birth date left at the
/// registration day, is reported beside the DentalTID patient: by a first sync, and by a later
/// pass that looks its few new patients up.
#[test]
fn swapped_names_with_a_birth_date_left_at_the_registration_day_are_reported() {
    let (clinic, sync, yasmine) = yasmine_and_nanopix_patient("Yasmine", "Haddou", "2025-01-22");
    let first = reconciled_kinds(&sync);
    assert_eq!(duplicate_reason(&first, "20250122_091500"), Some((DuplicateReason::SwappedNames, vec![yasmine])));

    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_091600", "Nadia", "Saidi", Some("2025-01-22"));
    let later = reconciled_kinds(&sync);
    assert_eq!(duplicate_reason(&later, "20250122_091600"), Some((DuplicateReason::SwappedNames, vec![nadia])));
}

#[test]
fn auto_link_off_imports_and_reports_exact_matches() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    let mut config = clinic.config();
    config.auto_link = false;
    let sync = NanoPixSync::open(config).unwrap();
    let events = reconciled_kinds(&sync);
    assert_eq!(duplicate_reason(&events, "20250122_091500"), Some((DuplicateReason::AutoLinkOff, vec![1])));
}

#[test]
fn a_vanished_nanopix_patient_is_reported_and_kept() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    drain(&sync);

    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.removed, report.imported), (1, 0));
    let removed = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::ExternalPatientRemoved { patient_id, missing, .. } => Some((patient_id, missing)),
        _ => None,
    });
    assert_eq!(removed, Some((patient_id, "folder".to_owned())));
    assert_eq!(sync.source_info(patient_id).unwrap().link_state, Some(LinkState::Missing));
    assert_eq!(sync.patients(PatientFilter::AllByExternal).unwrap().len(), 1, "the DentalTID patient stays");
    assert_eq!(sync.reconcile().unwrap().removed, 0, "reported once");
}

/// DentalTID's own NanoPix integration left a patient linked to a NanoPix patient deleted since:
/// the first reconcile, which records that link, reports the removal, and the next writes nothing.
#[test]
fn a_link_dentaltid_made_itself_to_a_vanished_nanopix_patient_is_reported_by_the_first_reconcile() {
    let clinic = Clinic::new("v29");
    let external_id = "20240101_101010";
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET source = 'nanopix', external_id = ?1 WHERE id = 3", [external_id])
        .unwrap();
    let sync = clinic.open_without_automatic_work();
    let first = sync.reconcile().unwrap();
    let removed = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::ExternalPatientRemoved { patient_id, external_id, missing } => {
            Some((patient_id, external_id, missing))
        }
        _ => None,
    });
    assert_eq!(removed, Some((3, external_id.to_owned(), "row_and_folder".to_owned())));
    assert_eq!((first.removed, sync.reconcile().unwrap().removed), (1, 0));
}

/// NanoPix wrote a name in a Windows code page (0xE8 for 'è') into its UTF-8 database: the
/// patient is imported as well as it can be, and a `sync_error` names it.
#[test]
fn a_nanopix_name_that_is_not_utf8_is_imported_and_reported() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Lef", "Zoe", Some("1990-07-04"));
    another_program(&clinic.nanopix_db())
        .execute("UPDATE Patient SET last_name = CAST(X'4C6566E8767265' AS TEXT) WHERE id = '20250122_091500'", [])
        .unwrap();
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    let imported: Vec<(i64, String)> = clinic
        .dentaltid_rows("SELECT id, familyName FROM patients WHERE external_id = '20250122_091500'", |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    assert_eq!(imported.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>(), ["Lef\u{FFFD}vre"]);
    let reported = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::SyncError { code, external_id, patient_id, .. } if code == "odd_name" => {
            Some((external_id, patient_id))
        }
        _ => None,
    });
    assert_eq!(reported, Some((Some("20250122_091500".to_owned()), Some(imported[0].0))));
    assert_eq!((report.imported, report.errors), (2, 1));
}

#[test]
fn a_folder_nanopix_has_not_made_yet_is_no_removal_until_it_was_there() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let folder = clinic.root.join("20250122_091500");
    std::fs::remove_dir(&folder).unwrap();
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().imported, 2, "the fixture patient and the new one");
    assert_eq!(sync.reconcile().unwrap().removed, 0, "the row saved, the folder not made yet");
    drop(sync);
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().removed, 0, "still waited for after a restart");
    std::fs::create_dir(&folder).unwrap();
    assert_eq!(sync.reconcile().unwrap().removed, 0);
    std::fs::remove_dir(&folder).unwrap();
    let report = sync.reconcile().unwrap();
    let removed = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::ExternalPatientRemoved { external_id, missing, .. } => Some((external_id, missing)),
        _ => None,
    });
    assert_eq!(report.removed, 1, "a folder it had is gone");
    assert_eq!(removed, Some(("20250122_091500".to_owned(), "folder".to_owned())));
}

/// NanoPix patients saved and deleted again before NanoPix made their folder (registered by
/// mistake, say): once a row is gone, no folder is awaited for it, so the list of awaited
/// folders, which every live pass looks through, does not grow with them.
#[test]
fn no_folder_is_awaited_once_its_row_is_gone() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nanopix = another_program(&clinic.nanopix_db());
    for i in 0..20 {
        let id = numbered_nanopix_id(i);
        clinic.add_nanopix_row(&id, "Mansouri", &format!("Yacine{i}"), Some("2001-05-19"));
        assert_eq!(sync.reconcile().unwrap().imported, 1, "{id}");
        nanopix.execute("DELETE FROM Patient WHERE id = ?1", [&id]).unwrap();
        assert_eq!(sync.reconcile().unwrap().removed, 1, "{id}");
    }
    let awaited: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM nanopix_sync_awaited_folders", |r| r.get(0));
    assert_eq!(awaited, [0]);
}

#[test]
fn a_folder_a_live_pass_saw_made_is_a_removal_once_gone() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    // NanoPix saves Yacine's row; the catch-up of an export (a live pass) imports him.
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let folder = clinic.root.join("20250122_091500");
    std::fs::remove_dir(&folder).unwrap();
    sync.export_patient(2).unwrap();
    // NanoPix makes his folder; the next live pass (for Lina) is the last to see it.
    std::fs::create_dir(&folder).unwrap();
    clinic.add_nanopix("20250122_093000", "Zerrouki", "Lina", Some("1985-03-12"));
    sync.export_patient(3).unwrap();
    std::fs::remove_dir(&folder).unwrap();
    drain(&sync);
    let report = sync.reconcile().unwrap();
    let removed = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::ExternalPatientRemoved { external_id, missing, .. } => Some((external_id, missing)),
        _ => None,
    });
    assert_eq!((report.imported, report.removed), (0, 1), "{removed:?}");
    assert_eq!(removed, Some(("20250122_091500".to_owned(), "folder".to_owned())));
}

/// A `dentaltid.db` the sync could only open read-only (a read-only attribute, a backup tool
/// holding it): reconciles fail until it is writable again, then the next one syncs, without
/// closing the handle.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_dentaltid_file_read_only_at_open_is_synced_once_it_is_writable_again() {
    let clinic = Clinic::new("v29");
    let sync = open_on_a_read_only_dentaltid(&clinic);
    assert!(sync.reconcile().is_err(), "a read-only file takes no import");
    set_dentaltid_mode(&clinic, 0o644);
    assert_eq!(sync.reconcile().unwrap().imported, 1);
}

/// Opens `clinic`, migrated, without automatic work on a `dentaltid.db` the sync can only read:
/// file modes bind this thread from then on.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn open_on_a_read_only_dentaltid(clinic: &Clinic) -> NanoPixSync {
    drop(clinic.open_without_automatic_work());
    common::obey_file_modes_on_this_thread();
    set_dentaltid_mode(clinic, 0o444);
    clinic.open_without_automatic_work()
}

/// Sets the file mode of `clinic`'s `dentaltid.db`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn set_dentaltid_mode(clinic: &Clinic, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&clinic.dentaltid, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A `dentaltid.db` the sync could only open read-only: switching Live Sync on fails while it
/// stays so, and works once it is writable again, without closing the handle; the next handle
/// finds it on.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_dentaltid_file_read_only_at_open_takes_the_switch_of_live_sync_once_it_is_writable_again() {
    let clinic = Clinic::new("v29");
    let sync = open_on_a_read_only_dentaltid(&clinic);
    assert!(sync.set_live_sync(true).is_err(), "a read-only file takes no switch");
    assert!(!sync.live_sync().unwrap());
    set_dentaltid_mode(&clinic, 0o644);
    sync.set_live_sync(true).unwrap();
    assert!(sync.live_sync().unwrap());
    drop(sync);
    assert!(clinic.open_without_automatic_work().live_sync().unwrap(), "stored in the file");
}

/// A handle that opened `dentaltid.db` read-only connects again once it is writable: the
/// catch-up of an export then still finds a patient deleted and added again since, and gives
/// it its NanoPix patient back.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn an_export_after_dentaltid_became_writable_still_sees_a_deletion() {
    use std::os::unix::fs::PermissionsExt;
    let clinic = Clinic::new("v29");
    assert_eq!(clinic.open_without_automatic_work().reconcile().unwrap().imported, 1);
    let set_mode = |mode| std::fs::set_permissions(&clinic.dentaltid, std::fs::Permissions::from_mode(mode)).unwrap();
    common::obey_file_modes_on_this_thread();
    set_mode(0o444);
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    set_mode(0o644);
    another_program(&clinic.dentaltid)
        .execute("DELETE FROM patients WHERE external_id = '20250121_152638'", [])
        .unwrap();
    let again = clinic.add_dentaltid("FSFFS", "DSSSSFSFS", Some("2025-01-21"));
    assert_eq!(sync.export_patient(again).unwrap().to_string(), "20250121_152638");
    assert_eq!(clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0)), [1]);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn a_patient_imported_by_a_reconcile_that_failed_later_still_waits_for_its_folder() {
    use std::os::unix::fs::PermissionsExt;
    let clinic = Clinic::new("v29");
    common::obey_file_modes_on_this_thread();
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    std::fs::remove_dir(clinic.root.join("20250122_091500")).unwrap();
    // The patient folders cannot be listed for a moment (a share dropping), after the imports.
    let set_mode = |mode| std::fs::set_permissions(&clinic.root, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o333);
    let failed = sync.reconcile();
    set_mode(0o755);
    assert!(failed.is_err(), "the folder listing failed: {failed:?}");
    assert_eq!(holders_per_external_id(&clinic).len(), 2, "Yacine was imported before it failed");
    drain(&sync);
    let report = sync.reconcile().unwrap();
    assert_eq!(report.removed, 0, "{:#?}", drain(&sync));
}

#[test]
fn delete_in_nanopix_refuses_while_a_patient_still_shows_the_id_padded() {
    let clinic = Clinic::new("v29");
    let sami = clinic.add_dentaltid("Sami", "Haddad", Some("1990-01-01"));
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET external_id = '20250122_091500 ' WHERE id = ?1", [sami])
        .unwrap();
    clinic.add_nanopix("20250122_091500", "Haddad", "Sami", Some("1990-01-01"));
    let sync = clinic.open();
    sync.reconcile().unwrap();
    // The NanoPix patient came in as a patient of its own; DentalTID deletes that one.
    let copy =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get::<_, i64>(0));
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [copy[0]]).unwrap();
    sync.reconcile().unwrap();
    let deleted = sync.delete_in_nanopix("20250122_091500");
    assert!(matches!(deleted, Err(nanopix_sync::Error::DeleteNotRequested(_))), "{deleted:?}");
    assert_eq!(
        clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE id = '20250122_091500'", |r| r.get::<_, i64>(0)),
        [1]
    );
}

/// Yacine Mansouri, typed in DentalTID without a birth date, and NanoPix's Yacine, whom the first
/// sync of the handle `open` gives imports as a patient of his own; then the possible duplicate
/// is settled in DentalTID: Yacine takes the NanoPix id and the imported copy is deleted.
/// Returns the handle, DentalTID as another program, and Yacine.
fn settled_duplicate(clinic: &Clinic, open: fn(&Clinic) -> NanoPixSync) -> (NanoPixSync, Connection, i64) {
    let yacine = clinic.add_dentaltid("Yacine", "Mansouri", None);
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = open(clinic);
    sync.reconcile().unwrap();
    let copy: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get(0));
    assert_ne!(copy, [yacine], "imported as a patient of its own");
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute("UPDATE patients SET external_id = '20250122_091500' WHERE id = ?1", [yacine]).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [copy[0]]).unwrap();
    (sync, dentaltid, yacine)
}

/// A possible duplicate settled in DentalTID (see [`settled_duplicate`]), which asks for no
/// delete. A later edit clears the patient's `external_id`; the link the sync recorded stays, so
/// the NanoPix patient is still that patient's and nothing deletes it.
#[test]
fn delete_in_nanopix_refuses_while_a_patient_keeps_a_link_to_the_id() {
    let clinic = Clinic::new("v29");
    let (sync, dentaltid, yacine) = settled_duplicate(&clinic, Clinic::open);
    sync.reconcile().unwrap();
    dentaltid.execute("UPDATE patients SET external_id = NULL WHERE id = ?1", [yacine]).unwrap();
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(yacine).unwrap().link_state, Some(LinkState::Linked));
    let deleted = sync.delete_in_nanopix("20250122_091500");
    assert!(matches!(deleted, Err(nanopix_sync::Error::DeleteNotRequested(_))), "{deleted:?}");
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE id = '20250122_091500'", |r| r.get(0));
    assert_eq!(rows, [1]);
}

/// A possible duplicate settled in DentalTID (see [`settled_duplicate`]), which asks for nothing.
/// Months later Yacine is deleted: the host is asked once to delete his NanoPix patient, for
/// Yacine, not a second time for the copy deleted long ago.
#[test]
fn deleting_the_patient_who_kept_a_settled_duplicates_nanopix_id_asks_once_for_him() {
    let clinic = Clinic::new("v29");
    let (sync, dentaltid, yacine) = settled_duplicate(&clinic, Clinic::open_without_automatic_work);
    let asked = |events: Vec<EventKind>| -> Vec<EventKind> {
        events.into_iter().filter(|kind| matches!(kind, EventKind::DeleteRequested { .. })).collect()
    };
    assert_eq!(asked(reconciled_kinds(&sync)), [], "Yacine holds the NanoPix patient");
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [yacine]).unwrap();
    let external_id = "20250122_091500".to_owned();
    assert_eq!(asked(reconciled_kinds(&sync)), [EventKind::DeleteRequested { patient_id: yacine, external_id }]);
    let listed = sync.delete_requests().unwrap();
    assert_eq!(listed.len(), 1, "one NanoPix patient: {listed:?}");
    assert!(listed[0].patient_ids.contains(&yacine), "the patient asked for is among those listed: {listed:?}");
    sync.delete_in_nanopix("20250122_091500").unwrap();
}

/// Two DentalTID patients show one NanoPix id (an older version wrote such duplicates): deleting
/// one of them asks for no delete while the other still holds the id.
#[test]
fn deleting_one_of_two_patients_holding_a_nanopix_id_asks_for_no_delete() {
    let clinic = Clinic::new("v29");
    let (sync, dentaltid, holders) = two_holders_of_one_nanopix_id(&clinic);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [holders[0]]).unwrap();
    drain(&sync);
    sync.reconcile().unwrap();
    assert_eq!(delete_requests(&sync), []);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [holders[1]]).unwrap();
    sync.reconcile().unwrap();
    let asked: Vec<i64> = delete_requests(&sync).into_iter().map(|(patient_id, _)| patient_id).collect();
    assert_eq!(asked, [holders[1]], "once neither holds it, the host is asked once, for the patient deleted last");
}

/// NanoPix's Yacine and two DentalTID patients showing his NanoPix id (an older version wrote such
/// duplicates), reconciled once by the handle it returns, with DentalTID as another program and
/// the two patients.
fn two_holders_of_one_nanopix_id(clinic: &Clinic) -> (NanoPixSync, Connection, [i64; 2]) {
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let holders = [(); 2].map(|()| clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19")));
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute("UPDATE patients SET external_id = '20250122_091500' WHERE id IN (?1, ?2)", holders).unwrap();
    let sync = clinic.open();
    sync.reconcile().unwrap();
    (sync, dentaltid, holders)
}

/// The `delete_requested` events `sync` made since its events were last drained: each one's
/// patient and NanoPix id.
fn delete_requests(sync: &NanoPixSync) -> Vec<(i64, String)> {
    drain(sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::DeleteRequested { patient_id, external_id } => Some((patient_id, external_id)),
            _ => None,
        })
        .collect()
}

/// Two DentalTID patients show one NanoPix id (an older version wrote such duplicates), and the
/// clinic deletes both before the next "Sync Now": the host is asked once to delete the NanoPix
/// patient, and deleting it as asked succeeds.
#[test]
fn deleting_both_patients_holding_a_nanopix_id_before_a_reconcile_asks_once() {
    let clinic = Clinic::new("v29");
    let (sync, dentaltid, holders) = two_holders_of_one_nanopix_id(&clinic);
    drain(&sync);
    dentaltid.execute("DELETE FROM patients WHERE id IN (?1, ?2)", holders).unwrap();
    sync.reconcile().unwrap();
    let asked: Vec<String> = delete_requests(&sync).into_iter().map(|(_, external_id)| external_id).collect();
    assert_eq!(asked, ["20250122_091500"], "one NanoPix patient, one question for the host");
    sync.delete_in_nanopix("20250122_091500").unwrap();
}

#[test]
fn deleting_a_linked_patient_in_dentaltid_asks_and_never_deletes() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    rusqlite::Connection::open(&clinic.dentaltid)
        .unwrap()
        .execute("DELETE FROM patients WHERE id = ?1", [patient_id])
        .unwrap();
    drain(&sync);

    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 0, "the NanoPix patient is not imported again");
    let asked = drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::DeleteRequested { patient_id, external_id } => Some((patient_id, external_id)),
        _ => None,
    });
    assert_eq!(asked, Some((patient_id, "20250121_152638".to_owned())));
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, vec![1], "NanoPix keeps the patient");
    let error = sync.delete_in_nanopix("20250121_152638").unwrap_err();
    assert_eq!(error.code(), "not_empty", "it holds an image");
}

/// Support staff edit the time a first sync imported NanoPix's patients at into something the sync
/// cannot read: the time only dates the links, so a patient of that import deleted in DentalTID
/// still asks for her delete, and her NanoPix patient is not imported back.
#[test]
fn a_patient_whose_import_time_was_edited_unreadable_is_asked_about_not_imported_back() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(4);
    let sync = clinic.open_without_automatic_work();
    assert_eq!(sync.reconcile().unwrap().imported, 5, "the fixture patient and four more, in one batch");
    let dentaltid = another_program(&clinic.dentaltid);
    assert_eq!(dentaltid.execute("UPDATE nanopix_sync_imports SET synced_at = 'last Tuesday'", []).unwrap(), 1);
    dentaltid.execute("DELETE FROM patients WHERE external_id = '20230101_000002'", []).unwrap();
    drain(&sync);

    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 0, "the deleted patient is not imported back");
    let asked: Vec<String> = delete_requests(&sync).into_iter().map(|(_, external_id)| external_id).collect();
    assert_eq!(asked, ["20230101_000002"]);
    let synced_at = sync.patients(PatientFilter::AllByExternal).unwrap().into_iter().map(|p| sync.source_info(p.id));
    assert!(synced_at.map(|info| info.unwrap().synced_at).all(|at| at.is_none()), "no time is made up");
}

/// Support staff edit how an exported patient's link came to be into a word the sync never writes:
/// it only describes the link, so the patient deleted in DentalTID still asks for her delete, and
/// her NanoPix patient is not imported back.
#[test]
fn a_patient_whose_link_origin_was_edited_unreadable_is_asked_about_not_imported_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let external_id = sync.export_patient(nadia).unwrap().to_string();
    let dentaltid = another_program(&clinic.dentaltid);
    let edit = "UPDATE nanopix_sync_links SET origin = 'manual' WHERE patient_id = ?1";
    assert_eq!(dentaltid.execute(edit, [nadia]).unwrap(), 1);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [nadia]).unwrap();
    drain(&sync);

    assert_eq!(sync.reconcile().unwrap().imported, 0, "Nadia is not imported back");
    assert_eq!(delete_requests(&sync), [(nadia, external_id)]);
}

/// Support staff edit the state of an imported patient's link into a word the sync never writes
/// (or a newer version wrote it), and the patient is deleted in DentalTID. The sync cannot tell
/// what the row asks for, so it leaves the row as it is and respects it, as a live pass does:
/// her NanoPix patient is not imported back, no delete is asked for, and every "Sync Now"
/// reports the row for support staff.
#[test]
fn a_deleted_patient_whose_link_state_was_edited_unreadable_is_not_imported_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    let row = archive_link_then(&clinic.dentaltid, patient_id, "DELETE FROM patients WHERE id = ?1");
    drain(&sync);

    for reconcile in ["the reconcile after the edit", "the next one"] {
        let report = sync.reconcile().unwrap();
        let events = kinds(&sync);
        assert_eq!(report.imported, 0, "{reconcile} imports her back: {events:#?}");
        assert!(!events.iter().any(|e| matches!(e, EventKind::DeleteRequested { .. })), "{reconcile}: {events:#?}");
        assert!(events.iter().any(|e| reports_unreadable_link(e, patient_id)), "{reconcile}: {events:#?}");
    }
    assert_eq!(link_row(&another_program(&clinic.dentaltid), patient_id), row, "the row is left as it is");
}

/// Support staff clear an imported patient's `external_id` and edit her link's state into a word
/// the sync never writes; NanoPix then registers the same person again. The link the sync cannot
/// read still links her: the new NanoPix patient is imported apart and reported, never linked to
/// her, both when a full reconcile matches every unknown NanoPix patient at once and when it looks
/// its few new patients up (`more` NanoPix patients beside them).
#[test]
fn a_patient_whose_link_state_was_edited_unreadable_is_never_linked_to_another_nanopix_patient() {
    for more in [0, 20] {
        let clinic = Clinic::new("v29");
        let sync = clinic.open_without_automatic_work();
        sync.reconcile().unwrap();
        clinic.add_bulk_nanopix(more);
        sync.reconcile().unwrap();
        let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
        let clear = "UPDATE patients SET external_id = NULL WHERE id = ?1";
        let row = archive_link_then(&clinic.dentaltid, patient_id, clear);
        // The fixture patient, registered again in NanoPix.
        clinic.add_nanopix("20250122_093000", "DSSSSFSFS", "FSFFS", Some("2025-01-21"));
        drain(&sync);

        sync.reconcile().unwrap();
        let events = kinds(&sync);
        assert_eq!(linked_to(&events, "20250122_093000"), None, "{more} more: {events:#?}");
        assert!(imported(&events, "20250122_093000"), "{more} more: {events:#?}");
        assert!(!imported(&events, "20250121_152638"), "{more} more: {events:#?}");
        assert_eq!(
            duplicate_reason(&events, "20250122_093000"),
            Some((DuplicateReason::AlreadyLinked, vec![patient_id]))
        );
        assert_eq!(link_row(&another_program(&clinic.dentaltid), patient_id), row, "{more} more");
    }
}

/// An exported patient whose `external_id` DentalTID cleared, and whose link's state support
/// staff edited into a word the sync never writes, is still linked: neither `export_patient` nor
/// `export_existing` gives her a second NanoPix patient.
#[test]
fn a_patient_whose_link_state_was_edited_unreadable_is_never_exported_again() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let external_id = sync.export_patient(nadia).unwrap().to_string();
    archive_link_then(&clinic.dentaltid, nadia, "UPDATE patients SET external_id = NULL WHERE id = ?1");

    let again = sync.export_patient(nadia);
    let refused =
        matches!(&again, Err(nanopix_sync::Error::AlreadyLinked { external_id: id, .. }) if *id == external_id);
    assert!(refused, "{again:?}");
    sync.export_existing().unwrap();
    assert_eq!(nanopix_ids_named(&clinic, "Nadia", "Saidi"), [external_id]);
}

/// A possible duplicate settled in DentalTID (see [`settled_duplicate`]), which asks for no
/// delete. Later DentalTID clears Yacine's `external_id` and support staff edit his link's state
/// into a word the sync never writes: the link still holds the NanoPix patient for Yacine, who is
/// still there, so the delete the copy's deletion asked for does not stand.
#[test]
fn delete_in_nanopix_refuses_while_a_patient_keeps_an_unreadable_link_to_the_id() {
    let clinic = Clinic::new("v29");
    let (sync, _dentaltid, yacine) = settled_duplicate(&clinic, Clinic::open);
    sync.reconcile().unwrap();
    archive_link_then(&clinic.dentaltid, yacine, "UPDATE patients SET external_id = NULL WHERE id = ?1");
    sync.reconcile().unwrap();

    assert_eq!(sync.delete_requests().unwrap(), []);
    let deleted = sync.delete_in_nanopix("20250122_091500");
    assert!(matches!(deleted, Err(nanopix_sync::Error::DeleteNotRequested(_))), "{deleted:?}");
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE id = '20250122_091500'", |r| r.get(0));
    assert_eq!(rows, [1]);
}

/// The sync's indexes on `patients`, by name.
fn own_indexes(clinic: &Clinic) -> Vec<String> {
    let sql =
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'nanopix_sync_patients_%' ORDER BY name";
    clinic.dentaltid_rows(sql, |r| r.get(0))
}

/// Each delete request is checked by its NanoPix id in `external_id`. A handle that syncs on
/// demand has no index on it after its first sync; announcing delete requests builds the sync's
/// indexes first, so that a bulk delete in DentalTID (thousands of patients) is not checked with
/// two scans of every patient per request.
#[test]
fn announcing_delete_requests_builds_the_indexes_their_checks_use() {
    let clinic = Clinic::new("v29");
    let (sync, _) = reconcile_with(&clinic);
    assert_eq!(own_indexes(&clinic), Vec::<String>::new(), "a first sync on demand builds none");
    let patient_id = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [patient_id]).unwrap();
    let events = reconciled_kinds(&sync);
    assert!(events.iter().any(|kind| matches!(kind, EventKind::DeleteRequested { .. })), "{events:#?}");
    assert_eq!(own_indexes(&clinic), ["nanopix_sync_patients_date_of_birth", "nanopix_sync_patients_external_id"]);
}

#[test]
fn delete_in_nanopix_deletes_only_what_dentaltid_asked_for() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open();
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_101500", "Haddad", "Rym", None);
    let refusal = |id: &str| sync.delete_in_nanopix(id).map_err(|error| error.code());
    assert_eq!(refusal("20250122_091500"), Err("delete_not_requested"), "its DentalTID patient still exists");
    assert_eq!(refusal("20250122_101500"), Err("delete_not_requested"), "the sync never linked it");

    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE external_id = '20250122_091500'", []).unwrap();
    sync.reconcile().unwrap();
    let asked = drain(&sync).into_iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. }));
    assert!(asked, "the deletion in DentalTID is reported");
    let restored = clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19"));
    dentaltid.execute("UPDATE patients SET external_id = '20250122_091500' WHERE id = ?1", [restored]).unwrap();
    assert_eq!(refusal("20250122_091500"), Err("delete_not_requested"), "a DentalTID patient holds it again");

    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [restored]).unwrap();
    assert_eq!(refusal("20250122_091500"), Ok(()));
    let left: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    assert_eq!(left, vec!["20250121_152638", "20250122_101500"]);
    assert!(!clinic.root.join("20250122_091500").exists(), "the empty folder is removed");
    assert!(clinic.root.join("20250122_101500").is_dir());
}

/// A host that missed a `delete_requested` (it was closed before reading it, or another program
/// using the library synced the deletion) finds the request listed, after closing too, until
/// the NanoPix patient is deleted; a patient holding the id again takes it off the list.
#[test]
fn a_delete_request_the_host_missed_stays_listed_until_the_nanopix_patient_is_deleted() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let mut missed = clinic.open();
    missed.reconcile().unwrap();
    assert_eq!(missed.delete_requests().unwrap(), [], "nobody was deleted");
    let dentaltid = another_program(&clinic.dentaltid);
    let yacine: i64 =
        dentaltid.query_row("SELECT id FROM patients WHERE external_id = '20250122_091500'", [], |r| r.get(0)).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [yacine]).unwrap();
    missed.reconcile().unwrap();
    missed.close();

    let sync = clinic.open();
    let asked = DeleteRequest { external_id: "20250122_091500".to_owned(), patient_ids: vec![yacine] };
    assert_eq!(sync.delete_requests().unwrap(), std::slice::from_ref(&asked), "the fixture patient is still linked");
    let restored = clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19"));
    dentaltid.execute("UPDATE patients SET external_id = '20250122_091500' WHERE id = ?1", [restored]).unwrap();
    assert_eq!(sync.delete_requests().unwrap(), [], "a DentalTID patient holds the id again");
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [restored]).unwrap();
    assert_eq!(sync.delete_requests().unwrap(), [asked]);
    sync.delete_in_nanopix("20250122_091500").unwrap();
    assert_eq!(sync.delete_requests().unwrap(), [], "NanoPix's patient is deleted");
}

/// The user keeps in NanoPix a patient deleted in DentalTID: the host dismisses the request, which
/// stays off the list after closing, until another DentalTID patient linked to the NanoPix
/// patient is deleted. The delete is still carried out if the host asks for it later.
#[test]
fn a_dismissed_delete_request_stays_off_the_list_until_another_holder_is_deleted() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let mut first = clinic.open();
    first.reconcile().unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute("DELETE FROM patients WHERE external_id = '20250122_091500'", []).unwrap();
    first.reconcile().unwrap();
    assert_eq!(first.delete_requests().unwrap().len(), 1);
    assert!(!first.dismiss_delete_request("20250121_152638").unwrap(), "nothing asked for the fixture patient");
    assert!(first.dismiss_delete_request("20250122_091500").unwrap(), "the user keeps Yacine in NanoPix");
    assert!(!first.dismiss_delete_request("20250122_091500").unwrap(), "dismissed already");
    first.close();

    let sync = clinic.open();
    assert_eq!(sync.delete_requests().unwrap(), [], "dismissed, also after closing");
    let again = clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19"));
    sync.export_patient(again).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [again]).unwrap();
    sync.reconcile().unwrap();
    let listed = sync.delete_requests().unwrap();
    let asked: Vec<i64> = listed.iter().flat_map(|request| request.patient_ids.clone()).collect();
    assert_eq!(asked, [again], "the patient deleted since is asked about: {listed:?}");
    sync.delete_in_nanopix("20250122_091500").unwrap();
}

/// DentalTID refuses for a moment to note a delete request sent (a write of its own held the file
/// too long), so the request is to be sent again after the next `open`; the user answered it
/// meanwhile by keeping the patient in NanoPix, and the host dismissed it: it is not sent again.
#[test]
fn a_dismissed_delete_request_is_not_sent_again_after_the_next_open() {
    let clinic = Clinic::new("v29");
    let mut sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid
        .execute_batch(
            "CREATE TRIGGER dentaltid_busy BEFORE DELETE ON nanopix_sync_unannounced_deletes
                 BEGIN SELECT RAISE(ABORT, 'database is busy'); END;
             DELETE FROM patients WHERE external_id = '20250121_152638';",
        )
        .unwrap();
    sync.reconcile().unwrap();
    let sent = drain(&sync).into_iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. }));
    assert!(sent, "the fixture patient's delete request");
    dentaltid.execute_batch("DROP TRIGGER dentaltid_busy").unwrap();
    assert!(sync.dismiss_delete_request("20250121_152638").unwrap(), "the user keeps the fixture patient");
    sync.close();

    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let asked: Vec<EventKind> =
        drain(&sync).into_iter().map(|e| e.kind).filter(|e| matches!(e, EventKind::DeleteRequested { .. })).collect();
    assert_eq!(asked, [], "the request dismissed is not sent again");
    assert_eq!(sync.delete_requests().unwrap(), []);
}

/// The share that holds NanoPix's folder is unplugged while the handle is open, in a clinic
/// where no linked patient was ever deleted: a host listing the delete requests gets none, not
/// an error, since no request waits to be judged against NanoPix.
#[cfg(unix)]
#[test]
fn no_delete_request_is_listed_while_nanopix_is_unplugged() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    clinic.unplug_nanopix();
    assert_eq!(sync.delete_requests().map_err(|error| error.to_string()), Ok(Vec::new()));
}

/// As above, in a clinic whose only delete request the user answered by keeping the patient in
/// NanoPix: a request dismissed leaves nothing to judge either, so the list is empty, not an
/// error, while the share is unplugged.
#[cfg(unix)]
#[test]
fn no_delete_request_is_listed_while_nanopix_is_unplugged_once_every_request_was_dismissed() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    another_program(&clinic.dentaltid)
        .execute("DELETE FROM patients WHERE external_id = '20250121_152638'", [])
        .unwrap();
    sync.reconcile().unwrap();
    assert!(sync.dismiss_delete_request("20250121_152638").unwrap(), "the user keeps the fixture patient");
    clinic.unplug_nanopix();
    assert_eq!(sync.delete_requests().map_err(|error| error.to_string()), Ok(Vec::new()));
}

/// A `delete_in_nanopix` cut short after deleting the row (the process killed, or the folder
/// held open by another program) leaves the folder: asked again, it removes the folder, if
/// empty, instead of refusing for good.
#[test]
fn delete_in_nanopix_asked_again_ends_a_delete_cut_short_after_the_row() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open();
    sync.reconcile().unwrap();
    another_program(&clinic.dentaltid)
        .execute("DELETE FROM patients WHERE external_id = '20250122_091500'", [])
        .unwrap();
    sync.reconcile().unwrap();
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute("DELETE FROM Patient WHERE id = '20250122_091500'", []).unwrap();
    let folder = clinic.root.join("20250122_091500");
    std::fs::write(folder.join("note.txt"), "kept").unwrap();
    assert_eq!(sync.delete_in_nanopix("20250122_091500").map_err(|e| e.code()), Err("not_empty"));
    std::fs::remove_file(folder.join("note.txt")).unwrap();
    assert_eq!(sync.delete_in_nanopix("20250122_091500").map_err(|e| e.code()), Ok(()));
    assert!(!folder.exists());
    assert_eq!(sync.delete_in_nanopix("20250122_091500").map_err(|e| e.code()), Err("no_such_patient"));
}

/// Has NanoPix save Bob's row (its folder not made yet), then runs the pass that `export_patient`
/// of `exporting` starts while a DentalTID trigger rolls back every link: the pass imports Bob,
/// then fails on the link of a NanoPix patient the test added to match a DentalTID one.
fn fail_a_pass_after_importing_bob(clinic: &Clinic, sync: &NanoPixSync, exporting: i64) {
    rusqlite::Connection::open(clinic.nanopix_db())
        .unwrap()
        .execute("INSERT INTO Patient(id, last_name, first_name) VALUES ('20250122_093000', 'Ray', 'Bob')", [])
        .unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    let refuse =
        "CREATE TRIGGER refuse_link BEFORE UPDATE OF external_id ON patients BEGIN SELECT RAISE(ROLLBACK, 'no'); END;";
    dentaltid.execute_batch(refuse).unwrap();
    assert!(sync.export_patient(exporting).is_err(), "the pass fails on the link");
    let bob: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_093000'", |r| r.get(0));
    assert_eq!(bob.len(), 1, "Bob was imported before the failure");
    dentaltid.execute_batch("DROP TRIGGER refuse_link").unwrap();
}

/// A pass that imported a NanoPix patient whose folder is not made yet, then failed (a link a
/// DentalTID trigger rolls back), is tried again: the folder is still awaited, not removed.
#[test]
fn a_pass_that_failed_after_importing_still_awaits_the_folders_of_its_imports() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    clinic.add_dentaltid("Ann", "Lee", Some("1990-01-01"));
    let eve = clinic.add_dentaltid("Eve", "Roe", Some("1970-01-01"));
    clinic.add_nanopix("20250122_093100", "Lee", "Ann", Some("1990-01-01"));
    fail_a_pass_after_importing_bob(&clinic, &sync, eve);
    sync.export_patient(eve).unwrap();
    assert_eq!(sync.reconcile().unwrap().removed, 0);
}

/// The clock ran an hour fast while Ann was linked (her folder there and seen), then was set
/// back. A pass then imports Bob, whose folder NanoPix has not made yet, and fails on a link.
/// Ann's folder is removed: the reconcile that settles the failed pass still reports it, and
/// awaits only Bob's folder.
#[test]
fn a_clock_set_back_hides_no_folder_removal_of_a_link_made_before() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    clinic.clock.advance(chrono::Duration::hours(1));
    let ann = clinic.add_dentaltid("Ann", "Lee", Some("1990-01-01"));
    clinic.add_nanopix("20250122_093100", "Lee", "Ann", Some("1990-01-01"));
    assert_eq!(sync.reconcile().unwrap().linked, 1);
    clinic.clock.set(common::clinic_morning());
    let eve = clinic.add_dentaltid("Eve", "Roe", Some("1970-01-01"));
    clinic.add_dentaltid("Cy", "Moe", Some("1991-01-01"));
    clinic.add_nanopix("20250122_093200", "Moe", "Cy", Some("1991-01-01"));
    fail_a_pass_after_importing_bob(&clinic, &sync, eve);
    std::fs::remove_dir(clinic.root.join("20250122_093100")).unwrap();
    drain(&sync);
    assert_eq!(sync.reconcile().unwrap().removed, 1);
    let removed: Vec<i64> = drain(&sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::ExternalPatientRemoved { patient_id, .. } => Some(patient_id),
            _ => None,
        })
        .collect();
    assert_eq!(removed, [ann]);
}

#[test]
fn today_filters_follow_the_clock_and_createdat() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let names = |filter| -> Vec<String> { sync.patients(filter).unwrap().into_iter().map(|p| p.first_name).collect() };
    assert_eq!(names(PatientFilter::TodayByExternal), vec!["Yacine"], "the fixture patient was created yesterday");
    assert_eq!(names(PatientFilter::AllByExternal).len(), 2);
    assert_eq!(names(PatientFilter::Today), vec!["Yacine"]);
    assert_eq!(names(PatientFilter::All).len(), 8);
    clinic.clock.advance(chrono::Duration::days(1));
    assert!(names(PatientFilter::Today).is_empty());
}

/// A bug that panics during a call (here in the clock the host gave, asked the time for 'Today')
/// must tell the caller, and the `sync_error` event, what went wrong: the panic's own message is
/// all support staff have to go on. The handle goes on working.
#[test]
fn a_call_that_panics_fails_with_the_panics_message_and_the_handle_goes_on() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    drain(&sync);
    clock.arm(Box::new(|| panic!("the clock's battery is flat")));

    let message = sync.patients(PatientFilter::Today).expect_err("the call panicked").to_string();
    assert!(message.contains("the clock's battery is flat"), "the caller got: {message}");
    let reported: Vec<String> = drain(&sync)
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::SyncError { code, message, .. } if code == "internal" => Some(message),
            _ => None,
        })
        .collect();
    assert!(reported.iter().any(|message| message.contains("the clock's battery is flat")), "{reported:?}");
    assert!(sync.patients(PatientFilter::Today).is_ok(), "the handle goes on");
}

#[test]
fn odd_nanopix_rows_are_skipped_or_imported_as_well_as_possible() {
    let clinic = Clinic::new("v29");
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute_batch(
        "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime) VALUES
           ('../../escape', 'Evil', 'Path', '1990-01-01', '2025-01-22 09:00:00'),
           ('20251399_000000', 'Bad', 'Date', NULL, NULL),
           ('20250122_080000', '', NULL, '31/12/1990', 'yesterday'),
           ('20250122_081000', 'Good', 'Row', '1990-01-01', '2025-01-22 08:10:05');",
    )
    .unwrap();
    std::fs::create_dir(clinic.root.join("20250122_080000")).unwrap();
    std::fs::create_dir(clinic.root.join("20250122_081000")).unwrap();
    drop(conn);
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 3, "the fixture, the odd-but-valid row and the good row");
    assert_eq!(report.errors, 2, "the two rows with invalid ids");
    let created: Vec<String> = clinic.dentaltid_rows(
        "SELECT createdAt FROM patients WHERE external_id = '20250122_080000' AND age = 0 AND dateOfBirth IS NULL",
        |r| r.get(0),
    );
    assert_eq!(created, vec!["2025-01-22T08:00:00.000"], "an unreadable created_datetime falls back to the id's time");
    assert!(!clinic.dir.path().join("escape").exists());
}

/// An `odd_row` names NanoPix's database file, and the row's id only when it has one: a NULL id
/// is no id, so `external_id` is null rather than empty text.
#[test]
fn an_odd_nanopix_row_is_reported_with_its_file_and_its_id_only_when_it_has_one() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(&format!(
        "{PLAIN_PK_PATIENT} INSERT INTO Patient(pk, id, last_name) VALUES (1, NULL, 'Noid'), (2, 'not-an-id', 'Badid');"
    ));
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let odd: Vec<(Option<String>, Option<String>)> = drain(&sync)
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::SyncError { code, external_id, path, .. } if code == "odd_row" => Some((external_id, path)),
            _ => None,
        })
        .collect();
    let database = Some(clinic.nanopix_db().display().to_string());
    assert_eq!(odd, [(None, database.clone()), (Some("not-an-id".into()), database)]);
}

/// A DentalTID `dateOfBirth` that starts with a digit but is no date the sync can read leaves its
/// patient out of matching, so NanoPix's patient of the same person is imported apart: the
/// reconcile reports it as an `odd_row` naming the patient and DentalTID's file.
#[test]
fn a_dentaltid_birth_date_the_sync_cannot_read_is_reported_with_its_patient() {
    let clinic = Clinic::new("v29");
    let lina = clinic.add_dentaltid("Lina", "Saidi", None);
    let unreadable = "UPDATE patients SET dateOfBirth = '12/03/1985' WHERE id = ?1";
    another_program(&clinic.dentaltid).execute(unreadable, [lina]).unwrap();
    clinic.add_nanopix("20250122_080000", "Saidi", "Lina", Some("1985-03-12"));
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    let odd: Vec<(Option<i64>, Option<String>)> = drain(&sync)
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::SyncError { code, patient_id, path, .. } if code == "odd_row" => Some((patient_id, path)),
            _ => None,
        })
        .collect();
    assert_eq!(odd, [(Some(lina), Some(clinic.dentaltid.display().to_string()))]);
    assert_eq!(report.errors, 1);
}

/// A `created_datetime` whose year has more than four digits cannot be written in DentalTID's
/// form: the patient gets the time of its id, never a year cut to its last four digits (which
/// would put it in 'Today By External' here).
#[test]
fn a_nanopix_creation_time_past_year_9999_falls_back_to_the_ids_time() {
    let clinic = Clinic::new("v29");
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute(
        "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime)
         VALUES ('20240510_090000', 'Farfuture', 'Ann', '1990-04-04', '+12025-01-22 10:00:00')",
        [],
    )
    .unwrap();
    std::fs::create_dir(clinic.root.join("20240510_090000")).unwrap();
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let created: Vec<String> =
        clinic.dentaltid_rows("SELECT createdAt FROM patients WHERE external_id = '20240510_090000'", |r| r.get(0));
    assert_eq!(created, ["2024-05-10T09:00:00.000"]);
}

/// A NanoPix `birthdate` with a sign before its year (`+1985-03-12`) is not a date as NanoPix
/// writes one: it is read as no birth date, never as another day. Read as the 1st of March, it
/// linked this NanoPix patient to the DentalTID patient of the same names born that day, who is
/// another person.
#[test]
fn a_nanopix_birth_date_with_a_signed_year_is_never_read_as_another_day() {
    let clinic = Clinic::new("v29");
    let born_on_the_first = clinic.add_dentaltid("Amina", "Benali", Some("1985-03-01"));
    clinic.add_nanopix("20250122_081000", "Benali", "Amina", Some("+1985-03-12"));
    let sync = clinic.open_without_automatic_work();
    assert_eq!(sync.reconcile().unwrap().linked, 0, "no patient is born on the day the text names");
    let holders: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_081000'", |r| r.get(0));
    assert_eq!(holders.len(), 1);
    assert_ne!(holders, [born_on_the_first], "linked to another person");
    let born: Vec<Option<String>> =
        clinic.dentaltid_rows("SELECT dateOfBirth FROM patients WHERE external_id = '20250122_081000'", |r| r.get(0));
    assert_eq!(born, [None], "no made-up birth date");
}

/// A NanoPix `birthdate` is read the same with or without a time after it: from 1850 on, both
/// give the patient that birth date (and the age it makes), as the README promises.
#[test]
fn a_nanopix_birth_date_with_a_time_after_it_is_read_as_without_from_1850_on() {
    let clinic = Clinic::new("v29");
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute_batch(
        "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime) VALUES
           ('20250122_081000', 'Plain', 'Date', '1895-06-01', '2025-01-22 08:10:05'),
           ('20250122_082000', 'Timed', 'Date', '1895-06-01 00:00:00', '2025-01-22 08:20:05');",
    )
    .unwrap();
    drop(conn);
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let born: Vec<(String, Option<String>, i64)> = clinic.dentaltid_rows(
        "SELECT familyName, dateOfBirth, age FROM patients WHERE familyName IN ('Plain', 'Timed') ORDER BY familyName",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    let dated = |name: &str| (name.to_owned(), Some("1895-06-01T00:00:00.000".to_owned()), 129);
    assert_eq!(born, [dated("Plain"), dated("Timed")]);
}

/// A `Patient` table whose `id` is not UNIQUE, holding the fixture patient and a second row
/// with its id.
const REPEATED_ID: &str = "CREATE TABLE Patient (pk INTEGER PRIMARY KEY, id VARCHAR(250), last_name VARCHAR(250),
                                                 first_name VARCHAR(250), birthdate DATE, created_datetime DATETIME);
    INSERT INTO Patient(pk, id, last_name, first_name) VALUES (1, '20250121_152638', 'DSSSSFSFS', 'FSFFS');
    INSERT INTO Patient(pk, id, last_name, first_name) VALUES (2, '20250121_152638', 'Other', 'Person');
    INSERT INTO Patient(pk, id, last_name, first_name) VALUES (3, '20250301_100000', 'Plain', 'Patient');";

/// A `NanoPix.db3` whose ids are not unique holds two people under one id: the first is
/// imported, the second reported as an odd row. A delete asked for the first would delete both
/// rows, so it is refused and both stay, with their folder.
#[test]
fn a_delete_of_a_nanopix_id_two_rows_hold_is_refused_and_deletes_nothing() {
    let clinic = Clinic::new("v29");
    let shared = "20240301_090000";
    clinic.replace_nanopix(&REPEATED_ID.replace("20250121_152638", shared));
    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    std::fs::create_dir(clinic.root.join(shared)).unwrap();
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute("DELETE FROM patients WHERE external_id = ?1", [shared]).unwrap();
    drain(&sync);
    sync.reconcile().unwrap();
    let asked = drain(&sync)
        .into_iter()
        .any(|event| matches!(event.kind, EventKind::DeleteRequested { ref external_id, .. } if external_id == shared));
    assert!(asked, "the delete of the first row's patient is asked for");
    let refused = sync.delete_in_nanopix(shared);
    assert!(matches!(refused, Err(nanopix_sync::Error::NanoPixIdShared { rows: 2, .. })), "{refused:?}");
    let rows: Vec<String> =
        clinic.nanopix_rows(&format!("SELECT last_name FROM Patient WHERE id = '{shared}' ORDER BY pk"), |r| r.get(0));
    assert_eq!(rows, ["DSSSSFSFS", "Other"], "both rows stay");
    assert!(clinic.root.join(shared).is_dir(), "the folder stays");
}

/// SQLite lets a row's `pk` be the smallest 64-bit integer; that row is read and imported
/// like any other, by the first sync and by the checks of later passes.
#[test]
fn a_nanopix_row_at_the_smallest_pk_is_imported() {
    let clinic = Clinic::new("v29");
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix
        .execute(
            "INSERT INTO Patient(pk, id, last_name, first_name, birthdate, created_datetime)
             VALUES (-9223372036854775808, '20240101_101012', 'Cherif', 'Dalia', '1988-04-02', '2024-01-01 10:10:20')",
            [],
        )
        .unwrap();
    std::fs::create_dir(clinic.root.join("20240101_101012")).unwrap();
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (2, 0), "the fixture's patient and Dalia");
    let dalia: Vec<String> =
        clinic.dentaltid_rows("SELECT name FROM patients WHERE external_id = '20240101_101012'", |r| r.get(0));
    assert_eq!(dalia, ["Dalia"]);
    let again = sync.reconcile().unwrap();
    assert_eq!((again.imported, again.removed, again.errors), (0, 0, 0), "nothing more to do");
}

/// A `Patient` table whose `pk` is a plain column, not `INTEGER PRIMARY KEY`: it may hold NULLs.
const PLAIN_PK_PATIENT: &str = "CREATE TABLE Patient (pk INTEGER, id VARCHAR(250), last_name VARCHAR(250),
    first_name VARCHAR(250), sex, birthdate DATE, phone, created_datetime DATETIME);";

/// The inserts of `count` patients named `last_name`, with numbered ids, at `pk`s from `first_pk` on.
fn numbered_patients(count: u32, first_pk: i64, last_name: &str) -> String {
    let insert = |i: u32| {
        let (pk, id) = (first_pk + i64::from(i), numbered_nanopix_id(i));
        format!("INSERT INTO Patient(pk, id, last_name, first_name) VALUES ({pk}, '{id}', '{last_name}', 'P{i}');")
    };
    (0..count).map(insert).collect()
}

/// Rows without an integer `pk` (NULL sorts first, fractions between integers) fill the first
/// pages here: the patients after them, at negative `pk`s, are still imported.
#[test]
fn patients_after_full_pages_of_rows_without_an_integer_pk_are_imported() {
    let clinic = Clinic::new("v29");
    let mut sql = format!("{PLAIN_PK_PATIENT} BEGIN;");
    for i in 0..10_000 {
        let pk = if i % 2 == 0 { "NULL".to_owned() } else { format!("{}.5", i - 20_000) };
        sql.push_str(&format!(
            "INSERT INTO Patient(pk, id, last_name, first_name) VALUES ({pk}, 'no id', 'Odd', 'Row');"
        ));
    }
    sql.push_str(&numbered_patients(600, -1_000, "Negative"));
    sql.push_str("COMMIT;");
    clinic.replace_nanopix(&sql);
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    let imported =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE familyName = 'Negative'", |r| r.get::<_, i64>(0));
    assert_eq!(imported, [600], "report: {report:?}");
}

/// A `pk` that is a plain column holds anything (NULL, a fraction, text, repeats): rows are read
/// in `rowid` order instead, and every patient is imported.
#[test]
fn a_patient_table_whose_pk_is_a_plain_column_is_read_in_rowid_order() {
    let clinic = Clinic::new("v29");
    let pks = ["NULL", "0", "-9", "2.5", "'x'", "7", "7"];
    let rows: String = pks
        .iter()
        .enumerate()
        .map(|(i, pk)| {
            let id = numbered_nanopix_id(1_000 + u32::try_from(i).unwrap());
            format!("INSERT INTO Patient(pk, id, last_name, first_name) VALUES ({pk}, '{id}', 'Plain', 'P{i}');")
        })
        .collect();
    clinic.replace_nanopix(&format!("{PLAIN_PK_PATIENT} {rows} {}", numbered_patients(20, 100, "N")));
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (27, 0), "{report:?}");
    assert_eq!(sync.reconcile().unwrap().imported, 0, "nothing more to do");
}

/// A `Patient` table without `pk`, read page by page by `rowid`: every patient is imported.
#[test]
fn a_patient_table_without_pk_has_every_patient_imported() {
    let clinic = Clinic::new("v29");
    let rows: String = (0..3)
        .map(|i| {
            let id = numbered_nanopix_id(i);
            format!("INSERT INTO Patient(id, last_name, first_name) VALUES ('{id}', 'Nopk', 'P{i}');")
        })
        .collect();
    clinic.replace_nanopix(&format!(
        "CREATE TABLE Patient (id VARCHAR(250), last_name VARCHAR(250), first_name VARCHAR(250)); {rows}"
    ));
    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (3, 0), "{report:?}");
}

/// `(external_id, holders)` of every NanoPix id DentalTID holds.
fn holders_per_external_id(clinic: &Clinic) -> Vec<(String, i64)> {
    clinic.dentaltid_rows(
        "SELECT external_id, count(*) FROM patients WHERE external_id IS NOT NULL GROUP BY external_id ORDER BY 1",
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[test]
fn a_second_nanopix_row_with_an_id_already_used_is_reported_and_never_imported() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(REPEATED_ID);
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (2, 1));
    let odd = drain(&sync).into_iter().find_map(|event| match event.kind {
        EventKind::SyncError { code, message, .. } if code == "odd_row" => Some(message),
        _ => None,
    });
    assert!(odd.is_some_and(|message| message.contains("pk 2") && message.contains("pk 1")), "the second row named");
    let kept: Vec<String> =
        clinic.dentaltid_rows("SELECT familyName FROM patients WHERE external_id = '20250121_152638'", |r| r.get(0));
    assert_eq!(kept, ["DSSSSFSFS"], "the first row is the patient");
    let rows = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    rows.execute("INSERT INTO Patient(pk, id, last_name) VALUES (4, '20250301_100000', 'Again')", []).unwrap();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (0, 2), "both repeats reported, none imported");
    assert_eq!(holders_per_external_id(&clinic), [("20250121_152638".into(), 1), ("20250301_100000".into(), 1)]);
}

#[test]
fn two_new_nanopix_rows_with_one_id_in_a_live_pass_give_one_patient() {
    let clinic = Clinic::new("v29");
    clinic.replace_nanopix(REPEATED_ID);
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let rows = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    rows.execute_batch(
        "INSERT INTO Patient(pk, id, last_name, first_name) VALUES (4, '20250302_100000', 'New', 'One');
         INSERT INTO Patient(pk, id, last_name, first_name) VALUES (5, '20250302_100000', 'New', 'Two');",
    )
    .unwrap();
    // An export first catches up with NanoPix's new rows in a live pass.
    sync.export_patient(1).unwrap();
    let new: Vec<String> =
        clinic.dentaltid_rows("SELECT name FROM patients WHERE external_id = '20250302_100000'", |r| r.get(0));
    assert_eq!(new, ["One"]);
}

#[test]
fn the_sync_indexes_come_with_live_sync_and_survive_a_bulk_import() {
    let clinic = Clinic::new("v29");
    let indexes = || -> Vec<String> {
        clinic.dentaltid_rows(
            "SELECT name FROM sqlite_master
             WHERE type = 'index' AND tbl_name = 'patients' AND name LIKE 'nanopix_sync_%' ORDER BY name",
            |r| r.get(0),
        )
    };
    let both = ["nanopix_sync_patients_date_of_birth", "nanopix_sync_patients_external_id"];
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().imported, 1, "the fixture's patient");
    assert!(indexes().is_empty(), "a sync on demand needs no index");
    drain(&sync);
    let events = sync.events();
    sync.set_live_sync(true).unwrap();
    let first_live_reconcile = events.iter().find(|event| matches!(event.kind, EventKind::Reconciled(_)));
    assert!(first_live_reconcile.is_some());
    sync.set_live_sync(false).unwrap();
    drop(sync);
    assert_eq!(indexes(), both, "the first reconcile with Live Sync on builds them");
    clinic.add_bulk_nanopix(12_000);
    let report = clinic.open().reconcile().unwrap();
    assert_eq!(report.imported, 12_000);
    assert_eq!(indexes(), both);
}

#[test]
fn a_reconcile_cut_off_from_dentaltid_midway_leaves_each_patient_imported_once() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(15_000);
    let sync = clinic.open();
    let events = sync.events();
    let dentaltid = clinic.dentaltid.clone();
    // Once the first page of imports is committed, another program takes DentalTID's write
    // lock and keeps it until the reconcile gave up.
    let locker = std::thread::spawn(move || {
        let imported = events.iter().find(|event| matches!(event.kind, EventKind::PatientImported { .. }));
        assert!(imported.is_some(), "the first page was imported");
        let conn = another_program(&dentaltid);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        conn
    });
    let cut_off = sync.reconcile();
    drop(locker.join().unwrap());
    assert!(matches!(cut_off, Err(nanopix_sync::Error::Busy { .. })), "{cut_off:?}");
    let imported_before: i64 =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0))[0];
    assert!(imported_before > 0 && imported_before < 15_001, "{imported_before} imported before the cut");
    let rest = sync.reconcile().unwrap();
    assert_eq!(imported_before + rest.imported as i64, 15_001, "the fixture's patient and the bulk");
    let (rows, distinct): (i64, i64) = clinic
        .dentaltid_rows("SELECT count(*), count(DISTINCT external_id) FROM patients WHERE source = 'nanopix'", |r| {
            Ok((r.get(0)?, r.get(1)?))
        })[0];
    assert_eq!((rows, distinct), (15_001, 15_001));
}

#[test]
fn every_imported_patient_is_written_before_it_is_reported() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(12_000);
    let sync = clinic.open();
    let events = sync.events();
    let dentaltid = clinic.dentaltid.clone();
    // Another program looks each reported patient up as soon as the event arrives: pages share
    // a transaction, so a patient reported before its commit would not be there yet.
    let checker = std::thread::spawn(move || {
        let conn = another_program(&dentaltid);
        let mut lookup = conn.prepare("SELECT count(*) FROM patients WHERE id = ?1 AND external_id = ?2").unwrap();
        let (mut reported, mut missing) = (0, Vec::new());
        for event in events.iter() {
            match event.kind {
                EventKind::PatientImported { patient_id, external_id, .. } => {
                    reported += 1;
                    if lookup.query_row((patient_id, &external_id), |r| r.get::<_, i64>(0)).unwrap() != 1 {
                        missing.push(external_id);
                    }
                }
                EventKind::Reconciled(_) => break,
                _ => {}
            }
        }
        (reported, missing)
    });
    assert_eq!(sync.reconcile().unwrap().imported, 12_001);
    let (reported, missing) = checker.join().unwrap();
    assert_eq!((reported, missing), (12_001, Vec::<String>::new()));
}

#[test]
fn a_sync_now_after_a_few_new_nanopix_patients_links_or_imports_just_those() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(200);
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().imported, 201);
    let sara = clinic.add_dentaltid("Sara", "Amrani", Some("1985-02-03"));
    clinic.add_nanopix("20250301_093000", "AMRANI", "Sara", Some("1985-02-03"));
    clinic.add_nanopix("20250301_094500", "Doe", "Zoe", Some("1990-05-06"));
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.linked), (1, 1));
    let holders: Vec<(Option<String>, i64)> = clinic.dentaltid_rows(
        "SELECT external_id, count(*) FROM patients WHERE external_id IN ('20250301_093000', '20250301_094500')
         GROUP BY external_id ORDER BY external_id",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(holders, [(Some("20250301_093000".into()), 1), (Some("20250301_094500".into()), 1)]);
    let linked: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250301_093000'", |r| r.get(0));
    assert_eq!(linked, [sara]);
}

#[test]
fn thousands_of_links_are_written_and_reported_each_once() {
    let clinic = Clinic::new("v29");
    let count: u32 = 4_321;
    clinic.add_linkable_pairs(count);
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.linked, report.imported, report.errors), (u64::from(count), 1, 0), "the fixture patient is new");
    let linked_events = drain(&sync).iter().filter(|e| matches!(e.kind, EventKind::PatientLinked { .. })).count();
    assert_eq!(linked_events, usize::try_from(count).unwrap());
    let linked: Vec<i64> = clinic.dentaltid_rows(
        "SELECT COUNT(DISTINCT external_id) FROM patients WHERE source = 'internal' AND external_id IS NOT NULL",
        |r| r.get(0),
    );
    assert_eq!(linked, vec![i64::from(count)]);
    assert_eq!(sync.reconcile().unwrap().linked, 0, "nothing left to link");
}

#[test]
fn links_dentaltid_made_itself_are_kept_and_the_few_new_patients_matched_on_a_first_sync() {
    let clinic = Clinic::new("v29");
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    for i in 0..30 {
        let id = numbered_nanopix_id(i);
        clinic.add_nanopix(&id, &format!("Family{i}"), &format!("Given{i}"), Some("1980-05-17"));
        let patient_id = clinic.add_dentaltid(&format!("Given{i}"), &format!("Family{i}"), Some("1980-05-17"));
        dentaltid.execute("UPDATE patients SET external_id = ?1 WHERE id = ?2", (&id, patient_id)).unwrap();
    }
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    clinic.add_nanopix("20250122_091500", "Cherif", "Nadia", Some("1992-02-14"));

    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!(
        (report.linked, report.imported, report.errors),
        (1, 1, 0),
        "Nadia linked, the fixture patient imported"
    );
    assert_eq!(sync.source_info(nadia).unwrap().external_id.as_deref(), Some("20250122_091500"));
    let kept: Vec<i64> = clinic.dentaltid_rows(
        "SELECT COUNT(*) FROM patients p JOIN nanopix_sync_links l ON l.patient_id = p.id
         WHERE l.external_id = p.external_id AND l.origin != 'imported'",
        |r| r.get(0),
    );
    assert_eq!(kept, vec![31], "DentalTID's own 30 links are recorded as they are, and Nadia's");
    let again = sync.reconcile().unwrap();
    assert_eq!((again.linked, again.imported), (0, 0));
}

fn kinds(sync: &NanoPixSync) -> Vec<EventKind> {
    drain(sync).into_iter().map(|e| e.kind).collect()
}

fn imported(events: &[EventKind], external: &str) -> bool {
    events.iter().any(|kind| matches!(kind, EventKind::PatientImported { external_id, .. } if external_id == external))
}

#[test]
fn a_patient_whose_external_id_dentaltid_cleared_is_never_linked_to_another_nanopix_patient() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    let sync = clinic.open();
    sync.reconcile().unwrap();
    assert_eq!(linked_to(&kinds(&sync), "20250122_091500"), Some(1));
    // DentalTID saves patient 1 from a stale model; then NanoPix registers Amina again.
    another_program(&clinic.dentaltid).execute("UPDATE patients SET external_id = NULL WHERE id = 1", []).unwrap();
    clinic.add_nanopix("20250122_093000", "BENALI", "Amina", Some("1985-03-12"));
    sync.reconcile().unwrap();
    let second = kinds(&sync);
    sync.reconcile().unwrap();
    let third = kinds(&sync);
    assert_eq!(linked_to(&second, "20250122_093000"), None, "patient 1 keeps its link");
    assert_eq!(duplicate_reason(&second, "20250122_093000"), Some((DuplicateReason::AlreadyLinked, vec![1])));
    assert!(!imported(&third, "20250122_091500"), "the first NanoPix patient stays linked to patient 1");
    let links = clinic
        .dentaltid_rows("SELECT external_id FROM nanopix_sync_links WHERE patient_id = 1", |r| r.get::<_, String>(0));
    assert_eq!(links, ["20250122_091500"]);
    let aminas = clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE name = 'Amina'", |r| r.get::<_, i64>(0));
    assert_eq!(aminas, [2], "patient 1 and the second NanoPix patient, imported");
}

#[test]
fn an_imported_patient_whose_external_id_dentaltid_cleared_is_never_linked_to_another_nanopix_patient() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    drain(&sync);
    let imported_id =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250121_152638'", |r| r.get::<_, i64>(0));
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET external_id = NULL WHERE id = ?1", [imported_id[0]])
        .unwrap();
    // The fixture patient, registered again in NanoPix.
    clinic.add_nanopix("20250122_093000", "DSSSSFSFS", "FSFFS", Some("2025-01-21"));
    sync.reconcile().unwrap();
    let events = kinds(&sync);
    assert_eq!(linked_to(&events, "20250122_093000"), None, "{events:?}");
    assert!(imported(&events, "20250122_093000"));
    sync.reconcile().unwrap();
    assert!(!imported(&kinds(&sync), "20250121_152638"), "the fixture patient is never imported again");
}

#[test]
fn source_info_names_the_link_of_a_patient_whose_external_id_dentaltid_cleared() {
    let clinic = Clinic::new("v29");
    // NanoPix keeps each image as `<image_name>.iosb` beside its thumbnail; the fixture leaves it out.
    std::fs::write(clinic.root.join("20250121_152638/20250121_153202.iosb"), b"the full image").unwrap();
    let sync = clinic.open();
    sync.reconcile().unwrap();
    clinic.clock.advance(chrono::Duration::hours(1));
    let ids =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250121_152638'", |r| r.get::<_, i64>(0));
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET external_id = NULL WHERE id = ?1", [ids[0]])
        .unwrap();
    let info = sync.source_info(ids[0]).unwrap();
    assert_eq!(info.link_state, Some(LinkState::Linked));
    assert_eq!(info.external_id.as_deref(), Some("20250121_152638"), "{info:?}");
    assert_eq!(info.folder, Some(clinic.root.join("20250121_152638")));
    assert_eq!(info.nanopix_created.as_deref(), Some("2025-01-21 15:26:46"));
    assert_eq!(info.synced_at.as_deref(), Some("2025-01-22T10:00:00.000"), "the clinic's time at the reconcile");
    assert_eq!(info.image_count, 1, "the fixture patient's one image, in two files");
}

/// A symlink put where a linked patient's folder belongs leads out of `PatientData`: the sync
/// never follows it, and source info gives no path a host would follow. A folder that is only
/// missing keeps its path (`link_state` says it is missing).
#[cfg(unix)]
#[test]
fn source_info_gives_no_folder_path_where_a_symlink_sits() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let ids =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250121_152638'", |r| r.get::<_, i64>(0));
    let folder = clinic.root.join("20250121_152638");
    std::fs::rename(&folder, clinic.dir.path().join("elsewhere")).unwrap();
    sync.reconcile().unwrap();
    let missing = sync.source_info(ids[0]).unwrap();
    assert_eq!((missing.link_state, missing.folder), (Some(LinkState::Missing), Some(folder.clone())));
    std::os::unix::fs::symlink(clinic.dir.path().join("elsewhere"), &folder).unwrap();
    let linked_out = sync.source_info(ids[0]).unwrap();
    assert_eq!(linked_out.external_id.as_deref(), Some("20250121_152638"));
    assert_eq!(linked_out.folder, None, "{linked_out:?}");
}

/// A clinic whose DentalTID table runs `refusal` (a `RAISE`) `timing` (`BEFORE` or `AFTER`) the
/// insert of a patient without a first name; NanoPix holds one such patient, then Lina.
fn clinic_refusing_nameless_patients(timing: &str, refusal: &str) -> Clinic {
    let clinic = Clinic::new("v29");
    let trigger = format!(
        "CREATE TRIGGER patients_need_a_name {timing} INSERT ON patients WHEN trim(NEW.name) = ''
         BEGIN SELECT {refusal}; END"
    );
    another_program(&clinic.dentaltid).execute_batch(&trigger).unwrap();
    clinic.add_nanopix("20250122_091500", "Haddad", "", None);
    clinic.add_nanopix("20250122_091600", "Saadi", "Lina", Some("1991-02-03"));
    clinic
}

#[test]
fn a_nanopix_patient_dentaltid_refuses_is_reported_and_never_keeps_the_others_out() {
    let clinic = clinic_refusing_nameless_patients("BEFORE", "RAISE(ABORT, 'a patient needs a name')");
    let sync = clinic.open();
    for pass in 0..2 {
        let report = sync.reconcile().unwrap();
        assert_eq!((report.imported, report.errors), (if pass == 0 { 2 } else { 0 }, 1), "pass {pass}: {report:?}");
        let refused: Vec<(String, Option<String>)> = kinds(&sync)
            .into_iter()
            .filter_map(|kind| match kind {
                EventKind::SyncError { message, external_id, .. } => Some((message, external_id)),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].1.as_deref(), Some("20250122_091500"));
        assert!(refused[0].0.contains("a patient needs a name"), "{refused:?}");
    }
    let held = holders_per_external_id(&clinic);
    assert!(held.contains(&("20250122_091600".to_owned(), 1)) && held.contains(&("20250121_152638".to_owned(), 1)));
    assert!(!held.iter().any(|(id, _)| id == "20250122_091500"), "{held:?}");
}

#[test]
fn a_dentaltid_trigger_that_rolls_back_an_import_fails_the_pass_and_writes_nothing() {
    let clinic = clinic_refusing_nameless_patients("BEFORE", "RAISE(ROLLBACK, 'a patient needs a name')");
    let before = clinic.dentaltid_rows("SELECT count(*) FROM patients", |r| r.get::<_, i64>(0));
    let sync = clinic.open();
    for _ in 0..2 {
        let failed = sync.reconcile();
        assert!(matches!(failed, Err(nanopix_sync::Error::Database { .. })), "{failed:?}");
        assert_eq!(clinic.dentaltid_rows("SELECT count(*) FROM patients", |r| r.get::<_, i64>(0)), before);
        assert!(holders_per_external_id(&clinic).is_empty());
    }
}

#[test]
fn an_external_id_of_whitespace_only_counts_as_blank_for_matching_and_linking_alike() {
    let clinic = Clinic::new("v29");
    // Patient 1 is Amina Benali, born 1985-03-12; its external_id holds a tab and a no-break space.
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET external_id = char(9, 160) WHERE id = 1", [])
        .unwrap();
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    let sync = clinic.open();
    for _ in 0..2 {
        let report = sync.reconcile().unwrap();
        assert_eq!(report.errors, 0, "{:?}", kinds(&sync));
    }
    let holders =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get::<_, i64>(0));
    assert_eq!(holders, [1], "linked to patient 1");
}

/// What becomes of a NanoPix Lina Saidi born on `born` when DentalTID holds a Lina Saidi whose
/// `dateOfBirth` is `stored`: linked to her, or the reason of the possible duplicate naming
/// her. Decided by a full reconcile, or by the catch-up of `export_patient`, which reads only
/// the DentalTID patients born on that date or without a birth date, as a live pass does.
fn decision_on_birth_date(stored: &str, born: &str, full: bool) -> (bool, Option<DuplicateReason>) {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let lina = clinic.add_dentaltid("Lina", "Saidi", None);
    another_program(&clinic.dentaltid)
        .execute("UPDATE patients SET dateOfBirth = ?1 WHERE id = ?2", (stored, lina))
        .unwrap();
    drain(&sync);
    clinic.add_nanopix("20250122_080000", "Saidi", "Lina", Some(born));
    if full {
        sync.reconcile().unwrap();
    } else {
        sync.export_patient(2).unwrap();
    }
    let events = kinds(&sync);
    let duplicate = duplicate_reason(&events, "20250122_080000");
    assert!(duplicate.as_ref().is_none_or(|(_, candidates)| candidates == &[lina]), "{duplicate:?}");
    (linked_to(&events, "20250122_080000") == Some(lina), duplicate.map(|(reason, _)| reason))
}

#[test]
fn a_live_pass_and_a_full_reconcile_read_every_dentaltid_birth_date_alike() {
    let cases = [
        ("1985-03-12T00:00:00.000", "1985-03-12", (true, None)),
        ("9999-12-31T00:00:00.000", "9999-12-31", (true, None)),
        (" 1985-03-12T00:00:00.000", "1985-03-12", (false, Some(DuplicateReason::MissingBirthDate))),
        (" ", "1985-03-12", (false, Some(DuplicateReason::MissingBirthDate))),
        ("12/03/1985", "1985-03-12", (false, None)),
    ];
    for (stored, born, expected) in cases {
        for full in [true, false] {
            assert_eq!(decision_on_birth_date(stored, born, full), expected, "{stored:?}, full reconcile: {full}");
        }
    }
}

/// Reconciles [`clinic_refusing_nameless_patients`]; returns the report, the events and how
/// many rows hold each of its two NanoPix patients.
fn reconcile_past_a_trigger(timing: &str, refusal: &str) -> (nanopix_sync::ReconcileReport, Vec<EventKind>, [i64; 2]) {
    let clinic = clinic_refusing_nameless_patients(timing, refusal);
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    let held = ["20250122_091500", "20250122_091600"].map(|id| {
        let sql = format!("SELECT count(*) FROM patients WHERE external_id = '{id}'");
        clinic.dentaltid_rows(&sql, |r| r.get::<_, i64>(0))[0]
    });
    (report, kinds(&sync), held)
}

#[test]
fn a_patient_a_trigger_drops_is_reported_and_one_a_trigger_fails_after_writing_is_imported() {
    let (report, events, held) = reconcile_past_a_trigger("BEFORE", "RAISE(IGNORE)");
    assert_eq!((report.imported, report.errors, held), (2, 1, [0, 1]), "{events:#?}");
    assert!(!imported(&events, "20250122_091500"));
    let (report, events, held) = reconcile_past_a_trigger("AFTER", "RAISE(FAIL, 'a patient needs a name')");
    assert_eq!((report.imported, report.errors, held), (3, 0, [1, 1]), "the row stays written: {events:#?}");
    assert!(imported(&events, "20250122_091500"));
}

#[test]
fn a_link_dentaltid_refuses_is_reported_and_never_keeps_the_other_links_out() {
    for refusal in ["RAISE(ABORT, 'this patient may not be linked')", "RAISE(IGNORE)"] {
        let clinic = Clinic::new("v29");
        let trigger = format!(
            "CREATE TRIGGER amina_stays_unlinked BEFORE UPDATE OF external_id ON patients WHEN NEW.name = 'Amina'
             BEGIN SELECT {refusal}; END"
        );
        another_program(&clinic.dentaltid).execute_batch(&trigger).unwrap();
        // Exact matches of patients 1 (Amina Benali) and 2 (Zoé Lefèvre).
        clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
        clinic.add_nanopix("20250122_091600", "Lefèvre", "Zoé", Some("1990-07-04"));
        let sync = clinic.open();
        for _ in 0..2 {
            let report = sync.reconcile().unwrap();
            let events = kinds(&sync);
            let refused = events.iter().filter(|kind| {
                matches!(kind, EventKind::SyncError { code, external_id: Some(id), .. }
                    if code == "database" && id == "20250122_091500")
            });
            assert_eq!(refused.count(), 1, "{refusal}: {events:#?}");
            assert!(!imported(&events, "20250122_091500"), "never imported while it would link");
            assert_eq!(report.errors, 1);
        }
        assert_eq!(
            holders_per_external_id(&clinic),
            [("20250121_152638".to_owned(), 1), ("20250122_091600".to_owned(), 1)]
        );
    }
}

#[test]
fn a_live_pass_and_a_full_reconcile_read_a_padded_external_id_alike() {
    for full in [true, false] {
        let clinic = Clinic::new("v29");
        let sync = clinic.open();
        sync.reconcile().unwrap();
        let sami = clinic.add_dentaltid("Sami", "Haddad", Some("1990-01-01"));
        another_program(&clinic.dentaltid)
            .execute("UPDATE patients SET external_id = '20250122_091500 ' WHERE id = ?1", [sami])
            .unwrap();
        clinic.add_nanopix("20250122_091500", "Haddad", "Sami", Some("1990-01-01"));
        drain(&sync);
        if full {
            sync.reconcile().unwrap();
        } else {
            sync.export_patient(2).unwrap();
        }
        let events = kinds(&sync);
        // A padded id is not the id: Sami counts as linked to something else, and the NanoPix
        // patient comes in as a patient of its own, reported.
        assert!(imported(&events, "20250122_091500"), "full reconcile {full}: {events:#?}");
        let reported = duplicate_reason(&events, "20250122_091500");
        assert_eq!(reported, Some((DuplicateReason::AlreadyLinked, vec![sami])), "full reconcile {full}");
    }
}

/// NanoPix deleted a patient, then saved another person under the same id (its clock went back
/// to the second the first form was opened). The newcomer is imported, and the first patient's
/// link is marked missing: DentalTID's patient is never taken for her, nor linked to her images.
#[test]
fn another_person_saved_under_a_removed_patients_id_is_imported_and_the_first_link_is_missing() {
    let clinic = Clinic::new("v29");
    let (sync, _) = reconcile_with(&clinic);
    let first = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    clinic.save_another_person_under("20250121_152638");
    let report = sync.reconcile().unwrap();
    let events: Vec<EventKind> = drain(&sync).into_iter().map(|e| e.kind).collect();
    let newcomer = events.iter().find_map(|kind| match kind {
        EventKind::PatientImported { patient_id, first_name, .. } if first_name == "Lina" => Some(*patient_id),
        _ => None,
    });
    let removed = events.iter().any(|kind| {
        matches!(kind, EventKind::ExternalPatientRemoved { patient_id, missing, .. } if *patient_id == first && missing == "row")
    });
    assert!(
        newcomer.is_some_and(|id| id != first) && removed && (report.imported, report.removed) == (1, 1),
        "the newcomer is not imported apart from the first patient: {report:?}, {events:#?}"
    );
    let info = sync.source_info(first).unwrap();
    let shown = (info.link_state, info.nanopix_created, info.folder, info.image_count);
    assert_eq!(shown, (Some(LinkState::Missing), None, None, 0), "nothing of hers is shown");
    let again = sync.reconcile().unwrap();
    assert_eq!((again.imported, again.removed, again.linked), (0, 0, 0), "a second reconcile changes nothing");
    assert_eq!(sync.source_info(first).unwrap().link_state, Some(LinkState::Missing));
    drain(&sync);
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [first]).unwrap();
    sync.reconcile().unwrap();
    let asked = drain(&sync).into_iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. }));
    assert!(!asked, "the newcomer's NanoPix patient is asked to be deleted with the first patient");
}

/// The same NanoPix patient edited in NanoPix (new names, same creation time) stays linked.
#[test]
fn a_nanopix_patient_renamed_in_nanopix_stays_linked() {
    let clinic = Clinic::new("v29");
    let (sync, _) = reconcile_with(&clinic);
    let first = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    another_program(&clinic.nanopix_db())
        .execute("UPDATE Patient SET last_name = 'Other', updated_datetime = '2025-03-02 10:00:00'", [])
        .unwrap();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.removed, report.linked), (0, 0, 0));
    assert_eq!(sync.source_info(first).unwrap().link_state, Some(LinkState::Linked));
}

/// NanoPix's `created_datetime` written with a fraction of a second (by another program): the
/// link is recorded to the second, and the same untouched patient stays linked.
#[test]
fn a_nanopix_creation_time_with_a_fraction_of_a_second_keeps_its_patient_linked() {
    let clinic = Clinic::new("v29");
    another_program(&clinic.nanopix_db())
        .execute("UPDATE Patient SET created_datetime = '2025-01-21 15:26:46.500'", [])
        .unwrap();
    let (sync, _) = reconcile_with(&clinic);
    let again = sync.reconcile().unwrap();
    let patients = sync.patients(PatientFilter::AllByExternal).unwrap();
    assert_eq!((again.imported, again.removed, patients.len()), (0, 0, 1), "{again:?}");
    assert_eq!(sync.source_info(patients[0].id).unwrap().link_state, Some(LinkState::Linked));
}

/// A delete was asked for, then NanoPix saved another person under the id before the host
/// confirmed it: her row is not the one asked about, and stays.
#[test]
fn a_confirmed_delete_spares_another_person_saved_under_the_id_since() {
    let clinic = Clinic::new("v29");
    let id = "20250122_091500";
    clinic.add_nanopix(id, "Mansouri", "Yacine", Some("2001-05-19"));
    let (sync, events) = reconcile_with(&clinic);
    let yacine = events.iter().find_map(|kind| match kind {
        EventKind::PatientImported { patient_id, external_id, .. } if external_id == id => Some(*patient_id),
        _ => None,
    });
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [yacine]).unwrap();
    sync.reconcile().unwrap();
    assert!(drain(&sync).iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. })));
    clinic.save_another_person_under(id);
    let refused = sync.delete_in_nanopix(id);
    assert_eq!(
        first_names_under(&clinic, id),
        ["Lina"],
        "delete_in_nanopix ({refused:?}) deleted another person's row"
    );
}

/// Links made by a version that recorded no NanoPix rows: the first reconcile records the rows
/// they hold, changing nothing else, and from then on another person under the id is told apart.
#[test]
fn links_made_before_rows_were_recorded_get_them_from_the_next_reconcile() {
    let clinic = Clinic::new("v29");
    let first = {
        let (sync, _) = reconcile_with(&clinic);
        sync.patients(PatientFilter::AllByExternal).unwrap()[0].id
    };
    let older_version =
        "DROP TABLE nanopix_sync_linked_rows; ALTER TABLE nanopix_sync_imports DROP COLUMN created_times";
    another_program(&clinic.dentaltid).execute_batch(older_version).unwrap();
    let (sync, events) = reconcile_with(&clinic);
    let recorded = clinic.dentaltid_rows("SELECT patient_id, created FROM nanopix_sync_linked_rows", |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    });
    assert_eq!(recorded, [(first, "2025-01-21 15:26:46".to_owned())]);
    assert!(events.iter().all(|e| matches!(e, EventKind::Reconciled(_))), "{events:#?}");
    clinic.save_another_person_under("20250121_152638");
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.removed), (1, 1), "{report:?}");
}

/// Another person imported apart under a removed patient's id, then deleted in DentalTID: her
/// NanoPix patient is asked to be deleted (the first patient's hold on the id was another
/// person's row), and the confirmed delete removes her row.
#[test]
fn another_person_imported_apart_then_deleted_in_dentaltid_asks_for_her_delete() {
    let clinic = Clinic::new("v29");
    let id = "20250121_152638";
    let (sync, _) = reconcile_with(&clinic);
    empty_the_fixture_patient(&clinic);
    clinic.save_another_person_under(id);
    let lina = import_and_delete_lina(&clinic, &sync);
    let events: Vec<EventKind> = drain(&sync).into_iter().map(|e| e.kind).collect();
    let asked =
        events.iter().any(|e| matches!(e, EventKind::DeleteRequested { patient_id, .. } if Some(*patient_id) == lina));
    assert!(asked, "no delete asked for her NanoPix patient: {events:#?}");
    sync.delete_in_nanopix(id).unwrap();
    assert!(first_names_under(&clinic, id).is_empty());
}

/// The first names of the NanoPix rows under `id`.
fn first_names_under(clinic: &Clinic, id: &str) -> Vec<String> {
    clinic.nanopix_rows(&format!("SELECT first_name FROM Patient WHERE id = '{id}'"), |r| r.get(0))
}

/// Removes the fixture patient's studies and image files, so NanoPix may delete her.
fn empty_the_fixture_patient(clinic: &Clinic) {
    another_program(&clinic.nanopix_db())
        .execute("DELETE FROM Study WHERE patient_id = '20250121_152638'", [])
        .unwrap();
    for file in std::fs::read_dir(clinic.root.join("20250121_152638")).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
}

/// Reconciles, so Lina, saved in NanoPix, is imported; deletes her in DentalTID and reconciles
/// again. Returns her DentalTID id, if she was imported.
fn import_and_delete_lina(clinic: &Clinic, sync: &NanoPixSync) -> Option<i64> {
    sync.reconcile().unwrap();
    let lina = drain(sync).into_iter().find_map(|e| match e.kind {
        EventKind::PatientImported { patient_id, first_name, .. } if first_name == "Lina" => Some(patient_id),
        _ => None,
    });
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [lina]).unwrap();
    sync.reconcile().unwrap();
    lina
}

/// The first patient's own row is put back from a backup after another person under her id was
/// imported apart and deleted: the delete asked for the other person spares the first patient's.
///
/// Unix only: on Windows an open database file cannot be moved or replaced (README, "Restoring a
/// backup").
#[cfg(unix)]
#[test]
fn a_confirmed_delete_after_a_backup_restore_spares_the_row_a_patient_still_stands_for() {
    let clinic = Clinic::new("v29");
    let id = "20250121_152638";
    let (sync, _) = reconcile_with(&clinic);
    let first = sync.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    empty_the_fixture_patient(&clinic);
    let backup = clinic.root.join("database/NanoPix.backup.db3");
    std::fs::copy(clinic.nanopix_db(), &backup).unwrap();
    clinic.save_another_person_under(id);
    let lina = import_and_delete_lina(&clinic, &sync);
    assert!(
        drain(&sync)
            .iter()
            .any(|e| matches!(e.kind, EventKind::DeleteRequested { patient_id, .. } if Some(patient_id) == lina))
    );
    std::fs::rename(&backup, clinic.nanopix_db()).unwrap();
    let deleted = sync.delete_in_nanopix(id);
    assert_eq!(
        first_names_under(&clinic, id),
        ["FSFFS"],
        "delete_in_nanopix ({deleted:?}) deleted the row patient {first} stands for"
    );
}

/// A delete request noted but not sent when the program stopped, whose NanoPix id another person
/// took since: it is not sent, since NanoPix no longer holds the deleted patient.
#[test]
fn a_held_delete_request_whose_id_another_person_took_since_is_not_sent() {
    let events = held_delete_request_then_another_person_under_its_id("");
    let imported =
        events.iter().any(|e| matches!(e, EventKind::PatientImported { first_name, .. } if first_name == "Lina"));
    assert!(imported, "{events:#?}");
    assert!(!events.iter().any(|e| matches!(e, EventKind::DeleteRequested { .. })), "{events:#?}");
}

/// The same, while DentalTID refuses to import the other person (a trigger of its own): the
/// request is not sent either.
#[test]
fn a_held_delete_request_whose_id_another_person_took_since_is_not_sent_while_she_is_refused() {
    let refuse =
        "CREATE TRIGGER no_lina BEFORE INSERT ON patients WHEN NEW.name = 'Lina' BEGIN SELECT RAISE(ABORT, 'no'); END;";
    let events = held_delete_request_then_another_person_under_its_id(refuse);
    assert!(!events.iter().any(|e| matches!(e, EventKind::DeleteRequested { .. })), "{events:#?}");
}

/// Imports the fixture patient, deletes her in DentalTID with her delete request noted but not
/// sent, runs `sql` on DentalTID, saves Lina under her NanoPix id and reconciles; returns what
/// that reconcile said.
fn held_delete_request_then_another_person_under_its_id(sql: &str) -> Vec<EventKind> {
    let clinic = Clinic::new("v29");
    let id = "20250121_152638";
    let first = reconcile_with(&clinic).0.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    another_program(&clinic.dentaltid)
        .execute_batch(&format!(
            "DELETE FROM patients WHERE id = {first};
             INSERT OR REPLACE INTO nanopix_sync_links VALUES ({first}, '{id}', 'imported', 'delete_requested', '2025-06-02T10:00:00.000');
             INSERT INTO nanopix_sync_unannounced_deletes VALUES ({first}, '{id}');
             {sql}"
        ))
        .unwrap();
    clinic.save_another_person_under(id);
    reconcile_with(&clinic).1
}

/// A delete request noted but not sent, its NanoPix id edited by hand into a text that is no id:
/// it names no NanoPix patient, so no `delete_requested` carries it, and it is not kept either.
#[test]
fn a_held_delete_request_noted_with_no_nanopix_id_is_not_sent() {
    let clinic = Clinic::new("v29");
    let first = reconcile_with(&clinic).0.patients(PatientFilter::AllByExternal).unwrap()[0].id;
    another_program(&clinic.dentaltid)
        .execute_batch(&format!(
            "DELETE FROM patients WHERE id = {first};
             INSERT OR REPLACE INTO nanopix_sync_links VALUES ({first}, 'not an id', 'imported', 'delete_requested', '');
             INSERT INTO nanopix_sync_unannounced_deletes VALUES ({first}, 'not an id');"
        ))
        .unwrap();
    let events = reconcile_with(&clinic).1;
    assert!(!events.iter().any(|e| matches!(e, EventKind::DeleteRequested { .. })), "{events:#?}");
    let noted = clinic.dentaltid_rows("SELECT count(*) FROM nanopix_sync_unannounced_deletes", |r| r.get::<_, i64>(0));
    assert_eq!(noted, [0], "the note is dropped");
}

/// A link row hand-edited to name a patient id near the end of SQLite's range (no such patient
/// was ever issued: `sqlite_sequence` is far below it). The next import must not take an id past
/// it: DentalTID's table declares AUTOINCREMENT, which then fails every later insert ("database
/// or disk is full"), so DentalTID could never add a patient again.
#[test]
fn a_hand_edited_huge_link_id_leaves_dentaltid_able_to_add_patients() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(false).unwrap();
    let huge = i64::MAX - 1;
    another_program(&clinic.dentaltid)
        .execute(
            "INSERT INTO nanopix_sync_links VALUES (?1, '20200101_000000', 'imported', 'delete_requested', '')",
            [huge],
        )
        .unwrap();
    let issued: i64 = clinic.dentaltid_rows("SELECT seq FROM sqlite_sequence WHERE name = 'patients'", |r| r.get(0))[0];
    assert_eq!(sync.reconcile().unwrap().imported, 1, "the fixture patient");
    let imported: i64 =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250121_152638'", |r| r.get(0))[0];
    assert_eq!(imported, issued + 1, "AUTOINCREMENT gives the next id, as before");
    let added = another_program(&clinic.dentaltid).execute(
        "INSERT INTO patients(name, familyName, age, healthState, diagnosis, treatment, payment, createdAt,
                              isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
         VALUES ('Nadia', 'Kaci', 30, '', '', '', 0.0, '2025-01-22T09:00:00.000', 0, 'EmergencySeverity.low', '', '', 0)",
        [],
    );
    assert!(added.is_ok(), "DentalTID adds a patient: {added:?}");
}

/// The host stops the handle's work (`Stopper::stop`, say from a signal handler) and makes more
/// calls before it closes it: a "Sync Now" returns at once with `stopped_early` (and a
/// `reconciled` saying so), importing nobody; the exports fail with `closed`, writing nothing to
/// NanoPix; and the calls that sync nothing still do their work: the patients list, the switch of
/// Live Sync, and the delete in NanoPix the host was asked for.
#[test]
fn a_stopped_handle_syncs_nothing_and_still_lists_switches_and_deletes() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let yacine: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091500'", |r| r.get(0));
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [yacine[0]]).unwrap();
    sync.reconcile().unwrap();
    assert_eq!(delete_requests(&sync).len(), 1, "his delete is asked for");
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    clinic.add_nanopix("20250122_091600", "Haddad", "Sami", Some("1999-09-09"));
    let before: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));

    sync.stopper().stop();
    let report = sync.reconcile().unwrap();
    assert!(report.stopped_early && report.imported == 0, "{report:?}");
    let reconciled: Vec<EventKind> =
        drain(&sync).into_iter().map(|e| e.kind).filter(|kind| matches!(kind, EventKind::Reconciled(_))).collect();
    assert!(matches!(reconciled.as_slice(), [EventKind::Reconciled(said)] if said.stopped_early), "{reconciled:?}");
    assert_eq!(sync.export_patient(nadia).map_err(|error| error.code()), Err("closed"));
    assert_eq!(sync.export_existing().map_err(|error| error.code()), Err("closed"));
    let after: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    assert_eq!(after, before, "nothing written to NanoPix");
    assert_eq!(nanopix_ids_named(&clinic, "Sami", "Haddad"), ["20250122_091600"]);
    assert!(clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Sami'", |r| r.get::<_, i64>(0)).is_empty());

    let listed = sync.patients(PatientFilter::All).unwrap();
    assert!(listed.iter().any(|patient| patient.id == nadia), "the patients list still works");
    sync.set_live_sync(true).unwrap();
    assert!(sync.live_sync().unwrap(), "the switch is stored");
    sync.delete_in_nanopix("20250122_091500").unwrap();
    assert_eq!(nanopix_ids_named(&clinic, "Yacine", "Mansouri"), Vec::<String>::new());
    assert!(!clinic.root.join("20250122_091500").exists(), "his folder went with his row");
}

/// DentalTID renames the patient a NanoPix patient was matched to as the sync links them, and
/// gives a second patient those names: the NanoPix patient is decided again and matches the second
/// patient, whom DentalTID renames too before that link. The sync reports `patient_changed` and
/// leaves the NanoPix patient to the next reconcile, which imports it once: it never links a
/// patient that no longer has the names it was matched on.
#[test]
fn a_nanopix_patient_whose_match_dentaltid_changes_twice_while_linking_is_left_to_the_next_reconcile() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_091600", "Kaci", "Samira", Some("1991-02-03"));
    let matched = clinic.add_dentaltid("Samira", "Kaci", Some("1991-02-03"));
    let second = clinic.add_dentaltid("Samra", "Kaci", Some("1991-02-03"));
    drain(&sync);
    let dentaltid = clinic.dentaltid.clone();
    let again = clock.clone();
    // The engine's first ask of the time in this reconcile is for its links, then for the links of
    // the second decision.
    clock.arm(Box::new(move || {
        another_program(&dentaltid)
            .execute("UPDATE patients SET familyName = 'Kacimi' WHERE id = ?1", [matched])
            .unwrap();
        another_program(&dentaltid).execute("UPDATE patients SET name = 'Samira' WHERE id = ?1", [second]).unwrap();
        again.arm(Box::new(move || {
            another_program(&dentaltid).execute("UPDATE patients SET name = 'Samra' WHERE id = ?1", [second]).unwrap();
        }));
    }));
    let report = sync.reconcile().unwrap();
    let events = kinds(&sync);
    assert!(clock.ran(), "DentalTID renamed both patients");
    let changed = |kind: &EventKind| {
        matches!(kind, EventKind::SyncError { code, external_id, patient_id, .. }
            if code == "patient_changed" && external_id.as_deref() == Some("20250122_091600") && *patient_id == Some(second))
    };
    assert!(events.iter().any(changed), "{events:?}");
    assert_eq!((report.linked, report.imported, report.errors), (0, 0, 1), "{events:?}");
    let holders = |clinic: &Clinic| {
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_091600'", |r| r.get::<_, i64>(0))
    };
    assert_eq!(holders(&clinic), Vec::<i64>::new(), "neither patient holds the NanoPix id");
    let next = sync.reconcile().unwrap();
    assert_eq!((next.linked, next.imported), (0, 1), "{:?}", kinds(&sync));
    let imported = holders(&clinic);
    assert!(imported.len() == 1 && ![matched, second].contains(&imported[0]), "{imported:?}");
}
