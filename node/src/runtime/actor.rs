//! Each component instance lives on its own thread, which serialises calls into it, runs its
//! ticks on time between requests, and takes checkpoints at the quiescent points between calls.
//! A runaway call blocks only this thread; the deadline stops it.
//!
//! A component of ABI v2 serves each request as a task of its own small executor. The thread
//! starts the task, carries out the calls and timers the guest asks for (their results come
//! back here as commands, in any order), enters the guest again with each result, and answers
//! when the guest says a task finished. Between two entries no Wasm frame is live, so however
//! many requests wait, checkpoints, migrations, ticks and other requests go on meanwhile.

use super::carried::{Carried, CarriedOp, CarriedTask, CarriedTick};
use super::host::{GuestIo, NewOp, OpStart};
use super::instance::{CallError, Entry, Instance, Ticked, ticked};
use super::router::{CALLER_HEADER, CallCtx, ERROR_HEADER, Router, call_result, error_response};
use super::{RuntimeLimits, now_ms};
use crate::metrics::{CallLabels, ComponentLabels, Metrics};
use crate::runtime::router::HOST_HEADER;
use continuum_gossip::PeerId;
use continuum_guest::{CallError as GuestCallError, Request, Response, abi};
use continuum_migrate::{Digest, MemoryDelta, Snapshot, Tracking, Value};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub enum Command {
    Call {
        req: Request,
        ctx: CallCtx,
        reply: ReplyTo,
    },
    /// The result of operation `op` (a call the component made), in the ABI's encoding, from
    /// `from` (`None`: this node).
    Wake {
        op: u64,
        result: Vec<u8>,
        from: Option<PeerId>,
    },
    /// Capture the state; with `only_if_dirty`, answer `None` if nothing ran since the last one.
    Checkpoint {
        only_if_dirty: bool,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
    },
    /// A pre-copy round after the first: the pages changed since `base` (a digest map per
    /// memory), and the new maps. The component goes on serving.
    Round {
        base: Vec<Vec<Digest>>,
        reply: oneshot::Sender<Result<Captured, String>>,
    },
    /// The first round, part one: start write tracking; the length of every memory, and the
    /// memories themselves to read while the component runs, where that is safe.
    Track {
        reply: oneshot::Sender<Result<Tracked, String>>,
    },
    /// The first round, part two: copy every memory into `buffers` (sized by `Track`), a
    /// piece at a time between requests, and hand them back filled.
    Copy {
        buffers: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Captured, String>>,
    },
    /// Capture the last changed pages, the globals and the requests in flight, then hold every
    /// request until `Unfreeze` (serve them here) or `Moved` (hand them back to be sent to the
    /// new host).
    Freeze {
        base: Vec<Vec<Digest>>,
        reply: oneshot::Sender<Result<FinalState, String>>,
    },
    /// Live update: once no request is in flight (a new version cannot take over this one's
    /// futures), the state as the component hands it to its next version (layout, bytes);
    /// frozen as by `Freeze` once it succeeds.
    Handoff {
        reply: oneshot::Sender<Result<(u32, Vec<u8>), String>>,
    },
    Unfreeze,
    /// A checkpoint's copy that ran on the bulk pool is done (see [`CopyOut`]).
    Copied,
    /// The component lives on `to` now: free the instance, and from here on answer every
    /// request with [`Answer::Moved`] (and send every result on) until the last handle is
    /// dropped. Answers how long each held request waited.
    Moved {
        to: PeerId,
        reply: oneshot::Sender<Vec<Duration>>,
    },
    /// Finish what is queued before this (with `checkpoint`, also the requests in flight, for
    /// a bounded time), optionally take a last checkpoint, then end the thread. Requests queued
    /// after it are refused, so none is acknowledged and then lost.
    Stop {
        checkpoint: bool,
        reply: oneshot::Sender<Option<Result<Snapshot, String>>>,
    },
}

/// Where a request's answer goes: a client's handler waiting on a oneshot, or straight to the
/// thread of the component that called (a call on one node, with no hop through the async
/// runtime).
pub struct ReplyTo(Box<dyn FnOnce(Answer) + Send>);

impl ReplyTo {
    pub fn new(f: impl FnOnce(Answer) + Send + 'static) -> ReplyTo {
        ReplyTo(Box::new(f))
    }

    pub fn oneshot(tx: oneshot::Sender<Answer>) -> ReplyTo {
        ReplyTo::new(move |a| {
            let _ = tx.send(a);
        })
    }

    pub fn send(self, a: Answer) {
        (self.0)(a)
    }
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
    /// A later round with kernel tracking: copies of the written pages (and the base maps), to
    /// be hashed and compared off the component's thread.
    Written(Vec<Vec<Digest>>, Vec<continuum_migrate::WrittenPages>),
    /// The first round: a plain copy of each memory, to be hashed off the component's thread
    /// (which goes back to serving after a memcpy rather than after hashing everything).
    Whole(Vec<Vec<u8>>),
}

/// A migration's first round, as [`ComponentHandle::first_round`] takes it.
pub enum First {
    /// Copied out and hashed whole.
    Captured(Round),
    /// To be read while the component runs, a part at a time.
    Live(LiveRound),
}

/// The first round of a migration, read from the running component's memories on the bulk
/// pool a part at a time (see [`continuum_migrate::FirstRound`]).
pub struct LiveRound {
    /// The reader and the views it reads (kept alive as long as it reads); `None` once done
    /// or while a part is being read.
    reading: Option<(continuum_migrate::FirstRound, Vec<Live>)>,
}

impl LiveRound {
    /// The next part, at most `max_pages` pages; `None` once every page was read.
    pub async fn next(&mut self, max_pages: usize) -> anyhow::Result<Option<Vec<MemoryDelta>>> {
        let Some((mut reader, live)) = self.reading.take() else {
            return Ok(None);
        };
        let (reader, live, part) = crate::bulk::run(move || {
            let stop = std::sync::atomic::AtomicBool::new(false);
            let stopping = live.first().map_or(&stop, |l| l.stopping());
            let part = reader.next_part(max_pages, stopping);
            (reader, live, part)
        })
        .await?;
        if part.is_none() && !reader.is_done() {
            anyhow::bail!("the component stopped");
        }
        self.reading = Some((reader, live));
        Ok(part)
    }

    /// The digest of every page, once every part was read.
    pub fn into_maps(self) -> Vec<Vec<Digest>> {
        self.reading
            .map(|(reader, _)| reader.into_maps())
            .unwrap_or_default()
    }
}

/// Write tracking has begun: what the first round reads.
pub struct Tracked {
    lens: Vec<usize>,
    live: Option<Vec<Live>>,
}

/// A memory of a running component, for another thread to read (see
/// [`continuum_migrate::LiveMemory`]). The component's thread keeps its instance alive while any
/// of these is held, and asks their holders to let go (`stopping`) when it must end.
pub struct Live {
    pub memory: continuum_migrate::LiveMemory,
    lease: Arc<Lease>,
}

impl Live {
    /// Set once the component's thread wants its instance back: the reader should stop.
    pub fn stopping(&self) -> &std::sync::atomic::AtomicBool {
        &self.lease.stopping
    }
}

