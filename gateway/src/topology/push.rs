//! The push agent: takes module bundles pushed over MQTT, checks them in
//! order (signature, version, policy, compile and imports, test vectors),
//! swaps them in through the topology between records, watches their
//! probation and rolls back on its own. Every push gets one terminal
//! result, kept in the module's ledger on disk and published with the
//! status message.
//!
//! The decisions are in `crate::deploy` (no I/O); this file is the I/O:
//! the MQTT subscription, the disk, the swap requests, the clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Verifier};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};

use super::Request;
use crate::common::backoff::Retry;
use crate::config::Config;
use crate::deploy::bundle::{Bundle, StatePolicy, push_id, rollback_message, sha256_hex};
use crate::deploy::envelope::{Authorisation, Offer, Piece, Reassembler};
use crate::deploy::gate::{self, Refusal, Target};
use crate::deploy::ledger::{Deployed, Disk, Ledger, Outcome, Result_, TRANSIENT};
use crate::deploy::probation::{Probation, Sample, Verdict};
use crate::deploy::{ModulesConfig, Overlay, Pushed};
use crate::metrics::Registry;
use crate::pipeline::{CarryState, Runtime};
use crate::record::now_ms;
use crate::sinks::SinkConfig;

/// Load the pushed modules kept on disk into an overlay, for a start
/// without the broker. A kept bundle that no longer verifies (a key no
/// longer trusted, damage on disk) is logged, and the config's module runs.
pub fn restore(cfg: &Config, registry: &Registry) -> anyhow::Result<Overlay> {
    let mut overlay = Overlay::new();
    let Some(m) = &cfg.modules else {
        return Ok(overlay);
    };
    registry.set_groups(&m.groups);
    let trusted = cfg.trusted_keys()?;
    let disk = Disk::new(cfg.modules_dir());
    let (ledgers, damaged) = disk.load_all();
    for e in damaged {
        tracing::error!(error = %e, "a pushed module's ledger cannot be read; its stage runs the config's module");
    }
    for (name, mut ledger) in ledgers {
        if let Some(active) = ledger.active.clone() {
            match disk.open_bundle(&name, &active, &trusted) {
                Ok(b) if has_stage(cfg, &active.pipeline, &active.stage) => {
                    tracing::info!(module = %name, version = %active.version, pipeline = %active.pipeline,
                        stage = %active.stage, "running the pushed module kept on disk");
                    overlay.insert((active.pipeline.clone(), active.stage.clone()), pushed(&b));
                }
                Ok(_) => {
                    tracing::warn!(module = %name, pipeline = %active.pipeline, stage = %active.stage,
                        "the pushed module's stage is no longer in the config; not running it");
                }
                Err(e) => {
                    tracing::error!(module = %name, error = %e,
                        "the kept bundle fails verification; its stage runs the config's module");
                    ledger.active = None;
                    ledger.on_probation = false;
                    if let Err(e) = disk.save(&name, &ledger) {
                        tracing::error!(module = %name, error = %e, "cannot save the module's ledger");
                    }
                }
            }
        }
        registry.deployment(&name, &ledger);
    }
    Ok(overlay)
}

fn has_stage(cfg: &Config, pipeline: &str, stage: &str) -> bool {
    cfg.pipelines
        .iter()
        .any(|p| p.name == pipeline && p.stages.iter().any(|s| s.name == stage))
}

fn pushed(b: &Bundle) -> Pushed {
    Pushed {
        label: format!("{}@{}", b.manifest.name, b.manifest.version),
        version: b.manifest.version.to_string(),
        wasm: b.wasm.clone().into(),
        grants: b.manifest.grants.clone(),
    }
}

fn carry(p: StatePolicy) -> CarryState {
    match p {
        StatePolicy::Keep => CarryState::Always,
        StatePolicy::Reset => CarryState::Never,
    }
}

/// A version on probation.
struct OnProbation {
    probation: Probation,
    deployed: Deployed,
}

