//! Delete requests: announced once the work that found their DentalTID patient deleted has
//! ended well, and only while the delete still stands; and the NanoPix patient deleted when the
//! host asks, once DentalTID asked for it.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use chrono::NaiveDateTime;
use foldhash::{HashMap, HashSet};

use super::Engine;
use crate::dentaltid::{IdHolders, is_another_person};
use crate::events::EventKind;
use crate::sync::DeleteRequest;
use crate::{Error, NanoPixId, Result};

impl Engine {
    /// Deletes a NanoPix patient's row and empty folder once DentalTID asked for it: a
    /// `delete_requested` was sent and no DentalTID patient holds the id again. The live cursor
    /// is dropped: NanoPix may give the deleted row's `pk` to its next patient, which a read past
    /// the cursor would miss, so the next live pass reconciles fully.
    pub fn delete_in_nanopix(&mut self, external_id: &str) -> Result<()> {
        let id = NanoPixId::parse(external_id)?;
        self.ready_to_judge_deletes()?;
        if self.unannounced(id) || !self.judging_deletes(&[id])?.asked_for_row(id) {
            return Err(Error::DeleteNotRequested(id.to_string()));
        }
        self.cursor = None;
        self.nanopix.delete_patient(id, &self.config.patient_subfolders)
    }

    /// The delete requests announced whose delete still stands (see [`DeleteJudging::stands`]),
    /// oldest NanoPix id first, each with the deleted patients whose requests were not dismissed
    /// (one with none left is not listed). Without any left, NanoPix is not looked at: there is
    /// nothing to judge, also while its folder cannot be reached (an unplugged share). It only
    /// reads: the checks use the sync's indexes, which the announcement of the first request built.
    pub fn delete_requests(&mut self) -> Result<Vec<DeleteRequest>> {
        self.dentaltid.check_still_open_file()?;
        let requests = self.undismissed_delete_requests()?;
        self.standing(requests)
    }

