//! The gate a CNI ADD waits on: it returns once the new endpoint's chains
//! and dispatch entries are in the kernel, with its Pod object's labels and
//! named ports taken into account, or fails naming why (the datastore not
//! ready, nft missing) after the engine's gate timeout.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::oneshot;

use super::engine::{Event, PolicyEngine};
use crate::dataplane::endpoints::{EndpointGate, EndpointRecord};

/// Holds a CNI ADD until the endpoint's policy is in the kernel.
pub struct PolicyGate {
    pub(super) engine: Arc<PolicyEngine>,
}

#[async_trait::async_trait]
impl EndpointGate for PolicyGate {
    async fn ready(&self, ep: &EndpointRecord) -> Result<(), String> {
        // Read the Pod now: the watch may not have delivered it yet, and its
        // labels and named ports decide what the endpoint's rules are.
        let pod = match (&ep.namespace, &ep.pod) {
            (Some(ns), Some(name)) => self
                .engine
                .store
                .get::<Pod>(Some(ns), name)
                .await
                .map_err(|e| format!("reading pod {ns}/{name}: {e}"))?
                .map(Box::new),
            _ => None,
        };
        let (reply, done) = oneshot::channel();
        self.engine
            .tx
            .send(Event::Ensure {
                iface: ep.host_ifname.clone(),
                pod,
                reply,
            })
            .map_err(|_| "the policy engine is not running".to_string())?;
        match tokio::time::timeout(self.engine.gate_timeout, done).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the policy engine stopped".into()),
            Err(_) => Err(match crate::health::watches().not_ready_reason() {
                // The engine cannot compute policy without every kind.
                Some(why) => format!(
                    "not programmed within {:?}: the datastore is not ready: {why}",
                    self.engine.gate_timeout
                ),
                None => format!(
                    "not programmed within {:?} (is nft installed? see the twill-node log)",
                    self.engine.gate_timeout
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use twill_api::Store;

    #[tokio::test]
    async fn add_is_held_until_the_policy_is_programmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(
            twill_api::store::embedded::EmbeddedStore::open(dir.path().join("s.db")).unwrap(),
        );
        // The engine is not running, so nothing is ever programmed: the
        // gate must hold the ADD and then fail it, never wave it through.
        let engine = PolicyEngine::with_gate_timeout("n", store, Duration::from_millis(300));
        let gate = engine.gate();
        let rec = EndpointRecord {
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/none".into(),
            host_ifname: "twc".into(),
            mac: String::new(),
            mtu: 1500,
            addresses: Vec::new(),
            namespace: None,
            pod: None,
            labels: Default::default(),
            created: String::new(),
        };
        let started = Instant::now();
        let err = gate.ready(&rec).await.unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.contains("not programmed"), "{err}");
    }
}
