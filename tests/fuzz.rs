//! Property tests of the pure parts that take untrusted input: payload
//! decoding (random bytes, JSON and CBOR documents), configuration parsing
//! (random text and mutations of a valid file) and topic routing.
//!
//! Each property runs a modest number of cases so the module stays quick in
//! debug builds; raise them with `PROPTEST_CASES=10000` for a longer hunt.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ciborium::Value as Cbor;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value as Json;

use vigil::config::{check_name, PayloadFormat, Subscription, TopicIds, TopicTemplate};
use vigil::ingest::decode::decode;
use vigil::ingest::route::{route, Limits, Outcome, DEAD_LETTER_MAX_PAYLOAD};
use vigil::model::{Reading, Value};

const RECEIVED_MS: i64 = 1_763_700_000_000;
/// A receive time on a gateway whose clock is set (2026-11-25), so that
/// routing also checks event times against it.
const ROUTE_RECEIVED_MS: i64 = 1_795_700_000_000;
/// 9999-12-31T23:59:59Z, the latest event time decode documents.
const MAX_EPOCH_MS: i64 = 253_402_300_799_000;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        // No regression files in the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Run a property on a thread with a large stack: generating the nested JSON
/// and CBOR documents takes more than a test thread's 2 MiB in debug builds.
/// `strategy` is built on that thread (boxed strategies are not `Send`).
fn check_property<S: Strategy>(
    cases: u32,
    strategy: impl FnOnce() -> S + Send + 'static,
    test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
) {
    let thread = std::thread::Builder::new()
        .name(
            std::thread::current()
                .name()
                .unwrap_or("property")
                .to_string(),
        )
        .stack_size(64 << 20)
        .spawn(move || {
            let strategy = strategy();
            let mut runner = TestRunner::new(config(cases));
            if let Err(e) = runner.run(&strategy, test) {
                panic!("{e}");
            }
        })
        .unwrap();
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

// ------------------------------------------------------------ decode: inputs

const FORMATS: [PayloadFormat; 4] = [
    PayloadFormat::Auto,
    PayloadFormat::Json,
    PayloadFormat::Cbor,
    PayloadFormat::Text,
];

fn format() -> impl Strategy<Value = PayloadFormat> {
    prop::sample::select(FORMATS.to_vec())
}

/// Mostly the format a document is encoded in (or `Auto`), sometimes any.
fn format_for(native: PayloadFormat) -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![3 => Just(native), 3 => Just(PayloadFormat::Auto), 1 => format()]
}

/// Device and metric names: mostly valid, some refused by `check_name`.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_-]{1,20}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec!["a/b", "a+b", "#", "+", "x\u{7}y", "tab\there", "nul\u{0}", "new\nline", "Pumpe_Halle_3", "ä-ö", " "])
            .prop_map(str::to_string),
        1 => (1usize..200).prop_map(|n| "x".repeat(n)),
        1 => (1usize..80).prop_map(|n| "é".repeat(n)),
        1 => any::<String>(),
    ]
}

/// Device and metric as the topic template gives them (or not).
fn ids() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        3 => (prop::option::of(valid_name()), prop::option::of(valid_name())),
        1 => (prop::option::of(name()), prop::option::of(name())),
    ]
}

fn valid_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,20}"
}

fn as_ids(ids: &(Option<String>, Option<String>)) -> TopicIds<'_> {
    TopicIds {
        device: ids.0.as_deref(),
        metric: ids.1.as_deref(),
    }
}

const KEYS: [&str; 12] = [
    "value",
    "samples",
    "sample_rate_hz",
    "ts",
    "timestamp",
    "time",
    "device",
    "metric",
    "unit",
    "",
    "Value",
    "ts ",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![6 => prop::sample::select(KEYS.to_vec()).prop_map(str::to_string), 1 => any::<String>()]
}