/// The agent's state.
pub struct Agent {
    gateway: String,
    modules: ModulesConfig,
    sink: SinkConfig,
    registry: Arc<Registry>,
    config: watch::Receiver<Arc<Config>>,
    requests: mpsc::UnboundedSender<Request>,
    disk: Disk,
    ledgers: BTreeMap<String, Ledger>,
    probations: BTreeMap<String, OnProbation>,
    /// Bundles that came while their module was on probation: the newest.
    waiting: BTreeMap<String, (Vec<u8>, Option<Authorisation>)>,
    assembly: Reassembler,
}

impl Agent {
    /// An agent for the gateway of `cfg`.
    pub(super) fn new(
        cfg: &Config,
        modules: ModulesConfig,
        sink: SinkConfig,
        registry: Arc<Registry>,
        config: watch::Receiver<Arc<Config>>,
        requests: mpsc::UnboundedSender<Request>,
    ) -> Agent {
        let disk = Disk::new(cfg.modules_dir());
        let (ledgers, _) = disk.load_all();
        let mut probations = BTreeMap::new();
        for (name, l) in &ledgers {
            // A restart during probation resumes it.
            if let (true, Some(a)) = (l.on_probation, &l.active) {
                probations.insert(
                    name.clone(),
                    OnProbation {
                        probation: Probation::new(
                            modules.probation_records,
                            modules.probation,
                            modules.max_failure_rate,
                            Instant::now(),
                        ),
                        deployed: a.clone(),
                    },
                );
            }
        }
        Agent {
            gateway: cfg.gateway.id.clone(),
            assembly: Reassembler::new(modules.max_bundle.0 as usize, modules.assembly_timeout),
            modules,
            sink,
            registry,
            config,
            requests,
            disk,
            ledgers,
            probations,
            waiting: BTreeMap::new(),
        }
    }

    fn module_of(&self, topic: &str) -> Option<String> {
        module_of(&self.modules, &self.gateway, topic)
    }

    fn save(&mut self, name: &str) {
        let l = self.ledgers.entry(name.to_string()).or_default();
        if let Err(e) = self.disk.save(name, l) {
            tracing::error!(module = %name, error = %e, "cannot save the module's ledger (a restart may run the version before)");
        }
        self.registry.deployment(name, l);
    }

    /// Record `outcome` for bundle `sha` of module `name`, publish it.
    #[allow(clippy::too_many_arguments)]
    fn result(
        &mut self,
        name: &str,
        sha: &str,
        push: &str,
        version: Option<semver::Version>,
        outcome: Outcome,
        code: &str,
        reason: &str,
    ) {
        let l = self.ledgers.entry(name.to_string()).or_default();
        // What ran before this push: for an applied one, the version it
        // replaced; else the one that runs now.
        let before = match outcome {
            Outcome::Applied => &l.previous,
            Outcome::Refused | Outcome::RolledBack => &l.active,
        };
        let previous = before.as_ref().map(|a| a.version.clone());
        let r = Result_ {
            sha256: sha.to_string(),
            push: push.to_string(),
            version: version.clone(),
            outcome,
            code: code.to_string(),
            reason: reason.to_string(),
            previous: previous.clone(),
            at_ms: now_ms(),
        };
        l.push_result(r);
        let v = version.map_or("?".to_string(), |v| v.to_string());
        match outcome {
            Outcome::Applied => {
                tracing::info!(module = %name, version = %v, bundle = %short(sha), "module push applied: probation passed")
            }
            Outcome::Refused => {
                tracing::warn!(module = %name, version = %v, bundle = %short(sha), code, reason, "module push refused; the running version goes on")
            }
            Outcome::RolledBack => {
                tracing::error!(module = %name, version = %v, bundle = %short(sha), code, reason,
                    previous = %previous.map_or("the config's module".to_string(), |p| p.to_string()),
                    "module rolled back")
            }
        }
        self.save(name);
    }

    /// Whether bundle `sha` of `name` was judged already (a retained
    /// message seen again after a reconnect).
    fn judged(&self, name: &str, sha: &str, push: &str) -> bool {
        self.ledgers.get(name).is_some_and(|l| {
            (push == sha && l.active.as_ref().is_some_and(|a| a.sha256 == sha))
                || l.result_for(push)
                    .is_some_and(|r| !TRANSIENT.contains(&r.code.as_str()))
        })
    }

