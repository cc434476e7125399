//! Peak memory (`VmHWM`) of a first sync at 100,000/100,000 against a bare-rusqlite copy of
//! the same rows, and of a steady reconcile against a bare read of both sides, each measured in a
//! child process of this executable so that generating the clinic does not count. Run with
//! `cargo bench --bench memory` (Linux: reads /proc).

mod clinic;

use std::path::Path;
use std::process::Command;

use clinic::{Clinic, FileCopy, clinic_now};
use nanopix_sync::{ManualClock, NanoPixSync, ReconcileReport};

/// Patients on each side.
const SCALE: usize = 100_000;
/// Tells a child what to run: `sync` (reading its events as a host does), `sync_unread`
/// (nobody reads the events, so up to a full queue of them is held), `baseline` (a bare copy),
/// `baseline_read` (a bare read of both sides) or `idle`.
const ROLE: &str = "NANOPIX_SYNC_BENCH_MEMORY_ROLE";
/// The child's NanoPix `PatientData` folder.
const ROOT: &str = "NANOPIX_SYNC_BENCH_MEMORY_ROOT";
/// The child's own copy of the DentalTID database.
const DENTALTID: &str = "NANOPIX_SYNC_BENCH_MEMORY_DENTALTID";
/// The budget for the first sync's peak.
const BUDGET_KIB: u64 = 64 * 1024;

/// This process's peak resident set, in KiB, from /proc/self/status.
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child: runs one role on the clinic named by the environment and prints its peak.
fn child(role: &str) {
    let root = std::env::var_os(ROOT).expect("root given");
    let dentaltid = std::env::var_os(DENTALTID).expect("DentalTID given");
    let (root, dentaltid) = (Path::new(&root), Path::new(&dentaltid));
    match role {
        "sync" | "sync_unread" | "steady" => {
            let config = clinic::config_for(root, dentaltid, &ManualClock::new(clinic_now()));
            let mut sync = NanoPixSync::open(config).expect("open");
            if role != "sync_unread" {
                let events = sync.events();
                std::thread::spawn(move || while events.recv().is_ok() {});
            }
            let report = sync.reconcile().expect("reconcile");
            sync.close();
            eprintln!("child sync report: {report:?}");
            if role == "steady" {
                let changed = ReconcileReport { duration_ms: report.duration_ms, ..ReconcileReport::default() };
                assert_eq!(report, changed, "a steady reconcile changes nothing");
            }
        }
        "baseline" => {
            let copied = clinic::baseline_copy(&root.join("database/NanoPix.db3"), dentaltid);
            eprintln!("child baseline copied {copied} rows");
        }
        "baseline_read" => {
            let seen = clinic::baseline_read(root, dentaltid);
            eprintln!("child baseline read {seen} rows and folders");
        }
        _ => {}
    }
    println!("VmHWM {}", peak_kib().expect("VmHWM readable"));
}

/// Runs this executable as a child in `role` on a fresh copy of `dentaltid`; returns its peak in KiB.
fn measure(clinic: &Clinic, role: &str, dentaltid: &Path) -> u64 {
    let copy = FileCopy::of(dentaltid);
    let exe = std::env::current_exe().expect("own executable");
    let output = Command::new(exe)
        .env(ROLE, role)
        .env(ROOT, &clinic.root)
        .env(DENTALTID, &copy.path)
        .output()
        .expect("run child");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "child {role} failed: {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let peak = stdout.lines().find_map(|line| line.strip_prefix("VmHWM "));
    peak.and_then(|kib| kib.trim().parse().ok()).expect("child printed its peak")
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        child(&role);
        return;
    }
    let clinic = Clinic::generate(SCALE, SCALE);
    println!("generated {SCALE}/{SCALE} clinic: {:?}", clinic.mix);
    let unsynced = clinic.copy_dentaltid();
    let idle = measure(&clinic, "idle", &unsynced.path);
    let baseline = measure(&clinic, "baseline", &unsynced.path);
    let sync = measure(&clinic, "sync", &unsynced.path);
    let unread = measure(&clinic, "sync_unread", &unsynced.path);
    let verdict = if sync < BUDGET_KIB { "met" } else { "NOT met" };
    println!("peak memory (VmHWM), first sync {SCALE}/{SCALE}:");
    println!("  process that only starts: {idle} KiB ({:.1} MiB)", idle as f64 / 1024.0);
    println!("  baseline rusqlite copy:   {baseline} KiB ({:.1} MiB)", baseline as f64 / 1024.0);
    println!("  library open + reconcile, events read as they come: {sync} KiB ({:.1} MiB)", sync as f64 / 1024.0);
    println!("  ratio to baseline {:.2}x; budget < 64 MiB: {verdict}", sync as f64 / baseline as f64);
    println!("  same, nobody reading the events: {unread} KiB ({:.1} MiB)", unread as f64 / 1024.0);
    steady(&clinic);
}

/// Measures a steady reconcile: a child reconciles a copy of a DentalTID file synced once
/// already, another reads both sides bare.
fn steady(clinic: &Clinic) {
    let synced = clinic.copy_dentaltid();
    let mut sync = NanoPixSync::open(clinic.config(&synced.path, &ManualClock::new(clinic_now()))).expect("open");
    let first = sync.reconcile().expect("first sync");
    sync.close();
    eprintln!("first sync before the steady reconcile: {first:?}");
    let baseline = measure(clinic, "baseline_read", &synced.path);
    let steady = measure(clinic, "steady", &synced.path);
    println!(
        "peak memory (VmHWM), steady reconcile {SCALE}/{SCALE} (a child that opens a synced file and reconciles):"
    );
    println!("  baseline rusqlite read of both sides: {baseline} KiB ({:.1} MiB)", baseline as f64 / 1024.0);
    println!("  library open + reconcile, events read as they come: {steady} KiB ({:.1} MiB)", steady as f64 / 1024.0);
    println!("  ratio to baseline {:.2}x", steady as f64 / baseline as f64);
}
