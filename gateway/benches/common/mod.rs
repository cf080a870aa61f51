//! Helpers shared by the benchmarks that run against a real mosquitto.

use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// A mosquitto on 127.0.0.1:`port` (config in `dir`), up when this returns.
/// `CLOUD_BROKER_INFLIGHT` sets its per-client in-flight window (default 100).
pub fn broker(dir: &Path, port: u16) -> Kill {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    let inflight = std::env::var("CLOUD_BROKER_INFLIGHT").unwrap_or_else(|_| "100".into());
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages {inflight}\n")).unwrap();
    let k = Kill(
        Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    k
}
