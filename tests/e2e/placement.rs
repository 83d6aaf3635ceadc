//! Placement policies on real nodes: a component with `--policy follow-traffic` moves to where
//! its requests enter the mesh, with no request lost; a pinned one never moves.

use crate::mesh::{mesh, until_full_views};
use crate::support::{Background, TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};

fn host(n: &TestNode, name: &str) -> impl std::future::Future<Output = (u16, String)> {
    let target = format!("/c/{name}/count");
    async move {
        let r = n.h1(Method::GET, &target, b"").await;
        let host = r
            .headers
            .get(continuum::runtime::router::HOST_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (r.status, host)
    }
}

/// Wait (at most `within`) until requests through `via` for `name` are served by `want`.
async fn until_hosted(via: &TestNode, name: &str, want: &TestNode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if host(via, name).await == (200, want.peer_id().to_string()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{name} not on {} within {within:?}; it is on {:?}",
            want.peer_id(),
            host(via, name).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_traffic_moves_the_component_where_its_requests_enter_and_pinned_stays() {
    let nodes = mesh(3, crate::migrate::args);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    a.ok(&[
        "deploy",
        &guest("counter"),
        "--name",
        "counter",
        "--policy",
        "follow-traffic",
    ]);
    a.ok(&["deploy", &guest("counter"), "--name", "still"]);
    until_hosted(c, "counter", a, Duration::from_secs(10)).await;
    until_hosted(c, "still", a, Duration::from_secs(10)).await;

    // The client sends into node 3: the component comes to it.
    let (load, pinned) = (
        Background::start(c, "/c/counter/incr"),
        Background::start(c, "/c/still/incr"),
    );
    let took = until_hosted(c, "counter", c, Duration::from_secs(10)).await;
    eprintln!("follow-traffic: on node 3 {took:.1?} after its client started sending there");
    let mut sent = load.stop().await;

    // The client moves to node 2: the component follows.
    let load = Background::start(b, "/c/counter/incr");
    let took = until_hosted(b, "counter", b, Duration::from_secs(20)).await;
    eprintln!("follow-traffic: on node 2 {took:.1?} after its client moved there");
    sent += load.stop().await;
    let still = pinned.stop().await;

    let count = a.h1(Method::GET, "/c/counter/count", b"").await.text();
    assert_eq!(
        count,
        sent.to_string(),
        "a request was lost or applied twice"
    );
    let count = a.h1(Method::GET, "/c/still/count", b"").await.text();
    assert_eq!(count, still.to_string());
    assert_eq!(
        host(b, "still").await.1,
        a.peer_id(),
        "a pinned component moved"
    );

    // Each move was decided on the host of the time, with its reason, shown by `status`.
    for (n, to) in [(a, c), (c, b)] {
        let status: serde_json::Value = serde_json::from_str(&n.ok(&["status", "--json"])).unwrap();
        let d = status["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["component"] == "counter" && d["to"] == to.peer_id())
            .unwrap_or_else(|| panic!("no decision to move to {}: {status:#}", to.peer_id()));
        assert_eq!(d["policy"], "follow-traffic");
        assert!(d["reason"].as_str().unwrap().contains("entered at"), "{d}");
    }
}

/// A component's share of a core on `n`, as `ls` reports it.
fn cpu(n: &TestNode, name: &str) -> f64 {
    let ls: Vec<serde_json::Value> = serde_json::from_str(&n.ok(&["ls", "--json"])).unwrap();
    ls.iter()
        .find(|c| c["name"] == name && c["host"] == n.peer_id())
        .and_then(|c| c["cpu"].as_f64())
        .unwrap_or(0.0)
}

fn host_of(via: &TestNode, name: &str) -> String {
    let ls: Vec<serde_json::Value> = serde_json::from_str(&via.ok(&["ls", "--json"])).unwrap();
    ls.iter()
        .find(|c| c["name"] == name)
        .map(|c| c["host"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `balance` on real nodes: each node has a CPU budget, so its load is what its components
/// cost it (not the load average of the machine they share). Two busy components overload
/// node 1; it sheds the busiest to a peer with room, one is enough, and nothing bounces back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_sheds_a_busy_component_to_a_peer_with_room_and_settles() {
    // What one client's stream of work costs here, in cores: the budget is set so that one
    // such component loads a node to ~0.55 (fits on a peer, under 0.85) and two to ~1.1.
    const WORK: &str = "/c/hot1/work?n=300000";
    let share = {
        let probe = TestNode::start(&[]);
        probe.ok(&["deploy", &guest("churn"), "--name", "hot1"]);
        let work = Background::start(&probe, WORK);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let share = cpu(&probe, "hot1");
        work.stop().await;
        share
    };
    assert!(share > 0.0, "no CPU share measured");
    let budget = format!("{:.4}", share / 0.55);
    eprintln!("balance: one client's work costs {share:.3} cores; budget {budget} cores a node");
    let nodes = mesh(3, |_| {
        let mut a = crate::migrate::args(0);
        a.extend(["--cpu-budget".into(), budget.clone()]);
        a
    });
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    for name in ["hot1", "hot2"] {
        a.ok(&[
            "deploy",
            &guest("churn"),
            "--name",
            name,
            "--policy",
            "balance",
        ]);
    }
    until_all_hosted(a, &["hot1", "hot2"], a, Duration::from_secs(10)).await;
    let loads = (
        Background::start(a, WORK),
        Background::start(a, "/c/hot2/work?n=300000"),
    );
    // One of them leaves node 1 for a peer with room.
    let started = Instant::now();
    let moved = loop {
        let off: Vec<&str> = ["hot1", "hot2"]
            .into_iter()
            .filter(|n| host_of(a, n) != a.peer_id())
            .collect();
        if !off.is_empty() {
            break off;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing moved off the overloaded node; cpu {:.3} and {:.3}\n{}",
            cpu(a, "hot1"),
            cpu(a, "hot2"),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "balance: {moved:?} left node 1 {:.1?} after the load began",
        started.elapsed()
    );
    assert_eq!(moved.len(), 1, "one move is enough");
    let (gone, stayed) = if moved[0] == "hot1" {
        ("hot1", "hot2")
    } else {
        ("hot2", "hot1")
    };
    let there = host_of(a, gone);
    assert!(there == b.peer_id() || there == c.peer_id());
    // It settles: for the next 10 s nothing moves again.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(host_of(a, gone), there, "{gone} moved on");
    assert_eq!(host_of(a, stayed), a.peer_id(), "{stayed} moved too");
    let (one, two) = (loads.0.stop().await, loads.1.stop().await);
    assert!(one > 0 && two > 0);
    let status: serde_json::Value = serde_json::from_str(&a.ok(&["status", "--json"])).unwrap();
    let d = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["component"] == gone)
        .unwrap_or_else(|| panic!("no decision for {gone}: {status:#}"));
    assert_eq!(d["policy"], "balance");
    assert!(d["reason"].as_str().unwrap().contains("load here"), "{d}");
}

/// Wait until every one of `names` is served through `via` by `want`.
async fn until_all_hosted(via: &TestNode, names: &[&str], want: &TestNode, within: Duration) {
    for name in names {
        let started = Instant::now();
        while host_of(via, name) != want.peer_id() {
            assert!(
                started.elapsed() < within,
                "{name} not on {}",
                want.peer_id()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every node carries what it is as labels of its own (`arch`, `engine`), in its advert, its
/// status and its metrics, so `--require arch=...` places by architecture; an operator cannot
/// set them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_advertise_their_architecture_and_engine_and_placement_can_require_them() {
    let arch = std::env::consts::ARCH;
    let nodes = mesh(2, crate::migrate::args);
    until_full_views(&[&nodes[0], &nodes[1]], Duration::from_secs(20)).await;
    let status = nodes[1].status().await;
    assert_eq!(status["engine"], "cranelift");
    let peer = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == nodes[0].peer_id())
        .unwrap()
        .clone();
    assert_eq!(peer["labels"]["arch"], arch, "{peer}");
    assert_eq!(peer["labels"]["engine"], "cranelift", "{peer}");
    let metrics = nodes[0].h1(Method::GET, "/metrics", b"").await.text();
    assert!(
        metrics.contains(&format!(
            "continuum_build_info{{version=\"{}\",arch=\"{arch}\",engine=\"cranelift\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    // Here, on this architecture: taken. On one no node has: refused, saying why.
    let counter = guest("counter");
    nodes[0].ok(&[
        "deploy",
        &counter,
        "--name",
        "here",
        "--require",
        &format!("arch={arch}"),
    ]);
    let err = nodes[0].fails(&[
        "deploy",
        &counter,
        "--name",
        "there",
        "--require",
        "arch=riscv64",
    ]);
    assert!(err.contains("arch=riscv64"), "{err}");
    let err = nodes[0].fails(&[
        "deploy",
        &counter,
        "--name",
        "there",
        "--on",
        nodes[1].peer_id(),
        "--require",
        "arch=riscv64",
    ]);
    assert!(err.contains("arch=riscv64"), "{err}");
    // The node's own labels are not the operator's to set.
    let err = crate::support::refused_start(&["--label", "arch=sparc"]);
    assert!(err.contains("the label arch is the node's own"), "{err}");
}
