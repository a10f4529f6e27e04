//! vigil's configuration for the benchmark: a device file with one window
//! per reading and a static limit, and vigil.toml for the two brokers.

use std::path::Path;

use vigil::config::{Config, UpstreamConfig};

use crate::GATEWAY;

/// Write vigil.toml and devices/ into `dir` and load them like a user's.
pub fn config(
    dir: &Path,
    local_port: u16,
    upstream_port: u16,
    max_inflight: u16,
    flush_ms: u64,
) -> Config {
    std::fs::create_dir_all(dir.join("devices")).expect("a devices directory");
    std::fs::write(
        dir.join("devices/bench.toml"),
        crate::common::ONE_READING_DEVICE,
    )
    .expect("write a device file");
    let text = format!(
        r#"gateway_id = "{GATEWAY}"
log_level = "warn"
devices_dir = "devices"

[broker]
host = "127.0.0.1"
port = {local_port}
client_id = "vigil-bench-{local_port}"
keepalive_s = 30
reconnect_min_ms = 50
reconnect_max_ms = 500

[[subscriptions]]
template = "plant/+/{{device}}/{{metric}}"
qos = 1

[store]
path = "store"
budget_bytes = 17179869184
flush_interval_ms = {flush_ms}
flush_max_readings = 8192

[http]
listen = "127.0.0.1:0"

[upstream]
host = "127.0.0.1"
port = {upstream_port}
client_id = "vigil-bench-upstream-{upstream_port}"
keepalive_s = 30
reconnect_min_ms = 50
reconnect_max_ms = 500
topic_prefix = "bench"
encoding = "json"
max_inflight = {max_inflight}
"#
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).expect("write vigil.toml");
    vigil::config::load(&path).unwrap_or_else(|e| panic!("benchmark config invalid:\n{e}"))
}

pub fn upstream_of(config: &Config) -> UpstreamConfig {
    config
        .upstream
        .clone()
        .expect("the benchmark config has [upstream]")
}
