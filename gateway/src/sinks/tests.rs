use super::*;
use crate::common::ByteSize;
use crate::store::{BufferConfig, OpenReport, Store, entry};

fn cfg(toml_text: &str) -> SinkConfig {
    toml::from_str(toml_text).unwrap()
}

fn record_entry(seq: u64, payload: serde_json::Value) -> Entry {
    let rec = Record {
        source: "mqtt".into(),
        topic: "sensors/s1/telemetry".into(),
        ts: 5,
        headers: Default::default(),
        payload: crate::record::json_to_cbor(&payload),
    };
    Entry {
        seq,
        kind: Kind::Record,
        enqueued_ms: 1,
        pipeline: "w1".into(),
        body: rec.to_cbor(),
    }
}

#[test]
fn flat_render_carries_message_id_and_fills_the_topic() {
    let c = cfg(r#"name = "cloud"
type = "mqtt"
host = "h"
topic = "cloud/{gateway_id}/{payload.id}/{pipeline}""#);
    let r = Render::new(&c, "gw1");
    let out = r.render(&record_entry(
        42,
        serde_json::json!({"id": "s/1+", "temp_c": 21.5}),
    ));
    assert_eq!(out.topic, "cloud/gw1/s_1_/w1");
    assert_eq!(out.value["msg_id"], "gw1-42");
    assert_eq!(out.value["gateway_id"], "gw1");
    assert_eq!(out.value["temp_c"], 21.5);
    let batch = r.encode(&[out.clone(), out]);
    let v: serde_json::Value = serde_json::from_slice(&batch).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn cbor_and_record_envelope() {
    let c = cfg(r#"name = "local"
type = "mqtt"
host = "h"
format = "cbor"
envelope = "record""#);
    let r = Render::new(&c, "gw");
    let out = r.render(&record_entry(1, serde_json::json!({"id": "s1"})));
    let bytes = r.encode(&[out]);
    let v: serde_json::Value = serde_cbor::from_slice(&bytes).unwrap();
    assert_eq!(v["payload"]["id"], "s1");
    assert_eq!(v["pipeline"], "w1");
    assert_eq!(v["msg_id"], "gw-1");
}

#[test]
fn presets_check_the_providers_rules() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("x.pem");
    std::fs::write(&pem, "x").unwrap();
    let p = pem.display();
    let base = "name = \"c\"\ntype = \"mqtt\"\nhost = \"h\"\n";
    let aws_tls = format!("tls = {{ ca = \"{p}\", cert = \"{p}\", key = \"{p}\" }}\n");
    let ok = cfg(&format!("{base}preset = \"aws-iot-core\"\n{aws_tls}"));
    assert_eq!(ok.check("gw"), Ok(()));
    assert_eq!(ok.port(), 8883);
    assert_eq!(ok.max_payload(), 128 * 1024);
    let no_cert = cfg(&format!(
        "{base}preset = \"aws-iot-core\"\ntls = {{ ca = \"{p}\" }}\n"
    ));
    assert_eq!(no_cert.check("gw").unwrap_err().0, "tls.cert");
    let big = cfg(&format!(
        "{base}preset = \"aws-iot-core\"\nmax_payload = \"200 KiB\"\n{aws_tls}"
    ));
    assert_eq!(big.check("gw").unwrap_err().0, "max_payload");
    let deep = cfg(&format!(
        "{base}preset = \"aws-iot-core\"\ntopic = \"a/b/c/d/e/f/g/h/i\"\n{aws_tls}"
    ));
    assert_eq!(deep.check("gw").unwrap_err().0, "topic");
    let azure = cfg(&format!(
        "name = \"c\"\ntype = \"mqtt\"\nhost = \"hub.azure-devices.net\"\npreset = \"azure-iot-hub\"\nclient_id = \"dev1\"\n{aws_tls}"
    ));
    assert_eq!(azure.check("gw"), Ok(()));
    assert_eq!(azure.topic("gw"), "devices/dev1/messages/events/");
    assert_eq!(
        azure.username("gw").unwrap(),
        "hub.azure-devices.net/dev1/?api-version=2021-04-12"
    );
    let wrong_topic = cfg(&format!(
        "name = \"c\"\ntype = \"mqtt\"\nhost = \"h\"\npreset = \"azure-iot-hub\"\nclient_id = \"dev1\"\ntopic = \"x/y\"\n{aws_tls}"
    ));
    assert_eq!(wrong_topic.check("gw").unwrap_err().0, "topic");
    // AWS IoT Basic Ingest goes to a rule: accepted, its prefix not counted
    // as levels; every other `$` topic is reserved.
    for (topic, ok) in [
        ("$aws/rules/telemetry_rule", true),
        ("$aws/rules/telemetry_rule/{gateway_id}/a/b/c/d/e/f/g", true),
        ("$aws/rules/r/a/b/c/d/e/f/g/h/i", false),
        ("$aws/rules/", false),
        ("$aws/things/gw/shadow/update", false),
        ("$SYS/x", false),
    ] {
        let c = cfg(&format!(
            "{base}preset = \"aws-iot-core\"\ntopic = \"{topic}\"\n{aws_tls}"
        ));
        match c.check("gw") {
            Ok(()) => assert!(ok, "{topic} was accepted"),
            Err((key, msg)) => {
                assert!(!ok, "{topic}: {msg}");
                assert_eq!(key, "topic");
            }
        }
    }
}

#[test]
fn keys_of_another_sink_type_are_refused_by_name() {
    for (text, key) in [
        (
            "name = \"m\"\ntype = \"mqtt\"\nhost = \"h\"\nkeep = 3\n",
            "keep",
        ),
        (
            "name = \"m\"\ntype = \"mqtt\"\nhost = \"h\"\nrotate_bytes = 10\n",
            "rotate_bytes",
        ),
        (
            "name = \"f\"\ntype = \"file\"\npath = \"/x\"\nmax_payload = 10\n",
            "max_payload",
        ),
        (
            "name = \"f\"\ntype = \"file\"\npath = \"/x\"\nkeep_alive = \"5s\"\n",
            "keep_alive",
        ),
        (
            "name = \"f\"\ntype = \"file\"\npath = \"/x\"\ndrain_on_stop = \"5s\"\n",
            "drain_on_stop",
        ),
        (
            "name = \"f\"\ntype = \"file\"\npath = \"/x\"\ntopic = \"t\"\n",
            "topic",
        ),
        ("name = \"s\"\ntype = \"stdout\"\npath = \"/x\"\n", "path"),
    ] {
        let err = toml::from_str::<SinkConfig>(text).unwrap_err().to_string();
        assert!(
            err.contains(&format!("unknown field `{key}`")),
            "{key}: {err}"
        );
    }
    // The keys every type takes still work for each.
    let f = cfg("name = \"f\"\ntype = \"file\"\npath = \"/x\"\nkeep = 2\nbatch = 3\n");
    assert_eq!((f.keep, f.batch, f.kind), (2, 3, SinkType::File));
}

#[test]
fn topic_templates_take_known_placeholders_only() {
    let base = "name = \"c\"\ntype = \"mqtt\"\nhost = \"h\"\n";
    let bad = cfg(&format!(
        "{base}topic = \"cloud/{{gatewayid}}/telemetry\"\n"
    ));
    let (key, msg) = bad.check("gw").unwrap_err();
    assert_eq!(key, "topic");
    assert!(msg.contains("did you mean `{gateway_id}`"), "{msg}");
    let bare_field = cfg(&format!("{base}topic = \"cloud/{{id}}\"\n"));
    assert!(
        bare_field
            .check("gw")
            .unwrap_err()
            .1
            .contains("{payload.id}")
    );
    let mirror = cfg(&format!("{base}topic = \"mirror/{{topic}}\"\n"));
    assert_eq!(mirror.check("gw"), Ok(()));
    // `{topic}` keeps the sensor's topic levels, so a sink can mirror the tree.
    let out = Render::new(&mirror, "gw").render(&record_entry(1, serde_json::json!({"id": "s1"})));
    assert_eq!(out.topic, "mirror/sensors/s1/telemetry");
}

fn filled(n: u64) -> (Store, std::sync::Arc<Queue>) {
    let store = Store::memory();
    let q = store
        .queue(
            "s",
            BufferConfig::default(),
            false,
            &mut OpenReport::default(),
        )
        .unwrap();
    for _ in 0..n {
        q.push(store.take_seq(), &entry::encode(Kind::Record, 1, "p", b"x"));
    }
    (store, q)
}

#[test]
fn a_memory_queue_is_read_only_below_what_every_writer_has_committed() {
    // Two pipeline threads share the store's numbering: one takes 1 and
    // is still at work when the other commits 2. A sink that read past 2
    // would never come back for 1 (what `a_slow_pipeline_does_not_starve_
    // another` once lost under emulation): it reads below `deliverable`.
    let (store, q) = filled(0);
    let (slow, fast) = (store.writer(), store.writer());
    let seqs = |v: Vec<Entry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    let mut s = Selector::new(None);
    store.hold_from(&slow);
    let one = store.take_seq();
    store.hold_from(&fast);
    let two = store.take_seq();
    q.push(two, &entry::encode(Kind::Record, 1, "p", b"fast"));
    fast.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    assert!(s.take(&q, store.deliverable(), 10, u64::MAX).is_empty());
    q.push(one, &entry::encode(Kind::Record, 1, "p", b"slow"));
    slow.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        seqs(s.take(&q, store.deliverable(), 10, u64::MAX)),
        [one, two]
    );
    // Reading past the mark, as before, skips the late one for good.
    let (store, q) = filled(0);
    let mut s = Selector::new(None);
    let (one, two) = (store.take_seq(), store.take_seq());
    q.push(two, &entry::encode(Kind::Record, 1, "p", b"fast"));
    assert_eq!(seqs(s.take(&q, u64::MAX, 10, u64::MAX)), [two]);
    q.push(one, &entry::encode(Kind::Record, 1, "p", b"slow"));
    assert!(s.take(&q, u64::MAX, 10, u64::MAX).is_empty());
}

#[test]
fn selector_in_order_and_rewind() {
    let (store, q) = filled(5);
    let mut s = Selector::new(None);
    let seqs = |v: Vec<Entry>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(s.take(&q, u64::MAX, 2, u64::MAX)), [1, 2]);
    assert_eq!(seqs(s.take(&q, u64::MAX, 2, u64::MAX)), [3, 4]);
    q.delivered(1);
    s.rewind(store.next_seq());
    assert_eq!(seqs(s.take(&q, u64::MAX, 10, u64::MAX)), [2, 3, 4, 5]);
    assert!(s.take(&q, u64::MAX, 10, u64::MAX).is_empty());
}

