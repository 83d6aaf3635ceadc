//! Each component instance lives on its own thread, which serialises calls into it, runs its
//! ticks on time between requests, and takes checkpoints at the quiescent points between calls.
//! A runaway call blocks only this thread; the deadline stops it.

use super::instance::{CallError, Instance};
use super::now_ms;
use crate::metrics::{CallLabels, Metrics};
use continuum_gossip::PeerId;
use continuum_guest::{Request, Response};
use continuum_migrate::{Digest, MemoryDelta, Snapshot, Tracking, Value};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub enum Command {
    Call {
        req: Request,
        reply: oneshot::Sender<Answer>,
    },
    /// Capture the state; with `only_if_dirty`, answer `None` if nothing ran since the last one.
    Checkpoint {
        only_if_dirty: bool,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
    },
    /// A pre-copy round: the pages changed since `base` (a digest map per memory), and the
    /// new maps. The component goes on serving.
    Round {
        base: Vec<Vec<Digest>>,
        reply: oneshot::Sender<Result<Captured, String>>,
    },
    /// Capture the last changed pages and the globals, then hold every request until
    /// `Unfreeze` (serve them here) or `Moved` (hand them back to be sent to the new host).
    Freeze {
        base: Vec<Vec<Digest>>,
        reply: oneshot::Sender<Result<FinalState, String>>,
    },
    /// Live update: the state as the component hands it to its next version (layout, bytes);
    /// frozen as by `Freeze` once it succeeds.
    Handoff {
        reply: oneshot::Sender<Result<(u32, Vec<u8>), String>>,
    },
    Unfreeze,
    /// The component lives on `to` now: free the instance, and from here on answer every
    /// request with [`Answer::Moved`] until the last handle is dropped.
    /// Answers how long each held request waited.
    Moved {
        to: PeerId,
        reply: oneshot::Sender<Vec<Duration>>,
    },
    /// Finish what is queued before this, optionally take a last checkpoint, then end the
    /// thread. Requests queued after it are refused, so none is acknowledged and then lost.
    Stop {
        checkpoint: bool,
        reply: oneshot::Sender<Option<Result<Snapshot, String>>>,
    },
}

/// How a request came back from the component thread.
pub enum Answer {
    Done(Result<Response, CallError>),
    /// Not run here: the component moved to this peer; send the request there.
    Moved(PeerId, Request),
}

/// What the component thread hands out for a round.
pub enum Captured {
    Pages(Round),
    /// The first round: a plain copy of each memory, to be hashed off the component's thread
    /// (which goes back to serving after a memcpy rather than after hashing everything).
    Whole(Vec<Vec<u8>>),
}

/// One pre-copy round.
pub struct Round {
    pub pages: Vec<MemoryDelta>,
    pub maps: Vec<Vec<Digest>>,
}

/// What the source sends after the freeze: the state is complete with it.
pub struct FinalState {
    pub round: Round,
    pub globals: Vec<Value>,
    /// The digest a snapshot of the whole state would have, for the target to check.
    pub digest: Digest,
}

/// Figures about one component, readable without asking its thread.
#[derive(Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub failed_calls: AtomicU64,
    pub ticks: AtomicU64,
    pub memory_bytes: AtomicU64,
    /// Location epoch: grows by one each time the component moves.
    pub epoch: AtomicU64,
    /// Time spent running its code (requests and ticks), ns: what it costs its host.
    pub busy_ns: AtomicU64,
    /// Its share of a core lately, in thousandths (kept by the node's load meter).
    pub cpu_milli: AtomicU64,
}

/// Why a request did not reach the component.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("component {0} has too many requests waiting; try again")]
    Overloaded(String),
    #[error("component {0} was stopped or replaced while the request waited")]
    Gone(String),
    /// It moved while the request waited; the request was not run and comes back.
    #[error("component {name} moved to {to}")]
    Moved {
        name: String,
        to: PeerId,
        req: Box<Request>,
    },
}

