//! Exports to NanoPix: ids, rows, folders, Live Sync, no echo, and repair after a crash.

mod common;

use std::collections::HashSet;

use common::Clinic;
use nanopix_sync::{DuplicateReason, Error, EventKind, NanoPixId, NanoPixSync};

type NanoPixRow = (String, String, Option<String>, Option<String>, Option<String>, Option<String>);

fn nanopix_row(clinic: &Clinic, id: &str) -> Vec<NanoPixRow> {
    clinic.nanopix_rows(
        &format!("SELECT id, last_name, first_name, birthdate, created_datetime, updated_datetime FROM Patient WHERE id = '{id}'"),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
    )
}

#[test]
fn export_existing_gives_valid_distinct_ids_rows_and_folders() {
    let clinic = Clinic::new("v29");
    std::fs::create_dir(clinic.root.join("20250110_091500")).unwrap();
    let added_within_the_hour = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let sync = clinic.open();
    assert_eq!(sync.export_existing().unwrap(), 7);

    let ids: Vec<String> =
        clinic.dentaltid_rows("SELECT external_id FROM patients WHERE source = 'internal' ORDER BY id", |r| r.get(0));
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 7);
    for id in &ids {
        assert!(NanoPixId::parse(id).is_ok(), "{id}");
        assert!(clinic.root.join(id).is_dir(), "folder {id}");
        assert_eq!(std::fs::read_dir(clinic.root.join(id)).unwrap().count(), 0, "no subfolders by default");
    }
    let expected = [
        "20250110_091501", // Amina, created 2025-01-10 09:15:00, whose second a folder on disk takes
        "20250112_140231",
        "20250115_104012",
        "20250118_162000",
        "20250120_110000",
        "20250121_083000",
        "20250122_100000", // created within the hour: the clinic clock's second, as a new patient
    ];
    assert_eq!(ids, expected, "each from its DentalTID creation time, never in the hour before now or later");
    assert_eq!(sync.source_info(added_within_the_hour).unwrap().external_id.as_deref(), Some(expected[6]));
    let amina = nanopix_row(&clinic, &ids[0]);
    let written = (
        "20250110_091501".to_owned(),
        "Benali".to_owned(),
        Some("Amina".to_owned()),
        Some("1985-03-12".to_owned()),
        Some("2025-01-22 10:00:00".to_owned()),
        Some("2025-01-22 10:00:00".to_owned()),
    );
    assert_eq!(amina, vec![written], "written now, under an id of its past");
    let karim = nanopix_row(&clinic, &ids[5]);
    assert_eq!(karim[0].3, None, "no birth date stays NULL");
}

/// The phone number DentalTID holds is written to NanoPix's row, trimmed; a blank one is written
/// empty, as NanoPix's own form writes a field left blank.
#[test]
fn an_export_writes_the_phone_number_trimmed() {
    let clinic = Clinic::new("v29");
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let karim = clinic.add_dentaltid("Karim", "Haddad", None);
    edit_dentaltid(&clinic, &format!("UPDATE patients SET phoneNumber = ' 0555 12 34 56 ' WHERE id = {nadia}"));
    edit_dentaltid(&clinic, &format!("UPDATE patients SET phoneNumber = '  ' WHERE id = {karim}"));
    let sync = clinic.open_without_automatic_work();
    let phone = |patient| {
        let id = sync.export_patient(patient).unwrap();
        clinic.nanopix_rows(&format!("SELECT phone FROM Patient WHERE id = '{id}'"), |r| r.get::<_, Option<String>>(0))
    };
    assert_eq!(phone(nadia), [Some("0555 12 34 56".to_owned())]);
    assert_eq!(phone(karim), [Some(String::new())]);
}

#[test]
fn exports_never_come_back_as_imports() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.export_existing().unwrap();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.linked, report.possible_duplicates), (0, 0, 0), "nothing comes back");
    let rows: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM patients", |r| r.get(0));
    assert_eq!(rows, vec![7]);
}

#[test]
fn export_patient_refuses_a_linked_or_unknown_patient() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let id = sync.export_patient(1).unwrap();
    assert!(
        matches!(sync.export_patient(1), Err(Error::AlreadyLinked { patient_id: 1, external_id }) if external_id == id.to_string())
    );
    assert!(matches!(sync.export_patient(999), Err(Error::PatientNotFound(999))));
}

#[test]
fn only_patients_added_while_live_sync_is_on_are_exported() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let before = clinic.add_dentaltid("Old", "Patient", None);
    sync.set_live_sync(true).unwrap();
    let during = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(before).unwrap().external_id, None);
    let exported = sync.source_info(during).unwrap().external_id.expect("exported");
    assert!(clinic.root.join(&exported).is_dir());
    drop(sync);

    let while_closed = clinic.add_dentaltid("Added", "WhileClosed", None);
    let sync = clinic.open();
    sync.reconcile().unwrap();
    assert!(sync.source_info(while_closed).unwrap().external_id.is_some(), "found by the cursor after a restart");
}

/// Runs an export of patient 1 in a child process that aborts right after `step`. The export
/// first imports the NanoPix patients the sync has not seen (the fixture patient), so a later
/// reconcile imports nothing unless the test adds a NanoPix patient.
fn crash_export_after(clinic: &Clinic, step: &str) {
    crash_child_after(clinic, "crashing_export_child", step);
}

/// Runs the child test `child` in a child process that aborts right after `step`.
fn crash_child_after(clinic: &Clinic, child: &str, step: &str) {
    let status = common::child_process(child, clinic).env("NANOPIX_SYNC_CRASH_AT", step).status().unwrap();
    assert!(!status.success(), "the child must die at {step}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "the child aborted at the crash point {step}, it did not just fail");
    }
}

#[test]
#[ignore = "the child process of the crash-repair test"]
fn crashing_export_child() {
    let sync = common::open_parents_clinic();
    let _ = sync.export_patient(1);
    unreachable!("the export aborts the process");
}

#[test]
fn an_export_interrupted_after_each_step_is_repaired() {
    for step in ["journal", "row", "folder"] {
        let clinic = Clinic::new("v29");
        crash_export_after(&clinic, step);
        let sync = clinic.open();
        let external = sync.source_info(1).unwrap().external_id.unwrap_or_else(|| panic!("repaired after {step}"));
        assert!(clinic.root.join(&external).is_dir(), "{step}: folder");
        assert_eq!(nanopix_row(&clinic, &external).len(), 1, "{step}: exactly one row");
        let report = sync.reconcile().unwrap();
        assert_eq!((report.imported, report.exported), (0, 0), "{step}: no echo, no second export");
        let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
        assert_eq!(rows, vec![2], "{step}: the fixture and the one export");
    }
}

#[test]
#[ignore = "the child process of the crash-repair test of export_existing"]
fn crashing_export_existing_child() {
    let sync = common::open_parents_clinic();
    let _ = sync.export_existing();
    unreachable!("export_existing aborts the process");
}

/// `export_existing` journals its exports, then writes their NanoPix rows, sixteen at a time,
/// before each gets its folder and link: a crash after each of those steps of its first exports
/// is repaired at the next start, and the next `export_existing` exports the others, each
/// patient once on each side, none coming back as an import.
#[test]
fn export_existing_interrupted_after_each_step_is_repaired() {
    for step in ["journal", "row", "folder", "linked"] {
        let clinic = Clinic::new("v29");
        for i in 0..20 {
            add_created(&clinic, &format!("Old{i:03}"), "2024-06-01T09:00:00.000");
        }
        crash_child_after(&clinic, "crashing_export_existing_child", step);
        let sync = clinic.open_without_automatic_work();
        let report = sync.reconcile().unwrap();
        assert_eq!(report.imported, 0, "{step}: no export comes back as an import");
        sync.export_existing().unwrap();
        let held: Vec<(i64, Option<String>)> =
            clinic.dentaltid_rows("SELECT id, external_id FROM patients ORDER BY id", |r| Ok((r.get(0)?, r.get(1)?)));
        for (patient, external_id) in &held {
            let external_id = external_id.as_deref().unwrap_or_else(|| panic!("{step}: patient {patient} exported"));
            assert!(clinic.root.join(external_id).is_dir(), "{step}: folder of {external_id}");
            assert_eq!(nanopix_row(&clinic, external_id).len(), 1, "{step}: one row for {external_id}");
        }
        let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
        assert_eq!(rows, [i64::try_from(held.len()).unwrap()], "{step}: each patient once in NanoPix");
    }
}

/// `export_existing` crashes once it has written the NanoPix rows of its first exports, journaled
/// and written sixteen at a time, before any of their folders. Before the next start, DentalTID
/// deletes one of those patients and renames another, and NanoPix saves a third one again under
/// an id of its own. The next start ends each of those exports on the row it wrote: every row
/// gets its folder and its patient (the deleted patient's link asks for its delete), the renamed
/// patient keeps her row, the person NanoPix saved again is imported beside her twin, and nobody
/// is exported twice or comes back as an import.
#[test]
fn export_existing_crashed_after_writing_rows_ahead_ends_each_export_on_its_row() {
    let clinic = Clinic::new("v29");
    add_twenty_old(&clinic, "P");
    let dentaltid = common::another_program(&clinic.dentaltid);
    crash_child_after(&clinic, "crashing_export_existing_child", "row");
    let journaled: Vec<(i64, String, String)> = clinic.dentaltid_rows(
        "SELECT patient_id, nanopix_sync_exports.external_id, familyName FROM nanopix_sync_exports JOIN patients ON patients.id = patient_id
         ORDER BY patient_id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    assert_eq!(journaled.len(), 16, "journaled together: {journaled:?}");
    for (_, id, _) in &journaled {
        assert_eq!(nanopix_row(&clinic, id).len(), 1, "row of {id} written ahead");
        assert!(!clinic.root.join(id).exists(), "no folder for {id} yet");
    }
    let [(deleted, deleted_id, _), (renamed, renamed_id, renamed_name), (typed, typed_id, typed_name), ..] =
        &journaled[..]
    else {
        unreachable!()
    };
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [deleted]).unwrap();
    dentaltid.execute("UPDATE patients SET familyName = 'Renamed' WHERE id = ?1", [renamed]).unwrap();
    clinic.add_nanopix("20250122_094500", typed_name, "P", Some("1980-01-01"));

    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    sync.export_existing().unwrap();
    let held: Vec<(i64, Option<String>, String)> = clinic
        .dentaltid_rows("SELECT id, external_id, source FROM patients ORDER BY id", |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        });
    let holder = |id: &str| held.iter().filter(|(_, held, _)| held.as_deref() == Some(id)).count();
    let rows: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    for id in &rows {
        assert!(clinic.root.join(id).is_dir(), "folder of {id}");
        assert_eq!(holder(id), usize::from(id != deleted_id), "DentalTID patients holding {id}");
    }
    assert!(held.iter().all(|(_, id, _)| id.is_some()), "every patient exported or imported: {held:?}");
    assert_eq!(rows.len(), held.len() + 1, "each patient once in NanoPix, and the deleted one's row");
    assert_eq!(held.iter().find(|(id, ..)| id == renamed).and_then(|(_, id, _)| id.as_deref()), Some(&renamed_id[..]));
    assert_eq!(nanopix_row(&clinic, renamed_id)[0].1, *renamed_name, "NanoPix keeps the name it was given");
    assert_eq!(held.iter().find(|(id, ..)| id == typed).and_then(|(_, id, _)| id.as_deref()), Some(&typed_id[..]));
    let saved_again: Vec<&str> =
        held.iter().filter(|(_, _, source)| source == "nanopix").filter_map(|(_, id, _)| id.as_deref()).collect();
    assert!(saved_again.contains(&"20250122_094500"), "NanoPix's own patient imported: {saved_again:?}");
    let requests = sync.delete_requests().unwrap();
    assert_eq!(
        requests.iter().map(|request| (request.external_id.as_str(), request.patient_ids.clone())).collect::<Vec<_>>(),
        [(&deleted_id[..], vec![*deleted])]
    );
}

/// NanoPix's own program saves a person as `export_existing` works through a clinic's old
/// patients, once the rows of its first sixteen exports are written ahead of their folders and
/// links: the same person as one of the next exports, typed into both programs. The exports
/// journaled after that save write nothing until the sync has read NanoPix again, and that
/// patient is linked to NanoPix's, not exported a second time; every other export ends once.
#[test]
fn export_existing_links_a_patient_nanopix_saved_after_it_wrote_rows_ahead() {
    let (clinic, clock, sync) = twenty_old_on_a_hooked_clock("Karim");
    let (root, nanopix_db) = (clinic.root.clone(), clinic.nanopix_db());
    let saved_by_nanopix = move || {
        common::another_program(&nanopix_db)
            .execute(
                "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime, updated_datetime)
                 VALUES ('20250122_095500', 'Old018', 'Karim', '1980-01-01', '2025-01-22 09:56:10',
                         '2025-01-22 09:56:10')",
                [],
            )
            .unwrap();
        std::fs::create_dir(root.join("20250122_095500")).unwrap();
    };
    once_rows_are_written_ahead(&clock, &clinic, Box::new(saved_by_nanopix));
    let exported = sync.export_existing();
    assert!(clock.ran(), "NanoPix saved the patient during the exports");
    assert_eq!(exported.map_err(|error| error.to_string()), Ok(25), "the six sample patients and 19 old ones");

    let old018: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Old018'", |r| r.get(0));
    assert_eq!(old018, ["20250122_095500"], "the patient NanoPix saved, once");
    let held: Vec<Option<String>> =
        clinic.dentaltid_rows("SELECT external_id FROM patients WHERE familyName = 'Old018'", |r| r.get(0));
    assert_eq!(held, [Some("20250122_095500".to_owned())], "linked to NanoPix's patient");
    let rows: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    let patients: Vec<i64> = clinic.dentaltid_rows("SELECT count(*) FROM patients", |r| r.get(0));
    assert_eq!(rows.len() as i64, patients[0], "each patient once on each side: {rows:?}");
    assert!(rows.iter().all(|id| clinic.root.join(id).is_dir()), "folders of {rows:?}");
    let journaled: Vec<i64> = clinic.dentaltid_rows("SELECT count(*) FROM nanopix_sync_exports", |r| r.get(0));
    assert_eq!(journaled, [0], "no export left in the journal");
}

/// Crashes an export of patient 1 right after `step`; returns the id it reserved.
fn reserved_by_an_export_crashed_after(clinic: &Clinic, step: &str) -> String {
    crash_export_after(clinic, step);
    let mut reserved: Vec<String> = clinic.dentaltid_rows("SELECT external_id FROM nanopix_sync_exports", |r| r.get(0));
    assert_eq!(reserved.len(), 1, "one export in the journal: {reserved:?}");
    reserved.remove(0)
}

#[test]
fn an_export_whose_id_another_nanopix_patient_took_is_done_again_with_a_new_id() {
    let clinic = Clinic::new("v29");
    let reserved = &reserved_by_an_export_crashed_after(&clinic, "journal");
    clinic.add_nanopix(reserved, "Stranger", "Someone", Some("1970-01-01"));

    let sync = clinic.open();
    let external = sync.source_info(1).unwrap().external_id.expect("exported again at open");
    assert_ne!(&external, reserved, "never linked to the other patient's row");
    let stranger = nanopix_row(&clinic, reserved);
    assert_eq!((stranger[0].1.as_str(), stranger[0].2.as_deref()), ("Stranger", Some("Someone")), "left as it was");
    assert_eq!(nanopix_row(&clinic, &external)[0].1, "Benali", "the export has its own row");
    assert!(clinic.root.join(&external).is_dir());

    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.exported), (1, 0), "the other patient, imported once");
    let strangers: Vec<i64> =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{reserved}'"), |r| r.get(0));
    assert_eq!(strangers.len(), 1);
    assert_ne!(strangers[0], 1);
}

/// An export cut short before its row, whose reserved id another NanoPix patient took meanwhile,
/// moves to a new id at `open`'s repair, and NanoPix then refuses its row: the `sync_error`
/// names the id her journal now holds, never the other patient's, whom support would look at.
#[test]
fn a_repair_refused_after_moving_to_a_new_id_names_the_id_its_journal_holds() {
    let clinic = Clinic::new("v29");
    let reserved = &reserved_by_an_export_crashed_after(&clinic, "journal");
    clinic.add_nanopix(reserved, "Stranger", "Someone", Some("1970-01-01"));
    block_nanopix_inserts(&clinic, true);

    let sync = clinic.open();
    let journaled: Vec<String> =
        clinic.dentaltid_rows("SELECT external_id FROM nanopix_sync_exports WHERE patient_id = 1", |r| r.get(0));
    assert_eq!(journaled.len(), 1, "the export stays in the journal");
    assert_ne!(&journaled[0], reserved, "moved off the other patient's id");
    let named: Vec<Option<String>> = common::drain(&sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::SyncError { patient_id: Some(1), external_id, .. } => Some(external_id),
            _ => None,
        })
        .collect();
    assert_eq!(named, vec![Some(journaled[0].clone())], "the other patient is {reserved}");
}

/// An export cut short before it wrote its row, while NanoPix saved the same person itself
/// (same names and birth date): the repair does not write a second NanoPix patient for her, even
/// once NanoPix takes inserts again; the reconcile links her to NanoPix's.
#[test]
fn a_patient_whose_export_wrote_no_row_is_linked_to_the_same_person_nanopix_saved_meanwhile() {
    let clinic = Clinic::new("v29");
    let reserved = &reserved_by_an_export_crashed_after(&clinic, "journal");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    block_nanopix_inserts(&clinic, true);

    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.linked, report.imported, report.repaired), (1, 0, 0), "{report:?}");
    assert_eq!(sync.source_info(1).unwrap().external_id.as_deref(), Some("20250122_091500"));

    block_nanopix_inserts(&clinic, false);
    let again = sync.reconcile().unwrap();
    assert_eq!((again.repaired, again.imported, again.exported), (0, 0, 0), "{again:?}");
    let written: Vec<String> =
        clinic.nanopix_rows(&format!("SELECT id FROM Patient WHERE id = '{reserved}'"), |r| r.get(0));
    assert_eq!(written, Vec::<String>::new(), "no second NanoPix patient for Amina Benali");
}

/// As in `a_patient_whose_export_wrote_no_row_is_linked_to_the_same_person_nanopix_saved_meanwhile`,
/// in a NanoPix that holds more patients than a repair reads at a time: the same person, saved
/// after all of them, is still found, and NanoPix holds her once.
#[test]
fn a_repair_finds_the_same_person_nanopix_saved_after_thousands_of_patients() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(6_000);
    let reserved = &reserved_by_an_export_crashed_after(&clinic, "journal");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));

    let sync = clinic.open_without_automatic_work();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.linked, report.repaired), (1, 0), "{report:?}");
    assert_eq!(sync.source_info(1).unwrap().external_id.as_deref(), Some("20250122_091500"));
    assert_eq!(common::nanopix_ids_named(&clinic, "Amina", "Benali"), ["20250122_091500"], "not {reserved}");
}

/// An export cut short after its NanoPix row is ended by `open`: the first reconcile after it
/// counts that repair in its report (and its `reconciled` event), as the host's "repaired" count
/// would otherwise never show it; the next reconcile counts none.
#[test]
fn the_repair_open_does_counts_in_the_first_reconcile_report() {
    let clinic = Clinic::new("v29");
    crash_export_after(&clinic, "row");
    let sync = clinic.open_without_automatic_work();
    assert!(sync.source_info(1).unwrap().external_id.is_some(), "repaired at open");
    let first = sync.reconcile().unwrap();
    let reported =
        common::wait_for(&sync, std::time::Duration::from_secs(10), |e| matches!(e, EventKind::Reconciled(_)));
    assert_eq!((first.repaired, first.errors), (1, 0), "{first:?}");
    assert!(matches!(reported.kind, EventKind::Reconciled(report) if report == first));
    assert_eq!(sync.reconcile().unwrap().repaired, 0, "counted once");
}

