//! Shared by the benchmarks (detect, forward, e2e): their command line,
//! deterministic noise, number formatting, the machine's CPU model, and the
//! Markdown report they print.

use std::fmt::Write as _;
use std::time::Instant;

/// xorshift64*: deterministic noise without the rand crate.
pub struct Noise(pub u64);

impl Noise {
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 1234567.8 as "1,234,568".
pub fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// The CPU's model name from /proc/cpuinfo (x86 and ARM spell it apart).
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    ["model name", "Hardware", "cpu model", "Model"]
        .iter()
        .find_map(|key| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == *key).then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The command line: `--quick` and the sections to run (all when none is
/// named).
pub struct Args {
    pub quick: bool,
    sections: Vec<String>,
}

impl Args {
    /// The arguments of benchmark `name`, whose sections are `known`; exits
    /// with its usage on any other argument.
    pub fn parse(name: &str, known: &[&str]) -> Args {
        let mut args = Args {
            quick: false,
            sections: Vec::new(),
        };
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--quick" => args.quick = true,
                s if known.contains(&s) => args.sections.push(arg),
                other => {
                    let usage: String = known.iter().map(|s| format!(" [{s}]")).collect();
                    eprintln!("usage: {name} [--quick]{usage}\nunknown argument {other:?}");
                    std::process::exit(2);
                }
            }
        }
        args
    }

    /// Whether section `s` is to run.
    pub fn run(&self, s: &str) -> bool {
        self.sections.is_empty() || self.named(s)
    }

    /// Whether section `s` was asked for by name (for sections that do not
    /// run by default).
    #[allow(dead_code)]
    pub fn named(&self, s: &str) -> bool {
        self.sections.iter().any(|x| x == s)
    }
}

/// One row of the table.
struct Row {
    what: String,
    setup: String,
    result: String,
    target: String,
    /// None when there is no target.
    met: Option<bool>,
}

/// The rows and detail lines of a benchmark's Markdown report, echoed to
/// stderr as they come (progress) and printed on stdout at the end.
pub struct Report {
    /// Prefix of the progress lines, e.g. "bench-detect".
    tag: &'static str,
    rows: Vec<Row>,
    details: Vec<String>,
    quick: bool,
    /// What `--quick` divides the work by, and that share in words.
    quick_divisor: u64,
    quick_share: &'static str,
}

impl Report {
    /// With `--quick` (`quick`), work is divided by `quick_divisor`, which
    /// `quick_share` says in words ("a tenth").
    pub fn new(
        tag: &'static str,
        quick: bool,
        quick_divisor: u64,
        quick_share: &'static str,
    ) -> Report {
        Report {
            tag,
            rows: Vec::new(),
            details: Vec::new(),
            quick,
            quick_divisor,
            quick_share,
        }
    }

    pub fn row(
        &mut self,
        what: &str,
        setup: String,
        result: String,
        target: &str,
        met: Option<bool>,
    ) {
        let row = Row {
            what: what.into(),
            setup,
            result,
            target: target.into(),
            met,
        };
        eprintln!(
            "[{}] {}: {} ({})",
            self.tag, row.what, row.result, row.setup
        );
        self.rows.push(row);
    }

    pub fn detail(&mut self, line: String) {
        eprintln!("[{}]   {line}", self.tag);
        self.details.push(line);
    }

    /// Work scaled down by `--quick`.
    pub fn scale(&self, n: u64) -> u64 {
        if self.quick {
            (n / self.quick_divisor).max(1)
        } else {
            n
        }
    }

    /// The report: a `## title`, the `intro` paragraph (the machine and the
    /// build; a note is added under `--quick`), the table, the details, and
    /// the time since `started`.
    pub fn markdown(&self, title: &str, intro: &str, started: Instant) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## {title}\n");
        let _ = write!(s, "{intro}");
        if self.quick {
            let _ = write!(s, " · --quick ({} of the work)", self.quick_share);
        }
        let _ = writeln!(s, "\n");
        // A benchmark that only reports (no row has a target) gets no
        // target columns.
        let targets = self
            .rows
            .iter()
            .any(|r| !r.target.is_empty() || r.met.is_some());
        if targets {
            let _ = writeln!(s, "| measurement | setup | result | target | |");
            let _ = writeln!(s, "|---|---|---|---|---|");
        } else {
            let _ = writeln!(s, "| measurement | setup | result |");
            let _ = writeln!(s, "|---|---|---|");
        }
        for r in &self.rows {
            let verdict = match r.met {
                Some(true) => "met",
                Some(false) => "**MISSED**",
                None => "",
            };
            if targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r.what, r.setup, r.result, r.target, verdict
                );
            } else {
                let _ = writeln!(s, "| {} | {} | {} |", r.what, r.setup, r.result);
            }
        }
        if !self.details.is_empty() {
            let _ = writeln!(s, "\nDetails:\n");
            for d in &self.details {
                let _ = writeln!(s, "- {d}");
            }
        }
        let _ = writeln!(s, "\n(ran for {:.0} s)", started.elapsed().as_secs_f64());
        s
    }
}

/// "DEBUG build (numbers meaningless)" or "optimised build".
pub fn build_kind() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG build (numbers meaningless)"
    } else {
        "optimised build"
    }
}

/// A device file for latency measurements: one window per reading and a
/// static limit on the mean, alerts raised and cleared by a single window,
/// no learned baseline. Every reading is an aggregate, every reading above
/// the limit an alert. (The detection benchmark has no use for it.)
#[allow(dead_code)]
pub const ONE_READING_DEVICE: &str = r#"
match = "*"
description = "Benchmark sensor: one window per reading, a static limit"

[alerts]
raise_after = 1
clear_after = 1

[metrics."*"]
unit = "degC"
window_readings = 1

[metrics."*".limits.mean]
warning_above = 80.0
alarm_above = 95.0

[metrics."*".baseline]
enabled = false
"#;
