//! The detection keys of device files: how files and metric tables merge
//! into `StreamSettings`, and that every mistake is reported at its line.

use std::fs;
use std::path::Path;

use super::*;

/// Load a devices directory holding `files`.
fn load_devices(files: &[(&str, &str)]) -> Result<DeviceRegistry, Vec<ConfigError>> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        fs::write(dir.path().join(name), text).unwrap();
    }
    let main = Source::new(Path::new("vigil.toml"), String::new());
    let mut errors = Vec::new();
    match devices::load_dir(dir.path(), &main, &mut errors) {
        Some(registry) if errors.is_empty() => Ok(registry),
        _ => Err(errors),
    }
}

fn registry(files: &[(&str, &str)]) -> DeviceRegistry {
    load_devices(files).unwrap_or_else(|e| panic!("{}", ConfigErrors(e)))
}

fn errors_of(files: &[(&str, &str)]) -> Vec<ConfigError> {
    load_devices(files).expect_err("the device files should be refused")
}

/// Exactly one error in `file` at `line`, and it contains `needle`.
fn assert_error(errors: &[ConfigError], file: &str, line: usize, needle: &str) {
    let text = ConfigErrors(errors.to_vec()).to_string();
    let here: Vec<&ConfigError> = errors
        .iter()
        .filter(|e| e.file.ends_with(file) && e.line == Some(line))
        .collect();
    assert!(
        here.len() == 1 && here[0].message.contains(needle),
        "expected one error at {file}:{line} containing {needle:?}, got:\n{text}"
    );
}

fn time(length_ms: i64, hop_ms: i64) -> WindowSpec {
    WindowSpec::Time { length_ms, hop_ms }
}

fn limit<'a>(s: &'a StreamSettings, feature: &str) -> &'a Limit {
    s.limits
        .iter()
        .find(|l| l.feature == feature)
        .unwrap_or_else(|| panic!("no limit on {feature} in {s:?}"))
}

const DEFAULT: &str = r#"match = "*"
[metrics."*"]
window = "1m"
[metrics."*".baseline]
features = ["mean", "std"]
"#;

const PUMPS: &str = r#"match = "pump-*"
[metrics.temperature]
unit = "degC"
window = "5m"
hop = "1m"
[metrics.temperature.limits.mean]
warning_above = 80.0
alarm_above = 95.0
"#;

#[test]
fn device_file_overrides_its_class_key_by_key() {
    let pump7 = "match = \"pump-7\"\n[metrics.temperature.limits.mean]\nalarm_above = 90.0\n";
    let reg = registry(&[
        ("default.toml", DEFAULT),
        ("pumps.toml", PUMPS),
        ("pump-7.toml", pump7),
    ]);
    let p7 = reg.stream_settings("pump-7", "temperature");
    assert_eq!(p7.window, time(300_000, 60_000));
    assert_eq!(p7.unit.as_deref(), Some("degC"));
    let l = limit(&p7, "mean");
    assert_eq!((l.warning_above, l.alarm_above), (Some(80.0), Some(90.0)));
    let p8 = reg.stream_settings("pump-8", "temperature");
    assert_eq!(limit(&p8, "mean").alarm_above, Some(95.0));
    // The class's `*` baseline applies under the named metric.
    let b = p8.baseline.expect("baseline from default.toml");
    assert_eq!(b.features, ["mean", "std"]);
    // Other devices get only default.toml.
    let fan = reg.stream_settings("fan-1", "temperature");
    assert_eq!(fan.window, time(60_000, 60_000));
    assert!(fan.limits.is_empty());
}

