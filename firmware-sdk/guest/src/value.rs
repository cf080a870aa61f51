//! [`Value`] and [`Fields`]: a borrowed, allocation-free view of CBOR data.
//!
//! Strings and nested items borrow from the input buffer; nested arrays and
//! maps are kept as raw CBOR and copied through unchanged on output.

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::Error;

/// Most fields one map may hold in the SDK (the ABI itself has no limit).
pub const MAX_FIELDS: usize = 48;

/// One CBOR data item, borrowed from the input where possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// `null` or `undefined`.
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer that fits in an `i64`.
    Int(i64),
    /// Any float (half, single or double precision on the wire).
    Float(f64),
    /// A text string.
    Text(&'a str),
    /// A byte string.
    Bytes(&'a [u8]),
    /// Any other item (array, map, tag, big integer) as its raw CBOR encoding.
    Raw(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The value as a float, if it is a number (integers are converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Decode one data item.
    pub fn decode(d: &mut Decoder<'a>) -> Result<Self, Error> {
        let err = |_| Error::Input;
        Ok(match d.datatype().map_err(err)? {
            Type::Bool => Value::Bool(d.bool().map_err(err)?),
            Type::Null => {
                d.null().map_err(err)?;
                Value::Null
            }
            Type::Undefined => {
                d.undefined().map_err(err)?;
                Value::Null
            }
            Type::U8 | Type::U16 | Type::U32 | Type::I8 | Type::I16 | Type::I32 | Type::I64 => {
                Value::Int(d.i64().map_err(err)?)
            }
            Type::U64 => {
                let start = d.position();
                match d.u64().map_err(err)? {
                    n if n <= i64::MAX as u64 => Value::Int(n as i64),
                    _ => Value::Raw(&d.input()[start..d.position()]),
                }
            }
            Type::F16 | Type::F32 | Type::F64 => Value::Float(d.f64().map_err(err)?),
            Type::String => Value::Text(d.str().map_err(err)?),
            Type::Bytes => Value::Bytes(d.bytes().map_err(err)?),
            _ => {
                let start = d.position();
                d.skip().map_err(err)?;
                Value::Raw(&d.input()[start..d.position()])
            }
        })
    }

    /// Encode this item.
    pub fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        match *self {
            Value::Null => e.null()?,
            Value::Bool(b) => e.bool(b)?,
            Value::Int(i) => e.i64(i)?,
            Value::Float(f) => e.f64(f)?,
            Value::Text(s) => e.str(s)?,
            Value::Bytes(b) => e.bytes(b)?,
            Value::Raw(r) => {
                e.writer_mut()
                    .write_all(r)
                    .map_err(minicbor::encode::Error::write)?;
                e
            }
        };
        Ok(())
    }
}

/// An ordered map of text keys to [`Value`]s (a sensor payload, a config table).
#[derive(Debug, Clone, Default)]
pub struct Fields<'a> {
    entries: heapless::Vec<(&'a str, Value<'a>), MAX_FIELDS>,
}

impl<'a> Fields<'a> {
    /// An empty map.
    pub fn new() -> Self {
        Fields {
            entries: heapless::Vec::new(),
        }
    }

    /// Decode a CBOR map with text keys (definite or indefinite length).
    pub fn decode_map(d: &mut Decoder<'a>) -> Result<Self, Error> {
        let mut out = Fields::new();
        let len = d.map().map_err(|_| Error::Input)?;
        let mut i = 0u64;
        loop {
            match len {
                Some(n) if i == n => break,
                None if d.datatype().map_err(|_| Error::Input)? == Type::Break => {
                    d.skip().map_err(|_| Error::Input)?;
                    break;
                }
                _ => {}
            }
            let key = d.str().map_err(|_| Error::Input)?;
            let value = Value::decode(d)?;
            out.entries
                .push((key, value))
                .map_err(|_| Error::Resource)?;
            i += 1;
        }
        Ok(out)
    }

    /// Encode as a definite-length CBOR map.
    pub fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.map(self.entries.len() as u64)?;
        for (k, v) in &self.entries {
            e.str(k)?;
            v.encode(e)?;
        }
        Ok(())
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The number under `key`, as a float.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// The text under `key`.
    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Set `key` to `value`, replacing an existing entry in place or appending.
    pub fn set(&mut self, key: &'a str, value: Value<'a>) -> Result<(), Error> {
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
            return Ok(());
        }
        self.entries.push((key, value)).map_err(|_| Error::Resource)
    }

    /// Remove `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value<'a>> {
        let i = self.entries.iter().position(|(k, _)| *k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &(&'a str, Value<'a>)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
