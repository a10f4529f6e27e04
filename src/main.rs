//! The `vigil` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;

use vigil::config::{self, Config};
use vigil::model::{rfc3339, EpochMs, Value};
use vigil::store::Store;
use vigil::store::{Lane, OutboxEntry};

/// Edge agent for predictive maintenance: durable MQTT ingest, vibration and
/// temperature anomaly detection on IoT gateways.
#[derive(Parser)]
#[command(name = "vigil", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground until SIGTERM or SIGINT; SIGHUP
    /// reloads the device files.
    Run {
        /// Path of vigil.toml.
        #[arg(long, short, default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// Validate vigil.toml and the device files; print every error, exit 1
    /// if any (warnings are printed too, and do not fail the check).
    CheckConfig {
        /// Path of vigil.toml.
        #[arg(long, short, default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// A summary for a person: from the running agent's endpoint, or from
    /// the store when the agent is not running.
    Status {
        /// Path of vigil.toml.
        #[arg(long, short, default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// Read the store of an agent that is not running, as JSON lines.
    Inspect {
        /// Path of vigil.toml.
        #[arg(long, short, default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
        /// What to show.
        what: Inspect,
        /// How many of the newest entries to print.
        #[arg(long, short = 'n', default_value_t = 20)]
        last: usize,
    },
    /// Play recorded data through a device file's detectors, offline, and
    /// report the alerts (and, with --labels, how well they match).
    Backtest {
        /// The device file whose settings to use (its `match` pattern is the device name).
        #[arg(long)]
        device: PathBuf,
        /// Which metric table of the device file applies (default: its only one).
        #[arg(long)]
        metric: Option<String>,
        /// Sample rate of waveform inputs (one sample per line), in Hz.
        #[arg(long)]
        sample_rate: Option<f64>,
        /// Length of the waveform blocks cut from the samples, in seconds.
        #[arg(long, default_value_t = 1.0)]
        block_seconds: f64,
        /// Labelled anomaly windows (NAB windows.json format), matched by file name.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Write the NAB result file (timestamp,value,anomaly_score) here.
        #[arg(long)]
        nab_out: Option<PathBuf>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Scalar `timestamp,value` CSVs or waveform sample CSVs, played in order as one stream.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
    /// Simulate a fleet of pumps publishing temperature and vibration
    /// readings, with injected faults, to an MQTT broker (demos, tests, load).
    Simulate(SimulateArgs),
    /// Print a line for the embedded broker's users file: NAME and the hash
    /// of the password read from the first line of standard input.
    HashPassword {
        /// The user name the client signs in with.
        name: String,
    },
    /// See vigil do its whole job, with nothing installed: its embedded
    /// broker, a simulated fleet with injected faults, detection, and
    /// forwarding to a plant broker through an uplink cut for a while.
    Demo {
        /// How long the fleet publishes (wall time, at least 40s).
        #[arg(long, default_value = "120s")]
        duration: String,
        /// Plant time per wall time: 60 makes a second a plant minute.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Seed of the simulated signals.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Open the store at PATH, read all of it and say by the exit status
    /// whether it can be used. vigil runs this itself, in a child process,
    /// before it uses a store (sled may panic on a damaged one).
    #[command(hide = true)]
    CheckStore {
        /// The store's directory.
        path: PathBuf,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The broker, as HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Number of devices: pump-01, pump-02, ...
    #[arg(long, default_value_t = 8)]
    devices: usize,
    /// Readings per second (wall time) per stream; each device has two
    /// streams, temperature and vibration.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    rate: f64,
    /// How long to run, wall time (500ms, 30s, 2m, 1h); default: until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Stop after this many messages in all.
    #[arg(long)]
    count: Option<u64>,
    /// Publish as fast as the broker takes it, without pacing (a load test).
    #[arg(long)]
    flat_out: bool,
    /// Plant (event) time per wall time: 60 makes a wall second a plant minute.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    speed: f64,
    /// Vibration as velocity RMS in mm/s (JSON) or as blocks of acceleration samples (CBOR).
    #[arg(long, default_value = "rms", value_parser = ["rms", "waveform"])]
    vibration: String,
    /// Faults, comma-separated KIND:DEVICE@TIME (bearing, overheat, stuck,
    /// silent, garbage), e.g. bearing:pump-03@30s,silent:pump-04@45s.
    #[arg(long)]
    faults: Option<String>,
    /// QoS of the publishes, 0 or 1.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Seed of the random signals: the same seed sends the same values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of the device names.
    #[arg(long, default_value = vigil::simulate::DEFAULT_PREFIX)]
    prefix: String,
    /// Topic template, with {device} and {metric}.
    #[arg(long, default_value = vigil::simulate::DEFAULT_TOPIC)]
    topic: String,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Inspect {
    /// The newest readings, one JSON object per line.
    Readings,
    /// The newest dead letters, with their reasons.
    DeadLetters,
    /// The newest alert transitions in the outbox (raised, escalated, cleared).
    Alerts,
    /// The newest per-window aggregates in the outbox.
    Aggregates,
    /// Counts, sequence numbers, event times of the first and last reading stored, bytes and counters.
    Stats,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config } => return check_config(config),
        Command::Status { config } => status(config),
        Command::Inspect { config, what, last } => inspect(config, what, last),
        Command::Backtest {
            device,
            metric,
            sample_rate,
            block_seconds,
            labels,
            nab_out,
            json,
            inputs,
        } => backtest(
            vigil::backtest::Options {
                device_file: device,
                metric,
                sample_rate_hz: sample_rate,
                block_seconds,
                labels,
                nab_out,
                inputs,
            },
            json,
        ),
        Command::Demo {
            duration,
            speed,
            seed,
        } => demo(duration, speed, seed),
        Command::Simulate(args) => simulate(args),
        Command::HashPassword { name } => hash_password(&name),
        Command::CheckStore { path } => {
            return ExitCode::from(vigil::store::check::run_child(&path))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))
}

fn check_config(path: PathBuf) -> ExitCode {
    match config::load(&path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{}", w.as_warning());
            }
            println!(
                "{}: OK (gateway {}, {} subscription(s), {} device file(s))",
                path.display(),
                c.gateway_id,
                c.subscriptions.len(),
                c.devices.classes().len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!("{} error(s) found", errors.0.len());
            ExitCode::FAILURE
        }
    }
}

/// `vigil hash-password NAME`: one line of a users file on stdout.
fn hash_password(name: &str) -> anyhow::Result<()> {
    config::check_user_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if std::io::stdin().is_terminal() {
        eprintln!("password for {name} (shown as typed; or pipe it in):");
    }
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.strip_suffix('\n').unwrap_or(&password);
    let password = password.strip_suffix('\r').unwrap_or(password);
    anyhow::ensure!(
        !password.is_empty(),
        "empty password: expected it on the first line of standard input"
    );
    let hash = config::PasswordHash::new(password).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{name}:{hash}");
    Ok(())
}

fn init_logging(level: &str) {
    let mut filter = std::env::var("VIGIL_LOG").unwrap_or_else(|_| level.to_string());
    // The embedded broker logs every connection at INFO; its warnings are
    // enough unless a filter asks for more.
    if !filter.contains("rumqttd") {
        filter.push_str(",rumqttd=warn");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        // Plain text under systemd or in a pipe; colour only on a terminal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path)?;
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), gateway = %config.gateway_id, "vigil starting");
        for w in &config.warnings {
            tracing::warn!("{}", w.as_warning());
        }
        serve(&config, &path).await
    });
    // A blocking store call still running (a commit the stages gave up on)
    // must not hold the exit; what it had not flushed was not acknowledged.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result?;
    tracing::info!("vigil stopped");
    Ok(())
}

