//! What several components share, with no component of its own: TLS files
//! and their loading (MQTT sources and sinks both connect to brokers), and
//! backoff with jitter.

pub mod backoff;
pub mod tls;
