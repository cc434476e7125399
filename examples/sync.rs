//! `sync`: the headless runner and diagnosis tool for clinic support staff.
//!
//! ```text
//! cargo run --release --example sync -- --nanopix <PatientData> --dentaltid <dentaltid.db> <command>
//! ```
//! Commands: `once`, `watch`, `status`, `enable`, `disable`, `export-existing`. Events go to
//! stdout as they come, one JSON object per line, `closed` last; errors go to stderr. The exit
//! code is 0 on success and 1 on a fatal error, with a one-line reason. When stdout is closed
//! (`sync watch | head`), the output ends there and the runner closes the sync as usual.
//! `-h` or `--help` prints the usage on stdout.

use std::ffi::OsString;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use nanopix_sync::{Config, Event, EventKind, NanoPixSync, PatientFilter};

const USAGE: &str = "usage: sync --nanopix <PatientData> --dentaltid <dentaltid.db> \
                     once|watch|status|enable|disable|export-existing";

/// The commands the runner knows.
const COMMANDS: [&str; 6] = ["once", "watch", "status", "enable", "disable", "export-existing"];

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
            eprintln!("sync: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the arguments as the system gives them: the paths may be any path, not only UTF-8.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Request, String> {
    let (mut nanopix, mut dentaltid, mut command) = (None, None, None);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--nanopix") => nanopix = args.next(),
            Some("--dentaltid") => dentaltid = args.next(),
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
        _ => Err(USAGE.into()),
    }
}

fn print_usage() -> Result<(), String> {
    if print_line(USAGE) { Ok(()) } else { Err("stdout is closed".into()) }
}

fn run(invocation: Invocation) -> Result<(), String> {
    let mut sync = NanoPixSync::open(invocation.config).map_err(|error| error.to_string())?;
    if invocation.command == "status" {
        return print_status(&sync);
    }
    let printer = EventPrinter::start(sync.events())?;
    let outcome = perform(&sync, &invocation.command, &printer.stopped);
    sync.close();
    let printed = printer.finish();
    outcome.and(printed)
}

/// Runs a command other than `status`, while the [`EventPrinter`] prints its events.
fn perform(sync: &NanoPixSync, command: &str, printer_stopped: &Receiver<()>) -> Result<(), String> {
    match command {
        "once" => sync.reconcile().map(drop).map_err(|e| e.to_string()),
        "enable" => sync.set_live_sync(true).map_err(|e| e.to_string()),
        "disable" => sync.set_live_sync(false).map_err(|e| e.to_string()),
        "export-existing" => sync.export_existing().map(drop).map_err(|e| e.to_string()),
        // `watch`: `parse_args` lets only the known commands through.
        _ => watch(sync, printer_stopped),
    }
}

/// The thread that prints every event while a command runs, each as it comes, so a long
/// command (a first sync of a large clinic) never lets the event queue fill up.
struct EventPrinter {
    thread: JoinHandle<()>,
    /// Disconnected once the printer has stopped: after `closed`, or when stdout is closed.
    stopped: Receiver<()>,
}

impl EventPrinter {
    fn start(events: Receiver<Event>) -> Result<Self, String> {
        let (running, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("sync-events".into())
            .spawn(move || {
                let _running = running;
                print_events(&events);
            })
            .map_err(|e| format!("cannot start printing events: {e}"))?;
        Ok(Self { thread, stopped })
    }

    /// Waits until the printer has printed `closed`, the last event: call it after `close`.
    fn finish(self) -> Result<(), String> {
        self.thread.join().map_err(|_| "printing events failed".to_owned())
    }
}

/// Prints events as they come until `closed`, the last one, or until stdout is closed. Lines
/// are written in batches, flushed whenever the queue is empty.
fn print_events(events: &Receiver<Event>) {
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    for event in events {
        let last = event.kind == EventKind::Closed;
        let mut written = writeln!(stdout, "{}", event.to_json());
        if last || events.is_empty() {
            written = written.and_then(|()| stdout.flush());
        }
        if written.is_err() || last {
            return;
        }
    }
}

/// Writes one line to stdout; `false` when stdout is closed or broken.
fn print_line(line: &str) -> bool {
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

/// Switches Live Sync on and syncs live until SIGINT or SIGTERM, or until the printer stops
/// because stdout is closed.
fn watch(sync: &NanoPixSync, printer_stopped: &Receiver<()>) -> Result<(), String> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop.try_send(());
    })
    .map_err(|e| e.to_string())?;
    sync.set_live_sync(true).map_err(|e| e.to_string())?;
    crossbeam_channel::select! {
        recv(stopped) -> _ => {}
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
    });
    if print_line(&status.to_string()) { Ok(()) } else { Err("stdout is closed".into()) }
}
