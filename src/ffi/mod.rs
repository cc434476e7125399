//! The C API: the `nps_` functions of `include/nanopix_sync.h`.
//!
//! Every function here is a thin wrapper: it runs inside the panic boundary, checks its pointers,
//! calls the Rust API and writes its out-parameters only on success. Conventions are written down
//! in the README's C API section. Nothing here may panic across the boundary, keep a pointer from C after
//! the call returns (except a callback's userdata), or free memory the library did not allocate.

mod boundary;
mod config;
mod error;
mod events;
mod handle;
mod strings;

use std::ffi::{CStr, c_char, c_void};
use std::time::Duration;

use serde::Serialize;

use crate::{NanoPixSync, PatientFilter};
use boundary::{Out, guard, guard_value, not_in_callback, ref_arg};
use config::parse_config;
use error::FfiError;
pub use error::*;
pub use events::{NpsEventCallback, NpsWakeupCallback};
pub use handle::NpsHandle;
use strings::{free_c_string, into_c_string, str_arg};

/// `nps_patients` filter: every patient.
pub const NPS_FILTER_ALL: u32 = 0;
/// `nps_patients` filter: patients created today.
pub const NPS_FILTER_TODAY: u32 = 1;
/// `nps_patients` filter: patients imported from NanoPix and created today.
pub const NPS_FILTER_TODAY_BY_EXTERNAL: u32 = 2;
/// `nps_patients` filter: every patient imported from NanoPix.
pub const NPS_FILTER_ALL_BY_EXTERNAL: u32 = 3;

/// The library's version, for example "0.1.0".
///
/// Returns a static string: never free it. Any thread may call it.
#[unsafe(no_mangle)]
pub extern "C" fn nps_version() -> *const c_char {
    guard_value(std::ptr::null(), || {
        CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes())
            .map_or(std::ptr::null(), CStr::as_ptr)
    })
}

/// Opens a sync between a NanoPix `PatientData` folder and a DentalTID database.
///
/// `config_json` is a UTF-8 JSON object; only `nanopix_root` and `dentaltid_db` are required
/// (the README's C API section lists every field). The caller keeps ownership of `config_json`.
/// On success writes a new handle to `*handle_out`; the caller owns it and releases it with
/// `nps_free`. Returns NPS_OK, NPS_NULL_ARGUMENT, NPS_INVALID_UTF8, NPS_INVALID_JSON,
/// NPS_INVALID_CONFIG or the code of the error that stopped the open (NPS_NOT_FOUND,
/// NPS_IN_USE while another handle syncs the same DentalTID database, ...). Any thread may call it.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string; `handle_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_open(config_json: *const c_char, handle_out: *mut *mut NpsHandle) -> u32 {
    guard(|| {
        let handle_out = Out::new(handle_out, "handle_out")?;
        // SAFETY: the caller promises a NULL or NUL-terminated string.
        let config = parse_config(unsafe { str_arg(config_json, "config_json") }?)?;
        let handle = NpsHandle::open(config)?;
        // SAFETY: the caller promises `handle_out` is writable.
        unsafe { handle_out.write(Box::into_raw(handle)) };
        Ok(())
    })
}

/// Stops the sync and joins its threads. Closing a closed handle again returns NPS_OK; a
/// handle already freed gets NPS_CLOSED, like every other call on it.
///
/// Every caller waiting in `nps_next_event` wakes up and gets the final `closed` event or
/// NPS_CLOSED; later calls on the handle return NPS_CLOSED. The handle stays valid until
/// `nps_free`. Calls in flight on other threads are cut short (a reconcile or an export stops
/// between patients, reporting what it did) and waited for. An event callback still set is
/// given every event waiting first, `closed` last, so a slow one makes the close wait: clear it
/// with `nps_set_event_callback` before closing to close at once. Any thread may call it, except
/// from inside a callback, this handle's or another's (NPS_WRONG_THREAD).
///
/// # Safety
/// `handle` is NULL or a handle from `nps_open`, freed or not.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_close(handle: *mut NpsHandle) -> u32 {
    guard(|| {
        not_in_callback("nps_close")?;
        // SAFETY: the caller promises a NULL handle or one `nps_open` made, whose memory is never freed.
        let handle = unsafe { ref_arg(handle, "handle") }?;
        if !handle::is_registered(handle) {
            return Err(FfiError::new(NPS_CLOSED, "the sync handle was freed"));
        }
        handle.close();
        Ok(())
    })
}

