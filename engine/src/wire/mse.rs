//! MSE/PE (Message Stream Encryption, "protocol encryption"): the handshake as a pure state
//! machine, and the RC4 stream pair it yields.
//!
//! Owns: the spec's DH-768 group (its prime, generator 2), key derivation (`req1`, `req2`,
//! `req3`, `keyA`, `keyB`, 1024 discarded keystream bytes), the responder (incoming peers)
//! and the initiator (dial-outs, tests, `squall-bench --encrypt`), `crypto_provide` /
//! `crypto_select`, the padding and initial-payload (IA) rules, and the bounded resync
//! searches for `HASH('req1', S)` (responder) and `ENCRYPT(VC)` (initiator).
//!
//! Must never: touch a socket or a clock, allocate beyond one handshake's bounded state, read
//! past what it was given, search more than the spec's bounds (PadA/PadB at most 512 bytes),
//! accept a pad longer than 512 bytes, or panic on peer input: every bad byte is a typed
//! `MseError`. Randomness (private keys, pad lengths) comes in as arguments, so a handshake is
//! a deterministic value a test drives by hand.
//!
//! Spec: <https://wiki.vuze.com/w/Message_Stream_Encryption> (the text libtorrent, rqbit and
//! Transmission follow).

use crate::metainfo::InfoHash;
use num_bigint::BigUint;
use rc4::consts::U20;
use rc4::{KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

/// Bytes of a DH public key (768 bits, big-endian, zero-padded).
pub const DH_KEY_BYTES: usize = 96;
/// The spec's bound on PadA, PadB, PadC and PadD.
pub const PAD_MAX_BYTES: usize = 512;
/// Verification constant: 8 zero bytes.
pub const VC: [u8; 8] = [0; 8];
/// Keystream bytes each RC4 stream discards before use (the spec's RC4-drop1024).
pub const RC4_DISCARD_BYTES: usize = 1024;
/// `crypto_provide` / `crypto_select` bits.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
pub const CRYPTO_RC4: u32 = 0x02;
/// Private exponent bytes: the spec asks for at least 160 bits.
pub const PRIVATE_KEY_BYTES: usize = 20;
/// The responder looks for `HASH('req1', S)` no further than Ya + PadA max + the hash.
pub const RESPONDER_SYNC_BYTES_MAX: usize = DH_KEY_BYTES + PAD_MAX_BYTES + 20;
/// The initiator looks for `ENCRYPT(VC)` no further than Yb + PadB max + VC.
pub const INITIATOR_SYNC_BYTES_MAX: usize = DH_KEY_BYTES + PAD_MAX_BYTES + VC.len();
/// ENCRYPT(VC, crypto_provide, len(PadC)): 8 + 4 + 2 bytes.
const VC_PROVIDE_PADLEN_BYTES: usize = 14;

/// The spec's 768-bit prime (Oakley group 1), big-endian.
pub const DH_PRIME: [u8; DH_KEY_BYTES] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63,
];

/// Why a handshake failed (`squall_encryption_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MseError {
    /// The shard's DH budget (total or per IP) is spent this second.
    RateLimited,
    /// `encryption = "require"` and the peer spoke plaintext BitTorrent.
    PlaintextRefused,
    /// A DH public key outside [2, p-2].
    BadPublicKey,
    /// `HASH('req1', S)` (or the initiator's `ENCRYPT(VC)`) not within the spec's bound.
    SyncNotFound,
    /// `HASH('req2', SKEY)` names no torrent in the catalog.
    UnknownTorrent,
    /// The decrypted VC was not 8 zero bytes.
    BadVerification,
    /// PadC or PadD longer than 512 bytes.
    PadTooLong,
    /// No method both sides accept (`crypto_provide` vs the configured `encryption`), or a
    /// `crypto_select` that was not offered.
    NoCommonMethod,
    /// The peer closed its side in the middle of the handshake (e.g. a truncated DH key);
    /// counted by the shard, which sees the end of the stream.
    Truncated,
}

