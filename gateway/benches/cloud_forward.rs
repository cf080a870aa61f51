//! Store-and-forward, end to end: W1 records from a local mosquitto, through
//! `weir serve` (three Wasm stages, the durable buffer with its default
//! sync policy: sled flush + fdatasync per batch), to a second mosquitto
//! (the "cloud"), next to mosquitto's own pass-through in the same run.
//!
//! Reports:
//! 1. the pass-through ceiling (publisher -> mosquitto -> subscriber);
//! 2. sustained records/s end to end, and the ratio to the ceiling;
//! 3. p50/p99 latency (publish -> cloud subscriber) at a fixed rate below
//!    saturation;
//! 4. draining a backlog buffered while the cloud was away;
//! 5. weir's peak RSS (VmHWM) and CPU per 1,000 records.
//!
//! `cargo bench -p weir --bench cloud_forward` (`CLOUD_RECORDS=N` sets the
//! size, default 50,000; `CLOUD_RATE` the fixed rate, default 5,000/s).
//! Needs mosquitto (installed by `cargo xtask setup`).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Packet, QoS};
use testkit::w1;

mod common;
use common::{Kill, broker, free_port, options};

/// Publish at QoS 1 (as fast as the window allows, or at `rate` per
/// second); returns each payload's send time, once all are acknowledged.
fn publish(port: u16, payloads: Vec<Vec<u8>>, rate: Option<f64>) -> Vec<Instant> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
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
            let start = Instant::now();
            let mut sent = Vec::with_capacity(n);
            for (i, p) in payloads.into_iter().enumerate() {
                if let Some(r) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                sent.push(Instant::now());
                let topic = format!("sensors/s{}/telemetry", i % 100);
                client
                    .publish(topic, QoS::AtLeastOnce, false, p)
                    .await
                    .unwrap();
            }
            tokio::time::timeout(Duration::from_secs(300), driver)
                .await
                .expect("every publish acknowledged within 5 minutes")
                .unwrap();
            sent
        })
}

/// A subscriber on its own thread: `seq` -> first arrival time.
struct Subscriber {
    got: Arc<Mutex<HashMap<u64, Instant>>>,
    count: Arc<Mutex<usize>>,
}

impl Subscriber {
    fn start(port: u16, id: &str, filter: &str) -> Subscriber {
        let got = Arc::new(Mutex::new(HashMap::new()));
        let count = Arc::new(Mutex::new(0));
        let (g, c) = (got.clone(), count.clone());
        let (id, filter) = (id.to_string(), filter.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let (sub, mut events) = AsyncClient::new(options(&id, port), 1000);
                    sub.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
                    loop {
                        match events.poll().await {
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                let _ = ready_tx.send(());
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let now = Instant::now();
                                let v: serde_json::Value =
                                    serde_json::from_slice(&p.payload).unwrap_or_default();
                                let items = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                                for item in items {
                                    *c.lock().unwrap() += 1;
                                    if let Some(s) = item["seq"].as_u64() {
                                        g.lock().unwrap().entry(s).or_insert(now);
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        Subscriber { got, count }
    }

    /// Wait until `n` distinct records arrived (5 minutes at most).
    fn wait(&self, n: usize) -> HashMap<u64, Instant> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.got.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records within 5 minutes",
                self.got.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.got.lock().unwrap().clone()
    }

    fn reset(&self) {
        self.got.lock().unwrap().clear();
        *self.count.lock().unwrap() = 0;
    }
}

/// VmHWM (peak RSS) and CPU seconds (user + system) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm, ticks / 100.0)
}

/// CPU milliseconds per thread name (sled's io threads summed).
fn threads(pid: u32) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let name = if comm.starts_with("sled-io") {
            "sled-io*".to_string()
        } else {
            comm
        };
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ms = (f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0))
            * 10.0;
        *out.entry(name).or_insert(0.0) += ms;
    }
    out
}

fn payloads(readings: &[w1::Reading]) -> Vec<Vec<u8>> {
    readings
        .iter()
        .map(|r| r.json().to_string().into_bytes())
        .collect()
}

