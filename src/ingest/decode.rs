//! Payload decoding, a pure function: (topic ids, payload bytes, receive time)
//! in, `Reading`s or a `Rejection` with its reason out. Never panics.
//!
//! Accepted shapes (as JSON, or the same maps/arrays as CBOR):
//! - scalar: `{"value": 21.5, "ts": 1700000000000}`; `ts` is epoch milliseconds
//!   or an RFC 3339 string, and optional (receive time is used when absent);
//! - waveform block: `{"samples": [..], "sample_rate_hz": 25600, "ts": ...}`,
//!   where `ts` is the time of the first sample;
//! - batch: an array of the above;
//! - text: a bare decimal number such as `21.5`.
//!
//! `device` and `metric` fields are read only when the topic template does not
//! name them. Other fields are ignored.

use ciborium::Value as Cbor;
use serde_json::Value as Json;

use crate::config::{check_name, PayloadFormat, TopicIds};
use crate::model::{EpochMs, Reading, Reason, Value, Waveform};

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

fn in_batch(i: usize, mut rej: Rejection) -> Rejection {
    rej.detail = format!("batch element {i}: {}", rej.detail);
    rej
}

fn schema(detail: impl Into<String>) -> Rejection {
    Rejection::new(Reason::Schema, detail)
}

/// Decode one MQTT payload into readings.
pub fn decode(
    format: PayloadFormat,
    ids: TopicIds<'_>,
    payload: &[u8],
    received_ms: EpochMs,
) -> Result<Vec<Reading>, Rejection> {
    let items = match format {
        PayloadFormat::Json => json_items(payload)?,
        PayloadFormat::Cbor => cbor_items(payload)?,
        PayloadFormat::Text => vec![text_item(payload)?],
        PayloadFormat::Auto => match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => json_items(payload)?,
            Some(b)
                if b.is_ascii_digit()
                    || matches!(b, b'-' | b'+' | b'.' | b'N' | b'n' | b'i' | b'I') =>
            {
                vec![text_item(payload)?]
            }
            Some(_) => cbor_items(payload)?,
            None => return Err(Rejection::new(Reason::Malformed, "empty payload")),
        },
    };
    if items.is_empty() {
        return Err(schema("empty batch: expected at least one reading"));
    }
    let batch = items.len() > 1;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let r = item.into_reading(ids, received_ms).map_err(|rej| {
            if batch {
                in_batch(i, rej)
            } else {
                rej
            }
        })?;
        out.push(r);
    }
    Ok(out)
}

/// The fields of one reading object, whatever the encoding.
#[derive(Default)]
struct Item {
    value: Option<f64>,
    samples: Option<Vec<f64>>,
    sample_rate_hz: Option<f64>,
    time_ms: Option<EpochMs>,
    device: Option<String>,
    metric: Option<String>,
}

impl Item {
    fn into_reading(self, ids: TopicIds<'_>, received_ms: EpochMs) -> Result<Reading, Rejection> {
        let device = pick_name("device", ids.device, self.device)?;
        let metric = pick_name("metric", ids.metric, self.metric)?;
        let value = match (self.value, self.samples) {
            (Some(_), Some(_)) => {
                return Err(schema(
                    "both `value` and `samples` given; a reading is a scalar or a waveform block",
                ))
            }
            (None, None) => return Err(schema(
                "missing field `value` (or `samples` and `sample_rate_hz` for a waveform block)",
            )),
            (Some(v), None) => {
                if !v.is_finite() {
                    return Err(Rejection::new(
                        Reason::NotFinite,
                        format!("value {v} is not a finite number"),
                    ));
                }
                Value::Scalar(v)
            }
            (None, Some(samples)) => {
                let rate = self
                    .sample_rate_hz
                    .ok_or_else(|| schema("waveform block without `sample_rate_hz`"))?;
                if !rate.is_finite() || rate <= 0.0 {
                    return Err(Rejection::new(
                        Reason::NotFinite,
                        format!("sample_rate_hz {rate} must be a finite number above 0"),
                    ));
                }
                if samples.is_empty() {
                    return Err(schema("waveform block with no samples"));
                }
                let mut out = Vec::with_capacity(samples.len());
                for (i, s) in samples.into_iter().enumerate() {
                    let f = s as f32;
                    if !f.is_finite() {
                        return Err(Rejection::new(
                            Reason::NotFinite,
                            format!("sample {i} ({s}) is not a finite 32-bit number"),
                        ));
                    }
                    out.push(f);
                }
                Value::Waveform(Waveform {
                    sample_rate_hz: rate,
                    samples: out,
                })
            }
        };
        Ok(Reading {
            device,
            metric,
            time_ms: self.time_ms.unwrap_or(received_ms),
            value,
        })
    }
}

