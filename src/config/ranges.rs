//! The accepted range of every numeric setting, declared once. Validation
//! checks values against these; the tests feed every key values from inside
//! and from just outside its range, through loading and through the code
//! that turns them into durations, rates and sizes; README's table of ranges
//! is checked against `SETTINGS`.
//!
//! The bounds keep every conversion total: durations fit `Duration` and
//! `Instant` arithmetic, sizes fit `usize` on 32-bit gateways, rates give
//! pacing intervals of at most 1000 s.

use std::fmt;

use super::detection_layer::{format_ms, parse_duration_ms};
use super::diag::{ConfigError, Source};

/// A whole number of `unit`s, `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole {
    pub min: u64,
    pub max: u64,
    pub unit: Unit,
}

/// What a whole number counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Shown as KiB, MiB, GiB, TiB where exact.
    Bytes,
    Plain(&'static str),
}

/// A finite real number between `min` and `max`, each bound included unless
/// marked excluded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Real {
    pub min: f64,
    pub min_excluded: bool,
    pub max: f64,
    pub max_excluded: bool,
    pub unit: &'static str,
}

/// A duration written with its unit ("500ms", "10s", "5m", "1h", "2d"),
/// `min_ms..=max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub min_ms: i64,
    pub max_ms: i64,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const SECOND_MS: i64 = 1_000;
const DAY_MS: i64 = 86_400_000;

const fn whole(min: u64, max: u64, unit: &'static str) -> Whole {
    Whole {
        min,
        max,
        unit: Unit::Plain(unit),
    }
}

const fn bytes(min: u64, max: u64) -> Whole {
    Whole {
        min,
        max,
        unit: Unit::Bytes,
    }
}

const fn real(min: f64, max: f64, unit: &'static str) -> Real {
    Real {
        min,
        min_excluded: false,
        max,
        max_excluded: false,
        unit,
    }
}

/// Above `min` (excluded), at most `max`.
const fn above(min: f64, max: f64, unit: &'static str) -> Real {
    Real {
        min_excluded: true,
        ..real(min, max, unit)
    }
}

// vigil.toml: the two connections ([broker], [upstream]).
pub const PORT: Whole = whole(1, 65_535, "");
pub const KEEPALIVE_S: Whole = whole(5, 65_535, "seconds");
pub const MAX_PAYLOAD_BYTES: Whole = bytes(64, 64 * MIB);
pub const RECONNECT_MIN_MS: Whole = whole(1, 3_600_000, "ms");
pub const RECONNECT_MAX_MS: Whole = whole(1, 86_400_000, "ms");
pub const QOS: Whole = whole(0, 1, "");
// [store]
pub const BUDGET_BYTES: Whole = bytes(4 * KIB, 16 * TIB);
pub const FLUSH_INTERVAL_MS: Whole = whole(1, 10_000, "ms");
pub const FLUSH_MAX_READINGS: Whole = whole(1, 1_000_000, "readings");
pub const CHECKPOINT_INTERVAL_MS: Whole = whole(0, 60_000, "ms");
pub const DEAD_LETTER_MAX: Whole = whole(1, 10_000_000, "entries");
/// With `alerts_max_bytes`, also below `budget_bytes`.
pub const DEAD_LETTER_MAX_BYTES: Whole = bytes(KIB, 4 * TIB);
pub const ALERTS_MAX_BYTES: Whole = bytes(KIB, 4 * TIB);
// [upstream]
pub const MAX_INFLIGHT: Whole = whole(1, 10_000, "messages");
/// At the lowest rate the pacing waits 1000 s for a message.
pub const AGGREGATE_RATE_PER_S: Real = real(1e-3, 1e6, "messages per second");
// [embedded_broker]
pub const MAX_CONNECTIONS: Whole = whole(2, 100_000, "connections");
/// In memory: at most 1 GiB also fits a 32-bit gateway's `usize`.
pub const QUEUE_BYTES: Whole = bytes(MIB, GIB);
// [detect]
/// From one second (clocks in sync) to one day: beyond that the check would
/// no longer protect the windows.
pub const MAX_FUTURE_SKEW_MS: Whole = whole(1_000, 86_400_000, "ms");
pub const MAX_STREAMS: Whole = whole(1, 1_000_000, "streams");
/// At least a minute (a stream read once a minute stays in memory).
pub const STREAM_IDLE_MS: Whole = whole(60_000, 2_592_000_000, "ms");
pub const ALERT_STORM_PER_MINUTE: Whole = whole(1, 1_000_000, "alerts");

