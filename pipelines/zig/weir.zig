//! The few guest ABI v1 imports the Zig modules use (firmware-sdk/ABI.md).
const cbor = @import("cbor.zig");

pub const OK: i32 = 0;
pub const ERR_TRANSFORM: i32 = 2;
pub const ERR_CONFIG: i32 = 4;

extern "weir" fn input_get(k: [*]const u8, kl: usize, v: [*]u8, vc: usize) i32;
extern "weir" fn emit_input(p: [*]const u8, pl: usize) i32;
const host = struct {
    extern "weir" fn fail(p: [*]const u8, l: usize) i32;
};

/// Every record is written here by the host; one buffer is reused.
var input: [64 * 1024]u8 = undefined;

pub fn alloc(size: i32) i32 {
    if (size < 0 or size > input.len) return 0;
    return @intCast(@intFromPtr(&input));
}

/// The payload field `key` as a number, if it is one.
pub fn inputNumber(key: []const u8) ?f64 {
    var buf: [16]u8 = undefined;
    const n = input_get(key.ptr, key.len, &buf, buf.len);
    if (n <= 0 or n > buf.len) return null;
    var r = cbor.Reader{ .buf = buf[0..@intCast(n)] };
    return r.number();
}

/// Output the record being processed with `patch` (a CBOR map) merged in.
pub fn emitInput(patch: []const u8) i32 {
    // An empty slice's pointer is undefined in Zig; the host checks it.
    const p: [*]const u8 = if (patch.len == 0) &input else patch.ptr;
    return if (emit_input(p, patch.len) < 0) ERR_TRANSFORM else OK;
}

/// Fail the record with a reason (its dead letter says it).
pub fn fail(reason: []const u8) i32 {
    _ = host.fail(reason.ptr, reason.len);
    return ERR_TRANSFORM;
}
