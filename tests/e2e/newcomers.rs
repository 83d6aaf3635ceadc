//! A node with all the neighbours it takes still takes on a newcomer that knows no peer (one
//! neighbour makes room), but only once per ten seconds: syncs from fresh identities that
//! claim to know no one cost nothing to forge, and each eviction would cost a neighbour.

use crate::mesh::until_full_views;
use crate::stranger::Stranger;
use crate::support::TestNode;
use continuum::mesh::rpc::{Reply, Request};
use continuum_gossip::{Body, Message, ResourceAdvert, Resources, seal};
use http::Method;
use std::time::Duration;

/// A newcomer's sync: its own advert, and no peer known.
fn newcomer_sync(s: &Stranger) -> Request {
    let me = s.id.public().to_peer_id();
    let advert = Message {
        seq: 1,
        body: Body::Advert(ResourceAdvert {
            peer: me.to_bytes(),
            ttl_ms: 30_000,
            resources: Resources::default(),
        }),
    };
    let sync = Message {
        seq: 2,
        body: Body::SyncRequest {
            mine: seal(&s.id, None, &advert),
            known: vec![],
        },
    };
    Request::Sync(seal(&s.id, None, &sync))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_makes_room_for_one_newcomer_per_ten_seconds_not_for_a_crowd() {
    let node = TestNode::start(&["--max-neighbours", "1"]);
    let peer = TestNode::start(&["--join", &node.p2p()]);
    until_full_views(&[&node, &peer], Duration::from_secs(30)).await;

    // The first newcomer is taken on, its neighbour making room.
    let mut first = Stranger::connect(&node).await;
    let reply = first.ask(&newcomer_sync(&first)).await;
    assert!(matches!(reply, Reply::Synced), "{reply:?}");
    // A crowd of them right after is refused, each counted, and evicts no one.
    for _ in 0..4 {
        let mut s = Stranger::connect(&node).await;
        let reply = s.ask(&newcomer_sync(&s)).await;
        assert!(
            matches!(reply, Reply::Refused { status: 429, .. }),
            "{reply:?}"
        );
    }
    crate::lane::until_counted(&node, "eviction_limited", 4).await;
    let first_id = first.id.public().to_peer_id().to_string();
    assert!(
        node.peers().await.contains(&first_id),
        "the first newcomer was evicted by the crowd: {:?}",
        node.peers().await
    );
    assert_eq!(
        node.h1(Method::GET, "/metrics", b"").await.status,
        200,
        "the node serves on"
    );
}
