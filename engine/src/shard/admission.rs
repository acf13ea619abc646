//! Connection admission shared by all shards: the global peer count and aggregate counts per
//! source address and per source network.
//!
//! Owns: exact counts at two levels, kept in one keyed map behind a mutex:
//! - per source: one IPv4 address, or one IPv6 /64 (the smallest network an ISP hands a
//!   subscriber, so one host can pick any address in it for free);
//! - per network: one IPv4 /24, or one IPv6 /48 (a site's allocation).
//!
//! Counting an IPv6 address alone would let one host walk past `peers_per_ip_max` with
//! distinct addresses of its /64; the network level bounds what many cheap sources in one
//! network can hold. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as `a.b.c.d`.
//! It is touched only when a connection opens or closes, never per message, so it is not on
//! the data path (one short critical section per accept or close, across shards).
//! Must never: let one source's count refuse another (counts are exact per group, not per
//! hash bucket: an earlier design shared fixed buckets, so a full abuser's bucket refused
//! the honest sources that hashed into it), or grow past the open connections: a group's
//! entry exists only while it has one, so the map holds at most 2 x `peers_max` entries.
//! The map's hasher is SipHash-1-3 under a key drawn once per process (std's
//! `RandomState`), so a peer cannot craft addresses that collide into slow map buckets.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Leading bits of an IPv6 address that name one source (counted against `per_ip_max`).
pub const IPV6_SOURCE_PREFIX_BITS: u32 = 64;
/// Leading bits of an IPv4 address that name one network (counted against `per_prefix_max`).
pub const IPV4_NETWORK_PREFIX_BITS: u32 = 24;
/// Leading bits of an IPv6 address that name one network (counted against `per_prefix_max`).
pub const IPV6_NETWORK_PREFIX_BITS: u32 = 48;

const _: () = assert!(IPV6_NETWORK_PREFIX_BITS <= IPV6_SOURCE_PREFIX_BITS);

/// `K` is the map's hasher: `RandomState` (a secret per-process key) everywhere but the
/// deterministic tests.
pub struct Admission<K = RandomState> {
    peers: AtomicUsize,
    peers_max: usize,
    per_ip_max: u32,
    per_prefix_max: u32,
    /// Open connections per source (IPv4 address, IPv6 /64) and per network (IPv4 /24,
    /// IPv6 /48); a group with none has no entry.
    counts: Mutex<HashMap<Group, u32, K>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `peers_max` connections are open.
    PeersLimit,
    /// The source (IPv4 address, IPv6 /64) has `peers_per_ip_max` connections.
    PerIpLimit,
    /// The source's network (IPv4 /24, IPv6 /48) has `peers_per_prefix_max` connections.
    PerPrefixLimit,
}

/// Which table a group is counted in; part of the hashed key, so the two levels' buckets are
/// independent even where a source and its network have the same bits (a.b.c.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Level {
    Source,
    Network,
}

/// The addresses counted together at one level: the family and the address masked to the
/// level's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Group {
    level: Level,
    v6: bool,
    bits: u128,
}

/// `bits` with all but its leading `prefix` bits (of `width`) cleared.
fn masked(bits: u128, width: u32, prefix: u32) -> u128 {
    debug_assert!(prefix <= width && width <= 128);
    let host_bits = width - prefix;
    if host_bits == 0 {
        bits
    } else {
        bits & !((1u128 << host_bits) - 1)
    }
}

/// The source `ip` is counted as (an IPv4 address, or an IPv6 /64; a mapped address as its
/// IPv4 address) and the network it is counted in (IPv4 /24, IPv6 /48): the keys other
/// per-source and per-network bounds use too (`send_slots_per_ip_max`,
/// `send_slots_per_prefix_max`).
pub fn group_keys(ip: &IpAddr) -> ((bool, u128), (bool, u128)) {
    let (source, network) = groups(ip);
    ((source.v6, source.bits), (network.v6, network.bits))
}

/// The source group and the network group `ip` is counted in.
fn groups(ip: &IpAddr) -> (Group, Group) {
    // A mapped address is the IPv4 host it names (a dual-stack socket reports IPv4 peers so).
    let v4 = match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let (v6, bits, width, source_prefix, network_prefix) = match (v4, ip) {
        (Some(a), _) => (
            false,
            u128::from(u32::from(a)),
            32,
            32,
            IPV4_NETWORK_PREFIX_BITS,
        ),
        (None, IpAddr::V6(a)) => (
            true,
            u128::from(*a),
            128,
            IPV6_SOURCE_PREFIX_BITS,
            IPV6_NETWORK_PREFIX_BITS,
        ),
        (None, IpAddr::V4(_)) => unreachable!("an IPv4 address always has its IPv4 form"),
    };
    let source = Group {
        level: Level::Source,
        v6,
        bits: masked(bits, width, source_prefix),
    };
    let network = Group {
        level: Level::Network,
        v6,
        bits: masked(bits, width, network_prefix),
    };
    (source, network)
}

