//! A minimal CBOR reader and writer, just what a record needs: item heads,
//! skipping items, and writing heads, numbers and strings. It never
//! allocates and never panics on malformed input (every access is checked).
//!
//! Kept small on purpose: under an interpreter every instruction counts, and a
//! general-purpose decoder spent ~35k Wasm operations per record where this
//! spends a few hundred (see ABI.md, "Performance"). The host uses the same
//! reader to validate what modules emit ([`crate::record::validate`]).

/// Why CBOR could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Malformed or truncated input.
    Input,
    /// The output buffer is full.
    Resource,
}

/// Major types.
pub const UINT: u8 = 0;
/// Negative integer.
pub const NINT: u8 = 1;
/// Byte string.
pub const BYTES: u8 = 2;
/// Text string.
pub const TEXT: u8 = 3;
/// Array.
pub const ARRAY: u8 = 4;
/// Map.
pub const MAP: u8 = 5;
/// Tag.
pub const TAG: u8 = 6;
/// Simple values and floats.
pub const SIMPLE: u8 = 7;

const INDEFINITE: u8 = 31;
const MAX_DEPTH: u32 = 32;

/// An item head: major type, additional info, and its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Major type (0..=7).
    pub major: u8,
    /// Additional information (low 5 bits of the initial byte).
    pub info: u8,
    /// The argument (length, count, value, or float bits).
    pub arg: u64,
}

impl Head {
    /// True for indefinite-length strings, arrays and maps.
    pub fn indefinite(&self) -> bool {
        self.info == INDEFINITE
    }
}

