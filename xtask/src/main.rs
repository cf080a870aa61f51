//! `cargo xtask <task>`: Weir's developer tasks.
//!
//! - `setup`:   install what the build needs if it is missing (rustup targets,
//!   apt packages), so a fresh Debian/Ubuntu machine works.
//! - `modules`: build every guest module into `target/modules/`.
//! - `demo`:    run the W1 pipeline over the bundled sample records.
//! - `test`:    the full test suite (what CI runs): fmt, clippy, all tests.
//! - `bench`:   the benchmarks, each printing a ratio against its baseline.
//! - `cross`:   ARM builds (aarch64, armv7) with Debian's cross compilers,
//!   their stripped sizes, and the test suites that run under qemu-user.

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
        "cross" => cross(&root),
        _ => Err("usage: cargo xtask <setup|modules|demo|test|bench|cross>".into()),
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
    apt_install(APT_TOOLS)
}

/// Install with apt the packages of the tools that are missing (as root, or
/// through sudo).
fn apt_install(tools: &[(&str, &str)]) -> Result<(), String> {
    let pkgs: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, p)| *p)
        .collect();
    if pkgs.is_empty() {
        return Ok(());
    }
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
    apt(&args)
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

/// ARM targets and the Debian packages that build and run them.
const CROSS: &[(&str, &str, &str)] = &[
    (
        "aarch64-unknown-linux-gnu",
        "aarch64-linux-gnu",
        "qemu-aarch64",
    ),
    (
        "armv7-unknown-linux-gnueabihf",
        "arm-linux-gnueabihf",
        "qemu-arm",
    ),
];

fn cross(root: &Path) -> Result<(), String> {
    modules(root)?;
    let targets: Vec<&str> = CROSS.iter().map(|(t, _, _)| *t).collect();
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&targets))?;
    apt_install(&[
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("arm-linux-gnueabihf-gcc", "gcc-arm-linux-gnueabihf"),
        ("qemu-aarch64", "qemu-user"),
    ])?;
    let config = ["--config", "cross/config.toml"];
    for (target, prefix, _) in CROSS {
        run(cargo().current_dir(root).args(config).args([
            "build",
            "--release",
            "-p",
            "weir",
            "--target",
            target,
        ]))?;
        let built = root.join("target").join(target).join("release/weir");
        let stripped = root.join("target").join(format!("weir-{target}.stripped"));
        run(Command::new(format!("{prefix}-strip"))
            .arg("-o")
            .arg(&stripped)
            .arg(&built))?;
        let size = std::fs::metadata(&stripped)
            .map_err(|e| e.to_string())?
            .len();
        eprintln!(
            "{target}: weir stripped {size} bytes ({:.1} MB)",
            size as f64 / 1e6
        );
        // Library-level suites; those that spawn the weir binary or open
        // serial ports need a real (or full-system emulated) ARM machine.
        run(cargo()
            .current_dir(root)
            .args(config)
            .args(["test", "--target", target])
            .args([
                "-p",
                "weir-wire",
                "-p",
                "weir-abi",
                "-p",
                "weir-guest",
                "-p",
                "weir",
                "--lib",
            ]))?;
        run(cargo().current_dir(root).args(config).args([
            "test", "--target", target, "-p", "weir", "--test", "sandbox",
        ]))?;
        run(cargo().current_dir(root).args(config).args([
            "test",
            "--target",
            target,
            "-p",
            "weir-tests",
            "--test",
            "w1",
        ]))?;
    }
    Ok(())
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