// Device files.
pub const RAISE_CLEAR_AFTER: Whole = whole(1, 100_000, "consecutive windows");
pub const WINDOW: Span = Span {
    min_ms: 1,
    max_ms: 30 * DAY_MS,
};
/// Detection closes a quiet count window after about `length` times the
/// stream's interval; with event times from 1970 to 9999 (what ingest
/// accepts) that product stays far below `i64::MAX` ms.
pub const WINDOW_READINGS: Whole = whole(1, 10_000, "readings");
pub const ALLOWED_LATENESS: Span = Span {
    min_ms: 0,
    max_ms: DAY_MS,
};
/// From off (every clearing ends the episode) to a month.
pub const HOLD_OFF: Span = Span {
    min_ms: 0,
    max_ms: 30 * DAY_MS,
};
pub const SILENT_AFTER: Span = Span {
    min_ms: SECOND_MS,
    max_ms: 30 * DAY_MS,
};
/// Static levels, in the metric's unit.
pub const LEVEL: Real = real(-1e15, 1e15, "");
/// Rates of change, in the metric's unit per minute (a fall too is positive).
pub const RATE_PER_MIN: Real = above(0.0, 1e15, "per minute");
/// The baseline remembers at most this many windows (`detect::baseline`):
/// a longer warm-up would never end.
pub const WARMUP_WINDOWS: Whole = whole(1, 256, "windows");
pub const ALPHA: Real = real(1e-4, 0.5, "");
pub const Z: Real = above(0.0, 1_000.0, "spreads");
pub const CUSUM_K: Real = real(0.0, 10.0, "spreads");
pub const CUSUM_H: Real = above(0.0, 1_000.0, "spreads");
pub const VOLATILITY_RATIO: Real = above(1.0, 1_000.0, "");
pub const SHAFT_HZ: Real = real(0.01, 10_000.0, "Hz");
pub const SHAFT_RPM: Real = real(0.6, 600_000.0, "rpm");
/// Defect frequencies as multiples of the shaft speed, given or computed.
pub const DEFECT_MULTIPLE: Real = real(0.01, 1_000.0, "times the shaft speed");
pub const BALLS: Whole = whole(3, 1_000, "balls");
/// In any one length unit, the ball smaller than the pitch circle.
pub const BALL_DIAMETER: Real = Real {
    max_excluded: true,
    ..real(1e-6, 1e6, "")
};
pub const PITCH_DIAMETER: Real = above(1e-6, 1e6, "");
pub const CONTACT_ANGLE_DEG: Real = Real {
    max_excluded: true,
    ..real(0.0, 90.0, "degrees")
};
/// Each end of a band `[from_hz, to_hz]`; also from_hz < to_hz.
pub const BAND_HZ: Real = real(0.0, 1e6, "Hz");
/// 1 (above 300 kW) or 2 (15 to 300 kW); named in `detection_vibration.rs`.
pub const ISO_GROUP: Whole = whole(1, 2, "");

/// One range, of any kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    Whole(Whole),
    Real(Real),
    Span(Span),
}

/// Keys and their range. Device keys are written with `M` for the metric
/// table and `F` for a feature.
pub struct Setting {
    pub keys: &'static [&'static str],
    pub range: Range,
}

const fn setting(keys: &'static [&'static str], range: Range) -> Setting {
    Setting { keys, range }
}

