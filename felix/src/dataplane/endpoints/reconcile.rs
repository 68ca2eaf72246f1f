//! The endpoints' reconcile, once at start ([`Endpoints::reconcile`]): a
//! [`Manager`] pass over the records in the state directory. Observe each
//! recorded endpoint's drift (kernel and IPAM), the host veths and the
//! node's allocations; plan ([`repair_plan`], pure); apply: healthy ones
//! are left untouched, broken ones rebuilt with the same addresses, those
//! whose pod is gone (or whose address IPAM gave away) removed, and veths
//! and allocations no record accounts for (a crash mid-ADD) removed.

use std::path::Path;

use futures::TryStreamExt;
use twill_cni::spec::{CniError, code};

use super::{Endpoints, link};
use crate::calc::endpoint::{
    EndpointRecord, IPAM_LOST, Observed, ReconcileReport, RepairPlan, Seen, ipam_error, repair_plan,
};
use crate::dataplane::netns::in_netns;
use crate::dataplane::{Manager, reconcile};
use crate::names;

/// The start-up repair of one node's endpoints.
pub struct Repair<'a>(pub &'a Endpoints);

impl Manager for Repair<'_> {
    /// The records: what was handed to the runtime.
    type Inputs = [EndpointRecord];
    type Desired = Vec<EndpointRecord>;
    type Observed = Observed;
    type Diff = RepairPlan;
    type Report = ReconcileReport;
    type Error = CniError;

    async fn observe(&mut self, records: &[EndpointRecord]) -> Result<Observed, CniError> {
        let eps = self.0;
        // The datastore must answer before anything is judged: an IPAM
        // read that fails (the API server is down while twill-node starts)
        // says nothing about the pods, and must never take one down.
        let allocations = eps.ipam.node_allocations().await.map_err(ipam_error)?;
        let mut seen = Vec::with_capacity(records.len());
        for rec in records {
            seen.push(if Path::new(&rec.netns).exists() {
                Seen {
                    netns_exists: true,
                    drift: eps.drift(rec).await,
                }
            } else {
                Seen::default()
            });
        }
        let mut veths = Vec::new();
        let mut links = eps.host.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| CniError::new(code::INTERNAL, format!("listing links: {e}")))?
        {
            for a in &l.attributes {
                if let netlink_packet_route::link::LinkAttribute::IfName(n) = a
                    && names::is_host_veth(n)
                {
                    veths.push(n.clone());
                }
            }
        }
        Ok(Observed {
            seen,
            veths,
            allocations,
        })
    }

    /// The records are the desired state as they are.
    fn desired(&mut self, records: &[EndpointRecord]) -> Vec<EndpointRecord> {
        records.to_vec()
    }

    fn diff(&mut self, records: Vec<EndpointRecord>, observed: Observed) -> RepairPlan {
        repair_plan(&records, &observed)
    }

    async fn apply(&mut self, plan: RepairPlan) -> Result<ReconcileReport, CniError> {
        let eps = self.0;
        let mut report = ReconcileReport {
            healthy: plan.healthy,
            ..Default::default()
        };
        for (rec, drift) in &plan.remove {
            if !drift.is_empty() {
                tracing::warn!(endpoint = %rec.key(), drift = ?drift, "repairing endpoint");
            }
            eps.undo(rec).await;
            report.removed.push(rec.key().to_string());
        }
        for (rec, drift) in &plan.rebuild {
            tracing::warn!(endpoint = %rec.key(), drift = ?drift, "repairing endpoint");
            match eps.plumb(rec).await {
                Ok(mac) => {
                    let mut fixed = rec.clone();
                    fixed.mac = mac;
                    if let Err(e) = eps.state.save(&fixed) {
                        tracing::warn!(error = %e, "cannot save repaired record");
                    }
                    report.repaired.push(rec.key().to_string());
                }
                Err(e) => {
                    tracing::warn!(endpoint = %rec.key(), error = %e, "repair failed; removing the endpoint");
                    eps.undo(rec).await;
                    report.removed.push(rec.key().to_string());
                }
            }
        }
        for n in plan.leaked_links {
            if link::delete_link(&eps.host, &n).await.is_ok() {
                report.leaked_links.push(n);
            }
        }
        for (addr, handle, sequence) in plan.leaked_addresses {
            match eps
                .ipam
                .release_address(addr, Some((&handle, sequence)))
                .await
            {
                Ok(Some(_)) => report.released.push(format!("{addr} ({handle})")),
                Ok(None) => {}
                Err(e) => tracing::warn!(%addr, error = %e, "cannot release leaked address"),
            }
        }
        Ok(report)
    }
}

