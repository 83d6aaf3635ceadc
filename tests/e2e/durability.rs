//! State lives in the data directory: SIGTERM checkpoints everything, a restart brings it all
//! back, and the periodic checkpoint bounds what a kill -9 loses.

use crate::support::{TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};

/// Wait until the metric line `series` reaches `at_least`.
async fn until_metric(node: &TestNode, series: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = node.metric(series).await;
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {n}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const PERIODIC: &str = "continuum_checkpoints_total{trigger=\"periodic\"}";
const PERIODIC_FAILED: &str = "continuum_checkpoint_failures_total{trigger=\"periodic\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_full_disk_loses_nothing_once_freed_and_sigterm_says_when_it_would() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let full = tmp.path().join("disk-is-full");
    let fault = format!("disk-full:{}", full.display());
    let env = [("CONTINUUM_FAULT", fault.as_str())];
    let mut node = TestNode::start_in_env(&dir, &["--checkpoint-every", "200ms"], &env);
    node.ok(&["deploy", &guest("counter")]);
    for _ in 0..5 {
        node.h1(Method::POST, "/c/counter/incr", b"").await;
    }
    let written = node.metric(PERIODIC).await;
    until_metric(&node, PERIODIC, written + 1).await;

    // The disk fills: the next writes fail, are counted, and are tried again although the
    // component did nothing since (its state on disk is behind).
    std::fs::write(&full, b"").unwrap();
    for _ in 0..5 {
        node.h1(Method::POST, "/c/counter/incr", b"").await;
    }
    until_metric(&node, PERIODIC_FAILED, 3).await;
    // Freed: the next periodic checkpoint writes the state that waited.
    let written = node.metric(PERIODIC).await;
    std::fs::remove_file(&full).unwrap();
    until_metric(&node, PERIODIC, written + 1).await;
    node.kill9();
    let mut node = TestNode::start_in_env(&dir, &["--checkpoint-every", "1h"], &env);
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "10"
    );

    // A SIGTERM whose last checkpoint cannot be written says so: the exit status is not 0.
    node.h1(Method::POST, "/c/counter/incr", b"").await;
    std::fs::write(&full, b"").unwrap();
    let status = node.sigterm();
    assert!(!status.success(), "{status}");
    assert!(node.log().contains("was not written"), "{}", node.log());
}

