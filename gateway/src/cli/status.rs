//! `weir status` and `weir top`: a running gateway at a glance, read from
//! its control socket. `top` refreshes once a second with rates, the way
//! `vector top` does.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::Failure;
use crate::config::Config;
use crate::topology::control;

/// Where to find the daemon.
#[derive(Args)]
pub struct Target {
    /// The gateway config (it names the control socket).
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// The control socket, instead of the one the config names.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Target {
    pub(super) fn socket(&self) -> Result<PathBuf, Failure> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let cfg = Config::load(&self.config).map_err(Failure::refused)?;
        Ok(control::path_of(&cfg))
    }
}

/// Arguments of `weir status`.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the whole snapshot as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

/// Arguments of `weir reload`.
#[derive(Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    target: Target,
}

/// Ask the running daemon to reload its config and modules; exit 2 with
/// the reason if it refuses (the running config keeps running).
pub(super) fn reload(args: ReloadArgs) -> Result<(), Failure> {
    let socket = args.target.socket()?;
    match control::request(&socket, "reload") {
        Ok(v) => {
            println!("reloaded: {}", v["reloaded"].as_str().unwrap_or(""));
            Ok(())
        }
        Err(e) if e.to_string().contains("reload refused") => Err(Failure::refused(e)),
        Err(e) => Err(e.into()),
    }
}

/// Arguments of `weir top`.
#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

fn snapshot(socket: &std::path::Path) -> Result<Value, Failure> {
    Ok(control::request(socket, "status")?)
}

pub(super) fn status(args: StatusArgs) -> Result<(), Failure> {
    let socket = args.target.socket()?;
    let snap = snapshot(&socket)?;
    if args.json {
        println!("{snap}");
    } else {
        print!("{}", render(&snap, None));
    }
    Ok(())
}

pub(super) fn top(args: TopArgs) -> Result<(), Failure> {
    let socket = args.target.socket()?;
    let every = args.every.max(Duration::from_millis(100));
    let mut prev: Option<(Value, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let now = Instant::now();
        let snap = snapshot(&socket)?;
        let rates = prev
            .as_ref()
            .map(|(p, at)| (p, now.duration_since(*at).as_secs_f64()));
        // Home and clear, then the view: one screen, redrawn in place.
        print!("\x1b[H\x1b[2J{}", render(&snap, rates));
        use std::io::Write;
        std::io::stdout().flush()?;
        shown += 1;
        if args.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        prev = Some((snap, now));
        std::thread::sleep(every.saturating_sub(now.elapsed()));
    }
}

/// `n/s` of a counter between two snapshots; `-` without a previous one.
fn rate(now: u64, before: Option<u64>, secs: f64) -> String {
    match before {
        Some(b) if secs > 0.0 => format!("{:.0}/s", now.saturating_sub(b) as f64 / secs),
        _ => "-".into(),
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The items of `list` in the snapshot, as an array.
fn items<'a>(s: &'a Value, list: &str) -> &'a [Value] {
    s[list].as_array().map_or(&[], Vec::as_slice)
}

/// The same-named item in the previous snapshot.
fn before<'a>(prev: Option<(&'a Value, f64)>, list: &str, name: &Value) -> Option<&'a Value> {
    prev.and_then(|(p, _)| items(p, list).iter().find(|y| y["name"] == *name))
}

fn sum(v: &Value) -> u64 {
    v.as_object().map_or(0, |m| m.values().map(n).sum())
}

fn state(x: &Value) -> String {
    match x["reason"].as_str() {
        Some(r) => format!("{} ({r})", text(&x["state"])),
        None => text(&x["state"]).to_string(),
    }
}

