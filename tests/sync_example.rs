//! The examples as people run them: the `sync` runner as support staff use it (JSON lines out, a
//! clean stop on SIGTERM), and the demo.

mod common;

#[cfg(unix)]
use std::io::{BufRead, BufReader};
#[cfg(unix)]
use std::path::Path;
use std::path::PathBuf;
#[cfg(unix)]
use std::process::Child;
use std::process::{Command, Stdio};
#[cfg(unix)]
use std::sync::mpsc;
#[cfg(unix)]
use std::time::{Duration, Instant};

use common::{Clinic, another_program};
#[cfg(unix)]
use nanopix_sync::NanoPixSync;

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

/// A running `sync` command whose stdout lines are parsed, and stderr lines read, on threads;
/// killed when dropped.
#[cfg(unix)]
struct Running {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    /// Every event received so far.
    seen: std::cell::RefCell<Vec<serde_json::Value>>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line received so far.
    stderr_seen: std::cell::RefCell<Vec<String>>,
}

#[cfg(unix)]
impl Running {
    fn start(mut runner: Command) -> Self {
        let mut child = runner.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let events = read_lines(child.stdout.take().unwrap(), |line| serde_json::from_str(&line).expect(&line));
        let stderr = read_lines(child.stderr.take().unwrap(), |line| line);
        Self { child, events, seen: Default::default(), stderr, stderr_seen: Default::default() }
    }

    /// Waits up to `deadline` for a line on stderr that `wanted` accepts; panics with the lines
    /// that came otherwise.
    fn wait_for_stderr(&self, what: &str, deadline: Duration, wanted: impl Fn(&str) -> bool) {
        if !receive_until(&self.stderr, &self.stderr_seen, deadline, |line: &String| wanted(line)) {
            panic!("{what}: not within {deadline:?}; stderr {:?}", self.stderr_seen.borrow());
        }
    }

    /// Waits up to `deadline` for an event `wanted` accepts, unless one came already; panics
    /// with what came otherwise.
    fn wait_for(&self, what: &str, deadline: Duration, wanted: impl Fn(&serde_json::Value) -> bool) {
        if self.seen.borrow().iter().any(&wanted) {
            return;
        }
        if !receive_until(&self.events, &self.seen, deadline, wanted) {
            panic!("{what}: not within {deadline:?}; saw {:?}", types_of(&self.seen.borrow()));
        }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(sent.success());
    }

    /// Waits for the command to end; its exit status and what it wrote on stderr.
    fn finish(self) -> (std::process::ExitStatus, String) {
        let (status, stderr, _) = self.finish_printing();
        (status, stderr)
    }

    /// Waits for the command to end; its exit status, what it wrote on stderr and every event it
    /// printed.
    fn finish_printing(mut self) -> (std::process::ExitStatus, String, Vec<serde_json::Value>) {
        let status = self.child.wait().unwrap();
        let mut lines = self.stderr_seen.take();
        lines.extend(self.stderr.iter());
        let mut events = self.seen.take();
        events.extend(self.events.iter());
        (status, lines.iter().map(|line| format!("{line}\n")).collect(), events)
    }
}

/// Reads `pipe` line by line on a thread of its own, sending each line as `parse` makes it.
#[cfg(unix)]
fn read_lines<T: Send + 'static>(
    pipe: impl std::io::Read + Send + 'static,
    parse: impl Fn(String) -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = send.send(parse(line));
        }
    });
    lines
}

/// Receives from `channel` into `seen` until one that `wanted` accepts comes, for up to
/// `deadline`; whether one came.
#[cfg(unix)]
fn receive_until<T>(
    channel: &mpsc::Receiver<T>,
    seen: &std::cell::RefCell<Vec<T>>,
    deadline: Duration,
    wanted: impl Fn(&T) -> bool,
) -> bool {
    let until = Instant::now() + deadline;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(received) = channel.recv_timeout(left) else { break };
        let found = wanted(&received);
        seen.borrow_mut().push(received);
        if found {
            return true;
        }
    }
    false
}

#[cfg(unix)]
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event of this type.
#[cfg(unix)]
fn of_type(kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |event| event["type"] == kind
}

/// The user the runner runs as when the tests run as root, whom file modes do not stop.
#[cfg(unix)]
const NOBODY: u32 = 65_534;

