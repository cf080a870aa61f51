//! A native stand-in for the host, so transform code runs unchanged outside
//! Wasm: in unit tests of a module's logic and as the native baseline of the
//! benchmarks. It keeps emitted records and state in thread-local storage.
//!
//! This is not the gateway's host: limits, grants and fuel exist only there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::vec::Vec;

#[derive(Default)]
struct Host {
    outputs: Outputs,
    state: HashMap<Vec<u8>, Vec<u8>>,
    input: Vec<u8>,
    reason: Option<std::string::String>,
}

/// Records emitted by one or more calls, stored back to back.
pub use weir_abi::records::Records as Outputs;

std::thread_local!(static HOST: RefCell<Host> = RefCell::new(Host::default()));

/// Run one transform call on `input`; returns the status and the emitted records.
pub fn call(input: &[u8], f: crate::TransformFn) -> (i32, Vec<Vec<u8>>) {
    let mut out = Outputs::default();
    let status = call_into(input, f, &mut out);
    (status, out.iter().map(<[u8]>::to_vec).collect())
}

/// Like [`call`], but appends emitted records to `out` (no allocation once warm).
pub fn call_into(input: &[u8], f: crate::TransformFn, out: &mut Outputs) -> i32 {
    run_into(input, |i| crate::dispatch(i, f), out)
}

/// Run one patch transform call, appending emitted records to `out`.
pub fn call_patch_into(input: &[u8], f: crate::PatchFn, out: &mut Outputs) -> i32 {
    run_into(input, |i| crate::patch::dispatch_patch(i, f), out)
}

fn run_into(input: &[u8], call: impl FnOnce(&[u8]) -> i32, out: &mut Outputs) -> i32 {
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.input.clear();
        h.input.extend_from_slice(input);
        h.reason = None;
    });
    let status = call(input);
    HOST.with(|h| {
        let mut h = h.borrow_mut();
        h.outputs.iter().for_each(|r| out.push(r));
        h.outputs.clear();
    });
    status
}

/// What the last call gave [`crate::host::fail`], if anything (the host
/// fails such a record whatever its status).
pub fn last_reason() -> Option<std::string::String> {
    HOST.with(|h| h.borrow().reason.clone())
}

/// Forget all state kept for this thread.
pub fn reset() {
    HOST.with(|h| *h.borrow_mut() = Host::default());
}

pub(crate) mod raw {
    use super::HOST;
    use std::slice;
    use weir_abi::hostcall::E_NOT_FOUND;

    // These mirror the Wasm imports' signatures; the pointers come from the
    // safe wrappers in `host`, which always pass live slices.
    pub unsafe fn emit(ptr: *const u8, len: usize) -> i32 {
        // SAFETY: see module comment.
        let bytes = unsafe { slice::from_raw_parts(ptr, len) };
        HOST.with(|h| h.borrow_mut().outputs.push(bytes));
        0
    }

    pub unsafe fn input_get(kptr: *const u8, klen: usize, vptr: *mut u8, vcap: usize) -> i32 {
        // SAFETY: see module comment.
        let key = unsafe { slice::from_raw_parts(kptr, klen) };
        HOST.with(|h| {
            let h = h.borrow();
            let value = weir_abi::patch::payload_span(&h.input)
                .and_then(|span| weir_abi::patch::field(&h.input, span, key));
            match value {
                Some(v) => {
                    if v.len() <= vcap {
                        // SAFETY: see module comment; vcap bytes are writable.
                        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), vptr, v.len()) };
                    }
                    v.len() as i32
                }
                None => E_NOT_FOUND,
            }
        })
    }

    pub unsafe fn emit_input(ptr: *const u8, len: usize) -> i32 {
        // SAFETY: see module comment.
        let patch = unsafe { slice::from_raw_parts(ptr, len) };
        HOST.with(|h| {
            let h = &mut *h.borrow_mut();
            let max = weir_abi::patch::max_output_len(&h.input, patch);
            let input = &h.input;
            let written = h.outputs.push_with(max, |buf| {
                let mut w = weir_abi::cbor::Writer::new(buf);
                weir_abi::patch::apply(input, patch, &mut w).map(|()| w.len())
            });
            match written {
                Ok(_) => 0,
                Err(_) => weir_abi::hostcall::E_MALFORMED,
            }
        })
    }

    pub unsafe fn fail(ptr: *const u8, len: usize) -> i32 {
        // SAFETY: see module comment.
        let bytes = unsafe { slice::from_raw_parts(ptr, len) };
        let text = std::string::String::from_utf8_lossy(bytes).into_owned();
        HOST.with(|h| h.borrow_mut().reason.get_or_insert(text).len());
        0
    }

    pub unsafe fn log(_level: i32, ptr: *const u8, len: usize) -> i32 {
        // SAFETY: see module comment.
        let bytes = unsafe { slice::from_raw_parts(ptr, len) };
        std::eprintln!("guest: {}", std::string::String::from_utf8_lossy(bytes));
        0
    }

    pub unsafe fn clock_now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    pub unsafe fn state_get(kptr: *const u8, klen: usize, vptr: *mut u8, vcap: usize) -> i32 {
        // SAFETY: see module comment.
        let key = unsafe { slice::from_raw_parts(kptr, klen) };
        HOST.with(|h| match h.borrow().state.get(key) {
            Some(v) => {
                if v.len() <= vcap {
                    // SAFETY: see module comment; vcap bytes are writable.
                    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), vptr, v.len()) };
                }
                v.len() as i32
            }
            None => E_NOT_FOUND,
        })
    }

    pub unsafe fn state_set(kptr: *const u8, klen: usize, vptr: *const u8, vlen: usize) -> i32 {
        // SAFETY: see module comment.
        let (k, v) = unsafe {
            (
                slice::from_raw_parts(kptr, klen),
                slice::from_raw_parts(vptr, vlen),
            )
        };
        HOST.with(|h| h.borrow_mut().state.insert(k.to_vec(), v.to_vec()));
        0
    }

    pub unsafe fn state_delete(kptr: *const u8, klen: usize) -> i32 {
        // SAFETY: see module comment.
        let k = unsafe { slice::from_raw_parts(kptr, klen) };
        HOST.with(|h| match h.borrow_mut().state.remove(k) {
            Some(_) => 0,
            None => E_NOT_FOUND,
        })
    }
}
