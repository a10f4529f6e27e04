//! The MQTT side: Mosquitto brokers on free loopback ports, the upstream
//! subscriber that notes when each message arrives, and the tally of what
//! it got. Shared with the end-to-end benchmark (benches/e2e), which also
//! stops and restarts a broker (an uplink outage).

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A Mosquitto process on a free loopback port, killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    mosquitto: PathBuf,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start(mosquitto: &Path, scratch: &Path) -> Broker {
        Broker::start_with(mosquitto, scratch, "")
    }

    /// With `extra` lines appended to mosquitto.conf (`{dir}` in them is
    /// the broker's own directory).
    pub fn start_with(mosquitto: &Path, scratch: &Path, extra: &str) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("mosquitto")
            .tempdir_in(scratch)
            .expect("a broker directory");
        let port = free_port();
        // As tests/support: no limit on queued QoS 1 messages, a wide window
        // towards each subscriber.
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n{}",
            extra.replace("{dir}", &dir.path().display().to_string())
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let child = spawn_mosquitto(mosquitto, dir.path(), port);
        Broker {
            child,
            port,
            mosquitto: mosquitto.to_path_buf(),
            dir,
        }
    }

    /// Stop the broker as its service manager would (SIGTERM: with
    /// `persistence true` it saves its sessions and queued messages).
    #[allow(dead_code)] // the e2e benchmark's uplink outage
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Start it again after `stop`, on the same port with the same config.
    #[allow(dead_code)] // the e2e benchmark's uplink outage
    pub fn restart(&mut self) {
        self.child = spawn_mosquitto(&self.mosquitto, self.dir.path(), self.port);
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

/// Mosquitto on `dir`/mosquitto.conf, logging to `dir`/mosquitto.log
/// (appended: a restarted broker adds to it), once it listens on `port`.
fn spawn_mosquitto(mosquitto: &Path, dir: &Path, port: u16) -> Child {
    let log_path = dir.join("mosquitto.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("broker log");
    let mut child = Command::new(mosquitto)
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(log.try_clone().expect("broker log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", mosquitto.display()));
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log_path);
            panic!("mosquitto did not listen on port {port}: {log:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
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
        Subscriber::start_with(port, false)
    }

    /// `persistent`: with a persistent session (clean session off), so that
    /// what is published while it is cut off from a restarted broker (one
    /// with `persistence true`) waits for it there.
    pub fn start_with(port: u16, persistent: bool) -> Subscriber {
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
                    .set_clean_session(!persistent)
                    .set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut eventloop) = AsyncClient::new(opts, 100);
                client
                    .subscribe("#", QoS::AtLeastOnce)
                    .await
                    .expect("queue the subscription");
                let mut got = Vec::new();
                // Said once per outage, not on every retry.
                let mut failing = false;
                loop {
                    tokio::select! {
                        ev = eventloop.poll() => match ev {
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                got.push((wall_ms(), p));
                                r.fetch_add(1, Relaxed);
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => ok.store(true, Relaxed),
                            Ok(Event::Incoming(Packet::ConnAck(_))) if failing => {
                                eprintln!("[bench] subscriber reconnected");
                                failing = false;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                if !failing {
                                    eprintln!("[bench] subscriber: {e}; retrying every 100 ms");
                                    failing = true;
                                }
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