fn pick_name(
    kind: &str,
    from_topic: Option<&str>,
    from_payload: Option<String>,
) -> Result<String, Rejection> {
    let name = match (from_topic, from_payload) {
        (Some(t), _) => t.to_string(),
        (None, Some(p)) => p,
        (None, None) => {
            return Err(schema(format!(
            "no {kind}: the topic template does not name one and the payload has no `{kind}` field"
        )))
        }
    };
    check_name(kind, &name).map_err(|e| Rejection::new(Reason::UnsafeName, e))?;
    Ok(name)
}

// ---------------------------------------------------------------- text

fn text_item(payload: &[u8]) -> Result<Item, Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| Rejection::new(Reason::Malformed, "text payload is not UTF-8"))?
        .trim();
    let v: f64 = text.parse().map_err(|_| {
        Rejection::new(
            Reason::Malformed,
            format!("not a decimal number: {:?}", truncate(text, 40)),
        )
    })?;
    Ok(Item {
        value: Some(v),
        ..Item::default()
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------- JSON

fn json_items(payload: &[u8]) -> Result<Vec<Item>, Rejection> {
    let doc: Json = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("invalid JSON: {e}")))?;
    match doc {
        Json::Object(map) => Ok(vec![json_item(&map)?]),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Json::Object(map) => json_item(map).map_err(|e| in_batch(i, e)),
                other => Err(schema(format!(
                    "batch element {i} is {}, expected an object",
                    json_kind(other)
                ))),
            })
            .collect(),
        other => Err(schema(format!(
            "JSON {} is not a reading; expected an object or an array of objects",
            json_kind(&other)
        ))),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn json_number(field: &str, v: &Json) -> Result<f64, Rejection> {
    v.as_f64().ok_or_else(|| {
        schema(format!(
            "field `{field}` is {}, expected a number",
            json_kind(v)
        ))
    })
}

fn json_string(field: &str, v: &Json) -> Result<String, Rejection> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        schema(format!(
            "field `{field}` is {}, expected a string",
            json_kind(v)
        ))
    })
}

fn json_item(map: &serde_json::Map<String, Json>) -> Result<Item, Rejection> {
    let mut item = Item::default();
    for (k, v) in map {
        match k.as_str() {
            "value" => item.value = Some(json_number(k, v)?),
            "samples" => {
                let arr = v.as_array().ok_or_else(|| {
                    schema(format!(
                        "field `samples` is {}, expected an array of numbers",
                        json_kind(v)
                    ))
                })?;
                let mut samples = Vec::with_capacity(arr.len());
                for (i, s) in arr.iter().enumerate() {
                    samples.push(json_number(&format!("samples[{i}]"), s)?);
                }
                item.samples = Some(samples);
            }
            "sample_rate_hz" => item.sample_rate_hz = Some(json_number(k, v)?),
            "ts" | "timestamp" | "time" => {
                item.time_ms = Some(match v {
                    Json::String(s) => rfc3339_ms(s)?,
                    Json::Number(_) => epoch_ms(k, json_number(k, v)?)?,
                    other => {
                        return Err(schema(format!(
                            "field `{k}` is {}, expected epoch milliseconds or an RFC 3339 string",
                            json_kind(other)
                        )))
                    }
                })
            }
            "device" => item.device = Some(json_string(k, v)?),
            "metric" => item.metric = Some(json_string(k, v)?),
            _ => {}
        }
    }
    Ok(item)
}

// ---------------------------------------------------------------- CBOR

