//! Scratch buffers for input (written by the host through `weir_alloc`) and
//! output (where records are encoded before `emit`).
//!
//! On wasm32 each buffer is a region obtained with `memory.grow` and reused
//! for every record; it is replaced by a larger one only when a record does
//! not fit, so steady-state processing allocates nothing. Natively, buffers
//! are thread-local vectors.

use crate::Error;

/// Largest buffer the SDK will ask for (the stage's memory cap applies too).
pub const MAX_BUFFER: usize = 16 << 20;

#[cfg(target_arch = "wasm32")]
mod imp {
    use core::cell::Cell;

    const PAGE: usize = 65536;

    pub struct Region {
        ptr: Cell<usize>,
        cap: Cell<usize>,
    }
    // SAFETY: wasm guests are single-threaded.
    unsafe impl Sync for Region {}

    pub static INPUT: Region = Region::new();
    pub static OUTPUT: Region = Region::new();

    impl Region {
        const fn new() -> Self {
            Region {
                ptr: Cell::new(0),
                cap: Cell::new(0),
            }
        }

        /// A region of at least `size` bytes, or None if memory cannot grow.
        pub fn ensure(&self, size: usize) -> Option<(usize, usize)> {
            if size <= self.cap.get() && self.ptr.get() != 0 {
                return Some((self.ptr.get(), self.cap.get()));
            }
            let pages = size.max(1).div_ceil(PAGE);
            let old = core::arch::wasm32::memory_grow(0, pages);
            if old == usize::MAX {
                return None;
            }
            self.ptr.set(old * PAGE);
            self.cap.set(pages * PAGE);
            Some((self.ptr.get(), self.cap.get()))
        }
    }
}

/// `weir_alloc`: a pointer to at least `size` bytes, valid until the next call.
#[cfg(target_arch = "wasm32")]
pub fn alloc(size: i32) -> i32 {
    if size < 0 || size as usize > MAX_BUFFER {
        return 0;
    }
    imp::INPUT
        .ensure(size as usize)
        .map_or(0, |(ptr, _)| ptr as i32)
}

/// Run `f` with an output buffer, growing it until `f` fits or the limit is hit.
pub fn with_output<R>(mut f: impl FnMut(&mut [u8]) -> Result<R, Error>) -> Result<R, Error> {
    let mut want = 512usize;
    loop {
        let result = with_buffer(want, &mut f)?;
        match result {
            Err(Error::Resource) if want < MAX_BUFFER => want *= 4,
            other => return other,
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn with_buffer<R>(
    want: usize,
    f: &mut impl FnMut(&mut [u8]) -> Result<R, Error>,
) -> Result<Result<R, Error>, Error> {
    let (ptr, cap) = imp::OUTPUT.ensure(want).ok_or(Error::Resource)?;
    // SAFETY: the region [ptr, ptr+cap) was obtained by memory.grow and is used
    // only by this buffer, never concurrently (single thread, no re-entrancy).
    let buf = unsafe { core::slice::from_raw_parts_mut(ptr as *mut u8, cap) };
    Ok(f(buf))
}

#[cfg(not(target_arch = "wasm32"))]
fn with_buffer<R>(
    want: usize,
    f: &mut impl FnMut(&mut [u8]) -> Result<R, Error>,
) -> Result<Result<R, Error>, Error> {
    use std::cell::RefCell;
    use std::vec::Vec;
    std::thread_local!(static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
    OUT.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < want {
            b.resize(want, 0);
        }
        Ok(f(&mut b[..]))
    })
}
