//! The odd NanoPix rows, odd entries under `PatientData` and DentalTID patients with a birth date
//! the sync cannot read already reported, so that automatic work reports each one once while it
//! stays: a stray `desktop.ini` beside the patient folders is not reported again by every hourly
//! reconcile. A call of the host ("Sync Now") reports
//! every one it finds.

use foldhash::HashSet;

/// The odd findings reported, by the message that named each (with the id of an odd row).
#[derive(Debug, Default)]
pub(super) struct OddFindings {
    /// Found by the full reconcile under way, or by live passes since the last full reconcile.
    found: HashSet<String>,
    /// Found before the full reconcile under way began: remembered until it ends.
    before: HashSet<String>,
}

impl OddFindings {
    /// A full reconcile begins: what was found so far is kept only until it ends.
    pub fn full_reconcile_began(&mut self) {
        self.before.extend(self.found.drain());
    }

    /// A full reconcile ran to its end: what it did not find again is forgotten, so it is
    /// reported again should it come back.
    pub fn full_reconcile_ended(&mut self) {
        self.before.clear();
    }

    /// Notes the finding `message` names; whether to report it: always for work the host asked
    /// for, and for automatic work only when it was not found before.
    pub fn note(&mut self, message: &str, automatic: bool) -> bool {
        let new = self.found.insert(message.to_owned()) && !self.before.contains(message);
        new || !automatic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_work_reports_a_finding_once_while_it_stays_and_again_once_it_came_back() {
        let mut odd = OddFindings::default();
        odd.full_reconcile_began();
        assert!(odd.note("desktop.ini", true), "first seen");
        odd.full_reconcile_ended();
        odd.full_reconcile_began();
        assert!(!odd.note("desktop.ini", true), "still there an hour later");
        assert!(odd.note("Thumbs.db", true), "new since");
        odd.full_reconcile_ended();
        odd.full_reconcile_began();
        odd.full_reconcile_ended();
        odd.full_reconcile_began();
        assert!(odd.note("desktop.ini", true), "gone for a reconcile, then back");
    }

    #[test]
    fn work_the_host_asked_for_reports_every_finding() {
        let mut odd = OddFindings::default();
        odd.full_reconcile_began();
        assert!(odd.note("desktop.ini", true));
        odd.full_reconcile_ended();
        odd.full_reconcile_began();
        assert!(odd.note("desktop.ini", false));
    }

    #[test]
    fn a_full_reconcile_cut_short_forgets_nothing() {
        let mut odd = OddFindings::default();
        odd.full_reconcile_began();
        assert!(odd.note("desktop.ini", true));
        odd.full_reconcile_ended();
        odd.full_reconcile_began();
        odd.full_reconcile_began();
        assert!(!odd.note("desktop.ini", true), "the reconcile before did not end");
    }
}
