//! Config keys from the environment. Every key of a config file can also be set by a variable
//! named `BLOCKWATCH_` and the key's path joined by `_`, upper-cased: `limits.max_agents` is
//! `BLOCKWATCH_LIMITS_MAX_AGENTS`. A variable wins over the file. String keys take the value as
//! it is; any other key takes a TOML value (`500`, `true`, `["a", "b"]`,
//! `[{ id = "x", url = "…" }]`).
//!
//! The keys come from the config types' JSON Schema (derived from the code, doc comments
//! included), so the list, the variables and their documentation cannot drift apart.

use serde_json::Value;

/// The prefix of every variable.
pub const PREFIX: &str = "BLOCKWATCH_";

/// One settable key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// Path of tables and the key: `["limits", "max_agents"]`.
    pub path: Vec<String>,
    /// The variable that sets it.
    pub env: String,
    /// `string`, `integer`, `number`, `boolean`, `array`, `table`, or a list of the strings
    /// allowed (`"token" | "none"`).
    pub kind: String,
    /// The doc comment of the field.
    pub doc: String,
}

impl Key {
    /// `limits.max_agents`.
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }

    fn is_string(&self) -> bool {
        self.kind == "string" || self.kind.starts_with('"')
    }
}

/// Every key of the config described by `schema` (a JSON Schema of the config type, as
/// `schemars` derives it): tables are walked into, anything else (arrays of tables included)
/// is one key.
pub fn keys(schema: &Value) -> Vec<Key> {
    let mut out = Vec::new();
    walk(schema, schema, &mut Vec::new(), &mut out);
    out
}

fn walk(root: &Value, schema: &Value, path: &mut Vec<String>, out: &mut Vec<Key>) {
    let schema = resolve(root, schema);
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (name, field) in props {
        path.push(name.clone());
        let doc = field.get("description").and_then(Value::as_str).unwrap_or_default();
        let target = non_null(root, field);
        if target.get("properties").is_some() {
            walk(root, target, path, out);
        } else {
            let doc = match doc {
                "" => resolve(root, target).get("description").and_then(Value::as_str).unwrap_or_default(),
                d => d,
            };
            out.push(Key {
                env: format!("{PREFIX}{}", path.join("_").to_uppercase()),
                path: path.clone(),
                kind: kind(root, target),
                doc: doc.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
        path.pop();
    }
}

/// Follows a `$ref` into `$defs`.
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => root.get("$defs").and_then(|d| d.get(name)).map_or(schema, |s| resolve(root, s)),
        None => schema,
    }
}

/// An optional field's schema without its `null` branch.
fn non_null<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let schema = resolve(root, schema);
    for combinator in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(combinator).and_then(Value::as_array) {
            let real: Vec<&Value> =
                branches.iter().filter(|b| b.get("type").and_then(Value::as_str) != Some("null")).collect();
            if let [one] = real[..] {
                return non_null(root, one);
            }
        }
    }
    schema
}

fn kind(root: &Value, schema: &Value) -> String {
    let schema = resolve(root, schema);
    let allowed = |s: &Value| -> Option<Vec<String>> {
        let values = s
            .get("enum")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .or_else(|| s.get("const").and_then(Value::as_str).map(|c| vec![c]))?;
        Some(values.into_iter().map(|v: &str| format!("\"{v}\"")).collect())
    };
    if let Some(values) = allowed(schema) {
        return values.join(" \\| ");
    }
    if let Some(branches) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array) {
        let values: Option<Vec<Vec<String>>> = branches.iter().map(|b| allowed(resolve(root, b))).collect();
        if let Some(values) = values {
            return values.concat().join(" \\| ");
        }
        return "table".into();
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect(),
        _ => vec![],
    };
    match types[..] {
        ["object"] => "table".into(),
        [t] => t.into(),
        // A one-or-many field (a string or a list of them).
        _ if types.contains(&"array") => "array".into(),
        _ => "value".into(),
    }
}

