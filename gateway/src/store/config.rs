//! `[store]` and `[sink.buffer]`: where and how records are buffered.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::common::ByteSize;
use crate::common::duration::duration;

/// `[store]`: the durable buffer on local storage (one sled database).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The database directory. Default: `$STATE_DIRECTORY/store` under
    /// systemd, else `weir-state/store` next to the config file.
    pub path: Option<PathBuf>,
    /// The group-commit window: the longest a record waits for its batch
    /// to be synced while records keep coming. A record that comes after
    /// a quiet spell of at least the window is synced at once; while
    /// records keep coming, a pipeline syncs at most once per window, or
    /// sooner once a source that waits for acknowledgements (MQTT QoS 1)
    /// goes quiet. `"0ms"`: sync whenever the input runs dry (a sync per
    /// record at low rates). Records are acknowledged upstream only once
    /// synced, either way. The window is a ceiling: the span a batch
    /// actually stays open adapts to the rate (about 32 inputs' worth,
    /// at least 1 ms), so only slow flows wait the whole window.
    /// Default 20 ms. (`sync_every` is its old name.)
    #[serde(
        default = "default_commit_window",
        deserialize_with = "duration",
        alias = "sync_every"
    )]
    pub commit_window: Duration,
    /// Also `fdatasync` the database file after sled's flush (power-loss
    /// safety; sled alone uses `sync_file_range`). Default true.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// sled's page cache (memory bound; sled's own default is 1 GiB).
    #[serde(default = "default_cache")]
    pub cache: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            commit_window: default_commit_window(),
            fsync: true,
            cache: default_cache(),
        }
    }
}

fn default_commit_window() -> Duration {
    Duration::from_millis(20)
}

fn yes() -> bool {
    true
}

fn default_cache() -> ByteSize {
    ByteSize(1 << 20)
}

/// What a full buffer does with one more record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Wait for room: the pipelines stop taking input, sources feel
    /// backpressure (MQTT messages stay unacknowledged at the broker).
    #[default]
    Block,
    /// Evict the oldest buffered entries to make room.
    DropOldest,
    /// Refuse the new record (it is acknowledged upstream and counted).
    DropNewest,
}

/// `[sink.buffer]`: the bounds of one sink's queue.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Most bytes the queue holds (entries as stored).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Entries older than this are expired (counted), `"0s"` for never.
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// What happens when a record does not fit.
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            when_full: WhenFull::default(),
        }
    }
}

fn default_max_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
