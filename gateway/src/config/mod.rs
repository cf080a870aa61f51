//! The gateway's one TOML config (`/etc/weir/weir.toml` in production).
//!
//! Every error names the file and the key: parse and type errors through
//! `serde_path_to_error`, semantic errors through [`Config::validate`].
//! The reference of every key is in the README ("Configuration").

pub mod secrets;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::common::{ByteSize, parse_size};

use crate::pipeline::{ErrorPolicy, Grant, Isolation, Limits};

/// A config error: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key, as a path (`pipeline[0].stage[1].limits.fuel`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

/// The whole gateway config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: identity and paths.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// `[defaults]`: defaults for every pipeline and stage.
    #[serde(default)]
    pub defaults: DefaultsConfig,
    /// `[[source]]`: where records come from.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// `[[pipeline]]`: the pipelines, each an ordered chain of stages.
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    /// `[store]`: the durable buffer.
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    /// `[[sink]]`: where pipeline output goes (none: everything to stdout).
    #[serde(default, rename = "sink")]
    pub sinks: Vec<crate::sinks::SinkConfig>,
    /// `[metrics]`: the Prometheus endpoint (off unless present).
    #[serde(default)]
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// `[status]`: the retained status message over MQTT (off unless present).
    #[serde(default)]
    pub status: Option<crate::metrics::status::StatusConfig>,
    /// `[modules]`: module pushes over MQTT (off unless present; turns
    /// `[status]` on, where push results are published).
    #[serde(default)]
    pub modules: Option<crate::deploy::ModulesConfig>,
    /// The directory of the config file (modules resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file, for error messages.
    #[serde(skip)]
    pub file: String,
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// This gateway's id, used in topics and message ids.
    #[serde(default = "default_gateway_id")]
    pub id: String,
    /// Where relative module paths resolve (default: the config file's directory).
    pub modules_dir: Option<PathBuf>,
    /// The control socket `weir status`, `weir top` and `weir store
    /// inspect` talk to (default: `weir.sock` beside the store).
    pub control: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: default_gateway_id(),
            modules_dir: None,
            control: None,
        }
    }
}

fn default_gateway_id() -> String {
    "weir".into()
}

/// `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    /// `[defaults.limits]`: limits for every stage unless overridden.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Limits as written in the config; unset keys inherit.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Fuel per record (a deterministic bound on CPU work).
    pub fuel: Option<u64>,
    /// Cap on the module's linear memory.
    pub memory: Option<ByteSize>,
    /// Most records one input may produce.
    pub max_outputs: Option<u32>,
    /// Most bytes one input may produce, all outputs together.
    pub max_output_bytes: Option<ByteSize>,
    /// Cap on the module's key/value state (keys plus values).
    pub state_bytes: Option<ByteSize>,
    /// Wall-clock time one record may take in a stage (`"2s"`).
    #[serde(default, deserialize_with = "crate::common::duration::opt_duration")]
    pub deadline: Option<std::time::Duration>,
}

impl LimitsConfig {
    /// `self` where set, else `base`.
    pub fn over(&self, base: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(base.fuel),
            memory_bytes: self.memory.map_or(base.memory_bytes, |b| b.0),
            max_outputs: self.max_outputs.unwrap_or(base.max_outputs),
            max_output_bytes: self.max_output_bytes.map_or(base.max_output_bytes, |b| b.0),
            state_bytes: self.state_bytes.map_or(base.state_bytes, |b| b.0),
            deadline: self.deadline.unwrap_or(base.deadline),
        }
    }
}

/// `[[source]]`, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A serial line.
    Serial(crate::sources::serial::SerialConfig),
    /// An MQTT broker.
    Mqtt(crate::sources::mqtt::MqttConfig),
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Serial(s) => &s.name,
            SourceConfig::Mqtt(m) => &m.name,
        }
    }
}

/// `[[pipeline]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Unique name.
    pub name: String,
    /// Sources that feed this pipeline (empty: all of them).
    #[serde(default)]
    pub sources: Vec<String>,
    /// MQTT-style topic filters a record must match (empty: all topics).
    #[serde(default)]
    pub topics: Vec<String>,
    /// What happens to a record a stage fails on.
    #[serde(default)]
    pub on_error: ErrorPolicy,
    /// Consecutive failures after which a stage is quarantined.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// Limits for this pipeline's stages unless a stage overrides them.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[[pipeline.stage]]`: the stages, in order.
    #[serde(rename = "stage")]
    pub stages: Vec<StageConfig>,
}

