//! `/metrics` in the Prometheus text exposition format (version 0.0.4), from
//! the stages' live figures, the store's persisted counters and the
//! process's own accounting in `/proc/self`.
//!
//! Counters the store keeps (readings stored, rejections, deliveries,
//! evictions) survive restarts; the others count from the start of the
//! process, which Prometheus's `rate()` and `increase()` handle as resets.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::model::{wall_ms, Reason, Severity};
use crate::store::{Lane, StoreError};

use super::health::{STORE_FAILING_EXIT_AFTER, STORE_FAILURES_NOT_READY};
use super::Observed;

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Writes metric families: one `# HELP` and `# TYPE` line each, then its samples.
struct Text {
    out: String,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(Labels<'_>, f64)]) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", number(*value));
        }
    }

    /// A family with one label.
    fn by<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, f64)>,
    ) {
        let samples: Vec<([(&str, &str); 1], f64)> = samples
            .into_iter()
            .map(|(v, x)| ([(label, v)], x))
            .collect();
        let samples: Vec<(Labels<'_>, f64)> = samples.iter().map(|(l, x)| (&l[..], *x)).collect();
        self.family(name, kind, help, &samples);
    }

    fn one(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help, &[(&[], value)]);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn load(a: &AtomicU64) -> f64 {
    a.load(Ordering::Relaxed) as f64
}

fn flag(a: &AtomicBool) -> f64 {
    if a.load(Ordering::Relaxed) {
        1.0
    } else {
        0.0
    }
}

const SEVERITIES: [Severity; 2] = [Severity::Warning, Severity::Alarm];

/// The process's CPU time, resident memory, disk writes and open files, from
/// `/proc/self` (Linux). Missing files leave their metrics out.
#[derive(Debug, Default)]
struct Process {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    disk_written_bytes: Option<f64>,
    open_fds: Option<f64>,
}

fn process() -> Process {
    let mut p = Process::default();
    // Clock ticks are 100 per second on every Linux architecture vigil targets.
    const TICKS: f64 = 100.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
            if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                if let (Ok(u), Ok(s)) = (u.parse::<f64>(), s.parse::<f64>()) {
                    p.cpu_seconds = Some((u + s) / TICKS);
                }
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        p.resident_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb * 1024.0);
    }
    if let Ok(io) = std::fs::read_to_string("/proc/self/io") {
        p.disk_written_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok());
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        p.open_fds = Some(dir.count() as f64);
    }
    p
}

