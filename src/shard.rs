//! Sharding: several operators split the Tenants between them by name.
//!
//! A Tenant belongs to shard `fnv1a64(name) % count`, where `fnv1a64` is the
//! 64-bit FNV-1a hash (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
//! of the UTF-8 bytes of `metadata.name`. The hash is written out here rather
//! than taken from `std` (whose `DefaultHasher` may change between Rust
//! releases), so the assignment is the same on every platform and in every
//! version of tenantry. A Tenant's name never changes, so neither does its
//! shard while the shard count stays the same.

use futures::{Stream, TryStreamExt};
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::Tenant;

/// The 64-bit FNV-1a hash of `bytes`.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Which part of the Tenants this process manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Every Tenant (one shard).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Checks `index < count` and `count >= 1`.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("--shard-count must be at least 1".to_string());
        }
        if index >= count {
            return Err(format!(
                "--shard-index {index} is out of range: with --shard-count {count} it must be 0..={}",
                count - 1
            ));
        }
        Ok(Self { index, count })
    }

    /// The shard a Tenant of this name belongs to.
    pub fn of(name: &str, count: u32) -> u32 {
        (fnv1a64(name.as_bytes()) % u64::from(count.max(1))) as u32
    }

    pub fn owns(&self, name: &str) -> bool {
        self.count <= 1 || Self::of(name, self.count) == self.index
    }
}

/// Keeps only the watch events of this shard's Tenants, so the reflector
/// behind the controller stores nothing else. Managed fields are dropped too:
/// nothing reads them, and at a thousand Tenants they are a large part of
/// the store.
pub fn filter_events<S>(
    shard: Shard,
    events: S,
) -> impl Stream<Item = Result<watcher::Event<Tenant>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<Tenant>, watcher::Error>>,
{
    events.try_filter_map(move |event| {
        let kept = match event {
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) | watcher::Event::Delete(t)
                if !shard.owns(&t.name_any()) =>
            {
                None
            }
            other => Some(other.modify(|t| t.managed_fields_mut().clear())),
        };
        futures::future::ready(Ok(kept))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: [u32; 5] = [3, 6, 1, 6, 2];

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Reference values of the FNV-1a 64-bit test suite.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn a_tenant_always_lands_on_the_same_shard() {
        // Pinned: a change of the function would move tenants between
        // running operators, so it must fail here.
        let names = ["acme", "globex", "initech", "umbrella", "hooli"];
        let shards: Vec<u32> = names.iter().map(|n| Shard::of(n, 7)).collect();
        assert_eq!(shards, PINNED);
    }

    #[test]
    fn every_tenant_has_exactly_one_owner() {
        for count in 1..6 {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
            for n in 0..500 {
                let name = format!("tenant-{n}");
                assert_eq!(shards.iter().filter(|s| s.owns(&name)).count(), 1);
            }
        }
    }

    #[test]
    fn names_spread_over_the_shards() {
        let count = 4;
        let mut seen = [0u32; 4];
        for n in 0..4000 {
            seen[Shard::of(&format!("customer-{n}"), count) as usize] += 1;
        }
        for s in seen {
            assert!((800..1200).contains(&s), "uneven spread: {seen:?}");
        }
    }

    #[test]
    fn an_index_outside_the_count_is_refused() {
        assert!(Shard::new(2, 2).is_err());
        assert!(Shard::new(0, 0).is_err());
        assert_eq!(Shard::new(1, 2), Ok(Shard { index: 1, count: 2 }));
    }
}
