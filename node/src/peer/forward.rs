//! `/continuum/forward/1` (and the call lane, its fast path): a component request forwarded to
//! this node, its host, with what a call between components carries (deadline, call chain);
//! the result of a call that follows its caller here after a migration; the answer to a
//! request whose client waits here.

use super::{misplaced, refused};
use crate::context::Node;
use crate::mesh::rpc::{Protocol, Reply, Request};
use crate::routing;
use continuum_gossip::PeerId;
use std::sync::Arc;

pub async fn answer(node: &Arc<Node>, from: PeerId, request: Request) -> Reply {
    match request {
        Request::Forward {
            name,
            hops,
            entry,
            request,
            deadline,
            chain,
        } => {
            let entry = entry.and_then(|e| e.parse().ok()).unwrap_or(from);
            node.metrics
                .forwarded
                .get_or_create(&crate::metrics::DirectionLabels { direction: "in" })
                .inc();
            let limits = &node.config.limits;
            if chain.len() > limits.max_call_depth
                || chain
                    .iter()
                    .any(|n| crate::components::check_name(n).is_err())
            {
                node.metrics.reject("bad_call_chain");
                return refused(
                    400,
                    format!(
                        "forwarded request carries an invalid call chain (at most {} valid names)",
                        limits.max_call_depth
                    ),
                );
            }
            // The deadline is the peer's claim: this node's own limit caps it.
            let deadline = deadline.map(|d| std::time::Instant::now() + d.min(limits.call_timeout));
            let ctx = crate::runtime::CallCtx {
                deadline,
                chain,
                entry,
                hops,
            };
            match continuum_guest::abi::decode_request(&request) {
                Ok(req) => Reply::Forwarded(continuum_guest::abi::encode_response(
                    &routing::serve(node, &name, req, ctx).await,
                )),
                Err(e) => refused(400, format!("forwarded request did not decode: {e}")),
            }
        }
        Request::Wake {
            name,
            op,
            result,
            hops,
        } => {
            if let Some(h) = node.components.get(&name) {
                h.wake(op, result, from);
            } else if let Some((to, _)) = node.components.moved_to(&name)
                && hops < routing::MAX_HOPS
            {
                // It moved on from here too: what reached it here follows it.
                node.calls.send_wake(to, &name, op, result, hops + 1);
            } else {
                node.metrics.reject("late_call_result");
            }
            Reply::Synced
        }
        Request::Answer { key, response } => {
            match continuum_guest::abi::decode_response(&response) {
                Ok(resp) => {
                    if !node.calls.resolve(key, resp) {
                        node.metrics.reject("answer_nobody_waits_for");
                    }
                }
                Err(_) => node.metrics.reject("bad_answer"),
            }
            Reply::Synced
        }
        other => misplaced(node, Protocol::Forward, &other),
    }
}
