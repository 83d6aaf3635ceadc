//! Bad input gets a clear one-line error, is counted, and costs the node nothing: its other
//! components go on answering.

use crate::support::{TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};

async fn counter_still_answers(node: &TestNode) {
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!(
        r.status, 200,
        "the node stopped serving its other components"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_and_snapshots_are_refused_with_reasons() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter")]);
    node.ok(&["deploy", &guest("kv")]);
    node.h1(Method::POST, "/c/kv/fill?mb=1", b"").await;
    let dir = node.dir.parent().unwrap().to_path_buf();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };

    // A file that is not Wasm.
    let err = node.fails(&[
        "deploy",
        &file("notes.wasm", b"these are my notes"),
        "--name",
        "notes",
    ]);
    assert!(err.contains("not a WebAssembly module"), "{err}");
    counter_still_answers(&node).await;

    // Wasm, but without the continuum ABI.
    let bare =
        wat::parse_str(r#"(module (memory 1) (export "memory" (memory 0)) (func (export "run")))"#)
            .unwrap();
    let err = node.fails(&["deploy", &file("bare.wasm", &bare), "--name", "bare"]);
    assert!(err.contains("lacks the continuum ABI export"), "{err}");
    // Wasm that wants a host function nobody provides.
    let greedy = wat::parse_str(
        r#"(module (import "env" "launch_missiles" (func)) (memory 1) (export "memory" (memory 0))
           (func (export "continuum_abi_v1")) (func (export "continuum_alloc") (param i32) (result i32) i32.const 0)
           (func (export "continuum_handle") (param i32 i32) (result i64) i64.const 0))"#,
    )
    .unwrap();
    let err = node.fails(&["deploy", &file("greedy.wasm", &greedy), "--name", "greedy"]);
    assert!(
        err.contains("imports") && err.contains("launch_missiles"),
        "{err}"
    );
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"bad_module\"}")
            .await,
        3
    );
    counter_still_answers(&node).await;

    // Snapshots: good, truncated, one flipped byte, of another module.
    let good = dir.join("kv.ckpt");
    node.ok(&["checkpoint", "kv", "-o", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();
    let err = node.fails(&[
        "restore",
        &file("cut.ckpt", &bytes[..bytes.len() / 2]),
        "--name",
        "kv2",
    ]);
    assert!(err.contains("truncated"), "{err}");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x40;
    let err = node.fails(&["restore", &file("flip.ckpt", &flipped), "--name", "kv2"]);
    assert!(
        err.contains("snapshot refused") && err.contains("corrupt"),
        "{err}"
    );
    let err = node.fails(&["restore", good.to_str().unwrap(), "--name", "counter"]);
    assert!(err.contains("is of module"), "{err}");
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"bad_snapshot\"}")
            .await,
        3
    );
    // Nothing was lost: the counter still has its state, and the good snapshot still restores.
    counter_still_answers(&node).await;
    node.ok(&["restore", good.to_str().unwrap(), "--name", "kv2"]);
    assert_eq!(
        node.h1(Method::GET, "/c/kv2/digest", b"").await.text(),
        node.h1(Method::GET, "/c/kv/digest", b"").await.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_and_bad_requests_are_contained() {
    let node = TestNode::start(&["--memory-cap", "64MiB", "--max-body", "1MiB"]);
    node.ok(&["deploy", &guest("counter")]);
    node.ok(&["deploy", &guest("misbehave")]);

    // A request that loops forever: stopped by the deadline (1 s by default) while the other
    // components answer meanwhile.
    let spin = {
        let addr = node.addr();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = continuum::client::h1(
                addr,
                Method::POST,
                "/c/misbehave/spin",
                Default::default(),
                None,
            )
            .await
            .unwrap();
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = Instant::now();
    for _ in 0..10 {
        counter_still_answers(&node).await;
    }
    let other_calls_took = during.elapsed();
    let (r, took) = spin.await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("deadline"), "{}", r.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "stopped after {took:?}"
    );
    assert!(
        other_calls_took < took,
        "other components waited for the runaway one"
    );
    // The stopped component itself is still usable.
    assert_eq!(
        node.h1(Method::GET, "/c/misbehave/ok", b"").await.status,
        200
    );

    // Growing memory past the cap.
    let r = node.h1(Method::POST, "/c/misbehave/hog?mb=100", b"").await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("memory past the node's cap of 64 MiB"),
        "{}",
        r.text()
    );
    // A panic.
    let r = node.h1(Method::POST, "/c/misbehave/panic", b"").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("trapped"), "{}", r.text());
    assert_eq!(
        node.h1(Method::GET, "/c/misbehave/ok", b"").await.status,
        200
    );
    assert_eq!(
        node.metric(
            "continuum_component_calls_total{component=\"misbehave\",outcome=\"deadline\"}"
        )
        .await,
        1
    );
    assert_eq!(
        node.metric(
            "continuum_component_calls_total{component=\"misbehave\",outcome=\"memory_cap\"}"
        )
        .await,
        1
    );

    // A body over the limit, over both protocols.
    let big = vec![7u8; 2 << 20];
    let r = node.h1(Method::POST, "/c/counter/incr", &big).await;
    assert_eq!(r.status, 413);
    let mut h3 = node.h3().await;
    let r = h3
        .request(Method::POST, "/c/counter/incr", big.into(), None)
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"body_too_large\"}")
            .await,
        2
    );

    // An unknown component, over both protocols.
    let r = h3
        .request(Method::GET, "/c/nobody/x", Default::default(), None)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(
        node.fails(&["call", "nobody", "/x", "--h1"])
            .contains("404")
    );
    h3.close().await;

    // The control API without the token.
    let r = node.h1(Method::GET, "/v1/components", b"").await;
    assert_eq!(r.status, 401);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["ls", "--node", &node.info.http, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"));
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"unauthorized\"}")
            .await,
        2
    );

    // A malformed HTTP/3 request: a DATA frame where the HEADERS frame must come first.
    malformed_h3(&node).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while node
        .metric("continuum_rejected_total{reason=\"malformed_h3\"}")
        .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "malformed HTTP/3 request was not counted:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counter_still_answers(&node).await;
    let mut h3 = node.h3().await;
    assert_eq!(
        h3.request(Method::GET, "/c/counter/count", Default::default(), None)
            .await
            .unwrap()
            .status,
        200
    );
    h3.close().await;
}

