//! Upstream messages: an outbox entry in, a topic and a payload (JSON or
//! CBOR, the same fields in both) out. Schema version 1:
//!
//! - every message: `schema`, `id` (`{gateway}/{lane}/{seq}`, unique and
//!   stable across resends, for deduplication), `type` (`alert` or
//!   `aggregate`), `gateway`, `seq`, `device`, `metric`, and the event time
//!   it covers, `start_ms` and `end_ms` (milliseconds since the Unix epoch);
//! - alerts: `alert_id` (the same for raise, escalate and clear of one
//!   alert), `event` (`raised`, `escalated`, `cleared`), `severity`,
//!   `detector`, `feature`, `value`, `limit`, `baseline` (`level`, `spread`),
//!   `score`, `raised_ms`, `cleared_ms`, `message`;
//! - aggregates: `windows` (detection windows summarised: more than 1 once
//!   merged to save space) and `features` (name → value).
//!
//! New fields may be added within a schema version; a change of meaning
//! bumps it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Encoding, UpstreamConfig};
use crate::model::{AlertKind, EpochMs, Severity};
use crate::store::{Lane, OutboxEntry, OutboxItem};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Message<'a> {
    schema: u32,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    gateway: &'a str,
    seq: u64,
    device: &'a str,
    metric: &'a str,
    start_ms: EpochMs,
    end_ms: EpochMs,
    #[serde(flatten)]
    body: Body<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Alert {
        alert_id: &'a str,
        event: AlertKind,
        severity: Severity,
        detector: &'a str,
        feature: &'a str,
        value: f64,
        limit: Option<f64>,
        baseline: Option<Baseline>,
        score: f64,
        raised_ms: EpochMs,
        cleared_ms: Option<EpochMs>,
        message: &'a str,
    },
    Aggregate {
        windows: u32,
        features: &'a BTreeMap<String, f64>,
    },
}

