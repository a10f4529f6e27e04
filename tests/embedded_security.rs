//! Who may use the embedded broker: clients with a password from the users
//! file (when there is one), TLS clients on a TLS listener; and vigil's own
//! connection to it, which no other client can take over. Also the checks
//! of `check-config` around credentials.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use vigil::config::TlsFiles;

use crate::support::pki::Pki;
use crate::support::{
    free_port, num, publish_with, scrape, series, stats, vigil_cmd, wait_until,
    wait_until_commits_settle, Msg, Options, Setup, VigilProcess, PATIENCE,
};

/// Event time of the first reading (a whole minute).
const T0: i64 = 1_760_000_000_000;

fn readings(device: &str, n: usize) -> Vec<Msg> {
    (0..n)
        .map(|i| {
            Msg::new(
                &format!("plant/l1/{device}/temperature"),
                format!("{{\"value\": 40.0, \"ts\": {}}}", T0 + i as i64 * 1000),
            )
        })
        .collect()
}

/// A setup with the embedded broker on 127.0.0.1:`port` and `extra` lines
/// in its table; vigil's `[broker]` table points at it.
fn setup(port: u16, extra: &str) -> Setup {
    let mut o = Options::new(port);
    o.extra_tables =
        format!("[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{extra}\n");
    Setup::new(&o)
}

