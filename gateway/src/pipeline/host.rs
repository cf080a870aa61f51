//! The host side of ABI v1: the functions a module may import, and the state
//! each store carries. Host functions never panic. A bad argument returns a
//! negative code *and* fails the record (the first such failure is kept in
//! `HostState::failure`), so a guest that ignores the code cannot hide it.
//!
//! Every call is paid for in fuel before any work: [`HOST_CALL_FUEL`] plus
//! one unit per [`BYTES_PER_FUEL`] bytes the call reads, scans, copies or
//! writes, so a module cannot buy megabytes of host work for a few units.
//! A call that cannot be paid for ends the record as out of fuel (a trap,
//! as running out in the guest's own code does). Arguments are checked
//! against the limits before anything is allocated. The record's
//! wall-clock deadline is checked too, while the host works.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use wasmi::{Caller, Engine, Linker, Memory, StoreLimits, TrapCode};
use weir_abi::hostcall::{
    E_BOUNDS, E_INVALID, E_MALFORMED, E_NOT_FOUND, E_TOO_LARGE, E_TOO_MANY_OUTPUTS,
};
use weir_abi::{IMPORT_MODULE, imports, level};

use super::error::{FailureKind, StageError};
use super::{Grant, Limits};

/// Most log lines one record may write; more are dropped and counted.
pub const LOG_LINES_PER_RECORD: u32 = 16;
/// Most log lines one stage may write per second, all records together;
/// more are dropped and counted (`logs_dropped`).
pub const LOG_LINES_PER_SECOND: u32 = 50;
/// What one key costs in state besides its bytes: the hash table's slot
/// (two boxed slices, 32 bytes, at a load factor as low as 7/16 right
/// after it grows) and two heap allocations' headers. Counted against
/// `state_bytes`, so the limit bounds what state really costs: 1 MiB of
/// one-byte keys used to take 26 MB.
pub const STATE_KEY_OVERHEAD: u64 = 96;
/// Longest log line kept, in bytes.
pub const LOG_LINE_MAX: usize = 1024;

/// Fuel every host call costs, whatever it does.
pub const HOST_CALL_FUEL: u64 = weir_abi::fuel::HOST_CALL;
/// Bytes of host work one unit of fuel pays for. At wasmi's speed one unit
/// is about one guest instruction, about a nanosecond; the host handles
/// a few bytes in that time.
pub const BYTES_PER_FUEL: u64 = weir_abi::fuel::BYTES_PER_FUEL;

/// Records emitted during one call, stored back to back.
pub use weir_abi::records::Records as Outputs;

/// A module's key/value state: survives records and instances.
#[derive(Debug, Default)]
pub struct KvState {
    map: HashMap<Box<[u8]>, Box<[u8]>>,
    bytes: u64,
}

impl KvState {
    /// Bytes charged: keys plus values plus [`STATE_KEY_OVERHEAD`] per key.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What each store carries for its host functions.
pub struct HostState {
    pub(crate) limiter: StoreLimits,
    pub(crate) memory: Option<Memory>,
    pub(crate) outputs: Outputs,
    /// The record being processed: re-emitted unchanged it needs no check;
    /// `input_get` and `emit_input` read it.
    pub(crate) input: Vec<u8>,
    /// Where its payload lies, found on first use in a call.
    pub(crate) payload: Option<Option<(usize, usize)>>,
    pub(crate) failure: Option<StageError>,
    pub(crate) kv: KvState,
    pub(crate) limits: Limits,
    pub(crate) stage: Arc<str>,
    pub(crate) log_lines: u32,
    pub(crate) logs_dropped: u64,
    /// The current second's start, and lines written in it.
    pub(crate) log_window: (Instant, u32),
    /// When the record must be done by (checked by host calls).
    pub(crate) deadline: Option<Instant>,
    /// What the module gave `fail` for this record.
    pub(crate) reason: Option<String>,
    /// The last line the record logged at error level or wrote to stderr:
    /// the reason of a failure status when the module gave none.
    pub(crate) error_line: Option<String>,
    /// WASI stdout and stderr: the line each is writing, until its newline.
    pub(crate) wasi_lines: [Vec<u8>; 2],
    /// Downlink commands the record asked for (`serial_send`), sent after
    /// it succeeds.
    pub(crate) downlink: Vec<Downlink>,
}

/// A downlink command a stage asked for with `serial_send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    /// The serial source the sensor is on.
    pub source: String,
    /// The sensor.
    pub sensor: u32,
    /// The command.
    pub command: weir_sensor::Command,
}

