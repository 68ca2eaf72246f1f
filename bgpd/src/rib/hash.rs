//! A fast seeded hasher for the RIB's own fixed-width keys (prefixes packed
//! into integers). The std SipHash costs more than the rest of a Loc-RIB
//! update; a folded 64x64->128 multiply per word is enough for keys that are
//! integers, and the per-process random seed keeps collisions from being
//! predictable. A dozen lines, so written here rather than pulled in as a crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xD6E8_FEB8_6659_FD93;

fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

/// Builds [`FastHasher`]s with a random per-process seed.
#[derive(Clone, Copy, Debug)]
pub struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> FastState {
        FastState {
            seed: RandomState::new().hash_one(0x7769_6C6Cu64) | 1,
        }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.seed)
    }
}

/// See the module doc.
#[derive(Clone, Copy, Debug)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w.iter_mut().zip(chunk).for_each(|(d, s)| *d = *s);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = fold(self.0 ^ i, K1);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        fold(self.0, K2)
    }
}

pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
pub type FastSet<K> = std::collections::HashSet<K, FastState>;
