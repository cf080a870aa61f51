//! The wasmi engine shared by every stage.

use wasmi::{CompilationMode, Config, CustomFuelCosts, EnforcedLimits, Engine};

use super::error::LoadError;
use super::module::CompiledModule;

/// Deepest guest call stack, in frames; deeper recursion traps.
const MAX_RECURSION_DEPTH: usize = 1024;

/// The Wasm runtime: one engine, configured once.
///
/// - Fuel metering is on: every record gets a fresh, deterministic budget.
/// - Modules are validated completely at load (an invalid module is refused
///   before it runs) but each function is translated to wasmi's IR on its
///   first call, so load time does not grow with code that never runs (panic
///   and formatting paths are most of a Rust guest). Translation is charged
///   no fuel: fuel measures the module's own work, so the same record costs
///   the same fuel whether it is the first or the millionth.
/// - wasmi's strict parse limits guard the compiler against hostile modules.
/// - Only the MVP plus the widely used post-MVP features Rust and clang emit
///   by default are enabled; SIMD, threads and memory64 are compiled out.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// A runtime with Weir's engine settings.
    pub fn new() -> Self {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            .compilation_mode(CompilationMode::LazyTranslation)
            .fuel_cost(CustomFuelCosts {
                bytes_copied_per_fuel: 64,
                fuel_per_bytes_translated: 0,
                fuel_per_bytes_validated: 0,
            })
            .enforced_limits(EnforcedLimits::strict())
            .set_max_recursion_depth(MAX_RECURSION_DEPTH)
            .wasm_multi_memory(false)
            .wasm_tail_call(false);
        Runtime {
            engine: Engine::new(&config),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compile a module once; stages share the result.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<CompiledModule, LoadError> {
        CompiledModule::new(self, name, wasm)
    }

    /// Read and compile a module file: binary Wasm, or the text format
    /// (`.wat`, or text that starts with `(`), which is translated first.
    pub fn compile_file(&self, path: &std::path::Path) -> Result<CompiledModule, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let text = path.extension().is_some_and(|e| e == "wat")
            || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'(');
        let wasm = if text {
            wat::parse_bytes(&bytes)
                .map_err(|e| LoadError::Invalid(format!("{}: {e}", path.display())))?
        } else {
            std::borrow::Cow::Borrowed(&bytes[..])
        };
        self.compile(&path.display().to_string(), &wasm)
    }
}
