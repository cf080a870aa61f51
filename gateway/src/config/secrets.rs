//! Secrets kept out of the config file: `${NAME}` in any string value is
//! replaced by the environment variable `NAME` (`$${` writes a literal
//! `${`), and `password_file` reads a password from a file. The values
//! never appear in logs or errors: errors name the variable, the key or
//! the file, never what they hold.

use std::path::Path;

use super::ConfigError;

/// `text` with every `${NAME}` in its string values replaced from the
/// environment, written back as TOML (comments, layout and so line numbers
/// kept); `None` if it has none. Errors name the key and the variable.
pub fn expand(text: &str, file: &str) -> Result<Option<String>, ConfigError> {
    if !text.contains("${") {
        return Ok(None);
    }
    // A syntax error is left for the normal parse to report, with its line.
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        return Ok(None);
    };
    let mut any = false;
    for (k, item) in doc.as_table_mut().iter_mut() {
        any |= expand_item(item, &k, file)?;
    }
    Ok(any.then(|| doc.to_string()))
}

fn expand_item(item: &mut toml_edit::Item, key: &str, file: &str) -> Result<bool, ConfigError> {
    use toml_edit::Item;
    let mut any = false;
    match item {
        Item::Value(v) => any |= expand_value(v, key, file)?,
        Item::Table(t) => {
            for (k, x) in t.iter_mut() {
                any |= expand_item(x, &format!("{key}.{k}"), file)?;
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                for (k, x) in t.iter_mut() {
                    any |= expand_item(x, &format!("{key}[{i}].{k}"), file)?;
                }
            }
        }
        Item::None => {}
    }
    Ok(any)
}

fn expand_value(v: &mut toml_edit::Value, key: &str, file: &str) -> Result<bool, ConfigError> {
    use toml_edit::Value;
    let mut any = false;
    match v {
        Value::String(s) if s.value().contains("${") => {
            let expanded = expand_str(s.value()).map_err(|name| ConfigError {
                file: file.into(),
                key: key.into(),
                message: format!(
                    "`${{{name}}}` is not set in weir's environment (set it, for example with the unit's Environment= or EnvironmentFile=)"
                ),
            })?;
            let decor = s.decor().clone();
            let mut new = toml_edit::Formatted::new(expanded);
            *new.decor_mut() = decor;
            *s = new;
            any = true;
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                any |= expand_value(x, &format!("{key}[{i}]"), file)?;
            }
        }
        Value::InlineTable(t) => {
            for (k, x) in t.iter_mut() {
                any |= expand_value(x, &format!("{key}.{k}"), file)?;
            }
        }
        _ => {}
    }
    Ok(any)
}

/// `s` with `${NAME}` replaced from the environment; `Err(NAME)` if unset.
fn expand_str(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(lit) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        let name_end = after
            .strip_prefix("${")
            .and_then(|n| n.find('}').map(|e| (n, e)))
            .filter(|(n, e)| valid_name(&n[..*e]));
        match name_end {
            Some((n, e)) => {
                let name = &n[..e];
                out.push_str(&std::env::var(name).map_err(|_| name.to_string())?);
                rest = &n[e + 1..];
            }
            None => {
                out.push('$');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The password in `path` (relative to `base`): the file's text without
/// its trailing newline.
pub fn read_password(path: &Path, base: &Path) -> Result<String, String> {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_and_unset_ones_are_named() {
        // SAFETY: this test alone uses these names.
        unsafe {
            std::env::set_var("WEIR_SECRET_TEST_A", "s3cr\"et");
            std::env::remove_var("WEIR_SECRET_TEST_UNSET");
        }
        assert_eq!(expand_str("x${WEIR_SECRET_TEST_A}y").unwrap(), "xs3cr\"ety");
        assert_eq!(
            expand_str("$${WEIR_SECRET_TEST_A} $5 ${ x").unwrap(),
            "${WEIR_SECRET_TEST_A} $5 ${ x"
        );
        assert_eq!(
            expand_str("a ${WEIR_SECRET_TEST_UNSET}").unwrap_err(),
            "WEIR_SECRET_TEST_UNSET"
        );
        let text = "[[sink]]\npassword = \"${WEIR_SECRET_TEST_UNSET}\"\n# c = \"${NOPE}\"\n";
        let e = expand(text, "weir.toml").unwrap_err();
        assert_eq!(e.key, "sink[0].password");
        assert!(
            e.message.contains("WEIR_SECRET_TEST_UNSET"),
            "{}",
            e.message
        );
        // Set: the value is written back as a TOML string, escaped; the
        // comment and the layout stay.
        let text = "# c = \"${NOPE}\"\n[[sink]]\npassword = \"${WEIR_SECRET_TEST_A}\" # x\n";
        let out = expand(text, "weir.toml").unwrap().unwrap();
        let t: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(t["sink"][0]["password"].as_str(), Some("s3cr\"et"));
        assert!(out.starts_with("# c = \"${NOPE}\"\n"), "{out}");
        assert!(out.contains("# x"), "{out}");
        assert_eq!(expand("a = \"plain\"\n", "f").unwrap(), None);
    }
}
