//! Shared helpers for the integration tests (network namespaces, real peers, guards).
