//! Encrypted peers (MSE/PE) on a shard: what sits between a peer's socket bytes and its
//! session.
//!
//! Owns: each peer's transport state (`PeerCrypto`: undecided, plaintext, an MSE handshake in
//! progress, or RC4 both ways), the shard's `HASH('req2', SKEY)` index of its catalog, the DH
//! budget (handshakes per second in total and per IP, `encryption_handshakes_*`), and the
//! three places bytes change form: received bytes are decrypted in place before the session
//! parses them, control bytes are encrypted when they are handed to the kernel, and a batch
//! of blocks is encrypted in its slot after its reads complete and before its send is pushed.
//!
//! Must never: encrypt a byte twice or out of stream order (one send in flight per peer makes
//! submission order the wire order), encrypt memory another peer may send (encrypted peers get
//! no block cache, no file mappings, no splice, no zerocopy: their blocks are read into their
//! own slot), start a DH exchange past the budget, or keep a peer whose handshake failed.

use super::Shard;
use crate::catalog::Catalog;
use crate::config::EngineConfig;
use crate::metainfo::InfoHash;
use crate::shard::peer::Peer;
use crate::stats::{CloseReason, ShardStats};
use crate::wire::handshake::parse_handshake;
use crate::wire::mse::{
    EncryptionMode, Established, Initiator, MseError, Rc4Pair, Responder, PAD_MAX_BYTES,
};
use io_uring::{opcode, squeue};
use rand::Rng;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default `encryption_handshakes_per_sec_max` (per shard): one handshake costs two 768-bit
/// modexps with 160-bit exponents (about 0.1 ms here), so 500/s is at most ~5% of a core.
pub const HANDSHAKES_PER_SEC_DEFAULT: u32 = 500;
/// Default `encryption_handshakes_per_ip_per_sec_max` (per shard).
pub const HANDSHAKES_PER_IP_PER_SEC_DEFAULT: u32 = 20;
/// Highest `encryption_handshakes_per_sec_max` accepted: beyond it a flood takes the core.
pub const HANDSHAKES_PER_SEC_CEILING: u32 = 10_000;
/// The budget's window.
const BUDGET_WINDOW_MS: u64 = 1000;
/// A stream starting with these 2 bytes (pstrlen 19, 'B') is taken for plaintext BitTorrent
/// and parsed as such (a malformed one fails fast as `bad_handshake`); anything else for MSE.
/// A random Ya starts with them once in 65,536 handshakes (that peer's retry succeeds).
const BT_PROTOCOL_PREFIX: &[u8; 2] = b"\x13B";

/// `[engine] encryption*` rules; messages start with `key = value:`.
pub fn validate_config(c: &EngineConfig) -> Result<(), String> {
    let total = c.encryption_handshakes_per_sec_max;
    if total == 0 || total > HANDSHAKES_PER_SEC_CEILING {
        return Err(format!(
            "encryption_handshakes_per_sec_max = {total}: must be between 1 and \
             {HANDSHAKES_PER_SEC_CEILING} (default {HANDSHAKES_PER_SEC_DEFAULT}); to refuse \
             encrypted peers set encryption = \"off\""
        ));
    }
    let per_ip = c.encryption_handshakes_per_ip_per_sec_max;
    if per_ip == 0 || per_ip > total {
        return Err(format!(
            "encryption_handshakes_per_ip_per_sec_max = {per_ip}: must be between 1 and \
             encryption_handshakes_per_sec_max ({total}); default \
             {HANDSHAKES_PER_IP_PER_SEC_DEFAULT}"
        ));
    }
    Ok(())
}

/// One peer's transport.
#[derive(Default)]
pub enum Transport {
    /// Inbound, too few bytes yet to tell plaintext from MSE.
    #[default]
    Undecided,
    /// Plaintext BitTorrent (told, or MSE selected plaintext).
    Plain,
    Responding(Box<Responder>),
    Initiating(Box<Initiator>),
    /// RC4 both ways.
    Rc4(Box<Rc4Pair>),
}

/// What a peer carries for its transport.
#[derive(Default)]
pub struct PeerCrypto {
    pub transport: Transport,
    /// Bytes at the front of the session's out buffer that are already in wire form (MSE
    /// handshake messages): not encrypted again when handed to the kernel.
    pub ready_out_bytes: usize,
    /// An encrypted batch: its send, held back until its reads have completed.
    pub held_send: Option<squeue::Entry>,
    /// Reads of the held batch still in flight.
    pub reads_pending: u32,
    /// A dial-out that stays plaintext even under `prefer`: the redial after an MSE
    /// handshake the peer refused (`plaintext_redial`).
    pub plaintext_only: bool,
}

impl PeerCrypto {
    pub fn is_rc4(&self) -> bool {
        matches!(self.transport, Transport::Rc4(_))
    }

