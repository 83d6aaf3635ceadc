//! Calls between components (ABI v2), the node's side. A component's thread asks for a call
//! and goes back to serving; the call runs here as a task, routed like any request (the local
//! instance if it is here, else its host through the mesh, following migrations), and its
//! result goes back to the component's thread. Replies of requests that migrated with their
//! component are parked here until the new host sends the answer.

use crate::context::Node;
use crate::routing;
use crate::runtime::router::HOST_HEADER;
use crate::runtime::router::call_result;
use crate::runtime::{Answer, Back, CallCtx, ComponentHandle, ReplyTo, Router, error_kind};
use continuum_gossip::PeerId;
use continuum_guest::{CallError, Request, Response, abi};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Parked replies beyond this are swept of those long past their deadline.
const PARKED_SWEEP: usize = 4096;
/// How long past its deadline a parked reply is kept for a late answer (the new host answers
/// 504 at the deadline; this covers the trip).
const PARKED_SLACK: Duration = Duration::from_secs(10);

pub struct Calls {
    me: PeerId,
    node: OnceLock<Weak<Node>>,
    parked: Mutex<HashMap<u64, (ReplyTo, Instant)>>,
}

impl Calls {
    /// Built before the node (components come back from disk first); [`Calls::attach`] once
    /// the node is up. Until then calls are refused.
    pub fn new(me: PeerId) -> Arc<Calls> {
        Arc::new(Calls {
            me,
            node: OnceLock::new(),
            parked: Mutex::default(),
        })
    }

    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    /// Send the result of call `op` of component `name` on to `to`, its `hops`th leg.
    pub fn send_wake(&self, to: PeerId, name: &str, op: u64, result: Vec<u8>, hops: u8) {
        let Some(n) = self.node() else { return };
        let name = name.to_string();
        n.mesh.runtime().clone().spawn(async move {
            if let Err(e) = n.mesh.wake(to, &name, op, result, hops).await {
                tracing::warn!(%to, component = %name, "a call's result did not get through: {e}");
            }
        });
    }

    /// The answer to a request whose reply was parked under `key`; false if nobody waits.
    pub fn resolve(&self, key: u64, resp: Response) -> bool {
        let parked = self.parked.lock().unwrap().remove(&key);
        match parked {
            Some((reply, _)) => {
                reply.send(Answer::Done(Ok(resp)));
                true
            }
            None => false,
        }
    }
}

impl Router for Calls {
    fn me(&self) -> PeerId {
        self.me
    }

    fn call(&self, from: &str, to: String, req: Request, ctx: CallCtx, op: u64, back: Back) {
        let Some(node) = self.node() else {
            back.result(
                op,
                &Err(CallError::Refused(503, "the node is still starting".into())),
            );
            return;
        };
        let from = from.to_string();
        // Not here (a local callee goes straight from thread to thread): it waits on the
        // mesh, so it runs next to it.
        node.mesh.runtime().clone().spawn(async move {
            let resp = routing::serve(&node, &to, req, ctx).await;
            // follow-traffic counts a component's calls by the node that answered them, so a
            // component that mostly reads from another moves next to it.
            if error_kind(&resp).is_none()
                && let Some(host) = resp
                    .header_value(HOST_HEADER)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| h.parse::<PeerId>().ok())
                && node
                    .components
                    .get(&from)
                    .is_some_and(|h| h.policy != continuum_gossip::Policy::Pinned)
            {
                let now = node.started.elapsed().as_millis() as u64;
                node.placer.lock().unwrap().record(now, &from, host);
            }
            back.result(op, &call_result(resp));
        });
    }

    fn local(&self, from: &str, to: &str) -> Option<Arc<ComponentHandle>> {
        let node = self.node()?;
        let callee = node.components.get(to)?;
        let epoch = callee
            .stats
            .epoch
            .load(std::sync::atomic::Ordering::Relaxed);
        if node.mesh.newer_host(to, epoch).is_some() {
            return None;
        }
        if node
            .components
            .get(from)
            .is_some_and(|h| h.policy != continuum_gossip::Policy::Pinned)
        {
            let now = node.started.elapsed().as_millis() as u64;
            node.placer.lock().unwrap().record(now, from, self.me);
        }
        Some(callee)
    }

    fn park(&self, key: u64, reply: ReplyTo, deadline: Instant) {
        let mut parked = self.parked.lock().unwrap();
        if parked.len() >= PARKED_SWEEP {
            let now = Instant::now();
            parked.retain(|_, (_, d)| *d + PARKED_SLACK > now);
        }
        parked.insert(key, (reply, deadline));
    }

    fn answer(&self, node: PeerId, key: u64, resp: Response) {
        if node == self.me {
            if !self.resolve(key, resp)
                && let Some(n) = self.node()
            {
                n.metrics.reject("answer_nobody_waits_for");
            }
            return;
        }
        let Some(n) = self.node() else { return };
        n.mesh.runtime().clone().spawn(async move {
            if let Err(e) = n.mesh.answer(node, key, abi::encode_response(&resp)).await {
                tracing::warn!(%node, "the answer to a migrated request did not get through: {e}");
            }
        });
    }

    fn forward_wake(&self, to: PeerId, name: &str, op: u64, result: Vec<u8>) {
        self.send_wake(to, name, op, result, 1);
    }

    fn new_key(&self) -> u64 {
        rand::random()
    }
}
