//! `weir sim`: simulated sensor nodes on a pseudo-terminal or a serial
//! device (see [`crate::sim`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Failure;
use crate::sim::{Noise, Plan};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("line").required(true).args(["device", "pty"]))]
pub(super) struct SimArgs {
    /// A serial device to write to (a USB adapter looped to the gateway's).
    #[arg(long)]
    device: Option<PathBuf>,
    /// Make a pseudo-terminal, print its path, and wait for the gateway to
    /// open it.
    #[arg(long)]
    pty: bool,
    /// With --pty: also make this symlink to it (a stable path for a config).
    #[arg(long, requires = "pty")]
    link: Option<PathBuf>,
    /// With --device: the baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Sensor nodes on the line (ids 1 to N).
    #[arg(long, default_value_t = 4)]
    sensors: u32,
    /// Readings per second, all nodes together.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// Stop after this many readings (default: run until stopped).
    #[arg(long)]
    count: Option<u64>,
    /// After the last reading, keep answering commands this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    linger: Duration,
    /// Damage on purpose: `flips`, `garbage`, `drops`, each optionally
    /// `=P` (probability per frame; default 0.05), comma-separated.
    #[arg(long, default_value = "", value_parser = Noise::parse)]
    noise: Noise,
    /// Seed for the readings and the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub(super) fn run(a: SimArgs) -> Result<(), Failure> {
    if a.sensors == 0 || a.rate <= 0.0 {
        return Err(Failure::refused(anyhow::anyhow!(
            "give at least one sensor and a rate above 0"
        )));
    }
    let most = 1000.0 / f64::from(weir_sensor::command::MIN_INTERVAL_MS);
    if a.rate / f64::from(a.sensors) > most {
        return Err(Failure::refused(anyhow::anyhow!(
            "{} readings/s from {} sensor(s) is over {most} per sensor (a node reports at most every {} ms): add sensors",
            a.rate,
            a.sensors,
            weir_sensor::command::MIN_INTERVAL_MS
        )));
    }
    let plan = Plan {
        sensors: a.sensors,
        rate: a.rate,
        count: a.count,
        linger: a.linger,
        noise: a.noise,
        seed: a.seed,
    };
    let (file, wait) = if let Some(dev) = &a.device {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let port = tokio_serial::new(dev.to_string_lossy(), a.baud)
            .open_native()
            .map_err(|e| anyhow::anyhow!("{}: {e}", dev.display()))?;
        // SAFETY: the descriptor is the port's, handed over whole.
        (
            unsafe { std::fs::File::from_raw_fd(port.into_raw_fd()) },
            false,
        )
    } else {
        let (file, path) = crate::sim::open_pty()?;
        if let Some(link) = &a.link {
            let _ = std::fs::remove_file(link);
            std::os::unix::fs::symlink(&path, link)
                .map_err(|e| anyhow::anyhow!("link {}: {e}", link.display()))?;
        }
        eprintln!(
            "sim: {} sensor(s) on {path}{}; waiting for the gateway to open it",
            a.sensors,
            a.link
                .as_ref()
                .map(|l| format!(" (also {})", l.display()))
                .unwrap_or_default()
        );
        (file, true)
    };
    let sent = crate::sim::run(file, &plan, wait, Box::new(std::io::stdout()))?;
    eprintln!("sim: {sent} reading(s) sent");
    if let Some(link) = &a.link {
        let _ = std::fs::remove_file(link);
    }
    Ok(())
}