    /// Control bytes leave the session for the kernel: encrypts what is not in wire form
    /// yet; returns the bytes encrypted.
    pub fn seal_control(&mut self, bytes: &mut [u8]) -> u64 {
        let ready = std::mem::take(&mut self.ready_out_bytes).min(bytes.len());
        match &mut self.transport {
            Transport::Rc4(pair) => {
                pair.send.apply(&mut bytes[ready..]);
                (bytes.len() - ready) as u64
            }
            _ => 0,
        }
    }
}

/// The shard's side: the SKEY index and the DH budget.
#[derive(Default)]
pub struct ShardCrypto {
    /// `HASH('req2', info-hash)` -> info-hash for every torrent of `indexed` (v1 and the
    /// truncated v2 hash), built on the first MSE peer after a catalog swap.
    skeys: HashMap<[u8; 20], InfoHash>,
    indexed: Option<Arc<Catalog>>,
    window_start: Option<Instant>,
    window_total: u32,
    /// Handshakes per source this window; at most `encryption_handshakes_per_sec_max`
    /// entries (only admitted handshakes are counted), cleared each window.
    window_per_ip: HashMap<(bool, u128), u32>,
}

impl ShardCrypto {
    fn index(&mut self, catalog: &Arc<Catalog>) -> &HashMap<[u8; 20], InfoHash> {
        let fresh = self
            .indexed
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, catalog));
        if !fresh {
            self.skeys.clear();
            for t in catalog.torrents() {
                let mut add = |h: InfoHash| {
                    self.skeys.insert(crate::wire::mse::req2_hash(&h), h);
                };
                add(t.info_hash);
                if let Some(v2) = t.info_hash_v2 {
                    let mut short = [0u8; 20];
                    short.copy_from_slice(&v2[..20]);
                    add(InfoHash(short));
                }
            }
            self.indexed = Some(catalog.clone());
        }
        &self.skeys
    }

    /// One more DH exchange for `ip` within this second's budget, or why not.
    fn admit(&mut self, ip: &IpAddr, now: Instant, config: &EngineConfig) -> Result<(), MseError> {
        let expired = self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_millis(BUDGET_WINDOW_MS));
        if expired {
            self.window_start = Some(now);
            self.window_total = 0;
            self.window_per_ip.clear();
        }
        if self.window_total >= config.encryption_handshakes_per_sec_max {
            return Err(MseError::RateLimited);
        }
        let (source, _) = crate::shard::admission::group_keys(ip);
        let n = self.window_per_ip.entry(source).or_insert(0);
        if *n >= config.encryption_handshakes_per_ip_per_sec_max {
            return Err(MseError::RateLimited);
        }
        *n += 1;
        self.window_total += 1;
        debug_assert!(self.window_per_ip.len() <= self.window_total as usize);
        Ok(())
    }
}

fn random_private() -> [u8; crate::wire::mse::PRIVATE_KEY_BYTES] {
    rand::random()
}

fn random_pad_bytes() -> usize {
    rand::thread_rng().gen_range(0..=PAD_MAX_BYTES)
}

