//! A structure-aware mutation fuzzer for the wire layer, shared by the fuzz
//! runner binary (`twill-bgp-fuzz`) and the deterministic fuzz test.
//!
//! Input `i` of a run with seed `s` is a pure function of `(s, i)`: a seed
//! message from [`seed_corpus`] (valid encodings of every message type,
//! both AS-number widths) with one to four mutations: bit flips, byte
//! set/insert/delete, length-field tweaks (header length, withdrawn length,
//! attribute length, attribute value lengths, segment counts, prefix
//! lengths), splices between seeds, truncation, duplication of a range. Half
//! the inputs get their header length repaired afterwards so mutations reach
//! the body. No libFuzzer: there is no nightly toolchain here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Capability, Ctx, GracefulRestart, Message, Notification, Open, RouteRefresh, Update, encode,
    encode_updates,
};
use crate::types::{
    Afi, AsPath, AsSegment, Community, LargeCommunity, Origin, PathAttrs, Prefix, RawAttr,
};

/// SplitMix64: tiny, seedable, good enough to drive mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap_or(Prefix::V4(ipnetwork::Ipv4Network::from(
        Ipv4Addr::UNSPECIFIED,
    )))
}

fn rich_attrs(nh: IpAddr) -> PathAttrs {
    PathAttrs {
        origin: Origin::Egp,
        as_path: AsPath {
            segments: vec![
                AsSegment::ConfedSequence(vec![65010]),
                AsSegment::Sequence(vec![65001, 4_200_000_001, 174]),
                AsSegment::Set(vec![3356, 4_200_000_002]),
            ],
        },
        next_hop: Some(nh),
        next_hop_link_local: match nh {
            IpAddr::V6(_) => Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            IpAddr::V4(_) => None,
        },
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some((4_200_000_003, Ipv4Addr::new(192, 0, 2, 9))),
        communities: vec![Community::new(65000, 1), Community::NO_EXPORT],
        large_communities: vec![LargeCommunity {
            global: 4_200_000_000,
            local1: 1,
            local2: 2,
        }],
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
        unknown: vec![
            RawAttr {
                flags: 0xe0,
                code: 16,
                value: vec![0, 2, 0xfd, 0xe8, 0, 0, 0, 1],
            },
            RawAttr {
                flags: 0xe0,
                code: 200,
                value: vec![1, 2, 3],
            },
        ],
    }
}

/// Valid encoded messages of every type, for both AS-number widths, plus a
/// few hand-made byte strings known to trip decoders (the 14-byte AS_PATH
/// block with a stray trailing byte).
pub fn seed_corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for four in [false, true] {
        let ctx = Ctx {
            four_octet_as: four,
            extended_messages: false,
        };
        let open = Open {
            version: 4,
            asn: 4_200_000_000,
            hold_time: 90,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            capabilities: vec![
                Capability::Multiprotocol(Afi::Ipv4),
                Capability::Multiprotocol(Afi::Ipv6),
                Capability::RouteRefresh,
                Capability::FourOctetAs(4_200_000_000),
                Capability::GracefulRestart(GracefulRestart {
                    restarting: true,
                    time: 120,
                    families: vec![(Afi::Ipv4, true), (Afi::Ipv6, false)],
                }),
                Capability::Unknown {
                    code: 70,
                    value: vec![],
                },
            ],
        };
        out.push(encode(&Message::Open(open), &ctx));
        out.push(encode(&Message::Keepalive, &ctx));
        out.push(encode(&Message::Notification(Notification::cease(2)), &ctx));
        out.push(encode(
            &Message::RouteRefresh(RouteRefresh {
                afi: Afi::Ipv6,
                subtype: 0,
            }),
            &ctx,
        ));
        out.push(encode(
            &Message::Update(Update::end_of_rib(Afi::Ipv4)),
            &ctx,
        ));
        out.push(encode(
            &Message::Update(Update::end_of_rib(Afi::Ipv6)),
            &ctx,
        ));
        let v4 = [
            p("10.0.0.0/8"),
            p("192.168.7.0/24"),
            p("0.0.0.0/0"),
            p("10.1.2.3/32"),
        ];
        let v6 = [
            p("2001:db8::/32"),
            p("2001:db8:1:2::/64"),
            p("::/0"),
            p("fd00::1/128"),
        ];
        let nh4 = rich_attrs(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)));
        let nh6 = rich_attrs(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
        out.extend(encode_updates(&v4, Some(&nh4), &v4, &ctx));
        out.extend(encode_updates(&v6, Some(&nh6), &v6, &ctx));
        out.extend(encode_updates(&[], Some(&nh6), &v4, &ctx));
        let plain = PathAttrs {
            as_path: AsPath::from_sequence([65001]),
            next_hop: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254))),
            ..PathAttrs::default()
        };
        out.extend(encode_updates(&[], Some(&plain), &v4, &ctx));
        out.extend(encode_updates(&[], Some(&plain), &v6, &ctx));
    }
    // ORIGIN, then an AS_PATH of one 2-AS segment (4-octet) with one stray
    // trailing byte: the 14-byte attribute block that makes zettabgp 0.6 loop.
    let attrs: [u8; 14] = [0x40, 1, 1, 0, 0x40, 2, 7, 2, 1, 0, 0, 0xfd, 0xe9, 0];
    let mut m = vec![0xff; 16];
    let len = 19 + 4 + attrs.len() + 2;
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.extend_from_slice(&[2, 0, 0, 0, attrs.len() as u8]);
    m.extend_from_slice(&attrs);
    m.extend_from_slice(&[8, 10]);
    out.push(m);
    out
}

