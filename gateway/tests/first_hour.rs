//! What a new user hits in the first hour, each made to happen for real:
//! TLS files that the service user cannot read, or that hold the wrong
//! thing, caught by `weir check` (as the service user) and survived by
//! `weir serve` until fixed; misspelled topic placeholders; keys of
//! another sink type; a sink mirroring the sensor topic tree; errors that
//! say each thing once; and the small CLI habits (a closed stdout, stats
//! off, help).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{
    Mosquitto, Serve, Sub, client_tls_args, free_port, make_certs, mtls_listener, patience,
};

/// The unprivileged user tests run weir as when they run as root (CI):
/// root reads any file, so only another user sees a permission problem.
const NOBODY: (&str, u32) = ("nobody", 65534);

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

fn weir(args: &[&str]) -> Output {
    weir_at(Path::new(env!("CARGO_BIN_EXE_weir")), args)
}

fn weir_at(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("weir runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A test directory every user can reach (tempdir makes it 0700).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Make `path` unreadable to the user the test runs weir as: owned by
/// root, mode 0600, read as `nobody` (as root); mode 0000 otherwise.
fn make_unreadable(path: &Path) {
    let mode = if is_root() { 0o600 } else { 0o000 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_readable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn sink_tls(d: &Path, key: &str) -> String {
    let p = d.display();
    format!("tls = {{ ca = \"{p}/ca.pem\", cert = \"{p}/client.pem\", key = \"{p}/{key}\" }}")
}

fn write(d: &Path, name: &str, body: &str) -> PathBuf {
    let path = d.join(name);
    std::fs::write(&path, body).unwrap();
    make_readable(&path);
    path
}

#[test]
fn check_catches_tls_files_that_break_at_run_time_naming_key_and_file_once() {
    let dir = open_dir();
    let d = dir.path();
    make_certs(d);
    let cfg = |key: &str| {
        write(
            d,
            "weir.toml",
            &format!(
                "[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\ndurable = false\n{}\n",
                sink_tls(d, key)
            ),
        )
    };
    let ok = weir(&["check", "-c", cfg("client.key").to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    // A certificate given as the key: said once, with the likely mistake.
    let out = weir(&["check", "-c", cfg("client.pem").to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sink[0].tls.key"), "{err}");
    assert!(
        err.contains(&format!("{}/client.pem", d.display())),
        "{err}"
    );
    assert!(err.contains("it holds a CERTIFICATE"), "{err}");
    assert!(err.contains("swapped"), "{err}");
    assert_eq!(count(&err, "no private key"), 1, "{err}");

    // A key of another pair: refused before any broker sees it.
    let out = weir(&["check", "-c", cfg("other-ca.key").to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not belong to the certificate"), "{err}");

    // A missing file.
    let out = weir(&["check", "-c", cfg("nope.key").to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(
        err.contains("sink[0].tls.key") && err.contains("No such file"),
        "{err}"
    );

    // A key the service user cannot read: `--user` checks as that user.
    std::fs::copy(d.join("client.key"), d.join("weir.key")).unwrap();
    make_unreadable(&d.join("weir.key"));
    let config = cfg("weir.key");
    let mut args = vec!["check", "-c", config.to_str().unwrap()];
    if is_root() {
        args.extend(["--user", NOBODY.0]);
    }
    // As root, weir runs itself again as that user: a copy any user can run.
    let out = weir_at(&reachable_weir(d), &args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sink[0].tls.key"), "{err}");
    assert!(err.contains("weir.key"), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("chmod 0640"), "the fix is given: {err}");
    assert_eq!(count(&err, "Permission denied"), 1, "{err}");
    if is_root() {
        assert!(err.contains("as user `nobody`"), "{err}");
        // As root, the same file is readable: without --user it passes.
        let out = weir(&["check", "-c", config.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The store's directory must be writable by the service user too.
        let durable = write(
            d,
            "durable.toml",
            &format!(
                "[store]\npath = \"{}/store\"\n[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"/tmp/x\"\n",
                d.display()
            ),
        );
        let out = weir_at(
            &reachable_weir(d),
            &["check", "-c", durable.to_str().unwrap(), "--user", "nobody"],
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("store.path") && err.contains("not writable"),
            "{err}"
        );
        // The store itself writable, its parent not: check says so (the
        // message-id high-water mark lives beside the store), and serve,
        // started anyway, refuses with the reason rather than run without it.
        let store = d.join("store");
        std::fs::create_dir_all(&store).unwrap();
        std::os::unix::fs::chown(&store, Some(NOBODY.1), Some(NOBODY.1)).unwrap();
        let out = weir_at(
            &reachable_weir(d),
            &["check", "-c", durable.to_str().unwrap(), "--user", "nobody"],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let out = Command::new(reachable_weir(d))
            .args(["serve", "-c", durable.to_str().unwrap()])
            .uid(NOBODY.1)
            .gid(NOBODY.1)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("store.seq") && err.contains("beside the store"),
            "{err}"
        );
    }
}

#[test]
fn placeholders_and_keys_are_checked_by_check_and_by_serve() {
    let dir = open_dir();
    let d = dir.path();
    let bad_topic = write(
        d,
        "topic.toml",
        "[[sink]]\nname = \"c\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\ntopic = \"cloud/{gatewayid}/telemetry\"\n",
    );
    let foreign_key = write(
        d,
        "keys.toml",
        "[[sink]]\nname = \"c\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nrotate_bytes = 100\n",
    );
    let basic_ingest = write(
        d,
        "aws.toml",
        &format!(
            "[[sink]]\nname = \"c\"\ntype = \"mqtt\"\nhost = \"x.iot.eu-west-1.amazonaws.com\"\npreset = \"aws-iot-core\"\ndurable = false\ntopic = \"$aws/rules/telemetry/{{gateway_id}}\"\n{}\n",
            {
                make_certs(d);
                sink_tls(d, "client.key")
            }
        ),
    );
    for (cmd, code) in [("check", 2), ("serve", 2)] {
        let out = weir(&[cmd, "-c", bad_topic.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        assert!(err.contains("sink[0].topic"), "{err}");
        assert!(err.contains("did you mean `{gateway_id}`"), "{err}");
        let out = weir(&[cmd, "-c", foreign_key.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {err}");
        assert!(err.contains("unknown field `rotate_bytes`"), "{err}");
    }
    let out = weir(&["check", "-c", basic_ingest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A W1 range-filter pipeline, its module copied next to the config so
/// any user can read it.
fn range_filter(d: &Path) -> String {
    let m = testkit::module("weir_w1_range_filter");
    std::fs::copy(&m, d.join("range_filter.wasm")).unwrap();
    make_readable(&d.join("range_filter.wasm"));
    format!(
        "[gateway]\nid = \"gw1\"\nmodules_dir = \"{}\"\n[[pipeline]]\nname = \"w1\"\n  [[pipeline.stage]]\n  name = \"range\"\n  module = \"range_filter.wasm\"\n",
        d.display()
    )
}

/// A copy of weir in `d` that any user can run (the build's own may sit
/// under a directory only its owner can enter, such as /root).
fn reachable_weir(d: &Path) -> PathBuf {
    let exe = d.join("weir");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_weir"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    exe
}

/// `weir serve` as the unprivileged user when the test is root, with its
/// state directory (`d/state`, holding the store and its high-water mark)
/// owned by that user, as systemd's StateDirectory= does.
fn serve_as_service_user(d: &Path, config: &Path) -> Serve {
    let mut cmd = Command::new(reachable_weir(d));
    cmd.args(["serve", "--config", config.to_str().unwrap()])
        .args(["--stats-every", "200ms"]);
    let state = d.join("state");
    std::fs::create_dir_all(&state).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&state, Some(NOBODY.1), Some(NOBODY.1)).unwrap();
        cmd.uid(NOBODY.1).gid(NOBODY.1);
    }
    Serve::spawn(cmd)
}

#[test]
fn a_source_and_a_sink_whose_tls_key_cannot_be_read_recover_once_it_is_fixed() {
    let dir = open_dir();
    let d = dir.path();
    make_certs(d);
    let p = d.display();
    let mtls = mtls_listener(d);
    let mdir = |name: &str| {
        let m = d.join(name);
        std::fs::create_dir_all(&m).unwrap();
        std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o777)).unwrap();
        m
    };
    let sensors = Mosquitto::start_with(&mdir("sensors"), free_port(), &mtls);
    let cloud = Mosquitto::start_with(&mdir("cloud"), free_port(), &mtls);
    let client_tls = client_tls_args(d);
    let tls_args: Vec<&str> = client_tls.iter().map(String::as_str).collect();
    let sub = Sub::start(cloud.port, "tls-sub", "cloud/#", &tls_args);
    for key in ["source.key", "sink.key"] {
        std::fs::copy(d.join("client.key"), d.join(key)).unwrap();
        make_unreadable(&d.join(key));
    }
    let config = write(
        d,
        "weir.toml",
        &format!(
            "{}\n[store]\npath = \"{p}/state/store\"\n[[source]]\ntype = \"mqtt\"\nname = \"sensors\"\nhost = \"127.0.0.1\"\nport = {}\nsubscribe = [ {{ filter = \"sensors/#\", qos = 1 }} ]\n{}\n[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {}\n{}\n",
            range_filter(d),
            sensors.port,
            sink_tls(d, "source.key"),
            cloud.port,
            sink_tls(d, "sink.key"),
        ),
    );
    let weir = serve_as_service_user(d, &config);
    assert!(
        weir.wait_log("MQTT source cannot connect"),
        "{}",
        weir.log()
    );
    assert!(weir.wait_log("the sink cannot connect"), "{}", weir.log());
    let log = weir.log();
    assert!(log.contains(&format!("{p}/source.key")), "{log}");
    assert!(log.contains(&format!("{p}/sink.key")), "{log}");
    assert!(log.contains("Permission denied"), "{log}");

    // The source's key is fixed: it connects without a restart, and
    // records wait in the buffer for the sink.
    make_readable(&d.join("source.key"));
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    let readings = testkit::w1::generate(200, 3);
    let kept = testkit::w1::reference(&readings).len();
    let lines: Vec<String> = readings.iter().map(|r| r.json().to_string()).collect();
    sensors.publish("mqttv311", 1, "sensors/w1/telemetry", &lines, &tls_args);
    assert!(weir.wait_log(&format!("enqueued={kept}")), "{}", weir.log());
    assert!(
        sub.got().is_empty(),
        "nothing goes out while the sink is down"
    );

    // The sink's key is fixed: the buffered records go out.
    make_readable(&d.join("sink.key"));
    let got = sub.wait(kept, 60);
    let log = weir.stop();
    assert_eq!(got.len(), kept, "{log}");
    // Each problem was logged once, however often it was retried.
    assert_eq!(count(&log, "MQTT source cannot connect"), 1, "{log}");
    assert_eq!(count(&log, "the sink cannot connect"), 1, "{log}");
    assert!(log.contains("TLS files are usable again"), "{log}");
}

#[test]
fn a_certificate_given_as_key_is_blamed_on_the_file_not_the_broker() {
    let dir = open_dir();
    let d = dir.path();
    make_certs(d);
    let port = free_port();
    let config = write(
        d,
        "weir.toml",
        &format!(
            "[store]\npath = \"{}/store\"\n[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\n{}\n",
            d.display(),
            sink_tls(d, "client.pem")
        ),
    );
    let weir = Serve::start(&config);
    assert!(weir.wait_log("the sink cannot connect"), "{}", weir.log());
    let log = weir.stop();
    assert!(log.contains("tls.key"), "{log}");
    assert!(log.contains("are `cert` and `key` swapped?"), "{log}");
    assert!(!log.contains("broker unreachable"), "{log}");
}

#[test]
fn a_sink_topic_can_mirror_the_sensor_topic_tree() {
    let dir = open_dir();
    let d = dir.path();
    let mdir = d.join("m");
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::set_permissions(&mdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let broker = Mosquitto::start(&mdir, free_port());
    let config = write(
        d,
        "weir.toml",
        &format!(
            "{}\n[store]\npath = \"{}/store\"\n[[source]]\ntype = \"mqtt\"\nname = \"sensors\"\nhost = \"127.0.0.1\"\nport = {port}\nsubscribe = [ {{ filter = \"sensors/#\", qos = 1 }} ]\n[[sink]]\nname = \"mirror\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\ntopic = \"mirror/{{topic}}\"\n",
            range_filter(d),
            d.display(),
            port = broker.port
        ),
    );
    let sub = Sub::start(broker.port, "mirror-sub", "mirror/#", &["-v"]);
    let weir = Serve::start(&config);
    assert!(weir.wait_log("MQTT subscribed"), "{}", weir.log());
    let reading = r#"{"id":"s7","temp_c":20.5,"seq":1}"#.to_string();
    broker.publish(
        "mqttv311",
        1,
        "sensors/site-a/s7/telemetry",
        &[reading],
        &[],
    );
    let got = sub.wait(1, 30);
    weir.stop();
    let line = got[0].as_str().expect("topic and payload");
    assert!(
        line.starts_with("mirror/sensors/site-a/s7/telemetry "),
        "{line}"
    );
}

#[test]
fn errors_say_each_cause_once() {
    let dir = open_dir();
    let d = dir.path();
    let wat = |name: &str, body: &str| {
        let path = d.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    // A grant missing: the import, the grant and the fix, once.
    let ma = testkit::module("weir_w1_moving_average");
    let stage = |module: &Path, extra: &str| {
        write(
            d,
            "weir.toml",
            &format!(
                "[[pipeline]]\nname = \"p\"\n  [[pipeline.stage]]\n  name = \"s\"\n  module = \"{}\"\n  {extra}\n",
                module.display()
            ),
        )
    };
    let out = weir(&["check", "-c", stage(&ma, "").to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "weir.state_get"), 1, "{err}");
    assert!(
        err.contains("add \"state\" to the stage's `grants`"),
        "{err}"
    );

    // Instantiation fails (its start function traps).
    let trap = wat(
        "trap.wat",
        r#"(module (memory (export "memory") 1)
             (func $boom unreachable) (start $boom)
             (func (export "weir_abi_v1"))
             (func (export "weir_alloc") (param i32) (result i32) i32.const 8)
             (func (export "weir_transform") (param i32 i32) (result i32) i32.const 0))"#,
    );
    let out = weir(&["check", "-c", stage(&trap, "").to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "instantiation failed"), 1, "{err}");
    assert_eq!(count(&err, "unreachable"), 1, "{err}");

    // Initial memory over the cap: the pages, the cap and both fixes.
    let big = wat(
        "big.wat",
        r#"(module (memory (export "memory") 17)
             (func (export "weir_abi_v1"))
             (func (export "weir_alloc") (param i32) (result i32) i32.const 8)
             (func (export "weir_transform") (param i32 i32) (result i32) i32.const 0))"#,
    );
    let out = weir(&[
        "check",
        "-c",
        stage(&big, "limits = { memory = \"1 MiB\" }")
            .to_str()
            .unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("initial memory is 17 pages"), "{err}");
    assert!(err.contains("(16 pages)"), "{err}");
    assert!(err.contains("limits.memory"), "{err}");
    assert!(err.contains("-zstack-size=32768"), "{err}");
    assert!(!err.contains("resource limiter"), "{err}");

    // The store locked by a running daemon.
    let config = write(
        d,
        "store.toml",
        &format!(
            "[store]\npath = \"{}/store\"\n[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"{}/out.jsonl\"\n",
            d.display(),
            d.display()
        ),
    );
    let serving = Serve::start(&config);
    assert!(serving.wait_log("weir is serving"), "{}", serving.log());
    // `inspect` asks the daemon (tests/operate.rs); `verify` reads every
    // entry, so it needs the store to itself.
    let out = weir(&["store", "verify", "-c", config.to_str().unwrap()]);
    serving.stop();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    assert_eq!(count(&err, "could not acquire lock"), 1, "{err}");
}

#[test]
fn module_test_gates_ci_with_exit_codes_and_expected_outputs() {
    let dir = open_dir();
    let d = dir.path();
    let enrich = testkit::module("weir_w1_enrich");
    let input = write(
        d,
        "in.jsonl",
        "{\"id\":\"s1\",\"temp_c\":20.0,\"hum\":50.0}\n{\"id\":\"s2\",\"temp_c\":30.0,\"hum\":40.0}\n",
    );
    let run = |extra: &[&str]| {
        let mut args = vec![
            "module",
            "test",
            enrich.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ];
        args.extend(extra);
        weir(&args)
    };
    assert!(run(&[]).status.success());
    // Bare payloads, the second one wrong.
    let expect = write(
        d,
        "expect.jsonl",
        "{\"id\":\"s1\",\"temp_c\":20,\"hum\":50,\"temp_f\":68,\"dew_point_c\":9.26}\n{\"id\":\"s2\",\"temp_c\":30,\"hum\":40,\"temp_f\":87,\"dew_point_c\":14.93}\n",
    );
    let out = run(&["--expect", expect.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("output 2 (record 2, expect line 2): payload.temp_f: expected 87, got 86"),
        "{err}"
    );
    assert!(err.contains("1 of 2 expected outputs match"), "{err}");
    // Fixed, and the first one as a whole record (no ts: not compared).
    let expect = write(
        d,
        "expect.jsonl",
        "{\"source\":\"test\",\"topic\":\"sensors/s1/telemetry\",\"headers\":{},\"payload\":{\"id\":\"s1\",\"temp_c\":20,\"hum\":50,\"temp_f\":68,\"dew_point_c\":9.26}}\n{\"id\":\"s2\",\"temp_c\":30,\"hum\":40,\"temp_f\":86,\"dew_point_c\":14.93}\n",
    );
    let out = run(&["--expect", expect.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A record that fails exits 1 even without --expect.
    let trap = d.join("trap.wat");
    std::fs::write(
        &trap,
        r#"(module (memory (export "memory") 1)
             (func (export "weir_abi_v1"))
             (func (export "weir_alloc") (param i32) (result i32) i32.const 8)
             (func (export "weir_transform") (param i32 i32) (result i32) unreachable))"#,
    )
    .unwrap();
    let out = weir(&[
        "module",
        "test",
        trap.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("2 record(s) failed"), "{all}");
}

#[test]
fn a_closed_stdout_ends_weir_run_quietly() {
    let config = {
        let dir = open_dir();
        let path = dir.path().join("w1.toml");
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/w1.toml"),
        )
        .unwrap();
        std::fs::write(
            &path,
            shipped.replace(
                "modules_dir = \"../target/modules\"",
                &format!(
                    "modules_dir = {:?}",
                    testkit::modules_dir().display().to_string()
                ),
            ),
        )
        .unwrap();
        (dir, path)
    };
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/samples/w1.jsonl");
    let input: String = std::fs::read_to_string(samples).unwrap().repeat(20);
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", config.1.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    // `| head -1`: read one line, close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"pipeline\":\"w1\""), "{first}");
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

#[test]
fn stats_every_zero_turns_the_stats_lines_off() {
    let dir = open_dir();
    let d = dir.path();
    let config = write(
        d,
        "weir.toml",
        &format!(
            "[store]\npath = \"{}/store\"\n[[sink]]\nname = \"f\"\ntype = \"file\"\npath = \"{}/out.jsonl\"\n",
            d.display(),
            d.display()
        ),
    );
    for (every, lines) in [("50ms", true), ("0", false)] {
        let weir = Serve::start_with(&config, &["--stats-every", every]);
        assert!(weir.wait_log("weir is serving"), "{}", weir.log());
        // Bounded wait: with stats on, lines come every 50 ms.
        let deadline = Instant::now() + patience(1).max(Duration::from_millis(600));
        while Instant::now() < deadline && !weir.log().contains("topology: buffer sink=") {
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = weir.stop();
        assert_eq!(
            log.contains("topology: buffer sink="),
            lines,
            "--stats-every {every}: {log}"
        );
    }
}

#[test]
fn help_works_both_ways() {
    for args in [
        &["help", "serve"][..],
        &["serve", "--help"],
        &["help", "--help"],
        &["help", "module", "test"],
        &["module", "test", "--help"],
    ] {
        let out = weir(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("Usage:"), "{args:?}");
    }
}
