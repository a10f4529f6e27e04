//! Small helpers of the forward benchmark: wall-clock time, percentiles,
//! waiting for a condition, and threads with a runtime of their own.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::machine::thread_id;

/// Wall-clock time in milliseconds since the Unix epoch, with fractions.
pub fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub async fn wait_for_async(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= limit {
            eprintln!("[bench] gave up waiting until {what}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Runs `task` on a thread of its own named `name`, in a current-thread
/// tokio runtime; `task` is given the thread's id (to read its CPU time).
pub fn spawn_with_runtime<F, Fut>(name: &str, task: F) -> std::thread::JoinHandle<Fut::Output>
where
    F: FnOnce(u64) -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    let what = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let tid = thread_id();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("a runtime for {what}: {e}"));
            rt.block_on(task(tid))
        })
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}