#[derive(Default)]
struct Lease {
    stopping: std::sync::atomic::AtomicBool,
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
    /// The requests in flight and what they wait on ([`Carried`], encoded; empty for ABI v1).
    pub carried: Vec<u8>,
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
    /// Requests it is serving now (started, not answered).
    pub in_flight: AtomicU64,
    /// Calls to other components it made, and those still waiting for an answer.
    pub calls_out: AtomicU64,
    pub calls_out_in_flight: AtomicU64,
    /// Its last checkpoint was taken but not written (a full disk, say): the next periodic
    /// checkpoint takes a fresh one even if nothing ran since.
    pub unsaved: std::sync::atomic::AtomicBool,
    /// A periodic checkpoint of it is under way.
    pub checkpointing: std::sync::atomic::AtomicBool,
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

/// Where the results of a component's operations go: its thread. Results are never refused
/// for a full queue: a call in flight is owed its answer.
#[derive(Clone)]
pub struct Back(Sender<Command>);

impl Back {
    pub fn result(&self, op: u64, r: &Result<Response, GuestCallError>) {
        self.raw(op, abi::encode_result(r), None);
    }

    /// A result as it came from another node, encoded.
    pub fn raw(&self, op: u64, result: Vec<u8>, from: Option<PeerId>) {
        let _ = self.0.send(Command::Wake { op, result, from });
    }

    fn copied(&self) {
        let _ = self.0.send(Command::Copied);
    }
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
    /// The hand-off that brought it here (signed by the host before), for its adverts.
    pub handoff: std::sync::OnceLock<continuum_gossip::SignedHandoff>,
    tx: Sender<Command>,
    /// Requests sent and not yet taken by the thread, against `queue_depth`.
    queued: Arc<AtomicUsize>,
    queue_depth: usize,
}

impl ComponentHandle {
    /// Start the thread that owns `inst`; `carried` holds the requests in flight of a
    /// component that migrated here from `source`.
    pub fn spawn(
        inst: Instance,
        metrics: Arc<Metrics>,
        limits: &RuntimeLimits,
        router: Arc<dyn Router>,
        carried: Option<(Carried, PeerId)>,
    ) -> std::io::Result<Arc<Self>> {
        let meta = inst.meta().clone();
        let stats = Arc::new(Stats::default());
        stats
            .memory_bytes
            .store(inst.memory_bytes(), Ordering::Relaxed);
        stats.epoch.store(meta.epoch, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let handle = Arc::new(ComponentHandle {
            name: meta.name.clone(),
            version: meta.version.clone(),
            digest: inst.module().digest,
            module_size: inst.module().size,
            federation: meta.federation.clone(),
            policy: meta.policy.parse().unwrap_or_default(),
            require: meta.require.clone(),
            stats: stats.clone(),
            tx: tx.clone(),
            queued: queued.clone(),
            queue_depth: limits.queue_depth,
            handoff: std::sync::OnceLock::new(),
        });
        let limits = limits.clone();
        std::thread::Builder::new()
            .name(format!("c:{}", meta.name))
            .spawn(move || {
                crate::priority::request_path();
                let span = tracing::info_span!("component", name = %meta.name);
                let _entered = span.enter();
                let actor = Actor::new(
                    inst,
                    &stats,
                    &metrics,
                    limits,
                    router,
                    Back(tx),
                    queued,
                    carried,
                );
                run(actor, rx);
            })?;
        Ok(handle)
    }

    fn send(&self, cmd: Command) -> Result<(), Unavailable> {
        self.tx
            .send(cmd)
            .map_err(|_| Unavailable::Gone(self.name.clone()))
    }

    /// Serve a request; `ctx` says where it comes from and by when it must be answered.
    pub async fn call(
        &self,
        req: Request,
        ctx: CallCtx,
    ) -> Result<Result<Response, CallError>, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.send_call(req, ctx, ReplyTo::oneshot(reply))?;
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

    /// Queue a request; its answer goes to `reply`.
    pub fn send_call(&self, req: Request, ctx: CallCtx, reply: ReplyTo) -> Result<(), Unavailable> {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.queue_depth {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Unavailable::Overloaded(self.name.clone()));
        }
        self.send(Command::Call { req, ctx, reply })
            .inspect_err(|_| {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            })
    }

    /// The result of one of its calls, sent on by another node (`from`).
    pub fn wake(&self, op: u64, result: Vec<u8>, from: PeerId) {
        let _ = self.send(Command::Wake {
            op,
            result,
            from: Some(from),
        });
    }

