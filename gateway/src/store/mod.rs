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
mod salvage;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

pub use config::{BufferConfig, StoreConfig, WhenFull};
pub use entry::{DeadLetter, Entry, EntryError, Kind};

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
        "store {path} is damaged: sled cannot open it ({why}); {salvageable} intact entries can be salvaged: `weir serve` moves the store aside, starts a fresh one with them, and keeps message ids"
    )]
    Damaged {
        /// The database directory.
        path: String,
        /// sled's complaint.
        why: String,
        /// Intact entries found in its files.
        salvageable: u64,
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
    /// Intact entries recovered from a store moved aside, by their own
    /// framing ([`salvage`]).
    pub salvaged: u64,
}

/// The open sled database. `None` inside [`Store`] while it is being
/// reopened, or after a reopen failed (operations then fail as on a
/// failing disk, and the sync thread tries again).
struct Handles {
    db: sled::Db,
    meta: sled::Tree,
    seen: sled::Tree,
    sync_file: Option<File>,
}

/// The sled database and the sequence numbers.
pub struct Store {
    sled: RwLock<Option<Handles>>,
    /// Whether this store has a database (false: every queue in memory).
    on_disk: bool,
    cfg: StoreConfig,
    path: PathBuf,
    fsync: bool,
    next_seq: AtomicU64,
    durable: AtomicU64,
    healthy: AtomicBool,
    watermark: Option<File>,
    /// Opened for inspection: queues count damage but move nothing.
    read_only: bool,
    /// The durable queues, by slot, for [`Store::recover`].
    queues: Mutex<Vec<Weak<Queue>>>,
    /// Entries committed since the last successful sync: what sled may
    /// lose when it has to be reopened after an I/O error.
    journal: Mutex<Vec<(usize, u64, Vec<u8>)>>,
    /// Per writer (intake), the lowest sequence number it may still
    /// commit (`u64::MAX`: none): sinks must not read past it.
    writers: Mutex<Vec<Arc<AtomicU64>>>,
}

/// The last synced `next_seq`, 8 bytes big-endian, in a file *beside* the
/// store directory (`<store>.seq`), where moving a damaged store aside or
/// damage inside it cannot reach it: message ids are never reissued. sled's
/// recovery silently drops the log after the first corrupt message;
/// comparing with this file is also how that loss gets reported. Older
/// versions kept it inside the directory as `weir.seq`, still read.
const LEGACY_WATERMARK: &str = "weir.seq";

/// `<store>.<ext>`, beside the store.
fn side_path(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(ext);
    path.with_file_name(name)
}

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
/// The tree of salvaged entries waiting for their queue to be opened.
const SALVAGED: &str = "salvaged";

