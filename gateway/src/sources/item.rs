//! What sources hand to the pipeline thread.

use crate::record::Record;

/// Called once the item has been handled downstream (processed, and its
/// output written): for MQTT, the PUBACK/PUBREC to the broker.
pub struct Ack(Box<dyn FnOnce() + Send>);

impl Ack {
    /// An acknowledgement that runs `f`.
    pub fn new(f: impl FnOnce() + Send + 'static) -> Ack {
        Ack(Box::new(f))
    }

    /// Acknowledge.
    pub fn ack(self) {
        (self.0)()
    }
}

/// One unit of work for the pipelines.
pub enum Item {
    /// A record, with its acknowledgement if the source needs one.
    Record {
        /// The record.
        record: Record,
        /// To call after it is handled.
        ack: Option<Ack>,
    },
    /// Input that could not become a record, for dead-letter.
    Rejected {
        /// The source.
        source: String,
        /// The topic or subject.
        topic: String,
        /// The counter kind.
        kind: &'static str,
        /// What was wrong.
        error: String,
        /// The raw bytes.
        bytes: Vec<u8>,
        /// To call after it is written.
        ack: Option<Ack>,
    },
}
