//! Operating vigil: the health and metrics endpoint against a real pipeline
//! (two real brokers, a real store), `vigil status` from the running agent
//! and from the store, systemd notifications over a real datagram socket,
//! the shipped unit file through `systemd-analyze`, and a taken port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::forward::upstream_table;
use crate::support::{
    free_port, http_get, http_request, publish_blocking, run_to_exit, scrape, series, vigil_cmd,
    wait_until, Broker, Msg, Options, Setup, VigilProcess, PATIENCE,
};

/// Event time of the first reading (a whole minute).
const T0: i64 = 1_760_000_000_000;

/// `n` good readings of one stream, a second apart.
fn good_readings(n: usize) -> Vec<Msg> {
    (0..n)
        .map(|i| {
            Msg::new(
                "plant/l1/pump-1/temperature",
                format!(
                    "{{\"value\": {}, \"ts\": {}}}",
                    40.0 + i as f64 / 4.0,
                    T0 + i as i64 * 1000
                ),
            )
        })
        .collect()
}

/// `m` payloads that are neither JSON, CBOR nor a number.
fn malformed(m: usize) -> Vec<Msg> {
    (0..m)
        .map(|i| Msg::new("plant/l1/pump-1/temperature", format!("oops {i}")))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. /healthz, /readyz and /metrics over a real pipeline.

/// Check the exposition format line by line: every line is `# HELP name
/// text`, `# TYPE name counter|gauge` or `name{k="v",...} value` with a
/// number; every family has one HELP and one TYPE, before its samples, and
/// every sample belongs to a declared family. Returns the family names.
fn check_exposition(text: &str) -> BTreeSet<String> {
    let mut help: BTreeMap<String, usize> = BTreeMap::new();
    let mut kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut sampled: BTreeSet<String> = BTreeSet::new();
    let metric_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(metric_name(name), "bad name in {line:?}");
            assert!(!doc.trim().is_empty(), "empty help in {line:?}");
            assert!(!sampled.contains(name), "HELP after samples: {line:?}");
            *help.entry(name.into()).or_default() += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').expect("a type");
            assert!(metric_name(name), "bad name in {line:?}");
            assert!(matches!(t, "counter" | "gauge"), "bad type in {line:?}");
            assert!(!sampled.contains(name), "TYPE after samples: {line:?}");
            *kind.entry(name.into()).or_default() += 1;
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let parsed = match value {
            "+Inf" | "-Inf" | "NaN" => true,
            v => v.parse::<f64>().is_ok(),
        };
        assert!(parsed, "value is not a number in {line:?}");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, Some(rest.strip_suffix('}').expect("labels end with }"))),
            None => (series, None),
        };
        assert!(metric_name(name), "bad name in {line:?}");
        if let Some(labels) = labels {
            // k="v" pairs, comma separated; values have no unescaped quote.
            let mut rest = labels;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"").expect("k=\"v\"");
                assert!(metric_name(k), "bad label name in {line:?}");
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label in {line:?}"));
                rest = &after[end + 1..];
                rest = match rest.strip_prefix(',') {
                    Some(r) => r,
                    None => {
                        assert!(rest.is_empty(), "junk after a label in {line:?}");
                        rest
                    }
                };
            }
        }
        assert!(
            help.contains_key(name) && kind.contains_key(name),
            "sample before (or without) its HELP and TYPE: {line:?}"
        );
        sampled.insert(name.to_string());
    }
    for (name, n) in &help {
        assert_eq!(*n, 1, "{name} has {n} HELP lines");
        assert_eq!(
            kind.get(name),
            Some(&1),
            "{name} needs exactly one TYPE line"
        );
    }
    for name in kind.keys() {
        assert!(help.contains_key(name), "{name} has a TYPE but no HELP");
    }
    help.into_keys().collect()
}