/// Timestamps as text: RFC 3339 (valid, edge or broken) and junk.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "2023-11-14T23:13:20.5+01:00",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999999-23:59",
            "0000-01-01T00:00:00+23:59",
            "2024-02-30T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2023-11-14 23:13:20Z",
            "2023-11-14T23:13:20",
            "yesterday",
            "",
        ])
        .prop_map(str::to_string),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
    ]
}

/// Numbers that stress the conversions: f32 overflow, epoch bounds, huge integers.
fn interesting_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        (-1000i32..1000).prop_map(|i| f64::from(i) / 4.0),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e39,
            -1e39,
            3.4e38,
            3.5e38,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            253_402_300_799_000.0,
            253_402_300_799_000.4,
            253_402_300_799_000.6,
            253_402_300_800_000.0,
            -0.4,
            -0.6,
            9.3e18,
            1.8e19,
            1e300,
        ]),
    ]
}

fn json_number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        interesting_f64().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Json::Number)
            .unwrap_or(Json::Null)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::Bool),
        4 => json_number(),
        1 => name().prop_map(Json::String),
        1 => time_text().prop_map(Json::String),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    json_leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// The fields of an object shaped like a reading, each encoding's value type
/// `V` built with the given strategies: mostly a scalar or a waveform block,
/// sometimes any mix of fields; a time, a device and a metric, or not.
fn reading_fields<V: Clone + std::fmt::Debug + 'static>(
    number: impl Fn() -> BoxedStrategy<V>,
    anything: impl Fn() -> BoxedStrategy<V>,
    time: BoxedStrategy<V>,
    text: fn(String) -> V,
    array: fn(Vec<V>) -> V,
) -> BoxedStrategy<Vec<(String, V)>> {
    let field = |k: &str, v: V| (k.to_string(), v);
    let maybe = |s: BoxedStrategy<V>| prop::option::weighted(0.8, s);
    let number_or_any = || prop_oneof![4 => number(), 1 => anything()].boxed();
    let body = prop_oneof![
        4 => number().prop_map(move |v| vec![field("value", v)]),
        4 => (prop::collection::vec(number(), 0..16), number())
            .prop_map(move |(s, r)| vec![field("samples", array(s)), field("sample_rate_hz", r)]),
        1 => (
            maybe(number_or_any()),
            maybe(prop_oneof![4 => prop::collection::vec(number(), 0..16).prop_map(array), 1 => anything()].boxed()),
            maybe(number_or_any()),
        )
            .prop_map(move |(v, s, r)| {
                [("value", v), ("samples", s), ("sample_rate_hz", r)]
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| field(k, v)))
                    .collect()
            }),
    ];
    let name =
        prop_oneof![8 => valid_name().prop_map(text), 1 => name().prop_map(text), 1 => anything()]
            .boxed();
    // Mostly keys decode ignores, sometimes one of its own.
    let extra_key = prop_oneof![4 => "[a-z_]{1,8}", 1 => key()];
    (
        prop::collection::vec((extra_key, anything()), 0..3),
        body,
        prop::option::weighted(
            0.7,
            (prop::sample::select(vec!["ts", "timestamp", "time"]), time),
        ),
        maybe(name.clone()),
        maybe(name),
    )
        .prop_map(move |(extra, body, time, device, metric)| {
            // Random extra keys first, so the fields chosen above usually win.
            let mut fields = extra;
            fields.extend(body);
            fields.extend(time.map(|(k, v)| field(k, v)));
            fields.extend(device.map(|v| field("device", v)));
            fields.extend(metric.map(|v| field("metric", v)));
            fields
        })
        .boxed()
}

