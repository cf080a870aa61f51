//! `weir module inspect` and `weir module test` (`new` is in
//! [`super::scaffold`]).
//!
//! `module test` gates a module's CI: it exits 1 when any record fails or
//! any input line is invalid, and with `--expect FILE` when any output
//! differs from the expected one (see [`super::expect`]), printing the
//! differences.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, output};
use crate::common::ByteSize;
use crate::pipeline::{Grant, Isolation, Limits, Runtime, Stage, StageSpec};
use crate::record::{JsonInput, now_ms};

#[derive(Subcommand)]
pub(super) enum ModuleCommand {
    /// Make a module project in a new folder: Rust, C, Zig, AssemblyScript
    /// or WAT, with test vectors and its one-line build in its README.
    New(super::scaffold::NewArgs),
    /// Show a module's ABI version, imports, exports, size and the grants it needs.
    Inspect(InspectArgs),
    /// Run each input record through a module and print outputs, fuel, time
    /// and errors; exit 1 if a record fails or an output differs from `--expect`.
    Test(TestArgs),
    /// Sign a module and its manifest into a bundle (its test vectors run first).
    Pack(super::bundle::PackArgs),
    /// Check a bundle's signature against trusted keys, and its module hash.
    Verify(super::bundle::VerifyArgs),
    /// Push a bundle to a gateway or a fleet group over MQTT and wait for
    /// each result; exit 1 if any is refused, rolled back or missing.
    Push(super::push::PushArgs),
}

