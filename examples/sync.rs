//! `sync`: the headless runner and diagnosis tool for clinic support staff.
//!
//! ```text
//! cargo run --release --example sync -- --nanopix <PatientData> --dentaltid <dentaltid.db> <command>
//! ```
//! Commands: `once`, `watch`, `status`, `enable`, `disable`, `export-existing`. Events go to
//! stdout as they come, one JSON object per line, `closed` last; errors go to stderr. The exit
//! code is 0 on success and 1 on a fatal error, with a one-line reason: also when an error may
//! have held back an export in `export-existing`, when SIGINT or SIGTERM cut a command other than
//! `watch` short, or when stdout cannot be written. When stdout is closed (`sync watch | head`), the
//! output ends there and the runner closes the sync as usual. `-h` or `--help` prints the usage
//! on stdout.

use std::ffi::OsString;
use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nanopix_sync::{Config, Event, EventKind, NanoPixSync, PatientFilter, Stopper};

const USAGE: &str = "usage: sync --nanopix <PatientData> --dentaltid <dentaltid.db> \
                     once|watch|status|enable|disable|export-existing";

/// The commands the runner knows.
const COMMANDS: [&str; 6] = ["once", "watch", "status", "enable", "disable", "export-existing"];

/// The runner's options: one given as an option's path stands where that path was left out.
const OPTIONS: [&str; 4] = ["--nanopix", "--dentaltid", "-h", "--help"];

/// What the runner was asked for.
enum Request {
    /// `-h` or `--help`: the usage, on stdout.
    Help,
    Run(Invocation),
}

/// A command to run, on which files.
struct Invocation {
    config: Config,
    command: String,
}

