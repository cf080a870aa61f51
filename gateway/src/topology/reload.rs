//! Reload: apply a new config to a running topology without losing a record.
//!
//! [`plan`] decides, without I/O, what a new config changes and whether it
//! can be applied in place; [`apply`] loads the new pipelines (every module,
//! as `weir check` does), swaps them in between records, and restarts only
//! the sources and sinks whose config changed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::lanes::Swap;
use super::{Tasks, fingerprint};
use crate::config::Config;
use crate::deploy::Overlay;
use crate::pipeline::Runtime;
use crate::routing::{Carry, Router};
use crate::sinks::SinkConfig;
use crate::store::{OpenReport, Queue};

/// What a reload changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sources to stop and start again with their new config.
    pub restart_sources: Vec<String>,
    /// Sources to start.
    pub add_sources: Vec<String>,
    /// Sources to stop.
    pub remove_sources: Vec<String>,
    /// Sinks to stop and start again with their new config (same queue,
    /// with the new buffer bounds).
    pub restart_sinks: Vec<String>,
    /// Sinks to start, each with a queue of its own.
    pub add_sinks: Vec<String>,
    /// Sinks to stop; their queues stay in the store.
    pub remove_sinks: Vec<String>,
    /// `[metrics]` changed: serve `/metrics` on the new address (or stop).
    pub metrics: bool,
    /// `[status]`, or the sink it publishes through, changed.
    pub status: bool,
    /// The control socket moves.
    pub control: bool,
}

/// Decide what `new` changes against `old`, or why it needs a restart.
/// `durable_store`: the running gateway has its store open on disk (it
/// had a durable sink at start).
pub fn plan(old: &Config, new: &Config, durable_store: bool) -> Result<Plan, String> {
    let restart = |what: &str| {
        Err(format!(
            "{what} cannot change while running; restart weir to apply it (`systemctl restart weir`)"
        ))
    };
    if old.gateway.id != new.gateway.id {
        return restart("`gateway.id`");
    }
    if fingerprint(&old.store) != fingerprint(&new.store) || old.store_path() != new.store_path() {
        return restart("`[store]`");
    }
    // Trusted keys, the policy and probation apply live; where pushes
    // come from does not.
    let from = |c: &Config| {
        c.modules.as_ref().map(|m| {
            (
                m.sink.clone(),
                m.prefix.clone(),
                m.groups.clone(),
                c.modules_dir(),
            )
        })
    };
    if from(old) != from(new) {
        return restart("`[modules]` sink, prefix, groups or dir");
    }
    let (old_sinks, new_sinks) = (old.sinks(), new.sinks());
    let mut p = Plan::default();
    for n in &new_sinks {
        match old_sinks.iter().find(|o| o.name == n.name) {
            Some(o) if o.is_durable() != n.is_durable() => {
                return restart(&format!(
                    "sink `{}`'s `durable` (its queue is on disk or in memory)",
                    n.name
                ));
            }
            Some(o) if fingerprint(o) != fingerprint(n) => p.restart_sinks.push(n.name.clone()),
            Some(_) => {}
            None if n.is_durable() && !durable_store => {
                return restart(&format!(
                    "adding durable sink `{}` to a gateway that started without one (the store is not open)",
                    n.name
                ));
            }
            None => p.add_sinks.push(n.name.clone()),
        }
    }
    for o in &old_sinks {
        if !new_sinks.iter().any(|n| n.name == o.name) {
            p.remove_sinks.push(o.name.clone());
        }
    }
    for n in &new.sources {
        match old.sources.iter().find(|o| o.name() == n.name()) {
            Some(o) if fingerprint(o) != fingerprint(n) => {
                p.restart_sources.push(n.name().to_string())
            }
            Some(_) => {}
            None => p.add_sources.push(n.name().to_string()),
        }
    }
    for o in &old.sources {
        if !new.sources.iter().any(|n| n.name() == o.name()) {
            p.remove_sources.push(o.name().to_string());
        }
    }
    p.metrics = old.metrics != new.metrics;
    p.status = fingerprint(&(&old.status, old.status_sink()))
        != fingerprint(&(&new.status, new.status_sink()));
    p.control = super::control::path_of(old) != super::control::path_of(new);
    Ok(p)
}

