//! A busy clinic: DentalTID and NanoPix keep writing while the sync works.
//!
//! The other program is a second connection. Mostly it holds the database's write lock (with its
//! change made but not committed) while the sync reads, and commits once an event shows that the
//! sync has read what it works from; once, a clock the sync asks the time makes the change. Each
//! test waits on events with deadlines, never on sleeps.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::NaiveDateTime;
use common::{
    Clinic, Hook, HookedClock, another_program, assert_nadia_once_on_each_side, clinic_morning, insert_nanopix_patient,
    until, wait_for,
};
use nanopix_sync::{Clock, EventKind, NanoPixSync, ReconcileReport};
use rusqlite::Connection;

/// The clinic opened with a busy timeout long enough to wait for the other program's
/// transaction, and without automatic work: only the calls a test makes do work.
fn open_waiting_long(clinic: &Clinic) -> NanoPixSync {
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_secs(30);
    NanoPixSync::open(config).unwrap()
}

/// Adds a NanoPix row the sync cannot read as a patient (its id is no real date). The sync
/// reports it (`odd_row`) right after it has read both sides at the start of a reconcile: the
/// tests use that event to know the sync has read what it matches against.
fn add_odd_nanopix_row(clinic: &Clinic) {
    let conn = Connection::open(clinic.nanopix_db()).unwrap();
    conn.execute("INSERT INTO Patient(id, last_name, first_name) VALUES ('20251399_000000', 'Odd', 'Row')", [])
        .unwrap();
}

fn is_odd_row(kind: &EventKind) -> bool {
    matches!(kind, EventKind::SyncError { code, .. } if code == "odd_row")
}

/// Nadia Saidi, born 1982-04-09, in both programs, and the first "Sync Now" of the clinic,
/// while DentalTID (another program) runs on her the `change` made of her DentalTID id, in a
/// transaction it began before the sync started and commits once the sync has read both sides:
/// the change lands after the sync read its candidates for matching, and before it writes
/// anything. Returns the clinic, her DentalTID id, the reconcile's report and its events.
fn first_sync_while_dentaltid_changes_nadia(
    change: impl FnOnce(i64) -> String,
) -> (Clinic, i64, nanopix_sync::ReconcileReport, Vec<EventKind>) {
    let clinic = Clinic::new("v29");
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    clinic.add_nanopix("20250301_093000", "SAIDI", "Nadia", Some("1982-04-09"));
    add_odd_nanopix_row(&clinic);
    let sync = open_waiting_long(&clinic);
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    dentaltid.execute_batch(&change(nadia)).unwrap();
    let events = sync.events();
    let report = std::thread::scope(|scope| {
        let reconcile = scope.spawn(|| sync.reconcile());
        wait_for(&sync, Duration::from_secs(60), is_odd_row);
        dentaltid.execute_batch("COMMIT").unwrap();
        reconcile.join().unwrap().unwrap()
    });
    let events = events.try_iter().map(|event| event.kind).collect();
    (clinic, nadia, report, events)
}