/// Hands `path` and everything under it to [`NOBODY`].
#[cfg(unix)]
fn give_to_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            give_to_nobody(&entry.unwrap().path());
        }
    }
}

/// The runner running `command` on `clinic` as [`NOBODY`], whom file modes bind, when this test
/// runs as root (from a copy in the clinic's folder, which NOBODY can reach); else as it is.
#[cfg(unix)]
fn runner_bound_by_file_modes(clinic: &Clinic, command: &str) -> Command {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata(clinic.dir.path()).unwrap().uid() != 0 {
        return runner(clinic, command);
    }
    let program = clinic.dir.path().join("sync");
    std::fs::copy(sync_binary(), &program).unwrap();
    give_to_nobody(clinic.dir.path());
    let mut runner = runner_at(&program, clinic, command);
    runner.uid(NOBODY).gid(NOBODY);
    runner
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

/// `status` prints its fields "and nothing else, so scripts can read it whole".
#[test]
fn status_prints_one_object() {
    let clinic = Clinic::new("v29");
    let output = runner(&clinic, "status").output().unwrap();
    assert!(output.status.success());
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["live_sync"], false);
    assert_eq!(lines[0]["patients"], 6);
    let fields: Vec<&str> = lines[0].as_object().unwrap().keys().map(String::as_str).collect();
    let documented = [
        "delete_requests",
        "from_nanopix",
        "live_sync",
        "patients",
        "possible_duplicates",
        "today",
        "today_by_external",
    ];
    assert_eq!(fields, documented, "the fields the README lists, and no other");
}

#[test]
fn status_counts_the_possible_duplicates_awaiting_review() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Amina", "Benali", Some("1985-03-12"));
    assert_eq!(printed(runner(&clinic, "status"))[0]["possible_duplicates"], 0);
    assert!(runner(&clinic, "once").output().unwrap().status.success());
    assert_eq!(printed(runner(&clinic, "status"))[0]["possible_duplicates"], 1);
}

/// A deletion the runner synced while DentalTID was closed is still there for DentalTID to ask
/// about, and `status` counts it.
#[test]
fn status_counts_the_delete_requests_still_standing() {
    let clinic = Clinic::new("v29");
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    assert!(runner(&clinic, "once").output().unwrap().status.success());
    assert_eq!(printed(runner(&clinic, "status"))[0]["delete_requests"], 0);
    another_program(&clinic.dentaltid)
        .execute("DELETE FROM patients WHERE external_id = '20250122_091500'", [])
        .unwrap();
    let events = printed(runner(&clinic, "once"));
    assert!(types_of(&events).contains(&"delete_requested"), "{events:?}");
    assert_eq!(printed(runner(&clinic, "status"))[0]["delete_requests"], 1);
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
    assert!(stderr.starts_with("sync: missing --nanopix and --dentaltid; usage: sync"), "{stderr}");
}