/// Most `serial_send` calls one record may make.
pub const MAX_DOWNLINK_PER_RECORD: usize = 4;

impl HostState {
    /// State for a new store; `kv` and `logs_dropped` carry over from the
    /// store it replaces.
    pub(crate) fn new(stage: Arc<str>, limits: Limits, kv: KvState, logs_dropped: u64) -> Self {
        let limiter = wasmi::StoreLimitsBuilder::new()
            .memory_size(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX))
            .instances(1)
            .memories(1)
            .tables(1)
            .table_elements(10_000)
            .trap_on_grow_failure(false)
            .build();
        HostState {
            limiter,
            memory: None,
            outputs: Outputs::default(),
            input: Vec::new(),
            payload: None,
            failure: None,
            kv,
            limits,
            stage,
            log_lines: 0,
            logs_dropped,
            log_window: (Instant::now(), 0),
            deadline: None,
            reason: None,
            error_line: None,
            wasi_lines: [Vec::new(), Vec::new()],
            downlink: Vec::new(),
        }
    }

    /// Prepare for the next call on `input`.
    pub(crate) fn reset_call(&mut self, input: &[u8]) {
        self.deadline = Some(Instant::now() + self.limits.deadline);
        self.input.clear();
        self.input.extend_from_slice(input);
        self.payload = None;
        self.outputs.clear();
        self.failure = None;
        self.log_lines = 0;
        self.reason = None;
        self.error_line = None;
        self.wasi_lines.iter_mut().for_each(Vec::clear);
        self.downlink.clear();
    }

    /// Log `bytes` as one guest line at `lvl`, within the per-record and
    /// per-second line limits (over them: dropped and counted).
    pub(crate) fn log_line(&mut self, lvl: i32, bytes: &[u8]) {
        let now = Instant::now();
        if now.duration_since(self.log_window.0) >= std::time::Duration::from_secs(1) {
            self.log_window = (now, 0);
        }
        let bytes = &bytes[..bytes.len().min(LOG_LINE_MAX)];
        let msg = String::from_utf8_lossy(bytes);
        if lvl == level::ERROR {
            self.error_line = Some(msg.clone().into_owned());
        }
        if self.log_lines >= LOG_LINES_PER_RECORD || self.log_window.1 >= LOG_LINES_PER_SECOND {
            self.logs_dropped += 1;
            return;
        }
        self.log_lines += 1;
        self.log_window.1 += 1;
        let stage = &*self.stage;
        match lvl {
            level::ERROR => tracing::error!(target: "weir::guest", stage, "{msg}"),
            level::WARN => tracing::warn!(target: "weir::guest", stage, "{msg}"),
            level::INFO => tracing::info!(target: "weir::guest", stage, "{msg}"),
            level::DEBUG => tracing::debug!(target: "weir::guest", stage, "{msg}"),
            _ => tracing::trace!(target: "weir::guest", stage, "{msg}"),
        }
    }

    fn payload_span(&mut self) -> Option<(usize, usize)> {
        *self
            .payload
            .get_or_insert_with(|| weir_abi::patch::payload_span(&self.input))
    }

    /// Check the per-record output limits before adding a record of `len` bytes.
    fn check_output(&mut self, call: &'static str, len: usize) -> Result<(), i32> {
        if self.outputs.len() >= self.limits.max_outputs as usize {
            let detail = format!(
                "more than {} outputs for one record",
                self.limits.max_outputs
            );
            return Err(self.fail(
                call,
                E_TOO_MANY_OUTPUTS,
                FailureKind::TooManyOutputs,
                detail,
            ));
        }
        if (self.outputs.bytes() + len) as u64 > self.limits.max_output_bytes {
            let detail = format!(
                "more than {} output bytes for one record",
                self.limits.max_output_bytes
            );
            return Err(self.fail(call, E_TOO_LARGE, FailureKind::TooLarge, detail));
        }
        Ok(())
    }

    fn fail(&mut self, call: &'static str, code: i32, kind: FailureKind, detail: String) -> i32 {
        if self.failure.is_none() {
            self.failure = Some(StageError::HostCall { call, detail, kind });
        }
        code
    }
}