/// The same repair, while DentalTID is locked past the busy timeout when the first reconcile
/// begins: that reconcile fails and reports nothing, so the next one, which succeeds, counts it.
#[test]
fn the_repair_open_does_counts_in_the_first_reconcile_that_succeeds() {
    let clinic = Clinic::new("v29");
    crash_export_after(&clinic, "row");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = std::time::Duration::from_millis(50);
    let sync = nanopix_sync::NanoPixSync::open(config).unwrap();
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = sync.reconcile();
    assert!(matches!(refused, Err(Error::Busy { .. })), "{refused:?}");
    dentaltid.execute_batch("ROLLBACK").unwrap();
    let first = sync.reconcile().unwrap();
    assert_eq!((first.repaired, first.errors), (1, 0), "{first:?}");
    assert_eq!(sync.reconcile().unwrap().repaired, 0, "counted once");
}

/// NanoPix holds its write lock (saving a long series of images) through a whole
/// `export_existing`: every export is refused, and `export_existing` gives up after its tries
/// with `busy`, NanoPix untouched, instead of trying again for as long as the lock lasts.
#[test]
fn export_existing_gives_up_with_busy_while_nanopix_stays_locked() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = std::time::Duration::from_millis(50);
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let nanopix = common::another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (ended, end) = std::sync::mpsc::channel();
    let refused = std::thread::scope(|scope| {
        let sync = &sync;
        scope.spawn(move || ended.send(sync.export_existing().map_err(|error| error.code())));
        let refused = end.recv_timeout(std::time::Duration::from_secs(60));
        nanopix.execute_batch("ROLLBACK").unwrap();
        refused
    });
    assert_eq!(refused, Ok(Err("busy")), "export_existing ends while NanoPix is still locked");
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, [1], "only the fixture patient");
}

/// Opens a handle on `clinic` without automatic work, with NanoPix refusing every new patient
/// (as on a full disk), and leaves the export of patient 1 in the journal, refused; closes it.
/// NanoPix still refuses on return.
fn leave_export_of_patient_1_refused(clinic: &Clinic, live_sync: bool) {
    block_nanopix_inserts(clinic, true);
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(live_sync).unwrap();
    assert!(sync.export_patient(1).is_err(), "NanoPix refuses her row");
    assert_eq!(journaled_exports(clinic), 1);
}

/// How many `sync_error` events about patient 1 `kind` is: 1 or 0.
fn refusal_of_patient_1(kind: &EventKind) -> usize {
    usize::from(matches!(kind, EventKind::SyncError { patient_id: Some(1), .. }))
}

/// With Live Sync on, `open` tries the repair of an export NanoPix refused, which NanoPix still
/// refuses (its disk still full, say), and the reconcile Live Sync starts with follows at once:
/// the refusal is reported once, by `open`, and counted in that first `reconciled`.
#[test]
fn a_repair_refused_at_open_is_reported_once_by_the_reconcile_live_sync_starts_with() {
    let clinic = Clinic::new("v29");
    leave_export_of_patient_1_refused(&clinic, true);
    let sync = clinic.open();
    let mut refusals = 0;
    let first = common::wait_for(&sync, std::time::Duration::from_secs(10), |e| {
        refusals += refusal_of_patient_1(e);
        matches!(e, EventKind::Reconciled(_))
    });
    let EventKind::Reconciled(report) = first.kind else { unreachable!() };
    assert_eq!((refusals, report.errors), (1, 1), "one refusal, reported once: {report:?}");
    assert_eq!(journaled_exports(&clinic), 1, "the export still waits");
}

/// A "Sync Now" right after `open` (as late as five seconds after) leaves alone the export whose
/// repair `open` saw refused; one an hour later (Live Sync off, so nothing tried it since) tries
/// it again, and ends it once NanoPix takes patients again.
#[test]
fn a_reconcile_long_after_open_tries_again_the_repair_refused_there() {
    let clinic = Clinic::new("v29");
    leave_export_of_patient_1_refused(&clinic, false);
    let sync = clinic.open_without_automatic_work();
    clinic.clock.advance(chrono::Duration::seconds(5));
    let right_after = sync.reconcile().unwrap();
    let refusals: usize = common::drain(&sync).iter().map(|e| refusal_of_patient_1(&e.kind)).sum();
    assert_eq!((refusals, right_after.errors, right_after.repaired), (1, 1, 0), "{right_after:?}");
    drop(sync);

    let sync = clinic.open_without_automatic_work();
    block_nanopix_inserts(&clinic, false);
    clinic.clock.advance(chrono::Duration::hours(1));
    let later = sync.reconcile().unwrap();
    assert_eq!((later.repaired, later.errors), (1, 1), "ended now, refused at open: {later:?}");
    assert_eq!(journaled_exports(&clinic), 0);
    assert!(sync.source_info(1).unwrap().external_id.is_some());
}

/// Makes every insert into NanoPix's `Patient` table fail, or lets them through again, so an
/// export's repair fails until told otherwise.
fn block_nanopix_inserts(clinic: &Clinic, blocked: bool) {
    let sql = if blocked {
        "CREATE TRIGGER block_inserts BEFORE INSERT ON Patient BEGIN SELECT RAISE(ABORT, 'blocked'); END"
    } else {
        "DROP TRIGGER block_inserts"
    };
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(sql).unwrap();
}

/// Adds `stuck` patients to `clinic`, reconciles it on a handle without automatic work, then
/// leaves every unlinked patient's export in the journal (see [`leave_exports_stuck`]). Returns
/// the handle and the ids reserved, by patient.
fn with_stuck_exports(clinic: &Clinic, stuck: &[(&str, &str, &str)]) -> (NanoPixSync, Vec<String>) {
    for (given, family, born) in stuck {
        clinic.add_dentaltid(given, family, Some(born));
    }
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let reserved = leave_exports_stuck(clinic, &sync);
    (sync, reserved)
}

/// Has `export_existing` on `sync` leave every unlinked patient's export in the journal, NanoPix
/// refusing inserts (still refused on return); returns the ids reserved, by patient.
fn leave_exports_stuck(clinic: &Clinic, sync: &NanoPixSync) -> Vec<String> {
    block_nanopix_inserts(clinic, true);
    sync.export_existing().unwrap();
    let sql = "SELECT external_id FROM nanopix_sync_exports ORDER BY patient_id";
    clinic.dentaltid_rows(sql, |r| r.get(0))
}

/// Runs SQL on the DentalTID database, as DentalTID itself would.
fn edit_dentaltid(clinic: &Clinic, sql: &str) {
    edit_dentaltid_at(&clinic.dentaltid, sql);
}

/// Runs SQL on the DentalTID database at `dentaltid`, as DentalTID itself would.
fn edit_dentaltid_at(dentaltid: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(dentaltid).unwrap().execute_batch(sql).unwrap();
}

/// Opens and reconciles; checks that the export of patient 1 ended on the row it wrote at
/// `reserved`: one NanoPix row and folder, no second export, nothing imported back.
fn assert_export_ended_on(clinic: &Clinic, reserved: &str) {
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!(sync.source_info(1).unwrap().external_id.as_deref(), Some(reserved));
    assert_eq!((report.imported, report.exported), (0, 0), "nothing imported back: {report:?}");
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, vec![2], "the fixture and the one export");
    assert!(clinic.root.join(reserved).is_dir());
    let patients: Vec<i64> = clinic.dentaltid_rows("SELECT COUNT(*) FROM patients", |r| r.get(0));
    assert_eq!(patients, vec![7], "the six samples and the fixture");
}

#[test]
fn a_name_corrected_before_the_repair_ends_the_export_on_its_first_row() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    edit_dentaltid(&clinic, "UPDATE patients SET familyName = 'Benalli', name = 'Aminah' WHERE id = 1");
    assert_export_ended_on(&clinic, &reserved);
}

/// An export cut short right after its row; the X-ray assistant then corrects the birth date on
/// that row in NanoPix. Its creation second and names still hold what the export wrote: the
/// repair ends the export on it and writes no second row.
#[test]
fn a_birth_date_corrected_in_nanopix_before_the_repair_ends_the_export_on_its_first_row() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    let nanopix = common::another_program(&clinic.nanopix_db());
    nanopix.execute("UPDATE Patient SET birthdate = '1985-03-21' WHERE id = ?1", [&reserved]).unwrap();
    assert_export_ended_on(&clinic, &reserved);
}

/// An export cut short before its row; the receptionist then corrects the patient's names and
/// birth date, and the repair at the next start, which writes her row as she is now, is cut
/// short in turn right after that row. The journal holds the values the repair wrote: the start
/// after that ends the export on that row, also with auto-linking off, and never writes her a
/// second NanoPix patient.
#[test]
fn a_repair_cut_short_after_writing_a_corrected_patient_ends_the_export_on_that_row() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "journal");
    let corrected = "familyName = 'Benalli', name = 'Aminah', dateOfBirth = '1985-03-21T00:00:00.000'";
    edit_dentaltid(&clinic, &format!("UPDATE patients SET {corrected} WHERE id = 1"));
    crash_export_after(&clinic, "row");
    assert_eq!(nanopix_row(&clinic, &reserved)[0].1, "Benalli", "the repair wrote her row as she is now");

    let mut config = clinic.config_without_automatic_work();
    config.auto_link = false;
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(1).unwrap().external_id, Some(reserved.clone()));
    assert_eq!(common::nanopix_ids_named(&clinic, "Aminah", "Benalli"), [reserved], "NanoPix holds her once");
}

#[test]
fn a_birth_date_nanopix_reads_as_unknown_still_ends_the_export_on_its_first_row() {
    let clinic = Clinic::new("v29");
    edit_dentaltid(&clinic, "UPDATE patients SET dateOfBirth = '1800-03-12T00:00:00.000' WHERE id = 1");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    let written = nanopix_row(&clinic, &reserved);
    assert_eq!(written[0].3.as_deref(), Some("1800-03-12"));
    assert_export_ended_on(&clinic, &reserved);
}

#[test]
fn a_nanopix_without_first_name_or_birthdate_still_ends_the_export_on_its_first_row() {
    assert_export_ended_on_its_first_row_without(&["first_name", "birthdate"]);
}

/// A NanoPix whose `Patient` has no `created_datetime`: the repair tells the export's row by
/// the values it wrote alone, ends the export on it and writes no second row.
#[test]
fn a_nanopix_without_created_datetime_still_ends_the_export_on_its_first_row() {
    assert_export_ended_on_its_first_row_without(&["created_datetime"]);
}

/// Drops `columns` from NanoPix's `Patient`, cuts an export short right after its row, and
/// checks that the repair ends the export on that row.
fn assert_export_ended_on_its_first_row_without(columns: &[&str]) {
    let clinic = Clinic::new("v29");
    let drops: String = columns.iter().map(|column| format!("ALTER TABLE Patient DROP COLUMN {column};")).collect();
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(&drops).unwrap();
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    assert_export_ended_on(&clinic, &reserved);
}

#[test]
fn a_journal_row_of_an_older_version_still_ends_the_export_on_its_first_row() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    edit_dentaltid(
        &clinic,
        "UPDATE nanopix_sync_exports
         SET written_last_name = NULL, written_first_name = NULL, written_birthdate = NULL, written_created = NULL",
    );
    assert_export_ended_on(&clinic, &reserved);
}

/// An export of an older version, whose journal row records no values, cut short before its
/// row; NanoPix then gave its reserved id to her twin sister (the same family name and birth
/// date). The repair tells her sister's row from hers by the first name: it never links the
/// patient to it, and exports her again under a new id.
#[test]
fn a_journal_row_of_an_older_version_never_ends_the_export_on_her_twin_sisters_row() {
    let clinic = Clinic::new("v29");
    let reserved = &reserved_by_an_export_crashed_after(&clinic, "journal");
    edit_dentaltid(
        &clinic,
        "UPDATE nanopix_sync_exports
         SET written_last_name = NULL, written_first_name = NULL, written_birthdate = NULL, written_created = NULL",
    );
    clinic.add_nanopix(reserved, "Benali", "Yasmine", Some("1985-03-12"));

    let sync = clinic.open();
    let external = sync.source_info(1).unwrap().external_id.expect("exported again at open");
    assert_ne!(&external, reserved, "never linked to her sister's row");
    assert_eq!(nanopix_row(&clinic, &external)[0].2.as_deref(), Some("Amina"), "the export has its own row");
    assert_eq!(nanopix_row(&clinic, reserved)[0].2.as_deref(), Some("Yasmine"), "left as it was");
}

#[test]
fn a_nanopix_patient_at_the_id_of_a_deleted_patients_export_is_imported_and_never_deleted() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "journal");
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    clinic.add_nanopix(&reserved, "Stranger", "Someone", Some("1970-01-01"));

    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.repaired), (1, 0), "the other patient: {report:?}");
    let imported: Vec<(String, String)> = clinic
        .dentaltid_rows(&format!("SELECT familyName, source FROM patients WHERE external_id = '{reserved}'"), |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    assert_eq!(imported, [("Stranger".to_owned(), "nanopix".to_owned())]);
    assert!(common::drain(&sync).iter().all(|e| !matches!(e.kind, EventKind::DeleteRequested { .. })));
    let refused = sync.delete_in_nanopix(&reserved);
    assert!(matches!(refused, Err(Error::DeleteNotRequested(ref id)) if *id == reserved), "{refused:?}");
    assert_eq!(nanopix_row(&clinic, &reserved).len(), 1, "the other patient is left in NanoPix");
}

/// Opens and reconciles; checks that a `delete_requested` is sent for patient 1 at `external_id`
/// and that `delete_in_nanopix` then removes its row and folder.
fn assert_deletion_asked_and_done(clinic: &Clinic, external_id: &str) {
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let asked = common::drain(&sync).into_iter().find_map(|e| match e.kind {
        EventKind::DeleteRequested { patient_id, external_id } => Some((patient_id, external_id)),
        _ => None,
    });
    assert_eq!(asked, Some((1, external_id.to_owned())));
    sync.delete_in_nanopix(external_id).unwrap();
    assert!(nanopix_row(clinic, external_id).is_empty());
    assert!(!clinic.root.join(external_id).exists());
}

#[test]
fn a_patient_deleted_after_a_crash_after_the_row_gets_its_folder_and_a_delete_request() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    let sync = clinic.open();
    assert!(clinic.root.join(&reserved).is_dir(), "NanoPix's files are whole again");
    assert!(clinic.dentaltid_rows("SELECT 1 FROM nanopix_sync_exports", |r| r.get::<_, i64>(0)).is_empty());
    drop(sync);
    assert_deletion_asked_and_done(&clinic, &reserved);
}

#[test]
fn a_patient_deleted_while_its_nanopix_folder_is_missing_gets_a_delete_request() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let external_id = sync.export_patient(1).unwrap().to_string();
    std::fs::remove_dir(clinic.root.join(&external_id)).unwrap();
    assert_eq!(sync.reconcile().unwrap().removed, 1);
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    drop(sync);
    assert_deletion_asked_and_done(&clinic, &external_id);
}

/// Gives NanoPix a patient at every second an export at the clinic clock's time may take: the
/// day before the last two hours, those two hours, and the current second and the next two.
fn take_every_id_an_export_may_take(clinic: &Clinic) {
    let sql = "WITH RECURSIVE second(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM second WHERE n < 93602)
        INSERT OR IGNORE INTO Patient(id, last_name)
        SELECT strftime('%Y%m%d_%H%M%S', '2025-01-21 08:00:00', '+' || n || ' seconds'), 'Filler' FROM second";
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn a_repair_that_finds_no_new_id_keeps_the_export_in_the_journal() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "journal");
    clinic.add_nanopix(&reserved, "Stranger", "Someone", Some("1970-01-01"));
    take_every_id_an_export_may_take(&clinic);
    let sync = clinic.open();
    let failed = common::drain(&sync).into_iter().any(|e| matches!(e.kind, EventKind::SyncError { .. }));
    assert!(failed, "the repair reports that it found no free id");
    drop(sync);
    let journal: Vec<(i64, String)> = clinic
        .dentaltid_rows("SELECT patient_id, external_id FROM nanopix_sync_exports", |r| Ok((r.get(0)?, r.get(1)?)));
    assert_eq!(journal, [(1, reserved.clone())], "the export is still due");

    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute_batch("DELETE FROM Patient WHERE last_name = 'Filler'").unwrap();
    let sync = clinic.open();
    let external = sync.source_info(1).unwrap().external_id.expect("exported once an id is free");
    assert_eq!(reserved, "20250122_100000", "the crashed export reserved the clinic clock's second");
    assert_eq!(external, "20250122_100001", "the stranger holds that one: the next second");
    assert_eq!(nanopix_row(&clinic, &external)[0].1, "Benali");
}

/// Removes a NanoPix patient's row and empty folder, as a NanoPix user deleting it would.
fn remove_from_nanopix(clinic: &Clinic, id: &str) {
    let conn = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute("DELETE FROM Patient WHERE id = ?1", [id]).unwrap();
    std::fs::remove_dir(clinic.root.join(id)).unwrap();
}

#[test]
fn an_id_dentaltid_still_holds_is_never_given_again() {
    let clinic = Clinic::new("v29");
    let first = clinic.open().export_patient(1).unwrap().to_string();
    remove_from_nanopix(&clinic, &first);
    let second = clinic.open().export_patient(2).unwrap().to_string();
    assert_ne!(second, first, "patient 1 still holds it");
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    let third = clinic.open().export_patient(3).unwrap().to_string();
    assert_ne!(third, first, "the link row of deleted patient 1 still holds it");
    assert_ne!(third, second);
    let holders: Vec<i64> = clinic.dentaltid_rows(
        &format!("SELECT COUNT(*) FROM patients WHERE external_id IN ('{first}', '{second}', '{third}')"),
        |r| r.get(0),
    );
    assert_eq!(holders, [2], "patients 2 and 3, one id each");
}

/// A patient exported by `export_existing`, then deleted in NanoPix (row and folder) and in
/// DentalTID: her link row still holds her id. The next `export_existing` (a run of exports, which
/// reads the links its own way) never gives that id to a patient created in the same second.
#[test]
fn export_existing_never_gives_again_the_id_a_deleted_patients_link_row_holds() {
    let clinic = Clinic::new("v29");
    add_created(&clinic, "Deleted", "2024-06-01T09:00:00.000");
    clinic.open().export_existing().unwrap();
    assert_eq!(ids_given(&clinic, "Deleted"), ["20240601_090000"]);
    remove_from_nanopix(&clinic, "20240601_090000");
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE familyName = 'Deleted'");
    add_created(&clinic, "SameSecond", "2024-06-01T09:00:00.000");
    clinic.open().export_existing().unwrap();
    assert_eq!(ids_given(&clinic, "SameSecond"), ["20240601_090001"], "the deleted patient's link row holds 090000");
}

#[test]
fn an_export_now_takes_the_current_second_or_the_next_two_then_a_past_id() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let ids: Vec<String> = (1..=4).map(|patient| sync.export_patient(patient).unwrap().to_string()).collect();
    let past = "the next seconds are left to NanoPix's own new patients: the first free second a day before the last two hours";
    assert_eq!(ids, ["20250122_100000", "20250122_100001", "20250122_100002", "20250121_080000"], "{past}");
    clinic.clock.set(common::clinic_morning() - chrono::Duration::hours(1));
    assert_eq!(sync.export_patient(5).unwrap().to_string(), "20250122_090000", "the clock went back an hour");
    clinic.clock.set(common::clinic_morning() + chrono::Duration::minutes(5));
    assert_eq!(sync.export_patient(6).unwrap().to_string(), "20250122_100500", "the clock moved on");
}

/// A clock a few days ahead, then put right (by hand, or by the network's time): once the
/// current second and the next two are taken, an export still takes the first free second a day
/// before the last two hours of the clock as it is now, not `no_free_id` because an export took
/// a past id while the clock was wrong.
#[test]
fn an_export_after_the_clock_is_put_back_days_still_finds_a_past_id() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    clinic.clock.set(common::clinic_morning() + chrono::Duration::days(3));
    let ahead: Vec<String> = (1..=4).map(|patient| sync.export_patient(patient).unwrap().to_string()).collect();
    assert_eq!(ahead[3], "20250124_080000", "a past id of the clock that was wrong");
    clinic.clock.set(common::clinic_morning());
    let (nadia, lina) =
        (clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09")), clinic.add_dentaltid("Lina", "Haddad", None));
    let export = |patient| sync.export_patient(patient).map(|id| id.to_string()).map_err(|error| error.to_string());
    let ids: Vec<Result<String, String>> = [5, 6, nadia, lina].into_iter().map(export).collect();
    let expected = ["20250122_100000", "20250122_100001", "20250122_100002", "20250121_080000"];
    assert_eq!(ids, expected.map(|id| Ok(id.to_owned())), "the clock put right");
}

