//! The Kubernetes backend: kube-rs `Api<DynamicObject>` per kind, so one
//! code path serves Twill's CRDs and the native kinds alike. The API server
//! provides compare-and-swap (409 Conflict on a stale resourceVersion) and
//! the watch (kube-runtime's watcher, which re-lists after 410 Gone; each
//! re-list reaches consumers as a `Resync`).
//!
//! EndpointSlices: Twill's model is discovery.k8s.io/v1 (Kubernetes 1.21+).
//! A server without it (1.20 serves only v1beta1) is asked for v1beta1,
//! found out once per store by discovery, and every object is converted
//! on the way in and out ([`slice_from_v1beta1`], [`slice_to_v1beta1`]):
//! `topology` ↔ `deprecatedTopology`, and the node from the topology key
//! `kubernetes.io/hostname` when the server did not fill `nodeName`.

use futures::stream::{BoxStream, StreamExt};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::Value;

use super::{Backend, Listing, ObjectKey, StoreError, WatchEvent, revision_of};
use crate::kinds::Kind;

/// The Kubernetes backend.
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    /// Whether the server serves EndpointSlice as v1 (probed once).
    slices_v1: std::sync::Arc<tokio::sync::OnceCell<bool>>,
}

/// The topology key older EndpointSlices name an endpoint's node with.
const HOSTNAME_KEY: &str = "kubernetes.io/hostname";
/// The topology key for the zone.
const ZONE_KEY: &str = "topology.kubernetes.io/zone";
/// EndpointSlice's version on servers older than 1.21.
pub const SLICE_V1BETA1: &str = "discovery.k8s.io/v1beta1";

/// A discovery.k8s.io/v1beta1 EndpointSlice as v1.
pub fn slice_from_v1beta1(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.insert(
            "apiVersion".into(),
            Value::String("discovery.k8s.io/v1".into()),
        );
    }
    let Some(eps) = v.get_mut("endpoints").and_then(Value::as_array_mut) else {
        return;
    };
    for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
        let Some(topo) = ep.remove("topology") else {
            continue;
        };
        if !ep.contains_key("nodeName")
            && let Some(h) = topo.get(HOSTNAME_KEY).and_then(Value::as_str)
        {
            ep.insert("nodeName".into(), Value::String(h.to_string()));
        }
        if !ep.contains_key("zone")
            && let Some(z) = topo.get(ZONE_KEY).and_then(Value::as_str)
        {
            ep.insert("zone".into(), Value::String(z.to_string()));
        }
        ep.insert("deprecatedTopology".into(), topo);
    }
}

/// A v1 EndpointSlice as discovery.k8s.io/v1beta1 (the node and zone go
/// into `topology` as well, where a 1.20 server keeps them).
pub fn slice_to_v1beta1(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(SLICE_V1BETA1.into()));
    }
    let Some(eps) = v.get_mut("endpoints").and_then(Value::as_array_mut) else {
        return;
    };
    for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
        let mut topo = match ep.remove("deprecatedTopology") {
            Some(Value::Object(t)) => t,
            _ => serde_json::Map::new(),
        };
        if let Some(n) = ep.get("nodeName").and_then(Value::as_str) {
            topo.entry(HOSTNAME_KEY)
                .or_insert(Value::String(n.to_string()));
        }
        if let Some(z) = ep
            .remove("zone")
            .and_then(|z| z.as_str().map(str::to_string))
        {
            topo.entry(ZONE_KEY).or_insert(Value::String(z));
        }
        ep.remove("hints");
        if !topo.is_empty() {
            ep.insert("topology".into(), Value::Object(topo));
        }
    }
}

