//! The fleet, tick by tick: a tick number in; the messages every device
//! publishes at that tick's event time, and the faults that begin at it, out.
//! Pure and deterministic for a seed: no clock, no I/O.

use std::time::Duration;

use serde::Serialize;

use super::faults::{
    bearing_impulse_g, bearing_velocity_mm_s, garbage_payload, overheat_c, with_defect_mm_s,
    FaultKind, BEARING_DOUBLING_MIN, BEARING_ONSET_MM_S, GARBAGE_KINDS, IMPULSE_ONSET_G,
    OVERHEAT_C_PER_MIN, OVERHEAT_MAX_RISE_C,
};
use super::options::{topic_of, Options, Plan, Vibration};
use super::rng::Rng;
use super::signals::{
    quantize, Accelerometer, Temperature, VelocityRms, BPFO_ORDER, SHAFT_HZ,
    VELOCITY_RESOLUTION_MM_S,
};
use super::{Injection, TEMPERATURE, VIBRATION};
use crate::model::EpochMs;

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Index of the device in the fleet (messages of one device keep their
    /// order by going through one connection).
    pub device: usize,
    pub topic: String,
    pub payload: Vec<u8>,
    /// A malformed payload (garbage fault).
    pub garbage: bool,
}

/// A fault waiting for its tick.
#[derive(Debug, Clone)]
struct Scheduled {
    tick: u64,
    device: usize,
    kind: FaultKind,
}

#[derive(Debug, Clone)]
struct Device {
    name: String,
    topics: [String; 2],
    rng: Rng,
    temperature: Temperature,
    velocity: VelocityRms,
    accel: Accelerometer,
    /// The last temperature sent, for a sensor that gets stuck.
    last_c: Option<f64>,
    bearing_from: Option<EpochMs>,
    overheat_from: Option<EpochMs>,
    stuck_at: Option<f64>,
    silent: bool,
    /// Garbage payloads sent so far, once the fault began.
    garbage_sent: Option<u64>,
}

pub struct Fleet {
    plan: Plan,
    vibration: Vibration,
    devices: Vec<Device>,
    /// By tick, then device.
    schedule: Vec<Scheduled>,
    next_fault: usize,
}

/// A waveform block as vigil decodes it.
#[derive(Serialize)]
struct Block<'a> {
    samples: &'a [f32],
    sample_rate_hz: f64,
    ts: EpochMs,
}

