//! Schema pieces the derive cannot write: server-side validation the API
//! server runs before an object reaches the store. Only what OpenAPI v3 (as
//! Kubernetes 1.20 checks it, no CEL) can say: the `cidr`, `ipv4` and
//! `ipv6` formats, ranges, lengths. The Rust `validate` methods stay the full
//! check (prefix lengths per family, host bits, ordering); the server's
//! checks are a subset of them, so an object the server accepts may still be
//! refused by Twill, never the other way round.
//!
//! Int-or-string values (`ports`, `protocol`) are written as Kubernetes wants
//! them (`x-kubernetes-int-or-string: true`, no `type`): the untagged enums'
//! derived `anyOf` without a type is not a structural schema, and every API
//! server since 1.16 refuses such a CRD.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A CIDR (`10.244.0.0/16`, `fd00::/48`).
pub fn cidr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "cidr"})
}

/// An optional CIDR.
pub fn cidr_opt(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "cidr", "nullable": true})
}

/// An optional IPv4 address.
pub fn ipv4_opt(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "ipv4", "nullable": true})
}

/// A list of CIDRs or single addresses.
pub fn nets(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "anyOf": [{"format": "cidr"}, {"format": "ipv4"}, {"format": "ipv6"}]
        }
    })
}

impl JsonSchema for super::gnp::Port {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Port".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A number 1..=65535, or text: "FIRST:LAST" (at most 11 characters)
        // or a container port name (IANA_SVC_NAME, at most 15).
        json_schema!({
            "description": "A port: a number, a range `\"80:90\"`, or a named container port.",
            "x-kubernetes-int-or-string": true,
            "minimum": 1,
            "maximum": 65535,
            "minLength": 1,
            "maxLength": 15
        })
    }
}

impl JsonSchema for super::gnp::Protocol {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Protocol".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A protocol number 0..=255, or a name (the longest is UDPLite).
        json_schema!({
            "description": "A protocol by name (TCP, UDP, SCTP, ICMP, ICMPv6, UDPLite) or number.",
            "x-kubernetes-int-or-string": true,
            "minimum": 0,
            "maximum": 255,
            "minLength": 1,
            "maxLength": 7
        })
    }
}
