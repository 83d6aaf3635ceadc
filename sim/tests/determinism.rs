//! One seed, one run: the same seed gives the same trace hash, another seed another.

use continuum_gossip::Scope;
use continuum_sim::churn::{Churn, run};

fn churn(seed: u64) -> Churn {
    Churn {
        nodes: 30,
        seed,
        seconds: 40,
        every_ms: 2_000,
        down_ms: 20_000,
        links: 4,
        partition_s: 0,
        scope: Scope::Swarm,
        federation: false,
        recruit: true,
    }
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let (a, b, c) = (run(&churn(7)), run(&churn(7)), run(&churn(8)));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.csv, b.csv);
    assert_ne!(a.trace_hash, c.trace_hash);
    eprintln!("{}\n{}", a.summary, a.csv);
}

#[test]
fn membership_converges_and_keeps_up_with_churn() {
    let o = run(&Churn {
        every_ms: 0,
        ..churn(3)
    });
    assert!(o.converged_ms.is_some(), "{}\n{}", o.summary, o.csv);
    // With churn, views still cover nearly every live node, and forget the dead within the
    // advert expiry (15 s) of their failure.
    let o = run(&churn(3));
    let last = o.csv.lines().last().unwrap();
    let cols: Vec<f64> = last.split(',').map(|v| v.parse().unwrap()).collect();
    assert!(cols[2] > 0.9, "{}\n{}", o.summary, o.csv);
    assert!(cols[4] <= 8.0, "{}\n{}", o.summary, o.csv);
    assert!(o.peer_down > 0, "{}", o.summary);
}

#[test]
fn roaming_is_reproducible_and_follow_traffic_keeps_requests_within_the_bound() {
    use continuum_gossip::Policy;
    use continuum_sim::roaming::{self, Roaming};
    let follow = |seed| roaming::run(&Roaming::new(400, seed, 120, Policy::FollowTraffic));
    let (a, b, c) = (follow(5), follow(5), follow(6));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.csv, b.csv);
    assert_ne!(a.trace_hash, c.trace_hash);
    let pinned = roaming::run(&Roaming::new(400, 5, 120, Policy::Pinned));
    let share = |o: &roaming::Outcome| o.within_bound as f64 / o.requests as f64;
    eprintln!("{}\n{}", a.summary, pinned.summary);
    assert!(a.migrations > 0 && pinned.migrations == 0);
    assert!(share(&a) > 0.95, "{}", a.summary);
    assert!(
        share(&a) > share(&pinned),
        "{}\n{}",
        a.summary,
        pinned.summary
    );
}

#[test]
fn flash_crowd_is_reproducible_and_balance_sheds_the_overload() {
    use continuum_gossip::Policy;
    use continuum_sim::flash_crowd::{self, FlashCrowd};
    let run = |seed, policy| flash_crowd::run(&FlashCrowd::new(200, seed, 120, policy));
    let (a, b) = (run(1, Policy::Balance), run(1, Policy::Balance));
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_ne!(a.trace_hash, run(2, Policy::Balance).trace_hash);
    let pinned = run(1, Policy::Pinned);
    eprintln!("{}\n{}", a.summary, pinned.summary);
    assert!(a.migrations > 0 && pinned.migrations == 0);
    // After the crowd arrives, balance brings the hottest node back under its threshold.
    let last_max_load: f64 = a
        .csv
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_max_load < 0.85, "{}", a.csv);
    assert!(
        a.within_bound > pinned.within_bound,
        "{}\n{}",
        a.summary,
        pinned.summary
    );
}

#[test]
fn views_shrink_to_each_side_of_a_partition_and_fill_again_after_it_heals() {
    let o = run(&Churn {
        every_ms: 0,
        seconds: 90,
        partition_s: 30,
        ..churn(4)
    });
    let known: Vec<f64> = o
        .csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    eprintln!("{}\n{}", o.summary, o.csv);
    // Cut from t=20 s to t=50 s: once the far side's adverts expire (15 s) each node lists
    // only its own side, and within one heartbeat (7.5 s) of the heal every view is whole.
    assert!(known[..19].iter().all(|&k| k >= 0.99), "{}", o.csv);
    assert!(known[47] < 0.8, "{}", o.csv);
    assert!(known[58..].iter().all(|&k| k >= 0.99), "{}", o.csv);
}

/// Scoped to neighbours, what a node receives stays flat as the swarm grows (each node hears
/// its links only), where swarm-wide gossip grows with every node added; views stay whole.
#[test]
fn neighbour_scoped_membership_costs_each_node_the_same_at_any_size() {
    let run_at = |nodes, scope| {
        run(&Churn {
            nodes,
            every_ms: 0,
            seconds: 30,
            scope,
            ..churn(2)
        })
    };
    let (small, large) = (
        run_at(50, Scope::Neighbours),
        run_at(300, Scope::Neighbours),
    );
    let swarm = run_at(50, Scope::Swarm);
    eprintln!(
        "received per node per s: neighbours {:.2} (50 nodes), {:.2} (300 nodes); swarm {:.2} (50 nodes)",
        small.received_per_node_s, large.received_per_node_s, swarm.received_per_node_s
    );
    for o in [&small, &large] {
        assert!(o.converged_ms.is_some(), "{}", o.summary);
    }
    let ratio = large.received_per_node_s / small.received_per_node_s;
    assert!((0.67..1.5).contains(&ratio), "ratio {ratio:.2}");
    assert!(swarm.received_per_node_s > 2.0 * small.received_per_node_s);
}

/// Federations at scale, through churn: the west zone's nodes join the federation node 0
/// proposes (a restarted node as soon as the owner sees it back), no east node ever does, and
/// once the owner dies the federation dissolves everywhere within its lease.
#[test]
fn a_federation_takes_exactly_its_zone_through_churn_and_dissolves_without_its_owner() {
    let o = run(&Churn {
        nodes: 60,
        seconds: 60,
        federation: true,
        ..churn(5)
    });
    let shares: Vec<f64> = o
        .csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    eprintln!("{}\nfederated: {shares:?}", o.summary);
    assert!(
        shares.iter().any(|&s| s >= 0.99),
        "it never took the whole zone"
    );
    assert!(o.federated_min >= 0.9, "min share {}", o.federated_min);
    assert_eq!(o.federated_wrong, 0);
    assert!(o.dissolved);
}

/// Scoped to neighbours, a federation takes its zone beyond the owner's neighbourhood: its
/// owner finds the zone's nodes as providers of their label in the table and tells them
/// directly. Without that, only the owner's neighbours hear of it.
#[test]
fn scoped_to_neighbours_a_federation_recruits_its_zone_through_the_table() {
    let scoped = |recruit| Churn {
        nodes: 200,
        seconds: 60,
        federation: true,
        scope: Scope::Neighbours,
        recruit,
        ..churn(5)
    };
    let o = run(&scoped(true));
    eprintln!("{}\n{}", o.summary, o.csv);
    assert!(o.federated_min >= 0.9, "min share {}", o.federated_min);
    assert_eq!(o.federated_wrong, 0);
    assert!(o.dissolved);
    let before = run(&scoped(false));
    assert!(
        before.federated_min < 0.5,
        "neighbours alone took {}",
        before.federated_min
    );
}
