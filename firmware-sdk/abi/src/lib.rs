//! Weir guest ABI v1: the names, status codes and record keys that host and
//! guest agree on. The contract itself is described in `firmware-sdk/ABI.md`;
//! this crate only gives its constants one home so neither side can drift.
//!
//! # Layout
//! - [`exports`]: symbols a module exports.
//! - [`imports`]: host functions a module may import, and the grant each needs.
//! - [`status`]: values returned by `weir_transform` / `weir_init`.
//! - [`hostcall`]: negative values returned by host functions.
//! - [`record`]: keys of the CBOR record map, and [`record::validate`].
//! - [`cbor`]: the minimal CBOR reader and writer both sides use.
//! - [`patch`]: payload field lookup and patching (`input_get`, `emit_input`).
//! - `records` (feature `alloc`): records stored back to back, for collecting outputs.
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod cbor;
pub mod patch;
#[cfg(feature = "alloc")]
pub mod records;

/// The ABI version this crate describes.
pub const VERSION: u32 = 1;

/// What host calls cost in fuel, on the gateway and on a node alike
/// (ABI.md, section 6): so a record costs the same fuel on both.
pub mod fuel {
    /// Fuel every host call costs, whatever it does.
    pub const HOST_CALL: u64 = 8;
    /// Bytes of host work one unit of fuel pays for.
    pub const BYTES_PER_FUEL: u64 = 4;
}

/// Module name of every host import.
pub const IMPORT_MODULE: &str = "weir";

/// Symbols a module exports.
pub mod exports {
    /// Marker function `() -> ()`; its name carries the ABI version.
    pub const ABI_MARKER: &str = "weir_abi_v1";
    /// Prefix of any ABI marker, used to report unsupported versions.
    pub const ABI_MARKER_PREFIX: &str = "weir_abi_v";
    /// The module's linear memory.
    pub const MEMORY: &str = "memory";
    /// `(size: i32) -> i32`: a buffer of at least `size` bytes, 0 if none.
    pub const ALLOC: &str = "weir_alloc";
    /// `(ptr: i32, len: i32) -> i32`: process one CBOR record, return a status.
    pub const TRANSFORM: &str = "weir_transform";
    /// Optional `(ptr: i32, len: i32) -> i32`: receive the stage config (CBOR map).
    pub const INIT: &str = "weir_init";
}

/// Host functions, all in module [`IMPORT_MODULE`](crate::IMPORT_MODULE).
pub mod imports {
    /// `emit(ptr: i32, len: i32) -> i32`. Always available.
    pub const EMIT: &str = "emit";
    /// `log(level: i32, ptr: i32, len: i32) -> i32`. Grant `log`.
    pub const LOG: &str = "log";
    /// `clock_now_ms() -> i64`. Grant `clock`.
    pub const CLOCK_NOW_MS: &str = "clock_now_ms";
    /// `state_get(kptr, klen, vptr, vcap: i32) -> i32`. Grant `state`.
    pub const STATE_GET: &str = "state_get";
    /// `state_set(kptr, klen, vptr, vlen: i32) -> i32`. Grant `state`.
    pub const STATE_SET: &str = "state_set";
    /// `state_delete(kptr, klen: i32) -> i32`. Grant `state`.
    pub const STATE_DELETE: &str = "state_delete";
    /// `input_get(kptr, klen, vptr, vcap: i32) -> i32`: a payload field of the
    /// record being processed, as CBOR. Always available.
    pub const INPUT_GET: &str = "input_get";
    /// `emit_input(pptr, plen: i32) -> i32`: emit the record being processed
    /// with a CBOR patch map merged into its payload. Always available.
    pub const EMIT_INPUT: &str = "emit_input";
    /// `fail(ptr, len: i32) -> i32`: fail the record being processed with
    /// this reason (UTF-8, the first 1 KiB kept); the dead letter carries
    /// it. Always available.
    pub const FAIL: &str = "fail";
    /// `serial_send(sptr, slen, sensor, cptr, clen: i32) -> i32`: after the
    /// record, send the downlink command (a CBOR map) at `cptr..cptr+clen`
    /// to sensor `sensor` on the serial source named at `sptr..sptr+slen`.
    /// Grant `serial`.
    pub const SERIAL_SEND: &str = "serial_send";