impl Fleet {
    /// The fleet of `opts`, on the event times of `plan` (`opts.plan(..)`).
    pub fn new(opts: &Options, plan: &Plan) -> Fleet {
        let devices = opts
            .device_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let mut rng = Rng::stream(opts.seed, i as u64);
                Device {
                    topics: [
                        topic_of(&opts.topic, &name, TEMPERATURE),
                        topic_of(&opts.topic, &name, VIBRATION),
                    ],
                    temperature: Temperature::new(&mut rng),
                    velocity: VelocityRms::new(&mut rng),
                    accel: Accelerometer::new(&mut rng),
                    rng,
                    name,
                    last_c: None,
                    bearing_from: None,
                    overheat_from: None,
                    stuck_at: None,
                    silent: false,
                    garbage_sent: None,
                }
            })
            .collect::<Vec<_>>();
        let mut schedule: Vec<Scheduled> = opts
            .faults
            .iter()
            .filter_map(|f| {
                let device = devices.iter().position(|d| d.name == f.device)?;
                Some(Scheduled {
                    tick: plan.tick_at(f.at),
                    device,
                    kind: f.kind,
                })
            })
            .collect();
        schedule.sort_by_key(|s| (s.tick, s.device, s.kind));
        Fleet {
            plan: plan.clone(),
            vibration: opts.vibration,
            devices,
            schedule,
            next_fault: 0,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The messages of tick `k` into `out` and the faults that begin at it
    /// into `began`. Ticks must be asked in order (0, 1, 2, ...).
    pub fn tick(&mut self, k: u64, out: &mut Vec<Message>, began: &mut Vec<Injection>) {
        let t = self.plan.event_ms(k);
        let wall = self.plan.wall(k);
        for i in 0..self.devices.len() {
            // The schedule is sorted by tick, then device: the faults of this
            // tick come up in device order.
            while let Some(s) = self
                .schedule
                .get(self.next_fault)
                .filter(|s| s.tick <= k && s.device == i)
            {
                let kind = s.kind;
                self.next_fault += 1;
                began.push(self.begin(i, kind, t, wall));
            }
            self.readings(i, t, out);
        }
    }

    /// Start fault `kind` on device `i` at event time `t`.
    fn begin(&mut self, i: usize, kind: FaultKind, t: EpochMs, wall: Duration) -> Injection {
        let d = &mut self.devices[i];
        let detail = match kind {
            FaultKind::Bearing => {
                d.bearing_from = Some(t);
                match self.vibration {
                    Vibration::Rms => format!(
                        "bearing defect (outer race), velocity RMS growing: +{BEARING_ONSET_MM_S} mm/s, doubling every {BEARING_DOUBLING_MIN} plant minutes"
                    ),
                    Vibration::Waveform { .. } => format!(
                        "bearing defect (outer race, BPFO {:.1} Hz), growing: impulses of {IMPULSE_ONSET_G} g, doubling every {BEARING_DOUBLING_MIN} plant minutes",
                        BPFO_ORDER * SHAFT_HZ
                    ),
                }
            }
            FaultKind::Overheat => {
                d.overheat_from = Some(t);
                format!(
                    "overheating: +{OVERHEAT_C_PER_MIN:.1} degC per plant minute (at most +{OVERHEAT_MAX_RISE_C} degC)"
                )
            }
            FaultKind::Stuck => {
                // Without an earlier reading, this tick's value is the one repeated.
                let value = match d.last_c {
                    Some(c) => c,
                    None => {
                        let c = d.temperature.next(t, &mut d.rng);
                        d.last_c = Some(c);
                        c
                    }
                };
                d.stuck_at = Some(value);
                format!("temperature sensor stuck at {value:.2} degC")
            }
            FaultKind::Silent => {
                d.silent = true;
                "device silent: publishes nothing more".to_string()
            }
            FaultKind::Garbage => {
                d.garbage_sent.get_or_insert(0);
                format!(
                    "malformed temperature payloads ({})",
                    GARBAGE_KINDS.join(", ")
                )
            }
        };
        Injection {
            wall,
            event_ms: t,
            device: d.name.clone(),
            metric: kind.metric().to_string(),
            kind,
            detail,
        }
    }

    /// Device `i`'s two readings at event time `t`.
    fn readings(&mut self, i: usize, t: EpochMs, out: &mut Vec<Message>) {
        let d = &mut self.devices[i];
        if d.silent {
            return;
        }
        let minutes_since = |from: Option<EpochMs>| from.map(|f| (t - f) as f64 / 60_000.0);

        // The healthy signal is drawn whatever the faults, so a fault changes
        // only its own device's readings, never the random stream after it.
        let mut celsius = d.temperature.next(t, &mut d.rng);
        if let Some(m) = minutes_since(d.overheat_from) {
            celsius = quantize(overheat_c(celsius, m), 0.01);
        }
        if let Some(stuck) = d.stuck_at {
            celsius = stuck;
        }
        d.last_c = Some(celsius);
        let (payload, garbage) = match d.garbage_sent.as_mut() {
            Some(n) => {
                let p = garbage_payload(*n, t, &mut d.rng);
                *n += 1;
                (p, true)
            }
            None => (scalar_json(celsius, 2, t), false),
        };
        out.push(Message {
            device: i,
            topic: d.topics[0].clone(),
            payload,
            garbage,
        });

        let defect = minutes_since(d.bearing_from);
        let payload = match self.vibration {
            Vibration::Rms => {
                let mut v = d.velocity.healthy(t, &mut d.rng);
                if let Some(m) = defect {
                    v = with_defect_mm_s(v, bearing_velocity_mm_s(m));
                }
                scalar_json(quantize(v, VELOCITY_RESOLUTION_MM_S), 3, t)
            }
            Vibration::Waveform {
                sample_rate_hz,
                block_samples,
            } => {
                let impulse = defect.map_or(0.0, bearing_impulse_g);
                let samples = d
                    .accel
                    .block(t, sample_rate_hz, block_samples, impulse, &mut d.rng);
                let block = Block {
                    samples: &samples,
                    sample_rate_hz,
                    ts: t,
                };
                let mut payload = Vec::with_capacity(block_samples * 5 + 64);
                // Writing to a Vec cannot fail, nor can serialising these fields.
                if ciborium::ser::into_writer(&block, &mut payload).is_err() {
                    return;
                }
                payload
            }
        };
        out.push(Message {
            device: i,
            topic: d.topics[1].clone(),
            payload,
            garbage: false,
        });
    }
}

/// `{"value": v, "ts": t}` with `decimals` digits after the point.
fn scalar_json(value: f64, decimals: usize, t: EpochMs) -> Vec<u8> {
    format!("{{\"value\": {value:.decimals$}, \"ts\": {t}}}").into_bytes()
}
