//! The service proxy benchmark keeps working: its short mode (1 and 20
//! Services, 2 repetitions) runs every contender in real namespaces with
//! the real nft and iptables, and fails unless a cluster IP leads nowhere
//! without rules, every Service connection lands on one of that Service's
//! endpoints under Twill's table and under the kube-proxy-style chains
//! (iptables on the nf_tables and on the legacy backend), traffic for no
//! Service keeps its address, and after one endpoint change the moved
//! endpoint gets connections and the old one none (the binary checks each
//! connection's landing address, which the server sends back, and that
//! the legacy peer's unload leaves no rule behind). Root; fails (does not
//! skip) without nft, iptables or iptables-legacy.

use serde_json::Value;
use twill_tests::{require_binary, require_root};

#[test]
fn short_run_measures_every_contender_and_lands_where_the_services_say() {
    require_root();
    require_binary("nft", "nftables");
    require_binary("iptables-restore", "iptables");
    require_binary("iptables-legacy-restore", "iptables");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("service_proxy.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_service_proxy"))
        .args(["--short", "--json"])
        .arg(&json)
        .env_remove("TWILL_BENCH_SIZES")
        .env_remove("TWILL_BENCH_REPS")
        .env_remove("TWILL_BENCH_IPT_BELOW")
        .env_remove("TWILL_BENCH_IPT_CHANGE_BELOW")
        .output()
        .expect("run service_proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "service_proxy --short failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Twill ÷ iptables"), "{stdout}");
    // One ratio row per size and peer, each naming its peer.
    for n in [1, 20] {
        for peer in ["nft backend", "legacy backend"] {
            assert!(
                stdout.contains(&format!("| {n} | kube-proxy iptables, {peer} | ")),
                "no ratio row against the {peer} at {n}: {stdout}"
            );
        }
    }
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse json");
    assert_eq!(doc["reps"], 2);
    let rows = doc["rows"].as_array().expect("rows");
    let row = |dp: &str, n: u64| {
        rows.iter()
            .find(|r| r["dataplane"] == dp && r["services"] == n)
            .unwrap_or_else(|| panic!("no row for {dp} at {n}: {doc}"))
    };
    let positive = |r: &Value, k: &str| {
        let v = r[k].as_array().unwrap_or_else(|| panic!("{k}: {r}"));
        assert_eq!(v.len(), 2, "{k}: one sample per repetition: {r}");
        assert!(
            v.iter().all(|x| x.as_f64().is_some_and(|x| x > 0.0)),
            "{k}: {r}"
        );
    };
    positive(row("none", 0), "conns_per_s_no_service");
    for dp in ["twill", "iptables", "iptables-legacy"] {
        for n in [1, 20] {
            let r = row(dp, n);
            for k in [
                "conns_per_s_service",
                "conns_per_s_no_service",
                "connect_ms_p50_last_service",
                "connect_ms_p50_first_service",
            ] {
                positive(r, k);
            }
            for k in ["load", "change"] {
                let v = r[k].as_array().expect("applies");
                assert_eq!(v.len(), 2, "{dp} {n} {k}: {r}");
                assert!(
                    v.iter().all(|a| a["lines"].as_u64().unwrap_or(0) > 0
                        && a["total_ms"].as_f64().unwrap_or(0.0) > 0.0),
                    "{dp} {n} {k}: {r}"
                );
            }
        }
    }
    // Twill's change is incremental: a few lines whatever the size;
    // kube-proxy 1.20 writes everything again, so its change grows.
    let lines = |dp: &str, n: u64| row(dp, n)["change"][0]["lines"].as_u64().unwrap_or(0);
    assert_eq!(lines("twill", 1), lines("twill", 20), "{doc}");
    for dp in ["iptables", "iptables-legacy"] {
        assert!(lines(dp, 20) > lines(dp, 1) + 100, "{dp}: {doc}");
    }
}