#[test]
fn metric_tables_apply_from_least_to_most_specific_glob() {
    // Written most specific first: the order in the file does not matter.
    let file = r#"match = "m-*"
[metrics.temperature]
window = "3m"
[metrics."temp*"]
window = "2m"
raise_after = 5
[metrics."?emp_2"]
window = "4m"
[metrics."*"]
window = "1m"
raise_after = 4
clear_after = 7
"#;
    let reg = registry(&[("m.toml", file)]);
    let t = reg.stream_settings("m-1", "temperature");
    assert_eq!(t.window, time(180_000, 180_000));
    assert_eq!((t.raise_after, t.clear_after), (5, 7));
    let t2 = reg.stream_settings("m-1", "temp_2");
    // `?emp_2` sorts before `temp*` by name but is more specific.
    assert_eq!(t2.window, time(240_000, 240_000));
    let t3 = reg.stream_settings("m-1", "temp_3");
    assert_eq!(t3.window, time(120_000, 120_000));
    let h = reg.stream_settings("m-1", "humidity");
    assert_eq!(h.window, time(60_000, 60_000));
    assert_eq!(h.raise_after, 4);
}

#[test]
fn files_apply_before_tables_and_alerts_before_metric_tables() {
    // A more specific file's `*` table overrides the class's named table, and
    // its [alerts] overrides the class's per-metric hysteresis.
    let class = "match = \"pump-*\"\n[alerts]\nclear_after = 9\n[metrics.temperature]\nwindow = \"5m\"\nraise_after = 4\nclear_after = 6\n";
    let device =
        "match = \"pump-7\"\n[alerts]\nraise_after = 1\n[metrics.\"*\"]\nwindow = \"2m\"\n";
    let reg = registry(&[("pumps.toml", class), ("pump-7.toml", device)]);
    let p7 = reg.stream_settings("pump-7", "temperature");
    assert_eq!(p7.window, time(120_000, 120_000));
    assert_eq!((p7.raise_after, p7.clear_after), (1, 6));
    let p8 = reg.stream_settings("pump-8", "temperature");
    assert_eq!((p8.raise_after, p8.clear_after), (4, 6));
    // No metric table: the defaults, with the device-wide hysteresis.
    let other = reg.stream_settings("pump-8", "pressure");
    assert_eq!(other.clear_after, 9);
    assert_eq!(
        other,
        StreamSettings {
            clear_after: 9,
            ..StreamSettings::default()
        }
    );
}

#[test]
fn no_matching_table_gives_the_defaults() {
    let reg = registry(&[("pumps.toml", PUMPS)]);
    assert_eq!(
        reg.stream_settings("fan-1", "temperature"),
        StreamSettings::default()
    );
    assert_eq!(
        reg.stream_settings("pump-1", "pressure"),
        StreamSettings::default()
    );
    assert!(StreamSettings::default().baseline.is_some());
    // A matching table without a baseline anywhere: no baseline.
    let t = reg.stream_settings("pump-1", "temperature");
    assert_eq!(t.baseline, None);
    // Unset keys take the defaults.
    let d = StreamSettings::default();
    assert_eq!(t.allowed_lateness_ms, d.allowed_lateness_ms);
    assert_eq!(
        (t.raise_after, t.clear_after),
        (d.raise_after, d.clear_after)
    );
}

#[test]
fn a_count_window_replaces_a_duration_window_and_back() {
    let class = "match = \"pump-*\"\n[metrics.t]\nwindow = \"5m\"\nhop = \"1m\"\n";
    let counted = "match = \"pump-7\"\n[metrics.t]\nwindow_readings = 12\n";
    let slid = "match = \"pump-8\"\n[metrics.t]\nwindow_readings = 12\nhop_readings = 6\n";
    let reg = registry(&[("a.toml", class), ("b.toml", counted), ("c.toml", slid)]);
    // The inherited duration hop cannot step a count window: tumbling.
    assert_eq!(
        reg.stream_settings("pump-7", "t").window,
        WindowSpec::Count {
            length: 12,
            hop: 12
        }
    );
    assert_eq!(
        reg.stream_settings("pump-8", "t").window,
        WindowSpec::Count { length: 12, hop: 6 }
    );
    assert_eq!(
        reg.stream_settings("pump-9", "t").window,
        time(300_000, 60_000)
    );

    let class = "match = \"pump-*\"\n[metrics.t]\nwindow_readings = 10\n";
    let timed = "match = \"pump-7\"\n[metrics.t]\nwindow = \"30s\"\n";
    let reg = registry(&[("a.toml", class), ("b.toml", timed)]);
    assert_eq!(
        reg.stream_settings("pump-7", "t").window,
        time(30_000, 30_000)
    );
}