/// Closes the handle if needed and releases it. NULL, a handle already freed and any pointer
/// `nps_open` did not return are ignored, so freeing twice is harmless.
///
/// The handle's memory (a few kilobytes) is kept for the life of the process, so its address is
/// never given to a later handle: a stale copy of the pointer gets NPS_CLOSED from every call, and
/// a second nps_free of it never reaches another handle. Called from inside a callback, this
/// handle's or another's, it does nothing and sets the last error.
///
/// # Safety
/// `handle` is NULL, a pointer `nps_open` returned (freed or not), or any other value that is
/// never dereferenced: only registered handles are touched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_free(handle: *mut NpsHandle) {
    guard(|| {
        not_in_callback("nps_free")?;
        if handle::unregister(handle) {
            // SAFETY: `nps_open` made this registered handle by `Box::into_raw` and nothing ever
            // frees its memory, so it lives for the rest of the process.
            let handle: &'static NpsHandle = unsafe { &*handle };
            handle.retire();
        }
        Ok(())
    });
}

/// Finds a handle that was opened in this process and not freed yet (for example by an app
/// before a Flutter hot restart), so the host can `nps_free` it before opening again.
///
/// On success writes the handle to `*handle_out`; the caller then owns it. Returns NPS_OK, or
/// NPS_NO_HANDLE when every handle has been freed. Any thread may call it.
///
/// # Safety
/// `handle_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_find_open_handle(handle_out: *mut *mut NpsHandle) -> u32 {
    guard(|| {
        let handle_out = Out::new(handle_out, "handle_out")?;
        let handle = handle::any_live_handle()
            .ok_or_else(|| FfiError::new(NPS_NO_HANDLE, "no handle is open in this process"))?;
        // SAFETY: the caller promises `handle_out` is writable.
        unsafe { handle_out.write(handle) };
        Ok(())
    })
}

/// "Sync Now": reconciles both sides fully and waits until it is done.
///
/// On success writes the report as a library-owned JSON object (`imported`, `linked`,
/// `exported`, `possible_duplicates`, `removed`, `repaired`, `errors`, `duration_ms`,
/// `stopped_early`) to
/// `*report_json`; free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `report_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_reconcile(handle: *mut NpsHandle, report_json: *mut *mut c_char) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { json_call(handle, report_json, "report_json", |sync| sync.reconcile()) }
}

/// Switches Live Sync on (`enabled` true) or off. The setting is kept in DentalTID's file.
///
/// Switching it off returns once the watcher is stopped and its thread joined: no watcher event
/// (`watcher_mode`, or a watcher's `sync_error`) is made after it returns. Any thread may call
/// it, a callback too.
///
/// # Safety
/// `handle` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_set_live_sync(handle: *mut NpsHandle, enabled: bool) -> u32 {
    // SAFETY: the caller promises a NULL or live handle.
    guard(|| unsafe { ref_arg(handle, "handle") }?.with_sync(|sync| sync.set_live_sync(enabled)))
}

/// Reads whether Live Sync is on; on success writes it to `*enabled`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `enabled` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_live_sync(handle: *const NpsHandle, enabled: *mut bool) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { value_call(handle, enabled, "enabled", |sync| sync.live_sync()) }
}