#[test]
fn metrics_and_health_report_the_pipeline() {
    const N: usize = 37;
    const M: usize = 5;
    let local = Broker::start();
    let upstream = Broker::start();
    let mut o = Options::new(local.port);
    o.extra_tables = upstream_table(upstream.port, "");
    let setup = Setup::new(&o);
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let addr = vigil.http_addr();

    let mut msgs = good_readings(N);
    // Malformed payloads among the good ones.
    for (i, m) in malformed(M).into_iter().enumerate() {
        msgs.insert(i * 7, m);
    }
    publish_blocking(local.port, msgs);

    let stored = "vigil_readings_stored_total";
    let rejected = "vigil_messages_rejected_total{reason=\"malformed\"}";
    let connected = |b: &str| format!("vigil_broker_connected{{broker=\"{b}\"}}");
    wait_until(
        "/metrics shows every reading, rejection and connection",
        || {
            let s = scrape(addr);
            series(&s, stored) == N as f64
                && series(&s, rejected) == M as f64
                && series(&s, "vigil_detection_lag_readings") == 0.0
                && series(&s, &connected("local")) == 1.0
                && series(&s, &connected("upstream")) == 1.0
        },
    );

    assert_eq!(http_get(addr.port(), "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(
        http_get(addr.port(), "/readyz"),
        (200, "ready\n".to_string())
    );
    let (code, body) = http_get(addr.port(), "/nothing-here");
    assert_eq!(code, 404, "{body}");

    let r = http_request(addr, "/metrics");
    assert_eq!(r.status, 200);
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "content type {ctype:?}"
    );
    let families = check_exposition(&r.body);
    for name in [
        "vigil_build_info",
        "vigil_ready",
        "vigil_readings_stored_total",
        "vigil_messages_rejected_total",
        "vigil_outbox_entries",
        "vigil_broker_connected",
        "vigil_delivered_total",
        "vigil_alerts_raised_total",
        "vigil_config_reloads_total",
        "vigil_detection_lag_readings",
        "vigil_store_budget_bytes",
        "process_resident_memory_bytes",
    ] {
        assert!(families.contains(name), "no family {name} in:\n{}", r.body);
    }
    let s = crate::support::metric_samples(&r.body);
    assert_eq!(series(&s, stored), N as f64);
    assert_eq!(series(&s, rejected), M as f64);
    assert_eq!(
        series(&s, "vigil_messages_rejected_total{reason=\"schema\"}"),
        0.0
    );
    assert_eq!(series(&s, "vigil_ready"), 1.0);
    assert_eq!(
        series(&s, "vigil_store_budget_bytes"),
        o.budget_bytes as f64
    );
    assert!(series(&s, "process_resident_memory_bytes") > 1e6);
    for stage in ["ingest", "writer", "detect", "forward"] {
        assert_eq!(
            series(&s, &format!("vigil_stage_running{{stage=\"{stage}\"}}")),
            1.0,
            "stage {stage}"
        );
    }
    for lane in ["alerts", "aggregates"] {
        assert!(s.contains_key(&format!("vigil_outbox_entries{{lane=\"{lane}\"}}")));
        assert!(s.contains_key(&format!("vigil_delivered_total{{lane=\"{lane}\"}}")));
    }
    for result in ["applied", "rejected"] {
        assert_eq!(
            series(
                &s,
                &format!("vigil_config_reloads_total{{result=\"{result}\"}}")
            ),
            0.0
        );
    }
    let build = format!(
        "vigil_build_info{{version=\"{}\",gateway=\"gw-test\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(series(&s, &build), 1.0);

    // The upstream broker goes away: the gauge follows; vigil stays ready
    // (waiting for a broker is not being stuck) and local ingest goes on.
    drop(upstream);
    wait_until("/metrics shows the upstream broker disconnected", || {
        series(&scrape(addr), &connected("upstream")) == 0.0
    });
    let s = scrape(addr);
    assert_eq!(series(&s, &connected("local")), 1.0);
    assert_eq!(
        http_get(addr.port(), "/readyz"),
        (200, "ready\n".to_string())
    );
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
}

// ---------------------------------------------------------------------------
// 2. `vigil status`.

fn status_of(setup: &Setup) -> String {
    let out = vigil_cmd()
        .args(["status", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vigil status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn status_from_the_endpoint_and_from_the_store() {
    const N: usize = 7;
    let broker = Broker::start();
    let port = free_port();
    let mut o = Options::new(broker.port);
    // `vigil status` finds the agent at the configured port (not port 0).
    o.http_listen = format!("127.0.0.1:{port}");
    let setup = Setup::new(&o);
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    assert_eq!(vigil.http_addr().port(), port);
    let mut msgs = good_readings(N);
    msgs.extend(malformed(2));
    publish_blocking(broker.port, msgs);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("every reading is stored", || {
        let s = scrape(addr);
        series(&s, "vigil_readings_stored_total") == N as f64
            && series(&s, "vigil_messages_rejected_total{reason=\"malformed\"}") == 2.0
    });

    let live = status_of(&setup);
    let first = live.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "vigil {} on gw-test: running, ready  [http://127.0.0.1:{port}]",
            env!("CARGO_PKG_VERSION")
        ),
        "{live}"
    );
    let readings = format!("{N} stored, 2 rejected (malformed 2)");
    assert!(live.contains(&readings), "{live}");
    assert!(
        live.contains("local broker") && live.contains("connected"),
        "{live}"
    );

    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    let stopped = status_of(&setup);
    let first = stopped.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "vigil on gw-test: not running  [store {}]",
            setup.dir.path().join("store").display()
        ),
        "{stopped}"
    );
    assert!(stopped.contains(&readings), "{stopped}");
}

// ---------------------------------------------------------------------------
// 3. systemd notifications.