/// A position in a CBOR buffer.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// A reader at `pos` of `buf`.
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    /// The current position.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The whole buffer.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// True at the end of the buffer.
    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The next byte, without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Read an item head.
    pub fn head(&mut self) -> Result<Head, Error> {
        let b = *self.buf.get(self.pos).ok_or(Error::Input)?;
        self.pos += 1;
        let (major, info) = (b >> 5, b & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let bytes = self.buf.get(self.pos..self.pos + n).ok_or(Error::Input)?;
                self.pos += n;
                bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            }
            INDEFINITE if matches!(major, BYTES | TEXT | ARRAY | MAP) => 0,
            INDEFINITE if major == SIMPLE => 0, // "break"
            _ => return Err(Error::Input),
        };
        Ok(Head { major, info, arg })
    }

    /// Read `n` raw bytes.
    pub fn bytes(&mut self, n: u64) -> Result<&'a [u8], Error> {
        let n = usize::try_from(n).map_err(|_| Error::Input)?;
        let end = self.pos.checked_add(n).ok_or(Error::Input)?;
        let s = self.buf.get(self.pos..end).ok_or(Error::Input)?;
        self.pos = end;
        Ok(s)
    }

    /// Read a map key: a definite text string's bytes (not checked for
    /// UTF-8), with a fast path for the usual one-byte head (length < 24).
    #[inline(always)]
    pub fn key(&mut self) -> Option<&'a [u8]> {
        let b = *self.buf.get(self.pos)?;
        if (0x60..0x78).contains(&b) {
            let start = self.pos + 1;
            let end = start + usize::from(b - 0x60);
            let k = self.buf.get(start..end)?;
            self.pos = end;
            return Some(k);
        }
        let (k, end) = slow_text(self.buf, self.pos)?;
        self.pos = end;
        Some(k)
    }

    /// Skip one item; `None` on malformed input. Inlined fast path for
    /// numbers, simple values and short strings.
    #[inline(always)]
    pub fn skip_fast(&mut self) -> Option<()> {
        let b = *self.buf.get(self.pos)?;
        let (major, info) = (b >> 5, b & 0x1f);
        let n = match (major, info) {
            (UINT | NINT | SIMPLE, 0..=23) => 1,
            (UINT | NINT | SIMPLE, 24..=27) => 1 + (1usize << (info - 24)),
            (BYTES | TEXT, 0..=23) => 1 + usize::from(info),
            _ => {
                self.pos = slow_skip(self.buf, self.pos)?;
                return Some(());
            }
        };
        if self.pos + n > self.buf.len() {
            return None;
        }
        self.pos += n;
        Some(())
    }

    /// Read a definite-length text string's bytes (not checked for UTF-8).
    pub fn text_bytes(&mut self) -> Result<&'a [u8], Error> {
        let h = self.head()?;
        if h.major != TEXT || h.indefinite() {
            return Err(Error::Input);
        }
        self.bytes(h.arg)
    }

    /// Read a definite-length text string.
    pub fn text(&mut self) -> Result<&'a str, Error> {
        core::str::from_utf8(self.text_bytes()?).map_err(|_| Error::Input)
    }

    /// Skip one complete item (nested items included).
    #[inline]
    pub fn skip(&mut self) -> Result<(), Error> {
        // Fast path for what payloads are made of: numbers, simple values and
        // definite strings, without the general recursive walk.
        let b = self.peek().ok_or(Error::Input)?;
        let (major, info) = (b >> 5, b & 0x1f);
        if info < 28 && matches!(major, UINT | NINT | SIMPLE) {
            let n = if info < 24 {
                1
            } else {
                1 + (1usize << (info - 24))
            };
            if self.pos + n > self.buf.len() {
                return Err(Error::Input);
            }
            self.pos += n;
            return Ok(());
        }
        if info < 28 && matches!(major, BYTES | TEXT) {
            let h = self.head()?;
            return self.bytes(h.arg).map(drop);
        }
        self.skip_depth(0)
    }

    /// Skip one complete item like [`Reader::skip`], and also check that
    /// every text string in it is valid UTF-8.
    pub fn validate_item(&mut self) -> Result<(), Error> {
        self.walk(0, true)
    }

    fn skip_depth(&mut self, depth: u32) -> Result<(), Error> {
        self.walk(depth, false)
    }

    fn walk(&mut self, depth: u32, utf8: bool) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(Error::Input);
        }
        let h = self.head()?;
        match h.major {
            UINT | NINT => Ok(()),
            TEXT if !h.indefinite() && utf8 => core::str::from_utf8(self.bytes(h.arg)?)
                .map(drop)
                .map_err(|_| Error::Input),
            BYTES | TEXT if !h.indefinite() => self.bytes(h.arg).map(drop),
            BYTES | TEXT | ARRAY | MAP if h.indefinite() => {
                while self.peek() != Some(0xff) {
                    if self.at_end() {
                        return Err(Error::Input);
                    }
                    if matches!(h.major, BYTES | TEXT) {
                        // Chunks of an indefinite string must be definite
                        // strings of the same major type.
                        let c = self.head()?;
                        if c.major != h.major || c.indefinite() {
                            return Err(Error::Input);
                        }
                        self.bytes(c.arg)?;
                        continue;
                    }
                    self.walk(depth + 1, utf8)?;
                    if h.major == MAP {
                        self.walk(depth + 1, utf8)?;
                    }
                }
                self.pos += 1;
                Ok(())
            }
            ARRAY | MAP => {
                let items = if h.major == MAP {
                    h.arg.checked_mul(2).ok_or(Error::Input)?
                } else {
                    h.arg
                };
                // Each item takes at least one byte: refuse absurd counts early.
                if items > (self.buf.len() - self.pos) as u64 {
                    return Err(Error::Input);
                }
                for _ in 0..items {
                    self.walk(depth + 1, utf8)?;
                }
                Ok(())
            }
            TAG => self.walk(depth + 1, utf8),
            _ if h.indefinite() => Err(Error::Input), // a lone "break"
            _ => Ok(()),
        }
    }
}

// The slow paths take the position by value so that a `Reader` in a hot loop
// never has its address taken (which would keep it in memory, not locals).
#[inline(never)]
fn slow_text(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let mut r = Reader::at(buf, pos);
    let k = r.text_bytes().ok()?;
    Some((k, r.pos))
}

#[inline(never)]
fn slow_skip(buf: &[u8], pos: usize) -> Option<usize> {
    let mut r = Reader::at(buf, pos);
    r.skip().ok()?;
    Some(r.pos)
}

