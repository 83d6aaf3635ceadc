//! A closed swarm admits key holders only: a peer that does not prove it holds the key within
//! the bound after connecting is disconnected, counted and kept away (its next connection is
//! cut at once), and learns nothing meanwhile; a peer that proves it stays, and the node
//! serves on.

use crate::lane::until_counted;
use crate::stranger::Stranger;
use crate::support::{TestNode, guest, swarm_key};
use http::Method;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_key_is_cut_off_and_kept_away_and_a_key_holder_stays() {
    let node = TestNode::start(&["--swarm-key", swarm_key()]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let key = std::fs::read_to_string(swarm_key()).unwrap();
    let mut holder = Stranger::connect(&node).await;
    holder.key = Some(continuum_gossip::SwarmKey::parse(&key).unwrap());
    holder.prove().await;
    let mut keyless = Stranger::connect(&node).await;
    let within = continuum::mesh::auth::WITHIN + Duration::from_secs(3);
    assert!(
        keyless.cut_off_within(within).await,
        "the keyless peer stayed"
    );
    until_counted(&node, "keyless_peer", 1).await;
    // Kept away: its next connection is cut at once, and counted.
    if keyless.redial(&node.p2p()).await {
        assert!(keyless.cut_off_within(Duration::from_secs(3)).await);
    }
    until_counted(&node, "peer_kept_away", 1).await;
    // The holder is still connected past the bound and is served; the keyless one never
    // showed up in the node's view; the node serves on.
    assert!(!holder.cut_off_within(Duration::from_millis(500)).await);
    assert!(
        !node
            .peers()
            .await
            .contains(&keyless.id.public().to_peer_id().to_string())
    );
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
    assert_eq!(
        node.metric("continuum_mesh_rejected_total{reason=\"keyless_peer\"}")
            .await,
        1,
        "the holder was never counted"
    );
}