/// Exports the DentalTID patient `patient_id` to NanoPix now. NanoPix patients the sync has not
/// seen yet are imported or linked first; when the matching links one of them to this patient,
/// that id is written and nothing is exported. A patient linked already (Live Sync may have
/// exported it first) gives NPS_ALREADY_LINKED; `nps_source_info` then tells its NanoPix id.
/// Closing the handle meanwhile gives NPS_CLOSED, with nothing exported.
///
/// On success writes its NanoPix id (`YYYYMMDD_HHMMSS`) as a library-owned string to
/// `*external_id`; free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `external_id` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_export_patient(
    handle: *mut NpsHandle,
    patient_id: i64,
    external_id: *mut *mut c_char,
) -> u32 {
    guard(|| {
        let out = Out::new(external_id, "external_id")?;
        // SAFETY: the caller promises a NULL or live handle.
        let id = unsafe { ref_arg(handle, "handle") }?.with_sync(|sync| sync.export_patient(patient_id))?;
        // SAFETY: the caller promises `external_id` is writable.
        unsafe { out.write(into_c_string(id.to_string())) };
        Ok(())
    })
}

/// Exports every DentalTID patient that has no NanoPix link yet; on success writes how many
/// were exported to `*exported`. Any thread may call it. `NPS_CLOSED` when the handle closes
/// before every patient was exported: `nps_export_existing` on the next handle exports those left.
///
/// # Safety
/// `handle` is NULL or a live handle; `exported` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_export_existing(handle: *mut NpsHandle, exported: *mut u64) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { value_call(handle, exported, "exported", |sync| sync.export_existing()) }
}

/// Deletes NanoPix patient `external_id` (its row and empty folder), after a delete_requested event
/// and after the host asked the user; called again after a delete cut short (the row deleted, the
/// folder not), it removes the folder. Refuses with NPS_DELETE_NOT_REQUESTED unless that event was
/// sent, no DentalTID patient holds the id again (in its external_id or by a recorded link), no
/// newer request for it waits to be sent and NanoPix did not save another person under the id
/// since, with NPS_NOT_EMPTY if NanoPix holds any image, study, report, file or other record for it
/// (a row of another table whose foreign key names it), with NPS_ID_SHARED if several NanoPix rows
/// hold the id, with NPS_INVALID_ID if `external_id` is not a NanoPix id, and with
/// NPS_NO_SUCH_PATIENT if NanoPix has neither its row nor its folder (deleted already). The caller
/// keeps ownership of `external_id`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `external_id` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_delete_in_nanopix(handle: *mut NpsHandle, external_id: *const c_char) -> u32 {
    guard(|| {
        // SAFETY: the caller promises a NULL or live handle and a NULL or NUL-terminated string.
        let (handle, external_id) = unsafe { (ref_arg(handle, "handle")?, str_arg(external_id, "external_id")?) };
        handle.with_sync(|sync| sync.delete_in_nanopix(external_id))
    })
}

/// Lists DentalTID patients as the patients screen filters them: `filter` is one of the
/// NPS_FILTER_ constants (anything else gives NPS_INVALID_ARGUMENT).
///
/// On success writes a library-owned JSON array of patients (`id`, `first_name`, `last_name`,
/// `age`, `date_of_birth`, `created_at`, `phone`, `source`, `external_id`) to `*patients_json`;
/// free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `patients_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_patients(handle: *const NpsHandle, filter: u32, patients_json: *mut *mut c_char) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe {
        json_call(handle, patients_json, "patients_json", |sync| {
            sync.patients(patient_filter(filter)?).map_err(FfiError::from)
        })
    }
}

/// Where DentalTID patient `patient_id` comes from and what NanoPix holds for it.
///
/// On success writes a library-owned JSON object (`patient_id`, `source`, `external_id`,
/// `folder`, `nanopix_created`, `synced_at`, `link_state`, `image_count`) to
/// `*source_info_json`; free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `source_info_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_source_info(
    handle: *const NpsHandle,
    patient_id: i64,
    source_info_json: *mut *mut c_char,
) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { json_call(handle, source_info_json, "source_info_json", |sync| sync.source_info(patient_id)) }
}