/// `sync once 2>&1 | head -1` whose reader went away before the runner failed: the reason is
/// lost with the pipe, but the exit code is still the one of a fatal error, with no panic.
#[test]
fn a_fatal_error_with_a_closed_stderr_still_exits_1() {
    let clinic = Clinic::new("v29");
    std::fs::remove_dir_all(&clinic.root).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = runner(&clinic, "once").stdout(Stdio::null()).stderr(writer).status().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
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

/// NanoPix's `NanoPix.db3` given as `--dentaltid`: the one-line reason says it is NanoPix's
/// database and to give DentalTID's, not that a table is missing.
#[test]
fn nanopix_s_database_given_as_dentaltid_s_is_named_in_the_one_line_reason() {
    let mut clinic = Clinic::new("v29");
    clinic.dentaltid = clinic.nanopix_db();
    let output = runner(&clinic, "status").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is NanoPix's database, not DentalTID's"), "{stderr}");
    assert!(stderr.contains("give DentalTID's own database file, dentaltid.db"), "{stderr}");
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

/// `enable` and `disable` print `live_sync_changed` only when they change the setting, and store
/// what they name.
#[test]
fn enable_and_disable_print_live_sync_changed_only_when_they_change_the_setting() {
    let clinic = Clinic::new("v29");
    let steps = [
        ("enable", Some(true), true),
        ("enable", None, true),
        ("disable", Some(false), false),
        ("disable", None, false),
    ];
    for (command, changed, stored) in steps {
        let events = printed(runner(&clinic, command));
        let expected: Vec<serde_json::Value> = changed
            .map(|enabled| serde_json::json!({"type": "live_sync_changed", "enabled": enabled}))
            .into_iter()
            .chain([serde_json::json!({"type": "closed"})])
            .collect();
        let without_stamps: Vec<serde_json::Value> = events
            .into_iter()
            .map(|mut event| {
                let fields = event.as_object_mut().unwrap();
                fields.remove("seq");
                fields.remove("at");
                event
            })
            .collect();
        assert_eq!(without_stamps, expected, "{command} with Live Sync {}", !stored);
        assert_eq!(printed(runner(&clinic, "status"))[0]["live_sync"], stored, "after {command}");
    }
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
    let watch = Running::start(runner(&clinic, "watch"));
    let deadline = Duration::from_secs(10);
    watch.wait_for("the first reconcile", deadline, of_type("reconciled"));
    clinic.add_nanopix("20250122_091500", "Mansouri", "Yacine", Some("2001-05-19"));
    let imported =
        |event: &serde_json::Value| event["type"] == "patient_imported" && event["external_id"] == "20250122_091500";
    watch.wait_for("the live import", deadline, imported);
    watch.signal("TERM");
    watch.wait_for("closed", deadline, of_type("closed"));
    assert!(watch.finish().0.success(), "exit 0 after SIGTERM");
}

/// Support staff `cd` into the clinic's folder and type the paths as they see them. A patient
/// folder removed in NanoPix is then reported live, as it is with absolute paths.
#[cfg(target_os = "linux")]
#[test]
fn watch_with_relative_paths_reports_a_patient_folder_removed_in_nanopix() {
    let clinic = Clinic::new("v29");
    printed(runner(&clinic, "once"));
    let mut relative = Command::new(sync_binary());
    relative.current_dir(clinic.dir.path());
    relative.args(["--nanopix", "PatientData", "--dentaltid", "dentaltid.db", "watch"]);
    let watch = Running::start(relative);
    watch.wait_for("the first reconcile", Duration::from_secs(30), of_type("reconciled"));
    std::fs::remove_dir_all(clinic.root.join("20250121_152638")).unwrap();
    // Within the 60 s before the watcher's own periodic check of the folder.
    watch.wait_for("the removed folder", Duration::from_secs(20), |event| {
        event["type"] == "external_patient_removed" && event["external_id"] == "20250121_152638"
    });
}

/// A SIGTERM during the first reconcile of `watch` cuts that reconcile short, also when Live Sync
/// was on already (after `enable`), so the runner opens the sync reconciling: the runner closes at
/// the next patient, and the next run does the rest.
#[cfg(unix)]
#[test]
fn watch_with_live_sync_already_on_stops_early_on_sigterm_during_its_first_reconcile() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(100_000);
    printed(runner(&clinic, "enable"));
    let watch = Running::start(runner(&clinic, "watch"));
    let deadline = Duration::from_secs(60);
    watch.wait_for("the first import", deadline, of_type("patient_imported"));
    watch.signal("TERM");
    watch.wait_for("closed", deadline, of_type("closed"));
    let reconciled: Vec<serde_json::Value> =
        watch.seen.borrow().iter().filter(|e| e["type"] == "reconciled").cloned().collect();
    assert!(watch.finish().0.success(), "exit 0: a signal is how `watch` ends");
    assert_eq!(reconciled.len(), 1, "{reconciled:?}");
    assert_eq!(reconciled[0]["stopped_early"], true, "{}", reconciled[0]);
}

/// A SIGTERM (a service stopping, Ctrl-C) cuts `once` short at the next patient: `closed` is still
/// printed last, and the runner says it stopped before the end.
#[cfg(unix)]
#[test]
fn a_signal_cuts_once_short_with_closed_last_and_exit_1() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(100_000);
    let once = Running::start(runner(&clinic, "once"));
    let deadline = Duration::from_secs(60);
    once.wait_for("the first import", deadline, of_type("patient_imported"));
    once.signal("TERM");
    once.wait_for("closed", deadline, of_type("closed"));
    let reconciled = once.seen.borrow().iter().find(|e| e["type"] == "reconciled").cloned();
    let (status, stderr) = once.finish();
    assert_eq!(reconciled.map(|report| report["stopped_early"].clone()), Some(serde_json::Value::Bool(true)));
    assert_eq!(status.code(), Some(1), "{stderr:?}");
    assert_eq!(stderr, "sync: stopped by a signal before the end; the next run goes on from there\n");
}

