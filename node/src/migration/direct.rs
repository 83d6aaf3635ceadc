//! A migration's direct connection: the pages (every `Part`, `Pages` and `Final`) go from the
//! source to the target over TCP and TLS 1.3, on the target's HTTP port, instead of over the
//! mesh's QUIC connection, and each end runs it on a thread of its own at background priority.
//!
//! Why: on the mesh, QUIC's packet work (a few kilobytes a packet, encrypted and acknowledged in
//! user space) ran on the mesh's threads, which also carry the requests forwarded to the
//! component; it was most of what a migration cost, and requests that woke behind it waited
//! for the kernel's next tick (BENCHMARKS.md, 2026-12-07). TCP moves the same bytes in 64 KiB
//! segments with the kernel doing the rest, and threads of its own can yield to every request.
//!
//! Trust: the target invites the source in its `Accepted`, which travels over the mesh (whose
//! connection authenticated both peers): the addresses to dial, the SHA-256 of its certificate
//! (which the source pins) and a one-time ticket of 32 random bytes, which the source sends
//! first inside TLS. Until the ticket checks out the target reads 32 bytes and nothing else;
//! afterwards the connection carries that migration's pages and nothing else, each frame (a
//! little-endian u32 length, then the message as CBOR) bounded by [`MAX_FRAME`] before it is
//! read. Any refusal closes the connection and is counted (`direct_*`). A source that cannot
//! connect sends the pages over the mesh as before.

use super::step_timeout;
use crate::context::Node;
use continuum_gossip::PeerId;
use continuum_migrate::{MigrationId, ToSource, ToTarget};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use tokio::sync::oneshot;

/// The TLS application protocol of a direct connection.
pub const ALPN: &[u8] = b"continuum-migrate/1";
/// Longest frame either way: a part of a round is about a megabyte (see `PART_PAGES`).
const MAX_FRAME: usize = 16 << 20;
/// Longest answer: the target's answers are a few words.
const MAX_ANSWER: usize = 64 << 10;
/// Time a connection has to finish TLS and show its ticket.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// Time to open a TCP connection to one of the target's addresses.
const CONNECT: Duration = Duration::from_secs(1);
/// Direct connections to this node at once, at most (two per staged migration).
const MAX_CONNECTIONS: usize = 2 * super::MAX_INCOMING;
/// Addresses in an invitation, at most.
const MAX_ADDRS: usize = 8;
/// How late the first answer comes under `target:slow-direct`: past the source's patience.
const STARVED_TEST: Duration = Duration::from_secs(3);
/// Bytes of an invitation, at most.
const MAX_INVITE: usize = 4096;

/// What the target's `Accepted` carries for the source (CBOR, in `ToSource::Accepted::direct`).
#[derive(Serialize, Deserialize)]
pub struct Invite {
    /// Where to dial.
    pub addrs: Vec<SocketAddr>,
    /// The SHA-256 of the target's certificate, which the source pins.
    #[serde(with = "serde_bytes")]
    pub cert: [u8; 32],
    /// What the source sends first, inside TLS.
    #[serde(with = "serde_bytes")]
    pub ticket: [u8; 32],
}

impl Invite {
    /// Decode an invitation (it came from the target over the mesh; bounded all the same).
    pub fn decode(bytes: &[u8]) -> Result<Invite, String> {
        if bytes.len() > MAX_INVITE {
            return Err("the invitation is too large".into());
        }
        ciborium::from_reader(bytes).map_err(|e| format!("the invitation does not decode: {e}"))
    }
}

/// The tickets this node handed out: one per migration to it, until it is used or the
/// migration ends.
#[derive(Default)]
pub struct Tickets {
    open: Mutex<HashMap<[u8; 32], (MigrationId, PeerId)>>,
    connections: Arc<AtomicUsize>,
}

impl Tickets {
    fn take(&self, ticket: &[u8; 32]) -> Option<(MigrationId, PeerId)> {
        self.open.lock().unwrap().remove(ticket)
    }

    /// Migration `id` ended: its ticket, if unused, is no good any more.
    pub(super) fn forget(&self, id: MigrationId) {
        self.open.lock().unwrap().retain(|_, (i, _)| *i != id);
    }
}

/// The messages that may travel on a direct connection: the pages, and nothing that would be
/// too large for a frame.
pub(super) fn carries(msg: &ToTarget) -> bool {
    let size = match msg {
        ToTarget::Part { pages, .. } | ToTarget::Pages { pages, .. } => pages.len(),
        ToTarget::Final {
            pages,
            globals,
            carried,
            handoff,
            ..
        } => pages.len() + globals.len() * 16 + carried.len() + handoff.len(),
        _ => return false,
    };
    size < MAX_FRAME - (64 << 10)
}

