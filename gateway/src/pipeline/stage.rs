//! One module at work in a pipeline: it owns a store and (in `reuse` mode) a
//! live instance, enforces the limits, counts every failure and quarantines
//! itself after too many in a row.
//!
//! Life of an instance: made at load (so a module that cannot instantiate or
//! whose `weir_init` fails is refused before any record), reused across
//! records, and replaced after any trap (its memory may be inconsistent).
//! Each instance gets a new store, since a wasmi store never frees the
//! instances it has held; the key/value state moves over to the new store.

use std::sync::Arc;

use wasmi::{Engine, Linker, Memory, Store, TrapCode, TypedFunc};
use weir_abi::{exports, status};

use super::error::{FailureKind, LoadError, StageError};
use super::host::{self, HostState, KvState, Outputs};
use super::module::CompiledModule;
use super::{Grant, Isolation, Limits};

/// Everything needed to run a stage.
#[derive(Clone)]
pub struct StageSpec {
    /// Name for logs and errors (`pipeline/stage`).
    pub label: String,
    /// The compiled module.
    pub module: CompiledModule,
    /// Granted capabilities.
    pub grants: Vec<Grant>,
    /// Limits.
    pub limits: Limits,
    /// Instance reuse or per-record instances.
    pub isolation: Isolation,
    /// CBOR map handed to `weir_init` (an empty map if there is no config).
    pub config: Vec<u8>,
    /// Consecutive failures that quarantine the stage.
    pub quarantine_after: u32,
}

/// Counters for one stage.
#[derive(Debug, Default, Clone)]
pub struct StageMetrics {
    /// Records given to the stage.
    pub records_in: u64,
    /// Records the stage emitted.
    pub records_out: u64,
    /// Records the module processed successfully and emitted nothing for.
    pub records_dropped: u64,
    /// Failures by kind (see [`FailureKind::ALL`]).
    pub failures: [u64; FailureKind::ALL.len()],
    /// Fuel consumed, all records together.
    pub fuel_used: u64,
    /// Instances created (1 + replacements after traps, or one per record).
    pub instantiations: u64,
    /// Records given to this module version (since it was swapped in).
    pub version_in: u64,
    /// Of them, failed.
    pub version_failed: u64,
}

impl StageMetrics {
    /// Failures of one kind.
    pub fn failed(&self, kind: FailureKind) -> u64 {
        self.failures[kind.index()]
    }
    /// Failures of every kind.
    pub fn failed_total(&self) -> u64 {
        self.failures.iter().sum()
    }
}

struct Live {
    alloc: TypedFunc<i32, i32>,
    transform: TypedFunc<(i32, i32), i32>,
    memory: Memory,
    /// The input buffer obtained from `weir_alloc`: (pointer, size asked for).
    input: Option<(u32, usize)>,
}

/// A running stage.
pub struct Stage {
    spec: StageSpec,
    label: Arc<str>,
    engine: Engine,
    linker: Linker<HostState>,
    store: Store<HostState>,
    live: Option<Live>,
    consecutive_failures: u32,
    quarantined: bool,
    last_fuel: u64,
    metrics: StageMetrics,
    carry: CarryState,
}

/// Whether a stage takes over its predecessor's key/value state on a swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CarryState {
    /// When it runs the same module with the same grants and config.
    #[default]
    IfSameModule,
    /// Always (a pushed module whose manifest says `state = "keep"`).
    Always,
    /// Never (`state = "reset"`).
    Never,
}

