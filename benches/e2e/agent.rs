//! vigil as a gateway runs it: the release binary in a process of its own,
//! configured through vigil.toml and a device file, observed through its
//! `/metrics` endpoint and /proc/<pid>.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::brokers::free_port;
use crate::machine::cpu_of;
use crate::prom::{scrape, Metrics};

/// What detection does with every stream.
#[derive(Debug, Clone, Copy)]
pub enum Detection {
    /// 10-reading windows, the learned baseline (mean and std, CUSUM,
    /// volatility), ISO 10816 zones on vibration: a gateway's everyday work.
    Baseline,
    /// One window per reading and a static limit on the mean, raised and
    /// cleared by one window: every reading is an aggregate, every reading
    /// above the limit an alert.
    OneReading,
}

const BASELINE: &str = r#"
match = "*"
description = "Benchmark sensor: 10-reading windows, the learned baseline"

[alerts]
raise_after = 2
clear_after = 3

[metrics."*"]
window_readings = 10

[metrics."*".baseline]
features = ["mean", "std"]
warmup_windows = 30
cusum = true
volatility = true

[metrics.temperature]
unit = "degC"

[metrics.vibration]
unit = "mm/s"

[metrics.vibration.iso10816]
group = 2
foundation = "rigid"
"#;

/// vigil.toml: vigil's defaults (store budget, group commit every 20 ms or
/// 8,192 readings, detection checkpoints every 5 s, `max_inflight = 100`
/// upstream) except quick reconnects, and any [`store_extra`] lines.
fn vigil_toml(local: u16, upstream: u16, http: u16) -> String {
    let store_extra = store_extra();
    format!(
        r#"gateway_id = "gw-e2e"
log_level = "info,vigil::detect::stage=error"
devices_dir = "devices"

[broker]
host = "127.0.0.1"
port = {local}
client_id = "vigil-e2e"
reconnect_min_ms = 100
reconnect_max_ms = 1000

[[subscriptions]]
template = "plant/+/{{device}}/{{metric}}"
qos = 1

[store]
path = "store"
{store_extra}

[http]
listen = "127.0.0.1:{http}"

[upstream]
host = "127.0.0.1"
port = {upstream}
client_id = "vigil-e2e-upstream"
reconnect_min_ms = 100
reconnect_max_ms = 1000
topic_prefix = "bench"
encoding = "json"
"#
    )
}

/// Extra `[store]` lines from `BENCH_STORE` (e.g. "checkpoint_interval_ms = 0"),
/// to measure a setting against the defaults; the report's header shows them.
pub fn store_extra() -> String {
    std::env::var("BENCH_STORE")
        .unwrap_or_default()
        .replace(';', "\n")
}

/// CPU, memory and disk writes of a process, from /proc/<pid>.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User + system CPU seconds.
    pub cpu: f64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    pub rss_kib: u64,
    /// Bytes the process caused to be written to storage (`write_bytes`),
    /// and of those, dirty page cache it truncated or deleted before it
    /// was written (`cancelled_write_bytes`).
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

impl Usage {
    /// Bytes written to storage so far (write_bytes − cancelled_write_bytes).
    pub fn written(&self) -> u64 {
        self.write_bytes.saturating_sub(self.cancelled_write_bytes)
    }
}

/// A `vigil run` process, killed on drop.
pub struct Agent {
    child: Child,
    http: u16,
    log: PathBuf,
}

impl Agent {
    /// Start vigil in `dir` (config, device file, store, log) between the
    /// brokers on `local` and `upstream`; returns once it has subscribed
    /// and is connected upstream.
    pub fn start(dir: &Path, local: u16, upstream: u16, detection: Detection) -> Agent {
        Agent::try_start(dir, local, upstream, detection, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As `start`; with `need_upstream` false it returns once vigil is ready
    /// and has subscribed, whether or not the upstream broker is there. An
    /// error says why vigil did not get there within 20 s.
    pub fn try_start(
        dir: &Path,
        local: u16,
        upstream: u16,
        detection: Detection,
        need_upstream: bool,
    ) -> Result<Agent, String> {
        let devices = match detection {
            Detection::Baseline => BASELINE,
            Detection::OneReading => crate::common::ONE_READING_DEVICE,
        };
        std::fs::create_dir_all(dir.join("devices")).expect("a devices directory");
        std::fs::write(dir.join("devices/bench.toml"), devices).expect("write the device file");
        let http = free_port();
        let config = dir.join("vigil.toml");
        std::fs::write(&config, vigil_toml(local, upstream, http)).expect("write vigil.toml");
        let log = dir.join("vigil.log");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("vigil's log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_vigil")));
        let mut agent = Agent { child, http, log };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!(
                    "vigil exited ({status}) at startup:\n{}",
                    agent.log_tail()
                ));
            }
            let subscribed =
                std::fs::read_to_string(&agent.log).is_ok_and(|l| l.contains(" subscribed"));
            let there = scrape(http).is_ok_and(|m| {
                m.get("vigil_ready") == 1.0 && (!need_upstream || m.upstream_connected())
            });
            if subscribed && there {
                return Ok(agent);
            }
            if start.elapsed() >= Duration::from_secs(20) {
                return Err(format!(
                    "vigil was not ready and subscribed{} within 20 s:\n{}",
                    if need_upstream {
                        " and connected upstream"
                    } else {
                        ""
                    },
                    agent.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a power cut or the OOM killer would end it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> Metrics {
        scrape(self.http)
            .unwrap_or_else(|e| panic!("cannot read vigil's /metrics: {e}\n{}", self.log_tail()))
    }

    /// Scrape every 10 ms until `done`: the first scrape that satisfies it,
    /// and when its answer arrived (never early). None after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Metrics) -> bool,
    ) -> Option<(Instant, Metrics)> {
        let start = Instant::now();
        loop {
            let m = self.metrics();
            let at = Instant::now();
            if done(&m) {
                return Some((at, m));
            }
            if start.elapsed() > limit {
                eprintln!("[bench] gave up waiting until {what}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn usage(&self) -> Usage {
        let pid = self.pid();
        let field = |file: &str, key: &str| -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0)
        };
        Usage {
            cpu: cpu_of(&format!("/proc/{pid}/stat")),
            hwm_kib: field("status", "VmHWM:"),
            rss_kib: field("status", "VmRSS:"),
            write_bytes: field("io", "write_bytes:"),
            cancelled_write_bytes: field("io", "cancelled_write_bytes:"),
        }
    }

    /// SIGTERM, as systemd stops it; false if it had to be killed or did
    /// not exit 0.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "[bench] vigil did not stop within 15 s:\n{}",
            self.log_tail()
        );
        false
    }

    /// Lines of vigil's log at WARN or above (say what went wrong), at most 20.
    pub fn warnings(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(20)
            .map(str::to_string)
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
