//! # weir-wire: Weir's serial wire protocol
//!
//! Sensor nodes send records to the gateway over serial links (UART, RS-485,
//! USB CDC) as frames. One crate holds the encoder and the streaming decoder,
//! used by the firmware side and by the gateway alike. `no_std`, no allocator,
//! bounded memory.
//!
//! ## A frame
//!
//! ```text
//! 0x00 COBS( version:u8 | type:u8 | sensor_id:u32 LE | seq:u32 LE | payload | crc32:u32 LE ) 0x00
//! ```
//!
//! - **COBS** framing with `0x00` as the delimiter: the delimiter never occurs
//!   inside a frame, so a receiver that starts mid-stream or loses bytes
//!   resynchronises at the next `0x00`. Frames are sent with a delimiter on
//!   both sides, so a frame cut short (a reset sensor, a dropped byte run)
//!   ends at the next frame's leading delimiter: only the damaged frame is
//!   lost. Empty frames (consecutive delimiters) are ignored.
//! - **Header**: protocol [`VERSION`], [`RecordType`], sensor id, and a
//!   per-sensor sequence number (the gateway counts gaps as lost frames).
//! - **Payload**: a CBOR item; for [`RecordType::Telemetry`], a map of
//!   sensor fields such as `{"id":"s17","temp_c":21.53,...}`.
//! - **CRC-32** (IEEE 802.3 polynomial, as in Ethernet and zlib) over header
//!   and payload. CRC-32 rather than CRC-16: frames reach 1 KiB, where a
//!   16-bit check lets one corrupted frame in 65,536 through, while CRC-32
//!   catches every burst of up to 32 bits and all but about one in 4·10⁹
//!   other corruptions. Four bytes per frame is cheap at serial rates, and
//!   table-driven CRC-32 costs a few cycles per byte on a Cortex-M.
//!
//! ## Layout
//! - [`encode`]: one frame into a buffer; [`Sender`] numbers frames for a sensor.
//! - [`Decoder`]: the streaming decoder, fed bytes as they arrive.
//! - [`FrameError`]: why a frame was rejected.
#![no_std]
#![warn(missing_docs)]

use core::fmt;

use crc::{CRC_32_ISO_HDLC, Crc};

/// Protocol version carried in every frame.
pub const VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 10;
/// Bytes of CRC after the payload.
pub const CRC_LEN: usize = 4;
/// Default largest payload.
pub const MAX_PAYLOAD: usize = 1024;
/// Default largest frame before COBS encoding.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + CRC_LEN;
/// Default decoder buffer: the largest frame, COBS-encoded.
pub const MAX_ENCODED: usize = max_encoded_len(MAX_FRAME);

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Bytes a frame of `raw` bytes (header + payload + CRC) takes once
/// COBS-encoded, without the delimiter.
pub const fn max_encoded_len(raw: usize) -> usize {
    raw + raw / 254 + 1
}

/// Bytes needed to encode a frame with a payload of `payload` bytes, both
/// delimiters included.
pub const fn frame_len(payload: usize) -> usize {
    max_encoded_len(HEADER_LEN + payload + CRC_LEN) + 2
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordType {
    /// A CBOR map of sensor readings.
    Telemetry = 1,
    /// A CBOR map describing an event (boot, fault, button).
    Event = 2,
    /// Liveness only; the payload may be empty.
    Heartbeat = 3,
    /// Downlink, gateway to sensor: a CBOR map `{"cmd": name, ...}` for the
    /// sensor named in the header; the header's sequence number is the
    /// gateway's, per sensor, and the reply quotes it.
    Command = 4,
    /// Uplink, the sensor's answer to a command: a CBOR map with `cmd`,
    /// `ack` (the command's sequence number) and `ok`, and `error` when
    /// `ok` is false.
    Reply = 5,
}

impl RecordType {
    /// The type for a header byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordType::Telemetry),
            2 => Some(RecordType::Event),
            3 => Some(RecordType::Heartbeat),
            4 => Some(RecordType::Command),
            5 => Some(RecordType::Reply),
            _ => None,
        }
    }

    /// A short name, for logs and record headers.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::Telemetry => "telemetry",
            RecordType::Event => "event",
            RecordType::Heartbeat => "heartbeat",
            RecordType::Command => "command",
            RecordType::Reply => "reply",
        }
    }
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: RecordType,
    /// The sending sensor.
    pub sensor_id: u32,
    /// Per-sensor sequence number, wrapping.
    pub seq: u32,
}

/// A decoded frame; the payload borrows from the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The payload (CBOR).
    pub payload: &'a [u8],
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload is larger than the limit given.
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The output buffer cannot hold the frame (see [`frame_len`]).
    BufferTooSmall,
}

/// Encode one frame into `out`, both delimiters included; returns its length.
/// `out` needs [`frame_len`]`(payload.len())` bytes.
pub fn encode(header: &Header, payload: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    if out.len() < frame_len(payload.len()) {
        return Err(EncodeError::BufferTooSmall);
    }
    let mut head = [0u8; HEADER_LEN];
    head[0] = VERSION;
    head[1] = header.kind as u8;
    head[2..6].copy_from_slice(&header.sensor_id.to_le_bytes());
    head[6..10].copy_from_slice(&header.seq.to_le_bytes());
    let mut digest = CRC32.digest();
    digest.update(&head);
    digest.update(payload);
    let crc = digest.finalize().to_le_bytes();
    out[0] = 0;
    let end = out.len() - 1;
    let mut enc = cobs::CobsEncoder::new(&mut out[1..end]);
    for part in [&head[..], payload, &crc[..]] {
        enc.push(part).map_err(|_| EncodeError::BufferTooSmall)?;
    }
    let n = 1 + enc.finalize();
    out[n] = 0;
    Ok(n + 1)
}

