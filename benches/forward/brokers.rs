//! The MQTT side: Mosquitto brokers on free loopback ports, the upstream
//! subscriber that notes when each message arrives, and the tally of what
//! it got.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;

use crate::helpers::{spawn_with_runtime, wait_for, wall_ms};
use crate::machine::cpu_of;

// ------------------------------------------------------------ Mosquitto

pub fn mosquitto_path() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join("mosquitto"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Mosquitto process on a free loopback port, killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start(mosquitto: &Path, scratch: &Path) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("mosquitto")
            .tempdir_in(scratch)
            .expect("a broker directory");
        let port = free_port();
        // As tests/support: no limit on queued QoS 1 messages, a wide window
        // towards each subscriber.
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n"
        );
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("broker log");
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", mosquitto.display()));
        let broker = Broker { child, port, dir };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(broker.dir.path().join("mosquitto.log"));
                panic!("mosquitto did not listen on port {port}: {log:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        broker
    }

    pub fn cpu(&self) -> f64 {
        cpu_of(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ subscriber

/// An upstream consumer: a rumqttc client on `#` at QoS 1, on its own thread
/// and runtime, keeping every message with its arrival time (wall clock, ms).
pub struct Subscriber {
    received: Arc<AtomicU64>,
    pub tid: u64,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Vec<(f64, Publish)>>,
}

impl Subscriber {
    pub fn start(port: u16) -> Subscriber {
        let received = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = watch::channel(false);
        let (r, ok, t) = (received.clone(), ready.clone(), tid.clone());
        let thread = spawn_with_runtime("bench-sub", move |id| {
            t.store(id, Relaxed);
            async move {
                let mut opts = MqttOptions::new(format!("bench-sub-{port}"), "127.0.0.1", port);
                opts.set_keep_alive(Duration::from_secs(30))
                    .set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut eventloop) = AsyncClient::new(opts, 100);
                client
                    .subscribe("#", QoS::AtLeastOnce)
                    .await
                    .expect("queue the subscription");
                let mut got = Vec::new();
                loop {
                    tokio::select! {
                        ev = eventloop.poll() => match ev {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                got.push((wall_ms(), p));
                                r.fetch_add(1, Relaxed);
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => ok.store(true, Relaxed),
                            Ok(_) => {}
                            Err(e) => {
                                eprintln!("[bench-forward] subscriber: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = stop_rx.changed() => break,
                    }
                }
                got
            }
        });
        wait_for(
            "the subscriber is subscribed",
            Duration::from_secs(10),
            || ready.load(Relaxed),
        );
        Subscriber {
            received,
            tid: tid.load(Relaxed),
            stop,
            thread,
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    pub fn finish(self) -> Vec<(f64, Publish)> {
        let _ = self.stop.send(true);
        self.thread.join().expect("the subscriber thread")
    }
}

/// Messages carrying an outbox entry (not the gateway's status).
pub fn is_entry(p: &Publish) -> bool {
    p.topic.contains("/alerts/") || p.topic.contains("/aggregates/")
}

/// The message id (`"id":"..."`, the second field of every message).
fn message_id(payload: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"id\":\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = payload[at..].iter().position(|&b| b == b'"')?;
    Some(&payload[at..at + len])
}

/// Received, distinct and duplicate outbox messages.
pub fn tally(got: &[(f64, Publish)]) -> (u64, u64, u64) {
    let mut seen: HashMap<&[u8], u32> = HashMap::new();
    let mut received = 0;
    for (_, p) in got.iter().filter(|(_, p)| is_entry(p)) {
        received += 1;
        *seen
            .entry(message_id(&p.payload).unwrap_or(b"?"))
            .or_default() += 1;
    }
    let distinct = seen.len() as u64;
    (received, distinct, received - distinct)
}
