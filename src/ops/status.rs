//! `vigil status`: a summary for a person, read from the running agent's
//! `/metrics` (or, when it is not running, from metrics rendered from its
//! store), so that the two never disagree about what a figure means.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long `vigil status` waits for the agent.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The samples of an exposition, by series (`name` or `name{k="v",...}`).
#[derive(Debug, Default)]
pub struct Samples(BTreeMap<String, f64>);

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut map = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().unwrap_or(f64::NAN),
                };
                map.insert(series.to_string(), value);
            }
        }
        Samples(map)
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut key = name.to_string();
        if !labels.is_empty() {
            key.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                let _ = write!(key, "{k}=\"{v}\"");
            }
            key.push('}');
        }
        self.0.get(&key).copied()
    }

    fn n(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The label value of a series of `name` with one label named `label`.
    fn label_of(&self, name: &str, label: &str) -> Option<String> {
        let prefix = format!("{name}{{");
        let series = self.0.keys().find(|k| k.starts_with(&prefix))?;
        let start = series.find(&format!("{label}=\""))? + label.len() + 2;
        let end = series[start..].find('"')? + start;
        Some(series[start..end].to_string())
    }
}

/// Where the figures came from.
pub enum Origin {
    /// The running agent's endpoint, and what `/readyz` said.
    Agent {
        url: String,
        ready: Result<(), String>,
    },
    /// The store of an agent that is not running.
    Store { path: String },
}

