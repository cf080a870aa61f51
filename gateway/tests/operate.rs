//! Running a gateway unattended, against a real mosquitto: reload on SIGHUP
//! under a QoS 1 stream (nothing lost, nothing twice, stage state kept, a
//! bad config refused), and `/metrics` scraped over real HTTP and checked
//! against what was sent.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{FreezableDisk, Mosquitto, Serve, Sub, free_port, out_lines, patience};

/// Keep one record in `EVERY` (per topic, counted in the stage's state).
const EVERY: u64 = 7;

/// The gateway config: an MQTT source, pipeline `p` = `thin` (downsample,
/// stateful) then `mark` (`mark` is the module of the second stage), a
/// durable file sink, and `/metrics` on `metrics_port`.
fn config(dir: &Path, port: u16, metrics_port: u16, mark: &str) -> PathBuf {
    config_with(dir, port, metrics_port, mark, "")
}

/// [`config`] with `extra` appended (more sinks, `[status]`).
fn config_with(dir: &Path, port: u16, metrics_port: u16, mark: &str, extra: &str) -> PathBuf {
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
pipelines = ["p"]
{extra}
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
    common::stream(port, "op-pub", n, rate, |i| {
        format!("{{\"n\":{i},\"temp_c\":20.0}}")
    })
}

fn wait_out(dir: &Path, n: usize, w: &Serve) -> Vec<serde_json::Value> {
    common::wait_out(dir, n, w, 60)
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
    // The source and the sink did not change: they kept their connection
    // and their file through all three reloads.
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
    assert!(!log.contains("restarted"), "{log}");
    assert!(log.contains(&format!("messages={N} records={N}")), "{log}");
    assert!(log.contains("ack_failures=0"), "{log}");
    assert!(log.contains("redelivered=0"), "{log}");
}

