//! [`Record`]: the ABI v1 record map, read lazily and written back by copying
//! what did not change.

use weir_abi::record as key;

use crate::{Error, Fields, Value};
use weir_abi::cbor::{self, Reader, Writer};

/// One telemetry record, as described in ABI.md ("The record").
///
/// `source`, `topic` and `ts` are read through methods and decoded only when
/// asked for; `headers` and `payload` are lazy [`Fields`]. When the envelope is
/// untouched and the payload is the record's last entry (as the host writes
/// it), encoding copies the envelope's bytes and re-encodes only the payload.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// Metadata, text to text.
    pub headers: Fields<'a>,
    /// The payload's fields, when the payload is a map.
    pub payload: Fields<'a>,
    /// The payload itself, when it is not a map (then `payload` is empty).
    /// Setting it replaces the payload on output.
    pub raw_payload: Option<Value<'a>>,
    source: &'a [u8],
    topic: &'a [u8],
    ts: u64,
    /// The input bytes (empty for a record built by the guest).
    input: &'a [u8],
    /// Where the payload's value starts in `input`, if it is the last entry
    /// and every other entry is a known key (else 0: no envelope copy).
    payload_value_at: usize,
    /// Set by the setters: the envelope must be re-encoded.
    envelope_changed: bool,
}

fn utf8(b: &[u8]) -> Result<&str, Error> {
    core::str::from_utf8(b).map_err(|_| Error::Input)
}

impl<'a> Record<'a> {
    /// A new record (for example one a transform emits besides its input).
    pub fn new(source: &'a str, topic: &'a str, ts: u64) -> Self {
        Record {
            source: source.as_bytes(),
            topic: topic.as_bytes(),
            ts,
            envelope_changed: true,
            ..Default::default()
        }
    }

    /// Read a record map. Unknown keys are ignored (and not re-emitted);
    /// missing required keys are an error.
    pub fn decode(input: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(input);
        let h = r.head()?;
        if h.major != cbor::MAP || h.indefinite() {
            return Err(Error::Input);
        }
        let mut rec = Record {
            input,
            ..Default::default()
        };
        let mut seen = 0u8;
        let mut clean = true;
        for i in 0..h.arg {
            let k = r.text_bytes()?;
            match (k.len(), k.first()) {
                (6, Some(b's')) if cbor::bytes_eq(k, key::SOURCE.as_bytes()) => {
                    rec.source = r.text_bytes()?;
                    seen |= 1;
                }
                (5, Some(b't')) if cbor::bytes_eq(k, key::TOPIC.as_bytes()) => {
                    rec.topic = r.text_bytes()?;
                    seen |= 2;
                }
                (2, Some(b't')) if cbor::bytes_eq(k, key::TS.as_bytes()) => {
                    let h = r.head()?;
                    if h.major != cbor::UINT {
                        return Err(Error::Input);
                    }
                    rec.ts = h.arg;
                    seen |= 4;
                }
                (7, Some(b'h')) if cbor::bytes_eq(k, key::HEADERS.as_bytes()) => {
                    rec.headers = Fields::read(&mut r, false)?;
                }
                (7, Some(b'p')) if cbor::bytes_eq(k, key::PAYLOAD.as_bytes()) => {
                    seen |= 8;
                    let last = i + 1 == h.arg;
                    if clean && last {
                        rec.payload_value_at = r.pos();
                    }
                    if r.peek()
                        .is_some_and(|b| b >> 5 == cbor::MAP && b & 0x1f != 31)
                    {
                        rec.payload = Fields::read(&mut r, last)?;
                    } else {
                        rec.raw_payload = Some(Value::decode(&mut r)?);
                    }
                }
                _ => {
                    clean = false;
                    r.skip()?;
                }
            }
        }
        if seen != 15 || !r.at_end() {
            return Err(Error::Input);
        }
        utf8(rec.source)?;
        utf8(rec.topic)?;
        Ok(rec)
    }

