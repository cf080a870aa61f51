//! Running a gateway unattended, against a real mosquitto: reload on SIGHUP
//! under a QoS 1 stream (nothing lost, nothing twice, stage state kept, a
//! bad config refused), and `/metrics` scraped over real HTTP and checked
//! against what was sent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Mosquitto, Serve, free_port, patience};

/// Keep one record in `EVERY` (per topic, counted in the stage's state).
const EVERY: u64 = 7;

/// The gateway config: an MQTT source, pipeline `p` = `thin` (downsample,
/// stateful) then `mark` (`mark` is the module of the second stage), a
/// durable file sink, and `/metrics` on `metrics_port`.
fn config(dir: &Path, port: u16, metrics_port: u16, mark: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "gw-op"
modules_dir = {modules:?}

[store]
path = {store:?}

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {port}
client_id = "weir-op"
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]

[[pipeline]]
name = "p"
  [[pipeline.stage]]
  name = "thin"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = {{ every = {EVERY} }}
  [[pipeline.stage]]
  name = "mark"
  {mark}

[[sink]]
name = "out"
type = "file"
path = {out:?}
"#,
        modules = testkit::modules_dir().display().to_string(),
        store = dir.join("store").display().to_string(),
        out = dir.join("out.jsonl").display().to_string(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const PASS: &str = r#"module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = { every = 1 }"#;
const ENRICH: &str = r#"module = "weir_w1_enrich.wasm""#;
const MISSING: &str = r#"module = "no_such_module.wasm""#;

/// Publish `n` QoS 1 records at about `rate` per second, from a thread.
fn stream(port: u16, n: u64, rate: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "sensors/s1/telemetry", "-l", "-i", "op-pub"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub is installed");
        let mut stdin = child.stdin.take().unwrap();
        let began = Instant::now();
        for i in 0..n {
            writeln!(stdin, "{{\"n\":{i},\"temp_c\":20.0}}").unwrap();
            // Paced: record i goes out at i / rate seconds.
            let due = Duration::from_micros(i * 1_000_000 / rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    })
}

/// The records in the file sink so far.
fn out_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_out(dir: &Path, n: usize, weir: &Serve) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + patience(60);
    loop {
        let lines = out_lines(dir);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} records arrived\n{}",
            lines.len(),
            weir.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hangup(weir: &Serve) {
    let ok = Command::new("kill")
        .args(["-HUP", &weir.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// `GET path` over a plain TCP connection: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(patience(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample `name{labels}` in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn sighup_reloads_under_a_qos1_stream_with_no_loss_and_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let metrics_port = free_port();
    let cfg = config(d, broker.port, metrics_port, PASS);
    let weir = Serve::start(&cfg);
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());

    // 20,000 records at 5,000/s; three reloads while they flow.
    const N: u64 = 20_000;
    let publisher = stream(broker.port, N, 5_000);
    std::thread::sleep(Duration::from_millis(1000));
    config(d, broker.port, metrics_port, ENRICH);
    hangup(&weir);
    assert!(weir.wait_log("reloaded"), "{}", weir.log());
    std::thread::sleep(Duration::from_millis(700));
    // A config that does not load is refused; the running one goes on.
    config(d, broker.port, metrics_port, MISSING);
    hangup(&weir);
    assert!(weir.wait_log("reload refused"), "{}", weir.log());
    std::thread::sleep(Duration::from_millis(700));
    config(d, broker.port, metrics_port, PASS);
    hangup(&weir);
    publisher.join().unwrap();

    let want: Vec<u64> = (0..N).filter(|n| n % EVERY == 0).collect();
    let lines = wait_out(d, want.len(), &weir);
    std::thread::sleep(Duration::from_millis(300));
    let lines = if out_lines(d).len() > lines.len() {
        out_lines(d)
    } else {
        lines
    };
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| l["payload"]["n"].as_u64().unwrap())
        .collect();
    // Every seventh record, each once, in order: the downsampler's
    // counter (its state) carried across all three reloads.
    let extra: Vec<&u64> = ns.iter().filter(|n| *n % EVERY != 0).collect();
    let mut seen = std::collections::BTreeSet::new();
    let twice: Vec<&u64> = ns.iter().filter(|n| !seen.insert(**n)).collect();
    assert_eq!(
        ns.len(),
        want.len(),
        "off phase: {:?}, twice: {:?}\n{}",
        &extra[..extra.len().min(10)],
        &twice[..twice.len().min(10)],
        weir.log()
    );
    assert!(ns == want, "not every seventh record, once each, in order");
    // Which version made each record: pass-through, then enrich (it adds
    // temp_f), then pass-through again; each record on exactly one.
    let enriched: Vec<bool> = lines
        .iter()
        .map(|l| l["payload"].get("temp_f").is_some())
        .collect();
    let switches = enriched.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(!enriched[0], "the first records ran on the first version");
    assert_eq!(switches, 2, "one swap to enrich and one back");

    let log = weir.stop();
    assert_eq!(log.matches("reload refused").count(), 1, "{log}");
    assert!(
        log.contains("no_such_module.wasm"),
        "the reason names the module: {log}"
    );
    assert_eq!(log.matches("state kept: p/thin").count(), 2, "{log}");
    assert!(log.contains(&format!("messages={N} records={N}")), "{log}");
    assert!(log.contains("ack_failures=0"), "{log}");
    assert!(log.contains("redelivered=0"), "{log}");
}

#[test]
fn metrics_are_scraped_over_http_and_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let metrics_port = free_port();
    let weir = Serve::start(&config(d, broker.port, metrics_port, PASS));
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());

    // Scraped while the stream flows: a valid exposition each time.
    const N: u64 = 3_500;
    let publisher = stream(broker.port, N, 5_000);
    let (status, body) = http_get(metrics_port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE weir_source_records counter"),
        "{body}"
    );
    publisher.join().unwrap();
    let kept = N.div_ceil(EVERY);
    wait_out(d, kept as usize, &weir);

    // Counters settle at what was sent (the pipeline publishes its counters
    // every 250 ms; the wait is bounded).
    let deadline = Instant::now() + patience(20);
    let body = loop {
        let (_, body) = http_get(metrics_port, "/metrics");
        if sample(&body, r#"weir_sink_delivered_total{sink="out"}"#) == Some(kept as f64)
            && sample(&body, r#"weir_pipeline_records_in_total{pipeline="p"}"#) == Some(N as f64)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let n = N as f64;
    for (series, want) in [
        (r#"weir_source_messages_total{source="local"}"#, n),
        (r#"weir_source_records_total{source="local"}"#, n),
        (r#"weir_source_state{source="local",state="up"}"#, 1.0),
        (
            r#"weir_stage_records_in_total{pipeline="p",stage="thin"}"#,
            n,
        ),
        (
            r#"weir_stage_records_out_total{pipeline="p",stage="thin"}"#,
            kept as f64,
        ),
        (
            r#"weir_stage_dropped_total{pipeline="p",stage="thin"}"#,
            n - kept as f64,
        ),
        (
            r#"weir_stage_records_in_total{pipeline="p",stage="mark"}"#,
            kept as f64,
        ),
        (
            r#"weir_pipeline_records_out_total{pipeline="p"}"#,
            kept as f64,
        ),
        (r#"weir_sink_enqueued_total{sink="out"}"#, kept as f64),
        (r#"weir_sink_queue_entries{sink="out"}"#, 0.0),
        (r#"weir_sink_state{sink="out",state="up"}"#, 1.0),
        (
            r#"weir_sink_delivery_latency_seconds_count{sink="out"}"#,
            kept as f64,
        ),
    ] {
        assert_eq!(sample(&body, series), Some(want), "{series}\n{body}");
    }
    let store: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("weir_store"))
        .collect();
    assert!(
        sample(&body, "weir_store_syncs_total").unwrap_or(0.0) >= 1.0,
        "{store:?}"
    );
    assert!(
        sample(&body, "weir_store_sync_duration_seconds_count").unwrap() >= 1.0,
        "{body}"
    );
    assert!(body.contains(r#"weir_stage_module_info{pipeline="p",stage="thin",module="#));
    // Anything but GET /metrics gets a clear answer, not a hang.
    assert_eq!(http_get(metrics_port, "/").0, "HTTP/1.1 404 Not Found");
    weir.stop();
}