/// The handle the rest of the node uses to reach a component.
pub struct ComponentHandle {
    pub name: String,
    pub version: String,
    pub digest: Digest,
    pub module_size: usize,
    /// Where it may run: within this federation, on nodes with these labels.
    pub federation: Option<String>,
    pub require: std::collections::BTreeMap<String, String>,
    pub policy: continuum_gossip::Policy,
    pub stats: Arc<Stats>,
    tx: SyncSender<Command>,
}

impl ComponentHandle {
    /// Start the thread that owns `inst`.
    pub fn spawn(
        inst: Instance,
        metrics: Arc<Metrics>,
        queue_depth: usize,
    ) -> std::io::Result<Arc<Self>> {
        let meta = inst.meta().clone();
        let stats = Arc::new(Stats::default());
        stats
            .memory_bytes
            .store(inst.memory_bytes(), Ordering::Relaxed);
        stats.epoch.store(meta.epoch, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_depth);
        let handle = Arc::new(ComponentHandle {
            name: meta.name.clone(),
            version: meta.version.clone(),
            digest: inst.module().digest,
            module_size: inst.module().size,
            federation: meta.federation.clone(),
            policy: meta.policy.parse().unwrap_or_default(),
            require: meta.require.clone(),
            stats: stats.clone(),
            tx,
        });
        std::thread::Builder::new()
            .name(format!("c:{}", meta.name))
            .spawn(move || {
                let span = tracing::info_span!("component", name = %meta.name);
                let _entered = span.enter();
                run(inst, rx, &stats, &metrics);
            })?;
        Ok(handle)
    }

    fn send(&self, cmd: Command) -> Result<(), Unavailable> {
        self.tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => Unavailable::Overloaded(self.name.clone()),
            TrySendError::Disconnected(_) => Unavailable::Gone(self.name.clone()),
        })
    }

    pub async fn call(&self, req: Request) -> Result<Result<Response, CallError>, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call { req, reply })?;
        match rx.await {
            Ok(Answer::Done(r)) => Ok(r),
            Ok(Answer::Moved(to, req)) => Err(Unavailable::Moved {
                name: self.name.clone(),
                to,
                req: Box::new(req),
            }),
            Err(_) => Err(Unavailable::Gone(self.name.clone())),
        }
    }

    /// Send a command that must not be refused for a full queue (it waits for room), and
    /// wait for its answer.
    async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command + Send + 'static,
    ) -> Result<T, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.tell(make(reply)).await?;
        rx.await.map_err(|_| Unavailable::Gone(self.name.clone()))
    }

    /// Send a command that must not be refused for a full queue.
    async fn tell(&self, cmd: Command) -> Result<(), Unavailable> {
        let tx = self.tx.clone();
        match tokio::task::spawn_blocking(move || tx.send(cmd)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Unavailable::Gone(self.name.clone())),
        }
    }

    pub async fn checkpoint(&self, only_if_dirty: bool) -> anyhow::Result<Option<Snapshot>> {
        self.ask(move |reply| Command::Checkpoint {
            only_if_dirty,
            reply,
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))
    }

    pub async fn round(&self, base: Vec<Vec<Digest>>) -> anyhow::Result<Round> {
        let captured = self
            .ask(move |reply| Command::Round { base, reply })
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        match captured {
            Captured::Pages(round) => Ok(round),
            Captured::Whole(copies) => Ok(tokio::task::spawn_blocking(move || {
                let (pages, maps) = copies
                    .iter()
                    .map(|m| MemoryDelta::changed_since(m, &[]))
                    .unzip();
                Round { pages, maps }
            })
            .await?),
        }
    }

    pub async fn freeze(&self, base: Vec<Vec<Digest>>) -> anyhow::Result<FinalState> {
        self.ask(move |reply| Command::Freeze { base, reply })
            .await?
            .map_err(|e| anyhow::anyhow!(e))
    }

    pub async fn handoff(&self) -> anyhow::Result<(u32, Vec<u8>)> {
        self.ask(|reply| Command::Handoff { reply })
            .await?
            .map_err(|e| anyhow::anyhow!(e))
    }

    pub async fn unfreeze(&self) {
        let _ = self.tell(Command::Unfreeze).await;
    }

    /// Hand the component over to `to`; how long each request held by the freeze waited.
    pub async fn moved(&self, to: PeerId) -> Vec<Duration> {
        self.ask(move |reply| Command::Moved { to, reply })
            .await
            .unwrap_or_default()
    }

    /// Stop the thread after the commands queued before this one; with `checkpoint`, return
    /// the state it ended with.
    pub async fn stop(&self, checkpoint: bool) -> Option<anyhow::Result<Snapshot>> {
        self.ask(move |reply| Command::Stop { checkpoint, reply })
            .await
            .ok()
            .flatten()
            .map(|r| r.map_err(|e| anyhow::anyhow!(e)))
    }
}