    /// Send a command and wait for its answer.
    async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command + Send + 'static,
    ) -> Result<T, Unavailable> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply))?;
        rx.await.map_err(|_| Unavailable::Gone(self.name.clone()))
    }

    pub async fn checkpoint(&self, only_if_dirty: bool) -> anyhow::Result<Option<Snapshot>> {
        self.ask(move |reply| Command::Checkpoint {
            only_if_dirty,
            reply,
        })
        .await?
        .map_err(|e| anyhow::anyhow!(e))
    }

    /// The first pre-copy round. Where the memories can be read while the component runs it
    /// is read on the bulk pool a part at a time, as it is sent ([`LiveRound`]); elsewhere the
    /// memories are copied out whole, into buffers populated off the component's thread, a
    /// megabyte at a time between requests, and hashed off it: requests meanwhile wait for a
    /// megabyte's copy at most.
    pub async fn first_round(&self) -> anyhow::Result<First> {
        let tracked = self
            .ask(|reply| Command::Track { reply })
            .await?
            .map_err(|e| anyhow::anyhow!(e))?;
        if let Some(live) = tracked.live {
            let reader =
                continuum_migrate::FirstRound::new(live.iter().map(|l| l.memory).collect());
            return Ok(First::Live(LiveRound {
                reading: Some((reader, live)),
            }));
        }
        let lens = tracked.lens;
        let buffers = crate::bulk::run(move || {
            lens.into_iter()
                .map(continuum_migrate::prefaulted)
                .collect::<Vec<_>>()
        })
        .await?;
        let captured = self
            .ask(move |reply| Command::Copy { buffers, reply })
            .await?;
        self.captured(captured).await.map(First::Captured)
    }

    /// A pre-copy round after the first: the pages changed since `base`.
    pub async fn round(&self, base: Vec<Vec<Digest>>) -> anyhow::Result<Round> {
        let captured = self
            .ask(move |reply| Command::Round { base, reply })
            .await?;
        self.captured(captured).await
    }

    /// What the component's thread handed out for a round, hashed on the bulk pool.
    async fn captured(&self, captured: Result<Captured, String>) -> anyhow::Result<Round> {
        match captured.map_err(|e| anyhow::anyhow!(e))? {
            Captured::Pages(round) => Ok(round),
            Captured::Written(base, written) => {
                crate::bulk::run(move || {
                    let (pages, maps) = written
                        .iter()
                        .enumerate()
                        .map(|(i, w)| {
                            let b = base.get(i).map_or(&[][..], |v| v);
                            MemoryDelta::changed_among_copies(b, w)
                        })
                        .unzip();
                    Round { pages, maps }
                })
                .await
            }
            Captured::Whole(copies) => {
                crate::bulk::run(move || {
                    let (pages, maps) = copies
                        .iter()
                        .map(|m| MemoryDelta::changed_since(m, &[]))
                        .unzip();
                    Round { pages, maps }
                })
                .await
            }
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
        let _ = self.send(Command::Unfreeze);
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

/// The tick task's id; request tasks are numbered from 1.
const TICK: u32 = 0;

/// A caller's deadline is this much later than the callee's, so that the callee's own 504
/// reaches it first.
const GRACE: Duration = Duration::from_millis(5);

/// A request being served (or the tick, as task 0).
struct Task {
    reply: Reply,
    deadline: Instant,
    chain: Vec<String>,
    entry: PeerId,
    started: Instant,
}

enum Reply {
    Local(ReplyTo),
    /// Its client waits on `node`, where the reply is parked under `key` (it came with a
    /// migration, or a freeze put it aside).
    Parked {
        node: PeerId,
        key: u64,
    },
    Tick,
}

/// An operation a task waits on.
struct Op {
    task: u32,
    /// When a timer fires, or a call's deadline passes.
    due: Instant,
    started: Instant,
    kind: OpKind,
}

enum OpKind {
    Timer,
    /// A call; its result may come only from `from` (`None`: this node; else the node it
    /// migrated from, which sends on what reaches it).
    Call {
        from: Option<PeerId>,
    },
}

/// The operations the tasks wait on, with the count of calls among them kept as they come and
/// go (it bounds the next call and feeds the gauges, on every entry).
#[derive(Default)]
struct Ops {
    map: HashMap<u64, Op>,
    calls: usize,
}

impl Ops {
    fn insert(&mut self, id: u64, op: Op) {
        self.calls += matches!(op.kind, OpKind::Call { .. }) as usize;
        if let Some(old) = self.map.insert(id, op) {
            self.calls -= matches!(old.kind, OpKind::Call { .. }) as usize;
        }
    }

    fn remove(&mut self, id: &u64) -> Option<Op> {
        let op = self.map.remove(id)?;
        self.calls -= matches!(op.kind, OpKind::Call { .. }) as usize;
        Some(op)
    }

    fn get(&self, id: &u64) -> Option<&Op> {
        self.map.get(id)
    }

    /// Forget what `task` waits on.
    fn drop_task(&mut self, task: u32) {
        self.map.retain(|_, o| o.task != task);
        self.calls = self
            .map
            .values()
            .filter(|o| matches!(o.kind, OpKind::Call { .. }))
            .count();
    }

    fn clear(&mut self) {
        self.map.clear();
        self.calls = 0;
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&u64, &Op)> {
        self.map.iter()
    }
}

enum TickState {
    Off,
    At(Instant),
    Running,
}

/// What the thread is doing besides serving.
enum Mode {
    Serving,
    /// Waiting for the requests in flight to finish (new ones are held), then `then`; at
    /// `until` it gives up waiting.
    Draining {
        then: AfterDrain,
        until: Instant,
    },
    /// Runs nothing: its state is on its way elsewhere, or to its next version.
    Frozen,
}

/// A checkpoint's copy under way: on this thread, or on the bulk pool.
enum Copying {
    Here(CopyJob),
    Out(CopyOut),
}

/// The first round's copy, under way.
struct CopyJob {
    buffers: Vec<Vec<u8>>,
    memory: usize,
    at: usize,
    then: Then,
}

/// A checkpoint's copy running on the bulk pool, which reads the memories while the component
/// serves (a [`Live`] view each): the job comes back on `back`, done, or where it stopped once
/// `stop` was set (then this thread copies the rest itself).
struct CopyOut {
    stop: Arc<std::sync::atomic::AtomicBool>,
    back: Receiver<CopyJob>,
}

impl CopyOut {
    /// The job, now: stop the copy where it is.
    fn recall(self) -> Option<CopyJob> {
        self.stop.store(true, Ordering::Relaxed);
        self.back.recv().ok()
    }
}

/// Go on with `job` from where it is, reading the memories live, until done or `stop`.
fn copy_live(job: &mut CopyJob, live: &[Live], stop: &std::sync::atomic::AtomicBool) {
    const STEP: usize = 1 << 20;
    while let (Some(buf), Some(l)) = (job.buffers.get_mut(job.memory), live.get(job.memory)) {
        let end = buf.len().min(l.memory.len());
        while job.at < end {
            if stop.load(Ordering::Relaxed) || l.stopping().load(Ordering::Relaxed) {
                return;
            }
            let to = (job.at + STEP).min(end);
            l.memory.read(job.at, &mut buf[job.at..to]);
            job.at = to;
        }
        if end < buf.len() {
            // The memory is shorter than the buffer: this thread copies the rest.
            return;
        }
        job.memory += 1;
        job.at = 0;
    }
}

/// What a finished copy is for.
enum Then {
    /// A migration's first round.
    Round(oneshot::Sender<Result<Captured, String>>),
    /// A checkpoint of a large component: writes since the copy began are tracked, and copied
    /// again at one quiescent point once the rest is, so the component never stops for longer
    /// than that.
    Checkpoint {
        tracking: Tracking,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
        started: Instant,
    },
}

/// Components with less memory than this are checkpointed in one go (it takes a millisecond
/// or two).
const CHUNKED_CHECKPOINT: u64 = 4 << 20;

enum AfterDrain {
    Handoff(oneshot::Sender<Result<(u32, Vec<u8>), String>>),
    Stop(oneshot::Sender<Option<Result<Snapshot, String>>>),
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
    limits: RuntimeLimits,
    router: Arc<dyn Router>,
    back: Back,
    queued: Arc<AtomicUsize>,
    tasks: HashMap<u32, Task>,
    next_task: u32,
    ops: Ops,
    /// Task deadlines (kind 0) and operations due (kind 1), earliest first; stale entries are
    /// skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, u8, u64)>>,
    tick: TickState,
    /// Results to deliver as soon as the thread is between commands.
    ready: std::collections::VecDeque<(u64, Vec<u8>)>,
    in_flight_gauge: Gauge,
    calls_gauge: Gauge,
    /// Held by every [`Live`] view of the instance's memories handed out.
    lease: Arc<Lease>,
}

impl Drop for Actor<'_> {
    /// The instance goes with the actor: first every reader of its memories must let go.
    fn drop(&mut self) {
        self.lease.stopping.store(true, Ordering::Relaxed);
        while Arc::strong_count(&self.lease) > 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl<'a> Actor<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        inst: Instance,
        stats: &'a Stats,
        metrics: &'a Metrics,
        limits: RuntimeLimits,
        router: Arc<dyn Router>,
        back: Back,
        queued: Arc<AtomicUsize>,
        carried: Option<(Carried, PeerId)>,
    ) -> Actor<'a> {
        let name = inst.meta().name.clone();
        let label = ComponentLabels {
            component: name.clone(),
        };
        let tick = if inst.has_tick() {
            TickState::At(Instant::now())
        } else {
            TickState::Off
        };
        let mut a = Actor {
            calls_ok: metrics
                .calls
                .get_or_create(&CallLabels {
                    component: name.clone(),
                    outcome: "ok",
                })
                .clone(),
            in_flight_gauge: metrics.requests_in_flight.get_or_create(&label).clone(),
            calls_gauge: metrics.calls_in_flight.get_or_create(&label).clone(),
            lease: Arc::default(),
            inst,
            stats,
            metrics,
            name,
            dirty: false,
            tracking: None,
            limits,
            router,
            back,
            queued,
            tasks: HashMap::new(),
            next_task: 1,
            ops: Ops::default(),
            timers: BinaryHeap::new(),
            tick,
            ready: Default::default(),
        };
        if let Some((c, source)) = carried {
            a.take_over(c, source);
        }
        a
    }

    fn failures(&self, family: &Family<CallLabels, Counter>, outcome: &'static str) -> Counter {
        family
            .get_or_create(&CallLabels {
                component: self.name.clone(),
                outcome,
            })
            .clone()
    }

    fn busy(&self, since: Instant) {
        let ns = since.elapsed().as_nanos() as u64;
        self.stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn gauges(&self) {
        let requests = self.tasks.len() - self.tasks.contains_key(&TICK) as usize;
        let calls = self.ops.calls;
        self.stats
            .in_flight
            .store(requests as u64, Ordering::Relaxed);
        self.stats
            .calls_out_in_flight
            .store(calls as u64, Ordering::Relaxed);
        self.in_flight_gauge.set(requests as i64);
        self.calls_gauge.set(calls as i64);
    }

    /// A request arrives (taken off the queue).
    fn serve(&mut self, req: Request, ctx: CallCtx, reply: ReplyTo) {
        self.dirty = true;
        if !self.inst.is_v2() {
            return self.serve_v1(req, reply);
        }
        let now = Instant::now();
        if ctx.deadline.is_some_and(|d| d <= now) {
            reply.send(Answer::Done(Err(CallError::Late(Duration::ZERO))));
            return;
        }
        if self.tasks.len() >= self.limits.queue_depth {
            reply.send(Answer::Done(Err(self.refusal(&ctx, "requests in flight"))));
            return;
        }
        let id = self.new_task();
        let deadline = ctx.deadline.map_or(now + self.limits.call_timeout, |d| {
            d.min(now + self.limits.call_timeout)
        });
        self.tasks.insert(
            id,
            Task {
                reply: Reply::Local(reply),
                deadline,
                chain: ctx.chain,
                entry: ctx.entry,
                started: now,
            },
        );
        let entry = self.inst.start(id, &req);
        self.busy(now);
        self.after(entry);
        // Most requests are answered within their first entry: only one still waiting needs
        // its deadline watched.
        if self.tasks.contains_key(&id) {
            self.timers.push(Reverse((deadline, 0, id as u64)));
        }
    }

    /// Too busy for one more: 503, or 508 if the request comes back to this component along
    /// its own call chain (waiting for room would wait for itself).
    fn refusal(&self, ctx: &CallCtx, what: &str) -> CallError {
        if ctx.chain.contains(&self.name) {
            CallError::Loop(super::router::came_back(&ctx.chain, &self.name, what))
        } else {
            CallError::Overloaded(format!(
                "component {} has too many {what}; try again",
                self.name
            ))
        }
    }

    fn serve_v1(&mut self, req: Request, reply: ReplyTo) {
        let began = Instant::now();
        let result = self.inst.call(&req).map(own_answer);
        self.busy(began);
        self.count(&result);
        if let Err(e) = &result {
            tracing::warn!(target = %req.target, "call failed: {e}");
        }
        self.stats
            .memory_bytes
            .store(self.inst.memory_bytes(), Ordering::Relaxed);
        reply.send(Answer::Done(result));
    }

    fn count(&self, result: &Result<Response, CallError>) {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.calls_ok.inc();
            }
            Err(e) => {
                self.stats.failed_calls.fetch_add(1, Ordering::Relaxed);
                self.failures(&self.metrics.calls, e.outcome()).inc();
            }
        }
    }

    fn new_task(&mut self) -> u32 {
        loop {
            let id = self.next_task;
            self.next_task = self.next_task.wrapping_add(1).max(1);
            if !self.tasks.contains_key(&id) {
                return id;
            }
        }
    }

    /// Carry out what an entry asked for; if it failed, drop the task it failed in (leaked,
    /// not dropped: a trap may have left its future half-updated) and answer that task.
    fn after(&mut self, mut entry: Entry) {
        loop {
            let mut io = std::mem::take(&mut entry.io);
            let failed = entry.failed.take();
            if let Some((task, _)) = &failed {
                // What the failed task asked for dies with it.
                io.ops.retain(|o| o.task != *task);
            }
            self.apply(io);
            let Some((task, e)) = failed else {
                break;
            };
            tracing::warn!(task, "request failed: {e}");
            self.ops.drop_task(task);
            if task == TICK {
                self.tick_failed(&e);
            } else {
                self.finish(task, Err(e));
            }
            entry = self.inst.cancel(Some(task), true);
        }
        self.stats
            .memory_bytes
            .store(self.inst.memory_bytes(), Ordering::Relaxed);
        self.gauges();
    }

    fn apply(&mut self, io: GuestIo) {
        for (task, bytes) in io.responses {
            if task == TICK {
                continue;
            }
            let r = abi::decode_response(&bytes)
                .map(own_answer)
                .map_err(|e| CallError::BadResponse(e.to_string()));
            self.finish(task, r);
        }
        for op in io.ops {
            self.start_op(op);
        }
        for op in io.cancelled {
            self.ops.remove(&op);
        }
        if let Some(code) = io.tick_done
            && matches!(self.tick, TickState::Running)
        {
            self.tasks.remove(&TICK);
            self.tick_ended(Instant::now(), Ok(ticked(code)));
        }
    }

    /// Answer task `id`, wherever its client waits.
    fn finish(&mut self, id: u32, result: Result<Response, CallError>) {
        let Some(t) = self.tasks.remove(&id) else {
            return;
        };
        self.count(&result);
        match t.reply {
            Reply::Local(tx) => tx.send(Answer::Done(result)),
            Reply::Parked { node, key } => {
                let resp = result.unwrap_or_else(|e| {
                    error_response(
                        e.outcome(),
                        e.status(),
                        format!("component {}: {e}", self.name),
                    )
                });
                self.router.answer(node, key, resp);
            }
            Reply::Tick => {}
        }
    }

    fn start_op(&mut self, new: NewOp) {
        let now = Instant::now();
        let Some(t) = self.tasks.get(&new.task) else {
            // Its task is gone (it finished in this same entry, or was dropped).
            return self.soon(
                new.op,
                &Err(GuestCallError::Refused(
                    500,
                    "the task that made this call is gone".into(),
                )),
            );
        };
        if self.ops.len() >= self.limits.max_calls + self.limits.queue_depth {
            // More calls and timers waiting than this component may have: the task that
            // asked for one more fails rather than the host growing without bound.
            let task = new.task;
            self.ops.drop_task(task);
            let err = CallError::Overloaded(format!(
                "component {} has too many calls and timers in flight",
                self.name
            ));
            if task == TICK {
                self.tick_failed(&err);
            } else {
                self.finish(task, Err(err));
            }
            let entry = self.inst.cancel(Some(task), false);
            return self.after(entry);
        }
        match new.kind {
            OpStart::Timer(d) => {
                // A timer past its task's deadline never fires: the deadline ends the task.
                let due = (now + d).min(t.deadline + Duration::from_millis(1));
                self.add_op(new.op, new.task, due, now, OpKind::Timer);
            }
            OpStart::Call { name, req } => {
                let calls = self.ops.calls;
                let refused = if calls >= self.limits.max_calls {
                    Some(GuestCallError::Refused(
                        503,
                        format!(
                            "component {} has {calls} calls in flight, the most it may",
                            self.name
                        ),
                    ))
                } else if let Err(e) = crate::components::check_name(&name) {
                    Some(GuestCallError::Refused(400, e.to_string()))
                } else if t.deadline <= now + GRACE {
                    Some(GuestCallError::Deadline(format!(
                        "no time is left to call {name} before the request's deadline"
                    )))
                } else {
                    req.as_ref()
                        .err()
                        .map(|why| GuestCallError::Refused(400, why.clone()))
                };
                self.stats.calls_out.fetch_add(1, Ordering::Relaxed);
                if let Some(err) = refused {
                    self.outbound(outcome(err.kind()), Duration::ZERO);
                    return self.soon(new.op, &Err(err));
                }
                let mut req = req.expect("checked above");
                let callee_deadline =
                    t.deadline.min(now + self.limits.call_timeout + GRACE) - GRACE;
                let mut chain = t.chain.clone();
                chain.push(self.name.clone());
                let ctx = CallCtx {
                    deadline: Some(callee_deadline),
                    chain,
                    entry: t.entry,
                    hops: 0,
                };
                req.headers.retain(|(k, _)| k != CALLER_HEADER);
                req.headers
                    .push((CALLER_HEADER.to_string(), self.name.as_bytes().to_vec()));
                let due = callee_deadline + GRACE;
                self.add_op(new.op, new.task, due, now, OpKind::Call { from: None });
                let local = (ctx.chain.len() < self.limits.max_depth)
                    .then(|| self.router.local(&self.name, &name))
                    .flatten();
                match local {
                    Some(callee) => self.call_here(&callee, name, req, ctx, new.op),
                    None => self
                        .router
                        .call(&self.name, name, req, ctx, new.op, self.back.clone()),
                }
            }
        }
    }

    /// A call to a component on this node: straight to its thread, and its answer straight
    /// back to this one, with no hop through the async runtime. If it moved meanwhile, the
    /// call goes the way of any other.
    fn call_here(
        &mut self,
        callee: &ComponentHandle,
        name: String,
        req: Request,
        ctx: CallCtx,
        op: u64,
    ) {
        let (back, router, from) = (self.back.clone(), self.router.clone(), self.name.clone());
        let chain = ctx.chain.clone();
        let (again, retry) = (ctx.clone(), name.clone());
        let reply = ReplyTo::new(move |a| {
            let me = router.me().to_string();
            match a {
                Answer::Done(Ok(r)) => back.result(op, &Ok(r.header(HOST_HEADER, &me))),
                Answer::Done(Err(e)) => back.result(
                    op,
                    &call_result(error_response(
                        e.outcome(),
                        e.status(),
                        format!("component {retry}: {e}"),
                    )),
                ),
                Answer::Moved(_, req) => router.call(&from, retry, req, again, op, back),
            }
        });
        if let Err(e) = callee.send_call(req, ctx, reply) {
            let err = match e {
                Unavailable::Overloaded(_) if chain.contains(&name) => GuestCallError::Loop(
                    super::router::came_back(&chain, &name, "requests waiting"),
                ),
                e => GuestCallError::Refused(503, e.to_string()),
            };
            self.ops.remove(&op);
            self.outbound(outcome(err.kind()), Duration::ZERO);
            self.soon(op, &Err(err));
        }
    }

    /// An operation `task` waits on, due (fired, or past its deadline) at `due`.
    fn add_op(&mut self, id: u64, task: u32, due: Instant, started: Instant, kind: OpKind) {
        let op = Op {
            task,
            due,
            started,
            kind,
        };
        self.ops.insert(id, op);
        self.timers.push(Reverse((due, 1, id)));
    }

    /// Count a call this component made, once it ended.
    fn outbound(&self, outcome: &'static str, took: Duration) {
        self.failures(&self.metrics.outbound_calls, outcome).inc();
        self.metrics.call_seconds.observe(took.as_secs_f64());
    }

    /// Enter the guest with the result of `op`.
    fn deliver(&mut self, op: u64, result: &Result<Response, GuestCallError>) {
        self.deliver_raw(op, &abi::encode_result(result));
    }

    /// A result known at once (a call refused before it went out): delivered by the main
    /// loop, never from inside the handling of the entry that asked for it.
    fn soon(&mut self, op: u64, result: &Result<Response, GuestCallError>) {
        self.ready.push_back((op, abi::encode_result(result)));
    }

    /// Deliver what [`Actor::soon`] queued, a bounded number at a time, so that a guest that
    /// answers every refusal with another call cannot keep the thread from its commands.
    fn deliver_ready(&mut self) {
        for _ in 0..64 {
            let Some((op, result)) = self.ready.pop_front() else {
                return;
            };
            self.deliver_raw(op, &result);
        }
    }

    fn deliver_raw(&mut self, op: u64, result: &[u8]) {
        self.dirty = true;
        let began = Instant::now();
        let entry = self.inst.wake(op, result);
        self.busy(began);
        self.after(entry);
    }

    /// A result came back for `op`.
    fn woken(&mut self, op: u64, result: Vec<u8>, from: Option<PeerId>) {
        let Some(o) = self.ops.get(&op) else {
            // Cancelled, timed out, or its task ended: nobody waits for it any more.
            self.metrics.reject("late_call_result");
            return;
        };
        match o.kind {
            OpKind::Call { from: expected } if expected == from || from.is_none() => {}
            _ => {
                self.metrics.reject("call_result_from_stranger");
                tracing::warn!(
                    op,
                    ?from,
                    "refused a call result from a node that did not make the call"
                );
                return;
            }
        }
        let o = self.ops.remove(&op).expect("looked up above");
        let kind = result
            .first_chunk::<4>()
            .map_or(4, |k| u32::from_le_bytes(*k));
        let outcome = outcome(kind);
        self.outbound(outcome, o.started.elapsed());
        self.deliver_raw(op, &result);
    }

    /// Fire what is due: task deadlines (the task is dropped and answered 504), timers, and
    /// calls past their deadline (the guest gets a Deadline error).
    fn fire_timers(&mut self) {
        loop {
            let now = Instant::now();
            let Some(&Reverse((at, kind, id))) = self.timers.peek() else {
                return;
            };
            if at > now {
                return;
            }
            self.timers.pop();
            if kind == 0 {
                let task = id as u32;
                let Some(t) = self.tasks.get(&task).filter(|t| t.deadline == at) else {
                    continue;
                };
                let waited = at - t.started;
                self.ops.drop_task(task);
                if task == TICK {
                    self.tick_failed(&CallError::Late(waited));
                } else {
                    self.finish(task, Err(CallError::Late(waited)));
                }
                let entry = self.inst.cancel(Some(task), false);
                self.after(entry);
            } else {
                let Some(o) = self.ops.get(&id).filter(|o| o.due == at) else {
                    continue;
                };
                match o.kind {
                    OpKind::Timer => {
                        self.ops.remove(&id);
                        self.deliver_raw(id, &[]);
                    }
                    OpKind::Call { .. } => {
                        let o = self.ops.remove(&id).expect("looked up above");
                        self.outbound("deadline", o.started.elapsed());
                        self.deliver(
                            id,
                            &Err(GuestCallError::Deadline(format!(
                                "no answer within {:?}",
                                o.due - o.started
                            ))),
                        );
                    }
                }
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Run the tick that was due at `at`.
    fn run_tick(&mut self, at: Instant) {
        let now = Instant::now();
        self.dirty = true;
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let deadline = now + self.limits.call_timeout;
        let v2 = self.inst.is_v2();
        if v2 {
            self.tick_task(now, deadline);
        }
        self.tick = TickState::Running;
        let (result, io) = self.inst.tick(now_ms());
        self.busy(now);
        self.apply(io);
        match result {
            Ok(Ticked::Pending) => {
                self.timers.push(Reverse((deadline, 0, TICK as u64)));
            }
            Ok(t) => {
                self.tasks.remove(&TICK);
                self.tick_ended(at, Ok(t));
            }
            Err(e) => {
                self.ops.drop_task(TICK);
                self.tick_failed(&e);
                if v2 {
                    let entry = self.inst.cancel(Some(TICK), true);
                    self.after(entry);
                }
            }
        }
        self.gauges();
    }

    /// The tick as task 0, for the calls and timers it starts.
    fn tick_task(&mut self, now: Instant, deadline: Instant) {
        let task = Task {
            reply: Reply::Tick,
            deadline,
            chain: Vec::new(),
            entry: self.router.me(),
            started: now,
        };
        self.tasks.insert(TICK, task);
    }

    /// A tick that was due at `at` ended.
    fn tick_ended(&mut self, at: Instant, result: Result<Ticked, CallError>) {
        let now = Instant::now();
        self.tick = match result {
            Ok(Ticked::Next(period)) => {
                self.failures(&self.metrics.ticks, "ok").inc();
                // Keep the period anchored to the schedule, not to when we woke up; if we
                // fell a whole period behind, skip rather than burst.
                let next = at + period;
                TickState::At(if next <= now { now + period } else { next })
            }
            Ok(Ticked::Stop) | Ok(Ticked::Pending) => TickState::Off,
            Err(e) => {
                self.failures(&self.metrics.ticks, e.outcome()).inc();
                tracing::warn!("tick failed: {e}; retrying in 1 s");
                TickState::At(now + Duration::from_secs(1))
            }
        };
    }

    fn tick_failed(&mut self, e: &CallError) {
        self.tasks.remove(&TICK);
        self.tick_ended(Instant::now(), Err(e.clone()));
    }

    fn checkpoint(&mut self) -> Result<Snapshot, String> {
        self.inst
            .set_epoch(self.stats.epoch.load(Ordering::Relaxed));
        self.inst.checkpoint().map_err(|e| e.to_string())
    }

    /// The first round of a migration starts write tracking, so that the later ones, the
    /// freeze above all, look only at pages written since; then the memories are read out.
    /// Track first, then read: a write in between shows up twice, never not at all, and so
    /// does one to a part already read while the rest is.
    fn track(&mut self) -> Tracked {
        self.tracking = match self.inst.track() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::info!("no kernel write tracking ({e}): every round hashes every page");
                None
            }
        };
        // SAFETY: the instance lives as long as this actor, whose drop waits until every
        // lease handed out here is given back.
        let live = unsafe { self.inst.live() }.map(|memories| {
            memories
                .into_iter()
                .map(|memory| Live {
                    memory,
                    lease: self.lease.clone(),
                })
                .collect()
        });
        Tracked {
            lens: self.inst.memory_lens(),
            live,
        }
    }

    /// Start a checkpoint of a large memory while the component serves, if the kernel tracks
    /// writes (a migration's tracking is not disturbed: then it is taken in one go); else hand
    /// the reply back. The copy runs on the bulk pool where the memories can be read live,
    /// else on this thread a megabyte at a time between requests.
    fn begin_checkpoint(
        &mut self,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
    ) -> Result<Copying, oneshot::Sender<Result<Option<Snapshot>, String>>> {
        if self.tracking.is_some() || self.inst.memory_bytes() < CHUNKED_CHECKPOINT {
            return Err(reply);
        }
        let Ok(tracking) = self.inst.track() else {
            return Err(reply);
        };
        // Zeroed, not populated: the pages fault in a megabyte at a time as they are copied.
        let buffers = self
            .inst
            .memory_lens()
            .into_iter()
            .map(|len| vec![0u8; len])
            .collect();
        let mut job = CopyJob {
            buffers,
            memory: 0,
            at: 0,
            then: Then::Checkpoint {
                tracking,
                reply,
                started: Instant::now(),
            },
        };
        // SAFETY: the leases keep the instance alive while the bulk pool reads.
        let Some(memories) = (unsafe { self.inst.live() }) else {
            return Ok(Copying::Here(job));
        };
        let live: Vec<Live> = memories
            .into_iter()
            .map(|memory| Live {
                memory,
                lease: self.lease.clone(),
            })
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, back) = std::sync::mpsc::channel();
        let (flag, nudge) = (stop.clone(), self.back.clone());
        rayon::spawn(move || {
            copy_live(&mut job, &live, &flag);
            drop(live);
            if tx.send(job).is_ok() {
                nudge.copied();
            }
        });
        Ok(Copying::Out(CopyOut { stop, back }))
    }

    /// Finish a copy job: now, whatever is left of it.
    fn complete(&mut self, mut job: CopyJob) {
        while !self.copy_step(&mut job) {}
        match job.then {
            Then::Round(reply) => {
                let _ = reply.send(Ok(Captured::Whole(job.buffers)));
            }
            Then::Checkpoint {
                tracking,
                reply,
                started,
            } => self.finish_checkpoint(job.buffers, tracking, reply, started),
        }
    }

    /// The copy of a checkpoint is done: copy again what was written meanwhile (at this one
    /// point the buffers are the state), then build the snapshot off this thread.
    fn finish_checkpoint(
        &mut self,
        mut buffers: Vec<Vec<u8>>,
        mut tracking: Tracking,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
        started: Instant,
    ) {
        let lens = self.inst.memory_lens();
        for (i, buf) in buffers.iter_mut().enumerate() {
            let len = lens.get(i).copied().unwrap_or(0);
            buf.resize(len, 0);
            match self.inst.written(&mut tracking, i) {
                Some(pages) => {
                    for p in pages {
                        let at = p as usize * continuum_migrate::PAGE_SIZE;
                        if at < len {
                            let end = (at + continuum_migrate::PAGE_SIZE).min(len);
                            self.inst.copy_into(i, at, &mut buf[at..end]);
                        }
                    }
                }
                None => {
                    self.inst.copy_into(i, 0, buf);
                }
            }
        }
        drop(tracking);
        let globals = match self.inst.globals() {
            Ok(g) => g,
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                return;
            }
        };
        self.inst
            .set_epoch(self.stats.epoch.load(Ordering::Relaxed));
        let (meta, digest) = (self.inst.meta().clone(), self.inst.module().digest);
        self.dirty = false;
        let seconds = self.metrics.checkpoint_seconds.clone();
        rayon::spawn(move || {
            let memories = buffers
                .into_iter()
                .map(continuum_migrate::MemoryImage::capture_owned)
                .collect();
            let snap = Snapshot::new(meta, digest, memories, globals);
            seconds.observe(started.elapsed().as_secs_f64());
            let _ = reply.send(Ok(Some(snap)));
        });
    }

    /// Copy the next megabyte of the first round; true once every memory is copied.
    fn copy_step(&mut self, job: &mut CopyJob) -> bool {
        const STEP: usize = 1 << 20;
        while let Some(buf) = job.buffers.get_mut(job.memory) {
            if job.at < buf.len() {
                let end = (job.at + STEP).min(buf.len());
                let n = self
                    .inst
                    .copy_into(job.memory, job.at, &mut buf[job.at..end]);
                job.at = if n == 0 { buf.len() } else { job.at + n };
                return false;
            }
            job.memory += 1;
            job.at = 0;
        }
        true
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
            carried: self.carry(),
        })
    }

    /// The requests in flight, for the new host. Their clients' replies are parked on this
    /// node first, so that an answer from the new host finds them whenever it comes.
    fn carry(&mut self) -> Vec<u8> {
        if !self.inst.is_v2() {
            return Vec::new();
        }
        let now = Instant::now();
        let me = self.router.me();
        let left = |at: Instant| at.saturating_duration_since(now);
        let mut tasks = Vec::new();
        for (&id, t) in &mut self.tasks {
            if id == TICK {
                continue;
            }
            if let Reply::Local(_) = t.reply {
                let key = self.router.new_key();
                let Reply::Local(tx) =
                    std::mem::replace(&mut t.reply, Reply::Parked { node: me, key })
                else {
                    unreachable!("matched above")
                };
                self.router.park(key, tx, t.deadline);
            }
            let Reply::Parked { node, key } = t.reply else {
                continue;
            };
            tasks.push(CarriedTask {
                id,
                node: node.to_string(),
                key,
                left: left(t.deadline),
                chain: t.chain.clone(),
                entry: t.entry.to_string(),
            });
        }
        let ops = self
            .ops
            .iter()
            .map(|(&id, o)| CarriedOp {
                id,
                task: o.task,
                left: left(o.due),
                timer: matches!(o.kind, OpKind::Timer),
            })
            .collect();
        let tick = match self.tick {
            TickState::Off => CarriedTick::None,
            TickState::At(at) => CarriedTick::Next(left(at)),
            TickState::Running => CarriedTick::Running(
                self.tasks
                    .get(&TICK)
                    .map_or(Duration::ZERO, |t| left(t.deadline)),
            ),
        };
        let ready = self
            .ready
            .drain(..)
            .map(|(op, r)| (op, serde_bytes::ByteBuf::from(r)))
            .collect();
        Carried {
            next_task: self.next_task,
            next_op: *self.inst.next_op(),
            tasks,
            ops,
            tick,
            ready,
        }
        .encode()
    }

    /// Go on with the requests a component brought along from `source`.
    fn take_over(&mut self, c: Carried, source: PeerId) {
        let now = Instant::now();
        self.next_task = c.next_task.max(1);
        *self.inst.next_op() = c.next_op;
        for t in c.tasks {
            let (Ok(node), Ok(entry)) = (t.node.parse(), t.entry.parse()) else {
                continue;
            };
            let deadline = now + t.left;
            self.tasks.insert(
                t.id,
                Task {
                    reply: Reply::Parked { node, key: t.key },
                    deadline,
                    chain: t.chain,
                    entry,
                    started: now,
                },
            );
            self.timers.push(Reverse((deadline, 0, t.id as u64)));
        }
        self.tick = match c.tick {
            CarriedTick::None => TickState::Off,
            CarriedTick::Next(d) => TickState::At(now + d),
            CarriedTick::Running(d) => {
                let deadline = now + d;
                self.tick_task(now, deadline);
                self.timers.push(Reverse((deadline, 0, TICK as u64)));
                TickState::Running
            }
        };
        for o in c.ops {
            let due = now + o.left;
            let kind = if o.timer {
                OpKind::Timer
            } else {
                OpKind::Call { from: Some(source) }
            };
            self.add_op(o.id, o.task, due, now, kind);
        }
        self.ready = c
            .ready
            .into_iter()
            .map(|(op, r)| (op, r.into_vec()))
            .collect();
        self.gauges();
    }

    /// Drop every request in flight, answering each with `why`.
    fn cancel_all(&mut self, why: &str) {
        let ids: Vec<u32> = self.tasks.keys().copied().filter(|&t| t != TICK).collect();
        for id in ids {
            self.finish(id, Err(CallError::Overloaded(why.to_string())));
        }
        self.ops.clear();
        self.tasks.clear();
        if self.inst.is_v2() {
            let entry = self.inst.cancel(None, false);
            self.after(entry);
        }
    }
}

