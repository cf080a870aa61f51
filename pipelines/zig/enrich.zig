//! W1 stage 2, enrich, in Zig against Weir's guest ABI v1 with no SDK: add
//! `temp_f` and `dew_point_c` (Magnus formula, a = 17.62, b = 243.12 °C),
//! both rounded to 0.01 half away from zero. `dew_point_c` is added only
//! when `hum` is in (0, 100]. A record without a numeric `temp_c` fails,
//! with the reason. Its outputs are the Rust enrich's, byte for byte.
//!
//! Grants: none.
//!
//! Build: zig build-exe enrich.zig -target wasm32-freestanding \
//!          -O ReleaseSmall -fno-entry -rdynamic --stack 16384
const cbor = @import("cbor.zig");
const weir = @import("weir.zig");

const a = 17.62;
const b = 243.12;

export fn weir_abi_v1() void {}

export fn weir_alloc(size: i32) i32 {
    return weir.alloc(size);
}

export fn weir_transform(ptr: [*]const u8, len: i32) i32 {
    _ = ptr;
    _ = len;
    const t = weir.inputNumber("temp_c") orelse
        return weir.fail("no numeric temp_c in the record");
    var buf: [48]u8 = undefined;
    var patch = cbor.Writer{ .buf = &buf };
    const dew = if (weir.inputNumber("hum")) |h| dewPoint(t, h) else null;
    patch.mapHead(if (dew == null) 1 else 2);
    patch.text("temp_f");
    patch.float(round2(t * 9.0 / 5.0 + 32.0));
    if (dew) |d| {
        patch.text("dew_point_c");
        patch.float(d);
    }
    return weir.emitInput(patch.bytes());
}

fn round2(x: f64) f64 {
    return @round(x * 100.0) / 100.0;
}

fn dewPoint(t: f64, hum: f64) ?f64 {
    if (!(hum > 0.0 and hum <= 100.0)) return null;
    const g = @log(hum / 100.0) + a * t / (b + t);
    return round2(b * g / (a - g));
}
