//! What a gateway has deployed, kept on disk so a restart runs the same
//! versions without the broker: per module, the active and the previous
//! bundle with their verification result, the versions rolled back, and
//! the last results.
//!
//! ```text
//! <dir>/<module>/ledger.json       this module's Ledger
//! <dir>/<module>/<sha256>.bundle   the active and the previous bundle
//! ```
//!
//! Every write goes to a temporary file that is synced and renamed over
//! the old one, then the directory is synced: a power cut leaves the old
//! ledger or the new one, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::bundle::{Bundle, StatePolicy};
use crate::pipeline::Grant;

/// How many results a module keeps.
pub const HISTORY: usize = 16;

/// Codes of refusals that say nothing about the bundle itself (cut short
/// in transit, superseded while waiting, no room on disk): the same push
/// may come again and is then judged anew.
pub const TRANSIENT: &[&str] = &["partial", "superseded", "disk"];

/// A deployed bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    /// The bundle's SHA-256 (its identity).
    pub sha256: String,
    /// The module's version.
    pub version: semver::Version,
    /// The pipeline and stage it runs in.
    pub pipeline: String,
    /// See `pipeline`.
    pub stage: String,
    /// The module's SHA-256.
    pub wasm_sha256: String,
    /// Its grants.
    pub grants: Vec<Grant>,
    /// The key that signed it, hex.
    pub key: String,
    /// When it passed verification, ms since the epoch.
    pub verified_ms: u64,
    /// The push that brought it (see `bundle::push_id`).
    #[serde(default)]
    pub push: String,
}

impl Deployed {
    /// The record of `b`, verified at `now_ms`.
    pub fn of(b: &Bundle, now_ms: u64) -> Deployed {
        Deployed {
            sha256: b.sha256.clone(),
            version: b.manifest.version.clone(),
            pipeline: b.manifest.pipeline.clone(),
            stage: b.manifest.stage.clone(),
            wasm_sha256: b.manifest.wasm_sha256.clone(),
            grants: b.manifest.grants.clone(),
            key: hex::encode(b.key),
            verified_ms: now_ms,
            push: b.sha256.clone(),
        }
    }
}

/// A push's terminal result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Swapped in and through probation.
    Applied,
    /// Not taken; the running version goes on.
    Refused,
    /// Swapped in, failed probation, swapped back.
    RolledBack,
}

impl Outcome {
    /// As status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled-back",
        }
    }
}

/// One push's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Result_ {
    /// The bundle's SHA-256.
    pub sha256: String,
    /// The push (see `bundle::push_id`; the bundle's SHA-256 unless a rollback).
    #[serde(default)]
    pub push: String,
    /// Its version, when the bundle could be read.
    pub version: Option<semver::Version>,
    /// What happened.
    pub outcome: Outcome,
    /// A short code for the reason (`unknown-key`, `not-newer`...).
    pub code: String,
    /// The reason in words.
    pub reason: String,
    /// The version that ran before (and runs again after a refusal or a
    /// rollback); none: the config's own module.
    pub previous: Option<semver::Version>,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// One module's deployments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// What runs now (none: the config's module).
    pub active: Option<Deployed>,
    /// The active one is still on probation (a restart resumes it).
    #[serde(default)]
    pub on_probation: bool,
    /// The state policy the active one was swapped in with.
    #[serde(default)]
    pub state: StatePolicy,
    /// What ran before it (a rollback returns to it).
    pub previous: Option<Deployed>,
    /// Versions rolled back here: refused until a newer one comes.
    #[serde(default)]
    pub bad: Vec<Deployed>,
    /// The last results, newest last.
    #[serde(default)]
    pub results: Vec<Result_>,
}

impl Ledger {
    /// The result of push `push`, if it has one.
    pub fn result_for(&self, push: &str) -> Option<&Result_> {
        self.results
            .iter()
            .rev()
            .find(|r| r.push == push || (r.push.is_empty() && r.sha256 == push))
    }

    /// Record a result, keeping the last [`HISTORY`].
    pub fn push_result(&mut self, r: Result_) {
        self.results.push(r);
        let n = self.results.len();
        if n > HISTORY {
            self.results.drain(..n - HISTORY);
        }
    }

    /// The newest version rolled back here.
    pub fn newest_bad(&self) -> Option<&Deployed> {
        self.bad.iter().max_by(|a, b| a.version.cmp(&b.version))
    }
}

/// The module directories under `dir`, and their ledgers.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

