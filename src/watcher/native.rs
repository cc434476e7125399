//! Native file events (inotify, ReadDirectoryChangesW, FSEvents) as hints.
//!
//! Three non-recursive watches: the NanoPix root (patient folders appearing or vanishing), its
//! `database` folder, and the folder holding DentalTID's database (only events about the file,
//! its `-journal` and its `-wal` count). A burst of events is gathered for a short quiet window
//! and then turned into at most one trigger of each kind. Database events only count when
//! `data_version` confirms a commit. A slow timer checks both versions anyway, so a missed
//! event is noticed within about a second. This module never reads a patient folder.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::probe::{Change, Probes};
use super::{Context, End, Trigger, polling};
use crate::events::EventKind as BusEvent;
use crate::file_identity::same_entry_name;
use crate::{Error, NanoPixId};

/// How long a burst must stay quiet before its triggers are sent.
const QUIET_WINDOW: Duration = Duration::from_millis(15);

/// The longest a steady stream of events delays its triggers.
const MAX_GATHER: Duration = Duration::from_millis(250);

/// How often both data versions and the root are checked without any event.
const SLOW_CHECK: Duration = Duration::from_secs(1);

/// The longest a watcher that stops waits for notify's thread to end.
const TEARDOWN: Duration = Duration::from_secs(5);

/// A native watcher on the three folders, and the queue its events arrive on.
#[derive(Debug)]
pub(super) struct NativeWatch {
    /// Kept for as long as events are wanted; dropping it ends the watches.
    watcher: Option<RecommendedWatcher>,
    events: Receiver<notify::Result<Event>>,
    /// The thread that let go of the queue's sender, where the system tells (Linux).
    notify_thread: Arc<OnceLock<PathBuf>>,
    layout: Layout,
}

impl NativeWatch {
    /// Creates the watcher and watches the root, its `database` folder and DentalTID's folder.
    pub(super) fn start(context: &Context) -> crate::Result<Self> {
        let layout = Layout::new(context);
        let (sender, events) = crossbeam_channel::unbounded();
        let notify_thread = Arc::default();
        let handler = QueueEnd { sender, dropped_on: Arc::clone(&notify_thread) };
        let watcher = RecommendedWatcher::new(handler, notify::Config::default())
            .map_err(|source| Error::Watcher { path: layout.root.clone(), source })?;
        let mut watch = Self { watcher: Some(watcher), events, notify_thread, layout };
        watch.watch_folders()?;
        Ok(watch)
    }

    /// Watches the root, its `database` folder and DentalTID's folder.
    fn watch_folders(&mut self) -> crate::Result<()> {
        let Some(watcher) = &mut self.watcher else { return Ok(()) };
        for folder in [&self.layout.root, &self.layout.database, &self.layout.dentaltid_folder] {
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|source| Error::Watcher { path: folder.clone(), source })?;
        }
        Ok(())
    }
}

impl Drop for NativeWatch {
    /// Ends the watches, then waits (for at most [`TEARDOWN`]) until notify's own thread lets go
    /// of the queue as it ends, and on Linux until that thread is gone: a host may unload the
    /// library once `close` returns.
    fn drop(&mut self) {
        drop(self.watcher.take());
        let deadline = Instant::now() + TEARDOWN;
        while self.events.recv_deadline(deadline).is_ok() {}
        if let Some(thread) = self.notify_thread.get() {
            wait_until_gone(thread, deadline);
        }
    }
}

/// notify's end of the queue, which notify's thread drops as it ends.
struct QueueEnd {
    sender: Sender<notify::Result<Event>>,
    /// Where the thread that drops this end is listed, noted as it does.
    dropped_on: Arc<OnceLock<PathBuf>>,
}

impl notify::EventHandler for QueueEnd {
    fn handle_event(&mut self, event: notify::Result<Event>) {
        // The receiver only goes away with the session, which drops this watcher too.
        let _ = self.sender.send(event);
    }
}

impl Drop for QueueEnd {
    /// Notes the thread before the sender goes, so that the note is there once the queue ends.
    fn drop(&mut self) {
        if let Some(thread) = this_thread() {
            let _ = self.dropped_on.set(thread);
        }
    }
}

/// Where the system lists the calling thread while it runs: `/proc/<pid>/task/<tid>` on Linux.
fn this_thread() -> Option<PathBuf> {
    let thread = std::fs::read_link("/proc/thread-self").ok()?;
    Some(Path::new("/proc").join(thread))
}