/// A valid RFC 3339 time between 1970 and 9999 (any offset, any precision).
fn rfc3339() -> impl Strategy<Value = String> {
    (
        1970i32..=9999,
        1u8..=12,
        1u8..=28,
        0u8..24,
        0u8..60,
        0u8..60,
        "(\\.[0-9]{1,9})?",
        "Z|z|[+-](0[0-9]|1[0-3]):[0-5][0-9]",
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

/// An object shaped like a reading.
fn json_reading() -> impl Strategy<Value = Json> {
    let time = prop_oneof![
        3 => (0..=MAX_EPOCH_MS).prop_map(Json::from),
        2 => rfc3339().prop_map(Json::String),
        1 => json_number(),
        1 => time_text().prop_map(Json::String),
        1 => json_value(),
    ];
    reading_fields(
        || json_number().boxed(),
        || json_value().boxed(),
        time.boxed(),
        Json::String,
        Json::Array,
    )
    .prop_map(|fields| Json::Object(fields.into_iter().collect()))
}

/// Whole JSON documents: a reading, a batch of readings, or anything.
fn json_doc() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => json_reading(),
        2 => prop::collection::vec(prop_oneof![8 => json_reading(), 1 => json_value()], 0..5).prop_map(Json::Array),
        1 => json_value(),
    ]
}

fn cbor_number() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        1 => any::<i64>().prop_map(|i| Cbor::Integer(i.into())),
        1 => any::<u64>().prop_map(|i| Cbor::Integer(i.into())),
        // The full CBOR integer range is -2^64 ..= 2^64 - 1.
        1 => (-(1i128 << 64)..(1i128 << 64)).prop_map(|i| Cbor::Integer(i.try_into().unwrap())),
        3 => interesting_f64().prop_map(Cbor::Float),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]).prop_map(Cbor::Float),
    ]
}

fn cbor_leaf() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        1 => Just(Cbor::Null),
        1 => any::<bool>().prop_map(Cbor::Bool),
        4 => cbor_number(),
        1 => name().prop_map(Cbor::Text),
        1 => time_text().prop_map(Cbor::Text),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Cbor::Bytes),
    ]
}

fn cbor_value() -> impl Strategy<Value = Cbor> {
    cbor_leaf().prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Cbor::Array),
            prop::collection::vec(
                (
                    prop_oneof![4 => key().prop_map(Cbor::Text), 1 => inner.clone()],
                    inner.clone()
                ),
                0..8
            )
            .prop_map(Cbor::Map),
            (
                prop::sample::select(vec![0u64, 1, 2, 55799, u64::MAX]),
                inner
            )
                .prop_map(|(t, v)| Cbor::Tag(t, Box::new(v))),
        ]
    })
}

/// CBOR time values: numbers, text, and tags 0 and 1 around anything.
fn cbor_time() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        6 => (0..=MAX_EPOCH_MS).prop_map(|t| Cbor::Integer(t.into())),
        2 => (0..=MAX_EPOCH_MS / 1000).prop_map(|t| Cbor::Tag(1, Box::new(Cbor::Integer(t.into())))),
        2 => rfc3339().prop_map(Cbor::Text),
        2 => rfc3339().prop_map(|t| Cbor::Tag(0, Box::new(Cbor::Text(t)))),
        1 => cbor_number(),
        1 => time_text().prop_map(Cbor::Text),
        1 => time_text().prop_map(|t| Cbor::Tag(0, Box::new(Cbor::Text(t)))),
        1 => cbor_number().prop_map(|n| Cbor::Tag(1, Box::new(n))),
        1 => cbor_value(),
    ]
}

/// A map shaped like a reading; some keys are not text.
fn cbor_reading() -> impl Strategy<Value = Cbor> {
    (
        reading_fields(|| cbor_number().boxed(), || cbor_value().boxed(), cbor_time().boxed(), Cbor::Text, Cbor::Array),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec((cbor_value(), cbor_value()), 1..3)],
    )
        .prop_map(|(fields, odd)| Cbor::Map(odd.into_iter().chain(fields.into_iter().map(|(k, v)| (Cbor::Text(k), v))).collect()))
}

fn cbor_doc() -> impl Strategy<Value = Cbor> {
    prop_oneof![
        4 => cbor_reading(),
        2 => prop::collection::vec(prop_oneof![8 => cbor_reading(), 1 => cbor_value()], 0..5).prop_map(Cbor::Array),
        1 => cbor_value(),
    ]
}