/// `(patient_id, external_id)` of every DentalTID patient holding `external_id`.
fn holders(clinic: &Clinic, external_id: &str) -> Vec<(i64, String, String)> {
    clinic.dentaltid_rows(
        &format!("SELECT id, name, familyName FROM patients WHERE external_id = '{external_id}' ORDER BY id"),
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// `PRAGMA integrity_check` of a database.
fn integrity(path: &std::path::Path) -> String {
    Connection::open(path).unwrap().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

/// A DentalTID patient renamed (the receptionist corrects the name of another person typed
/// into a record) after the first sync read it for matching, and before it wrote its links, is
/// no longer the NanoPix patient's match: the sync must not write that NanoPix id into it.
#[test]
fn a_dentaltid_patient_renamed_during_a_first_sync_is_not_linked_to_the_nanopix_patient_it_no_longer_matches() {
    let (clinic, nadia, report, events) = first_sync_while_dentaltid_changes_nadia(|nadia| {
        format!("UPDATE patients SET name = 'Yasmine', familyName = 'Kaci' WHERE id = {nadia}")
    });
    let linked_to_yasmine = events.iter().any(|kind| {
        matches!(kind, EventKind::PatientLinked { patient_id, external_id, .. }
                 if *patient_id == nadia && external_id == "20250301_093000")
    });
    assert!(!linked_to_yasmine, "Yasmine Kaci linked to NanoPix's Nadia Saidi: {events:#?}");
    assert_eq!(report.linked, 0, "{report:?}");
    let held = holders(&clinic, "20250301_093000");
    assert_eq!(held.len(), 1, "one DentalTID patient holds NanoPix's Nadia Saidi: {held:?}");
    assert_ne!(held[0].0, nadia, "NanoPix's Nadia Saidi is held by Yasmine Kaci: {held:?}");
    assert_eq!(integrity(&clinic.dentaltid), "ok");
    assert_eq!(integrity(&clinic.nanopix_db()), "ok");
}

/// The same with the birth date corrected: a link needs the same birth date on both sides.
#[test]
fn a_dentaltid_patient_whose_birth_date_is_corrected_during_a_first_sync_is_not_linked_on_the_old_one() {
    let (clinic, nadia, report, events) = first_sync_while_dentaltid_changes_nadia(|nadia| {
        format!("UPDATE patients SET dateOfBirth = '1962-04-09T00:00:00.000', age = 62 WHERE id = {nadia}")
    });
    let held = holders(&clinic, "20250301_093000");
    assert_eq!(held.len(), 1, "one DentalTID patient holds NanoPix's Nadia Saidi: {held:?}");
    assert_ne!(
        held[0].0, nadia,
        "the Nadia Saidi born in 1962 is linked to NanoPix's born in 1982: {report:?} {events:#?}"
    );
}

/// A DentalTID patient deleted after the first sync matched it, and before it linked it, leaves
/// its NanoPix match a NanoPix patient like any other: it is imported by that sync, not left
/// out of DentalTID with a `no_such_patient` error until some later reconcile.
#[test]
fn a_nanopix_patient_whose_dentaltid_match_is_deleted_during_a_first_sync_is_imported_by_it() {
    let (clinic, _, report, events) =
        first_sync_while_dentaltid_changes_nadia(|nadia| format!("DELETE FROM patients WHERE id = {nadia}"));
    let held = holders(&clinic, "20250301_093000");
    assert_eq!(held.len(), 1, "NanoPix's Nadia Saidi is in DentalTID once: {held:?}, {report:?}, {events:#?}");
    assert_eq!(report.errors, 1, "only the odd row is an error: {report:?}");
}

/// Runs a first "Sync Now" on `clinic` whose thread that decides the pages (the one without a
/// name) runs `while_deciding` when it asks the clock the time, once it has decided a page;
/// returns the handle and the report.
fn first_sync_while_deciding(clinic: &Clinic, while_deciding: Hook) -> (NanoPixSync, ReconcileReport) {
    let clock = HookedClock::new(|thread| thread.name().is_none());
    clock.arm(while_deciding);
    let mut config = clinic.config_without_automatic_work();
    config.clock = Arc::new(clock.clone());
    config.busy_timeout = Duration::from_secs(30);
    let sync = NanoPixSync::open(config).unwrap();
    let report = sync.reconcile().unwrap();
    assert!(clock.ran(), "the hook ran during the first sync");
    (sync, report)
}

/// Nadia Saidi in both programs, an exact match, and a first "Sync Now" during which, once it
/// matched them, NanoPix runs `sql`; returns her DentalTID id, the handle and the report.
fn first_sync_of_nadia_while_nanopix_runs(clinic: &Clinic, sql: &'static str) -> (i64, NanoPixSync, ReconcileReport) {
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    clinic.add_nanopix("20250301_093000", "Saidi", "Nadia", Some("1982-04-09"));
    let nanopix_db = clinic.nanopix_db();
    let hook: Hook = Box::new(move || {
        another_program(&nanopix_db).execute(sql, []).unwrap();
    });
    let (sync, report) = first_sync_while_deciding(clinic, hook);
    (nadia, sync, report)
}

/// NanoPix's Nadia Saidi matches DentalTID's exactly. While the clinic's first "Sync Now" runs,
/// after it read NanoPix's patients and matched them, and before it writes its links, the X-ray
/// assistant corrects that NanoPix patient: she is Yasmine Kaci (her form was filled in with the
/// wrong name). DentalTID's Nadia Saidi must not be linked to NanoPix's Yasmine Kaci, whose
/// X-rays would then be filed under Nadia. The thread that decides the pages of a first sync
/// (the one without a name) asks the clock the time once it has decided the page.
#[test]
fn a_nanopix_patient_renamed_during_a_first_sync_is_not_linked_to_the_dentaltid_patient_it_no_longer_matches() {
    let clinic = Clinic::new("v29");
    let (nadia, sync, report) = first_sync_of_nadia_while_nanopix_runs(
        &clinic,
        "UPDATE Patient SET first_name = 'Yasmine', last_name = 'Kaci', updated_datetime = '2025-01-22 10:00:00'
         WHERE id = '20250301_093000'",
    );
    let events: Vec<EventKind> = common::drain(&sync).into_iter().map(|event| event.kind).collect();
    let held = holders(&clinic, "20250301_093000");
    assert_eq!(held.len(), 1, "NanoPix's patient is in DentalTID once: {held:?}, {report:?}, {events:#?}");
    assert_ne!(held[0].0, nadia, "DentalTID's Nadia Saidi is linked to NanoPix's Yasmine Kaci: {events:#?}");
}

/// NanoPix's Nadia Saidi matches DentalTID's exactly. While the clinic's first "Sync Now" runs,
/// after it matched them and before it writes its links, the X-ray assistant saves another
/// patient in NanoPix: Nadia, unchanged, is still linked by that sync, with no error.
#[test]
fn a_nanopix_patient_saved_during_a_first_sync_leaves_the_unchanged_ones_linked() {
    let clinic = Clinic::new("v29");
    let (nadia, sync, report) = first_sync_of_nadia_while_nanopix_runs(
        &clinic,
        "INSERT INTO Patient(id, last_name, first_name, birthdate)
         VALUES ('20250301_094500', 'Kaci', 'Yasmine', '1990-05-06')",
    );
    let events: Vec<EventKind> = common::drain(&sync).into_iter().map(|event| event.kind).collect();
    assert_eq!((report.linked, report.errors), (1, 0), "{report:?}, {events:#?}");
    let held = holders(&clinic, "20250301_093000");
    assert_eq!(held.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(), [nadia], "{held:?}");
}

/// NanoPix saves a new patient's row before it makes its folder. A patient NanoPix saves while a
/// first sync of a large clinic reads NanoPix page by page is the next pass's to import (the
/// sync imports what it found unknown when it began); like every patient it imports, its folder
/// is then awaited, never reported removed.
#[test]
fn a_nanopix_patient_saved_while_a_first_sync_reads_its_pages_is_imported_next_and_not_reported_removed() {
    let clinic = Clinic::new("v29");
    // Eight pages of NanoPix patients: while DentalTID holds its lock, the sync's reader stops a
    // few pages in, with the rest still to read.
    clinic.add_bulk_nanopix(40_000);
    add_odd_nanopix_row(&clinic);
    let sync = open_waiting_long(&clinic);
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = std::thread::scope(|scope| {
        let reconcile = scope.spawn(|| sync.reconcile());
        wait_for(&sync, Duration::from_secs(120), is_odd_row);
        // NanoPix saves the row of a new patient (its folder comes with the first image).
        clinic.add_nanopix_row("20250301_093000", "Saidi", "Nadia", Some("1982-04-09"));
        dentaltid.execute_batch("COMMIT").unwrap();
        reconcile.join().unwrap().unwrap()
    });
    assert_eq!(first.imported, 40_001, "the fixture and the bulk: {first:?}");
    let _ = common::drain(&sync);
    // "Sync Now" again, and once more, before NanoPix made the folder.
    for _ in 0..2 {
        let again = sync.reconcile().unwrap();
        let removed: Vec<EventKind> = common::drain(&sync)
            .into_iter()
            .map(|event| event.kind)
            .filter(|kind| matches!(kind, EventKind::ExternalPatientRemoved { .. }))
            .collect();
        assert_eq!((again.removed, removed), (0, vec![]), "a folder NanoPix has not made yet is no removal");
        assert_eq!(holders(&clinic, "20250301_093000").len(), 1, "imported once: {again:?}");
    }
}

/// NanoPix's `Patient.id` is `UNIQUE`; a program that saves a patient with `INSERT OR REPLACE`
/// (an edit, a re-import) deletes the row and writes it again under a new `pk`, past every other.
/// A first sync of a large clinic reads NanoPix page by page, in `pk` order, one statement a
/// page. A patient saved that way after the sync read its page, and before it reached the end, is
/// read a second time. It is one NanoPix patient: DentalTID must get it once. The thread that
/// decides the pages of a first sync (the one without a name) asks the clock the time once it has
/// decided the first page, which the reader has read by then.
#[test]
fn a_nanopix_patient_saved_again_under_a_new_pk_while_a_first_sync_reads_its_pages_is_imported_once() {
    let clinic = Clinic::new("v29");
    // Four pages and more of NanoPix patients: when the first page is decided, the reader is at
    // most three pages in.
    clinic.add_bulk_nanopix(20_000);
    let moved = "20230101_000009";
    let nanopix_db = clinic.nanopix_db();
    let hook: Hook = Box::new(move || {
        // NanoPix saves patient `moved` (of the first page) again.
        another_program(&nanopix_db)
            .execute("INSERT OR REPLACE INTO Patient(id, last_name, first_name) VALUES (?1, 'Bulk', '9')", [moved])
            .unwrap();
    });
    let (_sync, report) = first_sync_while_deciding(&clinic, hook);
    let pks: Vec<i64> = clinic.nanopix_rows(&format!("SELECT pk FROM Patient WHERE id = '{moved}'"), |r| r.get(0));
    assert!(pks[0] > 15_001, "the row moved past the pages read so far: {pks:?}");
    let holders: Vec<i64> =
        clinic.dentaltid_rows(&format!("SELECT id FROM patients WHERE external_id = '{moved}'"), |r| r.get(0));
    assert_eq!(holders.len(), 1, "NanoPix patient {moved} is in DentalTID {} times ({report:?})", holders.len());
    assert_eq!(report.imported, 20_001, "the fixture's patient and the bulk, each once");
}

/// How many exports the sync's journal holds (exports begun and not finished).
fn exports_in_flight(clinic: &Clinic) -> i64 {
    clinic.dentaltid_rows("SELECT count(*) FROM nanopix_sync_exports", |r| r.get(0))[0]
}

/// Runs `export_existing` while NanoPix holds its write lock from before the call until the
/// sync has begun its first export (its journal row is written), then lets DentalTID (another
/// program) run `change` and NanoPix go on; returns what `export_existing` returned and its events.
fn export_existing_while_dentaltid_changes(
    clinic: &Clinic,
    sync: &NanoPixSync,
    change: &str,
) -> (nanopix_sync::Result<u64>, Vec<EventKind>) {
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let events = sync.events();
    std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_existing());
        until(Duration::from_secs(30), "the first export is journaled", || exports_in_flight(clinic) > 0);
        another_program(&clinic.dentaltid).execute_batch(change).unwrap();
        nanopix.execute_batch("ROLLBACK").unwrap();
        let result = exporting.join().unwrap();
        (result, events.try_iter().map(|event| event.kind).collect())
    })
}

