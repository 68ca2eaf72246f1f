//! Validation that a person can act on: every error names the field (as a
//! JSON path such as `spec.ingress[0].destination.nets[1]`), the bad value and
//! what would be accepted. Validation is pure; the datastore runs it before
//! every write, so an invalid object never reaches a backend.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::selector::Selector;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.cidr`.
    pub field: String,
    /// The offending value as the user wrote it (empty when the field is missing).
    pub value: String,
    /// What is wrong and what would be right.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.field, self.reason)
        } else {
            write!(f, "{}: {:?}: {}", self.field, self.value, self.reason)
        }
    }
}

/// All problems found in one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub kind: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} is invalid", self.kind, self.name)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Collects field errors while walking an object.
#[derive(Default, Debug)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Turns the collected errors into a result for the named object.
    pub fn finish(self, kind: &str, name: &str) -> Result<(), ValidationError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                kind: kind.to_string(),
                name: name.to_string(),
                errors: self.0,
            })
        }
    }

    /// Checks a CIDR: syntax, and that no host bits are set.
    pub fn cidr(&mut self, field: &str, value: &str) -> Option<IpNetwork> {
        match parse_cidr(value) {
            Ok(net) => Some(net),
            Err(reason) => {
                self.push(field, value, reason);
                None
            }
        }
    }

    /// Checks a selector expression parses.
    pub fn selector(&mut self, field: &str, value: &str) -> Option<Selector> {
        match Selector::parse(value) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push(field, value, format!("{} at offset {}", e.reason, e.offset));
                None
            }
        }
    }

    /// Checks an AS number: 1..=4294967294, not AS_TRANS (23456).
    pub fn asn(&mut self, field: &str, asn: u32) {
        if let Err(reason) = check_asn(asn) {
            self.push(field, asn, reason);
        }
    }
}

/// Parses a CIDR strictly: `a.b.c.d/len` or `x::/len`, host bits clear.
/// A bare address is not a CIDR here (say `/32` or `/128`).
pub fn parse_cidr(value: &str) -> Result<IpNetwork, String> {
    let Some((addr, len)) = value.split_once('/') else {
        return Err("not a CIDR: expected ADDRESS/PREFIX-LENGTH, e.g. 10.244.0.0/16".into());
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("not a CIDR: {addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("not a CIDR: prefix length must be 0..={max}"))?;
    let net = IpNetwork::new(addr, len).map_err(|e| format!("not a CIDR: {e}"))?;
    if net.network() != addr {
        return Err(format!(
            "host bits set: did you mean {}/{}?",
            net.network(),
            len
        ));
    }
    Ok(net)
}

/// Parses `ADDRESS` or `CIDR` (a bare address means the host prefix).
pub fn parse_net_or_addr(value: &str) -> Result<IpNetwork, String> {
    if value.contains('/') {
        parse_cidr(value)
    } else {
        value
            .parse::<IpAddr>()
            .map(IpNetwork::from)
            .map_err(|_| "not an IP address or CIDR".into())
    }
}

/// AS numbers Twill accepts for itself and its peers.
pub fn check_asn(asn: u32) -> Result<(), String> {
    match asn {
        0 => Err("AS 0 is reserved (RFC 7607); use 1..=4294967294".into()),
        23456 => Err("AS 23456 is AS_TRANS (RFC 6793) and cannot be used".into()),
        4294967295 => Err("AS 4294967295 is reserved (RFC 7300); use 1..=4294967294".into()),
        _ => Ok(()),
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => a.contains(b.network()) || b.contains(a.network()),
        (IpNetwork::V6(a), IpNetwork::V6(b)) => a.contains(b.network()) || b.contains(a.network()),
        _ => false,
    }
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("metadata.name is required".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = name
        .chars()
        .next()
        .zip(name.chars().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err("must be lower-case letters, digits, '-' and '.', starting and ending with a letter or digit".into())
    }
}

/// The name part of a label key, and a label value (when not empty):
/// at most 63 characters, letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
fn check_label_word(s: &str, what: &str) -> Result<(), String> {
    if s.chars().count() > 63 {
        return Err(format!(
            "{what} is {} characters long; at most 63 are allowed",
            s.chars().count()
        ));
    }
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = s
        .chars()
        .next()
        .zip(s.chars().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{what} must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// A label key, by Kubernetes' rules: an optional prefix (a DNS subdomain
/// of at most 253 characters) and `/`, then a name of at most 63 characters.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("the prefix before '/' is empty".into());
        }
        if name.contains('/') {
            return Err("a label key has at most one '/' (PREFIX/NAME)".into());
        }
        check_name(p).map_err(|r| {
            format!("the prefix {p:?} must be a DNS subdomain (at most 253 characters, lower-case letters, digits, '-' and '.', starting and ending with a letter or digit): {r}")
        })?;
    }
    if name.is_empty() {
        return Err("the key's name is empty".into());
    }
    check_label_word(name, "the key's name")
}

/// A label value, by Kubernetes' rules: empty, or at most 63 characters of
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_word(value, "the value")
}

/// Checks every label of an object.
pub fn check_labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    e: &mut Errors,
) {
    for (k, v) in labels {
        if let Err(r) = check_label_key(k) {
            e.push(
                format!("metadata.labels[{k:?}]"),
                k,
                format!("invalid label key: {r}"),
            );
        }
        if let Err(r) = check_label_value(v) {
            e.push(
                format!("metadata.labels[{k:?}]"),
                v,
                format!("invalid label value: {r}"),
            );
        }
    }
}

