// Just enough CBOR for W1: map and text heads, numbers (NaN when the item
// is not one), and a float writer that picks the shortest exact width as
// the Rust SDK does.

export class Reader {
  pos: usize = 0;
  ok: bool = true;
  constructor(public ptr: usize, public len: usize) {}

  // Read another buffer with this reader (no allocation per record).
  reset(ptr: usize, len: usize): Reader {
    this.ptr = ptr;
    this.len = len;
    this.pos = 0;
    this.ok = true;
    return this;
  }

  private arg(): u64 {
    const info = load<u8>(this.ptr + this.pos) & 0x1f;
    this.pos++;
    if (info < 24) return <u64>info;
    if (info > 27) { this.ok = false; return 0; }
    const n = <usize>1 << <usize>(info - 24);
    if (this.len - this.pos < n) { this.ok = false; return 0; }
    let v: u64 = 0;
    for (let i: usize = 0; i < n; i++) v = (v << 8) | <u64>load<u8>(this.ptr + this.pos + i);
    this.pos += n;
    return v;
  }

  private head(major: u8): u64 {
    if (this.pos >= this.len || load<u8>(this.ptr + this.pos) >> 5 != major) {
      this.ok = false;
      return 0;
    }
    return this.arg();
  }

  mapLen(): u64 {
    return this.head(5);
  }

  // A text string's bytes, as a (pointer, length) pair in `textPtr`/`textLen`.
  textPtr: usize = 0;
  textLen: usize = 0;
  text(): bool {
    const n = this.head(3);
    if (!this.ok || <u64>(this.len - this.pos) < n) return false;
    this.textPtr = this.ptr + this.pos;
    this.textLen = <usize>n;
    this.pos += <usize>n;
    return true;
  }

  textIs(s: string): bool {
    if (this.textLen != <usize>s.length) return false;
    for (let i: usize = 0; i < this.textLen; i++) {
      if (<i32>load<u8>(this.textPtr + i) != s.charCodeAt(<i32>i)) return false;
    }
    return true;
  }

  // An integer, or a half, single or double float; NaN when it is not one.
  number(): f64 {
    if (this.pos >= this.len) return NaN;
    const b = load<u8>(this.ptr + this.pos);
    const major = b >> 5, info = b & 0x1f;
    if (major == 7 && info >= 25 && info <= 27) {
      const v = this.arg();
      if (!this.ok) return NaN;
      if (info == 27) return reinterpret<f64>(v);
      if (info == 26) return <f64>reinterpret<f32>(<u32>v);
      return half(<u32>v);
    }
    if (major > 1) return NaN;
    const v = this.arg();
    if (!this.ok) return NaN;
    return major == 0 ? <f64>v : -1.0 - <f64>v;
  }
}

function half(h: u32): f64 {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const d: f64 = e == 0 ? <f64>m / 16777216.0
    : e == 31 ? (m != 0 ? NaN : Infinity)
    : <f64>(1024 + m) * <f64>(<u64>1 << e) / 33554432.0;
  return (h & 0x8000) != 0 ? -d : d;
}

export class Writer {
  len: usize = 0;
  constructor(public ptr: usize) {}

  // Write from the start again.
  reset(): Writer {
    this.len = 0;
    return this;
  }

  private byte(b: u8): void {
    store<u8>(this.ptr + this.len, b);
    this.len++;
  }

  mapHead(n: u8): void {
    this.byte(0xa0 | n);
  }

  // An ASCII text string.
  text(s: string): void {
    this.byte(0x60 | <u8>s.length);
    for (let i = 0; i < s.length; i++) this.byte(<u8>s.charCodeAt(i));
  }

  // Single precision when that is exact, else double (as weir-abi).
  float(f: f64): void {
    const single = <f32>f;
    if (<f64>single == f || isNaN(f)) {
      this.byte(0xfa);
      store<u32>(this.ptr + this.len, bswap<u32>(reinterpret<u32>(single)));
      this.len += 4;
    } else {
      this.byte(0xfb);
      store<u64>(this.ptr + this.len, bswap<u64>(reinterpret<u64>(f)));
      this.len += 8;
    }
  }
}