#[test]
fn enabled_false_turns_off_an_inherited_baseline() {
    let pumps = "match = \"pump-*\"\n[metrics.temperature.baseline]\nenabled = false\n";
    let reg = registry(&[("default.toml", DEFAULT), ("pumps.toml", pumps)]);
    assert_eq!(reg.stream_settings("pump-1", "temperature").baseline, None);
    assert!(reg
        .stream_settings("pump-1", "vibration")
        .baseline
        .is_some());
    assert!(reg
        .stream_settings("fan-1", "temperature")
        .baseline
        .is_some());
}

#[test]
fn baseline_keys_merge_over_the_defaults() {
    let base = "match = \"*\"\n[metrics.\"*\".baseline]\nwarmup_windows = 10\ncusum_h = 8.0\nvolatility = false\n";
    let pumps = "match = \"pump-*\"\n[metrics.t.baseline]\nalpha = 0.1\ncusum = false\nvolatility = true\nvolatility_ratio = 3.0\n";
    let reg = registry(&[("a.toml", base), ("b.toml", pumps)]);
    let fan = reg.stream_settings("fan", "t").baseline.unwrap();
    let d = BaselineSettings::default();
    assert_eq!(fan.warmup_windows, 10);
    assert_eq!(fan.cusum, Some((0.5, 8.0)));
    assert_eq!(fan.volatility_ratio, None);
    assert_eq!((fan.alpha, &fan.features), (d.alpha, &d.features));
    let pump = reg.stream_settings("pump-1", "t").baseline.unwrap();
    assert_eq!((pump.warmup_windows, pump.alpha), (10, 0.1));
    assert_eq!(pump.cusum, None);
    assert_eq!(pump.volatility_ratio, Some(3.0));
}

#[test]
fn silent_after_never_overrides_a_class() {
    let class =
        "match = \"pump-*\"\n[metrics.t]\nsilent_after = \"10m\"\nallowed_lateness = \"0s\"\n";
    let device = "match = \"pump-7\"\n[metrics.t]\nsilent_after = \"never\"\n";
    let reg = registry(&[("a.toml", class), ("b.toml", device)]);
    assert_eq!(
        reg.stream_settings("pump-8", "t").silent_after_ms,
        Some(600_000)
    );
    assert_eq!(reg.stream_settings("pump-8", "t").allowed_lateness_ms, 0);
    assert_eq!(reg.stream_settings("pump-7", "t").silent_after_ms, None);
}

#[test]
fn waveform_bearing_and_iso_settings() {
    let file = r#"match = "motor-*"
[metrics.accel.waveform]
input_unit = "m/s2"
envelope_band_hz = [2000.0, 5000.0]
bands = { low = [10.0, 200.0], high = [1000.0, 5000.0] }
[metrics.accel.bearing]
shaft_hz = 30.0
balls = 9
ball_diameter = 7.94
pitch_diameter = 39.04
[metrics.accel.iso10816]
group = 1
foundation = "flexible"
[metrics.accel.limits."band.high"]
alarm_above = 2.0
[metrics.accel.rate."envelope.bpfo"]
warning_rise_per_min = 1.0
"#;
    let reg = registry(&[("motors.toml", file)]);
    let s = reg.stream_settings("motor-1", "accel");
    let w = &s.waveform;
    assert_eq!(w.input_unit, AccelUnit::MetersPerSecond2);
    assert_eq!(w.envelope_band_hz, Some((2000.0, 5000.0)));
    let bands: Vec<(&str, f64, f64)> = w
        .bands
        .iter()
        .map(|b| (b.name.as_str(), b.from_hz, b.to_hz))
        .collect();
    assert_eq!(bands, [("high", 1000.0, 5000.0), ("low", 10.0, 200.0)]);
    let b = w.bearing.expect("bearing");
    let (bpfo, bpfi, bsf, ftf) = Bearing::orders_from_geometry(9, 7.94, 39.04, 0.0);
    assert_eq!(
        (b.shaft_hz, b.bpfo, b.bpfi, b.bsf, b.ftf),
        (30.0, bpfo, bpfi, bsf, ftf)
    );
    assert_eq!(
        s.iso10816,
        Some(IsoZones::new(MachineGroup::Large, Foundation::Flexible))
    );
    assert_eq!(limit(&s, "band.high").alarm_above, Some(2.0));
    assert_eq!(s.rates[0].feature, "envelope.bpfo");
    // The multiples in a more specific file replace the geometry.
    let device = "match = \"motor-1\"\n[metrics.accel.bearing]\nshaft_rpm = 1796\nbpfo = 3.5848\nbpfi = 5.4152\nbsf = 2.357\nftf = 0.39828\n";
    let reg = registry(&[("motors.toml", file), ("motor-1.toml", device)]);
    let b = reg
        .stream_settings("motor-1", "accel")
        .waveform
        .bearing
        .unwrap();
    assert_eq!(
        (b.shaft_hz, b.bpfo, b.ftf),
        (1796.0 / 60.0, 3.5848, 0.39828)
    );
}

