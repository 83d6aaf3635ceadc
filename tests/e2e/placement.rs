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
            .get(continuum::http::HOST_HEADER)
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
    let nodes = mesh(3, |_| vec!["--advert-expiry".into(), "3s".into()]);
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
