//! The JSON configuration `nps_open` takes, turned into a [`Config`].
//!
//! Only the two paths are required; unknown fields are refused so a typo never goes unnoticed.
//! This module must never accept a setting silently that it cannot honour.

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::ffi::error::{FfiError, NPS_INVALID_CONFIG, NPS_INVALID_JSON};
use crate::{Config, WatchMode};

/// The fields of the configuration JSON, as the README's C API section documents them.
/// The optional ones may be left out, but not given as `null`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfig {
    nanopix_root: String,
    dentaltid_db: String,
    #[serde(default, deserialize_with = "not_null")]
    auto_link: Option<bool>,
    #[serde(default, deserialize_with = "not_null")]
    patient_subfolders: Option<Vec<String>>,
    #[serde(default, deserialize_with = "not_null")]
    watch_mode: Option<WatchMode>,
    #[serde(default, deserialize_with = "not_null")]
    poll_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "not_null")]
    full_reconcile_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "not_null")]
    busy_timeout_ms: Option<u64>,
}

/// Reads an optional field that is present: `null` is a value of the wrong type, refused like
/// any other.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// Parses the configuration JSON: malformed JSON gives `NPS_INVALID_JSON`; anything but an
/// object, and wrong or unknown fields, give `NPS_INVALID_CONFIG`.
pub(crate) fn parse_config(json: &str) -> Result<Config, FfiError> {
    let failed = |code| move |error| FfiError::new(code, format!("configuration JSON: {error}"));
    serde_json::from_str::<IgnoredAny>(json).map_err(failed(NPS_INVALID_JSON))?;
    // Valid JSON that starts with a brace is an object; serde would also fill a struct from an array.
    if !json.trim_start().starts_with('{') {
        return Err(FfiError::new(NPS_INVALID_CONFIG, "configuration JSON: an object is expected"));
    }
    let host: HostConfig = serde_json::from_str(json).map_err(failed(NPS_INVALID_CONFIG))?;
    let mut config = Config::new(host.nanopix_root, host.dentaltid_db);
    config.auto_link = host.auto_link.unwrap_or(config.auto_link);
    config.patient_subfolders = host.patient_subfolders.unwrap_or_default();
    config.watch_mode = host.watch_mode.unwrap_or(config.watch_mode);
    config.poll_interval = interval(host.poll_interval_ms, "poll_interval_ms")?.unwrap_or(config.poll_interval);
    config.full_reconcile_interval = interval(host.full_reconcile_interval_ms, "full_reconcile_interval_ms")?
        .unwrap_or(config.full_reconcile_interval);
    config.busy_timeout = host.busy_timeout_ms.map_or(config.busy_timeout, Duration::from_millis);
    Ok(config)
}

/// The interval the field `name` gives in milliseconds, if any; 0 is refused.
fn interval(millis: Option<u64>, name: &str) -> Result<Option<Duration>, FfiError> {
    match millis {
        Some(0) => Err(FfiError::new(NPS_INVALID_CONFIG, format!("configuration JSON: `{name}` must be at least 1"))),
        other => Ok(other.map(Duration::from_millis)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_paths_are_required() {
        let config = parse_config(r#"{"nanopix_root": "P", "dentaltid_db": "d.db"}"#).unwrap();
        assert_eq!(config.nanopix_root, std::path::PathBuf::from("P"));
        assert!(config.auto_link);
        assert_eq!(config.watch_mode, WatchMode::Auto);
        assert_eq!(config.poll_interval, Duration::from_secs(2));
    }

    #[test]
    fn every_field_is_read() {
        let json = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "auto_link": false,
            "patient_subfolders": ["xrays"], "watch_mode": "polling", "poll_interval_ms": 250,
            "full_reconcile_interval_ms": 60000, "busy_timeout_ms": 100}"#;
        let config = parse_config(json).unwrap();
        assert!(!config.auto_link);
        assert_eq!(config.patient_subfolders, vec!["xrays".to_owned()]);
        assert_eq!(config.watch_mode, WatchMode::Polling);
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.full_reconcile_interval, Duration::from_secs(60));
        assert_eq!(config.busy_timeout, Duration::from_millis(100));
    }

    #[test]
    fn only_an_object_is_a_configuration() {
        for json in [r#"["P", "d.db", false]"#, r#""P""#, "42", "null", "true"] {
            let error = parse_config(json).unwrap_err();
            assert_eq!(
                (error.code, error.message.as_str()),
                (NPS_INVALID_CONFIG, "configuration JSON: an object is expected")
            );
        }
    }

    #[test]
    fn bad_json_and_bad_fields_have_their_own_codes() {
        assert_eq!(parse_config("{").unwrap_err().code, NPS_INVALID_JSON);
        assert_eq!(parse_config("not json").unwrap_err().code, NPS_INVALID_JSON);
        let unknown = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "autolink": true}"#;
        assert_eq!(parse_config(unknown).unwrap_err().code, NPS_INVALID_CONFIG);
        assert_eq!(parse_config(r#"{"nanopix_root": "P"}"#).unwrap_err().code, NPS_INVALID_CONFIG);
        let mode = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "watch_mode": "native"}"#;
        assert_eq!(parse_config(mode).unwrap_err().code, NPS_INVALID_CONFIG);
        let zero = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "poll_interval_ms": 0}"#;
        assert_eq!(parse_config(zero).unwrap_err().code, NPS_INVALID_CONFIG);
        let twice = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "auto_link": true, "auto_link": false}"#;
        assert_eq!(parse_config(twice).unwrap_err().code, NPS_INVALID_CONFIG);
        let wrong_mode = r#"{"nanopix_root": "P", "dentaltid_db": "d.db", "watch_mode": 5}"#;
        assert_eq!(parse_config(wrong_mode).unwrap_err().code, NPS_INVALID_CONFIG);
        for field in ["auto_link", "patient_subfolders", "watch_mode", "poll_interval_ms", "busy_timeout_ms"] {
            let null = format!(r#"{{"nanopix_root": "P", "dentaltid_db": "d.db", "{field}": null}}"#);
            assert_eq!(parse_config(&null).unwrap_err().code, NPS_INVALID_CONFIG, "{field}");
        }
    }
}