/// Runs `command` with its stdout on a full disk (`/dev/full`): the runner says it could not write
/// the events, in one line, and exits with 1.
#[cfg(target_os = "linux")]
fn assert_a_full_disk_fails_with_a_reason(command: &str) {
    let clinic = Clinic::new("v29");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let output = runner(&clinic, command).stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr:?}");
    assert!(
        stderr.starts_with("sync: writing the events to stdout failed: ") && stderr.lines().count() == 1,
        "{stderr:?}"
    );
}

/// `sync watch >> sync.log` on a full disk: the runner does not sync on in silence, nor stop with
/// exit code 0 (a service manager would not restart it): it says why and exits with 1.
#[cfg(target_os = "linux")]
#[test]
fn watch_with_stdout_on_a_full_disk_fails_with_exit_1_and_a_reason() {
    assert_a_full_disk_fails_with_a_reason("watch");
}

/// `sync once > sync.log` on a full disk: the events are lost, so the runner says so.
#[cfg(target_os = "linux")]
#[test]
fn once_with_stdout_on_a_full_disk_fails_with_exit_1_and_a_reason() {
    assert_a_full_disk_fails_with_a_reason("once");
}

/// An option given twice (a script with a default and an override) is a usage error: the runner
/// cannot know which database was meant, so it opens neither.
#[test]
fn a_repeated_option_is_a_usage_error_and_nothing_is_opened() {
    let (meant, other) = (Clinic::new("v24"), Clinic::new("v24"));
    let before = (std::fs::read(&meant.dentaltid).unwrap(), std::fs::read(&other.dentaltid).unwrap());
    let mut twice = runner(&meant, "once");
    twice.arg("--dentaltid").arg(&other.dentaltid);
    let output = twice.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr:?}");
    assert!(output.stdout.is_empty() && stderr.starts_with("sync: --dentaltid is given twice;"), "{stderr:?}");
    let after = (std::fs::read(&meant.dentaltid).unwrap(), std::fs::read(&other.dentaltid).unwrap());
    assert!(after == before, "a database was written");
}

/// A path left out, as an unset variable leaves it in a support script (`--nanopix $NANOPIX
/// --dentaltid ...`), is said to be left out: the runner does not blame the command after it, nor
/// take the next option for the path, and opens nothing.
#[test]
fn an_option_whose_path_is_left_out_is_named_in_a_usage_error() {
    let clinic = Clinic::new("v24");
    let before = std::fs::read(&clinic.dentaltid).unwrap();
    let mut left_out = Command::new(sync_binary());
    left_out.arg("--nanopix").arg("--dentaltid").arg(&clinic.dentaltid).arg("once");
    let mut left_out_last = Command::new(sync_binary());
    left_out_last.arg("once").arg("--nanopix").arg(&clinic.root).arg("--dentaltid");
    for (mut runner, option) in [(left_out, "--nanopix"), (left_out_last, "--dentaltid")] {
        let output = runner.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr:?}");
        assert!(stderr.starts_with(&format!("sync: {option} needs a path;")), "{stderr:?}");
        assert!(output.stdout.is_empty() && stderr.lines().count() == 1, "{stderr:?}");
    }
    assert_eq!(std::fs::read(&clinic.dentaltid).unwrap(), before, "not even migrated");
}

