//! Test support: a real Mosquitto broker on a free loopback port, vigil as a
//! process or in-process, a publisher, and config files in a temp dir.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// Generous upper bound for anything a test waits on (not a speed claim).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_path() -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = Path::new(dir).join("mosquitto");
        if p.is_file() {
            return p;
        }
    }
    panic!("mosquitto is not installed: these tests need a real broker. Install it with `apt-get install -y mosquitto` (Debian/Ubuntu) and run the tests again.");
}

/// TLS listener settings for the broker.
#[derive(Clone)]
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_client_cert: bool,
}

/// A Mosquitto process, killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    /// Config, log and (for a persistent broker) the persistence database.
    dir: Option<tempfile::TempDir>,
    tls: Option<BrokerTls>,
    persistent: bool,
}

/// What a broker logs besides its defaults.
#[derive(Clone, Copy, PartialEq)]
enum BrokerLog {
    Default,
    /// Every packet, with its packet id (`log_type all`).
    Packets,
}

/// A persistent broker that was stopped: its ports and its database, to
/// start it again as it was (`start`).
pub struct StoppedBroker {
    pub port: u16,
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    tls: Option<BrokerTls>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(None)
    }

    pub fn start_with(tls: Option<BrokerTls>) -> Broker {
        Self::start_on(free_port(), tls)
    }

    /// Start on a given port (to bring a broker back where vigil expects it).
    pub fn start_on(port: u16, tls: Option<BrokerTls>) -> Broker {
        let tls_port = tls.as_ref().map(|_| free_port());
        Self::launch(
            tempfile::tempdir().unwrap(),
            port,
            tls_port,
            tls,
            false,
            BrokerLog::Default,
        )
    }

    /// A broker whose log shows every packet it sends and receives, with
    /// its packet id: `Sending PUBLISH to CLIENT (d0, q1, r0, m7, 'TOPIC', ...`
    /// and `Received PUBACK from CLIENT (Mid: 7, RC:0)` tell which messages a
    /// client acknowledged.
    pub fn start_logging_packets() -> Broker {
        Self::launch(
            tempfile::tempdir().unwrap(),
            free_port(),
            None,
            None,
            false,
            BrokerLog::Packets,
        )
    }

    /// A broker that keeps sessions, their subscriptions and queued messages
    /// (and retained messages) across `stop` and `StoppedBroker::start`.
    pub fn start_persistent(tls: Option<BrokerTls>) -> Broker {
        let tls_port = tls.as_ref().map(|_| free_port());
        Self::launch(
            tempfile::tempdir().unwrap(),
            free_port(),
            tls_port,
            tls,
            true,
            BrokerLog::Default,
        )
    }

    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        tls_port: Option<u16>,
        tls: Option<BrokerTls>,
        persistent: bool,
        log: BrokerLog,
    ) -> Broker {
        // Unlimited queue for offline persistent sessions (the default 1000
        // would drop messages while vigil is killed), and a wide in-flight window.
        let mut conf = format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 1000\n");
        if log == BrokerLog::Packets {
            conf.push_str("log_type all\n");
        }
        if persistent {
            // Mosquitto, started as root, drops to its own user before it
            // writes the database (on a clean stop).
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                dir.path().display()
            ));
        }
        if let (Some(t), Some(p)) = (&tls, tls_port) {
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                t.ca.display(),
                t.cert.display(),
                t.key.display(),
                t.require_client_cert
            ));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&conf_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto");
        let broker = Broker {
            child,
            port,
            tls_port,
            dir: Some(dir),
            tls,
            persistent,
        };
        for p in std::iter::once(port).chain(tls_port) {
            wait_until("the broker listens", || {
                TcpStream::connect(("127.0.0.1", p)).is_ok()
            });
        }
        broker
    }

    /// The broker's own log so far.
    pub fn log(&self) -> String {
        let dir = self.dir.as_ref().expect("a running broker has its dir");
        fs::read_to_string(dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stop a persistent broker cleanly (SIGTERM: it saves its database).
    pub fn stop(mut self) -> StoppedBroker {
        assert!(self.persistent, "only a persistent broker can be restarted");
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "mosquitto exited with {status}");
        StoppedBroker {
            port: self.port,
            tls_port: self.tls_port,
            dir: self.dir.take().unwrap(),
            tls: self.tls.take(),
        }
    }
}

