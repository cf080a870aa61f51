//! W1 through the three Wasm stages on one core, against the same stage code
//! compiled natively (same CBOR records in and out, same dispatch code in
//! the SDK), plus cold-start figures per module.
//!
//! The last section puts W1's first two stages written in each language
//! (Rust, C, Zig, AssemblyScript; stock WASI builds too) side by side: size,
//! cold start and records/s, with the ratio to the Rust module and to the
//! native Rust code measured in the same run, and checks that each gives the
//! Rust module's output records byte for byte.
//!
//! `cargo xtask bench` (or `cargo bench -p weir-benches`); `W1_RECORDS=N` sets the size,
//! `W1_SECTIONS=pipeline` skips the per-module section (for profiling).

use std::time::Instant;

use testkit::w1;
use weir::pipeline::{
    ErrorPolicy, Grant, Isolation, Limits, Pipeline, PipelineOutput, Runtime, Stage, StageSpec,
};
use weir_benches::{best_of, median_us, rate};
use weir_guest::{PatchFn, TransformFn, native};

/// The same transform code, callable natively.
#[derive(Clone, Copy)]
enum Native {
    Patch(PatchFn),
    Record(TransformFn),
}

impl Native {
    fn call(self, input: &[u8], out: &mut native::Outputs) -> i32 {
        match self {
            Native::Patch(f) => native::call_patch_into(input, f, out),
            Native::Record(f) => native::call_into(input, f, out),
        }
    }
}

struct Module {
    name: &'static str,
    stem: &'static str,
    grants: &'static [Grant],
    native: Native,
}

/// W1 stages from other languages, beside the Rust module of the same stage
/// (`MODULES[stage]`): (stage index, language, module stem, grants).
const LANGUAGES: &[(usize, &str, &str, &[Grant])] = &[
    (0, "Rust", "weir_w1_range_filter", &[]),
    (
        0,
        "C (stock WASI, libc)",
        "c_wasi_range_filter",
        &[Grant::Log],
    ),
    (0, "Zig", "zig_range_filter", &[]),
    (
        0,
        "Zig (stock WASI, std)",
        "zig_wasi_range_filter",
        &[Grant::Log, Grant::Clock],
    ),
    (0, "AssemblyScript", "as_range_filter", &[]),
    (1, "Rust", "weir_w1_enrich", &[]),
    (1, "Zig", "zig_enrich", &[]),
    (1, "AssemblyScript", "as_enrich", &[]),
];

const MODULES: [Module; 3] = [
    Module {
        name: "range-filter",
        stem: "weir_w1_range_filter",
        grants: &[],
        native: Native::Patch(weir_w1_range_filter::transform),
    },
    Module {
        name: "enrich",
        stem: "weir_w1_enrich",
        grants: &[],
        native: Native::Patch(weir_w1_enrich::transform),
    },
    Module {
        name: "moving-average",
        stem: "weir_w1_moving_average",
        grants: &[Grant::State],
        native: Native::Patch(weir_w1_moving_average::transform),
    },
];

/// enrich written over the full Record: the guest parses and re-encodes CBOR.
const ENRICH_CBOR: Module = Module {
    name: "enrich-cbor",
    stem: "weir_w1_enrich_cbor",
    grants: &[],
    native: Native::Record(weir_w1_enrich_cbor::transform),
};

fn spec(rt: &Runtime, m: &Module, isolation: Isolation) -> StageSpec {
    let wasm = std::fs::read(testkit::module(m.stem)).expect("module built by testkit");
    StageSpec {
        label: format!("w1/{}", m.name),
        module: rt.compile(m.name, &wasm).expect("W1 module compiles"),
        grants: m.grants.to_vec(),
        limits: Limits::default(),
        isolation,
        config: vec![0xa0], // empty map: module defaults
        quarantine_after: u32::MAX,
    }
}

