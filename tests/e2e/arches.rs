//! A swarm of two architectures on one machine: a node of this build, and one of another
//! architecture's build under qemu-user (`CONTINUUM_FOREIGN`, the command that runs it, as
//! `scripts/release.sh --runner ARCH` prints it). Components move between them both ways with
//! exact state and no failed request.
//!
//! scripts/test.sh sets `CONTINUUM_FOREIGN` to this host's pair (aarch64 on x86_64) and says
//! so where it cannot install the emulator; without it the test says it skipped.
//! scripts/cross-arch.sh runs it for armv7 (Pulley) and riscv64, by hand or nightly.

use crate::engines::{moves_both_ways_with_exact_state, slow_host_args};
use crate::mesh::until_full_views;
use crate::support::TestNode;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_move_between_two_architectures_with_exact_state() {
    let Ok(foreign) = std::env::var("CONTINUUM_FOREIGN") else {
        eprintln!(
            "SKIPPED: no CONTINUUM_FOREIGN (e.g. CONTINUUM_FOREIGN=\"$(scripts/release.sh --runner aarch64)\")"
        );
        return;
    };
    let program: Vec<String> = foreign.split_whitespace().map(String::from).collect();
    let args = slow_host_args();
    let a = TestNode::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let join = a.p2p();
    let mut b_args: Vec<&str> = args.iter().map(String::as_str).collect();
    b_args.extend(["--join", &join]);
    let b = TestNode::start_program(&program, &b_args);
    until_full_views(&[&a, &b], Duration::from_secs(60)).await;
    let arch = &b.status().await["arch"];
    assert_ne!(arch, std::env::consts::ARCH, "{foreign} is no foreign node");
    eprintln!("a foreign node: {arch}, run by {foreign}");

    let p = a.ok(&[
        "deploy",
        &crate::support::guest("sensor-filter"),
        "--name",
        "sensor",
        "--on",
        b.peer_id(),
    ]);
    assert!(p.contains(b.peer_id()), "{p}");
    moves_both_ways_with_exact_state(&a, &b).await;
}
