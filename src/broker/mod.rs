//! The embedded MQTT broker: rumqttd inside the vigil process, so a gateway
//! without a broker (or a newcomer running `vigil demo`) needs nothing else.
//! Sensors connect to it as to any MQTT 3.1.1 broker; vigil's ingest
//! connects to it over loopback like to any other.
//!
//! Who may connect: with `users_file`, only clients that sign in with a
//! password from it (`gate.rs`); with `[embedded_broker.tls]`, only over
//! TLS (`tls.rs`). vigil's own connections are [`Insiders`]: no other
//! client can present their client ids, so none can disconnect vigil or
//! add subscriptions to its session.
//!
//! What it is not: durable. The broker acknowledges a sensor's QoS 1
//! publish once the message is in its memory; the message is durable once
//! vigil's ingest has committed it (within `store.flush_interval_ms`). A
//! crash in between loses what the broker held, as with Mosquitto without
//! persistence. The broker sends vigil at most 100 unacknowledged QoS 1
//! messages (rumqttd's fixed window), and vigil acknowledges after each
//! commit, which caps a QoS 1 subscription at about 100 messages per
//! flush interval.

mod gate;
mod tls;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};

use crate::config::{BrokerConfig, Credentials, EmbeddedBrokerConfig};

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
    #[error("embedded_broker.tls: {0}")]
    Tls(String),
    #[error("embedded_broker: the system's random number generator failed")]
    Random,
}

/// vigil's own connections to its embedded broker (ingest, and the
/// forwarder when `[upstream]` names the embedded broker too). Their client
/// ids end in a suffix drawn at each start, and they sign in with a secret
/// drawn with it. Without a users file the suffix cannot be guessed; with
/// one, the broker also refuses such an id without the secret. So no other
/// client can take over vigil's session (MQTT gives a client id to the
/// newest connection) or subscribe in its name.
///
/// Since the broker keeps sessions in memory only, a session under such an
/// id lives exactly as long as this process: vigil keeps a persistent
/// session, so what arrives while its own connection reconnects is queued
/// for it, and the session holds exactly the subscriptions vigil made.
#[derive(Clone)]
pub struct Insiders {
    /// `-` and 128 random bits in hex.
    suffix: Arc<str>,
    /// 256 random bits in hex.
    secret: Arc<str>,
}

impl Insiders {
    pub fn draw() -> Result<Insiders, BrokerError> {
        let random_hex = |bytes: usize| {
            let mut b = vec![0u8; bytes];
            SystemRandom::new()
                .fill(&mut b)
                .map_err(|_| BrokerError::Random)?;
            Ok::<_, BrokerError>(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        };
        Ok(Insiders {
            suffix: format!("-{}", random_hex(16)?).into(),
            secret: random_hex(32)?.into(),
        })
    }

    /// Make `connection` one of vigil's own, to the broker at `local`: its
    /// configured client id gets the suffix, and it signs in with the secret.
    pub fn admit(&self, connection: &mut BrokerConfig, local: SocketAddr) {
        connection.client_id.push_str(&self.suffix);
        connection.credentials = Some(Credentials {
            username: connection.client_id.clone(),
            password: Some(self.secret.to_string()),
        });
        connection.host = local.ip().to_string();
        connection.port = local.port();
        connection.tls = None;
    }

    fn presents_own_id(&self, client_id: &str) -> bool {
        client_id.ends_with(&*self.suffix)
    }
}

/// A running embedded broker. rumqttd has no way to stop it: it runs until
/// the process exits.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    local: SocketAddr,
}

impl EmbeddedBroker {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where vigil's own connections reach it: loopback, and behind a TLS
    /// listener rumqttd's own plain one (on a loopback port of its own).
    pub fn local(&self) -> SocketAddr {
        self.local
    }
}

/// Start the broker on its own threads and wait until it accepts
/// connections. A taken port is an error here, not a log line later.
pub fn start(
    config: &EmbeddedBrokerConfig,
    insiders: &Insiders,
) -> Result<EmbeddedBroker, BrokerError> {
    let listen = config.listen;
    let listener = TcpListener::bind(listen).map_err(|source| BrokerError::Listen {
        addr: listen,
        source,
    })?;
    let addr = listener
        .local_addr()
        .map_err(|source| BrokerError::Listen {
            addr: listen,
            source,
        })?;
    // Without TLS, rumqttd listens on `listen` itself: it binds on its own
    // thread and only logs a failure, so binding here first turns a taken
    // port into an error. With TLS, vigil keeps the listener, and rumqttd
    // listens on a loopback port for it (and for vigil's own connections).
    let (mqtt_addr, tls) = match &config.tls {
        None => {
            drop(listener);
            (addr, None)
        }
        Some(files) => {
            let tls = crate::tls::server_config(files).map_err(BrokerError::Tls)?;
            let inner = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(|source| BrokerError::Listen {
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    source,
                })?;
            listener
                .set_nonblocking(true)
                .map_err(|source| BrokerError::Listen { addr, source })?;
            (inner, Some((listener, tls)))
        }
    };
    // The router and one MQTT 3.1.1 listener, without rumqttd's `Broker`,
    // which would also link its console, Prometheus exporter and bridge.
    let (router, mut server) = settings(config, mqtt_addr);
    if let Some(users) = &config.users {
        let gate = Arc::new(gate::Gate::new(users.clone(), insiders.clone())?);
        server
            .connections
            .set_auth_handler(move |client_id, user, password| {
                gate.clone().admits(client_id, user, password)
            });
    }
    let max_connections = config.max_connections;
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
            let result = runtime.block_on(async move {
                if let Some((listener, config)) = tls {
                    tokio::spawn(tls::serve(listener, config, mqtt_addr, max_connections));
                }
                server.start(rumqttd::LinkType::Remote).await
            });
            if let Err(e) = result {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let probe = if mqtt_addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, mqtt_addr.port()))
    } else {
        mqtt_addr
    };
    let started = Instant::now();
    while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(BrokerError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        users = config.users.as_ref().map_or(0, |u| u.len()),
        "embedded MQTT broker listening"
    );
    Ok(EmbeddedBroker { addr, local: probe })
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