/// The possible duplicates awaiting review, oldest patient first: every `possible_duplicate`
/// report not dismissed yet (kept across closing and crashes) whose patient DentalTID still holds.
///
/// On success writes a library-owned JSON array to `*duplicates_json`: objects with
/// `patient_id`, `external_id`, `reason` and `candidates` as in the `possible_duplicate` event,
/// each candidate (`patient_id`, `first_name`, `last_name`, `date_of_birth`) as DentalTID holds
/// it now; free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `duplicates_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_possible_duplicates(handle: *const NpsHandle, duplicates_json: *mut *mut c_char) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { json_call(handle, duplicates_json, "duplicates_json", |sync| sync.possible_duplicates()) }
}

/// The delete requests sent (as `delete_requested` events) whose delete still stands, oldest
/// NanoPix id first: NanoPix holds the patient and no DentalTID patient holds its id again, so
/// `nps_delete_in_nanopix` would delete it unless NanoPix holds records for it. Kept across
/// closing and crashes, for a host that missed the event.
///
/// On success writes a library-owned JSON array to `*requests_json`: objects with
/// `external_id` and `patient_ids` (the deleted DentalTID patients that held it, one unless
/// several did); free it with `nps_string_free`. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `requests_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_delete_requests(handle: *const NpsHandle, requests_json: *mut *mut c_char) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { json_call(handle, requests_json, "requests_json", |sync| sync.delete_requests()) }
}

/// Takes the delete request of NanoPix patient `external_id` off the list `nps_delete_requests`
/// gives, once the user chose to keep the patient in NanoPix (kept across closing); on success
/// writes whether one was listed to `*dismissed`. `nps_delete_in_nanopix` still deletes the
/// patient if asked; another DentalTID patient later deleted while linked to it lists it again.
/// Fails with NPS_INVALID_ID if `external_id` is not a NanoPix id. Any thread may call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `external_id` is NULL or a NUL-terminated string;
/// `dismissed` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_dismiss_delete_request(
    handle: *mut NpsHandle,
    external_id: *const c_char,
    dismissed: *mut bool,
) -> u32 {
    let dismiss = |sync: &NanoPixSync| -> Result<bool, FfiError> {
        // SAFETY: the caller promises a NULL or NUL-terminated string.
        let external_id = unsafe { str_arg(external_id, "external_id") }?;
        Ok(sync.dismiss_delete_request(external_id)?)
    };
    // SAFETY: forwarded caller promises.
    unsafe { value_call(handle, dismissed, "dismissed", dismiss) }
}

/// Takes DentalTID patient `patient_id`'s possible duplicate off the review list, once the user
/// has dealt with it; on success writes whether one was listed to `*dismissed`. Any thread may
/// call it.
///
/// # Safety
/// `handle` is NULL or a live handle; `dismissed` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_dismiss_possible_duplicate(
    handle: *mut NpsHandle,
    patient_id: i64,
    dismissed: *mut bool,
) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe { value_call(handle, dismissed, "dismissed", |sync| sync.dismiss_possible_duplicate(patient_id)) }
}

/// Sets the event callback, or clears it with NULL.
///
/// `callback(userdata, event_json)` is called on a library thread for every later event;
/// `event_json` is owned by the library and valid only during the call. The host must make
/// `callback` and `userdata` safe to use from that thread until the callback is replaced.
/// Returns once no call of the previous callback is in flight, and the new callback is given only
/// the events made from then on. Any thread may call it, except from inside a callback, this
/// handle's or another's (NPS_WRONG_THREAD).
///
/// # Safety
/// `handle` is NULL or a live handle; `callback` is NULL or a function of this type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_set_event_callback(
    handle: *mut NpsHandle,
    callback: NpsEventCallback,
    userdata: *mut c_void,
) -> u32 {
    guard(|| {
        not_in_callback("nps_set_event_callback")?;
        // SAFETY: the caller promises a NULL or live handle.
        unsafe { ref_arg(handle, "handle") }?.set_event_callback(callback, userdata)
    })
}