/// Numbers the frames of one sensor: the firmware side of the protocol.
#[derive(Debug, Clone)]
pub struct Sender {
    sensor_id: u32,
    seq: u32,
}

impl Sender {
    /// A sender for `sensor_id`, starting at sequence 0.
    pub fn new(sensor_id: u32) -> Self {
        Sender { sensor_id, seq: 0 }
    }

    /// Encode the next frame into `out` and advance the sequence number.
    pub fn frame(
        &mut self,
        kind: RecordType,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let header = Header {
            kind,
            sensor_id: self.sensor_id,
            seq: self.seq,
        };
        let n = encode(&header, payload, out)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(n)
    }

    /// The sequence number of the next frame.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// The sensor this sender numbers frames for.
    pub fn sensor_id(&self) -> u32 {
        self.sensor_id
    }
}

/// Why a frame was rejected. Each case is meant to be counted by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// More bytes than the decoder holds arrived before a delimiter; they
    /// were discarded up to the next delimiter.
    TooLong {
        /// The decoder's limit, encoded bytes.
        max: usize,
    },
    /// The bytes are not valid COBS.
    Cobs,
    /// Shorter than a header and a CRC.
    TooShort {
        /// Decoded length.
        len: usize,
    },
    /// The CRC does not match: corrupted in transit.
    Crc {
        /// CRC carried by the frame.
        expected: u32,
        /// CRC computed over what arrived.
        actual: u32,
    },
    /// A protocol version this decoder does not speak.
    Version(u8),
    /// A record type this decoder does not know.
    UnknownType(u8),
}

impl FrameError {
    /// A stable short name, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::TooLong { .. } => "too_long",
            FrameError::Cobs => "cobs",
            FrameError::TooShort { .. } => "too_short",
            FrameError::Crc { .. } => "crc",
            FrameError::Version(_) => "version",
            FrameError::UnknownType(_) => "unknown_type",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { max } => write!(f, "frame longer than {max} bytes, discarded"),
            FrameError::Cobs => write!(f, "invalid COBS encoding"),
            FrameError::TooShort { len } => {
                write!(f, "frame of {len} bytes is shorter than header and CRC")
            }
            FrameError::Crc { expected, actual } => {
                write!(
                    f,
                    "CRC mismatch: frame says {expected:#010x}, data gives {actual:#010x}"
                )
            }
            FrameError::Version(v) => write!(
                f,
                "unsupported protocol version {v} (this side speaks {VERSION})"
            ),
            FrameError::UnknownType(t) => write!(f, "unknown record type {t}"),
        }
    }
}

/// Parse a decoded (un-COBSed) frame.
pub fn parse(raw: &[u8]) -> Result<Frame<'_>, FrameError> {
    if raw.len() < HEADER_LEN + CRC_LEN {
        return Err(FrameError::TooShort { len: raw.len() });
    }
    let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
    let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = CRC32.checksum(body);
    if expected != actual {
        return Err(FrameError::Crc { expected, actual });
    }
    if body[0] != VERSION {
        return Err(FrameError::Version(body[0]));
    }
    let kind = RecordType::from_u8(body[1]).ok_or(FrameError::UnknownType(body[1]))?;
    let u32_at = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    Ok(Frame {
        header: Header {
            kind,
            sensor_id: u32_at(2),
            seq: u32_at(6),
        },
        payload: &body[HEADER_LEN..],
    })
}

/// The streaming decoder. Feed it bytes as they arrive; it calls back with
/// each frame or rejection. It holds at most `N` encoded bytes (default: the
/// largest frame with a [`MAX_PAYLOAD`] payload); anything longer is
/// discarded up to the next delimiter and reported as [`FrameError::TooLong`].
#[derive(Debug, Clone)]
pub struct Decoder<const N: usize = MAX_ENCODED> {
    buf: heapless::Vec<u8, N>,
    overflow: bool,
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Decoder::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Decoder {
            buf: heapless::Vec::new(),
            overflow: false,
        }
    }

    /// Drop a partial frame (for example after the line was reopened).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflow = false;
    }

    /// Bytes of a partial frame held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feed `data`; `on_frame` is called for every frame completed in it.
    pub fn push(&mut self, data: &[u8], mut on_frame: impl FnMut(Result<Frame<'_>, FrameError>)) {
        for &byte in data {
            if byte != 0 {
                if !self.overflow && self.buf.push(byte).is_err() {
                    self.overflow = true;
                }
                continue;
            }
            // A delimiter: whatever came before it is one frame.
            if self.overflow {
                self.reset();
                on_frame(Err(FrameError::TooLong { max: N }));
                continue;
            }
            if self.buf.is_empty() {
                continue; // idle delimiters between frames
            }
            match cobs::decode_in_place(&mut self.buf) {
                Ok(n) => on_frame(parse(&self.buf[..n])),
                Err(_) => on_frame(Err(FrameError::Cobs)),
            }
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests;
