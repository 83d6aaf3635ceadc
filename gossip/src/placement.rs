//! Where a component should go: the least loaded peer that can take it. One function, so the
//! node (`continuum migrate --to auto`) and the simulator place alike.

use libp2p_identity::PeerId;
use std::collections::{BTreeMap, BTreeSet};

/// A peer as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub peer: PeerId,
    /// Run-queue length per core: 0 idle, 1 saturated.
    pub load: f32,
    pub slots: u32,
    pub mem_free: u64,
    pub components: usize,
    pub labels: &'a BTreeMap<String, String>,
}

/// What the component needs of its host.
#[derive(Clone, Debug, Default)]
pub struct Need<'a> {
    pub require: BTreeMap<String, String>,
    pub memory: u64,
    /// Members of the component's federation, if it is bound to one.
    pub within: Option<&'a BTreeSet<PeerId>>,
    /// Peers that may not take it (where it runs now).
    pub exclude: Vec<PeerId>,
}

/// The chosen peer and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub peer: PeerId,
    pub reason: String,
}

/// The least loaded eligible peer (then the one with fewest components, then the smallest id,
/// so every node that knows the same picks the same). `Err` says why none fits.
pub fn place<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    need: &Need,
) -> Result<Placement, String> {
    let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut eligible = Vec::new();
    for c in candidates {
        let why = if need.exclude.contains(&c.peer) {
            Some("excluded")
        } else if need.within.is_some_and(|m| !m.contains(&c.peer)) {
            Some("outside the federation")
        } else if !need.require.iter().all(|(k, v)| c.labels.get(k) == Some(v)) {
            Some("lacking a required label")
        } else if c.slots == 0 {
            Some("without a free slot")
        } else if c.mem_free < need.memory {
            Some("short of memory")
        } else {
            None
        };
        match why {
            Some(w) => *skipped.entry(w).or_default() += 1,
            None => eligible.push(c),
        }
    }
    let n = eligible.len();
    let skipped = skipped
        .iter()
        .map(|(w, n)| format!("{n} {w}"))
        .collect::<Vec<_>>()
        .join(", ");
    let best = eligible.into_iter().min_by(|a, b| {
        a.load
            .total_cmp(&b.load)
            .then(a.components.cmp(&b.components))
            .then(a.peer.cmp(&b.peer))
    });
    match best {
        Some(c) => Ok(Placement {
            peer: c.peer,
            reason: format!(
                "least loaded of {n} eligible peer(s): load {:.2}, {} component(s){}",
                c.load,
                c.components,
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!("; skipped {skipped}")
                }
            ),
        }),
        None if skipped.is_empty() => Err("no peer in view".into()),
        None => Err(format!("no peer can take it: {skipped}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_eligible_peer_wins() {
        let ids: Vec<PeerId> = (0..4u8)
            .map(|i| {
                libp2p_identity::Keypair::ed25519_from_bytes([i + 1; 32])
                    .unwrap()
                    .public()
                    .to_peer_id()
            })
            .collect();
        let camera: BTreeMap<String, String> = [("sensor".into(), "camera".into())].into();
        let none = BTreeMap::new();
        let cand = |i: usize, load: f32, labels| Candidate {
            peer: ids[i],
            load,
            slots: 8,
            mem_free: 1 << 30,
            components: 0,
            labels,
        };
        let all = || {
            vec![
                cand(0, 0.1, &none),
                cand(1, 0.5, &camera),
                cand(2, 0.2, &camera),
                cand(3, 0.0, &camera),
            ]
        };
        let need = Need {
            require: camera.clone(),
            exclude: vec![ids[3]],
            ..Need::default()
        };
        let p = place(all(), &need).unwrap();
        assert_eq!(p.peer, ids[2]);
        assert!(p.reason.contains("2 eligible"), "{}", p.reason);
        assert!(
            p.reason.contains("1 lacking a required label"),
            "{}",
            p.reason
        );

        let members: BTreeSet<PeerId> = [ids[1]].into();
        let within = Need {
            within: Some(&members),
            ..need.clone()
        };
        assert_eq!(place(all(), &within).unwrap().peer, ids[1]);

        let big = Need {
            memory: 2 << 30,
            ..need
        };
        let err = place(all(), &big).unwrap_err();
        assert!(err.contains("short of memory"), "{err}");
    }
}