/// The fixture's one NanoPix patient, with an image: what a deletion in DentalTID leaves behind.
const LEFT_BEHIND: &str = "20250121_152638";

/// A clinic whose only NanoPix patient, imported, was deleted in DentalTID: the delete is asked
/// for, and NanoPix keeps the patient (it holds an image).
fn clinic_with_a_patient_left_behind() -> (Clinic, NanoPixSync) {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    delete_the_imported_patient(&clinic);
    sync.reconcile().unwrap();
    (clinic, sync)
}

/// Deletes in DentalTID the patient the fixture's NanoPix patient, [`LEFT_BEHIND`], was imported as.
fn delete_the_imported_patient(clinic: &Clinic) {
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE external_id = ?1", [LEFT_BEHIND]).unwrap();
}

/// Adds the fixture's NanoPix patient to DentalTID again, with the names and birth date it was
/// imported with.
fn add_the_deleted_patient_again(clinic: &Clinic) -> i64 {
    clinic.add_dentaltid("FSFFS", "DSSSSFSFS", Some("2025-01-21"))
}

/// `export_patient` of a patient added again after its deletion links it to the NanoPix patient
/// the deleted one left behind; a near miss is exported.
#[test]
fn export_patient_gives_a_patient_added_again_the_nanopix_patient_left_behind() {
    let (clinic, sync) = clinic_with_a_patient_left_behind();
    let near_miss = clinic.add_dentaltid("FSFFS", "DSSSFSFS", Some("2025-01-21"));
    assert_ne!(sync.export_patient(near_miss).unwrap().to_string(), LEFT_BEHIND);
    let again = clinic.add_dentaltid(" fsffs", "DSSSSFSFS", Some("2025-01-21"));
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    let linked = common::drain(&sync)
        .into_iter()
        .any(|e| matches!(e.kind, EventKind::PatientLinked { patient_id, .. } if patient_id == again));
    assert!(linked);
}

/// Deleted and added again at once, with no reconcile between: `export_patient` still sees the
/// deletion first, and gives the new patient the NanoPix patient left behind.
#[test]
fn export_patient_right_after_a_deletion_gives_the_nanopix_patient_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    delete_the_imported_patient(&clinic);
    let again = add_the_deleted_patient_again(&clinic);
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    assert_eq!(clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0)), [1]);
}

/// The delete requests among `events`.
fn delete_requests(events: Vec<nanopix_sync::Event>) -> Vec<EventKind> {
    events.into_iter().map(|e| e.kind).filter(|kind| matches!(kind, EventKind::DeleteRequested { .. })).collect()
}

/// Deleted and added again at once: the call that sees the deletion and gives the new patient
/// the NanoPix patient back asks nobody to delete that NanoPix patient.
#[test]
fn export_patient_asks_for_no_delete_of_the_nanopix_patient_it_gives_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    delete_the_imported_patient(&clinic);
    let again = add_the_deleted_patient_again(&clinic);
    common::drain(&sync);
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    assert_eq!(delete_requests(common::drain(&sync)), []);
}

/// The same, found by a reconcile with Live Sync on: the patient added again is given its
/// NanoPix patient back, and no delete of it is asked for.
#[test]
fn a_reconcile_asks_for_no_delete_of_the_nanopix_patient_it_gives_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    delete_the_imported_patient(&clinic);
    let again = add_the_deleted_patient_again(&clinic);
    common::drain(&sync);
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(again).unwrap().external_id.as_deref(), Some(LEFT_BEHIND));
    assert_eq!(delete_requests(common::drain(&sync)), []);
}

/// A deletion with nobody added again still asks for the delete, once.
#[test]
fn a_deletion_found_while_exporting_another_patient_still_asks_for_the_delete() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let patient_id =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250121_152638'", |r| r.get(0))[0];
    delete_the_imported_patient(&clinic);
    let other = clinic.add_dentaltid("Amina", "Haddad", Some("1985-03-04"));
    common::drain(&sync);
    assert_ne!(sync.export_patient(other).unwrap().to_string(), LEFT_BEHIND);
    let external_id = LEFT_BEHIND.to_string();
    assert_eq!(delete_requests(common::drain(&sync)), [EventKind::DeleteRequested { patient_id, external_id }]);
}

/// A patient exported by hand, deleted by mistake and added again at once: the export of the
/// new patient still sees the deletion first and gives it its NanoPix patient back.
#[test]
fn a_patient_exported_by_hand_deleted_and_added_again_gets_its_nanopix_patient_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let first = clinic.add_dentaltid("Amina", "Haddad", Some("1985-03-04"));
    let exported = sync.export_patient(first).unwrap().to_string();
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [first]).unwrap();
    let again = clinic.add_dentaltid("Amina", "Haddad", Some("1985-03-04"));
    assert_eq!(sync.export_patient(again).unwrap().to_string(), exported);
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE last_name = 'Haddad'", |r| r.get(0));
    assert_eq!(rows, [1]);
}

/// Two patients added again alike could each be the deleted one: neither gets its NanoPix
/// patient, and each is exported.
#[test]
fn export_patient_gives_the_nanopix_patient_left_behind_to_no_one_of_two_alike() {
    let (clinic, sync) = clinic_with_a_patient_left_behind();
    let twins = [(); 2].map(|()| add_the_deleted_patient_again(&clinic));
    for twin in twins {
        assert_ne!(sync.export_patient(twin).unwrap().to_string(), LEFT_BEHIND);
    }
}

/// Deleted by mistake twice and added a third time: the NanoPix patient left behind is still
/// given back, though two deletions asked for its delete.
#[test]
fn a_patient_deleted_twice_gets_the_nanopix_patient_left_behind_back_the_third_time() {
    let (clinic, sync) = clinic_with_a_patient_left_behind();
    let again = add_the_deleted_patient_again(&clinic);
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [again]).unwrap();
    sync.reconcile().unwrap();
    let third = add_the_deleted_patient_again(&clinic);
    assert_eq!(sync.export_patient(third).unwrap().to_string(), LEFT_BEHIND);
    assert_eq!(clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0)), [1]);
}

/// A NanoPix patient left behind and given back is held again: another patient with its names,
/// added later (the one given it back has had its name corrected since), is exported.
#[test]
fn a_nanopix_patient_left_behind_is_given_back_to_one_patient_only() {
    let (clinic, sync) = clinic_with_a_patient_left_behind();
    let again = add_the_deleted_patient_again(&clinic);
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute("UPDATE patients SET name = 'Fsffs-Corrected' WHERE id = ?1", [again]).unwrap();
    let other = add_the_deleted_patient_again(&clinic);
    assert_ne!(sync.export_patient(other).unwrap().to_string(), LEFT_BEHIND);
}

/// Giving a NanoPix patient back leaves nothing unsettled: a folder an export made afterwards,
/// then removed, is reported by the next reconcile.
#[test]
fn giving_a_nanopix_patient_back_hides_no_later_folder_removal() {
    let (clinic, sync) = clinic_with_a_patient_left_behind();
    let again = add_the_deleted_patient_again(&clinic);
    assert_eq!(sync.export_patient(again).unwrap().to_string(), LEFT_BEHIND);
    clinic.clock.advance(chrono::Duration::minutes(1));
    let exported = sync.export_patient(1).unwrap().to_string();
    std::fs::remove_dir(clinic.root.join(&exported)).unwrap();
    common::drain(&sync);
    assert_eq!(sync.reconcile().unwrap().removed, 1);
}

/// The system clock is always inside a second: the three seconds an export may take run from
/// the clock's second, not from the clock, so the fourth export still takes a past id.
#[test]
fn an_export_now_inside_a_second_still_takes_at_most_three_seconds() {
    let clinic = Clinic::new("v29");
    clinic.clock.set(common::clinic_morning() + chrono::Duration::milliseconds(500));
    let sync = clinic.open();
    let ids: Vec<String> = (1..=4).map(|patient| sync.export_patient(patient).unwrap().to_string()).collect();
    assert_eq!(ids, ["20250122_100000", "20250122_100001", "20250122_100002", "20250121_080000"]);
}

/// An export never gives an id past 9999-12-31 23:59:59: the next second's would have a year of
/// five digits, no NanoPix id, yet it would name a row, a folder and a DentalTID patient's link.
#[test]
fn an_export_at_the_end_of_year_9999_gives_only_valid_ids() {
    let clinic = Clinic::new("v29");
    let last_second = NanoPixId::parse("99991231_235959").unwrap().datetime();
    clinic.clock.set(last_second - chrono::Duration::seconds(1));
    let sync = clinic.open();
    let ids: Vec<String> = (1..=3).map(|patient| sync.export_patient(patient).unwrap().to_string()).collect();
    assert_eq!(ids[..2], ["99991231_235958", "99991231_235959"]);
    assert!(NanoPixId::parse(&ids[2]).is_ok_and(|id| id.datetime() < last_second), "{ids:?}");
}

/// Adds an image of NanoPix patient `id` as NanoPix leaves it behind when it deletes the patient
/// without it (its own foreign keys off): a `Study` row naming an id no `Patient` row has.
fn leave_image_behind(clinic: &Clinic, id: &str) {
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    let sql = "INSERT INTO Study(patient_id, modality, image_name, image_type) VALUES (?1, 'IO', ?1, 'IOSB')";
    nanopix.execute(sql, [id]).unwrap();
}

#[test]
fn an_export_now_never_takes_the_id_of_images_left_behind() {
    let clinic = Clinic::new("v29");
    // At the current second, by a patient NanoPix created and deleted in the first pass of an
    // hour the clock then went back over.
    leave_image_behind(&clinic, "20250122_100000");
    let sync = clinic.open();
    assert_eq!(sync.export_patient(1).unwrap().to_string(), "20250122_100001");
    assert_eq!(sync.source_info(1).unwrap().image_count, 0);
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    nanopix.execute("INSERT INTO Report(patient_id) VALUES ('20250122_100002')", []).unwrap();
    let later = "images and reports added since the last export are seen too";
    assert_eq!(sync.export_patient(2).unwrap().to_string(), "20250121_080000", "{later}");
}

#[test]
fn an_export_now_never_takes_the_id_that_records_of_another_nanopix_table_left_behind_name() {
    let clinic = Clinic::new("v29");
    // A NanoPix table of implants that names patients by id, whose rows NanoPix left behind when
    // it deleted the patient at the current second (its own foreign keys off).
    rusqlite::Connection::open(clinic.nanopix_db())
        .unwrap()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE Implant (pk INTEGER PRIMARY KEY, tooth VARCHAR(250),
                 patient_id VARCHAR REFERENCES Patient(id) ON UPDATE CASCADE ON DELETE CASCADE);
             INSERT INTO Implant (tooth, patient_id) VALUES ('36', '20250122_100000');",
        )
        .unwrap();
    let sync = clinic.open();
    assert_eq!(sync.export_patient(1).unwrap().to_string(), "20250122_100001", "no implant of another person");
}

#[test]
fn an_export_looks_new_ids_up_in_dentaltid_by_index() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let indexes = || {
        clinic.dentaltid_rows(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'nanopix_sync_%' ORDER BY name",
            |r| r.get::<_, String>(0),
        )
    };
    let own = ["nanopix_sync_links_delete_requested", "nanopix_sync_links_external_id"];
    assert_eq!(indexes(), own, "Live Sync is off and nothing was exported yet");
    sync.export_patient(1).unwrap();
    let expected = [own[0], own[1], "nanopix_sync_patients_date_of_birth", "nanopix_sync_patients_external_id"];
    assert_eq!(indexes(), expected);
    let plans: Vec<String> = clinic.dentaltid_rows(
        "EXPLAIN QUERY PLAN SELECT 1 FROM patients WHERE external_id = '20250122_100000' LIMIT 1",
        |r| r.get(3),
    );
    assert!(plans.iter().any(|plan| plan.contains("nanopix_sync_patients_external_id")), "{plans:?}");
}

#[test]
fn exporting_a_patient_whose_export_is_pending_ends_that_export() {
    for all_at_once in [false, true] {
        let clinic = Clinic::new("v29");
        let reserved = reserved_by_an_export_crashed_after(&clinic, "journal");
        block_nanopix_inserts(&clinic, true);
        let sync = clinic.open();
        block_nanopix_inserts(&clinic, false);
        if all_at_once {
            assert_eq!(sync.export_existing().unwrap(), 6, "patient 1's export, ended by the repair that runs first");
        } else {
            assert_eq!(sync.export_patient(1).unwrap().to_string(), reserved);
        }
        assert_eq!(sync.source_info(1).unwrap().external_id.as_deref(), Some(reserved.as_str()), "{all_at_once}");
        assert!(clinic.root.join(&reserved).is_dir());
        assert_eq!(nanopix_row(&clinic, &reserved).len(), 1);
        assert!(clinic.dentaltid_rows("SELECT 1 FROM nanopix_sync_exports", |r| r.get::<_, i64>(0)).is_empty());
    }
}

#[test]
fn a_row_without_birth_date_whose_names_a_nanopix_user_swapped_before_the_repair_is_still_the_exports_own() {
    let clinic = Clinic::new("v29");
    edit_dentaltid(&clinic, "UPDATE patients SET dateOfBirth = NULL WHERE id = 1");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    let swap = "UPDATE Patient SET last_name = first_name, first_name = last_name WHERE id = ?1";
    assert_eq!(nanopix.execute(swap, [&reserved]).unwrap(), 1);
    assert_export_ended_on(&clinic, &reserved);
}

#[test]
fn a_row_a_nanopix_user_corrected_before_the_repair_is_still_the_exports_own() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "row");
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute("UPDATE Patient SET first_name = 'Aminah' WHERE id = ?1", [&reserved]).unwrap();
    let sync = clinic.open();
    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 0, "nothing imported back");
    let benalis: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Benali'", |r| r.get(0));
    assert_eq!(benalis, std::slice::from_ref(&reserved), "one NanoPix row for Amina Benali");
    assert_eq!(sync.source_info(1).unwrap().external_id, Some(reserved.clone()));
    assert!(clinic.root.join(&reserved).is_dir());
}

#[test]
fn a_reserved_id_whose_folder_appeared_meanwhile_is_not_used() {
    let clinic = Clinic::new("v29");
    let reserved = reserved_by_an_export_crashed_after(&clinic, "journal");
    let folder = clinic.root.join(&reserved);
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("20250121_153202_thumbnail.jpg"), b"another patient's image").unwrap();
    let sync = clinic.open();
    let linked = sync.source_info(1).unwrap().external_id.expect("exported at another id");
    assert_ne!(linked, reserved);
    assert!(clinic.root.join(&linked).is_dir());
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1, "the other folder is left alone");
}

#[test]
fn exporting_a_patient_nanopix_gained_since_the_last_sync_links_it_instead() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let patient_id = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    assert_eq!(sync.export_patient(1).unwrap().to_string(), "20250122_100000", "nothing new in NanoPix");
    clinic.add_nanopix("20250122_093000", "Cherif", "Nadia", Some("1992-02-14"));
    assert_eq!(sync.export_patient(patient_id).unwrap().to_string(), "20250122_093000");
    let nanopix: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Cherif'", |r| r.get(0));
    assert_eq!(nanopix, ["20250122_093000"], "one NanoPix row for Nadia Cherif");
}

#[test]
fn exporting_a_patient_nanopix_added_below_the_last_pk_links_it_instead() {
    let clinic = Clinic::new("v29");
    // Once a row holds the largest `pk`, SQLite gives new rows random, smaller ones.
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("UPDATE Patient SET pk = 9223372036854775807").unwrap();
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().imported, 1);
    clinic.add_nanopix("20250122_093000", "Benali", "Amina", Some("1985-03-12"));
    assert_eq!(sync.export_patient(1).unwrap().to_string(), "20250122_093000", "Amina Benali is patient 1");
    let nanopix: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Benali'", |r| r.get(0));
    assert_eq!(nanopix, ["20250122_093000"], "one NanoPix row for Amina Benali");
}

#[test]
fn exporting_a_patient_nanopix_already_holds_links_it_instead() {
    for all_at_once in [false, true] {
        let clinic = Clinic::new("v29");
        let patient_id = clinic.add_dentaltid("FSFFS", "DSSSSFSFS", Some("2025-01-21"));
        let sync = clinic.open();
        if all_at_once {
            assert_eq!(sync.export_existing().unwrap(), 6, "the six sample patients");
        } else {
            assert_eq!(sync.export_patient(patient_id).unwrap().to_string(), "20250121_152638");
        }
        sync.reconcile().unwrap();
        let nanopix: Vec<String> =
            clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'DSSSSFSFS'", |r| r.get(0));
        assert_eq!(nanopix, ["20250121_152638"], "{all_at_once}: one NanoPix row");
        let dentaltid: Vec<i64> =
            clinic.dentaltid_rows("SELECT id FROM patients WHERE familyName = 'DSSSSFSFS'", |r| r.get(0));
        assert_eq!(dentaltid, [patient_id], "{all_at_once}: one DentalTID patient");
        assert_eq!(sync.source_info(patient_id).unwrap().external_id.as_deref(), Some("20250121_152638"));
    }
}

#[test]
fn export_existing_never_takes_the_id_of_images_left_behind_nor_a_bogus_creation_time() {
    let clinic = Clinic::new("v29");
    leave_image_behind(&clinic, "20250110_091500");
    edit_dentaltid(&clinic, "UPDATE patients SET createdAt = '0000-01-01T00:00:00.000' WHERE id = 2");
    let sync = clinic.open();
    sync.export_existing().unwrap();
    let id_of = |patient| sync.source_info(patient).unwrap().external_id.unwrap();
    assert_eq!(id_of(1), "20250110_091501", "the second a deleted patient's images still name is taken");
    assert_eq!(sync.source_info(1).unwrap().image_count, 0);
    let undated = "a creation time before 2000 is no real one: the first free second a day before the last two hours";
    assert_eq!(id_of(2), "20250121_080000", "{undated}");
}

/// Adds a DentalTID patient named `last`, created at `created` (as DentalTID stores it).
fn add_created(clinic: &Clinic, last: &str, created: &str) {
    let sql = "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                                    createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
               VALUES ('P', ?1, 0, NULL, '', '', '', 0.0, ?2, 0, 'EmergencySeverity.low', '', '', 0)";
    rusqlite::Connection::open(&clinic.dentaltid).unwrap().execute(sql, (last, created)).unwrap();
}

/// A panic in the middle of `export_existing` (a bug: here the clock breaks once the first rows
/// are written ahead) fails that call and ends its run of exports: the next `export_patient` records its
/// link and reports the export at once, instead of leaving its link to a run that is over.
#[test]
fn an_export_after_a_panic_in_a_run_of_exports_records_its_link() {
    let (clinic, clock, sync) = twenty_old_on_a_hooked_clock("Karim");
    once_rows_are_written_ahead(&clock, &clinic, Box::new(|| panic!("the clock broke")));
    let failed = sync.export_existing();
    assert!(clock.ran() && matches!(failed, Err(Error::Internal(_))), "{failed:?}");
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    common::drain(&sync);
    let external_id = sync.export_patient(nadia).unwrap().to_string();
    let held: Vec<Option<String>> =
        clinic.dentaltid_rows(&format!("SELECT external_id FROM patients WHERE id = {nadia}"), |r| r.get(0));
    assert_eq!(held, [Some(external_id.clone())], "her link is recorded");
    let reported = common::drain(&sync).into_iter().any(|event| {
        matches!(event.kind, EventKind::PatientExported { patient_id, external_id: ref id, .. }
            if patient_id == nadia && *id == external_id)
    });
    assert!(reported, "her export is reported");
    sync.reconcile().unwrap();
    assert_eq!(journaled_exports(&clinic), 0, "the exports the run left are ended");
    let linked = clinic
        .dentaltid_rows("SELECT count(*) FROM patients WHERE name = 'Karim' AND external_id IS NOT NULL", |r| {
            r.get::<_, i64>(0)
        });
    let written =
        clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE first_name = 'Karim'", |r| r.get::<_, i64>(0));
    assert!(linked[0] > 0 && linked == written, "each row written linked once: {linked:?} {written:?}");
}