impl Stage {
    /// Check the module against its grants, instantiate it and run `weir_init`.
    /// The stage runs on the engine that compiled the module.
    pub fn new(spec: StageSpec) -> Result<Stage, LoadError> {
        spec.module.check(&spec.grants)?;
        // wasmi's limiter would only say it "denied to allocate": say how
        // much, and what to do.
        if let Some((initial, _)) = spec.module.info().memory_pages
            && initial.saturating_mul(65_536) > spec.limits.memory_bytes
        {
            return Err(LoadError::MemoryCap {
                initial,
                cap: spec.limits.memory_bytes / 65_536,
                cap_bytes: spec.limits.memory_bytes,
            });
        }
        let engine = spec.module.module.engine().clone();
        let engine = &engine;
        let label: Arc<str> = spec.label.as_str().into();
        let linker = host::linker(engine, &spec.grants);
        let store = Store::new(
            engine,
            HostState::new(label.clone(), spec.limits, KvState::default(), 0),
        );
        let mut stage = Stage {
            spec,
            label,
            engine: engine.clone(),
            linker,
            store,
            live: None,
            consecutive_failures: 0,
            quarantined: false,
            last_fuel: 0,
            metrics: StageMetrics::default(),
            carry: CarryState::default(),
        };
        let live = stage.instantiate()?;
        if stage.spec.isolation == Isolation::Reuse {
            stage.live = Some(live);
        }
        Ok(stage)
    }

    /// The stage's name (`pipeline/stage`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Counters.
    pub fn metrics(&self) -> &StageMetrics {
        &self.metrics
    }

    /// The stage's own name (the label without its pipeline).
    pub fn name(&self) -> &str {
        self.label.rsplit('/').next().unwrap_or(&self.label)
    }

    /// Where the module came from.
    pub fn module_path(&self) -> &str {
        &self.spec.module.info().name
    }

    /// The pushed bundle's version of the module; `None`: the config's.
    pub fn module_version(&self) -> Option<&str> {
        self.spec.module.info().version.as_deref()
    }

    /// SHA-256 of the module's bytes, hex.
    pub fn module_sha256(&self) -> &str {
        &self.spec.module.info().sha256
    }

    /// Whether `other` runs the same module with the same grants,
    /// isolation and config: its key/value state means the same here.
    pub fn same_as(&self, other: &Stage) -> bool {
        let (a, b) = (&self.spec, &other.spec);
        a.module.info().sha256 == b.module.info().sha256
            && a.grants == b.grants
            && a.isolation == b.isolation
            && a.config == b.config
    }

    /// Take over what `old` built up: its counters always (they count
    /// per stage name, across versions), and its key/value state when it
    /// runs the same module ([`Stage::same_as`]). Returns whether the
    /// state was kept.
    pub fn carry_over(&mut self, old: &mut Stage) -> bool {
        let mut m = old.metrics.clone();
        m.instantiations += self.metrics.instantiations;
        let same = self.same_as(old);
        if self.module_sha256() != old.module_sha256() {
            // A new version counts its own records (probation reads them).
            m.version_in = 0;
            m.version_failed = 0;
        }
        self.metrics = m;
        let keep = match self.carry {
            CarryState::IfSameModule => same,
            CarryState::Always => true,
            CarryState::Never => false,
        };
        if keep {
            self.store.data_mut().kv = std::mem::take(&mut old.store.data_mut().kv);
        }
        keep
    }

    /// What [`Stage::carry_over`] does with the old stage's state (a
    /// pushed module's manifest decides; else: keep it for the same module).
    pub fn set_carry(&mut self, carry: CarryState) {
        self.carry = carry;
    }

    /// Fuel used by the last record.
    pub fn last_fuel(&self) -> u64 {
        self.last_fuel
    }

