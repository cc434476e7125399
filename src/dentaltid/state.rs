//! The sync's own settings, kept in DentalTID's file in `nanopix_sync_state`: whether Live Sync
//! is on, the export cursor, and the exports still due behind it.
//!
//! Values are written only when they change, and never anywhere but `nanopix_sync_state`.

use rusqlite::{Connection, OptionalExtension};

use super::DentalTid;
use super::patients::highest_patient_id;
use crate::values::text_at;
use crate::{Error, Result};

/// The key of the Live Sync switch (`'1'` on, `'0'` off).
const LIVE_SYNC: &str = "live_sync";

/// The key of the export cursor: the highest patient id already considered for export.
const EXPORT_CURSOR: &str = "export_cursor";

/// The key of the patients added while Live Sync was on whose export had not succeeded when it
/// was switched off, and of those whose export gave way to a link that may not happen (see
/// [`DentalTid::give_export_up_for_link`]); their ids, comma-separated. The export cursor is past
/// them, so they are kept here until exported.
const EXPORTS_DUE: &str = "exports_due";

impl DentalTid {
    /// Whether Live Sync is on (off when never set).
    pub fn live_sync(&self) -> Result<bool> {
        let value = state_value(&self.conn, LIVE_SYNC).map_err(Error::db(&self.path, "reading Live Sync"))?;
        Ok(value.is_some_and(|value| value.trim() == "1"))
    }

    /// Switches Live Sync; switching it on sets the export cursor to the highest id used so far.
    /// `due` (when switching off) are patients whose export is still due: they join
    /// [`DentalTid::exports_due`] in the same transaction.
    pub fn set_live_sync(&mut self, enabled: bool, due: &[i64]) -> Result<()> {
        self.write("switching Live Sync", |tx| {
            put_state(tx, LIVE_SYNC, if enabled { "1" } else { "0" })?;
            if enabled {
                put_state(tx, EXPORT_CURSOR, &highest_patient_id(tx)?.to_string())?;
            }
            add_exports_due(tx, due)
        })
    }

    /// Patients behind the export cursor whose export is still due, in id order: those whose
    /// export had not succeeded when Live Sync was switched off, and those whose export gave way
    /// to a link that may not happen.
    pub fn exports_due(&self) -> Result<Vec<i64>> {
        due_ids(&self.conn).map_err(Error::db(&self.path, "reading the exports due"))
    }

    /// Keeps only `due` as the exports still due (writes only when that changes).
    pub fn set_exports_due(&mut self, due: &[i64]) -> Result<()> {
        if self.exports_due()? == due {
            return Ok(());
        }
        self.write("recording the exports due", |tx| put_state(tx, EXPORTS_DUE, &join_ids(due.to_vec())))
    }

    /// The export cursor: patients with a higher id were added while Live Sync was on.
    ///
    /// `None` when it was never set or holds no number.
    pub fn export_cursor(&self) -> Result<Option<i64>> {
        let value =
            state_value(&self.conn, EXPORT_CURSOR).map_err(Error::db(&self.path, "reading the export cursor"))?;
        Ok(value.and_then(|value| value.trim().parse().ok()))
    }

    /// Sets the export cursor to the highest id used so far, as switching Live Sync on does, and
    /// returns it.
    pub fn retake_export_cursor(&mut self) -> Result<i64> {
        self.write("taking the export cursor again", |tx| {
            let highest = highest_patient_id(tx)?;
            put_state(tx, EXPORT_CURSOR, &highest.to_string())?;
            Ok(highest)
        })
    }

    /// Moves the export cursor (writes only when it changes).
    pub fn set_export_cursor(&mut self, cursor: i64) -> Result<()> {
        if self.export_cursor()? == Some(cursor) {
            return Ok(());
        }
        self.write("moving the export cursor", |tx| put_state(tx, EXPORT_CURSOR, &cursor.to_string()))
    }
}

/// The value stored under `key`, if any.
fn state_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    let sql = "SELECT value FROM nanopix_sync_state WHERE key = ?1";
    Ok(conn.query_row(sql, [key], |row| text_at(row, 0)).optional()?.flatten())
}

/// The ids stored under [`EXPORTS_DUE`], in order; a part that is not a number is skipped.
fn due_ids(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    let value = state_value(conn, EXPORTS_DUE)?.unwrap_or_default();
    Ok(value.split(',').filter_map(|id| id.trim().parse().ok()).collect())
}

