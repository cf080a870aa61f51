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

    /// `n` shares of this acknowledgement: it is sent when every share
    /// was acknowledged, never if one is dropped unacknowledged (one input
    /// handled by several pipelines, each on its own thread).
    pub fn split(self, n: usize) -> Vec<Ack> {
        if n <= 1 {
            return vec![self];
        }
        use std::sync::atomic::{AtomicUsize, Ordering::AcqRel};
        let shared = std::sync::Arc::new((AtomicUsize::new(n), std::sync::Mutex::new(Some(self))));
        (0..n)
            .map(|_| {
                let s = shared.clone();
                Ack::new(move || {
                    if s.0.fetch_sub(1, AcqRel) == 1 {
                        let ack = s.1.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some(a) = ack {
                            a.ack();
                        }
                    }
                })
            })
            .collect()
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
    /// The pipeline handling it, where each has its own thread (its
    /// redelivery marker is its own); empty otherwise.
    pub lane: String,
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
            lane: String::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn a_split_ack_goes_out_once_when_every_share_is_acked() {
        let sent = Arc::new(AtomicUsize::new(0));
        let s = sent.clone();
        let mut shares = Ack::new(move || {
            s.fetch_add(1, SeqCst);
        })
        .split(3);
        shares.pop().unwrap().ack();
        shares.pop().unwrap().ack();
        assert_eq!(sent.load(SeqCst), 0);
        shares.pop().unwrap().ack();
        assert_eq!(sent.load(SeqCst), 1);
    }

    #[test]
    fn a_dropped_share_means_no_ack() {
        let sent = Arc::new(AtomicUsize::new(0));
        let s = sent.clone();
        let mut shares = Ack::new(move || {
            s.fetch_add(1, SeqCst);
        })
        .split(2);
        drop(shares.pop());
        shares.pop().unwrap().ack();
        assert_eq!(sent.load(SeqCst), 0);
    }
}
