//! `weir sensor send`: a downlink command to one sensor node, through the
//! running daemon's serial source, and the node's reply.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::Failure;
use crate::config::{Config, SourceConfig};
use crate::sources::serial::downlink::parse_command;
use crate::sources::serial::framing::Framing;
use crate::topology::control;

#[derive(Subcommand)]
pub(super) enum SensorCommand {
    /// Send a command to a sensor node on a serial source (through the
    /// running daemon) and print its reply; exit 1 if it refuses or does
    /// not answer.
    Send(SendArgs),
}

#[derive(Args)]
pub(super) struct SendArgs {
    /// The gateway config (it names the source and the control socket).
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// The serial source the sensor is on.
    #[arg(long)]
    source: String,
    /// The sensor's id (the wire header's sensor id).
    #[arg(long)]
    sensor: u32,
    /// `ping`, `identify`, or `set-interval` with the interval (`30s`, or ms).
    cmd: String,
    /// The command's value (`set-interval`).
    value: Option<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub(super) fn run(cmd: SensorCommand) -> Result<(), Failure> {
    match cmd {
        SensorCommand::Send(a) => send(a),
    }
}

fn send(a: SendArgs) -> Result<(), Failure> {
    let cfg = Config::load(&a.config).map_err(Failure::refused)?;
    let src = cfg.sources.iter().find(|s| s.name() == a.source);
    match src {
        Some(SourceConfig::Serial(s)) if matches!(s.framing, Framing::Weir) => {}
        Some(SourceConfig::Serial(_)) => {
            return Err(Failure::refused(anyhow::anyhow!(
                "serial source `{}` does not use Weir's wire protocol (framing = \"weir\"): its sensors cannot take commands",
                a.source
            )));
        }
        Some(_) => {
            return Err(Failure::refused(anyhow::anyhow!(
                "source `{}` in {} is not a serial source",
                a.source,
                a.config.display()
            )));
        }
        None => {
            return Err(Failure::refused(anyhow::anyhow!(
                "no source `{}` in {}",
                a.source,
                a.config.display()
            )));
        }
    }
    // Refuse a bad command here, before asking the daemon.
    parse_command(&a.cmd, a.value.as_deref()).map_err(|e| Failure::refused(anyhow::anyhow!(e)))?;
    let wait = a.timeout.min(control::MAX_REPLY_WAIT);
    let request = json!({
        "source": a.source,
        "sensor": a.sensor,
        "cmd": a.cmd,
        "value": a.value,
        "timeout_ms": wait.as_millis() as u64,
    });
    let answer = control::request_within(
        &control::path_of(&cfg),
        &format!("sensor {request}"),
        Some(wait + Duration::from_secs(5)),
    )?;
    let reply = &answer["reply"];
    println!("{reply}");
    if reply["ok"] == true {
        Ok(())
    } else {
        eprintln!(
            "error: sensor {} refused `{}`: {}",
            a.sensor,
            a.cmd,
            reply["error"].as_str().unwrap_or("no reason given")
        );
        Err(Failure::quiet(1))
    }
}
