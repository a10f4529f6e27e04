//! Integration tests: vigil against a real Mosquitto broker and a real sled store.

mod support;

mod backpressure;
mod bad_input;
mod cli;
mod clock;
mod crash;
mod demo;
mod detection;
mod disk_budget;
mod disk_full;
mod embedded_broker;
mod embedded_security;
mod formats;
mod forward;
mod forward_budget;
mod fuzz;
mod ops;
mod outbox_ids;
mod oversized;
mod package;
mod quality;
mod reconnect;
mod reload;
mod simulate;
mod store_damage;
mod streams;
mod tls;
mod waveform_memory;