fn main() {
    let n: usize = std::env::var("W1_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let readings = w1::generate(n, 42);
    let inputs: Vec<Vec<u8>> = readings.iter().map(|r| r.record().to_cbor()).collect();
    let rt = Runtime::new();

    // --- Throughput: the whole pipeline.
    let stages = MODULES
        .iter()
        .map(|m| Stage::new(spec(&rt, m, Isolation::Reuse)).unwrap())
        .collect();
    let mut pipe = Pipeline::new("w1", stages, ErrorPolicy::DeadLetter);
    let mut out = PipelineOutput::default();
    let mut wasm_bytes = Vec::new();
    let (d_wasm, wasm_out) = best_of(3, || {
        wasm_bytes.clear();
        for input in &inputs {
            out.clear();
            pipe.process(input, &mut out);
            out.records
                .iter()
                .for_each(|r| wasm_bytes.extend_from_slice(r));
        }
        pipe.metrics().records_out
    });

    let (mut cur, mut next) = (native::Outputs::default(), native::Outputs::default());
    let mut native_bytes = Vec::new();
    let (d_native, native_out) = best_of(3, || {
        native_bytes.clear();
        let mut count = 0u64;
        for input in &inputs {
            cur.clear();
            cur.push(input);
            for m in &MODULES {
                next.clear();
                for rec in cur.iter() {
                    assert_eq!(m.native.call(rec, &mut next), 0);
                }
                std::mem::swap(&mut cur, &mut next);
            }
            count += cur.len() as u64;
            cur.iter().for_each(|r| native_bytes.extend_from_slice(r));
        }
        count
    });
    assert_eq!(
        wasm_bytes, native_bytes,
        "wasm and native must produce identical records"
    );
    let _ = (wasm_out, native_out);
    let (r_wasm, r_native) = (rate(n, d_wasm), rate(n, d_native));
    println!("W1 pipeline: {n} records, 3 stages, one core (best of 3)");
    println!(
        "  wasm (wasmi)        {:>12.0} records/s  {:>7.2} µs/record",
        r_wasm,
        1e6 / r_wasm
    );
    println!(
        "  native (same code)  {:>12.0} records/s  {:>7.2} µs/record",
        r_native,
        1e6 / r_native
    );
    println!("  ratio wasm/native   {:>12.2}x", r_native / r_wasm);

    if std::env::var("W1_SECTIONS").is_ok_and(|s| s == "pipeline") {
        return;
    }

    // --- ABI design: the same enrich logic, guest-parsed CBOR vs host-served fields.
    let enriched: Vec<&Vec<u8>> = inputs
        .iter()
        .filter(|i| {
            let mut o = native::Outputs::default();
            weir_guest::native::call_patch_into(i, weir_w1_range_filter::transform, &mut o);
            !o.is_empty()
        })
        .collect();
    println!(
        "\nABI design, enrich on {} records (µs/record, best of 3)   wasm   native  ratio",
        enriched.len()
    );
    for m in [&MODULES[1], &ENRICH_CBOR] {
        let mut stage = Stage::new(spec(&rt, m, Isolation::Reuse)).unwrap();
        let (d, _) = best_of(3, || enriched.iter().for_each(|i| drop(stage.process(i))));
        let mut out = native::Outputs::default();
        let (dn, _) = best_of(3, || {
            enriched.iter().for_each(|i| {
                out.clear();
                m.native.call(i, &mut out);
            })
        });
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / enriched.len() as f64;
        let how = if m.name == "enrich" {
            "host fields (input_get/emit_input)"
        } else {
            "guest parses CBOR (Record)      "
        };
        println!(
            "  {how}            {:>6.2}  {:>6.2}  {:>5.1}x",
            per(d),
            per(dn),
            per(d) / per(dn)
        );
    }

    // --- Per stage: cold start, first record, steady state, per-record isolation.
    println!(
        "\nper module (µs, median)  compile  instantiate+init  first record  steady  per-record-instance  fuel/record"
    );
    let sample = &inputs[..inputs.len().min(20_000)];
    for m in &MODULES {
        let wasm = std::fs::read(testkit::module(m.stem)).unwrap();
        let compile: Vec<_> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let _ = rt.compile(m.name, &wasm).unwrap();
                t.elapsed()
            })
            .collect();
        let mut inst = Vec::new();
        let mut first = Vec::new();
        for _ in 0..50 {
            let s = spec(&rt, m, Isolation::Reuse);
            let t = Instant::now();
            let mut stage = Stage::new(s).unwrap();
            inst.push(t.elapsed());
            let t = Instant::now();
            let _ = stage.process(&inputs[0]);
            first.push(t.elapsed());
        }
        let mut stage = Stage::new(spec(&rt, m, Isolation::Reuse)).unwrap();
        let (d, _) = best_of(3, || sample.iter().for_each(|i| drop(stage.process(i))));
        let fuel = stage.metrics().fuel_used / stage.metrics().records_in.max(1);
        let mut fresh = Stage::new(spec(&rt, m, Isolation::PerRecord)).unwrap();
        let few = &sample[..sample.len().min(2000)];
        let (d_fresh, _) = best_of(3, || few.iter().for_each(|i| drop(fresh.process(i))));
        println!(
            "  {:<22} {:>8.1} {:>17.1} {:>13.1} {:>7.2} {:>20.2} {:>12}",
            m.name,
            median_us(compile),
            median_us(inst),
            median_us(first),
            d.as_secs_f64() * 1e6 / sample.len() as f64,
            d_fresh.as_secs_f64() * 1e6 / few.len() as f64,
            fuel
        );
    }

    languages(&rt, &inputs);
}

