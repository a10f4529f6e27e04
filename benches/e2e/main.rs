//! End-to-end benchmark: the release `vigil` binary in a process of its own,
//! between a local Mosquitto (the sensors') and an upstream one, loaded by
//! MQTT sensors from this process, observed only from outside: its
//! `/metrics` endpoint (Prometheus text) and /proc/<pid>. Out, a Markdown
//! table (progress goes to stderr).
//!
//! Run with `scripts/bench`, or `cargo bench --bench e2e` (which builds the
//! vigil binary in release mode too). Arguments pick sections
//! (`throughput`, `latency`, `footprint`, `outage`; default all); `--quick`
//! does a fifth of the work, for trying a change, not for reporting.
//!
//! Needs Mosquitto (`mosquitto`, on PATH or in /usr/sbin or /usr/local/sbin)
//! and its clients (`mosquitto_sub`, `mosquitto_pub`). Every measurement
//! starts its own brokers on free loopback ports (`max_queued_messages 0`,
//! `max_inflight_messages 1000`, as benches/forward) and a vigil with a
//! fresh store in the scratch directory, with vigil's defaults except the
//! device file and `reconnect_max_ms = 1000` on both connections.
//!
//! 1. Throughput. 300,000 readings (100 devices × temperature and
//!    vibration, one JSON reading per message) published flat out at QoS 1
//!    by one rumqttc client (at most 10,000 unacknowledged), encoded
//!    beforehand. vigil subscribes at QoS 1 (acked after fsync) with
//!    10-reading windows and the learned baseline (mean and std, CUSUM,
//!    volatility) on every stream, and forwards aggregates and alerts
//!    upstream, where a subscriber takes them. Timed from the first publish
//!    until /metrics (scraped every 10 ms) shows every reading stored, none
//!    waiting for detection and an empty outbox. Beside it, on a fresh
//!    broker, the same messages from the same publisher to `mosquitto_sub
//!    -q 1` alone (timed until it has printed the last one). Three rounds of
//!    both, alternating (one with `--quick`); the medians are reported. Once
//!    before: the publisher to no subscriber at all (its own ceiling).
//! 2. Latency. 100 devices publish 1,000 readings/s at QoS 1 for 60 s, in
//!    bursts every 2 ms, each reading stamped with its publish time; one
//!    window per reading and a static limit, so every 100th reading of a
//!    device raises an alert and the next clears it (benches/forward/latency.rs
//!    explains why arrival minus the alert's `end_ms` is the time from the
//!    sensor's publish to the upstream subscriber).
//! 3. Footprint. 2,000 readings/s for 60 s from 10 devices and from 1,000
//!    (temperature and vibration each: 20 or 2,000 streams), 10-reading
//!    windows, the learned baseline on every stream and ISO 10816 zones on
//!    vibration. vigil's peak RSS (VmHWM) at the end, and its CPU time
//!    (utime + stime) while publishing, per 1,000 readings/s.
//! 4. Outage. 4,000 readings/s (100 devices, one window per reading, so one
//!    aggregate per reading); the upstream Mosquitto (with persistence, and
//!    a subscriber with a persistent session) is stopped with SIGTERM until
//!    the outbox holds 40,000 entries, then started again while readings
//!    keep coming. Entries delivered from vigil's reconnect until the outbox
//!    is empty, per second; then everything the subscriber got is counted
//!    against vigil's delivered counters.
//! 6. Chaos (only when named: `scripts/bench-chaos`): vigil SIGKILLed 100
//!    times at random moments under 1,000 readings/s with alerts, the
//!    upstream broker down for the middle fifth; acknowledged readings and
//!    alert events lost, messages under a reused id, duplicates, restarts
//!    that did not become ready, peak RSS (see `chaos`).
//! 5. Disk writes per reading: `write_bytes` − `cancelled_write_bytes` of
//!    /proc/<pid>/io over measurements 1 and 3, divided by the readings
//!    stored meanwhile; beside it what the store's block device wrote
//!    (/proc/diskstats), which includes the file system's journal and any
//!    other process.
//!
//! Every measurement checks its counts (published = stored, delivered =
//! what the upstream subscriber got, nothing dropped) and says so in its
//! row. Speeds are reported, never asserted.
//!
//! This file reads the arguments and prints the report; the measurements
//! are in `throughput` (with `mosquitto_sub` in `yardstick`), `latency`,
//! `footprint` (and the disk row) and `outage`; the vigil process is in
//! `agent` (its metrics in `prom`), the flat-out load in `burst`, the
//! closing cross-check of counts in `counts`, the machine in `host`.
//! Brokers, the upstream subscriber and the paced publisher are
//! benches/forward's.

