//! The CNI specification's data (<https://www.cni.dev/docs/spec/>), for the
//! versions Twill answers: 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0. Results are
//! built once, version-neutral, and rendered in the caller's cniVersion.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Versions this plugin answers, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version.
pub const LATEST: &str = "1.1.0";

/// Default path of twill-node's CNI socket.
pub const DEFAULT_SOCKET: &str = "/var/run/twill/cni.sock";

/// Error codes from the spec, plus Twill's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// twill-node failed in a way not covered below.
    pub const INTERNAL: u32 = 100;
    /// No enabled IPPool selects this node.
    pub const NO_POOL: u32 = 101;
    /// The pools have no free address for this node.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// The requested address cannot be given.
    pub const ADDRESS_UNAVAILABLE: u32 = 103;
    /// Setting up the pod's interface, addresses or routes failed (and was undone).
    pub const ENDPOINT_SETUP: u32 = 104;
    /// CHECK found the pod's network differs from what was set up.
    pub const CHECK_DRIFT: u32 = 105;
    /// The pod's policy could not be programmed in time.
    pub const POLICY_NOT_READY: u32 = 106;
}

/// A CNI error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error as printed on stdout, in the caller's version.
    pub fn render(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The network namespace path, for interfaces inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR form, e.g. `10.244.0.5/32`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A version-neutral ADD result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

impl CniResult {
    /// Renders the result in `version`'s format: 0.3.x and 0.4.0 carry
    /// `"version": "4"|"6"` on every address; 1.x does not.
    pub fn render(&self, version: &str) -> Value {
        let old = version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or(Value::Null);
                if old {
                    let family = if ip.address.contains(':') { "6" } else { "4" };
                    v["version"] = Value::String(family.into());
                }
                v
            })
            .collect();
        json!({
            "cniVersion": version,
            "interfaces": self.interfaces,
            "ips": ips,
            "routes": self.routes,
            "dns": {},
        })
    }
}

/// Whether `v` is a version this plugin answers.
pub fn supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// Compares dotted versions numerically (`0.4.0` < `1.0.0`).
pub fn at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`).
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("CNI_ARGS item {p:?} is not KEY=VALUE"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "twabc".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: None,
                    mtu: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1500),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.0.5/32".into(),
                    gateway: Some("169.254.1.1".into()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/128".into(),
                    gateway: Some("fe80::ecee:eeff:feee:eeee".into()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".into()),
            }],
        }
    }

    #[test]
    fn results_render_per_version() {
        let old = result().render("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["cniVersion"], "0.3.1");
        let new = result().render("1.0.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/p");
        assert_eq!(new["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn versions_and_args() {
        assert!(
            supported("0.4.0") && supported("1.1.0") && !supported("0.2.0") && !supported("2.0.0")
        );
        assert!(
            at_least("1.1.0", "1.1.0") && at_least("1.0.0", "0.4.0") && !at_least("0.3.1", "0.4.0")
        );
        assert_eq!(
            parse_args("IgnoreUnknown=1;IP=10.0.0.9").unwrap(),
            vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("IP".into(), "10.0.0.9".into())
            ]
        );
        assert!(parse_args("oops").is_err());
        let e = CniError::new(code::POOL_EXHAUSTED, "no address").with_details("pool p");
        assert_eq!(e.render("1.0.0")["code"], 102);
    }
}
