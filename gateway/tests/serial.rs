//! The serial source against real pseudo-terminals (openpty): every
//! framing mode, garbage and recovery, a burst at 921600 baud, and a device
//! that disappears and comes back.
//!
//! These need real serial ioctls (TCGETS2), which qemu-user does not
//! emulate: under `--cfg qemu_user` they are ignored, and they run natively
//! and under full-system QEMU instead.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{Serve, patience};

/// A pseudo-terminal from openpty(3): `dev` is a link to the slave side,
/// the device weir opens; the test writes to the master side. Dropping it
/// unplugs the device: the link goes, then the master closes (weir's reads
/// get a hangup).
struct Pty {
    master: std::fs::File,
    dev: PathBuf,
}

impl Pty {
    fn new(dir: &Path) -> Pty {
        // The simulator's: raw, no echo, the slave side closed until weir
        // opens it.
        let (master, path) = weir::sim::open_pty().expect("openpty");
        let dev = dir.join("dev");
        std::os::unix::fs::symlink(path, &dev).unwrap();
        Pty { master, dev }
    }

    fn write(&self, bytes: &[u8]) {
        let mut f = &self.master;
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.dev);
    }
}

/// A config with one serial source and a pass-through pipeline (the C
/// downsample module keeping every record).
fn config(dir: &Path, dev: &Path, framing: &str, topic: &str) -> PathBuf {
    let text = format!(
        r#"
[gateway]
modules_dir = {modules:?}

[[source]]
type = "serial"
name = "serial0"
path = {dev:?}
baud = 921600
framing = {framing}
topic = {topic:?}

[[pipeline]]
name = "pass"
sources = ["serial0"]

  [[pipeline.stage]]
  name = "every"
  module = "c_downsample.wasm"
  grants = ["state", "log"]
  config = {{ every = 1 }}
"#,
        modules = testkit::modules_dir().display().to_string(),
        dev = dev.display().to_string(),
    );
    let path = dir.join("weir.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn wire_frames(sensor: u32, range: std::ops::Range<u32>) -> Vec<u8> {
    let mut s = weir_wire::Sender::new(sensor);
    let mut out = Vec::new();
    for seq in range {
        // Skip ahead so the sender's seq matches `seq`.
        while s.next_seq() < seq {
            let mut scratch = [0u8; 64];
            s.frame(weir_wire::RecordType::Heartbeat, &[], &mut scratch)
                .unwrap();
        }
        let payload =
            serde_cbor::to_vec(&serde_json::json!({"id": format!("s{sensor}"), "n": seq})).unwrap();
        let mut buf = [0u8; 128];
        let n = s
            .frame(weir_wire::RecordType::Telemetry, &payload, &mut buf)
            .unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
#[cfg_attr(qemu_user, ignore = "serial ioctls are not emulated by qemu-user")]
fn weir_frames_with_garbage_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::new(dir.path());
    let weir = Serve::start(&config(
        dir.path(),
        &pty.dev,
        "{ mode = \"weir\" }",
        "sensors/{sensor}/telemetry",
    ));
    assert!(weir.wait_log("serial device open"));
    let mut stream = b"\xde\xad\xbe\xef line noise \x00".to_vec();
    stream.extend(wire_frames(4, 0..5));
    let mut corrupt = wire_frames(4, 5..6);
    // Flip a bit in the CRC (the last data bytes before the delimiter), never
    // making a zero byte: the frame stays well-framed and fails its CRC.
    let i = corrupt.len() - 3;
    corrupt[i] ^= if corrupt[i] == 0x10 { 0x20 } else { 0x10 };
    stream.extend(corrupt);
    stream.extend(wire_frames(4, 9..10)); // seq 6, 7, 8 lost on the way
    pty.write(&stream);
    let got = weir.wait_lines(6);
    let ns: Vec<u64> = got
        .iter()
        .map(|l| l["payload"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 2, 3, 4, 9]);
    assert_eq!(got[0]["topic"], "sensors/4/telemetry");
    assert_eq!(got[0]["headers"]["sensor"], "4");
    assert_eq!(got[5]["headers"]["seq"], "9");
    let log = weir.stop();
    assert!(log.contains("records=6"), "{log}");
    assert!(
        log.contains("lost_frames=4"),
        "seq 5 (corrupt) and 6-8: {log}"
    );
    assert!(
        log.contains("rejected=\"cobs=1,crc=1\""),
        "the noise, then the bad CRC: {log}"
    );
}

/// A framing config, the bytes sent, and the (payload key, value) expected per record.
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, serde_json::Value)>);

