//! The codec of the request-response protocols: CBOR envelopes, each protocol with its own size
//! limit, read against one byte budget for the whole node.
//!
//! A size limit per message is not enough: a peer (or many fresh identities) may open dozens of
//! streams and send a large message on each, so what a node buffers is the limit times the
//! streams. Every byte read from a peer is charged to a shared [`Budget`] as it arrives, and
//! stays charged until the request is answered (or the reply is opened); past the budget the
//! stream is refused before more is read, and counted. So is a stream that stops sending
//! halfway (it would hold its share for as long as the request timeout otherwise).

use super::rpc::Envelope;
use crate::metrics::Metrics;
use futures::prelude::*;
use libp2p::StreamProtocol;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Longest a peer may leave a message half sent.
const IDLE: Duration = Duration::from_secs(10);

/// Bytes read from peers and not yet let go, against a cap.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: usize,
    /// `used`, for the metrics.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Budget {
    pub fn new(cap: usize, gauge: prometheus_client::metrics::gauge::Gauge) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            cap,
            gauge,
        })
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
        self.gauge.dec_by(n as i64);
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes charged to the budget for one message, given back when the last clone drops.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    fn new(budget: Arc<Budget>) -> Charge {
        Charge { budget, bytes: 0 }
    }

    /// Take `n` more bytes, if the budget has them.
    fn take(&mut self, n: usize) -> bool {
        let b = &self.budget;
        let got = b
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + n <= b.cap).then_some(used + n)
            })
            .is_ok();
        if got {
            self.bytes += n;
            b.gauge.inc_by(n as i64);
        }
        got
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[derive(Clone)]
pub struct Codec {
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    max: usize,
}

impl Codec {
    /// `max`: the protocol's message size limit.
    pub fn new(budget: Arc<Budget>, metrics: Arc<Metrics>, max: usize) -> Codec {
        Codec {
            budget,
            metrics,
            max,
        }
    }

    /// Read one envelope to the end of the stream, charging each chunk before it is kept.
    async fn read<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Envelope> {
        const CHUNK: usize = 64 << 10;
        let mut charge = Charge::new(self.budget.clone());
        let mut buf = Vec::new();
        loop {
            if buf.len() > self.max {
                self.metrics.mesh_reject("rpc_too_large");
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("message larger than {} bytes", self.max),
                ));
            }
            if !charge.take(CHUNK) {
                self.metrics.mesh_reject("rpc_budget");
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "the node holds as much from peers as it takes; try again",
                ));
            }
            let at = buf.len();
            buf.resize(at + CHUNK, 0);
            let Ok(n) = tokio::time::timeout(IDLE, io.read(&mut buf[at..])).await else {
                self.metrics.mesh_reject("rpc_stalled");
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing more of the message for {IDLE:?}"),
                ));
            };
            let n = n?;
            buf.truncate(at + n);
            // Charge what is kept, not the chunk's room: a peer that sends in small pieces
            // must not hold many times what it sent.
            charge.bytes -= CHUNK - n;
            self.budget.give_back(CHUNK - n);
            if n == 0 {
                break;
            }
        }
        let mut env: Envelope = ciborium::from_reader(buf.as_slice()).map_err(|e| {
            self.metrics.mesh_reject("rpc_malformed");
            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
        })?;
        drop(buf);
        env.hold(charge);
        Ok(env)
    }

    async fn write<T: AsyncWrite + Unpin + Send>(io: &mut T, env: Envelope) -> io::Result<()> {
        let mut data = Vec::with_capacity(env.len() + 64);
        ciborium::into_writer(&env, &mut data).map_err(io::Error::other)?;
        io.write_all(&data).await
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Envelope;
    type Response = Envelope;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Envelope> {
        self.read(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Envelope> {
        self.read(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Envelope,
    ) -> io::Result<()> {
        Self::write(io, req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Envelope,
    ) -> io::Result<()> {
        Self::write(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(cap: usize, max: usize) -> (Codec, Arc<Budget>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let budget = Budget::new(cap, metrics.peer_bytes.clone());
        let c = Codec::new(budget.clone(), metrics.clone(), max);
        (c, budget, metrics)
    }

    fn encoded(body: usize) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&Envelope::from_parts(vec![7; body], None), &mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn a_message_holds_its_bytes_until_dropped_and_the_budget_and_size_hold() {
        let (c, budget, metrics) = codec(1 << 20, 512 << 10);
        let env = c.read(&mut &encoded(300 << 10)[..]).await.unwrap();
        assert_eq!(env.len(), 300 << 10);
        let held = budget.used();
        assert!((300 << 10..(300 << 10) + 64).contains(&held), "{held}");
        // Two more like it do not fit beside it: the second is refused.
        let second = c.read(&mut &encoded(300 << 10)[..]).await.unwrap();
        let third = c.read(&mut &encoded(500 << 10)[..]).await.unwrap_err();
        assert_eq!(third.kind(), io::ErrorKind::OutOfMemory);
        drop((env, second));
        assert_eq!(
            budget.used(),
            0,
            "the refused read gave back what it took too"
        );
        let big = c.read(&mut &encoded(600 << 10)[..]).await.unwrap_err();
        assert_eq!(big.kind(), io::ErrorKind::InvalidData);
        let junk = c.read(&mut &[0xff; 100][..]).await.unwrap_err();
        assert_eq!(junk.kind(), io::ErrorKind::InvalidData);
        assert_eq!(budget.used(), 0);
        let text = metrics.encode();
        for reason in ["rpc_budget", "rpc_too_large", "rpc_malformed"] {
            assert!(
                text.contains(&format!("mesh_rejected_total{{reason=\"{reason}\"}} 1")),
                "{reason}: {text}"
            );
        }
    }

    #[test]
    fn a_charge_gives_its_bytes_back_when_dropped_and_the_cap_holds() {
        let b = Budget::new(100, Default::default());
        let mut one = Charge::new(b.clone());
        assert!(one.take(60));
        let mut two = Charge::new(b.clone());
        assert!(!two.take(50), "past the cap");
        assert!(two.take(40));
        assert_eq!(b.used(), 100);
        drop(one);
        assert_eq!(b.used(), 40);
        drop(two);
        assert_eq!(b.used(), 0);
    }
}