/// Pay for a host call that handles `bytes` bytes, before doing it; past
/// the record's deadline, end the record. Err: the trap that ends it.
pub(super) fn charge(caller: &mut Caller<'_, HostState>, bytes: usize) -> Result<(), wasmi::Error> {
    let cost = HOST_CALL_FUEL.saturating_add(bytes as u64 / BYTES_PER_FUEL);
    let fuel = caller.get_fuel()?;
    if cost > fuel {
        caller.set_fuel(0)?;
        return Err(TrapCode::OutOfFuel.into());
    }
    caller.set_fuel(fuel - cost)?;
    let st = caller.data_mut();
    if st.deadline.is_some_and(|d| Instant::now() > d) {
        let limit = st.limits.deadline;
        st.failure = Some(StageError::Deadline { limit });
        return Err(wasmi::Error::new("the record's deadline passed"));
    }
    Ok(())
}

/// The length argument of a call as a size (negative: 0, refused later by
/// the bounds check, which costs nothing).
pub(super) fn size(len: i32) -> usize {
    usize::try_from(len).unwrap_or(0)
}

/// `ptr..ptr+len` if it lies inside `mem`.
pub(super) fn range(mem: &[u8], ptr: i32, len: i32) -> Option<Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= mem.len()).then_some(start..end)
}

/// Copy `value` to `mem[dest]` if it fits, and return its length: the ABI's
/// "length, copied only if it fits" for `state_get` and `input_get`.
fn copy_out(mem: &mut [u8], dest: Range<usize>, value: &[u8]) -> i32 {
    if let Some(slot) = mem.get_mut(dest.start..dest.start + value.len())
        && value.len() <= dest.len()
    {
        slot.copy_from_slice(value);
    }
    i32::try_from(value.len()).unwrap_or(i32::MAX)
}

pub(super) fn memory<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> (&'a mut [u8], &'a mut HostState) {
    match caller.data().memory {
        Some(m) => m.data_and_store_mut(caller),
        // Only reachable if a start function calls the host before the memory
        // is known; treat it as an empty memory (every access is out of bounds).
        None => (&mut [], caller.data_mut()),
    }
}

macro_rules! bounds {
    ($state:expr, $call:expr, $mem:expr, $ptr:expr, $len:expr) => {
        match range($mem, $ptr, $len) {
            Some(r) => r,
            None => {
                let detail = format!(
                    "ptr {} len {} outside memory of {} bytes",
                    $ptr as u32,
                    $len as u32,
                    $mem.len()
                );
                return $state.fail($call, E_BOUNDS, FailureKind::BadHostCall, detail);
            }
        }
    };
}

type HostResult = Result<i32, wasmi::Error>;