/// A `--dentaltid` naming a folder (the one holding the database) is said to be a folder, not
/// "not found", which would send support staff looking for a path that is there.
#[test]
fn a_dentaltid_path_that_is_a_folder_is_named_a_folder() {
    let clinic = Clinic::new("v29");
    let mut status = Command::new(sync_binary());
    status.arg("--nanopix").arg(&clinic.root).arg("--dentaltid").arg(clinic.dir.path()).arg("status");
    let output = status.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let named = format!(
        "sync: invalid configuration: dentaltid_db names a folder, not the DentalTID database file: {}\n",
        clinic.dir.path().display()
    );
    assert_eq!(stderr, named);
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

/// `sync export-existing | head -1`: the output ends where the reader stopped, but the exit code
/// still says that exports failed, as it does with the whole output read.
#[test]
fn export_existing_whose_exports_failed_exits_1_also_with_a_closed_stdout() {
    let clinic = Clinic::new("v29");
    // NanoPix refuses every new patient (a trigger of its own): each export fails.
    common::another_program(&clinic.nanopix_db())
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON Patient BEGIN SELECT RAISE(ABORT, 'refused'); END;")
        .unwrap();
    let mut child = runner(&clinic, "export-existing").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let in_nanopix: Vec<i64> = clinic.nanopix_rows("SELECT count(*) FROM Patient", |r| r.get(0));
    assert_eq!(in_nanopix, [1], "no patient was exported");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "exit code after 0 of 6 exports; stderr {stderr:?}");
    assert!(stderr.starts_with("sync: ") && stderr.lines().count() == 1, "{stderr:?}");
}

/// `sync export-existing | less` on a clinic whose first sync imports more patients than the
/// event queue holds: the reader stops reading, the queue fills, and the newest events are
/// dropped, the `sync_error` of every failed export among them. The runner cannot tell those
/// errors from none, so the exit code must not say that every export went through.
#[cfg(target_os = "linux")]
#[test]
fn export_existing_whose_events_were_dropped_unread_exits_1() {
    let clinic = Clinic::new("v29");
    clinic.add_bulk_nanopix(70_000);
    // NanoPix refuses every new patient (a trigger of its own): each export fails.
    common::another_program(&clinic.nanopix_db())
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON Patient BEGIN SELECT RAISE(ABORT, 'refused'); END;")
        .unwrap();
    // The runner closes its lock file once the sync is closed, every event made: IN_CLOSE_WRITE,
    // or IN_CLOSE_NOWRITE for a lock file the sync may only read.
    let lock = clinic.dir.path().join("dentaltid.db.nanopix-sync.lock");
    std::fs::write(&lock, "").unwrap();
    let closed = common::first_inotify_event(&lock, 0x10 | 0x8);
    let child = runner(&clinic, "export-existing").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    closed.recv_timeout(Duration::from_secs(300)).expect("the runner closes the sync");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let events = json_lines(&output.stdout);
    let dropped: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "events_dropped").collect();
    assert_eq!(dropped.len(), 1, "the queue overflowed while stdout was not read");
    let exported: Vec<i64> =
        clinic.nanopix_rows("SELECT count(*) FROM Patient WHERE last_name <> 'Bulk'", |r| r.get(0));
    assert_eq!(exported, [1], "no patient was exported");
    assert_eq!(output.status.code(), Some(1), "exit code after 0 of 6 exports; stderr {stderr:?}");
    assert!(stderr.starts_with("sync: ") && stderr.lines().count() == 1, "{stderr:?}");
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
/// backup tool), with Live Sync on.
#[cfg(unix)]
mod read_only_nanopix {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn about(patient: i64, kind: &'static str) -> impl Fn(&serde_json::Value) -> bool {
        move |event| event["type"] == kind && event["patient_id"] == patient
    }

    #[test]
    fn exports_go_through_once_a_nanopix_database_read_only_at_start_is_writable_again() {
        let clinic = Clinic::new("v29");
        assert!(runner(&clinic, "enable").output().unwrap().status.success());
        set_mode(&clinic.nanopix_db(), 0o444);
        let watch = Running::start(runner_bound_by_file_modes(&clinic, "watch"));
        let deadline = Duration::from_secs(30);
        watch.wait_for("the first reconcile", deadline, of_type("reconciled"));
        let first = clinic.add_dentaltid("Amina", "ReadOnly", Some("1985-03-04"));
        watch.wait_for("the export fails while NanoPix.db3 is read-only", deadline, about(first, "sync_error"));

        set_mode(&clinic.nanopix_db(), 0o644);
        let second = clinic.add_dentaltid("Karim", "ReadOnly", Some("1986-04-05"));
        watch.wait_for("the second patient is exported", deadline, about(second, "patient_exported"));
        watch.wait_for("the first patient is exported", deadline, about(first, "patient_exported"));
        drop(watch);
        let exported: Vec<i64> =
            clinic.nanopix_rows("SELECT COUNT(*) FROM Patient WHERE last_name = 'ReadOnly'", |r| r.get(0));
        assert_eq!(exported, [2], "each patient once");
    }