#[test]
#[cfg_attr(qemu_user, ignore = "serial ioctls are not emulated by qemu-user")]
fn text_and_length_prefixed_modes() {
    let cbor = serde_cbor::to_vec(&serde_json::json!({"id": "s7", "v": 1})).unwrap();
    let mut prefixed = vec![0, cbor.len() as u8];
    prefixed.extend(&cbor);
    prefixed.extend([0, 2, 0xff, 0xff]); // malformed message, right length
    prefixed.extend([0, cbor.len() as u8]);
    prefixed.extend(&cbor);
    let cases: [Case<'_>; 4] = [
        (
            "{ mode = \"lines\", format = \"json\" }",
            b"{\"id\":\"s1\",\"v\":1}\r\n{oops\n{\"id\":\"s2\",\"v\":2}\n".to_vec(),
            vec![("id", "s1".into()), ("id", "s2".into())],
        ),
        (
            "{ mode = \"lines\", format = \"csv\" }",
            b"id,v\ns1,1.5\ns2\ns3,-2\n".to_vec(),
            vec![("v", 1.5.into()), ("v", (-2).into())],
        ),
        (
            "{ mode = \"lines\", format = \"nmea\" }",
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\n$GPGGA,1*00\n"
                .to_vec(),
            vec![("sentence", "GGA".into())],
        ),
        (
            "{ mode = \"length-prefixed\", width = 2, payload = \"cbor\" }",
            prefixed,
            vec![("id", "s7".into()), ("id", "s7".into())],
        ),
    ];
    for (framing, input, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let pty = Pty::new(dir.path());
        let weir = Serve::start(&config(
            dir.path(),
            &pty.dev,
            framing,
            "serial/{source}/{id}",
        ));
        assert!(weir.wait_log("serial device open"), "{framing}");
        pty.write(&input);
        let got = weir.wait_lines(want.len());
        assert_eq!(got.len(), want.len(), "{framing}: {got:?}");
        for (line, (key, value)) in got.iter().zip(&want) {
            assert_eq!(&line["payload"][key], value, "{framing}: {line}");
        }
        let log = weir.stop();
        assert!(
            log.contains("rejected=\"malformed=1\"") || log.contains("rejected=\"checksum=1\""),
            "{framing}: {log}"
        );
    }
}

#[test]
#[cfg_attr(qemu_user, ignore = "serial ioctls are not emulated by qemu-user")]
fn a_burst_at_921600_baud_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pty = Pty::new(dir.path());
    let weir = Serve::start(&config(
        dir.path(),
        &pty.dev,
        "{ mode = \"weir\" }",
        "sensors/{sensor}/telemetry",
    ));
    assert!(weir.wait_log("serial device open"));
    const N: u32 = 5000;
    let stream = wire_frames(1, 0..N);
    // A pty has no baud rate: pace the writes at what a 921600-baud 8N1 line
    // carries, 92,160 bytes/s (about 2,300 frames/s, a 2 s burst).
    const BYTES_PER_SEC: usize = 921_600 / 10;
    let start = Instant::now();
    let mut f = &pty.master;
    for (i, chunk) in stream.chunks(1024).enumerate() {
        let due = Duration::from_secs_f64((i * 1024) as f64 / BYTES_PER_SEC as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        f.write_all(chunk).unwrap();
    }
    let got = weir.wait_lines(N as usize);
    assert_eq!(got.len(), N as usize);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, l)| l["payload"]["n"] == i as u64),
        "in order"
    );
    let log = weir.stop();
    assert!(
        log.contains("lost_frames=0") && log.contains("dropped_full=0"),
        "{log}"
    );
}

#[test]
#[cfg_attr(qemu_user, ignore = "serial ioctls are not emulated by qemu-user")]
fn a_device_that_disappears_is_waited_for_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    // Start with no device at all: weir keeps running and retries.
    let weir = Serve::start(&config(
        dir.path(),
        &dev,
        "{ mode = \"lines\", format = \"json\" }",
        "t",
    ));
    assert!(weir.wait_log("serial device unavailable"));
    let pty = Pty::new(dir.path());
    assert!(weir.wait_log("serial device is back"));
    pty.write(b"{\"n\":1}\n");
    assert_eq!(weir.wait_lines(1).len(), 1);
    // Unplug: the pty disappears.
    drop(pty);
    assert!(weir.wait_log("serial device lost"));
    // Plug it back in.
    let pty = Pty::new(dir.path());
    let deadline = Instant::now() + patience(30);
    while weir.log().matches("serial device is back").count() < 2 {
        assert!(Instant::now() < deadline, "not reopened: {}", weir.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    pty.write(b"{\"n\":2}\n");
    let got = weir.wait_lines(2);
    assert_eq!(
        got.iter()
            .map(|l| l["payload"]["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let log = weir.stop();
    assert_eq!(
        log.matches("serial device lost").count(),
        1,
        "each outage is logged once: {log}"
    );
    assert!(log.contains("outages=2"), "{log}");
}
