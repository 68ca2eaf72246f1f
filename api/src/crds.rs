//! The CustomResourceDefinitions generated from the Rust types, and their
//! YAML as committed under `deploy/crds/` (`twillctl crds --out deploy/crds`
//! writes it; a test fails when the committed files drift from the types).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::resources::{
    BGPConfiguration, BGPPeer, GlobalNetworkPolicy, IPAMBlock, IPPool, NodeStatus,
};

/// Every Twill CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        IPAMBlock::crd(),
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        GlobalNetworkPolicy::crd(),
        NodeStatus::crd(),
    ]
}

/// The file name and YAML text for each CRD.
pub fn rendered() -> Result<Vec<(String, String)>, String> {
    all()
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.spec.names.plural);
            let body = crate::manifest::to_yaml(&crd)?;
            Ok((
                file,
                format!("# Generated from the Rust types by `twillctl crds --out deploy/crds`. Do not edit.\n{body}"),
            ))
        })
        .collect()
}
