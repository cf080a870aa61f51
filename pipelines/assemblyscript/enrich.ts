// W1 stage 2, enrich, in AssemblyScript against Weir's guest ABI v1 with no
// SDK: add `temp_f` and `dew_point_c` (Magnus formula, a = 17.62,
// b = 243.12 °C), both rounded to 0.01 half away from zero. `dew_point_c`
// is added only when `hum` is in (0, 100]. A record without a numeric
// `temp_c` fails, with the reason. Its outputs are the Rust enrich's, byte
// for byte.
//
// Grants: none.
//
// Build: asc enrich.ts -o enrich.wasm -O3 --runtime stub --use abort= \
//          --stackSize 16384
import { Writer } from "./cbor";
import * as weir from "./weir";

const A: f64 = 17.62;
const B: f64 = 243.12;
const patch = new Writer(memory.data(48));

export function weir_abi_v1(): void {}

export function weir_alloc(size: i32): i32 {
  return weir.alloc(size);
}

export function weir_transform(ptr: usize, len: i32): i32 {
  const t = weir.inputNumber("temp_c");
  if (isNaN(t)) return weir.fail("no numeric temp_c in the record");
  const h = weir.inputNumber("hum");
  // NaN (no numeric hum) fails the range test too.
  const dew = h > 0.0 && h <= 100.0;
  const w = patch.reset();
  w.mapHead(dew ? 2 : 1);
  w.text("temp_f");
  w.float(round2(t * 9.0 / 5.0 + 32.0));
  if (dew) {
    const g = Math.log(h / 100.0) + A * t / (B + t);
    w.text("dew_point_c");
    w.float(round2(B * g / (A - g)));
  }
  return weir.emitInput(w.ptr, w.len);
}

// Round to two decimals, half away from zero (Math.round rounds halves up).
function round2(x: f64): f64 {
  const y = x * 100.0;
  let r = trunc(y);
  if (abs(y - r) >= 0.5) r += copysign<f64>(1.0, y);
  return r / 100.0;
}
