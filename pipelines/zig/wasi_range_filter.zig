//! W1 stage 1 (range-filter) as a stock WASI module: Zig's standard
//! library for the `wasm32-wasi` target, as any Zig program for WASI uses
//! it. Printing goes through WASI's `fd_write` (grant `log`) and the clock
//! through `clock_time_get` (grant `clock`); weir refuses the module
//! without both. It keeps a record when its `temp_c` lies in [-40, 85],
//! drops it otherwise (saying so on stdout), and fails a record without a
//! numeric `temp_c`, with the reason on stderr. Its outputs are the Rust
//! range-filter's.
//!
//! Grants: log, clock.
//!
//! Build: zig build-exe wasi_range_filter.zig -target wasm32-wasi \
//!          -mexec-model=reactor -O ReleaseSmall -rdynamic --stack 16384
//! (a reactor: a library with no main; weir calls its `_initialize` once.)
const std = @import("std");
const weir = @import("weir.zig");

const lo = -40.0;
const hi = 85.0;

export fn weir_abi_v1() void {}

export fn weir_alloc(size: i32) i32 {
    return weir.alloc(size);
}

export fn weir_init(ptr: [*]const u8, len: i32) i32 {
    _ = ptr;
    _ = len;
    const now = std.time.milliTimestamp();
    std.io.getStdOut().writer().print("range-filter: keeping temp_c in [{d}, {d}] from {d} ms\n", .{ lo, hi, now }) catch {};
    return weir.OK;
}

export fn weir_transform(ptr: [*]const u8, len: i32) i32 {
    _ = ptr;
    _ = len;
    const t = weir.inputNumber("temp_c") orelse {
        std.io.getStdErr().writer().print("no numeric temp_c in the record\n", .{}) catch {};
        return weir.ERR_TRANSFORM;
    };
    if (t >= lo and t <= hi) return weir.emitInput(&.{});
    std.io.getStdOut().writer().print("dropped: temp_c {d} is outside [{d}, {d}]\n", .{ t, lo, hi }) catch {};
    return weir.OK;
}