/// Adds `due` to the patients whose export is still due (see [`DentalTid::exports_due`]).
pub(super) fn add_exports_due(conn: &Connection, due: &[i64]) -> rusqlite::Result<()> {
    if due.is_empty() {
        return Ok(());
    }
    let mut all = due_ids(conn)?;
    all.extend_from_slice(due);
    put_state(conn, EXPORTS_DUE, &join_ids(all))
}

/// `ids` sorted, without repeats, comma-separated.
fn join_ids(mut ids: Vec<i64>) -> String {
    ids.sort_unstable();
    ids.dedup();
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// Stores `value` under `key`.
fn put_state(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    let sql = "INSERT INTO nanopix_sync_state(key, value) VALUES (?1, ?2)
        ON CONFLICT(key) DO UPDATE SET value = excluded.value";
    conn.execute(sql, [key, value]).map(drop)
}

#[cfg(test)]
mod tests {

    use super::super::testing::{at, new_patient, sample_database};

    #[test]
    fn live_sync_is_off_until_switched_on() {
        let (_dir, mut dentaltid) = sample_database();
        assert!(!dentaltid.live_sync().unwrap());
        assert_eq!(dentaltid.export_cursor().unwrap(), None);
        dentaltid.set_live_sync(true, &[]).unwrap();
        assert!(dentaltid.live_sync().unwrap());
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(6));
        dentaltid.set_live_sync(false, &[]).unwrap();
        assert!(!dentaltid.live_sync().unwrap());
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(6));
    }

    #[test]
    fn switching_live_sync_on_again_moves_the_cursor_past_deleted_ids() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid
            .import(&[new_patient("New", at(2025, 1, 22, 9, 0), "20250122_090000")], at(2025, 1, 22, 9, 0))
            .unwrap();
        dentaltid.conn.execute_batch("DELETE FROM patients WHERE id = 7").unwrap();
        dentaltid.set_live_sync(true, &[]).unwrap();
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(7));
    }

    #[test]
    fn live_sync_survives_a_reopen() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.set_live_sync(true, &[]).unwrap();
        let path = dentaltid.path().to_path_buf();
        drop(dentaltid);
        let reopened = super::super::testing::open(&path);
        assert!(reopened.live_sync().unwrap());
    }

    #[test]
    fn the_export_cursor_is_written_only_when_it_moves() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.set_export_cursor(4).unwrap();
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(4));
        let bytes = std::fs::read(dentaltid.path()).unwrap();
        dentaltid.set_export_cursor(4).unwrap();
        assert_eq!(std::fs::read(dentaltid.path()).unwrap(), bytes);
        dentaltid.set_export_cursor(9).unwrap();
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(9));
        assert_ne!(std::fs::read(dentaltid.path()).unwrap(), bytes);
    }

    #[test]
    fn an_unreadable_cursor_reads_as_unset() {
        let (_dir, dentaltid) = sample_database();
        dentaltid.conn.execute_batch("INSERT INTO nanopix_sync_state VALUES ('export_cursor', 'soon')").unwrap();
        assert_eq!(dentaltid.export_cursor().unwrap(), None);
    }

    #[test]
    fn exports_due_at_switch_off_are_kept_until_set_again() {
        let (_dir, mut dentaltid) = sample_database();
        assert_eq!(dentaltid.exports_due().unwrap(), Vec::<i64>::new());
        dentaltid.set_live_sync(true, &[]).unwrap();
        dentaltid.set_live_sync(false, &[5, 3]).unwrap();
        dentaltid.set_live_sync(true, &[]).unwrap();
        assert_eq!(dentaltid.exports_due().unwrap(), [3, 5], "switching on keeps them");
        dentaltid.set_live_sync(false, &[6, 3]).unwrap();
        assert_eq!(dentaltid.exports_due().unwrap(), [3, 5, 6]);
        let bytes = std::fs::read(dentaltid.path()).unwrap();
        dentaltid.set_exports_due(&[3, 5, 6]).unwrap();
        assert_eq!(std::fs::read(dentaltid.path()).unwrap(), bytes, "unchanged, so not written");
        dentaltid.set_exports_due(&[]).unwrap();
        assert_eq!(dentaltid.exports_due().unwrap(), Vec::<i64>::new());
    }
}
