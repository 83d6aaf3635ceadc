//! Components that call components by name (ABI v2): across nodes, while caller and callee
//! move live, with requests in flight carried along, chains that would loop cut at once, calls
//! that pull a caller next to its data, and live updates that wait for what is in flight.

use crate::mesh::{mesh, until_full_views};
use crate::migrate::{args, host_of, migrate};
use crate::stranger::Stranger;
use crate::support::{Background, Tally, TestNode, guest, h1_load};
use http::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub fn json(r: &continuum::client::Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// Wait until `via` answers `path` with 200.
async fn until_routed(via: &TestNode, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = via.h1(Method::GET, path, b"").await;
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered through {}: {} {}",
            via.peer_id(),
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_calls_counter_across_nodes_with_every_call_answered_once_while_each_moves() {
    const MOVES: usize = 10;
    let nodes = mesh(3, args);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("relay"), "--name", "relay"]);
    c.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    until_routed(b, "/c/relay/to/counter/count").await;

    // Two clients at 200 requests/s each, entering at B: B -> relay on A -> counter on C.
    let started = Instant::now();
    let loads = [
        Background::start(b, "/c/relay/to/counter/incr"),
        Background::start(b, "/c/relay/to/counter/incr"),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ring = [a, b, c];
    let mut downtimes = Vec::new();
    for (name, start) in [("counter", 2), ("relay", 0)] {
        let mut at = start;
        for _ in 0..MOVES {
            let to = (at + 1) % 3;
            let p = tokio::task::block_in_place(|| migrate(ring[at], name, ring[to], &[]));
            downtimes.push((name, p["report"]["downtime_ms"].as_u64().unwrap()));
            at = to;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut ok = 0;
    for l in loads {
        ok += l.stop().await;
    }
    let elapsed = started.elapsed();
    let count: u64 = a
        .h1(Method::GET, "/c/counter/count", b"")
        .await
        .text()
        .parse()
        .unwrap();
    eprintln!(
        "{ok} increments through relay in {elapsed:.1?} ({:.0}/s) while counter and relay each moved {MOVES} times; downtimes {downtimes:?} ms",
        ok as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(count, ok, "an increment was lost or applied twice");
    // relay went round three times and a bit, ending on B; counter on A.
    let stats = json(&c.h1(Method::GET, "/c/relay/stats", b"").await);
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["in_flight"], 0, "{stats}");
    let r = c.h1(Method::GET, "/c/relay/stats", b"").await;
    assert_eq!(host_of(&r), b.peer_id());
    let r = c.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(host_of(&r), a.peer_id());
}

/// `n` clients that each keep one request in flight, one after the other ([`h1_load`]); stop
/// them with the flag, then read the tally.
fn waiting_clients(
    via: &TestNode,
    path: &'static str,
    n: usize,
) -> (
    Arc<AtomicBool>,
    Arc<Tally>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let tasks = (0..n)
        .map(|_| {
            tokio::spawn(h1_load(
                via.addr(),
                Method::GET,
                path,
                None,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();
    (stop, tally, tasks)
}

async fn stop_clients(
    stop: Arc<AtomicBool>,
    tally: &Tally,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> u64 {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "a request failed");
    tally.ok.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_requests_waiting_on_slow_ride_along_five_relay_migrations() {
    let nodes = mesh(3, args);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("relay"), "--name", "relay"]);
    c.ok(&["deploy", &guest("slow"), "--name", "slow"]);
    until_routed(b, "/c/relay/to/slow/after/1").await;
    let before = json(&b.h1(Method::GET, "/c/slow/stats", b"").await)["answered"]
        .as_u64()
        .unwrap();

    let (stop, tally, tasks) = waiting_clients(b, "/c/relay/to/slow/after/50", 16);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ring = [a, b, c];
    let mut moves = Vec::new();
    for i in 0..5 {
        let (from, to) = (ring[i % 3], ring[(i + 1) % 3]);
        let waiting = json(&from.h1(Method::GET, "/c/relay/stats", b"").await)["in_flight"]
            .as_u64()
            .unwrap();
        let p = tokio::task::block_in_place(|| migrate(from, "relay", to, &[]));
        moves.push((waiting, p["report"]["downtime_ms"].as_u64().unwrap()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ok = stop_clients(stop, &tally, tasks).await;
    let slow = json(&a.h1(Method::GET, "/c/slow/stats", b"").await);
    let relay = json(&a.h1(Method::GET, "/c/relay/stats", b"").await);
    let mut downtimes: Vec<u64> = moves.iter().map(|m| m.1).collect();
    downtimes.sort();
    eprintln!(
        "{ok} requests through relay to slow /after/50, 16 in flight; (requests in flight at relay, downtime ms) per move: {moves:?}; downtime p50 {} ms",
        downtimes[downtimes.len() / 2]
    );
    // Every request was answered once, by one run of slow each.
    assert_eq!(slow["answered"].as_u64().unwrap() - before, ok, "{slow}");
    assert_eq!(slow["waiting"], 0, "{slow}");
    assert_eq!(relay["in_flight"], 0, "{relay}");
    assert_eq!(relay["failed"], 0, "{relay}");
    // The moves did carry requests in flight.
    assert!(moves.iter().any(|m| m.0 > 0), "{moves:?}");
    let r = a.h1(Method::GET, "/c/relay/stats", b"").await;
    assert_eq!(host_of(&r), c.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_chain_deeper_than_the_limit_answers_508_at_once_and_the_node_serves_on() {
    let nodes = mesh(3, args);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("relay"), "--name", "r1"]);
    b.ok(&["deploy", &guest("relay"), "--name", "r2"]);
    until_routed(c, "/c/r1/to/r2/stats").await;
    // Forty deep, alternating between the two nodes, entering at a third; then forty deep
    // into the same component.
    for hop in ["/to/r2/to/r1", "/to/r1/to/r1"] {
        let path = format!("/c/r1{}/stats", hop.repeat(20));
        let began = Instant::now();
        let r = c.h1(Method::GET, &path, b"").await;
        eprintln!(
            "{} calls deep ({hop}): {} after {:.1?}",
            40,
            r.status,
            began.elapsed()
        );
        assert_eq!(r.status, 508, "{}", r.text());
        assert!(r.text().contains("deeper than 16"), "{}", r.text());
    }
    // Sixteen deep is allowed.
    let r = c
        .h1(
            Method::GET,
            &format!("/c/r1{}/stats", "/to/r2/to/r1".repeat(7)),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.h1(Method::GET, "/c/r1/stats", b"").await.status, 200);
    let refused = a
        .metric("continuum_rejected_total{reason=\"call_chain_too_deep\"}")
        .await
        + b.metric("continuum_rejected_total{reason=\"call_chain_too_deep\"}")
            .await;
    assert!(refused >= 2, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_that_comes_back_to_a_full_component_gets_508_instead_of_a_deadlock() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("small.toml");
    std::fs::write(&config, "[limits]\nqueue_depth = 4\n").unwrap();
    let node = TestNode::start(&["--config", config.to_str().unwrap()]);
    node.ok(&["deploy", &guest("relay"), "--name", "r"]);
    // Each level waits for the next: the fifth finds four of its own in flight.
    let r = node
        .h1(
            Method::GET,
            &format!("/c/r{}/stats", "/to/r".repeat(6)),
            b"",
        )
        .await;
    assert_eq!(r.status, 508, "{}", r.text());
    assert!(r.text().contains("came back to r"), "{}", r.text());
    assert_eq!(node.h1(Method::GET, "/c/r/stats", b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_traffic_brings_a_caller_next_to_the_component_it_reads() {
    let nodes = mesh(2, args);
    let (a, b) = (&nodes[0], &nodes[1]);
    until_full_views(&[a, b], Duration::from_secs(30)).await;
    b.ok(&["deploy", &guest("sensor"), "--name", "sensor"]);
    until_routed(a, "/c/sensor/reading").await;
    // filter reads sensor every 10 ms from its tick: no client requests at all.
    a.ok(&[
        "deploy",
        &guest("filter"),
        "--name",
        "filter",
        "--policy",
        "follow-traffic",
    ]);
    let began = Instant::now();
    loop {
        let r = a.h1(Method::GET, "/c/filter/stats", b"").await;
        if r.status == 200 && host_of(&r) == b.peer_id() {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "filter never moved next to sensor: {}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "filter moved next to sensor {:.1?} after it was deployed",
        began.elapsed()
    );
    let status = a.status().await;
    let decided = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["component"] == "filter");
    assert!(decided, "{status:#}");
    // It goes on reading there.
    let reads = |r: serde_json::Value| r["reads"].as_u64().unwrap();
    let first = reads(json(&b.h1(Method::GET, "/c/filter/stats", b"").await));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = json(&b.h1(Method::GET, "/c/filter/stats", b"").await);
    assert!(reads(stats.clone()) > first, "{stats}");
    // sensor is pinned: it stayed.
    let r = a.h1(Method::GET, "/c/sensor/stats", b"").await;
    assert_eq!(host_of(&r), b.peer_id());
}

/// The same module with a custom section appended: another digest, the same code, as a
/// rebuild would give.
fn rebuilt(path: &str, dir: &std::path::Path) -> String {
    let mut wasm = std::fs::read(path).unwrap();
    let (name, data) = (b"rebuild", b"2");
    wasm.push(0);
    wasm.push((1 + name.len() + data.len()) as u8);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name);
    wasm.extend_from_slice(data);
    let out = dir.join("rebuilt.wasm");
    std::fs::write(&out, wasm).unwrap();
    out.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_waits_for_the_requests_in_flight_then_takes_over() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("relay"), "--name", "relay"]);
    node.ok(&["deploy", &guest("slow"), "--name", "slow"]);
    let (stop, tally, tasks) = waiting_clients(&node, "/c/relay/to/slow/after/200", 8);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tmp = tempfile::tempdir().unwrap();
    let v2 = rebuilt(&guest("relay"), tmp.path());
    let began = Instant::now();
    let out = tokio::task::block_in_place(|| node.ok(&["update", "relay", &v2, "--json"]));
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    eprintln!(
        "update with 8 requests in flight on slow /after/200 took {:.1?}",
        began.elapsed()
    );
    assert_eq!(info["version"], "2", "{info}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = stop_clients(stop, &tally, tasks).await;
    let relay = json(&node.h1(Method::GET, "/c/relay/stats", b"").await);
    // Version 2 took over the counts: every call of either version is counted once.
    assert_eq!(relay["made"].as_u64().unwrap(), ok, "{relay}");
    assert_eq!(relay["failed"], 0, "{relay}");
    let slow = json(&node.h1(Method::GET, "/c/slow/stats", b"").await);
    assert_eq!(slow["answered"].as_u64().unwrap(), ok, "{slow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_taken_while_requests_wait_restores_without_them() {
    let node = TestNode::start(&["--call-timeout", "10s"]);
    node.ok(&["deploy", &guest("slow"), "--name", "slow"]);
    let waits: Vec<_> = (0..4)
        .map(|_| node.get_later("/c/slow/after/1500"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while json(&node.h1(Method::GET, "/c/slow/stats", b"").await)["waiting"] != 4 {
        assert!(Instant::now() < deadline, "the requests never got to slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("slow.ckpt");
    node.ok(&["checkpoint", "slow", "-o", file.to_str().unwrap()]);
    node.ok(&["restore", file.to_str().unwrap(), "--name", "slow2"]);
    // The copy has nobody waiting for it: the requests stay with the original.
    let copy = json(&node.h1(Method::GET, "/c/slow2/stats", b"").await);
    assert_eq!(
        (copy["waiting"].as_u64(), copy["answered"].as_u64()),
        (Some(0), Some(0)),
        "{copy}"
    );
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap().status, 200);
    }
    let orig = json(&node.h1(Method::GET, "/c/slow/stats", b"").await);
    assert_eq!(orig["answered"], 4, "{orig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_are_values_and_strangers_cannot_answer_for_a_call() {
    use continuum::mesh::rpc::{Reply, Request};
    let node = TestNode::start(&["--call-timeout", "3s"]);
    node.ok(&["deploy", &guest("misbehave"), "--name", "misbehave"]);
    node.ok(&["deploy", &guest("relay"), "--name", "relay"]);
    node.ok(&["deploy", &guest("slow"), "--name", "slow"]);

    // A guest that calls badly gets values, or a trap for itself alone.
    let post = |path: &'static str| node.h1(Method::POST, path, b"");
    let r = post("/c/misbehave/storm?n=300").await;
    assert_eq!(r.text(), "{\"ok\":256,\"refused\":44}", "{}", r.text());
    let r = post("/c/misbehave/storm?n=5000").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("more than 4096 times"), "{}", r.text());
    let r = post("/c/misbehave/bad-call").await;
    assert!(
        r.text().contains("invalid component name") && r.text().contains("(400)"),
        "{}",
        r.text()
    );
    let r = post("/c/misbehave/huge-call?mb=16").await;
    assert!(
        r.text().contains("larger than this node's limit"),
        "{}",
        r.text()
    );
    let began = Instant::now();
    let r = post("/c/misbehave/forever").await;
    assert_eq!(r.status, 504, "{}", r.text());
    eprintln!(
        "a request that sleeps forever: {} after {:.1?}",
        r.status,
        began.elapsed()
    );
    assert_eq!(
        node.h1(Method::GET, "/c/misbehave/ok", b"").await.status,
        200
    );
    assert!(
        node.metric(
            "continuum_component_outbound_calls_total{component=\"misbehave\",outcome=\"refused\"}"
        )
        .await
            >= 46
    );

    // A stranger forges the answer to relay's call in flight, answers for a request nobody
    // made, and sends chains no node would build.
    let waiting = node.get_later("/c/relay/to/slow/after/1000");
    let deadline = Instant::now() + Duration::from_secs(5);
    while json(&node.h1(Method::GET, "/c/slow/stats", b"").await)["waiting"] != 1 {
        assert!(Instant::now() < deadline, "the request never reached slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = Stranger::connect(&node).await;
    let forged =
        continuum_guest::abi::encode_result(&Ok(continuum_guest::Response::text(200, "forged")));
    for op in 1..=4 {
        let reply = s
            .ask(&Request::Wake {
                name: "relay".into(),
                op,
                result: forged.clone(),
                hops: 1,
            })
            .await;
        assert!(matches!(reply, Reply::Synced), "{reply:?}");
    }
    let reply = s
        .ask(&Request::Answer {
            key: 42,
            response: continuum_guest::abi::encode_response(&continuum_guest::Response::text(
                200, "x",
            )),
        })
        .await;
    assert!(matches!(reply, Reply::Synced), "{reply:?}");
    let forward = |chain: Vec<String>| Request::Forward {
        name: "relay".into(),
        hops: 1,
        entry: None,
        request: continuum_guest::abi::encode_request(&continuum_guest::Request::get("/stats")),
        deadline: Some(Duration::from_secs(3600)),
        chain,
    };
    for chain in [
        vec!["relay".to_string(); 40],
        vec!["no such name!".to_string()],
    ] {
        let reply = s.ask(&forward(chain)).await;
        assert!(
            matches!(reply, Reply::Refused { status: 400, .. }),
            "{reply:?}"
        );
    }
    // A well-formed one is served (its hour-long deadline cut to the node's own).
    let reply = s.ask(&forward(vec!["somebody".into()])).await;
    assert!(matches!(reply, Reply::Forwarded(_)), "{reply:?}");

    let r = waiting.await.unwrap().unwrap();
    assert_eq!((r.status, r.text()), (200, "waited 1000 ms\n".to_string()));
    for (reason, at_least) in [
        ("call_result_from_stranger", 1),
        ("answer_nobody_waits_for", 1),
        ("bad_call_chain", 2),
    ] {
        let n = node
            .metric(&format!("continuum_rejected_total{{reason=\"{reason}\"}}"))
            .await;
        assert!(n >= at_least, "{reason}: {n}");
    }
    assert_eq!(
        node.h1(Method::GET, "/c/relay/stats", b"").await.status,
        200
    );
}

/// A component as the ABI v1 SDK built them: `continuum_handle` answers each request within
/// its call. This one counts its requests in one byte of memory and answers the count's last
/// digit.
const V1_COUNTER: &str = r#"
(module
  (memory (export "memory") 1)
  ;; response: status 200, no headers, a 1-byte body (the digit at offset 12)
  (data (i32.const 0) "\c8\00\00\00\00\00\00\00\01\00\00\00\30")
  (func (export "continuum_abi_v1"))
  (func (export "continuum_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "continuum_handle") (param i32 i32) (result i64)
    (i32.store8 (i32.const 12)
      (i32.add (i32.const 48)
        (i32.rem_u (i32.sub (i32.load8_u (i32.const 12)) (i32.const 47))
                   (i32.const 10))))
    (i64.const 13)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abi_v1_module_still_serves_moves_and_is_called() {
    let nodes = mesh(2, args);
    let (a, b) = (&nodes[0], &nodes[1]);
    until_full_views(&[a, b], Duration::from_secs(30)).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("v1.wasm");
    std::fs::write(&file, wat::parse_str(V1_COUNTER).unwrap()).unwrap();
    a.ok(&["deploy", file.to_str().unwrap(), "--name", "old"]);
    b.ok(&["deploy", &guest("relay"), "--name", "relay"]);
    assert_eq!(a.h1(Method::GET, "/c/old/", b"").await.text(), "1");
    assert_eq!(a.h1(Method::GET, "/c/old/", b"").await.text(), "2");
    tokio::task::block_in_place(|| migrate(a, "old", b, &[]));
    let r = a.h1(Method::GET, "/c/old/", b"").await;
    assert_eq!(
        (r.text(), host_of(&r)),
        ("3".into(), b.peer_id().to_string())
    );
    // A v2 component calls it like any other.
    assert_eq!(a.h1(Method::GET, "/c/relay/to/old/", b"").await.text(), "4");
}
