//! One node: deploy, call over both protocols, checkpoint to a file, lose the node, restore on a
//! fresh one.

use crate::support::{TestNode, guest};
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_survives_kill9_through_a_checkpoint_file() {
    let mut node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);

    for i in 1..=100 {
        let r = node.h1(Method::POST, "/c/counter/incr", b"").await;
        assert_eq!((r.status, r.text()), (200, i.to_string()));
        assert_eq!(
            r.header("x-continuum-host"),
            Some(node.info.peer_id.as_str())
        );
        let alt_svc = format!("h3=\":{}\"; ma=86400", node.addr().port());
        assert_eq!(r.header("alt-svc"), Some(alt_svc.as_str()));
    }
    for i in 101..=200 {
        // `continuum call` speaks HTTP/3 unless told --h1.
        assert_eq!(
            node.ok(&["call", "counter", "/incr", "-X", "POST"]),
            i.to_string()
        );
    }
    assert_eq!(node.ok(&["call", "counter", "/count", "--h1"]), "200");

    let file = node.dir.with_file_name("counter.ckpt");
    let file = file.to_str().unwrap();
    node.ok(&["checkpoint", "counter", "-o", file]);
    node.kill9();

    let fresh = TestNode::start(&[]);
    assert_ne!(fresh.info.peer_id, node.info.peer_id);
    assert!(fresh.fails(&["call", "counter", "/count"]).contains("404"));
    fresh.ok(&["restore", file, "--name", "counter"]);
    assert_eq!(fresh.ok(&["call", "counter", "/count"]), "200");
    assert_eq!(fresh.ok(&["call", "counter", "/incr", "-X", "POST"]), "201");

    let ls: serde_json::Value = serde_json::from_str(&fresh.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "counter");
    assert_eq!(ls[0]["host"], fresh.info.peer_id.as_str());
    assert_eq!(ls[0]["epoch"], 1);
    let status: serde_json::Value = serde_json::from_str(&fresh.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["peer_id"], fresh.info.peer_id.as_str());
    assert_eq!(status["components"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_and_http1_share_one_state() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("kv")]);
    let mut h3 = node.h3().await;
    let put = h3
        .request(Method::PUT, "/c/kv/k/greeting", "hello".into(), None)
        .await
        .unwrap();
    assert_eq!(put.status, 201);
    assert_eq!(
        put.header("x-continuum-host"),
        Some(node.info.peer_id.as_str())
    );
    let get = node.h1(Method::GET, "/c/kv/k/greeting", b"").await;
    assert_eq!((get.status, get.text().as_str()), (200, "hello"));
    let digest_h1 = node.h1(Method::GET, "/c/kv/digest", b"").await.text();
    let digest_h3 = h3
        .request(Method::GET, "/c/kv/digest", Default::default(), None)
        .await
        .unwrap()
        .text();
    assert_eq!(digest_h1, digest_h3);
    h3.close().await;
}
