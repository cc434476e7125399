//! The NanoPix patients the sync linked before NanoPix made their folder, kept in
//! `nanopix_sync_awaited_folders`. NanoPix may save a new patient's row before it makes the
//! folder, so until the sync has seen that folder (in a full reconcile or a live pass), its
//! absence is not a removal.
//!
//! Only that table is written here, and only when it changes. Rows this library cannot read back
//! as a NanoPix id are skipped, never fatal.

use foldhash::HashSet;
use rusqlite::types::ValueRef;

use super::DentalTid;
use crate::{Error, NanoPixId, Result};

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

    /// Records, in one transaction, that the folders of `awaited` are not made yet and that those
    /// of `seen` are there; writes nothing when both are empty.
    pub fn update_awaited_folders(&mut self, awaited: &[NanoPixId], seen: &[NanoPixId]) -> Result<()> {
        if awaited.is_empty() && seen.is_empty() {
            return Ok(());
        }
        self.write("recording the awaited folders", |tx| {
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
    use super::super::testing::{nanopix_id, sample_database};

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
    fn nothing_to_change_writes_nothing_and_unreadable_rows_are_skipped() {
        let (_dir, mut dentaltid) = sample_database();
        dentaltid.conn.execute_batch("INSERT INTO nanopix_sync_awaited_folders VALUES ('../x'), (7)").unwrap();
        let bytes = std::fs::read(dentaltid.path()).unwrap();
        dentaltid.update_awaited_folders(&[], &[]).unwrap();
        assert_eq!(std::fs::read(dentaltid.path()).unwrap(), bytes);
        assert!(dentaltid.awaited_folders().unwrap().is_empty());
    }
}
