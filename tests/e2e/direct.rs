//! A migration's direct connection (TCP and TLS on the HTTP port, `migration/direct.rs`) as a
//! hostile client uses it: what is not TLS, a ticket nobody was given, a ticket used twice, a
//! frame past the bound, one that does not decode, one of another migration. Each is cut off
//! and counted, and the node serves on. And a real migration takes it.

use crate::migrate::{host_of, key_holder, keyed, migrate, offer};
use crate::support::*;
use continuum::mesh::rpc::Reply;
use continuum::migration::Invite;
use continuum_migrate::{ToSource, ToTarget};
use http::Method;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` that pins `cert` and offers the direct connection's protocol.
fn connect(addr: SocketAddr, cert: [u8; 32]) -> Tls {
    let config = continuum::tls::rustls_client(cert, continuum::migration::DIRECT_ALPN).unwrap();
    let name = rustls::pki_types::ServerName::try_from("continuum").unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls =
        rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Whether the other end closed the connection within 10 s (a TLS alert may come first; a
/// read that times out means it kept the connection open).
fn closed(s: &mut impl Read) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Send `ticket`, then `bytes`; whether the node cut the connection off.
async fn refused_after(addr: SocketAddr, cert: [u8; 32], ticket: [u8; 32], bytes: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        let mut tls = connect(addr, cert);
        tls.write_all(&ticket).unwrap();
        let _ = tls.write_all(&bytes);
        let _ = tls.flush();
        closed(&mut tls)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_direct_connection_is_cut_off_counted_and_the_node_serves_on() {
    let node = TestNode::start(&keyed(&[]));
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    let addr = node.addr();
    let cert = continuum::tls::parse_pin(&node.info.cert_sha256).unwrap();

    // Not TLS past its first byte: cut off once the handshake fails.
    let garbage = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[0x16, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
            .unwrap();
        closed(&mut s)
    });
    assert!(
        garbage.await.unwrap(),
        "garbage after a TLS byte was answered"
    );
    // TLS, with a ticket nobody was given.
    assert!(refused_after(addr, cert, [7; 32], Vec::new()).await);

    // A key holder's offers, accepted: each comes with a ticket.
    let mut s = key_holder(&node).await;
    let mut invites = Vec::new();
    for id in 1..=3u64 {
        match s.ask(&offer(id, id)).await {
            Reply::Migrate(ToSource::Accepted { direct, .. }) => {
                let invite = Invite::decode(&direct).unwrap();
                assert_eq!(invite.addrs, vec![addr]);
                assert_eq!(invite.cert, cert);
                invites.push(invite.ticket);
            }
            other => panic!("offer {id}: {other:?}"),
        }
    }
    // A frame that announces a gigabyte: cut off before any of it is read.
    let huge = (1u32 << 30).to_le_bytes().to_vec();
    assert!(refused_after(addr, cert, invites[0], huge).await);
    // The same ticket again: used already.
    assert!(refused_after(addr, cert, invites[0], Vec::new()).await);
    // A frame that is not a message.
    assert!(refused_after(addr, cert, invites[1], frame(b"\xffnot cbor")).await);
    // A message of another migration than the ticket's.
    let mut other = Vec::new();
    let part = ToTarget::Part {
        id: 99,
        pages: vec![0; 16],
    };
    ciborium::into_writer(&part, &mut other).unwrap();
    assert!(refused_after(addr, cert, invites[2], frame(&other)).await);

    for (reason, n) in [
        ("direct_handshake", 1),
        ("direct_bad_ticket", 2),
        ("direct_too_large", 1),
        ("direct_bad_frame", 1),
        ("direct_misplaced", 1),
    ] {
        let series = format!("continuum_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(node.metric(&series).await, n, "{series}");
    }
    // Nothing of it reached a component, and the node serves on.
    assert_eq!(
        node.h1(Method::POST, "/c/counter/incr", b"").await.status,
        200
    );
    assert_eq!(
        node.h1(Method::GET, "/c/counter/count", b"").await.text(),
        "1"
    );
}

/// Move `kv` (8 MiB) from a node to one started with `env`; the state must arrive whole.
/// How many messages of pages the source sent directly, and over the mesh.
async fn move_kv(env: &[(&str, &str)]) -> (u64, u64) {
    let a = TestNode::start(&keyed(&[]));
    let b = TestNode::start_env(&keyed(&["--join", &a.p2p()]), env);
    crate::mesh::until_full_views(&[&a, &b], Duration::from_secs(30)).await;
    a.ok(&["deploy", &guest("kv"), "--name", "kv"]);
    let r = a.h1(Method::POST, "/c/kv/fill?mb=8", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let digest = a.h1(Method::GET, "/c/kv/digest", b"").await.text();
    tokio::task::block_in_place(|| migrate(&a, "kv", &b, &[]));
    let r = a.h1(Method::GET, "/c/kv/digest", b"").await;
    assert_eq!((r.text(), host_of(&r)), (digest, b.peer_id().to_string()));
    let sent = |path: &str| format!("continuum_migration_pages_total{{path=\"{path}\"}}");
    (
        a.metric(&sent("direct")).await,
        a.metric(&sent("mesh")).await,
    )
}

/// A real migration sends its pages over the direct connection, with the state intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_sends_its_pages_over_the_direct_connection() {
    let (direct, mesh) = move_kv(&[]).await;
    assert!(direct > 0 && mesh == 0, "direct {direct}, mesh {mesh}");
}

/// A source that cannot reach the address it was invited to sends the pages over the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_source_that_cannot_connect_directly_sends_the_pages_over_the_mesh() {
    let (direct, mesh) = move_kv(&[("CONTINUUM_FAULT", "target:bad-direct")]).await;
    assert!(direct == 0 && mesh > 0, "direct {direct}, mesh {mesh}");
}

/// A direct connection that answers a part late (as one whose thread is starved on a saturated
/// machine): the source sends the rest of the pages over the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test.sh turns it on)"
)]
async fn a_source_whose_direct_connection_stalls_sends_the_rest_over_the_mesh() {
    let (direct, mesh) = move_kv(&[("CONTINUUM_FAULT", "target:slow-direct")]).await;
    assert!(direct == 1 && mesh > 0, "direct {direct}, mesh {mesh}");
}
