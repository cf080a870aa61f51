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

/// Fill `template` for one record. `lookup` answers the placeholders
/// (`None`: unknown for this record, written `_`). Values never add topic
/// levels or wildcards: `/`, `+` and `#` become `_`, except in `{topic}`,
/// whose levels are kept (it is a topic already; `+` and `#` still go).
pub fn fill(template: &str, lookup: impl Fn(&Placeholder<'_>) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..open + len];
        let p = classify(template, name).unwrap_or(Placeholder::Field(name));
        match lookup(&p) {
            Some(v) if p == Placeholder::Known("topic") => out.extend(
                v.chars()
                    .map(|c| if matches!(c, '+' | '#') { '_' } else { c }),
            ),
            Some(v) => out.extend(
                v.chars()
                    .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c }),
            ),
            None => out.push('_'),
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(rest);
    out
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
        let t = fill("m/{topic}/{payload.id}", |p| match p {
            Placeholder::Known("topic") => Some("sensors/s1/telemetry".into()),
            Placeholder::Field("id") => Some("a/b+#".into()),
            _ => None,
        });
        assert_eq!(t, "m/sensors/s1/telemetry/a_b__");
        assert_eq!(fill("x/{payload.nope}", |_| None), "x/_");
    }
}
