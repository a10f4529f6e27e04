//! A disk that fills up under the store, and a store that cannot be opened.
//!
//! sled 0.34 keeps the first failed write as the error of every later one
//! until the store is opened again. vigil must then say it is not ready,
//! stop the watchdog pings and exit, so that it is started again (here the
//! test plays systemd); nothing it acknowledged may be missing afterwards,
//! nothing published while the disk was full may have been acknowledged,
//! and once there is space again every reading is stored (the broker
//! redelivers what vigil did not acknowledge).
//!
//! The store gets a small file system of its own (a tmpfs), which needs
//! root: without it the full-disk test says why and passes without running.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    free_port, http_get, publish_blocking, run_to_exit, scrape, series, vigil_cmd, wait_until,
    wait_until_commits_settle, Broker, Msg, Options, Setup, VigilProcess, PATIENCE,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// Mount a tmpfs with `options` (`size=8m`, `ro`) at `dir`.
    fn tmpfs(dir: &Path, options: &str) -> Mount {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test runs as root and needs to mount a file system for the store): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there does not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Write zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> usize {
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => panic!("writing {} stopped without an error", path.display()),
            Ok(n) => written += n,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("cannot fill {}: {e}", path.display()),
        }
    }
}

/// Reading `v`: its value, and its device, so that the broker's log (which
/// shows topics, not payloads) tells which reading a packet carried.
fn reading(v: u64) -> Msg {
    Msg::new(
        &format!("plant/l1/d{v}/temperature"),
        format!("{{\"value\": {v}}}"),
    )
}

fn publish(port: u16, values: std::ops::Range<u64>) {
    publish_blocking(port, values.map(reading).collect());
}

/// The readings `client` acknowledged, from a broker log that shows every
/// packet: a PUBACK carries the packet id of the PUBLISH last sent to
/// `client` with that id.
fn acknowledged(log: &str, client: &str) -> BTreeSet<u64> {
    let sending = format!("Sending PUBLISH to {client} (");
    let received = format!("Received PUBACK from {client} (Mid: ");
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut acked = BTreeSet::new();
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once(&sending) {
            // d0, q1, r0, m7, 'plant/l1/d42/temperature', ... (13 bytes))
            let fields: Vec<&str> = rest.splitn(6, ", ").collect();
            let mid: u16 = fields[3]
                .strip_prefix('m')
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("no packet id in {line:?}"));
            let value: u64 = fields[4]
                .trim_matches('\'')
                .strip_prefix("plant/l1/d")
                .and_then(|t| t.strip_suffix("/temperature"))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("not a test reading: {line:?}"));
            in_flight.insert(mid, value);
        } else if let Some((_, rest)) = line.split_once(&received) {
            let mid: u16 = rest
                .split(',')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("no packet id in {line:?}"));
            let value = in_flight
                .remove(&mid)
                .unwrap_or_else(|| panic!("a PUBACK for no PUBLISH: {line:?}"));
            acked.insert(value);
        }
    }
    acked
}

/// `/readyz` of the agent on `port`, or None while nothing listens there.
fn readyz(port: u16) -> Option<(u16, String)> {
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(http_get(port, "/readyz"))
}

/// What a process says to systemd on a notify socket, read as systemd
/// does: all along (a datagram socket nobody reads fills up, and then the
/// sender blocks).
struct NotifySocket {
    said: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let said = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (said.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    s.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket { said, stop }
    }