    /// Every import with the grant it needs (`None`: always granted).
    pub const ALL: &[(&str, Option<&str>)] = &[
        (EMIT, None),
        (INPUT_GET, None),
        (EMIT_INPUT, None),
        (FAIL, None),
        (LOG, Some("log")),
        (CLOCK_NOW_MS, Some("clock")),
        (STATE_GET, Some("state")),
        (STATE_SET, Some("state")),
        (STATE_DELETE, Some("state")),
        (SERIAL_SEND, Some("serial")),
    ];

    /// The grant an import needs: `Some(None)` if always available,
    /// `None` if the host does not know the import at all.
    pub fn grant_for(name: &str) -> Option<Option<&'static str>> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, g)| *g)
    }

    /// Names a manifest may grant.
    pub const GRANTS: &[&str] = &["log", "clock", "state", "random", "serial"];
}

/// The WASI preview 1 subset a module may import, from module [`wasi::MODULE`]:
/// no files, no sockets. Every other WASI function is refused at load.
pub mod wasi {
    /// The import module of WASI preview 1.
    pub const MODULE: &str = "wasi_snapshot_preview1";

    /// Every WASI function the host provides, with the grant it needs
    /// (`None`: always available) and what it does.
    pub const ALL: &[(&str, Option<&str>, &str)] = &[
        (
            "fd_write",
            Some("log"),
            "stdout and stderr (fds 1 and 2) go to the stage's log, a line each; other fds: EBADF",
        ),
        (
            "fd_fdstat_get",
            Some("log"),
            "fds 1 and 2: a character device you may write to; other fds: EBADF (libc's stdio asks)",
        ),
        (
            "fd_seek",
            Some("log"),
            "fds 1 and 2: ESPIPE (they are not files); other fds: EBADF",
        ),
        (
            "fd_close",
            Some("log"),
            "fds 1 and 2: nothing to do; other fds: EBADF",
        ),
        (
            "clock_time_get",
            Some("clock"),
            "realtime and monotonic clocks, in nanoseconds; others: EINVAL",
        ),
        (
            "random_get",
            Some("random"),
            "bytes from the operating system's random source",
        ),
        (
            "proc_exit",
            None,
            "fails the record with the exit code (exit status 0 too)",
        ),
        ("args_sizes_get", None, "no arguments"),
        ("args_get", None, "no arguments"),
        ("environ_sizes_get", None, "no environment"),
        ("environ_get", None, "no environment"),
    ];

    /// The grant a WASI function needs: `Some(None)` if always available,
    /// `None` if the host does not provide it.
    pub fn grant_for(name: &str) -> Option<Option<&'static str>> {
        ALL.iter().find(|(n, _, _)| *n == name).map(|(_, g, _)| *g)
    }

    /// `errno` values the subset returns.
    pub mod errno {
        /// Success.
        pub const SUCCESS: i32 = 0;
        /// Bad file descriptor.
        pub const BADF: i32 = 8;
        /// A pointer outside memory.
        pub const FAULT: i32 = 21;
        /// Invalid argument.
        pub const INVAL: i32 = 28;
        /// Seek on a pipe or character device.
        pub const SPIPE: i32 = 70;
    }
}

/// Values returned by `weir_transform` and `weir_init`.
pub mod status {
    /// Success. What was emitted is the output (nothing emitted: the record is dropped).
    pub const OK: i32 = 0;
    /// The guest could not decode its input.
    pub const ERR_INPUT: i32 = 1;
    /// The transform itself failed (application error).
    pub const ERR_TRANSFORM: i32 = 2;
    /// The guest ran out of its own resources (buffer, table).
    pub const ERR_RESOURCE: i32 = 3;
    /// The stage config given to `weir_init` was rejected.
    pub const ERR_CONFIG: i32 = 4;

    /// A short name for a status, for logs and counters.
    pub fn name(code: i32) -> &'static str {
        match code {
            OK => "ok",
            ERR_INPUT => "input",
            ERR_TRANSFORM => "transform",
            ERR_RESOURCE => "resource",
            ERR_CONFIG => "config",
            _ => "unknown",
        }
    }
}

