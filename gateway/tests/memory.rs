//! Memory follows the limits: a backlog of large records does not make a
//! sink hold its whole in-flight window at once. Peak RSS (VmHWM, read by
//! the kernel, not timed) stays under the README's worst-case formula.

use std::path::{Path, PathBuf};

mod common;
use common::{Mosquitto, Serve, Sub, broker_dir, free_port, publish_bytes};

const MIB: u64 = 1 << 20;

fn config(dir: &Path, src: u16, cloud: u16) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "gw1"
modules_dir = {modules:?}

[store]
path = {store:?}

[defaults.limits]
memory = "16 MiB"
max_output_bytes = "2 MiB"

[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {src}
client_id = "weir-memory"
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]
max_payload = "1 MiB"
version = 5
inflight = 8

[[pipeline]]
name = "pass"
  [[pipeline.stage]]
  name = "every"
  module = {pass:?}

[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {cloud}
max_payload = "2 MiB"
buffer = {{ max_bytes = "256 MiB" }}
"#,
        modules = testkit::modules_dir().display().to_string(),
        store = dir.join("store").display().to_string(),
        pass = pass_module(dir).display().to_string(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A pass-through module with room for a 2 MiB record.
fn pass_module(dir: &Path) -> PathBuf {
    let path = dir.join("pass.wat");
    std::fs::write(
        &path,
        r#"(module
            (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
            (memory (export "memory") 40)
            (func (export "weir_abi_v1"))
            (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "weir_transform") (param $ptr i32) (param $len i32) (result i32)
                (drop (call $emit (local.get $ptr) (local.get $len))) (i32.const 0)))"#,
    )
    .unwrap();
    path
}

/// The README's worst-case RSS for this config ("Memory"): base, sled
/// (its cache, and the queued bytes it keeps in memory: up to the sink's
/// `buffer.max_bytes`), the source's window, the stage, the sink.
fn formula() -> u64 {
    let base = 24 * MIB;
    let sled = 2 * MIB /* cache x2 */ + 256 * MIB /* buffer.max_bytes */;
    let source = 8 * MIB /* inflight x max_payload */ * 2;
    let stage = 16 * MIB /* memory */ + MIB /* state */ + 2 * 2 * MIB /* outputs */;
    let sink = SINK_TERM;
    base + sled + source + stage + sink
}

/// What a sink may hold on top: 4 x inflight_bytes (read, rendered,
/// encoded, in the client).
const SINK_TERM: u64 = 4 * 4 * MIB;

#[test]
fn a_backlog_of_large_records_stays_within_the_memory_formula() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = Mosquitto::start(&broker_dir(d, "src"), free_port());
    let cloud_dir = broker_dir(d, "cloud");
    let cloud_port = free_port();
    {
        let cloud = Mosquitto::start(&cloud_dir, cloud_port);
        drop(Sub::start(cloud.port, "cloud-sub", "cloud/#", &[]));
        cloud.stop();
    }
    let cfg = config(d, src.port, cloud_port);
    let weir = Serve::start_with(&cfg, &["--stats-every", "200ms"]);
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    // 100 legal records of 900 KB each, buffered while the cloud is away.
    let n = 100;
    for i in 0..n {
        let payload = format!(r#"{{"id":"s1","n":{i},"blob":"{}"}}"#, "z".repeat(900_000));
        publish_bytes(
            src.port,
            "mqttv311",
            1,
            "sensors/s1/telemetry",
            payload.as_bytes(),
        );
    }
    assert!(weir.wait_log(&format!("enqueued={n}")), "{}", weir.log());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = weir.status_bytes("VmRSS");
    let cloud = Mosquitto::start(&cloud_dir, cloud_port);
    let sub = Sub::start(cloud.port, "cloud-sub", "cloud/#", &[]);
    let got = sub.wait(n, 120);
    let peak = weir.status_bytes("VmHWM");
    let after = weir.status_bytes("VmRSS");
    let log = weir.stop();
    let mut ns: Vec<u64> = got.iter().filter_map(|v| v["n"].as_u64()).collect();
    ns.sort();
    ns.dedup();
    assert_eq!(ns.len(), n, "{log}");
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "100 x 900 KB records: RSS {:.1} MiB buffered, {:.1} MiB after delivery, peak {:.1} MiB; formula {:.1} MiB",
        mib(before),
        mib(after),
        mib(peak),
        mib(formula())
    );
    assert!(
        peak <= formula(),
        "peak RSS {peak} over the formula's {}",
        formula()
    );
    // Draining the backlog adds at most the sink's term (it used to render
    // its whole window of 100 records at once: 2.2 GB).
    assert!(
        peak <= before.max(after) + SINK_TERM,
        "delivery added {:.1} MiB, over the sink's {:.1} MiB",
        mib(peak - before.max(after)),
        mib(SINK_TERM)
    );
}