/// A patient deleted in DentalTID while `export_existing` works through the clinic's patients,
/// before its turn came, is not written to NanoPix: NanoPix would get a patient nobody has, and
/// the next reconcile would ask the host to delete it again.
#[test]
fn a_patient_deleted_in_dentaltid_during_export_existing_is_not_written_to_nanopix() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let _ = common::drain(&sync);
    let karim: i64 = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Karim'", |r| r.get(0))[0];
    let (exported, events) =
        export_existing_while_dentaltid_changes(&clinic, &sync, &format!("DELETE FROM patients WHERE id = {karim}"));
    let exported_karim: Vec<&EventKind> = events
        .iter()
        .filter(|kind| matches!(kind, EventKind::PatientExported { patient_id, .. } if *patient_id == karim))
        .collect();
    let in_nanopix: Vec<String> =
        clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Haddad'", |r| r.get(0));
    assert_eq!(
        (exported_karim, in_nanopix),
        (vec![], vec![]),
        "Karim Haddad, deleted before his turn, was exported to NanoPix ({exported:?})"
    );
    assert_eq!(exported.unwrap(), 5, "the five others that had no NanoPix patient");
    let next = sync.reconcile().unwrap();
    assert_eq!(next.errors, 0, "{next:?}: {:#?}", common::drain(&sync));
    let asked: Vec<EventKind> = common::drain(&sync)
        .into_iter()
        .map(|event| event.kind)
        .filter(|kind| matches!(kind, EventKind::DeleteRequested { .. }))
        .collect();
    assert_eq!(asked, vec![], "nothing to delete in NanoPix");
}

/// A patient whose name DentalTID corrected while `export_existing` works through the clinic's
/// patients, before its turn came, is written to NanoPix with the name DentalTID holds then.
#[test]
fn a_patient_renamed_in_dentaltid_during_export_existing_is_exported_with_the_name_it_has_then() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let karim: i64 = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Karim'", |r| r.get(0))[0];
    let (exported, _) = export_existing_while_dentaltid_changes(
        &clinic,
        &sync,
        &format!("UPDATE patients SET name = 'Karima' WHERE id = {karim}"),
    );
    exported.unwrap();
    let external_id: Vec<String> =
        clinic.dentaltid_rows(&format!("SELECT external_id FROM patients WHERE id = {karim}"), |r| r.get(0));
    let external_id = &external_id[0];
    let names: Vec<(String, String)> = clinic
        .nanopix_rows(&format!("SELECT first_name, last_name FROM Patient WHERE id = '{external_id}'"), |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    assert_eq!(names, [("Karima".to_owned(), "Haddad".to_owned())]);
}

/// Exports Nadia Saidi, then deletes her in DentalTID: the sync asks for her NanoPix patient's
/// delete. Returns her NanoPix id.
#[cfg(target_os = "linux")]
fn nadia_asked_to_delete(clinic: &Clinic, sync: &NanoPixSync) -> String {
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let external_id = sync.export_patient(nadia).unwrap().to_string();
    another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [nadia]).unwrap();
    let _ = common::drain(sync);
    sync.reconcile().unwrap();
    let asked = |event: &nanopix_sync::Event| matches!(&event.kind, EventKind::DeleteRequested { external_id: asked, .. } if *asked == external_id);
    assert!(common::drain(sync).iter().any(asked), "the delete is asked for");
    external_id
}

/// `delete_in_nanopix` refuses while NanoPix holds any file for the patient. NanoPix may save an
/// image into the patient's folder while the call waits for NanoPix's lock (NanoPix is busy
/// saving something else): the image must never be left in a folder whose patient row the call
/// deleted, which NanoPix could no longer show or file.
#[cfg(target_os = "linux")]
#[test]
fn an_image_nanopix_saves_while_delete_in_nanopix_waits_for_its_lock_keeps_its_patient() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let external_id = nadia_asked_to_delete(&clinic, &sync);
    let folder = clinic.root.join(&external_id);
    let whole_row = |clinic: &Clinic| {
        let sql = format!(
            "SELECT pk, id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime
                           FROM Patient WHERE id = '{external_id}'"
        );
        clinic.nanopix_rows(&sql, |r| {
            (0..8).map(|i| r.get::<_, rusqlite::types::Value>(i)).collect::<Result<Vec<_>, _>>()
        })
    };
    let before = whole_row(&clinic);
    // Tells when the sync has looked into the folder for files: the folder closed after a read.
    let looked_into = closed_after_reading(&folder);
    // NanoPix is saving a change to another patient: it holds its write lock.
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    nanopix
        .execute("UPDATE Patient SET updated_datetime = '2025-01-22 10:05:00' WHERE id = '20250121_152638'", [])
        .unwrap();
    let deleted = std::thread::scope(|scope| {
        let deleting = scope.spawn(|| sync.delete_in_nanopix(&external_id));
        looked_into.recv_timeout(Duration::from_secs(30)).expect("the sync looks into the folder");
        // Meanwhile NanoPix saves an image of the patient into its folder (its Study row comes next).
        std::fs::write(folder.join("20250122_100500.iosb"), b"image").unwrap();
        std::fs::write(folder.join("20250122_100500_thumbnail.jpg"), b"thumbnail").unwrap();
        nanopix.execute_batch("COMMIT").unwrap();
        deleting.join().unwrap()
    });
    assert!(folder.join("20250122_100500.iosb").exists(), "the image is never deleted");
    assert_eq!(whole_row(&clinic), before, "the patient whose image NanoPix holds keeps its row ({deleted:?})");
    assert_eq!(before.len(), 1);
    assert!(matches!(deleted, Err(nanopix_sync::Error::NanoPixPatientNotEmpty { .. })), "{deleted:?}");
}

/// The receptionist types a new patient into DentalTID, and the X-ray assistant types the same
/// person into NanoPix at the same moment. DentalTID asks for the export at once
/// (`export_patient`), and NanoPix commits its row after the sync's catch-up read NanoPix, but
/// before the export wrote to NanoPix (the export waits for NanoPix's write lock meanwhile).
///
/// When the export gets the lock, NanoPix already holds an exact match the sync has not seen:
/// the person must end up with one NanoPix patient, linked to the DentalTID patient, not with
/// two NanoPix patients (and, at the next reconcile, two DentalTID patients).
#[test]
fn the_same_person_saved_in_nanopix_while_her_export_waits_for_nanopixs_lock_gets_one_nanopix_patient() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    // NanoPix saves the same person: its transaction is open, the row written, not committed.
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert_nanopix_patient(&nanopix, "20250122_095950", ("Saidi", "Nadia"), Some("1982-04-09"), "2025-01-22 09:59:58");
    let exported = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_patient(nadia));
        until(Duration::from_secs(30), "the export is journaled", || exports_in_flight(&clinic) > 0);
        nanopix.execute_batch("COMMIT").unwrap();
        std::fs::create_dir(clinic.root.join("20250122_095950")).unwrap();
        exporting.join().unwrap()
    });
    let next = sync.reconcile().unwrap();
    assert_nadia_once_on_each_side(
        &clinic,
        nadia,
        &format!("export_patient gave {exported:?}, the next reconcile {next:?}"),
    );
    assert_eq!(integrity(&clinic.dentaltid), "ok");
    assert_eq!(integrity(&clinic.nanopix_db()), "ok");
}

