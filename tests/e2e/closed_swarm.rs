//! A closed swarm admits key holders only: a peer that does not prove it holds the key within
//! the bound after connecting is disconnected, counted and kept away (its next connection is
//! cut at once), and learns nothing meanwhile; a peer that proves it stays, and the node
//! serves on.

use crate::lane::until_counted;
use crate::stranger::Stranger;
use crate::support::{TestNode, guest, swarm_key};
use continuum::mesh::rpc::Reply;
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

/// A key holder announces a federation to last for ever: the node holds the lease to its own
/// bound (`--max-lease 2s`), so the federation is gone from it within that once its owner goes
/// silent, though the owner stays connected; the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_announced_for_ever_dissolves_within_the_nodes_bound() {
    use continuum_gossip::{Body, FederationMsg, FederationSpec, Message, seal};
    use std::time::Instant;
    let node = TestNode::start(&["--swarm-key", swarm_key(), "--max-lease", "2s"]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let key = std::fs::read_to_string(swarm_key()).unwrap();
    let key = continuum_gossip::SwarmKey::parse(&key).unwrap();
    let mut owner = Stranger::connect(&node).await;
    owner.key = Some(key.clone());
    owner.prove().await;
    let spec = FederationSpec {
        name: "forever".into(),
        objective: "never to end".into(),
        require: Default::default(),
        min_members: 1,
        lease_ms: u64::MAX,
    };
    let message = Message {
        seq: 1,
        body: Body::Federation(FederationMsg::Announce(spec)),
    };
    let reply = owner.gossip(seal(&owner.id, Some(&key), &message)).await;
    assert!(matches!(reply, Reply::Synced), "{reply:?}");
    let listed = || -> Option<serde_json::Value> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&node.ok(&["federate", "ls", "--json"])).unwrap();
        list.into_iter().find(|f| f["name"] == "forever")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let f = loop {
        if let Some(f) = listed() {
            break f;
        }
        assert!(Instant::now() < deadline, "the announcement never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(f["lease_ms"], 2_000, "{f}");
    assert!(f["expires_in_ms"].as_u64().unwrap() <= 2_000, "{f}");
    // Silent from now on, still connected: gone within the bound (and some slack).
    let silent = Instant::now();
    while listed().is_some() {
        assert!(
            silent.elapsed() < Duration::from_secs(6),
            "the federation outlived the node's bound on leases"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!owner.cut_off_within(Duration::from_millis(100)).await);
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
    // A bound past what any node grants is refused at start, saying why.
    let err = crate::support::refused_start(&["--max-lease", "48h"]);
    assert!(err.contains("max_lease must be"), "{err}");
}

/// Before it proves the key, a peer learns nothing from the protocols that tell: identify
/// (the node's addresses and protocols) and Kademlia (other peers' addresses) hold its first
/// streams unread and drop the rest, each counted; once a peer proves the key, both answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_learns_nothing_from_identify_or_kademlia_before_it_proves_the_key() {
    const IDENTIFY: &str = "/ipfs/id/1.0.0";
    const KAD: &str = "/continuum/kad/1";
    // A Kademlia FIND_NODE (protobuf: type = 4, key = a peer id), length-prefixed.
    let find_node = |key: &[u8]| {
        let mut msg = vec![0x08, 0x04, 0x12, key.len() as u8];
        msg.extend_from_slice(key);
        let mut framed = vec![msg.len() as u8];
        framed.extend(msg);
        framed
    };
    let node = TestNode::start(&["--swarm-key", swarm_key()]);
    let mut keyless = Stranger::connect(&node).await;
    let me = keyless.id.public().to_peer_id().to_bytes();
    let within = Duration::from_millis(500);
    // The first four streams on each are held unread (an honest peer's are answered once it
    // proves the key), the rest dropped and counted.
    for _ in 0..5 {
        assert_eq!(keyless.read_on(IDENTIFY, b"", within).await, b"");
        assert_eq!(keyless.read_on(KAD, &find_node(&me), within).await, b"");
    }
    until_counted(&node, "unproven_peer", 2).await;

    // A key holder is answered by both once its proof is in, on the stream it opened before
    // too: a node's identify request goes out the moment it connects, and were it dropped, the
    // node's addresses would reach the holder only at the next identify round, minutes on.
    let key = std::fs::read_to_string(swarm_key()).unwrap();
    let mut holder = Stranger::connect(&node).await;
    holder.key = Some(continuum_gossip::SwarmKey::parse(&key).unwrap());
    let mut early = holder.stream(libp2p::StreamProtocol::new(IDENTIFY)).await;
    holder.prove().await;
    let me = holder.id.public().to_peer_id().to_bytes();
    let identified = holder.read_within(&mut early, Duration::from_secs(5)).await;
    assert!(
        !identified.is_empty(),
        "identify never answered the stream the holder opened before its proof"
    );
    assert!(
        !holder
            .read_on(KAD, &find_node(&me), Duration::from_secs(5))
            .await
            .is_empty(),
        "Kademlia never answered the holder"
    );
    // The keyless one is cut off as before, and never counted as admitted.
    assert!(
        keyless
            .cut_off_within(continuum::mesh::auth::WITHIN + Duration::from_secs(3))
            .await
    );
    assert_eq!(
        node.h1(Method::GET, "/metrics", b"").await.status,
        200,
        "the node serves on"
    );
}