/// Adds twenty DentalTID patients called `first` `Old000` to `Old019`, born on 1 January 1980 and
/// created on 1 June 2024 (as DentalTID stores them): old patients, whom only `export_existing` exports.
fn add_twenty_old(clinic: &Clinic, first: &str) {
    let sql = "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                                    createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
               VALUES (?1, ?2, 0, '1980-01-01T00:00:00.000', '', '', '', 0.0, '2024-06-01T09:00:00.000', 0,
                       'EmergencySeverity.low', '', '', 0)";
    let dentaltid = common::another_program(&clinic.dentaltid);
    for i in 0..20 {
        dentaltid.execute(sql, (first, format!("Old{i:03}"))).unwrap();
    }
}

/// The NanoPix ids DentalTID patients whose family name is like `pattern` were given, in order.
fn ids_given(clinic: &Clinic, pattern: &str) -> Vec<String> {
    let sql = "SELECT external_id FROM patients WHERE familyName LIKE ?1 ORDER BY external_id";
    let conn = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    let mut statement = conn.prepare(sql).unwrap();
    statement.query_map([pattern], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

#[test]
fn export_existing_gives_old_patients_past_ids_whatever_their_order() {
    let clinic = Clinic::new("v29");
    add_created(&clinic, "ThisMorning", "2025-01-22T07:59:30.000");
    for i in 0..100 {
        add_created(&clinic, &format!("FromPaper{i}"), "2024-06-01T09:00:00.000");
    }
    clinic.open().export_existing().unwrap();
    let from_paper = ids_given(&clinic, "FromPaper%");
    assert_eq!(from_paper.len(), 100);
    assert_eq!((from_paper[0].as_str(), from_paper[99].as_str()), ("20240601_090000", "20240601_090139"));
    assert_eq!(ids_given(&clinic, "ThisMorning"), ["20250122_075930"]);
}

/// Adds 200 DentalTID patients named `last` and a number, created at `created`, exports them
/// with `export_existing`, and returns the NanoPix ids they were given, in order.
fn export_existing_of_200_created(clinic: &Clinic, last: &str, created: &str) -> Vec<String> {
    for i in 0..200 {
        add_created(clinic, &format!("{last}{i}"), created);
    }
    clinic.open().export_existing().unwrap();
    let given = ids_given(clinic, &format!("{last}%"));
    assert_eq!(given.len(), 200);
    given
}

#[test]
fn a_burst_of_undated_exports_leaves_nanopix_the_ids_of_the_next_minutes() {
    let clinic = Clinic::new("v29");
    let undated = export_existing_of_200_created(&clinic, "Undated", "");
    assert!(undated.iter().all(|id| id.as_str() < "20250122_080000"), "all before the last two hours: {undated:?}");
    // A NanoPix user opens the new-patient form two minutes later and saves it.
    clinic.add_nanopix("20250122_100200", "Mansouri", "Yacine", None);
}

#[test]
fn export_existing_of_patients_created_this_morning_leaves_nanopix_the_ids_of_the_next_minutes() {
    let clinic = Clinic::new("v29");
    let given = export_existing_of_200_created(&clinic, "ThisMorning", "2025-01-22T09:30:00.000");
    let ahead: Vec<&String> = given.iter().filter(|id| id.as_str() > "20250122_100002").collect();
    assert!(ahead.is_empty(), "ids NanoPix gives its own patients in the next minutes: {ahead:?}");
    let near_now = given.iter().filter(|id| id.as_str() >= "20250122_100000").count();
    assert_eq!(near_now, 3, "the current second and the next two, then past ids: {given:?}");
    // A NanoPix user opens the new-patient form two minutes later and saves it.
    clinic.add_nanopix("20250122_100200", "Mansouri", "Yacine", None);
}

/// Switches Live Sync on and reconciles once, then closes; returns the configuration used, which
/// runs no watcher, so only the reconciles a test calls do work.
fn live_sync_switched_on_without_watcher(clinic: &Clinic) -> nanopix_sync::Config {
    let config = clinic.config_without_automatic_work();
    let sync = NanoPixSync::open(config.clone()).unwrap();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    config
}

#[test]
fn live_sync_catching_up_on_patients_added_while_closed_gives_them_the_ids_of_their_creation() {
    let clinic = Clinic::new("v29");
    let config = live_sync_switched_on_without_watcher(&clinic);
    // Yesterday, with the library not running, the clinic typed in two hundred patients.
    let created = |i: usize| (9 + i / 60, i % 60);
    for i in 0..200 {
        let (hour, minute) = created(i);
        add_created(&clinic, &format!("WhileClosed{i:03}"), &format!("2025-01-21T{hour:02}:{minute:02}:00.000"));
    }
    let report = NanoPixSync::open(config).unwrap().reconcile().unwrap();
    assert_eq!(report.exported, 200);
    let expected: Vec<String> = (0..200)
        .map(|i| {
            let (hour, minute) = created(i);
            format!("20250121_{hour:02}{minute:02}00")
        })
        .collect();
    assert_eq!(ids_given(&clinic, "WhileClosed%"), expected);
}

#[test]
fn live_sync_catching_up_gives_each_patient_its_creation_second_whatever_the_row_order() {
    let clinic = Clinic::new("v29");
    let config = live_sync_switched_on_without_watcher(&clinic);
    // Typed in while the library was not running, from paper records: the later one first.
    add_created(&clinic, "Later", "2025-01-21T10:00:00.000");
    add_created(&clinic, "Earlier", "2025-01-21T09:00:00.000");
    assert_eq!(NanoPixSync::open(config).unwrap().reconcile().unwrap().exported, 2);
    assert_eq!(ids_given(&clinic, "Later"), ["20250121_100000"]);
    assert_eq!(ids_given(&clinic, "Earlier"), ["20250121_090000"], "its own creation second is free");
}

#[test]
fn an_image_stored_at_the_row_of_a_deleted_one_still_keeps_exports_off_its_id() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.export_patient(1).unwrap();
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    // The fixture's one image (Study pk 1) is deleted; a walk-in saved yesterday at 09:00 is
    // X-rayed, and SQLite gives the new image the freed pk 1; then the walk-in is deleted
    // without the image (NanoPix's foreign keys off).
    nanopix
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             DELETE FROM Study WHERE pk = 1;
             INSERT INTO Patient(id, last_name, first_name) VALUES ('20250121_090000', 'Walk-in', 'Sami');
             INSERT INTO Study(patient_id, modality, image_name, image_type)
                 VALUES ('20250121_090000', 'IO', '20250121_090010', 'IOSB');
             DELETE FROM Patient WHERE id = '20250121_090000';",
        )
        .unwrap();
    let pk: Vec<i64> = clinic.nanopix_rows("SELECT pk FROM Study", |r| r.get(0));
    assert_eq!(pk, [1], "SQLite gave the new image the freed pk");
    add_created(&clinic, "Yesterday", "2025-01-21T09:00:00.000");
    sync.export_existing().unwrap();
    assert_eq!(ids_given(&clinic, "Yesterday"), ["20250121_090001"], "the second the image names is taken");
}

/// A `NanoPix.db3` that the sync opened read-only and that became writable since: the next
/// export still imports or links first the patients NanoPix gained meanwhile.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn an_export_after_nanopix_became_writable_links_the_patient_nanopix_gained_meanwhile() {
    use std::os::unix::fs::PermissionsExt;
    let clinic = Clinic::new("v29");
    let set_mode = |mode| {
        std::fs::set_permissions(clinic.nanopix_db(), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let patient = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    common::obey_file_modes_on_this_thread();
    set_mode(0o444);
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    set_mode(0o644);
    clinic.add_nanopix("20250122_093000", "Cherif", "Nadia", Some("1992-02-14"));
    assert_eq!(sync.export_patient(patient).unwrap().to_string(), "20250122_093000", "linked, not exported");
    let rows: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Cherif'", |r| r.get(0));
    assert_eq!(rows, ["20250122_093000"]);
}

/// Waits up to 10 s until the export journal holds a row; returns the id it reserved.
fn wait_for_journal(clinic: &Clinic) -> String {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reserved = clinic.dentaltid_rows("SELECT external_id FROM nanopix_sync_exports", |r| r.get(0));
        if let Some(reserved) = reserved.into_iter().next() {
            return reserved;
        }
        assert!(std::time::Instant::now() < until, "no export started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn an_export_never_links_to_a_patient_nanopix_saved_at_its_id_meanwhile() {
    let clinic = Clinic::new("v29");
    let patient = clinic.add_dentaltid("Nadia", "Cherif", None);
    let sync = clinic.open();
    sync.reconcile().unwrap();
    // NanoPix is busy writing while the export reserves its id, then saves a patient of its own
    // at that id, in the same second and also without a birth date.
    let nanopix = rusqlite::Connection::open(clinic.nanopix_db()).unwrap();
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (exported, reserved) = std::thread::scope(|scope| {
        let export = scope.spawn(|| sync.export_patient(patient));
        let reserved = wait_for_journal(&clinic);
        common::insert_nanopix_patient(&nanopix, &reserved, ("Stranger", "Someone"), None, "2025-01-22 10:00:00");
        nanopix.execute_batch("COMMIT").unwrap();
        (export.join().unwrap().unwrap().to_string(), reserved)
    });
    assert_ne!(exported, reserved, "never linked to the other patient's row");
    let cherif: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Cherif'", |r| r.get(0));
    assert_eq!(cherif, [exported], "Nadia Cherif has a row of her own");
    assert_eq!(nanopix_row(&clinic, &reserved)[0].1, "Stranger", "the other patient is left as it was");
}

/// An installation configured with patient subfolders: an export makes them inside the new
/// patient folder; once the patient is deleted in DentalTID, `delete_in_nanopix` refuses while one
/// of them holds a file, and removes the folder with its empty subfolders once it holds none.
#[test]
fn an_export_makes_the_configured_subfolders_and_the_delete_removes_them_only_empty() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.patient_subfolders = vec!["images".to_owned(), "Reports 2025".to_owned()];
    let sync = NanoPixSync::open(config).unwrap();
    let external_id = sync.export_patient(1).unwrap().to_string();
    let folder = clinic.root.join(&external_id);
    let mut made: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
    made.sort();
    assert_eq!(made, ["Reports 2025", "images"]);
    assert!(made.iter().all(|name| folder.join(name).is_dir()), "{made:?} are folders");

    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    sync.reconcile().unwrap();
    let image = folder.join("images").join("20250122_110000.iosb");
    std::fs::write(&image, b"an image").unwrap();
    let refused = sync.delete_in_nanopix(&external_id);
    assert!(matches!(refused, Err(Error::NanoPixPatientNotEmpty { files: 1, .. })), "{refused:?}");
    assert_eq!(nanopix_row(&clinic, &external_id).len(), 1, "the row stays");
    assert!(image.is_file(), "the image stays");
    std::fs::remove_file(&image).unwrap();
    sync.delete_in_nanopix(&external_id).unwrap();
    assert!(nanopix_row(&clinic, &external_id).is_empty(), "the row is deleted");
    assert!(!folder.exists(), "the folder is removed with its empty subfolders");
}

#[cfg(unix)]
#[test]
fn delete_in_nanopix_refuses_a_patient_whose_folder_is_a_link() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    let external_id = sync.export_patient(1).unwrap().to_string();
    let moved = clinic.dir.path().join("moved-images");
    std::fs::create_dir(&moved).unwrap();
    std::fs::write(moved.join("20250122_110000.iosb"), b"an image").unwrap();
    std::fs::remove_dir(clinic.root.join(&external_id)).unwrap();
    std::os::unix::fs::symlink(&moved, clinic.root.join(&external_id)).unwrap();
    edit_dentaltid(&clinic, "DELETE FROM patients WHERE id = 1");
    sync.reconcile().unwrap();
    let refused = sync.delete_in_nanopix(&external_id);
    assert!(matches!(refused, Err(Error::NanoPixPatientNotEmpty { files: 1, .. })), "{refused:?}");
    assert_eq!(nanopix_row(&clinic, &external_id).len(), 1, "the row stays");
    assert!(moved.join("20250122_110000.iosb").is_file());
}

/// NanoPix.db3 is replaced by a copy (renamed over it) that also holds Yacine, and the host's
/// `delete_in_nanopix` is refused on the new file. The export of Yacine typed into DentalTID
/// must still read the new file first, as it would without the refused delete, and link him to
/// NanoPix's Yacine: neither fail as if NanoPix kept changing, nor write him a second time.
///
/// Unix only: on Windows an open database file cannot be moved or replaced (README, "Restoring a
/// backup").
#[cfg(unix)]
#[test]
fn an_export_after_a_refused_delete_on_a_replaced_nanopix_db_links_the_patient_the_new_file_holds() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let copy = clinic.root.join("database/NanoPix.copy.db3");
    std::fs::copy(clinic.nanopix_db(), &copy).unwrap();
    common::another_program(&copy)
        .execute(
            "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime)
             VALUES ('20250122_091500', 'Mansouri', 'Yacine', '2001-05-19', '2025-01-22 09:15:00')",
            [],
        )
        .unwrap();
    std::fs::create_dir(clinic.root.join("20250122_091500")).unwrap();
    std::fs::rename(&copy, clinic.nanopix_db()).unwrap();
    let refused = sync.delete_in_nanopix("20250121_152638");
    assert!(matches!(refused, Err(Error::DeleteNotRequested(_))), "its DentalTID patient is there: {refused:?}");
    let yacine = clinic.add_dentaltid("Yacine", "Mansouri", Some("2001-05-19"));
    let exported = sync.export_patient(yacine).map(|id| id.to_string());
    assert_eq!(exported.map_err(|e| e.to_string()), Ok("20250122_091500".to_owned()));
    let yacines: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Mansouri'", |r| r.get(0));
    assert_eq!(yacines, ["20250122_091500"]);
}

/// NanoPix is reinstalled while the handle is open: a fresh `NanoPix.db3`, holding no patient
/// yet, is renamed over the old one, the patient folders left in place. The source info of the
/// fixture patient must tell what NanoPix holds now, nothing, not the old file's row and image.
#[cfg(unix)]
#[test]
fn source_info_reads_a_nanopix_db_replaced_under_the_handle() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let patient_id = sync.patients(nanopix_sync::PatientFilter::AllByExternal).unwrap()[0].id;
    assert_eq!(sync.source_info(patient_id).unwrap().image_count, 1);
    let fresh = clinic.root.join("database/NanoPix.fresh.db3");
    std::fs::copy(clinic.nanopix_db(), &fresh).unwrap();
    common::another_program(&fresh).execute_batch("DELETE FROM Study; DELETE FROM Patient;").unwrap();
    std::fs::rename(&fresh, clinic.nanopix_db()).unwrap();
    let info = sync.source_info(patient_id).unwrap();
    assert_eq!((info.image_count, info.nanopix_created.as_deref()), (0, None), "{info:?}");
}

/// The share that holds NanoPix's folder is unplugged while the handle is open. The source info
/// of a patient created in DentalTID and never linked needs nothing of NanoPix, and is read all
/// the same; that of the imported fixture patient fails, clearly, until NanoPix is back.
#[cfg(unix)]
#[test]
fn source_info_of_a_patient_never_linked_is_read_while_nanopix_is_unplugged() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let imported = sync.patients(nanopix_sync::PatientFilter::AllByExternal).unwrap()[0].id;
    clinic.unplug_nanopix();
    let amina = sync.source_info(1).map_err(|error| error.to_string()).unwrap();
    assert_eq!((amina.source.as_str(), amina.external_id, amina.folder), ("internal", None, None));
    assert_eq!((amina.link_state, amina.image_count), (None, 0));
    assert_eq!(sync.source_info(imported).map_err(|error| error.code()).unwrap_err(), "not_found");
}

/// Arms `clock` to rename a copy of `NanoPix.db3` over it (a restore) the next time the engine
/// asks the time: once an export has read NanoPix, before it writes its row.
#[cfg(unix)]
fn restore_nanopix_db_at_the_engines_ask(clock: &common::HookedClock, clinic: &Clinic) {
    let (nanopix, restored) = (clinic.nanopix_db(), clinic.root.join("database/NanoPix.restored.db3"));
    clock.arm(Box::new(move || {
        std::fs::copy(&nanopix, &restored).unwrap();
        std::fs::rename(&restored, &nanopix).unwrap();
    }));
}

/// `NanoPix.db3` is restored (a copy renamed over it) while the export of Nadia is under way,
/// before her row is written: the export must write her into the file NanoPix now uses, not
/// fail on the old one, which SQLite no longer lets anyone write.
#[cfg(unix)]
#[test]
fn an_export_writes_into_a_nanopix_db_restored_while_it_was_under_way() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    restore_nanopix_db_at_the_engines_ask(&clock, &clinic);
    let exported = sync.export_patient(nadia).map(|id| id.to_string());
    assert!(clock.ran(), "NanoPix.db3 was restored during the export");
    let written = exported.map_err(|error| error.to_string()).unwrap();
    assert_eq!(nanopix_row(&clinic, &written).len(), 1, "NanoPix's file holds her row");
}

/// The same during `export_existing`: every patient is exported into the file NanoPix now uses.
#[cfg(unix)]
#[test]
fn export_existing_writes_into_a_nanopix_db_restored_while_it_runs() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    restore_nanopix_db_at_the_engines_ask(&clock, &clinic);
    let exported = sync.export_existing().map_err(|error| error.to_string());
    assert!(clock.ran(), "NanoPix.db3 was restored during the exports");
    assert_eq!(exported, Ok(6));
    let rows: Vec<i64> = clinic.nanopix_rows("SELECT COUNT(*) FROM Patient", |r| r.get(0));
    assert_eq!(rows, [7], "the fixture patient and the six exported");
}

/// Arms `clock` to run `then` the first time the engine asks the time once the export journal
/// of the DentalTID database at `dentaltid` holds the export of patient `patient_id`.
fn once_journaled(clock: common::HookedClock, dentaltid: std::path::PathBuf, patient_id: i64, then: common::Hook) {
    let again = clock.clone();
    clock.arm(Box::new(move || {
        let sql = "SELECT count(*) FROM nanopix_sync_exports WHERE patient_id = ?1";
        let journal = rusqlite::Connection::open(&dentaltid).unwrap();
        match journal.query_row(sql, [patient_id], |r| r.get::<_, i64>(0)).unwrap() {
            0 => once_journaled(again, dentaltid, patient_id, then),
            _ => then(),
        }
    }));
}

/// NanoPix refuses the row of Amina Benali, the first patient `export_existing` takes, so the rows
/// journaled ahead with hers are not written together; as her export fails, the receptionist
/// corrects the family name of the patient after her. That patient's export must write her
/// NanoPix row as DentalTID holds her now, not as her journal row planned it before.
#[test]
fn a_patient_corrected_while_her_export_waits_its_turn_is_written_as_corrected() {
    let clinic = Clinic::new("v29");
    let block = "CREATE TRIGGER block_amina BEFORE INSERT ON Patient WHEN NEW.first_name = 'Amina'
                 BEGIN SELECT RAISE(ABORT, 'blocked'); END";
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(block).unwrap();
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    let first_name =
        clinic.dentaltid_rows("SELECT name FROM patients WHERE id = 2", |r| r.get::<_, String>(0)).remove(0);
    let dentaltid = clinic.dentaltid.clone();
    let correct =
        Box::new(move || edit_dentaltid_at(&dentaltid, "UPDATE patients SET familyName = 'Corrected' WHERE id = 2"));
    once_journaled(clock.clone(), clinic.dentaltid.clone(), 2, correct);
    let exported = sync.export_existing().map_err(|error| error.code());
    assert_eq!(exported, Ok(5), "all but Amina");
    assert!(clock.ran(), "the patient was corrected during the export");
    assert_eq!(common::nanopix_ids_named(&clinic, &first_name, "Corrected").len(), 1, "written as corrected");
    let written: Vec<i64> = clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get(0));
    assert_eq!(written, [6], "the fixture patient and the five exported");
}

