//! `cargo xtask <task>`: Weir's developer tasks.
//!
//! - `setup`:   install what the build needs if it is missing (rustup targets,
//!   apt packages), so a fresh Debian/Ubuntu machine works.
//! - `modules`: build every guest module into `target/modules/`.
//! - `demo`:    run the W1 pipeline over the bundled sample records.
//! - `test`:    the full test suite (what CI runs): fmt, clippy, all tests.
//! - `bench`:   the benchmarks, each printing a ratio against its baseline.

use std::path::Path;
use std::process::{Command, ExitCode};

/// wasm32 for guest modules; thumbv7em proves the firmware crates are no_std
/// and need no allocator.
const RUSTUP_TARGETS: &[&str] = &["wasm32-unknown-unknown", "thumbv7em-none-eabihf"];
const RUSTUP_COMPONENTS: &[&str] = &["rustfmt", "clippy"];
/// (command that must exist, Debian package that provides it)
const APT_TOOLS: &[(&str, &str)] = &[
    ("clang", "clang"),
    ("wasm-ld", "lld"),
    ("socat", "socat"),
    ("mosquitto", "mosquitto"),
    ("mosquitto_pub", "mosquitto-clients"),
];

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let root = xtask::workspace_root();
    let result = match task.as_str() {
        "setup" => setup(),
        "modules" => modules(&root).map(drop),
        "demo" => demo(&root, &rest),
        "test" => test(&root),
        "bench" => bench(&root, &rest),
        _ => Err("usage: cargo xtask <setup|modules|demo|test|bench>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn setup() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup not found ({e}); Weir builds with a rustup toolchain"))?;
    let installed = String::from_utf8_lossy(&installed.stdout).to_string();
    let missing: Vec<&str> = RUSTUP_TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l == *t))
        .collect();
    if !missing.is_empty() {
        run(Command::new("rustup")
            .args(["target", "add"])
            .args(&missing))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let missing: Vec<&str> = RUSTUP_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !components.lines().any(|l| l.starts_with(c)))
        .collect();
    if !missing.is_empty() {
        run(Command::new("rustup")
            .args(["component", "add"])
            .args(&missing))?;
    }
    let pkgs: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, p)| *p)
        .collect();
    if !pkgs.is_empty() {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let sudo: &[&str] = if root {
            &[]
        } else if have("sudo") {
            &["sudo"]
        } else {
            return Err(format!(
                "missing packages {pkgs:?}; install them with apt-get as root"
            ));
        };
        let apt = |args: &[&str]| {
            let mut all: Vec<&str> = sudo.to_vec();
            all.extend_from_slice(args);
            let mut c = Command::new(all[0]);
            c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut c)
        };
        apt(&["apt-get", "update", "-qq"])?;
        let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&pkgs);
        apt(&args)?;
    }
    Ok(())
}

fn modules(root: &Path) -> Result<std::path::PathBuf, String> {
    setup()?;
    let dir = xtask::build_modules(root)?;
    eprintln!("modules in {}", dir.display());
    Ok(dir)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn demo(root: &Path, rest: &[String]) -> Result<(), String> {
    modules(root)?;
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "weir"]))?;
    let input = rest
        .first()
        .map_or("pipelines/samples/w1.jsonl", String::as_str);
    run(Command::new(root.join("target/release/weir"))
        .current_dir(root)
        .args(["run", "--config", "pipelines/w1.toml", "--input", input]))
}

fn test(root: &Path) -> Result<(), String> {
    modules(root)?;
    run(cargo()
        .current_dir(root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The firmware side builds for a microcontroller: no std, no allocator.
    run(cargo().current_dir(root).args([
        "build",
        "--quiet",
        "-p",
        "weir-wire",
        "-p",
        "weir-abi",
        "--target",
        "thumbv7em-none-eabihf",
        "--target-dir",
        "target/thumb",
    ]))?;
    run(cargo().current_dir(root).args(["test", "--workspace"]))
}

fn bench(root: &Path, rest: &[String]) -> Result<(), String> {
    modules(root)?;
    run(cargo()
        .current_dir(root)
        .args(["bench", "-p", "weir-benches"])
        .args(rest))?;
    run(cargo()
        .current_dir(root)
        .args(["bench", "-p", "weir", "--bench", "mqtt_ingest"]))
}
