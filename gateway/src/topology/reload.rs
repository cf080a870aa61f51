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
use crate::store::Queue;

/// What a reload changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sources to stop and start again with their new config.
    pub restart_sources: Vec<String>,
    /// Sources to start.
    pub add_sources: Vec<String>,
    /// Sources to stop.
    pub remove_sources: Vec<String>,
    /// Sinks to stop and start again with their new config (same queue).
    pub restart_sinks: Vec<String>,
}

/// Decide what `new` changes against `old`, or why it needs a restart.
/// `single`: the running gateway runs its pipelines on one thread.
pub fn plan(old: &Config, new: &Config, single: bool) -> Result<Plan, String> {
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
    if old.metrics != new.metrics {
        return restart("`[metrics]`");
    }
    if old.status != new.status {
        return restart("`[status]`");
    }
    if old.gateway.control != new.gateway.control {
        return restart("`gateway.control`");
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
    if single && new.pipelines.len() > 1 {
        return restart("going from one pipeline to several (each gets a thread of its own)");
    }
    let (old_sinks, new_sinks) = (old.sinks(), new.sinks());
    let names = |s: &[SinkConfig]| {
        let mut n: Vec<String> = s.iter().map(|s| s.name.clone()).collect();
        n.sort();
        n
    };
    if names(&old_sinks) != names(&new_sinks) {
        return restart("the set of sinks (each owns a queue in the store)");
    }
    let mut p = Plan::default();
    for n in &new_sinks {
        let Some(o) = old_sinks.iter().find(|o| o.name == n.name) else {
            continue;
        };
        if fingerprint(&o.buffer) != fingerprint(&n.buffer) || o.is_durable() != n.is_durable() {
            return restart(&format!("sink `{}`'s buffer", n.name));
        }
        if fingerprint(o) != fingerprint(n) {
            p.restart_sinks.push(n.name.clone());
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

/// Apply `new` to the running topology, with the pushed modules of
/// `overlay`. `Ok`: a summary of what changed.
pub(super) async fn apply(
    old: &Config,
    new: &Config,
    overlay: &Overlay,
    queues: &[(SinkConfig, Arc<Queue>)],
    ctl: &mpsc::UnboundedSender<Swap>,
    tasks: &mut Tasks,
    single: bool,
) -> Result<String, String> {
    let plan = plan(old, new, single)?;
    let mut summary = swap_in(new, overlay, None, queues, ctl).await?;
    let sinks = with_queues(new, queues);
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
        }
    }
    for src in &new.sources {
        let name = src.name().to_string();
        if plan.restart_sources.contains(&name) || plan.add_sources.contains(&name) {
            tasks.start_source(src);
        }
    }
    for name in &plan.restart_sinks {
        if let Some(t) = tasks.sinks.remove(name) {
            t.stop().await;
        }
        if let Some((s, q)) = sinks.iter().find(|(s, _)| &s.name == name) {
            tasks.start_sink(s, q.clone());
        }
    }
    for (what, list) in [
        ("sources restarted", &plan.restart_sources),
        ("sources added", &plan.add_sources),
        ("sources removed", &plan.remove_sources),
        ("sinks restarted", &plan.restart_sinks),
    ] {
        if !list.is_empty() {
            let _ = write!(summary, "; {what}: {}", list.join(" "));
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
    fn what_needs_a_restart_is_refused_with_the_reason() {
        let base = cfg(BASE);
        let id = cfg(&BASE.replace("id = \"gw\"", "id = \"gw2\""));
        assert!(plan(&base, &id, true).unwrap_err().contains("gateway.id"));
        let sinks = cfg(&(BASE.to_string() + "[[sink]]\nname = \"o2\"\ntype = \"stdout\"\n"));
        assert!(
            plan(&base, &sinks, true)
                .unwrap_err()
                .contains("set of sinks")
        );
        let two = cfg(&(BASE.to_string()
            + "[[pipeline]]\nname = \"q\"\n[[pipeline.stage]]\nname = \"s\"\nmodule = \"m.wasm\"\n"));
        assert!(plan(&base, &two, true).unwrap_err().contains("several"));
        assert!(plan(&base, &two, false).is_ok());
    }
}