/// The receptionist adds Nadia Saidi while NanoPix holds its write lock (it is saving an image):
/// her export is refused (`busy`) and waits in the journal, under the second of the clinic's
/// clock. The X-ray assistant opened NanoPix's form for the same Nadia in that very second:
/// NanoPix makes her folder and writes her row, still holding the lock. The next "Sync Now"
/// repairs the export, which moves off the id whose folder is there and waits for NanoPix's lock,
/// and NanoPix commits Nadia meanwhile.
///
/// When the repair gets the lock, NanoPix holds an exact match the sync has not read: the person
/// must end up with one NanoPix patient, linked to the DentalTID patient, not with two NanoPix
/// patients (and, at the next reconcile, two DentalTID patients).
#[test]
fn the_same_person_saved_in_nanopix_while_the_repair_of_her_export_waits_for_nanopixs_lock_gets_one_nanopix_patient() {
    let clinic = Clinic::new("v29");
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let same_second = "20250122_100000";
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = sync.export_patient(nadia);
    assert!(matches!(refused, Err(nanopix_sync::Error::Busy { .. })), "{refused:?}");
    assert_eq!(reserved_id(&clinic).as_deref(), Some(same_second), "the export waits in the journal");
    std::fs::create_dir(clinic.root.join(same_second)).unwrap();
    insert_nanopix_patient(&nanopix, same_second, ("Saidi", "Nadia"), Some("1982-04-09"), "2025-01-22 10:00:08");
    // Reads the journal as another program would, waiting out the sync's own writes to it.
    let journal = another_program(&clinic.dentaltid);
    let reserved = || journal.query_row("SELECT external_id FROM nanopix_sync_exports", [], |r| r.get::<_, String>(0));
    let repairing = std::thread::scope(|scope| {
        let repairing = scope.spawn(|| sync.reconcile());
        until(Duration::from_secs(30), "the repair moves off the id whose folder is there", || {
            reserved().unwrap() != same_second
        });
        nanopix.execute_batch("COMMIT").unwrap();
        repairing.join().unwrap()
    });
    let next = sync.reconcile();
    let (in_nanopix, in_dentaltid) =
        (common::nanopix_ids_named(&clinic, "Nadia", "Saidi"), common::dentaltid_named(&clinic, "Nadia", "Saidi"));
    let context = format!("the repairing reconcile gave {repairing:?}, the next one {next:?}");
    assert_eq!(in_nanopix, [same_second], "Nadia Saidi's NanoPix patients ({context})");
    assert_eq!(in_dentaltid, [(nadia, Some(same_second.to_owned()))], "Nadia Saidi's DentalTID patients ({context})");
}

/// Live Sync is on (switched on before the clinic's first "Sync Now"), and the receptionist
/// adds Nadia Saidi to DentalTID; the X-ray assistant saves the same Nadia Saidi in NanoPix
/// while that first sync runs, after it read both sides (DentalTID, busy saving something
/// else, keeps the sync from writing until then). NanoPix's row is committed long before the
/// sync exports Nadia at the end of its pass: the export must not give her a second NanoPix
/// patient (and, at the next pass, a second DentalTID patient).
#[test]
fn a_patient_nanopix_saves_during_a_full_reconcile_is_not_exported_again_by_that_reconcile() {
    let clinic = Clinic::new("v29");
    add_odd_nanopix_row(&clinic);
    let sync = open_waiting_long(&clinic);
    sync.set_live_sync(true).unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    let first = std::thread::scope(|scope| {
        let reconcile = scope.spawn(|| sync.reconcile());
        common::wait_for(&sync, Duration::from_secs(60), is_odd_row);
        clinic.add_nanopix("20250122_095950", "Saidi", "Nadia", Some("1982-04-09"));
        dentaltid.execute_batch("COMMIT").unwrap();
        reconcile.join().unwrap().unwrap()
    });
    let next = sync.reconcile().unwrap();
    assert_nadia_once_on_each_side(&clinic, nadia, &format!("the first sync {first:?}, the next {next:?}"));
}

/// The mirror of the export race: Live Sync is on and the X-ray assistant saved Nadia Saidi in
/// NanoPix; the receptionist types the same Nadia Saidi into DentalTID while the clinic's first
/// "Sync Now" runs. DentalTID commits her after the sync read DentalTID for matching, and before
/// it wrote anything (its insert holds DentalTID's write lock until then). When the sync writes
/// its import, DentalTID already holds her exact match: she must end up as one DentalTID
/// patient linked to NanoPix's, not imported a second time and then exported as a second
/// NanoPix patient.
#[test]
fn the_same_person_dentaltid_saves_during_a_first_sync_is_linked_not_imported_and_exported_again() {
    let clinic = Clinic::new("v29");
    add_odd_nanopix_row(&clinic);
    clinic.add_nanopix("20250122_095950", "Saidi", "Nadia", Some("1982-04-09"));
    let sync = open_waiting_long(&clinic);
    sync.set_live_sync(true).unwrap();
    reconcile_while_dentaltid_saves_nadia(&clinic, &sync);
}

/// The clinic's clock, in a busy X-ray room: once `saving` is on, each time the sync asks the
/// time (as it does to plan each export's id, after it read NanoPix and before it writes the row)
/// NanoPix has just saved something (a short write transaction of another program, as saving an
/// image's `Study` row is, that changes NanoPix's data version); in a quieter room, only when the
/// sync made a patient folder since the last save. A save that would have to wait for the sync's
/// own lock is skipped.
#[derive(Clone)]
struct BusyXrayRoomClock {
    now: NaiveDateTime,
    nanopix_db: PathBuf,
    saving: Arc<AtomicBool>,
    saves: Arc<AtomicU32>,
    /// In a quieter room, `PatientData` and how many entries it held at the last save.
    quieter: Option<(PathBuf, Arc<AtomicUsize>)>,
}

impl std::fmt::Debug for BusyXrayRoomClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusyXrayRoomClock").field("now", &self.now).finish()
    }
}

impl BusyXrayRoomClock {
    /// The clock of `clinic`'s X-ray room, quiet until `saving` is set, then saving each time.
    fn of(clinic: &Clinic) -> Self {
        Self {
            now: clinic_morning(),
            nanopix_db: clinic.nanopix_db(),
            saving: Arc::new(AtomicBool::new(false)),
            saves: Arc::new(AtomicU32::new(0)),
            quieter: None,
        }
    }

    /// The clock of `clinic`'s quieter X-ray room, quiet until `saving` is set, then saving each
    /// time it is asked once the sync made a patient folder since the last save (or since then).
    fn quieter(clinic: &Clinic) -> Self {
        let folders = std::fs::read_dir(&clinic.root).unwrap().count();
        Self { quieter: Some((clinic.root.clone(), Arc::new(AtomicUsize::new(folders)))), ..Self::of(clinic) }
    }

    /// Whether the X-ray room saves as the sync asks the time now.
    fn saves_now(&self) -> bool {
        if !self.saving.load(Ordering::SeqCst) {
            return false;
        }
        let Some((root, seen)) = &self.quieter else { return true };
        let folders = std::fs::read_dir(root).unwrap().count();
        seen.swap(folders, Ordering::SeqCst) < folders
    }
}

