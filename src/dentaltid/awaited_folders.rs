//! The NanoPix patients the sync linked before NanoPix made their folder, kept in
//! `nanopix_sync_awaited_folders`. NanoPix may save a new patient's row before it makes the
//! folder, so until the sync has seen that folder (in a full reconcile or a live pass), its
//! absence is not a removal.
//!
//! A pass records the folders it awaits after it committed its links. So that a crash in
//! between leaves no link unsettled without a trace, the first transaction of a pass that writes
//! links also notes when it did, in `nanopix_sync_state`, and recording the awaited folders
//! clears that note: a note found at the start of a reconcile names the links the crashed pass
//! may have left unsettled.
//!
//! Only that table and that note are written here, and only when they change. Rows this library
//! cannot read back as a NanoPix id are skipped, never fatal.

use chrono::NaiveDateTime;
use foldhash::HashSet;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::DentalTid;
use crate::patient::parse_dart_timestamp;
use crate::values::text_at;
use crate::{Error, NanoPixId, Result};

/// The `nanopix_sync_state` key of the note: when the links not settled yet were written.
const UNSETTLED_SINCE: &str = "links_unsettled_since";

/// Notes, unless a note is there already, that links written at `synced_at` (a Dart timestamp)
/// are not settled yet; for the first transaction of a pass that writes links.
pub(super) fn note_unsettled_links(conn: &Connection, synced_at: &str) -> rusqlite::Result<()> {
    let sql = "INSERT OR IGNORE INTO nanopix_sync_state(key, value) VALUES (?1, ?2)";
    conn.prepare_cached(sql)?.execute([UNSETTLED_SINCE, synced_at]).map(drop)
}

impl DentalTid {
    /// The NanoPix ids whose folder the sync has not seen yet.
    pub fn awaited_folders(&self) -> Result<HashSet<NanoPixId>> {
        let read = || {
            let mut statement = self.conn.prepare_cached("SELECT external_id FROM nanopix_sync_awaited_folders")?;
            let mut rows = statement.query([])?;
            let mut awaited = HashSet::default();
            while let Some(row) = rows.next()? {
                if let ValueRef::Text(text) = row.get_ref(0)?
                    && let Some(id) = std::str::from_utf8(text).ok().and_then(|text| NanoPixId::parse(text).ok())
                {
                    awaited.insert(id);
                }
            }
            Ok(awaited)
        };
        read().map_err(Error::db(&self.path, "reading the awaited folders"))
    }

    /// When the links a pass wrote without settling them were written, if a note says so (see
    /// the module's doc); an unreadable note counts from the earliest time.
    pub fn unsettled_links_since(&self) -> Result<Option<NaiveDateTime>> {
        let sql = "SELECT value FROM nanopix_sync_state WHERE key = ?1";
        let note = self.conn.query_row(sql, [UNSETTLED_SINCE], |row| text_at(row, 0)).optional();
        let note = note.map_err(Error::db(&self.path, "reading the unsettled links"))?;
        Ok(note.map(|text| text.as_deref().and_then(parse_dart_timestamp).unwrap_or(NaiveDateTime::MIN)))
    }

    /// Records, in one transaction, that the folders of `awaited` are not made yet and that those
    /// of `seen` are there, and clears the note of unsettled links; writes nothing when there is
    /// nothing to change.
    pub fn update_awaited_folders(&mut self, awaited: &[NanoPixId], seen: &[NanoPixId]) -> Result<()> {
        if awaited.is_empty() && seen.is_empty() && self.unsettled_links_since()?.is_none() {
            return Ok(());
        }
        self.write("recording the awaited folders", |tx| {
            tx.prepare_cached("DELETE FROM nanopix_sync_state WHERE key = ?1")?.execute([UNSETTLED_SINCE])?;
            let mut add =
                tx.prepare_cached("INSERT OR IGNORE INTO nanopix_sync_awaited_folders(external_id) VALUES (?1)")?;
            for id in awaited {
                add.execute([id.to_string()])?;
            }
            let mut remove = tx.prepare_cached("DELETE FROM nanopix_sync_awaited_folders WHERE external_id = ?1")?;
            for id in seen {
                remove.execute([id.to_string()])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{at, nanopix_id, sample_database};

    #[test]
    fn awaited_folders_are_kept_until_seen() {
        let (_dir, mut dentaltid) = sample_database();
        let (first, second) = (nanopix_id("20250122_091500"), nanopix_id("20250122_091600"));
        dentaltid.update_awaited_folders(&[first, second, first], &[]).unwrap();
        assert_eq!(dentaltid.awaited_folders().unwrap().len(), 2);
        dentaltid.update_awaited_folders(&[], &[first]).unwrap();
        assert_eq!(dentaltid.awaited_folders().unwrap().into_iter().collect::<Vec<_>>(), [second]);
    }

    #[test]
    fn a_note_of_unsettled_links_keeps_its_first_time_until_the_awaited_folders_are_recorded() {
        let (_dir, mut dentaltid) = sample_database();
        assert_eq!(dentaltid.unsettled_links_since().unwrap(), None);
        super::note_unsettled_links(&dentaltid.conn, "2025-01-22T10:00:00.000").unwrap();
        super::note_unsettled_links(&dentaltid.conn, "2025-01-22T11:00:00.000").unwrap();
        assert_eq!(dentaltid.unsettled_links_since().unwrap(), Some(at(2025, 1, 22, 10, 0)));
        dentaltid.update_awaited_folders(&[], &[]).unwrap();
        assert_eq!(dentaltid.unsettled_links_since().unwrap(), None);
    }

    #[test]
    fn nothing_to_change_writes_nothing_and_unreadable_rows_are_skipped() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.conn.execute_batch("INSERT INTO nanopix_sync_awaited_folders VALUES ('../x'), (7)").unwrap();
        let bytes = std::fs::read(dentaltid.path()).unwrap();
        dentaltid.update_awaited_folders(&[], &[]).unwrap();
        assert_eq!(std::fs::read(dentaltid.path()).unwrap(), bytes);
        assert!(dentaltid.awaited_folders().unwrap().is_empty());
    }
}
