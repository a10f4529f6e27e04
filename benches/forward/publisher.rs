//! Paced sensors: one MQTT client publishing a fixed number of readings
//! per second at QoS 1 on its own thread, every reading stamped with its
//! publish time, optionally every 100th of a stream above the limit (the
//! latency measurements here and in benches/e2e; the e2e benchmark's
//! steady loads).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use vigil::model::EpochMs;

use crate::common::Noise;
use crate::helpers::{secs, spawn_with_runtime, wait_for_async};
use crate::machine::thread_cpu;
use crate::PATIENCE;

/// Burst spacing of the publisher.
const TICK: Duration = Duration::from_millis(2);
/// Every this many readings of a stream, one is above the limit.
pub const SPIKE_EVERY: u64 = 100;

/// What the sensors send: `devices` devices (`sensor-00`, ...) with
/// `metrics` each, on `plant/l1/{device}/{metric}`, streams in turn.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate_per_s: f64,
    pub devices: u64,
    pub metrics: &'static [&'static str],
    /// Every `SPIKE_EVERY`th reading of a stream at 100 (above the limit),
    /// the others around 50 (±2); without spikes, a temperature around 50
    /// and any other metric around 2.0 (±0.2, e.g. velocity RMS in mm/s).
    pub spikes: bool,
    pub seconds: f64,
}

/// What the sensor side did.
pub struct Published {
    pub readings: u64,
    /// Readings above the limit (each raises an alert).
    pub spikes: u64,
    /// Spikes followed by a normal reading of the same device (each clears one).
    pub clears: u64,
    pub acked: u64,
    pub took: Duration,
    /// Furthest behind its schedule the publisher fell.
    pub behind: Duration,
    /// The publisher thread's CPU seconds, read just before it ends.
    pub cpu: f64,
    /// (device, event time) → index among the readings published, of every
    /// reading that raises or clears an alert.
    pub marks: HashMap<(String, EpochMs), u64>,
}

/// Publish `seconds` × `rate_per_s` readings at QoS 1 from one client on
/// its own thread: the streams in turn, bursts every 2 ms, each reading
/// stamped with the wall-clock time it is handed to the client.
pub fn spawn_publisher(
    port: u16,
    load: Load,
    tid_out: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Published> {
    let Load {
        rate_per_s,
        devices,
        metrics,
        spikes: with_spikes,
        seconds,
    } = load;
    let streams = devices * metrics.len() as u64;
    spawn_with_runtime("bench-pub", move |tid| {
        tid_out.store(tid, Relaxed);
        async move {
            let mut opts = MqttOptions::new(format!("bench-pub-{port}"), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(30))
                .set_inflight(1000)
                .set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
            let acked = Arc::new(AtomicU64::new(0));
            let connected = Arc::new(AtomicBool::new(false));
            let closing = Arc::new(AtomicBool::new(false));
            let (a, c, z) = (acked.clone(), connected.clone(), closing.clone());
            let poller = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            a.fetch_add(1, Relaxed);
                        }
                        Ok(Event::Incoming(Packet::ConnAck(_))) => c.store(true, Relaxed),
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) if z.load(Relaxed) => break,
                        Err(e) => {
                            eprintln!("[bench] publisher: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            wait_for_async(
                "the publisher is connected",
                Duration::from_secs(10),
                || connected.load(Relaxed),
            )
            .await;

            let total = (seconds * rate_per_s) as u64;
            let mut rng = Noise(0x2545_F491_4F6C_DD1D);
            let mut count = vec![0u64; streams as usize];
            let mut last_was_spike = vec![false; streams as usize];
            let mut marks = HashMap::new();
            let (mut i, mut spikes, mut behind) = (0u64, 0u64, Duration::ZERO);
            let start = tokio::time::Instant::now();
            let mut tick = 0u32;
            while i < total {
                tick += 1;
                tokio::time::sleep_until(start + TICK * tick).await;
                let elapsed = start.elapsed();
                let due = ((secs(elapsed) * rate_per_s) as u64).min(total);
                if i < due {
                    behind = behind.max(
                        elapsed.saturating_sub(Duration::from_secs_f64(i as f64 / rate_per_s)),
                    );
                }
                while i < due {
                    // Stream s: device s / metrics, metric s % metrics.
                    let s = i % streams;
                    let d = s / metrics.len() as u64;
                    let metric = metrics[(s % metrics.len() as u64) as usize];
                    let c = count[s as usize];
                    count[s as usize] += 1;
                    // Streams spike at different moments: stream s at its
                    // readings 2s + 1, 2s + 1 + 100, ...
                    let spike = with_spikes && c % SPIKE_EVERY == (2 * s + 1) % SPIKE_EVERY;
                    let clears = std::mem::replace(&mut last_was_spike[s as usize], spike);
                    let value = if spike {
                        spikes += 1;
                        100.0
                    } else if with_spikes || metric == "temperature" {
                        50.0 + 4.0 * (rng.uniform() - 0.5)
                    } else {
                        2.0 + 0.4 * (rng.uniform() - 0.5)
                    };
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis());
                    let payload = format!("{{\"time\": {now}, \"value\": {value:.3}}}");
                    let device = format!("sensor-{d:02}");
                    if spike || clears {
                        marks.insert((device.clone(), now as EpochMs), i);
                    }
                    client
                        .publish(
                            format!("plant/l1/{device}/{metric}"),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await
                        .expect("queue a publish");
                    i += 1;
                }
            }
            let took = start.elapsed();
            wait_for_async("every reading is acknowledged", PATIENCE, || {
                acked.load(Relaxed) >= total
            })
            .await;
            closing.store(true, Relaxed);
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
            // Each spike is cleared by the device's next reading, if it had one.
            let clears = spikes - last_was_spike.iter().filter(|&&b| b).count() as u64;
            Published {
                readings: total,
                spikes,
                clears,
                acked: acked.load(Relaxed),
                took,
                behind,
                cpu: thread_cpu(tid),
                marks,
            }
        }
    })
}