    /// The source that produced the record.
    pub fn source(&self) -> &'a str {
        // Validated by `decode` or set from a `&str`.
        utf8(self.source).unwrap_or("")
    }

    /// MQTT topic or other subject.
    pub fn topic(&self) -> &'a str {
        utf8(self.topic).unwrap_or("")
    }

    /// Receive time at the gateway, ms since the Unix epoch.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// Replace the source.
    pub fn set_source(&mut self, source: &'a str) {
        self.source = source.as_bytes();
        self.envelope_changed = true;
    }

    /// Replace the topic.
    pub fn set_topic(&mut self, topic: &'a str) {
        self.topic = topic.as_bytes();
        self.envelope_changed = true;
    }

    /// Replace the timestamp.
    pub fn set_ts(&mut self, ts: u64) {
        self.ts = ts;
        self.envelope_changed = true;
    }

    fn envelope_copyable(&self) -> bool {
        self.payload_value_at != 0 && !self.envelope_changed && self.headers.is_unchanged()
    }

    /// True if the record would encode to exactly its input.
    pub fn is_unchanged(&self) -> bool {
        self.envelope_copyable() && self.payload.is_unchanged() && self.raw_payload.is_none()
    }

    /// The input this record was decoded from (empty for a new record).
    pub fn input(&self) -> &'a [u8] {
        self.input
    }

    /// Encode into `buf`, returning the length. [`Error::Resource`] if it does not fit.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut w = Writer::new(buf);
        if self.envelope_copyable() && self.raw_payload.is_none() {
            w.raw(
                self.input
                    .get(..self.payload_value_at)
                    .ok_or(Error::Input)?,
            )?;
            self.payload.encode(&mut w)?;
            return Ok(w.len());
        }
        let has_headers = !self.headers.is_empty();
        w.head(cbor::MAP, 4 + u64::from(has_headers))?;
        w.text(key::SOURCE)?;
        w.text(self.source())?;
        w.text(key::TOPIC)?;
        w.text(self.topic())?;
        w.text(key::TS)?;
        w.head(cbor::UINT, self.ts)?;
        if has_headers {
            w.text(key::HEADERS)?;
            self.headers.encode(&mut w)?;
        }
        w.text(key::PAYLOAD)?;
        match &self.raw_payload {
            Some(v) => v.encode(&mut w)?,
            None => self.payload.encode(&mut w)?,
        }
        Ok(w.len())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.str(name)
    }

    /// Set a header.
    pub fn set_header(&mut self, name: &'a str, value: &'a str) -> Result<(), Error> {
        self.headers.set(name, Value::Text(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(buf: &mut [u8]) -> usize {
        let mut r = Record::new("serial0", "sensors/s1/telemetry", 1_732_380_000_123);
        r.payload.set("id", Value::Text("s1")).unwrap();
        r.payload.set("temp_c", Value::Float(21.53)).unwrap();
        r.payload.set("seq", Value::Int(42)).unwrap();
        r.set_header("k", "v").unwrap();
        r.encode_into(buf).unwrap()
    }

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 256];
        let n = sample(&mut buf);
        let r = Record::decode(&buf[..n]).unwrap();
        assert_eq!(r.topic(), "sensors/s1/telemetry");
        assert_eq!(r.ts(), 1_732_380_000_123);
        assert_eq!(r.payload.f64("temp_c"), Some(21.53));
        assert_eq!(r.payload.get("seq"), Some(Value::Int(42)));
        assert_eq!(r.header("k"), Some("v"));
        assert!(r.is_unchanged());
        let mut out = [0u8; 256];
        let m = r.encode_into(&mut out).unwrap();
        assert_eq!(
            &out[..m],
            &buf[..n],
            "an unchanged record encodes to its input"
        );
    }

    #[test]
    fn changes_are_detected_and_applied() {
        let mut buf = [0u8; 256];
        let n = sample(&mut buf);
        let mut r = Record::decode(&buf[..n]).unwrap();
        r.payload.set("temp_f", Value::Float(70.75)).unwrap();
        assert!(!r.is_unchanged());
        let mut out = [0u8; 256];
        let m = r.encode_into(&mut out).unwrap();
        let back = Record::decode(&out[..m]).unwrap();
        assert_eq!(back.payload.f64("temp_f"), Some(70.75));
        assert_eq!(back.payload.str("id"), Some("s1"));
        let mut r2 = Record::decode(&buf[..n]).unwrap();
        r2.set_topic("other");
        assert!(!r2.is_unchanged());
    }

    #[test]
    fn too_small_buffer_is_resource_error() {
        let mut buf = [0u8; 256];
        let n = sample(&mut buf);
        let mut r = Record::decode(&buf[..n]).unwrap();
        r.set_topic("x");
        assert_eq!(r.encode_into(&mut [0u8; 16]), Err(Error::Resource));
    }

    #[test]
    fn malformed_inputs_are_errors_never_panics() {
        let mut buf = [0u8; 256];
        let n = sample(&mut buf);
        // The payload (the last entry) is read lazily: a cut inside it shows
        // when its fields are read. Any cut before it fails decoding.
        let payload_body = n - 28;
        for cut in 0..payload_body {
            assert_eq!(
                Record::decode(&buf[..cut]).unwrap_err(),
                Error::Input,
                "cut at {cut}"
            );
        }
        for cut in payload_body..n {
            if let Ok(r) = Record::decode(&buf[..cut]) {
                let _ = (r.payload.get("seq"), r.payload.len());
                let mut out = [0u8; 256];
                let _ = r.encode_into(&mut out);
            }
        }
        assert_eq!(Record::decode(&[0xa0]).unwrap_err(), Error::Input);
        assert_eq!(Record::decode(&[0xff, 0x00]).unwrap_err(), Error::Input);
    }

    #[test]
    fn half_and_single_floats_decode() {
        // {"source":"s","topic":"t","ts":1,"payload":{"a":f16 1.5,"b":f32 2.5}}
        let bytes = [
            0xa4, 0x66, b's', b'o', b'u', b'r', b'c', b'e', 0x61, b's', 0x65, b't', b'o', b'p',
            b'i', b'c', 0x61, b't', 0x62, b't', b's', 0x01, 0x67, b'p', b'a', b'y', b'l', b'o',
            b'a', b'd', 0xa2, 0x61, b'a', 0xf9, 0x3e, 0x00, 0x61, b'b', 0xfa, 0x40, 0x20, 0x00,
            0x00,
        ];
        let r = Record::decode(&bytes).unwrap();
        assert_eq!(r.payload.f64("a"), Some(1.5));
        assert_eq!(r.payload.f64("b"), Some(2.5));
    }
}
