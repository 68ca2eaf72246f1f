//! The datastore: one typed interface over two backends.
//!
//! * [`kubernetes::KubeStore`]: the Kubernetes API through kube-rs.
//! * [`embedded::EmbeddedStore`]: one SQLite file shared by every process on
//!   one machine (labs, tests, single-node use), with a global revision.
//!
//! Backends speak JSON ([`Backend`]); [`Store`] adds types and runs
//! validation before every write, so nothing invalid is ever stored, whoever
//! writes it. Updates are compare-and-swap: an object's
//! `metadata.resourceVersion` must equal the stored one, or the write fails
//! with [`StoreError::Conflict`] and changes nothing.
//!
//! A watch delivers ordered events for one kind. It starts with a
//! [`WatchEvent::Resync`] of the full current set (unless resuming from a
//! revision the backend still has), and sends another `Resync` whenever it
//! had to restart because its revision was too old (compacted away, or
//! Kubernetes' 410 Gone). A consumer replaces its cache on `Resync`. A
//! watch that fails ends with an error; consumers watch again after a
//! [`retry::Backoff`] delay and log state changes, not retries.

pub mod embedded;
pub mod kubernetes;
pub mod retry;

use std::fmt;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use serde_json::Value;

use crate::kinds::{Kind, Object, decode};
use crate::resources::{IPAMBlock, IPPool};
use crate::validate::ValidationError;

/// Datastore failures. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {key} not found")]
    NotFound { kind: Kind, key: ObjectKey },
    #[error("{kind} {key} already exists (use apply or replace to change it)")]
    AlreadyExists { kind: Kind, key: ObjectKey },
    #[error(
        "{kind} {key} was changed by someone else: your copy is revision {expected}, the store has revision {current}; get it again and reapply your change"
    )]
    Conflict {
        kind: Kind,
        key: ObjectKey,
        expected: String,
        current: String,
    },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{kind} object is malformed: {reason}")]
    Malformed { kind: Kind, reason: String },
    #[error("{backend} datastore: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::AlreadyExists { .. })
    }
}

/// Namespace (for namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// Reads the key from an object's metadata.
    pub fn of(kind: Kind, obj: &Value) -> Result<Self, StoreError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| StoreError::Malformed {
                kind,
                reason: "metadata.name is required".into(),
            })?;
        let namespace = if kind.namespaced() {
            Some(
                obj.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or("default")
                    .to_string(),
            )
        } else {
            None
        };
        Ok(ObjectKey {
            namespace,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{:?}", format!("{ns}/{}", self.name)),
            None => write!(f, "{:?}", self.name),
        }
    }
}

/// A list result and the revision it was read at.
#[derive(Clone, Debug, Default)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub revision: String,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<T> {
    /// The complete current set at `revision`: replace the cache.
    Resync { items: Vec<T>, revision: String },
    /// An object was created or changed.
    Applied(T),
    /// An object was deleted (its last state).
    Deleted(T),
}

/// The JSON-level interface each backend implements.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `kubernetes` or `embedded`.
    fn name(&self) -> &'static str;
    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, StoreError>;
    /// All objects of a kind; `namespace` restricts namespaced kinds.
    async fn list(&self, kind: Kind, namespace: Option<&str>)
    -> Result<Listing<Value>, StoreError>;
    /// Creates; fails with AlreadyExists. Returns the stored object.
    async fn create(&self, kind: Kind, obj: Value) -> Result<Value, StoreError>;
    /// Compare-and-swap on `metadata.resourceVersion`. Returns the stored object.
    async fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError>;
    /// Compare-and-swap write of `.status` only (the status subresource).
    async fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError>;
    /// Deletes; with `revision`, only if it still is that revision.
    async fn delete(
        &self,
        kind: Kind,
        key: &ObjectKey,
        revision: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Ordered changes to a kind, resuming after `from` when the backend can.
    fn watch(
        &self,
        kind: Kind,
        from: Option<String>,
    ) -> BoxStream<'static, Result<WatchEvent<Value>, StoreError>>;
}

/// The typed datastore every component uses.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.backend.name())
    }
}

fn to_value<K: Object>(obj: &K) -> Result<Value, StoreError> {
    let mut v = serde_json::to_value(obj).map_err(|e| StoreError::Malformed {
        kind: K::KIND,
        reason: e.to_string(),
    })?;
    // Typed objects may leave apiVersion/kind empty; the backends need them.
    let ar = K::KIND.api_resource();
    if let Some(map) = v.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(ar.api_version));
        map.insert("kind".into(), Value::String(ar.kind));
    }
    Ok(v)
}

/// Decodes a stored object and applies the API server's defaulting
/// ([`crate::defaults`]): objects written before Twill defaulted them, or
/// by a writer that does not, read the same as on a cluster.
fn from_value<K: Object>(v: Value) -> Result<K, StoreError> {
    let mut obj = decode::<K>(&v).map_err(|e| StoreError::Malformed {
        kind: K::KIND,
        reason: e.to_string(),
    })?;
    obj.set_defaults();
    Ok(obj)
}

impl Store {
    pub fn new(backend: impl Backend) -> Self {
        Store {
            backend: Arc::new(backend),
        }
    }

    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    /// The backend's name, for messages.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Direct access to the JSON-level backend (twillctl).
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub async fn get<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, StoreError> {
        match self
            .backend
            .get(K::KIND, &ObjectKey::new(namespace, name))
            .await?
        {
            Some(v) => Ok(Some(from_value(v)?)),
            None => Ok(None),
        }
    }

