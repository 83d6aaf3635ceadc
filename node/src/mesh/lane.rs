//! The call lane (`/continuum/call/1`): small rpc requests and their replies on one long-lived
//! stream per pair of peers and direction, each frame tagged with its request's id.
//!
//! Why not request-response for these: it opens a stream for each request, negotiates the
//! protocol on it (a round trip before the request leaves) and passes every message through
//! the swarm's task and the connection's. A call between components on two nodes spent most of
//! its 0.65 ms there. Here the caller writes straight into the QUIC stream and a reader task
//! hands each reply to its caller. Large requests (module bytes, pages) stay on
//! request-response, a stream each, so they never sit in front of a call.
//!
//! A frame is `len: u32` (big-endian, what follows), `id: u64`, a flag byte (1: a 32-byte
//! swarm-key tag follows), then the CBOR body: the same sealed envelope request-response
//! carries, opened and checked the same way. Every length is bounded before anything is
//! buffered; a peer that breaks the framing loses the stream, and each refusal is counted.

use super::rpc::{self, Envelope};
use crate::metrics::Metrics;
pub use continuum_wire::frame::{FrameError, encode, read_frame};
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore, oneshot};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/continuum/call/1");

/// Largest request frame: requests larger than [`rpc::BULK`] go on request-response, and what
/// an envelope adds (name, call chain, tag) is far below this margin.
pub const MAX_REQUEST: usize = rpc::BULK + (16 << 10);
/// Requests one inbound stream may have in flight; past it each is refused at once (503), as
/// request-response refuses when the node is full. Refused rather than left unread: a request
/// in flight may wait on another one behind it on the same lane.
pub const MAX_IN_FLIGHT: usize = 256;
/// Inbound streams one peer may hold open (it needs one; a second covers a reconnect).
pub const MAX_STREAMS_PER_PEER: usize = 2;
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// No lane to the peer (it does not speak the protocol, or cannot be reached): nothing was
    /// sent, the request may go another way.
    #[error("no call lane to the peer: {0}")]
    Open(String),
    /// The lane closed while the request was in flight: it may or may not have been served.
    #[error("the call lane closed: {0}")]
    Lost(String),
}

async fn write_frame(
    w: &tokio::sync::Mutex<WriteHalf<Stream>>,
    id: u64,
    env: &Envelope,
) -> std::io::Result<()> {
    let frame = encode(id, env);
    let mut w = w.lock().await;
    w.write_all(&frame).await?;
    w.flush().await
}

/// This node's lanes to its peers, opened on first use.
pub struct Lanes {
    control: libp2p_stream::Control,
    lanes: Mutex<HashMap<PeerId, Arc<OnceCell<Arc<Lane>>>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
    rt: tokio::runtime::Handle,
}

struct Lane {
    writer: tokio::sync::Mutex<WriteHalf<Stream>>,
    /// Callers waiting for a reply, by id; `None` once the lane closed.
    waiting: Mutex<Option<HashMap<u64, oneshot::Sender<Envelope>>>>,
}

/// Removes a caller's entry however its wait ends (answered, timed out, dropped).
struct Waiting<'a>(&'a Lane, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0.waiting.lock().unwrap().as_mut() {
            w.remove(&self.1);
        }
    }
}

impl Lanes {
    pub fn new(
        control: libp2p_stream::Control,
        metrics: Arc<Metrics>,
        rt: tokio::runtime::Handle,
    ) -> Lanes {
        Lanes {
            control,
            lanes: Mutex::default(),
            next: AtomicU64::new(1),
            metrics,
            rt,
        }
    }

    /// Send a sealed request to `peer` and wait for its sealed reply (no timeout of its own:
    /// the caller bounds the wait).
    pub async fn request(
        self: &Arc<Self>,
        peer: PeerId,
        env: &Envelope,
    ) -> Result<Envelope, LaneError> {
        let lane = self.lane(peer).await?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lane.waiting.lock().unwrap().as_mut() {
            Some(w) => w.insert(id, tx),
            None => return Err(LaneError::Open("it closed".into())),
        };
        let _waiting = Waiting(&lane, id);
        if let Err(e) = write_frame(&lane.writer, id, env).await {
            self.close(peer, &lane);
            return Err(LaneError::Lost(e.to_string()));
        }
        rx.await
            .map_err(|_| LaneError::Lost("connection lost".into()))
    }

