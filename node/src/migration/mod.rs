//! Live migration over the mesh (README: Live migration). As the source, this node drives
//! `continuum_migrate::Source`: it captures rounds of changed pages on the component's thread
//! while it keeps serving, freezes it, sends the last pages and the globals, and on the target's
//! Ready switches the route (held and late requests follow the component). As the target, it
//! answers with `continuum_migrate::Target`: it checks the offer against its policy, writes
//! the rounds into a blank instance, checks the assembled state against the source's digest,
//! serves from Ready on, and hosts the component once committed.
//!
//! The handshake logic lives in the sans-IO machines; `source.rs` and `target.rs` only carry
//! out their actions, one file per role.

mod direct;
mod source;
mod target;

pub use direct::{ALPN as DIRECT_ALPN, Invite, accept as accept_direct};
pub use source::{resolve_target, start};
pub use target::on_message;

use crate::context::Node;
use crate::fault::{fault, faulty};
use continuum_gossip::PeerId;
use continuum_migrate::{MigrationId, Outcome, Report};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One pre-copy round, as the CLI shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundProgress {
    pub round: u32,
    pub pages: u64,
    pub bytes: u64,
}

/// A migration from this node, as `GET /v1/migrations/ID` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub id: MigrationId,
    pub name: String,
    pub from: String,
    pub to: String,
    pub stop_and_copy: bool,
    /// What it is doing: `offered`, `module`, `round N`, `frozen`, `switched`, `done`,
    /// `aborted`.
    pub step: String,
    pub rounds: Vec<RoundProgress>,
    pub outcome: Outcome,
    pub finished: bool,
    pub report: Option<Report>,
    pub error: Option<String>,
    /// How long each request held by the freeze waited before going to the target, ms.
    #[serde(default)]
    pub held_ms: Vec<f64>,
}

#[derive(Default)]
pub struct Migrations {
    next: AtomicU64,
    outgoing: Mutex<BTreeMap<MigrationId, Progress>>,
    /// Migrations started on another node at this node's request: where to follow them.
    relayed: Mutex<HashMap<MigrationId, PeerId>>,
    /// Migrations to here, with the component's name.
    incoming: Mutex<HashMap<MigrationId, (String, target::SharedStaged)>>,
    /// Recent migrations that made this node the host, for a source in doubt that asks late.
    hosted: Mutex<std::collections::VecDeque<MigrationId>>,
    /// The tickets of the direct connections this node invited sources to.
    direct: direct::Tickets,
}

/// Finished migrations kept for `GET /v1/migrations` and for targets that ask.
const KEEP_FINISHED: usize = 64;
/// Migrations to this node under way at once, at most: each stages a component's whole
/// memory, so a peer (or several) offering many at once must not take the node's.
pub const MAX_INCOMING: usize = 4;

impl Migrations {
    pub fn progress(&self, id: MigrationId) -> Option<Progress> {
        self.outgoing.lock().unwrap().get(&id).cloned()
    }

    /// Remember that migration `id` runs on `host` (this node relayed the request).
    pub fn relay(&self, id: MigrationId, host: PeerId) {
        let mut r = self.relayed.lock().unwrap();
        if r.len() >= KEEP_FINISHED {
            r.clear();
        }
        r.insert(id, host);
    }

    pub fn relayed(&self, id: MigrationId) -> Option<PeerId> {
        self.relayed.lock().unwrap().get(&id).copied()
    }

    pub fn list(&self) -> Vec<Progress> {
        self.outgoing.lock().unwrap().values().cloned().collect()
    }

    fn update(&self, id: MigrationId, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = self.outgoing.lock().unwrap().get_mut(&id) {
            f(p);
        }
    }

    fn hosted(&self, id: MigrationId) {
        let mut h = self.hosted.lock().unwrap();
        if h.len() >= KEEP_FINISHED {
            h.pop_front();
        }
        h.push_back(id);
    }

    fn was_hosted(&self, id: MigrationId) -> bool {
        self.hosted.lock().unwrap().contains(&id)
    }

    /// A fresh id: unique per node run, and unlikely to meet another node's.
    fn new_id(&self, me: &str) -> MigrationId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = blake3::hash(format!("{me}/{salt}/{n}").as_bytes());
        u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) >> 11
    }
}

/// Fault injection for the tests: with `CONTINUUM_FAULT=POINT`, the process dies (SIGKILL,
/// as `kill -9`) when a migration reaches POINT: `target:offer`, `target:pages`,
/// `target:final` (on receipt), `target:ready` (restored, before answering), `source:switch`
/// (on the target's Ready, before switching). Four do not kill: with `source:bad-digest` the
/// source sends a wrong whole-state digest; with `target:cut` the target cuts its connections
/// to the source (the direct one too) on the first round it receives (once per process); with `target:bad-direct`
/// the target invites the source to a port where nothing listens (the pages take the mesh);
/// with `target:slow-direct` its first answer on the direct connection comes 3 s late.
fn now(node: &Node) -> u64 {
    node.started.elapsed().as_millis() as u64
}

fn step_timeout(node: &Node) -> Duration {
    node.config.migration_timeout
}

/// Whether a migration of `name` from this node is under way.
pub fn leaving(node: &Node, name: &str) -> bool {
    node.migrations
        .outgoing
        .lock()
        .unwrap()
        .values()
        .any(|p| p.name == name && !p.finished)
}

/// How a migration from here stands, for a target that asks (`None`: unknown here).
pub fn outcome(node: &Node, id: MigrationId) -> Option<Outcome> {
    node.migrations.progress(id).map(|p| p.outcome)
}