/// Sets the wakeup callback, or clears it with NULL.
///
/// `callback(userdata)` is called on a library thread after each event has been queued for
/// `nps_next_event`; it carries no payload (made for Dart's `NativeCallable.listener`). The host
/// must make `callback` and `userdata` safe to use from that thread until the callback is
/// replaced. Returns once no call of the previous callback is in flight. Any thread may call it,
/// except from inside a callback, this handle's or another's (NPS_WRONG_THREAD).
///
/// # Safety
/// `handle` is NULL or a live handle; `callback` is NULL or a function of this type.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_set_wakeup_callback(
    handle: *mut NpsHandle,
    callback: NpsWakeupCallback,
    userdata: *mut c_void,
) -> u32 {
    guard(|| {
        not_in_callback("nps_set_wakeup_callback")?;
        // SAFETY: the caller promises a NULL or live handle.
        unsafe { ref_arg(handle, "handle") }?.set_wakeup_callback(callback, userdata)
    })
}

/// Takes the next event from the handle's queue, waiting at most `timeout_ms` (0: do not wait).
///
/// Returns NPS_OK and writes the event as a library-owned JSON object to `*event_json` (free it
/// with `nps_string_free`); NPS_TIMEOUT when no event came in time; NPS_CLOSED once the handle
/// is closed and its queue is empty. Each event goes to exactly one caller. Any thread may call
/// it, from several threads at once.
///
/// # Safety
/// `handle` is NULL or a live handle; `event_json` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_next_event(
    handle: *const NpsHandle,
    timeout_ms: u32,
    event_json: *mut *mut c_char,
) -> u32 {
    guard(|| {
        let out = Out::new(event_json, "event_json")?;
        // SAFETY: the caller promises a NULL or live handle.
        let event = unsafe { ref_arg(handle, "handle") }?.next_event(Duration::from_millis(timeout_ms.into()))?;
        // SAFETY: the caller promises `event_json` is writable.
        unsafe { out.write(into_c_string(event.to_json())) };
        Ok(())
    })
}

/// The message of the last error on the calling thread, or NULL if the last call succeeded.
///
/// Every function that returns a result code sets it when it returns anything but NPS_OK and
/// clears it on NPS_OK. Returns a new library-owned copy: free it with `nps_string_free`.
/// Any thread may call it; it reads that thread's own last error.
#[unsafe(no_mangle)]
pub extern "C" fn nps_last_error_message() -> *mut c_char {
    guard_value(std::ptr::null_mut(), || error::last_error().map_or(std::ptr::null_mut(), |message| message.into_raw()))
}

/// Frees a string the library returned; NULL is ignored. Any thread may call it.
///
/// # Safety
/// `text` is NULL or a string from this library that was not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nps_string_free(text: *mut c_char) {
    // SAFETY: forwarded caller promise.
    guard_value((), || unsafe { free_c_string(text) });
}

fn patient_filter(filter: u32) -> Result<PatientFilter, FfiError> {
    match filter {
        NPS_FILTER_ALL => Ok(PatientFilter::All),
        NPS_FILTER_TODAY => Ok(PatientFilter::Today),
        NPS_FILTER_TODAY_BY_EXTERNAL => Ok(PatientFilter::TodayByExternal),
        NPS_FILTER_ALL_BY_EXTERNAL => Ok(PatientFilter::AllByExternal),
        other => Err(FfiError::new(NPS_INVALID_ARGUMENT, format!("unknown patient filter {other}"))),
    }
}

