//! Measurement 2, latency: from a sensor's publish to the alert's arrival
//! at a subscriber of the upstream broker, through the vigil process, at a
//! steady 1,000 readings/s.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, Detection};
use crate::brokers::{Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::counts::{until_received, Counts};
use crate::helpers::{percentile, secs};
use crate::publisher::{spawn_publisher, Load, SPIKE_EVERY};
use crate::timings::{hop_latencies, latencies, spread};
use crate::{scratch_dir, Tools};

const DEVICES: u64 = 100;
const RATE_PER_S: f64 = 1_000.0;

pub fn latency(tools: &Tools, scratch: &Path, rep: &mut Report) {
    let seconds = rep.scale(60) as f64;
    eprintln!("[bench] latency: {RATE_PER_S} readings/s for {seconds} s");
    let dir = scratch_dir(scratch, "latency");
    let local = Broker::start(&tools.mosquitto, dir.path());
    let upstream = Broker::start(&tools.mosquitto, dir.path());
    let sub = Subscriber::start(upstream.port);
    // A plain subscriber beside vigil on the local broker: the MQTT hop alone.
    let tap = Subscriber::start(local.port);
    let agent = Agent::start(dir.path(), local.port, upstream.port, Detection::OneReading);
    let before = agent.usage();
    let load = Load {
        rate_per_s: RATE_PER_S,
        devices: DEVICES,
        metrics: &["temperature"],
        spikes: true,
        seconds,
    };
    let published = spawn_publisher(local.port, load, Arc::new(AtomicU64::new(0)))
        .join()
        .expect("the publisher thread");
    let settled = agent.wait_for(
        "every reading is through and forwarded",
        Duration::from_secs(30),
        |m| m.settled(published.readings),
    );
    let after = agent.usage();
    let m = agent.metrics();
    until_received(&sub, m.delivered().iter().sum());
    let got = sub.finish();
    let counts = Counts::new(published.acked, &m, &got);
    let clean = agent.stop();
    let l = latencies(&got);
    let hop = hop_latencies(&tap.finish());

    let expected = published.spikes + published.clears;
    rep.row(
        "2. alert latency",
        format!(
            "{DEVICES} devices × {:.0} readings/s = {} readings/s at QoS 1 for {seconds:.0} s, stamped with their publish time; one window per reading, a static limit, every {SPIKE_EVERY}th reading of a device above it (raise, then clear on the next)",
            RATE_PER_S / DEVICES as f64,
            grouped(RATE_PER_S),
        ),
        format!(
            "**p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms** from the sensor's publish to the upstream subscriber; {} alerts of {} expected, {} duplicates; {}",
            percentile(&l.alerts, 50.0),
            percentile(&l.alerts, 99.0),
            l.alerts.last().copied().unwrap_or(f64::NAN),
            grouped(l.alert_ids as f64),
            grouped(expected as f64),
            l.alert_messages - l.alert_ids,
            if settled.is_some() {
                counts.verdict()
            } else {
                "**not everything came through within 30 s**".into()
            },
        ),
        "",
        None,
    );
    rep.detail(format!(
        "latency: raised {}; cleared {}; the per-reading aggregates ({}) {}; for scale, publish → a plain subscriber of the local broker ({} readings): {}",
        spread(&l.raised),
        spread(&l.cleared),
        grouped(l.aggregates.len() as f64),
        spread(&l.aggregates),
        grouped(hop.len() as f64),
        spread(&hop),
    ));
    rep.detail(format!(
        "latency: the publisher sent {} readings in {:.2} s (at most {:.1} ms behind its schedule); {}; vigil used {:.1} CPU s ({:.0} % of one core), exited {} on SIGTERM. Event times are whole milliseconds (the publish time truncated), so each latency reads 0–1 ms high",
        grouped(published.readings as f64),
        secs(published.took),
        secs(published.behind) * 1e3,
        counts.describe(),
        after.cpu - before.cpu,
        100.0 * (after.cpu - before.cpu) / secs(published.took),
        if clean { "cleanly" } else { "**not cleanly**" },
    ));
}