/// An ABI v1 component that spins in every request until the deadline stops it.
const SPIN: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "continuum_abi_v1"))
  (func (export "continuum_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "continuum_handle") (param i32 i32) (result i64)
    (loop (br 0))
    (i64.const 0)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_stuck_in_its_requests_holds_up_no_other_components_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let args = ["--checkpoint-every", "200ms", "--call-timeout", "2s"];
    let mut node = TestNode::start_in(&dir, &args);
    let spin = tmp.path().join("spin.wasm");
    std::fs::write(&spin, wat::parse_str(SPIN).unwrap()).unwrap();
    node.ok(&["deploy", spin.to_str().unwrap(), "--name", "spin"]);
    // It ticks every 10 ms, so each round finds it changed.
    node.ok(&["deploy", &guest("sensor-filter"), "--name", "sensor"]);
    // Ten requests keep spin's thread busy for 20 s; its checkpoints wait behind them.
    let stuck: Vec<_> = (0..10).map(|_| node.get_later("/c/spin/")).collect();
    let written = node.metric(PERIODIC).await;
    // Meanwhile sensor's go on, round after round (one round every 200 ms).
    until_metric(&node, PERIODIC, written + 5).await;
    let ticks = |r: continuum::client::Reply| {
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["ticks"]
            .as_u64()
            .unwrap()
    };
    let before = ticks(node.h1(Method::GET, "/c/sensor/stats", b"").await);
    node.kill9();
    drop(stuck);
    let node = TestNode::start_in(&dir, &["--checkpoint-every", "1h"]);
    let after = ticks(node.h1(Method::GET, "/c/sensor/stats", b"").await);
    // What kill -9 lost is at most a round and a bit of ticks, not everything since spin stuck.
    assert!(
        after + 50 >= before,
        "restored at {after} ticks, had {before} before kill -9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_restart_brings_every_component_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // No periodic checkpoint: what survives here is the shutdown checkpoint alone.
    let mut node = TestNode::start_in(&dir, &["--checkpoint-every", "0s"]);
    node.ok(&["deploy", &guest("counter")]);
    node.ok(&["deploy", &guest("kv")]);
    node.ok(&["deploy", &guest("sensor-filter"), "--name", "sensor"]);
    for _ in 0..7 {
        node.h1(Method::POST, "/c/counter/incr", b"").await;
    }
    node.h1(Method::PUT, "/c/kv/k/a", b"alpha").await;
    node.h1(Method::POST, "/c/kv/fill?mb=8", b"").await;
    node.h1(Method::DELETE, "/c/kv/k/a", b"").await;
    node.h1(Method::PUT, "/c/kv/k/b", b"beta").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let digest = node.h1(Method::GET, "/c/kv/digest", b"").await.text();
    let stats: serde_json::Value =
        serde_json::from_slice(&node.h1(Method::GET, "/c/sensor/stats", b"").await.body).unwrap();
    assert!(
        stats["ticks"].as_u64().unwrap() > 5,
        "sensor-filter is ticking: {stats}"
    );

    let status = node.sigterm();
    assert!(
        status.success(),
        "SIGTERM should end the node with exit code 0, got {status}"
    );
    assert!(node.log().contains("final checkpoint"));

    let node = TestNode::start_in(&dir, &[]);
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "7"
    );
    assert_eq!(
        node.h1(Method::GET, "/c/kv/digest", b"").await.text(),
        digest
    );
    assert_eq!(node.h1(Method::GET, "/c/kv/k/b", b"").await.text(), "beta");
    assert_eq!(node.h1(Method::GET, "/c/kv/k/a", b"").await.status, 404);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after: serde_json::Value =
        serde_json::from_slice(&node.h1(Method::GET, "/c/sensor/stats", b"").await.body).unwrap();
    assert!(
        after["ticks"].as_u64() > stats["ticks"].as_u64(),
        "the restored sensor-filter goes on counting from its saved state: {stats} then {after}"
    );
    let names: Vec<String> =
        serde_json::from_str::<Vec<serde_json::Value>>(&node.ok(&["ls", "--json"]))
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(names, ["counter", "kv", "sensor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_checkpoint_bounds_what_kill9_loses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut node = TestNode::start_in(&dir, &["--checkpoint-every", "500ms"]);
    node.ok(&["deploy", &guest("counter")]);
    for _ in 0..5 {
        node.h1(Method::POST, "/c/counter/incr", b"").await;
    }
    // Two periods: the state above is on disk by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        node.metric("continuum_checkpoints_total{trigger=\"periodic\"}")
            .await
            >= 1
    );
    node.kill9();

    let node = TestNode::start_in(&dir, &[]);
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_on_disk_costs_only_its_own_component() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut node = TestNode::start_in(&dir, &[]);
    node.ok(&["deploy", &guest("counter")]);
    node.ok(&["deploy", &guest("kv")]);
    node.h1(Method::POST, "/c/counter/incr", b"").await;
    assert!(node.sigterm().success());

    let snap = dir.join("components/kv.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(&snap, &bytes).unwrap();

    let node = TestNode::start_in(&dir, &[]);
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "1"
    );
    assert_eq!(node.h1(Method::GET, "/c/kv/digest", b"").await.status, 404);
    assert!(
        node.log().contains("could not bring back"),
        "{}",
        node.log()
    );
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"bad_snapshot\"}")
            .await,
        1
    );
    // The damaged file stays for the operator to look at; nothing overwrote it.
    assert_eq!(std::fs::read(&snap).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_a_large_component_taken_under_writes_is_one_consistent_state() {
    // 32 MiB is checkpointed a megabyte at a time between requests (writes tracked by the
    // kernel and copied again at the end): the snapshot must still be the state at one point.
    // A client overwrites key `a` (stored before the fill, so low in memory: copied first)
    // and adds a key, step after step; the snapshot must hold a first part of the steps, `a`
    // as that last step left it, and the very state a fresh copy given those steps has.
    let node = TestNode::start(&["--checkpoint-every", "0s"]);
    node.ok(&["deploy", &guest("kv")]);
    node.ok(&["deploy", &guest("kv"), "--name", "reference"]);
    for kv in ["kv", "reference"] {
        assert_eq!(
            node.h1(Method::PUT, &format!("/c/{kv}/k/a"), b"start")
                .await
                .status,
            201
        );
        assert_eq!(
            node.h1(Method::POST, &format!("/c/{kv}/fill?mb=32"), b"")
                .await
                .status,
            200
        );
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (node.addr(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for key in ["a".to_string(), format!("w{n:06}")] {
                    let body = n.to_string().into();
                    let r = continuum::client::h1(
                        addr,
                        Method::PUT,
                        &format!("/c/kv/k/{key}"),
                        body,
                        None,
                    )
                    .await
                    .unwrap();
                    assert!(r.status < 300, "{}", r.text());
                }
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kv.ckpt");
    tokio::task::block_in_place(|| node.ok(&["checkpoint", "kv", "-o", file.to_str().unwrap()]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let steps = writer.await.unwrap();
    node.ok(&["restore", file.to_str().unwrap(), "--name", "copy"]);
    let mut held = 0;
    while held < steps
        && node
            .h1(Method::GET, &format!("/c/copy/k/w{held:06}"), b"")
            .await
            .status
            == 200
    {
        held += 1;
    }
    for i in held..steps {
        let r = node
            .h1(Method::GET, &format!("/c/copy/k/w{i:06}"), b"")
            .await;
        assert_eq!(
            r.status, 404,
            "step {i} is in the snapshot but step {held} is not"
        );
    }
    let a: u32 = node
        .h1(Method::GET, "/c/copy/k/a", b"")
        .await
        .text()
        .parse()
        .unwrap();
    eprintln!("{steps} steps, the checkpoint holds the first {held} (a = {a})");
    assert!(held > 0 && held < steps, "{held} of {steps}");
    assert!(
        a + 1 == held || a == held,
        "a = {a} after {held} steps: a torn snapshot"
    );
    for i in 0..held {
        node.h1(Method::PUT, "/c/reference/k/a", i.to_string().as_bytes())
            .await;
        node.h1(
            Method::PUT,
            &format!("/c/reference/k/w{i:06}"),
            i.to_string().as_bytes(),
        )
        .await;
    }
    if a == held {
        node.h1(Method::PUT, "/c/reference/k/a", a.to_string().as_bytes())
            .await;
    }
    assert_eq!(
        node.h1(Method::GET, "/c/copy/digest", b"").await.text(),
        node.h1(Method::GET, "/c/reference/digest", b"")
            .await
            .text()
    );
}