type Held = Vec<(Request, CallCtx, ReplyTo, Instant)>;

/// Take the held requests out of the queue's count (they were in it while held).
fn unhold<'h>(
    queued: &AtomicUsize,
    held: &'h mut Held,
) -> std::vec::Drain<'h, (Request, CallCtx, ReplyTo, Instant)> {
    queued.fetch_sub(held.len(), Ordering::Relaxed);
    held.drain(..)
}

/// How long a component thread keeps polling (and yielding) before it sleeps. Waking a sleeping
/// thread costs tens of microseconds (a futex wake and a context switch; 28 us each way
/// measured on a 2-core VM), more than a whole call between two components on one node, so a
/// command that comes this soon after the last is caught awake instead. Zero on one core,
/// where the sender cannot run while this thread spins.
fn spin() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => Duration::from_micros(50),
        _ => Duration::ZERO,
    })
}

/// The next command, waiting until `until` at most (for ever with `None`).
fn next_command(
    rx: &Receiver<Command>,
    until: Option<Instant>,
) -> Result<Command, RecvTimeoutError> {
    let now = Instant::now();
    let spin_until = now + spin();
    let spin_until = until.map_or(spin_until, |u| u.min(spin_until));
    loop {
        match rx.try_recv() {
            Ok(cmd) => return Ok(cmd),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(RecvTimeoutError::Disconnected);
            }
            // Yield rather than spin: on a busy machine the threads that will send the next
            // command get this core; on an idle one the yield returns at once.
            Err(std::sync::mpsc::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now()
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => break,
        }
    }
    match until {
        Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

fn run(mut a: Actor<'_>, rx: Receiver<Command>) {
    let mut mode = Mode::Serving;
    // Requests (and call results) that arrived while draining or frozen.
    let mut held: Held = Vec::new();
    let mut held_wakes: Vec<(u64, Vec<u8>, Option<PeerId>)> = Vec::new();

    let mut copying: Option<CopyJob> = None;
    let mut out: Option<CopyOut> = None;
    // A stop is answered once the instance is gone, so that whoever stopped it (removing the
    // component, say) finds its module no longer in use.
    let mut stopped = None;
    let moved_to = 'run: loop {
        if let (Mode::Serving, Some(job)) = (&mode, copying.as_mut())
            && a.copy_step(job)
        {
            let job = copying.take().expect("matched above");
            a.complete(job);
        }
        if !matches!(mode, Mode::Frozen) {
            a.deliver_ready();
            a.fire_timers();
            if let (Mode::Serving, TickState::At(at)) = (&mode, &a.tick) {
                let at = *at;
                if Instant::now() >= at {
                    a.run_tick(at);
                    continue;
                }
            }
            if let Mode::Draining { until, .. } = &mode {
                let (drained, timed_out) = (a.tasks.is_empty(), Instant::now() >= *until);
                if drained || timed_out {
                    let Mode::Draining { then, .. } = std::mem::replace(&mut mode, Mode::Serving)
                    else {
                        unreachable!("matched above")
                    };
                    match then {
                        AfterDrain::Handoff(reply) if drained => {
                            let result = a.inst.save_state().map_err(|e| format!("{e:#}"));
                            if result.is_ok() {
                                mode = Mode::Frozen;
                            }
                            let _ = reply.send(result);
                        }
                        AfterDrain::Handoff(reply) => {
                            let _ = reply.send(Err(format!(
                                "{} requests were still in flight after {:?}, and a new version cannot take over this version's futures; try again when it is quieter",
                                a.tasks.len(),
                                a.limits.call_timeout + Duration::from_secs(1)
                            )));
                        }
                        AfterDrain::Stop(reply) => {
                            if !drained {
                                a.cancel_all("the node is stopping");
                            }
                            stopped = Some((reply, Some(a.checkpoint())));
                            break None;
                        }
                    }
                    if matches!(mode, Mode::Serving) {
                        for (req, ctx, reply, _) in unhold(&a.queued, &mut held) {
                            a.serve(req, ctx, reply);
                        }
                        for (op, result, from) in held_wakes.drain(..) {
                            a.woken(op, result, from);
                        }
                    }
                    continue;
                }
            }
        }
        let wake_at = match &mode {
            Mode::Frozen => None,
            _ if !a.ready.is_empty() || copying.is_some() => Some(Instant::now()),
            Mode::Serving => [
                a.next_timer(),
                match a.tick {
                    TickState::At(at) => Some(at),
                    _ => None,
                },
            ]
            .into_iter()
            .flatten()
            .min(),
            Mode::Draining { until, .. } => Some(a.next_timer().map_or(*until, |t| t.min(*until))),
        };
        let cmd = match next_command(&rx, wake_at) {
            Ok(cmd) => cmd,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break None,
        };
        // A checkpoint under way is finished first by anything but requests and results: the
        // migration, update and stop commands need the memory to themselves.
        if !matches!(
            cmd,
            Command::Call { .. } | Command::Wake { .. } | Command::Copied
        ) {
            if let Some(job) = copying.take_if(|j| matches!(j.then, Then::Checkpoint { .. })) {
                a.complete(job);
            } else if let Some(job) = out.take().and_then(CopyOut::recall) {
                a.complete(job);
            }
        }
        match cmd {
            Command::Call { req, ctx, reply } => match &mode {
                Mode::Serving => {
                    a.queued.fetch_sub(1, Ordering::Relaxed);
                    a.serve(req, ctx, reply)
                }
                // Waiting for this component's own requests to finish: one that came back
                // along their call chain would wait for itself.
                Mode::Draining { .. } if ctx.chain.contains(&a.name) => {
                    a.queued.fetch_sub(1, Ordering::Relaxed);
                    reply.send(Answer::Done(Err(
                        a.refusal(&ctx, "requests to finish first")
                    )));
                }
                // Still counted in `queued`, so that a long freeze holds `queue_depth` at most.
                _ => held.push((req, ctx, reply, Instant::now())),
            },
            // Held while frozen only if a call of ours waits for it (once): the rest are
            // refused now, so what is held stays within the calls in flight.
            Command::Wake { op, result, from }
                if matches!(mode, Mode::Frozen)
                    && a.ops.get(&op).is_some()
                    && !held_wakes.iter().any(|w| w.0 == op) =>
            {
                held_wakes.push((op, result, from))
            }
            Command::Wake { op, from, .. } if matches!(mode, Mode::Frozen) => {
                a.metrics.reject("late_call_result");
                tracing::debug!(op, ?from, "refused a result no held call waits for");
            }
            Command::Wake { op, result, from } => a.woken(op, result, from),
            Command::Checkpoint {
                only_if_dirty,
                reply,
            } => {
                let reply = if only_if_dirty && !a.dirty {
                    let _ = reply.send(Ok(None));
                    continue;
                } else if matches!(mode, Mode::Serving) && copying.is_none() {
                    match a.begin_checkpoint(reply) {
                        Ok(Copying::Here(job)) => {
                            copying = Some(job);
                            continue;
                        }
                        Ok(Copying::Out(o)) => {
                            out = Some(o);
                            continue;
                        }
                        Err(reply) => reply,
                    }
                } else {
                    reply
                };
                let result = {
                    let started = Instant::now();
                    let snap = a.checkpoint().map(Some);
                    a.metrics
                        .checkpoint_seconds
                        .observe(started.elapsed().as_secs_f64());
                    a.dirty = snap.is_err();
                    snap
                };
                let _ = reply.send(result);
            }
            Command::Round { base, reply } => {
                let _ = reply.send(match (&mode, a.tracking.as_mut()) {
                    (Mode::Serving, Some(t)) => {
                        let written = a.inst.copy_written(t);
                        Ok(Captured::Written(base, written))
                    }
                    (Mode::Serving, None) => Ok(Captured::Pages(a.pages_since(&base))),
                    _ => Err("the component is frozen".into()),
                });
            }
            Command::Track { reply } => {
                let _ = reply.send(match mode {
                    Mode::Serving => Ok(a.track()),
                    _ => Err("the component is frozen".into()),
                });
            }
            Command::Copy { buffers, reply } => match mode {
                Mode::Serving => {
                    copying = Some(CopyJob {
                        buffers,
                        memory: 0,
                        at: 0,
                        then: Then::Round(reply),
                    })
                }
                _ => {
                    let _ = reply.send(Err("the component is frozen".into()));
                }
            },
            Command::Freeze { base, reply } => {
                let result = match mode {
                    Mode::Serving => a.final_state(&base),
                    _ => Err("the component is frozen already".into()),
                };
                if result.is_ok() {
                    mode = Mode::Frozen;
                }
                let _ = reply.send(result);
            }
            Command::Handoff { reply } => match mode {
                Mode::Serving => {
                    mode = Mode::Draining {
                        then: AfterDrain::Handoff(reply),
                        until: Instant::now() + a.limits.call_timeout + Duration::from_secs(1),
                    };
                }
                _ => {
                    let _ = reply.send(Err("the component is frozen already".into()));
                }
            },
            Command::Copied => {
                if let Some(o) = out.take() {
                    match o.back.try_recv() {
                        Ok(job) => a.complete(job),
                        Err(_) => out = Some(o),
                    }
                }
            }
            Command::Unfreeze => {
                // The migration is over here (aborted, or it never froze): no more tracking.
                a.tracking = None;
                copying = None;
                if matches!(mode, Mode::Frozen) {
                    mode = Mode::Serving;
                    for (req, ctx, reply, _) in unhold(&a.queued, &mut held) {
                        a.serve(req, ctx, reply);
                    }
                    for (op, result, from) in held_wakes.drain(..) {
                        a.woken(op, result, from);
                    }
                }
            }
            Command::Moved { to, reply } => {
                let mut waited = Vec::new();
                for (req, _, r, since) in unhold(&a.queued, &mut held) {
                    waited.push(since.elapsed());
                    r.send(Answer::Moved(to, req));
                }
                for (op, result, _) in held_wakes.drain(..) {
                    a.router.forward_wake(to, &a.name, op, result);
                }
                let _ = reply.send(waited);
                break 'run Some(to);
            }
            Command::Stop { checkpoint, reply } => {
                if checkpoint && !a.tasks.is_empty() && !matches!(mode, Mode::Frozen) {
                    mode = Mode::Draining {
                        then: AfterDrain::Stop(reply),
                        until: Instant::now() + a.limits.call_timeout + Duration::from_secs(1),
                    };
                    continue;
                }
                if !checkpoint {
                    a.cancel_all(&format!("component {} was stopped", a.name));
                }
                stopped = Some((reply, checkpoint.then(|| a.checkpoint())));
                break None;
            }
        }
    };
    // Whatever was held when the thread ended is answered, not dropped silently.
    for (_, _, reply, _) in unhold(&a.queued, &mut held) {
        reply.send(Answer::Done(Err(CallError::Overloaded(format!(
            "component {} stopped while the request waited",
            a.name
        )))));
    }
    a.gauges();
    if let Some((reply, snap)) = stopped {
        drop(a);
        let _ = reply.send(snap);
        return;
    }
    let Some(to) = moved_to else { return };
    // The state lives on elsewhere: free it, and send on every request and result that still
    // comes (from callers that took the handle before the switch, from calls in flight) until
    // the last handle goes.
    let (router, name, queued) = (a.router.clone(), a.name.clone(), a.queued.clone());
    drop(a);
    tracing::info!(%to, "moved; redirecting late requests");
    for cmd in rx {
        match cmd {
            Command::Call { req, reply, .. } => {
                queued.fetch_sub(1, Ordering::Relaxed);
                reply.send(Answer::Moved(to, req));
            }
            Command::Wake { op, result, .. } => router.forward_wake(to, &name, op, result),
            Command::Stop { reply, .. } => {
                let _ = reply.send(None);
            }
            _ => {}
        }
    }
}

/// A component's own answer: it may not pass itself off as the mesh.
fn own_answer(mut resp: Response) -> Response {
    resp.headers.retain(|(k, _)| k != ERROR_HEADER);
    resp
}

/// The metrics label of a call's result, by its kind in the ABI's encoding (0: an answer).
fn outcome(kind: u32) -> &'static str {
    match kind {
        0 => "ok",
        1 => "not_found",
        2 => "deadline",
        3 => "loop",
        _ => "refused",
    }
}
