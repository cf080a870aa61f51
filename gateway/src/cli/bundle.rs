//! `weir keygen`, `weir module pack`, `weir module verify`, and
//! `weir module inspect` on a bundle.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use serde_json::json;

use super::Failure;
use crate::common::ByteSize;
use crate::deploy::bundle::{Bundle, Manifest, NeededLimits, StatePolicy, Vectors};
use crate::deploy::keys;
use crate::pipeline::{Grant, Runtime};

/// Arguments of `weir keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// The directory to write the key pair into.
    #[arg(long)]
    out: PathBuf,
    /// The files' name: NAME.key (secret, mode 0600) and NAME.pub.
    #[arg(long, default_value = "weir")]
    name: String,
}

/// Write a new Ed25519 key pair.
pub(super) fn keygen(args: KeygenArgs) -> Result<(), Failure> {
    let key = keys::generate().map_err(anyhow::Error::msg)?;
    let (secret, public) =
        keys::write_pair(&args.out, &args.name, &key).map_err(anyhow::Error::msg)?;
    println!(
        "secret key: {} (keep it off the gateways)",
        secret.display()
    );
    println!(
        "public key: {} (list it in [modules] keys on each gateway)",
        public.display()
    );
    println!("{}", keys::public_text(&key.verifying_key()).trim());
    Ok(())
}

/// Arguments of `weir module pack`.
#[derive(Args)]
pub struct PackArgs {
    /// The module.
    #[arg(long)]
    wasm: PathBuf,
    /// The manifest, TOML (see firmware-sdk/BUNDLE.md).
    #[arg(long)]
    manifest: PathBuf,
    /// The secret key to sign with (from `weir keygen`).
    #[arg(long)]
    key: PathBuf,
    /// The bundle to write.
    #[arg(long)]
    out: PathBuf,
}

/// The manifest as an author writes it: TOML, test vectors in files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    name: String,
    version: semver::Version,
    pipeline: String,
    stage: String,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    state: StatePolicy,
    tests: Option<TestsFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    fuel: Option<u64>,
    memory: Option<ByteSize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestsFile {
    /// JSON lines, one input record each.
    input: PathBuf,
    /// JSON lines, every expected output in order.
    expect: PathBuf,
    topic: Option<String>,
}

fn lines(path: &Path) -> Result<Vec<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Read a manifest file into a manifest (its `wasm_sha256` left empty).
fn read_manifest(path: &Path) -> Result<Manifest, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let m: ManifestFile = toml::from_str(&text)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let tests = match m.tests {
        Some(t) => Some(Vectors {
            input: lines(&base.join(&t.input))?,
            expect: lines(&base.join(&t.expect))?,
            topic: t.topic,
        }),
        None => None,
    };
    Ok(Manifest {
        name: m.name,
        version: m.version,
        pipeline: m.pipeline,
        stage: m.stage,
        grants: m.grants,
        limits: NeededLimits {
            fuel: m.limits.fuel,
            memory_bytes: m.limits.memory.map(|b| b.0),
        },
        state: m.state,
        wasm_sha256: String::new(),
        tests,
    })
}

/// Sign a module and its manifest into a bundle. The module is checked
/// and its test vectors run first, as a gateway would.
pub(super) fn pack(args: PackArgs) -> Result<(), Failure> {
    let manifest = read_manifest(&args.manifest)?;
    let key = keys::read_secret(&args.key).map_err(anyhow::Error::msg)?;
    let rt = Runtime::new();
    let module = rt.compile_file(&args.wasm).map_err(Failure::refused)?;
    let wasm = std::fs::read(&args.wasm)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.wasm.display()))?;
    // A .wat file is packed as the binary it compiles to.
    let wasm = if wasm.starts_with(b"\0asm") {
        wasm
    } else {
        wat::parse_bytes(&wasm)
            .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", args.wasm.display())))?
            .into_owned()
    };
    if let Some(p) = module.info().abi_problems.first() {
        return Err(Failure::refused(anyhow::anyhow!(
            "{}: {p}",
            args.wasm.display()
        )));
    }
    let needed: Vec<&str> = module.info().grants_needed.iter().copied().collect();
    for g in &needed {
        if !manifest.grants.iter().any(|m| m.as_str() == *g) {
            return Err(Failure::refused(anyhow::anyhow!(
                "the module imports what grant `{g}` gives, and the manifest does not list it (add it to `grants`)"
            )));
        }
    }
    let bytes = Bundle::pack(&manifest, &wasm, &key)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", args.manifest.display())))?;
    let b = Bundle::open(&bytes, &[key.verifying_key()]).map_err(Failure::refused)?;
    // The vectors, as the gateway runs them, with default limits.
    let target = crate::deploy::gate::Target {
        limits: crate::pipeline::Limits::default(),
        isolation: crate::pipeline::Isolation::Reuse,
        config: serde_cbor::to_vec(&toml::Table::new())?,
        quarantine_after: u32::MAX,
    };
    if let Err(r) = crate::deploy::gate::build_and_test(&rt, &b, &target) {
        return Err(Failure::refused(anyhow::anyhow!(
            "{} ({}): {}",
            args.wasm.display(),
            r.code,
            r.reason
        )));
    }
    std::fs::write(&args.out, &bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.out.display()))?;
    println!(
        "{}: {} {} for {}/{}, {} bytes, {} test vector(s), sha256 {}",
        args.out.display(),
        b.manifest.name,
        b.manifest.version,
        b.manifest.pipeline,
        b.manifest.stage,
        bytes.len(),
        b.manifest.tests.as_ref().map_or(0, |t| t.input.len()),
        b.sha256
    );
    Ok(())
}

