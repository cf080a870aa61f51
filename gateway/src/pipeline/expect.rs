//! Expected outputs (`weir module test --expect FILE`, and a bundle's test
//! vectors), compared with what a
//! module emitted, output by output. Pure: no I/O, unit-tested below.
//!
//! The file is JSON lines, one expected output per line, in the order the
//! outputs come (every output of the first input, then of the second...).
//! A line that is a whole record (an object with an object `payload` and
//! only the record's keys: `source`, `topic`, `ts`, `headers`, `payload`)
//! is compared with the whole output, `ts` only when the line gives it;
//! any other line is a bare payload, compared with the output's payload.
//! Numbers compare by value (`70` equals `70.0`).

use serde_json::Value;

/// One expected output.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Its line in the file.
    pub line: usize,
    /// What it must be.
    pub value: Value,
    /// A whole record (else a bare payload).
    pub whole: bool,
}

const RECORD_KEYS: &[&str] = &["source", "topic", "ts", "headers", "payload"];

/// Parse the expectation file's text.
pub fn parse(text: &str) -> Result<Vec<Expected>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        let whole = value.as_object().is_some_and(|o| {
            o.get("payload").is_some_and(Value::is_object)
                && o.keys().all(|k| RECORD_KEYS.contains(&k.as_str()))
        });
        out.push(Expected {
            line: i + 1,
            value,
            whole,
        });
    }
    Ok(out)
}

/// How `output` (a record as `weir module test` prints it) differs from
/// `want`: one line per difference, empty when it matches.
pub fn differences(want: &Expected, output: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    if want.whole {
        let (Some(w), Some(o)) = (want.value.as_object(), output.as_object()) else {
            return vec![format!("expected {}, got {output}", want.value)];
        };
        for key in RECORD_KEYS {
            if *key == "ts" && !w.contains_key("ts") {
                continue;
            }
            let empty = Value::Object(Default::default());
            let default = if *key == "headers" {
                &empty
            } else {
                &Value::Null
            };
            diff(
                key,
                w.get(*key).unwrap_or(default),
                o.get(*key).unwrap_or(default),
                &mut diffs,
            );
        }
    } else {
        diff(
            "payload",
            &want.value,
            output.get("payload").unwrap_or(&Value::Null),
            &mut diffs,
        );
    }
    diffs
}

fn diff(at: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => diff(&format!("{at}.{k}"), wv, gv, out),
                    None => out.push(format!("{at}.{k}: missing (expected {wv})")),
                }
            }
            for (k, gv) in g {
                if !w.contains_key(k) {
                    out.push(format!("{at}.{k}: not expected (got {gv})"));
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{at}[{i}]"), wv, gv, out);
            }
        }
        (Value::Number(w), Value::Number(g)) if w.as_f64() == g.as_f64() => {}
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{at}: expected {w}, got {g}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out() -> Value {
        json!({"source": "test", "topic": "sensors/s1/telemetry", "ts": 5, "headers": {},
               "payload": {"id": "s1", "temp_c": 21.0, "temp_f": 69.8}})
    }

    #[test]
    fn bare_payloads_compare_with_the_payload_numbers_by_value() {
        let e = parse(r#"{"id":"s1","temp_c":21,"temp_f":69.8}"#).unwrap();
        assert!(!e[0].whole);
        assert_eq!(differences(&e[0], &out()), Vec::<String>::new());
        let e = parse(r#"{"id":"s1","temp_c":21,"temp_f":70}"#).unwrap();
        assert_eq!(
            differences(&e[0], &out()),
            vec!["payload.temp_f: expected 70, got 69.8"]
        );
        let e = parse(r#"{"id":"s1","temp_c":21}"#).unwrap();
        assert_eq!(
            differences(&e[0], &out()),
            vec!["payload.temp_f: not expected (got 69.8)"]
        );
    }

    #[test]
    fn whole_records_compare_everything_but_ts_unless_given() {
        let line = r#"{"source":"test","topic":"sensors/s1/telemetry","payload":{"id":"s1","temp_c":21.0,"temp_f":69.8}}"#;
        let e = parse(line).unwrap();
        assert!(e[0].whole);
        assert!(differences(&e[0], &out()).is_empty());
        let with_ts = line.replacen("{\"source\"", "{\"ts\":6,\"source\"", 1);
        let e = parse(&with_ts).unwrap();
        assert_eq!(differences(&e[0], &out()), vec!["ts: expected 6, got 5"]);
        let other_topic = line.replace("sensors/s1", "sensors/s2");
        let e = parse(&other_topic).unwrap();
        assert_eq!(differences(&e[0], &out()).len(), 1);
    }

    #[test]
    fn a_payload_with_a_field_named_payload_is_still_bare() {
        let e = parse(r#"{"payload":{"a":1},"extra":2}"#).unwrap();
        assert!(!e[0].whole);
        assert!(parse("{nope").unwrap_err().contains("line 1"));
    }
}
