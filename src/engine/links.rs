//! Links: the links the matching decided written to DentalTID (those whose patient changed
//! meanwhile decided again), every link checked against NanoPix's rows and folders, and the
//! changes of state that follow: a NanoPix patient removed or restored, or a delete asked for.

use foldhash::{HashMap, HashSet};

use super::{Engine, LINKS_PER_TRANSACTION, Snapshot, Turns, crash_point};
use crate::dentaltid::{Link, LinkOutcome, LinkState, is_another_person};
use crate::events::{EventKind, ReconcileReport};
use crate::matching::{MatchedLink, Matcher};
use crate::nanopix::FolderScan;
use crate::{NanoPixId, Result};

impl Engine {
    /// Writes the links `matcher` holds, once every NanoPix patient was offered to it. A pass
    /// stopped early writes none: a NanoPix patient not read yet could have contested one.
    ///
    /// DentalTID may have renamed, re-dated or deleted a matched patient since it was read: the
    /// NanoPix patient of such a stale link is decided again, once, against DentalTID as it is
    /// now. One whose new match went stale too is reported and left to the next reconcile.
    /// `read_at` is the data version at which `matcher` read every DentalTID patient, if it did.
    pub(super) fn link_held(
        &mut self,
        matcher: Matcher,
        read_at: Option<i64>,
        report: &mut ReconcileReport,
    ) -> Result<()> {
        if self.cancelled() {
            return Ok(());
        }
        let (_, stale) = self.link_all(matcher.finish(), (true, read_at), report)?;
        for link in self.decide_again(stale.iter().map(|link| link.external_id).collect(), report)? {
            self.report_stale_link(&link, report);
        }
        Ok(())
    }

    /// Decides the NanoPix patients `ids` again, against DentalTID as it is now; returns the
    /// links of that decision whose patient DentalTID changed meanwhile too. An id some patient
    /// shows now is left alone: it has its holder, and importing it would make a second.
    pub(super) fn decide_again(
        &mut self,
        ids: Vec<NanoPixId>,
        report: &mut ReconcileReport,
    ) -> Result<Vec<MatchedLink>> {
        let mut patients = Vec::with_capacity(ids.len());
        for id in ids {
            if !self.dentaltid.shows_external_id(id)? {
                patients.extend(self.nanopix.patient(id)?);
            }
        }
        if patients.is_empty() {
            return Ok(Vec::new());
        }
        let mut matcher = self.matcher(&patients)?;
        // A second decision does not look for patients saved meanwhile again: it ends here.
        self.decide_and_import(&mut matcher, patients, None, report)?;
        Ok(self.link_all(matcher.finish(), (true, None), report)?.1)
    }

    /// Reports a link left unwritten because DentalTID changed its patient while it was decided.
    pub(super) fn report_stale_link(&self, link: &MatchedLink, report: &mut ReconcileReport) {
        report.errors += 1;
        self.bus.emit(EventKind::SyncError {
            code: "patient_changed".into(),
            message: format!(
                "DentalTID patient {} or NanoPix patient {} changed while they were being linked: \
                 left to the next reconcile",
                link.patient_id, link.external_id
            ),
            external_id: Some(link.external_id.to_string()),
            patient_id: Some(link.patient_id),
            path: None,
        });
    }

    /// Links NanoPix patients to the DentalTID patients they match, [`LINKS_PER_TRANSACTION`]
    /// at a time in patient order (so each transaction keeps to one stretch of the table), and
    /// reports each transaction's links once it is committed. Returns the links written, by
    /// patient id, and the stale ones: those whose patient DentalTID (or NanoPix) changed or
    /// deleted since it was matched, left for the caller. `new_to_sync` says the NanoPix patients
    /// are new to the sync, and `read_at` gives the data version at which the matching read every
    /// DentalTID patient, if it did (see [`crate::dentaltid::DentalTid::link_all`]). A link
    /// DentalTID refuses is reported, and its patient is not exported until a link is written.
    pub(super) fn link_all(
        &mut self,
        links: Vec<MatchedLink>,
        (new_to_sync, read_at): (bool, Option<i64>),
        report: &mut ReconcileReport,
    ) -> Result<(HashMap<i64, NanoPixId>, Vec<MatchedLink>)> {
        let (mut linked, mut stale) = (HashMap::default(), Vec::new());
        let links = if new_to_sync { self.without_pending_exports(links)? } else { links };
        let mut links = self.renamed_in_nanopix_apart(links, &mut stale)?;
        links.sort_by_key(|link| link.patient_id);
        for chunk in links.chunks(LINKS_PER_TRANSACTION) {
            let outcomes = self.dentaltid.link_all(chunk, self.config.clock.now(), (new_to_sync, read_at))?;
            crash_point("links_committed");
            for (link, outcome) in chunk.iter().zip(outcomes) {
                let (patient_id, external_id) = (link.patient_id, link.external_id.to_string());
                match outcome {
                    LinkOutcome::Linked => {
                        self.refused_links.remove(&patient_id);
                    }
                    LinkOutcome::Stale => {
                        stale.push(link.clone());
                        continue;
                    }
                    LinkOutcome::Refused(error) => {
                        self.refused_links.insert(patient_id, link.external_id);
                        self.report_error(&error, Some(external_id), Some(patient_id), report);
                        continue;
                    }
                }
                report.linked += 1;
                linked.insert(patient_id, link.external_id);
                let (first_name, last_name) = (link.first_name.clone(), link.last_name.clone());
                self.bus.emit(EventKind::PatientLinked { patient_id, external_id, first_name, last_name });
            }
        }
        Ok((linked, stale))
    }

