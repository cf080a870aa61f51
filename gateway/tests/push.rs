//! Module push against real mosquitto brokers and real `weir serve`
//! processes: every refusal with its reason on the status topic, a swap
//! under a 10,000 records/s QoS 1 stream, automatic rollback, a restart
//! without the broker, chunked delivery through a broker that caps message
//! size, and a fleet of 20 gateways with a canary rollout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Mosquitto, Serve, SmallDisk, free_port, out_lines, patience};

use weir::deploy::bundle::{Bundle, Manifest, NeededLimits, StatePolicy, Vectors};
use weir::deploy::envelope::{piece_topic, split};
use weir::deploy::keys;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

/// `weir ARGS`: (exit code, stdout, stderr).
fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A module that emits its input with `{"v": v}` merged in; `pad` bytes
/// of data make it as large as a test needs.
fn mark_wat(v: u8, pad: usize) -> String {
    let pages = 1 + (pad + 2048) / 65536;
    let padding: String = (0..pad)
        .map(|i| format!("\\{:02x}", (i * 131 + 7) % 251))
        .collect();
    format!(
        r#"(module
  (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 16) "\a1\61\76\{v:02x}")
  (data (i32.const 2048) "{padding}")
  (func (export "weir_abi_v1"))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_transform") (param i32 i32) (result i32)
    (drop (call $emit_input (i32.const 16) (i32.const 4))) (i32.const 0)))"#
    )
}

/// A module that traps on every record.
const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "weir_abi_v1"))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_transform") (param i32 i32) (result i32) unreachable))"#;

/// A module that logs (needs grant `log`).
const LOGS: &str = r#"(module
  (import "weir" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "weir_abi_v1"))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_transform") (param i32 i32) (result i32)
    (drop (call $emit (local.get 0) (local.get 1))) (i32.const 0)))"#;

fn manifest(version: &str, grants: &[&str]) -> Manifest {
    Manifest {
        name: "mark".into(),
        version: version.parse().unwrap(),
        pipeline: "p".into(),
        stage: "mark".into(),
        grants: grants
            .iter()
            .map(|g| weir::pipeline::Grant::parse(g).unwrap())
            .collect(),
        limits: NeededLimits::default(),
        state: StatePolicy::Keep,
        wasm_sha256: String::new(),
        tests: None,
    }
}

