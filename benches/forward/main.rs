//! Forward benchmark: how fast the forwarder drains a backlog from the
//! outbox to an upstream broker, and how long an alert takes from the
//! sensor's publish to a subscriber of the upstream broker, through the
//! whole pipeline. Out, a Markdown table (progress goes to stderr).
//!
//! Run with `cargo bench --bench forward`, or `scripts/bench-forward`.
//! Arguments pick sections (`drain`, `latency`; default both); `--quick`
//! does a fifth of the work, for trying a change, not for reporting.
//!
//! Needs Mosquitto (`mosquitto` on PATH, or in /usr/sbin or /usr/local/sbin).
//! Each measurement starts its own brokers on free loopback ports, set up as
//! the integration tests set them up (`max_queued_messages 0`,
//! `max_inflight_messages 1000`), and an upstream subscriber: a rumqttc
//! client on `#` at QoS 1, on its own thread, which notes the wall-clock
//! time each message arrives.
//!
//! 1. Drain. A store holding 100,000 aggregates (11 features each, over 100
//!    device/metric streams) and 100 alerts, as detection writes them;
//!    `forward::run` on it, timed from its start until `Store::stats` shows
//!    an empty outbox (polled every 5 ms), with `[upstream] max_inflight`
//!    100 (the default) and 1000. For comparison: a bare rumqttc client
//!    publishing the same messages, already encoded, through the same kind
//!    of broker; and the forwarder's store and encoding steps alone, on one
//!    thread.
//! 2. Latency. `vigil::app::start` between a local Mosquitto (the sensors')
//!    and an upstream one; 50 devices publish 5,000 readings/s at QoS 1 for
//!    20 s, in bursts every 2 ms, each reading stamped with its publish time
//!    (`{"time": <epoch ms>, "value": v}`). One window per reading
//!    (`window_readings = 1`), a static limit on the mean, `raise_after` =
//!    `clear_after` = 1: every 100th reading of a device is above the limit
//!    and raises an alert, the next one clears it. An alert's `end_ms` is
//!    its window's end, and a window of one scalar reading ends at that
//!    reading's event time (detect/window.rs: `end_ms = t + duration_ms`,
//!    0 for scalars; detect/alert.rs: `window_end_ms: window.1`), so arrival
//!    minus `end_ms` is the time from the sensor's publish. With
//!    `store.flush_interval_ms` 20 (the default) and 5. Where the time goes:
//!    a thread samples ingest's and detection's counters every 0.5 ms, so
//!    each alert's latency splits into publish → committed by ingest →
//!    committed by detection → at the upstream subscriber; a second plain
//!    subscriber on the local broker gives the MQTT hop alone.
//!
//! Speeds are reported against targets, never asserted.
//!
//! This file reads the arguments and prints the report; the measurements
//! are in `drain` and `latency`, what they set up in `brokers`, `config`,
//! `backlog` and `publisher`, what they read off in `timings` and `machine`.

#[path = "../common/mod.rs"]
mod common;

mod backlog;
mod brokers;
mod config;
mod drain;
mod helpers;
mod latency;
mod machine;
mod publisher;
mod timings;

use std::time::{Duration, Instant};

use vigil::model::EpochMs;

use brokers::mosquitto_path;
use common::{build_kind, cpu_model, Args, Report};
use drain::drain;
use latency::latency;
use machine::{file_system, load_average, nproc};

pub const GATEWAY: &str = "gw-bench";
/// 2026-01-01T00:00:00Z: event time of the backlog's first window.
pub const T0: EpochMs = 1_767_225_600_000;
/// What any wait in the benchmark gives up after (not a speed claim).
pub const PATIENCE: Duration = Duration::from_secs(120);

fn main() {
    let args = Args::parse("forward", &["drain", "latency"]);
    let Some(mosquitto) = mosquitto_path() else {
        eprintln!("bench-forward: mosquitto not found on PATH, in /usr/sbin or in /usr/local/sbin; install it with: apt-get install -y mosquitto");
        std::process::exit(1);
    };
    // Detection logs every alert at warn; 100 a second would flood stderr.
    let filter =
        std::env::var("VIGIL_LOG").unwrap_or_else(|_| "warn,vigil::detect::stage=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let scratch = tempfile::Builder::new()
        .prefix("vigil-bench-forward")
        .tempdir()
        .expect("a temporary directory");
    let mut rep = Report::new("bench-forward", args.quick, 5, "a fifth");
    let load_before = load_average();
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        if args.run("drain") {
            drain(&mosquitto, scratch.path(), &mut rep).await;
        }
        if args.run("latency") {
            latency(&mosquitto, scratch.path(), &mut rep).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));

    let intro = format!(
        "Machine: {} · nproc {} · load average {} at the start, {} at the end · {} · scratch: {} · {}",
        cpu_model(),
        nproc(),
        load_before,
        load_average(),
        build_kind(),
        file_system(scratch.path()),
        mosquitto.display(),
    );
    print!(
        "{}",
        rep.markdown("vigil forward benchmark", &intro, started)
    );
}
