//! Helpers shared by the integration tests that run `weir serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bounded wait of `secs`, stretched by `WEIR_TEST_PATIENCE` (a factor,
/// default 1) where everything runs emulated: the board image test runs
/// the serial suite under full-system QEMU with a debug build. The waits
/// bound how long a test may hang; they never measure speed.
pub fn patience(secs: u64) -> Duration {
    let factor = std::env::var("WEIR_TEST_PATIENCE")
        .ok()
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    Duration::from_secs(secs * factor)
}

/// `weir serve`, its stdout lines and stderr collected as they come.
pub struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    log: Arc<Mutex<String>>,
}

impl Serve {
    pub fn start(config: &Path) -> Serve {
        Serve::start_with(config, &[])
    }

    /// Start with extra arguments for `weir serve`.
    pub fn start_with(config: &Path, extra: &[&str]) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .args(extra);
        Serve::spawn(cmd)
    }

    /// Start `cmd` (a `weir serve` command line the caller prepared, for
    /// example to run as another user), collecting its output.
    pub fn spawn(mut cmd: Command) -> Serve {
        // The caller's WEIR_LOG wins (a test at trace level).
        if !cmd.get_envs().any(|(k, _)| k == "WEIR_LOG") {
            cmd.env(
                "WEIR_LOG",
                std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        let g = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                g.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Serve { child, lines, log }
    }

    /// Wait (bounded) until `n` output lines arrived; returns them all.
    pub fn wait_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + patience(30);
        loop {
            let got = self.lines.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + patience(30);
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` line of /proc/<pid>/status (`VmHWM`: peak RSS), in bytes.
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
            * 1024
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The output lines so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or acknowledge.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait for a clean exit, return the log.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        // Bounded: a weir that ignores SIGTERM fails the test, not hangs it.
        let deadline = Instant::now() + patience(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "weir serve did not stop within 60 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "weir serve exits cleanly on SIGTERM: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    /// A test that fails before `stop` must not leave weir running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `base/name`, created world-writable: mosquitto drops privileges and
/// keeps its persistence file there.
pub fn broker_dir(base: &Path, name: &str) -> std::path::PathBuf {
    let d = base.join(name);
    std::fs::create_dir_all(&d).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// A WAT module that passes each record on after spinning for `ms`
/// milliseconds of wall time on `clock_now_ms` (needs the `clock` grant and
/// raised fuel): slow the same way in a debug build, a release build or
/// under qemu. Written to `dir`, returned as its path.
pub fn clock_spin_module(dir: &Path, ms: u64) -> std::path::PathBuf {
    let wat = format!(
        r#"(module
        (import "weir" "emit" (func $emit (param i32 i32) (result i32)))
        (import "weir" "clock_now_ms" (func $now (result i64)))
        (memory (export "memory") 1)
        (func (export "weir_abi_v1"))
        (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "weir_transform") (param $ptr i32) (param $len i32) (result i32)
            (local $until i64) (local.set $until (i64.add (call $now) (i64.const {ms})))
            (loop $l (br_if $l (i64.lt_s (call $now) (local.get $until))))
            (drop (call $emit (local.get $ptr) (local.get $len)))
            (i32.const 0)))"#
    );
    let path = dir.join(format!("spin-{ms}.wat"));
    std::fs::write(&path, wat).unwrap();
    path
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on 127.0.0.1, stopped (by PID) when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    /// Start one on `port`, persisting sessions in `dir`.
    pub fn start(dir: &Path, port: u16) -> Mosquitto {
        Mosquitto::start_with(dir, port, "")
    }

    /// Start one on `port` with extra `mosquitto.conf` lines (for the
    /// listener, such as TLS), persisting sessions in `dir`.
    pub fn start_with(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{extra}\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 1000000\nmax_inflight_messages 100\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (cargo xtask setup)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port }
    }

    /// Publish `messages` (one per line) with mosquitto_pub.
    pub fn publish(
        &self,
        version: &str,
        qos: u8,
        topic: &str,
        messages: &[String],
        extra: &[&str],
    ) {
        publish(self.port, version, qos, topic, messages, extra)
    }

    /// Stop it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Publish `messages` (one per line) with mosquitto_pub.
pub fn publish(
    port: u16,
    version: &str,
    qos: u8,
    topic: &str,
    messages: &[String],
    extra: &[&str],
) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-q",
            &qos.to_string(),
            "-t",
            topic,
            "-l",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for m in messages {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
}

/// Publish one message of any size and content (mosquitto_pub `-s`).
pub fn publish_bytes(port: u16, version: &str, qos: u8, topic: &str, payload: &[u8]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-q", &qos.to_string(), "-t", topic, "-s"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(payload).unwrap();
    }
    assert!(child.wait().unwrap().success());
}

/// `mosquitto_sub` with a persistent session at QoS 1, collecting every
/// JSON payload (arrays, from batched publishes, are flattened).
pub struct Sub {
    child: Child,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Sub {
    /// Subscribe to `filter` on `port` as client `id`; `extra` adds
    /// mosquitto_sub options (TLS files). Waits (bounded) for the broker's
    /// SUBACK, read from mosquitto_sub's `-d` lines.
    pub fn start(port: u16, id: &str, filter: &str, extra: &[&str]) -> Sub {
        // Line-buffered (stdbuf execs mosquitto_sub in place): its `-d`
        // lines would otherwise sit in a pipe buffer until it exits.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-c",
                "-d",
                "-i",
                id,
                "-t",
                filter,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed");
        let got = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (got.clone(), subscribed.clone());
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // `-d` debug lines: the SUBACK is what the start waits for.
                if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
                    if line.contains("received SUBACK") {
                        s.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    continue;
                }
                match serde_json::from_str(&line) {
                    Ok(serde_json::Value::Array(v)) => g.lock().unwrap().extend(v),
                    Ok(v) => g.lock().unwrap().push(v),
                    Err(_) => g.lock().unwrap().push(serde_json::Value::String(line)),
                }
            }
        });
        // Made before the wait, so a failed wait still ends the child.
        let sub = Sub { child, got };
        let deadline = Instant::now() + patience(10);
        while !subscribed.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "mosquitto_sub got no SUBACK");
            std::thread::sleep(Duration::from_millis(10));
        }
        sub
    }

    /// Wait (bounded by `secs`) until `n` payloads arrived; returns them all.
    pub fn wait(&self, n: usize, secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + patience(secs);
        loop {
            let len = self.got.lock().unwrap().len();
            if len >= n || Instant::now() > deadline {
                return self.got.lock().unwrap().clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (bounded by `secs`) until every `seq` in `want` arrived at
    /// least once (duplicates do not count twice); returns all payloads.
    pub fn wait_seqs(&self, want: &[u64], secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + patience(secs);
        loop {
            let got = self.got();
            let have: std::collections::HashSet<u64> =
                got.iter().filter_map(|v| v["seq"].as_u64()).collect();
            if want.iter().all(|s| have.contains(s)) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The payloads so far.
    pub fn got(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto_pub/sub options for the client certificate `make_certs` made
/// in `dir`.
pub fn client_tls_args(dir: &Path) -> Vec<String> {
    let p = dir.display();
    vec![
        "--cafile".into(),
        format!("{p}/ca.pem"),
        "--cert".into(),
        format!("{p}/client.pem"),
        "--key".into(),
        format!("{p}/client.key"),
    ]
}

/// A mosquitto.conf TLS listener with the server certificate `make_certs`
/// made in `dir`, requiring client certificates.
pub fn mtls_listener(dir: &Path) -> String {
    format!(
        "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
        dir.display()
    )
}

/// Make a CA, a server certificate for 127.0.0.1 and a client certificate
/// with openssl (EC P-256), in `dir`; a second, unrelated CA as `other-ca.pem`.
pub fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", "/CN=weir-test-ca"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem]);
        run(&args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "weir-gateway")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-subj", &subj];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        run(&args);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }
    // mosquitto started as root drops to its own user, which must be able to
    // reach and read these throwaway, test-only keys.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for key in ["server.key", "client.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A size-limited filesystem the test mounts itself (tmpfs), unmounted
/// when dropped. `None`, with the reason, where the test cannot mount
/// (not root, no mount namespace permission).
pub struct SmallDisk {
    pub dir: std::path::PathBuf,
}

impl SmallDisk {
    pub fn mount(dir: &Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (this test needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    /// Fill the filesystem with `filler` until it refuses another byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }

    /// Give the space back.
    pub fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// An ext4 filesystem in a file, loop-mounted at `dir`, that a test can
/// freeze (`fsfreeze`): every write and fsync on it then blocks, as on a
/// dying SD card, until it is thawed. Thawed and unmounted when dropped.
pub struct FreezableDisk {
    pub dir: std::path::PathBuf,
}

impl FreezableDisk {
    pub fn mount(image: &Path, dir: &Path) -> FreezableDisk {
        let run = |cmd: &mut Command| {
            let out = cmd
                .output()
                .expect("mkfs.ext4, mount and fsfreeze are installed");
            assert!(
                out.status.success(),
                "{cmd:?} failed (this test needs root and loop devices): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::File::create(image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir));
        FreezableDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Block every write from now on.
    pub fn freeze(&self) -> Thaw {
        let ok = Command::new("fsfreeze")
            .arg("-f")
            .arg(&self.dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "fsfreeze -f failed");
        Thaw(self.dir.clone())
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        // Thawing a thawed filesystem fails, harmlessly: quietly.
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Thaws a frozen filesystem when dropped (declare it after the process
/// that may be blocked on it, so it is thawed before that one is killed).
pub struct Thaw(std::path::PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Publish `n` QoS 1 messages on `sensors/s1/telemetry` at about `rate`
/// per second, from a thread, as client `id`: message `i` is `line(i)`.
pub fn stream(
    port: u16,
    id: &str,
    n: u64,
    rate: u64,
    line: impl Fn(u64) -> String + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let id = id.to_string();
    std::thread::spawn(move || {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "sensors/s1/telemetry", "-l", "-i", &id])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub is installed");
        let mut stdin = child.stdin.take().unwrap();
        let began = Instant::now();
        for i in 0..n {
            writeln!(stdin, "{}", line(i)).unwrap();
            // Paced: message i goes out at i / rate seconds.
            let due = Duration::from_micros(i * 1_000_000 / rate);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
    })
}

/// The JSON lines of the file `dir/out.jsonl` (a file sink) so far: whole
/// lines only (the sink may be writing the last one).
pub fn out_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Wait (bounded by `secs`) until `dir/out.jsonl` holds `n` lines.
pub fn wait_out(dir: &Path, n: usize, weir: &Serve, secs: u64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + patience(secs);
    loop {
        let lines = out_lines(dir);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} records arrived\n{}",
            lines.len(),
            weir.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