fn main() -> ExitCode {
    let outcome = parse_args(std::env::args_os().skip(1)).and_then(|request| match request {
        Request::Help => print_usage(),
        Request::Run(invocation) => run(invocation),
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            // A stderr that cannot be written (a closed pipe) loses the reason, not the exit code.
            let _ = writeln!(std::io::stderr(), "sync: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the arguments as the system gives them: the paths may be any path, not only UTF-8.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Request, String> {
    let (mut nanopix, mut dentaltid, mut command) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some(option @ ("--nanopix" | "--dentaltid")) => {
                let path = args.next().filter(|path| !path.to_str().is_some_and(|path| OPTIONS.contains(&path)));
                let path = path.ok_or_else(|| format!("{option} needs a path; {USAGE}"))?;
                let slot = if option == "--nanopix" { &mut nanopix } else { &mut dentaltid };
                if slot.replace(path).is_some() {
                    return Err(format!("{option} is given twice; {USAGE}"));
                }
            }
            Some("-h" | "--help") => return Ok(Request::Help),
            Some(name) if command.is_none() && !name.starts_with('-') => command = Some(name.to_owned()),
            _ => return Err(format!("unexpected argument {arg:?}; {USAGE}")),
        }
    }
    match (nanopix, dentaltid, command) {
        (Some(_), Some(_), Some(command)) if !COMMANDS.contains(&command.as_str()) => {
            Err(format!("unknown command {command:?}; {USAGE}"))
        }
        (Some(nanopix), Some(dentaltid), Some(command)) => {
            let mut config = Config::new(nanopix, dentaltid);
            // Only `watch` syncs live: with Live Sync on, every other command still does just
            // what it names, with no watcher and no automatic reconcile of its own.
            config.automatic_work = command == "watch";
            Ok(Request::Run(Invocation { config, command }))
        }
        (nanopix, dentaltid, command) => {
            let given = [
                (nanopix.is_some(), "--nanopix"),
                (dentaltid.is_some(), "--dentaltid"),
                (command.is_some(), "a command"),
            ];
            let missing: Vec<&str> = given.into_iter().filter_map(|(given, what)| (!given).then_some(what)).collect();
            Err(format!("missing {}; {USAGE}", missing.join(" and ")))
        }
    }
}

fn print_usage() -> Result<(), String> {
    print_line(USAGE)
}

fn run(invocation: Invocation) -> Result<(), String> {
    let (signalled, stopper) = stop_on_signal()?;
    let Some(mut sync) = open(&invocation, &signalled)? else { return Ok(()) };
    let _ = stopper.set(sync.stopper());
    // A signal while the files were opened (a locked database makes that wait) stops all now.
    if !signalled.is_empty() {
        sync.stopper().stop();
    }
    if invocation.command == "status" {
        return if signalled.is_empty() { print_status(&sync) } else { Err(STOPPED.into()) };
    }
    let printer = EventPrinter::start(sync.events())?;
    let outcome = perform(&sync, &invocation.command, &printer.stopped, &signalled);
    sync.close();
    let printed = outcome.and(printer.finish());
    // A signal is how `watch` ends; any other command it cuts short (`export-existing` then
    // fails with `closed`: this says why).
    if invocation.command != "watch" && signalled.try_recv().is_ok() {
        return Err(STOPPED.into());
    }
    printed?.check(&invocation.command)
}

/// The longest wait of `watch` before it tries again to open databases that stayed locked.
const LONGEST_OPEN_WAIT: Duration = Duration::from_secs(60);

/// Opens the sync for `invocation`. `watch`, which runs unattended, does not give up on a database
/// that stays locked past the busy timeout while it opens (another program's long write, a
/// backup): it says so on stderr, one line each time, and tries again after 1 s, then 2 s, 4 s
/// and so on up to a minute, until it opens the files; `None` when a signal ends it first. Any
/// other command, and any other error, fails at once.
fn open(invocation: &Invocation, signalled: &Receiver<()>) -> Result<Option<NanoPixSync>, String> {
    let mut wait = Duration::from_secs(1);
    loop {
        match NanoPixSync::open(invocation.config.clone()) {
            Err(error) if invocation.command == "watch" && error.code() == "busy" => {
                let _ = writeln!(std::io::stderr(), "sync: {error}; trying again in {} s", wait.as_secs());
                if !signalled.is_empty() || signalled.recv_timeout(wait).is_ok() {
                    return Ok(None);
                }
                wait = (wait * 2).min(LONGEST_OPEN_WAIT);
            }
            opened => return opened.map(Some).map_err(|error| error.to_string()),
        }
    }
}

/// Why a command a signal cut short failed.
const STOPPED: &str = "stopped by a signal before the end; the next run goes on from there";

/// From now on, SIGINT or SIGTERM (or Ctrl-C) is said on the channel, and cuts short the work of
/// the sync whose [`Stopper`] is set in the slot, once there is one.
fn stop_on_signal() -> Result<(Receiver<()>, Arc<OnceLock<Stopper>>), String> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    let stopper = Arc::new(OnceLock::<Stopper>::new());
    let slot = stopper.clone();
    ctrlc::set_handler(move || {
        if let Some(stopper) = slot.get() {
            stopper.stop();
        }
        let _ = stop.try_send(());
    })
    .map_err(|e| e.to_string())?;
    Ok((stopped, stopper))
}

/// Runs a command other than `status`, while the [`EventPrinter`] prints its events.
fn perform(
    sync: &NanoPixSync,
    command: &str,
    printer_stopped: &Receiver<()>,
    signalled: &Receiver<()>,
) -> Result<(), String> {
    match command {
        "once" => sync.reconcile().map(drop).map_err(|e| e.to_string()),
        "enable" => sync.set_live_sync(true).map_err(|e| e.to_string()),
        "disable" => sync.set_live_sync(false).map_err(|e| e.to_string()),
        "export-existing" => sync.export_existing().map(drop).map_err(|e| e.to_string()),
        // `watch`: `parse_args` lets only the known commands through.
        _ => watch(sync, printer_stopped, signalled),
    }
}

/// The thread that prints every event while a command runs, each as it comes, so a long
/// command (a first sync of a large clinic) never lets the event queue fill up.
struct EventPrinter {
    thread: JoinHandle<Result<Printed, String>>,
    /// Disconnected once the printer has stopped printing: after `closed`, or when stdout is
    /// closed or cannot be written.
    stopped: Receiver<()>,
}

