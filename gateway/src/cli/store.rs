//! `weir store inspect|verify|compact --config FILE`: the durable buffer,
//! per sink, while the daemon is stopped (sled locks the store).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::Failure;
use crate::config::Config;
use crate::sinks::SinkConfig;
use crate::store::{BufferConfig, OpenMode, OpenReport, Store, StoreConfig};

/// `weir store ...`.
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Show, per sink queue: depth, bytes, age of the oldest entry.
    Inspect(StoreArgs),
    /// Check every entry's checksum; exit 1 if anything is damaged.
    Verify(StoreArgs),
    /// Rewrite the store: drop expired entries (and, if asked, queues of
    /// sinks no longer configured and damaged entries kept aside), and give
    /// the space back.
    Compact(CompactArgs),
    /// Records a sink could not deliver, kept aside per sink.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

/// `weir store dead-letters ...`.
#[derive(Subcommand)]
pub enum DeadLetterCommand {
    /// Per sink: each dead letter's message id, age, attempts and reason.
    List(DeadArgs),
    /// One dead letter in full: why, and the record as the sink would send it.
    Show(DeadOne),
    /// Remove dead letters for good.
    Drop(DeadSome),
    /// Put dead letters back in their sink's queue, under their own
    /// message ids, to be sent first at the next start.
    Requeue(DeadSome),
}

/// Which sink's dead letters.
#[derive(Args)]
pub struct DeadArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The sink (default: every sink).
    #[arg(long)]
    sink: Option<String>,
}

/// One dead letter.
#[derive(Args)]
pub struct DeadOne {
    #[command(flatten)]
    store: StoreArgs,
    /// The sink.
    #[arg(long)]
    sink: String,
    /// Its message id (`gw1-42`) or sequence number (`42`).
    id: String,
}