impl Store {
    /// A store with no database: every queue lives in memory.
    pub fn memory() -> Store {
        Store {
            sled: RwLock::new(None),
            on_disk: false,
            cfg: StoreConfig::default(),
            path: PathBuf::new(),
            fsync: false,
            next_seq: AtomicU64::new(1),
            durable: AtomicU64::new(u64::MAX),
            healthy: AtomicBool::new(true),
            watermark: None,
            read_only: false,
            queues: Mutex::new(Vec::new()),
            journal: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
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
        // sled's recovery zeroes and truncates a log after the first
        // corrupt message, so what it will lose must be copied out first:
        // unless the files are exactly as weir left them at its last clean
        // stop, every intact entry is copied to `<store>.salvage`.
        let side = SideFile(side_path(path, "salvage"));
        let side = &side.0;
        let _ = std::fs::remove_file(side);
        // A store in use is not copied (opening it fails anyway); our own
        // lock can linger a moment after a close.
        let free = {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while !unlocked(&path.join("db")) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            unlocked(&path.join("db"))
        };
        if mode == OpenMode::Serve && free && path.join("db").is_file() {
            let clean = side_path(path, "clean");
            let same = std::fs::read_to_string(&clean).ok() == salvage::fingerprint(path).ok();
            let _ = std::fs::remove_file(&clean);
            if !same {
                salvage::copy_out(path, side).map_err(io)?;
            }
        }
        let db = match open_sled_patiently(path, cfg) {
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
                    salvageable: salvage::scan(path, |_, _, _| {}).unwrap_or(0),
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
                let db = open_sled(path, cfg).map_err(|e| {
                    io(std::io::Error::other(format!(
                        "a fresh store cannot be opened either: {e:?}"
                    )))
                })?;
                // What is intact in the old files goes into the fresh
                // store; each queue takes its own when it is opened.
                let salvaged = db.open_tree(SALVAGED).map_err(|source| StoreError::Sled {
                    path: path.display().to_string(),
                    source,
                })?;
                let mut failed = None;
                report.salvaged = salvage::scan(&aside, |queue, seq, bytes| {
                    if let Err(e) = salvaged.insert(salvage::key(queue, seq), bytes) {
                        failed.get_or_insert(e);
                    }
                })
                .map_err(io)?;
                if let Some(source) = failed {
                    return Err(StoreError::Sled {
                        path: path.display().to_string(),
                        source,
                    });
                }
                db.flush().map_err(|source| StoreError::Sled {
                    path: path.display().to_string(),
                    source,
                })?;
                tracing::warn!(store = %path.display(), from = %aside.display(), entries = report.salvaged,
                    "intact entries salvaged from the damaged store by their own checksums");
                report.moved_aside = Some((aside, why));
                db
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
        // Salvaged entries count as issued, watermark or not.
        if let Ok(t) = db.open_tree(SALVAGED) {
            for k in t.iter().keys().flatten() {
                next = next.max(key(&k[4..]).saturating_add(1));
            }
        }
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
        // sled cut its log: the entries from where it stopped up to what
        // was issued come back from the copy (earlier ones it still has,
        // or they were delivered).
        if issued > next && side.is_file() {
            let salvaged = db.open_tree(SALVAGED).map_err(sled_err)?;
            let mut n = 0;
            let mut failed = None;
            salvage::read_copy(side, |queue, seq, bytes| {
                if (next..issued).contains(&seq) {
                    match salvaged.insert(salvage::key(queue, seq), bytes) {
                        Ok(_) => n += 1,
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
            })
            .map_err(io)?;
            if let Some(e) = failed {
                return Err(sled_err(e));
            }
            if n > 0 {
                db.flush().map_err(sled_err)?;
                report.salvaged += n;
                tracing::warn!(store = %path.display(), entries = n,
                    "sled's recovery cut its log at damage; the intact entries after the cut were salvaged by their own checksums");
            }
        }
        if issued > next + report.salvaged {
            report.lost_seqs = issued - next - report.salvaged;
            tracing::error!(
                store = %path.display(),
                issued_up_to = issued,
                recovered_up_to = next,
                "the store lost entries to damage: sled's recovery stopped at a corrupt log message; up to {} entries are gone, the rest is served",
                report.lost_seqs
            );
        }
        // Never reissued, whatever sled recovered.
        next = next.max(issued);
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
            sled: RwLock::new(Some(Handles {
                db,
                meta,
                seen,
                sync_file,
            })),
            on_disk: true,
            cfg: cfg.clone(),
            path: path.to_path_buf(),
            fsync: cfg.fsync,
            next_seq: AtomicU64::new(next),
            durable: AtomicU64::new(next),
            healthy: AtomicBool::new(true),
            watermark,
            read_only: mode == OpenMode::Inspect,
            queues: Mutex::new(Vec::new()),
            journal: Mutex::new(Vec::new()),
            writers: Mutex::new(Vec::new()),
        };
        Ok((store, report))
    }

    /// Whether entries live on disk.
    pub fn is_durable(&self) -> bool {
        self.on_disk
    }

    /// Write one input's outputs, after its redelivery marker. The marker
    /// names the last output's sequence number: sled recovers a prefix of
    /// its log, so if that output survived a crash, all of them did, and
    /// [`Store::redelivery_done`] can tell. Memory queues are written
    /// directly.
    pub fn commit(&self, puts: Vec<(&Queue, u64, Vec<u8>)>, marker: Option<&Origin>) {
        if let Some(o) = marker
            && let Some(h) = read(&self.sled).as_ref()
        {
            let mut v = o.digest.to_le_bytes().to_vec();
            v.extend_from_slice(&puts.last().map_or(u64::MAX, |p| p.1).to_le_bytes());
            // Fails only with the disk, which sync reports.
            let _ = h.seen.insert(seen_key(o), v);
        }
        let mut journal = None;
        for (q, seq, mut stored) in puts {
            entry::stamp(&mut stored, seq, q.id);
            q.insert_stamped(seq, &stored);
            q.metrics.enqueued.fetch_add(1, Relaxed);
            if let Some(slot) = q.slot {
                journal
                    .get_or_insert_with(|| lock(&self.journal))
                    .push((slot, seq, stored));
            }
        }
    }

    /// Whether a redelivered input (`o`, with DUP set) was already taken in
    /// completely: its marker matches, and its last output is queued, or
    /// below the durable mark (synced, then delivered or dropped), or it
    /// had none. Otherwise it is processed again: at worst a duplicate
    /// under a new message id, never a loss.
    pub fn redelivery_done(&self, o: &Origin, queues: &[&Queue]) -> bool {
        let got = match read(&self.sled).as_ref() {
            Some(h) => h.seen.get(seen_key(o)),
            None => return false,
        };
        let Ok(Some(v)) = got else {
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
    ) -> Result<Arc<Queue>, StoreError> {
        let guard = read(&self.sled);
        let (backing, slot) = match (guard.as_ref(), durable && self.on_disk) {
            (Some(h), true) => {
                let sled_err = |source| StoreError::Sled {
                    path: self.path.display().to_string(),
                    source,
                };
                let trees = Trees::open(&h.db, name).map_err(sled_err)?;
                if !self.read_only {
                    take_salvaged(&h.db, &trees.tree, name).map_err(sled_err)?;
                }
                let slot = lock(&self.queues).len();
                (Backing::Sled(RwLock::new(Some(trees))), Some(slot))
            }
            (None, true) => {
                return Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other("the store is not open (a reopen failed)"),
                });
            }
            _ => (
                Backing::Memory(Mutex::new(BTreeMap::new()), Mutex::new(BTreeMap::new())),
                None,
            ),
        };
        drop(guard);
        let q = Arc::new(Queue {
            name: name.to_string(),
            read_only: self.read_only,
            backing,
            slot,
            id: entry::queue_id(name),
            cfg: Mutex::new(cfg),
            bytes: AtomicU64::new(0),
            len: AtomicU64::new(0),
            metrics: QueueMetrics::default(),
            wake: tokio::sync::Notify::new(),
            failing: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
        });
        if slot.is_some() {
            lock(&self.queues).push(Arc::downgrade(&q));
        }
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
        self.next_seq.fetch_add(1, SeqCst)
    }

    /// A writer's low-water mark: set it (with [`Store::hold_from`])
    /// before taking sequence numbers, clear it (`u64::MAX`) once they are
    /// committed; [`Store::deliverable`] stays below it meanwhile.
    pub fn writer(&self) -> Arc<AtomicU64> {
        let w = Arc::new(AtomicU64::new(u64::MAX));
        lock(&self.writers).push(w.clone());
        w
    }

    /// Mark `w` as about to take sequence numbers (keeps an earlier mark).
    pub fn hold_from(&self, w: &AtomicU64) {
        if w.load(SeqCst) == u64::MAX {
            w.store(self.next_seq.load(SeqCst), SeqCst);
        }
    }

    /// Entries below this may become deliverable at the next sync: every
    /// number below it was either committed or will never be.
    pub fn deliverable(&self) -> u64 {
        let next = self.next_seq.load(SeqCst);
        lock(&self.writers)
            .iter()
            .map(|w| w.load(SeqCst))
            .fold(next, u64::min)
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
        if !self.on_disk {
            return Ok(());
        }
        let guard = read(&self.sled);
        let r = (|| {
            let Some(h) = guard.as_ref() else {
                return Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other("the store is not open (a reopen failed)"),
                });
            };
            // Every number issued, not only those deliverable: never reissued.
            let issued = self.next_seq().max(upto);
            h.meta
                .insert(NEXT_SEQ, &issued.to_be_bytes())
                .map_err(|source| StoreError::Sled {
                    path: self.path.display().to_string(),
                    source,
                })?;
            h.db.flush().map_err(|source| StoreError::Sled {
                path: self.path.display().to_string(),
                source,
            })?;
            if self.fsync
                && let Some(f) = &h.sync_file
            {
                f.sync_data().map_err(|source| StoreError::Io {
                    path: self.path.join("db").display().to_string(),
                    source,
                })?;
            }
            if let Some(w) = &self.watermark {
                use std::os::unix::fs::FileExt;
                w.write_all_at(&issued.to_be_bytes(), 0)
                    .map_err(|source| StoreError::Io {
                        path: watermark_path(&self.path).display().to_string(),
                        source,
                    })?;
            }
            Ok(())
        })();
        drop(guard);
        self.healthy.store(r.is_ok(), Relaxed);
        if r.is_ok() {
            self.durable.fetch_max(upto, Release);
            lock(&self.journal).retain(|e| e.1 >= upto);
        }
        r
    }

