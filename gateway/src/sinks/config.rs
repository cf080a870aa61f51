//! `[[sink]]`: where pipeline output goes. One table per sink; its `type`
//! picks which keys it takes (a serde tagged enum, one struct per type), so
//! a key that does not apply to the type is refused by name.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::common::ByteSize;
use crate::common::duration::duration;
use crate::common::tls::TlsFiles;
use crate::store::BufferConfig;

/// The kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// An MQTT broker: the cloud (AWS IoT Core, Azure IoT Hub, HiveMQ,
    /// EMQX) or a local republish.
    Mqtt,
    /// JSON lines in a file, rotated by size.
    File,
    /// JSON lines on stdout.
    Stdout,
}

impl SinkType {
    /// The name used in configs, status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkType::Mqtt => "mqtt",
            SinkType::File => "file",
            SinkType::Stdout => "stdout",
        }
    }
}

/// What a sink receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Include {
    /// Pipeline output records.
    #[default]
    Records,
    /// Dead letters only (from stages and sources).
    DeadLetters,
    /// Both.
    All,
}

/// How records are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (a batch is a JSON array).
    #[default]
    Json,
    /// CBOR (a batch is a CBOR array).
    Cbor,
}

/// What one published record looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The payload's fields plus `msg_id` and `gateway_id` (what cloud rules
    /// engines expect).
    #[default]
    Flat,
    /// The whole record: `source, topic, ts, headers, payload, pipeline`,
    /// plus `msg_id` and `gateway_id`.
    Record,
}

/// Cloud presets: port, TLS and the provider's limits, checked at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// AWS IoT Core: port 8883, mTLS, 128 KB payloads, topics of at most
    /// 8 levels and 256 bytes, client id at most 128 bytes, 100 in flight.
    AwsIotCore,
    /// Azure IoT Hub: port 8883, MQTT 3.1.1, client id = device id,
    /// username `{hub}/{device}/?api-version=2021-04-12`, topic
    /// `devices/{device}/messages/events/`, 256 KB payloads.
    AzureIotHub,
    /// HiveMQ (Cloud or self-hosted): port 8883, TLS, user/password or mTLS.
    Hivemq,
    /// EMQX: port 8883, TLS, 1 MB default packet size.
    Emqx,
}

/// The facts of a preset.
#[derive(Debug, Clone, Copy)]
pub struct PresetFacts {
    /// The TLS port.
    pub port: u16,
    /// Largest payload the service accepts.
    pub max_payload: u64,
    /// Most unacknowledged QoS 1 publishes the service allows.
    pub max_inflight: u16,
    /// Longest client id.
    pub max_client_id: usize,
    /// Most topic levels (`/`-separated).
    pub max_topic_levels: usize,
    /// Longest topic, in bytes.
    pub max_topic_bytes: usize,
    /// Whether a client certificate is required.
    pub needs_client_cert: bool,
}

impl Preset {
    /// The preset's facts.
    pub fn facts(self) -> PresetFacts {
        match self {
            Preset::AwsIotCore => PresetFacts {
                port: 8883,
                max_payload: 128 * 1024,
                max_inflight: 100,
                max_client_id: 128,
                max_topic_levels: 8,
                max_topic_bytes: 256,
                needs_client_cert: true,
            },
            Preset::AzureIotHub => PresetFacts {
                port: 8883,
                max_payload: 256 * 1024,
                max_inflight: 100,
                max_client_id: 128,
                max_topic_levels: usize::MAX,
                max_topic_bytes: 65_535,
                needs_client_cert: false,
            },
            Preset::Hivemq => PresetFacts {
                port: 8883,
                max_payload: 256 * 1024 * 1024,
                max_inflight: u16::MAX,
                max_client_id: 65_535,
                max_topic_levels: usize::MAX,
                max_topic_bytes: 65_535,
                needs_client_cert: false,
            },
            Preset::Emqx => PresetFacts {
                port: 8883,
                max_payload: 1024 * 1024,
                max_inflight: 32,
                max_client_id: 65_535,
                max_topic_levels: 128,
                max_topic_bytes: 65_535,
                needs_client_cert: false,
            },
        }
    }
}