impl Disk {
    /// The ledgers under `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Disk {
        Disk { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn module_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every module with a ledger.
    pub fn modules(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("ledger.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Module `name`'s ledger (empty if it has none).
    pub fn load(&self, name: &str) -> Result<Ledger, String> {
        let p = self.module_dir(name).join("ledger.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: damaged ({e}); move it aside to start this module afresh",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(io(&p, e)),
        }
    }

    /// Write `bytes` to `path` atomically and durably.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        let dir = path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(dir, e))
    }

    /// Keep bundle `bytes` (its SHA-256 `sha`) for module `name`.
    pub fn save_bundle(&self, name: &str, sha: &str, bytes: &[u8]) -> Result<(), String> {
        self.write_atomic(&self.module_dir(name).join(format!("{sha}.bundle")), bytes)
    }

    /// Save `ledger`, then remove bundles it no longer names.
    pub fn save(&self, name: &str, ledger: &Ledger) -> Result<(), String> {
        let dir = self.module_dir(name);
        let text = serde_json::to_vec_pretty(ledger).expect("a ledger serializes");
        self.write_atomic(&dir.join("ledger.json"), &text)?;
        let keep: Vec<String> = [&ledger.active, &ledger.previous]
            .into_iter()
            .flatten()
            .map(|d| format!("{}.bundle", d.sha256))
            .collect();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.ends_with(".bundle") && !keep.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Read and verify a kept bundle again, against today's trusted keys.
    pub fn open_bundle(
        &self,
        name: &str,
        d: &Deployed,
        trusted: &[VerifyingKey],
    ) -> Result<Bundle, String> {
        let p = self.module_dir(name).join(format!("{}.bundle", d.sha256));
        let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
        let b = Bundle::open(&bytes, trusted).map_err(|e| format!("{}: {e}", p.display()))?;
        if b.sha256 != d.sha256 {
            return Err(format!(
                "{}: its SHA-256 is {}, not the ledger's (damaged on disk)",
                p.display(),
                b.sha256
            ));
        }
        Ok(b)
    }

    /// Every module's ledger, by name; a damaged one is skipped with its
    /// reason.
    pub fn load_all(&self) -> (BTreeMap<String, Ledger>, Vec<String>) {
        let (mut ok, mut bad) = (BTreeMap::new(), Vec::new());
        for name in self.modules() {
            match self.load(&name) {
                Ok(l) => {
                    ok.insert(name, l);
                }
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::bundle::{Manifest, NeededLimits};

    #[test]
    fn a_ledger_and_its_bundles_survive_a_reload_and_old_bundles_go() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path().join("modules"));
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let m = Manifest {
            name: "m".into(),
            version: semver::Version::new(1, 0, 0),
            pipeline: "p".into(),
            stage: "s".into(),
            grants: vec![],
            limits: NeededLimits::default(),
            state: StatePolicy::Keep,
            wasm_sha256: String::new(),
            tests: None,
        };
        let bytes = Bundle::pack(&m, b"\0asm\x01\0\0\0", &key).unwrap();
        let b = Bundle::open(&bytes, &[key.verifying_key()]).unwrap();
        disk.save_bundle("m", &b.sha256, &bytes).unwrap();
        disk.save_bundle("m", "stale", b"x").unwrap();
        let mut l = Ledger {
            active: Some(Deployed::of(&b, 1)),
            ..Ledger::default()
        };
        for i in 0..20 {
            l.push_result(Result_ {
                sha256: format!("{i}"),
                push: format!("{i}"),
                version: None,
                outcome: Outcome::Refused,
                code: "x".into(),
                reason: "y".into(),
                previous: None,
                at_ms: i,
            });
        }
        disk.save("m", &l).unwrap();
        assert_eq!(l.results.len(), HISTORY);
        assert_eq!(disk.load("m").unwrap(), l);
        assert_eq!(disk.modules(), ["m"]);
        assert!(!dir.path().join("modules/m/stale.bundle").exists());
        let again = disk
            .open_bundle("m", l.active.as_ref().unwrap(), &[key.verifying_key()])
            .unwrap();
        assert_eq!(again.sha256, b.sha256);
        // A key no longer trusted: the kept bundle is refused.
        let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(
            disk.open_bundle("m", l.active.as_ref().unwrap(), &[other])
                .is_err()
        );
        // A damaged ledger says so, and the others still load.
        std::fs::create_dir_all(dir.path().join("modules/n")).unwrap();
        std::fs::write(dir.path().join("modules/n/ledger.json"), b"{junk").unwrap();
        let (ok, bad) = disk.load_all();
        assert_eq!(ok.len(), 1);
        assert!(bad[0].contains("damaged"), "{bad:?}");
    }
}