fn to_cbor(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// Small damage to an encoded document: cut it, flip bytes, insert bytes.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(usize),
    Set(usize, u8),
    Insert(usize, u8),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
    ];
    // Mostly intact, so that well-formed documents reach the field checks.
    prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(one, 1..4)]
}

fn apply_damage(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        match *d {
            Damage::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            Damage::Set(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            Damage::Set(..) => {}
            Damage::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.insert(at, b);
            }
        }
    }
    bytes
}

// ------------------------------------------------------------ decode: checks

/// A valid reading to encode: device, metric, a scalar (`Ok`) or a waveform
/// block (`Err((samples, sample_rate_hz))`), and the event time if given.
type ValidReading = (String, String, Result<f64, (Vec<f32>, f64)>, Option<i64>);

/// What must hold for any input: Ok with sane readings, or a rejection that says why.
fn check_decoded(
    format: PayloadFormat,
    ids: TopicIds<'_>,
    payload: &[u8],
) -> Result<Vec<Reading>, TestCaseError> {
    match decode(format, ids, payload, RECEIVED_MS) {
        Ok(readings) => {
            prop_assert!(!readings.is_empty(), "Ok with no readings");
            for r in &readings {
                check_reading(r, ids)?;
            }
            Ok(readings)
        }
        Err(rej) => {
            prop_assert!(
                !rej.detail.trim().is_empty(),
                "rejection {:?} without a detail",
                rej.reason
            );
            Ok(Vec::new())
        }
    }
}