/// Some or all dead letters of one sink.
#[derive(Args)]
pub struct DeadSome {
    #[command(flatten)]
    store: StoreArgs,
    /// The sink.
    #[arg(long)]
    sink: String,
    /// Message ids (`gw1-42`) or sequence numbers (`42`).
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
    /// Every dead letter of the sink.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

/// Which store.
#[derive(Args)]
pub struct StoreArgs {
    /// The gateway config (the store path and the sinks come from it).
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// The store directory, overriding the config's.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `weir store compact` arguments.
#[derive(Args)]
pub struct CompactArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Also remove queues of sinks no longer in the config.
    #[arg(long)]
    drop_orphans: bool,
    /// Also remove damaged entries kept aside.
    #[arg(long)]
    clear_damaged: bool,
}

pub(super) fn run(cmd: StoreCommand) -> Result<(), Failure> {
    match cmd {
        StoreCommand::Inspect(a) => inspect(&a, false),
        StoreCommand::Verify(a) => inspect(&a, true),
        StoreCommand::Compact(a) => compact(&a),
        StoreCommand::DeadLetters(c) => dead_letters(c),
    }
}

/// Open the store of `a`: for inspection (nothing moved or repaired) or,
/// for `compact`, as the daemon does.
type Opened = (Config, PathBuf, Store, OpenReport, Option<InspectCopy>);

fn open(a: &StoreArgs, mode: OpenMode) -> Result<Opened, Failure> {
    let cfg = Config::load(&a.config).map_err(Failure::refused)?;
    let path = a.path.clone().unwrap_or_else(|| cfg.store_path());
    if !path.join("db").is_file() {
        return Err(anyhow::anyhow!("no store at {}", path.display()).into());
    }
    if mode == OpenMode::Inspect {
        // sled has no read-only mode: opening runs its recovery, which can
        // rewrite a damaged log. So inspection opens a copy, made while
        // holding sled's own lock on the original (nobody writes it meanwhile).
        let copy = InspectCopy::make(&path)?;
        let (store, report) = Store::open_with(&copy.0, &cfg.store, mode)?;
        return Ok((cfg, path, store, report, Some(copy)));
    }
    let (store, report) = Store::open_with(&path, &cfg.store, mode)?;
    Ok((cfg, path, store, report, None))
}

/// A copy of a store for inspection, removed when dropped.
pub struct InspectCopy(PathBuf);

impl InspectCopy {
    fn make(path: &Path) -> Result<InspectCopy, Failure> {
        let db = std::fs::File::open(path.join("db"))
            .map_err(|e| anyhow::anyhow!("store {}: {e}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; released when `db` closes.
        if unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(anyhow::anyhow!(
                "store {}: in use by another process (is `weir serve` running?): could not acquire lock",
                path.display()
            )
            .into());
        }
        let copy = PathBuf::from(format!("{}.inspect-{}", path.display(), std::process::id()));
        let _ = std::fs::remove_dir_all(&copy);
        let guard = InspectCopy(copy);
        // The high-water mark lives beside the store (`<store>.seq`).
        let seq = PathBuf::from(format!("{}.seq", path.display()));
        if seq.exists() {
            std::fs::copy(&seq, format!("{}.seq", guard.0.display()))
                .map_err(|e| anyhow::anyhow!("cannot copy {}: {e}", seq.display()))?;
        }
        copy_dir(path, &guard.0).map_err(|e| {
            anyhow::anyhow!(
                "cannot copy the store to {} for a read-only inspection: {e}",
                guard.0.display()
            )
        })?;
        Ok(guard)
    }
}

impl Drop for InspectCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(format!("{}.seq", self.0.display()));
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

fn buffer_of(sinks: &[SinkConfig], name: &str) -> BufferConfig {
    sinks
        .iter()
        .find(|s| s.name == name)
        .map_or(BufferConfig::default(), |s| s.buffer)
}

fn inspect(a: &StoreArgs, verify: bool) -> Result<(), Failure> {
    // A running daemon holds the store: ask it, through its control socket.
    if !verify {
        let cfg = Config::load(&a.config).map_err(Failure::refused)?;
        let path = a.path.clone().unwrap_or_else(|| cfg.store_path());
        if crate::store::in_use(&path) {
            let socket = crate::topology::control::path_of(&cfg);
            let summary = crate::topology::control::request(&socket, "inspect")?;
            print_inspect(&summary, a.json, false);
            return Ok(());
        }
    }
    // The inspected copy outlives the store opened on it: declared first,
    // dropped last.
    let _copy: Option<InspectCopy>;
    let (cfg, path, store, mut report, copy) = open(a, OpenMode::Inspect)?;
    _copy = copy;
    let sinks = cfg.sinks();
    let now = crate::record::now_ms();
    let mut rows = Vec::new();
    for name in store.queue_names() {
        // `inspect` does not expire anything: age 0 means "never".
        let mut buffer = buffer_of(&sinks, &name);
        buffer.max_age = std::time::Duration::ZERO;
        let q = store.queue(&name, buffer, true, &mut report)?;
        let oldest = q.oldest();
        rows.push(json!({
            "sink": name,
            "configured": sinks.iter().any(|s| s.name == name),
            "entries": q.len(),
            "bytes": q.bytes(),
            "max_bytes": buffer_of(&sinks, &name).max_bytes.0,
            "oldest_seq": oldest.map(|o| o.0),
            "oldest_age_s": oldest.map(|o| now.saturating_sub(o.1) as f64 / 1000.0),
            "damaged_kept": q.damaged_kept(),
        }));
    }
    let damage = report.damaged > 0 || report.lost_seqs > 0 || report.moved_aside.is_some();
    let summary = json!({
        "path": path.display().to_string(),
        "size_on_disk": store.size_on_disk(),
        "next_seq": store.next_seq(),
        "queues": rows,
        "damaged_found": report.damaged,
        "lost_seqs": report.lost_seqs,
        "moved_aside": report.moved_aside.as_ref().map(|m| json!({"to": m.0.display().to_string(), "why": m.1})),
        "ok": !damage,
    });
    print_inspect(&summary, a.json, verify || damage);
    if verify && damage {
        return Err(anyhow::anyhow!(
            "the store is damaged (details above); the intact entries are served"
        )
        .into());
    }
    Ok(())
}

/// Print an inspection summary (from a copy of the store, or from the
/// running daemon): JSON, or a table; `integrity` adds the damage line.
fn print_inspect(summary: &serde_json::Value, as_json: bool, integrity: bool) {
    if as_json {
        println!("{summary}");
        return;
    }
    println!(
        "store {} ({} bytes on disk, next seq {}){}",
        summary["path"].as_str().unwrap_or("(in memory)"),
        summary["size_on_disk"],
        summary["next_seq"],
        if summary["live"] == true {
            ", read from the running daemon"
        } else {
            ""
        }
    );
    println!(
        "{:<20} {:>10} {:>12} {:>12} {:>14} {:>8}",
        "sink", "entries", "bytes", "max_bytes", "oldest_age_s", "damaged"
    );
    for r in summary["queues"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:>10} {:>12} {:>12} {:>14} {:>8}{}",
            r["sink"].as_str().unwrap_or(""),
            r["entries"],
            r["bytes"],
            r["max_bytes"],
            r["oldest_age_s"]
                .as_f64()
                .map_or("-".into(), |s| format!("{s:.1}")),
            r["damaged_kept"],
            if r["configured"] == true {
                ""
            } else {
                "  (no such sink configured)"
            }
        );
    }
    if integrity {
        println!(
            "integrity: {} damaged entries found, {} sequence numbers lost{}",
            summary["damaged_found"],
            summary["lost_seqs"],
            summary["moved_aside"]
                .as_object()
                .map_or(String::new(), |m| format!(
                    "; unopenable store moved to {} ({})",
                    m["to"].as_str().unwrap_or(""),
                    m["why"].as_str().unwrap_or("")
                ))
        );
    }
}

