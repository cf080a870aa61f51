//! Routing: which records feed which pipeline. A pipeline names the sources
//! it takes (none: all) and MQTT-style topic filters (none: all topics);
//! one record can feed several pipelines.

use crate::config::Config;
use crate::pipeline::chain::BuildError;
use crate::pipeline::{Pipeline, PipelineOutput, Runtime};
use crate::record::Record;

/// Every pipeline with its route: hands each record to the pipelines that
/// take it.
pub struct Router {
    pipelines: Vec<(Pipeline, Route)>,
    out: PipelineOutput,
}

impl Router {
    /// Build every pipeline of a config with its route.
    pub fn from_config(cfg: &Config, rt: &Runtime) -> Result<Router, Box<BuildError>> {
        let pipelines = Pipeline::build_all(cfg, rt)?;
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

/// Whether MQTT topic filter `filter` matches `topic`: `+` matches one level,
/// `#` (last) matches any number of levels, including none.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `filter` is a valid MQTT topic filter.
pub fn valid_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
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
    fn filters_match_like_mqtt() {
        for (filter, topic, want) in [
            ("sensors/+/telemetry", "sensors/s1/telemetry", true),
            ("sensors/+/telemetry", "sensors/s1/status", false),
            ("sensors/+/telemetry", "sensors/a/b/telemetry", false),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/a/b", true),
            ("#", "anything/at/all", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+", "a/", true),
            ("+/+", "a", false),
        ] {
            assert_eq!(topic_matches(filter, topic), want, "{filter} {topic}");
        }
    }

    #[test]
    fn invalid_filters_are_refused() {
        for bad in ["", "a/#/b", "a#", "a/b+", "+x/y"] {
            assert!(valid_filter(bad).is_err(), "{bad}");
        }
        for good in ["#", "+", "a/+/b/#", "sensors/s1/telemetry"] {
            assert!(valid_filter(good).is_ok(), "{good}");
        }
    }

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
