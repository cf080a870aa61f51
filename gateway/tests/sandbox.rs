//! The sandbox's edge cases, each a tiny hand-written WAT module run by the
//! real runtime: fuel, memory, imports, traps and the error policy, output
//! limits, bad host-call arguments, quarantine, isolation and state.

use std::collections::BTreeMap;

use weir::pipeline::{
    ErrorPolicy, FailureKind, Grant, Isolation, Limits, LoadError, Pipeline, PipelineOutput,
    Runtime, Stage, StageError, StageSpec,
};
use weir::record::{Record, json_to_cbor};

/// A module with the ABI exports around `body` (the `weir_transform` body,
/// with params $ptr and $len) plus extra `imports` and `items`.
fn module(imports: &str, items: &str, body: &str) -> String {
    format!(
        r#"(module
            (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
            {imports}
            (memory (export "memory") 1)
            (global $calls (mut i32) (i32.const 0))
            {items}
            (func (export "weir_abi_v1"))
            (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "weir_transform") (param $ptr i32) (param $len i32) (result i32)
                {body}))"#
    )
}

const PASS: &str = "(drop (call $emit (local.get $ptr) (local.get $len))) (i32.const 0)";

fn spec(wat: &str, grants: &[Grant], limits: Limits, isolation: Isolation) -> StageSpec {
    let rt = Runtime::new();
    let wasm = wat::parse_str(wat).expect("test WAT is valid");
    StageSpec {
        label: "test/stage".into(),
        module: rt.compile("test.wasm", &wasm).expect("compiles"),
        grants: grants.to_vec(),
        limits,
        isolation,
        config: vec![0xa0],
        quarantine_after: 1000,
    }
}

fn stage_with(wat: &str, grants: &[Grant], limits: Limits) -> Result<Stage, LoadError> {
    Stage::new(spec(wat, grants, limits, Isolation::Reuse))
}

fn stage(wat: &str) -> Stage {
    stage_with(wat, &[], Limits::default()).expect("module loads")
}

fn record(seq: i64) -> Vec<u8> {
    Record {
        source: "test".into(),
        topic: "sensors/s1/telemetry".into(),
        ts: 1,
        headers: BTreeMap::new(),
        payload: json_to_cbor(&serde_json::json!({"id": "s1", "temp_c": 21.5, "seq": seq})),
    }
    .to_cbor()
}

fn failure(stage: &mut Stage) -> StageError {
    stage.process(&record(1)).expect_err("the record must fail")
}

#[test]
fn pass_through_works() {
    let mut s = stage(&module("", "", PASS));
    let out: Vec<Vec<u8>> = s
        .process(&record(7))
        .unwrap()
        .iter()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(out, vec![record(7)]);
}

#[test]
fn infinite_loop_runs_out_of_fuel_and_the_stage_recovers() {
    let wat = module(
        "",
        "",
        &format!("(if (i32.eqz (global.get $calls)) (then (loop $l (br $l)))) {PASS}"),
    );
    let limits = Limits {
        fuel: 50_000,
        ..Limits::default()
    };
    let mut s = stage_with(&wat, &[], limits).unwrap();
    assert_eq!(failure(&mut s), StageError::OutOfFuel { limit: 50_000 });
    assert!(
        s.last_fuel() > 49_000,
        "the budget was used up: {}",
        s.last_fuel()
    );
    assert_eq!(s.metrics().failed(FailureKind::Fuel), 1);
    // The instance is replaced (lazily, on the next record): a fresh one has
    // `calls` = 0 again, so it loops again, deterministically.
    assert_eq!(failure(&mut s), StageError::OutOfFuel { limit: 50_000 });
    assert_eq!(
        s.metrics().instantiations,
        2,
        "one at load, one replacing the trapped one"
    );
}

#[test]
fn fuel_is_deterministic_per_record() {
    let wat = module(
        "",
        "",
        &format!(
            "(local $i i32) (local.set $i (i32.const 500)) (loop $l (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i))) {PASS}"
        ),
    );
    let mut s = stage(&wat);
    s.process(&record(1)).unwrap();
    let first = s.last_fuel();
    s.process(&record(1)).unwrap();
    assert_eq!(s.last_fuel(), first);
    assert!(first > 500);
}

#[test]
fn memory_grow_beyond_the_cap_is_refused() {
    // Grow by 100 pages (6.4 MiB) against a 1 MiB cap: memory.grow returns -1
    // and the module reports status 3; a 4-page grow inside the cap works.
    let body = "(if (i32.ne (memory.grow (i32.const 100)) (i32.const -1)) (then (return (i32.const 0)))) \
                (if (i32.eq (memory.grow (i32.const 4)) (i32.const -1)) (then (return (i32.const 4)))) \
                (i32.const 3)";
    let limits = Limits {
        memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let mut s = stage_with(&module("", "", body), &[], limits).unwrap();
    assert_eq!(
        failure(&mut s),
        StageError::Status {
            code: 3,
            name: "resource",
            reason: None,
        }
    );
}

#[test]
fn memory_grow_bomb_in_a_loop_stops_at_the_cap() {
    // Grow one page at a time until refused, then emit the input: the module
    // survives, the cap holds, and the record passes.
    let body = format!(
        "(block $full (loop $l (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1))) (br $l))) \
                (if (i32.gt_u (memory.size) (i32.const 16)) (then (unreachable))) {PASS}"
    );
    let limits = Limits {
        memory_bytes: 16 * 65536,
        ..Limits::default()
    };
    let mut s = stage_with(&module("", "", &body), &[], limits).unwrap();
    assert_eq!(s.process(&record(1)).unwrap().len(), 1);
}

#[test]
fn huge_initial_memory_is_refused_at_instantiation() {
    let wat = module("", "", PASS).replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1000)",
    );
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    match stage_with(&wat, &[], limits) {
        Err(e @ LoadError::MemoryCap { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("1000 pages"), "{msg}");
            assert!(msg.contains("(256 pages)"), "{msg}");
        }
        Err(other) => panic!("expected a memory cap error, got {other}"),
        Ok(_) => panic!("a 64 MiB initial memory must be refused under a 16 MiB cap"),
    }
}