    /// A whole bundle arrived for module `name`.
    async fn arrived(&mut self, name: String, bytes: Vec<u8>, rollback: Option<Authorisation>) {
        let sha = sha256_hex(&bytes);
        let push = push_id(&sha, rollback.as_ref().map(|(_, sig)| sig));
        if self.judged(&name, &sha, &push) {
            tracing::debug!(module = %name, bundle = %short(&sha), "bundle seen before; nothing to do");
            return;
        }
        if self.probations.contains_key(&name) {
            // One at a time per module: this one goes after the probation.
            if let Some((old, old_rb)) = self.waiting.insert(name.clone(), (bytes, rollback)) {
                let old_sha = sha256_hex(&old);
                let old_push = push_id(&old_sha, old_rb.as_ref().map(|(_, sig)| sig));
                self.result(
                    &name,
                    &old_sha,
                    &old_push,
                    None,
                    Outcome::Refused,
                    "superseded",
                    "a newer push of this module came before it could be applied",
                );
            }
            tracing::info!(module = %name, bundle = %short(&sha), "push queued until the running probation ends");
            return;
        }
        match self.admit(&name, &bytes, rollback).await {
            Ok((b, target_carry)) => self.swap(name, b, &bytes, &push, target_carry).await,
            Err((version, r)) => self.result(
                &name,
                &sha,
                &push,
                version,
                Outcome::Refused,
                r.code,
                &r.reason,
            ),
        }
    }

