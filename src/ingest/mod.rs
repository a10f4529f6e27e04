//! Ingest: MQTT publishes from the local broker in; batches of readings and
//! dead letters committed to the store out. QoS 1 messages are acknowledged
//! only after the batch holding them is on disk.
//!
//! Two tasks: `mqtt::run` owns the rumqttc event loop (and decodes, a pure
//! step), `writer::run` group-commits to the store and sends the acks. Between
//! them a bounded channel, and a memory budget: every decoded message holds
//! permits for its size until its batch is committed. When the writer cannot
//! keep up, or the store budget is used up, the channel or the memory budget
//! runs out, the event-loop task stops reading from the socket, and the broker
//! holds the messages (backpressure, bounded memory).

pub mod decode;
mod mqtt;
mod oversized;
pub(crate) mod ratelimit;
pub mod route;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use mqtt::{connect, run as run_mqtt, MqttError, Task as MqttTask};
pub use writer::{run as run_writer, Task as WriterTask, WriterConfig};

use route::Outcome;

/// Messages between the event-loop task and the writer.
pub const INBOUND_CAPACITY: usize = 256;

/// Decoded bytes that ingest may hold in memory at once: the inbound queue,
/// the batch being filled and the batch being committed.
pub const MEMORY_BUDGET_BYTES: usize = 64 << 20;

/// Permits of the memory budget, one per byte.
#[derive(Clone)]
pub struct MemoryBudget(Arc<Semaphore>);

impl MemoryBudget {
    pub fn new(bytes: usize) -> Self {
        MemoryBudget(Arc::new(Semaphore::new(bytes)))
    }

    /// Wait until `bytes` fit (a message larger than the whole budget takes all of it).
    async fn acquire(&self, bytes: usize, total: usize) -> OwnedSemaphorePermit {
        let n = bytes.clamp(1, total).min(u32::MAX as usize) as u32;
        // The semaphore is never closed, so this cannot fail.
        self.0
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the memory budget is never closed")
    }

    fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// A packet id to acknowledge, and the connection it arrived on: acks meant
/// for an earlier connection are dropped (the broker redelivers those
/// messages, possibly reusing the id for another one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub connection: u64,
    pub pkid: u16,
}

/// One MQTT message on its way to the store.
#[derive(Debug)]
pub struct Inbound {
    pub outcome: Outcome,
    /// Set for QoS 1 messages: acknowledge once stored.
    pub ack: Option<AckToken>,
    /// Its share of the memory budget, released when its batch is committed.
    pub memory: OwnedSemaphorePermit,
}

/// Live ingest figures (this process only; persistent counters are in the store).
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub messages: AtomicU64,
    pub readings_stored: AtomicU64,
    pub rejected: AtomicU64,
    pub commits: AtomicU64,
    /// Decoded bytes held in memory (queue and batches), and their peak.
    pub held_bytes: AtomicU64,
    pub held_bytes_peak: AtomicU64,
    /// Incremented at each connection to the broker.
    pub connection: AtomicU64,
    pub store_full: AtomicBool,
    /// Times ingest paused because the store budget was used up.
    pub full_pauses: AtomicU64,
    pub connected: AtomicBool,
    /// The broker accepted every subscription (since the last connect).
    pub subscribed: AtomicBool,
    pub reconnects: AtomicU64,
    /// Packets refused for their size (over broker.max_payload_bytes plus
    /// the largest topic and header), each of which broke the connection.
    pub oversized_packets: AtomicU64,
}

impl IngestMetrics {
    fn set_held(&self, budget: &MemoryBudget) {
        let held = MEMORY_BUDGET_BYTES.saturating_sub(budget.available()) as u64;
        self.held_bytes.store(held, Ordering::Relaxed);
        self.held_bytes_peak.fetch_max(held, Ordering::Relaxed);
    }
}