/// Every numeric setting.
pub const SETTINGS: &[Setting] = &[
    setting(&["broker.port", "upstream.port"], Range::Whole(PORT)),
    setting(
        &["broker.keepalive_s", "upstream.keepalive_s"],
        Range::Whole(KEEPALIVE_S),
    ),
    setting(
        &[
            "broker.max_payload_bytes",
            "embedded_broker.max_payload_bytes",
        ],
        Range::Whole(MAX_PAYLOAD_BYTES),
    ),
    setting(
        &["broker.reconnect_min_ms", "upstream.reconnect_min_ms"],
        Range::Whole(RECONNECT_MIN_MS),
    ),
    setting(
        &["broker.reconnect_max_ms", "upstream.reconnect_max_ms"],
        Range::Whole(RECONNECT_MAX_MS),
    ),
    setting(&["subscriptions[].qos"], Range::Whole(QOS)),
    setting(&["store.budget_bytes"], Range::Whole(BUDGET_BYTES)),
    setting(
        &["store.flush_interval_ms"],
        Range::Whole(FLUSH_INTERVAL_MS),
    ),
    setting(
        &["store.flush_max_readings"],
        Range::Whole(FLUSH_MAX_READINGS),
    ),
    setting(
        &["store.checkpoint_interval_ms"],
        Range::Whole(CHECKPOINT_INTERVAL_MS),
    ),
    setting(&["store.dead_letter_max"], Range::Whole(DEAD_LETTER_MAX)),
    setting(
        &["store.dead_letter_max_bytes"],
        Range::Whole(DEAD_LETTER_MAX_BYTES),
    ),
    setting(&["store.alerts_max_bytes"], Range::Whole(ALERTS_MAX_BYTES)),
    setting(&["upstream.max_inflight"], Range::Whole(MAX_INFLIGHT)),
    setting(
        &["upstream.aggregate_rate_per_s"],
        Range::Real(AGGREGATE_RATE_PER_S),
    ),
    setting(
        &["embedded_broker.max_connections"],
        Range::Whole(MAX_CONNECTIONS),
    ),
    setting(&["embedded_broker.queue_bytes"], Range::Whole(QUEUE_BYTES)),
    setting(
        &[
            "alerts.raise_after",
            "alerts.clear_after",
            "metrics.M.raise_after",
            "metrics.M.clear_after",
        ],
        Range::Whole(RAISE_CLEAR_AFTER),
    ),
    setting(&["metrics.M.window", "metrics.M.hop"], Range::Span(WINDOW)),
    setting(
        &["metrics.M.window_readings", "metrics.M.hop_readings"],
        Range::Whole(WINDOW_READINGS),
    ),
    setting(
        &["metrics.M.allowed_lateness"],
        Range::Span(ALLOWED_LATENESS),
    ),
    setting(&["metrics.M.silent_after"], Range::Span(SILENT_AFTER)),
    setting(
        &["alerts.hold_off", "metrics.M.hold_off"],
        Range::Span(HOLD_OFF),
    ),
    setting(
        &[
            "metrics.M.limits.F.warning_above",
            "metrics.M.limits.F.alarm_above",
            "metrics.M.limits.F.warning_below",
            "metrics.M.limits.F.alarm_below",
        ],
        Range::Real(LEVEL),
    ),
    setting(
        &[
            "metrics.M.rate.F.warning_rise_per_min",
            "metrics.M.rate.F.alarm_rise_per_min",
            "metrics.M.rate.F.warning_fall_per_min",
            "metrics.M.rate.F.alarm_fall_per_min",
        ],
        Range::Real(RATE_PER_MIN),
    ),
    setting(
        &["metrics.M.baseline.warmup_windows"],
        Range::Whole(WARMUP_WINDOWS),
    ),
    setting(&["metrics.M.baseline.alpha"], Range::Real(ALPHA)),
    setting(
        &["metrics.M.baseline.warning_z", "metrics.M.baseline.alarm_z"],
        Range::Real(Z),
    ),
    setting(&["metrics.M.baseline.cusum_k"], Range::Real(CUSUM_K)),
    setting(&["metrics.M.baseline.cusum_h"], Range::Real(CUSUM_H)),
    setting(
        &["metrics.M.baseline.volatility_ratio"],
        Range::Real(VOLATILITY_RATIO),
    ),
    setting(&["metrics.M.bearing.shaft_hz"], Range::Real(SHAFT_HZ)),
    setting(&["metrics.M.bearing.shaft_rpm"], Range::Real(SHAFT_RPM)),
    setting(
        &[
            "metrics.M.bearing.bpfo",
            "metrics.M.bearing.bpfi",
            "metrics.M.bearing.bsf",
            "metrics.M.bearing.ftf",
        ],
        Range::Real(DEFECT_MULTIPLE),
    ),
    setting(&["metrics.M.bearing.balls"], Range::Whole(BALLS)),
    setting(
        &["metrics.M.bearing.ball_diameter"],
        Range::Real(BALL_DIAMETER),
    ),
    setting(
        &["metrics.M.bearing.pitch_diameter"],
        Range::Real(PITCH_DIAMETER),
    ),
    setting(
        &["metrics.M.bearing.contact_angle_deg"],
        Range::Real(CONTACT_ANGLE_DEG),
    ),
    setting(
        &[
            "metrics.M.waveform.envelope_band_hz",
            "metrics.M.waveform.bands.NAME",
        ],
        Range::Real(BAND_HZ),
    ),
    setting(&["metrics.M.iso10816.group"], Range::Whole(ISO_GROUP)),
    setting(
        &["detect.max_future_skew_ms"],
        Range::Whole(MAX_FUTURE_SKEW_MS),
    ),
    setting(&["detect.max_streams"], Range::Whole(MAX_STREAMS)),
    setting(&["detect.stream_idle_ms"], Range::Whole(STREAM_IDLE_MS)),
    setting(
        &["detect.alert_storm_per_minute"],
        Range::Whole(ALERT_STORM_PER_MINUTE),
    ),
];

