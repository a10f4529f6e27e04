//! vigil: an edge agent for predictive maintenance on industrial IoT gateways.
//!
//! Data flows through the stages in this order (see `app` for the wiring):
//! ingest (local MQTT broker → readings) → store (durable sled log).

pub mod app;
pub mod config;
pub mod ingest;
pub mod model;
pub mod store;

mod backoff;
mod tls;
