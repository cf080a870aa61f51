//! # weir-guest: the Rust SDK for Weir transform modules
//!
//! A transform is a plain function over a typed [`Record`]; the
//! [`export_transform!`] macro generates the ABI v1 exports around it
//! (`weir_abi_v1`, `weir_alloc`, `weir_transform`, `weir_init`). The ABI itself
//! is defined in `firmware-sdk/ABI.md`; this crate is one way to speak it.
//!
//! ```
//! // In a module crate this file starts with #![no_std].
//! use weir_guest::{Action, Error, Record, Value};
//!
//! pub fn transform(rec: &mut Record<'_>) -> Result<Action, Error> {
//!     let t = rec.payload.f64("temp_c").ok_or(Error::Transform)?;
//!     rec.payload.set("temp_f", Value::Float(t * 9.0 / 5.0 + 32.0))?;
//!     Ok(Action::Emit)
//! }
//! weir_guest::export_transform!(transform);
//! ```
//!
//! # Layout
//! - [`value`]: [`Value`] and [`Fields`], a lazy, allocation-free view of a CBOR map.
//! - [`record`]: [`Record`], read lazily and re-encoded by copying what did not change.
//! - [`patch`]: the fast form, [`Input`] and [`Patch`]: fields read and the
//!   record re-emitted by the host, so the module never scans CBOR itself.
//! - [`host`]: safe wrappers over every host import (emit, fail, log, clock, state).
//! - `scratch`: input/output buffers in linear memory, grown on demand.
//! - [`native`]: a host shim that runs the same code natively (tests, baselines).
//!
//! Built for `wasm32-unknown-unknown` it needs no allocator and no std.
#![no_std]
#![warn(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod patch;
pub mod record;
mod scratch;
pub mod value;

#[doc(hidden)]
pub use heapless as __heapless;
pub use patch::{Input, Patch};
pub use record::Record;
pub use value::{Fields, Value};
pub use weir_abi as abi;

/// What to do with the input record after the transform returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Emit the (possibly modified) record.
    Emit,
    /// Emit nothing more (records emitted with [`host::emit`] still count).
    Drop,
}

/// Why a transform failed. Each maps to an ABI status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input could not be decoded.
    Input,
    /// The transform rejected the record (missing field, bad value, ...).
    Transform,
    /// A guest-side capacity was exceeded (fields, buffer).
    Resource,
    /// The stage config was rejected.
    Config,
    /// A host call failed with this (negative) code.
    Host(i32),
}

impl From<weir_abi::cbor::Error> for Error {
    fn from(e: weir_abi::cbor::Error) -> Self {
        match e {
            weir_abi::cbor::Error::Input => Error::Input,
            weir_abi::cbor::Error::Resource => Error::Resource,
        }
    }
}

impl Error {
    /// The ABI status code for this error.
    pub fn status(self) -> i32 {
        use weir_abi::status::*;
        match self {
            Error::Input => ERR_INPUT,
            Error::Transform | Error::Host(_) => ERR_TRANSFORM,
            Error::Resource => ERR_RESOURCE,
            Error::Config => ERR_CONFIG,
        }
    }
}

/// The signature of a transform function.
pub type TransformFn = fn(&mut Record<'_>) -> Result<Action, Error>;
/// The signature of a patch transform (see [`patch`]).
pub type PatchFn = fn(&Input<'_>, &mut Patch) -> Result<Action, Error>;
/// The signature of an init function (receives the stage's `config` table).
pub type InitFn = fn(&Fields<'_>) -> Result<(), Error>;

/// Decode `input`, run `f`, and emit the result: the body of `weir_transform`.
/// Also what the native baseline calls, so both run the same code path.
pub fn dispatch(input: &[u8], f: TransformFn) -> i32 {
    let mut rec = match Record::decode(input) {
        Ok(r) => r,
        Err(e) => return e.status(),
    };
    match f(&mut rec) {
        Ok(Action::Emit) if rec.is_unchanged() => match host::emit_raw(input) {
            Ok(()) => weir_abi::status::OK,
            Err(e) => e.status(),
        },
        Ok(Action::Emit) => match host::emit(&rec) {
            Ok(()) => weir_abi::status::OK,
            Err(e) => e.status(),
        },
        Ok(Action::Drop) => weir_abi::status::OK,
        Err(e) => e.status(),
    }
}

/// Decode a config map and run `f`: the body of `weir_init`.
pub fn dispatch_init(input: &[u8], f: InitFn) -> i32 {
    match Fields::from_bytes(input) {
        Ok(cfg) => match f(&cfg) {
            Ok(()) => weir_abi::status::OK,
            Err(e) => e.status(),
        },
        Err(e) => e.status(),
    }
}

/// An init function that accepts any config.
pub fn no_init(_: &Fields<'_>) -> Result<(), Error> {
    Ok(())
}

/// A cell for module-level state in a single-threaded guest (for example a
/// threshold read by `init`). Wasm guests have one thread; natively, use one
/// module per thread.
pub struct Global<T: Copy>(core::cell::Cell<T>);

// SAFETY: Wasm guests are single-threaded; the native shim documents that a
// module's globals must only be used from one thread at a time.
unsafe impl<T: Copy> Sync for Global<T> {}

impl<T: Copy> Global<T> {
    /// A cell holding `v`.
    pub const fn new(v: T) -> Self {
        Global(core::cell::Cell::new(v))
    }
    /// The current value.
    pub fn get(&self) -> T {
        self.0.get()
    }
    /// Replace the value.
    pub fn set(&self, v: T) {
        self.0.set(v)
    }
}

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::scratch::alloc;

    /// # Safety
    /// `ptr..ptr+len` must be a region the host wrote via `weir_alloc`.
    pub unsafe fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
        // SAFETY: guaranteed by the caller (the ABI contract).
        unsafe { core::slice::from_raw_parts(ptr as usize as *const u8, len as usize) }
    }
}

/// Generate the ABI v1 exports for a [`TransformFn`] over a [`Record`]
/// (and optionally an [`InitFn`]). Exports are generated only on wasm32, so
/// the same crate can be linked natively (several at once) for tests and
/// baselines.
#[macro_export]
macro_rules! export_transform {
    ($transform:path) => {
        $crate::__export!($crate::dispatch, $transform, $crate::no_init);
    };
    ($transform:path, init = $init:path) => {
        $crate::__export!($crate::dispatch, $transform, $init);
    };
}

/// Generate the ABI v1 exports for a [`PatchFn`] (see [`patch`]), optionally
/// with an [`InitFn`].
#[macro_export]
macro_rules! export_patch_transform {
    ($transform:path) => {
        $crate::__export!($crate::patch::dispatch_patch, $transform, $crate::no_init);
    };
    ($transform:path, init = $init:path) => {
        $crate::__export!($crate::patch::dispatch_patch, $transform, $init);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($dispatch:path, $transform:path, $init:path) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_abi_v1() {}

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_alloc(size: i32) -> i32 {
                $crate::__private::alloc(size)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_transform(ptr: i32, len: i32) -> i32 {
                // SAFETY: the host wrote `len` bytes at `ptr`, obtained from weir_alloc.
                let input = unsafe { $crate::__private::input(ptr, len) };
                $dispatch(input, $transform)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn weir_init(ptr: i32, len: i32) -> i32 {
                // SAFETY: as above.
                let input = unsafe { $crate::__private::input(ptr, len) };
                $crate::dispatch_init(input, $init)
            }
        };
    };
}

#[cfg(all(target_arch = "wasm32", feature = "panic-handler", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    core::arch::wasm32::unreachable()
}
