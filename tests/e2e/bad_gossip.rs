//! Bad gossip from a raw libp2p peer (not a continuum node) that joins a node's gossip topic:
//! malformed CBOR, a bad signature, a replayed advert, an oversized message, an advert that
//! claims another peer's id. Each is dropped and counted, and the node keeps working.

use crate::support::{TestNode, guest};
use continuum_gossip::{Body, Keypair, Message, ResourceAdvert, Resources, seal};
use futures::StreamExt;
use http::Method;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::time::{Duration, Instant};

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
    let attacker = Keypair::generate_ed25519();
    let me = attacker.public().to_peer_id();

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(attacker.clone())
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| {
            let cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::new(blake3::hash(&m.data).as_bytes())
                })
                .max_transmit_size(1 << 20)
                .heartbeat_interval(Duration::from_millis(200))
                .build()
                .unwrap();
            gossipsub::Behaviour::<
                gossipsub::IdentityTransform,
                gossipsub::AllowAllSubscriptionFilter,
            >::new(gossipsub::MessageAuthenticity::Anonymous, cfg)
            .unwrap()
        })
        .unwrap()
        .build();
    let topic = IdentTopic::new("continuum/gossip/1");
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
        if sent == 6 {
            let mut all = true;
            for (reason, n) in want {
                let series = format!("continuum_mesh_rejected_total{{reason=\"{reason}\"}}");
                all &= node.metric(&series).await >= n;
            }
            if all {
                break;
            }
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
