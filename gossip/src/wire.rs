//! What travels: every message is a CBOR frame holding a payload, signed if anyone but its
//! first receiver may see it (published on the topic, or relayed in a sync): a frame sent
//! straight to one peer on a connection both ends authenticated (libp2p's handshake proves the
//! sender's key) needs no signature of its own, and is believed from that connection's peer
//! only. In a closed swarm the frame is encrypted with a key derived from the swarm key (as
//! Serf does), so a peer without it can neither forge nor read one, even one relayed through
//! it. Opening a frame checks, in order: size, swarm key (decryption), encoding, signature (or,
//! unsigned, that it came straight from its sender), and (for adverts) that the advert speaks
//! for its signer. Each refusal has a reason the node counts.

use crate::advert::ResourceAdvert;
use crate::federation::FederationMsg;
use crate::verified::Verified;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

/// Largest frame accepted from the gossip topic.
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Largest frame accepted as a direct message (a sync carries every advert a node knows).
pub const MAX_DIRECT_BYTES: usize = 4 << 20;

const SIGN_DOMAIN: &[u8] = b"continuum-gossip-v1";
const CIPHER_CONTEXT: &str = "continuum 2026 gossip encryption v1";
const NONCE_CONTEXT: &str = "continuum 2026 gossip nonce v1";
/// First byte of an encrypted frame (no CBOR frame starts so: it is a map).
const ENCRYPTED: u8 = 0xE1;
const NONCE: usize = 24;

/// A swarm key: only nodes holding it may take part in the swarm. Like Serf's gossip key, it
/// encrypts every gossip message and tags every direct one; libp2p's own transport
/// encryption stays as is.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

impl SwarmKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        SwarmKey(bytes)
    }

    /// Encrypt and authenticate (XChaCha20-Poly1305). The nonce is synthesised from the
    /// plaintext with a second derived key, as SIV does: no randomness (the gossip machine is
    /// deterministic), and two different messages never share a nonce; the same message
    /// twice gives the same bytes, which tells an observer nothing it could not see anyway.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let nonce_key = blake3::derive_key(NONCE_CONTEXT, &self.0);
        let hash = blake3::keyed_hash(&nonce_key, plain);
        let nonce = chacha20poly1305::XNonce::from_slice(&hash.as_bytes()[..NONCE]);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(
            &blake3::derive_key(CIPHER_CONTEXT, &self.0).into(),
        );
        let sealed = cipher
            .encrypt(nonce, plain)
            .expect("encrypting into a Vec does not fail");
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(ENCRYPTED);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of [`Self::encrypt`]'s output, if it was made with this key and is whole.
    pub fn decrypt(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let rest = sealed.strip_prefix(&[ENCRYPTED])?;
        if rest.len() < NONCE {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE);
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(
            &blake3::derive_key(CIPHER_CONTEXT, &self.0).into(),
        );
        cipher
            .decrypt(chacha20poly1305::XNonce::from_slice(nonce), body)
            .ok()
    }

    /// A MAC over length-framed parts; the first should name what is being tagged.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for part in parts {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    /// Parse a key file: 64 hex digits (as `continuum keygen` writes), blank lines and
    /// `#` comments ignored.
    pub fn parse(text: &str) -> Result<SwarmKey, String> {
        let hex: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(
                "a swarm key is 64 hex digits (make one with `continuum keygen -o FILE`)".into(),
            );
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        Ok(SwarmKey(key))
    }

    /// A short public fingerprint of the key, for logs (not secret).
    pub fn fingerprint(&self) -> String {
        let d = self.tag(&[b"continuum-swarm-fingerprint"]);
        d[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmKey(..)")
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("message of {0} bytes is over the size limit")]
    Oversized(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message does not prove it comes from a holder of this swarm's key")]
    SwarmKey,
    #[error("message signature does not verify")]
    BadSignature,
    /// Only a frame that comes straight from its sender may go unsigned.
    #[error("unsigned message that did not come straight from its sender")]
    Unsigned,
    #[error("message speaks for peer {claimed} but is signed by {signer}")]
    WrongPeer { claimed: String, signer: String },
    #[error("replayed message: sequence {got} from {peer} is older than {known}")]
    Replay { peer: String, got: u64, known: u64 },
    /// What only a swarm closed by a key may do (own a federation), tried in an open one.
    #[error("{0} need a swarm closed by a key")]
    OpenSwarm(&'static str),
    /// A bounded structure is full (its counter's label): refused until room frees up.
    #[error("refused, no room: {0}")]
    Full(&'static str),
    /// A name record offered to a table that holds a record it does not supersede (see
    /// [`crate::NameRecord::supersedes`]).
    #[error("the record offered for {0} does not supersede the one held")]
    Superseded(String),
}

impl Reject {
    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Oversized(_) => "oversized",
            Reject::Malformed(_) => "malformed",
            Reject::SwarmKey => "swarm_key",
            Reject::BadSignature => "bad_signature",
            Reject::Unsigned => "unsigned",
            Reject::WrongPeer { .. } => "wrong_peer",
            Reject::Replay { .. } => "replay",
            Reject::OpenSwarm(_) => "open_swarm",
            Reject::Full(what) => what,
            Reject::Superseded(_) => "superseded_name",
        }
    }
}

/// A signed message: the signer's sequence number and what it says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Grows with every message a peer sends, whatever its kind: older ones are replays.
    pub seq: u64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// A peer's resources and hosted components, in full.
    Advert(ResourceAdvert),
    /// "I am alive, my advert `advert_seq` is current, and my load is now `load`": the
    /// cheap, frequent message. Load rides here so that it stays fresh without full adverts.
    Alive {
        advert_seq: u64,
        ttl_ms: u64,
        load: f32,
    },
    Federation(FederationMsg),
    /// Anti-entropy, sent to a peer on connecting: "here is my advert, and the advert
    /// sequence I hold for each peer I know". The answer carries only what the asker lacks, so
    /// a newcomer has the full view after one round trip and peers in step exchange next to
    /// nothing.
    SyncRequest {
        #[serde(with = "serde_bytes")]
        mine: Vec<u8>,
        known: Vec<Known>,
    },
    /// The adverts the asker lacked, each the frame its own signer sealed.
    SyncReply {
        entries: Vec<SyncEntry>,
    },
    /// A host's claim to a component's name, filed in the distributed hash table (see
    /// [`crate::naming`]); never gossiped.
    Name(crate::advert::Hosted),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    #[serde(with = "serde_bytes")]
    pub peer: Vec<u8>,
    pub advert_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncEntry {
    /// The advert's own frame, as its signer published it.
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
    /// How long ago the sender last heard from that peer: the receiver expires it as the sender
    /// would, so a relay never brings a dead peer back to life.
    pub heard_ago_ms: u64,
}

/// A frame without a key and a signature is unsigned (see [`seal_direct`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frame {
    #[serde(
        rename = "k",
        with = "serde_bytes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    key: Vec<u8>,
    #[serde(rename = "p", with = "serde_bytes")]
    payload: Vec<u8>,
    #[serde(
        rename = "s",
        with = "serde_bytes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    sig: Vec<u8>,
}