fn start_weir(cfg: &Path) -> Kill {
    let mut weir = Kill(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _ = &mut weir;
    std::thread::sleep(Duration::from_millis(700));
    weir
}

fn main() {
    let n: usize = std::env::var("CLOUD_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rate: f64 = std::env::var("CLOUD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000.0);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src_port, cloud_port) = (free_port(), free_port());
    let _src = broker(d, src_port);

    // 1. The ceiling: publisher -> mosquitto -> subscriber.
    let readings = w1::generate(n, 3);
    let pass_sub = Subscriber::start(src_port, "bench-pass", "sensors/#");
    let t = Instant::now();
    publish(src_port, payloads(&readings), None);
    pass_sub.wait(n);
    let ceiling = n as f64 / t.elapsed().as_secs_f64();
    drop(pass_sub);

    // weir: W1, durable buffer with the defaults, an MQTT sink to the cloud.
    let modules = testkit::modules_dir();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines/w1.toml"))
            .unwrap();
    let w1_cfg = shipped.replace(
        "modules_dir = \"../target/modules\"",
        &format!("modules_dir = {:?}", modules.display().to_string()),
    );
    let cfg = d.join("weir.toml");
    std::fs::write(&cfg, format!(
        "{w1_cfg}\n[store]\npath = {store:?}\n{extra}\n\n[[source]]\ntype = \"mqtt\"\nname = \"bench\"\nhost = \"127.0.0.1\"\nport = {src_port}\nsubscribe = [ {{ filter = \"sensors/#\", qos = 1 }} ]\ninflight = {src_inflight}\n\n[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {cloud_port}\n{sink_extra}\n",
        store = d.join("store").display().to_string(),
        sink_extra = std::env::var("CLOUD_SINK").unwrap_or_default().replace(';', "\n"),
        src_inflight = std::env::var("CLOUD_SOURCE_INFLIGHT").unwrap_or_else(|_| "100".into()),
        extra = std::env::var("CLOUD_STORE").unwrap_or_default().replace(';', "\n"),
    )).unwrap();
    let cloud = broker(d, cloud_port);
    let sub = Subscriber::start(cloud_port, "bench-cloud", "cloud/#");
    let weir = start_weir(&cfg);
    let pid = weir.0.id();

    // 2. Sustained, as fast as the publisher goes.
    let expected = w1::reference(&readings).len();
    let t = Instant::now();
    publish(src_port, payloads(&readings), None);
    sub.wait(expected);
    let e2e = n as f64 / t.elapsed().as_secs_f64();
    let (hwm_sustained, cpu_before) = usage(pid);
    let threads_before = threads(pid);

    // 3. Latency at a fixed rate.
    sub.reset();
    let m = ((rate * 5.0) as usize).min(n);
    let mut lat_readings = w1::generate(m, 4);
    for (i, r) in lat_readings.iter_mut().enumerate() {
        r.seq = 1_000_000 + i as u64; // tell them apart from the first run
    }
    let kept: Vec<u64> = w1::reference(&lat_readings).iter().map(|e| e.seq).collect();
    let sent = publish(src_port, payloads(&lat_readings), Some(rate));
    let got = sub.wait(kept.len());
    let (hwm_fixed, cpu_after) = usage(pid);
    let threads_after = threads(pid);
    let mut lat: Vec<f64> = kept
        .iter()
        .map(|s| {
            let at = got[s];
            at.duration_since(sent[(*s - 1_000_000) as usize])
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];

    // 4. Drain after an outage: the cloud goes away, records pile up in the
    //    buffer, the cloud comes back.
    drop(sub);
    drop(cloud);
    let mut backlog = w1::generate(n, 5);
    for (i, r) in backlog.iter_mut().enumerate() {
        r.seq = 2_000_000 + i as u64;
    }
    let backlog_kept = w1::reference(&backlog).len();
    publish(src_port, payloads(&backlog), None);
    // Let the pipelines buffer everything (bounded wait).
    std::thread::sleep(Duration::from_secs_f64(2.0 + n as f64 / 20_000.0));
    let cloud = broker(d, cloud_port);
    let sub = Subscriber::start(cloud_port, "bench-cloud2", "cloud/#");
    let got = sub.wait(backlog_kept);
    let first = got.values().min().copied().unwrap();
    let last = got.values().max().copied().unwrap();
    let drain = (backlog_kept - 1) as f64 / last.duration_since(first).as_secs_f64();
    let (hwm_kb, cpu_end) = usage(pid);
    drop(weir);
    drop(cloud);

    let _ = cpu_end;
    println!("Store-and-forward: W1, {n} messages, QoS 1 both sides, loopback mosquitto x2");
    println!("  mosquitto pass-through (no processor)   {ceiling:>10.0} msgs/s");
    println!("  weir end to end (W1 + durable buffer)   {e2e:>10.0} records/s in ({expected} out)");
    println!(
        "  ratio end to end / pass-through         {:>10.2}   (target >= 0.50)",
        e2e / ceiling
    );
    println!(
        "  latency at {rate:.0} records/s: p50 {:.2} ms, p99 {:.2} ms ({} records)",
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    println!(
        "  drain after outage                      {drain:>10.0} records/s   (target >= 20,000)"
    );
    println!(
        "  weir peak RSS (VmHWM)                   {:>10.1} MB   (target <= 30; {:.1} after the sustained run, {:.1} after the fixed rate, then the backlog)",
        hwm_kb as f64 / 1024.0,
        hwm_sustained as f64 / 1024.0,
        hwm_fixed as f64 / 1024.0
    );
    println!(
        "  weir CPU at the fixed rate              {:>10.1} ms per 1,000 records",
        (cpu_after - cpu_before) * 1000.0 / (m as f64 / 1000.0)
    );
    let mut per: Vec<(String, f64)> = threads_after
        .iter()
        .map(|(k, v)| (k.clone(), v - threads_before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    per.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    println!(
        "    by thread (ms per 1,000): {}",
        per.iter()
            .map(|(k, v)| format!("{k} {:.1}", v / (m as f64 / 1000.0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
