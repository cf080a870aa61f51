use std::path::Path;

use super::*;

fn dir_with_module() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.wasm"), b"\0asm\x01\0\0\0").unwrap();
    dir
}

fn parse(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "weir.toml", dir)
}

const GOOD: &str = r#"
[gateway]
id = "gw-1"

[defaults.limits]
fuel = 5000
memory = "2 MiB"

[[pipeline]]
name = "w1"
on_error = "pass"
limits = { max_outputs = 2 }

  [[pipeline.stage]]
  name = "a"
  module = "m.wasm"
  grants = ["state", "log"]
  isolation = "per-record"
  limits = { fuel = 7, max_output_bytes = "1 KiB" }
  config = { window = 5, label = "x" }
"#;

const SERIAL: &str = r#"
[[source]]
type = "serial"
name = "serial0"
path = "/dev/ttyUSB0"
baud = 9600
stop_bits = 2
framing = { mode = "lines", format = "json" }
"#;

#[test]
fn sources_and_routes_load() {
    let dir = dir_with_module();
    let text = format!("{SERIAL}{GOOD}").replace(
        "limits = { max_outputs = 2 }",
        "sources = [\"serial0\"]\ntopics = [\"sensors/+/telemetry\"]",
    );
    let cfg = parse(dir.path(), &text).unwrap();
    let SourceConfig::Serial(s) = &cfg.sources[0] else {
        panic!("a serial source")
    };
    assert_eq!(
        (s.name.as_str(), s.baud, s.stop_bits, s.data_bits),
        ("serial0", 9600, 2, 8)
    );
    assert_eq!(cfg.pipelines[0].sources, ["serial0"]);
    assert_eq!(cfg.pipelines[0].topics, ["sensors/+/telemetry"]);
    let bad = SERIAL.replace("baud = 9600", "baud = 9600\nbaudd = 1");
    let err = parse(dir.path(), &format!("{bad}{GOOD}")).unwrap_err();
    assert!(err.to_string().contains("baudd"), "{err}");
}

#[test]
fn a_good_config_loads_with_inherited_limits() {
    let dir = dir_with_module();
    let cfg = parse(dir.path(), GOOD).unwrap();
    let (p, s) = (&cfg.pipelines[0], &cfg.pipelines[0].stages[0]);
    assert_eq!(cfg.gateway.id, "gw-1");
    assert_eq!(p.on_error, ErrorPolicy::Pass);
    assert_eq!(s.isolation, Isolation::PerRecord);
    assert_eq!(s.grants, vec![Grant::State, Grant::Log]);
    let l = cfg.stage_limits(p, s);
    assert_eq!(
        (l.fuel, l.memory_bytes, l.max_outputs, l.max_output_bytes),
        (7, 2 << 20, 2, 1024),
        "stage over pipeline over defaults over built-in"
    );
    assert_eq!(l.state_bytes, Limits::default().state_bytes);
    assert_eq!(cfg.module_path(s), dir.path().join("m.wasm"));
}

/// Each broken config must fail with an error naming the file and this key.
#[test]
fn errors_name_the_file_and_the_key() {
    let dir = dir_with_module();
    let cases = [
        (
            GOOD.replace("fuel = 7", "fule = 7"),
            "pipeline[0].stage[0].limits.fule",
            "unknown field",
        ),
        (
            GOOD.replace("\"state\", \"log\"", "\"state\", \"net\""),
            "pipeline[0].stage[0].grants[1]",
            "net",
        ),
        (
            GOOD.replace("\"2 MiB\"", "\"2 MB/s\""),
            "defaults.limits.memory",
            "unit",
        ),
        (
            GOOD.replace("on_error = \"pass\"", "on_error = \"retry\""),
            "pipeline[0].on_error",
            "retry",
        ),
        (
            GOOD.replace("m.wasm", "missing.wasm"),
            "pipeline[0].stage[0].module",
            "missing.wasm",
        ),
        (
            GOOD.replace("fuel = 5000", "fuel = 0"),
            "defaults.limits.fuel",
            "at least 1",
        ),
        (
            GOOD.replace("fuel = 7,", "fuel = -7,"),
            "pipeline[0].stage[0].limits.fuel",
            "-7",
        ),
        (
            GOOD.replace("name = \"w1\"", "name = \"w1\"\nquarantine_after = 0"),
            "pipeline[0].quarantine_after",
            "at least 1",
        ),
        (
            GOOD.replace("id = \"gw-1\"", "id = \"gw/1\""),
            "gateway.id",
            "'/'",
        ),
        (
            GOOD.replace("\"state\", \"log\"", "\"log\", \"log\""),
            "pipeline[0].stage[0].grants[1]",
            "twice",
        ),
        (
            format!("{GOOD}\n  [[pipeline.stage]]\n  name = \"a\"\n  module = \"m.wasm\"\n"),
            "pipeline[0].stage[1].name",
            "used twice",
        ),
        (
            GOOD.replace("[gateway]", "[gateway]\nsecret = 1"),
            "gateway.secret",
            "unknown field",
        ),
        (
            GOOD.replace("isolation = \"per-record\"", "isolation = \"per-reccord\""),
            "pipeline[0].stage[0].isolation",
            "per-reccord",
        ),
        (
            GOOD.replace("module = \"m.wasm\"", ""),
            "pipeline[0].stage[0]",
            "module",
        ),
        (
            "[[pipeline]]\nname = \"x\"\nstage = []\n".to_string(),
            "pipeline[0].stage",
            "at least one stage",
        ),
        (
            "[gateway]\nid = 1\n[gateway\n".to_string(),
            "(top level)",
            "line 3",
        ),
    ];
    for (text, key, needle) in cases {
        let err = parse(dir.path(), &text).expect_err(key);
        let msg = err.to_string();
        assert_eq!(err.key, key, "{msg}");
        assert!(msg.starts_with("weir.toml: "), "{msg}");
        assert!(msg.contains(needle), "{key}: `{needle}` not in: {msg}");
    }
}

