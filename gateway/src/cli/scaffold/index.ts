// {name}: a Weir transform module in AssemblyScript, against guest ABI v1
// with no SDK. It keeps readings that have a `temp_c`, adds
// `"checked": true` to them, and fails a record without one, saying why.
// It allocates nothing per record: the stub runtime never frees.

@external("weir", "input_get")
declare function input_get(k: usize, kl: usize, v: usize, vc: usize): i32;
@external("weir", "emit_input")
declare function emit_input(patch: usize, len: usize): i32;
@external("weir", "fail")
declare function fail(reason: usize, len: usize): i32;

const OK: i32 = 0;
const ERR_TRANSFORM: i32 = 2;

// Static data: the input buffer the host writes each record to, UTF-8 keys
// and texts, and the patch (the CBOR map {"checked": true}).
const INPUT = memory.data(64 * 1024);
const VALUE = memory.data(16);
const KEY = memory.data<u8>([0x74, 0x65, 0x6d, 0x70, 0x5f, 0x63]); // "temp_c"
const WHY = "no temp_c in the record";
const PATCH = memory.data<u8>([0xa1, 0x67, 0x63, 0x68, 0x65, 0x63, 0x6b, 0x65, 0x64, 0xf5]);

export function weir_abi_v1(): void {}

export function weir_alloc(size: i32): i32 {
  return size >= 0 && size <= 64 * 1024 ? <i32>INPUT : 0;
}

export function weir_transform(ptr: usize, len: i32): i32 {
  if (input_get(KEY, 6, VALUE, 16) < 0) {
    // Strings are UTF-16: copy the ASCII reason to static memory as UTF-8.
    const why = memory.data(32);
    for (let i = 0; i < WHY.length; i++) store<u8>(why + i, <u8>WHY.charCodeAt(i));
    fail(why, WHY.length);
    return ERR_TRANSFORM;
  }
  return emit_input(PATCH, 10) < 0 ? ERR_TRANSFORM : OK;
}