impl EventPrinter {
    fn start(events: Receiver<Event>) -> Result<Self, String> {
        let (running, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("sync-events".into())
            .spawn(move || print_events(&events, running))
            .map_err(|e| format!("cannot start printing events: {e}"))?;
        Ok(Self { thread, stopped })
    }

    /// Waits until the printer has printed `closed`, the last event: call it after `close`.
    fn finish(self) -> Result<Printed, String> {
        self.thread.join().map_err(|_| "printing events failed".to_owned())?
    }
}

/// What the [`EventPrinter`] printed.
struct Printed {
    /// `sync_error` events but those about odd NanoPix rows and folders, which the sync skips.
    errors: usize,
    /// Events the queue dropped while stdout was not read, as `events_dropped` counts them: any
    /// of them may have been an error.
    dropped: u64,
}

impl Printed {
    /// Whether `command` did all it was asked: `export-existing` fails when an error held back
    /// an export (the events say why), or may have (its event was dropped), so scripts can tell
    /// from the exit code.
    fn check(&self, command: &str) -> Result<(), String> {
        if command != "export-existing" {
            return Ok(());
        }
        match (self.errors, self.dropped) {
            (0, 0) => Ok(()),
            (0, dropped) => Err(format!(
                "{dropped} events were dropped while stdout was not read, and errors among them may have held \
                 back exports; run export-existing again to export those left"
            )),
            (errors, _) => Err(format!("{errors} errors may have held back exports; the sync_error events say why")),
        }
    }
}

/// Prints events as they come until `closed`, the last one, or until stdout cannot be written
/// (a full disk: a failure). When stdout is closed, the output ends there, which is no failure:
/// `running` is dropped, and the events are still read to `closed`, so that the errors among
/// them still decide the exit code. Lines are written in batches, flushed whenever the queue is
/// empty.
fn print_events(events: &Receiver<Event>, running: Sender<()>) -> Result<Printed, String> {
    let mut running = Some(running);
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    let mut printed = Printed { errors: 0, dropped: 0 };
    for event in events {
        let last = event.kind == EventKind::Closed;
        let odd = |code: &str| ["odd_row", "odd_folder", "odd_name"].contains(&code);
        printed.errors += usize::from(matches!(&event.kind, EventKind::SyncError { code, .. } if !odd(code)));
        if let EventKind::EventsDropped { count } = event.kind {
            printed.dropped += count;
        }
        if running.is_some() {
            let mut written = writeln!(stdout, "{}", event.to_json());
            if last || events.is_empty() {
                written = written.and_then(|()| stdout.flush());
            }
            if let Err(error) = written {
                stdout_failed(&error)?;
                running = None;
            }
        }
        if last {
            break;
        }
    }
    Ok(printed)
}

/// Writes one line to stdout.
fn print_line(line: &str) -> Result<(), String> {
    writeln!(std::io::stdout().lock(), "{line}").or_else(|error| stdout_failed(&error))
}

/// What a failed write to stdout means: a closed pipe (`sync watch | head`) just ends the output;
/// anything else (a full disk) loses it, which is a failure.
fn stdout_failed(error: &std::io::Error) -> Result<(), String> {
    match error.kind() {
        ErrorKind::BrokenPipe => Ok(()),
        _ => Err(format!("writing the events to stdout failed: {error}")),
    }
}

/// Switches Live Sync on and syncs live until SIGINT or SIGTERM (`signalled`), or until the
/// printer stops because stdout is closed.
fn watch(sync: &NanoPixSync, printer_stopped: &Receiver<()>, signalled: &Receiver<()>) -> Result<(), String> {
    sync.set_live_sync(true).map_err(|e| e.to_string())?;
    crossbeam_channel::select! {
        recv(signalled) -> _ => {}
        recv(printer_stopped) -> _ => {}
    }
    Ok(())
}

fn print_status(sync: &NanoPixSync) -> Result<(), String> {
    let count = |filter| sync.patients(filter).map(|patients| patients.len()).map_err(|e| e.to_string());
    let status = serde_json::json!({
        "live_sync": sync.live_sync().map_err(|e| e.to_string())?,
        "patients": count(PatientFilter::All)?,
        "from_nanopix": count(PatientFilter::AllByExternal)?,
        "today": count(PatientFilter::Today)?,
        "today_by_external": count(PatientFilter::TodayByExternal)?,
        "possible_duplicates": sync.possible_duplicates().map_err(|e| e.to_string())?.len(),
        "delete_requests": sync.delete_requests().map_err(|e| e.to_string())?.len(),
    });
    print_line(&status.to_string())
}