/// A count for people: 12345 → "12,345" (negative as 0).
pub fn count(v: f64) -> String {
    let n = v.max(0.0).round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The summary `vigil status` prints.
pub fn summary(s: &Samples, origin: &Origin) -> String {
    let mut o = String::new();
    let version = s
        .label_of("vigil_build_info", "version")
        .unwrap_or_default();
    let gateway = s
        .label_of("vigil_build_info", "gateway")
        .unwrap_or_default();
    let live = matches!(origin, Origin::Agent { .. });
    match origin {
        Origin::Agent { url, ready } => {
            let state = match ready {
                Ok(()) => "running, ready".to_string(),
                Err(reason) => format!("running, NOT READY ({reason})"),
            };
            let _ = writeln!(o, "vigil {version} on {gateway}: {state}  [{url}]");
            let now = crate::model::wall_ms() as f64 / 1000.0;
            let start = s.n("process_start_time_seconds", &[]);
            let _ = writeln!(o, "  uptime         {}", duration(now - start));
        }
        Origin::Store { path } => {
            let _ = writeln!(o, "vigil on {gateway}: not running  [store {path}]");
        }
    }
    let row = |o: &mut String, name: &str, text: String| {
        let _ = writeln!(o, "  {name:<14} {text}");
    };
    if live {
        let broker = |b: &str| {
            let up = s.n("vigil_broker_connected", &[("broker", b)]) > 0.0;
            let re = s.n("vigil_broker_reconnects_total", &[("broker", b)]);
            format!(
                "{}, {} reconnect(s) since start",
                if up { "connected" } else { "DISCONNECTED" },
                count(re)
            )
        };
        row(&mut o, "local broker", broker("local"));
        if s.get("vigil_stage_running", &[("stage", "forward")])
            .is_some()
        {
            row(&mut o, "upstream", broker("upstream"));
        } else {
            row(&mut o, "upstream", "not configured".into());
        }
    }
    let mut rejected_total = 0.0;
    let rejected: Vec<String> = crate::model::Reason::ALL
        .iter()
        .filter_map(|r| {
            let n = s.n("vigil_messages_rejected_total", &[("reason", r.as_str())]);
            rejected_total += n;
            (n > 0.0).then(|| format!("{} {}", r.as_str(), count(n)))
        })
        .collect();
    let mut readings = format!(
        "{} stored, {} rejected",
        count(s.n("vigil_readings_stored_total", &[])),
        count(rejected_total)
    );
    if !rejected.is_empty() {
        let _ = write!(readings, " ({})", rejected.join(", "));
    }
    if live {
        let _ = write!(
            readings,
            ", {} late, {} duplicate",
            count(s.n("vigil_readings_late_total", &[])),
            count(s.n("vigil_readings_duplicate_total", &[]))
        );
    }
    let unreadable = s.n("vigil_readings_unreadable_total", &[]);
    if unreadable > 0.0 {
        let _ = write!(
            readings,
            ", {} UNREADABLE (damaged, skipped)",
            count(unreadable)
        );
    }
    row(&mut o, "readings", readings);
    row(
        &mut o,
        "buffered",
        format!(
            "{} readings, {} not yet through detection",
            count(s.n("vigil_readings_buffered", &[])),
            count(s.n("vigil_detection_lag_readings", &[]))
        ),
    );
    let used: f64 = [
        "readings",
        "outbox_alerts",
        "outbox_aggregates",
        "dead_letters",
        "checkpoints",
    ]
    .iter()
    .map(|p| s.n("vigil_store_used_bytes", &[("part", p)]))
    .sum();
    let budget = s.n("vigil_store_budget_bytes", &[]);
    let limit = s.n("vigil_store_data_limit_bytes", &[]);
    let mut store = format!(
        "{} of {} for data ({:.0}%), {} on disk of a {} budget",
        bytes(used),
        bytes(limit),
        if limit > 0.0 {
            used / limit * 100.0
        } else {
            0.0
        },
        bytes(s.n("vigil_store_size_on_disk_bytes", &[])),
        bytes(budget),
    );
    if s.n("vigil_store_full", &[]) > 0.0 {
        store.push_str("; FULL, ingest waits");
    }
    let failing = s.n("vigil_store_write_failures_in_a_row", &[]);
    if failing > 0.0 {
        let _ = write!(store, "; WRITES FAILING ({} in a row)", count(failing));
    }
    let errors = s.n("vigil_store_write_errors_total", &[]);
    if errors > 0.0 {
        let _ = write!(store, "; {} failed write(s) since start", count(errors));
    }
    row(&mut o, "store", store);
    const RECOVERED: &str = "vigil_store_recovered_timestamp_seconds";
    if let Some(moved_to) = s.label_of(RECOVERED, "moved_to") {
        let at = s.get(RECOVERED, &[("moved_to", &moved_to)]).unwrap_or(0.0);
        row(
            &mut o,
            "recovered",
            format!(
                "the store was DAMAGED and moved to {moved_to} at {}; this is a fresh store",
                crate::model::rfc3339((at * 1000.0) as crate::model::EpochMs)
            ),
        );
    }
    let lane = |l: &str| {
        let n = s.n("vigil_outbox_entries", &[("lane", l)]);
        let age = s.n("vigil_outbox_oldest_age_seconds", &[("lane", l)]);
        if n > 0.0 {
            format!("{} {l} (oldest {} old)", count(n), duration(age))
        } else {
            format!("0 {l}")
        }
    };
    row(
        &mut o,
        "outbox",
        format!("{}, {}", lane("alerts"), lane("aggregates")),
    );
    row(
        &mut o,
        "delivered",
        format!(
            "{} alerts, {} aggregates",
            count(s.n("vigil_delivered_total", &[("lane", "alerts")])),
            count(s.n("vigil_delivered_total", &[("lane", "aggregates")]))
        ),
    );
    if live {
        let sev = |name: &str| {
            format!(
                "{} warning, {} alarm",
                count(s.n(name, &[("severity", "warning")])),
                count(s.n(name, &[("severity", "alarm")]))
            )
        };
        row(
            &mut o,
            "alerts",
            format!(
                "{} open; raised {}, cleared {} since start",
                sev("vigil_alerts_open"),
                sev("vigil_alerts_raised_total"),
                sev("vigil_alerts_cleared_total")
            ),
        );
    }
    row(
        &mut o,
        "given way",
        format!(
            "{} aggregates merged, {} dropped ({} windows), {} alerts dropped",
            count(s.n("vigil_aggregates_merged_total", &[])),
            count(s.n("vigil_aggregates_dropped_total", &[])),
            count(s.n("vigil_aggregate_windows_dropped_total", &[])),
            count(s.n("vigil_alerts_dropped_total", &[]))
        ),
    );
    if live {
        row(
            &mut o,
            "process",
            format!(
                "{} resident, {:.1} s CPU, {} written to disk since start",
                bytes(s.n("process_resident_memory_bytes", &[])),
                s.n("process_cpu_seconds_total", &[]),
                bytes(s.n("vigil_disk_written_bytes_total", &[]))
            ),
        );
    }
    o
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("HTTP error talking to {0}: {1}")]
    Http(SocketAddr, String),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// The address to ask: a wildcard listen address is asked on loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// GET `path` from the agent; the status code and the body.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<(u16, String), FetchError> {
    tokio::time::timeout(TIMEOUT, get(addr, path))
        .await
        .map_err(|_| FetchError::Timeout(addr, TIMEOUT))?
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), FetchError> {
    let http = |e: &dyn std::fmt::Display| FetchError::Http(addr, e.to_string());
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| FetchError::Connect(addr, e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_digits() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(1234567.4), "1,234,567");
    }

    const TEXT: &str = r#"# HELP vigil_build_info x
