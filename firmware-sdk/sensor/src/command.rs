//! Downlink commands (gateway to sensor) and the sensor's replies, as the
//! CBOR payloads of [`RecordType::Command`](weir_wire::RecordType::Command)
//! and [`RecordType::Reply`](weir_wire::RecordType::Reply) frames. Both
//! sides use this module: the gateway to encode commands and read replies,
//! the node to read commands and encode replies.

use weir_abi::cbor::{self, Reader, Writer};

/// Shortest reporting interval a node accepts, milliseconds.
pub const MIN_INTERVAL_MS: u32 = 10;
/// Longest reporting interval a node accepts, milliseconds (one day).
pub const MAX_INTERVAL_MS: u32 = 86_400_000;

/// A command for a sensor node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Answer, to show the link works both ways.
    Ping,
    /// Say what the node is (model, firmware), and show it (an LED).
    Identify,
    /// Report every `ms` milliseconds from now on.
    SetInterval {
        /// The new interval.
        ms: u32,
    },
}

/// Why a command payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadCommand {
    /// Not a CBOR map with a text `cmd`.
    Malformed,
    /// A `cmd` this node does not know.
    Unknown,
    /// `set_interval` without an `ms` in [`MIN_INTERVAL_MS`, `MAX_INTERVAL_MS`].
    BadInterval,
}

impl BadCommand {
    /// The reason a reply gives.
    pub fn as_str(self) -> &'static str {
        match self {
            BadCommand::Malformed => "malformed command",
            BadCommand::Unknown => "unknown command",
            BadCommand::BadInterval => "ms must be an integer from 10 to 86400000",
        }
    }
}

impl Command {
    /// The `cmd` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Identify => "identify",
            Command::SetInterval { .. } => "set_interval",
        }
    }

    /// Encode as a command payload into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, crate::TooLarge> {
        let mut w = Writer::new(out);
        let r = match self {
            Command::SetInterval { ms } => w
                .raw(&[0xa2])
                .and_then(|()| w.text("cmd"))
                .and_then(|()| w.text(self.name()))
                .and_then(|()| w.text("ms"))
                .and_then(|()| w.head(cbor::UINT, u64::from(*ms))),
            _ => w
                .raw(&[0xa1])
                .and_then(|()| w.text("cmd"))
                .and_then(|()| w.text(self.name())),
        };
        r.map(|()| w.len()).map_err(|_| crate::TooLarge)
    }

    /// Read a command payload. The name of a command that was read, even a
    /// bad or unknown one, is returned with the error so a reply can quote it.
    pub fn parse(payload: &[u8]) -> Result<Command, (BadCommand, &str)> {
        let mut name = "";
        let mut ms = None;
        let mut r = Reader::new(payload);
        let h = r.head().map_err(|_| (BadCommand::Malformed, ""))?;
        if h.major != cbor::MAP || h.indefinite() {
            return Err((BadCommand::Malformed, ""));
        }
        for _ in 0..h.arg {
            let key = r.text().map_err(|_| (BadCommand::Malformed, name))?;
            match key {
                "cmd" => name = r.text().map_err(|_| (BadCommand::Malformed, ""))?,
                "ms" => {
                    let v = r.head().map_err(|_| (BadCommand::Malformed, name))?;
                    ms = (v.major == cbor::UINT && v.info < 28).then_some(v.arg);
                }
                _ => r.skip().map_err(|_| (BadCommand::Malformed, name))?,
            }
        }
        match name {
            "ping" => Ok(Command::Ping),
            "identify" => Ok(Command::Identify),
            "set_interval" => match ms {
                Some(ms)
                    if (u64::from(MIN_INTERVAL_MS)..=u64::from(MAX_INTERVAL_MS)).contains(&ms) =>
                {
                    Ok(Command::SetInterval { ms: ms as u32 })
                }
                _ => Err((BadCommand::BadInterval, name)),
            },
            "" => Err((BadCommand::Malformed, name)),
            _ => Err((BadCommand::Unknown, name)),
        }
    }
}

/// A reply's payload: `{"cmd", "ack", "ok"}` and, when given, `error` or
/// one extra field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reply<'a> {
    /// The command's name, as it came.
    pub cmd: &'a str,
    /// The command frame's sequence number.
    pub ack: u32,
    /// Whether the node did it.
    pub ok: bool,
    /// Why not, when `ok` is false.
    pub error: Option<&'a str>,
}

