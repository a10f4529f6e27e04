//! The types passed between stages: a sensor `Reading` (in from ingest, out of
//! the store to detection) and the `DeadLetter` that records a rejected payload.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Event time and receive time both use it.
pub type EpochMs = i64;

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
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Malformed,
        Reason::Schema,
        Reason::NotFinite,
        Reason::TooLarge,
        Reason::TopicMismatch,
        Reason::UnsafeName,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Schema => "schema",
            Reason::NotFinite => "not_finite",
            Reason::TooLarge => "too_large",
            Reason::TopicMismatch => "topic_mismatch",
            Reason::UnsafeName => "unsafe_name",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
