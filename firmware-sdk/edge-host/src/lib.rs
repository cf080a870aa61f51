#![doc = include_str!("../README.md")]
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use wasmi::{
    Caller, Config, Engine, Instance, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, TypedFunc,
};
use weir_abi::records::Records;
use weir_abi::{exports, fuel, hostcall, imports, status};

/// Capabilities a stage may be granted (the subset a node provides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `log`: lines go to the firmware's callback.
    Log,
    /// `state_get`, `state_set`, `state_delete`.
    State,
}

/// Per-stage limits, as the gateway's (`firmware-sdk/ABI.md`, section 6).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel per record.
    pub fuel: u64,
    /// Cap on linear memory, bytes.
    pub memory_bytes: usize,
    /// Records emitted per input.
    pub max_outputs: usize,
    /// Bytes emitted per input.
    pub max_output_bytes: usize,
    /// Key/value state, bytes (keys, values and 96 per key).
    pub state_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 1_000_000,
            memory_bytes: 256 * 1024,
            max_outputs: 8,
            max_output_bytes: 4096,
            state_bytes: 16 * 1024,
        }
    }
}

/// Why a module was refused or a record failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a valid module, or it does not instantiate.
    Load(String),
    /// An import this host does not provide, or not granted.
    Import(String),
    /// `weir_init` returned a failure status.
    Init(i32),
    /// The record ran out of fuel.
    OutOfFuel,
    /// The module trapped.
    Trap(String),
    /// The transform returned a failure status (with its reason, if any).
    Status(i32, Option<String>),
    /// A host call was misused (bounds, limits, malformed output).
    HostCall(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Load(e) => write!(f, "module refused: {e}"),
            Error::Import(e) => write!(f, "import refused: {e}"),
            Error::Init(s) => write!(f, "weir_init returned status {s}"),
            Error::OutOfFuel => f.write_str("out of fuel"),
            Error::Trap(e) => write!(f, "trap: {e}"),
            Error::Status(s, Some(r)) => write!(f, "module failed: {r} (status {s})"),
            Error::Status(s, None) => write!(f, "module returned status {s}"),
            Error::HostCall(e) => write!(f, "host call failed: {e}"),
        }
    }
}

/// The engine, configured as the gateway's: fuel per operator, copies at
/// 64 bytes per fuel, lazy translation that costs no fuel.
pub fn engine() -> Engine {
    let mut config = Config::default();
    config
        .consume_fuel(true)
        .compilation_mode(wasmi::CompilationMode::LazyTranslation)
        .fuel_cost(wasmi::CustomFuelCosts {
            bytes_copied_per_fuel: 64,
            fuel_per_bytes_translated: 0,
            fuel_per_bytes_validated: 0,
        })
        .enforced_limits(wasmi::EnforcedLimits::strict())
        .wasm_multi_memory(false)
        .wasm_tail_call(false);
    Engine::new(&config)
}

/// What host calls see.
struct Host {
    limiter: StoreLimits,
    memory: Option<Memory>,
    limits: Limits,
    input: Vec<u8>,
    payload: Option<(usize, usize)>,
    outputs: Records,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    state_used: usize,
    failure: Option<&'static str>,
    reason: Option<String>,
    log: Option<fn(i32, &str)>,
}

impl Host {
    fn fail(&mut self, why: &'static str, code: i32) -> i32 {
        self.failure.get_or_insert(why);
        code
    }
}

type HostResult = Result<i32, wasmi::Error>;

/// Pay for a host call before doing it, as the gateway does.
fn charge(c: &mut Caller<'_, Host>, bytes: usize) -> Result<(), wasmi::Error> {
    let cost = fuel::HOST_CALL.saturating_add(bytes as u64 / fuel::BYTES_PER_FUEL);
    let left = c.get_fuel()?;
    if cost > left {
        c.set_fuel(0)?;
        return Err(wasmi::TrapCode::OutOfFuel.into());
    }
    c.set_fuel(left - cost)
}

fn size(len: i32) -> usize {
    len.max(0) as usize
}

fn span(mem: &[u8], ptr: i32, len: i32) -> Option<core::ops::Range<usize>> {
    let (p, l) = (usize::try_from(ptr).ok()?, usize::try_from(len).ok()?);
    let end = p.checked_add(l)?;
    (end <= mem.len()).then_some(p..end)
}

fn parts<'a>(c: &'a mut Caller<'_, Host>) -> (&'a mut [u8], &'a mut Host) {
    let memory = c.data().memory.expect("memory is set before any call");
    memory.data_and_store_mut(c)
}

