//! Where the node agent's inputs come from: every datastore watch goes
//! through [`watch_kind`] (retried with backoff, reported in readiness,
//! every object validated), [`follow`] turns a watch into "the complete set
//! after each change", and [`Cache`] keeps that set for a loop that reads
//! it when it runs. [`feeds`] wires the watches that feed a dataplane
//! manager directly (blocks → routes, pools → NAT, endpoints → routes).

pub mod feeds;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use twill_api::Store;
use twill_api::kinds::Object;
use twill_api::store::WatchEvent;
use twill_api::store::retry::{Backoff, Change, Outage};

use crate::health;

/// Why an object is invalid, as one line: its field errors.
fn invalid_reason<K: Object>(obj: &K) -> Option<String> {
    obj.validate().err().map(|e| {
        e.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `namespace/name` for namespaced kinds, else `name`.
fn object_key<K: Object>(obj: &K) -> String {
    let m = obj.meta();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref().filter(|_| K::KIND.namespaced()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Watches a kind for as long as `on_event` returns true, through every
/// failure: a failed watch is started again after [`Backoff::watch`]
/// (1 s doubling to 30 s, with jitter), and the consumer keeps what it has
/// meanwhile. One log line when the watch starts failing (or fails for
/// another reason) and one when it recovers, never one per retry. The
/// state shows in readiness ([`health::DATASTORE`], naming the kind and the
/// error), and every object delivered is validated: an invalid one is
/// reported ([`health::Watches`]), never silently used or dropped.
pub(crate) async fn watch_kind<K: Object>(
    store: Store,
    mut on_event: impl FnMut(WatchEvent<K>) -> bool + Send,
) {
    use futures::StreamExt;
    let reg = health::watches().register(K::KIND);
    let mut backoff = Backoff::watch();
    let mut outage = Outage::default();
    loop {
        let mut watch = store.watch::<K>(None);
        let error = loop {
            match watch.next().await {
                None => break "the watch ended".to_string(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(ev)) => {
                    match &ev {
                        WatchEvent::Resync { items, .. } => {
                            backoff.reset();
                            if let Change::Recovered { attempts } = outage.succeeded() {
                                tracing::info!(kind = %K::KIND, attempts, "datastore watch recovered");
                            }
                            // Only invalid objects cost more than a check.
                            let mut invalid = std::collections::BTreeSet::new();
                            for o in items {
                                if let Some(reason) = invalid_reason(o) {
                                    let key = object_key(o);
                                    reg.object(K::KIND, &key, Some(reason));
                                    invalid.insert(key);
                                }
                            }
                            reg.retain(K::KIND, &invalid);
                            reg.synced();
                        }
                        WatchEvent::Applied(o) => {
                            reg.object(K::KIND, &object_key(o), invalid_reason(o));
                        }
                        WatchEvent::Deleted(o) => reg.object(K::KIND, &object_key(o), None),
                    }
                    if !on_event(ev) {
                        return;
                    }
                }
            }
        };
        reg.failing(&error);
        let delay = backoff.next_delay();
        if outage.failed(&error) == Change::Failing {
            tracing::warn!(kind = %K::KIND, %error, "datastore watch failing; retrying with backoff up to 30 s (logged again when it recovers)");
        } else {
            tracing::debug!(kind = %K::KIND, %error, attempts = outage.attempts(), ?delay, "datastore watch still failing");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Follows every object of a kind in the store, calling `changed` with the
/// complete set after each burst of events ([`watch_kind`] retries).
pub(crate) async fn follow<K: Object>(store: Store, mut changed: impl FnMut(Vec<K>) + Send) {
    let mut cache: BTreeMap<String, K> = BTreeMap::new();
    let key = |k: &K| object_key(k);
    watch_kind::<K>(store, move |ev| {
        match ev {
            WatchEvent::Resync { items, .. } => {
                cache = items.into_iter().map(|k| (key(&k), k)).collect();
            }
            WatchEvent::Applied(k) => {
                cache.insert(key(&k), k);
            }
            WatchEvent::Deleted(k) => {
                cache.remove(&key(&k));
            }
        }
        changed(cache.values().cloned().collect());
        true
    })
    .await;
}

/// [`follow`] with each object behind its own `Arc`: an event costs one
/// reference per object, not a copy of every object (a cost that grows
/// with the objects, on every event), and an object that did not change
/// is the same `Arc` from one call to the next.
pub(crate) async fn follow_shared<K: Object>(
    store: Store,
    mut changed: impl FnMut(Vec<Arc<K>>) + Send,
) {
    let mut cache: BTreeMap<String, Arc<K>> = BTreeMap::new();
    let key = |k: &K| object_key(k);
    watch_kind::<K>(store, move |ev| {
        match ev {
            WatchEvent::Resync { items, .. } => {
                cache = items.into_iter().map(|k| (key(&k), Arc::new(k))).collect();
            }
            WatchEvent::Applied(k) => {
                cache.insert(key(&k), Arc::new(k));
            }
            WatchEvent::Deleted(k) => {
                cache.remove(&key(&k));
            }
        }
        changed(cache.values().cloned().collect());
        true
    })
    .await;
}

/// The latest complete set of a kind, kept by a watch ([`follow`]); `None`
/// until the first listing.
pub(crate) struct Cache<K>(Arc<Mutex<Option<Vec<K>>>>);

impl<K: Object> Cache<K> {
    /// Starts following `K`, poking `wake` after every change.
    pub(crate) fn follow(store: &Store, wake: tokio::sync::watch::Sender<()>) -> Cache<K> {
        let cell = Arc::new(Mutex::new(None));
        let c = cell.clone();
        tokio::spawn(follow::<K>(store.clone(), move |items| {
            if let Ok(mut g) = c.lock() {
                *g = Some(items);
            }
            wake.send_replace(());
        }));
        Cache(cell)
    }

    pub(crate) fn get(&self) -> Option<Vec<K>> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}
