//! Lenient reading of column values, in both programs' databases: whatever type SQLite holds in
//! a cell, reading it never fails a whole query.
//!
//! Neither DentalTID's nor NanoPix's columns have strict types, so a TEXT column may hold an
//! INTEGER, a blob or bytes that are not UTF-8. These helpers convert what they can (lossily for text) and give
//! `None` for the rest. They never panic and never write. The data version, which every connection
//! to either database reads to notice other programs' commits, and the shape of a table are read
//! here too, and the parameters of reads that look up many values at once are laid out here. The
//! checks `open` makes of either database file run here with closing set not to checkpoint, so a
//! file they refuse is left byte for byte.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Row};

use crate::{Error, Result};

/// Every character Rust's `str::trim` removes (Unicode's `White_Space`), for SQLite's
/// `trim(X, Y)`: SQL then finds a value blank exactly when Rust does.
pub(crate) const WHITESPACE: &str = "\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}\u{2001}\u{2002}\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}";

/// `PRAGMA data_version` on `conn`: it changes when another connection commits, never for the
/// connection's own writes (a read; nothing here sets a PRAGMA).
pub(crate) fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

/// Runs `check` on `conn`, just connected to the database file at `path`, with closing set not
/// to checkpoint: a file the check refuses is left byte for byte, where closing would move a WAL
/// another program left into it. Closing checkpoints again once the check passes.
pub(crate) fn check_without_checkpoint<T>(
    conn: &Connection,
    path: &Path,
    check: impl FnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let checkpoint_on_close = |on: bool| {
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, !on)
            .map_err(Error::db(path, "setting the checkpoint on close"))
    };
    checkpoint_on_close(false)?;
    let checked = check(conn)?;
    checkpoint_on_close(true)?;
    Ok(checked)
}

/// The column names of `table`, lower-cased (SQLite compares them without case); none when the
/// table does not exist.
pub(crate) fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<HashSet<String>> {
    let mut statement = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = statement.query_map([table], |row| text_at(row, 0))?;
    names.filter_map(|name| name.transpose()).map(|name| name.map(|name| name.to_lowercase())).collect()
}

/// Whether `table.column` is the table's row id: its only `PRIMARY KEY` column, declared
/// `INTEGER`, in a table with row ids. Any other such column (`INT PRIMARY KEY`, `INTEGER
/// PRIMARY KEY DESC`, a table `WITHOUT ROWID`) is a column of its own, which SQLite fills with
/// whatever it is given, NULL included.
pub(crate) fn column_is_rowid(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let sql = "SELECT (SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1
        AND EXISTS(SELECT 1 FROM pragma_table_info(?1)
                   WHERE pk = 1 AND name = ?2 COLLATE NOCASE AND upper(type) = 'INTEGER')
        AND NOT EXISTS(SELECT 1 FROM pragma_index_list(?1) WHERE origin = 'pk')";
    conn.query_row(sql, [table, column], |row| row.get(0))
}

/// The bounds of the texts that start with `prefix` (ASCII digits and punctuation) in SQLite's
/// order: from it, to it with its last character one higher.
pub(crate) fn starting_with(prefix: String) -> (String, String) {
    let mut to = prefix.clone();
    if let Some(last) = to.pop() {
        to.push(char::from_u32(u32::from(last) + 1).unwrap_or(last));
    }
    (prefix, to)
}

/// How many values one read that looks up many (NanoPix ids, patient ids) names at most: a
/// read per so many values instead of one per value, each holding its database's lock only
/// briefly.
pub(crate) const IDS_PER_READ: usize = 100;

/// The SQL parameters `?first` to `?(first + count - 1)`, for a statement that names up to
/// `count` values; [`padded_with_null`] binds the places left over to NULL.
pub(crate) fn numbered_places(first: usize, count: usize) -> Vec<String> {
    (first..first.saturating_add(count)).map(|place| format!("?{place}")).collect()
}

