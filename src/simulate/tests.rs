//! The fleet and its faults, without a broker: what each tick publishes.

use std::time::Duration;

use super::signals::{
    Accelerometer, BLOCK_SAMPLES, BPFI_ORDER, BPFO_ORDER, BSF_ORDER, ENVELOPE_BAND_HZ, FTF_ORDER,
    SAMPLE_RATE_HZ, SHAFT_HZ,
};
use super::*;
use crate::config::{
    Bearing, Foundation, IsoZones, MachineGroup, PayloadFormat, TopicIds, WaveformSettings,
};
use crate::detect::spectrum::Spectrum;
use crate::ingest::decode::decode;
use crate::model::{Reading, Value};

const NOW: EpochMs = 1_795_255_200_000; // 2026-11-21T10:00:00Z

fn options(faults: &str) -> Options {
    Options {
        devices: 4,
        rate_hz: 1.0,
        speed: 60.0,
        duration: Some(Duration::from_secs(120)),
        faults: parse_faults(faults).unwrap(),
        seed: 11,
        ..Options::default()
    }
}

/// Every message of ticks 0..n.
fn run_ticks(opts: &Options, n: u64) -> (Vec<(u64, Message)>, Vec<Injection>) {
    let plan = opts.plan(NOW).unwrap();
    let mut fleet = Fleet::new(opts, &plan);
    let (mut all, mut began, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..n {
        fleet.tick(k, &mut out, &mut began);
        all.extend(out.drain(..).map(|m| (k, m)));
    }
    (all, began)
}

fn decoded(m: &Message) -> Reading {
    let mut parts = m.topic.split('/').skip(2);
    let ids = TopicIds {
        device: parts.next(),
        metric: parts.next(),
    };
    let mut readings = decode(PayloadFormat::Auto, ids, &m.payload, 0)
        .unwrap_or_else(|e| panic!("{} refused: {e:?}", m.topic));
    assert_eq!(readings.len(), 1);
    readings.remove(0)
}

fn scalar(r: &Reading) -> f64 {
    match r.value {
        Value::Scalar(v) => v,
        Value::Waveform(_) => panic!("a scalar was expected"),
    }
}

/// (tick, value) of one stream, for the readings that decode.
fn series(msgs: &[(u64, Message)], device: &str, metric: &str) -> Vec<(u64, f64)> {
    let topic = topic_of(DEFAULT_TOPIC, device, metric);
    msgs.iter()
        .filter(|(_, m)| m.topic == topic && !m.garbage)
        .map(|(k, m)| (*k, scalar(&decoded(m))))
        .collect()
}

#[test]
fn every_reading_decodes_with_its_device_metric_and_event_time() {
    let opts = options("");
    let plan = opts.plan(NOW).unwrap();
    let (msgs, _) = run_ticks(&opts, 30);
    assert_eq!(msgs.len(), 30 * 4 * 2);
    for (k, m) in &msgs {
        let r = decoded(m);
        assert_eq!(r.time_ms, plan.event_ms(*k));
        assert_eq!(m.topic, topic_of(DEFAULT_TOPIC, &r.device, &r.metric));
        let v = scalar(&r);
        match r.metric.as_str() {
            TEMPERATURE => assert!((30.0..60.0).contains(&v), "{v} degC"),
            _ => assert!((1.0..2.5).contains(&v), "{v} mm/s"),
        }
    }
    // One plant minute between readings at 60x and 1/s; the run ends now.
    assert_eq!(plan.event_ms(1) - plan.event_ms(0), 60_000);
    assert_eq!(plan.event_ms(119), NOW);
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let faults = "bearing:pump-01@5s,overheat:pump-02@3s,garbage:pump-03@1s,stuck:pump-04@2s";
    let (a, fa) = run_ticks(&options(faults), 20);
    let (b, fb) = run_ticks(&options(faults), 20);
    assert_eq!(a, b);
    assert_eq!(fa, fb);
    let other = Options {
        seed: 12,
        ..options(faults)
    };
    let (c, _) = run_ticks(&other, 20);
    assert_ne!(a, c);
    // A device's readings do not depend on the size of the fleet.
    let bigger = Options {
        devices: 9,
        ..options("")
    };
    let (small, _) = run_ticks(&options(""), 5);
    let (big, _) = run_ticks(&bigger, 5);
    assert_eq!(
        series(&small, "pump-02", TEMPERATURE),
        series(&big, "pump-02", TEMPERATURE)
    );
}

#[test]
fn overheat_adds_one_degree_a_plant_minute_and_nothing_else_changes() {
    let (healthy, _) = run_ticks(&options(""), 60);
    let (hot, began) = run_ticks(&options("overheat:pump-02@10s"), 60);
    assert_eq!(began.len(), 1);
    assert_eq!(
        (began[0].device.as_str(), began[0].metric.as_str()),
        ("pump-02", TEMPERATURE)
    );
    assert_eq!(began[0].wall, Duration::from_secs(10));
    let base = series(&healthy, "pump-02", TEMPERATURE);
    let heated = series(&hot, "pump-02", TEMPERATURE);
    for ((k, a), (_, b)) in base.iter().zip(&heated) {
        // Tick k is k plant minutes into the run; the fault began at tick 10.
        let expected = (*k as f64 - 10.0).max(0.0) * OVERHEAT_C_PER_MIN;
        assert!((b - a - expected).abs() < 0.011, "tick {k}: {a} -> {b}");
    }
    // The other devices and the vibration are untouched.
    for device in ["pump-01", "pump-03", "pump-04"] {
        assert_eq!(
            series(&healthy, device, TEMPERATURE),
            series(&hot, device, TEMPERATURE)
        );
    }
    assert_eq!(
        series(&healthy, "pump-02", VIBRATION),
        series(&hot, "pump-02", VIBRATION)
    );
}

#[test]
fn a_stuck_sensor_repeats_its_last_value_exactly_while_time_goes_on() {
    let opts = options("stuck:pump-03@20s");
    let plan = opts.plan(NOW).unwrap();
    let (msgs, began) = run_ticks(&opts, 40);
    let topic = topic_of(DEFAULT_TOPIC, "pump-03", TEMPERATURE);
    let stream: Vec<(u64, &Message)> = msgs
        .iter()
        .filter(|(_, m)| m.topic == topic)
        .map(|(k, m)| (*k, m))
        .collect();
    let before = scalar(&decoded(stream[19].1));
    assert!(
        began[0].detail.contains(&format!("{before:.2}")),
        "{began:?}"
    );
    for &(k, m) in &stream[20..] {
        let r = decoded(m);
        assert_eq!(scalar(&r), before, "tick {k}");
        assert_eq!(r.time_ms, plan.event_ms(k));
    }
    // Before, the value moves.
    let early: Vec<f64> = stream[..20]
        .iter()
        .map(|(_, m)| scalar(&decoded(m)))
        .collect();
    assert!(early.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn a_silent_device_sends_nothing_from_its_onset() {
    let (msgs, began) = run_ticks(&options("silent:pump-04@7s"), 20);
    assert_eq!(began[0].metric, "*");
    let of_4: Vec<u64> = msgs
        .iter()
        .filter(|(_, m)| m.topic.contains("/pump-04/"))
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(of_4.len(), 7 * 2);
    assert!(of_4.iter().all(|&k| k < 7));
    assert_eq!(msgs.len(), 20 * 3 * 2 + 7 * 2);
}

#[test]
fn garbage_replaces_the_temperature_payloads_and_the_decoder_refuses_them() {
    let (msgs, _) = run_ticks(&options("garbage:pump-01@3s"), 12);
    let topic = topic_of(DEFAULT_TOPIC, "pump-01", TEMPERATURE);
    let ids = TopicIds {
        device: Some("pump-01"),
        metric: Some(TEMPERATURE),
    };
    for (k, m) in &msgs {
        let bad = m.topic == topic && *k >= 3;
        assert_eq!(m.garbage, bad, "tick {k} {}", m.topic);
        if bad {
            assert!(decode(PayloadFormat::Auto, ids, &m.payload, 0).is_err());
        } else {
            decoded(m);
        }
    }
    assert_eq!(msgs.iter().filter(|(_, m)| m.garbage).count(), 9);
}

#[test]
fn a_bearing_defect_takes_velocity_rms_through_zones_c_and_d() {
    let zones = IsoZones::new(MachineGroup::Medium, Foundation::Rigid);
    let opts = Options {
        duration: Some(Duration::from_secs(60)),
        ..options("bearing:pump-02@5s")
    };
    let (msgs, began) = run_ticks(&opts, 60);
    assert_eq!(began[0].metric, VIBRATION);
    let v = series(&msgs, "pump-02", VIBRATION);
    let zone = |x: f64| match x {
        x if x > zones.c_d => 'D',
        x if x > zones.b_c => 'C',
        _ => 'B',
    };
    // Before the fault, and at its onset: zone A/B.
    assert!(v[..8].iter().all(|&(_, x)| zone(x) == 'B'), "{v:?}");
    // Then C, then D, for good: tick k is k plant minutes in.
    let first = |z: char| v.iter().find(|&&(_, x)| zone(x) == z).map(|&(k, _)| k);
    let (c, d) = (first('C').unwrap(), first('D').unwrap());
    assert!(
        c - 5 >= 8 && c - 5 <= 20,
        "zone C {} plant minutes after onset",
        c - 5
    );
    assert!(
        d - 5 >= 14 && d - 5 <= 30,
        "zone D {} plant minutes after onset",
        d - 5
    );
    assert!(v[(d as usize + 3)..].iter().all(|&(_, x)| zone(x) == 'D'));
    let last = v.last().unwrap().1;
    assert!((6.0..8.0).contains(&last), "levels off at {last} mm/s");
    // The other pumps stay in zone A/B.
    for device in ["pump-01", "pump-03", "pump-04"] {
        assert!(series(&msgs, device, VIBRATION)
            .iter()
            .all(|&(_, x)| zone(x) == 'B'));
    }
}

fn bearing_settings() -> WaveformSettings {
    WaveformSettings {
        bearing: Some(Bearing {
            shaft_hz: SHAFT_HZ,
            bpfo: BPFO_ORDER,
            bpfi: BPFI_ORDER,
            bsf: BSF_ORDER,
            ftf: FTF_ORDER,
        }),
        envelope_band_hz: Some(ENVELOPE_BAND_HZ),
        ..WaveformSettings::default()
    }
}

#[test]
fn a_bearing_defect_shows_at_bpfo_in_vigils_envelope_spectrum() {
    let settings = bearing_settings();
    let mut spectrum = Spectrum::new();
    let mut rng = Rng::new(5);
    let accel = Accelerometer::new(&mut rng);
    let analyze = |spectrum: &mut Spectrum, rng: &mut Rng, impulse: f64, i: i64| {
        let block = accel.block(NOW + i * 1000, SAMPLE_RATE_HZ, BLOCK_SAMPLES, impulse, rng);
        spectrum.analyze(&block, SAMPLE_RATE_HZ, &settings)
    };
    // Envelope amplitudes at (BPFO, BPFI, BSF, FTF), summed over the blocks.
    let (mut healthy_sum, mut faulty_sum) = ([0.0; 4], [0.0; 4]);
    for i in 0..20 {
        let healthy = analyze(&mut spectrum, &mut rng, 0.0, i);
        let faulty = analyze(&mut spectrum, &mut rng, bearing_impulse_g(0.0), i);
        let (h, f) = (healthy.envelope.unwrap(), faulty.envelope.unwrap());
        // In every block, the defect's line stands far above a healthy
        // bearing's at BPFO, and above the faulty bearing's other lines.
        assert!(f[0] > 4.0 * h[0], "BPFO {f:?} vs healthy {h:?}");
        assert!(f[0] > 3.0 * f[1].max(f[2]).max(f[3]), "{f:?}");
        // Velocity RMS stays in zone B: early defects show in the envelope only.
        for s in [&healthy, &faulty] {
            assert!((1.2..2.8).contains(&s.velocity_rms_mm_s), "{s:?}");
        }
        for k in 0..4 {
            healthy_sum[k] += h[k];
            faulty_sum[k] += f[k];
        }
    }
    // On average, a healthy bearing has no line at BPFO: it is level with
    // the other defect frequencies (envelope noise), where the faulty one
    // stands out by an order of magnitude.
    let others = |s: [f64; 4]| (s[1] + s[2] + s[3]) / 3.0;
    assert!(
        healthy_sum[0] < 1.5 * others(healthy_sum),
        "{healthy_sum:?}"
    );
    assert!(faulty_sum[0] > 8.0 * others(faulty_sum), "{faulty_sum:?}");
    // The line grows with the defect.
    let early = analyze(&mut spectrum, &mut rng, bearing_impulse_g(0.0), 20)
        .envelope
        .unwrap()[0];
    let later = analyze(&mut spectrum, &mut rng, bearing_impulse_g(20.0), 21)
        .envelope
        .unwrap()[0];
    assert!(later > 2.5 * early, "{early} -> {later}");
}

#[test]
fn waveform_blocks_decode_as_cbor_with_the_first_sample_time() {
    let opts = Options {
        vibration: Vibration::waveform(),
        ..options("bearing:pump-01@0s")
    };
    let plan = opts.plan(NOW).unwrap();
    let (msgs, _) = run_ticks(&opts, 2);
    let blocks: Vec<(u64, Reading)> = msgs
        .iter()
        .filter(|(_, m)| m.topic.ends_with("/vibration"))
        .map(|(k, m)| (*k, decoded(m)))
        .collect();
    assert_eq!(blocks.len(), 2 * 4);
    for (k, r) in blocks {
        assert_eq!(r.time_ms, plan.event_ms(k));
        let Value::Waveform(w) = r.value else {
            panic!("a waveform block was expected")
        };
        assert_eq!(w.sample_rate_hz, SAMPLE_RATE_HZ);
        assert_eq!(w.samples.len(), BLOCK_SAMPLES);
    }
    // Small enough for a broker's default packet limits: about 5 bytes a sample at most.
    let largest = msgs.iter().map(|(_, m)| m.payload.len()).max().unwrap();
    assert!(largest <= BLOCK_SAMPLES * 5 + 64, "{largest} bytes");
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_run_with_the_reason() {
    // A port nobody listens on: bind, note it, let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = Options {
        broker: format!("127.0.0.1:{port}"),
        ..options("")
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let err = run(opts, None, stop_rx).await.unwrap_err();
    assert!(matches!(err, SimError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot connect to the broker at 127.0.0.1:{port}: "
        )),
        "{err}"
    );
}

#[test]
fn report_lines() {
    let opts = options("bearing:pump-03@30s");
    let plan = opts.plan(NOW).unwrap();
    let (_, began) = run_ticks(&opts, 40);
    let line = report::injection_line(&began[0], false);
    assert!(
        line.starts_with("+ 30.0s  2026-11-21T08:31:00Z  pump-03 vibration  bearing defect"),
        "{line}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&report::injection_line(&began[0], true)).unwrap();
    assert_eq!(v["event"], "fault");
    assert_eq!(v["kind"], "bearing");
    assert_eq!(v["wall_s"], 30.0);
    let v: serde_json::Value = serde_json::from_str(&report::start_line(&plan, true)).unwrap();
    assert_eq!(
        (v["event"].as_str(), v["devices"].as_u64()),
        (Some("start"), Some(4))
    );
    let text = report::start_line(&plan, false);
    assert!(text.contains("pump-01 to pump-04"), "{text}");
    let summary = Summary {
        readings: 10,
        garbage: 2,
        messages: 12,
        elapsed: Duration::from_secs(2),
        ..Summary::default()
    };
    let text = report::summary_line(&summary, false);
    assert!(
        text.starts_with("done: 10 readings + 2 garbage = 12 messages, all confirmed"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&report::summary_line(&summary, true)).unwrap();
    assert_eq!(v["messages_per_s"], 6.0);
}
