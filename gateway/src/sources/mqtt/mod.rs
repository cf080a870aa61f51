//! The MQTT source: records from one broker connection.
//!
//! - [`convert`]: messages to records (payload formats, topic fields, user
//!   properties), pure and I/O-free.
//! - [`source`]: the connection, subscriptions, acknowledgements, reconnects.
//! - [`share`]: shared subscriptions across processes, and adopting the
//!   session of a member that died (I/O-free).

pub mod convert;
pub mod share;
pub mod source;

pub use source::{MqttConfig, MqttMetrics};