/// Every per-file mistake, each in its own table, each at its line. Lines
/// marked `# E` carry the error; `want` pairs a marker with the message.
#[test]
fn every_mistake_is_reported_at_its_line() {
    let cases: &[(&str, &str)] = &[
        ("[metrics.a]\nwindow = \"5x\" # E1\n", "not a duration"),
        ("[metrics.b]\nwindow = \"0s\" # E2\n", "from 1ms to 30d"),
        ("[metrics.c]\nwindow = \"1m\"\nwindow_readings = 5 # E3\n", "not both"),
        ("[metrics.d]\nwindow = \"1m\"\nhop = \"2m\" # E4\n", "longer than the window"),
        ("[metrics.e]\nwindow = \"1m\"\nhop_readings = 2 # E5\n", "of one kind"),
        ("[metrics.f]\nwindow = \"65m\"\nhop = \"1m\" # E6\n", "at most 64"),
        ("[metrics.g]\nraise_after = 0 # E7\nclear_after = 1\n", "expected 1 to 100000"),
        ("[metrics.h.limits.mean] # E8\n", "at least one of"),
        ("[metrics.i.limits.mean]\nwarning_above = 9.0\nalarm_above = 8.0 # E9\n", "warning_above (9) must be below alarm_above (8)"),
        ("[metrics.j.limits.mean]\nalarm_below = 2.0\nwarning_below = 1.0 # E10\n", "alarm_below (2) must be below warning_below (1)"),
        ("[metrics.k.limits.mean]\nwarning_below = 6.0\nwarning_above = 5.0 # E11\n", "warning_below (6) must be below warning_above (5)"),
        ("[metrics.l.rate.mean]\nwarning_rise_per_min = -1.0 # E12\n", "above 0"),
        ("[metrics.m.rate.mean]\nwarning_fall_per_min = 3.0\nalarm_fall_per_min = 2.0 # E13\n", "warning_fall_per_min (3) must be below alarm_fall_per_min (2)"),
        ("[metrics.n.baseline]\nalpha = 1.0 # E14\n", "1e-4 to 0.5"),
        ("[metrics.o.baseline]\nwarmup_windows = 0 # E15\n", "1 to 256 windows"),
        ("[metrics.p.baseline]\nwarning_z = 0.0 # E16\n", "above 0"),
        ("[metrics.q.baseline]\nwarning_z = 5.0\nalarm_z = 4.0 # E17\n", "alarm_z (4) must not be below warning_z (5)"),
        ("[metrics.r.baseline]\ncusum_k = -0.5 # E18\n", "0 to 10"),
        ("[metrics.s.baseline]\ncusum_h = 0.0 # E19\n", "above 0"),
        ("[metrics.t.baseline]\nvolatility_ratio = 1.0 # E20\n", "above 1"),
        ("[metrics.u.waveform]\nbands = { x = [5.0, 5.0] } # E21\n", "from_hz < to_hz"),
        ("[metrics.v.waveform]\nenvelope_band_hz = [300.0, 100.0] # E22\n", "not a band"),
        ("[metrics.w.waveform]\ninput_unit = \"mm\" # E23\n", "\"g\" or \"m/s2\""),
        ("[metrics.x.bearing]\nshaft_rpm = 0.0 # E24\nbpfo = 1.0\nbpfi = 1.0\nbsf = 1.0\nftf = 1.0\n", "0.6 to 600000 rpm"),
        ("[metrics.y.bearing] # E25\nshaft_hz = 30.0\nbpfo = 1.0\nbpfi = 1.0\n", "missing bsf, ftf"),
        ("[metrics.z.bearing] # E26\nshaft_hz = 30.0\nbpfo = 1.0\nbpfi = 1.0\nbsf = 1.0\nftf = 1.0\nballs = 9\n", "not both"),
        ("[metrics.aa.bearing]\nshaft_hz = 30.0\nballs = 2 # E27\nball_diameter = 5.0\npitch_diameter = 30.0\n", "3 to 1000 balls"),
        ("[metrics.ab.bearing]\nshaft_hz = 30.0\nballs = 9\nball_diameter = 40.0 # E28\npitch_diameter = 30.0\n", "smaller than pitch_diameter"),
        ("[metrics.ac.bearing]\nshaft_hz = 30.0\nballs = 9\nball_diameter = 5.0\npitch_diameter = 30.0\ncontact_angle_deg = 90.0 # E29\n", "below 90 degrees"),
        ("[metrics.ad.iso10816]\ngroup = 3 # E30\nfoundation = \"rigid\"\n", "expected 1"),
        ("[metrics.ae.iso10816]\ngroup = 1\nfoundation = \"soft\" # E31\n", "\"rigid\" or \"flexible\""),
        ("[metrics.af.limits.bogus] # E32\nalarm_above = 1.0\n", "unknown feature \"bogus\"; expected one of count, mean"),
        ("[metrics.ag.baseline]\nfeatures = [\"mean\", \"nope\"] # E33\n", "unknown feature \"nope\""),
        ("[metrics.ah.limits.\"band.x\"] # E34\nalarm_above = 1.0\n", "needs a band \"x\""),
        ("[metrics.ai.rate.\"envelope.bpfo\"] # E35\nalarm_rise_per_min = 1.0\n", "needs a `bearing`"),
        ("[metrics.aj]\nsilent_after = \"0s\" # E36\n", "from 1s to 30d"),
        ("[alerts]\nclear_after = 0 # E37\n", "expected 1 to 100000"),
        ("[metrics.ak.iso10816] # E38\ngroup = 2\n", "need both `group`"),
        ("[metrics.al.bearing]\nshaft_rpm = 1800 # E39\n", "a shaft speed alone"),
    ];
    let mut text = String::from("match = \"dev-*\"\n");
    for (table, _) in cases {
        text.push_str(table);
    }
    let errors = errors_of(&[("dev.toml", &text)]);
    for (i, (_, needle)) in cases.iter().enumerate() {
        let marker = format!("# E{}\n", i + 1);
        let line = text[..text.find(&marker).unwrap()].lines().count();
        assert_error(&errors, "dev.toml", line, needle);
    }
    assert_eq!(
        errors.len(),
        cases.len(),
        "{}",
        ConfigErrors(errors.clone())
    );
}

