//! The registry of every kind the datastore holds — Twill's CRDs and the
//! native Kubernetes kinds Twill reads — with the names people type
//! (`ippools`, `pool`, `IPPool`), where each lives in the API, and how each is
//! validated. Generic code goes through [`Object`]; code that only has JSON
//! (twillctl reading YAML) goes through [`Kind`].

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::ApiResource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::resources::{
    BGPConfiguration, BGPPeer, GlobalNetworkPolicy, IPAMBlock, IPPool, NodeStatus,
};
use crate::validate::{Errors, FieldError, ValidationError, check_name};

/// Every kind the datastore knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    IPPool,
    IPAMBlock,
    BGPConfiguration,
    BGPPeer,
    GlobalNetworkPolicy,
    NodeStatus,
    Node,
    Namespace,
    Pod,
    NetworkPolicy,
    Secret,
}

impl Kind {
    /// All kinds, Twill's first.
    pub const ALL: [Kind; 11] = [
        Kind::IPPool,
        Kind::IPAMBlock,
        Kind::BGPConfiguration,
        Kind::BGPPeer,
        Kind::GlobalNetworkPolicy,
        Kind::NodeStatus,
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Secret,
    ];

    /// Where the kind lives in the Kubernetes API.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::IPPool => ApiResource::erase::<IPPool>(&()),
            Kind::IPAMBlock => ApiResource::erase::<IPAMBlock>(&()),
            Kind::BGPConfiguration => ApiResource::erase::<BGPConfiguration>(&()),
            Kind::BGPPeer => ApiResource::erase::<BGPPeer>(&()),
            Kind::GlobalNetworkPolicy => ApiResource::erase::<GlobalNetworkPolicy>(&()),
            Kind::NodeStatus => ApiResource::erase::<NodeStatus>(&()),
            Kind::Node => ApiResource::erase::<Node>(&()),
            Kind::Namespace => ApiResource::erase::<Namespace>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
            Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            Kind::Secret => ApiResource::erase::<Secret>(&()),
        }
    }

    /// The kind's name as in `kind:` (e.g. `IPPool`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::IPAMBlock => "IPAMBlock",
            Kind::BGPConfiguration => "BGPConfiguration",
            Kind::BGPPeer => "BGPPeer",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::NodeStatus => "NodeStatus",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Secret => "Secret",
        }
    }

    /// The plural resource name (e.g. `ippools`).
    pub fn plural(self) -> String {
        self.api_resource().plural
    }

    /// Short names accepted on the command line.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::IPPool => &["pool"],
            Kind::IPAMBlock => &["block"],
            Kind::BGPConfiguration => &["bgpconfig"],
            Kind::BGPPeer => &["peer"],
            Kind::GlobalNetworkPolicy => &["gnp"],
            Kind::NodeStatus => &["tns"],
            Kind::Node => &["no"],
            Kind::Namespace => &["ns"],
            Kind::Pod => &["po"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::Secret => &[],
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::NetworkPolicy | Kind::Secret)
    }

    /// Whether the kind is one of Twill's own CRDs.
    pub fn is_twill(self) -> bool {
        self.api_resource().group == crate::resources::GROUP
    }

    /// Resolves what a person typed: kind, singular, plural or short name, any case.
    pub fn from_name(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            k.name().to_ascii_lowercase() == l
                || k.plural() == l
                || k.short_names()
                    .iter()
                    .any(|s| *s == l || format!("{s}s") == l)
                || (k.name().to_ascii_lowercase() + "s") == l
        })
    }

    /// Resolves `apiVersion` + `kind` from an object.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.api_resource().api_version == api_version)
    }

    /// Checks a JSON object is a well-formed, valid object of this kind:
    /// deserializes it into the typed resource (naming the field on a type
    /// error) and runs the kind's validation. Cross-object checks (pool
    /// overlap) are done by the store, which can see the other objects.
    pub fn validate_value(self, value: &Value) -> Result<(), ValidationError> {
        self.normalize(value).map(|_| ())
    }

    /// Validates and returns the object as the typed resource writes it
    /// (defaults filled in, unknown fields dropped), with apiVersion and kind
    /// set: what the store keeps, whoever wrote it.
    pub fn normalize(self, value: &Value) -> Result<Value, ValidationError> {
        match self {
            Kind::IPPool => check_typed::<IPPool>(value),
            Kind::IPAMBlock => check_typed::<IPAMBlock>(value),
            Kind::BGPConfiguration => check_typed::<BGPConfiguration>(value),
            Kind::BGPPeer => check_typed::<BGPPeer>(value),
            Kind::GlobalNetworkPolicy => check_typed::<GlobalNetworkPolicy>(value),
            Kind::NodeStatus => check_typed::<NodeStatus>(value),
            Kind::Node => check_typed::<Node>(value),
            Kind::Namespace => check_typed::<Namespace>(value),
            Kind::Pod => check_typed::<Pod>(value),
            Kind::NetworkPolicy => check_typed::<NetworkPolicy>(value),
            Kind::Secret => check_typed::<Secret>(value),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed resource the datastore can hold.
pub trait Object:
    kube::Resource<DynamicType = ()>
    + Clone
    + fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind, for the registry.
    const KIND: Kind;

    /// Validation of the object's own fields.
    fn validate(&self) -> Result<(), ValidationError> {
        Ok(())
    }

    /// The API server's defaulting for this kind ([`crate::defaults`]);
    /// idempotent.
    fn set_defaults(&mut self) {}
}

macro_rules! object {
    ($t:ty, $k:ident, validated) => {
        impl Object for $t {
            const KIND: Kind = Kind::$k;
            fn validate(&self) -> Result<(), ValidationError> {
                <$t>::validate(self)
            }
        }
    };
    ($t:ty, $k:ident, $f:path) => {
        impl Object for $t {
            const KIND: Kind = Kind::$k;
            fn validate(&self) -> Result<(), ValidationError> {
                $f(self)
            }
        }
    };
    ($t:ty, $k:ident, $f:path, defaults = $d:path) => {
        impl Object for $t {
            const KIND: Kind = Kind::$k;
            fn validate(&self) -> Result<(), ValidationError> {
                $f(self)
            }
            fn set_defaults(&mut self) {
                $d(self)
            }
        }
    };
}

object!(IPPool, IPPool, validated);
object!(IPAMBlock, IPAMBlock, validated);
object!(BGPConfiguration, BGPConfiguration, validated);
object!(BGPPeer, BGPPeer, validated);
object!(GlobalNetworkPolicy, GlobalNetworkPolicy, validated);
object!(NodeStatus, NodeStatus, validated);
object!(Node, Node, validate_native);
object!(
    Namespace,
    Namespace,
    validate_native,
    defaults = crate::defaults::namespace
);
object!(Pod, Pod, validate_native, defaults = crate::defaults::pod);
object!(Secret, Secret, validate_native);
object!(
    NetworkPolicy,
    NetworkPolicy,
    crate::native::validate_network_policy,
    defaults = crate::defaults::network_policy
);

/// Native kinds: the name must be a valid object name.
fn validate_native<K: kube::Resource<DynamicType = ()>>(obj: &K) -> Result<(), ValidationError> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut e = Errors::default();
    if let Err(r) = check_name(&name) {
        e.push("metadata.name", &name, r);
    }
    e.finish(&K::kind(&()), &name)
}

