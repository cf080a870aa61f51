//! The MQTT source's I/O (rumqttc): connect with a stable client id and a
//! persistent session, subscribe, turn messages into records, hand them on
//! (waiting when the pipelines are busy: backpressure reaches the broker as
//! unacknowledged in-flight messages) and acknowledge each QoS 1/2 message
//! only once the pipeline thread has handled it. Reconnects with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::convert::{PayloadFormat, TopicFields, decode_payload, to_record};
use crate::common::ByteSize;
use crate::common::tls::{self, TlsFiles};
use crate::record::now_ms;
use crate::sources::item::{Ack, Item, Origin};

/// `[[source]] type = "mqtt"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Unique source name.
    pub name: String,
    /// Broker host.
    pub host: String,
    /// Broker port (default 1883, or 8883 with `tls`).
    pub port: Option<u16>,
    /// MQTT protocol: 4 (3.1.1) or 5.
    #[serde(default = "default_version")]
    pub version: u8,
    /// Client id; stable across restarts so the session persists.
    /// Default: `weir-<gateway id>-<source name>`.
    pub client_id: Option<String>,
    /// Start a clean session (drops messages queued while away). Default false.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect, seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry: u32,
    /// Keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u64,
    /// Most unacknowledged QoS 1/2 messages in flight (announced to MQTT 5
    /// brokers as the receive maximum).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Subscriptions.
    pub subscribe: Vec<Subscription>,
    /// Payload format.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Largest payload accepted.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// MQTT 3.1.1: the largest message the source reads at all. One over
    /// `max_payload` but within this is read once, counted (`too_large`)
    /// and acknowledged, so the broker does not redeliver it at every
    /// reconnect; one over this cannot be taken (logged with the fix).
    #[serde(default = "default_max_packet")]
    pub max_packet: ByteSize,
    /// Topic pattern whose `{name}` segments become payload fields, e.g.
    /// `sensors/{id}/telemetry`.
    pub topic_fields: Option<String>,
    /// Send malformed messages to dead-letter (else they are counted, logged
    /// and dropped).
    #[serde(default)]
    pub dead_letter: bool,
    /// User name and password.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// A file holding the password (instead of `password`).
    pub password_file: Option<std::path::PathBuf>,
    /// TLS: CA, and client certificate and key for mTLS (PEM files).
    pub tls: Option<TlsFiles>,
}

/// One subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Topic filter (wildcards allowed).
    pub filter: String,
    /// QoS 0, 1 or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
}

fn default_version() -> u8 {
    5
}
fn default_session_expiry() -> u32 {
    86_400
}
fn default_keep_alive() -> u64 {
    30
}
fn default_inflight() -> u16 {
    100
}
fn default_qos() -> u8 {
    1
}
fn default_max_packet() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_max_payload() -> ByteSize {
    ByteSize(256 << 10)
}

/// Counters of one MQTT source.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    /// Messages received.
    pub messages: AtomicU64,
    /// Records handed to the pipelines.
    pub records: AtomicU64,
    /// Connections made (1 + reconnects).
    pub connects: AtomicU64,
    /// Times the broker was lost or unreachable.
    pub outages: AtomicU64,
    /// Acknowledgements that arrived after the source stopped (the broker
    /// redelivers those messages: duplicates, never loss).
    pub ack_failures: Arc<AtomicU64>,
    /// Malformed messages, by kind.
    pub rejected: std::sync::Mutex<HashMap<&'static str, u64>>,
    /// Up, down (and why), restarts.
    pub health: crate::common::health::Health,
}

/// Capacity of the client's request queue.
///
/// Acknowledgements come back from the pipeline thread over an unbounded
/// channel to the source task, which moves them into this queue with
/// `try_ack` and keeps what does not fit for the next round (after `poll`
/// has drained the queue): none is dropped, and the event loop never waits
/// on itself. There are never more pending than messages in flight, which
/// `inflight` bounds (MQTT 5: the receive maximum we announce; 3.1.1: the
/// broker's in-flight limit).
fn request_capacity(inflight: u16) -> usize {
    (usize::from(inflight) * 2).max(1024)
}

/// One QoS 1/2 message's place in the acknowledgement order. Acknowledged,
/// it hands its packet to the [`AckQueue`]; dropped unacknowledged (a stop
/// leaves it to the broker), it gives up its place so later ones go on.
struct Ticket<P: Send + 'static> {
    tx: mpsc::UnboundedSender<(u64, Option<P>)>,
    n: u64,
    p: Option<P>,
    failures: Arc<AtomicU64>,
    name: String,
}

