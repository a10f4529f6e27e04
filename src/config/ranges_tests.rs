//! Every numeric key of `ranges::SETTINGS`, in `vigil.toml` or a device
//! file: values within its range load and go without a panic through the
//! code that turns them into durations, rates and sizes (client options,
//! reconnect backoff, upstream pacing, the embedded broker's limits, the
//! store, detection's windows, lateness, silence and baseline); values just
//! outside are refused, naming the key at its line.

use std::fs;
use std::time::Duration;

use proptest::prelude::*;

use super::detection_layer::format_ms;
use super::ranges::{self, Range, Real, Span, Whole, SETTINGS};
use super::*;
use crate::backoff::Backoff;
use crate::detect::{Engine, Output};
use crate::model::{EpochMs, Reading, Value, Waveform};

/// A value for a key, before it is written as TOML.
#[derive(Debug, Clone, Copy)]
enum V {
    Whole(i128),
    Real(f64),
    Ms(i64),
}

/// Every key as written in a file: `M` is metric `m`, `F` feature `mean`.
fn keys() -> Vec<(String, Range)> {
    let mut out = Vec::new();
    for s in SETTINGS {
        for k in s.keys {
            let k = k
                .replace("[]", "[0]")
                .replace(".M.", ".m.")
                .replace(".F.", ".mean.")
                .replace(".NAME", ".low");
            out.push((k, s.range));
        }
    }
    out
}

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn is_band(key: &str) -> bool {
    key.ends_with("envelope_band_hz") || key.contains(".bands.")
}

fn real_text(x: f64) -> String {
    match x {
        x if x.is_nan() => "nan".into(),
        f64::INFINITY => "inf".into(),
        f64::NEG_INFINITY => "-inf".into(),
        // Debug is the shortest text that reads back as the same number.
        x => format!("{x:?}"),
    }
}

/// `v` as TOML for `key`. A band gets `v` at one end and the range's other
/// end at the other.
fn toml(key: &str, v: V) -> String {
    match v {
        V::Whole(n) => n.to_string(),
        V::Real(x) if is_band(key) => {
            let max = ranges::BAND_HZ.max;
            let (from, to) = if x < max { (x, max) } else { (0.0, x) };
            format!("[{}, {}]", real_text(from), real_text(to))
        }
        V::Real(x) => real_text(x),
        V::Ms(ms) if ms < 0 => format!("\"{ms}ms\""),
        V::Ms(ms) => format!("\"{}\"", format_ms(ms)),
    }
}

