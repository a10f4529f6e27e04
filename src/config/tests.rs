use std::fs;
use std::path::Path;

use super::*;

/// A config directory with `vigil.toml` and the given device files.
fn setup(main: &str, devices: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("devices")).unwrap();
    for (name, text) in devices {
        fs::write(dir.path().join("devices").join(name), text).unwrap();
    }
    let path = dir.path().join("vigil.toml");
    fs::write(&path, main).unwrap();
    (dir, path)
}

const GOOD: &str = r#"
gateway_id = "gw-1"

[broker]
host = "127.0.0.1"

[[subscriptions]]
template = "plant/+/{device}/{metric}"

[store]
path = "store"
"#;

fn errors_of(main: &str, devices: &[(&str, &str)]) -> Vec<ConfigError> {
    let (_dir, path) = setup(main, devices);
    load(&path).expect_err("config should be invalid").0
}

#[test]
fn minimal_config_gets_defaults() {
    let (dir, path) = setup(GOOD, &[("default.toml", "match = \"*\"\n")]);
    let c = load(&path).unwrap();
    assert_eq!(c.gateway_id, "gw-1");
    assert_eq!(c.broker.port, 1883);
    assert_eq!(c.broker.client_id, "vigil-gw-1");
    assert_eq!(c.subscriptions[0].filter, "plant/+/+/+");
    assert_eq!(c.subscriptions[0].qos, 1);
    assert_eq!(c.subscriptions[0].format, PayloadFormat::Auto);
    assert_eq!(c.store.path, dir.path().join("store"));
    assert_eq!(c.devices.classes().len(), 1);
}

#[test]
fn shipped_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["vigil.toml", "dev.toml"] {
        let c = load(&root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let p7 = c.devices.resolve("pump-7");
        assert_eq!(p7.metrics["temperature"].unit.as_deref(), Some("degF"));
        assert_eq!(p7.metrics["vibration"].unit.as_deref(), Some("mm/s"));
    }
    // What `vigil demo` runs: its own broker, no [broker] table.
    let demo = load(&root.join("demo/vigil.toml")).unwrap_or_else(|e| panic!("demo: {e}"));
    assert!(demo.embedded_broker.is_some());
    assert_eq!(demo.broker.port, 1883);
    let motor = demo.devices.resolve("motor-01");
    assert_eq!(motor.metrics["vibration"].unit.as_deref(), Some("g"));
}

#[test]
fn all_errors_are_reported_at_once_with_lines() {
    let main = r#"gateway_id = "gw/1"
log_level = "loud=="

[broker]
host = "127.0.0.1"
port = "1883"
colour = "blue"

[[subscriptions]]
template = "plant/{device}/{device}"

[[subscriptions]]
template = "plant/{device}/{metric}"
qos = 2
format = "xml"

[store]
path = "store"
flush_interval_ms = 0
checkpoint_interval_ms = 90000
"#;
    let errors = errors_of(main, &[("bad.toml", "match = \"pump-*\"\ncolor = 1\n")]);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |line: usize, needle: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(line) && e.message.contains(needle)),
            "no error at line {line} containing {needle:?} in:\n{}",
            text.join("\n")
        )
    };
    // Type errors in [broker] are reported key by key.
    has(6, "port");
    has(7, "colour");
    assert!(errors
        .iter()
        .all(|e| e.file.ends_with("vigil.toml") || e.file.ends_with("bad.toml")));
    assert!(
        errors.iter().any(|e| e.file.ends_with("bad.toml")
            && e.line == Some(2)
            && e.message.contains("color")),
        "{text:?}"
    );
    // Semantic errors are not hidden by the type errors above... only once the
    // section parses, so fix [broker] and check the rest.
    let main = main.replace("port = \"1883\"\ncolour = \"blue\"\n", "");
    let errors = errors_of(&main, &[]);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let has = |line: usize, needle: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.line == Some(line) && e.message.contains(needle)),
            "no error at line {line} containing {needle:?} in:\n{}",
            text.join("\n")
        )
    };
    has(1, "gateway");
    has(2, "log_level");
    has(8, "twice");
    has(12, "expected 0 to 1");
    has(13, "xml");
    has(17, "flush_interval_ms");
    has(18, "checkpoint_interval_ms");
}

