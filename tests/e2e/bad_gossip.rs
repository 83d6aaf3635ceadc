//! Bad gossip from a raw libp2p peer (not a continuum node) that joins a node's gossip topic:
//! malformed CBOR, a bad signature, a replayed advert, an oversized message, an advert that
//! claims another peer's id, an unsigned one (only a message straight from its sender may be).
//! Each is dropped and counted, and the node keeps working.

use crate::support::{TestNode, guest};
use continuum_gossip::{Body, Keypair, Message, ResourceAdvert, Resources, seal, seal_direct};
use futures::StreamExt;
use http::Method;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::time::{Duration, Instant};

fn advert(id: &Keypair, claimed: PeerId, seq: u64, label: &str) -> Vec<u8> {
    seal(id, None, &advert_message(claimed, seq, label))
}

fn advert_message(claimed: PeerId, seq: u64, label: &str) -> Message {
    let mut resources = Resources::default();
    resources.labels.insert("note".into(), label.into());
    Message {
        seq,
        body: Body::Advert(ResourceAdvert {
            peer: claimed.to_bytes(),
            ttl_ms: 60_000,
            resources,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gossip_is_dropped_counted_and_survived() {
    let node = TestNode::start(&[]);
    let node_peer: PeerId = node.peer_id().parse().unwrap();
    let attacker = Keypair::generate_ed25519();
    let me = attacker.public().to_peer_id();

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(attacker.clone())
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| crate::stranger::gossipsub())
        .unwrap()
        .build();
    let topic = IdentTopic::new(crate::stranger::TOPIC);
    swarm.behaviour_mut().subscribe(&topic).unwrap();
    swarm
        .dial(node.p2p().parse::<Multiaddr>().unwrap())
        .unwrap();

    // Wait until the node has subscribed us to the topic, then let the mesh settle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline.into(), swarm.select_next_some())
            .await
            .expect("the node never subscribed to the gossip topic");
        if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. }) = event
            && peer_id == node_peer
        {
            break;
        }
    }
    let good = advert(&attacker, me, 100, "fine");
    let mut bad_signature = advert(&attacker, me, 101, "tampered");
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let oversized = advert(
        &attacker,
        me,
        102,
        &"x".repeat(continuum_gossip::MAX_GOSSIP_BYTES),
    );
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("good", good),
        ("malformed", b"\xa1\x01 this is not a frame".to_vec()),
        ("bad_signature", bad_signature),
        // Older than the window of the last 64 the node accepts out of order.
        ("replay", advert(&attacker, me, 20, "old")),
        ("oversized", oversized),
        ("wrong_peer", advert(&attacker, node_peer, 103, "impostor")),
        (
            "unsigned",
            seal_direct(None, &advert_message(me, 104, "unsigned")),
        ),
    ];
    let mut sent = 0;
    let mut pending = messages.into_iter().peekable();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut next_send = Instant::now();
    let want = [
        ("malformed", 1),
        ("bad_signature", 1),
        ("replay", 1),
        ("oversized", 1),
        ("wrong_peer", 1),
        ("unsigned", 1),
    ];
    loop {
        if Instant::now() >= next_send {
            if let Some((what, bytes)) = pending.peek() {
                // Publishing can fail until gossipsub has a mesh peer; retry shortly.
                match swarm.behaviour_mut().publish(topic.clone(), bytes.clone()) {
                    Ok(_) => {
                        sent += 1;
                        pending.next();
                    }
                    Err(e) => println!("publishing {what}: {e}; retrying"),
                }
            }
            next_send = Instant::now() + Duration::from_millis(150);
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), swarm.select_next_some()).await;
        if sent == 7 && node.refused(&want).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every bad message was counted (sent {sent}):\n{}",
            node.h1(Method::GET, "/metrics", b"").await.text()
        );
    }
    // The one honest advert made it: the attacker's key is a peer like any other in an open swarm.
    assert!(node.peers().await.contains(&me.to_string()));
    // The node keeps working.
    node.ok(&["deploy", &guest("counter")]);
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
}

