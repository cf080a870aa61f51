//! W1 stage 1, range-filter, in Zig against Weir's guest ABI v1
//! (firmware-sdk/ABI.md) with no SDK: keep a record when its `temp_c` lies
//! in [min, max] (default [-40, 85], `config = { min = .., max = .. }`),
//! drop it otherwise, and fail a record without a numeric `temp_c`, with
//! the reason. Its outputs are the Rust range-filter's, byte for byte.
//!
//! Grants: none.
//!
//! Build: zig build-exe range_filter.zig -target wasm32-freestanding \
//!          -O ReleaseSmall -fno-entry -rdynamic --stack 16384
const cbor = @import("cbor.zig");
const weir = @import("weir.zig");

var lo: f64 = -40.0;
var hi: f64 = 85.0;

export fn weir_abi_v1() void {}

export fn weir_alloc(size: i32) i32 {
    return weir.alloc(size);
}

export fn weir_init(ptr: [*]const u8, len: i32) i32 {
    var r = cbor.Reader{ .buf = ptr[0..@intCast(len)] };
    var pairs = r.mapLen() orelse return weir.ERR_CONFIG;
    while (pairs > 0) : (pairs -= 1) {
        const key = r.text() orelse return weir.ERR_CONFIG;
        const v = r.number() orelse return weir.ERR_CONFIG;
        if (eql(key, "min")) lo = v else if (eql(key, "max")) hi = v;
    }
    return if (lo > hi) weir.ERR_CONFIG else weir.OK;
}

export fn weir_transform(ptr: [*]const u8, len: i32) i32 {
    _ = ptr;
    _ = len;
    const t = weir.inputNumber("temp_c") orelse
        return weir.fail("no numeric temp_c in the record");
    if (t >= lo and t <= hi) return weir.emitInput(&.{});
    return weir.OK;
}

fn eql(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |x, y| if (x != y) return false;
    return true;
}