#[test]
fn missing_sections_are_named() {
    let errors = errors_of("gateway_id = \"g\"\n", &[]);
    let text = ConfigErrors(errors).to_string();
    for needle in [
        "broker: missing",
        "subscriptions: missing",
        "store: missing",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
}

#[test]
fn credentials_and_password_file() {
    let (dir, _) = setup(GOOD, &[]);
    fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let main = GOOD.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"vigil\"\npassword_file = \"pw\"\nallow_plaintext_credentials = true",
    );
    fs::write(dir.path().join("vigil.toml"), &main).unwrap();
    let c = load(&dir.path().join("vigil.toml")).unwrap();
    let creds = c.broker.credentials.unwrap();
    assert_eq!(creds.password.as_deref(), Some("s3cret"));
    assert!(
        !format!("{creds:?}").contains("s3cret"),
        "the password must not appear in debug output"
    );

    let main = GOOD.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"vigil\"\npassword_file = \"missing\"",
    );
    let errors = errors_of(&main, &[]);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("password_file") && e.line == Some(7)),
        "{errors:?}"
    );
    let main = GOOD.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\npassword = \"x\"",
    );
    assert!(errors_of(&main, &[])
        .iter()
        .any(|e| e.message.contains("needs a username")));
}

#[test]
fn tls_files_are_checked() {
    let main = GOOD.replace(
        "[[subscriptions]]",
        "[broker.tls]\nca_file = \"nope.pem\"\n\n[[subscriptions]]",
    );
    let errors = errors_of(&main, &[]);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("cannot read CA file")),
        "{errors:?}"
    );
    let main = GOOD.replace(
        "[[subscriptions]]",
        "[broker.tls]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\n\n[[subscriptions]]",
    );
    let errors = errors_of(&main, &[]);
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("key_file") && e.message.contains("missing")),
        "{errors:?}"
    );
}

#[test]
fn device_files_are_validated() {
    let errors = errors_of(
        GOOD,
        &[
            ("a.toml", "match = \"pump-*\"\n"),
            ("b.toml", "match = \"pump-*\"\n"),
            ("c.toml", "match = \"x\"\n[metrics.\"a/b\"]\nunit = \"g\"\n"),
            ("d.toml", "match = \"y\"\n[metrics.t]\nunit = \" \"\n"),
            ("e.toml", "match = = 1\n"),
        ],
    );
    let text = ConfigErrors(errors.clone()).to_string();
    assert!(
        text.contains("b.toml:1: match: pattern \"pump-*\" is also used by"),
        "{text}"
    );
    assert!(text.contains("c.toml:2:"), "{text}");
    assert!(text.contains("d.toml:3:"), "{text}");
    assert!(text.contains("e.toml:1: invalid TOML"), "{text}");
}

#[test]
fn device_file_name_is_the_default_pattern() {
    let (_dir, path) = setup(GOOD, &[("fan-3.toml", "[metrics.rpm]\nunit = \"1/min\"\n")]);
    let c = load(&path).unwrap();
    assert_eq!(
        c.devices.resolve("fan-3").metrics["rpm"].unit.as_deref(),
        Some("1/min")
    );
    assert!(c.devices.resolve("fan-4").metrics.is_empty());
}

#[test]
fn devices_dir_is_optional_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.toml");
    // The default `devices` directory may be absent: no device files.
    fs::write(&path, GOOD).unwrap();
    assert!(load(&path).unwrap().devices.classes().is_empty());
    // A directory named in the file must exist.
    fs::write(&path, format!("devices_dir = \"nowhere\"\n{GOOD}")).unwrap();
    let errors = load(&path).unwrap_err().0;
    assert!(
        errors
            .iter()
            .any(|e| e.line == Some(1) && e.message.contains("devices directory")),
        "{errors:?}"
    );
}

