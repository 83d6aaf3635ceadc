//! A raw libp2p peer (not a continuum node) that speaks the node's peer protocols, for the
//! tests that play a hostile peer: requests on each request-response protocol (written on raw
//! streams, as the request-response codec frames them: one CBOR envelope each way, then the
//! end of the stream), and raw call-lane streams.

use crate::support::TestNode;
use continuum::mesh::lane;
use continuum::mesh::rpc::{self, Envelope, Protocol, Reply, Request};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use std::time::{Duration, Instant};

#[derive(libp2p::swarm::NetworkBehaviour)]
pub struct Behaviour {
    lanes: libp2p_stream::Behaviour,
}

pub struct Stranger {
    swarm: libp2p::Swarm<Behaviour>,
    pub node: libp2p::PeerId,
    /// Its identity, to sign what it claims.
    pub id: libp2p::identity::Keypair,
    /// The swarm key it tags its requests with (none: an open swarm's stranger).
    pub key: Option<continuum_gossip::SwarmKey>,
}

impl Stranger {
    pub async fn connect(node: &TestNode) -> Stranger {
        let id = libp2p::identity::Keypair::generate_ed25519();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(id.clone())
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| Behaviour {
                lanes: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .build();
        swarm
            .dial(node.p2p().parse::<libp2p::Multiaddr>().unwrap())
            .unwrap();
        let peer: libp2p::PeerId = node.peer_id().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let e = tokio::time::timeout_at(deadline.into(), swarm.select_next_some())
                .await
                .expect("never connected to the node");
            if let libp2p::swarm::SwarmEvent::ConnectionEstablished { peer_id, .. } = e
                && peer_id == peer
            {
                break;
            }
        }
        Stranger {
            swarm,
            node: peer,
            id,
            key: None,
        }
    }