fn compact(a: &CompactArgs) -> Result<(), Failure> {
    let (cfg, path, store, mut report, _) = open(&a.store, OpenMode::Serve)?;
    let sinks = cfg.sinks();
    let before = dir_size(&path);
    let fresh_path = PathBuf::from(format!("{}.compacting", path.display()));
    if fresh_path.exists() {
        std::fs::remove_dir_all(&fresh_path)?;
    }
    let store_cfg = StoreConfig {
        path: None,
        ..cfg.store.clone()
    };
    let (fresh, _) = Store::open(&fresh_path, &store_cfg)?;
    let mut moved = 0u64;
    let mut dropped_queues = Vec::new();
    for name in store.queue_names() {
        let configured = sinks.iter().any(|s| s.name == name);
        if !configured && a.drop_orphans {
            dropped_queues.push(name);
            continue;
        }
        let q = store.queue(&name, buffer_of(&sinks, &name), true, &mut report)?;
        let to = fresh.queue(
            &name,
            buffer_of(&sinks, &name),
            true,
            &mut OpenReport::default(),
        )?;
        let mut from = 0;
        loop {
            let batch = q.read(from, u64::MAX, 1024);
            let Some(last) = batch.last() else { break };
            from = last.seq + 1;
            for e in &batch {
                let stored =
                    crate::store::entry::encode(e.kind, e.enqueued_ms, &e.pipeline, &e.body);
                to.copy_in(e.seq, &stored);
                moved += 1;
            }
        }
        if !a.clear_damaged {
            q.copy_damaged_to(&to);
        }
        q.copy_dead_letters_to(&to);
    }
    fresh.carry_over(&store);
    fresh.sync(store.next_seq().max(fresh.next_seq()))?;
    drop((store, fresh));
    let old = PathBuf::from(format!("{}.old", path.display()));
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    std::fs::rename(&path, &old)?;
    std::fs::rename(&fresh_path, &path)?;
    std::fs::remove_dir_all(&old)?;
    // The fresh store's high-water mark, beside it under its temporary
    // name; the store's own (`<store>.seq`) already holds at least as much.
    let _ = std::fs::remove_file(format!("{}.seq", fresh_path.display()));
    let after = dir_size(&path);
    println!(
        "compacted {}: {moved} entries kept, {} expired, {} damaged found; {} queues dropped {:?}; {before} -> {after} bytes",
        path.display(),
        report.expired,
        report.damaged,
        dropped_queues.len(),
        dropped_queues
    );
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A message id (`gw1-42`) or a sequence number (`42`).
fn parse_id(id: &str) -> Result<u64, Failure> {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            Failure::refused(anyhow::anyhow!(
                "`{id}` is neither a message id (`gw1-42`) nor a sequence number (`42`)"
            ))
        })
}

/// The sink's queue, or an error naming the sinks the store has.
fn sink_queue(
    store: &Store,
    sinks: &[SinkConfig],
    name: &str,
) -> Result<std::sync::Arc<crate::store::Queue>, Failure> {
    let names = store.queue_names();
    if !names.iter().any(|n| n == name) {
        return Err(Failure::refused(anyhow::anyhow!(
            "the store has no queue for sink `{name}`; it has: {}",
            names.join(", ")
        )));
    }
    let mut buffer = buffer_of(sinks, name);
    buffer.max_age = std::time::Duration::ZERO;
    Ok(store.queue(name, buffer, true, &mut OpenReport::default())?)
}

