//! The target side of a migration: answer with `continuum_migrate::Target`.

use super::{fault, faulty, now, step_timeout};
use crate::components::check_name;
use crate::context::Node;
use crate::fault::faulty_file;
use crate::runtime::carried::CarriedLimits;
use crate::runtime::{Carried, ComponentHandle, Instance, LoadedModule};
use continuum_gossip::PeerId;
use continuum_migrate::{
    ComponentMeta, Digest, MigrationId, Offer, Snapshot, Target, TargetAction, ToSource, ToTarget,
    Value, ZERO_PAGE_DIGEST, decode_pages,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::Instrument;

/// A migration to this node, between the offer and the end.
pub(super) struct Staged {
    from: PeerId,
    target: Target,
    module: Option<Arc<LoadedModule>>,
    instance: Option<Instance>,
    /// Size and page digests of each memory as assembled so far.
    maps: Vec<(u64, Vec<Digest>)>,
    /// The component, serving, from Ready on.
    handle: Option<Arc<ComponentHandle>>,
}

pub(super) type SharedStaged = Arc<tokio::sync::Mutex<Staged>>;

/// The target side: answer one message of a migration to this node.
pub async fn on_message(node: &Arc<Node>, from: PeerId, msg: ToTarget) -> ToSource {
    let id = msg.id();
    if cut(node, &msg, from) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A freeze as long as the test likes: the last step waits while the file is there.
    while matches!(msg, ToTarget::Final { .. }) && faulty_file("target:hold-final") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match &msg {
        ToTarget::Offer(_) => fault("target:offer"),
        ToTarget::Pages { .. } | ToTarget::Part { .. } => fault("target:pages"),
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
            // A source in doubt asking after this node took over: it must switch, not resume.
            ToTarget::Abort { .. } if node.migrations.was_hosted(id) => ToSource::Done { id },
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
                match crate::bulk::run(move || rt.load(&wasm)).await {
                    Ok(Ok(m)) => {
                        st.module = Some(m);
                        st.target.module_stored(now(node))
                    }
                    Ok(Err(e)) => {
                        node.metrics.reject("bad_module");
                        st.target.failed(format!("module refused: {e}"))
                    }
                    Err(e) => st.target.failed(format!("module refused: {e}")),
                }
            }
        }
        ToTarget::Part { pages, .. } => match apply(node, &mut st, pages, None).await {
            Ok(()) => st.target.part_applied(now(node)),
            Err(e) => {
                node.metrics.reject("bad_migration");
                st.target.failed(e)
            }
        },
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
            carried,
            handoff,
            ..
        } => match carried_from(node, &carried).and_then(|c| {
            let h = handoff_from(node, &st, &handoff)?;
            Ok((c, h))
        }) {
            Err(e) => {
                node.metrics.reject("bad_migration");
                st.target.failed(e)
            }
            Ok((carried, handoff)) => {
                match apply(node, &mut st, pages, Some((globals, snapshot_digest))).await {
                    Ok(()) => {
                        let inst = st.instance.take().expect("apply leaves an instance");
                        match node
                            .components
                            .adopt(inst, carried.map(|c| (c, from)))
                            .await
                        {
                            Ok(h) => {
                                let _ = h.handoff.set(handoff);
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
                }
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

/// Fault injection (`target:cut`): on the first round, cut the connections to the source;
/// whether it did.
pub(super) fn cut(node: &Node, msg: &ToTarget, from: PeerId) -> bool {
    static CUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let cut = matches!(msg, ToTarget::Pages { .. } | ToTarget::Part { .. })
        && faulty("target:cut")
        && !CUT.swap(true, Ordering::Relaxed);
    if cut {
        tracing::error!("fault injection: cutting the connection to {from}");
        node.mesh.disconnect(from);
    }
    cut
}

/// The requests in flight a source sent with its last pages, checked against this node's
/// limits (`None`: it sent none, as an ABI v1 component).
fn carried_from(node: &Node, bytes: &[u8]) -> Result<Option<Carried>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let l = &node.config.limits;
    let limits = CarriedLimits {
        tasks: l.queue_depth,
        ops: l.max_calls + l.queue_depth,
        depth: l.max_call_depth,
        longest: l.call_timeout + Duration::from_secs(1),
    };
    Carried::decode(bytes, &limits).map(Some)
}

/// Once a staged migration is over, drop it (and whatever it staged, unless it became ours).
async fn settle(node: &Node, id: MigrationId, st: &mut Staged) {
    if !st.target.is_done() {
        return;
    }
    node.migrations.incoming.lock().unwrap().remove(&id);
    node.migrations.direct.forget(id);
    if st.target.is_host() {
        node.migrations.hosted(id);
    } else {
        st.instance = None;
        st.module = None;
        if let Some(h) = st.handle.take() {
            node.components.discard(&h).await;
        }
        node.components.sweep_modules();
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
    let earlier: Vec<(MigrationId, SharedStaged)> = node
        .migrations
        .incoming
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (name, _))| *name == offer.name)
        .map(|(id, (_, staged))| (*id, staged.clone()))
        .collect();
    for (id, staged) in earlier {
        // The same source offering again has given up its earlier attempt (a source runs one
        // migration of a component at a time): drop what that one staged, unless it got as far
        // as Ready, which only that migration's own end may settle.
        let mut st = staged.lock().await;
        if st.from != from || st.target.serves() {
            return Err(format!(
                "another migration of {} to this node is under way",
                offer.name
            ));
        }
        tracing::info!(id, "superseded by a new offer from the same source");
        st.target.abort();
        settle(node, id, &mut st).await;
    }
    let under_way = node.migrations.incoming.lock().unwrap().len();
    if under_way >= super::MAX_INCOMING {
        return Err(format!(
            "{under_way} migrations to this node are under way, the most it takes at once"
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
    Ok(crate::bulk::run(move || rt.load_digest(&digest).ok())
        .await
        .ok()
        .flatten())
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
    let (target, mut answer) = Target::new(
        now(node),
        offer,
        decision,
        step_timeout(node).as_millis() as u64,
    );
    if let ToSource::Accepted { direct, .. } = &mut answer {
        *direct = super::direct::invite(node, id, from);
    }
    if let Some(target) = target {
        let name = target.offer().name.clone();
        tracing::info!(component = %name, %from, id, "migration accepted");
        let staged = Arc::new(tokio::sync::Mutex::new(Staged {
            from,
            target,
            module,
            instance: None,
            maps: Vec::new(),
            handle: None,
        }));
        node.migrations
            .incoming
            .lock()
            .unwrap()
            .insert(id, (name, staged.clone()));
        tokio::spawn(watch(node.clone(), id, staged).in_current_span());
    }
    answer
}

/// The source's hand-off, checked: signed by the source, for this component, to this node,
/// at the epoch it will have here. Without it no node that held the old copy could tell the
/// move from a forged claim.
fn handoff_from(
    node: &Node,
    st: &Staged,
    bytes: &[u8],
) -> Result<continuum_gossip::SignedHandoff, String> {
    let signed = continuum_gossip::SignedHandoff::from_bytes(bytes)
        .map_err(|e| format!("hand-off refused: {e}"))?;
    let h = signed
        .verify()
        .map_err(|e| format!("hand-off refused: {e}"))?;
    let offer = st.target.offer();
    if h.from != st.from
        || h.to != node.mesh.me()
        || h.name != offer.name
        || h.epoch != offer.epoch + 1
    {
        return Err(format!(
            "hand-off refused: it gives {} at epoch {} from {} to {}, not {} at epoch {} from {} to this node",
            h.name,
            h.epoch,
            h.from,
            h.to,
            offer.name,
            offer.epoch + 1,
            st.from
        ));
    }
    Ok(signed)
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
    let (inst, maps, result) = crate::bulk::run(move || {
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
    node.components.keep_handoff(&h);
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
