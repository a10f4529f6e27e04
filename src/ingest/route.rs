//! From one MQTT publish to what the writer stores: readings, or a dead letter
//! with its reason. Pure: topic, payload and receive time are arguments.
//!
//! Event times come from the sensors' clocks and are untrusted. A reading
//! stamped further ahead of the gateway's clock than `max_future_skew_ms`
//! would move its stream's watermark into the future and make every later
//! reading late, so its payload is dead-lettered (`clock_skew`). Readings
//! from the past are kept: a sensor sending its own backlog after an outage
//! is normal, and detection counts what falls behind a stream's watermark
//! as late. A gateway whose clock reads before [`CLOCK_FLOOR_MS`] has not
//! been set yet (no RTC, no NTP so far): then nothing can be judged ahead of
//! it, and the check waits until the clock is set.

use crate::config::{DeviceRegistry, Subscription};
use crate::model::{human_duration, DeadLetter, EpochMs, Reading, Reason};

use super::decode::{decode, Rejection};

/// Dead letters keep at most this much of an oversized payload.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

/// The gateway's clock before this instant (2026-01-01T00:00:00Z, before
/// this version existed) has not been set.
pub const CLOCK_FLOOR_MS: EpochMs = 1_767_225_600_000;

/// Whether a gateway clock reading `now_ms` can judge sensors' clocks.
pub fn clock_is_set(now_ms: EpochMs) -> bool {
    now_ms >= CLOCK_FLOOR_MS
}

/// What a publish must satisfy besides its format.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    /// Larger payloads are dead-lettered without being decoded.
    pub max_payload_bytes: usize,
    /// Event times further ahead of the receive time are dead-lettered.
    pub max_future_skew_ms: EpochMs,
    /// With `detect.devices_known_only`: the device files; readings of a
    /// device none of them names are dead-lettered.
    pub known_devices: Option<&'a DeviceRegistry>,
}

/// What one MQTT message turned into.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Readings(Vec<Reading>),
    Rejected(DeadLetter),
}

/// Decode a publish received on `topic` at `received_ms`.
pub fn route(
    subscriptions: &[Subscription],
    limits: Limits<'_>,
    topic: &str,
    payload: &[u8],
    received_ms: EpochMs,
) -> Outcome {
    match try_route(subscriptions, limits, topic, payload, received_ms) {
        Ok(readings) => Outcome::Readings(readings),
        Err(rej) => Outcome::Rejected(DeadLetter {
            topic: topic.to_string(),
            payload: payload[..payload.len().min(DEAD_LETTER_MAX_PAYLOAD)].to_vec(),
            payload_len: payload.len(),
            reason: rej.reason,
            detail: rej.detail,
            received_ms,
        }),
    }
}

/// The dead letter of a payload too large to read whole (`oversized.rs`):
/// its topic, the first bytes of it that were kept, and its size.
pub fn too_large(
    topic: String,
    head: Vec<u8>,
    payload_len: usize,
    max_payload_bytes: usize,
    received_ms: EpochMs,
) -> DeadLetter {
    DeadLetter {
        topic,
        payload: head,
        payload_len,
        reason: Reason::TooLarge,
        detail: too_large_detail(payload_len, max_payload_bytes),
        received_ms,
    }
}

fn too_large_detail(payload_len: usize, max_payload_bytes: usize) -> String {
    format!("payload of {payload_len} bytes exceeds broker.max_payload_bytes ({max_payload_bytes})")
}

