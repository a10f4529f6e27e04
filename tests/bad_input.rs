//! Every class of bad input lands in dead letters with its reason, while the
//! good readings around it are stored and vigil keeps running.

use std::collections::BTreeMap;

use vigil::model::{Reason, Value};

use crate::formats::stored;
use crate::support::{publish, start_app, wait_until, Broker, Msg, Options, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_go_to_dead_letters_with_reasons() {
    let broker = Broker::start();
    let mut options = Options::new(broker.port);
    options.max_payload_bytes = 1000;
    // Broad filter, stricter template: some topics fit the filter but not the template.
    options.template = "plant/+/{device}/{metric}".into();
    let setup = Setup::new(&options);
    std::fs::write(
        &setup.config,
        std::fs::read_to_string(&setup.config).unwrap().replace(
            "qos = 1",
            "qos = 1\ntopic = \"plant/#\"\n\n# Device named in the payload.\n[[subscriptions]]\ntemplate = \"bulk/{metric}\"",
        ),
    )
    .unwrap();
    let running = start_app(&setup).await;
    let store = running.store().clone();

    let good = |i: u32| Msg::new("plant/l1/pump-1/temperature", format!("{{\"value\": {i}}}"));
    let nan_cbor = {
        let mut out = Vec::new();
        let v = ciborium::Value::Map(vec![(
            ciborium::Value::Text("value".into()),
            ciborium::Value::Float(f64::NAN),
        )]);
        ciborium::ser::into_writer(&v, &mut out).unwrap();
        out
    };
    let bad: Vec<(Msg, Reason)> = vec![
        (
            Msg::new("plant/l1/pump-1/temperature", "{\"value\": 1"),
            Reason::Malformed,
        ),
        (
            Msg::new("plant/l1/pump-1/temperature", vec![0xff, 0xfe, 0x00]),
            Reason::Malformed,
        ),
        (
            Msg::new("plant/l1/pump-1/temperature", "{\"value\": \"hot\"}"),
            Reason::Schema,
        ),
        (
            Msg::new("plant/l1/pump-1/temperature", "NaN"),
            Reason::NotFinite,
        ),
        (
            Msg::new("plant/l1/pump-1/temperature", nan_cbor),
            Reason::NotFinite,
        ),
        (
            Msg::new("plant/l1/pump-1/temperature", vec![b'1'; 1001]),
            Reason::TooLarge,
        ),
        // Over the limit but within the packet limit (the limit plus the
        // largest topic and header): dead-lettered on the same connection.
        // Larger packets are refused unread (tests/oversized.rs).
        (
            Msg::new("plant/l1/pump-1/temperature", vec![b'1'; 60_000]),
            Reason::TooLarge,
        ),
        (Msg::new("plant/l1/pump-1", "1"), Reason::TopicMismatch),
        (
            Msg::new("bulk/temperature", r#"{"device": "pump+1", "value": 1}"#),
            Reason::UnsafeName,
        ),
        (
            Msg::new(
                "bulk/temperature",
                "{\"device\": \"pump\u{7f}1\", \"value\": 1}",
            ),
            Reason::UnsafeName,
        ),
    ];
    let mut msgs = Vec::new();
    for (i, (msg, _)) in bad.iter().enumerate() {
        msgs.push(good(i as u32));
        msgs.push(msg.clone());
    }
    msgs.push(good(bad.len() as u32));
    publish(broker.port, msgs).await;

    let s = store.clone();
    let n_bad = bad.len() as u64;
    tokio::task::spawn_blocking(move || {
        wait_until("all messages are handled", || {
            let st = s.stats().unwrap();
            st.readings > n_bad && st.counters.rejected.values().sum::<u64>() >= n_bad
        })
    })
    .await
    .unwrap();
    running.shutdown().await.unwrap();

    // Good readings around the bad ones are all there, in order.
    let values: Vec<f64> = stored(&store)
        .into_iter()
        .map(|r| match r.value {
            Value::Scalar(v) => v,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        (0..=bad.len()).map(|i| i as f64).collect::<Vec<_>>()
    );

    // Each bad message is a dead letter with its reason, topic and payload.
    let letters = store.last_dead_letters(100).unwrap();
    assert_eq!(letters.len(), bad.len());
    for ((_, dl), (msg, reason)) in letters.iter().zip(&bad) {
        assert_eq!(dl.reason, *reason, "{} -> {}", dl.topic, dl.detail);
        assert_eq!(dl.topic, msg.topic);
        assert_eq!(dl.payload_len, msg.payload.len());
        assert!(!dl.detail.is_empty());
        if *reason != Reason::TooLarge {
            assert_eq!(dl.payload, msg.payload);
        }
    }
    // Counters per reason.
    let mut expected: BTreeMap<Reason, u64> = BTreeMap::new();
    for (_, r) in &bad {
        *expected.entry(*r).or_default() += 1;
    }
    assert_eq!(store.stats().unwrap().counters.rejected, expected);
}