    /// `links` of NanoPix patients new to the sync less those to a DentalTID patient whose export
    /// waits in the journal: the NanoPix patient is the same person, saved in NanoPix while her
    /// export could not end. Linking it would leave the export to write her again; importing it,
    /// as the matching does with a patient already linked, would give DentalTID a second one. It
    /// stays undecided (see [`Engine::left_for_exports`]): the repair of her export gives way to
    /// it, and the pass that follows links the two (see [`Engine::resume_export`]). An export
    /// that wrote her row never gives way: the matching counts her as linked (see
    /// [`Engine::exports_on_their_rows`]). Not for a NanoPix patient a deleted patient left
    /// behind: no repair gives way to one the sync knows, so it is linked to her at once, and the
    /// repair of her export, which wrote no row, then drops it. The journal is read only when
    /// there are links.
    fn without_pending_exports(&mut self, links: Vec<MatchedLink>) -> Result<Vec<MatchedLink>> {
        if links.is_empty() {
            return Ok(links);
        }
        let pending: HashSet<i64> = self.dentaltid.pending_exports()?.iter().map(|p| p.patient_id).collect();
        if pending.is_empty() {
            return Ok(links);
        }
        let (left, links): (Vec<MatchedLink>, _) =
            links.into_iter().partition(|link| pending.contains(&link.patient_id));
        self.left_for_exports |= !left.is_empty();
        Ok(links)
    }

    /// `links` less those whose NanoPix patient NanoPix renamed, re-dated, deleted or replaced
    /// since the pass read it, which go to `stale`: each side's patient must still be the one it
    /// was matched as. Their rows are read again only when another program wrote to NanoPix
    /// since the pass began reading it.
    fn renamed_in_nanopix_apart(
        &self,
        links: Vec<MatchedLink>,
        stale: &mut Vec<MatchedLink>,
    ) -> Result<Vec<MatchedLink>> {
        if links.is_empty() || self.nanopix_read == Some(self.nanopix.data_version()?) {
            return Ok(links);
        }
        let mut kept = Vec::with_capacity(links.len());
        for link in links {
            let row = self.nanopix.patient(link.external_id)?;
            let still = row.is_some_and(|row| {
                row.created == link.nanopix_created && link.key.is_of(&row.first_name, &row.last_name, row.birth_date)
            });
            if still { kept.push(link) } else { stale.push(link) }
        }
        Ok(kept)
    }