/// `values` and then NULL up to `count` values in all: one statement serves any number of values
/// up to `count`, as no value equals NULL (nor compares with it).
pub(crate) fn padded_with_null(values: impl IntoIterator<Item = Value>, count: usize) -> Vec<Value> {
    values.into_iter().chain(std::iter::repeat(Value::Null)).take(count).collect()
}

/// The cell at `index` as text: numbers are written out, invalid UTF-8 is replaced, NULL is `None`.
pub(crate) fn text_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(lossy_text(row.get_ref(index)?))
}

/// A stored value as text, as [`text_at`] reads it.
pub(crate) fn lossy_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(number) => Some(number.to_string()),
        ValueRef::Real(number) => Some(number.to_string()),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// Applies `read` to the cell at `index` as text, without copying it when it already is UTF-8
/// text (the usual case, on the hot path of a reconcile); other cells go through [`text_at`].
pub(crate) fn read_text<T>(row: &Row<'_>, index: usize, read: impl FnOnce(Option<&str>) -> T) -> rusqlite::Result<T> {
    Ok(read(text_ref(row, index)?.as_deref()))
}

/// The cell at `index` as text, borrowed from the row when it already is UTF-8 text; converted
/// as [`text_at`] converts it otherwise.
pub(crate) fn text_ref<'r>(row: &'r Row<'_>, index: usize) -> rusqlite::Result<Option<Cow<'r, str>>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(String::from_utf8_lossy(bytes)),
        _ => text_at(row, index)?.map(Cow::Owned),
    })
}

/// The cell at `index` as a whole number, when it holds one (as an integer, a whole real or
/// digits in text); `None` otherwise.
pub(crate) fn integer_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<i64>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Integer(number) => Some(number),
        ValueRef::Real(number) => whole_number(number),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().and_then(|text| text.trim().parse().ok()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

/// `number` as an `i64` when it is whole and fits exactly.
fn whole_number(number: f64) -> Option<i64> {
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;
    (number.fract() == 0.0 && number.abs() <= EXACT_LIMIT).then_some(number as i64)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    fn read<T>(sql: &str, reader: fn(&Row<'_>, usize) -> rusqlite::Result<T>) -> T {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row(sql, [], |row| reader(row, 0)).unwrap()
    }

    #[test]
    fn whitespace_is_every_character_rust_trims() {
        let trimmed: String = (char::MIN..=char::MAX).filter(|c| c.is_whitespace()).collect();
        assert_eq!(WHITESPACE, trimmed);
    }

    #[test]
    fn sqlite_trims_whitespace_as_rust_does() {
        let conn = Connection::open_in_memory().unwrap();
        for blank in WHITESPACE.chars() {
            let text = format!("{blank}20250122_091500{blank}");
            let trimmed: String = conn.query_row("SELECT trim(?1, ?2)", (&text, WHITESPACE), |row| row.get(0)).unwrap();
            assert_eq!(trimmed, text.trim(), "U+{:04X}", u32::from(blank));
        }
    }

    #[test]
    fn text_accepts_every_storage_class() {
        assert_eq!(read("SELECT NULL", text_at), None);
        assert_eq!(read("SELECT 42", text_at).as_deref(), Some("42"));
        assert_eq!(read("SELECT 'Zoé'", text_at).as_deref(), Some("Zoé"));
        assert_eq!(read("SELECT CAST(X'41FF42' AS TEXT)", text_at).as_deref(), Some("A\u{FFFD}B"));
        assert_eq!(read("SELECT X'4142'", text_at).as_deref(), Some("AB"));
    }

    #[test]
    fn integer_keeps_only_whole_numbers() {
        assert_eq!(read("SELECT 39", integer_at), Some(39));
        assert_eq!(read("SELECT 39.0", integer_at), Some(39));
        assert_eq!(read("SELECT ' 41 '", integer_at), Some(41));
        assert_eq!(read("SELECT 39.5", integer_at), None);
        assert_eq!(read("SELECT 'forty'", integer_at), None);
        assert_eq!(read("SELECT 1e300", integer_at), None);
        assert_eq!(read("SELECT NULL", integer_at), None);
        assert_eq!(read("SELECT X'01'", integer_at), None);
    }
}
