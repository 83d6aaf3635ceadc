//! `/continuum/migrate/1`: a step of a migration to this node (the handshake's messages and
//! its pages, which `migration` carries out), and how a migration from this node ended (a
//! target that got no Commit asks).

use super::{misplaced, refused};
use crate::context::Node;
use crate::mesh::rpc::{Protocol, Reply, Request};
use continuum_gossip::PeerId;
use std::sync::Arc;

pub async fn answer(node: &Arc<Node>, from: PeerId, request: Request) -> Reply {
    match request {
        Request::Migrate(msg) => {
            Reply::Migrate(crate::migration::on_message(node, from, msg).await)
        }
        Request::MigrationStatus(id) => match crate::migration::outcome(node, id) {
            Some(o) => Reply::MigrationStatus(o),
            None => refused(404, format!("no migration {id} from this node")),
        },
        other => misplaced(node, Protocol::Migrate, &other),
    }
}