/// Each language's build of a W1 stage: size, cold start (compile,
/// instantiate, first record), steady records/s, ratios against the Rust
/// module and native Rust, and byte-identical outputs.
fn languages(rt: &Runtime, inputs: &[Vec<u8>]) {
    let sample = &inputs[..inputs.len().min(20_000)];
    println!(
        "\nper language, W1 stage on {} records   bytes  cold start µs  records/s  vs Rust wasm  vs native",
        sample.len()
    );
    let mut rust_rate = 0.0;
    let mut rust_out: Vec<u8> = Vec::new();
    for &(stage, lang, stem, grants) in LANGUAGES {
        let m = Module {
            name: MODULES[stage].name,
            stem,
            grants,
            native: MODULES[stage].native,
        };
        let wasm = std::fs::read(testkit::module(stem)).expect("module built by testkit");
        let cold: Vec<_> = (0..30)
            .map(|_| {
                let t = Instant::now();
                let mut st = Stage::new(spec(rt, &m, Isolation::Reuse)).unwrap();
                let _ = st.process(&inputs[0]);
                t.elapsed()
            })
            .collect();
        let mut st = Stage::new(spec(rt, &m, Isolation::Reuse)).unwrap();
        let mut out = Vec::new();
        for i in sample {
            if let Ok(o) = st.process(i) {
                o.iter().for_each(|r| out.extend_from_slice(r));
            }
        }
        let (d, _) = best_of(3, || sample.iter().for_each(|i| drop(st.process(i))));
        let mut nat = native::Outputs::default();
        let (dn, _) = best_of(3, || {
            sample.iter().for_each(|i| {
                nat.clear();
                m.native.call(i, &mut nat);
            })
        });
        let (r, rn) = (rate(sample.len(), d), rate(sample.len(), dn));
        if lang == "Rust" {
            (rust_rate, rust_out) = (r, out);
        } else {
            assert_eq!(
                out, rust_out,
                "{lang} {} must give the Rust module's records",
                m.name
            );
        }
        println!(
            "  {:<15} {:<22} {:>7} {:>14.1} {:>10.0} {:>12.2}x {:>9.2}x",
            m.name,
            lang,
            wasm.len(),
            median_us(cold),
            r,
            rust_rate / r,
            rn / r
        );
    }
}
