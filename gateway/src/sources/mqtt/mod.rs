//! The MQTT source: records from one broker connection.
//!
//! - [`convert`]: messages to records (payload formats, topic fields, user
//!   properties), pure and I/O-free.
//! - [`source`]: the connection, subscriptions, acknowledgements, reconnects.

pub mod convert;
pub mod source;

pub use source::{MqttConfig, MqttMetrics};