/// A line of a users file, made by `vigil hash-password` from the
/// password on its standard input.
fn user_line(name: &str, password: &str) -> String {
    let mut child = vigil_cmd()
        .args(["hash-password", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string();
    assert!(
        line.starts_with(&format!("{name}:")) && !line.contains(password),
        "{line}"
    );
    line
}

/// A test client: its id, credentials and TLS files.
#[derive(Clone, Default)]
struct Client {
    id: String,
    login: Option<(String, String)>,
    tls: Option<TlsFiles>,
}

impl Client {
    fn new(id: &str) -> Client {
        Client {
            id: id.into(),
            ..Client::default()
        }
    }

    fn login(mut self, user: &str, password: &str) -> Client {
        self.login = Some((user.into(), password.into()));
        self
    }

    fn tls(mut self, ca: &Path, cert: Option<(&Path, &Path)>) -> Client {
        self.tls = Some(TlsFiles {
            ca_file: ca.to_path_buf(),
            client: cert.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        });
        self
    }

    fn configure(&self, opts: &mut MqttOptions) {
        if let Some((user, password)) = &self.login {
            opts.set_credentials(user.clone(), password.clone());
        }
        if let Some(files) = &self.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(files),
            )));
        }
    }

    fn options(&self, port: u16) -> MqttOptions {
        let mut opts = MqttOptions::new(self.id.clone(), "127.0.0.1", port);
        opts.set_keep_alive(std::time::Duration::from_secs(5));
        self.configure(&mut opts);
        opts
    }

    /// One connection attempt: Ok once the broker accepts it (CONNACK),
    /// the error that ended it otherwise. Disconnects cleanly.
    fn try_connect(&self, port: u16) -> Result<(), String> {
        let opts = self.options(port);
        runtime().block_on(async move {
            let (client, mut eventloop) = AsyncClient::new(opts, 10);
            loop {
                match tokio::time::timeout(PATIENCE, eventloop.poll())
                    .await
                    .expect("no answer from the broker")
                {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            leave(&client, &mut eventloop).await;
            Ok(())
        })
    }

    /// What a client that takes vigil's client id would do: open a
    /// persistent session under it, subscribe to everything vigil takes
    /// (twice over), and leave. A refusal or a lost connection ends it.
    fn hijack(&self, port: u16) -> Result<(), String> {
        let mut opts = self.options(port);
        opts.set_clean_session(false);
        runtime().block_on(async move {
            let (client, mut eventloop) = AsyncClient::new(opts, 10);
            for filter in ["plant/#", "plant/+/+/+", "#"] {
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let mut acks = 0;
            while acks < 3 {
                match tokio::time::timeout(PATIENCE, eventloop.poll())
                    .await
                    .expect("no answer from the broker")
                {
                    Ok(Event::Incoming(Packet::SubAck(_))) => acks += 1,
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            leave(&client, &mut eventloop).await;
            Ok(())
        })
    }

    fn publish(&self, port: u16, msgs: Vec<Msg>) {
        let me = self.clone();
        runtime().block_on(publish_with(port, msgs, move |o| me.configure(o)));
    }
}

/// A TLS client configuration that trusts `files.ca_file` and presents
/// the client certificate, if any.
fn tls_config(files: &TlsFiles) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&files.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    std::sync::Arc::new(config)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn leave(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    if client.try_disconnect().is_ok() {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
}

/// Publish `n` readings as `publisher`, wait until vigil has stored them and
/// nothing more arrives; then every reading must be stored exactly once,
/// over vigil's first connection to its broker.
fn assert_each_stored_once(vigil: VigilProcess, setup: &Setup, port: u16, publisher: &Client) {
    let n = 50;
    publisher.publish(port, readings("pump-1", n));
    let addr = vigil.http_addr();
    wait_until("every reading stored", || {
        series(&scrape(addr), "vigil_readings_stored_total") >= n as f64
    });
    wait_until_commits_settle(&vigil);
    let m = scrape(addr);
    assert_eq!(
        series(&m, "vigil_broker_reconnects_total{broker=\"local\"}"),
        0.0,
        "vigil's connection to its own broker was broken; log:\n{}",
        vigil.log()
    );
    assert_eq!(series(&m, "vigil_readings_stored_total"), n as f64);
    assert!(vigil.terminate().success());
    assert_eq!(num(&stats(setup), "readings"), n as u64);
}

#[test]
fn a_client_presenting_vigils_client_id_neither_disconnects_vigil_nor_subscribes_for_it() {
    let port = free_port();
    let setup = setup(port, "");
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    // The id vigil is configured with (and presented to its broker before).
    let id = setup.load().broker.client_id;
    for _ in 0..3 {
        let _ = Client::new(&id).hijack(port);
    }
    assert_each_stored_once(vigil, &setup, port, &Client::new("sensor"));
}

#[test]
fn with_a_users_file_the_embedded_broker_takes_only_clients_with_the_right_password() {
    let port = free_port();
    let setup = setup(port, "users_file = \"broker.users\"");
    let users = format!(
        "# sensors of line 1\n{}\n\n{}\n",
        user_line("sensor-1", "correct horse"),
        user_line("sensor-2", "battery staple")
    );
    std::fs::write(setup.dir.path().join("broker.users"), users).unwrap();
    let vigil = VigilProcess::start(&setup);
    // vigil's own connection is not in the users file, and is let in.
    vigil.wait_for_log("subscribed", 1);

    let anonymous = Client::new("no-login");
    let wrong = Client::new("wrong").login("sensor-1", "battery staple");
    let unknown = Client::new("unknown").login("sensor-3", "correct horse");
    for refused in [&anonymous, &wrong, &unknown] {
        assert!(
            refused.try_connect(port).is_err(),
            "{} was let in",
            refused.id
        );
    }
    let sensor = Client::new("sensor").login("sensor-1", "correct horse");
    sensor.try_connect(port).unwrap();
    // A client with a valid password cannot take vigil's id either.
    let id = setup.load().broker.client_id;
    for _ in 0..3 {
        let _ = Client::new(&id)
            .login("sensor-2", "battery staple")
            .hijack(port);
    }
    assert_each_stored_once(vigil, &setup, port, &sensor);
}

#[test]
fn the_tls_listener_takes_tls_clients_and_refuses_plain_ones() {
    let pki = Pki::new();
    let port = free_port();
    let s = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let setup = setup(
        port,
        &format!(
            "[embedded_broker.tls]\ncert_file = {}\nkey_file = {}\n",
            s(&pki.server_cert),
            s(&pki.server_key)
        ),
    );
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);

    let plain = Client::new("plain");
    assert!(
        plain.try_connect(port).is_err(),
        "a plain client was let in"
    );
    let sensor = Client::new("sensor").tls(&pki.ca, None);
    sensor.try_connect(port).unwrap();
    assert_each_stored_once(vigil, &setup, port, &sensor);
}

#[test]
fn with_a_ca_file_the_tls_listener_requires_a_client_certificate_signed_by_it() {
    let pki = Pki::new();
    let port = free_port();
    let s = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let setup = setup(
        port,
        &format!(
            "[embedded_broker.tls]\ncert_file = {}\nkey_file = {}\nca_file = {}\n",
            s(&pki.server_cert),
            s(&pki.server_key),
            s(&pki.ca)
        ),
    );
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);

    let without = Client::new("no-cert").tls(&pki.ca, None);
    let (stranger_cert, stranger_key) = (pki.path("stranger.pem"), pki.path("stranger.key"));
    let stranger = Client::new("stranger").tls(&pki.ca, Some((&stranger_cert, &stranger_key)));
    for refused in [&without, &stranger] {
        assert!(
            refused.try_connect(port).is_err(),
            "{} was let in",
            refused.id
        );
    }
    let sensor = Client::new("sensor").tls(&pki.ca, pki.client());
    sensor.try_connect(port).unwrap();
    assert_each_stored_once(vigil, &setup, port, &sensor);
}

fn check_config(setup: &Setup) -> (Option<i32>, String) {
    let out = vigil_cmd()
        .args(["check-config", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn line_of(setup: &Setup, needle: &str) -> usize {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
}

#[test]
fn check_config_warns_when_the_embedded_broker_listens_beyond_loopback_without_passwords() {
    let mut o = Options::new(1883);
    o.extra_tables = "[embedded_broker]\nenabled = true\nlisten = \"0.0.0.0:1883\"\n".into();
    let open = Setup::new(&o);
    let (code, stderr) = check_config(&open);
    assert_eq!(code, Some(0), "{stderr}");
    let expected = format!(
        "{}:{}: warning: embedded_broker.listen: ",
        open.config.display(),
        line_of(&open, "listen = \"0.0.0.0")
    );
    assert!(
        stderr.contains(&expected) && stderr.contains("users_file"),
        "missing {expected:?} in:\n{stderr}"
    );

    // On loopback, or with passwords: no warning.
    o.extra_tables = "[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:1883\"\n".into();
    let (code, stderr) = check_config(&Setup::new(&o));
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    o.extra_tables = "[embedded_broker]\nenabled = true\nlisten = \"0.0.0.0:1883\"\nusers_file = \"broker.users\"\n".into();
    let with_users = Setup::new(&o);
    std::fs::write(
        with_users.dir.path().join("broker.users"),
        user_line("sensor-1", "correct horse") + "\n",
    )
    .unwrap();
    let (code, stderr) = check_config(&with_users);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
}

#[test]
fn credentials_over_plain_tcp_are_refused_with_file_and_line_unless_allowed() {
    let mut o = Options::new(1883);
    o.broker_extra = "username = \"vigil\"\npassword = \"s3cret\"".into();
    o.extra_tables =
        "[upstream]\nhost = \"mqtt.plant.example\"\nusername = \"gw\"\npassword = \"s3cret\"\n"
            .into();
    let setup = Setup::new(&o);
    let (code, stderr) = check_config(&setup);
    assert_eq!(code, Some(1), "{stderr}");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("username"))
        .map(|(i, _)| i + 1)
        .collect();
    for (section, line) in [("broker", lines[0]), ("upstream", lines[1])] {
        let expected = format!("{}:{line}: {section}.username: ", setup.config.display());
        assert!(
            stderr.contains(&expected)
                && stderr.contains(&format!("{section}.allow_plaintext_credentials = true")),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("2 error(s) found"), "{stderr}");

    o.broker_extra
        .push_str("\nallow_plaintext_credentials = true");
    o.extra_tables
        .push_str("allow_plaintext_credentials = true\n");
    let (code, stderr) = check_config(&Setup::new(&o));
    assert_eq!(code, Some(0), "{stderr}");
}
