//! The sync's own settings, kept in DentalTID's file in `nanopix_sync_state`: whether Live Sync
//! is on and the export cursor. Also `PRAGMA data_version`, to notice other writers.
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

impl DentalTid {
    /// Whether Live Sync is on (off when never set).
    pub fn live_sync(&self) -> Result<bool> {
        let value = state_value(&self.conn, LIVE_SYNC).map_err(Error::db(&self.path, "reading Live Sync"))?;
        Ok(value.is_some_and(|value| value.trim() == "1"))
    }

    /// Switches Live Sync; switching it on sets the export cursor to the highest id used so far.
    pub fn set_live_sync(&mut self, enabled: bool) -> Result<()> {
        self.write("switching Live Sync", |tx| {
            put_state(tx, LIVE_SYNC, if enabled { "1" } else { "0" })?;
            if enabled {
                put_state(tx, EXPORT_CURSOR, &highest_patient_id(tx)?.to_string())?;
            }
            Ok(())
        })
    }

    /// The export cursor: patients with a higher id were added while Live Sync was on.
    ///
    /// `None` when it was never set or holds no number.
    pub fn export_cursor(&self) -> Result<Option<i64>> {
        let value =
            state_value(&self.conn, EXPORT_CURSOR).map_err(Error::db(&self.path, "reading the export cursor"))?;
        Ok(value.and_then(|value| value.trim().parse().ok()))
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
        dentaltid.set_live_sync(true).unwrap();
        assert!(dentaltid.live_sync().unwrap());
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(6));
        dentaltid.set_live_sync(false).unwrap();
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
        dentaltid.set_live_sync(true).unwrap();
        assert_eq!(dentaltid.export_cursor().unwrap(), Some(7));
    }

    #[test]
    fn live_sync_survives_a_reopen() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.set_live_sync(true).unwrap();
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
}
