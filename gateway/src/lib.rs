//! # Weir: IoT gateway telemetry processor
//!
//! Records come in from sources (MQTT brokers, serial lines), run through
//! pipelines of sandboxed WebAssembly stages (wasmi, with fuel and memory
//! limits), and go out as JSON lines (durable sinks come next).
//!
//! # Layout
//! - [`record`]: the record model, CBOR (ABI v1) and JSON conversions.
//! - [`config`]: the one TOML config; errors name the file and the key.
//! - [`common`]: what several components share (TLS files and their loading).
//! - [`pipeline`]: the Wasm runtime and pipelines:
//!   engine, module checks, host imports, stages (limits, quarantine), chains
//!   (error policy).
//! - [`sources`]: where records come from (MQTT, serial), and their acknowledgements.
//! - [`routing`]: which records feed which pipeline (sources, topic filters).
//! - [`cli`]: the `weir` command line, one file per subcommand.
//!
//! The guest side of the ABI lives in `firmware-sdk/` (`weir-abi`, `weir-guest`)
//! and is specified in `firmware-sdk/ABI.md`; the serial wire protocol is
//! `firmware-sdk/wire` (`weir-wire`).

pub mod cli;
pub mod common;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod routing;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod topology;
