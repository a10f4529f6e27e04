//! The chaos run: vigil under a steady load, killed with SIGKILL at random
//! moments again and again (as a power cut, the OOM killer or a watchdog
//! would end it), with the upstream broker down for a stretch in the
//! middle; then, once everything is through, what was lost.
//!
//! - Acknowledged readings lost: every reading the local broker
//!   acknowledged to the publisher must be in vigil's store (vigil takes
//!   them over a persistent session, acknowledging only after fsync), found
//!   by (device, event time) with `vigil inspect readings`.
//! - Alert events lost: every spike raises an alert and the device's next
//!   reading clears it; each (alert id, event) must reach the upstream
//!   subscriber (persistent session, on a broker with persistence).
//! - Reused ids: two upstream messages with one message id but different
//!   content (a consumer that drops duplicates by id would lose one).
//! - Duplicates: copies of a message already received, same id and content
//!   (at-least-once delivery allows them).
//! - Restarts that did not become ready (and subscribed) within 20 s.
//! - Peak RSS over all the runs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Detection};
use crate::brokers::{is_entry, Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::helpers::secs;
use crate::publisher::{spawn_publisher, Load};
use crate::{scratch_dir, Tools, PATIENCE};

const DEVICES: u64 = 100;
const RATE_PER_S: f64 = 1_000.0;
/// How long vigil runs before each kill: uniform in this range.
const ALIVE_MS: (u64, u64) = (200, 1_500);
/// As in the outage measurement: the upstream broker keeps its sessions.
const PERSISTENT: &str = "persistence true\npersistence_location {dir}/\nuser root\n";

/// xorshift64*: the kill times, the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo)
    }
}

