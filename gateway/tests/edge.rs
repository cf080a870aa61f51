//! The same transform modules on a microcontroller: weir-edge (the no_std
//! host for ABI v1) gives the gateway's output records, byte for byte, on
//! W1's samples. Natively, and as firmware on an emulated Cortex-M4
//! (`qemu-system-arm -M mps2-an386`), against `weir run --output cbor-hex`.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir::record::JsonInput;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The W1 samples as whole records with a fixed receive time, so `weir
/// run` and the node see the same bytes: (JSON lines, their CBOR).
fn samples() -> (String, Vec<Vec<u8>>) {
    let text = std::fs::read_to_string(root().join("pipelines/samples/w1.jsonl")).unwrap();
    let parser = JsonInput {
        source: "serial0".into(),
        topic_template: "sensors/{id}/telemetry".into(),
    };
    let mut lines = String::new();
    let mut cbor = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let payload: serde_json::Value = serde_json::from_str(l).unwrap();
        let whole = serde_json::json!({
            "source": "serial0",
            "topic": format!("sensors/{}/telemetry", payload["id"].as_str().unwrap()),
            "ts": 1_796_000_000_000u64 + i as u64,
            "payload": payload,
        });
        let line = whole.to_string();
        cbor.push(parser.parse(&line, 0).unwrap().to_cbor());
        lines.push_str(&line);
        lines.push('\n');
    }
    (lines, cbor)
}

/// What the gateway's `weir run` gives for the samples: each output record
/// as hex.
fn gateway_outputs(dir: &Path, lines: &str) -> Vec<String> {
    let input = dir.join("w1.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--output", "cbor-hex", "--config"])
        .arg(root().join("pipelines/w1.toml"))
        .arg("--modules-dir")
        .arg(testkit::modules_dir())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(hex.len(), 196, "W1 keeps 196 of the 200 samples");
    assert!(hex.iter().all(|h| !h.starts_with('{')), "no dead letters");
    hex
}

fn module(stem: &str) -> Vec<u8> {
    std::fs::read(testkit::module(stem)).unwrap()
}

#[test]
fn the_edge_host_gives_the_gateways_records_byte_for_byte() {
    use weir_edge::{Grant, Limits, Pipeline, Stage};
    let dir = tempfile::tempdir().unwrap();
    let (lines, cbor) = samples();
    let want = gateway_outputs(dir.path(), &lines);
    let engine = weir_edge::engine();
    let limits = Limits {
        fuel: 200_000,
        memory_bytes: 1 << 20,
        max_outputs: 4,
        max_output_bytes: 16 * 1024,
        ..Limits::default()
    };
    let config = |v: serde_json::Value| serde_cbor::to_vec(&v).unwrap();
    let mut w1 = Pipeline::new(vec![
        Stage::new(
            &engine,
            &module("weir_w1_range_filter"),
            &config(serde_json::json!({"min": -40.0, "max": 85.0})),
            &[],
            limits,
            None,
        )
        .unwrap(),
        Stage::new(
            &engine,
            &module("weir_w1_enrich"),
            &[0xa0],
            &[],
            limits,
            None,
        )
        .unwrap(),
        Stage::new(
            &engine,
            &module("weir_w1_moving_average"),
            &config(serde_json::json!({"window": 10})),
            &[Grant::State],
            limits,
            None,
        )
        .unwrap(),
    ]);
    let got: Vec<String> = cbor
        .iter()
        .flat_map(|r| w1.process(r).iter().map(hex::encode).collect::<Vec<_>>())
        .collect();
    assert_eq!(w1.failed, 0);
    assert_eq!(got, want);
}

/// The firmware in `firmware-sdk/edge-host/qemu`, built for
/// thumbv7em-none-eabihf into `target/edge` (with the outer cargo's
/// settings left out).
fn firmware() -> PathBuf {
    let dir = root().join("firmware-sdk/edge-host/qemu");
    let target = root().join("target/edge");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&dir)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target)
        .env("WEIR_MODULES_DIR", testkit::modules_dir());
    for (k, _) in std::env::vars() {
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k == "RUSTFLAGS" {
            cmd.env_remove(k);
        }
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "building the Cortex-M4 firmware failed");
    target.join("thumbv7em-none-eabihf/release/weir-edge-qemu")
}

/// Bytes of the ELF's sections that go to flash (code, read-only data,
/// initial data) and to RAM (data, bss), from `readelf -S`.
fn footprint(elf: &Path) -> (u64, u64) {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(elf)
        .output()
        .unwrap();
    let (mut flash, mut ram) = (0, 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(i) = f.iter().position(|w| w.starts_with('.')) else {
            continue;
        };
        let (name, size) = (
            f[i],
            f.get(i + 4).and_then(|s| u64::from_str_radix(s, 16).ok()),
        );
        let Some(size) = size else { continue };
        match name {
            ".vector_table" | ".text" | ".rodata" => flash += size,
            ".data" => {
                flash += size;
                ram += size;
            }
            ".bss" | ".uninit" => ram += size,
            _ => {}
        }
    }
    (flash, ram)
}

