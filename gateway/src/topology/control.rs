//! The control socket: a Unix socket beside the store (`weir.sock` in the
//! state directory, mode 0660, owned by the service user) that answers
//! `weir status`, `weir top` and `weir store inspect` while the daemon
//! runs.
//!
//! One request per connection: a command word on one line (`status` or
//! `inspect`), answered with one JSON document, then closed. A request that
//! is slow, long or unknown gets an error object, never a hang.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::metrics::Registry;

/// Longest request line, and the longest wait for it.
const MAX_REQUEST: u64 = 256;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind the control socket at `path`. A socket left by a daemon that
/// died is replaced; one a running daemon answers on is an error.
pub fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {}: another `weir serve` answers on it (set `gateway.control` to another path, or stop that one)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Answer requests on `listener` until the task is dropped.
/// `reload` re-reads `config` and applies it through `handle`, answering
/// what changed or why it was refused.
pub async fn serve(
    listener: UnixListener,
    registry: Arc<Registry>,
    handle: super::Handle,
    config: PathBuf,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (registry, handle, config) = (registry.clone(), handle.clone(), config.clone());
        tokio::spawn(async move {
            let (rd, mut wr) = conn.into_split();
            let mut line = String::new();
            let mut rd = tokio::io::BufReader::new(rd.take(MAX_REQUEST));
            let read = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line)).await;
            let answer = match read {
                Ok(Ok(_)) => match line.trim() {
                    "status" => serde_json::to_value(registry.snapshot()).unwrap_or(Value::Null),
                    "inspect" => registry.inspect(),
                    "reload" => {
                        tracing::info!(config = %config.display(), "reload asked on the control socket");
                        let result = match crate::config::Config::load(&config) {
                            Ok(cfg) => handle.reload(cfg).await,
                            Err(e) => {
                                registry
                                    .reloads_refused
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::error!(error = %e, "reload refused: the config does not load; the running config keeps running");
                                Err(e.to_string())
                            }
                        };
                        match result {
                            Ok(what) => json!({ "reloaded": what }),
                            Err(why) => json!({ "error": format!("reload refused: {why}") }),
                        }
                    }
                    other => json!({
                        "error": format!("unknown request `{other}` (status, inspect, reload)")
                    }),
                },
                _ => json!({ "error": "no request line within 5 s" }),
            };
            let mut text = answer.to_string();
            text.push('\n');
            let _ = wr.write_all(text.as_bytes()).await;
            let _ = wr.shutdown().await;
        });
    }
}

/// Ask the daemon behind `path`: one request, one JSON answer.
pub fn request(path: &Path, what: &str) -> anyhow::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the daemon at {}: {e} (is `weir serve` running with this config? is this user in its group?)",
            path.display()
        )
    })?;
    // A reload loads every module and waits for the swap: give it time.
    s.set_read_timeout(Some(Duration::from_secs(if what == "reload" {
        120
    } else {
        10
    })))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{what}")?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    let v: Value = serde_json::from_str(&answer)
        .map_err(|e| anyhow::anyhow!("the daemon at {} answered badly: {e}", path.display()))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("the daemon at {} says: {e}", path.display());
    }
    Ok(v)
}

/// Where the control socket of a config is.
pub fn path_of(cfg: &crate::config::Config) -> PathBuf {
    match &cfg.gateway.control {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => cfg.base_dir.join(p),
        None => cfg
            .store_path()
            .parent()
            .map_or_else(|| PathBuf::from("weir.sock"), |d| d.join("weir.sock")),
    }
}
