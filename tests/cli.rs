//! The command line: check-config, inspect, and a clean stop on SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::support::{publish_blocking, vigil_cmd, Broker, Msg, Options, Setup, VigilProcess};

#[test]
fn check_config_accepts_the_shipped_config() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/vigil.toml");
    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_reports_every_error_with_file_and_line() {
    let setup = Setup::new(&Options::new(1883));
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("keepalive_s = 5", "keepalive_s = 1\nspeed = 3")
        .replace("flush_interval_ms = 10", "flush_interval_ms = \"fast\"");
    std::fs::write(&setup.config, &text).unwrap();
    std::fs::write(
        setup.dir.path().join("devices/pumps.toml"),
        "match = \"pump-*\"\n[metrics.temp]\nunits = \"degC\"\n",
    )
    .unwrap();
    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let main = setup.config.display().to_string();
    for expected in [
        format!("{main}:{}: broker.keepalive_s", line_of("keepalive_s")),
        format!("{main}:{}: broker.speed: unknown field", line_of("speed")),
        format!(
            "{main}:{}: store.flush_interval_ms",
            line_of("flush_interval_ms")
        ),
        format!(
            "{}:3: metrics.temp.units: unknown field",
            setup.dir.path().join("devices/pumps.toml").display()
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 error(s) found"), "{stderr}");
}

/// This rate once passed check-config and then made vigil panic at the
/// second aggregate, on every start.
#[test]
fn check_config_refuses_a_vanishing_aggregate_rate() {
    let mut options = Options::new(1883);
    options.extra_tables =
        "[upstream]\nhost = \"127.0.0.1\"\nport = 1884\naggregate_rate_per_s = 1e-20\n".into();
    let setup = Setup::new(&options);
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("aggregate_rate_per_s"))
        .unwrap()
        + 1;
    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:{line}: upstream.aggregate_rate_per_s: 1e-20 is out of range; expected 0.001 to 1000000 messages per second",
        setup.config.display()
    );
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );
    assert!(stderr.contains("1 error(s) found"), "{stderr}");
}

#[test]
fn inspect_without_a_store_says_so_and_creates_nothing() {
    let setup = Setup::new(&Options::new(1883));
    let out = setup.inspect_output("stats", 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store at"));
    assert!(!setup.dir.path().join("store").exists());
}

/// Every file and directory under `dir`: size and modification time.
fn files_of(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            out.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    out
}

/// `inspect` and `status` (of a stopped agent) read the store without
/// writing to it: run as root, a write would leave root-owned files in the
/// service's store. They read a copy in the temporary directory, removed
/// afterwards.
#[test]
fn inspect_and_status_leave_the_store_as_it_was() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    publish_blocking(
        broker.port,
        vec![
            Msg::new("plant/l1/pump-3/temperature", "40.5"),
            Msg::new("plant/l1/pump-3/temperature", "oops"),
        ],
    );
    vigil.wait_for_log("batch committed", 1);
    assert!(vigil.terminate().success());

    let store = setup.dir.path().join("store");
    let before = files_of(&store);
    assert!(before.len() > 1, "{before:#?}");
    let tmp = tempfile::tempdir().unwrap();
    for what in ["readings", "dead-letters", "alerts", "aggregates", "stats"] {
        let out = vigil_cmd()
            .args(["inspect", "--config"])
            .arg(&setup.config)
            .arg(what)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inspect {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if what == "readings" {
            assert!(String::from_utf8_lossy(&out.stdout).contains("40.5"));
        }
    }
    let out = vigil_cmd()
        .args(["status", "--config"])
        .arg(&setup.config)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 stored, 1 rejected"));
    assert_eq!(files_of(&store), before, "the store changed");
    assert_eq!(files_of(tmp.path()).len(), 0, "a copy was left behind");

    // A directory without a store in it is not made one.
    let empty = setup.dir.path().join("store");
    std::fs::remove_dir_all(&empty).unwrap();
    std::fs::create_dir(&empty).unwrap();
    let out = setup.inspect_output("stats", 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no store at"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_of(&empty).len(), 0, "inspect created files");
}

#[test]
fn sigterm_flushes_and_exits_zero_and_inspect_reads_the_store() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    // Inspect refuses to open the store of a running agent, with a hint.
    let out = setup.inspect_output("stats", 1);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked by another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    publish_blocking(
        broker.port,
        vec![
            Msg::new(
                "plant/l1/pump-3/temperature",
                r#"{"value": 40.25, "ts": "2026-11-21T10:00:00Z"}"#,
            ),
            Msg::new("plant/l1/pump-3/temperature", "oops"),
        ],
    );
    vigil.wait_for_log("batch committed", 1);
    let log = vigil.log();
    assert!(log.contains("payload rejected"), "{log}");
    let status = vigil.terminate();
    assert_eq!(status.code(), Some(0));

    let readings = setup.inspect("readings", 10);
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0]["device"], "pump-3");
    assert_eq!(readings[0]["metric"], "temperature");
    assert_eq!(readings[0]["value"], 40.25);
    assert_eq!(readings[0]["time"], "2026-11-21T10:00:00Z");
    let dead = setup.inspect("dead-letters", 10);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "malformed");
    assert_eq!(dead[0]["payload"], "oops");
    let stats = &setup.inspect("stats", 1)[0];
    assert_eq!(stats["readings"], 1);
    assert_eq!(stats["dead_letters"], 1);
    assert_eq!(stats["messages_total"], 2);
    assert_eq!(stats["first_reading_time"], "2026-11-21T10:00:00Z");
}
