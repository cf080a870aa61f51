//! Field access and patching of a record's payload, as the host performs
//! them for the `input_get` and `emit_input` imports. Pure functions over
//! bytes, shared by the gateway and the SDK's native stand-in host.

use crate::cbor::{self, Reader, Writer};
use crate::record;

/// Where the payload's value lies in a record: `(start, end)`. The record
/// must be valid ([`record::validate`]); then a payload that is the last
/// entry (as the host writes it) ends where the record ends, and is not
/// walked. On invalid input the result may be wrong but nothing panics.
pub fn payload_span(rec: &[u8]) -> Option<(usize, usize)> {
    let mut r = Reader::new(rec);
    let h = r.head().ok()?;
    if h.major != cbor::MAP {
        return None;
    }
    for i in 0..h.arg {
        let k = r.text_bytes().ok()?;
        let start = r.pos();
        if i + 1 == h.arg && k == record::PAYLOAD.as_bytes() {
            return Some((start, rec.len()));
        }
        r.skip().ok()?;
        if k == record::PAYLOAD.as_bytes() {
            return Some((start, r.pos()));
        }
    }
    None
}

/// The raw CBOR of payload field `key`, if the payload is a map holding it.
pub fn field<'a>(rec: &'a [u8], payload: (usize, usize), key: &[u8]) -> Option<&'a [u8]> {
    let mut r = Reader::at(rec.get(..payload.1)?, payload.0);
    let h = r.head().ok()?;
    if h.major != cbor::MAP || h.indefinite() {
        return None;
    }
    for _ in 0..h.arg {
        let k = r.key()?;
        let start = r.pos();
        r.skip_fast()?;
        if cbor::bytes_eq(k, key) {
            return rec.get(start..r.pos());
        }
    }
    None
}

/// The CBOR simple value `undefined`: as a patch value, removes the key.
pub const REMOVE: u8 = 0xf7;

/// Most entries a patch may hold.
pub const MAX_PATCH_ENTRIES: usize = 64;

/// Upper bound of a patched record's size.
pub fn max_output_len(rec: &[u8], patch: &[u8]) -> usize {
    rec.len() + patch.len() + 9
}

