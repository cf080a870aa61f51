//! What several components share, with no component of its own: TLS files
//! and their loading (MQTT sources and sinks both connect to brokers).

pub mod tls;