fn check_typed<K: Object>(value: &Value) -> Result<Value, ValidationError> {
    let mut obj: K = decode(value)?;
    obj.set_defaults();
    let name = obj.meta().name.clone().unwrap_or_default();
    if K::KIND.is_twill()
        && let Err(r) = check_name(&name)
    {
        return Err(ValidationError {
            kind: K::KIND.name().into(),
            name: name.clone(),
            errors: vec![FieldError {
                field: "metadata.name".into(),
                value: name,
                reason: r,
            }],
        });
    }
    obj.validate()?;
    let mut out = serde_json::to_value(&obj).map_err(|e| ValidationError {
        kind: K::KIND.name().into(),
        name: name.clone(),
        errors: vec![FieldError {
            field: "(object)".into(),
            value: String::new(),
            reason: e.to_string(),
        }],
    })?;
    if let Some(m) = out.as_object_mut() {
        let ar = K::KIND.api_resource();
        m.insert("apiVersion".into(), Value::String(ar.api_version));
        m.insert("kind".into(), Value::String(ar.kind));
    }
    Ok(out)
}

/// Deserializes a JSON object into a typed resource; a type error names the
/// field path where it happened.
pub fn decode<K: Object>(value: &Value) -> Result<K, ValidationError> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "(object)".to_string()
        } else {
            path
        };
        let at = value.pointer(&json_pointer(&field)).map(compact);
        ValidationError {
            kind: K::KIND.name().into(),
            name,
            errors: vec![FieldError {
                field,
                value: at.unwrap_or_default(),
                reason: e.into_inner().to_string(),
            }],
        }
    })
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Turns `spec.ingress[0].ports` into `/spec/ingress/0/ports`.
fn json_pointer(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            out.push('/');
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                out.push('/');
                out.push_str(&rest[1..end]);
                rest = &rest[end + 1..];
            }
        } else {
            out.push('/');
            out.push_str(rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_people_type_resolve() {
        assert_eq!(Kind::from_name("ippools"), Some(Kind::IPPool));
        assert_eq!(Kind::from_name("IPPool"), Some(Kind::IPPool));
        assert_eq!(Kind::from_name("pool"), Some(Kind::IPPool));
        assert_eq!(Kind::from_name("gnp"), Some(Kind::GlobalNetworkPolicy));
        assert_eq!(
            Kind::from_name("networkpolicies"),
            Some(Kind::NetworkPolicy)
        );
        assert_eq!(Kind::from_name("bgppeer"), Some(Kind::BGPPeer));
        assert_eq!(Kind::from_name("ns"), Some(Kind::Namespace));
        assert_eq!(Kind::from_name("widgets"), None);
        assert_eq!(
            Kind::from_type_meta("twill.dev/v1", "IPPool"),
            Some(Kind::IPPool)
        );
        assert_eq!(
            Kind::from_type_meta("networking.k8s.io/v1", "NetworkPolicy"),
            Some(Kind::NetworkPolicy)
        );
        assert_eq!(Kind::from_type_meta("twill.dev/v2", "IPPool"), None);
    }

    #[test]
    fn type_errors_name_the_field_and_value() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", "blockSize": "big"}});
        let err = Kind::IPPool.validate_value(&v).unwrap_err();
        assert_eq!(err.errors[0].field, "spec.blockSize");
        assert_eq!(err.errors[0].value, "big");
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"ingress": [{"action": "Allow"}, {"action": "Maybe"}]}});
        let err = Kind::GlobalNetworkPolicy.validate_value(&v).unwrap_err();
        assert_eq!(err.errors[0].field, "spec.ingress[1].action");
        assert_eq!(err.errors[0].value, "Maybe");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p"}, "spec": {"cidr": "10.0.1.0/16"}});
        let err = Kind::IPPool.validate_value(&v).unwrap_err();
        assert_eq!(err.errors[0].field, "spec.cidr");
        assert!(
            err.to_string().contains("did you mean 10.0.0.0/16"),
            "{err}"
        );
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "BGPPeer",
            "metadata": {"name": "p"}, "spec": {"asNumber": 65000}});
        let err = Kind::BGPPeer.validate_value(&v).unwrap_err();
        assert!(err.errors[0].reason.contains("peerSelector"), "{err}");
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "Bad_Name"}, "spec": {"cidr": "10.0.0.0/16"}});
        assert_eq!(
            Kind::IPPool.validate_value(&v).unwrap_err().errors[0].field,
            "metadata.name"
        );
    }
}
