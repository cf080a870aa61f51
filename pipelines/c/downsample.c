/*
 * downsample: keep one record in every `every` per topic (default 2).
 *
 * Written in plain C against Weir's guest ABI v1 (firmware-sdk/ABI.md) with
 * no SDK and no libc, to show the ABI does not depend on Rust. It reads the
 * CBOR record just far enough to find "topic", keeps a per-topic counter in
 * the host's key/value state, and re-emits kept records byte for byte.
 *
 * Grants: state, log.   Config: every = <unsigned int, 1..1000000>.
 *
 * Build: clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry \
 *          -Wl,-z,stack-size=16384 -o downsample.wasm downsample.c
 */
#include <stdint.h>
#include <stddef.h>

#define IMPORT(name) __attribute__((import_module("weir"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("emit") int32_t weir_emit(const uint8_t *ptr, size_t len);
IMPORT("log") int32_t weir_log(int32_t level, const char *ptr, size_t len);
IMPORT("state_get") int32_t weir_state_get(const uint8_t *k, size_t kl, uint8_t *v, size_t vc);
IMPORT("state_set") int32_t weir_state_set(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl);

enum { OK = 0, ERR_INPUT = 1, ERR_TRANSFORM = 2, ERR_CONFIG = 4 };
enum { LOG_INFO = 2 };

static uint8_t input[64 * 1024];
static uint32_t every = 2;

EXPORT("weir_abi_v1") void abi_v1(void) {}

/* The host writes each record here; one static buffer is reused. */
EXPORT("weir_alloc") int32_t alloc(int32_t size) {
    return (size >= 0 && (size_t)size <= sizeof input) ? (int32_t)(uintptr_t)input : 0;
}

/* ---- a minimal CBOR reader: heads, text strings, skipping items ---- */

typedef struct { const uint8_t *p, *end; } reader;

/* Read an item head. Returns 0 on error. *indef is set for 0x1f lengths. */
static int head(reader *r, int *major, uint64_t *val, int *indef) {
    if (r->p >= r->end) return 0;
    uint8_t b = *r->p++;
    int info = b & 0x1f, n;
    *major = b >> 5;
    *indef = 0;
    if (info < 24) { *val = info; return 1; }
    if (info == 31) { *indef = 1; *val = 0; return (*major >= 2 && *major <= 5) || *major == 7; }
    if (info > 27) return 0;
    n = 1 << (info - 24);
    if (r->end - r->p < n) return 0;
    *val = 0;
    while (n--) *val = (*val << 8) | *r->p++;
    return 1;
}

static int skip(reader *r, int depth) {
    int major, indef;
    uint64_t v;
    if (depth > 32 || !head(r, &major, &v, &indef)) return 0;
    switch (major) {
    case 0: case 1: return 1;
    case 7: return !indef; /* a lone "break" is not an item */
    case 2: case 3:
        if (indef) {
            while (r->p < r->end && *r->p != 0xff) if (!skip(r, depth + 1)) return 0;
            return r->p++ < r->end;
        }
        if ((uint64_t)(r->end - r->p) < v) return 0;
        r->p += v;
        return 1;
    case 6: return skip(r, depth + 1);
    default: { /* 4 array, 5 map */
        uint64_t items = major == 5 ? v * 2 : v;
        if (indef) {
            while (r->p < r->end && *r->p != 0xff) if (!skip(r, depth + 1)) return 0;
            return r->p++ < r->end;
        }
        while (items--) if (!skip(r, depth + 1)) return 0;
        return 1;
    }
    }
}

/* Read a definite text string. */
static int text(reader *r, const uint8_t **s, uint64_t *len) {
    int major, indef;
    if (!head(r, &major, len, &indef) || major != 3 || indef) return 0;
    if ((uint64_t)(r->end - r->p) < *len) return 0;
    *s = r->p;
    r->p += *len;
    return 1;
}

static int eq(const uint8_t *a, uint64_t alen, const char *b) {
    uint64_t i = 0;
    for (; i < alen && b[i]; i++) if (a[i] != (uint8_t)b[i]) return 0;
    return i == alen && b[i] == 0;
}

/* Find the text value under `key` in the top-level map at r. */
static int find_text(reader r, const char *key, const uint8_t **val, uint64_t *vlen) {
    int major, indef;
    uint64_t n;
    if (!head(&r, &major, &n, &indef) || major != 5 || indef) return 0;
    while (n--) {
        const uint8_t *k;
        uint64_t klen;
        if (!text(&r, &k, &klen)) return 0;
        if (eq(k, klen, key)) return text(&r, val, vlen);
        if (!skip(&r, 0)) return 0;
    }
    return 0;
}

/* ---- the ABI entry points ---- */

EXPORT("weir_init") int32_t init(const uint8_t *cfg, int32_t len) {
    reader r = { cfg, cfg + len };
    int major, indef;
    uint64_t n;
    if (!head(&r, &major, &n, &indef) || major != 5 || indef) return ERR_CONFIG;
    while (n--) {
        const uint8_t *k;
        uint64_t klen, v;
        if (!text(&r, &k, &klen)) return ERR_CONFIG;
        if (eq(k, klen, "every")) {
            if (!head(&r, &major, &v, &indef) || major != 0 || v < 1 || v > 1000000) return ERR_CONFIG;
            every = (uint32_t)v;
        } else if (!skip(&r, 0)) {
            return ERR_CONFIG;
        }
    }
    static const char msg[] = "downsample: configured";
    weir_log(LOG_INFO, msg, sizeof msg - 1);
    return OK;
}

EXPORT("weir_transform") int32_t transform(const uint8_t *rec, int32_t len) {
    reader r = { rec, rec + len };
    const uint8_t *topic;
    uint64_t tlen;
    uint8_t buf[4];
    uint32_t count = 0;
    if (!find_text(r, "topic", &topic, &tlen)) return ERR_INPUT;
    if (weir_state_get(topic, tlen, buf, sizeof buf) == 4)
        count = buf[0] | buf[1] << 8 | buf[2] << 16 | (uint32_t)buf[3] << 24;
    int keep = count % every == 0;
    count++;
    buf[0] = count; buf[1] = count >> 8; buf[2] = count >> 16; buf[3] = count >> 24;
    if (weir_state_set(topic, tlen, buf, sizeof buf) < 0) return ERR_TRANSFORM;
    if (keep && weir_emit(rec, len) < 0) return ERR_TRANSFORM;
    return OK;
}
