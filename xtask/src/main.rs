//! `cargo xtask <task>`: Weir's developer tasks.
//!
//! - `setup`:   install what the build needs if it is missing (rustup targets,
//!   apt packages, Zig from PyPI and AssemblyScript from npm under
//!   `target/tools/`), so a fresh Debian/Ubuntu machine works.
//! - `modules`: build every guest module into `target/modules/`.
//! - `demo`:    store-and-forward W1 between two throwaway local brokers
//!   (`demo run`: W1 over the bundled sample records, no broker).
//! - `test`:    the full test suite (what CI runs): fmt, clippy, all tests,
//!   the ARM suites under qemu-user, the .deb packages.
//! - `deb`:     .deb packages for amd64, arm64, armhf, units verified.
//! - `bench`:   the benchmarks, each printing a ratio against its baseline.
//! - `cross`:   ARM builds (aarch64, armv7) with Debian's cross compilers
//!   and the test suites that run under qemu-user.
//! - `image`:   the bootable arm64 Debian board image with weir installed
//!   (`deploy/image/build.sh`), in `target/image/`.
//! - `image-test`: boots that image under qemu-system-aarch64 and checks the
//!   service, W1 forwarding to a broker on the host, a serial sensor on an
//!   emulated UART, and the serial suite (`tests/tests/image.rs`).

use std::path::Path;
use std::process::{Command, ExitCode};

/// wasm32 for guest modules; the thumb targets (Cortex-M4F and Cortex-M0+)
/// prove the firmware crates are no_std and need no allocator.
const RUSTUP_TARGETS: &[&str] = &[
    "wasm32-unknown-unknown",
    "thumbv7em-none-eabihf",
    "thumbv6m-none-eabi",
];
/// The microcontroller targets the firmware crates are built for.
const THUMB_TARGETS: &[&str] = &["thumbv7em-none-eabihf", "thumbv6m-none-eabi"];
const RUSTUP_COMPONENTS: &[&str] = &["rustfmt", "clippy"];
/// Debian packages every task needs, by name (checked with dpkg, installed
/// with `--no-install-recommends`, so nothing comes through "recommends"):
/// clang and lld build the C guest modules (wasi-libc and the wasm32
/// compiler runtime, the stock WASI ones), mosquitto and its clients are
/// the tests' brokers, openssl makes the tests' CA and certificates,
/// procps gives `kill` to the tests that signal weir, mount gives
/// `mount`/`umount` to the tests that fill a tmpfs of their own.
const APT_PACKAGES: &[&str] = &[
    "clang",
    "lld",
    "wasi-libc",
    "libclang-rt-14-dev-wasm32",
    "mosquitto",
    "mosquitto-clients",
    "openssl",
    "procps",
    "mount",
    // mkfs.ext4 and fsfreeze: the watchdog test freezes a loop-mounted ext4.
    "e2fsprogs",
    "util-linux",
    // The W1 modules on an emulated Cortex-M4 (mps2-an386), and readelf
    // for the firmware's footprint.
    "qemu-system-arm",
    "binutils",
];

/// What the ARM builds and their qemu-user runs need. The cross compilers
/// only *recommend* their target's libc headers, and ring's C build fails
/// without them (`bits/libc-header-start.h: No such file or directory`).
const CROSS_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "gcc-arm-linux-gnueabihf",
    "libc6-dev-armhf-cross",
    "qemu-user",
];

/// Every task, with its one-line description (`cargo xtask` lists them).
const TASKS: &[(&str, &str)] = &[
    (
        "setup",
        "install what the build needs if missing (rustup targets, apt packages, Zig, AssemblyScript)",
    ),
    ("modules", "build every guest module into target/modules/"),
    (
        "demo",
        "W1 store-and-forward between two throwaway local brokers (`demo run`: no broker; `demo serial`: simulated sensor nodes)",
    ),
    (
        "test",
        "the full test suite, what CI runs: fmt, clippy, tests, ARM under qemu-user, packages",
    ),
    (
        "bench",
        "the benchmarks, each with a ratio against its baseline; `bench compare` only W1 end to end against the C reference",
    ),
    (
        "cross",
        "aarch64 + armv7 builds and their test suites under qemu-user",
    ),
    (
        "deb",
        ".deb packages, units verified (`deb --arch amd64|arm64|armhf` for one)",
    ),
    ("image", "the bootable arm64 Debian board image (as root)"),
    (
        "image-test",
        "boot that image under qemu-system-aarch64 and test it (as root)",
    ),
];

