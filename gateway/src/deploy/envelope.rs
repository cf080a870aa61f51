//! Pushes over MQTT: a bundle in one or more retained messages ("pieces"),
//! and their reassembly on the gateway. No I/O: [`Reassembler`] is given
//! each message and the time, and says when a bundle is whole, or why a
//! partial one was discarded.
//!
//! A piece, every integer big-endian:
//!
//! ```text
//! "WEIRPUSH"       8 bytes
//! version          1 byte, 1
//! flags            1 byte; bit 0: a rollback authorisation follows (piece 0 only)
//! bundle sha256    32 bytes: the whole bundle's
//! index, count     2 bytes each: this piece, and how many there are
//! total            4 bytes: the whole bundle's length
//! [rollback]       32-byte Ed25519 public key, 64-byte signature over
//!                  "WEIR-ROLLBACK-v1" + bundle sha256
//! data             the piece's bytes of the bundle
//! ```
//!
//! Piece 0 goes to the module's topic (`<prefix>/<gateway>/modules/<name>`
//! or `<prefix>/fleet/<group>/modules/<name>`), piece `i` to that topic
//! plus `/<i>`. All are retained, so a gateway that was offline gets the
//! current version when it returns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first bytes of every piece.
pub const MAGIC: &[u8; 8] = b"WEIRPUSH";
const HEADER: usize = 8 + 1 + 1 + 32 + 2 + 2 + 4;

/// A rollback authorisation: the signer's public key and its signature.
pub type Authorisation = ([u8; 32], [u8; 64]);

/// One message of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// SHA-256 of the whole bundle.
    pub bundle: [u8; 32],
    /// This piece's index.
    pub index: u16,
    /// How many pieces.
    pub count: u16,
    /// The whole bundle's length.
    pub total: u32,
    /// Present on piece 0 of a push marked rollback.
    pub rollback: Option<Authorisation>,
    /// This piece's bytes.
    pub data: Vec<u8>,
}

impl Piece {
    /// The message bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 96 + self.data.len());
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.push(u8::from(self.rollback.is_some()));
        out.extend_from_slice(&self.bundle);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.total.to_be_bytes());
        if let Some((k, s)) = &self.rollback {
            out.extend_from_slice(k);
            out.extend_from_slice(s);
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Parse a message.
    pub fn decode(bytes: &[u8]) -> Result<Piece, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(format!(
                "not a weir push message ({} bytes without the WEIRPUSH header; publish bundles with `weir module push`)",
                bytes.len()
            ));
        }
        if bytes[8] != 1 {
            return Err(format!(
                "push message version {} (this weir reads 1; upgrade weir)",
                bytes[8]
            ));
        }
        let flags = bytes[9];
        let bundle: [u8; 32] = bytes[10..42].try_into().expect("32 bytes");
        let index = u16::from_be_bytes([bytes[42], bytes[43]]);
        let count = u16::from_be_bytes([bytes[44], bytes[45]]);
        let total = u32::from_be_bytes(bytes[46..50].try_into().expect("4 bytes"));
        let mut at = HEADER;
        let rollback = if flags & 1 == 1 {
            let a = bytes
                .get(at..at + 96)
                .ok_or("a rollback flag without its authorisation")?;
            at += 96;
            Some((
                a[..32].try_into().expect("32 bytes"),
                a[32..].try_into().expect("64 bytes"),
            ))
        } else {
            None
        };
        if count == 0 || index >= count {
            return Err(format!("piece {index} of {count}"));
        }
        Ok(Piece {
            bundle,
            index,
            count,
            total,
            rollback,
            data: bytes[at..].to_vec(),
        })
    }
}

/// Split `bundle` into pieces of at most `chunk` bundle bytes each.
pub fn split(bundle: &[u8], chunk: usize, rollback: Option<Authorisation>) -> Vec<Piece> {
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, bundle)
        .as_ref()
        .try_into()
        .expect("32 bytes");
    let chunks: Vec<&[u8]> = bundle.chunks(chunk.max(1)).collect();
    let count = chunks.len().max(1) as u16;
    (0..count)
        .map(|i| Piece {
            bundle: sha,
            index: i,
            count,
            total: bundle.len() as u32,
            rollback: if i == 0 { rollback } else { None },
            data: chunks.get(i as usize).map_or(Vec::new(), |c| c.to_vec()),
        })
        .collect()
}

/// The topic of piece `index` under a module's topic.
pub fn piece_topic(base: &str, index: u16) -> String {
    if index == 0 {
        base.to_string()
    } else {
        format!("{base}/{index}")
    }
}

