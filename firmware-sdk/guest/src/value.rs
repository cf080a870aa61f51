//! [`Value`] and [`Fields`]: a lazy, allocation-free view of a CBOR map.
//!
//! `Fields` keeps the map's encoded bytes and an overlay of changes. Lookups
//! scan the bytes; changes are recorded, not applied; encoding copies every
//! untouched entry byte for byte and writes only the changed ones. Strings
//! and nested items borrow from the input; arrays, maps and tags stay raw.

use crate::Error;
use weir_abi::cbor::{self, Reader, Writer};

/// Most changes (sets and removals) one map can hold in the SDK.
pub const MAX_CHANGES: usize = 16;

/// One CBOR data item, borrowed from the input where possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `null` or `undefined`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer that fits in an `i64`.
    Int(i64),
    /// Any float (half, single or double precision on the wire).
    Float(f64),
    /// A text string.
    Text(&'a str),
    /// A byte string.
    Bytes(&'a [u8]),
    /// Any other item (array, map, tag, big integer, indefinite string) as
    /// its raw CBOR encoding.
    Raw(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value as a float, if it is a number (integers are converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Decode one item.
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, Error> {
        let start = r.pos();
        let h = r.head()?;
        Ok(match (h.major, h.info) {
            (cbor::UINT, _) if h.arg <= i64::MAX as u64 => Value::Int(h.arg as i64),
            (cbor::NINT, _) if h.arg <= i64::MAX as u64 => Value::Int(!(h.arg as i64)),
            (cbor::BYTES, i) if i != 31 => Value::Bytes(r.bytes(h.arg)?),
            (cbor::TEXT, i) if i != 31 => {
                Value::Text(core::str::from_utf8(r.bytes(h.arg)?).map_err(|_| Error::Input)?)
            }
            (cbor::SIMPLE, 20) => Value::Bool(false),
            (cbor::SIMPLE, 21) => Value::Bool(true),
            (cbor::SIMPLE, 22 | 23) => Value::Null,
            (cbor::SIMPLE, 25) => Value::Float(cbor::f16_to_f64(h.arg as u16)),
            (cbor::SIMPLE, 26) => Value::Float(f64::from(f32::from_bits(h.arg as u32))),
            (cbor::SIMPLE, 27) => Value::Float(f64::from_bits(h.arg)),
            (cbor::SIMPLE, 31) => return Err(Error::Input),
            _ => {
                let mut again = Reader::at(r.buf(), start);
                again.skip()?;
                let raw = r.buf().get(start..again.pos()).ok_or(Error::Input)?;
                *r = again;
                Value::Raw(raw)
            }
        })
    }

    /// Encode this item.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), Error> {
        let written = match *self {
            Value::Null => w.raw(&[0xf6]),
            Value::Bool(b) => w.raw(&[if b { 0xf5 } else { 0xf4 }]),
            Value::Int(i) => w.int(i),
            Value::Float(f) => w.float(f),
            Value::Text(s) => w.text(s),
            Value::Bytes(b) => {
                w.head(cbor::BYTES, b.len() as u64)?;
                w.raw(b)
            }
            Value::Raw(r) => w.raw(r),
        };
        Ok(written?)
    }
}

/// A map of text keys to [`Value`]s (a sensor payload, headers, a config
/// table), read lazily from its encoding, with changes kept aside.
///
/// Nothing is decoded up front: a lookup scans the entries until it finds
/// the key and decodes only that value. `set` and `remove` record the change
/// and the byte span of the entry they replace; encoding copies the
/// untouched bytes around those spans and appends the changed entries.
/// Input records are well-formed by the ABI's guarantee; on a malformed map
/// lookups find nothing and encoding fails with [`Error::Input`].
#[derive(Debug, Clone, Default)]
pub struct Fields<'a> {
    /// The encoded entries (after the map head).
    body: &'a [u8],
    /// Number of entries in `body`.
    count: u64,
    /// Sets (`Some`) and removals (`None`), each with the span in `body` of
    /// the entry it replaces, if any.
    changes: heapless::Vec<Change<'a>, MAX_CHANGES>,
}

#[derive(Debug, Clone, Copy)]
struct Change<'a> {
    key: &'a str,
    value: Option<Value<'a>>,
    replaces: Option<(u32, u32)>,
}

impl<'a> Fields<'a> {
    /// An empty map.
    pub fn new() -> Self {
        Fields::default()
    }

    /// Read a definite-length map at `r` and move `r` past it. With `to_end`,
    /// the map is known to extend to the end of the buffer and is not scanned.
    pub fn read(r: &mut Reader<'a>, to_end: bool) -> Result<Self, Error> {
        let h = r.head()?;
        if h.major != cbor::MAP || h.indefinite() {
            return Err(Error::Input);
        }
        let start = r.pos();
        if to_end {
            *r = Reader::at(r.buf(), r.buf().len());
        } else {
            for _ in 0..h.arg {
                r.text_bytes()?;
                r.skip()?;
            }
        }
        Ok(Fields {
            body: r.buf().get(start..r.pos()).ok_or(Error::Input)?,
            count: h.arg,
            changes: heapless::Vec::new(),
        })
    }

