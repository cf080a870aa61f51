//! The MQTT source against a real mosquitto on a free loopback port:
//! MQTT 3.1.1 and 5 at QoS 0, 1 and 2, user properties, redelivery from a
//! persistent session after weir restarts, wildcard routing, malformed
//! messages, and a broker restart.

use std::path::{Path, PathBuf};

mod common;
use common::{Mosquitto, Serve, free_port};

/// One MQTT source subscribed to `sensors/#` and the given pipelines
/// (default: one pass-through pipeline).
fn config(dir: &Path, port: u16, version: u8, qos: u8, pipelines: Option<&str>) -> PathBuf {
    let pass = r#"
[[pipeline]]
name = "pass"
  [[pipeline.stage]]
  name = "every"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = { every = 1 }
"#;
    let text = format!(
        r#"
[gateway]
id = "gw-test"
modules_dir = {modules:?}

[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {port}
version = {version}
client_id = "weir-test-{version}"
subscribe = [ {{ filter = "sensors/#", qos = {qos} }} ]
topic_fields = "sensors/{{id}}/telemetry"
dead_letter = true
{pipelines}
"#,
        modules = testkit::modules_dir().display().to_string(),
        pipelines = pipelines.unwrap_or(pass),
    );
    let path = dir.join(format!("weir-{version}-{qos}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{{\"n\":{n}}}")).collect()
}

fn ns(lines: &[serde_json::Value]) -> Vec<u64> {
    let mut v: Vec<u64> = lines
        .iter()
        .filter_map(|l| l["payload"]["n"].as_u64())
        .collect();
    v.sort();
    v
}

const VERSIONS: [(u8, &str); 2] = [(4, "mqttv311"), (5, "mqttv5")];

#[test]
fn both_versions_at_every_qos() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port());
    for (version, cli) in VERSIONS {
        for qos in 0..=2u8 {
            let weir = Serve::start(&config(dir.path(), broker.port, version, qos, None));
            assert!(
                weir.wait_log("MQTT connected"),
                "v{version} q{qos}: {}",
                weir.log()
            );
            // Subscribed once connected; give the SUBSCRIBE a moment to land.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let extra: &[&str] = if version == 5 {
                &["-D", "publish", "user-property", "site", "north"]
            } else {
                &[]
            };
            broker.publish(cli, qos, "sensors/s1/telemetry", &numbered(0..20), extra);
            let got = weir.wait_lines(20);
            assert_eq!(ns(&got), (0..20).collect::<Vec<_>>(), "v{version} q{qos}");
            assert_eq!(got[0]["payload"]["id"], "s1", "the id comes from the topic");
            assert_eq!(got[0]["source"], "local");
            if version == 5 {
                assert_eq!(
                    got[0]["headers"]["site"], "north",
                    "user properties become headers"
                );
            }
            let log = weir.stop();
            assert!(
                log.contains("messages=20 records=20"),
                "v{version} q{qos}: {log}"
            );
        }
    }
}

#[test]
fn a_persistent_session_redelivers_what_arrived_while_weir_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port());
    for (version, cli) in VERSIONS {
        let cfg = config(dir.path(), broker.port, version, 1, None);
        let weir = Serve::start(&cfg);
        assert!(weir.wait_log("MQTT connected"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        weir.stop();
        // weir is down: the broker queues QoS 1 messages for its session.
        broker.publish(cli, 1, "sensors/s2/telemetry", &numbered(0..10), &[]);
        let weir = Serve::start(&cfg);
        let got = weir.wait_lines(10);
        assert_eq!(ns(&got), (0..10).collect::<Vec<_>>(), "v{version}");
        let log = weir.stop();
        assert!(log.contains("session_present=true"), "v{version}: {log}");
    }
}

#[test]
fn wildcards_route_one_record_to_several_pipelines() {
    let pipelines = r#"
[[pipeline]]
name = "telemetry"
sources = ["local"]
topics = ["sensors/+/telemetry"]
  [[pipeline.stage]]
  name = "every"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = { every = 1 }

[[pipeline]]
name = "everything"
topics = ["sensors/#"]
  [[pipeline.stage]]
  name = "every"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = { every = 1 }
"#;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port());
    let weir = Serve::start(&config(dir.path(), broker.port, 5, 1, Some(pipelines)));
    assert!(weir.wait_log("MQTT connected"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    broker.publish("mqttv5", 1, "sensors/s1/telemetry", &numbered(0..1), &[]);
    broker.publish("mqttv5", 1, "sensors/s1/status", &numbered(1..2), &[]);
    broker.publish(
        "mqttv5",
        1,
        "sensors/s1/telemetry",
        &["{broken".to_string()],
        &[],
    );
    let got = weir.wait_lines(4);
    let mut tags: Vec<(String, u64)> = got
        .iter()
        .filter(|l| l.get("dead_letter").is_none())
        .map(|l| {
            (
                l["pipeline"].as_str().unwrap().to_owned(),
                l["payload"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            ("everything".into(), 0),
            ("everything".into(), 1),
            ("telemetry".into(), 0)
        ]
    );
    let dead: Vec<_> = got
        .iter()
        .filter(|l| l.get("dead_letter").is_some())
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["dead_letter"]["kind"], "malformed");
    assert_eq!(dead[0]["topic"], "sensors/s1/telemetry");
    let log = weir.stop();
    assert!(log.contains("rejected=\"malformed=1\""), "{log}");
    assert!(
        log.contains("malformed MQTT message") && log.contains("topic=sensors/s1/telemetry"),
        "logged with source and topic: {log}"
    );
}

#[test]
fn weir_rides_out_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = Mosquitto::start(dir.path(), port);
    let weir = Serve::start(&config(dir.path(), port, 5, 1, None));
    assert!(weir.wait_log("MQTT connected"));
    broker.stop();
    assert!(
        weir.wait_log("MQTT broker lost or unreachable"),
        "{}",
        weir.log()
    );
    let broker = Mosquitto::start(dir.path(), port);
    assert!(weir.wait_log("MQTT broker is back"), "{}", weir.log());
    std::thread::sleep(std::time::Duration::from_millis(300));
    broker.publish("mqttv5", 1, "sensors/s3/telemetry", &numbered(0..5), &[]);
    assert_eq!(ns(&weir.wait_lines(5)), (0..5).collect::<Vec<_>>());
    let log = weir.stop();
    assert!(log.contains("outages=1"), "{log}");
}

/// Regression: acknowledgements are released in batches after the output
/// is flushed; none may be dropped, or the broker's in-flight window fills
/// and delivery stalls. 3,000 QoS 1 messages is far beyond one batch and
/// any queue size involved.
#[test]
fn a_long_qos1_stream_keeps_flowing_and_every_ack_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), free_port());
    for (version, cli) in VERSIONS {
        let weir = Serve::start(&config(dir.path(), broker.port, version, 1, None));
        assert!(weir.wait_log("MQTT connected"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        broker.publish(cli, 1, "sensors/s9/telemetry", &numbered(0..3000), &[]);
        let got = weir.wait_lines(3000);
        assert_eq!(ns(&got), (0..3000).collect::<Vec<_>>(), "v{version}");
        let log = weir.stop();
        assert!(log.contains("ack_failures=0"), "v{version}: {log}");
    }
}