    /// Run `fut` (at most 10 s) while the swarm goes on.
    pub async fn drive<T>(&mut self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                _ = self.swarm.select_next_some() => {}
                _ = &mut deadline => panic!("the node did not answer within 10 s"),
            }
        }
    }

    /// Send one rpc request on its protocol; the node's reply.
    pub async fn ask(&mut self, req: &Request) -> Reply {
        self.ask_on(Protocol::of(req), req).await
    }

    /// Send one rpc request on `protocol` (its own or another); the node's reply.
    pub async fn ask_on(&mut self, protocol: Protocol, req: &Request) -> Reply {
        let env = rpc::seal(self.key.as_ref(), req);
        let reply = self.exchange(protocol, &env).await;
        rpc::open(self.key.as_ref(), &reply).unwrap()
    }

    /// Write one envelope on a new stream of `protocol` and read the envelope that answers it.
    pub async fn exchange(&mut self, protocol: Protocol, env: &Envelope) -> Envelope {
        let mut bytes = Vec::new();
        ciborium::into_writer(env, &mut bytes).unwrap();
        let mut stream = self
            .stream(libp2p::StreamProtocol::new(protocol.name()))
            .await;
        self.send(&mut stream, &bytes).await;
        let mut reply = Vec::new();
        self.drive(async {
            stream.close().await?;
            stream.read_to_end(&mut reply).await
        })
        .await
        .expect("no reply from the node");
        ciborium::from_reader(reply.as_slice()).expect("the reply is an envelope")
    }

    /// Prove it holds the swarm key (`key`), as a node does on connecting to a closed swarm.
    pub async fn prove(&mut self) {
        let key = self.key.clone().expect("a stranger with the key");
        let proof = continuum::mesh::auth::proof(&key, &self.id.public().to_peer_id(), &self.node);
        let mut s = self.stream(continuum::mesh::auth::PROTOCOL).await;
        self.send(&mut s, &proof).await;
        self.drive(s.close()).await.unwrap();
    }

    /// Whether the node closes the connection within `within` (the swarm goes on meanwhile).
    pub async fn cut_off_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline.into(), self.swarm.select_next_some()).await {
                Err(_) => return false,
                Ok(libp2p::swarm::SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                }) if peer_id == self.node => return true,
                Ok(_) => {}
            }
        }
    }

    /// Dial the node again; whether a connection came up.
    pub async fn redial(&mut self, addr: &str) -> bool {
        self.swarm
            .dial(addr.parse::<libp2p::Multiaddr>().unwrap())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline.into(), self.swarm.select_next_some()).await {
                Err(_) => return false,
                Ok(libp2p::swarm::SwarmEvent::ConnectionEstablished { peer_id, .. })
                    if peer_id == self.node =>
                {
                    return true;
                }
                Ok(libp2p::swarm::SwarmEvent::OutgoingConnectionError { .. }) => return false,
                Ok(_) => {}
            }
        }
    }

    /// Hand the node a gossip frame directly, as its neighbours do (a sync); whether it took
    /// the message in (a refusal inside the frame is only counted, as for any neighbour).
    pub async fn gossip(&mut self, frame: Vec<u8>) -> Reply {
        self.ask(&Request::Sync(frame)).await
    }

    /// Open a stream on `protocol`, write `bytes`, close the writing side, and collect what the
    /// node writes back within `within` (nothing: it dropped the stream unread).
    pub async fn read_on(
        &mut self,
        protocol: &'static str,
        bytes: &[u8],
        within: Duration,
    ) -> Vec<u8> {
        let mut s = self.stream(libp2p::StreamProtocol::new(protocol)).await;
        let mut got = Vec::new();
        let exchange = async {
            if s.write_all(bytes).await.is_ok() {
                let _ = s.close().await;
            }
            read_to_close(&mut s, &mut got).await;
        };
        let _ = tokio::time::timeout(within, self.drive(exchange)).await;
        got
    }

    /// What the node writes on `s` until it closes it, or until `within` is over.
    pub async fn read_within(&mut self, s: &mut libp2p::Stream, within: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(within, self.drive(read_to_close(s, &mut got))).await;
        got
    }

    /// Open a call lane to the node.
    pub async fn lane(&mut self) -> libp2p::Stream {
        self.stream(lane::PROTOCOL).await
    }

    /// Open a raw stream to the node on `protocol`, to write on it what the test likes.
    pub async fn stream(&mut self, protocol: libp2p::StreamProtocol) -> libp2p::Stream {
        let mut control = self.swarm.behaviour().lanes.new_control();
        let node = self.node;
        self.drive(control.open_stream(node, protocol))
            .await
            .expect("the node takes the protocol")
    }

    /// Write raw bytes on a lane.
    pub async fn send(&mut self, lane: &mut libp2p::Stream, bytes: &[u8]) {
        self.try_send(lane, bytes)
            .await
            .expect("writing on the lane");
    }

    pub async fn try_send(
        &mut self,
        lane: &mut libp2p::Stream,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        self.drive(async {
            lane.write_all(bytes).await?;
            lane.flush().await
        })
        .await
    }

    /// Whether the node closed a lane: a frame written on it gets no answer.
    pub async fn closed(&mut self, lane: &mut libp2p::Stream, frame: &[u8]) -> bool {
        self.try_send(lane, frame).await.is_err() || self.reply(lane).await.is_none()
    }

    /// The next frame the node sends on a lane (`None`: it closed the lane).
    pub async fn reply(&mut self, lane: &mut libp2p::Stream) -> Option<(u64, Envelope)> {
        self.drive(lane::read_frame(lane, rpc::MAX_MESSAGE))
            .await
            .ok()
            .flatten()
    }

    /// Send one sealed envelope on a lane under `id`; the node's reply, under the same id.
    pub async fn ask_lane(&mut self, lane: &mut libp2p::Stream, id: u64, env: &Envelope) -> Reply {
        self.send(lane, &lane::encode(id, env)).await;
        let (got, reply) = self.reply(lane).await.expect("the node closed the lane");
        assert_eq!(got, id, "the reply carries the request's id");
        rpc::open(self.key.as_ref(), &reply).unwrap()
    }
}

/// Append what comes on `s` to `got` until the node closes it (or it fails).
async fn read_to_close(s: &mut libp2p::Stream, got: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut buf).await {
        got.extend_from_slice(&buf[..n]);
    }
}
