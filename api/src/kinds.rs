//! The registry of every kind the datastore holds — Twill's CRDs and the
//! native Kubernetes kinds Twill reads — with the names people type
//! (`ippools`, `pool`, `IPPool`), where each lives in the API, and how each is
//! validated. Generic code goes through [`Object`]; code that only has JSON
//! (twillctl reading YAML) goes through [`Kind`].

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
    Service,
    EndpointSlice,
}

impl Kind {
    /// All kinds, Twill's first.
    pub const ALL: [Kind; 13] = [
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
        Kind::Service,
        Kind::EndpointSlice,
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
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
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
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
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
            Kind::Service => &["svc"],
            Kind::EndpointSlice => &[],
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod | Kind::NetworkPolicy | Kind::Secret | Kind::Service | Kind::EndpointSlice
        )
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
            Kind::Service => check_typed::<Service>(value),
            Kind::EndpointSlice => check_typed::<EndpointSlice>(value),
        }
    }
}

/// A field in the input that the kind does not have (strict input: a
/// typo such as `natOutgong` must not silently give a default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownField {
    /// Path of the field, e.g. `spec.natOutgong`.
    pub path: String,
    /// The known field at the same place closest to it, if any is close.
    pub suggestion: Option<String>,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown field {}", self.path)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean {s}?)")?;
        }
        Ok(())
    }
}

/// Fields of ObjectMeta (for suggestions under `metadata`).
const META_FIELDS: [&str; 15] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// One step of a field path as serde_ignored reports it.
enum Step {
    Key(String),
    Index,
}

fn steps(path: &serde_ignored::Path<'_>, out: &mut Vec<Step>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, .. } => {
            steps(parent, out);
            out.push(Step::Index);
        }
        Path::Map { parent, key } => {
            steps(parent, out);
            out.push(Step::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => steps(parent, out),
    }
}

fn render_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            render_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            render_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent, out),
    }
}