/// Runs `call` on the handle and writes its value to `out`, inside the panic boundary.
///
/// # Safety
/// `handle` is NULL or a live handle; `out` is NULL or writable.
unsafe fn value_call<T, E: Into<FfiError>>(
    handle: *const NpsHandle,
    out: *mut T,
    name: &str,
    call: impl FnOnce(&NanoPixSync) -> Result<T, E>,
) -> u32 {
    guard(|| {
        let out = Out::new(out, name)?;
        // SAFETY: the caller promises a NULL or live handle.
        let value = unsafe { ref_arg(handle, "handle") }?.with_sync(call)?;
        // SAFETY: the caller promises `out` is writable.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Runs `call` on the handle and writes its value as library-owned JSON to `out`, inside the
/// panic boundary.
///
/// # Safety
/// `handle` is NULL or a live handle; `out` is NULL or writable.
unsafe fn json_call<T: Serialize, E: Into<FfiError>>(
    handle: *const NpsHandle,
    out: *mut *mut c_char,
    name: &str,
    call: impl FnOnce(&NanoPixSync) -> Result<T, E>,
) -> u32 {
    // SAFETY: forwarded caller promises.
    unsafe {
        value_call(handle, out, name, |sync| {
            let value = call(sync).map_err(Into::into)?;
            serde_json::to_string(&value)
                .map(into_c_string)
                .map_err(|error| FfiError::new(NPS_INTERNAL, format!("could not write `{name}` as JSON: {error}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_header_matches_the_generated_one() {
        let generated = include_str!(concat!(env!("OUT_DIR"), "/nanopix_sync.h"));
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/nanopix_sync.h");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "include/nanopix_sync.h is out of date with src/ffi: regenerate it with \
             `NANOPIX_SYNC_WRITE_HEADER=1 cargo build` and commit the result"
        );
    }

    #[test]
    fn version_is_the_crate_version() {
        let version = unsafe { CStr::from_ptr(nps_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn every_filter_number_is_known_and_others_are_refused() {
        assert_eq!(patient_filter(NPS_FILTER_ALL).unwrap(), PatientFilter::All);
        assert_eq!(patient_filter(NPS_FILTER_TODAY).unwrap(), PatientFilter::Today);
        assert_eq!(patient_filter(NPS_FILTER_TODAY_BY_EXTERNAL).unwrap(), PatientFilter::TodayByExternal);
        assert_eq!(patient_filter(NPS_FILTER_ALL_BY_EXTERNAL).unwrap(), PatientFilter::AllByExternal);
        assert_eq!(patient_filter(4).unwrap_err().code, NPS_INVALID_ARGUMENT);
    }

    #[test]
    fn null_and_bad_arguments_give_codes_not_crashes() {
        let mut handle = std::ptr::null_mut();
        assert_eq!(unsafe { nps_open(std::ptr::null(), &mut handle) }, NPS_NULL_ARGUMENT);
        assert_eq!(unsafe { nps_open(c"{".as_ptr(), &mut handle) }, NPS_INVALID_JSON);
        assert_eq!(unsafe { nps_open(c"\xff".as_ptr(), &mut handle) }, NPS_INVALID_UTF8);
        assert_eq!(unsafe { nps_open(c"{}".as_ptr(), std::ptr::null_mut()) }, NPS_NULL_ARGUMENT);
        assert!(handle.is_null(), "no out-parameter is written on failure");
        let mut json = std::ptr::null_mut();
        assert_eq!(unsafe { nps_reconcile(std::ptr::null_mut(), &mut json) }, NPS_NULL_ARGUMENT);
        assert_eq!(unsafe { nps_next_event(std::ptr::null(), 0, &mut json) }, NPS_NULL_ARGUMENT);
        assert_eq!(unsafe { nps_close(std::ptr::null_mut()) }, NPS_NULL_ARGUMENT);
        assert!(json.is_null());
        let message = nps_last_error_message();
        assert_eq!(unsafe { CStr::from_ptr(message) }.to_str().unwrap(), "`handle` is NULL");
        unsafe { nps_string_free(message) };
        unsafe { nps_free(std::ptr::null_mut()) };
        unsafe { nps_string_free(std::ptr::null_mut()) };
    }

    /// A copy of the NanoPix fixture and an empty DentalTID database beside it: the folder that
    /// holds both, the NanoPix root and the DentalTID file.
    fn clinic() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let db = crate::dentaltid::testing::build_database(&dir, crate::dentaltid::testing::SCHEMA_V29, false);
        (dir, root, db)
    }

    #[test]
    fn a_stale_pointer_never_reaches_a_newer_handle() {
        let (_dir, root, db) = clinic();
        let config = serde_json::json!({ "nanopix_root": root, "dentaltid_db": db }).to_string();
        let config = std::ffi::CString::new(config).unwrap();
        let open = || {
            let mut handle = std::ptr::null_mut();
            assert_eq!(unsafe { nps_open(config.as_ptr(), &mut handle) }, NPS_OK);
            handle
        };
        let mut addresses = std::collections::HashSet::new();
        for _ in 0..32 {
            let old = open();
            unsafe { nps_free(old) };
            let new = open();
            assert!(addresses.insert(old as usize) && addresses.insert(new as usize), "an address came back");
            unsafe { nps_free(old) };
            let mut enabled = true;
            assert_eq!(unsafe { nps_live_sync(new, &mut enabled) }, NPS_OK, "the newer handle is still open");
            assert_eq!(unsafe { nps_live_sync(old, &mut enabled) }, NPS_CLOSED, "the stale one is closed");
            assert_eq!(unsafe { nps_close(old) }, NPS_CLOSED, "closing the stale one too");
            assert_eq!((unsafe { nps_close(new) }, unsafe { nps_close(new) }), (NPS_OK, NPS_OK), "closing twice");
            unsafe { nps_free(new) };
        }
    }

    #[test]
    fn a_missing_folder_is_reported_by_code_and_message() {
        let folder = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "nanopix_root": folder.path().join("absent"),
            "dentaltid_db": folder.path().join("dentaltid.db"),
        });
        let config = std::ffi::CString::new(config.to_string()).unwrap();
        let mut handle = std::ptr::null_mut();
        assert_eq!(unsafe { nps_open(config.as_ptr(), &mut handle) }, NPS_NOT_FOUND);
        assert!(handle.is_null());
        let message = nps_last_error_message();
        assert!(unsafe { CStr::from_ptr(message) }.to_str().unwrap().contains("absent"));
        unsafe { nps_string_free(message) };
    }

    #[test]
    fn a_path_with_a_nul_character_is_a_configuration_error_not_a_missing_folder() {
        let (_dir, root, db) = clinic();
        let (root, db) = (root.to_str().unwrap(), db.to_str().unwrap());
        // A path taken from a fixed-size buffer keeps its terminating NUL, which JSON carries as \u0000.
        for (config, field) in [
            (serde_json::json!({ "nanopix_root": format!("{root}\0"), "dentaltid_db": db }), "nanopix_root"),
            (serde_json::json!({ "nanopix_root": root, "dentaltid_db": format!("{db}\0") }), "dentaltid_db"),
        ] {
            let config = std::ffi::CString::new(config.to_string()).unwrap();
            let mut handle = std::ptr::null_mut();
            let code = unsafe { nps_open(config.as_ptr(), &mut handle) };
            let message = nps_last_error_message();
            let text = unsafe { CStr::from_ptr(message) }.to_str().unwrap().to_owned();
            unsafe { nps_string_free(message) };
            assert_eq!((code, handle.is_null()), (NPS_INVALID_CONFIG, true), "{field}: {text}");
            assert!(text.contains(field) && text.contains("NUL"), "the message names the field and the NUL: {text}");
        }
    }
}
