//! Sensor nodes end to end: `weir sim` (the firmware SDK's node code) on a
//! real pseudo-terminal feeds `weir serve`'s serial source and W1, through
//! noise; `weir sensor send` and a stage's `serial_send` reach the nodes
//! over the downlink, and the nodes answer.
//!
//! Serial ioctls are not emulated by qemu-user: under `--cfg qemu_user`
//! these are ignored, and they run natively and in the board image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{Serve, patience};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stage that passes every record on and, at each sensor's reading with
/// `seq` 5, asks for a `ping` to that sensor (`id` "sN": sensor N) on
/// `serial0` through `serial_send`.
const PING_ON_5: &str = r#"(module
  (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))
  (import "weir" "input_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "weir" "serial_send" (func $send (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "seq")
  (data (i32.const 8) "id")
  (data (i32.const 16) "serial0")
  (data (i32.const 32) "\a1\63cmd\64ping")
  (func (export "weir_abi_v1"))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_transform") (param $p i32) (param $l i32) (result i32)
    (if (i32.and
          (i32.eq (call $get (i32.const 0) (i32.const 3) (i32.const 64) (i32.const 16)) (i32.const 1))
          (i32.eq (i32.load8_u (i32.const 64)) (i32.const 5)))
      (then
        (if (i32.eq (call $get (i32.const 8) (i32.const 2) (i32.const 64) (i32.const 16)) (i32.const 3))
          (then (drop (call $send (i32.const 16) (i32.const 7)
                   (i32.sub (i32.load8_u (i32.const 66)) (i32.const 48))
                   (i32.const 32) (i32.const 10)))))))
    (drop (call $emit_input (i32.const 0) (i32.const 0)))
    (i32.const 0)))"#;