fn check_reading(r: &Reading, ids: TopicIds<'_>) -> Result<(), TestCaseError> {
    prop_assert!(
        check_name("device", &r.device).is_ok(),
        "unsafe device name accepted: {:?}",
        r.device
    );
    prop_assert!(
        check_name("metric", &r.metric).is_ok(),
        "unsafe metric name accepted: {:?}",
        r.metric
    );
    if let Some(d) = ids.device {
        prop_assert_eq!(r.device.as_str(), d, "the topic's device must win");
    }
    if let Some(m) = ids.metric {
        prop_assert_eq!(r.metric.as_str(), m, "the topic's metric must win");
    }
    match &r.value {
        Value::Scalar(v) => prop_assert!(v.is_finite(), "non-finite value accepted: {}", v),
        Value::Waveform(w) => {
            prop_assert!(!w.samples.is_empty(), "empty waveform accepted");
            prop_assert!(
                w.samples.iter().all(|s| s.is_finite()),
                "non-finite sample accepted: {:?}",
                w.samples
            );
            prop_assert!(
                w.sample_rate_hz.is_finite() && w.sample_rate_hz > 0.0,
                "bad sample rate accepted: {}",
                w.sample_rate_hz
            );
        }
    }
    prop_assert!(
        r.time_ms >= 0,
        "event time before 1970 accepted: {}",
        r.time_ms
    );
    // RFC 3339 times may carry an offset, so allow a day past 9999-12-31T23:59:59Z.
    prop_assert!(
        r.time_ms <= MAX_EPOCH_MS + 86_400_000,
        "event time after 9999 accepted: {}",
        r.time_ms
    );
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decode_random_bytes(format in format(), ids in ids(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        check_decoded(format, as_ids(&ids), &payload)?;
    }

    #[test]
    fn decode_random_text(format in format(), ids in ids(), payload in prop_oneof![
        any::<String>(),
        "[ \t\n]*[-+]?([0-9]{0,30}\\.?[0-9]{0,30}([eE][-+]?[0-9]{1,4})?|[iI]nf(inity)?|NaN|nan)[ \t\n]*",
        "[\\[\\]{}\",:0-9a-z. -]{0,40}",
    ]) {
        check_decoded(format, as_ids(&ids), payload.as_bytes())?;
    }

    /// Well-formed readings are accepted, in JSON and in CBOR, with their values.
    #[test]
    fn decode_accepts_valid_readings(
        readings in prop::collection::vec(
            (
                "[a-zA-Z0-9_-]{1,20}",
                "[a-zA-Z0-9_-]{1,20}",
                prop_oneof![
                    (-1_000_000i32..1_000_000).prop_map(|i| Ok(f64::from(i) / 8.0)),
                    (prop::collection::vec((-100_000i32..100_000).prop_map(|i| i as f32 / 16.0), 1..32), 1u32..100_000)
                        .prop_map(|(s, r)| Err((s, f64::from(r)))),
                ],
                prop::option::of(0i64..=MAX_EPOCH_MS),
            ),
            1..5,
        ),
        batch in any::<bool>(),
    ) {
        let readings = if batch { readings } else { readings[..1].to_vec() };
        let json_of = |(device, metric, value, ts): &ValidReading| {
            let mut m = serde_json::json!({ "device": device, "metric": metric });
            match value {
                Ok(v) => m["value"] = Json::from(*v),
                Err((s, rate)) => {
                    m["samples"] = Json::from(s.iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
                    m["sample_rate_hz"] = Json::from(*rate);
                }
            }
            if let Some(ts) = ts {
                m["ts"] = Json::from(*ts);
            }
            m
        };
        let docs: Vec<Json> = readings.iter().map(json_of).collect();
        let json = if batch { Json::Array(docs) } else { docs.into_iter().next().unwrap() };
        let cbor: Cbor = Cbor::serialized(&json).unwrap();
        let payloads = [
            (PayloadFormat::Json, serde_json::to_vec(&json).unwrap()),
            (PayloadFormat::Auto, serde_json::to_vec(&json).unwrap()),
            (PayloadFormat::Cbor, to_cbor(&cbor)),
            (PayloadFormat::Auto, to_cbor(&cbor)),
        ];
        for (format, payload) in payloads {
            let got = decode(format, TopicIds::default(), &payload, RECEIVED_MS)
                .map_err(|rej| TestCaseError::fail(format!("{format:?} {:?} rejected: {rej:?}", String::from_utf8_lossy(&payload))))?;
            prop_assert_eq!(got.len(), readings.len());
            for (r, (device, metric, value, ts)) in got.iter().zip(&readings) {
                prop_assert_eq!(&r.device, device);
                prop_assert_eq!(&r.metric, metric);
                prop_assert_eq!(r.time_ms, ts.unwrap_or(RECEIVED_MS));
                match (value, &r.value) {
                    (Ok(v), Value::Scalar(got)) => prop_assert_eq!(v, got),
                    (Err((s, rate)), Value::Waveform(w)) => {
                        prop_assert_eq!(s, &w.samples);
                        prop_assert_eq!(*rate, w.sample_rate_hz);
                    }
                    (want, got) => prop_assert!(false, "expected {:?}, got {:?}", want, got),
                }
            }
        }
    }

    /// Any decimal that parses as a finite f64 is accepted as text.
    #[test]
    fn decode_text_numbers(v in interesting_f64(), ws in "[ \t\r\n]{0,3}") {
        let text = format!("{ws}{v}{ws}");
        let ids = (Some("pump-1".to_string()), Some("temperature".to_string()));
        for format in [PayloadFormat::Text, PayloadFormat::Auto] {
            let got = check_decoded(format, as_ids(&ids), text.as_bytes())?;
            prop_assert_eq!(got.len(), 1, "{:?} {:?} rejected", format, text);
            prop_assert_eq!(&got[0].value, &Value::Scalar(v));
        }
    }
}

#[test]
fn decode_random_json() {
    check_property(
        512,
        || {
            (
                format_for(PayloadFormat::Json),
                ids(),
                json_doc(),
                any::<bool>(),
                damage(),
            )
        },
        |(format, ids, doc, pretty, damage)| {
            let text = if pretty {
                serde_json::to_vec_pretty(&doc)
            } else {
                serde_json::to_vec(&doc)
            }
            .unwrap();
            let payload = apply_damage(text, &damage);
            check_decoded(format, as_ids(&ids), &payload).map(drop)
        },
    );
}

#[test]
fn decode_random_cbor() {
    check_property(
        512,
        || (format_for(PayloadFormat::Cbor), ids(), cbor_doc(), damage()),
        |(format, ids, doc, damage)| {
            let payload = apply_damage(to_cbor(&doc), &damage);
            check_decoded(format, as_ids(&ids), &payload).map(drop)
        },
    );
}

// ------------------------------------------------------------ config

/// A directory with every file a full configuration refers to: devices/,
/// TLS PEM files and a password file. Shared by all cases (read only).
struct ConfigDir {
    _dir: tempfile::TempDir,
    config: PathBuf,
    valid: String,
}

fn config_dir() -> &'static ConfigDir {
    static DIR: OnceLock<ConfigDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("devices")).unwrap();
        std::fs::write(p.join("devices/default.toml"), "match = \"*\"\ndescription = \"any\"\n").unwrap();
        std::fs::write(
            p.join("devices/pumps.toml"),
            "match = \"pump-*\"\n[metadata]\nline = \"1\"\n[metrics.temperature]\nunit = \"degC\"\n",
        )
        .unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["vigil".to_string()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        std::fs::create_dir(p.join("tls")).unwrap();
        std::fs::write(p.join("tls/ca.pem"), ca.pem()).unwrap();
        std::fs::write(p.join("tls/vigil.pem"), client.pem()).unwrap();
        std::fs::write(p.join("tls/vigil.key"), client_key.serialize_pem()).unwrap();
        std::fs::write(p.join("broker.password"), "s3cret\n").unwrap();
        ConfigDir {
            config: p.join("vigil.toml"),
            valid: VALID_CONFIG.to_string(),
            _dir: dir,
        }
    })
}