# TYPE vigil_build_info gauge
vigil_build_info{version="1.2.3",gateway="gw-7"} 1
vigil_readings_stored_total 1234567
vigil_messages_rejected_total{reason="malformed"} 3
vigil_messages_rejected_total{reason="schema"} 0
vigil_store_used_bytes{part="readings"} 1048576
vigil_store_used_bytes{part="outbox_alerts"} 0
vigil_store_budget_bytes 10485760
vigil_store_data_limit_bytes 4194304
vigil_outbox_entries{lane="aggregates"} 12
vigil_outbox_oldest_age_seconds{lane="aggregates"} 125
vigil_store_full 1
"#;

    #[test]
    fn parses_series_and_labels() {
        let s = Samples::parse(TEXT);
        assert_eq!(s.get("vigil_readings_stored_total", &[]), Some(1234567.0));
        assert_eq!(
            s.get("vigil_messages_rejected_total", &[("reason", "malformed")]),
            Some(3.0)
        );
        assert_eq!(
            s.get("vigil_messages_rejected_total", &[("reason", "x")]),
            None
        );
        assert_eq!(
            s.label_of("vigil_build_info", "gateway").as_deref(),
            Some("gw-7")
        );
    }

    #[test]
    fn summary_of_a_stopped_agent_reads_well() {
        let s = Samples::parse(TEXT);
        let text = summary(
            &s,
            &Origin::Store {
                path: "/var/lib/vigil/store".into(),
            },
        );
        assert!(text.starts_with("vigil on gw-7: not running"), "{text}");
        assert!(
            text.contains("1,234,567 stored, 3 rejected (malformed 3)"),
            "{text}"
        );
        assert!(
            text.contains("1.0 MiB of 4.0 MiB for data (25%), 0 B on disk of a 10.0 MiB budget"),
            "{text}"
        );
        assert!(text.contains("FULL, ingest waits"), "{text}");
        assert!(
            text.contains("12 aggregates (oldest 2 min 5 s old)"),
            "{text}"
        );
        // Live-only lines are left out.
        assert!(!text.contains("local broker"), "{text}");
        assert!(!text.contains("WRITES FAILING"), "{text}");
    }

    #[test]
    fn summary_of_an_agent_whose_store_fails_writes() {
        let text = format!(
            "{TEXT}vigil_store_write_failures_in_a_row 4\nvigil_store_write_errors_total 5\n"
        );
        let text = summary(
            &Samples::parse(&text),
            &Origin::Agent {
                url: "http://127.0.0.1:9898".into(),
                ready: Err("the store has failed 4 writes in a row for 3 s (...)".into()),
            },
        );
        assert!(
            text.contains("running, NOT READY (the store has failed 4 writes in a row"),
            "{text}"
        );
        assert!(
            text.contains("; WRITES FAILING (4 in a row); 5 failed write(s) since start"),
            "{text}"
        );
        assert!(!text.contains("recovered"), "{text}");
    }

    #[test]
    fn summary_of_a_recovered_store_says_where_the_damaged_one_is() {
        let text = format!(
            "{TEXT}vigil_store_recoveries_total 1\nvigil_store_recovered_timestamp_seconds{{moved_to=\"/var/lib/vigil/store.corrupt-20261121T100000Z\"}} 1795255200\nvigil_readings_unreadable_total 1024\n"
        );
        let text = summary(
            &Samples::parse(&text),
            &Origin::Store {
                path: "/var/lib/vigil/store".into(),
            },
        );
        assert!(
            text.contains("  recovered      the store was DAMAGED and moved to /var/lib/vigil/store.corrupt-20261121T100000Z at 2026-11-21T10:00:00Z; this is a fresh store\n"),
            "{text}"
        );
        assert!(
            text.contains("3 rejected (malformed 3), 1,024 UNREADABLE (damaged, skipped)"),
            "{text}"
        );
    }
}
