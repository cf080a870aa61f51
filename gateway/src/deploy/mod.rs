//! Module push: signed bundles ([`bundle`], [`keys`]), their delivery over
//! MQTT in pieces ([`envelope`]), the gateway's checks ([`gate`]),
//! probation after a swap ([`probation`]), and what a gateway keeps on disk
//! ([`ledger`]); `[modules]` is [`config`]. All of it is free of network
//! I/O; the agent that drives it on a running gateway is
//! `topology::push`, the commands are `cli::module` and `cli::fleet`.

pub mod bundle;
pub mod config;
pub mod envelope;
pub mod gate;
pub mod keys;
pub mod ledger;
pub mod probation;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use bundle::StatePolicy;
pub use config::ModulesConfig;

use crate::pipeline::Grant;

/// A pushed module in place of a configured stage's.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The module's name and version, for logs and status.
    pub label: String,
    /// The bundle's version.
    pub version: String,
    /// The module.
    pub wasm: Arc<[u8]>,
    /// Its grants (the manifest's).
    pub grants: Vec<Grant>,
}

/// Every pushed module in effect, by `(pipeline, stage)`.
pub type Overlay = BTreeMap<(String, String), Pushed>;
