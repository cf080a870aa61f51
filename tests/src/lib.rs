//! # testkit: what Weir's end-to-end tests and benchmarks share
//!
//! - [`modules_dir`] / [`module`]: the guest modules, built by `build.rs`.
//! - [`w1`]: the reference workload W1: a deterministic generator, and an
//!   independent reference model of its three stages (plain Rust over f64,
//!   written from `shared/WORKLOAD.md`, not from the modules' code).

use std::path::PathBuf;

pub mod w1;

/// Where the built guest modules are.
pub fn modules_dir() -> PathBuf {
    PathBuf::from(env!("WEIR_MODULES_DIR"))
}

/// The path of one built module, e.g. `module("weir_w1_enrich")`.
pub fn module(stem: &str) -> PathBuf {
    modules_dir().join(format!("{stem}.wasm"))
}
