//! `vigil demo` as a newcomer runs it: no Mosquitto, no configuration. The
//! demo's own report is checked against what its summary claims: every
//! injected fault detected by an alert on the right stream, no alert on a
//! healthy stream, alerts raised while the uplink was cut delivered after
//! it came back, every delivered message received once, and nothing left
//! in the temporary directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{vigil_cmd, PATIENCE};

fn demo(tmp: &std::path::Path) -> Command {
    let mut cmd = vigil_cmd();
    // Its temporary directory goes under this one, to be checked afterwards.
    cmd.arg("demo").env("TMPDIR", tmp).env_remove("VIGIL_LOG");
    cmd
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_demo_detects_every_fault_and_delivers_through_the_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let out = demo(tmp.path())
        .args(["--duration", "60s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");

    // Six faults, each matched to an alert on its device.
    let summary = &stdout[stdout.find("\nSummary").expect("a summary")..];
    assert!(summary.contains("6 of 6 faults detected;"), "{summary}");
    // The plant clock ends at the present, so the daily temperature cycle
    // and the pumps' load are at a different phase in every run; the demo's
    // device files gave no false alarm in any run tried, and one is allowed
    // here so that the time of day cannot fail the build.
    let false_alarms = number_before(summary, " false alarm(s)");
    assert!(false_alarms <= 1, "{summary}");
    for (device, fault) in [
        ("pump-02", "garbage payloads"),
        ("pump-03", "overheating"),
        ("motor-01", "bearing defect"),
        ("pump-05", "bearing defect"),
        ("pump-07", "stuck sensor"),
        ("pump-09", "silent sensor"),
    ] {
        let line = summary
            .lines()
            .find(|l| l.contains(&format!(" {device} {fault}")))
            .unwrap_or_else(|| panic!("no line for {device} {fault} in {summary}"));
        assert!(line.contains(" → ") && !line.contains("missed"), "{line}");
    }
    // The live view showed the outage and at least one alert that waited for it.
    assert!(stdout.contains("✂ uplink cut"), "{stdout}");
    assert!(stdout.contains("↻ uplink restored"), "{stdout}");
    assert!(
        stdout.contains("held") && stdout.contains("in the outbox while the uplink was down"),
        "no alert was held by the outage:\n{stdout}"
    );
    assert!(
        summary.contains("every message vigil delivered arrived once"),
        "{summary}"
    );
    // Garbage went to dead letters, one for one.
    let sensors = summary
        .lines()
        .find(|l| l.contains("garbage payloads;"))
        .unwrap();
    let garbage: u64 = number_before(sensors, " garbage payloads");
    let dead: u64 = number_before(sensors, " dead letters");
    assert!(garbage > 0 && garbage == dead, "{sensors}");

    assert!(
        entries(tmp.path()).is_empty(),
        "left behind: {:?}",
        entries(tmp.path())
    );
}

#[test]
fn ctrl_c_stops_the_demo_cleanly_with_a_summary_and_nothing_left() {
    let tmp = tempfile::tempdir().unwrap();
    let child = demo(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once its directory exists it is running; give it a few seconds more.
    let start = Instant::now();
    while entries(tmp.path()).is_empty() {
        assert!(start.elapsed() < PATIENCE, "the demo did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {}\n{stdout}", out.status);
    assert!(stdout.contains("Summary (stopped early)"), "{stdout}");
    assert!(
        entries(tmp.path()).is_empty(),
        "left behind: {:?}",
        entries(tmp.path())
    );
}

/// The number just before `unit` in `line` ("… 255 dead letters" → 255).
fn number_before(line: &str, unit: &str) -> u64 {
    let head = &line[..line
        .find(unit)
        .unwrap_or_else(|| panic!("{unit} in {line}"))];
    let digits: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {unit} in {line}"))
}
