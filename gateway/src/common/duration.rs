//! Durations in the config: text such as `"250ms"`, `"30s"` or `"7d"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A human duration: `"250ms"`, `"5s"`, `"7d"`, `"1h 30m"`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{s}` is not a duration ({e}); try \"500ms\", \"30s\" or \"7d\""
        ))
    })
}

/// An optional [`duration`].
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}
