//! `cargo run -p continuum-sim --release -- --scenario churn|roaming|flash-crowd --nodes N
//! --seed S [--minutes M] [--policy P] [--out DIR]`
//! Prints a summary whose last line is `trace_hash=<hex>`; with `--out DIR`, writes the
//! per-second figures as CSV and SVG charts there (against the pinned policy where that is the
//! baseline).

use anyhow::{Context, Result, bail};
use clap::Parser;
use continuum_gossip::{Policy, Scope};
use continuum_sim::churn::{self, Churn};
use continuum_sim::flash_crowd::{self, FlashCrowd};
use continuum_sim::plot::{self, Series, column};
use continuum_sim::roaming::{self, Roaming};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Deterministic simulator of Continuum swarms")]
struct Args {
    /// The scenario: churn (nodes join, fail and come back; membership must keep up),
    /// roaming (vehicles cross a grid of roadside nodes; their twins should follow them), or
    /// flash-crowd (a crowd in one region overloads the hosts of a few components).
    #[arg(long, default_value = "churn")]
    scenario: String,
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual minutes to run (after the joins, for churn).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// The components' placement policy: pinned, follow-traffic (roaming's default) or
    /// balance (flash-crowd's default).
    #[arg(long)]
    policy: Option<String>,
    /// roaming: inject faults (1 % of migration messages lost, nodes crashing twice an hour
    /// for 20 s, a 30 s partition every two minutes on average) and count invariant
    /// violations.
    #[arg(long)]
    faults: bool,
    /// roaming: run the gossip membership (scoped to neighbours) on every roadside node, place
    /// twins among the peers each view holds, and route requests by name as the node does
    /// (adverts of neighbours, records in a modelled Kademlia table).
    #[arg(long)]
    membership: bool,
    /// churn: node 0 proposes a federation of the west zone, and dies at the end.
    #[arg(long)]
    federation: bool,
    /// churn scoped to neighbours: federations reach their owner's neighbours only, as before
    /// they recruited through label providers (a baseline).
    #[arg(long)]
    no_recruit: bool,
    /// churn and convergence: who hears whom, `swarm` (every node every node) or `neighbours`
    /// (each node the peers it is connected to).
    #[arg(long, default_value = "swarm")]
    scope: String,
    /// churn: the share of nodes that fail each minute, in percent (each back 30 s later);
    /// by default one every 5 s.
    #[arg(long)]
    fail_per_minute: Option<f64>,
    /// Where to write CSV files and SVG charts.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What a scenario leaves behind.
struct Run {
    summary: String,
    trace_hash: String,
    csv: Vec<(String, String)>,
    /// File, title, x label, y label, lines.
    charts: Vec<(String, String, String, String, Vec<Series>)>,
}

fn policy(a: &Args, default: &str) -> Result<Policy> {
    a.policy
        .as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(anyhow::Error::msg)
}

fn share(v: &[f64]) -> f64 {
    if v[1] > 0.0 { v[2] / v[1] } else { 1.0 }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let scope = match a.scope.as_str() {
        "swarm" => Scope::Swarm,
        "neighbours" => Scope::Neighbours,
        other => bail!("unknown scope {other:?} (there are: swarm, neighbours)"),
    };
    let started = std::time::Instant::now();
    let seconds = (a.minutes * 60.0) as u64;
    let charts = a.out.is_some();
    let run = match a.scenario.as_str() {
        "churn" => {
            let o = churn::run(&Churn {
                nodes: a.nodes,
                seed: a.seed,
                seconds,
                every_ms: match a.fail_per_minute {
                    Some(pct) if pct > 0.0 => {
                        ((60_000.0 / (pct / 100.0 * a.nodes as f64)) as u64).max(1)
                    }
                    Some(_) => 0,
                    None => 5_000,
                },
                down_ms: 30_000,
                links: 4,
                partition_s: 0,
                scope,
                federation: a.federation,
                recruit: !a.no_recruit,
            });
            let known = vec![
                ("mean".into(), column(&o.csv, 0, |v| v[2])),
                ("least".into(), column(&o.csv, 0, |v| v[3])),
            ];
            let sent = vec![("per node".into(), column(&o.csv, 0, |v| v[5]))];
            Run {
                charts: vec![
                    (
                        "churn-views.svg".into(),
                        format!(
                            "churn, {} nodes: share of live nodes each live node knows",
                            a.nodes
                        ),
                        "virtual s".into(),
                        "share".into(),
                        known,
                    ),
                    (
                        "churn-messages.svg".into(),
                        format!("churn, {} nodes: gossip messages sent per node", a.nodes),
                        "virtual s".into(),
                        "messages / s".into(),
                        sent,
                    ),
                ],
                csv: vec![("churn.csv".into(), o.csv)],
                summary: o.summary,
                trace_hash: o.trace_hash,
            }
        }
        "roaming" => {
            let p = policy(&a, "follow-traffic")?;
            let faults = if a.faults {
                roaming::Faults::harsh()
            } else {
                roaming::Faults::default()
            };
            let o = roaming::run(&Roaming {
                faults: faults.clone(),
                membership: a.membership,
                ..Roaming::new(a.nodes, a.seed, seconds, p)
            });
            let mut within = vec![(p.name().to_string(), column(&o.csv, 0, share))];
            let mut moves = vec![(p.name().to_string(), column(&o.csv, 0, |v| v[3]))];
            if charts && p != Policy::Pinned {
                let base = roaming::run(&Roaming {
                    faults,
                    membership: a.membership,
                    ..Roaming::new(a.nodes, a.seed, seconds, Policy::Pinned)
                });
                within.push(("pinned".into(), column(&base.csv, 0, share)));
                moves.push(("pinned".into(), column(&base.csv, 0, |v| v[3])));
            }
            Run {
                charts: vec![
                    (
                        "roaming-within-bound.svg".into(),
                        format!(
                            "roaming, {} nodes{}: share of requests answered within 5 ms",
                            a.nodes,
                            if a.faults { " with faults" } else { "" }
                        ),
                        "virtual s".into(),
                        "share".into(),
                        within,
                    ),
                    (
                        "roaming-migrations.svg".into(),
                        format!(
                            "roaming, {} nodes{}: migrations per virtual second",
                            a.nodes,
                            if a.faults { " with faults" } else { "" }
                        ),
                        "virtual s".into(),
                        "migrations".into(),
                        moves,
                    ),
                ],
                csv: vec![("roaming.csv".into(), o.csv)],
                summary: o.summary,
                trace_hash: o.trace_hash,
            }
        }
        "flash-crowd" => {
            let p = policy(&a, "balance")?;
            let o = flash_crowd::run(&FlashCrowd::new(a.nodes, a.seed, seconds, p));
            let mut load = vec![(p.name().to_string(), column(&o.csv, 0, |v| v[3]))];
            let mut within = vec![(p.name().to_string(), column(&o.csv, 0, share))];
            if charts && p != Policy::Pinned {
                let base =
                    flash_crowd::run(&FlashCrowd::new(a.nodes, a.seed, seconds, Policy::Pinned));
                load.push(("pinned".into(), column(&base.csv, 0, |v| v[3])));
                within.push(("pinned".into(), column(&base.csv, 0, share)));
            }
            Run {
                charts: vec![
                    (
                        "flash-crowd-load.svg".into(),
                        format!("flash-crowd, {} nodes: load of the busiest node", a.nodes),
                        "virtual s".into(),
                        "load (1 = saturated)".into(),
                        load,
                    ),
                    (
                        "flash-crowd-within-bound.svg".into(),
                        format!(
                            "flash-crowd, {} nodes: share of requests within 10 ms",
                            a.nodes
                        ),
                        "virtual s".into(),
                        "share".into(),
                        within,
                    ),
                ],
                csv: vec![("flash-crowd.csv".into(), o.csv)],
                summary: o.summary,
                trace_hash: o.trace_hash,
            }
        }
        "convergence" => {
            // churn without failures at growing sizes: how long until every view is full, and
            // what the gossip costs each node.
            let mut conv = Vec::new();
            let mut msgs = Vec::new();
            let mut got = Vec::new();
            let mut summary = String::new();
            let mut trace = blake3::Hasher::new();
            let (suffix, scoped) = match scope {
                Scope::Swarm => ("", ""),
                Scope::Neighbours => ("-neighbours", " scoped to neighbours"),
            };
            for n in [25, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
                .into_iter()
                .filter(|&n| n <= a.nodes.max(25))
            {
                let o = churn::run(&Churn {
                    nodes: n,
                    seed: a.seed,
                    seconds,
                    every_ms: 0,
                    down_ms: 0,
                    links: 4,
                    partition_s: 0,
                    scope,
                    federation: false,
                    recruit: true,
                });
                let ms = o.converged_ms.unwrap_or(seconds * 1000) as f64;
                let per_node = column(&o.csv, 0, |v| v[5]);
                let rate = per_node.iter().map(|p| p.1).sum::<f64>() / per_node.len().max(1) as f64;
                summary.push_str(&format!(
                    "{n} nodes: full views {ms:.0} ms after the last join; per node per s: {rate:.2} gossip messages sent, {:.2} received\n",
                    o.received_per_node_s
                ));
                conv.push((n as f64, ms));
                msgs.push((n as f64, rate));
                got.push((n as f64, o.received_per_node_s));
                trace.update(o.trace_hash.as_bytes());
            }
            Run {
                charts: vec![
                    (
                        format!("convergence{suffix}.svg"),
                        format!("membership{scoped}: time from the last join to full views"),
                        "nodes".into(),
                        "ms".into(),
                        vec![("full views".into(), conv)],
                    ),
                    (
                        format!("gossip-per-node{suffix}.svg"),
                        format!("membership{scoped}: gossip messages per node per second"),
                        "nodes".into(),
                        "messages / s".into(),
                        vec![("sent".into(), msgs), ("received".into(), got)],
                    ),
                ],
                csv: Vec::new(),
                summary: summary.trim_end().to_string(),
                trace_hash: trace.finalize().to_hex().to_string(),
            }
        }
        other => bail!(
            "unknown scenario {other:?} (there are: churn, roaming, flash-crowd, convergence)"
        ),
    };
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, csv) in &run.csv {
            std::fs::write(dir.join(name), csv)?;
        }
        for (file, title, x, y, series) in &run.charts {
            plot::lines(&dir.join(file), title, x, y, series)
                .with_context(|| format!("drawing {file}"))?;
        }
    }
    println!("{}", run.summary);
    println!("wall time {:.2} s", started.elapsed().as_secs_f64());
    println!("trace_hash={}", run.trace_hash);
    Ok(())
}
