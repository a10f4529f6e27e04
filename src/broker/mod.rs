//! The embedded MQTT broker: rumqttd inside the vigil process, so a gateway
//! without a broker (or a newcomer running `vigil demo`) needs nothing else.
//! Sensors connect to it as to any MQTT 3.1.1 broker; vigil's ingest
//! connects to it over loopback like to any other.
//!
//! What it is not: durable. The broker acknowledges a sensor's QoS 1
//! publish once the message is in its memory; the message is durable once
//! vigil's ingest has committed it (within `store.flush_interval_ms`). A
//! crash in between loses what the broker held, as with Mosquitto without
//! persistence. The broker sends vigil at most 100 unacknowledged QoS 1
//! messages (rumqttd's fixed window), and vigil acknowledges after each
//! commit, which caps a QoS 1 subscription at about 100 messages per
//! flush interval.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::EmbeddedBrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded_broker.listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded_broker: cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    #[error("embedded_broker: the broker did not accept connections on {0} within 10 s")]
    NotListening(SocketAddr),
}

/// A running embedded broker. rumqttd has no way to stop it: it runs until
/// the process exits.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Start the broker on its own threads and wait until it accepts
/// connections. A taken port is an error here, not a log line later.
pub fn start(config: &EmbeddedBrokerConfig) -> Result<EmbeddedBroker, BrokerError> {
    let listen = config.listen;
    // rumqttd binds on its own thread and only logs a failure; binding here
    // first turns a taken port into an error.
    let addr = TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map_err(|source| BrokerError::Listen {
            addr: listen,
            source,
        })?;
    // The router and one MQTT 3.1.1 listener, without rumqttd's `Broker`,
    // which would also link its console, Prometheus exporter and bridge.
    let (router, server) = settings(config, addr);
    let router_tx = rumqttd::Router::new(0, router).spawn();
    let mut server = rumqttd::Server::new(server, router_tx, rumqttd::protocol::v4::V4);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "embedded broker: cannot start its runtime");
                    return;
                }
            };
            if let Err(e) = runtime.block_on(server.start(rumqttd::LinkType::Remote)) {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let started = Instant::now();
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(BrokerError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

/// A segment of a subscription's in-memory log; the broker keeps
/// `queue_bytes / SEGMENT_BYTES` of them (at least 2).
const SEGMENT_BYTES: usize = 4 << 20;

pub(crate) fn settings(
    config: &EmbeddedBrokerConfig,
    addr: SocketAddr,
) -> (RouterConfig, ServerSettings) {
    let server = ServerSettings {
        name: "mqtt".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: config.max_payload_bytes,
            // Incoming QoS 1 publishes a client may have unacknowledged.
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let segment = SEGMENT_BYTES.min(config.queue_bytes);
    let router = RouterConfig {
        max_connections: config.max_connections,
        max_outgoing_packet_count: 1000,
        max_segment_size: segment,
        max_segment_count: (config.queue_bytes / segment).max(2),
        ..RouterConfig::default()
    };
    (router, server)
}
