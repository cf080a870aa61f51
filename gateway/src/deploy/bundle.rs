//! The module bundle: a transform module with its manifest, signed with
//! Ed25519. The format is specified in `firmware-sdk/BUNDLE.md`, so a tool
//! in any language can make one; this file is its reference.
//!
//! ```text
//! "WEIRBNDL"            8 bytes, magic
//! format version        1 byte, 1
//! manifest length       4 bytes, big-endian
//! manifest              UTF-8 JSON (see Manifest)
//! wasm length           4 bytes, big-endian
//! wasm                  the module
//! public key            32 bytes, Ed25519
//! signature             64 bytes, Ed25519 over every byte before the public key
//! ```
//!
//! The signature covers the exact bytes, so the encoding is canonical: one
//! manifest text and one module give one signed message. Opening a bundle
//! ([`Bundle::open`]) checks, in order: the layout, that the key is
//! trusted, the signature, the manifest, and the module's SHA-256 against
//! the manifest's. Each has its own [`BundleError`].

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::pipeline::Grant;

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"WEIRBNDL";
/// The format this code writes and reads.
pub const FORMAT: u8 = 1;
/// Longest module name (it is an MQTT topic level and a directory name).
pub const MAX_NAME: usize = 64;

/// Whether `s` is a valid module name: 1 to [`MAX_NAME`] of `a-z`, `0-9`,
/// `.`, `_`, `-`, not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !s.starts_with('.')
}

/// What to do with the stage's key/value state on swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatePolicy {
    /// The new version takes the old one's state.
    #[default]
    Keep,
    /// The new version starts empty.
    Reset,
}

impl StatePolicy {
    /// As the manifest writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            StatePolicy::Keep => "keep",
            StatePolicy::Reset => "reset",
        }
    }
}

/// The limits a module says it needs; the gateway refuses it when they
/// exceed the stage's configured limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeededLimits {
    /// Fuel per record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Test vectors: input records and the outputs they must give, as
/// `weir module test --expect` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vectors {
    /// Input records, one JSON text each (a bare payload or a whole record).
    pub input: Vec<String>,
    /// Every expected output in order, one JSON text each.
    pub expect: Vec<String>,
    /// Topic for bare payloads; `{field}` takes the payload's field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// What a bundle says about its module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The module's name: its MQTT topic level, `[a-z0-9._-]`.
    pub name: String,
    /// Semantic version; a gateway takes only newer ones (unless rollback).
    pub version: semver::Version,
    /// The pipeline it runs in.
    pub pipeline: String,
    /// The stage of that pipeline it replaces.
    pub stage: String,
    /// Capabilities it needs.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Limits it needs.
    #[serde(default)]
    pub limits: NeededLimits,
    /// Keep or reset the stage's state on swap.
    #[serde(default)]
    pub state: StatePolicy,
    /// SHA-256 of the wasm bytes, lowercase hex.
    pub wasm_sha256: String,
    /// Test vectors the gateway runs before the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Vectors>,
}

impl Manifest {
    /// Problems with the fields, in words (empty: fine).
    pub fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "name `{}` must be 1 to {MAX_NAME} of a-z, 0-9, `.`, `_`, `-`, not starting with `.`",
                self.name
            ));
        }
        if self.pipeline.is_empty() || self.stage.is_empty() {
            return Err("`pipeline` and `stage` must name the stage the module replaces".into());
        }
        if self.wasm_sha256.len() != 64 || hex::decode(&self.wasm_sha256).is_err() {
            return Err("`wasm_sha256` must be 64 hex digits".into());
        }
        if let Some(t) = &self.tests {
            for (i, line) in t.input.iter().chain(&t.expect).enumerate() {
                serde_json::from_str::<serde_json::Value>(line)
                    .map_err(|e| format!("test vector {}: not JSON: {e}", i + 1))?;
            }
        }
        Ok(())
    }

    /// The canonical manifest text: JSON, keys in the order of this struct,
    /// no whitespace.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serializes")
    }
}

/// Why a bundle cannot be opened. Each is a refusal reason of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle, or cut short.
    #[error("not a valid bundle: {0}")]
    Format(String),
    /// Signed with a key the gateway does not trust.
    #[error("signed with an unknown key {0} (add its .pub to [modules] keys to trust it)")]
    UnknownKey(String),
    /// The signature does not match the bytes: tampered, or signed wrong.
    #[error(
        "bad signature: the bundle's bytes do not match its signature (tampered, or damaged in transit)"
    )]
    BadSignature,
    /// The manifest is not valid.
    #[error("bad manifest: {0}")]
    Manifest(String),
    /// The module's bytes are not the ones the manifest names.
    #[error("the module's SHA-256 {got} is not the manifest's {want}")]
    WasmHash {
        /// The manifest's.
        want: String,
        /// The module's.
        got: String,
    },
}

