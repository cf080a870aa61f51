//! One buffered entry, as stored: a checksum, then what the sink needs.
//!
//! ```text
//! crc32:u32 LE | kind:u8 | enqueued_ms:u64 LE | pipeline_len:u8 | pipeline | body
//! ```
//! The CRC-32 (ISO-HDLC, as in the wire protocol) covers everything after
//! itself. `body` is the ABI v1 CBOR record, or a dead letter as JSON.

use crc::{CRC_32_ISO_HDLC, Crc};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);
const HEAD: usize = 4 + 1 + 8 + 1;

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
    /// When it entered the buffer, ms since the Unix epoch.
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
}

/// Encode an entry's stored bytes.
pub fn encode(kind: Kind, enqueued_ms: u64, pipeline: &str, body: &[u8]) -> Vec<u8> {
    let name = &pipeline.as_bytes()[..pipeline.len().min(255)];
    let mut v = Vec::with_capacity(HEAD + name.len() + body.len());
    v.extend_from_slice(&[0; 4]);
    v.push(kind as u8);
    v.extend_from_slice(&enqueued_ms.to_le_bytes());
    v.push(name.len() as u8);
    v.extend_from_slice(name);
    v.extend_from_slice(body);
    let crc = CRC.checksum(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Decode and verify stored bytes.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Entry, EntryError> {
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

/// The enqueue time of stored bytes, without verifying them.
pub fn enqueued_ms(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(5..13)?.try_into().ok()?))
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
    v.extend_from_slice(stored);
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
        stored: bytes[18 + rlen..].to_vec(),
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
    fn truncation_is_an_error_not_a_panic() {
        let b = encode(Kind::Record, 1, "abc", b"xyz");
        for n in 0..b.len() {
            assert!(decode(0, &b[..n]).is_err());
        }
    }
}
