//! Polling: for network shares, for installations that ask for it, and when native events fail.
//!
//! Every poll interval it compares both data versions and the root folder's modification time
//! (which changes when a patient folder is added or removed) with the last values. A poll costs
//! a few `stat` calls and two tiny queries: it never lists the patient folders.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crossbeam_channel::select;

use super::probe::Probes;
use super::{Context, End};

/// The shortest pause between polls, whatever the configuration says.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls until stopped or the root vanishes, starting from the root's modification time
/// `root_modified` read before.
pub(super) fn run(context: &Context, mut probes: Probes, mut root_modified: Option<SystemTime>) -> End {
    let timer = crossbeam_channel::tick(context.poll_interval.max(MIN_POLL_INTERVAL));
    loop {
        let step = select! {
            recv(context.stop) -> _ => Err(End::Stopped),
            recv(timer) -> _ => poll(context, &mut probes, &mut root_modified),
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// One poll: the root still there, its modification time, and both data versions.
fn poll(context: &Context, probes: &mut Probes, root_modified: &mut Option<SystemTime>) -> Result<(), End> {
    context.check_root()?;
    let now = modified(&context.root);
    let folders_changed = now != *root_modified;
    *root_modified = now;
    probes.poll(context, folders_changed)
}

/// When `folder` last changed, if the filesystem says.
pub(super) fn modified(folder: &Path) -> Option<SystemTime> {
    std::fs::metadata(folder).and_then(|metadata| metadata.modified()).ok()
}