fn dead_letters(cmd: DeadLetterCommand) -> Result<(), Failure> {
    match cmd {
        DeadLetterCommand::List(a) => {
            let _copy: Option<InspectCopy>;
            let (cfg, _, store, _, copy) = open(&a.store, OpenMode::Inspect)?;
            _copy = copy;
            let sinks = cfg.sinks();
            let now = crate::record::now_ms();
            let names = match &a.sink {
                Some(s) => vec![s.clone()],
                None => store.queue_names(),
            };
            let mut rows = Vec::new();
            for name in names {
                let q = sink_queue(&store, &sinks, &name)?;
                for d in q.dead_letters(0, usize::MAX) {
                    rows.push(match d {
                        Ok(d) => json!({
                            "sink": name,
                            "msg_id": format!("{}-{}", cfg.gateway.id, d.seq),
                            "seq": d.seq,
                            "age_s": now.saturating_sub(d.at_ms) / 1000,
                            "attempts": d.attempts,
                            "reason": d.reason,
                            "bytes": d.stored.len(),
                        }),
                        Err((seq, e)) => json!({
                            "sink": name,
                            "msg_id": format!("{}-{seq}", cfg.gateway.id),
                            "seq": seq,
                            "damaged": e.to_string(),
                        }),
                    });
                }
            }
            if a.store.json {
                println!("{}", serde_json::Value::Array(rows));
                return Ok(());
            }
            if rows.is_empty() {
                println!("no dead letters");
                return Ok(());
            }
            println!(
                "{:<16} {:<20} {:>8} {:>8}  reason",
                "sink", "msg_id", "age_s", "attempts"
            );
            for r in &rows {
                println!(
                    "{:<16} {:<20} {:>8} {:>8}  {}",
                    r["sink"].as_str().unwrap_or(""),
                    r["msg_id"].as_str().unwrap_or(""),
                    r["age_s"],
                    r["attempts"],
                    r["reason"].as_str().or(r["damaged"].as_str()).unwrap_or("")
                );
            }
            Ok(())
        }
        DeadLetterCommand::Show(a) => {
            let _copy: Option<InspectCopy>;
            let (cfg, _, store, _, copy) = open(&a.store, OpenMode::Inspect)?;
            _copy = copy;
            let sinks = cfg.sinks();
            let seq = parse_id(&a.id)?;
            let q = sink_queue(&store, &sinks, &a.sink)?;
            let d = match q.dead_letters(seq, 1).pop() {
                Some(Ok(d)) if d.seq == seq => d,
                Some(Err((s, e))) if s == seq => {
                    return Err(anyhow::anyhow!("dead letter {seq} is damaged: {e}").into());
                }
                _ => {
                    return Err(Failure::refused(anyhow::anyhow!(
                        "sink `{}` has no dead letter {seq} (`weir store dead-letters list --sink {}`)",
                        a.sink,
                        a.sink
                    )));
                }
            };
            let record = crate::store::entry::decode(seq, &d.stored)
                .map_err(|e| anyhow::anyhow!("dead letter {seq}: its record is damaged: {e}"))?;
            let sink = sinks
                .iter()
                .find(|s| s.name == a.sink)
                .cloned()
                .unwrap_or_else(SinkConfig::default_stdout);
            let rendered = crate::sinks::Render::new(&sink, &cfg.gateway.id).render(&record);
            let out = json!({
                "sink": a.sink,
                "msg_id": format!("{}-{seq}", cfg.gateway.id),
                "seq": seq,
                "dead_lettered_ms": d.at_ms,
                "attempts": d.attempts,
                "reason": d.reason,
                "pipeline": record.pipeline,
                "enqueued_ms": record.enqueued_ms,
                "topic": rendered.topic,
                "record": rendered.value,
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            Ok(())
        }
        DeadLetterCommand::Drop(a) => change_dead(&a, false),
        DeadLetterCommand::Requeue(a) => change_dead(&a, true),
    }
}

/// Drop or requeue dead letters (the daemon must be stopped: sled locks
/// the store).
fn change_dead(a: &DeadSome, requeue: bool) -> Result<(), Failure> {
    let (cfg, path, store, _, _) = open(&a.store, OpenMode::Serve)?;
    let sinks = cfg.sinks();
    let q = sink_queue(&store, &sinks, &a.sink)?;
    let seqs: Vec<u64> = if a.all {
        q.dead_letters(0, usize::MAX)
            .into_iter()
            .map(|d| d.map_or_else(|e| e.0, |d| d.seq))
            .collect()
    } else {
        a.ids
            .iter()
            .map(|i| parse_id(i))
            .collect::<Result<_, _>>()?
    };
    let (mut done, mut missing) = (0, Vec::new());
    for seq in seqs {
        let ok = if requeue {
            q.requeue_dead_letter(seq).map_err(|e| {
                anyhow::anyhow!("dead letter {seq} is damaged ({e}); it can only be dropped")
            })?
        } else {
            q.drop_dead_letter(seq)
        };
        if ok {
            done += 1;
        } else {
            missing.push(seq);
        }
    }
    store.sync(store.next_seq())?;
    println!(
        "{} {done} dead letters of sink `{}` in {}{}",
        if requeue { "requeued" } else { "dropped" },
        a.sink,
        path.display(),
        if requeue {
            " (sent first, under their own message ids, when weir serve starts)"
        } else {
            ""
        }
    );
    if !missing.is_empty() {
        return Err(Failure::refused(anyhow::anyhow!(
            "sink `{}` has no dead letter {:?}",
            a.sink,
            missing
        )));
    }
    Ok(())
}
