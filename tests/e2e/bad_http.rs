//! The HTTP side as a hostile client uses it: control requests without a token that announce a
//! gigabyte, idle sockets past the descriptor limit, bodies that stall, and an upload larger
//! than what used to be cut short (a 100 MiB checkpoint restored through the API).

use crate::support::{TestNode, guest};
use http::Method;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read what the node answers on a raw connection until it closes it or `within` passes.
async fn answer(conn: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_request_without_a_token_is_refused_before_its_body_is_read() {
    let node = TestNode::start(&[]);
    // Twelve clients announce a gigabyte each and send none of it: each gets its 401 at once.
    let mut conns = Vec::new();
    for _ in 0..12 {
        let mut c = TcpStream::connect(node.addr()).await.unwrap();
        c.write_all(
            b"PUT /v1/components/x HTTP/1.1\r\nhost: n\r\ncontent-length: 1073741824\r\n\r\n",
        )
        .await
        .unwrap();
        conns.push(c);
    }
    for c in &mut conns {
        let head = answer(c, Duration::from_secs(10)).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head:?}");
    }
    assert!(
        node.metric("continuum_rejected_total{reason=\"unauthorized\"}")
            .await
            >= 12
    );
    // The scheme is case-insensitive (RFC 9110), the token is not.
    let token = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    let token = token.trim();
    for (auth, status) in [
        (format!("bearer {token}"), 200),
        (format!("BEARER  {token}"), 200),
        (format!("Bearer {}", token.to_uppercase()), 401),
        ("Basic dXNlcjpwYXNz".to_string(), 401),
    ] {
        let mut c = TcpStream::connect(node.addr()).await.unwrap();
        c.write_all(
            format!("GET /v1/components HTTP/1.1\r\nhost: n\r\nauthorization: {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let head = answer(&mut c, Duration::from_secs(10)).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{auth}: {head:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_past_the_descriptor_limit_lock_nobody_out() {
    // 1,024 descriptors: the node holds at most 704 connections, and 1,100 idle sockets arrive.
    let node = TestNode::start_with_fd_limit(&["--call-timeout", "20s"], 1024);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    node.ok(&["deploy", &guest("slow"), "--name", "slow"]);
    // A request in flight is never what makes room.
    let waiting = node.get_later("/c/slow/after/4000");
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::calls::json(&node.h1(Method::GET, "/c/slow/stats", b"").await)["waiting"] != 1 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(TcpStream::connect(node.addr()).await.unwrap());
    }
    // Clients still get in, at once: an idle socket makes room for each.
    for i in 1..=20 {
        let r = node.h1(Method::POST, "/c/counter/incr", b"").await;
        assert_eq!((r.status, r.text()), (200, i.to_string()));
    }
    // The node still opens files: a checkpoint writes its durable copy.
    let file = node.dir.with_file_name("counter.ckpt");
    node.ok(&["checkpoint", "counter", "-o", file.to_str().unwrap()]);
    let evicted = node
        .metric("continuum_rejected_total{reason=\"http_idle_connection_closed\"}")
        .await;
    assert!(evicted >= 390, "{evicted} idle connections closed");
    let open = node.metric("continuum_http_connections").await;
    assert!(open <= 704, "{open} connections open");
    let r = waiting.await.unwrap().unwrap();
    assert_eq!((r.status, r.text()), (200, "waited 4000 ms\n".to_string()));
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_and_the_node_serves_on() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let mut c = TcpStream::connect(node.addr()).await.unwrap();
    c.write_all(
        b"POST /c/counter/incr HTTP/1.1\r\nhost: n\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let began = Instant::now();
    let head = answer(&mut c, Duration::from_secs(30)).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head:?}");
    eprintln!("a stalled body: 408 after {:.1?}", began.elapsed());
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"body_timeout\"}")
            .await,
        1
    );
    let r = node.h1(Method::POST, "/c/counter/incr", b"").await;
    assert_eq!((r.status, r.text()), (200, "1".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_checkpoint_restores_through_the_api_whole() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("churn"), "--name", "big"]);
    assert_eq!(
        node.h1(Method::POST, "/c/big/fill?mb=100", b"")
            .await
            .status,
        200
    );
    let digest = node.h1(Method::GET, "/c/big/digest", b"").await.text();
    let file = node.dir.with_file_name("big.ckpt");
    let file = file.to_str().unwrap();
    node.ok(&["checkpoint", "big", "-o", file]);
    let size = std::fs::metadata(file).unwrap().len();
    assert!(size > 100 << 20, "the checkpoint is {size} bytes");
    // Uploaded whole (it used to be cut at 64 MiB and taken as complete), restored exactly.
    node.ok(&["restore", file, "--name", "copy"]);
    assert_eq!(
        node.h1(Method::GET, "/c/copy/digest", b"").await.text(),
        digest
    );
    // It came through a file, not the node's memory, and the file is gone.
    assert!(
        node.metric("continuum_uploads_spooled_bytes_total").await >= size,
        "the upload was held in memory"
    );
    let uploads = node.dir.join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    // Where it cannot be written (here the directory is a file), an upload is refused once it
    // is in, saying why, counted, and nothing else changes.
    std::fs::remove_dir(&uploads).unwrap();
    std::fs::write(&uploads, b"in the way").unwrap();
    let token = std::fs::read_to_string(node.dir.join("admin.token")).unwrap();
    let r = continuum::client::h1(
        node.addr(),
        Method::POST,
        "/v1/restore?name=third",
        vec![7u8; 20 << 20].into(),
        Some(token.trim()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("could not be written"), "{}", r.text());
    assert_eq!(
        node.metric("continuum_rejected_total{reason=\"upload_not_spooled\"}")
            .await,
        1
    );
    assert_eq!(
        node.h1(Method::GET, "/c/copy/digest", b"").await.text(),
        digest
    );
    assert!(!node.ok(&["ls"]).contains("third"));
}