    /// Whether the stage has been quarantined.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined
    }

    /// Guest log lines dropped over the per-record budget.
    pub fn logs_dropped(&self) -> u64 {
        self.store.data().logs_dropped
    }

    /// The module's key/value state.
    pub fn state(&self) -> &KvState {
        &self.store.data().kv
    }

    /// A fresh store and instance; the key/value state carries over.
    fn instantiate(&mut self) -> Result<Live, LoadError> {
        let kv = std::mem::take(&mut self.store.data_mut().kv);
        let dropped = self.store.data().logs_dropped;
        let window = self.store.data().log_window;
        self.store = Store::new(
            &self.engine,
            HostState::new(self.label.clone(), self.spec.limits, kv, dropped),
        );
        // The log rate is per stage, not per instance.
        self.store.data_mut().log_window = window;
        self.store.limiter(|s| &mut s.limiter);
        self.metrics.instantiations += 1;
        let store = &mut self.store;
        store
            .set_fuel(self.spec.limits.fuel)
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let instance = self
            .linker
            .instantiate_and_start(&mut *store, &self.spec.module.module)
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let abi = |e: wasmi::Error| LoadError::Abi(e.to_string());
        let memory = instance
            .get_memory(&*store, exports::MEMORY)
            .ok_or_else(|| LoadError::Abi("missing memory export".into()))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&*store, exports::ALLOC)
            .map_err(abi)?;
        let transform = instance
            .get_typed_func::<(i32, i32), i32>(&*store, exports::TRANSFORM)
            .map_err(abi)?;
        store.data_mut().memory = Some(memory);
        let mut live = Live {
            alloc,
            transform,
            memory,
            input: None,
        };
        // A WASI reactor (a library built for a WASI target) runs its
        // constructors once, before anything else is called.
        if let Ok(ctors) = instance.get_typed_func::<(), ()>(&*store, "_initialize") {
            store
                .set_fuel(self.spec.limits.fuel)
                .map_err(|e| LoadError::Init(e.to_string()))?;
            store.data_mut().reset_call(&[]);
            ctors.call(&mut *store, ()).map_err(|e| {
                let e = match store.data_mut().failure.take() {
                    Some(f) => f,
                    None => classify(e, self.spec.limits.fuel),
                };
                LoadError::Init(format!("_initialize: {e}"))
            })?;
        }
        if let Ok(init) = instance.get_typed_func::<(i32, i32), i32>(&*store, exports::INIT) {
            store
                .set_fuel(self.spec.limits.fuel)
                .map_err(|e| LoadError::Init(e.to_string()))?;
            let config = self.spec.config.clone();
            store.data_mut().reset_call(&[]);
            let ptr =
                place(store, &mut live, &config).map_err(|e| LoadError::Init(e.to_string()))?;
            let code = init
                .call(&mut *store, (ptr as i32, config.len() as i32))
                .map_err(|e| LoadError::Init(classify(e, self.spec.limits.fuel).to_string()))?;
            if let Some(f) = store.data_mut().failure.take() {
                return Err(LoadError::Init(f.to_string()));
            }
            if code != status::OK {
                let name = status::name(code);
                return Err(LoadError::Init(format!(
                    "module returned status {code} ({name})"
                )));
            }
        }
        Ok(live)
    }

    /// Run one record (ABI v1 CBOR). On success, the outputs stay valid until
    /// the next call.
    pub fn process(&mut self, input: &[u8]) -> Result<&Outputs, StageError> {
        self.metrics.records_in += 1;
        self.metrics.version_in += 1;
        if self.quarantined {
            let e = StageError::Quarantined {
                failures: self.consecutive_failures,
            };
            self.metrics.failures[FailureKind::Quarantined.index()] += 1;
            self.metrics.version_failed += 1;
            return Err(e);
        }
        match self.run(input) {
            Ok(()) => {
                self.consecutive_failures = 0;
                let n = self.store.data().outputs.len() as u64;
                self.metrics.records_out += n;
                self.metrics.records_dropped += u64::from(n == 0);
                Ok(&self.store.data().outputs)
            }
            Err(e) => {
                self.metrics.failures[e.kind().index()] += 1;
                self.metrics.version_failed += 1;
                self.consecutive_failures += 1;
                if self.consecutive_failures >= self.spec.quarantine_after {
                    self.quarantined = true;
                    tracing::error!(
                        stage = &*self.label,
                        failures = self.consecutive_failures,
                        last_error = %e,
                        "stage quarantined: it failed too many records in a row; \
                         its records now go to the pipeline's error policy until restart"
                    );
                } else {
                    tracing::debug!(stage = &*self.label, error = %e, "record failed");
                }
                Err(e)
            }
        }
    }

    /// The downlink commands the last record asked for (`serial_send`).
    /// Only a record that succeeded sends them.
    pub fn downlink(&self) -> &[super::Downlink] {
        &self.store.data().downlink
    }

    fn run(&mut self, input: &[u8]) -> Result<(), StageError> {
        let fuel = self.spec.limits.fuel;
        if self.live.is_none() || self.spec.isolation == Isolation::PerRecord {
            let live = self
                .instantiate()
                .map_err(|e| StageError::Instantiate(e.to_string()))?;
            self.live = Some(live);
        }
        let (store, live) = (
            &mut self.store,
            self.live.as_mut().expect("instantiated above"),
        );
        store.data_mut().reset_call(input);
        // `weir_alloc` (called only when a record outgrows the buffer) runs on
        // its own budget, so a record's fuel is the same whenever it comes.
        store.set_fuel(fuel).expect("fuel metering is enabled");
        let placed = place(store, live, input);
        store.set_fuel(fuel).expect("fuel metering is enabled");
        let result = placed.and_then(|ptr| {
            live.transform
                .call(&mut *store, (ptr as i32, input.len() as i32))
                .map_err(|e| classify(e, fuel))
        });
        self.last_fuel = fuel - store.get_fuel().unwrap_or(0);
        self.metrics.fuel_used += self.last_fuel;
        let code = match result {
            Ok(code) => code,
            Err(e) => {
                super::wasi::flush(store.data_mut());
                // A host call that ended the record says why (the
                // deadline, WASI's proc_exit).
                let e = match store.data_mut().failure.take() {
                    Some(f @ (StageError::Deadline { .. } | StageError::Exit { .. })) => f,
                    _ => e,
                };
                if matches!(
                    e,
                    StageError::Trap(_)
                        | StageError::OutOfFuel { .. }
                        | StageError::Deadline { .. }
                        | StageError::Exit { .. }
                ) {
                    self.live = None; // its memory may be inconsistent
                }
                return Err(e);
            }
        };
        let st = store.data_mut();
        super::wasi::flush(st);
        if let Some(f) = st.failure.take() {
            return Err(f);
        }
        // `fail` fails the record whatever the status (2 if it says OK).
        let reason = st.reason.take();
        let code = match (code, &reason) {
            (status::OK, Some(_)) => status::ERR_TRANSFORM,
            _ => code,
        };
        if code != status::OK {
            return Err(StageError::Status {
                code,
                name: status::name(code),
                reason: reason.or_else(|| st.error_line.take()),
            });
        }
        Ok(())
    }
}

