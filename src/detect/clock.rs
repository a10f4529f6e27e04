//! Processing time for detection: the wall clock, with its steps told apart
//! from time passing.
//!
//! Silence is an interval (how long since a sensor spoke), so it must be
//! measured on a monotonic clock: an NTP step of an hour would otherwise
//! look like an hour of silence on every stream. Event times, on the other
//! hand, are compared with the wall clock. The stage reads both clocks and
//! [`StepWatch`] says by how much the wall clock moved beyond what the
//! monotonic clock measured; the engine shifts its remembered processing
//! times by that much (`Engine::clock_stepped`). Pure: both readings are
//! arguments.

use crate::model::EpochMs;

/// Differences between the two clocks below this are drift and scheduling,
/// not a step.
pub const STEP_MIN_MS: EpochMs = 1_000;

#[derive(Debug, Default)]
pub struct StepWatch {
    /// Wall time minus monotonic time at the last reading.
    offset_ms: Option<EpochMs>,
}

impl StepWatch {
    /// Take a reading of the wall clock and the monotonic clock (any fixed
    /// origin); the step of the wall clock since the last reading, if there
    /// was one.
    pub fn observe(&mut self, wall_ms: EpochMs, mono_ms: EpochMs) -> Option<EpochMs> {
        let offset = wall_ms.saturating_sub(mono_ms);
        let previous = self.offset_ms.replace(offset)?;
        let step = offset.saturating_sub(previous);
        if step.abs() >= STEP_MIN_MS {
            Some(step)
        } else {
            // Slow drift is left to accumulate: keep the old offset so that
            // many small corrections still add up to a step once.
            self.offset_ms = Some(previous);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_passing_is_not_a_step() {
        let mut w = StepWatch::default();
        assert_eq!(w.observe(1_000_000, 5), None);
        assert_eq!(w.observe(1_060_000, 60_005), None);
        assert_eq!(w.observe(1_060_400, 60_005), None, "drift under a second");
    }

    #[test]
    fn a_wall_clock_step_is_reported_once_with_its_size() {
        let mut w = StepWatch::default();
        w.observe(1_000_000, 0);
        // One second of real time, but the wall clock moved an hour more.
        assert_eq!(w.observe(4_601_000, 1_000), Some(3_600_000));
        assert_eq!(w.observe(4_602_000, 2_000), None);
        // And back.
        assert_eq!(w.observe(1_003_000, 3_000), Some(-3_600_000));
    }

    #[test]
    fn small_corrections_add_up_to_a_step() {
        let mut w = StepWatch::default();
        w.observe(0, 0);
        assert_eq!(w.observe(600, 0), None);
        assert_eq!(w.observe(1_200, 0), Some(1_200));
    }
}
