//! Connection admission shared by all shards: the global peer count and per-IP counts.
//!
//! Owns: a fixed-size, lock-free table of counters (atomics). It is touched only when a
//! connection opens or closes, never per message, so it is not on the data path.
//! Must never: grow: per-IP counts live in `IP_BUCKETS` buckets indexed by a hash of the
//! address; two addresses sharing a bucket share a limit, which errs on the strict side.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub const IP_BUCKETS: usize = 65_536;

pub struct Admission {
    peers: AtomicUsize,
    peers_max: usize,
    per_ip: Box<[AtomicU32]>,
    per_ip_max: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    PeersLimit,
    PerIpLimit,
}

impl Admission {
    pub fn new(peers_max: usize, per_ip_max: usize) -> Admission {
        Admission {
            peers: AtomicUsize::new(0),
            peers_max,
            per_ip: (0..IP_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            per_ip_max: per_ip_max.min(u32::MAX as usize) as u32,
        }
    }

    fn bucket(ip: &IpAddr) -> usize {
        // FNV-1a over the address bytes: cheap and spreads 127.x test addresses well.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let v6;
        let bytes: &[u8] = match ip {
            IpAddr::V4(a) => {
                v6 = a.to_ipv6_mapped().octets();
                &v6
            }
            IpAddr::V6(a) => {
                v6 = a
                    .to_ipv4_mapped()
                    .map(|v4| v4.to_ipv6_mapped().octets())
                    .unwrap_or(a.octets());
                &v6
            }
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        (h as usize) % IP_BUCKETS
    }

    /// Counts a new connection, or refuses it without counting.
    pub fn admit(&self, ip: &IpAddr) -> Result<(), Refusal> {
        if self.peers.fetch_add(1, Ordering::Relaxed) >= self.peers_max {
            self.peers.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PeersLimit);
        }
        let slot = &self.per_ip[Self::bucket(ip)];
        if slot.fetch_add(1, Ordering::Relaxed) >= self.per_ip_max {
            slot.fetch_sub(1, Ordering::Relaxed);
            self.peers.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PerIpLimit);
        }
        Ok(())
    }

    /// Un-counts a connection that `admit` accepted.
    pub fn release(&self, ip: &IpAddr) {
        let prev = self.per_ip[Self::bucket(ip)].fetch_sub(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "per-IP count underflow");
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

    #[test]
    fn enforces_global_and_per_ip_limits_and_releases() {
        // Limits refuse without leaking counts; release makes room again.
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "127.0.0.2".parse().unwrap();
        let ip2: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(a.admit(&ip1), Ok(()));
        assert_eq!(a.admit(&ip1), Ok(()));
        assert_eq!(a.admit(&ip1), Err(Refusal::PerIpLimit));
        assert_eq!(a.admit(&ip2), Ok(()));
        assert_eq!(a.admit(&ip2), Err(Refusal::PeersLimit));
        assert_eq!(a.peers(), 3);
        a.release(&ip1);
        assert_eq!(a.admit(&ip2), Ok(()));
        // An IPv4-mapped IPv6 address counts as the same IP.
        let mapped: IpAddr = "::ffff:127.0.0.3".parse().unwrap();
        a.release(&mapped);
        assert_eq!(a.peers(), 2);
    }
}