/// What a message completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// The bundle is whole and its hash checks out.
    Complete {
        /// The module name (from the topic).
        module: String,
        /// The bundle.
        bytes: Vec<u8>,
        /// Its rollback authorisation, if the push was marked rollback.
        rollback: Option<Authorisation>,
    },
    /// More pieces to come.
    Incomplete,
    /// Discarded, with the reason: the push gets a refusal.
    Discarded {
        /// The module name.
        module: String,
        /// The bundle's hash, hex.
        bundle: String,
        /// Why.
        reason: String,
    },
}

struct Partial {
    module: String,
    count: u16,
    total: u32,
    pieces: HashMap<u16, Vec<u8>>,
    rollback: Option<Authorisation>,
    first: Instant,
    /// Piece 0 seen: the push is current (not a stale retained piece).
    headed: bool,
}

impl Partial {
    fn held(&self) -> usize {
        self.pieces.values().map(Vec::len).sum()
    }
}

/// Collects pieces into bundles, within a size cap and a time limit.
pub struct Reassembler {
    partial: HashMap<[u8; 32], Partial>,
    max_bundle: usize,
    timeout: Duration,
}

impl Reassembler {
    /// Bundles up to `max_bundle` bytes, each whole within `timeout` of
    /// its first piece.
    pub fn new(max_bundle: usize, timeout: Duration) -> Reassembler {
        Reassembler {
            partial: HashMap::new(),
            max_bundle,
            timeout,
        }
    }

    /// Bytes held for partial bundles.
    pub fn held(&self) -> usize {
        self.partial.values().map(Partial::held).sum()
    }

