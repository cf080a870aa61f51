//! One buffered entry, as stored: self-delimiting and self-identifying, so
//! intact entries can be found in a store sled cannot open (salvage).
//!
//! ```text
//! magic:4 "\xf7We\x02" | crc32:u32 LE | len:u32 LE | seq:u64 LE | queue:u32 LE
//!   | kind:u8 | enqueued_ms:u64 LE | pipeline_len:u8 | pipeline | body
//! ```
//! The CRC-32 (ISO-HDLC, as in the wire protocol) covers everything after
//! itself; `len` is the whole entry's; `queue` is [`queue_id`] of the sink's
//! name. `seq` and `queue` are stamped when the entry goes into a queue
//! ([`stamp`]). `body` is the ABI v1 CBOR record, or a dead letter as JSON.
//!
//! Entries written by earlier versions (v1: `crc32 | kind | enqueued_ms |
//! pipeline_len | pipeline | body`, no magic) are still read.

use crc::{CRC_32_ISO_HDLC, Crc};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
/// v1's fixed head.
const HEAD: usize = 4 + 1 + 8 + 1;
/// The magic that starts every v2 entry.
pub const MAGIC: [u8; 4] = [0xf7, b'W', b'e', 0x02];
/// v2's fixed head, up to the pipeline name.
pub const HEAD2: usize = 4 + 4 + 4 + 8 + 4 + 1 + 8 + 1;
/// What replaces the magic of an entry kept inside a dead letter, so a
/// salvage scan does not put it back in its queue.
const DEAD_MAGIC: [u8; 4] = [0xf7, b'W', b'd', 0x02];

/// The id of a queue in its entries: CRC-32 of the sink's name.
pub fn queue_id(name: &str) -> u32 {
    CRC.checksum(name.as_bytes())
}

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pipeline's output record (ABI v1 CBOR).
    Record = 1,
    /// A dead letter (JSON object).
    DeadLetter = 2,
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the queue; with the gateway id, its message id.
    pub seq: u64,
    /// What it holds.
    pub kind: Kind,
    /// When the input it came from was received at the gateway (entries
    /// written before this change: when it entered the buffer), ms since
    /// the Unix epoch.
    /// Delivery latency and `max_age` count from it.
    pub enqueued_ms: u64,
    /// The pipeline that produced it (empty for source dead letters).
    pub pipeline: String,
    /// The record (CBOR) or dead letter (JSON).
    pub body: Vec<u8>,
}

/// Why stored bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Shorter than the fixed head or the pipeline name it announces.
    #[error("truncated entry ({0} bytes)")]
    Truncated(usize),
    /// The checksum does not match the bytes.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// As stored.
        stored: u32,
        /// Over the bytes as read.
        computed: u32,
    },
    /// An unknown kind byte (checksum was right: written by a newer weir).
    #[error("unknown entry kind {0}")]
    Kind(u8),
    /// Intact, but under another key than its own sequence number.
    #[error("entry {own} found under key {key}")]
    Misplaced {
        /// The key it was found under.
        key: u64,
        /// Its own sequence number.
        own: u64,
    },
}

