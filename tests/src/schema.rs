//! A validator for the part of OpenAPI v3 (structural schemas, as in a
//! CRD's `openAPIV3Schema`) that Twill's generated CRDs use: `type`,
//! `nullable`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `minimum`/`maximum` (and exclusive forms), `minLength`/
//! `maxLength`, `minItems`/`maxItems`, `anyOf`, `format` (integer widths; `cidr`, `ipv4`, `ipv6`),
//! `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`.
//!
//! Written by hand because the JSON Schema crates validate draft 2020-12 or
//! draft 7, not OpenAPI's dialect (`nullable`, the `x-kubernetes-*`
//! extensions), and pull in a regex engine and an HTTP client for remote
//! `$ref`s this does not need. It is stricter than the API server on one
//! point, on purpose: a field the schema does not declare is an error (the
//! API server silently prunes it, which hides typos in examples). A schema
//! keyword it does not implement (`pattern`, `oneOf`, ...) is also an error,
//! so a schema change can never make it pass something it did not check.

use serde_json::Value;

/// Keywords that only document or default, and do not constrain.
const DOCUMENTATION: [&str; 5] = ["description", "title", "default", "example", "externalDocs"];

/// Validates `value` against `schema`; returns one message per problem,
/// each starting with the field path (`spec.ports[0]`).
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", true, &mut errors);
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn at(path: &str) -> &str {
    if path.is_empty() { "(object)" } else { path }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        errors.push(format!("{}: the schema is not an object", at(path)));
        return;
    };
    for key in s.keys() {
        let known = DOCUMENTATION.contains(&key.as_str())
            || matches!(
                key.as_str(),
                "type"
                    | "nullable"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "enum"
                    | "minimum"
                    | "maximum"
                    | "exclusiveMinimum"
                    | "exclusiveMaximum"
                    | "minLength"
                    | "maxLength"
                    | "minItems"
                    | "maxItems"
                    | "anyOf"
                    | "format"
                    | "x-kubernetes-int-or-string"
                    | "x-kubernetes-preserve-unknown-fields"
            );
        if !known {
            errors.push(format!(
                "{}: the schema uses {key:?}, which this validator does not implement",
                at(path)
            ));
        }
    }
    if value.is_null() {
        if s.get("nullable") == Some(&Value::Bool(true)) || s.get("type").is_none() {
            return;
        }
        errors.push(format!("{}: null is not allowed", at(path)));
        return;
    }
    if let Some(options) = s.get("anyOf").and_then(Value::as_array) {
        let fits = options.iter().any(|o| {
            let mut e = Vec::new();
            check(o, value, path, false, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{}: {value} matches none of anyOf", at(path)));
        }
    }
    let int_or_string = s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let actual = type_of(value);
        let ok = actual == t
            || (t == "number" && actual == "integer")
            || (int_or_string && (actual == "integer" || actual == "string"));
        if !ok {
            errors.push(format!("{}: expected {t}, got {actual} {value}", at(path)));
            return;
        }
    } else if int_or_string && !matches!(type_of(value), "integer" | "string") {
        errors.push(format!(
            "{}: expected an integer or a string, got {value}",
            at(path)
        ));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!(
            "{}: {value} is not one of {}",
            at(path),
            Value::Array(allowed.clone())
        ));
    }
    check_number(s, value, path, errors);
    check_lengths(s, value, path, errors);
    check_address_format(s, value, path, errors);
    match value {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        errors.push(format!("{}: required field is missing", join(path, r)));
                    }
                }
            }
            let preserve =
                s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            for (k, v) in map {
                let p = join(path, k);
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    check(sub, v, &p, false, errors);
                } else if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    // Every object has these; the API server checks them.
                } else {
                    match s.get("additionalProperties") {
                        Some(Value::Bool(true)) => {}
                        Some(sub @ Value::Object(_)) => check(sub, v, &p, false, errors),
                        _ if preserve => {}
                        _ => errors.push(format!(
                            "{p}: unknown field (the schema does not declare it; the API server would drop it)"
                        )),
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = s.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(sub, v, &format!("{}[{i}]", at(path)), false, errors);
                }
            }
        }
        _ => {}
    }
}

fn check_number(
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    let Some(n) = value.as_f64() else { return };
    if !value.is_number() {
        return;
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64) {
        let exclusive = s.get("exclusiveMinimum") == Some(&Value::Bool(true));
        if n < min || (exclusive && n == min) {
            errors.push(format!("{}: {value} is below the minimum {min}", at(path)));
        }
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64) {
        let exclusive = s.get("exclusiveMaximum") == Some(&Value::Bool(true));
        if n > max || (exclusive && n == max) {
            errors.push(format!("{}: {value} is above the maximum {max}", at(path)));
        }
    }
    let range = match s.get("format").and_then(Value::as_str) {
        Some("int8") => Some((i8::MIN as f64, i8::MAX as f64)),
        Some("uint8") => Some((0.0, u8::MAX as f64)),
        Some("int16") => Some((i16::MIN as f64, i16::MAX as f64)),
        Some("uint16") => Some((0.0, u16::MAX as f64)),
        Some("int32") => Some((i32::MIN as f64, i32::MAX as f64)),
        Some("uint32") => Some((0.0, u32::MAX as f64)),
        Some("uint64") => Some((0.0, u64::MAX as f64)),
        _ => None,
    };
    if let Some((lo, hi)) = range
        && (n < lo || n > hi)
    {
        errors.push(format!(
            "{}: {value} does not fit the format {}",
            at(path),
            s.get("format").and_then(Value::as_str).unwrap_or_default()
        ));
    }
}

