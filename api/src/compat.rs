//! Reading objects written by another Twill version.
//!
//! Decoding is lenient: a field this version does not know is dropped, not
//! an error, so an older twillctl or twill-node keeps working against a
//! cluster whose CRDs and objects come from a newer Twill. Dropping quietly
//! would hide that something was not understood, so [`check`] says what:
//! the paths of the fields the typed resource ignored (found with
//! serde_ignored while decoding, so a field that merely has its default
//! value is not mistaken for an unknown one), or why the object cannot be
//! read at all (a value this version has no variant for, such as a new
//! enum member). twillctl prints these as warnings and shows the object as
//! stored.

use serde_json::Value;

use crate::kinds::{Kind, Object};
use crate::resources::{
    BGPConfiguration, BGPPeer, GlobalNetworkPolicy, IPAMBlock, IPPool, NodeStatus,
};

/// What this version did not understand about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Understanding {
    /// Fields that were ignored, as paths (`spec.ingress[0].newField`).
    pub unknown_fields: Vec<String>,
    /// Why the object could not be decoded at all, if it could not.
    pub unreadable: Option<String>,
}

impl Understanding {
    /// Whether everything was understood.
    pub fn complete(&self) -> bool {
        self.unknown_fields.is_empty() && self.unreadable.is_none()
    }

    /// One line for a warning, or `None` when everything was understood.
    pub fn warning(&self, kind: Kind, name: &str) -> Option<String> {
        if let Some(why) = &self.unreadable {
            return Some(format!(
                "{kind} {name:?} was written by another Twill version and this one cannot read it ({why}); it is shown as stored"
            ));
        }
        (!self.unknown_fields.is_empty()).then(|| {
            format!(
                "{kind} {name:?} has fields this Twill version does not know (written by a newer version?): {}",
                self.unknown_fields.join(", ")
            )
        })
    }
}

fn render(path: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            render(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            render(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent, out),
    }
}

fn understand<K: Object>(value: &Value) -> Understanding {
    let mut unknown = Vec::new();
    let result: Result<K, _> = serde_ignored::deserialize(value, |path| {
        let mut p = String::new();
        render(&path, &mut p);
        // The derived resources take apiVersion and kind from the type,
        // not the input: they are understood, not ignored.
        if p != "apiVersion" && p != "kind" {
            unknown.push(p);
        }
    });
    match result {
        Ok(_) => {
            unknown.sort();
            unknown.dedup();
            Understanding {
                unknown_fields: unknown,
                unreadable: None,
            }
        }
        Err(_) => Understanding {
            unknown_fields: unknown,
            // Decode again for the message that names the field.
            unreadable: Some(match crate::kinds::decode::<K>(value) {
                Err(e) => e
                    .errors
                    .first()
                    .map(|f| format!("{}: {}", f.field, f.reason))
                    .unwrap_or_else(|| e.to_string()),
                Ok(_) => "it does not decode".to_string(),
            }),
        },
    }
}

/// What this version does not understand about `value`, an object of
/// `kind` as read from a datastore. Native Kubernetes kinds are not
/// checked: their schema is the API server's, not Twill's.
pub fn check(kind: Kind, value: &Value) -> Understanding {
    match kind {
        Kind::IPPool => understand::<IPPool>(value),
        Kind::IPAMBlock => understand::<IPAMBlock>(value),
        Kind::BGPConfiguration => understand::<BGPConfiguration>(value),
        Kind::BGPPeer => understand::<BGPPeer>(value),
        Kind::GlobalNetworkPolicy => understand::<GlobalNetworkPolicy>(value),
        Kind::NodeStatus => understand::<NodeStatus>(value),
        Kind::Node
        | Kind::Namespace
        | Kind::Pod
        | Kind::NetworkPolicy
        | Kind::Secret
        | Kind::Service
        | Kind::EndpointSlice => Understanding::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_ignored_fields_not_defaults() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "resourceVersion": "3"},
            "spec": {"cidr": "10.0.0.0/16", "disabled": false, "natOutgoing": true,
                     "vxlanMode": "Always", "allowedUses": ["Workload"]},
            "status": {"conditions": []}});
        let u = check(Kind::IPPool, &v);
        assert_eq!(u.unknown_fields, vec!["spec.vxlanMode", "status"]);
        assert!(u.unreadable.is_none());
        let w = u.warning(Kind::IPPool, "p").unwrap();
        assert!(w.contains("spec.vxlanMode, status"), "{w}");
        let clean = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", "disabled": false}});
        assert!(check(Kind::IPPool, &clean).complete());
    }

    #[test]
    fn nested_paths_and_unreadable_values() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"},
            "spec": {"ingress": [{"action": "Allow"}, {"action": "Deny", "rateLimit": 5}]}});
        assert_eq!(
            check(Kind::GlobalNetworkPolicy, &v).unknown_fields,
            vec!["spec.ingress[1].rateLimit"]
        );
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"ingress": [{"action": "Redirect"}]}});
        let u = check(Kind::GlobalNetworkPolicy, &v);
        let why = u.unreadable.clone().unwrap();
        assert!(why.starts_with("spec.ingress[0].action"), "{why}");
        assert!(
            u.warning(Kind::GlobalNetworkPolicy, "g")
                .unwrap()
                .contains("shown as stored")
        );
    }
}