/// A bundle of `wat` as `manifest`, signed with `key`, written to `dir`.
fn bundle(dir: &Path, name: &str, m: &Manifest, wat: &str, key: &Path) -> PathBuf {
    let key = keys::read_secret(key).unwrap();
    let wasm = wat::parse_str(wat).unwrap();
    let bytes = Bundle::pack(m, &wasm, &key).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A test kit: a directory, a trusted key pair and an untrusted one.
struct Kit {
    dir: tempfile::TempDir,
}

impl Kit {
    fn new() -> Kit {
        let dir = tempfile::tempdir().unwrap();
        for k in ["keys", "other"] {
            let (code, _, err) = weir(&["keygen", "--out", dir.path().join(k).to_str().unwrap()]);
            assert_eq!(code, 0, "{err}");
        }
        std::fs::write(dir.path().join("mark0.wat"), mark_wat(0, 0)).unwrap();
        Kit { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self) -> PathBuf {
        self.path().join("keys/weir.key")
    }

    /// Pack with the CLI, as an operator does: a manifest TOML with test
    /// vectors, a .wat module, the secret key.
    fn pack(&self, version: &str, v: u8, pad: usize) -> PathBuf {
        let d = self.path();
        std::fs::write(d.join(format!("mark{v}.wat")), mark_wat(v, pad)).unwrap();
        std::fs::write(d.join("in.jsonl"), "{\"id\":\"s1\",\"n\":1}\n").unwrap();
        std::fs::write(
            d.join(format!("expect{v}.jsonl")),
            format!("{{\"id\":\"s1\",\"n\":1,\"v\":{v}}}\n"),
        )
        .unwrap();
        let m = d.join(format!("mark-{version}.toml"));
        std::fs::write(
            &m,
            format!(
                "name = \"mark\"\nversion = \"{version}\"\npipeline = \"p\"\nstage = \"mark\"\nstate = \"keep\"\n[tests]\ninput = \"in.jsonl\"\nexpect = \"expect{v}.jsonl\"\n"
            ),
        )
        .unwrap();
        let out = d.join(format!("mark-{version}.wbundle"));
        let (code, stdout, err) = weir(&[
            "module",
            "pack",
            "--wasm",
            d.join(format!("mark{v}.wat")).to_str().unwrap(),
            "--manifest",
            m.to_str().unwrap(),
            "--key",
            self.key().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stdout}{err}");
        out
    }

    /// A gateway config: source `local` on `local`, pipeline `p` with
    /// stage `mark` (the config's module marks v=0), a durable file sink,
    /// and `cloud` (dead letters only) whose broker carries pushes.
    fn config(&self, id: &str, local: u16, cloud: u16, probation: &str) -> PathBuf {
        self.config_with(id, local, cloud, probation, "")
    }

    /// [`Kit::config`] with more `[modules]` lines.
    fn config_with(
        &self,
        id: &str,
        local: u16,
        cloud: u16,
        probation: &str,
        more: &str,
    ) -> PathBuf {
        let d = self.path().join(id);
        std::fs::create_dir_all(&d).unwrap();
        let text = format!(
            r#"
[gateway]
id = "{id}"
control = {control:?}

[store]
path = {store:?}

[[source]]
type = "mqtt"
name = "local"
host = "127.0.0.1"
port = {local}
client_id = "weir-{id}"
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]

[[pipeline]]
name = "p"
  [[pipeline.stage]]
  name = "mark"
  module = {mark0:?}

[[sink]]
name = "out"
type = "file"
path = {out:?}

[[sink]]
name = "cloud"
type = "mqtt"
host = "127.0.0.1"
port = {cloud}
include = "dead-letters"
durable = false
topic = "dead/{{gateway_id}}"

[modules]
keys = [{key:?}]
groups = ["lab"]
probation_records = 200
probation = "{probation}"
assembly_timeout = "3s"
{more}
[modules.allow]
p = ["log"]
"#,
            control = d.join("weir.sock").display().to_string(),
            store = d.join("store").display().to_string(),
            mark0 = self.path().join("mark0.wat").display().to_string(),
            out = d.join("out.jsonl").display().to_string(),
            key = self.path().join("keys/weir.pub").display().to_string(),
        );
        let p = d.join("weir.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `weir module push` to one gateway: (exit code, stdout + stderr).
fn push(port: u16, target: &[&str], file: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "module".to_string(),
        "push".into(),
        file.display().to_string(),
        "--broker".into(),
        format!("127.0.0.1:{port}"),
    ];
    if !extra.contains(&"--wait") {
        args.extend(["--wait".into(), patience(30).as_secs().to_string()]);
    }
    args.extend(target.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = weir(&a);
    (code, out + &err)
}

/// The retained status message of gateway `id`.
fn status(port: u16, id: &str) -> serde_json::Value {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", &format!("weir/{id}/status"), "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Wait (bounded) until gateway `id`'s status shows a result for bundle
/// `sha`; returns it.
fn result_for(port: u16, id: &str, sha: &str) -> serde_json::Value {
    let deadline = Instant::now() + patience(30);
    loop {
        let s = status(port, id);
        if let Some(r) = s["pushed"]["mark"]["results"]
            .as_array()
            .and_then(|a| a.iter().rev().find(|r| r["sha256"] == sha))
        {
            return r.clone();
        }
        assert!(Instant::now() < deadline, "no result for {sha}: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha_of(file: &Path) -> String {
    weir::deploy::bundle::sha256_hex(&std::fs::read(file).unwrap())
}

/// `weir fleet status` against the broker on `port`, for group `lab`.
fn fleet_status(port: u16, json: bool) -> String {
    let broker = format!("127.0.0.1:{port}");
    let mut args = vec!["fleet", "status", "--broker", &broker, "--group", "lab"];
    if json {
        args.push("--json");
    }
    weir(&args).1
}

/// Publish raw bytes, retained, with mosquitto_pub.
fn publish_retained(port: u16, topic: &str, payload: &[u8]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", topic, "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(payload).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Wait until the gateway's push agent subscribed (it logs it).
fn wait_ready(w: &Serve) {
    assert!(w.wait_log("taking module pushes"), "{}", w.log());
}

/// Publish `n` QoS 1 records numbered from `from` at about `rate`/s.
fn stream(port: u16, from: u64, n: u64, rate: u64) -> std::thread::JoinHandle<()> {
    common::stream(port, &format!("push-pub-{from}"), n, rate, move |i| {
        format!("{{\"id\":\"s1\",\"n\":{}}}", from + i)
    })
}

fn wait_out(dir: &Path, n: usize, w: &Serve) -> Vec<serde_json::Value> {
    common::wait_out(dir, n, w, 120)
}

/// `(n, v)` of each output, in file order.
fn marks(lines: &[serde_json::Value]) -> Vec<(u64, u64)> {
    lines
        .iter()
        .map(|l| {
            let p = &l["payload"];
            (p["n"].as_u64().unwrap(), p["v"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn every_refusal_has_its_own_reason_on_the_status_topic() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    let cfg = kit.config("gw-r", port, port, "2s");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let gw = ["--gateway", "gw-r"];

    // A good push: applied after probation (no traffic: the time ends it).
    let v1 = kit.pack("1.0.0", 1, 0);
    let (code, out) = push(port, &gw, &v1, &[]);
    assert_eq!(code, 0, "{out}\n{}", w.log());
    assert!(out.contains("gw-r: applied mark 1.0.0"), "{out}");

    let cases: Vec<(PathBuf, &str)> = vec![
        // Signed by a key the gateway does not trust.
        (
            bundle(
                d,
                "unknown.wb",
                &manifest("2.0.0", &[]),
                &mark_wat(2, 0),
                &d.join("other/weir.key"),
            ),
            "unknown-key",
        ),
        // Tampered: one byte of the module flipped after signing.
        (
            {
                let p = bundle(
                    d,
                    "tampered.wb",
                    &manifest("2.0.0", &[]),
                    &mark_wat(2, 0),
                    &kit.key(),
                );
                let mut b = std::fs::read(&p).unwrap();
                let at = b.len() - 120;
                b[at] ^= 0x40;
                std::fs::write(&p, b).unwrap();
                p
            },
            "bad-signature",
        ),
        // Not newer than the running 1.0.0.
        (
            bundle(
                d,
                "old.wb",
                &manifest("0.9.0", &[]),
                &mark_wat(2, 0),
                &kit.key(),
            ),
            "not-newer",
        ),
        // A grant the policy does not allow in pipeline p.
        (
            bundle(
                d,
                "state.wb",
                &manifest("2.0.0", &["state"]),
                &mark_wat(2, 0),
                &kit.key(),
            ),
            "policy",
        ),
        // Imports beyond its manifest's grants.
        (
            bundle(d, "logs.wb", &manifest("2.0.0", &[]), LOGS, &kit.key()),
            "grants",
        ),
        // Not valid for the ABI.
        (
            bundle(
                d,
                "invalid.wb",
                &manifest("2.0.0", &[]),
                "(module)",
                &kit.key(),
            ),
            "invalid",
        ),
        // Its own test vectors fail.
        (
            {
                let mut m = manifest("2.0.0", &[]);
                m.tests = Some(Vectors {
                    input: vec![r#"{"id":"s1","n":1}"#.into()],
                    expect: vec![r#"{"id":"s1","n":1,"v":9}"#.into()],
                    topic: None,
                });
                bundle(d, "vectors.wb", &m, &mark_wat(2, 0), &kit.key())
            },
            "test-vectors",
        ),
        // A stage this gateway does not have.
        (
            {
                let mut m = manifest("2.0.0", &[]);
                m.stage = "nope".into();
                bundle(d, "nostage.wb", &m, &mark_wat(2, 0), &kit.key())
            },
            "no-stage",
        ),
    ];
    for (file, code_want) in &cases {
        if *code_want == "bad-signature" {
            // `weir module push` refuses to send it: published by hand,
            // as an attacker on the broker would.
            let (code, out) = push(port, &gw, file, &[]);
            assert_eq!(code, 2, "{out}");
            assert!(out.contains("bad signature"), "{out}");
            let bytes = std::fs::read(file).unwrap();
            publish_retained(
                port,
                "weir/gw-r/modules/mark",
                &split(&bytes, 1 << 20, None)[0].encode(),
            );
        } else {
            let (code, out) = push(port, &gw, file, &[]);
            assert_eq!(code, 1, "{code_want}: {out}");
            assert!(out.contains(&format!("refused ({code_want})")), "{out}");
        }
        let r = result_for(port, "gw-r", &sha_of(file));
        assert_eq!(r["outcome"], "refused", "{code_want}: {r}");
        assert_eq!(r["code"], *code_want, "{r}");
        assert!(!r["reason"].as_str().unwrap().is_empty());
        assert_eq!(r["previous"], "1.0.0", "{r}");
    }

    // A rollback push, authorised by the key, to a gateway that does not
    // take rollbacks.
    let v0 = bundle(
        d,
        "v05.wb",
        &manifest("0.5.0", &[]),
        &mark_wat(5, 0),
        &kit.key(),
    );
    let (code, out) = push(
        port,
        &gw,
        &v0,
        &["--rollback", "--key", kit.key().to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        result_for(port, "gw-r", &sha_of(&v0))["code"],
        "rollback-not-allowed"
    );

    // Junk on a module topic, and a bundle cut short: one piece of two
    // never comes, and after assembly_timeout it is discarded.
    publish_retained(port, "weir/gw-r/modules/mark", b"not a push at all");
    assert_eq!(
        result_for(
            port,
            "gw-r",
            &weir::deploy::bundle::sha256_hex(b"not a push at all")
        )["code"],
        "format"
    );
    let big = bundle(
        d,
        "partial.wb",
        &manifest("3.0.0", &[]),
        &mark_wat(3, 4000),
        &kit.key(),
    );
    let bytes = std::fs::read(&big).unwrap();
    let pieces = split(&bytes, bytes.len() / 2 + 1, None);
    assert_eq!(pieces.len(), 2);
    publish_retained(port, "weir/gw-r/modules/mark", &pieces[0].encode());
    let r = result_for(port, "gw-r", &sha_of(&big));
    assert_eq!(r["code"], "partial", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("1 of 2 pieces"),
        "{r}"
    );
    // Its other piece comes late: the whole bundle is judged on its own
    // (the partial refusal says nothing about the bundle).
    publish_retained(
        port,
        &piece_topic("weir/gw-r/modules/mark", 1),
        &pieces[1].encode(),
    );
    publish_retained(port, "weir/gw-r/modules/mark", &pieces[0].encode());
    let deadline = Instant::now() + patience(30);
    loop {
        let s = status(port, "gw-r");
        if s["pushed"]["mark"]["active"]["version"] == "3.0.0" {
            break;
        }
        assert!(Instant::now() < deadline, "{s:#}\n{}", w.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The gateway kept running all along, and says each refusal once.
    let log = w.stop();
    assert_eq!(log.matches("code=\"unknown-key\"").count(), 1, "{log}");
    broker.stop();
}

#[test]
fn a_push_swaps_under_a_10k_per_second_qos1_stream_losing_and_repeating_nothing() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    let cfg = kit.config("gw-s", port, port, "2s");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let v1 = kit.pack("1.0.0", 1, 0);
    const N: u64 = 40_000;
    let feed = stream(port, 0, N, 10_000);
    // Push while the stream runs.
    std::thread::sleep(Duration::from_millis(1500));
    let began = Instant::now();
    let (code, out) = push(port, &["--gateway", "gw-s"], &v1, &[]);
    let took = began.elapsed();
    assert_eq!(code, 0, "{out}\n{}", w.log());
    // The status message names the version the stage runs now.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(port, "gw-s");
        let versions: Vec<&serde_json::Value> = st["modules"]
            .as_array()
            .map(|m| m.iter().map(|m| &m["version"]).collect())
            .unwrap_or_default();
        if versions.iter().any(|v| *v == "1.0.0") {
            break;
        }
        assert!(Instant::now() < deadline, "no module at 1.0.0: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    feed.join().unwrap();
    let lines = wait_out(&d.join("gw-s"), N as usize, &w);
    let m = marks(&lines);
    // Every record exactly once.
    let mut ns: Vec<u64> = m.iter().map(|(n, _)| *n).collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns.len() as u64, N, "lost or repeated records");
    assert_eq!(m.len() as u64, N, "repeated records");
    // One switch from v0 to v1, at one record boundary, in the order the
    // pipeline ran them.
    let switches = m.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert_eq!(switches, 1, "outputs must switch once");
    assert_eq!(m.first().unwrap().1, 0);
    assert_eq!(m.last().unwrap().1, 1);
    let at = m.iter().position(|(_, v)| *v == 1).unwrap();
    eprintln!(
        "swap under load: {N} records, 0 lost, 0 repeated; switched at output {at}; push to applied (incl. probation) {:.2} s",
        took.as_secs_f64()
    );
    let log = w.stop();
    assert!(
        log.contains("pushed module swapped in between records"),
        "{log}"
    );
    broker.stop();
}

#[test]
fn a_module_that_traps_is_rolled_back_on_its_own_while_the_stream_flows() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    // A long probation: only records end it.
    let cfg = kit.config("gw-t", port, port, "60s");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    const N: u64 = 20_000;
    let feed = stream(port, 0, N, 2_000);
    std::thread::sleep(Duration::from_millis(500));
    let v1 = kit.pack("1.0.0", 1, 0);
    let (code, out) = push(port, &["--gateway", "gw-t"], &v1, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(was the config's module)"), "{out}");
    // v2 traps on every record; its manifest has no vectors, so only
    // probation can catch it.
    let bad = bundle(d, "trap.wb", &manifest("2.0.0", &[]), TRAP, &kit.key());
    let (code, out) = push(port, &["--gateway", "gw-t"], &bad, &[]);
    assert_eq!(code, 1, "{out}\n{}", w.log());
    assert!(
        out.contains("rolled-back (probation)"),
        "{out}\n{}",
        w.log()
    );
    let r = result_for(port, "gw-t", &sha_of(&bad));
    assert_eq!(r["outcome"], "rolled-back");
    assert_eq!(r["previous"], "1.0.0");
    let rolled_back = out_lines(&d.join("gw-t")).len();
    feed.join().unwrap();
    // The stream kept flowing: after the rollback, records come out
    // marked by v1 again; those v2 failed went to the error policy.
    let deadline = Instant::now() + patience(60);
    loop {
        let m = marks(&out_lines(&d.join("gw-t")));
        if m.iter().any(|(n, _)| *n == N - 1) {
            assert!(m[rolled_back..].iter().all(|(_, v)| *v == 1));
            assert!(
                m.len() > rolled_back + 1000,
                "{} after the rollback",
                m.len() - rolled_back
            );
            break;
        }
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status(port, "gw-t");
    assert_eq!(s["pushed"]["mark"]["active"]["version"], "1.0.0", "{s:#}");
    // The same bad version again: refused, without another probation.
    let (code, out) = push(port, &["--gateway", "gw-t"], &bad, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("rolled-back"), "{out}");
    // Another build of it: refused until a newer version comes.
    let again = bundle(
        d,
        "trap2.wb",
        &{
            let mut m = manifest("2.0.0", &[]);
            m.state = StatePolicy::Reset;
            m
        },
        TRAP,
        &kit.key(),
    );
    let (code, _) = push(port, &["--gateway", "gw-t"], &again, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        result_for(port, "gw-t", &sha_of(&again))["code"],
        "rolled-back-before"
    );
    w.stop();
    broker.stop();
}

#[test]
fn an_authorised_rollback_goes_back_and_is_not_left_retained() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    let cfg = kit.config_with("gw-b", port, port, "2s", "allow_rollback = true");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let gw = ["--gateway", "gw-b"];
    let (v1, v2) = (kit.pack("1.0.0", 1, 0), kit.pack("2.0.0", 2, 0));
    assert_eq!(push(port, &gw, &v1, &[]).0, 0);
    assert_eq!(push(port, &gw, &v2, &[]).0, 0);
    // Without an authorisation, 1.0.0 is the push judged before: the
    // command says it was applied and replaced since.
    let (code, out) = push(port, &gw, &v1, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("superseded") && out.contains("2.0.0 runs now"),
        "{out}"
    );
    assert_eq!(
        status(port, "gw-b")["pushed"]["mark"]["active"]["version"],
        "2.0.0"
    );
    // Authorised by a key the gateway does not trust: refused.
    let other = d.join("other/weir.key");
    let (code, out) = push(
        port,
        &gw,
        &v1,
        &["--rollback", "--key", other.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused (bad-rollback)"), "{out}");
    // Authorised by a trusted key: back to 1.0.0, from 2.0.0.
    let key = kit.key();
    let (code, out) = push(
        port,
        &gw,
        &v1,
        &["--rollback", "--key", key.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}\n{}", w.log());
    assert!(out.contains("applied mark 1.0.0 (was 2.0.0)"), "{out}");
    let s = status(port, "gw-b");
    assert_eq!(s["pushed"]["mark"]["active"]["version"], "1.0.0", "{s:#}");
    // The rollback was not retained: the topic holds the last plain push
    // (1.0.0 again, above), which this gateway has judged, so a reconnect
    // changes nothing.
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t",
            "weir/gw-b/modules/mark",
            "-C",
            "1",
            "-W",
            "5",
            "-F",
            "%x",
        ])
        .output()
        .unwrap();
    let retained = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let piece = weir::deploy::envelope::Piece::decode(&retained).unwrap();
    assert_eq!(hex::encode(piece.bundle), sha_of(&v1));
    assert!(piece.rollback.is_none());
    w.stop();
    broker.stop();
}

#[test]
fn a_full_disk_refuses_a_push_until_there_is_room_and_the_running_version_goes_on() {
    let kit = Kit::new();
    let d = kit.path();
    // The pushed modules' directory on a small filesystem of its own.
    let disk = match SmallDisk::mount(&d.join("mods"), "2m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_a_push: {why}");
            return;
        }
    };
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    let more = format!("dir = {:?}", d.join("mods").display().to_string());
    let cfg = kit.config_with("gw-f", port, port, "2s", &more);
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let gw = ["--gateway", "gw-f"];
    let (v1, v2) = (kit.pack("1.0.0", 1, 0), kit.pack("2.0.0", 2, 0));
    assert_eq!(push(port, &gw, &v1, &[]).0, 0);
    disk.fill();
    let (code, out) = push(port, &gw, &v2, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused (disk)"), "{out}");
    assert_eq!(
        status(port, "gw-f")["pushed"]["mark"]["active"]["version"],
        "1.0.0"
    );
    // Room again: the same push is judged anew, and applied.
    disk.free();
    let (code, out) = push(port, &gw, &v2, &[]);
    assert_eq!(code, 0, "{out}\n{}", w.log());
    assert!(out.contains("applied mark 2.0.0 (was 1.0.0)"), "{out}");
    w.stop();
    broker.stop();
}

#[test]
fn a_restart_runs_the_pushed_version_with_the_broker_down() {
    let kit = Kit::new();
    let d = kit.path();
    let (local, cloud) = (free_port(), free_port());
    std::fs::create_dir_all(d.join("lb")).unwrap();
    std::fs::create_dir_all(d.join("cb")).unwrap();
    let lb = Mosquitto::start(&d.join("lb"), local);
    let cb = Mosquitto::start(&d.join("cb"), cloud);
    let cfg = kit.config("gw-k", local, cloud, "2s");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let v1 = kit.pack("1.0.0", 1, 0);
    assert_eq!(push(cloud, &["--gateway", "gw-k"], &v1, &[]).0, 0);
    w.stop();
    cb.stop();
    // Start again, wait for `line` in the log, send record `n`: its mark.
    let run = |line: &str, n: u64| {
        let w = Serve::start(&cfg);
        assert!(w.wait_log(line), "{}", w.log());
        assert!(w.wait_log("weir is serving"));
        let before = out_lines(&d.join("gw-k")).len();
        let rec = format!("{{\"id\":\"s1\",\"n\":{n}}}");
        lb.publish("5", 1, "sensors/s1/telemetry", &[rec], &[]);
        let lines = wait_out(&d.join("gw-k"), before + 1, &w);
        w.stop();
        *marks(&lines).last().unwrap()
    };
    // The cloud broker is gone; the gateway starts on what it kept.
    assert_eq!(run("running the pushed module kept on disk", 7), (7, 1));
    // A damaged kept bundle is not run: the config's module is.
    let dir = d.join("gw-k/modules/mark");
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "bundle"))
        .unwrap()
        .path();
    let mut b = std::fs::read(&kept).unwrap();
    let at = b.len() / 2;
    b[at] ^= 1;
    std::fs::write(&kept, b).unwrap();
    assert_eq!(run("the kept bundle fails verification", 8), (8, 0));
    lb.stop();
}

#[test]
fn a_bundle_over_128_kb_arrives_in_pieces_through_a_broker_that_caps_messages() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start_with(d, port, "message_size_limit 131072");
    let cfg = kit.config("gw-c", port, port, "2s");
    let w = Serve::start(&cfg);
    wait_ready(&w);
    let big = kit.pack("1.0.0", 1, 200_000);
    let size = std::fs::metadata(&big).unwrap().len();
    assert!(size > 131_072, "{size}");
    // In one message the broker refuses it.
    let (code, out) = push(
        port,
        &["--gateway", "gw-c"],
        &big,
        &["--chunk-size", "1 MiB", "--wait", "5"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("1 piece(s)") && out.contains("gw-c: no result within 5 s"),
        "{out}"
    );
    // In pieces (the default 96 KiB) it arrives and is applied.
    let (code, out) = push(port, &["--gateway", "gw-c"], &big, &[]);
    assert_eq!(code, 0, "{out}\n{}", w.log());
    assert!(out.contains("3 piece(s)"), "{out}");
    w.stop();
    broker.stop();
}

#[test]
fn a_fleet_of_20_converges_a_late_gateway_catches_up_and_a_failed_canary_stops_the_rollout() {
    let kit = Kit::new();
    let d = kit.path();
    let port = free_port();
    let broker = Mosquitto::start(d, port);
    let ids: Vec<String> = (0..20).map(|i| format!("gw-{i:02}")).collect();
    let fleet: Vec<Serve> = ids
        .iter()
        .map(|id| Serve::start(&kit.config(id, port, port, "2s")))
        .collect();
    for w in &fleet {
        wait_ready(w);
    }
    // The fleet is online in its status before the push reads it.
    let deadline = Instant::now() + patience(30);
    loop {
        let out = fleet_status(port, true);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if v.as_array()
            .is_some_and(|a| a.iter().filter(|g| g["state"] == "online").count() == 20)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v1 = kit.pack("1.0.0", 1, 0);
    let began = Instant::now();
    let (code, out) = push(port, &["--group", "lab"], &v1, &[]);
    let took = began.elapsed();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("20 applied, 0 not"), "{out}");
    eprintln!(
        "fleet: 20 gateways applied 1.0.0 in {:.2} s from push (incl. 2 s probation)",
        took.as_secs_f64()
    );
    // A gateway started afterwards gets it from the retained message.
    let late = Serve::start(&kit.config("gw-late", port, port, "2s"));
    let r = result_for(port, "gw-late", &sha_of(&v1));
    assert_eq!(r["outcome"], "applied", "{r}");
    // A canary rollout of a version whose vectors fail: the canaries
    // refuse it, and the group topic keeps 1.0.0.
    let bad = {
        let mut m = manifest("2.0.0", &[]);
        m.tests = Some(Vectors {
            input: vec![r#"{"id":"s1","n":1}"#.into()],
            expect: vec![r#"{"id":"s1","n":1,"v":1}"#.into()],
            topic: None,
        });
        bundle(d, "canary.wb", &m, &mark_wat(2, 0), &kit.key())
    };
    let (code, out) = push(
        port,
        &["--group", "lab"],
        &bad,
        &["--canary", "2", "--max-failures", "0"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the rollout stops here"), "{out}");
    let table = fleet_status(port, false);
    assert_eq!(table.matches("mark 2.0.0 refused").count(), 2, "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("mark 1.0.0 ")).count(),
        21,
        "{table}"
    );
    // A gateway that stops is still a member, offline, with what it ran.
    let mut fleet = fleet;
    fleet.pop().unwrap().stop();
    let deadline = Instant::now() + patience(30);
    loop {
        let table = fleet_status(port, false);
        let row = table
            .lines()
            .find(|l| l.starts_with("gw-19 "))
            .unwrap_or("")
            .to_string();
        if row.contains("offline") {
            assert!(row.contains("mark 1.0.0"), "{row}");
            break;
        }
        assert!(Instant::now() < deadline, "{table}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for w in fleet {
        w.stop();
    }
    late.stop();
    broker.stop();
}
