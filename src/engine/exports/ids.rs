//! The ids exports get: a free NanoPix id (named after a second) looked for from the patient's
//! creation in DentalTID or from the current second, then in the day before, clear of the seconds
//! NanoPix's own new patients take.

use chrono::NaiveDateTime;
use foldhash::HashSet;

use super::{PastRun, new_nanopix_row};
use crate::engine::Engine;
use crate::patient::{NewNanoPixPatient, Patient};
use crate::{Error, NanoPixId, Result};

/// How far back from now ids stay clear of a bulk export: NanoPix names a new patient after the
/// second its form was opened, and a form may stay open a while before it is saved. An hour,
/// and one more for the hour a change to summer time skips on the local clock.
const RECENT_IDS: chrono::Duration = chrono::Duration::hours(2);

/// The earliest creation time a bulk export takes an id from: an older `createdAt` is not a
/// real one (a default or a bad import), and the patient counts as undated.
const EARLIEST_CREATION: NaiveDateTime = match chrono::NaiveDate::from_ymd_opt(2000, 1, 1) {
    Some(date) => date.and_time(chrono::NaiveTime::MIN),
    None => NaiveDateTime::MIN,
};

/// How far before the [`RECENT_IDS`] an export looks for an id when the patient has no real
/// `createdAt`, or when no second near now is free: a day of seconds, clear of NanoPix's own new
/// patients.
pub(super) const PAST_IDS: chrono::Duration = chrono::Duration::days(1);

/// The seconds an export takes its id in when it takes the current time: the current second and
/// the next two. Later ones are left to NanoPix's own new patients (named after the second their
/// form is opened), so a run of exports goes on with past ids instead.
const NOW_IDS: chrono::Duration = chrono::Duration::seconds(3);

/// Where an export looks for a free NanoPix id first. When it finds none there, it takes one
/// from the current second (within [`NOW_IDS`]), then from the [`PAST_IDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdsFrom {
    /// The current second: a patient exported now gets the id of its time.
    Now,
    /// The second the patient was created in DentalTID (see [`past_ids_from`]) when that is
    /// over [`RECENT_IDS`] ago, then the next ones up to then: many patients exported at once
    /// (`export_existing`, or Live Sync catching up on patients added while the library was not
    /// running) keep the ids of their own time, and leave NanoPix the seconds from now on.
    Creation,
}

impl Engine {
    /// The row an export of `patient` would write now, at the first free id looked for `from`
    /// where it says, then in the seconds [`NOW_IDS`] names, then in the [`PAST_IDS`]. The sync's
    /// indexes are built first if missing: every id tried is looked up among DentalTID's patients.
    ///
    /// # Failure
    /// [`Error::NoFreeId`] when none of these seconds is free; see [`Engine::export_time`].
    pub(super) fn planned_row(&mut self, patient: &Patient, from: IdsFrom) -> Result<NewNanoPixPatient> {
        let now = self.export_time()?;
        self.planned_row_besides(patient, from, &HashSet::default(), now)
    }

    /// [`Engine::planned_row`] at `now` (see [`Engine::export_time`]), besides the ids `reserved`
    /// for the exports journaled with it.
    pub(super) fn planned_row_besides(
        &mut self,
        patient: &Patient,
        from: IdsFrom,
        reserved: &HashSet<NanoPixId>,
        now: NaiveDateTime,
    ) -> Result<NewNanoPixPatient> {
        self.ensure_indexes()?;
        self.nanopix.refresh_record_ids()?;
        let mut in_flight = self.in_flight_ids()?;
        in_flight.extend(reserved);
        let mut id = match from {
            IdsFrom::Creation => self.free_past_id(PastRun::Creation, past_ids_from(patient, now), now, &in_flight)?,
            IdsFrom::Now => None,
        };
        if id.is_none() {
            id = self.free_now_id(now, &in_flight)?;
        }
        if id.is_none() {
            id = self.free_past_id(PastRun::DayBefore, now - RECENT_IDS - PAST_IDS, now, &in_flight)?;
        }
        let id = id.ok_or_else(|| Error::NoFreeId(NanoPixId::from_datetime(now).to_string()))?;
        Ok(new_nanopix_row(patient, id, now))
    }