impl Shard {
    /// Received bytes (`recv_buf[before..recv_len]` are new) meet the peer's transport.
    /// Ok(true): the buffer holds plaintext for the session; Ok(false): an MSE handshake
    /// is still under way; Err: close the peer.
    pub(super) fn transport_input(&mut self, idx: u32, before: usize) -> Result<bool, CloseReason> {
        let (now, mode) = (self.now, self.config.encryption);
        let Some(peer) = self.peers.get_mut(idx) else {
            return Ok(false);
        };
        let result = match &mut peer.crypto.transport {
            Transport::Plain => return Ok(true),
            Transport::Rc4(pair) => {
                let new = &mut peer.recv_buf[before.min(peer.recv_len)..peer.recv_len];
                pair.recv.apply(new);
                self.stats.encrypted_bytes += new.len() as u64;
                return Ok(true);
            }
            Transport::Undecided => {
                let buf = &peer.recv_buf[..peer.recv_len];
                let n = buf.len().min(BT_PROTOCOL_PREFIX.len());
                if buf[..n] == BT_PROTOCOL_PREFIX[..n] || mode == EncryptionMode::Off {
                    // Plaintext (or MSE off: the session refuses what is not a handshake).
                    if n < BT_PROTOCOL_PREFIX.len() && mode != EncryptionMode::Off {
                        return Ok(true);
                    }
                    if mode == EncryptionMode::Require {
                        Err(MseError::PlaintextRefused)
                    } else {
                        peer.crypto.transport = Transport::Plain;
                        return Ok(true);
                    }
                } else {
                    // MSE: every DH exchange is paid for before it is done.
                    let ip = peer.addr.ip();
                    self.crypto.admit(&ip, now, &self.config).map(|()| {
                        let r = Responder::new(random_private(), random_pad_bytes(), mode);
                        peer.crypto.transport = Transport::Responding(Box::new(r));
                    })
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            return Err(fail(&mut self.stats, e));
        }
        let skeys = self.crypto.index(&self.catalog);
        let input = &peer.recv_buf[..peer.recv_len];
        let out = peer.session.out_mut();
        let fed = match &mut peer.crypto.transport {
            Transport::Responding(r) => r.feed(input, out, &|h| skeys.get(h).copied()),
            Transport::Initiating(i) => i.feed(input, out),
            _ => return Ok(true),
        };
        // Everything written so far is handshake bytes in wire form.
        peer.crypto.ready_out_bytes = out.len();
        let progress = fed.map_err(|e| fail(&mut self.stats, e))?;
        peer.recv_buf
            .copy_within(progress.consumed..peer.recv_len, 0);
        peer.recv_len -= progress.consumed;
        let Some(done) = progress.established else {
            return Ok(false);
        };
        self.established(idx, done);
        Ok(true)
    }

    /// The handshake finished: the rest of the buffer is payload (decrypted now), after the
    /// initial payload the peer sent inside the handshake.
    fn established(&mut self, idx: u32, done: Established) {
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        peer.session.expect_info_hash(done.info_hash);
        let ia = done.initial_payload;
        let rest = peer.recv_len;
        match done.cipher {
            Some(mut pair) => {
                pair.recv.apply(&mut peer.recv_buf[..rest]);
                self.stats.encrypted_bytes += rest as u64;
                self.stats.encrypted_connections += 1;
                peer.crypto.transport = Transport::Rc4(Box::new(pair));
            }
            None => peer.crypto.transport = Transport::Plain,
        }
        if ia.is_empty() {
            return;
        }
        if peer.recv_buf.len() < rest + ia.len() {
            // At most 64 KiB (len(IA) is a u16), counted against the receive budget.
            peer.recv_buf.resize(rest + ia.len(), 0);
            self.recv.charge(peer);
        }
        peer.recv_buf.copy_within(..rest, ia.len());
        peer.recv_buf[..ia.len()].copy_from_slice(&ia);
        peer.recv_len = rest + ia.len();
    }

    /// The peer shut its side: in the middle of a handshake, that is a failure (`truncated`).
    pub(super) fn on_transport_eof(&mut self, idx: u32) {
        let handshaking = self.peers.get(idx).is_some_and(|p| {
            matches!(
                p.crypto.transport,
                Transport::Responding(_) | Transport::Initiating(_)
            )
        });
        if handshaking {
            fail(&mut self.stats, MseError::Truncated);
        }
    }

    /// A dial-out connected: under `prefer` and `require` its BitTorrent handshake becomes
    /// the initial payload of an MSE handshake it starts.
    pub(super) fn start_outbound_transport(&mut self, idx: u32) {
        let mode = self.config.encryption;
        let Some(peer) = self.peers.get_mut(idx) else {
            return;
        };
        let plain = match mode {
            EncryptionMode::Require => false,
            EncryptionMode::Prefer => peer.crypto.plaintext_only,
            EncryptionMode::Off | EncryptionMode::Allow => true,
        };
        if plain {
            peer.crypto.transport = Transport::Plain;
            return;
        }
        let out = peer.session.out_mut();
        let Ok(Some(hs)) = parse_handshake(out) else {
            peer.crypto.transport = Transport::Plain;
            return;
        };
        let ia = std::mem::take(out);
        let init = Initiator::new(
            random_private(),
            random_pad_bytes(),
            InfoHash(hs.info_hash),
            mode.provide(),
            ia,
            out,
        );
        peer.crypto.ready_out_bytes = out.len();
        peer.crypto.transport = Transport::Initiating(Box::new(init));
    }
}

impl Shard {
    /// Under `prefer`, a dial-out whose MSE handshake the peer ended (a client set to refuse
    /// encryption closes on the DH key) is dialed once more in plaintext, as libtorrent does;
    /// the redial itself is never retried. Under `require` there is no plaintext fallback.
    pub(super) fn plaintext_redial(&mut self, idx: u32) {
        if self.config.encryption != EncryptionMode::Prefer {
            return;
        }
        let Some(peer) = self.peers.get(idx) else {
            return;
        };
        if !matches!(peer.crypto.transport, Transport::Initiating(_)) {
            return;
        }
        let Some(info_hash) = peer.session.dialed_for().map(|t| t.info_hash) else {
            return;
        };
        let addr = peer.addr;
        self.stats.encryption_plaintext_redials += 1;
        if let Some(new) = self.dial(addr, info_hash) {
            if let Some(p) = self.peers.get_mut(new) {
                p.crypto.plaintext_only = true;
            }
        }
    }
}

fn fail(stats: &mut ShardStats, e: MseError) -> CloseReason {
    stats.encryption_failures[e.index()] += 1;
    CloseReason::EncryptionFailed
}

/// An encrypted peer's batch: its send is held back until its reads complete (the bytes
/// must be in the slot before they are encrypted). `chain` is the batch's chain; returns
/// the entries to push now.
pub fn hold_send(peer: &mut Peer, chain: &mut Vec<squeue::Entry>) -> bool {
    if !peer.crypto.is_rc4() || chain.len() < 2 {
        return false;
    }
    debug_assert!(peer.crypto.held_send.is_none());
    peer.crypto.held_send = chain.pop();
    peer.crypto.reads_pending = chain.len() as u32;
    true
}

/// A read of an encrypted batch completed: after the last one, the send to push (the slot
/// encrypted first), or a no-op in its place when a read failed (its completion then fails
/// the batch as a cancelled send would).
pub fn after_read(
    peer: &mut Peer,
    slot_bytes: Option<&mut [u8]>,
    failed: bool,
) -> Option<(squeue::Entry, u64)> {
    peer.crypto.held_send.as_ref()?;
    peer.crypto.reads_pending = peer.crypto.reads_pending.saturating_sub(1);
    if peer.crypto.reads_pending > 0 {
        return None;
    }
    let send = peer.crypto.held_send.take()?;
    if failed {
        let nop = opcode::Nop::new().build().user_data(send.get_user_data());
        return Some((nop, 0));
    }
    let mut sealed = 0;
    if let (Transport::Rc4(pair), Some(bytes)) = (&mut peer.crypto.transport, slot_bytes) {
        pair.send.apply(bytes);
        sealed = bytes.len() as u64;
    }
    Some((send, sealed))
}

/// An encrypted batch with no read (never planned today: its blocks are all read) is sealed
/// at submission.
pub fn seal_now(peer: &mut Peer, bytes: &mut [u8]) -> u64 {
    match &mut peer.crypto.transport {
        Transport::Rc4(pair) => {
            pair.send.apply(bytes);
            bytes.len() as u64
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dh_budget_bounds_each_source_and_the_shard() {
        // Proves: a source gets at most its per-IP share per window, the shard at most its
        // total, and both start again in the next window.
        let config = EngineConfig {
            encryption_handshakes_per_sec_max: 3,
            encryption_handshakes_per_ip_per_sec_max: 2,
            ..EngineConfig::default()
        };
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "127.0.0.1".parse().unwrap(),
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        );
        let mut crypto = ShardCrypto::default();
        let t0 = Instant::now();
        assert_eq!(crypto.admit(&a, t0, &config), Ok(()));
        assert_eq!(crypto.admit(&a, t0, &config), Ok(()));
        assert_eq!(crypto.admit(&a, t0, &config), Err(MseError::RateLimited));
        assert_eq!(crypto.admit(&b, t0, &config), Ok(()));
        assert_eq!(crypto.admit(&c, t0, &config), Err(MseError::RateLimited));
        let t1 = t0 + Duration::from_millis(BUDGET_WINDOW_MS);
        assert_eq!(crypto.admit(&c, t1, &config), Ok(()));
        assert!(crypto.window_per_ip.len() <= crypto.window_total as usize);
    }

    #[test]
    fn config_refuses_zero_and_inverted_budgets() {
        // Proves: each refusal names its key and says what is accepted.
        let zero = EngineConfig {
            encryption_handshakes_per_sec_max: 0,
            ..EngineConfig::default()
        };
        assert!(validate_config(&zero)
            .unwrap_err()
            .starts_with("encryption_handshakes_per_sec_max = 0"));
        let inverted = EngineConfig {
            encryption_handshakes_per_sec_max: 10,
            encryption_handshakes_per_ip_per_sec_max: 11,
            ..EngineConfig::default()
        };
        assert!(validate_config(&inverted)
            .unwrap_err()
            .starts_with("encryption_handshakes_per_ip_per_sec_max = 11"));
        validate_config(&EngineConfig::default()).unwrap();
    }

    #[test]
    fn control_bytes_in_wire_form_are_not_encrypted_again() {
        // Proves: bytes the handshake wrote are sent as they are; only the session's bytes
        // after them are encrypted, once (a second call encrypts nothing already sealed).
        let mut plain = PeerCrypto {
            ready_out_bytes: 3,
            ..PeerCrypto::default()
        };
        let mut bytes = *b"abcdef";
        assert_eq!(plain.seal_control(&mut bytes), 0);
        assert_eq!(&bytes, b"abcdef");
        assert_eq!(plain.ready_out_bytes, 0);
    }
}