#[test]
fn unreadable_main_file_is_reported() {
    let errors = load(Path::new("/nonexistent/vigil.toml")).unwrap_err().0;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("cannot read"));
}

/// Names are filled in one pass over the template: a device named `{metric}`
/// (or a gateway named `{device}`) is text, not a placeholder to fill again.
#[test]
fn upstream_topics_keep_names_that_look_like_placeholders() {
    let text =
        format!("{GOOD}\n[upstream]\nhost = \"cloud.example\"\n").replace("gw-1", "{device}");
    let (_dir, path) = setup(&text, &[]);
    let up = load(&path).unwrap().upstream.unwrap();
    assert_eq!(
        up.alert_topic.render("{metric}", "{device}"),
        "vigil/{device}/alerts/{metric}/{device}"
    );
    assert_eq!(
        up.aggregate_topic.render("pump-7", "temp"),
        "vigil/{device}/aggregates/pump-7/temp"
    );
}

#[test]
fn upstream_defaults_and_every_error_with_its_line() {
    let good = format!("{GOOD}\n[upstream]\nhost = \"cloud.example\"\n");
    let (_dir, path) = setup(&good, &[]);
    let c = load(&path).unwrap();
    let up = c.upstream.unwrap();
    assert_eq!(up.connection.port, 1883);
    assert_eq!(up.connection.client_id, "vigil-gw-1-upstream");
    assert_eq!(
        up.alert_topic.render("p", "t"),
        "vigil/gw-1/alerts/p/t",
        "default prefix and template"
    );
    assert_eq!(up.status_topic, "vigil/gw-1/status");
    assert_eq!(up.encoding, Encoding::Json);
    assert_eq!(up.max_inflight, 100);
    assert_eq!(up.aggregate_rate, None);
    assert!(up.aggregates);
    // Default alerts cap: half of what the dead letters leave of the budget.
    assert_eq!(
        c.store.alerts_max_bytes,
        (c.store.budget_bytes - c.store.dead_letter_max_bytes) / 2
    );

    let bad = format!(
        "{}\nalerts_max_bytes = 1073741824\n\n[upstream]\nport = 0\nencoding = \"xml\"\nmax_inflight = 0\naggregate_rate_per_s = -1.0\nalert_topic = \"{{prefix}}/{{site}}\"\ntopic_prefix = \"a/#\"\n\n[upstream.tls]\ncert_file = \"c.pem\"\n",
        GOOD.trim_end()
    );
    let errors = errors_of(&bad, &[]);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let expect = [
        ("store.alerts_max_bytes", 12),
        ("upstream.host", 0),
        ("upstream.port", 15),
        ("upstream.encoding", 16),
        ("upstream.max_inflight", 17),
        ("upstream.aggregate_rate_per_s", 18),
        ("upstream.alert_topic", 19),
        ("upstream.topic_prefix", 20),
        ("upstream.tls.ca_file", 22),
        ("upstream.tls.key_file", 22),
    ];
    for (key, line) in expect {
        let e = errors
            .iter()
            .find(|e| e.message.starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no error for {key} in {text:#?}"));
        if key != "upstream.host" {
            assert_eq!(e.line, Some(line), "{key}: {e}");
        }
    }
}

#[test]
fn upstream_on_the_local_broker_needs_its_own_client_id() {
    let main = format!("{GOOD}[upstream]\nhost = \"127.0.0.1\"\nclient_id = \"vigil-gw-1\"\n");
    let errors = errors_of(&main, &[]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.starts_with("upstream.client_id:"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].line, Some(14));
    // The default upstream id differs from the local one.
    let ok = format!("{GOOD}\n[upstream]\nhost = \"127.0.0.1\"\n");
    let (_dir, path) = setup(&ok, &[]);
    assert!(load(&path).is_ok());
}

#[test]
fn embedded_broker_is_off_unless_enabled_and_stands_in_for_a_missing_broker_table() {
    let without_broker = GOOD.replace("[broker]\nhost = \"127.0.0.1\"\n", "");
    // Off by default: no embedded broker, and then [broker] is required.
    let (_d, path) = setup(
        &format!("{GOOD}\n[embedded_broker]\nlisten = \"0.0.0.0:1884\"\n"),
        &[],
    );
    assert!(load(&path).unwrap().embedded_broker.is_none());
    let errs = errors_of(&without_broker, &[]);
    assert!(errs[0].message.contains("[embedded_broker]"), "{errs:?}");

    let (_d, path) = setup(
        &format!(
            "{without_broker}\n[embedded_broker]\nenabled = true\nlisten = \"0.0.0.0:1884\"\n"
        ),
        &[],
    );
    let c = load(&path).unwrap();
    let e = c.embedded_broker.expect("enabled");
    assert_eq!(e.listen, "0.0.0.0:1884".parse().unwrap());
    assert_eq!((e.max_connections, e.max_payload_bytes), (1000, 1 << 20));
    // Listening on every interface: vigil itself connects over loopback.
    assert_eq!((c.broker.host.as_str(), c.broker.port), ("127.0.0.1", 1884));

    // A [broker] table that names a host wins.
    let (_d, path) = setup(&format!("{GOOD}\n[embedded_broker]\nenabled = true\n"), &[]);
    let c = load(&path).unwrap();
    assert_eq!((c.broker.host.as_str(), c.broker.port), ("127.0.0.1", 1883));
    assert_eq!(c.embedded_broker.unwrap().listen.port(), 1883);
}

#[test]
fn embedded_broker_errors_name_the_key_and_line() {
    let main = format!(
        "{GOOD}\n[embedded_broker]\nenabled = true\nlisten = \"localhost\"\nmax_connections = 1\nqueue_bytes = 10\n"
    );
    let errs = errors_of(&main, &[]);
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    for (needle, line) in [
        (
            "embedded_broker.listen: \"localhost\" is not an address",
            15,
        ),
        ("embedded_broker.max_connections: 1 is out of range", 16),
        ("embedded_broker.queue_bytes: 10 is out of range", 17),
    ] {
        let e = errs
            .iter()
            .find(|e| e.message.contains(needle) || e.to_string().contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {text:#?}"));
        assert_eq!(e.line, Some(line), "{e}");
    }
    let port0 = format!("{GOOD}\n[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    let errs = errors_of(&port0, &[]);
    assert!(errs[0].to_string().contains("port 0"), "{errs:?}");
}

/// Accepted by `check-config` once, this rate made the pacing panic at the
/// second aggregate, on every start.
#[test]
fn a_vanishing_aggregate_rate_is_refused() {
    let main =
        format!("{GOOD}\n[upstream]\nhost = \"cloud.example\"\naggregate_rate_per_s = 1e-20\n");
    let errors = errors_of(&main, &[]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, Some(15), "{}", errors[0]);
    assert!(
        errors[0]
            .message
            .starts_with("upstream.aggregate_rate_per_s: 1e-20 is out of range"),
        "{}",
        errors[0]
    );
}

#[test]
fn credentials_need_tls_or_an_explicit_allowance() {
    let plain = GOOD.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nusername = \"vigil\"\npassword = \"pw\"",
    ) + "[upstream]\nhost = \"cloud.example\"\nusername = \"gw\"\n";
    let errors = errors_of(&plain, &[]);
    let found: Vec<(Option<usize>, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            (Some(6), "broker.username"),
            (Some(16), "upstream.username")
        ],
        "{errors:?}"
    );
    assert!(errors[0].message.contains("[broker.tls]"));
    assert!(errors[1]
        .message
        .contains("upstream.allow_plaintext_credentials = true"));

    let allowed = plain
        .replace(
            "password = \"pw\"",
            "password = \"pw\"\nallow_plaintext_credentials = true",
        )
        .replace(
            "username = \"gw\"",
            "username = \"gw\"\nallow_plaintext_credentials = true",
        );
    let (_d, path) = setup(&allowed, &[]);
    load(&path).unwrap();
    // Without credentials the flag changes nothing.
    let (_d, path) = setup(
        &GOOD.replace(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\nallow_plaintext_credentials = false",
        ),
        &[],
    );
    load(&path).unwrap();
}

#[test]
fn vigils_own_connections_to_its_embedded_broker_take_no_credentials() {
    let main = GOOD.replace(
        "host = \"127.0.0.1\"",
        "host = \"127.0.0.1\"\nport = 1884\nusername = \"vigil\"\nallow_plaintext_credentials = true",
    ) + "[upstream]\nhost = \"localhost\"\nport = 1884\npassword = \"x\"\nusername = \"u\"\n[embedded_broker]\nenabled = true\nlisten = \"0.0.0.0:1884\"\n";
    let errors = errors_of(&main, &[]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0]
        .to_string()
        .contains(":7: broker.username: 127.0.0.1:1884 is vigil's embedded broker"));
    assert!(errors[1]
        .to_string()
        .contains("upstream.username: localhost:1884 is vigil's embedded broker"));
}

#[test]
fn which_addresses_are_the_embedded_broker() {
    let with = |listen: &str| {
        let (_d, path) = setup(
            &format!("{GOOD}\n[embedded_broker]\nenabled = true\nlisten = \"{listen}\"\n"),
            &[],
        );
        load(&path).unwrap().embedded_broker.unwrap()
    };
    let everywhere = with("0.0.0.0:1884");
    assert!(everywhere.serves("127.0.0.1", 1884));
    assert!(everywhere.serves("localhost", 1884));
    assert!(everywhere.serves("127.0.0.2", 1884));
    assert!(!everywhere.serves("127.0.0.1", 1883));
    assert!(!everywhere.serves("gateway.example", 1884));
    let one = with("192.0.2.7:1884");
    assert!(one.serves("192.0.2.7", 1884));
    assert!(!one.serves("127.0.0.1", 1884));
    let v6 = with("[::1]:1884");
    assert!(v6.serves("::1", 1884) && v6.serves("[::1]", 1884));
}

#[test]
fn an_open_embedded_broker_is_a_warning_and_a_users_file_is_checked_line_by_line() {
    let open = format!("{GOOD}\n[embedded_broker]\nenabled = true\nlisten = \"0.0.0.0:1884\"\n");
    let (_d, path) = setup(&open, &[]);
    let c = load(&path).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].line, Some(15));
    assert!(c.warnings[0].as_warning().contains(
        ":15: warning: embedded_broker.listen: 0.0.0.0:1884 is reachable beyond this gateway"
    ));

    let hash = PasswordHash::new("pw").unwrap();
    let (dir, path) = setup(&format!("{open}users_file = \"users\"\n"), &[]);
    fs::write(dir.path().join("users"), format!("s1:{hash}\ns2:plain\n")).unwrap();
    let errors = load(&path).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        (errors[0].file.clone(), errors[0].line),
        (dir.path().join("users"), Some(2))
    );
    assert!(!errors[0].message.contains("plain"), "{}", errors[0]);
    fs::write(dir.path().join("users"), format!("s1:{hash}\n")).unwrap();
    let c = load(&path).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let users = c.embedded_broker.unwrap().users.unwrap();
    assert!(users.get("s1").unwrap().verify("pw"));

    let (_d, path) = setup(&format!("{open}users_file = \"missing\"\n"), &[]);
    let errors = load(&path).unwrap_err().0;
    assert!(
        errors[0].to_string().contains("cannot read the users file"),
        "{errors:?}"
    );

    // TLS: both files are required, and loaded at once.
    let (_d, path) = setup(
        &format!("{open}[embedded_broker.tls]\ncert_file = \"nope.pem\"\n"),
        &[],
    );
    let errors: Vec<String> = load(&path)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains(":16: embedded_broker.tls.key_file: missing")),
        "{errors:?}"
    );
}
