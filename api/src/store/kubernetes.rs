//! The Kubernetes backend: kube-rs `Api<DynamicObject>` per kind, so one
//! code path serves Twill's CRDs and the native kinds alike. The API server
//! provides compare-and-swap (409 Conflict on a stale resourceVersion) and
//! the watch (kube-runtime's watcher, which re-lists after 410 Gone; each
//! re-list reaches consumers as a `Resync`).

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
        Ok(KubeStore { client })
    }

    /// Wraps an existing client (tests pass a mock).
    pub fn new(client: kube::Client) -> Self {
        KubeStore { client }
    }

    fn api(&self, kind: Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = kind.api_resource();
        match namespace {
            Some(ns) if kind.namespaced() => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    async fn current_revision(&self, kind: Kind, key: &ObjectKey) -> String {
        match self
            .api(kind, key.namespace.as_deref())
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
fn to_value(kind: Kind, mut obj: DynamicObject) -> Result<Value, StoreError> {
    let ar = kind.api_resource();
    obj.types = Some(kube::api::TypeMeta {
        api_version: ar.api_version,
        kind: ar.kind,
    });
    serde_json::to_value(obj).map_err(|e| StoreError::Malformed {
        kind,
        reason: e.to_string(),
    })
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
        let o = from_value(kind, obj)?;
        match self
            .api(kind, key.namespace.as_deref())
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
        let o = from_value(kind, obj)?;
        match self
            .api(kind, key.namespace.as_deref())
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
        let o = from_value(kind, obj)?;
        match self
            .api(kind, key.namespace.as_deref())
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
        let api = self.api(kind, None);
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
                    Ok(watcher::Event::Apply(o)) => {
                        Some(to_trimmed(kind, o).map(WatchEvent::Applied))
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        Some(to_trimmed(kind, o).map(WatchEvent::Deleted))
                    }
                    Err(e) => Some(Err(StoreError::Backend {
                        backend: "kubernetes",
                        message: watch_error(kind, &e),
                    })),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}
