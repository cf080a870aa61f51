//! Helpers shared by the benchmarks that run against a real mosquitto.

use std::process::Child;
use std::time::Duration;

use rumqttc::MqttOptions;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by PID) when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Client options for the benchmark publisher and subscribers.
pub fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_inflight(100)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 16, 1 << 16);
    o
}