fn usage() -> String {
    let mut s = String::from("usage: cargo xtask <task>\n\ntasks:\n");
    for (name, what) in TASKS {
        s.push_str(&format!("  {name:<11} {what}\n"));
    }
    s
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let rest: Vec<String> = std::env::args().skip(2).collect();
    let root = xtask::workspace_root();
    let result = match task.as_str() {
        "" | "help" | "--help" | "-h" => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        "setup" => setup(&root),
        "modules" => modules(&root).map(drop),
        "demo" => demo(&root, &rest),
        "test" => test(&root),
        "bench" => bench(&root, &rest),
        "cross" => cross(&root),
        "deb" => deb(&root, &rest),
        "image" => image(&root),
        "image-test" => image_test(&root),
        other => Err(format!("unknown task `{other}`\n\n{}", usage())),
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

fn setup(root: &Path) -> Result<(), String> {
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
    apt_install(APT_PACKAGES)?;
    install_zig(root)?;
    install_assemblyscript(root)
}

/// Zig from PyPI (`ziglang`), in a virtual environment under
/// `target/tools/zig`: Debian's Python refuses `pip install` outside one.
/// Needs python3-venv (Debian), which brings python3 and the pip wheel.
fn install_zig(root: &Path) -> Result<(), String> {
    let python = xtask::zig_python(root);
    let version = Command::new(&python)
        .args(["-m", "ziglang", "version"])
        .output();
    if version.is_ok_and(|o| o.stdout.starts_with(xtask::ZIG_VERSION.as_bytes())) {
        return Ok(());
    }
    let venv = xtask::tools_dir(root).join("zig");
    let made = |python: &str| {
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !made("python3") {
        apt_install(&["python3-venv"])?;
        if !made("python3") {
            return Err("python3 -m venv failed after installing python3-venv".into());
        }
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("ziglang=={}", xtask::ZIG_VERSION),
    ]))
}

/// AssemblyScript from npm, under `target/tools/assemblyscript`. Needs
/// Node.js and npm (Debian's nodejs and npm when `npm` is missing).
fn install_assemblyscript(root: &Path) -> Result<(), String> {
    let dir = xtask::tools_dir(root).join("assemblyscript");
    let want = format!("\"version\": \"{}\"", xtask::ASSEMBLYSCRIPT_VERSION);
    let manifest = dir.join("node_modules/assemblyscript/package.json");
    if std::fs::read_to_string(&manifest).is_ok_and(|m| m.contains(&want))
        && xtask::asc(root).exists()
    {
        return Ok(());
    }
    if !have("npm") || !have("node") {
        apt_install(&["nodejs", "npm"])?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    // Its own package.json, so npm installs here and not in a parent folder.
    let package = dir.join("package.json");
    if !package.exists() {
        std::fs::write(&package, "{\"private\": true}\n").map_err(|e| e.to_string())?;
    }
    run(Command::new("npm").current_dir(&dir).args([
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        &format!("assemblyscript@{}", xtask::ASSEMBLYSCRIPT_VERSION),
    ]))
}

/// Whether Debian package `pkg` is installed (dpkg says "ii").
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

/// Install with apt the packages that are missing (as root, or through
/// sudo), by name and without "recommends".
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let pkgs: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
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
    setup(root)?;
    let dir = xtask::build_modules(root)?;
    eprintln!("modules in {}", dir.display());
    Ok(dir)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Weir's main job with nothing to start by hand: two throwaway mosquitto
/// brokers on free loopback ports (the sensors' and the "cloud"), `weir
/// serve` with W1 and the durable buffer between them, the bundled sample
/// records published at QoS 1, and what reaches the cloud printed.
/// `cargo xtask demo run` runs W1 over the samples without any broker.
fn demo(root: &Path, rest: &[String]) -> Result<(), String> {
    modules(root)?;
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "weir"]))?;
    let weir = root.join("target/release/weir");
    let samples = root.join("pipelines/samples/w1.jsonl");
    if rest.first().map(String::as_str) == Some("run") {
        return run(Command::new(&weir)
            .current_dir(root)
            .args(["run", "--config", "pipelines/w1.toml", "--input"])
            .arg(&samples));
    }
    let dir = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = if rest.first().map(String::as_str) == Some("serial") {
        demo_serial(root, &dir, &weir)
    } else {
        demo_forward(root, &dir, &weir, &samples)
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The serial path with no broker: `weir sim` (three simulated sensor
/// nodes on a pseudo-terminal) feeds `weir serve`'s serial source and W1,
/// whose records print on stdout; halfway, `weir sensor send` asks node 2
/// to identify itself and prints its reply.
fn demo_serial(root: &Path, dir: &Path, weir: &Path) -> Result<(), String> {
    let dev = dir.join("sensors");
    let w1 = std::fs::read_to_string(root.join("pipelines/w1.toml")).map_err(|e| e.to_string())?;
    let w1 = w1.replace(
        "modules_dir = \"../target/modules\"",
        &format!(
            "modules_dir = {:?}\ncontrol = {:?}",
            root.join("target/modules").display().to_string(),
            dir.join("weir.sock").display().to_string()
        ),
    );
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "{w1}\n[[source]]\ntype = \"serial\"\nname = \"serial0\"\npath = {:?}\nframing = {{ mode = \"weir\" }}\n",
            dev.display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let sim_out = std::fs::File::create(dir.join("sim.jsonl")).map_err(|e| e.to_string())?;
    let mut sim = Child(
        Command::new(weir)
            .args(["sim", "--pty", "--link"])
            .arg(&dev)
            .args([
                "--sensors",
                "3",
                "--rate",
                "6",
                "--count",
                "36",
                "--linger",
                "1s",
            ])
            .stdout(sim_out)
            .spawn()
            .map_err(|e| format!("weir sim: {e}"))?,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dev.exists() {
        if std::time::Instant::now() > deadline {
            return Err("weir sim made no pseudo-terminal".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "demo: 3 simulated sensor nodes on {}; weir serve runs W1 on them, records below",
        dev.display()
    );
    let serve = Child(
        Command::new(weir)
            .args(["serve", "--config"])
            .arg(&config)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    eprintln!("demo: weir sensor send --source serial0 --sensor 2 identify");
    run(Command::new(weir)
        .args(["sensor", "send", "--config"])
        .arg(&config)
        .args(["--source", "serial0", "--sensor", "2", "identify"]))?;
    let status = sim.0.wait().map_err(|e| e.to_string())?;
    let _ = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status();
    let mut serve = serve;
    let _ = serve.0.wait();
    let sent = std::fs::read_to_string(dir.join("sim.jsonl")).unwrap_or_default();
    let replies = sent
        .lines()
        .filter(|l| l.contains("\"kind\":\"reply\""))
        .count();
    eprintln!(
        "demo: the simulator sent {} frames, {replies} of them replies",
        sent.lines().count()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("weir sim: {status}"))
    }
}

/// A child process killed (by PID) when dropped.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn mosquitto(dir: &Path, port: u16) -> Result<Child, String> {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto: {e} (`cargo xtask setup` installs it)"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err("mosquitto did not start".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(Child(child))
}

fn demo_forward(root: &Path, dir: &Path, weir: &Path, samples: &Path) -> Result<(), String> {
    let (local, cloud) = (free_port()?, free_port()?);
    let _local = mosquitto(dir, local)?;
    let _cloud = mosquitto(dir, cloud)?;
    let w1 = std::fs::read_to_string(root.join("pipelines/w1.toml")).map_err(|e| e.to_string())?;
    let w1 = w1.replace(
        "modules_dir = \"../target/modules\"",
        &format!(
            "modules_dir = {:?}",
            root.join("target/modules").display().to_string()
        ),
    );
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "{w1}\n[store]\npath = {store:?}\n\n[[source]]\ntype = \"mqtt\"\nname = \"sensors\"\nhost = \"127.0.0.1\"\nport = {local}\nsubscribe = [ {{ filter = \"sensors/#\", qos = 1 }} ]\n\n[[sink]]\nname = \"cloud\"\ntype = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {cloud}\ntopic = \"cloud/{{gateway_id}}/telemetry\"\n",
            store = dir.join("store").display().to_string()
        ),
    )
    .map_err(|e| e.to_string())?;
    let lines = std::fs::read_to_string(samples).map_err(|e| e.to_string())?;
    let kept = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["temp_c"]
                .as_f64()
                .is_some_and(|t| (-40.0..=85.0).contains(&t))
        })
        .count();
    eprintln!(
        "demo: sensors broker 127.0.0.1:{local}, cloud broker 127.0.0.1:{cloud}, config {}",
        config.display()
    );
    // The cloud side: print what arrives, stop after every kept record.
    let sub = Child(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cloud.to_string(),
                "-q",
                "1",
                "-t",
                "cloud/#",
            ])
            .args(["-C", &kept.to_string(), "-W", "60"])
            .spawn()
            .map_err(|e| format!("mosquitto_sub: {e}"))?,
    );
    let serve = Child(
        Command::new(weir)
            .args(["serve", "--config"])
            .arg(&config)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    run(Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &local.to_string(), "-q", "1"])
        .args(["-t", "sensors/demo/telemetry", "-f"])
        .arg(samples)
        .arg("-l"))
    .or_else(|_| -> Result<(), String> {
        // Older mosquitto_pub takes -l only with stdin.
        let mut p = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &local.to_string(),
                "-q",
                "1",
                "-t",
                "sensors/demo/telemetry",
                "-l",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        use std::io::Write;
        p.stdin
            .take()
            .expect("piped")
            .write_all(lines.as_bytes())
            .map_err(|e| e.to_string())?;
        p.wait().map_err(|e| e.to_string())?;
        Ok(())
    })?;
    let mut sub = sub;
    let status = sub.0.wait().map_err(|e| e.to_string())?;
    // Stop weir cleanly: it logs every counter.
    let _ = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status();
    let mut serve = serve;
    let _ = serve.0.wait();
    if status.success() {
        eprintln!(
            "demo: {kept} of {} sample records reached the cloud broker through W1 and the durable buffer",
            lines.lines().count()
        );
        Ok(())
    } else {
        Err(format!(
            "the cloud subscriber did not get all {kept} records: {status}"
        ))
    }
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
        // Lints (and so compiles) the board image test, which runs only
        // with `cargo xtask image-test`.
        "--features",
        "weir-tests/image",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The firmware side builds for microcontrollers: no std, no allocator.
    for target in THUMB_TARGETS {
        run(cargo().current_dir(root).args([
            "build",
            "--quiet",
            "-p",
            "weir-wire",
            "-p",
            "weir-abi",
            "-p",
            "weir-sensor",
            "--target",
            target,
            "--target-dir",
            "target/thumb",
        ]))?;
    }
    // The example firmware (its own workspace): compile-checked, not run.
    run(cargo()
        .current_dir(root.join("firmware-sdk/examples/rp2040-sht31"))
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(root.join("target/examples")))?;
    run(cargo().current_dir(root).args(["test", "--workspace"]))?;
    // ARM: both targets cross-built and their suites run under qemu-user;
    // then the .deb packages, each unit checked with systemd-analyze.
    // `WEIR_SKIP_ARM=1` skips both for a quick local run; CI runs them.
    if std::env::var_os("WEIR_SKIP_ARM").is_some() {
        eprintln!("WEIR_SKIP_ARM set: skipping the ARM builds, qemu-user runs and packages");
        return Ok(());
    }
    cross(root)?;
    deb(root, &[])
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
    apt_install(CROSS_PACKAGES)?;
    binfmt(&["aarch64", "arm"])?;
    let config = ["--config", "cross/config.toml"];
    for (target, prefix, _) in CROSS {
        // Library-level suites. The serial suite needs real termios
        // ioctls: it runs in the board image (`cargo xtask image-test`).
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
        // The other languages' modules are the same Wasm bytes on every
        // target: their comparison with Rust's records runs natively and
        // on aarch64; under armv7 emulation it costs minutes.
        let armv7 = target.starts_with("armv7");
        let mut w1 = cargo();
        w1.current_dir(root).args(config).args([
            "test",
            "--target",
            target,
            "-p",
            "weir-tests",
            "--test",
            "w1",
        ]);
        if armv7 {
            w1.args(["--", "--skip", "every_language_gives_the_rust_records"]);
        }
        run(&mut w1)?;
        // The suites that spawn the ARM weir binary (and mosquitto, which
        // runs natively): the kernel hands the ARM binary to
        // qemu-user-static through binfmt_misc, with Debian's cross libc
        // as its root. Their waits stretch ten-fold under emulation.
        // The store-and-forward suite (outages, full disks, damage, TLS)
        // runs whole on aarch64. On armv7, mutual TLS and an outage
        // mid-stream only: the store's code runs in the library suite
        // above, and the whole suite's three minutes under emulation kept
        // the test command near its time limit.
        let suites: &[(&[&str], &[&str])] = if armv7 {
            &[
                (&["--test", "cli", "--test", "mqtt"], &[]),
                (
                    &["--test", "cloud"],
                    &["mtls_cloud_delivers", "cloud_outage_mid_stream"],
                ),
            ]
        } else {
            &[(&["--test", "cli", "--test", "mqtt", "--test", "cloud"], &[])]
        };
        for (tests, only) in suites {
            run(cargo()
                .current_dir(root)
                .args(config)
                .args(["test", "--target", target, "-p", "weir"])
                .args(*tests)
                .arg("--")
                .args(*only)
                // Eight restarts of an emulated weir around a 50,000-record
                // stream take over five minutes per target; it runs
                // natively. The scaffolds and the other languages' modules
                // test the host's toolchains and the modules, not the
                // target: each runs weir dozens of times, minutes under
                // emulation.
                .args(["--skip", "sigkill_during_a_50k_stream"])
                .args(["--skip", "module_new_scaffolds"])
                .args(["--skip", "zig_and_assemblyscript_w1_stages"])
                .args(["--skip", "a_stock_wasi_"])
                .env("QEMU_LD_PREFIX", format!("/usr/{prefix}"))
                .env("WEIR_TEST_PATIENCE", "10"))?;
        }
    }
    Ok(())
}