/// The address formats the API server checks (`cidr`, `ipv4`, `ipv6`: Go's
/// `net.ParseCIDR` and `net.ParseIP`, which like Rust's parsers refuse
/// leading zeros and accept host bits in a CIDR).
fn check_address_format(
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (Some(format), Some(text)) = (s.get("format").and_then(Value::as_str), value.as_str())
    else {
        return;
    };
    let ok = match format {
        "ipv4" => text.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => text.parse::<Ipv6Addr>().is_ok(),
        "cidr" => text.split_once('/').is_some_and(|(addr, len)| {
            let max = match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            !len.is_empty()
                && len.bytes().all(|b| b.is_ascii_digit())
                && len.parse::<u8>().is_ok_and(|l| l <= max)
        }),
        _ => return,
    };
    if !ok {
        errors.push(format!("{}: {value} is not a valid {format}", at(path)));
    }
}

fn check_lengths(
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    errors: &mut Vec<String>,
) {
    let (len, min_key, max_key) = match value {
        Value::String(t) => (t.chars().count(), "minLength", "maxLength"),
        Value::Array(a) => (a.len(), "minItems", "maxItems"),
        _ => return,
    };
    if let Some(min) = s.get(min_key).and_then(Value::as_u64)
        && (len as u64) < min
    {
        errors.push(format!(
            "{}: length {len} is below {min_key} {min}",
            at(path)
        ));
    }
    if let Some(max) = s.get(max_key).and_then(Value::as_u64)
        && (len as u64) > max
    {
        errors.push(format!(
            "{}: length {len} is above {max_key} {max}",
            at(path)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "description": "x",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cidr"],
                    "properties": {
                        "cidr": {"type": "string", "minLength": 3},
                        "blockSize": {"type": "integer", "format": "uint8", "minimum": 0.0, "maximum": 128.0, "nullable": true},
                        "action": {"type": "string", "enum": ["Allow", "Deny"]},
                        "ports": {"type": "array", "maxItems": 2, "items": {"anyOf": [{"format": "uint16", "minimum": 0.0, "maximum": 65535.0}, {}], "x-kubernetes-int-or-string": true}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "ratio": {"type": "number", "exclusiveMaximum": true, "maximum": 1.0},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                }
            }
        })
    }

    fn errs(v: Value) -> Vec<String> {
        validate(&schema(), &v)
    }

    #[test]
    fn accepts_what_the_schema_allows() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"cidr": "10.0.0.0/8", "blockSize": null, "action": "Allow",
                "ports": [80, "http"], "labels": {"a": "b"}, "ratio": 0.5, "free": {"any": [1]}}});
        assert_eq!(errs(v), Vec::<String>::new());
    }

    #[test]
    fn names_every_violation_by_path() {
        let v = json!({"spec": {"blockSize": 300, "action": "Maybe", "ports": [80, 70000, true],
            "labels": {"a": 1}, "ratio": 1.0, "typo": 1}, "extra": 2});
        let e = errs(v);
        let expect = [
            "spec.cidr: required field is missing",
            "spec.blockSize: 300 is above the maximum 128",
            "spec.blockSize: 300 does not fit the format uint8",
            "spec.action: \"Maybe\" is not one of",
            "spec.ports: length 3 is above maxItems 2",
            "spec.ports[2]: expected an integer or a string",
            "spec.labels.a: expected string, got integer 1",
            "spec.ratio: 1.0 is above the maximum 1",
            "spec.typo: unknown field",
            "extra: unknown field",
        ];
        for x in expect {
            assert!(
                e.iter().any(|m| m.starts_with(x)),
                "missing {x:?} in {e:#?}"
            );
        }
        // 70000 is an integer, so the `{}` branch of anyOf (any value) accepts
        // it, as the API server does for int-or-string ports.
        assert!(!e.iter().any(|m| m.starts_with("spec.ports[1]")), "{e:#?}");
        assert_eq!(
            errs(json!({"spec": "no"})),
            vec!["spec: expected object, got string \"no\"".to_string()]
        );
    }

    #[test]
    fn refuses_schema_keywords_it_does_not_implement() {
        let s = json!({"type": "string", "pattern": "^a$"});
        let e = validate(&s, &json!("a"));
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("\"pattern\""), "{e:?}");
    }
}
