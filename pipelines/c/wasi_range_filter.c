/*
 * wasi_range_filter: W1 stage 1 (range-filter) as a stock WASI module.
 *
 * Built with clang's wasm32-wasi target against Debian's wasi-libc, as any
 * C program for WASI is: printf and fprintf come from libc, and reach the
 * stage's log through WASI's fd_write (grant `log`). It keeps a record when
 * its temp_c lies in [min, max] (default [-40, 85], `config = { min, max }`),
 * drops it otherwise, and fails a record without a numeric temp_c with the
 * reason on stderr. Its outputs are the Rust range-filter's, byte for byte.
 *
 * Grants: log.
 *
 * Build: clang --target=wasm32-wasi -O2 -mexec-model=reactor \
 *          -Wl,-z,stack-size=16384 -o wasi_range_filter.wasm wasi_range_filter.c
 * (-mexec-model=reactor: a library with no main; weir calls its
 * `_initialize` once, as WASI reactors expect.)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("weir"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IMPORT("emit") int32_t weir_emit(const uint8_t *ptr, size_t len);
IMPORT("input_get") int32_t weir_input_get(const char *k, size_t kl, uint8_t *v, size_t vc);

enum { OK = 0, ERR_INPUT = 1, ERR_TRANSFORM = 2, ERR_CONFIG = 4 };

static uint8_t input[64 * 1024];
static double lo = -40.0, hi = 85.0;

EXPORT("weir_abi_v1") void abi_v1(void) {}

EXPORT("weir_alloc") int32_t alloc(int32_t size) {
    return (size >= 0 && (size_t)size <= sizeof input) ? (int32_t)(uintptr_t)input : 0;
}

/* A CBOR number (integer, or half, single or double float) at *p. */
static int number(const uint8_t **p, const uint8_t *end, double *out) {
    if (*p >= end) return 0;
    uint8_t b = *(*p)++;
    int major = b >> 5, info = b & 0x1f, n;
    uint64_t v = 0;
    if (major == 7 && info >= 25 && info <= 27) {
        n = 1 << (info - 24);
        if (end - *p < n) return 0;
        for (int i = 0; i < n; i++) v = (v << 8) | *(*p)++;
        if (info == 27) { memcpy(out, &v, 8); return 1; }
        if (info == 26) { uint32_t w = (uint32_t)v; float f; memcpy(&f, &w, 4); *out = f; return 1; }
        /* half */
        int e = (v >> 10) & 0x1f, m = v & 0x3ff;
        double d = e == 0 ? m / 16777216.0 : e == 31 ? (m ? 0.0 / 0.0 : 1.0 / 0.0)
                                                      : (1024 + m) * (double)(1ull << e) / 33554432.0;
        *out = (v & 0x8000) ? -d : d;
        return 1;
    }
    if (major > 1 || info > 27) return 0;
    if (info < 24) v = info;
    else {
        n = 1 << (info - 24);
        if (end - *p < n) return 0;
        while (n--) v = (v << 8) | *(*p)++;
    }
    *out = major == 0 ? (double)v : -1.0 - (double)v;
    return 1;
}

/* `config = { min = .., max = .. }`: a CBOR map with text keys. */
EXPORT("weir_init") int32_t init(const uint8_t *cfg, int32_t len) {
    const uint8_t *p = cfg, *end = cfg + len;
    if (p >= end || *p >> 5 != 5 || (*p & 0x1f) >= 24) return ERR_CONFIG;
    int pairs = *p++ & 0x1f;
    while (pairs--) {
        if (p >= end || *p >> 5 != 3 || (*p & 0x1f) >= 24) return ERR_CONFIG;
        int klen = *p++ & 0x1f;
        if (end - p < klen) return ERR_CONFIG;
        const char *key = (const char *)p;
        p += klen;
        double v;
        if (!number(&p, end, &v)) {
            fprintf(stderr, "range-filter: `%.*s` must be a number\n", klen, key);
            return ERR_CONFIG;
        }
        if (klen == 3 && !memcmp(key, "min", 3)) lo = v;
        else if (klen == 3 && !memcmp(key, "max", 3)) hi = v;
    }
    if (lo > hi) {
        fprintf(stderr, "range-filter: min %g is above max %g\n", lo, hi);
        return ERR_CONFIG;
    }
    printf("range-filter: keeping temp_c in [%g, %g]\n", lo, hi);
    return OK;
}

EXPORT("weir_transform") int32_t transform(const uint8_t *rec, int32_t len) {
    uint8_t buf[16];
    int32_t n = weir_input_get("temp_c", 6, buf, sizeof buf);
    const uint8_t *p = buf;
    double t;
    if (n <= 0 || n > (int32_t)sizeof buf || !number(&p, buf + n, &t)) {
        fprintf(stderr, "no numeric temp_c in the record\n");
        return ERR_TRANSFORM;
    }
    if (t >= lo && t <= hi) return weir_emit(rec, len) < 0 ? ERR_TRANSFORM : OK;
    printf("dropped: temp_c %g is outside [%g, %g]\n", t, lo, hi);
    return OK;
}
