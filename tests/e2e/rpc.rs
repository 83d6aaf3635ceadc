//! Request-response (`/continuum/rpc/1`, deployments, migration parts, large forwarded
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
        let mut stream = s.stream(libp2p::StreamProtocol::new(rpc::PROTOCOL)).await;
        let _ = s.try_send(&mut stream, &vec![0xff; 3 << 19]).await;
        streams.push(stream);
    }
    until_counted(&node, "rpc_budget", 1).await;
    let held = node.metric("continuum_peer_bytes").await;
    assert!((3 << 20..=4 << 20).contains(&held), "{held} bytes held");
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