/// Arguments of `weir module verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The bundle.
    file: PathBuf,
    /// A trusted public key (.pub file, or 64 hex digits); repeat for several.
    #[arg(long, required = true)]
    key: Vec<String>,
}

/// Check a bundle as a gateway would before anything else: layout, key,
/// signature, manifest, module hash. Exit 2 with the reason if it fails.
pub(super) fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let trusted = args
        .key
        .iter()
        .map(|k| keys::read_trusted(k, Path::new(".")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::refused(anyhow::Error::msg(e)))?;
    let b = Bundle::open(&bytes, &trusted)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", args.file.display())))?;
    println!(
        "{}: good signature by {}; {} {} for {}/{}, sha256 {}",
        args.file.display(),
        hex::encode(b.key),
        b.manifest.name,
        b.manifest.version,
        b.manifest.pipeline,
        b.manifest.stage,
        b.sha256
    );
    Ok(())
}

/// `weir module inspect` on a bundle: its manifest and signer (the
/// signature is checked against the key it carries; whether to trust
/// that key is `weir module verify`'s question).
pub(super) fn inspect_bundle(file: &Path, bytes: &[u8], as_json: bool) -> Result<(), Failure> {
    let b = Bundle::open_untrusted(bytes)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", file.display())))?;
    let m = &b.manifest;
    let module = Runtime::new().compile(&format!("{}@{}", m.name, m.version), &b.wasm);
    if as_json {
        let v = json!({
            "file": file.display().to_string(),
            "bundle_sha256": b.sha256,
            "size_bytes": bytes.len(),
            "signed_by": hex::encode(b.key),
            "manifest": m,
            "module": module.as_ref().map(|c| json!({
                "size_bytes": c.info().size_bytes,
                "abi_version": c.info().abi_version,
                "grants_needed": c.info().grants_needed,
            })).unwrap_or_else(|e| json!({"error": e.to_string()})),
        });
        println!("{v:#}");
    } else {
        println!("file:          {}", file.display());
        println!("bundle:        {} bytes, sha256 {}", bytes.len(), b.sha256);
        println!(
            "signed by:     {} (signature good for this key)",
            hex::encode(b.key)
        );
        println!("module:        {} {}", m.name, m.version);
        println!("target:        pipeline {}, stage {}", m.pipeline, m.stage);
        let grants: Vec<&str> = m.grants.iter().map(|g| g.as_str()).collect();
        println!(
            "grants:        {}",
            if grants.is_empty() {
                "none".into()
            } else {
                grants.join(", ")
            }
        );
        if let Some(f) = m.limits.fuel {
            println!("needs fuel:    {f} per record");
        }
        if let Some(mem) = m.limits.memory_bytes {
            println!("needs memory:  {mem} bytes");
        }
        println!("state on swap: {}", m.state.as_str());
        println!(
            "wasm:          {} bytes, sha256 {}",
            b.wasm.len(),
            m.wasm_sha256
        );
        println!(
            "test vectors:  {}",
            m.tests.as_ref().map_or("none".to_string(), |t| format!(
                "{} input(s), {} expected output(s)",
                t.input.len(),
                t.expect.len()
            ))
        );
        if let Err(e) = &module {
            println!("problem:       {e}");
        }
    }
    module.map(|_| ()).map_err(Failure::refused)
}
