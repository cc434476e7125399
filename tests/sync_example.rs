//! The examples as people run them: the `sync` runner as support staff use it (JSON lines out, a
//! clean stop on SIGTERM), and the demo.

mod common;

#[cfg(unix)]
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::sync::mpsc;
#[cfg(unix)]
use std::time::Duration;

use common::Clinic;

/// `target/<profile>/examples/sync`, built by `cargo test` alongside the tests.
fn sync_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join(format!("sync{}", std::env::consts::EXE_SUFFIX))
}

fn runner(clinic: &Clinic, command: &str) -> Command {
    runner_at(&sync_binary(), clinic, command)
}

/// The runner at `program`, a copy of [`sync_binary`], on `clinic`.
fn runner_at(program: &std::path::Path, clinic: &Clinic, command: &str) -> Command {
    let mut runner = Command::new(program);
    runner.arg("--nanopix").arg(&clinic.root).arg("--dentaltid").arg(&clinic.dentaltid).arg(command);
    runner
}

fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout).lines().map(|line| serde_json::from_str(line).expect(line)).collect()
}

/// Runs `runner`, which must succeed, and returns the JSON lines it printed.
fn printed(mut runner: Command) -> Vec<serde_json::Value> {
    let output = runner.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    json_lines(&output.stdout)
}

/// The `type` of each event.
fn types_of(events: &[serde_json::Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[test]
fn once_prints_events_as_json_lines_and_ends_with_closed() {
    let clinic = Clinic::new("v29");
    let events = printed(runner(&clinic, "once"));
    let types = types_of(&events);
    assert_eq!(types, ["patient_imported", "reconciled", "closed"]);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// A first sync of a clinic larger than the event queue (65,536 events) still prints one
/// `patient_imported` line per patient: the runner prints events while the reconcile runs.
#[test]
fn once_prints_every_event_of_a_first_sync_larger_than_the_event_queue() {
    let clinic = Clinic::new("v29");
    let count = 70_000;
    clinic.add_bulk_nanopix(count);
    let events = printed(runner(&clinic, "once"));
    let imported = events.iter().filter(|e| e["type"] == "patient_imported").count();
    let dropped: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "events_dropped").collect();
    let in_dentaltid: Vec<i64> =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0));
    assert_eq!(in_dentaltid, [count + 1], "the sync itself imported every patient");
    assert!(dropped.is_empty(), "events were dropped: {dropped:?}");
    assert_eq!(imported as i64, count + 1, "one patient_imported line per imported patient");
    assert_eq!(events.last().map(|e| &e["type"]), Some(&serde_json::json!("closed")), "closed comes last");
}

#[test]
fn status_prints_one_object() {
    let clinic = Clinic::new("v29");
    let output = runner(&clinic, "status").output().unwrap();
    assert!(output.status.success());
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["live_sync"], false);
    assert_eq!(lines[0]["patients"], 6);
}

#[test]
fn status_with_live_sync_on_reads_and_syncs_nothing() {
    let clinic = Clinic::new("v29");
    assert!(runner(&clinic, "enable").output().unwrap().status.success());
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let lines = printed(runner(&clinic, "status"));
    assert_eq!((lines.len(), &lines[0]["live_sync"]), (1, &serde_json::json!(true)));
    let imported: Vec<i64> =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE external_id = '20250122_091500'", |r| r.get(0));
    assert_eq!(imported, [0], "status started no sync it would not report");
}

/// `--help` and `-h` are asked for, not mistakes: the usage goes to stdout, and the exit code is 0.
#[test]
fn help_prints_the_usage_on_stdout_and_succeeds() {
    for flag in ["--help", "-h"] {
        let output = Command::new(sync_binary()).arg(flag).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{flag}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stderr.is_empty(), "{flag}: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.starts_with("usage: sync --nanopix <PatientData> --dentaltid <dentaltid.db>"),
            "{flag}: {stdout}"
        );
        assert!(stdout.contains("export-existing"), "{flag}: {stdout}");
    }
}

/// Missing arguments are a usage error: the usage, one line on stderr, and exit code 1.
#[test]
fn missing_arguments_are_a_usage_error_on_stderr() {
    let output = Command::new(sync_binary()).arg("once").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sync: usage: sync"), "{stderr}");
}

#[test]
fn an_unknown_command_is_refused_before_anything_is_opened() {
    let clinic = Clinic::new("v24");
    let before = std::fs::read(&clinic.dentaltid).unwrap();
    let output = runner(&clinic, "statsu").output().unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown command \"statsu\""));
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), before, "not even migrated");
}

#[test]
fn a_fatal_error_gives_one_line_and_a_non_zero_exit() {
    let clinic = Clinic::new("v29");
    std::fs::remove_dir_all(&clinic.root).unwrap();
    let output = runner(&clinic, "once").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NanoPix data folder not found"), "{stderr}");
}

