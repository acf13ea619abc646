//! Seeded fault injection between the kernel's completion queue and the shard, for tests:
//! the VOPR idea at the size of one shard, driven by real sockets and files.
//!
//! With `SQUALL_CHAOS_SEED=N` in a debug build (tests, `cargo run`), every ring delays some
//! completions by a few reaps, so different peers' completions arrive in a shuffled order
//! (one peer's keep theirs: a later op of a peer, like the send linked after its reads, may
//! depend on an earlier one), and turns some successful socket results into what the kernel
//! could also have answered: a recv or a send that fails with ECONNRESET or EPIPE; with
//! `SQUALL_CHAOS_DISK=1` also some block reads, which fail with EIO or come back short (the
//! torrent is then errored until its recheck clears it). The shard must then still answer or
//! close every peer, and free every slot, file use, cache reference and admission count: the
//! shutdown leak audit (`shard/shutdown.rs`) aborts a debug build that leaks, so a chaos run
//! that exits 0 leaked nothing.
//!
//! Owns: the held completions and the seeded generator. Must never: run in a release build,
//! drop or duplicate a completion, reorder two completions of one peer, or fake a result for
//! an op whose resource the kernel handed over (an accepted fd, a connect): only delays those.

use super::token::{OpKind, Token};
use super::Completion;
use std::collections::{HashSet, VecDeque};

/// One completion in this many is held back, for 1 to `HOLD_REAPS_MAX` reaps.
const HOLD_ONE_IN: u64 = 6;
const HOLD_REAPS_MAX: u64 = 4;
/// One socket completion in this many fails (its peer is then closed).
const FAIL_ONE_IN: u64 = 200;
/// `SQUALL_CHAOS_DISK=1`: one block read in this many fails with EIO.
const READ_FAIL_ONE_IN: u64 = 100;

pub struct Chaos {
    state: u64,
    /// Completions held back, in arrival order, with the reap they may go out at.
    held: VecDeque<(u64, Completion)>,
    reap: u64,
    /// Fail block reads too (`SQUALL_CHAOS_DISK=1`).
    disk: bool,
    pub delayed: u64,
    pub failed: u64,
}

impl Chaos {
    /// The chaos of this build and environment: None in release builds or without
    /// `SQUALL_CHAOS_SEED`. `salt` tells rings of one process apart.
    pub fn from_env(salt: u64) -> Option<Chaos> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let seed: u64 = std::env::var("SQUALL_CHAOS_SEED")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        tracing::warn!(
            seed,
            "chaos mode: io_uring completions are delayed and some socket results failed on \
             purpose (SQUALL_CHAOS_SEED, debug builds only)"
        );
        let mut chaos = Chaos::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        chaos.disk = std::env::var("SQUALL_CHAOS_DISK").is_ok_and(|v| v == "1");
        Some(chaos)
    }

    pub fn new(seed: u64) -> Chaos {
        Chaos {
            state: seed | 1,
            held: VecDeque::new(),
            reap: 0,
            disk: false,
            delayed: 0,
            failed: 0,
        }
    }

    /// xorshift64*: small, seeded, good enough to pick faults.
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Completions are being held: the shard should not sleep long on the CQ.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Takes this reap's completions (`out`, in kernel order) and leaves in `out` what goes
    /// to the shard now, each possibly failed. Completions of one peer (or one listener)
    /// keep their order: one is never handed out while an earlier one of the same peer is
    /// still held. Completions of different peers overtake each other freely, as the
    /// kernel's own can.
    pub fn filter(&mut self, out: &mut Vec<Completion>) {
        self.reap += 1;
        for c in out.drain(..) {
            let due = if self.next().is_multiple_of(HOLD_ONE_IN) {
                self.delayed += 1;
                self.reap + 1 + self.next() % HOLD_REAPS_MAX
            } else {
                self.reap
            };
            self.held.push_back((due, c));
        }
        let mut blocked: HashSet<(bool, u32)> = HashSet::new();
        let mut kept = VecDeque::with_capacity(self.held.len());
        while let Some((due, mut c)) = self.held.pop_front() {
            let key = order_key(&c);
            if due > self.reap || blocked.contains(&key) {
                blocked.insert(key);
                kept.push_back((due, c));
                continue;
            }
            self.maybe_fail(&mut c);
            out.push(c);
        }
        self.held = kept;
    }

    fn maybe_fail(&mut self, c: &mut Completion) {
        if c.result <= 0 {
            return;
        }
        let kind = Token::decode(c.user_data).map(|t| t.kind);
        if self.disk && kind == Some(OpKind::ReadBlock) {
            if self.next().is_multiple_of(READ_FAIL_ONE_IN) {
                self.failed += 1;
                // A failed read, or a short one (the file shrank under it).
                c.result = if self.next().is_multiple_of(2) {
                    -libc::EIO
                } else {
                    c.result / 2
                };
            }
            return;
        }
        if !self.next().is_multiple_of(FAIL_ONE_IN) {
            return;
        }
        let errno = match kind {
            Some(OpKind::Recv) => libc::ECONNRESET,
            // A zero-copy send's notification keeps its own meaning; only sends fail.
            Some(OpKind::SendControl) => libc::EPIPE,
            Some(OpKind::SendBatch) if !c.is_notif() => libc::EPIPE,
            _ => return,
        };
        self.failed += 1;
        c.result = -errno;
    }
}

