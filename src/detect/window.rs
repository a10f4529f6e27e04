//! Event-time windows of one stream: which open windows a reading joins,
//! which readings are late or duplicates, and which windows are final.
//!
//! A window is final once the watermark (newest event time − allowed
//! lateness) passes its end; a reading that would belong to a final window is
//! late: counted and dropped, never merged. Count windows close when full.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::WindowSpec;
use crate::model::EpochMs;

/// Readings remembered per stream to recognise redelivered duplicates.
const RECENT: usize = 32;

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Accepted,
    /// Behind the watermark: it would belong to a window already final.
    Late,
    /// Same event time and value as a reading already taken.
    Duplicate,
}

/// One open window and what has been accumulated in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Open<A> {
    pub start_ms: EpochMs,
    pub end_ms: EpochMs,
    /// Count windows: index of the window (readings since the base / hop).
    index: u64,
    pub acc: A,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Windows<A> {
    spec: WindowSpec,
    open: VecDeque<Open<A>>,
    newest_ms: Option<EpochMs>,
    /// Readings before this event time are late: the windows they belong to
    /// are final.
    closed_until: EpochMs,
    /// Count windows: readings accepted since `base`, which restarts when the
    /// stream is closed for being idle.
    seen: u64,
    recent: VecDeque<(EpochMs, u64)>,
}

