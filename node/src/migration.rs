//! Live migration over the mesh (ARCHITECTURE.md §4). As the source, this node drives
//! `continuum_migrate::Source`: it captures rounds of changed pages on the component's thread
//! while it keeps serving, freezes it, sends the last pages and the globals, and on the target's
//! Ready switches the route (held and late requests follow the component). As the target, it
//! answers with `continuum_migrate::Target`: it checks the offer against its policy, writes
//! the rounds into a blank instance, checks the assembled state against the source's digest,
//! serves from Ready on, and hosts the component once committed.
//!
//! The handshake logic lives in the sans-IO machines; this file only carries out their actions.

use crate::components::{ApiError, check_name};
use crate::node::Node;
use crate::runtime::{ComponentHandle, Instance, LoadedModule};
use continuum_gossip::PeerId;
use continuum_migrate::{
    ComponentMeta, Digest, MemoryDelta, MigrationId, Offer, Outcome, Report, Snapshot, Source,
    SourceAction, SourceConfig, Target, TargetAction, ToSource, ToTarget, Value, ZERO_PAGE_DIGEST,
    decode_pages, encode_pages,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

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

/// A migration to this node, between the offer and the end.
struct Staged {
    from: PeerId,
    target: Target,
    module: Option<Arc<LoadedModule>>,
    instance: Option<Instance>,
    /// Size and page digests of each memory as assembled so far.
    maps: Vec<(u64, Vec<Digest>)>,
    /// The component, serving, from Ready on.
    handle: Option<Arc<ComponentHandle>>,
}

type SharedStaged = Arc<tokio::sync::Mutex<Staged>>;

#[derive(Default)]
pub struct Migrations {
    next: AtomicU64,
    outgoing: Mutex<BTreeMap<MigrationId, Progress>>,
    /// Migrations started on another node at this node's request: where to follow them.
    relayed: Mutex<HashMap<MigrationId, PeerId>>,
    /// Migrations to here, with the component's name.
    incoming: Mutex<HashMap<MigrationId, (String, SharedStaged)>>,
}

/// Finished migrations kept for `GET /v1/migrations` and for targets that ask.
const KEEP_FINISHED: usize = 64;

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
/// (on the target's Ready, before switching). Two do not kill: with `source:bad-digest` the
/// source sends a wrong whole-state digest; with `target:cut` the target cuts its connections
/// to the source on the first round it receives (once per process).
fn faulty(point: &str) -> bool {
    std::env::var("CONTINUUM_FAULT").is_ok_and(|f| f == point)
}

fn fault(point: &str) {
    if faulty(point) {
        tracing::error!("fault injection: dying at {point}");
        // SAFETY: kill(2) on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

fn now(node: &Node) -> u64 {
    node.started.elapsed().as_millis() as u64
}

fn step_timeout(node: &Node) -> Duration {
    node.config.migration_timeout
}

/// Start moving component `name` to `to`; it runs in the background, `progress` follows it.
pub async fn start(
    node: &Arc<Node>,
    name: &str,
    to: PeerId,
    stop_and_copy: bool,
) -> Result<Progress, ApiError> {
    let handle = node.components.get(name).ok_or_else(|| {
        ApiError::NotFound(match node.mesh.locate(name) {
            Some(l) => format!(
                "component {name} runs on {}, not on this node: ask that node to move it",
                l.host
            ),
            None => format!("no component named {name} on this node"),
        })
    })?;
    if to == node.mesh.me() {
        return Err(ApiError::BadRequest(format!(
            "component {name} runs on {to} already"
        )));
    }
    let id = node.migrations.new_id(&node.peer_id);
    let progress = Progress {
        id,
        name: name.to_string(),
        from: node.peer_id.clone(),
        to: to.to_string(),
        stop_and_copy,
        step: "offered".into(),
        rounds: Vec::new(),
        outcome: Outcome::InProgress,
        finished: false,
        report: None,
        error: None,
        held_ms: Vec::new(),
    };
    {
        let mut out = node.migrations.outgoing.lock().unwrap();
        if out.values().any(|p| p.name == name && !p.finished) {
            return Err(ApiError::Conflict(format!(
                "component {name} is being migrated already"
            )));
        }
        while out.len() >= KEEP_FINISHED {
            let Some(old) = out.iter().find(|(_, p)| p.finished).map(|(k, _)| *k) else {
                break;
            };
            out.remove(&old);
        }
        out.insert(id, progress.clone());
    }
    let span = tracing::info_span!("migrate", component = %name, to = %crate::short_id(&to.to_string()), id);
    tokio::spawn(drive(node.clone(), handle, to, id, stop_and_copy).instrument(span));
    Ok(progress)
}

/// Resolve `to`: a peer id, or `auto` for the placement function's choice.
pub fn resolve_target(node: &Node, name: &str, to: &str) -> Result<PeerId, ApiError> {
    if to != "auto" {
        return to
            .parse()
            .map_err(|e| ApiError::BadRequest(format!("invalid peer id {to:?}: {e}")));
    }
    let handle = node
        .components
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("no component named {name} on this node")))?;
    let mesh = node.mesh.snapshot();
    let members = handle.federation.as_ref().map(|f| mesh.members(f));
    let candidates = mesh.peers.iter().filter_map(|p| p.candidate());
    let need = continuum_gossip::Need {
        require: handle.require.clone(),
        memory: handle.stats.memory_bytes.load(Ordering::Relaxed),
        within: members.as_ref(),
        exclude: vec![node.mesh.me()],
    };
    let placed = continuum_gossip::place(candidates, &need)
        .map_err(|e| ApiError::Conflict(format!("no target for {name}: {e}")))?;
    tracing::info!(component = name, to = %placed.peer, "placement: {}", placed.reason);
    Ok(placed.peer)
}

/// Send one message to the target and wait (bounded) for its answer.
async fn exchange(node: &Node, to: PeerId, msg: ToTarget) -> Result<ToSource, String> {
    let limit = step_timeout(node);
    match tokio::time::timeout(limit, node.mesh.migrate(to, msg)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

fn page_bytes(pages: &[MemoryDelta]) -> u64 {
    pages.iter().map(|m| m.data.len() as u64).sum()
}

async fn encode(pages: Vec<MemoryDelta>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || encode_pages(&pages))
        .await
        .unwrap_or_default()
}

/// The source side: carry out what the machine asks until it finishes.
async fn drive(
    node: Arc<Node>,
    handle: Arc<ComponentHandle>,
    to: PeerId,
    id: MigrationId,
    stop_and_copy: bool,
) {
    let offer = Offer {
        id,
        name: handle.name.clone(),
        version: handle.version.clone(),
        module_digest: handle.digest,
        memory_bytes: handle.stats.memory_bytes.load(Ordering::Relaxed),
        epoch: handle.stats.epoch.load(Ordering::Relaxed),
        federation: handle.federation.clone(),
        require: handle.require.clone(),
        policy: handle.policy.name().to_string(),
    };
    let cfg = SourceConfig {
        stop_and_copy,
        step_timeout_ms: step_timeout(&node).as_millis() as u64,
        ..SourceConfig::default()
    };
    tracing::info!(memory = offer.memory_bytes, "migration offered");
    let mut src = Source::new(now(&node), offer, cfg);
    let mut maps: Vec<Vec<Digest>> = Vec::new();
    let migrations = &node.migrations;
    while let Some(action) = src.poll_action() {
        let answer = match action {
            SourceAction::Send(msg) => {
                let abort = matches!(msg, ToTarget::Abort { .. });
                let answer = exchange(&node, to, msg).await;
                if abort {
                    continue;
                }
                answer
            }
            SourceAction::SendModule => {
                migrations.update(id, |p| p.step = "module".into());
                match node.components.runtime().module_bytes(&handle.digest) {
                    Ok(wasm) => exchange(&node, to, ToTarget::Module { id, wasm }).await,
                    Err(e) => {
                        src.abort(now(&node), &format!("the module is not at hand: {e}"));
                        continue;
                    }
                }
            }
            SourceAction::SendRound { round } => {
                match handle.round(std::mem::take(&mut maps)).await {
                    Ok(r) => {
                        let bytes = page_bytes(&r.pages);
                        maps = r.maps;
                        src.round_sent(now(&node), round, bytes);
                        node.metrics.migration_bytes.inc_by(bytes);
                        migrations.update(id, |p| {
                            p.step = format!("round {round}");
                            p.rounds.push(RoundProgress {
                                round,
                                pages: bytes / continuum_migrate::PAGE_SIZE as u64,
                                bytes,
                            });
                        });
                        let pages = encode(r.pages).await;
                        exchange(&node, to, ToTarget::Pages { id, round, pages }).await
                    }
                    Err(e) => {
                        src.abort(now(&node), &format!("capturing round {round}: {e:#}"));
                        continue;
                    }
                }
            }
            SourceAction::FreezeAndSendFinal => {
                match handle.freeze(std::mem::take(&mut maps)).await {
                    Ok(f) => {
                        let bytes = page_bytes(&f.round.pages);
                        src.final_sent(now(&node), bytes);
                        node.metrics.migration_bytes.inc_by(bytes);
                        migrations.update(id, |p| p.step = "frozen".into());
                        let pages = encode(f.round.pages).await;
                        let mut digest = f.digest;
                        if faulty("source:bad-digest") {
                            digest[0] ^= 1;
                        }
                        let last = ToTarget::Final {
                            id,
                            pages,
                            globals: f.globals,
                            snapshot_digest: digest,
                        };
                        exchange(&node, to, last).await
                    }
                    Err(e) => {
                        src.abort(now(&node), &format!("freezing: {e:#}"));
                        continue;
                    }
                }
            }
            SourceAction::Switch { epoch } => {
                fault("source:switch");
                let held = node.components.moved(&handle, to, epoch).await;
                node.announce_components();
                for w in &held {
                    node.metrics.migration_held_seconds.observe(w.as_secs_f64());
                }
                migrations.update(id, |p| {
                    p.step = "switched".into();
                    p.outcome = Outcome::Committed { epoch };
                    p.held_ms = held.iter().map(|w| w.as_secs_f64() * 1000.0).collect();
                });
                tracing::info!(epoch, "switched: the component is the target's");
                continue;
            }
            SourceAction::Unfreeze => {
                handle.unfreeze().await;
                continue;
            }
            SourceAction::Finished(result) => {
                if result.is_err() && !src.is_committed() {
                    // Also ends write tracking if it never froze.
                    handle.unfreeze().await;
                }
                if result.is_ok() {
                    // The target saved the component before it confirmed.
                    node.components.forget(&handle.name).await;
                }
                finished(&node, id, src.is_committed(), result);
                continue;
            }
        };
        match answer {
            Ok(a) => src.handle_reply(now(&node), a),
            Err(why) => src.handle_transport_error(now(&node), &why),
        }
    }
}

fn finished(node: &Node, id: MigrationId, committed: bool, result: Result<Report, String>) {
    let outcome = match (&result, committed) {
        (Ok(_), _) => "ok",
        (Err(_), true) => "failed",
        (Err(_), false) => "aborted",
    };
    node.metrics.migration("source", outcome);
    match &result {
        Ok(r) => {
            node.metrics
                .migration_downtime_seconds
                .observe(r.downtime_ms as f64 / 1000.0);
            tracing::info!(
                rounds = r.rounds,
                precopy_bytes = r.precopy_bytes,
                final_bytes = r.final_bytes,
                downtime_ms = r.downtime_ms,
                total_ms = r.total_ms,
                "migrated"
            );
        }
        Err(e) if committed => tracing::warn!("migrated, but the target did not confirm: {e}"),
        Err(e) => tracing::warn!("migration aborted; the component goes on here: {e}"),
    }
    node.migrations.update(id, |p| {
        p.finished = true;
        match result {
            Ok(r) => {
                p.step = "done".into();
                p.report = Some(r);
            }
            Err(e) => {
                if !committed {
                    p.step = "aborted".into();
                    p.outcome = Outcome::Aborted;
                }
                p.error = Some(e);
            }
        }
    });
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

/// The target side: answer one message of a migration to this node.
pub async fn on_message(node: &Arc<Node>, from: PeerId, msg: ToTarget) -> ToSource {
    let id = msg.id();
    static CUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if matches!(msg, ToTarget::Pages { .. })
        && faulty("target:cut")
        && !CUT.swap(true, Ordering::Relaxed)
    {
        tracing::error!("fault injection: cutting the connection to {from}");
        node.mesh.disconnect(from);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match &msg {
        ToTarget::Offer(_) => fault("target:offer"),
        ToTarget::Pages { .. } => fault("target:pages"),
        ToTarget::Final { .. } => fault("target:final"),
        _ => {}
    }
    let msg = match msg {
        ToTarget::Offer(offer) => return offered(node, from, offer).await,
        msg => msg,
    };
    let staged = node
        .migrations
        .incoming
        .lock()
        .unwrap()
        .get(&id)
        .map(|(_, s)| s.clone());
    let Some(staged) = staged else {
        return match msg {
            ToTarget::Abort { .. } => ToSource::Aborted { id },
            _ => ToSource::Failed {
                id,
                reason: format!("no migration {id} under way here (it ended, or never began)"),
            },
        };
    };
    let mut st = staged.lock().await;
    if st.from != from {
        node.metrics.reject("migration_not_source");
        return ToSource::Failed {
            id,
            reason: "only the source of a migration may continue it".into(),
        };
    }
    if let Err(answer) = st.target.expect(&msg) {
        return answer;
    }
    let answer = match msg {
        ToTarget::Offer(_) => unreachable!("offers are answered above"),
        ToTarget::Module { wasm, .. } => {
            let digest = *blake3::hash(&wasm).as_bytes();
            if digest != st.target.offer().module_digest {
                node.metrics.reject("bad_migration");
                st.target
                    .failed("the module sent does not match the digest offered".into())
            } else {
                let rt = node.components.runtime().clone();
                match tokio::task::spawn_blocking(move || rt.load(&wasm)).await {
                    Ok(Ok(m)) => {
                        st.module = Some(m);
                        st.target.module_stored(now(node))
                    }
                    Ok(Err(e)) => st.target.failed(format!("module refused: {e}")),
                    Err(e) => st.target.failed(format!("module refused: {e}")),
                }
            }
        }
        ToTarget::Pages { round, pages, .. } => match apply(node, &mut st, pages, None).await {
            Ok(()) => st.target.round_applied(now(node), round),
            Err(e) => {
                node.metrics.reject("bad_migration");
                st.target.failed(e)
            }
        },
        ToTarget::Final {
            pages,
            globals,
            snapshot_digest,
            ..
        } => match apply(node, &mut st, pages, Some((globals, snapshot_digest))).await {
            Ok(()) => {
                let inst = st.instance.take().expect("apply leaves an instance");
                match node.components.adopt(inst).await {
                    Ok(h) => {
                        st.handle = Some(h);
                        fault("target:ready");
                        st.target.ready(now(node))
                    }
                    Err(e) => st.target.failed(e.to_string()),
                }
            }
            Err(e) => {
                node.metrics.reject("bad_migration");
                st.target.failed(e)
            }
        },
        ToTarget::Commit { epoch, .. } => {
            let (answer, action) = st.target.commit(epoch);
            if let Some(TargetAction::BecomeHost { epoch }) = action {
                become_host(node, st.handle.clone(), epoch).await;
            }
            answer
        }
        ToTarget::Abort { reason, .. } => {
            tracing::info!(id, "migration aborted by the source: {reason}");
            st.target.abort()
        }
    };
    settle(node, id, &mut st).await;
    answer
}

/// Once a staged migration is over, drop it (and whatever it staged, unless it became ours).
async fn settle(node: &Node, id: MigrationId, st: &mut Staged) {
    if !st.target.is_done() {
        return;
    }
    node.migrations.incoming.lock().unwrap().remove(&id);
    if !st.target.is_host() {
        st.instance = None;
        if let Some(h) = st.handle.take() {
            node.components.discard(&h).await;
        }
        node.metrics.migration("target", "aborted");
    }
}

/// The node's verdict on an offer: `Ok(have_module)` or why not.
async fn decide(
    node: &Node,
    from: PeerId,
    offer: &Offer,
) -> Result<Option<Arc<LoadedModule>>, String> {
    check_name(&offer.name).map_err(|e| e.to_string())?;
    if node.components.get(&offer.name).is_some() {
        return Err(format!(
            "a component named {} runs here already",
            offer.name
        ));
    }
    let busy = node
        .migrations
        .incoming
        .lock()
        .unwrap()
        .values()
        .any(|(name, _)| *name == offer.name);
    if busy {
        return Err(format!(
            "another migration of {} to this node is under way",
            offer.name
        ));
    }
    let cap = node.components.runtime().limits.memory_cap as u64;
    if offer.memory_bytes > cap {
        return Err(format!(
            "it holds {} MiB of memory, above this node's cap of {} MiB",
            offer.memory_bytes >> 20,
            cap >> 20
        ));
    }
    let bounds = crate::components::Bounds {
        federation: offer.federation.clone(),
        require: offer.require.clone(),
        policy: Default::default(),
    };
    node.admit(&bounds, Some(&from))?;
    let rt = node.components.runtime().clone();
    let digest = offer.module_digest;
    Ok(
        tokio::task::spawn_blocking(move || rt.load_digest(&digest).ok())
            .await
            .ok()
            .flatten(),
    )
}

async fn offered(node: &Arc<Node>, from: PeerId, offer: Offer) -> ToSource {
    let id = offer.id;
    let verdict = decide(node, from, &offer).await;
    let module = match &verdict {
        Ok(m) => m.clone(),
        Err(why) => {
            node.metrics.reject("migration_refused");
            node.metrics.migration("target", "refused");
            tracing::info!(component = %offer.name, %from, "migration refused: {why}");
            None
        }
    };
    let decision = verdict.map(|m| m.is_some());
    let (target, answer) = Target::new(
        now(node),
        offer,
        decision,
        step_timeout(node).as_millis() as u64,
    );
    if let Some(target) = target {
        tracing::info!(component = %target.offer().name, %from, id, "migration accepted");
        let staged = Arc::new(tokio::sync::Mutex::new(Staged {
            from,
            target,
            module,
            instance: None,
            maps: Vec::new(),
            handle: None,
        }));
        let name = staged
            .try_lock()
            .map(|s| s.target.offer().name.clone())
            .unwrap_or_default();
        node.migrations
            .incoming
            .lock()
            .unwrap()
            .insert(id, (name, staged.clone()));
        tokio::spawn(watch(node.clone(), id, staged).in_current_span());
    }
    answer
}

/// Write a round's pages (and, with `last`, the globals) into the staged instance, creating
/// it on the first; with `last`, check the whole state against the source's digest.
async fn apply(
    node: &Node,
    st: &mut Staged,
    pages: Vec<u8>,
    last: Option<(Vec<Value>, Digest)>,
) -> Result<(), String> {
    let rt = node.components.runtime().clone();
    let offer = st.target.offer().clone();
    let module = st.module.clone();
    let mut inst = st.instance.take();
    let mut maps = std::mem::take(&mut st.maps);
    let (inst, maps, result) = tokio::task::spawn_blocking(move || {
        let result = (|| -> Result<(), String> {
            let images = decode_pages(pages).map_err(|e| format!("pages refused: {e}"))?;
            let whole = inst.is_none();
            if whole {
                let module = match module {
                    Some(m) => m,
                    None => rt
                        .load_digest(&offer.module_digest)
                        .map_err(|e| format!("the module is not here: {e}"))?,
                };
                let meta = ComponentMeta {
                    name: offer.name.clone(),
                    version: offer.version.clone(),
                    abi: continuum_guest::ABI_VERSION,
                    epoch: offer.epoch + 1,
                    federation: offer.federation.clone(),
                    require: offer.require.clone(),
                    policy: offer.policy.clone(),
                };
                inst = Some(Instance::blank(&rt, module, meta).map_err(|e| format!("{e:#}"))?);
                maps = vec![(0, Vec::new()); images.len()];
            }
            let i = inst.as_mut().expect("created above");
            i.write_pages(&images, whole).map_err(|e| e.to_string())?;
            for ((size, map), img) in maps.iter_mut().zip(&images) {
                *size = img.size;
                map.resize(img.pages(), *ZERO_PAGE_DIGEST);
                for (k, &p) in img.present.iter().enumerate() {
                    map[p as usize].copy_from_slice(&img.digests[k * 32..k * 32 + 32]);
                }
            }
            if let Some((globals, digest)) = last {
                let meta = ComponentMeta {
                    epoch: offer.epoch,
                    ..i.meta().clone()
                };
                let views: Vec<(u64, &[Digest])> =
                    maps.iter().map(|(s, m)| (*s, m.as_slice())).collect();
                if Snapshot::digest_for(&meta, offer.module_digest, &views, &globals) != digest {
                    return Err(
                        "the state assembled here does not match the source's digest".into(),
                    );
                }
                i.finish_restore(&globals).map_err(|e| format!("{e:#}"))?;
            }
            Ok(())
        })();
        (inst, maps, result)
    })
    .await
    .map_err(|e| format!("worker failed: {e}"))?;
    st.instance = inst;
    st.maps = maps;
    result
}

async fn become_host(node: &Node, handle: Option<Arc<ComponentHandle>>, epoch: u64) {
    let Some(h) = handle else { return };
    h.stats.epoch.store(epoch, Ordering::Relaxed);
    node.announce_components();
    // It just arrived: its policy waits out a cool-down here before moving it again.
    node.placer.lock().unwrap().settle(now(node), &h.name);
    node.metrics.migration("target", "ok");
    tracing::info!(component = %h.name, epoch, "hosting the migrated component");
    if let Err(e) = node.components.save(&h.name, "migration").await {
        tracing::error!(component = %h.name, "first checkpoint after the migration failed: {e}");
    }
}

/// The target's timers: a source gone quiet before Ready means discard; Ready without a
/// Commit means ask the source how it ended.
async fn watch(node: Arc<Node>, id: MigrationId, staged: SharedStaged) {
    loop {
        let deadline = match staged.lock().await.target.poll_timeout() {
            Some(d) => d,
            None => return,
        };
        let at = node.started + Duration::from_millis(deadline);
        tokio::time::sleep_until(at.into()).await;
        let mut st = staged.lock().await;
        let mut action = st.target.handle_timeout(now(&node));
        if action == Some(TargetAction::ProbeSource) {
            let from = st.from;
            drop(st);
            tracing::info!(id, "ready but not committed: asking the source");
            let answer =
                tokio::time::timeout(step_timeout(&node), node.mesh.migration_status(from, id))
                    .await
                    .ok()
                    .and_then(|r| r.ok());
            st = staged.lock().await;
            action = st.target.probe_answer(now(&node), answer);
        }
        match action {
            Some(TargetAction::BecomeHost { epoch }) => {
                tracing::info!(id, "the source is gone or switched: taking over");
                become_host(&node, st.handle.clone(), epoch).await;
            }
            Some(TargetAction::Discard) => {
                tracing::info!(id, "the source went quiet: migration discarded");
            }
            _ => {}
        }
        settle(&node, id, &mut st).await;
        if st.target.is_done() {
            return;
        }
    }
}