#[test]
fn an_unreadable_export_cursor_is_reported_and_taken_again() {
    let clinic = Clinic::new("v29");
    // No watcher: the reconciles below, not a live pass, must meet the lost cursor and export.
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    edit_dentaltid(&clinic, "UPDATE nanopix_sync_state SET value = 'x' WHERE key = 'export_cursor'");
    let lost = sync.reconcile().unwrap();
    assert_eq!(lost.errors, 1, "the reconcile's report counts the lost cursor: {lost:?}");
    let reported = common::drain(&sync)
        .into_iter()
        .any(|e| matches!(e.kind, EventKind::SyncError { ref code, .. } if code == "export_cursor"));
    assert!(reported, "the lost cursor is reported");
    let added = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    assert_eq!(sync.reconcile().unwrap().exported, 1, "a patient added since is exported again");
    assert!(sync.source_info(added).unwrap().external_id.is_some());
}

#[test]
fn a_linked_patient_whose_external_id_dentaltid_cleared_is_never_exported_again() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Benali", "Amina", Some("1985-03-12"));
    let sync = clinic.open();
    assert_eq!(sync.reconcile().unwrap().linked, 1);
    edit_dentaltid(&clinic, "UPDATE patients SET external_id = NULL WHERE id = 1");
    let refused = sync.export_patient(1);
    assert!(
        matches!(refused, Err(Error::AlreadyLinked { ref external_id, .. }) if external_id == "20250122_091500"),
        "{refused:?}"
    );
    sync.export_existing().unwrap();
    assert_eq!(sync.reconcile().unwrap().imported, 0, "its NanoPix patient is not imported back");
    let benalis: Vec<i64> =
        clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE last_name = 'Benali'", |r| r.get(0));
    let aminas: Vec<i64> =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE familyName = 'Benali'", |r| r.get(0));
    assert_eq!((benalis, aminas), (vec![1], vec![1]), "one Amina Benali on each side");
}

/// Makes NanoPix refuse new patients for which `condition` (on `NEW`) holds, as a trigger
/// named `name` would, with a message that names no patient.
fn refuse_nanopix_inserts_when(clinic: &Clinic, name: &str, condition: &str) {
    let sql = format!(
        "CREATE TRIGGER {name} BEFORE INSERT ON Patient WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused'); END"
    );
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(&sql).unwrap();
}

#[test]
fn patients_nanopix_refuses_one_by_one_never_keep_the_others_from_being_exported() {
    let clinic = Clinic::new("v29");
    refuse_nanopix_inserts_when(&clinic, "refuse_undated", "NEW.birthdate IS NULL");
    let dated = clinic.add_dentaltid("Lina", "Saadi", Some("1991-02-03"));
    clinic.add_dentaltid("Nour", "Brahimi", None);
    let after_two_refusals = clinic.add_dentaltid("Yasmine", "Khelif", Some("1988-09-17"));
    let sync = clinic.open();
    sync.export_existing().unwrap();
    assert!(sync.source_info(dated).unwrap().external_id.is_some());
    assert!(sync.source_info(after_two_refusals).unwrap().external_id.is_some(), "tried despite the refusals before");
}

#[test]
fn an_interrupted_export_behind_exports_nanopix_keeps_refusing_is_still_repaired() {
    let clinic = Clinic::new("v29");
    refuse_nanopix_inserts_when(&clinic, "refuse_undated", "NEW.birthdate IS NULL");
    let sync = clinic.open();
    sync.set_live_sync(true).unwrap();
    clinic.add_dentaltid("Nour", "Brahimi", None);
    clinic.add_dentaltid("Sami", "Ferhat", None);
    sync.reconcile().unwrap();
    refuse_nanopix_inserts_when(&clinic, "refuse_later", "NEW.last_name = 'Later'");
    let later = clinic.add_dentaltid("Rania", "Later", Some("1990-05-06"));
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(later).unwrap().external_id, None, "refused at first");
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch("DROP TRIGGER refuse_later").unwrap();
    sync.reconcile().unwrap();
    assert!(sync.source_info(later).unwrap().external_id.is_some(), "repaired behind the two still refused");
}

#[test]
fn a_live_pass_tries_a_few_stuck_exports_in_turn_and_a_full_reconcile_tries_them_all() {
    let clinic = Clinic::new("v29");
    let given: Vec<String> = (0..20).map(|i| format!("Given{i}")).collect();
    let twenty: Vec<(&str, &str, &str)> = given.iter().map(|given| (given.as_str(), "Stuck", "1990-05-06")).collect();
    let (sync, reserved) = with_stuck_exports(&clinic, &twenty);
    assert_eq!(reserved.len(), 26, "the twenty and the six samples, each left in the journal");
    let stuck = || journaled_exports(&clinic);
    common::drain(&sync);
    // NanoPix changes, so the next export first catches up in a live pass; twice.
    let mut tried = Vec::new();
    for phone in ["0555", "0556"] {
        let change = format!("UPDATE Patient SET phone = '{phone}'");
        rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(&change).unwrap();
        assert!(sync.export_patient(1).is_err(), "NanoPix still refuses");
        let pass: Vec<i64> = common::drain(&sync)
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::SyncError { patient_id, .. } => patient_id,
                _ => None,
            })
            .collect();
        assert_eq!(pass.len(), 8, "a live pass tries eight of the stuck exports");
        tried.extend(pass);
    }
    tried.sort_unstable();
    tried.dedup();
    assert_eq!(tried.len(), 16, "the second pass takes up the next eight");
    block_nanopix_inserts(&clinic, false);
    assert_eq!(sync.reconcile().unwrap().repaired, 26, "a full reconcile ends them all");
    assert_eq!(stuck(), 0);
}

/// Nine exports NanoPix refused wait in the journal, and another program saved a stranger under
/// each one's reserved id. A live pass tries eight of them: were it to go on, it would read the
/// ninth stranger as that export's row and skip it, and once a later pass moved the export off
/// that id, that stranger would wait behind the live cursor for the next full reconcile (an hour
/// by default; an export of the same person meanwhile would give NanoPix a second one). A repair
/// that leaves its reserved id makes the pass a full reconcile instead, which decides every row.
#[test]
fn a_live_pass_whose_repair_leaves_a_reserved_id_imports_the_patient_there() {
    let clinic = Clinic::new("v29");
    let three =
        [("Given0", "Stuck", "1990-05-06"), ("Given1", "Stuck", "1990-05-06"), ("Given2", "Stuck", "1990-05-06")];
    let (sync, reserved) = with_stuck_exports(&clinic, &three);
    assert_eq!(reserved.len(), 9, "the three and the six samples, each left in the journal");
    block_nanopix_inserts(&clinic, false);
    for (i, id) in reserved.iter().enumerate() {
        clinic.add_nanopix(id, "Stranger", &format!("S{i}"), None);
    }
    block_nanopix_inserts(&clinic, true);
    for phone in ["0555", "0556"] {
        let change = format!("UPDATE Patient SET phone = '{phone}'");
        rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(&change).unwrap();
        assert!(sync.export_patient(1).is_err(), "NanoPix still refuses");
    }
    let strangers =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE familyName = 'Stranger'", |r| r.get::<_, i64>(0));
    assert_eq!(strangers, [9], "every stranger imported by the live passes");
}

/// Nine exports NanoPix refused wait in the journal, and another program saved a stranger under
/// each one's reserved id, NanoPix still refusing inserts. The live pass that catches up for the
/// next export moves eight of them off their ids, which makes it a full reconcile: that one tries
/// the ninth, not the eight again. Each refused export gets one `sync_error`, and the pass's
/// `reconciled` counts each once.
#[test]
fn a_live_pass_whose_repair_leaves_a_reserved_id_reports_each_refused_export_once() {
    let clinic = Clinic::new("v29");
    let three =
        [("Given0", "Stuck", "1990-05-06"), ("Given1", "Stuck", "1990-05-06"), ("Given2", "Stuck", "1990-05-06")];
    let (sync, reserved) = with_stuck_exports(&clinic, &three);
    block_nanopix_inserts(&clinic, false);
    for (i, id) in reserved.iter().enumerate() {
        clinic.add_nanopix(id, "Stranger", &format!("S{i}"), None);
    }
    block_nanopix_inserts(&clinic, true);
    common::drain(&sync);

    assert_refused_exports_reported_once(&sync);
}

/// Nine exports NanoPix refused wait in the journal, NanoPix still refusing inserts, and
/// NanoPix loses the row at the live cursor. The live pass that catches up for the next export
/// tries eight of them, then finds that row gone, which makes it a full reconcile: that one tries
/// the ninth, not the eight again. Each refused export gets one `sync_error`, and the pass's
/// `reconciled` counts each once.
#[test]
fn a_live_pass_that_finds_a_nanopix_row_gone_reports_each_refused_export_once() {
    let clinic = Clinic::new("v29");
    let three =
        [("Given0", "Stuck", "1990-05-06"), ("Given1", "Stuck", "1990-05-06"), ("Given2", "Stuck", "1990-05-06")];
    let (sync, _) = with_stuck_exports(&clinic, &three);
    common::another_program(&clinic.nanopix_db()).execute("DELETE FROM Patient WHERE id = ?1", [LEFT_BEHIND]).unwrap();
    common::drain(&sync);

    assert_refused_exports_reported_once(&sync);
}

/// Asks for the export of patient 1, NanoPix still refusing it, and checks that the pass it
/// catches up with reports the refused exports of patients 1 to 9 once each, in one reconcile.
fn assert_refused_exports_reported_once(sync: &NanoPixSync) {
    assert!(sync.export_patient(1).is_err(), "NanoPix still refuses");
    let events = common::drain(sync);
    let mut reported: Vec<i64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::SyncError { patient_id, .. } => *patient_id,
            _ => None,
        })
        .collect();
    reported.sort_unstable();
    let errors: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Reconciled(report) => Some(report.errors),
            _ => None,
        })
        .collect();
    let once: Vec<i64> = (1..=9).collect();
    assert_eq!((reported, errors), (once, vec![9]), "each refused export reported once, in one reconcile");
}

/// Nine exports NanoPix refused wait in the journal (see [`with_stuck_exports`]), Nadia Saidi's
/// last; then NanoPix saves Nadia itself under the id her export reserved (see
/// [`common::nanopix_saves_nadia_under`]). NanoPix takes inserts again. Returns the handle,
/// Nadia's DentalTID id and that NanoPix id.
fn nadia_saved_at_her_stuck_exports_id(clinic: &Clinic) -> (NanoPixSync, i64, String) {
    let stuck =
        [("Karima", "Stuck", "1990-05-06"), ("Salima", "Stuck", "1990-05-06"), ("Nadia", "Saidi", "1982-04-09")];
    let (sync, mut reserved) = with_stuck_exports(clinic, &stuck);
    assert_eq!(reserved.len(), 9, "the six samples, the two others and Nadia, each left in the journal");
    let nadia = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Nadia'", |r| r.get::<_, i64>(0))[0];
    block_nanopix_inserts(clinic, false);
    let hers = reserved.remove(8);
    common::nanopix_saves_nadia_under(clinic, &hers);
    (sync, nadia, hers)
}

/// Nine exports NanoPix refused wait in the journal, Nadia Saidi's last. The X-ray assistant then
/// saves Nadia in NanoPix under the id her export reserved (the form opened in that second), and
/// DentalTID asks for her export again. The catch-up's live pass ends the eight others and skips
/// her row as her export's; her export then finds NanoPix's Nadia and leaves the id to be linked.
/// The next try must read that row again and link her to it: NanoPix, unchanged since that pass,
/// would otherwise get a second Nadia, and the next reconcile DentalTID a second one too.
#[test]
fn an_export_resumed_by_export_patient_links_the_same_person_nanopix_saved_at_its_id() {
    let clinic = Clinic::new("v29");
    let (sync, nadia, hers) = nadia_saved_at_her_stuck_exports_id(&clinic);
    let hers = &hers;

    let exported = sync.export_patient(nadia).map(|id| id.to_string());
    sync.reconcile().unwrap();
    let (in_nanopix, in_dentaltid) =
        (common::nanopix_ids_named(&clinic, "Nadia", "Saidi"), common::dentaltid_named(&clinic, "Nadia", "Saidi"));
    assert_eq!(
        (exported.ok(), in_nanopix, in_dentaltid),
        (Some(hers.clone()), vec![hers.clone()], vec![(nadia, Some(hers.clone()))]),
        "Nadia once on each side, linked to the patient NanoPix saved"
    );
}

/// As above, but `export_existing` ends Nadia's export, and finds NanoPix unchanged after it: it
/// must not return before she is linked to NanoPix's Nadia, as if every patient were in NanoPix.
#[test]
fn export_existing_links_the_same_person_nanopix_saved_at_an_id_it_resumed_an_export_at() {
    let clinic = Clinic::new("v29");
    let (sync, nadia, hers) = nadia_saved_at_her_stuck_exports_id(&clinic);

    sync.export_existing().unwrap();
    let linked = sync.source_info(nadia).unwrap().external_id;
    assert_eq!(linked.as_ref(), Some(&hers), "Nadia linked to the patient NanoPix saved once export_existing returns");
}

/// Nine exports NanoPix refused wait in the journal, Nadia Saidi's last, and NanoPix takes inserts
/// again. The X-ray assistant saves Nadia in NanoPix under an id of its own, not the one her
/// export reserved. The live pass that catches up for the next export ends the eight others, not
/// hers, which counts as linked while it waits: going on, it would import NanoPix's Nadia as a
/// second DentalTID patient (`already_linked`), and her export would give NanoPix a second Nadia
/// too. It goes on as a full reconcile instead, whose repair of her export gives way to NanoPix's
/// Nadia, who is linked to her.
#[test]
fn a_live_pass_links_the_same_person_nanopix_saved_while_her_stuck_export_waits_its_turn() {
    let clinic = Clinic::new("v29");
    let stuck =
        [("Karima", "Stuck", "1990-05-06"), ("Salima", "Stuck", "1990-05-06"), ("Nadia", "Saidi", "1982-04-09")];
    let (sync, reserved) = with_stuck_exports(&clinic, &stuck);
    assert_eq!(reserved.len(), 9, "the six samples, the two others and Nadia, each left in the journal");
    let nadia = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Nadia'", |r| r.get::<_, i64>(0))[0];
    block_nanopix_inserts(&clinic, false);
    common::nanopix_saves_nadia_under(&clinic, "20250122_095950");
    common::drain(&sync);

    sync.export_patient(1).unwrap();
    let duplicates = duplicates_of_nadia(common::drain(&sync), nadia);
    common::assert_nadia_once_on_each_side(&clinic, nadia, "after the live pass");
    assert_eq!(duplicates, [], "no possible duplicate reported for Nadia");
    assert_eq!(journaled_exports(&clinic), 0, "every export ended or dropped");
}

/// Arms `clock` to run `then` the `asks`-th time from now that the engine asks the time.
fn at_the_engines_ask(clock: common::HookedClock, asks: usize, then: common::Hook) {
    let again = clock.clone();
    clock.arm(Box::new(move || match asks {
        0 | 1 => then(),
        _ => at_the_engines_ask(again, asks - 1, then),
    }));
}

/// A handle on `clinic` with `clock`, without automatic work, once every patient is in NanoPix
/// but Nadia Saidi (born 1982-04-09), added last, whose export waits in the journal alone,
/// NanoPix still refusing inserts (see [`leave_exports_stuck`]). Returns the handle and Nadia's
/// DentalTID id.
fn nadia_stuck_alone(clinic: &Clinic, clock: &common::HookedClock) -> (NanoPixSync, i64) {
    let mut config = clinic.config_without_automatic_work();
    config.clock = std::sync::Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    sync.export_existing().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    assert_eq!(leave_exports_stuck(clinic, &sync).len(), 1, "Nadia's export alone waits in the journal");
    common::drain(&sync);
    (sync, nadia)
}

/// The X-ray assistant saving Nadia Saidi in NanoPix under `20250122_095950` (see
/// [`common::nanopix_saves_nadia_under`]): NanoPix takes inserts again, and refuses the sync's
/// again afterwards when `refusing` says so.
fn nanopix_saves_nadia(clinic: &std::sync::Arc<Clinic>, refusing: bool) -> common::Hook {
    let clinic = clinic.clone();
    Box::new(move || {
        block_nanopix_inserts(&clinic, false);
        common::nanopix_saves_nadia_under(&clinic, "20250122_095950");
        if refusing {
            block_nanopix_inserts(&clinic, true);
        }
    })
}

/// Whether `events` report the refusal of patient `nadia`'s export.
fn refuses_export_of(events: &[nanopix_sync::Event], nadia: i64) -> bool {
    events.iter().any(|e| matches!(e.kind, EventKind::SyncError { patient_id: Some(patient), .. } if patient == nadia))
}

/// The possible duplicates `events` report of Nadia (`nadia`) or of NanoPix's `20250122_095950`.
fn duplicates_of_nadia(events: Vec<nanopix_sync::Event>, nadia: i64) -> Vec<EventKind> {
    let of_nadia = |kind: &EventKind| match kind {
        EventKind::PossibleDuplicate { external_id, patient_id, .. } => {
            external_id == "20250122_095950" || *patient_id == nadia
        }
        _ => false,
    };
    events.into_iter().map(|e| e.kind).filter(of_nadia).collect()
}

/// NanoPix refuses Nadia Saidi's export, which waits in the journal. A full reconcile tries it
/// again, NanoPix still refusing, and the X-ray assistant saves Nadia in NanoPix just after, before
/// the reconcile reads NanoPix. Her export still waits, so the reconcile must not import NanoPix's
/// Nadia as a second DentalTID patient (`already_linked`), which would leave her export to give
/// NanoPix a second Nadia too: it leaves her for the next reconcile, whose repair gives way to her
/// and which links the two.
#[test]
fn a_reconcile_leaves_the_same_person_nanopix_saved_after_her_export_failed_again_to_be_linked() {
    let clinic = std::sync::Arc::new(Clinic::new("v29"));
    let clock = common::HookedClock::of_the_engine();
    let (sync, nadia) = nadia_stuck_alone(&clinic, &clock);
    // The first time the engine asks the time: as it reports her export's repair refused.
    at_the_engines_ask(clock.clone(), 1, nanopix_saves_nadia(&clinic, false));

    let first = sync.reconcile().unwrap();
    let events = common::drain(&sync);
    assert!(clock.ran() && refuses_export_of(&events, nadia), "her repair refused, then NanoPix saved her");
    assert_eq!((first.imported, first.linked), (0, 0), "NanoPix's Nadia left for her export to end: {first:?}");
    let second = sync.reconcile().unwrap();
    assert_eq!(second.linked, 1, "{second:?}");
    let duplicates = duplicates_of_nadia([events, common::drain(&sync)].concat(), nadia);
    common::assert_nadia_once_on_each_side(&clinic, nadia, "after the two reconciles");
    assert_eq!(duplicates, [], "no possible duplicate reported for Nadia");
    assert_eq!(journaled_exports(&clinic), 0, "her export dropped");
}

/// As above, but the pass is the live pass `export_patient` catches up with for another patient
/// (NanoPix changed since the last one, with another patient of its own): it tries Nadia's
/// export among its repairs, NanoPix refusing it again, then reads NanoPix's Nadia past the
/// cursor. It must leave her undecided, for a later pass that links her once her export gave
/// way, not import her as a second DentalTID patient.
#[test]
fn a_live_pass_leaves_the_same_person_nanopix_saved_after_her_export_failed_again_to_a_later_pass() {
    let clinic = std::sync::Arc::new(Clinic::new("v29"));
    let clock = common::HookedClock::of_the_engine();
    let (sync, nadia) = nadia_stuck_alone(&clinic, &clock);
    block_nanopix_inserts(&clinic, false);
    clinic.add_nanopix("20250122_093000", "Haddad", "Omar", Some("1979-11-02"));
    block_nanopix_inserts(&clinic, true);
    let yacine = clinic.add_dentaltid("Yacine", "Brahimi", Some("1988-07-21"));
    // The first time the engine asks the time: as it reports her export's repair refused.
    at_the_engines_ask(clock.clone(), 1, nanopix_saves_nadia(&clinic, false));

    let exported = sync.export_patient(yacine).map(|id| id.to_string());
    let events = common::drain(&sync);
    assert!(clock.ran() && refuses_export_of(&events, nadia), "her repair refused, then NanoPix saved her");
    assert_eq!(exported.ok().as_slice(), common::nanopix_ids_named(&clinic, "Yacine", "Brahimi"), "Yacine exported");
    sync.reconcile().unwrap();
    let duplicates = duplicates_of_nadia([events, common::drain(&sync)].concat(), nadia);
    common::assert_nadia_once_on_each_side(&clinic, nadia, "after the export and a reconcile");
    assert_eq!(duplicates, [], "no possible duplicate reported for Nadia");
}

