//! Ed25519 key files for signing bundles.
//!
//! A secret key file holds one line, `weir-ed25519-secret <64 hex digits>`
//! (the 32-byte seed); a public key file, `weir-ed25519-public <64 hex
//! digits>`. A trusted key in the config is a public key file's path, or
//! the 64 hex digits themselves.

use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};

const SECRET: &str = "weir-ed25519-secret";
const PUBLIC: &str = "weir-ed25519-public";

/// A new key pair from the system's random source.
pub fn generate() -> Result<SigningKey, String> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| "the system random source failed".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The secret key file's text.
pub fn secret_text(key: &SigningKey) -> String {
    format!("{SECRET} {}\n", hex::encode(key.to_bytes()))
}

/// The public key file's text.
pub fn public_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC} {}\n", hex::encode(key.as_bytes()))
}

fn hex32(text: &str, label: &str, what: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let t = t.strip_prefix(label).map_or(t, str::trim);
    let bytes = hex::decode(t).map_err(|_| format!("not a {what} (`{label} <64 hex digits>`)"))?;
    bytes
        .try_into()
        .map_err(|_| format!("not a {what}: it must hold 32 bytes (64 hex digits)"))
}

/// Read a secret key file.
pub fn read_secret(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key {}: {e}", path.display()))?;
    if text.trim_start().starts_with(PUBLIC) {
        return Err(format!(
            "{} is a public key; signing needs the secret one (`weir keygen` wrote both)",
            path.display()
        ));
    }
    let seed =
        hex32(&text, SECRET, "secret key").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parse a public key: its file's text, or bare hex.
pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    if text.trim_start().starts_with(SECRET) {
        return Err("a secret key, where a public one belongs: use the .pub file".into());
    }
    let bytes = hex32(text, PUBLIC, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".into())
}

/// A trusted key as a config gives it: 64 hex digits, or a path to a
/// public key file (relative to `base`).
pub fn read_trusted(entry: &str, base: &Path) -> Result<VerifyingKey, String> {
    let t = entry.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return parse_public(t);
    }
    let path = if Path::new(t).is_absolute() {
        PathBuf::from(t)
    } else {
        base.join(t)
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the trusted key {}: {e}", path.display()))?;
    parse_public(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Write a key pair into `dir` as `NAME.key` (mode 0600) and `NAME.pub`.
/// Refuses to overwrite: a lost secret key cannot sign for a fleet again.
pub fn write_pair(dir: &Path, name: &str, key: &SigningKey) -> Result<(PathBuf, PathBuf), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (secret, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    for p in [&secret, &public] {
        if p.exists() {
            return Err(format!(
                "{} exists; not overwriting a key (pick another --out or --name)",
                p.display()
            ));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| format!("cannot create {}: {e}", secret.display()))?;
    f.write_all(secret_text(key).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
    std::fs::write(&public, public_text(&key.verifying_key()))
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    Ok((secret, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_text() {
        let k = generate().unwrap();
        assert_ne!(k.to_bytes(), generate().unwrap().to_bytes());
        let p = parse_public(&public_text(&k.verifying_key())).unwrap();
        assert_eq!(p, k.verifying_key());
        let bare = hex::encode(k.verifying_key().as_bytes());
        assert_eq!(
            read_trusted(&bare, Path::new("/")).unwrap(),
            k.verifying_key()
        );
        assert!(parse_public(&secret_text(&k)).is_err());
        assert!(parse_public("weir-ed25519-public abcd").is_err());
    }

    #[test]
    fn key_files_are_written_once_with_a_private_secret() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k = generate().unwrap();
        let (s, p) = write_pair(dir.path(), "weir", &k).unwrap();
        assert_eq!(
            std::fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&s).unwrap().to_bytes(), k.to_bytes());
        assert!(read_secret(&p).unwrap_err().contains("public key"));
        assert_eq!(
            read_trusted("weir.pub", dir.path()).unwrap(),
            k.verifying_key()
        );
        assert!(write_pair(dir.path(), "weir", &k).is_err());
    }
}
