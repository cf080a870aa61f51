//! What several components share, with no component of its own: sizes
//! and durations as configs write them, TLS files and their loading (MQTT
//! sources, sinks and the status publisher connect to brokers), MQTT topic
//! filters, and backoff with jitter. Nothing here imports a component.

pub mod backoff;
pub mod duration;
pub mod health;
pub mod size;
pub mod tls;
pub mod topic;

pub use size::{ByteSize, parse_size};