/// Every section and most keys; relative paths resolve against the temp dir.
const VALID_CONFIG: &str = r#"# vigil configuration
gateway_id = "gw-hall2-01"
log_level = "vigil=debug,warn"
devices_dir = "devices"

[broker]
host = "127.0.0.1"
port = 8883
client_id = "vigil-gw-hall2-01"
keepalive_s = 30
username = "vigil"
password_file = "broker.password"
max_payload_bytes = 1048576
reconnect_min_ms = 500
reconnect_max_ms = 30000

[broker.tls]
ca_file = "tls/ca.pem"
cert_file = "tls/vigil.pem"
key_file = "tls/vigil.key"

[[subscriptions]]
template = "plant/+/{device}/{metric}"
qos = 1
format = "auto"

[[subscriptions]]
template = "vib/{device}/#"
topic = "vib/#"
qos = 0
format = "cbor"

[store]
path = "store"
budget_bytes = 268435456
flush_interval_ms = 20
flush_max_readings = 8192
dead_letter_max = 10000
dead_letter_max_bytes = 16777216
"#;

/// One edit of a config text.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Substitute(usize, char),
    Insert(usize, char),
    DeleteChar(usize),
}

/// Characters that matter to TOML, and a few that do not.
fn config_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec![
            '=', '"', '\'', '[', ']', '{', '}', '#', '.', ',', '\n', '\r', '\t', ' ', '\\', '0', '9', '-', '+', 'a', 'z', 'é', '\u{0}', '\u{7f}', '\u{feff}',
        ]),
        1 => any::<char>(),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            1 => any::<usize>().prop_map(Edit::DeleteLine),
            1 => any::<usize>().prop_map(Edit::DuplicateLine),
            1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
            3 => (any::<usize>(), config_char()).prop_map(|(i, c)| Edit::Substitute(i, c)),
            2 => (any::<usize>(), config_char()).prop_map(|(i, c)| Edit::Insert(i, c)),
            1 => any::<usize>().prop_map(Edit::DeleteChar),
        ],
        1..6,
    )
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    for e in edits {
        let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
        let mut chars: Vec<char> = text.chars().collect();
        let (nl, nc) = (lines.len().max(1), chars.len().max(1));
        text = match *e {
            Edit::DeleteLine(i) if i % nl < lines.len() => {
                lines.remove(i % nl);
                lines.concat()
            }
            Edit::DuplicateLine(i) if i % nl < lines.len() => {
                lines.insert(i % nl, lines[i % nl].clone());
                lines.concat()
            }
            Edit::SwapLines(i, j) if !lines.is_empty() => {
                lines.swap(i % nl, j % nl);
                lines.concat()
            }
            Edit::Substitute(i, c) if !chars.is_empty() => {
                chars[i % nc] = c;
                chars.into_iter().collect()
            }
            Edit::Insert(i, c) => {
                chars.insert(i % (chars.len() + 1), c);
                chars.into_iter().collect()
            }
            Edit::DeleteChar(i) if !chars.is_empty() => {
                chars.remove(i % nc);
                chars.into_iter().collect()
            }
            _ => text,
        };
    }
    text
}

