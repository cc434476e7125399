//! The C API from real C and from Python: the header compiles as C11 and C++, matches the
//! symbols the cdylib exports, and a C host, the callbacks' promises around close, replacement
//! and calls back into the library (`tests/c/callbacks.c`) and a ctypes smoke test run against
//! the library. They build with gcc against `libnanopix_sync.so`, so they run on Unix only.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Clinic;

const HEADER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/nanopix_sync.h");
const STRICT_C: [&str; 5] = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"];

/// The folder holding the freshest `libnanopix_sync.so`: this test's `deps` folder (where
/// `cargo test` builds the cdylib) or its parent `target/<profile>` (where `cargo build` puts it).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps folder").to_path_buf();
    let profile = deps.parent().expect("target/<profile> folder").to_path_buf();
    let modified = |dir: &Path| std::fs::metadata(dir.join("libnanopix_sync.so")).and_then(|m| m.modified()).ok();
    [deps, profile].into_iter().max_by_key(|dir| modified(dir)).expect("two candidates")
}

fn cdylib() -> PathBuf {
    let library = library_dir().join("libnanopix_sync.so");
    assert!(library.exists(), "{} is missing: build the cdylib with `cargo build` first", library.display());
    library
}

/// Runs a tool that must be installed, failing clearly (never skipping) when it is not.
fn run(program: &str, args: &[&str]) -> Output {
    // The library this test chose, not whatever cargo's own LD_LIBRARY_PATH finds first.
    Command::new(program).args(args).env("LD_LIBRARY_PATH", library_dir()).output().unwrap_or_else(|error| {
        panic!("`{program}` is needed by this test and could not be run ({error}); install it (gcc, g++, binutils, python3)")
    })
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn header_compiles_as_strict_c11_and_as_cpp() {
    let c = run("gcc", &[&STRICT_C[..], &["-fsyntax-only", "-x", "c", HEADER]].concat());
    assert_success("gcc on the header", &c);
    let cpp = run("g++", &["-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++", HEADER]);
    assert_success("g++ on the header", &cpp);
}

fn exported_symbols() -> BTreeSet<String> {
    let library = cdylib();
    let output = run("nm", &["-D", "--defined-only", &library.to_string_lossy()]);
    assert_success("nm", &output);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter(|symbol| symbol.starts_with("nps_"))
        .map(str::to_owned)
        .collect()
}

fn declared_functions() -> BTreeSet<String> {
    let header = std::fs::read_to_string(HEADER).expect("include/nanopix_sync.h");
    header
        .lines()
        .filter(|line| !line.starts_with(' ') && !line.starts_with('*') && !line.starts_with('/'))
        .filter_map(|line| line.split('(').next())
        .filter_map(|head| head.split([' ', '*']).next_back())
        .filter(|name| name.starts_with("nps_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_exported_symbol_is_declared_and_the_other_way_round() {
    let exported = exported_symbols();
    let declared = declared_functions();
    assert!(declared.contains("nps_open") && declared.contains("nps_string_free"), "{declared:?}");
    assert_eq!(exported, declared, "the cdylib's nps_ symbols and the header's declarations differ");
}

/// Builds the C program `source` (relative to the crate) against the header and the cdylib, as
/// strict C11 with threads, into `out_dir`.
fn build_c(out_dir: &Path, source: &str) -> PathBuf {
    let name = Path::new(source).file_stem().expect("a file name");
    let program = out_dir.join(name);
    let library_dir = library_dir();
    let (library_dir, program_path) = (library_dir.to_string_lossy(), program.to_string_lossy());
    let source_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let rpath = format!("-Wl,-rpath,{library_dir}");
    let library_flag = format!("-L{library_dir}");
    let include_flag = format!("-I{include}");
    let source_arg = source_path.to_string_lossy();
    let args = [
        &STRICT_C[..],
        &["-pthread", &include_flag, &source_arg, &library_flag, "-lnanopix_sync", &rpath, "-o", &program_path],
    ];
    assert_success(&format!("building {source}"), &run("gcc", &args.concat()));
    program
}

fn valgrind_wanted() -> bool {
    std::env::var("NPS_VALGRIND").as_deref() == Ok("1")
}

#[test]
fn the_c_host_exports_a_patient_and_closes_cleanly() {
    cdylib();
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Amina", "Benali", Some("1985-03-12"));
    let host = build_c(clinic.dir.path(), "examples/c/host.c");
    let (root, db) = (clinic.root.to_string_lossy(), clinic.dentaltid.to_string_lossy());
    let host = host.to_string_lossy();
    let output = if valgrind_wanted() {
        let check = ["--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite"];
        run("valgrind", &[&check[..], &[&host, &root, &db]].concat())
    } else {
        run(&host, &[&root, &db])
    };
    assert_success("examples/c/host.c", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\"type\":\"patient_exported\""), "{stdout}");
    let listed = stdout.lines().find_map(|line| line.strip_prefix("possible duplicates: "));
    assert!(listed.is_some_and(|listed| listed.contains("\"reason\":\"swapped_names\"")), "{stdout}");
    assert!(stdout.contains("\"type\":\"closed\""), "{stdout}");
    let exported =
        std::fs::read_dir(&clinic.root).unwrap().filter(|entry| entry.as_ref().unwrap().path().is_dir()).count();
    assert_eq!(exported, 4, "database/, both NanoPix patients' folders and the exported patient's folder");
}

#[test]
fn the_python_ctypes_smoke_test_passes() {
    let library = cdylib();
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Amina", "Benali", Some("1985-03-12"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/smoke.py");
    let args =
        [script, &library.to_string_lossy(), &clinic.root.to_string_lossy(), &clinic.dentaltid.to_string_lossy()];
    let output = run("python3", &args);
    assert_success("tests/python/smoke.py", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|line| line.ends_with(" passed, 0 failed")), "{stdout}");
}