fn cbor_items(payload: &[u8]) -> Result<Vec<Item>, Rejection> {
    let doc: Cbor = ciborium::de::from_reader(payload)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("invalid CBOR: {e}")))?;
    match doc {
        Cbor::Map(entries) => Ok(vec![cbor_item(&entries)?]),
        Cbor::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Cbor::Map(entries) => cbor_item(entries).map_err(|e| in_batch(i, e)),
                other => Err(schema(format!(
                    "batch element {i} is {}, expected a map",
                    cbor_kind(other)
                ))),
            })
            .collect(),
        other => Err(schema(format!(
            "CBOR {} is not a reading; expected a map or an array of maps",
            cbor_kind(&other)
        ))),
    }
}

fn cbor_kind(v: &Cbor) -> &'static str {
    match v {
        Cbor::Integer(_) => "an integer",
        Cbor::Bytes(_) => "a byte string",
        Cbor::Float(_) => "a float",
        Cbor::Text(_) => "a text string",
        Cbor::Bool(_) => "a boolean",
        Cbor::Null => "null",
        Cbor::Tag(..) => "a tagged value",
        Cbor::Array(_) => "an array",
        Cbor::Map(_) => "a map",
        _ => "an unsupported value",
    }
}

fn cbor_number(field: &str, v: &Cbor) -> Result<f64, Rejection> {
    match v {
        Cbor::Float(f) => Ok(*f),
        Cbor::Integer(i) => Ok(i128::from(*i) as f64),
        other => Err(schema(format!(
            "field `{field}` is {}, expected a number",
            cbor_kind(other)
        ))),
    }
}

fn cbor_time(field: &str, v: &Cbor) -> Result<EpochMs, Rejection> {
    match v {
        Cbor::Text(s) => rfc3339_ms(s),
        // RFC 8949 tag 0: RFC 3339 text; tag 1: epoch seconds.
        Cbor::Tag(0, inner) => match inner.as_ref() {
            Cbor::Text(s) => rfc3339_ms(s),
            other => Err(schema(format!(
                "field `{field}`: tag 0 holds {}, expected text",
                cbor_kind(other)
            ))),
        },
        Cbor::Tag(1, inner) => epoch_ms(field, cbor_number(field, inner)? * 1000.0),
        Cbor::Float(_) | Cbor::Integer(_) => epoch_ms(field, cbor_number(field, v)?),
        other => Err(schema(format!(
            "field `{field}` is {}, expected epoch milliseconds or an RFC 3339 string",
            cbor_kind(other)
        ))),
    }
}

fn cbor_item(entries: &[(Cbor, Cbor)]) -> Result<Item, Rejection> {
    let mut item = Item::default();
    for (k, v) in entries {
        let Cbor::Text(k) = k else { continue };
        match k.as_str() {
            "value" => item.value = Some(cbor_number(k, v)?),
            "samples" => {
                let Cbor::Array(arr) = v else {
                    return Err(schema(format!(
                        "field `samples` is {}, expected an array of numbers",
                        cbor_kind(v)
                    )));
                };
                let mut samples = Vec::with_capacity(arr.len());
                for (i, s) in arr.iter().enumerate() {
                    samples.push(cbor_number(&format!("samples[{i}]"), s)?);
                }
                item.samples = Some(samples);
            }
            "sample_rate_hz" => item.sample_rate_hz = Some(cbor_number(k, v)?),
            "ts" | "timestamp" | "time" => item.time_ms = Some(cbor_time(k, v)?),
            "device" | "metric" => {
                let Cbor::Text(s) = v else {
                    return Err(schema(format!(
                        "field `{k}` is {}, expected a text string",
                        cbor_kind(v)
                    )));
                };
                if k == "device" {
                    item.device = Some(s.clone());
                } else {
                    item.metric = Some(s.clone());
                }
            }
            _ => {}
        }
    }
    Ok(item)
}

// ---------------------------------------------------------------- time

/// Latest accepted event time: 9999-12-31T23:59:59Z.
const MAX_EPOCH_MS: f64 = 253_402_300_799_000.0;