#[test]
fn sizes_parse_with_units() {
    for (text, bytes) in [
        ("4096", 4096),
        ("64 KiB", 65536),
        ("1MB", 1_000_000),
        ("2 GiB", 2 << 30),
        (" 3 B ", 3),
    ] {
        assert_eq!(parse_size(text), Ok(ByteSize(bytes)), "{text}");
    }
    for bad in ["", "MiB", "4 mib", "-1", "99999999999999999999 GiB"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = Config::load(Path::new("/nonexistent/weir.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/weir.toml: (file): cannot read"),
        "{err}"
    );
}

#[test]
fn modules_dir_is_relative_to_the_config() {
    let dir = dir_with_module();
    std::fs::create_dir(dir.path().join("mods")).unwrap();
    std::fs::rename(dir.path().join("m.wasm"), dir.path().join("mods/m.wasm")).unwrap();
    let text = GOOD.replace("id = \"gw-1\"", "id = \"gw-1\"\nmodules_dir = \"mods\"");
    let cfg = parse(dir.path(), &text).unwrap();
    assert_eq!(
        cfg.module_path(&cfg.pipelines[0].stages[0]),
        dir.path().join("mods/m.wasm")
    );
}

#[test]
fn modules_are_checked_and_turn_status_on() {
    let dir = dir_with_module();
    let sink = "\n[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\n";
    let key = "0".repeat(63) + "1";
    let with = |m: &str| format!("{GOOD}{sink}\n[modules]\n{m}\n");
    let cfg = parse(
        dir.path(),
        &with(&format!(
            "keys = [\"{key}\"]\ngroups = [\"lab\"]\n[modules.allow]\nw1 = [\"log\"]"
        )),
    )
    .unwrap();
    let st = cfg.status.as_ref().expect("[modules] turns [status] on");
    assert_eq!(st.topic("gw-1"), "weir/gw-1/status");
    assert_eq!(cfg.modules_sink().unwrap().name, "cloud");
    assert!(cfg.modules_dir().ends_with("weir-state/modules"));
    let bad = [
        ("groups = [\"lab\"]", "modules.keys"),
        (
            &*format!("keys = [\"{key}\"]\nsink = \"nope\""),
            "modules.sink",
        ),
        (
            &*format!("keys = [\"{key}\"]\ngroups = [\"a/b\"]"),
            "modules.groups",
        ),
        (
            &*format!("keys = [\"{key}\"]\nmax_failure_rate = 2.0"),
            "modules.max_failure_rate",
        ),
        (
            &*format!("keys = [\"{key}\"]\n[modules.allow]\nnope = []"),
            "modules.allow.nope",
        ),
    ];
    for (m, key_want) in bad {
        let e = parse(dir.path(), &with(m)).unwrap_err();
        assert_eq!(e.key, key_want, "{m}: {e}");
    }
    // A key file that cannot be read is a file problem, found by `weir check`.
    let cfg = parse(dir.path(), &with("keys = [\"missing.pub\"]")).unwrap();
    let problems = cfg.check_files();
    assert!(
        problems.iter().any(|p| p.key == "modules.keys[0]"),
        "{problems:?}"
    );
}

#[test]
fn the_commit_window_has_a_default_and_its_old_name() {
    let dir = dir_with_module();
    let cfg = parse(dir.path(), GOOD).unwrap();
    assert_eq!(
        cfg.store.commit_window,
        std::time::Duration::from_millis(20)
    );
    for key in ["commit_window", "sync_every"] {
        let text = format!("[store]\n{key} = \"7ms\"\n{GOOD}");
        let cfg = parse(dir.path(), &text).unwrap();
        assert_eq!(
            cfg.store.commit_window,
            std::time::Duration::from_millis(7),
            "{key}"
        );
    }
}

#[test]
fn shared_subscriptions_and_routes_are_checked() {
    let dir = dir_with_module();
    let source = |filter: &str| {
        format!(
            "[[source]]\ntype = \"mqtt\"\nname = \"s\"\nhost = \"127.0.0.1\"\nsubscribe = [ {{ filter = \"{filter}\" }} ]\n{GOOD}"
        )
    };
    let cfg = parse(dir.path(), &source("$share/weir/sensors/+/telemetry")).unwrap();
    let SourceConfig::Mqtt(m) = &cfg.sources[0] else {
        panic!("an MQTT source")
    };
    assert_eq!(m.subscribe[0].filter, "$share/weir/sensors/+/telemetry");
    let err = parse(dir.path(), &source("$share/weir")).unwrap_err();
    assert!(
        err.to_string().contains("source[0].subscribe[0].filter")
            && err.to_string().contains("$share/<group>/<filter>"),
        "{err}"
    );
}
