//! `weir sim`: sensor nodes on a serial line, simulated with the firmware
//! SDK's own code (`weir_sensor::Node`), over a pseudo-terminal or a real
//! serial device.
//!
//! N nodes share one line, as on RS-485 or a UART multiplexer: every byte
//! the gateway writes reaches every node ([`Bus`] fans it out), and each
//! node answers only commands addressed to it. They play W1-shaped readings
//! (`id`, `ts`, `temp_c`, `hum`, `bat_mv`, `seq`; about 2% out of W1's
//! range) at a total rate, follow `set_interval`, and can damage what they
//! send on purpose (`--noise`): flipped bits, garbage between frames, and
//! frames dropped whole (the gateway sees the sequence gap). Every frame
//! written is printed as one JSON line, with what the noise did to it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::json;
use weir_sensor::{Identity, Node, Reading};

use crate::record::{cbor_to_json, now_ms};

/// How often, per frame, each kind of damage happens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Noise {
    /// A bit flipped somewhere in the frame (its CRC then fails).
    pub flips: f64,
    /// Random bytes written before the frame.
    pub garbage: f64,
    /// The frame not written at all.
    pub drops: f64,
}

impl Noise {
    /// `flips,garbage,drops`, each optionally `=P` (a probability per
    /// frame, default 0.05); empty for none.
    pub fn parse(s: &str) -> Result<Noise, String> {
        let mut n = Noise::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, p) = match part.split_once('=') {
                Some((name, p)) => (
                    name,
                    p.parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("noise `{part}`: give a probability from 0 to 1"))?,
                ),
                None => (part, 0.05),
            };
            match name {
                "flips" => n.flips = p,
                "garbage" => n.garbage = p,
                "drops" => n.drops = p,
                _ => return Err(format!("unknown noise `{name}` (flips, garbage, drops)")),
            }
        }
        Ok(n)
    }
}

/// A small seeded generator (xorshift64*): the same seed plays the same
/// readings and the same noise.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is taken as 1).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.bits() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

/// The line the nodes share: writes go out (through the noise), and what
/// arrives is copied to every node's queue.
pub struct Bus {
    file: File,
    queues: Vec<VecDeque<u8>>,
    noise: Noise,
    rng: Rng,
    /// The frame being written by a node, until its flush.
    frame: Vec<u8>,
    out: Box<dyn std::io::Write>,
    /// Frames written (or dropped by the noise).
    pub frames: u64,
}

impl Bus {
    /// A bus over `file`, printing each frame to `out`.
    pub fn new(
        file: File,
        noise: Noise,
        seed: u64,
        out: Box<dyn std::io::Write>,
    ) -> Rc<RefCell<Bus>> {
        Rc::new(RefCell::new(Bus {
            file,
            queues: Vec::new(),
            noise,
            rng: Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            frame: Vec::new(),
            out,
            frames: 0,
        }))
    }

    /// A node's connection to the bus.
    pub fn tap(bus: &Rc<RefCell<Bus>>) -> Tap {
        let mut b = bus.borrow_mut();
        b.queues.push(VecDeque::new());
        Tap {
            bus: bus.clone(),
            index: b.queues.len() - 1,
        }
    }

