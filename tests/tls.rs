//! TLS to the local broker: a real Mosquitto TLS listener, certificates made
//! by `support::pki` (a CA, a server certificate for localhost / 127.0.0.1 and
//! a client certificate signed by it, and an unrelated second CA).
//!
//! Readings are published on the broker's plain listener; vigil reads them
//! over the TLS listener and stores them.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::support::pki::Pki;
use crate::support::{
    publish_blocking, vigil_cmd, wait_until, Broker, Msg, Options, Setup, VigilProcess,
};

/// Stable part of the log line when the broker's certificate chain does not
/// lead to the configured CA (rustls' `CertificateError::UnknownIssuer`).
const UNKNOWN_ISSUER: &str = "invalid peer certificate: UnknownIssuer";

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The `[broker.tls]` table (goes where `Options::broker_extra` is inserted).
fn tls_table(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut s = format!("[broker.tls]\nca_file = {}\n", toml_str(ca));
    if let Some((cert, key)) = client {
        s.push_str(&format!(
            "cert_file = {}\nkey_file = {}\n",
            toml_str(cert),
            toml_str(key)
        ));
    }
    s
}

fn tls_setup(broker: &Broker, ca: &Path, client: Option<(&Path, &Path)>) -> Setup {
    let mut o = Options::new(broker.tls_port.expect("the broker has a TLS listener"));
    o.broker_extra = tls_table(ca, client);
    Setup::new(&o)
}

/// Point the existing config at another CA file (everything else unchanged).
fn switch_ca(setup: &Setup, from: &Path, to: &Path) {
    let text = fs::read_to_string(&setup.config).unwrap();
    let old = format!("ca_file = {}", toml_str(from));
    assert!(text.contains(&old), "config has no {old:?}:\n{text}");
    fs::write(
        &setup.config,
        text.replace(&old, &format!("ca_file = {}", toml_str(to))),
    )
    .unwrap();
}

const TOPIC: &str = "plant/l1/pump-1/temperature";

fn publish_reading(broker: &Broker, payload: &str) {
    publish_blocking(broker.port, vec![Msg::new(TOPIC, payload)]);
}

/// The values of the stored pump-1/temperature readings, oldest first.
fn stored_values(setup: &Setup) -> Vec<f64> {
    setup
        .inspect("readings", 10)
        .iter()
        .filter(|r| r["device"] == "pump-1" && r["metric"] == "temperature")
        .map(|r| r["value"].as_f64().expect("a scalar reading"))
        .collect()
}

/// Is the process still running (not exited, not a zombie)?
fn running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..."; comm may hold spaces, the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// vigil connects, subscribes, stores one reading published meanwhile, stops.
fn run_and_store_one(broker: &Broker, setup: &Setup, payload: &str) -> String {
    let vigil = VigilProcess::start(setup);
    vigil.wait_for_log("subscribed", 1);
    publish_reading(broker, payload);
    vigil.wait_for_log("batch committed", 1);
    let log = vigil.log();
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}; log:\n{log}");
    log
}

/// Start vigil with a config it cannot connect with; wait for the error line
/// and check that it keeps running (retrying) without connecting.
fn start_failing(setup: &Setup, needle: &str) -> VigilProcess {
    let before = fs::read_to_string(setup.log_path()).unwrap_or_default();
    let vigil = VigilProcess::start(setup);
    wait_until(&format!("the log shows {needle:?}"), || {
        vigil.log()[before.len()..].contains(needle)
    });
    // Several reconnect attempts (backoff 50 to 500 ms) later, still running.
    std::thread::sleep(Duration::from_millis(1500));
    let log = vigil.log()[before.len()..].to_string();
    assert!(
        running(vigil.pid()),
        "vigil exited instead of retrying; log:\n{log}"
    );
    assert!(
        !log.contains("connected to the local broker"),
        "connected despite the TLS failure; log:\n{log}"
    );
    assert!(
        log.contains("TLS with the local broker failed; check broker.tls"),
        "log:\n{log}"
    );
    vigil
}

