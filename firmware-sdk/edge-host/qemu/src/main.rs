//! W1 on a Cortex-M4: the gateway's three modules, unchanged, on weir-edge.
//!
//! Reads `edge-input.bin` over semihosting (records as `u32 LE length`
//! then ABI v1 CBOR), runs each through range-filter, enrich and
//! moving-average, and prints every output record as a line of hex. Then
//! runs the input again `PASSES` times, unprinted, for the speed figure,
//! and prints `edge: records=N outputs=M failed=F heap_peak=B
//! centiseconds=C` before it exits.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio, syscall};
use embedded_alloc::LlffHeap as Heap;
use weir_edge::{Grant, Limits, Pipeline, Stage};

#[global_allocator]
static HEAP: Heap = Heap::empty();
/// The heap: wasmi's code and three instances (two pages of memory each).
const HEAP_SIZE: usize = 2 * 1024 * 1024;
const PASSES: u32 = 5;

const RANGE_FILTER: &[u8] = include_bytes!(concat!(
    env!("WEIR_MODULES_DIR"),
    "/weir_w1_range_filter.wasm"
));
const ENRICH: &[u8] = include_bytes!(concat!(env!("WEIR_MODULES_DIR"), "/weir_w1_enrich.wasm"));
const MOVING_AVERAGE: &[u8] = include_bytes!(concat!(
    env!("WEIR_MODULES_DIR"),
    "/weir_w1_moving_average.wasm"
));

/// W1's stage configs, as pipelines/w1.toml gives them:
/// `{min = -40.0, max = 85.0}`, none, `{window = 10}`.
const RANGE_CONFIG: &[u8] = &[
    0xa2, 0x63, b'm', b'i', b'n', 0xfb, 0xc0, 0x44, 0, 0, 0, 0, 0, 0, 0x63, b'm', b'a', b'x', 0xfb,
    0x40, 0x55, 0x40, 0, 0, 0, 0, 0,
];
const WINDOW_CONFIG: &[u8] = &[0xa1, 0x66, b'w', b'i', b'n', b'd', b'o', b'w', 0x0a];

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Ok(mut out) = hio::hstdout() {
        let _ = writeln!(out, "edge: panic: {info}");
    }
    debug::exit(debug::EXIT_FAILURE);
    halt()
}

/// Stop: semihosting's exit ends QEMU; on a board, sleep.
fn halt() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

/// A whole host file over semihosting.
fn read_file(path: &str) -> Option<Vec<u8>> {
    // SAFETY: semihosting calls with a NUL-terminated path and a buffer
    // of the length asked for.
    unsafe {
        let fd = syscall!(OPEN, path.as_ptr(), 1 /* "rb" */, path.len() - 1) as isize;
        if fd < 0 {
            return None;
        }
        let len = syscall!(FLEN, fd) as usize;
        let mut buf = vec![0u8; len];
        let missing = syscall!(READ, fd, buf.as_mut_ptr(), len);
        syscall!(CLOSE, fd);
        (missing == 0).then_some(buf)
    }
}

fn centiseconds() -> usize {
    // SAFETY: SYS_CLOCK takes no argument.
    unsafe { syscall!(CLOCK) }
}

#[entry]
fn main() -> ! {
    {
        use core::mem::MaybeUninit;
        static mut MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: called once, before any allocation.
        unsafe { HEAP.init(core::ptr::addr_of_mut!(MEM) as usize, HEAP_SIZE) }
    }
    let mut out = hio::hstdout().unwrap_or_else(|_| halt());
    let Some(input) = read_file("edge-input.bin\0") else {
        let _ = writeln!(out, "edge: cannot read edge-input.bin");
        debug::exit(debug::EXIT_FAILURE);
        halt()
    };
    let mut records = Vec::new();
    let mut at = 0;
    while at + 4 <= input.len() {
        let n =
            u32::from_le_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]]) as usize;
        records.push(&input[at + 4..at + 4 + n]);
        at += 4 + n;
    }
    let engine = weir_edge::engine();
    let limits = Limits {
        fuel: 200_000,
        memory_bytes: 1024 * 1024,
        max_outputs: 4,
        max_output_bytes: 16 * 1024,
        ..Limits::default()
    };
    let stage = |wasm: &[u8], config: &[u8], grants: &[Grant]| match Stage::new(
        &engine, wasm, config, grants, limits, None,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(hio::hstdout().unwrap(), "edge: {e}");
            debug::exit(debug::EXIT_FAILURE);
            halt()
        }
    };
    let mut w1 = Pipeline::new(vec![
        stage(RANGE_FILTER, RANGE_CONFIG, &[]),
        stage(ENRICH, &[0xa0], &[]),
        stage(MOVING_AVERAGE, WINDOW_CONFIG, &[Grant::State]),
    ]);
    let mut outputs = 0;
    let mut peak = HEAP.used();
    let mut hex = alloc::string::String::new();
    for rec in &records {
        for o in w1.process(rec).iter() {
            outputs += 1;
            hex.clear();
            for b in o {
                let _ = write!(hex, "{b:02x}");
            }
            let _ = writeln!(out, "{hex}");
        }
        peak = peak.max(HEAP.used());
    }
    let failed = w1.failed;
    let start = centiseconds();
    for _ in 0..PASSES {
        for rec in &records {
            w1.process(rec);
        }
    }
    let took = centiseconds() - start;
    let _ = writeln!(
        out,
        "edge: records={} outputs={outputs} failed={failed} heap_peak={peak} passes={PASSES} centiseconds={took}",
        records.len()
    );
    debug::exit(debug::EXIT_SUCCESS);
    halt()
}
