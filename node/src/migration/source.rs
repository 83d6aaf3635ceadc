//! The source side of a migration: carry out what `continuum_migrate::Source` asks.

use super::direct::{self, Direct};
use super::{KEEP_FINISHED, Progress, RoundProgress, fault, faulty, now, step_timeout};
use crate::components::ApiError;
use crate::context::Node;
use crate::metrics::PathLabels;
use crate::runtime::{ComponentHandle, First, LiveRound};
use continuum_gossip::PeerId;
use continuum_migrate::{
    Digest, MemoryDelta, MigrationId, Offer, Outcome, Report, Source, SourceAction, SourceConfig,
    ToSource, ToTarget, encode_pages, split_round,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

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

/// How the source reaches the target: the mesh, and for the pages the direct connection
/// once the target invited it and it connected.
struct Link {
    node: Arc<Node>,
    to: PeerId,
    direct: Path,
}

enum Path {
    Mesh,
    Connecting(tokio::task::JoinHandle<Result<Direct, String>>),
    Direct(Direct),
}

/// Longest the pages wait for the direct connection to come up before they take the mesh.
const CONNECTING: Duration = Duration::from_secs(2);

/// A part of a round that takes longer than this on the direct connection means its thread
/// (at background priority) is starved on a saturated machine: the rest goes over the mesh.
const STARVED: Duration = Duration::from_secs(2);

impl Link {
    /// Send one message to the target and wait (bounded) for its answer.
    async fn exchange(&mut self, msg: ToTarget) -> Result<ToSource, String> {
        let limit = step_timeout(&self.node);
        let pages = direct::carries(&msg);
        if pages && self.direct().await.is_some() {
            self.counted("direct");
            let Path::Direct(d) = &self.direct else {
                unreachable!("checked above")
            };
            let started = Instant::now();
            let answer = tokio::time::timeout(limit, d.exchange(msg))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            if answer.is_err() || started.elapsed() > STARVED {
                tracing::info!(
                    took = ?started.elapsed(),
                    "the rest of the pages go over the mesh, not the direct connection"
                );
                self.direct = Path::Mesh;
            }
            return answer;
        }
        if pages {
            self.counted("mesh");
        }
        match tokio::time::timeout(limit, self.node.mesh.migrate(self.to, msg)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    fn counted(&self, path: &'static str) {
        self.node
            .metrics
            .migration_pages
            .get_or_create(&PathLabels { path })
            .inc();
    }

    /// The target invited a direct connection: open it in the background (the module, if
    /// it is sent, and the first round's capture go on meanwhile).
    fn invited(&mut self, invite: Vec<u8>) {
        let step = step_timeout(&self.node);
        self.direct = Path::Connecting(tokio::task::spawn_blocking(move || {
            Direct::connect(&invite, step)
        }));
    }

    /// The direct connection, once it is up (waiting a little for it if it is coming).
    async fn direct(&mut self) -> Option<&Direct> {
        if let Path::Connecting(h) = &mut self.direct {
            self.direct = match tokio::time::timeout(CONNECTING, h).await {
                Ok(Ok(Ok(d))) => {
                    tracing::info!(peer = %d.peer, "pages over a direct connection");
                    Path::Direct(d)
                }
                Ok(Ok(Err(e))) => {
                    tracing::info!("pages over the mesh: no direct connection ({e})");
                    Path::Mesh
                }
                _ => {
                    tracing::info!("pages over the mesh: the direct connection is slow to come");
                    Path::Mesh
                }
            };
        }
        match &self.direct {
            Path::Direct(d) => Some(d),
            _ => None,
        }
    }
}

fn page_bytes(pages: &[MemoryDelta]) -> u64 {
    pages.iter().map(|m| m.data.len() as u64).sum()
}

/// Pages in one message at most: a round larger than this goes as parts, each a message of its
/// own, so that no decode holds up the connection (and the requests it carries) for long.
const PART_PAGES: usize = 256;

/// Where a round's parts come from: a round captured whole, cut into parts; or the first
/// round, read from the running component a part at a time.
enum Parts {
    Cut(std::vec::IntoIter<Vec<MemoryDelta>>),
    Live(LiveRound),
}

impl Parts {
    fn cut(pages: &[MemoryDelta]) -> Parts {
        Parts::Cut(split_round(pages, PART_PAGES).into_iter())
    }

    async fn next(&mut self) -> Result<Option<Vec<MemoryDelta>>, String> {
        match self {
            Parts::Cut(parts) => Ok(parts.next()),
            Parts::Live(round) => round.next(PART_PAGES).await.map_err(|e| format!("{e:#}")),
        }
    }
}

/// Send all but the last part as `Part`s, each answered before the next; the last part,
/// encoded, for the message that ends them, and the page bytes of them all. An answer other
/// than `PartApplied` (or a transport error, or a part that could not be read) comes back as
/// it is, for the machine.
async fn send_parts(
    link: &mut Link,
    id: MigrationId,
    parts: &mut Parts,
) -> Result<(Vec<u8>, u64), Result<ToSource, String>> {
    let mut held = parts.next().await.map_err(Err)?.unwrap_or_default();
    let mut bytes = 0;
    loop {
        bytes += page_bytes(&held);
        let Some(next) = parts.next().await.map_err(Err)? else {
            return Ok((encode(held).await, bytes));
        };
        let encoded = encode(held).await;
        match link.exchange(ToTarget::Part { id, pages: encoded }).await {
            Ok(ToSource::PartApplied { .. }) => {}
            other => return Err(other),
        }
        held = next;
    }
}

async fn encode(pages: Vec<MemoryDelta>) -> Vec<u8> {
    crate::bulk::run(move || encode_pages(&pages))
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
    // (A hand-off for the wrong epoch, to see the target refuse it, under fault injection.)
    let given = offer.epoch + if faulty("source:bad-handoff") { 2 } else { 1 };
    let handoff = node.mesh.sign_handoff(&offer.name, given, to);
    let mut src = Source::new(now(&node), offer, cfg);
    let mut link = Link {
        node: node.clone(),
        to,
        direct: Path::Mesh,
    };
    let mut maps: Vec<Vec<Digest>> = Vec::new();
    let migrations = &node.migrations;
    while let Some(action) = src.poll_action() {
        let answer = match action {
            SourceAction::Send(msg) => {
                // After the end an Abort is a courtesy; in doubt, its answer settles things.
                let courtesy = src.is_finished();
                let answer = link.exchange(msg).await;
                if courtesy {
                    continue;
                }
                if let Ok(ToSource::Accepted { direct, .. }) = &answer
                    && !direct.is_empty()
                {
                    link.invited(direct.clone());
                }
                answer
            }
            SourceAction::SendModule => {
                migrations.update(id, |p| p.step = "module".into());
                match node.components.runtime().module_bytes(&handle.digest) {
                    Ok(wasm) => link.exchange(ToTarget::Module { id, wasm }).await,
                    Err(e) => {
                        src.abort(now(&node), &format!("the module is not at hand: {e}"));
                        continue;
                    }
                }
            }
            SourceAction::SendRound { round } => {
                let first = if maps.is_empty() {
                    handle.first_round().await
                } else {
                    handle
                        .round(std::mem::take(&mut maps))
                        .await
                        .map(First::Captured)
                };
                let mut parts = match first {
                    Ok(First::Captured(r)) => {
                        maps = r.maps;
                        Parts::cut(&r.pages)
                    }
                    Ok(First::Live(r)) => Parts::Live(r),
                    Err(e) => {
                        src.abort(now(&node), &format!("capturing round {round}: {e:#}"));
                        continue;
                    }
                };
                migrations.update(id, |p| p.step = format!("round {round}"));
                match send_parts(&mut link, id, &mut parts).await {
                    Ok((pages, bytes)) => {
                        if let Parts::Live(r) = parts {
                            maps = r.into_maps();
                        }
                        src.round_sent(now(&node), round, bytes);
                        node.metrics.migration_bytes.inc_by(bytes);
                        migrations.update(id, |p| {
                            p.rounds.push(RoundProgress {
                                round,
                                pages: bytes / continuum_migrate::PAGE_SIZE as u64,
                                bytes,
                            });
                        });
                        link.exchange(ToTarget::Pages { id, round, pages }).await
                    }
                    Err(answer) => answer,
                }
            }
            SourceAction::FreezeAndSendFinal => {
                match handle.freeze(std::mem::take(&mut maps)).await {
                    Ok(f) => {
                        let bytes = page_bytes(&f.round.pages);
                        src.final_sent(now(&node), bytes);
                        node.metrics.migration_bytes.inc_by(bytes);
                        migrations.update(id, |p| p.step = "frozen".into());
                        let mut digest = f.digest;
                        if faulty("source:bad-digest") {
                            digest[0] ^= 1;
                        }
                        match send_parts(&mut link, id, &mut Parts::cut(&f.round.pages)).await {
                            Ok((pages, _)) => {
                                let last = ToTarget::Final {
                                    id,
                                    pages,
                                    globals: f.globals,
                                    snapshot_digest: digest,
                                    carried: f.carried,
                                    handoff: handoff.clone(),
                                };
                                link.exchange(last).await
                            }
                            Err(answer) => answer,
                        }
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
