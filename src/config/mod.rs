//! Configuration: `vigil.toml` and `devices/*.toml` in, a validated `Config`
//! out. Parsing (serde `Raw*` types) and validation are separate steps, and
//! every error is collected with its file and line before anything starts.

mod detect;
mod detection;
mod detection_layer;
mod detection_merge;
mod detection_raw;
mod detection_vibration;
mod devices;
mod diag;
mod embedded;
pub mod ranges;
mod topic;
mod upstream;
mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use detect::{
    DetectConfig, DEFAULT_ALERT_STORM_PER_MINUTE, DEFAULT_MAX_FUTURE_SKEW_MS, DEFAULT_MAX_STREAMS,
    DEFAULT_STREAM_IDLE_MS,
};
pub use detection::*;
pub use devices::{DeviceClass, DeviceProfile, DeviceRegistry, MetricProfile};
pub use diag::{ConfigError, ConfigErrors, Source};
pub use embedded::{
    EmbeddedBrokerConfig, ServerTlsFiles, DEFAULT_EMBEDDED_LISTEN, DEFAULT_EMBEDDED_TLS_LISTEN,
};
pub use topic::{check_name, filter_matches, validate_filter, TopicIds, TopicTemplate};
pub use upstream::{Encoding, OutTopic, UpstreamConfig};
pub use users::{check_user_name, PasswordHash, Users, DEFAULT_ITERATIONS};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub gateway_id: String,
    /// A `tracing` filter directive such as `info` or `vigil=debug,warn`.
    pub log_level: String,
    pub broker: BrokerConfig,
    pub subscriptions: Vec<Subscription>,
    pub store: StoreConfig,
    /// Where alerts and aggregates go; without it they stay in the outbox
    /// (within the store's budget).
    pub upstream: Option<UpstreamConfig>,
    /// Where the health and metrics endpoint listens; `None`: switched off.
    pub http: Option<SocketAddr>,
    /// An MQTT broker inside vigil; `None`: the sensors' broker is elsewhere.
    pub embedded_broker: Option<EmbeddedBrokerConfig>,
    /// Gateway-wide rules of detection (`[detect]`).
    pub detect: DetectConfig,
    pub devices_dir: PathBuf,
    pub devices: DeviceRegistry,
    /// What is valid but likely a mistake or a risk, with file and line:
    /// `check-config` prints them, `vigil run` logs them.
    pub warnings: Vec<ConfigError>,
}

/// Default address of the health and metrics endpoint: loopback only.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9620";

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keepalive: Duration,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsFiles>,
    /// Larger payloads are dead-lettered without being decoded.
    pub max_payload_bytes: usize,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// PEM files for a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    /// Client certificate and key, for brokers that require mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// JSON when the payload starts with `{` or `[`, decimal text when it is a
    /// number, CBOR otherwise.
    Auto,
    Json,
    Cbor,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub filter: String,
    pub template: TopicTemplate,
    /// 0 or 1. QoS 1 messages are acknowledged only once stored.
    pub qos: u8,
    pub format: PayloadFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Bytes the store's files may take on disk; the data in them (readings
    /// log, outbox, dead letters, checkpoints) may take 2/5 of it before
    /// ingest pauses (see `store::disk`).
    pub budget_bytes: u64,
    /// Longest time a received reading waits before its batch is flushed.
    pub flush_interval: Duration,
    /// A batch is flushed as soon as it holds this many readings.
    pub flush_max_readings: usize,
    /// Longest time detection keeps its progress in memory before writing
    /// its cursor and stream states; alerts, a reload or a full store write
    /// at once. Zero writes after every batch.
    pub checkpoint_interval: Duration,
    pub dead_letter_max: usize,
    pub dead_letter_max_bytes: u64,
    /// Hard cap of the alerts outbox: alerts give way (oldest first) only
    /// when the store is full and they use more than this.
    pub alerts_max_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway_id: Option<String>,
    log_level: Option<String>,
    devices_dir: Option<String>,
    broker: Option<RawBroker>,
    subscriptions: Option<Vec<RawSubscription>>,
    store: Option<RawStore>,
    upstream: Option<upstream::RawUpstream>,
    http: Option<RawHttp>,
    embedded_broker: Option<embedded::RawEmbedded>,
    detect: Option<detect::RawDetect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    host: Option<String>,
    port: Option<u16>,
    client_id: Option<String>,
    keepalive_s: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    max_payload_bytes: Option<u64>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    tls: Option<RawTls>,
    allow_plaintext_credentials: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscription {
    template: Option<String>,
    topic: Option<String>,
    qos: Option<u8>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
    budget_bytes: Option<u64>,
    flush_interval_ms: Option<u64>,
    flush_max_readings: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    dead_letter_max: Option<u64>,
    dead_letter_max_bytes: Option<u64>,
    alerts_max_bytes: Option<u64>,
}

