//! Options and their validation: names, event times, every error at once.

use super::*;

fn opts() -> Options {
    Options {
        devices: 8,
        rate_hz: 10.0,
        duration: Some(Duration::from_secs(60)),
        ..Options::default()
    }
}

fn errors(o: &Options) -> Vec<String> {
    match o.plan(0) {
        Err(SimError::Invalid(e)) => e,
        other => panic!("expected invalid options, got {other:?}"),
    }
}

#[test]
fn device_names_widen_with_the_fleet() {
    assert_eq!(device_name("pump-", 0, 8), "pump-01");
    assert_eq!(device_name("pump-", 99, 100), "pump-100");
    assert_eq!(device_name("pump-", 0, 1000), "pump-0001");
    assert_eq!(device_name("m", 9, 10), "m10");
}

#[test]
fn an_accelerated_run_ends_at_the_present() {
    let o = Options {
        speed: 60.0,
        ..opts()
    };
    let now = 1_795_219_200_000;
    let plan = o.plan(now).unwrap();
    assert_eq!(plan.ticks, Some(600));
    assert_eq!(plan.step_ms, 6000.0);
    assert_eq!(plan.end_ms, Some(now));
    assert_eq!(plan.start_ms, now - 599 * 6000);
    assert_eq!(plan.event_ms(599), now);
    // A count (16 messages a tick) limits the ticks too.
    let plan = Options {
        count: Some(100),
        ..o.clone()
    }
    .plan(now)
    .unwrap();
    assert_eq!(plan.ticks, Some(7));
    // Until stopped: from now.
    let plan = Options {
        duration: None,
        ..o
    }
    .plan(now)
    .unwrap();
    assert_eq!((plan.ticks, plan.start_ms), (None, now));
    assert_eq!(plan.tick_at(Duration::from_millis(300)), 3);
}

#[test]
fn every_error_is_reported_at_once() {
    let o = Options {
        devices: 0,
        rate_hz: 0.0,
        qos: 2,
        broker: "localhost".into(),
        topic: "plant/+/{device}".into(),
        ..opts()
    };
    let e = errors(&o);
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(e[0].contains("not HOST:PORT"));
    assert!(e[1].contains("devices: 0"));
    assert!(e[2].contains("rate: 0"));
    assert!(e[3].contains("qos: 2"));
    assert!(e[4].contains("{metric} exactly once"));
    let e = errors(&Options {
        rate_hz: f64::NAN,
        speed: -1.0,
        ..opts()
    });
    assert_eq!(e.len(), 2, "{e:#?}");
}

#[test]
fn faults_must_name_a_device_of_the_fleet_and_fall_within_the_run() {
    let fault = |device: &str, at: u64| Fault {
        kind: crate::simulate::FaultKind::Bearing,
        device: device.into(),
        at: Duration::from_secs(at),
    };
    let o = Options {
        faults: vec![
            fault("pump-03", 30),
            fault("pump-09", 30),
            fault("pump-3", 30),
            fault("motor-01", 30),
            fault("pump-00", 30),
            fault("pump-02", 60),
        ],
        ..opts()
    };
    let e = errors(&o);
    assert_eq!(e.len(), 5, "{e:#?}");
    assert_eq!(
        e[0],
        "fault bearing:pump-09@30s: pump-09 is not in the fleet (pump-01 to pump-08)"
    );
    assert_eq!(
        e[4],
        "fault bearing:pump-02@1m: 1m is not before the end of the run (1m)"
    );
}

#[test]
fn raw_options_parse_text_and_report_every_error() {
    let raw = RawOptions {
        broker: "127.0.0.1:1883".into(),
        devices: 4,
        device_prefix: "pump-".into(),
        topic: DEFAULT_TOPIC.into(),
        rate_hz: 1.0,
        duration: Some("2m".into()),
        count: None,
        flat_out: false,
        speed: 60.0,
        vibration: "waveform".into(),
        faults: Some("bearing:pump-03@30s".into()),
        qos: 1,
        seed: 3,
    };
    let o = raw.clone().parse().unwrap();
    assert_eq!(o.duration, Some(Duration::from_secs(120)));
    assert_eq!(o.vibration, Vibration::waveform());
    assert_eq!(o.faults.len(), 1);
    let bad = RawOptions {
        duration: Some("2 min".into()),
        vibration: "fft".into(),
        faults: Some("melt:pump-01@1s,bearing:pump-02".into()),
        ..raw
    };
    match bad.parse() {
        Err(SimError::Invalid(e)) => assert_eq!(e.len(), 4, "{e:#?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn brokers() {
    assert_eq!(
        parse_broker("127.0.0.1:1883"),
        Ok(("127.0.0.1".into(), 1883))
    );
    assert_eq!(parse_broker("[::1]:1883"), Ok(("::1".into(), 1883)));
    assert_eq!(
        parse_broker("broker.local:8883"),
        Ok(("broker.local".into(), 8883))
    );
    for bad in [
        "",
        "host",
        ":1883",
        "host:",
        "host:99999",
        "::1:1883",
        "host:0",
    ] {
        assert!(parse_broker(bad).is_err(), "{bad:?}");
    }
}
