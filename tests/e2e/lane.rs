//! The call lane (`/continuum/call/1`) as a hostile peer sees it: well-formed requests are
//! served as on request-response; a tag in an open swarm, a body that is not CBOR, a malformed
//! frame, a frame that claims a gigabyte, more requests in flight or more streams than a peer
//! may hold: each refused and counted, and the node serves on.

use crate::stranger::Stranger;
use crate::support::{TestNode, guest};
use continuum::mesh::rpc::{self, Envelope, Reply, Request};
use http::Method;
use std::time::{Duration, Instant};

fn forward(name: &str, req: continuum_guest::Request) -> Request {
    Request::Forward {
        name: name.into(),
        hops: 1,
        entry: None,
        request: continuum_guest::abi::encode_request(&req),
        deadline: None,
        chain: vec![],
    }
}

pub(crate) fn count() -> Request {
    forward(
        "counter",
        continuum_guest::Request {
            method: "POST".into(),
            ..continuum_guest::Request::get("/incr")
        },
    )
}

pub(crate) async fn until_counted(node: &TestNode, reason: &str, at_least: u64) {
    let series = format!("continuum_mesh_rejected_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric(&series).await < at_least {
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_call_lane_is_answered_or_cut_off_and_the_node_serves_on() {
    let node = TestNode::start(&[]);
    node.ok(&["deploy", &guest("counter"), "--name", "counter"]);
    node.ok(&["deploy", &guest("slow"), "--name", "slow"]);
    let mut s = Stranger::connect(&node).await;
    let mut first = s.lane().await;

    // Well-formed requests are served, each reply under its request's id, out of order ids
    // and all.
    for id in [7, 3, u64::MAX] {
        let reply = s.ask_lane(&mut first, id, &rpc::seal(None, &count())).await;
        let Reply::Forwarded(bytes) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            continuum_guest::abi::decode_response(&bytes)
                .unwrap()
                .status,
            200
        );
    }

    // A tag in an open swarm, and a body that is not CBOR: refused with a reason, lane kept.
    let sealed = rpc::seal(None, &count());
    let tagged = Envelope::from_parts(sealed.parts().0.to_vec(), Some([7; 32]));
    let garbage = Envelope::from_parts(b"\xff\x00 not cbor".to_vec(), None);
    for (env, what) in [(tagged, "swarm's key"), (garbage, "rpc:")] {
        let reply = s.ask_lane(&mut first, 1, &env).await;
        assert!(
            matches!(&reply, Reply::Refused { status: 403, message } if message.contains(what)),
            "{reply:?}"
        );
    }
    until_counted(&node, "swarm_key", 1).await;
    until_counted(&node, "malformed", 1).await;

    // Past 256 requests in flight on one lane, each more is refused at once (503).
    let mut second = s.lane().await;
    let wait = rpc::seal(
        None,
        &forward("slow", continuum_guest::Request::get("/after/5000")),
    );
    let extra = 4;
    let frames: Vec<u8> = (0..continuum::mesh::lane::MAX_IN_FLIGHT + extra)
        .flat_map(|id| continuum::mesh::lane::encode(id as u64, &wait))
        .collect();
    s.send(&mut second, &frames).await;
    for _ in 0..extra {
        let (_, reply) = s.reply(&mut second).await.expect("an answer");
        let reply: Reply = rpc::open(None, &reply).unwrap();
        assert!(
            matches!(&reply, Reply::Refused { status: 503, message } if message.contains("overloaded")),
            "{reply:?}"
        );
    }
    until_counted(&node, "lane_overloaded", extra as u64).await;

    // A peer holds at most two lanes: the third is refused.
    let mut third = s.lane().await;
    until_counted(&node, "lane_too_many_streams", 1).await;
    let frame = continuum::mesh::lane::encode(1, &sealed);
    assert!(s.closed(&mut third, &frame).await, "a refused lane answers");

    // A frame whose flag byte is neither 0 nor 1, and one that claims 1 GiB: each loses its
    // lane at once, with nothing buffered.
    s.send(
        &mut second,
        &[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 1, 9, 1, 2, 3],
    )
    .await;
    assert!(s.reply(&mut second).await.is_none());
    until_counted(&node, "lane_malformed_frame", 1).await;
    s.send(&mut first, &(1u32 << 30).to_be_bytes()).await;
    assert!(s.reply(&mut first).await.is_none());
    until_counted(&node, "lane_frame_too_large", 1).await;

    // The node serves on: to clients, and to the stranger on a new lane.
    let mut again = s.lane().await;
    let reply = s.ask_lane(&mut again, 42, &rpc::seal(None, &count())).await;
    assert!(matches!(reply, Reply::Forwarded(_)), "{reply:?}");
    let r = node.h1(Method::GET, "/c/counter/count", b"").await;
    assert_eq!((r.status, r.text()), (200, "4".to_string()));
}
