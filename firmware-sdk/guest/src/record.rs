//! [`Record`]: decoding the ABI v1 record map and encoding it back.

use minicbor::data::Type;
use minicbor::encode::write::Cursor;
use minicbor::{Decoder, Encoder};
use weir_abi::record as key;

use crate::{Error, Fields, Value};

/// One telemetry record, as described in ABI.md ("The record").
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// The source that produced the record.
    pub source: &'a str,
    /// MQTT topic or other subject.
    pub topic: &'a str,
    /// Receive time at the gateway, ms since the Unix epoch.
    pub ts: u64,
    /// Metadata, text to text.
    pub headers: Fields<'a>,
    /// The payload's fields, when the payload is a map.
    pub payload: Fields<'a>,
    /// The payload itself, when it is not a map (then `payload` is empty).
    pub raw_payload: Option<Value<'a>>,
}

impl<'a> Record<'a> {
    /// Decode a record map. Unknown keys are skipped; missing ones are an error.
    pub fn decode(input: &'a [u8]) -> Result<Self, Error> {
        let mut d = Decoder::new(input);
        let mut rec = Record::default();
        let (mut has_source, mut has_topic, mut has_ts, mut has_payload) =
            (false, false, false, false);
        let len = d.map().map_err(|_| Error::Input)?;
        let mut i = 0u64;
        loop {
            match len {
                Some(n) if i == n => break,
                None if d.datatype().map_err(|_| Error::Input)? == Type::Break => break,
                _ => {}
            }
            i += 1;
            match d.str().map_err(|_| Error::Input)? {
                key::SOURCE => {
                    rec.source = d.str().map_err(|_| Error::Input)?;
                    has_source = true;
                }
                key::TOPIC => {
                    rec.topic = d.str().map_err(|_| Error::Input)?;
                    has_topic = true;
                }
                key::TS => {
                    rec.ts = d.u64().map_err(|_| Error::Input)?;
                    has_ts = true;
                }
                key::HEADERS => rec.headers = Fields::decode_map(&mut d)?,
                key::PAYLOAD => {
                    has_payload = true;
                    match d.datatype().map_err(|_| Error::Input)? {
                        Type::Map | Type::MapIndef => rec.payload = Fields::decode_map(&mut d)?,
                        _ => rec.raw_payload = Some(Value::decode(&mut d)?),
                    }
                }
                _ => d.skip().map_err(|_| Error::Input)?,
            }
        }
        if has_source && has_topic && has_ts && has_payload {
            Ok(rec)
        } else {
            Err(Error::Input)
        }
    }

    /// Encode into `buf`, returning the length. [`Error::Resource`] if it does not fit.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut e = Encoder::new(Cursor::new(buf));
        self.encode(&mut e).map_err(|_| Error::Resource)?;
        Ok(e.writer().position())
    }

    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        let has_headers = !self.headers.is_empty();
        e.map(4 + u64::from(has_headers))?;
        e.str(key::SOURCE)?.str(self.source)?;
        e.str(key::TOPIC)?.str(self.topic)?;
        e.str(key::TS)?.u64(self.ts)?;
        if has_headers {
            e.str(key::HEADERS)?;
            self.headers.encode(e)?;
        }
        e.str(key::PAYLOAD)?;
        match &self.raw_payload {
            Some(v) => v.encode(e),
            None => self.payload.encode(e),
        }
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

    fn sample() -> Record<'static> {
        let mut r = Record {
            source: "serial0",
            topic: "sensors/s1/telemetry",
            ts: 1_732_380_000_123,
            ..Default::default()
        };
        r.payload.set("id", Value::Text("s1")).unwrap();
        r.payload.set("temp_c", Value::Float(21.53)).unwrap();
        r.payload.set("seq", Value::Int(42)).unwrap();
        r.set_header("k", "v").unwrap();
        r
    }

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 256];
        let n = sample().encode_into(&mut buf).unwrap();
        let r = Record::decode(&buf[..n]).unwrap();
        assert_eq!(r.topic, "sensors/s1/telemetry");
        assert_eq!(r.ts, 1_732_380_000_123);
        assert_eq!(r.payload.f64("temp_c"), Some(21.53));
        assert_eq!(r.payload.get("seq"), Some(&Value::Int(42)));
        assert_eq!(r.header("k"), Some("v"));
    }

    #[test]
    fn too_small_buffer_is_resource_error() {
        let mut buf = [0u8; 16];
        assert_eq!(sample().encode_into(&mut buf), Err(Error::Resource));
    }

    #[test]
    fn missing_keys_and_garbage_are_input_errors() {
        assert_eq!(Record::decode(&[0xa0]).unwrap_err(), Error::Input);
        assert_eq!(Record::decode(&[0xff, 0x00]).unwrap_err(), Error::Input);
        assert_eq!(Record::decode(&[]).unwrap_err(), Error::Input);
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