impl<A: Default> Windows<A> {
    pub fn new(spec: WindowSpec) -> Self {
        Windows {
            spec,
            open: VecDeque::new(),
            newest_ms: None,
            closed_until: EpochMs::MIN,
            seen: 0,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Take in a reading at event time `t` (lasting `duration_ms`, 0 for a
    /// scalar) whose value hashes to `fingerprint`. When accepted, `add` is
    /// called once for every window it belongs to, creating those not yet open.
    pub fn add(
        &mut self,
        t: EpochMs,
        duration_ms: EpochMs,
        fingerprint: u64,
        lateness_ms: EpochMs,
        mut add: impl FnMut(&mut A),
    ) -> Admit {
        if self.recent.contains(&(t, fingerprint)) {
            return Admit::Duplicate;
        }
        let watermark = self.watermark(lateness_ms);
        if t < self.closed_until || watermark.is_some_and(|w| t < w && self.final_at(t, w)) {
            return Admit::Late;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((t, fingerprint));
        self.newest_ms = Some(self.newest_ms.map_or(t, |n| n.max(t)));
        match self.spec {
            WindowSpec::Time { length_ms, hop_ms } => {
                let first = (t - length_ms).div_euclid(hop_ms) + 1;
                let last = t.div_euclid(hop_ms);
                for k in first..=last {
                    let start = k * hop_ms;
                    let slot = self.time_slot(start, length_ms);
                    add(&mut self.open[slot].acc);
                }
            }
            WindowSpec::Count { length, hop } => {
                let (length, hop) = (length as u64, hop as u64);
                let i = self.seen;
                self.seen += 1;
                // Windows j with j·hop <= i < j·hop + length.
                let first = (i + 1).saturating_sub(length).div_ceil(hop);
                for j in first..=i / hop {
                    let slot = match self.open.iter().position(|w| w.index == j) {
                        Some(s) => s,
                        None => {
                            self.open.push_back(Open {
                                start_ms: t,
                                end_ms: t + duration_ms,
                                index: j,
                                acc: A::default(),
                            });
                            self.open.len() - 1
                        }
                    };
                    let w = &mut self.open[slot];
                    w.start_ms = w.start_ms.min(t);
                    w.end_ms = w.end_ms.max(t + duration_ms);
                    add(&mut w.acc);
                }
            }
        }
        Admit::Accepted
    }

    /// Move every window that is final into `out`, oldest first.
    pub fn drain_final(&mut self, lateness_ms: EpochMs, out: &mut Vec<Open<A>>) {
        match self.spec {
            WindowSpec::Time { .. } => {
                if let Some(watermark) = self.watermark(lateness_ms) {
                    self.drain_final_at(watermark, out);
                }
            }
            WindowSpec::Count { length, hop } => {
                // Full windows: the one with index j is full once j·hop + length readings were seen.
                while let Some(w) = self.open.front() {
                    if w.index * hop as u64 + length as u64 > self.seen {
                        break;
                    }
                    self.close_front(out);
                }
            }
        }
    }

    /// Time windows: move every window ending at or before `watermark` into
    /// `out` (used with a watermark advanced by processing time).
    pub fn drain_final_at(&mut self, watermark: EpochMs, out: &mut Vec<Open<A>>) {
        while self.open.front().is_some_and(|w| w.end_ms <= watermark) {
            self.close_front(out);
        }
    }

    /// Close every open window now, full or not (the stream went silent).
    pub fn drain_all(&mut self, out: &mut Vec<Open<A>>) {
        while !self.open.is_empty() {
            self.close_front(out);
        }
        // Count windows restart from the next reading.
        self.seen = 0;
    }

    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    fn close_front(&mut self, out: &mut Vec<Open<A>>) {
        if let Some(w) = self.open.pop_front() {
            if matches!(self.spec, WindowSpec::Time { .. }) {
                self.closed_until = self.closed_until.max(w.end_ms);
            } else {
                self.closed_until = self.closed_until.max(w.start_ms);
            }
            out.push(w);
        }
    }

    fn watermark(&self, lateness_ms: EpochMs) -> Option<EpochMs> {
        self.newest_ms.map(|n| n.saturating_sub(lateness_ms))
    }

    /// Is some window holding `t` already final at `watermark`? For time
    /// windows, the earliest window holding `t` ends first; count windows have
    /// no time bounds, so anything behind the watermark counts as late.
    fn final_at(&self, t: EpochMs, watermark: EpochMs) -> bool {
        match self.spec {
            WindowSpec::Time { length_ms, hop_ms } => {
                let first = (t - length_ms).div_euclid(hop_ms) + 1;
                first * hop_ms + length_ms <= watermark
            }
            WindowSpec::Count { .. } => true,
        }
    }

    /// Index in `open` of the time window starting at `start`, opened if needed
    /// (kept sorted by start).
    fn time_slot(&mut self, start: EpochMs, length_ms: EpochMs) -> usize {
        match self.open.binary_search_by_key(&start, |w| w.start_ms) {
            Ok(i) => i,
            Err(i) => {
                self.open.insert(
                    i,
                    Open {
                        start_ms: start,
                        end_ms: start + length_ms,
                        index: 0,
                        acc: A::default(),
                    },
                );
                i
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accumulate the event times each window received.
    type W = Windows<Vec<EpochMs>>;

    fn feed(w: &mut W, t: EpochMs, lateness: EpochMs) -> (Admit, Vec<Open<Vec<EpochMs>>>) {
        let admit = w.add(t, 0, t as u64 * 31, lateness, |acc| acc.push(t));
        let mut out = Vec::new();
        w.drain_final(lateness, &mut out);
        (admit, out)
    }

    #[test]
    fn tumbling_windows_close_on_the_watermark() {
        let mut w = W::new(WindowSpec::Time {
            length_ms: 10,
            hop_ms: 10,
        });
        for t in [1, 5, 9, 11] {
            let (a, out) = feed(&mut w, t, 2);
            assert_eq!(a, Admit::Accepted);
            assert!(
                out.is_empty(),
                "nothing final while the watermark is below 10"
            );
        }
        // Watermark 13 - 2 = 11 passes the end of [0, 10).
        let (_, out) = feed(&mut w, 13, 2);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start_ms, out[0].end_ms), (0, 10));
        assert_eq!(out[0].acc, vec![1, 5, 9]);
        // Out of order but within lateness: joins its still-open window.
        let (a, _) = feed(&mut w, 12, 2);
        assert_eq!(a, Admit::Accepted);
        // 8 belongs to the final window [0, 10): late, and not merged anywhere.
        let (a, _) = feed(&mut w, 8, 2);
        assert_eq!(a, Admit::Late);
        let mut rest = Vec::new();
        w.drain_all(&mut rest);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].acc, vec![11, 13, 12]);
    }

    #[test]
    fn sliding_windows_overlap() {
        let mut w = W::new(WindowSpec::Time {
            length_ms: 10,
            hop_ms: 5,
        });
        let mut closed = Vec::new();
        for t in 0..30 {
            closed.extend(feed(&mut w, t, 0).1);
        }
        // Windows [-5,5), [0,10), [5,15), [10,20), [15,25) are final at watermark 29.
        let spans: Vec<_> = closed.iter().map(|o| (o.start_ms, o.end_ms)).collect();
        assert_eq!(spans, vec![(-5, 5), (0, 10), (5, 15), (10, 20), (15, 25)]);
        assert_eq!(closed[1].acc, (0..10).collect::<Vec<_>>());
        assert_eq!(closed[2].acc, (5..15).collect::<Vec<_>>());
    }

    #[test]
    fn duplicates_are_recognised() {
        let mut w = W::new(WindowSpec::Time {
            length_ms: 100,
            hop_ms: 100,
        });
        assert_eq!(w.add(5, 0, 7, 0, |_| {}), Admit::Accepted);
        assert_eq!(w.add(5, 0, 7, 0, |_| {}), Admit::Duplicate);
        // Same time, different value: a real reading.
        assert_eq!(w.add(5, 0, 8, 0, |_| {}), Admit::Accepted);
    }

    #[test]
    fn count_windows() {
        let mut w = W::new(WindowSpec::Count { length: 4, hop: 2 });
        let mut closed = Vec::new();
        for t in 0..9 {
            closed.extend(feed(&mut w, t * 10, 1000).1);
        }
        let accs: Vec<_> = closed.iter().map(|o| o.acc.clone()).collect();
        assert_eq!(
            accs,
            vec![
                vec![0, 10, 20, 30],
                vec![20, 30, 40, 50],
                vec![40, 50, 60, 70]
            ]
        );
        assert_eq!((closed[1].start_ms, closed[1].end_ms), (20, 50));
        // The partial windows close when the stream goes idle.
        let mut rest = Vec::new();
        w.drain_all(&mut rest);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].acc, vec![60, 70, 80]);
    }

    #[test]
    fn a_gap_skips_empty_windows_and_old_windows_stay_final() {
        let mut w = W::new(WindowSpec::Time {
            length_ms: 10,
            hop_ms: 10,
        });
        feed(&mut w, 3, 0);
        let (_, out) = feed(&mut w, 1_000, 0);
        assert_eq!(out.len(), 1, "only windows that saw a reading are emitted");
        // A reading for a window that never opened but is long final is late.
        assert_eq!(feed(&mut w, 500, 0).0, Admit::Late);
    }
}
