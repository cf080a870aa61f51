//! The node: readings out as numbered wire frames, commands in, replies out,
//! over any UART that implements embedded-io.

use embedded_io::{Read, ReadReady, Write};
use weir_wire::{CRC_LEN, Decoder, HEADER_LEN, RecordType, Sender, frame_len, max_encoded_len};

use crate::command::{Command, Extra, Reply};
use crate::error::{Error, ErrorKind};

/// The largest reading payload a node sends, bytes.
pub const MAX_READING: usize = 256;
/// The largest command payload a node reads, bytes; longer frames are
/// discarded by the decoder.
pub const MAX_COMMAND: usize = 64;

const FRAME: usize = frame_len(MAX_READING);
const COMMAND_FRAME: usize = max_encoded_len(HEADER_LEN + MAX_COMMAND + CRC_LEN);

/// What the node says it is, in reply to `identify`.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// The hardware or product name.
    pub model: &'static str,
    /// The firmware version.
    pub firmware: &'static str,
}

/// Why the node could not send or read.
#[derive(Debug)]
pub enum NodeError<E> {
    /// The UART failed.
    Uart(E),
    /// A payload longer than [`MAX_READING`].
    TooLarge,
}

impl<E: core::fmt::Debug> Error for NodeError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            NodeError::Uart(_) => ErrorKind::Uart,
            NodeError::TooLarge => ErrorKind::TooLarge,
        }
    }
}

/// A sensor node on a serial link to the gateway.
///
/// Call [`send`](Node::send) with each reading, and [`poll`](Node::poll)
/// often (every loop, or on a UART interrupt): it reads what the gateway
/// sent, answers each command addressed to this node, applies
/// `set_interval`, and hands the command to the caller (to blink for
/// `identify`, say).
pub struct Node<U> {
    uart: U,
    sender: Sender,
    decoder: Decoder<COMMAND_FRAME>,
    interval_ms: u32,
    identity: Identity,
    frame: [u8; FRAME],
    rejected: u32,
}

impl<U: Read + Write + ReadReady> Node<U> {
    /// A node with id `sensor_id` (its frames' header), first reporting
    /// every `interval_ms`.
    pub fn new(uart: U, sensor_id: u32, interval_ms: u32, identity: Identity) -> Self {
        Node {
            uart,
            sender: Sender::new(sensor_id),
            decoder: Decoder::new(),
            interval_ms,
            identity,
            frame: [0; FRAME],
            rejected: 0,
        }
    }

    /// Send a reading (a CBOR map, see [`Reading`](crate::Reading)) as a
    /// telemetry frame; returns its sequence number.
    pub fn send(&mut self, reading: &[u8]) -> Result<u32, NodeError<U::Error>> {
        self.send_kind(RecordType::Telemetry, reading)
    }

    /// Send a frame of any kind (events, heartbeats); returns its sequence number.
    pub fn send_kind(
        &mut self,
        kind: RecordType,
        payload: &[u8],
    ) -> Result<u32, NodeError<U::Error>> {
        if payload.len() > MAX_READING {
            return Err(NodeError::TooLarge);
        }
        let seq = self.sender.next_seq();
        let n = self
            .sender
            .frame(kind, payload, &mut self.frame)
            .map_err(|_| NodeError::TooLarge)?;
        self.uart
            .write_all(&self.frame[..n])
            .map_err(NodeError::Uart)?;
        self.uart.flush().map_err(NodeError::Uart)?;
        Ok(seq)
    }

    /// Read what has arrived without blocking; answer every command for
    /// this node. Returns the last command it carried out, if any.
    pub fn poll(&mut self) -> Result<Option<Command>, NodeError<U::Error>> {
        let mut chunk = [0u8; 32];
        let mut last = None;
        while self.uart.read_ready().map_err(NodeError::Uart)? {
            let n = self.uart.read(&mut chunk).map_err(NodeError::Uart)?;
            if n == 0 {
                break;
            }
            // Commands are copied out of the decoder, then answered.
            let mut got: heapless::Vec<(u32, heapless::Vec<u8, MAX_COMMAND>), 4> =
                heapless::Vec::new();
            let me = self.sender.sensor_id();
            let mut rejected = 0;
            self.decoder.push(&chunk[..n], |f| match f {
                Ok(f) if f.header.kind == RecordType::Command && f.header.sensor_id == me => {
                    let fits = heapless::Vec::from_slice(f.payload)
                        .ok()
                        .and_then(|p| got.push((f.header.seq, p)).ok());
                    if fits.is_none() {
                        rejected += 1;
                    }
                }
                Ok(_) => {} // for another node, or not a command
                Err(_) => rejected += 1,
            });
            self.rejected = self.rejected.saturating_add(rejected);
            for (seq, payload) in got {
                if let Some(c) = self.answer(seq, &payload)? {
                    last = Some(c);
                }
            }
        }
        Ok(last)
    }