impl MseError {
    pub const ALL: [MseError; 9] = [
        MseError::RateLimited,
        MseError::PlaintextRefused,
        MseError::BadPublicKey,
        MseError::SyncNotFound,
        MseError::UnknownTorrent,
        MseError::BadVerification,
        MseError::PadTooLong,
        MseError::NoCommonMethod,
        MseError::Truncated,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MseError::RateLimited => "rate_limited",
            MseError::PlaintextRefused => "plaintext_refused",
            MseError::BadPublicKey => "bad_public_key",
            MseError::SyncNotFound => "sync_not_found",
            MseError::UnknownTorrent => "unknown_torrent",
            MseError::BadVerification => "bad_verification",
            MseError::PadTooLong => "pad_too_long",
            MseError::NoCommonMethod => "no_common_method",
            MseError::Truncated => "truncated",
        }
    }
    pub fn index(self) -> usize {
        MseError::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// `encryption` in `[engine]`: what Squall accepts and what it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Plaintext only: an MSE handshake is a bad handshake.
    Off,
    /// Accept both; answer plaintext when the peer offers it (least CPU).
    Allow,
    /// Accept both; answer RC4 when the peer offers it; dial-outs start with MSE.
    Prefer,
    /// RC4 only: plaintext handshakes and plaintext-only offers are refused.
    Require,
}

impl EncryptionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionMode::Off => "off",
            EncryptionMode::Allow => "allow",
            EncryptionMode::Prefer => "prefer",
            EncryptionMode::Require => "require",
        }
    }
    /// The method a responder picks from the peer's `crypto_provide`.
    pub fn select(self, provide: u32) -> Option<u32> {
        let (plain, rc4) = (provide & CRYPTO_PLAINTEXT != 0, provide & CRYPTO_RC4 != 0);
        match self {
            EncryptionMode::Off => None,
            EncryptionMode::Allow if plain => Some(CRYPTO_PLAINTEXT),
            EncryptionMode::Allow | EncryptionMode::Prefer if rc4 => Some(CRYPTO_RC4),
            EncryptionMode::Prefer if plain => Some(CRYPTO_PLAINTEXT),
            EncryptionMode::Require if rc4 => Some(CRYPTO_RC4),
            _ => None,
        }
    }
    /// The methods an initiator offers.
    pub fn provide(self) -> u32 {
        match self {
            EncryptionMode::Require => CRYPTO_RC4,
            _ => CRYPTO_RC4 | CRYPTO_PLAINTEXT,
        }
    }
}

fn sha1_parts(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `HASH('req2', SKEY)`: what the responder's torrent index is keyed by.
pub fn req2_hash(info_hash: &InfoHash) -> [u8; 20] {
    sha1_parts(&[b"req2", &info_hash.0])
}

/// g^x mod p for a private exponent (big-endian bytes), as 96 big-endian bytes.
pub fn public_key(private: &[u8; PRIVATE_KEY_BYTES]) -> [u8; DH_KEY_BYTES] {
    let p = BigUint::from_bytes_be(&DH_PRIME);
    let y = BigUint::from(2u32).modpow(&BigUint::from_bytes_be(private), &p);
    to_key_bytes(&y)
}

/// The shared secret S = Y^x mod p; Err for a public key outside [2, p-2] (0, 1 and p-1
/// give a secret an eavesdropper knows).
pub fn shared_secret(
    private: &[u8; PRIVATE_KEY_BYTES],
    their_public: &[u8],
) -> Result<[u8; DH_KEY_BYTES], MseError> {
    let p = BigUint::from_bytes_be(&DH_PRIME);
    let y = BigUint::from_bytes_be(their_public);
    let p_minus_1 = &p - 1u32;
    if y < BigUint::from(2u32) || y >= p_minus_1 {
        return Err(MseError::BadPublicKey);
    }
    Ok(to_key_bytes(
        &y.modpow(&BigUint::from_bytes_be(private), &p),
    ))
}

fn to_key_bytes(n: &BigUint) -> [u8; DH_KEY_BYTES] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; DH_KEY_BYTES];
    // n < p < 2^768, so it has at most 96 bytes.
    let start = DH_KEY_BYTES.saturating_sub(bytes.len());
    let take = bytes.len().min(DH_KEY_BYTES);
    out[start..].copy_from_slice(&bytes[bytes.len() - take..]);
    out
}

