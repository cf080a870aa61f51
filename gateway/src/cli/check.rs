//! `weir check --config FILE`: validate the config and load every module
//! (compile, check imports against grants, instantiate, run `weir_init`).
//! Meant for `ExecStartPre=` and for CI of config repositories.

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::pipeline::{Pipeline, Runtime};

/// Arguments of `weir check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The gateway config.
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
}

pub(super) fn run(args: CheckArgs) -> Result<(), Failure> {
    let cfg = Config::load(&args.config).map_err(Failure::refused)?;
    let pipelines = Pipeline::build_all(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    let stages: usize = pipelines.iter().map(|p| p.stages().len()).sum();
    println!(
        "{}: ok ({} pipelines, {} stages)",
        args.config.display(),
        pipelines.len(),
        stages
    );
    Ok(())
}
