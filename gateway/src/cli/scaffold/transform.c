/*
 * {name}: a Weir transform module in C, against guest ABI v1 with no libc.
 * It keeps readings that have a `temp_c`, adds `"checked": true` to them,
 * and fails a record without one, saying why.
 */
#include <stdint.h>
#include <stddef.h>

#define IMPORT(name) __attribute__((import_module("weir"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("input_get") int32_t input_get(const char *k, size_t kl, uint8_t *v, size_t vc);
IMPORT("emit_input") int32_t emit_input(const uint8_t *patch, size_t len);
IMPORT("fail") int32_t fail(const char *reason, size_t len);

enum { OK = 0, ERR_TRANSFORM = 2 };

/* The host writes each record here; one static buffer is reused. */
static uint8_t input[64 * 1024];

EXPORT("weir_abi_v1") void abi_v1(void) {}

EXPORT("weir_alloc") int32_t alloc(int32_t size) {
    return (size >= 0 && (size_t)size <= sizeof input) ? (int32_t)(uintptr_t)input : 0;
}

/* Merged into the payload by the host: the CBOR map {"checked": true}. */
static const uint8_t patch[] = {0xa1, 0x67, 'c', 'h', 'e', 'c', 'k', 'e', 'd', 0xf5};

EXPORT("weir_transform") int32_t transform(const uint8_t *rec, int32_t len) {
    uint8_t value[16];
    (void)rec, (void)len;
    if (input_get("temp_c", 6, value, sizeof value) < 0) {
        static const char why[] = "no temp_c in the record";
        fail(why, sizeof why - 1);
        return ERR_TRANSFORM;
    }
    return emit_input(patch, sizeof patch) < 0 ? ERR_TRANSFORM : OK;
}