/// One direction's RC4 stream, with the spec's first 1024 bytes already discarded.
pub struct Rc4Stream(Rc4<U20>);

impl Rc4Stream {
    fn new(label: &[u8], secret: &[u8; DH_KEY_BYTES], skey: &InfoHash) -> Rc4Stream {
        let key = sha1_parts(&[label, secret, &skey.0]);
        let mut rc4 = Rc4::<U20>::new(&key.into());
        let mut discard = [0u8; RC4_DISCARD_BYTES];
        rc4.apply_keystream(&mut discard);
        Rc4Stream(rc4)
    }
    /// Encrypts or decrypts in place (RC4 is its own inverse), advancing the stream.
    pub fn apply(&mut self, bytes: &mut [u8]) {
        self.0.apply_keystream(bytes);
    }
}

impl std::fmt::Debug for Rc4Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rc4Stream")
    }
}

/// The two streams of an RC4 connection: `send` encrypts what we write, `recv` decrypts
/// what we read.
#[derive(Debug)]
pub struct Rc4Pair {
    pub send: Rc4Stream,
    pub recv: Rc4Stream,
}

/// A finished handshake.
#[derive(Debug)]
pub struct Established {
    /// The torrent the peer named (SKEY).
    pub info_hash: InfoHash,
    /// RC4 both ways from here; None: plaintext from here.
    pub cipher: Option<Rc4Pair>,
    /// The peer's initial payload, decrypted (the start of its BitTorrent stream).
    pub initial_payload: Vec<u8>,
}

/// What one `feed` call did.
#[derive(Debug)]
pub struct Progress {
    /// Bytes of the input taken; the caller drops them and feeds the rest (plus whatever
    /// arrives) next time.
    pub consumed: usize,
    /// Some when the handshake finished: the bytes after `consumed` are the payload stream.
    pub established: Option<Established>,
}

impl Progress {
    fn wait(consumed: usize) -> Result<Progress, MseError> {
        Ok(Progress {
            consumed,
            established: None,
        })
    }
}

enum RespState {
    /// Waiting for the 96 bytes of Ya.
    PublicKey,
    /// Ya read, Yb sent: looking for `HASH('req1', S)` in PadA.
    Sync {
        secret: Box<[u8; DH_KEY_BYTES]>,
        req1: [u8; 20],
        /// PadA bytes already searched (no match starts before this): each byte is searched
        /// once however the bytes arrive.
        scanned: usize,
    },
    /// `HASH('req1', S)` found and taken: the 20 bytes naming SKEY, then the encrypted VC,
    /// crypto_provide and len(PadC).
    Skey {
        secret: Box<[u8; DH_KEY_BYTES]>,
    },
    /// PadC and len(IA) (`ia_len` None), then IA.
    Payload {
        info_hash: InfoHash,
        pair: Box<Rc4Pair>,
        select: u32,
        pad_c: usize,
        ia_len: Option<usize>,
    },
    Done,
}

/// The incoming side (B). Feed it what the peer sent; it writes what to send to `out`.
pub struct Responder {
    state: RespState,
    private: [u8; PRIVATE_KEY_BYTES],
    pad_b_bytes: usize,
    mode: EncryptionMode,
}

impl Responder {
    /// `private`: random bytes (the exponent); `pad_b_bytes` (<= 512): random length of PadB,
    /// sent as zeros (it only hides the handshake's length).
    pub fn new(private: [u8; PRIVATE_KEY_BYTES], pad_b_bytes: usize, mode: EncryptionMode) -> Self {
        Responder {
            state: RespState::PublicKey,
            private,
            pad_b_bytes: pad_b_bytes.min(PAD_MAX_BYTES),
            mode,
        }
    }

