//! The DentalTID side: `dentaltid.db`, opened, checked and migrated; patients read and written
//! exactly as DentalTID itself writes them; the library's own state in `nanopix_sync_*` tables.
//!
//! This module never changes `PRAGMA user_version`, never creates DentalTID's own tables, and
//! never deletes a patient. All SQL about DentalTID lives here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use rusqlite::Connection;

use crate::patient::{NewDentalPatient, Patient, PatientFilter};
use crate::{NanoPixId, Result};

/// The state of a link between a DentalTID patient and a NanoPix patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Both sides exist.
    Linked,
    /// The NanoPix row or folder is gone; the DentalTID patient is kept.
    Missing,
    /// The DentalTID patient was deleted; a `delete_requested` event was sent.
    DeleteRequested,
}

/// How a link came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkOrigin {
    /// The DentalTID patient was created by importing the NanoPix patient.
    Imported,
    /// An existing DentalTID patient was matched to the NanoPix patient.
    Matched,
    /// The NanoPix patient was created by exporting the DentalTID patient.
    Exported,
}

/// A row of `nanopix_sync_links`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub patient_id: i64,
    pub external_id: String,
    pub origin: LinkOrigin,
    pub state: LinkState,
    pub synced_at: NaiveDateTime,
}

/// A row of the export journal, `nanopix_sync_exports`: an export that has not finished yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingExport {
    pub patient_id: i64,
    pub external_id: NanoPixId,
    pub started_at: NaiveDateTime,
}

/// An open, migrated DentalTID database.
#[derive(Debug)]
pub(crate) struct DentalTid {
    conn: Connection,
    path: PathBuf,
}

#[allow(unused_variables, dead_code)]
impl DentalTid {
    /// Opens an existing `dentaltid.db`, checks it has a `patients` table (before writing
    /// anything), and runs the additive migration.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self> {
        todo!()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Patients for the patients screen, newest first, with 'today' being `today`.
    pub fn patients(&self, filter: PatientFilter, today: NaiveDate) -> Result<Vec<Patient>> {
        todo!()
    }

    /// One patient, if it exists.
    pub fn patient(&self, id: i64) -> Result<Option<Patient>> {
        todo!()
    }

    /// Every patient, in id order (for a full reconcile).
    pub fn all_patients(&self) -> Result<Vec<Patient>> {
        todo!()
    }

    /// Patients whose id is greater than `cursor`, in id order.
    pub fn patients_after(&self, cursor: i64) -> Result<Vec<Patient>> {
        todo!()
    }

    /// The highest `patients.id` ever used (from `sqlite_sequence`, or `MAX(id)`), 0 if none.
    pub fn max_patient_id(&self) -> Result<i64> {
        todo!()
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>> {
        todo!()
    }

    /// The link of one patient, if any.
    pub fn link(&self, patient_id: i64) -> Result<Option<Link>> {
        todo!()
    }

    /// Inserts imported patients and their links in one transaction; returns their new ids in order.
    pub fn import(&mut self, rows: &[NewDentalPatient], synced_at: NaiveDateTime) -> Result<Vec<i64>> {
        todo!()
    }

    /// Links an existing patient: sets `external_id` (only if it is still NULL) and records the link.
    pub fn link_existing(&mut self, patient_id: i64, external_id: NanoPixId, synced_at: NaiveDateTime) -> Result<()> {
        todo!()
    }

    /// Records links DentalTID already had (an `external_id` set without a link row), in one transaction.
    pub fn adopt_links(&mut self, links: &[(i64, NanoPixId, LinkOrigin)], synced_at: NaiveDateTime) -> Result<()> {
        todo!()
    }

    /// Changes the state of a link.
    pub fn set_link_state(&mut self, patient_id: i64, state: LinkState) -> Result<()> {
        todo!()
    }

    /// Unfinished exports, oldest first.
    pub fn pending_exports(&self) -> Result<Vec<PendingExport>> {
        todo!()
    }

    /// Records the intent to export `patient_id` as `external_id`, before NanoPix is touched.
    pub fn begin_export(&mut self, patient_id: i64, external_id: NanoPixId, at: NaiveDateTime) -> Result<()> {
        todo!()
    }

    /// Finishes an export in one transaction: sets `external_id`, records the link, clears the journal row.
    pub fn finish_export(&mut self, patient_id: i64, external_id: NanoPixId, synced_at: NaiveDateTime) -> Result<()> {
        todo!()
    }

    /// Drops a journal row whose export cannot go on (the patient was deleted before NanoPix was written).
    pub fn abandon_export(&mut self, patient_id: i64) -> Result<()> {
        todo!()
    }

    /// Whether Live Sync is on (off when never set).
    pub fn live_sync(&self) -> Result<bool> {
        todo!()
    }

    /// Switches Live Sync; switching it on sets the export cursor to the highest id used so far.
    pub fn set_live_sync(&mut self, enabled: bool) -> Result<()> {
        todo!()
    }

    /// The export cursor: patients with a higher id were added while Live Sync was on.
    pub fn export_cursor(&self) -> Result<Option<i64>> {
        todo!()
    }

    /// Moves the export cursor (writes only when it changes).
    pub fn set_export_cursor(&mut self, cursor: i64) -> Result<()> {
        todo!()
    }

    /// `PRAGMA data_version`: changes when another connection commits.
    pub fn data_version(&self) -> Result<i64> {
        todo!()
    }
}
