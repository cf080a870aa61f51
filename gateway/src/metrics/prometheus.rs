//! `/metrics`: the registry in the OpenMetrics text format (which
//! Prometheus scrapes), encoded by `prometheus-client`, served over plain
//! HTTP on `[metrics] listen` (loopback by default).
//!
//! Every family is listed in the README ("Metrics").

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Registry, State, lock};

type Labels = Vec<(&'static str, String)>;

struct Gateway(Arc<Registry>);

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gateway")
    }
}

fn family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    let value = |v: f64, e: prometheus_client::encoding::MetricEncoder<'_>| match kind {
        MetricType::Counter => ConstCounter::new(v as u64).encode(e),
        _ => ConstGauge::new(v).encode(e),
    };
    let mut rows = rows.into_iter().peekable();
    while let Some((labels, v)) = rows.next() {
        if labels.is_empty() && rows.peek().is_none() {
            // One series without labels: `name value`, not `name{} value`.
            return value(v, m);
        }
        value(v, m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one_hot(state: State) -> impl Iterator<Item = (&'static str, f64)> {
    State::ALL
        .into_iter()
        .map(move |s| (s.as_str(), if s == state { 1.0 } else { 0.0 }))
}

impl Collector for Gateway {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        use MetricType::{Counter as C, Gauge as G};
        let r = &self.0;
        let s = r.snapshot();
        let e = &mut enc;
        family(
            e,
            "weir_build_info",
            "Weir's version (always 1)",
            G,
            [(vec![("version", s.version.to_string())], 1.0)],
        )?;
        family(
            e,
            "weir_uptime_seconds",
            "Seconds since weir serve started",
            G,
            [(vec![], s.uptime_s as f64)],
        )?;
        family(
            e,
            "weir_reloads",
            "Reloads applied",
            C,
            [(vec![], s.reloads as f64)],
        )?;
        family(
            e,
            "weir_reloads_refused",
            "Reloads refused (the running config kept running)",
            C,
            [(vec![], s.reloads_refused as f64)],
        )?;

        // Sources.
        let src = |f: &dyn Fn(&super::SourceStats) -> u64| {
            s.sources
                .iter()
                .map(|x| (vec![("source", x.name.clone())], f(x) as f64))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "weir_source_messages",
            "MQTT messages (serial: bytes) read",
            C,
            src(&|x| x.messages),
        )?;
        family(
            e,
            "weir_source_records",
            "Records handed to the pipelines",
            C,
            src(&|x| x.records),
        )?;
        family(
            e,
            "weir_source_connects",
            "Connections made (serial: device opens)",
            C,
            src(&|x| x.connects),
        )?;
        family(
            e,
            "weir_source_outages",
            "Times the broker or device was lost",
            C,
            src(&|x| x.outages),
        )?;
        family(
            e,
            "weir_source_restarts",
            "Times the supervisor restarted the source task",
            C,
            src(&|x| x.restarts),
        )?;
        family(
            e,
            "weir_source_rejected",
            "Input rejected, by kind",
            C,
            s.sources.iter().flat_map(|x| {
                x.rejected.iter().map(|(k, v)| {
                    (
                        vec![("source", x.name.clone()), ("kind", k.clone())],
                        *v as f64,
                    )
                })
            }),
        )?;
        family(
            e,
            "weir_source_state",
            "1 for the source task's current state",
            G,
            s.sources.iter().flat_map(|x| {
                one_hot(x.state).map(|(st, v)| {
                    (
                        vec![("source", x.name.clone()), ("state", st.to_string())],
                        v,
                    )
                })
            }),
        )?;

        // Pipelines and stages.
        let pipe = |f: &dyn Fn(&super::PipelineStats) -> u64| {
            s.pipelines
                .iter()
                .map(|p| (vec![("pipeline", p.name.clone())], f(p) as f64))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "weir_pipeline_records_in",
            "Records into the pipeline",
            C,
            pipe(&|p| p.records_in),
        )?;
        family(
            e,
            "weir_pipeline_records_out",
            "Records out of its last stage",
            C,
            pipe(&|p| p.records_out),
        )?;
        family(
            e,
            "weir_pipeline_dead_lettered",
            "Failed records sent to dead-letter",
            C,
            pipe(&|p| p.dead_lettered),
        )?;
        family(
            e,
            "weir_pipeline_policy_dropped",
            "Failed records dropped by policy",
            C,
            pipe(&|p| p.policy_dropped),
        )?;
        family(
            e,
            "weir_pipeline_policy_passed",
            "Failed records passed on by policy",
            C,
            pipe(&|p| p.policy_passed),
        )?;
        let stages: Vec<(Labels, &super::StageStats)> = s
            .pipelines
            .iter()
            .flat_map(|p| {
                p.stages.iter().map(|st| {
                    (
                        vec![("pipeline", p.name.clone()), ("stage", st.name.clone())],
                        st,
                    )
                })
            })
            .collect();
        let stage = |f: &dyn Fn(&super::StageStats) -> f64| {
            stages
                .iter()
                .map(|(l, st)| (l.clone(), f(st)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "weir_stage_records_in",
            "Records given to the stage",
            C,
            stage(&|x| x.records_in as f64),
        )?;
        family(
            e,
            "weir_stage_records_out",
            "Records the stage emitted",
            C,
            stage(&|x| x.records_out as f64),
        )?;
        family(
            e,
            "weir_stage_dropped",
            "Records the stage processed and emitted nothing for",
            C,
            stage(&|x| x.dropped as f64),
        )?;
        family(
            e,
            "weir_stage_fuel_used",
            "Fuel the stage used",
            C,
            stage(&|x| x.fuel_used as f64),
        )?;
        family(
            e,
            "weir_stage_quarantined",
            "1 while the stage is quarantined",
            G,
            stage(&|x| f64::from(u8::from(x.quarantined))),
        )?;
        family(
            e,
            "weir_stage_failed",
            "Records the stage failed on, by kind",
            C,
            stages.iter().flat_map(|(l, st)| {
                st.failed.iter().map(|(k, v)| {
                    let mut l = l.clone();
                    l.push(("kind", k.to_string()));
                    (l, *v as f64)
                })
            }),
        )?;
        family(
            e,
            "weir_stage_module_info",
            "The module a stage runs: its file, SHA-256 and pushed version (always 1)",
            G,
            stages.iter().map(|(l, st)| {
                let mut l = l.clone();
                l.push(("module", st.module.clone()));
                l.push(("sha256", st.sha256.clone()));
                l.push(("version", st.version.clone().unwrap_or_default()));
                (l, 1.0)
            }),
        )?;

        // Sinks and their buffers.
        let sink = |f: &dyn Fn(&super::SinkStats) -> f64| {
            s.sinks
                .iter()
                .map(|x| (vec![("sink", x.name.clone())], f(x)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "weir_sink_enqueued",
            "Entries put into the sink's queue",
            C,
            sink(&|x| x.enqueued as f64),
        )?;
        family(
            e,
            "weir_sink_delivered",
            "Entries delivered (PUBACK, or written and flushed)",
            C,
            sink(&|x| x.delivered as f64),
        )?;
        family(
            e,
            "weir_sink_delivered_bytes",
            "Payload bytes delivered",
            C,
            sink(&|x| x.delivered_bytes as f64),
        )?;
        family(
            e,
            "weir_sink_resent",
            "Entries sent again after a reconnect",
            C,
            sink(&|x| x.resent as f64),
        )?;
        family(
            e,
            "weir_sink_dead_lettered",
            "Entries moved to the sink's dead-letter queue",
            C,
            sink(&|x| x.dead_lettered as f64),
        )?;
        family(
            e,
            "weir_sink_blocked",
            "Times the pipelines waited for room (block)",
            C,
            sink(&|x| x.blocked as f64),
        )?;
        family(
            e,
            "weir_sink_connects",
            "Connections made",
            C,
            sink(&|x| x.connects as f64),
        )?;
        family(
            e,
            "weir_sink_outages",
            "Times the sink lost its broker or file",
            C,
            sink(&|x| x.outages as f64),
        )?;
        family(
            e,
            "weir_sink_restarts",
            "Times the supervisor restarted the sink task",
            C,
            sink(&|x| x.restarts as f64),
        )?;
        family(
            e,
            "weir_sink_queue_entries",
            "Entries in the queue now",
            G,
            sink(&|x| x.queued as f64),
        )?;
        family(
            e,
            "weir_sink_queue_bytes",
            "Bytes in the queue now",
            G,
            sink(&|x| x.queued_bytes as f64),
        )?;
        family(
            e,
            "weir_sink_oldest_age_seconds",
            "Age of the oldest queued entry",
            G,
            sink(&|x| x.oldest_age_s),
        )?;
        family(
            e,
            "weir_sink_dropped",
            "Entries dropped, by reason (drop_oldest, drop_newest, expired, damaged)",
            C,
            s.sinks.iter().flat_map(|x| {
                x.dropped.iter().map(|(k, v)| {
                    (
                        vec![("sink", x.name.clone()), ("reason", k.to_string())],
                        *v as f64,
                    )
                })
            }),
        )?;
        family(
            e,
            "weir_sink_state",
            "1 for the sink task's current state",
            G,
            s.sinks.iter().flat_map(|x| {
                one_hot(x.state)
                    .map(|(st, v)| (vec![("sink", x.name.clone()), ("state", st.to_string())], v))
            }),
        )?;
        {
            let mut m = e.encode_descriptor(
                "weir_sink_delivery_latency_seconds",
                "From entering the buffer to delivered",
                None,
                MetricType::Histogram,
            )?;
            for k in lock(&r.sinks).iter() {
                let labels: Labels = vec![("sink", k.name.clone())];
                k.counters.latency.0.encode(m.encode_family(&labels)?)?;
            }
        }

        // The store and the intake.
        let one = |v: u64| [(Labels::new(), v as f64)];
        family(
            e,
            "weir_store_syncs",
            "Batches made durable",
            C,
            one(s.store.syncs),
        )?;
        family(
            e,
            "weir_store_sync_failures",
            "Syncs that failed and were retried",
            C,
            one(s.store.sync_failures),
        )?;
        family(
            e,
            "weir_store_reopens",
            "Times the store was reopened after a failing disk",
            C,
            one(s.store.reopens),
        )?;
        family(
            e,
            "weir_store_disk_bytes",
            "The store's size on disk",
            G,
            one(s.store.bytes_on_disk),
        )?;
        family(
            e,
            "weir_intake_redelivered",
            "Broker redeliveries recognised, not processed twice",
            C,
            one(s.store.redelivered),
        )?;
        family(
            e,
            "weir_intake_abandoned",
            "Inputs left unprocessed at a stop",
            C,
            one(s.store.abandoned),
        )?;
        let m = e.encode_descriptor(
            "weir_store_sync_duration_seconds",
            "How long each sync took",
            None,
            MetricType::Histogram,
        )?;
        r.sync.sync_time.0.encode(m)?;
        Ok(())
    }
}

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Arc<Registry>) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(Gateway(registry.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// Most bytes of a request head; most time to send it.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `GET /metrics` on `listener` until the task is dropped. Each
/// connection gets one response and is closed; a slow or oversized
/// request is cut off.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_REQUEST];
            let mut len = 0;
            let path = tokio::time::timeout(REQUEST_TIMEOUT, async {
                loop {
                    let n = conn.read(&mut buf[len..]).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    len += n;
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(&buf[..len]) {
                        Ok(httparse::Status::Complete(_)) => {
                            return Some((req.method?.to_string(), req.path?.to_string()));
                        }
                        Ok(httparse::Status::Partial) if len < buf.len() => continue,
                        _ => return Some((String::new(), String::new())),
                    }
                }
            })
            .await;
            let Ok(Some((method, path))) = path else {
                return;
            };
            let (status, ctype, body) = match (method.as_str(), path.split('?').next()) {
                ("GET", Some("/metrics")) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    render(&registry),
                ),
                ("GET", _) => (
                    "404 Not Found",
                    "text/plain",
                    "only /metrics is here\n".into(),
                ),
                _ => (
                    "400 Bad Request",
                    "text/plain",
                    "a GET request for /metrics, please\n".into(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