    /// Takes what the peer sent so far (`input` starts where the last call's `consumed`
    /// ended). `skey` maps `HASH('req2', SKEY)` to the torrent. Appends what to send to `out`.
    /// Loops until it needs more bytes or finishes; each step is bounded by the spec.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        skey: &dyn Fn(&[u8; 20]) -> Option<InfoHash>,
    ) -> Result<Progress, MseError> {
        let mut at = 0usize;
        loop {
            let rest = &input[at..];
            match &mut self.state {
                RespState::PublicKey => {
                    if rest.len() < DH_KEY_BYTES {
                        return Progress::wait(at);
                    }
                    let secret = shared_secret(&self.private, &rest[..DH_KEY_BYTES])?;
                    out.extend_from_slice(&public_key(&self.private));
                    out.resize(out.len() + self.pad_b_bytes, 0);
                    at += DH_KEY_BYTES;
                    self.state = RespState::Sync {
                        req1: sha1_parts(&[b"req1", &secret]),
                        secret: Box::new(secret),
                        scanned: 0,
                    };
                }
                RespState::Sync {
                    secret,
                    req1,
                    scanned,
                } => {
                    // The hash starts within PadA: at offset <= 512 after Ya.
                    let window = rest.len().min(PAD_MAX_BYTES + 20);
                    let from = (*scanned).min(window);
                    match find(&rest[from..window], req1) {
                        Some(pos) => {
                            at += from + pos + 20;
                            let secret = std::mem::replace(secret, Box::new([0; DH_KEY_BYTES]));
                            self.state = RespState::Skey { secret };
                        }
                        None if rest.len() >= PAD_MAX_BYTES + 20 => {
                            return Err(MseError::SyncNotFound)
                        }
                        None => {
                            *scanned = window.saturating_sub(req1.len() - 1);
                            return Progress::wait(at);
                        }
                    }
                }
                RespState::Skey { secret } => {
                    if rest.len() < 20 + VC_PROVIDE_PADLEN_BYTES {
                        return Progress::wait(at);
                    }
                    let req3 = sha1_parts(&[b"req3", &secret[..]]);
                    let mut req2 = [0u8; 20];
                    for (i, b) in req2.iter_mut().enumerate() {
                        *b = rest[i] ^ req3[i];
                    }
                    let info_hash = skey(&req2).ok_or(MseError::UnknownTorrent)?;
                    let mut pair = Box::new(Rc4Pair {
                        send: Rc4Stream::new(b"keyB", secret, &info_hash),
                        recv: Rc4Stream::new(b"keyA", secret, &info_hash),
                    });
                    let mut head = [0u8; VC_PROVIDE_PADLEN_BYTES];
                    head.copy_from_slice(&rest[20..20 + VC_PROVIDE_PADLEN_BYTES]);
                    pair.recv.apply(&mut head);
                    if head[..8] != VC {
                        return Err(MseError::BadVerification);
                    }
                    let provide = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                    let pad_c = usize::from(u16::from_be_bytes([head[12], head[13]]));
                    if pad_c > PAD_MAX_BYTES {
                        return Err(MseError::PadTooLong);
                    }
                    let select = self.mode.select(provide).ok_or(MseError::NoCommonMethod)?;
                    at += 20 + VC_PROVIDE_PADLEN_BYTES;
                    self.state = RespState::Payload {
                        info_hash,
                        pair,
                        select,
                        pad_c,
                        ia_len: None,
                    };
                }
                RespState::Payload {
                    pair,
                    pad_c,
                    ia_len,
                    ..
                } if ia_len.is_none() => {
                    // PadC (decrypted and dropped: it carries nothing), then len(IA).
                    if rest.len() < *pad_c + 2 {
                        return Progress::wait(at);
                    }
                    let mut pad = [0u8; PAD_MAX_BYTES + 2];
                    pad[..*pad_c + 2].copy_from_slice(&rest[..*pad_c + 2]);
                    pair.recv.apply(&mut pad[..*pad_c + 2]);
                    *ia_len = Some(usize::from(u16::from_be_bytes([
                        pad[*pad_c],
                        pad[*pad_c + 1],
                    ])));
                    at += *pad_c + 2;
                }
                RespState::Payload { ia_len, .. } => {
                    let ia = ia_len.unwrap_or(0);
                    if rest.len() < ia {
                        return Progress::wait(at);
                    }
                    let RespState::Payload {
                        info_hash,
                        mut pair,
                        select,
                        ..
                    } = std::mem::replace(&mut self.state, RespState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    let mut initial_payload = rest[..ia].to_vec();
                    pair.recv.apply(&mut initial_payload);
                    at += ia;
                    // ENCRYPT(VC, crypto_select, len(PadD) = 0): always RC4, whatever the
                    // selected method is for the stream after it.
                    let mut reply = [0u8; VC_PROVIDE_PADLEN_BYTES];
                    reply[8..12].copy_from_slice(&select.to_be_bytes());
                    pair.send.apply(&mut reply);
                    out.extend_from_slice(&reply);
                    return Ok(Progress {
                        consumed: at,
                        established: Some(Established {
                            info_hash,
                            cipher: (select == CRYPTO_RC4).then_some(*pair),
                            initial_payload,
                        }),
                    });
                }
                RespState::Done => return Progress::wait(at),
            }
        }
    }
}

