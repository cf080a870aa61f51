//! Poison records at a sink, end to end against real mosquitto brokers on
//! free loopback ports: values MQTT forbids in a topic, a value no topic
//! can hold, and a record the broker drops the connection for. None of
//! them may wedge the queue; what cannot be delivered goes to the sink's
//! dead-letter queue, which `weir store dead-letters` manages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{Mosquitto, Serve, Sub, broker_dir, free_port};

fn config(dir: &Path, src: u16, cloud: u16) -> PathBuf {
    let text = format!(
        r#"
[gateway]
id = "gw1"
modules_dir = {modules:?}

[store]
path = {store:?}

[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {src}
client_id = "weir-poison"
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]

[[pipeline]]
name = "pass"
  [[pipeline.stage]]
  name = "every"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = {{ every = 1 }}

[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {cloud}
topic = "cloud/{{payload.id}}"
dead_letter_after = 3
"#,
        modules = testkit::modules_dir().display().to_string(),
        store = dir.join("store").display().to_string(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap()
}

fn ns(got: &[serde_json::Value]) -> Vec<u64> {
    let mut v: Vec<u64> = got.iter().filter_map(|v| v["n"].as_u64()).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn poison_records_leave_the_queue_and_dead_letters_are_managed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = Mosquitto::start(&broker_dir(d, "src"), free_port());
    // The "cloud" drops any client that sends a packet over 4 KiB.
    let cloud_dir = broker_dir(d, "cloud");
    let cloud_port = free_port();
    let cloud = Mosquitto::start_with(&cloud_dir, cloud_port, "max_packet_size 4096");
    let sub = Sub::start(cloud.port, "cloud-sub", "cloud/#", &[]);
    let cfg = config(d, src.port, cloud.port);
    let weir_serve = Serve::start(&cfg);
    assert!(
        weir_serve.wait_log("MQTT subscribed"),
        "{}",
        weir_serve.log()
    );

    let good = |n: u32| format!(r#"{{"id":"s1","n":{n}}}"#);
    let mut msgs: Vec<String> = (0..5).map(good).collect();
    // A NUL and a control character in a topic value: escaped, delivered.
    msgs.push(r#"{"id":"a\u0000b","n":100}"#.into());
    msgs.push(r#"{"id":"bell\u0007","n":101}"#.into());
    // A 5,000-character id: no sane topic holds it. (The hostile test's
    // 70,000 characters are over what this stage's limits let through.)
    msgs.push(format!(r#"{{"id":"{}","n":102}}"#, "x".repeat(5_000)));
    // 6 KB: the broker closes the connection every time it arrives.
    msgs.push(format!(
        r#"{{"id":"s1","n":103,"blob":"{}"}}"#,
        "y".repeat(6000)
    ));
    msgs.extend((5..10).map(good));
    src.publish("mqttv311", 1, "sensors/s1/telemetry", &msgs, &[]);

    // Everything deliverable arrives: the queue moved on past both.
    let want: Vec<u64> = (0..10).chain([100, 101]).collect();
    let deadline = std::time::Instant::now() + common::patience(60);
    while ns(&sub.got()) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "got {:?}\n{}",
            ns(&sub.got()),
            weir_serve.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let got = sub.got();
    let nul = got.iter().find(|v| v["n"] == 100).unwrap();
    assert_eq!(
        nul["id"], "a\u{0}b",
        "the payload keeps the value as it was"
    );
    let log = weir_serve.stop();
    // Each poison record is reported once, when it is moved aside; the
    // broker's drops are not reported as outages.
    assert_eq!(
        log.matches("moved to the sink's dead-letter queue").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("sink broker unreachable").count(), 0, "{log}");
    assert_eq!(
        log.matches("the broker closed the connection right after this record")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("dead_lettered=2"), "{log}");
    let connects: u64 = log
        .lines()
        .find(|l| l.contains("sink done"))
        .and_then(|l| l.split(" connects=").nth(1))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    // The first drop, then 3 attempts with the record alone.
    assert!(
        connects <= 5,
        "3 attempts, then it moves on: {connects}\n{log}"
    );

    // The operator's view.
    let c = cfg.to_str().unwrap();
    let out = weir(&["store", "dead-letters", "list", "--config", c, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let too_long = list.iter().find(|r| r["attempts"] == 0).unwrap();
    assert!(
        too_long["reason"].as_str().unwrap().contains("5000 bytes"),
        "{too_long}"
    );
    let dropped_conn = list.iter().find(|r| r["attempts"] == 3).unwrap();
    assert!(
        dropped_conn["reason"]
            .as_str()
            .unwrap()
            .contains("closed the connection right after it, 3 times"),
        "{dropped_conn}"
    );
    let big_id = dropped_conn["msg_id"].as_str().unwrap().to_string();
    let long_id = too_long["msg_id"].as_str().unwrap().to_string();
    let out = weir(&[
        "store",
        "dead-letters",
        "show",
        "--config",
        c,
        "--sink",
        "cloud",
        &big_id,
    ]);
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["record"]["n"], 103, "{shown}");
    assert_eq!(shown["record"]["msg_id"], big_id.as_str());
    // Human output too.
    let out = weir(&["store", "dead-letters", "list", "--config", c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&big_id) && text.contains(&long_id), "{text}");

    // Drop the one that can never go; requeue the other once the broker
    // takes bigger packets.
    let out = weir(&[
        "store",
        "dead-letters",
        "drop",
        "--config",
        c,
        "--sink",
        "cloud",
        &long_id,
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = weir(&[
        "store",
        "dead-letters",
        "drop",
        "--config",
        c,
        "--sink",
        "cloud",
        &long_id,
    ]);
    assert_eq!(out.status.code(), Some(2), "already gone: {out:?}");
    let out = weir(&[
        "store",
        "dead-letters",
        "requeue",
        "--config",
        c,
        "--sink",
        "cloud",
        "--all",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("requeued 1"),
        "{out:?}"
    );
    let out = weir(&["store", "dead-letters", "list", "--config", c, "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    drop(sub);
    cloud.stop();
    let cloud = Mosquitto::start(&cloud_dir, cloud_port);
    let sub = Sub::start(cloud.port, "cloud-sub", "cloud/#", &[]);
    let weir_serve = Serve::start(&cfg);
    let got = sub.wait(1, 30);
    let log = weir_serve.stop();
    let again = got
        .iter()
        .find(|v| v["n"] == 103)
        .unwrap_or_else(|| panic!("{got:?}\n{log}"));
    assert_eq!(
        again["msg_id"],
        big_id.as_str(),
        "requeued under its own message id"
    );
}
