//! What DentalTID holds of some NanoPix ids, read once for many of them: the patients showing
//! each id in `external_id`, those whose link row names it, those still there that keep a link
//! to it, and the rows their links were made with. A delete request stands only while none of
//! them holds its id again ([`IdHolders::delete_requested`]), and NanoPix's row under an id is
//! another person when none of them was linked with it ([`IdHolders::linked_rows_of`]).
//!
//! Years of patients deleted while the clinic keeps their X-rays leave thousands of delete
//! requests, judged together: each read looks up [`crate::values::IDS_PER_READ`] ids or patients
//! at once and the import batches are read in one pass, never once per id. Nothing here writes.

use std::collections::BTreeSet;

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};

use super::{DentalTid, ImportedUnder, Link, LinkState, LinkedRows, is_another_person};
use crate::{NanoPixId, Result};

/// What DentalTID holds of some NanoPix ids, as [`DentalTid::id_holders`] read it.
#[derive(Debug, Default)]
pub struct IdHolders {
    /// The ids a link row asking for a delete names.
    requested: HashSet<NanoPixId>,
    /// The patients whose `external_id` shows each id (see [`DentalTid::patients_showing`]).
    showing: HashMap<NanoPixId, Vec<i64>>,
    /// The patients whose link row names each id, whatever its state.
    named: HashMap<NanoPixId, Vec<i64>>,
    /// The patients still there that keep a link to each id that asks for no delete.
    kept: HashMap<NanoPixId, Vec<i64>>,
    /// The rows the links of all those patients were made with.
    rows: LinkedRows,
}

impl IdHolders {
    /// Whether a `delete_requested` link records NanoPix id `id`, and no DentalTID patient holds
    /// NanoPix's row under it, created at `row_created`: none shows the id any more
    /// ([`DentalTid::shows_external_id`]) nor keeps a link to it (one whose `external_id`
    /// DentalTID cleared), except those whose link was made with another person's row (see
    /// [`super::linked_rows`]). Only then may the NanoPix patient be deleted.
    pub fn delete_requested(&self, id: NanoPixId, row_created: Option<NaiveDateTime>) -> bool {
        let mut holders = of(&self.showing, id).iter().chain(of(&self.kept, id));
        self.requested.contains(&id)
            && holders.all(|&patient_id| is_another_person(row_created, &[self.rows.created(patient_id, id)]))
    }

    /// When the rows were created that the links to NanoPix id `id` were made with, one per
    /// patient showing it or with a link row to it (`None` where not recorded).
    pub fn linked_rows_of(&self, id: NanoPixId) -> Vec<Option<NaiveDateTime>> {
        let mut holders: Vec<i64> = of(&self.showing, id).iter().chain(of(&self.named, id)).copied().collect();
        holders.sort_unstable();
        holders.dedup();
        holders.into_iter().map(|patient_id| self.rows.created(patient_id, id)).collect()
    }
}

/// The patients `by_id` lists for `id`.
fn of(by_id: &HashMap<NanoPixId, Vec<i64>>, id: NanoPixId) -> &[i64] {
    by_id.get(&id).map_or(&[], Vec::as_slice)
}

impl DentalTid {
    /// What DentalTID holds of NanoPix `ids` (see [`IdHolders`]); `imported` holds the patients
    /// import batches give them to (see [`DentalTid::imported_under`]), some of whom may keep
    /// their link.
    pub fn id_holders(&self, ids: &[NanoPixId], imported: &ImportedUnder) -> Result<IdHolders> {
        let mut holders = IdHolders { showing: self.patients_showing_any(ids)?, ..IdHolders::default() };
        let mut links = HashMap::default();
        for row in self.link_rows_naming_any(ids)? {
            if row.requested {
                holders.requested.insert(row.external_id);
            }
            holders.named.entry(row.external_id).or_default().push(row.patient_id);
            links.insert(row.patient_id, row.link);
        }
        holders.kept = self.kept_linked(ids, imported, &holders.named, &links)?;
        let listed = [&holders.showing, &holders.named, &holders.kept].into_iter().flat_map(HashMap::values);
        let patients: BTreeSet<i64> = listed.flatten().copied().collect();
        holders.rows = self.linked_rows_among(&patients)?;
        Ok(holders)
    }

    /// The patients still there that keep a link to each of `ids` that asks for no delete, as
    /// [`DentalTid::link`] finds it, among those whose link row names the id (`named`, their
    /// links as `links` gives them) or whom an import batch gives it to (`imported`). A link row
    /// that cannot be read asks for nothing the sync can tell, so it keeps the id it names. Only
    /// those whose link row names no such id are looked up one by one.
    fn kept_linked(
        &self,
        ids: &[NanoPixId],
        imported: &ImportedUnder,
        named: &HashMap<NanoPixId, Vec<i64>>,
        links: &HashMap<i64, Option<Link>>,
    ) -> Result<HashMap<NanoPixId, Vec<i64>>> {
        let mut kept: HashMap<NanoPixId, Vec<i64>> = HashMap::default();
        for &id in ids {
            let text = id.to_string();
            let keeps = |link: &Link| link.external_id == text && link.state != LinkState::DeleteRequested;
            for &patient_id in of(named, id).iter().chain(imported.0.get(&id).into_iter().flatten()) {
                let keeps = match links.get(&patient_id) {
                    Some(Some(link)) => keeps(link),
                    Some(None) => of(named, id).contains(&patient_id),
                    None => self.link(patient_id)?.is_some_and(|link| keeps(&link)),
                };
                if keeps && self.patient(patient_id)?.is_some() {
                    kept.entry(id).or_default().push(patient_id);
                }
            }
        }
        Ok(kept)
    }
}