/// Registers qemu-user-static for `arches` (binfmt names: aarch64, arm)
/// with binfmt_misc, mounting it if needed. Needs root.
fn binfmt(arches: &[&str]) -> Result<(), String> {
    apt_install(&["qemu-user-static"])?;
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    for arch in arches {
        if dir.join(format!("qemu-{arch}")).exists() {
            continue;
        }
        if !dir.join("register").exists() {
            run(Command::new("mount").args([
                "-t",
                "binfmt_misc",
                "binfmt_misc",
                "/proc/sys/fs/binfmt_misc",
            ]))
            .map_err(|e| format!("{e}: mounting binfmt_misc needs root (or WEIR_SKIP_ARM=1)"))?;
        }
        let conf = format!("/usr/lib/binfmt.d/qemu-{arch}.conf");
        let line = std::fs::read_to_string(&conf).map_err(|e| format!("{conf}: {e}"))?;
        let line = line
            .lines()
            .find(|l| l.starts_with(':'))
            .ok_or(format!("{conf}: no entry"))?;
        std::fs::write(dir.join("register"), line).map_err(|e| {
            format!("registering {conf} with binfmt_misc: {e} (needs root, or WEIR_SKIP_ARM=1)")
        })?;
        eprintln!("registered qemu-{arch} (qemu-user-static) with binfmt_misc");
    }
    Ok(())
}