impl Endpoints {
    /// Everything about an endpoint that differs from its record. Only a
    /// line starting with [`IPAM_LOST`] means the address may be someone
    /// else's now; a failed IPAM read is drift of another kind.
    pub async fn drift(&self, rec: &EndpointRecord) -> Vec<String> {
        let mut d = Vec::new();
        let host_if = &rec.host_ifname;
        match link::link_state(&self.host, host_if).await {
            Ok(None) => d.push(format!("host veth {host_if} is missing")),
            Err(e) => d.push(e.to_string()),
            Ok(Some(st)) => {
                if !st.up {
                    d.push(format!("host veth {host_if} is down"));
                }
                if st.mac != link::HOST_MAC {
                    d.push(format!(
                        "host veth {host_if} has MAC {} instead of ee:ee:ee:ee:ee:ee",
                        link::format_mac(&st.mac)
                    ));
                }
                match crate::dataplane::sysctl::read_if("ipv4", host_if, "proxy_arp") {
                    Ok(v) if v == "1" => {}
                    Ok(v) => d.push(format!("proxy_arp on {host_if} is {v}, not 1")),
                    Err(e) => d.push(format!("proxy_arp on {host_if}: {e}")),
                }
                match link::twill_routes_via(&self.host, st.index).await {
                    Ok(routes) => {
                        for a in &rec.addresses {
                            if !routes.contains(&a.addr) {
                                d.push(format!("host route {} dev {host_if} is missing", a.addr));
                            }
                        }
                    }
                    Err(e) => d.push(e.to_string()),
                }
            }
        }
        if !Path::new(&rec.netns).exists() {
            d.push(format!("pod network namespace {} is gone", rec.netns));
        } else {
            let pod_if = rec.ifname.clone();
            match in_netns(&rec.netns, move |h| async move {
                link::pod_view(&h, &pod_if).await
            })
            .await
            {
                Err(e) => d.push(e.to_string()),
                Ok(Err(e)) => d.push(e.to_string()),
                Ok(Ok(None)) => d.push(format!("{} is missing inside the pod", rec.ifname)),
                Ok(Ok(Some(v))) => {
                    if !v.up {
                        d.push(format!("{} is down inside the pod", rec.ifname));
                    }
                    for a in &rec.addresses {
                        if !v.addrs.contains(&a.addr) {
                            d.push(format!(
                                "address {} is missing from {} inside the pod",
                                a.addr, rec.ifname
                            ));
                        }
                    }
                    if rec.addresses.iter().any(|a| a.addr.is_ipv4()) && !v.default_v4 {
                        d.push(format!(
                            "the pod's default route via {} is missing",
                            link::GATEWAY_V4
                        ));
                    }
                    if rec.addresses.iter().any(|a| a.addr.is_ipv6()) && !v.default_v6 {
                        d.push(format!(
                            "the pod's default route via {} is missing",
                            link::GATEWAY_V6
                        ));
                    }
                }
            }
        }
        match self.ipam.node_allocations().await {
            Ok(allocs) => {
                for a in &rec.addresses {
                    let held = allocs.iter().any(|(ip, _, al)| {
                        *ip == a.ip() && al.handle == rec.container_id && al.sequence == a.sequence
                    });
                    if !held {
                        d.push(format!(
                            "{IPAM_LOST} {} as held by {}",
                            a.ip(),
                            rec.container_id
                        ));
                    }
                }
            }
            Err(e) => d.push(format!("cannot read IPAM: {e}")),
        }
        d
    }

    /// Makes the kernel and IPAM agree with the records, once, at start
    /// (see the module doc), then publishes the endpoint set.
    pub async fn reconcile(&self) -> Result<ReconcileReport, CniError> {
        if let Ok(n) = self.state.clean_incomplete()
            && n > 0
        {
            tracing::info!(files = n, "removed incomplete endpoint records");
        }
        let (recs, bad) = self
            .state
            .all()
            .map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?;
        for b in bad {
            tracing::warn!(record = %b, "unreadable endpoint record ignored");
        }
        let report = reconcile(&mut Repair(self), &recs).await?;
        match self.state.all() {
            Ok((recs, _)) => {
                self.set.send_replace(std::sync::Arc::new(
                    recs.into_iter().map(|r| (r.key(), r)).collect(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "cannot read endpoint records"),
        }
        tracing::info!(?report, "endpoint reconcile done");
        Ok(report)
    }
}
