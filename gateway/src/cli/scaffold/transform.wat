;; {name}: a Weir transform module in WebAssembly text, against guest
;; ABI v1. It keeps readings that have a `temp_c`, adds "checked": true to
;; them, and fails a record without one, saying why.
(module
  (import "weir" "input_get" (func $input_get (param i32 i32 i32 i32) (result i32)))
  (import "weir" "emit_input" (func $emit_input (param i32 i32) (result i32)))
  (import "weir" "fail" (func $fail (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..16: a field value; 16..22: "temp_c"; 32..55: the failure reason;
  ;; 64..74: the patch, the CBOR map {"checked": true}; 1024..: the input.
  (data (i32.const 16) "temp_c")
  (data (i32.const 32) "no temp_c in the record")
  (data (i32.const 64) "\a1\67checked\f5")
  (func (export "weir_abi_v1"))
  (func (export "weir_alloc") (param $size i32) (result i32)
    (select (i32.const 1024) (i32.const 0)
      (i32.le_u (local.get $size) (i32.const 130048))))
  (func (export "weir_transform") (param $ptr i32) (param $len i32) (result i32)
    (if (i32.lt_s (call $input_get (i32.const 16) (i32.const 6) (i32.const 0) (i32.const 16))
                  (i32.const 0))
      (then
        (drop (call $fail (i32.const 32) (i32.const 23)))
        (return (i32.const 2))))
    (select (i32.const 2) (i32.const 0)
      (i32.lt_s (call $emit_input (i32.const 64) (i32.const 10)) (i32.const 0)))))