/// Lies a raw peer tells in syncs (the node's direct messages): another peer's advert passed off
/// as its own, a dead peer's advert relayed as heard long ago, its own advert claiming to live
/// for ever, and thousands of fresh identities. The node believes a peer alive only on that
/// peer's own word, holds every expiry to its own bounds, keeps its view bounded, counts the
/// refusals, and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lies_in_syncs_keep_no_one_alive_and_fill_nothing() {
    use crate::lane::until_counted;
    use crate::stranger::Stranger;
    use continuum::mesh::rpc::{Reply, Request};
    use continuum_gossip::SyncEntry;
    // Adverts live here 4 x 3 s at most: long enough that none of the 16,384 taken expires
    // before the last of the 17,000 arrives on a busy machine.
    let node = TestNode::start(&["--advert-expiry", "3s"]);
    node.ok(&["deploy", &guest("counter")]);
    let mut s = Stranger::connect(&node).await;
    let id = s.id.clone();
    let me = id.public().to_peer_id();
    let sealed = |by: &Keypair, seq: u64, body: Body| seal(by, None, &Message { seq, body });
    let advert = |by: &Keypair, seq: u64, ttl_ms: u64| {
        sealed(
            by,
            seq,
            Body::Advert(ResourceAdvert {
                peer: by.public().to_peer_id().to_bytes(),
                ttl_ms,
                resources: Resources::default(),
            }),
        )
    };
    let dead = Keypair::generate_ed25519();
    let dead_id = dead.public().to_peer_id().to_string();

    // Another's advert as its own: refused.
    let forged = Body::SyncRequest {
        mine: advert(&dead, 1, 60_000),
        known: vec![],
    };
    let reply = s.ask(&Request::Sync(sealed(&id, 1, forged))).await;
    assert!(matches!(reply, Reply::Synced), "{reply:?}");
    until_counted(&node, "wrong_peer", 1).await;
    // A dead peer relayed as heard a minute ago: never alive here.
    let stale = Body::SyncReply {
        entries: vec![SyncEntry {
            frame: advert(&dead, 1, 60_000),
            heard_ago_ms: 60_000,
        }],
    };
    s.ask(&Request::Sync(sealed(&id, 2, stale))).await;
    // Its own advert, to live for ever.
    let forever = Body::SyncRequest {
        mine: advert(&id, 3, u64::MAX),
        known: vec![],
    };
    s.ask(&Request::Sync(sealed(&id, 4, forever))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.peers().await.contains(&me.to_string()) {
        assert!(
            Instant::now() < deadline,
            "the stranger's own advert was not taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !node.peers().await.contains(&dead_id),
        "a stale relay made a dead peer alive"
    );
    // 17,000 fresh identities, relayed as heard just now: the view takes 16,384 at most.
    let fresh: Vec<Vec<u8>> = (0..17_000)
        .map(|_| advert(&Keypair::generate_ed25519(), 1, 60_000))
        .collect();
    for (i, chunk) in fresh.chunks(4_000).enumerate() {
        let entries = chunk
            .iter()
            .map(|frame| SyncEntry {
                frame: frame.clone(),
                heard_ago_ms: 0,
            })
            .collect();
        s.ask(&Request::Sync(sealed(
            &id,
            5 + i as u64,
            Body::SyncReply { entries },
        )))
        .await;
    }
    // Each refused identity is counted: refused because the view was full.
    until_counted(&node, "view_full", 17_000 - 16_384).await;
    let seen = node.peers().await.len();
    assert!(
        (16_000..=16_384).contains(&seen),
        "{seen} peers in the view"
    );
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
    // Silence: every one of them, the stranger with its endless advert too, expires within four
    // times the node's own time to live (3 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.peers().await.is_empty() {
        assert!(Instant::now() < deadline, "lies kept peers alive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "1"
    );
}
