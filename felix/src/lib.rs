//! The node dataplane and twill-node. Built by the pod networking and fabric issues.
