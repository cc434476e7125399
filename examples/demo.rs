//! `demo`: the sync at work on a temporary copy of the fixtures, which are built into the binary.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//! It lays out a NanoPix `PatientData` folder and a DentalTID database (schema 24, so the
//! migration runs), adds patients to NanoPix the way NanoPix does and runs "Sync Now", which
//! imports or links them. Then it switches Live Sync on, adds a patient the way DentalTID does,
//! and waits for Live Sync to export it to NanoPix. It shows the result in both programs' terms,
//! with the possible duplicates left for a person to review.
//! Nothing outside the temporary folder is touched.

use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nanopix_sync::{Config, DuplicateReason, EventKind, NanoPixSync, PatientFilter, ReconcileReport, Source};
use rusqlite::Connection;

const NANOPIX_DB: &[u8] = include_bytes!("../../shared/fixtures/nanopix/PatientData/database/NanoPix.db3");
const THUMBNAIL: &[u8] =
    include_bytes!("../../shared/fixtures/nanopix/PatientData/20250121_152638/20250121_153202_thumbnail.jpg");
const DENTALTID_SCHEMA: &str = include_str!("../../shared/fixtures/dentaltid/schema_v24.sql");
const DENTALTID_PATIENTS: &str = include_str!("../../shared/fixtures/dentaltid/sample_patients.sql");

/// New NanoPix patients, as NanoPix's new-patient form saves them: id, last, first, sex, birthdate.
const NANOPIX_NEW: [(&str, &str, &str, &str, &str); 3] = [
    ("20250122_091500", "BENALI", "Amina", "Female", "1985-03-12"),
    ("20250122_093000", "Zoe", "Lefevre", "Female", "1990-07-04"),
    ("20250122_101000", "Mansouri", "Yacine", "Male", "2001-05-19"),
];

/// How long the demo waits for Live Sync to export the new DentalTID patient.
const EXPORT_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Lays out the clinic, syncs it and shows both programs' patients.
fn demo() -> Result<(), Box<dyn Error>> {
    let workspace = tempfile::tempdir()?;
    let root = workspace.path().join("PatientData");
    let dentaltid = workspace.path().join("dentaltid.db");
    lay_out_fixtures(&root, &dentaltid)?;
    add_nanopix_patients(&root)?;

    // Written with `writeln!`, so a closed stdout (`demo | head`) ends the demo with an error
    // instead of a panic.
    let out = &mut std::io::stdout().lock();
    writeln!(out, "== NanoPix PatientData and DentalTID database in {}", workspace.path().display())?;
    let mut sync = NanoPixSync::open(Config::new(&root, &dentaltid))?;
    sync_now(&sync, out)?;
    live_sync_exports_a_new_patient(&sync, &dentaltid, out)?;
    show_dentaltid(&sync, out)?;
    show_review_list(&sync, out)?;
    show_nanopix(&root, out)?;
    sync.close();
    Ok(())
}

/// Runs "Sync Now" and prints its report and what it did (its `reconciled` event is the report).
fn sync_now(sync: &NanoPixSync, out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    let report = sync.reconcile()?;
    writeln!(out, "\n== Sync Now: {}\n", summary(&report))?;
    for event in sync.events().try_iter().filter(|event| !matches!(event.kind, EventKind::Reconciled(_))) {
        writeln!(out, "{}", describe(&event.kind))?;
    }
    Ok(())
}

/// Switches Live Sync on, adds a DentalTID patient, and prints what Live Sync does until it
/// has exported that patient to NanoPix.
fn live_sync_exports_a_new_patient(
    sync: &NanoPixSync,
    dentaltid: &Path,
    out: &mut impl Write,
) -> Result<(), Box<dyn Error>> {
    writeln!(out, "\n== Live Sync on; Nadia Cherif is added in DentalTID\n")?;
    sync.set_live_sync(true)?;
    add_dentaltid_patient(dentaltid)?;
    let until = Instant::now() + EXPORT_DEADLINE;
    let events = sync.events();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let event = events.recv_timeout(left).map_err(|_| format!("no export within {EXPORT_DEADLINE:?}"))?;
        writeln!(out, "{}", describe(&event.kind))?;
        if matches!(event.kind, EventKind::PatientExported { .. }) {
            return Ok(());
        }
    }
}

fn lay_out_fixtures(root: &Path, dentaltid: &Path) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(root.join("database"))?;
    std::fs::write(root.join("database/NanoPix.db3"), NANOPIX_DB)?;
    std::fs::create_dir_all(root.join("20250121_152638"))?;
    std::fs::write(root.join("20250121_152638/20250121_153202_thumbnail.jpg"), THUMBNAIL)?;
    let conn = Connection::open(dentaltid)?;
    conn.execute_batch(DENTALTID_SCHEMA)?;
    conn.execute_batch(DENTALTID_PATIENTS)?;
    Ok(())
}

fn add_nanopix_patients(root: &Path) -> Result<(), Box<dyn Error>> {
    let conn = Connection::open(root.join("database/NanoPix.db3"))?;
    for (id, last, first, sex, birthdate) in NANOPIX_NEW {
        let created =
            format!("{}-{}-{} {}:{}:{}", &id[0..4], &id[4..6], &id[6..8], &id[9..11], &id[11..13], &id[13..15]);
        conn.execute(
            "INSERT INTO Patient(id, last_name, first_name, sex, birthdate, created_datetime, updated_datetime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            (id, last, first, sex, birthdate, &created),
        )?;
        std::fs::create_dir(root.join(id))?;
    }
    Ok(())
}

