//! # Weir: IoT gateway telemetry processor
//!
//! Records come in from sources (MQTT brokers, serial lines), run through
//! pipelines of sandboxed WebAssembly stages (wasmi, with fuel and memory
//! limits), are buffered durably (sled), and go out through sinks (a cloud
//! MQTT broker, files, stdout).
//!
//! # Layout
//! From the bottom up; each module imports only modules above it in this
//! list, never one below.
//! - [`common`]: what several components share, owned by none: sizes and
//!   durations as configs write them, TLS files and their loading, MQTT
//!   topic filters, jittered backoff, task health and heartbeats.
//! - [`record`]: the record model, CBOR (ABI v1) and JSON conversions.
//! - [`store`]: the durable buffer: per-sink queues on sled, entry framing,
//!   sync, recovery and salvage; owns `[store]`.
//! - [`pipeline`]: the Wasm runtime: engine, module checks, host imports
//!   and the WASI subset, stages (limits, quarantine, state), chains (error
//!   policy), JSON output.
//! - [`sources`]: where records come from (MQTT, serial), their
//!   acknowledgements and counters; each owns its `[[source]]` table.
//! - [`sinks`]: MQTT, file and stdout, each draining its queue; topic
//!   rendering, poison entries; owns `[[sink]]`.
//! - [`deploy`]: module push without network I/O: signed bundles and key
//!   files, their pieces over MQTT and reassembly, the gateway's checks,
//!   probation, the on-disk ledger; owns `[modules]`.
//! - [`metrics`]: the one registry every component writes to, its snapshot,
//!   `/metrics` (`[metrics]`) and the status message over MQTT (`[status]`).
//! - [`config`]: the one TOML config, made of the components' tables;
//!   `${NAME}` and `password_file` secrets; errors name the file and the key.
//! - [`routing`]: which records feed which pipeline, and building the
//!   pipelines of a config.
//! - [`topology`]: a running gateway: the intake, the pipeline threads and
//!   their group-commit window, the sync thread, supervised sources and
//!   sinks, reload, the control socket, the watchdog and the ordered stop.
//! - [`cli`]: the `weir` command line, one file per subcommand; `serve` is a
//!   thin call into the topology.
//!
//! The guest side of the ABI lives in `firmware-sdk/` (`weir-abi`, `weir-guest`)
//! and is specified in `firmware-sdk/ABI.md`; the serial wire protocol is
//! `firmware-sdk/wire` (`weir-wire`).

pub mod cli;
pub mod common;
pub mod config;
pub mod deploy;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod routing;
pub mod sim;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod topology;