/// The datagrams vigil sends to its NOTIFY_SOCKET, in arrival order.
struct Notifications {
    sock: UnixDatagram,
    got: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notifications {
            sock,
            got: Vec::new(),
        }
    }

    /// Receive until `done(messages so far)` holds; panic after `PATIENCE`.
    fn wait_for(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        let mut buf = vec![0u8; 4096];
        while !done(&self.got) {
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; received {:?}",
                self.got
            );
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .got
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

/// Does the datagram hold the assignment `line` (`READY=1`)?
fn has(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// Index of the first message from `from` on that holds `line`.
fn find_from(got: &[String], from: usize, line: &str) -> Option<usize> {
    got.iter()
        .skip(from)
        .position(|m| has(m, line))
        .map(|i| i + from)
}

#[test]
fn systemd_notifications() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let socket = setup.dir.path().join("notify.sock");
    let mut n = Notifications::bind(&socket);
    // As systemd starts a service with `WatchdogSec=`: WATCHDOG_USEC, and
    // WATCHDOG_PID set to the service's own pid (sd-notify 0.4 enables the
    // watchdog only when it matches).
    let vigil = VigilProcess::start_with_env(
        &setup,
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
        Some("WATCHDOG_PID"),
    );

    n.wait_for("READY=1", |g| find_from(g, 0, "READY=1").is_some());
    let ready = find_from(&n.got, 0, "READY=1").unwrap();
    assert!(
        n.got[ready].lines().any(|l| l.starts_with("STATUS=")),
        "READY=1 comes with a STATUS: {:?}",
        n.got[ready]
    );
    // While the store is checked, more time to start is asked for.
    let extended = find_from(&n.got, 0, "EXTEND_TIMEOUT_USEC=120000000");
    assert!(
        extended.is_some_and(|e| e < ready),
        "no EXTEND_TIMEOUT_USEC before READY=1: {:?}",
        n.got
    );
    // Store open and stages started: ready means ready.
    let addr = vigil.http_addr();
    assert_eq!(
        http_get(addr.port(), "/readyz"),
        (200, "ready\n".to_string())
    );

    // Pinged every 200 ms (half of WATCHDOG_USEC).
    n.wait_for("two WATCHDOG=1 after READY=1", |g| {
        g[ready..].iter().filter(|m| has(m, "WATCHDOG=1")).count() >= 2
    });

    // SIGHUP: RELOADING=1, then READY=1 again.
    let before_hup = n.got.len();
    vigil.signal("HUP");
    n.wait_for("RELOADING=1 then READY=1", |g| {
        find_from(g, before_hup, "RELOADING=1")
            .is_some_and(|r| find_from(g, r + 1, "READY=1").is_some())
    });
    vigil.wait_for_log("reload: the device files are unchanged", 1);

    // SIGTERM: STOPPING=1 (read after the exit: the socket keeps it).
    let before_term = n.got.len();
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    n.wait_for("STOPPING=1", |g| {
        find_from(g, before_term, "STOPPING=1").is_some()
    });
}

// ---------------------------------------------------------------------------
// 4. The unit file.

fn systemd_analyze() -> &'static str {
    const PATH: &str = "/usr/bin/systemd-analyze";
    assert!(
        Path::new(PATH).is_file(),
        "systemd-analyze is not installed: this test checks systemd/vigil.service with it. Install it with `apt-get install -y systemd` and run the tests again."
    );
    PATH
}

#[test]
fn unit_file_verifies_and_is_hardened() {
    let analyze = systemd_analyze();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/vigil.service");
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/vigil run"), "{text}");
    // verify needs the binaries the unit names to exist.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("vigil.service");
    std::fs::write(
        &unit,
        text.replace("/usr/bin/vigil", env!("CARGO_BIN_EXE_vigil")),
    )
    .unwrap();

    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );

    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    const OVERALL: &str = "Overall exposure level for vigil.service: ";
    let last = report
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let at = last.find(OVERALL).unwrap_or_else(|| {
        panic!(
            "no overall exposure level in the last line:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let level: f64 = last[at + OVERALL.len()..]
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure level in {last:?}"));
    assert!(
        level <= 2.0,
        "exposure level {level} is above 2.0:\n{report}"
    );
}

// ---------------------------------------------------------------------------
// 5. A taken port.

#[test]
fn a_taken_port_fails_the_start_with_a_clear_error() {
    let broker = Broker::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut o = Options::new(broker.port);
    o.http_listen = addr.to_string();
    let setup = Setup::new(&o);
    let (status, stderr) = run_to_exit(&setup, "vigil kept running with its HTTP port taken");
    assert!(!status.success(), "vigil exited with {status}:\n{stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("[http] listen"),
        "the error should name {addr} and [http] listen:\n{stderr}"
    );
    drop(taken);
}
