//! The twill-cni plugin. Built by the pod networking issue. It must never depend on tokio or kube.