impl Clock for BusyXrayRoomClock {
    fn now(&self) -> NaiveDateTime {
        if self.saves_now() {
            let nanopix = Connection::open(&self.nanopix_db).unwrap();
            nanopix.busy_timeout(Duration::ZERO).unwrap();
            let saved = self.saves.load(Ordering::SeqCst) + 1;
            let update = "UPDATE Patient SET updated_datetime = ?1 WHERE pk = 1";
            if nanopix.execute(update, [format!("2025-01-22 10:{:02}:{:02}", saved / 60 % 60, saved % 60)]).is_ok() {
                self.saves.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.now
    }
}

/// `export_existing` ("export all my old patients to NanoPix") while NanoPix keeps saving
/// (the X-ray room is busy): each export finds NanoPix changed since the sync last read it, and
/// is deferred, on every one of the three rounds. When it then returns, every patient it did
/// not export must be accounted for: an error (as `export_patient` gives `busy` after three
/// rounds), or a `sync_error` naming the patient (the `sync export-existing` runner fails on
/// those). Returning `Ok` with patients left unexported and nothing said leaves the clinic
/// believing its old patients are all in NanoPix; Live Sync never exports them later (they are
/// older than its cursor).
#[test]
fn export_existing_that_nanopix_keeps_deferring_reports_every_patient_it_did_not_export() {
    let clinic = Clinic::new("v29");
    let clock = BusyXrayRoomClock::of(&clinic);
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_secs(30);
    config.clock = Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let events = sync.events();
    let _ = events.try_iter().count();
    clock.saving.store(true, Ordering::SeqCst);
    let result = sync.export_existing();
    clock.saving.store(false, Ordering::SeqCst);
    let saves = clock.saves.load(Ordering::SeqCst);
    let unexported: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id", |r| r.get(0));
    let kinds: Vec<EventKind> = events.try_iter().map(|event| event.kind).collect();
    let reported: HashSet<i64> = kinds
        .iter()
        .filter_map(|kind| match kind {
            EventKind::SyncError { patient_id, .. } => *patient_id,
            _ => None,
        })
        .collect();
    let silent: Vec<i64> = unexported.iter().copied().filter(|id| !reported.contains(id)).collect();
    assert!(
        result.is_err() || silent.is_empty(),
        "export_existing gave {result:?} after NanoPix saved {saves} times, yet DentalTID patients {silent:?} \
         have no NanoPix patient and no sync_error names them; events: {kinds:#?}"
    );
}

/// `export_existing` of a clinic's old patients while the X-ray room saves an image now and
/// then (here, as soon as the sync made a patient folder since the last save): each save defers
/// the exports left in that round, until the sync has read NanoPix again. The exports go on round
/// after round as long as each round exports someone: a clinic's 100,000 patients take minutes,
/// during which NanoPix saves many times, and giving up after the third save left most of them
/// unexported, with `busy`.
#[test]
fn export_existing_goes_on_while_nanopix_saves_now_and_then() {
    let clinic = Clinic::new("v29");
    let clock = BusyXrayRoomClock::quieter(&clinic);
    let mut config = clinic.config_without_automatic_work();
    config.clock = Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    for n in 0..60 {
        clinic.add_dentaltid(&format!("Amina{n}"), "Benali", Some("1985-03-12"));
    }
    clock.saving.store(true, Ordering::SeqCst);
    let exported = sync.export_existing();
    clock.saving.store(false, Ordering::SeqCst);

    let saves = clock.saves.load(Ordering::SeqCst);
    let unexported: Vec<i64> =
        clinic.dentaltid_rows("SELECT id FROM patients WHERE external_id IS NULL ORDER BY id", |r| r.get(0));
    assert_eq!(unexported, Vec::<i64>::new(), "export_existing gave {exported:?} after {saves} saves");
    assert!(matches!(exported, Ok(count) if count >= 60), "{exported:?}");
    assert!(saves > 3, "NanoPix saved {saves} times, no more often than the rounds tried before");
}

/// The X-ray room keeps saving while Nadia Saidi's export waits for NanoPix to be still: the
/// export gives up after three tries with `busy`. Its message must say what happened (NanoPix
/// kept changing) and name NanoPix's database, not send support staff looking for a lock that
/// no program held.
#[test]
fn an_export_nanopix_keeps_deferring_says_nanopix_kept_changing_not_that_it_stayed_locked() {
    let clinic = Clinic::new("v29");
    let clock = BusyXrayRoomClock::of(&clinic);
    let mut config = clinic.config_without_automatic_work();
    config.clock = Arc::new(clock.clone());
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    clock.saving.store(true, Ordering::SeqCst);
    let exported = sync.export_patient(nadia);
    clock.saving.store(false, Ordering::SeqCst);

    let error = exported.expect_err("NanoPix changed before every try");
    assert_eq!(error.code(), "busy");
    assert_eq!(error.path(), Some(clinic.nanopix_db().as_path()), "{error}");
    let message = error.to_string();
    assert!(message.contains("kept changing") && !message.contains("locked"), "{message}");
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Saidi"), Vec::<String>::new());
}

/// Sends once `folder` itself is closed after it was opened for reading (listed), as inotify
/// reports it (`IN_CLOSE_NOWRITE`), from now on.
#[cfg(target_os = "linux")]
fn closed_after_reading(folder: &std::path::Path) -> crossbeam_channel::Receiver<()> {
    common::first_inotify_event(folder, 0x10)
}

/// Sends once an entry of `parent` is deleted, as inotify reports it (`IN_DELETE`), from now on.
#[cfg(target_os = "linux")]
fn deleted(parent: &std::path::Path) -> crossbeam_channel::Receiver<()> {
    common::first_inotify_event(parent, 0x200)
}

/// Sends once a write to NanoPix's database begins, from now on: its rollback journal is created
/// in `database/`, as inotify reports it (`IN_CREATE`).
#[cfg(target_os = "linux")]
fn nanopix_write_begun(clinic: &Clinic) -> crossbeam_channel::Receiver<()> {
    common::first_inotify_event(&clinic.root.join("database"), 0x100)
}

/// DESIGN.md's safety rules (not negotiable): every NanoPix write is a short `BEGIN IMMEDIATE`
/// transaction, with "no file I/O while holding a write lock". NanoPix itself must be able to
/// save an X-ray at any time; a folder operation on the share NanoPix's data often sits on can
/// take seconds (or a minute, on an unplugged share), during which NanoPix could save nothing.
///
/// The test makes the delete's commit wait (NanoPix is reading, as it does all the time), and
/// looks, the moment the folder is gone, whether anyone holds NanoPix's write lock.
#[cfg(target_os = "linux")]
#[test]
fn delete_in_nanopix_removes_no_folder_while_it_holds_nanopixs_write_lock() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_secs(10);
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let external_id = sync.export_patient(nadia).unwrap().to_string();
    Connection::open(&clinic.dentaltid).unwrap().execute("DELETE FROM patients WHERE id = ?1", [nadia]).unwrap();
    sync.reconcile().unwrap();
    // The only entry of PatientData the test removes is the patient's folder.
    let gone = deleted(&clinic.root);
    // NanoPix is in the middle of a read: the sync's commit waits for it (its busy timeout).
    let reading = Connection::open(clinic.nanopix_db()).unwrap();
    reading.execute_batch("BEGIN").unwrap();
    let _: i64 = reading.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
    let (deleted, locked) = std::thread::scope(|scope| {
        let deleting = scope.spawn(|| sync.delete_in_nanopix(&external_id));
        // A sync that removes the folder after its commit removes it once NanoPix's read is over.
        let mut reading = Some(reading);
        if gone.recv_timeout(Duration::from_secs(1)).is_err() {
            reading.take().unwrap().execute_batch("COMMIT").unwrap();
            gone.recv_timeout(Duration::from_secs(30)).expect("the sync removes the folder");
        }
        // NanoPix saving an image now: can it take its write lock?
        let saving = Connection::open(clinic.nanopix_db()).unwrap();
        saving.busy_timeout(Duration::ZERO).unwrap();
        let locked = match saving.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                saving.execute_batch("ROLLBACK").unwrap();
                false
            }
            Err(error) => {
                assert_eq!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy), "{error}");
                true
            }
        };
        if let Some(reading) = reading {
            reading.execute_batch("COMMIT").unwrap();
        }
        (deleting.join().unwrap(), locked)
    });
    assert!(
        !locked,
        "the patient folder was removed while the sync held NanoPix's write lock (the delete then gave {deleted:?})"
    );
}