/// Byte-string equality without calling `memcmp`.
///
/// Slice `==` lowers to a call to compiler-builtins' `memcmp`, which under an
/// interpreter cost ~250 operations per short key and was 85% of a W1 stage's
/// work. Keys differ mostly in length or first byte; the rest compares 8 bytes
/// at a time.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.first() != b.first() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(y.try_into().unwrap_or([1; 8]));
        if x != y {
            return false;
        }
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        if x != y {
            return false;
        }
    }
    true
}

/// Convert IEEE 754 half-precision bits to `f64`.
pub fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    sign * match exp {
        0 => frac * pow2(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * pow2(e - 15),
    }
}

fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Writes CBOR into a fixed buffer; [`Error::Resource`] when it is full.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// What was written, giving the buffer back.
    pub fn into_inner(self) -> &'b mut [u8] {
        &mut self.buf[..self.pos]
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Append raw bytes (an already encoded item, for example).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.pos + bytes.len();
        self.buf
            .get_mut(self.pos..end)
            .ok_or(Error::Resource)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Append an item head with the shortest argument encoding.
    pub fn head(&mut self, major: u8, arg: u64) -> Result<(), Error> {
        let m = major << 5;
        match arg {
            0..=23 => self.raw(&[m | arg as u8]),
            24..=0xff => self.raw(&[m | 24, arg as u8]),
            0x100..=0xffff => {
                let b = (arg as u16).to_be_bytes();
                self.raw(&[m | 25, b[0], b[1]])
            }
            0x1_0000..=0xffff_ffff => {
                let b = (arg as u32).to_be_bytes();
                self.raw(&[m | 26, b[0], b[1], b[2], b[3]])
            }
            _ => {
                let b = arg.to_be_bytes();
                self.raw(&[m | 27, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        }
    }

    /// Append a text string.
    pub fn text(&mut self, s: &str) -> Result<(), Error> {
        self.head(TEXT, s.len() as u64)?;
        self.raw(s.as_bytes())
    }

    /// Append a signed integer.
    pub fn int(&mut self, i: i64) -> Result<(), Error> {
        if i >= 0 {
            self.head(UINT, i as u64)
        } else {
            self.head(NINT, !(i as u64))
        }
    }

    /// Append a float: as `f32` when that is exact, else as `f64`.
    pub fn float(&mut self, f: f64) -> Result<(), Error> {
        let single = f as f32;
        if f64::from(single) == f || f.is_nan() {
            let b = single.to_bits().to_be_bytes();
            self.raw(&[0xfa, b[0], b[1], b[2], b[3]])
        } else {
            let b = f.to_bits().to_be_bytes();
            self.raw(&[0xfb, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip() {
        let mut buf = [0u8; 16];
        for arg in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut w = Writer::new(&mut buf);
            w.head(MAP, arg).unwrap();
            let n = w.len();
            let h = Reader::new(&buf[..n]).head().unwrap();
            assert_eq!((h.major, h.arg), (MAP, arg));
        }
    }

    #[test]
    fn bytes_eq_matches_slice_eq() {
        let words: [&[u8]; 8] = [
            b"",
            b"a",
            b"b",
            b"ab",
            b"temp_c",
            b"temp_f",
            b"dew_point_c",
            b"dew_point_d",
        ];
        for a in words {
            for b in words {
                assert_eq!(bytes_eq(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn half_floats() {
        assert_eq!(f16_to_f64(0x3e00), 1.5);
        assert_eq!(f16_to_f64(0xc400), -4.0);
        assert_eq!(f16_to_f64(0x0001), 5.960464477539063e-8);
        assert_eq!(f16_to_f64(0x7c00), f64::INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
    }

    #[test]
    fn skip_refuses_garbage_without_panicking() {
        for bad in [
            &[0x1c][..],
            &[0x5a, 0xff, 0xff, 0xff, 0xff],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0xff],
            &[0x9f, 0x01],
            &[0xbf, 0x61],
        ] {
            assert!(Reader::new(bad).skip().is_err(), "{bad:x?}");
        }
        let mut deep = [0x81u8; 64];
        deep[63] = 0x01;
        assert!(Reader::new(&deep).skip().is_err());
        assert!(Reader::new(&[0x9f, 0x01, 0x02, 0xff]).skip().is_ok());
    }
}
