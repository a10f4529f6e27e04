//! The machine: CPU time of vigil, the helper threads and the brokers (from
//! /proc), the number of CPUs, the load average, and the scratch file system.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::brokers::Broker;
use crate::helpers::secs;

/// Clock ticks per second of /proc/*/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

/// User + system CPU seconds from a /proc stat file.
pub fn cpu_of(stat: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / TICKS
}

/// The calling thread's id, to read its CPU time from elsewhere.
pub fn thread_id() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

pub fn thread_cpu(tid: u64) -> f64 {
    cpu_of(&format!("/proc/self/task/{tid}/stat"))
}

/// CPU seconds used so far by: this process without the helper threads,
/// the helper threads (subscriber, publisher), and each broker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub vigil: f64,
    pub helpers: f64,
    pub upstream: f64,
    pub local: f64,
}

impl Cpu {
    pub fn now(helpers: &[u64], upstream: &Broker, local: Option<&Broker>) -> Cpu {
        let helpers: f64 = helpers.iter().map(|&t| thread_cpu(t)).sum();
        Cpu {
            vigil: cpu_of("/proc/self/stat") - helpers,
            helpers,
            upstream: upstream.cpu(),
            local: local.map_or(0.0, Broker::cpu),
        }
    }

    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            vigil: self.vigil - before.vigil,
            helpers: self.helpers - before.helpers,
            upstream: self.upstream - before.upstream,
            local: self.local - before.local,
        }
    }

    /// As percentages of one core over `wall`.
    pub fn describe(&self, wall: Duration, helpers: &str, local: bool) -> String {
        let pct = |s: f64| format!("{:.0} %", 100.0 * s / secs(wall));
        let mut s = format!(
            "vigil {}, {helpers} {}, upstream Mosquitto {}",
            pct(self.vigil),
            pct(self.helpers),
            pct(self.upstream)
        );
        if local {
            let _ = write!(s, ", local Mosquitto {}", pct(self.local));
        }
        let _ = write!(
            s,
            " (sum {} of the machine's {} %)",
            pct(self.vigil + self.helpers + self.upstream + self.local),
            100 * nproc()
        );
        s
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// File system type and device of the mount holding `path`.
pub fn file_system(path: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".into(), |(_, s)| s)
}
