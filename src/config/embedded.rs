//! `[embedded_broker]`: an MQTT broker inside vigil, for a gateway that has
//! none (and for `vigil demo`). Off unless `enabled = true`. Who may connect:
//! anyone who reaches `listen`, or with `users_file` only clients with a
//! password from it; with `[embedded_broker.tls]` the listener speaks TLS
//! (and with its `ca_file`, takes only clients with a certificate from it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::diag::{ConfigError, Source};
use super::users::Users;
use super::{ranges, resolve};

/// Where the embedded broker listens unless `listen` says otherwise.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";
/// The same with `[embedded_broker.tls]`.
pub const DEFAULT_EMBEDDED_TLS_LISTEN: &str = "127.0.0.1:8883";

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
    /// Clients must sign in with a password of one of these; `None`:
    /// anyone may connect.
    pub users: Option<Users>,
    /// The listener speaks TLS with this certificate.
    pub tls: Option<ServerTlsFiles>,
}

/// PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
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

    /// Is a connection to `host`:`port` one to this broker? The listen
    /// address, `localhost`, and (when it listens on every interface)
    /// loopback: vigil cannot tell which names or other addresses lead
    /// back to the gateway.
    pub fn serves(&self, host: &str, port: u16) -> bool {
        let ip = match host {
            "localhost" => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            h => h.trim_start_matches('[').trim_end_matches(']').parse().ok(),
        };
        let listen = self.listen.ip();
        port == self.listen.port()
            && ip.is_some_and(|ip| ip == listen || (listen.is_unspecified() && ip.is_loopback()))
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
    users_file: Option<String>,
    tls: Option<RawServerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
}

pub(super) fn validate(
    src: &Source,
    base: &Path,
    raw: Option<RawEmbedded>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigError>,
) -> Option<EmbeddedBrokerConfig> {
    let raw = raw?;
    let start = errors.len();
    let default_listen = if raw.tls.is_some() {
        DEFAULT_EMBEDDED_TLS_LISTEN
    } else {
        DEFAULT_EMBEDDED_LISTEN
    };
    let listen = raw.listen.as_deref().unwrap_or(default_listen);
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
    let users = raw
        .users_file
        .and_then(|f| Users::load(&resolve(base, &f), errors));
    let tls = raw.tls.and_then(|t| validate_tls(src, base, t, errors));
    if errors.len() > start || raw.enabled != Some(true) {
        return None;
    }
    let clients_prove_who_they_are =
        users.is_some() || tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
    if !addr.ip().is_loopback() && !clients_prove_who_they_are {
        warnings.push(src.at(
            "embedded_broker.listen",
            format!("{addr} is reachable beyond this gateway, and any client there may publish readings and read every message; set embedded_broker.users_file (or embedded_broker.tls.ca_file), or listen on 127.0.0.1"),
        ));
    }
    Some(EmbeddedBrokerConfig {
        listen: addr,
        max_connections,
        max_payload_bytes,
        queue_bytes,
        users,
        tls,
    })
}

fn validate_tls(
    src: &Source,
    base: &Path,
    raw: RawServerTls,
    errors: &mut Vec<ConfigError>,
) -> Option<ServerTlsFiles> {
    let mut required = |key: &str, value: Option<String>, what: &str| match value {
        Some(f) => Some(resolve(base, &f)),
        None => {
            errors.push(src.at(
                &format!("embedded_broker.tls.{key}"),
                format!("missing; expected the PEM file of {what}"),
            ));
            None
        }
    };
    let cert_file = required(
        "cert_file",
        raw.cert_file,
        "the broker's certificate (and its chain)",
    );
    let key_file = required("key_file", raw.key_file, "the certificate's private key");
    let files = ServerTlsFiles {
        cert_file: cert_file?,
        key_file: key_file?,
        client_ca_file: raw.ca_file.map(|f| resolve(base, &f)),
    };
    // Load them now: a bad certificate is a config error, not a failed start.
    if let Err(e) = crate::tls::server_config(&files) {
        errors.push(src.at("embedded_broker.tls", e));
        return None;
    }
    Some(files)
}
