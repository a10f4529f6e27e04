//! The types passed between stages: a sensor `Reading` (in from ingest, out of
//! the store to detection), the `DeadLetter` that records a rejected payload,
//! and what detection produces: `AlertEvent`s and per-window `Aggregate`s.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Event time and receive time both use it.
pub type EpochMs = i64;

/// A length of time for people: seconds under 2 minutes, minutes under 2
/// hours, hours under 2 days, then days.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds;
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} days", s / 86_400.0)
    }
}

/// The wall clock now, in milliseconds since the Unix epoch (0 if the clock
/// is before 1970).
pub fn wall_ms() -> EpochMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as EpochMs)
        .unwrap_or(0)
}

/// `ms` as RFC 3339 in UTC, with milliseconds only when there are any.
pub fn rfc3339(ms: EpochMs) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let formatted = if ms % 1000 == 0 {
        t.format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
    } else {
        t.format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
    };
    formatted.unwrap_or_else(|_| ms.to_string())
}

/// One observation of one (device, metric) stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Device name, safe to embed in an MQTT topic level.
    #[serde(rename = "d")]
    pub device: String,
    /// Metric name, safe to embed in an MQTT topic level.
    #[serde(rename = "m")]
    pub metric: String,
    /// Event time: from the payload, or the receive time when the payload has none.
    #[serde(rename = "t")]
    pub time_ms: EpochMs,
    #[serde(rename = "v")]
    pub value: Value,
}

/// What a reading carries: one number, or a block of evenly spaced samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    #[serde(rename = "s")]
    Scalar(f64),
    #[serde(rename = "w")]
    Waveform(Waveform),
}

/// A block of samples taken at a fixed rate, starting at the reading's event time.
///
/// Samples are stored as `f32`: accelerometer ADCs deliver 16 to 24 bits, which
/// `f32` holds exactly, and it halves the size of the buffered log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waveform {
    #[serde(rename = "r")]
    pub sample_rate_hz: f64,
    #[serde(rename = "x")]
    pub samples: Vec<f32>,
}

impl Reading {
    /// Bytes this reading occupies in memory (struct plus heap), used to bound
    /// what ingest holds.
    pub fn approx_bytes(&self) -> usize {
        let samples = match &self.value {
            Value::Scalar(_) => 0,
            Value::Waveform(w) => w.samples.capacity() * std::mem::size_of::<f32>(),
        };
        std::mem::size_of::<Reading>() + self.device.capacity() + self.metric.capacity() + samples
    }
}

/// A payload vigil could not turn into readings, kept so an operator can see
/// what was sent and why it was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    /// The raw payload (only its first 64 KiB when it was oversized).
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
    /// Size of the payload as received (may exceed `payload.len()`).
    pub payload_len: usize,
    pub reason: Reason,
    /// Human-readable detail (parser message, offending name, ...).
    pub detail: String,
    pub received_ms: EpochMs,
}

/// Why a payload was rejected. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not valid JSON, CBOR or decimal text.
    Malformed,
    /// Well-formed, but a field is missing or has the wrong type.
    Schema,
    /// NaN or infinite value, or a non-positive sample rate.
    NotFinite,
    /// Payload larger than `broker.max_payload_bytes`.
    TooLarge,
    /// Topic does not fit the subscription's template.
    TopicMismatch,
    /// Device or metric name with characters unsafe in an MQTT topic.
    UnsafeName,
    /// Event time further ahead of the gateway's clock than
    /// `detect.max_future_skew_ms`: the sensor's clock is wrong.
    ClockSkew,
    /// A device no device file names, with `detect.devices_known_only`.
    UnknownDevice,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Malformed,
        Reason::Schema,
        Reason::NotFinite,
        Reason::TooLarge,
        Reason::TopicMismatch,
        Reason::UnsafeName,
        Reason::ClockSkew,
        Reason::UnknownDevice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Schema => "schema",
            Reason::NotFinite => "not_finite",
            Reason::TooLarge => "too_large",
            Reason::TopicMismatch => "topic_mismatch",
            Reason::UnsafeName => "unsafe_name",
            Reason::ClockSkew => "clock_skew",
            Reason::UnknownDevice => "unknown_device",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alert severity, ordered: an alert escalates from warning to alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Alarm,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Alarm => "alarm",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step in an alert's life: raised, escalated (warning to alarm), cleared,
/// and reopened (raised again within the hold-off of its clearing: the same
/// episode, the same id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Raised,
    Escalated,
    Cleared,
    Reopened,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Raised => "raised",
            AlertKind::Escalated => "escalated",
            AlertKind::Cleared => "cleared",
            AlertKind::Reopened => "reopened",
        }
    }
}

/// One alert transition, out of detection into the outbox. Every transition
/// of one alert carries the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Stable across runs over the same readings:
    /// `device/metric/detector/feature/raised_ms`.
    pub id: String,
    pub kind: AlertKind,
    pub device: String,
    pub metric: String,
    /// `limit`, `iso10816`, `rate`, `baseline`, `drift`, `volatility` or `silence`.
    pub detector: String,
    pub feature: String,
    /// Severity after this transition (for `cleared`: the highest it reached).
    pub severity: Severity,
    /// Event time the alert was raised: the end of the window that raised it.
    pub raised_ms: EpochMs,
    /// Event time it was cleared (only on `cleared`).
    pub cleared_ms: Option<EpochMs>,
    /// The window that caused this transition.
    pub window_start_ms: EpochMs,
    pub window_end_ms: EpochMs,
    /// The feature's value in that window.
    pub value: f64,
    /// The limit it crossed (static limits, ISO zones, rate limits).
    pub limit: Option<f64>,
    /// The learned level and spread it was compared with (learned baseline).
    pub baseline: Option<(f64, f64)>,
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// The explanation in one sentence.
    pub message: String,
}

/// The features of one closed window of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub device: String,
    pub metric: String,
    pub start_ms: EpochMs,
    pub end_ms: EpochMs,
    /// Feature name → value; features undefined for the window (e.g. the
    /// standard deviation of one reading) are absent.
    pub features: std::collections::BTreeMap<String, f64>,
    /// Detection windows summarised: 1, or more once the store has merged
    /// old aggregates into coarser ones to make room.
    #[serde(default = "one")]
    pub windows: u32,
}

fn one() -> u32 {
    1
}

/// Encode `Vec<u8>` as a CBOR byte string rather than an array of integers.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        // `byte_buf`, not `bytes`: ciborium serves borrowed bytes only up to its scratch size.
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(human_duration(0.5), "0.5 s");
        assert_eq!(human_duration(119.0), "119.0 s");
        assert_eq!(human_duration(120.0), "2.0 min");
        assert_eq!(human_duration(7200.0), "2.0 h");
        assert_eq!(human_duration(86_400.0), "24.0 h");
        assert_eq!(human_duration(3.0 * 86_400.0), "3 days");
        assert_eq!(human_duration(8000.0 * 365.0 * 86_400.0), "2920000 days");
    }
}
