//! `--encrypt`: the bench's peers speak MSE/PE with RC4 (as a client set to "require
//! encryption" does), so a seeder's encrypted path is measured with the same swarm.
//!
//! Owns: one connection's initiator handshake and RC4 pair, and where it meets the client's
//! buffers: what the peer writes is encrypted right before it is sent (`seal`), what arrives
//! is decrypted before the peer parses it. Must never: encrypt a byte twice (`sealed` marks
//! what is in wire form), or let the handshake buffer grow past the spec's bound.

use squall_engine::metainfo::InfoHash;
use squall_engine::wire::mse::{Initiator, Rc4Pair, CRYPTO_RC4, INITIATOR_SYNC_BYTES_MAX};

/// Handshake bytes the bench buffers at most before the seeder's answer is complete.
const HANDSHAKE_RX_BYTES_MAX: usize = INITIATOR_SYNC_BYTES_MAX + 6 + 512;

pub struct Crypt {
    seed: u64,
    init: Option<Initiator>,
    pair: Option<Rc4Pair>,
    handshake_rx: Vec<u8>,
    /// Bytes at the front of the send queue already in wire form.
    sealed: usize,
}

/// What arrived, once through the transport.
pub enum Received {
    /// Decrypted in place: hand it to the peer.
    InPlace,
    /// Taken by the handshake: nothing for the peer yet.
    Handshaking,
    /// The handshake ended; these bytes (decrypted) follow it.
    Established(Vec<u8>),
}

impl Crypt {
    /// A connection that will speak MSE once connected.
    pub fn pending(seed: u64) -> Crypt {
        Crypt {
            seed,
            init: None,
            pair: None,
            handshake_rx: Vec::new(),
            sealed: 0,
        }
    }

    /// Starts the handshake: the peer's BitTorrent handshake (already in `tx`) becomes the
    /// initial payload; `tx` then holds Ya and PadA.
    pub fn start(&mut self, info_hash: InfoHash, tx: &mut Vec<u8>) {
        let seed = self.seed;
        let ia = std::mem::take(tx);
        let mut private = [0u8; 20];
        for (i, b) in private.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(37) | 1;
        }
        let init = Initiator::new(private, (seed % 64) as usize, info_hash, CRYPTO_RC4, ia, tx);
        self.init = Some(init);
        self.sealed = tx.len();
    }

    pub fn on_recv(&mut self, new: &mut [u8], tx: &mut Vec<u8>) -> Result<Received, String> {
        if let Some(pair) = self.pair.as_mut() {
            pair.recv.apply(new);
            return Ok(Received::InPlace);
        }
        let Some(init) = self.init.as_mut() else {
            return Err("MSE: plaintext selected by a seeder asked for RC4 only".into());
        };
        self.handshake_rx.extend_from_slice(new);
        let before = tx.len();
        let p = init
            .feed(&self.handshake_rx, tx)
            .map_err(|e| format!("MSE handshake failed: {}", e.as_str()))?;
        if tx.len() > before {
            self.sealed = tx.len();
        }
        self.handshake_rx.drain(..p.consumed);
        let Some(done) = p.established else {
            if self.handshake_rx.len() > HANDSHAKE_RX_BYTES_MAX {
                return Err("MSE: handshake answer too long".into());
            }
            return Ok(Received::Handshaking);
        };
        let mut pair = done.cipher.ok_or("MSE: the seeder selected plaintext")?;
        let mut rest = std::mem::take(&mut self.handshake_rx);
        pair.recv.apply(&mut rest);
        self.pair = Some(pair);
        self.init = None;
        Ok(Received::Established(rest))
    }

    /// Encrypts what the peer queued since the last call (in place, once).
    pub fn seal(&mut self, tx: &mut [u8]) {
        if let Some(pair) = self.pair.as_mut() {
            let from = self.sealed.min(tx.len());
            pair.send.apply(&mut tx[from..]);
            self.sealed = tx.len();
        }
    }

    /// The send queue was emptied.
    pub fn on_tx_cleared(&mut self) {
        self.sealed = 0;
    }
}

/// RC4 alone over `total_bytes` (256 KiB at a time, in place): CPU seconds per GB on this
/// thread, for docs/benchmarks.md's "RC4-alone cost" beside the encrypted run.
pub fn rc4_cpu_secs_per_gb(total_bytes: u64) -> f64 {
    // A stream pair from a finished handshake with a local responder.
    let mut pair = local_pair();
    let mut buf = vec![0x5au8; 256 * 1024];
    let start = thread_cpu_secs();
    let mut done = 0u64;
    while done < total_bytes {
        pair.send.apply(&mut buf);
        done += buf.len() as u64;
    }
    std::hint::black_box(&buf);
    (thread_cpu_secs() - start) / (done as f64 / 1e9)
}

fn local_pair() -> Rc4Pair {
    use squall_engine::wire::mse::{req2_hash, EncryptionMode, Responder};
    let h = InfoHash([1; 20]);
    let mut to_b = Vec::new();
    let mut a = Initiator::new([3; 20], 0, h, CRYPTO_RC4, vec![], &mut to_b);
    let mut b = Responder::new([5; 20], 0, EncryptionMode::Require);
    let lookup = |x: &[u8; 20]| (*x == req2_hash(&h)).then_some(h);
    let mut to_a = Vec::new();
    let _ = b.feed(&to_b, &mut to_a, &lookup);
    let mut third = Vec::new();
    let _ = a.feed(&to_a, &mut third);
    let mut reply = Vec::new();
    match b.feed(&third, &mut reply, &lookup) {
        Ok(p) => match p.established.and_then(|e| e.cipher) {
            Some(pair) => pair,
            None => unreachable!("a local RC4 handshake always completes"),
        },
        Err(e) => unreachable!("a local RC4 handshake failed: {}", e.as_str()),
    }
}

fn thread_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass; RUSAGE_THREAD is this thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
