//! Measurement 1, throughput: readings per second through ingest, store,
//! detection and forwarding with durability on, flat out, against
//! `mosquitto_sub -q 1` draining the same messages (in `yardstick`). Three
//! rounds of both, alternating, as the broker's speed moves from run to run.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Detection};
use crate::brokers::{Broker, Subscriber};
use crate::burst::{readings, spawn_burst, Burst, WINDOW};
use crate::common::{grouped, Report};
use crate::counts::{until_received, Counts};
use crate::footprint::Disk;
use crate::helpers::secs;
use crate::host::device_written;
use crate::yardstick::{mosquitto_sub_drain, publisher_alone, SubDrain};
use crate::{scratch_dir, Tools, PATIENCE};

const DEVICES: u64 = 100;
const METRICS: [&str; 2] = ["temperature", "vibration"];

/// One run of the readings through vigil.
struct VigilRun {
    /// First publish → every reading stored, through detection and
    /// forwarded (None: not within `PATIENCE`).
    took: Option<Duration>,
    /// First publish → every reading stored; → every reading through detection.
    stored: Option<Duration>,
    detected: Option<Duration>,
    publisher: Burst,
    counts: Counts,
    clean: bool,
    /// CPU seconds of vigil, the local and the upstream broker.
    cpu: (f64, f64, f64),
    hwm_kib: u64,
    warnings: Vec<String>,
    write_bytes: u64,
    device_bytes: Option<u64>,
}

fn vigil_drain(tools: &Tools, scratch: &Path, messages: Vec<(String, Vec<u8>)>) -> VigilRun {
    let n = messages.len() as u64;
    let dir = scratch_dir(scratch, "throughput");
    let local = Broker::start(&tools.mosquitto, dir.path());
    let upstream = Broker::start(&tools.mosquitto, dir.path());
    let sub = Subscriber::start(upstream.port);
    let agent = Agent::start(dir.path(), local.port, upstream.port, Detection::Baseline);
    let before = agent.usage();
    let device_before = device_written(dir.path());
    let brokers_before = (local.cpu(), upstream.cpu());
    let publisher = spawn_burst(local.port, messages);
    let (mut stored, mut detected) = (None, None);
    let settled = agent.wait_for(
        "every reading is stored, through detection and forwarded",
        PATIENCE,
        |m| {
            if m.stored() >= n {
                stored.get_or_insert_with(Instant::now);
                if m.lag() == 0 {
                    detected.get_or_insert_with(Instant::now);
                }
            }
            m.settled(n)
        },
    );
    let after = agent.usage();
    let device_bytes = device_written(dir.path())
        .zip(device_before)
        .map(|(a, b)| a - b);
    let cpu = (
        after.cpu - before.cpu,
        local.cpu() - brokers_before.0,
        upstream.cpu() - brokers_before.1,
    );
    let publisher = publisher.join().expect("the publisher thread");
    let m = agent.metrics();
    until_received(&sub, m.delivered().iter().sum());
    let counts = Counts::new(publisher.acked, &m, &sub.finish());
    let warnings = agent.warnings();
    let clean = agent.stop();
    let since = |at: Option<Instant>| at.map(|at| at - publisher.started);
    VigilRun {
        took: since(settled.map(|(at, _)| at)),
        stored: since(stored),
        detected: since(detected),
        publisher,
        counts,
        clean,
        cpu,
        hwm_kib: after.hwm_kib,
        warnings,
        write_bytes: after.written() - before.written(),
        device_bytes,
    }
}

/// The median rate of the runs that took `took` for `n` readings, and
/// "**12,345 readings/s** (median of 3 runs: 11,000–13,000)".
fn rates(n: u64, took: &[Option<Duration>]) -> (Option<f64>, String) {
    let mut r: Vec<f64> = took.iter().flatten().map(|t| n as f64 / secs(*t)).collect();
    r.sort_by(f64::total_cmp);
    if r.len() < took.len() {
        return (
            None,
            format!(
                "**did not finish** in {} of {} runs",
                took.len() - r.len(),
                took.len()
            ),
        );
    }
    let median = r[r.len() / 2];
    let spread = if r.len() > 1 {
        format!(
            " (median of {} runs: {}–{})",
            r.len(),
            grouped(r[0]),
            grouped(r[r.len() - 1])
        )
    } else {
        String::new()
    };
    (
        Some(median),
        format!("**{} readings/s**{spread}", grouped(median)),
    )
}