/// An opened frame.
#[derive(Clone, Debug)]
pub struct Opened {
    pub signer: PeerId,
    pub message: Message,
}

pub(crate) fn to_cbor(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub(crate) fn from_cbor<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Reject> {
    let mut rest = bytes;
    let value =
        ciborium::from_reader(&mut rest).map_err(|e| Reject::Malformed(format!("{what}: {e}")))?;
    if !rest.is_empty() {
        return Err(Reject::Malformed(format!(
            "{what}: {} stray bytes at the end",
            rest.len()
        )));
    }
    Ok(value)
}

/// Sign `message` as `id`, and encrypt it with the swarm key if there is one.
pub fn seal(id: &Keypair, key: Option<&SwarmKey>, message: &Message) -> Vec<u8> {
    let payload = to_cbor(message);
    let mut signed = SIGN_DOMAIN.to_vec();
    signed.extend_from_slice(&payload);
    let sig = id.sign(&signed).expect("ed25519 signing does not fail");
    encrypt(
        key,
        to_cbor(&Frame {
            key: id.public().encode_protobuf(),
            payload,
            sig,
        }),
    )
}

/// `message` for one peer on an authenticated connection, unsigned: the connection says who
/// sent it, and the receiver must not pass it on (see the module docs). Encrypted with the
/// swarm key if there is one. Saves an ed25519 signature and its check per message, most of
/// what gossip costs when every message goes to a neighbour.
pub fn seal_direct(key: Option<&SwarmKey>, message: &Message) -> Vec<u8> {
    encrypt(
        key,
        to_cbor(&Frame {
            key: Vec::new(),
            payload: to_cbor(message),
            sig: Vec::new(),
        }),
    )
}

fn encrypt(key: Option<&SwarmKey>, frame: Vec<u8>) -> Vec<u8> {
    match key {
        Some(k) => k.encrypt(&frame),
        None => frame,
    }
}

/// Check and decode a frame (see the module docs for the order of checks). An unsigned one is
/// refused: nothing says who sent it.
pub fn open(bytes: &[u8], key: Option<&SwarmKey>, max: usize) -> Result<Opened, Reject> {
    open_with(bytes, key, max, None, None)
}

/// [`open`], skipping the signature check of a frame `verified` has seen verify, and taking an
/// unsigned frame as `sender`'s, if it came straight from that peer's authenticated connection.
pub(crate) fn open_with(
    bytes: &[u8],
    key: Option<&SwarmKey>,
    max: usize,
    verified: Option<&Verified>,
    sender: Option<PeerId>,
) -> Result<Opened, Reject> {
    if bytes.len() > max {
        return Err(Reject::Oversized(bytes.len()));
    }
    let plain;
    let bytes = match (key, bytes.first()) {
        (Some(k), Some(&ENCRYPTED)) => {
            plain = k.decrypt(bytes).ok_or(Reject::SwarmKey)?;
            &plain[..]
        }
        (None, Some(&ENCRYPTED)) | (Some(_), _) => return Err(Reject::SwarmKey),
        (None, _) => bytes,
    };
    let frame: Frame = from_cbor(bytes, "frame")?;
    let check = || {
        let public = PublicKey::try_decode_protobuf(&frame.key)
            .map_err(|e| Reject::Malformed(format!("public key: {e}")))?;
        let mut signed = SIGN_DOMAIN.to_vec();
        signed.extend_from_slice(&frame.payload);
        if !public.verify(&signed, &frame.sig) {
            return Err(Reject::BadSignature);
        }
        Ok(public.to_peer_id())
    };
    let unsigned = frame.key.is_empty() && frame.sig.is_empty();
    let signer = match (unsigned, sender, verified) {
        (true, Some(sender), _) => sender,
        (true, None, _) => return Err(Reject::Unsigned),
        (false, _, Some(v)) => v.verify(bytes, check)?,
        (false, _, None) => check()?,
    };
    let message: Message = from_cbor(&frame.payload, "message")?;
    if let Body::Advert(a) = &message.body {
        let claimed = PeerId::from_bytes(&a.peer)
            .map_err(|e| Reject::Malformed(format!("advert peer id: {e}")))?;
        if claimed != signer {
            return Err(Reject::WrongPeer {
                claimed: claimed.to_string(),
                signer: signer.to_string(),
            });
        }
    }
    Ok(Opened { signer, message })
}
