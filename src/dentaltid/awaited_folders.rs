//! The NanoPix patients the sync linked before NanoPix made their folder, kept in
//! `nanopix_sync_awaited_folders`. NanoPix may save a new patient's row before it makes the
//! folder, so until the sync has seen that folder (in a full reconcile or a live pass), its
//! absence is not a removal.
//!
//! A pass records the folders it awaits after it committed its links. So that a crash in
//! between leaves no link unsettled without a trace, every transaction that writes links of
//! NanoPix patients new to the sync also notes which DentalTID patients it linked, as runs of ids
//! in `nanopix_sync_unsettled_links`, and recording the awaited folders clears them: runs found
//! at the start of a reconcile name the links a crashed or failed pass left unsettled.
//!
//! Only those two tables are written here, and only when they change. Rows this library cannot
//! read back are skipped, never fatal.

use foldhash::HashSet;
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::DentalTid;
use crate::values::integer_at;
use crate::{Error, NanoPixId, Result};

/// Notes that the links of patients `first ..= last` are not settled yet.
pub(super) fn note_unsettled_links(conn: &Connection, first: i64, last: i64) -> rusqlite::Result<()> {
    let sql = "INSERT INTO nanopix_sync_unsettled_links(first_patient_id, last_patient_id) VALUES (?1, ?2)";
    conn.prepare_cached(sql)?.execute([first, last]).map(drop)
}

/// Patient ids in runs, as `nanopix_sync_unsettled_links` notes them: sorted, and merged where
/// they overlap, so a look-up is a binary search.
#[derive(Debug, Default)]
pub struct UnsettledLinks(Vec<(i64, i64)>);

impl UnsettledLinks {
    fn new(mut runs: Vec<(i64, i64)>) -> Self {
        runs.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(runs.len());
        for (first, last) in runs {
            match merged.last_mut() {
                Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
                _ => merged.push((first, last)),
            }
        }
        Self(merged)
    }

    /// Whether `patient_id` is in a run.
    pub fn contains(&self, patient_id: i64) -> bool {
        let after = self.0.partition_point(|&(first, _)| first <= patient_id);
        after.checked_sub(1).and_then(|run| self.0.get(run)).is_some_and(|&(_, last)| patient_id <= last)
    }
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

    /// The patients whose links a pass wrote without settling them (see the module's doc); a run
    /// not made of two integers counts as every patient.
    pub fn unsettled_links(&self) -> Result<UnsettledLinks> {
        let read = || {
            let sql = "SELECT first_patient_id, last_patient_id FROM nanopix_sync_unsettled_links";
            let mut statement = self.conn.prepare_cached(sql)?;
            let runs = statement.query_map([], |row| {
                Ok((integer_at(row, 0)?.unwrap_or(i64::MIN), integer_at(row, 1)?.unwrap_or(i64::MAX)))
            })?;
            runs.collect::<rusqlite::Result<Vec<_>>>()
        };
        read().map(UnsettledLinks::new).map_err(Error::db(&self.path, "reading the unsettled links"))
    }

    /// Whether any link is noted unsettled.
    pub fn has_unsettled_links(&self) -> Result<bool> {
        let sql = "SELECT EXISTS(SELECT 1 FROM nanopix_sync_unsettled_links)";
        self.conn.query_row(sql, [], |row| row.get(0)).map_err(Error::db(&self.path, "reading the unsettled links"))
    }

    /// Records, in one transaction, that the folders of `awaited` are not made yet and that those
    /// of `seen` are there, and clears the unsettled links; writes nothing when there is nothing
    /// to change.
    pub fn update_awaited_folders(&mut self, awaited: &[NanoPixId], seen: &[NanoPixId]) -> Result<()> {
        if awaited.is_empty() && seen.is_empty() && !self.has_unsettled_links()? {
            return Ok(());
        }
        self.write("recording the awaited folders", |tx| {
            tx.prepare_cached("DELETE FROM nanopix_sync_unsettled_links")?.execute([])?;
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
    fn unsettled_links_are_kept_until_the_awaited_folders_are_recorded() {
        let (_dir, mut dentaltid) = sample_database();
        assert!(!dentaltid.has_unsettled_links().unwrap());
        for (first, last) in [(10, 12), (3, 3), (11, 11), (12, 13), (20, 20)] {
            super::note_unsettled_links(&dentaltid.conn, first, last).unwrap();
        }
        let unsettled = dentaltid.unsettled_links().unwrap();
        let noted: Vec<i64> = (0..25).filter(|&id| unsettled.contains(id)).collect();
        assert_eq!(noted, [3, 10, 11, 12, 13, 20]);
        dentaltid.update_awaited_folders(&[], &[]).unwrap();
        assert!(!dentaltid.has_unsettled_links().unwrap());
        dentaltid.conn.execute_batch("INSERT INTO nanopix_sync_unsettled_links VALUES ('x', 5.5)").unwrap();
        assert!(dentaltid.unsettled_links().unwrap().contains(7), "an unreadable run counts as every patient");
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