impl<P: Send + 'static> Ticket<P> {
    fn ack(mut self) {
        let p = self.p.take();
        if self.tx.send((self.n, p)).is_err() && self.failures.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(source = %self.name, "an MQTT acknowledgement could not be queued; the broker will redeliver");
        }
    }
}

impl<P: Send + 'static> Drop for Ticket<P> {
    fn drop(&mut self) {
        if self.p.take().is_some() {
            let _ = self.tx.send((self.n, None));
        }
    }
}

/// Acknowledgements on their way from the pipeline threads into the
/// client's request queue (see [`request_capacity`]), released in the
/// order the messages came: MQTT requires PUBACKs in the order of the
/// PUBLISHes (MQTT-4.6.0-2), and a broker that gets them out of order may
/// deliver what it queued out of order too (mosquitto did, once several
/// pipelines on their own threads acknowledged each input when the last of
/// them was done with it).
struct AckQueue<P> {
    tx: mpsc::UnboundedSender<(u64, Option<P>)>,
    rx: mpsc::UnboundedReceiver<(u64, Option<P>)>,
    pending: std::collections::VecDeque<P>,
    /// The next ticket to hand out.
    issued: AtomicU64,
    /// The next ticket to release.
    next: u64,
    /// From ticket `next` on: `Some` once done (`Some(None)`: given up
    /// unacknowledged), `None` while still out.
    done: std::collections::VecDeque<Option<Option<P>>>,
}

impl<P: Send + 'static> AckQueue<P> {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        AckQueue {
            tx,
            rx,
            pending: std::collections::VecDeque::new(),
            issued: AtomicU64::new(0),
            next: 0,
            done: std::collections::VecDeque::new(),
        }
    }

    /// The acknowledgement of `p`, the next message received: it counts
    /// a failure instead of losing it silently.
    fn ack_for(&self, p: P, failures: &Arc<AtomicU64>, name: &str) -> Ack {
        let t = Ticket {
            tx: self.tx.clone(),
            n: self.issued.fetch_add(1, Relaxed),
            p: Some(p),
            failures: failures.clone(),
            name: name.to_owned(),
        };
        Ack::new(move || t.ack())
    }

    /// Move pending acknowledgements into the client; what does not fit
    /// waits until `poll()` has drained the client's queue.
    fn flush(&mut self, mut try_ack: impl FnMut(&P) -> bool) {
        while let Some(p) = self.pending.pop_front() {
            if !try_ack(&p) {
                self.pending.push_front(p);
                break;
            }
        }
    }

    /// Wait for the next acknowledgement from the pipeline threads;
    /// release it, and what waited for it, in order.
    async fn recv(&mut self) {
        if let Some((n, p)) = self.rx.recv().await {
            // Tickets are handed out one by one, so `n` is at most the
            // number in flight past `next`.
            let Some(i) = n.checked_sub(self.next).map(|i| i as usize) else {
                return;
            };
            if self.done.len() <= i {
                self.done.resize_with(i + 1, || None);
            }
            self.done[i] = Some(p);
            while let Some(Some(_)) = self.done.front() {
                self.next += 1;
                let p = self.done.pop_front().flatten().flatten();
                self.pending.extend(p);
            }
        }
    }
}

/// A message in version-independent form.
struct Message {
    topic: String,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
    ack: Option<Ack>,
    /// Packet id and DUP flag of a QoS 1/2 message.
    packet: Option<(u16, bool)>,
}

#[derive(Clone)]
struct Handler {
    cfg: MqttConfig,
    fields: Option<TopicFields>,
    tx: mpsc::Sender<Item>,
    metrics: Arc<MqttMetrics>,
    /// The session its messages come from, for redelivery markers: the
    /// source's name, or `name@client` for an adopted session.
    session: String,
}

/// Items from the broker waiting for room in the pipelines' channel. The
/// event loop is polled meanwhile, up to `max` waiting: with a slow
/// pipeline, a PINGRESP queued behind publishes it had no room for made
/// rumqttc drop the connection ("Last pingreq isn't acked") and the broker
/// redeliver everything unacknowledged. `max` is the in-flight window plus
/// some: a broker that honours it never fills it.
struct Waiting {
    items: std::collections::VecDeque<Item>,
    max: usize,
}

impl Waiting {
    fn new(inflight: u16) -> Waiting {
        Waiting {
            items: std::collections::VecDeque::new(),
            max: inflight as usize + 16,
        }
    }

    /// Whether the event loop may be polled for more.
    fn has_room(&self) -> bool {
        self.items.len() < self.max
    }