    /// The first free id from `from` up to [`RECENT_IDS`] before `now`, looked for from where
    /// the earlier searches of `run` left off when `from` lies between where the run started and
    /// there (`export_existing` takes patients in the order of their creation, and the day
    /// before starts where it did): every second in between is taken, and probing them again
    /// would make a run of exports that fills those hours cost the square of its length.
    /// `None` when `from` is within those hours or no id is free before then.
    fn free_past_id(
        &mut self,
        run: PastRun,
        from: NaiveDateTime,
        now: NaiveDateTime,
        in_flight: &HashSet<NanoPixId>,
    ) -> Result<Option<NanoPixId>> {
        let end = now - RECENT_IDS;
        let first = NanoPixId::from_datetime(from).datetime();
        // Only the seconds from where the run started are known taken: a search that starts
        // before it (the clock put back, or a patient out of order) looks from `from` again.
        let resumed = self.past_probed[run as usize].filter(|&(started, probed)| started <= first && probed > first);
        let (started, start) = resumed.unwrap_or((first, first));
        let free = NanoPixId::first_free_before(start, end, |id| self.id_taken(id, in_flight))?;
        // Every second from `start` up to the one given, or up to `end`, is taken now.
        let probed = match free {
            Some(id) => Some(id.next_second().datetime()),
            None => Some(NanoPixId::from_datetime(end).datetime()).filter(|end| *end > start),
        };
        if let Some(probed) = probed {
            self.past_probed[run as usize] = Some((started, probed));
        }
        Ok(free)
    }

    /// The time an export writes into NanoPix's row: the clock's, which NanoPix's dates must be
    /// able to name.
    ///
    /// # Failure
    /// [`Error::InvalidConfig`] when the clock's year has not four digits (a host's clock set
    /// at either end of time).
    pub(super) fn export_time(&self) -> Result<NaiveDateTime> {
        let now = self.config.clock.now();
        match chrono::Datelike::year(&now) {
            1..=9999 => Ok(now),
            _ => Err(Error::InvalidConfig(format!("the clock says {now}: NanoPix's dates need a four-digit year"))),
        }
    }

    /// The first free id among the seconds [`NOW_IDS`] names.
    fn free_now_id(&self, now: NaiveDateTime, in_flight: &HashSet<NanoPixId>) -> Result<Option<NanoPixId>> {
        NanoPixId::first_free_before(now, now + NOW_IDS, |id| self.id_taken(id, in_flight))
    }

    /// Whether `id` is in use: by an export in `in_flight`, on disk, in NanoPix's database (a
    /// `Patient` row, or records as last read: `Study` or `Report` rows, or rows of another table
    /// whose foreign key names `Patient.id`), or in DentalTID: a patient or a
    /// recorded link may still hold an id whose row and folder NanoPix lost.
    pub(super) fn id_taken(&self, id: NanoPixId, in_flight: &HashSet<NanoPixId>) -> Result<bool> {
        #[cfg(test)]
        tests::ID_PROBES.with(|probes| probes.set(probes.get() + 1));
        Ok(in_flight.contains(&id)
            || self.nanopix.folder_path(id).symlink_metadata().is_ok()
            || self.nanopix.records_name(id)
            || self.nanopix.id_exists(id)?
            || self.dentaltid.shows_external_id(id)?
            || self.has_recorded_link(id)?)
    }

    /// Whether the sync recorded a link to `id` (see
    /// [`crate::dentaltid::DentalTid::recorded_links`]), from the ids in import batches read for
    /// the run of exports under way, if one is.
    fn has_recorded_link(&self, id: NanoPixId) -> Result<bool> {
        match self.export_run.as_ref().and_then(|run| run.ids_in_batches.as_ref()) {
            Some(in_batches) => Ok(in_batches.contains(&id) || self.dentaltid.has_link_row(id)?),
            None => self.dentaltid.has_recorded_link(id),
        }
    }

    /// The NanoPix ids of exports in flight (in the journal).
    pub(in crate::engine) fn in_flight_ids(&self) -> Result<HashSet<NanoPixId>> {
        Ok(self.dentaltid.pending_exports()?.into_iter().map(|p| p.external_id).collect())
    }
}

