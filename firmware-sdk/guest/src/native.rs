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
    outputs: Vec<Vec<u8>>,
    state: HashMap<Vec<u8>, Vec<u8>>,
}

std::thread_local!(static HOST: RefCell<Host> = RefCell::new(Host::default()));

/// Run one transform call on `input`; returns the status and the emitted records.
pub fn call(input: &[u8], f: crate::TransformFn) -> (i32, Vec<Vec<u8>>) {
    let status = crate::dispatch(input, f);
    (status, HOST.with(|h| std::mem::take(&mut h.borrow_mut().outputs)))
}

/// Like [`call`], but appends emitted records to `out` (reusing its buffers).
pub fn call_into(input: &[u8], f: crate::TransformFn, out: &mut Vec<Vec<u8>>) -> i32 {
    let status = crate::dispatch(input, f);
    HOST.with(|h| out.append(&mut h.borrow_mut().outputs));
    status
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
        HOST.with(|h| h.borrow_mut().outputs.push(bytes.to_vec()));
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
        let (k, v) = unsafe { (slice::from_raw_parts(kptr, klen), slice::from_raw_parts(vptr, vlen)) };
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
