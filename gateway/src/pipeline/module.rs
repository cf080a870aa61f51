//! A compiled module and what it declares: ABI version, exports, imports and
//! the grants those imports need.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use wasmi::{ExternType, FuncType, Module, ValType};
use weir_abi::{IMPORT_MODULE, exports, imports, wasi};

use super::Grant;
use super::engine::Runtime;
use super::error::LoadError;

/// A module compiled once, shared by every instance of every stage that uses it.
#[derive(Clone)]
pub struct CompiledModule {
    pub(crate) module: Module,
    info: ModuleInfo,
}

/// What a module declares, as `weir module inspect` shows it.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// Where it came from.
    pub name: String,
    /// Size of the Wasm binary.
    pub size_bytes: usize,
    /// SHA-256 of the Wasm binary, hex (what a reload compares).
    pub sha256: String,
    /// The version of the signed bundle it came in; `None` for a module
    /// file named by the config.
    pub version: Option<String>,
    /// The ABI version from the `weir_abi_v<N>` marker, if any.
    pub abi_version: Option<u32>,
    /// Imports as `(module, name, signature)`.
    pub imports: Vec<(String, String, String)>,
    /// Exports as `(name, signature)`.
    pub exports: Vec<(String, String)>,
    /// Grants the imports need.
    pub grants_needed: BTreeSet<&'static str>,
    /// Initial and maximum memory, in 64 KiB pages.
    pub memory_pages: Option<(u64, Option<u64>)>,
    /// Reasons the module cannot run as a Weir ABI v1 module at all
    /// (independent of grants); empty if it can.
    pub abi_problems: Vec<String>,
}

/// Signature of each host import of ABI v1.
fn expected_import(name: &str) -> Option<(&'static [ValType], &'static [ValType])> {
    use ValType::{I32, I64};
    Some(match name {
        imports::EMIT | imports::EMIT_INPUT => (&[I32, I32], &[I32]),
        imports::INPUT_GET => (&[I32, I32, I32, I32], &[I32]),
        imports::LOG => (&[I32, I32, I32], &[I32]),
        imports::CLOCK_NOW_MS => (&[], &[I64]),
        imports::STATE_GET | imports::STATE_SET => (&[I32, I32, I32, I32], &[I32]),
        imports::STATE_DELETE | imports::FAIL => (&[I32, I32], &[I32]),
        imports::SERIAL_SEND => (&[I32, I32, I32, I32, I32], &[I32]),
        _ => return None,
    })
}

fn sig(f: &FuncType) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(|t| format!("{t:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("func({}) -> ({})", list(f.params()), list(f.results()))
}

fn extern_sig(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => sig(f),
        ExternType::Memory(m) => format!("memory(min {} pages)", m.minimum()),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
    }
}

impl CompiledModule {
    pub(crate) fn new(rt: &Runtime, name: &str, wasm: &[u8]) -> Result<Self, LoadError> {
        let module =
            Module::new(rt.engine(), wasm).map_err(|e| LoadError::Invalid(e.to_string()))?;
        let mut info = describe(name, wasm.len(), &module);
        info.sha256 = ring::digest::digest(&ring::digest::SHA256, wasm)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(CompiledModule { module, info })
    }

    /// The same module, marked as `version` of a pushed bundle.
    pub fn with_version(mut self, version: &str) -> Self {
        self.info.version = Some(version.to_string());
        self
    }

