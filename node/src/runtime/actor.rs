//! Each component instance lives on its own thread, which serialises calls into it, runs its
//! ticks on time between requests, and takes checkpoints at the quiescent points between calls.
//! A runaway call blocks only this thread; the deadline stops it.

use super::instance::{CallError, Instance};
use super::now_ms;
use crate::metrics::{CallLabels, Metrics};
use continuum_guest::{Request, Response};
use continuum_migrate::{Digest, Snapshot};
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
        reply: oneshot::Sender<Result<Response, CallError>>,
    },
    /// Capture the state; with `only_if_dirty`, answer `None` if nothing ran since the last one.
    Checkpoint {
        only_if_dirty: bool,
        reply: oneshot::Sender<Result<Option<Snapshot>, String>>,
    },
    /// Finish what is queued before this, optionally take a last checkpoint, then end the
    /// thread. Requests queued after it are refused, so none is acknowledged and then lost.
    Stop {
        checkpoint: bool,
        reply: oneshot::Sender<Option<Result<Snapshot, String>>>,
    },
}

/// Figures about one component, readable without asking its thread.
#[derive(Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub failed_calls: AtomicU64,
    pub ticks: AtomicU64,
    pub memory_bytes: AtomicU64,
}

/// Why a request did not reach the component.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("component {0} has too many requests waiting; try again")]
    Overloaded(String),
    #[error("component {0} was stopped or replaced while the request waited")]
    Gone(String),
}

/// The handle the rest of the node uses to reach a component.
pub struct ComponentHandle {
    pub name: String,
    pub version: String,
    pub digest: Digest,
    pub module_size: usize,
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
        let (tx, rx) = std::sync::mpsc::sync_channel(queue_depth);
        let handle = Arc::new(ComponentHandle {
            name: meta.name.clone(),
            version: meta.version.clone(),
            digest: inst.module().digest,
            module_size: inst.module().size,
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
        rx.await.map_err(|_| Unavailable::Gone(self.name.clone()))
    }

    pub async fn checkpoint(&self, only_if_dirty: bool) -> anyhow::Result<Option<Snapshot>> {
        let (reply, rx) = oneshot::channel();
        // A checkpoint must not be refused for a full queue: wait for room instead.
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            tx.send(Command::Checkpoint {
                only_if_dirty,
                reply,
            })
        })
        .await?
        .map_err(|_| Unavailable::Gone(self.name.clone()))?;
        let snap = rx.await.map_err(|_| Unavailable::Gone(self.name.clone()))?;
        snap.map_err(|e| anyhow::anyhow!(e))
    }

    /// Stop the thread after the commands queued before this one; with `checkpoint`, return
    /// the state it ended with.
    pub async fn stop(&self, checkpoint: bool) -> Option<anyhow::Result<Snapshot>> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        let sent =
            tokio::task::spawn_blocking(move || tx.send(Command::Stop { checkpoint, reply })).await;
        if !matches!(sent, Ok(Ok(()))) {
            return None;
        }
        rx.await
            .ok()
            .flatten()
            .map(|r| r.map_err(|e| anyhow::anyhow!(e)))
    }
}

fn run(mut inst: Instance, rx: Receiver<Command>, stats: &Stats, metrics: &Metrics) {
    let name = inst.meta().name.clone();
    let counter = |family: &Family<CallLabels, Counter>, outcome| {
        family
            .get_or_create(&CallLabels {
                component: name.clone(),
                outcome,
            })
            .clone()
    };
    let (calls_ok, ticks_ok) = (counter(&metrics.calls, "ok"), counter(&metrics.ticks, "ok"));
    let mut next_tick = inst.has_tick().then(Instant::now);
    let mut dirty = false;

    loop {
        if let Some(at) = next_tick {
            let now = Instant::now();
            if now >= at {
                dirty = true;
                stats.ticks.fetch_add(1, Ordering::Relaxed);
                next_tick = match inst.tick(now_ms()) {
                    Ok(Some(period)) => {
                        ticks_ok.inc();
                        // Keep the period anchored to the schedule, not to when we woke up;
                        // if we fell a whole period behind, skip rather than burst.
                        let next = at + period;
                        Some(if next <= now { now + period } else { next })
                    }
                    Ok(None) => None,
                    Err(e) => {
                        counter(&metrics.ticks, e.outcome()).inc();
                        tracing::warn!("tick failed: {e}; retrying in 1 s");
                        Some(now + Duration::from_secs(1))
                    }
                };
                continue;
            }
        }
        let cmd = match next_tick {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(cmd) => cmd,
                Err(_) => break,
            },
        };
        match cmd {
            Command::Call { req, reply } => {
                dirty = true;
                let result = inst.call(&req);
                stats.calls.fetch_add(1, Ordering::Relaxed);
                match &result {
                    Ok(_) => {
                        calls_ok.inc();
                    }
                    Err(e) => {
                        stats.failed_calls.fetch_add(1, Ordering::Relaxed);
                        counter(&metrics.calls, e.outcome()).inc();
                        tracing::warn!(target = %req.target, "call failed: {e}");
                    }
                };
                stats
                    .memory_bytes
                    .store(inst.memory_bytes(), Ordering::Relaxed);
                let _ = reply.send(result);
            }
            Command::Checkpoint {
                only_if_dirty,
                reply,
            } => {
                let result = if only_if_dirty && !dirty {
                    Ok(None)
                } else {
                    let started = Instant::now();
                    let snap = inst.checkpoint().map(Some).map_err(|e| e.to_string());
                    metrics
                        .checkpoint_seconds
                        .observe(started.elapsed().as_secs_f64());
                    dirty = snap.is_err();
                    snap
                };
                let _ = reply.send(result);
            }
            Command::Stop { checkpoint, reply } => {
                let _ =
                    reply.send(checkpoint.then(|| inst.checkpoint().map_err(|e| e.to_string())));
                break;
            }
        }
    }
}
