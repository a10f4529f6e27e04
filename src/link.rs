//! What the two MQTT connections (local broker, upstream broker) share:
//! client options from a `BrokerConfig`, and the connection state that logs
//! each change once, tells the operator which setting to check, and paces
//! reconnects with backoff.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{ConnectReturnCode, ConnectionError, MqttOptions, StateError, Transport};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::BrokerConfig;

/// A connection that lasted this long resets the reconnect backoff; a link
/// that drops right after connecting keeps backing off instead of flapping.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Client options: id, keepalive, credentials and TLS. The caller sets the
/// session, acks, packet sizes and last will.
pub fn options(broker: &BrokerConfig) -> Result<MqttOptions, String> {
    let mut opts = MqttOptions::new(broker.client_id.clone(), broker.host.clone(), broker.port);
    opts.set_keep_alive(broker.keepalive);
    if let Some(c) = &broker.credentials {
        opts.set_credentials(c.username.clone(), c.password.clone().unwrap_or_default());
    }
    if let Some(files) = &broker.tls {
        let config = crate::tls::client_config(files)?;
        opts.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(config),
        ));
    }
    Ok(opts)
}

/// Kinds of connection failure, each with its own advice to the operator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    Credentials,
    Tls,
    Network,
    /// vigil refused an incoming packet for its size (the caller says more).
    TooLarge,
}

impl Failure {
    fn of(e: &ConnectionError) -> Failure {
        let msg = e.to_string();
        if matches!(
            e,
            ConnectionError::MqttState(StateError::Deserialization(
                rumqttc::Error::PayloadSizeLimitExceeded(_)
            ))
        ) {
            Failure::TooLarge
        } else if matches!(
            e,
            ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
            )
        ) {
            Failure::Credentials
        } else if matches!(e, ConnectionError::Tls(_))
            || msg.contains("certificate")
            || msg.contains("Certificate")
            || msg.contains("fatal alert")
        {
            // rumqttc reports some handshake failures as I/O errors; the text tells.
            Failure::Tls
        } else {
            Failure::Network
        }
    }
}

#[derive(PartialEq)]
enum State {
    Starting,
    /// Since when.
    Up(Instant),
    /// Since when, and what kind of failure (a new kind is a new state).
    Down(Instant, Failure),
}

/// The state of one connection.
pub struct Link {
    /// "local" or "upstream", for messages.
    role: &'static str,
    /// The config table, for advice: "broker" or "upstream".
    section: &'static str,
    addr: String,
    state: State,
    backoff: Backoff,
}

impl Link {
    pub fn new(role: &'static str, section: &'static str, broker: &BrokerConfig) -> Link {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        Link {
            role,
            section,
            addr: format!("{}:{}", broker.host, broker.port),
            state: State::Starting,
            backoff: Backoff::new(broker.reconnect_min, broker.reconnect_max, seed),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    /// The broker accepted the connection. Returns true for a reconnect.
    pub fn up(&mut self, session_present: bool) -> bool {
        let reconnect = match self.state {
            State::Down(since, _) => {
                info!(broker = %self.addr, session_present, outage_s = since.elapsed().as_secs_f64(), "connected to the {} broker", self.role);
                true
            }
            _ => {
                info!(broker = %self.addr, session_present, "connected to the {} broker", self.role);
                false
            }
        };
        self.state = State::Up(Instant::now());
        reconnect
    }

    /// The connection failed or dropped: log it if it is news, and return
    /// how long to wait before the next attempt.
    pub fn down(&mut self, e: &ConnectionError) -> Duration {
        if matches!(self.state, State::Up(since) if since.elapsed() >= STABLE_LINK) {
            self.backoff.reset();
        }
        let failure = Failure::of(e);
        let (role, section, addr) = (self.role, self.section, &self.addr);
        match self.state {
            State::Down(_, f) if f == failure => {
                debug!(broker = %addr, error = %e, "still cannot reach the {role} broker")
            }
            _ => {
                match failure {
                    Failure::Credentials => {
                        error!(broker = %addr, error = %e, "the {role} broker refused vigil's credentials; check {section}.username and the password; retrying")
                    }
                    Failure::Tls => {
                        error!(broker = %addr, error = %e, "TLS with the {role} broker failed; check {section}.tls (CA file, client certificate and key); retrying")
                    }
                    Failure::Network => {
                        warn!(broker = %addr, error = %e, "{role} broker unreachable; retrying with backoff")
                    }
                    Failure::TooLarge => {
                        debug!(broker = %addr, error = %e, "{role} connection dropped on an oversized packet; reconnecting")
                    }
                }
                let since = match self.state {
                    State::Down(since, _) => since,
                    _ => Instant::now(),
                };
                self.state = State::Down(since, failure);
            }
        }
        self.backoff.next_delay()
    }
}
