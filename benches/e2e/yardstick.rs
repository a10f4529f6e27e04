//! The yardstick of measurement 1: `mosquitto_sub -q 1` alone taking the
//! same messages from the same publisher through a fresh broker, and the
//! publisher alone with no subscriber at all.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::brokers::Broker;
use crate::burst::{spawn_burst, Burst};
use crate::helpers::secs;
use crate::machine::cpu_of;
use crate::{Tools, PATIENCE};

/// The publisher to a broker without subscribers: messages/s, and its CPU
/// µs per message.
pub fn publisher_alone(
    tools: &Tools,
    scratch: &Path,
    messages: Vec<(String, Vec<u8>)>,
) -> (f64, f64) {
    let n = messages.len() as f64;
    let broker = Broker::start(&tools.mosquitto, scratch);
    let b = spawn_burst(broker.port, messages)
        .join()
        .expect("the publisher thread");
    (b.acked as f64 / secs(b.took), b.cpu * 1e6 / n)
}

pub struct SubDrain {
    /// First publish → the last message printed by mosquitto_sub.
    pub took: Option<Duration>,
    pub received: u64,
    /// CPU seconds of mosquitto_sub and of the broker.
    pub cpu: (f64, f64),
    pub publisher: Burst,
}

/// `mosquitto_sub -q 1` on a fresh broker takes `messages` (JSON objects)
/// from the flat-out publisher; its output is counted here, line by line.
pub fn mosquitto_sub_drain(
    tools: &Tools,
    scratch: &Path,
    messages: Vec<(String, Vec<u8>)>,
) -> SubDrain {
    let n = messages.len() as u64;
    let broker = Broker::start(&tools.mosquitto, scratch);
    let port = broker.port.to_string();
    let mut sub = Command::new(&tools.mosquitto_sub)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-q",
            "1",
            "-i",
            "bench-mosquitto-sub",
        ])
        .args(["-t", "plant/#", "-t", "bench/probe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.mosquitto_sub.display()));
    let out = sub.stdout.take().expect("mosquitto_sub's output");
    let subscribed = Arc::new(AtomicBool::new(false));
    let ready = subscribed.clone();
    // Readings are JSON objects, one a line; anything else is the probe.
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::with_capacity(1 << 20, out);
        let (mut line, mut count) = (Vec::new(), 0u64);
        loop {
            line.clear();
            if out
                .read_until(b'\n', &mut line)
                .map_or(true, |len| len == 0)
            {
                return (count, None);
            }
            if line.starts_with(b"{") {
                count += 1;
                if count == n {
                    return (count, Some(Instant::now()));
                }
            } else {
                ready.store(true, Relaxed);
            }
        }
    });
    // Subscribed once a probe comes through.
    let start = Instant::now();
    while !subscribed.load(Relaxed) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto_sub did not subscribe within 10 s"
        );
        let _ = Command::new(&tools.mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
            .args(["-t", "bench/probe", "-m", "probe"])
            .status();
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub_stat = format!("/proc/{}/stat", sub.id());
    let cpu_before = (cpu_of(&sub_stat), broker.cpu());
    let publisher = spawn_burst(broker.port, messages)
        .join()
        .expect("the publisher thread");
    while !reader.is_finished() && publisher.started.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(5));
    }
    let cpu = (
        cpu_of(&sub_stat) - cpu_before.0,
        broker.cpu() - cpu_before.1,
    );
    let _ = sub.kill();
    let _ = sub.wait();
    let (received, done) = reader.join().expect("the reader thread");
    SubDrain {
        took: done.map(|at| at - publisher.started),
        received,
        cpu,
        publisher,
    }
}