fn epoch_ms(field: &str, ms: f64) -> Result<EpochMs, Rejection> {
    if !ms.is_finite() {
        return Err(Rejection::new(
            Reason::NotFinite,
            format!("field `{field}` ({ms}) is not a finite time"),
        ));
    }
    if !(0.0..=MAX_EPOCH_MS).contains(&ms) {
        return Err(schema(format!(
            "field `{field}` ({ms}) is outside 1970..9999 in epoch milliseconds"
        )));
    }
    Ok(ms.round() as EpochMs)
}

fn rfc3339_ms(s: &str) -> Result<EpochMs, Rejection> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            schema(format!(
                "timestamp {:?} is not RFC 3339: {e}",
                truncate(s, 40)
            ))
        })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    if !(0..=MAX_EPOCH_MS as i128).contains(&ms) {
        return Err(schema(format!(
            "timestamp {:?} is outside 1970..9999",
            truncate(s, 40)
        )));
    }
    Ok(ms as EpochMs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: EpochMs = 1_763_700_000_000;

    fn ids() -> TopicIds<'static> {
        TopicIds {
            device: Some("pump-1"),
            metric: Some("temperature"),
        }
    }

    fn one(payload: &[u8]) -> Reading {
        let mut r = decode(PayloadFormat::Auto, ids(), payload, NOW).unwrap();
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    fn cbor(v: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    fn rejected(format: PayloadFormat, payload: &[u8]) -> Rejection {
        decode(format, ids(), payload, NOW).unwrap_err()
    }

    #[test]
    fn json_scalar_with_epoch_ms() {
        let r = one(br#"{"value": 21.5, "ts": 1700000000123}"#);
        assert_eq!(r.device, "pump-1");
        assert_eq!(r.metric, "temperature");
        assert_eq!(r.time_ms, 1_700_000_000_123);
        assert_eq!(r.value, Value::Scalar(21.5));
    }

    #[test]
    fn json_scalar_with_rfc3339_and_offset() {
        let r = one(br#"{"value": 1, "ts": "2023-11-14T23:13:20.5+01:00"}"#);
        // = 2023-11-14T22:13:20.5Z
        assert_eq!(r.time_ms, 1_700_000_000_500);
    }

    #[test]
    fn missing_time_falls_back_to_receive_time() {
        assert_eq!(one(br#"{"value": 3}"#).time_ms, NOW);
        assert_eq!(one(b"42.25\n").time_ms, NOW);
    }

    #[test]
    fn bare_decimal_text() {
        assert_eq!(one(b" -0.5 ").value, Value::Scalar(-0.5));
        assert_eq!(
            decode(PayloadFormat::Text, ids(), b"1e3", NOW).unwrap()[0].value,
            Value::Scalar(1000.0)
        );
    }

    #[test]
    fn json_batch() {
        let rs = decode(
            PayloadFormat::Json,
            ids(),
            br#"[{"value":1,"ts":1},{"value":2,"ts":2}]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[1].value, Value::Scalar(2.0));
        assert_eq!(rs[1].time_ms, 2);
    }

    #[test]
    fn json_waveform_block() {
        let r = one(br#"{"samples": [0.5, -0.25, 1], "sample_rate_hz": 25600, "ts": 5}"#);
        assert_eq!(
            r.value,
            Value::Waveform(Waveform {
                sample_rate_hz: 25600.0,
                samples: vec![0.5, -0.25, 1.0]
            })
        );
        assert_eq!(r.time_ms, 5);
    }

    #[test]
    fn cbor_scalar_waveform_batch_and_tags() {
        let scalar = Cbor::Map(vec![
            (Cbor::Text("value".into()), Cbor::Float(7.25)),
            (Cbor::Text("ts".into()), Cbor::Integer(99.into())),
        ]);
        assert_eq!(one(&cbor(&scalar)).value, Value::Scalar(7.25));
        let wave = Cbor::Map(vec![
            (
                Cbor::Text("samples".into()),
                Cbor::Array(vec![Cbor::Float(1.0), Cbor::Integer(2.into())]),
            ),
            (
                Cbor::Text("sample_rate_hz".into()),
                Cbor::Integer(1000.into()),
            ),
            (
                Cbor::Text("ts".into()),
                Cbor::Tag(1, Box::new(Cbor::Integer(1_700_000_000.into()))),
            ),
        ]);
        let r = one(&cbor(&wave));
        assert_eq!(r.time_ms, 1_700_000_000_000);
        assert!(matches!(r.value, Value::Waveform(ref w) if w.samples == vec![1.0, 2.0]));
        let batch = Cbor::Array(vec![scalar.clone(), scalar]);
        assert_eq!(
            decode(PayloadFormat::Cbor, ids(), &cbor(&batch), NOW)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn device_and_metric_from_payload_when_template_lacks_them() {
        let none = TopicIds::default();
        let rs = decode(
            PayloadFormat::Json,
            none,
            br#"{"device":"fan-2","metric":"rpm","value":1}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            (rs[0].device.as_str(), rs[0].metric.as_str()),
            ("fan-2", "rpm")
        );
        let rej = decode(PayloadFormat::Json, none, br#"{"value":1}"#, NOW).unwrap_err();
        assert_eq!(rej.reason, Reason::Schema);
        assert!(rej.detail.contains("no device"), "{}", rej.detail);
        // The topic wins when the template names the device.
        let rs = decode(
            PayloadFormat::Json,
            ids(),
            br#"{"device":"other","value":1}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(rs[0].device, "pump-1");
    }

    #[test]
    fn bad_inputs_have_reasons() {
        use PayloadFormat::*;
        assert_eq!(rejected(Json, b"{not json").reason, Reason::Malformed);
        assert_eq!(rejected(Cbor, &[0xff, 0x00]).reason, Reason::Malformed);
        assert_eq!(rejected(Text, b"abc").reason, Reason::Malformed);
        assert_eq!(rejected(Auto, b"").reason, Reason::Malformed);
        assert_eq!(rejected(Json, br#"{"value":"hot"}"#).reason, Reason::Schema);
        assert_eq!(rejected(Json, br#"{"temp":1}"#).reason, Reason::Schema);
        assert_eq!(rejected(Json, b"[]").reason, Reason::Schema);
        assert_eq!(
            rejected(Json, br#"[{"value":1}, 2]"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"ts":true}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"ts":"yesterday"}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"ts":-5}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"ts":"9999-12-31T23:59:59-13:59"}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"ts":"1969-12-31T23:59:59Z"}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"value":1,"samples":[1],"sample_rate_hz":1}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"samples":[1,2]}"#).reason,
            Reason::Schema
        );
        assert_eq!(
            rejected(Json, br#"{"samples":[],"sample_rate_hz":10}"#).reason,
            Reason::Schema
        );
        assert_eq!(rejected(Text, b"NaN").reason, Reason::NotFinite);
        assert_eq!(rejected(Auto, b"inf").reason, Reason::NotFinite);
        assert_eq!(
            rejected(Json, br#"{"value":1e400}"#).reason,
            Reason::Malformed
        );
        assert_eq!(
            rejected(Json, br#"{"samples":[1e39],"sample_rate_hz":10}"#).reason,
            Reason::NotFinite
        );
        assert_eq!(
            rejected(Json, br#"{"samples":[1],"sample_rate_hz":0}"#).reason,
            Reason::NotFinite
        );
        let nan = ciborium::Value::Map(vec![(
            ciborium::Value::Text("value".into()),
            ciborium::Value::Float(f64::NAN),
        )]);
        assert_eq!(rejected(Cbor, &cbor(&nan)).reason, Reason::NotFinite);
        let bad_name = TopicIds {
            device: Some("a\u{7}b"),
            metric: Some("m"),
        };
        assert_eq!(
            decode(Json, bad_name, br#"{"value":1}"#, NOW)
                .unwrap_err()
                .reason,
            Reason::UnsafeName
        );
        let payload_name = TopicIds::default();
        let rej = decode(
            Json,
            payload_name,
            br#"{"device":"a/b","metric":"m","value":1}"#,
            NOW,
        )
        .unwrap_err();
        assert_eq!(rej.reason, Reason::UnsafeName);
    }

    #[test]
    fn batch_errors_name_the_element() {
        let rej = rejected(PayloadFormat::Json, br#"[{"value":1},{"value":"x"}]"#);
        assert!(rej.detail.starts_with("batch element 1:"), "{}", rej.detail);
    }
}
