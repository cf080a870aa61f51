//! The `weir` binary, run as a user would: module inspect/test, check, and
//! run with W1, bad input and dead letters.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use testkit::w1;

fn weir(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir runs");
    // Feed stdin from a thread: weir writes output while it reads, and a full
    // stdout pipe must not block the writer.
    let mut input = child.stdin.take().unwrap();
    let text = stdin.unwrap_or("").to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn module(stem: &str) -> String {
    testkit::module(stem).display().to_string()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The W1 config shipped in pipelines/, pointed at the built modules.
fn w1_config(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(repo().join("pipelines/w1.toml")).unwrap();
    let cfg = shipped.replace(
        "modules_dir = \"../target/modules\"",
        &format!(
            "modules_dir = {:?}",
            testkit::modules_dir().display().to_string()
        ),
    );
    assert_ne!(cfg, shipped, "the shipped config sets modules_dir");
    let path = dir.join("w1.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn inspect_shows_abi_grants_and_imports() {
    let out = weir(
        &["module", "inspect", &module("weir_w1_moving_average")],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("abi version:   1"), "{stdout}");
    assert!(stdout.contains("grants needed: state"), "{stdout}");
    assert!(
        stdout.contains("weir.state_get: func(i32, i32, i32, i32) -> (i32)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("weir_transform: func(i32, i32) -> (i32)"),
        "{stdout}"
    );
    let json = weir(
        &["module", "inspect", "--json", &module("c_downsample")],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["abi_version"], 1);
    assert_eq!(v["grants_needed"], serde_json::json!(["log", "state"]));
}

#[test]
fn inspect_and_test_refuse_broken_modules_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_abi = dir.path().join("plain.wasm");
    std::fs::write(
        &not_abi,
        wat::parse_str("(module (func (export \"f\")))").unwrap(),
    )
    .unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    for (args, needle) in [
        (
            vec!["module", "inspect", not_abi.to_str().unwrap()],
            "weir_abi_v1",
        ),
        (
            vec!["module", "inspect", junk.to_str().unwrap()],
            "invalid Wasm",
        ),
        (
            vec!["module", "test", not_abi.to_str().unwrap()],
            "weir_abi_v1",
        ),
        (
            vec!["module", "test", &module("weir_w1_moving_average")],
            "needs grant `state`",
        ),
        (vec!["module", "test", "/nonexistent.wasm"], "cannot read"),
    ] {
        let out = weir(&args, Some(""));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn module_test_prints_outputs_fuel_time_and_errors() {
    let input = "{\"id\":\"s1\",\"temp_c\":20.0,\"hum\":50.0}\n{\"id\":\"s1\"}\nnot json\n";
    let out = weir(&["module", "test", &module("weir_w1_enrich")], Some(input));
    let stdout = text(&out.stdout);
    // A failed record and an invalid line: exit 1, so CI notices.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 record(s) failed, 1 invalid input line(s)"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("record 1: ok, 1 output(s), fuel "),
        "{stdout}"
    );
    assert!(stdout.contains("\"temp_f\":68.0"), "{stdout}");
    assert!(stdout.contains("\"dew_point_c\":9.26"), "{stdout}");
    assert!(
        stdout.contains("record 2: error (status): module returned status 2 (transform)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("record 3 (line 3): invalid input"),
        "{stdout}"
    );
    assert!(stdout.contains("µs"), "{stdout}");
    // JSON mode: one object per record.
    let out = weir(
        &["module", "test", "--json", &module("weir_w1_enrich")],
        Some(input),
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], "ok");
    assert!(lines[0]["fuel"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["kind"], "status");
}

/// The payloads of `weir module test --json` on the W1 samples, per input.
fn w1_payloads(module_path: &str, extra: &[&str]) -> Vec<Vec<serde_json::Value>> {
    let samples = repo().join("pipelines/samples/w1.jsonl");
    let mut args = vec!["module", "test", module_path, "--json", "-i"];
    let samples = samples.display().to_string();
    args.push(&samples);
    args.extend(extra);
    let out = weir(&args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["payload"].clone())
                .collect()
        })
        .collect()
}

#[test]
fn a_stock_wasi_c_module_runs_w1_like_the_rust_one_with_its_grant_only() {
    // Built with clang's wasm32-wasi target and Debian's wasi-libc: it
    // imports fd_write, fd_seek, fd_close and fd_fdstat_get for printf.
    let c = module("c_wasi_range_filter");
    let out = weir(&["module", "inspect", &c], None);
    let inspect = text(&out.stdout);
    assert!(
        inspect.contains("wasi_snapshot_preview1.fd_write"),
        "{inspect}"
    );
    // Without the grant: refused at load, naming a WASI import and the grant.
    let out = weir(&["module", "test", &c], Some(""));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("wasi_snapshot_preview1.fd_") && err.contains("needs grant `log`"),
        "{err}"
    );
    // With it: the Rust range-filter's outputs, input by input, with the
    // default range and with one set in the config.
    let rust = module("weir_w1_range_filter");
    let both = |extra: &[&str]| {
        let mut with_log = vec!["--grant", "log"];
        with_log.extend(extra);
        (w1_payloads(&c, &with_log), w1_payloads(&rust, extra))
    };
    let (from_c, from_rust) = both(&[]);
    assert_eq!(from_c.len(), 200);
    assert_eq!(from_c.iter().filter(|o| o.is_empty()).count(), 4);
    assert_eq!(from_c, from_rust);
    let (from_c, from_rust) = both(&["--set", "min=0", "--set", "max=30"]);
    assert!(from_c.iter().filter(|o| o.is_empty()).count() > 4);
    assert_eq!(from_c, from_rust);
    // printf reaches the stage's log; a failure says why (from stderr).
    let out = weir(
        &["module", "test", &c, "--grant", "log"],
        Some("{\"id\":\"x\",\"temp_c\":120}\n{\"id\":\"y\",\"temp_c\":\"hot\"}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("range-filter: keeping temp_c in [-40, 85]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dropped: temp_c 120 is outside [-40, 85]"),
        "{stderr}"
    );
    assert!(
        stdout.contains("module failed: no numeric temp_c in the record (status 2, transform)"),
        "{stdout}"
    );
}

/// W1 through `weir run` over the samples with its first two stages' modules
/// replaced: every output record but its receive time.
fn w1_run(range_filter: &str, enrich: &str) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(w1_config(dir.path())).unwrap();
    let cfg = shipped
        .replace(
            "\"weir_w1_range_filter.wasm\"",
            &format!("{range_filter:?}"),
        )
        .replace("\"weir_w1_enrich.wasm\"", &format!("{enrich:?}"));
    let path = dir.path().join("swapped.toml");
    std::fs::write(&path, cfg).unwrap();
    let samples = repo().join("pipelines/samples/w1.jsonl");
    let out = weir(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--input",
            samples.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            v
        })
        .collect()
}

#[test]
fn zig_and_assemblyscript_w1_stages_give_the_rust_outputs() {
    let rust = (module("weir_w1_range_filter"), module("weir_w1_enrich"));
    let whole = w1_run(&rust.0, &rust.1);
    assert_eq!(whole.len(), 196);
    for lang in ["zig", "as"] {
        let filter = module(&format!("{lang}_range_filter"));
        let enrich = module(&format!("{lang}_enrich"));
        for m in [&filter, &enrich] {
            let out = weir(&["module", "inspect", m], None);
            let inspect = text(&out.stdout);
            assert!(inspect.contains("grants needed: none"), "{inspect}");
        }
        // Each stage alone, input by input.
        let ours = w1_payloads(&filter, &[]);
        assert_eq!(ours.iter().filter(|o| o.is_empty()).count(), 4, "{lang}");
        assert_eq!(ours, w1_payloads(&rust.0, &[]), "{lang} range-filter");
        let narrow = ["--set", "min=0", "--set", "max=30"];
        let ours = w1_payloads(&filter, &narrow);
        assert!(ours.iter().filter(|o| o.is_empty()).count() > 4, "{lang}");
        assert_eq!(ours, w1_payloads(&rust.0, &narrow), "{lang} range-filter");
        let ours = w1_payloads(&enrich, &[]);
        assert!(ours.iter().all(|o| o[0]["temp_f"].is_f64()), "{lang}");
        assert_eq!(ours, w1_payloads(&rust.1, &[]), "{lang} enrich");
        // W1 end to end, with the Rust moving-average after them.
        assert_eq!(w1_run(&filter, &enrich), whole, "{lang} W1");
        // A failure says why.
        for m in [&filter, &enrich] {
            let out = weir(
                &["module", "test", m],
                Some("{\"id\":\"y\",\"temp_c\":\"hot\"}\n"),
            );
            assert_eq!(out.status.code(), Some(1));
            let stdout = text(&out.stdout);
            assert!(
                stdout.contains("module failed: no numeric temp_c in the record (status 2"),
                "{lang}: {stdout}"
            );
        }
    }
}

#[test]
fn a_stock_wasi_zig_module_runs_with_its_grants_and_is_refused_without_them() {
    // Zig's standard library on wasm32-wasi: printing imports fd_write,
    // std.time imports clock_time_get.
    let zig = module("zig_wasi_range_filter");
    let out = weir(&["module", "inspect", &zig], None);
    let inspect = text(&out.stdout);
    assert!(inspect.contains("grants needed: clock, log"), "{inspect}");
    for (given, missing) in [("log", "clock"), ("clock", "log")] {
        let out = weir(&["module", "test", &zig, "--grant", given], Some(""));
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains("wasi_snapshot_preview1.")
                && err.contains(&format!("needs grant `{missing}`")),
            "{err}"
        );
    }
    let grants = ["--grant", "log", "--grant", "clock"];
    let rust = module("weir_w1_range_filter");
    assert_eq!(w1_payloads(&zig, &grants), w1_payloads(&rust, &[]));
    let out = weir(
        &["module", "test", &zig, "--grant", "log", "--grant", "clock"],
        Some("{\"id\":\"x\",\"temp_c\":120}\n{\"id\":\"y\",\"temp_c\":\"hot\"}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // The clock reading is the host's wall clock, in ms since the epoch.
    let from = stderr
        .split("range-filter: keeping temp_c in [-40, 85] from ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(from <= now && now - from < 600_000, "{from} vs {now}");
    assert!(
        stderr.contains("dropped: temp_c 120 is outside [-40, 85]"),
        "{stderr}"
    );
    assert!(
        stdout.contains("module failed: no numeric temp_c in the record (status 2, transform)"),
        "{stdout}"
    );
}

#[test]
fn the_c_module_downsamples_per_topic_with_state_and_config() {
    let input: String = (0..9)
        .map(|i| format!("{{\"id\":\"s{}\",\"seq\":{i}}}\n", i % 2))
        .collect();
    let m = module("c_downsample");
    let out = weir(
        &[
            "module", "test", &m, "--grant", "state", "--grant", "log", "--set", "every=3",
        ],
        Some(&input),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // s0 gets seq 0,2,4,6,8 and keeps the 1st and 4th (seq 0, 6); s1 gets 1,3,5,7 and keeps 1, 7.
    let kept: Vec<&str> = stdout.lines().filter(|l| l.contains("\"seq\"")).collect();
    assert_eq!(kept.len(), 4, "{stdout}");
    for seq in [0, 6, 1, 7] {
        assert!(
            kept.iter().any(|l| l.contains(&format!("\"seq\":{seq}}}"))),
            "seq {seq}: {stdout}"
        );
    }
    assert!(
        text(&out.stderr).contains("downsample: configured"),
        "the log grant works"
    );
    // A bad config value is refused by the module's init.
    let out = weir(
        &[
            "module", "test", &m, "--grant", "state", "--grant", "log", "--set", "every=0",
        ],
        Some(""),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("weir_init failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_validates_config_and_modules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = w1_config(dir.path());
    let out = weir(&["check", "--config", cfg.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok (1 pipelines, 3 stages,"));
    // Take the state grant away: refused, naming pipeline, stage and import.
    let broken = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("grants = [\"state\"]", "");
    std::fs::write(&cfg, broken).unwrap();
    let out = weir(&["check", "--config", cfg.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("pipeline `w1`, stage `moving-average`") && err.contains("weir.state_get"),
        "{err}"
    );
}

#[test]
fn run_produces_exactly_the_w1_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = w1_config(dir.path());
    let readings = w1::generate(3000, 7);
    let input: String = readings.iter().map(|r| format!("{}\n", r.json())).collect();
    let out = weir(&["run", "--config", cfg.to_str().unwrap()], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = w1::reference(&readings);
    assert!(
        want.len() < readings.len(),
        "some readings are out of range"
    );
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let p = &g["payload"];
        assert_eq!(p["seq"], w.seq);
        assert_eq!(p["id"], w.id.as_str());
        assert_eq!(g["topic"], format!("sensors/{}/telemetry", w.id));
        for (key, value) in [
            ("temp_f", w.temp_f),
            ("dew_point_c", w.dew_point_c),
            ("temp_avg10_c", w.temp_avg10_c),
        ] {
            let v = p[key]
                .as_f64()
                .unwrap_or_else(|| panic!("seq {}: no {key} in {p}", w.seq));
            assert!(
                (v - value).abs() < 1e-9,
                "seq {} {key}: got {v}, want {value}",
                w.seq
            );
        }
    }
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("records_in=3000 records_out={}", want.len())),
        "{err}"
    );
}

#[test]
fn run_survives_bad_input_and_dead_letters_failures() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = w1_config(dir.path());
    let input = [
        r#"{"id":"s1","temp_c":20.0,"hum":50.0}"#,
        "{broken json",
        r#"{"id":"s1","hum":50.0}"#,
        r#"[1,2,3]"#,
        r#"{"payload":{"id":"s2","temp_c":"warm"},"topic":"x"}"#,
        r#"{"id":"s1","temp_c":22.0,"hum":50.0}"#,
    ]
    .join("\n");
    let out = weir(&["run", "--config", cfg.to_str().unwrap()], Some(&input));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (dead, ok): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l.get("dead_letter").is_some());
    assert_eq!(ok.len(), 2);
    assert_eq!(
        ok[1]["payload"]["temp_avg10_c"], 21.0,
        "the moving average kept going"
    );
    assert_eq!(dead.len(), 2, "missing and non-numeric temp_c");
    for d in &dead {
        assert_eq!(d["dead_letter"]["stage"], "w1/range-filter");
        assert_eq!(d["dead_letter"]["kind"], "status");
    }
    let err = text(&out.stderr);
    assert!(
        err.contains("line=2") && err.contains("line=4"),
        "invalid lines are logged by number: {err}"
    );
    assert!(err.contains("invalid=2"), "{err}");
}

/// `weir serve` speaks systemd's notify protocol: READY=1 once serving,
/// WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM.
#[test]
fn serve_notifies_systemd_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.path().join("weir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nmodules_dir = {:?}\n[[pipeline]]\nname = \"p\"\n  [[pipeline.stage]]\n  name = \"s\"\n  module = \"weir_w1_range_filter.wasm\"\n",
            testkit::modules_dir().display().to_string()
        ),
    )
    .unwrap();
    // systemd sets WATCHDOG_PID to the service's PID; `exec` keeps the
    // shell's PID for weir.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        let n = sock.recv(&mut buf).expect("a notification within 10 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got[0].contains("READY=1"), "{got:?}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING within 10 s");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}

/// The indented line under a README heading (`## Build`, `## Test`).
fn readme_line(readme: &str, heading: &str) -> String {
    let mut lines = readme.lines().skip_while(|l| *l != heading).skip(1);
    lines
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no line under {heading}: {readme}"))
        .trim()
        .to_owned()
}

/// `sh -c line` in `dir`, with the toolchains `cargo xtask setup` installs
/// and this weir first on PATH, and none of the outer cargo's settings.
fn shell(dir: &Path, line: &str, bin: &Path) -> Output {
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        Path::new(env!("CARGO_BIN_EXE_weir"))
            .parent()
            .unwrap()
            .display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", line]).current_dir(dir).env("PATH", path);
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUST") {
            cmd.env_remove(k);
        }
    }
    // npm takes assemblyscript from the cache that setup filled.
    cmd.env("npm_config_prefer_offline", "true")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false");
    cmd.output().unwrap()
}

#[test]
fn module_new_scaffolds_build_with_their_readme_line_and_pass_their_vectors() {
    let tools = repo().join("target/tools");
    let zig = tools.join("zig/bin/python3");
    assert!(
        zig.exists(),
        "{} missing: `cargo xtask setup` installs Zig",
        zig.display()
    );
    let work = tempfile::tempdir().unwrap();
    // `zig` as the README names it: PyPI's ziglang.
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let shim = bin.join("zig");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\nexec {} -m ziglang \"$@\"\n", zig.display()),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sdk = repo().display().to_string();
    for lang in ["rust", "c", "zig", "assemblyscript", "wat"] {
        let name = format!("my-{lang}");
        let dir = work.path().join(&name);
        let dir_arg = dir.display().to_string();
        let out = weir(
            &[
                "module", "new", &name, "--lang", lang, "--dir", &dir_arg, "--sdk", &sdk,
            ],
            None,
        );
        assert!(out.status.success(), "{lang}: {}", text(&out.stderr));
        // A second time into the same folder: refused, nothing overwritten.
        let again = weir(
            &["module", "new", &name, "--lang", lang, "--dir", &dir_arg],
            None,
        );
        assert_eq!(again.status.code(), Some(2), "{lang}");
        assert!(text(&again.stderr).contains("is not empty"), "{lang}");
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        let build = readme_line(&readme, "## Build");
        let out = shell(&dir, &build, &bin);
        assert!(
            out.status.success(),
            "{lang}: `{build}` failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let test = readme_line(&readme, "## Test");
        assert!(test.starts_with("weir module test ") && test.contains("--expect"));
        let out = shell(&dir, &test, &bin);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{lang}: `{test}` failed:\n{said}");
        assert!(
            said.contains("2 of 2 expected outputs match"),
            "{lang}: {said}"
        );
        // The vectors can fail: a changed expectation is caught.
        let expected = dir.join("expected.jsonl");
        let good = std::fs::read_to_string(&expected).unwrap();
        std::fs::write(
            &expected,
            good.replace("\"checked\":true", "\"checked\":false"),
        )
        .unwrap();
        let out = shell(&dir, &test, &bin);
        assert_eq!(out.status.code(), Some(1), "{lang}");
        // A record without temp_c fails with the module's reason.
        let wasm = test.split_whitespace().nth(3).unwrap();
        let out = shell(
            &dir,
            &format!("echo '{{\"id\":\"x\"}}' | weir module test {wasm}"),
            &bin,
        );
        assert!(
            text(&out.stdout)
                .contains("module failed: no temp_c in the record (status 2, transform)"),
            "{lang}: {}",
            text(&out.stdout)
        );
    }
}
