//! Routing: which records feed which pipeline. A pipeline names the sources
//! it takes (none: all) and MQTT-style topic filters (none: all topics);
//! one record can feed several pipelines.

use crate::common::topic::topic_matches;
use crate::config::Config;
use std::collections::HashMap;
use std::path::PathBuf;

use crate::deploy::Overlay;
use crate::pipeline::chain::BuildError;
use crate::pipeline::{CarryState, Pipeline, PipelineOutput, Runtime, Stage, StageSpec};
use crate::record::Record;

/// Build every pipeline of a config. Each module file is compiled once,
/// however many stages use it.
pub fn build_pipelines(cfg: &Config, rt: &Runtime) -> Result<Vec<Pipeline>, Box<BuildError>> {
    build_with(cfg, rt, &Overlay::new(), None)
}

/// Which stage a swap carries state into, and how: a pushed module's
/// manifest decides for its stage (`(pipeline, stage, how)`).
pub type Carry<'a> = Option<(&'a str, &'a str, CarryState)>;

/// [`build_pipelines`] with pushed modules in place of the configured ones
/// (`overlay`), and `carry` for the stage a push swaps.
pub fn build_with(
    cfg: &Config,
    rt: &Runtime,
    overlay: &Overlay,
    carry: Carry<'_>,
) -> Result<Vec<Pipeline>, Box<BuildError>> {
    let mut compiled: HashMap<PathBuf, crate::pipeline::CompiledModule> = HashMap::new();
    let mut out = Vec::new();
    for p in &cfg.pipelines {
        let mut stages = Vec::new();
        for s in &p.stages {
            let pushed = overlay.get(&(p.name.clone(), s.name.clone()));
            let path = match pushed {
                Some(m) => PathBuf::from(format!("{} (pushed)", m.label)),
                None => cfg.module_path(s),
            };
            let err = |source| {
                Box::new(BuildError {
                    pipeline: p.name.clone(),
                    stage: s.name.clone(),
                    module: path.display().to_string(),
                    source,
                })
            };
            let module = match (compiled.get(&path), pushed) {
                (Some(m), _) => m.clone(),
                (None, Some(m)) => {
                    let c = rt
                        .compile(&m.label, &m.wasm)
                        .map_err(err)?
                        .with_version(&m.version);
                    compiled.insert(path.clone(), c.clone());
                    c
                }
                (None, None) => {
                    let m = rt.compile_file(&path).map_err(err)?;
                    compiled.insert(path.clone(), m.clone());
                    m
                }
            };
            let spec = StageSpec {
                label: format!("{}/{}", p.name, s.name),
                module,
                grants: pushed.map_or_else(|| s.grants.clone(), |m| m.grants.clone()),
                limits: cfg.stage_limits(p, s),
                isolation: s.isolation,
                config: serde_cbor::to_vec(&s.config).expect("a TOML table serializes"),
                quarantine_after: p.quarantine_after,
            };
            let mut stage = Stage::new(spec).map_err(err)?;
            if let Some((cp, cs, how)) = carry
                && cp == p.name
                && cs == s.name
            {
                stage.set_carry(how);
            }
            stages.push(stage);
        }
        out.push(Pipeline::new(p.name.clone(), stages, p.on_error));
    }
    Ok(out)
}

/// Every pipeline with its route: hands each record to the pipelines that
/// take it.
pub struct Router {
    pipelines: Vec<(Pipeline, Route)>,
    out: PipelineOutput,
}

impl Router {
    /// Build every pipeline of a config with its route.
    pub fn from_config(cfg: &Config, rt: &Runtime) -> Result<Router, Box<BuildError>> {
        Router::build(cfg, rt, &Overlay::new(), None)
    }

