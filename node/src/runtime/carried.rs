//! What a component's host keeps for it besides its memory and globals (ABI v2): the requests
//! it is in the middle of and the operations they wait on. It travels with a live migration,
//! next to the last pages, so that half-done requests go on at the new host: their futures are
//! in the memory, their answers go back to where their clients wait, and the results of the
//! calls still in flight follow the component.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    pub next_task: u32,
    pub next_op: u64,
    pub tasks: Vec<CarriedTask>,
    pub ops: Vec<CarriedOp>,
    pub tick: CarriedTick,
    /// Results known but not yet delivered (calls refused at once): (operation, result).
    #[serde(default)]
    pub ready: Vec<(u64, serde_bytes::ByteBuf)>,
}

/// A request being served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CarriedTask {
    pub id: u32,
    /// The node where its client waits, and the key its reply is parked under there.
    pub node: String,
    pub key: u64,
    /// Time left to its deadline.
    pub left: Duration,
    pub chain: Vec<String>,
    pub entry: String,
}

/// An operation a task waits on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CarriedOp {
    pub id: u64,
    pub task: u32,
    /// Time left until the timer fires or the call's deadline passes.
    pub left: Duration,
    pub timer: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum CarriedTick {
    /// The component has no tick (or it stopped).
    #[default]
    None,
    /// The next tick is due after this long.
    Next(Duration),
    /// A tick is waiting, with this long to its deadline.
    Running(Duration),
}

/// Bounds on what a peer may hand over.
pub struct CarriedLimits {
    pub tasks: usize,
    pub ops: usize,
    pub depth: usize,
    pub longest: Duration,
}

impl Carried {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Decode what a migration source sent, and check it against this node's limits.
    pub fn decode(bytes: &[u8], limits: &CarriedLimits) -> Result<Carried, String> {
        if bytes.is_empty() {
            return Ok(Carried::default());
        }
        let c: Carried = ciborium::from_reader(bytes)
            .map_err(|e| format!("the requests in flight did not decode: {e}"))?;
        if c.tasks.len() > limits.tasks || c.ops.len() + c.ready.len() > limits.ops {
            return Err(format!(
                "{} requests and {} operations in flight are more than this node takes ({} and {})",
                c.tasks.len(),
                c.ops.len(),
                limits.tasks,
                limits.ops
            ));
        }
        for t in &c.tasks {
            if t.chain.len() > limits.depth
                || t.chain
                    .iter()
                    .any(|n| crate::components::check_name(n).is_err())
            {
                return Err(format!("request {} carries an invalid call chain", t.id));
            }
            if t.node.parse::<continuum_gossip::PeerId>().is_err()
                || t.entry.parse::<continuum_gossip::PeerId>().is_err()
            {
                return Err(format!("request {} names an invalid peer", t.id));
            }
        }
        let long = |d: &Duration| *d > limits.longest;
        // A tick may ask to be run again after as much as i32::MAX ms.
        let next_too_far =
            matches!(&c.tick, CarriedTick::Next(d) if *d > Duration::from_millis(i32::MAX as u64));
        if c.tasks.iter().any(|t| long(&t.left))
            || c.ops.iter().any(|o| long(&o.left))
            || matches!(&c.tick, CarriedTick::Running(d) if long(d))
            || next_too_far
        {
            return Err(format!(
                "a deadline or timer in flight is further away than this node allows ({:?})",
                limits.longest
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> CarriedLimits {
        CarriedLimits {
            tasks: 4,
            ops: 8,
            depth: 16,
            longest: Duration::from_secs(2),
        }
    }

    fn peer() -> String {
        continuum_gossip::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()
    }

    fn task(id: u32) -> CarriedTask {
        CarriedTask {
            id,
            node: peer(),
            key: 7,
            left: Duration::from_millis(500),
            chain: vec!["relay".into()],
            entry: peer(),
        }
    }

    #[test]
    fn a_peer_hands_over_only_what_this_node_takes() {
        let good = Carried {
            next_task: 3,
            next_op: 9,
            tasks: vec![task(1), task(2)],
            ops: vec![CarriedOp {
                id: 8,
                task: 1,
                left: Duration::from_millis(100),
                timer: true,
            }],
            tick: CarriedTick::Next(Duration::from_millis(10)),
            ready: vec![],
        };
        assert_eq!(Carried::decode(&good.encode(), &limits()).unwrap(), good);
        assert_eq!(Carried::decode(&[], &limits()).unwrap(), Carried::default());

        let refused = |c: Carried, why: &str| {
            let e = Carried::decode(&c.encode(), &limits()).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        let mut c = good.clone();
        c.tasks = (0..5).map(task).collect();
        refused(c, "more than this node takes");
        let mut c = good.clone();
        c.tasks[0].chain = vec!["not a name!".into()];
        refused(c, "invalid call chain");
        let mut c = good.clone();
        c.tasks[0].chain = vec!["r".into(); 17];
        refused(c, "invalid call chain");
        let mut c = good.clone();
        c.tasks[1].node = "nobody".into();
        refused(c, "invalid peer");
        let mut c = good.clone();
        c.ops[0].left = Duration::from_secs(3600);
        refused(c, "further away");
        let mut c = good.clone();
        c.tick = CarriedTick::Next(Duration::MAX);
        refused(c, "further away");
        let e = Carried::decode(b"\\xff\\x00garbage", &limits()).unwrap_err();
        assert!(e.contains("did not decode"), "{e}");
    }
}