    fn answer(&mut self, seq: u32, payload: &[u8]) -> Result<Option<Command>, NodeError<U::Error>> {
        let mut out = [0u8; 96];
        let answered = match Command::parse(payload) {
            Ok(c) => {
                let mut extra: heapless::Vec<(&str, Extra<'_>), 2> = heapless::Vec::new();
                match c {
                    Command::SetInterval { ms } => {
                        self.interval_ms = ms;
                        let _ = extra.push(("interval_ms", Extra::Uint(u64::from(ms))));
                    }
                    Command::Identify => {
                        let _ = extra.push(("model", Extra::Text(self.identity.model)));
                        let _ = extra.push(("fw", Extra::Text(self.identity.firmware)));
                    }
                    Command::Ping => {}
                }
                let r = Reply {
                    cmd: c.name(),
                    ack: seq,
                    ok: true,
                    error: None,
                };
                r.encode(&extra, &mut out).map(|n| (n, Some(c)))
            }
            Err((why, name)) => {
                let r = Reply {
                    cmd: name,
                    ack: seq,
                    ok: false,
                    error: Some(why.as_str()),
                };
                r.encode(&[], &mut out).map(|n| (n, None))
            }
        };
        let (n, done) = answered.map_err(|_| NodeError::TooLarge)?;
        self.send_kind(RecordType::Reply, &out[..n])?;
        Ok(done)
    }

    /// The reporting interval, milliseconds (`set_interval` changes it).
    pub fn interval_ms(&self) -> u32 {
        self.interval_ms
    }

    /// This node's id.
    pub fn sensor_id(&self) -> u32 {
        self.sender.sensor_id()
    }

    /// Frames that arrived damaged, or commands that did not fit.
    pub fn rejected(&self) -> u32 {
        self.rejected
    }

    /// The UART back.
    pub fn release(self) -> U {
        self.uart
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::Reading;

    /// An in-memory UART: what the gateway sent, and what the node wrote.
    #[derive(Default)]
    struct Loop {
        rx: Vec<u8>,
        tx: Vec<u8>,
    }
    impl embedded_io::ErrorType for Loop {
        type Error = core::convert::Infallible;
    }
    impl Read for Loop {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.rx.len());
            buf[..n].copy_from_slice(&self.rx[..n]);
            self.rx.drain(..n);
            Ok(n)
        }
    }
    impl ReadReady for Loop {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(!self.rx.is_empty())
        }
    }
    impl Write for Loop {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.tx.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn command(sensor: u32, seq: u32, c: Command) -> Vec<u8> {
        let mut p = [0u8; 64];
        let n = c.encode(&mut p).unwrap();
        let mut f = [0u8; 128];
        let h = weir_wire::Header {
            kind: RecordType::Command,
            sensor_id: sensor,
            seq,
        };
        let len = weir_wire::encode(&h, &p[..n], &mut f).unwrap();
        f[..len].to_vec()
    }

    /// (kind, seq, payload) of every frame the node wrote.
    fn frames(tx: &[u8]) -> Vec<(RecordType, u32, Vec<u8>)> {
        let mut d: Decoder = Decoder::new();
        let mut out = Vec::new();
        d.push(tx, |f| {
            let f = f.unwrap();
            out.push((f.header.kind, f.header.seq, f.payload.to_vec()));
        });
        out
    }

    const ID: Identity = Identity {
        model: "test-node",
        firmware: "0.1.0",
    };

    #[test]
    fn readings_go_out_numbered_and_commands_are_answered() {
        let mut node = Node::new(Loop::default(), 17, 5000, ID);
        let mut buf = [0u8; 64];
        let r = Reading::new(&mut buf)
            .text("id", "s17")
            .float("temp_c", 21.5)
            .finish()
            .unwrap();
        assert_eq!(node.send(r).unwrap(), 0);
        assert_eq!(node.send(r).unwrap(), 1);
        assert_eq!(node.poll().unwrap(), None, "nothing arrived");
        // A command for another node, garbage, then three for this one.
        let mut rx = command(18, 0, Command::Ping);
        rx.extend_from_slice(&[0x00, 0x13, 0x37, 0x42, 0x00]);
        rx.extend(command(17, 40, Command::Ping));
        rx.extend(command(17, 41, Command::SetInterval { ms: 60_000 }));
        rx.extend(command(17, 42, Command::Identify));
        node.uart.rx = rx;
        assert_eq!(node.poll().unwrap(), Some(Command::Identify));
        assert_eq!(node.interval_ms(), 60_000);
        assert_eq!(node.rejected(), 1, "the garbage frame");
        let out = frames(&node.release().tx);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].0, RecordType::Telemetry);
        let replies: Vec<_> = out[2..]
            .iter()
            .map(|(k, seq, p)| (*k, *seq, Reply::parse(p).unwrap()))
            .collect();
        assert_eq!(
            replies[0],
            (
                RecordType::Reply,
                2,
                Reply {
                    cmd: "ping",
                    ack: 40,
                    ok: true,
                    error: None
                }
            )
        );
        assert_eq!(
            replies[1].2,
            Reply {
                cmd: "set_interval",
                ack: 41,
                ok: true,
                error: None
            }
        );
        assert_eq!(replies[2].2.cmd, "identify");
        assert!(out[4].2.windows(9).any(|w| w == b"test-node"));
    }

    #[test]
    fn a_bad_command_gets_a_reply_that_says_why() {
        let mut node = Node::new(Loop::default(), 1, 5000, ID);
        node.uart.rx = command(1, 9, Command::SetInterval { ms: 1 });
        assert_eq!(node.poll().unwrap(), None);
        assert_eq!(node.interval_ms(), 5000, "unchanged");
        let out = frames(&node.release().tx);
        let reply = Reply::parse(&out[0].2).unwrap();
        assert_eq!((reply.cmd, reply.ack, reply.ok), ("set_interval", 9, false));
        assert_eq!(
            reply.error,
            Some("ms must be an integer from 10 to 86400000")
        );
    }

    #[test]
    fn a_reading_too_large_is_refused() {
        let mut node = Node::new(Loop::default(), 1, 5000, ID);
        let big = [0u8; MAX_READING + 1];
        assert_eq!(node.send(&big).unwrap_err().kind(), ErrorKind::TooLarge);
        let mut small = [0u8; 4];
        assert!(Reading::new(&mut small).text("id", "s17").finish().is_err());
    }
}