#[path = "../common/mod.rs"]
mod common;

// Shared with benches/forward: not every item is used here.
#[allow(dead_code)]
#[path = "../forward/brokers.rs"]
mod brokers;
#[allow(dead_code)]
#[path = "../forward/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../forward/machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../forward/publisher.rs"]
mod publisher;
#[allow(dead_code)]
#[path = "../forward/timings.rs"]
mod timings;

mod agent;
mod burst;
mod chaos;
mod counts;
mod footprint;
mod host;
mod latency;
mod outage;
mod prom;
mod throughput;
mod yardstick;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brokers::mosquitto_path;
use common::{Args, Report};

/// What any wait in the benchmark gives up after (not a speed claim).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The programs the measurements start.
pub struct Tools {
    pub mosquitto: PathBuf,
    pub mosquitto_sub: PathBuf,
    pub mosquitto_pub: PathBuf,
}

/// A directory of its own for one measurement, under `scratch`.
pub fn scratch_dir(scratch: &Path, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch)
        .expect("a scratch directory")
}

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn main() {
    let args = Args::parse(
        "e2e",
        &["throughput", "latency", "footprint", "outage", "chaos"],
    );
    let install = "install them with: apt-get install -y mosquitto mosquitto-clients";
    let Some(mosquitto) = mosquitto_path() else {
        eprintln!(
            "bench: mosquitto not found on PATH, in /usr/sbin or in /usr/local/sbin; {install}"
        );
        std::process::exit(1);
    };
    let (Some(mosquitto_sub), Some(mosquitto_pub)) =
        (on_path("mosquitto_sub"), on_path("mosquitto_pub"))
    else {
        eprintln!("bench: mosquitto_sub or mosquitto_pub not found on PATH; {install}");
        std::process::exit(1);
    };
    let tools = Tools {
        mosquitto,
        mosquitto_sub,
        mosquitto_pub,
    };
    let scratch = tempfile::Builder::new()
        .prefix("vigil-bench-e2e")
        .tempdir()
        .expect("a temporary directory");
    let mut rep = Report::new("bench", args.quick, 5, "a fifth");
    let machine = host::Machine::now(&tools.mosquitto, scratch.path());
    let started = Instant::now();
    let mut disk = Vec::new();
    for section in ["throughput", "latency", "footprint", "outage", "chaos"] {
        // The chaos run is long and measures no speed: only when named.
        let wanted = if section == "chaos" {
            args.named(section)
        } else {
            args.run(section)
        };
        if !wanted {
            continue;
        }
        let busy = host::Busy::start();
        match section {
            "throughput" => disk.push(throughput::throughput(&tools, scratch.path(), &mut rep)),
            "latency" => latency::latency(&tools, scratch.path(), &mut rep),
            "footprint" => disk.extend(footprint::footprint(&tools, scratch.path(), &mut rep)),
            "chaos" => chaos::chaos(&tools, scratch.path(), &mut rep),
            _ => outage::outage(&tools, scratch.path(), &mut rep),
        }
        // Other people's work on the machine skews every number here.
        rep.detail(format!(
            "{section}: other processes on the machine used {:.2} cores meanwhile",
            busy.others()
        ));
    }
    if !disk.is_empty() {
        footprint::disk_row(&disk, &machine.file_system, &mut rep);
    }
    print!(
        "{}",
        rep.markdown("vigil end-to-end benchmark", &machine.describe(), started)
    );
}