/// Says a serde decoding error in the user's terms: "must be a whole
/// number 0–255 (got "big")" rather than "invalid type: string "big",
/// expected u8".
pub fn plain_serde_message(msg: &str) -> String {
    fn expected(e: &str) -> String {
        let e = e.trim();
        match e {
            "u8" => "a whole number 0–255".into(),
            "u16" => "a whole number 0–65535".into(),
            "u32" => "a whole number 0–4294967295".into(),
            "u64" | "usize" => "a whole number, 0 or more".into(),
            "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
            "f32" | "f64" => "a number".into(),
            "a boolean" => "true or false".into(),
            "a string" | "a borrowed string" => "text (a string)".into(),
            "a sequence" => "a list".into(),
            "a map" => "an object (key: value pairs)".into(),
            e if e.starts_with("struct ") => "an object (key: value pairs)".into(),
            e if e.starts_with("one of ") => {
                format!("one of {}", e["one of ".len()..].replace('`', ""))
            }
            e => e.replace('`', ""),
        }
    }
    fn got(g: &str) -> String {
        let g = g.trim();
        for (prefix, _) in [
            ("integer ", ()),
            ("floating point ", ()),
            ("boolean ", ()),
            ("string ", ()),
        ] {
            if let Some(v) = g.strip_prefix(prefix) {
                return v.trim_matches('`').to_string();
            }
        }
        match g {
            "map" => "an object".into(),
            "sequence" => "a list".into(),
            "null" => "null".into(),
            other => other.replace('`', ""),
        }
    }
    let m = msg.trim();
    if let Some(rest) = m
        .strip_prefix("invalid type: ")
        .or_else(|| m.strip_prefix("invalid value: "))
        && let Some((g, e)) = rest.split_once(", expected ")
    {
        return format!("must be {} (got {})", expected(e), got(g));
    }
    if let Some(rest) = m.strip_prefix("unknown variant ")
        && let Some((g, e)) = rest.split_once(", expected ")
    {
        return format!("must be {} (got {})", expected(e), got(g));
    }
    if let Some(f) = m.strip_prefix("missing field ") {
        return format!("{} is required", f.trim_matches('`'));
    }
    if let Some(rest) = m.strip_prefix("invalid length ")
        && let Some((g, e)) = rest.split_once(", expected ")
    {
        return format!("must have {} (got {})", expected(e), g.trim());
    }
    m.to_string()
}