/// What `key` needs beside it (in its table) to be valid at `v`.
fn companions(key: &str, v: V) -> Vec<String> {
    let bearing = "shaft_hz = 30.0";
    let geometry = "balls = 9\nball_diameter = 5.0\npitch_diameter = 30.0";
    let others = |name: &str| {
        ["bpfo", "bpfi", "bsf", "ftf"]
            .iter()
            .filter(|m| **m != name)
            .map(|m| format!("{m} = 1.0"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let lines = match (leaf(key), v) {
        ("reconnect_min_ms", _) => format!("reconnect_max_ms = {}", ranges::RECONNECT_MAX_MS.max),
        ("reconnect_max_ms", _) => format!("reconnect_min_ms = {}", ranges::RECONNECT_MIN_MS.min),
        ("dead_letter_max_bytes" | "alerts_max_bytes", _) => {
            format!("budget_bytes = {}", ranges::BUDGET_BYTES.max)
        }
        // The longest window the hop allows: sliding windows.
        ("hop", V::Ms(h)) => format!(
            "window = {}",
            toml(
                key,
                V::Ms(
                    h.saturating_mul(64)
                        .clamp(ranges::WINDOW.min_ms, ranges::WINDOW.max_ms)
                )
            )
        ),
        ("hop_readings", V::Whole(h)) => format!(
            "window_readings = {}",
            (h * 64).clamp(
                ranges::WINDOW_READINGS.min.into(),
                ranges::WINDOW_READINGS.max.into()
            )
        ),
        ("warning_z", _) => format!("alarm_z = {}", toml(key, v)),
        ("alarm_z", _) => format!("warning_z = {}", toml(key, v)),
        ("shaft_hz" | "shaft_rpm", _) => others(""),
        (m @ ("bpfo" | "bpfi" | "bsf" | "ftf"), _) => format!("{bearing}\n{}", others(m)),
        ("balls", _) => format!("{bearing}\nball_diameter = 5.0\npitch_diameter = 30.0"),
        ("ball_diameter", _) => format!(
            "{bearing}\nballs = 9\npitch_diameter = {}",
            real_text(ranges::PITCH_DIAMETER.max)
        ),
        ("pitch_diameter", _) => format!(
            "{bearing}\nballs = 9\nball_diameter = {}",
            real_text(ranges::BALL_DIAMETER.min)
        ),
        ("contact_angle_deg", _) => format!("{bearing}\n{geometry}"),
        ("group", _) => "foundation = \"rigid\"".into(),
        _ => String::new(),
    };
    lines.lines().map(str::to_string).collect()
}

/// A configuration directory with `key = v`; the file and line of the key.
struct Files {
    _dir: tempfile::TempDir,
    main: PathBuf,
    file: &'static str,
    line: usize,
}

fn files(key: &str, v: V) -> Files {
    let (table, name) = key.rsplit_once('.').expect("keys are in a table");
    let mut body = vec![format!("{name} = {}", toml(key, v))];
    body.extend(companions(key, v));
    let in_main = !(key.starts_with("alerts.") || key.starts_with("metrics."));
    let sections: &[(&str, &str)] = if in_main {
        &[
            ("", "gateway_id = \"gw-1\"\n"),
            ("broker", "host = \"127.0.0.1\"\n"),
            (
                "subscriptions[0]",
                "template = \"plant/{device}/{metric}\"\n",
            ),
            ("store", "path = \"store\"\n"),
            ("upstream", "host = \"127.0.0.2\"\n"),
            (
                "embedded_broker",
                "enabled = true\nlisten = \"127.0.0.1:1\"\n",
            ),
            ("detect", ""),
        ]
    } else {
        &[("", "match = \"dev-*\"\n"), (table, "")]
    };
    let mut text = String::new();
    let mut line = 0;
    for (section, rest) in sections {
        match *section {
            "" => {}
            "subscriptions[0]" => text.push_str("[[subscriptions]]\n"),
            s => text.push_str(&format!("[{s}]\n")),
        }
        if *section == table {
            line = text.lines().count() + 1;
            for l in &body {
                text.push_str(l);
                text.push('\n');
            }
        }
        text.push_str(rest);
    }
    assert!(line > 0, "no table for {key}");
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices");
    fs::create_dir(&devices).unwrap();
    let main = dir.path().join("vigil.toml");
    let base = "gateway_id = \"gw-1\"\n[broker]\nhost = \"127.0.0.1\"\n[[subscriptions]]\ntemplate = \"plant/{device}/{metric}\"\n[store]\npath = \"store\"\n";
    if in_main {
        fs::write(&main, text).unwrap();
        fs::write(devices.join("dev.toml"), "match = \"dev-*\"\n").unwrap();
    } else {
        fs::write(&main, base).unwrap();
        fs::write(devices.join("dev.toml"), text).unwrap();
    }
    Files {
        _dir: dir,
        main,
        file: if in_main { "vigil.toml" } else { "dev.toml" },
        line,
    }
}

/// Values just outside `range` (and, for reals, the non-finite ones).
fn outside(range: Range) -> Vec<V> {
    match range {
        Range::Whole(Whole { min, max, .. }) => {
            vec![V::Whole(i128::from(min) - 1), V::Whole(i128::from(max) + 1)]
        }
        Range::Real(r) => {
            let below = if r.min_excluded {
                r.min
            } else {
                r.min.next_down()
            };
            let above = if r.max_excluded {
                r.max
            } else {
                r.max.next_up()
            };
            [below, above, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
                .map(V::Real)
                .to_vec()
        }
        Range::Span(Span { min_ms, max_ms }) => vec![V::Ms(min_ms - 1), V::Ms(max_ms + 1)],
    }
}

/// The least and greatest values within a real range.
fn real_ends(r: Real) -> (f64, f64) {
    let lo = if r.min_excluded {
        r.min.next_up()
    } else {
        r.min
    };
    let hi = if r.max_excluded {
        r.max.next_down()
    } else {
        r.max
    };
    (lo, hi)
}

/// A value within `range`: its least (`mode` 0), its greatest (1), or `u`
/// of the way across it, evenly (2) or on a log scale (3).
fn inside(range: Range, mode: u8, u: f64) -> V {
    let across = |lo: f64, hi: f64| {
        let x = match mode {
            0 => lo,
            1 => hi,
            2 => lo + u * (hi - lo),
            // Twelve decades below the top, so that small values come up.
            _ => {
                let from = lo.max(hi * 1e-12).max(f64::MIN_POSITIVE);
                (from.ln() + u * (hi.ln() - from.ln())).exp()
            }
        };
        x.clamp(lo, hi)
    };
    match range {
        Range::Whole(w) => V::Whole(across(w.min as f64, w.max as f64).round() as i128),
        Range::Real(r) => {
            let (lo, hi) = real_ends(r);
            V::Real(across(lo, hi))
        }
        Range::Span(s) => V::Ms(across(s.min_ms as f64, s.max_ms as f64).round() as i64),
    }
}

/// Run what turns the settings into durations, rates and sizes.
fn exercise(c: &Config, key: &str) {
    let connections = std::iter::once(&c.broker).chain(c.upstream.iter().map(|u| &u.connection));
    for b in connections {
        crate::link::options(b).unwrap();
        let mut backoff = Backoff::new(b.reconnect_min, b.reconnect_max, 7);
        for _ in 0..64 {
            assert!(backoff.next_delay() <= b.reconnect_max);
        }
    }
    crate::ingest::connect(&c.broker).unwrap();
    if let Some(u) = &c.upstream {
        crate::forward::connect(u).unwrap();
        if let Some(rate) = u.aggregate_rate {
            pace(rate);
        }
    }
    if let Some(e) = &c.embedded_broker {
        let (router, server) = crate::broker::settings(e, e.listen);
        assert!(router.max_segment_count >= 2 && router.max_segment_size > 0);
        assert_eq!(server.connections.max_payload_size, e.max_payload_bytes);
    }
    if key.starts_with("store.") {
        let store = crate::store::Store::open(&c.store).unwrap();
        store.stats().unwrap();
        assert_eq!(store.budget_bytes(), c.store.budget_bytes);
    }
    detect(c);
}

/// The pacing of the aggregates lane: the wait for a token is at most
/// 1 / the lowest rate.
fn pace(rate: f64) {
    let most = Duration::from_secs_f64(1.0 / ranges::AGGREGATE_RATE_PER_S.min);
    let mut p = crate::forward::Pace::new(rate);
    let mut at = tokio::time::Instant::now();
    for _ in 0..3 {
        while p.take(at).is_ok() {}
        let next = p.take(at).unwrap_err();
        assert!(next > at && next - at <= most, "{rate}: {:?}", next - at);
        // When it is due, a token is there.
        assert!(p.take(next).is_ok(), "{rate}");
        at = next;
    }
}

/// Detection on a stream the device file describes: enough windows to end
/// the longest warm-up, then silence.
fn detect(c: &Config) {
    // The gateway-wide rules: streams beyond the cap, a reading ahead of
    // the clock, and a tick long enough for every stream to be idle.
    let mut engine = Engine::new(c.devices.clone());
    engine.set_max_future_skew(c.detect.max_future_skew_ms);
    engine.set_stream_limits(crate::detect::StreamLimits {
        max_streams: c.detect.max_streams,
        idle_ms: c.detect.stream_idle_ms,
    });
    let mut out = Output::default();
    let now: EpochMs = 1_795_255_200_000;
    for i in 0..c.detect.max_streams.min(100) + 2 {
        let reading = Reading {
            device: format!("dev-{i}"),
            metric: "m".into(),
            time_ms: now + (i as EpochMs % 3) * c.detect.max_future_skew_ms,
            value: Value::Scalar(1.0),
        };
        engine.process(&reading, now, &mut out);
    }
    assert!(engine.streams() <= c.detect.max_streams);
    engine.tick(now + c.detect.stream_idle_ms + 40 * 86_400_000, &mut out);
    engine.take_lifecycle();

    let s = c.devices.stream_settings("dev-1", "m");
    let step = match s.window {
        crate::config::WindowSpec::Time { hop_ms, .. } => hop_ms,
        crate::config::WindowSpec::Count { .. } => 1_000,
    };
    let vibration = s.waveform.bearing.is_some()
        || !s.waveform.bands.is_empty()
        || s.waveform.envelope_band_hz.is_some();
    let mut engine = Engine::new(c.devices.clone());
    let mut out = Output::default();
    let t0: EpochMs = 1_795_255_200_000;
    let mut t = t0;
    for i in 0..300 {
        t = t0 + i * step;
        let value = if vibration {
            let samples = (0..256)
                .map(|k| ((k * (i + 3)) as f32 * 0.1).sin())
                .collect();
            Value::Waveform(Waveform {
                sample_rate_hz: 2560.0,
                samples,
            })
        } else {
            Value::Scalar(20.0 + (i % 7) as f64 + if i > 280 { 1e3 } else { 0.0 })
        };
        let reading = Reading {
            device: "dev-1".into(),
            metric: "m".into(),
            time_ms: t,
            value,
        };
        engine.process(&reading, t, &mut out);
    }
    let quiet = s.silent_after_ms.unwrap_or(0) + s.allowed_lateness_ms + 1;
    engine.tick(t + quiet, &mut out);
    engine.tick(t + 2 * quiet + 40 * 86_400_000, &mut out);

    // The widest gap between event times that ingest lets through: from the
    // epoch to the end of year 9999.
    let last: EpochMs = 253_402_300_799_000;
    let mut engine = Engine::new(c.devices.clone());
    for t in [0, last] {
        let reading = Reading {
            device: "dev-1".into(),
            metric: "m".into(),
            time_ms: t,
            value: Value::Scalar(1.0),
        };
        engine.process(&reading, t, &mut out);
    }
    engine.tick(last + quiet, &mut out);
}

fn load_files(f: &Files) -> Result<Config, Vec<ConfigError>> {
    load(&f.main).map_err(|e| e.0)
}

#[test]
fn values_just_outside_each_range_are_refused_at_their_line() {
    for (key, range) in keys() {
        for v in outside(range) {
            let f = files(&key, v);
            let errors = load_files(&f).map(|_| Vec::new()).unwrap_or_else(|e| e);
            assert!(
                errors.iter().any(|e| e.file.ends_with(f.file)
                    && e.line == Some(f.line)
                    && e.message.starts_with(&format!("{key}: "))),
                "{key} = {} accepted or not named at {}:{}: {}",
                toml(&key, v),
                f.file,
                f.line,
                ConfigErrors(errors.clone())
            );
        }
    }
}

#[test]
fn the_ends_of_each_range_are_accepted() {
    for (key, range) in keys() {
        for mode in [0, 1] {
            let v = inside(range, mode, 0.0);
            let f = files(&key, v);
            let c = load_files(&f).unwrap_or_else(|e| {
                panic!("{key} = {} refused: {}", toml(&key, v), ConfigErrors(e))
            });
            exercise(&c, &key);
        }
    }
}

/// Keys that are every table with every name, as `{a, b}.{x, y}`.
fn compact(keys: &[&str]) -> String {
    let mut tables: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for k in keys {
        let (t, n) = k.rsplit_once('.').unwrap_or(("", k));
        if !tables.contains(&t) {
            tables.push(t);
        }
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let group = |v: &[&str]| match v {
        [one] => one.to_string(),
        many => format!("{{{}}}", many.join(", ")),
    };
    if tables.len() * names.len() == keys.len() {
        format!("`{}.{}`", group(&tables), group(&names))
    } else {
        let each: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
        each.join(", ")
    }
}

#[test]
fn the_ranges_in_the_readme_are_the_ones_in_force() {
    let readme = include_str!("../../README.md");
    let mut rows = String::from("| keys | accepted |\n|---|---|\n");
    for s in SETTINGS {
        rows.push_str(&format!("| {} | {} |\n", compact(s.keys), s.range));
    }
    assert!(
        readme.contains(&rows),
        "README.md should hold this table of ranges:\n{rows}"
    );
}

proptest! {
    // No regression files in the source tree; a failure prints its minimal input.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any value within a key's range loads and runs.
    #[test]
    fn any_value_within_its_range_loads_and_runs(
        which in 0..keys().len(),
        mode in 0u8..4,
        u in 0.0f64..=1.0,
    ) {
        let (key, range) = &keys()[which];
        let v = inside(*range, mode, u);
        let f = files(key, v);
        match load_files(&f) {
            Ok(c) => exercise(&c, key),
            Err(e) => prop_assert!(false, "{key} = {} refused: {}", toml(key, v), ConfigErrors(e)),
        }
    }
}
