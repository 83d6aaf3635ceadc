//! Proof of the swarm key (`/continuum/auth/1`): in a closed swarm each side of a new
//! connection sends, on a stream of its own, a tag made with the swarm key over both peer ids
//! (which the transport has authenticated, so a proof is good for that pair only). A peer that
//! has not proved it holds the key within [`WITHIN`] is disconnected and kept away for a while
//! that doubles with each failure; the node starts no exchange with it before the proof, and
//! what it may have overheard meanwhile is encrypted (see `continuum_gossip::SwarmKey`).

use super::gated::Admission;
use continuum_gossip::SwarmKey;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/continuum/auth/1");
const DOMAIN: &[u8] = b"continuum-auth-v1";

/// How long a new peer has to prove it holds the key.
pub const WITHIN: Duration = Duration::from_secs(5);
/// The first time a peer is kept away, and the longest.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Peers remembered as kept away at most (fresh identities cost nothing: past this the
/// oldest entries go).
const MAX_REMEMBERED: usize = 4096;
/// Proofs being read at once at most.
const MAX_READING: usize = 64;

/// The tag `from` sends `to`.
pub fn proof(key: &SwarmKey, from: &PeerId, to: &PeerId) -> [u8; 32] {
    key.tag(&[DOMAIN, &from.to_bytes(), &to.to_bytes()])
}

/// What to do with a peer that just connected.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// It proved itself on an earlier connection that is still up.
    Proven,
    /// Wait for its proof.
    Wait,
    /// Kept away still: disconnect it at once.
    Refuse,
}

/// Who has proved the key, who is due to, and who is kept away. Plain state: the driver
/// gives it the time. Who has proved it is kept in the [`Admission`] the protocols held shut
/// until then share (see `gated`), so the two never disagree.
pub struct Gate {
    proven: Admission,
    due: HashMap<PeerId, Instant>,
    /// Kept away until, and the length of the last time it was.
    away: HashMap<PeerId, (Instant, Duration)>,
}

impl Gate {
    pub(super) fn new(proven: Admission) -> Gate {
        Gate {
            proven,
            due: HashMap::new(),
            away: HashMap::new(),
        }
    }

    pub fn connected(&mut self, now: Instant, peer: PeerId) -> Admit {
        if self.proven.is_admitted(&peer) {
            return Admit::Proven;
        }
        if self.away.get(&peer).is_some_and(|(until, _)| *until > now) {
            return Admit::Refuse;
        }
        self.due.entry(peer).or_insert(now + WITHIN);
        Admit::Wait
    }

    /// A good proof from a peer (`connected`: it still is): true if this admits it now.
    pub fn proven(&mut self, peer: PeerId, connected: bool) -> bool {
        self.due.remove(&peer);
        if !connected {
            return false;
        }
        self.away.remove(&peer);
        self.proven.admit(peer)
    }

    /// A bad proof, or none in time: keep the peer away, twice as long as last time.
    pub fn failed(&mut self, now: Instant, peer: PeerId) {
        self.due.remove(&peer);
        self.proven.revoke(&peer);
        let last = self.away.get(&peer).map(|(_, d)| *d);
        let wait = last.map_or(FIRST_BACKOFF, |d| (d * 2).min(MAX_BACKOFF));
        if self.away.len() >= MAX_REMEMBERED {
            self.away.retain(|_, (until, _)| *until > now);
            if self.away.len() >= MAX_REMEMBERED
                && let Some(oldest) = self
                    .away
                    .iter()
                    .min_by_key(|(_, (u, _))| *u)
                    .map(|(p, _)| *p)
            {
                self.away.remove(&oldest);
            }
        }
        self.away.insert(peer, (now + wait, wait));
    }

    /// The peers whose time to prove ran out (each is then kept away).
    pub fn overdue(&mut self, now: Instant) -> Vec<PeerId> {
        let late: Vec<PeerId> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &late {
            self.failed(now, *p);
        }
        late
    }

    /// Its last connection closed: it proves itself again next time.
    pub fn closed(&mut self, peer: PeerId) {
        self.proven.revoke(&peer);
        self.due.remove(&peer);
    }