    pub async fn list<K: Object>(&self) -> Result<Listing<K>, StoreError> {
        let l = self.backend.list(K::KIND, None).await?;
        Ok(Listing {
            items: l
                .items
                .into_iter()
                .map(from_value)
                .collect::<Result<_, _>>()?,
            revision: l.revision,
        })
    }

    pub async fn create<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        from_value(self.create_value(K::KIND, to_value(obj)?).await?)
    }

    pub async fn update<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        from_value(self.update_value(K::KIND, to_value(obj)?).await?)
    }

    pub async fn update_status<K: Object>(&self, obj: &K) -> Result<K, StoreError> {
        let v = K::KIND.normalize(&to_value(obj)?)?;
        from_value(self.backend.update_status(K::KIND, v).await?)
    }

    pub async fn delete<K: Object>(
        &self,
        namespace: Option<&str>,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), StoreError> {
        self.backend
            .delete(K::KIND, &ObjectKey::new(namespace, name), revision)
            .await
    }

    /// Typed watch; objects that fail to decode end the stream with an error.
    pub fn watch<K: Object>(
        &self,
        from: Option<String>,
    ) -> BoxStream<'static, Result<WatchEvent<K>, StoreError>> {
        self.backend
            .watch(K::KIND, from)
            .map(|ev| {
                Ok(match ev? {
                    WatchEvent::Resync { items, revision } => WatchEvent::Resync {
                        items: items
                            .into_iter()
                            .map(from_value)
                            .collect::<Result<_, _>>()?,
                        revision,
                    },
                    WatchEvent::Applied(v) => WatchEvent::Applied(from_value(v)?),
                    WatchEvent::Deleted(v) => WatchEvent::Deleted(from_value(v)?),
                })
            })
            .boxed()
    }

    /// Validates (including checks against other objects) and creates.
    pub async fn create_value(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let obj = self.validate_value(kind, &obj).await?;
        self.backend.create(kind, obj).await
    }

    /// Validates and updates (compare-and-swap).
    pub async fn update_value(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        let obj = self.validate_value(kind, &obj).await?;
        self.backend.update(kind, obj).await
    }

    /// Everything that makes an object invalid: its own fields, and for
    /// IPPools, overlap with the other pools. Returns the normalized object
    /// (see [`Kind::normalize`]), which is what gets written.
    pub async fn validate_value(&self, kind: Kind, obj: &Value) -> Result<Value, StoreError> {
        let normalized = kind.normalize(obj)?;
        if kind == Kind::IPPool {
            let pool: IPPool = from_value(normalized.clone())?;
            let others = self.list::<IPPool>().await?.items;
            pool.validate_against(&others)?;
            self.check_blocks_stay_inside(&pool, &others).await?;
        }
        Ok(normalized)
    }

    /// A pool's CIDR may change only so that every block cut from it stays
    /// inside: a block left outside every pool would hold pod addresses
    /// that NAT and allocation no longer treat as pod addresses.
    async fn check_blocks_stay_inside(
        &self,
        pool: &IPPool,
        others: &[IPPool],
    ) -> Result<(), StoreError> {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let (Some(new), Some(old)) = (
            pool.spec.network(),
            others
                .iter()
                .find(|o| o.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|o| o.spec.network()),
        ) else {
            return Ok(());
        };
        if new == old {
            return Ok(());
        }
        let outside: Vec<String> = self
            .list::<IPAMBlock>()
            .await?
            .items
            .into_iter()
            .filter_map(|b| b.spec.cidr.parse::<ipnetwork::IpNetwork>().ok())
            .filter(|b| b.is_ipv4() == old.is_ipv4() && old.contains(b.network()))
            .filter(|b| {
                !(new.is_ipv4() == b.is_ipv4()
                    && new.contains(b.network())
                    && new.contains(b.broadcast()))
            })
            .map(|b| b.to_string())
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        Err(ValidationError {
            kind: Kind::IPPool.name().into(),
            name,
            errors: vec![crate::validate::FieldError {
                field: "spec.cidr".into(),
                value: pool.spec.cidr.clone(),
                reason: format!(
                    "blocks {} cut from the old CIDR {old} would lie outside it; to move a pool, create a new one, disable this one and delete it once its blocks are released",
                    outside.join(", ")
                ),
            }],
        }
        .into())
    }
}

/// Returns `metadata.resourceVersion` of a JSON object.
pub fn revision_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
}

/// Which backend to open, as people write it (`kubernetes` or `embedded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Kubernetes,
    Embedded,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kubernetes" | "k8s" => Ok(BackendKind::Kubernetes),
            "embedded" => Ok(BackendKind::Embedded),
            other => Err(format!(
                "unknown datastore {other:?}: use kubernetes or embedded"
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::Embedded => "embedded",
        })
    }
}

/// Opens a datastore: the embedded file at `path`, or the cluster from
/// KUBECONFIG / the in-cluster service account. twillctl and twill-node
/// both open their store here.
pub async fn connect(kind: BackendKind, path: &std::path::Path) -> Result<Store, StoreError> {
    Ok(match kind {
        BackendKind::Embedded => Store::new(embedded::EmbeddedStore::open(path)?),
        BackendKind::Kubernetes => Store::new(kubernetes::KubeStore::connect().await?),
    })
}
