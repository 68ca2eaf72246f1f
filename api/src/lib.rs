//! twill-api: the shared vocabulary of Twill.
//!
//! * [`resources`]: the CRDs (IPPool, IPAMBlock, BGPConfiguration, BGPPeer,
//!   GlobalNetworkPolicy, NodeStatus) with their validation;
//! * [`validate`]: field errors a person can act on (path, value, what would
//!   be right); [`native`]: the same checks for the native objects Twill reads
//!   (NetworkPolicy), which the embedded store gets no API server for;
//! * [`kinds`]: the registry of every kind the datastore holds, native ones too;
//! * [`selector`]: the label selector language;
//! * [`service`]: Services and EndpointSlices: checks, cluster IP and node port
//!   allocation for the embedded store, which service prefixes a node announces;
//! * [`service_proxy`]: what a node does with a Service (frontends, endpoints, policies);
//! * [`store`]: the datastore trait and its Kubernetes and embedded backends;
//! * [`manifest`]: multi-document YAML in and out; [`crds`]: generated CRDs;
//! * [`defaults`]: the API server's defaulting of native objects, done for every datastore;
//! * [`names`]: names of kernel objects that twill-node and twillctl must agree on (veths);
//! * [`trim`]: what the Kubernetes backend keeps of listed and watched objects;
//! * [`compat`]: what an object from another Twill version holds that this one does not understand.

pub mod compat;
pub mod crds;
pub mod defaults;
pub mod kinds;
pub mod manifest;
pub mod names;
pub mod native;
pub mod resources;
pub mod selector;
pub mod service;
pub mod service_proxy;
pub mod store;
pub mod trim;
pub mod validate;

pub use k8s_openapi;
pub use kinds::{Kind, Object};
pub use selector::Selector;
pub use store::{Listing, ObjectKey, Store, StoreError, WatchEvent};
pub use validate::{FieldError, ValidationError};