/// The component thread's state.
struct Actor<'a> {
    inst: Instance,
    stats: &'a Stats,
    metrics: &'a Metrics,
    name: String,
    calls_ok: Counter,
    /// Something ran since the last checkpoint.
    dirty: bool,
    /// Kernel write tracking during a migration's pre-copy rounds.
    tracking: Option<Tracking>,
}

impl Actor<'_> {
    fn failures(&self, family: &Family<CallLabels, Counter>, outcome: &'static str) -> Counter {
        family
            .get_or_create(&CallLabels {
                component: self.name.clone(),
                outcome,
            })
            .clone()
    }

    fn serve(&mut self, req: Request, reply: oneshot::Sender<Answer>) {
        self.dirty = true;
        let began = Instant::now();
        let result = self.inst.call(&req);
        self.busy(began);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            self.stats.failed_calls.fetch_add(1, Ordering::Relaxed);
            self.failures(&self.metrics.calls, e.outcome()).inc();
            tracing::warn!(target = %req.target, "call failed: {e}");
        } else {
            self.calls_ok.inc();
        }
        self.stats
            .memory_bytes
            .store(self.inst.memory_bytes(), Ordering::Relaxed);
        let _ = reply.send(Answer::Done(result));
    }

    fn busy(&self, since: Instant) {
        let ns = since.elapsed().as_nanos() as u64;
        self.stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn checkpoint(&mut self) -> Result<Snapshot, String> {
        self.inst
            .set_epoch(self.stats.epoch.load(Ordering::Relaxed));
        self.inst.checkpoint().map_err(|e| e.to_string())
    }

    /// A round: the first of a migration (empty `base`) starts write tracking, so that the
    /// later ones, the freeze above all, look only at pages written since, and copies the
    /// memories out whole; the later ones carry the pages changed since `base`.
    fn round(&mut self, base: &[Vec<Digest>]) -> Captured {
        if !base.is_empty() {
            return Captured::Pages(self.pages_since(base));
        }
        // Track first, then copy: a write in between shows up twice, never not at all.
        self.tracking = match self.inst.track() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::info!("no kernel write tracking ({e}): every round hashes every page");
                None
            }
        };
        Captured::Whole(self.inst.copy_memories())
    }

    /// The pages changed since `base` (every page when `base` is empty).
    fn pages_since(&mut self, base: &[Vec<Digest>]) -> Round {
        let tracking = if base.is_empty() {
            None
        } else {
            self.tracking.as_mut()
        };
        let (pages, maps) = self.inst.capture_round(base, tracking);
        Round { pages, maps }
    }

    fn final_state(&mut self, base: &[Vec<Digest>]) -> Result<FinalState, String> {
        let round = self.pages_since(base);
        let globals = self.inst.globals().map_err(|e| e.to_string())?;
        let mut meta = self.inst.meta().clone();
        meta.epoch = self.stats.epoch.load(Ordering::Relaxed);
        let maps: Vec<(u64, &[Digest])> = round
            .pages
            .iter()
            .zip(&round.maps)
            .map(|(p, m)| (p.size, m.as_slice()))
            .collect();
        let digest = Snapshot::digest_for(&meta, self.inst.module().digest, &maps, &globals);
        Ok(FinalState {
            round,
            globals,
            digest,
        })
    }
}

