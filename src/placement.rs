//! Which shard a tenant lives on, and how shards are named: the bottom of
//! the crate's map, used by every layer above (the store's metrics, the
//! keyring, the tasks, the fleet, admin). The hash is the one DESIGN.md
//! fixes so any tool can compute it: `u64::from_be_bytes(SHA-256(tenant_id)[0..8]) % N`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use rsa::sha2::{Digest, Sha256};

/// Which shard of the deployment: an index from 0 to the shard count − 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The shard of `tenant` in a deployment of `count` shards (`count` ≥ 1).
pub fn shard_of(tenant: &str, count: u32) -> ShardId {
    let digest = Sha256::digest(tenant.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 leading bytes"));
    ShardId(u32::try_from(head % u64::from(count.max(1))).expect("below a u32 count"))
}

/// A set of shards: `--own-shards` (parsed from `0,3-5`: indexes and
/// inclusive ranges, comma separated, at least one), and the shards a
/// worker owns as the status page shows them (`0, 3, 4`, or `none`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardList(pub BTreeSet<u32>);

impl FromStr for ShardList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut shards = BTreeSet::new();
        for part in text.split(',').map(str::trim) {
            let index = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("`{s}` is not a shard index"));
            match part.split_once('-') {
                Some((first, last)) => {
                    let (first, last) = (index(first)?, index(last)?);
                    if first > last {
                        return Err(format!("range `{part}` runs backwards"));
                    }
                    shards.extend(first..=last);
                }
                None => {
                    shards.insert(index(part)?);
                }
            }
        }
        Ok(Self(shards))
    }
}

impl fmt::Display for ShardList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let ids: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&ids.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_documented_one() {
        // The leading 8 bytes of SHA-256(tenant), computed independently with
        // `python3 -c 'import hashlib; print(hashlib.sha256(b"acme").hexdigest()[:16])'`.
        for (tenant, head) in [("acme", 0x822b_33ad_87c1_48a0_u64), ("globex", 0x5bc1_a08d_28e4_0fe7)] {
            for count in [1, 2, 3, 8, 1000] {
                assert_eq!(shard_of(tenant, count), ShardId((head % u64::from(count)) as u32), "{tenant} of {count}");
            }
        }
        assert_eq!(shard_of("globex", 8), ShardId(7));
        assert_eq!(shard_of("acme", 1000), ShardId(872));
    }

    #[test]
    fn tenants_spread_over_every_shard() {
        let mut per_shard = [0u32; 8];
        for i in 0..800 {
            per_shard[shard_of(&format!("tenant-{i}"), 8).0 as usize] += 1;
        }
        assert!(per_shard.iter().all(|&n| (60..=140).contains(&n)), "{per_shard:?}");
    }

    #[test]
    fn shard_lists_take_indexes_and_ranges_and_print_for_people() {
        let parse = |text: &str| text.parse::<ShardList>().map(|list| list.0);
        assert_eq!(parse("0,3-5").unwrap(), BTreeSet::from([0, 3, 4, 5]));
        assert_eq!(parse("7").unwrap(), BTreeSet::from([7]));
        assert_eq!(parse(" 2 , 1-1 ").unwrap(), BTreeSet::from([1, 2]));
        for bad in ["", "a", "3-1", "1,,2", "-1", "1-"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(ShardList(BTreeSet::from([4, 0, 3])).to_string(), "0, 3, 4");
        assert_eq!(ShardList::default().to_string(), "none");
    }
}
