//! The mesh: real nodes on loopback that find each other through one bootstrap peer, gossip
//! their resources, route requests by component name, and form federations.

use crate::support::{TestNode, guest, keygen, swarm_key};
use http::Method;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Nodes 2..=n join node 1; each also gets `args(i)`.
pub fn mesh(n: usize, mut own: impl FnMut(usize) -> Vec<String>) -> Vec<TestNode> {
    let first_args = own(1);
    let first = TestNode::start(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    let join = first.p2p();
    let mut nodes = vec![first];
    for i in 2..=n {
        let mut a = own(i);
        a.extend(["--join".to_string(), join.clone()]);
        nodes.push(TestNode::start(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
    }
    nodes
}

/// Wait until every live node's view is exactly the other live nodes; how long it took.
pub async fn until_full_views(nodes: &[&TestNode], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut full = true;
        for n in nodes {
            let want: BTreeSet<String> = nodes
                .iter()
                .filter(|o| o.peer_id() != n.peer_id())
                .map(|o| o.peer_id().to_string())
                .collect();
            if n.peers().await != want {
                full = false;
                break;
            }
        }
        if full {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "views not complete within {within:?}: {:?}",
            futures::future::join_all(nodes.iter().map(|n| n.peers())).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn no_args(_: usize) -> Vec<String> {
    crate::migrate::args(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_route_by_name_and_forget_the_dead() {
    let mut nodes = mesh(5, no_args);
    let all: Vec<&TestNode> = nodes.iter().collect();
    let took = until_full_views(&all, Duration::from_secs(10)).await;
    println!("5 nodes, one bootstrap: full views {took:?} after the last node was ready");

    // counter on node 1 answers through node 5 over HTTP/3 and node 3 over HTTP/1.1, one state.
    nodes[0].ok(&["deploy", &guest("counter")]);
    let host = nodes[0].peer_id().to_string();
    let mut h3 = nodes[4].h3().await;
    let started = Instant::now();
    let r = loop {
        let r = h3
            .request(Method::POST, "/c/counter/incr", Default::default(), None)
            .await
            .unwrap();
        if r.status != 404 || started.elapsed() > Duration::from_secs(5) {
            break r;
        }
    };
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
    assert_eq!(r.header("x-continuum-host"), Some(host.as_str()));
    let r = nodes[2].h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "2"));
    assert_eq!(r.header("x-continuum-host"), Some(host.as_str()));
    assert_eq!(
        nodes[0]
            .h1(Method::GET, "/c/counter/count", b"")
            .await
            .text(),
        "2"
    );
    h3.close().await;

    // deploy --on places a component on a remote node.
    let target = nodes[3].peer_id().to_string();
    nodes[1].ok(&["deploy", &guest("kv"), "--on", &target]);
    let ls: Vec<serde_json::Value> = serde_json::from_str(&nodes[3].ok(&["ls", "--json"])).unwrap();
    assert!(
        ls.iter()
            .any(|c| c["name"] == "kv" && c["host"] == target.as_str()),
        "{ls:?}"
    );
    assert_eq!(
        nodes[0]
            .h1(Method::PUT, "/c/kv/k/a", b"via node 1")
            .await
            .status,
        201
    );
    let r = nodes[4].h1(Method::GET, "/c/kv/k/a", b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "via node 1"));
    assert_eq!(r.header("x-continuum-host"), Some(target.as_str()));
    let seen_from_3: Vec<serde_json::Value> =
        serde_json::from_str(&nodes[2].ok(&["ls", "--json"])).unwrap();
    let names: BTreeSet<&str> = seen_from_3
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["counter", "kv"]));
    for c in &seen_from_3 {
        assert_eq!(c["epoch"], 1);
        assert_eq!(c["digest"].as_str().unwrap().len(), 64);
    }

    // A name nobody hosts: 404 after a bounded wait.
    let started = Instant::now();
    let r = nodes[1].h1(Method::GET, "/c/nobody/x", b"").await;
    assert_eq!(r.status, 404);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // kill -9 of node 3: it leaves every view within the advert expiry (3 s here), and the
    // rest of the mesh and its routing go on.
    let dead = nodes[2].peer_id().to_string();
    nodes[2].kill9();
    let killed = Instant::now();
    let live: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, n)| n)
        .collect();
    let gone = until_full_views(&live, Duration::from_secs(10)).await;
    println!(
        "node 3 left every view {:?} after kill -9 (expiry 3 s)",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(3) + Duration::from_secs(4),
        "{gone:?}"
    );
    for n in &live {
        assert!(!n.peers().await.contains(&dead));
    }
    let r = nodes[4].h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "3"));
    let metrics = nodes[4].h1(Method::GET, "/metrics", b"").await.text();
    assert!(metrics.contains("continuum_mesh_peers 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_takes_the_matching_nodes_and_dissolves_without_renewal() {
    let zone = |i: usize| {
        let z = if i <= 3 { "zone=a" } else { "zone=b" };
        ["--label", z, "--swarm-key", swarm_key()]
            .map(String::from)
            .to_vec()
    };
    let nodes = mesh(5, zone);
    let all: Vec<&TestNode> = nodes.iter().collect();
    // Scoped to neighbours, a node meets the ones its bootstrap peer does not relay through
    // Kademlia's walks (every 10 s at most): a few of them on a busy machine.
    until_full_views(&all, Duration::from_secs(30)).await;

    nodes[0].ok(&[
        "federate",
        "create",
        "--name",
        "edge",
        "--lease",
        "5s",
        "--require",
        "zone=a",
        "--min-members",
        "2",
    ]);
    let zone_a: BTreeSet<String> = nodes[..3].iter().map(|n| n.peer_id().to_string()).collect();
    let wait = |want: Option<BTreeSet<String>>, within: Duration| {
        let started = Instant::now();
        loop {
            if nodes.iter().all(|n| n.federation_members("edge") == want) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "federation members never became {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait(Some(zone_a.clone()), Duration::from_secs(5));
    // It outlives its lease while renewed.
    std::thread::sleep(Duration::from_secs(6));
    wait(Some(zone_a.clone()), Duration::from_secs(1));

    // Node 2 leaves and stays out.
    nodes[1].ok(&["federate", "leave", "edge"]);
    let mut rest = zone_a.clone();
    rest.remove(nodes[1].peer_id());
    wait(Some(rest), Duration::from_secs(5));
    // A zone=b node cannot join.
    assert!(
        nodes[4]
            .fails(&["federate", "join", "edge"])
            .contains("labels")
    );

    // The owner stops renewing (it leaves): gone everywhere within the 5 s lease.
    nodes[0].ok(&["federate", "leave", "edge"]);
    let took = wait(None, Duration::from_secs(8));
    println!("federation dissolved {took:?} after its owner stopped renewing (lease 5 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_swarm_keys_never_see_or_route_for_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (keygen(tmp.path(), "a.key"), keygen(tmp.path(), "b.key"));
    let keyed = |k: &str| {
        vec![
            "--swarm-key".to_string(),
            k.to_string(),
            "--advert-expiry".into(),
            "3s".into(),
        ]
    };
    let mut args = [keyed(&a), keyed(&a), keyed(&b), vec![]].into_iter();
    let nodes = mesh(4, |_| args.next().unwrap());
    until_full_views(&[&nodes[0], &nodes[1]], Duration::from_secs(10)).await;
    nodes[2].ok(&["deploy", &guest("counter")]);
    nodes[3].ok(&["deploy", &guest("kv")]);
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        nodes[0].peers().await,
        BTreeSet::from([nodes[1].peer_id().to_string()])
    );
    assert_eq!(
        nodes[1].peers().await,
        BTreeSet::from([nodes[0].peer_id().to_string()])
    );
    assert!(nodes[2].peers().await.is_empty());
    assert!(nodes[3].peers().await.is_empty());
    for (n, name) in [(0, "counter"), (1, "kv"), (2, "kv"), (3, "counter")] {
        assert_eq!(
            nodes[n]
                .h1(Method::GET, &format!("/c/{name}/x"), b"")
                .await
                .status,
            404,
            "node {} routed to {name}",
            n + 1
        );
    }
    let refused = nodes[0]
        .metric("continuum_mesh_rejected_total{reason=\"swarm_key\"}")
        .await;
    assert!(refused > 0, "refusals are counted");
    // A node of another swarm is refused by frame, and cut off once it proves no key.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = &nodes[2];
        let refused = n
            .metric("continuum_mesh_rejected_total{reason=\"swarm_key\"}")
            .await
            + n.metric("continuum_mesh_rejected_total{reason=\"keyless_peer\"}")
                .await;
        if refused > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = nodes[0].status().await;
    assert_eq!(status["swarm_key"].as_str().map(str::len), Some(8));
    assert!(nodes[3].status().await["swarm_key"].is_null());
}

/// A node whose bootstrap peer is down when it starts keeps dialling it (1 s, then twice as
/// late each time, up to 30 s) and joins once it is back, instead of staying alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_bootstrap_peer_joins_it_once_it_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bootstrap");
    let mut first = TestNode::start_in(&dir, &[]);
    let join = first.p2p();
    let listen = join.rsplit_once("/p2p/").unwrap().0.to_string();
    first.kill9();
    let second = TestNode::start(&["--join", &join]);
    // Alone for a while: the first dial failed.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert!(second.peers().await.is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bootstrap peer comes back, same identity and address.
    let first = TestNode::start_in(&dir, &["--p2p", &listen]);
    assert_eq!(first.p2p(), join);
    let waited = until_full_views(&[&first, &second], Duration::from_secs(20)).await;
    println!("joined {waited:?} after the bootstrap peer came back");
    assert!(second.log().contains("dialling the join peers again"));
}