    fn said(&self) -> Vec<String> {
        self.said.lock().unwrap().clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn status_text(setup: &Setup) -> String {
    let out = vigil_cmd()
        .args(["status", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vigil status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_full_disk_makes_vigil_unready_and_restart_and_loses_nothing_acknowledged() {
    if !is_root() {
        println!(
            "skipped: the store needs a small file system of its own, and mounting one needs root"
        );
        return;
    }
    let broker = Broker::start_logging_packets();
    let http_port = free_port();
    let mut o = Options::new(broker.port);
    // A fixed port: `vigil status` asks the running agent there, and the
    // restarted agent answers on the same one.
    o.http_listen = format!("127.0.0.1:{http_port}");
    let setup = Setup::new(&o);
    let client = format!("vigil-test-{}", broker.port);
    let store_fs = Mount::tmpfs(&setup.dir.path().join("store"), "size=8m");
    let filler = store_fs.dir.join("filler");
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));

    // As systemd starts it (Type=notify, WatchdogSec=).
    let socket = setup.dir.path().join("notify.sock");
    let systemd = NotifySocket::bind(&socket);
    let mut vigil = VigilProcess::start_with_env(
        &setup,
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
        Some("WATCHDOG_PID"),
    );
    vigil.wait_for_log("subscribed", 1);

    // Stored while there is room.
    publish(broker.port, 0..100);
    wait_until("the first readings are stored", || {
        series(&scrape(metrics_addr), "vigil_readings_stored_total") == 100.0
    });

    // Something else fills the disk; vigil goes on receiving readings.
    let filled = fill(&filler);
    println!("filled the store's file system with {filled} bytes");
    let mut next = 100;
    let deadline = Instant::now() + PATIENCE;
    let reason = loop {
        publish(broker.port, next..next + 20);
        next += 20;
        let (code, body) = http_get(http_port, "/readyz");
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "vigil stayed ready with its disk full ({next} readings published); its log:\n{}",
            vigil.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let not_ready_from = next;
    println!(
        "not ready after {not_ready_from} readings: {}",
        reason.trim()
    );
    assert!(reason.contains("store"), "/readyz: {reason}");

    // The metrics, `vigil status` and the service status say so too.
    let s = scrape(metrics_addr);
    assert_eq!(series(&s, "vigil_ready"), 0.0);
    assert!(series(&s, "vigil_store_write_errors_total") >= 3.0, "{s:?}");
    assert!(series(&s, "vigil_store_write_failures_in_a_row") >= 3.0);
    let status = status_text(&setup);
    assert!(
        status.contains("NOT READY") && status.contains("the store"),
        "{status}"
    );
    assert!(status.contains("WRITES FAILING"), "{status}");

    // Published while the disk is full: never acknowledged by this process.
    publish(broker.port, next..next + 20);
    next += 20;

    // vigil gives up on the store and exits with an error, for systemd to
    // start it again (Restart=on-failure) with the store opened anew.
    let exit = vigil.wait_for_exit();
    assert!(!exit.success(), "vigil exited with {exit}");
    let log = vigil.log();
    assert!(
        log.contains("watchdog pings stopped") && log.contains("the store"),
        "the watchdog pings did not stop for the store:\n{log}"
    );
    assert!(
        log.contains("ERROR") && log.contains("vigil exits so that it is started again"),
        "no ERROR saying why vigil exits:\n{log}"
    );
    let said = systemd.said();
    assert!(
        said.iter()
            .any(|m| m.contains("STATUS=not ready") && m.contains("the store")),
        "systemd was not told why vigil is not ready: {said:?}"
    );

    // systemd starts it again while the disk is still full: it fails again.
    let mut vigil = VigilProcess::start(&setup);
    let exit = vigil.wait_for_exit();
    assert!(!exit.success(), "vigil exited with {exit}");

    let acked_while_full = acknowledged(&broker.log(), &client);
    assert!(
        (0..100).all(|v| acked_while_full.contains(&v)),
        "the readings stored before the disk filled were not all acknowledged"
    );
    let wrongly: Vec<_> = acked_while_full.range(not_ready_from..).collect();
    assert!(
        wrongly.is_empty(),
        "readings published while the disk was full were acknowledged: {wrongly:?}"
    );

    // Space comes back; the next start recovers by itself.
    fs::remove_file(&filler).unwrap();
    let vigil = VigilProcess::start(&setup);
    wait_until("vigil is ready again", || {
        readyz(http_port).is_some_and(|(code, _)| code == 200)
    });
    wait_until_commits_settle(&vigil);
    let exit = vigil.terminate();
    assert!(
        exit.success(),
        "vigil exited with {exit}:\n{}",
        vigil_log(&setup)
    );

    let stored: BTreeSet<u64> = setup
        .inspect("readings", 100 * next as usize)
        .iter()
        .map(|r| r["value"].as_f64().expect("a scalar reading") as u64)
        .collect();
    let lost: Vec<_> = acked_while_full.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let missing: Vec<_> = (0..next).filter(|v| !stored.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "published but never stored (the broker should have redelivered them): {missing:?}"
    );
    drop(store_fs);
}

fn vigil_log(setup: &Setup) -> String {
    fs::read_to_string(setup.log_path()).unwrap_or_default()
}

#[test]
fn a_store_that_cannot_be_opened_stops_vigil_with_a_clear_error() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let store = setup.dir.path().join("store");
    // Root may write anywhere: a read-only file system stops it. Others
    // are stopped by a directory they may not write to.
    let (_mount, expected) = if is_root() {
        (
            Some(Mount::tmpfs(&store, "ro,size=1m")),
            "Read-only file system",
        )
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir(&store).unwrap();
        fs::set_permissions(&store, fs::Permissions::from_mode(0o555)).unwrap();
        (None, "Permission denied")
    };
    let (exit, stderr) = run_to_exit(&setup, "vigil kept running with a store it cannot open");
    assert!(!exit.success(), "vigil exited with {exit}:\n{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("vigil: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(
        error.contains(&format!("cannot open the store at {}", store.display())),
        "the error should name the store's path: {error}"
    );
    assert_eq!(
        error.matches(expected).count(),
        1,
        "the cause, once: {error}"
    );
}