    /// Read whatever has arrived, without blocking, into every queue.
    fn pump(&mut self) -> std::io::Result<()> {
        let mut buf = [0u8; 4096];
        while readable(&self.file, 0)? {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for q in &mut self.queues {
                        q.extend(&buf[..n]);
                    }
                }
                // A pseudo-terminal whose other side is closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write the frame a node finished, as the noise lets it through.
    fn send_frame(&mut self) -> std::io::Result<()> {
        let original = std::mem::take(&mut self.frame);
        let mut frame = original.clone();
        let mut noise = Vec::new();
        let mut bytes = Vec::new();
        if self.rng.chance(self.noise.garbage) {
            let n = 1 + self.rng.bits() % 16;
            bytes.extend((0..n).map(|_| self.rng.bits() as u8));
            noise.push("garbage");
        }
        let dropped = self.rng.chance(self.noise.drops);
        if dropped {
            noise.push("dropped");
        } else {
            if self.rng.chance(self.noise.flips) && frame.len() > 2 {
                // Inside the frame, not its delimiters.
                let i = 1 + (self.rng.bits() as usize) % (frame.len() - 2);
                frame[i] ^= 1 << (self.rng.bits() % 8);
                noise.push("flipped");
            }
            bytes.extend_from_slice(&frame);
        }
        self.frames += 1;
        let written = self.file.write_all(&bytes).and_then(|()| self.file.flush());
        if let Err(e) = &written {
            noise.push(if e.raw_os_error() == Some(libc::EIO) {
                "line closed"
            } else {
                "write failed"
            });
        }
        self.print(&original, &noise);
        match written {
            Err(e) if e.raw_os_error() != Some(libc::EIO) => Err(e),
            _ => Ok(()),
        }
    }

    /// One JSON line for a frame: sensor, seq, kind, payload, noise.
    fn print(&mut self, frame: &[u8], noise: &[&str]) {
        let mut d: weir_wire::Decoder = weir_wire::Decoder::new();
        let mut line = None;
        d.push(frame, |f| {
            if let Ok(f) = f {
                let payload = serde_cbor::from_slice::<serde_cbor::Value>(f.payload)
                    .map(|v| cbor_to_json(&v))
                    .unwrap_or(serde_json::Value::Null);
                line = Some(json!({
                    "sensor": f.header.sensor_id,
                    "seq": f.header.seq,
                    "kind": f.header.kind.as_str(),
                    "payload": payload,
                    "noise": noise,
                }));
            }
        });
        if let Some(l) = line {
            let _ = writeln!(self.out, "{l}");
            let _ = self.out.flush();
        }
    }
}

/// Whether `f` has bytes to read within `ms` (or a hangup to report).
fn readable(f: &File, ms: i32) -> std::io::Result<bool> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// Whether the other side of a pseudo-terminal has it open (no hangup).
fn peer_open(f: &File) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n >= 0 && p.revents & libc::POLLHUP == 0
}

/// One node's view of the bus: embedded-io's UART traits, as a HAL's UART
/// gives them on a board.
pub struct Tap {
    bus: Rc<RefCell<Bus>>,
    index: usize,
}

impl embedded_io::ErrorType for Tap {
    type Error = std::io::Error;
}

impl embedded_io::Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let mut b = self.bus.borrow_mut();
        b.pump()?;
        let q = &mut b.queues[self.index];
        let n = buf.len().min(q.len());
        for (slot, byte) in buf.iter_mut().zip(q.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl embedded_io::ReadReady for Tap {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        let mut b = self.bus.borrow_mut();
        b.pump()?;
        Ok(!b.queues[self.index].is_empty())
    }
}

impl embedded_io::Write for Tap {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.bus.borrow_mut().frame.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.bus.borrow_mut().send_frame()
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes on the line, ids 1..=N.
    pub sensors: u32,
    /// Readings per second, all nodes together, before any `set_interval`.
    pub rate: f64,
    /// Stop after this many readings (all nodes together).
    pub count: Option<u64>,
    /// Keep answering commands this long after the last reading.
    pub linger: Duration,
    /// Damage on purpose.
    pub noise: Noise,
    /// Seed for the readings and the noise.
    pub seed: u64,
}

/// A node and the state of the readings it plays.
struct Sim {
    node: Node<Tap>,
    due: Instant,
    temp: f64,
    bat_mv: u64,
    seq: u64,
}