/// The view: gateway, sources, pipelines and stages, sinks and buffers,
/// the store. With a previous snapshot and the seconds since, rates too.
pub fn render(s: &Value, prev: Option<(&Value, f64)>) -> String {
    let secs = prev.map_or(0.0, |p| p.1);
    let mut o = String::new();
    let up = humantime::format_duration(Duration::from_secs(n(&s["uptime_s"])));
    let _ = writeln!(
        o,
        "weir {} on {}, up {up}, {} reloads ({} refused)\n",
        text(&s["version"]),
        text(&s["gateway"]),
        n(&s["reloads"]),
        n(&s["reloads_refused"])
    );
    let _ = writeln!(
        o,
        "{:<16} {:<7} {:>10} {:>10} {:>8} {:>8}  {:<10} state",
        "SOURCE", "KIND", "RECORDS", "RATE", "OUTAGES", "RESTARTS", "REJECTED"
    );
    for x in items(s, "sources") {
        let b = before(prev, "sources", &x["name"]);
        let _ = writeln!(
            o,
            "{:<16} {:<7} {:>10} {:>10} {:>8} {:>8}  {:<10} {}",
            text(&x["name"]),
            text(&x["kind"]),
            n(&x["records"]),
            rate(n(&x["records"]), b.map(|b| n(&b["records"])), secs),
            n(&x["outages"]),
            n(&x["restarts"]),
            sum(&x["rejected"]),
            state(x)
        );
    }
    let _ = writeln!(
        o,
        "\n{:<24} {:>10} {:>10} {:>10} {:>8} {:>8}  module",
        "PIPELINE / STAGE", "IN", "RATE", "OUT", "DROPPED", "FAILED"
    );
    for p in items(s, "pipelines") {
        let b = before(prev, "pipelines", &p["name"]);
        let _ = writeln!(
            o,
            "{:<24} {:>10} {:>10} {:>10} {:>8} {:>8}",
            text(&p["name"]),
            n(&p["records_in"]),
            rate(n(&p["records_in"]), b.map(|b| n(&b["records_in"])), secs),
            n(&p["records_out"]),
            n(&p["policy_dropped"]),
            n(&p["dead_lettered"])
        );
        for st in items(p, "stages") {
            let module = std::path::Path::new(text(&st["module"]))
                .file_name()
                .map_or(String::new(), |f| f.to_string_lossy().into_owned());
            let sha = text(&st["sha256"]);
            let _ = writeln!(
                o,
                "  {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}  {module} ({}){}",
                text(&st["name"]),
                n(&st["records_in"]),
                "",
                n(&st["records_out"]),
                n(&st["dropped"]),
                sum(&st["failed"]),
                sha.get(..12).unwrap_or(sha),
                if st["quarantined"] == true {
                    "  QUARANTINED"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(
        o,
        "\n{:<16} {:<7} {:>10} {:>12} {:>9} {:>10} {:>10} {:>8} {:>6}  state",
        "SINK", "KIND", "QUEUED", "BYTES", "OLDEST", "DELIVERED", "RATE", "DROPPED", "DEAD"
    );
    for k in items(s, "sinks") {
        let b = before(prev, "sinks", &k["name"]);
        let _ = writeln!(
            o,
            "{:<16} {:<7} {:>10} {:>12} {:>8.1}s {:>10} {:>10} {:>8} {:>6}  {}",
            text(&k["name"]),
            text(&k["kind"]),
            n(&k["queued"]),
            n(&k["queued_bytes"]),
            k["oldest_age_s"].as_f64().unwrap_or(0.0),
            n(&k["delivered"]),
            rate(n(&k["delivered"]), b.map(|b| n(&b["delivered"])), secs),
            sum(&k["dropped"]),
            n(&k["dead_lettered"]),
            state(k)
        );
    }
    if let Some(pushed) = s["deployments"].as_object().filter(|m| !m.is_empty()) {
        let _ = writeln!(
            o,
            "\n{:<16} {:<10} {:<10} {:<24} last result",
            "PUSHED MODULE", "RUNNING", "PREVIOUS", "STAGE"
        );
        for (name, l) in pushed {
            let ver = |d: &Value| d["version"].as_str().unwrap_or("config").to_string();
            let last =
                l["results"]
                    .as_array()
                    .and_then(|a| a.last())
                    .map_or("-".to_string(), |r| {
                        let mut t = format!("{} {}", text(&r["version"]), text(&r["outcome"]));
                        if r["outcome"] != "applied" {
                            t += &format!(" ({}): {}", text(&r["code"]), text(&r["reason"]));
                        }
                        t
                    });
            let a = &l["active"];
            let _ = writeln!(
                o,
                "{:<16} {:<10} {:<10} {:<24} {last}",
                name,
                ver(a) + if l["on_probation"] == true { "*" } else { "" },
                ver(&l["previous"]),
                if a.is_object() {
                    format!("{}/{}", text(&a["pipeline"]), text(&a["stage"]))
                } else {
                    "-".to_string()
                },
            );
        }
    }
    let st = &s["store"];
    let _ = writeln!(
        o,
        "\nstore {}: {} bytes on disk, {} syncs ({} failed, {} reopens); {} redeliveries recognised",
        st["path"].as_str().unwrap_or("(in memory)"),
        n(&st["bytes_on_disk"]),
        n(&st["syncs"]),
        n(&st["sync_failures"]),
        n(&st["reopens"]),
        n(&st["redelivered"])
    );
    o
}