/// Waits, until `deadline` at most, for `thread` to end; a thread that is the caller's own, or
/// was never listed, is not waited for.
fn wait_until_gone(thread: &Path, deadline: Instant) {
    if this_thread().as_deref() == Some(thread) {
        return;
    }
    while thread.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Watches with native events until stopped or the root vanishes; polls if the events stop.
pub(super) fn run(context: &Context, watch: NativeWatch, mut probes: Probes) -> End {
    let timer = crossbeam_channel::tick(SLOW_CHECK);
    loop {
        let step = select! {
            recv(context.stop) -> _ => Err(End::Stopped),
            recv(watch.events) -> event => match event {
                Ok(event) => gather(context, &watch, event).and_then(|hints| act(context, &mut probes, hints)),
                Err(_) => return events_lost(context, probes),
            },
            recv(timer) -> _ => context.check_root().and_then(|()| probes.poll(context, false)),
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// The native watcher's queue closed: say so, reconcile fully, and poll from now on.
fn events_lost(context: &Context, probes: Probes) -> End {
    let reason = "native file events stopped".to_owned();
    let root_modified = polling::modified(&context.root);
    context.bus.emit(BusEvent::WatcherMode { mode: "polling".into(), reason: reason.clone() });
    match context.send(Trigger::FullReconcile { reason }) {
        Ok(()) => polling::run(context, probes, root_modified),
        Err(end) => end,
    }
}

/// Gathers `first` and the events that follow it until a quiet window passes.
fn gather(context: &Context, watch: &NativeWatch, first: notify::Result<Event>) -> Result<Hints, End> {
    let mut hints = Hints::default();
    hints.note(first, &watch.layout);
    let deadline = Instant::now() + MAX_GATHER;
    loop {
        let quiet = QUIET_WINDOW.min(deadline.saturating_duration_since(Instant::now()));
        select! {
            recv(context.stop) -> _ => return Err(End::Stopped),
            recv(watch.events) -> event => match event {
                Ok(event) => hints.note(event, &watch.layout),
                Err(_) => return Ok(hints),
            },
            default(quiet) => return Ok(hints),
        }
        if Instant::now() >= deadline {
            return Ok(hints);
        }
    }
}

/// Sends the triggers a gathered burst calls for. A root whose own watch ended (deleted or
/// moved away) ends the session even when a folder stands at its path again with the same
/// identity: only a new session watches that folder.
fn act(context: &Context, probes: &mut Probes, hints: Hints) -> Result<(), End> {
    context.check_root()?;
    if hints.root_unwatched {
        return Err(End::RootReplaced);
    }
    if let Some(reason) = hints.rescan {
        return context.send(Trigger::FullReconcile { reason });
    }
    if hints.entry_gone {
        // Only a full reconcile looks at the folders of linked patients.
        let reason = "an entry under the NanoPix root was removed or renamed".to_owned();
        return context.send(Trigger::FullReconcile { reason });
    }
    let committed = hints.nanopix_db && probes.nanopix.check() != Change::Same;
    if hints.patient_folders || committed {
        context.send(Trigger::NanoPixChanged)?;
    }
    if hints.dentaltid_db && probes.dentaltid.check() != Change::Same {
        context.send(Trigger::DentalTidChanged)?;
    }
    Ok(())
}

/// The watched paths, as notify reports them.
#[derive(Debug)]
struct Layout {
    root: PathBuf,
    database: PathBuf,
    dentaltid_folder: PathBuf,
    /// The DentalTID database's file name, and its `-journal` and `-wal` names.
    dentaltid_names: [OsString; 3],
}

impl Layout {
    fn new(context: &Context) -> Self {
        let name = context.dentaltid_db.file_name().unwrap_or_default().to_os_string();
        let with_suffix = |suffix: &str| {
            let mut file = name.clone();
            file.push(suffix);
            file
        };
        Self {
            root: context.root.clone(),
            database: context.root.join("database"),
            dentaltid_folder: parent_folder(&context.dentaltid_db),
            dentaltid_names: [with_suffix("-journal"), with_suffix("-wal"), name],
        }
    }
}

/// What a burst of events hints at.
#[derive(Debug, Default)]
struct Hints {
    /// Something in `database/` changed: check NanoPix's data version.
    nanopix_db: bool,
    /// An entry directly under the root was created, removed or renamed.
    patient_folders: bool,
    /// An entry directly under the root was removed or renamed: a patient folder may be gone.
    entry_gone: bool,
    /// DentalTID's database, journal or WAL changed: check its data version.
    dentaltid_db: bool,
    /// The root folder itself was deleted or moved: its watch ended.
    root_unwatched: bool,
    /// Events were lost: why.
    rescan: Option<String>,
}

impl Hints {
    /// Adds what one event (or watcher error) hints at.
    fn note(&mut self, event: notify::Result<Event>, layout: &Layout) {
        match event {
            Ok(event) if event.need_rescan() => self.rescan = Some("file events overflowed (rescan flag)".into()),
            Ok(event) if changes_something(&event.kind) => {
                for path in &event.paths {
                    self.note_path(path, &event.kind, layout);
                }
            }
            Ok(_) => {}
            Err(error) => self.rescan = Some(format!("file watcher error: {error}")),
        }
    }

    fn note_path(&mut self, path: &Path, kind: &EventKind, layout: &Layout) {
        self.root_unwatched |= path == layout.root && removes_or_renames(kind);
        let Some(parent) = path.parent() else { return };
        if parent == layout.database {
            self.nanopix_db = true;
        }
        if parent == layout.root && adds_or_removes(kind) {
            self.patient_folders = true;
            // Only a patient folder going matters: a stray file's does not call for a full reconcile.
            let patient_folder = path.file_name().and_then(|name| name.to_str()).is_some_and(may_be_patient_folder);
            self.entry_gone |= patient_folder && removes_or_renames(kind);
        }
        if parent == layout.dentaltid_folder
            && path
                .file_name()
                .is_some_and(|name| layout.dentaltid_names.iter().any(|known| same_entry_name(name, known)))
        {
            self.dentaltid_db = true;
        }
    }
}

/// Whether an entry named `name` directly under the root may be a patient folder: named by its
/// id, or by the short (8.3) name Windows gives such a folder (`202501~1`, or a hashed alias
/// such as `20A1B2~1`): Windows reports an entry by the name it was reached through, so a folder
/// a program removed or renamed through its short name comes by that name.
fn may_be_patient_folder(name: &str) -> bool {
    NanoPixId::parse(name).is_ok() || is_short_folder_name(name)
}

/// Whether `name` has the shape of a short (8.3) name of a folder without an extension: at most
/// eight characters, letters or digits, then `~` and digits.
fn is_short_folder_name(name: &str) -> bool {
    let Some((stem, number)) = name.rsplit_once('~') else { return false };
    name.len() <= 8
        && !stem.is_empty()
        && stem.bytes().all(|byte| byte.is_ascii_alphanumeric())
        && !number.is_empty()
        && number.bytes().all(|byte| byte.is_ascii_digit())
}

/// Whether an event can mean a change: opening or reading a file (our own probes do) cannot.
fn changes_something(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => matches!(access, AccessKind::Close(AccessMode::Write)),
        _ => true,
    }
}

/// Whether an event can add or remove a folder entry.
fn adds_or_removes(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(notify::event::ModifyKind::Name(_))
            | EventKind::Any
            | EventKind::Other
    )
}

/// Whether an event can take an entry away from its path.
fn removes_or_renames(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)))
}

