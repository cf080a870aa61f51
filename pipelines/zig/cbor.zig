//! Just enough CBOR for W1: map and text heads, numbers, and a float
//! writer that picks the shortest exact width as the Rust SDK does.

pub const Reader = struct {
    buf: []const u8,
    pos: usize = 0,

    fn head(r: *Reader, major: u8) ?u64 {
        if (r.pos >= r.buf.len or r.buf[r.pos] >> 5 != major) return null;
        return r.arg();
    }

    fn arg(r: *Reader) ?u64 {
        const info = r.buf[r.pos] & 0x1f;
        r.pos += 1;
        if (info < 24) return info;
        if (info > 27) return null;
        const n = @as(usize, 1) << @intCast(info - 24);
        if (r.buf.len - r.pos < n) return null;
        var v: u64 = 0;
        for (r.buf[r.pos .. r.pos + n]) |b| v = (v << 8) | b;
        r.pos += n;
        return v;
    }

    pub fn mapLen(r: *Reader) ?u64 {
        return r.head(5);
    }

    pub fn text(r: *Reader) ?[]const u8 {
        const n = r.head(3) orelse return null;
        if (r.buf.len - r.pos < n) return null;
        const s = r.buf[r.pos .. r.pos + @as(usize, @intCast(n))];
        r.pos += s.len;
        return s;
    }

    /// An integer, or a half, single or double float.
    pub fn number(r: *Reader) ?f64 {
        if (r.pos >= r.buf.len) return null;
        const b = r.buf[r.pos];
        const major = b >> 5;
        const info = b & 0x1f;
        if (major == 7 and info >= 25 and info <= 27) {
            const v = r.arg() orelse return null;
            return switch (info) {
                25 => @floatCast(@as(f16, @bitCast(@as(u16, @intCast(v))))),
                26 => @floatCast(@as(f32, @bitCast(@as(u32, @intCast(v))))),
                else => @bitCast(v),
            };
        }
        if (major > 1) return null;
        const v = r.arg() orelse return null;
        const f: f64 = @floatFromInt(v);
        return if (major == 0) f else -1.0 - f;
    }
};

pub const Writer = struct {
    buf: []u8,
    len: usize = 0,

    fn byte(w: *Writer, b: u8) void {
        w.buf[w.len] = b;
        w.len += 1;
    }

    pub fn mapHead(w: *Writer, n: u8) void {
        w.byte(0xa0 | n);
    }

    pub fn text(w: *Writer, s: []const u8) void {
        w.byte(0x60 | @as(u8, @intCast(s.len)));
        @memcpy(w.buf[w.len .. w.len + s.len], s);
        w.len += s.len;
    }

    /// Single precision when that is exact, else double (as weir-abi).
    pub fn float(w: *Writer, f: f64) void {
        const single: f32 = @floatCast(f);
        if (@as(f64, single) == f or f != f) {
            w.byte(0xfa);
            w.bigEndian(@as(u32, @bitCast(single)), 4);
        } else {
            w.byte(0xfb);
            w.bigEndian(@as(u64, @bitCast(f)), 8);
        }
    }

    fn bigEndian(w: *Writer, v: u64, n: u6) void {
        var i: u6 = n;
        while (i > 0) {
            i -= 1;
            w.byte(@truncate(v >> (i * 8)));
        }
    }

    pub fn bytes(w: *Writer) []const u8 {
        return w.buf[0..w.len];
    }
};
