//! Membership scoped to neighbours: each node hears a few peers only, and finds the components
//! hosted beyond them through their hosts' records in Kademlia, following a move.

use crate::mesh::mesh;
use crate::migrate::{args, host_of, migrate};
use crate::support::{Background, TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};

const NODES: usize = 7;
const NEIGHBOURS: usize = 2;

fn scoped(i: usize) -> Vec<String> {
    let mut a = args(i);
    a.extend(["--max-neighbours", &NEIGHBOURS.to_string()].map(String::from));
    a
}

/// Until every node's read of the counter is answered by `host`; how long it took.
async fn until_all_route_to(nodes: &[TestNode], host: &TestNode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            let r = n.h1(Method::GET, "/c/counter/count", b"").await;
            if r.status != 200 || host_of(&r) != host.peer_id() {
                all = false;
                break;
            }
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not every node routes to {} within {within:?}",
            host.peer_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_to_neighbours_a_component_beyond_them_is_found_by_name_and_followed_after_a_move() {
    let nodes = mesh(NODES, scoped);
    let first = &nodes[0];
    // Everyone joined node 1, which keeps two of them as neighbours.
    let started = Instant::now();
    loop {
        let mut degrees = Vec::new();
        for n in &nodes {
            degrees.push(n.peers().await.len());
        }
        if degrees.iter().all(|&d| (1..=NEIGHBOURS).contains(&d)) {
            println!(
                "neighbours per node: {degrees:?} after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "neighbours per node: {degrees:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut far = Vec::new();
    for n in &nodes[1..] {
        if !n.peers().await.contains(first.peer_id()) {
            far.push(n);
        }
    }
    // Node 1 keeps two (a third may still be in its last seconds of suspicion).
    assert!(
        far.len() >= NODES - 2 - NEIGHBOURS,
        "only {} nodes are not node 1's neighbours",
        far.len()
    );
    let took = until_all_route_to(&nodes, first, Duration::from_secs(20)).await;
    println!(
        "{} of {} nodes never hear node 1; all route to it {took:?} after the deploy",
        far.len(),
        NODES - 1
    );

    // Moved to a node none of the far ones may have heard of, under load from the farthest.
    let entry = far.last().unwrap();
    let target = nodes
        .iter()
        .rev()
        .find(|n| n.peer_id() != first.peer_id() && n.peer_id() != entry.peer_id())
        .unwrap();
    let load = Background::start(entry, "/c/counter/incr");
    // The move starts once the client's increments are counted.
    let started = Instant::now();
    while first.h1(Method::GET, "/c/counter/count", b"").await.text() == "0" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no increment counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    migrate(first, "counter", target, &[]);
    let took = until_all_route_to(&nodes, target, Duration::from_secs(20)).await;
    println!("every node routes to the new host {took:?} after the move");
    let ok = load.stop().await;
    assert!(ok > 0);
    let r = target.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(r.text(), ok.to_string(), "every increment counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_to_neighbours_a_federation_recruits_its_members_beyond_them() {
    // Node 1 (zone=near) proposes a federation of zone=far, which the six others carry; it
    // keeps two neighbours, so the others hear of it only through the table.
    let nodes = mesh(NODES, |i| {
        let mut a = scoped(i);
        let zone = if i == 1 { "zone=near" } else { "zone=far" };
        a.extend(["--label", zone].map(String::from));
        a
    });
    let owner = &nodes[0];
    let started = Instant::now();
    while futures::future::join_all(nodes.iter().map(|n| n.peers()))
        .await
        .iter()
        .any(|p| p.is_empty())
    {
        assert!(started.elapsed() < Duration::from_secs(30), "a node alone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    owner.ok(&[
        "federate",
        "create",
        "--name",
        "far",
        "--lease",
        "6s",
        "--require",
        "zone=far",
        "--min-members",
        "6",
    ]);
    let far: std::collections::BTreeSet<String> =
        nodes[1..].iter().map(|n| n.peer_id().to_string()).collect();
    let started = Instant::now();
    loop {
        let everyone = nodes[1..].iter().all(|n| {
            n.federation_members("far")
                .is_some_and(|m| m.contains(n.peer_id()))
        });
        if everyone && owner.federation_members("far").as_ref() == Some(&far) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the owner lists {:?}, want {far:?}",
            owner.federation_members("far")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let neighbours = owner.peers().await;
    let beyond = far.iter().filter(|p| !neighbours.contains(*p)).count();
    println!(
        "all {} members in {:?}, {beyond} of them beyond the owner's neighbours",
        far.len(),
        started.elapsed()
    );
    // Node 1 keeps two (a third may still be in its last seconds of suspicion).
    assert!(beyond >= NODES - 2 - NEIGHBOURS, "{beyond} beyond");

    // Renewed straight between the owner and its far members, past the lease.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(owner.federation_members("far").as_ref(), Some(&far));
    // The owner leaves (stops renewing): gone at every member within the lease.
    owner.ok(&["federate", "leave", "far"]);
    let started = Instant::now();
    while nodes[1..]
        .iter()
        .any(|n| n.federation_members("far").is_some())
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never dissolved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
