//! {name}: a Weir transform module in Zig, against guest ABI v1 with no
//! SDK. It keeps readings that have a `temp_c`, adds `"checked": true` to
//! them, and fails a record without one, saying why.
extern "weir" fn input_get(k: [*]const u8, kl: usize, v: [*]u8, vc: usize) i32;
extern "weir" fn emit_input(patch: [*]const u8, len: usize) i32;
extern "weir" fn fail(reason: [*]const u8, len: usize) i32;

const OK: i32 = 0;
const ERR_TRANSFORM: i32 = 2;

/// The host writes each record here; one buffer is reused.
var input: [64 * 1024]u8 = undefined;

/// Merged into the payload by the host: the CBOR map {"checked": true}.
const patch = "\xa1\x67checked\xf5";

export fn weir_abi_v1() void {}

export fn weir_alloc(size: i32) i32 {
    if (size < 0 or size > input.len) return 0;
    return @intCast(@intFromPtr(&input));
}

export fn weir_transform(ptr: [*]const u8, len: i32) i32 {
    _ = ptr;
    _ = len;
    var value: [16]u8 = undefined;
    const key = "temp_c";
    if (input_get(key, key.len, &value, value.len) < 0) {
        const why = "no temp_c in the record";
        _ = fail(why, why.len);
        return ERR_TRANSFORM;
    }
    return if (emit_input(patch, patch.len) < 0) ERR_TRANSFORM else OK;
}