/// Adds Nadia Cherif as DentalTID does when the receptionist saves her: created now, in local time.
fn add_dentaltid_patient(dentaltid: &Path) -> Result<(), Box<dyn Error>> {
    let now = chrono::Local::now().naive_local().format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
    Connection::open(dentaltid)?.execute(
        "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment, payment,
                              createdAt, isEmergency, severity, healthAlerts, phoneNumber, isBlacklisted)
         VALUES ('Nadia', 'Cherif', 33, '1992-02-14T00:00:00.000', '', '', '', 0.0,
                 ?1, 0, 'EmergencySeverity.low', '', '0770112233', 0)",
        [now],
    )?;
    Ok(())
}

fn describe(kind: &EventKind) -> String {
    match kind {
        EventKind::PatientImported { patient_id, external_id, first_name, last_name } => {
            format!("imported   NanoPix {external_id} -> DentalTID #{patient_id} {first_name} {last_name}")
        }
        EventKind::PatientLinked { patient_id, external_id, .. } => {
            format!("linked     NanoPix {external_id} = DentalTID #{patient_id} (same person)")
        }
        EventKind::PossibleDuplicate { external_id, reason, candidates, .. } => {
            let ids: Vec<String> = candidates.iter().map(|c| format!("#{}", c.patient_id)).collect();
            format!("duplicate? NanoPix {external_id} looks like DentalTID {} ({})", ids.join(", "), in_words(*reason))
        }
        EventKind::PatientExported { patient_id, external_id, .. } => {
            format!("exported   DentalTID #{patient_id} -> NanoPix {external_id}")
        }
        EventKind::LiveSyncChanged { enabled } => format!("Live Sync  {}", if *enabled { "on" } else { "off" }),
        EventKind::WatcherMode { mode, reason } => format!("watching   {mode} ({reason})"),
        EventKind::Reconciled(report) => format!("reconciled {}", summary(report)),
        other => format!("{other:?}"),
    }
}

/// A report in a support person's words.
fn summary(report: &ReconcileReport) -> String {
    format!(
        "{} imported, {} linked, {} exported, {} possible duplicate(s), {} removed in NanoPix, {} repaired, \
         {} error(s), in {} ms",
        report.imported,
        report.linked,
        report.exported,
        report.possible_duplicates,
        report.removed,
        report.repaired,
        report.errors,
        report.duration_ms
    )
}

/// Why a person should look at a possible duplicate, in words.
fn in_words(reason: DuplicateReason) -> &'static str {
    match reason {
        DuplicateReason::AutoLinkOff => "same names and birth date; auto-linking is off",
        DuplicateReason::SeveralCandidates => "same names and birth date, more than one patient",
        DuplicateReason::AlreadyLinked => "same names and birth date, already linked to another",
        DuplicateReason::SwappedNames => "first and last names swapped",
        DuplicateReason::SimilarNames => "names a letter or two apart",
        DuplicateReason::MissingBirthDate => "same names, a birth date missing",
        DuplicateReason::MissingName => "one name missing",
    }
}

fn show_dentaltid(sync: &NanoPixSync, out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    writeln!(out, "\n== DentalTID patients screen (rows from NanoPix would be tinted light purple)")?;
    for patient in sync.patients(PatientFilter::All)? {
        let tint = if patient.source == Source::NanoPix { "[NanoPix]" } else { "         " };
        let link = patient.external_id.as_deref().unwrap_or("-");
        writeln!(
            out,
            "{tint} #{:<3} {:<10} {:<10} created {}  NanoPix id {link}",
            patient.id,
            patient.first_name.trim(),
            patient.last_name.trim(),
            patient.created_at
        )?;
    }
    Ok(())
}

fn show_review_list(sync: &NanoPixSync, out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    writeln!(out, "\n== Possible duplicates awaiting review (kept in DentalTID until dismissed)")?;
    for review in sync.possible_duplicates()? {
        let names: Vec<String> = review
            .candidates
            .iter()
            .map(|c| format!("#{} {} {}", c.patient_id, c.first_name.trim(), c.last_name.trim()))
            .collect();
        writeln!(out, "#{:<3} may be {} ({})", review.patient_id, names.join(", "), in_words(review.reason))?;
    }
    Ok(())
}

fn show_nanopix(root: &Path, out: &mut impl Write) -> Result<(), Box<dyn Error>> {
    writeln!(out, "\n== NanoPix patients (database row, folder)")?;
    let conn = Connection::open(root.join("database/NanoPix.db3"))?;
    let mut rows =
        conn.prepare("SELECT id, last_name, first_name, birthdate, created_datetime FROM Patient ORDER BY pk")?;
    let rows = rows.query_map((), |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Option<String>>(3)?,
            row.get::<_, Option<String>>(4)?,
        ))
    })?;
    for row in rows {
        let (id, last, first, born, created) = row?;
        let folder = if root.join(&id).is_dir() { "folder ok" } else { "NO FOLDER" };
        writeln!(
            out,
            "{id}  {last:<10} {:<10} born {:<10} created {:<19}  {folder}",
            first.unwrap_or_default(),
            born.unwrap_or_default(),
            created.unwrap_or_default()
        )?;
    }
    Ok(())
}