    /// A buffer holding exactly one map.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let f = Fields::read(&mut r, false)?;
        if !r.at_end() {
            return Err(Error::Input);
        }
        Ok(f)
    }

    /// Scan for `key`: the entry's span and a reader at its value.
    fn find(&self, key: &[u8]) -> Option<((u32, u32), Reader<'a>)> {
        let mut r = Reader::new(self.body);
        for _ in 0..self.count {
            let start = r.pos();
            let k = r.key()?;
            let at = r;
            r.skip_fast()?;
            if cbor::bytes_eq(k, key) {
                return Some(((start as u32, r.pos() as u32), at));
            }
        }
        None
    }

    fn change(&self, key: &[u8]) -> Option<&Change<'a>> {
        self.changes
            .iter()
            .find(|c| cbor::bytes_eq(c.key.as_bytes(), key))
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        if let Some(c) = self.change(key.as_bytes()) {
            return c.value;
        }
        let (_, mut at) = self.find(key.as_bytes())?;
        Value::decode(&mut at).ok()
    }

    /// The number under `key`, as a float.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }

    /// The integer under `key`.
    pub fn i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.as_i64())
    }

    /// The text under `key`.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|v| v.as_str())
    }

    /// Set `key` to `value` (replacing an existing entry on output).
    pub fn set(&mut self, key: &'a str, value: Value<'a>) -> Result<(), Error> {
        self.record(key, Some(value))
    }

    /// Remove `key`.
    pub fn remove(&mut self, key: &'a str) -> Result<(), Error> {
        self.record(key, None)
    }

    fn record(&mut self, key: &'a str, value: Option<Value<'a>>) -> Result<(), Error> {
        if let Some(c) = self
            .changes
            .iter_mut()
            .find(|c| cbor::bytes_eq(c.key.as_bytes(), key.as_bytes()))
        {
            c.value = value;
            return Ok(());
        }
        let replaces = self.find(key.as_bytes()).map(|(span, _)| span);
        self.changes
            .push(Change {
                key,
                value,
                replaces,
            })
            .map_err(|_| Error::Resource)
    }

    /// True if nothing was set or removed.
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }

    /// Call `f` for every entry, in output order.
    pub fn for_each(&self, mut f: impl FnMut(&str, Value<'a>)) {
        let mut r = Reader::new(self.body);
        for _ in 0..self.count {
            let Ok(k) = r.text() else { return };
            let mut at = r;
            if r.skip().is_err() {
                return;
            }
            if self.change(k.as_bytes()).is_none()
                && let Ok(v) = Value::decode(&mut at)
            {
                f(k, v);
            }
        }
        for c in &self.changes {
            if let Some(v) = c.value {
                f(c.key, v);
            }
        }
    }

    /// Number of entries (after changes).
    pub fn len(&self) -> usize {
        let replaced = self.changes.iter().filter(|c| c.replaces.is_some()).count() as u64;
        let added = self.changes.iter().filter(|c| c.value.is_some()).count() as u64;
        (self.count - replaced + added) as usize
    }

    /// True if there are no entries (after changes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encode as a definite-length map: the untouched bytes are copied as
    /// they are, changed entries re-encoded after them.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), Error> {
        w.head(cbor::MAP, self.len() as u64)?;
        // Copy `body` minus the replaced spans, in order of position.
        let mut from = 0u32;
        loop {
            let next = self
                .changes
                .iter()
                .filter_map(|c| c.replaces)
                .filter(|(s, _)| *s >= from)
                .min_by_key(|(s, _)| *s);
            match next {
                Some((s, e)) => {
                    w.raw(
                        self.body
                            .get(from as usize..s as usize)
                            .ok_or(Error::Input)?,
                    )?;
                    from = e;
                }
                None => break,
            }
        }
        w.raw(self.body.get(from as usize..).ok_or(Error::Input)?)?;
        for c in &self.changes {
            if let Some(v) = c.value {
                w.text(c.key)?;
                v.encode(w)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(f: &Fields<'_>) -> ([u8; 128], usize) {
        let mut buf = [0u8; 128];
        let mut w = Writer::new(&mut buf);
        f.encode(&mut w).unwrap();
        let n = w.len();
        (buf, n)
    }

    #[test]
    fn set_replace_remove_and_reencode() {
        let mut f = Fields::new();
        f.set("a", Value::Int(1)).unwrap();
        f.set("b", Value::Text("x")).unwrap();
        let (buf, n) = encode(&f);
        let mut g = Fields::from_bytes(&buf[..n]).unwrap();
        assert_eq!(g.get("a"), Some(Value::Int(1)));
        assert_eq!(g.str("b"), Some("x"));
        g.set("a", Value::Float(2.5)).unwrap();
        g.remove("b").unwrap();
        g.set("c", Value::Bool(true)).unwrap();
        let (buf2, n2) = encode(&g);
        let h = Fields::from_bytes(&buf2[..n2]).unwrap();
        assert_eq!(h.f64("a"), Some(2.5));
        assert_eq!(h.get("b"), None);
        assert_eq!(h.get("c"), Some(Value::Bool(true)));
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn numbers_of_every_width() {
        let mut f = Fields::new();
        for (k, v) in [("i", -1_000_000i64), ("j", 3), ("k", i64::MIN)] {
            f.set(k, Value::Int(v)).unwrap();
        }
        f.set("x", Value::Float(21.53)).unwrap();
        f.set("y", Value::Float(40.0)).unwrap();
        let (buf, n) = encode(&f);
        let g = Fields::from_bytes(&buf[..n]).unwrap();
        assert_eq!(g.i64("i"), Some(-1_000_000));
        assert_eq!(g.i64("k"), Some(i64::MIN));
        assert_eq!(g.f64("x"), Some(21.53));
        assert_eq!(g.f64("y"), Some(40.0));
    }

    #[test]
    fn rejects_non_maps_and_bad_keys() {
        assert!(Fields::from_bytes(&[0x80]).is_err());
        assert!(Fields::from_bytes(&[0xa1, 0x01, 0x02]).is_err());
        assert!(Fields::from_bytes(&[0xa1, 0x61, b'a']).is_err());
        assert!(Fields::from_bytes(&[0xa0, 0x00]).is_err());
    }
}
