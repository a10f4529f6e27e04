//! The flat-out load of the throughput measurement: readings encoded up
//! front, then published at QoS 1 by one rumqttc client on a thread of its
//! own as fast as the broker acknowledges them.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::common::Noise;
use crate::helpers::spawn_with_runtime;
use crate::machine::thread_cpu;
use crate::PATIENCE;

/// Publishes the client keeps unacknowledged, at most (the broker acks a
/// QoS 1 publish as soon as it has routed it).
pub const WINDOW: u16 = 10_000;
/// 2026-01-01T00:00:00Z: event time of every stream's first reading.
const T0_MS: i64 = 1_767_225_600_000;

/// `n` readings of `devices` devices × `metrics`, streams in turn, as
/// (topic, JSON payload); each stream's readings 10 ms apart in event time.
pub fn readings(n: u64, devices: u64, metrics: &[&str]) -> Vec<(String, Vec<u8>)> {
    let streams = devices * metrics.len() as u64;
    let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            let s = i % streams;
            let metric = metrics[(s % metrics.len() as u64) as usize];
            let (level, spread) = if metric == "temperature" {
                (50.0, 4.0)
            } else {
                (2.0, 0.4)
            };
            let value = level + spread * (rng.uniform() - 0.5);
            let ts = T0_MS + (i / streams) as i64 * 10;
            (
                format!("plant/l1/sensor-{:02}/{metric}", s / metrics.len() as u64),
                format!("{{\"value\": {value:.3}, \"ts\": {ts}}}").into_bytes(),
            )
        })
        .collect()
}

/// What the publisher did.
pub struct Burst {
    pub acked: u64,
    /// Just before the first publish (after CONNACK).
    pub started: Instant,
    /// From `started` to the last PUBACK.
    pub took: Duration,
    /// The publisher thread's CPU seconds.
    pub cpu: f64,
}

/// Publish `messages` at QoS 1 from a rumqttc client with `WINDOW`
/// publishes in flight, on a thread and runtime of its own; ends at the
/// last PUBACK.
pub fn spawn_burst(port: u16, messages: Vec<(String, Vec<u8>)>) -> std::thread::JoinHandle<Burst> {
    spawn_with_runtime("bench-burst", move |tid| async move {
        let n = messages.len() as u64;
        let mut opts = MqttOptions::new(format!("bench-burst-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(WINDOW)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, usize::from(WINDOW));
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("the publisher cannot connect: {e}"),
            }
        }
        let started = Instant::now();
        // The client's requests and the event loop share this thread: the
        // sender fills the request queue, the loop below writes and reads.
        let sender = tokio::spawn(async move {
            for (topic, payload) in messages {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            client
        });
        let mut acked = 0;
        while acked < n && started.elapsed() < PATIENCE {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("[bench] publisher: {e}");
                    break;
                }
                Err(_) => {
                    eprintln!("[bench] publisher: no progress for 10 s");
                    break;
                }
            }
        }
        let took = started.elapsed();
        if let Ok(client) = sender.await {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        }
        Burst {
            acked,
            started,
            took,
            cpu: thread_cpu(tid),
        }
    })
}
