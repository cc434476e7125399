//! Reading DentalTID patients straight into the matching index: only the columns matching
//! needs, borrowed from each row, so no patient is held twice.
//!
//! Reading is lenient like the rest of this module: a row without an integer id is skipped, an
//! unreadable birth date counts as missing.

use chrono::NaiveDate;
use rusqlite::{Params, Row};

use super::DentalTid;
use super::values::{integer_at, text_ref};
use crate::matching::{DentalCandidate, DentalIndex};
use crate::patient::{nanopix_date, parse_dart_date};
use crate::{Error, Result};

/// The columns [`add_row`] reads, in its order.
const CANDIDATE_COLUMNS: &str = "id, name, familyName, dateOfBirth, external_id";

impl DentalTid {
    /// Adds every patient to `index`.
    pub fn add_all_candidates(&self, index: &mut DentalIndex) -> Result<()> {
        self.add_candidates("reading patients for matching", "", [], index)
    }

    /// Adds to `index` the patients a NanoPix patient born on one of `dates` could match or
    /// resemble: those born on these dates and those without a birth date. Each date is an
    /// index range, so this reads only those rows; a `dateOfBirth` in a form DentalTID never
    /// writes is not looked at.
    pub fn add_candidates_born_on(&self, dates: &[NaiveDate], index: &mut DentalIndex) -> Result<()> {
        let unborn = "WHERE dateOfBirth IS NULL OR dateOfBirth = ''";
        self.add_candidates("reading patients without a birth date", unborn, [], index)?;
        for date in dates {
            let next = date.succ_opt().unwrap_or(NaiveDate::MAX);
            let range = (nanopix_date(*date), nanopix_date(next));
            let born_on = "WHERE dateOfBirth >= ?1 AND dateOfBirth < ?2";
            self.add_candidates("reading match candidates", born_on, range, index)?;
        }
        Ok(())
    }

    /// Runs `SELECT <candidate columns> FROM patients <tail>` and adds every row to `index`.
    fn add_candidates(
        &self,
        step: &'static str,
        tail: &str,
        params: impl Params,
        index: &mut DentalIndex,
    ) -> Result<()> {
        let read = |index: &mut DentalIndex| {
            let sql = format!("SELECT {CANDIDATE_COLUMNS} FROM patients {tail}");
            let mut statement = self.conn.prepare_cached(&sql)?;
            let mut rows = statement.query(params)?;
            while let Some(row) = rows.next()? {
                add_row(row, index)?;
            }
            Ok(())
        };
        read(index).map_err(Error::db(&self.path, step))
    }
}

/// Adds one row of [`CANDIDATE_COLUMNS`] to `index`.
fn add_row(row: &Row<'_>, index: &mut DentalIndex) -> rusqlite::Result<()> {
    let Some(id) = integer_at(row, 0)? else { return Ok(()) };
    let (first_name, last_name) = (text_ref(row, 1)?, text_ref(row, 2)?);
    let date_of_birth = text_ref(row, 3)?.as_deref().and_then(parse_dart_date);
    let linked = text_ref(row, 4)?.is_some_and(|external_id| !external_id.trim().is_empty());
    index.add(DentalCandidate {
        id,
        first_name: first_name.as_deref().unwrap_or_default(),
        last_name: last_name.as_deref().unwrap_or_default(),
        date_of_birth,
        linked,
    });
    Ok(())
}