#[derive(Args)]
pub(super) struct InspectArgs {
    /// The module (.wasm, or .wat text), or a bundle.
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct TestArgs {
    /// The module (.wasm, or .wat text).
    file: PathBuf,
    /// Expected outputs, JSON lines: a bare payload or a whole record per
    /// output, in order. Any difference exits 1, with a diff.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Grant a capability (log, clock, state, random, serial); repeat for several.
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<Grant>,
    /// JSON-lines records (`-` or absent: stdin).
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Stage config entry for `weir_init`, as KEY=VALUE with a TOML value.
    #[arg(long = "set", value_parser = parse_set)]
    set: Vec<(String, toml::Value)>,
    /// Fuel per record.
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory cap, for example "4 MiB".
    #[arg(long)]
    memory: Option<ByteSize>,
    /// Most outputs per record.
    #[arg(long)]
    max_outputs: Option<u32>,
    /// A fresh instance for every record.
    #[arg(long)]
    per_record: bool,
    /// Topic for bare payloads; `{field}` takes the payload's field.
    #[arg(long, default_value = "sensors/{id}/telemetry")]
    topic: String,
    /// Print one JSON object per record instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_grant(s: &str) -> Result<Grant, String> {
    Grant::parse(s)
        .ok_or_else(|| format!("unknown grant `{s}` (known: log, clock, state, random, serial)"))
}

fn parse_set(s: &str) -> Result<(String, toml::Value), String> {
    let (k, v) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    let table: toml::Table = format!("v = {v}")
        .parse()
        .or_else(|_| format!("v = {:?}", v).parse())
        .map_err(|e| format!("bad value for `{k}`: {e}"))?;
    Ok((k.to_owned(), table["v"].clone()))
}

pub(super) fn run(cmd: ModuleCommand) -> Result<(), Failure> {
    match cmd {
        ModuleCommand::New(a) => super::scaffold::new(a),
        ModuleCommand::Inspect(a) => inspect(a),
        ModuleCommand::Test(a) => test(a),
        ModuleCommand::Pack(a) => super::bundle::pack(a),
        ModuleCommand::Verify(a) => super::bundle::verify(a),
        ModuleCommand::Push(a) => super::push::push(a),
    }
}

fn inspect(args: InspectArgs) -> Result<(), Failure> {
    if let Ok(bytes) = std::fs::read(&args.file)
        && crate::deploy::bundle::Bundle::looks_like(&bytes)
    {
        return super::bundle::inspect_bundle(&args.file, &bytes, args.json);
    }
    let module = Runtime::new()
        .compile_file(&args.file)
        .map_err(Failure::refused)?;
    let i = module.info();
    if args.json {
        let v = json!({
            "file": i.name,
            "size_bytes": i.size_bytes,
            "abi_version": i.abi_version,
            "abi_problems": i.abi_problems,
            "grants_needed": i.grants_needed,
            "memory_pages": i.memory_pages.map(|(min, max)| json!({"initial": min, "maximum": max})),
            "imports": i.imports.iter().map(|(m, n, s)| json!({"module": m, "name": n, "type": s})).collect::<Vec<_>>(),
            "exports": i.exports.iter().map(|(n, s)| json!({"name": n, "type": s})).collect::<Vec<_>>(),
        });
        println!("{v:#}");
    } else {
        println!("file:          {}", i.name);
        println!("size:          {} bytes", i.size_bytes);
        match i.abi_version {
            Some(v) => println!("abi version:   {v}"),
            None => println!("abi version:   none (no weir_abi_v<N> export)"),
        }
        if let Some((min, max)) = i.memory_pages {
            let max = max.map_or("none".to_string(), |m| m.to_string());
            println!("memory:        {min} pages initial, maximum {max}");
        }
        let grants: Vec<_> = i.grants_needed.iter().copied().collect();
        println!(
            "grants needed: {}",
            if grants.is_empty() {
                "none".into()
            } else {
                grants.join(", ")
            }
        );
        println!("imports:");
        for (m, n, s) in &i.imports {
            println!("  {m}.{n}: {s}");
        }
        println!("exports:");
        for (n, s) in &i.exports {
            println!("  {n}: {s}");
        }
        for p in &i.abi_problems {
            println!("problem:       {p}");
        }
    }
    if let Some(p) = i.abi_problems.first() {
        return Err(Failure::refused(anyhow::anyhow!("{}: {p}", i.name)));
    }
    Ok(())
}

fn test(args: TestArgs) -> Result<(), Failure> {
    let rt = Runtime::new();
    let module = rt.compile_file(&args.file).map_err(Failure::refused)?;
    let d = Limits::default();
    let limits = Limits {
        fuel: args.fuel.unwrap_or(d.fuel),
        memory_bytes: args.memory.map_or(d.memory_bytes, |m| m.0),
        max_outputs: args.max_outputs.unwrap_or(d.max_outputs),
        ..d
    };
    let config: toml::Table = args.set.into_iter().collect();
    let spec = StageSpec {
        label: args.file.display().to_string(),
        module,
        grants: args.grants,
        limits,
        isolation: if args.per_record {
            Isolation::PerRecord
        } else {
            Isolation::Reuse
        },
        config: serde_cbor::to_vec(&config)?,
        quarantine_after: u32::MAX,
    };
    let mut stage = Stage::new(spec)
        .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", args.file.display())))?;
    let expected = match &args.expect {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            Some(
                crate::pipeline::expect::parse(&text)
                    .map_err(|e| Failure::refused(anyhow::anyhow!("{}: {e}", p.display())))?,
            )
        }
        None => None,
    };
    // Every output, in order, with the record it came from.
    let mut outputs: Vec<(u64, serde_json::Value)> = Vec::new();
    let parser = JsonInput {
        source: "test".into(),
        topic_template: args.topic,
    };
    let reader: Box<dyn BufRead> = match args.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?,
        )),
    };
    let (mut ok, mut dropped, mut failed, mut invalid) = (0u64, 0u64, 0u64, 0u64);
    let mut n = 0u64;
    for (lineno, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        let rec = match parser.parse(&line, now_ms()) {
            Ok(r) => r,
            Err(e) => {
                invalid += 1;
                if args.json {
                    println!(
                        "{}",
                        json!({"line": lineno + 1, "invalid_input": e.to_string()})
                    );
                } else {
                    println!("record {n} (line {}): invalid input: {e}", lineno + 1);
                }
                continue;
            }
        };
        let cbor = rec.to_cbor();
        let start = Instant::now();
        let result = stage
            .process(&cbor)
            .map(|o| o.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
        let micros = start.elapsed().as_secs_f64() * 1e6;
        let fuel = stage.last_fuel();
        // Downlink commands are shown, not sent: there is no line here.
        let downlink: Vec<_> = stage
            .downlink()
            .iter()
            .map(|d| json!({"source": d.source, "sensor": d.sensor, "cmd": d.command.name(), "command": format!("{:?}", d.command)}))
            .collect();
        match result {
            Ok(result_outputs) => {
                let outs: Vec<_> = result_outputs
                    .iter()
                    .map(|o| output::record_json(None, o))
                    .collect();
                outputs.extend(outs.iter().map(|o| (n, o.clone())));
                if outs.is_empty() {
                    dropped += 1
                } else {
                    ok += 1
                }
                if args.json {
                    let mut line = json!({"line": lineno + 1, "status": "ok", "fuel": fuel, "micros": micros, "outputs": outs});
                    if !downlink.is_empty() {
                        line["downlink"] = json!(downlink);
                    }
                    println!("{line}");
                } else {
                    let what = if outs.is_empty() {
                        "dropped".to_string()
                    } else {
                        format!("{} output(s)", outs.len())
                    };
                    println!("record {n}: ok, {what}, fuel {fuel}, {micros:.1} µs");
                    for o in outs {
                        println!("  {o}");
                    }
                    for d in &downlink {
                        println!(
                            "  downlink (not sent by module test): {} sensor {}: {}",
                            d["source"].as_str().unwrap_or(""),
                            d["sensor"],
                            d["command"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        json!({"line": lineno + 1, "status": "error", "kind": e.kind().as_str(), "error": e.to_string(), "fuel": fuel, "micros": micros})
                    );
                } else {
                    println!(
                        "record {n}: error ({}): {e}, fuel {fuel}, {micros:.1} µs",
                        e.kind()
                    );
                }
            }
        }
    }
    let summary = format!(
        "{n} records: {ok} emitted, {dropped} dropped, {failed} failed, {invalid} invalid input; state {} keys / {} bytes",
        stage.state().len(),
        stage.state().bytes()
    );
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    let (mut mismatches, mut matched) = (0usize, 0usize);
    if let Some(expected) = &expected {
        for i in 0..expected.len().max(outputs.len()) {
            let lines: Vec<String> = match (expected.get(i), outputs.get(i)) {
                (Some(want), Some((rec, got))) => crate::pipeline::expect::differences(want, got)
                    .into_iter()
                    .map(|d| {
                        format!(
                            "output {} (record {rec}, expect line {}): {d}",
                            i + 1,
                            want.line
                        )
                    })
                    .collect(),
                (Some(want), None) => vec![format!(
                    "output {}: missing; expect line {} wants {}",
                    i + 1,
                    want.line,
                    want.value
                )],
                (None, Some((rec, got))) => vec![format!(
                    "output {} (record {rec}): not expected: {got}",
                    i + 1
                )],
                (None, None) => Vec::new(),
            };
            if lines.is_empty() {
                matched += 1;
            } else {
                mismatches += 1;
            }
            for l in lines {
                eprintln!("- {l}");
            }
        }
        eprintln!(
            "expect: {} of {} expected outputs match{}",
            matched,
            expected.len(),
            if outputs.len() != expected.len() {
                format!(" ({} outputs emitted)", outputs.len())
            } else {
                String::new()
            }
        );
    }
    if failed > 0 || invalid > 0 || mismatches > 0 {
        eprintln!(
            "error: {failed} record(s) failed, {invalid} invalid input line(s), {mismatches} output(s) differ from the expected ones"
        );
        return Err(Failure::quiet(1));
    }
    Ok(())
}
