//! A peer claims a component this node hosts at a far higher epoch, as if it had moved there:
//! a move is believed only with the hand-off of the host before (this node, which signed
//! none), so the node keeps routing to its own copy, keeps the snapshot and counts the claim.

use crate::migrate::host_of;
use crate::stranger::Stranger;
use crate::support::{TestNode, guest};
use continuum::mesh::rpc::{Reply, Request};
use continuum_gossip::{Body, Hosted, Message, ResourceAdvert, Resources, SignedHandoff, seal};
use http::Method;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_higher_epoch_deletes_nothing() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    for _ in 0..5 {
        assert_eq!(
            node.h1(Method::POST, "/c/counter/incr", b"").await.status,
            200
        );
    }
    let mut s = Stranger::connect(&node).await;
    let me = s.id.public().to_peer_id();

    // Its advert lives 5 s unless renewed, and claims `counter` at epoch 99, with a hand-off
    // that verifies but is the stranger's own, not the node's.
    let claim = Hosted {
        name: "counter".into(),
        epoch: 99,
        digest: [0; 32],
        handoff: Some(SignedHandoff::sign(&s.id, "counter", 99, me)),
    };
    let advert = Message {
        seq: 1,
        body: Body::Advert(ResourceAdvert {
            peer: me.to_bytes(),
            ttl_ms: 5_000,
            resources: Resources {
                components: vec![claim],
                ..Resources::default()
            },
        }),
    };
    let sync = Message {
        seq: 2,
        body: Body::SyncRequest {
            mine: seal(&s.id, None, &advert),
            known: vec![],
        },
    };
    let reply = s.ask(&Request::Sync(seal(&s.id, None, &sync))).await;
    assert!(matches!(reply, Reply::Synced), "{reply:?}");

    // The claim is seen and counted once, and believed by nobody: the node goes on serving
    // its own copy, with every increment, while the claim stands; nothing is deleted.
    let series = "continuum_mesh_rejected_total{reason=\"unproven_move\"}";
    let started = Instant::now();
    while node.metric(series).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claim was never weighed:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        (r.status, r.text(), host_of(&r)),
        (200, "5".to_string(), node.peer_id().to_string())
    );
    assert!(
        !node.log().contains("dropping this stale one"),
        "{}",
        node.log()
    );
    assert!(node.ok(&["ls"]).contains("counter"));
    assert!(node.dir.join("components/counter.snap").exists());
    assert_eq!(node.metric(series).await, 1);
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"stale_copy\"}")
            .await,
        0
    );
}