    /// Steps 1 to 4: signature, version, policy, compile, test vectors.
    async fn admit(
        &mut self,
        name: &str,
        bytes: &[u8],
        rollback: Option<Authorisation>,
    ) -> Result<(Bundle, CarryState), (Option<semver::Version>, Refusal)> {
        let cfg = self.config.borrow().clone();
        let trusted = cfg.trusted_keys().map_err(|e| {
            (
                None,
                Refusal {
                    code: "keys",
                    reason: e.to_string(),
                },
            )
        })?;
        let b = Bundle::open(bytes, &trusted).map_err(|e| (None, e.into()))?;
        let v = Some(b.manifest.version.clone());
        let refuse = |code: &'static str, reason: String| (v.clone(), Refusal { code, reason });
        if b.manifest.name != name {
            return Err(refuse(
                "name",
                format!(
                    "the bundle is module `{}`, pushed on the topic of `{name}`",
                    b.manifest.name
                ),
            ));
        }
        let authorised = match rollback {
            None => false,
            Some((key, sig)) => {
                let sha: [u8; 32] = hex::decode(&b.sha256)
                    .expect("hex")
                    .try_into()
                    .expect("32 bytes");
                let ok = trusted.iter().any(|k| {
                    k.as_bytes() == &key
                        && k.verify(&rollback_message(&sha), &Signature::from_bytes(&sig))
                            .is_ok()
                });
                if !ok {
                    return Err(refuse(
                        "bad-rollback",
                        "the rollback authorisation is not signed by a trusted key over this bundle"
                            .into(),
                    ));
                }
                true
            }
        };
        let m = cfg.modules.clone().unwrap_or_else(|| self.modules.clone());
        let ledger = self.ledgers.get(name).cloned().unwrap_or_default();
        gate::check_version(&ledger, &b, authorised, m.allow_rollback)
            .map_err(|r| (v.clone(), r))?;
        // The stage it replaces, as the running config sets it up.
        let (pipe, stage) = (&b.manifest.pipeline, &b.manifest.stage);
        let Some((p, s)) = cfg
            .pipelines
            .iter()
            .find(|p| &p.name == pipe)
            .and_then(|p| p.stages.iter().find(|s| &s.name == stage).map(|s| (p, s)))
        else {
            return Err(refuse(
                "no-stage",
                format!("this gateway has no stage {pipe}/{stage} to put the module in"),
            ));
        };
        if let Some((other, _)) = self.ledgers.iter().find(|(n, l)| {
            n.as_str() != name
                && l.active
                    .as_ref()
                    .is_some_and(|a| &a.pipeline == pipe && &a.stage == stage)
        }) {
            return Err(refuse(
                "stage-taken",
                format!("stage {pipe}/{stage} runs pushed module `{other}`; push under that name"),
            ));
        }
        let target = Target {
            limits: cfg.stage_limits(p, s),
            isolation: s.isolation,
            config: serde_cbor::to_vec(&s.config).expect("a TOML table serializes"),
            quarantine_after: p.quarantine_after,
        };
        gate::check_policy(&b, &m.allow, &target).map_err(|r| (v.clone(), r))?;
        let checked = {
            let (b, target) = (b.clone(), target.clone());
            tokio::task::spawn_blocking(move || {
                gate::build_and_test(&Runtime::new(), &b, &target).map(|_| ())
            })
            .await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(r)) => return Err((v, r)),
            Err(e) => {
                return Err(refuse(
                    "invalid",
                    format!("checking the module panicked: {e}"),
                ));
            }
        }
        let c = carry(b.manifest.state);
        Ok((b, c))
    }

    /// Step 5: swap in, keep on disk, start probation.
    async fn swap(&mut self, name: String, b: Bundle, bytes: &[u8], push: &str, c: CarryState) {
        let stage = (b.manifest.pipeline.clone(), b.manifest.stage.clone());
        if let Err(e) = self.disk.save_bundle(&name, &b.sha256, bytes) {
            let v = Some(b.manifest.version.clone());
            return self.result(
                &name,
                &b.sha256,
                push,
                v,
                Outcome::Refused,
                "disk",
                &format!("cannot keep the bundle on disk: {e} (free space, or fix the directory's permissions)"),
            );
        }
        let began = Instant::now();
        match self.request(stage.clone(), Some(pushed(&b)), c).await {
            Ok(()) => {}
            Err(e) => {
                let v = Some(b.manifest.version.clone());
                return self.result(&name, &b.sha256, push, v, Outcome::Refused, "swap", &e);
            }
        }
        let deployed = Deployed {
            push: push.to_string(),
            ..Deployed::of(&b, now_ms())
        };
        let l = self.ledgers.entry(name.clone()).or_default();
        // The one before goes to `previous`, unless it was the version
        // being rolled back to anyway.
        l.previous = l.active.take();
        l.active = Some(deployed.clone());
        l.on_probation = true;
        l.state = b.manifest.state;
        self.save(&name);
        tracing::info!(module = %name, version = %b.manifest.version, pipeline = %stage.0, stage = %stage.1,
            state = b.manifest.state.as_str(), swap_ms = began.elapsed().as_millis() as u64,
            "pushed module swapped in between records; on probation");
        // Probation as the running config sets it (a reload may change it).
        let m = self.config.borrow().modules.clone();
        let m = m.as_ref().unwrap_or(&self.modules);
        let probation = Probation::new(
            m.probation_records,
            m.probation,
            m.max_failure_rate,
            Instant::now(),
        );
        self.probations.insert(
            name,
            OnProbation {
                probation,
                deployed,
            },
        );
    }

    async fn request(
        &self,
        stage: (String, String),
        module: Option<Pushed>,
        carry: CarryState,
    ) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Deploy {
                stage,
                module,
                carry,
                reply,
            })
            .map_err(|_| "the gateway is stopping".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the gateway is stopping".into()))
    }

    /// Check every probation; pass or roll back.
    async fn tick(&mut self) {
        if self.probations.is_empty() {
            return;
        }
        let snap = self.registry.snapshot();
        let now = Instant::now();
        let names: Vec<String> = self.probations.keys().cloned().collect();
        for name in names {
            let p = &self.probations[&name];
            let d = &p.deployed;
            let sample = snap
                .pipelines
                .iter()
                .filter(|x| x.name == d.pipeline)
                .flat_map(|x| &x.stages)
                .find(|s| s.name == d.stage && s.sha256 == d.wasm_sha256)
                .map(|s| Sample {
                    records: s.version_in,
                    failed: s.version_failed,
                    quarantined: s.quarantined,
                })
                .unwrap_or_default();
            tracing::debug!(module = %name, records = sample.records, failed = sample.failed,
                quarantined = sample.quarantined, "probation");
            match p.probation.observe(sample, now) {
                Verdict::Running => {}
                Verdict::Passed(s) => {
                    let p = self.probations.remove(&name).expect("present");
                    if let Some(l) = self.ledgers.get_mut(&name) {
                        l.on_probation = false;
                    }
                    let reason = format!(
                        "probation passed: {} records, {} failed",
                        s.records, s.failed
                    );
                    self.result(
                        &name,
                        &p.deployed.sha256,
                        push_of(&p.deployed),
                        Some(p.deployed.version.clone()),
                        Outcome::Applied,
                        "applied",
                        &reason,
                    );
                    self.next_waiting(&name).await;
                }
                Verdict::Failed(why) => {
                    let p = self.probations.remove(&name).expect("present");
                    self.roll_back(&name, p.deployed, &why).await;
                    self.next_waiting(&name).await;
                }
            }
        }
    }

    /// Swap the previous version back in (or the config's module).
    async fn roll_back(&mut self, name: &str, bad: Deployed, why: &str) {
        let cfg = self.config.borrow().clone();
        let l = self.ledgers.get(name).cloned().unwrap_or_default();
        let back = match &l.previous {
            Some(prev) => match cfg
                .trusted_keys()
                .map_err(|e| e.to_string())
                .and_then(|t| self.disk.open_bundle(name, prev, &t))
            {
                Ok(b) => Some(pushed(&b)),
                Err(e) => {
                    tracing::error!(module = %name, error = %e, "the previous bundle cannot be opened; rolling back to the config's module");
                    None
                }
            },
            None => None,
        };
        let stage = (bad.pipeline.clone(), bad.stage.clone());
        let back_to = back.as_ref().and(l.previous.clone());
        if let Err(e) = self.request(stage, back, carry(l.state)).await {
            tracing::error!(module = %name, error = %e, "rolling back failed");
        }
        let l = self.ledgers.entry(name.to_string()).or_default();
        l.active = back_to;
        l.previous = None;
        l.on_probation = false;
        l.bad.retain(|d| d.sha256 != bad.sha256);
        l.bad.push(bad.clone());
        if l.bad.len() > 8 {
            l.bad.remove(0);
        }
        self.result(
            name,
            &bad.sha256,
            push_of(&bad),
            Some(bad.version.clone()),
            Outcome::RolledBack,
            "probation",
            why,
        );
    }

    async fn next_waiting(&mut self, name: &str) {
        if let Some((bytes, rollback)) = self.waiting.remove(name) {
            Box::pin(self.arrived(name.to_string(), bytes, rollback)).await;
        }
    }

    /// One MQTT message.
    async fn message(&mut self, topic: &str, payload: &[u8]) {
        if payload.is_empty() {
            return; // a retained message being cleared
        }
        let Some(name) = self.module_of(topic) else {
            tracing::warn!(
                topic,
                "a push on a topic that names no valid module; ignored"
            );
            return;
        };
        let piece = match Piece::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                let sha = sha256_hex(payload);
                if !self.judged(&name, &sha, &sha) {
                    self.result(&name, &sha, &sha, None, Outcome::Refused, "format", &e);
                }
                return;
            }
        };
        match self.assembly.offer(&name, piece, Instant::now()) {
            Offer::Incomplete => {}
            Offer::Complete {
                module,
                bytes,
                rollback,
            } => self.arrived(module, bytes, rollback).await,
            Offer::Discarded {
                module,
                bundle,
                reason,
            } => self.result(
                &module,
                &bundle,
                &bundle,
                None,
                Outcome::Refused,
                "partial",
                &reason,
            ),
        }
    }

    fn expire(&mut self) {
        for o in self.assembly.expire(Instant::now()) {
            if let Offer::Discarded {
                module,
                bundle,
                reason,
            } = o
            {
                self.result(
                    &module,
                    &bundle,
                    &bundle,
                    None,
                    Outcome::Refused,
                    "partial",
                    &reason,
                );
            }
        }
    }
}