#[test]
fn unknown_and_ungranted_imports_are_refused_by_name() {
    let cases = [
        (
            r#"(import "env" "open" (func (param i32) (result i32)))"#,
            &[][..],
            "env.open",
            "unknown import module",
        ),
        (
            r#"(import "weir" "socket" (func))"#,
            &[][..],
            "weir.socket",
            "unknown import",
        ),
        (
            r#"(import "weir" "log" (func (param i32 i32 i32) (result i32)))"#,
            &[][..],
            "weir.log",
            "grant `log`",
        ),
        (
            r#"(import "weir" "state_get" (func (param i32 i32 i32 i32) (result i32)))"#,
            &[Grant::Log][..],
            "weir.state_get",
            "grant `state`",
        ),
        (
            r#"(import "weir" "clock_now_ms" (func (result i32)))"#,
            &[Grant::Clock][..],
            "weir.clock_now_ms",
            "signature",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "sock_send" (func (param i32 i32 i32 i32 i32) (result i32)))"#,
            &[Grant::Log][..],
            "wasi_snapshot_preview1.sock_send",
            "WASI function is not provided",
        ),
        (
            r#"(import "weir" "table" (table 1 funcref))"#,
            &[][..],
            "weir.table",
            "unknown import",
        ),
    ];
    for (import, grants, name, why) in cases {
        let err = stage_with(&module(import, "", PASS), grants, Limits::default())
            .err()
            .expect(name);
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Import { .. }), "{name}: {msg}");
        assert!(msg.contains(name) && msg.contains(why), "{name}: {msg}");
    }
    // Granted, the same log import loads.
    let log = r#"(import "weir" "log" (func (param i32 i32 i32) (result i32)))"#;
    assert!(stage_with(&module(log, "", PASS), &[Grant::Log], Limits::default()).is_ok());
}

#[test]
fn modules_without_the_abi_are_refused() {
    let no_marker = module("", "", PASS).replace("(func (export \"weir_abi_v1\"))", "");
    let err = stage_with(&no_marker, &[], Limits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("weir_abi_v1"), "{err}");
    let v2 = module("", "", PASS).replace("weir_abi_v1", "weir_abi_v2");
    let err = stage_with(&v2, &[], Limits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ABI version 2"), "{err}");
    let bad_sig = module("", "", PASS).replace(
        "(param i32) (result i32) (i32.const 1024)",
        "(result i32) (i32.const 1024)",
    );
    let err = stage_with(&bad_sig, &[], Limits::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("weir_alloc"), "{err}");
    assert!(matches!(
        Runtime::new().compile("junk", b"\0asm\x01\0\0\0\x99"),
        Err(LoadError::Invalid(_))
    ));
}

#[test]
fn a_trap_goes_to_the_error_policy_and_the_stage_recovers() {
    // Traps on odd `calls`, passes on even ones.
    let body = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
                (if (i32.and (global.get $calls) (i32.const 1)) (then (unreachable))) {PASS}"
    );
    for (policy, outputs, dead) in [
        (ErrorPolicy::Drop, 0, 0),
        (ErrorPolicy::Pass, 1, 0),
        (ErrorPolicy::DeadLetter, 0, 1),
    ] {
        let s = stage(&module("", "", &body));
        let mut p = Pipeline::new("p", vec![s], policy);
        let mut out = PipelineOutput::default();
        p.process(&record(1), &mut out);
        assert_eq!(
            (out.records.len(), out.dead.len()),
            (outputs, dead),
            "{policy:?}"
        );
        if let Some(d) = out.dead.first() {
            assert_eq!(d.stage, "test/stage");
            assert!(
                matches!(d.error, StageError::Trap(ref m) if m.contains("unreachable")),
                "{:?}",
                d.error
            );
            assert_eq!(
                d.record,
                record(1),
                "the dead letter carries the record as the stage got it"
            );
        }
        // The trapped instance was replaced by a fresh one, whose first call
        // traps again (calls = 1): globals do not survive a trap.
        out.clear();
        p.process(&record(2), &mut out);
        assert_eq!(
            out.records.len() + out.dead.len(),
            outputs + dead,
            "{policy:?}"
        );
        assert_eq!(p.stages()[0].metrics().failed(FailureKind::Trap), 2);
    }
}

