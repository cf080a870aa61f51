//! The arm64 board image, booted under qemu-system-aarch64 (full-system
//! emulation, software CPU): weir comes up as a hardened systemd service and
//! forwards W1 telemetry to a "cloud" mosquitto on the host, from an MQTT
//! broker on the host and from a sensor node on an emulated UART
//! (a PCI 16550, /dev/ttyS0 in the guest). Then the serial suite that
//! qemu-user cannot run (gateway/tests/serial.rs) runs inside the guest,
//! and weir's memory is read from /proc in the guest.
//!
//! Built only with `--features image`; `cargo xtask image-test` builds the
//! image and the aarch64 serial tests, then runs this with
//! `WEIR_IMAGE_DIR` (image, vmlinuz, initrd.img) and `WEIR_ARM_SERIAL_TEST`
//! (the aarch64 serial test binary).
//!
//! The guest reaches the host's loopback as 10.0.2.2 (QEMU user networking);
//! the host reaches the guest's SSH through a forwarded 127.0.0.1 port.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the boot partition starts in the image (deploy/image/build.sh).
const BOOT_OFFSET: &str = "8M";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by PID) when dropped.
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &Path, port: u16) -> Kill {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        // mosquitto keeps 1,000 messages per subscriber by default and drops
        // the rest: the load below outruns an emulated board by far.
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"),
    )
    .unwrap();
    let k = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (cargo xtask setup installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    k
}

