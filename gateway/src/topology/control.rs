//! The control socket: a Unix socket beside the store (`weir.sock` in the
//! state directory, mode 0660, owned by the service user) that answers
//! `weir status`, `weir top`, `weir store inspect`, `weir reload` and
//! `weir sensor send` while the daemon runs.
//!
//! One request per connection: a command word on one line (`status`,
//! `inspect`, `reload`, or `sensor` followed by a JSON object), answered
//! with one JSON document, then closed. A request that is slow, long or
//! unknown gets an error object, never a hang.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::metrics::Registry;
use crate::sources::serial::downlink::{Downlinks, Order, parse_command};

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
    downlinks: Arc<Downlinks>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (registry, handle, config) = (registry.clone(), handle.clone(), config.clone());
        let downlinks = downlinks.clone();
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
                    other if other.starts_with("sensor ") => {
                        sensor_send(&downlinks, &other["sensor ".len()..]).await
                    }
                    other => json!({
                        "error": format!("unknown request `{other}` (status, inspect, reload, sensor)")
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

/// Longest wait for a sensor's reply that a `sensor` request may ask for.
pub const MAX_REPLY_WAIT: Duration = Duration::from_secs(60);

/// `sensor {"source", "sensor", "cmd", "value", "timeout_ms"}`: queue the
/// command on the source's line and wait for the sensor's reply.
async fn sensor_send(downlinks: &Downlinks, request: &str) -> Value {
    let req: Value = match serde_json::from_str(request) {
        Ok(v) => v,
        Err(e) => return json!({ "error": format!("sensor request: {e}") }),
    };
    let (Some(source), Some(sensor), Some(cmd)) = (
        req["source"].as_str(),
        req["sensor"].as_u64().and_then(|s| u32::try_from(s).ok()),
        req["cmd"].as_str(),
    ) else {
        return json!({ "error": "sensor request needs source, sensor (0 to 4294967295) and cmd" });
    };
    let command = match parse_command(cmd, req["value"].as_str()) {
        Ok(c) => c,
        Err(e) => return json!({ "error": e }),
    };
    let wait =
        Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(5000)).min(MAX_REPLY_WAIT);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let order = Order {
        sensor,
        command,
        reply: Some(tx),
    };
    if let Err(e) = downlinks.send(source, order) {
        return json!({ "error": e.to_string() });
    }
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(reply)) => json!({ "reply": reply }),
        _ => json!({
            "error": format!(
                "no reply from sensor {sensor} on `{source}` within {} ms (is the sensor on that line, powered, and speaking the wire protocol? `weir status` shows the source)",
                wait.as_millis()
            )
        }),
    }
}

/// Ask the daemon behind `path`: one request, one JSON answer.
pub fn request(path: &Path, what: &str) -> anyhow::Result<Value> {
    request_within(path, what, None)
}

/// [`request`], waiting up to `wait` for the answer (default: 10 s, 120 s
/// for a reload).
pub fn request_within(path: &Path, what: &str, wait: Option<Duration>) -> anyhow::Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the daemon at {}: {e} (is `weir serve` running with this config? is this user in its group?)",
            path.display()
        )
    })?;
    // A reload loads every module and waits for the swap: give it time.
    let default = Duration::from_secs(if what == "reload" { 120 } else { 10 });
    s.set_read_timeout(Some(wait.unwrap_or(default)))?;
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
