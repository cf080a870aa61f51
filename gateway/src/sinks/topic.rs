//! Sink topic templates: which placeholders exist, checked when the config
//! is read, and how a record fills them in.
//!
//! `{gateway_id}`, `{sink}`, `{pipeline}`, `{source}`, `{msg_id}`, `{topic}`
//! (the input's topic, levels kept, so a sink can mirror the sensor topic
//! tree) and `{payload.NAME}` (a payload field). Anything else is a
//! mistake, most often a misspelling, and is refused with a suggestion.

/// The placeholders a template may use, besides `{payload.NAME}`.
pub const PLACEHOLDERS: &[&str] = &[
    "gateway_id",
    "sink",
    "pipeline",
    "source",
    "topic",
    "msg_id",
];

/// One `{...}` of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder<'a> {
    /// One of [`PLACEHOLDERS`].
    Known(&'a str),
    /// `{payload.NAME}`.
    Field(&'a str),
}

/// The placeholders of `template`, or what is wrong with it.
pub fn parse(template: &str) -> Result<Vec<Placeholder<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("`{template}`: a `}}` without its `{{`"));
        }
        let Some(len) = rest[open..].find('}') else {
            return Err(format!("`{template}`: a `{{` without its `}}`"));
        };
        let name = &rest[open + 1..open + len];
        if name.contains('{') {
            return Err(format!("`{template}`: a `{{` inside a placeholder"));
        }
        out.push(classify(template, name)?);
        rest = &rest[open + len + 1..];
    }
    Ok(out)
}

fn classify<'a>(template: &str, name: &'a str) -> Result<Placeholder<'a>, String> {
    if let Some(field) = name.strip_prefix("payload.") {
        if field.is_empty() {
            return Err(format!("`{template}`: `{{payload.}}` needs a field name"));
        }
        return Ok(Placeholder::Field(field));
    }
    if let Some(k) = PLACEHOLDERS.iter().find(|k| **k == name) {
        return Ok(Placeholder::Known(k));
    }
    let known = PLACEHOLDERS
        .iter()
        .map(|k| format!("{{{k}}}"))
        .collect::<Vec<_>>()
        .join(" ");
    let squash = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let hint = match PLACEHOLDERS.iter().find(|k| squash(k) == squash(name)) {
        Some(k) => format!("did you mean `{{{k}}}`? "),
        None => format!("a payload field is written `{{payload.{name}}}`; "),
    };
    Err(format!(
        "`{template}`: unknown placeholder `{{{name}}}`: {hint}known: {known} {{payload.NAME}}"
    ))
}

/// The longest value a placeholder may put into a topic, in bytes. A
/// longer one (a broken sensor's 70k-character id) would make a topic no
/// broker takes, or an unbounded one: the entry is refused instead.
pub const MAX_VALUE_BYTES: usize = 512;

/// The longest MQTT topic (a UTF-8 string with a 16-bit length).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Fill `template` for one record. `lookup` answers the placeholders
/// (`None`: unknown for this record, written `_`). Values never add topic
/// levels or wildcards: `/`, `+` and `#` become `_`, except in `{topic}`,
/// whose levels are kept (it is a topic already; `+` and `#` still go).
/// What MQTT forbids or brokers drop the connection for (NUL, control
/// characters, noncharacters) becomes `_` too. A value over
/// [`MAX_VALUE_BYTES`], or a topic over `max_topic` bytes, is an error:
/// no broker would take the topic, so the entry cannot be delivered.
pub fn fill(
    template: &str,
    max_topic: usize,
    lookup: impl Fn(&Placeholder<'_>) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    let forbidden = |c: char| c.is_control() || matches!(c, '\u{fffe}' | '\u{ffff}');
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..open + len];
        let p = classify(template, name).unwrap_or(Placeholder::Field(name));
        let levels = p == Placeholder::Known("topic");
        match lookup(&p) {
            Some(v) if v.len() > MAX_VALUE_BYTES && !levels => {
                return Err(format!(
                    "`{{{name}}}` is {} bytes, over the {MAX_VALUE_BYTES} a topic value may have",
                    v.len()
                ));
            }
            Some(v) => out.extend(v.chars().map(|c| match c {
                '/' if levels => '/',
                '/' | '+' | '#' => '_',
                c if forbidden(c) => '_',
                c => c,
            })),
            None => out.push('_'),
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    if out.len() > max_topic {
        return Err(format!(
            "the topic is {} bytes, over the {max_topic} the broker takes",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_placeholders_and_payload_fields_parse() {
        let p = parse("cloud/{gateway_id}/{payload.id}/{topic}").unwrap();
        assert_eq!(
            p,
            vec![
                Placeholder::Known("gateway_id"),
                Placeholder::Field("id"),
                Placeholder::Known("topic")
            ]
        );
        assert_eq!(parse("plain/topic").unwrap(), vec![]);
    }

    #[test]
    fn misspellings_are_refused_with_a_suggestion() {
        let e = parse("cloud/{gatewayid}/telemetry").unwrap_err();
        assert!(e.contains("unknown placeholder `{gatewayid}`"), "{e}");
        assert!(e.contains("did you mean `{gateway_id}`"), "{e}");
        let e = parse("cloud/{id}").unwrap_err();
        assert!(e.contains("`{payload.id}`"), "{e}");
        for bad in ["a/{x", "a/}x", "a/{{x}}", "a/{payload.}"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_keeps_its_levels_other_values_do_not_add_any() {
        let t = fill("m/{topic}/{payload.id}", MAX_TOPIC_BYTES, |p| match p {
            Placeholder::Known("topic") => Some("sensors/s1/telemetry".into()),
            Placeholder::Field("id") => Some("a/b+#".into()),
            _ => None,
        });
        assert_eq!(t.unwrap(), "m/sensors/s1/telemetry/a_b__");
        assert_eq!(
            fill("x/{payload.nope}", MAX_TOPIC_BYTES, |_| None).unwrap(),
            "x/_"
        );
    }

    #[test]
    fn what_mqtt_forbids_is_escaped_and_oversized_values_refused() {
        let id = |v: &str| {
            let v = v.to_string();
            fill("c/{payload.id}", MAX_TOPIC_BYTES, move |_| Some(v.clone()))
        };
        assert_eq!(id("a\0b\x01c\x7fd\u{9f}e\u{ffff}").unwrap(), "c/a_b_c_d_e_");
        assert_eq!(id("température").unwrap(), "c/température");
        let e = id(&"x".repeat(70_000)).unwrap_err();
        assert!(e.contains("70000 bytes"), "{e}");
        assert!(id(&"x".repeat(MAX_VALUE_BYTES)).is_ok());
        let e = fill("c/{payload.id}/{payload.id}", 600, |_| {
            Some("y".repeat(300))
        })
        .unwrap_err();
        assert!(e.contains("over the 600"), "{e}");
    }
}