/// W1's three stages on a serial source at `dev`, after a stage that
/// pings each sensor once (grant `serial`); stdout is the sink.
fn config(dir: &Path, dev: &Path) -> PathBuf {
    let ping = dir.join("ping_on_5.wat");
    std::fs::write(&ping, PING_ON_5).unwrap();
    let text = format!(
        r#"
[gateway]
modules_dir = {modules:?}
control = {control:?}

[[source]]
type = "serial"
name = "serial0"
path = {dev:?}
framing = {{ mode = "weir" }}

[[pipeline]]
name = "w1"

  [[pipeline.stage]]
  name = "ping-on-5"
  module = {ping:?}
  grants = ["serial"]

  [[pipeline.stage]]
  name = "range-filter"
  module = "weir_w1_range_filter.wasm"

  [[pipeline.stage]]
  name = "enrich"
  module = "weir_w1_enrich.wasm"

  [[pipeline.stage]]
  name = "moving-average"
  module = "weir_w1_moving_average.wasm"
  grants = ["state"]
"#,
        modules = testkit::modules_dir().display().to_string(),
        control = dir.join("weir.sock").display().to_string(),
        dev = dev.display().to_string(),
        ping = ping.display().to_string(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[cfg_attr(qemu_user, ignore = "serial ioctls are not emulated by qemu-user")]
fn the_simulator_feeds_w1_through_a_pty_with_noise_and_answers_the_downlink() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_weir"));
    sim.args(["sim", "--pty", "--link", dev.to_str().unwrap()])
        .args(["--sensors", "3", "--rate", "60", "--count", "240"])
        .args(["--linger", "60s", "--seed", "9"])
        .args(["--noise", "flips=0.03,garbage=0.03,drops=0.03"]);
    let sim = Serve::spawn(sim);
    wait_for("the simulator's pseudo-terminal", || dev.exists());
    let cfg = config(dir.path(), &dev);
    let gw = Serve::start(&cfg);
    assert!(gw.wait_log("serial device open"), "{}", gw.log());
    let cfg = cfg.to_str().unwrap();
    let send = |args: &[&str]| {
        let mut all = vec!["sensor", "send", "--config", cfg, "--source", "serial0"];
        all.extend(args);
        weir(&all)
    };

    // The noise damages replies too: a command without a reply is sent
    // again, as an operator would (every command is idempotent).
    let send_until_answered = |args: &[&str]| {
        let mut out = send(args);
        for _ in 0..4 {
            if out.status.code() != Some(1) {
                break;
            }
            out = send(args);
        }
        out
    };
    // Downlink: sensor 2 reports every 100 ms from now on.
    let out = send_until_answered(&["--sensor", "2", "set-interval", "100ms"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    let reply: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["cmd"], "set_interval");
    assert_eq!(reply["interval_ms"], 100);
    let out = send_until_answered(&["--sensor", "1", "identify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"model\":\"weir-sim\""));
    // Nobody is sensor 7: no reply, exit 1, and the error says so.
    let out = send(&["--sensor", "7", "ping", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no reply from sensor 7 on `serial0` within 1000 ms"),
        "{}",
        text(&out.stderr)
    );
    // A command no node knows is refused before it reaches the line.
    let out = send(&["--sensor", "1", "reboot"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown command `reboot`"));

    // Every reading the simulator sent whole reaches the sink through W1,
    // once; flipped and dropped frames do not, and nothing else does.
    wait_for("240 readings", || {
        sim.lines()
            .iter()
            .filter(|l| l["kind"] == "telemetry")
            .count()
            >= 240
    });
    let sent = sim.lines();
    let replies: Vec<_> = sent.iter().filter(|l| l["kind"] == "reply").collect();
    let cmds = |c: &str| replies.iter().filter(|r| r["payload"]["cmd"] == c).count();
    assert!(
        cmds("set_interval") >= 1 && cmds("identify") >= 1,
        "{replies:?}"
    );
    // The stage's pings: one per sensor whose fifth reading arrived whole.
    let whole = |l: &serde_json::Value| {
        let noise = l["noise"].as_array().unwrap();
        !noise.iter().any(|n| n == "dropped" || n == "flipped")
    };
    let telemetry: Vec<_> = sent.iter().filter(|l| l["kind"] == "telemetry").collect();
    let damaged = telemetry.iter().filter(|l| !whole(l)).count();
    let fifth_whole = telemetry
        .iter()
        .filter(|l| l["payload"]["seq"] == 5 && whole(l))
        .count();
    assert!(fifth_whole > 0);
    wait_for("the stage's pings answered", || {
        let lines = sim.lines();
        lines
            .iter()
            .filter(|r| r["kind"] == "reply" && r["payload"]["cmd"] == "ping")
            .count()
            >= fifth_whole
    });
    let pings: Vec<_> = sim
        .lines()
        .into_iter()
        .filter(|r| r["kind"] == "reply" && r["payload"]["cmd"] == "ping")
        .collect();
    assert_eq!(pings.len(), fifth_whole, "{pings:?}");
    assert!(pings.iter().all(|p| p["payload"]["ok"] == true));
    assert!(damaged > 0, "the noise damaged some frames");
    let want: BTreeSet<(u64, u64)> = telemetry
        .iter()
        .filter(|l| whole(l))
        .filter(|l| (-40.0..=85.0).contains(&l["payload"]["temp_c"].as_f64().unwrap()))
        .map(|l| (l["sensor"].as_u64().unwrap(), l["seq"].as_u64().unwrap()))
        .collect();
    let got = gw.wait_lines(want.len());
    std::thread::sleep(Duration::from_millis(300));
    let got = gw.lines().len().max(got.len());
    let lines = gw.lines();
    assert_eq!(got, want.len(), "{}", gw.log());
    let have: BTreeSet<(u64, u64)> = lines
        .iter()
        .map(|r| {
            assert!(r["payload"]["temp_f"].is_f64() && r["payload"]["temp_avg10_c"].is_f64());
            let h = &r["headers"];
            (
                h["sensor"].as_str().unwrap().parse().unwrap(),
                h["seq"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(have, want);
    // 3 sensors at 60 readings/s report every 50 ms; sensor 2, moved to
    // 100 ms, sent fewer.
    let from = |s: u64| telemetry.iter().filter(|l| l["sensor"] == s).count();
    assert!(
        from(2) < from(1) && from(2) < from(3),
        "{} {} {}",
        from(1),
        from(2),
        from(3)
    );
    // The gateway counted the damage (frames lost to gaps) and the
    // downlink: every command written (the CLI's, sensor 7's unanswered
    // ping, the stage's pings) was answered, and each reply that crossed
    // the line whole reached the gateway.
    let replies: Vec<_> = sim
        .lines()
        .into_iter()
        .filter(|l| l["kind"] == "reply")
        .collect();
    let whole_replies = replies.iter().filter(|r| whole(r)).count() as u64;
    let mut src = serde_json::Value::Null;
    wait_for("the replies counted", || {
        let status = weir(&["status", "--config", cfg, "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        src = status["sources"][0].clone();
        src["replies"].as_u64() == Some(whole_replies)
    });
    assert!(src["lost_frames"].as_u64().unwrap() > 0, "{src}");
    assert_eq!(
        src["commands"].as_u64().unwrap(),
        replies.len() as u64 + 1,
        "{src}"
    );
    gw.stop();
}
