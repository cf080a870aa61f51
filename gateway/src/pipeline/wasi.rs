//! The WASI preview 1 subset: what modules from stock toolchains import for
//! printing, clocks, randomness and exit, behind the same grants as the
//! Weir imports. No files, no sockets: every other WASI function is
//! refused at load, naming it ([`weir_abi::wasi`] lists the subset).
//!
//! These functions follow WASI's conventions: a bad argument returns an
//! `errno` (the module sees it), and does not fail the record. Each call
//! is paid in fuel before any work, as every host call is.

use std::sync::OnceLock;
use std::time::Instant;

use wasmi::{Caller, Linker, ValType};
use weir_abi::level;
use weir_abi::wasi::{MODULE, errno};

use super::Grant;
use super::error::StageError;
use super::host::{HostState, charge, memory, range, size};

/// Most `iovec`s one `fd_write` may pass.
pub const MAX_IOVS: u32 = 1024;

type Errno = Result<i32, wasmi::Error>;

/// The parameters and results of each function of the subset.
pub(crate) fn signature(name: &str) -> Option<(&'static [ValType], &'static [ValType])> {
    use ValType::{I32, I64};
    Some(match name {
        "fd_write" => (&[I32, I32, I32, I32], &[I32]),
        "fd_fdstat_get" => (&[I32, I32], &[I32]),
        "fd_seek" => (&[I32, I64, I32, I32], &[I32]),
        "fd_close" => (&[I32], &[I32]),
        "clock_time_get" => (&[I32, I64, I32], &[I32]),
        "random_get" => (&[I32, I32], &[I32]),
        "proc_exit" => (&[I32], &[]),
        "args_sizes_get" | "args_get" | "environ_sizes_get" | "environ_get" => {
            (&[I32, I32], &[I32])
        }
        _ => return None,
    })
}

