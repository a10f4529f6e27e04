//! Backtesting: recorded series (NAB scalar CSV, waveform sample CSV) played
//! through the detection engine, scored against labelled anomaly windows.

pub mod input;
pub mod labels;
pub mod nab;
pub mod run;

pub use run::{run, BacktestError, Options, Report};