    /// Marks links whose NanoPix patient vanished (or came back), and links whose DentalTID
    /// patient was deleted; a folder NanoPix has not made yet (see [`Engine::awaited_folders`])
    /// is not missing, and a row another person holds under the id is missing (see
    /// [`crate::dentaltid::LinkedRows`]). Records the row of a link made without one. `linked_now` are the NanoPix
    /// patients this reconcile linked or imported. Writes only on a change of state,
    /// [`LINKS_PER_TRANSACTION`] changes per transaction, and reports them once they are written.
    /// Keeps the links left missing only their folder for live passes (see
    /// [`Engine::restore_put_back_folders`]).
    pub(super) fn check_links(
        &mut self,
        snapshot: &Snapshot,
        folders: &FolderScan,
        linked_now: &[NanoPixId],
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let rows: HashSet<NanoPixId> = snapshot.nanopix.iter().copied().collect();
        let patients: HashSet<i64> = snapshot.dentaltid.iter().map(|p| p.id).collect();
        let awaited = self.awaited_folders(&folders.patient_folders, &rows, linked_now)?;
        let (mut changes, mut made_with) = (Vec::new(), Vec::new());
        self.missing_folders.clear();
        for link in &snapshot.links.readable {
            let Ok(id) = NanoPixId::parse(&link.external_id) else { continue };
            // Another person's row under the id is not the link's.
            let (recorded, created) =
                (snapshot.linked_rows.created(link.patient_id, id), snapshot.nanopix_created.get(&id));
            let row = rows.contains(&id) && !is_another_person(created.copied(), &[recorded]);
            if row && recorded.is_none() && created.is_some() {
                made_with.push((link.patient_id, id, created.copied()));
            }
            // A folder is awaited only beside its row: with the row gone, no folder is coming.
            let folder = folders.patient_folders.contains(&id) || (row && awaited.contains(&id));
            let nanopix = NanoPixSide { row, folder };
            // A patient deleted while another still holds its NanoPix id asks for a delete that
            // is not announced (see [`Engine::announce_delete_requests`]): the one holding it asks
            // once deleted too, so the host is asked once, for that one.
            let change = link_change(link, patients.contains(&link.patient_id), nanopix);
            let state = change.as_ref().map_or(link.state, |(_, state, _)| *state);
            if state == LinkState::Missing && nanopix.row && !nanopix.folder {
                self.missing_folders.push(Link { state, ..link.clone() });
            }
            changes.extend(change);
        }
        self.dentaltid.record_linked_rows(&made_with)?;
        self.change_links(&changes, report)
    }

    /// The NanoPix ids whose folder the sync waits for: NanoPix may save a new patient's row
    /// before it makes the folder, so a linked patient whose folder the sync has never seen has
    /// not lost it. These are the ids waited for before and those of `linked_now` without a
    /// folder, less those in `folders` now and those without a row in `rows` (with the row gone,
    /// no folder is coming); the changes are recorded.
    fn awaited_folders(
        &mut self,
        folders: &HashSet<NanoPixId>,
        rows: &HashSet<NanoPixId>,
        linked_now: &[NanoPixId],
    ) -> Result<HashSet<NanoPixId>> {
        let mut awaited = self.dentaltid.awaited_folders()?;
        let settled = |id: &NanoPixId| folders.contains(id) || !rows.contains(id);
        let seen: Vec<NanoPixId> = awaited.iter().copied().filter(|id| settled(id)).collect();
        let new: Vec<NanoPixId> =
            linked_now.iter().copied().filter(|id| !settled(id) && !awaited.contains(id)).collect();
        self.dentaltid.update_awaited_folders(&new, &seen)?;
        awaited.retain(|id| !settled(id));
        awaited.extend(new);
        Ok(awaited)
    }

    /// Records that NanoPix has not made the folders of the patients a live pass `linked` (or
    /// imported) yet, when it has not, and that it has made those awaited before: from then on,
    /// their absence is a removal. See [`Engine::awaited_folders`].
    pub(super) fn await_folders(&mut self, linked: &[NanoPixId]) -> Result<()> {
        let awaited: Vec<NanoPixId> = linked.iter().copied().filter(|&id| !self.nanopix.has_folder(id)).collect();
        let made: Vec<NanoPixId> =
            self.dentaltid.awaited_folders()?.into_iter().filter(|&id| self.nanopix.has_folder(id)).collect();
        self.dentaltid.update_awaited_folders(&awaited, &made)
    }

    /// The change that restores `link`, marked missing, now that NanoPix holds its row and folder
    /// again; `None` when its DentalTID patient was deleted meanwhile (a full reconcile's to find)
    /// or the row is another person's.
    pub(super) fn restoration(&self, link: &Link) -> Result<Option<(i64, LinkState, EventKind)>> {
        // Another person's row under the id gives no link back.
        let Ok(id) = NanoPixId::parse(&link.external_id) else { return Ok(None) };
        let created = self.nanopix.patient(id)?.and_then(|row| row.created);
        if self.dentaltid.linked_to_another_row(link.patient_id, id, created)? {
            return Ok(None);
        }
        let patient_exists = self.dentaltid.patient(link.patient_id)?.is_some();
        let change = link_change(link, patient_exists, NanoPixSide { row: true, folder: true });
        Ok(change.filter(|(_, state, _)| *state == LinkState::Linked))
    }

