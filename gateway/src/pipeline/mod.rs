//! Pipelines: ordered chains of sandboxed Wasm stages.
//!
//! - [`engine`]: the shared wasmi engine (fuel on, full validation at load,
//!   lazy translation at no fuel cost, strict parse limits).
//! - [`module`]: compiling a module once, checking its exports and its imports
//!   against the grants, and describing it (`weir module inspect`).
//! - [`host`]: the host side of ABI v1 (emit, input_get, emit_input, log, clock,
//!   state) and the per-store state.
//! - [`stage`]: one module at work: instances, limits, counters, quarantine.
//! - [`chain`]: a pipeline: stages in order plus the error policy.
//! - [`error`]: load and per-record errors, and their counter kinds.

pub mod chain;
pub mod engine;
pub mod error;
pub mod expect;
pub mod host;
pub mod json;
pub mod module;
pub mod stage;
pub mod wasi;

use std::fmt;

use serde::Deserialize;

pub use chain::{DeadLetter, Pipeline, PipelineOutput};
pub use engine::Runtime;
pub use error::{FailureKind, LoadError, StageError};
pub use host::Downlink;
pub use module::{CompiledModule, ModuleInfo};
pub use stage::{CarryState, Stage, StageMetrics, StageSpec};

/// A capability a module may be granted in its manifest (the stage config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// The `log` import; WASI `fd_write` to stdout and stderr.
    Log,
    /// The `clock_now_ms` import; WASI `clock_time_get`.
    Clock,
    /// The `state_get` / `state_set` / `state_delete` imports.
    State,
    /// WASI `random_get`.
    Random,
    /// The `serial_send` import: downlink commands to sensor nodes.
    Serial,
}

impl Grant {
    /// The grant's name as written in configs and in ABI.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Log => "log",
            Grant::Clock => "clock",
            Grant::State => "state",
            Grant::Random => "random",
            Grant::Serial => "serial",
        }
    }

    /// Parse a grant name.
    pub fn parse(s: &str) -> Option<Grant> {
        [
            Grant::Log,
            Grant::Clock,
            Grant::State,
            Grant::Random,
            Grant::Serial,
        ]
        .into_iter()
        .find(|g| g.as_str() == s)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How instances are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// One instance serves every record (guest globals persist); it is replaced
    /// after a trap.
    #[default]
    Reuse,
    /// A fresh instance for every record: strict isolation, slower.
    PerRecord,
}

/// What happens to a record a stage fails on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Count it and drop it.
    Drop,
    /// Pass the stage's input on to the next stage unchanged.
    Pass,
    /// Send the stage's input to dead-letter, with the error attached.
    #[default]
    DeadLetter,
}

/// Per-stage limits. All are enforced by the host; none can kill the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel per record (and for `weir_init`).
    pub fuel: u64,
    /// Cap on linear memory, bytes.
    pub memory_bytes: u64,
    /// Most records one input may produce.
    pub max_outputs: u32,
    /// Most bytes one input may produce, all outputs together.
    pub max_output_bytes: u64,
    /// Cap on the module's key/value state, bytes (keys plus values).
    pub state_bytes: u64,
    /// Wall-clock time one record may take in the stage, checked while
    /// the host works (fuel bounds the guest's own instructions).
    pub deadline: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000,
            memory_bytes: 16 << 20,
            max_outputs: 64,
            max_output_bytes: 1 << 20,
            state_bytes: 1 << 20,
            deadline: std::time::Duration::from_secs(2),
        }
    }
}