impl Admission<RandomState> {
    /// Limits from the config: `peers_max`, `peers_per_ip_max`, `peers_per_prefix_max`.
    pub fn from_config(config: &crate::config::EngineConfig) -> Admission {
        Admission::with_limits(
            config.peers_max,
            config.peers_per_ip_max,
            config.peers_per_prefix_max,
        )
    }

    /// The network limit at its default ratio, `PEERS_PER_PREFIX_PER_IP_RATIO` x `per_ip_max`
    /// (kept for callers that predate it; `from_config` takes the configured value).
    pub fn new(peers_max: usize, per_ip_max: usize) -> Admission {
        let per_prefix_max =
            per_ip_max.saturating_mul(crate::config::PEERS_PER_PREFIX_PER_IP_RATIO);
        Admission::with_limits(peers_max, per_ip_max, per_prefix_max)
    }

    /// Limits as given: `per_prefix_max` should be at least `per_ip_max` (the config
    /// validates it), or the network level refuses before the source level could.
    pub fn with_limits(peers_max: usize, per_ip_max: usize, per_prefix_max: usize) -> Admission {
        Admission::with_key(peers_max, per_ip_max, per_prefix_max, RandomState::new())
    }
}

impl<K: BuildHasher> Admission<K> {
    fn with_key(peers_max: usize, per_ip_max: usize, per_prefix_max: usize, key: K) -> Self {
        Admission {
            peers: AtomicUsize::new(0),
            peers_max,
            per_ip_max: per_ip_max.min(u32::MAX as usize) as u32,
            per_prefix_max: per_prefix_max.min(u32::MAX as usize) as u32,
            counts: Mutex::new(HashMap::with_hasher(key)),
        }
    }