/// The target's invitation to the source of migration `id` (empty: none, as on a node whose
/// HTTP address is unknown).
pub(super) fn invite(node: &Node, id: MigrationId, from: PeerId) -> Vec<u8> {
    let Some(http) = node
        .info
        .http
        .strip_prefix("http://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        return Vec::new();
    };
    let addrs: Vec<SocketAddr> = if http.ip().is_unspecified() {
        // Listening on every interface: the addresses the mesh listens on, with the HTTP port,
        // loopback last (of use only to a source on this host).
        let mut ips: Vec<IpAddr> = node
            .mesh
            .snapshot()
            .listen
            .iter()
            .filter_map(|a| a.split('/').nth(2)?.parse().ok())
            .filter(|ip: &IpAddr| !ip.is_unspecified())
            .collect();
        ips.sort_by_key(|ip| (ip.is_loopback(), *ip));
        ips.dedup();
        ips.into_iter()
            .take(MAX_ADDRS)
            .map(|ip| SocketAddr::new(ip, http.port()))
            .collect()
    } else {
        vec![http]
    };
    // (A port nobody listens on, to see the source fall back to the mesh, under fault
    // injection.)
    let addrs = if super::faulty("target:bad-direct") {
        vec![SocketAddr::from(([127, 0, 0, 1], 1))]
    } else {
        addrs
    };
    let ticket: [u8; 32] = rand::random();
    node.migrations
        .direct
        .open
        .lock()
        .unwrap()
        .insert(ticket, (id, from));
    let mut out = Vec::new();
    let invite = Invite {
        addrs,
        cert: node.cert_sha256,
        ticket,
    };
    ciborium::into_writer(&invite, &mut out).expect("encoding into memory");
    out
}

/// Serve a TCP connection that opened with TLS (on the HTTP port) as a migration's direct
/// connection, on a thread of its own. `guard` is held as long as the connection lives.
pub fn accept(node: Arc<Node>, stream: tokio::net::TcpStream, guard: impl Send + 'static) {
    let count = node.migrations.direct.connections.clone();
    if count.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        count.fetch_sub(1, Ordering::SeqCst);
        node.metrics.reject("direct_full");
        return;
    }
    let rt = tokio::runtime::Handle::current();
    let (metrics, left) = (node.metrics.clone(), count.clone());
    let spawned = std::thread::Builder::new()
        .name("direct-in".into())
        .spawn(move || {
            crate::priority::bulk();
            let _guard = guard;
            match stream.into_std() {
                Ok(stream) => {
                    if let Err(reason) = serve(&node, &rt, stream) {
                        node.metrics.reject(reason);
                    }
                }
                Err(e) => tracing::debug!("direct connection lost: {e}"),
            }
            left.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        count.fetch_sub(1, Ordering::SeqCst);
        metrics.reject("direct_full");
    }
}

/// The target's side of one direct connection; the reason it was refused, if it was.
fn serve(
    node: &Arc<Node>,
    rt: &tokio::runtime::Handle,
    stream: TcpStream,
) -> Result<(), &'static str> {
    let handshake = |stream: &TcpStream| {
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(HANDSHAKE))?;
        stream.set_write_timeout(Some(HANDSHAKE))
    };
    handshake(&stream).map_err(|_| "direct_handshake")?;
    let conn =
        rustls::ServerConnection::new(node.direct_tls.clone()).map_err(|_| "direct_handshake")?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut ticket = [0u8; 32];
    tls.read_exact(&mut ticket)
        .map_err(|_| "direct_handshake")?;
    if tls.conn.alpn_protocol() != Some(ALPN) {
        return Err("direct_handshake");
    }
    let (id, from) = node
        .migrations
        .direct
        .take(&ticket)
        .ok_or("direct_bad_ticket")?;
    let step = step_timeout(node);
    let _ = tls.sock.set_read_timeout(Some(step));
    let _ = tls.sock.set_write_timeout(Some(step));
    tracing::debug!(id, %from, "direct connection for the pages");
    loop {
        let frame = match read_frame(&mut tls, MAX_FRAME) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(FrameError::TooLarge) => return Err("direct_too_large"),
            Err(FrameError::Lost(e)) => {
                // The source went away or gave up (a migration that failed ends so): not a
                // refusal.
                tracing::debug!(id, "direct connection lost: {e}");
                return Ok(());
            }
        };
        let msg: ToTarget = ciborium::from_reader(&frame[..]).map_err(|_| "direct_bad_frame")?;
        drop(frame);
        if msg.id() != id || !carries(&msg) {
            return Err("direct_misplaced");
        }
        if super::target::cut(node, &msg, from) {
            return Ok(());
        }
        // (A direct connection whose first answer comes late, as from a starved thread, under
        // fault injection: the source should take the mesh for the rest.)
        static SLOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if super::faulty("target:slow-direct") && !SLOW.swap(true, Ordering::Relaxed) {
            std::thread::sleep(STARVED_TEST);
        }
        let answer = rt.block_on(super::on_message(node, from, msg));
        if let Err(e) = write_frame(&mut tls, &answer) {
            tracing::debug!(id, "direct connection lost: {e}");
            return Ok(());
        }
    }
}