/// Lines a file has, counting a last line without a newline.
fn line_count(text: &str) -> usize {
    text.lines().count().max(1)
}

/// `from_str` never panics, returns a config only without errors, and every
/// error says something and points at a line of its file.
fn check_config(path: &Path, text: String) -> Result<bool, TestCaseError> {
    let mut errors = Vec::new();
    let lines = line_count(&text);
    let config = vigil::config::from_str(path, text.clone(), &mut errors);
    match config {
        Some(_) => prop_assert!(
            errors.is_empty(),
            "a config and errors at once: {:?}",
            errors
        ),
        None => prop_assert!(!errors.is_empty(), "refused without an error:\n{}", text),
    }
    for e in &errors {
        prop_assert!(!e.message.trim().is_empty(), "empty message: {:?}", e);
        if let Some(line) = e.line {
            // Errors in other files (devices/*.toml) count their own lines.
            let max = if e.file == path {
                lines
            } else {
                match std::fs::read_to_string(&e.file) {
                    Ok(t) => line_count(&t),
                    Err(_) => continue,
                }
            };
            prop_assert!(
                (1..=max + 1).contains(&line),
                "{}: line {} outside 1..={} (+1):\n{:?}\ntext:\n{}",
                e.file.display(),
                line,
                max,
                e,
                text
            );
        }
    }
    Ok(config.is_some())
}