/// NanoPix is reading (as it does all the time) when `delete_in_nanopix` has taken its write lock:
/// the delete's commit waits for that read. Meanwhile NanoPix's acquisition saves an image of the
/// patient into its folder (its `Study` row would come once the lock is free). The delete must not
/// then commit away the row of a patient whose folder holds an image: NanoPix could no longer show
/// or file it.
#[cfg(target_os = "linux")]
#[test]
fn an_image_nanopix_saves_while_delete_in_nanopix_waits_for_its_commit_keeps_its_patient() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let external_id = nadia_asked_to_delete(&clinic, &sync);
    let folder = clinic.root.join(&external_id);
    let rows = |clinic: &Clinic| {
        clinic.nanopix_rows(&format!("SELECT count(*) FROM Patient WHERE id = '{external_id}'"), |r| r.get::<_, i64>(0))
            [0]
    };
    assert_eq!(rows(&clinic), 1);
    // NanoPix is in the middle of a read: a commit must wait for it to end.
    let reading = Connection::open(clinic.nanopix_db()).unwrap();
    reading.execute_batch("BEGIN").unwrap();
    let _: i64 = reading.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
    let writing = nanopix_write_begun(&clinic);
    let deleted = std::thread::scope(|scope| {
        let deleting = scope.spawn(|| sync.delete_in_nanopix(&external_id));
        // The delete looked into the empty folder, took the lock and deleted the row: its commit
        // cannot end before the read does.
        writing
            .recv_timeout(Duration::from_secs(30))
            .expect("the delete takes NanoPix's write lock and deletes the row");
        std::fs::write(folder.join("20250122_100500.iosb"), b"image").unwrap();
        std::fs::write(folder.join("20250122_100500_thumbnail.jpg"), b"thumbnail").unwrap();
        reading.execute_batch("COMMIT").unwrap();
        deleting.join().unwrap()
    });
    assert!(folder.join("20250122_100500.iosb").exists(), "the image is never deleted");
    assert_eq!(rows(&clinic), 1, "the patient whose folder holds an image keeps its row (the delete gave {deleted:?})");
    assert!(matches!(deleted, Err(nanopix_sync::Error::NanoPixPatientNotEmpty { .. })), "{deleted:?}");
}

/// DESIGN.md: every NanoPix write is a short `BEGIN IMMEDIATE` transaction with a busy timeout,
/// retried when busy. A NanoPix read that outlasts one busy timeout keeps the delete from
/// committing for that long: the delete tries again, and gets through once the read ends.
#[cfg(target_os = "linux")]
#[test]
fn delete_in_nanopix_tries_again_when_a_read_outlasts_one_busy_timeout() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_millis(300);
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let external_id = nadia_asked_to_delete(&clinic, &sync);
    // NanoPix is in the middle of a long read: a delete cannot commit while it lasts.
    let reading = Connection::open(clinic.nanopix_db()).unwrap();
    reading.execute_batch("BEGIN").unwrap();
    let _: i64 = reading.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
    let writing = nanopix_write_begun(&clinic);
    let deleted = std::thread::scope(|scope| {
        let deleting = scope.spawn(|| sync.delete_in_nanopix(&external_id));
        writing.recv_timeout(Duration::from_secs(30)).expect("the delete begins its write");
        let started = std::time::Instant::now();
        until(Duration::from_secs(5), "the read outlasts one busy timeout of the delete's", || {
            started.elapsed() > Duration::from_millis(450)
        });
        reading.execute_batch("COMMIT").unwrap();
        deleting.join().unwrap()
    });
    let rows: i64 =
        clinic.nanopix_rows(&format!("SELECT count(*) FROM Patient WHERE id = '{external_id}'"), |r| r.get(0))[0];
    assert!(deleted.is_ok(), "the delete gave {deleted:?} once the read ended");
    assert_eq!(rows, 0);
    assert!(!clinic.root.join(&external_id).exists());
}

/// The same race on a clinic already in sync, where NanoPix's new patients are few (the usual
/// day): the receptionist types Nadia Saidi into DentalTID while "Sync Now" imports the Nadia
/// Saidi the X-ray assistant saved in NanoPix. DentalTID commits her after the sync read its
/// candidates, and before the sync's import takes DentalTID's write lock.
#[test]
fn the_same_person_dentaltid_saves_during_a_later_sync_with_few_new_nanopix_patients_is_linked() {
    let clinic = Clinic::new("v29");
    for i in 0..12 {
        clinic.add_nanopix(&common::numbered_nanopix_id(i), &format!("Known{i}"), "Patient", Some("1970-01-01"));
    }
    let sync = open_waiting_long(&clinic);
    sync.set_live_sync(true).unwrap();
    sync.reconcile().unwrap();
    clinic.add_nanopix("20250122_095950", "Saidi", "Nadia", Some("1982-04-09"));
    add_odd_nanopix_row(&clinic);
    let _ = common::drain(&sync);
    reconcile_while_dentaltid_saves_nadia(&clinic, &sync);
}

/// Runs "Sync Now" while DentalTID saves Nadia Saidi, born 1982-04-09, in a transaction it
/// began before and commits once the sync has read both sides (its `odd_row` event); then
/// checks, after one more "Sync Now", that she is in each program once, linked to NanoPix's
/// `20250122_095950`.
fn reconcile_while_dentaltid_saves_nadia(clinic: &Clinic, sync: &NanoPixSync) {
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    let nadia = common::insert_dentaltid_patient(&dentaltid, "Nadia", "Saidi", Some("1982-04-09"));
    let first = std::thread::scope(|scope| {
        let reconcile = scope.spawn(|| sync.reconcile());
        common::wait_for(sync, Duration::from_secs(60), is_odd_row);
        dentaltid.execute_batch("COMMIT").unwrap();
        reconcile.join().unwrap().unwrap()
    });
    let next = sync.reconcile().unwrap();
    assert_nadia_once_on_each_side(clinic, nadia, &format!("the sync {first:?}, the next {next:?}"));
}

/// The NanoPix id an export reserved in the sync's journal, if one is in flight.
fn reserved_id(clinic: &Clinic) -> Option<String> {
    clinic.dentaltid_rows("SELECT external_id FROM nanopix_sync_exports", |r| r.get(0)).pop()
}

/// The X-ray assistant saves a new patient in NanoPix at the very second the receptionist
/// exports Nadia Saidi: NanoPix writes the row in its transaction, makes the folder and saves
/// the first image in it, while the export (which found the id free a moment before) waits for
/// NanoPix's write lock. NanoPix's save then fails and rolls back: the folder, with the other
/// person's image, stays without a row. When the export gets the lock the id is in use on disk:
/// Nadia must get another id, never a NanoPix patient whose folder holds another person's X-ray.
#[test]
fn an_export_waiting_for_nanopixs_lock_never_takes_a_folder_nanopix_made_meanwhile() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    // The second of the clinic's clock, which both programs name their new patient after.
    let same_second = "20250122_100000";
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert_nanopix_patient(&nanopix, same_second, ("Haddad", "Lina"), Some("1990-04-02"), "2025-01-22 10:00:00");
    let folder = clinic.root.join(same_second);
    let (exported, moved) = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_patient(nadia));
        until(Duration::from_secs(30), "the export reserves the id", || {
            reserved_id(&clinic).as_deref() == Some(same_second)
        });
        save_linas_image(&folder);
        // A sync that looks at the disk again before it writes moves its export off the id while
        // NanoPix still holds the lock; NanoPix's save fails in any case.
        let moved = common::within(Duration::from_secs(5), || reserved_id(&clinic).as_deref() != Some(same_second));
        nanopix.execute_batch("ROLLBACK").unwrap();
        (exporting.join().unwrap(), moved)
    });
    assert_kept_off_linas_folder(&clinic, &exported.unwrap().to_string(), &folder, &format!("moved off: {moved}"));
}