/// The folder that holds `file`; `.` for a bare file name.
fn parent_folder(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, Flag, ModifyKind};

    use super::*;

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/clinic/PatientData"),
            database: PathBuf::from("/clinic/PatientData/database"),
            dentaltid_folder: PathBuf::from("/clinic/DentalTid"),
            dentaltid_names: ["dentaltid.db-journal".into(), "dentaltid.db-wal".into(), "dentaltid.db".into()],
        }
    }

    fn hints(events: Vec<notify::Result<Event>>) -> Hints {
        let layout = layout();
        let mut hints = Hints::default();
        for event in events {
            hints.note(event, &layout);
        }
        hints
    }

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn a_folder_created_under_the_root_hints_at_patient_folders() {
        let hints = hints(vec![event(EventKind::Create(CreateKind::Folder), "/clinic/PatientData/20250122_090000")]);
        assert!(hints.patient_folders);
        assert!(!hints.nanopix_db && !hints.dentaltid_db && hints.rescan.is_none());
    }

    #[test]
    fn a_folder_removed_or_renamed_under_the_root_is_an_entry_gone() {
        let folder = "/clinic/PatientData/20250122_090000";
        assert!(hints(vec![event(EventKind::Remove(notify::event::RemoveKind::Folder), folder)]).entry_gone);
        let renamed = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::From));
        assert!(hints(vec![event(renamed, folder)]).entry_gone);
        assert!(!hints(vec![event(EventKind::Create(CreateKind::Folder), folder)]).entry_gone);
        let inside = "/clinic/PatientData/20250122_090000/image.jpg";
        assert!(!hints(vec![event(EventKind::Remove(notify::event::RemoveKind::File), inside)]).entry_gone);
    }

    #[test]
    fn a_stray_entry_removed_under_the_root_is_no_entry_gone() {
        for stray in ["/clinic/PatientData/~backup.lock", "/clinic/PatientData/20250122_0900"] {
            let hints = hints(vec![event(EventKind::Remove(notify::event::RemoveKind::Any), stray)]);
            assert!(hints.patient_folders && !hints.entry_gone, "{stray}");
        }
    }

    /// Windows reports an entry by the name it was reached through, long or short (8.3): a patient
    /// folder a program removed through its short name comes as `202501~1`, or, once a few
    /// folders share those first characters, as a hashed alias such as `20A1B2~1`. Such a
    /// patient folder gone must still call for the full reconcile that reports her removed.
    #[test]
    fn a_patient_folder_removed_under_its_short_name_is_an_entry_gone() {
        let renamed = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::From));
        let removed = EventKind::Remove(notify::event::RemoveKind::Any);
        for alias in ["/clinic/PatientData/202501~1", "/clinic/PatientData/20A1B2~1"] {
            assert!(hints(vec![event(removed, alias)]).entry_gone, "{alias} removed");
            assert!(hints(vec![event(renamed, alias)]).entry_gone, "{alias} renamed");
        }
        for stray in ["/clinic/PatientData/~backup.lock", "/clinic/PatientData/NOTES~1.TXT", "/clinic/PatientData/a~b"]
        {
            assert!(!hints(vec![event(removed, stray)]).entry_gone, "{stray}");
        }
    }

    #[test]
    fn the_root_itself_deleted_or_moved_away_ends_its_watch() {
        let root = "/clinic/PatientData";
        assert!(hints(vec![event(EventKind::Remove(notify::event::RemoveKind::Folder), root)]).root_unwatched);
        let moved = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::From));
        assert!(hints(vec![event(moved, root)]).root_unwatched);
        let touched = EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any));
        assert!(!hints(vec![event(touched, root)]).root_unwatched);
        let folder = "/clinic/PatientData/20250122_090000";
        assert!(!hints(vec![event(EventKind::Remove(notify::event::RemoveKind::Folder), folder)]).root_unwatched);
    }

    #[test]
    fn a_write_inside_a_patient_folder_is_not_a_folder_change() {
        let hints = hints(vec![event(EventKind::Modify(ModifyKind::Any), "/clinic/PatientData/20250122_090000")]);
        assert!(!hints.patient_folders);
    }

    #[test]
    fn opening_a_database_hints_at_nothing() {
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let hints = hints(vec![
            event(open, "/clinic/PatientData/database/NanoPix.db3"),
            event(open, "/clinic/DentalTid/dentaltid.db"),
        ]);
        assert!(!hints.nanopix_db && !hints.dentaltid_db);
    }

    #[test]
    fn closing_a_written_database_hints_at_a_commit() {
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(hints(vec![event(closed, "/clinic/PatientData/database/NanoPix.db3")]).nanopix_db);
    }

    #[test]
    fn only_dentaltid_files_count_in_its_folder() {
        let journal = hints(vec![event(
            EventKind::Remove(notify::event::RemoveKind::File),
            "/clinic/DentalTid/dentaltid.db-journal",
        )]);
        assert!(journal.dentaltid_db);
        let other = hints(vec![event(EventKind::Modify(ModifyKind::Any), "/clinic/DentalTid/settings.json")]);
        assert!(!other.dentaltid_db);
    }

    /// Windows reports a file by its name on disk, which may differ in case from the configured
    /// `dentaltid_db`: there it is the same file; elsewhere another one.
    #[test]
    fn a_dentaltid_file_named_in_another_case_counts_where_names_ignore_case() {
        let written = hints(vec![event(EventKind::Modify(ModifyKind::Any), "/clinic/DentalTid/DentalTID.db")]);
        assert_eq!(written.dentaltid_db, cfg!(windows));
    }

    #[test]
    fn a_rescan_flag_or_a_watcher_error_asks_for_a_full_reconcile() {
        let flagged = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert!(hints(vec![flagged]).rescan.is_some());
        let failed = Err(notify::Error::generic("queue overflow"));
        assert!(hints(vec![failed]).rescan.is_some_and(|reason| reason.contains("queue overflow")));
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_folder() {
        assert_eq!(parent_folder(Path::new("dentaltid.db")), PathBuf::from("."));
        assert_eq!(parent_folder(Path::new("/data/dentaltid.db")), PathBuf::from("/data"));
    }
}
