//! A pipeline: stages in order, and the error policy applied to a record a
//! stage fails on.

use super::ErrorPolicy;
use super::error::{LoadError, StageError};
use super::host::Outputs;
use super::stage::Stage;

/// A record a stage failed on, sent to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The stage (`pipeline/stage`).
    pub stage: String,
    /// What went wrong.
    pub error: StageError,
    /// The record as the stage received it (ABI v1 CBOR).
    pub record: Vec<u8>,
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct PipelineOutput {
    /// Records out of the last stage (ABI v1 CBOR).
    pub records: Outputs,
    /// Records sent to dead-letter.
    pub dead: Vec<DeadLetter>,
    /// Downlink commands the stages asked for (`serial_send`), from the
    /// records that succeeded.
    pub downlink: Vec<super::Downlink>,
}

impl PipelineOutput {
    /// Forget everything (keeps allocations).
    pub fn clear(&mut self) {
        self.records.clear();
        self.dead.clear();
        self.downlink.clear();
    }
}

/// Counters for one pipeline.
#[derive(Debug, Default, Clone)]
pub struct PipelineMetrics {
    /// Inputs.
    pub records_in: u64,
    /// Records out of the last stage.
    pub records_out: u64,
    /// Failed records dropped by policy.
    pub policy_dropped: u64,
    /// Failed records passed on unchanged by policy.
    pub policy_passed: u64,
    /// Failed records sent to dead-letter.
    pub dead_lettered: u64,
}

/// A pipeline ready to process records.
pub struct Pipeline {
    name: String,
    stages: Vec<Stage>,
    policy: ErrorPolicy,
    cur: Outputs,
    next: Outputs,
    metrics: PipelineMetrics,
}

/// A stage of the config could not be built.
#[derive(Debug, thiserror::Error)]
#[error("pipeline `{pipeline}`, stage `{stage}` ({module}): {source}")]
pub struct BuildError {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// Module path.
    pub module: String,
    /// The cause.
    pub source: LoadError,
}

impl Pipeline {
    /// A pipeline of ready stages.
    pub fn new(name: impl Into<String>, stages: Vec<Stage>, policy: ErrorPolicy) -> Self {
        Pipeline {
            name: name.into(),
            stages,
            policy,
            cur: Outputs::default(),
            next: Outputs::default(),
            metrics: PipelineMetrics::default(),
        }
    }

    /// Take over what `old` (the same pipeline before a reload) built up:
    /// its counters, and each same-named stage's counters and, when the
    /// stage is unchanged, its state. Returns the stages whose state was
    /// kept.
    pub fn carry_over(&mut self, old: &mut Pipeline) -> Vec<String> {
        self.metrics = old.metrics.clone();
        let mut kept = Vec::new();
        for s in &mut self.stages {
            if let Some(o) = old.stages.iter_mut().find(|o| o.name() == s.name())
                && s.carry_over(o)
            {
                kept.push(s.name().to_string());
            }
        }
        kept
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Counters.
    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// Run one record (ABI v1 CBOR) through every stage, appending results to `out`.
    pub fn process(&mut self, input: &[u8], out: &mut PipelineOutput) {
        let Pipeline {
            stages,
            policy,
            cur,
            next,
            metrics,
            ..
        } = self;
        metrics.records_in += 1;
        cur.clear();
        cur.push(input);
        for stage in stages.iter_mut() {
            next.clear();
            for rec in cur.iter() {
                match stage.process(rec) {
                    Ok(outputs) => {
                        outputs.iter().for_each(|r| next.push(r));
                        out.downlink.extend_from_slice(stage.downlink());
                    }
                    Err(error) => match policy {
                        ErrorPolicy::Drop => metrics.policy_dropped += 1,
                        ErrorPolicy::Pass => {
                            metrics.policy_passed += 1;
                            next.push(rec);
                        }
                        ErrorPolicy::DeadLetter => {
                            metrics.dead_lettered += 1;
                            out.dead.push(DeadLetter {
                                stage: stage.label().to_owned(),
                                error,
                                record: rec.to_vec(),
                            });
                        }
                    },
                }
            }
            std::mem::swap(cur, next);
            if cur.is_empty() {
                break;
            }
        }
        metrics.records_out += cur.len() as u64;
        cur.iter().for_each(|r| out.records.push(r));
    }
}