/// Negative values returned by host functions (0 or more means success).
pub mod hostcall {
    /// A pointer or length lies outside the module's memory.
    pub const E_BOUNDS: i32 = -1;
    /// The stage's `max_outputs` per record was reached.
    pub const E_TOO_MANY_OUTPUTS: i32 = -2;
    /// A size limit was reached (`max_output_bytes`, state size).
    pub const E_TOO_LARGE: i32 = -3;
    /// An emitted buffer is not a valid record.
    pub const E_MALFORMED: i32 = -4;
    /// `state_get`/`state_delete`: no such key. Does not fail the record.
    pub const E_NOT_FOUND: i32 = -5;
    /// Another invalid argument (for example an unknown log level).
    pub const E_INVALID: i32 = -6;

    /// A short name for a host-call result, for logs.
    pub fn name(code: i32) -> &'static str {
        match code {
            E_BOUNDS => "out of bounds",
            E_TOO_MANY_OUTPUTS => "too many outputs",
            E_TOO_LARGE => "too large",
            E_MALFORMED => "malformed record",
            E_NOT_FOUND => "not found",
            E_INVALID => "invalid argument",
            _ => "unknown",
        }
    }
}

/// Log levels for the `log` import.
pub mod level {
    /// Error.
    pub const ERROR: i32 = 0;
    /// Warning.
    pub const WARN: i32 = 1;
    /// Information.
    pub const INFO: i32 = 2;
    /// Debug.
    pub const DEBUG: i32 = 3;
    /// Trace.
    pub const TRACE: i32 = 4;
}

/// Keys of the CBOR record map exchanged between host and guest.
pub mod record {
    /// Text: the source that produced the record (`serial0`, `mqtt-local`, ...).
    pub const SOURCE: &str = "source";
    /// Text: MQTT topic or other subject.
    pub const TOPIC: &str = "topic";
    /// Unsigned: receive time at the gateway, milliseconds since the Unix epoch.
    pub const TS: &str = "ts";
    /// Map of text to text: metadata. Optional; absent means empty.
    pub const HEADERS: &str = "headers";
    /// Any CBOR data item, usually a map of sensor fields.
    pub const PAYLOAD: &str = "payload";

    use crate::cbor::{self, Reader};

    /// Check that `bytes` is exactly one well-formed ABI v1 record: a
    /// definite map with text `source` and `topic`, unsigned `ts`, optional
    /// `headers` (a map of text to text) and any `payload`; every text valid
    /// UTF-8, every item complete, no key twice, nothing after the map.
    /// Unknown keys are allowed. Returns what is wrong.
    pub fn validate(bytes: &[u8]) -> Result<(), &'static str> {
        let mut r = Reader::new(bytes);
        let h = r.head().map_err(|_| "not CBOR")?;
        if h.major != cbor::MAP || h.indefinite() {
            return Err("not a definite-length map");
        }
        let mut seen = 0u8;
        for _ in 0..h.arg {
            let key = r.text().map_err(|_| "a key is not a text string")?;
            let bit = match key {
                SOURCE | TOPIC => {
                    r.text().map_err(|_| "`source` and `topic` must be text")?;
                    if key == SOURCE { 1 } else { 2 }
                }
                TS => {
                    let h = r.head().map_err(|_| "truncated")?;
                    if h.major != cbor::UINT {
                        return Err("`ts` must be an unsigned integer");
                    }
                    4
                }
                HEADERS => {
                    let h = r.head().map_err(|_| "truncated")?;
                    if h.major != cbor::MAP || h.indefinite() {
                        return Err("`headers` must be a definite-length map");
                    }
                    for _ in 0..h.arg {
                        r.text().map_err(|_| "a header name is not text")?;
                        r.text().map_err(|_| "a header value is not text")?;
                    }
                    16
                }
                PAYLOAD => {
                    r.validate_item()
                        .map_err(|_| "`payload` is malformed CBOR")?;
                    8
                }
                _ => {
                    r.validate_item()
                        .map_err(|_| "an unknown entry is malformed CBOR")?;
                    0
                }
            };
            if seen & bit != 0 {
                return Err("a key appears twice");
            }
            seen |= bit;
        }
        if seen & 15 != 15 {
            return Err("missing `source`, `topic`, `ts` or `payload`");
        }
        if !r.at_end() {
            return Err("bytes after the record");
        }
        Ok(())
    }
}