impl StoppedBroker {
    /// Start the broker again on the same ports with the same database.
    pub fn start(self) -> Broker {
        Broker::launch(
            self.dir,
            self.port,
            self.tls_port,
            self.tls,
            true,
            BrokerLog::Default,
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `cond` every 20 ms until it holds; panic after `PATIENCE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config directory: vigil.toml, devices/default.toml, store/.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// Settings that vary between tests; everything else is fixed.
pub struct Options {
    pub port: u16,
    pub qos: u8,
    pub budget_bytes: u64,
    pub flush_interval_ms: u64,
    pub flush_max_readings: u64,
    pub max_payload_bytes: u64,
    pub template: String,
    /// Extra lines for the [broker] table (TLS and so on).
    pub broker_extra: String,
    /// Content of devices/default.toml.
    pub default_device: String,
    /// Appended after the [store] table: further tables ([upstream] ...).
    pub extra_tables: String,
    /// `[http] listen`: port 0 (any free port) unless a test asks for one.
    pub http_listen: String,
}

impl Options {
    pub fn new(port: u16) -> Self {
        Options {
            port,
            qos: 1,
            budget_bytes: 1 << 30,
            flush_interval_ms: 10,
            flush_max_readings: 2000,
            max_payload_bytes: 1 << 20,
            template: "plant/+/{device}/{metric}".into(),
            broker_extra: String::new(),
            default_device: "match = \"*\"\n".into(),
            extra_tables: String::new(),
            http_listen: "127.0.0.1:0".into(),
        }
    }
}

impl Setup {
    pub fn new(o: &Options) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("devices")).unwrap();
        fs::write(dir.path().join("devices/default.toml"), &o.default_device).unwrap();
        let client_id = format!("vigil-test-{}", o.port);
        let text = format!(
            r#"gateway_id = "gw-test"
log_level = "info"

[broker]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
keepalive_s = 5
max_payload_bytes = {max_payload}
reconnect_min_ms = 50
reconnect_max_ms = 500
{extra}

[[subscriptions]]
template = "{template}"
qos = {qos}

[store]
path = "store"
budget_bytes = {budget}
flush_interval_ms = {flush}
flush_max_readings = {max}
dead_letter_max_bytes = {dl_bytes}

[http]
listen = "{http}"

{tables}
"#,
            port = o.port,
            max_payload = o.max_payload_bytes,
            extra = o.broker_extra,
            template = o.template,
            qos = o.qos,
            budget = o.budget_bytes,
            flush = o.flush_interval_ms,
            max = o.flush_max_readings,
            dl_bytes = (o.budget_bytes / 2).min(1 << 20),
            tables = o.extra_tables,
            http = o.http_listen,
        );
        let config = dir.path().join("vigil.toml");
        fs::write(&config, text).unwrap();
        Setup { dir, config }
    }

    pub fn load(&self) -> vigil::config::Config {
        vigil::config::load(&self.config).unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vigil.log")
    }

    /// Run `vigil inspect <what>` as it is, success or not.
    pub fn inspect_output(&self, what: &str, last: usize) -> std::process::Output {
        vigil_cmd()
            .args(["inspect", "--config"])
            .arg(&self.config)
            .arg(what)
            .args(["--last", &last.to_string()])
            .output()
            .unwrap()
    }

    /// Run `vigil inspect <what>` and parse its JSON lines.
    pub fn inspect(&self, what: &str, last: usize) -> Vec<serde_json::Value> {
        let out = self.inspect_output(what, last);
        assert!(
            out.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn vigil_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

/// `vigil run` as a child process, logging to `setup.log_path()` (appending).
pub struct VigilProcess {
    child: Child,
    log: PathBuf,
}

impl VigilProcess {
    pub fn start(setup: &Setup) -> VigilProcess {
        let log_path = setup.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = vigil_cmd()
            .args(["run", "--config"])
            .arg(&setup.config)
            .env("VIGIL_LOG", "info,vigil::ingest::writer=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        VigilProcess {
            child,
            log: log_path,
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn wait_for_log(&self, needle: &str, occurrences: usize) {
        wait_until(
            &format!("the log shows {needle:?} {occurrences} time(s)"),
            || self.log().matches(needle).count() >= occurrences,
        );
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "vigil did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for vigil to exit by itself; panic after `PATIENCE`.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "vigil did not exit by itself; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VigilProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message to publish.
#[derive(Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
}

impl Msg {
    pub fn new(topic: &str, payload: impl Into<Vec<u8>>) -> Msg {
        Msg {
            topic: topic.into(),
            payload: payload.into(),
            qos: 1,
        }
    }
}

/// Publish every message, waiting for the broker's PUBACK of each QoS 1 one.
pub async fn publish(port: u16, msgs: Vec<Msg>) {
    publish_with(port, msgs, |_| {}).await
}

/// `publish` with client options of the caller's (credentials, TLS).
pub async fn publish_with(port: u16, msgs: Vec<Msg>, configure: impl FnOnce(&mut MqttOptions)) {
    let id = format!(
        "test-pub-{}-{}",
        port,
        std::process::id() as u64 * 1000 + rand_u64() % 1000
    );
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5))
        .set_inflight(200);
    // Up to what MQTT allows (tests of oversized payloads).
    opts.set_max_packet_size(256 << 20, 256 << 20);
    configure(&mut opts);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let expected_acks = msgs.iter().filter(|m| m.qos > 0).count();
    let total = msgs.len();
    let sender = tokio::spawn(async move {
        for m in msgs {
            let qos = if m.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            client
                .publish(m.topic, qos, false, m.payload)
                .await
                .unwrap();
        }
        client
    });
    let (mut acks, mut sent) = (0, 0);
    while acks < expected_acks || sent < total {
        match tokio::time::timeout(PATIENCE, eventloop.poll())
            .await
            .expect("publisher stalled")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) => sent += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher lost its connection: {e}"),
        }
    }
    let client = sender.await.unwrap();
    client.disconnect().await.unwrap();
    while let Ok(ev) = eventloop.poll().await {
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
}

/// Start vigil in-process and wait until its subscriptions are in place.
pub async fn start_app(setup: &Setup) -> vigil::app::Running {
    // Logs show up with the failing test's output (set VIGIL_LOG=debug for more).
    let filter = std::env::var("VIGIL_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
    let running = vigil::app::start(&setup.load()).await.unwrap();
    let m = running.metrics().clone();
    tokio::task::spawn_blocking(move || {
        wait_until("vigil has subscribed", || {
            m.subscribed.load(std::sync::atomic::Ordering::Relaxed)
        })
    })
    .await
    .unwrap();
    running
}

/// Blocking wrapper around `publish` for tests without a runtime.
pub fn publish_blocking(port: u16, msgs: Vec<Msg>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(publish(port, msgs));
}

/// A little randomness without a dependency (seeded from the clock).
pub fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut x = nanos ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Run `vigil backtest ARGS --json INPUTS` and parse its JSON report.
pub fn backtest_json(args: &[&str], inputs: &[PathBuf]) -> serde_json::Value {
    let out = vigil_cmd()
        .arg("backtest")
        .args(args)
        .arg("--json")
        .args(inputs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backtest --json prints one JSON document")
}

/// One message a `Subscriber` received.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A QoS 1 subscriber with a persistent session (fixed client id,
/// clean_session = false) in a thread of its own: it reconnects whenever its
/// broker comes back and records every message in arrival order.
pub struct Subscriber {
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// session_present of each CONNACK.
    sessions: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    client: AsyncClient,
}

impl Subscriber {
    /// Connect, subscribe to `filter` and wait for the SUBACK.
    pub fn start(port: u16, client_id: &str, filter: &str) -> Subscriber {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicBool::new(false));
        let (c, r, s, st, sub) = (
            client.clone(),
            received.clone(),
            sessions.clone(),
            stop.clone(),
            subscribed.clone(),
        );
        let filter = filter.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                while !st.load(Ordering::Relaxed) {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            s.lock().unwrap().push(ack.session_present);
                            // A resumed session keeps its subscription (and
                            // subscribing again would resend retained messages).
                            if !ack.session_present {
                                c.try_subscribe(filter.clone(), QoS::AtLeastOnce).unwrap();
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            sub.store(true, Ordering::Relaxed)
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            r.lock().unwrap().push(Received {
                                topic: p.topic,
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            })
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
        });
        wait_until("the subscriber has subscribed", || {
            subscribed.load(Ordering::Relaxed)
        });
        Subscriber {
            received,
            sessions,
            stop,
            client,
        }
    }

    /// Everything received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// session_present of every CONNACK so far.
    pub fn sessions(&self) -> Vec<bool> {
        self.sessions.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the event loop if it is connected; otherwise its next
        // connection attempt fails and the thread sees `stop`.
        let _ = self.client.try_disconnect();
    }
}

/// The retained message on `topic` (as text), asked with `mosquitto_sub`.
pub fn retained(port: u16, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["--retained-only", "-C", "1", "-W", "2"])
        .output()
        .expect("mosquitto_sub is not installed (apt-get install -y mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `vigil inspect stats` of a stopped agent.
pub fn stats(setup: &Setup) -> serde_json::Value {
    setup.inspect("stats", 1).remove(0)
}

pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// Wait until ingest has committed nothing new for 1.5 s (the broker's
/// backlog is taken, and detection, woken by each commit, has run over it).
pub fn wait_until_commits_settle(vigil: &VigilProcess) {
    let count = || vigil.log().matches("batch committed").count();
    let deadline = Instant::now() + PATIENCE;
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "vigil never caught up");
        std::thread::sleep(Duration::from_millis(100));
        if count() != last.0 {
            last = (count(), Instant::now());
        }
    }
}

/// Length of vigil's log so far (what a new start appends comes after).
pub fn log_len(setup: &Setup) -> usize {
    fs::metadata(setup.log_path()).map_or(0, |m| m.len() as usize)
}

pub mod pki;
pub mod relay;

impl VigilProcess {
    /// `vigil run` like `start`, with extra environment variables (and
    /// without any systemd variables this test process may have inherited).
    /// With `pid_var`, that variable holds vigil's own pid, as systemd sets
    /// `WATCHDOG_PID`: a shell exports its `$$` and execs vigil in its place.
    pub fn start_with_env(
        setup: &Setup,
        env: &[(&str, &str)],
        pid_var: Option<&str>,
    ) -> VigilProcess {
        let log_path = setup.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = match pid_var {
            Some(var) => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(format!("export {var}=$$; exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_vigil"));
                c
            }
            None => vigil_cmd(),
        };
        cmd.args(["run", "--config"])
            .arg(&setup.config)
            .env("VIGIL_LOG", "info,vigil::ingest::writer=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        VigilProcess {
            child: cmd.spawn().unwrap(),
            log: log_path,
        }
    }

    /// Send a signal (`"HUP"`, `"TERM"`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Still running (not exited)?
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The address of the health and metrics endpoint, from the log line
    /// that announces it (the newest one: the log spans every start).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        const NEEDLE: &str = "health and metrics endpoint listening on http://";
        self.wait_for_log(NEEDLE, 1);
        let log = self.log();
        let at = log.rfind(NEEDLE).unwrap() + NEEDLE.len();
        let addr = &log[at..at + log[at..].find('/').unwrap()];
        addr.parse()
            .unwrap_or_else(|e| panic!("bad endpoint address {addr:?}: {e}"))
    }
}

/// One HTTP response: status, headers (names in lower case) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` over HTTP/1.1 with `Connection: close`, reading to the end.
pub fn http_request(addr: std::net::SocketAddr, path: &str) -> HttpResponse {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut r = HttpResponse {
        status,
        headers,
        body: body.to_string(),
    };
    if r.header("transfer-encoding") == Some("chunked") {
        let mut rest = r.body.as_str();
        let mut out = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        r.body = out;
    }
    r
}

/// GET `path` from the endpoint on loopback `port`: status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let r = http_request(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path);
    (r.status, r.body)
}

/// The samples of a `/metrics` exposition by series as written
/// (`name` or `name{k="v",...}`).
pub fn metric_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let v = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad sample value in {l:?}")),
            };
            (series.to_string(), v)
        })
        .collect()
}

/// `/metrics` of the agent at `addr`, parsed (it must answer 200).
pub fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let r = http_request(addr, "/metrics");
    assert_eq!(r.status, 200, "/metrics answered {}: {}", r.status, r.body);
    metric_samples(&r.body)
}

/// One series of a parsed exposition; panics when it is missing.
pub fn series(samples: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no series {key} in /metrics: {samples:#?}"))
}

/// Peak resident memory (VmHWM) of a process, in KiB, from /proc (Linux).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// `vigil run` on `setup` for a start that must end by itself: its exit
/// status and what it wrote to stderr. Killed, and the test failed with
/// `kept_running`, if it is still running after the patience.
pub fn run_to_exit(setup: &Setup, kept_running: &str) -> (ExitStatus, String) {
    let mut child = vigil_cmd()
        .args(["run", "--config"])
        .arg(&setup.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{kept_running}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .as_mut()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}
