//! JSON-lines sinks: stdout, and a file rotated by size.
//!
//! An entry leaves its queue once its line is written and flushed (for a
//! durable file sink, also `fdatasync`ed).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Format, Rate, Render, Selector, SinkConfig, SinkMetrics, SinkType};
use crate::store::{Queue, Store};

/// Where lines go.
enum Out {
    Stdout(BufWriter<std::io::Stdout>),
    File(RotatingFile),
}

/// A file that rotates to `.1` .. `.keep` when it would pass `limit` bytes.
struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    limit: u64,
    keep: u32,
    sync: bool,
}

impl RotatingFile {
    fn open(path: PathBuf, limit: u64, keep: u32, sync: bool) -> std::io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = f.metadata()?.len();
        Ok(RotatingFile {
            path,
            file: BufWriter::new(f),
            size,
            limit,
            keep,
            sync,
        })
    }

    fn rotated(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.limit {
            self.file.flush()?;
            if self.sync {
                self.file.get_ref().sync_data()?;
            }
            if self.keep == 0 {
                std::fs::remove_file(&self.path)?;
            } else {
                for n in (1..self.keep).rev() {
                    let from = self.rotated(n);
                    if from.exists() {
                        std::fs::rename(&from, self.rotated(n + 1))?;
                    }
                }
                std::fs::rename(&self.path, self.rotated(1))?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = BufWriter::new(f);
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.sync {
            self.file.get_ref().sync_data()?;
        }
        Ok(())
    }
}

impl Out {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout(w) => {
                w.write_all(line)?;
                w.write_all(b"\n")
            }
            Out::File(f) => f.write_line(line),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(w) => w.flush(),
            Out::File(f) => f.flush(),
        }
    }
}

/// Drain `queue` into stdout or a file until `stop`, then write out what
/// is deliverable and return.
pub async fn run(
    cfg: SinkConfig,
    gateway_id: String,
    queue: Arc<Queue>,
    store: Arc<Store>,
    metrics: Arc<SinkMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let render = Render::new(&cfg, &gateway_id);
    let mut out = match cfg.kind {
        SinkType::File => {
            let path = cfg.path.clone().unwrap_or_default();
            match RotatingFile::open(
                path.clone(),
                cfg.rotate_bytes.0,
                cfg.keep,
                queue.is_durable(),
            ) {
                Ok(f) => Out::File(f),
                Err(e) => {
                    tracing::error!(sink = %cfg.name, path = %path.display(), error = %e,
                        "cannot open the sink's file; its queue keeps the records");
                    metrics.health.down(format!("{}: {e}", path.display()));
                    return;
                }
            }
        }
        _ => Out::Stdout(BufWriter::new(std::io::stdout())),
    };
    metrics.health.up();
    let mut selector = Selector::new(cfg.live_first);
    selector.rewind(store.next_seq());
    let mut rate = Rate::new(cfg.rate);
    let mut failing = false;
    let mut stopping = false;
    let mut last_expiry = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(last_expiry) > Duration::from_secs(1) {
            queue.expire(crate::record::now_ms());
            last_expiry = now;
        }
        let wait = if let Some(t) = rate.wait(now) {
            if stopping {
                break; // The queue keeps the rest.
            }
            t - now
        } else {
            // A memory queue needs no sync, but entries still reach it out
            // of order when pipelines run on threads of their own: read
            // only below what every writer has committed, or a late
            // lower number is passed over for good.
            let below = if queue.is_durable() {
                store.durable_seq()
            } else {
                store.deliverable()
            };
            // Bounded in bytes too: 256 large records are not read at once.
            let batch = selector.take(&queue, below, 256.max(cfg.batch), cfg.inflight_bytes.0);
            if !batch.is_empty() {
                let rendered: Vec<_> = batch.iter().map(|e| render.render(e)).collect();
                let mut bytes = 0;
                let written = rendered.chunks(cfg.batch).try_for_each(|chunk| {
                    let mut line = render.encode(chunk);
                    if cfg.format == Format::Cbor {
                        // One line per batch: hex keeps the file line-oriented.
                        line = hex(&line).into_bytes();
                    }
                    bytes += line.len();
                    metrics.sends.fetch_add(1, Relaxed);
                    out.write_line(&line)
                });
                match written.and_then(|()| out.flush()) {
                    Ok(()) => {
                        metrics.health.up();
                        if std::mem::take(&mut failing) {
                            tracing::info!(sink = %cfg.name, "sink writes again");
                        }
                        for e in &batch {
                            queue.delivered(e.seq);
                            metrics.latency.since_ms(e.enqueued_ms, 1);
                        }
                        metrics.records.fetch_add(batch.len() as u64, Relaxed);
                        metrics.bytes.fetch_add(bytes as u64, Relaxed);
                        rate.spend(Instant::now(), batch.len(), bytes);
                    }
                    Err(e) => {
                        metrics.health.down(e.to_string());
                        if !failing {
                            metrics.outages.fetch_add(1, Relaxed);
                            tracing::error!(sink = %cfg.name, error = %e,
                                "sink write failed; the records stay queued, retrying");
                        }
                        failing = true;
                        selector.rewind(store.next_seq());
                        if stopping {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            }
            if stopping {
                break;
            }
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = queue.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            r = stop.changed(), if !stopping => {
                // Keep going until nothing deliverable is left.
                stopping = true;
                let _ = r;
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}