macro_rules! range {
    ($host:expr, $mem:expr, $p:expr, $l:expr) => {
        match span($mem, $p, $l) {
            Some(r) => r,
            None => return Ok($host.fail("pointer or length outside memory", hostcall::E_BOUNDS)),
        }
    };
}

fn copy_out(mem: &mut [u8], to: core::ops::Range<usize>, value: &[u8]) -> i32 {
    if value.len() <= to.len() {
        mem[to.start..to.start + value.len()].copy_from_slice(value);
    }
    value.len() as i32
}

fn emit(mut c: Caller<'_, Host>, p: i32, l: i32) -> HostResult {
    charge(&mut c, size(l))?;
    let (mem, h) = parts(&mut c);
    let r = range!(h, mem, p, l);
    if h.outputs.len() >= h.limits.max_outputs
        || h.outputs.bytes() + r.len() > h.limits.max_output_bytes
    {
        return Ok(h.fail("output limits", hostcall::E_TOO_MANY_OUTPUTS));
    }
    if weir_abi::record::validate(&mem[r.clone()]).is_err() {
        return Ok(h.fail("emitted record is malformed", hostcall::E_MALFORMED));
    }
    h.outputs.push(&mem[r]);
    Ok(0)
}

fn input_get(mut c: Caller<'_, Host>, kp: i32, kl: i32, vp: i32, vc: i32) -> HostResult {
    let n = c.data().input.len();
    charge(&mut c, size(kl) + n)?;
    let (mem, h) = parts(&mut c);
    let k = range!(h, mem, kp, kl);
    let v = range!(h, mem, vp, vc);
    let payload = match h.payload {
        Some(p) => p,
        None => match weir_abi::patch::payload_span(&h.input) {
            Some(p) => {
                h.payload = Some(p);
                p
            }
            None => return Ok(hostcall::E_NOT_FOUND),
        },
    };
    match weir_abi::patch::field(&h.input, payload, &mem[k]) {
        Some(value) => Ok(copy_out(mem, v, value)),
        None => Ok(hostcall::E_NOT_FOUND),
    }
}

fn emit_input(mut c: Caller<'_, Host>, p: i32, l: i32) -> HostResult {
    let n = c.data().input.len();
    charge(&mut c, 2 * (n + size(l)))?;
    let (mem, h) = parts(&mut c);
    let r = range!(h, mem, p, l);
    if h.outputs.len() >= h.limits.max_outputs {
        return Ok(h.fail(
            "more outputs than max_outputs",
            hostcall::E_TOO_MANY_OUTPUTS,
        ));
    }
    let left = h.limits.max_output_bytes.saturating_sub(h.outputs.bytes());
    let max =
        weir_abi::patch::max_output_len(&h.input, &mem[r.clone()]).min(left.saturating_add(1));
    let input = &h.input;
    let written = h.outputs.push_with(max, |buf| {
        let mut w = weir_abi::cbor::Writer::new(buf);
        weir_abi::patch::apply(input, &mem[r], &mut w).map(|()| w.len())
    });
    match written {
        Ok(_) if h.outputs.bytes() > h.limits.max_output_bytes => {
            h.outputs.pop();
            Ok(h.fail(
                "more output bytes than max_output_bytes",
                hostcall::E_TOO_LARGE,
            ))
        }
        Ok(_) => Ok(0),
        Err("output buffer too small") => Ok(h.fail(
            "more output bytes than max_output_bytes",
            hostcall::E_TOO_LARGE,
        )),
        Err(_) => Ok(h.fail("malformed patch", hostcall::E_MALFORMED)),
    }
}

fn fail(mut c: Caller<'_, Host>, p: i32, l: i32) -> HostResult {
    charge(&mut c, size(l).min(1024))?;
    let (mem, h) = parts(&mut c);
    let r = range!(h, mem, p, l);
    if h.reason.is_none() {
        let bytes = &mem[r.start..r.end.min(r.start + 1024)];
        h.reason = Some(String::from_utf8_lossy(bytes).to_string());
    }
    Ok(0)
}

fn log_line(mut c: Caller<'_, Host>, level: i32, p: i32, l: i32) -> HostResult {
    charge(&mut c, size(l).min(1024))?;
    let (mem, h) = parts(&mut c);
    let r = range!(h, mem, p, l);
    if let Some(f) = h.log {
        f(
            level,
            &String::from_utf8_lossy(&mem[r.start..r.end.min(r.start + 1024)]),
        );
    }
    Ok(0)
}

