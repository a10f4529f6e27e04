//! What `vigil simulate` prints: a plan, injections and a summary in; one
//! line each out, as text for a person or as a JSON object for a script.

use serde_json::json;

use super::{Injection, Plan, Summary, ACK_WAIT};
use crate::model::rfc3339;

/// The line that opens a run.
pub fn start_line(plan: &Plan, json: bool) -> String {
    if json {
        let mut v = serde_json::to_value(plan).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("event".into(), json!("start"));
            map.insert("start".into(), json!(rfc3339(plan.start_ms)));
        }
        return v.to_string();
    }
    let vibration = match (plan.sample_rate_hz, plan.block_samples) {
        (Some(rate), Some(n)) => {
            format!("vibration (acceleration in g, CBOR blocks of {n} samples at {rate} Hz)")
        }
        _ => "vibration (velocity RMS in mm/s, JSON)".to_string(),
    };
    let pace = if plan.flat_out {
        "flat out".to_string()
    } else {
        format!(
            "{} reading(s)/s per stream ({} messages/s)",
            plan.rate_hz,
            plan.rate_hz * 2.0 * plan.devices as f64
        )
    };
    let length = match (plan.duration, plan.count) {
        (Some(d), Some(c)) => format!("for {} or {c} messages", super::format_duration(d)),
        (Some(d), None) => format!("for {}", super::format_duration(d)),
        (None, Some(c)) => format!("for {c} messages"),
        (None, None) => "until stopped".to_string(),
    };
    format!(
        "simulating {} device(s), {} to {}, on {}: temperature (degC, JSON) and {vibration}; {pace}, {length}; speed {}x, event time from {}; QoS {}, seed {}, broker {}",
        plan.devices,
        plan.first_device,
        plan.last_device,
        plan.topic,
        plan.speed,
        rfc3339(plan.start_ms),
        plan.qos,
        plan.seed,
        plan.broker,
    )
}

/// One line per fault as it begins, e.g.
/// `+ 30.0s  2026-11-21T09:12:00Z  pump-03 vibration  bearing defect (...)`.
pub fn injection_line(i: &Injection, json: bool) -> String {
    if json {
        let mut v = serde_json::to_value(i).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("event".into(), json!("fault"));
            map.insert("time".into(), json!(rfc3339(i.event_ms)));
        }
        return v.to_string();
    }
    let metric = match i.metric.as_str() {
        "*" => "(all metrics)",
        m => m,
    };
    format!(
        "+ {:.1}s  {}  {} {metric}  {}",
        i.wall.as_secs_f64(),
        rfc3339(i.event_ms),
        i.device,
        i.detail
    )
}

/// The line that closes a run.
pub fn summary_line(s: &Summary, json: bool) -> String {
    if json {
        return json!({
            "event": "summary",
            "readings": s.readings,
            "garbage": s.garbage,
            "messages": s.messages,
            "unconfirmed": s.unconfirmed,
            "ticks": s.ticks,
            "faults": s.injections.len(),
            "elapsed_s": s.elapsed.as_secs_f64(),
            "messages_per_s": s.messages_per_s(),
            "first_event": s.first_event_ms.map(rfc3339),
            "last_event": s.last_event_ms.map(rfc3339),
            "first_event_ms": s.first_event_ms,
            "last_event_ms": s.last_event_ms,
            "stopped": s.stopped,
        })
        .to_string();
    }
    let confirmed = if s.unconfirmed == 0 {
        "all confirmed by the broker".to_string()
    } else {
        format!(
            "{} not confirmed by the broker within {} s",
            s.unconfirmed,
            ACK_WAIT.as_secs()
        )
    };
    let span = match (s.first_event_ms, s.last_event_ms) {
        (Some(a), Some(b)) => format!("event time {} to {}", rfc3339(a), rfc3339(b)),
        _ => "no event time".to_string(),
    };
    format!(
        "{}: {} readings + {} garbage = {} messages, {confirmed}; {:.1} s, {:.0} messages/s; {} tick(s), {span}",
        if s.stopped { "stopped" } else { "done" },
        s.readings,
        s.garbage,
        s.messages,
        s.elapsed.as_secs_f64(),
        s.messages_per_s(),
        s.ticks,
    )
}
