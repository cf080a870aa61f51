//! `weir run --config FILE`: run every configured pipeline over JSON-lines
//! records from a file or stdin, writing results (and dead letters) to stdout
//! as JSON lines. Useful for trying a config and for replaying recorded data.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use clap::Args;

use super::{Failure, output};
use crate::config::Config;
use crate::pipeline::{FailureKind, Pipeline, PipelineOutput, Runtime};
use crate::record::{JsonInput, now_ms};

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
    /// Source name given to the records.
    #[arg(long, default_value = "stdin")]
    source: String,
    /// Topic for bare payloads; `{field}` takes the payload's field.
    #[arg(long, default_value = "sensors/{id}/telemetry")]
    topic: String,
}

pub(super) fn run(args: RunArgs) -> Result<(), Failure> {
    let mut cfg = Config::load(&args.config).map_err(Failure::refused)?;
    if let Some(dir) = args.modules_dir {
        cfg.gateway.modules_dir = Some(std::path::absolute(dir)?);
        cfg.validate().map_err(Failure::refused)?;
    }
    let mut pipelines = Pipeline::build_all(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    for p in &pipelines {
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
    let mut out = PipelineOutput::default();
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
        let cbor = rec.to_cbor();
        for p in &mut pipelines {
            out.clear();
            p.process(&cbor, &mut out);
            for r in out.records.iter() {
                writeln!(stdout, "{}", output::record_json(Some(p.name()), r))?;
            }
            for d in &out.dead {
                writeln!(stdout, "{}", output::dead_letter_json(p.name(), d))?;
            }
        }
    }
    stdout.flush()?;
    report(&pipelines, lines, invalid);
    Ok(())
}

/// Log every counter once at the end.
fn report(pipelines: &[Pipeline], lines: u64, invalid: u64) {
    tracing::info!(records = lines, invalid, "input done");
    for p in pipelines {
        let m = p.metrics();
        tracing::info!(
            pipeline = p.name(),
            records_in = m.records_in,
            records_out = m.records_out,
            dead_lettered = m.dead_lettered,
            policy_dropped = m.policy_dropped,
            policy_passed = m.policy_passed,
            "pipeline done"
        );
        for s in p.stages() {
            let sm = s.metrics();
            let failures: Vec<String> = FailureKind::ALL
                .iter()
                .filter(|k| sm.failed(**k) > 0)
                .map(|k| format!("{k}={}", sm.failed(*k)))
                .collect();
            tracing::info!(
                stage = s.label(),
                records_in = sm.records_in,
                records_out = sm.records_out,
                dropped = sm.records_dropped,
                failed = sm.failed_total(),
                failures = failures.join(","),
                fuel_per_record = sm.fuel_used.checked_div(sm.records_in).unwrap_or(0),
                quarantined = s.is_quarantined(),
                "stage done"
            );
        }
    }
}