#[test]
fn a_bearing_in_a_class_file_needs_a_shaft_speed_from_somewhere() {
    let motors = "match = \"motor-*\"\n[metrics.accel.bearing]\nbpfo = 3.5848\nbpfi = 5.4152\nbsf = 2.357\nftf = 0.39828\n";
    let errors = errors_of(&[("default.toml", DEFAULT), ("motors.toml", motors)]);
    assert_error(&errors, "motors.toml", 2, "needs a shaft speed");
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
    // Given in a less specific table or file, it is found.
    let speed = "match = \"*\"\n[metrics.accel.bearing]\nshaft_rpm = 1796\nbpfo = 1.0\nbpfi = 1.0\nbsf = 1.0\nftf = 1.0\n";
    let reg = registry(&[("default.toml", speed), ("motors.toml", motors)]);
    let b = reg
        .stream_settings("motor-1", "accel")
        .waveform
        .bearing
        .unwrap();
    assert_eq!((b.shaft_hz, b.bpfo), (1796.0 / 60.0, 3.5848));
}

#[test]
fn an_override_that_breaks_warning_below_alarm_is_blamed() {
    let pump7 = "match = \"pump-7\"\n[metrics.temperature.limits.mean]\nalarm_above = 70.0\n";
    let errors = errors_of(&[("pumps.toml", PUMPS), ("pump-7.toml", pump7)]);
    assert_error(
        &errors,
        "pump-7.toml",
        3,
        "alarm_above: warning_above (80) must be below alarm_above (70)",
    );
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn an_override_that_makes_the_hop_longer_than_the_window_is_blamed() {
    let pump7 = "match = \"pump-7\"\n\n[metrics.temperature]\nwindow = \"30s\"\n";
    let errors = errors_of(&[("pumps.toml", PUMPS), ("pump-7.toml", pump7)]);
    assert_error(
        &errors,
        "pump-7.toml",
        4,
        "the hop (1m) is longer than the window (30s)",
    );
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn band_features_need_a_band_in_the_merge() {
    // A `*` table's band.high applies to metrics with no band high.
    let class = "match = \"m-*\"\n[metrics.\"*\".limits.\"band.high\"]\nalarm_above = 1.0\n[metrics.accel.waveform]\nbands = { high = [1.0, 2.0] }\n";
    let errors = errors_of(&[("m.toml", class)]);
    assert_error(&errors, "m.toml", 2, "needs a band \"high\"");
    // A device file may use a band its class defines.
    let class = "match = \"m-*\"\n[metrics.accel.waveform]\nbands = { high = [1.0, 2.0] }\n";
    let device = "match = \"m-1\"\n[metrics.accel.baseline]\nfeatures = [\"band.high\"]\n";
    let reg = registry(&[("m.toml", class), ("m-1.toml", device)]);
    let b = reg.stream_settings("m-1", "accel").baseline.unwrap();
    assert_eq!(b.features, ["band.high"]);
}

#[test]
fn a_problem_inherited_by_many_files_is_reported_once() {
    let class = "match = \"pump-*\"\n[metrics.t.limits.mean]\nwarning_above = 9.0\nalarm_above = 8.0\n[metrics.\"*\"]\nwindow = \"1m\"\n";
    let a = "match = \"pump-7\"\n[metrics.t]\nunit = \"degF\"\n";
    let b = "match = \"pump-?\"\n[metrics.\"t*\"]\nraise_after = 3\n";
    let errors = errors_of(&[
        ("pumps.toml", class),
        ("pump-7.toml", a),
        ("pump-x.toml", b),
    ]);
    assert_error(&errors, "pumps.toml", 4, "must be below");
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn a_key_that_does_not_parse_is_reported_once() {
    let file = "match = \"p\"\n[metrics.t.limits.mean]\nwarning_above = \"hot\"\n[metrics.t.bearing]\nshaft_hz = 30.0\nbpfo = 1.0\nbpfi = 1.0\nbsf = \"x\"\nftf = 1.0\n";
    let errors = errors_of(&[("p.toml", file)]);
    assert_error(&errors, "p.toml", 3, "warning_above");
    assert_error(&errors, "p.toml", 8, "bsf");
    assert_eq!(errors.len(), 2, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn overlapping_files_that_conflict_are_repaired_per_stream() {
    // Neither pattern is more general than the other, so loading cannot see
    // that pump-7 gets the 10m hop of `*-7` with the 5m window of `pump-*`.
    let pumps = "match = \"pump-*\"\n[metrics.temperature]\nwindow = \"5m\"\n";
    let sevens = "match = \"*-7\"\n[metrics.temperature]\nwindow = \"10m\"\nhop = \"10m\"\n";
    let reg = registry(&[("pumps.toml", pumps), ("sevens.toml", sevens)]);
    assert_eq!(
        reg.stream_settings("pump-7", "temperature").window,
        time(300_000, 300_000)
    );
    assert_eq!(
        reg.stream_settings("fan-7", "temperature").window,
        time(600_000, 600_000)
    );
}

#[test]
fn shipped_device_files_load_and_mean_what_they_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let c = load(&root.join("vigil.toml")).unwrap_or_else(|e| panic!("{e}"));
    let reg = &c.devices;

    // default.toml: the learned baseline only, on mean and std, 1-minute windows.
    let any = reg.stream_settings("compressor-3", "pressure");
    assert_eq!(any.window, time(60_000, 60_000));
    assert!(any.limits.is_empty() && any.rates.is_empty() && any.iso10816.is_none());
    assert_eq!(any.baseline.as_ref().unwrap().features, ["mean", "std"]);

    // pumps.toml: limits and rate of rise on the temperature mean.
    let p3 = reg.stream_settings("pump-3", "temperature");
    assert_eq!(p3.unit.as_deref(), Some("degC"));
    assert_eq!(limit(&p3, "mean").alarm_above, Some(95.0));
    assert_eq!(p3.rates[0].warning_rise_per_min, Some(0.5));
    let v = reg.stream_settings("pump-3", "vibration");
    assert_eq!(
        v.iso10816,
        Some(IsoZones::new(MachineGroup::Medium, Foundation::Rigid))
    );

    // pump-7.toml: degF, its limits converted.
    let p7 = reg.stream_settings("pump-7", "temperature");
    assert_eq!(p7.unit.as_deref(), Some("degF"));
    assert_eq!(limit(&p7, "mean").alarm_above, Some(203.0));
    assert_eq!(p7.window, p3.window);

    // motors.toml: an accelerometer with bearing, bands and envelope band.
    let m = reg.stream_settings("motor-2", "accel");
    let b = m.waveform.bearing.expect("bearing");
    assert_eq!((b.shaft_hz, b.bpfi), (1796.0 / 60.0, 5.4152));
    assert_eq!(m.waveform.bands.len(), 2);
    assert_eq!(m.waveform.envelope_band_hz, Some((2000.0, 5000.0)));
    let features = &m.baseline.as_ref().unwrap().features;
    assert!(
        features.iter().any(|f| f == "envelope.bpfo"),
        "{features:?}"
    );
}

mod mutated {
    use proptest::prelude::*;

    use super::*;

    /// Every detection key, in two files that override each other.
    const CLASS: &str = include_str!("../../config/devices/motors.toml");
    const DEVICE: &str = r#"match = "motor-1"
[alerts]
raise_after = 1
[metrics."*"]
window_readings = 12
hop_readings = 4
silent_after = "never"
[metrics.accel]
window = "20s"
hop = "5s"
allowed_lateness = "2s"
[metrics.accel.limits.mean]
warning_below = -1.0
alarm_below = -2.0
[metrics.accel.rate."band.low"]
warning_fall_per_min = 1.0
alarm_fall_per_min = 2.0
[metrics.accel.baseline]
enabled = false
cusum = false
volatility_ratio = 3.0
[metrics.accel.bearing]
shaft_hz = 25.0
balls = 9
ball_diameter = 7.94
pitch_diameter = 39.04
contact_angle_deg = 10.0
[metrics.accel.iso10816]
group = 2
foundation = "flexible"
"#;

    fn edit(text: &str, edits: &[(usize, char, u8)]) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        for &(i, c, op) in edits {
            let n = chars.len().max(1);
            match op % 3 {
                0 if !chars.is_empty() => chars[i % n] = c,
                1 => chars.insert(i % (chars.len() + 1), c),
                _ if !chars.is_empty() => {
                    chars.remove(i % n);
                }
                _ => {}
            }
        }
        chars.into_iter().collect()
    }

    fn toml_char() -> impl Strategy<Value = char> {
        prop::sample::select(vec![
            '=', '"', '[', ']', '{', '}', '.', ',', '\n', ' ', '0', '9', '-', '*', '?', 'e', 's',
            'm', 'x', '_',
        ])
    }

    #[test]
    fn the_unedited_files_are_valid() {
        let reg = registry(&[("motors.toml", CLASS), ("motor-1.toml", DEVICE)]);
        let s = reg.stream_settings("motor-1", "accel");
        assert_eq!(s.window, time(20_000, 5_000));
        assert_eq!(s.baseline, None);
        assert_eq!(s.rates[0].feature, "band.low");
        assert_eq!(s.waveform.bearing.unwrap().shaft_hz, 25.0);
    }

    proptest! {
        // No regression files in the source tree; a failure prints its minimal input.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any edit of valid device files: no panic, a registry only without
        /// errors, every error on a line of its file, and settings for any
        /// stream of the registry.
        #[test]
        fn edited_device_files_never_panic(
            which in 0..2usize,
            edits in prop::collection::vec((any::<usize>(), toml_char(), any::<u8>()), 1..6),
        ) {
            let mut texts = [CLASS.to_string(), DEVICE.to_string()];
            texts[which] = edit(&texts[which], &edits);
            match load_devices(&[("motors.toml", &texts[0]), ("motor-1.toml", &texts[1])]) {
                Ok(reg) => {
                    for device in ["motor-1", "motor-2", "pump-1"] {
                        for metric in ["accel", "temperature"] {
                            let s = reg.stream_settings(device, metric);
                            prop_assert!(s.raise_after >= 1 && s.clear_after >= 1);
                        }
                    }
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for e in &errors {
                        let text = if e.file.ends_with("motors.toml") { &texts[0] } else { &texts[1] };
                        let lines = text.lines().count().max(1);
                        prop_assert!(!e.message.trim().is_empty());
                        if let Some(line) = e.line {
                            prop_assert!((1..=lines + 1).contains(&line), "{e} outside {lines} lines");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn checks_across_files_run_beside_errors_in_the_same_table() {
    let pump7 = r#"match = "pump-7"
[metrics.temperature]
window = "30s"
[metrics.temperature.limits.mean]
alarm_above = 70.0
[metrics.temperature.baseline]
features = ["mean", "kurtosiss", "envelope.bpfo"]
"#;
    let errors = errors_of(&[("pumps.toml", PUMPS), ("pump-7.toml", pump7)]);
    assert_error(&errors, "pump-7.toml", 3, "the hop (1m) is longer");
    assert_error(&errors, "pump-7.toml", 5, "must be below alarm_above (70)");
    let on_7: Vec<&str> = errors
        .iter()
        .filter(|e| e.line == Some(7))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(on_7.len(), 2, "{on_7:?}");
    assert!(on_7[0].contains("features[1]: unknown feature \"kurtosiss\""));
    assert!(on_7[1].contains("features[2]: feature \"envelope.bpfo\" needs a `bearing`"));
    assert_eq!(errors.len(), 4, "{}", ConfigErrors(errors.clone()));

    // But a refused key does not bring a follow-on error about what it
    // would have set: without the window, the 2m hop is longer than the
    // default 1m window.
    let file = "match = \"p\"\n[metrics.t]\nwindow = \"5x\"\nhop = \"2m\"\n";
    let errors = errors_of(&[("p.toml", file)]);
    assert_error(&errors, "p.toml", 3, "not a duration");
    assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
}

#[test]
fn each_shipped_device_file_loads_on_its_own() {
    // `vigil backtest --device <file>` loads one file alone.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/devices");
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let reg = DeviceRegistry::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reg.classes().len(), 1);
        n += 1;
    }
    assert!(n >= 4, "{n} device files");
    let bad = tempfile::NamedTempFile::new().unwrap();
    fs::write(bad.path(), "[metrics.t]\nwindow = \"0s\"\n").unwrap();
    let errors = DeviceRegistry::load_file(bad.path()).unwrap_err().0;
    assert_error(&errors, "", 2, "from 1ms to 30d");
}
