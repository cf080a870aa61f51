//! MQTT topic filters: matching (routes) and checking (configs).

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
}