/// The benchmarks. `bench compare [MODE...]` runs only the end-to-end
/// comparison with the C reference.
fn bench(root: &Path, rest: &[String]) -> Result<(), String> {
    modules(root)?;
    if rest.first().map(String::as_str) == Some("compare") {
        return compare(root, &rest[1..]);
    }
    run(cargo()
        .current_dir(root)
        .args(["bench", "-p", "weir-benches"])
        .args(rest))?;
    run(cargo()
        .current_dir(root)
        .args(["bench", "-p", "weir", "--bench", "mqtt_ingest"]))?;
    compare(root, &[])
}

/// W1 end to end against the C reference processor, with the harness in
/// `../shared/bench/` (`compare.sh`): a loopback mosquitto, the load
/// generator, then the C reference and weir (durable and not) in one run,
/// and the ratio table. Needs libmosquitto-dev (the load generator and the
/// C reference link it); skipped with a note without it or the harness.
/// `QOS=1` in the environment runs it at QoS 1 on both hops.
fn compare(root: &Path, modes: &[String]) -> Result<(), String> {
    let script = root.join("../shared/bench/compare.sh");
    if !script.is_file() {
        eprintln!(
            "skipping the comparison with the C reference: {} is not here",
            script.display()
        );
        return Ok(());
    }
    if !Path::new("/usr/include/mosquitto.h").is_file() {
        eprintln!(
            "skipping the comparison with the C reference: it needs libmosquitto-dev (apt-get install -y libmosquitto-dev mosquitto mosquitto-clients gcc)"
        );
        return Ok(());
    }
    run(cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "weir"]))?;
    eprintln!(
        "W1 end to end against the C reference (../shared/bench/compare.sh; about 10 minutes)"
    );
    run(Command::new("bash")
        .arg(&script)
        .args(modes)
        .current_dir(root))
}

