//! `[detect]`: gateway-wide rules of detection (per-device settings live in
//! the device files): how far ahead of the gateway's clock a sensor's event
//! time may be, how many streams detection keeps and for how long an idle
//! one, which devices are taken, and what counts as an alert storm.

use serde::Deserialize;

use super::diag::{ConfigError, Source};
use super::ranges::{
    Whole, ALERT_STORM_PER_MINUTE, MAX_FUTURE_SKEW_MS, MAX_STREAMS, STREAM_IDLE_MS,
};

/// Event times more than this ahead of the gateway's clock are refused
/// unless `max_future_skew_ms` says otherwise: 5 minutes covers sensors
/// whose clocks drift between NTP syncs, not a clock that is wrong.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60_000;

/// Streams detection keeps in memory unless `max_streams` says otherwise:
/// a few times what a gateway serves (a few hundred sensors with a few
/// metrics each), far below what spoofed names would take.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// A stream unseen this long is put aside (written once, dropped from
/// memory) unless `stream_idle_ms` says otherwise.
pub const DEFAULT_STREAM_IDLE_MS: i64 = 3_600_000;
/// Alerts raised in one minute from which an alert storm is reported.
pub const DEFAULT_ALERT_STORM_PER_MINUTE: u64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectConfig {
    /// A reading stamped further ahead of the gateway's clock is
    /// dead-lettered (`clock_skew`), and a stream whose event time ran
    /// further ahead than this starts its windows over.
    pub max_future_skew_ms: i64,
    /// Streams in memory at most; readings of further new streams are
    /// stored but not detected (counted).
    pub max_streams: usize,
    /// A stream unseen this long is written to the store and leaves memory
    /// until it speaks again.
    pub stream_idle_ms: i64,
    /// Only devices that a device file's `match` names are taken; others'
    /// readings are dead-lettered (`unknown_device`).
    pub devices_known_only: bool,
    /// Alerts raised within a minute, across the gateway, from which an
    /// alert storm is logged and shown in the metrics (nothing is dropped).
    pub alert_storm_per_minute: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
            max_streams: DEFAULT_MAX_STREAMS,
            stream_idle_ms: DEFAULT_STREAM_IDLE_MS,
            devices_known_only: false,
            alert_storm_per_minute: DEFAULT_ALERT_STORM_PER_MINUTE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetect {
    max_future_skew_ms: Option<u64>,
    max_streams: Option<u64>,
    stream_idle_ms: Option<u64>,
    devices_known_only: Option<bool>,
    alert_storm_per_minute: Option<u64>,
}

pub(super) fn validate(
    src: &Source,
    raw: Option<RawDetect>,
    errors: &mut Vec<ConfigError>,
) -> DetectConfig {
    let Some(raw) = raw else {
        return DetectConfig::default();
    };
    let mut config = DetectConfig::default();
    let mut bounded = |key: &str, value: Option<u64>, range: Whole| {
        let v = value?;
        range
            .check_at(src, &format!("detect.{key}"), v, errors)
            .then_some(v)
    };
    if let Some(ms) = bounded(
        "max_future_skew_ms",
        raw.max_future_skew_ms,
        MAX_FUTURE_SKEW_MS,
    ) {
        config.max_future_skew_ms = ms as i64;
    }
    if let Some(n) = bounded("max_streams", raw.max_streams, MAX_STREAMS) {
        config.max_streams = n as usize;
    }
    if let Some(ms) = bounded("stream_idle_ms", raw.stream_idle_ms, STREAM_IDLE_MS) {
        config.stream_idle_ms = ms as i64;
    }
    if let Some(n) = bounded(
        "alert_storm_per_minute",
        raw.alert_storm_per_minute,
        ALERT_STORM_PER_MINUTE,
    ) {
        config.alert_storm_per_minute = n;
    }
    config.devices_known_only = raw.devices_known_only.unwrap_or(false);
    config
}

#[cfg(test)]
mod tests {
    const MAIN: &str = r#"gateway_id = "gw-1"

[broker]
host = "127.0.0.1"

[[subscriptions]]
template = "plant/+/{device}/{metric}"

[store]
path = "store"
"#;

    fn load(extra: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vigil.toml");
        std::fs::write(&path, format!("{MAIN}{extra}")).unwrap();
        crate::config::load(&path)
    }

    #[test]
    fn max_future_skew_defaults_to_five_minutes_and_can_be_set() {
        assert_eq!(load("").unwrap().detect, super::DetectConfig::default());
        assert_eq!(load("").unwrap().detect.max_future_skew_ms, 300_000);
        let c = load("\n[detect]\nmax_future_skew_ms = 60000\n").unwrap();
        assert_eq!(c.detect.max_future_skew_ms, 60_000);
    }

    #[test]
    fn stream_settings_are_read_and_checked() {
        let c = load("\n[detect]\nmax_streams = 50\nstream_idle_ms = 120000\ndevices_known_only = true\nalert_storm_per_minute = 7\n").unwrap();
        assert_eq!(c.detect.max_streams, 50);
        assert_eq!(c.detect.stream_idle_ms, 120_000);
        assert!(c.detect.devices_known_only);
        assert_eq!(c.detect.alert_storm_per_minute, 7);
        let errors =
            load("\n[detect]\nmax_streams = 0\nstream_idle_ms = 5\nalert_storm_per_minute = 0\n")
                .expect_err("accepted")
                .0;
        let keys: Vec<(&str, Option<usize>)> = errors
            .iter()
            .map(|e| (e.message.split(':').next().unwrap(), e.line))
            .collect();
        assert_eq!(
            keys,
            [
                ("detect.max_streams", Some(13)),
                ("detect.stream_idle_ms", Some(14)),
                ("detect.alert_storm_per_minute", Some(15))
            ]
        );
    }

    #[test]
    fn max_future_skew_out_of_range_is_an_error_with_its_line() {
        for bad in ["999", "86400001"] {
            let errors = load(&format!("\n[detect]\nmax_future_skew_ms = {bad}\n"))
                .expect_err("accepted")
                .0;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].line, Some(13), "{errors:?}");
            assert!(
                errors[0].message.starts_with("detect.max_future_skew_ms:"),
                "{}",
                errors[0].message
            );
        }
    }
}