/// Run the agent until SIGTERM or SIGINT: reload on SIGHUP, tell systemd
/// when it is ready and, while every stage makes progress, ping its watchdog.
async fn serve(config: &Config, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    use vigil::ops::notify;
    // Before anything else: SIGHUP's default action would end the process.
    let mut hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut running = vigil::app::start_checked(config, checker()).await?;
    let mut ready = format!("running; gateway {}", config.gateway_id);
    if let Some(r) = running.recovery() {
        ready.push_str(&format!(
            "; the store was damaged and moved to {}, this is a fresh one",
            r.moved_to
        ));
    }
    notify::ready(&ready);
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut store_check = tokio::time::interval(std::time::Duration::from_secs(1));
    // Set when the store fails every write: vigil stops and exits with an error.
    let mut store_failed = None;
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = store_check.tick() => {
                if let Some(reason) = running.check_store() {
                    store_failed = Some(reason);
                    break;
                }
            }
            _ = hangup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP received: reloading the device files");
                notify::reloading();
                running.reload(path);
                notify::ready(&ready);
            }
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                running.watchdog();
            }
        }
    }
    notify::stopping();
    tracing::info!("shutting down");
    let stopped = running.shutdown().await;
    if let Some(reason) = store_failed {
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "the store failed at shutdown too");
        }
        anyhow::bail!("stopped because the store fails every write: {reason}");
    }
    stopped?;
    Ok(())
}