    /// Move what fits into the channel; false when the pipelines are gone.
    fn flush(&mut self, tx: &mpsc::Sender<Item>) -> bool {
        while let Some(item) = self.items.pop_front() {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    self.items.push_front(item);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}

impl Handler {
    /// One message as an item for the pipelines (`None`: refused and
    /// acknowledged here).
    fn item(&self, m: Message) -> Option<Item> {
        let item = match decode_payload(
            &m.payload,
            self.cfg.payload,
            self.cfg.max_payload.0 as usize,
        ) {
            Ok(payload) => {
                self.metrics.records.fetch_add(1, Relaxed);
                let record = to_record(
                    &self.cfg.name,
                    &m.topic,
                    payload,
                    self.fields.as_ref(),
                    m.headers,
                    now_ms(),
                );
                let origin = m.packet.map(|(pkid, dup)| {
                    Origin::new(&self.session, pkid, dup, m.topic.as_bytes(), &m.payload)
                });
                Item::Record {
                    record,
                    ack: m.ack,
                    origin,
                }
            }
            Err(e) => {
                if let Ok(mut r) = self.metrics.rejected.lock() {
                    *r.entry(e.kind()).or_default() += 1;
                }
                tracing::warn!(source = %self.cfg.name, topic = %m.topic, error = %e, "malformed MQTT message");
                if !self.cfg.dead_letter {
                    if let Some(ack) = m.ack {
                        ack.ack();
                    }
                    return None;
                }
                Item::Rejected {
                    source: self.cfg.name.clone(),
                    topic: m.topic,
                    kind: e.kind(),
                    error: e.to_string(),
                    bytes: m.payload,
                    ack: m.ack,
                }
            }
        };
        Some(item)
    }
}

/// The client id a source uses.
pub fn client_id(cfg: &MqttConfig, gateway_id: &str) -> String {
    cfg.client_id
        .clone()
        .unwrap_or_else(|| format!("weir-{gateway_id}-{}", cfg.name))
}

/// Run the source until `shutdown` fires.
pub async fn run(
    cfg: MqttConfig,
    gateway_id: String,
    tx: mpsc::Sender<Item>,
    metrics: Arc<MqttMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let fields = cfg
        .topic_fields
        .as_deref()
        .and_then(|p| TopicFields::parse(p).ok());
    let id = client_id(&cfg, &gateway_id);
    let handler = Handler {
        session: cfg.name.clone(),
        cfg,
        fields,
        tx,
        metrics,
    };
    if handler.cfg.version == 4 {
        v4::run(handler, id, shutdown).await
    } else {
        v5::run(handler, id, shutdown).await
    }
}

/// The TLS transport of a source, read afresh at every (re)connect so a
/// fixed file is picked up without a restart.
fn transport(cfg: &MqttConfig) -> Result<Option<rumqttc::Transport>, String> {
    cfg.tls
        .as_ref()
        .map(tls::transport)
        .transpose()
        .map_err(|e| format!("cannot use the TLS files: {e}"))
}

/// Backoff and the log-once rule for connection trouble.
struct Reconnect {
    backoff: Duration,
    down: bool,
    /// The TLS problem last logged: a different one is logged again.
    tls_logged: Option<String>,
    /// The outage's start, attempts since, and when to summarise next.
    outage: Option<(std::time::Instant, u64, std::time::Instant)>,
}

/// How often a long outage is summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(300);

impl Reconnect {
    fn new() -> Self {
        Reconnect {
            backoff: Duration::from_millis(200),
            down: false,
            tls_logged: None,
            outage: None,
        }
    }

    fn connected(&mut self, h: &Handler, session_present: bool) {
        h.metrics.connects.fetch_add(1, Relaxed);
        h.metrics.health.up();
        let cfg = &h.cfg;
        self.tls_logged = None;
        let outage = self.outage.take();
        if std::mem::take(&mut self.down) {
            tracing::info!(source = %cfg.name, host = %cfg.host, session_present,
                down_s = outage.map_or(0, |o| o.0.elapsed().as_secs()),
                attempts = outage.map_or(0, |o| o.1),
                "MQTT broker is back");
        } else {
            tracing::info!(source = %cfg.name, host = %cfg.host, session_present, "MQTT connected");
        }
        self.backoff = Duration::from_millis(200);
    }

    /// The broker answered the subscription: `refused` lists the filters
    /// it turned down, with its reason code.
    fn subscribed(&self, h: &Handler, total: usize, refused: Vec<String>) {
        let cfg = &h.cfg;
        if refused.is_empty() {
            tracing::info!(source = %cfg.name, host = %cfg.host, filters = total, "MQTT subscribed");
        } else {
            tracing::warn!(source = %cfg.name, host = %cfg.host, refused = ?refused,
                "MQTT broker refused subscriptions; nothing arrives on those filters");
        }
    }

    /// The connection failed, or could not be set up (`tls`: the TLS
    /// files cannot be used). Logs once per outage, and a TLS problem once
    /// per distinct problem; waits out the backoff. True: stop.
    async fn failed(
        &mut self,
        h: &Handler,
        error: String,
        tls: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let now = std::time::Instant::now();
        h.metrics.health.down(error.clone());
        if !self.down {
            self.down = true;
            h.metrics.outages.fetch_add(1, Relaxed);
            self.outage = Some((now, 0, now + SUMMARY_EVERY));
            if !tls {
                tracing::warn!(source = %h.cfg.name, host = %h.cfg.host, error = %error,
                    "MQTT broker lost or unreachable; reconnecting with backoff");
            }
        }
        // One line per outage, then a summary every SUMMARY_EVERY.
        if let Some((since, attempts, next)) = &mut self.outage {
            *attempts += 1;
            if now >= *next {
                *next = now + SUMMARY_EVERY;
                tracing::warn!(source = %h.cfg.name, host = %h.cfg.host, error = %error,
                    down_s = since.elapsed().as_secs(), attempts = *attempts,
                    "MQTT broker still unreachable; reconnecting with backoff");
            }
        }
        if tls && self.tls_logged.as_ref() != Some(&error) {
            tracing::error!(source = %h.cfg.name, host = %h.cfg.host, error = %error,
                "MQTT source cannot connect; retrying with backoff, the files are read again each time");
            self.tls_logged = Some(error);
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(crate::common::backoff::jittered(self.backoff)) => false,
            _ = shutdown.changed() => true,
        };
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        stop
    }
}

/// What ended one connection.
enum Ended {
    /// Stop: shutdown, or the pipelines are gone.
    Stop,
    /// The connection failed; reconnect after the backoff.
    Lost(String),
}

mod v4 {
    use rumqttc::{
        AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
        SubscribeReasonCode,
    };

    use super::super::share::{self, Members};
    use super::*;

    /// An MQTT 3.1.1 message in version-independent form, counted, with
    /// its acknowledgement (QoS 1/2) going through `acks`.
    fn message(h: &Handler, p: &rumqttc::Publish, acks: &AckQueue<rumqttc::Publish>) -> Message {
        let ack = (p.qos != QoS::AtMostOnce)
            .then(|| acks.ack_for(p.clone(), &h.metrics.ack_failures, &h.cfg.name));
        h.metrics.messages.fetch_add(1, Relaxed);
        Message {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            headers: BTreeMap::new(),
            packet: (p.qos != QoS::AtMostOnce).then_some((p.pkid, p.dup)),
            ack,
        }
    }

    /// How long an adopted session must stay quiet (nothing received,
    /// nothing left to acknowledge) before it is ended.
    const ADOPT_QUIET: Duration = Duration::from_secs(1);

    /// Take over the session of `dead`, a member of the share group that
    /// died: connect with its client id, unsubscribe it from `unsub` (the
    /// broker stops handing it new messages), take in what it held,
    /// acknowledge it once synced, then end the session with a clean
    /// connect (unless `back`: its owner announced itself again) and
    /// report on `done`. Stops without ending the session if the
    /// connection is lost (its owner is back, or the broker is gone).
    async fn adopt(
        h: Handler,
        dead: String,
        unsub: Vec<String>,
        back: Arc<std::sync::atomic::AtomicBool>,
        done: mpsc::UnboundedSender<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let cfg = &h.cfg;
        let options = |clean: bool| -> Result<MqttOptions, String> {
            let t = transport(cfg)?;
            let port = cfg.port.unwrap_or(if t.is_some() { 8883 } else { 1883 });
            let mut o = MqttOptions::new(dead.clone(), cfg.host.clone(), port);
            o.set_keep_alive(Duration::from_secs(cfg.keep_alive.max(5)))
                .set_clean_session(clean)
                .set_manual_acks(true)
                .set_inflight(cfg.inflight.max(1))
                .set_max_packet_size(cfg.max_packet.0 as usize, 65_536);
            if let Some(user) = &cfg.username {
                o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
            }
            if let Some(t) = t {
                o.set_transport(t);
            }
            Ok(o)
        };
        let opts = match options(false) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(source = %cfg.name, member = %dead, error = %e, "cannot adopt the session");
                return;
            }
        };
        let (client, mut events) = AsyncClient::new(opts, request_capacity(cfg.inflight));
        let mut acks = AckQueue::new();
        let mut waiting = Waiting::new(cfg.inflight);
        let (mut taken, mut acked, mut unsubscribed) = (0u64, 0u64, 0usize);
        let mut present = None;
        let mut quiet_since = std::time::Instant::now();
        let ended = loop {
            acks.flush(|p| {
                let ok = client.try_ack(p).is_ok();
                acked += u64::from(ok);
                ok
            });
            if !waiting.flush(&h.tx) {
                break Err("the pipelines are gone".to_string());
            }
            if present == Some(false) {
                break Ok(());
            }
            if unsubscribed == unsub.len()
                && present == Some(true)
                && waiting.items.is_empty()
                && acked == taken
                && quiet_since.elapsed() >= ADOPT_QUIET
            {
                break Ok(());
            }
            let event = tokio::select! {
                e = events.poll(), if waiting.has_room() => e,
                room = h.tx.reserve(), if !waiting.items.is_empty() => match room {
                    Ok(permit) => {
                        permit.send(waiting.items.pop_front().expect("not empty"));
                        continue;
                    }
                    Err(_) => break Err("the pipelines are gone".to_string()),
                },
                _ = acks.recv() => {
                    quiet_since = std::time::Instant::now();
                    continue;
                }
                _ = tokio::time::sleep(ADOPT_QUIET / 4) => continue,
                _ = shutdown.changed() => break Err("stopping".to_string()),
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    present = Some(ack.session_present);
                    for f in &unsub {
                        let _ = client.try_unsubscribe(f.clone());
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => unsubscribed += 1,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    quiet_since = std::time::Instant::now();
                    taken += u64::from(p.qos != QoS::AtMostOnce);
                    waiting.items.extend(h.item(message(&h, &p, &acks)));
                }
                Ok(_) => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(why) = ended {
            tracing::warn!(source = %cfg.name, member = %dead, taken, reason = %why,
                "stopped adopting the session (its owner may be back); what it still holds stays in it");
            let _ = client.try_disconnect();
            return;
        }
        // Send the last acknowledgements and leave; then a clean connect
        // ends the session, so the broker stops handing it messages.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(e) = events.poll().await {
                if matches!(e, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
        drop(events);
        // Its owner came back meanwhile: the session is its own again; a
        // clean connect now would end the owner's fresh session.
        if back.load(Relaxed) {
            tracing::info!(source = %cfg.name, member = %dead, taken,
                "adopted what the session held; its owner is back, so the session stays");
            // Its announcement is its own again too: not cleared.
            return;
        }
        if let Ok(o) = options(true) {
            let (c, mut ev) = AsyncClient::new(o, 8);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(e) = ev.poll().await {
                    match e {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            let _ = c.try_disconnect();
                        }
                        Event::Outgoing(Outgoing::Disconnect) => break,
                        _ => {}
                    }
                }
            })
            .await;
        }
        tracing::info!(source = %cfg.name, member = %dead, taken,
            "adopted the session of a member that died: what it held is processed here, and its session is ended");
        let _ = done.send(dead);
    }

