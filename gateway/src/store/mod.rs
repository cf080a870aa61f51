//! The durable buffer between pipelines and sinks: one ordered queue per
//! sink in one sled database, every entry checksummed.
//!
//! - The pipeline thread appends; a sync thread makes batches durable
//!   ([`Store::sync`]) and only then acknowledges their inputs upstream.
//! - Sinks read only synced entries (below [`Store::durable_seq`]) and
//!   remove an entry once it is delivered (for MQTT: its PUBACK arrived).
//! - Sequence numbers are gateway-wide and never reused (the high-water
//!   mark is stored with every batch), so `{gateway_id}-{seq}` is a message
//!   id the cloud side can de-duplicate on.
//! - Opening never blocks on damage: a database sled cannot open is moved
//!   aside and a fresh one started; entries whose checksum fails are moved
//!   to a `damaged/<sink>` tree, counted, and the rest is served.
//!
//! Sinks configured `durable = false` get the same queue in memory.

mod config;
pub mod entry;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

pub use config::{BufferConfig, StoreConfig, WhenFull, duration, opt_duration};
pub use entry::{Entry, EntryError, Kind};

use crate::sources::Origin;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("store {path}: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// sled's error.
        source: sled::Error,
    },
    /// sled cannot open the store (opened for inspection, so left as is).
    #[error(
        "store {path} is damaged: sled cannot open it ({why}); `weir serve` moves it aside and starts a fresh one, keeping message ids"
    )]
    Damaged {
        /// The database directory.
        path: String,
        /// sled's complaint.
        why: String,
    },
    /// A file operation failed.
    #[error("store {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What opening found.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    /// The damaged database directory moved aside, with the reason.
    pub moved_aside: Option<(PathBuf, String)>,
    /// Entries whose checksum failed, moved to `damaged/<sink>`.
    pub damaged: u64,
    /// Entries older than their sink's `max_age`, expired.
    pub expired: u64,
    /// Entries found, per sink: (sink, entries, bytes).
    pub queues: Vec<(String, u64, u64)>,
    /// Sequence numbers issued before (per the watermark file) that sled
    /// no longer knows: its recovery cut the log at damage. An upper bound
    /// of entries lost (some may have been delivered already).
    pub lost_seqs: u64,
}

/// The sled database and the sequence numbers.
pub struct Store {
    db: Option<sled::Db>,
    path: PathBuf,
    sync_file: Option<File>,
    fsync: bool,
    next_seq: AtomicU64,
    durable: AtomicU64,
    healthy: AtomicBool,
    meta: Option<sled::Tree>,
    seen: Option<sled::Tree>,
    watermark: Option<File>,
    /// Opened for inspection: queues count damage but move nothing.
    read_only: bool,
}

/// The last synced `next_seq`, 8 bytes big-endian, in a file *beside* the
/// store directory (`<store>.seq`), where moving a damaged store aside or
/// damage inside it cannot reach it: message ids are never reissued. sled's
/// recovery silently drops the log after the first corrupt message;
/// comparing with this file is also how that loss gets reported. Older
/// versions kept it inside the directory as `weir.seq`, still read.
const LEGACY_WATERMARK: &str = "weir.seq";

fn watermark_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".seq");
    path.with_file_name(name)
}

fn read_watermark(file: &Path) -> u64 {
    std::fs::read(file)
        .ok()
        .and_then(|b| Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?)))
        .unwrap_or(0)
}

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// For serving: damage is repaired (a store sled cannot open is moved
    /// aside, damaged entries are moved to `damaged/<sink>`).
    Serve,
    /// For `weir store inspect|verify`: nothing is moved or repaired; a
    /// store sled cannot open is an error.
    Inspect,
}

const NEXT_SEQ: &[u8] = b"next_seq";

impl Store {
    /// A store with no database: every queue lives in memory.
    pub fn memory() -> Store {
        Store {
            db: None,
            path: PathBuf::new(),
            sync_file: None,
            fsync: false,
            next_seq: AtomicU64::new(1),
            durable: AtomicU64::new(u64::MAX),
            healthy: AtomicBool::new(true),
            meta: None,
            seen: None,
            watermark: None,
            read_only: false,
        }
    }

    /// Open (or create) the database at `path`. A database sled refuses
    /// to open, or panics on, is renamed `<path>.damaged-<ms>` and a fresh
    /// one is created; the report says so.
    pub fn open(path: &Path, cfg: &StoreConfig) -> Result<(Store, OpenReport), StoreError> {
        Store::open_with(path, cfg, OpenMode::Serve)
    }