#[derive(Serialize)]
struct Baseline {
    level: f64,
    spread: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode a message: {0}")]
pub struct EncodeError(String);

/// The message id upstream consumers deduplicate by.
pub fn message_id(gateway: &str, lane: Lane, id: u64) -> String {
    format!("{gateway}/{}/{id}", lane.as_str())
}

/// Topic and payload of one outbox entry.
pub fn encode(
    config: &UpstreamConfig,
    gateway: &str,
    lane: Lane,
    item: &OutboxItem,
) -> Result<(String, Vec<u8>), EncodeError> {
    let id = message_id(gateway, lane, item.id);
    let (topic, message) = match &item.entry {
        OutboxEntry::Alert(a) => (
            config.alert_topic.render(&a.device, &a.metric),
            Message {
                schema: SCHEMA_VERSION,
                id,
                kind: "alert",
                gateway,
                seq: item.id,
                device: &a.device,
                metric: &a.metric,
                start_ms: a.window_start_ms,
                end_ms: a.window_end_ms,
                body: Body::Alert {
                    alert_id: &a.id,
                    event: a.kind,
                    severity: a.severity,
                    detector: &a.detector,
                    feature: &a.feature,
                    value: a.value,
                    limit: a.limit,
                    baseline: a.baseline.map(|(level, spread)| Baseline { level, spread }),
                    score: a.score,
                    raised_ms: a.raised_ms,
                    cleared_ms: a.cleared_ms,
                    message: &a.message,
                },
            },
        ),
        OutboxEntry::Aggregate(a) => (
            config.aggregate_topic.render(&a.device, &a.metric),
            Message {
                schema: SCHEMA_VERSION,
                id,
                kind: "aggregate",
                gateway,
                seq: item.id,
                device: &a.device,
                metric: &a.metric,
                start_ms: a.start_ms,
                end_ms: a.end_ms,
                body: Body::Aggregate {
                    windows: a.windows,
                    features: &a.features,
                },
            },
        ),
    };
    let payload = match config.encoding {
        Encoding::Json => serde_json::to_vec(&message).map_err(|e| EncodeError(e.to_string()))?,
        Encoding::Cbor => {
            let mut out = Vec::new();
            ciborium::ser::into_writer(&message, &mut out)
                .map_err(|e| EncodeError(e.to_string()))?;
            out
        }
    };
    Ok((topic, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Aggregate, AlertEvent};
    use std::path::Path;

    fn config(encoding: &str) -> UpstreamConfig {
        let text = format!(
            "gateway_id = \"gw-1\"\n[broker]\nhost = \"h\"\n[[subscriptions]]\ntemplate = \"s/{{device}}/{{metric}}\"\n[store]\npath = \"s\"\n[upstream]\nhost = \"up\"\ntopic_prefix = \"acme\"\nencoding = \"{encoding}\"\n"
        );
        let mut errors = Vec::new();
        let c = crate::config::from_str(Path::new("/nonexistent/vigil.toml"), text, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c.unwrap().upstream.unwrap()
    }

    fn alert() -> OutboxItem {
        OutboxItem {
            seq: 3,
            id: 3,
            entry: OutboxEntry::Alert(AlertEvent {
                id: "pump-7/temp/limit/mean/60000".into(),
                kind: AlertKind::Cleared,
                device: "pump-7".into(),
                metric: "temp".into(),
                detector: "limit".into(),
                feature: "mean".into(),
                severity: Severity::Alarm,
                raised_ms: 60_000,
                cleared_ms: Some(180_000),
                window_start_ms: 120_000,
                window_end_ms: 180_000,
                value: 71.5,
                limit: Some(80.0),
                baseline: Some((70.0, 1.5)),
                score: 0.1,
                message: "mean 71.5 is back below 80".into(),
            }),
        }
    }

    #[test]
    fn alert_json_has_the_documented_fields() {
        let (topic, payload) = encode(&config("json"), "gw-1", Lane::Alerts, &alert()).unwrap();
        assert_eq!(topic, "acme/gw-1/alerts/pump-7/temp");
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "schema": 1, "id": "gw-1/alerts/3", "type": "alert", "gateway": "gw-1", "seq": 3,
                "device": "pump-7", "metric": "temp", "start_ms": 120000, "end_ms": 180000,
                "alert_id": "pump-7/temp/limit/mean/60000", "event": "cleared", "severity": "alarm",
                "detector": "limit", "feature": "mean", "value": 71.5, "limit": 80.0,
                "baseline": {"level": 70.0, "spread": 1.5}, "score": 0.1,
                "raised_ms": 60000, "cleared_ms": 180000, "message": "mean 71.5 is back below 80"
            })
        );
    }

    #[test]
    fn aggregate_cbor_carries_the_same_fields_as_json() {
        let item = OutboxItem {
            seq: 7,
            id: 12,
            entry: OutboxEntry::Aggregate(Aggregate {
                device: "fan-2".into(),
                metric: "vib".into(),
                start_ms: 0,
                end_ms: 600_000,
                features: BTreeMap::from([("mean".into(), 1.25), ("count".into(), 600.0)]),
                windows: 10,
            }),
        };
        let (topic, json) = encode(&config("json"), "gw-1", Lane::Aggregates, &item).unwrap();
        let (topic2, cbor) = encode(&config("cbor"), "gw-1", Lane::Aggregates, &item).unwrap();
        assert_eq!(topic, "acme/gw-1/aggregates/fan-2/vib");
        assert_eq!(topic, topic2);
        let from_json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let from_cbor: serde_json::Value = ciborium::de::from_reader(cbor.as_slice()).unwrap();
        assert_eq!(from_json, from_cbor);
        // The id comes from the entry's id, not its place in the lane.
        assert_eq!(from_json["id"], "gw-1/aggregates/12");
        assert_eq!(from_json["windows"], 10);
        assert_eq!(from_json["features"]["mean"], 1.25);
        assert!(from_json.get("alert_id").is_none());
    }
}
