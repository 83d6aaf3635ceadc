//! A peer claims a component this node hosts at a far higher epoch, as if it had moved there:
//! the node believes a move only on the hand-off it signed itself, so it keeps its copy and
//! the snapshot, counts the claim, and serves the component again once the claim is gone.

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

    // Its advert lives 1 s unless renewed, and claims `counter` at epoch 99, with a hand-off
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
            ttl_ms: 1_000,
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

    // The claim is seen, counted once, and deletes nothing.
    let series = "continuum_rejected_total{reason=\"unproven_newer_copy\"}";
    let started = Instant::now();
    while node.metric(series).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claim was never weighed:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.log()
            .contains("without this node's hand-off: keeping this copy")
    );
    assert!(
        !node.log().contains("dropping this stale one"),
        "{}",
        node.log()
    );
    assert!(node.ok(&["ls"]).contains("counter"));
    assert!(node.dir.join("components/counter.snap").exists());

    // Once the claim has aged out (the stranger says nothing more), the node serves its own
    // copy again, with every increment.
    let started = Instant::now();
    loop {
        let r = node.h1(Method::GET, "/c/counter/count", b"").await;
        if r.status == 200 && host_of(&r) == node.peer_id() {
            assert_eq!(r.text(), "5");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the component never came back: {} {}\n{}",
            r.status,
            r.text(),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.metric(series).await, 1);
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"stale_copy\"}")
            .await,
        0
    );
}
