//! Live migration between real nodes: the state arrives exact, the route follows the
//! component, and under load no request fails, is lost or is applied twice.

use crate::mesh::{mesh, until_full_views};
use crate::support::{Background, RATE, Tally, TestNode, guest, keygen, swarm_key};
use bytes::Bytes;
use http::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A node of a closed swarm (peers deploy and migrate only there).
pub(crate) fn args(_: usize) -> Vec<String> {
    keyed(&[]).into_iter().map(String::from).collect()
}

/// The arguments of a node of the test swarm, and `extra`.
pub(crate) fn keyed<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--swarm-key", swarm_key(), "--advert-expiry", "3s"];
    v.extend(extra);
    v
}

/// `continuum migrate NAME --to PEER --json` against the node that hosts it.
pub(crate) fn migrate(
    host: &TestNode,
    name: &str,
    to: &TestNode,
    extra: &[&str],
) -> serde_json::Value {
    let mut a = vec!["migrate", name, "--to", to.peer_id(), "--json"];
    a.extend(extra);
    let p: serde_json::Value = serde_json::from_str(&host.ok(&a)).unwrap();
    assert_eq!(p["step"], "done", "{p:#}");
    p
}

pub(crate) fn host_of(r: &continuum::client::Reply) -> String {
    r.headers[continuum::runtime::router::HOST_HEADER]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_kv_and_sensor_filter_move_with_exact_state() {
    let nodes = mesh(3, args);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    until_full_views(&[a, b, c], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    a.ok(&["deploy", &guest("kv"), "--name", "kv"]);
    a.ok(&["deploy", &guest("sensor-filter"), "--name", "sensor"]);

    // counter: A -> B, read through C.
    for _ in 0..25 {
        assert_eq!(a.h1(Method::POST, "/c/counter/incr", b"").await.status, 200);
    }
    let p = migrate(a, "counter", b, &[]);
    assert_eq!(p["report"]["epoch"], 2, "{p:#}");
    assert_eq!(p["report"]["module_sent"], true, "{p:#}");
    let r = c.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(r.text(), "25");
    assert_eq!(host_of(&r), b.peer_id());
    // The old host forwards what still reaches it.
    let r = a.h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!((r.status, host_of(&r)), (200, b.peer_id().to_string()));

    // kv with 64 MiB: A -> B with pre-copy, then B -> C stop-and-copy.
    let r = a.h1(Method::POST, "/c/kv/fill?mb=64", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.h1(Method::PUT, "/c/kv/k/hello", b"world").await.status,
        201
    );
    let digest = a.h1(Method::GET, "/c/kv/digest", b"").await.text();
    let p = migrate(a, "kv", b, &[]);
    let report = &p["report"];
    assert!(
        report["precopy_bytes"].as_u64().unwrap() >= 64 << 20,
        "{p:#}"
    );
    eprintln!(
        "kv 64 MiB pre-copy A->B: {} rounds, downtime {} ms, total {} ms",
        report["rounds"], report["downtime_ms"], report["total_ms"]
    );
    assert_eq!(c.h1(Method::GET, "/c/kv/digest", b"").await.text(), digest);
    let p = migrate(b, "kv", c, &["--stop-and-copy"]);
    let report = &p["report"];
    assert_eq!(report["rounds"], 0, "{p:#}");
    assert!(report["final_bytes"].as_u64().unwrap() >= 64 << 20, "{p:#}");
    eprintln!(
        "kv 64 MiB stop-and-copy B->C: downtime {} ms, total {} ms",
        report["downtime_ms"], report["total_ms"]
    );
    let r = a.h1(Method::GET, "/c/kv/digest", b"").await;
    assert_eq!((r.text(), host_of(&r)), (digest, c.peer_id().to_string()));
    assert_eq!(
        a.h1(Method::GET, "/c/kv/k/hello", b"").await.text(),
        "world"
    );

    // sensor-filter: ticks go on from where they were, with a short gap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = |r: continuum::client::Reply| -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    };
    a.h1(Method::POST, "/c/sensor/reset-gap", b"").await;
    let before = stats(a.h1(Method::GET, "/c/sensor/stats", b"").await);
    migrate(a, "sensor", c, &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = stats(c.h1(Method::GET, "/c/sensor/stats", b"").await);
    let (t0, t1) = (
        before["ticks"].as_u64().unwrap(),
        after["ticks"].as_u64().unwrap(),
    );
    assert!(t1 > t0, "ticks went back: {before} -> {after}");
    eprintln!(
        "sensor-filter across a migration: largest gap between ticks {} ms (period {} ms)",
        after["max_gap_ms"], after["period_ms"]
    );
    assert!(after["max_gap_ms"].as_u64().unwrap() < 1000, "{after}");

    // Every node agrees on where each one is now.
    for n in [a, b, c] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ls: Vec<serde_json::Value> =
                serde_json::from_str(&n.ok(&["ls", "--json"])).unwrap();
            let at = |name: &str| {
                ls.iter().find(|x| x["name"] == name).map(|x| {
                    (
                        x["host"].as_str().unwrap().to_string(),
                        x["epoch"].as_u64().unwrap(),
                    )
                })
            };
            let want = [
                ("counter", b.peer_id(), 2),
                ("kv", c.peer_id(), 3),
                ("sensor", c.peer_id(), 2),
            ];
            if want
                .iter()
                .all(|(name, host, epoch)| at(name) == Some((host.to_string(), *epoch)))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{} sees {ls:#?}", n.peer_id());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        a.metric("continuum_migrations_total{role=\"source\",outcome=\"ok\"}")
            .await
            >= 3
    );
    assert!(
        c.metric("continuum_migrations_total{role=\"target\",outcome=\"ok\"}")
            .await
            >= 2
    );
    // A name is one component in the whole mesh.
    let err = a.fails(&["deploy", &guest("counter"), "--name", "counter"]);
    assert!(err.contains("names are unique in the mesh"), "{err}");
}

/// The same over one HTTP/3 connection.
async fn h3_load(node: &TestNode, rate: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut h3 = node.h3().await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let r = h3
            .request(Method::POST, "/c/counter/incr", Bytes::new(), None)
            .await
            .expect("the HTTP/3 connection broke");
        if r.status == 200 {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("h3: {} {}", r.status, r.text());
        }
    }
    h3.close().await;
}

/// How long the load runs; each client sends [`RATE`] requests/s, 400 in all.
const LOAD: Duration = Duration::from_secs(30);

/// Deploy `counter` on `entry`, wait until `via` routes to it, then run `work` (given the
/// start time) while two clients send increments for [`LOAD`]: over a kept-alive HTTP/1.1
/// connection to `entry`, and over HTTP/3 through `via`. Checks that no request failed and
/// that the count is exactly the increments that succeeded; returns what `work` returned and
/// the increments (HTTP/1.1, HTTP/3).
pub(crate) async fn under_load<T, F: std::future::Future<Output = T>>(
    entry: &TestNode,
    via: &TestNode,
    work: impl FnOnce(Instant) -> F,
) -> (T, u64, u64) {
    entry.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while via.h1(Method::GET, "/c/counter/count", b"").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the second node never learnt of counter"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stop, t3) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let started = Instant::now();
    let h1 = Background::start(entry, "/c/counter/incr");
    let h3 = h3_load(via, RATE, stop.clone(), t3.clone());
    let work = async {
        let out = work(started).await;
        tokio::time::sleep(LOAD.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        out
    };
    let (out, ()) = tokio::join!(work, h3);
    let ok1 = h1.stop().await;
    let elapsed = started.elapsed();
    let (ok3, failed) = (
        t3.ok.load(Ordering::Relaxed),
        t3.failed.load(Ordering::Relaxed),
    );
    let count: u64 = entry
        .h1(Method::GET, "/c/counter/count", b"")
        .await
        .text()
        .parse()
        .unwrap();
    eprintln!(
        "under load: {ok1} h1 + {ok3} h3 increments in {elapsed:.1?} ({:.0} requests/s), {failed} failed, final count {count}",
        (ok1 + ok3) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(failed, 0);
    assert_eq!(count, ok1 + ok3, "a request was lost or applied twice");
    (out, ok1, ok3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_lost_or_applied_twice_while_counter_moves_ten_times_under_load() {
    const MIGRATIONS: usize = 10;
    let nodes = mesh(4, args);
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    until_full_views(&[a, b, c, d], Duration::from_secs(30)).await;
    let (downtimes, _, _) = under_load(a, d, |started| async move {
        let ring = [a, b, c];
        let mut downtimes = Vec::new();
        for i in 0..MIGRATIONS {
            // Spread the moves over the load, the first after a second of it.
            let due = Duration::from_secs(1) + LOAD.mul_f64(i as f64 / MIGRATIONS as f64);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            let (from, to) = (ring[i % 3], ring[(i + 1) % 3]);
            let p = tokio::task::block_in_place(|| migrate(from, "counter", to, &[]));
            downtimes.push(p["report"]["downtime_ms"].as_u64().unwrap());
        }
        downtimes
    })
    .await;
    eprintln!(
        "{MIGRATIONS} migrations A -> B -> C -> A ... under that load, downtimes {downtimes:?} ms"
    );
    // It made the whole round three times and a bit: A -> B -> C -> A ... -> B.
    let r = c.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(host_of(&r), b.peer_id());
}

/// Deploy counter on `a`, put load on it, try to move it to `b` (set up to die at some step),
/// and check that nothing was lost and it still serves from `a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_target_killed_at_any_step_leaves_the_component_serving_at_the_source() {
    for point in [
        "target:offer",
        "target:pages",
        "target:final",
        "target:ready",
    ] {
        // A dead QUIC peer is noticed by the step timeout (a kill -9 sends no close).
        let a = TestNode::start(&keyed(&["--migration-timeout", "2s"]));
        let b = TestNode::start_env(&keyed(&["--join", &a.p2p()]), &[("CONTINUUM_FAULT", point)]);
        until_full_views(&[&a, &b], Duration::from_secs(30)).await;
        a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
        let load = Background::start(&a, "/c/counter/incr");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let err =
            tokio::task::block_in_place(|| a.fails(&["migrate", "counter", "--to", b.peer_id()]));
        assert!(err.contains("aborted"), "{point}: {err}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ok = load.stop().await;
        let r = a.h1(Method::GET, "/c/counter/count", b"").await;
        eprintln!("target killed at {point}: {err}; {ok} requests served meanwhile");
        assert_eq!(
            (r.text(), host_of(&r)),
            (ok.to_string(), a.peer_id().to_string()),
            "{point}"
        );
        assert!(
            a.metric("continuum_migrations_total{role=\"source\",outcome=\"aborted\"}")
                .await
                >= 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_source_killed_after_ready_leaves_the_target_serving() {
    let common = keyed(&["--migration-timeout", "2s"]);
    let a = TestNode::start_env(&common, &[("CONTINUUM_FAULT", "source:switch")]);
    let join = a.p2p();
    let joined = || {
        let mut v = common.to_vec();
        v.extend(["--join", &join]);
        TestNode::start(&v)
    };
    let (b, c) = (joined(), joined());
    until_full_views(&[&a, &b, &c], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    for _ in 0..7 {
        a.h1(Method::POST, "/c/counter/incr", b"").await;
    }
    // The source dies the moment the target is ready: the CLI loses its node.
    let _ = tokio::task::block_in_place(|| a.cli(&["migrate", "counter", "--to", b.peer_id()]));
    let started = Instant::now();
    loop {
        let r = c.h1(Method::GET, "/c/counter/count", b"").await;
        if r.status == 200 && host_of(&r) == b.peer_id() && r.text() == "7" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the target never took over: {} {}\nB:\n{}\nC:\n{}",
            r.status,
            r.text(),
            b.log(),
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "target took over {:.1?} after the source died",
        started.elapsed()
    );
    assert!(b.log().contains("taking over"), "{}", b.log());

    // The source comes back with the copy it had on disk, at the old epoch: it sees the
    // newer one and drops its own, and requests through it reach the target.
    let mut again = common.to_vec();
    let join_b = b.p2p();
    again.extend(["--join", &join_b]);
    let back = TestNode::start_in(&a.dir, &again);
    let started = Instant::now();
    loop {
        let r = back.h1(Method::GET, "/c/counter/count", b"").await;
        if r.status == 200 && host_of(&r) == b.peer_id() {
            assert_eq!(r.text(), "7");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the stale copy stayed: {} {}\n{}",
            r.status,
            r.text(),
            back.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it drops its stale copy.
    let started = Instant::now();
    while !back.log().contains("dropping this stale one") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            back.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_update_under_load_carries_the_state_and_a_broken_upgrade_rolls_back() {
    let nodes = mesh(2, args);
    let (a, d) = (&nodes[0], &nodes[1]);
    until_full_views(&[a, d], Duration::from_secs(30)).await;
    let (err, _, _) = under_load(a, d, |_| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let out =
            tokio::task::block_in_place(|| a.ok(&["update", "counter", &guest("counter-v2")]));
        assert!(out.contains("version 2"), "{out}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| a.fails(&["update", "counter", &guest("counter-v2-broken")]))
    })
    .await;
    eprintln!("live update under that load; the broken one said: {err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(err.contains("trap"), "{err}");
    let v = a.h1(Method::GET, "/c/counter/version", b"").await.text();
    assert_eq!(v, "2 (from layout 1)");
    assert_eq!(a.metric("continuum_updates_total{outcome=\"ok\"}").await, 1);
    assert_eq!(
        a.metric("continuum_updates_total{outcome=\"rolled_back\"}")
            .await,
        1
    );
    // The new version is what comes back after a restart.
    let ls = a.ok(&["ls", "--json"]);
    assert!(ls.contains("\"version\": \"2\""), "{ls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_component_only_moves_among_members_and_strangers_cannot_push() {
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (
        keygen(tmp.path(), "ours.key"),
        keygen(tmp.path(), "theirs.key"),
    );
    // Nodes 1-3 in zone a, node 4 in zone b, all with our key; node 5 a stranger with another.
    let nodes = mesh(5, |i| {
        let (zone, k) = match i {
            1..=3 => ("zone=a", &ours),
            4 => ("zone=b", &ours),
            _ => ("zone=a", &theirs),
        };
        ["--label", zone, "--swarm-key", k, "--advert-expiry", "3s"]
            .map(String::from)
            .to_vec()
    });
    let (a, d, stranger) = (&nodes[0], &nodes[3], &nodes[4]);
    let ours: Vec<&TestNode> = nodes[..4].iter().collect();
    until_full_views(&ours, Duration::from_secs(30)).await;
    a.ok(&[
        "federate",
        "create",
        "--name",
        "edge",
        "--lease",
        "30s",
        "--require",
        "zone=a",
        "--min-members",
        "2",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&a.ok(&["federate", "ls", "--json"])).unwrap();
        if list
            .iter()
            .any(|f| f["name"] == "edge" && f["members"].as_array().unwrap().len() == 3)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge never had 3 members: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.ok(&[
        "deploy",
        &guest("counter"),
        "--name",
        "counter",
        "--federation",
        "edge",
    ]);
    for _ in 0..3 {
        a.h1(Method::POST, "/c/counter/incr", b"").await;
    }

    // Outside the federation: refused by the target, the component stays.
    let err = a.fails(&["migrate", "counter", "--to", d.peer_id()]);
    assert!(err.contains("not a member of federation edge"), "{err}");
    assert_eq!(a.h1(Method::GET, "/c/counter/count", b"").await.text(), "3");
    // `auto` only ever picks a member.
    let p: serde_json::Value =
        serde_json::from_str(&a.ok(&["migrate", "counter", "--to", "auto", "--json"])).unwrap();
    let to = p["to"].as_str().unwrap();
    assert!(
        [nodes[1].peer_id(), nodes[2].peer_id()].contains(&to),
        "auto picked {to}"
    );
    let r = d.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!((r.text(), host_of(&r)), ("3".to_string(), to.to_string()));
    // In a closed swarm any node takes the command and relays it to the host: move it back to
    // A from D, which hosts nothing, and follow the progress from there.
    let p = migrate(d, "counter", a, &[]);
    assert_eq!(p["from"], to, "{p:#}");
    let r = d.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        (r.text(), host_of(&r)),
        ("3".to_string(), a.peer_id().to_string())
    );

    // A node outside the federation cannot deploy into it.
    let err = d.fails(&[
        "deploy",
        &guest("kv"),
        "--name",
        "kv",
        "--federation",
        "edge",
        "--on",
        a.peer_id(),
    ]);
    assert!(err.contains("not a member of federation edge"), "{err}");
    // Nor a node without our swarm key push a migration or a deployment.
    stranger.ok(&["deploy", &guest("counter"), "--name", "intruder"]);
    let err = stranger.fails(&["migrate", "intruder", "--to", a.peer_id()]);
    assert!(err.contains("aborted"), "{err}");
    let err = stranger.fails(&["deploy", &guest("kv"), "--on", a.peer_id()]);
    assert!(!err.is_empty());
    assert!(a.ok(&["ls"]).contains("counter") && !a.ok(&["ls"]).contains("intruder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_state_whose_digest_or_hand_off_does_not_match_is_refused() {
    for (fault, says) in [
        ("source:bad-digest", "does not match the source's digest"),
        ("source:bad-handoff", "hand-off refused"),
    ] {
        let a = TestNode::start_env(&keyed(&[]), &[("CONTINUUM_FAULT", fault)]);
        let b = TestNode::start(&keyed(&["--join", &a.p2p()]));
        until_full_views(&[&a, &b], Duration::from_secs(30)).await;
        a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
        a.h1(Method::POST, "/c/counter/incr", b"").await;
        let err = a.fails(&["migrate", "counter", "--to", b.peer_id()]);
        assert!(err.contains(says), "{fault}: {err}");
        let r = a.h1(Method::GET, "/c/counter/count", b"").await;
        assert_eq!(
            (r.text(), host_of(&r)),
            ("1".to_string(), a.peer_id().to_string())
        );
        assert_eq!(
            b.metric("continuum_rejected_total{reason=\"bad_migration\"}")
                .await,
            1
        );
        let ls: Vec<serde_json::Value> = serde_json::from_str(&b.ok(&["ls", "--json"])).unwrap();
        assert!(ls.iter().all(|c| c["host"] != b.peer_id()), "{ls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_connection_cut_mid_transfer_aborts_then_a_retry_moves_it() {
    let a = TestNode::start(&keyed(&["--migration-timeout", "3s"]));
    let b = TestNode::start_env(
        &keyed(&["--join", &a.p2p()]),
        &[("CONTINUUM_FAULT", "target:cut")],
    );
    until_full_views(&[&a, &b], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let load = Background::start(&a, "/c/counter/incr");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = tokio::task::block_in_place(|| a.fails(&["migrate", "counter", "--to", b.peer_id()]));
    assert!(err.contains("aborted"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The cut was once: the next attempt goes through.
    let p = tokio::task::block_in_place(|| migrate(&a, "counter", &b, &[]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = load.stop().await;
    let r = a.h1(Method::GET, "/c/counter/count", b"").await;
    eprintln!(
        "cut mid-transfer: {err}; then moved in {} ms; {ok} requests, none failed",
        p["report"]["total_ms"]
    );
    assert_eq!(
        (r.text(), host_of(&r)),
        (ok.to_string(), b.peer_id().to_string())
    );
}

/// A raw peer that holds the swarm key and proved it to `node`.
pub(crate) async fn key_holder(node: &TestNode) -> crate::stranger::Stranger {
    let mut s = crate::stranger::Stranger::connect(node).await;
    let key = std::fs::read_to_string(swarm_key()).unwrap();
    s.key = Some(continuum_gossip::SwarmKey::parse(&key).unwrap());
    s.prove().await;
    s
}

/// Migration `id` offering component `incoming{i}` (64 KiB, a module the node lacks).
pub(crate) fn offer(id: u64, i: u64) -> continuum::mesh::rpc::Request {
    continuum::mesh::rpc::Request::Migrate(continuum_migrate::ToTarget::Offer(
        continuum_migrate::Offer {
            id,
            name: format!("incoming{i}"),
            version: "1".into(),
            module_digest: [i as u8; 32],
            memory_bytes: 1 << 16,
            epoch: 0,
            federation: None,
            require: Default::default(),
            policy: "pinned".into(),
        },
    ))
}

/// A key holder offering more migrations at once than a node takes: past the fourth, each is
/// refused with why and counted, nothing is staged for it, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_past_the_incoming_bound_are_refused_and_counted() {
    use continuum::mesh::rpc::Reply;
    use continuum_migrate::ToSource;
    let node = TestNode::start(&keyed(&[]));
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut s = key_holder(&node).await;
    let max = continuum::migration::MAX_INCOMING as u64;
    for i in 0..max + 2 {
        match s.ask(&offer(100 + i, i)).await {
            Reply::Migrate(ToSource::Accepted { need_module, .. }) if i < max => {
                assert!(need_module)
            }
            Reply::Migrate(ToSource::Rejected { reason, .. }) if i >= max => {
                assert!(reason.contains("the most it takes at once"), "{reason}")
            }
            other => panic!("offer {i}: {other:?}"),
        }
    }
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"migration_refused\"}")
            .await,
        2
    );
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
}

/// A freeze that lasts (the target holds the last step back): the source holds at most
/// `--queue-depth` requests for the new host and answers the rest 503 at once, instead of
/// buffering whatever clients send; the held ones are answered once the move is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_long_freeze_holds_queue_depth_requests_and_refuses_the_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let fault = format!("target:hold-final:{}", hold.display());
    let a = TestNode::start(&keyed(&["--queue-depth", "16"]));
    let b = TestNode::start_env(
        &keyed(&["--join", &a.p2p()]),
        &[("CONTINUUM_FAULT", &fault)],
    );
    until_full_views(&[&a, &b], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    assert_eq!(a.h1(Method::POST, "/c/counter/incr", b"").await.status, 200);
    let to = b.peer_id().to_string();
    let mut cmd = a.command(&["migrate", "counter", "--to", &to]);
    let mover = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    // Frozen once a request stops being answered at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let r = a.get_later("/c/counter/count");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !r.is_finished() {
            break r;
        }
        assert!(Instant::now() < deadline, "the component never froze");
    };
    let later: Vec<_> = (0..40).map(|_| a.get_later("/c/counter/count")).collect();
    // 15 more are held with the first; the other 25 are refused while the freeze lasts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while later.iter().filter(|r| r.is_finished()).count() < 25 {
        assert!(Instant::now() < deadline, "refusals did not come at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!mover.is_finished() && !first.is_finished());
    std::fs::remove_file(&hold).unwrap();
    let out = mover.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for r in std::iter::once(first).chain(later) {
        *codes.entry(r.await.unwrap().unwrap().status).or_default() += 1;
    }
    assert_eq!(codes, [(200, 16), (503, 25)].into(), "{codes:?}");
    let r = a.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!((r.text(), host_of(&r)), ("1".to_string(), to));
}

/// The hand-off that brought a component to a node is kept with its state: after the new host
/// restarts it still proves the move, so an old copy that comes back at the source (restored
/// from a backup, say) is known to be stale there and goes, rather than serving beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_survives_a_restart_and_an_old_copy_at_the_source_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let bdir = tmp.path().join("b");
    let a = TestNode::start(&keyed(&[]));
    let join = a.p2p();
    let b_args = keyed(&["--join", &join]);
    let mut b = TestNode::start_in(&bdir, &b_args);
    until_full_views(&[&a, &b], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    for _ in 0..3 {
        assert_eq!(a.h1(Method::POST, "/c/counter/incr", b"").await.status, 200);
    }
    let backup = tmp.path().join("before.ckpt");
    a.ok(&["checkpoint", "counter", "-o", backup.to_str().unwrap()]);
    migrate(&a, "counter", &b, &[]);
    assert!(bdir.join("components/counter.handoff").exists());
    assert!(b.sigterm().success());
    let b = TestNode::start_in(&bdir, &b_args);
    until_full_views(&[&a, &b], Duration::from_secs(30)).await;
    let r = a.h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), b.log());
    a.ok(&["restore", backup.to_str().unwrap(), "--name", "counter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a
        .metric("continuum_rejected_total{reason=\"stale_copy\"}")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the old copy stayed at the source:\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a.dir.join("components/counter.snap").exists());
    let r = a.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        (r.text(), host_of(&r)),
        ("4".to_string(), b.peer_id().to_string())
    );
}