fn try_route(
    subscriptions: &[Subscription],
    limits: Limits<'_>,
    topic: &str,
    payload: &[u8],
    received_ms: EpochMs,
) -> Result<Vec<Reading>, Rejection> {
    let max_payload_bytes = limits.max_payload_bytes;
    if payload.len() > max_payload_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            too_large_detail(payload.len(), max_payload_bytes),
        ));
    }
    // The first subscription whose filter matches and whose template fits.
    let mut matching = subscriptions
        .iter()
        .filter(|s| crate::config::filter_matches(&s.filter, topic))
        .peekable();
    let first = *matching.peek().ok_or_else(|| {
        Rejection::new(
            Reason::TopicMismatch,
            format!("topic {topic:?} matches no subscription"),
        )
    })?;
    let (sub, ids) = matching
        .find_map(|s| s.template.extract(topic).map(|ids| (s, ids)))
        .ok_or_else(|| {
            Rejection::new(
                Reason::TopicMismatch,
                format!(
                    "topic {topic:?} does not fit the template {:?}",
                    first.template.to_string()
                ),
            )
        })?;
    let readings = decode(sub.format, ids, payload, received_ms)?;
    if let Some(registry) = limits.known_devices {
        if let Some(r) = readings.iter().find(|r| !registry.knows(&r.device)) {
            return Err(Rejection::new(
                Reason::UnknownDevice,
                format!(
                    "device {:?} is named by no device file, and detect.devices_known_only is set",
                    r.device
                ),
            ));
        }
    }
    if clock_is_set(received_ms) {
        let ahead = readings
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.time_ms.saturating_sub(received_ms)))
            .max_by_key(|(_, ahead)| *ahead);
        if let Some((i, ahead)) = ahead.filter(|(_, a)| *a > limits.max_future_skew_ms) {
            let which = if readings.len() > 1 {
                format!("reading {i}'s event time")
            } else {
                "event time".to_string()
            };
            return Err(Rejection::new(
                Reason::ClockSkew,
                format!(
                    "{which} {} is {} ahead of the gateway's clock ({}); more than detect.max_future_skew_ms ({} ms) means the sensor's clock is wrong",
                    crate::model::rfc3339(readings[i].time_ms),
                    human_duration(ahead as f64 / 1000.0),
                    crate::model::rfc3339(received_ms),
                    limits.max_future_skew_ms
                ),
            ));
        }
    }
    Ok(readings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PayloadFormat, TopicTemplate};

    fn subs() -> Vec<Subscription> {
        vec![Subscription {
            filter: "plant/#".into(),
            template: TopicTemplate::parse("plant/+/{device}/{metric}").unwrap(),
            qos: 1,
            format: PayloadFormat::Auto,
        }]
    }

    const LIMITS: Limits = Limits {
        max_payload_bytes: 100,
        max_future_skew_ms: 300_000,
        known_devices: None,
    };
    /// A receive time on a gateway whose clock is set.
    const NOW: EpochMs = 1_795_255_200_000;

    fn rejected(topic: &str, payload: &[u8]) -> DeadLetter {
        match route(&subs(), LIMITS, topic, payload, 7) {
            Outcome::Rejected(dl) => dl,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn good_message_becomes_readings() {
        let out = route(&subs(), LIMITS, "plant/l1/pump-1/temp", b"21.5", 7);
        let Outcome::Readings(rs) = out else {
            panic!("{out:?}")
        };
        assert_eq!(rs[0].device, "pump-1");
        assert_eq!(rs[0].metric, "temp");
        assert_eq!(rs[0].time_ms, 7);
    }

    #[test]
    fn topic_outside_the_template_is_dead_lettered() {
        let dl = rejected("plant/l1/pump-1", b"1");
        assert_eq!(dl.reason, Reason::TopicMismatch);
        assert_eq!(dl.topic, "plant/l1/pump-1");
        assert_eq!(dl.payload, b"1");
        assert_eq!(rejected("other/x", b"1").reason, Reason::TopicMismatch);
    }

    #[test]
    fn a_later_subscription_takes_a_topic_the_first_template_does_not_fit() {
        let mut subs = subs();
        subs.push(Subscription {
            filter: "plant/+/+".into(),
            template: TopicTemplate::parse("plant/{device}/{metric}").unwrap(),
            qos: 1,
            format: PayloadFormat::Auto,
        });
        let Outcome::Readings(rs) = route(&subs, LIMITS, "plant/fan-2/rpm", b"1", 7) else {
            panic!("not routed to the second subscription")
        };
        assert_eq!(
            (rs[0].device.as_str(), rs[0].metric.as_str()),
            ("fan-2", "rpm")
        );
    }

    #[test]
    fn oversized_payload_is_dead_lettered_without_decoding() {
        let dl = rejected("plant/l1/pump-1/temp", &[b'1'; 101]);
        assert_eq!(dl.reason, Reason::TooLarge);
        assert_eq!(dl.payload_len, 101);
    }

    #[test]
    fn decode_errors_carry_the_raw_payload() {
        let dl = rejected("plant/l1/pump-1/temp", b"{oops");
        assert_eq!(dl.reason, Reason::Malformed);
        assert_eq!(dl.payload, b"{oops");
        assert!(dl.detail.contains("invalid JSON"), "{}", dl.detail);
    }

    fn at(payload: &str, received_ms: EpochMs) -> Outcome {
        route(
            &subs(),
            Limits {
                max_payload_bytes: 1000,
                ..LIMITS
            },
            "plant/l1/pump-1/temp",
            payload.as_bytes(),
            received_ms,
        )
    }

    #[test]
    fn a_reading_too_far_ahead_of_the_gateway_clock_is_dead_lettered() {
        // A day ahead, and the year 9999.
        for ts in [NOW + 86_400_000, 253_402_300_799_000] {
            let Outcome::Rejected(dl) = at(&format!(r#"{{"value": 1, "ts": {ts}}}"#), NOW) else {
                panic!("accepted a reading stamped {ts}")
            };
            assert_eq!(dl.reason, Reason::ClockSkew);
            assert!(
                dl.detail.contains("ahead of the gateway's clock"),
                "{}",
                dl.detail
            );
        }
        // One skewed reading in a batch: the payload is kept whole, as a dead letter.
        let batch = format!(
            r#"[{{"value": 1, "ts": {NOW}}}, {{"value": 2, "ts": {}}}]"#,
            NOW + 3_600_000
        );
        let Outcome::Rejected(dl) = at(&batch, NOW) else {
            panic!("accepted a batch with a skewed reading")
        };
        assert!(
            dl.detail.starts_with("reading 1's event time"),
            "{}",
            dl.detail
        );
    }

    #[test]
    fn readings_within_the_skew_from_the_past_or_without_a_time_are_kept() {
        for payload in [
            format!(r#"{{"value": 1, "ts": {}}}"#, NOW + 300_000),
            format!(r#"{{"value": 1, "ts": {}}}"#, NOW - 30 * 86_400_000),
            r#"{"value": 1, "ts": 0}"#.to_string(),
            r#"{"value": 1}"#.to_string(),
        ] {
            assert!(
                matches!(at(&payload, NOW), Outcome::Readings(_)),
                "{payload} was refused"
            );
        }
    }

    #[test]
    fn a_gateway_clock_that_is_not_set_judges_nothing() {
        // Booted without a real-time clock: the gateway thinks it is 1970.
        let payload = format!(r#"{{"value": 1, "ts": {NOW}}}"#);
        assert!(matches!(at(&payload, 60_000), Outcome::Readings(_)));
        assert!(!clock_is_set(60_000) && clock_is_set(NOW));
    }

    #[test]
    fn with_devices_known_only_a_device_no_file_names_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pumps.toml");
        std::fs::write(&file, "match = \"pump-*\"\n").unwrap();
        let registry = DeviceRegistry::load_file(&file).unwrap();
        let limits = Limits {
            known_devices: Some(&registry),
            ..LIMITS
        };
        let known = route(&subs(), limits, "plant/l1/pump-1/temp", b"1", NOW);
        assert!(matches!(known, Outcome::Readings(_)), "{known:?}");
        let Outcome::Rejected(dl) = route(&subs(), limits, "plant/l1/fan-1/temp", b"1", NOW) else {
            panic!("a device without a file was taken")
        };
        assert_eq!(dl.reason, Reason::UnknownDevice);
        assert!(dl.detail.contains("\"fan-1\""), "{}", dl.detail);
    }
}
