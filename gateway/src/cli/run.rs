//! `weir run --config FILE`: run every configured pipeline over JSON-lines
//! records from a file or stdin, writing results (and dead letters) to stdout
//! as JSON lines. Useful for trying a config and for replaying recorded data.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::{Failure, output};
use crate::config::Config;
use crate::pipeline::Runtime;
use crate::record::{JsonInput, now_ms};
use crate::routing::Router;

/// Arguments of `weir run`.
#[derive(Args)]
pub struct RunArgs {
    /// The gateway config.
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// JSON-lines records (`-` or absent: stdin).
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Override `gateway.modules_dir`.
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// Source name given to the records (pipelines that name their sources
    /// take only records from those).
    #[arg(long, default_value = "stdin")]
    source: String,
    /// Topic for bare payloads; `{field}` takes the payload's field.
    #[arg(long, default_value = "sensors/{id}/telemetry")]
    topic: String,
    /// How output records are written: JSON lines, or each record's CBOR
    /// bytes in hex (to compare outputs byte for byte; dead letters stay
    /// JSON).
    #[arg(long, value_enum, default_value = "json")]
    output: OutputFormat,
}

/// `weir run --output`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    /// One JSON object per record.
    Json,
    /// One line of hex per record: its ABI v1 CBOR.
    CborHex,
}

pub(super) fn run(args: RunArgs) -> Result<(), Failure> {
    let mut cfg = Config::load(&args.config).map_err(Failure::refused)?;
    if let Some(dir) = args.modules_dir {
        cfg.gateway.modules_dir = Some(std::path::absolute(dir)?);
        cfg.validate().map_err(Failure::refused)?;
    }
    let mut router = Router::from_config(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    for p in router.pipelines() {
        tracing::info!(
            pipeline = p.name(),
            stages = p.stages().len(),
            "pipeline ready"
        );
    }
    let parser = JsonInput {
        source: args.source,
        topic_template: args.topic,
    };
    let reader: Box<dyn BufRead> = match args.input.as_deref() {
        None => Box::new(std::io::stdin().lock()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin().lock()),
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", p.display()))?,
        )),
    };
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    let (mut lines, mut invalid) = (0u64, 0u64);
    for (lineno, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let rec = match parser.parse(&line, now_ms()) {
            Ok(r) => r,
            Err(e) => {
                invalid += 1;
                tracing::warn!(line = lineno + 1, error = %e, "invalid input record skipped");
                continue;
            }
        };
        let write = match args.output {
            OutputFormat::Json => output::write_output,
            OutputFormat::CborHex => output::write_output_hex,
        };
        output::dispatch_with(&mut router, &rec, &mut stdout, write)?;
    }
    stdout.flush()?;
    tracing::info!(records = lines, invalid, "input done");
    output::report(&router);
    Ok(())
}