#[test]
fn selector_live_first_sends_fresh_records_first_with_a_backlog_share() {
    let (store, q) = filled(100); // backlog 1..=100
    let mut s = Selector::new(Some(LiveFirst {
        backlog_share: 0.25,
    }));
    s.rewind(store.next_seq());
    for _ in 0..100 {
        q.push(store.take_seq(), &entry::encode(Kind::Record, 1, "p", b"x")); // live 101..=200
    }
    let mut order = Vec::new();
    for _ in 0..40 {
        order.extend(s.take(&q, u64::MAX, 1, u64::MAX).iter().map(|e| e.seq));
    }
    let backlog = order.iter().filter(|&&x| x <= 100).count();
    assert_eq!(backlog, 10, "a quarter of the sends: {order:?}");
    assert_eq!(order[0], 101, "live first");
    let live: Vec<u64> = order.iter().copied().filter(|&x| x > 100).collect();
    assert!(live.windows(2).all(|w| w[0] < w[1]));
    // With no live records left the backlog takes every send.
    let rest: Vec<u64> = (0..200)
        .flat_map(|_| s.take(&q, u64::MAX, 1, u64::MAX))
        .map(|e| e.seq)
        .collect();
    assert_eq!(rest.len(), 160);
}

#[test]
fn rate_cap_spaces_sends() {
    let mut r = Rate::new(RateConfig {
        records_per_s: Some(10.0),
        bytes_per_s: Some(ByteSize(1000)),
    });
    let t0 = Instant::now();
    // The first second is a burst.
    for _ in 0..10 {
        assert!(r.wait(t0).is_none());
        r.spend(t0, 1, 10);
    }
    r.spend(t0, 1, 10);
    let next = r.wait(t0).expect("over the burst");
    assert!(next > t0 && next <= t0 + Duration::from_millis(100));
    // Bytes can be the tighter limit.
    let mut b = Rate::new(RateConfig {
        records_per_s: None,
        bytes_per_s: Some(ByteSize(100)),
    });
    b.spend(t0, 1, 300);
    assert!(b.wait(t0).unwrap() >= t0 + Duration::from_secs(2) - Duration::from_millis(1));
}