/// What must stay in order: the ops of one peer (its recvs, sends, reads, in the order the
/// kernel completed them) and the accepts of one listener; (true, listener) or (false, peer).
fn order_key(c: &Completion) -> (bool, u32) {
    match Token::decode(c.user_data) {
        Some(t) if t.kind == OpKind::Accept => (true, u32::from(t.slot)),
        Some(t) => (false, t.peer),
        None => (true, u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(user_data: u64) -> Completion {
        Completion {
            user_data,
            result: 1,
            flags: 0,
        }
    }

    #[test]
    fn shuffles_peers_but_keeps_each_peers_order_and_drops_nothing() {
        // Proves: over many reaps every completion comes out exactly once; one peer's come
        // out in the order they went in; different peers' overtake each other (the order
        // seen is not the order sent); the same seed gives the same schedule.
        let run = |seed| {
            let mut chaos = Chaos::new(seed);
            let (mut seen, mut sent) = (Vec::new(), Vec::new());
            let mut per_peer = [0u16; 7];
            let mut out = Vec::new();
            for round in 0..2_000u32 {
                if round < 1_900 {
                    for k in 0..(round % 5) {
                        let peer = (round + k) % 7;
                        let seq = per_peer[peer as usize];
                        per_peer[peer as usize] += 1;
                        let token = Token::new(OpKind::ReadBlock, seq, peer, 0).encode();
                        out.push(c(token));
                        sent.push(token);
                    }
                }
                chaos.filter(&mut out);
                seen.extend(out.iter().map(|x| x.user_data));
                out.clear();
            }
            assert!(!chaos.holding());
            assert!(chaos.delayed > 0);
            (seen, sent)
        };
        let (seen, sent) = run(7);
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        let mut want = sent.clone();
        want.sort_unstable();
        assert_eq!(sorted, want, "every completion exactly once");
        assert_ne!(seen, sent, "peers overtake each other");
        for peer in 0..7u32 {
            let of = |v: &[u64]| -> Vec<u64> {
                v.iter()
                    .copied()
                    .filter(|t| Token::decode(*t).map(|t| t.peer) == Some(peer))
                    .collect()
            };
            assert_eq!(of(&seen), of(&sent), "peer {peer} kept its order");
        }
        assert_eq!(run(7).0, seen);
    }

    #[test]
    fn fails_only_socket_results() {
        // Proves: injected failures land only on recvs and sends (never on an accept, a
        // read, a connect or a notification), as errors those ops really return.
        let mut chaos = Chaos::new(3);
        let kinds = [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::SendControl,
            OpKind::ReadBlock,
            OpKind::SendBatch,
            OpKind::Connect,
        ];
        let mut out = Vec::new();
        let mut failed = 0;
        for i in 0..60_000u32 {
            let kind = kinds[i as usize % kinds.len()];
            out.push(c(Token::new(kind, 0, i % 1000, 0).encode()));
            chaos.filter(&mut out);
            for x in out.drain(..) {
                if x.result < 0 {
                    failed += 1;
                    let kind = Token::decode(x.user_data).map(|t| t.kind);
                    assert!(
                        matches!(
                            kind,
                            Some(OpKind::Recv | OpKind::SendControl | OpKind::SendBatch)
                        ),
                        "{kind:?}"
                    );
                }
            }
        }
        assert!(failed > 0 && failed == chaos.failed);
    }
}