#[test]
fn too_many_outputs_and_too_many_bytes_are_refused() {
    let body = "(local $i i32) (local.set $i (i32.const 10)) (loop $l (drop (call $emit (local.get $ptr) (local.get $len))) (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i))) (i32.const 0)";
    let limits = Limits {
        max_outputs: 3,
        ..Limits::default()
    };
    let mut s = stage_with(&module("", "", body), &[], limits).unwrap();
    assert!(matches!(
        failure(&mut s),
        StageError::HostCall {
            kind: FailureKind::TooManyOutputs,
            ..
        }
    ));
    let limits = Limits {
        max_output_bytes: 50,
        ..Limits::default()
    };
    let mut s = stage_with(&module("", "", PASS), &[], limits).unwrap();
    assert!(record(1).len() > 50);
    assert!(matches!(
        failure(&mut s),
        StageError::HostCall {
            kind: FailureKind::TooLarge,
            ..
        }
    ));
}

#[test]
fn a_split_emits_several_records() {
    let body = "(drop (call $emit (local.get $ptr) (local.get $len))) (drop (call $emit (local.get $ptr) (local.get $len))) (i32.const 0)";
    let mut s = stage(&module("", "", body));
    assert_eq!(s.process(&record(1)).unwrap().len(), 2);
}

#[test]
fn malformed_output_is_refused() {
    // Emit the input minus its last byte: a truncated record.
    let body = "(drop (call $emit (local.get $ptr) (i32.sub (local.get $len) (i32.const 1)))) (i32.const 0)";
    let mut s = stage(&module("", "", body));
    match failure(&mut s) {
        StageError::HostCall {
            kind: FailureKind::Malformed,
            call: "emit",
            detail,
        } => assert!(detail.contains("malformed"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn out_of_bounds_host_calls_return_errors_not_panics() {
    let st = r#"(import "weir" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
                (import "weir" "log" (func $log (param i32 i32 i32) (result i32)))
                (import "weir" "input_get" (func $get (param i32 i32 i32 i32) (result i32)))
                (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))"#;
    let calls = [
        ("emit", "(call $emit (i32.const -16) (i32.const 100))"),
        ("emit", "(call $emit (i32.const 65500) (i32.const 100))"),
        (
            "state_set",
            "(call $set (i32.const 0) (i32.const 4) (i32.const 70000) (i32.const 4))",
        ),
        (
            "log",
            "(call $log (i32.const 2) (i32.const 0) (i32.const -1))",
        ),
        (
            "log",
            "(call $log (i32.const 9) (i32.const 0) (i32.const 1))",
        ),
        (
            "input_get",
            "(call $get (i32.const 0) (i32.const 1) (i32.const 65535) (i32.const 2))",
        ),
        (
            "emit_input",
            "(call $emit_input (i32.const 65536) (i32.const 1))",
        ),
    ];
    for (name, call) in calls {
        // The module ignores the error code and returns OK: the host still fails the record.
        let body = format!("(drop {call}) (i32.const 0)");
        let mut s = stage_with(
            &module(st, "", &body),
            &[Grant::State, Grant::Log],
            Limits::default(),
        )
        .unwrap();
        match failure(&mut s) {
            StageError::HostCall {
                call,
                kind: FailureKind::BadHostCall,
                ..
            } => assert_eq!(call, name),
            other => panic!("{name}: {other:?}"),
        }
        // And the stage is still usable.
        assert!(s.metrics().failed_total() == 1);
    }
}

#[test]
fn host_call_codes_are_returned_to_the_module() {
    // emit(-16, 100) must return E_BOUNDS (-1); the module returns it + 100
    // as its status, so status 99 proves the code arrived.
    let body = "(i32.add (call $emit (i32.const -16) (i32.const 100)) (i32.const 100))";
    let mut s = stage(&module("", "", body));
    // The host-call failure is reported first (it is the root cause).
    assert!(matches!(failure(&mut s), StageError::HostCall { .. }));
}

#[test]
fn a_stage_is_quarantined_after_n_consecutive_failures() {
    let mut sp = spec(
        &module("", "", "(unreachable)"),
        &[],
        Limits::default(),
        Isolation::Reuse,
    );
    sp.quarantine_after = 3;
    let mut s = Stage::new(sp).unwrap();
    for _ in 0..3 {
        assert!(matches!(failure(&mut s), StageError::Trap(_)));
    }
    assert!(s.is_quarantined());
    let before = s.metrics().fuel_used;
    assert_eq!(failure(&mut s), StageError::Quarantined { failures: 3 });
    assert_eq!(
        s.metrics().fuel_used,
        before,
        "a quarantined stage does not run"
    );
    assert_eq!(s.metrics().failed(FailureKind::Quarantined), 1);
    assert_eq!(s.metrics().failed(FailureKind::Trap), 3);
}

#[test]
fn successes_reset_the_failure_count() {
    let body = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
                (if (i32.and (global.get $calls) (i32.const 1)) (then (return (i32.const 2)))) {PASS}"
    );
    let mut sp = spec(
        &module("", "", &body),
        &[],
        Limits::default(),
        Isolation::Reuse,
    );
    sp.quarantine_after = 2;
    let mut s = Stage::new(sp).unwrap();
    for _ in 0..10 {
        let _ = s.process(&record(1));
    }
    assert!(!s.is_quarantined(), "failures alternate with successes");
    assert_eq!(s.metrics().failed(FailureKind::Status), 5);
}

#[test]
fn per_record_isolation_gives_a_fresh_instance_each_time() {
    // Emits only on its first call: with reuse, the second record is dropped.
    let body = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
                (if (i32.gt_u (global.get $calls) (i32.const 1)) (then (return (i32.const 0)))) {PASS}"
    );
    let wat = module("", "", &body);
    let mut reuse = Stage::new(spec(&wat, &[], Limits::default(), Isolation::Reuse)).unwrap();
    let mut fresh = Stage::new(spec(&wat, &[], Limits::default(), Isolation::PerRecord)).unwrap();
    let counts = |s: &mut Stage| {
        (0..3)
            .map(|_| s.process(&record(1)).unwrap().len())
            .collect::<Vec<_>>()
    };
    assert_eq!(counts(&mut reuse), vec![1, 0, 0]);
    assert_eq!(counts(&mut fresh), vec![1, 1, 1]);
}

#[test]
fn state_survives_traps_and_per_record_instances() {
    // A counter in host state: read, increment, write; trap when it reaches 2.
    let imports = r#"(import "weir" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
                     (import "weir" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))"#;
    let items = r#"(data (i32.const 0) "k")"#;
    let body = format!(
        "(drop (call $get (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 4))) \
                (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (i32.const 1))) \
                (drop (call $set (i32.const 0) (i32.const 1) (i32.const 16) (i32.const 4))) \
                (if (i32.eq (i32.load (i32.const 16)) (i32.const 2)) (then (unreachable))) {PASS}"
    );
    for isolation in [Isolation::Reuse, Isolation::PerRecord] {
        let mut s = Stage::new(spec(
            &module(imports, items, &body),
            &[Grant::State],
            Limits::default(),
            isolation,
        ))
        .unwrap();
        assert!(s.process(&record(1)).is_ok());
        assert!(
            matches!(failure(&mut s), StageError::Trap(_)),
            "{isolation:?}"
        );
        assert!(
            s.process(&record(3)).is_ok(),
            "{isolation:?}: the count went on to 3"
        );
        // One key: its 5 bytes plus the per-key overhead.
        assert_eq!(
            (s.state().len(), s.state().bytes()),
            (1, 5 + weir::pipeline::host::STATE_KEY_OVERHEAD)
        );
    }
}

