//! Bad name records from a raw libp2p peer that speaks the node's Kademlia: a record that is
//! not a signed claim, one filed under another name, one signed by a peer that claims a higher
//! epoch of a name another host holds, with no hand-off; a provider record under a key that is
//! not a label's. None is stored, each is counted, the honest record stays what the node hands
//! out, and the node keeps serving.

use crate::support::{TestNode, guest};
use continuum_gossip::{Hosted, Keypair, record_key, seal_name};
use futures::StreamExt;
use http::Method;
use libp2p::kad::{self, Quorum, Record, RecordKey};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_name_records_are_refused_counted_and_survived() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter")]);
    let node_peer: PeerId = node.peer_id().parse().unwrap();
    let attacker = Keypair::generate_ed25519();
    let me = attacker.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(attacker.clone())
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| {
            kad::Behaviour::with_config(
                me,
                kad::store::MemoryStore::new(me),
                kad::Config::new(StreamProtocol::new("/continuum/kad/1")),
            )
        })
        .unwrap()
        .build();
    let addr: Multiaddr = node.p2p().parse().unwrap();
    swarm.behaviour_mut().add_address(&node_peer, addr);

    let key = record_key("counter");
    let forged = Hosted {
        name: "counter".into(),
        epoch: 99,
        digest: [0; 32],
        handoff: None,
    };
    // Not a frame; a claim filed under another name; a higher epoch with no hand-off; too big.
    let bad = [
        (key.clone(), vec![0xff; 64]),
        (record_key("other"), seal_name(&attacker, None, 1, &forged)),
        (key.clone(), seal_name(&attacker, None, 2, &forged)),
        (key.clone(), vec![0xa0; 4096]),
    ];
    for (k, v) in bad {
        swarm.behaviour_mut().put_record_to(
            Record::new(k, v),
            [node_peer].into_iter(),
            Quorum::One,
        );
    }
    // Provider records are kept for label keys only (federations recruit under them).
    swarm
        .behaviour_mut()
        .start_providing(RecordKey::new(&key))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(100), swarm.select_next_some()).await;
        let want = [
            ("malformed", 2),
            ("superseded_name", 1),
            ("oversized", 1),
            ("not_a_label", 1),
        ];
        if node.refused(&want).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every bad record was counted:\n{}",
            node.h1(Method::GET, "/metrics", b"").await.text()
        );
    }
    // What the node hands out under the name is still its own claim.
    swarm.behaviour_mut().get_record(RecordKey::new(&key));
    let deadline = Instant::now() + Duration::from_secs(20);
    let found = loop {
        let event = tokio::time::timeout_at(deadline.into(), swarm.select_next_some())
            .await
            .expect("the node's record was not found");
        if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
            result: kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))),
            ..
        }) = event
        {
            break r.record;
        }
    };
    let r = continuum_gossip::open_name(&key, &found.value, None, None).unwrap();
    assert_eq!((r.host, r.hosted.epoch), (node_peer, 1));
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
}
