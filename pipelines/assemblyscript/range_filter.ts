// W1 stage 1, range-filter, in AssemblyScript against Weir's guest ABI v1
// (firmware-sdk/ABI.md) with no SDK: keep a record when its `temp_c` lies
// in [min, max] (default [-40, 85], `config = { min = .., max = .. }`),
// drop it otherwise, and fail a record without a numeric `temp_c`, with
// the reason. Its outputs are the Rust range-filter's, byte for byte.
//
// Grants: none.
//
// Build: asc range_filter.ts -o range_filter.wasm -O3 --runtime stub \
//          --use abort= --stackSize 16384 \
//          --exportTable false --exportStart '' (see ../../README.md)
import { Reader } from "./cbor";
import * as weir from "./weir";

const config = new Reader(0, 0);
let lo: f64 = -40.0;
let hi: f64 = 85.0;

export function weir_abi_v1(): void {}

export function weir_alloc(size: i32): i32 {
  return weir.alloc(size);
}

export function weir_init(ptr: usize, len: i32): i32 {
  const r = config.reset(ptr, <usize>len);
  let pairs = r.mapLen();
  if (!r.ok) return weir.ERR_CONFIG;
  while (pairs-- > 0) {
    if (!r.text()) return weir.ERR_CONFIG;
    const isMin = r.textIs("min"), isMax = r.textIs("max");
    const v = r.number();
    if (isNaN(v)) return weir.ERR_CONFIG;
    if (isMin) lo = v;
    else if (isMax) hi = v;
  }
  return lo > hi ? weir.ERR_CONFIG : weir.OK;
}

export function weir_transform(ptr: usize, len: i32): i32 {
  const t = weir.inputNumber("temp_c");
  if (isNaN(t)) return weir.fail("no numeric temp_c in the record");
  if (t >= lo && t <= hi) return weir.emitInput(0, 0);
  return weir.OK;
}
