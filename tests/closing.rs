//! Closing a C handle while another thread's call is in flight, from Rust through the C API as
//! DentalTID calls it: closing may cut the call short, never turn it into something else.

mod common;

use std::ffi::{CStr, CString, c_char};
use std::time::{Duration, Instant};

use common::{Clinic, another_program, until};
use rusqlite::Connection;

#[repr(C)]
struct NpsHandle {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn nps_open(config_json: *const c_char, handle_out: *mut *mut NpsHandle) -> u32;
    fn nps_close(handle: *mut NpsHandle) -> u32;
    fn nps_free(handle: *mut NpsHandle);
    fn nps_export_patient(handle: *mut NpsHandle, patient_id: i64, external_id: *mut *mut c_char) -> u32;
    fn nps_patients(handle: *const NpsHandle, filter: u32, patients_json: *mut *mut c_char) -> u32;
    fn nps_next_event(handle: *const NpsHandle, timeout_ms: u32, event_json: *mut *mut c_char) -> u32;
    fn nps_string_free(text: *mut c_char);
}

const NPS_OK: u32 = 0;
const NPS_INVALID_ARGUMENT: u32 = 4;
const NPS_CLOSED: u32 = 6;
const NPS_TIMEOUT: u32 = 7;

/// A C handle pointer that may cross to the threads of a scope.
#[derive(Clone, Copy)]
struct Handle(*mut NpsHandle);
// SAFETY: the C API lets any thread call a live handle.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    /// The pointer (a method, so closures capture the whole `Handle`).
    fn raw(self) -> *mut NpsHandle {
        self.0
    }
}

/// Takes a library-owned string and frees it.
fn take_string(text: *mut c_char) -> String {
    // SAFETY: a NUL-terminated string the library handed out; freed right after the copy.
    let copy = unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned();
    unsafe { nps_string_free(text) };
    copy
}

/// The events queued on `handle` within `deadline`, up to the first that `wanted` accepts.
fn wait_for_c_event(handle: Handle, deadline: Duration, wanted: impl Fn(&serde_json::Value) -> bool) {
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let mut json: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle and a writable out-parameter.
        let rc = unsafe { nps_next_event(handle.raw(), left.as_millis().min(1_000) as u32, &mut json) };
        match rc {
            NPS_OK => {
                let event: serde_json::Value = serde_json::from_str(&take_string(json)).unwrap();
                if wanted(&event) {
                    return;
                }
                seen.push(event);
            }
            NPS_TIMEOUT => {}
            other => panic!("nps_next_event gave {other}; saw {seen:#?}"),
        }
    }
    panic!("no matching event within {deadline:?}; saw {seen:#?}");
}

/// Every event queued on `handle` now.
fn drain_c_events(handle: Handle) {
    loop {
        let mut json: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle and a writable out-parameter.
        match unsafe { nps_next_event(handle.raw(), 0, &mut json) } {
            NPS_OK => drop(take_string(json)),
            _ => return,
        }
    }
}

fn is_odd_row(event: &serde_json::Value) -> bool {
    event["type"] == "sync_error" && event["code"] == "odd_row"
}