/// An opened bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    /// The module.
    pub wasm: Vec<u8>,
    /// The key that signed it.
    pub key: [u8; 32],
    /// SHA-256 of the whole bundle, lowercase hex: its identity.
    pub sha256: String,
}

/// The parts of a bundle, before any check beyond the layout.
struct Parts<'a> {
    manifest: &'a [u8],
    wasm: &'a [u8],
    signed: &'a [u8],
    key: [u8; 32],
    signature: [u8; 64],
}

fn split(bytes: &[u8]) -> Result<Parts<'_>, BundleError> {
    let short = || BundleError::Format(format!("cut short at {} bytes", bytes.len()));
    if bytes.len() < 9 || &bytes[..8] != MAGIC {
        return Err(BundleError::Format(
            "it does not start with WEIRBNDL (a .wasm file? pack it with `weir module pack`)"
                .into(),
        ));
    }
    if bytes[8] != FORMAT {
        return Err(BundleError::Format(format!(
            "format {} (this weir reads format {FORMAT}; upgrade weir)",
            bytes[8]
        )));
    }
    let mut at = 9;
    let field = |at: &mut usize| -> Result<&[u8], BundleError> {
        let len = bytes.get(*at..*at + 4).ok_or_else(short)?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let start = *at + 4;
        let end = start.checked_add(len).ok_or_else(short)?;
        let f = bytes.get(start..end).ok_or_else(short)?;
        *at = end;
        Ok(f)
    };
    let manifest = field(&mut at)?;
    let wasm = field(&mut at)?;
    let rest = &bytes[at..];
    if rest.len() != 96 {
        return Err(BundleError::Format(format!(
            "{} bytes after the module, expected 96 (public key and signature)",
            rest.len()
        )));
    }
    Ok(Parts {
        manifest,
        wasm,
        signed: &bytes[..at],
        key: rest[..32].try_into().expect("32 bytes"),
        signature: rest[32..].try_into().expect("64 bytes"),
    })
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

impl Bundle {
    /// Make a bundle: `manifest` (whose `wasm_sha256` is set here) and
    /// `wasm`, signed with `key`.
    pub fn pack(manifest: &Manifest, wasm: &[u8], key: &SigningKey) -> Result<Vec<u8>, String> {
        let mut manifest = manifest.clone();
        manifest.wasm_sha256 = sha256_hex(wasm);
        manifest.check()?;
        let m = manifest.to_bytes();
        let len = |n: usize| {
            u32::try_from(n)
                .map(u32::to_be_bytes)
                .map_err(|_| "larger than 4 GiB".to_string())
        };
        let mut out = Vec::with_capacity(9 + 8 + m.len() + wasm.len() + 96);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&len(m.len())?);
        out.extend_from_slice(&m);
        out.extend_from_slice(&len(wasm.len())?);
        out.extend_from_slice(wasm);
        let signature = key.sign(&out);
        out.extend_from_slice(key.verifying_key().as_bytes());
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// Open `bytes` as a gateway does: layout, trusted key, signature,
    /// manifest, module hash, in that order.
    pub fn open(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<Bundle, BundleError> {
        let parts = split(bytes)?;
        let key = trusted
            .iter()
            .find(|k| k.as_bytes() == &parts.key)
            .ok_or_else(|| BundleError::UnknownKey(hex::encode(parts.key)))?;
        key.verify(parts.signed, &Signature::from_bytes(&parts.signature))
            .map_err(|_| BundleError::BadSignature)?;
        Self::finish(bytes, parts)
    }

    /// Open `bytes` checking the signature against the key the bundle
    /// carries, without deciding whether to trust it (`weir module inspect`).
    pub fn open_untrusted(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let parts = split(bytes)?;
        let key = VerifyingKey::from_bytes(&parts.key).map_err(|_| BundleError::BadSignature)?;
        key.verify(parts.signed, &Signature::from_bytes(&parts.signature))
            .map_err(|_| BundleError::BadSignature)?;
        Self::finish(bytes, parts)
    }

    fn finish(bytes: &[u8], parts: Parts<'_>) -> Result<Bundle, BundleError> {
        let manifest: Manifest = serde_json::from_slice(parts.manifest)
            .map_err(|e| BundleError::Manifest(e.to_string()))?;
        manifest.check().map_err(BundleError::Manifest)?;
        let got = sha256_hex(parts.wasm);
        if got != manifest.wasm_sha256 {
            return Err(BundleError::WasmHash {
                want: manifest.wasm_sha256.clone(),
                got,
            });
        }
        Ok(Bundle {
            manifest,
            wasm: parts.wasm.to_vec(),
            key: parts.key,
            sha256: sha256_hex(bytes),
        })
    }

    /// Whether `bytes` start like a bundle (else: a bare module).
    pub fn looks_like(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }
}

/// What a rollback authorisation signs: the domain, then the bundle's hash.
pub fn rollback_message(bundle_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = b"WEIR-ROLLBACK-v1".to_vec();
    m.extend_from_slice(bundle_sha256);
    m
}

/// A push's identity, by which gateways report its result: the bundle's
/// SHA-256; for a rollback push, that plus its authorisation (the same
/// bundle pushed again as a rollback is another push).
pub fn push_id(bundle_sha256: &str, rollback_signature: Option<&[u8; 64]>) -> String {
    match rollback_signature {
        None => bundle_sha256.to_string(),
        Some(sig) => format!("{bundle_sha256}+rollback-{}", &sha256_hex(sig)[..16]),
    }
}

/// Sign a rollback authorisation for bundle `bytes` with `key`: the
/// signer's public key and the signature over [`rollback_message`].
pub fn authorise_rollback(bytes: &[u8], key: &SigningKey) -> ([u8; 32], [u8; 64]) {
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let sig = key.sign(&rollback_message(&sha));
    (key.verifying_key().to_bytes(), sig.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "range-filter".into(),
            version: semver::Version::new(1, 2, 0),
            pipeline: "w1".into(),
            stage: "range".into(),
            grants: vec![Grant::Log],
            limits: NeededLimits::default(),
            state: StatePolicy::Keep,
            wasm_sha256: String::new(),
            tests: None,
        }
    }

