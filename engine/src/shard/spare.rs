//! Spare per-peer storage that a peer needs only while it has work: the lists of a batch in
//! flight (the files it holds, its request times, its chain's expected results and reads),
//! lent when its batch starts and taken back when it ends; and the storage of its request
//! queue, lent when a request arrives at an empty queue and taken back when its batch ends
//! with nothing queued.
//!
//! Owns: the shard's spares, at most one set of lists and one queue storage per send slot
//! (`buffer_pool_slots_per_shard`: a batch holds a slot, so in steady state no more are out
//! of the pool at once; what comes back beyond that is freed). Why: a peer kept its lists
//! (~160 bytes of heap) and its queue's storage (~180 bytes at depth 4) for the connection's
//! whole life although it uses them only while it has requests; at 19,000 mostly idle peers
//! that was a third of their memory.
//! Must never: take lists from a peer whose batch is in flight, take a queue's storage while
//! it holds a request (or a tombstone), hold more spares than send slots, or allocate in
//! steady state (spares, once grown, circulate).

use crate::shard::files::FileKey;
use crate::shard::peer::Peer;
use crate::shard::requests::QueueStorage;
use std::time::Instant;

/// One batch's lists (empty, with the capacity an earlier batch gave them).
#[derive(Default)]
struct Lists {
    files: Vec<FileKey>,
    request_times: Vec<Instant>,
    chain_expect: Vec<u32>,
    chain_files: Vec<(u16, u32)>,
}

pub struct SpareLists {
    spare: Vec<Lists>,
    queues: Vec<QueueStorage>,
    /// The send slots: no more sets (and no more queue storages) than this are kept.
    max: usize,
}

impl SpareLists {
    pub fn new(send_slots: usize) -> SpareLists {
        SpareLists {
            spare: Vec::new(),
            queues: Vec::new(),
            max: send_slots,
        }
    }

    /// A request is about to reach the peer's queue: it gets storage unless it has some (else
    /// the queue allocates its own, as before).
    pub fn lend_queue(&mut self, peer: &mut Peer) {
        let queue = peer.session.queue_storage();
        if queue.has_storage() {
            return;
        }
        if let Some(storage) = self.queues.pop() {
            if let Some(back) = queue.give_storage(storage) {
                self.queues.push(back);
            }
        }
    }

    /// A batch starts: the peer gets a spare set unless it still holds one.
    pub fn lend(&mut self, peer: &mut Peer) {
        if peer.batch_files.capacity() > 0 || peer.batch_request_times.capacity() > 0 {
            return;
        }
        if let Some(l) = self.spare.pop() {
            peer.batch_files = l.files;
            peer.batch_request_times = l.request_times;
            peer.chain_expect = l.chain_expect;
            peer.chain_files = l.chain_files;
        }
    }

    /// The peer's batch ended: its lists come back (kept while there is room, else freed),
    /// so the peer holds none until its next batch.
    pub fn reclaim(&mut self, peer: &mut Peer) {
        debug_assert!(peer.batch.is_none(), "lists taken from a batch in flight");
        let mut l = Lists {
            files: std::mem::take(&mut peer.batch_files),
            request_times: std::mem::take(&mut peer.batch_request_times),
            chain_expect: std::mem::take(&mut peer.chain_expect),
            chain_files: std::mem::take(&mut peer.chain_files),
        };
        let empty = l.files.capacity() == 0
            && l.request_times.capacity() == 0
            && l.chain_expect.capacity() == 0
            && l.chain_files.capacity() == 0;
        if let Some(storage) = peer.session.queue_storage().take_storage() {
            if self.queues.len() < self.max {
                self.queues.push(storage);
            }
        }
        if empty || self.spare.len() >= self.max {
            return;
        }
        l.files.clear();
        l.request_times.clear();
        l.chain_expect.clear();
        l.chain_files.clear();
        self.spare.push(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::requests::tests::q;
    use crate::shard::session::Session;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
    use std::os::fd::OwnedFd;

    fn peer() -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let now = Instant::now();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let session = Session::inbound(ip, now);
        Peer::new(OwnedFd::from(sock), SocketAddr::new(ip, 1), 0, session, 0)
    }

    /// What a batch of the peer would do with its lists and queue.
    fn use_storage(p: &mut Peer, n: u32) {
        for i in 0..n {
            p.session.queue_storage().push_back(q(i));
            p.batch_request_times.push(Instant::now());
            p.chain_expect.push(i);
        }
        while p.session.queue_storage().pop_front().is_some() {}
    }

    #[test]
    fn idle_peers_hold_no_batch_or_queue_storage_and_spares_circulate() {
        // Proves: after its batch a peer holds no lists and no queue storage; the next peer's
        // batch gets the same allocations back (no new ones); spares never exceed the bound.
        let mut spares = SpareLists::new(2);
        let mut a = peer();
        spares.lend(&mut a);
        spares.lend_queue(&mut a);
        use_storage(&mut a, 4);
        let (times_ptr, queue_cap) = (a.batch_request_times.as_ptr(), 4);
        spares.reclaim(&mut a);
        assert_eq!(a.batch_request_times.capacity(), 0);
        assert_eq!(a.chain_expect.capacity(), 0);
        assert!(!a.session.queue().has_storage());
        assert_eq!((spares.spare.len(), spares.queues.len()), (1, 1));

        let mut b = peer();
        spares.lend(&mut b);
        spares.lend_queue(&mut b);
        assert_eq!(
            b.batch_request_times.as_ptr(),
            times_ptr,
            "the same list, reused"
        );
        assert!(b.batch_request_times.is_empty() && b.batch_request_times.capacity() >= 4);
        assert!(b.session.queue().has_storage());
        assert!(b.session.queue().is_empty());
        assert_eq!((spares.spare.len(), spares.queues.len()), (0, 0));
        use_storage(&mut b, queue_cap);
        spares.reclaim(&mut b);

        // A queue still holding a request keeps its storage; the bound holds.
        let mut c = peer();
        spares.lend_queue(&mut c);
        c.session.queue_storage().push_back(q(9));
        spares.reclaim(&mut c);
        assert!(c.session.queue().has_storage() && c.session.queue().len() == 1);
        let mut many: Vec<Peer> = (0..5).map(|_| peer()).collect();
        for p in many.iter_mut() {
            use_storage(p, 2);
        }
        for p in many.iter_mut() {
            spares.reclaim(p);
            assert_eq!(
                p.chain_expect.capacity(),
                0,
                "freed when the spares are full"
            );
        }
        assert!(spares.spare.len() <= 2 && spares.queues.len() <= 2);
    }
}
