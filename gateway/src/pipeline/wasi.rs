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

use wasmi::{Caller, FuncType, Linker, Val, ValType};
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

/// The errno of a call whose results were written (`put`) or not.
fn written(ok: bool) -> i32 {
    if ok { errno::SUCCESS } else { errno::FAULT }
}

/// The errno of a call on fd `fd`: `std` for stdout and stderr, else EBADF.
fn on_std(fd: i32, std: i32) -> i32 {
    if (1..=2).contains(&fd) {
        std
    } else {
        errno::BADF
    }
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno`: fds 1 (stdout, at
/// info) and 2 (stderr, at warn) go to the stage's log, one line per
/// newline; a line without one is logged when the record ends. The last
/// stderr line is the reason of a failure status or exit.
fn fd_write(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let (fd, iovs, n, written) = (int(a, 0), int(a, 1), int(a, 2), int(a, 3));
    charge(caller, 0)?;
    if !(1..=2).contains(&fd) {
        return Ok(errno::BADF);
    }
    if n as u32 > MAX_IOVS {
        return Ok(errno::INVAL);
    }
    // The iovec array, then what it points at: paid before it is read.
    let spans: Vec<(i32, i32)> = {
        let (mem, _) = memory(caller);
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
    charge(caller, total + spans.len() * 8)?;
    let (mem, st) = memory(caller);
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
fn fd_fdstat_get(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let (fd, at) = (int(a, 0), int(a, 1));
    charge(caller, 0)?;
    if !(1..=2).contains(&fd) {
        return Ok(errno::BADF);
    }
    // fdstat: filetype u8 (2: character device), pad, flags u16 (1:
    // append), pad, rights_base u64 (fd_write: 1 << 6), rights_inheriting.
    let mut stat = [0u8; 24];
    stat[0] = 2;
    stat[2] = 1;
    stat[8..16].copy_from_slice(&(1u64 << 6).to_le_bytes());
    let (mem, _) = memory(caller);
    Ok(written(put(mem, at, &stat)))
}

/// `fd_seek`: stdout and stderr are not files.
fn fd_seek(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let fd = int(a, 0);
    charge(caller, 0)?;
    Ok(on_std(fd, errno::SPIPE))
}

/// `fd_close`: closing stdout or stderr changes nothing.
fn fd_close(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let fd = int(a, 0);
    charge(caller, 0)?;
    Ok(on_std(fd, errno::SUCCESS))
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
fn clock_time_get(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let (id, at) = (int(a, 0), int(a, 2));
    charge(caller, 0)?;
    let ns: u64 = match id {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        1 => origin().elapsed().as_nanos() as u64,
        _ => return Ok(errno::INVAL),
    };
    let (mem, _) = memory(caller);
    Ok(written(put(mem, at, &ns.to_le_bytes())))
}

/// `random_get(buf, len) -> errno`: the operating system's randomness.
fn random_get(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let (buf, len) = (int(a, 0), int(a, 1));
    charge(caller, size(len))?;
    let (mem, _) = memory(caller);
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
fn proc_exit(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let code = int(a, 0);
    charge(caller, 0)?;
    let st = caller.data_mut();
    flush(st);
    let reason = st.error_line.take();
    st.failure = Some(StageError::Exit { code, reason });
    Err(wasmi::Error::new(format!("proc_exit({code})")))
}

/// `args_sizes_get` and `environ_sizes_get`: none, and no bytes.
fn sizes_get(caller: &mut Caller<'_, HostState>, a: &[Val]) -> Errno {
    let (count, bytes) = (int(a, 0), int(a, 1));
    charge(caller, 0)?;
    let (mem, _) = memory(caller);
    let zero = 0u32.to_le_bytes();
    Ok(written(put(mem, count, &zero) && put(mem, bytes, &zero)))
}

/// `args_get` and `environ_get`: nothing to write.
fn get_none(caller: &mut Caller<'_, HostState>, _a: &[Val]) -> Errno {
    charge(caller, 0)?;
    Ok(errno::SUCCESS)
}

/// A WASI function: its arguments as values, its errno as the result.
type Call = fn(&mut Caller<'_, HostState>, &[Val]) -> Errno;

/// An `i32` argument (the signature was checked at load).
fn int(a: &[Val], i: usize) -> i32 {
    match a.get(i) {
        Some(Val::I32(v)) => *v,
        _ => 0,
    }
}

/// Define the subset in `l`: what needs no grant, and what `grants` allow.
/// One untyped trampoline serves them all (they are rarely called), which
/// keeps the binary small: a typed one per function cost about 60 KB on
/// aarch64.
pub(crate) fn define(l: &mut Linker<HostState>, grants: &[Grant]) {
    let table: [(&str, Call); 11] = [
        ("proc_exit", proc_exit),
        ("args_sizes_get", sizes_get),
        ("environ_sizes_get", sizes_get),
        ("args_get", get_none),
        ("environ_get", get_none),
        ("fd_write", fd_write),
        ("fd_fdstat_get", fd_fdstat_get),
        ("fd_seek", fd_seek),
        ("fd_close", fd_close),
        ("clock_time_get", clock_time_get),
        ("random_get", random_get),
    ];
    for (name, call) in table {
        // The grant each needs is the ABI's (weir_abi::wasi::ALL).
        let grant =
            weir_abi::wasi::grant_for(name).expect("every function here is in the ABI's table");
        if grant.is_some_and(|g| !grants.iter().any(|x| x.as_str() == g)) {
            continue;
        }
        let (params, results) = signature(name).expect("every WASI function has a signature");
        let ty = FuncType::new(params.iter().copied(), results.iter().copied());
        l.func_new(MODULE, name, ty, move |mut caller, args, out| {
            let errno = call(&mut caller, args)?;
            if let Some(slot) = out.first_mut() {
                *slot = Val::I32(errno);
            }
            Ok(())
        })
        .expect("each import is defined once");
    }
}
