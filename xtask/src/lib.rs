//! Building Weir's guest modules. Used by `cargo xtask` and by the build
//! scripts of the test and bench crates, so `cargo test` builds the modules
//! itself with no manual step.
//!
//! Rust modules are workspace members built with an explicit
//! `--target wasm32-unknown-unknown --profile wasm` into their own target
//! directory (`target/wasm`), so the host build never picks wasm32 by
//! accident and the nested cargo never waits on the outer one's lock.
//! C modules are compiled with clang's wasm32 target, Zig modules with
//! Zig (from PyPI's `ziglang`) and AssemblyScript modules with `asc` (from
//! npm), both installed by `cargo xtask setup` under `target/tools/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Rust guest crates, built to `<crate name with _>.wasm`.
pub const RUST_MODULES: &[&str] = &[
    "weir-w1-range-filter",
    "weir-w1-enrich",
    "weir-w1-moving-average",
    "weir-w1-enrich-cbor",
];
/// C guest sources under `pipelines/c/`, built to `c_<stem>.wasm`.
pub const C_MODULES: &[&str] = &["downsample.c"];
/// C guest sources under `pipelines/c/` written for WASI and libc, built
/// with clang's `wasm32-wasi` target against Debian's wasi-libc, as stock
/// WASI modules are.
pub const C_WASI_MODULES: &[&str] = &["wasi_range_filter.c"];

/// Zig guest sources under `pipelines/zig/` for `wasm32-freestanding`,
/// built to `zig_<stem>.wasm`.
pub const ZIG_MODULES: &[&str] = &["range_filter.zig", "enrich.zig"];
/// Zig guest sources using Zig's standard library on the stock
/// `wasm32-wasi` target, built to `zig_<stem>.wasm`.
pub const ZIG_WASI_MODULES: &[&str] = &["wasi_range_filter.zig"];
/// AssemblyScript guest sources under `pipelines/assemblyscript/`, built to
/// `as_<stem>.wasm`.
pub const AS_MODULES: &[&str] = &["range_filter.ts", "enrich.ts"];

/// The Zig release `cargo xtask setup` installs (PyPI's `ziglang` wheel).
pub const ZIG_VERSION: &str = "0.13.0";
/// The AssemblyScript release `cargo xtask setup` installs from npm; the
/// last one that runs on Debian 12's Node.js 18.
pub const ASSEMBLYSCRIPT_VERSION: &str = "0.27.37";

/// The workspace root (parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// Where built modules are collected.
pub fn modules_dir(root: &Path) -> PathBuf {
    root.join("target").join("modules")
}

/// Build every guest module into `target/modules/` and return that directory.
pub fn build_modules(root: &Path) -> Result<PathBuf, String> {
    let out = modules_dir(root);
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    build_rust(root, &out)?;
    for src in C_MODULES {
        build_c(&root.join("pipelines/c").join(src), &out, false)?;
    }
    for src in C_WASI_MODULES {
        build_c(&root.join("pipelines/c").join(src), &out, true)?;
    }
    for src in ZIG_MODULES {
        build_zig(root, src, &out, false)?;
    }
    for src in ZIG_WASI_MODULES {
        build_zig(root, src, &out, true)?;
    }
    for src in AS_MODULES {
        build_assemblyscript(root, src, &out)?;
    }
    Ok(out)
}

/// Where `cargo xtask setup` installs the Zig and AssemblyScript toolchains.
pub fn tools_dir(root: &Path) -> PathBuf {
    root.join("target").join("tools")
}

/// The Python of the virtual environment that holds PyPI's `ziglang`.
pub fn zig_python(root: &Path) -> PathBuf {
    tools_dir(root).join("zig/bin/python3")
}

/// The `asc` compiler that npm installed.
pub fn asc(root: &Path) -> PathBuf {
    tools_dir(root).join("assemblyscript/node_modules/.bin/asc")
}

const SETUP: &str =
    "`cargo xtask setup` installs it under target/tools/ (or run `cargo xtask test`)";

/// Build one Zig module: freestanding, or for the stock WASI target (a
/// reactor: no main).
fn build_zig(root: &Path, src: &str, out: &Path, wasi: bool) -> Result<(), String> {
    let python = zig_python(root);
    if !python.exists() {
        return Err(format!("Zig {ZIG_VERSION} is not installed: {SETUP}"));
    }
    let stem = src.trim_end_matches(".zig");
    let tools = tools_dir(root);
    // Zig leaves its object file beside the output: build outside `out`.
    let tmp = tools.join("zig-out").join(format!("{stem}.wasm"));
    std::fs::create_dir_all(tools.join("zig-out")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&python);
    cmd.current_dir(root.join("pipelines/zig"))
        .args(["-m", "ziglang", "build-exe", src, "-O", "ReleaseSmall"])
        .args(["-fno-entry", "-rdynamic", "--stack", "16384"]);
    if wasi {
        cmd.args(["-target", "wasm32-wasi", "-mexec-model=reactor"]);
    } else {
        cmd.args(["-target", "wasm32-freestanding"]);
    }
    cmd.arg("--cache-dir")
        .arg(tools.join("zig-cache"))
        .arg("--global-cache-dir")
        .arg(tools.join("zig-global-cache"))
        .arg(format!("-femit-bin={}", tmp.display()));
    run_tool(&mut cmd, src)?;
    finish(&tmp, &out.join(format!("zig_{stem}.wasm")))
}

