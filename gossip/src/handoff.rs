//! Hand-offs: a host's signed word that a component leaves it for another node. An advert can
//! claim any epoch for any name, so a node believes that a component it holds has moved on
//! only when the claim carries the hand-off it signed itself: no advert can make it delete a
//! copy (and the state in it) that it never gave away.

use crate::Reject;
use crate::wire::{from_cbor, to_cbor};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"continuum-handoff-v1";
/// Far more than a hand-off takes (a name of up to 63 bytes, two peer ids, a key, a
/// signature); anything longer is refused before it is decoded.
pub const MAX_HANDOFF_BYTES: usize = 1024;

/// What a hand-off says: `from`, the host of `name` at `epoch - 1`, gives it to `to`, which
/// hosts it from `epoch` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub name: String,
    pub epoch: u64,
    pub from: PeerId,
    pub to: PeerId,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    name: String,
    epoch: u64,
    #[serde(with = "serde_bytes")]
    from: Vec<u8>,
    #[serde(with = "serde_bytes")]
    to: Vec<u8>,
}

/// A hand-off as it travels (in the migration's last message, then in the new host's
/// adverts): the statement, the signer's public key, the signature.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHandoff {
    #[serde(with = "serde_bytes")]
    statement: Vec<u8>,
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

impl SignedHandoff {
    /// Hand `name` over to `to` as of `epoch`, signed as `id` (the host until then).
    pub fn sign(id: &Keypair, name: &str, epoch: u64, to: PeerId) -> SignedHandoff {
        let statement = to_cbor(&Statement {
            name: name.to_string(),
            epoch,
            from: id.public().to_peer_id().to_bytes(),
            to: to.to_bytes(),
        });
        let sig = id
            .sign(&[DOMAIN, &statement].concat())
            .expect("ed25519 signing does not fail");
        SignedHandoff {
            statement,
            key: id.public().encode_protobuf(),
            sig,
        }
    }

    /// What it says, if the signature holds and its signer is the `from` it names.
    pub fn verify(&self) -> Result<Handoff, Reject> {
        let public = PublicKey::try_decode_protobuf(&self.key)
            .map_err(|e| Reject::Malformed(format!("hand-off key: {e}")))?;
        if !public.verify(&[DOMAIN, &self.statement].concat(), &self.sig) {
            return Err(Reject::BadSignature);
        }
        let s: Statement = from_cbor(&self.statement, "hand-off")?;
        let peer = |b: &[u8], what: &str| {
            PeerId::from_bytes(b).map_err(|e| Reject::Malformed(format!("hand-off {what}: {e}")))
        };
        let (from, to) = (peer(&s.from, "from")?, peer(&s.to, "to")?);
        let signer = public.to_peer_id();
        if from != signer {
            return Err(Reject::WrongPeer {
                claimed: from.to_string(),
                signer: signer.to_string(),
            });
        }
        Ok(Handoff {
            name: s.name,
            epoch: s.epoch,
            from,
            to,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_cbor(self)
    }

    /// Decode one (not yet verified), bounded before anything is decoded.
    pub fn from_bytes(bytes: &[u8]) -> Result<SignedHandoff, Reject> {
        if bytes.len() > MAX_HANDOFF_BYTES {
            return Err(Reject::Oversized(bytes.len()));
        }
        from_cbor(bytes, "hand-off")
    }
}

impl Handoff {
    /// Whether this says that `me` gave `name`, which it held at `epoch`, to `host`, which
    /// claims it at `claimed`: the one proof on which `me` drops its copy.
    pub fn proves_moved(
        &self,
        me: PeerId,
        name: &str,
        epoch: u64,
        host: PeerId,
        claimed: u64,
    ) -> bool {
        self.from == me
            && self.name == name
            && self.epoch == epoch + 1
            && self.to == host
            && claimed == self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> Keypair {
        Keypair::ed25519_from_bytes([i; 32]).unwrap()
    }

    #[test]
    fn a_hand_off_verifies_only_as_its_signer_wrote_it() {
        let (a, b) = (key(1), key(2));
        let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
        let h = SignedHandoff::sign(&a, "counter", 4, pb);
        let back = SignedHandoff::from_bytes(&h.to_bytes())
            .unwrap()
            .verify()
            .unwrap();
        assert_eq!(
            back,
            Handoff {
                name: "counter".into(),
                epoch: 4,
                from: pa,
                to: pb
            }
        );
        assert!(back.proves_moved(pa, "counter", 3, pb, 4));
        // Not for another holder, name, epoch or host.
        assert!(!back.proves_moved(pb, "counter", 3, pb, 4));
        assert!(!back.proves_moved(pa, "other", 3, pb, 4));
        assert!(!back.proves_moved(pa, "counter", 2, pb, 4));
        assert!(!back.proves_moved(pa, "counter", 3, pa, 4));
        assert!(!back.proves_moved(pa, "counter", 3, pb, 9));

        // A statement changed after signing, or a key swapped in, does not verify.
        let mut forged = h.clone();
        forged.statement = SignedHandoff::sign(&a, "counter", 99, pb).statement;
        forged.sig = h.sig.clone();
        assert_eq!(forged.verify(), Err(Reject::BadSignature));
        let mut swapped = SignedHandoff::sign(&b, "counter", 4, pb);
        swapped.statement = h.statement.clone();
        assert_eq!(swapped.verify(), Err(Reject::BadSignature));
        // B signing "A gives it to B" is refused: the signer must be the giver.
        let s = Statement {
            name: "counter".into(),
            epoch: 4,
            from: pa.to_bytes(),
            to: pb.to_bytes(),
        };
        let statement = to_cbor(&s);
        let sig = b.sign(&[DOMAIN, &statement].concat()).unwrap();
        let lie = SignedHandoff {
            statement,
            key: b.public().encode_protobuf(),
            sig,
        };
        assert!(matches!(lie.verify(), Err(Reject::WrongPeer { .. })));
        // Oversized and malformed bytes are refused with what is wrong.
        assert_eq!(
            SignedHandoff::from_bytes(&vec![0; MAX_HANDOFF_BYTES + 1]),
            Err(Reject::Oversized(MAX_HANDOFF_BYTES + 1))
        );
        assert!(matches!(
            SignedHandoff::from_bytes(b"\xff\x00"),
            Err(Reject::Malformed(_))
        ));
    }
}