/// glibc gives threads that allocate at once their own heaps ("arenas", up
/// to 8 per core), and memory freed in one is not reused by another. vigil's
/// store and detection work moves between tokio's blocking threads, so the
/// transient buffers of its commits (a detection commit encodes kilobytes
/// per stream) ended up spread over many arenas: at 2,000 readings/s from
/// 1,000 devices peak RSS was 109 MiB with glibc's default and 71 MiB with
/// a single arena. Two keep most of that without one lock for every thread.
/// An operator's `MALLOC_ARENA_MAX` still wins; other C libraries are untouched.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator; no thread has started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop vigil with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// The check of a store before it is used: this program's hidden
/// `check-store` command in a child process (see `store/check.rs`). Without
/// a path to this program, stores are opened unchecked.
fn checker() -> Option<vigil::store::Checker> {
    match std::env::current_exe() {
        Ok(program) => Some(vigil::store::Checker::new(
            program,
            vec!["check-store".into()],
        )),
        Err(e) => {
            eprintln!("vigil: cannot find this program to check the store with ({e}); opening it unchecked");
            None
        }
    }
}

/// The store of a stopped agent, for reading: a copy in the temporary
/// directory, so that nothing in the store is created or changed (run as
/// root, that would leave root-owned files in the service's store).
fn open_store(config: &Config) -> anyhow::Result<Store> {
    let checker = checker();
    Store::open_copy(&config.store, &std::env::temp_dir(), checker.as_ref()).map_err(|e| match e {
        vigil::store::StoreError::Locked { .. } => {
            anyhow::anyhow!("{e} (`inspect` reads the store of a stopped agent)")
        }
        vigil::store::StoreError::Damaged { .. } => anyhow::anyhow!(
            "{e}; it was left as it is (`vigil run` moves a damaged store aside and starts with a fresh one)"
        ),
        vigil::store::StoreError::Missing { .. } | vigil::store::StoreError::Copy { .. } => {
            anyhow::anyhow!("{e}")
        }
        e => anyhow::anyhow!(
            "cannot open the store at {}: {e}",
            config.store.path.display()
        ),
    })
}