/// `[sink.rate]`: a cap for metered links (unset = none).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Records per second.
    pub records_per_s: Option<f64>,
    /// Bytes per second (payload bytes).
    pub bytes_per_s: Option<ByteSize>,
}

/// `[sink.live_first]`: send fresh records first after an outage, and fill
/// in the backlog with a share of the sends.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFirst {
    /// The backlog's share of the sends while live records wait (0..1); the
    /// backlog also gets every send live records leave unused.
    pub backlog_share: f64,
}

/// `[[sink]]`, in one flat form for every type (the keys a type does not
/// take stay unset: [`RawSink`] refuses them when the config is read).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawSink")]
pub struct SinkConfig {
    /// Unique name (also the queue's name in the store).
    pub name: String,
    /// `mqtt`, `file` or `stdout`.
    pub kind: SinkType,
    /// Pipelines whose output this sink takes (empty: all).
    pub pipelines: Vec<String>,
    /// Records, dead letters, or both.
    pub include: Include,
    /// Whether the queue is on disk (default: yes, except for stdout).
    pub durable: Option<bool>,
    /// Queue bounds and full policy.
    pub buffer: BufferConfig,
    /// Rate cap.
    pub rate: RateConfig,
    /// Fresh records first after an outage.
    pub live_first: Option<LiveFirst>,
    /// JSON or CBOR.
    pub format: Format,
    /// Flat payload or whole record (default: flat for MQTT, record otherwise).
    pub envelope: Option<Envelope>,
    /// Records per publish (MQTT) or per write; a batch is an array.
    pub batch: usize,
    /// Most bytes a sink holds at once: read from the queue, rendered,
    /// and (MQTT) in flight.
    pub inflight_bytes: ByteSize,

    // MQTT.
    /// A cloud preset.
    pub preset: Option<Preset>,
    /// Broker host.
    pub host: Option<String>,
    /// Broker port (default: the preset's, 8883 with TLS, else 1883).
    pub port: Option<u16>,
    /// Client id (default `weir-{gateway_id}-{sink}`).
    pub client_id: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Password (or a SAS token for Azure IoT Hub).
    pub password: Option<String>,
    /// A file holding the password (instead of `password`).
    pub password_file: Option<PathBuf>,
    /// Topic template: `{gateway_id}`, `{sink}`, `{pipeline}`, `{source}`,
    /// `{topic}` (the input topic), `{msg_id}` and any payload field such as `{id}`.
    pub topic: Option<String>,
    /// Unacknowledged QoS 1 publishes at once.
    pub inflight: Option<u16>,
    /// Largest payload per publish (default: the preset's, else 256 KiB).
    pub max_payload: Option<ByteSize>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long a stopping gateway keeps sending what is in flight.
    pub drain_on_stop: Duration,
    /// TLS: CA, and client certificate and key for mTLS.
    pub tls: Option<TlsFiles>,
    /// Consecutive times the broker may drop the connection right after
    /// an entry before it goes to the sink's dead-letter queue (0: never).
    pub dead_letter_after: u32,

    // File.
    /// The file (rotated to `.1`, `.2`, ...).
    pub path: Option<PathBuf>,
    /// Rotate when the file would pass this size.
    pub rotate_bytes: ByteSize,
    /// Rotated files kept.
    pub keep: u32,
}