/// Write `rec` with its payload map patched: each entry of `patch` (a
/// definite map with text keys) replaces the payload entry with the same key
/// in place, or is appended; an entry whose value is `undefined` removes
/// the key. An empty patch writes `rec` unchanged. `rec` must be a valid record.
pub fn apply(rec: &[u8], patch: &[u8], w: &mut Writer<'_>) -> Result<(), &'static str> {
    if patch.is_empty() {
        return w.raw(rec).map_err(|_| "output buffer too small");
    }
    // Check the patch and collect its entries: (key, value bytes).
    let mut entries = [(&[][..], &[][..]); MAX_PATCH_ENTRIES];
    let mut pr = Reader::new(patch);
    let ph = pr.head().map_err(|_| "patch is not CBOR")?;
    if ph.major != cbor::MAP || ph.indefinite() {
        return Err("patch must be a definite-length map");
    }
    if ph.arg as usize > MAX_PATCH_ENTRIES {
        return Err("patch has more than 64 entries");
    }
    for slot in entries.iter_mut().take(ph.arg as usize) {
        let k = pr.text().map_err(|_| "patch keys must be text")?;
        let start = pr.pos();
        pr.validate_item()
            .map_err(|_| "a patch value is malformed CBOR")?;
        *slot = (k.as_bytes(), &patch[start..pr.pos()]);
    }
    if !pr.at_end() {
        return Err("bytes after the patch map");
    }
    let entries = &entries[..ph.arg as usize];
    for (i, (k, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(k2, _)| k2 == k) {
            return Err("a key appears twice in the patch");
        }
    }

    let (ps, pe) = payload_span(rec).ok_or("input record has no payload")?;
    let mut r = Reader::at(&rec[..pe], ps);
    let h = r.head().map_err(|_| "input payload is malformed")?;
    if h.major != cbor::MAP || h.indefinite() {
        return Err("the payload is not a map, so it cannot be patched");
    }
    // Pass 1: count what survives.
    let body = r.pos();
    let mut kept = 0u64;
    for _ in 0..h.arg {
        let k = r.text_bytes().map_err(|_| "input payload is malformed")?;
        r.skip().map_err(|_| "input payload is malformed")?;
        if !entries.iter().any(|(pk, _)| *pk == k) {
            kept += 1;
        }
    }
    let added = entries.iter().filter(|(_, v)| *v != [REMOVE]).count() as u64;
    // Pass 2: envelope before the payload, patched payload, envelope after.
    let full = |_| "output buffer too small";
    w.raw(&rec[..ps]).map_err(full)?;
    w.head(cbor::MAP, kept + added).map_err(full)?;
    let mut r = Reader::at(&rec[..pe], body);
    let mut run = body;
    for _ in 0..h.arg {
        let entry = r.pos();
        let k = r.text_bytes().map_err(|_| "input payload is malformed")?;
        r.skip().map_err(|_| "input payload is malformed")?;
        if entries.iter().any(|(pk, _)| *pk == k) {
            w.raw(&rec[run..entry]).map_err(full)?;
            run = r.pos();
        }
    }
    w.raw(&rec[run..pe]).map_err(full)?;
    for (k, v) in entries {
        if *v != [REMOVE] {
            w.head(cbor::TEXT, k.len() as u64).map_err(full)?;
            w.raw(k).map_err(full)?;
            w.raw(v).map_err(full)?;
        }
    }
    w.raw(&rec[pe..]).map_err(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::Writer;

    /// {"source":"s","topic":"t","ts":1,"payload":{"a":1,"b":"x"}}
    const REC: &[u8] = &[
        0xa4, 0x66, b's', b'o', b'u', b'r', b'c', b'e', 0x61, b's', 0x65, b't', b'o', b'p', b'i',
        b'c', 0x61, b't', 0x62, b't', b's', 0x01, 0x67, b'p', b'a', b'y', b'l', b'o', b'a', b'd',
        0xa2, 0x61, b'a', 0x01, 0x61, b'b', 0x61, b'x',
    ];

    fn apply_to_vec(rec: &[u8], patch: &[u8]) -> Result<([u8; 128], usize), &'static str> {
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        apply(rec, patch, &mut w)?;
        let n = w.len();
        Ok((buf, n))
    }

    #[test]
    fn fields_are_found_by_key() {
        let span = payload_span(REC).unwrap();
        assert_eq!(field(REC, span, b"a"), Some(&[0x01][..]));
        assert_eq!(field(REC, span, b"b"), Some(&[0x61, b'x'][..]));
        assert_eq!(field(REC, span, b"c"), None);
    }

    #[test]
    fn a_patch_replaces_adds_and_removes() {
        // {"b": undefined, "a": 2, "c": true}
        let patch = [0xa3, 0x61, b'b', 0xf7, 0x61, b'a', 0x02, 0x61, b'c', 0xf5];
        let (buf, n) = apply_to_vec(REC, &patch).unwrap();
        let out = &buf[..n];
        crate::record::validate(out).unwrap();
        let span = payload_span(out).unwrap();
        assert_eq!(field(out, span, b"a"), Some(&[0x02][..]));
        assert_eq!(field(out, span, b"b"), None);
        assert_eq!(field(out, span, b"c"), Some(&[0xf5][..]));
        assert_eq!(out[span.0], 0xa2, "two entries remain");
        // The envelope is untouched.
        assert_eq!(&out[..span.0], &REC[..span.0]);
    }

    #[test]
    fn an_empty_patch_copies_the_record() {
        let (buf, n) = apply_to_vec(REC, &[]).unwrap();
        assert_eq!(&buf[..n], REC);
    }

    #[test]
    fn bad_patches_are_refused() {
        for (patch, why) in [
            (&[0x80][..], "definite-length map"),
            (&[0xa1, 0x01, 0x01][..], "keys must be text"),
            (&[0xa1, 0x61, b'a'][..], "malformed"),
            (&[0xa2, 0x61, b'a', 0x01, 0x61, b'a', 0x02][..], "twice"),
            (&[0xa0, 0x00][..], "bytes after"),
            (&[0xa1, 0x61, b'a', 0x62, 0xff, 0xfe][..], "malformed"),
        ] {
            let err = apply_to_vec(REC, patch).unwrap_err();
            assert!(err.contains(why), "{patch:x?}: {err}");
        }
    }

    #[test]
    fn a_non_map_payload_cannot_be_patched() {
        // {"source":"s","topic":"t","ts":1,"payload":5}
        let rec = [
            0xa4, 0x66, b's', b'o', b'u', b'r', b'c', b'e', 0x61, b's', 0x65, b't', b'o', b'p',
            b'i', b'c', 0x61, b't', 0x62, b't', b's', 0x01, 0x67, b'p', b'a', b'y', b'l', b'o',
            b'a', b'd', 0x05,
        ];
        let err = apply_to_vec(&rec, &[0xa1, 0x61, b'a', 0x01]).unwrap_err();
        assert!(err.contains("not a map"), "{err}");
    }

    #[test]
    fn validate_checks_shape_and_utf8() {
        crate::record::validate(REC).unwrap();
        let mut bad = REC.to_vec();
        bad[37] = 0xff; // "x" -> invalid UTF-8 in the payload
        assert!(
            crate::record::validate(&bad)
                .unwrap_err()
                .contains("payload")
        );
        assert!(crate::record::validate(&REC[..REC.len() - 1]).is_err());
        let mut extra = REC.to_vec();
        extra.push(0);
        assert!(
            crate::record::validate(&extra)
                .unwrap_err()
                .contains("after")
        );
        let mut no_ts = REC.to_vec();
        no_ts[19] = b'x'; // "ts" -> "xs": an unknown key, so ts is missing
        assert!(
            crate::record::validate(&no_ts)
                .unwrap_err()
                .contains("missing")
        );
    }
}