/// Sets in `table` every key whose variable `get` returns. Returns the variables applied, or
/// every problem (each naming its variable).
pub fn overlay(
    keys: &[Key],
    table: &mut toml::Table,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, Vec<String>> {
    let mut applied = Vec::new();
    let mut problems = Vec::new();
    for key in keys {
        let Some(raw) = get(&key.env) else { continue };
        if raw.trim().is_empty() {
            problems.push(format!("{} is set but empty: unset it, or give {} a value", key.env, key.dotted()));
            continue;
        }
        let value = if key.is_string() {
            toml::Value::String(raw)
        } else {
            // The value alone: a document of exactly the one key, so nothing else rides along.
            match format!("v = {raw}").parse::<toml::Table>() {
                Ok(t) if t.len() == 1 && t.contains_key("v") => t["v"].clone(),
                Ok(_) => {
                    problems.push(format!("{}: {} takes one TOML value, not more", key.env, key.dotted()));
                    continue;
                }
                Err(e) => {
                    problems.push(format!(
                        "{}={raw:?}: {} is {}, and this is not a TOML value: {}",
                        key.env,
                        key.dotted(),
                        key.kind,
                        e.message().trim()
                    ));
                    continue;
                }
            }
        };
        match set(table, &key.path, value) {
            Ok(()) => applied.push(key.env.clone()),
            Err(why) => problems.push(format!("{}: {why}", key.env)),
        }
    }
    if problems.is_empty() { Ok(applied) } else { Err(problems) }
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, tables) = path.split_last().ok_or("empty key")?;
    let mut at = table;
    for (i, name) in tables.iter().enumerate() {
        let entry = at.entry(name.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("{} is not a table in the file", tables[..=i].join(".")))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

/// A Markdown table of `keys`: key, variable, type, description.
pub fn markdown(keys: &[Key]) -> String {
    let mut s = String::from("| key | variable | type | description |\n|---|---|---|---|\n");
    for k in keys {
        s.push_str(&format!("| `{}` | `{}` | {} | {} |\n", k.dotted(), k.env, k.kind, k.doc.replace('|', "\\|")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "properties": {
                "agent_id": { "type": "string", "description": "Stable id." },
                "interval": { "type": "string", "description": "Default 60s." },
                "max_batch": { "type": "integer" },
                "geoip_db": { "type": ["string", "array"] },
                "limits": { "$ref": "#/$defs/Limits", "description": "Bounds." },
                "tls": { "anyOf": [{ "$ref": "#/$defs/Tls" }, { "type": "null" }] },
                "auth": { "anyOf": [{ "$ref": "#/$defs/Auth" }, { "type": "null" }] },
                "target": { "type": "array", "items": { "type": "object" } }
            },
            "$defs": {
                "Limits": { "type": "object", "properties": { "max_agents": { "type": "integer", "description": "Most agents." } } },
                "Tls": { "type": "object", "properties": { "ca_dir": { "type": "string" } } },
                "Auth": { "type": "string", "enum": ["token", "none"] }
            }
        })
    }

    #[test]
    fn keys_come_from_the_schema() {
        let keys = keys(&schema());
        let names: Vec<(String, String, String)> =
            keys.iter().map(|k| (k.dotted(), k.env.clone(), k.kind.clone())).collect();
        let want = [
            ("agent_id", "BLOCKWATCH_AGENT_ID", "string"),
            ("interval", "BLOCKWATCH_INTERVAL", "string"),
            ("max_batch", "BLOCKWATCH_MAX_BATCH", "integer"),
            ("geoip_db", "BLOCKWATCH_GEOIP_DB", "array"),
            ("limits.max_agents", "BLOCKWATCH_LIMITS_MAX_AGENTS", "integer"),
            ("tls.ca_dir", "BLOCKWATCH_TLS_CA_DIR", "string"),
            ("auth", "BLOCKWATCH_AUTH", "\"token\" \\| \"none\""),
            ("target", "BLOCKWATCH_TARGET", "array"),
        ];
        for (d, e, k) in want {
            assert!(names.contains(&(d.to_string(), e.to_string(), k.to_string())), "{d}: {names:?}");
        }
        assert_eq!(keys.iter().find(|k| k.dotted() == "limits.max_agents").unwrap().doc, "Most agents.");
    }

    #[test]
    fn variables_override_the_file_typed_by_the_schema() {
        let keys = keys(&schema());
        let mut table: toml::Table = "agent_id = \"file\"\nmax_batch = 10\n[limits]\nmax_agents = 5\n".parse().unwrap();
        let env = |k: &str| match k {
            "BLOCKWATCH_AGENT_ID" => Some("1234".to_string()),
            "BLOCKWATCH_LIMITS_MAX_AGENTS" => Some("50".to_string()),
            "BLOCKWATCH_TLS_CA_DIR" => Some("/etc/ca".to_string()),
            "BLOCKWATCH_TARGET" => Some("[{ id = \"a\" }]".to_string()),
            _ => None,
        };
        let applied = overlay(&keys, &mut table, env).unwrap();
        assert_eq!(applied.len(), 4);
        assert_eq!(table["agent_id"].as_str(), Some("1234"), "a string key keeps digits as text");
        assert_eq!(table["max_batch"].as_integer(), Some(10));
        assert_eq!(table["limits"]["max_agents"].as_integer(), Some(50));
        assert_eq!(table["tls"]["ca_dir"].as_str(), Some("/etc/ca"));
        assert_eq!(table["target"][0]["id"].as_str(), Some("a"));

        let bad = |k: &str| (k == "BLOCKWATCH_MAX_BATCH").then(|| "lots".to_string());
        let p = overlay(&keys, &mut table, bad).unwrap_err();
        assert!(p[0].starts_with("BLOCKWATCH_MAX_BATCH=\"lots\": max_batch is integer"), "{p:?}");
        let smuggled = |k: &str| (k == "BLOCKWATCH_MAX_BATCH").then(|| "500\nagent_id = \"x\"".to_string());
        let p = overlay(&keys, &mut table, smuggled).unwrap_err();
        assert!(p[0].contains("takes one TOML value"), "{p:?}");
        let empty = |k: &str| (k == "BLOCKWATCH_TLS_CA_DIR").then(String::new);
        let p = overlay(&keys, &mut table, empty).unwrap_err();
        assert!(p[0].contains("set but empty"), "{p:?}");
        let mut not_table: toml::Table = "limits = 3\n".parse().unwrap();
        let p =
            overlay(&keys, &mut not_table, |k| (k == "BLOCKWATCH_LIMITS_MAX_AGENTS").then(|| "1".into())).unwrap_err();
        assert!(p[0].contains("limits is not a table"), "{p:?}");
    }
}