fn emit(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult {
    charge(&mut caller, size(len))?;
    Ok(emit_paid(caller, ptr, len))
}

fn emit_paid(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let r = bounds!(st, imports::EMIT, mem, ptr, len);
    if let Err(code) = st.check_output(imports::EMIT, r.len()) {
        return code;
    }
    let bytes = &mem[r];
    // The input was valid; a module passing it on unchanged needs no check.
    if bytes != st.input.as_slice()
        && let Err(why) = weir_abi::record::validate(bytes)
    {
        let detail = format!("emitted record is malformed: {why}");
        return st.fail(imports::EMIT, E_MALFORMED, FailureKind::Malformed, detail);
    }
    st.outputs.push(bytes);
    0
}

fn input_get(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vc: i32) -> HostResult {
    // The lookup scans the input; the value copied is part of it.
    let scan = caller.data().input.len();
    charge(&mut caller, size(kl) + scan)?;
    Ok(input_get_paid(caller, kp, kl, vp, vc))
}

fn input_get_paid(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vc: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let k = bounds!(st, imports::INPUT_GET, mem, kp, kl);
    let v = bounds!(st, imports::INPUT_GET, mem, vp, vc);
    let Some(payload) = st.payload_span() else {
        return E_NOT_FOUND;
    };
    let Some(value) = weir_abi::patch::field(&st.input, payload, &mem[k]) else {
        return E_NOT_FOUND;
    };
    copy_out(mem, v, value)
}

fn emit_input(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult {
    // The patch is validated, the input read, the output written: each at
    // most input + patch bytes.
    let input = caller.data().input.len();
    charge(&mut caller, 2 * (input + size(len)))?;
    Ok(emit_input_paid(caller, ptr, len))
}

fn emit_input_paid(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let r = bounds!(st, imports::EMIT_INPUT, mem, ptr, len);
    let patch = &mem[r];
    if let Err(code) = st.check_output(imports::EMIT_INPUT, 0) {
        return code;
    }
    // Never more room than the output budget has left (+1, so an output
    // that does not fit is seen as too large, not as a bad patch).
    let left = (st.limits.max_output_bytes as usize).saturating_sub(st.outputs.bytes());
    let max = weir_abi::patch::max_output_len(&st.input, patch).min(left.saturating_add(1));
    let input = &st.input;
    let written = st.outputs.push_with(max, |buf| {
        let mut w = weir_abi::cbor::Writer::new(buf);
        weir_abi::patch::apply(input, patch, &mut w).map(|()| w.len())
    });
    match written {
        Ok(n) => {
            // The size is known only once written: undo, and fail as emit would.
            if (st.outputs.bytes() as u64) > st.limits.max_output_bytes {
                st.outputs.pop();
                if let Err(code) = st.check_output(imports::EMIT_INPUT, n) {
                    return code;
                }
            }
            0
        }
        Err("output buffer too small") => {
            let detail = format!(
                "more than {} output bytes for one record",
                st.limits.max_output_bytes
            );
            st.fail(
                imports::EMIT_INPUT,
                E_TOO_LARGE,
                FailureKind::TooLarge,
                detail,
            )
        }
        Err(why) => st.fail(
            imports::EMIT_INPUT,
            E_MALFORMED,
            FailureKind::Malformed,
            format!("bad patch: {why}"),
        ),
    }
}

fn log(mut caller: Caller<'_, HostState>, lvl: i32, ptr: i32, len: i32) -> HostResult {
    charge(&mut caller, size(len).min(LOG_LINE_MAX))?;
    Ok(log_paid(caller, lvl, ptr, len))
}

fn log_paid(mut caller: Caller<'_, HostState>, lvl: i32, ptr: i32, len: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let r = bounds!(st, imports::LOG, mem, ptr, len);
    if !(level::ERROR..=level::TRACE).contains(&lvl) {
        return st.fail(
            imports::LOG,
            E_INVALID,
            FailureKind::BadHostCall,
            format!("unknown log level {lvl}"),
        );
    }
    st.log_line(lvl, &mem[r.start..r.end.min(r.start + LOG_LINE_MAX)]);
    0
}

/// Longest reason kept from `fail`, in bytes.
pub const REASON_MAX: usize = 1024;

fn fail(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult {
    charge(&mut caller, size(len).min(REASON_MAX))?;
    Ok(fail_paid(caller, ptr, len))
}

fn fail_paid(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let r = bounds!(st, imports::FAIL, mem, ptr, len);
    if st.reason.is_none() {
        let bytes = &mem[r.start..r.end.min(r.start + REASON_MAX)];
        st.reason = Some(String::from_utf8_lossy(bytes).into_owned());
    }
    0
}

fn clock_now_ms(mut caller: Caller<'_, HostState>) -> Result<i64, wasmi::Error> {
    charge(&mut caller, 0)?;
    Ok(crate::record::now_ms() as i64)
}

fn state_get(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vc: i32) -> HostResult {
    charge(&mut caller, size(kl))?;
    // The copy: the value's length if the buffer takes it, else nothing.
    let copy = {
        let (mem, st) = memory(&mut caller);
        range(mem, kp, kl)
            .and_then(|k| st.kv.map.get(&mem[k]))
            .map_or(0, |v| if v.len() <= size(vc) { v.len() } else { 0 })
    };
    charge(&mut caller, copy)?;
    Ok(state_get_paid(caller, kp, kl, vp, vc))
}

fn state_get_paid(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vc: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let k = bounds!(st, imports::STATE_GET, mem, kp, kl);
    let v = bounds!(st, imports::STATE_GET, mem, vp, vc);
    let Some(value) = st.kv.map.get(&mem[k]) else {
        return E_NOT_FOUND;
    };
    copy_out(mem, v, value)
}

fn state_set(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32) -> HostResult {
    charge(&mut caller, size(kl) + size(vl))?;
    Ok(state_set_paid(caller, kp, kl, vp, vl))
}

fn state_set_paid(mut caller: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let k = bounds!(st, imports::STATE_SET, mem, kp, kl);
    let v = bounds!(st, imports::STATE_SET, mem, vp, vl);
    let (key, value) = (&mem[k], &mem[v]);
    let cost = |k: &[u8], v: &[u8]| (k.len() + v.len()) as u64 + STATE_KEY_OVERHEAD;
    let old = st.kv.map.get(key).map_or(0, |old| cost(key, old));
    let new_total = st.kv.bytes - old + cost(key, value);
    if new_total > st.limits.state_bytes {
        let detail = format!(
            "state would grow to {new_total} bytes, limit {}",
            st.limits.state_bytes
        );
        return st.fail(
            imports::STATE_SET,
            E_TOO_LARGE,
            FailureKind::TooLarge,
            detail,
        );
    }
    st.kv.bytes = new_total;
    match st.kv.map.get_mut(key) {
        Some(slot) if slot.len() == value.len() => slot.copy_from_slice(value),
        Some(slot) => *slot = value.into(),
        None => {
            st.kv.map.insert(key.into(), value.into());
        }
    }
    0
}

fn state_delete(mut caller: Caller<'_, HostState>, kp: i32, kl: i32) -> HostResult {
    charge(&mut caller, size(kl))?;
    Ok(state_delete_paid(caller, kp, kl))
}

fn state_delete_paid(mut caller: Caller<'_, HostState>, kp: i32, kl: i32) -> i32 {
    let (mem, st) = memory(&mut caller);
    let k = bounds!(st, imports::STATE_DELETE, mem, kp, kl);
    let klen = k.len();
    match st.kv.map.remove(&mem[k]) {
        Some(v) => {
            st.kv.bytes -= (klen + v.len()) as u64 + STATE_KEY_OVERHEAD;
            0
        }
        None => E_NOT_FOUND,
    }
}

fn serial_send(
    mut caller: Caller<'_, HostState>,
    sp: i32,
    sl: i32,
    sensor: i32,
    cp: i32,
    cl: i32,
) -> HostResult {
    charge(&mut caller, size(sl) + size(cl))?;
    Ok(serial_send_paid(caller, sp, sl, sensor, cp, cl))
}

fn serial_send_paid(
    mut caller: Caller<'_, HostState>,
    sp: i32,
    sl: i32,
    sensor: i32,
    cp: i32,
    cl: i32,
) -> i32 {
    let (mem, st) = memory(&mut caller);
    let s = bounds!(st, imports::SERIAL_SEND, mem, sp, sl);
    let c = bounds!(st, imports::SERIAL_SEND, mem, cp, cl);
    let Ok(source) = std::str::from_utf8(&mem[s]) else {
        let detail = "the source name is not UTF-8".to_string();
        return st.fail(
            imports::SERIAL_SEND,
            E_INVALID,
            FailureKind::BadHostCall,
            detail,
        );
    };
    if source.is_empty() || source.len() > 64 {
        let detail = format!("source name of {} bytes (1 to 64)", source.len());
        return st.fail(
            imports::SERIAL_SEND,
            E_INVALID,
            FailureKind::BadHostCall,
            detail,
        );
    }
    let command = match weir_sensor::Command::parse(&mem[c]) {
        Ok(cmd) => cmd,
        Err((why, _)) => {
            let detail = format!("{} (ping, identify, set_interval with ms)", why.as_str());
            return st.fail(
                imports::SERIAL_SEND,
                E_INVALID,
                FailureKind::BadHostCall,
                detail,
            );
        }
    };
    if st.downlink.len() >= MAX_DOWNLINK_PER_RECORD {
        let detail = format!("more than {MAX_DOWNLINK_PER_RECORD} commands for one record");
        return st.fail(
            imports::SERIAL_SEND,
            E_TOO_MANY_OUTPUTS,
            FailureKind::TooManyOutputs,
            detail,
        );
    }
    st.downlink.push(Downlink {
        source: source.to_owned(),
        sensor: sensor as u32,
        command,
    });
    0
}

/// A linker that defines what every module may import (`emit`,
/// `input_get`, `emit_input`, `fail`, the WASI functions that need no
/// grant) and the imports of the granted capabilities only.
pub(crate) fn linker(engine: &Engine, grants: &[Grant]) -> Linker<HostState> {
    let mut l = Linker::new(engine);
    let m = IMPORT_MODULE;
    let defined = "each import is defined once";
    l.func_wrap(m, imports::EMIT, emit).expect(defined);
    l.func_wrap(m, imports::INPUT_GET, input_get)
        .expect(defined);
    l.func_wrap(m, imports::FAIL, fail).expect(defined);
    l.func_wrap(m, imports::EMIT_INPUT, emit_input)
        .expect(defined);
    for g in grants {
        match g {
            Grant::Log => {
                l.func_wrap(m, imports::LOG, log).expect(defined);
            }
            Grant::Clock => {
                l.func_wrap(m, imports::CLOCK_NOW_MS, clock_now_ms)
                    .expect(defined);
            }
            Grant::State => {
                l.func_wrap(m, imports::STATE_GET, state_get)
                    .expect(defined);
                l.func_wrap(m, imports::STATE_SET, state_set)
                    .expect(defined);
                l.func_wrap(m, imports::STATE_DELETE, state_delete)
                    .expect(defined);
            }
            Grant::Random => {}
            Grant::Serial => {
                l.func_wrap(m, imports::SERIAL_SEND, serial_send)
                    .expect(defined);
            }
        }
    }
    super::wasi::define(&mut l, grants);
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_overflow_and_bounds() {
        let mem = [0u8; 100];
        assert_eq!(range(&mem, 0, 100), Some(0..100));
        assert_eq!(range(&mem, 100, 0), Some(100..100));
        assert_eq!(range(&mem, 1, 100), None);
        assert_eq!(range(&mem, -1, 1), None);
        assert_eq!(range(&mem, 10, -1), None);
    }
}