#[test]
fn server_authenticated_tls() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let setup = tls_setup(&broker, &pki.ca, None);
    let log = run_and_store_one(&broker, &setup, "21.5");
    assert!(
        log.contains(&format!("127.0.0.1:{}", broker.tls_port.unwrap())),
        "log:\n{log}"
    );
    assert_eq!(stored_values(&setup), vec![21.5]);
}

#[test]
fn mutual_tls() {
    let pki = Pki::new();
    let broker = pki.broker(true);
    let setup = tls_setup(&broker, &pki.ca, pki.client());
    run_and_store_one(&broker, &setup, "21.5");
    assert_eq!(stored_values(&setup), vec![21.5]);
}

#[test]
fn wrong_ca_is_a_clear_error_and_nothing_is_lost() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let setup = tls_setup(&broker, &pki.ca, None);

    // Connect once with the right CA: the broker now holds a persistent
    // session with vigil's subscription.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    assert!(vigil.terminate().success());

    // The wrong CA: no connection, a clear error, and vigil keeps retrying.
    switch_ca(&setup, &pki.ca, &pki.other_ca);
    let vigil = start_failing(&setup, UNKNOWN_ISSUER);
    // Published while vigil cannot connect: the broker queues it in the session.
    publish_reading(&broker, "21.5");
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(vigil.pid()));
    let log = vigil.log();
    assert!(!log.contains("batch committed"), "log:\n{log}");
    assert!(vigil.terminate().success(), "log:\n{log}");
    assert!(stored_values(&setup).is_empty());

    // Fixed: the queued reading arrives.
    switch_ca(&setup, &pki.other_ca, &pki.ca);
    let before = vigil_log_len(&setup);
    let vigil = VigilProcess::start(&setup);
    wait_until("the queued reading is committed", || {
        vigil.log()[before..].contains("batch committed")
    });
    let log = vigil.log()[before..].to_string();
    assert!(
        log.contains("session_present=true"),
        "the session was not resumed; log:\n{log}"
    );
    assert!(vigil.terminate().success(), "log:\n{log}");
    assert_eq!(stored_values(&setup), vec![21.5]);
}

fn vigil_log_len(setup: &Setup) -> usize {
    fs::metadata(setup.log_path())
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

#[test]
fn missing_client_certificate_is_a_clear_error() {
    let pki = Pki::new();
    let broker = pki.broker(true);
    let setup = tls_setup(&broker, &pki.ca, None);
    let vigil = start_failing(&setup, "CertificateRequired");
    assert!(vigil.terminate().success());
    assert!(stored_values(&setup).is_empty());
}

#[test]
fn check_config_names_a_ca_file_that_is_not_pem() {
    let pki = Pki::new();
    let broker = pki.broker(false);
    let setup = tls_setup(&broker, &pki.ca, None);
    let bad_ca = setup.dir.path().join("not-a-ca.pem");
    fs::write(&bad_ca, "this is not a certificate\n").unwrap();
    switch_ca(&setup, &pki.ca, &bad_ca);

    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check-config accepted a CA file that is not PEM:\n{stderr}"
    );
    assert!(
        stderr.contains(&bad_ca.display().to_string()),
        "the error does not name the file:\n{stderr}"
    );
    assert!(
        stderr.contains("broker.tls"),
        "the error does not name the table:\n{stderr}"
    );

    // A PEM block that does not decode is refused too, also naming the file.
    fs::write(
        &bad_ca,
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check-config accepted a broken PEM CA file:\n{stderr}"
    );
    assert!(
        stderr.contains(&bad_ca.display().to_string()),
        "the error does not name the file:\n{stderr}"
    );

    // And `run` refuses to start with it.
    let out = vigil_cmd()
        .args(["run", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "run started with a broken CA file:\n{stderr}"
    );
    assert!(stderr.contains(&bad_ca.display().to_string()), "{stderr}");
}