pub fn chaos(tools: &Tools, scratch: &Path, rep: &mut Report) {
    let kills = rep.scale(100);
    // Enough load for every kill, with time to spare.
    let seconds = kills as f64 * (ALIVE_MS.0 + ALIVE_MS.1) as f64 / 2_000.0 + 20.0;
    eprintln!(
        "[bench] chaos: {kills} SIGKILLs under {RATE_PER_S} readings/s for about {seconds:.0} s"
    );
    let dir = scratch_dir(scratch, "chaos");
    let local = Broker::start(&tools.mosquitto, dir.path());
    let mut upstream = Broker::start_with(&tools.mosquitto, dir.path(), PERSISTENT);
    let sub = Subscriber::start_with(upstream.port, true);
    let load = Load {
        rate_per_s: RATE_PER_S,
        devices: DEVICES,
        metrics: &["temperature"],
        spikes: true,
        seconds,
    };
    let agent = Agent::start(dir.path(), local.port, upstream.port, Detection::OneReading);
    let publisher = spawn_publisher(local.port, load, Arc::new(AtomicU64::new(0)));

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut agent = Some(agent);
    let (mut failed_starts, mut peak_kib) = (Vec::new(), 0u64);
    let (outage_from, outage_to) = (kills * 2 / 5, kills * 3 / 5);
    let mut outage = Duration::ZERO;
    let mut down_since = None;
    let started = Instant::now();
    for k in 0..kills {
        if k == outage_from {
            upstream.stop();
            down_since = Some(Instant::now());
        }
        if k == outage_to {
            upstream.restart();
            outage = down_since.take().map_or(Duration::ZERO, |t| t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(rng.below(ALIVE_MS.0, ALIVE_MS.1)));
        if let Some(a) = agent.take() {
            peak_kib = peak_kib.max(a.usage().hwm_kib);
            a.kill();
        }
        let need_upstream = false;
        match Agent::try_start(
            dir.path(),
            local.port,
            upstream.port,
            Detection::OneReading,
            need_upstream,
        ) {
            Ok(a) => agent = Some(a),
            Err(e) => failed_starts.push(e),
        }
    }
    if down_since.is_some() {
        upstream.restart();
    }
    let kills_took = started.elapsed();
    let published = publisher.join().expect("the publisher thread");
    // The last run goes on until everything is through.
    let agent = match agent {
        Some(a) => a,
        None => Agent::start(dir.path(), local.port, upstream.port, Detection::OneReading),
    };
    let settled = agent.wait_for("every reading is through and forwarded", PATIENCE, |m| {
        m.lag() == 0 && m.outbox() == 0 && m.upstream_connected()
    });
    peak_kib = peak_kib.max(agent.usage().hwm_kib);
    // Copies still on their way reach the subscriber.
    std::thread::sleep(Duration::from_secs(2));
    let clean = agent.stop();
    let got = sub.finish();

    // Readings: what the broker acknowledged against what the store holds.
    let stored = distinct_readings(&dir.path().join("vigil.toml"));
    let lost_readings = published.acked.saturating_sub(stored.len() as u64);

    // Upstream: messages by id; alert events by (alert id, event).
    let mut by_id: HashMap<String, Vec<&[u8]>> = HashMap::new();
    let mut alert_events = HashSet::new();
    for (_, p) in got.iter().filter(|(_, p)| is_entry(p)) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
            continue;
        };
        let id = v["id"].as_str().unwrap_or("?").to_string();
        by_id.entry(id).or_default().push(&p.payload);
        if v["type"] == "alert" && (v["event"] == "raised" || v["event"] == "cleared") {
            alert_events.insert((
                v["alert_id"].as_str().unwrap_or("?").to_string(),
                v["event"].as_str().unwrap_or("?").to_string(),
            ));
        }
    }
    let reused = by_id
        .values()
        .filter(|copies| copies.iter().any(|c| *c != copies[0]))
        .count();
    let duplicates: usize = by_id.values().map(|c| c.len() - 1).sum();
    let expected_alerts = published.spikes + published.clears;
    let lost_alerts = expected_alerts.saturating_sub(alert_events.len() as u64);

    let setup = format!(
        "{} readings/s from {DEVICES} devices at QoS 1, one window per reading, every 100th reading of a device a spike (alert raised, cleared by the next); vigil SIGKILLed {kills} times, each after {}–{} ms chosen at random (fixed seed), and started again; the upstream Mosquitto down from kill {outage_from} to kill {outage_to}",
        grouped(RATE_PER_S),
        ALIVE_MS.0,
        ALIVE_MS.1,
    );
    let ok = settled.is_some() && lost_readings == 0 && lost_alerts == 0 && reused == 0;
    rep.row(
        "6. chaos: SIGKILLs and an outage",
        setup,
        format!(
            "{}: acknowledged readings lost **{}** (of {}), alert events lost **{}** (of {}), messages under a reused id **{}**, duplicates delivered {}, restarts not ready **{}** of {}, peak RSS {:.1} MiB",
            if ok { "nothing lost" } else { "**LOSS**" },
            lost_readings,
            grouped(published.acked as f64),
            lost_alerts,
            grouped(expected_alerts as f64),
            reused,
            grouped(duplicates as f64),
            failed_starts.len(),
            kills,
            peak_kib as f64 / 1024.0,
        ),
        "0 lost",
        None,
    );
    rep.detail(format!(
        "chaos: {kills} kills in {:.1} s; upstream down {:.1} s; {} distinct readings stored, {} upstream messages received ({} distinct ids); everything through {}; the last run exited {} on SIGTERM",
        secs(kills_took),
        secs(outage),
        grouped(stored.len() as f64),
        grouped(got.len() as f64),
        grouped(by_id.len() as f64),
        if settled.is_some() { "at the end" } else { "**not within the patience**" },
        if clean { "cleanly" } else { "**not cleanly**" },
    ));
    for e in failed_starts.iter().take(3) {
        rep.detail(format!("chaos: a start failed: {e}"));
    }
}

/// (device, metric, event time) of every reading in the store of the
/// stopped vigil configured by `config`.
fn distinct_readings(config: &Path) -> HashSet<(String, String, i64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["inspect", "--config"])
        .arg(config)
        .args(["readings", "--last", "100000000"])
        .output()
        .expect("run vigil inspect");
    assert!(
        out.status.success(),
        "vigil inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["device"].as_str().unwrap_or("").to_string(),
                v["metric"].as_str().unwrap_or("").to_string(),
                v["time_ms"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}