    #[test]
    fn a_packed_bundle_opens_with_its_key_only() {
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let b = Bundle::pack(&manifest(), &wasm, &key(1)).unwrap();
        let opened = Bundle::open(&b, &[key(1).verifying_key()]).unwrap();
        assert_eq!(opened.wasm, wasm);
        assert_eq!(opened.manifest.version, semver::Version::new(1, 2, 0));
        assert_eq!(opened.manifest.wasm_sha256, sha256_hex(&wasm));
        assert_eq!(opened.sha256, sha256_hex(&b));
        assert!(matches!(
            Bundle::open(&b, &[key(2).verifying_key()]),
            Err(BundleError::UnknownKey(_))
        ));
        // Packing is deterministic: the same inputs give the same bytes.
        assert_eq!(b, Bundle::pack(&manifest(), &wasm, &key(1)).unwrap());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let wasm = b"\0asm\x01\0\0\0".to_vec();
        let b = Bundle::pack(&manifest(), &wasm, &key(1)).unwrap();
        let trusted = [key(1).verifying_key()];
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            let e = Bundle::open(&t, &trusted).unwrap_err();
            // Inside the signed part or the signature: a bad signature
            // (or a layout that no longer parses); the key: unknown.
            let key_at = b.len() - 96..b.len() - 64;
            if key_at.contains(&i) {
                assert!(matches!(e, BundleError::UnknownKey(_)), "byte {i}: {e}");
            } else {
                assert!(
                    matches!(e, BundleError::BadSignature | BundleError::Format(_)),
                    "byte {i}: {e}"
                );
            }
        }
    }

    #[test]
    fn truncation_and_junk_are_format_errors() {
        let b = Bundle::pack(&manifest(), b"\0asm\x01\0\0\0", &key(1)).unwrap();
        let trusted = [key(1).verifying_key()];
        for n in 0..b.len() {
            assert!(matches!(
                Bundle::open(&b[..n], &trusted),
                Err(BundleError::Format(_))
            ));
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            Bundle::open(&long, &trusted),
            Err(BundleError::Format(_))
        ));
        assert!(matches!(
            Bundle::open(b"\0asm\x01\0\0\0", &trusted),
            Err(BundleError::Format(_))
        ));
    }

    #[test]
    fn a_signed_manifest_that_lies_about_the_module_is_refused() {
        // Signed by a trusted key, but the manifest names other bytes: a
        // tool that hashed the wrong file.
        let mut m = manifest();
        m.wasm_sha256 = sha256_hex(b"other");
        let wasm = b"\0asm\x01\0\0\0";
        let mb = m.to_bytes();
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend_from_slice(&(mb.len() as u32).to_be_bytes());
        out.extend_from_slice(&mb);
        out.extend_from_slice(&(wasm.len() as u32).to_be_bytes());
        out.extend_from_slice(wasm);
        let sig = key(1).sign(&out);
        out.extend_from_slice(key(1).verifying_key().as_bytes());
        out.extend_from_slice(&sig.to_bytes());
        assert!(matches!(
            Bundle::open(&out, &[key(1).verifying_key()]),
            Err(BundleError::WasmHash { .. })
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "UPPER", "a/b", "a+b", "#", ".hidden", &"x".repeat(65)] {
            let mut m = manifest();
            m.name = name.into();
            assert!(Bundle::pack(&m, b"x", &key(1)).is_err(), "{name}");
        }
    }
}