fn state_get(mut c: Caller<'_, Host>, kp: i32, kl: i32, vp: i32, vc: i32) -> HostResult {
    charge(&mut c, size(kl))?;
    let (mem, h) = parts(&mut c);
    let k = range!(h, mem, kp, kl);
    let v = range!(h, mem, vp, vc);
    match h.state.get(&mem[k]) {
        Some(value) => Ok(copy_out(mem, v, value)),
        None => Ok(hostcall::E_NOT_FOUND),
    }
}

fn state_set(mut c: Caller<'_, Host>, kp: i32, kl: i32, vp: i32, vl: i32) -> HostResult {
    charge(&mut c, size(kl) + size(vl))?;
    let (mem, h) = parts(&mut c);
    let k = range!(h, mem, kp, kl);
    let v = range!(h, mem, vp, vl);
    let cost = |k: usize, v: usize| k + v + 96;
    let old = h
        .state
        .get(&mem[k.clone()])
        .map_or(0, |o| cost(k.len(), o.len()));
    let new = h.state_used - old + cost(k.len(), v.len());
    if new > h.limits.state_bytes {
        return Ok(h.fail("state over state_bytes", hostcall::E_TOO_LARGE));
    }
    h.state_used = new;
    h.state.insert(mem[k].to_vec(), mem[v].to_vec());
    Ok(0)
}

fn state_delete(mut c: Caller<'_, Host>, kp: i32, kl: i32) -> HostResult {
    charge(&mut c, size(kl))?;
    let (mem, h) = parts(&mut c);
    let k = range!(h, mem, kp, kl);
    let klen = k.len();
    match h.state.remove(&mem[k]) {
        Some(v) => {
            h.state_used -= klen + v.len() + 96;
            Ok(0)
        }
        None => Ok(hostcall::E_NOT_FOUND),
    }
}

/// One stage: a module instance, its state and its limits.
pub struct Stage {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    transform: TypedFunc<(i32, i32), i32>,
    input: Option<(u32, usize)>,
    /// Fuel the last record used.
    pub last_fuel: u64,
}

fn trap(e: wasmi::Error) -> Error {
    match e.as_trap_code() {
        Some(wasmi::TrapCode::OutOfFuel) => Error::OutOfFuel,
        _ => Error::Trap(e.to_string()),
    }
}

