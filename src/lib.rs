//! vigil: an edge agent for predictive maintenance on industrial IoT gateways.
//!
//! Data flows through the stages in this order (see `app` for the wiring):
//! ingest (local MQTT broker → readings) → store (durable sled log) →
//! detect (windows, features, detectors → alerts and aggregates in the outbox)
//! → forward (outbox → upstream MQTT broker, deleted on PUBACK).
//! `backtest` plays recorded data through the same detection engine.

pub mod app;
pub mod backtest;
pub mod config;
pub mod detect;
pub mod forward;
pub mod ingest;
pub mod model;
pub mod ops;
pub mod store;

mod backoff;
mod link;
mod tls;