    /// The counts; a panic elsewhere while holding them leaves them consistent (every
    /// update is a whole admit or release), so a poisoned lock is used as it is.
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Group, u32, K>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection, or refuses it without counting.
    pub fn admit(&self, ip: &IpAddr) -> Result<(), Refusal> {
        if self.peers.fetch_add(1, Ordering::Relaxed) >= self.peers_max {
            self.peers.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PeersLimit);
        }
        let (source, network) = groups(ip);
        let mut counts = self.counts();
        let refusal = if counts.get(&source).copied().unwrap_or(0) >= self.per_ip_max {
            Some(Refusal::PerIpLimit)
        } else if counts.get(&network).copied().unwrap_or(0) >= self.per_prefix_max {
            Some(Refusal::PerPrefixLimit)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.peers.fetch_sub(1, Ordering::Relaxed);
            return Err(refusal);
        }
        *counts.entry(source).or_insert(0) += 1;
        *counts.entry(network).or_insert(0) += 1;
        debug_assert!(counts.len() <= 2 * self.peers.load(Ordering::Relaxed).max(1));
        Ok(())
    }

    /// Un-counts a connection that `admit` accepted (from the same address).
    pub fn release(&self, ip: &IpAddr) {
        let (source, network) = groups(ip);
        let mut counts = self.counts();
        for group in [source, network] {
            match counts.get_mut(&group) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    counts.remove(&group);
                }
                None => debug_assert!(false, "released {group:?} that was never admitted"),
            }
        }
        drop(counts);
        let prev = self.peers.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "peer count underflow");
    }

    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Admission with a fixed map key (SipHash-1-3 keyed with zeros): the same on every run.
    type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    fn fixed(peers_max: usize, per_ip_max: usize, per_prefix_max: usize) -> Admission<Fixed> {
        Admission::with_key(peers_max, per_ip_max, per_prefix_max, Fixed::default())
    }

    /// Groups with a count: none once every admit was released.
    fn counted<K: BuildHasher>(a: &Admission<K>) -> usize {
        a.counts().len()
    }

    #[test]
    fn enforces_global_and_per_ip_limits_and_releases() {
        // Proves: limits refuse without leaking counts; release makes room again.
        let a = fixed(3, 2, 8);
        let ip1 = ip("127.0.0.2");
        let ip2 = ip("127.0.0.3");
        assert_eq!(a.admit(&ip1), Ok(()));
        assert_eq!(a.admit(&ip1), Ok(()));
        assert_eq!(a.admit(&ip1), Err(Refusal::PerIpLimit));
        assert_eq!(a.admit(&ip2), Ok(()));
        assert_eq!(a.admit(&ip2), Err(Refusal::PeersLimit));
        assert_eq!(a.peers(), 3);
        a.release(&ip1);
        assert_eq!(a.admit(&ip2), Ok(()));
        // An IPv4-mapped IPv6 address counts as the same IP.
        let mapped = ip("::ffff:127.0.0.3");
        a.release(&mapped);
        assert_eq!(a.peers(), 2);
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        // Proves: distinct addresses of one /64 share the per-source limit, so a host cannot
        // walk past it by picking new addresses; the next /64 is a new source.
        let a = fixed(1000, 4, 1000);
        for i in 1..=4u16 {
            assert_eq!(a.admit(&ip(&format!("2001:db8:1:2::{i:x}"))), Ok(()));
        }
        for addr in ["2001:db8:1:2::99", "2001:db8:1:2:ffff:ffff:ffff:ffff"] {
            assert_eq!(a.admit(&ip(addr)), Err(Refusal::PerIpLimit), "{addr}");
        }
        assert_eq!(a.admit(&ip("2001:db8:1:3::1")), Ok(()));
        assert_eq!(a.peers(), 5);
    }

    #[test]
    fn networks_bound_many_sources() {
        // Proves: the /24 (IPv4) and /48 (IPv6) level refuses once the network holds its
        // limit, whatever the sources inside it; other networks are independent of it.
        let a = fixed(1000, 2, 6);
        for host in 1..=6u8 {
            assert_eq!(a.admit(&ip(&format!("10.1.2.{host}"))), Ok(()));
        }
        assert_eq!(a.admit(&ip("10.1.2.200")), Err(Refusal::PerPrefixLimit));
        // A different /24, and the same /24's neighbour /24, are untouched.
        for net in ["10.1.3.1", "10.1.1.1", "10.2.2.1"] {
            assert_eq!(a.admit(&ip(net)), Ok(()), "{net}");
        }
        // IPv6: six /64s of one /48 fill it; a seventh /64 is refused, another /48 is not.
        for subnet in 1..=6u16 {
            assert_eq!(a.admit(&ip(&format!("2001:db8:7:{subnet:x}::1"))), Ok(()));
        }
        assert_eq!(
            a.admit(&ip("2001:db8:7:ff::1")),
            Err(Refusal::PerPrefixLimit)
        );
        assert_eq!(a.admit(&ip("2001:db8:8::1")), Ok(()));
        // A refusal at the network level left nothing counted at the source level: with
        // room in the network again, the refused source still gets its full two.
        a.release(&ip("10.1.2.1"));
        a.release(&ip("10.1.2.2"));
        assert_eq!(a.admit(&ip("10.1.2.200")), Ok(()));
        assert_eq!(a.admit(&ip("10.1.2.200")), Ok(()));
        assert_eq!(a.admit(&ip("10.1.2.200")), Err(Refusal::PerIpLimit));
    }

    #[test]
    fn mapped_ipv4_counts_as_its_ipv4_address() {
        // Proves: `::ffff:a.b.c.d` (how a dual-stack listener sees IPv4 peers) shares the
        // IPv4 address's source and /24 counts, not an IPv6 /64's.
        let a = fixed(1000, 2, 3);
        assert_eq!(a.admit(&ip("192.0.2.7")), Ok(()));
        assert_eq!(a.admit(&ip("::ffff:192.0.2.7")), Ok(()));
        assert_eq!(a.admit(&ip("::ffff:192.0.2.7")), Err(Refusal::PerIpLimit));
        assert_eq!(a.admit(&ip("::ffff:192.0.2.8")), Ok(()));
        assert_eq!(a.admit(&ip("192.0.2.9")), Err(Refusal::PerPrefixLimit));
        assert_eq!(groups(&ip("::ffff:192.0.2.7")), groups(&ip("192.0.2.7")));
        // The IPv4 family stays apart from an IPv6 address with the same low bits.
        assert_ne!(groups(&ip("::c000:207")).0, groups(&ip("192.0.2.7")).0);
    }

    #[test]
    fn a_full_source_never_refuses_another() {
        // Proves: counts are exact per source: with 200 sources each at its limit (as the
        // hostile suite's idle connections are), every other source is still admitted.
        let a = Admission::with_limits(100_000, 4, 100_000);
        for h in 0..200u32 {
            let full = ip(&format!("10.9.{}.{}", h / 250, h % 250 + 1));
            for _ in 0..4 {
                assert_eq!(a.admit(&full), Ok(()));
            }
            assert_eq!(a.admit(&full), Err(Refusal::PerIpLimit));
        }
        for h in 1..=250u8 {
            let other = ip(&format!("10.10.0.{h}"));
            assert_eq!(a.admit(&other), Ok(()), "{other}");
        }
    }

    #[test]
    fn concurrent_admits_never_pass_a_limit() {
        // Proves: the increment-then-check order holds under contention: 8 threads admitting
        // from one /64 at once never get more than the limit in.
        let a = std::sync::Arc::new(Admission::with_limits(10_000, 50, 10_000));
        let admitted: usize = (0..8)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..200u32)
                        .filter(|i| {
                            let addr = ip(&format!("2001:db8::{t:x}:{i:x}"));
                            a.admit(&addr).is_ok()
                        })
                        .count()
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert!(admitted <= 50, "{admitted} admitted");
        assert!(admitted > 0);
        assert_eq!(a.peers(), admitted);
    }

    /// Addresses from a small space, so random sequences hit every limit: four IPv4 /24s of
    /// four hosts, their mapped forms, and two IPv6 /48s of two /64s of two hosts.
    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0..4u8, 1..5u8).prop_map(|(net, host)| ip(&format!("10.0.{net}.{host}"))),
            (0..4u8, 1..5u8).prop_map(|(net, host)| ip(&format!("::ffff:10.0.{net}.{host}"))),
            (0..2u16, 0..2u16, 1..3u16)
                .prop_map(|(site, subnet, host)| ip(&format!("2001:db8:{site}:{subnet}::{host}"))),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(IpAddr),
        /// Release the n-th (mod len) connection still admitted.
        Release(usize),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => arb_ip().prop_map(Op::Admit),
            2 => any::<usize>().prop_map(Op::Release),
        ]
    }

    proptest! {
        #[test]
        fn admit_release_matches_a_model(
            ops in proptest::collection::vec(arb_op(), 1..200),
            peers_max in 1..40usize,
            per_ip_max in 1..6usize,
            extra in 0..8usize,
        ) {
            // Proves: against a model that counts per group, every admit/refusal is
            // predicted; per group, no limit is ever exceeded; and releasing every admitted
            // connection leaves no count behind.
            let per_prefix_max = per_ip_max + extra;
            let a = Admission::with_limits(peers_max, per_ip_max, per_prefix_max);
            let mut by_group: HashMap<Group, usize> = HashMap::new();
            let mut open: Vec<IpAddr> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit(addr) => {
                        let (sg, ng) = groups(&addr);
                        let s = by_group.get(&sg).copied().unwrap_or(0);
                        let n = by_group.get(&ng).copied().unwrap_or(0);
                        let expect = if open.len() >= peers_max {
                            Err(Refusal::PeersLimit)
                        } else if s >= per_ip_max {
                            Err(Refusal::PerIpLimit)
                        } else if n >= per_prefix_max {
                            Err(Refusal::PerPrefixLimit)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(a.admit(&addr), expect);
                        if expect.is_ok() {
                            *by_group.entry(sg).or_default() += 1;
                            *by_group.entry(ng).or_default() += 1;
                            open.push(addr);
                        }
                    }
                    Op::Release(n) => {
                        if open.is_empty() {
                            continue;
                        }
                        let addr = open.swap_remove(n % open.len());
                        a.release(&addr);
                        let (sg, ng) = groups(&addr);
                        *by_group.entry(sg).or_default() -= 1;
                        *by_group.entry(ng).or_default() -= 1;
                    }
                }
                prop_assert_eq!(a.peers(), open.len());
                prop_assert!(open.len() <= peers_max);
                for (g, count) in &by_group {
                    let max = match g.level {
                        Level::Source => per_ip_max,
                        Level::Network => per_prefix_max,
                    };
                    prop_assert!(*count <= max, "{:?} holds {} > {}", g, count, max);
                }
            }
            for addr in open.drain(..) {
                a.release(&addr);
            }
            prop_assert_eq!(a.peers(), 0);
            prop_assert_eq!(counted(&a), 0);
        }
    }
}
