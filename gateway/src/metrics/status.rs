//! Status over MQTT: a retained message that says what this gateway runs
//! and how it is doing, on `weir/<gateway-id>/status` at the cloud broker
//! (an MQTT sink's), published every `every` and whenever a task changes
//! state or a reload lands. A last will marks the gateway offline if it
//! vanishes; a clean stop publishes the same.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::common::backoff::Retry;
use crate::metrics::{Registry, Snapshot};
use crate::sinks::SinkConfig;

/// `[status]`: where and how often to publish the status message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// The MQTT sink whose broker gets the status (default: the first
    /// MQTT sink). It connects as that sink's client id plus `-status`.
    pub sink: Option<String>,
    /// The topic (default `weir/<gateway-id>/status`); `{gateway_id}` is
    /// replaced by the gateway id.
    pub topic: Option<String>,
    /// Publish at least this often (on change as well).
    #[serde(
        default = "default_every",
        deserialize_with = "crate::common::duration::duration"
    )]
    pub every: Duration,
}

fn default_every() -> Duration {
    Duration::from_secs(60)
}

impl StatusConfig {
    /// The topic for gateway `id`.
    pub fn topic(&self, id: &str) -> String {
        self.topic
            .as_deref()
            .unwrap_or("weir/{gateway_id}/status")
            .replace("{gateway_id}", id)
    }
}

/// The status message: what runs and how it is doing.
pub fn message(s: &Snapshot) -> Value {
    json!({
        "gateway": s.gateway,
        "state": "online",
        "version": s.version,
        "uptime_s": s.uptime_s,
        "at_ms": crate::record::now_ms(),
        "reloads": s.reloads,
        "groups": s.groups,
        "pushed": s.deployments.iter().map(|(name, l)| (name.clone(), pushed(l))).collect::<serde_json::Map<_, _>>(),
        "modules": s.pipelines.iter().flat_map(|p| p.stages.iter().map(move |st| json!({
            "pipeline": p.name, "stage": st.name, "module": st.module, "sha256": st.sha256,
            "version": st.version,
            "quarantined": st.quarantined,
        }))).collect::<Vec<_>>(),
        "sources": s.sources.iter().map(|x| json!({
            "name": x.name, "state": x.state, "reason": x.reason,
        })).collect::<Vec<_>>(),
        "sinks": s.sinks.iter().map(|k| json!({
            "name": k.name, "state": k.state, "reason": k.reason,
            "queued": k.queued, "bytes": k.queued_bytes, "oldest_age_s": k.oldest_age_s,
        })).collect::<Vec<_>>(),
    })
}

/// One pushed module in the status message: what runs, what ran before,
/// and the last results (newest last).
fn pushed(l: &crate::deploy::ledger::Ledger) -> Value {
    let d = |d: &Option<crate::deploy::ledger::Deployed>| {
        d.as_ref().map(|d| {
            json!({
                "version": d.version.to_string(), "sha256": d.sha256,
                "pipeline": d.pipeline, "stage": d.stage,
            })
        })
    };
    json!({
        "active": d(&l.active),
        "previous": d(&l.previous),
        "on_probation": l.on_probation,
        "results": l.results.iter().rev().take(8).rev().map(|r| json!({
            "sha256": r.sha256,
            "push": if r.push.is_empty() { &r.sha256 } else { &r.push },
            "version": r.version.as_ref().map(ToString::to_string),
            "outcome": r.outcome.as_str(),
            "code": r.code,
            "reason": r.reason,
            "previous": r.previous.as_ref().map(ToString::to_string),
            "at_ms": r.at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The last will: offline, with the groups (so a fleet push still counts
/// the gateway as a member, to reach when it returns).
fn offline(gateway: &str, groups: &[String]) -> Vec<u8> {
    json!({ "gateway": gateway, "state": "offline", "groups": groups })
        .to_string()
        .into_bytes()
}

/// A clean stop: the whole last status, marked offline.
fn stopped(s: &Snapshot) -> Vec<u8> {
    let mut m = message(s);
    m["state"] = json!("offline");
    m.to_string().into_bytes()
}

/// Publish the status until `stop`, then publish "offline" and disconnect.
pub async fn run(
    cfg: StatusConfig,
    sink: SinkConfig,
    gateway: String,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let topic = cfg.topic(&gateway);
    let mut retry = Retry::default();
    loop {
        let opts = crate::sinks::mqtt::options(
            &sink,
            &gateway,
            format!("{}-status", sink.client_id(&gateway)),
        );
        let mut opts = match opts {
            Ok(o) => o,
            Err(e) => {
                let say = |e: &str| tracing::error!(topic = %topic, error = %e, "status over MQTT cannot connect (the sink's TLS files); retrying");
                if !retry.wait(e.to_string(), say, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        opts.set_clean_session(true).set_last_will(LastWill::new(
            &topic,
            offline(&gateway, &registry.snapshot().groups),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut events) = AsyncClient::new(opts, 8);
        let mut seen = u64::MAX;
        let mut next = Instant::now();
        let mut connected = false;
        let ended = loop {
            let changes = registry.changes.load(Relaxed);
            if connected && (changes != seen || Instant::now() >= next) {
                seen = changes;
                next = Instant::now() + cfg.every;
                let body = message(&registry.snapshot()).to_string();
                let _ = client.try_publish(&topic, QoS::AtLeastOnce, true, body);
            }
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        if retry.connected() {
                            tracing::info!(topic = %topic, "status over MQTT connected again");
                        }
                        seen = u64::MAX;
                    }
                    Ok(_) => {}
                    Err(e) => break Some(e.to_string()),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => break None,
            }
        };
        match ended {
            None => {
                // A clean stop: say so, and leave without the will.
                if connected {
                    let _ = client.try_publish(
                        &topic,
                        QoS::AtLeastOnce,
                        true,
                        stopped(&registry.snapshot()),
                    );
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while events.poll().await.is_ok() {}
                    })
                    .await;
                }
                return;
            }
            Some(e) => {
                let say = |e: &str| tracing::warn!(topic = %topic, error = %e, "status over MQTT cannot reach its broker; retrying with backoff");
                if !retry.wait(e, say, &mut stop).await {
                    return;
                }
            }
        }
    }
}