/// NanoPix makes the folder `folder` for Lina Haddad and saves her first image in it.
fn save_linas_image(folder: &std::path::Path) {
    std::fs::create_dir(folder).unwrap();
    std::fs::write(folder.join("20250122_100001.iosb"), b"Lina's image").unwrap();
}

/// Nadia Saidi was exported as `external_id`, not under `folder`, which holds Lina Haddad's
/// image: her own NanoPix folder holds nothing, and Lina's image stays where NanoPix saved it.
fn assert_kept_off_linas_folder(clinic: &Clinic, external_id: &str, folder: &std::path::Path, context: &str) {
    assert_ne!(
        clinic.root.join(external_id),
        folder,
        "Nadia Saidi was given the folder holding Lina Haddad's image ({context})"
    );
    let in_her_folder = std::fs::read_dir(clinic.root.join(external_id)).unwrap().count();
    assert_eq!(in_her_folder, 0, "Nadia Saidi's new NanoPix folder holds nothing");
    assert!(folder.join("20250122_100001.iosb").exists(), "the image is left where NanoPix saved it");
}

/// NanoPix's Nadia Saidi is imported; the receptionist types her again in DentalTID, whose export
/// waits for NanoPix's lock (NanoPix is saving something else). Meanwhile DentalTID corrects the
/// imported patient's name: she is someone else. The export reports no possible duplicate then,
/// and the review list, which a screen reads instead of the events, must not show one either.
#[test]
fn a_twin_renamed_while_its_export_waits_is_neither_reported_nor_listed() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20240301_100000", "Saidi", "Nadia", Some("1982-04-09"));
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let imported = common::dentaltid_named(&clinic, "Nadia", "Saidi")[0].0;
    let typed = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let _ = common::drain(&sync);
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let exported = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_patient(typed));
        until(Duration::from_secs(30), "the export is journaled", || exports_in_flight(&clinic) > 0);
        another_program(&clinic.dentaltid)
            .execute("UPDATE patients SET name = 'Yasmine', familyName = 'Kaci' WHERE id = ?1", [imported])
            .unwrap();
        nanopix.execute_batch("ROLLBACK").unwrap();
        exporting.join().unwrap()
    });
    exported.unwrap();
    let reported: Vec<EventKind> = common::drain(&sync)
        .into_iter()
        .map(|event| event.kind)
        .filter(|kind| matches!(kind, EventKind::PossibleDuplicate { .. }))
        .collect();
    let listed: Vec<(i64, Vec<i64>)> = sync
        .possible_duplicates()
        .unwrap()
        .into_iter()
        .map(|listed| (listed.patient_id, listed.candidates.iter().map(|c| c.patient_id).collect()))
        .collect();
    assert_eq!(reported, vec![], "Yasmine Kaci is no twin of the patient exported");
    assert_eq!(listed, vec![], "the review list agrees with the events: {reported:?}");
}

/// NanoPix reads its database all the time while the receptionist exports Nadia Saidi: its
/// screens read on two connections, one read beginning before the other ends, so some read is
/// always under way (journal mode delete). The export never waits for reads while it holds
/// NanoPix's lock (NanoPix may make the id's folder meanwhile, see
/// `an_export_waiting_for_its_commit_never_takes_a_folder_nanopix_made_meanwhile`): it may be
/// refused as busy, having written nothing to NanoPix, and the next "Sync Now" once the reads
/// pause ends it, with one NanoPix row and one folder.
#[test]
fn an_export_refused_while_nanopix_reads_without_pause_ends_once_the_reads_pause() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_millis(500);
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let (reading, reads) = (AtomicBool::new(true), AtomicU32::new(0));
    let exported = std::thread::scope(|scope| {
        for screen in 0..3u64 {
            let (reading, reads, db) = (&reading, &reads, clinic.nanopix_db());
            scope.spawn(move || {
                let conn = another_program(&db);
                std::thread::sleep(Duration::from_millis(10 * screen));
                while reading.load(Ordering::Relaxed) {
                    conn.execute_batch("BEGIN").unwrap();
                    let _: i64 = conn.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                    // The screen shows what it read before its read ends.
                    std::thread::sleep(Duration::from_millis(30));
                    conn.execute_batch("COMMIT").unwrap();
                }
            });
        }
        until(Duration::from_secs(20), "NanoPix reads", || reads.load(Ordering::Relaxed) >= 6);
        let exported = sync.export_patient(nadia);
        reading.store(false, Ordering::Relaxed);
        exported
    });
    match &exported {
        Ok(_) => {}
        Err(nanopix_sync::Error::Busy { .. }) => {
            let written = common::nanopix_ids_named(&clinic, "Nadia", "Saidi");
            assert_eq!(written, Vec::<String>::new(), "a refused export writes nothing to NanoPix");
        }
        Err(error) => panic!("the export gave {error}"),
    }
    sync.reconcile().unwrap();
    let linked = common::dentaltid_named(&clinic, "Nadia", "Saidi");
    assert_eq!(linked.len(), 1, "{linked:?}");
    let external_id = linked[0].1.clone().expect("the next Sync Now ends Nadia Saidi's export");
    assert_eq!(common::nanopix_ids_named(&clinic, "Nadia", "Saidi"), vec![external_id.clone()]);
    let rows: i64 =
        clinic.nanopix_rows(&format!("SELECT count(*) FROM Patient WHERE id = '{external_id}'"), |r| r.get(0))[0];
    assert_eq!(rows, 1, "Nadia Saidi's NanoPix row");
    assert!(clinic.root.join(&external_id).is_dir(), "Nadia Saidi's NanoPix folder");
    assert_eq!(integrity(&clinic.nanopix_db()), "ok");
}

/// NanoPix is reading (as it does all the time) when the export of Nadia Saidi has written her
/// row under NanoPix's write lock: its commit cannot end before that read does. Meanwhile the
/// X-ray assistant saves a new patient whose form was opened at the very second the export took
/// as its id: NanoPix makes the folder and saves the first image in it, and cannot write its own
/// row while the export holds the lock, so its save fails. Nadia must get another id, never a
/// NanoPix patient whose folder holds another person's X-ray.
#[cfg(target_os = "linux")]
#[test]
fn an_export_waiting_for_its_commit_never_takes_a_folder_nanopix_made_meanwhile() {
    let clinic = Clinic::new("v29");
    let sync = open_waiting_long(&clinic);
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    // The second of the clinic's clock, which both programs name their new patient after.
    let same_second = "20250122_100000";
    // NanoPix is in the middle of a read: a commit must wait for it to end.
    let reading = Connection::open(clinic.nanopix_db()).unwrap();
    reading.execute_batch("BEGIN").unwrap();
    let _: i64 = reading.query_row("SELECT count(*) FROM Patient", [], |r| r.get(0)).unwrap();
    let writing = nanopix_write_begun(&clinic);
    let folder = clinic.root.join(same_second);
    let exported = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_patient(nadia));
        writing.recv_timeout(Duration::from_secs(30)).expect("the export writes its row");
        assert_eq!(reserved_id(&clinic).as_deref(), Some(same_second), "the export's id");
        save_linas_image(&folder);
        reading.execute_batch("COMMIT").unwrap();
        exporting.join().unwrap()
    });
    assert_kept_off_linas_folder(&clinic, &exported.unwrap().to_string(), &folder, "while it waited to commit");
}

