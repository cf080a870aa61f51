//! The `weir` command line. One file per subcommand; this file parses
//! arguments, sets up logging and maps errors to exit codes:
//! 0 success, 1 runtime or usage error, 2 refused module or invalid config.

mod bundle;
mod check;
mod module;
pub(crate) mod output;
mod push;
mod run;
mod scaffold;
mod sensor;
mod serve;
mod sim;
mod status;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir: IoT gateway telemetry processor with sandboxed Wasm transforms.
#[derive(Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text`, or as one JSON object per line (`json`, for
    /// journald and log shippers). Also `WEIR_LOG_FORMAT`.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WEIR_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target and the fields.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect or try out a transform module.
    #[command(subcommand)]
    Module(module::ModuleCommand),
    /// Run the configured pipelines over JSON-lines records (a file or stdin),
    /// writing results to stdout.
    Run(run::RunArgs),
    /// Validate a config and load every module it names.
    Check(check::CheckArgs),
    /// Run the gateway: sources, pipelines, the durable buffer, sinks.
    Serve(serve::ServeArgs),
    /// Inspect, verify or compact the durable buffer (`inspect` also asks
    /// a running daemon; the others need it stopped).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// A running gateway at a glance: sources, pipelines, modules, buffers, sinks.
    Status(status::StatusArgs),
    /// The `status` view, refreshed every second with rates.
    Top(status::TopArgs),
    /// Ask the running daemon to reload its config and modules (what
    /// `systemctl reload weir` runs); exit 2 with the reason if refused.
    Reload(status::ReloadArgs),
    /// Write a new Ed25519 key pair for signing module bundles.
    Keygen(bundle::KeygenArgs),
    /// The fleet, from the gateways' retained status messages.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Talk to sensor nodes on a serial source (`send`: a downlink command).
    #[command(subcommand)]
    Sensor(sensor::SensorCommand),
    /// Simulated sensor nodes (the firmware SDK's code) on a
    /// pseudo-terminal or a serial device: W1 readings, replies to
    /// commands, noise on demand.
    Sim(sim::SimArgs),
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Each gateway's state, groups, pushed modules and last result.
    Status(push::FleetArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    /// `None`: already reported (by a child process, or line by line).
    error: Option<anyhow::Error>,
}

impl Failure {
    /// A refused module or an invalid config (exit 2).
    pub fn refused(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: Some(error.into()),
        }
    }

    /// Exit with `code`; what went wrong has been printed already.
    pub fn quiet(code: u8) -> Self {
        Failure { code, error: None }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: Some(error.into()),
        }
    }
}

/// The lines of an error: what went wrong, then each cause on its own
/// line. A cause whose text an earlier line already holds is left out
/// (errors that print their source in their own message would otherwise
/// say everything twice).
pub fn error_lines(e: &anyhow::Error) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !lines.iter().any(|l| l.contains(&text)) {
            lines.push(text);
        }
    }
    lines
}

/// Whether the error is a closed stdout (`weir run ... | head -1`): not
/// an error for a command whose reader has seen enough.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Entry point of the `weir` binary.
pub fn main() -> ExitCode {
    limit_malloc_arenas();
    no_transparent_huge_pages();
    let cli = Cli::parse_from(help_help(std::env::args_os().collect()));
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Module(cmd) => module::run(cmd),
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Store(cmd) => store::run(cmd),
        Command::Status(args) => status::status(args),
        Command::Top(args) => status::top(args),
        Command::Reload(args) => status::reload(args),
        Command::Keygen(args) => bundle::keygen(args),
        Command::Fleet(FleetCommand::Status(args)) => push::fleet(args),
        Command::Sensor(cmd) => sensor::run(cmd),
        Command::Sim(args) => sim::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { error: Some(e), .. }) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(e) = &f.error {
                let lines = error_lines(e);
                eprintln!("error: {}", lines[0]);
                for l in &lines[1..] {
                    eprintln!("  because: {l}");
                }
            }
            ExitCode::from(f.code)
        }
    }
}

/// `weir help --help` (and `-h`) is `weir --help`: clap's help subcommand
/// takes only subcommand names.
fn help_help(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.len() == 3 && args[1] == "help" && (args[2] == "--help" || args[2] == "-h") {
        args.truncate(1);
        args.push("--help".into());
    }
    args
}

/// glibc gives every thread that allocates its own malloc arena (64 MB
/// reserved, grown in place); with sled's I/O threads that took peak RSS
/// from 23 MB to 35-60 MB in the store-and-forward benchmark. One arena
/// measured no loss of throughput there.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; called before any
    // thread is spawned.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, WEIR_MALLOC_ARENAS);
    }
}

/// Kernels with transparent huge pages set to `always` (Debian's arm64
/// kernel among them) back a large anonymous mapping with 2 MB pages as soon
/// as any byte of each 2 MB is written. sled reserves about 28 MB of segment
/// buffers and writes into them as the log grows; in the board image, with
/// those buffers written, 22.5 MB of weir's RSS was AnonHugePages. A
/// gateway daemon gains nothing from huge pages, so weir opts out for itself.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process; it takes
    // no pointers. A kernel without it (before 3.15) returns EINVAL, which is
    // harmless.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The number of glibc malloc arenas weir uses (see [`limit_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const WEIR_MALLOC_ARENAS: libc::c_int = 1;

/// Logs go to stderr; `WEIR_LOG` (or `RUST_LOG`) sets the filter, default
/// `info`: a level, or `target=level` directives separated by commas
/// (`info,weir::sinks=debug`). A filter that does not parse is reported
/// once, and `info` is used.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    let spec = std::env::var("WEIR_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let (filter, bad) = match spec.as_deref().map(str::parse::<Targets>) {
        None => (Targets::new().with_default(tracing::Level::INFO), None),
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => (Targets::new().with_default(tracing::Level::INFO), Some(e)),
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = if format == LogFormat::Json {
        let json = fmt.json().flatten_event(true).with_current_span(false);
        tracing_subscriber::registry()
            .with(json)
            .with(filter)
            .try_init()
    } else {
        let text = fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        tracing_subscriber::registry()
            .with(text)
            .with(filter)
            .try_init()
    };
    if let Some(e) = bad {
        tracing::warn!(
            filter = spec.as_deref().unwrap_or_default(),
            error = %e,
            "WEIR_LOG does not parse; logging at info (fix: a level, or target=level,...)"
        );
    }
}
