//! Safe wrappers over every host import of ABI v1.
//!
//! Each wrapper checks the host's return value and turns failures into
//! [`Error::Host`]. Note that the host also remembers a failed call and fails
//! the record itself, so ignoring an error here cannot hide it.

use weir_abi::hostcall::E_NOT_FOUND;

use crate::{Error, Record};

#[cfg(target_arch = "wasm32")]
mod raw {
    #[link(wasm_import_module = "weir")]
    unsafe extern "C" {
        pub fn emit(ptr: *const u8, len: usize) -> i32;
        pub fn input_get(kptr: *const u8, klen: usize, vptr: *mut u8, vcap: usize) -> i32;
        pub fn emit_input(ptr: *const u8, len: usize) -> i32;
        pub fn log(level: i32, ptr: *const u8, len: usize) -> i32;
        pub fn fail(ptr: *const u8, len: usize) -> i32;
        pub fn clock_now_ms() -> i64;
        pub fn state_get(kptr: *const u8, klen: usize, vptr: *mut u8, vcap: usize) -> i32;
        pub fn state_set(kptr: *const u8, klen: usize, vptr: *const u8, vlen: usize) -> i32;
        pub fn state_delete(kptr: *const u8, klen: usize) -> i32;
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::native::raw;

fn check(code: i32) -> Result<i32, Error> {
    if code < 0 {
        Err(Error::Host(code))
    } else {
        Ok(code)
    }
}

/// Emit an already encoded record (CBOR bytes in ABI record form).
pub fn emit_raw(bytes: &[u8]) -> Result<(), Error> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { raw::emit(bytes.as_ptr(), bytes.len()) }).map(drop)
}

/// Emit the record being processed with `patch` (a CBOR map) merged into its
/// payload; an empty patch emits it unchanged.
pub fn emit_input(patch: &[u8]) -> Result<(), Error> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { raw::emit_input(patch.as_ptr(), patch.len()) }).map(drop)
}

/// Copy payload field `key` of the record being processed into `buf` as CBOR.
/// `Ok(Some(n))`: the value is `n` bytes (copied only if it fits); `Ok(None)`:
/// no such field (or the payload is not a map).
pub fn input_get(key: &[u8], buf: &mut [u8]) -> Result<Option<usize>, Error> {
    // SAFETY: pointers and lengths describe live slices.
    match unsafe { raw::input_get(key.as_ptr(), key.len(), buf.as_mut_ptr(), buf.len()) } {
        E_NOT_FOUND => Ok(None),
        code => check(code).map(|n| Some(n as usize)),
    }
}

/// Encode and emit a record.
pub fn emit(rec: &Record<'_>) -> Result<(), Error> {
    crate::scratch::with_output(|buf| {
        let n = rec.encode_into(buf)?;
        emit_raw(buf.get(..n).ok_or(Error::Resource)?)
    })
}

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Level {
    /// Error.
    Error = weir_abi::level::ERROR,
    /// Warning.
    Warn = weir_abi::level::WARN,
    /// Information.
    Info = weir_abi::level::INFO,
    /// Debug.
    Debug = weir_abi::level::DEBUG,
    /// Trace.
    Trace = weir_abi::level::TRACE,
}

/// Write a log line through the host (grant `log`).
pub fn log(level: Level, msg: &str) {
    // SAFETY: pointer and length describe a live str. Logging is best effort.
    let _ = unsafe { raw::log(level as i32, msg.as_ptr(), msg.len()) };
}

/// Log with `format!`-style arguments, truncated to 256 bytes (grant `log`).
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut s = $crate::__heapless::String::<256>::new();
        let _ = write!(s, $($arg)*);
        $crate::host::log($crate::host::Level::$level, &s);
    }};
}

/// Fail the record being processed with `reason` (the first 1 KiB is
/// kept): its dead letter says `module failed: <reason>`. The record fails
/// whatever the transform returns afterwards (status 2 if it returns
/// success). Always available; costs no grant.
pub fn fail(reason: &str) {
    // SAFETY: pointer and length describe a live str.
    let _ = unsafe { raw::fail(reason.as_ptr(), reason.len()) };
}

/// Wall-clock time in ms since the Unix epoch (grant `clock`).
pub fn now_ms() -> i64 {
    // SAFETY: no arguments.
    unsafe { raw::clock_now_ms() }
}

/// Per-module key/value state that outlives records and instances (grant `state`).
pub mod state {
    use super::*;

    /// Read `key` into `buf`. `Ok(Some(n))`: the value is `n` bytes long; it was
    /// copied only if `n <= buf.len()`. `Ok(None)`: no such key.
    pub fn get(key: &[u8], buf: &mut [u8]) -> Result<Option<usize>, Error> {
        // SAFETY: pointers and lengths describe live slices.
        match unsafe { raw::state_get(key.as_ptr(), key.len(), buf.as_mut_ptr(), buf.len()) } {
            E_NOT_FOUND => Ok(None),
            code => check(code).map(|n| Some(n as usize)),
        }
    }

    /// Store `value` under `key`.
    pub fn set(key: &[u8], value: &[u8]) -> Result<(), Error> {
        // SAFETY: pointers and lengths describe live slices.
        check(unsafe { raw::state_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) })
            .map(drop)
    }

    /// Remove `key`. Returns whether it existed.
    pub fn delete(key: &[u8]) -> Result<bool, Error> {
        // SAFETY: pointer and length describe a live slice.
        match unsafe { raw::state_delete(key.as_ptr(), key.len()) } {
            E_NOT_FOUND => Ok(false),
            code => check(code).map(|_| true),
        }
    }
}
