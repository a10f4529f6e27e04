//! The sensor-fleet simulator (`vigil simulate`): options in; temperature
//! and vibration readings of a fleet of pumps, with injected faults, out to
//! an MQTT broker, paced in wall time or flat out, on an event-time clock
//! that may run faster than the wall clock.
//!
//! The signals and the faults are plain functions of event time and a
//! seeded random stream (`signals`, `faults`), the fleet turns a tick
//! number into messages (`fleet`), and the run loop below paces the ticks
//! and hands the messages to a few MQTT connections (`publish`).

mod faults;
mod fleet;
mod options;
mod publish;
pub mod report;
mod rng;
pub mod signals;

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

pub use faults::{
    bearing_impulse_g, bearing_velocity_mm_s, garbage_payload, overheat_c, parse_duration,
    parse_faults, Fault, FaultKind, BEARING_DOUBLING_MIN, BEARING_MAX_MM_S, BEARING_ONSET_MM_S,
    GARBAGE_KINDS, IMPULSE_MAX_G, IMPULSE_ONSET_G, OVERHEAT_C_PER_MIN, OVERHEAT_MAX_RISE_C,
};
pub use fleet::{Fleet, Message};
pub use options::{
    device_name, format_duration, parse_broker, topic_of, Options, Plan, RawOptions, Vibration,
    DEFAULT_PREFIX, DEFAULT_TOPIC,
};
pub use rng::Rng;

use crate::model::{wall_ms, EpochMs};
use publish::Publisher;

/// The metric names of the two streams of every device.
pub const TEMPERATURE: &str = "temperature";
pub const VIBRATION: &str = "vibration";

/// How long the end of a run waits for the broker to acknowledge what was sent.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("cannot connect to the broker at {broker}: {reason}")]
    Connect { broker: String, reason: String },
    #[error("lost the connection to the broker at {broker}: {reason}")]
    ConnectionLost { broker: String, reason: String },
}

/// A fault as it began.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Injection {
    /// Scheduled wall offset from the start of the run (tick / rate).
    #[serde(rename = "wall_s", serialize_with = "seconds")]
    pub wall: Duration,
    /// Event time of the first reading it affects.
    pub event_ms: EpochMs,
    pub device: String,
    /// The metric it affects; `*` for both.
    pub metric: String,
    pub kind: FaultKind,
    pub detail: String,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Well-formed readings handed to the broker connections.
    pub readings: u64,
    /// Malformed payloads (garbage faults) handed to them.
    pub garbage: u64,
    /// Both: every message published.
    pub messages: u64,
    /// Of those, how many the broker did not acknowledge (QoS 1) or were not
    /// written (QoS 0) before the end of the run's wait (`ACK_WAIT`).
    pub unconfirmed: u64,
    /// Ticks run (each publishes one reading per stream of every device that is not silent).
    pub ticks: u64,
    /// Wall time from the first tick to the last acknowledgement.
    pub elapsed: Duration,
    pub injections: Vec<Injection>,
    /// Event times of the first and the last tick that published anything.
    pub first_event_ms: Option<EpochMs>,
    pub last_event_ms: Option<EpochMs>,
    /// Ended by the stop signal rather than by its duration or count.
    pub stopped: bool,
}

impl Summary {
    /// Confirmed messages per wall second.
    pub fn messages_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.messages - self.unconfirmed) as f64 / secs
        } else {
            0.0
        }
    }
}

/// Completes when `stop` turns true; never, if its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run the simulation until its duration or count is reached, or `stop`
/// turns true; then wait (at most `ACK_WAIT`) for the broker to
/// acknowledge what was sent and disconnect. Each fault is sent to
/// `injections` as it begins (and listed in the summary).
pub async fn run(
    opts: Options,
    injections: Option<mpsc::UnboundedSender<Injection>>,
    mut stop: watch::Receiver<bool>,
) -> Result<Summary, SimError> {
    let plan = opts.plan(wall_ms())?;
    let mut fleet = Fleet::new(&opts, &plan);
    let max_payload = match opts.vibration {
        // f32 samples take at most 5 bytes each in CBOR.
        Vibration::Waveform { block_samples, .. } => block_samples * 5,
        Vibration::Rms => 0,
    };
    let mut publisher = Publisher::connect(&plan, &opts.client_id, max_payload).await?;

    let started = Instant::now();
    let mut summary = Summary::default();
    let result = publish_ticks(
        &plan,
        &mut fleet,
        &mut publisher,
        injections.as_ref(),
        &mut stop,
        &mut summary,
    )
    .await;
    // Also after an error: the other connections' acks are counted and
    // every connection is closed (its task ended).
    let delivery = publisher.finish(ACK_WAIT).await;
    result?;
    summary.unconfirmed = delivery.queued - delivery.confirmed;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The tick loop of `run`: paces the ticks, publishes their messages and
/// counts them in `summary`, until the run's end or `stop`.
async fn publish_ticks(
    plan: &Plan,
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    injections: Option<&mpsc::UnboundedSender<Injection>>,
    stop: &mut watch::Receiver<bool>,
    summary: &mut Summary,
) -> Result<(), SimError> {
    let started = Instant::now();
    // Burst: a tick missed (the broker was slow) is made up at once, so
    // event time stays in step with the wall clock (a fault scheduled at 30 s
    // comes at 30 s, and a run of known length ends at the present). Delay
    // would shift every later tick, and the run would end in the past and
    // last longer than asked. The burst is bounded by the clients' queues.
    let mut pacer = (!plan.flat_out).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate_hz));
        i.set_missed_tick_behavior(MissedTickBehavior::Burst);
        i
    });
    let mut out = Vec::with_capacity(2 * plan.devices);
    let mut began = Vec::new();
    let count_reached = |s: &Summary| plan.count.is_some_and(|c| s.messages >= c);
    let mut tick: u64 = 0;
    while plan.tick_limit.is_none_or(|n| tick < n) && !count_reached(summary) {
        match pacer.as_mut() {
            Some(pacer) => tokio::select! {
                biased;
                _ = stopped(stop) => {
                    summary.stopped = true;
                    return Ok(());
                }
                _ = pacer.tick() => {}
            },
            None => {
                if *stop.borrow() {
                    summary.stopped = true;
                    return Ok(());
                }
                if plan.duration.is_some_and(|d| started.elapsed() >= d) {
                    return Ok(());
                }
                // Flat out, a publish to a queue with room does not yield:
                // let the event loops (and the stop signal) in once a tick.
                tokio::task::yield_now().await;
            }
        }
        publisher.check().await?;
        fleet.tick(tick, &mut out, &mut began);
        summary.ticks = tick + 1;
        for injection in began.drain(..) {
            if let Some(tx) = injections {
                // The receiver may have gone; the summary still lists it.
                let _ = tx.send(injection.clone());
            }
            summary.injections.push(injection);
        }
        let t = plan.event_ms(tick);
        for m in out.drain(..) {
            if count_reached(summary) {
                return Ok(());
            }
            let garbage = m.garbage;
            tokio::select! {
                biased;
                _ = stopped(stop) => {
                    summary.stopped = true;
                    return Ok(());
                }
                sent = publisher.publish(m) => sent?,
            }
            summary.messages += 1;
            if garbage {
                summary.garbage += 1;
            } else {
                summary.readings += 1;
            }
            summary.first_event_ms.get_or_insert(t);
            summary.last_event_ms = Some(t);
        }
        tick += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