    /// What the module declares.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// Refuse the module unless it is a well-formed ABI v1 module whose every
    /// import is known, correctly typed and granted. The error names the import.
    pub fn check(&self, grants: &[Grant]) -> Result<(), LoadError> {
        if let Some(problem) = self.info.abi_problems.first() {
            return Err(LoadError::Abi(problem.clone()));
        }
        for import in self.module.imports() {
            let (module, name) = (import.module(), import.name());
            let refuse = |reason: String| LoadError::Import {
                module: module.into(),
                name: name.into(),
                reason,
            };
            let (grant, (params, results)) = if module == wasi::MODULE {
                let Some(grant) = wasi::grant_for(name) else {
                    let offered: Vec<&str> = wasi::ALL.iter().map(|(n, _, _)| *n).collect();
                    return Err(refuse(format!(
                        "this WASI function is not provided: weir offers {} (no files or sockets); see ABI.md",
                        offered.join(", ")
                    )));
                };
                let sig =
                    super::wasi::signature(name).expect("every WASI function has a signature");
                (grant, sig)
            } else if module == IMPORT_MODULE {
                let Some(grant) = imports::grant_for(name) else {
                    return Err(refuse("unknown import".into()));
                };
                let sig = expected_import(name).expect("every known import has a signature");
                (grant, sig)
            } else {
                let hint = if module.starts_with("wasi") {
                    format!(
                        " (of WASI, only a subset of `{}` is provided)",
                        wasi::MODULE
                    )
                } else {
                    String::new()
                };
                return Err(refuse(format!("unknown import module `{module}`{hint}")));
            };
            let ExternType::Func(f) = import.ty() else {
                return Err(refuse("only functions can be imported".into()));
            };
            if f.params() != params || f.results() != results {
                let want = sig(&FuncType::new(
                    params.iter().copied(),
                    results.iter().copied(),
                ));
                return Err(refuse(format!(
                    "signature {} does not match {want}",
                    sig(f)
                )));
            }
            if let Some(g) = grant
                && !grants.iter().any(|x| x.as_str() == g)
            {
                return Err(refuse(format!(
                    "needs grant `{g}`, which the stage does not have: add \"{g}\" to the stage's `grants` (`--grant {g}` for `weir module test`)"
                )));
            }
        }
        Ok(())
    }
}

fn describe(name: &str, size: usize, module: &Module) -> ModuleInfo {
    use ValType::I32;
    let mut info = ModuleInfo {
        name: name.into(),
        size_bytes: size,
        sha256: String::new(),
        version: None,
        abi_version: None,
        imports: vec![],
        exports: vec![],
        grants_needed: BTreeSet::new(),
        memory_pages: None,
        abi_problems: vec![],
    };
    for i in module.imports() {
        info.imports
            .push((i.module().into(), i.name().into(), extern_sig(i.ty())));
        let grant = match i.module() {
            IMPORT_MODULE => imports::grant_for(i.name()),
            wasi::MODULE => wasi::grant_for(i.name()),
            _ => None,
        };
        if let Some(Some(g)) = grant {
            info.grants_needed.insert(g);
        }
    }
    let func_sig = |want: &str| -> Option<FuncType> {
        module
            .exports()
            .find(|e| e.name() == want)
            .and_then(|e| e.ty().func().cloned())
    };
    let alloc = func_sig(exports::ALLOC);
    let transform = func_sig(exports::TRANSFORM);
    let init = func_sig(exports::INIT);
    for e in module.exports() {
        info.exports.push((e.name().into(), extern_sig(e.ty())));
        if let Some(v) = e.name().strip_prefix(exports::ABI_MARKER_PREFIX) {
            info.abi_version = v.parse().ok();
        }
        if let ExternType::Memory(m) = e.ty()
            && e.name() == exports::MEMORY
        {
            info.memory_pages = Some((m.minimum(), m.maximum()));
        }
    }
    let problems = &mut info.abi_problems;
    match info.abi_version {
        Some(1) => {}
        Some(v) => problems.push(format!(
            "ABI version {v} is not supported (this host speaks v1)"
        )),
        None => problems.push(format!(
            "missing export `{}` (the ABI version marker)",
            exports::ABI_MARKER
        )),
    }
    if info.memory_pages.is_none() {
        problems.push(format!("missing memory export `{}`", exports::MEMORY));
    }
    let mut want = |name: &str, f: Option<FuncType>, params: &[ValType], required: bool| match f {
        None if required => problems.push(format!("missing function export `{name}`")),
        None => {}
        Some(f) if f.params() != params || f.results() != [I32] => {
            let mut s = String::new();
            let _ = write!(
                s,
                "export `{name}` has signature {}, expected func(",
                sig(&f)
            );
            let _ = write!(s, "{}) -> (i32)", vec!["i32"; params.len()].join(", "));
            problems.push(s);
        }
        Some(_) => {}
    };
    want(exports::ALLOC, alloc, &[I32], true);
    want(exports::TRANSFORM, transform, &[I32, I32], true);
    want(exports::INIT, init, &[I32, I32], false);
    info
}

#[cfg(test)]
mod import_tests {
    use super::*;

    #[test]
    fn every_known_import_has_a_signature() {
        for (name, _) in imports::ALL {
            assert!(expected_import(name).is_some(), "{name}");
        }
    }
}
