//! MQTT topic filters: matching (routes) and checking (configs).

/// A shared subscription's parts: `$share/<group>/<filter>` gives
/// `Some((group, filter))`. The broker hands each message on `filter` to
/// one subscriber of the group.
pub fn shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// The topics a filter takes: a shared subscription takes what its
/// inner filter does.
pub fn inner(filter: &str) -> &str {
    shared(filter).map_or(filter, |(_, f)| f)
}

/// Whether MQTT topic filter `filter` matches `topic`: `+` matches one level,
/// `#` (last) matches any number of levels, including none. A shared
/// subscription (`$share/<group>/<filter>`) matches what `<filter>` does.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = inner(filter).split('/');
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

/// Whether `filter` is a valid MQTT topic filter, maybe shared
/// (`$share/<group>/<filter>`).
pub fn valid_filter(filter: &str) -> Result<(), &'static str> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        let Some((group, filter)) = rest.split_once('/') else {
            return Err("a shared subscription is `$share/<group>/<filter>`");
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err("a shared subscription's group is one level without `+` or `#`");
        }
        if filter.starts_with("$share/") {
            return Err("a shared subscription cannot be shared again");
        }
        return valid_filter(filter);
    }
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
            ("$share/g/sensors/+/telemetry", "sensors/s1/telemetry", true),
            ("$share/g/sensors/+/telemetry", "sensors/s1/status", false),
            ("$share/weir/#", "a/b", true),
        ] {
            assert_eq!(topic_matches(filter, topic), want, "{filter} {topic}");
        }
    }

    #[test]
    fn shared_subscriptions_have_a_group_and_a_filter() {
        assert_eq!(shared("$share/weir/sensors/#"), Some(("weir", "sensors/#")));
        assert_eq!(shared("sensors/#"), None);
        assert_eq!(inner("$share/weir/sensors/#"), "sensors/#");
        assert_eq!(inner("sensors/#"), "sensors/#");
    }

    #[test]
    fn invalid_filters_are_refused() {
        for bad in [
            "",
            "a/#/b",
            "a#",
            "a/b+",
            "+x/y",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
            "$share/g/a/#/b",
            "$share/g/$share/h/a",
        ] {
            assert!(valid_filter(bad).is_err(), "{bad}");
        }
        for good in [
            "#",
            "+",
            "a/+/b/#",
            "sensors/s1/telemetry",
            "$share/weir/sensors/+/telemetry",
        ] {
            assert!(valid_filter(good).is_ok(), "{good}");
        }
    }
}