/// The field names known at `parent` (a path of steps) in the kind's schema.
fn known_fields(kind: Kind, parent: &[Step]) -> Vec<String> {
    if let [Step::Key(k)] = parent
        && k == "metadata"
    {
        return META_FIELDS.iter().map(|s| s.to_string()).collect();
    }
    if parent.is_empty() && !kind.is_twill() {
        return [
            "apiVersion",
            "kind",
            "metadata",
            "spec",
            "status",
            "data",
            "stringData",
            "type",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
    }
    let Some(crd) = crate::crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind.name())
    else {
        return vec![];
    };
    let Some(schema) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
    else {
        return vec![];
    };
    let mut at = &schema;
    for step in parent {
        let next = match step {
            Step::Key(k) => at.pointer(&format!(
                "/properties/{}",
                k.replace('~', "~0").replace('/', "~1")
            )),
            Step::Index => at.get("items"),
        };
        match next {
            Some(n) => at = n,
            None => return vec![],
        }
    }
    at.get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn unknown_of<K: Object>(value: &Value) -> Vec<UnknownField> {
    let mut found = Vec::new();
    let _: Result<K, _> = serde_ignored::deserialize(value, |path| {
        let mut p = String::new();
        render_path(&path, &mut p);
        if p == "apiVersion" || p == "kind" {
            return;
        }
        let mut s = Vec::new();
        steps(&path, &mut s);
        let last = match s.pop() {
            Some(Step::Key(k)) => k,
            _ => String::new(),
        };
        let known = known_fields(K::KIND, &s);
        let suggestion =
            crate::validate::closest(&last, known.iter().map(String::as_str)).map(str::to_string);
        found.push(UnknownField {
            path: p,
            suggestion,
        });
    });
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup();
    found
}

impl Kind {
    /// Fields in `value` the kind does not have, each with the closest known
    /// name. Input from people (apply, create, replace, patch) is refused
    /// when this is not empty; objects read from a datastore go through
    /// [`crate::compat::check`] instead, which only warns.
    pub fn unknown_fields(self, value: &Value) -> Vec<UnknownField> {
        match self {
            Kind::IPPool => unknown_of::<IPPool>(value),
            Kind::IPAMBlock => unknown_of::<IPAMBlock>(value),
            Kind::BGPConfiguration => unknown_of::<BGPConfiguration>(value),
            Kind::BGPPeer => unknown_of::<BGPPeer>(value),
            Kind::GlobalNetworkPolicy => unknown_of::<GlobalNetworkPolicy>(value),
            Kind::NodeStatus => unknown_of::<NodeStatus>(value),
            Kind::Node => unknown_of::<Node>(value),
            Kind::Namespace => unknown_of::<Namespace>(value),
            Kind::Pod => unknown_of::<Pod>(value),
            Kind::NetworkPolicy => unknown_of::<NetworkPolicy>(value),
            Kind::Secret => unknown_of::<Secret>(value),
            Kind::Service => unknown_of::<Service>(value),
            Kind::EndpointSlice => unknown_of::<EndpointSlice>(value),
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
    Service,
    Service,
    crate::service::validate_service,
    defaults = crate::defaults::service
);
object!(
    EndpointSlice,
    EndpointSlice,
    crate::service::validate_endpoint_slice
);
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
    let mut labels = Errors::default();
    if let Some(l) = &obj.meta().labels {
        crate::validate::check_labels(l, &mut labels);
    }
    if !labels.is_empty() {
        return Err(ValidationError {
            kind: K::KIND.name().into(),
            name,
            errors: labels.0,
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
        let at = value.pointer(&json_pointer(e.path())).map(compact);
        ValidationError {
            kind: K::KIND.name().into(),
            name,
            errors: vec![FieldError {
                field,
                value: at.unwrap_or_default(),
                reason: crate::validate::plain_serde_message(&e.into_inner().to_string()),
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

/// The JSON pointer (RFC 6901) of a serde path, built from its segments,
/// so keys with `.`, `[`, `]`, `/` or `~` in them cannot confuse it.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        out.push('/');
        match seg {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => out.push('?'),
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

    #[test]
    fn unknown_fields_are_named_with_the_closest_known_name() {
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "lables": {}},
            "spec": {"cidr": "10.0.0.0/16", "natOutgong": true, "zzzzzz": 1}});
        let u = Kind::IPPool.unknown_fields(&v);
        let text: Vec<String> = u.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "unknown field metadata.lables (did you mean labels?)",
                "unknown field spec.natOutgong (did you mean natOutgoing?)",
                "unknown field spec.zzzzzz",
            ]
        );
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "g"}, "spec": {"ingress": [{"action": "Allow", "protcol": "TCP"}]}});
        let u = Kind::GlobalNetworkPolicy.unknown_fields(&v);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].path, "spec.ingress[0].protcol");
        assert_eq!(u[0].suggestion.as_deref(), Some("protocol"));
        let v = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "n", "namespace": "x"}, "spec": {"podSelector": {}, "podSelectr": {}}});
        let u = Kind::NetworkPolicy.unknown_fields(&v);
        assert_eq!(u.len(), 1, "{u:?}");
        assert_eq!(u[0].path, "spec.podSelectr");
        let clean = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {"cidr": "10.0.0.0/16", "natOutgoing": true}});
        assert!(Kind::IPPool.unknown_fields(&clean).is_empty());
    }

    #[test]
    fn malformed_keys_never_panic() {
        for key in ["a[]]", "a[", "]", "[", "a[0]]b", "~1/", "a.b[x]"] {
            let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
                "metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16", key: 1, "blockSize": "x"}});
            let _ = Kind::IPPool.validate_value(&v);
            let _ = Kind::IPPool.unknown_fields(&v);
            // A type error under the odd key: the error path contains it.
            let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
                "metadata": {"name": "p", "labels": {key: 5}}, "spec": {"cidr": "10.0.0.0/16"}});
            let e = Kind::IPPool.validate_value(&v).unwrap_err();
            assert!(e.errors[0].field.contains(key), "{e}");
            assert_eq!(e.errors[0].value, "5", "{e}");
            let v = json!({"apiVersion": "twill.dev/v1", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "g"}, "spec": {"ingress": [{key: {"a": 1}, "action": 5}]}});
            let _ = Kind::GlobalNetworkPolicy.validate_value(&v);
            let _ = Kind::GlobalNetworkPolicy.unknown_fields(&v);
        }
        let v = json!({"apiVersion": "twill.dev/v1", "kind": "IPPool",
            "metadata": {"name": "p", "labels": {"bad key": "x", "ok": "v".repeat(70)}},
            "spec": {"cidr": "10.0.0.0/16"}});
        let e = Kind::IPPool.validate_value(&v).unwrap_err().to_string();
        assert!(
            e.contains("invalid label key") && e.contains("bad key"),
            "{e}"
        );
        assert!(e.contains("70 characters"), "{e}");
    }
}