/// With Live Sync on, `once` is still one full reconcile, exports included: no watcher and no
/// automatic reconcile before its own, so its one `reconciled` line counts all it did.
#[test]
fn once_with_live_sync_on_runs_one_reconcile_and_no_watcher() {
    let clinic = Clinic::new("v29");
    let enabled = runner(&clinic, "enable").output().unwrap();
    assert!(enabled.status.success(), "{}", String::from_utf8_lossy(&enabled.stderr));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    clinic.add_dentaltid("Nadia", "Cherif", Some("1992-02-14"));
    let events = printed(runner(&clinic, "once"));
    let types = types_of(&events);
    assert_eq!(types, ["patient_imported", "patient_imported", "patient_exported", "reconciled", "closed"]);
    assert_eq!((&events[3]["imported"], &events[3]["exported"]), (&2.into(), &1.into()), "{:?}", events[3]);
}

/// `enable` only stores Live Sync on: it syncs nothing and starts no watcher.
#[test]
fn enable_stores_live_sync_on_and_syncs_nothing() {
    let clinic = Clinic::new("v29");
    let events = printed(runner(&clinic, "enable"));
    let types = types_of(&events);
    assert_eq!(types, ["live_sync_changed", "closed"]);
    assert_eq!(events[0]["enabled"], true);
    let imported: Vec<i64> =
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0));
    assert_eq!(imported, [0], "the fixture patient waits for `once` or `watch`");
}

/// A `PatientData` folder whose name is not UTF-8 (a Latin-1 name on a Linux box or a mounted
/// share) is a good path like any other.
#[cfg(unix)]
#[test]
fn once_syncs_a_patientdata_folder_whose_path_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let clinic = Clinic::new("v29");
    // "Cabinet_Benaïssa" in ISO-8859-1: 0xEF is not UTF-8 on its own.
    let latin1 = clinic.dir.path().join(std::ffi::OsStr::from_bytes(b"Cabinet_Bena\xefssa"));
    std::fs::rename(&clinic.root, &latin1).unwrap();
    let output = Command::new(sync_binary())
        .arg("--nanopix")
        .arg(&latin1)
        .arg("--dentaltid")
        .arg(&clinic.dentaltid)
        .arg("once")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "the runner panicked: {stderr}");
    assert!(output.status.success(), "exit {:?}: {stderr}", output.status.code());
    let events = json_lines(&output.stdout);
    let imported: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "patient_imported").collect();
    assert_eq!(imported.len(), 1, "{events:?}");
    assert_eq!(imported[0]["external_id"], "20250121_152638");
}

