//! From one MQTT publish to what the writer stores: readings, or a dead letter
//! with its reason. Pure: topic, payload and receive time are arguments.

use crate::config::Subscription;
use crate::model::{DeadLetter, EpochMs, Reading, Reason};

use super::decode::{decode, Rejection};

/// Dead letters keep at most this much of an oversized payload.
pub const DEAD_LETTER_MAX_PAYLOAD: usize = 64 * 1024;

/// What one MQTT message turned into.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Readings(Vec<Reading>),
    Rejected(DeadLetter),
}

/// Decode a publish received on `topic` at `received_ms`.
pub fn route(
    subscriptions: &[Subscription],
    max_payload_bytes: usize,
    topic: &str,
    payload: &[u8],
    received_ms: EpochMs,
) -> Outcome {
    match try_route(
        subscriptions,
        max_payload_bytes,
        topic,
        payload,
        received_ms,
    ) {
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
    max_payload_bytes: usize,
    topic: &str,
    payload: &[u8],
    received_ms: EpochMs,
) -> Result<Vec<Reading>, Rejection> {
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
    decode(sub.format, ids, payload, received_ms)
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

    fn rejected(topic: &str, payload: &[u8]) -> DeadLetter {
        match route(&subs(), 100, topic, payload, 7) {
            Outcome::Rejected(dl) => dl,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn good_message_becomes_readings() {
        let out = route(&subs(), 100, "plant/l1/pump-1/temp", b"21.5", 7);
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
        let Outcome::Readings(rs) = route(&subs, 100, "plant/fan-2/rpm", b"1", 7) else {
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
}