    /// Writes link state `changes`, [`LINKS_PER_TRANSACTION`] per transaction, with turns for
    /// DentalTID between transactions (see [`Turns`]), and reports each once it is written.
    pub(super) fn change_links(
        &mut self,
        changes: &[(i64, LinkState, EventKind)],
        report: &mut ReconcileReport,
    ) -> Result<()> {
        let mut turns = Turns::begin();
        for chunk in changes.chunks(LINKS_PER_TRANSACTION) {
            turns.between_units();
            let states: Vec<(i64, LinkState)> =
                chunk.iter().map(|(patient_id, state, _)| (*patient_id, *state)).collect();
            self.dentaltid.set_link_states(&states)?;
            for (_, _, event) in chunk {
                match event {
                    EventKind::DeleteRequested { patient_id, external_id } => {
                        self.unannounced_deletes.push((*patient_id, external_id.clone()));
                    }
                    EventKind::ExternalPatientRemoved { .. } => {
                        report.removed += 1;
                        self.bus.emit(event.clone());
                    }
                    _ => self.bus.emit(event.clone()),
                }
            }
        }
        Ok(())
    }
}

/// What NanoPix still holds of a linked patient.
#[derive(Debug, Clone, Copy)]
struct NanoPixSide {
    /// Its `Patient` row.
    row: bool,
    /// Its folder.
    folder: bool,
}

impl NanoPixSide {
    /// What is gone, as the `missing` field of `external_patient_removed` says it; `None` when
    /// nothing is.
    fn missing(self) -> Option<&'static str> {
        match (self.row, self.folder) {
            (true, true) => None,
            (false, true) => Some("row"),
            (true, false) => Some("folder"),
            (false, false) => Some("row_and_folder"),
        }
    }
}

/// The new state of `link` and the event that says so, when its sides changed. A DentalTID
/// patient deleted while NanoPix still holds its row asks for a delete, whatever the folder
/// says; with the row gone too there is nothing left to delete.
fn link_change(link: &Link, patient_exists: bool, nanopix: NanoPixSide) -> Option<(i64, LinkState, EventKind)> {
    let (patient_id, external_id) = (link.patient_id, link.external_id.clone());
    let (state, event) = match (patient_exists, nanopix.missing(), link.state) {
        (false, _, LinkState::Linked | LinkState::Missing) if nanopix.row => {
            (LinkState::DeleteRequested, EventKind::DeleteRequested { patient_id, external_id })
        }
        (true, Some(missing), LinkState::Linked) => {
            let missing = missing.into();
            (LinkState::Missing, EventKind::ExternalPatientRemoved { patient_id, external_id, missing })
        }
        (true, None, LinkState::Missing) => {
            (LinkState::Linked, EventKind::ExternalPatientRestored { patient_id, external_id })
        }
        _ => return None,
    };
    Some((patient_id, state, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dentaltid::LinkOrigin;

    fn link(state: LinkState) -> Link {
        let (patient_id, external_id) = (7, "20250122_100000".to_owned());
        let synced_at = chrono::NaiveDate::from_ymd_opt(2025, 1, 22).and_then(|d| d.and_hms_opt(10, 0, 1));
        Link { patient_id, external_id, origin: Some(LinkOrigin::Exported), state, synced_at }
    }

    /// The state `link_change` moves a link in `state` to, if any.
    fn next_state(patient_exists: bool, row: bool, folder: bool, state: LinkState) -> Option<LinkState> {
        link_change(&link(state), patient_exists, NanoPixSide { row, folder }).map(|(_, state, _)| state)
    }

    #[test]
    fn a_patient_deleted_in_dentaltid_asks_for_a_delete_while_nanopix_holds_its_row() {
        use LinkState::{DeleteRequested, Linked, Missing};
        for state in [Linked, Missing] {
            assert_eq!(next_state(false, true, true, state), Some(DeleteRequested), "{state:?}, whole");
            assert_eq!(next_state(false, true, false, state), Some(DeleteRequested), "{state:?}, no folder");
            assert_eq!(next_state(false, false, true, state), None, "{state:?}, no row");
            assert_eq!(next_state(false, false, false, state), None, "{state:?}, nothing left");
        }
        assert_eq!(next_state(false, true, false, DeleteRequested), None, "asked once");
    }

    #[test]
    fn a_nanopix_patient_that_vanishes_or_comes_back_changes_its_link() {
        use LinkState::{Linked, Missing};
        assert_eq!(next_state(true, true, false, Linked), Some(Missing));
        assert_eq!(next_state(true, false, true, Linked), Some(Missing));
        assert_eq!(next_state(true, true, true, Missing), Some(Linked));
        assert_eq!(next_state(true, true, true, Linked), None);
        assert_eq!(next_state(true, false, false, Missing), None);
    }
}