    /// Those of the undismissed `requests` whose delete still stands, in their order, judged
    /// together (see [`Engine::judging_deletes`]). Without any, NanoPix is not looked at (see
    /// [`Engine::delete_requests`]).
    fn standing(&mut self, requests: Vec<(NanoPixId, Vec<i64>)>) -> Result<Vec<DeleteRequest>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        self.ready_to_judge_deletes()?;
        let announced: Vec<(NanoPixId, Vec<i64>)> =
            requests.into_iter().filter(|(id, _)| !self.unannounced(*id)).collect();
        let ids: Vec<NanoPixId> = announced.iter().map(|(id, _)| *id).collect();
        let judging = self.judging_deletes(&ids)?;
        let standing = announced.into_iter().filter(|(id, _)| judging.stands(*id));
        Ok(standing.map(|(id, patient_ids)| DeleteRequest { external_id: id.to_string(), patient_ids }).collect())
    }

    /// Reads what judging the delete requests of NanoPix `ids` takes, once for all of them: a
    /// few short reads of each database per [`crate::values::IDS_PER_READ`] ids, and one pass
    /// over DentalTID's import batches, never a read per request (20,000 requests took 6 s so).
    fn judging_deletes(&self, ids: &[NanoPixId]) -> Result<DeleteJudging> {
        let imported = self.dentaltid.imported_under(ids)?;
        let holders = self.dentaltid.id_holders(ids, &imported)?;
        let (rows, existing) = self.nanopix.rows_with_ids(ids)?;
        let created = rows.into_iter().map(|row| (row.id, row.created)).collect();
        Ok(DeleteJudging { holders, created, existing })
    }

    /// The delete requests DentalTID records, by NanoPix id, each with the deleted patients whose
    /// requests the host did not dismiss; a NanoPix id with none left is left out, so it is
    /// neither read from DentalTID's import batches nor looked up in NanoPix.
    fn undismissed_delete_requests(&self) -> Result<Vec<(NanoPixId, Vec<i64>)>> {
        let dismissed = self.dentaltid.dismissed_deletes()?;
        let mut requests = self.dentaltid.delete_requests()?;
        for (id, patient_ids) in &mut requests {
            let external_id = id.to_string();
            patient_ids.retain(|&patient_id| !dismissed.contains(&(patient_id, external_id.clone())));
        }
        requests.retain(|(_, patient_ids)| !patient_ids.is_empty());
        Ok(requests)
    }

    /// Takes the delete request of NanoPix patient `external_id` off the list
    /// [`Engine::delete_requests`] gives, once the user chose to keep the patient in NanoPix;
    /// returns whether one was listed. Another DentalTID patient later deleted while linked to it
    /// lists it again. Only the request of `external_id` is judged, however many stand.
    pub fn dismiss_delete_request(&mut self, external_id: &str) -> Result<bool> {
        let id = NanoPixId::parse(external_id)?;
        self.dentaltid.check_still_open_file()?;
        let mut requests = self.undismissed_delete_requests()?;
        requests.retain(|(requested, _)| *requested == id);
        let Some(request) = self.standing(requests)?.pop() else { return Ok(false) };
        self.dentaltid.dismiss_delete_requests(id, &request.patient_ids)?;
        Ok(true)
    }

    /// Readies both connections to judge delete requests: a NanoPix.db3 replaced meanwhile (a
    /// backup restored) is the one to judge and delete from.
    fn ready_to_judge_deletes(&mut self) -> Result<()> {
        self.reopen_nanopix_if_replaced()?;
        self.ready_connections()
    }

    /// Whether a request for NanoPix patient `id` was written and not sent yet: it may still be
    /// withdrawn (the patient added again may get it back), and an older request sent for the
    /// same id does not count; the host gets this one once it is sent.
    fn unannounced(&self, id: NanoPixId) -> bool {
        let id = id.to_string();
        self.unannounced_deletes.iter().any(|(_, noted)| *noted == id)
    }

    /// Announces the delete requests written since the last announcement (see
    /// [`Engine::announce_held_deletes`]), unless an export call is under way: it announces them
    /// once it ends well, after it has given NanoPix patients back (see
    /// [`Engine::holding_delete_requests`]).
    pub fn announce_delete_requests(&mut self) {
        if !self.holding_delete_requests {
            self.announce_held_deletes();
        }
    }

    /// Announces the delete requests written since the last announcement whose delete still
    /// stands, of a NanoPix patient NanoPix still holds: a NanoPix patient given back meanwhile to
    /// a patient added again asks for none, nor does one deleted meanwhile (by the host, say,
    /// after the same request was announced before a restart), nor one noted with a text that is
    /// no NanoPix id. One whose standing cannot be read is announced: `delete_in_nanopix` checks
    /// it again. The import batches are read once
    /// for all of them (see [`crate::dentaltid::DentalTid::imported_under`]). A NanoPix patient
    /// several of them name (patients who held one id, deleted before the same pass) is asked for
    /// once, for the last of them. Then DentalTID notes them all announced; if it cannot, they are
    /// announced again after the next `open`, which is better than never, unless the host
    /// dismissed them meanwhile ([`Engine::dismiss_delete_request`]).
    fn announce_held_deletes(&mut self) {
        let held = std::mem::take(&mut self.unannounced_deletes);
        if held.is_empty() {
            return;
        }
        // The requests are checked by their NanoPix ids in `external_id`: without the sync's
        // indexes, each read of them scans every patient. Failing to build them (DentalTID
        // locked) only makes the checks slower.
        let _ = self.ensure_indexes();
        let announced: Vec<i64> = held.iter().map(|(patient_id, _)| *patient_id).collect();
        let ids: Vec<NanoPixId> =
            held.iter().filter_map(|(_, external_id)| NanoPixId::parse(external_id).ok()).collect();
        let judging = self.judging_deletes(&ids);
        // One the host dismissed was sent before: noting it sent failed then.
        let dismissed = self.dentaltid.dismissed_deletes().unwrap_or_default();
        let undismissed = held.into_iter().filter(|request| !dismissed.contains(request)).collect();
        for (patient_id, external_id) in last_for_each_id(undismissed) {
            // A noted id that is no NanoPix id (edited by hand) names no NanoPix patient.
            let stands = match (NanoPixId::parse(&external_id), &judging) {
                (Ok(id), Ok(judging)) => judging.stands(id),
                (Ok(_), Err(_)) => true,
                (Err(_), _) => false,
            };
            if stands {
                self.bus.emit(EventKind::DeleteRequested { patient_id, external_id });
            }
        }
        let _ = self.dentaltid.delete_requests_announced(&announced);
    }

    /// Runs `work`, an export call, holding back the delete requests its catch-up with NanoPix
    /// finds until it has given NanoPix patients back; then announces them, if it succeeded and
    /// was not cut short.
    pub(super) fn holding_delete_requests<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let held = std::mem::replace(&mut self.holding_delete_requests, true);
        let result = catch_unwind(AssertUnwindSafe(|| work(self)));
        self.holding_delete_requests = held;
        if matches!(result, Ok(Ok(_))) && !self.cancelled() {
            self.announce_delete_requests();
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }
}

/// What judging the delete requests of some NanoPix ids takes, read once for all of them by
/// [`Engine::judging_deletes`].
struct DeleteJudging {
    /// What DentalTID holds of the ids.
    holders: IdHolders,
    /// The creation time of NanoPix's readable row under each id that has one, as
    /// [`crate::nanopix::NanoPix::patient`] reads it.
    created: HashMap<NanoPixId, Option<NaiveDateTime>>,
    /// The ids NanoPix has a row under, readable or not.
    existing: std::collections::HashSet<NanoPixId>,
}