/// Declares one `[[sink]]` type's table: the keys every sink takes, then
/// its own. `deny_unknown_fields` refuses the rest, naming them.
macro_rules! sink_table {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Unique name (also the queue's name in the store).
            pub name: String,
            /// Pipelines whose output this sink takes (empty: all).
            #[serde(default)]
            pub pipelines: Vec<String>,
            /// Records, dead letters, or both.
            #[serde(default)]
            pub include: Include,
            /// Whether the queue is on disk.
            pub durable: Option<bool>,
            /// Queue bounds and full policy.
            #[serde(default)]
            pub buffer: BufferConfig,
            /// Rate cap.
            #[serde(default)]
            pub rate: RateConfig,
            /// Fresh records first after an outage.
            pub live_first: Option<LiveFirst>,
            /// JSON or CBOR.
            #[serde(default)]
            pub format: Format,
            /// Flat payload or whole record.
            pub envelope: Option<Envelope>,
            /// Records per publish or write.
            #[serde(default = "one")]
            pub batch: usize,
            /// Most bytes held at once.
            #[serde(default = "inflight_bytes")]
            pub inflight_bytes: ByteSize,
            $($(#[$fdoc])* pub $field: $ty,)*
        }
    };
}

sink_table!(
    /// `type = "mqtt"`.
    MqttSinkTable {
        /// A cloud preset.
        preset: Option<Preset>,
        /// Broker host.
        host: Option<String>,
        /// Broker port.
        port: Option<u16>,
        /// Client id.
        client_id: Option<String>,
        /// Username.
        username: Option<String>,
        /// Password.
        password: Option<String>,
        /// A file holding the password.
        password_file: Option<PathBuf>,
        /// Topic template.
        topic: Option<String>,
        /// Unacknowledged QoS 1 publishes at once.
        inflight: Option<u16>,
        /// Largest payload per publish.
        max_payload: Option<ByteSize>,
        /// MQTT keep-alive.
        #[serde(default = "keep_alive", deserialize_with = "duration")]
        keep_alive: Duration,
        /// How long a stopping gateway keeps sending what is in flight.
        #[serde(default = "grace", deserialize_with = "duration")]
        drain_on_stop: Duration,
        /// TLS files.
        tls: Option<TlsFiles>,
        /// Failures before an entry is dead-lettered.
        #[serde(default = "dead_letter_after")]
        dead_letter_after: u32,
    }
);

sink_table!(
    /// `type = "file"`.
    FileSinkTable {
        /// The file.
        path: Option<PathBuf>,
        /// Rotate when the file would pass this size.
        #[serde(default = "rotate")]
        rotate_bytes: ByteSize,
        /// Rotated files kept.
        #[serde(default = "keep")]
        keep: u32,
    }
);

sink_table!(
    /// `type = "stdout"`.
    StdoutSinkTable {}
);

/// A `[[sink]]` table as written: which keys it may hold depends on `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawSink {
    /// `type = "mqtt"`.
    Mqtt(Box<MqttSinkTable>),
    /// `type = "file"`.
    File(FileSinkTable),
    /// `type = "stdout"`.
    Stdout(StdoutSinkTable),
}

macro_rules! common {
    ($t:ident, $kind:expr) => {
        SinkConfig {
            name: $t.name,
            kind: $kind,
            pipelines: $t.pipelines,
            include: $t.include,
            durable: $t.durable,
            buffer: $t.buffer,
            rate: $t.rate,
            live_first: $t.live_first,
            format: $t.format,
            envelope: $t.envelope,
            batch: $t.batch,
            inflight_bytes: $t.inflight_bytes,
            ..SinkConfig::blank()
        }
    };
}

impl From<RawSink> for SinkConfig {
    fn from(raw: RawSink) -> SinkConfig {
        match raw {
            RawSink::Mqtt(t) => SinkConfig {
                preset: t.preset,
                host: t.host.clone(),
                port: t.port,
                client_id: t.client_id.clone(),
                username: t.username.clone(),
                password: t.password.clone(),
                password_file: t.password_file.clone(),
                topic: t.topic.clone(),
                inflight: t.inflight,
                max_payload: t.max_payload,
                keep_alive: t.keep_alive,
                drain_on_stop: t.drain_on_stop,
                tls: t.tls.clone(),
                dead_letter_after: t.dead_letter_after,
                ..common!(t, SinkType::Mqtt)
            },
            RawSink::File(t) => SinkConfig {
                path: t.path.clone(),
                rotate_bytes: t.rotate_bytes,
                keep: t.keep,
                ..common!(t, SinkType::File)
            },
            RawSink::Stdout(t) => common!(t, SinkType::Stdout),
        }
    }
}

fn one() -> usize {
    1
}
fn inflight_bytes() -> ByteSize {
    ByteSize(4 << 20)
}
fn keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn dead_letter_after() -> u32 {
    5
}
fn grace() -> Duration {
    Duration::from_secs(3)
}
fn rotate() -> ByteSize {
    ByteSize(16 << 20)
}
fn keep() -> u32 {
    5
}