#[test]
fn state_is_bounded() {
    let imports = r#"(import "weir" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))"#;
    let body = format!(
        "(drop (call $set (i32.const 0) (i32.const 8) (i32.const 0) (i32.const 2000))) {PASS}"
    );
    let limits = Limits {
        state_bytes: 1000,
        ..Limits::default()
    };
    let mut s = stage_with(&module(imports, "", &body), &[Grant::State], limits).unwrap();
    assert!(matches!(
        failure(&mut s),
        StageError::HostCall {
            kind: FailureKind::TooLarge,
            call: "state_set",
            ..
        }
    ));
    assert_eq!(s.state().len(), 0);
}

#[test]
fn state_counts_what_each_key_really_costs() {
    // The hostile test's module: many tiny keys. 1 MiB of one-byte keys
    // used to make 262,144 entries and 26 MB of RSS.
    let imports = r#"(import "weir" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))"#;
    let body = format!(
        r#"(local $i i32)
        (block $full (loop $more
            (i32.store (i32.const 0) (local.get $i))
            (br_if $full (i32.lt_s (call $set (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 0)) (i32.const 0)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $more (i32.lt_u (local.get $i) (i32.const 300000)))))
        {PASS}"#
    );
    // About 10,000 host calls: a debug build under qemu-user on a busy
    // machine needs more than the default 2 s deadline, and time is not
    // what this test is about.
    let limits = Limits {
        fuel: 100_000_000,
        deadline: std::time::Duration::from_secs(120),
        ..Limits::default()
    };
    let mut s = stage_with(&module(imports, "", &body), &[Grant::State], limits).unwrap();
    let err = failure(&mut s);
    assert!(
        matches!(
            err,
            StageError::HostCall {
                kind: FailureKind::TooLarge,
                call: "state_set",
                ..
            }
        ),
        "{err:?}"
    );
    let per_key = 4 + weir::pipeline::host::STATE_KEY_OVERHEAD;
    assert_eq!(s.state().len() as u64, (1 << 20) / per_key);
    assert!(s.state().bytes() <= 1 << 20);
}

#[test]
fn guest_logs_are_rate_limited_per_stage_and_drops_counted() {
    // 16 lines per record (the per-record cap) on every record, and a trap
    // after them, so each record also gets a fresh instance: the rate is
    // the stage's, whatever the instances.
    let imports = r#"(import "weir" "log" (func $log (param i32 i32 i32) (result i32)))"#;
    let body = r#"(local $i i32)
        (loop $more
            (drop (call $log (i32.const 2) (i32.const 0) (i32.const 8)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $more (i32.lt_u (local.get $i) (i32.const 16))))
        unreachable"#;
    let mut s = stage_with(&module(imports, "", body), &[Grant::Log], Limits::default()).unwrap();
    let start = std::time::Instant::now();
    let records = 200u64;
    for n in 0..records {
        let _ = s.process(&record(n as i64));
    }
    let seconds = start.elapsed().as_secs() + 1;
    let written = records * 16 - s.logs_dropped();
    assert!(
        written <= seconds * weir::pipeline::host::LOG_LINES_PER_SECOND as u64,
        "{written} lines in at most {seconds} s"
    );
    assert!(s.logs_dropped() > 0);
}

#[test]
fn a_failing_init_refuses_the_module() {
    let wat = module(
        "",
        r#"(func (export "weir_init") (param i32 i32) (result i32) (i32.const 4))"#,
        PASS,
    );
    let err = stage_with(&wat, &[], Limits::default()).err().unwrap();
    assert!(
        matches!(err, LoadError::Init(ref m) if m.contains("status 4")),
        "{err}"
    );
    let looping = module(
        "",
        r#"(func (export "weir_init") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0))"#,
        PASS,
    );
    let err = stage_with(
        &looping,
        &[],
        Limits {
            fuel: 10_000,
            ..Limits::default()
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("out of fuel"), "{err}");
}

#[test]
fn a_start_function_that_loops_is_refused() {
    let wat = module("", "(func $start (loop $l (br $l))) (start $start)", PASS);
    let err = stage_with(
        &wat,
        &[],
        Limits {
            fuel: 10_000,
            ..Limits::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::Instantiate(_)), "{err}");
}

#[test]
fn deep_recursion_traps() {
    let wat = module(
        "",
        "(func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))",
        "(drop (call $r (i32.const 0))) (i32.const 0)",
    );
    let mut s = stage_with(
        &wat,
        &[],
        Limits {
            fuel: 100_000_000,
            ..Limits::default()
        },
    )
    .unwrap();
    assert!(matches!(failure(&mut s), StageError::Trap(_)));
}

#[test]
fn alloc_returning_garbage_is_an_input_error() {
    let wat = module("", "", PASS).replace("(i32.const 1024))", "(i32.const 0))");
    let mut s = stage(&wat);
    assert!(matches!(failure(&mut s), StageError::Input { .. }));
    let wat = module("", "", PASS).replace("(i32.const 1024))", "(i32.const 65530))");
    let mut s = stage(&wat);
    assert!(matches!(failure(&mut s), StageError::Input { .. }));
}

#[test]
fn input_get_and_emit_input_patch_the_payload() {
    let imports = r#"(import "weir" "input_get" (func $get (param i32 i32 i32 i32) (result i32)))
                     (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))"#;
    // key "seq" at 0; patch {"seq": 99, "id": undefined} at 16 (CBOR a2 63 73 65 71 18 63 62 69 64 f7)
    let items =
        r#"(data (i32.const 0) "seq") (data (i32.const 16) "\a2\63\73\65\71\18\63\62\69\64\f7")"#;
    // Fetch "seq" to 32; fail unless it is the 1-byte CBOR 0x07; then emit the patch.
    let body = "(if (i32.ne (call $get (i32.const 0) (i32.const 3) (i32.const 32) (i32.const 8)) (i32.const 1)) (then (return (i32.const 2)))) \
                (if (i32.ne (i32.load8_u (i32.const 32)) (i32.const 7)) (then (return (i32.const 2)))) \
                (call $emit_input (i32.const 16) (i32.const 11))";
    let mut s = stage_with(&module(imports, items, body), &[], Limits::default()).unwrap();
    let out = s
        .process(&record(7))
        .unwrap()
        .iter()
        .next()
        .unwrap()
        .to_vec();
    let rec = Record::from_cbor(&out).unwrap();
    let json = weir::record::cbor_to_json(&rec.payload);
    assert_eq!(json, serde_json::json!({"temp_c": 21.5, "seq": 99}));
    assert_eq!((rec.topic.as_str(), rec.ts), ("sensors/s1/telemetry", 1));
}

#[test]
fn guest_log_lines_over_the_budget_are_counted() {
    // 20 lines in one record: 16 kept, 4 dropped, in reuse mode (no trap).
    let imports = r#"(import "weir" "log" (func $log (param i32 i32 i32) (result i32)))"#;
    let items = r#"(data (i32.const 0) "hi")"#;
    let body = format!(
        "(local $i i32) (local.set $i (i32.const 20)) \
         (loop $l (drop (call $log (i32.const 3) (i32.const 0) (i32.const 2))) \
         (local.set $i (i32.sub (local.get $i) (i32.const 1))) (br_if $l (local.get $i))) {PASS}"
    );
    let mut s = stage_with(
        &module(imports, items, &body),
        &[Grant::Log],
        Limits::default(),
    )
    .unwrap();
    s.process(&record(1)).unwrap();
    assert_eq!(s.logs_dropped(), 4);
    s.process(&record(2)).unwrap();
    assert_eq!(s.logs_dropped(), 8, "the budget is per record");
}

#[test]
fn emit_input_respects_the_output_byte_limit() {
    let imports = r#"(import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))"#;
    let body = "(drop (call $emit_input (i32.const 0) (i32.const 0))) (i32.const 0)";
    let limits = Limits {
        max_output_bytes: 50,
        ..Limits::default()
    };
    let mut s = stage_with(&module(imports, "", body), &[], limits).unwrap();
    assert!(record(1).len() > 50);
    match failure(&mut s) {
        StageError::HostCall {
            call: "emit_input",
            kind: FailureKind::TooLarge,
            detail,
        } => {
            assert!(detail.contains("50 output bytes"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

/// A loop of `n` host calls, each handing the host `bytes` bytes of
/// memory (a 160-page memory, well under the default 16 MiB cap): the
/// hostile pattern of a module that buys megabytes of host work per unit
/// of fuel. `call` is the call, given $p (pointer) and $b (bytes).
fn host_call_loop(imports: &str, call: &str, n: u32, bytes: u32) -> String {
    format!(
        r#"(module
            (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
            (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))
            (import "weir" "input_get" (func $input_get (param i32 i32 i32 i32) (result i32)))
            {imports}
            (memory (export "memory") 160)
            (func (export "weir_abi_v1"))
            (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
            (func (export "weir_transform") (param $ptr i32) (param $len i32) (result i32)
                (local $i i32) (local $p i32) (local $b i32)
                (local.set $p (i32.const 65536))
                (local.set $b (i32.const {bytes}))
                (block $done (loop $next
                    (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
                    (drop {call})
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br $next)))
                (i32.const 0)))"#
    )
}

#[test]
fn host_calls_are_paid_for_in_fuel_by_the_bytes_they_touch() {
    let mb4 = 4 << 20;
    let cases = [
        // A multi-MiB (invalid) patch: the host used to zero-fill input +
        // patch before looking at it, for about one unit of fuel.
        (
            "",
            "(call $emit_input (local.get $p) (local.get $b))",
            Vec::new(),
        ),
        // A multi-MiB record to validate.
        ("", "(call $emit (local.get $p) (local.get $b))", Vec::new()),
        // A multi-MiB key to look up (state).
        (
            r#"(import "weir" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))"#,
            "(call $state_get (local.get $p) (local.get $b) (i32.const 0) (i32.const 16))",
            vec![Grant::State],
        ),
        (
            r#"(import "weir" "state_set" (func $state_set (param i32 i32 i32 i32) (result i32)))"#,
            "(call $state_set (local.get $p) (local.get $b) (i32.const 0) (i32.const 16))",
            vec![Grant::State],
        ),
        // A multi-MiB key to look for in the input.
        (
            "",
            "(call $input_get (local.get $p) (local.get $b) (i32.const 0) (i32.const 16))",
            Vec::new(),
        ),
    ];
    for (imports, call, grants) in cases {
        let wat = host_call_loop(imports, call, 100_000, mb4);
        let limits = Limits {
            fuel: 1_000_000,
            ..Limits::default()
        };
        let mut s = stage_with(&wat, &grants, limits).expect("loads");
        let e = failure(&mut s);
        assert_eq!(e.kind(), FailureKind::Fuel, "{call}: {e}");
        // One 4 MiB call costs about 1M fuel: at most one call was made
        // before the budget ran out.
        assert!(s.last_fuel() <= 1_000_000, "{call}");
    }
}

#[test]
fn small_host_calls_stay_cheap_and_deterministic() {
    // 100 emits of the input: each costs the call plus its bytes / 4.
    let wat = host_call_loop("", "(call $emit (local.get $ptr) (local.get $len))", 60, 0);
    let limits = Limits {
        max_outputs: 100,
        ..Limits::default()
    };
    let mut s = stage_with(&wat, &[], limits).unwrap();
    let len = record(1).len() as u64;
    s.process(&record(1)).unwrap();
    let first = s.last_fuel();
    s.process(&record(1)).unwrap();
    assert_eq!(s.last_fuel(), first, "the same record costs the same fuel");
    let host =
        60 * (weir::pipeline::host::HOST_CALL_FUEL + len / weir::pipeline::host::BYTES_PER_FUEL);
    assert!(
        first >= host && first < host + 2_000,
        "{first} vs host part {host}"
    );
}

#[test]
fn a_record_past_its_deadline_fails_while_the_host_works() {
    // Cheap host calls forever, fuel enough for minutes: the deadline ends it.
    let wat = host_call_loop(
        "",
        "(call $input_get (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0))",
        u32::MAX,
        0,
    );
    let limits = Limits {
        fuel: u64::MAX / 2,
        deadline: std::time::Duration::from_millis(50),
        ..Limits::default()
    };
    let mut s = stage_with(&wat, &[], limits).unwrap();
    let e = failure(&mut s);
    assert_eq!(e.kind(), FailureKind::Deadline, "{e}");
    assert!(e.to_string().contains("50ms"), "{e}");
    // The stage goes on: the next record fails the same way, not wedged.
    assert_eq!(failure(&mut s).kind(), FailureKind::Deadline);
}

// WASI preview 1, the subset: loaded behind grants, everything else
// refused by name; and failures that carry the module's reason.

const WASI_IMPORTS: &str = r#"
    (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
    (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env (param i32 i32) (result i32)))
"#;

/// An iovec at 4000 for `text` placed at 4100.
fn iovec(text: &str) -> String {
    format!(
        r#"(data (i32.const 4000) "\04\10\00\00{}\00\00\00") (data (i32.const 4100) "{text}")"#,
        // The length in bytes (WAT's `\n` is one), one byte: the texts
        // here are short.
        format_args!("\\{:02x}", text.replace("\\n", "\n").len())
    )
}

#[test]
fn the_wasi_subset_loads_with_its_grants_and_is_refused_without_one() {
    let wat = module(WASI_IMPORTS, "", PASS);
    let all = [Grant::Log, Grant::Clock, Grant::Random];
    assert!(stage_with(&wat, &all, Limits::default()).is_ok());
    let err = stage_with(&wat, &[Grant::Log, Grant::Clock], Limits::default())
        .err()
        .expect("refused without `random`")
        .to_string();
    assert!(err.contains("wasi_snapshot_preview1.random_get"), "{err}");
    assert!(err.contains("needs grant `random`"), "{err}");
    let err = stage_with(&wat, &[Grant::Clock, Grant::Random], Limits::default())
        .err()
        .expect("refused without `log`")
        .to_string();
    assert!(err.contains("fd_write") && err.contains("`log`"), "{err}");
}

#[test]
fn a_wasi_function_outside_the_subset_is_refused_by_name() {
    let imports = r#"(import "wasi_snapshot_preview1" "path_open"
        (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#;
    let err = stage_with(&module(imports, "", PASS), &[], Limits::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("wasi_snapshot_preview1.path_open"), "{err}");
    assert!(err.contains("not provided"), "{err}");
    for offered in ["fd_write", "clock_time_get", "random_get", "proc_exit"] {
        assert!(err.contains(offered), "{err}");
    }
    assert!(err.contains("no files or sockets"), "{err}");
    // A wrong signature is refused too, with both signatures.
    let imports =
        r#"(import "wasi_snapshot_preview1" "random_get" (func (param i32) (result i32)))"#;
    let err = stage_with(
        &module(imports, "", PASS),
        &[Grant::Random],
        Limits::default(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn wasi_clocks_randomness_args_and_environ_reach_the_module() {
    // Status 0 only if: 16 random bytes are not all zero, the realtime
    // clock is after 2023 in nanoseconds, the monotonic clock works, a
    // CPU-time clock is refused (EINVAL, 28), a pointer outside memory is
    // EFAULT (21), and there are no arguments and no environment.
    let body = r#"
        (if (call $random (i32.const 2048) (i32.const 16)) (then (return (i32.const 10))))
        (if (i64.eqz (i64.or (i64.load (i32.const 2048)) (i64.load (i32.const 2056))))
            (then (return (i32.const 11))))
        (if (call $clock (i32.const 0) (i64.const 0) (i32.const 2100)) (then (return (i32.const 12))))
        (if (i64.lt_u (i64.load (i32.const 2100)) (i64.const 1700000000000000000))
            (then (return (i32.const 13))))
        (if (call $clock (i32.const 1) (i64.const 0) (i32.const 2108)) (then (return (i32.const 14))))
        (if (i32.ne (call $clock (i32.const 2) (i64.const 0) (i32.const 2116)) (i32.const 28))
            (then (return (i32.const 15))))
        (if (i32.ne (call $random (i32.const 65530) (i32.const 16)) (i32.const 21))
            (then (return (i32.const 16))))
        (i32.store (i32.const 2200) (i32.const 7))
        (if (call $args (i32.const 2200) (i32.const 2204)) (then (return (i32.const 17))))
        (if (i32.load (i32.const 2200)) (then (return (i32.const 18))))
        (if (call $env (i32.const 2200) (i32.const 2204)) (then (return (i32.const 19))))
        (drop (call $emit (local.get $ptr) (local.get $len)))
        (i32.const 0)"#;
    let all = [Grant::Log, Grant::Clock, Grant::Random];
    let mut s = stage_with(&module(WASI_IMPORTS, "", body), &all, Limits::default()).unwrap();
    let out = s.process(&record(1)).map(|o| o.len());
    assert_eq!(out, Ok(1));
}

#[test]
fn wasi_stdout_goes_to_the_log_and_other_fds_are_ebadf() {
    // fd_write to stdout succeeds and reports the bytes written; fd 3 is
    // EBADF (8), returned as the status so the test sees it.
    let text = "hello from wasi\\n";
    let body = r#"
        (if (call $fd_write (i32.const 1) (i32.const 4000) (i32.const 1) (i32.const 2300))
            (then (return (i32.const 20))))
        (if (i32.ne (i32.load (i32.const 2300)) (i32.const 16)) (then (return (i32.const 21))))
        (call $fd_write (i32.const 3) (i32.const 4000) (i32.const 1) (i32.const 2300))"#;
    let mut s = stage_with(
        &module(WASI_IMPORTS, &iovec(text), body),
        &[Grant::Log, Grant::Clock, Grant::Random],
        Limits::default(),
    )
    .unwrap();
    match failure(&mut s) {
        StageError::Status { code: 8, .. } => {}
        e => panic!("expected status 8 (EBADF), got {e}"),
    }
}

#[test]
fn proc_exit_fails_the_record_with_its_code_and_the_last_stderr_line() {
    let body = r#"
        (if (i32.eqz (global.get $calls)) (then
            (global.set $calls (i32.const 1))
            (drop (call $fd_write (i32.const 2) (i32.const 4000) (i32.const 1) (i32.const 2300)))
            (call $exit (i32.const 3))))
        (drop (call $emit (local.get $ptr) (local.get $len)))
        (i32.const 0)"#;
    let mut s = stage_with(
        &module(WASI_IMPORTS, &iovec("sensor 7 out of range\\n"), body),
        &[Grant::Log, Grant::Clock, Grant::Random],
        Limits::default(),
    )
    .unwrap();
    let e = failure(&mut s);
    assert_eq!(
        e,
        StageError::Exit {
            code: 3,
            reason: Some("sensor 7 out of range".into())
        }
    );
    assert_eq!(e.kind(), FailureKind::Exit);
    assert_eq!(
        e.to_string(),
        "module exited with code 3 (WASI proc_exit): sensor 7 out of range"
    );
    // The instance that exited is replaced: the next record runs on a
    // fresh one (which exits again, deterministically), and the stage
    // goes on.
    assert!(matches!(failure(&mut s), StageError::Exit { code: 3, .. }));
    assert_eq!(s.metrics().failed(FailureKind::Exit), 2);
}

#[test]
fn fail_gives_the_record_its_reason_and_an_error_log_line_is_the_fallback() {
    // `fail` then status 0: failed all the same, as status 2, with the reason.
    let fail_import = r#"(import "weir" "fail" (func $fail (param i32 i32) (result i32)))"#;
    let body = "(drop (call $fail (i32.const 4100) (i32.const 22))) (i32.const 0)";
    let items = r#"(data (i32.const 4100) "temp_c is not a number")"#;
    let mut s = stage(&module(fail_import, items, body));
    let e = failure(&mut s);
    assert_eq!(
        e,
        StageError::Status {
            code: 2,
            name: "transform",
            reason: Some("temp_c is not a number".into())
        }
    );
    assert_eq!(
        e.to_string(),
        "module failed: temp_c is not a number (status 2, transform)"
    );
    // A failure status after a line logged at error level: that line.
    let log_import = r#"(import "weir" "log" (func $log (param i32 i32 i32) (result i32)))"#;
    let body = "(drop (call $log (i32.const 0) (i32.const 4100) (i32.const 6))) (i32.const 1)";
    let mut s = stage_with(
        &module(log_import, items, body),
        &[Grant::Log],
        Limits::default(),
    )
    .unwrap();
    assert_eq!(
        failure(&mut s).to_string(),
        "module failed: temp_c (status 1, input)"
    );
    // Without either: the status alone, as before.
    let mut s = stage(&module("", "", "(i32.const 2)"));
    assert_eq!(
        failure(&mut s).to_string(),
        "module returned status 2 (transform)"
    );
}

/// A module that calls `serial_send` `n` times per record with the
/// command bytes at offset 32 (`len` of them), then passes the record on.
fn serial_sender(n: u32, command: &str, len: u32) -> String {
    module(
        r#"(import "weir" "serial_send" (func $send (param i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(r#"(data (i32.const 16) "serial0") (data (i32.const 32) "{command}") (global $n (mut i32) (i32.const 0))"#),
        &format!(
            "(global.set $n (i32.const 0))
             (loop $l
               (if (i32.lt_u (global.get $n) (i32.const {n}))
                 (then
                   (if (i32.lt_s (call $send (i32.const 16) (i32.const 7) (i32.const 4) (i32.const 32) (i32.const {len})) (i32.const 0))
                     (then (return (i32.const 0))))
                   (global.set $n (i32.add (global.get $n) (i32.const 1)))
                   (br $l))))
             {PASS}"
        ),
    )
}

#[test]
fn serial_send_needs_its_grant_checks_the_command_and_is_bounded() {
    // {"cmd": "set_interval", "ms": 1000}
    let set = r#"\a2\63cmd\6cset_interval\62ms\19\03\e8"#;
    let wat = serial_sender(1, set, 24);
    // Without the grant: refused at load, naming the import and the grant.
    let e = stage_with(&wat, &[], Limits::default())
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("serial_send") && e.to_string().contains("serial"),
        "{e}"
    );
    // With it: the command is held for after the record.
    let mut s = stage_with(&wat, &[Grant::Serial], Limits::default()).unwrap();
    assert_eq!(s.process(&record(1)).unwrap().len(), 1);
    assert_eq!(
        s.downlink(),
        &[weir::pipeline::Downlink {
            source: "serial0".into(),
            sensor: 4,
            command: weir_sensor::Command::SetInterval { ms: 1000 },
        }]
    );
    // A command no node knows fails the record with the reason.
    let mut s = stage_with(
        &serial_sender(1, r#"\a1\63cmd\66reboot"#, 12),
        &[Grant::Serial],
        Limits::default(),
    )
    .unwrap();
    let e = failure(&mut s);
    assert_eq!(e.kind(), FailureKind::BadHostCall);
    assert!(e.to_string().contains("unknown command"), "{e}");
    // At most four per record.
    let mut s = stage_with(
        &serial_sender(5, set, 24),
        &[Grant::Serial],
        Limits::default(),
    )
    .unwrap();
    let e = failure(&mut s);
    assert_eq!(e.kind(), FailureKind::TooManyOutputs);
    assert!(e.to_string().contains("more than 4 commands"), "{e}");
}