impl Whole {
    /// `n`, or why it is refused.
    pub fn check(&self, n: i128) -> Result<u64, String> {
        if n < i128::from(self.min) || n > i128::from(self.max) {
            return Err(format!("{n} is out of range; expected {self}"));
        }
        Ok(n as u64)
    }

    /// Whether `n` is in range; if not, an error at `key`.
    pub(super) fn check_at(
        &self,
        src: &Source,
        key: &str,
        n: u64,
        errors: &mut Vec<ConfigError>,
    ) -> bool {
        match self.check(n.into()) {
            Ok(_) => true,
            Err(e) => {
                errors.push(src.at(key, e));
                false
            }
        }
    }
}

impl Real {
    pub fn contains(&self, x: f64) -> bool {
        let low = if self.min_excluded {
            x > self.min
        } else {
            x >= self.min
        };
        let high = if self.max_excluded {
            x < self.max
        } else {
            x <= self.max
        };
        // NaN fails both comparisons; infinities fail one.
        low && high
    }

    /// `x`, or why it is refused.
    pub fn check(&self, x: f64) -> Result<f64, String> {
        if !self.contains(x) {
            return Err(format!(
                "{} is out of range; expected {self}",
                format_real(x)
            ));
        }
        Ok(x)
    }
}

impl Span {
    /// Parse a duration and check its range: milliseconds, or why not.
    pub fn parse(&self, text: &str) -> Result<i64, String> {
        let ms = parse_duration_ms(text)?;
        if ms < self.min_ms || ms > self.max_ms {
            return Err(format!("{text:?} is out of range; expected {self}"));
        }
        Ok(ms)
    }
}

/// Bytes in the largest binary unit that divides them ("64 MiB").
fn format_bytes(n: u64) -> String {
    for (unit, factor) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n != 0 && n % factor == 0 {
            return format!("{} {unit}", n / factor);
        }
    }
    format!("{n} bytes")
}

/// A bound as people write it: 1e15 rather than 1000000000000000.
fn format_real(x: f64) -> String {
    if x != 0.0 && !(1e-3..1e7).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

fn with_unit(text: String, unit: &str) -> String {
    if unit.is_empty() {
        text
    } else {
        format!("{text} {unit}")
    }
}

impl fmt::Display for Whole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.unit {
            Unit::Bytes => format!("{} to {}", format_bytes(self.min), format_bytes(self.max)),
            Unit::Plain(unit) => with_unit(format!("{} to {}", self.min, self.max), unit),
        };
        f.write_str(&text)
    }
}

impl fmt::Display for Real {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (min, max) = (format_real(self.min), format_real(self.max));
        let text = match (self.min_excluded, self.max_excluded) {
            (false, false) => format!("{min} to {max}"),
            (true, false) => format!("above {min} and at most {max}"),
            (false, true) => format!("{min} or more and below {max}"),
            (true, true) => format!("above {min} and below {max}"),
        };
        f.write_str(&with_unit(text, self.unit))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let min = if self.min_ms == 0 {
            "0s".to_string()
        } else {
            format_ms(self.min_ms)
        };
        write!(f, "a duration from {min} to {}", format_ms(self.max_ms))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Whole(r) => r.fmt(f),
            Range::Real(r) => r.fmt(f),
            Range::Span(r) => r.fmt(f),
        }
    }
}