/// Nine exports NanoPix refuses wait in the journal, Nadia Saidi's last (see
/// [`with_stuck_exports`]). A full reconcile tries them all (not the first one after `open`, which
/// leaves alone those `open` just saw refused), and the X-ray assistant saves Nadia in NanoPix as
/// it reports her export refused (NanoPix still refusing the sync's inserts): the reconcile
/// leaves NanoPix's Nadia undecided. The next pass, the live pass the catch-up of
/// another export runs, tries only eight exports, not hers, and reads no new NanoPix row: it must
/// still come back to NanoPix's Nadia, as a full reconcile (the one before left no cursor past
/// her), whose repair of her export gives way to her, and which links the two.
#[test]
fn a_nanopix_patient_left_for_an_export_is_decided_by_the_next_pass_even_when_it_leaves_her_export_alone() {
    let clinic = std::sync::Arc::new(Clinic::new("v29"));
    let stuck =
        [("Karima", "Stuck", "1990-05-06"), ("Salima", "Stuck", "1990-05-06"), ("Nadia", "Saidi", "1982-04-09")];
    let (first_handle, reserved) = with_stuck_exports(&clinic, &stuck);
    drop(first_handle);
    let nadia = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Nadia'", |r| r.get::<_, i64>(0))[0];
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    // As the engine reports the last of the nine repairs refused, hers.
    at_the_engines_ask(clock.clone(), reserved.len(), nanopix_saves_nadia(&clinic, true));

    let first = sync.reconcile().unwrap();
    assert!(clock.ran(), "NanoPix saved Nadia during the reconcile");
    assert_eq!((first.imported, first.linked), (0, 0), "NanoPix's Nadia left for her export to end: {first:?}");
    assert_eq!(common::dentaltid_named(&clinic, "Nadia", "Saidi"), [(nadia, None)]);
    assert!(sync.export_patient(1).is_err(), "NanoPix still refuses the sync's inserts");
    let duplicates = duplicates_of_nadia(common::drain(&sync), nadia);
    common::assert_nadia_once_on_each_side(&clinic, nadia, "after the next export's catch-up");
    assert_eq!(duplicates, [], "no possible duplicate reported for Nadia");
}

/// Live Sync is on, and NanoPix refuses Nadia Saidi's export: it waits in the journal, and the
/// next pass moves the export cursor past her. The X-ray assistant then saves Nadia in NanoPix
/// herself; the next handle's repair of her export gives way to that patient, for a pass to link
/// the two. But the assistant deletes that NanoPix patient before any pass reads it: Nadia is
/// linked to no one, and must still be exported, not left out of NanoPix behind the cursor.
#[test]
fn a_patient_whose_export_gave_way_to_a_nanopix_patient_deleted_before_the_link_is_exported() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    block_nanopix_inserts(&clinic, true);
    sync.reconcile().unwrap();
    sync.reconcile().unwrap();
    let cursor = "SELECT CAST(value AS INTEGER) FROM nanopix_sync_state WHERE key = 'export_cursor'";
    assert_eq!(clinic.dentaltid_rows(cursor, |r| r.get::<_, i64>(0)), [nadia], "the cursor is past Nadia");
    block_nanopix_inserts(&clinic, false);
    common::nanopix_saves_nadia_under(&clinic, "20250122_095950");
    drop(sync);

    let sync = clinic.open_without_automatic_work();
    assert_eq!(journaled_exports(&clinic), 0, "her export gave way to NanoPix's Nadia");
    remove_from_nanopix(&clinic, "20250122_095950");
    sync.reconcile().unwrap();
    let (in_nanopix, in_dentaltid) =
        (common::nanopix_ids_named(&clinic, "Nadia", "Saidi"), common::dentaltid_named(&clinic, "Nadia", "Saidi"));
    assert_eq!(in_nanopix.len(), 1, "Nadia once in NanoPix after the next pass: {in_nanopix:?}");
    assert_eq!(in_dentaltid, [(nadia, in_nanopix.first().cloned())], "and linked to her export");
    assert!(clinic.root.join(&in_nanopix[0]).is_dir(), "with her folder");
}

#[test]
fn an_export_whose_external_id_dentaltid_cleared_never_comes_back_as_an_import() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let exported = sync.export_patient(nadia).unwrap().to_string();
    edit_dentaltid(&clinic, &format!("UPDATE patients SET external_id = NULL WHERE id = {nadia}"));
    common::drain(&sync);
    // NanoPix staff register Nadia again; the host then exports another patient, which first
    // catches up with NanoPix.
    clinic.add_nanopix("20250122_080000", "Cherif", "Nadia", Some("1992-02-14"));
    let other = clinic.add_dentaltid("Karim", "Haddad", Some("1980-01-01"));
    sync.export_patient(other).unwrap();
    sync.reconcile().unwrap();
    let events: Vec<EventKind> = common::drain(&sync).into_iter().map(|e| e.kind).collect();
    let linked = events.iter().any(|kind| matches!(kind, EventKind::PatientLinked { .. }));
    let imported: Vec<&str> = events
        .iter()
        .filter_map(|kind| match kind {
            EventKind::PatientImported { external_id, .. } => Some(external_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(!linked, "Nadia keeps the link to her export: {events:?}");
    assert_eq!(imported, ["20250122_080000"], "the second NanoPix Nadia is imported, the export {exported} is not");
}

#[test]
fn an_export_writes_the_birth_date_matching_reads() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open();
    sync.reconcile().unwrap();
    // Dart writes a UTC date with a `Z`; a value that starts with a blank is no date for matching.
    let births = [("1991-02-03T00:00:00.000Z", Some("1991-02-03")), (" 1985-03-12T00:00:00.000", None)];
    for (stored, written) in births {
        let lina = clinic.add_dentaltid("Lina", "Saidi", None);
        edit_dentaltid(&clinic, &format!("UPDATE patients SET dateOfBirth = '{stored}' WHERE id = {lina}"));
        let id = sync.export_patient(lina).unwrap();
        let birthdate = clinic.nanopix_rows(&format!("SELECT birthdate FROM Patient WHERE id = '{id}'"), |r| {
            r.get::<_, Option<String>>(0)
        });
        assert_eq!(birthdate, [written.map(str::to_owned)], "{stored:?}");
        let listed = sync.patients(nanopix_sync::PatientFilter::All).unwrap();
        let listed = listed.iter().find(|patient| patient.id == lina).and_then(|patient| patient.date_of_birth);
        assert_eq!(listed.map(|date| date.to_string()).as_deref(), written, "{stored:?}");
    }
}

#[test]
fn an_export_never_takes_the_id_a_padded_external_id_shows() {
    let clinic = Clinic::new("v29");
    let sami = clinic.add_dentaltid("Sami", "Haddad", Some("1990-01-01"));
    // Sami shows 20250122_100000 with blanks around it; NanoPix has no such patient.
    for padded in ["20250122_100000 ", "\t20250122_100000", "\u{a0}20250122_100000\u{a0}"] {
        let sql = format!("UPDATE patients SET external_id = '{padded}' WHERE id = {sami}");
        edit_dentaltid(&clinic, &sql);
        let sync = clinic.open();
        sync.reconcile().unwrap();
        let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
        let id = sync.export_patient(nadia).unwrap().to_string();
        assert_ne!(id, "20250122_100000", "{padded:?}");
    }
}

/// Nadia Cherif was added while Live Sync was on and Live Sync was switched off (and on again)
/// before her export: her export is due. Yacine Mansouri (imported from NanoPix) is deleted by
/// mistake and added again at once. README: "A `delete_requested` is held back until the pass
/// or call that found the deletion has given NanoPix patients back to the patients it exports
/// (a pass with Live Sync on, ...), so a patient deleted and added again before that gets her
/// NanoPix patient back with no `delete_requested` for it."
#[test]
fn a_patient_added_again_gets_her_nanopix_patient_back_without_a_delete_requested_when_an_export_is_due() {
    let clinic = Clinic::new("v29");
    let yacine = "20250122_091500";
    clinic.add_nanopix(yacine, "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let deleted: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{yacine}'"), |r| r.get(0))[0];
    // Added while Live Sync is on; switched off and on again before any pass exported her.
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    sync.set_live_sync(false).unwrap();
    sync.set_live_sync(true).unwrap();
    common::drain(&sync);
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [deleted]).unwrap();
    let again = common::insert_dentaltid_patient(&dentaltid, "Yacine", "Mansouri", Some("2001-05-19"));
    sync.reconcile().unwrap();
    let events: Vec<EventKind> = common::drain(&sync).into_iter().map(|e| e.kind).collect();
    assert_eq!(common::dentaltid_named(&clinic, "Yacine", "Mansouri"), [(again, Some(yacine.to_owned()))]);
    assert!(
        events.iter().any(|e| matches!(e, EventKind::PatientExported { patient_id, .. } if *patient_id == nadia)),
        "Nadia's due export ran in this pass: {events:#?}"
    );
    let asked: Vec<&EventKind> = events.iter().filter(|e| matches!(e, EventKind::DeleteRequested { .. })).collect();
    assert!(asked.is_empty(), "delete_requested for a NanoPix patient given back: {asked:#?}");
}

/// The same early announcement through `export_existing` (as the `sync` runner's
/// `export-existing` runs it: no automatic work). While Live Sync is off, Yacine Mansouri
/// (imported) is deleted by mistake and added again. Live Sync is switched on (`sync enable`),
/// the receptionist adds Nadia (past the export cursor), then `export_existing` runs. README:
/// the `delete_requested` is held back until the call (`export_existing`) has given NanoPix
/// patients back, so Yacine gets hers back with no `delete_requested` for it.
#[test]
fn export_existing_gives_a_patient_added_again_her_nanopix_patient_back_without_a_delete_requested() {
    let clinic = Clinic::new("v29");
    let yacine = "20250122_091500";
    clinic.add_nanopix(yacine, "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let deleted: i64 =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{yacine}'"), |r| r.get(0))[0];
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [deleted]).unwrap();
    let again = common::insert_dentaltid_patient(&dentaltid, "Yacine", "Mansouri", Some("2001-05-19"));
    sync.set_live_sync(true).unwrap();
    clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    common::drain(&sync);
    sync.export_existing().unwrap();
    let events: Vec<EventKind> = common::drain(&sync).into_iter().map(|e| e.kind).collect();
    assert_eq!(common::dentaltid_named(&clinic, "Yacine", "Mansouri"), [(again, Some(yacine.to_owned()))]);
    let asked: Vec<&EventKind> = events.iter().filter(|e| matches!(e, EventKind::DeleteRequested { .. })).collect();
    assert!(asked.is_empty(), "delete_requested for a NanoPix patient given back: {asked:#?}");
}

/// The sync cannot note a delete request announced (DentalTID refuses the write at that
/// moment, simulated by a trigger: the error is ignored). The host acts on the announcement:
/// `delete_in_nanopix` removes the NanoPix patient. After the next start the request, still
/// noted, is not sent again: NanoPix no longer holds the patient, and the host would ask the
/// user again for nothing.
#[test]
fn a_delete_request_the_host_carried_out_is_not_announced_again_after_a_restart() {
    let clinic = Clinic::new("v29");
    let id = "20250122_091500";
    clinic.add_nanopix(id, "Mansouri", "Yacine", Some("2001-05-19"));
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE DELETE ON nanopix_sync_unannounced_deletes
             BEGIN SELECT RAISE(ABORT, 'database is locked'); END;",
        )
        .unwrap();
    dentaltid.execute("DELETE FROM patients WHERE external_id = ?1", [id]).unwrap();
    common::drain(&sync);
    sync.reconcile().unwrap();
    let asked = common::drain(&sync)
        .into_iter()
        .filter(|e| matches!(&e.kind, EventKind::DeleteRequested { external_id, .. } if external_id == id))
        .count();
    assert_eq!(asked, 1, "announced once");
    sync.delete_in_nanopix(id).unwrap();
    dentaltid.execute_batch("DROP TRIGGER refuse").unwrap();
    drop(sync);
    assert_eq!(
        clinic.nanopix_rows(&format!("SELECT count(*) FROM Patient WHERE id = '{id}'"), |r| r.get::<_, i64>(0)),
        [0]
    );

    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let again: Vec<EventKind> = common::drain(&sync)
        .into_iter()
        .map(|e| e.kind)
        .filter(|kind| matches!(kind, EventKind::DeleteRequested { .. }))
        .collect();
    assert!(again.is_empty(), "delete_requested again for a NanoPix patient already deleted: {again:#?}");
}

/// A host's clock at either end of the dates the sync can count gives exports a clear error
/// (NanoPix's dates need a four-digit year), not a panic of the engine thread, and writes no
/// NanoPix row.
#[test]
fn exports_on_a_clock_at_either_end_of_time_fail_with_a_clear_error() {
    for at in [chrono::NaiveDateTime::MAX, chrono::NaiveDateTime::MIN] {
        let clinic = Clinic::new("v29");
        let mut config = clinic.config_without_automatic_work();
        config.clock = std::sync::Arc::new(nanopix_sync::ManualClock::new(at));
        let sync = NanoPixSync::open(config).unwrap();
        let patient = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
        let one = sync.export_patient(patient);
        assert!(matches!(one, Err(Error::InvalidConfig(ref m)) if m.contains("four-digit year")), "at {at}: {one:?}");
        common::drain(&sync);
        assert_eq!(sync.export_existing().unwrap(), 0, "export_existing at {at}");
        let reported = common::drain(&sync).into_iter().filter(|event| {
            matches!(&event.kind, EventKind::SyncError { code, patient_id, .. } if code == "invalid_config" && *patient_id == Some(patient))
        });
        assert_eq!(reported.count(), 1, "export_existing at {at} reports the patient it left");
        let rows = clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0));
        assert_eq!(rows, [1], "only the fixture's patient");
    }
}

/// Live Sync on. The fixture's patient is deleted in DentalTID and added again; the host's
/// "Sync Now" finds the deletion, then is stopped while it imports a bulk of new NanoPix
/// patients, before it gives her the NanoPix patient back. A reconcile cut short sends no
/// `delete_requested`: the next one gives the NanoPix patient back.
#[test]
fn a_reconcile_stopped_early_announces_no_delete_before_the_give_back() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid.execute("DELETE FROM patients WHERE external_id = ?1", [LEFT_BEHIND]).unwrap();
    let again = common::insert_dentaltid_patient(&dentaltid, "FSFFS", "DSSSSFSFS", Some("2025-01-21"));
    // Enough new NanoPix patients that the pass is still importing when the host stops it.
    clinic.add_bulk_nanopix(12_000);
    common::drain(&sync);
    let (events, stopper) = (sync.events(), sync.stopper());
    let mut seen = Vec::new();
    let report = std::thread::scope(|scope| {
        let pass = scope.spawn(|| sync.reconcile());
        loop {
            let event = events.recv_timeout(std::time::Duration::from_secs(60)).expect("an event within a minute");
            let imported = matches!(event.kind, EventKind::PatientImported { .. });
            seen.push(event.kind);
            if imported {
                stopper.stop();
                break;
            }
        }
        pass.join().unwrap()
    });
    assert!(report.unwrap().stopped_early, "stopped while importing");
    seen.extend(common::drain(&sync).into_iter().map(|e| e.kind));
    assert_eq!(sync.source_info(again).unwrap().external_id, None, "not given back yet");
    let asked: Vec<&EventKind> = seen.iter().filter(|kind| matches!(kind, EventKind::DeleteRequested { .. })).collect();
    assert!(asked.is_empty(), "delete_requested before the give-back: {asked:#?}");
}

/// NanoPix's patient `20250122_095950` with these names, born 1990-03-04, imported by a first
/// sync; returns the clinic, its handle and her DentalTID patient.
fn imported_from_nanopix(last: &str, first: &str) -> (Clinic, NanoPixSync, i64) {
    imported_from_nanopix_born(last, first, Some("1990-03-04"))
}

/// [`imported_from_nanopix`] with NanoPix's `birthdate` (none when `None`).
fn imported_from_nanopix_born(last: &str, first: &str, birthdate: Option<&str>) -> (Clinic, NanoPixSync, i64) {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_095950", last, first, birthdate);
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let imported: i64 =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id = '20250122_095950'", |r| r.get(0))[0];
    (clinic, sync, imported)
}

/// A `possible_duplicate` as `(external_id, patient_id, reason, candidate ids)`.
type Reported = (String, i64, DuplicateReason, Vec<i64>);

/// Every `possible_duplicate` among `events`.
fn duplicates(events: Vec<nanopix_sync::Event>) -> Vec<Reported> {
    events
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::PossibleDuplicate { external_id, patient_id, reason, candidates } => {
                Some((external_id, patient_id, reason, candidates.iter().map(|c| c.patient_id).collect()))
            }
            _ => None,
        })
        .collect()
}

/// Exports `typed` with `export_patient`; returns its NanoPix id and the possible duplicates
/// reported meanwhile.
fn export_and_report(sync: &NanoPixSync, typed: i64) -> (String, Vec<Reported>) {
    common::drain(sync);
    let exported = sync.export_patient(typed).unwrap().to_string();
    (exported, duplicates(common::drain(sync)))
}

/// Exports patient `typed` and checks that the export reports, as its only possible duplicate,
/// the patient `imported` from NanoPix, for `reason`, and keeps that report on the review list.
fn assert_export_reports_the_imported_twin(sync: &NanoPixSync, typed: i64, imported: i64, reason: DuplicateReason) {
    let (exported, reported) = export_and_report(sync, typed);
    assert_eq!(reported, [(exported.clone(), typed, reason, vec![imported])]);
    let listed = sync.possible_duplicates().unwrap().into_iter().find(|listed| listed.patient_id == typed);
    let listed = listed.map(|listed| (listed.external_id, listed.reason, listed.candidates[0].patient_id));
    assert_eq!(listed, Some((exported, reason, imported)), "kept on the review list");
}

/// `export_patient` of a DentalTID patient whose names and birth date an imported patient has
/// (the same person, typed again) exports her and reports the imported one beside her; a
/// patient born another day is not reported.
#[test]
fn export_patient_reports_the_linked_patient_with_the_same_names_and_birth_date() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let typed = clinic.add_dentaltid("Nadia", "SAIDI", Some("1990-03-04"));
    let other = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-05"));
    assert_export_reports_the_imported_twin(&sync, typed, imported, DuplicateReason::AlreadyLinked);
    assert_eq!(export_and_report(&sync, other).1, [], "another birth date");
}

/// The same person typed again in DentalTID with her names swapped, or with a typo, is exported
/// and reported beside the imported patient, as an import of her would be.
#[test]
fn the_export_of_a_near_miss_of_an_imported_patient_reports_her() {
    for (first, last, reason) in
        [("Saidi", "Nadia", DuplicateReason::SwappedNames), ("Nadia", "Saydi", DuplicateReason::SimilarNames)]
    {
        let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
        let typed = clinic.add_dentaltid(first, last, Some("1990-03-04"));
        assert_export_reports_the_imported_twin(&sync, typed, imported, reason);
    }
}

