//! Detection: readings in from the store's log, alerts and per-window
//! aggregates out, with the detector state, in one store transaction.
//!
//! The maths (windows, features, spectra, detectors, the alert state machine)
//! is plain Rust without I/O or clocks; `engine` ties it together and is
//! driven by the stage in `stage` (live) and by `vigil backtest` (offline).

pub mod alert;
pub mod baseline;
pub mod clock;
pub mod engine;
mod evaluate;
pub mod features;
mod reload;
pub mod rules;
pub mod spectrum;
pub mod stage;
pub mod window;

pub use engine::{DetectCounters, Engine, Output, StreamLimits, StreamState};
pub use stage::{run as run_stage, DetectMetrics, Task as DetectTask};
