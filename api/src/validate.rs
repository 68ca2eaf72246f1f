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
}