fn default_quarantine_after() -> u32 {
    10
}

/// `[[pipeline.stage]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Unique name within the pipeline.
    pub name: String,
    /// Path of the `.wasm` file (relative to `gateway.modules_dir` or the config).
    pub module: PathBuf,
    /// Capabilities granted to the module.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Reuse one instance across records, or a fresh one per record.
    #[serde(default)]
    pub isolation: Isolation,
    /// Limits for this stage.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Free-form table handed to the module's `weir_init` as a CBOR map.
    #[serde(default)]
    pub config: toml::Table,
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Config::parse(&text, &file, &base)
    }

    /// Parse and validate config text; `file` and `base_dir` are for messages and paths.
    pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        // `${NAME}` in string values: expanded from the environment, in
        // the text, so errors keep their line numbers.
        let expanded = secrets::expand(text, file)?;
        let text = expanded.as_deref().unwrap_or(text);
        let error = |e: serde_path_to_error::Error<toml::de::Error>| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.message().trim().to_string();
            if let Some(span) = inner.span() {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                message.push_str(&format!(" (line {line}, column {column})"));
            }
            ConfigError {
                file: file.into(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
            }
        };
        let mut cfg: Config =
            serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(error)?;
        cfg.file = file.into();
        cfg.base_dir = base_dir.to_path_buf();
        // Push results are published with the status: `[modules]` turns
        // it on, through the same sink, with its defaults.
        if let Some(m) = &cfg.modules
            && cfg.status.is_none()
        {
            cfg.status = Some(crate::metrics::status::StatusConfig {
                sink: m.sink.clone(),
                topic: Some(format!("{}/{{gateway_id}}/status", m.prefix)),
                every: std::time::Duration::from_secs(60),
            });
        }
        cfg.read_password_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Fill `password` from `password_file` (sources and sinks); both set
    /// is an error.
    fn read_password_files(&mut self) -> Result<(), ConfigError> {
        let base = self.base_dir.clone();
        let mut problems = Vec::new();
        let mut fill = |at: String, pw: &mut Option<String>, f: &Option<PathBuf>| {
            let Some(f) = f else { return };
            if pw.is_some() {
                problems.push((
                    at,
                    "set `password` or `password_file`, not both".to_string(),
                ));
                return;
            }
            match secrets::read_password(f, &base) {
                Ok(p) => *pw = Some(p),
                Err(e) => problems.push((at, e)),
            }
        };
        for (i, s) in self.sources.iter_mut().enumerate() {
            if let SourceConfig::Mqtt(m) = s {
                fill(
                    format!("source[{i}].password_file"),
                    &mut m.password,
                    &m.password_file,
                );
            }
        }
        for (i, s) in self.sinks.iter_mut().enumerate() {
            fill(
                format!("sink[{i}].password_file"),
                &mut s.password,
                &s.password_file,
            );
        }
        match problems.into_iter().next() {
            Some((key, message)) => Err(self.err(key, message)),
            None => Ok(()),
        }
    }

    fn err(&self, key: impl fmt::Display, message: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Semantic checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway.id.is_empty() || self.gateway.id.contains(['/', '+', '#']) {
            return Err(self.err(
                "gateway.id",
                "must be non-empty and contain no '/', '+' or '#'",
            ));
        }
        let defaults = self.defaults.limits.over(Limits::default());
        self.check_limits("defaults.limits", defaults)?;
        let mut source_names = HashSet::new();
        for (i, src) in self.sources.iter().enumerate() {
            let at = format!("source[{i}]");
            if src.name().is_empty() || !source_names.insert(src.name()) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!("`{}` is empty or used twice", src.name()),
                ));
            }
            match src {
                SourceConfig::Serial(s) => self.check_serial(&at, s)?,
                SourceConfig::Mqtt(m) => self.check_mqtt(&at, m)?,
            }
        }
        let mut names = HashSet::new();
        for (p, pipe) in self.pipelines.iter().enumerate() {
            let at = format!("pipeline[{p}]");
            if pipe.name.is_empty() || !names.insert(pipe.name.as_str()) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!("`{}` is empty or used twice", pipe.name),
                ));
            }
            if pipe.quarantine_after == 0 {
                return Err(self.err(format!("{at}.quarantine_after"), "must be at least 1"));
            }
            for (i, name) in pipe.sources.iter().enumerate() {
                if !source_names.contains(name.as_str()) {
                    return Err(self.err(
                        format!("{at}.sources[{i}]"),
                        format!("no source is named `{name}`"),
                    ));
                }
            }
            for (i, filter) in pipe.topics.iter().enumerate() {
                if let Err(why) = crate::common::topic::valid_filter(filter) {
                    return Err(self.err(format!("{at}.topics[{i}]"), format!("`{filter}`: {why}")));
                }
            }
            if pipe.stages.is_empty() {
                return Err(self.err(format!("{at}.stage"), "a pipeline needs at least one stage"));
            }
            let mut stage_names = HashSet::new();
            for (s, stage) in pipe.stages.iter().enumerate() {
                let at = format!("{at}.stage[{s}]");
                if stage.name.is_empty() || !stage_names.insert(stage.name.as_str()) {
                    return Err(self.err(
                        format!("{at}.name"),
                        format!("`{}` is empty or used twice", stage.name),
                    ));
                }
                self.check_limits(&format!("{at}.limits"), self.stage_limits(pipe, stage))?;
                let path = self.module_path(stage);
                if !path.is_file() {
                    return Err(self.err(
                        format!("{at}.module"),
                        format!("no such file: {}", path.display()),
                    ));
                }
                let mut seen = HashSet::new();
                for (g, grant) in stage.grants.iter().enumerate() {
                    if !seen.insert(*grant) {
                        return Err(self.err(
                            format!("{at}.grants[{g}]"),
                            format!("`{grant}` granted twice"),
                        ));
                    }
                }
            }
        }
        let mut sink_names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let at = format!("sink[{i}]");
            let name_ok = !sink.name.is_empty()
                && sink
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok || !sink_names.insert(sink.name.as_str()) {
                return Err(self.err(
                    format!("{at}.name"),
                    format!(
                        "`{}` is empty, used twice, or not made of letters, digits, '-', '_', '.'",
                        sink.name
                    ),
                ));
            }
            for (p, name) in sink.pipelines.iter().enumerate() {
                if !names.contains(name.as_str()) {
                    return Err(self.err(
                        format!("{at}.pipelines[{p}]"),
                        format!("no pipeline is named `{name}`"),
                    ));
                }
            }
            if let Err((key, message)) = sink.check(&self.gateway.id) {
                return Err(self.err(format!("{at}.{key}"), message));
            }
        }
        // `[modules]` first: it may have turned `[status]` on.
        if let Some(m) = &self.modules {
            if let Err((key, message)) = m.check() {
                return Err(self.err(key, message));
            }
            if self.modules_sink().is_none() {
                let why = match &m.sink {
                    Some(n) => format!("no MQTT sink is named `{n}`"),
                    None => "needs an MQTT sink whose broker carries pushes: add one, or remove [modules]".into(),
                };
                return Err(self.err("modules.sink", why));
            }
            for pipe in m.allow.keys() {
                if !self.pipelines.iter().any(|p| &p.name == pipe) {
                    return Err(self.err(
                        format!("modules.allow.{pipe}"),
                        format!("no pipeline is named `{pipe}`"),
                    ));
                }
            }
        }
        if let Some(st) = &self.status
            && self.status_sink().is_none()
        {
            let why = match &st.sink {
                Some(n) => format!("no MQTT sink is named `{n}`"),
                None => "needs an MQTT sink to publish through: add one, or remove [status]".into(),
            };
            return Err(self.err("status.sink", why));
        }
        Ok(())
    }

    /// The MQTT sink whose broker carries module pushes (`[modules] sink`,
    /// or the first MQTT sink).
    pub fn modules_sink(&self) -> Option<crate::sinks::SinkConfig> {
        let m = self.modules.as_ref()?;
        self.sinks
            .iter()
            .find(|s| {
                s.kind == crate::sinks::SinkType::Mqtt
                    && m.sink.as_ref().is_none_or(|n| *n == s.name)
            })
            .cloned()
    }

    /// Where pushed modules are kept: `[modules] dir`, or `modules` beside
    /// the store.
    pub fn modules_dir(&self) -> PathBuf {
        match self.modules.as_ref().and_then(|m| m.dir.as_ref()) {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => self.base_dir.join(d),
            None => self.store_path().with_file_name("modules"),
        }
    }

    /// The trusted keys of `[modules]`, read.
    pub fn trusted_keys(&self) -> Result<Vec<ed25519_dalek::VerifyingKey>, ConfigError> {
        let Some(m) = &self.modules else {
            return Ok(Vec::new());
        };
        m.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                crate::deploy::keys::read_trusted(k, &self.base_dir)
                    .map_err(|e| self.err(format!("modules.keys[{i}]"), e))
            })
            .collect()
    }

    /// The MQTT sink whose broker gets the status message (`[status] sink`,
    /// or the first MQTT sink).
    pub fn status_sink(&self) -> Option<crate::sinks::SinkConfig> {
        let st = self.status.as_ref()?;
        self.sinks
            .iter()
            .find(|s| {
                s.kind == crate::sinks::SinkType::Mqtt
                    && st.sink.as_ref().is_none_or(|n| *n == s.name)
            })
            .cloned()
    }

    /// The sinks in effect: as configured, or stdout for everything.
    pub fn sinks(&self) -> Vec<crate::sinks::SinkConfig> {
        if self.sinks.is_empty() {
            vec![crate::sinks::SinkConfig::default_stdout()]
        } else {
            self.sinks.clone()
        }
    }

    /// Where the store lives: `[store] path` (relative to the config file),
    /// else `$STATE_DIRECTORY/store` (systemd), else `weir-state/store`
    /// next to the config file.
    pub fn store_path(&self) -> PathBuf {
        match &self.store.path {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => self.base_dir.join(p),
            None => match std::env::var_os("STATE_DIRECTORY") {
                Some(d) if !d.is_empty() => PathBuf::from(d).join("store"),
                _ => self.base_dir.join("weir-state").join("store"),
            },
        }
    }

    fn check_serial(
        &self,
        at: &str,
        s: &crate::sources::serial::SerialConfig,
    ) -> Result<(), ConfigError> {
        use crate::sources::serial::framing::Framing;
        if s.path.is_empty() {
            return Err(self.err(format!("{at}.path"), "must name a device"));
        }
        if s.baud == 0 {
            return Err(self.err(format!("{at}.baud"), "must be positive"));
        }
        if !(5..=8).contains(&s.data_bits) {
            return Err(self.err(format!("{at}.data_bits"), "must be 5, 6, 7 or 8"));
        }
        if !matches!(s.stop_bits, 1 | 2) {
            return Err(self.err(format!("{at}.stop_bits"), "must be 1 or 2"));
        }
        if s.max_message < 16 {
            return Err(self.err(format!("{at}.max_message"), "must be at least 16"));
        }
        if let Framing::LengthPrefixed { width, .. } = s.framing
            && !matches!(width, 1 | 2 | 4)
        {
            return Err(self.err(format!("{at}.framing.width"), "must be 1, 2 or 4"));
        }
        Ok(())
    }

    fn check_mqtt(
        &self,
        at: &str,
        m: &crate::sources::mqtt::MqttConfig,
    ) -> Result<(), ConfigError> {
        if m.host.is_empty() {
            return Err(self.err(format!("{at}.host"), "must name a broker"));
        }
        if !matches!(m.version, 4 | 5) {
            return Err(self.err(format!("{at}.version"), "must be 4 (MQTT 3.1.1) or 5"));
        }
        if m.max_packet.0 < m.max_payload.0 {
            return Err(self.err(format!("{at}.max_packet"), "must be at least `max_payload`"));
        }
        if m.subscribe.is_empty() {
            return Err(self.err(format!("{at}.subscribe"), "needs at least one subscription"));
        }
        for (i, s) in m.subscribe.iter().enumerate() {
            if let Err(why) = crate::common::topic::valid_filter(&s.filter) {
                return Err(self.err(
                    format!("{at}.subscribe[{i}].filter"),
                    format!("`{}`: {why}", s.filter),
                ));
            }
            if s.qos > 2 {
                return Err(self.err(format!("{at}.subscribe[{i}].qos"), "must be 0, 1 or 2"));
            }
        }
        if let Some(p) = &m.topic_fields
            && let Err(why) = crate::sources::mqtt::convert::TopicFields::parse(p)
        {
            return Err(self.err(format!("{at}.topic_fields"), why));
        }
        if let Some(tls) = &m.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(self.err(
                format!("{at}.tls"),
                "`cert` and `key` go together: set both for mTLS, or neither",
            ));
        }
        Ok(())
    }

    /// What the daemon needs from the file system, beyond the config's
    /// own consistency: every TLS file readable (by the user running this)
    /// and holding what its key says, every trusted module key readable,
    /// and the store's and the pushed modules' directories writable.
    /// `weir check` fails on these; `weir serve` starts anyway, and the
    /// source or sink concerned logs the problem and retries until the file
    /// is fixed. Returns every problem, not only the first.
    pub fn check_files(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let tls = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                SourceConfig::Mqtt(m) => m.tls.as_ref().map(|t| (format!("source[{i}]"), t)),
                SourceConfig::Serial(_) => None,
            })
            .chain(
                self.sinks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.tls.as_ref().map(|t| (format!("sink[{i}]"), t))),
            );
        for (at, files) in tls {
            if let Err(e) = files.client_config() {
                problems.push(self.err(format!("{at}.{}", e.config_key()), e));
            }
        }
        if let Err(e) = self.trusted_keys() {
            problems.push(e);
        }
        if self
            .sinks()
            .iter()
            .any(crate::sinks::SinkConfig::is_durable)
        {
            let path = self.store_path();
            // The store, and beside it its message-id high-water mark.
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            for dir in std::iter::once(path.as_path()).chain(parent) {
                if let Err(why) = writable_dir(dir) {
                    problems.push(self.err("store.path", format!("{}: {why}", path.display())));
                    break;
                }
            }
        }
        // Pushed bundles and their ledgers are kept there.
        if self.modules.is_some() {
            let dir = self.modules_dir();
            if let Err(why) = writable_dir(&dir) {
                problems.push(self.err("modules.dir", format!("{}: {why}", dir.display())));
            }
        }
        problems
    }

    fn check_limits(&self, at: &str, l: Limits) -> Result<(), ConfigError> {
        if l.fuel == 0 {
            return Err(self.err(format!("{at}.fuel"), "must be at least 1"));
        }
        if l.memory_bytes < 65_536 {
            return Err(self.err(
                format!("{at}.memory"),
                "must be at least 64 KiB (one Wasm page)",
            ));
        }
        if l.deadline.is_zero() {
            return Err(self.err(format!("{at}.deadline"), "must be positive"));
        }
        if l.max_outputs == 0 {
            return Err(self.err(format!("{at}.max_outputs"), "must be at least 1"));
        }
        Ok(())
    }

    /// The effective limits of a stage: built-in defaults, then `[defaults.limits]`,
    /// then the pipeline's, then the stage's.
    pub fn stage_limits(&self, pipe: &PipelineConfig, stage: &StageConfig) -> Limits {
        let l = self.defaults.limits.over(Limits::default());
        stage.limits.over(pipe.limits.over(l))
    }

    /// Where a stage's module file is.
    pub fn module_path(&self, stage: &StageConfig) -> PathBuf {
        let dir = match &self.gateway.modules_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => self.base_dir.join(d),
            None => self.base_dir.clone(),
        };
        dir.join(&stage.module)
    }
}

/// Whether the store at `path` can be opened for writing: the directory
/// itself if it exists, else the nearest existing parent (where it would
/// be created).
fn writable_dir(path: &Path) -> Result<(), String> {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(()),
        }
    }
    let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
        .map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: access() reads a NUL-terminated path and touches no memory of ours.
    let ok = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not writable by this user: {} (the service's user must own its state directory)",
            at.display(),
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(test)]
mod tests;
