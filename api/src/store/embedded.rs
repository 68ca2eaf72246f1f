//! The embedded datastore: one SQLite file (WAL mode) that several processes
//! on one machine share safely — the lab's node agents, twillctl and tests.
//!
//! Why SQLite: it gives multi-process transactions with crash safety (a
//! process killed mid-write leaves the file consistent) without running a
//! server. Every write is a `BEGIN IMMEDIATE` transaction that takes the
//! file's write lock, bumps the one global revision counter, and records an
//! event; so revisions are strictly increasing, commit in order, and the
//! event log has no gaps. A watch reads the event log of its kind after its
//! revision, then sleeps until its kind changes: writes in this process
//! wake it at once, writes by other processes through the handle's one
//! notifier ([`notify`]: inotify on the WAL file, a slow safety check, a
//! timer where inotify is unavailable) — no watch polls. Old events are
//! compacted; a watch that falls behind the compaction point gets a
//! `Resync`. Design and measurements: docs/store.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::{Backend, Listing, ObjectKey, StoreError, WatchEvent, revision_of};
use crate::kinds::Kind;
use crate::service::{ServiceRanges, assign_cluster_fields};
use k8s_openapi::api::core::v1::Service;

mod notify;
pub use notify::NotifyOptions;

/// Default location of the embedded store (override with `--path` or `TWILL_DATASTORE_PATH`).
pub const DEFAULT_PATH: &str = "/var/lib/twill/twill.db";

/// Events kept behind the newest revision before compaction.
const RETAIN_EVENTS: u64 = 50_000;

/// Events one watch read returns at most.
const BATCH: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    rev INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, ns, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY, kind TEXT NOT NULL, type TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_kind ON events (kind, rev);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The setting holding the service cluster IP range(s) ([`EmbeddedStore::service_ranges`]).
const SETTING_SERVICE_RANGES: &str = "serviceClusterIPRange";