/// Build one AssemblyScript module: the stub runtime (the modules allocate
/// nothing per record), no `env.abort` import (an abort traps), a 16 KiB
/// stack.
fn build_assemblyscript(root: &Path, src: &str, out: &Path) -> Result<(), String> {
    let asc = asc(root);
    if !asc.exists() {
        return Err(format!(
            "AssemblyScript {ASSEMBLYSCRIPT_VERSION} is not installed: {SETUP}"
        ));
    }
    let stem = src.trim_end_matches(".ts");
    let tmp = out.join(format!(".as_{stem}.wasm.tmp"));
    let mut cmd = Command::new(&asc);
    cmd.current_dir(root.join("pipelines/assemblyscript"))
        .args([src, "-O3", "--runtime", "stub", "--use", "abort="])
        .args(["--stackSize", "16384", "-o"])
        .arg(&tmp);
    run_tool(&mut cmd, src)?;
    finish(&tmp, &out.join(format!("as_{stem}.wasm")))
}

fn run_tool(cmd: &mut Command, src: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("building {src} failed ({s}): {cmd:?}")),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

fn finish(tmp: &Path, dest: &Path) -> Result<(), String> {
    let bytes = std::fs::read(tmp).map_err(|e| format!("read {}: {e}", tmp.display()))?;
    let _ = std::fs::remove_file(tmp);
    write_if_changed(dest, &bytes)
}

fn build_rust(root: &Path, out: &Path) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target").join("wasm");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--quiet",
            "--profile",
            "wasm",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for m in RUST_MODULES {
        cmd.args(["-p", m]);
    }
    // When run from a build script, the outer cargo's settings must not leak in.
    for (k, _) in std::env::vars() {
        let leaks = k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_NET_OFFLINE";
        if leaks
            || k == "RUSTFLAGS"
            || k == "RUSTC_WRAPPER"
            || k == "RUSTC_WORKSPACE_WRAPPER"
            || k == "RUSTC"
        {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().map_err(|e| format!("run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the wasm32 guest modules failed ({status}); is the target installed? \
             `rustup target add wasm32-unknown-unknown` (or `cargo xtask test`, which installs it)"
        ));
    }
    for m in RUST_MODULES {
        let file = format!("{}.wasm", m.replace('-', "_"));
        let from = target_dir.join("wasm32-unknown-unknown/wasm").join(&file);
        copy_if_changed(&from, &out.join(&file))?;
    }
    Ok(())
}

/// Build one C module: freestanding (`--target=wasm32`, no libc), or for
/// WASI (`wasi`: `--target=wasm32-wasi` with libc, a reactor).
fn build_c(src: &Path, out: &Path, wasi: bool) -> Result<(), String> {
    let stem = src
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("bad C module name")?;
    let dest = out.join(format!("c_{stem}.wasm"));
    let tmp = out.join(format!(".c_{stem}.wasm.tmp"));
    let mut cmd = Command::new("clang");
    if wasi {
        cmd.args(["--target=wasm32-wasi", "-mexec-model=reactor"]);
    } else {
        cmd.args(["--target=wasm32", "-nostdlib", "-Wl,--no-entry"]);
    }
    let result = cmd
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .args(["-Wl,-z,stack-size=16384", "-o"])
        .arg(&tmp)
        .arg(src)
        .status();
    match result {
        Ok(s) if s.success() => {}
        Ok(s) if wasi => {
            return Err(format!(
                "clang failed on {} ({s}); WASI modules need Debian's wasi-libc and \
                 libclang-rt-14-dev-wasm32: `apt-get install --no-install-recommends wasi-libc \
                 libclang-rt-14-dev-wasm32` (or `cargo xtask test`, which installs them)",
                src.display()
            ));
        }
        Ok(s) => return Err(format!("clang failed on {} ({s})", src.display())),
        Err(e) => {
            return Err(format!(
                "clang not found ({e}); C guest modules need clang and lld: \
                 `apt-get install clang lld` (or `cargo xtask test`, which installs them)"
            ));
        }
    }
    finish(&tmp, &dest)
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = std::fs::read(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    write_if_changed(to, &bytes)
}

/// Leave unchanged files alone so their mtimes (and dependents) stay put.
fn write_if_changed(to: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(to, bytes).map_err(|e| format!("write {}: {e}", to.display()))
}

/// Inputs whose change must rebuild the modules (for `cargo:rerun-if-changed`).
pub fn module_inputs(root: &Path) -> Vec<PathBuf> {
    vec![
        root.join("pipelines"),
        root.join("firmware-sdk/guest"),
        root.join("firmware-sdk/abi"),
        root.join("Cargo.toml"),
        root.join(".cargo/config.toml"),
    ]
}
