//! What the latency measurement reads off: each outbox message's arrival at
//! the upstream subscriber minus its `end_ms`, ingest's and detection's
//! counters sampled while publishing, and from both where an alert's time went.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::Publish;

use vigil::detect::DetectMetrics;
use vigil::ingest::IngestMetrics;
use vigil::model::EpochMs;

use crate::brokers::is_entry;
use crate::helpers::{percentile, wall_ms};

/// Arrival − end_ms, in ms, of the outbox messages of one kind.
pub struct Latencies {
    pub alerts: Vec<f64>,
    pub raised: Vec<f64>,
    pub cleared: Vec<f64>,
    pub aggregates: Vec<f64>,
    pub alert_messages: u64,
    pub alert_ids: u64,
    /// First arrival of each alert: device, end_ms, arrival.
    pub firsts: Vec<(String, EpochMs, f64)>,
}

/// The MQTT hop alone, in ms, sorted: arrival at a plain subscriber of the
/// sensors' broker minus the publish time each reading carries (`"time"`).
pub fn hop_latencies(tapped: &[(f64, Publish)]) -> Vec<f64> {
    let mut hop: Vec<f64> = tapped
        .iter()
        .filter_map(|(at, p)| {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).ok()?;
            Some(at - v["time"].as_f64()?)
        })
        .collect();
    hop.sort_by(f64::total_cmp);
    hop
}

pub fn latencies(got: &[(f64, Publish)]) -> Latencies {
    let mut l = Latencies {
        alerts: Vec::new(),
        raised: Vec::new(),
        cleared: Vec::new(),
        aggregates: Vec::new(),
        alert_messages: 0,
        alert_ids: 0,
        firsts: Vec::new(),
    };
    let mut ids = std::collections::HashSet::new();
    for (at, p) in got.iter().filter(|(_, p)| is_entry(p)) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
            eprintln!("[bench] undecodable message on {}", p.topic);
            continue;
        };
        let Some(end) = v["end_ms"].as_f64() else {
            continue;
        };
        let ms = at - end;
        if v["type"] == "alert" {
            l.alert_messages += 1;
            if ids.insert(v["id"].as_str().unwrap_or("").to_string()) {
                l.alerts.push(ms);
                let device = v["device"].as_str().unwrap_or("").to_string();
                l.firsts.push((device, end as EpochMs, *at));
                match v["event"].as_str() {
                    Some("raised") => l.raised.push(ms),
                    Some("cleared") => l.cleared.push(ms),
                    _ => {}
                }
            }
        } else {
            l.aggregates.push(ms);
        }
    }
    l.alert_ids = ids.len() as u64;
    for v in [
        &mut l.alerts,
        &mut l.raised,
        &mut l.cleared,
        &mut l.aggregates,
    ] {
        v.sort_by(f64::total_cmp);
    }
    l
}

/// Ingest's and detection's progress, sampled every 0.5 ms on a thread of
/// its own: (wall-clock ms, readings committed by ingest, detection cursor),
/// at each change.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, u64, u64)>>,
}

impl Sampler {
    pub fn start(ingest: Arc<IngestMetrics>, detect: Arc<DetectMetrics>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut last = (u64::MAX, u64::MAX);
                while !done.load(Relaxed) {
                    let now = (
                        ingest.readings_stored.load(Relaxed),
                        detect.cursor.load(Relaxed),
                    );
                    if now != last {
                        samples.push((wall_ms(), now.0, now.1));
                        last = now;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                samples
            })
            .expect("spawn the sampler");
        Sampler { stop, thread }
    }

    pub fn finish(self) -> Vec<(f64, u64, u64)> {
        self.stop.store(true, Relaxed);
        self.thread.join().expect("the sampler thread")
    }
}

/// Where each alert's time went: publish → committed by ingest, → committed
/// by detection, → at the upstream subscriber (ms, sorted). Reading `i` of
/// the publisher is reading `i` of the store (one client, in order, into a
/// fresh store; checked by the caller).
pub fn breakdown(
    samples: &[(f64, u64, u64)],
    marks: &HashMap<(String, EpochMs), u64>,
    firsts: &[(String, EpochMs, f64)],
) -> [Vec<f64>; 3] {
    let mut parts: [Vec<f64>; 3] = Default::default();
    for (device, end, at) in firsts {
        let Some(&i) = marks.get(&(device.clone(), *end)) else {
            continue;
        };
        let stored = samples.get(samples.partition_point(|s| s.1 <= i));
        let detected = samples.get(samples.partition_point(|s| s.2 <= i));
        if let (Some(stored), Some(detected)) = (stored, detected) {
            parts[0].push(stored.0 - *end as f64);
            parts[1].push(detected.0 - stored.0);
            parts[2].push(at - detected.0);
        }
    }
    for p in &mut parts {
        p.sort_by(f64::total_cmp);
    }
    parts
}

pub fn spread(v: &[f64]) -> String {
    format!(
        "p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1} ms",
        percentile(v, 50.0),
        percentile(v, 90.0),
        percentile(v, 99.0),
        v.last().copied().unwrap_or(f64::NAN)
    )
}