    pub(super) async fn run(h: Handler, id: String, mut shutdown: watch::Receiver<bool>) {
        let cfg = &h.cfg;
        let filters: Vec<SubscribeFilter> = cfg
            .subscribe
            .iter()
            .map(|s| {
                SubscribeFilter::new(
                    s.filter.clone(),
                    rumqttc::qos(s.qos.min(2)).unwrap_or(QoS::AtLeastOnce),
                )
            })
            .collect();
        // A member of a share group announces itself and watches the
        // others, to adopt the session of one that dies (see `share`).
        let group = share::group(
            cfg.clean_session,
            cfg.version,
            cfg.subscribe.iter().map(|s| s.filter.as_str()),
        )
        .map(str::to_string);
        let mut members = Members::new(&id);
        let (adopted_tx, mut adopted_rx) = mpsc::unbounded_channel::<String>();
        // Per adopted member: set when it announces itself up again.
        let mut returned: HashMap<String, Arc<std::sync::atomic::AtomicBool>> = HashMap::new();
        let mut subscriptions = filters.clone();
        if let Some(g) = &group {
            subscriptions.push(SubscribeFilter::new(
                share::members_filter(g),
                QoS::AtMostOnce,
            ));
        }
        let mut rc = Reconnect::new();
        let mut acks = AckQueue::new();
        // Kept across reconnects (rumqttc reconnects on the next poll and
        // keeps the acknowledgements queued in it). With TLS, a new client
        // for every connection, so the files are read again and a fixed
        // file is picked up without a restart.
        let mut conn = None;
        // The incoming packet limit: max_payload plus headers, raised for
        // one connection to read (and acknowledge) an oversized message.
        let normal = cfg.max_payload.0 as usize + 65_536;
        let mut max_in = normal;
        let mut oversize: Option<usize> = None;
        // A message over max_packet, already logged: said once, not at
        // every reconnect into it.
        let mut unreadable: Option<usize> = None;
        loop {
            if conn.is_none() || cfg.tls.is_some() {
                let transport = match transport(cfg) {
                    Ok(t) => t,
                    Err(e) => {
                        if rc.failed(&h, e, true, &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                };
                let port = cfg
                    .port
                    .unwrap_or(if transport.is_some() { 8883 } else { 1883 });
                let mut opts = MqttOptions::new(id.clone(), cfg.host.clone(), port);
                opts.set_keep_alive(Duration::from_secs(cfg.keep_alive.max(5)))
                    .set_clean_session(cfg.clean_session)
                    .set_manual_acks(true)
                    .set_inflight(cfg.inflight.max(1))
                    .set_max_packet_size(max_in, 65_536);
                if let Some(g) = &group {
                    opts.set_last_will(LastWill::new(
                        share::member_topic(g, &id),
                        share::DOWN,
                        QoS::AtLeastOnce,
                        true,
                    ));
                }
                if let Some(user) = &cfg.username {
                    opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
                }
                tracing::debug!(source = %cfg.name, host = %cfg.host, port, client_id = %id,
                    user = cfg.username.as_deref().unwrap_or(""), tls = cfg.tls.is_some(), "connecting");
                if let Some(t) = transport {
                    opts.set_transport(t);
                }
                let (client, mut events) = AsyncClient::new(opts, request_capacity(cfg.inflight));
                // Acknowledgements go out as soon as their batch is synced:
                // no Nagle delay on them.
                events.network_options.set_tcp_nodelay(true);
                conn = Some((client, events));
            }
            let (client, events) = conn.as_mut().expect("made above");
            // Subscribing never awaits room in rumqttc's request channel: only
            // this task polls the event loop, so waiting there (with the channel
            // full of acks after a reconnect) would deadlock.
            let mut subscribe = false;
            let mut waiting = Waiting::new(cfg.inflight);
            let ended = loop {
                if subscribe {
                    subscribe = client.try_subscribe_many(subscriptions.clone()).is_err();
                    if let (false, Some(g)) = (subscribe, &group) {
                        let _ = client.try_publish(
                            share::member_topic(g, &id),
                            QoS::AtLeastOnce,
                            true,
                            share::UP,
                        );
                    }
                }
                acks.flush(|p| client.try_ack(p).is_ok());
                if !waiting.flush(&h.tx) {
                    break Ended::Stop;
                }
                let event = tokio::select! {
                    e = events.poll(), if waiting.has_room() => e,
                    room = h.tx.reserve(), if !waiting.items.is_empty() => match room {
                        Ok(permit) => {
                            permit.send(waiting.items.pop_front().expect("not empty"));
                            continue;
                        }
                        Err(_) => break Ended::Stop,
                    },
                    _ = acks.recv() => continue,
                    Some(dead) = adopted_rx.recv() => {
                        // Adopted and ended: clear its announcement.
                        members.adopted(&dead);
                        if let Some(g) = &group {
                            let _ = client.try_publish(share::member_topic(g, &dead), QoS::AtLeastOnce, true, Vec::new());
                        }
                        continue;
                    }
                    _ = shutdown.changed() => break Ended::Stop,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        rc.connected(&h, ack.session_present);
                        subscribe = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if group
                            .as_deref()
                            .and_then(|g| share::member_of(g, &p.topic))
                            .is_some() =>
                    {
                        let g = group.as_deref().unwrap_or_default();
                        let who = share::member_of(g, &p.topic)
                            .unwrap_or_default()
                            .to_string();
                        if p.payload.as_ref() == share::UP
                            && let Some(flag) = returned.remove(&who)
                        {
                            flag.store(true, Relaxed);
                        }
                        for dead in members.announced(&who, &p.payload) {
                            tracing::warn!(source = %cfg.name, member = %dead,
                                "a member of the share group is down; adopting its session so what it held is processed here");
                            let unsub: Vec<String> = cfg
                                .subscribe
                                .iter()
                                .filter(|s| crate::common::topic::shared(&s.filter).is_some())
                                .map(|s| s.filter.clone())
                                .collect();
                            let mut h = h.clone();
                            h.session = format!("{}@{dead}", cfg.name);
                            let back = Arc::new(std::sync::atomic::AtomicBool::new(false));
                            returned.insert(dead.clone(), back.clone());
                            tokio::spawn(adopt(
                                h,
                                dead,
                                unsub,
                                back,
                                adopted_tx.clone(),
                                shutdown.clone(),
                            ));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused = filters
                            .iter()
                            .zip(&ack.return_codes)
                            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                            .map(|(f, c)| format!("{}: {c:?}", f.path))
                            .collect();
                        rc.subscribed(&h, filters.len(), refused);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        waiting.items.extend(h.item(message(&h, &p, &acks)));
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::MqttState(
                        rumqttc::StateError::Deserialization(
                            rumqttc::Error::PayloadSizeLimitExceeded(n),
                        ),
                    )) => {
                        oversize = Some(n);
                        break Ended::Lost(format!(
                            "a message of {n} bytes is over the packet limit"
                        ));
                    }
                    Err(e) => break Ended::Lost(e.to_string()),
                }
            };
            if matches!(ended, Ended::Stop) || cfg.tls.is_some() {
                let _ = client.try_disconnect();
                conn = None;
            }
            match ended {
                Ended::Stop => break,
                // MQTT 3.1.1 has no way to tell the broker our limit, and
                // it redelivers the message at every reconnect: read it
                // once (the handler refuses it as too large and
                // acknowledges it), then go on.
                Ended::Lost(_) if oversize.is_some_and(|n| n < cfg.max_packet.0 as usize) => {
                    let n = oversize.take().unwrap_or(0);
                    tracing::warn!(source = %cfg.name, host = %cfg.host, bytes = n,
                        max_payload = cfg.max_payload.0, max_packet = cfg.max_packet.0,
                        "MQTT message over max_payload; reconnecting once to read it, count it as too_large and acknowledge it");
                    max_in = n + 1024;
                    conn = None;
                }
                Ended::Lost(e) => {
                    if let Some(n) = oversize.take()
                        && unreadable.replace(n) != Some(n)
                    {
                        tracing::error!(source = %cfg.name, host = %cfg.host, bytes = n, max_packet = cfg.max_packet.0,
                            "MQTT message over max_packet: it cannot be read, and the broker redelivers it at every reconnect. Raise `max_packet`, or remove it at the broker (clear this client's session)");
                    }
                    if max_in != normal {
                        max_in = normal;
                        conn = None;
                    }
                    if rc.failed(&h, e, false, &mut shutdown).await {
                        break;
                    }
                }
            }
        }
    }
}

mod v5 {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    use super::*;

    pub(super) async fn run(h: Handler, id: String, mut shutdown: watch::Receiver<bool>) {
        let cfg = &h.cfg;
        if !cfg.clean_session
            && cfg
                .subscribe
                .iter()
                .any(|s| crate::common::topic::shared(&s.filter).is_some())
        {
            tracing::warn!(source = %cfg.name,
                "shared subscription over MQTT 5: if this process dies, what the broker queued for it waits until it returns or its session expires; set `version = 4` for the other members to adopt its session");
        }
        let filters: Vec<Filter> = cfg
            .subscribe
            .iter()
            .map(|s| {
                Filter::new(
                    s.filter.clone(),
                    rumqttc::v5::mqttbytes::qos(s.qos.min(2)).unwrap_or(QoS::AtLeastOnce),
                )
            })
            .collect();
        let mut rc = Reconnect::new();
        let mut acks = AckQueue::new();
        // Kept across reconnects (rumqttc reconnects on the next poll and
        // keeps the acknowledgements queued in it). With TLS, a new client
        // for every connection, so the files are read again and a fixed
        // file is picked up without a restart.
        let mut conn = None;
        loop {
            if conn.is_none() || cfg.tls.is_some() {
                let transport = match transport(cfg) {
                    Ok(t) => t,
                    Err(e) => {
                        if rc.failed(&h, e, true, &mut shutdown).await {
                            break;
                        }
                        continue;
                    }
                };
                let port = cfg
                    .port
                    .unwrap_or(if transport.is_some() { 8883 } else { 1883 });
                let mut opts = MqttOptions::new(id.clone(), cfg.host.clone(), port);
                opts.set_keep_alive(Duration::from_secs(cfg.keep_alive.max(5)))
                    .set_clean_start(cfg.clean_session)
                    .set_session_expiry_interval((!cfg.clean_session).then_some(cfg.session_expiry))
                    .set_manual_acks(true)
                    .set_receive_maximum(Some(cfg.inflight.max(1)))
                    // A source never publishes; rumqttc otherwise sizes its
                    // outgoing table for 65,535 publishes (14 MB).
                    .set_outgoing_inflight_upper_limit(8)
                    .set_max_packet_size(Some(cfg.max_payload.0 as u32 + 65_536));
                // Acknowledgements go out as soon as their batch is synced:
                // no Nagle delay on them.
                let mut net = rumqttc::NetworkOptions::new();
                net.set_tcp_nodelay(true);
                opts.set_network_options(net);
                if let Some(user) = &cfg.username {
                    opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
                }
                tracing::debug!(source = %cfg.name, host = %cfg.host, port, client_id = %id,
                    user = cfg.username.as_deref().unwrap_or(""), tls = cfg.tls.is_some(), "connecting");
                if let Some(t) = transport {
                    opts.set_transport(t);
                }
                conn = Some(AsyncClient::new(opts, request_capacity(cfg.inflight)));
            }
            let (client, events) = conn.as_mut().expect("made above");
            // See v4: subscribing never waits on the request channel.
            let mut subscribe = false;
            let mut waiting = Waiting::new(cfg.inflight);
            let ended = loop {
                if subscribe {
                    subscribe = client.try_subscribe_many(filters.clone()).is_err();
                }
                acks.flush(|p| client.try_ack(p).is_ok());
                if !waiting.flush(&h.tx) {
                    break Ended::Stop;
                }
                let event = tokio::select! {
                    e = events.poll(), if waiting.has_room() => e,
                    room = h.tx.reserve(), if !waiting.items.is_empty() => match room {
                        Ok(permit) => {
                            permit.send(waiting.items.pop_front().expect("not empty"));
                            continue;
                        }
                        Err(_) => break Ended::Stop,
                    },
                    _ = acks.recv() => continue,
                    _ = shutdown.changed() => break Ended::Stop,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        rc.connected(&h, ack.session_present);
                        subscribe = true;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let refused = filters
                            .iter()
                            .zip(&ack.return_codes)
                            .filter(|(_, c)| !matches!(c, SubscribeReasonCode::Success(_)))
                            .map(|(f, c)| format!("{}: {c:?}", f.path))
                            .collect();
                        rc.subscribed(&h, filters.len(), refused);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ack = (p.qos != QoS::AtMostOnce)
                            .then(|| acks.ack_for(p.clone(), &h.metrics.ack_failures, &cfg.name));
                        let headers = p
                            .properties
                            .as_ref()
                            .map(|props| props.user_properties.iter().cloned().collect())
                            .unwrap_or_default();
                        let m = Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            headers,
                            packet: (p.qos != QoS::AtMostOnce).then_some((p.pkid, p.dup)),
                            ack,
                        };
                        h.metrics.messages.fetch_add(1, Relaxed);
                        waiting.items.extend(h.item(m));
                    }
                    Ok(_) => {}
                    Err(e) => break Ended::Lost(e.to_string()),
                }
            };
            if matches!(ended, Ended::Stop) || cfg.tls.is_some() {
                let _ = client.try_disconnect();
                conn = None;
            }
            match ended {
                Ended::Stop => break,
                Ended::Lost(e) => {
                    if rc.failed(&h, e, false, &mut shutdown).await {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Release what the queue holds, as the source task does.
    fn released(q: &mut AckQueue<u16>) -> Vec<u16> {
        let mut out = Vec::new();
        q.flush(|p| {
            out.push(*p);
            true
        });
        out
    }

    #[tokio::test]
    async fn acknowledgements_leave_in_the_order_the_messages_came() {
        let failures = Arc::new(AtomicU64::new(0));
        let mut q = AckQueue::new();
        let acks: Vec<Ack> = (10..15).map(|p| q.ack_for(p, &failures, "t")).collect();
        let mut acks: Vec<Option<Ack>> = acks.into_iter().map(Some).collect();
        // The third and the fifth are done first: nothing leaves yet.
        acks[2].take().unwrap().ack();
        acks[4].take().unwrap().ack();
        q.recv().await;
        q.recv().await;
        assert_eq!(released(&mut q), Vec::<u16>::new());
        // The first: it leaves alone (the second is not done).
        acks[0].take().unwrap().ack();
        q.recv().await;
        assert_eq!(released(&mut q), [10]);
        // The second is dropped unacknowledged (a stop): it gives up its
        // place, and the third leaves; the fourth still holds the fifth.
        drop(acks[1].take());
        q.recv().await;
        assert_eq!(released(&mut q), [12]);
        acks[3].take().unwrap().ack();
        q.recv().await;
        assert_eq!(released(&mut q), [13, 14]);
        assert_eq!(failures.load(Relaxed), 0);
    }
}