    /// After a failed sync: sled 0.34 keeps its first I/O error and fails
    /// every later write, so the only way back is to reopen the database.
    /// Returns `Ok(false)` without touching anything while the filesystem
    /// still has less than [`RECOVER_FREE`] plus the journal free. Else
    /// every handle is dropped, sled reopened (its recovery keeps what
    /// was flushed), the entries committed since the last good sync are
    /// written again from the journal, and the queues recounted. A sync
    /// must follow; until it succeeds, inputs stay unacknowledged.
    pub fn recover(&self) -> Result<bool, StoreError> {
        if !self.on_disk || self.read_only {
            return Ok(true);
        }
        let journal_bytes: u64 = lock(&self.journal).iter().map(|e| e.2.len() as u64).sum();
        if let Some(free) = free_bytes(&self.path)
            && free < RECOVER_FREE + 2 * journal_bytes
        {
            return Ok(false);
        }
        let io = |e: String| StoreError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        };
        let mut handles = write(&self.sled);
        let queues: Vec<Arc<Queue>> = lock(&self.queues)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut trees: Vec<_> = queues.iter().map(|q| q.trees_mut()).collect();
        // Every handle goes, or sled keeps its lock and its error.
        for t in trees.iter_mut().flatten() {
            **t = None;
        }
        *handles = None;
        let db = match open_sled_patiently(&self.path, &self.cfg) {
            Ok(db) => db,
            Err(Opened::Io(e)) => return Err(io(e.to_string())),
            Err(Opened::Damaged(why)) => return Err(io(why)),
        };
        let sled_err = |source| StoreError::Sled {
            path: self.path.display().to_string(),
            source,
        };
        for (q, t) in queues.iter().zip(trees.iter_mut()) {
            if let Some(t) = t {
                **t = Some(Trees::open(&db, &q.name).map_err(sled_err)?);
            }
        }
        let sync_file = if self.fsync {
            Some(File::open(self.path.join("db")).map_err(|e| io(e.to_string()))?)
        } else {
            None
        };
        *handles = Some(Handles {
            meta: db.open_tree("meta").map_err(sled_err)?,
            seen: db.open_tree("seen").map_err(sled_err)?,
            db,
            sync_file,
        });
        drop(trees);
        drop(handles);
        let by_slot = |slot| queues.iter().find(|q| q.slot == Some(slot));
        for (slot, seq, stored) in lock(&self.journal).iter() {
            if let Some(q) = by_slot(*slot)
                && !q.contains(*seq)
            {
                q.insert(*seq, stored);
            }
        }
        for q in &queues {
            q.recount();
        }
        Ok(true)
    }

    /// A clean stop: sync, close sled, and record a fingerprint of its files
    /// (`<store>.clean`), so the next start can tell they are exactly as
    /// left and skip copying entries out before sled's recovery.
    pub fn close(&self) {
        if !self.on_disk || self.read_only {
            return;
        }
        if self.sync(self.next_seq()).is_err() {
            return;
        }
        let queues: Vec<Arc<Queue>> = lock(&self.queues)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for q in &queues {
            if let Some(mut t) = q.trees_mut() {
                *t = None;
            }
        }
        *write(&self.sled) = None;
        // sled lets go of its files from background threads.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline && !unlocked(&self.path.join("db")) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(f) = salvage::fingerprint(&self.path) {
            let _ = std::fs::write(side_path(&self.path, "clean"), f);
        }
    }

    /// sled's own view of the database size on disk.
    pub fn size_on_disk(&self) -> u64 {
        read(&self.sled)
            .as_ref()
            .and_then(|h| h.db.size_on_disk().ok())
            .unwrap_or(0)
    }

    /// The sink queues present in the database, by name.
    pub fn queue_names(&self) -> Vec<String> {
        let guard = read(&self.sled);
        let Some(h) = guard.as_ref() else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            h.db.tree_names()
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
        if let (Some(to), Some(from)) = (read(&self.sled).as_ref(), read(&old.sled).as_ref()) {
            for (k, v) in from.seen.iter().flatten() {
                let _ = to.seen.insert(k, v);
            }
        }
        self.next_seq.fetch_max(old.next_seq(), Relaxed);
    }

    /// Drop a queue (and its damaged entries) entirely.
    pub fn drop_queue(&self, name: &str) -> Result<(), StoreError> {
        if let Some(h) = read(&self.sled).as_ref() {
            for t in [
                format!("q/{name}"),
                format!("damaged/{name}"),
                format!("dead/{name}"),
            ] {
                h.db.drop_tree(t).map_err(|source| StoreError::Sled {
                    path: self.path.display().to_string(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// The redelivery marker's key: source, packet id, and the pipeline when
/// pipelines run on their own threads (each marks its own part).
fn seen_key(o: &Origin) -> Vec<u8> {
    let mut k = o.source.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&o.pkid.to_be_bytes());
    if !o.lane.is_empty() {
        k.push(0);
        k.extend_from_slice(o.lane.as_bytes());
    }
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

/// The copy of a store's entries made before sled's recovery; removed
/// however the open ends.
struct SideFile(PathBuf);

impl Drop for SideFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether another process (a running `weir serve`) holds the store at `path`.
pub fn in_use(path: &Path) -> bool {
    let db = path.join("db");
    db.is_file() && !unlocked(&db)
}

/// Whether nobody holds sled's lock on `db`.
fn unlocked(db: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = File::open(db) else {
        return true;
    };
    // SAFETY: flock on a file descriptor we own; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Move the salvaged entries of queue `name` into its tree.
fn take_salvaged(db: &sled::Db, tree: &sled::Tree, name: &str) -> sled::Result<()> {
    let salvaged = db.open_tree(SALVAGED)?;
    let prefix = entry::queue_id(name).to_be_bytes();
    for kv in salvaged.scan_prefix(prefix) {
        let (k, v) = kv?;
        let seq = key(&k[4..]);
        if !tree.contains_key(seq.to_be_bytes())? {
            tree.insert(seq.to_be_bytes(), v)?;
        }
        salvaged.remove(k)?;
    }
    Ok(())
}

/// Free space [`Store::recover`] waits for before reopening sled (its
/// recovery and first segments write).
pub const RECOVER_FREE: u64 = 1 << 20;

/// Bytes available to an unprivileged writer on the filesystem of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// sled releases its file lock from background threads after the last
/// handle is dropped, so a store closed a moment ago in this process can
/// still be locked: retry briefly before calling it in use.
fn open_sled_patiently(path: &Path, cfg: &StoreConfig) -> Result<sled::Db, Opened> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut opened = open_sled(path, cfg);
    while matches!(&opened, Err(Opened::Io(e)) if e.to_string().contains("could not acquire lock"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
        opened = open_sled(path, cfg);
    }
    opened
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
    /// Entries the sink cannot deliver, moved to its dead-letter queue.
    pub dead_lettered: AtomicU64,
}

/// A durable queue's sled trees: its entries, damaged ones kept aside,
/// and its dead letters (entries the sink cannot deliver).
struct Trees {
    tree: sled::Tree,
    damaged: sled::Tree,
    dead: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db, name: &str) -> sled::Result<Trees> {
        Ok(Trees {
            tree: db.open_tree(format!("q/{name}"))?,
            damaged: db.open_tree(format!("damaged/{name}"))?,
            dead: db.open_tree(format!("dead/{name}"))?,
        })
    }
}

enum Backing {
    /// `None` while the store is reopened after an I/O error.
    Sled(RwLock<Option<Trees>>),
    /// Entries, and dead letters.
    Memory(Mutex<BTreeMap<u64, Vec<u8>>>, Mutex<BTreeMap<u64, Vec<u8>>>),
}

/// One sink's queue.
pub struct Queue {
    name: String,
    /// Inspection only: damage is counted, never moved.
    read_only: bool,
    backing: Backing,
    /// Its place among the store's durable queues.
    slot: Option<usize>,
    /// Its id in its entries ([`entry::queue_id`] of the name).
    id: u32,
    cfg: Mutex<BufferConfig>,
    bytes: AtomicU64,
    len: AtomicU64,
    /// Counters.
    pub metrics: QueueMetrics,
    /// Notified when entries become deliverable.
    pub wake: tokio::sync::Notify,
    /// Inserts are failing (said once until one succeeds).
    failing: AtomicBool,
    /// drop-oldest cannot evict (said once until it can).
    stuck: AtomicBool,
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
    pub fn config(&self) -> BufferConfig {
        *lock(&self.cfg)
    }

    /// New bounds (a reload): they apply from the next entry admitted and
    /// the next expiry pass. Entries already queued stay.
    pub fn set_config(&self, cfg: BufferConfig) {
        *lock(&self.cfg) = cfg;
    }

    /// Whether entries live on disk.
    pub fn is_durable(&self) -> bool {
        matches!(self.backing, Backing::Sled(_))
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

    /// The sled trees, for writing (reopening); `None` for a memory queue.
    fn trees_mut(&self) -> Option<std::sync::RwLockWriteGuard<'_, Option<Trees>>> {
        match &self.backing {
            Backing::Sled(t) => Some(write(t)),
            Backing::Memory(..) => None,
        }
    }

    /// Apply the full policy for an entry of `need` bytes about to be
    /// committed: `Stored` means go ahead (after evicting, for drop-oldest).
    /// drop-oldest that cannot evict (a failing disk) answers `Full`, so
    /// the intake waits instead of spinning, and says so once.
    pub fn admit(&self, need: u64) -> Pushed {
        let cfg = self.config();
        let max = cfg.max_bytes.0.max(need);
        if self.bytes() + need > max {
            match cfg.when_full {
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
                        } else {
                            if !self.stuck.swap(true, Relaxed) {
                                tracing::error!(sink = %self.name, "drop-oldest cannot evict (the store is failing): refusing new input until it can; inputs stay unacknowledged");
                            }
                            return Pushed::Full;
                        }
                    }
                    if self.stuck.swap(false, Relaxed) {
                        tracing::info!(sink = %self.name, "drop-oldest evicts again");
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
        let mut v = stored.to_vec();
        entry::stamp(&mut v, seq, self.id);
        self.insert_stamped(seq, &v);
    }

    fn insert_stamped(&self, seq: u64, stored: &[u8]) {
        let old = match &self.backing {
            Backing::Sled(t) => {
                let r = match read(t).as_ref() {
                    Some(t) => t.tree.insert(seq.to_be_bytes(), stored),
                    None => Err(sled::Error::ReportableBug(
                        "the store is being reopened".into(),
                    )),
                };
                match r {
                    Ok(old) => {
                        if self.failing.swap(false, Relaxed) {
                            tracing::info!(sink = %self.name, "store inserts work again");
                        }
                        old.map(|o| o.len())
                    }
                    Err(e) => {
                        // sled inserts into memory; I/O errors surface at
                        // sync, which keeps the batch unacknowledged, and
                        // the store's journal writes it again on recovery.
                        if !self.failing.swap(true, Relaxed) {
                            tracing::error!(sink = %self.name, error = %e, "store insert failed; further failures are not logged until one succeeds");
                        }
                        return;
                    }
                }
            }
            Backing::Memory(m, _) => lock(m).insert(seq, stored.to_vec()).map(|o| o.len()),
        };
        self.account(old, stored.len());
    }

    /// Whether entry `seq` is queued.
    pub fn contains(&self, seq: u64) -> bool {
        match &self.backing {
            Backing::Sled(t) => read(t)
                .as_ref()
                .is_some_and(|t| t.tree.contains_key(seq.to_be_bytes()).unwrap_or(false)),
            Backing::Memory(m, _) => lock(m).contains_key(&seq),
        }
    }

    /// Insert stored bytes as they are, without bounds (for compaction).
    pub fn copy_in(&self, seq: u64, stored: &[u8]) {
        self.insert(seq, stored);
    }

    /// Copy the damaged entries kept aside into `to` (for compaction).
    pub fn copy_damaged_to(&self, to: &Queue) {
        if let (Backing::Sled(from), Backing::Sled(dst)) = (&self.backing, &to.backing)
            && let (Some(from), Some(dst)) = (read(from).as_ref(), read(dst).as_ref())
        {
            for (k, v) in from.damaged.iter().flatten() {
                let _ = dst.damaged.insert(k, v);
            }
        }
    }

    /// Copy the dead letters into `to` (for compaction).
    pub fn copy_dead_letters_to(&self, to: &Queue) {
        for d in self.dead_letters(0, usize::MAX).into_iter().flatten() {
            to.put_dead(
                d.seq,
                &entry::encode_dead(d.at_ms, d.attempts, &d.reason, &d.stored),
            );
        }
    }

    fn stored(&self, seq: u64) -> Option<Vec<u8>> {
        match &self.backing {
            Backing::Sled(t) => read(t)
                .as_ref()
                .and_then(|t| t.tree.get(seq.to_be_bytes()).ok().flatten())
                .map(|v| v.to_vec()),
            Backing::Memory(m, _) => lock(m).get(&seq).cloned(),
        }
    }

    fn put_dead(&self, seq: u64, bytes: &[u8]) -> bool {
        match &self.backing {
            Backing::Sled(t) => read(t)
                .as_ref()
                .is_some_and(|t| t.dead.insert(seq.to_be_bytes(), bytes).is_ok()),
            Backing::Memory(_, d) => {
                lock(d).insert(seq, bytes.to_vec());
                true
            }
        }
    }

    /// Move entry `seq` to the dead-letter queue with `reason` after
    /// `attempts` failures: the queue moves on without it. False if it
    /// was not queued (or the store is failing: it stays queued).
    pub fn dead_letter(&self, seq: u64, attempts: u32, reason: &str) -> bool {
        let Some(stored) = self.stored(seq) else {
            return false;
        };
        let dead = entry::encode_dead(crate::record::now_ms(), attempts, reason, &stored);
        if !self.put_dead(seq, &dead) || !self.remove(seq) {
            return false;
        }
        self.metrics.dead_lettered.fetch_add(1, Relaxed);
        true
    }

    /// Up to `max` dead letters from `from` on, in order; a damaged one is
    /// an error in its place.
    pub fn dead_letters(
        &self,
        from: u64,
        max: usize,
    ) -> Vec<Result<DeadLetter, (u64, EntryError)>> {
        let decode = |k: u64, v: &[u8]| entry::decode_dead(k, v).map_err(|e| (k, e));
        match &self.backing {
            Backing::Sled(t) => read(t).as_ref().map_or(Vec::new(), |t| {
                t.dead
                    .range(from.to_be_bytes()..)
                    .flatten()
                    .take(max)
                    .map(|(k, v)| decode(key(&k), &v))
                    .collect()
            }),
            Backing::Memory(_, d) => lock(d)
                .range(from..)
                .take(max)
                .map(|(k, v)| decode(*k, v))
                .collect(),
        }
    }

    /// Dead letters kept.
    pub fn dead_letters_kept(&self) -> u64 {
        match &self.backing {
            Backing::Sled(t) => read(t).as_ref().map_or(0, |t| t.dead.len() as u64),
            Backing::Memory(_, d) => lock(d).len() as u64,
        }
    }

    /// Remove dead letter `seq` for good; false if there is none.
    pub fn drop_dead_letter(&self, seq: u64) -> bool {
        match &self.backing {
            Backing::Sled(t) => read(t)
                .as_ref()
                .is_some_and(|t| matches!(t.dead.remove(seq.to_be_bytes()), Ok(Some(_)))),
            Backing::Memory(_, d) => lock(d).remove(&seq).is_some(),
        }
    }

    /// Put dead letter `seq` back in the queue under its own sequence
    /// number (so its message id), ahead of newer entries, without bounds.
    /// Its entry's checksum is verified first.
    pub fn requeue_dead_letter(&self, seq: u64) -> Result<bool, EntryError> {
        let d = match self.dead_letters(seq, 1).pop() {
            Some(Ok(d)) if d.seq == seq => d,
            Some(Err((k, e))) if k == seq => return Err(e),
            _ => return Ok(false),
        };
        entry::decode(seq, &d.stored)?;
        self.insert(seq, &d.stored);
        Ok(self.drop_dead_letter(seq))
    }

    /// Remove the entry `seq`; false if it was not there (already
    /// delivered, evicted or expired) or the store is failing.
    pub fn remove(&self, seq: u64) -> bool {
        let old = match &self.backing {
            Backing::Sled(t) => read(t)
                .as_ref()
                .and_then(|t| t.tree.remove(seq.to_be_bytes()).ok().flatten())
                .map(|o| o.len()),
            Backing::Memory(m, _) => lock(m).remove(&seq).map(|o| o.len()),
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
            Backing::Sled(t) => read(t)
                .as_ref()
                .and_then(|t| t.tree.first().ok().flatten())
                .map(|(k, v)| (key(&k), v.to_vec())),
            Backing::Memory(m, _) => lock(m).first_key_value().map(|(k, v)| (*k, v.clone())),
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
        self.read_within(from, below, max, u64::MAX)
    }

    /// [`Queue::read`], stopping once the entries read hold `max_bytes`
    /// (at least one entry is read): what a sink holds at once is bounded
    /// in bytes, whatever the records' size.
    pub fn read_within(&self, from: u64, below: u64, max: usize, max_bytes: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if from >= below {
            return out;
        }
        let mut bad = Vec::new();
        match &self.backing {
            Backing::Sled(t) => {
                if let Some(t) = read(t).as_ref() {
                    for kv in t.tree.range(from.to_be_bytes()..below.to_be_bytes()) {
                        let Ok((k, v)) = kv else { break };
                        match entry::decode(key(&k), &v) {
                            Ok(e) => {
                                bytes += v.len() as u64;
                                out.push(e);
                            }
                            Err(why) => bad.push((key(&k), v.to_vec(), why)),
                        }
                        if out.len() >= max || bytes >= max_bytes {
                            break;
                        }
                    }
                }
            }
            Backing::Memory(m, _) => {
                for (k, v) in lock(m).range(from..below).take(max) {
                    if let Ok(e) = entry::decode(*k, v) {
                        bytes += v.len() as u64;
                        out.push(e);
                    }
                    if bytes >= max_bytes {
                        break;
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
        if let Backing::Sled(t) = &self.backing
            && let Some(t) = read(t).as_ref()
        {
            let _ = t.damaged.insert(seq.to_be_bytes(), stored);
        }
        if self.remove(seq) {
            let n = self.metrics.damaged.fetch_add(1, Relaxed);
            if n == 0 {
                tracing::error!(sink = %self.name, seq, error = %why, "damaged entry moved aside (damaged/<sink> in the store); further ones are counted");
            }
        }
    }

    /// Count the entries and bytes held again (after a reopen).
    fn recount(&self) {
        let (mut n, mut bytes) = (0u64, 0u64);
        if let Backing::Sled(t) = &self.backing
            && let Some(t) = read(t).as_ref()
        {
            for (_, v) in t.tree.iter().flatten() {
                n += 1;
                bytes += v.len() as u64;
            }
        }
        self.len.store(n, Relaxed);
        self.bytes.store(bytes, Relaxed);
    }

    /// Count entries and bytes, moving damaged ones aside. Returns
    /// (entries before, bytes, damaged).
    fn scan(&self) -> (u64, u64, u64) {
        let Backing::Sled(t) = &self.backing else {
            return (0, 0, 0);
        };
        let guard = read(t);
        let Some(Trees {
            tree,
            damaged: aside,
            ..
        }) = guard.as_ref()
        else {
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
        for (k, v, why) in bad {
            tracing::error!(sink = %self.name, key = ?k, error = %why, "damaged entry moved aside");
            let _ = aside.insert(&k, v);
            let _ = tree.remove(&k);
        }
        self.metrics.damaged.fetch_add(damaged, Relaxed);
        (n, bytes, damaged)
    }

    /// Remove entries older than `max_age` (from the head); returns how many.
    pub fn expire(&self, now_ms: u64) -> u64 {
        let max_age = self.config().max_age;
        if max_age.is_zero() {
            return 0;
        }
        let cutoff = now_ms.saturating_sub(max_age.as_millis() as u64);
        let mut n = 0;
        while let Some((k, ts)) = self.oldest() {
            if ts >= cutoff {
                break;
            }
            if self.remove(k) {
                n += 1;
            } else {
                break; // a failing store: try again next time
            }
        }
        self.metrics.expired.fetch_add(n, Relaxed);
        n
    }

    /// Entries moved aside as damaged, still kept in the store.
    pub fn damaged_kept(&self) -> u64 {
        match &self.backing {
            Backing::Sled(t) => read(t).as_ref().map_or(0, |t| t.damaged.len() as u64),
            Backing::Memory(..) => 0,
        }
    }
}

fn key(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map_or(u64::MAX, u64::from_be_bytes)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
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
