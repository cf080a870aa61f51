// The few guest ABI v1 imports the AssemblyScript modules use
// (firmware-sdk/ABI.md), and the input buffer the host writes records to.
import { Reader } from "./cbor";

export const OK: i32 = 0;
export const ERR_TRANSFORM: i32 = 2;
export const ERR_CONFIG: i32 = 4;

@external("weir", "input_get")
declare function input_get(k: usize, kl: usize, v: usize, vc: usize): i32;
@external("weir", "emit_input")
declare function emit_input(p: usize, pl: usize): i32;
@external("weir", "fail")
declare function host_fail(p: usize, l: usize): i32;

// Static data, not the garbage-collected heap: every record is written here
// by the host, and one buffer is reused.
const INPUT_CAP: i32 = 64 * 1024;
const INPUT: usize = memory.data(INPUT_CAP);
const FIELD: usize = memory.data(16);
const TEXT: usize = memory.data(256);
const field = new Reader(FIELD, 0);

// Copy ASCII `s` to the static TEXT buffer (cut at 256 bytes): nothing is
// allocated per record, as the stub runtime never frees.
function ascii(s: string): usize {
  const n = min(s.length, 256);
  for (let i = 0; i < n; i++) store<u8>(TEXT + <usize>i, <u8>s.charCodeAt(i));
  return <usize>n;
}

export function alloc(size: i32): i32 {
  return size >= 0 && size <= INPUT_CAP ? <i32>INPUT : 0;
}

// The payload field `key` (ASCII) as a number, if it is one.
export function inputNumber(key: string): f64 {
  const n = input_get(TEXT, ascii(key), FIELD, 16);
  if (n <= 0 || n > 16) return NaN;
  return field.reset(FIELD, <usize>n).number();
}

// Output the record being processed with the patch (a CBOR map) merged in.
export function emitInput(patch: usize, len: usize): i32 {
  return emit_input(patch, len) < 0 ? ERR_TRANSFORM : OK;
}

// Fail the record with an ASCII reason (its dead letter says it).
export function fail(reason: string): i32 {
  host_fail(TEXT, ascii(reason));
  return ERR_TRANSFORM;
}
