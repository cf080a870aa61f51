//! The MQTT sink: publishes queued records at QoS 1 to a broker (the
//! cloud, or a local republish) and removes an entry from its queue only
//! when the broker's PUBACK for it arrives.
//!
//! The client uses a clean session: unacknowledged publishes live in the
//! durable queue, not in the client. On any disconnect everything in
//! flight is forgotten and sending restarts from the head of the queue, so
//! entries whose PUBACK was lost are sent again under the same message id.
//!
//! rumqttc assigns packet ids as it sends; its `Outgoing::Publish(pkid)`
//! events come in request order, which maps each packet id to the entries
//! of its publish (`sent` below).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;

use super::poison::{Poison, Verdict};
use super::{Rate, Render, Rendered, Selector, SinkConfig, SinkMetrics};
use crate::common::tls;
use crate::store::{Queue, Store};

/// One publish: its entries, payload size, and when it went out.
struct Publish {
    seqs: Vec<u64>,
    /// The oldest entry's enqueue time (ms since the epoch).
    enqueued_ms: u64,
    bytes: usize,
    sent_at: Option<Instant>,
}

/// The connection options of an MQTT sink's broker, as client `client_id`:
/// host, port, keep-alive, credentials and TLS (its files read now).
pub fn options(
    cfg: &SinkConfig,
    gateway_id: &str,
    client_id: String,
) -> Result<MqttOptions, tls::TlsError> {
    let host = cfg.host.clone().unwrap_or_default();
    let mut opts = MqttOptions::new(client_id, host, cfg.port());
    opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)));
    if let Some(user) = cfg.username(gateway_id) {
        opts.set_credentials(user, cfg.password.clone().unwrap_or_default());
    }
    if let Some(files) = &cfg.tls {
        opts.set_transport(tls::transport(files)?);
    }
    Ok(opts)
}