/// Render every metric. Reads the store (blocking: call off the runtime).
pub fn render(o: &Observed) -> Result<String, StoreError> {
    let stats = o.store.stats()?;
    let now = wall_ms() as f64 / 1000.0;
    let mut oldest = [0.0; 2];
    for lane in Lane::ALL {
        if let Some(item) = o.store.outbox_oldest(lane)? {
            oldest[lane as usize] = (now - item.entry.end_ms() as f64 / 1000.0).max(0.0);
        }
    }
    let c = &stats.counters;
    let p = process();
    let (i, d, f, h) = (&o.ingest, &o.detect, &o.forward, &o.health);
    let mut t = Text {
        out: String::with_capacity(8192),
    };
    use Kind::{Counter, Gauge};

    let version = env!("CARGO_PKG_VERSION");
    t.family(
        "vigil_build_info",
        Gauge,
        "Always 1; the version of vigil and the gateway it runs on.",
        &[(&[("version", version), ("gateway", &o.gateway_id)], 1.0)],
    );
    t.one(
        "vigil_ready",
        Gauge,
        "1 when the store is open and takes writes and every stage runs (as /readyz).",
        if h.verdict().is_ok() { 1.0 } else { 0.0 },
    );
    t.by(
        "vigil_stage_running",
        Gauge,
        "1 while the stage's task runs.",
        "stage",
        h.stages()
            .map(|(s, up)| (s.as_str(), if up { 1.0 } else { 0.0 })),
    );
    t.one(
        "process_start_time_seconds",
        Gauge,
        "Start time of the process since the Unix epoch, in seconds.",
        (now - h.uptime().as_secs_f64()).floor(),
    );

    // Ingest.
    t.one(
        "vigil_mqtt_messages_received_total",
        Counter,
        "MQTT messages received from the local broker since start.",
        load(&i.messages),
    );
    t.one(
        "vigil_readings_stored_total",
        Counter,
        "Readings committed (fsynced) to the readings log.",
        c.readings_stored as f64,
    );
    t.by(
        "vigil_messages_rejected_total",
        Counter,
        "Messages dead-lettered, by reason.",
        "reason",
        Reason::ALL
            .iter()
            .map(|r| (r.as_str(), c.rejected.get(r).copied().unwrap_or(0) as f64)),
    );
    t.one(
        "vigil_mqtt_packets_too_large_total",
        Counter,
        "Packets from the local broker refused unread for their size (over broker.max_payload_bytes plus topic and header), since start; each broke the connection.",
        load(&i.oversized_packets),
    );
    t.one(
        "vigil_readings_late_total",
        Counter,
        "Readings that arrived after their window closed (counted, not used).",
        load(&d.late),
    );
    t.one(
        "vigil_readings_skewed_total",
        Counter,
        "Readings in the log stamped further ahead of the gateway's clock than detect.max_future_skew_ms (counted, not used).",
        load(&d.skewed),
    );
    t.one(
        "vigil_stream_clock_resets_total",
        Counter,
        "Times a stream's event time was found ahead of the gateway's clock and its windows started over.",
        load(&d.clock_resets),
    );
    t.one(
        "vigil_readings_duplicate_total",
        Counter,
        "Redelivered copies of readings already taken.",
        load(&d.duplicates),
    );
    t.one(
        "vigil_dead_letters",
        Gauge,
        "Dead letters kept in the store.",
        stats.dead_letters as f64,
    );
    t.one(
        "vigil_dead_letters_dropped_total",
        Counter,
        "Dead letters dropped (oldest first) to stay within their bounds.",
        c.dead_letters_dropped as f64,
    );
    t.one(
        "vigil_ingest_held_bytes",
        Gauge,
        "Decoded bytes held in memory between the broker and the store.",
        load(&i.held_bytes),
    );

    // Store.
    t.one(
        "vigil_store_budget_bytes",
        Gauge,
        "Disk budget: what the store's files may take.",
        stats.budget_bytes as f64,
    );
    t.one(
        "vigil_store_data_limit_bytes",
        Gauge,
        "What the store's data may take: the share of the budget that keeps its files within the budget.",
        stats.data_limit_bytes as f64,
    );
    t.by(
        "vigil_store_used_bytes",
        Gauge,
        "Bytes counted against the budget, by part.",
        "part",
        [
            ("readings", stats.readings_bytes as f64),
            ("outbox_alerts", stats.outbox_bytes[0] as f64),
            ("outbox_aggregates", stats.outbox_bytes[1] as f64),
            ("dead_letters", stats.dead_letter_bytes as f64),
            ("checkpoints", stats.checkpoint_bytes as f64),
        ],
    );
    t.one(
        "vigil_store_size_on_disk_bytes",
        Gauge,
        "Size of the store's files on disk (log, blobs, snapshots).",
        stats.size_on_disk as f64,
    );
    t.one(
        "vigil_store_full",
        Gauge,
        "1 while the budget is used up and ingest waits for room.",
        flag(&i.store_full),
    );
    t.one(
        "vigil_store_full_pauses_total",
        Counter,
        "Times ingest paused because the budget was used up, since start.",
        load(&i.full_pauses),
    );
    let writes = o.store.write_health();
    t.one(
        "vigil_store_write_errors_total",
        Counter,
        "Writes to the store that failed (a full disk, an I/O error), since start.",
        writes.errors as f64,
    );
    t.one(
        "vigil_store_write_failures_in_a_row",
        Gauge,
        &format!(
            "Store writes that failed since the last one that worked: not ready from {STORE_FAILURES_NOT_READY}; after {} s of them vigil exits to reopen the store.",
            STORE_FAILING_EXIT_AFTER.as_secs()
        ),
        writes.failing as f64,
    );
    t.one(
        "vigil_store_recoveries_total",
        Counter,
        "Times the store could not be used (damaged) and was moved aside for a fresh one; kept in the fresh store.",
        c.store_recoveries as f64,
    );
    if let Some(r) = &stats.recovery {
        t.family(
            "vigil_store_recovered_timestamp_seconds",
            Gauge,
            "When the store in use replaced one that was damaged, since the Unix epoch; moved_to is where the damaged one is.",
            &[(&[("moved_to", r.moved_to.as_str())], r.at_ms as f64 / 1000.0)],
        );
    }
    if let Some(bytes) = p.disk_written_bytes {
        t.one(
            "vigil_disk_written_bytes_total",
            Counter,
            "Bytes this process caused to be written to storage (flash wear), since start.",
            bytes,
        );
    }
    t.one(
        "vigil_readings_buffered",
        Gauge,
        "Readings in the readings log.",
        stats.readings as f64,
    );
    t.one(
        "vigil_detection_lag_readings",
        Gauge,
        "Readings stored but not yet seen by detection.",
        stats.next_seq.saturating_sub(stats.detection_cursor) as f64,
    );

    // Outbox and eviction.
    t.by(
        "vigil_outbox_entries",
        Gauge,
        "Entries waiting in the outbox, by lane.",
        "lane",
        [
            ("alerts", stats.outbox[0] as f64),
            ("aggregates", stats.outbox[1] as f64),
        ],
    );
    t.by(
        "vigil_outbox_oldest_age_seconds",
        Gauge,
        "Age (now minus event time) of the oldest entry in each lane; 0 when empty.",
        "lane",
        [("alerts", oldest[0]), ("aggregates", oldest[1])],
    );
    t.by(
        "vigil_delivered_total",
        Counter,
        "Outbox entries acknowledged by the upstream broker, by lane.",
        "lane",
        [
            ("alerts", c.delivered[0] as f64),
            ("aggregates", c.delivered[1] as f64),
        ],
    );
    t.one(
        "vigil_readings_trimmed_total",
        Counter,
        "Readings removed from the log after detection processed them.",
        c.readings_trimmed as f64,
    );
    t.one(
        "vigil_readings_skipped_total",
        Counter,
        "Readings removed before detection saw them, since start.",
        load(&d.readings_skipped),
    );
    t.one(
        "vigil_aggregates_merged_total",
        Counter,
        "Aggregates merged into coarser ones to make room.",
        c.aggregates_merged as f64,
    );
    t.one(
        "vigil_aggregate_merges_total",
        Counter,
        "Merged aggregates made to make room.",
        c.aggregate_merges as f64,
    );
    t.one(
        "vigil_aggregates_dropped_total",
        Counter,
        "Aggregates dropped to make room.",
        c.aggregates_dropped as f64,
    );
    t.one(
        "vigil_aggregate_windows_dropped_total",
        Counter,
        "Detection windows in the aggregates dropped to make room.",
        c.aggregate_windows_dropped as f64,
    );
    t.one(
        "vigil_alerts_dropped_total",
        Counter,
        "Alerts dropped because the alerts outbox was over its cap.",
        c.alerts_dropped as f64,
    );
    t.one(
        "vigil_outbox_unreadable_total",
        Counter,
        "Outbox entries removed because they could not be decoded.",
        c.outbox_unreadable as f64,
    );
    t.one(
        "vigil_readings_unreadable_total",
        Counter,
        "Readings in blocks of the log that could not be decoded (a damaged store): skipped by detection and removed.",
        c.readings_unreadable as f64,
    );

    // Detection.
    t.one(
        "vigil_streams",
        Gauge,
        "(device, metric) streams detection keeps in memory.",
        load(&d.streams),
    );
    t.one(
        "vigil_streams_idle",
        Gauge,
        "Streams put aside for being idle: their state is in the store until they speak again.",
        load(&d.idle_streams),
    );
    t.one(
        "vigil_streams_refused_total",
        Counter,
        "Readings of new streams stored but not detected: detect.max_streams in memory, or stream states at their share of the disk budget.",
        load(&d.streams_refused),
    );
    t.one(
        "vigil_streams_evicted_total",
        Counter,
        "Streams put aside for being idle.",
        load(&d.streams_evicted),
    );
    t.one(
        "vigil_streams_resumed_total",
        Counter,
        "Idle streams that spoke again and were taken back into memory.",
        load(&d.streams_resumed),
    );
    t.one(
        "vigil_streams_forgotten_total",
        Counter,
        "Idle streams forgotten, seen longest ago first, to keep stream states within a quarter of the disk budget.",
        load(&d.streams_forgotten),
    );
    t.one(
        "vigil_alert_storm",
        Gauge,
        "1 while alerts are raised faster than detect.alert_storm_per_minute.",
        load(&d.alert_storm),
    );
    t.one(
        "vigil_alert_storms_total",
        Counter,
        "Alert storms since start.",
        load(&d.alert_storms),
    );
    t.one(
        "vigil_windows_total",
        Counter,
        "Windows closed and evaluated.",
        load(&d.windows),
    );
    let by_severity = |a: &[AtomicU64; 2]| SEVERITIES.map(|s| (s.as_str(), load(&a[s as usize])));
    t.by(
        "vigil_alerts_raised_total",
        Counter,
        "Alerts raised since start, by severity.",
        "severity",
        by_severity(&d.raised_by_severity),
    );
    t.by(
        "vigil_alerts_cleared_total",
        Counter,
        "Alerts cleared since start, by the severity they reached.",
        "severity",
        by_severity(&d.cleared_by_severity),
    );
    t.by(
        "vigil_alerts_open",
        Gauge,
        "Alerts open now, by severity.",
        "severity",
        by_severity(&d.open_alerts),
    );
    t.one(
        "vigil_aggregates_total",
        Counter,
        "Per-window aggregates produced since start.",
        load(&d.aggregates),
    );

    // Connections.
    t.by(
        "vigil_broker_connected",
        Gauge,
        "1 while connected, by broker (local, upstream).",
        "broker",
        [
            ("local", flag(&i.connected)),
            ("upstream", flag(&f.connected)),
        ],
    );
    t.by(
        "vigil_broker_reconnects_total",
        Counter,
        "Connections after the first one, since start, by broker.",
        "broker",
        [
            ("local", load(&i.reconnects)),
            ("upstream", (load(&f.connects) - 1.0).max(0.0)),
        ],
    );
    t.by(
        "vigil_upstream_published_total",
        Counter,
        "Publishes handed to the upstream connection (resends included), by lane.",
        "lane",
        [
            ("alerts", load(&f.published[0])),
            ("aggregates", load(&f.published[1])),
        ],
    );
    t.by(
        "vigil_upstream_acked_total",
        Counter,
        "PUBACKs received from the upstream broker, by lane.",
        "lane",
        [
            ("alerts", load(&f.acked[0])),
            ("aggregates", load(&f.acked[1])),
        ],
    );
    t.one(
        "vigil_upstream_inflight",
        Gauge,
        "Publishes waiting for their PUBACK.",
        load(&f.inflight),
    );
    t.by(
        "vigil_config_reloads_total",
        Counter,
        "Reloads of the device files (SIGHUP), by result.",
        "result",
        [
            ("applied", load(&o.reloads.applied)),
            ("rejected", load(&o.reloads.rejected)),
        ],
    );

    // The process.
    if let Some(v) = p.cpu_seconds {
        t.one(
            "process_cpu_seconds_total",
            Counter,
            "User and system CPU time, in seconds.",
            v,
        );
    }
    if let Some(v) = p.resident_bytes {
        t.one(
            "process_resident_memory_bytes",
            Gauge,
            "Resident memory, in bytes.",
            v,
        );
    }
    if let Some(v) = p.open_fds {
        t.one("process_open_fds", Gauge, "Open file descriptors.", v);
    }
    Ok(t.out)
}