/// The embedded backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Per-kind change signals for watches, and the query count.
    shared: Arc<notify::Shared>,
    /// Started by the first watch; stops when the handle is dropped.
    notifier: Mutex<Option<notify::Notifier>>,
    opts: NotifyOptions,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: "embedded",
        message: e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, NotifyOptions::default())
    }

    /// [`EmbeddedStore::open`] with chosen notification timing (tests).
    pub fn open_with(path: impl AsRef<Path>, opts: NotifyOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(&path)
            .map_err(|e| db_err(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
        // WAL: readers never block the writer. synchronous=NORMAL keeps every
        // commit across a process crash (what matters here); only a power
        // loss could lose the last transactions.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                shared: Arc::new(notify::Shared::new()),
                notifier: Mutex::new(None),
                opts,
            }),
        })
    }

    /// Store queries made through this handle so far: reads, writes, watch
    /// reads and the notifier's revision checks (what an idle agent costs).
    pub fn queries(&self) -> u64 {
        self.inner.shared.queries.load(Ordering::Relaxed)
    }

    /// Starts the notifier if no watch has yet.
    fn ensure_notifier(&self) -> Result<(), StoreError> {
        let mut n = self
            .inner
            .notifier
            .lock()
            .map_err(|_| db_err("notifier lock poisoned by a panic"))?;
        if n.is_none() {
            *n = Some(
                notify::start(&self.inner.path, self.inner.shared.clone(), self.inner.opts)
                    .map_err(db_err)?,
            );
        }
        Ok(())
    }

    /// The file behind the store.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The newest revision in the file.
    pub fn current_revision(&self) -> Result<u64, StoreError> {
        self.with_conn(|c| read_meta(c, "revision"))
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .inner
            .conn
            .lock()
            .map_err(|_| db_err("connection lock poisoned by a panic"))?;
        self.inner.shared.queries.fetch_add(1, Ordering::Relaxed);
        f(&mut guard)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_conn(f))
            .await
            .map_err(|e| db_err(format!("datastore task failed: {e}")))?
    }

    /// Runs one write transaction that produces one event; notifies local watches.
    async fn write(
        &self,
        kind: Kind,
        f: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> Result<(Value, &'static str), StoreError>
        + Send
        + 'static,
    ) -> Result<Value, StoreError> {
        let (value, rev) = self
            .blocking(move |c| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err)?;
                let rev = read_meta(&tx, "revision")? + 1;
                let (value, event_type) = f(&tx, rev)?;
                let body = value.to_string();
                tx.execute(
                    "INSERT INTO events (rev, kind, type, body) VALUES (?1, ?2, ?3, ?4)",
                    params![rev as i64, kind.name(), event_type, body],
                )
                .map_err(db_err)?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'revision'",
                    params![rev as i64],
                )
                .map_err(db_err)?;
                if rev % 1000 == 0 && rev > RETAIN_EVENTS {
                    let cut = rev - RETAIN_EVENTS;
                    tx.execute("DELETE FROM events WHERE rev <= ?1", params![cut as i64])
                        .map_err(db_err)?;
                    tx.execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'compacted'",
                        params![cut as i64],
                    )
                    .map_err(db_err)?;
                }
                tx.commit().map_err(db_err)?;
                Ok((value, rev))
            })
            .await?;
        self.inner.shared.bump(kind, rev);
        Ok(value)
    }

    /// The service cluster IP range(s) this store allocates cluster IPs
    /// from (as a cluster's `--service-cluster-ip-range`): the setting, or
    /// [`crate::service::DEFAULT_SERVICE_RANGE`] when never set.
    pub fn service_ranges(&self) -> Result<ServiceRanges, StoreError> {
        self.with_conn(|c| read_service_ranges(c))
    }

    /// Sets the service cluster IP range(s) for Services written from now
    /// on (stored addresses stay as they are, as on a cluster).
    pub fn set_service_ranges(&self, ranges: &ServiceRanges) -> Result<(), StoreError> {
        let v = ranges.to_string();
        self.with_conn(|c| {
            c.execute(
                "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
                params![SETTING_SERVICE_RANGES, v],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    /// Forces compaction of every event up to `rev` (tests use it to make a
    /// watch's revision too old).
    pub fn compact(&self, rev: u64) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.execute("DELETE FROM events WHERE rev <= ?1", params![rev as i64])
                .map_err(db_err)?;
            c.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'compacted'",
                params![rev as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }
}

fn read_meta(c: &Connection, key: &str) -> Result<u64, StoreError> {
    c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
    .map_err(db_err)
}

fn read_service_ranges(c: &Connection) -> Result<ServiceRanges, StoreError> {
    let v: Option<String> = c
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            [SETTING_SERVICE_RANGES],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    match v {
        None => Ok(ServiceRanges::default()),
        Some(v) => v.parse().map_err(|e| {
            db_err(format!(
                "the stored service range {v:?} is unusable ({e}); set it again with twillctl datastore service-range"
            ))
        }),
    }
}

/// The API server's part of writing a Service (cluster IPs, node ports),
/// done inside the write transaction so two writers can never take the
/// same address or port.
fn assign_service(
    tx: &rusqlite::Transaction<'_>,
    key: &ObjectKey,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), StoreError> {
    let malformed = |e: serde_json::Error| StoreError::Malformed {
        kind: Kind::Service,
        reason: e.to_string(),
    };
    let mut svc: Service = serde_json::from_value(obj.clone()).map_err(malformed)?;
    let old: Option<Service> = old
        .map(|o| serde_json::from_value(o.clone()))
        .transpose()
        .map_err(malformed)?;
    let ranges = read_service_ranges(tx)?;
    let mut others = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached("SELECT ns, name, body FROM objects WHERE kind = ?1")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([Kind::Service.name()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(db_err)?;
        for row in rows {
            let (ns, name, body) = row.map_err(db_err)?;
            if Some(ns.as_str()) == key.namespace.as_deref() && name == key.name {
                continue;
            }
            if let Ok(o) = serde_json::from_str::<Service>(&body) {
                others.push(o);
            }
        }
    }
    assign_cluster_fields(&mut svc, old.as_ref(), &others, &ranges)?;
    let status = obj.get("status").cloned();
    *obj = serde_json::to_value(&svc).map_err(malformed)?;
    if let (Some(s), Some(m)) = (status, obj.as_object_mut()) {
        m.insert("status".into(), s);
    }
    Ok(())
}

fn ns_of(key: &ObjectKey) -> &str {
    key.namespace.as_deref().unwrap_or("")
}

fn read_object(
    c: &Connection,
    kind: Kind,
    key: &ObjectKey,
) -> Result<Option<(u64, Value)>, StoreError> {
    let row: Option<(i64, String)> = c
        .query_row(
            "SELECT rev, body FROM objects WHERE kind = ?1 AND ns = ?2 AND name = ?3",
            params![kind.name(), ns_of(key), key.name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db_err)?;
    match row {
        Some((rev, body)) => Ok(Some((
            rev as u64,
            serde_json::from_str(&body).map_err(db_err)?,
        ))),
        None => Ok(None),
    }
}

fn write_object(
    tx: &rusqlite::Transaction<'_>,
    kind: Kind,
    key: &ObjectKey,
    rev: u64,
    obj: &Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO objects (kind, ns, name, rev, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            kind.name(),
            ns_of(key),
            key.name,
            rev as i64,
            obj.to_string()
        ],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Fills in the server-side metadata a Kubernetes API server would.
fn stamp(obj: &mut Value, kind: Kind, key: &ObjectKey, rev: u64, created: Option<&Value>) {
    let ar = kind.api_resource();
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    map.insert("apiVersion".into(), Value::String(ar.api_version));
    map.insert("kind".into(), Value::String(ar.kind));
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    if let Some(ns) = &key.namespace {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    match created {
        Some(prev) => {
            for f in ["uid", "creationTimestamp"] {
                if let Some(v) = prev.pointer(&format!("/metadata/{f}")) {
                    meta.insert(f.into(), v.clone());
                }
            }
        }
        None => {
            meta.insert("uid".into(), Value::String(new_uid(rev)));
            meta.insert(
                "creationTimestamp".into(),
                Value::String(
                    jiff::Timestamp::now()
                        .round(jiff::Unit::Second)
                        .unwrap_or_else(|_| jiff::Timestamp::now())
                        .to_string(),
                ),
            );
        }
    }
}

/// A unique ID. The revision alone is unique within one store file; mixing
/// in time and process makes IDs from different files differ too.
fn new_uid(rev: u64) -> String {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finalizer: spreads every input bit over the output.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
    let hi = mix(nanos ^ (u64::from(std::process::id()) << 32));
    let lo = mix(rev ^ hi.rotate_left(17));
    let h = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn expected_revision(kind: Kind, key: &ObjectKey, obj: &Value) -> Result<u64, StoreError> {
    let rev = revision_of(obj).unwrap_or_default();
    rev.parse().map_err(|_| StoreError::Malformed {
        kind,
        reason: format!(
            "{key}: an update needs metadata.resourceVersion from a get (compare-and-swap); got {rev:?}"
        ),
    })
}

#[async_trait::async_trait]
impl Backend for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let key = key.clone();
        self.blocking(move |c| Ok(read_object(c, kind, &key)?.map(|(_, v)| v)))
            .await
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<Listing<Value>, StoreError> {
        let ns = namespace.map(str::to_string);
        self.blocking(move |c| list_at(c, kind, ns.as_deref()))
            .await
    }

    async fn create(&self, kind: Kind, mut obj: Value) -> Result<Value, StoreError> {
        let key = ObjectKey::of(kind, &obj)?;
        self.write(kind, move |tx, rev| {
            if read_object(tx, kind, &key)?.is_some() {
                return Err(StoreError::AlreadyExists { kind, key });
            }
            if kind == Kind::Service {
                assign_service(tx, &key, &mut obj, None)?;
            }
            stamp(&mut obj, kind, &key, rev, None);
            write_object(tx, kind, &key, rev, &obj)?;
            Ok((obj, "ADDED"))
        })
        .await
    }

    async fn update(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.replace(kind, obj, false).await
    }

    async fn update_status(&self, kind: Kind, obj: Value) -> Result<Value, StoreError> {
        self.replace(kind, obj, true).await
    }

    async fn delete(
        &self,
        kind: Kind,
        key: &ObjectKey,
        revision: Option<&str>,
    ) -> Result<(), StoreError> {
        let key = key.clone();
        let expected: Option<u64> = match revision {
            Some(r) => Some(r.parse().map_err(|_| StoreError::Malformed {
                kind,
                reason: format!("{key}: revision {r:?} is not an embedded-store revision"),
            })?),
            None => None,
        };
        self.write(kind, move |tx, rev| {
            let Some((cur, mut old)) = read_object(tx, kind, &key)? else {
                return Err(StoreError::NotFound { kind, key });
            };
            if let Some(exp) = expected
                && exp != cur
            {
                return Err(StoreError::Conflict {
                    kind,
                    key,
                    expected: exp.to_string(),
                    current: cur.to_string(),
                });
            }
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND ns = ?2 AND name = ?3",
                params![kind.name(), ns_of(&key), key.name],
            )
            .map_err(db_err)?;
            if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("resourceVersion".into(), Value::String(rev.to_string()));
            }
            Ok((old, "DELETED"))
        })
        .await
        .map(|_| ())
    }

    fn watch(
        &self,
        kind: Kind,
        from: Option<String>,
    ) -> BoxStream<'static, Result<WatchEvent<Value>, StoreError>> {
        let this = self.clone();
        let start = from.and_then(|r| r.parse::<u64>().ok());
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            // The notifier first: it reads the revision before this watch
            // does, so no change by another process falls in between.
            let started = {
                let this = this.clone();
                tokio::task::spawn_blocking(move || this.ensure_notifier()).await
            };
            let signal = match started {
                Ok(Ok(())) => this.inner.shared.subscribe(kind),
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(db_err(format!("datastore task failed: {e}"))))
                        .await;
                    return;
                }
            };
            let Some(mut signal) = signal else {
                let _ = tx
                    .send(Err(db_err(format!("no change signal for {kind}"))))
                    .await;
                return;
            };
            let mut last = start;
            loop {
                // Marked seen before reading, so a change during the read
                // wakes the next wait.
                signal.borrow_and_update();
                let batch = {
                    let this = this.clone();
                    this.blocking(move |c| poll_events(c, kind, last)).await
                };
                let (events, new_last) = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let full = events.len() >= BATCH;
                for ev in events {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                last = Some(new_last);
                if full {
                    continue;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    changed = signal.changed() => if changed.is_err() { return },
                }
            }
        });
        tokio_stream_from(rx)
    }
}

impl EmbeddedStore {
    async fn replace(
        &self,
        kind: Kind,
        mut obj: Value,
        status_only: bool,
    ) -> Result<Value, StoreError> {
        let key = ObjectKey::of(kind, &obj)?;
        let expected = expected_revision(kind, &key, &obj)?;
        self.write(kind, move |tx, rev| {
            let Some((cur, old)) = read_object(tx, kind, &key)? else {
                return Err(StoreError::NotFound { kind, key });
            };
            if cur != expected {
                return Err(StoreError::Conflict {
                    kind,
                    key,
                    expected: expected.to_string(),
                    current: cur.to_string(),
                });
            }
            if status_only {
                // The status subresource changes .status and nothing else.
                let status = obj.get("status").cloned();
                obj = old.clone();
                if let Some(map) = obj.as_object_mut() {
                    match status {
                        Some(s) => map.insert("status".into(), s),
                        None => map.remove("status"),
                    };
                }
            } else {
                if let Some(s) = old.get("status").cloned()
                    && let Some(map) = obj.as_object_mut()
                {
                    // A plain update never changes status (as with a status subresource).
                    map.insert("status".into(), s);
                }
                if kind == Kind::Service {
                    assign_service(tx, &key, &mut obj, Some(&old))?;
                }
            }
            stamp(&mut obj, kind, &key, rev, Some(&old));
            write_object(tx, kind, &key, rev, &obj)?;
            Ok((obj, "MODIFIED"))
        })
        .await
    }
}

fn list_at(c: &mut Connection, kind: Kind, ns: Option<&str>) -> Result<Listing<Value>, StoreError> {
    // One read transaction: the list and its revision are one snapshot.
    let tx = c.transaction().map_err(db_err)?;
    let revision = read_meta(&tx, "revision")?;
    let mut items = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached("SELECT ns, body FROM objects WHERE kind = ?1 ORDER BY ns, name")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([kind.name()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?;
        for row in rows {
            let (row_ns, body) = row.map_err(db_err)?;
            if ns.is_some_and(|n| n != row_ns) {
                continue;
            }
            items.push(serde_json::from_str(&body).map_err(db_err)?);
        }
    }
    tx.commit().map_err(db_err)?;
    Ok(Listing {
        items,
        revision: revision.to_string(),
    })
}

/// Events of `kind` after `last`; a `Resync` first when `last` is unknown
/// or older than the compaction point.
fn poll_events(
    c: &mut Connection,
    kind: Kind,
    last: Option<u64>,
) -> Result<(Vec<WatchEvent<Value>>, u64), StoreError> {
    let compacted = read_meta(c, "compacted")?;
    let last = match last {
        Some(l) if l >= compacted => l,
        _ => {
            let listing = list_at(c, kind, None)?;
            let rev = listing.revision.parse().unwrap_or(0);
            return Ok((
                vec![WatchEvent::Resync {
                    items: listing.items,
                    revision: listing.revision,
                }],
                rev,
            ));
        }
    };
    let mut stmt = c
        .prepare_cached(
            "SELECT rev, type, body FROM events WHERE kind = ?1 AND rev > ?2 ORDER BY rev LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![kind.name(), last as i64, BATCH as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    let mut newest = last;
    for row in rows {
        let (rev, ty, body) = row.map_err(db_err)?;
        let v: Value = serde_json::from_str(&body).map_err(db_err)?;
        newest = rev as u64;
        out.push(if ty == "DELETED" {
            WatchEvent::Deleted(v)
        } else {
            WatchEvent::Applied(v)
        });
    }
    Ok((out, newest))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{IPPool, IPPoolSpec};
    use crate::store::Store;
    use futures::StreamExt;

    fn pool(name: &str, cidr: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                cidr: cidr.into(),
                ..Default::default()
            },
        )
    }

    fn open() -> (tempfile::TempDir, Store, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let emb = EmbeddedStore::open(dir.path().join("t.db")).unwrap();
        (dir, Store::new(emb.clone()), emb)
    }

    #[tokio::test]
    async fn create_get_update_delete_with_cas() {
        let (_d, store, _) = open();
        let created = store.create(&pool("a", "10.0.0.0/16")).await.unwrap();
        let rev1 = created.metadata.resource_version.clone().unwrap();
        assert!(created.metadata.uid.is_some());
        assert!(
            store
                .create(&pool("a", "10.9.0.0/16"))
                .await
                .unwrap_err()
                .is_already_exists()
        );

        let mut changed = created.clone();
        changed.spec.nat_outgoing = true;
        let updated = store.update(&changed).await.unwrap();
        assert_ne!(
            updated.metadata.resource_version.as_deref(),
            Some(rev1.as_str())
        );
        assert_eq!(updated.metadata.uid, created.metadata.uid);

        // A second writer still holding the first revision loses.
        let mut stale = created.clone();
        stale.spec.disabled = true;
        let err = store.update(&stale).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
        let got: IPPool = store.get(None, "a").await.unwrap().unwrap();
        assert!(got.spec.nat_outgoing && !got.spec.disabled);

        assert!(
            store
                .delete::<IPPool>(None, "a", Some(&rev1))
                .await
                .unwrap_err()
                .is_conflict()
        );
        store.delete::<IPPool>(None, "a", None).await.unwrap();
        assert!(store.get::<IPPool>(None, "a").await.unwrap().is_none());
        assert!(
            store
                .delete::<IPPool>(None, "a", None)
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    #[tokio::test]
    async fn invalid_and_overlapping_pools_change_nothing() {
        let (_d, store, emb) = open();
        store.create(&pool("a", "10.0.0.0/16")).await.unwrap();
        let before = emb.current_revision().unwrap();
        let err = store.create(&pool("b", "10.0.128.0/17")).await.unwrap_err();
        assert!(err.to_string().contains("overlaps IPPool \"a\""), "{err}");
        let err = store.create(&pool("c", "10.1.0.1/16")).await.unwrap_err();
        assert!(err.to_string().contains("spec.cidr"), "{err}");
        assert_eq!(emb.current_revision().unwrap(), before);
        assert_eq!(store.list::<IPPool>().await.unwrap().items.len(), 1);
    }

    #[tokio::test]
    async fn watch_delivers_every_change_in_order_and_resyncs_when_too_old() {
        let (_d, store, emb) = open();
        store.create(&pool("a", "10.0.0.0/16")).await.unwrap();
        let mut w = store.watch::<IPPool>(None);
        match w.next().await.unwrap().unwrap() {
            WatchEvent::Resync { items, .. } => assert_eq!(items.len(), 1),
            other => panic!("expected resync, got {other:?}"),
        }
        for i in 1..=20 {
            store
                .create(&pool(&format!("p{i}"), &format!("10.{i}.0.0/16")))
                .await
                .unwrap();
        }
        store.delete::<IPPool>(None, "p3", None).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 21 {
            match w.next().await.unwrap().unwrap() {
                WatchEvent::Applied(p) => seen.push(format!("+{}", p.metadata.name.unwrap())),
                WatchEvent::Deleted(p) => seen.push(format!("-{}", p.metadata.name.unwrap())),
                other => panic!("unexpected {other:?}"),
            }
        }
        let want: Vec<String> = (1..=20)
            .map(|i| format!("+p{i}"))
            .chain(["-p3".to_string()])
            .collect();
        assert_eq!(seen, want);

        // Resume from an old revision that has been compacted away: resync.
        let rev = emb.current_revision().unwrap();
        emb.compact(rev).unwrap();
        let mut w2 = store.watch::<IPPool>(Some("2".into()));
        match w2.next().await.unwrap().unwrap() {
            WatchEvent::Resync { items, revision } => {
                assert_eq!(items.len(), 20);
                assert_eq!(revision, rev.to_string());
            }
            other => panic!("expected resync, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn status_writes_touch_only_status() {
        use crate::resources::{NodeStatus, NodeStatusReport, NodeStatusSpec};
        let (_d, store, _) = open();
        let mut ns = NodeStatus::new(
            "node-1",
            NodeStatusSpec {
                report_interval: Some(10),
            },
        );
        ns = store.create(&ns).await.unwrap();
        ns.spec.report_interval = Some(99);
        ns.status = Some(NodeStatusReport {
            endpoints: 7,
            ..Default::default()
        });
        let after = store.update_status(&ns).await.unwrap();
        assert_eq!(after.status.as_ref().unwrap().endpoints, 7);
        assert_eq!(after.spec.report_interval, Some(10));
    }

    #[tokio::test]
    async fn native_objects_are_defaulted_as_the_api_server_would() {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let (_d, store, emb) = open();
        let spec = serde_json::json!({"podSelector": {}, "egress": [],
            "ingress": [{"ports": [{"port": 80}]}]});
        let np = |name: &str| {
            serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "d"}, "spec": spec.clone()})
        };
        // Written through the store (twillctl apply): stored defaulted.
        let stored = store
            .create_value(Kind::NetworkPolicy, np("through-store"))
            .await
            .unwrap();
        assert_eq!(
            stored["spec"]["policyTypes"],
            serde_json::json!(["Ingress"])
        );
        assert_eq!(stored["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        // Written straight to the backend (an older Twill, another writer):
        // defaulted when read, by get, list and watch alike.
        emb.create(Kind::NetworkPolicy, np("raw")).await.unwrap();
        let raw = emb
            .get(Kind::NetworkPolicy, &ObjectKey::new(Some("d"), "raw"))
            .await
            .unwrap()
            .unwrap();
        assert!(raw["spec"].get("policyTypes").is_none(), "{raw}");
        let types = |n: &NetworkPolicy| n.spec.as_ref().unwrap().policy_types.clone();
        let got: NetworkPolicy = store.get(Some("d"), "raw").await.unwrap().unwrap();
        assert_eq!(types(&got), Some(vec!["Ingress".to_string()]));
        for n in store.list::<NetworkPolicy>().await.unwrap().items {
            assert_eq!(types(&n), Some(vec!["Ingress".to_string()]));
        }
        match store.watch::<NetworkPolicy>(None).next().await {
            Some(Ok(WatchEvent::Resync { items, .. })) => {
                assert_eq!(items.len(), 2);
                assert!(
                    items
                        .iter()
                        .all(|n| types(n) == Some(vec!["Ingress".to_string()]))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