impl DeleteJudging {
    /// Whether a delete of NanoPix patient `id` is still asked for, and NanoPix still holds it.
    fn stands(&self, id: NanoPixId) -> bool {
        #[cfg(test)]
        tests::JUDGED.with(|judged| judged.set(judged.get() + 1));
        self.asked_for_row(id) && self.existing.contains(&id)
    }

    /// Whether a delete of NanoPix patient `id` is asked for (see [`IdHolders::delete_requested`])
    /// and NanoPix's row under it is not another person saved there since.
    fn asked_for_row(&self, id: NanoPixId) -> bool {
        let created = self.created.get(&id).copied().flatten();
        self.holders.delete_requested(id, created) && !is_another_person(created, &self.holders.linked_rows_of(id))
    }
}

/// The last of the delete requests `held` for each NanoPix id, in their order: the host is asked
/// once to delete a NanoPix patient.
fn last_for_each_id(mut held: Vec<(i64, String)>) -> Vec<(i64, String)> {
    let mut asked = HashSet::default();
    held.reverse();
    held.retain(|(_, external_id)| asked.insert(external_id.clone()));
    held.reverse();
    held
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rusqlite::Connection;
    use tempfile::TempDir;

    use crate::engine::Engine;
    use crate::engine::tests::{clinic_engine, statements_run};

    thread_local! {
        /// How many delete requests [`super::DeleteJudging::stands`] judged on this thread.
        pub(super) static JUDGED: Cell<usize> = const { Cell::new(0) };
    }

    /// A clinic where `count` NanoPix patients, imported in one batch, were deleted in DentalTID
    /// and kept in NanoPix: `count` delete requests stand.
    fn clinic_keeping_deleted_patients(count: usize) -> (TempDir, Engine) {
        let (dir, db, mut engine, _signals) = clinic_engine();
        let root = engine.config.nanopix_root.clone();
        let nanopix = Connection::open(root.join("database/NanoPix.db3")).unwrap();
        for n in 0..count {
            let id = format!("20250122_09{:02}{:02}", n / 60, n % 60);
            nanopix
                .execute(
                    "INSERT INTO Patient(id, last_name, first_name, birthdate, created_datetime, updated_datetime)
                     VALUES (?1, ?2, 'Yacine', '2001-05-19', '2025-01-22 09:00:30', '2025-01-22 09:00:30')",
                    (&id, format!("Mansouri{n}")),
                )
                .unwrap();
            std::fs::create_dir(root.join(&id)).unwrap();
        }
        engine.reconcile().unwrap();
        let dentaltid = Connection::open(&db).unwrap();
        dentaltid.execute_batch("DELETE FROM patients WHERE familyName LIKE 'Mansouri%'").unwrap();
        engine.reconcile().unwrap();
        (dir, engine)
    }

    /// The number of statements `delete_requests` ran, and the requests it listed.
    fn statements_listing(engine: &mut Engine) -> (usize, usize) {
        let (statements, listed) = statements_run(engine, |engine| engine.delete_requests().unwrap().len());
        (statements.len(), listed)
    }

    /// Years of patients deleted in DentalTID whose NanoPix patients the clinic keeps leave
    /// thousands of delete requests standing, and the host lists them at each start (and the
    /// runner's `status` with them). The list reads what it needs for all of them at once:
    /// reading it for each request took ten statements each (6 s beside 20,000 requests, with
    /// every other call waiting behind it).
    #[test]
    fn listing_delete_requests_runs_as_many_statements_for_fifty_as_for_five() {
        let (_few_dir, mut few) = clinic_keeping_deleted_patients(5);
        let (_many_dir, mut many) = clinic_keeping_deleted_patients(50);
        let (for_few, listed_few) = statements_listing(&mut few);
        let (for_many, listed_many) = statements_listing(&mut many);
        assert_eq!((listed_few, listed_many), (5, 50));
        assert!(for_few > 0, "statements are counted");
        assert_eq!(for_many, for_few, "statements run to list 50 delete requests, and 5");
    }

    /// Years of patients deleted in DentalTID whose NanoPix patients the clinic keeps leave
    /// thousands of delete requests standing, and the user keeps one more in NanoPix. Dismissing
    /// it judges that request alone: judging every request standing took seconds per click (6 s
    /// beside 20,000 requests), and dismissing them one by one took hours.
    #[test]
    fn dismissing_a_delete_request_judges_only_that_request() {
        let (_dir, mut engine) = clinic_keeping_deleted_patients(30);
        assert_eq!(engine.delete_requests().unwrap().len(), 30);
        JUDGED.with(|judged| judged.set(0));
        assert!(engine.dismiss_delete_request("20250122_090007").unwrap());
        assert_eq!(JUDGED.with(Cell::get), 1, "requests judged to dismiss one");
        let listed = engine.delete_requests().unwrap();
        assert_eq!(listed.len(), 29);
        assert!(listed.iter().all(|request| request.external_id != "20250122_090007"));
    }
}