fn status(path: PathBuf) -> anyhow::Result<()> {
    use vigil::ops::status::{fetch, summary, target, FetchError, Origin, Samples};
    let config = load(&path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Port 0 (tests) cannot be asked: read the store.
    if let Some(listen) = config.http.filter(|a| a.port() != 0) {
        let addr = target(listen);
        let url = format!("http://{addr}");
        match runtime.block_on(fetch(addr, "/metrics")) {
            Ok((200, text)) => {
                let ready = match runtime.block_on(fetch(addr, "/readyz")) {
                    Ok((200, _)) => Ok(()),
                    Ok((_, body)) => Err(body.trim().trim_start_matches("not ready: ").to_string()),
                    Err(e) => Err(e.to_string()),
                };
                print!(
                    "{}",
                    summary(&Samples::parse(&text), &Origin::Agent { url, ready })
                );
                return Ok(());
            }
            Ok((code, body)) => anyhow::bail!("{url}/metrics answered {code}: {}", body.trim()),
            // Nothing listens: the agent is not running.
            Err(FetchError::Connect(..)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let store = open_store(&config)?;
    let health = std::sync::Arc::new(vigil::ops::Health::default());
    health.set_store_open(true);
    let observed = vigil::ops::Observed {
        gateway_id: config.gateway_id.clone(),
        store,
        health,
        ingest: Default::default(),
        detect: Default::default(),
        forward: Default::default(),
        reloads: Default::default(),
    };
    let text = vigil::ops::metrics::render(&observed)?;
    let origin = Origin::Store {
        path: config.store.path.display().to_string(),
    };
    print!("{}", summary(&Samples::parse(&text), &origin));
    Ok(())
}

fn inspect(path: PathBuf, what: Inspect, last: usize) -> anyhow::Result<()> {
    let config = load(&path)?;
    let store = open_store(&config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match what {
        Inspect::Readings => {
            for (seq, r) in store.last_readings(last)? {
                let (value, sample_rate_hz, samples) = match &r.value {
                    Value::Scalar(v) => (Some(*v), None, None),
                    Value::Waveform(w) => {
                        (None, Some(w.sample_rate_hz), Some(w.samples.as_slice()))
                    }
                };
                let line = ReadingLine {
                    seq,
                    device: &r.device,
                    metric: &r.metric,
                    time: rfc3339(r.time_ms),
                    time_ms: r.time_ms,
                    value,
                    sample_rate_hz,
                    samples,
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            }
        }
        Inspect::DeadLetters => {
            for (seq, dl) in store.last_dead_letters(last)? {
                let utf8 = std::str::from_utf8(&dl.payload).ok();
                let line = DeadLetterLine {
                    seq,
                    received: rfc3339(dl.received_ms),
                    topic: &dl.topic,
                    reason: dl.reason.as_str(),
                    detail: &dl.detail,
                    payload_len: dl.payload_len,
                    payload: utf8,
                    payload_hex: utf8.is_none().then(|| hex(&dl.payload)),
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            }
        }
        Inspect::Alerts | Inspect::Aggregates => {
            let lane = match what {
                Inspect::Alerts => Lane::Alerts,
                _ => Lane::Aggregates,
            };
            for item in store.last_outbox(lane, last)? {
                let seq = item.seq;
                let message_id = vigil::forward::message_id(&config.gateway_id, lane, item.id);
                let line = match item.entry {
                    OutboxEntry::Alert(a) => json!({
                        "seq": seq,
                        "message_id": message_id,
                        "id": a.id,
                        "kind": a.kind.as_str(),
                        "device": a.device,
                        "metric": a.metric,
                        "detector": a.detector,
                        "feature": a.feature,
                        "severity": a.severity.as_str(),
                        "raised_at": rfc3339(a.raised_ms),
                        "cleared_at": a.cleared_ms.map(rfc3339),
                        "value": a.value,
                        "limit": a.limit,
                        "baseline": a.baseline.map(|(level, spread)| json!({"level": level, "spread": spread})),
                        "score": a.score,
                        "message": a.message,
                    }),
                    OutboxEntry::Aggregate(g) => json!({
                        "seq": seq,
                        "message_id": message_id,
                        "device": g.device,
                        "metric": g.metric,
                        "start": rfc3339(g.start_ms),
                        "end": rfc3339(g.end_ms),
                        "windows": g.windows,
                        "features": g.features,
                    }),
                };
                writeln!(out, "{line}")?;
            }
        }
        Inspect::Stats => {
            let stats = store.stats()?;
            // By sequence (arrival order), which is not always event-time order.
            let first = readable(
                stats
                    .first_seq
                    .map(|s| store.readings_from(s, 1))
                    .transpose()
                    .map(|v| v.and_then(|v| v.into_iter().next())),
            )?
            .flatten();
            let last = readable(store.last_readings(1).map(|v| v.into_iter().next()))?.flatten();
            let rejected: serde_json::Map<String, serde_json::Value> = stats
                .counters
                .rejected
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json!(v)))
                .collect();
            let oldest = |lane| -> anyhow::Result<Option<String>> {
                Ok(readable(store.outbox_oldest(lane))?
                    .flatten()
                    .map(|item| rfc3339(item.entry.end_ms())))
            };
            let line = json!({
                "readings": stats.readings,
                "first_seq": stats.first_seq,
                "next_seq": stats.next_seq,
                "first_reading_time": first.map(|(_, r)| rfc3339(r.time_ms)),
                "last_reading_time": last.map(|(_, r)| rfc3339(r.time_ms)),
                "readings_bytes": stats.readings_bytes,
                "dead_letters": stats.dead_letters,
                "dead_letter_bytes": stats.dead_letter_bytes,
                "budget_bytes": stats.budget_bytes,
                "data_limit_bytes": stats.data_limit_bytes,
                "size_on_disk_bytes": stats.size_on_disk,
                "messages_total": stats.counters.messages,
                "readings_stored_total": stats.counters.readings_stored,
                "rejected_total": rejected,
                "dead_letters_dropped_total": stats.counters.dead_letters_dropped,
                "readings_trimmed_total": stats.counters.readings_trimmed,
                "detection_cursor": stats.detection_cursor,
                "outbox_alerts": stats.outbox[0],
                "outbox_aggregates": stats.outbox[1],
                "outbox_bytes": stats.outbox_bytes[0] + stats.outbox_bytes[1],
                "outbox_oldest_alert_time": oldest(Lane::Alerts)?,
                "outbox_oldest_aggregate_time": oldest(Lane::Aggregates)?,
                "delivered_alerts_total": stats.counters.delivered[0],
                "delivered_aggregates_total": stats.counters.delivered[1],
                "aggregates_merged_total": stats.counters.aggregates_merged,
                "aggregate_merges_total": stats.counters.aggregate_merges,
                "aggregates_dropped_total": stats.counters.aggregates_dropped,
                "aggregate_windows_dropped_total": stats.counters.aggregate_windows_dropped,
                "alerts_dropped_total": stats.counters.alerts_dropped,
                "outbox_unreadable_total": stats.counters.outbox_unreadable,
                "readings_unreadable_total": stats.counters.readings_unreadable,
                "store_recoveries_total": stats.counters.store_recoveries,
                "store_recovered_at": stats.recovery.as_ref().map(|r| rfc3339(r.at_ms)),
                "store_recovered_moved_to": stats.recovery.as_ref().map(|r| r.moved_to.clone()),
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// A value `inspect stats` shows, or `None` where the entry it comes from
/// cannot be decoded (damage that sled's checks let through): said on
/// stderr, since `vigil run` uses such a store and skips the entry.
fn readable<T>(
    result: Result<T, vigil::store::StoreError>,
) -> Result<Option<T>, vigil::store::StoreError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e @ vigil::store::StoreError::Corrupt { .. }) => {
            eprintln!("vigil: {e} (a damaged entry: `vigil run` skips it)");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn backtest(opts: vigil::backtest::Options, json: bool) -> anyhow::Result<()> {
    // Warnings about the inputs (time going backwards) go to stderr.
    init_logging("warn");
    let report = vigil::backtest::run(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        vigil::backtest::run::print_text(&report);
    }
    Ok(())
}

/// `vigil simulate`: a line for the plan, one per fault as it begins, one
/// for the summary. Ctrl-C (or SIGTERM) ends the run with its summary.
fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    use vigil::simulate::report;
    init_logging("warn");
    let json = a.json;
    let raw = vigil::simulate::RawOptions {
        broker: a.broker,
        devices: a.devices,
        device_prefix: a.prefix,
        topic: a.topic,
        rate_hz: a.rate,
        duration: a.duration,
        count: a.count,
        flat_out: a.flat_out,
        speed: a.speed,
        vibration: a.vibration,
        faults: a.faults,
        qos: a.qos,
        seed: a.seed,
    };
    let invalid = |e: vigil::simulate::SimError| anyhow::anyhow!("invalid options:\n{e}");
    let mut opts = raw.parse().map_err(invalid)?;
    let plan = opts.plan(vigil::model::wall_ms()).map_err(invalid)?;
    // The start line and the run use the same event times.
    opts.start_ms = Some(plan.start_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        println!("{}", report::start_line(&plan, json));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            let _ = stop_tx.send(true);
        });
        let (injection_tx, mut injection_rx) = tokio::sync::mpsc::unbounded_channel();
        // Ends when the run drops its sender: every fault line comes before the summary.
        let printer = tokio::spawn(async move {
            while let Some(i) = injection_rx.recv().await {
                println!("{}", report::injection_line(&i, json));
            }
        });
        let result = vigil::simulate::run(opts, Some(injection_tx), stop_rx).await;
        let _ = printer.await;
        result
    })?;
    println!("{}", report::summary_line(&summary, json));
    Ok(())
}

fn demo(duration: String, speed: f64, seed: u64) -> anyhow::Result<()> {
    // The live view is the output; only vigil's own errors go to stderr
    // (the embedded brokers log each connection the demo cuts).
    init_logging("error,rumqttd=off");
    let duration = vigil::simulate::parse_duration(&duration)
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    if !(1.0..=3600.0).contains(&speed) {
        anyhow::bail!("--speed {speed} is out of range; expected 1 to 3600");
    }
    let opts = vigil::demo::Options {
        duration,
        speed,
        seed,
        tty: std::io::stdout().is_terminal(),
        ..vigil::demo::Options::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop_signal().await;
            let _ = stop_tx.send(true);
        });
        vigil::demo::run(opts, stop_rx).await
    });
    // The embedded brokers' threads have no stop; the process exit ends them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    report?;
    Ok(())
}

/// One line of `inspect readings`.
#[derive(Serialize)]
struct ReadingLine<'a> {
    seq: u64,
    device: &'a str,
    metric: &'a str,
    time: String,
    time_ms: EpochMs,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_rate_hz: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    samples: Option<&'a [f32]>,
}

/// One line of `inspect dead-letters`.
#[derive(Serialize)]
struct DeadLetterLine<'a> {
    seq: u64,
    received: String,
    topic: &'a str,
    reason: &'a str,
    detail: &'a str,
    payload_len: usize,
    /// The payload as text when it is UTF-8 ...
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    /// ... and in hex otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
