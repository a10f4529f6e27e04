//! Every accepted payload format, published to a real broker, ends up in the
//! store as the same readings.

use ciborium::Value as Cbor;
use vigil::model::{Reading, Value, Waveform};
use vigil::store::Store;

use crate::support::{publish, start_app, wait_until, Broker, Msg, Options, Setup};

fn cbor(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

fn text(k: &str) -> Cbor {
    Cbor::Text(k.into())
}

pub fn stored(store: &Store) -> Vec<Reading> {
    store
        .readings_from(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_payload_format_round_trips() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let running = start_app(&setup).await;
    let store = running.store().clone();

    let t = "plant/l1/pump-1/temperature";
    let v = "plant/l1/pump-1/vibration";
    let wave_cbor = Cbor::Map(vec![
        (
            text("samples"),
            Cbor::Array(vec![
                Cbor::Float(0.5),
                Cbor::Float(-0.25),
                Cbor::Integer(1.into()),
            ]),
        ),
        (text("sample_rate_hz"), Cbor::Integer(25_600.into())),
        (text("ts"), Cbor::Integer(1_700_000_000_300i64.into())),
    ]);
    let scalar_cbor = |value: f64, ts: i64| {
        Cbor::Map(vec![
            (text("value"), Cbor::Float(value)),
            (text("ts"), Cbor::Integer(ts.into())),
        ])
    };
    let msgs = vec![
        Msg::new(t, r#"{"value": 1.5, "ts": 1700000000000}"#),
        Msg::new(t, r#"{"value": 2.5, "ts": "2023-11-14T22:13:20.001Z"}"#),
        Msg::new(
            t,
            r#"[{"value": 3.5, "ts": 1700000000002}, {"value": 4.5, "ts": 1700000000003}]"#,
        ),
        Msg::new(
            v,
            r#"{"samples": [0.5, -0.25, 1], "sample_rate_hz": 25600, "ts": 1700000000100}"#,
        ),
        Msg::new(t, cbor(&scalar_cbor(5.5, 1_700_000_000_004))),
        Msg::new(v, cbor(&wave_cbor)),
        Msg::new(
            t,
            cbor(&Cbor::Array(vec![
                scalar_cbor(6.5, 1_700_000_000_005),
                scalar_cbor(7.5, 1_700_000_000_006),
            ])),
        ),
        Msg::new(t, "8.5"),
    ];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    publish(broker.port, msgs).await;

    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("10 readings are stored", || {
            s.stats().unwrap().readings >= 10
        })
    })
    .await
    .unwrap();
    running.shutdown().await.unwrap();

    let got = stored(&store);
    let scalar = |metric: &str, value: f64, time_ms: i64| Reading {
        device: "pump-1".into(),
        metric: metric.into(),
        time_ms,
        value: Value::Scalar(value),
    };
    let wave = |time_ms: i64| Reading {
        device: "pump-1".into(),
        metric: "vibration".into(),
        time_ms,
        value: Value::Waveform(Waveform {
            sample_rate_hz: 25_600.0,
            samples: vec![0.5, -0.25, 1.0],
        }),
    };
    let expected = vec![
        scalar("temperature", 1.5, 1_700_000_000_000),
        scalar("temperature", 2.5, 1_700_000_000_001),
        scalar("temperature", 3.5, 1_700_000_000_002),
        scalar("temperature", 4.5, 1_700_000_000_003),
        wave(1_700_000_000_100),
        scalar("temperature", 5.5, 1_700_000_000_004),
        wave(1_700_000_000_300),
        scalar("temperature", 6.5, 1_700_000_000_005),
        scalar("temperature", 7.5, 1_700_000_000_006),
    ];
    assert_eq!(got.len(), 10, "{got:#?}");
    assert_eq!(&got[..9], &expected[..]);
    // The bare number has no timestamp: receive time is used.
    assert_eq!(got[9].value, Value::Scalar(8.5));
    assert!(
        got[9].time_ms >= before,
        "receive time {} before publish {before}",
        got[9].time_ms
    );
    assert_eq!(store.stats().unwrap().counters.messages, 8);
}