/// .deb packages for amd64, arm64 and armhf (cargo-deb, metadata in
/// gateway/Cargo.toml), each checked: contents, and its unit with
/// `systemd-analyze verify` against the package's own files.
/// `deb` builds all three; `deb --arch ARCH` (repeatable) only those.
fn deb(root: &Path, rest: &[String]) -> Result<(), String> {
    const ALL: [&str; 3] = ["amd64", "arm64", "armhf"];
    let mut arches: Vec<&str> = Vec::new();
    let mut args = rest.iter();
    while let Some(a) = args.next() {
        let arch = match a.strip_prefix("--arch=") {
            Some(v) => v,
            None if a == "--arch" => args.next().ok_or("--arch needs a value")?,
            None => return Err(format!("unknown argument `{a}` (deb takes --arch ARCH)")),
        };
        let known = ALL
            .iter()
            .find(|x| **x == arch)
            .ok_or(format!("unknown arch `{arch}` (amd64, arm64 or armhf)"))?;
        arches.push(known);
    }
    if arches.is_empty() {
        arches = ALL.to_vec();
    }
    let _ = build_debs(root, &arches)?;
    Ok(())
}

/// Builds and checks the packages for `arches`; returns their paths.
fn build_debs(root: &Path, arches: &[&str]) -> Result<Vec<std::path::PathBuf>, String> {
    modules(root)?;
    if !have("cargo-deb") {
        run(cargo().args(["install", "cargo-deb", "--locked"]))?;
    }
    apt_install(&["systemd", "dpkg-dev"])?;
    apt_install(CROSS_PACKAGES)?;
    let targets: Vec<&str> = CROSS.iter().map(|(t, _, _)| *t).collect();
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&targets))?;
    let mut builds: Vec<Option<(&str, &str)>> = Vec::new();
    if arches.contains(&"amd64") {
        builds.push(None);
    }
    builds.extend(
        CROSS
            .iter()
            .zip(["arm64", "armhf"])
            .filter(|(_, arch)| arches.contains(arch))
            .map(|((t, prefix, _), _)| Some((*t, *prefix))),
    );
    for build in builds {
        let mut cmd = cargo();
        // The `dist` profile: release tuned for size (Cargo.toml).
        cmd.current_dir(root).args([
            "deb",
            "-p",
            "weir",
            "--profile",
            "dist",
            "--output",
            "target/debian/",
        ]);
        if let Some((target, prefix)) = build {
            let var = format!(
                "CARGO_TARGET_{}_LINKER",
                target.to_uppercase().replace('-', "_")
            );
            cmd.args(["--target", target])
                .env(var, format!("{prefix}-gcc"));
        }
        run(&mut cmd)?;
    }
    let debs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("target/debian"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let mut built = Vec::new();
    for &arch in arches {
        let deb = debs
            .iter()
            .find(|p| p.to_string_lossy().ends_with(&format!("_{arch}.deb")))
            .ok_or(format!("no {arch} package in target/debian"))?;
        let dir = root.join("target/debian").join(format!("root-{arch}"));
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir))?;
        for f in [
            "usr/bin/weir",
            "etc/weir/weir.toml",
            "usr/lib/systemd/system/weir.service",
            "usr/lib/weir/modules/weir_w1_enrich.wasm",
        ] {
            if !dir.join(f).exists() {
                return Err(format!("{}: {f} missing", deb.display()));
            }
        }
        // The unit's dependencies (targets) come from the host's systemd.
        run(Command::new("cp")
            .args(["-an", "/usr/lib/systemd/system/."])
            .arg(dir.join("usr/lib/systemd/system/")))?;
        run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", dir.display()))
            .arg(dir.join("usr/lib/systemd/system/weir.service")))?;
        let size = std::fs::metadata(deb).map_err(|e| e.to_string())?.len();
        let bin = std::fs::metadata(dir.join("usr/bin/weir"))
            .map_err(|e| e.to_string())?
            .len();
        eprintln!(
            "{}: {size} bytes, weir {bin} bytes (stripped, profile dist), unit verified",
            deb.display()
        );
        built.push(deb.clone());
    }
    Ok(built)
}

