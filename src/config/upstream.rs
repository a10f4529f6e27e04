//! `[upstream]`: the broker alerts and aggregates are forwarded to, the topics
//! and encoding of what is sent, and how fast a backlog may drain.

use std::path::Path;

use serde::Deserialize;

use super::{
    ranges, validate_connection, BrokerConfig, ConfigError, EmbeddedBrokerConfig, RawBroker,
    RawTls, Source,
};

/// The validated `[upstream]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Host, port, client id, credentials, TLS, keepalive and reconnect backoff.
    pub connection: BrokerConfig,
    /// Topic of alert messages; `{device}` and `{metric}` are filled per message.
    pub alert_topic: OutTopic,
    pub aggregate_topic: OutTopic,
    /// Retained `online` / `offline` (the last will).
    pub status_topic: String,
    pub encoding: Encoding,
    /// Messages published and not yet acknowledged, at most.
    pub max_inflight: u16,
    /// Most aggregate messages per second (the backlog after an outage);
    /// alerts are never held back. `None`: as fast as the broker acks.
    pub aggregate_rate: Option<f64>,
    /// Forward per-window aggregates (alerts are always forwarded).
    pub aggregates: bool,
}

/// Payload encoding of upstream messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Cbor,
}

/// A topic with `{device}` and `{metric}` left to fill; `{prefix}` and
/// `{gateway}` are filled when the config is loaded. The template is parsed
/// once, so filling is one pass: a name that looks like a placeholder (a
/// device called `{metric}`) is copied as it is, never filled again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTopic(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Device,
    Metric,
}

