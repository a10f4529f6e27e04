//! vigil: an edge agent for predictive maintenance on industrial IoT gateways.
//!
//! Data flows through the stages in this order (see `app` for the wiring):
//! ingest (local MQTT broker → readings) → store (durable sled log) →
//! detect (windows, features, detectors → alerts and aggregates in the outbox)
//! → forward (outbox → upstream MQTT broker, deleted on PUBACK).
//! `backtest` plays recorded data through the same detection engine; `broker`
//! is the embedded MQTT broker for gateways without one.

pub mod app;
pub mod backtest;
pub mod broker;
pub mod config;
pub mod demo;
pub mod detect;
pub mod forward;
pub mod ingest;
pub mod model;
pub mod ops;
pub mod simulate;
pub mod store;

mod backoff;
mod link;
mod tls;