/// The receptionist closes DentalTID while an export waits for NanoPix, which another program
/// keeps locked (a long save, a backup): the export stops trying at once instead of waiting out
/// every busy timeout, which would hold up the close, and the journal keeps it for the next
/// handle, which ends it once NanoPix is free: Nadia Saidi gets one NanoPix patient.
#[test]
fn stopping_while_an_export_waits_for_a_locked_nanopix_ends_its_tries_and_the_next_handle_ends_it() {
    let clinic = Clinic::new("v29");
    let mut config = clinic.config_without_automatic_work();
    config.busy_timeout = Duration::from_secs(5);
    let sync = NanoPixSync::open(config).unwrap();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let nanopix = another_program(&clinic.nanopix_db());
    nanopix.execute_batch("BEGIN IMMEDIATE").unwrap();
    let stopper = sync.stopper();
    let (exported, waited) = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_patient(nadia));
        until(Duration::from_secs(30), "the export is journaled", || exports_in_flight(&clinic) > 0);
        let stopped = std::time::Instant::now();
        stopper.stop();
        (exporting.join().unwrap(), stopped.elapsed())
    });
    let refused = exported.unwrap_err();
    assert_eq!(refused.code(), "closed", "{refused}");
    assert!(waited < Duration::from_secs(5), "the export went on trying for {waited:?} after the stop");
    nanopix.execute_batch("ROLLBACK").unwrap();
    drop(sync);
    clinic.open_without_automatic_work().reconcile().unwrap();
    let in_nanopix = common::nanopix_ids_named(&clinic, "Nadia", "Saidi");
    assert_eq!(in_nanopix.len(), 1, "{in_nanopix:?}");
    assert_eq!(common::dentaltid_named(&clinic, "Nadia", "Saidi"), vec![(nadia, in_nanopix.first().cloned())]);
}

/// In a child process: DentalTID (another program) on its parent's clinic. Each line read from
/// stdin switches its write lock: the first takes it (`BEGIN IMMEDIATE`, then `held` on stdout),
/// the second lets it go.
#[test]
#[ignore = "the child process of a test that DentalTID holds its lock in"]
fn dentaltid_holding_its_lock_child() {
    use std::io::BufRead;
    let dir = PathBuf::from(std::env::var("NPS_TEST_CLINIC").unwrap());
    let dentaltid = another_program(&dir.join("dentaltid.db"));
    let mut lines = std::io::stdin().lock().lines();
    lines.next().unwrap().unwrap();
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    println!("held");
    lines.next().unwrap().unwrap();
    dentaltid.execute_batch("COMMIT").unwrap();
}

/// DentalTID (in another process, as a slow save or a backup tool would) takes its write lock
/// just as `export_existing` starts writing the clinic's old patients to NanoPix, and holds it
/// past the sync's busy timeout before letting go. The first export is refused (`busy`), the
/// others go through. That patient must be exported once DentalTID lets go, or the call must fail:
/// with `Ok`, nothing exports it later (Live Sync never does: it is older than its cursor), and
/// the clinic believes its old patients are all in NanoPix.
#[test]
fn export_existing_exports_a_patient_refused_while_dentaltid_held_its_lock_or_fails() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let clinic = Clinic::new("v29");
    let mut child = common::child_process("dentaltid_holding_its_lock_child", &clinic)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let clock = common::HookedClock::of_the_engine();
    let sync = clinic.open_without_automatic_work_on(&clock);
    sync.reconcile().unwrap();
    let _ = common::drain(&sync);
    let (take, taken) = crossbeam_channel::bounded::<()>(1);
    let (held, lock_held) = crossbeam_channel::bounded::<()>(1);
    // The first time asked is before the exports (and before the indexes they need are built),
    // the second as the first export starts.
    let again = clock.clone();
    clock.arm(Box::new(move || {
        again.arm(Box::new(move || {
            take.send(()).unwrap();
            lock_held.recv_timeout(Duration::from_secs(30)).unwrap();
        }))
    }));
    let result = std::thread::scope(|scope| {
        let exporting = scope.spawn(|| sync.export_existing());
        taken.recv_timeout(Duration::from_secs(30)).expect("export_existing asked the time before its exports");
        writeln!(to_child, "take").unwrap();
        // The test harness writes `test <name> ... ` before the child's own output, on its line.
        while !from_child.next().unwrap().unwrap().ends_with("held") {}
        held.send(()).unwrap();
        let refused = |kind: &EventKind| matches!(kind, EventKind::SyncError { code, .. } if code == "busy");
        wait_for(&sync, Duration::from_secs(30), refused);
        writeln!(to_child, "let go").unwrap();
        exporting.join().unwrap()
    });
    assert!(child.wait().unwrap().success());
    let unexported: Vec<(i64, String)> = clinic
        .dentaltid_rows("SELECT id, name FROM patients WHERE external_id IS NULL ORDER BY id", |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    assert!(
        result.is_err() || unexported.is_empty(),
        "export_existing gave {result:?}, yet DentalTID patients {unexported:?} have no NanoPix patient"
    );
}

/// NanoPix patients the clinic imported and then deleted in DentalTID all at once: the sync asks
/// for their deletes in several transactions.
const DELETED_AT_ONCE: i64 = 10_000;

/// How many of the sync's links in DentalTID's file ask for a delete, read on `conn`.
fn delete_requests_written(conn: &Connection) -> usize {
    let sql = "SELECT count(*) FROM nanopix_sync_links WHERE state = 'delete_requested'";
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

/// Staff delete thousands of imported patients in DentalTID at once, and "Sync Now" writes their
/// delete requests, a transaction after another. The receptionist saves a patient meanwhile:
/// DentalTID waits for the write lock as SQLite does, trying again after sleeps of up to 100 ms,
/// and gets it only if it is free at one of its tries. Her save must go in between two of the
/// sync's transactions, not wait until the sync has written them all.
#[test]
fn a_patient_dentaltid_saves_while_the_sync_writes_thousands_of_delete_requests_goes_in_before_they_are_all_written() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(DELETED_AT_ONCE);
    let sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let dentaltid = another_program(&clinic.dentaltid);
    let deleted = dentaltid.execute("DELETE FROM patients WHERE source = 'nanopix'", []).unwrap();
    let saved_patient: i64 = dentaltid.query_row("SELECT min(id) FROM patients", [], |row| row.get(0)).unwrap();
    let written_before_the_save = std::thread::scope(|scope| {
        let reconciling = scope.spawn(|| sync.reconcile());
        until(Duration::from_secs(60), "the sync wrote its first delete requests", || {
            delete_requests_written(&dentaltid) > 0
        });
        // As sqflite saves a patient: BEGIN IMMEDIATE, the change, COMMIT.
        dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
        dentaltid.execute("UPDATE patients SET phoneNumber = '0550123456' WHERE id = ?1", [saved_patient]).unwrap();
        let written = delete_requests_written(&dentaltid);
        dentaltid.execute_batch("COMMIT").unwrap();
        reconciling.join().unwrap().unwrap();
        written
    });
    assert_eq!(delete_requests_written(&dentaltid), deleted, "every deleted patient asks for its delete");
    assert!(
        written_before_the_save < deleted,
        "DentalTID's save waited until the sync had written all {deleted} delete requests"
    );
}