/// How long a reload waits for the pipelines to take the swap before it
/// reports it as pending (a pipeline blocked on a full `block` queue takes
/// it when it moves again).
const SWAP_WAIT: Duration = Duration::from_secs(10);

/// The sinks of `cfg`, each with its queue (queues outlive reloads).
fn with_queues(cfg: &Config, queues: &[(SinkConfig, Arc<Queue>)]) -> Vec<(SinkConfig, Arc<Queue>)> {
    cfg.sinks()
        .into_iter()
        .filter_map(|s| {
            let q = queues.iter().find(|(o, _)| o.name == s.name)?.1.clone();
            Some((s, q))
        })
        .collect()
}

/// Build the pipelines of `cfg` with `overlay` (every module loaded, as
/// `weir check` does) and swap them in between records. `Ok`: what the
/// swap did, in words.
pub(super) async fn swap_in(
    cfg: &Config,
    overlay: &Overlay,
    carry: Carry<'_>,
    queues: &[(SinkConfig, Arc<Queue>)],
    ctl: &mpsc::UnboundedSender<Swap>,
) -> Result<String, String> {
    // Load everything first, off the runtime: a module that does not
    // load refuses the whole change, and the running pipelines go on.
    let loaded = {
        let (cfg, overlay) = (cfg.clone(), overlay.clone());
        let carry = carry.map(|(p, s, c)| (p.to_string(), s.to_string(), c));
        tokio::task::spawn_blocking(move || {
            let carry = carry.as_ref().map(|(p, s, c)| (p.as_str(), s.as_str(), *c));
            let router =
                Router::build(&cfg, &Runtime::new(), &overlay, carry).map_err(|e| e.to_string())?;
            let problems = cfg.check_files();
            if let Some(p) = problems.first() {
                return Err(format!("{p} ({} problem(s) found)", problems.len()));
            }
            Ok(router)
        })
        .await
        .map_err(|e| e.to_string())?
    };
    let router = loaded.map_err(|e| format!("{}: {e}", cfg.file))?;
    let sinks = with_queues(cfg, queues);
    let (done, wait) = std::sync::mpsc::channel();
    ctl.send(Swap {
        router,
        sinks,
        done,
    })
    .map_err(|_| "the pipelines have stopped".to_string())?;
    let kept = tokio::task::spawn_blocking(move || wait.recv_timeout(SWAP_WAIT))
        .await
        .map_err(|e| e.to_string())?;
    let mut summary = String::new();
    match kept {
        Ok(kept) => {
            let _ = write!(summary, "pipelines swapped ({})", cfg.pipelines.len());
            let states: Vec<String> = kept
                .iter()
                .flat_map(|(p, stages)| stages.iter().map(move |s| format!("{p}/{s}")))
                .collect();
            if !states.is_empty() {
                let _ = write!(summary, ", state kept: {}", states.join(" "));
            }
        }
        Err(_) => {
            let _ = write!(
                summary,
                "pipelines swap pending (they are blocked; it applies before their next record)"
            );
        }
    }
    Ok(summary)
}

/// What a reload opens before it changes anything: a failure to open
/// one refuses the reload, and the running config keeps running.
#[derive(Default)]
struct Opened {
    queues: Vec<(SinkConfig, Arc<Queue>)>,
    metrics: Option<std::net::TcpListener>,
    control: Option<(std::path::PathBuf, std::os::unix::net::UnixListener)>,
}

impl Opened {
    fn open(new: &Config, plan: &Plan, tasks: &Tasks) -> Result<Opened, String> {
        let mut o = Opened::default();
        let sinks = new.sinks();
        for name in &plan.add_sinks {
            let Some(s) = sinks.iter().find(|s| &s.name == name) else {
                continue;
            };
            match tasks.queues.iter().find(|(c, _)| &c.name == name) {
                // Removed before and back: its queue, with what it held.
                Some((_, q)) if q.is_durable() == s.is_durable() => {}
                Some(_) => {
                    return Err(format!(
                        "sink `{name}` comes back with another `durable` than its queue kept from before; restart weir to apply it (`systemctl restart weir`)"
                    ));
                }
                None => {
                    let mut report = OpenReport::default();
                    let q = tasks
                        .store
                        .queue(name, s.buffer, s.is_durable(), &mut report)
                        .map_err(|e| format!("sink `{name}`: its queue cannot be opened: {e}"))?;
                    o.queues.push((s.clone(), q));
                }
            }
        }
        if plan.metrics {
            o.metrics = super::bind_metrics(new)?;
        }
        if plan.control {
            let path = super::control::path_of(new);
            let l = super::control::bind(&path).map_err(|e| e.to_string())?;
            o.control = Some((path, l));
        }
        Ok(o)
    }