/// [`config`]'s gateway with its control socket at [`control_of`];
/// `grow`: a second pipeline `all` (every record) into a second file sink
/// `copy`.
fn growing(dir: &Path, port: u16, metrics_port: u16, grow: bool) -> PathBuf {
    let more = if grow {
        format!(
            r#"
[[pipeline]]
name = "all"
  [[pipeline.stage]]
  name = "pass"
  {PASS}

[[sink]]
name = "copy"
type = "file"
path = {copy:?}
pipelines = ["all"]
"#,
            copy = dir.join("copy.jsonl").display().to_string()
        )
    } else {
        String::new()
    };
    let path = config_with(dir, port, metrics_port, PASS, &more);
    let control = format!(
        "id = \"gw-op\"\ncontrol = {:?}",
        control_of(dir, grow).display().to_string()
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("id = \"gw-op\"", &control, 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// The control socket of [`growing`]'s config: it moves with `grow`.
fn control_of(dir: &Path, grow: bool) -> PathBuf {
    dir.join(if grow { "grown.sock" } else { "weir.sock" })
}

#[test]
fn a_reload_adds_a_pipeline_and_a_sink_moves_metrics_and_takes_them_away_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let (m1, m2) = (free_port(), free_port());
    let weir = Serve::start(&growing(d, broker.port, m1, false));
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());

    const N: u64 = 8_000;
    let publisher = stream(broker.port, N, 2_000);
    std::thread::sleep(Duration::from_millis(1000));
    // One pipeline becomes two (a thread each, behind a dispatcher), a
    // sink and its queue appear, and /metrics moves to another port.
    growing(d, broker.port, m2, true);
    hangup(&weir);
    assert!(weir.wait_log("sinks added: copy"), "{}", weir.log());
    let (status, body) = http_get(m2, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains(r#"weir_sink_enqueued_total{sink="copy"}"#),
        "{body}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", m1)).is_err(),
        "the old metrics port is closed"
    );
    // The control socket moved too: `weir status` answers on the new one.
    assert!(!control_of(d, false).exists(), "the old socket is removed");
    let sock = control_of(d, true);
    let (code, out, err) = self::weir(&["status", "--socket", sock.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("copy"), "{out}");
    // Let `copy` deliver some (bounded), then take it away again.
    let deadline = Instant::now() + patience(20);
    while std::fs::read_to_string(d.join("copy.jsonl")).map_or(0, |t| t.lines().count()) < 100 {
        assert!(
            Instant::now() < deadline,
            "copy delivers nothing\n{}",
            weir.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And back: `all` and `copy` go, the metrics come home.
    growing(d, broker.port, m1, false);
    hangup(&weir);
    assert!(weir.wait_log("sinks removed: copy"), "{}", weir.log());
    publisher.join().unwrap();

    let want: Vec<u64> = (0..N).filter(|n| n % EVERY == 0).collect();
    let lines = wait_out(d, want.len(), &weir);
    let ns: Vec<u64> = lines
        .iter()
        .map(|l| l["payload"]["n"].as_u64().unwrap())
        .collect();
    // `p` kept its state through both swaps: every seventh, once, in order.
    let wrong: Vec<(usize, u64)> = ns
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, _))| (i, *a))
        .take(10)
        .collect();
    if ns != want {
        std::thread::sleep(Duration::from_secs(2));
        let again: Vec<u64> = out_lines(d)
            .iter()
            .map(|l| l["payload"]["n"].as_u64().unwrap())
            .collect();
        let log = weir.stop();
        let at = wrong[0].0;
        let around = &ns[at.saturating_sub(4)..(at + 6).min(ns.len())];
        panic!(
            "{} of {} records ({} after 2 s more), first differences (index, n): {wrong:?}, around: {around:?}\n{log}",
            ns.len(),
            want.len(),
            again.len()
        );
    }

    // `copy` took every record while it was there: one unbroken run.
    let text = std::fs::read_to_string(d.join("copy.jsonl")).unwrap();
    let copied: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["payload"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        copied.len() >= 100,
        "{} copied\n{}",
        copied.len(),
        weir.log()
    );
    assert!(
        copied.windows(2).all(|w| w[1] == w[0] + 1),
        "one run of consecutive records, each once: {:?}..",
        &copied[..copied.len().min(20)]
    );
    assert!(
        *copied.last().unwrap() < N - 1,
        "copy stopped before the end"
    );

    let (status, _) = http_get(m1, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let log = weir.stop();
    assert_eq!(log.matches("reloaded").count(), 2, "{log}");
    assert!(log.contains("metrics restarted"), "{log}");
    assert!(log.contains("its queue stays in the store"), "{log}");
    // The source kept its connection through both.
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
    assert!(log.contains(&format!("messages={N} records={N}")), "{log}");
    assert!(log.contains("ack_failures=0"), "{log}");
}

#[test]
fn delivery_latency_counts_from_receipt_so_a_slow_stage_shows_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let metrics_port = free_port();
    // A stage that takes 50 ms a record: time after receipt, before the
    // record enters the buffer.
    let spin = common::clock_spin_module(d, 50);
    let mark = format!(
        "module = {:?}\n  grants = [\"clock\"]\n  limits = {{ fuel = 1_000_000_000, deadline = \"2s\" }}",
        spin.display().to_string()
    );
    let weir = Serve::start(&config(d, broker.port, metrics_port, &mark));
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    // Slow enough that no record waits behind the next one's 50 ms.
    const N: u64 = 70;
    stream(broker.port, N, 100).join().unwrap();
    let kept = N.div_ceil(EVERY);
    wait_out(d, kept as usize, &weir);
    let deadline = Instant::now() + patience(20);
    let (count, sum) = loop {
        let (_, body) = http_get(metrics_port, "/metrics");
        let count = sample(
            &body,
            r#"weir_sink_delivery_latency_seconds_count{sink="out"}"#,
        );
        if count == Some(kept as f64) {
            let sum = sample(
                &body,
                r#"weir_sink_delivery_latency_seconds_sum{sink="out"}"#,
            );
            break (count.unwrap(), sum.unwrap());
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Each kept record spent at least its own 50 ms in the stage.
    assert!(
        sum / count >= 0.05,
        "mean latency {} s: it must include the stage's 50 ms",
        sum / count
    );
    weir.stop();
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

    // A port someone else holds fails the start, naming it and the fix.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config(d, broker.port, port, PASS);
    let (code, _, err) = self::weir(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("[metrics] cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("pick another `listen` address"), "{err}");
}

/// `weir ARGS`: (exit code, stdout, stderr).
fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_top_and_store_inspect_read_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let cfg = config(d, broker.port, free_port(), PASS);
    let c = cfg.to_str().unwrap();
    let weir_serve = Serve::start(&cfg);
    assert!(
        weir_serve.wait_log("MQTT subscribed"),
        "{}",
        weir_serve.log()
    );
    const N: u64 = 700;
    stream(broker.port, N, 5_000).join().unwrap();
    let kept = N.div_ceil(EVERY);
    wait_out(d, kept as usize, &weir_serve);

    // --json: the registry's snapshot, settled at what was sent.
    let deadline = Instant::now() + patience(20);
    let snap = loop {
        let (code, out, err) = weir(&["status", "--config", c, "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["pipelines"][0]["records_in"] == N && v["sinks"][0]["delivered"] == kept {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(snap["gateway"], "gw-op");
    assert_eq!(snap["sources"][0]["name"], "local");
    assert_eq!(snap["sources"][0]["state"], "up");
    assert_eq!(snap["sources"][0]["records"], N);
    assert_eq!(snap["pipelines"][0]["stages"][0]["name"], "thin");
    assert_eq!(
        snap["pipelines"][0]["stages"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(snap["sinks"][0]["name"], "out");
    assert_eq!(snap["sinks"][0]["queued"], 0);
    assert_eq!(snap["store"]["durable"], true);

    // The human view names every part.
    let (code, out, err) = weir(&["status", "--config", c]);
    assert_eq!(code, 0, "{err}");
    for part in [
        "gw-op",
        "local",
        "mqtt",
        "thin",
        "c_downsample.wasm",
        "out",
        "file",
        "up",
    ] {
        assert!(out.contains(part), "{part}: {out}");
    }
    assert!(out.contains(&format!("{N}")), "{out}");

    // top: the same view with rates, refreshed; bounded by --count.
    let (code, out, err) = weir(&["top", "--config", c, "--count", "2", "--every", "200ms"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("\x1b[2J").count(), 2, "{out}");
    assert!(out.contains("0/s"), "the second refresh has rates: {out}");

    // store inspect: the running daemon answers through the same socket.
    let (code, out, err) = weir(&["store", "inspect", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("read from the running daemon"), "{out}");
    let (code, out, err) = weir(&["store", "inspect", "--config", c, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["queues"][0]["sink"], "out");
    assert_eq!(v["queues"][0]["entries"], 0);

    // weir reload (what `systemctl reload` runs): the daemon re-reads its
    // config; a refusal fails the command with the reason.
    let sock_arg = d.join("weir.sock").display().to_string();
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace(
            "c_downsample.wasm\"\n  grants = [\"state\", \"log\"]\n  config = { every = 1 }",
            "no_such_module.wasm\"",
        ),
    )
    .unwrap();
    let (code, _, err) = weir(&["reload", "--socket", &sock_arg]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("reload refused") && err.contains("no_such_module.wasm"),
        "{err}"
    );
    std::fs::write(&cfg, &good).unwrap();
    let (code, out, err) = weir(&["reload", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded: pipelines swapped"), "{out}");
    let (_, out, _) = weir(&["status", "--config", c, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["reloads"].as_u64(), v["reloads_refused"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );

    // The socket is the service user's: 0660.
    use std::os::unix::fs::PermissionsExt;
    let sock = d.join("weir.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    weir_serve.stop();
    assert!(!sock.exists(), "a clean stop removes the socket");
    let (code, _, err) = weir(&["status", "--config", c]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the daemon"), "{err}");
}

#[test]
fn status_over_mqtt_is_retained_the_will_marks_a_dead_gateway_offline_and_a_reload_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let extra = format!(
        r#"
[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {}
topic = "cloud/{{gateway_id}}"

[status]
every = "1s"
"#,
        broker.port
    );
    let cfg = config_with(d, broker.port, free_port(), PASS, &extra);
    let sub = Sub::start(broker.port, "status-watch", "weir/gw-op/status", &[]);
    let weir_serve = Serve::start(&cfg);
    let deadline = Instant::now() + patience(20);
    let online =
        loop {
            let got = sub.got();
            if let Some(m) = got.iter().rev().find(|m| {
                m["state"] == "online" && m["sinks"].as_array().is_some_and(|s| s.len() == 2)
            }) {
                break m.clone();
            }
            assert!(Instant::now() < deadline, "{got:?}\n{}", weir_serve.log());
            std::thread::sleep(Duration::from_millis(50));
        };
    assert_eq!(online["gateway"], "gw-op");
    let modules = online["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 2, "{online}");
    assert_eq!(modules[0]["stage"], "thin");
    assert_eq!(modules[0]["sha256"].as_str().unwrap().len(), 64);
    // A module file from the config has no bundle version.
    assert!(modules[0]["version"].is_null(), "{online}");
    assert!(online["sources"][0]["name"] == "local", "{online}");

    // SIGKILL: the broker publishes the will.
    let before = sub.got().len();
    weir_serve.kill();
    let got = sub.wait(before + 1, 20);
    assert_eq!(got.last().unwrap()["state"], "offline", "{got:?}");

    // Retained: a new watcher learns the state at once. A clean stop
    // publishes "offline" itself. (The killed gateway left its control
    // socket behind: the new one replaces it and answers.)
    let weir_serve = Serve::start(&cfg);
    assert!(
        weir_serve.wait_log("weir is serving"),
        "{}",
        weir_serve.log()
    );
    let (code, _, err) = weir(&["status", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "the stale socket was replaced: {err}");
    let late = Sub::start(broker.port, "late-watch", "weir/gw-op/status", &[]);
    let got = late.wait(1, 10);
    assert!(!got.is_empty());
    let deadline = Instant::now() + patience(20);
    while late.got().last().unwrap()["state"] != "online" {
        assert!(Instant::now() < deadline, "{:?}", late.got());
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = late.got().len();
    weir_serve.stop();
    let got = late.wait(n + 1, 10);
    assert_eq!(got.last().unwrap()["state"], "offline", "{got:?}");
    let fresh = Sub::start(broker.port, "fresh-watch", "weir/gw-op/status", &[]);
    assert_eq!(fresh.wait(1, 10)[0]["state"], "offline");

    // A reload that moves the status topic: the new one says online at
    // once, the old one is left saying offline.
    let weir_serve = Serve::start(&cfg);
    let deadline = Instant::now() + patience(20);
    while fresh.got().last().unwrap()["state"] != "online" {
        assert!(Instant::now() < deadline, "{:?}", fresh.got());
        std::thread::sleep(Duration::from_millis(50));
    }
    let moved = Sub::start(broker.port, "moved-watch", "moved/gw-op/status", &[]);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "every = \"1s\"",
        "every = \"1s\"\ntopic = \"moved/{gateway_id}/status\"",
    );
    std::fs::write(&cfg, text).unwrap();
    hangup(&weir_serve);
    assert!(
        weir_serve.wait_log("status restarted"),
        "{}",
        weir_serve.log()
    );
    assert_eq!(moved.wait(1, 10)[0]["state"], "online");
    let deadline = Instant::now() + patience(20);
    while fresh.got().last().unwrap()["state"] != "offline" {
        assert!(Instant::now() < deadline, "{:?}", fresh.got());
        std::thread::sleep(Duration::from_millis(50));
    }
    weir_serve.stop();
    assert_eq!(moved.wait(2, 10)[1]["state"], "offline");
}

#[test]
fn the_watchdog_starves_while_the_sync_thread_is_stuck_on_a_frozen_disk() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let disk = FreezableDisk::mount(&d.join("disk.img"), &d.join("disk"));
    let broker = Mosquitto::start(d, free_port());
    let cfg = config(d, broker.port, free_port(), PASS);
    // The store on the freezable disk; the file sink and the socket not.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            &format!("path = {:?}", d.join("store").display().to_string()),
            &format!("path = {:?}", disk.dir.join("store").display().to_string()),
        )
        .replace(
            "[gateway]\n",
            &format!(
                "[gateway]\ncontrol = {:?}\n",
                d.join("weir.sock").display().to_string()
            ),
        );
    std::fs::write(&cfg, text).unwrap();

    let notify = d.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's PID; `exec` keeps the
    // shell's. WatchdogSec=2: fed every second, and a thread busy on one
    // unit of work for over a second counts as stuck.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000");
    let weir = Serve::spawn(cmd);
    // Watchdog pings, with the time each came.
    let pings = |for_: Duration| -> Vec<Instant> {
        let mut got = Vec::new();
        let end = Instant::now() + for_;
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
            {
                got.push(Instant::now());
            }
        }
        got
    };
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    assert!(
        pings(Duration::from_millis(2500)).len() >= 2,
        "fed while healthy"
    );

    // The disk freezes: the next sync blocks inside fsync.
    let thaw = disk.freeze();
    let publisher = stream(broker.port, 50, 1_000);
    let starved = pings(patience(5));
    assert!(
        weir.log().contains("not feeding the systemd watchdog"),
        "{}",
        weir.log()
    );
    assert!(weir.log().contains("thread=store-sync"), "{}", weir.log());
    // At most the pings before the wedge was seen (about a second).
    assert!(
        starved.len() <= 2,
        "still fed {} times while stuck",
        starved.len()
    );

    // Thawed, it moves again and the watchdog is fed again.
    drop(thaw);
    publisher.join().unwrap();
    assert!(weir.wait_log("moves again"), "{}", weir.log());
    assert!(pings(Duration::from_millis(2500)).len() >= 2, "fed again");
    wait_out(d, 50usize.div_ceil(EVERY as usize), &weir);
    weir.stop();
}

#[test]
fn secrets_from_the_environment_and_files_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::make_certs(d);
    const SINK_PW: &str = "sink-Pw-Zq8-9731-secret";
    const SOURCE_PW: &str = "source-Pw-5521-hidden";
    const WRONG_PW: &str = "wrong-Pw-7788-mistyped";
    let passwd = d.join("passwd");
    for (user, pw, first) in [("sinkuser", SINK_PW, true), ("srcuser", SOURCE_PW, false)] {
        let mut c = Command::new("mosquitto_passwd");
        c.arg("-b");
        if first {
            c.arg("-c");
        }
        assert!(c.arg(&passwd).args([user, pw]).status().unwrap().success());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Mosquitto::start_with(
        d,
        free_port(),
        &format!(
            "{}password_file {}\n",
            common::mtls_listener(d),
            passwd.display()
        ),
    );
    std::fs::write(d.join("source.pw"), format!("{SOURCE_PW}\n")).unwrap();
    let tls = format!(
        "tls = {{ ca = {ca:?}, cert = {cert:?}, key = {key:?} }}",
        ca = d.join("ca.pem").display().to_string(),
        cert = d.join("client.pem").display().to_string(),
        key = d.join("client.key").display().to_string(),
    );
    let text = format!(
        r#"
[gateway]
id = "gw-secret"
modules_dir = {modules:?}
[store]
path = {store:?}
[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {port}
client_id = "weir-secret-src"
username = "srcuser"
password_file = "source.pw"
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]
{tls}
[[pipeline]]
name = "p"
  [[pipeline.stage]]
  name = "pass"
  {PASS}
[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {port}
username = "sinkuser"
password = "${{WEIR_TEST_SINK_PASSWORD}}"
topic = "cloud/{{gateway_id}}"
{tls}
"#,
        modules = testkit::modules_dir().display().to_string(),
        store = d.join("store").display().to_string(),
        port = broker.port,
    );
    let cfg = d.join("weir.toml");
    std::fs::write(&cfg, text).unwrap();
    let key = std::fs::read_to_string(d.join("client.key")).unwrap();
    let key_lines: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut everything = String::new();

    // Unset: refused, naming the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env_remove("WEIR_TEST_SINK_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("WEIR_TEST_SINK_PASSWORD") && err.contains("sink[0].password"),
        "{err}"
    );
    everything += &err;

    // Right passwords, trace level, JSON lines: records flow end to end.
    let sub = Sub::start(
        broker.port,
        "secret-watch",
        "cloud/#",
        &common::client_tls_args(d)
            .iter()
            .map(String::as_str)
            .chain(["-u", "sinkuser", "-P", SINK_PW])
            .collect::<Vec<_>>(),
    );
    let serve = |pw: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args([
            "--log-format",
            "json",
            "serve",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .env("WEIR_TEST_SINK_PASSWORD", pw)
        .env("WEIR_LOG", "trace");
        Serve::spawn(cmd)
    };
    let weir = serve(SINK_PW);
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    let pub_args: Vec<String> = common::client_tls_args(d)
        .into_iter()
        .chain(["-u".into(), "srcuser".into(), "-P".into(), SOURCE_PW.into()])
        .collect();
    let pub_args: Vec<&str> = pub_args.iter().map(String::as_str).collect();
    broker.publish(
        "mqttv311",
        1,
        "sensors/s1/telemetry",
        &[r#"{"n":1}"#.into()],
        &pub_args,
    );
    assert_eq!(sub.wait(1, 20).len(), 1, "{}", weir.log());
    let log = weir.stop();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(
            v["message"].is_string() || v["target"].is_string(),
            "{line}"
        );
    }
    // The connection attempts are logged at debug, with the user names.
    assert!(log.contains(r#""level":"DEBUG""#), "{log}");
    assert!(log.contains("sinkuser") && log.contains("srcuser"), "{log}");
    everything += &log;

    // A wrong password: refused by the broker, logged without it.
    let weir = serve(WRONG_PW);
    assert!(weir.wait_log("sink broker unreachable"), "{}", weir.log());
    everything += &weir.stop();

    for secret in [SINK_PW, SOURCE_PW, WRONG_PW].iter().chain(&key_lines) {
        assert!(
            !everything.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
}

#[test]
fn a_sink_task_that_ends_is_restarted_with_backoff_and_recovers() {
    // Where the file sink's directory should be, there is a file: the
    // sink cannot open its file and ends; the supervisor starts it again
    // after a backoff, and once the way is clear it delivers what waited.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(d, free_port());
    let cfg = config(d, broker.port, free_port(), PASS);
    let later = d.join("later");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("path = {:?}", d.join("out.jsonl").display().to_string()),
        &format!("path = {:?}", later.join("out.jsonl").display().to_string()),
    );
    std::fs::write(&cfg, text).unwrap();
    std::fs::write(&later, b"in the way").unwrap();
    let c = cfg.to_str().unwrap();
    let serve = Serve::start(&cfg);
    assert!(serve.wait_log("MQTT subscribed"), "{}", serve.log());
    stream(broker.port, 70, 1_000).join().unwrap();

    let sink = |v: &serde_json::Value| v["sinks"][0].clone();
    let deadline = Instant::now() + patience(20);
    let down = loop {
        let (code, out, err) = weir(&["status", "--config", c, "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if sink(&v)["restarts"].as_u64().unwrap_or(0) >= 1 {
            break sink(&v);
        }
        assert!(Instant::now() < deadline, "{v}\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(down["state"], "up", "{down}");
    assert!(
        serve
            .log()
            .contains("task stopped; restarting it after a backoff"),
        "{}",
        serve.log()
    );
    assert!(serve.log().contains("task=sink out"), "{}", serve.log());

    std::fs::remove_file(&later).unwrap();
    let deadline = Instant::now() + patience(30);
    let up = loop {
        let (_, out, _) = weir(&["status", "--config", c, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if sink(&v)["state"] == "up" && sink(&v)["delivered"] == 10 {
            break sink(&v);
        }
        assert!(Instant::now() < deadline, "{v}\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(up["restarts"].as_u64().unwrap() >= 1, "{up}");
    let lines = std::fs::read_to_string(later.join("out.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        10,
        "every seventh of 70, nothing lost"
    );
    serve.stop();
}
