//! Sources: where records come from. Each runs as a task and hands
//! [`Item`]s to the pipeline thread over a bounded channel.
//!
//! - [`serial`]: sensors on serial lines.
//! - [`mqtt`]: MQTT brokers.
//! - [`item`]: what travels to the pipelines, with its acknowledgement.

pub mod item;
pub mod mqtt;
pub mod serial;

pub use item::{Ack, Item, Origin};