/// Speak QUIC with ALPN h3, but send garbage on a request stream.
async fn malformed_h3(node: &TestNode) {
    let pin = continuum::tls::parse_pin(&node.info.cert_sha256).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(continuum::tls::client_config(pin).unwrap());
    let conn = endpoint
        .connect(node.addr(), "continuum")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Frame type 0x00 (DATA), length 5, then 5 bytes.
    send.write_all(&[0x00, 0x05, b'h', b'e', b'l', b'l', b'o'])
        .await
        .unwrap();
    send.finish().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(1024)).await;
    conn.close(0u32.into(), b"");
    endpoint.wait_idle().await;
}

/// Four memories (a v1 component): each request grows each by 100 MiB and answers how many
/// grew. Under a 256 MiB cap, two of them.
const FOUR_MEMORIES: &str = r#"
(module
  (memory (export "memory") 1)
  (memory $m1 0)
  (memory $m2 0)
  (memory $m3 0)
  (data (i32.const 0) "\c8\00\00\00\00\00\00\00\01\00\00\00\30")
  (func (export "continuum_abi_v1"))
  (func (export "continuum_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "continuum_handle") (param i32 i32) (result i64)
    (local $n i32)
    (if (i32.ne (memory.grow $m1 (i32.const 1600)) (i32.const -1))
      (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
    (if (i32.ne (memory.grow $m2 (i32.const 1600)) (i32.const -1))
      (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
    (if (i32.ne (memory.grow $m3 (i32.const 1600)) (i32.const -1))
      (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
    (if (i32.ne (memory.grow 0 (i32.const 1600)) (i32.const -1))
      (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
    (i32.store8 (i32.const 12) (i32.add (i32.const 48) (local.get $n)))
    (i64.const 13)))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_cap_holds_over_all_memories_and_the_snapshot_restores() {
    let node = TestNode::start(&["--memory-cap", "256MiB"]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("four.wasm");
    std::fs::write(&file, wat::parse_str(FOUR_MEMORIES).unwrap()).unwrap();
    node.ok(&["deploy", file.to_str().unwrap(), "--name", "four"]);
    let r = node.h1(Method::GET, "/c/four/", b"").await;
    assert_eq!((r.status, r.text()), (200, "2".to_string()));
    // Nothing more grows, and what it holds stays below the cap, so its checkpoint restores.
    assert_eq!(node.h1(Method::GET, "/c/four/", b"").await.text(), "0");
    let ckpt = tmp.path().join("four.ckpt");
    node.ok(&["checkpoint", "four", "-o", ckpt.to_str().unwrap()]);
    node.ok(&["restore", ckpt.to_str().unwrap(), "--name", "again"]);
    assert_eq!(node.h1(Method::GET, "/c/again/", b"").await.text(), "0");
}

/// The store of modules holds what the node needs, not everything it was sent: a refused
/// module leaves no file, a removed component's module goes once nothing else runs it, and
/// what a saved component needs stays through a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_store_keeps_what_the_node_needs_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut node = TestNode::start_in(&data, &[]);
    let stored = || {
        let mut v: Vec<String> = std::fs::read_dir(data.join("modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    node.ok(&["deploy", &guest("counter")]);
    let counter = stored();
    assert_eq!(
        counter.len(),
        2,
        "the module and its compiled code: {counter:?}"
    );
    node.ok(&["deploy", &guest("kv")]);
    node.ok(&["deploy", &guest("kv"), "--name", "kv2"]);
    assert_eq!(stored().len(), 4);
    // Refused after compiling: nothing of it is kept.
    let greedy = dir.path().join("greedy.wasm");
    std::fs::write(
        &greedy,
        wat::parse_str(
            r#"(module (import "env" "launch_missiles" (func)) (memory 1) (export "memory" (memory 0))
               (func (export "continuum_abi_v1")) (func (export "continuum_alloc") (param i32) (result i32) i32.const 0)
               (func (export "continuum_handle") (param i32 i32) (result i64) i64.const 0))"#,
        )
        .unwrap(),
    )
    .unwrap();
    node.fails(&["deploy", greedy.to_str().unwrap()]);
    assert_eq!(stored().len(), 4);
    // kv2 still runs kv's module; once both are gone, so is the module.
    node.ok(&["rm", "kv"]);
    assert_eq!(stored().len(), 4);
    node.ok(&["rm", "kv2"]);
    assert_eq!(stored(), counter);
    node.h1(Method::POST, "/c/counter/incr", b"").await;
    assert!(node.sigterm().success());
    let node = TestNode::start_in(&data, &[]);
    assert_eq!(stored(), counter);
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "1"
    );
}