/// Run the nodes over `file` until the plan's count (and linger) is done.
/// With `wait_for_peer` (a pseudo-terminal), nothing is sent until the
/// other side opens the line.
pub fn run(
    file: File,
    plan: &Plan,
    wait_for_peer: bool,
    out: Box<dyn std::io::Write>,
) -> std::io::Result<u64> {
    if wait_for_peer {
        while !peer_open(&file) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let line = file.try_clone()?;
    let bus = Bus::new(file, plan.noise, plan.seed, out);
    let mut rng = Rng::new(plan.seed);
    let interval_ms = ((f64::from(plan.sensors) / plan.rate.max(0.001)) * 1000.0).clamp(
        f64::from(weir_sensor::command::MIN_INTERVAL_MS),
        f64::from(weir_sensor::command::MAX_INTERVAL_MS),
    ) as u32;
    let start = Instant::now();
    let mut nodes: Vec<Sim> = (1..=plan.sensors)
        .map(|id| Sim {
            node: Node::new(
                Bus::tap(&bus),
                id,
                interval_ms,
                Identity {
                    model: "weir-sim",
                    firmware: env!("CARGO_PKG_VERSION"),
                },
            ),
            // Staggered, so the line carries a steady flow.
            due: start
                + Duration::from_millis(
                    u64::from(interval_ms) * u64::from(id - 1) / u64::from(plan.sensors),
                ),
            temp: 10.0 + rng.unit() * 15.0,
            bat_mv: 3000 + rng.bits() % 300,
            seq: 0,
        })
        .collect();
    let mut sent = 0u64;
    let mut done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        for sim in &mut nodes {
            sim.node.poll().map_err(node_error)?;
        }
        if let Some(t) = done_at {
            if now >= t + plan.linger {
                return Ok(sent);
            }
        } else {
            for sim in &mut nodes {
                if now < sim.due || plan.count.is_some_and(|c| sent >= c) {
                    continue;
                }
                let mut buf = [0u8; 128];
                let reading = w1_reading(&mut rng, sim, &mut buf);
                sim.node.send(reading).map_err(node_error)?;
                sim.seq += 1;
                sent += 1;
                sim.due += Duration::from_millis(u64::from(sim.node.interval_ms()));
                if sim.due < now {
                    sim.due = now;
                }
            }
            if plan.count.is_some_and(|c| sent >= c) {
                done_at = Some(now);
            }
        }
        let next = nodes.iter().map(|s| s.due).min().unwrap_or(now);
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        // Wake early for the gateway's commands; a pseudo-terminal nobody
        // has open reports a hangup at once, so sleep instead.
        if peer_open(&line) {
            readable(&line, wait.as_millis() as i32)?;
        } else {
            std::thread::sleep(wait);
        }
    }
}

fn node_error(e: weir_sensor::NodeError<std::io::Error>) -> std::io::Error {
    match e {
        weir_sensor::NodeError::Uart(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

/// The next W1-shaped reading of a node: a slow walk in temperature, now
/// and then a reading out of W1's range (-40..85 °C).
fn w1_reading<'b>(rng: &mut Rng, sim: &mut Sim, buf: &'b mut [u8]) -> &'b [u8] {
    sim.temp = (sim.temp + (rng.unit() - 0.5) * 0.8).clamp(-30.0, 60.0);
    let temp = if rng.chance(0.02) {
        if rng.unit() < 0.5 {
            -45.0 - rng.unit() * 20.0
        } else {
            90.0 + rng.unit() * 20.0
        }
    } else {
        sim.temp
    };
    if rng.chance(0.01) {
        sim.bat_mv = sim.bat_mv.saturating_sub(1).max(2800);
    }
    let id = format!("s{}", sim.node.sensor_id());
    let r = Reading::new(buf)
        .text("id", &id)
        .uint("ts", now_ms())
        .float("temp_c", (temp * 100.0).round() / 100.0)
        .float("hum", ((20.0 + rng.unit() * 70.0) * 10.0).round() / 10.0)
        .uint("bat_mv", sim.bat_mv)
        .uint("seq", sim.seq)
        .finish();
    // Six short fields always fit 128 bytes.
    r.unwrap_or(&[0xa0])
}

/// A pseudo-terminal for the simulator: its master side, and the path of
/// the device the gateway opens (raw, no echo, as a UART).
pub fn open_pty() -> std::io::Result<(File, String)> {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the out-pointers are valid; `name` has room for a pts path.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            name.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `slave` is an open tty owned here and closed after its mode is
    // set (its hangup then tells when the gateway opens it); `name` was
    // NUL-terminated by openpty; `master` is owned by the File from here.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave, &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(slave, libc::TCSANOW, &t);
        libc::close(slave);
        let path = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        Ok((File::from_raw_fd(master), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_parsed_with_reasons() {
        assert_eq!(Noise::parse("").unwrap(), Noise::default());
        let n = Noise::parse("flips,drops=0.5").unwrap();
        assert_eq!((n.flips, n.garbage, n.drops), (0.05, 0.0, 0.5));
        assert!(Noise::parse("drops=2").unwrap_err().contains("0 to 1"));
        assert!(Noise::parse("fire").unwrap_err().contains("unknown noise"));
    }
}