/// What building and booting the board image needs, by package.
const IMAGE_PACKAGES: &[&str] = &[
    "debootstrap",
    "qemu-user-static",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "fdisk",
    "qemu-system-arm",
    "openssh-client",
];

/// The arm64 board image: the package, then deploy/image/build.sh.
fn image(root: &Path) -> Result<(), String> {
    apt_install(IMAGE_PACKAGES)?;
    let deb = build_debs(root, &["arm64"])?.remove(0);
    let out = root.join("target/image");
    run(Command::new("bash")
        .arg(root.join("deploy/image/build.sh"))
        .arg(&out)
        .arg(&deb))
}

/// Builds the image, and the aarch64 serial test binary to run inside it,
/// then boots it: `tests/tests/image.rs`.
fn image_test(root: &Path) -> Result<(), String> {
    image(root)?;
    let out = cargo()
        .current_dir(root)
        // Release: the serial suite includes a 921600-baud burst, which a
        // debug build cannot keep up with under emulation (the source drops
        // what the pipeline cannot take, as a UART would).
        .args([
            "--config",
            "cross/config.toml",
            "test",
            "--release",
            "--no-run",
        ])
        .args(["--target", "aarch64-unknown-linux-gnu", "-p", "weir"])
        .args(["--test", "serial", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err("building the aarch64 serial tests failed".into());
    }
    // The test binary is the compiler artifact that has an executable.
    let serial = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "serial")
        .find_map(|v| v["executable"].as_str().map(String::from))
        .ok_or("no serial test executable in cargo's output")?;
    run(cargo()
        .current_dir(root)
        .args(["test", "-p", "weir-tests", "--features", "image"])
        .args(["--test", "image", "--", "--nocapture"])
        .env("WEIR_IMAGE_DIR", root.join("target/image"))
        .env("WEIR_ARM_SERIAL_TEST", serial))
}
