//! The machine the numbers were measured on, for the report's header.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::{build_kind, cpu_model};
use crate::machine::{file_system, load_average, nproc};

pub struct Machine {
    cpu: String,
    cores: usize,
    ram_gib: f64,
    kernel: String,
    /// Of the scratch directory, where the stores live (what fsync hits).
    pub file_system: String,
    mosquitto: String,
    commit: String,
    load_before: String,
}

impl Machine {
    pub fn now(mosquitto: &Path, scratch: &Path) -> Machine {
        Machine {
            cpu: cpu_model(),
            cores: nproc(),
            ram_gib: mem_total_kib() as f64 / (1u64 << 20) as f64,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".into(), |s| s.trim().to_string()),
            file_system: file_system(scratch),
            mosquitto: mosquitto_version(mosquitto),
            commit: commit(),
            load_before: load_average(),
        }
    }

    /// One line: CPU, cores, RAM, kernel, file system, Mosquitto, vigil's
    /// commit, the build and the load average before and now.
    pub fn describe(&self) -> String {
        let settings = crate::agent::store_extra();
        let settings = if settings.is_empty() {
            String::new()
        } else {
            format!(" · [store] {}", settings.replace('\n', "; "))
        };
        format!(
            "Machine: {} · {} cores · {:.1} GiB RAM · Linux {} · store on {} · Mosquitto {} · vigil {} · {} · load average {} at the start, {} at the end{}",
            self.cpu,
            self.cores,
            self.ram_gib,
            self.kernel,
            self.file_system,
            self.mosquitto,
            self.commit,
            build_kind(),
            self.load_before,
            load_average(),
            settings,
        )
    }
}

fn mem_total_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// "2.0.11", from the first line of `mosquitto -h`.
fn mosquitto_version(mosquitto: &Path) -> String {
    Command::new(mosquitto)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().next()?.to_string();
            Some(line.rsplit(' ').next()?.to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// The commit of the tree the benchmark was built from (`git describe
/// --always --dirty`), or "?" outside a git checkout.
fn commit() -> String {
    Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// What the rest of the machine did during a measurement: the busy time of
/// all CPUs (/proc/stat) minus this process's and its children's (brokers,
/// vigil, mosquitto_sub; counted once they have been waited for).
pub struct Busy {
    machine: f64,
    own: f64,
    at: Instant,
}

/// Clock ticks per second of /proc (USER_HZ).
const TICKS: f64 = 100.0;

impl Busy {
    pub fn start() -> Busy {
        Busy {
            machine: machine_busy(),
            own: own_with_children(),
            at: Instant::now(),
        }
    }

    /// Cores' worth of CPU that other processes used since `start`.
    pub fn others(&self) -> f64 {
        let machine = machine_busy() - self.machine;
        let own = own_with_children() - self.own;
        ((machine - own) / self.at.elapsed().as_secs_f64()).max(0.0)
    }
}

/// CPU seconds all CPUs spent busy (user, nice, system, irq, softirq, steal).
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>()
        / TICKS
}

/// CPU seconds of this process and of the children it has waited for.
fn own_with_children() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    // utime, stime, cutime, cstime: fields 14 to 17 of stat(5).
    rest.split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum::<f64>()
        / TICKS
}

/// Bytes written so far to the block device that holds `path` (all
/// processes, the file system's journal included), from /proc/diskstats;
/// None when the device is not a plain block device listed there.
pub fn device_written(path: &Path) -> Option<u64> {
    let fs = file_system(path);
    let device = fs.rsplit_once(" on /dev/")?.1.to_string();
    let stats = std::fs::read_to_string("/proc/diskstats").ok()?;
    stats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Field 10 of a line is the sectors written, in 512-byte units.
        (f.get(2) == Some(&device.as_str()))
            .then(|| f.get(9)?.parse::<u64>().ok().map(|s| s * 512))
            .flatten()
    })
}