    pub fn is_proven(&self, peer: &PeerId) -> bool {
        self.proven.is_admitted(peer)
    }
}

/// Send this node's proof to `peer`, on each new connection. A stream goes on any connection
/// to the peer, and one of them may be dead without either side knowing yet (a peer that
/// restarted comes back on a new connection while the old one times out): so a few tries,
/// each short, within the peer's bound.
pub async fn send_proof(
    mut control: libp2p_stream::Control,
    key: SwarmKey,
    me: PeerId,
    peer: PeerId,
) {
    const TRIES: u32 = 4;
    for attempt in 1..=TRIES {
        let sent = async {
            let mut s = control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            s.write_all(&proof(&key, &me, &peer)).await?;
            s.close().await
        };
        match tokio::time::timeout(WITHIN / (TRIES + 1), sent).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::debug!(%peer, attempt, "could not send the key proof: {e}"),
            Err(_) => tracing::debug!(%peer, attempt, "the key proof timed out"),
        }
    }
}

/// Read the proofs peers send, each within [`WITHIN`]; the verdicts go to `verdicts`.
pub async fn read_proofs(
    mut incoming: libp2p_stream::IncomingStreams,
    key: SwarmKey,
    me: PeerId,
    verdicts: mpsc::Sender<(PeerId, bool)>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_READING));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: the peer is due all the same, and fails if it never proves
        };
        let (key, verdicts) = (key.clone(), verdicts.clone());
        tokio::spawn(async move {
            let mut got = [0u8; 32];
            let read = tokio::time::timeout(WITHIN, stream.read_exact(&mut got)).await;
            let good = matches!(read, Ok(Ok(()))) && got == proof(&key, &peer, &me);
            let _ = verdicts.send((peer, good)).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new(Admission::new(std::sync::Arc::default()))
    }

    #[test]
    fn a_peer_that_does_not_prove_in_time_is_kept_away_longer_each_time() {
        let (mut g, t0, p) = (gate(), Instant::now(), PeerId::random());
        assert_eq!(g.connected(t0, p), Admit::Wait);
        assert!(g.overdue(t0 + WITHIN / 2).is_empty());
        assert_eq!(g.overdue(t0 + WITHIN), vec![p]);
        let t1 = t0 + WITHIN;
        assert_eq!(g.connected(t1 + FIRST_BACKOFF / 2, p), Admit::Refuse);
        assert_eq!(g.connected(t1 + FIRST_BACKOFF, p), Admit::Wait);
        g.failed(t1 + FIRST_BACKOFF, p);
        let t2 = t1 + FIRST_BACKOFF;
        assert_eq!(
            g.connected(t2 + FIRST_BACKOFF, p),
            Admit::Refuse,
            "twice as long"
        );
        assert_eq!(g.connected(t2 + 2 * FIRST_BACKOFF, p), Admit::Wait);
        // A good proof admits it and forgets the past.
        assert!(g.proven(p, true));
        assert!(g.is_proven(&p));
        assert_eq!(g.connected(t2 + 3 * FIRST_BACKOFF, p), Admit::Proven);
        g.closed(p);
        assert_eq!(g.connected(t2 + 3 * FIRST_BACKOFF, p), Admit::Wait);
        // A proof from a peer no longer connected, or proven already, admits nothing new.
        assert!(!g.proven(PeerId::random(), false));
        assert!(g.proven(p, true) && !g.proven(p, true));
    }

    #[test]
    fn a_proof_is_good_for_one_pair_and_one_key() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let k = SwarmKey::new([3; 32]);
        assert_eq!(proof(&k, &a, &b), proof(&k, &a, &b));
        assert_ne!(proof(&k, &a, &b), proof(&k, &b, &a));
        assert_ne!(proof(&k, &a, &b), proof(&SwarmKey::new([4; 32]), &a, &b));
    }

    #[test]
    fn fresh_identities_cannot_grow_the_gate_past_its_bound() {
        let (mut g, t0) = (gate(), Instant::now());
        for _ in 0..MAX_REMEMBERED + 100 {
            g.failed(t0, PeerId::random());
        }
        assert!(g.away.len() <= MAX_REMEMBERED);
    }
}