/// Encode an entry's stored bytes (not yet in a queue: seq and queue 0).
pub fn encode(kind: Kind, enqueued_ms: u64, pipeline: &str, body: &[u8]) -> Vec<u8> {
    let name = &pipeline.as_bytes()[..pipeline.len().min(255)];
    let mut v = Vec::with_capacity(HEAD2 + name.len() + body.len());
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.push(kind as u8);
    v.extend_from_slice(&enqueued_ms.to_le_bytes());
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(body);
    let len = v.len() as u32;
    v[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = CRC.checksum(&v[8..]);
    v[4..8].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Write the entry's place (sequence number and queue) into v2 stored
/// bytes, and its checksum again. v1 bytes are left as they are.
pub fn stamp(v: &mut [u8], seq: u64, queue: u32) {
    if v.len() < HEAD2 || v[..4] != MAGIC {
        return;
    }
    v[12..20].copy_from_slice(&seq.to_le_bytes());
    v[20..24].copy_from_slice(&queue.to_le_bytes());
    let crc = CRC.checksum(&v[8..]);
    v[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// An intact v2 entry starting at `bytes[0]`: its length, sequence number
/// and queue id. For salvage: `bytes` may run on past the entry.
pub fn frame(bytes: &[u8]) -> Option<(usize, u64, u32)> {
    if bytes.len() < HEAD2 || bytes[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    if len < HEAD2 || len > bytes.len() {
        return None;
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    if CRC.checksum(&bytes[8..len]) != stored {
        return None;
    }
    let seq = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    let queue = u32::from_le_bytes(bytes[20..24].try_into().ok()?);
    Some((len, seq, queue))
}

/// Decode and verify stored bytes.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Entry, EntryError> {
    if bytes.len() >= 4 && bytes[..4] == MAGIC {
        return decode2(seq, bytes);
    }
    if bytes.len() < HEAD {
        return Err(EntryError::Truncated(bytes.len()));
    }
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let computed = CRC.checksum(&bytes[4..]);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let kind = match bytes[4] {
        1 => Kind::Record,
        2 => Kind::DeadLetter,
        k => return Err(EntryError::Kind(k)),
    };
    let enqueued_ms = u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes"));
    let plen = bytes[13] as usize;
    if bytes.len() < HEAD + plen {
        return Err(EntryError::Truncated(bytes.len()));
    }
    Ok(Entry {
        seq,
        kind,
        enqueued_ms,
        pipeline: String::from_utf8_lossy(&bytes[HEAD..HEAD + plen]).into_owned(),
        body: bytes[HEAD + plen..].to_vec(),
    })
}

fn decode2(seq: u64, bytes: &[u8]) -> Result<Entry, EntryError> {
    if bytes.len() < HEAD2 {
        return Err(EntryError::Truncated(bytes.len()));
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    if len != bytes.len() {
        return Err(EntryError::Truncated(bytes.len()));
    }
    let stored = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let computed = CRC.checksum(&bytes[8..]);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let own = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if own != 0 && own != seq {
        return Err(EntryError::Misplaced { key: seq, own });
    }
    let kind = match bytes[24] {
        1 => Kind::Record,
        2 => Kind::DeadLetter,
        k => return Err(EntryError::Kind(k)),
    };
    let enqueued_ms = u64::from_le_bytes(bytes[25..33].try_into().expect("8 bytes"));
    let plen = bytes[33] as usize;
    if bytes.len() < HEAD2 + plen {
        return Err(EntryError::Truncated(bytes.len()));
    }
    Ok(Entry {
        seq,
        kind,
        enqueued_ms,
        pipeline: String::from_utf8_lossy(&bytes[HEAD2..HEAD2 + plen]).into_owned(),
        body: bytes[HEAD2 + plen..].to_vec(),
    })
}

/// The enqueue time of stored bytes, without verifying them.
pub fn enqueued_ms(bytes: &[u8]) -> Option<u64> {
    let at = if bytes.get(..4) == Some(&MAGIC[..]) {
        25..33
    } else {
        5..13
    };
    Some(u64::from_le_bytes(bytes.get(at)?.try_into().ok()?))
}

/// An entry a sink could not deliver, kept in its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entry's sequence number (its message id is unchanged).
    pub seq: u64,
    /// When it was moved aside, ms since the Unix epoch.
    pub at_ms: u64,
    /// Failed attempts before it was moved (0: refused before sending).
    pub attempts: u32,
    /// Why it cannot be delivered.
    pub reason: String,
    /// The entry as it was queued (verified on decode).
    pub stored: Vec<u8>,
}

/// Encode a dead letter's stored bytes:
/// `crc32 | at_ms:u64 | attempts:u32 | reason_len:u16 | reason | entry`.
pub fn encode_dead(at_ms: u64, attempts: u32, reason: &str, stored: &[u8]) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
    let mut v = Vec::with_capacity(18 + reason.len() + stored.len());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&at_ms.to_le_bytes());
    v.extend_from_slice(&attempts.to_le_bytes());
    v.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    v.extend_from_slice(reason);
    let at = v.len();
    v.extend_from_slice(stored);
    if stored.get(..4) == Some(&MAGIC[..]) {
        v[at..at + 4].copy_from_slice(&DEAD_MAGIC);
    }
    let crc = CRC.checksum(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Decode and verify a dead letter.
pub fn decode_dead(seq: u64, bytes: &[u8]) -> Result<DeadLetter, EntryError> {
    if bytes.len() < 18 {
        return Err(EntryError::Truncated(bytes.len()));
    }
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let computed = CRC.checksum(&bytes[4..]);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let at_ms = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let attempts = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let rlen = u16::from_le_bytes(bytes[16..18].try_into().expect("2 bytes")) as usize;
    if bytes.len() < 18 + rlen {
        return Err(EntryError::Truncated(bytes.len()));
    }
    Ok(DeadLetter {
        seq,
        at_ms,
        attempts,
        reason: String::from_utf8_lossy(&bytes[18..18 + rlen]).into_owned(),
        stored: {
            let mut s = bytes[18 + rlen..].to_vec();
            if s.get(..4) == Some(&DEAD_MAGIC[..]) {
                s[..4].copy_from_slice(&MAGIC);
            }
            s
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = encode(Kind::Record, 1234, "w1", b"\xa1\x61a\x01");
        let e = decode(7, &b).unwrap();
        assert_eq!(e.seq, 7);
        assert_eq!(e.kind, Kind::Record);
        assert_eq!(e.enqueued_ms, 1234);
        assert_eq!(e.pipeline, "w1");
        assert_eq!(e.body, b"\xa1\x61a\x01");
        assert_eq!(enqueued_ms(&b), Some(1234));
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let b = encode(Kind::DeadLetter, 99, "pipe", b"{\"x\":1}");
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert!(decode(0, &c).is_err(), "flip of bit {i} went unnoticed");
        }
    }

    #[test]
    fn dead_letters_round_trip_and_flips_are_caught() {
        let e = encode(Kind::Record, 5, "w1", b"body");
        let d = encode_dead(77, 5, "broker closed the connection", &e);
        let got = decode_dead(9, &d).unwrap();
        assert_eq!((got.seq, got.at_ms, got.attempts), (9, 77, 5));
        assert_eq!(got.reason, "broker closed the connection");
        assert_eq!(decode(9, &got.stored).unwrap().body, b"body");
        for i in 0..d.len() {
            let mut c = d.clone();
            c[i] ^= 0x10;
            assert!(decode_dead(9, &c).is_err(), "flip at {i}");
        }
        for n in 0..d.len() {
            assert!(decode_dead(9, &d[..n]).is_err());
        }
    }

    #[test]
    fn stamped_entries_frame_themselves_and_check_their_place() {
        let mut b = encode(Kind::Record, 5, "w1", b"body");
        stamp(&mut b, 42, queue_id("cloud"));
        assert_eq!(decode(42, &b).unwrap().body, b"body");
        assert_eq!(enqueued_ms(&b), Some(5));
        assert!(matches!(decode(41, &b), Err(EntryError::Misplaced { .. })));
        // Found in the middle of other bytes, by its own framing.
        let mut raw = vec![0xaa; 100];
        raw.extend_from_slice(&b);
        raw.extend_from_slice(&[0x55; 50]);
        let at = raw.windows(4).position(|w| w == MAGIC).unwrap();
        assert_eq!(frame(&raw[at..]), Some((b.len(), 42, queue_id("cloud"))));
        // A flipped byte anywhere: not an entry.
        for i in 0..b.len() {
            let mut c = raw.clone();
            c[at + i] ^= 0x01;
            assert_eq!(frame(&c[at..]), None, "flip at {i}");
        }
        // Inside a dead letter it is not found as a queue entry.
        let d = encode_dead(1, 1, "why", &b);
        assert!(d.windows(4).all(|w| w != MAGIC));
        assert_eq!(decode_dead(42, &d).unwrap().stored, b);
    }

    #[test]
    fn version_1_entries_are_still_read() {
        let mut v = vec![0; 4];
        v.push(1);
        v.extend_from_slice(&77u64.to_le_bytes());
        v.push(2);
        v.extend_from_slice(b"w1body");
        let crc = CRC.checksum(&v[4..]);
        v[..4].copy_from_slice(&crc.to_le_bytes());
        let e = decode(3, &v).unwrap();
        assert_eq!(
            (e.enqueued_ms, e.pipeline.as_str(), &e.body[..]),
            (77, "w1", &b"body"[..])
        );
        assert_eq!(enqueued_ms(&v), Some(77));
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let b = encode(Kind::Record, 1, "abc", b"xyz");
        for n in 0..b.len() {
            assert!(decode(0, &b[..n]).is_err());
        }
    }
}