/// The same person with a birth date on one side only: typed again in DentalTID with one after
/// NanoPix's patient without one was imported, or without one after NanoPix's patient with one
/// was, with her names as NanoPix has them or swapped. Her export reports the imported patient,
/// as an import of her would be.
#[test]
fn the_export_of_a_patient_whose_imported_twin_has_a_birth_date_on_one_side_only_reports_her() {
    let cases = [
        (None, Some("1990-03-04"), ("Nadia", "Saidi"), DuplicateReason::MissingBirthDate),
        (Some("1990-03-04"), None, ("Nadia", "Saidi"), DuplicateReason::MissingBirthDate),
        (None, None, ("NADIA", "saidi"), DuplicateReason::MissingBirthDate),
        (None, Some("1990-03-04"), ("Saidi", "Nadia"), DuplicateReason::SwappedNames),
        (Some("1990-03-04"), None, ("Saidi", "Nadia"), DuplicateReason::SwappedNames),
    ];
    for (in_nanopix, typed_born, (first, last), reason) in cases {
        let (clinic, sync, imported) = imported_from_nanopix_born("Saidi", "Nadia", in_nanopix);
        let typed = clinic.add_dentaltid(first, last, typed_born);
        assert_export_reports_the_imported_twin(&sync, typed, imported, reason);
    }
}

/// NanoPix's Nadia Saydi is imported and reported beside DentalTID's Nadia Saidi, born the same
/// day, who was never exported; the user finds them to be two people and dismisses the report.
/// Exporting Nadia Saidi later (`export_existing`, say) puts that pair on the review list no
/// more, nor does it report it again; nor, before the dismissal, does it list the pair twice.
#[test]
fn exporting_a_patient_named_in_a_report_puts_the_same_pair_on_the_review_list_only_once() {
    for dismissed in [true, false] {
        let clinic = Clinic::new("v29");
        let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
        clinic.add_nanopix("20250122_095950", "Saydi", "Nadia", Some("1990-03-04"));
        let sync = clinic.open_without_automatic_work();
        sync.reconcile().unwrap();
        let listed = sync.possible_duplicates().unwrap();
        let imported = listed.iter().map(|listed| listed.patient_id).collect::<Vec<_>>();
        assert_eq!(listed.len(), 1, "the import is reported beside her");
        assert_eq!(listed[0].candidates.iter().map(|c| c.patient_id).collect::<Vec<_>>(), [typed]);
        if dismissed {
            assert!(sync.dismiss_possible_duplicate(imported[0]).unwrap());
        }
        let (_, reported) = export_and_report(&sync, typed);
        assert_eq!(reported, [], "dismissed: {dismissed}");
        let now: Vec<i64> = sync.possible_duplicates().unwrap().iter().map(|listed| listed.patient_id).collect();
        assert_eq!(now, if dismissed { vec![] } else { imported }, "dismissed: {dismissed}");
    }
}

/// A patient without names is no person to match: exporting one reports no nameless patient
/// already linked as a possible duplicate.
#[test]
fn the_export_of_a_nameless_patient_reports_no_linked_twin() {
    let (clinic, sync, _) = imported_from_nanopix("", "");
    let typed = clinic.add_dentaltid("", "", Some("1990-03-04"));
    assert_eq!(export_and_report(&sync, typed).1, []);
}

/// NanoPix's patient with only a last name is imported; the same person, typed again in
/// DentalTID with the same one name and birth date, is exported and reported beside her.
#[test]
fn the_export_of_a_one_named_patient_typed_again_reports_her_imported_twin() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "");
    let typed = clinic.add_dentaltid("", "Saidi", Some("1990-03-04"));
    assert_export_reports_the_imported_twin(&sync, typed, imported, DuplicateReason::AlreadyLinked);
}

/// NanoPix's patient with only a last name is imported; the same person is typed in DentalTID
/// with that one name as her first name: her export reports the imported patient, as the
/// import of a one-named patient compares the one name with either name.
#[test]
fn a_one_named_twin_with_the_name_in_the_other_field_is_reported() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "");
    let typed = clinic.add_dentaltid("Saidi", "", Some("1990-03-04"));
    assert_export_reports_the_imported_twin(&sync, typed, imported, DuplicateReason::AlreadyLinked);
}

/// A linked twin whose `dateOfBirth` DentalTID holds as a blob is read as matching reads it,
/// born on the date the blob holds, and reported.
#[test]
fn a_linked_twin_with_a_blob_birth_date_is_reported_by_export_patient() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let dentaltid = common::another_program(&clinic.dentaltid);
    dentaltid.execute("UPDATE patients SET dateOfBirth = CAST(dateOfBirth AS BLOB) WHERE id = ?1", [imported]).unwrap();
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    assert_export_reports_the_imported_twin(&sync, typed, imported, DuplicateReason::AlreadyLinked);
}

/// `export_existing` reads the twins once, before its first export. The imported Nadia is
/// deleted in DentalTID while the call exports the patients before the typed Nadia (a trigger
/// stands for DentalTID deleting her between two exports): the typed Nadia's export does not
/// name her, a patient that no longer exists.
#[test]
fn a_twin_deleted_during_an_export_call_is_not_reported() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    let dentaltid = common::another_program(&clinic.dentaltid);
    // An older patient, exported before her.
    common::insert_dentaltid_patient(&dentaltid, "Older", "Patient", Some("1970-01-01"));
    dentaltid.execute("UPDATE patients SET createdAt = '2020-06-01T09:00:00.000' WHERE name = 'Older'", []).unwrap();
    dentaltid
        .execute_batch(&format!(
            "CREATE TRIGGER delete_imported_nadia AFTER UPDATE OF external_id ON patients
             WHEN NEW.id <> {typed} AND NEW.id <> {imported}
             BEGIN DELETE FROM patients WHERE id = {imported}; END;"
        ))
        .unwrap();
    common::drain(&sync);
    sync.export_existing().unwrap();
    let gone =
        clinic.dentaltid_rows(&format!("SELECT count(*) FROM patients WHERE id = {imported}"), |r| r.get::<_, i64>(0));
    assert_eq!(gone, [0], "the imported Nadia was deleted during the call");
    let reported = duplicates(common::drain(&sync));
    let naming_her: Vec<_> = reported.iter().filter(|(_, _, _, ids)| ids.contains(&imported)).collect();
    assert!(naming_her.is_empty(), "a deleted patient reported as the linked twin: {naming_her:?}");
}

/// The imported Nadia is deleted in DentalTID while her twin's own export is under way (a trigger
/// stands for DentalTID deleting her between the export's look for twins and its link): the
/// export does not name her, and the review list does not show her.
#[test]
fn a_twin_deleted_during_its_twins_export_is_not_reported() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    common::another_program(&clinic.dentaltid)
        .execute_batch(&format!(
            "CREATE TRIGGER delete_imported_nadia AFTER UPDATE OF external_id ON patients WHEN NEW.id = {typed}
             BEGIN DELETE FROM patients WHERE id = {imported}; END;"
        ))
        .unwrap();
    assert_eq!(export_and_report(&sync, typed).1, [], "a deleted patient reported as the linked twin");
    assert_eq!(sync.possible_duplicates().unwrap(), []);
}

/// `export_existing` reads the patients and their twins once; DentalTID renames and re-dates the
/// typed Nadia while an older patient is exported (a trigger on the older patient's journal row
/// stands for it). Her export writes her new names, and names the imported Nadia, whom she no
/// longer resembles, neither in an event nor on the review list.
#[test]
fn a_patient_renamed_during_an_export_call_is_not_reported_beside_her_old_twin() {
    for (first, last) in [("Nadia", "Saidi"), ("Nadia", "Saydi")] {
        let (clinic, sync, _) = imported_from_nanopix("Saidi", "Nadia");
        let typed = clinic.add_dentaltid(first, last, Some("1990-03-04"));
        let dentaltid = common::another_program(&clinic.dentaltid);
        let older = common::insert_dentaltid_patient(&dentaltid, "Older", "Patient", Some("1970-01-01"));
        dentaltid.execute("UPDATE patients SET createdAt = '2020-06-01T09:00:00.000' WHERE id = ?1", [older]).unwrap();
        dentaltid
            .execute_batch(&format!(
                "CREATE TRIGGER rename_typed AFTER INSERT ON nanopix_sync_exports WHEN NEW.patient_id = {older}
                 BEGIN UPDATE patients SET name = 'Omar', familyName = 'Haddad',
                       dateOfBirth = '1985-01-01T00:00:00.000' WHERE id = {typed}; END;"
            ))
            .unwrap();
        common::drain(&sync);
        sync.export_existing().unwrap();
        assert_eq!(common::nanopix_ids_named(&clinic, "Omar", "Haddad").len(), 1, "exported with her new names");
        let reported: Vec<Reported> = duplicates(common::drain(&sync)).into_iter().filter(|r| r.1 == typed).collect();
        assert_eq!(reported, [], "{first} {last}");
        assert_eq!(sync.possible_duplicates().unwrap(), [], "{first} {last}");
    }
}

/// An export left in the journal by an error (NanoPix locked) is ended by the next reconcile's
/// repair, which reports the linked twin: the `reconciled` counts include that report, as they
/// do for an export that ran through.
#[test]
fn a_repair_reporting_a_linked_twin_counts_it_in_the_reconcile_report() {
    let (clinic, sync, _) = imported_from_nanopix("Saidi", "Nadia");
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1990-03-04"));
    let nanopix = common::another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(sync.export_patient(typed).is_err(), "NanoPix is locked");
    nanopix.execute_batch("ROLLBACK").unwrap();
    assert_eq!(journaled_exports(&clinic), 1, "the export waits in the journal");
    common::drain(&sync);
    let report = sync.reconcile().unwrap();
    let reported = duplicates(common::drain(&sync));
    assert_eq!((report.repaired, reported.len()), (1, 1), "{report:?} {reported:?}");
    assert_eq!(report.possible_duplicates, 1, "the repair's report is counted: {report:?}");
}

/// NanoPix's Nadia Saidi is imported; the same person is typed in DentalTID with her last name
/// only: her export reports the imported patient, as an import of a one-named patient compares
/// its one name with both names of the others (`missing_name`).
#[test]
fn a_one_named_export_reports_the_linked_twin_with_both_names() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let typed = clinic.add_dentaltid("", "Saidi", Some("1990-03-04"));
    assert_export_reports_the_imported_twin(&sync, typed, imported, DuplicateReason::AlreadyLinked);
}

/// An imported patient is deleted in DentalTID; the catch-up of an export of another patient
/// finds the deletion, then the export fails (NanoPix refuses every new row), so the delete
/// request is not sent. `delete_in_nanopix` refuses it until it is: the patient may yet be
/// added again and given her NanoPix patient back.
#[test]
fn delete_in_nanopix_refuses_a_delete_whose_request_was_not_sent_yet() {
    let (clinic, sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    common::another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [imported]).unwrap();
    let typed = clinic.add_dentaltid("Karima", "Bouzid", Some("1970-01-01"));
    let nanopix = common::another_program(&clinic.nanopix_db());
    nanopix
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON Patient BEGIN SELECT RAISE(ABORT, 'refused'); END;")
        .unwrap();
    common::drain(&sync);
    assert!(sync.export_patient(typed).is_err(), "NanoPix refuses the row");
    let asked = common::drain(&sync).iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. }));
    assert!(!asked, "a failed call sends no delete request");
    let refused = sync.delete_in_nanopix("20250122_095950");
    assert!(matches!(refused, Err(Error::DeleteNotRequested(_))), "{refused:?}");
    nanopix.execute_batch("DROP TRIGGER refuse").unwrap();
    sync.reconcile().unwrap();
    let asked = common::drain(&sync).iter().any(|e| matches!(e.kind, EventKind::DeleteRequested { .. }));
    assert!(asked, "the next reconcile sends it");
    sync.delete_in_nanopix("20250122_095950").unwrap();
}

/// The host is told of a delete, but DentalTID cannot note it sent (a trigger refuses, as a lock
/// held past the busy timeout would). After a restart the request is held again: the delete is
/// refused until the next reconcile sends it again, and then done.
#[test]
fn a_delete_whose_request_is_held_again_after_a_restart_waits_for_it_to_be_sent_again() {
    let (clinic, mut sync, imported) = imported_from_nanopix("Saidi", "Nadia");
    let dentaltid = common::another_program(&clinic.dentaltid);
    let keep = "CREATE TRIGGER keep BEFORE DELETE ON nanopix_sync_unannounced_deletes
                BEGIN SELECT RAISE(ABORT, 'database is locked'); END;";
    dentaltid.execute_batch(keep).unwrap();
    dentaltid.execute("DELETE FROM patients WHERE id = ?1", [imported]).unwrap();
    common::drain(&sync);
    sync.reconcile().unwrap();
    let asked = |events: Vec<nanopix_sync::Event>| {
        events.iter().filter(|e| matches!(e.kind, EventKind::DeleteRequested { .. })).count()
    };
    assert_eq!(asked(common::drain(&sync)), 1, "the host is told");
    sync.close();
    dentaltid.execute_batch("DROP TRIGGER keep").unwrap();

    let sync = clinic.open_without_automatic_work();
    let held = sync.delete_in_nanopix("20250122_095950");
    assert!(matches!(held, Err(Error::DeleteNotRequested(_))), "{held:?}");
    sync.reconcile().unwrap();
    assert_eq!(asked(common::drain(&sync)), 1, "sent again");
    sync.delete_in_nanopix("20250122_095950").unwrap();
}

/// The host closes (or stops) the handle while `export_existing` ("export all my old patients")
/// runs on another thread: the call is cut short, as closing does. It must then say so (as
/// `export_patient` gives `closed`), not return success with patients left unexported and no
/// `sync_error` naming them: the clinic would believe its old patients are all in NanoPix, and
/// Live Sync never exports them later (they are older than its cursor).
#[test]
fn export_existing_cut_short_by_closing_does_not_report_success() {
    let clinic = Clinic::new("v29");
    for i in 0..200 {
        add_created(&clinic, &format!("Old{i:03}"), "2024-06-01T09:00:00.000");
    }
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let stopper = sync.stopper();
    sync.set_callback(Some(Box::new(move |event| {
        if matches!(event.kind, EventKind::PatientExported { .. }) {
            stopper.stop();
        }
    })));
    let result = sync.export_existing();
    let unexported: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id", |r| r.get(0));
    assert!(
        matches!(result, Err(Error::Closed)) || unexported.is_empty(),
        "export_existing gave {result:?}, yet {} patients have no NanoPix patient",
        unexported.len()
    );
}

/// The handle is stopped while `export_existing` works through a clinic's old patients, as the
/// sync plans the ids of the next exports, which it journals together before it writes them.
/// Of those, only the export it was writing when it stopped may stay in the journal: the repair
/// at the next start would write the others, patients the stopped call never reached (and look
/// through every NanoPix patient for each, for the same person saved meanwhile).
#[test]
fn export_existing_stopped_leaves_in_the_journal_only_the_export_it_was_writing() {
    let clinic = Clinic::new("v29");
    for i in 0..40 {
        add_created(&clinic, &format!("Old{i:03}"), "2024-06-01T09:00:00.000");
    }
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    // The call asks the time to order the patients, then to plan the ids of the first ones.
    let (planning, stopper) = (clock.clone(), sync.stopper());
    clock.arm(Box::new(move || planning.arm(Box::new(move || stopper.stop()))));
    let result = sync.export_existing();
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    assert!(clock.ran(), "stopped as it planned the first exports");
    let journaled = clinic.dentaltid_rows("SELECT count(*) FROM nanopix_sync_exports", |r| r.get::<_, i64>(0));
    assert!(journaled[0] <= 1, "{} exports journaled and not written", journaled[0]);
}

/// Arms `clock` to call `stop` the first time the engine asks it the time once NanoPix's
/// database at `nanopix_db` holds more than `rows` patients (the rows of exports written ahead
/// are committed); until then, each time it is asked, it is armed again.
fn stop_once_nanopix_holds_more_than(
    clock: common::HookedClock,
    nanopix_db: std::path::PathBuf,
    rows: i64,
    stop: Box<dyn FnOnce() + Send>,
) {
    let again = clock.clone();
    clock.arm(Box::new(move || {
        let conn = common::another_program(&nanopix_db);
        let held: i64 = conn.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
        if held > rows {
            stop();
        } else {
            stop_once_nanopix_holds_more_than(again, nanopix_db, rows, stop);
        }
    }));
}

/// Arms `clock` to run `then` once the rows of exports written ahead are committed to
/// `clinic`'s NanoPix (see [`stop_once_nanopix_holds_more_than`]); returns how many patients
/// NanoPix holds before.
fn once_rows_are_written_ahead(clock: &common::HookedClock, clinic: &Clinic, then: common::Hook) -> i64 {
    let before: i64 = clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get(0))[0];
    stop_once_nanopix_holds_more_than(clock.clone(), clinic.nanopix_db(), before, then);
    before
}

/// A clinic with twenty old DentalTID patients named `first` (see [`add_twenty_old`]), opened
/// without automatic work on a [`common::HookedClock`] of the engine, and reconciled once.
fn twenty_old_on_a_hooked_clock(first: &str) -> (Clinic, common::HookedClock, NanoPixSync) {
    let clinic = Clinic::new("v29");
    add_twenty_old(&clinic, first);
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    (clinic, clock, sync)
}

/// Two old patients' exports wait in the journal (an older version's rows, which record no
/// values), and `export_existing` takes them first; it journals the next ones and writes their
/// NanoPix rows together ahead of them. The handle is stopped while the first waiting export is
/// ended: the rows written ahead still get their folders and links before the call returns (the
/// second waiting export, not reached, notwithstanding), so NanoPix holds no patient without its
/// folder, and none DentalTID does not know, until some later reconcile repairs them.
#[test]
fn export_existing_stopped_makes_the_folders_and_links_of_every_row_it_wrote_ahead() {
    let clinic = Clinic::new("v29");
    add_created(&clinic, "Waiting1", "2024-05-01T09:00:00.000");
    add_created(&clinic, "Waiting2", "2024-05-01T10:00:00.000");
    for i in 0..10 {
        add_created(&clinic, &format!("Old{i:03}"), "2024-06-01T09:00:00.000");
    }
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    let waiting: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE familyName LIKE 'Waiting%' ORDER BY id", |r| r.get(0));
    common::another_program(&clinic.dentaltid)
        .execute(
            "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at)
             VALUES (?1, '20240501_090000', '2025-01-22T08:00:00.000'), (?2, '20240501_100000', '2025-01-22T08:00:00.000')",
            (waiting[0], waiting[1]),
        )
        .unwrap();
    let stopper = sync.stopper();
    let before = once_rows_are_written_ahead(&clock, &clinic, Box::new(move || stopper.stop()));
    let result = sync.export_existing();
    assert!(matches!(result, Err(Error::Closed)), "{result:?}");
    assert!(clock.ran(), "stopped once rows were written ahead");

    let rows: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    assert!(rows.len() as i64 > before + 1, "rows written ahead: {rows:?}");
    let held: HashSet<String> = clinic
        .dentaltid_rows("SELECT external_id FROM patients WHERE external_id IS NOT NULL", |r| r.get(0))
        .into_iter()
        .collect();
    let without_folder: Vec<&String> = rows.iter().filter(|id| !clinic.root.join(id).is_dir()).collect();
    assert_eq!(without_folder, Vec::<&String>::new(), "NanoPix patients without a folder");
    let unlinked: Vec<&String> = rows.iter().filter(|id| !held.contains(*id)).collect();
    assert_eq!(unlinked, Vec::<&String>::new(), "NanoPix patients no DentalTID patient holds");
    drop(sync);

    let sync = clinic.open_without_automatic_work();
    sync.export_existing().unwrap();
    let rows: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient ORDER BY id", |r| r.get(0));
    let patients: Vec<i64> = clinic.dentaltid_rows("SELECT count(*) FROM patients", |r| r.get(0));
    assert_eq!(rows.len() as i64, patients[0], "each patient once on each side: {rows:?}");
}

/// Someone edits the sync's export journal by hand (a database browser, a backup of another
/// version): a patient's row holds an id that is no NanoPix id. No export wrote NanoPix anything
/// under it, so it must not keep that patient out of NanoPix for ever.
#[test]
fn a_journal_row_without_a_valid_id_does_not_block_the_export_of_its_patient() {
    let clinic = Clinic::new("v29");
    clinic.open_without_automatic_work().close();
    common::another_program(&clinic.dentaltid)
        .execute_batch(
            "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at)
             VALUES (1, '20250230_100000', '2025-01-22T09:00:00.000')",
        )
        .unwrap();
    let sync = clinic.open_without_automatic_work();
    let exported = sync.export_patient(1);
    assert!(exported.is_ok(), "{exported:?}");
}