impl Stage {
    /// Load `wasm` with its `config` (a CBOR map), the `grants` it needs,
    /// and `limits`. `log` receives the lines of a stage granted `log`.
    pub fn new(
        engine: &Engine,
        wasm: &[u8],
        config: &[u8],
        grants: &[Grant],
        limits: Limits,
        log: Option<fn(i32, &str)>,
    ) -> Result<Stage, Error> {
        let module = Module::new(engine, wasm).map_err(|e| Error::Load(e.to_string()))?;
        for i in module.imports() {
            let granted = match (i.module(), imports::grant_for(i.name())) {
                (weir_abi::IMPORT_MODULE, Some(None)) => true,
                (weir_abi::IMPORT_MODULE, Some(Some("log"))) => grants.contains(&Grant::Log),
                (weir_abi::IMPORT_MODULE, Some(Some("state"))) => grants.contains(&Grant::State),
                _ => false,
            };
            let provided = !matches!(i.name(), imports::SERIAL_SEND | imports::CLOCK_NOW_MS);
            if !granted || !provided {
                return Err(Error::Import(alloc::format!(
                    "{}.{}: not provided on a node, or not granted",
                    i.module(),
                    i.name()
                )));
            }
        }
        let host = Host {
            limiter: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(1)
                .build(),
            memory: None,
            limits,
            input: Vec::new(),
            payload: None,
            outputs: Records::default(),
            state: BTreeMap::new(),
            state_used: 0,
            failure: None,
            reason: None,
            log,
        };
        let mut store = Store::new(engine, host);
        store.limiter(|h| &mut h.limiter);
        let mut l = Linker::<Host>::new(engine);
        let m = weir_abi::IMPORT_MODULE;
        let defined = |r: Result<&mut Linker<Host>, wasmi::errors::LinkerError>| {
            r.map(drop).map_err(|e| Error::Load(e.to_string()))
        };
        defined(l.func_wrap(m, imports::EMIT, emit))?;
        defined(l.func_wrap(m, imports::INPUT_GET, input_get))?;
        defined(l.func_wrap(m, imports::EMIT_INPUT, emit_input))?;
        defined(l.func_wrap(m, imports::FAIL, fail))?;
        if grants.contains(&Grant::Log) {
            defined(l.func_wrap(m, imports::LOG, log_line))?;
        }
        if grants.contains(&Grant::State) {
            defined(l.func_wrap(m, imports::STATE_GET, state_get))?;
            defined(l.func_wrap(m, imports::STATE_SET, state_set))?;
            defined(l.func_wrap(m, imports::STATE_DELETE, state_delete))?;
        }
        store
            .set_fuel(limits.fuel)
            .map_err(|e| Error::Load(e.to_string()))?;
        let instance: Instance = l
            .instantiate_and_start(&mut store, &module)
            .map_err(|e| Error::Load(e.to_string()))?;
        let memory = instance
            .get_memory(&store, exports::MEMORY)
            .ok_or_else(|| Error::Load("no memory export".into()))?;
        store.data_mut().memory = Some(memory);
        let abi = |e: wasmi::Error| Error::Load(e.to_string());
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, exports::ALLOC)
            .map_err(abi)?;
        let transform = instance
            .get_typed_func::<(i32, i32), i32>(&store, exports::TRANSFORM)
            .map_err(abi)?;
        if let Ok(init) = instance.get_typed_func::<(i32, i32), i32>(&store, exports::INIT) {
            store.set_fuel(limits.fuel).map_err(abi)?;
            let ptr = alloc.call(&mut store, config.len() as i32).map_err(trap)?;
            memory
                .write(&mut store, ptr as usize, config)
                .map_err(|_| Error::Load("weir_alloc returned a pointer outside memory".into()))?;
            let code = init
                .call(&mut store, (ptr, config.len() as i32))
                .map_err(trap)?;
            if code != status::OK {
                return Err(Error::Init(code));
            }
        }
        Ok(Stage {
            store,
            memory,
            alloc,
            transform,
            input: None,
            last_fuel: 0,
        })
    }

    /// Run one record (ABI v1 CBOR) through the stage; its outputs.
    pub fn process(&mut self, input: &[u8]) -> Result<&Records, Error> {
        let fuel = self.store.data().limits.fuel;
        {
            let h = self.store.data_mut();
            h.input.clear();
            h.input.extend_from_slice(input);
            h.payload = None;
            h.outputs.clear();
            h.failure = None;
            h.reason = None;
        }
        self.store
            .set_fuel(fuel)
            .map_err(|e| Error::Trap(e.to_string()))?;
        let ptr = match self.input {
            Some((ptr, cap)) if cap >= input.len() => ptr,
            _ => {
                let ptr = self
                    .alloc
                    .call(&mut self.store, input.len() as i32)
                    .map_err(trap)? as u32;
                if ptr == 0 {
                    return Err(Error::HostCall("weir_alloc returned 0"));
                }
                self.input = Some((ptr, input.len()));
                ptr
            }
        };
        self.store
            .set_fuel(fuel)
            .map_err(|e| Error::Trap(e.to_string()))?;
        if self
            .memory
            .write(&mut self.store, ptr as usize, input)
            .is_err()
        {
            self.input = None;
            return Err(Error::HostCall(
                "weir_alloc returned a pointer outside memory",
            ));
        }
        let result = self
            .transform
            .call(&mut self.store, (ptr as i32, input.len() as i32));
        self.last_fuel = fuel - self.store.get_fuel().unwrap_or(0);
        let code = result.map_err(trap)?;
        let h = self.store.data_mut();
        if let Some(why) = h.failure.take() {
            return Err(Error::HostCall(why));
        }
        let reason = h.reason.take();
        let code = match (code, &reason) {
            (status::OK, Some(_)) => status::ERR_TRANSFORM,
            _ => code,
        };
        if code != status::OK {
            return Err(Error::Status(code, reason));
        }
        Ok(&self.store.data().outputs)
    }
}

/// Stages in order: each record goes through all of them; a failed record
/// is dropped (and counted), as a gateway pipeline with `on_error = "drop"`.
pub struct Pipeline {
    stages: Vec<Stage>,
    cur: Records,
    next: Records,
    /// Records that failed in a stage.
    pub failed: u64,
}

impl Pipeline {
    /// A pipeline of `stages`.
    pub fn new(stages: Vec<Stage>) -> Self {
        Pipeline {
            stages,
            cur: Records::default(),
            next: Records::default(),
            failed: 0,
        }
    }

    /// Run `input` through every stage; the last stage's outputs.
    pub fn process(&mut self, input: &[u8]) -> &Records {
        self.cur.clear();
        self.cur.push(input);
        for stage in &mut self.stages {
            self.next.clear();
            for rec in self.cur.iter() {
                match stage.process(rec) {
                    Ok(out) => out.iter().for_each(|r| self.next.push(r)),
                    Err(_) => self.failed += 1,
                }
            }
            core::mem::swap(&mut self.cur, &mut self.next);
        }
        &self.cur
    }
}
