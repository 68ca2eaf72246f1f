//! Names Twill gives kernel objects that more than one crate must agree on
//! (twill-node creates the veths; twillctl names them in `policy show`).
//!
//! A pod's host-side veth is `tw` + 13 hex digits of a 64-bit FNV-1a hash of
//! `containerID/ifname`: 15 characters, the kernel's limit. The hash must
//! never change between releases (a restarted twill-node finds its veths by
//! recomputing names), which is why it is spelled out here rather than taken
//! from std's `DefaultHasher`, whose output is not stable across Rust versions.

/// Prefix of every host-side veth Twill creates.
pub const VETH_PREFIX: &str = "tw";

/// FNV-1a, 64 bit (<http://www.isthe.com/chongo/tech/comp/fnv/>): stable
/// across processes, versions and crates (kernel object names).
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The host-side interface name for a pod's interface.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(format!("{container_id}/{ifname}").as_bytes());
    format!("{VETH_PREFIX}{:013x}", h >> 12)
}

/// Whether an interface name looks like one of ours.
pub fn is_host_veth(name: &str) -> bool {
    name.len() == 15
        && name.starts_with(VETH_PREFIX)
        && name[2..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_recognisable() {
        // Pinned: changing these breaks finding veths made by older releases.
        assert_eq!(host_veth("abc", "eth0"), host_veth("abc", "eth0"));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let n = host_veth("0123456789abcdef", "eth0");
        assert_eq!(n.len(), 15);
        assert!(is_host_veth(&n), "{n}");
        assert_ne!(host_veth("abc", "eth0"), host_veth("abc", "net1"));
        assert!(!is_host_veth("eth0") && !is_host_veth("twXYZ0000000000"));
    }
}