/// Edit distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(!ca.eq_ignore_ascii_case(cb));
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name closest to `word`, if one is close enough to be a typo.
pub fn closest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    known
        .into_iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_errors_say_what_to_do() {
        assert!(parse_cidr("10.244.0.0/16").is_ok());
        assert!(parse_cidr("fd00:10::/48").is_ok());
        assert_eq!(
            parse_cidr("10.244.1.0/16").unwrap_err(),
            "host bits set: did you mean 10.244.0.0/16?"
        );
        assert!(
            parse_cidr("10.244.0.0")
                .unwrap_err()
                .contains("ADDRESS/PREFIX-LENGTH")
        );
        assert!(parse_cidr("10.244.0.0/33").unwrap_err().contains("0..=32"));
        assert!(
            parse_cidr("10.244.0/16")
                .unwrap_err()
                .contains("not an IPv4")
        );
        assert!(parse_cidr("fd00::/129").unwrap_err().contains("0..=128"));
    }

    #[test]
    fn asn_ranges() {
        assert!(check_asn(64512).is_ok());
        assert!(check_asn(4200000000).is_ok());
        assert!(check_asn(0).is_err());
        assert!(check_asn(23456).is_err());
        assert!(check_asn(u32::MAX).is_err());
    }

    #[test]
    fn overlap() {
        let a = parse_cidr("10.0.0.0/16").unwrap();
        let b = parse_cidr("10.0.128.0/17").unwrap();
        let c = parse_cidr("10.1.0.0/16").unwrap();
        let v6 = parse_cidr("::/0").unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
        assert!(!overlaps(&a, &v6));
    }

    #[test]
    fn names() {
        assert!(check_name("rack-a.tor1").is_ok());
        assert!(check_name("Rack").is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes() {
        let prefix = format!("{}.example.com", "a".repeat(241));
        assert_eq!(prefix.len(), 253);
        let longest = format!("{prefix}/{}", "k".repeat(63));
        assert_eq!(longest.len(), 317);
        assert!(check_label_key(&longest).is_ok());
        assert!(check_label_key(&format!("a{prefix}/k")).is_err());
        assert!(check_label_key(&format!("{prefix}/k{}", "k".repeat(63))).is_err());
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-9", "x/y"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["bad key", "", "/x", "x/", "a/b/c", "-a", "a-", "Ex.COM/x"] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value(&"v".repeat(63)).is_ok());
        let e = check_label_value(&"v".repeat(64)).unwrap_err();
        assert!(e.contains("64 characters") && e.contains("63"), "{e}");
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value("_a").is_err());
    }

    #[test]
    fn serde_messages_in_the_users_terms() {
        assert_eq!(
            plain_serde_message("invalid type: string \"big\", expected u8"),
            "must be a whole number 0–255 (got \"big\")"
        );
        assert_eq!(
            plain_serde_message("invalid value: integer `300`, expected u8"),
            "must be a whole number 0–255 (got 300)"
        );
        assert_eq!(
            plain_serde_message("unknown variant `Maybe`, expected one of `Allow`, `Deny`"),
            "must be one of Allow, Deny (got Maybe)"
        );
        assert_eq!(
            plain_serde_message("missing field `cidr`"),
            "cidr is required"
        );
        assert_eq!(
            plain_serde_message("invalid type: integer `5`, expected a boolean"),
            "must be true or false (got 5)"
        );
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let known = ["cidr", "natOutgoing", "blockSize", "disabled"];
        assert_eq!(closest("natOutgong", known), Some("natOutgoing"));
        assert_eq!(closest("natoutgoing", known), Some("natOutgoing"));
        assert_eq!(closest("colour", known), None);
    }
}