/// Runs one scenario of the C program `source` on `clinic`; it prints each promise it finds broken.
fn assert_scenario_holds(source: &str, scenario: &str, clinic: &Clinic) {
    cdylib();
    let program = build_c(clinic.dir.path(), source);
    let (root, db) = (clinic.root.to_string_lossy(), clinic.dentaltid.to_string_lossy());
    let output = run(&program.to_string_lossy(), &[scenario, &root, &db]);
    assert_success(&format!("{source} {scenario}"), &output);
}

/// Runs one scenario of `tests/c/callbacks.c` on a fresh clinic.
fn assert_callback_scenario_holds(scenario: &str) {
    assert_scenario_holds("tests/c/callbacks.c", scenario, &Clinic::new("v29"));
}

#[test]
fn clearing_the_callback_while_another_thread_closes_returns_once_no_call_is_in_flight() {
    assert_callback_scenario_holds("clear_during_close");
}

#[test]
fn a_callback_draining_the_queue_at_close_gets_closed_at_once() {
    assert_callback_scenario_holds("drain_during_close");
}

#[test]
fn a_new_callback_is_given_only_events_made_after_it_was_set() {
    assert_callback_scenario_holds("new_callback_gets_later_events");
}

#[test]
fn setting_the_wakeup_callback_takes_no_event_from_the_event_callback() {
    assert_callback_scenario_holds("wakeup_leaves_event_callback_whole");
}

#[test]
fn close_wakes_a_callback_waiting_in_next_event_while_another_thread_clears_it() {
    assert_callback_scenario_holds("wait_in_callback_during_clear_and_close");
}

#[test]
fn callbacks_call_the_library_back_but_never_close_free_or_set_callbacks() {
    assert_callback_scenario_holds("call_back_from_callbacks");
}

/// Adds `count` DentalTID patients, none of them linked, as DentalTID writes them.
fn add_unlinked_patients(clinic: &Clinic, count: u32) {
    let insert = "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                      payment, createdAt, isEmergency, severity, healthAlerts, phoneNumber,
                                      isBlacklisted)
        SELECT 'Given' || value, 'Family' || value, 30, '1995-01-01T00:00:00.000', '', '', '', 0.0,
               '2025-01-22T09:00:00.000', 0, 'EmergencySeverity.low', '', '', 0
        FROM (WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n WHERE value < ?1)
              SELECT value FROM n)";
    rusqlite::Connection::open(&clinic.dentaltid).unwrap().execute(insert, [count]).unwrap();
}

#[test]
fn closing_cuts_short_an_export_existing_in_flight_on_another_thread() {
    let clinic = Clinic::new("v29");
    add_unlinked_patients(&clinic, 3_000);
    assert_scenario_holds("tests/c/contract.c", "close_cuts_short_export_existing", &clinic);
}

/// A host may release its handle in a thread's exit cleanup, once that thread's thread-local data
/// is gone: the calls there give result codes, never abort the process.
#[test]
fn closing_in_a_thread_exit_cleanup_gives_result_codes() {
    assert_scenario_holds("tests/c/contract.c", "close_at_thread_exit", &Clinic::new("v29"));
}

/// The thread that closes its handle in its exit cleanup closed another handle before: the
/// close still gives `NPS_OK` and queues `closed`.
#[test]
fn closing_in_a_thread_exit_cleanup_after_reopening_gives_ok_and_closed() {
    assert_scenario_holds("tests/c/contract.c", "close_at_thread_exit_after_reopening", &Clinic::new("v29"));
}

/// A host may open its handle in a thread's exit cleanup, once that thread's thread-local data is
/// gone: the open, which repairs an export a crash interrupted (and asks the local clock the
/// time for it), gives `NPS_OK`, and the handle syncs and closes.
#[test]
fn opening_in_a_thread_exit_cleanup_gives_ok() {
    let clinic = Clinic::new("v29");
    drop(clinic.open_without_automatic_work());
    let interrupted = "INSERT INTO nanopix_sync_exports(patient_id, external_id, started_at)
        VALUES (1, '20250123_101500', '2025-01-23T10:15:00.000')";
    common::another_program(&clinic.dentaltid).execute(interrupted, []).unwrap();
    assert_scenario_holds("tests/c/contract.c", "open_at_thread_exit", &clinic);
    let journal: Vec<i64> = clinic.dentaltid_rows("SELECT patient_id FROM nanopix_sync_exports", |r| r.get(0));
    let linked: Vec<Option<String>> =
        clinic.dentaltid_rows("SELECT external_id FROM patients WHERE id = 1", |r| r.get(0));
    assert_eq!((journal, linked), (vec![], vec![Some("20250123_101500".to_owned())]), "the export was repaired");
}

/// DentalTID on Linux and macOS opens `dentaltid.db` through the system's SQLite (the Dart
/// `sqlite3` package loads it) in the process that loaded this library. POSIX locks belong to
/// the whole process, so two copies of SQLite in one process miss each other's locks and can
/// corrupt the file: for such a host the library is built without its bundled SQLite
/// (`--no-default-features`), and shares the system's. `.ci/run` runs this test so built.
#[cfg(not(feature = "bundled"))]
#[test]
fn dentaltid_stays_intact_when_the_host_writes_through_the_same_sqlite_in_the_process() {
    assert_scenario_holds("tests/c/contract.c", "host_sqlite_keeps_dentaltid_intact", &Clinic::new("v29"));
}
