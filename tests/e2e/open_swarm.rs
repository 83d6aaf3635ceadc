//! What a peer may do in a swarm open to anyone: be a member and have requests routed, nothing
//! more. A stranger's deployment, migration and control request are refused and counted, and
//! the node serves on.

use crate::stranger::Stranger;
use crate::support::{TestNode, guest};
use continuum::mesh::rpc::{Reply, Request};
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_an_open_swarm_a_stranger_routes_requests_but_runs_nothing_here() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut s = Stranger::connect(&node).await;

    let wasm = std::fs::read(guest("kv")).unwrap();
    let deploy = Request::Deploy {
        name: "intruder".into(),
        version: "1".into(),
        bounds: Default::default(),
        wasm,
    };
    let offer = Request::Migrate(continuum_migrate::ToTarget::Offer(
        continuum_migrate::Offer {
            id: 7,
            name: "intruder".into(),
            version: "1".into(),
            module_digest: [0; 32],
            memory_bytes: 1 << 16,
            epoch: 0,
            federation: None,
            require: Default::default(),
            policy: "pinned".into(),
        },
    ));
    let control = Request::Control {
        method: "DELETE".into(),
        path: "components/counter".into(),
        body: vec![],
    };
    for req in [deploy, offer, control] {
        let reply = s.ask(&req).await;
        assert!(
            matches!(&reply, Reply::Refused { status: 403, message } if message.contains("closed by a key")),
            "{reply:?}"
        );
    }
    for (reason, n) in [("open_swarm_peer", 2), ("remote_control", 1)] {
        let series = format!("continuum_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(node.metric(&series).await, n, "{series}");
    }
    // Routing is what an open swarm is for: the stranger's request reaches the component.
    let forward = Request::Forward {
        name: "counter".into(),
        hops: 1,
        entry: None,
        request: continuum_guest::abi::encode_request(&continuum_guest::Request {
            method: "POST".into(),
            ..continuum_guest::Request::get("/incr")
        }),
        deadline: None,
        chain: vec![],
    };
    assert!(matches!(s.ask(&forward).await, Reply::Forwarded(_)));
    let names = node.ok(&["ls"]);
    assert!(!names.contains("intruder"), "{names}");
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!((r.status, r.text()), (200, "1".to_string()));
}