    /// A refused reload: leave no socket file behind.
    fn discard(self) {
        if let Some((path, _)) = self.control {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Apply `new` to the running topology, with the pushed modules of
/// `overlay`. `Ok`: a summary of what changed.
pub(super) async fn apply(
    old: &Config,
    new: &Config,
    overlay: &Overlay,
    ctl: &mpsc::UnboundedSender<Swap>,
    tasks: &mut Tasks,
) -> Result<String, String> {
    let plan = plan(old, new, tasks.store.is_durable())?;
    let opened = Opened::open(new, &plan, tasks)?;
    let mut all = tasks.queues.clone();
    all.extend(opened.queues.iter().cloned());
    let mut summary = match swap_in(new, overlay, None, &all, ctl).await {
        Ok(s) => s,
        Err(e) => {
            opened.discard();
            return Err(e);
        }
    };
    let Opened {
        queues: added,
        metrics,
        control,
    } = opened;
    // Every queue is kept; each configured one takes its sink's config
    // (its buffer bounds apply from the next entry).
    tasks.queues.extend(added.iter().cloned());
    for (c, q) in tasks.queues.iter_mut() {
        if let Some(n) = new.sinks().into_iter().find(|n| n.name == c.name) {
            q.set_config(n.buffer);
            *c = n;
        }
    }
    *tasks.wake.lock().unwrap_or_else(|p| p.into_inner()) =
        tasks.queues.iter().map(|(_, q)| q.clone()).collect();
    let sinks = with_queues(new, &tasks.queues);
    tasks.registry.retain_pipelines(
        &new.pipelines
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
    );
    for name in plan.remove_sources.iter().chain(&plan.restart_sources) {
        if let Some(t) = tasks.sources.remove(name) {
            t.stop().await;
        }
        if plan.remove_sources.contains(name) {
            tasks.registry.remove_source(name);
            tasks.downlinks.close(name);
        }
    }
    for src in &new.sources {
        let name = src.name().to_string();
        if plan.restart_sources.contains(&name) || plan.add_sources.contains(&name) {
            tasks.start_source(src);
        }
    }
    for name in plan.remove_sinks.iter().chain(&plan.restart_sinks) {
        if let Some(t) = tasks.sinks.remove(name) {
            t.stop().await;
        }
    }
    for name in &plan.remove_sinks {
        tasks.registry.remove_sink(name);
        if let Some((_, q)) = tasks.queues.iter().find(|(c, _)| &c.name == name) {
            tracing::warn!(sink = %name, entries = q.len(), bytes = q.bytes(),
                "sink removed: its queue stays in the store for its return (`weir store compact --drop-orphans` removes it after a stop)");
        }
    }
    for name in plan.restart_sinks.iter().chain(&plan.add_sinks) {
        if let Some((s, q)) = sinks.iter().find(|(s, _)| &s.name == name) {
            tasks.start_sink(s, q.clone());
        }
    }
    if plan.metrics {
        match metrics {
            Some(l) => tasks.start_metrics(l).map_err(|e| e.to_string())?,
            None => tasks.stop_metrics(),
        }
    }
    if plan.status {
        tasks.start_status(new).await;
    }
    if let Some((path, l)) = control {
        tasks.start_control(path, l).map_err(|e| e.to_string())?;
    }
    for (what, list) in [
        ("sources restarted", &plan.restart_sources),
        ("sources added", &plan.add_sources),
        ("sources removed", &plan.remove_sources),
        ("sinks restarted", &plan.restart_sinks),
        ("sinks added", &plan.add_sinks),
        ("sinks removed", &plan.remove_sinks),
    ] {
        if !list.is_empty() {
            let _ = write!(summary, "; {what}: {}", list.join(" "));
        }
    }
    for (what, changed) in [
        ("metrics", plan.metrics),
        ("status", plan.status),
        ("control socket", plan.control),
    ] {
        if changed {
            let _ = write!(summary, "; {what} restarted");
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("weir-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("m.wasm"), b"\0asm").unwrap();
        Config::parse(text, "weir.toml", &dir).expect("a valid config")
    }

    const BASE: &str = r#"
[gateway]
id = "gw"
[[source]]
type = "mqtt"
name = "in"
host = "127.0.0.1"
port = 1883
subscribe = [ { filter = "a/#", qos = 1 } ]
[[pipeline]]
name = "p"
[[pipeline.stage]]
name = "s"
module = "m.wasm"
[[sink]]
name = "out"
type = "stdout"
"#;

    #[test]
    fn an_unchanged_config_changes_nothing() {
        assert_eq!(plan(&cfg(BASE), &cfg(BASE), true), Ok(Plan::default()));
    }

    #[test]
    fn changed_sources_restart_and_others_stay() {
        let new = BASE.replace("port = 1883", "port = 1884")
            + "[[source]]\ntype = \"mqtt\"\nname = \"in2\"\nhost = \"127.0.0.1\"\nport = 1\nsubscribe = [ { filter = \"b\", qos = 1 } ]\n";
        let p = plan(&cfg(BASE), &cfg(&new), true).unwrap();
        assert_eq!(p.restart_sources, ["in"]);
        assert_eq!(p.add_sources, ["in2"]);
        assert!(p.remove_sources.is_empty() && p.restart_sinks.is_empty());
        let back = plan(&cfg(&new), &cfg(BASE), true).unwrap();
        assert_eq!(back.remove_sources, ["in2"]);
    }

    #[test]
    fn sinks_metrics_status_and_pipelines_change_in_place() {
        let base = cfg(BASE);
        let more = cfg(&(BASE.to_string()
            + "[[sink]]\nname = \"o2\"\ntype = \"file\"\npath = \"o2.jsonl\"\n"
            + "[metrics]\nlisten = \"127.0.0.1:9999\"\n"
            + "[[pipeline]]\nname = \"q\"\n[[pipeline.stage]]\nname = \"s\"\nmodule = \"m.wasm\"\n"));
        let p = plan(&base, &more, true).unwrap();
        assert_eq!(p.add_sinks, ["o2"]);
        assert!(p.metrics && !p.status && !p.control);
        let back = plan(&more, &base, true).unwrap();
        assert_eq!(back.remove_sinks, ["o2"]);
        assert!(back.metrics);
        // A durable sink needs the store open.
        assert!(
            plan(&base, &more, false)
                .unwrap_err()
                .contains("durable sink `o2`")
        );
        // New buffer bounds: the sink restarts with them.
        let mut bounds = more.clone();
        bounds
            .sinks
            .iter_mut()
            .filter(|s| s.name == "o2")
            .for_each(|s| s.buffer.max_bytes.0 = 1 << 20);
        let p = plan(&more, &bounds, true).unwrap();
        assert_eq!(p.restart_sinks, ["o2"]);
    }

    #[test]
    fn what_needs_a_restart_is_refused_with_the_reason() {
        let base = cfg(BASE);
        let id = cfg(&BASE.replace("id = \"gw\"", "id = \"gw2\""));
        assert!(plan(&base, &id, true).unwrap_err().contains("gateway.id"));
        let file = "[[sink]]\nname = \"o2\"\ntype = \"file\"\npath = \"o2.jsonl\"\n";
        let durable = cfg(&(BASE.to_string() + file));
        let memory = cfg(&(BASE.to_string() + file + "durable = false\n"));
        assert!(
            plan(&durable, &memory, true)
                .unwrap_err()
                .contains("`o2`'s `durable`")
        );
        let store = cfg(&(BASE.to_string() + "[store]\ncommit_window = \"1ms\"\n"));
        assert!(plan(&base, &store, true).unwrap_err().contains("[store]"));
    }
}
