//! `[embedded_broker]`: an MQTT broker inside vigil, for a gateway that has
//! none (and for `vigil demo`). Off unless `enabled = true`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Deserialize;

use super::diag::{ConfigError, Source};
use super::ranges;

/// Where the embedded broker listens unless `listen` says otherwise.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedBrokerConfig {
    /// Address for MQTT 3.1.1 clients.
    pub listen: SocketAddr,
    /// Clients connected at once, vigil's own connection included.
    pub max_connections: usize,
    /// Larger publishes are refused by the broker (the client is disconnected).
    pub max_payload_bytes: usize,
    /// Messages the broker keeps per subscription for a subscriber that has
    /// not taken them yet, in memory; beyond it the oldest are dropped.
    pub queue_bytes: usize,
}

impl EmbeddedBrokerConfig {
    /// The address vigil's own ingest connects to: the listen address, or
    /// loopback when it listens on every interface.
    pub fn local_address(&self) -> (String, u16) {
        let ip = match self.listen.ip() {
            ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            ip => ip,
        };
        (ip.to_string(), self.listen.port())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmbedded {
    enabled: Option<bool>,
    listen: Option<String>,
    max_connections: Option<u64>,
    max_payload_bytes: Option<u64>,
    queue_bytes: Option<u64>,
}

pub(super) fn validate(
    src: &Source,
    raw: Option<RawEmbedded>,
    errors: &mut Vec<ConfigError>,
) -> Option<EmbeddedBrokerConfig> {
    let raw = raw?;
    let start = errors.len();
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_EMBEDDED_LISTEN);
    let addr = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        errors.push(src.at(
            "embedded_broker.listen",
            format!("{listen:?} is not an address; expected IP:port such as \"{DEFAULT_EMBEDDED_LISTEN}\" (or \"0.0.0.0:1883\" for sensors on the network)"),
        ));
        SocketAddr::from(([127, 0, 0, 1], 1883))
    });
    if addr.port() == 0 {
        errors.push(src.at(
            "embedded_broker.listen",
            "port 0 is not a port sensors can be told; expected 1 to 65535",
        ));
    }
    let mut bounded = |key: &str, value: Option<u64>, default: u64, range: ranges::Whole| {
        let v = value.unwrap_or(default);
        range.check_at(src, &format!("embedded_broker.{key}"), v, errors);
        // Within range, every one fits a 32-bit `usize`.
        usize::try_from(v).unwrap_or(usize::MAX)
    };
    let max_connections = bounded(
        "max_connections",
        raw.max_connections,
        1000,
        ranges::MAX_CONNECTIONS,
    );
    let max_payload_bytes = bounded(
        "max_payload_bytes",
        raw.max_payload_bytes,
        1 << 20,
        ranges::MAX_PAYLOAD_BYTES,
    );
    let queue_bytes = bounded(
        "queue_bytes",
        raw.queue_bytes,
        32 << 20,
        ranges::QUEUE_BYTES,
    );
    if errors.len() > start || raw.enabled != Some(true) {
        return None;
    }
    Some(EmbeddedBrokerConfig {
        listen: addr,
        max_connections,
        max_payload_bytes,
        queue_bytes,
    })
}