/// A QoS 1 subscriber on the cloud broker collecting every message.
struct Cloud {
    _sub: Kill,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Cloud {
    fn start(port: u16) -> Cloud {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", "cloud/#", "-i", "image-test-cloud"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    g.lock().unwrap().push(v);
                }
            }
        });
        Cloud {
            _sub: Kill(child),
            got,
        }
    }

    /// Bounded wait until `want` messages whose `id` starts with `prefix`.
    fn wait(&self, prefix: &str, want: usize, secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got: Vec<serde_json::Value> = self
                .got
                .lock()
                .unwrap()
                .iter()
                .filter(|v| v["id"].as_str().is_some_and(|id| id.starts_with(prefix)))
                .cloned()
                .collect();
            if got.len() >= want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The emulated board.
struct Board {
    qemu: Kill,
    console: PathBuf,
    key: PathBuf,
    ssh_port: u16,
}

impl Board {
    /// The serial console so far, without systemd's colour escapes.
    fn console(&self) -> String {
        let raw =
            String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned();
        let mut text = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ parameters final-byte
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                text.push(c);
            }
        }
        text
    }

    /// Bounded wait for `needle` on the serial console.
    fn wait_console(&mut self, needle: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.console().contains(needle) {
                return true;
            }
            if let Ok(Some(status)) = self.qemu.0.try_wait() {
                panic!("qemu exited ({status}):\n{}", self.console());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    /// Runs `cmd` in the guest as root over SSH: (exit ok, stdout+stderr).
    fn ssh(&self, cmd: &str) -> (bool, String) {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "BatchMode=yes",
                "root@127.0.0.1",
                cmd,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn ssh_ok(&self, cmd: &str) -> String {
        let (ok, out) = self.ssh(cmd);
        assert!(ok, "`{cmd}` failed in the guest:\n{out}");
        out
    }

    /// weir's main PID in the guest, and (VmRSS, VmHWM) in kB.
    fn weir_memory(&self) -> (u64, u64) {
        let out = self.ssh_ok(
            "grep -E '^Vm(RSS|HWM):' /proc/$(systemctl show -p MainPID --value weir)/status",
        );
        let kb = |key: &str| -> u64 {
            out.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {out}"))
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }
}

/// weir.toml for the board: W1 as in pipelines/w1.toml, over the host's
/// sensor broker and the UART, the durable buffer, the host's cloud broker.
fn board_config(sensors: u16, cloud: u16) -> String {
    let w1 = std::fs::read_to_string(workspace().join("pipelines/w1.toml")).unwrap();
    let w1 = w1.replace("id = \"gw-demo\"", "id = \"gw-qemu\"").replace(
        "modules_dir = \"../target/modules\"",
        "modules_dir = \"/usr/lib/weir/modules\"",
    );
    assert!(w1.contains("gw-qemu") && w1.contains("/usr/lib/weir/modules"));
    format!(
        r#"{w1}
[[source]]
type = "mqtt"
name = "sensors"
host = "10.0.2.2"
port = {sensors}
subscribe = [ {{ filter = "sensors/#", qos = 1 }} ]

[[source]]
type = "serial"
name = "uart"
path = "/dev/ttyS0"
baud = 115200
framing = {{ mode = "weir" }}
topic = "uart/{{sensor}}/telemetry"

[[sink]]
name = "cloud"
type = "mqtt"
host = "10.0.2.2"
port = {cloud}
topic = "cloud/{{gateway_id}}/telemetry"
"#
    )
}

/// `n` W1 readings from sensor node 9, framed with the wire protocol.
fn uart_frames(n: u32) -> Vec<u8> {
    let mut s = weir_wire::Sender::new(9);
    let mut out = Vec::new();
    for i in 0..n {
        let payload = serde_cbor::to_vec(&serde_json::json!({
            "id": "uart-9", "ts": 1_732_380_000_000u64 + u64::from(i) * 1000,
            "temp_c": 20.0 + f64::from(i % 10) / 10.0, "hum": 40.5, "bat_mv": 3100, "seq": i
        }))
        .unwrap();
        let mut buf = [0u8; 256];
        let len = s
            .frame(weir_wire::RecordType::Telemetry, &payload, &mut buf)
            .unwrap();
        out.extend_from_slice(&buf[..len]);
    }
    out
}

/// Publishes each line as one QoS 1 message to the host's sensor broker.
fn publish_lines(port: u16, lines: &str) {
    let mut publish = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", "sensors/field/telemetry", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publish
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(publish.wait().unwrap().success());
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?}: {status}");
}

#[test]
fn the_board_image_boots_weir_as_a_service_and_forwards_w1() {
    let images = std::env::var_os("WEIR_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/image"));
    for f in ["weir-arm64.img", "vmlinuz", "initrd.img"] {
        assert!(
            images.join(f).exists(),
            "{} missing: build the image with `cargo xtask image`",
            images.join(f).display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A fresh copy of the image, as if just flashed, with the headless setup
    // files on its boot partition.
    let img = d.join("board.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(images.join("weir-arm64.img"))
        .arg(&img));
    let key = d.join("key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let (sensors, cloud) = (free_port(), free_port());
    std::fs::write(d.join("weir.toml"), board_config(sensors, cloud)).unwrap();
    std::fs::copy(d.join("key.pub"), d.join("authorized_keys")).unwrap();
    let boot = format!("{}@@{BOOT_OFFSET}", img.display());
    run(Command::new("mcopy")
        .args(["-i", &boot])
        .arg(d.join("weir.toml"))
        .arg(d.join("authorized_keys"))
        .arg("::/"));

    let _sensors = mosquitto(d, sensors);
    let _cloud = mosquitto(d, cloud);
    let cloud_sub = Cloud::start(cloud);

    let ssh_port = free_port();
    let console = d.join("console.log");
    let uart = d.join("uart.sock");
    let started = Instant::now();
    let qemu = Command::new("qemu-system-aarch64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-smp",
            "2",
            "-m",
            "1024",
        ])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(images.join("vmlinuz"))
        .arg("-initrd")
        .arg(images.join("initrd.img"))
        .args([
            "-append",
            "root=LABEL=RASPIROOT rw console=ttyAMA0 systemd.show_status=1",
        ])
        .arg("-drive")
        .arg(format!("if=none,id=hd,format=raw,file={}", img.display()))
        .args(["-device", "virtio-blk-pci,drive=hd"])
        .args([
            "-netdev",
            &format!("user,id=net,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"),
        ])
        .args(["-device", "virtio-net-pci,netdev=net,romfile="])
        .arg("-chardev")
        .arg(format!(
            "socket,id=uart,path={},server=on,wait=off",
            uart.display()
        ))
        .args(["-device", "pci-serial,chardev=uart"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=weirsrc,security_model=none,readonly=on",
            workspace().display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-system-aarch64 (apt install qemu-system-arm)");
    let mut board = Board {
        qemu: Kill(qemu),
        console,
        key,
        ssh_port,
    };

    // 1. weir comes up as a service on first boot, with the config from the
    // boot partition (checked by weir-bootconfig before it was applied).
    assert!(
        board.wait_console("Started weir.service", 600),
        "weir.service did not start within 10 minutes:\n{}",
        board.console()
    );
    eprintln!(
        "image: weir.service started {:?} after power-on",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while !board.ssh("true").0 {
        assert!(Instant::now() < deadline, "no SSH:\n{}", board.console());
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(board.ssh_ok("systemctl is-active weir").trim(), "active");
    let show = board.ssh_ok("systemctl show weir -p User -p Type -p WatchdogUSec -p NRestarts");
    for want in [
        "User=weir",
        "Type=notify",
        "WatchdogUSec=30s",
        "NRestarts=0",
    ] {
        assert!(show.contains(want), "{want} in:\n{show}");
    }
    let applied = board.ssh_ok("cat /etc/weir/weir.toml; ls /boot/firmware");
    assert!(
        applied.contains("gw-qemu") && applied.contains("weir.toml.applied"),
        "{applied}"
    );
    let (idle_rss, _) = board.weir_memory();
    eprintln!("image: weir RSS idle {idle_rss} kB");

    // 2. W1 from the host's sensor broker reaches the host's cloud broker.
    let samples = workspace().join("pipelines/samples/w1.jsonl");
    let lines = std::fs::read_to_string(&samples).unwrap();
    let kept = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["temp_c"]
                .as_f64()
                .is_some_and(|t| (-40.0..=85.0).contains(&t))
        })
        .count();
    publish_lines(sensors, &lines);
    let got = cloud_sub.wait("s", kept, 300);
    assert_eq!(
        got.len(),
        kept,
        "W1 records at the cloud:\n{}",
        board.ssh("journalctl -u weir --no-pager | tail -40").1
    );
    assert!(
        got.iter()
            .all(|v| v["gateway_id"] == "gw-qemu" && v["msg_id"].is_string())
    );
    assert!(
        got.iter().all(|v| v["temp_f"].is_f64()),
        "enriched by W1: {}",
        got[0]
    );

    // 3. A sensor node on the UART: wire frames into the emulated 16550.
    const UART_RECORDS: u32 = 200;
    let mut port = std::os::unix::net::UnixStream::connect(&uart).unwrap();
    port.write_all(&uart_frames(UART_RECORDS)).unwrap();
    port.flush().unwrap();
    let got = cloud_sub.wait("uart-9", UART_RECORDS as usize, 300);
    let seqs: Vec<u64> = got.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (0..u64::from(UART_RECORDS)).collect::<Vec<_>>(),
        "every UART record, in order:\n{}",
        board.ssh("journalctl -u weir --no-pager | tail -40").1
    );
    // 4. W1 load: 20,000 generated readings at QoS 1, as fast as the
    // host's mosquitto_pub sends them; then weir's memory, peak included.
    const LOAD: usize = 20_000;
    let readings = testkit::w1::generate(LOAD, 7);
    let load_kept = testkit::w1::reference(&readings).len();
    let body: String = readings.iter().map(|r| format!("{}\n", r.json())).collect();
    let load_start = Instant::now();
    publish_lines(sensors, &body);
    let got = cloud_sub.wait("s", kept + load_kept, 600);
    assert_eq!(
        got.len(),
        kept + load_kept,
        "W1 load at the cloud:\n{}",
        board.ssh("journalctl -u weir --no-pager | tail -40").1
    );
    eprintln!(
        "image: {LOAD} readings ({load_kept} kept by W1) through the board in {:?}",
        load_start.elapsed()
    );
    let (rss, hwm) = board.weir_memory();
    eprintln!("image: after the load: weir RSS {rss} kB, peak {hwm} kB");

    // 5. The watchdog and Restart=on-failure: weir killed, systemd restarts it.
    board.ssh_ok("systemctl kill -s KILL weir");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let show = board
            .ssh("systemctl show weir -p NRestarts -p ActiveState")
            .1;
        if show.contains("NRestarts=1") && show.contains("ActiveState=active") {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted: {show}");
        std::thread::sleep(Duration::from_secs(2));
    }

    // 6. The serial suite qemu-user cannot run (real termios ioctls), from
    // the workspace shared into the guest at the same path.
    let serial_test = std::env::var("WEIR_ARM_SERIAL_TEST").expect(
        "WEIR_ARM_SERIAL_TEST: the aarch64 serial test binary (cargo xtask image-test sets it)",
    );
    let ws = workspace().display().to_string();
    let out = board.ssh_ok(&format!(
        "mkdir -p {ws} && (mountpoint -q {ws} || mount -t 9p -o trans=virtio,version=9p2000.L,ro weirsrc {ws}) \
         && cd {ws}/gateway && WEIR_TEST_PATIENCE=10 {serial_test} --include-ignored --test-threads=1 2>&1"
    ));
    eprintln!("{out}");
    assert!(out.contains("test result: ok. 4 passed"), "{out}");

    eprintln!(
        "image: weir on arm64 (qemu-system-aarch64, Debian image): RSS idle {idle_rss} kB; \
         after {} MQTT + {UART_RECORDS} UART records RSS {rss} kB, peak {hwm} kB; \
         whole test {:?}",
        kept + load_kept,
        started.elapsed()
    );
    let _ = board.ssh("systemctl poweroff");
    let deadline = Instant::now() + Duration::from_secs(120);
    while board.qemu.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
}