    async fn lane(self: &Arc<Self>, peer: PeerId) -> Result<Arc<Lane>, LaneError> {
        let cell = self.lanes.lock().unwrap().entry(peer).or_default().clone();
        let opened = cell
            .get_or_try_init(|| async {
                let stream = tokio::time::timeout(
                    OPEN_TIMEOUT,
                    self.control.clone().open_stream(peer, PROTOCOL),
                )
                .await
                .map_err(|_| LaneError::Open("timed out".into()))?
                .map_err(|e| LaneError::Open(e.to_string()))?;
                let (r, w) = stream.split();
                let lane = Arc::new(Lane {
                    writer: tokio::sync::Mutex::new(w),
                    waiting: Mutex::new(Some(HashMap::new())),
                });
                self.rt
                    .spawn(self.clone().read_replies(peer, lane.clone(), r));
                Ok(lane)
            })
            .await
            .cloned();
        if opened.is_err() {
            self.forget(peer, &cell);
        }
        opened
    }

    /// Hand each reply to its caller until the lane fails.
    async fn read_replies(self: Arc<Self>, peer: PeerId, lane: Arc<Lane>, mut r: ReadHalf<Stream>) {
        loop {
            match read_frame(&mut r, rpc::MAX_MESSAGE).await {
                Ok(Some((id, env))) => {
                    let waiter = lane
                        .waiting
                        .lock()
                        .unwrap()
                        .as_mut()
                        .and_then(|w| w.remove(&id));
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(env);
                        }
                        // Late (its caller gave up) or made up: either way nobody to give it to.
                        None => self.metrics.mesh_reject("lane_reply_unasked"),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(reason) = e.reason() {
                        self.metrics.mesh_reject(reason);
                    }
                    tracing::debug!(%peer, "call lane closed: {e}");
                    break;
                }
            }
        }
        self.close(peer, &lane);
    }

    /// Fail the lane's callers and let the next request open a new one.
    fn close(&self, peer: PeerId, lane: &Arc<Lane>) {
        lane.waiting.lock().unwrap().take();
        let mut lanes = self.lanes.lock().unwrap();
        if lanes
            .get(&peer)
            .and_then(|c| c.get())
            .is_some_and(|l| Arc::ptr_eq(l, lane))
        {
            lanes.remove(&peer);
        }
    }

    fn forget(&self, peer: PeerId, cell: &Arc<OnceCell<Arc<Lane>>>) {
        let mut lanes = self.lanes.lock().unwrap();
        if lanes.get(&peer).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            lanes.remove(&peer);
        }
    }
}

/// Serve the lanes peers open to this node: each request is answered by `answer` (which opens
/// the envelope and refuses what fails), in its own task, the reply written back with its id;
/// past [`MAX_IN_FLIGHT`] the reply is `busy` (sealed already).
pub async fn accept<F, Fut>(
    mut incoming: libp2p_stream::IncomingStreams,
    answer: F,
    busy: Envelope,
    metrics: Arc<Metrics>,
) where
    F: Fn(PeerId, Envelope) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Envelope> + Send + 'static,
{
    use futures::StreamExt;
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        {
            let mut open = open.lock().unwrap();
            let n = open.entry(peer).or_default();
            if *n >= MAX_STREAMS_PER_PEER {
                metrics.mesh_reject("lane_too_many_streams");
                continue;
            }
            *n += 1;
        }
        let (open, answer, metrics) = (open.clone(), answer.clone(), metrics.clone());
        let busy = busy.clone();
        tokio::spawn(async move {
            serve(peer, stream, answer, &busy, &metrics).await;
            let mut open = open.lock().unwrap();
            if let Some(n) = open.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&peer);
                }
            }
        });
    }
}

async fn serve<F, Fut>(peer: PeerId, stream: Stream, answer: F, busy: &Envelope, metrics: &Metrics)
where
    F: Fn(PeerId, Envelope) -> Fut,
    Fut: Future<Output = Envelope> + Send + 'static,
{
    let (mut r, w) = stream.split();
    let w = Arc::new(tokio::sync::Mutex::new(w));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let (id, env) = match read_frame(&mut r, MAX_REQUEST).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(e) => {
                if let Some(reason) = e.reason() {
                    metrics.mesh_reject(reason);
                }
                tracing::debug!(%peer, "refused a call lane: {e}");
                // Its requests in flight lose their replies too: the framing is gone.
                let _ = w.lock().await.close().await;
                return;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.mesh_reject("lane_overloaded");
            if write_frame(&w, id, busy).await.is_err() {
                return;
            }
            continue;
        };
        let reply = answer(peer, env);
        let w = w.clone();
        tokio::spawn(async move {
            let reply = reply.await;
            let _ = write_frame(&w, id, &reply).await;
            drop(slot);
        });
    }
}
