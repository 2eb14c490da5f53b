//! A fast hash for the filter's maps keyed by cluster names and context ids. The keys come from
//! Envoy's configuration and the controller, never from request data, so a hash without
//! flooding resistance is fine, and on the warm path (one table lookup, one counter per
//! request) it costs a fraction of SipHash's. The mixing step is rustc's Fx hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FxHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Fx: a multiply and a rotate per 8 bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn names_differing_anywhere_hash_apart() {
        let h = |s: &str| BuildHasherDefault::<FxHasher>::default().hash_one(s);
        let names = [
            "outbound|80||web.shop.svc.cluster.local",
            "outbound|81||web.shop.svc.cluster.local",
            "outbound|80||web.shop.svc.cluster.locak",
            "outbound|80||web.shop.svc.cluster.loca",
            "",
            "a",
            "b",
        ];
        let hashes: std::collections::BTreeSet<u64> = names.iter().map(|n| h(n)).collect();
        assert_eq!(hashes.len(), names.len());
        let mut m: FastMap<String, usize> = FastMap::default();
        for (i, n) in names.iter().enumerate() {
            m.insert((*n).to_owned(), i);
        }
        assert!(names.iter().enumerate().all(|(i, n)| m.get(*n) == Some(&i)));
    }
}