#[test]
fn w1_on_an_emulated_cortex_m4_gives_the_gateways_records_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, cbor) = samples();
    let want = gateway_outputs(dir.path(), &lines);
    let mut input = Vec::new();
    for r in &cbor {
        input.extend_from_slice(&(r.len() as u32).to_le_bytes());
        input.extend_from_slice(r);
    }
    std::fs::write(dir.path().join("edge-input.bin"), &input).unwrap();
    let elf = firmware();
    let started = std::time::Instant::now();
    let out = Command::new("qemu-system-arm")
        .args([
            "-M",
            "mps2-an386",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
        ])
        .args(["-semihosting-config", "enable=on,target=native", "-kernel"])
        .arg(&elf)
        .current_dir(dir.path())
        .output()
        .expect("qemu-system-arm runs (Debian: qemu-system-arm; `cargo xtask setup` installs it)");
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = stdout
        .lines()
        .filter(|l| !l.starts_with("edge:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "output {i} differs");
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("edge: records="))
        .unwrap();
    assert!(
        summary.contains("records=200 outputs=196 failed=0"),
        "{summary}"
    );
    let (flash, ram) = footprint(&elf);
    // The figures the README reports: flash and RAM of the firmware, the
    // heap it used, and records per second under emulation.
    let field = |k: &str| -> f64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let records = field("records=") * field("passes=");
    let secs = field("centiseconds=") / 100.0;
    eprintln!(
        "edge on mps2-an386: flash {flash} B, static RAM {ram} B, heap peak {} B, {:.0} records/s emulated ({records} records in {secs:.2} s; whole run {:.1} s)",
        field("heap_peak="),
        records / secs.max(0.01),
        wall.as_secs_f64()
    );
    assert!(flash > 0 && flash < 4 << 20);
}

#[test]
fn the_edge_host_refuses_what_a_node_cannot_give_and_bounds_a_runaway_module() {
    use weir_edge::{Error, Limits, Stage};
    let engine = weir_edge::engine();
    let limits = Limits {
        fuel: 10_000,
        ..Limits::default()
    };
    let module = |imports: &str, body: &str| {
        wat::parse_str(format!(
            r#"(module {imports}
                (memory (export "memory") 1)
                (func (export "weir_abi_v1"))
                (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
                (func (export "weir_transform") (param i32 i32) (result i32) {body}))"#
        ))
        .unwrap()
    };
    // The clock and the downlink need the gateway: refused at load, named.
    for (name, sig) in [
        ("clock_now_ms", "(result i64)"),
        ("serial_send", "(param i32 i32 i32 i32 i32) (result i32)"),
    ] {
        let wasm = module(
            &format!(r#"(import "weir" "{name}" (func {sig}))"#),
            "(i32.const 0)",
        );
        match Stage::new(&engine, &wasm, &[0xa0], &[], limits, None) {
            Err(Error::Import(why)) => assert!(why.contains(name), "{why}"),
            other => panic!("{name}: {:?}", other.err()),
        }
    }
    let (_, cbor) = samples();
    // A loop that never ends runs out of fuel; the next record runs again.
    let wasm = module("", "(loop $l (br $l)) (i32.const 0)");
    let mut s = Stage::new(&engine, &wasm, &[0xa0], &[], limits, None).unwrap();
    assert_eq!(s.process(&cbor[0]).err(), Some(Error::OutOfFuel));
    assert!(s.last_fuel >= 10_000);
    assert_eq!(s.process(&cbor[1]).err(), Some(Error::OutOfFuel));
    // A trap is an error, not a crash.
    let mut s = Stage::new(
        &engine,
        &module("", "unreachable"),
        &[0xa0],
        &[],
        limits,
        None,
    )
    .unwrap();
    assert!(matches!(s.process(&cbor[0]), Err(Error::Trap(_))));
    // A failure status with a reason keeps the reason.
    let wasm = module(
        r#"(import "weir" "fail" (func $fail (param i32 i32) (result i32)))
           (data (i32.const 0) "too hot")"#,
        "(drop (call $fail (i32.const 0) (i32.const 7))) (i32.const 0)",
    );
    let mut s = Stage::new(&engine, &wasm, &[0xa0], &[], limits, None).unwrap();
    assert_eq!(
        s.process(&cbor[0]).err(),
        Some(Error::Status(2, Some("too hot".into())))
    );
}
