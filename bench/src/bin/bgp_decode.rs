//! BGP decode speed: `twill_bgpd::wire::decode` alone, no sockets, no RIB.
//!
//! Two fixed input sets, rebuilt identically on every run:
//! - `fuzz`: the fuzzer's seed corpus plus 500,000 mutated inputs of seed
//!   0x7411_1b9b (framed with `frame_len`; the ones that do not frame are
//!   left out), decoded for the alternating 2-/4-octet sessions the fuzzer
//!   uses: valid, warned (RFC 7606) and rejected messages mixed;
//! - `table`: 1,000,000 IPv4 /24s and 200,000 IPv6 /48s packed into UPDATEs
//!   with one attribute set (what a full-table ingest decodes).
//!
//! Each set is decoded `--rounds` times (default 5) and the per-round times
//! are printed with their median and min–max, as one JSON line per set.
//! `--digest` prints instead, per set, a hash of every outcome (the decoded
//! message and warnings, or the NOTIFICATION): two builds that print the
//! same digests decode these inputs identically.
//! Run: `cargo run --release -p twill-bench --features fuzz --bin bgp_decode`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use twill_bgpd::types::{AsPath, Community, Origin, PathAttrs, Prefix};
use twill_bgpd::wire::{self, Ctx, Notification, fuzz};

const SEED: u64 = 0x7411_1b9b;
const FUZZ_INPUTS: u64 = 500_000;

fn fuzz_set() -> Vec<(Vec<u8>, Ctx)> {
    let corpus = fuzz::seed_corpus();
    let mut out: Vec<(Vec<u8>, Ctx)> = corpus.iter().map(|m| (m.clone(), Ctx::default())).collect();
    for i in 0..FUZZ_INPUTS {
        let input = fuzz::input(SEED, i, &corpus);
        if let Ok(Some(n)) = wire::frame_len(&input)
            && let Some(m) = input.get(..n)
        {
            out.push((m.to_vec(), fuzz::ctx_for(i)));
        }
    }
    out
}

fn table_set() -> Vec<(Vec<u8>, Ctx)> {
    let ctx = Ctx {
        four_octet_as: true,
        extended_messages: false,
    };
    let mut attrs = PathAttrs {
        origin: Origin::Igp,
        as_path: AsPath::from_sequence([65002, 174, 3356]),
        next_hop: Some(IpAddr::V4(Ipv4Addr::new(10, 97, 0, 1))),
        med: Some(10),
        communities: vec![Community::new(65002, 1)],
        ..PathAttrs::default()
    };
    let v4: Vec<Prefix> = (0..1_000_000u32)
        .filter_map(|i| Ipv4Network::new(Ipv4Addr::from(0x2000_0000 + (i << 8)), 24).ok())
        .map(IpNetwork::V4)
        .collect();
    let mut out: Vec<(Vec<u8>, Ctx)> = wire::encode_updates(&[], Some(&attrs), &v4, &ctx)
        .into_iter()
        .map(|m| (m, ctx))
        .collect();
    attrs.next_hop = Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    let v6: Vec<Prefix> = (0..200_000u128)
        .filter_map(|i| {
            Ipv6Network::new(Ipv6Addr::from((0x2001_0db8_u128 << 96) | (i << 80)), 48).ok()
        })
        .map(IpNetwork::V6)
        .collect();
    out.extend(
        wire::encode_updates(&[], Some(&attrs), &v6, &ctx)
            .into_iter()
            .map(|m| (m, ctx)),
    );
    out
}

/// One round: decode every input once; (elapsed ms, accepted count).
fn round(set: &[(Vec<u8>, Ctx)]) -> (f64, usize) {
    let start = Instant::now();
    let mut ok = 0usize;
    for (m, ctx) in set {
        if std::hint::black_box(wire::decode(std::hint::black_box(m), ctx)).is_ok() {
            ok += 1;
        }
    }
    (start.elapsed().as_secs_f64() * 1000.0, ok)
}

/// FNV-1a over the Debug form of every outcome.
fn digest(set: &[(Vec<u8>, Ctx)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (m, ctx) in set {
        let text = match wire::decode(m, ctx) {
            Ok(decoded) => format!("ok {decoded:?}"),
            Err(e) => {
                let n: Notification = e.into();
                format!("err {n:?}")
            }
        };
        for b in text.bytes().chain([b'\n']) {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn main() {
    let mut rounds = 5usize;
    let mut digest_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => rounds = n,
                _ => {
                    eprintln!("--rounds needs a positive number");
                    std::process::exit(2);
                }
            },
            "--digest" => digest_only = true,
            _ => {
                eprintln!("usage: bgp_decode [--rounds N] [--digest]");
                std::process::exit(2);
            }
        }
    }
    for (name, set) in [("fuzz", fuzz_set()), ("table", table_set())] {
        if digest_only {
            println!(
                "{name}: {} messages, digest {:016x}",
                set.len(),
                digest(&set)
            );
            continue;
        }
        let bytes: usize = set.iter().map(|(m, _)| m.len()).sum();
        let mut times = Vec::with_capacity(rounds);
        let mut accepted = 0;
        for _ in 0..rounds {
            let (ms, ok) = round(&set);
            times.push(ms);
            accepted = ok;
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        println!(
            "{{\"set\":\"{name}\",\"messages\":{},\"bytes\":{bytes},\"accepted\":{accepted},\"rounds_ms\":{:?},\"median_ms\":{median:.2},\"min_ms\":{:.2},\"max_ms\":{:.2},\"ns_per_message\":{:.1}}}",
            set.len(),
            times
                .iter()
                .map(|t| (t * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            sorted[0],
            sorted[sorted.len() - 1],
            median * 1e6 / set.len() as f64
        );
    }
}