fn kube_err(e: kube::Error) -> StoreError {
    StoreError::Backend {
        backend: "kubernetes",
        message: e.to_string(),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KubeStore {
    /// Uses `KUBECONFIG` / `~/.kube/config`, or the in-cluster service account.
    pub async fn connect() -> Result<Self, StoreError> {
        let client = kube::Client::try_default().await.map_err(|e| StoreError::Backend {
            backend: "kubernetes",
            message: format!("cannot reach the cluster (check KUBECONFIG or the in-cluster service account): {e}"),
        })?;
        Ok(KubeStore::new(client))
    }

    /// Wraps an existing client (tests pass a mock).
    pub fn new(client: kube::Client) -> Self {
        KubeStore {
            client,
            slices_v1: Default::default(),
        }
    }

    /// Whether this server's EndpointSlices are v1 (else v1beta1): asked
    /// once; a failed probe is not remembered and reads as v1.
    async fn slices_are_v1(&self) -> bool {
        let probe = self
            .slices_v1
            .get_or_try_init(|| async {
                match self
                    .client
                    .list_api_group_resources("discovery.k8s.io/v1")
                    .await
                {
                    Ok(l) => Ok(l.resources.iter().any(|r| r.name == "endpointslices")),
                    Err(e) if status_code(&e) == Some(404) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await;
        match probe {
            Ok(v1) => *v1,
            Err(e) => {
                tracing::debug!(error = %e, "EndpointSlice version probe failed; using v1");
                true
            }
        }
    }

    /// Whether `kind` is served in an older version here that needs conversion.
    async fn legacy(&self, kind: Kind) -> bool {
        kind == Kind::EndpointSlice && !self.slices_are_v1().await
    }

    async fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let mut ar = kind.api_resource();
        if self.legacy(kind).await {
            ar.api_version = SLICE_V1BETA1.into();
            ar.version = "v1beta1".into();
        }
        match namespace {
            Some(ns) if kind.namespaced() => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// An object about to be sent, in the version the server serves.
    async fn outgoing(&self, kind: Kind, mut obj: Value) -> Result<DynamicObject, StoreError> {
        if self.legacy(kind).await {
            slice_to_v1beta1(&mut obj);
        }
        from_value(kind, obj)
    }

    async fn current_revision(&self, kind: Kind, key: &ObjectKey) -> String {
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .get_opt(&key.name)
            .await
        {
            Ok(Some(o)) => o.metadata.resource_version.unwrap_or_default(),
            Ok(None) => "(deleted)".into(),
            Err(_) => "(unknown)".into(),
        }
    }

    async fn map_write_err(
        &self,
        kind: Kind,
        key: ObjectKey,
        sent: Option<&str>,
        e: kube::Error,
    ) -> StoreError {
        match status_code(&e) {
            Some(404) => StoreError::NotFound { kind, key },
            Some(409) if sent.is_none() => StoreError::AlreadyExists { kind, key },
            Some(409) => {
                let current = self.current_revision(kind, &key).await;
                StoreError::Conflict {
                    kind,
                    key,
                    expected: sent.unwrap_or_default().to_string(),
                    current,
                }
            }
            _ => kube_err(e),
        }
    }
}

/// List items from the API server omit apiVersion and kind; put them back.
/// EndpointSlices from a v1beta1 server are converted to v1 here (a v1
/// object has no `topology`, so the conversion leaves it as it is).
fn to_value(kind: Kind, mut obj: DynamicObject) -> Result<Value, StoreError> {
    let ar = kind.api_resource();
    obj.types = Some(kube::api::TypeMeta {
        api_version: ar.api_version,
        kind: ar.kind,
    });
    let mut v = serde_json::to_value(obj).map_err(|e| StoreError::Malformed {
        kind,
        reason: e.to_string(),
    })?;
    if kind == Kind::EndpointSlice {
        slice_from_v1beta1(&mut v);
    }
    Ok(v)
}

/// A listed or watched object, trimmed to what Twill reads.
fn to_trimmed(kind: Kind, obj: DynamicObject) -> Result<Value, StoreError> {
    let mut v = to_value(kind, obj)?;
    crate::trim::trim(kind, &mut v);
    Ok(v)
}

fn from_value(kind: Kind, v: Value) -> Result<DynamicObject, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Malformed {
        kind,
        reason: e.to_string(),
    })
}

/// A watch failure as people need it: the kind, the error, and for a
/// resource the server does not know (404) what is missing.
fn watch_error(kind: Kind, e: &watcher::Error) -> String {
    let code = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => status_code(k),
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::NoResourceVersion => None,
    };
    let ar = kind.api_resource();
    match code {
        Some(404) if kind.is_twill() => format!(
            "watch {}: the API server has no resource {}.{} (is the CRD installed? kubectl apply --server-side -f deploy/crds/): {e}",
            kind.plural(),
            ar.plural,
            ar.group
        ),
        Some(404) => format!(
            "watch {}: the API server has no resource {} in {}: {e}",
            kind.plural(),
            ar.plural,
            ar.api_version
        ),
        Some(403) => format!(
            "watch {}: forbidden (does the twill-node ClusterRole of deploy/10-rbac.yaml grant list and watch?): {e}",
            kind.plural()
        ),
        _ => format!("watch {}: {e}", kind.plural()),
    }
}

#[async_trait::async_trait]
impl Backend for KubeStore {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .get_opt(&key.name)
            .await
            .map_err(kube_err)?
        {
            Some(o) => Ok(Some(to_value(kind, o)?)),
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Listing<Value>, StoreError> {
        let list = self
            .api(kind, namespace)
            .await
            .list(&ListParams::default())
            .await
            .map_err(kube_err)?;
        Ok(Listing {
            revision: list.metadata.resource_version.clone().unwrap_or_default(),
            items: list
                .items
                .into_iter()
                .map(|o| to_trimmed(kind, o))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn create(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let key = ObjectKey::of(kind, &obj)?;
        let o = self.outgoing(kind, obj).await?;
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .create(&PostParams::default(), &o)
            .await
        {
            Ok(o) => to_value(kind, o),
            Err(e) => Err(self.map_write_err(kind, key, None, e).await),
        }
    }

    async fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let key = ObjectKey::of(kind, &obj)?;
        let sent = revision_of(&obj).unwrap_or_default().to_string();
        let o = self.outgoing(kind, obj).await?;
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .replace(&key.name, &PostParams::default(), &o)
            .await
        {
            Ok(o) => to_value(kind, o),
            Err(e) => Err(self.map_write_err(kind, key, Some(&sent), e).await),
        }
    }

    async fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let key = ObjectKey::of(kind, &obj)?;
        let sent = revision_of(&obj).unwrap_or_default().to_string();
        let o = self.outgoing(kind, obj).await?;
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .replace_status(&key.name, &PostParams::default(), &o)
            .await
        {
            Ok(o) => to_value(kind, o),
            Err(e) => Err(self.map_write_err(kind, key, Some(&sent), e).await),
        }
    }

    async fn delete(
        &self,
        kind: Kind,
        key: &ObjectKey,
        revision: Option<&str>,
    ) -> Result<(), StoreError> {
        let dp = DeleteParams {
            preconditions: revision.map(|r| Preconditions {
                resource_version: Some(r.to_string()),
                uid: None,
            }),
            ..Default::default()
        };
        match self
            .api(kind, key.namespace.as_deref())
            .await
            .delete(&key.name, &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self
                .map_write_err(kind, key.clone(), Some(revision.unwrap_or("")), e)
                .await),
        }
    }

    /// The watcher always starts with a full list (`from` is not used: the
    /// API server's watch cache decides what is too old, and kube's watcher
    /// re-lists on 410 Gone), so every (re)start is a `Resync`.
    fn watch(
        &self,
        kind: Kind,
        _from: Option<String>,
    ) -> BoxStream<'static, Result<WatchEvent<Value>, StoreError>> {
        let this = self.clone();
        futures::stream::once(async move { this.api(kind, None).await })
            .flat_map(move |api| watch_api(kind, api))
            .boxed()
    }
}

/// The watch of one kind through `api`, as [`WatchEvent`]s.
fn watch_api(
    kind: Kind,
    api: Api<DynamicObject>,
) -> BoxStream<'static, Result<WatchEvent<Value>, StoreError>> {
    let mut buffer: Vec<Value> = Vec::new();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |ev| {
            let out = match ev {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    None
                }
                Ok(watcher::Event::InitApply(o)) => match to_trimmed(kind, o) {
                    Ok(v) => {
                        buffer.push(v);
                        None
                    }
                    Err(e) => Some(Err(e)),
                },
                Ok(watcher::Event::InitDone) => {
                    let items = std::mem::take(&mut buffer);
                    let revision = items
                        .iter()
                        .filter_map(|v| revision_of(v).and_then(|r| r.parse::<u64>().ok()))
                        .max()
                        .map(|r| r.to_string())
                        .unwrap_or_default();
                    Some(Ok(WatchEvent::Resync { items, revision }))
                }
                Ok(watcher::Event::Apply(o)) => Some(to_trimmed(kind, o).map(WatchEvent::Applied)),
                Ok(watcher::Event::Delete(o)) => Some(to_trimmed(kind, o).map(WatchEvent::Deleted)),
                Err(e) => Some(Err(StoreError::Backend {
                    backend: "kubernetes",
                    message: watch_error(kind, &e),
                })),
            };
            futures::future::ready(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoint_slices_convert_between_v1beta1_and_v1() {
        let mut beta = json!({"apiVersion": SLICE_V1BETA1, "kind": "EndpointSlice",
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"],
                "topology": {"kubernetes.io/hostname": "n1", "topology.kubernetes.io/zone": "z"}},
                {"addresses": ["10.0.0.2"], "nodeName": "n2"}]});
        slice_from_v1beta1(&mut beta);
        assert_eq!(beta["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(beta["endpoints"][0]["nodeName"], "n1");
        assert_eq!(beta["endpoints"][0]["zone"], "z");
        assert!(beta["endpoints"][0].get("topology").is_none());
        assert_eq!(beta["endpoints"][1]["nodeName"], "n2");
        let mut back = beta.clone();
        slice_to_v1beta1(&mut back);
        assert_eq!(back["apiVersion"], SLICE_V1BETA1);
        assert_eq!(
            back["endpoints"][0]["topology"],
            json!({"kubernetes.io/hostname": "n1", "topology.kubernetes.io/zone": "z"})
        );
        assert_eq!(
            back["endpoints"][1]["topology"],
            json!({"kubernetes.io/hostname": "n2"})
        );
        // A v1 object read from a v1 server is left as it is.
        let v1 = json!({"apiVersion": "discovery.k8s.io/v1", "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1"}]});
        let mut same = v1.clone();
        slice_from_v1beta1(&mut same);
        assert_eq!(same, v1);
    }
}
