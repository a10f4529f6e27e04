//! Measurements 3 and 5: what a steady load costs vigil in memory, CPU and
//! disk writes, with few devices and with many at the same total rate.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Detection};
use crate::brokers::{Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::counts::{until_received, Counts};
use crate::helpers::secs;
use crate::host::device_written;
use crate::publisher::{spawn_publisher, Load};
use crate::{scratch_dir, Tools};

const RATE_PER_S: f64 = 2_000.0;
const METRICS: [&str; 2] = ["temperature", "vibration"];

/// vigil's disk writes over one measurement, for measurement 5.
pub struct Disk {
    pub what: &'static str,
    /// `write_bytes` − `cancelled_write_bytes` of /proc/<pid>/io over the
    /// measurement.
    pub bytes: u64,
    pub readings: u64,
    /// Written to the store's block device meanwhile, by anyone.
    pub device_bytes: Option<u64>,
}

/// Measurement 3 with `devices` devices; returns the disk writes.
fn steady(tools: &Tools, scratch: &Path, devices: u64, seconds: f64, rep: &mut Report) -> Disk {
    eprintln!("[bench] footprint: {devices} devices, {RATE_PER_S} readings/s for {seconds} s");
    let dir = scratch_dir(scratch, "footprint");
    let local = Broker::start(&tools.mosquitto, dir.path());
    let upstream = Broker::start(&tools.mosquitto, dir.path());
    let sub = Subscriber::start(upstream.port);
    let agent = Agent::start(dir.path(), local.port, upstream.port, Detection::Baseline);
    let load = Load {
        rate_per_s: RATE_PER_S,
        devices,
        metrics: &METRICS,
        spikes: false,
        seconds,
    };
    let before = agent.usage();
    let device_before = device_written(dir.path());
    let started = Instant::now();
    let published = spawn_publisher(local.port, load, Arc::new(AtomicU64::new(0)))
        .join()
        .expect("the publisher thread");
    // CPU while the load ran (the publisher's connection set-up included).
    let loaded = agent.usage();
    let wall = started.elapsed();
    let settled = agent.wait_for(
        "every reading is through and forwarded",
        Duration::from_secs(60),
        |m| m.settled(published.readings),
    );
    let after = agent.usage();
    let device_bytes = device_written(dir.path())
        .zip(device_before)
        .map(|(a, b)| a - b);
    let m = agent.metrics();
    until_received(&sub, m.delivered().iter().sum());
    let counts = Counts::new(published.acked, &m, &sub.finish());
    let clean = agent.stop();

    let cpu = loaded.cpu - before.cpu;
    let rate = published.readings as f64 / secs(published.took);
    // CPU seconds per second, per 1,000 readings/s.
    let per_k = cpu / secs(wall) / (rate / 1000.0);
    let streams = devices * METRICS.len() as u64;
    rep.row(
        &format!("3. footprint, {} devices", grouped(devices as f64)),
        format!(
            "{} readings/s for {seconds:.0} s at QoS 1, {} streams (temperature + vibration per device), 10-reading windows, learned baseline on every stream, ISO 10816 on vibration, aggregates forwarded",
            grouped(RATE_PER_S),
            grouped(streams as f64),
        ),
        format!(
            "**peak RSS {:.1} MiB**; **{per_k:.3} CPU s per s per 1,000 readings/s** ({:.1} % of one core at {} readings/s, {:.0} µs per reading); {}",
            after.hwm_kib as f64 / 1024.0,
            100.0 * cpu / secs(wall),
            grouped(rate),
            cpu * 1e6 / published.readings as f64,
            if settled.is_some() {
                counts.verdict()
            } else {
                "**not everything came through within 60 s**".into()
            },
        ),
        "",
        None,
    );
    rep.detail(format!(
        "footprint, {devices} devices: the publisher sent {} readings in {:.2} s (at most {:.1} ms behind its schedule); RSS at the end {:.1} MiB; {}; vigil exited {} on SIGTERM",
        grouped(published.readings as f64),
        secs(published.took),
        secs(published.behind) * 1e3,
        after.rss_kib as f64 / 1024.0,
        counts.describe(),
        if clean { "cleanly" } else { "**not cleanly**" },
    ));
    Disk {
        what: if devices < 100 {
            "2,000 readings/s, 10 devices (measurement 3)"
        } else {
            "2,000 readings/s, 1,000 devices (measurement 3)"
        },
        bytes: after.written() - before.written(),
        readings: m.stored(),
        device_bytes,
    }
}

/// Measurement 3, with 10 and with 1,000 devices.
pub fn footprint(tools: &Tools, scratch: &Path, rep: &mut Report) -> Vec<Disk> {
    let seconds = rep.scale(60) as f64;
    [10, 1000]
        .iter()
        .map(|&devices| steady(tools, scratch, devices, seconds, rep))
        .collect()
}

/// Measurement 5: disk bytes written per reading, from the measurements that ran.
pub fn disk_row(disk: &[Disk], file_system: &str, rep: &mut Report) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let parts: Vec<String> = disk
        .iter()
        .map(|d| {
            let per = |b: u64| grouped(b as f64 / d.readings.max(1) as f64);
            let device = d
                .device_bytes
                .map_or(String::new(), |b| format!(", block device {} B", per(b)));
            format!("{}: **{} B**{device}", d.what, per(d.bytes))
        })
        .collect();
    rep.row(
        "5. disk writes per reading",
        format!(
            "vigil's `write_bytes` − `cancelled_write_bytes` (/proc/<pid>/io) from before the load until everything was forwarded, ÷ readings stored; beside it the store's block device (/proc/diskstats: every process, the journal included); store on {file_system}"
        ),
        parts.join("; "),
        "",
        None,
    );
    for d in disk {
        rep.detail(format!(
            "disk writes, {}: vigil {:.0} MiB for {} readings; the block device {} meanwhile",
            d.what,
            mib(d.bytes),
            grouped(d.readings as f64),
            d.device_bytes
                .map_or("not found".into(), |b| format!("{:.0} MiB", mib(b))),
        ));
    }
}