    /// [`Store::open`], or with [`OpenMode::Inspect`] an open that moves
    /// and repairs nothing.
    pub fn open_with(
        path: &Path,
        cfg: &StoreConfig,
        mode: OpenMode,
    ) -> Result<(Store, OpenReport), StoreError> {
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut report = OpenReport::default();
        let issued =
            read_watermark(&watermark_path(path)).max(read_watermark(&path.join(LEGACY_WATERMARK)));
        // sled releases its file lock from background threads after the
        // last handle is dropped, so a store closed a moment ago in this
        // process can still be locked: retry briefly before calling it in use.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut opened = open_sled(path, cfg);
        while matches!(&opened, Err(Opened::Io(e)) if e.to_string().contains("could not acquire lock"))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
            opened = open_sled(path, cfg);
        }
        let db = match opened {
            Ok(db) => db,
            // In use, or not permitted: an error, never "damage".
            Err(Opened::Io(e)) => {
                let msg = e.to_string();
                return Err(io(if msg.contains("could not acquire lock") {
                    std::io::Error::other(format!(
                        "in use by another process (is `weir serve` running?): {msg}"
                    ))
                } else {
                    e
                }));
            }
            Err(Opened::Damaged(why)) if mode == OpenMode::Inspect => {
                return Err(StoreError::Damaged {
                    path: path.display().to_string(),
                    why,
                });
            }
            Err(Opened::Damaged(why)) => {
                let aside = PathBuf::from(format!(
                    "{}.damaged-{}",
                    path.display(),
                    crate::record::now_ms()
                ));
                std::fs::rename(path, &aside).map_err(io)?;
                tracing::error!(
                    store = %path.display(),
                    moved_to = %aside.display(),
                    error = %why,
                    "the store could not be opened; it was moved aside and a fresh one started"
                );
                report.moved_aside = Some((aside, why));
                open_sled(path, cfg).map_err(|e| {
                    io(std::io::Error::other(format!(
                        "a fresh store cannot be opened either: {e:?}"
                    )))
                })?
            }
        };
        let sled_err = |source| StoreError::Sled {
            path: path.display().to_string(),
            source,
        };
        let meta = db.open_tree("meta").map_err(sled_err)?;
        let seen = db.open_tree("seen").map_err(sled_err)?;
        let mut next = meta
            .get(NEXT_SEQ)
            .map_err(sled_err)?
            .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
            .unwrap_or(1);
        for name in db.tree_names() {
            if name.starts_with(b"q/")
                && let Some((k, _)) = db
                    .open_tree(&name)
                    .map_err(sled_err)?
                    .last()
                    .map_err(sled_err)?
                && let Ok(k) = <[u8; 8]>::try_from(k.as_ref())
            {
                next = next.max(u64::from_be_bytes(k) + 1);
            }
        }
        if issued > next {
            report.lost_seqs = issued - next;
            tracing::error!(
                store = %path.display(),
                issued_up_to = issued,
                recovered_up_to = next,
                "the store lost entries to damage: sled's recovery stopped at a corrupt log message; up to {} entries are gone, the rest is served",
                issued - next
            );
            next = issued;
        }
        let watermark = match mode {
            OpenMode::Inspect => None,
            OpenMode::Serve => {
                let file = watermark_path(path);
                let w = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&file)
                    .map_err(|e| StoreError::Io {
                        path: file.display().to_string(),
                        source: std::io::Error::new(
                            e.kind(),
                            format!(
                                "{e} (weir keeps the message-id high-water mark beside the store: its parent directory must be writable by the service user)"
                            ),
                        ),
                    })?;
                // At once: a store moved aside or lost before the first
                // sync must not take the high-water mark with it.
                use std::os::unix::fs::FileExt;
                w.write_all_at(&next.to_be_bytes(), 0)
                    .and_then(|()| w.sync_data())
                    .map_err(|source| StoreError::Io {
                        path: file.display().to_string(),
                        source,
                    })?;
                Some(w)
            }
        };
        let sync_file = if cfg.fsync {
            Some(File::open(path.join("db")).map_err(io)?)
        } else {
            None
        };
        let store = Store {
            db: Some(db),
            path: path.to_path_buf(),
            sync_file,
            fsync: cfg.fsync,
            next_seq: AtomicU64::new(next),
            durable: AtomicU64::new(next),
            healthy: AtomicBool::new(true),
            meta: Some(meta),
            seen: Some(seen),
            watermark,
            read_only: mode == OpenMode::Inspect,
        };
        Ok((store, report))
    }

    /// Whether entries live on disk.
    pub fn is_durable(&self) -> bool {
        self.db.is_some()
    }

    /// Write one input's outputs, after its redelivery marker. The marker
    /// names the last output's sequence number: sled recovers a prefix of
    /// its log, so if that output survived a crash, all of them did, and
    /// [`Store::redelivery_done`] can tell. Memory queues are written
    /// directly.
    pub fn commit(&self, puts: &[(&Queue, u64, Vec<u8>)], marker: Option<&Origin>) {
        if let (Some(o), Some(seen)) = (marker, &self.seen) {
            let mut v = o.digest.to_le_bytes().to_vec();
            v.extend_from_slice(&puts.last().map_or(u64::MAX, |p| p.1).to_le_bytes());
            if let Err(e) = seen.insert(seen_key(&o.source, o.pkid), v) {
                tracing::warn!(error = %e, "cannot record an input for redelivery detection");
            }
        }
        for (q, seq, stored) in puts {
            q.insert(*seq, stored);
            q.metrics.enqueued.fetch_add(1, Relaxed);
        }
    }

    /// Whether a redelivered input (`o`, with DUP set) was already taken in
    /// completely: its marker matches, and its last output is queued, or
    /// below the durable mark (synced, then delivered or dropped), or it
    /// had none. Otherwise it is processed again: at worst a duplicate
    /// under a new message id, never a loss.
    pub fn redelivery_done(&self, o: &Origin, queues: &[&Queue]) -> bool {
        let Some(seen) = &self.seen else {
            return false;
        };
        let Ok(Some(v)) = seen.get(seen_key(&o.source, o.pkid)) else {
            return false;
        };
        if v.len() != 12 || v[..4] != o.digest.to_le_bytes() {
            return false;
        }
        let last = u64::from_le_bytes(v[4..12].try_into().expect("8 bytes"));
        last == u64::MAX || last < self.durable_seq() || queues.iter().any(|q| q.contains(last))
    }

    /// The database directory (empty for a memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The queue of sink `name`, bounded by `cfg`; `durable = false` keeps
    /// it in memory. Opening a durable queue verifies every entry.
    pub fn queue(
        &self,
        name: &str,
        cfg: BufferConfig,
        durable: bool,
        report: &mut OpenReport,
    ) -> Result<Queue, StoreError> {
        let backing = match (&self.db, durable) {
            (Some(db), true) => {
                let sled_err = |source| StoreError::Sled {
                    path: self.path.display().to_string(),
                    source,
                };
                let tree = db.open_tree(format!("q/{name}")).map_err(sled_err)?;
                let damaged = db.open_tree(format!("damaged/{name}")).map_err(sled_err)?;
                Backing::Sled { tree, damaged }
            }
            _ => Backing::Memory(Mutex::new(BTreeMap::new())),
        };
        let q = Queue {
            name: name.to_string(),
            read_only: self.read_only,
            backing,
            cfg,
            bytes: AtomicU64::new(0),
            len: AtomicU64::new(0),
            metrics: QueueMetrics::default(),
            wake: tokio::sync::Notify::new(),
        };
        let (entries, bytes, damaged) = q.scan();
        let expired = q.expire(crate::record::now_ms());
        report.damaged += damaged;
        report.expired += expired;
        report
            .queues
            .push((name.to_string(), entries - expired, q.bytes()));
        let _ = bytes;
        Ok(q)
    }

    /// The next sequence number to hand out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Acquire)
    }

    /// Take a sequence number for a new entry.
    pub fn take_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Relaxed)
    }

    /// Entries below this are synced and may be delivered.
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Acquire)
    }

    /// False after a failed sync, until one succeeds.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Make every entry below `upto` durable: sled's flush, then (if
    /// configured) `fdatasync` of the database file, since sled's flush
    /// alone uses `sync_file_range`, which neither persists the file size
    /// nor flushes the drive's cache.
    pub fn sync(&self, upto: u64) -> Result<(), StoreError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let r = (|| {
            if let Some(meta) = &self.meta {
                meta.insert(NEXT_SEQ, &upto.to_be_bytes())
                    .map_err(|source| StoreError::Sled {
                        path: self.path.display().to_string(),
                        source,
                    })?;
            }
            db.flush().map_err(|source| StoreError::Sled {
                path: self.path.display().to_string(),
                source,
            })?;
            if self.fsync
                && let Some(f) = &self.sync_file
            {
                f.sync_data().map_err(|source| StoreError::Io {
                    path: self.path.join("db").display().to_string(),
                    source,
                })?;
            }
            if let Some(w) = &self.watermark {
                use std::os::unix::fs::FileExt;
                w.write_all_at(&upto.to_be_bytes(), 0)
                    .map_err(|source| StoreError::Io {
                        path: watermark_path(&self.path).display().to_string(),
                        source,
                    })?;
            }
            Ok(())
        })();
        self.healthy.store(r.is_ok(), Relaxed);
        if r.is_ok() {
            self.durable.fetch_max(upto, Release);
        }
        r
    }

    /// sled's own view of the database size on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db
            .as_ref()
            .and_then(|d| d.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// The sink queues present in the database, by name.
    pub fn queue_names(&self) -> Vec<String> {
        let Some(db) = &self.db else {
            return Vec::new();
        };
        let mut names: Vec<String> = db
            .tree_names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix(b"q/")
                    .map(|n| String::from_utf8_lossy(n).into_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// Copy what is not queue content from `old` (redelivery markers, the
    /// sequence high-water mark), for `weir store compact`.
    pub fn carry_over(&self, old: &Store) {
        if let (Some(to), Some(from)) = (&self.seen, &old.seen) {
            for (k, v) in from.iter().flatten() {
                let _ = to.insert(k, v);
            }
        }
        self.next_seq.fetch_max(old.next_seq(), Relaxed);
    }

    /// Drop a queue (and its damaged entries) entirely.
    pub fn drop_queue(&self, name: &str) -> Result<(), StoreError> {
        if let Some(db) = &self.db {
            for t in [format!("q/{name}"), format!("damaged/{name}")] {
                db.drop_tree(t).map_err(|source| StoreError::Sled {
                    path: self.path.display().to_string(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

fn seen_key(source: &str, pkid: u16) -> Vec<u8> {
    let mut k = source.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// Why sled did not open.
#[derive(Debug)]
enum Opened {
    /// An I/O error (in use, permissions): not the store's fault.
    Io(std::io::Error),
    /// Corruption, a sled bug report, or a panic in its recovery.
    Damaged(String),
}

fn open_sled(path: &Path, cfg: &StoreConfig) -> Result<sled::Db, Opened> {
    let conf = sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache.0)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    // sled 0.34 can panic on some corrupt logs; that must not stop startup.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || conf.open()));
    match r {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e))) if e.kind() != std::io::ErrorKind::InvalidData => {
            Err(Opened::Io(e))
        }
        Ok(Err(e)) => Err(Opened::Damaged(e.to_string())),
        Err(p) => Err(Opened::Damaged(format!(
            "sled panicked while recovering: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        ))),
    }
}

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueMetrics {
    /// Entries appended.
    pub enqueued: AtomicU64,
    /// Entries delivered and removed.
    pub delivered: AtomicU64,
    /// Entries evicted by `drop-oldest`.
    pub dropped_oldest: AtomicU64,
    /// Records refused by `drop-newest`.
    pub dropped_newest: AtomicU64,
    /// Times the pipelines waited for room (`block`).
    pub blocked: AtomicU64,
    /// Entries older than `max_age`, removed.
    pub expired: AtomicU64,
    /// Entries whose checksum failed, moved aside.
    pub damaged: AtomicU64,
    /// Entries sent again after a reconnect (same message id).
    pub resent: AtomicU64,
    /// Entries the sink can never deliver (too large), removed.
    pub undeliverable: AtomicU64,
}

enum Backing {
    Sled {
        tree: sled::Tree,
        damaged: sled::Tree,
    },
    Memory(Mutex<BTreeMap<u64, Vec<u8>>>),
}

/// One sink's queue.
pub struct Queue {
    name: String,
    /// Inspection only: damage is counted, never moved.
    read_only: bool,
    backing: Backing,
    cfg: BufferConfig,
    bytes: AtomicU64,
    len: AtomicU64,
    /// Counters.
    pub metrics: QueueMetrics,
    /// Notified when entries become deliverable.
    pub wake: tokio::sync::Notify,
}

/// Whether a record went into the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored.
    Stored,
    /// Refused by `drop-newest`.
    Refused,
    /// `block`, and no room: wait and try again.
    Full,
}

impl Queue {
    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bounds.
    pub fn config(&self) -> &BufferConfig {
        &self.cfg
    }

    /// Whether entries live on disk.
    pub fn is_durable(&self) -> bool {
        matches!(self.backing, Backing::Sled { .. })
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.len.load(Relaxed)
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (entries as stored).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Apply the full policy for an entry of `need` bytes about to be
    /// committed: `Stored` means go ahead (after evicting, for drop-oldest).
    pub fn admit(&self, need: u64) -> Pushed {
        let max = self.cfg.max_bytes.0.max(need);
        if self.bytes() + need > max {
            match self.cfg.when_full {
                WhenFull::Block => return Pushed::Full,
                WhenFull::DropNewest => {
                    self.metrics.dropped_newest.fetch_add(1, Relaxed);
                    return Pushed::Refused;
                }
                WhenFull::DropOldest => {
                    while self.bytes() + need > max {
                        let Some((k, _)) = self.first() else { break };
                        if self.remove(k) {
                            self.metrics.dropped_oldest.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
        }
        Pushed::Stored
    }

    fn account(&self, old: Option<usize>, new: usize) {
        match old {
            Some(n) => {
                self.bytes.fetch_sub(n as u64, Relaxed);
            }
            None => {
                self.len.fetch_add(1, Relaxed);
            }
        }
        self.bytes.fetch_add(new as u64, Relaxed);
    }

    /// Append an entry under `seq`, applying the full policy.
    pub fn push(&self, seq: u64, stored: &[u8]) -> Pushed {
        let r = self.admit(stored.len() as u64);
        if r == Pushed::Stored {
            self.insert(seq, stored);
            self.metrics.enqueued.fetch_add(1, Relaxed);
        }
        r
    }

    fn insert(&self, seq: u64, stored: &[u8]) {
        let old = match &self.backing {
            Backing::Sled { tree, .. } => match tree.insert(seq.to_be_bytes(), stored) {
                Ok(old) => old.map(|o| o.len()),
                Err(e) => {
                    // sled inserts into memory; I/O errors surface at sync,
                    // which keeps the batch unacknowledged.
                    tracing::error!(sink = %self.name, error = %e, "store insert failed");
                    return;
                }
            },
            Backing::Memory(m) => lock(m).insert(seq, stored.to_vec()).map(|o| o.len()),
        };
        self.account(old, stored.len());
    }

    /// Whether entry `seq` is queued.
    pub fn contains(&self, seq: u64) -> bool {
        match &self.backing {
            Backing::Sled { tree, .. } => tree.contains_key(seq.to_be_bytes()).unwrap_or(false),
            Backing::Memory(m) => lock(m).contains_key(&seq),
        }
    }

    /// Insert stored bytes as they are, without bounds (for compaction).
    pub fn copy_in(&self, seq: u64, stored: &[u8]) {
        self.insert(seq, stored);
    }

    /// Copy the damaged entries kept aside into `to` (for compaction).
    pub fn copy_damaged_to(&self, to: &Queue) {
        if let (Backing::Sled { damaged: from, .. }, Backing::Sled { damaged: dst, .. }) =
            (&self.backing, &to.backing)
        {
            for (k, v) in from.iter().flatten() {
                let _ = dst.insert(k, v);
            }
        }
    }

    /// Remove the entry `seq`; false if it was not there (already
    /// delivered, evicted or expired).
    pub fn remove(&self, seq: u64) -> bool {
        let old = match &self.backing {
            Backing::Sled { tree, .. } => tree
                .remove(seq.to_be_bytes())
                .ok()
                .flatten()
                .map(|o| o.len()),
            Backing::Memory(m) => lock(m).remove(&seq).map(|o| o.len()),
        };
        match old {
            Some(n) => {
                self.bytes.fetch_sub(n as u64, Relaxed);
                self.len.fetch_sub(1, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Remove a delivered entry, counting it.
    pub fn delivered(&self, seq: u64) {
        if self.remove(seq) {
            self.metrics.delivered.fetch_add(1, Relaxed);
        }
    }

    fn first(&self) -> Option<(u64, Vec<u8>)> {
        match &self.backing {
            Backing::Sled { tree, .. } => tree
                .first()
                .ok()
                .flatten()
                .map(|(k, v)| (key(&k), v.to_vec())),
            Backing::Memory(m) => lock(m).first_key_value().map(|(k, v)| (*k, v.clone())),
        }
    }

    /// The oldest entry's sequence number and enqueue time.
    pub fn oldest(&self) -> Option<(u64, u64)> {
        self.first()
            .map(|(k, v)| (k, entry::enqueued_ms(&v).unwrap_or(0)))
    }

    /// Up to `max` entries with `from <= seq < below`, in order, verified.
    /// Damaged ones are moved aside and counted, never returned.
    pub fn read(&self, from: u64, below: u64, max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        if from >= below {
            return out;
        }
        let mut bad = Vec::new();
        match &self.backing {
            Backing::Sled { tree, .. } => {
                for kv in tree.range(from.to_be_bytes()..below.to_be_bytes()) {
                    let Ok((k, v)) = kv else { break };
                    match entry::decode(key(&k), &v) {
                        Ok(e) => out.push(e),
                        Err(why) => bad.push((key(&k), v.to_vec(), why)),
                    }
                    if out.len() >= max {
                        break;
                    }
                }
            }
            Backing::Memory(m) => {
                for (k, v) in lock(m).range(from..below).take(max) {
                    if let Ok(e) = entry::decode(*k, v) {
                        out.push(e);
                    }
                }
            }
        }
        if !self.read_only {
            for (k, v, why) in bad {
                self.quarantine(k, &v, &why);
            }
        }
        out
    }

    fn quarantine(&self, seq: u64, stored: &[u8], why: &EntryError) {
        if let Backing::Sled { damaged, .. } = &self.backing {
            let _ = damaged.insert(seq.to_be_bytes(), stored);
        }
        if self.remove(seq) {
            let n = self.metrics.damaged.fetch_add(1, Relaxed);
            if n == 0 {
                tracing::error!(sink = %self.name, seq, error = %why, "damaged entry moved aside (damaged/<sink> in the store); further ones are counted");
            }
        }
    }

    /// Count entries and bytes, moving damaged ones aside. Returns
    /// (entries before, bytes, damaged).
    fn scan(&self) -> (u64, u64, u64) {
        let Backing::Sled { tree, .. } = &self.backing else {
            return (0, 0, 0);
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        let mut bad = Vec::new();
        for kv in tree.iter() {
            match kv {
                Ok((k, v)) => {
                    let seq = if k.len() == 8 { key(&k) } else { u64::MAX };
                    match entry::decode(seq, &v) {
                        Ok(_) if seq != u64::MAX => {
                            n += 1;
                            bytes += v.len() as u64;
                        }
                        Ok(_) => bad.push((k.to_vec(), v.to_vec(), EntryError::Truncated(k.len()))),
                        Err(why) => bad.push((k.to_vec(), v.to_vec(), why)),
                    }
                }
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "the store could not read past this point; serving what was read");
                    break;
                }
            }
        }
        self.len.store(n, Relaxed);
        self.bytes.store(bytes, Relaxed);
        let damaged = bad.len() as u64;
        if self.read_only {
            self.metrics.damaged.fetch_add(damaged, Relaxed);
            return (n, bytes, damaged);
        }
        if let Backing::Sled {
            tree,
            damaged: aside,
        } = &self.backing
        {
            for (k, v, why) in bad {
                tracing::error!(sink = %self.name, key = ?k, error = %why, "damaged entry moved aside");
                let _ = aside.insert(&k, v);
                let _ = tree.remove(&k);
            }
        }
        self.metrics.damaged.fetch_add(damaged, Relaxed);
        (n, bytes, damaged)
    }

    /// Remove entries older than `max_age` (from the head); returns how many.
    pub fn expire(&self, now_ms: u64) -> u64 {
        if self.cfg.max_age.is_zero() {
            return 0;
        }
        let cutoff = now_ms.saturating_sub(self.cfg.max_age.as_millis() as u64);
        let mut n = 0;
        while let Some((k, ts)) = self.oldest() {
            if ts >= cutoff {
                break;
            }
            if self.remove(k) {
                n += 1;
            }
        }
        self.metrics.expired.fetch_add(n, Relaxed);
        n
    }

    /// Entries moved aside as damaged, still kept in the store.
    pub fn damaged_kept(&self) -> u64 {
        match &self.backing {
            Backing::Sled { damaged, .. } => damaged.len() as u64,
            Backing::Memory(_) => 0,
        }
    }
}

fn key(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map_or(u64::MAX, u64::from_be_bytes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleep in small steps until `ready` or `give_up` (used by `block`).
pub fn wait_until(mut ready: impl FnMut() -> bool, give_up: impl Fn() -> bool) -> bool {
    let mut step = Duration::from_millis(1);
    loop {
        if ready() {
            return true;
        }
        if give_up() {
            return false;
        }
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