/// DentalTID (through the C API, as DentalTID calls it) exports a patient the moment it is added
/// while NanoPix already holds that very person, saved there first and not synced yet:
/// `export_patient` links the two ("when the matching links one of them to this patient, that id
/// is written and nothing is exported"). When the app closes its handle on another thread while
/// the call is in flight, closing may cut the call short, but must never turn it into an export
/// of a person NanoPix already has: NanoPix would hold the person twice, and the next reconcile
/// would import NanoPix's first one as a second DentalTID patient.
///
#[test]
fn closing_a_c_handle_during_export_patient_never_exports_a_person_nanopix_already_holds() {
    let clinic = Clinic::new("v29");
    let config = serde_json::json!({
        "nanopix_root": clinic.root,
        "dentaltid_db": clinic.dentaltid,
        "busy_timeout_ms": 30_000,
    })
    .to_string();
    let config = CString::new(config).unwrap();
    let mut raw: *mut NpsHandle = std::ptr::null_mut();
    // SAFETY: a NUL-terminated configuration and a writable out-parameter.
    assert_eq!(unsafe { nps_open(config.as_ptr(), &mut raw) }, NPS_OK);
    let handle = Handle(raw);

    // A first export (Karim Haddad, of the sample) syncs both sides and builds the sync's indexes:
    // from then on a catch-up is a live pass past the cursor.
    let karim: i64 = clinic.dentaltid_rows("SELECT id FROM patients WHERE name = 'Karim'", |r| r.get(0))[0];
    let mut id: *mut c_char = std::ptr::null_mut();
    // SAFETY: a live handle and a writable out-parameter.
    assert_eq!(unsafe { nps_export_patient(handle.raw(), karim, &mut id) }, NPS_OK);
    drop(take_string(id));
    drain_c_events(handle);

    // NanoPix saves Nadia Saidi (row and folder), another new patient, and a row the sync
    // reports as odd (the test's sign that the catch-up has read NanoPix).
    clinic.add_nanopix("20250301_093000", "Saidi", "Nadia", Some("1982-04-09"));
    clinic.add_nanopix("20250301_094500", "Kaci", "Yasmine", Some("1990-10-10"));
    Connection::open(clinic.nanopix_db())
        .unwrap()
        .execute("INSERT INTO Patient(id, last_name, first_name) VALUES ('20251399_000000', 'Odd', 'Row')", [])
        .unwrap();
    // Then the receptionist adds Nadia Saidi in DentalTID, and DentalTID exports her at once.
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));

    // DentalTID is saving something: the catch-up's import of Yasmine Kaci waits for its lock.
    let dentaltid = another_program(&clinic.dentaltid);
    dentaltid.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (exported, exported_id) = std::thread::scope(|scope| {
        let exporting = scope.spawn(move || {
            let mut id: *mut c_char = std::ptr::null_mut();
            // SAFETY: a live handle (freed only after this thread is joined) and a writable out-parameter.
            let rc = unsafe { nps_export_patient(handle.raw(), nadia, &mut id) };
            (rc, (rc == NPS_OK).then(|| take_string(id)))
        });
        wait_for_c_event(handle, Duration::from_secs(60), is_odd_row);
        // The app closes its handle (the user quits DentalTID) on another thread.
        let closing = scope.spawn(move || {
            // SAFETY: a live handle.
            unsafe { nps_close(handle.raw()) }
        });
        // Closing has begun (and told the calls in flight to stop) once calls get NPS_CLOSED. A
        // call refused before it reaches the engine tells, without waiting for the export in flight:
        // `nps_patients` with an unknown filter gives NPS_INVALID_ARGUMENT while the handle is open.
        until(Duration::from_secs(30), "nps_close has begun", || {
            let mut json: *mut c_char = std::ptr::null_mut();
            // SAFETY: a live handle and a writable out-parameter.
            let rc = unsafe { nps_patients(handle.raw(), 99, &mut json) };
            assert!(rc == NPS_INVALID_ARGUMENT || rc == NPS_CLOSED, "nps_patients gave {rc}");
            rc == NPS_CLOSED
        });
        dentaltid.execute_batch("ROLLBACK").unwrap();
        let exported = exporting.join().unwrap();
        assert_eq!(closing.join().unwrap(), NPS_OK);
        exported
    });
    // SAFETY: the handle is closed and no call is in flight.
    unsafe { nps_free(handle.raw()) };

    let saidi: Vec<String> =
        clinic.nanopix_rows("SELECT id FROM Patient WHERE last_name = 'Saidi' ORDER BY pk", |r| r.get(0));
    assert_eq!(
        saidi,
        ["20250301_093000"],
        "NanoPix holds Nadia Saidi twice: nps_export_patient gave {exported} ({exported_id:?}) while the handle closed"
    );
}

/// An event thread drains the queue, without waiting, until `nps_next_event` says the handle is
/// closed, while the app closes the handle on another thread. `NPS_CLOSED` means "closed and its
/// queue drained": the thread must have been given `closed` (the last event) by then, every time,
/// however the close falls between its calls.
#[test]
fn a_thread_draining_until_nps_closed_is_given_closed_every_time() {
    let clinic = Clinic::new("v29");
    let config = serde_json::json!({ "nanopix_root": clinic.root, "dentaltid_db": clinic.dentaltid }).to_string();
    let config = CString::new(config).unwrap();
    // A close that falls between the queue's last look and the handle's is rare: many closes.
    for round in 0..1_500 {
        let mut raw: *mut NpsHandle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated configuration and a writable out-parameter.
        assert_eq!(unsafe { nps_open(config.as_ptr(), &mut raw) }, NPS_OK);
        let handle = Handle(raw);
        let (given_closed, still_queued) = std::thread::scope(|scope| {
            let draining = scope.spawn(move || {
                let mut given_closed = false;
                let end = Instant::now() + Duration::from_secs(30);
                loop {
                    let mut json: *mut c_char = std::ptr::null_mut();
                    // SAFETY: a live handle (freed only after this thread is joined) and a writable out-parameter.
                    match unsafe { nps_next_event(handle.raw(), 0, &mut json) } {
                        NPS_OK => given_closed |= take_string(json).contains("\"type\":\"closed\""),
                        NPS_TIMEOUT => assert!(Instant::now() < end, "nps_close did not close within 30 s"),
                        NPS_CLOSED => break,
                        other => panic!("nps_next_event gave {other}"),
                    }
                }
                let mut json: *mut c_char = std::ptr::null_mut();
                // SAFETY: as above.
                let still_queued = unsafe { nps_next_event(handle.raw(), 0, &mut json) } == NPS_OK;
                if still_queued {
                    drop(take_string(json));
                }
                (given_closed, still_queued)
            });
            // SAFETY: a live handle.
            assert_eq!(unsafe { nps_close(handle.raw()) }, NPS_OK);
            draining.join().unwrap()
        });
        // SAFETY: the handle is closed and no call is in flight.
        unsafe { nps_free(handle.raw()) };
        assert!(
            given_closed,
            "close {round}: nps_next_event gave NPS_CLOSED before `closed`, which was still queued: {still_queued}"
        );
    }
}