impl Reply<'_> {
    /// Encode with up to two extra text or integer fields (`interval_ms`,
    /// `model`, `fw`...), into `out`; returns its length.
    pub fn encode(
        &self,
        extra: &[(&str, Extra<'_>)],
        out: &mut [u8],
    ) -> Result<usize, crate::TooLarge> {
        let n = 3 + usize::from(self.error.is_some()) + extra.len();
        if n > 23 {
            return Err(crate::TooLarge);
        }
        let mut w = Writer::new(out);
        let mut go = || -> Result<(), cbor::Error> {
            w.raw(&[0xa0 | n as u8])?;
            w.text("cmd")?;
            w.text(self.cmd)?;
            w.text("ack")?;
            w.head(cbor::UINT, u64::from(self.ack))?;
            w.text("ok")?;
            w.raw(&[if self.ok { 0xf5 } else { 0xf4 }])?;
            if let Some(e) = self.error {
                w.text("error")?;
                w.text(e)?;
            }
            for (k, v) in extra {
                w.text(k)?;
                match v {
                    Extra::Text(t) => w.text(t)?,
                    Extra::Uint(u) => w.head(cbor::UINT, *u)?,
                }
            }
            Ok(())
        };
        go().map_err(|_| crate::TooLarge)?;
        Ok(w.len())
    }

    /// Read a reply payload's `cmd`, `ack`, `ok` and `error`.
    pub fn parse(payload: &[u8]) -> Option<Reply<'_>> {
        let mut r = Reader::new(payload);
        let h = r.head().ok()?;
        if h.major != cbor::MAP || h.indefinite() {
            return None;
        }
        let (mut cmd, mut ack, mut ok, mut error) = (None, None, None, None);
        for _ in 0..h.arg {
            match r.text().ok()? {
                "cmd" => cmd = Some(r.text().ok()?),
                "ack" => {
                    let v = r.head().ok()?;
                    ack = (v.major == cbor::UINT)
                        .then(|| u32::try_from(v.arg).ok())
                        .flatten();
                }
                "ok" => {
                    let v = r.head().ok()?;
                    ok = match (v.major, v.info) {
                        (cbor::SIMPLE, 21) => Some(true),
                        (cbor::SIMPLE, 20) => Some(false),
                        _ => None,
                    };
                }
                "error" => error = Some(r.text().ok()?),
                _ => r.skip().ok()?,
            }
        }
        Some(Reply {
            cmd: cmd?,
            ack: ack?,
            ok: ok?,
            error,
        })
    }
}

/// An extra reply field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra<'a> {
    /// Text.
    Text(&'a str),
    /// An unsigned integer.
    Uint(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_ones_say_why() {
        let mut buf = [0u8; 64];
        for c in [
            Command::Ping,
            Command::Identify,
            Command::SetInterval { ms: 5000 },
        ] {
            let n = c.encode(&mut buf).unwrap();
            assert_eq!(Command::parse(&buf[..n]), Ok(c));
        }
        let n = Command::SetInterval { ms: 5 }.encode(&mut buf).unwrap();
        assert_eq!(
            Command::parse(&buf[..n]),
            Err((BadCommand::BadInterval, "set_interval"))
        );
        // {"cmd": "reboot"}
        let unknown = [
            0xa1, 0x63, b'c', b'm', b'd', 0x66, b'r', b'e', b'b', b'o', b'o', b't',
        ];
        assert_eq!(
            Command::parse(&unknown),
            Err((BadCommand::Unknown, "reboot"))
        );
        assert_eq!(Command::parse(&[0x01]), Err((BadCommand::Malformed, "")));
        assert_eq!(
            Command::parse(&[0xa1, 0x63, b'c']),
            Err((BadCommand::Malformed, ""))
        );
        assert!(Command::Ping.encode(&mut buf[..4]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let mut buf = [0u8; 96];
        let r = Reply {
            cmd: "set_interval",
            ack: 7,
            ok: false,
            error: Some("no"),
        };
        let n = r
            .encode(&[("interval_ms", Extra::Uint(1000))], &mut buf)
            .unwrap();
        assert_eq!(Reply::parse(&buf[..n]), Some(r));
        let r = Reply {
            cmd: "ping",
            ack: u32::MAX,
            ok: true,
            error: None,
        };
        let n = r.encode(&[], &mut buf).unwrap();
        assert_eq!(Reply::parse(&buf[..n]), Some(r));
        assert_eq!(Reply::parse(&buf[..n - 1]), None);
    }
}