/// Measurement 1; returns vigil's disk writes for measurement 5.
pub fn throughput(tools: &Tools, scratch: &Path, rep: &mut Report) -> Disk {
    let n = rep.scale(300_000);
    let rounds = rep.scale(3);
    let messages = || readings(n, DEVICES, &METRICS);
    eprintln!("[bench] throughput: {n} readings, the publisher alone");
    let (alone, pub_us) = publisher_alone(tools, scratch, messages());
    let (mut subs, mut runs): (Vec<SubDrain>, Vec<VigilRun>) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!(
            "[bench] throughput, round {round} of {rounds}: {n} readings to mosquitto_sub -q 1"
        );
        subs.push(mosquitto_sub_drain(tools, scratch, messages()));
        eprintln!("[bench] throughput, round {round} of {rounds}: {n} readings through vigil");
        runs.push(vigil_drain(tools, scratch, messages()));
    }
    let sub_took: Vec<_> = subs.iter().map(|s| s.took).collect();
    let (sub_rate, sub_text) = rates(n, &sub_took);
    let vigil_took: Vec<_> = runs.iter().map(|r| r.took).collect();
    let (vigil_rate, vigil_text) = rates(n, &vigil_took);
    rep.row(
        "1. throughput: `mosquitto_sub -q 1` alone",
        format!(
            "the same {} messages from the same publisher through a fresh broker set up the same way",
            grouped(n as f64)
        ),
        format!("{sub_text}, first publish → the last one printed"),
        "",
        None,
    );
    let all_ok = runs.iter().all(|r| r.counts.ok() && r.clean);
    // The run whose rate is the median one tells the details.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| runs[i].took.unwrap_or(PATIENCE));
    let run = &runs[order[order.len() / 2]];
    rep.row(
        "1. throughput: vigil",
        format!(
            "{} readings, {DEVICES} devices × temperature + vibration, one JSON reading per message, QoS 1 flat out from one rumqttc client (≤ {} unacknowledged); QoS 1 subscription acked after fsync; 10-reading windows, learned baseline on every stream; aggregates + alerts to an upstream Mosquitto",
            grouped(n as f64),
            grouped(f64::from(WINDOW)),
        ),
        format!(
            "{vigil_text}, first publish → the last reading stored, through detection and its aggregates acknowledged upstream; {}",
            if all_ok && runs.len() > 1 {
                format!("nothing lost in any run (each: {})", run.counts.summary())
            } else {
                run.counts.verdict()
            }
        ),
        "",
        None,
    );
    if let (Some(vigil_rate), Some(sub_rate)) = (vigil_rate, sub_rate) {
        let each: Vec<String> = sub_took
            .iter()
            .zip(&vigil_took)
            .filter_map(|(s, v)| Some(format!("{:.2}", secs((*s)?) / secs((*v)?))))
            .collect();
        rep.row(
            "1. throughput: vigil ÷ `mosquitto_sub -q 1`",
            "the medians of the two rows above".into(),
            format!(
                "**{:.2}×** (round by round: {})",
                vigil_rate / sub_rate,
                each.join(", ")
            ),
            "",
            None,
        );
    }

    let at = |d: Option<Duration>| d.map_or(f64::NAN, secs);
    let s = &subs[subs.len() / 2];
    rep.detail(format!(
        "throughput, mosquitto_sub (round {}): CPU mosquitto_sub {:.1} s, Mosquitto {:.1} s, publisher {:.1} s; the publisher got its last PUBACK after {:.2} s, mosquitto_sub printed {} messages. The publisher alone (a broker without subscribers): {} readings/s, {:.1} µs of its CPU per message",
        subs.len() / 2 + 1,
        s.cpu.0,
        s.cpu.1,
        s.publisher.cpu,
        secs(s.publisher.took),
        grouped(s.received as f64),
        grouped(alone),
        pub_us,
    ));
    rep.detail(format!(
        "throughput, vigil (the median run): all stored after {:.2} s, all through detection after {:.2} s, outbox empty after {:.2} s (/metrics scraped every 10 ms); the publisher got its last PUBACK after {:.2} s; CPU vigil {:.1} s ({:.1} µs per reading), local Mosquitto {:.1} s, upstream Mosquitto {:.1} s, publisher {:.1} s; peak RSS {:.1} MiB",
        at(run.stored),
        at(run.detected),
        at(run.took),
        secs(run.publisher.took),
        run.cpu.0,
        run.cpu.0 * 1e6 / n as f64,
        run.cpu.1,
        run.cpu.2,
        run.publisher.cpu,
        run.hwm_kib as f64 / 1024.0,
    ));
    for (i, r) in runs.iter().enumerate() {
        rep.detail(format!(
            "throughput, vigil run {}: {}; vigil exited {} on SIGTERM",
            i + 1,
            r.counts.describe(),
            if r.clean {
                "cleanly"
            } else {
                "**not cleanly**"
            }
        ));
        for w in &r.warnings {
            rep.detail(format!("throughput, vigil run {}, its log: `{w}`", i + 1));
        }
    }
    Disk {
        what: "flat out, 100 devices (measurement 1)",
        bytes: runs.iter().map(|r| r.write_bytes).sum(),
        // Fresh stores: every reading they hold was stored meanwhile.
        readings: runs.iter().map(|r| r.counts.stored()).sum(),
        device_bytes: runs.iter().map(|r| r.device_bytes).sum(),
    }
}