/// Write `value` as little-endian bytes at `ptr`; `false` if outside memory.
fn put(mem: &mut [u8], ptr: i32, value: &[u8]) -> bool {
    match range(mem, ptr, value.len() as i32) {
        Some(r) => {
            mem[r].copy_from_slice(value);
            true
        }
        None => false,
    }
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno`: fds 1 (stdout, at
/// info) and 2 (stderr, at warn) go to the stage's log, one line per
/// newline; a line without one is logged when the record ends. The last
/// stderr line is the reason of a failure status or exit.
fn fd_write(mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, n: i32, written: i32) -> Errno {
    charge(&mut caller, 0)?;
    if !(1..=2).contains(&fd) {
        return Ok(errno::BADF);
    }
    if n as u32 > MAX_IOVS {
        return Ok(errno::INVAL);
    }
    // The iovec array, then what it points at: paid before it is read.
    let spans: Vec<(i32, i32)> = {
        let (mem, _) = memory(&mut caller);
        let Some(r) = range(mem, iovs, n.saturating_mul(8)) else {
            return Ok(errno::FAULT);
        };
        mem[r]
            .chunks_exact(8)
            .map(|c| {
                let word = |i: usize| i32::from_le_bytes(c[i..i + 4].try_into().expect("4 bytes"));
                (word(0), word(4))
            })
            .collect()
    };
    let total: usize = spans.iter().map(|&(_, len)| size(len)).sum();
    charge(&mut caller, total + spans.len() * 8)?;
    let (mem, st) = memory(&mut caller);
    let mut done: u32 = 0;
    for (ptr, len) in spans {
        let Some(r) = range(mem, ptr, len) else {
            return Ok(errno::FAULT);
        };
        done = done.saturating_add(r.len() as u32);
        for &b in &mem[r] {
            let line = &mut st.wasi_lines[fd as usize - 1];
            if b == b'\n' {
                let text = std::mem::take(line);
                log_wasi(st, fd as usize - 1, &text);
            } else if line.len() < super::host::LOG_LINE_MAX {
                line.push(b);
            }
        }
    }
    if !put(mem, written, &done.to_le_bytes()) {
        return Ok(errno::FAULT);
    }
    Ok(errno::SUCCESS)
}

/// `fd_fdstat_get(fd, stat) -> errno`: stdout and stderr are character
/// devices that may be written to (libc's stdio asks before it buffers).
fn fd_fdstat_get(mut caller: Caller<'_, HostState>, fd: i32, at: i32) -> Errno {
    charge(&mut caller, 0)?;
    if !(1..=2).contains(&fd) {
        return Ok(errno::BADF);
    }
    // fdstat: filetype u8 (2: character device), pad, flags u16 (1:
    // append), pad, rights_base u64 (fd_write: 1 << 6), rights_inheriting.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    stat[2] = 1;
    stat[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
    let (mem, _) = memory(&mut caller);
    Ok(if put(mem, at, &stat) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

/// `fd_seek`: stdout and stderr are not files.
fn fd_seek(mut caller: Caller<'_, HostState>, fd: i32, _off: i64, _whence: i32, _at: i32) -> Errno {
    charge(&mut caller, 0)?;
    Ok(if (1..=2).contains(&fd) {
        errno::SPIPE
    } else {
        errno::BADF
    })
}

/// `fd_close`: closing stdout or stderr changes nothing.
fn fd_close(mut caller: Caller<'_, HostState>, fd: i32) -> Errno {
    charge(&mut caller, 0)?;
    Ok(if (1..=2).contains(&fd) {
        errno::SUCCESS
    } else {
        errno::BADF
    })
}

/// Log a line of stdout (`i` 0) or stderr (1).
fn log_wasi(st: &mut HostState, i: usize, text: &[u8]) {
    if i == 0 {
        st.log_line(level::INFO, text);
    } else {
        st.log_line(level::WARN, text);
        st.error_line = Some(String::from_utf8_lossy(text).into_owned());
    }
}

/// Log what stdout and stderr hold without a newline (at a record's end).
pub(crate) fn flush(st: &mut HostState) {
    for i in 0..2 {
        if !st.wasi_lines[i].is_empty() {
            let text = std::mem::take(&mut st.wasi_lines[i]);
            log_wasi(st, i, &text);
        }
    }
}

/// The monotonic clock's origin: the first time any module reads it.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `clock_time_get(id, precision, time) -> errno`: 0 realtime, 1
/// monotonic, in nanoseconds; the CPU-time clocks are not offered.
fn clock_time_get(mut caller: Caller<'_, HostState>, id: i32, _precision: i64, at: i32) -> Errno {
    charge(&mut caller, 0)?;
    let ns: u64 = match id {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        1 => origin().elapsed().as_nanos() as u64,
        _ => return Ok(errno::INVAL),
    };
    let (mem, _) = memory(&mut caller);
    Ok(if put(mem, at, &ns.to_le_bytes()) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

/// `random_get(buf, len) -> errno`: the operating system's randomness.
fn random_get(mut caller: Caller<'_, HostState>, buf: i32, len: i32) -> Errno {
    charge(&mut caller, size(len))?;
    let (mem, _) = memory(&mut caller);
    let Some(r) = range(mem, buf, len) else {
        return Ok(errno::FAULT);
    };
    use ring::rand::SecureRandom;
    Ok(match ring::rand::SystemRandom::new().fill(&mut mem[r]) {
        Ok(()) => errno::SUCCESS,
        Err(_) => errno::INVAL,
    })
}

/// `proc_exit(code)`: ends the record as failed, with the code.
fn proc_exit(mut caller: Caller<'_, HostState>, code: i32) -> Result<(), wasmi::Error> {
    charge(&mut caller, 0)?;
    let st = caller.data_mut();
    flush(st);
    let reason = st.error_line.take();
    st.failure = Some(StageError::Exit { code, reason });
    Err(wasmi::Error::new(format!("proc_exit({code})")))
}

/// `args_sizes_get` and `environ_sizes_get`: none, and no bytes.
fn sizes_get(mut caller: Caller<'_, HostState>, count: i32, bytes: i32) -> Errno {
    charge(&mut caller, 0)?;
    let (mem, _) = memory(&mut caller);
    let zero = 0u32.to_le_bytes();
    Ok(if put(mem, count, &zero) && put(mem, bytes, &zero) {
        errno::SUCCESS
    } else {
        errno::FAULT
    })
}

/// `args_get` and `environ_get`: nothing to write.
fn get_none(mut caller: Caller<'_, HostState>, _list: i32, _buf: i32) -> Errno {
    charge(&mut caller, 0)?;
    Ok(errno::SUCCESS)
}

/// Define the subset in `l`: what needs no grant, and what `grants` allow.
pub(crate) fn define(l: &mut Linker<HostState>, grants: &[Grant]) {
    let defined = "each import is defined once";
    l.func_wrap(MODULE, "proc_exit", proc_exit).expect(defined);
    l.func_wrap(MODULE, "args_sizes_get", sizes_get)
        .expect(defined);
    l.func_wrap(MODULE, "environ_sizes_get", sizes_get)
        .expect(defined);
    l.func_wrap(MODULE, "args_get", get_none).expect(defined);
    l.func_wrap(MODULE, "environ_get", get_none).expect(defined);
    for g in grants {
        match g {
            Grant::Log => {
                l.func_wrap(MODULE, "fd_write", fd_write).expect(defined);
                l.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)
                    .expect(defined);
                l.func_wrap(MODULE, "fd_seek", fd_seek).expect(defined);
                l.func_wrap(MODULE, "fd_close", fd_close).expect(defined);
            }
            Grant::Clock => {
                l.func_wrap(MODULE, "clock_time_get", clock_time_get)
                    .expect(defined);
            }
            Grant::Random => {
                l.func_wrap(MODULE, "random_get", random_get)
                    .expect(defined);
            }
            Grant::State => {}
        }
    }
}
