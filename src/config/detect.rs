//! `[detect]`: gateway-wide rules of detection (per-device settings live in
//! the device files): how far ahead of the gateway's clock a sensor's event
//! time may be.

use serde::Deserialize;

use super::diag::{ConfigError, Source};

/// Event times more than this ahead of the gateway's clock are refused
/// unless `max_future_skew_ms` says otherwise: 5 minutes covers sensors
/// whose clocks drift between NTP syncs, not a clock that is wrong.
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 5 * 60_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectConfig {
    /// A reading stamped further ahead of the gateway's clock is
    /// dead-lettered (`clock_skew`), and a stream whose event time ran
    /// further ahead than this starts its windows over.
    pub max_future_skew_ms: i64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDetect {
    max_future_skew_ms: Option<u64>,
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
    if let Some(ms) = raw.max_future_skew_ms {
        // From one second (clocks in sync) to one day: beyond that the
        // check would no longer protect the windows.
        if (1_000..=86_400_000).contains(&ms) {
            config.max_future_skew_ms = ms as i64;
        } else {
            errors.push(src.at(
                "detect.max_future_skew_ms",
                format!("{ms} is out of range; expected 1000 to 86400000 ms (1 s to 1 day)"),
            ));
        }
    }
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
        assert_eq!(load("").unwrap().detect.max_future_skew_ms, 300_000);
        let c = load("\n[detect]\nmax_future_skew_ms = 60000\n").unwrap();
        assert_eq!(c.detect.max_future_skew_ms, 60_000);
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
