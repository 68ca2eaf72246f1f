//! Pure address arithmetic for block IPAM: which blocks a pool splits into,
//! which address an ordinal is, which ordinal to hand out next. No I/O, so
//! every rule here is unit-tested directly.
//!
//! Addresses are handled as `u128` so IPv4 and IPv6 share one code path; a
//! pool can hold more blocks than fit in memory (an IPv6 /56 has 2^66 /122
//! blocks), so nothing here enumerates a pool: the first unclaimed block is
//! found by walking past the claimed ones only.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Address width in bits for the network's family.
pub fn width(net: &IpNetwork) -> u8 {
    if net.is_ipv4() { 32 } else { 128 }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v4: bool, x: u128) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(x as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(x))
    }
}

/// Number of blocks of prefix `block_size` inside `pool` (saturating).
pub fn block_count(pool: &IpNetwork, block_size: u8) -> u128 {
    let bits = block_size.saturating_sub(pool.prefix());
    if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// The `n`th block of the pool.
pub fn nth_block(pool: &IpNetwork, block_size: u8, n: u128) -> Option<IpNetwork> {
    if n >= block_count(pool, block_size) {
        return None;
    }
    let step = 1u128
        .checked_shl(u32::from(width(pool) - block_size))
        .unwrap_or(0);
    let base = to_u128(pool.network());
    let addr = from_u128(pool.is_ipv4(), base + n * step);
    IpNetwork::new(addr, block_size).ok()
}

/// How many addresses a block holds (blocks are at most 2^32 addresses).
pub fn block_len(block: &IpNetwork) -> u32 {
    let bits = width(block) - block.prefix();
    if bits >= 32 { u32::MAX } else { 1u32 << bits }
}

/// The address at `ordinal` in the block.
pub fn addr_at(block: &IpNetwork, ordinal: u32) -> Option<IpAddr> {
    (ordinal < block_len(block)).then(|| {
        from_u128(
            block.is_ipv4(),
            to_u128(block.network()) + u128::from(ordinal),
        )
    })
}

/// The ordinal of `addr` in the block, if it is inside.
pub fn ordinal_of(block: &IpNetwork, addr: IpAddr) -> Option<u32> {
    if addr.is_ipv4() != block.is_ipv4() || !block.contains(addr) {
        return None;
    }
    u32::try_from(to_u128(addr) - to_u128(block.network())).ok()
}

/// The block of prefix `block_size` that contains `addr`, if `addr` is in the pool.
pub fn block_containing(pool: &IpNetwork, block_size: u8, addr: IpAddr) -> Option<IpNetwork> {
    if addr.is_ipv4() != pool.is_ipv4() || !pool.contains(addr) {
        return None;
    }
    aligned(addr, block_size)
}

/// The prefix of length `prefix` that holds `addr` (host bits cleared).
fn aligned(addr: IpAddr, prefix: u8) -> Option<IpNetwork> {
    let n = IpNetwork::new(addr, prefix).ok()?;
    IpNetwork::new(n.network(), prefix).ok()
}

/// A claimed block that shares an address with `b`, if any. Blocks are
/// aligned prefixes, so two overlap only when one contains the other; blocks
/// of another size appear when a pool's blockSize changed or a pool was
/// replaced by one over the same addresses.
pub fn overlapping_claimed(b: &IpNetwork, claimed: &BTreeSet<IpNetwork>) -> Option<IpNetwork> {
    let w = width(b);
    // Claimed blocks starting inside `b` (equal to it or inside it).
    if let (Ok(lo), Ok(hi)) = (
        IpNetwork::new(b.network(), 0),
        IpNetwork::new(b.broadcast(), w),
    ) && let Some(c) = claimed.range(lo..=hi).next()
    {
        return Some(*c);
    }
    // Claimed blocks containing `b`.
    (0..b.prefix()).rev().find_map(|p| {
        let n = aligned(b.network(), p)?;
        claimed.contains(&n).then_some(n)
    })
}

/// The first block of the pool that overlaps no block in `claimed`: walks
/// only past claimed blocks (jumping over a larger one whole), so it costs
/// O(claimed) lookups, however large the pool.
pub fn first_unclaimed_block(
    pool: &IpNetwork,
    block_size: u8,
    claimed: &BTreeSet<IpNetwork>,
) -> Option<IpNetwork> {
    let size = 1u128.checked_shl(u32::from(width(pool).checked_sub(block_size)?))?;
    let end = to_u128(pool.broadcast());
    let mut cur = to_u128(pool.network());
    loop {
        if cur > end {
            return None;
        }
        let b = IpNetwork::new(from_u128(pool.is_ipv4(), cur), block_size).ok()?;
        let Some(c) = overlapping_claimed(&b, claimed) else {
            return Some(b);
        };
        // Past the claimed block if it is larger, else past this candidate;
        // both ends are aligned to block_size.
        let next = to_u128(c.broadcast()).max(cur + size - 1);
        cur = next.checked_add(1)?;
    }
}

/// The ordinal to hand out next in a block of `len` addresses, given the
/// sorted taken ordinals: the first free one after `cursor` (the most recently
/// handed out), wrapping around. Handing out in rotation rather than lowest
/// first keeps a just-released address unused for as long as possible, so a
/// new pod does not inherit a departed pod's connections.
pub fn next_free_ordinal(len: u32, taken: &BTreeSet<u32>, cursor: Option<u32>) -> Option<u32> {
    if taken.len() as u64 >= u64::from(len) {
        return None;
    }
    let start = cursor.map_or(0, |c| c.wrapping_add(1) % len.max(1));
    (start..len).chain(0..start).find(|o| !taken.contains(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn splits_pools_into_blocks() {
        let pool = net("10.244.0.0/16");
        assert_eq!(block_count(&pool, 26), 1024);
        assert_eq!(nth_block(&pool, 26, 0), Some(net("10.244.0.0/26")));
        assert_eq!(nth_block(&pool, 26, 5), Some(net("10.244.1.64/26")));
        assert_eq!(nth_block(&pool, 26, 1023), Some(net("10.244.255.192/26")));
        assert_eq!(nth_block(&pool, 26, 1024), None);
        let v6 = net("fd00:10:244::/56");
        assert_eq!(block_count(&v6, 122), 1 << 66);
        assert_eq!(nth_block(&v6, 122, 1), Some(net("fd00:10:244::40/122")));
        assert_eq!(block_count(&net("10.0.0.0/26"), 26), 1);
    }

    #[test]
    fn ordinals_round_trip() {
        let b = net("10.244.1.64/26");
        assert_eq!(block_len(&b), 64);
        assert_eq!(addr_at(&b, 0), Some("10.244.1.64".parse().unwrap()));
        assert_eq!(addr_at(&b, 63), Some("10.244.1.127".parse().unwrap()));
        assert_eq!(addr_at(&b, 64), None);
        assert_eq!(ordinal_of(&b, "10.244.1.70".parse().unwrap()), Some(6));
        assert_eq!(ordinal_of(&b, "10.244.1.128".parse().unwrap()), None);
        assert_eq!(ordinal_of(&b, "fd00::1".parse().unwrap()), None);
        let b6 = net("fd00:10:244::40/122");
        assert_eq!(addr_at(&b6, 3), Some("fd00:10:244::43".parse().unwrap()));
        assert_eq!(
            ordinal_of(&b6, "fd00:10:244::7f".parse().unwrap()),
            Some(63)
        );
    }

    #[test]
    fn finds_the_block_of_an_address() {
        let pool = net("10.244.0.0/16");
        assert_eq!(
            block_containing(&pool, 26, "10.244.1.70".parse().unwrap()),
            Some(net("10.244.1.64/26"))
        );
        assert_eq!(
            block_containing(&pool, 26, "10.245.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn first_unclaimed_skips_claimed_blocks_only() {
        let pool = net("10.244.0.0/16");
        let mut claimed = BTreeSet::new();
        assert_eq!(
            first_unclaimed_block(&pool, 26, &claimed),
            Some(net("10.244.0.0/26"))
        );
        claimed.insert(net("10.244.0.0/26"));
        claimed.insert(net("10.244.0.128/26"));
        assert_eq!(
            first_unclaimed_block(&pool, 26, &claimed),
            Some(net("10.244.0.64/26"))
        );
        let tiny = net("10.0.0.0/25");
        let all: BTreeSet<_> = [net("10.0.0.0/26"), net("10.0.0.64/26")].into();
        assert_eq!(first_unclaimed_block(&tiny, 26, &all), None);
    }

    #[test]
    fn blocks_of_another_size_are_never_overlapped() {
        let pool = net("10.0.0.0/24");
        // A /26 claimed before blockSize became 28: no /28 inside it.
        let c: BTreeSet<_> = [net("10.0.0.0/26")].into();
        assert_eq!(
            first_unclaimed_block(&pool, 28, &c),
            Some(net("10.0.0.64/28"))
        );
        // /28s claimed before blockSize became 25: no /25 containing them.
        let c: BTreeSet<_> = [net("10.0.0.16/28"), net("10.0.0.144/28")].into();
        assert_eq!(first_unclaimed_block(&pool, 25, &c), None);
        let c: BTreeSet<_> = [net("10.0.0.16/28")].into();
        assert_eq!(
            first_unclaimed_block(&pool, 25, &c),
            Some(net("10.0.0.128/25"))
        );
        assert_eq!(
            overlapping_claimed(&net("10.0.0.0/25"), &c),
            Some(net("10.0.0.16/28"))
        );
        assert_eq!(overlapping_claimed(&net("10.0.0.128/25"), &c), None);
        let v6 = net("fd00::/120");
        let c: BTreeSet<_> = [net("fd00::/121")].into();
        assert_eq!(
            first_unclaimed_block(&v6, 122, &c),
            Some(net("fd00::80/122"))
        );
    }

    #[test]
    fn hands_out_in_rotation() {
        let mut taken = BTreeSet::new();
        assert_eq!(next_free_ordinal(4, &taken, None), Some(0));
        taken.insert(0);
        assert_eq!(next_free_ordinal(4, &taken, Some(0)), Some(1));
        taken.insert(1);
        taken.remove(&0);
        // 0 was just released: rotation prefers 2 and 3 first.
        assert_eq!(next_free_ordinal(4, &taken, Some(1)), Some(2));
        taken.extend([2, 3]);
        assert_eq!(next_free_ordinal(4, &taken, Some(3)), Some(0));
        taken.insert(0);
        assert_eq!(next_free_ordinal(4, &taken, Some(0)), None);
    }
}