    /// `export-existing` that exported nobody, because every export failed (`NanoPix.db3`
    /// read-only, say), is no success: support staff and their scripts read the exit code.
    #[test]
    fn export_existing_whose_exports_failed_exits_1_with_a_reason() {
        let clinic = Clinic::new("v29");
        set_mode(&clinic.nanopix_db(), 0o444);
        let output = runner_bound_by_file_modes(&clinic, "export-existing").output().unwrap();
        let events = json_lines(&output.stdout);
        let exported = events.iter().filter(|e| e["type"] == "patient_exported").count();
        let failed = events.iter().filter(|e| e["type"] == "sync_error").count();
        assert_eq!((exported, failed), (0, 6), "every one of the six exports failed: {events:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "exit {:?} after 0 of 6 exports; stderr {stderr:?}", output.status);
        assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
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

/// The demo on a PC whose TMPDIR names a folder that does not exist: one readable line, not a
/// Rust debug dump.
#[test]
fn the_demo_reports_a_failure_in_one_readable_line() {
    let missing = tempfile::tempdir().unwrap().path().join("gone");
    let output = Command::new(demo_binary()).env("TMPDIR", &missing).env("TMP", &missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("demo: ") && stderr.lines().count() == 1, "{stderr:?}");
    assert!(!stderr.contains("Custom {") && !stderr.contains("Os {"), "a debug dump: {stderr:?}");
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
    assert!(sync_now.contains(": 3 imported, 1 linked,"), "{sync_now}");
    assert!(stdout.contains("imported   NanoPix 20250122_101000"), "the demo imports patients: {stdout}");
    let (_, live) = stdout.split_once("== Live Sync on").expect("a Live Sync part");
    assert!(live.contains("exported   DentalTID #10 -> NanoPix "), "Live Sync exports the new patient: {live}");
}

/// README: `export-existing` fails (exit 1) "when an error may have held back an export". Here no
/// patient is exported at all: the export of every patient stops on an error
/// (DentalTID, read by another program the whole time, cannot take the link that gives Nadia back
/// the NanoPix patient she had before she was deleted and added again). Its `sync_error` names no
/// patient, yet the patients it holds back were not exported: a script must not read exit 0.
#[test]
fn export_existing_that_exported_nothing_because_of_an_error_exits_1() {
    let clinic = Clinic::new("v29");
    let mut sync = clinic.open_without_automatic_work();
    sync.reconcile().unwrap();
    let nadia = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    let left_behind = sync.export_patient(nadia).unwrap().to_string();
    common::another_program(&clinic.dentaltid).execute("DELETE FROM patients WHERE id = ?1", [nadia]).unwrap();
    sync.reconcile().unwrap();
    assert!(
        common::drain(&sync).iter().any(|e| matches!(&e.kind,
            nanopix_sync::EventKind::DeleteRequested { external_id, .. } if *external_id == left_behind)),
        "the delete is asked for, and not done"
    );
    let again = clinic.add_dentaltid("Nadia", "Saidi", Some("1982-04-09"));
    sync.close();
    let unexported = |clinic: &Clinic| {
        clinic.dentaltid_rows("SELECT count(*) FROM patients WHERE external_id IS NULL", |r| r.get::<_, i64>(0))[0]
    };
    let before = unexported(&clinic);
    assert!(before >= 2, "Nadia and sample patients wait for their export");
    // DentalTID reads (its patients screen, a backup): the sync's writes cannot commit meanwhile.
    let reading = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    reading.execute_batch("BEGIN").unwrap();
    let _: i64 = reading.query_row("SELECT count(*) FROM patients", [], |r| r.get(0)).unwrap();
    let output = runner(&clinic, "export-existing").output().unwrap();
    reading.execute_batch("COMMIT").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let events = json_lines(&output.stdout);
    let exported = events.iter().filter(|e| e["type"] == "patient_exported").count();
    let errors: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "sync_error").collect();
    assert_eq!(exported, 0, "{events:?}");
    assert!(!errors.is_empty(), "the error is reported: {events:?}");
    assert_eq!(unexported(&clinic), before, "nothing was exported, Nadia {again} included");
    assert_eq!(output.status.code(), Some(1), "exit code with nothing exported; stderr {stderr:?}, errors {errors:?}");
}

/// `sync watch` started while another program holds `dentaltid.db` locked, once it has said on
/// stderr that it tries again in 1 s; the connection holding the lock.
#[cfg(unix)]
fn watch_refused_by_a_locked_dentaltid(clinic: &Clinic) -> (rusqlite::Connection, Running) {
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let watch = Running::start(runner(clinic, "watch"));
    let again = |line: &str| line.starts_with("sync: ") && line.ends_with("; trying again in 1 s");
    watch.wait_for_stderr("a try refused by the lock", Duration::from_secs(30), again);
    (dentaltid, watch)
}

/// A backup copies `dentaltid.db` under a lock for longer than the busy timeout as the clinic's
/// PC starts `sync watch` as a service: `watch` says so on stderr and tries again, and syncs once
/// the lock is gone, where it ended with exit code 1 and needed someone to start it again.
#[cfg(unix)]
#[test]
fn watch_waits_out_a_database_locked_while_it_opens() {
    let clinic = Clinic::new("v29");
    let (dentaltid, watch) = watch_refused_by_a_locked_dentaltid(&clinic);
    dentaltid.execute_batch("ROLLBACK").unwrap();
    watch.wait_for("the first reconcile once the lock is gone", Duration::from_secs(30), of_type("reconciled"));
    watch.signal("TERM");
    let (status, stderr) = watch.finish();
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}, stderr {stderr:?}");
    assert!(stderr.lines().all(|line| line.contains("trying again")), "{stderr:?}");
}

/// A service stopped while `watch` waits out a locked database (a backup copying it): the runner
/// ends with exit code 0 and prints no event, as it opened nothing.
#[cfg(unix)]
#[test]
fn a_signal_while_watch_waits_out_a_locked_database_ends_it_with_0_and_no_events() {
    let clinic = Clinic::new("v29");
    let (dentaltid, watch) = watch_refused_by_a_locked_dentaltid(&clinic);
    watch.signal("TERM");
    let (status, stderr, events) = watch.finish_printing();
    dentaltid.execute_batch("ROLLBACK").unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}, stderr {stderr:?}");
    assert!(events.is_empty(), "{events:?}");
    assert!(stderr.lines().all(|line| line.contains("trying again")), "{stderr:?}");
}