/// Live Sync on, and a trigger of DentalTID's own (`refuse_link`) refusing every new NanoPix id:
/// Nadia Cherif is added and exported, her NanoPix patient written, her link refused. Returns the
/// handle, her DentalTID id, and her NanoPix id; her events are left queued.
fn nadia_exported_with_her_link_refused(clinic: &Clinic) -> (NanoPixSync, i64, Vec<String>) {
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let refuse = "CREATE TRIGGER refuse_link BEFORE UPDATE OF external_id ON patients
        BEGIN SELECT RAISE(ABORT, 'this patient may not be linked'); END";
    common::another_program(&clinic.dentaltid).execute_batch(refuse).unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    common::drain(&sync);
    sync.reconcile().unwrap();
    let written = common::nanopix_ids_named(clinic, "Nadia", "Cherif");
    assert_eq!(written.len(), 1, "her NanoPix patient is written: {written:?}");
    (sync, nadia, written)
}

/// DentalTID refuses to store the new NanoPix id on Nadia (a trigger of its own) after Live Sync
/// wrote her NanoPix patient: the `sync_error` names the NanoPix id she was exported under, which
/// support needs to find her there.
#[test]
fn an_export_refused_after_nanopix_was_written_names_its_nanopix_id() {
    let clinic = Clinic::new("v29");
    let (sync, nadia, written) = nadia_exported_with_her_link_refused(&clinic);
    let named: Vec<Option<String>> = common::drain(&sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::SyncError { patient_id: Some(patient), external_id, .. } if patient == nadia => {
                Some(external_id)
            }
            _ => None,
        })
        .collect();
    assert!(!named.is_empty(), "her export's error is reported");
    assert!(named.iter().all(|id| id.as_deref() == Some(written[0].as_str())), "{named:?} name {written:?}");
}

/// DentalTID refuses to store the new NanoPix id on Nadia (a trigger of its own) after Live Sync
/// wrote her NanoPix patient: her export waits in the journal on the row it wrote, which its
/// repair links once DentalTID takes the link, never giving way to another NanoPix patient. The
/// X-ray assistant saves Nadia in NanoPix again meanwhile. The reconcile must import that patient
/// and report it beside Nadia (`already_linked`), as beside a linked patient, not leave it
/// undecided while DentalTID refuses the link (out of DentalTID, and every pass a full reconcile).
#[test]
fn a_nanopix_patient_alike_a_patient_whose_export_wrote_its_row_is_imported_while_her_link_is_refused() {
    let clinic = Clinic::new("v29");
    let (sync, nadia, written) = nadia_exported_with_her_link_refused(&clinic);
    clinic.add_nanopix("20250122_093000", "Cherif", "Nadia", Some("1992-02-14"));
    common::drain(&sync);

    let report = sync.reconcile().unwrap();
    assert_eq!(report.imported, 1, "NanoPix's second Nadia imported: {report:?}");
    let reported = common::drain(&sync).into_iter().any(|event| {
        matches!(event.kind, EventKind::PossibleDuplicate { external_id, reason: DuplicateReason::AlreadyLinked, candidates, .. }
            if external_id == "20250122_093000" && candidates.iter().any(|c| c.patient_id == nadia))
    });
    assert!(reported, "the import is reported beside Nadia");
    let again = sync.reconcile().unwrap();
    assert_eq!((again.imported, again.linked, again.exported), (0, 0, 0), "{again:?}");

    common::another_program(&clinic.dentaltid).execute_batch("DROP TRIGGER refuse_link").unwrap();
    sync.reconcile().unwrap();
    let in_nanopix: HashSet<String> = common::nanopix_ids_named(&clinic, "Nadia", "Cherif").into_iter().collect();
    let expected = HashSet::from(["20250122_093000".to_owned(), written[0].clone()]);
    assert_eq!(in_nanopix, expected, "no third Nadia in NanoPix");
    let in_dentaltid = common::dentaltid_named(&clinic, "Nadia", "Cherif");
    assert_eq!(in_dentaltid.len(), 2, "Nadia and the import: {in_dentaltid:?}");
    assert!(in_dentaltid.contains(&(nadia, Some(written[0].clone()))), "{in_dentaltid:?}");
}

/// Live Sync catches up on five patients DentalTID added at once, whose links it records in one
/// transaction, and DentalTID refuses the link of one of them (a trigger of its own). The others
/// are linked all the same; the one refused is reported once, her NanoPix row waits in the
/// journal (not imported back), and the first reconcile after DentalTID takes the link links her
/// to that row: each of the five once in NanoPix.
#[test]
fn live_sync_links_the_others_of_a_batch_when_dentaltid_refuses_one_link() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let added: Vec<i64> =
        (0..5).map(|i| clinic.add_dentaltid(&format!("Amina{i}"), "Benali", Some("1985-03-12"))).collect();
    let refused = added[2];
    let refuse = format!(
        "CREATE TRIGGER refuse_one BEFORE UPDATE OF external_id ON patients WHEN NEW.id = {refused}
         BEGIN SELECT RAISE(ABORT, 'this patient may not be linked'); END"
    );
    common::another_program(&clinic.dentaltid).execute_batch(&refuse).unwrap();
    common::drain(&sync);

    let report = sync.reconcile().unwrap();
    assert_eq!((report.exported, report.imported, report.errors), (4, 0, 1), "{report:?}");
    let events = common::drain(&sync);
    let errors = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::SyncError { patient_id: Some(patient), .. } if *patient == refused));
    assert_eq!(errors.count(), 1, "her refused link reported once");
    let mut announced: Vec<i64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::PatientExported { patient_id, .. } => Some(patient_id),
            _ => None,
        })
        .collect();
    announced.sort_unstable();
    let others: Vec<i64> = added.iter().copied().filter(|&patient| patient != refused).collect();
    assert_eq!(announced, others, "each other export announced once");
    let written: Vec<String> = clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Benali'", |r| r.get(0));
    assert_eq!(written.len(), 5, "{written:?}");
    assert!(written.iter().all(|id| clinic.root.join(id).is_dir()), "{written:?}: folders");
    let journaled: Vec<String> = clinic.dentaltid_rows("SELECT external_id FROM nanopix_sync_exports", |r| r.get(0));
    assert_eq!(journaled.len(), 1, "her export waits on its row: {journaled:?}");

    common::another_program(&clinic.dentaltid).execute_batch("DROP TRIGGER refuse_one").unwrap();
    let report = sync.reconcile().unwrap();
    assert_eq!((report.imported, report.errors), (0, 0), "{report:?}");
    assert_eq!(sync.source_info(refused).unwrap().external_id.as_deref(), Some(journaled[0].as_str()));
    let held: HashSet<String> = clinic
        .dentaltid_rows("SELECT external_id FROM patients WHERE familyName = 'Benali' AND name LIKE 'Amina_'", |r| {
            r.get(0)
        })
        .into_iter()
        .collect();
    assert_eq!(held, written.into_iter().collect(), "each of the five once in NanoPix");
    let again = sync.reconcile().unwrap();
    assert_eq!((again.imported, again.linked, again.exported), (0, 0, 0), "{again:?}");
}

/// DentalTID cannot store the links of two patients to the NanoPix patients they match exactly
/// (a trigger of its own fails those writes, as a full disk would): one typed into both programs
/// while Live Sync is on, and an older one. Neither is exported meanwhile, by Live Sync,
/// `export_existing` or `export_patient`, and each is linked once DentalTID takes the link.
#[test]
fn a_patient_whose_link_dentaltid_refused_is_not_exported_while_her_nanopix_patient_waits() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let refuse = "CREATE TRIGGER no_room BEFORE UPDATE OF external_id ON patients
        WHEN NEW.external_id IN ('20250122_093000', '20250122_093100')
        BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END";
    common::another_program(&clinic.dentaltid).execute_batch(refuse).unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    clinic.add_nanopix("20250122_093000", "Cherif", "Nadia", Some("1992-02-14"));
    clinic.add_nanopix("20250122_093100", "Benali", "Amina", Some("1985-03-12"));
    common::drain(&sync);
    sync.reconcile().unwrap();
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Cherif"), ["20250122_093000"], "Live Sync");
    let left_alone = common::drain(&sync).into_iter().any(|event| {
        matches!(event.kind, EventKind::SyncError { patient_id: Some(patient), external_id: Some(id), message, .. }
            if patient == nadia && id == "20250122_093000" && message.contains("not exported"))
    });
    assert!(left_alone, "Live Sync says why Nadia is not exported, naming her NanoPix patient");
    sync.export_existing().unwrap();
    assert_eq!(common::nanopix_ids_named(&clinic, "Amina", "Benali"), ["20250122_093100"], "export_existing");
    let exported = sync.export_patient(nadia);
    assert!(matches!(exported, Err(Error::Database { .. })), "{exported:?}");

    common::another_program(&clinic.dentaltid).execute_batch("DROP TRIGGER no_room").unwrap();
    sync.reconcile().unwrap();
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Cherif"), ["20250122_093000"]);
    assert_eq!(common::nanopix_ids_named(&clinic, "Amina", "Benali"), ["20250122_093100"]);
    assert_eq!(common::dentaltid_named(&clinic, "Nadia", "Cherif"), [(nadia, Some("20250122_093000".to_owned()))]);
    assert_eq!(common::dentaltid_named(&clinic, "Amina", "Benali"), [(1, Some("20250122_093100".to_owned()))]);
}

/// Arms `clock` to run `then` the first time the engine asks the time once NanoPix holds a
/// patient named Nadia Cherif: between her export's NanoPix row and its link.
fn once_nadia_is_in_nanopix(clock: common::HookedClock, nanopix: std::path::PathBuf, then: common::Hook) {
    let again = clock.clone();
    clock.arm(Box::new(move || {
        let named = "SELECT COUNT(*) FROM Patient WHERE first_name = 'Nadia' AND last_name = 'Cherif'";
        let written: i64 = common::another_program(&nanopix).query_row(named, [], |r| r.get(0)).unwrap();
        match written {
            0 => once_nadia_is_in_nanopix(again, nanopix, then),
            _ => then(),
        }
    }));
}

/// Locks `dentaltid` (a write transaction DentalTID holds, `BEGIN EXCLUSIVE`) until `release`
/// says so; returns once it holds the lock.
fn lock_dentaltid(dentaltid: std::path::PathBuf, release: crossbeam_channel::Receiver<()>) -> common::Hook {
    Box::new(move || {
        let (locked, is_locked) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let dentaltid = common::another_program(&dentaltid);
            dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
            locked.send(()).unwrap();
            let _ = release.recv_timeout(std::time::Duration::from_secs(60));
            dentaltid.execute_batch("ROLLBACK").unwrap();
        });
        is_locked.recv().unwrap();
    })
}

/// DentalTID holds its database locked past the busy timeout once Live Sync wrote Nadia's NanoPix
/// patient, before her link is stored: her export fails (`busy`), and its `sync_error` must still
/// name the NanoPix id she was written under, which the export knows without reading the locked
/// journal again (a read that fails there, after waiting another busy timeout).
#[test]
fn an_export_refused_by_a_locked_dentaltid_after_nanopix_was_written_names_its_nanopix_id() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let mut config = clinic.config_without_automatic_work();
    config.clock = std::sync::Arc::new(clock.clone());
    config.busy_timeout = std::time::Duration::from_millis(200);
    let sync = NanoPixSync::open(config).unwrap();
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    common::drain(&sync);
    let (release, released) = crossbeam_channel::bounded(1);
    let (nanopix, dentaltid) = (clinic.nanopix_db(), clinic.dentaltid.clone());
    once_nadia_is_in_nanopix(clock.clone(), nanopix, lock_dentaltid(dentaltid, released));
    let refused = sync.reconcile();
    release.send(()).unwrap();
    assert!(clock.ran(), "DentalTID took its lock once her NanoPix patient was written ({refused:?})");
    let written = common::nanopix_ids_named(&clinic, "Nadia", "Cherif");
    assert_eq!(written.len(), 1, "her NanoPix patient is written: {written:?}");
    let named: Vec<Option<String>> = common::drain(&sync)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::SyncError { patient_id: Some(patient), external_id, code, .. } if patient == nadia => {
                assert_eq!(code, "busy");
                Some(external_id)
            }
            _ => None,
        })
        .collect();
    assert!(!named.is_empty(), "her export's error is reported");
    assert!(named.iter().all(|id| id.as_deref() == Some(written[0].as_str())), "{named:?} name {written:?}");
}

/// The host stops the handle just as `export_existing` finishes its last export: no patient is
/// left without a NanoPix patient, so the call gives how many it exported, not `closed` (the
/// host would tell the clinic its old patients are not all in NanoPix).
#[test]
fn export_existing_stopped_as_its_last_export_ends_gives_its_count() {
    let clinic = Clinic::new("v29");
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    sync.export_existing().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let stopper = sync.stopper();
    once_nadia_is_in_nanopix(clock.clone(), clinic.nanopix_db(), Box::new(move || stopper.stop()));
    let result = sync.export_existing();
    assert!(clock.ran(), "stopped once her NanoPix patient was written ({result:?})");
    let unexported: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id", |r| r.get(0));
    assert!(unexported.is_empty(), "Nadia ({nadia}) is exported: {unexported:?} are not");
    assert_eq!(result.map_err(|error| error.code()), Ok(1));
}

/// `export_existing` with a NanoPix that refuses one patient's row (a trigger of its own): the
/// others are exported all the same, the call succeeds with their number, and only a
/// `sync_error` naming her tells the host who is left; calling again exports her.
#[test]
fn export_existing_goes_on_past_a_patient_nanopix_refuses_and_counts_only_those_exported() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let refuse_nadia = "CREATE TRIGGER refuse_nadia BEFORE INSERT ON Patient WHEN NEW.first_name = 'Nadia'
                        BEGIN SELECT RAISE(ABORT, 'refused'); END";
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch(refuse_nadia).unwrap();
    common::drain(&sync);

    assert_eq!(sync.export_existing().unwrap(), 6, "the six sample patients");
    let unexported: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id", |r| r.get(0));
    assert_eq!(unexported, [nadia]);
    let named = common::drain(&sync).into_iter().any(|event| {
        matches!(event.kind, EventKind::SyncError { code, patient_id: Some(p), .. } if code == "database" && p == nadia)
    });
    assert!(named, "a sync_error names Nadia");
    rusqlite::Connection::open(clinic.nanopix_db()).unwrap().execute_batch("DROP TRIGGER refuse_nadia").unwrap();
    sync.export_existing().unwrap();
    let exported: Vec<Option<String>> =
        clinic.dentaltid_rows(&format!("SELECT external_id FROM patients WHERE id = {nadia}"), |r| r.get(0));
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Cherif"), [exported[0].clone().unwrap()]);
}

/// NanoPix refused Nadia's row, and her export waits in the journal. Once NanoPix takes it again,
/// `export_existing` exports her: the pass it catches up with NanoPix by ends her export first.
/// The call must count her, or the host tells the clinic that nobody was exported.
#[test]
fn export_existing_counts_the_export_its_catch_up_ended() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    assert_eq!(sync.export_existing().unwrap(), 6);
    let nadia = clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    block_nanopix_inserts(&clinic, true);
    assert_eq!(sync.export_existing().unwrap(), 0, "NanoPix refuses her row");
    block_nanopix_inserts(&clinic, false);

    assert_eq!(sync.export_existing().unwrap(), 1, "Nadia ({nadia}) is exported by this call");
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Cherif").len(), 1);
}

/// The person typed into DentalTID again while her first patient, imported from NanoPix, is
/// still there: her export finds NanoPix locked (by the returned connection, which keeps it so)
/// and waits in the journal, with no NanoPix row written. The first patient is then deleted.
/// Returns the handle, her DentalTID id and NanoPix's locking connection.
fn her_export_waits_as_the_first_one_is_deleted(clinic: &Clinic) -> (NanoPixSync, i64, rusqlite::Connection) {
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let again = add_the_deleted_patient_again(clinic);
    let nanopix = common::another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = sync.export_patient(again).unwrap_err();
    assert_eq!(refused.code(), "busy", "{refused}");
    assert_eq!(journaled_exports(clinic), 1, "her export waits in the journal");
    delete_the_imported_patient(clinic);
    (sync, again, nanopix)
}

/// How many exports wait in the sync's journal.
fn journaled_exports(clinic: &Clinic) -> i64 {
    clinic.dentaltid_rows("SELECT count(*) FROM nanopix_sync_exports", |r| r.get::<_, i64>(0))[0]
}

/// The person typed into DentalTID again while her first patient was still there: her export
/// finds NanoPix locked and waits in the journal, with no NanoPix row written. The first patient
/// is then deleted, and `export_patient` is asked again while NanoPix is still locked: it gives
/// her the NanoPix patient the first one left behind, instead of leaving her export to write
/// her a second NanoPix patient once NanoPix lets go.
#[test]
fn a_patient_whose_export_waits_gets_the_nanopix_patient_a_deleted_one_left_behind() {
    let clinic = Clinic::new("v29");
    let (sync, again, nanopix) = her_export_waits_as_the_first_one_is_deleted(&clinic);
    let given_back = sync.export_patient(again).map(|id| id.to_string());
    nanopix.execute_batch("ROLLBACK").unwrap();
    sync.reconcile().unwrap();
    assert_eq!(given_back.map_err(|error| error.to_string()), Ok(LEFT_BEHIND.to_owned()));
    assert_eq!(sync.source_info(again).unwrap().external_id.as_deref(), Some(LEFT_BEHIND));
    assert_eq!(clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0)), [1], "one person");
    assert_eq!(journaled_exports(&clinic), 0, "her export dropped");
}

/// The person typed into DentalTID again while her first patient was still there: her export
/// finds NanoPix locked and waits in the journal, with no NanoPix row written. The first patient
/// is then deleted, and "Sync Now" asks for the delete of the NanoPix patient she left behind
/// while NanoPix is still locked. Once NanoPix lets go, the repair of the waiting export gives
/// her that NanoPix patient back, as an export does, instead of writing her a second one.
#[test]
fn the_repair_of_a_waiting_export_gives_back_the_nanopix_patient_a_deleted_one_left_behind() {
    let clinic = Clinic::new("v29");
    let (sync, again, nanopix) = her_export_waits_as_the_first_one_is_deleted(&clinic);
    sync.reconcile().unwrap();
    nanopix.execute_batch("ROLLBACK").unwrap();
    sync.reconcile().unwrap();
    assert_eq!(sync.source_info(again).unwrap().external_id.as_deref(), Some(LEFT_BEHIND));
    assert_eq!(clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get::<_, i64>(0)), [1], "one person");
    assert_eq!(journaled_exports(&clinic), 0, "her export dropped");
}

/// As above, but NanoPix's user also saved her, under another id, while her export waited: the
/// repair gives way to that NanoPix patient, as a fresh export's catch-up would link her first,
/// instead of giving her the one left behind and leaving the one saved to be imported as a
/// second DentalTID patient.
#[test]
fn the_repair_of_a_waiting_export_gives_way_to_the_patient_nanopix_saved_before_giving_back() {
    let clinic = Clinic::new("v29");
    let (sync, again, nanopix) = her_export_waits_as_the_first_one_is_deleted(&clinic);
    sync.reconcile().unwrap();
    nanopix.execute_batch("ROLLBACK").unwrap();
    let saved = "20250301_100000";
    clinic.add_nanopix(saved, "DSSSSFSFS", "FSFFS", Some("2025-01-21"));
    sync.reconcile().unwrap();
    sync.reconcile().unwrap();
    let sql = "SELECT id FROM patients WHERE familyName = 'DSSSSFSFS' ORDER BY id";
    assert_eq!(clinic.dentaltid_rows(sql, |r| r.get::<_, i64>(0)), [again], "no second DentalTID patient");
    assert_eq!(sync.source_info(again).unwrap().external_id.as_deref(), Some(saved));
    assert_eq!(journaled_exports(&clinic), 0, "her export dropped");
}
