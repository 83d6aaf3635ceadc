//! Request-response (`/continuum/forward/1` here; deployments, migration parts, large forwarded
//! requests) as a hostile peer sees it: messages left half sent on many streams at once hold at
//! most the node's `--peer-budget`; past it a stream is refused before more is read, and
//! counted; the node serves on (HTTP, the call lane), and what was held comes back once the
//! streams go.

use crate::lane::{count, until_counted};
use crate::stranger::Stranger;
use crate::support::{TestNode, guest};
use continuum::mesh::rpc::{self, Reply};
use http::Method;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_rpcs_on_many_streams_are_held_to_the_budget_and_the_node_serves_on() {
    let node = TestNode::start(&["--peer-budget", "4MiB"]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut s = Stranger::connect(&node).await;
    // Three messages of 1.5 MiB, none finished: the third does not fit beside the others.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = s
            .stream(libp2p::StreamProtocol::new(rpc::Protocol::Forward.name()))
            .await;
        let _ = s.try_send(&mut stream, &vec![0xff; 3 << 19]).await;
        streams.push(stream);
    }
    until_counted(&node, "rpc_budget", 1).await;
    let held = node.metric("continuum_peer_bytes").await;
    // At the refusal the budget was full; the refused stream gave its share back.
    assert!((2 << 20..=4 << 20).contains(&held), "{held} bytes held");
    // Meanwhile HTTP and the call lane go on.
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
    let mut lane = s.lane().await;
    let reply = s.ask_lane(&mut lane, 1, &rpc::seal(None, &count())).await;
    assert!(matches!(reply, Reply::Forwarded(_)), "{reply:?}");
    // The half-sent messages go: their bytes come back, and request-response serves again.
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.metric("continuum_peer_bytes").await > 0 {
        assert!(Instant::now() < deadline, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = s.ask(&count()).await;
    assert!(matches!(reply, Reply::Forwarded(_)), "{reply:?}");
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(r.text(), "3");
}

/// Each kind of request has its own protocol, with its own size limit: a key holder that sends
/// a request on another kind's protocol (a deployment as a sync, a migration step as a
/// forwarded request, a sync as a deployment, a migration step on the call lane) is refused
/// and counted, nothing is deployed or staged, a sync larger than a sync may be is refused
/// before it is read whole; the node serves on, and the same requests on their own protocols
/// are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_another_kinds_protocol_is_refused_and_counted() {
    use continuum::mesh::rpc::{Protocol, Request};
    use continuum_migrate::ToTarget;
    let node = TestNode::start(&["--swarm-key", crate::support::swarm_key()]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut s = Stranger::connect(&node).await;
    let key = std::fs::read_to_string(crate::support::swarm_key()).unwrap();
    s.key = Some(continuum_gossip::SwarmKey::parse(&key).unwrap());
    s.prove().await;

    let deploy = Request::Deploy {
        name: "smuggled".into(),
        version: "1".into(),
        bounds: Default::default(),
        wasm: std::fs::read(guest("counter")).unwrap(),
    };
    let status = Request::MigrationStatus(7);
    let abort = Request::Migrate(ToTarget::Abort {
        id: 7,
        reason: "test".into(),
    });
    let misplaced = [
        (Protocol::Sync, &deploy),
        (Protocol::Forward, &status),
        (Protocol::Deploy, &abort),
        (Protocol::Control, &count()),
    ];
    for (n, (protocol, req)) in misplaced.into_iter().enumerate() {
        match s.ask_on(protocol, req).await {
            Reply::Refused {
                status: 400,
                message,
            } => {
                assert!(message.contains("does not belong on"), "{message}")
            }
            other => panic!("{req:?} on {protocol}: {other:?}"),
        }
        until_counted(&node, "wrong_protocol", n as u64 + 1).await;
    }
    let mut lane = s.lane().await;
    let reply = s
        .ask_lane(&mut lane, 9, &rpc::seal(s.key.as_ref(), &status))
        .await;
    assert!(
        matches!(&reply, Reply::Refused { status: 400, .. }),
        "{reply:?}"
    );
    until_counted(&node, "wrong_protocol", 5).await;
    let ls = node.ok(&["ls"]);
    assert!(!ls.contains("smuggled"), "{ls}");

    // A sync past a sync's limit is cut off before it is read whole.
    let mut sync = s
        .stream(libp2p::StreamProtocol::new(Protocol::Sync.name()))
        .await;
    let _ = s
        .try_send(
            &mut sync,
            &vec![0xff; Protocol::Sync.max_message() + (1 << 20)],
        )
        .await;
    until_counted(&node, "rpc_too_large", 1).await;

    // On their own protocols the same kinds are answered, and clients are served.
    let reply = s.ask(&status).await;
    assert!(
        matches!(&reply, Reply::Refused { status: 404, .. }),
        "{reply:?}"
    );
    assert!(matches!(s.ask(&count()).await, Reply::Forwarded(_)));
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
}