/// Where a bulk export at `now` looks for a past id for `patient`: the second it was created in
/// DentalTID, or [`PAST_IDS`] before the [`RECENT_IDS`] when its `createdAt` cannot be read
/// or is before [`EARLIEST_CREATION`].
pub(super) fn past_ids_from(patient: &Patient, now: NaiveDateTime) -> NaiveDateTime {
    crate::patient::parse_dart_timestamp(&patient.created_at)
        .filter(|created| *created >= EARLIEST_CREATION)
        .unwrap_or_else(|| now.checked_sub_signed(RECENT_IDS + PAST_IDS).unwrap_or(NaiveDateTime::MIN))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;

    use chrono::NaiveDate;
    use rusqlite::Connection;

    use super::*;
    use crate::dentaltid::testing::{SCHEMA_V29, build_database};
    use crate::engine::Signals;
    use crate::events::EventBus;
    use crate::{Config, ManualClock};

    thread_local! {
        /// How many ids [`Engine::id_taken`] looked up on this thread.
        pub(super) static ID_PROBES: Cell<usize> = const { Cell::new(0) };
    }

    /// A data import put 300 patients into DentalTID in one second, two hours and 100 seconds
    /// before `now`: an engine at `now` on a copy of the NanoPix fixture, and that copy's root.
    fn engine_after_an_import(now: NaiveDateTime) -> (tempfile::TempDir, std::path::PathBuf, Engine) {
        let (dir, root) = crate::nanopix::tests::fixture_copy();
        let db = build_database(&dir, SCHEMA_V29, false);
        let conn = Connection::open(&db).unwrap();
        let created = (now - RECENT_IDS - chrono::Duration::seconds(100)).format("%Y-%m-%dT%H:%M:%S.000").to_string();
        for n in 0..300 {
            conn.execute(
                "INSERT INTO patients(name, familyName, age, dateOfBirth, healthState, diagnosis, treatment,
                                      payment, createdAt, isEmergency, severity, healthAlerts, phoneNumber,
                                      isBlacklisted)
                 VALUES (?1, 'Benali', 40, '1985-03-12T00:00:00.000', '', '', '', 0.0, ?2, 0,
                         'EmergencySeverity.low', '', '', 0)",
                (format!("Amina{n}"), &created),
            )
            .unwrap();
        }
        drop(conn);
        let mut config = Config::new(&root, &db);
        config.clock = Arc::new(ManualClock::new(now));
        let (bus, _events) = EventBus::new(config.clock.clone());
        let engine = Engine::open(config, Arc::new(bus), Arc::new(Signals::default())).unwrap();
        (dir, root, engine)
    }

    /// How many ids `export_existing` on `engine` looked up, having exported its 300 patients.
    fn probes_of_export_existing(engine: &mut Engine) -> usize {
        ID_PROBES.with(|probes| probes.set(0));
        assert_eq!(engine.export_existing().unwrap(), 300);
        ID_PROBES.with(Cell::get)
    }

    /// The time these exports are made at.
    fn ten_o_clock() -> NaiveDateTime {
        NaiveDate::from_ymd_opt(2025, 6, 2).and_then(|day| day.and_hms_opt(10, 0, 0)).unwrap()
    }

    /// A data import put 300 patients into DentalTID in one second, two hours and 100 seconds
    /// ago: the 100 seconds from then up to the recent hours are soon taken, and the 200
    /// patients left get ids from the day before. Each of those must not probe those 100
    /// seconds again: a run that fills its hours would cost the square of its length (20,000
    /// patients created three hours and a half before `export_existing` took minutes more).
    #[test]
    fn export_existing_does_not_probe_again_the_seconds_a_run_filled() {
        let (_dir, _root, mut engine) = engine_after_an_import(ten_o_clock());
        let probes = probes_of_export_existing(&mut engine);
        // The 100 seconds once, and for each of the 200 others the seconds near now (three,
        // all taken) and one from the day before: about 900 in all, against 20,000 and more.
        assert!(probes <= 1_000, "{probes} ids looked up for 300 exports");
    }

    /// As above, with NanoPix already holding a folder at each of the 100 seconds from the
    /// import up to the recent hours: the first patient finds them all taken, and none of the
    /// 299 others may probe them again.
    #[test]
    fn export_existing_does_not_probe_again_the_seconds_it_found_taken() {
        let now = ten_o_clock();
        let (_dir, root, mut engine) = engine_after_an_import(now);
        let mut second = now - RECENT_IDS - chrono::Duration::seconds(100);
        while second < now - RECENT_IDS {
            std::fs::create_dir(root.join(NanoPixId::from_datetime(second).to_string())).unwrap();
            second += chrono::Duration::seconds(1);
        }
        let probes = probes_of_export_existing(&mut engine);
        // The 100 seconds once, then for each patient the seconds near now and about one from
        // the day before: about 1,300 in all, against 30,000 and more.
        assert!(probes <= 2_000, "{probes} ids looked up for 300 exports");
    }
}