/// A command that is not UTF-8 is a usage error: one line on stderr and exit code 1.
#[cfg(unix)]
#[test]
fn a_command_that_is_not_utf8_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let clinic = Clinic::new("v29");
    let output = Command::new(sync_binary())
        .arg("--nanopix")
        .arg(&clinic.root)
        .arg("--dentaltid")
        .arg(&clinic.dentaltid)
        .arg(std::ffi::OsStr::from_bytes(b"onc\xe9"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("usage: sync"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[cfg(unix)]
#[test]
fn watch_runs_until_sigterm_then_closes_cleanly() {
    let clinic = Clinic::new("v29");
    let mut child = runner(&clinic, "watch").stdout(Stdio::piped()).spawn().unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let wait_for_type = |wanted: &str| loop {
        let line = received.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("no {wanted} event"));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["type"] == wanted {
            return event;
        }
    };
    wait_for_type("reconciled");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    assert_eq!(wait_for_type("patient_imported")["external_id"], "20250122_091500");

    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    wait_for_type("closed");
    assert!(child.wait().unwrap().success(), "exit 0 after SIGTERM");
}

#[test]
fn a_closed_stdout_ends_the_output_without_a_panic() {
    let clinic = Clinic::new("v29");
    let mut child = runner(&clinic, "once").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let imported: Vec<i64> =
        clinic.dentaltid_rows("SELECT COUNT(*) FROM patients WHERE source = 'nanopix'", |r| r.get(0));
    assert_eq!(imported, vec![1], "the sync itself ran to the end");
}

#[test]
fn the_runner_refuses_a_database_another_sync_has_open() {
    let clinic = Clinic::new("v29");
    let app = clinic.open();
    let output = runner(&clinic, "once").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another nanopix-sync already syncs"), "{stderr}");
    assert_eq!(app.reconcile().unwrap().imported, 1, "the fixture patient is imported once, by the app");
}

/// `sync watch` on a `NanoPix.db3` it may only read when it starts (a read-only attribute, a
/// backup tool), with Live Sync on; the runner and its events, read on a thread.
#[cfg(unix)]
mod read_only_nanopix {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Child;
    use std::time::Instant;

    use super::*;

    /// The user the runner runs as when the tests run as root, whom file modes do not stop.
    const NOBODY: u32 = 65_534;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Hands `path` and everything under it to [`NOBODY`].
    fn give_to_nobody(path: &Path) {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                give_to_nobody(&entry.unwrap().path());
            }
        }
    }

    /// `sync watch`, as [`NOBODY`] when this test runs as root; stopped when dropped.
    struct Watch {
        child: Child,
        events: mpsc::Receiver<serde_json::Value>,
        /// Every event received so far.
        seen: std::cell::RefCell<Vec<serde_json::Value>>,
    }

    impl Watch {
        fn start(clinic: &Clinic) -> Self {
            let mut runner = if std::fs::metadata(clinic.dir.path()).unwrap().uid() == 0 {
                // A copy in the clinic's folder: the build folder may be one NOBODY cannot reach.
                let program = clinic.dir.path().join("sync");
                std::fs::copy(sync_binary(), &program).unwrap();
                give_to_nobody(clinic.dir.path());
                let mut runner = runner_at(&program, clinic, "watch");
                runner.uid(NOBODY).gid(NOBODY);
                runner
            } else {
                runner(clinic, "watch")
            };
            let mut child = runner.stdout(Stdio::piped()).spawn().unwrap();
            let stdout = child.stdout.take().unwrap();
            let (send, events) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = send.send(serde_json::from_str(&line).expect(&line));
                }
            });
            Self { child, events, seen: Default::default() }
        }

        /// Waits up to 30 s for an event `wanted` accepts, unless one came already.
        fn wait_for(&self, what: &str, wanted: impl Fn(&serde_json::Value) -> bool) {
            if self.seen.borrow().iter().any(&wanted) {
                return;
            }
            let until = Instant::now() + Duration::from_secs(30);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                let Ok(event) = self.events.recv_timeout(left) else { break };
                let found = wanted(&event);
                self.seen.borrow_mut().push(event);
                if found {
                    return;
                }
            }
            panic!("{what}: not within 30 s; saw {:?}", self.seen.borrow());
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn about(patient: i64, kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
        move |event| event["type"] == kind && event["patient_id"] == patient
    }

    #[test]
    fn exports_go_through_once_a_nanopix_database_read_only_at_start_is_writable_again() {
        let clinic = Clinic::new("v29");
        assert!(runner(&clinic, "enable").output().unwrap().status.success());
        set_mode(&clinic.nanopix_db(), 0o444);
        let watch = Watch::start(&clinic);
        watch.wait_for("the first reconcile", |event| event["type"] == "reconciled");
        let first = clinic.add_dentaltid("Amina", "ReadOnly", Some("1985-03-04"));
        watch.wait_for("the export fails while NanoPix.db3 is read-only", about(first, "sync_error"));

        set_mode(&clinic.nanopix_db(), 0o644);
        let second = clinic.add_dentaltid("Karim", "ReadOnly", Some("1986-04-05"));
        watch.wait_for("the second patient is exported", about(second, "patient_exported"));
        watch.wait_for("the first patient is exported", about(first, "patient_exported"));
        drop(watch);
        let exported: Vec<i64> =
            clinic.nanopix_rows("SELECT COUNT(*) FROM Patient WHERE last_name = 'ReadOnly'", |r| r.get(0));
        assert_eq!(exported, [2], "each patient once");
    }
}

/// The demo's path, beside the runner's.
fn demo_binary() -> PathBuf {
    sync_binary().with_file_name(format!("demo{}", std::env::consts::EXE_SUFFIX))
}

/// A demo whose stdout is closed (`demo | head`) stops with an error, not a panic.
#[test]
fn the_demo_stops_without_a_panic_when_stdout_is_closed() {
    let mut child = Command::new(demo_binary()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
}

/// The demo's "Sync Now" line reports what Sync Now did: the demo switches Live Sync on only
/// afterwards, so no automatic reconcile does the work first. Live Sync then exports the
/// patient the demo adds in DentalTID.
#[test]
fn the_demo_reports_what_sync_now_did_then_what_live_sync_did() {
    let demo = demo_binary();
    let output = Command::new(&demo).output().unwrap_or_else(|e| panic!("{}: {e}", demo.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let sync_now = stdout.lines().find(|line| line.starts_with("== Sync Now")).expect("a Sync Now line");
    assert!(sync_now.contains("imported: 3, linked: 1,"), "{sync_now}");
    assert!(stdout.contains("imported   NanoPix 20250122_101000"), "the demo imports patients: {stdout}");
    let (_, live) = stdout.split_once("== Live Sync on").expect("a Live Sync part");
    assert!(live.contains("exported   DentalTID #10 -> NanoPix "), "Live Sync exports the new patient: {live}");
}