enum InitState {
    /// Ya and PadA sent: waiting for Yb.
    PublicKey,
    /// Looking for ENCRYPT(VC) in PadB.
    Sync {
        pair: Box<Rc4Pair>,
        vc: [u8; 8],
        /// PadB bytes already searched (as the responder's `scanned`).
        scanned: usize,
    },
    /// ENCRYPT(VC) found: crypto_select and len(PadD), then PadD.
    Select {
        pair: Box<Rc4Pair>,
    },
    PadD {
        pair: Box<Rc4Pair>,
        select: u32,
        pad_d: usize,
    },
    Done,
}

/// The outgoing side (A): `new` writes Ya and PadA; feed it what the responder sent.
pub struct Initiator {
    state: InitState,
    private: [u8; PRIVATE_KEY_BYTES],
    info_hash: InfoHash,
    provide: u32,
    initial_payload: Vec<u8>,
}

impl Initiator {
    /// Starts a handshake for `info_hash`, offering `provide`; `initial_payload` (the
    /// BitTorrent handshake, usually) goes out encrypted with the third message.
    pub fn new(
        private: [u8; PRIVATE_KEY_BYTES],
        pad_a_bytes: usize,
        info_hash: InfoHash,
        provide: u32,
        initial_payload: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Initiator {
        out.extend_from_slice(&public_key(&private));
        out.resize(out.len() + pad_a_bytes.min(PAD_MAX_BYTES), 0);
        Initiator {
            state: InitState::PublicKey,
            private,
            info_hash,
            provide,
            initial_payload,
        }
    }

    /// As `Responder::feed`; `established.initial_payload` is always empty here.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, MseError> {
        let mut at = 0usize;
        loop {
            let rest = &input[at..];
            match &mut self.state {
                InitState::PublicKey => {
                    if rest.len() < DH_KEY_BYTES {
                        return Progress::wait(at);
                    }
                    let secret = shared_secret(&self.private, &rest[..DH_KEY_BYTES])?;
                    at += DH_KEY_BYTES;
                    let skey = self.info_hash;
                    let mut pair = Box::new(Rc4Pair {
                        send: Rc4Stream::new(b"keyA", &secret, &skey),
                        recv: Rc4Stream::new(b"keyB", &secret, &skey),
                    });
                    out.extend_from_slice(&sha1_parts(&[b"req1", &secret]));
                    let req2 = req2_hash(&skey);
                    let req3 = sha1_parts(&[b"req3", &secret]);
                    out.extend(req2.iter().zip(req3.iter()).map(|(a, b)| a ^ b));
                    let ia_len = u16::try_from(self.initial_payload.len()).unwrap_or(u16::MAX);
                    let start = out.len();
                    out.extend_from_slice(&VC);
                    out.extend_from_slice(&self.provide.to_be_bytes());
                    out.extend_from_slice(&0u16.to_be_bytes());
                    out.extend_from_slice(&ia_len.to_be_bytes());
                    out.extend_from_slice(&self.initial_payload[..usize::from(ia_len)]);
                    pair.send.apply(&mut out[start..]);
                    self.initial_payload = Vec::new();
                    let mut vc = VC;
                    pair.recv.apply(&mut vc);
                    self.state = InitState::Sync {
                        pair,
                        vc,
                        scanned: 0,
                    };
                }
                InitState::Sync { vc, scanned, .. } => {
                    let window = rest.len().min(PAD_MAX_BYTES + VC.len());
                    let from = (*scanned).min(window);
                    match find(&rest[from..window], vc) {
                        Some(pos) => {
                            at += from + pos + VC.len();
                            let InitState::Sync { pair, .. } =
                                std::mem::replace(&mut self.state, InitState::Done)
                            else {
                                unreachable!("matched above")
                            };
                            self.state = InitState::Select { pair };
                        }
                        None if rest.len() >= PAD_MAX_BYTES + VC.len() => {
                            return Err(MseError::SyncNotFound)
                        }
                        None => {
                            *scanned = window.saturating_sub(VC.len() - 1);
                            return Progress::wait(at);
                        }
                    }
                }
                InitState::Select { pair } => {
                    if rest.len() < 6 {
                        return Progress::wait(at);
                    }
                    let mut head = [0u8; 6];
                    head.copy_from_slice(&rest[..6]);
                    pair.recv.apply(&mut head);
                    let select = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                    let pad_d = usize::from(u16::from_be_bytes([head[4], head[5]]));
                    if pad_d > PAD_MAX_BYTES {
                        return Err(MseError::PadTooLong);
                    }
                    let offered = select & self.provide;
                    if select.count_ones() != 1 || offered == 0 {
                        return Err(MseError::NoCommonMethod);
                    }
                    at += 6;
                    let InitState::Select { pair } =
                        std::mem::replace(&mut self.state, InitState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    self.state = InitState::PadD {
                        pair,
                        select,
                        pad_d,
                    };
                }
                InitState::PadD { pair, pad_d, .. } => {
                    if rest.len() < *pad_d {
                        return Progress::wait(at);
                    }
                    let mut pad = [0u8; PAD_MAX_BYTES];
                    pad[..*pad_d].copy_from_slice(&rest[..*pad_d]);
                    pair.recv.apply(&mut pad[..*pad_d]);
                    at += *pad_d;
                    let InitState::PadD { pair, select, .. } =
                        std::mem::replace(&mut self.state, InitState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    return Ok(Progress {
                        consumed: at,
                        established: Some(Established {
                            info_hash: self.info_hash,
                            cipher: (select == CRYPTO_RC4).then_some(*pair),
                            initial_payload: Vec::new(),
                        }),
                    });
                }
                InitState::Done => return Progress::wait(at),
            }
        }
    }
}

/// First position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TORRENT: InfoHash = InfoHash([7u8; 20]);

    fn lookup(h: &[u8; 20]) -> Option<InfoHash> {
        (*h == req2_hash(&TORRENT)).then_some(TORRENT)
    }

    /// Runs both sides to completion over chunked deliveries; returns (initiator, responder).
    fn run(
        chunk: usize,
        pad_a: usize,
        pad_b: usize,
        provide: u32,
        mode: EncryptionMode,
        ia: &[u8],
    ) -> Result<(Established, Established, Vec<u8>), MseError> {
        let mut a_out = Vec::new();
        let mut init = Initiator::new([3; 20], pad_a, TORRENT, provide, ia.to_vec(), &mut a_out);
        let mut resp = Responder::new([5; 20], pad_b, mode);
        let (mut to_b, mut to_a) = (a_out, Vec::new());
        let (mut b_in, mut a_in) = (Vec::new(), Vec::new());
        let (mut a_done, mut b_done) = (None, None);
        for _ in 0..10_000 {
            if b_done.is_none() && !to_b.is_empty() {
                let n = chunk.min(to_b.len());
                b_in.extend(to_b.drain(..n));
                let p = resp.feed(&b_in, &mut to_a, &lookup)?;
                b_in.drain(..p.consumed);
                if p.established.is_some() {
                    b_done = p.established;
                }
            }
            if a_done.is_none() && !to_a.is_empty() {
                let n = chunk.min(to_a.len());
                a_in.extend(to_a.drain(..n));
                let p = init.feed(&a_in, &mut to_b)?;
                a_in.drain(..p.consumed);
                if p.established.is_some() {
                    a_done = p.established;
                }
            }
            if let (Some(_), Some(_)) = (&a_done, &b_done) {
                break;
            }
        }
        let left: Vec<u8> = b_in.into_iter().chain(to_b).collect();
        match (a_done, b_done) {
            (Some(a), Some(b)) => Ok((a, b, left)),
            _ => Err(MseError::SyncNotFound),
        }
    }

    #[test]
    fn both_sides_agree_on_rc4_and_carry_the_initial_payload() {
        // Proves: initiator and responder derive the same streams (A's send is B's recv and
        // the reverse), the IA arrives decrypted, and nothing is left over.
        let (mut a, mut b, left) =
            run(7, 100, 33, CRYPTO_RC4, EncryptionMode::Allow, b"hello ia").unwrap();
        assert!(left.is_empty());
        assert_eq!(b.initial_payload, b"hello ia");
        assert_eq!(b.info_hash, TORRENT);
        let (ac, bc) = (a.cipher.as_mut().unwrap(), b.cipher.as_mut().unwrap());
        let mut msg = *b"piece bytes";
        ac.send.apply(&mut msg);
        assert_ne!(&msg, b"piece bytes");
        bc.recv.apply(&mut msg);
        assert_eq!(&msg, b"piece bytes");
        let mut back = *b"answer";
        bc.send.apply(&mut back);
        ac.recv.apply(&mut back);
        assert_eq!(&back, b"answer");
    }

    #[test]
    fn modes_select_as_documented() {
        // Proves: allow answers plaintext when offered, prefer and require pick RC4, require
        // refuses a plaintext-only offer.
        let both = CRYPTO_RC4 | CRYPTO_PLAINTEXT;
        let (_, b, _) = run(1000, 0, 0, both, EncryptionMode::Allow, b"").unwrap();
        assert!(b.cipher.is_none());
        let (_, b, _) = run(1000, 0, 0, both, EncryptionMode::Prefer, b"").unwrap();
        assert!(b.cipher.is_some());
        let (_, b, _) = run(1000, 0, 0, CRYPTO_RC4, EncryptionMode::Allow, b"").unwrap();
        assert!(b.cipher.is_some());
        let err = run(1000, 0, 0, CRYPTO_PLAINTEXT, EncryptionMode::Require, b"");
        assert_eq!(err.err(), Some(MseError::NoCommonMethod));
        assert_eq!(EncryptionMode::Off.select(both), None);
    }

    #[test]
    fn hostile_handshakes_fail_with_their_reason() {
        // Proves: a public key of 0/1/p-1, a PadA past 512 bytes, a wrong SKEY and a PadC past
        // 512 bytes each end with a typed error, never a panic or an unbounded wait.
        let mut out = Vec::new();
        let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
        assert_eq!(
            r.feed(&[0u8; 96], &mut out, &lookup).err(),
            Some(MseError::BadPublicKey)
        );
        let mut p1 = DH_PRIME;
        p1[95] -= 1;
        let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
        assert_eq!(
            r.feed(&p1, &mut out, &lookup).err(),
            Some(MseError::BadPublicKey)
        );
        // Pads longer than 512 (the constructors clamp ours, so they are built by hand).
        let mut long_pad = public_key(&[3; 20]).to_vec();
        long_pad.extend_from_slice(&[0u8; 600]);
        let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
        assert_eq!(
            r.feed(&long_pad, &mut out, &lookup).err(),
            Some(MseError::SyncNotFound)
        );
        let mut a_out = Vec::new();
        let mut init = Initiator::new([3; 20], 0, TORRENT, CRYPTO_RC4, vec![], &mut a_out);
        assert_eq!(
            init.feed(&long_pad, &mut a_out).err(),
            Some(MseError::SyncNotFound)
        );
        let mut a_out = Vec::new();
        let other = InfoHash([9; 20]);
        let mut init = Initiator::new([3; 20], 0, other, CRYPTO_RC4, vec![], &mut a_out);
        let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
        let mut b_out = Vec::new();
        r.feed(&a_out, &mut b_out, &lookup).unwrap();
        let mut third = Vec::new();
        init.feed(&b_out, &mut third).unwrap();
        assert_eq!(
            r.feed(&third, &mut b_out, &lookup).err(),
            Some(MseError::UnknownTorrent)
        );
    }

    #[test]
    fn pad_c_over_512_is_refused() {
        // Proves: len(PadC) > 512 fails at the length, before any pad is buffered.
        let mut a_out = Vec::new();
        let private = [3u8; 20];
        let _ = Initiator::new(private, 0, TORRENT, CRYPTO_RC4, vec![], &mut a_out);
        let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
        let mut b_out = Vec::new();
        r.feed(&a_out, &mut b_out, &lookup).unwrap();
        // Build the third message by hand with len(PadC) = 513.
        let secret = shared_secret(&private, &b_out[..96]).unwrap();
        let mut m = sha1_parts(&[b"req1", &secret]).to_vec();
        let req3 = sha1_parts(&[b"req3", &secret]);
        m.extend(
            req2_hash(&TORRENT)
                .iter()
                .zip(req3.iter())
                .map(|(a, b)| a ^ b),
        );
        let mut enc = Vec::new();
        enc.extend_from_slice(&VC);
        enc.extend_from_slice(&CRYPTO_RC4.to_be_bytes());
        enc.extend_from_slice(&513u16.to_be_bytes());
        Rc4Stream::new(b"keyA", &secret, &TORRENT).apply(&mut enc);
        m.extend(enc);
        assert_eq!(
            r.feed(&m, &mut b_out, &lookup).err(),
            Some(MseError::PadTooLong)
        );
    }

    #[test]
    fn dh_matches_known_small_facts() {
        // Proves: the public key is g^x mod p zero-padded to 96 bytes, and both sides reach
        // the same secret.
        let mut x = [0u8; 20];
        x[19] = 1;
        let mut two = [0u8; 96];
        two[95] = 2;
        assert_eq!(public_key(&x), two);
        let (a, b) = ([1u8; 20], [2u8; 20]);
        assert_eq!(
            shared_secret(&a, &public_key(&b)).unwrap(),
            shared_secret(&b, &public_key(&a)).unwrap()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_chunking_and_pads_agree(
            chunk in 1usize..700,
            pad_a in 0usize..=512,
            pad_b in 0usize..=512,
            ia in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Proves: however the bytes are cut and padded within the spec, both sides finish
            // with the IA intact.
            let (_, b, left) = run(chunk, pad_a, pad_b, CRYPTO_RC4, EncryptionMode::Require, &ia)
                .unwrap();
            prop_assert_eq!(b.initial_payload, ia);
            prop_assert!(left.is_empty());
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            cut in 0usize..2000,
        ) {
            // Proves: random input ends in an error or a wait, consuming no more than given,
            // and a wait never holds more than the sync bound unsearched.
            let mut r = Responder::new([5; 20], 0, EncryptionMode::Allow);
            let mut out = Vec::new();
            let cut = cut.min(bytes.len());
            let mut buf = bytes[..cut].to_vec();
            if let Ok(p) = r.feed(&buf, &mut out, &lookup) {
                prop_assert!(p.consumed <= buf.len());
                buf.drain(..p.consumed);
                buf.extend_from_slice(&bytes[cut..]);
                if let Ok(p) = r.feed(&buf, &mut out, &lookup) {
                    prop_assert!(p.consumed <= buf.len());
                    prop_assert!(buf.len() - p.consumed < RESPONDER_SYNC_BYTES_MAX);
                }
            }
        }
    }
}