impl OutTopic {
    pub fn render(&self, device: &str, metric: &str) -> String {
        let mut out = String::new();
        for part in &self.0 {
            out.push_str(match part {
                Part::Text(t) => t,
                Part::Device => device,
                Part::Metric => metric,
            });
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    host: Option<String>,
    port: Option<u16>,
    client_id: Option<String>,
    keepalive_s: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    tls: Option<RawTls>,
    allow_plaintext_credentials: Option<bool>,
    topic_prefix: Option<String>,
    alert_topic: Option<String>,
    aggregate_topic: Option<String>,
    status_topic: Option<String>,
    encoding: Option<String>,
    max_inflight: Option<u64>,
    aggregate_rate_per_s: Option<f64>,
    aggregates: Option<bool>,
}

const DEFAULT_ALERT_TOPIC: &str = "{prefix}/{gateway}/alerts/{device}/{metric}";
const DEFAULT_AGGREGATE_TOPIC: &str = "{prefix}/{gateway}/aggregates/{device}/{metric}";
const DEFAULT_STATUS_TOPIC: &str = "{prefix}/{gateway}/status";

/// Parse a topic template in one pass: `{prefix}` and `{gateway}` become
/// text, the placeholders in `per_message` are left to fill, any other is an
/// error; what is left must be a topic name (no wildcards).
fn topic(
    template: &str,
    prefix: &str,
    gateway: &str,
    per_message: &[&str],
) -> Result<OutTopic, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
            format!("{template:?} has an unclosed `{{`; placeholders are written {{name}}")
        })?;
        let name = &rest[open + 1..close];
        let part = match name {
            "prefix" => Part::Text(prefix.to_string()),
            "gateway" => Part::Text(gateway.to_string()),
            "device" if per_message.contains(&name) => Part::Device,
            "metric" if per_message.contains(&name) => Part::Metric,
            _ => {
                let mut known = vec!["prefix", "gateway"];
                known.extend_from_slice(per_message);
                return Err(format!(
                    "{template:?} has an unknown placeholder {{{name}}}; expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        };
        match part {
            Part::Text(t) => text.push_str(&t),
            other => {
                parts.push(Part::Text(std::mem::take(&mut text)));
                parts.push(other);
            }
        }
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    parts.push(Part::Text(text));
    parts.retain(|p| *p != Part::Text(String::new()));
    let literal = |p: &Part| match p {
        Part::Text(t) => t.contains(['+', '#', '\0']),
        _ => false,
    };
    if parts.is_empty() || parts.iter().any(literal) {
        let filled = OutTopic(parts).render("{device}", "{metric}");
        return Err(format!(
            "{template:?} gives {filled:?}, which is not an MQTT topic name (empty, or with a wildcard)"
        ));
    }
    Ok(OutTopic(parts))
}

pub(super) fn validate(
    src: &Source,
    base: &Path,
    raw: RawUpstream,
    embedded: Option<&EmbeddedBrokerConfig>,
    gateway_id: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<UpstreamConfig> {
    let start = errors.len();
    let connection = validate_connection(
        src,
        base,
        "upstream",
        RawBroker {
            host: raw.host,
            port: raw.port,
            client_id: raw.client_id,
            keepalive_s: raw.keepalive_s,
            username: raw.username,
            password: raw.password,
            password_file: raw.password_file,
            max_payload_bytes: None,
            reconnect_min_ms: raw.reconnect_min_ms,
            reconnect_max_ms: raw.reconnect_max_ms,
            tls: raw.tls,
            allow_plaintext_credentials: raw.allow_plaintext_credentials,
        },
        embedded,
        &format!("vigil-{gateway_id}-upstream"),
        errors,
    );
    let prefix = raw.topic_prefix.unwrap_or_else(|| "vigil".into());
    if prefix.contains(['+', '#']) || prefix.starts_with('/') || prefix.ends_with('/') {
        errors.push(src.at(
            "upstream.topic_prefix",
            format!("{prefix:?} is not usable; expected topic levels without wildcards and without a leading or trailing `/`"),
        ));
    }
    let mut topic_of = |key: &str, given: Option<String>, default: &str, per: &[&str]| {
        let template = given.unwrap_or_else(|| default.to_string());
        match topic(&template, &prefix, gateway_id, per) {
            Ok(t) => t,
            Err(e) => {
                errors.push(src.at(&format!("upstream.{key}"), e));
                OutTopic(Vec::new())
            }
        }
    };
    let per_stream = ["device", "metric"];
    let alert_topic = topic_of(
        "alert_topic",
        raw.alert_topic,
        DEFAULT_ALERT_TOPIC,
        &per_stream,
    );
    let aggregate_topic = topic_of(
        "aggregate_topic",
        raw.aggregate_topic,
        DEFAULT_AGGREGATE_TOPIC,
        &per_stream,
    );
    // No per-message placeholders: rendering only joins the text.
    let status_topic =
        topic_of("status_topic", raw.status_topic, DEFAULT_STATUS_TOPIC, &[]).render("", "");
    let encoding = match raw.encoding.as_deref().unwrap_or("json") {
        "json" => Encoding::Json,
        "cbor" => Encoding::Cbor,
        other => {
            errors.push(src.at(
                "upstream.encoding",
                format!("{other:?} is not an encoding; expected \"json\" or \"cbor\""),
            ));
            Encoding::Json
        }
    };
    let max_inflight = raw.max_inflight.unwrap_or(100);
    ranges::MAX_INFLIGHT.check_at(src, "upstream.max_inflight", max_inflight, errors);
    let aggregate_rate = raw
        .aggregate_rate_per_s
        .and_then(|r| match ranges::AGGREGATE_RATE_PER_S.check(r) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(src.at(
                    "upstream.aggregate_rate_per_s",
                    format!("{e} (leave it out for no limit)"),
                ));
                None
            }
        });
    if errors.len() > start {
        return None;
    }
    Some(UpstreamConfig {
        connection: connection?,
        alert_topic,
        aggregate_topic,
        status_topic,
        encoding,
        max_inflight: max_inflight as u16,
        aggregate_rate,
        aggregates: raw.aggregates.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_fill_known_placeholders_and_refuse_others() {
        let t = topic(
            DEFAULT_ALERT_TOPIC,
            "acme/plant1",
            "gw-1",
            &["device", "metric"],
        )
        .unwrap();
        assert_eq!(
            t.render("{device}", "{metric}"),
            "acme/plant1/gw-1/alerts/{device}/{metric}"
        );
        assert_eq!(
            t.render("pump-7", "temp"),
            "acme/plant1/gw-1/alerts/pump-7/temp"
        );
        let e = topic("{prefix}/{site}/x", "p", "g", &["device"]).unwrap_err();
        assert!(e.contains("unknown placeholder {site}"), "{e}");
        assert!(e.contains("{device}"), "{e}");
        let e = topic("{prefix}/{device", "p", "g", &["device"]).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = topic("{prefix}/#", "p", "g", &[]).unwrap_err();
        assert!(e.contains("wildcard"), "{e}");
        let e = topic("{prefix}/{gateway}/{device}", "p", "g", &[]).unwrap_err();
        assert!(e.contains("{device}"), "{e}");
    }
}
