//! `[modules]`: module pushes over MQTT.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::common::ByteSize;
use crate::pipeline::Grant;

/// `[modules]`: take signed module bundles pushed over MQTT.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesConfig {
    /// The MQTT sink whose broker carries pushes (default: the first MQTT
    /// sink). It connects as that sink's client id plus `-modules`.
    pub sink: Option<String>,
    /// Topic prefix: pushes come on `<prefix>/<gateway-id>/modules/<name>`
    /// and `<prefix>/fleet/<group>/modules/<name>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The fleet groups this gateway belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Trusted public keys: `.pub` file paths (relative to the config) or
    /// 64 hex digits. A bundle signed by any other key is refused.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The policy: per pipeline, the grants a pushed module may have. A
    /// pipeline not listed takes no pushed modules.
    #[serde(default)]
    pub allow: BTreeMap<String, Vec<Grant>>,
    /// Take pushes marked rollback (an older version, authorised by a
    /// trusted key).
    #[serde(default)]
    pub allow_rollback: bool,
    /// Probation after a swap: this many records through the stage...
    #[serde(default = "default_probation_records")]
    pub probation_records: u64,
    /// ...or this long, whichever comes first.
    #[serde(
        default = "default_probation",
        deserialize_with = "crate::common::duration::duration"
    )]
    pub probation: Duration,
    /// Fraction of records a new version may fail during probation
    /// before it is rolled back.
    #[serde(default = "default_failure_rate")]
    pub max_failure_rate: f64,
    /// Largest bundle taken.
    #[serde(default = "default_max_bundle")]
    pub max_bundle: ByteSize,
    /// How long the pieces of one bundle may take to arrive.
    #[serde(
        default = "default_assembly",
        deserialize_with = "crate::common::duration::duration"
    )]
    pub assembly_timeout: Duration,
    /// Where the active and previous bundles are kept (default: `modules`
    /// beside the store).
    pub dir: Option<PathBuf>,
}

fn default_prefix() -> String {
    "weir".into()
}
fn default_probation_records() -> u64 {
    1000
}
fn default_probation() -> Duration {
    Duration::from_secs(60)
}
fn default_failure_rate() -> f64 {
    0.05
}
fn default_max_bundle() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_assembly() -> Duration {
    Duration::from_secs(60)
}

/// Whether `s` can be one MQTT topic level.
pub fn topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#'])
}

impl ModulesConfig {
    /// The topic filters this gateway subscribes to.
    pub fn filters(&self, gateway: &str) -> Vec<String> {
        let mut f = vec![format!("{}/{gateway}/modules/#", self.prefix)];
        for g in &self.groups {
            f.push(format!("{}/fleet/{g}/modules/#", self.prefix));
        }
        f
    }

    /// Problems in words: `(key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let e = |k: &str, m: String| Err((format!("modules.{k}"), m));
        if !self.prefix.split('/').all(topic_level) {
            return e("prefix", "must be topic levels without '+' or '#'".into());
        }
        for g in &self.groups {
            if !topic_level(g) || g == "fleet" {
                return e(
                    "groups",
                    format!("`{g}` must be one topic level (no '/', '+', '#')"),
                );
            }
        }
        if self.keys.is_empty() {
            return e(
                "keys",
                "list at least one trusted public key (`weir keygen` makes a pair)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.max_failure_rate) {
            return e("max_failure_rate", "must be between 0 and 1".into());
        }
        if self.probation_records == 0 || self.probation.is_zero() {
            return e(
                "probation",
                "probation needs at least one record and a non-zero time".into(),
            );
        }
        Ok(())
    }
}