/// Publish `queue` to the broker of `cfg` until `stop` (then keep sending
/// for `drain_on_stop` at most).
pub async fn run(
    cfg: SinkConfig,
    gateway_id: String,
    queue: Arc<Queue>,
    store: Arc<Store>,
    metrics: Arc<SinkMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let host = cfg.host.clone().unwrap_or_default();
    let port = cfg.port();
    let window = cfg.inflight() as usize;
    let max_payload = cfg.max_payload() as usize;
    // A new client for every connection attempt: the TLS files are read
    // again each time, so a file fixed at run time is picked up without a
    // restart. `None`: the files cannot be used (why, logged once per
    // distinct problem); the queue keeps the records meanwhile.
    let mut tls_logged: Option<String> = None;
    let mut connect = |down: bool| -> Option<(AsyncClient, EventLoop)> {
        let mut opts = match options(&cfg, &gateway_id, cfg.client_id(&gateway_id)) {
            Ok(o) => {
                if cfg.tls.is_some() && tls_logged.take().is_some() {
                    tracing::info!(sink = %cfg.name, "the sink's TLS files are usable again; connecting");
                }
                o
            }
            Err(e) => {
                let e = e.to_string();
                if tls_logged.as_ref() != Some(&e) {
                    tracing::error!(sink = %cfg.name, host = %host, port, error = %e, down,
                        "the sink cannot connect: its TLS files cannot be used; the queue keeps the records, retrying with backoff");
                    tls_logged = Some(e);
                }
                return None;
            }
        };
        tracing::debug!(sink = %cfg.name, host = %host, port, client_id = %opts.client_id(),
            user = cfg.username(&gateway_id).unwrap_or_default(), tls = cfg.tls.is_some(), "connecting");
        opts.set_clean_session(true)
            .set_inflight(window as u16)
            .set_max_packet_size(65_536, max_payload + 65_536);
        let (client, mut events) = AsyncClient::new(opts, window + 16);
        // Each publish leaves at once (rumqttc writes one per request):
        // Nagle would hold it for the broker's delayed ACK.
        events.network_options.set_tcp_nodelay(true);
        Some((client, events))
    };
    let mut backoff = Duration::from_millis(250);
    let mut retry_at: Option<Instant> = None;
    let mut down_since: Option<Instant> = None;
    // The client and its event loop, made and dropped together.
    let mut conn = connect(false);
    // This outage has been logged and counted.
    let mut announced = conn.is_none();
    if conn.is_none() {
        metrics.health.down("its TLS files cannot be used");
        down_since = Some(Instant::now());
        metrics.outages.fetch_add(1, Relaxed);
        retry_at = Some(Instant::now() + crate::common::backoff::jittered(backoff));
    }
    let render = Render::new(&cfg, &gateway_id);
    let mut selector = Selector::new(cfg.live_first);
    let mut rate = Rate::new(cfg.rate);
    // Requested, waiting for rumqttc to assign a packet id.
    let mut requested: VecDeque<Publish> = VecDeque::new();
    // Sent, waiting for the PUBACK.
    let mut sent: HashMap<u16, Publish> = HashMap::new();
    let mut connected = false;
    let mut stop_by: Option<Instant> = None;
    let mut last_expiry = Instant::now();
    let mut poison = Poison::new(cfg.dead_letter_after);
    let mut warned_suspect: Option<u64> = None;
    let mut next_summary: Option<Instant> = None;
    let mut attempts_down = 0u64;

    loop {
        let now = Instant::now();
        if now.duration_since(last_expiry) > Duration::from_secs(1) {
            queue.expire(crate::record::now_ms());
            last_expiry = now;
        }
        let mut wake_at = now + Duration::from_secs(1);
        // Refill the window in batches, not a slot per PUBACK: each read
        // of the queue costs a scan, whatever it returns.
        let in_flight = requested.len() + sent.len();
        let refill = in_flight == 0
            || poison.window(window) - in_flight.min(poison.window(window))
                >= (poison.window(window) / 4).max(1);
        if connected && refill {
            // Fill the in-flight window: read what the free slots can
            // carry at once, publish group by group, give back the rest.
            'fill: while requested.len() + sent.len() < poison.window(window) {
                if let Some(t) = rate.wait(Instant::now()) {
                    wake_at = wake_at.min(t);
                    break;
                }
                let room = poison.window(window) - requested.len() - sent.len();
                // Under a rate cap, or probing for a poison entry, one
                // publish at a time (probing: one entry).
                let slots = if cfg.rate.records_per_s.is_some() || cfg.rate.bytes_per_s.is_some() {
                    1
                } else {
                    room
                };
                let per = if poison.probing() { 1 } else { cfg.batch };
                // The window is bounded in bytes too (`inflight_bytes`):
                // what is read, rendered and handed to the client at once.
                let held: usize = requested.iter().chain(sent.values()).map(|p| p.bytes).sum();
                let budget = cfg.inflight_bytes.0.saturating_sub(held as u64);
                if budget == 0 {
                    break;
                }
                let entries = selector.take(&queue, store.durable_seq(), slots * per, budget);
                if entries.is_empty() {
                    break;
                }
                let mut rendered: Vec<Rendered> = Vec::with_capacity(entries.len());
                for r in entries.iter().map(|e| render.render(e)) {
                    match &r.refused {
                        Some(why) => dead_letter(&cfg.name, &queue, &render, r.seq, 0, why),
                        None => rendered.push(r),
                    }
                }
                let groups = batches(&render, rendered, per, max_payload);
                let mut used = 0;
                for group in groups {
                    if used == slots {
                        selector.unread(group[0].seq);
                        break 'fill;
                    }
                    let payload = render.encode(&group);
                    if payload.len() > max_payload {
                        // Only a single record can be this large: it can never go.
                        let why = format!(
                            "the payload is {} bytes, over the sink's max_payload of {max_payload}",
                            payload.len()
                        );
                        dead_letter(&cfg.name, &queue, &render, group[0].seq, 0, &why);
                        continue;
                    }
                    let seqs: Vec<u64> = group.iter().map(|r| r.seq).collect();
                    let bytes = payload.len();
                    let Some((c, _)) = conn.as_ref() else {
                        selector.unread(seqs[0]);
                        break 'fill;
                    };
                    if let Err(e) =
                        c.try_publish(group[0].topic.clone(), QoS::AtLeastOnce, false, payload)
                    {
                        // Cannot happen with the window below the channel size;
                        // if it does, the entries are read again.
                        tracing::warn!(sink = %cfg.name, error = %e, "publish request refused");
                        selector.unread(seqs[0]);
                        break 'fill;
                    }
                    used += 1;
                    rate.spend(Instant::now(), seqs.len(), bytes);
                    let enqueued_ms = group.iter().map(|r| r.enqueued_ms).min().unwrap_or(0);
                    requested.push_back(Publish {
                        seqs,
                        enqueued_ms,
                        bytes,
                        sent_at: None,
                    });
                }
            }
        }
        if let Some(by) = stop_by {
            let idle = requested.is_empty()
                && sent.is_empty()
                && (!connected || queue.read(0, store.durable_seq(), 1).is_empty());
            if idle || Instant::now() >= by {
                break;
            }
            wake_at = wake_at.min(by);
        }
        if let Some(t) = retry_at {
            wake_at = wake_at.min(t);
        }
        // A long outage: one line every SUMMARY_EVERY, not one per attempt.
        if let (Some(since), Some(at)) = (down_since, next_summary) {
            if Instant::now() >= at {
                tracing::warn!(sink = %cfg.name, host = %host, port,
                    down_s = since.elapsed().as_secs(), attempts = attempts_down, queued = queue.len(),
                    "sink broker still unreachable; records stay in the buffer");
                next_summary = Some(at + SUMMARY_EVERY);
            }
            wake_at = wake_at.min(next_summary.unwrap_or(at));
        }
        let poll = async {
            match conn.as_mut() {
                Some((_, events)) => events.poll().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            e = poll, if retry_at.is_none() => Some(e),
            _ = queue.wake.notified(), if connected => None,
            _ = tokio::time::sleep_until(wake_at.into()) => {
                if retry_at.is_some_and(|t| Instant::now() >= t) {
                    retry_at = None;
                    if conn.is_none() {
                        attempts_down += 1;
                        conn = connect(true);
                        if conn.is_none() {
                            retry_at = Some(Instant::now() + crate::common::backoff::jittered(backoff));
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
                None
            }
            r = stop.changed(), if stop_by.is_none() => {
                let _ = r;
                stop_by = Some(Instant::now() + cfg.drain_on_stop);
                None
            }
        };
        let Some(event) = event else { continue };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                backoff = Duration::from_millis(250);
                metrics.connects.fetch_add(1, Relaxed);
                metrics.health.up();
                selector.rewind(store.next_seq());
                next_summary = None;
                attempts_down = 0;
                match down_since.take() {
                    Some(_) if !announced => {}
                    Some(t) => tracing::info!(sink = %cfg.name, host = %host, port,
                        down_s = t.elapsed().as_secs_f32(), queued = queue.len(),
                        "sink broker reachable again; draining the buffer"),
                    None => {
                        tracing::info!(sink = %cfg.name, host = %host, port, queued = queue.len(),
                        "sink connected")
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(mut p) = requested.pop_front() {
                    metrics.sends.fetch_add(1, Relaxed);
                    p.sent_at = Some(Instant::now());
                    sent.insert(pkid, p);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(p) = sent.remove(&ack.pkid) {
                    for s in &p.seqs {
                        queue.delivered(*s);
                        poison.acked(*s);
                    }
                    metrics.records.fetch_add(p.seqs.len() as u64, Relaxed);
                    metrics.bytes.fetch_add(p.bytes as u64, Relaxed);
                    metrics.latency.since_ms(p.enqueued_ms, p.seqs.len());
                }
            }
            Ok(_) => {}
            Err(e) => {
                let resent: usize = requested
                    .iter()
                    .chain(sent.values())
                    .map(|p| p.seqs.len())
                    .sum();
                queue.metrics.resent.fetch_add(resent as u64, Relaxed);
                // The oldest entry sent on this connection and not acknowledged.
                let oldest = sent
                    .values()
                    .filter_map(|p| Some((p.seqs[0], p.sent_at?.elapsed())))
                    .min_by_key(|o| o.0);
                let newest = sent.values().flat_map(|p| p.seqs.last()).max().copied();
                let verdict = if connected {
                    poison.dropped(oldest, newest.unwrap_or(0))
                } else {
                    Verdict::Unrelated
                };
                requested.clear();
                sent.clear();
                connected = false;
                // Blamed on an entry: not an outage (yet).
                let blamed = verdict != Verdict::Unrelated;
                match verdict {
                    Verdict::Suspect { seq, attempts } if warned_suspect != Some(seq) => {
                        warned_suspect = Some(seq);
                        tracing::warn!(sink = %cfg.name, host = %host, port, msg_id = %render.msg_id(seq),
                            attempts, dead_letter_after = cfg.dead_letter_after, error = %explain(&e),
                            "the broker closed the connection right after this record; to the sink's dead-letter queue if it keeps failing");
                    }
                    Verdict::DeadLetter { seq, attempts } => {
                        let why = format!(
                            "the broker closed the connection right after it, {attempts} times in a row ({})",
                            explain(&e)
                        );
                        dead_letter(&cfg.name, &queue, &render, seq, attempts, &why);
                        backoff = Duration::from_millis(250);
                    }
                    _ => {}
                }
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    metrics.health.down(explain(&e));
                    announced = false;
                }
                // Once per outage. A drop blamed on a record is not one
                // yet; if the reconnects then fail too, the broker is gone.
                if !blamed && !announced {
                    announced = true;
                    metrics.outages.fetch_add(1, Relaxed);
                    next_summary = Some(Instant::now() + SUMMARY_EVERY);
                    tracing::warn!(sink = %cfg.name, host = %host, port, error = %explain(&e),
                        in_flight = resent, "sink broker unreachable; records stay in the buffer, reconnecting with backoff");
                }
                if stop_by.is_some() {
                    break;
                }
                // Reconnect with a new client (see `connect`).
                if let Some((c, _)) = conn.take() {
                    let _ = c.try_disconnect();
                }
                retry_at = Some(Instant::now() + crate::common::backoff::jittered(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    if let Some((c, _)) = conn {
        let _ = c.try_disconnect();
    }
}

/// How often a long outage is summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// Move `seq` to the sink's dead-letter queue, saying so once.
fn dead_letter(sink: &str, queue: &Queue, render: &Render, seq: u64, attempts: u32, why: &str) {
    if queue.dead_letter(seq, attempts, why) {
        tracing::error!(sink = %sink, msg_id = %render.msg_id(seq), seq, reason = %why,
            "record moved to the sink's dead-letter queue; the queue moves on (see `weir store dead-letters list --sink {sink}`)");
    }
}

/// Split rendered records into publishes: consecutive records with the
/// same topic, at most `batch` of them, within `max_payload`.
fn batches(
    render: &Render,
    rendered: Vec<Rendered>,
    batch: usize,
    max_payload: usize,
) -> Vec<Vec<Rendered>> {
    let mut out: Vec<Vec<Rendered>> = Vec::new();
    for r in rendered {
        if let Some(last) = out.last_mut()
            && last[0].topic == r.topic
            && last.len() < batch
        {
            last.push(r);
            if render.encode(last).len() > max_payload {
                let r = last.pop().expect("just pushed");
                out.push(vec![r]);
            }
            continue;
        }
        out.push(vec![r]);
    }
    out
}

/// A connection error, with a hint for the usual TLS mistakes.
fn explain(e: &rumqttc::ConnectionError) -> String {
    let s = e.to_string();
    let hint = if s.contains("UnknownIssuer") || s.contains("invalid peer certificate") {
        " (the broker's certificate is not signed by `tls.ca`)"
    } else if s.contains("CertificateRequired") || s.contains("certificate required") {
        " (the broker requires a client certificate: set `tls.cert` and `tls.key`)"
    } else if s.contains("NotValidForName") {
        " (the broker's certificate does not name `host`)"
    } else {
        ""
    };
    format!("{s}{hint}")
}
