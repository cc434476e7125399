//! How a [`crate::NanoPixSync`] handle is set up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::nanopix::check_subfolder_name;
use crate::{Clock, Error, Result, SystemClock};

/// The longest busy timeout SQLite takes: `i32::MAX` milliseconds, about 24.8 days.
const MAX_BUSY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The shortest polling and full reconcile intervals: 1 ms, as the C configuration's
/// `poll_interval_ms` and `full_reconcile_interval_ms` take them. A shorter full reconcile
/// interval (zero, say, meant as "never") would reconcile fully without pause.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How the live watcher notices changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    /// Native file events, falling back to polling when they fail or cannot work (network shares).
    Auto,
    /// Polling only, for example for a NanoPix folder on a network share.
    Polling,
}

/// Settings for a sync handle. Start from [`Config::new`] and change the fields you need.
///
/// # Example
/// ```
/// use nanopix_sync::Config;
/// let mut config = Config::new("C:/NanoPix/PatientData", "C:/Users/me/Documents/DentalTid/databases/dentaltid.db");
/// config.auto_link = false;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// NanoPix's `PatientData` folder (it holds `database/NanoPix.db3`).
    pub nanopix_root: PathBuf,
    /// DentalTID's `dentaltid.db`.
    pub dentaltid_db: PathBuf,
    /// Link exact matches automatically (default: on). When off, they are imported and reported.
    pub auto_link: bool,
    /// Subfolders to create inside a new patient folder (default: none, as NanoPix itself does),
    /// each one plain folder name that Windows can hold as given.
    pub patient_subfolders: Vec<String>,
    /// How the live watcher notices changes (default: [`WatchMode::Auto`]).
    pub watch_mode: WatchMode,
    /// How often to look for changes when polling (default: 2 s; at least 1 ms).
    pub poll_interval: Duration,
    /// How often to run a full reconcile while watching (default: hourly; at least 1 ms).
    pub full_reconcile_interval: Duration,
    /// Run Live Sync's automatic work on this handle while Live Sync is on: the watcher, its
    /// passes and the periodic full reconcile (default: yes). Turn it off for a handle that only
    /// reads or acts when called, as the `sync` runner does for every command but `watch`; Live
    /// Sync's stored setting is not changed by it.
    pub automatic_work: bool,
    /// How long to wait for a database another program has locked, per attempt (default: 5 s).
    pub busy_timeout: Duration,
    /// Where "now" comes from (default: the system clock).
    pub clock: Arc<dyn Clock>,
}

impl Config {
    /// Default settings for the given NanoPix folder and DentalTID database.
    pub fn new(nanopix_root: impl Into<PathBuf>, dentaltid_db: impl Into<PathBuf>) -> Self {
        Self {
            nanopix_root: nanopix_root.into(),
            dentaltid_db: dentaltid_db.into(),
            auto_link: true,
            patient_subfolders: Vec::new(),
            watch_mode: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
            full_reconcile_interval: Duration::from_secs(3600),
            automatic_work: true,
            busy_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }

    /// Checks the settings that need neither side: both paths given, the intervals, the busy
    /// timeout and the subfolder names.
    ///
    /// # Failure
    /// [`Error::InvalidConfig`] for an empty path or one holding a NUL character, a polling or
    /// full reconcile interval shorter than 1 ms, a busy timeout over about 24.8 days, which
    /// SQLite cannot take, or a patient subfolder that is not one plain folder name Windows can
    /// hold as given.
    pub(crate) fn check(&self) -> Result<()> {
        for (path, name) in [(&self.nanopix_root, "nanopix_root"), (&self.dentaltid_db, "dentaltid_db")] {
            check_path(path, name)?;
        }
        for (interval, name) in
            [(self.poll_interval, "poll_interval"), (self.full_reconcile_interval, "full_reconcile_interval")]
        {
            if interval < MIN_INTERVAL {
                return Err(Error::InvalidConfig(format!("{name} {interval:?} is shorter than {MIN_INTERVAL:?}")));
            }
        }
        if self.busy_timeout > MAX_BUSY_TIMEOUT {
            let message =
                format!("busy timeout {:?} is longer than SQLite takes ({MAX_BUSY_TIMEOUT:?})", self.busy_timeout);
            return Err(Error::InvalidConfig(message));
        }
        self.patient_subfolders.iter().try_for_each(|name| check_subfolder_name(name))
    }

    /// The configuration with both paths absolute, as the watcher's events name them: a relative
    /// path is taken from the current folder once, here.
    pub(crate) fn anchored(mut self) -> Result<Self> {
        for path in [&mut self.nanopix_root, &mut self.dentaltid_db] {
            *path = std::path::absolute(&*path).map_err(Error::io(path, "making the path absolute"))?;
        }
        Ok(self)
    }
}

/// Accepts a path setting named `name` that can name a file: not empty, and without a NUL
/// character, which no system takes in a path (a path copied with its terminating NUL, say).
fn check_path(path: &Path, name: &str) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidConfig(format!("{name} is empty: it must name a path")));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        let shown = path.display().to_string().replace('\0', "\\0");
        return Err(Error::InvalidConfig(format!("{name} holds a NUL character, which no path can hold: {shown}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_shorter_than_a_millisecond_are_refused_as_in_the_c_configuration() {
        let config = || Config::new("PatientData", "dentaltid.db");
        assert!(config().check().is_ok());
        let mut never = config();
        never.full_reconcile_interval = Duration::ZERO;
        assert!(
            matches!(never.check(), Err(Error::InvalidConfig(message)) if message.contains("full_reconcile_interval"))
        );
        let mut busy = config();
        busy.poll_interval = Duration::from_micros(999);
        assert!(matches!(busy.check(), Err(Error::InvalidConfig(message)) if message.contains("poll_interval")));
        let mut shortest = config();
        (shortest.poll_interval, shortest.full_reconcile_interval) = (MIN_INTERVAL, MIN_INTERVAL);
        assert!(shortest.check().is_ok());
    }
}
