//! Ingest: MQTT publishes from the local broker in; batches of readings and
//! dead letters committed to the store out. QoS 1 messages are acknowledged
//! only after the batch holding them is on disk.
//!
//! Two tasks: `mqtt::run` owns the rumqttc event loop (and decodes, a pure
//! step), `writer::run` group-commits to the store and sends the acks. Between
//! them a bounded channel: when the writer cannot keep up, or the store budget
//! is used up, the channel fills, the event-loop task stops reading from the
//! socket, and the broker holds the messages (backpressure, bounded memory).

pub mod decode;
mod mqtt;
mod ratelimit;
pub mod route;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use mqtt::{connect, run as run_mqtt, MqttError, Task as MqttTask};
pub use writer::{run as run_writer, Task as WriterTask, WriterConfig};

use route::Outcome;

/// Messages between the event-loop task and the writer.
pub const INBOUND_CAPACITY: usize = 256;

/// One MQTT message on its way to the store.
#[derive(Debug)]
pub struct Inbound {
    pub outcome: Outcome,
    /// Packet id to acknowledge once stored (QoS 1 only).
    pub ack: Option<u16>,
}

/// Live ingest figures (this process only; persistent counters are in the store).
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub messages: AtomicU64,
    pub readings_stored: AtomicU64,
    pub rejected: AtomicU64,
    pub commits: AtomicU64,
    /// Bytes of readings held in memory, waiting for a commit.
    pub pending_bytes: AtomicU64,
    pub pending_bytes_peak: AtomicU64,
    pub store_full: AtomicBool,
    pub connected: AtomicBool,
    /// The broker accepted every subscription (since the last connect).
    pub subscribed: AtomicBool,
    pub reconnects: AtomicU64,
}

impl IngestMetrics {
    fn set_pending(&self, bytes: u64) {
        self.pending_bytes.store(bytes, Ordering::Relaxed);
        self.pending_bytes_peak.fetch_max(bytes, Ordering::Relaxed);
    }
}
