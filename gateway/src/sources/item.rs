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

/// Where a QoS 1/2 MQTT message came from, to recognise a broker's
/// redelivery (DUP) of a message already taken in before a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The source's name.
    pub source: String,
    /// The MQTT packet identifier.
    pub pkid: u16,
    /// The DUP flag: the broker sent this message before.
    pub dup: bool,
    /// CRC-32 of topic and payload.
    pub digest: u32,
}

impl Origin {
    /// The origin of a message.
    pub fn new(source: &str, pkid: u16, dup: bool, topic: &[u8], payload: &[u8]) -> Origin {
        const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
        let mut d = CRC.digest();
        d.update(topic);
        d.update(&[0]);
        d.update(payload);
        Origin {
            source: source.to_string(),
            pkid,
            dup,
            digest: d.finalize(),
        }
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
        /// For redelivery detection (MQTT QoS 1/2 only).
        origin: Option<Origin>,
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