fn run(inst: Instance, rx: Receiver<Command>, stats: &Stats, metrics: &Metrics) {
    let name = inst.meta().name.clone();
    let mut next_tick = inst.has_tick().then(Instant::now);
    let mut a = Actor {
        calls_ok: metrics
            .calls
            .get_or_create(&CallLabels {
                component: name.clone(),
                outcome: "ok",
            })
            .clone(),
        inst,
        stats,
        metrics,
        name,
        dirty: false,
        tracking: None,
    };
    let ticks_ok = a.failures(&metrics.ticks, "ok");
    // Requests held while frozen for a migration (`None`: not frozen).
    let mut held: Option<Vec<(Request, oneshot::Sender<Answer>, Instant)>> = None;

    let moved_to = loop {
        // Frozen, the component runs nothing: its state is on its way elsewhere.
        let next = next_tick.filter(|_| held.is_none());
        if let Some(at) = next {
            let now = Instant::now();
            if now >= at {
                a.dirty = true;
                stats.ticks.fetch_add(1, Ordering::Relaxed);
                let ticked = a.inst.tick(now_ms());
                a.busy(now);
                next_tick = match ticked {
                    Ok(Some(period)) => {
                        ticks_ok.inc();
                        // Keep the period anchored to the schedule, not to when we woke up;
                        // if we fell a whole period behind, skip rather than burst.
                        let next = at + period;
                        Some(if next <= now { now + period } else { next })
                    }
                    Ok(None) => None,
                    Err(e) => {
                        a.failures(&metrics.ticks, e.outcome()).inc();
                        tracing::warn!("tick failed: {e}; retrying in 1 s");
                        Some(now + Duration::from_secs(1))
                    }
                };
                continue;
            }
        }
        let cmd = match next {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break None,
            },
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => break None,
            },
        };
        match cmd {
            Command::Call { req, reply } => match &mut held {
                Some(held) => held.push((req, reply, Instant::now())),
                None => a.serve(req, reply),
            },
            Command::Checkpoint {
                only_if_dirty,
                reply,
            } => {
                let result = if only_if_dirty && !a.dirty {
                    Ok(None)
                } else {
                    let started = Instant::now();
                    let snap = a.checkpoint().map(Some);
                    metrics
                        .checkpoint_seconds
                        .observe(started.elapsed().as_secs_f64());
                    a.dirty = snap.is_err();
                    snap
                };
                let _ = reply.send(result);
            }
            Command::Round { base, reply } => {
                let _ = reply.send(match held {
                    Some(_) => Err("the component is frozen".into()),
                    None => Ok(a.round(&base)),
                });
            }
            Command::Freeze { base, reply } => {
                let result = match held {
                    Some(_) => Err("the component is frozen already".into()),
                    None => a.final_state(&base),
                };
                if result.is_ok() {
                    held = Some(Vec::new());
                }
                let _ = reply.send(result);
            }
            Command::Handoff { reply } => {
                let result = match held {
                    Some(_) => Err("the component is frozen already".into()),
                    None => a.inst.save_state().map_err(|e| format!("{e:#}")),
                };
                if result.is_ok() {
                    held = Some(Vec::new());
                }
                let _ = reply.send(result);
            }
            Command::Unfreeze => {
                a.tracking = None;
                for (req, reply, _) in held.take().unwrap_or_default() {
                    a.serve(req, reply);
                }
            }
            Command::Moved { to, reply } => {
                let mut waited = Vec::new();
                for (req, r, since) in held.take().unwrap_or_default() {
                    waited.push(since.elapsed());
                    let _ = r.send(Answer::Moved(to, req));
                }
                let _ = reply.send(waited);
                break Some(to);
            }
            Command::Stop { checkpoint, reply } => {
                let _ = reply.send(checkpoint.then(|| a.checkpoint()));
                break None;
            }
        }
    };
    let Some(to) = moved_to else { return };
    // The state lives on elsewhere: free it, and send back every request that still comes
    // (from callers that took the handle before the switch) until the last handle goes.
    drop(a);
    tracing::info!(%to, "moved; redirecting late requests");
    for cmd in rx {
        match cmd {
            Command::Call { req, reply } => {
                let _ = reply.send(Answer::Moved(to, req));
            }
            Command::Stop { reply, .. } => {
                let _ = reply.send(None);
            }
            _ => {}
        }
    }
}
