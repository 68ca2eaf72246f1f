//! Fakes of the Kubernetes API server shared by the tests of `twill-api`,
//! `twillctl` and `twill-tests` (a dev-dependency of each; it depends on no
//! Twill crate, so no crate's tests pull in another's harness):
//! * [`kube_mock`]: kube-rs's tower-test mock, for tests that drive a
//!   `kube::Client` in-process. [`kube_mock::Script`] serves a table of
//!   expected requests and their answers, in order, and reports the first
//!   request that differs; [`kube_mock::pair`] and [`kube_mock::respond`] are
//!   the pieces for a fake that keeps state (tests/tests/kube_startup.rs).
//! * [`http_fake`]: a loopback HTTP/1.1 server for programs in another
//!   process (kubectl, twillctl) that need an API server URL.
//!
//! The house rule holds: a real kube-apiserver (twill-tests `kube_local`)
//! wherever it can produce the case; these fakes only where it cannot.

pub mod http_fake;
pub mod kube_mock;
