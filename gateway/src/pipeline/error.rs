//! Errors: [`LoadError`] when a module is refused, [`StageError`] when one
//! record fails in a stage. Every `StageError` has a [`FailureKind`] that
//! names the counter it increments.

use std::fmt;

/// A module cannot be used: refused at load or at instantiation.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid Wasm, or beyond the engine's parse limits.
    #[error("invalid Wasm module: {0}")]
    Invalid(String),
    /// A required export is missing or has the wrong type.
    #[error("not a Weir ABI v1 module: {0}")]
    Abi(String),
    /// An import is unknown, not granted, or has the wrong signature.
    #[error("import `{module}.{name}` refused: {reason}")]
    Import {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The module's initial memory is above the stage's cap.
    #[error(
        "the module's initial memory is {initial} pages of 64 KiB ({} KiB), over the stage's memory cap of {cap_bytes} bytes ({cap} pages). Fix: raise the cap (`limits.memory = \"{} KiB\"` or more in the config, `--memory` for `weir module test`), or build the module with a smaller stack (a Rust module outside this workspace gets rustc's 1 MiB stack, 17 pages: build with `-C link-arg=-zstack-size=32768`; C: `-Wl,-z,stack-size=16384`)",
        initial * 64,
        initial * 64
    )]
    MemoryCap {
        /// The module's initial memory, in pages.
        initial: u64,
        /// The cap, in whole pages.
        cap: u64,
        /// The cap, in bytes.
        cap_bytes: u64,
    },
    /// Instantiation failed.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `weir_init` rejected the stage config or failed.
    #[error("weir_init failed: {0}")]
    Init(String),
}

/// Why one record failed in a stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// The fuel budget for the record ran out.
    #[error("out of fuel (limit {limit} per record)")]
    OutOfFuel {
        /// The budget.
        limit: u64,
    },
    /// The record's wall-clock deadline passed while the host worked.
    #[error("deadline of {limit:?} per record passed")]
    Deadline {
        /// The deadline.
        limit: std::time::Duration,
    },
    /// The module trapped.
    #[error("trap: {0}")]
    Trap(String),
    /// `weir_transform` returned a failure status, or called `fail`.
    #[error("{}", status_text(*code, name, reason.as_deref()))]
    Status {
        /// The status.
        code: i32,
        /// Its name.
        name: &'static str,
        /// Why, in the module's words: what it gave `fail`, else the last
        /// line it logged at error level (or wrote to stderr) for the record.
        reason: Option<String>,
    },
    /// The module called WASI `proc_exit`.
    #[error("module exited with code {code} (WASI proc_exit){}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Exit {
        /// The exit code.
        code: i32,
        /// The last line it logged at error level or wrote to stderr.
        reason: Option<String>,
    },
    /// A host call was refused (bad pointer, limit, malformed record, ...).
    #[error("host call `{call}` failed: {detail}")]
    HostCall {
        /// Which import.
        call: &'static str,
        /// What was wrong.
        detail: String,
        /// Counter kind.
        kind: FailureKind,
    },
    /// The input could not be placed in the module's memory.
    #[error("input of {len} bytes refused: {detail}")]
    Input {
        /// Input size.
        len: usize,
        /// What went wrong.
        detail: String,
    },
    /// A fresh instance could not be made.
    #[error("{0}")]
    Instantiate(String),
    /// The stage is quarantined; it no longer runs.
    #[error("stage is quarantined after {failures} consecutive failures")]
    Quarantined {
        /// How many failures led to quarantine.
        failures: u32,
    },
}

fn status_text(code: i32, name: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("module failed: {r} (status {code}, {name})"),
        None => format!("module returned status {code} ({name})"),
    }
}

/// Counter kinds for failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Out of fuel.
    Fuel,
    /// The record's deadline passed.
    Deadline,
    /// Trap (including a refused memory request the module could not handle).
    Trap,
    /// Failure status from the module (or `fail`).
    Status,
    /// WASI `proc_exit`.
    Exit,
    /// `max_outputs` exceeded.
    TooManyOutputs,
    /// `max_output_bytes` or state size exceeded.
    TooLarge,
    /// An emitted record was malformed.
    Malformed,
    /// A pointer or length outside memory, or another bad argument.
    BadHostCall,
    /// The input could not be placed in memory.
    Input,
    /// Instantiation failed.
    Instantiate,
    /// The stage is quarantined.
    Quarantined,
}

impl FailureKind {
    /// Every kind, in counter order.
    pub const ALL: [FailureKind; 12] = [
        FailureKind::Fuel,
        FailureKind::Deadline,
        FailureKind::Trap,
        FailureKind::Status,
        FailureKind::Exit,
        FailureKind::TooManyOutputs,
        FailureKind::TooLarge,
        FailureKind::Malformed,
        FailureKind::BadHostCall,
        FailureKind::Input,
        FailureKind::Instantiate,
        FailureKind::Quarantined,
    ];

    /// The counter name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Fuel => "fuel",
            FailureKind::Deadline => "deadline",
            FailureKind::Trap => "trap",
            FailureKind::Status => "status",
            FailureKind::Exit => "exit",
            FailureKind::TooManyOutputs => "too_many_outputs",
            FailureKind::TooLarge => "too_large",
            FailureKind::Malformed => "malformed_output",
            FailureKind::BadHostCall => "bad_host_call",
            FailureKind::Input => "input",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Quarantined => "quarantined",
        }
    }

    pub(crate) fn index(self) -> usize {
        FailureKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(0)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StageError {
    /// The counter this failure increments.
    pub fn kind(&self) -> FailureKind {
        match self {
            StageError::OutOfFuel { .. } => FailureKind::Fuel,
            StageError::Deadline { .. } => FailureKind::Deadline,
            StageError::Trap(_) => FailureKind::Trap,
            StageError::Status { .. } => FailureKind::Status,
            StageError::Exit { .. } => FailureKind::Exit,
            StageError::HostCall { kind, .. } => *kind,
            StageError::Input { .. } => FailureKind::Input,
            StageError::Instantiate(_) => FailureKind::Instantiate,
            StageError::Quarantined { .. } => FailureKind::Quarantined,
        }
    }
}
