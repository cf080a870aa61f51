//! The gateway's checks on a pushed bundle after its signature: version,
//! policy, limits, compile and imports, test vectors. Each refusal has a
//! code of its own and a reason that says what to do. No I/O: the module
//! compiles and its vectors run in a scratch instance in memory.

use std::collections::BTreeMap;

use super::bundle::{Bundle, BundleError};
use super::ledger::Ledger;
use crate::pipeline::{
    CompiledModule, Grant, Isolation, Limits, Runtime, Stage, StageSpec, expect,
};
use crate::record::JsonInput;

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A short code: `unknown-key`, `bad-signature`, `not-newer`...
    pub code: &'static str,
    /// What, and what to do.
    pub reason: String,
}

impl Refusal {
    fn new(code: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

impl From<BundleError> for Refusal {
    fn from(e: BundleError) -> Refusal {
        let code = match e {
            BundleError::Format(_) => "format",
            BundleError::UnknownKey(_) => "unknown-key",
            BundleError::BadSignature => "bad-signature",
            BundleError::Manifest(_) => "manifest",
            BundleError::WasmHash { .. } => "tampered",
        };
        Refusal::new(code, e.to_string())
    }
}

/// The stage a bundle targets, as this gateway's config sets it up.
#[derive(Debug, Clone)]
pub struct Target {
    /// The stage's limits.
    pub limits: Limits,
    /// Its isolation.
    pub isolation: Isolation,
    /// Its `weir_init` config, CBOR.
    pub config: Vec<u8>,
    /// Its quarantine threshold.
    pub quarantine_after: u32,
}

/// Step 2: the version must be newer than the running one, not one rolled
/// back here, unless the push is an authorised rollback the config allows.
/// `rollback`: the push carries a valid rollback authorisation.
pub fn check_version(
    ledger: &Ledger,
    b: &Bundle,
    rollback: bool,
    allow_rollback: bool,
) -> Result<(), Refusal> {
    let v = &b.manifest.version;
    if rollback && !allow_rollback {
        return Err(Refusal::new(
            "rollback-not-allowed",
            format!(
                "the push of {v} is marked rollback, and this gateway does not take rollbacks (set [modules] allow_rollback = true)"
            ),
        ));
    }
    if let Some(a) = &ledger.active {
        if a.sha256 == b.sha256 {
            return Err(Refusal::new(
                "already-running",
                format!("{v} is already running"),
            ));
        }
        if !rollback && *v <= a.version {
            return Err(Refusal::new(
                "not-newer",
                format!(
                    "version {v} is not newer than the running {} (bump the version, or push with --rollback to go back)",
                    a.version
                ),
            ));
        }
    }
    if !rollback
        && let Some(bad) = ledger.newest_bad()
        && *v <= bad.version
    {
        return Err(Refusal::new(
            "rolled-back-before",
            format!(
                "version {} was rolled back on this gateway; {v} is not newer (push a newer version)",
                bad.version
            ),
        ));
    }
    Ok(())
}

/// Step 3a: the policy (grants per pipeline) and the stage's limits.
pub fn check_policy(
    b: &Bundle,
    allow: &BTreeMap<String, Vec<Grant>>,
    target: &Target,
) -> Result<(), Refusal> {
    let m = &b.manifest;
    let Some(allowed) = allow.get(&m.pipeline) else {
        return Err(Refusal::new(
            "policy",
            format!(
                "pipeline `{}` takes no pushed modules (list it under [modules.allow] with the grants it may give)",
                m.pipeline
            ),
        ));
    };
    if let Some(g) = m.grants.iter().find(|g| !allowed.contains(g)) {
        return Err(Refusal::new(
            "policy",
            format!(
                "grant `{g}` is not allowed in pipeline `{}` (allowed: {}; add it to [modules.allow] {})",
                m.pipeline,
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed
                        .iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                m.pipeline
            ),
        ));
    }
    if let Some(f) = m.limits.fuel
        && f > target.limits.fuel
    {
        return Err(Refusal::new(
            "limits",
            format!(
                "the module needs {f} fuel per record; stage {}/{} allows {} (raise its limits.fuel)",
                m.pipeline, m.stage, target.limits.fuel
            ),
        ));
    }
    if let Some(mem) = m.limits.memory_bytes
        && mem > target.limits.memory_bytes
    {
        return Err(Refusal::new(
            "limits",
            format!(
                "the module needs {mem} bytes of memory; stage {}/{} allows {} (raise its limits.memory)",
                m.pipeline, m.stage, target.limits.memory_bytes
            ),
        ));
    }
    Ok(())
}

/// The stage spec a bundle runs with on `target`.
pub fn spec(b: &Bundle, module: CompiledModule, target: &Target) -> StageSpec {
    StageSpec {
        label: format!("{}/{}", b.manifest.pipeline, b.manifest.stage),
        module,
        grants: b.manifest.grants.clone(),
        limits: target.limits,
        isolation: target.isolation,
        config: target.config.clone(),
        quarantine_after: u32::MAX,
    }
}

/// Step 3b and 4: compile and validate, check the imports against the
/// manifest's grants, and run the test vectors in a scratch instance.
pub fn build_and_test(
    rt: &Runtime,
    b: &Bundle,
    target: &Target,
) -> Result<CompiledModule, Refusal> {
    let name = format!("{}@{}", b.manifest.name, b.manifest.version);
    let module = rt
        .compile(&name, &b.wasm)
        .map_err(|e| Refusal::new("invalid", format!("{name}: {e}")))?;
    // Imports against grants, the memory cap, `weir_init`: as a stage.
    let mut stage = Stage::new(spec(b, module.clone(), target)).map_err(|e| {
        let code = if matches!(e, crate::pipeline::LoadError::Import { .. }) {
            "grants"
        } else {
            "invalid"
        };
        Refusal::new(code, format!("{name}: {e}"))
    })?;
    if let Some(t) = &b.manifest.tests {
        run_vectors(&mut stage, t).map_err(|e| Refusal::new("test-vectors", e))?;
    }
    Ok(module)
}

/// Run `t` through `stage`: every input must succeed and the outputs must
/// be the expected ones, in order.
pub fn run_vectors(stage: &mut Stage, t: &super::bundle::Vectors) -> Result<(), String> {
    let parser = JsonInput {
        source: "test".into(),
        topic_template: t
            .topic
            .clone()
            .unwrap_or_else(|| "sensors/{id}/telemetry".into()),
    };
    let want = expect::parse(&t.expect.join("\n"))?;
    let mut got = Vec::new();
    for (i, line) in t.input.iter().enumerate() {
        let rec = parser
            .parse(line, 0)
            .map_err(|e| format!("input {}: {e}", i + 1))?;
        let outs = stage
            .process(&rec.to_cbor())
            .map_err(|e| format!("input {} fails: {e}", i + 1))?;
        got.extend(
            outs.iter()
                .map(|o| crate::pipeline::json::record_json(None, o)),
        );
    }
    for (i, w) in want.iter().enumerate() {
        let Some(g) = got.get(i) else {
            return Err(format!(
                "output {} is missing: expected {} ({} outputs in all)",
                i + 1,
                w.value,
                got.len()
            ));
        };
        if let Some(d) = expect::differences(w, g).first() {
            return Err(format!("output {}: {d}", i + 1));
        }
    }
    if got.len() > want.len() {
        return Err(format!(
            "{} outputs, {} expected; the first extra: {}",
            got.len(),
            want.len(),
            got[want.len()]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::bundle::{Manifest, NeededLimits, StatePolicy, Vectors};
    use crate::deploy::ledger::Deployed;
    use ed25519_dalek::SigningKey;

    fn bundle(version: (u64, u64, u64), wat: &str, tests: Option<Vectors>) -> Bundle {
        let key = SigningKey::from_bytes(&[1; 32]);
        let m = Manifest {
            name: "m".into(),
            version: semver::Version::new(version.0, version.1, version.2),
            pipeline: "p".into(),
            stage: "s".into(),
            grants: vec![],
            limits: NeededLimits::default(),
            state: StatePolicy::Keep,
            wasm_sha256: String::new(),
            tests,
        };
        let wasm = wat::parse_str(wat).unwrap();
        Bundle::open(
            &Bundle::pack(&m, &wasm, &key).unwrap(),
            &[key.verifying_key()],
        )
        .unwrap()
    }

    /// A module that passes every record through.
    const PASS: &str = r#"(module
      (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "weir_abi_v1"))
      (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "weir_transform") (param i32 i32) (result i32)
        (drop (call $emit (local.get 0) (local.get 1))) (i32.const 0)))"#;

    fn target() -> Target {
        Target {
            limits: Limits::default(),
            isolation: Isolation::Reuse,
            config: serde_cbor::to_vec(&toml::Table::new()).unwrap(),
            quarantine_after: 10,
        }
    }

    #[test]
    fn versions_must_go_up_unless_an_allowed_rollback() {
        let v1 = bundle((1, 0, 0), PASS, None);
        let v2 = bundle((2, 0, 0), "(module)", None);
        let none = Ledger::default();
        assert!(check_version(&none, &v1, false, false).is_ok());
        let running2 = Ledger {
            active: Some(Deployed::of(&v2, 0)),
            ..Ledger::default()
        };
        assert_eq!(
            check_version(&running2, &v1, false, true).unwrap_err().code,
            "not-newer"
        );
        assert_eq!(
            check_version(&running2, &v2, false, true).unwrap_err().code,
            "already-running"
        );
        assert_eq!(
            check_version(&running2, &v1, true, false).unwrap_err().code,
            "rollback-not-allowed"
        );
        assert!(check_version(&running2, &v1, true, true).is_ok());
        // v2 was rolled back: refused again until a newer one comes.
        let after = Ledger {
            active: Some(Deployed::of(&v1, 0)),
            bad: vec![Deployed::of(&v2, 0)],
            ..Ledger::default()
        };
        assert_eq!(
            check_version(&after, &v2, false, false).unwrap_err().code,
            "rolled-back-before"
        );
        let v3 = bundle((3, 0, 0), PASS, None);
        assert!(check_version(&after, &v3, false, false).is_ok());
    }

    #[test]
    fn policy_and_limits_are_checked_against_the_config() {
        let mut b = bundle((1, 0, 0), PASS, None);
        let mut allow = BTreeMap::new();
        assert_eq!(
            check_policy(&b, &allow, &target()).unwrap_err().code,
            "policy"
        );
        allow.insert("p".to_string(), vec![Grant::Log]);
        assert!(check_policy(&b, &allow, &target()).is_ok());
        b.manifest.grants = vec![Grant::State];
        let e = check_policy(&b, &allow, &target()).unwrap_err();
        assert!(e.reason.contains("`state`"), "{e:?}");
        b.manifest.grants = vec![];
        b.manifest.limits.fuel = Some(Limits::default().fuel + 1);
        assert_eq!(
            check_policy(&b, &allow, &target()).unwrap_err().code,
            "limits"
        );
    }

    #[test]
    fn imports_beyond_the_grants_invalid_modules_and_wrong_vectors_are_refused() {
        let rt = Runtime::new();
        let logs = PASS.replace(
            r#"(import "weir" "emit""#,
            r#"(import "weir" "log" (func $log (param i32 i32 i32) (result i32)))
               (import "weir" "emit""#,
        );
        let refusal = |b: &Bundle| build_and_test(&rt, b, &target()).err().expect("refused");
        let e = refusal(&bundle((1, 0, 0), &logs, None));
        assert_eq!(e.code, "grants", "{e:?}");
        let e = refusal(&bundle((1, 0, 0), "(module)", None));
        assert_eq!(e.code, "invalid", "{e:?}");
        let vectors = |expect: &str| Vectors {
            input: vec![r#"{"id":"s1","t":1}"#.into()],
            expect: vec![expect.into()],
            topic: None,
        };
        assert!(
            build_and_test(
                &rt,
                &bundle((1, 0, 0), PASS, Some(vectors(r#"{"id":"s1","t":1}"#))),
                &target()
            )
            .is_ok()
        );
        let e = refusal(&bundle(
            (1, 0, 0),
            PASS,
            Some(vectors(r#"{"id":"s1","t":2}"#)),
        ));
        assert_eq!(e.code, "test-vectors", "{e:?}");
    }
}
