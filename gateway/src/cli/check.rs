//! `weir check --config FILE [--user NAME]`: everything that would break
//! the daemon, found without contacting any broker: the config (keys,
//! values, topic templates, presets), every module (compile, imports
//! against grants, memory cap, instantiate, `weir_init`), every TLS file
//! (readable, and holding what its key says) and the store's directory.
//! Meant for `ExecStartPre=` and for CI of config repositories.
//!
//! `--user NAME` checks as that user, which is what the systemd unit runs
//! as: as root, weir runs the check again as that user (its groups
//! included), so file permissions are seen exactly as the service sees them.

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::pipeline::Runtime;

/// Arguments of `weir check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The gateway config.
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// Check file access as this user (the service's user, `weir`).
    #[arg(long)]
    user: Option<String>,
}

/// Set in the re-run as another user, for the closing line.
const AS_USER_ENV: &str = "WEIR_CHECK_AS_USER";

pub(super) fn run(args: CheckArgs) -> Result<(), Failure> {
    if let Some(user) = &args.user {
        let (uid, gid) = lookup_user(user)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if uid != me {
            if me != 0 {
                return Err(anyhow::anyhow!(
                    "checking as user `{user}` needs root (or run `weir check` as `{user}`)"
                )
                .into());
            }
            return rerun_as(user, uid, gid, &args.config);
        }
    }
    let cfg = Config::load(&args.config).map_err(Failure::refused)?;
    let pipelines =
        crate::routing::build_pipelines(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    let problems = cfg.check_files();
    let who = std::env::var(AS_USER_ENV)
        .ok()
        .or(args.user)
        .map_or(String::new(), |u| format!(" as user `{u}`"));
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Err(Failure::refused(anyhow::anyhow!(
            "{}: {} problem(s) found{who}",
            args.config.display(),
            problems.len()
        )));
    }
    let stages: usize = pipelines.iter().map(|p| p.stages().len()).sum();
    println!(
        "{}: ok{who} ({} pipelines, {} stages, {} sources, {} sinks)",
        args.config.display(),
        pipelines.len(),
        stages,
        cfg.sources.len(),
        cfg.sinks().len()
    );
    Ok(())
}

/// `(uid, primary gid)` of `user`.
fn lookup_user(user: &str) -> Result<(libc::uid_t, libc::gid_t), Failure> {
    let name = std::ffi::CString::new(user)
        .map_err(|_| anyhow::anyhow!("user name `{user}` holds a NUL byte"))?;
    // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer to
    // static storage (or NULL), read at once before any other libc call.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(Failure::refused(anyhow::anyhow!(
            "no user `{user}` on this system (the packages create `weir`)"
        )));
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Run `weir check --config FILE` again as `user`, with its groups.
fn rerun_as(
    user: &str,
    uid: libc::uid_t,
    gid: libc::gid_t,
    config: &std::path::Path,
) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let config = std::path::absolute(config)?;
    let name = std::ffi::CString::new(user).expect("checked by lookup_user");
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("check")
        .arg("--config")
        .arg(&config)
        .env(AS_USER_ENV, user);
    // SAFETY: the closure runs in the child between fork and exec. `weir
    // check` has started no other thread, so initgroups (which reads the
    // group database) cannot meet a lock held by a thread lost in the fork;
    // setgid and setuid come after it, dropping root last.
    unsafe {
        cmd.pre_exec(move || {
            if libc::initgroups(name.as_ptr(), gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "cannot run {} as user `{user}`: {e} (that user must be able to run weir itself)",
            cmd.get_program().to_string_lossy()
        )
    })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(Failure::quiet(2)),
        _ => Err(Failure::quiet(1)),
    }
}
