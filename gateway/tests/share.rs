//! Several weir processes sharing one stream through an MQTT shared
//! subscription (`$share/<group>/<filter>`) on a real mosquitto: each
//! record is processed by exactly one of them, and when one is killed
//! with SIGKILL mid-stream, what it had not acknowledged is processed by
//! the others; nothing is lost.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{Mosquitto, Serve, Sub, broker_dir, free_port};

/// weir `id`, taking `sensors/+/telemetry` through the shared
/// subscription `$share/weir/...` on `port`, running W1 and publishing to
/// `cloud/<id>/telemetry` on the same broker.
fn config(dir: &Path, id: &str, port: u16) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).unwrap();
    let text = format!(
        r#"
[gateway]
id = "{id}"
modules_dir = {modules:?}

[store]
path = {store:?}

[[source]]
type = "mqtt"
name = "sensors"
host = "127.0.0.1"
port = {port}
version = 4
subscribe = [ {{ filter = "$share/weir/sensors/+/telemetry", qos = 1 }} ]
inflight = 50

[defaults.limits]
fuel = 200_000
memory = "1 MiB"

[[pipeline]]
name = "w1"
  [[pipeline.stage]]
  name = "range-filter"
  module = "weir_w1_range_filter.wasm"
  config = {{ min = -40.0, max = 85.0 }}
  [[pipeline.stage]]
  name = "enrich"
  module = "weir_w1_enrich.wasm"

[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {port}
topic = "cloud/{{gateway_id}}/telemetry"
"#,
        modules = testkit::modules_dir().display().to_string(),
        store = d.join("store").display().to_string(),
    );
    let path = d.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `n` W1 readings as JSON lines, and the sequence numbers W1 keeps.
fn readings(n: usize, seed: u64) -> (Vec<String>, Vec<u64>) {
    let r = testkit::w1::generate(n, seed);
    let kept = testkit::w1::reference(&r).iter().map(|e| e.seq).collect();
    (r.iter().map(|x| x.json().to_string()).collect(), kept)
}

/// Per `seq`, the message ids it arrived under.
fn by_seq(got: &[serde_json::Value]) -> BTreeMap<u64, Vec<String>> {
    let mut m: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for v in got {
        m.entry(v["seq"].as_u64().unwrap())
            .or_default()
            .push(v["msg_id"].as_str().unwrap().to_string());
    }
    m
}

/// Wait (bounded) until every seq of `want` arrived.
fn wait_for(sub: &Sub, want: &[u64], secs: u64) {
    let want: HashSet<u64> = want.iter().copied().collect();
    let deadline = Instant::now() + common::patience(secs);
    while Instant::now() < deadline {
        let have: HashSet<u64> = sub.got().iter().filter_map(|v| v["seq"].as_u64()).collect();
        if want.is_subset(&have) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_processes_share_a_stream_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Mosquitto::start(&broker_dir(d, "broker"), free_port());
    let sub = Sub::start(broker.port, "cloud-sub", "cloud/#", &[]);
    let ids = ["gw1", "gw2", "gw3"];
    let mut weirs: Vec<Option<Serve>> = ids
        .iter()
        .map(|id| {
            let w = Serve::start(&config(d, id, broker.port));
            assert!(w.wait_log("MQTT subscribed"), "{}", w.log());
            Some(w)
        })
        .collect();

    // 1. Every record is processed by exactly one process, and all three
    //    take part.
    let (lines, kept) = readings(3000, 7);
    broker.publish("mqttv311", 1, "sensors/w1/telemetry", &lines, &[]);
    wait_for(&sub, &kept, 60);
    std::thread::sleep(Duration::from_millis(500));
    let got = by_seq(&sub.got());
    let delivered: Vec<u64> = got.keys().copied().collect();
    assert_eq!(delivered, kept, "every kept record, and nothing else");
    let twice: Vec<(&u64, &Vec<String>)> = got.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} records were processed more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    for id in ids {
        let share = got
            .values()
            .filter(|m| m[0].starts_with(&format!("{id}-")))
            .count();
        assert!(share > 0, "{id} processed nothing: the work is not shared");
        eprintln!("{id} processed {share} of {}", kept.len());
    }

    // 2. SIGKILL one of them mid-stream: what it held unacknowledged goes
    //    to the others (one of them adopts its session). Nothing is lost;
    //    a duplicate is possible only for a record it had taken in but
    //    not yet acknowledged.
    let sub = Sub::start(broker.port, "cloud-sub-2", "cloud/#", &[]);
    let (lines, kept) = readings(20_000, 8);
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        common::publish(port, "mqttv311", 1, "sensors/w1/telemetry", &lines, &[]);
    });
    let deadline = Instant::now() + common::patience(30);
    while sub.got().len() < 3000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let victim = weirs[1].take().unwrap();
    let victim_log = victim.log();
    victim.kill();
    let at_kill = sub.got().len();
    publisher.join().unwrap();
    wait_for(&sub, &kept, 120);
    std::thread::sleep(Duration::from_millis(500));
    let got = by_seq(&sub.got());
    let lost: Vec<u64> = kept
        .iter()
        .copied()
        .filter(|s| !got.contains_key(s))
        .collect();
    let duplicates: usize = got.values().map(|v| v.len() - 1).sum();
    let after: Vec<usize> = ["gw1", "gw3"]
        .iter()
        .map(|id| {
            got.values()
                .filter(|m| m.iter().any(|x| x.starts_with(&format!("{id}-"))))
                .count()
        })
        .collect();
    eprintln!(
        "killed gw2 after {at_kill} outputs; sent 20000, kept {}, delivered {}, duplicates {duplicates}, lost {}; gw1 and gw3 processed {after:?}",
        kept.len(),
        got.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} records after the SIGKILL, first {:?}\ngw2's log:\n{victim_log}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let delivered: Vec<u64> = got.keys().copied().collect();
    assert_eq!(delivered, kept, "nothing W1 drops arrives");
    // Message ids stay unique across the processes: each carries its
    // gateway's id and that gateway's store sequence, never reused.
    let mut ids = HashSet::new();
    for m in got.values() {
        for id in m {
            assert!(ids.insert(id.clone()), "message id {id} reused");
        }
    }
    // A duplicate comes only from the failover: gw2 had synced and sent
    // it but not yet acknowledged it to the broker when it was killed, and
    // its adopter processed it again under its own message id.
    for (seq, m) in got.iter().filter(|(_, m)| m.len() > 1) {
        assert!(
            m.len() == 2 && m.iter().any(|x| x.starts_with("gw2-")),
            "{seq} duplicated other than by the failover: {m:?}"
        );
    }

    // 3. gw2 comes back, usually while its adoption is still going on: it
    //    takes its session back (the adopter stops), processes what its
    //    adopter had not yet acknowledged (duplicates of part 2, never a
    //    loss), and takes its share of new records again.
    let part2 = kept;
    weirs[1] = Some(Serve::start(&config(d, "gw2", broker.port)));
    assert!(weirs[1].as_ref().unwrap().wait_log("MQTT subscribed"));
    let sub = Sub::start(broker.port, "cloud-sub-3", "cloud/#", &[]);
    let (lines, kept) = readings(600, 9);
    broker.publish("mqttv311", 1, "sensors/w1/telemetry", &lines, &[]);
    wait_for(&sub, &kept, 60);
    let got = by_seq(&sub.got());
    let missing: Vec<&u64> = kept.iter().filter(|s| !got.contains_key(s)).collect();
    let extra: Vec<&u64> = got
        .keys()
        .filter(|s| !kept.contains(s) && !part2.contains(s))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after gw2's return: missing {missing:?}, neither part 2 nor part 3: {extra:?}\n{}",
        weirs
            .iter()
            .flatten()
            .map(|w| w.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    assert!(
        got.values().any(|m| m[0].starts_with("gw2-")),
        "gw2 takes part again after its return"
    );

    // Counted before they stop: a member that stops leaves its session
    // too, and is adopted in turn.
    let logs: Vec<String> = weirs.iter().flatten().map(|w| w.log()).collect();
    for w in weirs.into_iter().flatten() {
        w.stop();
    }
    let adopters = logs
        .iter()
        .filter(|l| {
            l.contains("adopted the session of a member that died")
                || l.contains("stopped adopting the session (its owner may be back)")
        })
        .count();
    assert_eq!(
        adopters,
        1,
        "exactly one member adopts gw2's session (and finishes, or stops when gw2 returns):\n{}",
        logs.join("\n----\n")
    );
    for log in &logs {
        assert!(log.contains("weir is serving"), "{log}");
    }
}
