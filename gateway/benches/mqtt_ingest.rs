//! MQTT records per second taken into the W1 pipeline by `weir serve`, next
//! to mosquitto's own pass-through (publisher → mosquitto → subscriber, no
//! processor) measured in the same run, against the same broker.
//!
//! `cargo bench -p weir --bench mqtt_ingest` (`MQTT_RECORDS=N` sets the size).
//! Needs mosquitto (installed by `cargo xtask setup`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use testkit::w1;

mod common;
use common::{Kill, broker, free_port, options};

/// Publish every payload at QoS 1 as fast as the in-flight window allows,
/// and return once the broker acknowledged them all (or after 5 minutes).
async fn publish(port: u16, payloads: &[Vec<u8>]) {
    let (client, mut events) = AsyncClient::new(options("bench-pub", port), 1000);
    let n = payloads.len();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < n {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
    });
    for (i, p) in payloads.iter().enumerate() {
        let topic = format!("sensors/s{}/telemetry", i % 100);
        client
            .publish(topic, QoS::AtLeastOnce, false, p.clone())
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(300), driver)
        .await
        .expect("every publish acknowledged within 5 minutes")
        .unwrap();
}

fn main() {
    let n: usize = std::env::var("MQTT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let readings = w1::generate(n, 3);
    let payloads: Vec<Vec<u8>> = readings
        .iter()
        .map(|r| r.json().to_string().into_bytes())
        .collect();
    let expected = w1::reference(&readings).len();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = broker(dir.path(), port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Pass-through: a subscriber counts what the publisher sends.
    let passthrough = rt.block_on(async {
        let (sub, mut events) = AsyncClient::new(options("bench-sub", port), 1000);
        sub.subscribe("sensors/#", QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = events.poll().await {
                break;
            }
        }
        let start = Instant::now();
        let publisher = tokio::spawn({
            let payloads = payloads.clone();
            async move { publish(port, &payloads).await }
        });
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while got < n {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
                Ok(_) => {}
                Err(_) => panic!("pass-through: only {got} of {n} messages within 5 minutes"),
            }
        }
        let elapsed = start.elapsed();
        publisher.abort();
        elapsed
    });

    // 2. weir serve with W1, subscribed the same way, its output read from stdout.
    let modules = testkit::modules_dir();
    let cfg = dir.path().join("weir.toml");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/w1.toml"))
            .unwrap();
    let w1 = shipped.replace(
        "modules_dir = \"../target/modules\"",
        &format!("modules_dir = {:?}", modules.display().to_string()),
    );
    std::fs::write(&cfg, format!(
        "{w1}\n[[source]]\ntype = \"mqtt\"\nname = \"bench\"\nhost = \"127.0.0.1\"\nport = {port}\nclean_session = true\nsubscribe = [ {{ filter = \"sensors/#\", qos = 1 }} ]\n"
    )).unwrap();
    let mut weir = Kill(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("WEIR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(weir.0.stderr.take().unwrap());
    let mut stderr_lines = stderr.lines();
    for line in stderr_lines.by_ref() {
        if line.unwrap().contains("MQTT connected") {
            break;
        }
    }
    std::thread::spawn(move || stderr_lines.for_each(drop));
    std::thread::sleep(Duration::from_millis(300));
    let stdout = BufReader::new(weir.0.stdout.take().unwrap());
    let start = Instant::now();
    let publisher = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(publish(port, &payloads))
    });
    // Count output lines on a thread; wait at most 5 minutes.
    let (count_tx, count_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines() {
            if line.is_err() || count_tx.send(()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut got = 0;
    while got < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match count_rx.recv_timeout(left) {
            Ok(()) => got += 1,
            Err(_) => break,
        }
    }
    let through_weir = start.elapsed();
    let _ = publisher.join();
    drop(weir);
    assert_eq!(got, expected, "every accepted W1 record came out");

    let (r_pass, r_weir) = (
        n as f64 / passthrough.as_secs_f64(),
        n as f64 / through_weir.as_secs_f64(),
    );
    println!("MQTT ingest: {n} W1 messages, QoS 1, loopback mosquitto, one publisher");
    println!("  mosquitto pass-through (no processor)  {r_pass:>10.0} msgs/s");
    println!(
        "  through weir serve + W1 (3 Wasm stages) {r_weir:>9.0} msgs/s  ({expected} records out)"
    );
    println!(
        "  ratio weir / pass-through              {:>10.2}",
        r_weir / r_pass
    );
}