/// `sync watch | head`: once nobody reads its output, `watch` stops at the next event it cannot
/// print, closes the sync and exits with 0, instead of syncing on unseen.
#[cfg(unix)]
#[test]
fn watch_with_a_closed_stdout_closes_the_sync_and_exits_0() {
    let clinic = Clinic::new("v29");
    let mut child = runner(&clinic, "watch").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let pid = child.id();
    let (ended, output) = mpsc::channel();
    std::thread::spawn(move || ended.send(child.wait_with_output()));
    let Ok(output) = output.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        panic!("watch went on with nobody reading its output");
    };
    let output = output.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
    let reopened = NanoPixSync::open(clinic.config()).expect("the runner let go of the sync lock");
    assert!(reopened.live_sync().unwrap(), "watch switched Live Sync on before it stopped");
}

/// README: "SIGINT or SIGTERM during any command but `watch`" is a failure: exit code 1 with a
/// one-line reason. `once` on a DentalTID database another program holds locked waits in `open`
/// (its busy timeout, 5 s) before it syncs: a SIGTERM then (a service stopped, Ctrl-C) must end
/// it the way the README says, not kill it with no word on stderr and the signal's status.
#[cfg(target_os = "linux")]
#[test]
fn a_signal_while_the_runner_opens_the_databases_exits_1_with_a_reason() {
    let clinic = Clinic::new("v29");
    let dentaltid = rusqlite::Connection::open(&clinic.dentaltid).unwrap();
    dentaltid.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let opening = common::first_inotify_event(&clinic.dentaltid, 0x20);
    let once = Running::start(runner(&clinic, "once"));
    opening.recv_timeout(Duration::from_secs(30)).expect("the runner opens dentaltid.db");
    once.signal("TERM");
    let (status, stderr) = once.finish();
    dentaltid.execute_batch("ROLLBACK").unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}, stderr {stderr:?}");
    assert!(stderr.starts_with("sync: ") && stderr.lines().count() == 1, "{stderr:?}");
}