/// Put `bytes` in the instance's input buffer, asking `weir_alloc` for a
/// larger one only when it does not fit the current one.
fn place(store: &mut Store<HostState>, live: &mut Live, bytes: &[u8]) -> Result<u32, StageError> {
    let len = bytes.len();
    let input_err = |detail: String| StageError::Input { len, detail };
    let len_i32 = i32::try_from(len).map_err(|_| input_err("larger than 2 GiB".into()))?;
    let ptr = match live.input {
        Some((ptr, cap)) if cap >= len => ptr,
        _ => {
            let fuel = store.get_fuel().unwrap_or(0);
            let ptr = live
                .alloc
                .call(&mut *store, len_i32)
                .map_err(|e| classify(e, fuel))? as u32;
            if ptr == 0 {
                return Err(input_err("weir_alloc returned 0 (no memory)".into()));
            }
            live.input = Some((ptr, len));
            ptr
        }
    };
    live.memory
        .write(&mut *store, ptr as usize, bytes)
        .map_err(|_| {
            live.input = None;
            input_err(format!(
                "weir_alloc returned {ptr}, outside the module's memory"
            ))
        })?;
    Ok(ptr)
}

fn classify(e: wasmi::Error, fuel: u64) -> StageError {
    match e.as_trap_code() {
        Some(TrapCode::OutOfFuel) => StageError::OutOfFuel { limit: fuel },
        _ => StageError::Trap(e.to_string()),
    }
}