    /// [`Router::from_config`] with pushed modules (see [`build_with`]).
    pub fn build(
        cfg: &Config,
        rt: &Runtime,
        overlay: &Overlay,
        carry: Carry<'_>,
    ) -> Result<Router, Box<BuildError>> {
        let pipelines = build_with(cfg, rt, overlay, carry)?;
        let routes = cfg.pipelines.iter().map(|p| Route {
            sources: p.sources.clone(),
            topics: p.topics.clone(),
        });
        Ok(Router {
            pipelines: pipelines.into_iter().zip(routes).collect(),
            out: PipelineOutput::default(),
        })
    }

    /// Run `rec` through every pipeline that takes it; `emit` gets each
    /// pipeline's name and output. Returns how many pipelines took it.
    pub fn dispatch(&mut self, rec: &Record, mut emit: impl FnMut(&str, &PipelineOutput)) -> usize {
        let mut cbor = None;
        let mut taken = 0;
        for (p, route) in &mut self.pipelines {
            if !route.accepts(&rec.source, &rec.topic) {
                continue;
            }
            let bytes = cbor.get_or_insert_with(|| rec.to_cbor());
            self.out.clear();
            p.process(bytes, &mut self.out);
            emit(p.name(), &self.out);
            taken += 1;
        }
        taken
    }

    /// Take over what `old` built up (see [`Pipeline::carry_over`]);
    /// returns `(pipeline, stages whose state was kept)`.
    pub fn carry_over(&mut self, old: &mut Router) -> Vec<(String, Vec<String>)> {
        let mut kept = Vec::new();
        for (p, _) in &mut self.pipelines {
            if let Some((o, _)) = old.pipelines.iter_mut().find(|(o, _)| o.name() == p.name()) {
                kept.push((p.name().to_string(), p.carry_over(o)));
            }
        }
        kept
    }

    /// The routes, by pipeline name.
    pub fn routes(&self) -> Vec<(String, Route)> {
        self.pipelines
            .iter()
            .map(|(p, r)| (p.name().to_string(), r.clone()))
            .collect()
    }

    /// Take the pipeline named `name` out, as a router of its own.
    pub fn take(&mut self, name: &str) -> Option<Router> {
        let i = self.pipelines.iter().position(|(p, _)| p.name() == name)?;
        Some(Router {
            pipelines: vec![self.pipelines.remove(i)],
            out: PipelineOutput::default(),
        })
    }

    /// The pipelines.
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.pipelines.iter().map(|(p, _)| p)
    }

    /// One router per pipeline (a thread each), with the routes.
    pub fn split(self) -> Vec<(Route, Router)> {
        self.pipelines
            .into_iter()
            .map(|(p, route)| {
                let r = Router {
                    pipelines: vec![(p, route.clone())],
                    out: PipelineOutput::default(),
                };
                (route, r)
            })
            .collect()
    }

    /// The routers of [`Router::split`] together again (for the report).
    pub fn join(parts: Vec<Router>) -> Router {
        Router {
            pipelines: parts.into_iter().flat_map(|r| r.pipelines).collect(),
            out: PipelineOutput::default(),
        }
    }

    /// A router without pipelines (its intake takes source dead letters).
    pub fn empty() -> Router {
        Router {
            pipelines: Vec::new(),
            out: PipelineOutput::default(),
        }
    }
}

/// Which records a pipeline takes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Route {
    /// Source names; empty: every source.
    pub sources: Vec<String>,
    /// Topic filters; empty: every topic.
    pub topics: Vec<String>,
}

impl Route {
    /// Whether a record from `source` on `topic` goes to this pipeline.
    pub fn accepts(&self, source: &str, topic: &str) -> bool {
        (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
            && (self.topics.is_empty() || self.topics.iter().any(|f| topic_matches(f, topic)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_combine_sources_and_topics() {
        let r = Route {
            sources: vec!["serial0".into()],
            topics: vec!["sensors/#".into()],
        };
        assert!(r.accepts("serial0", "sensors/1/telemetry"));
        assert!(!r.accepts("mqtt", "sensors/1/telemetry"));
        assert!(!r.accepts("serial0", "status/1"));
        assert!(Route::default().accepts("any", "thing"));
    }
}