/// Offsets of length fields worth tweaking in an UPDATE: withdrawn length,
/// attribute section length, each attribute's length, the first octets of
/// values (segment counts, next hop lengths, prefix lengths).
fn length_fields(m: &[u8]) -> Vec<usize> {
    let mut v = vec![16, 17];
    if m.get(18) != Some(&2) {
        v.extend([19, 20, 28]); // OPEN opt param length is at 28
        return v;
    }
    let get16 = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *m.get(at)?,
            *m.get(at + 1)?,
        ])))
    };
    let Some(wlen) = get16(19) else { return v };
    v.extend([19, 20, 21 + wlen, 22 + wlen]);
    let astart = 23 + wlen;
    let Some(alen) = get16(21 + wlen) else {
        return v;
    };
    let mut pos = astart;
    while pos + 3 <= (astart + alen).min(m.len()) {
        let ext = m[pos] & 0x10 != 0;
        let l = if ext {
            get16(pos + 2)
        } else {
            m.get(pos + 2).map(|&b| usize::from(b))
        };
        let Some(l) = l else { break };
        let hdr = if ext { 4 } else { 3 };
        v.extend([pos, pos + 2, pos + hdr, pos + hdr + 1, pos + hdr + 3]);
        pos += hdr + l;
    }
    v.push(astart + alen);
    v
}

/// Applies one random mutation.
pub fn mutate_once(rng: &mut Rng, m: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    const INTERESTING: [u8; 10] = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x10, 0x20];
    let len = m.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            m[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            m[i] = if rng.below(2) == 0 {
                rng.byte()
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
        }
        2 => {
            let i = rng.below(len + 1);
            let b = rng.byte();
            m.insert(i, b);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below(4.min(len - i));
            m.drain(i..i + n);
        }
        4 | 5 => {
            let fields = length_fields(m);
            let at = fields[rng.below(fields.len())];
            if let Some(b) = m.get_mut(at) {
                *b = match rng.below(4) {
                    0 => b.wrapping_add(1),
                    1 => b.wrapping_sub(1),
                    2 => b.wrapping_add(1 + rng.byte() % 8),
                    _ => INTERESTING[rng.below(INTERESTING.len())],
                };
            }
        }
        6 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            m.truncate(cut);
            m.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => {
            m.truncate(rng.below(len));
        }
        8 if len > 1 => {
            let a = rng.below(len);
            let b = a + 1 + rng.below((len - a).min(16));
            let chunk: Vec<u8> = m[a..b.min(len)].to_vec();
            let at = rng.below(m.len() + 1);
            m.splice(at..at, chunk);
        }
        _ => {
            let i = rng.below(len.max(1));
            if let Some(b) = m.get_mut(i) {
                *b = b.wrapping_add(rng.byte() % 3).wrapping_sub(1);
            }
        }
    }
}

/// Input number `i` of the run seeded `seed`.
pub fn input(seed: u64, i: u64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    rng.next_u64();
    let mut m = corpus
        .get(rng.below(corpus.len()))
        .cloned()
        .unwrap_or_default();
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut rng, &mut m, corpus);
    }
    if rng.below(2) == 0 && m.len() >= 19 {
        // Repair marker and length so the mutation reaches the body.
        m[..16].fill(0xff);
        let l = (m.len().min(0xffff) as u16).to_be_bytes();
        m[16] = l[0];
        m[17] = l[1];
    }
    m
}

/// The session a given input is decoded for (alternates).
pub fn ctx_for(i: u64) -> Ctx {
    Ctx {
        four_octet_as: i % 2 == 1,
        extended_messages: false,
    }
}

/// What our decode path made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not a whole message yet (frame_len said wait).
    Incomplete,
    /// Rejected with a NOTIFICATION.
    Rejected,
    /// Decoded with RFC 7606 warnings (treat-as-withdraw, attribute-discard).
    Warned,
    /// Decoded cleanly.
    Decoded,
}

/// Runs one input through `frame_len` and `decode`, then re-encodes what
/// decoded and decodes that again (our own output must always be accepted).
/// Panics are the caller's to catch.
pub fn exercise(msg: &[u8], ctx: &Ctx) -> Outcome {
    let framed = match super::frame_len(msg) {
        Ok(None) => return Outcome::Incomplete,
        Err(_) => return Outcome::Rejected,
        Ok(Some(n)) => n,
    };
    let Some(whole) = msg.get(..framed) else {
        return Outcome::Incomplete;
    };
    match super::decode(whole, ctx) {
        Err(_) => Outcome::Rejected,
        Ok((m, warnings)) => {
            let again = encode(&m, ctx);
            if again.len() <= super::MAX_MESSAGE_LEN
                && let Err(e) = super::decode(&again, ctx)
            {
                panic!("re-encoded message rejected: {e}: {m:?}");
            }
            if warnings.is_empty() {
                Outcome::Decoded
            } else {
                Outcome::Warned
            }
        }
    }
}