    /// Take one message for `module` at `now`.
    pub fn offer(&mut self, module: &str, piece: Piece, now: Instant) -> Offer {
        let id = piece.bundle;
        let discard = |reason: String| Offer::Discarded {
            module: module.to_string(),
            bundle: hex::encode(id),
            reason,
        };
        if piece.total as usize > self.max_bundle {
            self.partial.remove(&id);
            return discard(format!(
                "the bundle is {} bytes, over this gateway's max_bundle of {} (raise [modules] max_bundle)",
                piece.total, self.max_bundle
            ));
        }
        let p = self.partial.entry(id).or_insert_with(|| Partial {
            module: module.to_string(),
            count: piece.count,
            total: piece.total,
            pieces: HashMap::new(),
            rollback: None,
            first: now,
            headed: false,
        });
        if p.count != piece.count || p.total != piece.total || p.module != module {
            self.partial.remove(&id);
            return discard(format!(
                "pieces disagree on the bundle's shape (piece {} says {} pieces of a {}-byte bundle)",
                piece.index, piece.count, piece.total
            ));
        }
        if piece.index == 0 {
            p.headed = true;
            p.rollback = piece.rollback;
        }
        p.pieces.insert(piece.index, piece.data);
        if p.held() > p.total as usize {
            self.partial.remove(&id);
            return discard("the pieces hold more bytes than the bundle's length".into());
        }
        // A newer push of this module supersedes pieces of older ones.
        if p.headed {
            let stale: Vec<[u8; 32]> = self
                .partial
                .iter()
                .filter(|(k, q)| **k != id && q.module == module && q.headed)
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                self.partial.remove(&k);
            }
        }
        let p = self.partial.get(&id).expect("just inserted");
        if p.pieces.len() < p.count as usize || !p.headed {
            // Keep what is held for all bundles under the cap: the oldest
            // partial goes first.
            while self.held() > self.max_bundle.saturating_mul(2) {
                let oldest = self
                    .partial
                    .iter()
                    .filter(|(k, _)| **k != id)
                    .min_by_key(|(_, q)| q.first)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => {
                        self.partial.remove(&k);
                    }
                    None => break,
                }
            }
            return Offer::Incomplete;
        }
        let p = self.partial.remove(&id).expect("present");
        let mut bytes = Vec::with_capacity(p.total as usize);
        for i in 0..p.count {
            bytes.extend_from_slice(&p.pieces[&i]);
        }
        let got: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .try_into()
            .expect("32 bytes");
        if bytes.len() != p.total as usize || got != id {
            return discard(format!(
                "the reassembled bundle ({} bytes) does not match its SHA-256: a piece was damaged or mixed up",
                bytes.len()
            ));
        }
        Offer::Complete {
            module: p.module,
            bytes,
            rollback: p.rollback,
        }
    }

    /// Discard bundles not whole within the timeout of their first piece.
    /// Only those whose piece 0 arrived are reported: stray retained
    /// pieces of old pushes go quietly.
    pub fn expire(&mut self, now: Instant) -> Vec<Offer> {
        let timeout = self.timeout;
        let old: Vec<[u8; 32]> = self
            .partial
            .iter()
            .filter(|(_, p)| now.duration_since(p.first) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in old {
            let p = self.partial.remove(&k).expect("present");
            if p.headed {
                out.push(Offer::Discarded {
                    module: p.module,
                    bundle: hex::encode(k),
                    reason: format!(
                        "partial bundle discarded: {} of {} pieces arrived within {} s",
                        p.pieces.len(),
                        p.count,
                        timeout.as_secs()
                    ),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn complete(o: Offer) -> Vec<u8> {
        match o {
            Offer::Complete { bytes, .. } => bytes,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pieces_round_trip_and_reassemble_in_any_order() {
        let b = bundle(1000);
        let pieces = split(&b, 300, None);
        assert_eq!(pieces.len(), 4);
        let t0 = Instant::now();
        // Every rotation of the arrival order.
        for start in 0..4 {
            let mut r = Reassembler::new(4096, Duration::from_secs(60));
            let mut last = Offer::Incomplete;
            for k in 0..4 {
                let p = Piece::decode(&pieces[(start + k) % 4].encode()).unwrap();
                assert_eq!(last, Offer::Incomplete);
                last = r.offer("m", p, t0);
            }
            assert_eq!(complete(last), b);
            assert_eq!(r.held(), 0);
        }
    }

    #[test]
    fn a_single_piece_bundle_and_its_rollback_flag() {
        let b = bundle(10);
        let auth = ([7u8; 32], [9u8; 64]);
        let pieces = split(&b, 100, Some(auth));
        assert_eq!(pieces.len(), 1);
        let mut r = Reassembler::new(100, Duration::from_secs(1));
        let p = Piece::decode(&pieces[0].encode()).unwrap();
        match r.offer("m", p, Instant::now()) {
            Offer::Complete {
                bytes, rollback, ..
            } => {
                assert_eq!(bytes, b);
                assert_eq!(rollback, Some(auth));
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_partial_bundle_is_discarded_with_a_reason_after_the_timeout() {
        let b = bundle(1000);
        let pieces = split(&b, 300, None);
        let t0 = Instant::now();
        let mut r = Reassembler::new(4096, Duration::from_secs(30));
        for p in &pieces[..3] {
            assert_eq!(r.offer("m", p.clone(), t0), Offer::Incomplete);
        }
        assert!(r.expire(t0 + Duration::from_secs(29)).is_empty());
        let out = r.expire(t0 + Duration::from_secs(30));
        match &out[..] {
            [Offer::Discarded { reason, .. }] => {
                assert!(reason.contains("3 of 4 pieces"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn a_damaged_piece_fails_the_hash() {
        let b = bundle(1000);
        let mut pieces = split(&b, 300, None);
        pieces[2].data[5] ^= 1;
        let mut r = Reassembler::new(4096, Duration::from_secs(30));
        let t0 = Instant::now();
        let mut last = Offer::Incomplete;
        for p in pieces {
            last = r.offer("m", p, t0);
        }
        assert!(
            matches!(&last, Offer::Discarded { reason, .. } if reason.contains("SHA-256")),
            "{last:?}"
        );
    }

    #[test]
    fn oversize_and_inconsistent_pushes_are_refused_and_junk_is_an_error() {
        let b = bundle(1000);
        let pieces = split(&b, 300, None);
        let mut r = Reassembler::new(999, Duration::from_secs(30));
        assert!(matches!(
            r.offer("m", pieces[0].clone(), Instant::now()),
            Offer::Discarded { .. }
        ));
        let mut r = Reassembler::new(4096, Duration::from_secs(30));
        let mut odd = pieces[1].clone();
        odd.count = 9;
        assert_eq!(
            r.offer("m", pieces[0].clone(), Instant::now()),
            Offer::Incomplete
        );
        assert!(matches!(
            r.offer("m", odd, Instant::now()),
            Offer::Discarded { .. }
        ));
        assert!(Piece::decode(b"hello").is_err());
        let mut bad = pieces[0].encode();
        bad[8] = 2;
        assert!(Piece::decode(&bad).is_err());
    }

    #[test]
    fn a_newer_push_supersedes_the_pieces_of_an_older_one_and_memory_stays_bounded() {
        let (a, b) = (bundle(1000), bundle(900));
        let (pa, pb) = (split(&a, 300, None), split(&b, 300, None));
        let mut r = Reassembler::new(1000, Duration::from_secs(30));
        let t0 = Instant::now();
        r.offer("m", pa[0].clone(), t0);
        r.offer("m", pa[1].clone(), t0);
        r.offer("m", pb[0].clone(), t0);
        // a's pieces are gone; b completes.
        assert_eq!(r.held(), 300);
        r.offer("m", pb[1].clone(), t0);
        assert_eq!(complete(r.offer("m", pb[2].clone(), t0)), b);
        // Stray pieces without their piece 0 (old retained ones) never
        // hold more than twice the cap.
        for i in 0..50u8 {
            let mut p = pa[1].clone();
            p.bundle[0] = i;
            r.offer("m", p, t0);
        }
        assert!(r.held() <= 2000, "{}", r.held());
        assert!(r.expire(t0 + Duration::from_secs(31)).is_empty());
    }
}