/// Load and validate `vigil.toml` and the device files it points to.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                message: format!("cannot read the configuration file: {e}"),
            }]))
        }
    };
    let config = from_str(path, text, &mut errors);
    match config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Parse and validate configuration text as if read from `path`.
/// Relative paths inside are resolved against `path`'s directory.
pub fn from_str(path: &Path, text: String, errors: &mut Vec<ConfigError>) -> Option<Config> {
    let mut src = Source::new(path, text);
    let parse_start = errors.len();
    let raw: Option<RawConfig> = diag::parse_file(&mut src, errors);
    let raw = raw?;
    let parse_end = errors.len();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let config = validate(&src, &base, raw, errors);
    // A key that failed to parse was dropped before validation; do not also
    // report it as missing or invalid.
    let parsed: Vec<(PathBuf, Option<usize>, String)> = errors[parse_start..parse_end]
        .iter()
        .map(|e| {
            (
                e.file.clone(),
                e.line,
                e.message.split(": ").next().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut i = parse_end;
    while i < errors.len() {
        let e = &errors[i];
        // Same file and the same key path (or a key inside it).
        if parsed.iter().any(|(f, _, p)| {
            *f == e.file
                && (e.message.starts_with(&format!("{p}:"))
                    || e.message.starts_with(&format!("{p}.")))
        }) {
            errors.remove(i);
        } else {
            i += 1;
        }
    }
    if errors.len() > parse_start {
        return None;
    }
    config
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn validate(
    src: &Source,
    base: &Path,
    raw: RawConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let start = errors.len();

    let gateway_id = match raw.gateway_id {
        Some(id) => {
            if let Err(e) = check_name("gateway", &id) {
                errors.push(src.at("gateway_id", e));
            }
            id
        }
        None => {
            errors.push(src.error(None, "gateway_id: missing; expected a name for this gateway, e.g. gateway_id = \"gw-hall2\""));
            String::new()
        }
    };

    let log_level = raw.log_level.unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        errors.push(src.at(
            "log_level",
            format!(
                "{e}; expected a level such as \"info\" or a filter such as \"vigil=debug,warn\""
            ),
        ));
    }

    let mut warnings = Vec::new();
    let embedded_broker = embedded::validate(src, base, raw.embedded_broker, errors, &mut warnings);
    let broker = validate_broker(
        src,
        base,
        raw.broker,
        embedded_broker.as_ref(),
        &gateway_id,
        errors,
    );

    let mut subscriptions = Vec::new();
    match raw.subscriptions {
        None => errors.push(src.error(
            None,
            "subscriptions: missing; expected at least one [[subscriptions]] table with a template",
        )),
        Some(subs) if subs.is_empty() => {
            errors.push(src.at("subscriptions", "expected at least one subscription"))
        }
        Some(subs) => {
            for (i, s) in subs.into_iter().enumerate() {
                if let Some(sub) = validate_subscription(src, i, s, errors) {
                    subscriptions.push(sub);
                }
            }
        }
    }

    let store = validate_store(src, base, raw.store, errors);
    let upstream = raw.upstream.and_then(|u| {
        upstream::validate(src, base, u, embedded_broker.as_ref(), &gateway_id, errors)
    });
    if let (Some(b), Some(u)) = (&broker, &upstream) {
        // One broker seeing one client id twice disconnects the older
        // connection each time: the two would take turns forever.
        if (&b.host, b.port, &b.client_id)
            == (
                &u.connection.host,
                u.connection.port,
                &u.connection.client_id,
            )
        {
            errors.push(src.at(
                "upstream.client_id",
                format!("{:?} is also broker.client_id on the same broker; the two connections need different ids", b.client_id),
            ));
        }
    }

    let http = validate_http(src, raw.http, errors);
    let detect = detect::validate(src, raw.detect, errors);

    // Device files are optional: a missing default directory means none; a
    // directory named in the file must exist.
    let devices_dir = resolve(base, raw.devices_dir.as_deref().unwrap_or("devices"));
    let devices = if raw.devices_dir.is_none() && !devices_dir.exists() {
        Some(DeviceRegistry::default())
    } else {
        devices::load_dir(&devices_dir, src, errors)
    };

    if errors.len() > start {
        return None;
    }
    Some(Config {
        path: src.path.clone(),
        gateway_id,
        log_level,
        broker: broker?,
        subscriptions,
        store: store?,
        upstream,
        http,
        embedded_broker,
        detect,
        devices_dir,
        devices: devices?,
        warnings,
    })
}

fn validate_http(
    src: &Source,
    raw: Option<RawHttp>,
    errors: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    let raw = raw.unwrap_or(RawHttp {
        enabled: None,
        listen: None,
    });
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
    let addr = match listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(src.at(
                "http.listen",
                format!("{listen:?} is not an address; expected IP:port such as \"{DEFAULT_HTTP_LISTEN}\""),
            ));
            None
        }
    };
    if raw.enabled == Some(false) {
        return None;
    }
    addr
}

fn validate_broker(
    src: &Source,
    base: &Path,
    raw: Option<RawBroker>,
    embedded: Option<&EmbeddedBrokerConfig>,
    gateway_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<BrokerConfig> {
    let mut raw = match (raw, embedded) {
        (Some(raw), _) => raw,
        (None, Some(_)) => RawBroker::default(),
        (None, None) => {
            errors.push(src.error(
                None,
                "broker: missing; expected a [broker] table with at least `host` (or an [embedded_broker] with enabled = true)",
            ));
            return None;
        }
    };
    // With the embedded broker, vigil's own connection goes to it unless
    // [broker] names another.
    if let (None, Some(e)) = (&raw.host, embedded) {
        let (host, port) = e.local_address();
        raw.host = Some(host);
        raw.port = raw.port.or(Some(port));
    }
    validate_connection(
        src,
        base,
        "broker",
        raw,
        embedded,
        &format!("vigil-{gateway_id}"),
        errors,
    )
}

/// The connection settings shared by `[broker]` and `[upstream]`; `section`
/// names the table in messages. A connection to the embedded broker is
/// vigil's own and signs in by itself (`broker::Insiders`).
fn validate_connection(
    src: &Source,
    base: &Path,
    section: &str,
    raw: RawBroker,
    embedded: Option<&EmbeddedBrokerConfig>,
    default_client_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<BrokerConfig> {
    let key = |k: &str| format!("{section}.{k}");
    let role = if section == "broker" {
        "local"
    } else {
        "upstream"
    };
    let start = errors.len();
    let host = raw.host.unwrap_or_default();
    if host.is_empty() {
        errors.push(src.at(
            &key("host"),
            format!("missing; expected the {role} broker's host name or address"),
        ));
    }
    let keepalive_s = raw.keepalive_s.unwrap_or(30);
    ranges::KEEPALIVE_S.check_at(src, &key("keepalive_s"), keepalive_s, errors);
    let client_id = raw
        .client_id
        .unwrap_or_else(|| default_client_id.to_string());
    if client_id.is_empty() || client_id.len() > 65535 {
        errors.push(src.at(&key("client_id"), "expected a non-empty client id; it must stay the same across restarts so the broker keeps vigil's session"));
    }
    let has_credentials =
        raw.username.is_some() || raw.password.is_some() || raw.password_file.is_some();
    let credentials = match (raw.username, raw.password, raw.password_file) {
        (None, None, None) => None,
        (None, _, _) => {
            errors.push(src.at(&key("username"), "missing; a password needs a username"));
            None
        }
        (Some(_), Some(_), Some(_)) => {
            errors.push(src.at(
                &key("password_file"),
                "set either `password` or `password_file`, not both",
            ));
            None
        }
        (Some(username), password, None) => Some(Credentials { username, password }),
        (Some(username), None, Some(file)) => {
            let file = resolve(base, &file);
            let first_line = |p: &str| p.lines().next().unwrap_or_default().to_string();
            match std::fs::read_to_string(&file) {
                Ok(p) if !first_line(&p).is_empty() => Some(Credentials {
                    username,
                    password: Some(first_line(&p)),
                }),
                Ok(_) => {
                    errors.push(src.at(
                        &key("password_file"),
                        format!(
                            "{} is empty; expected the password on its first line",
                            file.display()
                        ),
                    ));
                    None
                }
                Err(e) => {
                    errors.push(src.at(
                        &key("password_file"),
                        format!("cannot read {}: {e}", file.display()),
                    ));
                    None
                }
            }
        }
    };
    let has_tls = raw.tls.is_some();
    let tls = raw
        .tls
        .and_then(|t| validate_tls(src, base, &key("tls"), t, errors));
    let port = raw.port.unwrap_or(if has_tls { 8883 } else { 1883 });
    if embedded.is_some_and(|e| e.serves(&host, port)) {
        // Its listener and its users are for sensors; vigil's own
        // connection goes round them.
        for (k, set) in [("username", has_credentials), ("tls", has_tls)] {
            if set {
                errors.push(src.at(&key(k), format!("{host}:{port} is vigil's embedded broker, to which vigil connects inside the process and signs in by itself; remove {section}.{k}")));
            }
        }
    } else if credentials.is_some() && !has_tls && raw.allow_plaintext_credentials != Some(true) {
        errors.push(src.at(
            &key("username"),
            format!("the password would cross the network in plain text, for anyone on the way to read; add [{section}.tls], or set {section}.allow_plaintext_credentials = true where that is acceptable (a broker on this gateway, a closed network)"),
        ));
    }
    ranges::PORT.check_at(src, &key("port"), port.into(), errors);
    let max_payload_bytes = raw.max_payload_bytes.unwrap_or(1 << 20);
    ranges::MAX_PAYLOAD_BYTES.check_at(src, &key("max_payload_bytes"), max_payload_bytes, errors);
    let reconnect_min_ms = raw.reconnect_min_ms.unwrap_or(500);
    let reconnect_max_ms = raw.reconnect_max_ms.unwrap_or(30_000);
    let min_ok =
        ranges::RECONNECT_MIN_MS.check_at(src, &key("reconnect_min_ms"), reconnect_min_ms, errors);
    let max_ok =
        ranges::RECONNECT_MAX_MS.check_at(src, &key("reconnect_max_ms"), reconnect_max_ms, errors);
    if min_ok && max_ok && reconnect_min_ms > reconnect_max_ms {
        // Blame the key the user wrote (the other may be a default).
        let k = if raw.reconnect_max_ms.is_some() && raw.reconnect_min_ms.is_none() {
            "reconnect_max_ms"
        } else {
            "reconnect_min_ms"
        };
        errors.push(src.at(&key(k), format!(
            "expected reconnect_min_ms ({reconnect_min_ms}) <= reconnect_max_ms ({reconnect_max_ms})"
        )));
    }
    if errors.len() > start {
        return None;
    }
    Some(BrokerConfig {
        host,
        port,
        client_id,
        keepalive: Duration::from_secs(keepalive_s),
        credentials,
        tls,
        max_payload_bytes: max_payload_bytes as usize,
        reconnect_min: Duration::from_millis(reconnect_min_ms),
        reconnect_max: Duration::from_millis(reconnect_max_ms),
    })
}

fn validate_tls(
    src: &Source,
    base: &Path,
    key: &str,
    raw: RawTls,
    errors: &mut Vec<ConfigError>,
) -> Option<TlsFiles> {
    let start = errors.len();
    let ca_file = match raw.ca_file {
        Some(f) => resolve(base, &f),
        None => {
            errors.push(src.at(
                &format!("{key}.ca_file"),
                "missing; expected the PEM file of the CA that signed the broker's certificate",
            ));
            PathBuf::new()
        }
    };
    let client = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => Some((resolve(base, &c), resolve(base, &k))),
        (None, None) => None,
        (Some(_), None) => {
            errors.push(src.at(
                &format!("{key}.key_file"),
                "missing; a client certificate needs its private key",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(src.at(
                &format!("{key}.cert_file"),
                "missing; a client key needs its certificate",
            ));
            None
        }
    };
    if errors.len() > start {
        return None;
    }
    let files = TlsFiles { ca_file, client };
    // Load the PEM files now so that a bad certificate is a config error, not a runtime one.
    if let Err(e) = crate::tls::client_config(&files) {
        errors.push(src.at(key, e));
        return None;
    }
    Some(files)
}

fn validate_subscription(
    src: &Source,
    i: usize,
    raw: RawSubscription,
    errors: &mut Vec<ConfigError>,
) -> Option<Subscription> {
    let key = format!("subscriptions[{i}]");
    let start = errors.len();
    let template = match raw.template.as_deref().map(TopicTemplate::parse) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            errors.push(src.at(&format!("{key}.template"), e));
            None
        }
        None => {
            errors.push(src.at(
                &format!("{key}.template"),
                "missing; expected e.g. template = \"plant/+/{device}/{metric}\"",
            ));
            None
        }
    };
    let filter = match (raw.topic, &template) {
        (Some(t), _) => {
            if let Err(e) = validate_filter(&t) {
                errors.push(src.at(&format!("{key}.topic"), e));
            }
            t
        }
        (None, Some(t)) => t.filter(),
        (None, None) => String::new(),
    };
    let qos = raw.qos.unwrap_or(1);
    ranges::QOS.check_at(src, &format!("{key}.qos"), qos.into(), errors);
    let format = match raw.format.as_deref().unwrap_or("auto") {
        "auto" => PayloadFormat::Auto,
        "json" => PayloadFormat::Json,
        "cbor" => PayloadFormat::Cbor,
        "text" => PayloadFormat::Text,
        other => {
            errors.push(src.at(&format!("{key}.format"), format!("{other:?} is not a payload format; expected \"auto\", \"json\", \"cbor\" or \"text\"")));
            PayloadFormat::Auto
        }
    };
    if errors.len() > start {
        return None;
    }
    Some(Subscription {
        filter,
        template: template?,
        qos,
        format,
    })
}

fn validate_store(
    src: &Source,
    base: &Path,
    raw: Option<RawStore>,
    errors: &mut Vec<ConfigError>,
) -> Option<StoreConfig> {
    let Some(raw) = raw else {
        errors.push(src.error(
            None,
            "store: missing; expected a [store] table with at least `path`",
        ));
        return None;
    };
    let start = errors.len();
    let path = match raw.path {
        Some(p) if !p.is_empty() => resolve(base, &p),
        _ => {
            errors.push(src.at(
                "store.path",
                "missing; expected the directory of the store, e.g. \"/var/lib/vigil/store\"",
            ));
            PathBuf::new()
        }
    };
    let budget_bytes = raw.budget_bytes.unwrap_or(1 << 30);
    let mut sizes_ok =
        ranges::BUDGET_BYTES.check_at(src, "store.budget_bytes", budget_bytes, errors);
    let flush_interval_ms = raw.flush_interval_ms.unwrap_or(20);
    ranges::FLUSH_INTERVAL_MS.check_at(src, "store.flush_interval_ms", flush_interval_ms, errors);
    let flush_max_readings = raw.flush_max_readings.unwrap_or(8192);
    ranges::FLUSH_MAX_READINGS.check_at(
        src,
        "store.flush_max_readings",
        flush_max_readings,
        errors,
    );
    let checkpoint_interval_ms = raw.checkpoint_interval_ms.unwrap_or(5_000);
    ranges::CHECKPOINT_INTERVAL_MS.check_at(
        src,
        "store.checkpoint_interval_ms",
        checkpoint_interval_ms,
        errors,
    );
    let dead_letter_max = raw.dead_letter_max.unwrap_or(10_000);
    ranges::DEAD_LETTER_MAX.check_at(src, "store.dead_letter_max", dead_letter_max, errors);
    // Default: 16 MiB, or a quarter of a smaller budget.
    let dead_letter_max_bytes = raw
        .dead_letter_max_bytes
        .unwrap_or((16 << 20).min(budget_bytes / 4));
    if raw.dead_letter_max_bytes.is_some() {
        sizes_ok &= ranges::DEAD_LETTER_MAX_BYTES.check_at(
            src,
            "store.dead_letter_max_bytes",
            dead_letter_max_bytes,
            errors,
        );
    }
    // Default: half of what the dead letters leave. With the dead letters'
    // bound it must leave room for readings, or a full store could hold
    // nothing but those two and ingest would stay paused.
    let alerts_max_bytes = raw
        .alerts_max_bytes
        .unwrap_or(budget_bytes.saturating_sub(dead_letter_max_bytes) / 2);
    if raw.alerts_max_bytes.is_some() {
        sizes_ok &= ranges::ALERTS_MAX_BYTES.check_at(
            src,
            "store.alerts_max_bytes",
            alerts_max_bytes,
            errors,
        );
    }
    // Within their ranges (a default alerts cap is at most half the budget)
    // the sum cannot overflow.
    let dead_letters_fill_budget =
        raw.dead_letter_max_bytes.is_some() && dead_letter_max_bytes >= budget_bytes;
    if sizes_ok && dead_letters_fill_budget {
        errors.push(src.at(
            "store.dead_letter_max_bytes",
            format!("{dead_letter_max_bytes} must be below store.budget_bytes ({budget_bytes})"),
        ));
    } else if sizes_ok
        && (alerts_max_bytes < ranges::ALERTS_MAX_BYTES.min
            || alerts_max_bytes + dead_letter_max_bytes >= budget_bytes)
    {
        errors.push(src.at(
            if raw.alerts_max_bytes.is_some() { "store.alerts_max_bytes" } else { "store.dead_letter_max_bytes" },
            format!(
                "alerts_max_bytes ({alerts_max_bytes}) plus dead_letter_max_bytes ({dead_letter_max_bytes}) must stay below store.budget_bytes ({budget_bytes}), and alerts_max_bytes at least 1024"
            ),
        ));
    }
    if errors.len() > start {
        return None;
    }
    Some(StoreConfig {
        path,
        budget_bytes,
        flush_interval: Duration::from_millis(flush_interval_ms),
        flush_max_readings: flush_max_readings as usize,
        checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
        dead_letter_max: dead_letter_max as usize,
        dead_letter_max_bytes,
        alerts_max_bytes,
    })
}

#[cfg(test)]
mod detection_tests;
#[cfg(test)]
mod ranges_tests;
#[cfg(test)]
mod tests;
