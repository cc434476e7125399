//! NanoPix ids that NanoPix gave to another person after the patient the sync linked them to
//! was removed: the old DentalTID patient gives the id up, so that it never shows the newcomer's
//! X-rays and one DentalTID patient holds each NanoPix id.
//!
//! Only `patients.external_id` of that one patient is written here, and only while it still holds
//! that id. The patient itself, and the sync's record of its link, are kept.

use rusqlite::params;

use super::DentalTid;
use crate::{NanoPixId, Result};

impl DentalTid {
    /// Clears the `external_id` of patient `patient_id` if it still holds `external_id`; returns
    /// whether it did.
    pub fn give_up_external_id(&mut self, patient_id: i64, external_id: NanoPixId) -> Result<bool> {
        let sql = "UPDATE patients SET external_id = NULL WHERE id = ?1 AND trim(external_id) = ?2";
        let cleared =
            self.write("giving up a NanoPix id", |tx| tx.execute(sql, params![patient_id, external_id.to_string()]))?;
        Ok(cleared > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{nanopix_id, sample_database};

    #[test]
    fn only_the_patient_holding_the_id_gives_it_up() {
        let (_dir, mut dentaltid) = sample_database();
        let id = nanopix_id("20250122_091500");
        dentaltid.conn.execute_batch("UPDATE patients SET external_id = '20250122_091500' WHERE id IN (1, 2)").unwrap();
        assert!(dentaltid.give_up_external_id(1, id).unwrap());
        assert!(!dentaltid.give_up_external_id(1, id).unwrap(), "given up already");
        assert!(!dentaltid.give_up_external_id(3, id).unwrap(), "never held it");
        let held = |id: i64| {
            let sql = "SELECT external_id FROM patients WHERE id = ?1";
            dentaltid.conn.query_row(sql, [id], |row| row.get::<_, Option<String>>(0)).unwrap()
        };
        assert_eq!((held(1), held(2).as_deref()), (None, Some("20250122_091500")), "patient 2 keeps it");
    }
}