/// The module name a topic carries, if it is one of this gateway's:
/// `<prefix>/<gw>/modules/<name>[/<i>]` or
/// `<prefix>/fleet/<group>/modules/<name>[/<i>]` for one of its groups.
fn module_of(m: &ModulesConfig, gateway: &str, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix(&m.prefix)?.strip_prefix('/')?;
    let rest = match rest.strip_prefix(&format!("{gateway}/modules/")) {
        Some(r) => r,
        None => {
            let (group, r) = rest.strip_prefix("fleet/")?.split_once('/')?;
            if !m.groups.iter().any(|g| g == group) {
                return None;
            }
            r.strip_prefix("modules/")?
        }
    };
    let (name, index) = match rest.split_once('/') {
        Some((n, i)) => (n, Some(i)),
        None => (rest, None),
    };
    if index.is_some_and(|i| i.parse::<u16>().is_err()) {
        return None;
    }
    crate::deploy::bundle::valid_name(name).then(|| name.to_string())
}

/// The push that brought `d` (older ledgers: its bundle's hash).
fn push_of(d: &Deployed) -> &str {
    if d.push.is_empty() {
        &d.sha256
    } else {
        &d.push
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Take pushes until `stop`.
pub async fn run(mut agent: Agent, mut stop: watch::Receiver<bool>) {
    let filters = agent.modules.filters(&agent.gateway);
    let mut retry = Retry::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let client_id = format!("{}-modules", agent.sink.client_id(&agent.gateway));
        let mut opts = match crate::sinks::mqtt::options(&agent.sink, &agent.gateway, client_id) {
            Ok(o) => o,
            Err(e) => {
                let say = |e: &str| tracing::error!(error = %e, "module pushes cannot connect (the sink's TLS files); retrying");
                if !retry.wait(e.to_string(), say, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        // A piece is at most a bundle, plus its header.
        let max = agent.modules.max_bundle.0 as usize + 4096;
        opts.set_clean_session(true)
            .set_max_packet_size(max, max.max(64 * 1024));
        let (client, mut events) = AsyncClient::new(opts, 16);
        let ended = loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if retry.connected() {
                            tracing::info!("module pushes: connected again");
                        }
                        for f in &filters {
                            let _ = client.try_subscribe(f, QoS::AtLeastOnce);
                        }
                        tracing::info!(filters = ?filters, "taking module pushes");
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = p.topic.clone();
                        agent.message(&topic, &p.payload).await;
                    }
                    Ok(_) => {}
                    Err(e) => break Some(e.to_string()),
                },
                _ = tick.tick() => {
                    agent.tick().await;
                    agent.expire();
                }
                _ = stop.changed() => break None,
            }
        };
        match ended {
            None => {
                let _ = client.try_disconnect();
                return;
            }
            Some(e) => {
                let say = |e: &str| tracing::warn!(error = %e, "module pushes: the broker cannot be reached; retrying with backoff");
                // Probations go on while the broker is away.
                let until = tokio::time::Instant::now() + retry.failed(e, say);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        _ = tick.tick() => agent.tick().await,
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_modules_only_for_this_gateway_and_its_groups() {
        let m: ModulesConfig =
            toml::from_str("keys = [\"x\"]\ngroups = [\"lab\"]\n").expect("a [modules] table");
        let of = |t: &str| module_of(&m, "gw-1", t);
        assert_eq!(of("weir/gw-1/modules/range").as_deref(), Some("range"));
        assert_eq!(of("weir/gw-1/modules/range/3").as_deref(), Some("range"));
        assert_eq!(of("weir/fleet/lab/modules/range").as_deref(), Some("range"));
        assert_eq!(
            of("weir/fleet/lab/modules/range/12").as_deref(),
            Some("range")
        );
        for other in [
            "weir/gw-2/modules/range",
            "weir/fleet/other/modules/range",
            "weir/gw-1/status",
            "other/gw-1/modules/range",
            "weir/gw-1/modules/UPPER",
            "weir/gw-1/modules/range/x",
            "weir/gw-1/modules/",
        ] {
            assert_eq!(of(other), None, "{other}");
        }
    }
}