#[test]
fn the_base_config_is_valid() {
    let d = config_dir();
    let mut errors = Vec::new();
    let config = vigil::config::from_str(&d.config, d.valid.clone(), &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    let config = config.unwrap();
    assert!(config.broker.tls.is_some());
    assert_eq!(config.subscriptions.len(), 2);
    assert_eq!(config.devices.classes().len(), 2);
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn config_from_random_text(text in prop_oneof![
        any::<String>(),
        // TOML-ish lines: tables, keys with values of every kind.
        prop::collection::vec(
            "(\\[{1,2}[a-z_.\\[\\]]{0,16}\\]{1,2}|#[^\n]{0,10}|[a-z_.\"]{1,16} ?= ?(\"[^\"\n]{0,12}\"?|'[^'\n]{0,8}'|-?[0-9_]{1,12}|[0-9.e+-]{1,8}|true|false|\\{[^}\n]{0,16}\\}?|\\[[^\\]\n]{0,16}\\]?|[0-9]{4}-[0-9]{2}-[0-9]{2}))?",
            0..16,
        ).prop_map(|lines| lines.join("\n")),
    ]) {
        check_config(&config_dir().config, text)?;
    }

    #[test]
    fn config_from_mutated_valid_text(edits in edits()) {
        let d = config_dir();
        let text = apply_edits(&d.valid, &edits);
        check_config(&d.config, text)?;
    }

    /// Whole sections or keys of the valid config replaced by random values.
    #[test]
    fn config_with_random_values(
        line in 0usize..64,
        value in prop_oneof![
            "-?[0-9]{1,20}",
            "\"[^\"\\\\\n]{0,20}\"",
            Just("\"\"".to_string()),
            Just("0".to_string()),
            Just("18446744073709551615".to_string()),
            Just("-1".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("true".to_string()),
            Just("1.5".to_string()),
            Just("nan".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
        ],
    ) {
        let d = config_dir();
        let lines: Vec<&str> = d.valid.lines().collect();
        let i = line % lines.len();
        let new_line = match lines[i].split_once(" = ") {
            Some((key, _)) => format!("{key} = {value}"),
            None => lines[i].to_string(),
        };
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        out[i] = new_line;
        check_config(&d.config, out.join("\n") + "\n")?;
    }
}

// ------------------------------------------------------------ route

fn subscriptions() -> Vec<Subscription> {
    let sub = |template: &str, topic: Option<&str>, format| {
        let template = TopicTemplate::parse(template).unwrap();
        Subscription {
            filter: topic
                .map(str::to_string)
                .unwrap_or_else(|| template.filter()),
            template,
            qos: 1,
            format,
        }
    };
    vec![
        sub("plant/+/{device}/{metric}", None, PayloadFormat::Auto),
        sub("vib/{device}/#", Some("vib/#"), PayloadFormat::Cbor),
        sub("+/{metric}/{device}", None, PayloadFormat::Text),
        sub("#", None, PayloadFormat::Json),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        4 => prop::sample::select(vec!["plant", "vib", "l1", "pump-1", "temperature", "+", "#", "", "$SYS", "{device}", " ", "é", "\u{0}"])
            .prop_map(str::to_string),
        1 => name(),
    ];
    prop_oneof![
        4 => prop::collection::vec(level, 0..7).prop_map(|l| l.join("/")),
        1 => any::<String>(),
        1 => "[a-z/+#$]{0,20}",
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        json_doc().prop_map(|d| serde_json::to_vec(&d).unwrap()),
        cbor_doc().prop_map(|d| to_cbor(&d)),
        interesting_f64().prop_map(|f| f.to_string().into_bytes()),
    ]
}

#[test]
fn route_random_topics() {
    let template =
        "([a-z+#]{0,3}|\\{(device|metric|x)\\})(/([a-z+#]{0,3}|\\{(device|metric|x)\\})){0,4}";
    check_property(
        512,
        move || {
            (
                topic(),
                payload(),
                prop_oneof![Just(1usize << 20), 0usize..64],
                0usize..=4,
                template,
            )
        },
        |(topic, payload, max_payload, which, template)| {
            // The fixed subscriptions, a prefix of them, or one from a random template.
            let mut subs = subscriptions();
            subs.truncate(which);
            if which == 0 {
                if let Ok(t) = TopicTemplate::parse(&template) {
                    subs.push(Subscription {
                        filter: t.filter(),
                        template: t,
                        qos: 1,
                        format: PayloadFormat::Auto,
                    });
                }
            }
            let limits = Limits {
                max_payload_bytes: max_payload,
                max_future_skew_ms: 300_000,
                known_devices: None,
            };
            let received_ms = ROUTE_RECEIVED_MS;
            match route(&subs, limits, &topic, &payload, received_ms) {
                Outcome::Readings(readings) => {
                    prop_assert!(!readings.is_empty());
                    prop_assert!(payload.len() <= max_payload, "oversized payload decoded");
                    for r in &readings {
                        check_reading(r, TopicIds::default())?;
                        prop_assert!(
                            r.time_ms <= received_ms + 300_000,
                            "a reading {} ms ahead of the gateway's clock was accepted",
                            r.time_ms - received_ms
                        );
                    }
                }
                Outcome::Rejected(dl) => {
                    prop_assert_eq!(&dl.topic, &topic);
                    prop_assert_eq!(dl.payload_len, payload.len());
                    prop_assert_eq!(
                        &dl.payload[..],
                        &payload[..payload.len().min(DEAD_LETTER_MAX_PAYLOAD)]
                    );
                    prop_assert!(
                        !dl.detail.trim().is_empty(),
                        "dead letter without a detail: {:?}",
                        dl
                    );
                    prop_assert_eq!(dl.received_ms, ROUTE_RECEIVED_MS);
                }
            }
            Ok(())
        },
    );
}