/// Whether `topic` is an AWS IoT Basic Ingest topic: `$aws/rules/<rule>`,
/// optionally followed by more levels.
fn aws_basic_ingest(topic: &str) -> bool {
    topic
        .strip_prefix("$aws/rules/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|rule| !rule.is_empty())
}

/// The default MQTT topic template (workload W1's).
pub const DEFAULT_TOPIC: &str = "cloud/{gateway_id}/telemetry";

impl SinkConfig {
    /// The implicit sink when none is configured: every record and dead
    /// letter to stdout, in memory (the pre-sink behaviour of `weir serve`).
    pub fn default_stdout() -> SinkConfig {
        SinkConfig {
            name: "stdout".into(),
            kind: SinkType::Stdout,
            include: Include::All,
            durable: Some(false),
            envelope: Some(Envelope::Record),
            ..SinkConfig::blank()
        }
    }

    /// Every key at its default (a stdout sink named "").
    fn blank() -> SinkConfig {
        SinkConfig {
            name: String::new(),
            kind: SinkType::Stdout,
            pipelines: Vec::new(),
            include: Include::Records,
            durable: None,
            buffer: BufferConfig::default(),
            rate: RateConfig::default(),
            live_first: None,
            format: Format::Json,
            envelope: None,
            batch: 1,
            inflight_bytes: inflight_bytes(),
            preset: None,
            host: None,
            port: None,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            topic: None,
            inflight: None,
            max_payload: None,
            keep_alive: keep_alive(),
            drain_on_stop: grace(),
            tls: None,
            dead_letter_after: dead_letter_after(),
            path: None,
            rotate_bytes: rotate(),
            keep: keep(),
        }
    }

    /// The longest topic the broker takes (the preset's, else MQTT's).
    pub fn max_topic_bytes(&self) -> usize {
        self.preset
            .map_or(super::topic::MAX_TOPIC_BYTES, |p| p.facts().max_topic_bytes)
    }

    /// Whether the queue is on disk.
    pub fn is_durable(&self) -> bool {
        self.durable.unwrap_or(self.kind != SinkType::Stdout)
    }

    /// The envelope in effect.
    pub fn envelope(&self) -> Envelope {
        self.envelope.unwrap_or(match self.kind {
            SinkType::Mqtt => Envelope::Flat,
            _ => Envelope::Record,
        })
    }

    /// The payload limit in effect.
    pub fn max_payload(&self) -> u64 {
        self.max_payload
            .map(|b| b.0)
            .or(self.preset.map(|p| p.facts().max_payload))
            .unwrap_or(256 * 1024)
    }

    /// The in-flight window in effect.
    pub fn inflight(&self) -> u16 {
        self.inflight
            .unwrap_or(match self.preset {
                Some(p) => p.facts().max_inflight.min(100),
                None => 100,
            })
            .max(1)
    }

    /// The port in effect.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match (self.preset, &self.tls) {
            (Some(p), _) => p.facts().port,
            (None, Some(_)) => 8883,
            (None, None) => 1883,
        })
    }

    /// The client id in effect.
    pub fn client_id(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("weir-{gateway_id}-{}", self.name))
    }

    /// The topic template in effect.
    pub fn topic(&self, gateway_id: &str) -> String {
        match (&self.topic, self.preset) {
            (Some(t), _) => t.clone(),
            (None, Some(Preset::AzureIotHub)) => {
                format!("devices/{}/messages/events/", self.client_id(gateway_id))
            }
            (None, _) => DEFAULT_TOPIC.into(),
        }
    }

    /// The username in effect (Azure's is derived from host and device).
    pub fn username(&self, gateway_id: &str) -> Option<String> {
        match (&self.username, self.preset, &self.host) {
            (Some(u), _, _) => Some(u.clone()),
            (None, Some(Preset::AzureIotHub), Some(host)) => Some(format!(
                "{host}/{}/?api-version=2021-04-12",
                self.client_id(gateway_id)
            )),
            _ => None,
        }
    }

    /// Semantic checks: returns (key, message) for the first problem.
    pub fn check(&self, gateway_id: &str) -> Result<(), (String, String)> {
        let e = |k: &str, m: String| Err((k.to_string(), m));
        if self.batch == 0 {
            return e("batch", "must be at least 1".into());
        }
        if let Some(l) = self.live_first
            && !(0.0..=1.0).contains(&l.backlog_share)
        {
            return e("live_first.backlog_share", "must be between 0 and 1".into());
        }
        if self
            .rate
            .records_per_s
            .is_some_and(|r| r.is_nan() || r <= 0.0)
        {
            return e("rate.records_per_s", "must be positive".into());
        }
        if self.rate.bytes_per_s.is_some_and(|b| b.0 == 0) {
            return e("rate.bytes_per_s", "must be positive".into());
        }
        match self.kind {
            SinkType::File if self.path.is_none() => e("path", "a file sink needs a path".into()),
            SinkType::Mqtt => self.check_mqtt(gateway_id),
            _ => Ok(()),
        }
    }

    fn check_mqtt(&self, gateway_id: &str) -> Result<(), (String, String)> {
        let e = |k: &str, m: String| Err((k.to_string(), m));
        if self.host.as_deref().is_none_or(str::is_empty) {
            return e("host", "an MQTT sink needs a broker host".into());
        }
        let topic = self.topic(gateway_id);
        if topic.is_empty() || topic.contains(['+', '#']) {
            return e(
                "topic",
                format!("`{topic}`: a topic to publish to has no wildcards"),
            );
        }
        if let Err(why) = super::topic::parse(&topic) {
            return e("topic", why);
        }
        if let Some(tls) = &self.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return e(
                "tls",
                "`cert` and `key` go together: set both for mTLS, or neither".into(),
            );
        }
        let Some(preset) = self.preset else {
            return Ok(());
        };
        let f = preset.facts();
        let name = format!("{preset:?}");
        if self.tls.is_none() {
            return e(
                "tls",
                format!(
                    "the {name} preset needs TLS (`tls.ca`, and a client certificate where required)"
                ),
            );
        }
        if f.needs_client_cert && self.tls.as_ref().is_some_and(|t| t.cert.is_none()) {
            return e(
                "tls.cert",
                format!("the {name} preset authenticates with a client certificate (mTLS)"),
            );
        }
        if self.max_payload() > f.max_payload {
            return e(
                "max_payload",
                format!(
                    "the {name} preset accepts at most {} bytes per message",
                    f.max_payload
                ),
            );
        }
        if self.inflight() > f.max_inflight {
            return e(
                "inflight",
                format!(
                    "the {name} preset allows at most {} messages in flight",
                    f.max_inflight
                ),
            );
        }
        let id = self.client_id(gateway_id);
        if id.len() > f.max_client_id {
            return e(
                "client_id",
                format!(
                    "the {name} preset allows client ids of at most {} bytes",
                    f.max_client_id
                ),
            );
        }
        // AWS IoT Basic Ingest (`$aws/rules/<rule>/...`) goes straight to a
        // rule; its prefix does not count toward the topic levels.
        let basic_ingest = preset == Preset::AwsIotCore && aws_basic_ingest(&topic);
        let counted = if basic_ingest {
            topic.splitn(4, '/').nth(3).unwrap_or("")
        } else {
            topic.as_str()
        };
        if counted.split('/').count() > f.max_topic_levels {
            return e(
                "topic",
                format!(
                    "`{topic}`: the {name} preset allows at most {} topic levels",
                    f.max_topic_levels
                ),
            );
        }
        match preset {
            Preset::AwsIotCore if topic.starts_with('$') && !basic_ingest => e(
                "topic",
                format!(
                    "`{topic}`: topics starting with `$` are reserved by AWS IoT Core; only Basic Ingest (`$aws/rules/<rule>/...`) takes device data"
                ),
            ),
            Preset::AzureIotHub => {
                let want = format!("devices/{id}/messages/events/");
                if !topic.starts_with(&want) {
                    return e(
                        "topic",
                        format!(
                            "`{topic}`: Azure IoT Hub takes device-to-cloud messages only on `{want}` (plus an optional property bag)"
                        ),
                    );
                }
                if self.client_id.is_none() {
                    return e(
                        "client_id",
                        "Azure IoT Hub needs the device id as client id".into(),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