/// Why a frame could not be read.
enum FrameError {
    /// It announced more than the bound: refused before any of it is read.
    TooLarge,
    /// The connection ended or failed midway.
    Lost(std::io::Error),
}

/// The next frame, or `None` at the end of the stream between frames.
fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(FrameError::Lost(e)),
    }
    r.read_exact(&mut len[1..]).map_err(FrameError::Lost)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge);
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).map_err(FrameError::Lost)?;
    Ok(Some(frame))
}

fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4];
    ciborium::into_writer(msg, &mut buf).map_err(std::io::Error::other)?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_le_bytes());
    w.write_all(&buf)?;
    w.flush()
}

/// The source's end: a thread that sends each message and reads its answer.
pub(super) struct Direct {
    jobs: mpsc::Sender<(ToTarget, oneshot::Sender<Result<ToSource, String>>)>,
    pub peer: SocketAddr,
}

impl Direct {
    /// Connect as invited (blocking, bounded: [`CONNECT`] per address, [`HANDSHAKE`] for TLS).
    pub fn connect(invite: &[u8], step: Duration) -> Result<Direct, String> {
        let invite = Invite::decode(invite)?;
        let config = crate::tls::rustls_client(invite.cert, ALPN).map_err(|e| format!("{e:#}"))?;
        let mut why = String::from("no address");
        for &addr in invite.addrs.iter().take(MAX_ADDRS) {
            match dial(addr, &config, &invite.ticket, step) {
                Ok(tls) => {
                    let (jobs, rx) = mpsc::channel();
                    std::thread::Builder::new()
                        .name("direct-out".into())
                        .spawn(move || {
                            crate::priority::bulk();
                            send_all(tls, rx)
                        })
                        .map_err(|e| e.to_string())?;
                    return Ok(Direct { jobs, peer: addr });
                }
                Err(e) => why = format!("{addr}: {e}"),
            }
        }
        Err(why)
    }

    /// Send one message and wait for the answer (the socket's timeouts bound the wait).
    pub async fn exchange(&self, msg: ToTarget) -> Result<ToSource, String> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((msg, tx))
            .map_err(|_| "the direct connection is closed".to_string())?;
        rx.await
            .map_err(|_| "the direct connection is closed".to_string())?
    }
}

fn dial(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    ticket: &[u8; 32],
    step: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT).map_err(|e| e.to_string())?;
    let setup = |s: &TcpStream| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(HANDSHAKE))?;
        s.set_write_timeout(Some(HANDSHAKE))
    };
    setup(&stream).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("continuum").expect("a valid name");
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    tls.write_all(ticket).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    // The handshake is done once the server's certificate was checked; the ticket went after it.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    let _ = tls.sock.set_read_timeout(Some(step));
    let _ = tls.sock.set_write_timeout(Some(step));
    Ok(tls)
}

fn send_all(
    mut tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    jobs: mpsc::Receiver<(ToTarget, oneshot::Sender<Result<ToSource, String>>)>,
) {
    for (msg, reply) in jobs {
        let answer = write_frame(&mut tls, &msg)
            .map_err(|e| format!("sending on the direct connection: {e}"))
            .and_then(|()| match read_frame(&mut tls, MAX_ANSWER) {
                Ok(Some(frame)) => ciborium::from_reader(&frame[..])
                    .map_err(|e| format!("the target's answer does not decode: {e}")),
                Ok(None) => Err("the target closed the direct connection".into()),
                Err(FrameError::TooLarge) => Err("the target's answer is too large".into()),
                Err(FrameError::Lost(e)) => Err(format!("reading on the direct connection: {e}")),
            });
        let failed = answer.is_err();
        let _ = reply.send(answer);
        if failed {
            return;
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
}
