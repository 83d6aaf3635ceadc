//! Bad gossip from a raw libp2p peer (not a continuum node) that talks to a node as its
//! neighbours do, in direct syncs: malformed CBOR, a bad signature, a replayed advert, an
//! oversized advert relayed in a sync, an advert that claims another peer's id. Each is dropped
//! and counted, and the node keeps working.

use crate::stranger::Stranger;
use crate::support::{TestNode, guest};
use continuum::mesh::rpc::Reply;
use continuum_gossip::{Body, Keypair, Message, ResourceAdvert, Resources, SyncEntry, seal};
use http::Method;
use libp2p::PeerId;

fn advert(id: &Keypair, claimed: PeerId, seq: u64, label: &str) -> Vec<u8> {
    let mut resources = Resources::default();
    resources.labels.insert("note".into(), label.into());
    let message = Message {
        seq,
        body: Body::Advert(ResourceAdvert {
            peer: claimed.to_bytes(),
            ttl_ms: 60_000,
            resources,
        }),
    };
    seal(id, None, &message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gossip_is_dropped_counted_and_survived() {
    let node = TestNode::start(&[]);
    let node_peer: PeerId = node.peer_id().parse().unwrap();
    let mut s = Stranger::connect(&node).await;
    let attacker = s.id.clone();
    let me = attacker.public().to_peer_id();
    let mut bad_signature = advert(&attacker, me, 101, "tampered");
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    // Past the bound of one advert, inside a sync that is well within its own.
    let oversized = seal(
        &attacker,
        None,
        &Message {
            seq: 102,
            body: Body::SyncReply {
                entries: vec![SyncEntry {
                    frame: advert(
                        &attacker,
                        me,
                        103,
                        &"x".repeat(continuum_gossip::MAX_GOSSIP_BYTES),
                    ),
                    heard_ago_ms: 0,
                }],
            },
        },
    );
    let frames: Vec<Vec<u8>> = vec![
        advert(&attacker, me, 100, "fine"),
        b"\xa1\x01 this is not a frame".to_vec(),
        bad_signature,
        // Older than the window of the last 64 the node accepts out of order.
        advert(&attacker, me, 20, "old"),
        oversized,
        advert(&attacker, node_peer, 104, "impostor"),
    ];
    for frame in frames {
        // The node answers each sync alike: what it refused inside is only counted.
        let reply = s.gossip(frame).await;
        assert!(matches!(reply, Reply::Synced), "{reply:?}");
    }
    let want = [
        ("malformed", 1),
        ("bad_signature", 1),
        ("replay", 1),
        ("oversized", 1),
        ("wrong_peer", 1),
    ];
    assert!(
        node.refused(&want).await,
        "not every bad message was counted:\n{}",
        node.h1(Method::GET, "/metrics", b"").await.text()
    );
    // The one honest advert made it: the attacker's key is a peer like any other in an open swarm.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node.peers().await.contains(&me.to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the honest advert was not taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    use continuum::mesh::rpc::Request;
    use std::time::{Duration, Instant};
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
